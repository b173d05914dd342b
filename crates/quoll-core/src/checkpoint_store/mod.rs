//! Durable checkpoint files, the coordinator's commit log and the
//! membership file: what a worker needs on disk to roll back to the last
//! complete checkpoint after a failure.
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
//! | `<app>-<worker>.left` | a line of text: the worker left its cluster (a shrink) and must not run again |
//!
//! `N` is zero-padded to 20 digits (all of `u64`), so names sort by id.
//!
//! # Records
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
//! `n > 0` (see `records` and `docs/formats.md`). Error messages number
//! records from 1 (the header).
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
//! `{ format_version, app, worker, members }`. The left marker is not
//! records: its existence is what counts, its text is for people.
//!
//! # Crash safety
//!
//! A checkpoint file, a membership file and a left marker are written as `<name>.tmp`,
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
//!
//! # Modules
//!
//! - this one: errors, file names, crash-safe whole-file writes;
//! - `records`: the record framing and the checked record reader;
//! - `checkpoint_file`: the checkpoint writer, loading chains, compaction,
//!   listing and removal;
//! - `commit_log`: the coordinator's commit log;
//! - `membership`: the membership file and the left marker.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

mod checkpoint_file;
mod commit_log;
mod membership;
mod records;

pub use checkpoint_file::{
    compact, list, load, remove_all, remove_older_than, CheckpointImage, CheckpointKind,
    CheckpointWriter, FileStats, StageEntries,
};
pub use commit_log::{CommitLog, CommitRecord, CommitState};
pub use membership::{mark_left, read_membership, write_membership};

/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

pub(crate) const CKPT_INFIX: &str = ".ckpt-";
pub(crate) const TMP_SUFFIX: &str = ".tmp";
pub(crate) const CLUSTER_SUFFIX: &str = ".cluster";
const LEFT_SUFFIX: &str = ".left";
const ID_DIGITS: usize = 20;
/// The worker name used for the commit log in error messages.
pub(crate) const INITIALIZER: &str = "initializer";

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

pub(crate) fn io_err(path: &Path, action: impl Into<String>, source: io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        action: action.into(),
        source,
    }
}

pub(crate) fn corrupt(path: &Path, problem: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

pub(crate) fn truncated(path: &Path, problem: impl Into<String>) -> StoreError {
    StoreError::Truncated {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

pub(crate) fn wrong_owner(path: &Path, found: (&str, &str), wanted: (&str, &str)) -> StoreError {
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

pub(crate) fn stem(app: &str, worker: &str) -> String {
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

/// `<dir>/<app>-<worker>.left`.
pub fn left_path(dir: &Path, app: &str, worker: &str) -> PathBuf {
    dir.join(format!("{}{LEFT_SUFFIX}", stem(app, worker)))
}

pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(TMP_SUFFIX);
    PathBuf::from(s)
}

/// The id in `<prefix><20 digits>`, if `name` is exactly that.
pub(crate) fn parse_id(name: &str, prefix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?;
    if digits.len() == ID_DIGITS && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

/// The names (valid UTF-8 only) in `dir`; none if `dir` does not exist.
pub(crate) fn dir_names(dir: &Path) -> Result<Vec<String>, StoreError> {
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

// ---------------------------------------------------------------- whole-file writes

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
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
pub(crate) fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
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

#[cfg(test)]
pub(crate) mod test_support {
    use super::StoreError;
    use std::path::Path;

    pub const APP: &str = "word count";
    pub const W: &str = "worker 1";
    pub const ADVICE: &str =
        "delete the resilience directory to start fresh, or restore it from a backup";

    pub fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    pub fn assert_names_file(err: &StoreError, file: &Path) {
        let text = err.to_string();
        assert!(
            text.contains(&file.display().to_string()),
            "error does not name {}: {text}",
            file.display()
        );
    }
}
