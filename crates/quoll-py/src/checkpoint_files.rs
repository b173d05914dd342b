//! This worker's resilience files, as the checkpoint protocol uses them:
//! its part files and, on the initializer, the commit log.
//!
//! A thin layer over [`quoll_core::checkpoint_store`] (formats, checksums,
//! atomic writes), bound to one worker's directory, app and name. With
//! `--resilience-dir s3://bucket/prefix` the directory is a local working
//! copy mirrored to object storage by [`quoll_objstore::Mirror`]: every
//! step is done locally first, then in the store, and a step counts only
//! once the store has it. The calls block; the worker makes them on I/O
//! threads or with the GIL released. Errors keep their type
//! ([`quoll_objstore::Error`], wrapping the core's `StoreError`).

use crate::executor::Snapshot;
use quoll_core::checkpoint::CheckpointId;
use quoll_core::checkpoint_store::{
    self, CheckpointKind, CheckpointWriter, CommitLog, CommitRecord, StoreError,
};
use quoll_core::membership::Generation;
use quoll_core::node::{MembershipRecord, Recovered};
use quoll_objstore::{Error, Mirror};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tracing::warn;

/// This worker's resilience files.
#[derive(Clone)]
pub struct Files {
    /// The resilience directory, or the working copy of the object store.
    pub dir: PathBuf,
    pub app: String,
    pub worker: String,
    /// With `--resilience-dir s3://...`: the store `dir` is mirrored to.
    mirror: Option<Arc<Mirror>>,
}

/// What recovery loads: the image of one checkpoint.
#[derive(Default)]
pub struct Image {
    /// Files read to rebuild it: the full file and the deltas after it.
    pub files_read: usize,
    /// Stage -> its entries.
    pub entries: BTreeMap<u32, checkpoint_store::StageEntries>,
    pub sources: BTreeMap<u32, Vec<u8>>,
    pub sinks: BTreeMap<u32, Vec<u8>>,
}

impl Files {
    /// The files of `worker` under `--resilience-dir` `resilience_dir`: a
    /// directory, or `s3://bucket/prefix` (credentials from `AWS_*`).
    pub fn open(resilience_dir: &str, app: String, worker: String) -> Result<Self, Error> {
        let (dir, mirror) = match quoll_objstore::parse_url(resilience_dir) {
            Some(_) => (
                quoll_objstore::local_dir(resilience_dir, &worker),
                Some(Arc::new(Mirror::s3(resilience_dir, &app, &worker)?)),
            ),
            None => (PathBuf::from(resilience_dir), None),
        };
        Ok(Files {
            dir,
            app,
            worker,
            mirror,
        })
    }

    /// What this worker finds of an earlier run: its own part files and, on
    /// the initializer, the commit log's last commit and generation. With
    /// object storage the working copy is first made what the store holds
    /// (waiting while the store is out of reach).
    pub fn recovered(&self, initializer: bool) -> Result<Recovered, Error> {
        if let Some(m) = &self.mirror {
            m.hydrate(&self.dir, initializer)?;
        }
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
            recovered.membership = self.membership()?;
        }
        Ok(recovered)
    }

    /// The initializer's membership record: how the membership changed
    /// since the cluster first formed (nothing if there is no record).
    fn membership(&self) -> Result<MembershipRecord, Error> {
        let Some(bytes) = checkpoint_store::read_membership(&self.dir, &self.app, &self.worker)?
        else {
            return Ok(MembershipRecord::default());
        };
        serde_json::from_slice(&bytes)
            .map_err(|e| self.bad_membership(format!("not a membership record: {e}")))
    }

    fn bad_membership(&self, problem: String) -> Error {
        Error::Local(StoreError::Invalid {
            path: checkpoint_store::membership_path(&self.dir, &self.app, &self.worker),
            problem,
        })
    }

    /// Durably records the membership's changes (the initializer's
    /// membership record), replacing the previous record.
    pub fn record_membership(&self, record: &MembershipRecord) -> Result<(), Error> {
        let bytes = serde_json::to_vec(record).map_err(|e| self.bad_membership(e.to_string()))?;
        checkpoint_store::write_membership(&self.dir, &self.app, &self.worker, &bytes)?;
        if let Some(m) = &self.mirror {
            m.upload_membership(&self.dir)?;
        }
        Ok(())
    }

    /// Writes this worker's part of checkpoint `id`, a delta on `parent` or
    /// full; returns the file's size.
    pub fn write(
        &self,
        id: CheckpointId,
        parent: Option<CheckpointId>,
        snapshot: Snapshot,
    ) -> Result<u64, Error> {
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
        let stats = w.commit()?;
        if let Some(m) = &self.mirror {
            m.upload_part(&self.dir, id)?;
        }
        Ok(stats.bytes)
    }

    /// Loads checkpoint `id` (None: nothing was ever committed, the empty
    /// image) and removes the files of later checkpoints, which never
    /// completed.
    pub fn load(&self, id: Option<CheckpointId>) -> Result<Image, Error> {
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
        if let Some(m) = &self.mirror {
            // Left behind, they would only be downloaded and removed again.
            if let Err(e) = m.discard_later(id) {
                warn!("rollback: {e}");
            }
        }
        let Some(id) = id else {
            return Ok(Image::default());
        };
        let image = checkpoint_store::load(&self.dir, &self.app, &self.worker, id).map_err(
            |e| match &self.mirror {
                Some(m) => m.object_error(e),
                None => Error::Local(e),
            },
        )?;
        Ok(Image {
            files_read: image.files_read.len(),
            entries: image.entries,
            sources: image.sources,
            sinks: image.sinks,
        })
    }

    /// After checkpoint `id` committed: compact if asked, then delete what
    /// no longer matters.
    pub fn after_commit(&self, id: CheckpointId, compact: bool) -> Result<(), Error> {
        let compacted =
            compact && checkpoint_store::compact(&self.dir, &self.app, &self.worker, id)?.is_some();
        checkpoint_store::remove_older_than(&self.dir, &self.app, &self.worker, id)?;
        if let Some(m) = &self.mirror {
            m.after_commit(&self.dir, id, compacted)?;
        }
        Ok(())
    }

    /// What to delete to add this worker to a cluster again, if it left its
    /// cluster (a shrink) in an earlier run: its left marker and, with
    /// object storage, the marker's object (a worker restarted on another
    /// disk finds it there).
    pub fn left_marker(&self) -> Result<Option<String>, Error> {
        let path = checkpoint_store::left_path(&self.dir, &self.app, &self.worker);
        let here = path.exists();
        Ok(match &self.mirror {
            None => here.then(|| path.display().to_string()),
            Some(m) => (here || m.left_marker(&self.dir)?)
                .then(|| format!("{} and the object {}", path.display(), m.left_marker_url())),
        })
    }

    /// This worker left its cluster: the left marker first (in the store
    /// too), then the checkpoint files go, so a restart at any moment finds
    /// one or the other.
    pub fn leave(&self) -> Result<(), Error> {
        let delete = match &self.mirror {
            Some(m) => format!("Delete this file and the object {}", m.left_marker_url()),
            None => "Delete this file".into(),
        };
        let note = format!(
            "worker '{}' of app '{}' left its cluster (a shrink); its state is with the other \
             workers. {delete} to add it to a cluster again.\n",
            self.worker, self.app
        );
        checkpoint_store::mark_left(&self.dir, &self.app, &self.worker, &note)?;
        if let Some(m) = &self.mirror {
            m.upload_left_marker(&self.dir)?;
        }
        self.remove_all(false)
    }

    /// Clean shutdown: the files are no longer needed.
    pub fn remove_all(&self, initializer: bool) -> Result<(), Error> {
        checkpoint_store::remove_all(&self.dir, &self.app, &self.worker)?;
        if initializer {
            CommitLog::remove(&self.dir, &self.app)?;
        }
        if let Some(m) = &self.mirror {
            m.remove_all(initializer)?;
        }
        Ok(())
    }

    /// The initializer's commit log, opened for appending.
    pub fn commit_log(&self) -> Result<CommitLog, Error> {
        Ok(CommitLog::open_or_create(&self.dir, &self.app)?)
    }

    /// Durably records that `generation` is in use (in the store first,
    /// create-only, waiting for the store if it is out of reach).
    pub fn record_generation(
        &self,
        log: &mut CommitLog,
        generation: Generation,
    ) -> Result<(), Error> {
        if let Some(m) = &self.mirror {
            m.record_generation(generation)?;
        }
        Ok(log.append(CommitRecord::Generation { generation })?)
    }

    /// Durably records checkpoint `id` as committed: with object storage
    /// its create-only marker decides, so two coordinators can't both
    /// commit it.
    pub fn record_commit(
        &self,
        log: &mut CommitLog,
        id: CheckpointId,
        generation: Generation,
    ) -> Result<(), Error> {
        if let Some(m) = &self.mirror {
            m.record_commit(id, generation, log.state().last_committed)?;
        }
        Ok(log.append(CommitRecord::Committed {
            checkpoint: id,
            generation,
        })?)
    }
}
