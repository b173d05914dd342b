//! The coordinator's append-only commit log, `<app>-initializer.commits`:
//! a checkpoint is complete exactly when its `Committed` record is in it.
//!
//! ```text
//! Header { format_version, app }
//! ( Committed { checkpoint, generation } | Generation { generation } )*
//! ```
//!
//! Invariants: appends go forwards (a committed checkpoint is newer than
//! the last one, generations never decrease) and each is fdatasynced before
//! [`CommitLog::append`] returns. Only a torn last record (an append cut by
//! a crash) is ignored, and cut off before the next append; any other bad
//! record is corruption and is reported.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::records::{
    check_version, decode, frame_into, BadKind, BadRecord, Next, Payload, RecordReader,
};
use super::{
    corrupt, io_err, sanitize, tmp_path, truncated, write_atomic, wrong_owner, StoreError,
    FORMAT_VERSION, INITIALIZER,
};

/// No commit log record after the header is longer than this (a variant tag
/// and two u64 varints). A cut-off record declaring more is corrupt, not torn.
const MAX_LOG_PAYLOAD: u32 = 32;

/// Could this bad record be the log's last append, cut short by a crash?
fn is_torn_append(bad: &BadRecord) -> bool {
    match bad.problem {
        BadKind::CutHeader => true,
        BadKind::CutPayload { declared } => declared <= MAX_LOG_PAYLOAD,
        BadKind::Empty | BadKind::Checksum => false,
    }
}

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
    let Some(mut reader) = RecordReader::open(path)? else {
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
            Next::Record { record, offset } => {
                match decode(path, record, offset, reader.payload())? {
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
                }
            }
            Next::Bad(bad) => {
                if is_torn_append(&bad) || reader.rest_is_zero(bad.offset)? {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint_store::test_support::{assert_names_file, tmp, APP};
    use std::fs;

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
}
