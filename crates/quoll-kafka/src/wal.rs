//! The exactly-once sink's write-ahead files: every record the sink sends
//! in a Kafka transaction is also appended here, so the output of a
//! checkpoint that committed cluster-wide can be sent again if its Kafka
//! transaction was lost (see the crate docs).
//!
//! # Files
//!
//! In the worker's resilience directory, `<stem>` being
//! `<app>-<worker>.kafka-<sink>` with each name sanitized like the
//! checkpoint files (`quoll_core::checkpoint_store::sanitize`):
//!
//! | file | content |
//! |---|---|
//! | `<stem>.wal-open` | records of the current checkpoint interval, being written |
//! | `<stem>.wal-<N:020>` | records sealed at checkpoint `N`'s barrier (pre-commit) |
//! | `<stem>.run` | this run's id: 16 hex digits, made when the directory has none |
//!
//! The run id tags the sink's commit records (`commit_log`). Checkpoint
//! ids start again at 1 when a resilience directory is emptied for a fresh
//! run; a commit record left in Kafka by an earlier run with the same app,
//! worker and sink names must not make the new run's write-ahead files look
//! committed.
//!
//! # Records
//!
//! Framed like the resilience files: `u32 LE length n`, `u32 LE crc32` of
//! the body, body (`n >= 1` bytes), cut by `quoll_core::frame::LengthPrefixed`.
//! The first body is the header `0x00, u32 LE version, app, worker, sink,
//! topic` (each a `u32 LE` length and UTF-8); every other body is a record
//! `0x01, flags (1: key, 2: partition), [i32 LE partition], [u32 LE key
//! length, key], payload`.
//!
//! # Invariants
//!
//! - A sealed file was fsynced, renamed from `wal-open` and its directory
//!   fsynced before [`OpenWal::seal`] returned: it survives a crash whole.
//! - A sealed file is read strictly: a bad checksum, a cut record, another
//!   owner or version is an error naming the file, never partial data.
//! - `wal-open` is never read after a crash: its interval never reached a
//!   barrier, so no committed checkpoint covers it. While the sink runs it
//!   is read back only after a flush, to rebuild a transaction.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bytes::{Buf, Bytes, BytesMut};
use quoll_core::checkpoint::CheckpointId;
use quoll_core::checkpoint_store::sanitize;
use quoll_core::frame::{ByteOrder, LengthPrefixed};

use crate::error::KafkaError;
use crate::sink::KafkaRecord;

const VERSION: u32 = 1;
const TAG_HEADER: u8 = 0;
const TAG_RECORD: u8 = 1;
const HAS_KEY: u8 = 1;
const HAS_PARTITION: u8 = 2;
const FRAMING: LengthPrefixed = LengthPrefixed::new(ByteOrder::Little, 1, u32::MAX).with_checksum();
const OPEN_SUFFIX: &str = ".wal-open";
const SEALED_INFIX: &str = ".wal-";
const ID_DIGITS: usize = 20;

/// The write-ahead files of one sink of one worker.
#[derive(Debug, Clone)]
pub(crate) struct WalDir {
    dir: PathBuf,
    stem: String,
    /// app, worker, sink, topic: written in every header, checked on read.
    owner: [String; 4],
    who: String,
}

impl WalDir {
    pub fn new(
        dir: &Path,
        app: &str,
        worker: &str,
        sink: &str,
        topic: &str,
        who: String,
    ) -> WalDir {
        WalDir {
            dir: dir.to_path_buf(),
            stem: format!(
                "{}-{}.kafka-{}",
                sanitize(app),
                sanitize(worker),
                sanitize(sink)
            ),
            owner: [app, worker, sink, topic].map(str::to_string),
            who,
        }
    }

    /// This run's id (see the module doc): read from `<stem>.run`, or made
    /// and written durably (temp file, fsync, rename, directory fsync).
    pub fn run_id(&self) -> Result<String, KafkaError> {
        let path = self.dir.join(format!("{}.run", self.stem));
        match fs::read_to_string(&path) {
            Ok(text) => {
                let id = text.trim();
                if id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Ok(id.to_string());
                }
                return Err(self.corrupt(&path, format!("not a run id: {id:?}")));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.err(&path, "read the run id", e)),
        }
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes)
            .map_err(|e| self.err(&path, "make a run id", io::Error::other(e.to_string())))?;
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let tmp = path.with_extension("run-tmp");
        let write = || -> io::Result<()> {
            fs::create_dir_all(&self.dir)?;
            let mut f = File::create(&tmp)?;
            f.write_all(id.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| self.err(&path, "write the run id", e))?;
        self.sync_dir()?;
        Ok(id)
    }

    pub fn open_path(&self) -> PathBuf {
        self.dir.join(format!("{}{OPEN_SUFFIX}", self.stem))
    }

    pub fn sealed_path(&self, id: CheckpointId) -> PathBuf {
        self.dir.join(format!(
            "{}{SEALED_INFIX}{id:0width$}",
            self.stem,
            width = ID_DIGITS
        ))
    }

    fn err(&self, path: &Path, action: &str, source: io::Error) -> KafkaError {
        KafkaError::Wal {
            who: self.who.clone(),
            path: path.to_path_buf(),
            action: action.to_string(),
            source,
        }
    }

    fn corrupt(&self, path: &Path, problem: String) -> KafkaError {
        KafkaError::WalCorrupt {
            who: self.who.clone(),
            path: path.to_path_buf(),
            problem,
        }
    }

    /// The ids of the sealed files, oldest first.
    pub fn sealed(&self) -> Result<Vec<CheckpointId>, KafkaError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.err(&self.dir, "list the resilience directory", e)),
        };
        let prefix = format!("{}{SEALED_INFIX}", self.stem);
        let mut ids = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|e| self.err(&self.dir, "list the resilience directory", e))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if let Some(digits) = name.strip_prefix(&prefix) {
                if digits.len() == ID_DIGITS && digits.bytes().all(|b| b.is_ascii_digit()) {
                    if let Ok(id) = digits.parse() {
                        ids.push(id);
                    }
                }
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// Deletes a file if it is there.
    pub fn remove(&self, path: &Path) -> Result<(), KafkaError> {
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err(path, "delete it", e)),
        }
    }

    pub fn sync_dir(&self) -> Result<(), KafkaError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.err(&self.dir, "fsync the resilience directory", e))
    }

    /// Starts `wal-open` afresh (a leftover one is replaced).
    pub fn create_open(&self) -> Result<OpenWal, KafkaError> {
        let path = self.open_path();
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| self.err(&path, "create it", e))?;
        let mut wal = OpenWal {
            path,
            out: BufWriter::with_capacity(256 << 10, file),
            buf: Vec::new(),
            records: 0,
        };
        wal.frame(|body| {
            body.push(TAG_HEADER);
            body.extend_from_slice(&VERSION.to_le_bytes());
            for s in &self.owner {
                put_bytes(body, s.as_bytes());
            }
        })
        .map_err(|e| self.err(&wal.path, "write its header", e))?;
        Ok(wal)
    }

    /// Every record of a sealed file, or of `wal-open` (after its writer
    /// was flushed), in order.
    pub fn read(&self, path: &Path) -> Result<Vec<KafkaRecord>, KafkaError> {
        let mut bytes = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| self.err(path, "read it", e))?;
        let mut src = BytesMut::from(&bytes[..]);
        let mut framing = FRAMING;
        let mut out = Vec::new();
        let mut number = 0u64;
        loop {
            let at = bytes.len() - src.len();
            let frame = match framing.decode_frame(&mut src) {
                Ok(Some(frame)) => frame,
                Ok(None) if src.is_empty() => break,
                Ok(None) => {
                    return Err(self.corrupt(
                        path,
                        format!("record {} at byte {at} is cut short", number + 1),
                    ))
                }
                Err(e) => {
                    return Err(
                        self.corrupt(path, format!("record {} at byte {at}: {e}", number + 1))
                    )
                }
            };
            number += 1;
            let mut frame = frame.freeze();
            let crc = frame.get_u32_le();
            if crc32fast::hash(&frame) != crc {
                return Err(self.corrupt(
                    path,
                    format!("record {number} at byte {at} fails its checksum"),
                ));
            }
            let bad = |problem: &str| {
                self.corrupt(path, format!("record {number} at byte {at}: {problem}"))
            };
            if number == 1 {
                self.check_header(frame).map_err(|p| bad(&p))?;
            } else {
                out.push(decode_record(frame).map_err(bad)?);
            }
        }
        if number == 0 {
            return Err(self.corrupt(path, "the file is empty (no header)".to_string()));
        }
        Ok(out)
    }

    fn check_header(&self, mut body: Bytes) -> Result<(), String> {
        if body.first() != Some(&TAG_HEADER) || body.len() < 5 {
            return Err("the first record is not a header".to_string());
        }
        body.advance(1);
        let version = body.get_u32_le();
        if version != VERSION {
            return Err(format!(
                "format version {version} is not supported (this quoll reads version {VERSION})"
            ));
        }
        let mut found = Vec::new();
        for _ in 0..4 {
            let s = get_bytes(&mut body).ok_or("the header is cut short")?;
            found.push(String::from_utf8_lossy(&s).into_owned());
        }
        if found != self.owner {
            return Err(format!(
                "it belongs to app '{}' worker '{}' sink '{}' topic '{}', not app '{}' worker \
                 '{}' sink '{}' topic '{}'",
                found[0],
                found[1],
                found[2],
                found[3],
                self.owner[0],
                self.owner[1],
                self.owner[2],
                self.owner[3]
            ));
        }
        Ok(())
    }
}

/// `wal-open` being written.
pub(crate) struct OpenWal {
    path: PathBuf,
    out: BufWriter<File>,
    buf: Vec<u8>,
    records: u64,
}

impl OpenWal {
    /// Writes one checksummed frame whose body `body` puts in the reused
    /// buffer (no allocation per record).
    fn frame(&mut self, body: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
        self.buf.clear();
        let start = FRAMING.begin(&mut self.buf);
        body(&mut self.buf);
        FRAMING
            .finish(&mut self.buf, start)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let crc = crc32fast::hash(&self.buf[start + 8..]);
        self.buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        self.out.write_all(&self.buf)
    }

    pub fn append(&mut self, wal: &WalDir, record: &KafkaRecord) -> Result<(), KafkaError> {
        self.frame(|body| {
            body.push(TAG_RECORD);
            let flags = if record.key.is_some() { HAS_KEY } else { 0 }
                | if record.partition.is_some() {
                    HAS_PARTITION
                } else {
                    0
                };
            body.push(flags);
            if let Some(p) = record.partition {
                body.extend_from_slice(&p.to_le_bytes());
            }
            if let Some(k) = &record.key {
                put_bytes(body, k);
            }
            body.extend_from_slice(&record.payload);
        })
        .map_err(|e| wal.err(&self.path, "append a record", e))?;
        self.records += 1;
        Ok(())
    }

    /// Records appended.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Pushes buffered bytes to the file (not to the disk).
    pub fn flush(&mut self, wal: &WalDir) -> Result<(), KafkaError> {
        self.out
            .flush()
            .map_err(|e| wal.err(&self.path, "write it", e))
    }

    /// Makes the file durable under the name of checkpoint `id`.
    pub fn seal(mut self, wal: &WalDir, id: CheckpointId) -> Result<PathBuf, KafkaError> {
        self.flush(wal)?;
        self.out
            .get_ref()
            .sync_all()
            .map_err(|e| wal.err(&self.path, "fsync it", e))?;
        let sealed = wal.sealed_path(id);
        fs::rename(&self.path, &sealed)
            .map_err(|e| wal.err(&self.path, &format!("rename it to {}", sealed.display()), e))?;
        wal.sync_dir()?;
        Ok(sealed)
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Keys and names are far below 4 GiB: the WAL frame itself is u32-long.
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn get_bytes(body: &mut Bytes) -> Option<Bytes> {
    if body.remaining() < 4 {
        return None;
    }
    let n = body.get_u32_le() as usize;
    if body.remaining() < n {
        return None;
    }
    Some(body.split_to(n))
}

fn decode_record(mut body: Bytes) -> Result<KafkaRecord, &'static str> {
    if body.remaining() < 2 || body.get_u8() != TAG_RECORD {
        return Err("not a record");
    }
    let flags = body.get_u8();
    let partition = if flags & HAS_PARTITION != 0 {
        if body.remaining() < 4 {
            return Err("the record is cut short");
        }
        Some(body.get_i32_le())
    } else {
        None
    };
    let key = if flags & HAS_KEY != 0 {
        Some(get_bytes(&mut body).ok_or("the record's key is cut short")?)
    } else {
        None
    };
    Ok(KafkaRecord {
        key,
        payload: body,
        partition,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> (tempfile::TempDir, WalDir) {
        let t = tempfile::tempdir().unwrap();
        let w = WalDir::new(t.path(), "app/x", "w 1", "kafka_sink", "out", "sink".into());
        (t, w)
    }

    fn rec(key: Option<&str>, payload: &str, partition: Option<i32>) -> KafkaRecord {
        KafkaRecord {
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            partition,
        }
    }

    #[test]
    fn seal_then_read_back() {
        let (_t, w) = dir();
        let mut open = w.create_open().unwrap();
        let records = vec![
            rec(Some("k"), "v1", Some(2)),
            rec(None, "", None),
            rec(Some(""), "v3", None),
        ];
        for r in &records {
            open.append(&w, r).unwrap();
        }
        assert_eq!(open.records(), 3);
        let path = open.seal(&w, 7).unwrap();
        assert!(path.ends_with("app_x-w_1.kafka-kafka_sink.wal-00000000000000000007"));
        assert!(!w.open_path().exists());
        assert_eq!(w.sealed().unwrap(), vec![7]);
        assert_eq!(w.read(&path).unwrap(), records);
    }

    #[test]
    fn corruption_and_foreign_files_are_refused() {
        let (t, w) = dir();
        let mut open = w.create_open().unwrap();
        open.append(&w, &rec(None, "payload", None)).unwrap();
        let path = open.seal(&w, 1).unwrap();
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let err = w.read(&path).unwrap_err().to_string();
        assert!(
            err.contains("record 2") && err.contains("checksum"),
            "{err}"
        );
        bytes.truncate(last);
        fs::write(&path, &bytes).unwrap();
        assert!(w.read(&path).unwrap_err().to_string().contains("cut short"));

        let other = WalDir::new(
            t.path(),
            "app/x",
            "w 1",
            "kafka_sink",
            "other-topic",
            "s".into(),
        );
        let mut open = other.create_open().unwrap();
        open.append(&other, &rec(None, "p", None)).unwrap();
        let path = open.seal(&other, 2).unwrap();
        let err = w.read(&path).unwrap_err().to_string();
        assert!(err.contains("topic 'other-topic'"), "{err}");
    }
}
