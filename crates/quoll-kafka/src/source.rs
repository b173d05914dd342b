//! The Kafka source: one worker's share of a topic's partitions, read from
//! offsets the worker's checkpoints keep, never through a consumer-group
//! rebalance.
//!
//! Worker `i` of `n` owns the partitions `p` with `p % n == i` and reads
//! them through `assign()`. Each owned partition starts at the offset the
//! worker gives (the checkpointed next offset) or, without one, at the
//! earliest or latest offset (`offset_reset`), resolved to a concrete
//! offset at once and reported in [`KafkaSourceEvent::Assigned`], so every
//! position the worker records is a real offset. Records come in
//! [`KafkaBatch`]es with the next offset of each partition they touch. A
//! partition added to the topic while running is found by polling the
//! metadata and read from its beginning.
//!
//! A rollback calls [`KafkaSourceHandle::seek`]: every owned partition goes
//! back to the given offset (or to where it started, if the worker had no
//! position for it), and batches read before the seek carry an older
//! `epoch`, so the worker drops them. After a checkpoint commits,
//! [`KafkaSourceHandle::commit_offsets`] may store the positions in a
//! consumer group (for lag tools); the group is never joined.
//!
//! # Invariants
//!
//! - Batches of one partition are handed out in offset order, with no gap
//!   librdkafka did not skip itself (it skips only transaction markers and
//!   aborted records), and a batch's `next_offsets` are one past its last
//!   record of each partition.
//! - After `seek` returns epoch `e`, every batch sent has epoch `e` until
//!   the next seek; batches of older epochs still in the channel are stale.
//! - While the brokers are unreachable nothing is read, so nothing is
//!   taken that the positions do not account for; the source says so once
//!   (a log line and [`KafkaSourceEvent::Unavailable`]) and resumes by
//!   itself.
//! - Commands are served even while the worker does not take batches (the
//!   channel is full), so a seek never waits on the worker.

use std::collections::{BTreeMap, VecDeque};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError as ClientError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};

use crate::config::{base_config, derived_name, Brokers, LogLevel, Who, CALL_TIMEOUT};
use crate::context::{is_unreachable, Ctx, Health};
use crate::error::KafkaError;

/// Where a partition without a given offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffsetReset {
    #[default]
    Earliest,
    Latest,
}

/// How to run one worker's share of a Kafka source.
#[derive(Debug, Clone)]
pub struct KafkaSourceConfig {
    pub name: String,
    pub worker: String,
    pub topic: String,
    pub brokers: Brokers,
    /// This worker's index among `worker_count`: it owns the partitions
    /// `p % worker_count == worker_index`.
    pub worker_index: usize,
    pub worker_count: usize,
    /// The next offset to read, per partition (a checkpoint's positions).
    pub start_offsets: BTreeMap<i32, i64>,
    /// Where partitions without a start offset begin.
    pub offset_reset: OffsetReset,
    /// The consumer group [`KafkaSourceHandle::commit_offsets`] writes to.
    pub commit_group: String,
    /// How often the topic's partition count is checked.
    pub metadata_interval: Duration,
    /// Most records in one batch.
    pub max_batch: usize,
    pub log_level: LogLevel,
    /// Extra librdkafka settings, applied last.
    pub client_options: Vec<(String, String)>,
}

impl KafkaSourceConfig {
    /// A config with the defaults: earliest, a group named after the app
    /// and source, metadata checked every 5 s, batches of up to 1000.
    pub fn new(
        app: &str,
        name: &str,
        worker: &str,
        topic: &str,
        brokers: Brokers,
        worker_index: usize,
        worker_count: usize,
    ) -> Self {
        KafkaSourceConfig {
            name: name.to_string(),
            worker: worker.to_string(),
            topic: topic.to_string(),
            brokers,
            worker_index,
            worker_count,
            start_offsets: BTreeMap::new(),
            offset_reset: OffsetReset::Earliest,
            commit_group: derived_name(&[app, name]),
            metadata_interval: Duration::from_secs(5),
            max_batch: 1000,
            log_level: LogLevel::Warn,
            client_options: Vec::new(),
        }
    }
}

/// One record read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaMessage {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Bytes>,
    /// None for a record without a value (a tombstone).
    pub payload: Option<Bytes>,
}

/// Records read, in order per partition.
#[derive(Debug, Clone)]
pub struct KafkaBatch {
    /// The seek generation the records belong to (see the module docs).
    pub epoch: u64,
    pub messages: Vec<KafkaMessage>,
    /// For each partition in the batch, the offset after its last record.
    pub next_offsets: Vec<(i32, i64)>,
}

/// What the source tells the worker.
#[derive(Debug)]
pub enum KafkaSourceEvent {
    /// This worker now owns these partitions, starting at these offsets
    /// (at start-up, and when the topic grew).
    Assigned {
        partitions: Vec<(i32, i64)>,
    },
    Batch(KafkaBatch),
    /// The brokers can't be reached; the source waits and retries.
    Unavailable {
        reason: String,
    },
    /// The brokers answer again; reading resumed.
    Available,
    /// The source stopped for good (missing topic, bad address, ...).
    Failed(KafkaError),
}

type Reply<T> = oneshot::Sender<Result<T, KafkaError>>;

enum Command {
    Seek(BTreeMap<i32, i64>, Reply<u64>),
    CommitOffsets(BTreeMap<i32, i64>, Reply<()>),
    Stop(oneshot::Sender<()>),
}

/// Starts Kafka sources.
pub struct KafkaSource;

impl KafkaSource {
    /// Checks `config` and starts the source's thread; its events come on
    /// the returned channel (of `capacity` events: back-pressure).
    pub fn spawn(
        config: KafkaSourceConfig,
        capacity: usize,
    ) -> Result<(KafkaSourceHandle, mpsc::Receiver<KafkaSourceEvent>), KafkaError> {
        let who = Who::new(
            "source",
            &config.name,
            &config.worker,
            &config.topic,
            &config.brokers,
        );
        let bad = |problem: String| KafkaError::Config {
            who: who.to_string(),
            problem,
        };
        if config.topic.is_empty() {
            return Err(bad("no topic given".to_string()));
        }
        if config.worker_count == 0 || config.worker_index >= config.worker_count {
            return Err(bad(format!(
                "worker index {} is not below the worker count {}",
                config.worker_index, config.worker_count
            )));
        }
        if config.max_batch == 0 || capacity == 0 {
            return Err(bad(
                "the batch size and channel capacity must be at least 1".to_string(),
            ));
        }
        let (cmd_tx, cmd_rx) = std_mpsc::channel();
        let (ev_tx, ev_rx) = mpsc::channel(capacity);
        let reader = Reader {
            health: Arc::new(Health::new(who.clone())),
            who: who.clone(),
            cfg: config.clone(),
            owned: BTreeMap::new(),
            positions: BTreeMap::new(),
            epoch: 0,
            outbox: VecDeque::new(),
            events: ev_tx,
            commands: cmd_rx,
            reported_down: false,
        };
        thread::Builder::new()
            .name(format!("kafka-source-{}", config.name))
            .spawn(move || reader.run())
            .map_err(|e| KafkaError::Failed {
                who: who.to_string(),
                reason: format!("can't start the source's thread: {e}"),
            })?;
        Ok((
            KafkaSourceHandle {
                commands: cmd_tx,
                who,
            },
            ev_rx,
        ))
    }
}

/// Commands a running source; dropping it stops the source.
pub struct KafkaSourceHandle {
    commands: std_mpsc::Sender<Command>,
    who: Who,
}

impl KafkaSourceHandle {
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, KafkaError> {
        let stopped = || KafkaError::Stopped {
            who: self.who.to_string(),
        };
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Rollback: every owned partition goes back to `positions[p]`, or to
    /// where it started if absent. Returns the epoch of the batches read
    /// from now on.
    pub async fn seek(&self, positions: BTreeMap<i32, i64>) -> Result<u64, KafkaError> {
        self.call(|reply| Command::Seek(positions, reply)).await
    }

    /// Stores `positions` (next offsets) of owned partitions in the commit
    /// group, without joining it; for lag tools only.
    pub async fn commit_offsets(&self, positions: BTreeMap<i32, i64>) -> Result<(), KafkaError> {
        self.call(|reply| Command::CommitOffsets(positions, reply))
            .await
    }

    /// Stops the source and waits until its client is closed.
    pub async fn stop(self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Stop(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

enum Flow {
    Go,
    Stop,
}

struct Reader {
    cfg: KafkaSourceConfig,
    who: Who,
    health: Arc<Health>,
    /// Owned partitions and the offset each started at.
    owned: BTreeMap<i32, i64>,
    /// The next offset to hand out, per owned partition.
    positions: BTreeMap<i32, i64>,
    epoch: u64,
    outbox: VecDeque<KafkaSourceEvent>,
    events: mpsc::Sender<KafkaSourceEvent>,
    commands: std_mpsc::Receiver<Command>,
    reported_down: bool,
}

impl Reader {
    fn run(mut self) {
        let consumer = match self.start() {
            Ok(Some(c)) => c,
            Ok(None) => return,
            Err(e) => {
                tracing::error!("{e}");
                let _ = self.events.blocking_send(KafkaSourceEvent::Failed(e));
                return;
            }
        };
        let mut next_metadata = Instant::now() + self.cfg.metadata_interval;
        loop {
            if let Flow::Stop = self.serve_commands(&consumer, Duration::ZERO) {
                return;
            }
            self.report_health();
            if !self.drain_outbox() {
                return;
            }
            if !self.outbox.is_empty() {
                // The worker is behind: serve commands while waiting.
                if let Flow::Stop = self.serve_commands(&consumer, Duration::from_millis(10)) {
                    return;
                }
                continue;
            }
            if Instant::now() >= next_metadata {
                next_metadata = Instant::now() + self.cfg.metadata_interval;
                if let Err(e) = self.check_partitions(&consumer) {
                    tracing::warn!("{e}");
                }
            }
            self.read_batch(&consumer);
        }
    }

    fn consumer(&self) -> Result<BaseConsumer<Ctx>, KafkaError> {
        let mut c = base_config(
            &self.cfg.brokers,
            &derived_name(&[&self.cfg.worker, &self.cfg.name]),
            self.cfg.log_level,
            &[],
        );
        let reset = match self.cfg.offset_reset {
            OffsetReset::Earliest => "earliest",
            OffsetReset::Latest => "latest",
        };
        c.set("group.id", &self.cfg.commit_group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", reset)
            .set("enable.partition.eof", "false");
        for (k, v) in &self.cfg.client_options {
            c.set(k, v);
        }
        c.create_with_context(Ctx(self.health.clone()))
            .map_err(|e| self.client_err("create the consumer", e))
    }

    fn client_err(&self, action: &str, source: ClientError) -> KafkaError {
        KafkaError::Client {
            who: self.who.to_string(),
            action: action.to_string(),
            source: Box::new(source),
        }
    }

    /// Connects, checks the topic and assigns the owned partitions; waits
    /// (serving commands) while the brokers are unreachable. `None`: told
    /// to stop meanwhile.
    fn start(&mut self) -> Result<Option<BaseConsumer<Ctx>>, KafkaError> {
        self.cfg.brokers.check_resolvable(&self.who)?;
        let consumer = self.consumer()?;
        let count = loop {
            match self.partition_count(&consumer) {
                Ok(Some(n)) => break n,
                Ok(None) => {
                    return Err(KafkaError::MissingTopic {
                        who: self.who.to_string(),
                    })
                }
                Err(e) if e.rdkafka_error_code().is_some_and(is_unreachable) => {
                    self.health.down(&e.to_string());
                    self.report_health();
                    if !self.drain_outbox() {
                        return Ok(None);
                    }
                    if let Flow::Stop = self.serve_commands(&consumer, Duration::from_millis(500)) {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(self.client_err("fetch the topic's metadata", e)),
            }
        };
        let mut tpl = TopicPartitionList::new();
        let mut assigned = Vec::new();
        let mine: Vec<i32> = self.mine(0, count).collect();
        for p in mine {
            let start = match self.cfg.start_offsets.get(&p) {
                Some(o) => *o,
                None => self.resolve_start(&consumer, p, self.cfg.offset_reset)?,
            };
            tpl.add_partition_offset(&self.cfg.topic, p, Offset::Offset(start))
                .map_err(|e| self.client_err("build the assignment", e))?;
            self.owned.insert(p, start);
            self.positions.insert(p, start);
            assigned.push((p, start));
        }
        consumer
            .assign(&tpl)
            .map_err(|e| self.client_err("assign the partitions", e))?;
        tracing::info!(
            "{}: reading partitions {assigned:?} (partition, offset)",
            self.who
        );
        self.outbox.push_back(KafkaSourceEvent::Assigned {
            partitions: assigned,
        });
        Ok(Some(consumer))
    }

    /// The partitions in `from..to` this worker owns.
    fn mine(&self, from: usize, to: usize) -> impl Iterator<Item = i32> + '_ {
        (from..to)
            .filter(|p| p % self.cfg.worker_count == self.cfg.worker_index)
            .map(|p| p as i32)
    }

    /// The topic's partition count, None if it does not exist.
    fn partition_count(&self, consumer: &BaseConsumer<Ctx>) -> Result<Option<usize>, ClientError> {
        let md = consumer.fetch_metadata(Some(&self.cfg.topic), CALL_TIMEOUT)?;
        self.health.up();
        Ok(md
            .topics()
            .iter()
            .find(|t| t.name() == self.cfg.topic)
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.partitions().len()))
    }

    /// A concrete start offset for `p`, waiting while the brokers are
    /// unreachable.
    fn resolve_start(
        &self,
        consumer: &BaseConsumer<Ctx>,
        p: i32,
        reset: OffsetReset,
    ) -> Result<i64, KafkaError> {
        loop {
            match consumer.fetch_watermarks(&self.cfg.topic, p, CALL_TIMEOUT) {
                Ok((low, high)) => {
                    return Ok(match reset {
                        OffsetReset::Earliest => low,
                        OffsetReset::Latest => high,
                    })
                }
                Err(e) if e.rdkafka_error_code().is_some_and(is_unreachable) => {
                    self.health.down(&e.to_string());
                    thread::sleep(Duration::from_millis(200));
                }
                Err(e) => {
                    return Err(self.client_err(&format!("find the offsets of partition {p}"), e))
                }
            }
        }
    }

    /// Assigns partitions the topic gained, from their beginning.
    fn check_partitions(&mut self, consumer: &BaseConsumer<Ctx>) -> Result<(), KafkaError> {
        let count = match self.partition_count(consumer) {
            Ok(Some(n)) => n,
            Ok(None) => {
                tracing::warn!("{}: the topic is gone from the brokers' metadata", self.who);
                return Ok(());
            }
            Err(e) if e.rdkafka_error_code().is_some_and(is_unreachable) => {
                self.health.down(&e.to_string());
                return Ok(());
            }
            Err(e) => return Err(self.client_err("fetch the topic's metadata", e)),
        };
        let new: Vec<i32> = self
            .mine(0, count)
            .filter(|p| !self.owned.contains_key(p))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        let mut assigned = Vec::new();
        for p in new {
            let start = match self.cfg.start_offsets.get(&p) {
                Some(o) => *o,
                None => self.resolve_start(consumer, p, OffsetReset::Earliest)?,
            };
            tpl.add_partition_offset(&self.cfg.topic, p, Offset::Offset(start))
                .map_err(|e| self.client_err("build the assignment", e))?;
            assigned.push((p, start));
        }
        consumer
            .incremental_assign(&tpl)
            .map_err(|e| self.client_err("assign the new partitions", e))?;
        for (p, start) in &assigned {
            self.owned.insert(*p, *start);
            self.positions.insert(*p, *start);
        }
        tracing::info!(
            "{}: the topic grew; now also reading {assigned:?} (partition, offset)",
            self.who
        );
        self.outbox.push_back(KafkaSourceEvent::Assigned {
            partitions: assigned,
        });
        Ok(())
    }

    /// Polls once, then takes what is ready, up to a batch.
    fn read_batch(&mut self, consumer: &BaseConsumer<Ctx>) {
        let mut messages = Vec::new();
        let mut timeout = Duration::from_millis(100);
        while messages.len() < self.cfg.max_batch {
            match consumer.poll(timeout) {
                None => break,
                Some(Ok(m)) => {
                    messages.push(KafkaMessage {
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(Bytes::copy_from_slice),
                        payload: m.payload().map(Bytes::copy_from_slice),
                    });
                    timeout = Duration::ZERO;
                }
                Some(Err(e)) => {
                    match e.rdkafka_error_code() {
                        Some(code) if is_unreachable(code) => self.health.down(&e.to_string()),
                        _ => tracing::warn!("{}: {e}", self.who),
                    }
                    break;
                }
            }
        }
        if messages.is_empty() {
            return;
        }
        self.health.up();
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        for m in &messages {
            next.insert(m.partition, m.offset + 1);
        }
        self.positions.extend(next.iter().map(|(p, o)| (*p, *o)));
        self.outbox.push_back(KafkaSourceEvent::Batch(KafkaBatch {
            epoch: self.epoch,
            messages,
            next_offsets: next.into_iter().collect(),
        }));
    }

    /// Says once when the brokers went away and when they came back.
    fn report_health(&mut self) {
        let down = self.health.is_down();
        if down && !self.reported_down {
            self.outbox.push_back(KafkaSourceEvent::Unavailable {
                reason: self.health.down_reason(),
            });
        } else if !down && self.reported_down {
            self.outbox.push_back(KafkaSourceEvent::Available);
        }
        self.reported_down = down;
    }

    /// Sends what the channel takes; false if the worker is gone.
    fn drain_outbox(&mut self) -> bool {
        while let Some(ev) = self.outbox.pop_front() {
            match self.events.try_send(ev) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(ev)) => {
                    self.outbox.push_front(ev);
                    return true;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
            }
        }
        true
    }

    /// Serves the commands that arrive within `wait` (at least those
    /// already queued).
    fn serve_commands(&mut self, consumer: &BaseConsumer<Ctx>, wait: Duration) -> Flow {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let cmd = match self.commands.recv_timeout(left) {
                Ok(cmd) => cmd,
                Err(std_mpsc::RecvTimeoutError::Timeout) => return Flow::Go,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return Flow::Stop,
            };
            match cmd {
                Command::Seek(positions, reply) => {
                    let _ = reply.send(self.seek(consumer, &positions));
                }
                Command::CommitOffsets(positions, reply) => {
                    let _ = reply.send(self.commit_offsets(consumer, &positions));
                }
                Command::Stop(done) => {
                    let _ = done.send(());
                    return Flow::Stop;
                }
            }
        }
    }

    fn seek(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        positions: &BTreeMap<i32, i64>,
    ) -> Result<u64, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        let mut targets = BTreeMap::new();
        for (p, start) in &self.owned {
            let to = positions.get(p).copied().unwrap_or(*start);
            tpl.add_partition_offset(&self.cfg.topic, *p, Offset::Offset(to))
                .map_err(|e| self.client_err("build the assignment", e))?;
            targets.insert(*p, to);
        }
        // Re-assigning discards what librdkafka fetched before.
        consumer
            .assign(&tpl)
            .map_err(|e| self.client_err("seek back (re-assign the partitions)", e))?;
        self.epoch += 1;
        self.positions = targets;
        self.outbox
            .retain(|ev| !matches!(ev, KafkaSourceEvent::Batch(_)));
        tracing::info!(
            "{}: rolled back to {:?} (partition, offset); epoch {}",
            self.who,
            self.positions,
            self.epoch
        );
        Ok(self.epoch)
    }

    fn commit_offsets(
        &self,
        consumer: &BaseConsumer<Ctx>,
        positions: &BTreeMap<i32, i64>,
    ) -> Result<(), KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for (p, o) in positions {
            if self.owned.contains_key(p) {
                tpl.add_partition_offset(&self.cfg.topic, *p, Offset::Offset(*o))
                    .map_err(|e| self.client_err("build the offsets", e))?;
            }
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        consumer.commit(&tpl, CommitMode::Sync).map_err(|e| {
            self.client_err(
                &format!("commit offsets to group '{}'", self.cfg.commit_group),
                e,
            )
        })
    }
}
