//! Cluster formation and the links between workers (spec 8.2).
//!
//! Formation, in order:
//! 1. The initializer listens on `--control` and `--data`. Every other
//!    worker binds its data listener (`--my-data`, else an ephemeral port on
//!    the address it reaches the initializer from), connects to the
//!    initializer's control address (retrying, and saying so) and sends
//!    `Join { name, data_addr, fingerprint }`.
//! 2. The initializer refuses duplicate names, a different application
//!    (fingerprint) and workers beyond `--worker-count`; once
//!    `worker_count - 1` have joined it sends everyone `Welcome { members }`:
//!    the initializer first, then the others sorted by name. A worker's
//!    index in that list is its place in the key-group map.
//! 3. Every worker opens one data link to every other (a one-way link per
//!    ordered pair, starting with `DataHello`) and accepts one from each.
//!    With all of them up it sends `LinksUp`; the initializer, with all
//!    `LinksUp` and its own links up, sends `Start`, and everyone prints the
//!    ready lines.
//!
//! After formation the control links (a star around the initializer) carry
//! `Shutdown`; data links carry batches (see `quoll_core::wire`). A link
//! that closes outside a shutdown is reported as a lost worker.

use crate::io::Event;
use bytes::BytesMut;
use quoll_core::wire::{self, Control, Member, WireFrame};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How a worker takes part in formation.
pub struct ClusterConfig {
    pub name: String,
    pub initializer: bool,
    pub worker_count: usize,
    /// Initializer: its control listen address; others: the initializer's.
    pub control: String,
    /// Initializer: `--data`; others: `--my-data` (optional).
    pub data: Option<String>,
    pub fingerprint: u64,
}

/// The formed cluster, as one worker holds it.
pub struct Cluster {
    pub me: usize,
    pub members: Vec<Member>,
    pub generation: u64,
    /// Per worker index: the writer of the data link to it (`None` for me).
    pub data_out: Vec<Option<mpsc::Sender<Vec<u8>>>>,
    /// Control messages to send: to the initializer, or (on the
    /// initializer) to every other worker.
    pub control_out: mpsc::Sender<Control>,
    /// The task writing `control_out`; it ends after writing a `Shutdown`.
    pub control_writer: tokio::task::JoinHandle<()>,
}

type Result<T> = std::result::Result<T, String>;

const CONNECT_RETRY: Duration = Duration::from_millis(500);
const FORMATION_TIMEOUT: Duration = Duration::from_secs(120);

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
    match read_frame(read, buf).await? {
        Some(WireFrame::Control(c)) => Ok(c),
        Some(WireFrame::Data(_)) => Err(format!("{peer} sent data before formation finished")),
        None => Err(format!("{peer} closed the connection during cluster formation")),
    }
}

async fn send_control(write: &mut OwnedWriteHalf, msg: &Control) -> Result<()> {
    write.write_all(&wire::control_frame(msg)).await.map_err(|e| e.to_string())
}

/// Forms the cluster (blocking until `Start`) and spawns the link tasks.
pub async fn form(cfg: ClusterConfig, events: mpsc::Sender<Event>) -> Result<Cluster> {
    tokio::time::timeout(FORMATION_TIMEOUT, form_inner(cfg, events))
        .await
        .map_err(|_| format!("the cluster did not form within {} s", FORMATION_TIMEOUT.as_secs()))?
}

async fn form_inner(cfg: ClusterConfig, events: mpsc::Sender<Event>) -> Result<Cluster> {
    if cfg.initializer {
        form_as_initializer(cfg, events).await
    } else {
        form_as_joiner(cfg, events).await
    }
}

async fn form_as_initializer(cfg: ClusterConfig, events: mpsc::Sender<Event>) -> Result<Cluster> {
    let control = TcpListener::bind(&cfg.control)
        .await
        .map_err(|e| format!("can't listen on --control {}: {e} (is another initializer running?)", cfg.control))?;
    let data_addr = cfg.data.clone().ok_or("the initializer needs --data HOST:PORT")?;
    let data = TcpListener::bind(&data_addr).await.map_err(|e| format!("can't listen on --data {data_addr}: {e}"))?;
    println!(
        "quoll: initializer waiting for {} more worker(s) on {}",
        cfg.worker_count - 1,
        cfg.control
    );
    let mut joined: Vec<(Member, OwnedReadHalf, OwnedWriteHalf, BytesMut)> = Vec::new();
    while joined.len() + 1 < cfg.worker_count {
        let (stream, peer) = control.accept().await.map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let (mut read, mut write) = stream.into_split();
        let mut buf = BytesMut::new();
        let msg = match read_control(&mut read, &mut buf, &format!("the worker at {peer}")).await {
            Ok(m) => m,
            Err(e) => {
                eprintln!("quoll: initializer: {e}");
                continue;
            }
        };
        let Control::Join { name, data_addr, fingerprint } = msg else {
            eprintln!("quoll: initializer: {peer} sent {msg:?} instead of Join; ignored");
            continue;
        };
        let refusal = if fingerprint != cfg.fingerprint {
            Some(format!(
                "worker '{name}' runs a different application (topology fingerprint {fingerprint:#x}, the initializer's is {:#x}); start every worker with the same app and app version",
                cfg.fingerprint
            ))
        } else if name == cfg.name || joined.iter().any(|(m, ..)| m.name == name) {
            Some(format!("a worker named '{name}' is already in the cluster; give each worker a unique --name"))
        } else {
            None
        };
        if let Some(reason) = refusal {
            eprintln!("quoll: initializer: refused {peer}: {reason}");
            let _ = send_control(&mut write, &Control::Refused { reason }).await;
            continue;
        }
        println!("quoll: initializer: worker '{name}' joined ({}/{})", joined.len() + 2, cfg.worker_count);
        joined.push((Member { name, data_addr }, read, write, buf));
    }
    joined.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    let mut members = vec![Member { name: cfg.name.clone(), data_addr: data_addr.clone() }];
    members.extend(joined.iter().map(|(m, ..)| m.clone()));
    let generation = 0;
    for (_, _, write, _) in joined.iter_mut() {
        send_control(write, &Control::Welcome { members: members.clone(), generation }).await?;
    }
    let data_out = open_data_links(&cfg.name, 0, &members, data, generation, events.clone()).await?;
    for (m, read, _, buf) in joined.iter_mut() {
        match read_control(read, buf, &format!("worker '{}'", m.name)).await? {
            Control::LinksUp { .. } => {}
            other => return Err(format!("worker '{}' sent {other:?} instead of LinksUp", m.name)),
        }
    }
    for (_, _, write, _) in joined.iter_mut() {
        send_control(write, &Control::Start { generation }).await?;
    }
    // The control star: a reader per worker, one writer task that broadcasts.
    let (control_out, mut control_rx) = mpsc::channel::<Control>(16);
    let mut writers = Vec::new();
    for (m, read, write, buf) in joined {
        writers.push(write);
        tokio::spawn(read_control_link(m.name, read, buf, events.clone(), Some(control_out.clone())));
    }
    let control_writer = tokio::spawn(async move {
        while let Some(msg) = control_rx.recv().await {
            let frame = wire::control_frame(&msg);
            for w in writers.iter_mut() {
                let _ = w.write_all(&frame).await;
            }
            if matches!(msg, Control::Shutdown { .. }) {
                return;
            }
        }
    });
    Ok(Cluster { me: 0, members, generation, data_out, control_out, control_writer })
}

async fn form_as_joiner(cfg: ClusterConfig, events: mpsc::Sender<Event>) -> Result<Cluster> {
    let mut warned = false;
    let stream = loop {
        match TcpStream::connect(&cfg.control).await {
            Ok(s) => break s,
            Err(e) => {
                if !warned {
                    println!(
                        "quoll: worker '{}': can't reach the initializer at {} ({e}); retrying every {} ms",
                        cfg.name,
                        cfg.control,
                        CONNECT_RETRY.as_millis()
                    );
                    warned = true;
                }
                tokio::time::sleep(CONNECT_RETRY).await;
            }
        }
    };
    let _ = stream.set_nodelay(true);
    let data_bind = match &cfg.data {
        Some(a) => a.clone(),
        None => format!("{}:0", stream.local_addr().map_err(|e| e.to_string())?.ip()),
    };
    let data = TcpListener::bind(&data_bind).await.map_err(|e| format!("can't listen on --my-data {data_bind}: {e}"))?;
    let data_addr = data.local_addr().map_err(|e| e.to_string())?.to_string();
    let (mut read, mut write) = stream.into_split();
    let mut buf = BytesMut::new();
    send_control(&mut write, &Control::Join { name: cfg.name.clone(), data_addr, fingerprint: cfg.fingerprint }).await?;
    println!("quoll: worker '{}': joined the initializer at {}; waiting for the other workers", cfg.name, cfg.control);
    let (members, generation) = match read_control(&mut read, &mut buf, "the initializer").await? {
        Control::Welcome { members, generation } => (members, generation),
        Control::Refused { reason } => return Err(format!("the initializer refused this worker: {reason}")),
        other => return Err(format!("the initializer sent {other:?} instead of Welcome")),
    };
    let me = members.iter().position(|m| m.name == cfg.name).ok_or("the initializer's member list does not name this worker")?;
    let data_out = open_data_links(&cfg.name, me, &members, data, generation, events.clone()).await?;
    send_control(&mut write, &Control::LinksUp { name: cfg.name.clone() }).await?;
    match read_control(&mut read, &mut buf, "the initializer").await? {
        Control::Start { .. } => {}
        other => return Err(format!("the initializer sent {other:?} instead of Start")),
    }
    let (control_out, mut control_rx) = mpsc::channel::<Control>(16);
    tokio::spawn(read_control_link(members[0].name.clone(), read, buf, events, None));
    let control_writer = tokio::spawn(async move {
        while let Some(msg) = control_rx.recv().await {
            if write.write_all(&wire::control_frame(&msg)).await.is_err() || matches!(msg, Control::Shutdown { .. }) {
                return;
            }
        }
    });
    Ok(Cluster { me, members, generation, data_out, control_out, control_writer })
}

/// Reads one control link after formation. On the initializer a worker's
/// `Shutdown` request is passed on to everyone (`relay`).
async fn read_control_link(
    peer: String,
    mut read: OwnedReadHalf,
    mut buf: BytesMut,
    events: mpsc::Sender<Event>,
    relay: Option<mpsc::Sender<Control>>,
) {
    loop {
        match read_frame(&mut read, &mut buf).await {
            Ok(Some(WireFrame::Control(Control::Shutdown { reason }))) => {
                if let Some(relay) = &relay {
                    let _ = relay.send(Control::Shutdown { reason: reason.clone() }).await;
                }
                let _ = events.send(Event::Shutdown { reason, from_cluster: true }).await;
            }
            Ok(Some(other)) => eprintln!("quoll: unexpected message on the control link from '{peer}': {other:?}"),
            Ok(None) => {
                let _ = events.send(Event::PeerLost { name: peer, why: "control link closed".into() }).await;
                return;
            }
            Err(e) => {
                let _ = events.send(Event::PeerLost { name: peer, why: format!("control link failed: {e}") }).await;
                return;
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
    listener: TcpListener,
    generation: u64,
    events: mpsc::Sender<Event>,
) -> Result<Vec<Option<mpsc::Sender<Vec<u8>>>>> {
    let index: Arc<HashMap<String, usize>> = Arc::new(members.iter().enumerate().map(|(i, m)| (m.name.clone(), i)).collect());
    let expected = members.len() - 1;
    let (up_tx, mut up_rx) = mpsc::channel::<usize>(members.len().max(1));
    {
        let index = index.clone();
        let events = events.clone();
        tokio::spawn(async move {
            let mut accepted = 0;
            while accepted < expected {
                let Ok((stream, peer)) = listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                let (mut read, _write) = stream.into_split();
                let mut buf = BytesMut::new();
                match read_control(&mut read, &mut buf, &format!("data link from {peer}")).await {
                    Ok(Control::DataHello { from, .. }) => match index.get(&from) {
                        Some(&i) => {
                            accepted += 1;
                            let _ = up_tx.send(i).await;
                            let name = from.clone();
                            let events = events.clone();
                            tokio::spawn(async move {
                                let _keep_open = _write;
                                read_data_link(i, name, read, buf, events).await
                            });
                        }
                        None => eprintln!("quoll: data link from unknown worker '{from}' ({peer}) refused"),
                    },
                    Ok(other) => eprintln!("quoll: data link from {peer} began with {other:?}; refused"),
                    Err(e) => eprintln!("quoll: {e}"),
                }
            }
        });
    }
    let mut data_out = Vec::with_capacity(members.len());
    for (i, m) in members.iter().enumerate() {
        if i == me {
            data_out.push(None);
            continue;
        }
        let stream = loop {
            match TcpStream::connect(&m.data_addr).await {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let _ = stream.set_nodelay(true);
        let (_read, mut write) = stream.into_split();
        send_control(&mut write, &Control::DataHello { from: my_name.to_string(), generation }).await?;
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
        let peer = m.name.clone();
        tokio::spawn(async move {
            let _keep_open = _read;
            while let Some(frame) = rx.recv().await {
                if let Err(e) = write.write_all(&frame).await {
                    eprintln!("quoll: data link to worker '{peer}' failed: {e}");
                    return;
                }
            }
        });
        data_out.push(Some(tx));
    }
    for _ in 0..expected {
        up_rx.recv().await.ok_or("data link acceptor stopped")?;
    }
    Ok(data_out)
}

async fn read_data_link(from: usize, name: String, mut read: OwnedReadHalf, mut buf: BytesMut, events: mpsc::Sender<Event>) {
    loop {
        match read_frame(&mut read, &mut buf).await {
            Ok(Some(WireFrame::Data(body))) => {
                if events.send(Event::PeerData { from, body }).await.is_err() {
                    return;
                }
            }
            Ok(Some(WireFrame::Control(c))) => eprintln!("quoll: unexpected {c:?} on the data link from '{name}'"),
            Ok(None) => {
                let _ = events.send(Event::PeerLost { name, why: "data link closed".into() }).await;
                return;
            }
            Err(e) => {
                let _ = events.send(Event::PeerLost { name, why: format!("data link failed: {e}") }).await;
                return;
            }
        }
    }
}
