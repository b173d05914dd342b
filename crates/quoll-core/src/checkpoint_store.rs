//! Durable checkpoint files, the coordinator's commit log and the
//! membership file (DESIGN.md decisions 7-9).
//!
//! Nothing here knows about Python: state values, keys and source and sink
//! positions are opaque byte blobs that the caller encodes.
//!
//! # Files
//!
//! Every file lives directly in the resilience directory. File names are
//! built from the app and worker names **sanitized**: every character outside
//! `[A-Za-z0-9._-]` becomes `_`. The real names are stored inside every file
//! and checked on every read, so two names that sanitize alike, or a stale
//! file of another app or worker, are reported and never loaded.
//!
//! | file | content |
//! |---|---|
//! | `<app>-<worker>.ckpt-<N:020>` | one worker's part of checkpoint `N`: full, or a delta on an older one |
//! | `<app>-<worker>.ckpt-<N:020>.tmp` | the same while it is written; readers ignore it |
//! | `<app>-initializer.commits` | the coordinator's append-only commit log |
//! | `<app>-<worker>.cluster` | an opaque membership blob (the caller's member list) |
//!
//! `N` is zero-padded to 20 digits (all of `u64`), so names sort by id.
//!
//! # Framing
//!
//! Every file is a sequence of records, each
//!
//! ```text
//! +-----------------+------------------------+-------------------+
//! | u32 LE length n | u32 LE crc32 (payload) | payload (n bytes) |
//! +-----------------+------------------------+-------------------+
//! ```
//!
//! where the payload is the postcard encoding of the file's record enum and
//! `n > 0`. Error messages number records from 1 (the header).
//!
//! A checkpoint file holds:
//!
//! ```text
//! Header  { format_version, app, worker, checkpoint: u64, kind: Full | Delta { parent: u64 } }
//! ( Entry  { stage: u32, key, value }          a state blob of one key of one stage
//! | Remove { stage: u32, key }                 the key has no state any more
//! | Source { index: u32, position }            replay position of source `index`
//! | Sink   { index: u32, position }            commit position of sink `index`
//! )*
//! Trailer { records: u64 }                     number of records before it, header included
//! ```
//!
//! The commit log holds `Header { format_version, app }` then any number of
//! `Committed { checkpoint, generation }` and `Generation { generation }`
//! records. The membership file holds one record
//! `{ format_version, app, worker, members }`.
//!
//! # Crash safety
//!
//! A checkpoint file and a membership file are written as `<name>.tmp`,
//! flushed with `fsync`, renamed to `<name>`, then the directory is fsynced;
//! [`CheckpointWriter::commit`] returns only after all of that, so a worker
//! acknowledges checkpoint `N` only once its file survives a power loss. A
//! crash earlier leaves at most a `*.tmp`, which readers ignore and the
//! removal functions delete. A writer dropped without `commit` deletes its
//! `*.tmp`.
//!
//! The commit log is created the same way (with its header), then grows by
//! appends, each followed by `fdatasync` before [`CommitLog::append`]
//! returns. A checkpoint is complete exactly when its `Committed` record is
//! in the log. A crash during an append can leave a torn last record: its
//! length and checksum cut short, or its payload cut short (a commit record
//! is at most 32 bytes, so a longer declared length is corruption), or a run
//! of zero bytes at the end. [`CommitLog::read`] ignores it and
//! [`CommitLog::open_or_create`] truncates it away before appending. Any
//! other bad record, including a complete last record that fails its
//! checksum, is corruption and is reported: rolling back past a commit
//! whose sinks may already have committed is not done silently.
//!
//! # Invariants
//!
//! - A file under its final name is complete: header first and only once,
//!   every record's checksum valid, the trailer last with the right count,
//!   nothing after it. Anything else is an error naming the file and the
//!   problem; [`load`] never returns partial data.
//! - The header's app, worker and checkpoint must match what the caller asks
//!   for (and so the file name); the format version must be
//!   [`FORMAT_VERSION`]. The header is always variant 0 of the record enum
//!   with the version as its first field, so a file of any other version is
//!   recognised and refused with a clear message.
//! - A delta's parent is strictly older, so a chain always ends, and it must
//!   end at a full file. [`load`] of `N` follows the parent links from `N`
//!   down to a full file and applies the files oldest first; within a file
//!   and across files a later record for a `(stage, key)` replaces an
//!   earlier one, and `Remove` deletes. Sources and sinks are written in full
//!   in every file and are taken from file `N` alone.
//! - [`compact`] replaces file `N` with a full file of the same image by
//!   rename: a reader sees either the old delta (whose chain is still there)
//!   or the new full file, never a mixture.
//! - [`remove_older_than`] with `K` deletes only files older than `K` that
//!   `K`'s chain does not use. Files newer than `K` (a checkpoint in flight,
//!   which must be a full or a delta on `K` or newer) are not touched.
//! - The functions here do no locking: each worker owns its files and calls
//!   them from one thread at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

const FRAME_HEADER: usize = 8;
const CKPT_INFIX: &str = ".ckpt-";
const TMP_SUFFIX: &str = ".tmp";
const CLUSTER_SUFFIX: &str = ".cluster";
const ID_DIGITS: usize = 20;
/// The writer hands its buffer to the file in chunks of about this size.
const WRITE_CHUNK: usize = 1 << 20;
/// No commit log record after the header is longer than this (a variant tag
/// and two u64 varints). A cut-off record declaring more is corrupt, not torn.
const MAX_LOG_PAYLOAD: u32 = 32;
/// The worker name used for the commit log in error messages.
const INITIALIZER: &str = "initializer";

// ---------------------------------------------------------------- errors

/// What went wrong, always with the path of the file concerned.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{}: can't {action}: {source}", .path.display())]
    Io {
        path: PathBuf,
        action: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "resilience file {}: {problem} (the file is corrupt); delete the resilience directory \
         to start fresh, or restore it from a backup",
        .path.display()
    )]
    Corrupt { path: PathBuf, problem: String },
    #[error(
        "resilience file {} {problem} (it was cut short); delete the resilience directory \
         to start fresh, or restore it from a backup",
        .path.display()
    )]
    Truncated { path: PathBuf, problem: String },
    #[error(
        "resilience file {}: format version {found} is not supported (this quoll reads version \
         {supported}); run the quoll that wrote it, or delete the resilience directory to start fresh",
        .path.display()
    )]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error(
        "resilience file {} belongs to app '{found_app}' worker '{found_worker}', not app '{app}' \
         worker '{worker}': it is a stale file of another app or worker (names differing only in \
         characters other than A-Z a-z 0-9 . _ - share file names); move it away or use another \
         resilience directory",
        .path.display()
    )]
    WrongOwner {
        path: PathBuf,
        found_app: String,
        found_worker: String,
        app: String,
        worker: String,
    },
    #[error(
        "resilience file {} holds checkpoint {found}, not checkpoint {expected} as its name says; \
         delete the resilience directory to start fresh, or restore it from a backup",
        .path.display()
    )]
    WrongCheckpoint {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error(
        "checkpoint {checkpoint}: resilience file {} is missing; delete the resilience directory \
         to start fresh, or restore it from a backup",
        .path.display()
    )]
    Missing { path: PathBuf, checkpoint: u64 },
    #[error(
        "checkpoint {child} needs .ckpt-{parent} which is missing (it is a delta on checkpoint \
         {parent}, resilience file {}); delete the resilience directory to start fresh, or \
         restore it from a backup",
        .path.display()
    )]
    MissingParent {
        path: PathBuf,
        child: u64,
        parent: u64,
    },
    /// A misuse by the caller (a delta on a newer parent, a commit log going
    /// backwards, a record too large); nothing on disk is wrong.
    #[error("resilience file {}: {problem}", .path.display())]
    Invalid { path: PathBuf, problem: String },
}

impl StoreError {
    /// The file (or directory) the error is about.
    pub fn path(&self) -> &Path {
        match self {
            StoreError::Io { path, .. }
            | StoreError::Corrupt { path, .. }
            | StoreError::Truncated { path, .. }
            | StoreError::UnsupportedVersion { path, .. }
            | StoreError::WrongOwner { path, .. }
            | StoreError::WrongCheckpoint { path, .. }
            | StoreError::Missing { path, .. }
            | StoreError::MissingParent { path, .. }
            | StoreError::Invalid { path, .. } => path,
        }
    }
}

fn io_err(path: &Path, action: impl Into<String>, source: io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        action: action.into(),
        source,
    }
}

fn corrupt(path: &Path, problem: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

fn truncated(path: &Path, problem: impl Into<String>) -> StoreError {
    StoreError::Truncated {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

fn wrong_owner(path: &Path, found: (&str, &str), wanted: (&str, &str)) -> StoreError {
    StoreError::WrongOwner {
        path: path.to_path_buf(),
        found_app: found.0.to_string(),
        found_worker: found.1.to_string(),
        app: wanted.0.to_string(),
        worker: wanted.1.to_string(),
    }
}

// ---------------------------------------------------------------- names

/// A name as it appears in file names: characters outside `[A-Za-z0-9._-]`
/// become `_`.
pub fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn stem(app: &str, worker: &str) -> String {
    format!("{}-{}", sanitize(app), sanitize(worker))
}

/// `<dir>/<app>-<worker>.ckpt-<checkpoint:020>`.
pub fn checkpoint_path(dir: &Path, app: &str, worker: &str, checkpoint: u64) -> PathBuf {
    dir.join(format!("{}{CKPT_INFIX}{checkpoint:020}", stem(app, worker)))
}

/// `<dir>/<app>-<worker>.cluster`.
pub fn membership_path(dir: &Path, app: &str, worker: &str) -> PathBuf {
    dir.join(format!("{}{CLUSTER_SUFFIX}", stem(app, worker)))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(TMP_SUFFIX);
    PathBuf::from(s)
}

/// The id in `<prefix><20 digits>`, if `name` is exactly that.
fn parse_id(name: &str, prefix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?;
    if digits.len() == ID_DIGITS && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

/// The names (valid UTF-8 only) in `dir`; none if `dir` does not exist.
fn dir_names(dir: &Path) -> Result<Vec<String>, StoreError> {
    let action = "list the resilience directory";
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir, action, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_err(dir, action, e))?;
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    Ok(names)
}

// ---------------------------------------------------------------- framing

/// A record that can append its own postcard payload to a buffer.
trait Payload: Serialize {
    fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), String> {
        *out = postcard::to_extend(self, std::mem::take(out))
            .map_err(|e| format!("can't encode a record: {e}"))?;
        Ok(())
    }
}

/// Appends one framed record (length, crc32, postcard payload) to `out`.
fn frame_into<T: Payload>(out: &mut Vec<u8>, record: &T) -> Result<(), String> {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    record.encode_into(out)?;
    let payload = out.len() - start - FRAME_HEADER;
    let Ok(len) = u32::try_from(payload) else {
        out.truncate(start);
        return Err(format!(
            "a record of {payload} bytes is larger than a record can hold (4 GiB)"
        ));
    };
    let crc = crc32fast::hash(&out[start + FRAME_HEADER..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        let d = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        File::open(d)
            .and_then(|f| f.sync_all())
            .map_err(|e| io_err(d, "fsync the resilience directory", e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Writes `bytes` to `path` crash-safely: `*.tmp`, fsync, rename, fsync dir.
fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = tmp_path(path);
    let written = File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(&tmp, "write the temporary file", e));
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(path, format!("rename {} to it", tmp.display()), e));
    }
    sync_dir(dir)
}

/// A record that failed framing.
#[derive(Debug, Clone, Copy)]
struct BadFrame {
    /// Record number, from 1.
    record: u64,
    /// Byte offset where the record starts.
    offset: u64,
    /// Bytes from `offset` to the end of the file.
    rest: u64,
    problem: BadKind,
}

#[derive(Debug, Clone, Copy)]
enum BadKind {
    /// Fewer than 8 bytes left for the length and checksum.
    CutHeader,
    /// The payload runs past the end of the file.
    CutPayload { declared: u32 },
    /// A zero length (no record is empty).
    Empty,
    /// The payload does not match its checksum.
    Checksum,
}

impl BadFrame {
    fn into_error(self, path: &Path) -> StoreError {
        let BadFrame {
            record,
            offset,
            rest,
            problem,
        } = self;
        match problem {
            BadKind::CutHeader => truncated(
                path,
                format!("ends inside record {record} (at byte {offset}, {rest} bytes of its 8-byte length and checksum)"),
            ),
            BadKind::CutPayload { declared } => truncated(
                path,
                format!(
                    "ends inside record {record} (at byte {offset} it declares {declared} bytes, only {} follow)",
                    rest - FRAME_HEADER as u64
                ),
            ),
            BadKind::Empty => corrupt(path, format!("record {record} (at byte {offset}) has length 0")),
            BadKind::Checksum => {
                corrupt(path, format!("record {record} (at byte {offset}) fails its checksum"))
            }
        }
    }

    /// Could this be the commit log's last append, cut short by a crash?
    fn is_torn_log_append(&self) -> bool {
        match self.problem {
            BadKind::CutHeader => true,
            BadKind::CutPayload { declared } => declared <= MAX_LOG_PAYLOAD,
            BadKind::Empty | BadKind::Checksum => false,
        }
    }
}

/// The payload of a `Frame` is left in `FrameReader::buf`.
enum Next {
    Frame { record: u64, offset: u64 },
    End,
    Bad(BadFrame),
}

/// Reads framed records from a file, one at a time (memory: the largest
/// record).
struct FrameReader {
    path: PathBuf,
    file: BufReader<File>,
    len: u64,
    /// Offset of the next record.
    offset: u64,
    /// Records read so far.
    records: u64,
    buf: Vec<u8>,
}

impl FrameReader {
    /// `None` if the file does not exist.
    fn open(path: &Path) -> Result<Option<Self>, StoreError> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(path, "open the resilience file", e)),
        };
        let len = file
            .metadata()
            .map_err(|e| io_err(path, "read the metadata of", e))?
            .len();
        Ok(Some(FrameReader {
            path: path.to_path_buf(),
            file: BufReader::with_capacity(256 << 10, file),
            len,
            offset: 0,
            records: 0,
            buf: Vec::new(),
        }))
    }

    fn at_end(&self) -> bool {
        self.offset == self.len
    }

    fn next(&mut self) -> Result<Next, StoreError> {
        let rest = self.len - self.offset;
        if rest == 0 {
            return Ok(Next::End);
        }
        let record = self.records + 1;
        let offset = self.offset;
        let bad = |problem| {
            Ok(Next::Bad(BadFrame {
                record,
                offset,
                rest,
                problem,
            }))
        };
        if rest < FRAME_HEADER as u64 {
            return bad(BadKind::CutHeader);
        }
        let mut head = [0u8; FRAME_HEADER];
        self.file
            .read_exact(&mut head)
            .map_err(|e| io_err(&self.path, "read", e))?;
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        if len == 0 {
            return bad(BadKind::Empty);
        }
        if u64::from(len) > rest - FRAME_HEADER as u64 {
            return bad(BadKind::CutPayload { declared: len });
        }
        self.buf.resize(len as usize, 0);
        self.file
            .read_exact(&mut self.buf)
            .map_err(|e| io_err(&self.path, "read", e))?;
        if crc32fast::hash(&self.buf) != crc {
            return bad(BadKind::Checksum);
        }
        self.offset += FRAME_HEADER as u64 + u64::from(len);
        self.records = record;
        Ok(Next::Frame { record, offset })
    }

    /// The next record, any framing problem being an error; `None` at the end.
    fn next_good(&mut self) -> Result<Option<(u64, u64, &[u8])>, StoreError> {
        match self.next()? {
            Next::Frame { record, offset } => Ok(Some((record, offset, &self.buf))),
            Next::End => Ok(None),
            Next::Bad(bad) => Err(bad.into_error(&self.path)),
        }
    }

    /// Are all bytes from `offset` to the end zero?
    fn rest_is_zero(&mut self, offset: u64) -> Result<bool, StoreError> {
        let err = |e| io_err(&self.path, "read", e);
        self.file.seek(SeekFrom::Start(offset)).map_err(err)?;
        let mut chunk = [0u8; 4096];
        let mut left = self.len - offset;
        while left > 0 {
            let n = chunk.len().min(left as usize);
            self.file
                .read_exact(&mut chunk[..n])
                .map_err(|e| io_err(&self.path, "read", e))?;
            if chunk[..n].iter().any(|&b| b != 0) {
                return Ok(false);
            }
            left -= n as u64;
        }
        Ok(true)
    }
}

/// Decodes a whole payload (trailing bytes are an error).
fn decode<'a, T: Deserialize<'a>>(
    path: &Path,
    record: u64,
    offset: u64,
    payload: &'a [u8],
) -> Result<T, StoreError> {
    match postcard::take_from_bytes(payload) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(corrupt(
            path,
            format!(
                "record {record} (at byte {offset}) has {} stray bytes after its content",
                rest.len()
            ),
        )),
        Err(e) => Err(corrupt(
            path,
            format!("record {record} (at byte {offset}) can't be decoded: {e}"),
        )),
    }
}

/// Checks the version of a first record before decoding it in full. With
/// `tagged`, the payload is an enum whose variant 0 is the header; otherwise
/// a struct. Either way the version is the header's first field.
fn check_version(path: &Path, payload: &[u8], tagged: bool) -> Result<(), StoreError> {
    let version = if tagged {
        match postcard::take_from_bytes::<(u32, u32)>(payload) {
            Ok(((0, version), _)) => Some(version),
            _ => None,
        }
    } else {
        postcard::take_from_bytes::<u32>(payload)
            .ok()
            .map(|(version, _)| version)
    };
    match version {
        None => Err(corrupt(path, "record 1 is not a header")),
        Some(FORMAT_VERSION) => Ok(()),
        Some(found) => Err(StoreError::UnsupportedVersion {
            path: path.to_path_buf(),
            found,
            supported: FORMAT_VERSION,
        }),
    }
}

// ---------------------------------------------------------------- checkpoint files

/// Whether a checkpoint file holds the whole state or the changes since an
/// older checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckpointKind {
    Full,
    /// Only the entries changed (or removed) since checkpoint `parent`.
    Delta {
        parent: u64,
    },
}

/// The records of a checkpoint file. Variant 0 must stay the header, with
/// the format version first.
#[derive(Debug, Serialize, Deserialize)]
enum Record<'a> {
    Header {
        format_version: u32,
        app: &'a str,
        worker: &'a str,
        checkpoint: u64,
        kind: CheckpointKind,
    },
    Entry {
        stage: u32,
        key: &'a [u8],
        value: &'a [u8],
    },
    Remove {
        stage: u32,
        key: &'a [u8],
    },
    Source {
        index: u32,
        position: &'a [u8],
    },
    Sink {
        index: u32,
        position: &'a [u8],
    },
    Trailer {
        records: u64,
    },
}

/// Postcard's varint: LEB128, 7 bits a byte, low bits first.
fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Postcard's byte string: varint length, then the bytes.
fn push_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    push_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

impl Payload for Record<'_> {
    /// The per-key records are encoded by hand (about 4 times faster than
    /// through serde for 100-byte values); the bytes are postcard's, as a
    /// test checks.
    fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), String> {
        let (tag, index, first, second) = match *self {
            Record::Entry { stage, key, value } => (1, stage, key, Some(value)),
            Record::Remove { stage, key } => (2, stage, key, None),
            Record::Source { index, position } => (3, index, position, None),
            Record::Sink { index, position } => (4, index, position, None),
            Record::Header { .. } | Record::Trailer { .. } => {
                *out = postcard::to_extend(self, std::mem::take(out))
                    .map_err(|e| format!("can't encode a record: {e}"))?;
                return Ok(());
            }
        };
        out.reserve(16 + first.len() + second.map_or(0, <[u8]>::len));
        out.push(tag);
        push_varint(out, u64::from(index));
        push_bytes(out, first);
        if let Some(second) = second {
            push_bytes(out, second);
        }
        Ok(())
    }
}

/// What [`CheckpointWriter::commit`] and [`compact`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStats {
    pub path: PathBuf,
    /// Size of the file.
    pub bytes: u64,
    /// `Entry` records written (not counting `Remove`).
    pub entries: u64,
}

/// Writes one worker's file for one checkpoint.
///
/// Records go to `<name>.tmp` as they come; [`commit`](Self::commit) makes
/// the file durable under its final name. The record methods do not fail:
/// the first I/O error is kept and returned by `commit`. Dropping a writer
/// without committing deletes the temporary file. Committing replaces any
/// file already under the final name.
pub struct CheckpointWriter {
    dir: PathBuf,
    path: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
    buf: Vec<u8>,
    records: u64,
    entries: u64,
    bytes: u64,
    failed: Option<StoreError>,
    renamed: bool,
}

impl CheckpointWriter {
    /// Starts `<dir>/<app>-<worker>.ckpt-<checkpoint>` (the directory must
    /// exist). A delta's parent must be older than `checkpoint`.
    pub fn create(
        dir: &Path,
        app: &str,
        worker: &str,
        checkpoint: u64,
        kind: CheckpointKind,
    ) -> Result<Self, StoreError> {
        let path = checkpoint_path(dir, app, worker, checkpoint);
        if let CheckpointKind::Delta { parent } = kind {
            if parent >= checkpoint {
                return Err(StoreError::Invalid {
                    path,
                    problem: format!(
                        "checkpoint {checkpoint} can't be a delta on checkpoint {parent}: a parent must be older"
                    ),
                });
            }
        }
        let tmp = tmp_path(&path);
        let file = File::create(&tmp)
            .map_err(|e| io_err(&tmp, "create the temporary checkpoint file", e))?;
        let mut writer = CheckpointWriter {
            dir: dir.to_path_buf(),
            path,
            tmp,
            file: Some(file),
            buf: Vec::with_capacity(WRITE_CHUNK + (64 << 10)),
            records: 0,
            entries: 0,
            bytes: 0,
            failed: None,
            renamed: false,
        };
        writer.push(&Record::Header {
            format_version: FORMAT_VERSION,
            app,
            worker,
            checkpoint,
            kind,
        });
        Ok(writer)
    }

    /// The final path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The state of `key` in `stage` is `value`.
    pub fn entry(&mut self, stage: u32, key: &[u8], value: &[u8]) {
        if self.push(&Record::Entry { stage, key, value }) {
            self.entries += 1;
        }
    }

    /// `key` in `stage` has no state any more.
    pub fn remove(&mut self, stage: u32, key: &[u8]) {
        self.push(&Record::Remove { stage, key });
    }

    /// Source `index` replays from `position`.
    pub fn source(&mut self, index: u32, position: &[u8]) {
        self.push(&Record::Source { index, position });
    }

    /// Sink `index` has committed up to `position`.
    pub fn sink(&mut self, index: u32, position: &[u8]) {
        self.push(&Record::Sink { index, position });
    }

    fn push(&mut self, record: &Record<'_>) -> bool {
        if self.failed.is_some() {
            return false;
        }
        if let Err(problem) = frame_into(&mut self.buf, record) {
            self.failed = Some(StoreError::Invalid {
                path: self.path.clone(),
                problem,
            });
            return false;
        }
        self.records += 1;
        if self.buf.len() >= WRITE_CHUNK {
            self.flush_buf();
        }
        true
    }

    fn flush_buf(&mut self) {
        if self.failed.is_some() || self.buf.is_empty() {
            return;
        }
        let file = self.file.as_mut().expect("file open until commit");
        match file.write_all(&self.buf) {
            Ok(()) => {
                self.bytes += self.buf.len() as u64;
                self.buf.clear();
            }
            Err(e) => self.failed = Some(io_err(&self.tmp, "write", e)),
        }
    }

    /// Writes the trailer, fsyncs the file, renames it to its final name and
    /// fsyncs the directory. On error the temporary file is deleted.
    pub fn commit(mut self) -> Result<FileStats, StoreError> {
        let records = self.records;
        self.push(&Record::Trailer { records });
        self.flush_buf();
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let file = self.file.take().expect("file open until commit");
        file.sync_all().map_err(|e| io_err(&self.tmp, "fsync", e))?;
        drop(file);
        fs::rename(&self.tmp, &self.path).map_err(|e| {
            io_err(
                &self.path,
                format!("rename {} to it", self.tmp.display()),
                e,
            )
        })?;
        self.renamed = true;
        sync_dir(&self.dir)?;
        Ok(FileStats {
            path: self.path.clone(),
            bytes: self.bytes,
            entries: self.entries,
        })
    }
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        if !self.renamed {
            self.file.take();
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// One worker's state at one checkpoint, as [`load`] assembles it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CheckpointImage {
    pub checkpoint: u64,
    /// `(stage, key) -> value`.
    pub entries: BTreeMap<(u32, Vec<u8>), Vec<u8>>,
    /// Source index -> replay position.
    pub sources: BTreeMap<u32, Vec<u8>>,
    /// Sink index -> committed position.
    pub sinks: BTreeMap<u32, Vec<u8>>,
    /// The files applied, oldest first (the last is checkpoint's own file).
    pub files_read: Vec<PathBuf>,
}

/// Opens a checkpoint file and checks its header; `needed_by` is the delta
/// that asked for it, if any (for the error when it is missing).
fn open_checkpoint(
    dir: &Path,
    app: &str,
    worker: &str,
    checkpoint: u64,
    needed_by: Option<u64>,
) -> Result<(FrameReader, CheckpointKind), StoreError> {
    let path = checkpoint_path(dir, app, worker, checkpoint);
    let Some(mut reader) = FrameReader::open(&path)? else {
        return Err(match needed_by {
            Some(child) => StoreError::MissingParent {
                path,
                child,
                parent: checkpoint,
            },
            None => StoreError::Missing { path, checkpoint },
        });
    };
    let Some((record, offset, payload)) = reader.next_good()? else {
        return Err(truncated(&path, "is empty"));
    };
    check_version(&path, payload, true)?;
    let kind = match decode(&path, record, offset, payload)? {
        Record::Header {
            app: found_app,
            worker: found_worker,
            checkpoint: found,
            kind,
            ..
        } => {
            if found_app != app || found_worker != worker {
                return Err(wrong_owner(&path, (found_app, found_worker), (app, worker)));
            }
            if found != checkpoint {
                return Err(StoreError::WrongCheckpoint {
                    path,
                    found,
                    expected: checkpoint,
                });
            }
            kind
        }
        _ => return Err(corrupt(&path, "record 1 is not a header")),
    };
    Ok((reader, kind))
}

/// Reads the records after the header up to and including the trailer,
/// passing each content record to `on`.
fn read_body(reader: &mut FrameReader, mut on: impl FnMut(&Record<'_>)) -> Result<(), StoreError> {
    let path = reader.path.clone();
    loop {
        let Some((record, offset, payload)) = reader.next_good()? else {
            return Err(truncated(&path, "has no trailer"));
        };
        let trailer = match decode::<Record<'_>>(&path, record, offset, payload)? {
            Record::Header { .. } => {
                return Err(corrupt(
                    &path,
                    format!("record {record} (at byte {offset}) is a second header"),
                ))
            }
            Record::Trailer { records } => records,
            content => {
                on(&content);
                continue;
            }
        };
        if trailer != record - 1 {
            return Err(corrupt(
                &path,
                format!(
                    "its trailer counts {trailer} records but {} precede it",
                    record - 1
                ),
            ));
        }
        if !reader.at_end() {
            return Err(corrupt(
                &path,
                format!(
                    "it has {} bytes after its trailer",
                    reader.len - reader.offset
                ),
            ));
        }
        return Ok(());
    }
}

/// The chain of `checkpoint`, oldest (a full file) first, from the headers.
fn resolve_chain(
    dir: &Path,
    app: &str,
    worker: &str,
    checkpoint: u64,
) -> Result<Vec<(u64, CheckpointKind)>, StoreError> {
    let mut chain = Vec::new();
    let mut current = checkpoint;
    let mut needed_by = None;
    loop {
        let (_, kind) = open_checkpoint(dir, app, worker, current, needed_by)?;
        chain.push((current, kind));
        match kind {
            CheckpointKind::Full => break,
            CheckpointKind::Delta { parent } => {
                if parent >= current {
                    return Err(corrupt(
                        &checkpoint_path(dir, app, worker, current),
                        format!("it is a delta on checkpoint {parent}, which is not older"),
                    ));
                }
                needed_by = Some(current);
                current = parent;
            }
        }
    }
    chain.reverse();
    Ok(chain)
}

/// Assembles `worker`'s state at `checkpoint`: the full file its chain
/// starts from, then each delta up to `checkpoint`, every parent link and
/// every record checked. Any problem is an error: never partial data.
pub fn load(
    dir: &Path,
    app: &str,
    worker: &str,
    checkpoint: u64,
) -> Result<CheckpointImage, StoreError> {
    let chain = resolve_chain(dir, app, worker, checkpoint)?;
    let mut image = CheckpointImage {
        checkpoint,
        ..CheckpointImage::default()
    };
    for (id, kind) in chain {
        let (mut reader, found_kind) = open_checkpoint(dir, app, worker, id, None)?;
        if found_kind != kind {
            return Err(StoreError::Invalid {
                path: reader.path,
                problem: "the file changed while it was being loaded".to_string(),
            });
        }
        let newest = id == checkpoint;
        let CheckpointImage {
            entries,
            sources,
            sinks,
            ..
        } = &mut image;
        read_body(&mut reader, |record| match *record {
            Record::Entry { stage, key, value } => {
                entries.insert((stage, key.to_vec()), value.to_vec());
            }
            Record::Remove { stage, key } => {
                entries.remove(&(stage, key.to_vec()));
            }
            Record::Source { index, position } if newest => {
                sources.insert(index, position.to_vec());
            }
            Record::Sink { index, position } if newest => {
                sinks.insert(index, position.to_vec());
            }
            _ => {}
        })?;
        image.files_read.push(reader.path);
    }
    Ok(image)
}

/// Rewrites `checkpoint` as one full file (same crash-safe protocol; the
/// rename replaces the delta file atomically), so later loads read one file.
/// `None` if it already is a full file. The older files stay until
/// [`remove_older_than`].
pub fn compact(
    dir: &Path,
    app: &str,
    worker: &str,
    checkpoint: u64,
) -> Result<Option<FileStats>, StoreError> {
    let image = load(dir, app, worker, checkpoint)?;
    if image.files_read.len() == 1 {
        return Ok(None);
    }
    let mut writer = CheckpointWriter::create(dir, app, worker, checkpoint, CheckpointKind::Full)?;
    for ((stage, key), value) in &image.entries {
        writer.entry(*stage, key, value);
    }
    for (index, position) in &image.sources {
        writer.source(*index, position);
    }
    for (index, position) in &image.sinks {
        writer.sink(*index, position);
    }
    writer.commit().map(Some)
}

/// The checkpoint ids with a file of `worker` (`*.tmp` ignored), ascending.
/// A missing directory has none.
pub fn list(dir: &Path, app: &str, worker: &str) -> Result<Vec<u64>, StoreError> {
    let prefix = format!("{}{CKPT_INFIX}", stem(app, worker));
    let mut ids: Vec<u64> = dir_names(dir)?
        .iter()
        .filter_map(|name| parse_id(name, &prefix))
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

fn remove_files(
    dir: &Path,
    names: impl IntoIterator<Item = String>,
) -> Result<Vec<PathBuf>, StoreError> {
    let mut removed = Vec::new();
    for name in names {
        let path = dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path, "delete", e)),
        }
    }
    removed.sort();
    Ok(removed)
}

/// Once `keep_from` is complete, deletes `worker`'s files that no load of
/// `keep_from` or later needs: every checkpoint file older than `keep_from`
/// outside its chain (so everything below the newest full file at or before
/// it, and abandoned deltas), and every `*.tmp` with an id up to `keep_from`.
/// Newer files (a checkpoint in flight) are kept. If the chain of
/// `keep_from` is broken, nothing is deleted. Returns the deleted paths.
pub fn remove_older_than(
    dir: &Path,
    app: &str,
    worker: &str,
    keep_from: u64,
) -> Result<Vec<PathBuf>, StoreError> {
    let chain: BTreeSet<u64> = resolve_chain(dir, app, worker, keep_from)?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let prefix = format!("{}{CKPT_INFIX}", stem(app, worker));
    let doomed = dir_names(dir)?.into_iter().filter(|name| {
        if let Some(id) = parse_id(name, &prefix) {
            id < keep_from && !chain.contains(&id)
        } else if let Some(id) = name
            .strip_suffix(TMP_SUFFIX)
            .and_then(|n| parse_id(n, &prefix))
        {
            id <= keep_from
        } else {
            false
        }
    });
    remove_files(dir, doomed)
}

/// Clean shutdown: deletes all of `worker`'s checkpoint files, their
/// `*.tmp`s and its membership file. Returns the deleted paths.
pub fn remove_all(dir: &Path, app: &str, worker: &str) -> Result<Vec<PathBuf>, StoreError> {
    let stem = stem(app, worker);
    let prefix = format!("{stem}{CKPT_INFIX}");
    let cluster = format!("{stem}{CLUSTER_SUFFIX}");
    let cluster_tmp = format!("{cluster}{TMP_SUFFIX}");
    let doomed = dir_names(dir)?.into_iter().filter(|name| {
        parse_id(name.strip_suffix(TMP_SUFFIX).unwrap_or(name), &prefix).is_some()
            || *name == cluster
            || *name == cluster_tmp
    });
    remove_files(dir, doomed)
}

// ---------------------------------------------------------------- commit log

/// The records of the commit log. Variant 0 must stay the header, with the
/// format version first.
#[derive(Debug, Serialize, Deserialize)]
enum LogRecord<'a> {
    Header { format_version: u32, app: &'a str },
    Committed { checkpoint: u64, generation: u64 },
    Generation { generation: u64 },
}

impl Payload for LogRecord<'_> {}

/// A record the coordinator appends to its commit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitRecord {
    /// Checkpoint `checkpoint`, taken in `generation`, is complete.
    Committed { checkpoint: u64, generation: u64 },
    /// The cluster rolled back and now runs in `generation`.
    Generation { generation: u64 },
}

/// What the commit log says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommitState {
    /// The newest complete checkpoint.
    pub last_committed: Option<u64>,
    /// The generation of the last record (0 if none).
    pub generation: u64,
}

impl CommitState {
    fn apply(&mut self, record: CommitRecord) {
        match record {
            CommitRecord::Committed {
                checkpoint,
                generation,
            } => {
                self.last_committed = Some(checkpoint);
                self.generation = generation;
            }
            CommitRecord::Generation { generation } => self.generation = generation,
        }
    }
}

struct LogScan {
    state: CommitState,
    /// Length of the file without a torn last record.
    valid_len: u64,
    file_len: u64,
}

fn scan_log(path: &Path, app: &str) -> Result<Option<LogScan>, StoreError> {
    let Some(mut reader) = FrameReader::open(path)? else {
        return Ok(None);
    };
    // The header is written with the file, atomically: it is never torn.
    let Some((record, offset, payload)) = reader.next_good()? else {
        return Err(truncated(path, "is empty"));
    };
    check_version(path, payload, true)?;
    match decode(path, record, offset, payload)? {
        LogRecord::Header { app: found, .. } => {
            if found != app {
                return Err(wrong_owner(path, (found, INITIALIZER), (app, INITIALIZER)));
            }
        }
        _ => return Err(corrupt(path, "record 1 is not a header")),
    }
    let mut state = CommitState::default();
    let valid_len = loop {
        match reader.next()? {
            Next::End => break reader.len,
            Next::Frame { record, offset } => match decode(path, record, offset, &reader.buf)? {
                LogRecord::Header { .. } => {
                    return Err(corrupt(
                        path,
                        format!("record {record} (at byte {offset}) is a second header"),
                    ))
                }
                LogRecord::Committed {
                    checkpoint,
                    generation,
                } => state.apply(CommitRecord::Committed {
                    checkpoint,
                    generation,
                }),
                LogRecord::Generation { generation } => {
                    state.apply(CommitRecord::Generation { generation })
                }
            },
            Next::Bad(bad) => {
                if bad.is_torn_log_append() || reader.rest_is_zero(bad.offset)? {
                    break bad.offset;
                }
                return Err(match bad.problem {
                    BadKind::CutPayload { declared } => corrupt(
                        path,
                        format!(
                            "record {} (at byte {}) declares {declared} bytes, more than a commit record holds",
                            bad.record, bad.offset
                        ),
                    ),
                    _ => bad.into_error(path),
                });
            }
        }
    };
    Ok(Some(LogScan {
        state,
        valid_len,
        file_len: reader.len,
    }))
}

/// The coordinator's append-only commit log, `<app>-initializer.commits`.
///
/// Appends must go forwards: a committed checkpoint must be newer than the
/// last one, and generations never decrease.
pub struct CommitLog {
    path: PathBuf,
    file: File,
    /// Length of the valid content (where the next record goes).
    len: u64,
    state: CommitState,
    /// An append failed and could not be undone: refuse further appends.
    poisoned: bool,
}

impl CommitLog {
    /// `<dir>/<app>-initializer.commits`.
    pub fn path(dir: &Path, app: &str) -> PathBuf {
        dir.join(format!("{}-{INITIALIZER}.commits", sanitize(app)))
    }

    /// The log's state, ignoring a torn last record; `None` if there is no
    /// log. Changes nothing on disk.
    pub fn read(dir: &Path, app: &str) -> Result<Option<CommitState>, StoreError> {
        Ok(scan_log(&Self::path(dir, app), app)?.map(|scan| scan.state))
    }

    /// Opens the log for appending, creating it (crash-safely, with its
    /// header) if it does not exist, and cutting off a torn last record.
    pub fn open_or_create(dir: &Path, app: &str) -> Result<Self, StoreError> {
        let path = Self::path(dir, app);
        let (state, len) = match scan_log(&path, app)? {
            Some(scan) => {
                if scan.valid_len < scan.file_len {
                    OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .and_then(|f| {
                            f.set_len(scan.valid_len)?;
                            f.sync_all()
                        })
                        .map_err(|e| io_err(&path, "cut the torn last record off", e))?;
                }
                (scan.state, scan.valid_len)
            }
            None => {
                let mut bytes = Vec::new();
                frame_into(
                    &mut bytes,
                    &LogRecord::Header {
                        format_version: FORMAT_VERSION,
                        app,
                    },
                )
                .map_err(|problem| StoreError::Invalid {
                    path: path.clone(),
                    problem,
                })?;
                write_atomic(dir, &path, &bytes)?;
                (CommitState::default(), bytes.len() as u64)
            }
        };
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| io_err(&path, "open the commit log", e))?;
        Ok(CommitLog {
            path,
            file,
            len,
            state,
            poisoned: false,
        })
    }

    /// The state including every append so far.
    pub fn state(&self) -> CommitState {
        self.state
    }

    /// Appends `record` and fdatasyncs it before returning.
    pub fn append(&mut self, record: CommitRecord) -> Result<(), StoreError> {
        let invalid = |problem: String| StoreError::Invalid {
            path: self.path.clone(),
            problem,
        };
        if self.poisoned {
            return Err(invalid(
                "an earlier append failed and could not be undone; reopen the log".into(),
            ));
        }
        let (generation, payload) = match record {
            CommitRecord::Committed {
                checkpoint,
                generation,
            } => {
                if let Some(last) = self.state.last_committed {
                    if checkpoint <= last {
                        return Err(invalid(format!(
                            "can't commit checkpoint {checkpoint}: checkpoint {last} is already committed"
                        )));
                    }
                }
                (
                    generation,
                    LogRecord::Committed {
                        checkpoint,
                        generation,
                    },
                )
            }
            CommitRecord::Generation { generation } => {
                (generation, LogRecord::Generation { generation })
            }
        };
        if generation < self.state.generation {
            return Err(invalid(format!(
                "generation {generation} is older than the log's generation {}",
                self.state.generation
            )));
        }
        let mut bytes = Vec::with_capacity(40);
        frame_into(&mut bytes, &payload).map_err(invalid)?;
        if let Err(e) = self
            .file
            .write_all(&bytes)
            .and_then(|()| self.file.sync_data())
        {
            if self
                .file
                .set_len(self.len)
                .and_then(|()| self.file.sync_data())
                .is_err()
            {
                self.poisoned = true;
            }
            return Err(io_err(&self.path, "append to the commit log", e));
        }
        self.len += bytes.len() as u64;
        self.state.apply(record);
        Ok(())
    }

    /// Deletes the log (clean shutdown); `false` if there was none.
    /// Deletes the log, and a temp file its creation may have left.
    pub fn remove(dir: &Path, app: &str) -> Result<bool, StoreError> {
        let path = Self::path(dir, app);
        let tmp = tmp_path(&path);
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&tmp, "delete", e)),
        }
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(&path, "delete", e)),
        }
    }
}

// ---------------------------------------------------------------- membership

/// The one record of a membership file. The version must stay first.
#[derive(Debug, Serialize, Deserialize)]
struct ClusterFile<'a> {
    format_version: u32,
    app: &'a str,
    worker: &'a str,
    members: &'a [u8],
}

impl Payload for ClusterFile<'_> {}

/// Replaces `<app>-<worker>.cluster` with `members`, crash-safely.
pub fn write_membership(
    dir: &Path,
    app: &str,
    worker: &str,
    members: &[u8],
) -> Result<(), StoreError> {
    let path = membership_path(dir, app, worker);
    let mut bytes = Vec::with_capacity(members.len() + app.len() + worker.len() + 32);
    frame_into(
        &mut bytes,
        &ClusterFile {
            format_version: FORMAT_VERSION,
            app,
            worker,
            members,
        },
    )
    .map_err(|problem| StoreError::Invalid {
        path: path.clone(),
        problem,
    })?;
    write_atomic(dir, &path, &bytes)
}

/// The bytes [`write_membership`] stored, checksum and owner checked;
/// `None` if there is no membership file.
pub fn read_membership(dir: &Path, app: &str, worker: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let path = membership_path(dir, app, worker);
    let Some(mut reader) = FrameReader::open(&path)? else {
        return Ok(None);
    };
    let members = {
        let Some((record, offset, payload)) = reader.next_good()? else {
            return Err(truncated(&path, "is empty"));
        };
        check_version(&path, payload, false)?;
        let file: ClusterFile<'_> = decode(&path, record, offset, payload)?;
        if file.app != app || file.worker != worker {
            return Err(wrong_owner(&path, (file.app, file.worker), (app, worker)));
        }
        file.members.to_vec()
    };
    if !reader.at_end() {
        return Err(corrupt(
            &path,
            format!(
                "it has {} bytes after its record",
                reader.len - reader.offset
            ),
        ));
    }
    Ok(Some(members))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::{Duration, Instant};

    const APP: &str = "word count";
    const W: &str = "worker 1";
    const ADVICE: &str =
        "delete the resilience directory to start fresh, or restore it from a backup";

    type Entries = BTreeMap<(u32, Vec<u8>), Vec<u8>>;

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    /// `(stage, key, Some(value))` is an entry, `None` a remove.
    type Change<'a> = (u32, &'a [u8], Option<&'a [u8]>);

    fn write(
        dir: &Path,
        n: u64,
        kind: CheckpointKind,
        changes: &[Change<'_>],
        sources: &[(u32, &[u8])],
        sinks: &[(u32, &[u8])],
    ) -> FileStats {
        let mut w = CheckpointWriter::create(dir, APP, W, n, kind).unwrap();
        for &(stage, key, value) in changes {
            match value {
                Some(v) => w.entry(stage, key, v),
                None => w.remove(stage, key),
            }
        }
        for &(i, p) in sources {
            w.source(i, p);
        }
        for &(i, p) in sinks {
            w.sink(i, p);
        }
        w.commit().unwrap()
    }

    fn map(items: &[(u32, &[u8], &[u8])]) -> Entries {
        items
            .iter()
            .map(|&(s, k, v)| ((s, k.to_vec()), v.to_vec()))
            .collect()
    }

    fn positions(items: &[(u32, &[u8])]) -> BTreeMap<u32, Vec<u8>> {
        items.iter().map(|&(i, p)| (i, p.to_vec())).collect()
    }

    fn path(dir: &Path, n: u64) -> PathBuf {
        checkpoint_path(dir, APP, W, n)
    }

    /// 1 full, 2 delta on 1, 3 delta on 2.
    fn sample_chain(dir: &Path) {
        let full = CheckpointKind::Full;
        write(
            dir,
            1,
            full,
            &[
                (0, b"a", Some(b"1")),
                (0, b"b", Some(b"2")),
                (1, b"a", Some(b"x")),
            ],
            &[(0, b"src@1")],
            &[(0, b"sink@1")],
        );
        write(
            dir,
            2,
            CheckpointKind::Delta { parent: 1 },
            &[
                (0, b"b", Some(b"20")),
                (0, b"c", Some(b"3")),
                (0, b"a", None),
            ],
            &[(0, b"src@2"), (1, b"other@2")],
            &[(0, b"sink@2")],
        );
        write(
            dir,
            3,
            CheckpointKind::Delta { parent: 2 },
            &[
                (0, b"c", Some(b"30")),
                (0, b"c", Some(b"31")),
                (0, b"a", Some(b"back")),
                (1, b"a", None),
            ],
            &[(0, b"src@3")],
            &[(0, b"sink@3")],
        );
    }

    fn sample_image_3() -> (Entries, BTreeMap<u32, Vec<u8>>, BTreeMap<u32, Vec<u8>>) {
        (
            map(&[(0, b"a", b"back"), (0, b"b", b"20"), (0, b"c", b"31")]),
            positions(&[(0, b"src@3")]),
            positions(&[(0, b"sink@3")]),
        )
    }

    fn assert_names_file(err: &StoreError, file: &Path) {
        let text = err.to_string();
        assert!(
            text.contains(&file.display().to_string()),
            "error does not name {}: {text}",
            file.display()
        );
    }

    #[test]
    fn file_names_are_sanitized_padded_and_listed_in_order() {
        let d = tmp();
        let p = checkpoint_path(d.path(), "word count!", "w/1:é", 7);
        assert_eq!(
            p.file_name().unwrap(),
            "word_count_-w_1__.ckpt-00000000000000000007"
        );
        assert_eq!(sanitize("a.B_c-9"), "a.B_c-9");
        assert_eq!(
            membership_path(d.path(), "a b", "w").file_name().unwrap(),
            "a_b-w.cluster"
        );
        assert_eq!(
            CommitLog::path(d.path(), "a b").file_name().unwrap(),
            "a_b-initializer.commits"
        );
        for n in [10, 2, 1_000_000_000_000, 9] {
            write(d.path(), n, CheckpointKind::Full, &[], &[], &[]);
        }
        // Other workers' files, stray names and temp files are not listed.
        fs::write(d.path().join("word_count-worker_1.ckpt-5"), b"").unwrap();
        fs::write(
            d.path()
                .join("word_count-worker_10.ckpt-00000000000000000005"),
            b"",
        )
        .unwrap();
        fs::write(tmp_path(&path(d.path(), 3)), b"").unwrap();
        assert_eq!(
            list(d.path(), APP, W).unwrap(),
            vec![2, 9, 10, 1_000_000_000_000]
        );
        assert_eq!(
            list(&d.path().join("nope"), APP, W).unwrap(),
            Vec::<u64>::new()
        );
    }

    #[test]
    fn full_then_deltas_load_as_the_merged_image() {
        let d = tmp();
        sample_chain(d.path());
        let one = load(d.path(), APP, W, 1).unwrap();
        assert_eq!(one.checkpoint, 1);
        assert_eq!(
            one.entries,
            map(&[(0, b"a", b"1"), (0, b"b", b"2"), (1, b"a", b"x")])
        );
        assert_eq!(one.files_read, vec![path(d.path(), 1)]);

        let two = load(d.path(), APP, W, 2).unwrap();
        assert_eq!(
            two.entries,
            map(&[(0, b"b", b"20"), (0, b"c", b"3"), (1, b"a", b"x")])
        );
        assert_eq!(two.sources, positions(&[(0, b"src@2"), (1, b"other@2")]));
        assert_eq!(two.sinks, positions(&[(0, b"sink@2")]));

        let three = load(d.path(), APP, W, 3).unwrap();
        let (entries, sources, sinks) = sample_image_3();
        assert_eq!(three.entries, entries);
        // Sources and sinks come from the newest file only.
        assert_eq!(three.sources, sources);
        assert_eq!(three.sinks, sinks);
        assert_eq!(
            three.files_read,
            vec![path(d.path(), 1), path(d.path(), 2), path(d.path(), 3)]
        );
    }

    #[test]
    fn writer_reports_stats_and_later_records_win_within_a_file() {
        let d = tmp();
        let stats = write(
            d.path(),
            4,
            CheckpointKind::Full,
            &[
                (2, b"k", Some(b"old")),
                (2, b"k", Some(b"new")),
                (2, b"gone", Some(b"v")),
                (2, b"gone", None),
            ],
            &[(0, b"p1"), (0, b"p2")],
            &[],
        );
        assert_eq!(stats.entries, 3);
        assert_eq!(stats.path, path(d.path(), 4));
        assert_eq!(stats.bytes, fs::metadata(&stats.path).unwrap().len());
        let image = load(d.path(), APP, W, 4).unwrap();
        assert_eq!(image.entries, map(&[(2, b"k", b"new")]));
        assert_eq!(image.sources, positions(&[(0, b"p2")]));
        assert!(image.sinks.is_empty());
    }

    #[test]
    fn compaction_gives_the_same_image_from_one_file() {
        let d = tmp();
        sample_chain(d.path());
        let before = load(d.path(), APP, W, 3).unwrap();
        let stats = compact(d.path(), APP, W, 3)
            .unwrap()
            .expect("3 was a delta");
        assert_eq!(stats.entries, before.entries.len() as u64);
        let after = load(d.path(), APP, W, 3).unwrap();
        assert_eq!(after.files_read, vec![path(d.path(), 3)]);
        assert_eq!(
            (&after.entries, &after.sources, &after.sinks),
            (&before.entries, &before.sources, &before.sinks)
        );
        assert_eq!(compact(d.path(), APP, W, 3).unwrap(), None, "already full");
        assert!(!tmp_path(&path(d.path(), 3)).exists());
        // The older files are no longer needed by 3.
        let removed = remove_older_than(d.path(), APP, W, 3).unwrap();
        assert_eq!(removed, vec![path(d.path(), 1), path(d.path(), 2)]);
        assert_eq!(load(d.path(), APP, W, 3).unwrap().entries, before.entries);
        // A delta on the compacted checkpoint still loads.
        write(
            d.path(),
            4,
            CheckpointKind::Delta { parent: 3 },
            &[(0, b"d", Some(b"4"))],
            &[],
            &[],
        );
        let four = load(d.path(), APP, W, 4).unwrap();
        assert_eq!(four.files_read.len(), 2);
        assert_eq!(four.entries.len(), 4);
    }

    #[test]
    fn remove_older_than_keeps_the_chain_and_newer_files() {
        let d = tmp();
        let dir = d.path();
        let full = CheckpointKind::Full;
        let delta = |parent| CheckpointKind::Delta { parent };
        write(dir, 1, full, &[(0, b"a", Some(b"1"))], &[], &[]);
        write(dir, 2, delta(1), &[(0, b"b", Some(b"2"))], &[], &[]);
        write(dir, 3, full, &[(0, b"a", Some(b"3"))], &[], &[]);
        write(dir, 4, delta(3), &[(0, b"b", Some(b"4"))], &[], &[]);
        write(dir, 5, delta(3), &[(0, b"c", Some(b"5"))], &[], &[]); // 4 abandoned
        write(dir, 6, delta(5), &[(0, b"d", Some(b"6"))], &[], &[]);
        write(dir, 8, delta(6), &[(0, b"e", Some(b"8"))], &[], &[]); // in flight
        fs::write(tmp_path(&path(dir, 2)), b"junk").unwrap();
        fs::write(tmp_path(&path(dir, 9)), b"in flight").unwrap();
        fs::write(dir.join("other-app.ckpt-00000000000000000001"), b"not ours").unwrap();

        let removed = remove_older_than(dir, APP, W, 6).unwrap();
        assert_eq!(
            removed,
            vec![
                path(dir, 1),
                path(dir, 2),
                tmp_path(&path(dir, 2)),
                path(dir, 4)
            ]
        );
        assert_eq!(list(dir, APP, W).unwrap(), vec![3, 5, 6, 8]);
        assert!(tmp_path(&path(dir, 9)).exists());
        assert!(dir.join("other-app.ckpt-00000000000000000001").exists());
        let six = load(dir, APP, W, 6).unwrap();
        assert_eq!(
            six.entries,
            map(&[(0, b"a", b"3"), (0, b"c", b"5"), (0, b"d", b"6")])
        );
        assert_eq!(load(dir, APP, W, 8).unwrap().entries.len(), 4);
        assert_eq!(
            remove_older_than(dir, APP, W, 6).unwrap(),
            Vec::<PathBuf>::new()
        );
    }

    #[test]
    fn remove_older_than_deletes_nothing_when_the_chain_is_broken() {
        let d = tmp();
        sample_chain(d.path());
        fs::remove_file(path(d.path(), 2)).unwrap();
        let err = remove_older_than(d.path(), APP, W, 3).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::MissingParent {
                    child: 3,
                    parent: 2,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(list(d.path(), APP, W).unwrap(), vec![1, 3]);
        let err = remove_older_than(d.path(), APP, W, 7).unwrap_err();
        assert!(
            matches!(err, StoreError::Missing { checkpoint: 7, .. }),
            "{err}"
        );
    }

    #[test]
    fn remove_all_deletes_only_this_workers_files() {
        let d = tmp();
        let dir = d.path();
        sample_chain(dir);
        fs::write(tmp_path(&path(dir, 4)), b"x").unwrap();
        write_membership(dir, APP, W, b"members").unwrap();
        write_membership(dir, APP, "worker 2", b"members").unwrap();
        let mut other =
            CheckpointWriter::create(dir, APP, "worker 2", 1, CheckpointKind::Full).unwrap();
        other.entry(0, b"k", b"v");
        other.commit().unwrap();
        CommitLog::open_or_create(dir, APP).unwrap();

        let removed = remove_all(dir, APP, W).unwrap();
        assert_eq!(removed.len(), 5, "{removed:?}");
        assert_eq!(list(dir, APP, W).unwrap(), Vec::<u64>::new());
        assert_eq!(read_membership(dir, APP, W).unwrap(), None);
        assert_eq!(list(dir, APP, "worker 2").unwrap(), vec![1]);
        assert!(read_membership(dir, APP, "worker 2").unwrap().is_some());
        assert!(CommitLog::read(dir, APP).unwrap().is_some());
        assert!(CommitLog::remove(dir, APP).unwrap());
        assert!(!CommitLog::remove(dir, APP).unwrap());
        assert!(remove_all(&dir.join("nope"), APP, W).unwrap().is_empty());
    }

    #[test]
    fn temp_files_are_ignored_and_an_uncommitted_writer_leaves_none() {
        let d = tmp();
        sample_chain(d.path());
        // A complete-looking file under a temp name is still not a checkpoint.
        fs::copy(path(d.path(), 3), tmp_path(&path(d.path(), 9))).unwrap();
        assert_eq!(list(d.path(), APP, W).unwrap(), vec![1, 2, 3]);
        let err = load(d.path(), APP, W, 9).unwrap_err();
        assert!(
            matches!(err, StoreError::Missing { checkpoint: 9, .. }),
            "{err}"
        );
        assert_names_file(&err, &path(d.path(), 9));

        let mut w = CheckpointWriter::create(d.path(), APP, W, 10, CheckpointKind::Full).unwrap();
        w.entry(0, b"k", b"v");
        assert!(tmp_path(w.path()).exists());
        drop(w);
        assert!(!tmp_path(&path(d.path(), 10)).exists());
        assert!(!path(d.path(), 10).exists());
    }

    #[test]
    fn bad_arguments_and_missing_directory_are_reported() {
        let d = tmp();
        let err =
            CheckpointWriter::create(d.path(), APP, W, 5, CheckpointKind::Delta { parent: 5 })
                .err()
                .unwrap();
        assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("a parent must be older"), "{err}");
        let missing = d.path().join("no such dir");
        let err = CheckpointWriter::create(&missing, APP, W, 1, CheckpointKind::Full)
            .err()
            .unwrap();
        assert_names_file(&err, &tmp_path(&checkpoint_path(&missing, APP, W, 1)));
        let err = load(d.path(), APP, W, 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "checkpoint 1: resilience file {} is missing; {ADVICE}",
                path(d.path(), 1).display()
            )
        );
    }

    /// A small complete chain; returns the bytes of files 1 (full) and 2
    /// (delta on 1).
    fn small_chain(dir: &Path) -> (Vec<u8>, Vec<u8>) {
        write(
            dir,
            1,
            CheckpointKind::Full,
            &[(0, b"a", Some(b"1")), (3, b"b", Some(b"22"))],
            &[(0, b"s")],
            &[(0, b"k")],
        );
        write(
            dir,
            2,
            CheckpointKind::Delta { parent: 1 },
            &[(0, b"a", None), (0, b"c", Some(b"3"))],
            &[(0, b"t")],
            &[(1, b"l")],
        );
        (
            fs::read(path(dir, 1)).unwrap(),
            fs::read(path(dir, 2)).unwrap(),
        )
    }

    #[test]
    fn every_strict_prefix_of_a_file_fails_to_load() {
        let d = tmp();
        let dir = d.path();
        let (one, two) = small_chain(dir);
        let good = load(dir, APP, W, 2).unwrap();
        for (n, bytes) in [(1, &one), (2, &two)] {
            for cut in 0..bytes.len() {
                fs::write(path(dir, n), &bytes[..cut]).unwrap();
                let err = load(dir, APP, W, 2)
                    .expect_err(&format!("file {n} cut at {cut} of {}", bytes.len()));
                assert_names_file(&err, &path(dir, n));
                assert!(err.to_string().contains(ADVICE), "{err}");
                assert!(
                    matches!(err, StoreError::Truncated { .. }),
                    "file {n} cut at {cut}: {err}"
                );
            }
            fs::write(path(dir, n), bytes).unwrap();
            assert_eq!(load(dir, APP, W, 2).unwrap(), good);
        }
    }

    #[test]
    fn a_file_cut_at_a_record_boundary_has_no_trailer() {
        let d = tmp();
        let (one, _) = small_chain(d.path());
        // The trailer (Trailer { records: 5 }) is the last 8 + 2 bytes.
        fs::write(path(d.path(), 1), &one[..one.len() - 10]).unwrap();
        let err = load(d.path(), APP, W, 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "resilience file {} has no trailer (it was cut short); {ADVICE}",
                path(d.path(), 1).display()
            )
        );
    }

    #[test]
    fn any_flipped_byte_fails_to_load_and_names_the_file() {
        let d = tmp();
        let dir = d.path();
        let (one, two) = small_chain(dir);
        for (n, bytes) in [(1, &one), (2, &two)] {
            for at in 0..bytes.len() {
                for flip in [0x01u8, 0x80, 0xff] {
                    let mut bad = bytes.clone();
                    bad[at] ^= flip;
                    fs::write(path(dir, n), &bad).unwrap();
                    let err = load(dir, APP, W, 2)
                        .expect_err(&format!("file {n}, byte {at} ^ {flip:#x}"));
                    assert_names_file(&err, &path(dir, n));
                }
            }
            fs::write(path(dir, n), bytes).unwrap();
        }
        assert!(load(dir, APP, W, 2).is_ok());
    }

    #[test]
    fn a_checksum_failure_says_which_record() {
        let d = tmp();
        let (one, _) = small_chain(d.path());
        let mut bad = one.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1; // inside the trailer, record 6
        fs::write(path(d.path(), 1), &bad).unwrap();
        let err = load(d.path(), APP, W, 1).unwrap_err();
        let at = one.len() - 10;
        assert_eq!(
            err.to_string(),
            format!(
                "resilience file {}: record 6 (at byte {at}) fails its checksum (the file is corrupt); {ADVICE}",
                path(d.path(), 1).display()
            )
        );
        assert_eq!(err.path(), path(d.path(), 1));
    }

    #[test]
    fn a_missing_parent_delta_is_reported() {
        let d = tmp();
        sample_chain(d.path());
        fs::remove_file(path(d.path(), 2)).unwrap();
        let err = load(d.path(), APP, W, 3).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("checkpoint 3 needs .ckpt-2 which is missing"),
            "{text}"
        );
        assert_names_file(&err, &path(d.path(), 2));
        assert!(load(d.path(), APP, W, 1).is_ok());
    }

    #[test]
    fn files_of_another_app_or_worker_are_detected() {
        let d = tmp();
        let dir = d.path();
        // "a b" and "a_b" share file names.
        let mut w = CheckpointWriter::create(dir, "a b", "w", 1, CheckpointKind::Full).unwrap();
        w.entry(0, b"k", b"v");
        w.commit().unwrap();
        let err = load(dir, "a_b", "w", 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "resilience file {} belongs to app 'a b' worker 'w', not app 'a_b' worker 'w': it is a stale \
                 file of another app or worker (names differing only in characters other than A-Z a-z 0-9 . _ - \
                 share file names); move it away or use another resilience directory",
                checkpoint_path(dir, "a_b", "w", 1).display()
            )
        );
        // Another worker's file copied under this worker's name.
        fs::copy(checkpoint_path(dir, "a b", "w", 1), path(dir, 1)).unwrap();
        let err = load(dir, APP, W, 1).unwrap_err();
        assert!(matches!(err, StoreError::WrongOwner { .. }), "{err}");
        // A file renamed to another checkpoint id.
        fs::copy(
            checkpoint_path(dir, "a b", "w", 1),
            checkpoint_path(dir, "a b", "w", 5),
        )
        .unwrap();
        let err = load(dir, "a b", "w", 5).unwrap_err();
        assert!(
            err.to_string()
                .contains("holds checkpoint 1, not checkpoint 5"),
            "{err}"
        );
    }

    #[test]
    fn other_format_versions_are_refused() {
        let d = tmp();
        let mut bytes = Vec::new();
        let header = Record::Header {
            format_version: 99,
            app: APP,
            worker: W,
            checkpoint: 1,
            kind: CheckpointKind::Full,
        };
        frame_into(&mut bytes, &header).unwrap();
        frame_into(&mut bytes, &Record::Trailer { records: 1 }).unwrap();
        fs::write(path(d.path(), 1), &bytes).unwrap();
        let err = load(d.path(), APP, W, 1).unwrap_err();
        assert!(
            err.to_string()
                .contains("format version 99 is not supported"),
            "{err}"
        );
        assert_names_file(&err, &path(d.path(), 1));
    }

    #[test]
    fn structural_damage_is_reported() {
        let d = tmp();
        let dir = d.path();
        let (one, _) = small_chain(dir);
        // Bytes after the trailer.
        let mut longer = one.clone();
        longer.extend_from_slice(&one[..20]);
        fs::write(path(dir, 1), &longer).unwrap();
        let err = load(dir, APP, W, 1).unwrap_err();
        assert!(err.to_string().contains("bytes after its trailer"), "{err}");
        // A record dropped from the middle (valid framing, wrong count).
        let header_len = 8 + u32::from_le_bytes(one[..4].try_into().unwrap()) as usize;
        let second =
            8 + u32::from_le_bytes(one[header_len..header_len + 4].try_into().unwrap()) as usize;
        let mut shorter = one[..header_len].to_vec();
        shorter.extend_from_slice(&one[header_len + second..]);
        fs::write(path(dir, 1), &shorter).unwrap();
        let err = load(dir, APP, W, 1).unwrap_err();
        assert!(
            err.to_string()
                .contains("trailer counts 5 records but 4 precede it"),
            "{err}"
        );
        // Not a header first.
        let mut bytes = Vec::new();
        frame_into(&mut bytes, &Record::Trailer { records: 0 }).unwrap();
        fs::write(path(dir, 1), &bytes).unwrap();
        let err = load(dir, APP, W, 1).unwrap_err();
        assert!(
            err.to_string().contains("record 1 is not a header"),
            "{err}"
        );
        // A delta that claims a newer parent.
        let mut bytes = Vec::new();
        let kind = CheckpointKind::Delta { parent: 1 };
        frame_into(
            &mut bytes,
            &Record::Header {
                format_version: 1,
                app: APP,
                worker: W,
                checkpoint: 1,
                kind,
            },
        )
        .unwrap();
        frame_into(&mut bytes, &Record::Trailer { records: 1 }).unwrap();
        fs::write(path(dir, 1), &bytes).unwrap();
        let err = load(dir, APP, W, 1).unwrap_err();
        assert!(err.to_string().contains("which is not older"), "{err}");
    }

    proptest! {
        #[test]
        fn hand_encoded_records_are_postcard(
            stage in any::<u32>(),
            key in prop::collection::vec(any::<u8>(), 0..300),
            value in prop::collection::vec(any::<u8>(), 0..300),
            records in any::<u64>(),
        ) {
            let all = [
                Record::Entry { stage, key: &key, value: &value },
                Record::Remove { stage, key: &key },
                Record::Source { index: stage, position: &value },
                Record::Sink { index: stage, position: &key },
                Record::Trailer { records },
                Record::Header { format_version: 1, app: "a", worker: "w", checkpoint: records, kind: CheckpointKind::Delta { parent: 3 } },
            ];
            for record in &all {
                let mut mine = vec![9];
                record.encode_into(&mut mine).unwrap();
                prop_assert_eq!(&mine[1..], &postcard::to_allocvec(record).unwrap()[..]);
                let back: Record<'_> = postcard::from_bytes(&mine[1..]).unwrap();
                prop_assert_eq!(format!("{back:?}"), format!("{record:?}"));
            }
        }
    }

    // ------------------------------------------------------------ commit log

    fn committed(checkpoint: u64, generation: u64) -> CommitRecord {
        CommitRecord::Committed {
            checkpoint,
            generation,
        }
    }

    #[test]
    fn commit_log_tracks_the_last_commit_and_generation() {
        let d = tmp();
        assert_eq!(CommitLog::read(d.path(), APP).unwrap(), None);
        let mut log = CommitLog::open_or_create(d.path(), APP).unwrap();
        assert_eq!(log.state(), CommitState::default());
        assert_eq!(
            CommitLog::read(d.path(), APP).unwrap(),
            Some(CommitState::default())
        );
        log.append(committed(1, 0)).unwrap();
        log.append(committed(2, 0)).unwrap();
        log.append(CommitRecord::Generation { generation: 1 })
            .unwrap();
        let want = CommitState {
            last_committed: Some(2),
            generation: 1,
        };
        assert_eq!(log.state(), want);
        assert_eq!(CommitLog::read(d.path(), APP).unwrap(), Some(want));
        drop(log);
        let mut log = CommitLog::open_or_create(d.path(), APP).unwrap();
        assert_eq!(log.state(), want);
        log.append(committed(3, 1)).unwrap();
        // Going backwards is refused and leaves the log as it was.
        assert!(log.append(committed(3, 1)).is_err());
        assert!(log.append(committed(4, 0)).is_err());
        assert!(log
            .append(CommitRecord::Generation { generation: 0 })
            .is_err());
        let want = CommitState {
            last_committed: Some(3),
            generation: 1,
        };
        assert_eq!(CommitLog::read(d.path(), APP).unwrap(), Some(want));
        // "word_count" shares the file name of "word count"'s log.
        assert_eq!(
            CommitLog::path(d.path(), APP),
            CommitLog::path(d.path(), "word_count")
        );
        let err = CommitLog::read(d.path(), "word_count").unwrap_err();
        assert!(
            err.to_string()
                .contains("belongs to app 'word count' worker 'initializer'"),
            "{err}"
        );
    }

    fn log_with(dir: &Path, records: &[CommitRecord]) -> (Vec<u8>, Vec<usize>) {
        let mut log = CommitLog::open_or_create(dir, APP).unwrap();
        let mut ends = vec![fs::metadata(CommitLog::path(dir, APP)).unwrap().len() as usize];
        for &r in records {
            log.append(r).unwrap();
            ends.push(fs::metadata(CommitLog::path(dir, APP)).unwrap().len() as usize);
        }
        (fs::read(CommitLog::path(dir, APP)).unwrap(), ends)
    }

    #[test]
    fn commit_log_ignores_a_torn_last_record_and_appends_after_it() {
        let d = tmp();
        let (bytes, ends) = log_with(
            d.path(),
            &[committed(1, 0), committed(2, 0), committed(3, 0)],
        );
        let p = CommitLog::path(d.path(), APP);
        let before_last = ends[2];
        for cut in before_last..bytes.len() {
            fs::write(&p, &bytes[..cut]).unwrap();
            let state = CommitLog::read(d.path(), APP).unwrap().unwrap();
            assert_eq!(state.last_committed, Some(2), "cut at {cut}");
        }
        // A zero-filled tail (a crash after the size but before the data).
        let mut zeros = bytes.clone();
        zeros.extend_from_slice(&[0; 100]);
        fs::write(&p, &zeros).unwrap();
        assert_eq!(
            CommitLog::read(d.path(), APP)
                .unwrap()
                .unwrap()
                .last_committed,
            Some(3)
        );
        // Reopening cuts the torn tail off, so a new append is not corrupt.
        fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
        let mut log = CommitLog::open_or_create(d.path(), APP).unwrap();
        assert_eq!(log.state().last_committed, Some(2));
        assert_eq!(fs::metadata(&p).unwrap().len() as usize, before_last);
        log.append(committed(3, 1)).unwrap();
        assert_eq!(
            CommitLog::read(d.path(), APP).unwrap(),
            Some(CommitState {
                last_committed: Some(3),
                generation: 1
            })
        );
    }

    #[test]
    fn commit_log_reports_corruption_in_the_middle() {
        let d = tmp();
        let (bytes, ends) = log_with(
            d.path(),
            &[committed(1, 0), committed(2, 0), committed(3, 0)],
        );
        let p = CommitLog::path(d.path(), APP);
        // Any flipped byte in a record but the last is an error.
        for at in 0..ends[2] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x40;
            fs::write(&p, &bad).unwrap();
            let err = CommitLog::read(d.path(), APP).expect_err(&format!("byte {at}"));
            assert_names_file(&err, &p);
        }
        let mut bad = bytes.clone();
        bad[ends[1] + 9] ^= 1; // payload of record 3 (the second commit)
        fs::write(&p, &bad).unwrap();
        let err = CommitLog::read(d.path(), APP).unwrap_err();
        assert!(
            err.to_string().contains(&format!(
                "record 3 (at byte {}) fails its checksum",
                ends[1]
            )),
            "{err}"
        );
        assert!(CommitLog::open_or_create(d.path(), APP).is_err());
        // A complete last record with a bad checksum is corruption too.
        let mut bad = bytes.clone();
        *bad.last_mut().unwrap() ^= 1;
        fs::write(&p, &bad).unwrap();
        assert!(CommitLog::read(d.path(), APP).is_err());
    }

    // ------------------------------------------------------------ membership

    #[test]
    fn membership_round_trips_and_is_checked() {
        let d = tmp();
        let dir = d.path();
        assert_eq!(read_membership(dir, APP, W).unwrap(), None);
        write_membership(dir, APP, W, b"w1@a:1,w2@b:2").unwrap();
        write_membership(dir, APP, W, b"w1@a:1,w2@b:2,w3@c:3").unwrap();
        assert_eq!(
            read_membership(dir, APP, W).unwrap().unwrap(),
            b"w1@a:1,w2@b:2,w3@c:3"
        );
        assert!(!tmp_path(&membership_path(dir, APP, W)).exists());
        let p = membership_path(dir, APP, W);
        let bytes = fs::read(&p).unwrap();
        for cut in 0..bytes.len() {
            fs::write(&p, &bytes[..cut]).unwrap();
            let err = read_membership(dir, APP, W).unwrap_err();
            assert_names_file(&err, &p);
        }
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            fs::write(&p, &bad).unwrap();
            assert_names_file(&read_membership(dir, APP, W).unwrap_err(), &p);
        }
        fs::write(&p, &bytes).unwrap();
        // "worker_1" shares the file name of "worker 1".
        assert_eq!(p, membership_path(dir, APP, "worker_1"));
        let err = read_membership(dir, APP, "worker_1").unwrap_err();
        assert!(matches!(err, StoreError::WrongOwner { .. }), "{err}");
    }

    // ------------------------------------------------------------ model

    #[derive(Debug, Clone)]
    struct Step {
        gap: u64,
        full: bool,
        changes: Vec<(u32, u8, Option<Vec<u8>>)>,
        sources: Vec<(u32, Vec<u8>)>,
        sinks: Vec<(u32, Vec<u8>)>,
    }

    fn step() -> impl Strategy<Value = Step> {
        let change = (
            0u32..3,
            0u8..8,
            prop::option::weighted(0.75, prop::collection::vec(any::<u8>(), 0..6)),
        );
        let position = (0u32..3, prop::collection::vec(any::<u8>(), 0..5));
        (
            1u64..4,
            prop::bool::weighted(0.25),
            prop::collection::vec(change, 0..12),
            prop::collection::vec(position.clone(), 0..3),
            prop::collection::vec(position, 0..3),
        )
            .prop_map(|(gap, full, changes, sources, sinks)| Step {
                gap,
                full,
                changes,
                sources,
                sinks,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]

        #[test]
        fn load_equals_the_model(steps in prop::collection::vec(step(), 1..10), compact_at in any::<prop::sample::Index>()) {
            let d = tmp();
            let dir = d.path();
            let mut model: Entries = BTreeMap::new();
            // (id, entries, sources, sinks, files in its chain)
            let mut expected = Vec::new();
            let mut id = 0;
            let mut chain_len = 0;
            for (i, s) in steps.iter().enumerate() {
                let parent = id;
                id += s.gap;
                let full = i == 0 || s.full;
                let kind = if full { CheckpointKind::Full } else { CheckpointKind::Delta { parent } };
                let mut w = CheckpointWriter::create(dir, APP, W, id, kind).unwrap();
                if full {
                    // The old state then the changes: a full file may repeat
                    // and remove keys too.
                    for ((stage, key), value) in &model {
                        w.entry(*stage, key, value);
                    }
                    chain_len = 0;
                }
                for (stage, key, value) in &s.changes {
                    match value {
                        Some(v) => { w.entry(*stage, &[*key], v); model.insert((*stage, vec![*key]), v.clone()); }
                        None => { w.remove(*stage, &[*key]); model.remove(&(*stage, vec![*key])); }
                    }
                }
                for (index, p) in &s.sources { w.source(*index, p); }
                for (index, p) in &s.sinks { w.sink(*index, p); }
                w.commit().unwrap();
                chain_len += 1;
                let sources: BTreeMap<u32, Vec<u8>> = s.sources.iter().cloned().collect();
                let sinks: BTreeMap<u32, Vec<u8>> = s.sinks.iter().cloned().collect();
                expected.push((id, model.clone(), sources, sinks, chain_len));
            }
            for (id, entries, sources, sinks, files) in &expected {
                let image = load(dir, APP, W, *id).unwrap();
                prop_assert_eq!(&image.entries, entries);
                prop_assert_eq!(&image.sources, sources);
                prop_assert_eq!(&image.sinks, sinks);
                prop_assert_eq!(image.files_read.len(), *files);
            }
            let (k, ..) = expected[compact_at.index(expected.len())].clone();
            compact(dir, APP, W, k).unwrap();
            prop_assert_eq!(load(dir, APP, W, k).unwrap().files_read.len(), 1);
            for (id, entries, sources, sinks, _) in &expected {
                let image = load(dir, APP, W, *id).unwrap();
                prop_assert_eq!(&image.entries, entries);
                prop_assert_eq!(&image.sources, sources);
                prop_assert_eq!(&image.sinks, sinks);
            }
            let (last, entries, ..) = expected.last().unwrap().clone();
            remove_older_than(dir, APP, W, last).unwrap();
            let image = load(dir, APP, W, last).unwrap();
            prop_assert_eq!(&image.entries, &entries);
            let kept: Vec<u64> = image.files_read.iter().map(|p| {
                let name = p.file_name().unwrap().to_str().unwrap();
                parse_id(name, &format!("{}{CKPT_INFIX}", stem(APP, W))).unwrap()
            }).collect();
            prop_assert_eq!(list(dir, APP, W).unwrap(), kept);
        }
    }

    // ------------------------------------------------------------ cost

    fn median(mut v: Vec<Duration>) -> Duration {
        v.sort();
        v[v.len() / 2]
    }

    /// `cargo test --release -p quoll-core checkpoint_store::tests::timing -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn timing_full_100k_and_delta_1k() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        let value = [7u8; 100];
        let key = |i: u64| format!("key-{i:012}").into_bytes(); // 16 bytes
        let runs = 7;
        let keys: Vec<Vec<u8>> = (0..100_000).map(key).collect();
        let (mut full, mut full_commit, mut delta, mut load_full, mut load_chain, mut compaction) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        let mut sizes = (0, 0);
        for run in 0..runs {
            let base = run * 10 + 1;
            let t = Instant::now();
            let mut w = CheckpointWriter::create(dir, APP, W, base, CheckpointKind::Full).unwrap();
            for k in &keys {
                w.entry(1, k, &value);
            }
            w.source(0, b"offset 123456");
            w.sink(0, b"offset 654321");
            let c = Instant::now();
            sizes.0 = w.commit().unwrap().bytes;
            full_commit.push(c.elapsed());
            full.push(t.elapsed());

            let t = Instant::now();
            let mut w = CheckpointWriter::create(
                dir,
                APP,
                W,
                base + 1,
                CheckpointKind::Delta { parent: base },
            )
            .unwrap();
            for i in 0..1_000 {
                w.entry(1, &keys[i * 97], &value);
            }
            w.source(0, b"offset 123457");
            w.sink(0, b"offset 654322");
            sizes.1 = w.commit().unwrap().bytes;
            delta.push(t.elapsed());

            let t = Instant::now();
            assert_eq!(load(dir, APP, W, base).unwrap().entries.len(), 100_000);
            load_full.push(t.elapsed());
            let t = Instant::now();
            assert_eq!(load(dir, APP, W, base + 1).unwrap().files_read.len(), 2);
            load_chain.push(t.elapsed());
            let t = Instant::now();
            compact(dir, APP, W, base + 1).unwrap().unwrap();
            compaction.push(t.elapsed());
            remove_all(dir, APP, W).unwrap();
        }
        println!(
            "checkpoint_store timings (median of {runs}, dir {}):",
            dir.display()
        );
        println!(
            "  write full 100,000 x (16 B key, 100 B value): {:?} ({} bytes)",
            median(full),
            sizes.0
        );
        println!(
            "    of which commit (fsync, rename, dir fsync): {:?}",
            median(full_commit)
        );
        println!(
            "  write delta 1,000 entries:                    {:?} ({} bytes)",
            median(delta),
            sizes.1
        );
        println!(
            "  load full:                                    {:?}",
            median(load_full)
        );
        println!(
            "  load full + delta:                            {:?}",
            median(load_chain)
        );
        println!(
            "  compact full + delta:                         {:?}",
            median(compaction)
        );
    }
}
