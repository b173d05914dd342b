//! Checkpoints as a worker runs them: this worker's files, the
//! initializer's commit log, and the two state machines of the protocol.
//!
//! Protocol (DESIGN decision 7, aligned barriers):
//! 1. Every interval the initializer's [`Coordinator`] starts checkpoint N
//!    (one in flight at a time) by sending `Checkpoint { N }` to everyone.
//! 2. A worker starts its part on that message or on the first barrier N
//!    from a peer, whichever comes first ([`Alignment`]): it records its
//!    sources' positions, sends barrier N down every data link, and takes
//!    no more source input. Data arriving on a link after that link's
//!    barrier is held back.
//! 3. With barrier N from every peer, everything before the barriers has
//!    been processed: the worker records its sinks' lengths, encodes its
//!    changed state (the app's codec) and resumes; an I/O thread syncs the
//!    sinks, writes the checkpoint file
//!    (temp file, checksums, fsync, rename, directory fsync) and the worker
//!    tells the coordinator `CheckpointDone { N }`.
//! 4. With every worker done, the coordinator appends "N committed" to its
//!    commit log (fsync) and only then sends `Committed { N }`: sources may
//!    acknowledge input up to N, old files are deleted.
//!
//! Recovery rolls every worker back to the last checkpoint the commit log
//! names; files of later checkpoints are ignored and removed.

use crate::executor::{Snapshot, SourceProgress};
use quoll_core::checkpoint_store::{
    self, CheckpointKind, CheckpointWriter, CommitLog, CommitRecord,
};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Write a full checkpoint (compacting the chain) after this many deltas.
const COMPACT_AFTER: u32 = 8;

/// This worker's resilience files.
#[derive(Clone)]
pub struct Files {
    pub dir: PathBuf,
    pub app: String,
    pub worker: String,
}

/// What recovery loads: the image of one checkpoint.
pub struct Image {
    pub checkpoint: Option<u64>,
    /// Files read to rebuild it: the full file and the deltas after it.
    pub files_read: usize,
    pub entries: BTreeMap<(u32, Vec<u8>), Vec<u8>>,
    pub sources: BTreeMap<u32, Vec<u8>>,
    pub sinks: BTreeMap<u32, Vec<u8>>,
}

impl Image {
    pub fn empty() -> Image {
        Image {
            checkpoint: None,
            files_read: 0,
            entries: BTreeMap::new(),
            sources: BTreeMap::new(),
            sinks: BTreeMap::new(),
        }
    }
}

impl Files {
    /// True if this worker has checkpoint files (or, on the initializer, a
    /// commit log) from an earlier run.
    pub fn exist(&self, initializer: bool) -> bool {
        checkpoint_store::list(&self.dir, &self.app, &self.worker).is_ok_and(|l| !l.is_empty())
            || (initializer && CommitLog::path(&self.dir, &self.app).exists())
    }

    /// Writes this worker's part of checkpoint `id` (blocking: an I/O
    /// thread calls it).
    pub fn write(&self, id: u64, parent: Option<u64>, snapshot: Snapshot) -> Result<(), String> {
        let kind = match parent {
            Some(p) => CheckpointKind::Delta { parent: p },
            None => CheckpointKind::Full,
        };
        let mut w = CheckpointWriter::create(&self.dir, &self.app, &self.worker, id, kind)
            .map_err(|e| e.to_string())?;
        for (stage, key, value) in &snapshot.entries {
            w.entry(*stage, key, value);
        }
        for (i, p) in &snapshot.sources {
            w.source(*i, p);
        }
        for (i, p) in &snapshot.sinks {
            w.sink(*i, p);
        }
        w.commit().map(|_| ()).map_err(|e| e.to_string())
    }

    /// Loads checkpoint `id` (`None`: nothing was ever committed) and
    /// removes files of later, uncommitted checkpoints.
    pub fn load(&self, id: Option<u64>) -> Result<Image, String> {
        for later in
            checkpoint_store::list(&self.dir, &self.app, &self.worker).map_err(|e| e.to_string())?
        {
            if id.is_none_or(|id| later > id) {
                let path =
                    checkpoint_store::checkpoint_path(&self.dir, &self.app, &self.worker, later);
                std::fs::remove_file(&path).map_err(|e| {
                    format!(
                        "can't remove {} (a checkpoint never completed): {e}",
                        path.display()
                    )
                })?;
            }
        }
        let Some(id) = id else {
            return Ok(Image::empty());
        };
        let image = checkpoint_store::load(&self.dir, &self.app, &self.worker, id)
            .map_err(|e| e.to_string())?;
        Ok(Image {
            checkpoint: Some(id),
            files_read: image.files_read.len(),
            entries: image.entries,
            sources: image.sources,
            sinks: image.sinks,
        })
    }

    /// After checkpoint `id` committed: compact if asked, delete what no
    /// longer matters (blocking: an I/O thread calls it).
    pub fn after_commit(&self, id: u64, compact: bool) -> Result<(), String> {
        if compact {
            checkpoint_store::compact(&self.dir, &self.app, &self.worker, id)
                .map_err(|e| e.to_string())?;
        }
        checkpoint_store::remove_older_than(&self.dir, &self.app, &self.worker, id)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Clean shutdown: the files are no longer needed.
    pub fn remove_all(&self, initializer: bool) -> Result<(), String> {
        checkpoint_store::remove_all(&self.dir, &self.app, &self.worker)
            .map_err(|e| e.to_string())?;
        if initializer {
            CommitLog::remove(&self.dir, &self.app).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// The worker's side: files written, chain length, what is committed.
pub struct WorkerCheckpoints {
    pub files: Files,
    /// The newest checkpoint this worker wrote: the parent of its next delta.
    pub last_written: Option<u64>,
    deltas_since_full: u32,
    pub last_committed: Option<u64>,
    /// Source positions at each barrier, acknowledged once committed.
    pub progress_at: BTreeMap<u64, Vec<SourceProgress>>,
    /// The part of a checkpoint in progress on this worker.
    pub alignment: Option<Alignment>,
    /// The newest checkpoint this worker has begun (barriers of older ones
    /// are stale).
    pub last_begun: u64,
}

impl WorkerCheckpoints {
    pub fn new(files: Files) -> Self {
        WorkerCheckpoints {
            files,
            last_written: None,
            deltas_since_full: 0,
            last_committed: None,
            progress_at: BTreeMap::new(),
            alignment: None,
            last_begun: 0,
        }
    }

    /// After a restore from `id`, read from `files_read` files: the state
    /// equals that checkpoint, whose chain has `files_read - 1` deltas.
    pub fn restored(&mut self, id: Option<u64>, files_read: usize) {
        self.last_written = id;
        self.last_committed = id;
        self.deltas_since_full = files_read.saturating_sub(1) as u32;
        self.progress_at.clear();
        self.alignment = None;
        // A restarted coordinator numbers on from the last commit, so ids
        // begun in the old generation come round again: files of those were
        // removed by the load, and they may be begun anew.
        self.last_begun = id.unwrap_or(0);
    }

    /// The parent of the next file (`None`: write a full one).
    pub fn next_parent(&self) -> Option<u64> {
        self.last_written
    }

    pub fn written(&mut self, id: u64, parent: Option<u64>) {
        self.last_written = Some(id);
        self.deltas_since_full = if parent.is_some() {
            self.deltas_since_full + 1
        } else {
            0
        };
    }

    /// Records a commit; true if the chain should be compacted now.
    pub fn committed(&mut self, id: u64) -> bool {
        self.last_committed = Some(id);
        self.progress_at = self.progress_at.split_off(&(id + 1));
        if self.deltas_since_full >= COMPACT_AFTER && self.last_written == Some(id) {
            self.deltas_since_full = 0;
            true
        } else {
            false
        }
    }
}

/// One checkpoint's barrier alignment on this worker.
pub struct Alignment {
    pub id: u64,
    /// Per worker index: barrier received (true for this worker itself).
    pub barriers: Vec<bool>,
    /// Per worker index: data that arrived after that link's barrier.
    pub held: Vec<VecDeque<bytes::Bytes>>,
}

impl Alignment {
    pub fn new(id: u64, workers: usize, me: usize) -> Alignment {
        let mut barriers = vec![false; workers];
        barriers[me] = true;
        Alignment {
            id,
            barriers,
            held: (0..workers).map(|_| VecDeque::new()).collect(),
        }
    }

    pub fn complete(&self) -> bool {
        self.barriers.iter().all(|b| *b)
    }
}

/// The initializer's side: when to start the next checkpoint, who is done,
/// and the durable commit log.
pub struct Coordinator {
    pub log: CommitLog,
    dir: PathBuf,
    app: String,
    pub interval: Duration,
    pub next_id: u64,
    pub next_at: Instant,
    /// The checkpoint in flight and who has finished their part.
    pub in_flight: Option<(u64, Vec<bool>)>,
}

impl Coordinator {
    pub fn open(files: &Files, interval: Duration) -> Result<Coordinator, String> {
        let state = CommitLog::read(&files.dir, &files.app)
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        let log = CommitLog::open_or_create(&files.dir, &files.app).map_err(|e| e.to_string())?;
        let next_id = state.last_committed.map_or(1, |c| c + 1);
        let c = Coordinator {
            log,
            dir: files.dir.clone(),
            app: files.app.clone(),
            interval,
            next_id,
            next_at: Instant::now() + interval,
            in_flight: None,
        };
        Ok(c)
    }

    /// The last committed checkpoint and the newest generation, as the
    /// commit log says (read again at every formation).
    pub fn recovery_point(&self) -> Result<(Option<u64>, u64), String> {
        let state = CommitLog::read(&self.dir, &self.app)
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        Ok((state.last_committed, state.generation))
    }

    /// Durably records a new generation (every formation gets one).
    pub fn new_generation(&mut self, generation: u64) -> Result<(), String> {
        self.log
            .append(CommitRecord::Generation { generation })
            .map_err(|e| e.to_string())
    }

    /// Durably records checkpoint `id` as complete.
    pub fn commit(&mut self, id: u64, generation: u64) -> Result<(), String> {
        self.log
            .append(CommitRecord::Committed {
                checkpoint: id,
                generation,
            })
            .map_err(|e| e.to_string())
    }

    /// Starts checkpoint `id` if it is time and none is in flight.
    pub fn due(&mut self, workers: usize) -> Option<u64> {
        if self.in_flight.is_some() || Instant::now() < self.next_at {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.in_flight = Some((id, vec![false; workers]));
        Some(id)
    }

    /// Worker `who` finished its part of `id`; true when everyone has.
    pub fn done(&mut self, id: u64, who: usize) -> bool {
        match &mut self.in_flight {
            Some((current, done)) if *current == id => {
                if let Some(d) = done.get_mut(who) {
                    *d = true;
                }
                done.iter().all(|d| *d)
            }
            _ => false,
        }
    }

    /// The checkpoint in flight ended (committed or abandoned).
    pub fn finish(&mut self) {
        self.in_flight = None;
        self.next_at = Instant::now() + self.interval;
    }
}
