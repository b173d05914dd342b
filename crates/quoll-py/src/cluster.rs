//! Cluster formation and the links between workers (spec 8.2).
//!
//! Formation, in order (the same after a failure, with a new generation):
//! 1. The initializer listens on `--control` and `--data`. Every other
//!    worker binds its data listener (`--my-data`, else an ephemeral port on
//!    the address it reaches the initializer from), connects to the
//!    initializer's control address (retrying, and saying so) and sends
//!    `Join { name, data_addr, fingerprint, has_files }`.
//! 2. The initializer refuses duplicate names, a different application
//!    (fingerprint) and workers beyond `--worker-count`; once
//!    `worker_count - 1` have joined it sends everyone `Welcome { members,
//!    generation, rollback_to }`: the initializer first, then the others
//!    sorted by name. A worker's index in that list is its place in the
//!    key-group map, so names (not join order) decide who owns what.
//! 3. Every worker opens one data link to every other (a one-way link per
//!    ordered pair, starting with `DataHello`) and accepts one from each.
//!    With all of them up it sends `LinksUp`; the initializer, with all
//!    `LinksUp` and its own links up, sends `Start`.
//!
//! After formation the control links (a star around the initializer) carry
//! heartbeats, checkpoint coordination, `Reform` and `Shutdown`; data links
//! carry batches and barriers (see `quoll_core::wire`). Every event a link
//! task reports carries the generation of its formation, so the executor
//! can ignore what a torn-down link said late. A peer that sends nothing
//! (not even a heartbeat) for [`HEARTBEAT_TIMEOUT`] is reported lost: a
//! hung process is not a healthy one.

use crate::io::Event;
use bytes::BytesMut;
use quoll_core::wire::{self, Control, Member, WireFrame};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

/// Heartbeats go out this often on every control link.
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(300);
/// A peer silent this long is reported lost.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_RETRY: Duration = Duration::from_millis(200);

/// The listeners a worker keeps for its whole life, across re-formations.
pub struct ControlPlane {
    pub name: String,
    pub initializer: bool,
    pub worker_count: usize,
    /// Initializer: its control address; others: the initializer's.
    pub control: String,
    control_listener: Option<Arc<TcpListener>>,
    data_listener: Option<Arc<TcpListener>>,
    my_data: Option<String>,
    pub fingerprint: u64,
}

/// The formed cluster, as one worker holds it.
pub struct Cluster {
    pub me: usize,
    pub members: Vec<Member>,
    pub generation: u64,
    pub rollback_to: Option<u64>,
    /// Whether the cluster runs with resilience (the initializer decides).
    pub resilient: bool,
    /// Per worker index: the writer of the data link to it (`None` for me).
    pub data_out: Vec<Option<mpsc::Sender<Vec<u8>>>>,
    /// Control messages to send: to the initializer, or (on the
    /// initializer) to every other worker.
    pub control_out: mpsc::Sender<Control>,
    /// The task writing `control_out`; it ends after writing a `Shutdown`.
    pub control_writer: tokio::task::JoinHandle<()>,
    tasks: Vec<AbortHandle>,
}

impl Cluster {
    /// Tears down every link of this formation (before re-forming), after
    /// writing `last` on the control link(s) if given.
    pub async fn tear_down(self, last: Option<Control>) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(msg) = last {
            if self.control_out.send(msg).await.is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(1), self.control_writer).await;
                return;
            }
        }
        self.control_writer.abort();
    }
}

/// What the initializer tells workers when it welcomes them.
#[derive(Clone)]
pub struct WelcomePlan {
    pub generation: u64,
    pub rollback_to: Option<u64>,
    pub resilient: bool,
}

type Result<T> = std::result::Result<T, String>;

/// How a formation attempt failed: for good (the initializer refused this
/// worker), or in a way worth trying again (a peer went away meanwhile).
enum FormError {
    Fatal(String),
    Retry(String),
}

impl From<String> for FormError {
    fn from(e: String) -> Self {
        FormError::Retry(e)
    }
}

/// A formation step that waits on peers gives up after this long, and the
/// formation starts over.
const FORMATION_STEP: Duration = Duration::from_secs(20);

async fn step<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T>>,
) -> std::result::Result<T, FormError> {
    match tokio::time::timeout(FORMATION_STEP, f).await {
        Ok(r) => r.map_err(FormError::Retry),
        Err(_) => Err(FormError::Retry(format!(
            "{what} took longer than {} s",
            FORMATION_STEP.as_secs()
        ))),
    }
}

async fn read_frame(read: &mut OwnedReadHalf, buf: &mut BytesMut) -> Result<Option<WireFrame>> {
    loop {
        if let Some(f) = wire::next_frame(buf).map_err(|e| e.to_string())? {
            return Ok(Some(f));
        }
        buf.reserve(64 << 10);
        match read.read_buf(buf).await {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

async fn read_control(read: &mut OwnedReadHalf, buf: &mut BytesMut, peer: &str) -> Result<Control> {
    loop {
        match read_frame(read, buf).await? {
            Some(WireFrame::Control(Control::Ping | Control::Pong)) => continue,
            Some(WireFrame::Control(c)) => return Ok(c),
            Some(_) => return Err(format!("{peer} sent data before formation finished")),
            None => {
                return Err(format!(
                    "{peer} closed the connection during cluster formation"
                ))
            }
        }
    }
}

async fn send_control(write: &mut OwnedWriteHalf, msg: &Control) -> Result<()> {
    write
        .write_all(&wire::control_frame(msg))
        .await
        .map_err(|e| e.to_string())
}

impl ControlPlane {
    /// Binds the listeners this worker keeps (the initializer's control and
    /// data addresses; another worker's `--my-data` if given).
    pub async fn bind(
        name: String,
        initializer: bool,
        worker_count: usize,
        control: String,
        data: Option<String>,
        fingerprint: u64,
    ) -> Result<ControlPlane> {
        let (control_listener, data_listener, my_data) = if initializer {
            let c = TcpListener::bind(&control).await.map_err(|e| {
                format!(
                    "can't listen on --control {control}: {e} (is another initializer running?)"
                )
            })?;
            let data = data.ok_or("the initializer needs --data HOST:PORT")?;
            let d = TcpListener::bind(&data)
                .await
                .map_err(|e| format!("can't listen on --data {data}: {e}"))?;
            (Some(Arc::new(c)), Some(Arc::new(d)), None)
        } else {
            (None, None, data)
        };
        Ok(ControlPlane {
            name,
            initializer,
            worker_count,
            control,
            control_listener,
            data_listener,
            my_data,
            fingerprint,
        })
    }

    /// Forms (or re-forms) the cluster; returns once everyone has started.
    /// `plan` is the initializer's decision (ignored elsewhere); `has_files`
    /// says whether this worker found resilience files of its own.
    /// A peer that goes away mid-formation (a worker restarting, the
    /// initializer's listener closing as it dies) makes the attempt start
    /// over; only a refusal is final.
    pub async fn form(
        &mut self,
        plan: &WelcomePlan,
        has_files: bool,
        events: mpsc::Sender<Event>,
    ) -> Result<Cluster> {
        let mut plan = plan.clone();
        loop {
            let attempt = if self.initializer {
                self.form_as_initializer(&plan, events.clone()).await
            } else {
                self.form_as_joiner(has_files, events.clone()).await
            };
            match attempt {
                Ok(c) => return Ok(c),
                Err(FormError::Fatal(e)) => return Err(e),
                Err(FormError::Retry(e)) => {
                    println!(
                        "quoll: worker '{}': cluster formation interrupted ({e}); starting over",
                        self.name
                    );
                    plan.generation += 1;
                    tokio::time::sleep(CONNECT_RETRY).await;
                }
            }
        }
    }

    async fn form_as_initializer(
        &mut self,
        plan: &WelcomePlan,
        events: mpsc::Sender<Event>,
    ) -> std::result::Result<Cluster, FormError> {
        let control = self
            .control_listener
            .clone()
            .expect("bound for the initializer");
        let data = self
            .data_listener
            .clone()
            .expect("bound for the initializer");
        let data_addr = data.local_addr().map_err(|e| e.to_string())?.to_string();
        if self.worker_count > 1 {
            println!(
                "quoll: initializer waiting for {} more worker(s) on {}",
                self.worker_count - 1,
                self.control
            );
        }
        let mut joined: Vec<(Member, OwnedReadHalf, OwnedWriteHalf, BytesMut)> = Vec::new();
        while joined.len() + 1 < self.worker_count {
            let (stream, peer) = control.accept().await.map_err(|e| e.to_string())?;
            let _ = stream.set_nodelay(true);
            let (mut read, mut write) = stream.into_split();
            let mut buf = BytesMut::new();
            let msg =
                match read_control(&mut read, &mut buf, &format!("the worker at {peer}")).await {
                    Ok(m) => m,
                    Err(e) => {
                        eprintln!("quoll: initializer: {e}");
                        continue;
                    }
                };
            let Control::Join {
                name,
                data_addr,
                fingerprint,
                ..
            } = msg
            else {
                eprintln!("quoll: initializer: {peer} sent {msg:?} instead of Join; ignored");
                continue;
            };
            let refusal = if fingerprint != self.fingerprint {
                Some(format!(
                    "worker '{name}' runs a different application (topology fingerprint {fingerprint:#x}, the initializer's is {:#x}); start every worker with the same app and app version",
                    self.fingerprint
                ))
            } else if name == self.name {
                Some(format!(
                    "'{name}' is the initializer's name; give each worker a unique --name"
                ))
            } else if let Some(i) = joined.iter().position(|(m, ..)| m.name == name) {
                // The same name again: a restart of a worker that joined
                // (its old connection is closed) replaces it; a second live
                // process with that name is refused.
                if connection_closed(&joined[i].1) {
                    println!("quoll: initializer: worker '{name}' joined again (it restarted)");
                    joined.remove(i);
                    None
                } else {
                    Some(format!("a worker named '{name}' is already in the cluster; give each worker a unique --name"))
                }
            } else {
                None
            };
            if let Some(reason) = refusal {
                eprintln!("quoll: initializer: refused {peer}: {reason}");
                let _ = send_control(&mut write, &Control::Refused { reason, retry: false }).await;
                continue;
            }
            println!(
                "quoll: initializer: worker '{name}' joined ({}/{})",
                joined.len() + 2,
                self.worker_count
            );
            joined.push((Member { name, data_addr }, read, write, buf));
        }
        joined.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        let mut members = vec![Member {
            name: self.name.clone(),
            data_addr,
        }];
        members.extend(joined.iter().map(|(m, ..)| m.clone()));
        let generation = plan.generation;
        for (_, _, write, _) in joined.iter_mut() {
            let welcome = Control::Welcome {
                members: members.clone(),
                generation,
                rollback_to: plan.rollback_to,
                resilient: plan.resilient,
            };
            send_control(write, &welcome).await?;
        }
        let mut tasks = Vec::new();
        let data_out = step(
            "opening data links",
            open_data_links(
                &self.name,
                0,
                &members,
                data,
                generation,
                events.clone(),
                &mut tasks,
            ),
        )
        .await;
        let data_out = data_out.inspect_err(|_| tasks.iter().for_each(|t| t.abort()))?;
        for (m, read, _, buf) in joined.iter_mut() {
            let what = format!("worker '{}'", m.name);
            match step("waiting for LinksUp", read_control(read, buf, &what)).await {
                Ok(Control::LinksUp { .. }) => {}
                other => {
                    tasks.iter().for_each(|t| t.abort());
                    return Err(FormError::Retry(format!(
                        "{what} did not confirm its data links: {}",
                        match other {
                            Ok(m) => format!("{m:?}"),
                            Err(FormError::Retry(e) | FormError::Fatal(e)) => e,
                        }
                    )));
                }
            }
        }
        for (_, _, write, _) in joined.iter_mut() {
            send_control(write, &Control::Start { generation }).await?;
        }
        let names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
        tasks.push(
            tokio::spawn(guard_control(
                control,
                names,
                generation,
                plan.resilient,
                events.clone(),
            ))
            .abort_handle(),
        );
        // The control star: a reader per worker, one writer task that
        // broadcasts, and a heartbeat.
        let (control_out, mut control_rx) = mpsc::channel::<Control>(64);
        let mut writers = Vec::new();
        for (i, (m, read, write, buf)) in joined.into_iter().enumerate() {
            writers.push(write);
            let heard = Arc::new(AtomicU64::new(0));
            let link = ControlLink {
                from: i + 1,
                peer: m.name,
                generation,
                events: events.clone(),
                heard: heard.clone(),
            };
            tasks
                .push(tokio::spawn(link.read(read, buf, Some(control_out.clone()))).abort_handle());
            tasks.push(
                tokio::spawn(watch_heartbeat(
                    m_name_of(&members, i + 1),
                    generation,
                    heard,
                    events.clone(),
                ))
                .abort_handle(),
            );
        }
        let control_writer = tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
            loop {
                let msg = tokio::select! {
                    m = control_rx.recv() => match m { Some(m) => m, None => return },
                    _ = tick.tick() => Control::Ping,
                };
                let frame = wire::control_frame(&msg);
                for w in writers.iter_mut() {
                    let _ = w.write_all(&frame).await;
                }
                if matches!(msg, Control::Shutdown { .. } | Control::Reform { .. }) {
                    return;
                }
            }
        });
        Ok(Cluster {
            me: 0,
            members,
            generation,
            rollback_to: plan.rollback_to,
            resilient: plan.resilient,
            data_out,
            control_out,
            control_writer,
            tasks,
        })
    }

    async fn form_as_joiner(
        &mut self,
        has_files: bool,
        events: mpsc::Sender<Event>,
    ) -> std::result::Result<Cluster, FormError> {
        let mut warned = Instant::now() - Duration::from_secs(3600);
        let stream = loop {
            match TcpStream::connect(&self.control).await {
                Ok(s) => break s,
                Err(e) => {
                    if warned.elapsed() >= Duration::from_secs(10) {
                        println!(
                            "quoll: worker '{}': can't reach the initializer at {} ({e}); retrying every {} ms",
                            self.name,
                            self.control,
                            CONNECT_RETRY.as_millis()
                        );
                        warned = Instant::now();
                    }
                    tokio::time::sleep(CONNECT_RETRY).await;
                }
            }
        };
        let _ = stream.set_nodelay(true);
        if self.data_listener.is_none() {
            let bind_addr = match &self.my_data {
                Some(a) => a.clone(),
                None => format!("{}:0", stream.local_addr().map_err(|e| e.to_string())?.ip()),
            };
            let l = TcpListener::bind(&bind_addr)
                .await
                .map_err(|e| format!("can't listen on --my-data {bind_addr}: {e}"))?;
            self.data_listener = Some(Arc::new(l));
        }
        let data = self.data_listener.clone().expect("bound above");
        let data_addr = data.local_addr().map_err(|e| e.to_string())?.to_string();
        let (mut read, mut write) = stream.into_split();
        let mut buf = BytesMut::new();
        let join = Control::Join {
            name: self.name.clone(),
            data_addr,
            fingerprint: self.fingerprint,
            has_files,
        };
        send_control(&mut write, &join).await?;
        println!(
            "quoll: worker '{}': joined the initializer at {}; waiting for the other workers",
            self.name, self.control
        );
        let (members, generation, rollback_to, resilient) =
            match read_control(&mut read, &mut buf, "the initializer").await? {
                Control::Welcome {
                    members,
                    generation,
                    rollback_to,
                    resilient,
                } => (members, generation, rollback_to, resilient),
                Control::Refused { reason, .. } => {
                    return Err(FormError::Fatal(format!(
                        "the initializer refused this worker: {reason}"
                    )))
                }
                other => {
                    return Err(FormError::Retry(format!(
                        "the initializer sent {other:?} instead of Welcome"
                    )))
                }
            };
        let me = members
            .iter()
            .position(|m| m.name == self.name)
            .ok_or_else(|| {
                FormError::Fatal("the initializer's member list does not name this worker".into())
            })?;
        let mut tasks = Vec::new();
        let data_out = step(
            "opening data links",
            open_data_links(
                &self.name,
                me,
                &members,
                data,
                generation,
                events.clone(),
                &mut tasks,
            ),
        )
        .await;
        let data_out = data_out.inspect_err(|_| tasks.iter().for_each(|t| t.abort()))?;
        send_control(
            &mut write,
            &Control::LinksUp {
                name: self.name.clone(),
            },
        )
        .await?;
        match step(
            "waiting for Start",
            read_control(&mut read, &mut buf, "the initializer"),
        )
        .await
        {
            Ok(Control::Start { .. }) => {}
            other => {
                tasks.iter().for_each(|t| t.abort());
                return Err(FormError::Retry(match other {
                    Ok(m) => format!("the initializer sent {m:?} instead of Start"),
                    Err(FormError::Retry(e) | FormError::Fatal(e)) => e,
                }));
            }
        }
        let (control_out, mut control_rx) = mpsc::channel::<Control>(64);
        let heard = Arc::new(AtomicU64::new(0));
        let link = ControlLink {
            from: 0,
            peer: members[0].name.clone(),
            generation,
            events: events.clone(),
            heard: heard.clone(),
        };
        tasks.push(tokio::spawn(link.read(read, buf, None)).abort_handle());
        tasks.push(
            tokio::spawn(watch_heartbeat(
                members[0].name.clone(),
                generation,
                heard,
                events,
            ))
            .abort_handle(),
        );
        let control_writer = tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
            loop {
                let msg = tokio::select! {
                    m = control_rx.recv() => match m { Some(m) => m, None => return },
                    _ = tick.tick() => Control::Pong,
                };
                if write.write_all(&wire::control_frame(&msg)).await.is_err()
                    || matches!(msg, Control::Shutdown { .. })
                {
                    return;
                }
            }
        });
        Ok(Cluster {
            me,
            members,
            generation,
            rollback_to,
            resilient,
            data_out,
            control_out,
            control_writer,
            tasks,
        })
    }
}

/// True if the peer closed this connection (a non-blocking peek sees EOF).
/// (A joiner sends nothing between `Join` and `Welcome`, so no data is lost.)
fn connection_closed(read: &OwnedReadHalf) -> bool {
    let mut byte = [0u8; 1];
    match read.try_read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// The initializer's control listener once the cluster has formed: a
/// member that restarted is a lost member (recovery re-forms the cluster,
/// and the member's retry then joins it); anyone else is refused with the
/// reason.
async fn guard_control(
    listener: Arc<TcpListener>,
    members: Vec<String>,
    generation: u64,
    resilient: bool,
    events: mpsc::Sender<Event>,
) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let (mut read, mut write) = stream.into_split();
        let mut buf = BytesMut::new();
        let join = tokio::time::timeout(
            FORMATION_STEP,
            read_control(&mut read, &mut buf, &format!("the worker at {peer}")),
        )
        .await;
        let Ok(Ok(Control::Join { name, .. })) = join else {
            continue;
        };
        let reason = if members.contains(&name) && resilient {
            let why = "it restarted and asks to rejoin".to_string();
            let _ = events
                .send(Event::PeerLost {
                    name,
                    generation,
                    why,
                    control: true,
                })
                .await;
            continue;
        } else if members.contains(&name) {
            format!("worker '{name}' restarted, but the cluster runs without --run-with-resilience, so it can't rejoin; restart the whole cluster")
        } else {
            format!(
                "the cluster already has its {} workers ({}); a worker named '{name}' can't join: restart a member with its original command, or start a new cluster with a larger --worker-count",
                members.len(),
                members.join(", ")
            )
        };
        eprintln!("quoll: initializer: refused {peer}: {reason}");
        let _ = send_control(&mut write, &Control::Refused { reason, retry: false }).await;
    }
}

fn m_name_of(members: &[Member], i: usize) -> String {
    members[i].name.clone()
}

fn now_millis() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Reports the peer lost once nothing was heard from it for
/// [`HEARTBEAT_TIMEOUT`].
async fn watch_heartbeat(
    peer: String,
    generation: u64,
    heard: Arc<AtomicU64>,
    events: mpsc::Sender<Event>,
) {
    heard.store(now_millis(), Ordering::Relaxed);
    loop {
        tokio::time::sleep(HEARTBEAT_EVERY).await;
        let silent = now_millis().saturating_sub(heard.load(Ordering::Relaxed));
        if silent >= HEARTBEAT_TIMEOUT.as_millis() as u64 {
            let why = format!(
                "no heartbeat for {:.1} s (the process may be hung or stopped)",
                silent as f64 / 1000.0
            );
            let _ = events
                .send(Event::PeerLost {
                    name: peer,
                    generation,
                    why,
                    control: true,
                })
                .await;
            return;
        }
    }
}

/// One control link after formation.
struct ControlLink {
    from: usize,
    peer: String,
    generation: u64,
    events: mpsc::Sender<Event>,
    heard: Arc<AtomicU64>,
}

impl ControlLink {
    /// Reads control messages and hands them to the executor. On the
    /// initializer a worker's `Shutdown` request is passed on to everyone
    /// (`relay`).
    async fn read(
        self,
        mut read: OwnedReadHalf,
        mut buf: BytesMut,
        relay: Option<mpsc::Sender<Control>>,
    ) {
        loop {
            let frame = read_frame(&mut read, &mut buf).await;
            self.heard.store(now_millis(), Ordering::Relaxed);
            match frame {
                Ok(Some(WireFrame::Control(Control::Ping | Control::Pong))) => {}
                Ok(Some(WireFrame::Control(Control::Shutdown { reason }))) => {
                    if let Some(relay) = &relay {
                        let _ = relay
                            .send(Control::Shutdown {
                                reason: reason.clone(),
                            })
                            .await;
                    }
                    let _ = self
                        .events
                        .send(Event::Shutdown {
                            reason,
                            from_cluster: true,
                        })
                        .await;
                }
                Ok(Some(WireFrame::Control(msg))) => {
                    let _ = self
                        .events
                        .send(Event::Control {
                            from: self.from,
                            generation: self.generation,
                            msg,
                        })
                        .await;
                }
                Ok(Some(other)) => eprintln!(
                    "quoll: unexpected {other:?} on the control link from '{}'",
                    self.peer
                ),
                Ok(None) => {
                    let why = "its control link closed".into();
                    let _ = self
                        .events
                        .send(Event::PeerLost {
                            name: self.peer,
                            generation: self.generation,
                            why,
                            control: true,
                        })
                        .await;
                    return;
                }
                Err(e) => {
                    let why = format!("its control link failed: {e}");
                    let _ = self
                        .events
                        .send(Event::PeerLost {
                            name: self.peer,
                            generation: self.generation,
                            why,
                            control: true,
                        })
                        .await;
                    return;
                }
            }
        }
    }
}

/// Opens a data link to every other member and accepts one from each;
/// returns when all are up. Inbound links feed the executor's inbox.
async fn open_data_links(
    my_name: &str,
    me: usize,
    members: &[Member],
    listener: Arc<TcpListener>,
    generation: u64,
    events: mpsc::Sender<Event>,
    tasks: &mut Vec<AbortHandle>,
) -> Result<Vec<Option<mpsc::Sender<Vec<u8>>>>> {
    let index: Arc<HashMap<String, usize>> = Arc::new(
        members
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.clone(), i))
            .collect(),
    );
    let expected = members.len() - 1;
    let (up_tx, mut up_rx) = mpsc::channel::<AbortHandle>(members.len().max(1));
    let acceptor = {
        let index = index.clone();
        let events = events.clone();
        tokio::spawn(async move {
            let mut accepted = 0;
            while accepted < expected {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (mut read, write) = stream.into_split();
                let mut buf = BytesMut::new();
                match read_control(&mut read, &mut buf, &format!("data link from {peer}")).await {
                    Ok(Control::DataHello {
                        from,
                        generation: g,
                    }) if g == generation => match index.get(&from) {
                        Some(&i) => {
                            accepted += 1;
                            let events = events.clone();
                            let task = tokio::spawn(async move {
                                let _keep_open = write;
                                read_data_link(i, from, generation, read, buf, events).await
                            });
                            let _ = up_tx.send(task.abort_handle()).await;
                        }
                        None => eprintln!(
                            "quoll: data link from unknown worker '{from}' ({peer}) refused"
                        ),
                    },
                    Ok(Control::DataHello {
                        from,
                        generation: g,
                    }) => {
                        eprintln!("quoll: data link from '{from}' of generation {g} refused: the cluster is at generation {generation}")
                    }
                    Ok(other) => {
                        eprintln!("quoll: data link from {peer} began with {other:?}; refused")
                    }
                    Err(e) => eprintln!("quoll: {e}"),
                }
            }
        })
    };
    tasks.push(acceptor.abort_handle());
    let mut data_out = Vec::with_capacity(members.len());
    for (i, m) in members.iter().enumerate() {
        if i == me {
            data_out.push(None);
            continue;
        }
        let stream = loop {
            match TcpStream::connect(&m.data_addr).await {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let _ = stream.set_nodelay(true);
        let (read, mut write) = stream.into_split();
        send_control(
            &mut write,
            &Control::DataHello {
                from: my_name.to_string(),
                generation,
            },
        )
        .await?;
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
        let peer = m.name.clone();
        let task = tokio::spawn(async move {
            let _keep_open = read;
            while let Some(frame) = rx.recv().await {
                if let Err(e) = write.write_all(&frame).await {
                    eprintln!("quoll: data link to worker '{peer}' failed: {e}");
                    return;
                }
            }
        });
        tasks.push(task.abort_handle());
        data_out.push(Some(tx));
    }
    for _ in 0..expected {
        tasks.push(up_rx.recv().await.ok_or("data link acceptor stopped")?);
    }
    Ok(data_out)
}

async fn read_data_link(
    from: usize,
    name: String,
    generation: u64,
    mut read: OwnedReadHalf,
    mut buf: BytesMut,
    events: mpsc::Sender<Event>,
) {
    loop {
        let event = match read_frame(&mut read, &mut buf).await {
            Ok(Some(WireFrame::Data(body))) => Event::PeerData { from, body },
            Ok(Some(WireFrame::Barrier {
                generation: g,
                checkpoint,
            })) => Event::PeerBarrier {
                from,
                generation: g,
                checkpoint,
            },
            Ok(Some(WireFrame::Control(c))) => {
                eprintln!("quoll: unexpected {c:?} on the data link from '{name}'");
                continue;
            }
            Ok(None) => Event::PeerLost {
                name: name.clone(),
                generation,
                why: "its data link closed".into(),
                control: false,
            },
            Err(e) => Event::PeerLost {
                name: name.clone(),
                generation,
                why: format!("its data link failed: {e}"),
                control: false,
            },
        };
        let last = matches!(event, Event::PeerLost { .. });
        if events.send(event).await.is_err() || last {
            return;
        }
    }
}
