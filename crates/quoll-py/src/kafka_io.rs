//! Kafka sources and sinks in a worker: the tokio tasks between
//! `quoll_kafka`'s handles and the executor. Nothing here touches Python.
//!
//! A Kafka source starts at the first restore, once the worker knows its
//! place in the cluster ([`PartitionShare`]: of the `n` members that are
//! not leaving, in name order, the `i`-th owns the partitions
//! `p % n == i`), from the partition offsets of the restored checkpoint. Its
//! records reach the executor as [`Event::Frames`] whose position is each
//! partition's next offset; the executor keeps them as the source's
//! progress, so every checkpoint holds them. A later restore seeks the
//! source back to the checkpoint's offsets; one after the membership
//! changed (a grow or a shrink) starts it anew on its new share, from
//! offsets that include the ones the partitions' previous owners handed
//! over with the state (see `worker/actions.rs`, `load`).
//!
//! A Kafka sink's writer turns the executor's [`SinkCommand`]s into calls
//! on its [`KafkaSinkHandle`]: records are written, `PreCommit(N)` flushes
//! and seals checkpoint N's output, `Commit(N)` commits its transaction,
//! `Restore` resolves what a previous incarnation left (`recover`), and
//! `Finish` (a clean stop) commits what no checkpoint covers, under the
//! next checkpoint id. Without resilience every command but the writes only
//! flushes: at least once.
//!
//! Invariants:
//! - every event forwarded after a seek carries the worker's new source
//!   epoch and holds only records the source read after that seek, so the
//!   executor drops everything read before the rollback;
//! - a frame's position is never past a record the executor has not been
//!   handed yet: a source batch cut into several events gives each event
//!   the offsets after its own last records;
//! - a sink or source failure the worker can't go on with stops the worker
//!   ([`Event::Fatal`], naming the sink or source, topic and worker); with
//!   resilience the restarted worker recovers it.

use crate::event::{frames_per_event, Event, IoStats, SourcePosition};
use crate::sinks::SinkCommand;
use bytes::Bytes;
use quoll_core::checkpoint::CheckpointId;
use quoll_kafka::{
    KafkaBatch, KafkaSinkHandle, KafkaSource, KafkaSourceConfig, KafkaSourceEvent,
    KafkaSourceHandle,
};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tracing::{debug, error, warn};

/// Source events a Kafka source may queue ahead of its forwarder.
const SOURCE_EVENTS: usize = 8;

/// One Kafka source of this worker.
pub struct KafkaSourceRunner {
    /// The source's index in the app.
    pub index: usize,
    /// Everything but the worker's place and the start offsets, which the
    /// first restore sets.
    config: KafkaSourceConfig,
    /// Commands for the running forwarder (None until the first restore).
    commands: Option<mpsc::UnboundedSender<SourceCommand>>,
    /// The share the running source reads.
    running: Option<(usize, usize)>,
}

/// The pseudo-stage under which handoff frames carry Kafka source
/// `source`'s partition offsets (key: the partition, value: its next
/// offset, both u64 big-endian); real stages count up from 0.
pub fn positions_stage(source: usize) -> u32 {
    u32::MAX - source as u32
}

/// Which partitions of every Kafka source a worker reads: the members that
/// are not leaving, in the cluster's name order (initializer first), share
/// them round-robin. Stable across restarts, and the same on every worker
/// for one membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionShare {
    /// Indices (among the members) of those that are not leaving.
    active: Vec<usize>,
    /// This worker's index among the members.
    me: usize,
}

impl PartitionShare {
    /// A worker on its own.
    pub fn alone() -> Self {
        PartitionShare {
            active: vec![0],
            me: 0,
        }
    }

    /// Worker `me` of the members `leaving[i]` says are leaving or not.
    pub fn new(me: usize, leaving: impl IntoIterator<Item = bool>) -> Self {
        let active = leaving
            .into_iter()
            .enumerate()
            .filter(|(_, l)| !l)
            .map(|(i, _)| i)
            .collect();
        PartitionShare { active, me }
    }

    /// The member that reads `partition`.
    pub fn owner(&self, partition: u64) -> usize {
        match self.active.len() {
            0 => self.me,
            n => self.active[(partition % n as u64) as usize],
        }
    }

    /// This worker's index among the readers and their number, for the
    /// source's config; None if it reads nothing (it is leaving).
    fn slot(&self) -> Option<(usize, usize)> {
        let i = self.active.iter().position(|&m| m == self.me)?;
        Some((i, self.active.len()))
    }
}

enum SourceCommand {
    /// A rollback: go back to `positions`; forward with `epoch` from now on.
    Seek {
        positions: BTreeMap<i32, i64>,
        epoch: u32,
    },
    /// A checkpoint committed with these positions: store them in the
    /// source's consumer group, for lag tools.
    Committed(BTreeMap<i32, i64>),
}

/// Checkpointed progress (partition to next offset) as the source's offsets.
pub fn offsets(streams: &BTreeMap<u64, u64>) -> BTreeMap<i32, i64> {
    streams
        .iter()
        .filter_map(|(&p, &o)| Some((i32::try_from(p).ok()?, i64::try_from(o).ok()?)))
        .collect()
}

impl KafkaSourceRunner {
    pub fn new(index: usize, config: KafkaSourceConfig) -> Self {
        KafkaSourceRunner {
            index,
            config,
            commands: None,
            running: None,
        }
    }

    /// A checkpoint with these positions committed (see [`offsets`]).
    pub fn committed(&self, positions: BTreeMap<i32, i64>) {
        if let Some(commands) = &self.commands {
            let _ = commands.send(SourceCommand::Committed(positions));
        }
    }

    /// Starts the source on `share` from `positions`, or, if it already
    /// reads that share, has it seek back there; from now on its frames
    /// carry `epoch`. A source on another share is stopped first (its
    /// frames in flight carry an older epoch). Never waits on the executor,
    /// which is restoring meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub fn restart(
        &mut self,
        rt: &Runtime,
        positions: BTreeMap<i32, i64>,
        epoch: u32,
        share: &PartitionShare,
        frames: mpsc::Sender<Event>,
        control: mpsc::Sender<Event>,
        stats: Arc<IoStats>,
    ) {
        let slot = share.slot();
        // A forwarder that ended (its source failed, which stops the
        // worker) is not sent to; the source is started anew.
        if let Some(commands) = self.commands.as_ref().filter(|c| !c.is_closed()) {
            if self.running == slot {
                let _ = commands.send(SourceCommand::Seek { positions, epoch });
                return;
            }
        }
        // Dropping the sender ends the forwarder, which stops the source.
        self.commands = None;
        self.running = slot;
        let Some((me, workers)) = slot else {
            return;
        };
        let mut config = self.config.clone();
        config.worker_index = me;
        config.worker_count = workers;
        config.start_offsets = positions;
        let (commands, command_rx) = mpsc::unbounded_channel();
        self.commands = Some(commands);
        let place = format!("kafka source '{}' (topic '{}')", config.name, config.topic);
        match KafkaSource::spawn(config, SOURCE_EVENTS) {
            Ok((handle, events)) => {
                let fwd = Forwarder {
                    source: self.index,
                    place,
                    epoch,
                    kafka_epoch: 0,
                    frames,
                    control,
                    stats,
                };
                rt.spawn(fwd.run(handle, events, command_rx));
            }
            Err(e) => {
                let _ = control.try_send(Event::Fatal(e.to_string()));
            }
        }
    }
}

/// Passes a source's batches on to the executor and its seeks to the source.
struct Forwarder {
    source: usize,
    place: String,
    /// The worker's source epoch the forwarded frames carry.
    epoch: u32,
    /// Batches of older seek generations are stale.
    kafka_epoch: u64,
    frames: mpsc::Sender<Event>,
    control: mpsc::Sender<Event>,
    stats: Arc<IoStats>,
}

impl Forwarder {
    async fn run(
        mut self,
        handle: KafkaSourceHandle,
        mut events: mpsc::Receiver<KafkaSourceEvent>,
        mut commands: mpsc::UnboundedReceiver<SourceCommand>,
    ) {
        loop {
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    None => break,
                    Some(SourceCommand::Seek { positions, epoch }) => match handle.seek(positions).await {
                        Ok(e) => {
                            self.kafka_epoch = e;
                            self.epoch = epoch;
                        }
                        Err(e) => {
                            let _ = self.control.send(Event::Fatal(e.to_string())).await;
                            break;
                        }
                    },
                    Some(SourceCommand::Committed(positions)) => {
                        if let Err(e) = handle.commit_offsets(positions).await {
                            warn!(place = %self.place, "lag tools won't see the latest offsets: {e}");
                        }
                    }
                },
                event = events.recv() => {
                    let Some(event) = event else { break };
                    if !self.forward(event).await {
                        break;
                    }
                }
            }
        }
        handle.stop().await;
    }

    /// False once the source or the executor is gone.
    async fn forward(&mut self, event: KafkaSourceEvent) -> bool {
        match event {
            // Start offsets count as positions (the source logs them): a
            // checkpoint before the first record still says where each
            // partition starts.
            KafkaSourceEvent::Assigned { partitions } => {
                self.send(Vec::new(), Vec::new(), partitions).await
            }
            KafkaSourceEvent::Batch(batch) if batch.epoch < self.kafka_epoch => true,
            KafkaSourceEvent::Batch(batch) => self.send_batch(batch).await,
            KafkaSourceEvent::Unavailable { reason } => {
                debug!(place = %self.place, "brokers unreachable: {reason}");
                true
            }
            KafkaSourceEvent::Available => true,
            KafkaSourceEvent::Failed(e) => {
                let _ = self.control.send(Event::Fatal(e.to_string())).await;
                false
            }
        }
    }

    /// Cuts `batch` into events of at most `frames_per_event()` records,
    /// each with the offsets after its own records (the last one with the
    /// batch's, which may lie past skipped transaction markers).
    async fn send_batch(&mut self, batch: KafkaBatch) -> bool {
        let total = batch.messages.len();
        let mut messages = batch.messages.into_iter().peekable();
        let mut taken = 0;
        while messages.peek().is_some() {
            let n = frames_per_event().max(1);
            let mut frames = Vec::with_capacity(n.min(total));
            let mut keys = Vec::with_capacity(n.min(total));
            let mut next: BTreeMap<i32, i64> = BTreeMap::new();
            for m in messages.by_ref().take(n) {
                next.insert(m.partition, m.offset + 1);
                frames.push(m.payload.unwrap_or_default());
                keys.push(m.key.unwrap_or_default());
                taken += 1;
            }
            if taken == total {
                next.extend(batch.next_offsets.iter().copied());
            }
            self.stats
                .frames_in
                .fetch_add(frames.len() as u64, Ordering::Relaxed);
            if !self.send(frames, keys, next.into_iter().collect()).await {
                return false;
            }
        }
        true
    }

    async fn send(&self, frames: Vec<Bytes>, keys: Vec<Bytes>, next: Vec<(i32, i64)>) -> bool {
        let event = Event::Frames {
            source: self.source,
            frames,
            keys,
            position: Some(SourcePosition::Partitions(next)),
            epoch: self.epoch,
        };
        self.frames.send(event).await.is_ok()
    }
}

/// Writes a Kafka sink: runs the executor's commands on `handle`, in order.
/// Records Kafka refuses one by one (too large, no such partition) are
/// logged and counted as dropped; any other failure stops the worker.
pub async fn run_kafka_sink(
    label: String,
    handle: KafkaSinkHandle,
    mut rx: mpsc::Receiver<SinkCommand>,
    control: mpsc::Sender<Event>,
    stats: Arc<IoStats>,
) {
    let fail = |e: quoll_kafka::KafkaError| {
        let control = control.clone();
        async move {
            let _ = control.send(Event::Fatal(e.to_string())).await;
        }
    };
    // The newest checkpoint this sink has heard of.
    let mut last: CheckpointId = 0;
    while let Some(cmd) = rx.recv().await {
        match cmd {
            SinkCommand::Records(records) => match handle.write(records).await {
                Ok(outcome) => {
                    for e in &outcome.rejected {
                        error!(place = %label, "{e}");
                    }
                    stats
                        .sink_dropped
                        .fetch_add(outcome.rejected.len() as u64, Ordering::Relaxed);
                }
                Err(e) => return fail(e).await,
            },
            SinkCommand::PreCommit(id, reply) => {
                last = last.max(id);
                let _ = reply.send(handle.pre_commit(id).await.map_err(|e| e.to_string()));
            }
            SinkCommand::Commit(id) => {
                if let Err(e) = handle.commit(id).await {
                    return fail(e).await;
                }
            }
            SinkCommand::Abort(id) => {
                if let Err(e) = handle.abort(id).await {
                    return fail(e).await;
                }
            }
            SinkCommand::Restore {
                checkpoint, reply, ..
            } => {
                last = checkpoint.unwrap_or(0);
                let r = handle.recover(checkpoint).await;
                if let Ok(rec) = &r {
                    if !rec.resent_checkpoints.is_empty() {
                        warn!(
                            place = %label,
                            "committed the output of checkpoints {:?} ({} records) that a previous \
                             run had left in doubt",
                            rec.resent_checkpoints, rec.resent_records
                        );
                    }
                }
                let _ = reply.send(r.map(|_| ()).map_err(|e| e.to_string()));
            }
            SinkCommand::Finish => {
                let id = last + 1;
                let r = match handle.pre_commit(id).await {
                    Ok(()) => handle.commit(id).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = r {
                    error!(place = %label, "the output since the last checkpoint was not committed: {e}");
                }
                return;
            }
            SinkCommand::Write(_) => {
                error!(place = %label, "got bytes instead of Kafka records; dropped");
            }
            SinkCommand::WorkersLeft(_) => {}
        }
    }
    // The worker stopped without a clean shutdown: an at-least-once sink
    // still delivers what it holds (bounded by the worker's sink drain
    // time); an exactly-once sink leaves its open transaction to `recover`.
    if handle.transactional_id().is_none() {
        if let Err(e) = handle.pre_commit(last + 1).await {
            error!(place = %label, "not every record was delivered: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PartitionShare;

    /// Every member's view of one membership: `leaving[i]` for member i.
    fn shares(leaving: &[bool]) -> Vec<PartitionShare> {
        (0..leaving.len())
            .map(|me| PartitionShare::new(me, leaving.iter().copied()))
            .collect()
    }

    #[test]
    fn every_partition_has_one_reader_and_leavers_read_none() {
        for leaving in [
            vec![false],
            vec![false, false, false],
            vec![false, true, false, true],
            vec![false, false, true],
        ] {
            let all = shares(&leaving);
            for p in 0..64u64 {
                // Every member computes the same reader, one that stays.
                let owner = all[0].owner(p);
                assert!(all.iter().all(|s| s.owner(p) == owner), "{leaving:?} p{p}");
                assert!(!leaving[owner], "{leaving:?}: p{p} read by a leaver");
                // And that reader's slot says it reads p.
                let (i, n) = all[owner].slot().expect("a reader has a slot");
                assert_eq!(p as usize % n, i, "{leaving:?} p{p}");
            }
            for (me, s) in all.iter().enumerate() {
                assert_eq!(s.slot().is_none(), leaving[me], "{leaving:?} member {me}");
            }
        }
    }

    #[test]
    fn without_leavers_member_i_of_n_reads_p_mod_n() {
        let all = shares(&[false; 3]);
        assert_eq!(all[2].slot(), Some((2, 3)));
        assert_eq!(
            (0..6).map(|p| all[0].owner(p)).collect::<Vec<_>>(),
            [0, 1, 2, 0, 1, 2]
        );
        assert_eq!(PartitionShare::alone().slot(), Some((0, 1)));
    }
}
