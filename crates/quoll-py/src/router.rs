//! Where keyed messages go when the cluster has several workers: the
//! key-group map (the placement the initializer decided), the load routed
//! per key group (reported with each checkpoint part, for placement), and
//! per worker the batch being filled and the frames waiting for its data
//! link.
//!
//! Invariants: frames for a worker leave in the order they were filled, and
//! a barrier is queued after every batch filled before it, so per-key order
//! and the barrier's cut survive the hop. What a slow link can't take waits
//! here; above [`CONGESTED_BYTES`] the worker takes no new source input.

use quoll_core::key_group::{key_group, KeyGroupMap, WorkerIndex};
use quoll_core::placement::KeyGroupLoad;
use quoll_core::wire::BatchWriter;
use std::collections::VecDeque;
use tokio::sync::mpsc;

/// Where keyed messages go when the cluster has several workers.
pub struct Router {
    pub me: usize,
    pub names: Vec<String>,
    pub map: KeyGroupMap,
    /// Keyed messages this worker processed per key group since its last
    /// checkpoint part.
    pub load: KeyGroupLoad,
    pub generation: u64,
    /// Per worker: the batch being filled, frames waiting for the link, the link.
    batches: Vec<Option<BatchWriter>>,
    pending: Vec<VecDeque<Vec<u8>>>,
    links: Vec<Option<mpsc::Sender<Vec<u8>>>>,
    pending_bytes: usize,
    pub shipped: u64,
    /// Per worker: frames and bytes sealed since the metrics last took them.
    sent: Vec<(u64, u64)>,
}

/// Frames for one worker are handed to its link once a batch holds this much.
const BATCH_FLUSH_BYTES: usize = 64 << 10;
/// Above this many bytes waiting for slow links, the worker takes no new
/// source input (it keeps serving peers, so no cycle of workers can stall).
pub const CONGESTED_BYTES: usize = 8 << 20;

impl Router {
    /// The router of member `me` of `names`, key groups placed by `map`.
    pub fn new(
        me: usize,
        names: Vec<String>,
        map: KeyGroupMap,
        generation: u64,
        links: Vec<Option<mpsc::Sender<Vec<u8>>>>,
    ) -> Router {
        let n = names.len();
        Router {
            me,
            map,
            load: KeyGroupLoad::default(),
            names,
            generation,
            batches: (0..n).map(|_| None).collect(),
            pending: (0..n).map(|_| VecDeque::new()).collect(),
            links,
            pending_bytes: 0,
            shipped: 0,
            sent: vec![(0, 0); n],
        }
    }

    /// The worker owning `key`. A message this worker owns (and so
    /// processes) counts in its key group's load: each message counts
    /// once, on its owner, however many hops it took.
    #[inline]
    pub fn route(&mut self, key: &[u8]) -> WorkerIndex {
        let group = key_group(key);
        let owner = self.map.owner_of_group(group);
        if owner == self.me {
            self.load.count(group);
        }
        owner
    }

    fn seal(&mut self, worker: usize) {
        if let Some(b) = self.batches[worker].take() {
            let frame = b.finish();
            self.pending_bytes += frame.len();
            self.sent[worker].0 += 1;
            self.sent[worker].1 += frame.len() as u64;
            self.pending[worker].push_back(frame);
        }
    }

    /// Appends a message for worker `owner` to its batch; the value is
    /// written by `write_value` (the codec). A full batch is sealed.
    pub fn push<E>(
        &mut self,
        owner: usize,
        stage: u32,
        key: &[u8],
        event_time: i64,
        write_value: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let generation = self.generation;
        let batch = self.batches[owner].get_or_insert_with(|| BatchWriter::new(generation));
        batch.push(stage, key, event_time, write_value)?;
        self.shipped += 1;
        if batch.size() >= BATCH_FLUSH_BYTES {
            self.seal(owner);
        }
        Ok(())
    }

    /// Seals every batch and hands waiting frames to their links without
    /// blocking; what a full link can't take stays pending.
    pub fn flush(&mut self) {
        for w in 0..self.batches.len() {
            self.seal(w);
            let Some(link) = &self.links[w] else { continue };
            while let Some(frame) = self.pending[w].pop_front() {
                let len = frame.len();
                match link.try_send(frame) {
                    Ok(()) => self.pending_bytes -= len,
                    Err(mpsc::error::TrySendError::Full(frame)) => {
                        self.pending[w].push_front(frame);
                        break;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        self.pending_bytes -= len;
                    }
                }
            }
        }
    }

    /// `(worker name, frames, bytes)` of data sealed for each other worker
    /// since the last call.
    pub fn take_sent(&mut self) -> Vec<(String, u64, u64)> {
        self.sent
            .iter_mut()
            .zip(&self.names)
            .filter(|(s, _)| s.0 > 0)
            .map(|(s, name)| {
                let (frames, bytes) = std::mem::take(s);
                (name.clone(), frames, bytes)
            })
            .collect()
    }

    pub fn congested(&self) -> bool {
        self.pending_bytes > CONGESTED_BYTES
    }

    pub fn has_pending(&self) -> bool {
        self.pending_bytes > 0
    }

    /// Queues `frame` (a barrier) for every other worker, after the
    /// batches already filled for it.
    pub fn send_to_all(&mut self, frame: Vec<u8>) {
        for w in 0..self.batches.len() {
            if self.links[w].is_some() {
                self.seal(w);
                self.pending_bytes += frame.len();
                self.pending[w].push_back(frame.clone());
            }
        }
        self.flush();
    }

    /// Drops every batch and frame not yet handed to a link (a rollback
    /// makes them stale).
    pub fn reset(&mut self) {
        self.batches.iter_mut().for_each(|b| *b = None);
        self.pending.iter_mut().for_each(|p| p.clear());
        self.pending_bytes = 0;
    }
}
