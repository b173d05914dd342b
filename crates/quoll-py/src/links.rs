//! The links between workers, on tokio: control links (a star around the
//! initializer) and data links (one per ordered pair of workers).
//!
//! This module decides nothing. It carries out the link actions of
//! [`quoll_core::node::Node`] (connect, send, refuse, close, open data
//! links, tear down) and turns what the sockets do into the node's events:
//! a connection came up, a control message arrived, a link closed or went
//! silent, every data link is up, a barrier arrived. Frames are those of
//! [`quoll_core::wire`], read with `FramedRead<_, WireCodec>`.
//!
//! Every connection gets a [`LinkId`] that is never reused, so a late
//! event of a link the node has forgotten is ignored there. Each control
//! link has a reader task and a writer task; the writer sends a heartbeat
//! every [`HEARTBEAT_EVERY`], and a reader that hears nothing for
//! [`HEARTBEAT_TIMEOUT`] (not even the first message of a new connection)
//! reports the link closed: a hung process is not a healthy one, and a
//! silent stranger holds nothing up.
//!
//! Every connection, control or data, first runs the handshake of
//! [`quoll_core::handshake`] (both sides prove they hold the cluster secret)
//! within [`HANDSHAKE_TIMEOUT`]; nothing it says before is acted on. Each
//! accepted connection is handled by its own task, and at most
//! [`MAX_PENDING_HANDSHAKES`] handshakes per listener are under way at once
//! (more are closed at once), so silent, slow or garbage-sending
//! connections never hold up formation, recovery or anyone else.
//!
//! With `--tls-cert`, `--tls-key` and `--tls-ca`, every connection first
//! runs TLS (see [`crate::tls`]), and the handshake and everything after
//! go inside it; the TLS handshake counts within the same timeout and cap.
//! Links are [`LinkRead`] and [`LinkWrite`] halves either way, so readers
//! and writers don't know whether TLS is on.
//!
//! A member that is not the initializer may listen on `--my-control`: a
//! worker started with `--join` and that address gets `Control::Redirect`
//! with the initializer's control address in answer to its `Join` (the
//! joiner's machine then connects there), so any member can be joined
//! through.
//!
//! Data links carry batches and barriers; each begins (after the handshake)
//! with `DataHello` naming the sender and the formation's generation, and a
//! link of another generation or from a stranger is refused. Their readers
//! stamp what they read with that generation.

use crate::event::Event;
use crate::tls::{self, LinkRead, LinkWrite, OpenError, Tls, TlsFailure};
use futures_util::StreamExt;
use quoll_core::frame::ReadError;
use quoll_core::handshake::{
    Acceptor, AuthError, AuthMessage, Initiator, Nonce, Purpose, Step, NONCE_LEN,
};
use quoll_core::membership::{Generation, LinkId};
use quoll_core::node::NodeEvent;
use quoll_core::wire::{self, AuthCodec, Control, Member, WireCodec, WireError, WireFrame};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio_util::codec::FramedRead;
use tracing::{debug, info, warn};

/// Heartbeats go out this often on every control link.
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(300);
/// A control link silent this long is reported closed.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between attempts to reach the initializer.
pub const CONNECT_RETRY: Duration = Duration::from_millis(200);
/// How often "can't reach the initializer" is said while retrying.
const UNREACHABLE_NOTICE: Duration = Duration::from_secs(10);
/// Pause between attempts to open a data link.
const DATA_RETRY: Duration = Duration::from_millis(50);
/// Frames queued for one data link's writer (batches of up to ~64 KiB).
const DATA_QUEUE: usize = 16;
/// How long a stopping worker waits for its last control messages to go out.
const FLUSH_ON_STOP: Duration = Duration::from_secs(1);
/// A connection that has not finished the handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes under way per listener; connections beyond are closed at once.
pub const MAX_PENDING_HANDSHAKES: usize = 64;

/// The cluster secret links are authenticated with.
pub type Secret = Arc<[u8]>;

/// What every link of a worker proves and checks: the cluster secret and,
/// if configured, TLS certificates.
#[derive(Clone)]
pub struct Credentials {
    pub secret: Secret,
    pub tls: Option<Tls>,
}

/// How a link's handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("no handshake within {} s", HANDSHAKE_TIMEOUT.as_secs())]
    Timeout,
    #[error("the connection closed during the handshake")]
    Closed,
    #[error(transparent)]
    Read(#[from] ReadError<WireError>),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Tls(#[from] TlsFailure),
}

impl HandshakeError {
    /// True if trying again can't help (the secrets, versions or TLS
    /// settings differ).
    fn is_final(&self) -> bool {
        match self {
            HandshakeError::Auth(_) => true,
            HandshakeError::Tls(t) => t.is_final(),
            _ => false,
        }
    }

    /// An I/O error inside TLS (a certificate refused after the TLS
    /// handshake, say) is a TLS failure, and is told as one.
    fn tls_first(self) -> HandshakeError {
        let io = match &self {
            HandshakeError::Io(e) | HandshakeError::Read(ReadError::Io(e)) => e,
            _ => return self,
        };
        match TlsFailure::from_io(io) {
            Some(t) => HandshakeError::Tls(t),
            None => self,
        }
    }
}

/// An authenticated connection: its frames and its write half.
type Authenticated = (FramedRead<LinkRead, WireCodec>, LinkWrite);

fn nonce() -> Result<Nonce, HandshakeError> {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n)
        .map_err(|e| HandshakeError::Io(std::io::Error::other(e.to_string())))?;
    Ok(n)
}

/// Runs TLS (if configured) and the handshake on a new connection to or
/// from `peer` (as the side that connected, or the side that accepted);
/// on success the link reads wire frames.
pub async fn authenticate(
    stream: TcpStream,
    peer: SocketAddr,
    creds: &Credentials,
    purpose: Purpose,
    initiator: bool,
) -> Result<Authenticated, HandshakeError> {
    let run = async {
        let (read, mut write) = match tls::open(stream, creds.tls.as_ref(), peer.ip(), initiator)
            .await
        {
            Ok(halves) => halves,
            Err(OpenError::Io(e)) => return Err(HandshakeError::Io(e)),
            Err(OpenError::Closed) => return Err(HandshakeError::Closed),
            Err(OpenError::Tls(t)) => return Err(HandshakeError::Tls(t)),
            Err(OpenError::PlainPeer(mut stream)) => {
                // Said in the clear, so a worker without TLS can say why.
                let refusal = AuthMessage::Verdict {
                    accepted: false,
                    reason: "it requires TLS (it runs with --tls-cert, --tls-key and --tls-ca): give every worker of the cluster the same three flags".into(),
                };
                let _ = stream.write_all(&wire::auth_frame(&refusal)).await;
                let _ = stream.shutdown().await;
                // What it sent is read until it closes: closing with
                // unread bytes would reset the connection, and the reset
                // could overtake the refusal.
                let mut unread = [0u8; 512];
                while matches!(stream.read(&mut unread).await, Ok(n) if n > 0) {}
                return Err(HandshakeError::Tls(TlsFailure::PlainPeer));
            }
        };
        let mut frames = FramedRead::new(read, AuthCodec::default());
        let secret = &creds.secret[..];
        let mut acceptor = None;
        let mut connector = None;
        if initiator {
            let (side, hello) = Initiator::start(secret, purpose, nonce()?);
            write.send(&wire::auth_frame(&hello)).await?;
            connector = Some(side);
        } else {
            acceptor = Some(Acceptor::new(secret, purpose, nonce()?));
        }
        loop {
            let msg = frames.next().await.ok_or(HandshakeError::Closed)??;
            let step = match (&mut connector, &mut acceptor) {
                (Some(c), _) => c.on_message(msg),
                (None, Some(a)) => a.on_message(msg),
                (None, None) => unreachable!("one side is set above"),
            };
            match step {
                Ok(Step::Send(m)) => write.send(&wire::auth_frame(&m)).await?,
                Ok(Step::Done(last)) => {
                    if let Some(m) = last {
                        write.send(&wire::auth_frame(&m)).await?;
                    }
                    return Ok((frames.map_decoder(|_| WireCodec::default()), write));
                }
                Err(e) => {
                    // Tell the other side why, so both can say it.
                    let _ = write.send(&wire::auth_frame(&Acceptor::refusal(&e))).await;
                    return Err(HandshakeError::Auth(e));
                }
            }
        }
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, run).await {
        Err(_) => Err(HandshakeError::Timeout),
        Ok(result) => result.map_err(HandshakeError::tls_first),
    }
}

enum Outgoing {
    Msg(Control),
    Close,
}

struct ControlLink {
    out: mpsc::UnboundedSender<Outgoing>,
    peer: SocketAddr,
    reader: AbortHandle,
    writer: JoinHandle<()>,
}

type ControlTable = Arc<Mutex<HashMap<LinkId, ControlLink>>>;

fn table(t: &ControlTable) -> MutexGuard<'_, HashMap<LinkId, ControlLink>> {
    // A panicking task can't leave the table half-updated (single inserts
    // and removes), so a poisoned lock is still usable.
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// The data links of one formation.
struct DataLinks {
    /// Per member index: the queue of the link to it (`None` for this worker).
    out: Vec<Option<mpsc::Sender<Vec<u8>>>>,
    tasks: Vec<AbortHandle>,
}

/// A worker's links, across formations.
pub struct Links {
    rt: Handle,
    events: mpsc::Sender<Event>,
    creds: Credentials,
    next_link: Arc<AtomicU64>,
    control: ControlTable,
    /// The initializer's control address (its own, or the one to reach);
    /// `--my-control` sends joiners there.
    control_addr: watch::Sender<String>,
    acceptor: Option<AbortHandle>,
    connecting: Option<AbortHandle>,
    /// Where this worker accepts data links (bound on the first connection
    /// to the initializer unless given).
    data_listener: Arc<Mutex<Option<Arc<TcpListener>>>>,
    data: Option<DataLinks>,
}

impl Links {
    /// The initializer's links: it listens on `control` and `data`.
    pub fn initializer(
        rt: Handle,
        events: mpsc::Sender<Event>,
        creds: Credentials,
        control: TcpListener,
        data: TcpListener,
        control_addr: String,
    ) -> Links {
        let mut links = Links::new(rt, events, creds, control_addr, Some(data));
        let task = links.rt.spawn(accept_control(
            Arc::new(control),
            links.control.clone(),
            links.next_link.clone(),
            links.events.clone(),
            links.creds.clone(),
        ));
        links.acceptor = Some(task.abort_handle());
        links
    }

    /// Another worker's links: it reaches the initializer at `control`,
    /// accepts data links on `my_data` if given, and on `my_control` (if
    /// given) sends joiners to the initializer.
    pub fn joiner(
        rt: Handle,
        events: mpsc::Sender<Event>,
        creds: Credentials,
        control: String,
        my_data: Option<TcpListener>,
        my_control: Option<TcpListener>,
    ) -> Links {
        let mut links = Links::new(rt, events, creds, control, my_data);
        if let Some(listener) = my_control {
            let task = links.rt.spawn(redirect_joiners(
                Arc::new(listener),
                links.control_addr.subscribe(),
                links.creds.clone(),
            ));
            links.acceptor = Some(task.abort_handle());
        }
        links
    }

    fn new(
        rt: Handle,
        events: mpsc::Sender<Event>,
        creds: Credentials,
        control_addr: String,
        data: Option<TcpListener>,
    ) -> Links {
        Links {
            rt,
            events,
            creds,
            next_link: Arc::new(AtomicU64::new(1)),
            control: Arc::new(Mutex::new(HashMap::new())),
            control_addr: watch::Sender::new(control_addr),
            acceptor: None,
            connecting: None,
            data_listener: Arc::new(Mutex::new(data.map(Arc::new))),
            data: None,
        }
    }

    pub fn control_addr(&self) -> String {
        self.control_addr.borrow().clone()
    }

    /// The initializer is at `to` (a member redirected this joiner).
    pub fn redirect(&mut self, to: String) {
        self.control_addr.send_replace(to);
    }

    /// Where this worker accepts data links, as others should reach it.
    pub fn data_addr(&self) -> String {
        let listener = self.data_listener.lock().unwrap_or_else(|p| p.into_inner());
        listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map_or_else(String::new, |a| a.to_string())
    }

    /// The peer address of a link, for messages.
    pub fn peer(&self, link: LinkId) -> String {
        table(&self.control)
            .get(&link)
            .map_or_else(|| link.to_string(), |l| l.peer.to_string())
    }

    /// Connects to the initializer after `after`, retrying until it
    /// answers; reports [`NodeEvent::Connected`].
    pub fn connect(&mut self, after: Duration) {
        if let Some(t) = self.connecting.take() {
            t.abort();
        }
        let task = self.rt.spawn(connect_control(
            self.control_addr(),
            after,
            self.data_listener.clone(),
            self.control.clone(),
            self.next_link.clone(),
            self.events.clone(),
            self.creds.clone(),
        ));
        self.connecting = Some(task.abort_handle());
    }

    pub fn send(&self, link: LinkId, msg: Control) {
        if let Some(l) = table(&self.control).get(&link) {
            // A link whose writer ended is closed; its reader says so.
            let _ = l.out.send(Outgoing::Msg(msg));
        }
    }

    /// Writes what was queued for `link`, then closes it.
    pub fn close(&self, link: LinkId) {
        if let Some(l) = table(&self.control).remove(&link) {
            l.reader.abort();
            let _ = l.out.send(Outgoing::Close);
        }
    }

    /// True while `link` is open here: what a link this worker closed said
    /// late (still queued) must not reach the node.
    pub fn is_open(&self, link: LinkId) -> bool {
        table(&self.control).contains_key(&link)
    }

    /// Forgets a link that closed by itself; false if this worker had
    /// already closed it.
    pub fn closed(&self, link: LinkId) -> bool {
        match table(&self.control).remove(&link) {
            Some(l) => {
                l.writer.abort();
                true
            }
            None => false,
        }
    }

    /// Closes every control and data link but the control links in `keep`
    /// (after sending `last`, if any, on every control link it closes) and
    /// stops connecting.
    pub fn tear_down(&mut self, last: Option<Control>, keep: &[LinkId]) -> Vec<JoinHandle<()>> {
        if let Some(t) = self.connecting.take() {
            t.abort();
        }
        self.close_data();
        let links: Vec<(LinkId, ControlLink)> = table(&self.control)
            .extract_if(|id, _| !keep.contains(id))
            .collect();
        links
            .into_iter()
            .map(|(_, l)| {
                l.reader.abort();
                if let Some(msg) = &last {
                    let _ = l.out.send(Outgoing::Msg(msg.clone()));
                }
                let _ = l.out.send(Outgoing::Close);
                l.writer
            })
            .collect()
    }

    /// A clean stop: tells every control link `Shutdown`, closes all links
    /// and waits (briefly) for those messages to go out.
    pub async fn shut_down(&mut self, reason: String) {
        if let Some(t) = self.acceptor.take() {
            t.abort();
        }
        let writers = self.tear_down(Some(Control::Shutdown { reason }), &[]);
        let _ = tokio::time::timeout(FLUSH_ON_STOP, async {
            for w in writers {
                let _ = w.await;
            }
        })
        .await;
    }

    /// The queue of the data link to each member (`None` for this worker).
    pub fn data_out(&self) -> Vec<Option<mpsc::Sender<Vec<u8>>>> {
        self.data.as_ref().map_or_else(Vec::new, |d| d.out.clone())
    }

    fn close_data(&mut self) {
        if let Some(d) = self.data.take() {
            d.tasks.iter().for_each(|t| t.abort());
        }
    }

    /// Opens a data link to every other member and accepts one from each;
    /// reports [`NodeEvent::DataLinksUp`] once all are up.
    pub fn open_data(
        &mut self,
        me_name: &str,
        members: &[Member],
        me: usize,
        generation: Generation,
    ) {
        self.close_data();
        let listener = self
            .data_listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let others = members.len() - 1;
        let (up_tx, up_rx) = mpsc::channel::<()>(members.len() * 2);
        let mut tasks = Vec::new();
        if let Some(listener) = listener {
            let index: HashMap<String, usize> = members
                .iter()
                .enumerate()
                .map(|(i, m)| (m.name.clone(), i))
                .collect();
            let accept = accept_data(
                listener,
                self.creds.clone(),
                index,
                generation,
                up_tx.clone(),
                self.events.clone(),
            );
            tasks.push(self.rt.spawn(accept).abort_handle());
        }
        let mut out = Vec::with_capacity(members.len());
        for (i, m) in members.iter().enumerate() {
            if i == me {
                out.push(None);
                continue;
            }
            let (tx, rx) = mpsc::channel(DATA_QUEUE);
            let hello = Control::DataHello {
                from: me_name.to_string(),
                generation,
            };
            let task = write_data(m.clone(), self.creds.clone(), hello, rx, up_tx.clone());
            tasks.push(self.rt.spawn(task).abort_handle());
            out.push(Some(tx));
        }
        let events = self.events.clone();
        let waiter = async move {
            let mut up_rx = up_rx;
            for _ in 0..2 * others {
                if up_rx.recv().await.is_none() {
                    return;
                }
            }
            let _ = events
                .send(Event::Node(NodeEvent::DataLinksUp { generation }))
                .await;
        };
        tasks.push(self.rt.spawn(waiter).abort_handle());
        self.data = Some(DataLinks { out, tasks });
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        for t in [self.acceptor.take(), self.connecting.take()]
            .into_iter()
            .flatten()
        {
            t.abort();
        }
        self.close_data();
    }
}

/// Registers an authenticated control connection: its reader and writer
/// tasks.
fn register(
    (frames, write): Authenticated,
    peer: SocketAddr,
    control: &ControlTable,
    next_link: &AtomicU64,
    events: &mpsc::Sender<Event>,
) -> LinkId {
    let link = LinkId(next_link.fetch_add(1, Ordering::Relaxed));
    let (out, rx) = mpsc::unbounded_channel();
    // The table is locked before the reader starts, so the executor, which
    // answers what the reader reports, finds the link there.
    let mut table = table(control);
    let reader = tokio::spawn(read_control(link, frames, events.clone())).abort_handle();
    let writer = tokio::spawn(write_control(write, rx));
    table.insert(
        link,
        ControlLink {
            out,
            peer,
            reader,
            writer,
        },
    );
    link
}

/// Accepts connections on `listener`, each in its own task: at most
/// [`MAX_PENDING_HANDSHAKES`] handshakes at once, each within
/// [`HANDSHAKE_TIMEOUT`]; `on_link` gets what authenticated.
async fn accept_authenticated<F, Fut>(
    listener: Arc<TcpListener>,
    what: &'static str,
    creds: Credentials,
    purpose: Purpose,
    on_link: F,
) where
    F: Fn(Authenticated, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    let on_link = Arc::new(on_link);
    // Aborting this task drops the set, which aborts every link it started.
    let mut tasks = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    warn!(place = %what, "accept failed: {e}");
                    tokio::time::sleep(CONNECT_RETRY).await;
                    continue;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            debug!(place = %what, "{MAX_PENDING_HANDSHAKES} handshakes under way; connection from {peer} closed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (creds, on_link) = (creds.clone(), on_link.clone());
        tasks.spawn(async move {
            let result = authenticate(stream, peer, &creds, purpose, false).await;
            drop(permit);
            match result {
                Ok(link) => on_link(link, peer).await,
                Err(e) => warn!(place = %format!("{what}, connection from {peer}"), "not authenticated: {e}; closed"),
            }
        });
    }
}

/// The initializer: every authenticated connection on `--control` becomes
/// a link; what it says goes to the node.
async fn accept_control(
    listener: Arc<TcpListener>,
    control: ControlTable,
    next_link: Arc<AtomicU64>,
    events: mpsc::Sender<Event>,
    creds: Credentials,
) {
    accept_authenticated(
        listener,
        "--control",
        creds,
        Purpose::Control,
        move |link, peer| {
            let id = register(link, peer, &control, &next_link, &events);
            debug!(link = %id, %peer, "control connection authenticated");
            std::future::ready(())
        },
    )
    .await;
}

/// A member on `--my-control`: answers a worker's `Join` with where the
/// initializer is (`Control::Redirect`), and closes; anything else, or
/// nothing within the handshake timeout, just closes.
async fn redirect_joiners(
    listener: Arc<TcpListener>,
    to: watch::Receiver<String>,
    creds: Credentials,
) {
    accept_authenticated(
        listener,
        "--my-control",
        creds,
        Purpose::Control,
        move |(mut frames, mut write), peer| {
            let to = to.borrow().clone();
            async move {
                let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, frames.next()).await;
                let Ok(Some(Ok(WireFrame::Control(Control::Join { name, .. })))) = first else {
                    debug!(%peer, "--my-control: no Join; closed");
                    return;
                };
                info!("worker '{name}' asked to join through this worker; sent to the initializer at {to}");
                let _ = write
                    .send(&wire::control_frame(&Control::Redirect { to }))
                    .await;
                let _ = write.shutdown().await;
            }
        },
    )
    .await;
}

/// A joiner: connects to the initializer, retrying and saying so, and
/// authenticates; a secret or TLS settings the initializer does not share
/// are final.
async fn connect_control(
    addr: String,
    after: Duration,
    data_listener: Arc<Mutex<Option<Arc<TcpListener>>>>,
    control: ControlTable,
    next_link: Arc<AtomicU64>,
    events: mpsc::Sender<Event>,
    creds: Credentials,
) {
    tokio::time::sleep(after).await;
    let mut said = None::<Instant>;
    let (stream, peer, link) = loop {
        let problem = match TcpStream::connect(&addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let local = stream.local_addr();
                match stream.peer_addr() {
                    Err(e) => e.to_string(),
                    Ok(peer) => {
                        match authenticate(stream, peer, &creds, Purpose::Control, true).await {
                            Ok(link) => break (local, peer, link),
                            Err(e) if e.is_final() => {
                                let msg = format!("the initializer at {addr} and this worker can't authenticate each other: {e}");
                                let _ = events.send(Event::Fatal(msg)).await;
                                return;
                            }
                            Err(e) => format!("the handshake with it failed: {e}"),
                        }
                    }
                }
            }
            Err(e) => e.to_string(),
        };
        if said.is_none_or(|t| t.elapsed() >= UNREACHABLE_NOTICE) {
            info!(
                "can't reach the initializer at {addr} ({problem}); retrying every {} ms \
                 (the initializer listens on its --control address once started)",
                CONNECT_RETRY.as_millis()
            );
            said = Some(Instant::now());
        }
        tokio::time::sleep(CONNECT_RETRY).await;
    };
    let unbound = data_listener
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .is_none();
    if unbound {
        // Others reach this worker's data links on the address it reaches
        // the initializer from.
        let ip = match stream {
            Ok(a) => a.ip(),
            Err(e) => {
                let _ = events
                    .send(Event::Fatal(format!("control link to {addr}: {e}")))
                    .await;
                return;
            }
        };
        match TcpListener::bind((ip, 0)).await {
            Ok(l) => *data_listener.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(l)),
            Err(e) => {
                let msg = format!(
                    "can't listen for data links on {ip}: {e}; give an address with --my-data"
                );
                let _ = events.send(Event::Fatal(msg)).await;
                return;
            }
        }
    }
    let link = register(link, peer, &control, &next_link, &events);
    let _ = events
        .send(Event::Node(NodeEvent::Connected { link }))
        .await;
}

/// Reads a control link until it closes, fails or goes silent.
async fn read_control(
    link: LinkId,
    mut frames: FramedRead<LinkRead, WireCodec>,
    events: mpsc::Sender<Event>,
) {
    let why = loop {
        let event = match tokio::time::timeout(HEARTBEAT_TIMEOUT, frames.next()).await {
            Err(_) => {
                break format!(
                    "no heartbeat for {:.1} s (the process may be hung or stopped)",
                    HEARTBEAT_TIMEOUT.as_secs_f64()
                )
            }
            Ok(None) => break "its control link closed".to_string(),
            Ok(Some(Err(e))) => break format!("its control link failed: {e}"),
            Ok(Some(Ok(WireFrame::Control(Control::Ping | Control::Pong)))) => continue,
            Ok(Some(Ok(WireFrame::Control(Control::Shutdown { reason })))) => {
                Event::Shutdown { reason }
            }
            Ok(Some(Ok(WireFrame::Control(msg)))) => Event::Node(NodeEvent::Control { link, msg }),
            Ok(Some(Ok(other))) => {
                warn!(%link, "unexpected {other:?} on a control link; ignored");
                continue;
            }
        };
        if events.send(event).await.is_err() {
            return;
        }
    };
    let _ = events
        .send(Event::Node(NodeEvent::LinkClosed { link, why }))
        .await;
}

/// Writes a control link's messages in order, with heartbeats between.
async fn write_control(mut write: LinkWrite, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    loop {
        let msg = tokio::select! {
            m = rx.recv() => match m {
                Some(Outgoing::Msg(m)) => m,
                Some(Outgoing::Close) | None => break,
            },
            _ = tick.tick() => Control::Ping,
        };
        if write.send(&wire::control_frame(&msg)).await.is_err() {
            return;
        }
    }
    let _ = write.shutdown().await;
}

/// Accepts the data links of one formation: each, once authenticated, must
/// begin with a `DataHello` of this generation from a member not yet linked.
async fn accept_data(
    listener: Arc<TcpListener>,
    creds: Credentials,
    index: HashMap<String, usize>,
    generation: Generation,
    up: mpsc::Sender<()>,
    events: mpsc::Sender<Event>,
) {
    let index = Arc::new(index);
    let linked = Arc::new(Mutex::new(std::collections::HashSet::new()));
    accept_authenticated(listener, "--data", creds, Purpose::Data, move |(mut frames, write), peer| {
        let (index, linked, up, events) = (index.clone(), linked.clone(), up.clone(), events.clone());
        async move {
            let place = format!("data link from {peer}");
            let first = tokio::time::timeout(HEARTBEAT_TIMEOUT, frames.next()).await;
            let from = match first {
                Ok(Some(Ok(WireFrame::Control(Control::DataHello { from, generation: g })))) if g == generation => from,
                Ok(Some(Ok(WireFrame::Control(Control::DataHello { from, generation: g })))) => {
                    return debug!(place = %place, "from '{from}' of generation {g} refused: this formation's is {generation}")
                }
                Ok(Some(Ok(other))) => return warn!(place = %place, "began with {other:?}; refused"),
                Ok(Some(Err(e))) => return warn!(place = %place, "{e}; refused"),
                Ok(None) | Err(_) => return debug!(place = %place, "closed or silent before its hello"),
            };
            let Some(&i) = index.get(&from) else {
                return warn!(place = %place, "refused: '{from}' is not a member");
            };
            if !linked.lock().unwrap_or_else(|p| p.into_inner()).insert(i) {
                return warn!(place = %place, "refused: '{from}' already has a data link here");
            }
            let _ = up.send(()).await;
            let _keep_open = write;
            read_data(i, from, generation, frames, events).await
        }
    })
    .await;
}

/// Reads one inbound data link, stamping what it reads with the link's
/// generation.
async fn read_data<R: AsyncRead + Unpin>(
    from: usize,
    name: String,
    generation: Generation,
    mut frames: FramedRead<R, WireCodec>,
    events: mpsc::Sender<Event>,
) {
    let place = format!("data link from worker '{name}'");
    loop {
        let event = match frames.next().await {
            Some(Ok(WireFrame::Data(body))) => Event::PeerData {
                from,
                generation,
                body,
            },
            Some(Ok(WireFrame::Handoff(body))) => Event::Handoff {
                from,
                generation,
                body,
            },
            Some(Ok(WireFrame::Barrier {
                generation: g,
                checkpoint,
            })) => Event::Node(NodeEvent::Barrier {
                from,
                generation: g,
                id: checkpoint,
            }),
            Some(Ok(WireFrame::Control(c))) => {
                warn!(place = %place, "unexpected {c:?}; ignored");
                continue;
            }
            Some(Err(e)) => {
                warn!(place = %place, "{e}; link closed");
                return;
            }
            None => {
                debug!(place = %place, "closed");
                return;
            }
        };
        if events.send(event).await.is_err() {
            return;
        }
    }
}

/// Opens the data link to `to` (retrying until it connects and
/// authenticates) and writes its queue in order.
async fn write_data(
    to: Member,
    creds: Credentials,
    hello: Control,
    mut rx: mpsc::Receiver<Vec<u8>>,
    up: mpsc::Sender<()>,
) {
    let place = format!("data link to worker '{}' at {}", to.name, to.data_addr);
    // Retried every DATA_RETRY: each different failure is said once.
    let mut said = String::new();
    let (_frames, mut write) = loop {
        if let Ok(stream) = TcpStream::connect(&to.data_addr).await {
            let _ = stream.set_nodelay(true);
            let authenticated = match stream.peer_addr() {
                Ok(peer) => authenticate(stream, peer, &creds, Purpose::Data, true).await,
                Err(e) => Err(HandshakeError::Io(e)),
            };
            match authenticated {
                Ok(link) => break link,
                Err(e) => {
                    let why = e.to_string();
                    if why != said {
                        warn!(place = %place, "not authenticated: {why}; trying again");
                        said = why;
                    }
                }
            }
        }
        tokio::time::sleep(DATA_RETRY).await;
    };
    if let Err(e) = write.send(&wire::control_frame(&hello)).await {
        warn!(place = %place, "{e}");
        return;
    }
    let _ = up.send(()).await;
    while let Some(frame) = rx.recv().await {
        if let Err(e) = write.send(&frame).await {
            warn!(place = %place, "write failed: {e}");
            return;
        }
    }
}
