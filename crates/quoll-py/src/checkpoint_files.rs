//! This worker's resilience files, as the checkpoint protocol uses them:
//! its part files and, on the initializer, the commit log.
//!
//! A thin layer over [`quoll_core::checkpoint_store`] (formats, checksums,
//! atomic writes), bound to one worker's directory, app and name. The
//! calls block; the worker makes them on I/O threads or with the GIL
//! released. Errors keep their type ([`StoreError`]).

use crate::executor::Snapshot;
use quoll_core::checkpoint::CheckpointId;
use quoll_core::checkpoint_store::{
    self, CheckpointKind, CheckpointWriter, CommitLog, CommitRecord, StoreError,
};
use quoll_core::membership::Generation;
use quoll_core::node::Recovered;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// This worker's resilience files.
#[derive(Clone)]
pub struct Files {
    pub dir: PathBuf,
    pub app: String,
    pub worker: String,
}

/// What recovery loads: the image of one checkpoint.
pub struct Image {
    /// Files read to rebuild it: the full file and the deltas after it.
    pub files_read: usize,
    pub entries: BTreeMap<(u32, Vec<u8>), Vec<u8>>,
    pub sources: BTreeMap<u32, Vec<u8>>,
    pub sinks: BTreeMap<u32, Vec<u8>>,
}

impl Files {
    /// What this worker finds of an earlier run: its own part files and, on
    /// the initializer, the commit log's last commit and generation.
    pub fn recovered(&self, initializer: bool) -> Result<Recovered, StoreError> {
        let parts = checkpoint_store::list(&self.dir, &self.app, &self.worker)?;
        let mut recovered = Recovered {
            has_files: !parts.is_empty(),
            ..Recovered::default()
        };
        if initializer {
            if let Some(state) = CommitLog::read(&self.dir, &self.app)? {
                recovered.has_files = true;
                recovered.last_committed = state.last_committed;
                recovered.generation = state.generation;
            } else if CommitLog::path(&self.dir, &self.app).exists() {
                recovered.has_files = true;
            }
        }
        Ok(recovered)
    }

    /// Writes this worker's part of checkpoint `id`, a delta on `parent` or
    /// full; returns the file's size.
    pub fn write(
        &self,
        id: CheckpointId,
        parent: Option<CheckpointId>,
        snapshot: Snapshot,
    ) -> Result<u64, StoreError> {
        let kind = match parent {
            Some(parent) => CheckpointKind::Delta { parent },
            None => CheckpointKind::Full,
        };
        let mut w = CheckpointWriter::create(&self.dir, &self.app, &self.worker, id, kind)?;
        for (stage, key, value) in &snapshot.entries {
            w.entry(*stage, key, value);
        }
        for (i, p) in &snapshot.sources {
            w.source(*i, p);
        }
        for (i, p) in &snapshot.sinks {
            w.sink(*i, p);
        }
        w.commit().map(|stats| stats.bytes)
    }

    /// Loads checkpoint `id` (None: nothing was ever committed, the empty
    /// image) and removes the files of later checkpoints, which never
    /// completed.
    pub fn load(&self, id: Option<CheckpointId>) -> Result<Image, StoreError> {
        for later in checkpoint_store::list(&self.dir, &self.app, &self.worker)? {
            if id.is_none_or(|id| later > id) {
                let path =
                    checkpoint_store::checkpoint_path(&self.dir, &self.app, &self.worker, later);
                std::fs::remove_file(&path).map_err(|source| StoreError::Io {
                    path,
                    action: "remove (a checkpoint that never completed)".into(),
                    source,
                })?;
            }
        }
        let Some(id) = id else {
            return Ok(Image {
                files_read: 0,
                entries: BTreeMap::new(),
                sources: BTreeMap::new(),
                sinks: BTreeMap::new(),
            });
        };
        let image = checkpoint_store::load(&self.dir, &self.app, &self.worker, id)?;
        Ok(Image {
            files_read: image.files_read.len(),
            entries: image.entries,
            sources: image.sources,
            sinks: image.sinks,
        })
    }

    /// After checkpoint `id` committed: compact if asked, then delete what
    /// no longer matters.
    pub fn after_commit(&self, id: CheckpointId, compact: bool) -> Result<(), StoreError> {
        if compact {
            checkpoint_store::compact(&self.dir, &self.app, &self.worker, id)?;
        }
        checkpoint_store::remove_older_than(&self.dir, &self.app, &self.worker, id).map(|_| ())
    }

    /// Clean shutdown: the files are no longer needed.
    pub fn remove_all(&self, initializer: bool) -> Result<(), StoreError> {
        checkpoint_store::remove_all(&self.dir, &self.app, &self.worker)?;
        if initializer {
            CommitLog::remove(&self.dir, &self.app)?;
        }
        Ok(())
    }

    /// The initializer's commit log, opened for appending.
    pub fn commit_log(&self) -> Result<CommitLog, StoreError> {
        CommitLog::open_or_create(&self.dir, &self.app)
    }
}

/// Durably records that `generation` is in use.
pub fn record_generation(log: &mut CommitLog, generation: Generation) -> Result<(), StoreError> {
    log.append(CommitRecord::Generation { generation })
}

/// Durably records checkpoint `id` as committed.
pub fn record_commit(
    log: &mut CommitLog,
    id: CheckpointId,
    generation: Generation,
) -> Result<(), StoreError> {
    log.append(CommitRecord::Committed {
        checkpoint: id,
        generation,
    })
}
