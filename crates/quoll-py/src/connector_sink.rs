//! A connector sink on one worker: the socket task that connects to the
//! sink connector process and carries out what
//! [`quoll_core::connector_sink::SinkSession`] decides (handshake, output as
//! MESSAGE frames at their byte offsets, PHASE1/PHASE2 tied to checkpoints,
//! in-doubt transactions resolved on every new connection). Nothing here
//! touches Python.
//!
//! Contract with the executor (the same [`SinkCommand`]s as every sink):
//! - `Write` chunks hold each output as a `u32` BE length and the payload
//!   (the executor frames connector-sink output so that message boundaries
//!   survive batching); the stream offset counts payload bytes only.
//! - `PreCommit(N)` is answered with the sink connector's vote: an abort
//!   vote, no connection, or a connection lost before the vote is an `Err`,
//!   which fails this worker's part of checkpoint N, so N does not commit
//!   anywhere. `Commit(N)`/`Abort(N)` send PHASE2.
//! - The first `Restore` lets the task connect (so that in-doubt
//!   transactions are judged against the restored checkpoint); every later
//!   one (a rollback) puts the offset back and reconnects.
//!
//! While not connected the task retries every [`RETRY`]; once it holds
//! [`crate::sinks::SINK_HOLD_BYTES`] of output it stops taking commands,
//! which makes the executor wait (back-pressure), until the sink is back.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::StreamExt;
use quoll_core::checkpoint::CheckpointId;
use quoll_core::connector::ConnectorCodec;
use quoll_core::connector_sink::{SinkAction, SinkSession};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tracing::{error, warn};

use crate::event::IoStats;
use crate::sinks::{SinkCommand, SINK_HOLD_BYTES};

/// How long the task waits between connection attempts.
const RETRY: Duration = Duration::from_millis(250);
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a clean stop waits for the vote on the last transaction.
const FINISH_TIMEOUT: Duration = Duration::from_secs(5);

type Reply = oneshot::Sender<Result<(), String>>;

struct Task {
    label: String,
    addr: String,
    session: SinkSession,
    reader: Option<FramedRead<OwnedReadHalf, ConnectorCodec>>,
    writer: Option<OwnedWriteHalf>,
    votes: HashMap<CheckpointId, Reply>,
    /// When to try to connect next (None: not before the first restore).
    retry_at: Option<Instant>,
    /// The last problem logged, so that a sink that keeps refusing is
    /// reported once, not every 250 ms.
    last_problem: Option<String>,
    stats: Arc<IoStats>,
}

/// Runs connector sink `label`, connecting to `addr`.
pub async fn run_connector_sink(
    label: String,
    addr: String,
    session: SinkSession,
    mut rx: mpsc::Receiver<SinkCommand>,
    stats: Arc<IoStats>,
) {
    let mut t = Task {
        label,
        addr,
        session,
        reader: None,
        writer: None,
        votes: HashMap::new(),
        retry_at: None,
        last_problem: None,
        stats,
    };
    // The newest checkpoint id this sink has heard of.
    let mut last: CheckpointId = 0;
    let mut closed = false;
    loop {
        let take_commands =
            !closed && (t.session.is_up() || t.session.kept_bytes() < SINK_HOLD_BYTES as u64);
        let retry_at = if t.writer.is_none() { t.retry_at } else { None };
        tokio::select! {
            cmd = rx.recv(), if take_commands => match cmd {
                None => closed = true,
                Some(SinkCommand::Write(chunk)) => {
                    let messages = split(&t.label, chunk.bytes);
                    let a = t.session.write(messages);
                    t.apply(a).await;
                }
                Some(SinkCommand::PreCommit(id, reply)) => {
                    last = last.max(id);
                    t.votes.insert(id, reply);
                    let a = t.session.pre_commit(id);
                    t.apply(a).await;
                }
                Some(SinkCommand::Commit(id)) => {
                    let a = t.session.commit(id);
                    t.apply(a).await;
                }
                Some(SinkCommand::Abort(id)) => {
                    let a = t.session.abort(id);
                    t.apply(a).await;
                }
                Some(SinkCommand::Restore { checkpoint, len, reply }) => {
                    last = checkpoint.unwrap_or(0);
                    let a = t.session.restore(checkpoint, len);
                    t.apply(a).await;
                    t.retry_at.get_or_insert_with(Instant::now);
                    let _ = reply.send(Ok(()));
                }
                Some(SinkCommand::Finish) => {
                    t.finish(last + 1).await;
                    return;
                }
                Some(SinkCommand::WorkersLeft(names)) => {
                    let a = t.session.workers_left(names);
                    t.apply(a).await;
                }
                Some(SinkCommand::Records(_)) => {
                    error!(place = %t.label, "got Kafka records instead of bytes; dropped");
                }
            },
            frame = next_frame(&mut t.reader) => match frame {
                Some(Ok(msg)) => {
                    let a = t.session.on_frame(msg);
                    t.apply(a).await;
                }
                Some(Err(e)) => t.lost(format!("bad frame from the sink connector: {e}")).await,
                None => t.lost("the sink connector closed the connection".into()).await,
            },
            _ = sleep_until(retry_at) => t.connect().await,
        }
        if closed && (t.session.kept_bytes() == 0 || t.retry_at.is_none()) {
            // The worker stopped without a clean shutdown: with resilience
            // what no checkpoint covers is regenerated after the restart.
            return;
        }
    }
}

/// The payloads of a chunk of `u32` BE length-prefixed outputs.
fn split(label: &str, mut bytes: Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let n = bytes.get_u32() as usize;
        if n > bytes.len() {
            break;
        }
        out.push(bytes.split_to(n));
    }
    if !bytes.is_empty() {
        error!(place = %label, "an output chunk was cut short; {} bytes dropped", bytes.len());
    }
    out
}

async fn next_frame(
    reader: &mut Option<FramedRead<OwnedReadHalf, ConnectorCodec>>,
) -> Option<Result<quoll_core::connector::ConnectorMessage, String>> {
    match reader {
        Some(r) => r.next().await.map(|f| f.map_err(|e| e.to_string())),
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Task {
    async fn connect(&mut self) {
        self.retry_at = Some(Instant::now() + RETRY);
        let stream =
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    return self.problem(format!(
                        "can't connect to {}: {e}; retrying every 250 ms",
                        self.addr
                    ))
                }
                Err(_) => {
                    return self.problem(format!("connecting to {} timed out; retrying", self.addr))
                }
            };
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        self.reader = Some(FramedRead::new(r, ConnectorCodec::default()));
        self.writer = Some(w);
        let a = self.session.connected();
        self.apply(a).await;
    }

    fn problem(&mut self, what: String) {
        if self.last_problem.as_deref() != Some(what.as_str()) {
            error!(place = %self.label, "{what}");
            self.last_problem = Some(what);
        }
    }

    async fn lost(&mut self, why: String) {
        self.problem(format!("{why}; reconnecting"));
        self.reader = None;
        self.writer = None;
        let a = self.session.disconnected();
        self.apply(a).await;
    }

    async fn apply(&mut self, actions: Vec<SinkAction>) {
        let mut queue: VecDeque<SinkAction> = actions.into();
        while let Some(a) = queue.pop_front() {
            match a {
                SinkAction::Send(frames) => {
                    let Some(w) = self.writer.as_mut() else {
                        continue;
                    };
                    let mut buf = Vec::new();
                    for f in &frames {
                        if let Err(e) = f.encode_into(&mut buf) {
                            error!(place = %self.label, "can't encode a frame for the sink connector: {e}");
                            self.stats.sink_dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if let Err(e) = w.write_all(&buf).await {
                        self.problem(format!("write to {} failed: {e}; reconnecting", self.addr));
                        self.reader = None;
                        self.writer = None;
                        queue.extend(self.session.disconnected());
                    } else if self.session.is_up() && self.last_problem.take().is_some() {
                        warn!(place = %self.label, "connected to {}", self.addr);
                    }
                }
                SinkAction::Vote { id, vote } => {
                    if let Some(reply) = self.votes.remove(&id) {
                        let vote = vote.map_err(|e| format!("{}: {e}", self.label));
                        let _ = reply.send(vote);
                    }
                }
                SinkAction::Reconnect { reason } => {
                    if let Some(w) = self.writer.as_mut() {
                        let _ = w.shutdown().await;
                    }
                    self.reader = None;
                    self.writer = None;
                    if let Some(r) = reason {
                        self.problem(r);
                        // Give a refusing sink connector a moment.
                        self.retry_at = Some(Instant::now() + RETRY * 4);
                    } else {
                        self.retry_at = Some(Instant::now());
                    }
                }
            }
        }
    }

    /// A clean stop: no rollback follows, so the output since the last
    /// checkpoint is committed under the next id (with resilience).
    async fn finish(&mut self, id: CheckpointId) {
        let deadline = Instant::now() + FINISH_TIMEOUT;
        let (reply, vote) = oneshot::channel();
        self.votes.insert(id, reply);
        let result = tokio::time::timeout_at(deadline, async {
            while !self.session.is_up() {
                if self.writer.is_none() {
                    tokio::time::sleep(RETRY).await;
                    self.connect().await;
                } else if let Some(Ok(msg)) = next_frame(&mut self.reader).await {
                    let a = self.session.on_frame(msg);
                    self.apply(a).await;
                } else {
                    self.lost("the sink connector closed the connection".into())
                        .await;
                }
            }
            let a = self.session.pre_commit(id);
            self.apply(a).await;
            let mut vote = vote;
            loop {
                tokio::select! {
                    v = &mut vote => return v.unwrap_or_else(|_| Err("no vote".into())),
                    f = next_frame(&mut self.reader) => match f {
                        Some(Ok(msg)) => {
                            let a = self.session.on_frame(msg);
                            self.apply(a).await;
                        }
                        _ => self.lost("the sink connector closed the connection".into()).await,
                    },
                }
            }
        })
        .await;
        match result {
            Ok(Ok(())) => {
                let a = self.session.commit(id);
                self.apply(a).await;
                if let Some(w) = self.writer.as_mut() {
                    let _ = w.shutdown().await;
                }
            }
            Ok(Err(e)) => {
                error!(place = %self.label, "the output since the last checkpoint was not committed: {e}")
            }
            Err(_) => error!(
                place = %self.label,
                "the output since the last checkpoint was not committed: no vote from the sink connector within 5 s"
            ),
        }
    }
}
