//! A connector source on one worker: external clients connect, speak
//! connector protocol v3 ([`quoll_core::connector`]) and send MESSAGE
//! frames on streams; the payloads go to the executor with the stream
//! position, so a checkpoint records where each stream stands and a
//! rollback makes the clients resend from there.
//!
//! One task accepts connections and serves the executor's commands
//! ([`ConnectorCommand`]); each connection has its own task, which reads
//! frames with `FramedRead<_, ConnectorCodec>`. A frame that breaks the
//! protocol (a bad length, an unknown type, a malformed body) is answered
//! with ERROR and the connection is closed. The
//! connections of this source share a registry of streams: who owns each
//! stream id, the last message id seen (for deduplication), the last
//! position handed to the executor and the last acknowledged (checkpointed)
//! position, which NOTIFY_ACK returns to a client that opens the stream
//! again.
//!
//! # Contract with the executor
//!
//! - Frames arrive as `Event::Frames { source, frames, position:
//!   Some(SourcePosition::Stream { id, point_of_ref }) }`: `point_of_ref` is
//!   the message id of the last message the event covers. Consecutive
//!   messages of one stream that are already buffered travel in one event.
//!   Messages with an empty payload ("no message") are not forwarded.
//! - With resilience, nothing is acknowledged to a client until
//!   [`ConnectorCommand::Committed`] says a checkpoint covers it.
//! - Every event carries the source epoch of the connection that read it:
//!   [`ConnectorSourceConfig::epoch`] at first, then the `epoch` of the
//!   latest [`ConnectorCommand::Restart`]. The executor drops frames of an
//!   older epoch (those were read before the rollback; the clients resend
//!   them), so the epoch must be nonzero (0 is never filtered).
//! - [`ConnectorCommand::Restart`] (rollback) stops every connection (each
//!   gets RESTART("") and is closed) and resets the registry to the given
//!   positions; connections of the old epoch can no longer change it.
//! - [`ConnectorCommand::Leave`] (this worker leaves the cluster) sends
//!   every client RESTART with another worker's address for this source
//!   and closes them; from then on a client that connects (one that was
//!   reconnecting after a rollback's RESTART) gets the same RESTART at
//!   once: the clients go on there.
//! - A connection the worker ends with RESTART is closed gracefully: the
//!   worker reads and drops what the client still sends (up to
//!   [`CLOSE_DRAIN`]), since closing a socket with unread bytes resets the
//!   connection and the client could lose the RESTART before reading it.
//! - Commands queued before the task starts are applied before the first
//!   client is accepted: a restarted worker can queue `Restart { resume, .. }`
//!   with its recovered positions before spawning the task, so that NOTIFY
//!   answers with the checkpointed positions from the start.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use quoll_core::connector::{self, ConnectorCodec, ConnectorError, ConnectorMessage, NO_POSITION};
use quoll_core::frame::ReadError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::codec::FramedRead;

use crate::event::{frames_per_event, Event, SourcePosition};
use tracing::{error, info};

/// One source-connector source, as the app configured it.
#[derive(Debug, Clone)]
pub struct ConnectorSourceConfig {
    /// The source's name (for messages).
    pub name: String,
    /// The cookie clients must present in HELLO.
    pub cookie: String,
    /// Credits granted at HELLO and topped up to.
    pub max_credits: u32,
    /// Top up once the client's credits fall to this or below.
    pub refill_credits: u32,
    /// Largest frame length (type + body) accepted; a larger one closes the connection.
    pub max_frame_size: u64,
    /// The source epoch events carry until the first `Restart` (nonzero).
    pub epoch: u32,
}

/// What the executor tells a connector source.
#[derive(Debug, Clone)]
pub enum ConnectorCommand {
    /// A checkpoint completed cluster-wide: send each open stream's connection an ACK with these positions (stream id -> last message id covered by the checkpoint), and release streams that were pending close (EOS) and are covered.
    Committed { positions: Vec<(u64, u64)> },
    /// Rollback: send RESTART("") to every client and close them; afterwards streams resume from `resume` (stream id -> point of reference; absent = never seen), and events carry `epoch`.
    Restart { resume: Vec<(u64, u64)>, epoch: u32 },
    /// This worker leaves the cluster: send RESTART(`redirect`) to every
    /// client, close them, and accept no more.
    Leave { redirect: String },
}

/// One stream id as this source knows it.
#[derive(Debug, Clone)]
struct StreamState {
    /// The connection that has it open (or pending close), if any.
    owner: Option<u64>,
    /// EOS received; waiting for a checkpoint to cover it.
    pending_close: bool,
    /// Last message id received (deduplication), [`NO_POSITION`] if none.
    last_seen: u64,
    /// Last message id handed to the executor, [`NO_POSITION`] if none.
    forwarded: u64,
    /// Last position acknowledged (checkpointed); NOTIFY_ACK resumes from it.
    acked: u64,
}

impl StreamState {
    fn at(pos: u64) -> StreamState {
        StreamState {
            owner: None,
            pending_close: false,
            last_seen: pos,
            forwarded: pos,
            acked: pos,
        }
    }

    /// True once everything handed to the executor is acknowledged.
    fn covered(&self) -> bool {
        self.forwarded == NO_POSITION || (self.acked != NO_POSITION && self.acked >= self.forwarded)
    }
}

/// What the source task tells one connection.
enum Ctl {
    /// Send an ACK with these positions (plus a credit top-up).
    Ack(Vec<(u64, u64)>),
    /// Rollback or leave: send RESTART with this address ("" for the same
    /// one) and close.
    Restart(String),
}

#[derive(Default)]
struct Registry {
    /// Bumped at every rollback; a connection of an older generation stops.
    generation: u64,
    /// The source epoch new connections' events carry.
    epoch: u32,
    streams: HashMap<u64, StreamState>,
    conns: HashMap<u64, mpsc::UnboundedSender<Ctl>>,
}

type Shared = Arc<Mutex<Registry>>;

fn lock(reg: &Shared) -> MutexGuard<'_, Registry> {
    reg.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves one connector source: accepts clients on `listener`, forwards
/// their messages to `tx` and obeys `commands` (see the module docs).
/// Ends when the executor's inbox closes.
pub async fn run_connector_source(
    source: usize,
    cfg: ConnectorSourceConfig,
    listener: TcpListener,
    tx: mpsc::Sender<Event>,
    mut commands: mpsc::Receiver<ConnectorCommand>,
    resilient: bool,
) {
    let cfg = Arc::new(cfg);
    let reg: Shared = Arc::new(Mutex::new(Registry {
        epoch: cfg.epoch,
        ..Registry::default()
    }));
    let mut tasks: HashMap<u64, JoinHandle<()>> = HashMap::new();
    let mut next_conn: u64 = 0;
    // Where new clients are sent once this worker leaves the cluster.
    let mut redirect: Option<String> = None;
    // Commands queued before the start (a recovered worker's Restart) come first.
    while let Ok(cmd) = commands.try_recv() {
        if let Some(to) = handle_command(cmd, &reg, &cfg.name) {
            redirect = Some(to);
        }
    }
    let mut commands_open = true;
    loop {
        tokio::select! {
            biased;
            _ = tx.closed() => break,
            cmd = commands.recv(), if commands_open => match cmd {
                Some(cmd) => {
                    if let Some(to) = handle_command(cmd, &reg, &cfg.name) {
                        redirect = Some(to);
                    }
                }
                None => commands_open = false,
            },
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) if redirect.is_some() => {
                    tokio::spawn(send_away(stream, redirect.clone().unwrap_or_default()));
                }
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let (read, write) = stream.into_split();
                    tasks.retain(|_, h| !h.is_finished());
                    let id = next_conn;
                    next_conn += 1;
                    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
                    let (generation, epoch) = {
                        let mut r = lock(&reg);
                        r.conns.insert(id, ctl_tx);
                        (r.generation, r.epoch)
                    };
                    let conn = Conn {
                        id,
                        generation,
                        epoch,
                        source,
                        place: format!("source '{}', connection from {peer}", cfg.name),
                        cfg: cfg.clone(),
                        reg: reg.clone(),
                        tx: tx.clone(),
                        ctl: ctl_rx,
                        write,
                        resilient,
                        greeted: false,
                        credits: 0,
                        batch: None,
                        out: Vec::new(),
                        restart_to: String::new(),
                    };
                    tasks.insert(id, tokio::spawn(conn.run(read)));
                }
                Err(e) => {
                    error!(place = %format!("source '{}'", cfg.name), "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    for (_, h) in tasks {
        h.abort();
    }
}

/// How long a connection ended with RESTART is read (and what comes
/// dropped) before it is closed: long enough for a client to read the
/// RESTART and close its end.
pub const CLOSE_DRAIN: Duration = Duration::from_secs(2);

/// A client that connected after this worker began to leave: RESTART to
/// where its source goes on, then a graceful close.
async fn send_away(stream: TcpStream, to: String) {
    let (read, mut write) = stream.into_split();
    let mut out = Vec::new();
    if (ConnectorMessage::Restart { address: to })
        .encode_into(&mut out)
        .is_ok()
    {
        let _ = write.write_all(&out).await;
    }
    let _ = write.shutdown().await;
    drain(read).await;
}

/// Reads and drops what the client still sends, until it closes or
/// [`CLOSE_DRAIN`] passes (see the module docs).
async fn drain(mut read: impl AsyncRead + Unpin) {
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(CLOSE_DRAIN, async {
        while matches!(read.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Carries out `cmd`; once this worker leaves, the address new clients
/// are sent to.
fn handle_command(cmd: ConnectorCommand, reg: &Shared, name: &str) -> Option<String> {
    match cmd {
        ConnectorCommand::Leave { redirect } => {
            info!(
                place = %format!("source '{name}'"),
                "this worker leaves the cluster: its connector clients are sent to {redirect}, and \
                 so is any client that connects until it stops"
            );
            for ctl in std::mem::take(&mut lock(reg).conns).values() {
                let _ = ctl.send(Ctl::Restart(redirect.clone()));
            }
            return Some(redirect);
        }
        ConnectorCommand::Committed { positions } => committed(reg, positions),
        ConnectorCommand::Restart { resume, epoch } => {
            let conns = {
                let mut r = lock(reg);
                r.generation += 1;
                r.epoch = epoch;
                r.streams.clear();
                for (id, por) in resume {
                    r.streams.insert(id, StreamState::at(por));
                }
                std::mem::take(&mut r.conns)
            };
            // Connections of the old generation stop at once; whatever they
            // still hand over carries the old epoch and is dropped.
            for ctl in conns.values() {
                let _ = ctl.send(Ctl::Restart(String::new()));
            }
        }
    }
    None
}

/// A checkpoint completed: record the positions, acknowledge open streams
/// and release covered streams that are pending close.
fn committed(reg: &Shared, positions: Vec<(u64, u64)>) {
    let mut r = lock(reg);
    let mut per_conn: HashMap<u64, Vec<(u64, u64)>> = HashMap::new();
    for (id, pos) in positions {
        if pos == NO_POSITION {
            continue;
        }
        let s = r
            .streams
            .entry(id)
            .or_insert_with(|| StreamState::at(NO_POSITION));
        s.acked = pos;
        if s.last_seen == NO_POSITION || s.last_seen < pos {
            s.last_seen = pos;
        }
        if s.forwarded == NO_POSITION || s.forwarded < pos {
            s.forwarded = pos;
        }
        if let Some(owner) = s.owner {
            per_conn.entry(owner).or_default().push((id, pos));
        }
    }
    for (&id, s) in r.streams.iter_mut() {
        if !s.pending_close || !s.covered() {
            continue;
        }
        let Some(owner) = s.owner.take() else {
            continue;
        };
        s.pending_close = false;
        if s.last_seen != NO_POSITION {
            // The final position (beyond the checkpoint's only by messages
            // with an empty payload, which need no replay).
            s.acked = s.last_seen;
            let acks = per_conn.entry(owner).or_default();
            match acks.iter_mut().find(|(i, _)| *i == id) {
                Some(a) => a.1 = s.last_seen,
                None => acks.push((id, s.last_seen)),
            }
        }
    }
    for (conn, acks) in per_conn {
        if acks.is_empty() {
            continue;
        }
        if let Some(ctl) = r.conns.get(&conn) {
            let _ = ctl.send(Ctl::Ack(acks));
        }
    }
}

/// How processing continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    /// Close the connection (after writing what is queued, e.g. an ERROR).
    Close,
    /// Rollback: RESTART and close.
    Restart,
    /// The executor is gone.
    Stop,
}

/// Consecutive messages of one stream, not yet handed over.
struct Batch {
    stream_id: u64,
    frames: Vec<Bytes>,
    /// The MESSAGE key of each frame (empty: none).
    keys: Vec<Bytes>,
    last: u64,
}

/// A MESSAGE's fate, decided under the registry lock.
enum Verdict {
    Take,
    Duplicate,
    Unregistered,
    Stale,
}

struct Conn {
    id: u64,
    generation: u64,
    /// The source epoch this connection's events carry.
    epoch: u32,
    source: usize,
    place: String,
    cfg: Arc<ConnectorSourceConfig>,
    reg: Shared,
    tx: mpsc::Sender<Event>,
    ctl: mpsc::UnboundedReceiver<Ctl>,
    write: OwnedWriteHalf,
    resilient: bool,
    /// Whether HELLO was accepted.
    greeted: bool,
    /// The worker's count of the client's credits.
    credits: i64,
    batch: Option<Batch>,
    /// Frames to write to the client.
    out: Vec<u8>,
    /// Where RESTART sends the client ("": the same address).
    restart_to: String,
}

/// A connection's incoming frames.
type Frames = FramedRead<OwnedReadHalf, ConnectorCodec>;
/// One read from [`Frames`]: a message, an error, or `None` at the end.
type Incoming = Option<Result<ConnectorMessage, ReadError<ConnectorError>>>;

impl Conn {
    async fn run(mut self, read: OwnedReadHalf) {
        let max = self.cfg.max_frame_size.clamp(1, u32::MAX as u64) as u32;
        let mut frames =
            FramedRead::with_capacity(read, ConnectorCodec::with_max_frame_size(max), 64 << 10);
        let flow = loop {
            tokio::select! {
                incoming = frames.next() => {
                    let flow = self.process(incoming, &mut frames).await;
                    if flow != Flow::Continue {
                        break flow;
                    }
                }
                c = self.ctl.recv() => {
                    let flow = self.on_ctl(c).await;
                    if flow != Flow::Continue {
                        break flow;
                    }
                }
            }
        };
        if flow == Flow::Restart {
            let address = std::mem::take(&mut self.restart_to);
            self.queue(&ConnectorMessage::Restart { address });
        }
        if flow != Flow::Stop {
            let _ = self.write_out().await;
            let _ = self.write.shutdown().await;
        }
        self.release();
        if flow == Flow::Restart {
            drain(frames.into_inner()).await;
        }
    }

    /// Handles a message from the source task.
    async fn on_ctl(&mut self, c: Option<Ctl>) -> Flow {
        match c {
            Some(Ctl::Ack(acks)) => {
                self.queue_ack(acks);
                if self.write_out().await {
                    Flow::Continue
                } else {
                    Flow::Close
                }
            }
            Some(Ctl::Restart(address)) => {
                self.restart_to = address;
                Flow::Restart
            }
            None => Flow::Restart,
        }
    }

    /// Handles `first` and every frame already available after it (up to
    /// an event's worth), forwards the batch and writes the replies.
    async fn process(&mut self, first: Incoming, frames: &mut Frames) -> Flow {
        let mut flow = self.on_incoming(first).await;
        let mut taken = 1;
        while flow == Flow::Continue && taken < frames_per_event() {
            let Some(incoming) = frames.next().now_or_never() else {
                break;
            };
            flow = self.on_incoming(incoming).await;
            taken += 1;
        }
        if flow == Flow::Continue || flow == Flow::Close {
            // Hand over what was accepted before an error too.
            let f = self.flush().await;
            if f != Flow::Continue {
                flow = f;
            }
        }
        if flow == Flow::Continue && !self.write_out().await {
            flow = Flow::Close;
        }
        flow
    }

    /// Handles one read from the client.
    async fn on_incoming(&mut self, incoming: Incoming) -> Flow {
        match incoming {
            Some(Ok(msg)) => self.on_message(msg).await,
            None => Flow::Close,
            Some(Err(ReadError::Truncated { buffered })) => {
                error!(
                    place = %self.place,
                    "the client closed the connection in the middle of a frame ({buffered} bytes); that frame is dropped"
                );
                Flow::Close
            }
            Some(Err(ReadError::Io(e))) => {
                error!(place = %self.place, "read failed: {e}; connection closed");
                Flow::Close
            }
            Some(Err(ReadError::Protocol(e))) => {
                let what = match e.malformed_frame() {
                    Some(frame) => format!("malformed {frame}: {e}"),
                    None => e.to_string(),
                };
                self.fail(&what)
            }
        }
    }

    /// Queues ERROR "Invalid message: ..." and closes.
    fn fail(&mut self, what: &str) -> Flow {
        self.reject(connector::invalid_message_error(what))
    }

    /// Queues ERROR with this text and closes.
    fn reject(&mut self, text: String) -> Flow {
        error!(place = %self.place, "{text}; connection closed");
        self.queue(&ConnectorMessage::Error { message: text });
        Flow::Close
    }

    async fn on_message(&mut self, msg: ConnectorMessage) -> Flow {
        if !self.greeted {
            return match msg {
                ConnectorMessage::Hello {
                    version, cookie, ..
                } => {
                    if version != connector::PROTOCOL_VERSION {
                        return self.reject(connector::unknown_version_error(&version));
                    }
                    if cookie != self.cfg.cookie {
                        return self.reject(connector::bad_cookie_error(&cookie, &self.cfg.cookie));
                    }
                    self.greeted = true;
                    self.credits = self.cfg.max_credits as i64;
                    self.queue(&ConnectorMessage::Ok {
                        initial_credits: self.cfg.max_credits,
                    });
                    Flow::Continue
                }
                ConnectorMessage::Error { message } => self.client_error(&message),
                other => self.fail(&format!("{} before HELLO", other.frame_type())),
            };
        }
        match msg {
            ConnectorMessage::Message {
                stream_id,
                message_id,
                key,
                payload,
                ..
            } => {
                let flow = self.on_data(stream_id, message_id, key, payload).await;
                if flow == Flow::Continue {
                    self.spend();
                }
                flow
            }
            ConnectorMessage::Notify {
                stream_id,
                point_of_ref,
                ..
            } => {
                let flow = self.on_notify(stream_id, point_of_ref);
                if flow == Flow::Continue {
                    self.spend();
                }
                flow
            }
            ConnectorMessage::Eos { stream_id } => self.on_eos(stream_id).await,
            ConnectorMessage::Error { message } => self.client_error(&message),
            ConnectorMessage::Hello { .. } => self.fail("HELLO after the handshake"),
            other @ (ConnectorMessage::Ok { .. }
            | ConnectorMessage::NotifyAck { .. }
            | ConnectorMessage::Ack { .. }
            | ConnectorMessage::Restart { .. }) => {
                self.fail(&format!("{} from a client", other.frame_type()))
            }
        }
    }

    fn client_error(&mut self, message: &str) -> Flow {
        error!(place = %self.place, "the client sent ERROR \"{message}\"; connection closed");
        Flow::Close
    }

    fn on_notify(&mut self, stream_id: u64, asked: u64) -> Flow {
        let me = self.id;
        let reply = {
            let mut r = lock(&self.reg);
            if r.generation != self.generation {
                return Flow::Restart;
            }
            // A stream new here starts where the client says the cluster
            // acknowledged it: it may come from another worker (a leaving
            // one sent it here), whose acknowledgements followed commits.
            let s = r
                .streams
                .entry(stream_id)
                .or_insert_with(|| StreamState::at(asked));
            if s.owner.is_some() {
                ConnectorMessage::NotifyAck {
                    success: false,
                    stream_id,
                    point_of_ref: asked,
                }
            } else {
                s.owner = Some(me);
                s.pending_close = false;
                ConnectorMessage::NotifyAck {
                    success: true,
                    stream_id,
                    point_of_ref: s.acked,
                }
            }
        };
        self.queue(&reply);
        Flow::Continue
    }

    async fn on_data(
        &mut self,
        stream_id: u64,
        message_id: u64,
        key: Bytes,
        payload: Bytes,
    ) -> Flow {
        let me = self.id;
        let verdict = {
            let mut r = lock(&self.reg);
            if r.generation != self.generation {
                Verdict::Stale
            } else {
                match r.streams.get_mut(&stream_id) {
                    Some(s) if s.owner == Some(me) && !s.pending_close => {
                        if s.last_seen != NO_POSITION && message_id <= s.last_seen {
                            Verdict::Duplicate
                        } else {
                            s.last_seen = message_id;
                            Verdict::Take
                        }
                    }
                    _ => Verdict::Unregistered,
                }
            }
        };
        match verdict {
            Verdict::Stale => Flow::Restart,
            Verdict::Unregistered => self.reject(connector::bad_stream_error(stream_id)),
            Verdict::Duplicate => Flow::Continue,
            Verdict::Take => {
                if payload.is_empty() {
                    // "No message": nothing to hand over, but a batch of
                    // this stream now ends at this id.
                    if let Some(b) = self.batch.as_mut().filter(|b| b.stream_id == stream_id) {
                        b.last = message_id;
                    }
                    return Flow::Continue;
                }
                if self.batch.as_ref().is_some_and(|b| {
                    b.stream_id != stream_id || b.frames.len() >= frames_per_event()
                }) {
                    let flow = self.flush().await;
                    if flow != Flow::Continue {
                        return flow;
                    }
                }
                let b = self.batch.get_or_insert_with(|| Batch {
                    stream_id,
                    frames: Vec::new(),
                    keys: Vec::new(),
                    last: message_id,
                });
                b.frames.push(payload);
                b.keys.push(key);
                b.last = message_id;
                Flow::Continue
            }
        }
    }

    async fn on_eos(&mut self, stream_id: u64) -> Flow {
        let flow = self.flush().await;
        if flow != Flow::Continue {
            return flow;
        }
        let me = self.id;
        let mut reply = None;
        let owned = {
            let mut r = lock(&self.reg);
            if r.generation != self.generation {
                return Flow::Restart;
            }
            match r.streams.get_mut(&stream_id) {
                Some(s) if s.owner == Some(me) && !s.pending_close => {
                    if self.resilient {
                        s.pending_close = true;
                    } else {
                        s.owner = None;
                        if s.last_seen != NO_POSITION {
                            s.acked = s.last_seen;
                        }
                        reply = Some(ConnectorMessage::Ack {
                            credits: 0,
                            acks: vec![(stream_id, s.last_seen)],
                        });
                    }
                    true
                }
                _ => false,
            }
        };
        if !owned {
            return self.reject(connector::bad_stream_error(stream_id));
        }
        if let Some(m) = reply {
            self.queue(&m);
        }
        Flow::Continue
    }

    /// Counts one credit spent; tops the client up when it runs low.
    fn spend(&mut self) {
        self.credits -= 1;
        if self.credits <= self.cfg.refill_credits as i64 {
            self.queue_ack(Vec::new());
        }
    }

    /// Queues an ACK with these positions, a credit top-up and (without
    /// resilience) the positions of every stream this connection owns.
    fn queue_ack(&mut self, mut acks: Vec<(u64, u64)>) {
        if !self.resilient {
            let me = self.id;
            let mut r = lock(&self.reg);
            if r.generation == self.generation {
                for (&id, s) in r.streams.iter_mut() {
                    if s.owner == Some(me) && s.last_seen != NO_POSITION && s.last_seen != s.acked {
                        s.acked = s.last_seen;
                        acks.push((id, s.last_seen));
                    }
                }
            }
        }
        let max = self.cfg.max_credits as i64;
        let credits = if self.greeted {
            (max - self.credits).clamp(0, u32::MAX as i64) as u32
        } else {
            0
        };
        if self.greeted {
            self.credits = max;
        }
        self.queue(&ConnectorMessage::Ack { credits, acks });
    }

    /// Hands the pending batch to the executor.
    async fn flush(&mut self) -> Flow {
        let Some(b) = self.batch.take() else {
            return Flow::Continue;
        };
        if b.frames.is_empty() {
            return Flow::Continue;
        }
        {
            let mut r = lock(&self.reg);
            if r.generation != self.generation {
                return Flow::Restart;
            }
            if let Some(s) = r.streams.get_mut(&b.stream_id) {
                s.forwarded = b.last;
            }
        }
        let ev = Event::Frames {
            source: self.source,
            frames: b.frames,
            keys: b.keys,
            position: Some(SourcePosition::Stream {
                id: b.stream_id,
                point_of_ref: b.last,
            }),
            epoch: self.epoch,
        };
        // Wait for room in the executor's inbox, still obeying commands.
        let tx = self.tx.clone();
        loop {
            tokio::select! {
                permit = tx.reserve() => {
                    return match permit {
                        Ok(p) => {
                            p.send(ev);
                            Flow::Continue
                        }
                        Err(_) => Flow::Stop,
                    };
                }
                c = self.ctl.recv() => {
                    let flow = self.on_ctl(c).await;
                    if flow != Flow::Continue {
                        return flow;
                    }
                }
            }
        }
    }

    fn queue(&mut self, m: &ConnectorMessage) {
        if let Err(e) = m.encode_into(&mut self.out) {
            error!(place = %self.place, "can't encode {}: {e}", m.frame_type());
        }
    }

    /// Writes the queued frames; false if the connection failed.
    async fn write_out(&mut self) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let r = self.write.write_all(&self.out).await;
        self.out.clear();
        match r {
            Ok(()) => true,
            Err(e) => {
                error!(place = %self.place, "write failed: {e}; connection closed");
                false
            }
        }
    }

    /// The connection ended: its streams are free again.
    fn release(&mut self) {
        let me = self.id;
        let mut r = lock(&self.reg);
        if r.generation != self.generation {
            return;
        }
        r.conns.remove(&me);
        for s in r.streams.values_mut() {
            if s.owner == Some(me) {
                s.owner = None;
                s.pending_close = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quoll_core::connector::ConnectorMessage as M;
    use std::time::Instant;
    use tokio::net::TcpStream;

    const WAIT: Duration = Duration::from_secs(10);

    struct Harness {
        addr: String,
        cmd: mpsc::Sender<ConnectorCommand>,
        rx: mpsc::Receiver<Event>,
    }

    async fn start(resilient: bool, max_credits: u32, refill_credits: u32) -> Harness {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = mpsc::channel(64);
        let (cmd, crx) = mpsc::channel(16);
        let cfg = ConnectorSourceConfig {
            name: "conn".into(),
            cookie: "c".into(),
            max_credits,
            refill_credits,
            max_frame_size: 1 << 20,
            epoch: 1,
        };
        tokio::spawn(run_connector_source(3, cfg, listener, tx, crx, resilient));
        Harness { addr, cmd, rx }
    }

    impl Harness {
        /// The next event: (payloads, stream, position, epoch).
        async fn event(&mut self) -> (Vec<String>, u64, u64, u32) {
            let ev = tokio::time::timeout(WAIT, self.rx.recv())
                .await
                .expect("no event")
                .expect("inbox closed");
            match ev {
                Event::Frames {
                    source,
                    frames,
                    position: Some(SourcePosition::Stream { id, point_of_ref }),
                    epoch,
                    ..
                } => {
                    assert_eq!(source, 3);
                    let p = frames
                        .iter()
                        .map(|f| String::from_utf8(f.to_vec()).unwrap())
                        .collect();
                    (p, id, point_of_ref, epoch)
                }
                _ => panic!("unexpected event"),
            }
        }
    }

    struct Raw {
        frames: FramedRead<TcpStream, ConnectorCodec>,
    }

    impl Raw {
        async fn connect(addr: &str) -> Raw {
            let s = TcpStream::connect(addr).await.unwrap();
            Raw {
                frames: FramedRead::new(s, ConnectorCodec::default()),
            }
        }

        async fn write_raw(&mut self, bytes: &[u8]) {
            self.frames.get_mut().write_all(bytes).await.unwrap();
        }

        async fn send(&mut self, m: M) {
            self.write_raw(&m.encode().unwrap()).await;
        }

        /// The next frame; `None` once the worker closed (or reset) the connection.
        async fn recv(&mut self) -> Option<M> {
            match tokio::time::timeout(WAIT, self.frames.next())
                .await
                .expect("no reply")
            {
                Some(Ok(m)) => Some(m),
                None | Some(Err(ReadError::Io(_))) => None,
                Some(Err(e)) => panic!("the worker sent a bad frame: {e}"),
            }
        }

        async fn hello(&mut self, version: &str, cookie: &str) -> Option<M> {
            self.send(M::Hello {
                version: version.into(),
                cookie: cookie.into(),
                program_name: "p".into(),
                instance_name: "i".into(),
            })
            .await;
            self.recv().await
        }

        async fn notify(&mut self, stream_id: u64) -> Option<M> {
            self.send(M::Notify {
                stream_id,
                stream_name: format!("s{stream_id}"),
                point_of_ref: NO_POSITION,
            })
            .await;
            self.recv().await
        }

        async fn msg(&mut self, stream_id: u64, message_id: u64, payload: &str) {
            self.send(M::Message {
                stream_id,
                message_id,
                event_time: 0,
                key: Bytes::new(),
                payload: Bytes::from(payload.to_string()),
            })
            .await;
        }
    }

    fn err(text: &str) -> Option<M> {
        Some(M::error(text))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn handshake_errors() {
        let h = start(false, 10, 2).await;
        let mut c = Raw::connect(&h.addr).await;
        assert_eq!(
            c.hello("9.9", "c").await,
            err("Unknown protocol version: 9.9")
        );
        assert_eq!(c.recv().await, None);
        let mut c = Raw::connect(&h.addr).await;
        assert_eq!(
            c.hello("0.0.1", "nope").await,
            err("Bad cookie: nope, wanted: c")
        );
        assert_eq!(c.recv().await, None);
        let mut c = Raw::connect(&h.addr).await;
        assert_eq!(
            c.notify(1).await,
            err("Invalid message: NOTIFY before HELLO")
        );
        assert_eq!(c.recv().await, None);
        let mut c = Raw::connect(&h.addr).await;
        assert_eq!(
            c.hello("0.0.1", "c").await,
            Some(M::Ok {
                initial_credits: 10
            })
        );
        assert_eq!(
            c.hello("0.0.1", "c").await,
            err("Invalid message: HELLO after the handshake")
        );
        assert_eq!(c.recv().await, None);
        let mut c = Raw::connect(&h.addr).await;
        c.hello("0.0.1", "c").await;
        c.send(M::Ack {
            credits: 1,
            acks: vec![],
        })
        .await;
        assert_eq!(c.recv().await, err("Invalid message: ACK from a client"));
        let mut c = Raw::connect(&h.addr).await;
        c.hello("0.0.1", "c").await;
        c.write_raw(&[0, 0, 0, 2, 42, 0]).await;
        assert_eq!(
            c.recv().await,
            err("Invalid message: unknown connector frame type 42")
        );
        let mut c = Raw::connect(&h.addr).await;
        c.hello("0.0.1", "c").await;
        c.write_raw(&[0, 0x20, 0, 0, 5]).await;
        let Some(M::Error { message }) = c.recv().await else {
            panic!()
        };
        assert!(
            message.starts_with("Invalid message: connector frame length 2097152 exceeds"),
            "{message}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_credits_dedup_and_eos_without_resilience() {
        let mut h = start(false, 4, 1).await;
        let mut a = Raw::connect(&h.addr).await;
        assert_eq!(
            a.hello("0.0.1", "c").await,
            Some(M::Ok { initial_credits: 4 })
        );
        assert_eq!(
            a.notify(1).await,
            Some(M::NotifyAck {
                success: true,
                stream_id: 1,
                point_of_ref: NO_POSITION
            })
        );
        a.msg(1, 1, "a").await;
        a.msg(1, 1, "dup").await;
        // Count 4 - 3 = 1 <= refill: a top-up of 3 with the position seen.
        assert_eq!(
            a.recv().await,
            Some(M::Ack {
                credits: 3,
                acks: vec![(1, 1)]
            })
        );
        assert_eq!(h.event().await, (vec!["a".to_string()], 1, 1, 1));
        // Another connection can't take stream 1, can open stream 2, and
        // is closed for a message on a stream it does not own.
        let mut b = Raw::connect(&h.addr).await;
        b.hello("0.0.1", "c").await;
        assert_eq!(
            b.notify(1).await,
            Some(M::NotifyAck {
                success: false,
                stream_id: 1,
                point_of_ref: NO_POSITION
            })
        );
        assert_eq!(
            b.notify(2).await,
            Some(M::NotifyAck {
                success: true,
                stream_id: 2,
                point_of_ref: NO_POSITION
            })
        );
        b.msg(1, 5, "x").await;
        assert_eq!(b.recv().await, err("Bad/unregistered stream_id 1"));
        assert_eq!(b.recv().await, None);
        // Empty payloads advance the position without a frame; a batch
        // ends at the last id.
        a.write_raw(
            &[
                M::Message {
                    stream_id: 1,
                    message_id: 2,
                    event_time: 0,
                    key: Bytes::new(),
                    payload: Bytes::from_static(b"b"),
                }
                .encode()
                .unwrap(),
                M::Message {
                    stream_id: 1,
                    message_id: 3,
                    event_time: 0,
                    key: Bytes::new(),
                    payload: Bytes::new(),
                }
                .encode()
                .unwrap(),
            ]
            .concat(),
        )
        .await;
        a.send(M::Eos { stream_id: 1 }).await;
        let mut acks = Vec::new();
        loop {
            match a.recv().await {
                Some(M::Ack {
                    credits: 0,
                    acks: fin,
                }) if fin == vec![(1, 3)] => break,
                Some(M::Ack { acks: more, .. }) => acks.extend(more),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(h.event().await, (vec!["b".to_string()], 1, 3, 1));
        // Released: a new connection resumes after 3 and duplicates are dropped.
        let mut c = Raw::connect(&h.addr).await;
        c.hello("0.0.1", "c").await;
        assert_eq!(
            c.notify(1).await,
            Some(M::NotifyAck {
                success: true,
                stream_id: 1,
                point_of_ref: 3
            })
        );
        c.msg(1, 2, "old").await;
        c.msg(1, 4, "d").await;
        assert_eq!(h.event().await, (vec!["d".to_string()], 1, 4, 1));
        // Count 4 - 3 = 1: a top-up, acknowledging 4 at once (no resilience).
        assert_eq!(
            c.recv().await,
            Some(M::Ack {
                credits: 3,
                acks: vec![(1, 4)]
            })
        );
        // Stream 2 was released when its connection closed.
        assert_eq!(
            c.notify(2).await,
            Some(M::NotifyAck {
                success: true,
                stream_id: 2,
                point_of_ref: NO_POSITION
            })
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn eos_with_resilience_waits_for_a_covering_checkpoint() {
        let mut h = start(true, 10, 2).await;
        let mut a = Raw::connect(&h.addr).await;
        a.hello("0.0.1", "c").await;
        a.notify(4).await;
        a.msg(4, 10, "x").await;
        a.msg(4, 11, "y").await;
        a.send(M::Eos { stream_id: 4 }).await;
        let mut got = Vec::new();
        while got.len() < 2 {
            let (p, ..) = h.event().await;
            got.extend(p);
        }
        assert_eq!(got, vec!["x", "y"]);
        // A checkpoint that covers only 10 acknowledges nothing final.
        h.cmd
            .send(ConnectorCommand::Committed {
                positions: vec![(4, 10)],
            })
            .await
            .unwrap();
        assert_eq!(
            a.recv().await,
            Some(M::Ack {
                credits: 3,
                acks: vec![(4, 10)]
            })
        );
        let mut b = Raw::connect(&h.addr).await;
        b.hello("0.0.1", "c").await;
        assert!(matches!(
            b.notify(4).await,
            Some(M::NotifyAck { success: false, .. })
        ));
        h.cmd
            .send(ConnectorCommand::Committed {
                positions: vec![(4, 11)],
            })
            .await
            .unwrap();
        assert_eq!(
            a.recv().await,
            Some(M::Ack {
                credits: 0,
                acks: vec![(4, 11)]
            })
        );
        assert_eq!(
            b.notify(4).await,
            Some(M::NotifyAck {
                success: true,
                stream_id: 4,
                point_of_ref: 11
            })
        );
    }

    fn temp_file(name: &str, lines: usize) -> std::path::PathBuf {
        let path =
            std::env::temp_dir().join(format!("quoll-connector-{}-{name}.txt", std::process::id()));
        let text: String = (1..=lines).map(|i| format!("line-{i}\n")).collect();
        std::fs::write(&path, text).unwrap();
        path
    }

    fn send_tool(
        addr: &str,
        file: &std::path::Path,
        extra: &[&str],
    ) -> tokio::task::JoinHandle<(i32, String, String)> {
        let mut args: Vec<String> = vec![
            "send".into(),
            "--connector".into(),
            "--host".into(),
            addr.into(),
            "--file".into(),
            file.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        tokio::task::spawn_blocking(move || {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let code = quoll_tools::run_with_io(args, &mut out, &mut err);
            (
                code,
                String::from_utf8_lossy(&out).into_owned(),
                String::from_utf8_lossy(&err).into_owned(),
            )
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leaving_worker_sends_every_client_away_even_one_that_connects_later() {
        let h = start(true, 10, 2).await;
        let mut before = Raw::connect(&h.addr).await;
        assert_eq!(
            before.hello("0.0.1", "c").await,
            Some(M::Ok {
                initial_credits: 10
            })
        );
        h.cmd
            .send(ConnectorCommand::Leave {
                redirect: "127.0.0.1:9".into(),
            })
            .await
            .unwrap();
        let away = Some(M::Restart {
            address: "127.0.0.1:9".into(),
        });
        assert_eq!(before.recv().await, away);
        // The client writes on while it has not read the RESTART: the worker
        // keeps reading, so the RESTART is not lost to a reset.
        before.msg(1, 1, "late").await;
        assert_eq!(before.recv().await, None);
        // A client reconnecting after the leave began is sent away too.
        let mut after = Raw::connect(&h.addr).await;
        assert_eq!(after.hello("0.0.1", "c").await, away);
        assert_eq!(after.recv().await, None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quoll_send_without_resilience() {
        let mut h = start(false, 67, 10).await;
        let file = temp_file("plain", 1000);
        let client = send_tool(&h.addr, &file, &["--cookie", "c"]);
        let mut got = Vec::new();
        let mut last = 0;
        while got.len() < 1000 {
            let (p, id, pos, epoch) = h.event().await;
            assert_eq!((id, epoch), (1, 1));
            assert!(pos > last);
            last = pos;
            got.extend(p);
        }
        let (code, out, err) = client.await.unwrap();
        let _ = std::fs::remove_file(&file);
        assert_eq!(code, 0, "{out}{err}");
        assert_eq!(
            got,
            (1..=1000).map(|i| format!("line-{i}")).collect::<Vec<_>>()
        );
        assert!(
            out.contains("sent 1000 messages") && out.contains("(0 resent"),
            "{out}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quoll_send_with_checkpoints_and_a_rollback() {
        let mut h = start(true, 67, 10).await;
        let n = 400;
        let file = temp_file("resilient", n);
        let client = send_tool(
            &h.addr,
            &file,
            &[
                "--cookie",
                "c",
                "--rate",
                "2000",
                "--reconnect-timeout",
                "10",
            ],
        );
        // A fake executor: processes events of the current epoch, commits
        // every 20 ms, rolls back once after 100 messages.
        let mut processed: Vec<(u64, String)> = Vec::new();
        let mut epoch = 1;
        let mut committed = NO_POSITION;
        let mut rolled_back = false;
        let mut lost = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let started = Instant::now();
        while processed.len() < n || processed.last().map(|p| p.0) != Some(committed) {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "stuck at {} messages",
                processed.len()
            );
            tokio::select! {
                ev = h.rx.recv() => {
                    let Some(Event::Frames { frames, position: Some(SourcePosition::Stream { point_of_ref, .. }), epoch: e, .. }) = ev else { panic!() };
                    if e != epoch {
                        continue;
                    }
                    let first = point_of_ref + 1 - frames.len() as u64;
                    for (i, f) in frames.iter().enumerate() {
                        processed.push((first + i as u64, String::from_utf8(f.to_vec()).unwrap()));
                    }
                    if !rolled_back && processed.len() >= 100 {
                        // Lose what came after the last commit.
                        rolled_back = true;
                        lost = processed.len() - if committed == NO_POSITION { 0 } else { committed as usize };
                        processed.truncate(processed.len() - lost);
                        epoch = 2;
                        let resume = if committed == NO_POSITION { vec![] } else { vec![(1, committed)] };
                        h.cmd.send(ConnectorCommand::Restart { resume, epoch }).await.unwrap();
                    }
                }
                _ = tick.tick() => {
                    if let Some(&(pos, _)) = processed.last() {
                        committed = pos;
                        h.cmd.send(ConnectorCommand::Committed { positions: vec![(1, pos)] }).await.unwrap();
                    }
                }
            }
        }
        let (code, out, err) = client.await.unwrap();
        let _ = std::fs::remove_file(&file);
        assert_eq!(code, 0, "{out}{err}");
        assert!(rolled_back && lost > 0, "{lost}");
        let want: Vec<(u64, String)> = (1..=n as u64).map(|i| (i, format!("line-{i}"))).collect();
        assert_eq!(processed, want);
        assert!(err.contains("the worker asked for a restart"), "{err}");
        assert!(out.contains(&format!("sent {n} messages")), "{out}");
    }
}
