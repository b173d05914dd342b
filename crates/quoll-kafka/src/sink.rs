//! The Kafka sink: output records produced to one topic, exactly once when
//! the worker is resilient (a Kafka transaction per checkpoint, backed by a
//! write-ahead file), at least once otherwise (an idempotent producer).
//!
//! The design, its reasons and its recovery rules are in the crate docs
//! and `docs/kafka.md`. In short, for checkpoint N:
//!
//! - writes of interval N go into the open transaction and into
//!   `wal-open`;
//! - [`KafkaSinkHandle::pre_commit`] (at barrier N) flushes the producer,
//!   fsyncs `wal-open` and renames it `wal-N`;
//! - [`KafkaSinkHandle::commit`] (N committed cluster-wide) adds the
//!   commit record "run N" to the transaction (the commit log, see
//!   `commit_log`), commits it, and deletes `wal-N` (and older);
//! - [`KafkaSinkHandle::abort`] (N abandoned, no rollback) keeps N's
//!   records in the open transaction: the next checkpoint that commits
//!   covers them, since the worker's state and source positions moved past
//!   them;
//! - [`KafkaSinkHandle::recover`] (start, or rollback to committed N)
//!   fences every older producer of this sink (their open transactions are
//!   aborted), reads the commit log for the last checkpoint whose
//!   transaction committed, M, then sends again, in one transaction with
//!   commit record N, the write-ahead files of checkpoints in `M+1..=N`,
//!   and deletes the files of later checkpoints.
//!
//! # Invariants
//!
//! - One producer transaction at a time. Records of an interval whose
//!   predecessor is pre-committed but not yet committed or abandoned are
//!   held in memory (and are already in `wal-open`) and produced once the
//!   outcome is known: a commit never takes records of a later checkpoint.
//! - The sink's newest committed commit record (of this run) is N exactly
//!   when the transaction of checkpoint N was the last to commit (the
//!   record is part of the transaction).
//! - A write-ahead file is deleted only once its records are committed
//!   (commit log at or past its id) or belong to no committed checkpoint.
//! - After a fatal error (fenced, unreadable write-ahead file, a commit
//!   that failed) every command but `recover` fails with it.

use std::collections::{BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quoll_core::checkpoint::CheckpointId;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError as ClientError;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::{mpsc, oneshot};

use crate::commit_log::{self, Verdict, DEFAULT_COMMIT_TOPIC};
use crate::config::{base_config, derived_name, Brokers, LogLevel, Who, CALL_TIMEOUT};
use crate::context::{is_unreachable, Ctx, Health};
use crate::error::KafkaError;
use crate::wal::{OpenWal, WalDir};

/// The least time an exactly-once sink lets librdkafka hold records to
/// batch them. With no lingering (Wallaroo's default buffer time, 0) every
/// record wakes the producer's thread and batches stay small: on the Kafka
/// benchmark that took about twice the CPU per record in the worker and
/// three times in the broker. Much longer is not better: at 50 ms
/// librdkafka's broker thread spent about twice as long per record
/// building requests and settling replies as at 5 ms, and the benchmark's
/// worker CPU per word went up 10-15 % (docs/kafka.md, "Cost").
pub const EXACTLY_ONCE_MIN_LINGER: Duration = Duration::from_millis(10);

/// How long recovery reads the commit log again while the sink's newest
/// commit record belongs to a transaction that has not ended, before it
/// counts it as aborted. Kafka ends a fenced producer's transaction before
/// `init_transactions` returns, so there it never waits; a broker that
/// leaves the fenced transaction without a marker (tansu) makes a recovery
/// with files in doubt wait this long.
pub const OPEN_SETTLE: Duration = Duration::from_secs(1);

/// One output message: what a Wallaroo Kafka encoder returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaRecord {
    pub key: Option<Bytes>,
    pub payload: Bytes,
    /// None: librdkafka's partitioner picks (by key).
    pub partition: Option<i32>,
}

/// The sink's delivery guarantee.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// Transactions tied to checkpoints, with write-ahead files in the
    /// worker's resilience directory.
    ExactlyOnce { resilience_dir: PathBuf },
    /// An idempotent producer; records may be sent again after a rollback.
    AtLeastOnce,
}

/// How to run one sink of one worker.
#[derive(Debug, Clone)]
pub struct KafkaSinkConfig {
    pub app: String,
    pub worker: String,
    /// The sink's name, unique among the app's sinks (it names files and
    /// the transactional id).
    pub name: String,
    pub topic: String,
    pub brokers: Brokers,
    pub delivery: Delivery,
    /// Largest key plus payload accepted, in bytes (Wallaroo's
    /// `max_message_size`, default 100000).
    pub max_message_size: usize,
    /// How long librdkafka may hold records to batch them (Wallaroo's
    /// `max_produce_buffer_ms`, default 0); exactly-once sinks hold them at
    /// least [`EXACTLY_ONCE_MIN_LINGER`].
    pub max_produce_buffer: Duration,
    /// Kafka's transaction timeout; also how long a record may wait for an
    /// unreachable broker before the transaction is rebuilt from the
    /// write-ahead files.
    pub transaction_timeout: Duration,
    pub log_level: LogLevel,
    /// Where an exactly-once sink writes its commit records (partition 0;
    /// created with one partition if missing).
    pub commit_topic: String,
    /// Extra librdkafka settings, applied last.
    pub client_options: Vec<(String, String)>,
}

impl KafkaSinkConfig {
    /// A config with Wallaroo's defaults.
    pub fn new(
        app: &str,
        worker: &str,
        name: &str,
        topic: &str,
        brokers: Brokers,
        delivery: Delivery,
    ) -> Self {
        KafkaSinkConfig {
            app: app.to_string(),
            worker: worker.to_string(),
            name: name.to_string(),
            topic: topic.to_string(),
            brokers,
            delivery,
            max_message_size: 100_000,
            max_produce_buffer: Duration::ZERO,
            transaction_timeout: Duration::from_secs(300),
            log_level: LogLevel::Warn,
            commit_topic: DEFAULT_COMMIT_TOPIC.to_string(),
            client_options: Vec::new(),
        }
    }

    /// The producer's transactional id: one per app, worker and sink, so a
    /// restarted worker fences its predecessor.
    pub fn transactional_id(&self) -> String {
        derived_name(&[&self.app, &self.worker, &self.name])
    }
}

/// What a write did.
#[derive(Debug, Default)]
pub struct WriteOutcome {
    /// Records handed to the producer (or held for the next transaction).
    pub accepted: usize,
    /// Records refused, each with why (too large, no such partition).
    pub rejected: Vec<KafkaError>,
}

/// What [`KafkaSinkHandle::recover`] found and did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The commit log before recovery: the last checkpoint whose
    /// transaction had committed (exactly-once only).
    pub marker: Option<CheckpointId>,
    /// Write-ahead files sent again and committed under the rollback
    /// checkpoint.
    pub resent_checkpoints: Vec<CheckpointId>,
    pub resent_records: u64,
    /// Write-ahead files of checkpoints after the rollback point, deleted.
    pub discarded_checkpoints: Vec<CheckpointId>,
}

type Reply<T> = oneshot::Sender<Result<T, KafkaError>>;

enum Command {
    Write(Vec<KafkaRecord>, Reply<WriteOutcome>),
    PreCommit(CheckpointId, Reply<()>),
    Commit(CheckpointId, Reply<()>),
    Abort(CheckpointId, Reply<()>),
    Recover(Option<CheckpointId>, Reply<Recovered>),
}

/// Starts Kafka sinks.
pub struct KafkaSink;

impl KafkaSink {
    /// Checks `config` and starts the sink's thread. Call
    /// [`KafkaSinkHandle::recover`] before the first write: it connects,
    /// checks the topic and resolves what a previous run left.
    pub fn spawn(config: KafkaSinkConfig) -> Result<KafkaSinkHandle, KafkaError> {
        let who = Who::new(
            "sink",
            &config.name,
            &config.worker,
            &config.topic,
            &config.brokers,
        );
        let bad = |problem: &str| KafkaError::Config {
            who: who.to_string(),
            problem: problem.to_string(),
        };
        if config.topic.is_empty() {
            return Err(bad("no topic given"));
        }
        if config.max_message_size == 0 || config.max_message_size > 1_000_000_000 {
            return Err(bad(
                "the maximum message size must be between 1 and 1000000000 bytes",
            ));
        }
        if config.transaction_timeout < Duration::from_secs(1) {
            return Err(bad("the transaction timeout must be at least 1 s"));
        }
        if let Delivery::ExactlyOnce { resilience_dir } = &config.delivery {
            if config.commit_topic.is_empty() || config.commit_topic == config.topic {
                return Err(bad(
                    "the commit topic must be named, and must not be the output topic",
                ));
            }
            // The commit log is read over a plain connection (commit_log.rs).
            if let Some((_, protocol)) = config
                .client_options
                .iter()
                .find(|(k, _)| k == "security.protocol")
                .filter(|(_, v)| !v.eq_ignore_ascii_case("plaintext"))
            {
                return Err(bad(&format!(
                    "security.protocol {protocol}: an exactly-once sink reads its commit log \
                     over a plaintext listener; give the sink one"
                )));
            }
            if !resilience_dir.is_dir() {
                return Err(bad(&format!(
                    "the resilience directory {} does not exist",
                    resilience_dir.display()
                )));
            }
        }
        let (tx, rx) = mpsc::channel(64);
        let transactional_id = matches!(config.delivery, Delivery::ExactlyOnce { .. })
            .then(|| config.transactional_id());
        let driver = Driver::new(config.clone(), who.clone());
        thread::Builder::new()
            .name(format!("kafka-sink-{}", config.name))
            .spawn(move || driver.run(rx))
            .map_err(|e| KafkaError::Failed {
                who: who.to_string(),
                reason: format!("can't start the sink's thread: {e}"),
            })?;
        Ok(KafkaSinkHandle {
            tx,
            who,
            max_message_size: config.max_message_size,
            transactional_id,
        })
    }
}

/// Commands a running sink; the sink stops when the handle is dropped
/// (unsent records are dropped then, and an open transaction is left to be
/// aborted by the next incarnation's `recover`).
#[derive(Clone)]
pub struct KafkaSinkHandle {
    tx: mpsc::Sender<Command>,
    who: Who,
    max_message_size: usize,
    transactional_id: Option<String>,
}

impl KafkaSinkHandle {
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, KafkaError> {
        let stopped = || KafkaError::Stopped {
            who: self.who.to_string(),
        };
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Sends `records` in order (in the current checkpoint interval).
    /// Records over the maximum size or for a partition the topic lacks are
    /// refused one by one; the rest go on.
    pub async fn write(&self, records: Vec<KafkaRecord>) -> Result<WriteOutcome, KafkaError> {
        let mut rejected = Vec::new();
        let mut ok = Vec::with_capacity(records.len());
        for r in records {
            let size = r.payload.len() + r.key.as_ref().map_or(0, |k| k.len());
            if size > self.max_message_size {
                rejected.push(KafkaError::MessageTooLarge {
                    who: self.who.to_string(),
                    size,
                    max: self.max_message_size,
                });
            } else {
                ok.push(r);
            }
        }
        let mut outcome = if ok.is_empty() {
            WriteOutcome::default()
        } else {
            self.call(|reply| Command::Write(ok, reply)).await?
        };
        rejected.append(&mut outcome.rejected);
        outcome.rejected = rejected;
        Ok(outcome)
    }

    /// Barrier `id`: everything written so far is delivered to Kafka (in
    /// the open transaction) and, exactly-once, durable in `wal-<id>`.
    pub async fn pre_commit(&self, id: CheckpointId) -> Result<(), KafkaError> {
        self.call(|reply| Command::PreCommit(id, reply)).await
    }

    /// Checkpoint `id` is committed cluster-wide: commit its transaction.
    pub async fn commit(&self, id: CheckpointId) -> Result<(), KafkaError> {
        self.call(|reply| Command::Commit(id, reply)).await
    }

    /// Checkpoint `id` was abandoned without a rollback: its records stay in
    /// the open transaction, for the next checkpoint that commits.
    pub async fn abort(&self, id: CheckpointId) -> Result<(), KafkaError> {
        self.call(|reply| Command::Abort(id, reply)).await
    }

    /// Start-up and rollback: the worker restored checkpoint `committed`
    /// (None: the beginning). Anything written since is discarded.
    pub async fn recover(&self, committed: Option<CheckpointId>) -> Result<Recovered, KafkaError> {
        self.call(|reply| Command::Recover(committed, reply)).await
    }

    /// The producer's transactional id (exactly-once only).
    pub fn transactional_id(&self) -> Option<&str> {
        self.transactional_id.as_deref()
    }
}

/// A write-ahead file whose records are in the open transaction, or held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Segment {
    Sealed(CheckpointId),
    Open,
}

struct Eos {
    wal: WalDir,
    /// The write-ahead directory's run id: commit records of other runs
    /// are not this run's.
    run: String,
    open: Option<OpenWal>,
    txn_open: bool,
    /// A rebuild failed: the transaction lacks records of `in_txn`.
    broken: bool,
    /// Segments whose records were produced into the open transaction.
    in_txn: Vec<Segment>,
    /// Pre-committed checkpoints whose outcome is not known yet.
    unresolved: BTreeSet<CheckpointId>,
    /// Records not produced yet (see the module invariants), by segment.
    held: VecDeque<(Segment, Vec<KafkaRecord>)>,
}

struct Driver {
    cfg: KafkaSinkConfig,
    who: Who,
    health: Arc<Health>,
    producer: Option<ThreadedProducer<Ctx>>,
    partitions: usize,
    eos: Option<Eos>,
    /// A fatal error: every command but recover fails with it.
    failed: Option<String>,
}

impl Driver {
    fn new(cfg: KafkaSinkConfig, who: Who) -> Driver {
        let eos = match &cfg.delivery {
            Delivery::ExactlyOnce { resilience_dir } => Some(Eos {
                wal: WalDir::new(
                    resilience_dir,
                    &cfg.app,
                    &cfg.worker,
                    &cfg.name,
                    &cfg.topic,
                    who.to_string(),
                ),
                // Read by `recover`, which comes before any transaction.
                run: String::new(),
                open: None,
                txn_open: false,
                broken: false,
                in_txn: Vec::new(),
                unresolved: BTreeSet::new(),
                held: VecDeque::new(),
            }),
            Delivery::AtLeastOnce => None,
        };
        Driver {
            health: Arc::new(Health::new(who.clone())),
            who,
            cfg,
            producer: None,
            partitions: 0,
            eos,
            failed: None,
        }
    }

    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(cmd) = rx.blocking_recv() {
            match cmd {
                Command::Recover(committed, reply) => {
                    let r = self.recover(committed);
                    if let Err(e) = &r {
                        tracing::error!("{e}");
                        // Unusable until a recover succeeds.
                        self.producer = None;
                    }
                    let _ = reply.send(r);
                }
                Command::Write(records, reply) => {
                    let r = self.guarded(|d| d.write(records));
                    let _ = reply.send(r);
                }
                Command::PreCommit(id, reply) => {
                    let _ = reply.send(self.guarded(|d| d.pre_commit(id)));
                }
                Command::Commit(id, reply) => {
                    let r = self.guarded(|d| d.commit(id));
                    if let Err(e) = &r {
                        // Checkpoint `id` is committed but its transaction
                        // may not be: only recover() can settle that.
                        if self.failed.is_none() {
                            tracing::error!("{e}");
                            self.failed = Some(e.to_string());
                        }
                    }
                    let _ = reply.send(r);
                }
                Command::Abort(id, reply) => {
                    let _ = reply.send(self.guarded(|d| d.abort(id)));
                }
            }
        }
        if let Some(eos) = &mut self.eos {
            eos.open = None;
            let _ = eos.wal.remove(&eos.wal.open_path());
        }
    }

    /// Runs `f` unless the sink failed; a fatal error makes it fail.
    fn guarded<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, KafkaError>,
    ) -> Result<T, KafkaError> {
        if let Some(reason) = &self.failed {
            return Err(self.failure(reason.clone()));
        }
        if self.producer.is_none() {
            return Err(self.failure("recover() was not called before use".to_string()));
        }
        let r = f(self);
        if let Err(e) = &r {
            if matches!(
                e,
                KafkaError::Fenced { .. }
                    | KafkaError::Wal { .. }
                    | KafkaError::WalCorrupt { .. }
                    | KafkaError::Failed { .. }
            ) {
                tracing::error!("{e}");
                self.failed = Some(e.to_string());
            }
        }
        r
    }

    fn failure(&self, reason: String) -> KafkaError {
        KafkaError::Failed {
            who: self.who.to_string(),
            reason,
        }
    }

    fn client_err(&self, action: &str, source: ClientError) -> KafkaError {
        let fenced = matches!(
            source.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
                    | RDKafkaErrorCode::Fenced
            )
        );
        if fenced {
            return KafkaError::Fenced {
                who: self.who.to_string(),
                transactional_id: self.cfg.transactional_id(),
            };
        }
        KafkaError::Client {
            who: self.who.to_string(),
            action: action.to_string(),
            source: Box::new(source),
        }
    }

    fn producer(&self) -> &ThreadedProducer<Ctx> {
        // `guarded` and `recover` make sure there is one.
        self.producer
            .as_ref()
            .expect("a producer exists after recover")
    }

    // ------------------------------------------------------------ set-up

    fn create_producer(&self) -> Result<ThreadedProducer<Ctx>, KafkaError> {
        let mut c = base_config(
            &self.cfg.brokers,
            &derived_name(&[&self.cfg.worker, &self.cfg.name]),
            self.cfg.log_level,
            &[],
        );
        // Exactly-once output is invisible until its transaction commits,
        // and pre-commit flushes at once: lingering there delays nothing a
        // consumer sees and saves produce requests. At least once, records
        // are visible when written, so the user's buffer time stands.
        let linger = match &self.eos {
            Some(_) => self.cfg.max_produce_buffer.max(EXACTLY_ONCE_MIN_LINGER),
            None => self.cfg.max_produce_buffer,
        };
        let linger = linger.as_millis().to_string();
        let max_bytes = (self.cfg.max_message_size + 1024).max(1000).to_string();
        c.set("linger.ms", linger)
            .set("message.max.bytes", max_bytes)
            .set("enable.idempotence", "true");
        match &self.eos {
            Some(_) => {
                let t = self.cfg.transaction_timeout.as_millis().to_string();
                // Only failures need a delivery report: a flush at every
                // pre-commit vouches for the rest, and says the brokers
                // are reachable. A report per record cost a thread's
                // wake-ups and frees (docs/kafka.md, "Cost").
                c.set("transactional.id", self.cfg.transactional_id())
                    .set("delivery.report.only.error", "true")
                    .set("transaction.timeout.ms", &t)
                    .set("message.timeout.ms", &t);
            }
            // Keep retrying while the brokers are down: at least once.
            None => {
                c.set("message.timeout.ms", "0");
            }
        }
        for (k, v) in &self.cfg.client_options {
            c.set(k, v);
        }
        c.create_with_context(Ctx(self.health.clone()))
            .map_err(|e| self.client_err("create the producer", e))
    }

    /// Retries `f` while it fails because no broker answers (said once in
    /// the log), up to `limit`.
    fn retrying<T>(
        &self,
        action: &str,
        limit: Duration,
        mut f: impl FnMut() -> Result<T, ClientError>,
    ) -> Result<T, KafkaError> {
        let start = Instant::now();
        loop {
            match f() {
                Ok(v) => {
                    self.health.up();
                    return Ok(v);
                }
                Err(e) if retriable(&e) && start.elapsed() < limit => {
                    self.health.down(&format!("{action}: {e}"));
                    thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(self.client_err(action, e)),
            }
        }
    }

    /// The topic's partition count; an error if it does not exist.
    fn fetch_partitions(&self) -> Result<usize, KafkaError> {
        let topic = self.cfg.topic.clone();
        let producer = self.producer();
        let md = self.retrying(
            "fetch the topic's metadata",
            self.cfg.transaction_timeout,
            || producer.client().fetch_metadata(Some(&topic), CALL_TIMEOUT),
        )?;
        match md.topics().iter().find(|t| t.name() == topic) {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                Ok(t.partitions().len())
            }
            _ => Err(KafkaError::MissingTopic {
                who: self.who.to_string(),
            }),
        }
    }

    fn recover(&mut self, committed: Option<CheckpointId>) -> Result<Recovered, KafkaError> {
        // The old producer (if any) goes first; its open transaction is
        // aborted by the new one's init_transactions.
        self.producer = None;
        self.failed = None;
        self.cfg.brokers.check_resolvable(&self.who)?;
        let producer = self.create_producer()?;
        self.producer = Some(producer);
        let limit = self.cfg.transaction_timeout;
        if self.eos.is_some() {
            let producer = self.producer();
            self.retrying(
                "initialise transactions (fencing older producers)",
                limit,
                || producer.init_transactions(CALL_TIMEOUT),
            )?;
        }
        self.partitions = self.fetch_partitions()?;
        let Some(eos) = &mut self.eos else {
            return Ok(Recovered::default());
        };
        eos.open = None;
        eos.txn_open = false;
        eos.broken = false;
        eos.in_txn.clear();
        eos.unresolved.clear();
        eos.held.clear();
        eos.wal.remove(&eos.wal.open_path())?;
        eos.run = eos.wal.run_id()?;
        self.ensure_commit_topic()?;
        let eos = self.eos.as_mut().expect("exactly-once");
        let mut report = Recovered::default();
        let sealed = eos.wal.sealed()?;
        let (keep, later): (Vec<_>, Vec<_>) = sealed
            .into_iter()
            .partition(|id| committed.is_some_and(|n| *id <= n));
        for id in later {
            eos.wal.remove(&eos.wal.sealed_path(id))?;
            report.discarded_checkpoints.push(id);
        }
        let (Some(n), Some(&oldest)) = (committed, keep.iter().min()) else {
            return Ok(report);
        };
        let mut log = self.read_commit_log()?;
        let settle_by = Instant::now() + OPEN_SETTLE;
        while log.open.is_some_and(|id| id >= oldest) && Instant::now() < settle_by {
            thread::sleep(Duration::from_millis(100));
            log = self.read_commit_log()?;
        }
        let marker = log.committed;
        report.marker = marker;
        let eos = self.eos.as_mut().expect("exactly-once");
        let (done, in_doubt): (Vec<_>, Vec<_>) = keep
            .into_iter()
            .partition(|id| marker.is_some_and(|m| *id <= m));
        for id in done {
            eos.wal.remove(&eos.wal.sealed_path(id))?;
        }
        if in_doubt.is_empty() {
            return Ok(report);
        }
        tracing::warn!(
            "{}: checkpoint {n} committed but its Kafka transaction did not (last committed: {}); \
             sending the output of checkpoint(s) {in_doubt:?} again",
            self.who,
            marker.map_or("none".to_string(), |m| m.to_string())
        );
        eos.in_txn = in_doubt.iter().map(|id| Segment::Sealed(*id)).collect();
        report.resent_records = self.rebuild_transaction()?;
        self.commit_transaction(n)?;
        let eos = self.eos.as_mut().expect("exactly-once");
        for id in &in_doubt {
            eos.wal.remove(&eos.wal.sealed_path(*id))?;
        }
        eos.in_txn.clear();
        report.resent_checkpoints = in_doubt;
        Ok(report)
    }

    /// Makes sure the commit topic exists, creating it with one partition
    /// (the broker's default replication) if it does not.
    fn ensure_commit_topic(&self) -> Result<(), KafkaError> {
        if self.commit_partition_leader()?.is_some() {
            return Ok(());
        }
        let topic = &self.cfg.commit_topic;
        let admin: AdminClient<DefaultClientContext> = base_config(
            &self.cfg.brokers,
            &derived_name(&[&self.cfg.worker, &self.cfg.name, "admin"]),
            self.cfg.log_level,
            &self.cfg.client_options,
        )
        .create()
        .map_err(|e| self.client_err("create an admin client", e))?;
        let new = NewTopic::new(topic, 1, TopicReplication::Fixed(-1));
        let options = AdminOptions::new().operation_timeout(Some(CALL_TIMEOUT));
        let created = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| {
                self.failure(format!(
                    "can't start a runtime to create the commit topic: {e}"
                ))
            })?
            .block_on(admin.create_topics([&new], &options))
            .map_err(|e| self.client_err(&format!("create the commit topic '{topic}'"), e))?;
        for result in created {
            match result {
                Ok(_) => tracing::info!("{}: created the commit topic '{topic}'", self.who),
                // Another worker's sink made it first.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(self.failure(format!(
                        "can't create the commit topic '{topic}' ({code}); create it with one \
                         partition, or name another in the sink's config"
                    )))
                }
            }
        }
        let deadline = Instant::now() + CALL_TIMEOUT;
        while self.commit_partition_leader()?.is_none() {
            if Instant::now() > deadline {
                return Err(self.failure(format!(
                    "the commit topic '{topic}' was created but has no leader yet"
                )));
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// `host:port` of the commit topic's partition 0's leader; None if the
    /// topic does not exist.
    fn commit_partition_leader(&self) -> Result<Option<String>, KafkaError> {
        let topic = self.cfg.commit_topic.clone();
        let producer = self.producer();
        let md = self.retrying(
            "fetch the commit topic's metadata",
            self.cfg.transaction_timeout,
            || producer.client().fetch_metadata(Some(&topic), CALL_TIMEOUT),
        )?;
        let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
            return Ok(None);
        };
        let Some(p) = t.partitions().iter().find(|p| p.id() == 0) else {
            return Ok(None);
        };
        if t.error().is_some() || p.leader() < 0 {
            return Ok(None);
        }
        Ok(md
            .brokers()
            .iter()
            .find(|b| b.id() == p.leader())
            .map(|b| format!("{}:{}", b.host(), b.port())))
    }

    /// What the commit log says of this sink's run, retried while the
    /// brokers can't be reached.
    fn read_commit_log(&self) -> Result<Verdict, KafkaError> {
        let eos = self.eos.as_ref().expect("exactly-once");
        let topic = &self.cfg.commit_topic;
        let key = self.cfg.transactional_id();
        let start = Instant::now();
        loop {
            let attempt = self.commit_partition_leader().and_then(|leader| {
                let leader = leader
                    .ok_or_else(|| self.failure(format!("the commit topic '{topic}' has gone")))?;
                commit_log::scan(&leader, topic, key.as_bytes(), &eos.run, CALL_TIMEOUT).map_err(
                    |problem| KafkaError::CommitLog {
                        who: self.who.to_string(),
                        topic: topic.clone(),
                        problem,
                    },
                )
            });
            match attempt {
                Ok(v) => {
                    self.health.up();
                    return Ok(v);
                }
                Err(e) if start.elapsed() < self.cfg.transaction_timeout => {
                    self.health.down(&e.to_string());
                    thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    }

    // ------------------------------------------------------------ writes

    fn write(&mut self, records: Vec<KafkaRecord>) -> Result<WriteOutcome, KafkaError> {
        let mut outcome = WriteOutcome::default();
        let mut ok = Vec::with_capacity(records.len());
        for r in records {
            match r.partition {
                Some(p) if p < 0 || p as usize >= self.partitions => {
                    // The topic may have grown since we looked.
                    if p >= 0 {
                        self.partitions = self.fetch_partitions()?;
                    }
                    if p < 0 || p as usize >= self.partitions {
                        outcome.rejected.push(KafkaError::NoSuchPartition {
                            who: self.who.to_string(),
                            partition: p,
                            partitions: self.partitions,
                        });
                        continue;
                    }
                    ok.push(r)
                }
                _ => ok.push(r),
            }
        }
        outcome.accepted = ok.len();
        if self.eos.is_none() {
            self.take_delivery_failure_at_least_once()?;
            for r in &ok {
                self.produce(r)?;
            }
            return Ok(outcome);
        }
        let eos = self.eos.as_mut().expect("exactly-once");
        if eos.open.is_none() {
            eos.open = Some(eos.wal.create_open()?);
        }
        let open = eos.open.as_mut().expect("just made");
        for r in &ok {
            open.append(&eos.wal, r)?;
        }
        if eos.unresolved.is_empty() {
            self.eos
                .as_mut()
                .expect("exactly-once")
                .mark_in_txn(Segment::Open);
            if self.ensure_txn()? {
                return Ok(outcome);
            }
            for r in &ok {
                if self.produce_in_txn(r)? {
                    break;
                }
            }
        } else {
            match eos.held.back_mut() {
                Some((Segment::Open, held)) => held.extend(ok),
                _ => eos.held.push_back((Segment::Open, ok)),
            }
        }
        Ok(outcome)
    }

    fn produce(&self, r: &KafkaRecord) -> Result<(), KafkaError> {
        let mut record: BaseRecord<'_, [u8], [u8], ()> =
            BaseRecord::to(&self.cfg.topic).payload(&r.payload[..]);
        if let Some(k) = &r.key {
            record = record.key(&k[..]);
        }
        if let Some(p) = r.partition {
            record = record.partition(p);
        }
        self.send(record)
            .map_err(|e| self.client_err("produce a record", e))
    }

    /// Hands `record` to librdkafka, waiting while its queue is full.
    fn send(&self, mut record: BaseRecord<'_, [u8], [u8], ()>) -> Result<(), ClientError> {
        loop {
            match self.producer().send(record) {
                Ok(()) => return Ok(()),
                Err((e, back)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    // librdkafka's queue is full: its thread is sending.
                    record = back;
                    thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Produces into the transaction; a transaction in an abortable state is
    /// rebuilt from the write-ahead files (which already hold `r`).
    /// Produces into the transaction. A transaction in an abortable state
    /// is rebuilt from the write-ahead files, which hold `r` and the rest
    /// of its segment already: true then, and the caller produces no more
    /// of that segment.
    fn produce_in_txn(&mut self, r: &KafkaRecord) -> Result<bool, KafkaError> {
        match self.produce(r) {
            Ok(()) => Ok(false),
            Err(e) if self.producer().client().fatal_error().is_none() => {
                tracing::warn!("{e}; rebuilding the transaction from the write-ahead files");
                self.rebuild_transaction().map(|_| true)
            }
            Err(e) => Err(e),
        }
    }

    /// The transaction is ready for more records: true if it had to be
    /// rebuilt, which produced every segment marked in it from the files.
    fn ensure_txn(&mut self) -> Result<bool, KafkaError> {
        if self.eos.as_ref().expect("exactly-once").broken {
            self.rebuild_transaction()?;
            return Ok(true);
        }
        self.begin_if_needed()?;
        Ok(false)
    }

    fn begin_if_needed(&mut self) -> Result<(), KafkaError> {
        let eos = self.eos.as_mut().expect("exactly-once");
        if !eos.txn_open {
            self.producer
                .as_ref()
                .expect("a producer exists after recover")
                .begin_transaction()
                .map_err(|e| self.client_err("begin a transaction", e))?;
            self.eos.as_mut().expect("exactly-once").txn_open = true;
        }
        Ok(())
    }

    /// Flushes the producer, waiting while the brokers are unreachable.
    fn flush(&self) -> Result<(), KafkaError> {
        let producer = self.producer();
        self.retrying("deliver the records", Duration::MAX, || {
            producer.flush(CALL_TIMEOUT)
        })
    }

    fn take_delivery_failure_at_least_once(&self) -> Result<(), KafkaError> {
        match self.health.take_failed_delivery() {
            None => Ok(()),
            Some(e) => Err(self.client_err("deliver records (they are lost)", e)),
        }
    }

    /// Aborts the open transaction and produces again, in a new one, every
    /// segment it held: after a failed delivery or an abortable error, and
    /// on recovery. Returns the records produced.
    fn rebuild_transaction(&mut self) -> Result<u64, KafkaError> {
        const ATTEMPTS: u32 = 5;
        let mut attempt = 0;
        // Until this returns Ok, the transaction lacks records it must
        // hold: whatever comes next rebuilds it first.
        self.eos.as_mut().expect("exactly-once").broken = true;
        loop {
            attempt += 1;
            // Only through this producer instance: a new one would fence
            // whoever holds the transactional id now, and a fenced zombie
            // must never fence its successor. Only recover() starts one.
            if self.eos.as_ref().expect("exactly-once").txn_open {
                let producer = self.producer();
                let aborted = self.retrying(
                    "abort the transaction to rebuild it",
                    self.cfg.transaction_timeout,
                    || producer.abort_transaction(CALL_TIMEOUT),
                );
                if let Err(e) = aborted {
                    // Brokers without KIP-360 (tansu) can't abort a
                    // transaction whose records timed out.
                    return Err(self.failure(format!(
                        "{e}; the sink must be recovered (the worker rolls back)"
                    )));
                }
                self.eos.as_mut().expect("exactly-once").txn_open = false;
            }
            let _ = self.health.take_failed_delivery();
            self.begin_if_needed()?;
            let eos = self.eos.as_mut().expect("exactly-once");
            let mut records = Vec::new();
            for seg in eos.in_txn.clone() {
                let path = match seg {
                    Segment::Sealed(id) => eos.wal.sealed_path(id),
                    Segment::Open => match eos.open.as_mut() {
                        Some(open) => {
                            open.flush(&eos.wal)?;
                            eos.wal.open_path()
                        }
                        None => continue,
                    },
                };
                records.extend(eos.wal.read(&path)?);
            }
            for r in &records {
                self.produce(r)?;
            }
            self.flush()?;
            match self.health.take_failed_delivery() {
                None => {
                    self.eos.as_mut().expect("exactly-once").broken = false;
                    return Ok(records.len() as u64);
                }
                Some(e) if attempt < ATTEMPTS => {
                    tracing::warn!(
                        "{}: delivery failed again ({e}); rebuilding the transaction",
                        self.who
                    );
                }
                Some(e) => return Err(self.client_err("deliver the transaction's records", e)),
            }
        }
    }

    // ------------------------------------------------------------ checkpoints

    fn pre_commit(&mut self, id: CheckpointId) -> Result<(), KafkaError> {
        let Some(eos) = &mut self.eos else {
            self.flush()?;
            return self.take_delivery_failure_at_least_once();
        };
        if eos.broken {
            self.rebuild_transaction()?;
        } else if eos.txn_open {
            self.flush()?;
            if let Some(e) = self.health.take_failed_delivery() {
                tracing::warn!(
                    "{}: a delivery failed ({e}); rebuilding the transaction",
                    self.who
                );
                self.rebuild_transaction()?;
            }
        }
        let eos = self.eos.as_mut().expect("exactly-once");
        match eos.open.take() {
            Some(open) if open.records() > 0 => {
                open.seal(&eos.wal, id)?;
            }
            Some(open) => {
                drop(open);
                eos.wal.remove(&eos.wal.open_path())?;
            }
            None => {}
        }
        for seg in eos
            .in_txn
            .iter_mut()
            .chain(eos.held.iter_mut().map(|(s, _)| s))
        {
            if *seg == Segment::Open {
                *seg = Segment::Sealed(id);
            }
        }
        eos.unresolved.insert(id);
        Ok(())
    }

    fn commit(&mut self, id: CheckpointId) -> Result<(), KafkaError> {
        let Some(eos) = &mut self.eos else {
            return Ok(());
        };
        let resolved: Vec<_> = eos.unresolved.range(..=id).copied().collect();
        if resolved.is_empty() {
            tracing::debug!(
                "{}: commit of checkpoint {id}, which was not pre-committed here",
                self.who
            );
            return Ok(());
        }
        for r in &resolved {
            eos.unresolved.remove(r);
        }
        // Held records of the checkpoints now committed join the transaction.
        let mut now = Vec::new();
        while let Some((Segment::Sealed(s), _)) = eos.held.front() {
            if *s > id {
                break;
            }
            now.extend(eos.held.pop_front());
        }
        if !now.is_empty() {
            for (seg, records) in now {
                self.eos.as_mut().expect("exactly-once").mark_in_txn(seg);
                if self.ensure_txn()? {
                    continue;
                }
                for r in &records {
                    if self.produce_in_txn(r)? {
                        break;
                    }
                }
            }
        }
        let eos = self.eos.as_ref().expect("exactly-once");
        if eos.txn_open || eos.broken {
            self.commit_transaction(id)?;
        }
        let eos = self.eos.as_mut().expect("exactly-once");
        eos.in_txn.clear();
        for s in eos.wal.sealed()? {
            if s <= id {
                eos.wal.remove(&eos.wal.sealed_path(s))?;
            }
        }
        self.release_held()
    }

    fn abort(&mut self, id: CheckpointId) -> Result<(), KafkaError> {
        let Some(eos) = &mut self.eos else {
            return Ok(());
        };
        if eos.unresolved.remove(&id) {
            tracing::info!(
                "{}: checkpoint {id} was abandoned; its output stays in the open transaction \
                 for the next checkpoint",
                self.who
            );
        }
        self.release_held()
    }

    /// With no checkpoint outcome pending, held records go into the
    /// transaction.
    fn release_held(&mut self) -> Result<(), KafkaError> {
        let eos = self.eos.as_mut().expect("exactly-once");
        if !eos.unresolved.is_empty() || eos.held.is_empty() {
            return Ok(());
        }
        let held: Vec<_> = eos.held.drain(..).collect();
        for (seg, records) in held {
            self.eos.as_mut().expect("exactly-once").mark_in_txn(seg);
            if self.ensure_txn()? {
                continue;
            }
            for r in &records {
                if self.produce_in_txn(r)? {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Flushes, adds the commit record of `id` and commits, rebuilding the transaction on
    /// abortable errors and retrying while the brokers are unreachable.
    fn commit_transaction(&mut self, id: CheckpointId) -> Result<(), KafkaError> {
        let deadline = Instant::now() + self.cfg.transaction_timeout;
        loop {
            if self.eos.as_ref().expect("exactly-once").broken {
                self.rebuild_transaction()?;
            }
            self.flush()?;
            if let Some(e) = self.health.take_failed_delivery() {
                tracing::warn!(
                    "{}: a delivery failed ({e}); rebuilding the transaction",
                    self.who
                );
                self.rebuild_transaction()?;
                continue;
            }
            let result = self.send_commit_record_and_commit(id, deadline);
            match result {
                Ok(()) => {
                    self.eos.as_mut().expect("exactly-once").txn_open = false;
                    return Ok(());
                }
                Err(e) if txn_requires_abort(&e) && Instant::now() < deadline => {
                    tracing::warn!(
                        "{}: committing checkpoint {id}: {e}; rebuilding the transaction",
                        self.who
                    );
                    self.rebuild_transaction()?;
                }
                Err(e) => {
                    return Err(
                        self.client_err(&format!("commit the transaction of checkpoint {id}"), e)
                    )
                }
            }
        }
    }

    /// Produces the commit record of checkpoint `id` and commits.
    fn send_commit_record_and_commit(
        &mut self,
        id: CheckpointId,
        deadline: Instant,
    ) -> Result<(), ClientError> {
        let eos = self.eos.as_ref().expect("exactly-once");
        let key = self.cfg.transactional_id();
        let value = commit_log::commit_value(&eos.run, id);
        let record = BaseRecord::<'_, [u8], [u8], ()>::to(&self.cfg.commit_topic)
            .partition(0)
            .key(key.as_bytes())
            .payload(&value[..]);
        self.send(record)?;
        let producer = self.producer();
        loop {
            match producer.commit_transaction(CALL_TIMEOUT) {
                Ok(()) => {
                    self.health.up();
                    return Ok(());
                }
                Err(e) if retriable(&e) && !txn_requires_abort(&e) && Instant::now() < deadline => {
                    self.health.down(&e.to_string());
                    thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Eos {
    fn mark_in_txn(&mut self, seg: Segment) {
        if self.in_txn.last() != Some(&seg) {
            self.in_txn.push(seg);
        }
    }
}

/// A call that may succeed if made again (no broker answered in time).
fn retriable(e: &ClientError) -> bool {
    match e {
        ClientError::Transaction(t) => t.is_retriable() && !t.is_fatal(),
        other => other.rdkafka_error_code().is_some_and(is_unreachable),
    }
}

fn txn_requires_abort(e: &ClientError) -> bool {
    matches!(e, ClientError::Transaction(t) if t.txn_requires_abort())
}
