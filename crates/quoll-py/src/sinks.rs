//! Sink writers on tokio threads: TCP sinks (at-least-once, reconnecting)
//! and quoll's file sink (exactly-once: cut back to its checkpointed length
//! on rollback); the Kafka sink's writer is in `kafka_io`, the connector
//! sink's in `connector_sink`. They receive
//! encoded output; nothing here touches Python.
//!
//! Every sink gets every checkpoint command, in the order the executor
//! issued them relative to the output: output written before
//! `PreCommit(N)` belongs to checkpoint N, output after it to a later one.
//! A sink that can't keep up fills its bounded queue and makes the executor
//! wait.

use crate::event::IoStats;
use bytes::Bytes;
use quoll_core::checkpoint::CheckpointId;
use quoll_kafka::KafkaRecord;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

/// How long a sink waits between connection attempts (as Wallaroo: 250 ms).
const SINK_RETRY: Duration = Duration::from_millis(250);
/// How much output a disconnected sink holds before it drops messages.
pub(crate) const SINK_HOLD_BYTES: usize = 64 << 20;

/// Encoded output for one sink, and how many messages it holds.
pub struct SinkChunk {
    pub bytes: Bytes,
    pub messages: u64,
}

/// What the executor asks of a sink writer, in order.
pub enum SinkCommand {
    Write(SinkChunk),
    /// Kafka records (a Kafka sink's output).
    Records(Vec<KafkaRecord>),
    /// Make everything written so far durable as part of checkpoint `id`
    /// (its barrier). TCP sinks answer at once: they are at-least-once.
    PreCommit(CheckpointId, oneshot::Sender<Result<(), String>>),
    /// Checkpoint `id` is committed cluster-wide.
    Commit(CheckpointId),
    /// Checkpoint `id` was abandoned without a rollback.
    Abort(CheckpointId),
    /// Start-up and rollback to `checkpoint` (None: the beginning): a file
    /// sink is cut back to `len` bytes (0, or the checkpointed length).
    Restore {
        checkpoint: Option<CheckpointId>,
        len: u64,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// A clean stop of the whole cluster: no rollback will follow, so
    /// output not covered by a checkpoint is made final too (Kafka).
    Finish,
    /// These workers left the cluster (shrink); connector sinks tell their
    /// sink connector (WORKERS_LEFT).
    WorkersLeft(Vec<String>),
}

/// Writes a TCP sink: connects (retrying every 250 ms), writes chunks in
/// order, reconnects after a failure. While disconnected it holds up to
/// [`SINK_HOLD_BYTES`] of output and drops (and counts) what comes beyond.
pub async fn run_tcp_sink(
    label: String,
    addr: String,
    rx: mpsc::Receiver<SinkCommand>,
    stats: Arc<IoStats>,
) {
    let mut rx = tcp_sink_chunks(rx);
    let mut held: VecDeque<SinkChunk> = VecDeque::new();
    let mut held_bytes = 0usize;
    let mut warned = false;
    let mut closed = false;
    loop {
        // Connect, taking in (and holding) output meanwhile.
        let mut stream = loop {
            match TcpStream::connect(&addr).await {
                Ok(s) => {
                    if warned {
                        // Beside the connection error it ends (stderr).
                        warn!(place = %label, "connected to {addr}");
                    }
                    let _ = s.set_nodelay(true);
                    break s;
                }
                Err(e) => {
                    if closed && held.is_empty() {
                        return;
                    }
                    if !warned {
                        error!(
                            place = %label,
                            "can't connect to {addr}: {e}; \
                             retrying every 250 ms and holding up to {} MiB of output meanwhile",
                            SINK_HOLD_BYTES >> 20
                        );
                        warned = true;
                    }
                    let deadline = tokio::time::sleep(SINK_RETRY);
                    tokio::pin!(deadline);
                    loop {
                        tokio::select! {
                            _ = &mut deadline => break,
                            chunk = rx.recv(), if !closed => match chunk {
                                Some(c) => hold(&label, &mut held, &mut held_bytes, c, &stats),
                                None => closed = true,
                            },
                        }
                    }
                    if closed {
                        // The worker is stopping: give the sink a last few chances.
                        tokio::time::sleep(SINK_RETRY).await;
                    }
                }
            }
        };
        warned = false;
        // Connected: write what was held, then what arrives.
        let mut failed = false;
        while let Some(c) = held.front() {
            if let Err(e) = stream.write_all(&c.bytes).await {
                error!(place = %label, "write to {addr} failed: {e}; reconnecting");
                failed = true;
                break;
            }
            held_bytes -= c.bytes.len();
            held.pop_front();
        }
        if failed {
            continue;
        }
        while let Some(c) = if closed { None } else { rx.recv().await } {
            if let Err(e) = stream.write_all(&c.bytes).await {
                error!(place = %label, "write to {addr} failed: {e}; reconnecting");
                held_bytes += c.bytes.len();
                held.push_back(c);
                failed = true;
                break;
            }
        }
        if !failed {
            let _ = stream.flush().await;
            let _ = stream.shutdown().await;
            return;
        }
    }
}

/// A TCP sink has nothing to sync or truncate: it is at-least-once. This
/// answers those commands and passes the chunks on.
fn tcp_sink_chunks(mut rx: mpsc::Receiver<SinkCommand>) -> mpsc::Receiver<SinkChunk> {
    let (tx, chunks) = mpsc::channel(4);
    tokio::spawn(async move {
        while let Some(cmd) = rx.recv().await {
            match cmd {
                SinkCommand::Write(c) => {
                    if tx.send(c).await.is_err() {
                        return;
                    }
                }
                SinkCommand::PreCommit(_, reply) | SinkCommand::Restore { reply, .. } => {
                    let _ = reply.send(Ok(()));
                }
                SinkCommand::Records(_)
                | SinkCommand::Commit(_)
                | SinkCommand::Abort(_)
                | SinkCommand::Finish
                | SinkCommand::WorkersLeft(_) => {}
            }
        }
    });
    chunks
}

fn hold(
    label: &str,
    held: &mut VecDeque<SinkChunk>,
    held_bytes: &mut usize,
    c: SinkChunk,
    stats: &IoStats,
) {
    if *held_bytes + c.bytes.len() > SINK_HOLD_BYTES {
        let before = stats.sink_dropped.fetch_add(c.messages, Ordering::Relaxed);
        if before == 0 || (before + c.messages) / 100_000 != before / 100_000 {
            error!(
                place = %label,
                "not connected and {} MiB already held; {} messages dropped so far",
                SINK_HOLD_BYTES >> 20,
                before + c.messages
            );
        }
        return;
    }
    *held_bytes += c.bytes.len();
    held.push_back(c);
}

/// Writes a file sink. The worker starts it with a `Restore` (to 0 on a
/// fresh start, to the checkpointed length after a rollback); chunks are
/// appended in order; `PreCommit` makes them durable.
pub async fn run_file_sink(
    label: String,
    mut file: tokio::fs::File,
    mut rx: mpsc::Receiver<SinkCommand>,
) {
    use tokio::io::AsyncSeekExt;
    let mut failed = false;
    while let Some(cmd) = rx.recv().await {
        match cmd {
            SinkCommand::Write(c) => {
                if let Err(e) = file.write_all(&c.bytes).await {
                    if !failed {
                        error!(place = %label, "write failed: {e}");
                    }
                    failed = true;
                }
            }
            SinkCommand::PreCommit(_, reply) => {
                let r = match (failed, file.sync_data().await) {
                    (true, _) => Err(format!("{label}: an earlier write failed")),
                    (false, r) => r.map_err(|e| format!("{label}: sync failed: {e}")),
                };
                let _ = reply.send(r);
            }
            SinkCommand::Restore { len, reply, .. } => {
                let r = async {
                    file.flush().await?;
                    file.set_len(len).await?;
                    file.seek(std::io::SeekFrom::Start(len)).await?;
                    file.sync_all().await
                }
                .await
                .map_err(|e| format!("{label}: can't truncate to {len} bytes: {e}"));
                failed = r.is_err();
                let _ = reply.send(r);
            }
            SinkCommand::Records(_)
            | SinkCommand::Commit(_)
            | SinkCommand::Abort(_)
            | SinkCommand::Finish
            | SinkCommand::WorkersLeft(_) => {}
        }
    }
    if let Err(e) = file.sync_all().await {
        error!(place = %label, "sync failed: {e}");
    }
}
