//! Kafka sources and sinks for quoll workers, tied to the worker's
//! checkpoints. Knows nothing of Python: records are bytes, positions are
//! offsets, checkpoints are ids.
//!
//! Both run on a thread of their own (librdkafka's transactional and
//! metadata calls block) and are driven through handles whose methods are
//! async: a worker awaits them from its tokio tasks. Logs go through
//! `tracing`, every line and error naming the source or sink, the worker,
//! the topic and the brokers. `docs/kafka.md` explains the design for
//! users; what follows is the contract with the worker.
//!
//! # Source ([`KafkaSource`])
//!
//! Worker `i` of `n` reads the partitions `p % n == i` through `assign()`
//! (no group join, no rebalance), from the offsets of the restored
//! checkpoint or else from the earliest (or latest) offset. It hands out
//! [`KafkaBatch`]es with each touched partition's next offset, which the
//! worker records as the source's position at a barrier. On rollback the
//! worker calls `seek` with the checkpoint's positions and drops batches of
//! older epochs; after a commit it may call `commit_offsets`.
//!
//! # Sink ([`KafkaSink`]): exactly once with resilience
//!
//! librdkafka can neither resume nor commit another producer instance's
//! transaction, and a producer started with the same `transactional.id`
//! fences its predecessor and aborts the transaction it had open. A
//! transaction pre-committed at a barrier therefore dies with its worker,
//! even though the cluster may commit that checkpoint a moment later. So
//! the sink keeps its own copy of what each transaction holds:
//!
//! 1. One transactional producer per (app, worker, sink), with a
//!    `transactional.id` derived from the three names. Records of
//!    checkpoint interval N go into transaction N as they come, and are
//!    appended to a CRC-framed write-ahead file in the worker's resilience
//!    directory.
//! 2. Pre-commit (barrier N): flush the producer (every record acked by
//!    the broker), fsync the write-ahead file and seal it as `wal-N`.
//! 3. Commit N (the checkpoint is durably committed cluster-wide): add the
//!    sink's commit record "N" (keyed by its transactional id, tagged with
//!    the run id kept with the write-ahead files) to the transaction, on
//!    the commit topic, commit the transaction, delete `wal-N`. The record
//!    is committed exactly when the transaction is.
//! 4. Abort N (the checkpoint was abandoned and the worker does *not* roll
//!    back): N's records stay in the open transaction. The worker's state
//!    and source positions already moved past them, so dropping them would
//!    lose output; the next checkpoint that commits covers them.
//! 5. Recovery to committed checkpoint N (start-up or rollback):
//!    `init_transactions` fences older producers and aborts whatever they
//!    had open. The commit log (`commit_log`: the commit topic's record
//!    batches read with their commit and abort markers, the read_committed
//!    rule applied by quoll, not by the broker) says which transaction
//!    committed last, M. Write-ahead files of checkpoints in `M+1..=N`
//!    belong to committed checkpoints whose transactions were lost: their
//!    records are produced again in one new transaction with commit record
//!    N and committed, so each is committed exactly once. Files of
//!    checkpoints after N (never committed) and up to M (already
//!    committed) are deleted.
//!
//! Only one transaction is open at a time: records that arrive after
//! barrier N while N's outcome is unknown are held (they are already in the
//! write-ahead file) and produced when it is known. A transaction that
//! fails while running (a delivery timed out, Kafka says it must be
//! aborted) is aborted and produced again from the write-ahead files,
//! through the same producer instance: only `recover` starts a new one,
//! since a new instance would fence whoever holds the id now.
//!
//! Without resilience the sink is an idempotent producer that never gives
//! up on an unreachable broker: at least once (a rollback resends).
//!
//! # Modules
//!
//! - [`source`]: the source; [`sink`]: the sink;
//! - `wal`: the write-ahead files; `commit_log`: reading which
//!   transactions committed; `config`: brokers, log levels, derived
//!   names; `context`: librdkafka's callbacks (logs, broker health,
//!   deliveries); [`error`]: the errors.

mod commit_log;
mod config;
mod context;
pub mod error;
pub mod sink;
pub mod source;
mod wal;

pub use config::{Brokers, LogLevel, DEFAULT_PORT};
pub use error::KafkaError;
pub use sink::{
    Delivery, KafkaRecord, KafkaSink, KafkaSinkConfig, KafkaSinkHandle, Recovered, WriteOutcome,
};
pub use source::{
    KafkaBatch, KafkaMessage, KafkaSource, KafkaSourceConfig, KafkaSourceEvent, KafkaSourceHandle,
    OffsetReset,
};
