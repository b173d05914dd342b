//! Checkpoint files: the writer, loading a checkpoint's chain of files,
//! compaction, listing and removal (the overview and invariants are in the
//! parent module's docs).
//!
//! A file holds a header, content records and a trailer counting them:
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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::key_group::KeyHashBuilder;

use super::records::{check_version, decode, frame_into, Payload, RecordReader};
use super::{
    checkpoint_path, corrupt, dir_names, io_err, parse_id, stem, sync_dir, tmp_path, truncated,
    wrong_owner, StoreError, CKPT_INFIX, CLUSTER_SUFFIX, FORMAT_VERSION, TMP_SUFFIX,
};

/// The writer hands its buffer to the file in chunks of about this size.
const WRITE_CHUNK: usize = 1 << 20;

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

/// One stage's entries in a [`CheckpointImage`]: key -> value, hashed as
/// a worker's in-memory state maps are, so that a restore can take a
/// stage's map over whole instead of inserting key by key.
pub type StageEntries = HashMap<Box<[u8]>, Vec<u8>, KeyHashBuilder>;

/// One worker's state at one checkpoint, as [`load`] assembles it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CheckpointImage {
    pub checkpoint: u64,
    /// Stage -> its entries (a stage whose keys were all removed has none).
    pub entries: BTreeMap<u32, StageEntries>,
    /// Source index -> replay position.
    pub sources: BTreeMap<u32, Vec<u8>>,
    /// Sink index -> committed position.
    pub sinks: BTreeMap<u32, Vec<u8>>,
    /// The files applied, oldest first (the last is checkpoint's own file).
    pub files_read: Vec<PathBuf>,
}

impl CheckpointImage {
    /// The number of entries, over all stages.
    pub fn len(&self) -> usize {
        self.entries.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value of `key` in `stage`.
    pub fn get(&self, stage: u32, key: &[u8]) -> Option<&Vec<u8>> {
        self.entries.get(&stage)?.get(key)
    }
}

/// Opens a checkpoint file and checks its header; `needed_by` is the delta
/// that asked for it, if any (for the error when it is missing).
fn open_checkpoint(
    dir: &Path,
    app: &str,
    worker: &str,
    checkpoint: u64,
    needed_by: Option<u64>,
) -> Result<(RecordReader, CheckpointKind), StoreError> {
    let path = checkpoint_path(dir, app, worker, checkpoint);
    let Some(mut reader) = RecordReader::open(&path)? else {
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
/// passing each content record to `on` with the bytes of the file from that
/// record on.
fn read_body(
    reader: &mut RecordReader,
    mut on: impl FnMut(&Record<'_>, u64),
) -> Result<(), StoreError> {
    let path = reader.path.clone();
    let len = reader.len;
    loop {
        let Some((record, offset, payload)) = reader.next_good()? else {
            return Err(truncated(&path, "has no trailer"));
        };
        let rest = len.saturating_sub(offset);
        let trailer = match decode::<Record<'_>>(&path, record, offset, payload)? {
            Record::Header { .. } => {
                return Err(corrupt(
                    &path,
                    format!("record {record} (at byte {offset}) is a second header"),
                ))
            }
            Record::Trailer { records } => records,
            content => {
                on(&content, rest);
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
        read_body(&mut reader, |record, rest| match *record {
            Record::Entry { stage, key, value } => {
                let stage_entries = entries.entry(stage).or_insert_with(|| {
                    // Room for the rest of the file if its records are
                    // about this size (a full file's usually are), so the
                    // map is not rehashed at every doubling; capped so an
                    // odd first record can't reserve much.
                    let size = (key.len() + value.len() + 16) as u64;
                    let expect = (rest / size).min(rest / 64).min(1 << 24);
                    StageEntries::with_capacity_and_hasher(expect as usize, KeyHashBuilder)
                });
                stage_entries.insert(key.into(), value.to_vec());
            }
            Record::Remove { stage, key } => {
                if let Some(stage_entries) = entries.get_mut(&stage) {
                    stage_entries.remove(key);
                }
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
    image
        .entries
        .retain(|_, stage_entries| !stage_entries.is_empty());
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
    for (stage, stage_entries) in &image.entries {
        for (key, value) in stage_entries {
            writer.entry(*stage, key, value);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint_store::test_support::{assert_names_file, tmp, ADVICE, APP, W};
    use crate::checkpoint_store::{
        membership_path, read_membership, sanitize, write_membership, CommitLog,
    };
    use proptest::prelude::*;
    use std::time::{Duration, Instant};

    type Entries = BTreeMap<(u32, Vec<u8>), Vec<u8>>;
    type Positions = BTreeMap<u32, Vec<u8>>;

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

    /// An image's entries in key order, to compare with a model.
    fn flat(image: &CheckpointImage) -> Entries {
        image
            .entries
            .iter()
            .flat_map(|(s, m)| m.iter().map(|(k, v)| ((*s, k.to_vec()), v.clone())))
            .collect()
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

    fn sample_image_3() -> (Entries, Positions, Positions) {
        (
            map(&[(0, b"a", b"back"), (0, b"b", b"20"), (0, b"c", b"31")]),
            positions(&[(0, b"src@3")]),
            positions(&[(0, b"sink@3")]),
        )
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
            flat(&one),
            map(&[(0, b"a", b"1"), (0, b"b", b"2"), (1, b"a", b"x")])
        );
        assert_eq!(one.files_read, vec![path(d.path(), 1)]);

        let two = load(d.path(), APP, W, 2).unwrap();
        assert_eq!(
            flat(&two),
            map(&[(0, b"b", b"20"), (0, b"c", b"3"), (1, b"a", b"x")])
        );
        assert_eq!(two.sources, positions(&[(0, b"src@2"), (1, b"other@2")]));
        assert_eq!(two.sinks, positions(&[(0, b"sink@2")]));

        let three = load(d.path(), APP, W, 3).unwrap();
        let (entries, sources, sinks) = sample_image_3();
        assert_eq!(flat(&three), entries);
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
        assert_eq!(flat(&image), map(&[(2, b"k", b"new")]));
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
        assert_eq!(stats.entries, before.len() as u64);
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
        assert_eq!(four.len(), 4);
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
            flat(&six),
            map(&[(0, b"a", b"3"), (0, b"c", b"5"), (0, b"d", b"6")])
        );
        assert_eq!(load(dir, APP, W, 8).unwrap().len(), 4);
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
                prop_assert_eq!(&flat(&image), entries);
                prop_assert_eq!(&image.sources, sources);
                prop_assert_eq!(&image.sinks, sinks);
                prop_assert_eq!(image.files_read.len(), *files);
            }
            let (k, ..) = expected[compact_at.index(expected.len())].clone();
            compact(dir, APP, W, k).unwrap();
            prop_assert_eq!(load(dir, APP, W, k).unwrap().files_read.len(), 1);
            for (id, entries, sources, sinks, _) in &expected {
                let image = load(dir, APP, W, *id).unwrap();
                prop_assert_eq!(&flat(&image), entries);
                prop_assert_eq!(&image.sources, sources);
                prop_assert_eq!(&image.sinks, sinks);
            }
            let (last, entries, ..) = expected.last().unwrap().clone();
            remove_older_than(dir, APP, W, last).unwrap();
            let image = load(dir, APP, W, last).unwrap();
            prop_assert_eq!(&flat(&image), &entries);
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
            assert_eq!(load(dir, APP, W, base).unwrap().len(), 100_000);
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
