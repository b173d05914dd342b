//! One worker process: wires the plan to sockets, forms the cluster, runs
//! the executor loop.
//!
//! `run_worker` is called by `quoll.worker` on the Python main thread after
//! the app has been imported and `application_setup` has run. That thread
//! becomes the executor; a small tokio runtime carries the I/O. Start-up
//! binds every listener before the ready lines are printed, so a harness
//! that waits for "Application is ready to work!" can connect at once.
//!
//! The event loop serves two inboxes: peers and control first, then source
//! input. While frames for a slow worker pile up beyond
//! [`crate::executor::CONGESTED_BYTES`] it takes no source input, but it keeps
//! serving peers, so a cycle of workers waiting on each other drains.

use crate::app::{build_plan, SinkSpec, SourceSpec};
use crate::cluster::{self, ClusterConfig};
use crate::codec::Codec;
use crate::executor::{Executor, Router};
use crate::io::{self, Event, ExternalView, IoStats};
use crate::user_errors::{Fatal, OnUserError, UserErrors};
use pyo3::exceptions::{PyRuntimeError, PySystemExit};
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use quoll_core::wire::Control;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Worker settings, from the command line (parsed in Python).
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub struct WorkerConfig {
    pub name: String,
    pub external: Option<String>,
    pub on_user_error: String,
    pub max_frame_size: u64,
    pub batch_size: usize,
    pub cluster_initializer: bool,
    pub worker_count: usize,
    pub control: Option<String>,
    pub data: Option<String>,
    pub my_data: Option<String>,
}

/// Events taken from an inbox per round before outputs are flushed.
const EVENTS_PER_ROUND: usize = 64;
/// How long a stopping worker waits for its sinks to write what they hold.
const SINK_DRAIN: Duration = Duration::from_secs(10);

fn bind(rt: &tokio::runtime::Runtime, addr: &str, what: &str) -> Result<tokio::net::TcpListener, String> {
    rt.block_on(tokio::net::TcpListener::bind(addr)).map_err(|e| format!("{what}: can't listen on {addr}: {e}"))
}

/// Runs a worker until a clean shutdown. Raises `SystemExit(2)` on a set-up
/// error and `RuntimeError` on a fatal error while running.
#[pyfunction]
#[pyo3(signature = (config, app, codec=None))]
pub fn run_worker(py: Python<'_>, config: WorkerConfig, app: &Bound<'_, PyTuple>, codec: Option<(Py<PyAny>, Py<PyAny>)>) -> PyResult<()> {
    let exit = |msg: String| -> PyErr {
        eprintln!("quoll: error: worker '{}': {msg}", config.name);
        PySystemExit::new_err(2)
    };
    let plan = build_plan(py, app).map_err(|e| exit(e.to_string()))?;
    let fingerprint = plan.topology.fingerprint();
    let codec = match codec {
        Some((s, d)) => Codec::user(s, d),
        None => Codec::default_codec(py)?,
    };
    let worker: Arc<str> = Arc::from(config.name.as_str());
    let policy = if config.on_user_error == "fail" { OnUserError::Fail } else { OnUserError::Skip };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("quoll-io")
        .enable_all()
        .build()
        .map_err(|e| exit(format!("can't start the I/O runtime: {e}")))?;
    let (src_tx, mut src_rx) = mpsc::channel::<Event>(64);
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<Event>(256);
    let stats = Arc::new(IoStats::default());

    // Sources: bind now so errors are reported before "ready".
    let mut source_ids = Vec::new();
    for (index, src) in plan.sources.iter().enumerate() {
        source_ids.push(src.name.clone());
        match &src.spec {
            SourceSpec::Tcp { host, port, header, valid, parallelism, .. } => {
                if !*valid {
                    continue;
                }
                let addr = format!("{host}:{port}");
                let listener = bind(&rt, &addr, &format!("source '{}'", src.name)).map_err(exit)?;
                rt.spawn(io::run_tcp_source(
                    worker.clone(),
                    index,
                    src.name.clone(),
                    listener,
                    *header,
                    config.max_frame_size,
                    *parallelism,
                    src_tx.clone(),
                    stats.clone(),
                ));
            }
            SourceSpec::File { path, header, .. } => {
                rt.spawn(io::run_file_source(
                    worker.clone(),
                    index,
                    src.name.clone(),
                    path.clone(),
                    *header,
                    config.max_frame_size,
                    src_tx.clone(),
                    stats.clone(),
                ));
            }
            SourceSpec::Gen { .. } => {}
        }
    }
    drop(src_tx);

    // Sinks: one writer task each.
    let mut sink_txs = Vec::new();
    let mut sink_tasks = Vec::new();
    for sink in &plan.sinks {
        let (stx, srx) = mpsc::channel(64);
        sink_txs.push(stx);
        let task = match &sink.spec {
            SinkSpec::Tcp { host, port } => {
                rt.spawn(io::run_tcp_sink(worker.clone(), sink.label.clone(), format!("{host}:{port}"), srx, stats.clone()))
            }
            SinkSpec::File { path } => {
                let file = rt
                    .block_on(tokio::fs::File::create(path))
                    .map_err(|e| exit(format!("{}: can't create {path}: {e}", sink.label)))?;
                rt.spawn(io::run_file_sink(worker.clone(), sink.label.clone(), file, srx))
            }
        };
        sink_tasks.push(task);
    }

    let view = Arc::new(ExternalView {
        ready: AtomicBool::new(false),
        processing: AtomicBool::new(false),
        worker_names: Mutex::new(vec![config.name.clone()]),
        source_ids,
        report: Mutex::new("{}".into()),
    });
    if let Some(addr) = &config.external {
        let listener = bind(&rt, addr, "external channel (--external)").map_err(exit)?;
        rt.spawn(io::run_external(worker.clone(), listener, view.clone(), ctl_tx.clone()));
    }

    let errors = UserErrors::new(&config.name, policy);
    let mut ex = Executor::new(py, plan, sink_txs, errors, rt.handle().clone())?;

    // Cluster formation, if this worker is part of one.
    let clustered = config.worker_count > 1 || !config.cluster_initializer;
    let mut cluster = None;
    if clustered {
        let control = config.control.clone().ok_or_else(|| exit("a cluster needs --control HOST:PORT".into()))?;
        let cfg = ClusterConfig {
            name: config.name.clone(),
            initializer: config.cluster_initializer,
            worker_count: config.worker_count,
            control,
            data: if config.cluster_initializer { config.data.clone() } else { config.my_data.clone() },
            fingerprint,
        };
        let events = ctl_tx.clone();
        let formed = py.detach(|| rt.block_on(cluster::form(cfg, events))).map_err(exit)?;
        let names: Vec<String> = formed.members.iter().map(|m| m.name.clone()).collect();
        if let Ok(mut n) = view.worker_names.lock() {
            *n = names.clone();
        }
        ex.router = Some(Router::new(formed.me, names, codec, formed.generation, formed.data_out.clone()));
        cluster = Some(formed);
    }
    drop(ctl_tx);

    view.ready.store(true, Ordering::SeqCst);
    view.processing.store(true, Ordering::SeqCst);
    if config.cluster_initializer {
        println!("Application has successfully initialized.");
    }
    println!("|~~ INIT PHASE III: Application is ready to work! ~~|");

    let mut inbox = Inbox { src: &mut src_rx, src_open: true, ctl: &mut ctl_rx };
    let result = event_loop(py, &mut ex, &mut inbox, &rt, &view, &stats, config.batch_size.max(1));
    view.processing.store(false, Ordering::SeqCst);

    // A requested stop goes to the whole cluster.
    if let (Some(c), Ok(Stop::Requested(reason))) = (&cluster, &result) {
        let _ = c.control_out.try_send(Control::Shutdown { reason: reason.clone() });
    }
    ex.flush_peers();
    ex.flush_sinks(py);
    let dropped = ex.errors.total();
    drop(ex);
    py.detach(|| {
        rt.block_on(async {
            let _ = tokio::time::timeout(SINK_DRAIN, async {
                for t in sink_tasks {
                    let _ = t.await;
                }
                if let Some(c) = cluster {
                    drop(c.control_out);
                    let _ = c.control_writer.await;
                }
            })
            .await;
        });
    });
    rt.shutdown_timeout(Duration::from_millis(100));
    if dropped > 0 {
        println!("quoll: worker '{}': {dropped} messages were dropped after errors", config.name);
    }
    result.map(|_| ()).map_err(|Fatal(m)| PyRuntimeError::new_err(m))
}

/// Why the event loop ended.
enum Stop {
    /// Shutdown asked here (external channel, Ctrl-C): tell the cluster.
    Requested(String),
    /// The cluster told this worker to stop.
    Relayed,
}

struct Inbox<'a> {
    src: &'a mut mpsc::Receiver<Event>,
    src_open: bool,
    ctl: &'a mut mpsc::Receiver<Event>,
}

/// Handles one event; `Some(stop)` ends the loop.
fn handle(py: Python<'_>, ex: &mut Executor, e: Event, stopping_peers: &mut bool) -> Result<Option<Stop>, Fatal> {
    match e {
        Event::Frames { source, frames, .. } => ex.on_frames(py, source, frames)?,
        Event::PeerData { from, body } => ex.on_peer_data(py, from, &body)?,
        Event::PeerLost { name, why } => {
            if !*stopping_peers {
                eprintln!("quoll: error: lost worker '{name}': {why}; messages for its keys are dropped until it is back");
            }
        }
        Event::Shutdown { reason, from_cluster } => {
            println!("quoll: stopping: {reason}");
            *stopping_peers = true;
            return Ok(Some(if from_cluster { Stop::Relayed } else { Stop::Requested(reason) }));
        }
    }
    Ok(None)
}

fn event_loop(
    py: Python<'_>,
    ex: &mut Executor,
    inbox: &mut Inbox<'_>,
    rt: &tokio::runtime::Runtime,
    view: &ExternalView,
    stats: &IoStats,
    batch_size: usize,
) -> Result<Stop, Fatal> {
    let mut next_timer: Option<Instant> = ex.on_timers(py)?;
    let mut last_report = Instant::now();
    let mut stopping_peers = false;
    loop {
        if py.check_signals().is_err() {
            return Ok(Stop::Requested("interrupted".into()));
        }
        let congested = ex.router.as_ref().is_some_and(|r| r.congested());
        let mut busy = false;
        for _ in 0..EVENTS_PER_ROUND {
            let Ok(e) = inbox.ctl.try_recv() else { break };
            busy = true;
            if let Some(stop) = handle(py, ex, e, &mut stopping_peers)? {
                return Ok(stop);
            }
        }
        if !congested && inbox.src_open {
            for _ in 0..EVENTS_PER_ROUND {
                match inbox.src.try_recv() {
                    Ok(e) => {
                        busy = true;
                        if let Some(stop) = handle(py, ex, e, &mut stopping_peers)? {
                            return Ok(stop);
                        }
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        inbox.src_open = false;
                        break;
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                }
            }
            if ex.generating() {
                busy = true;
                ex.run_generators(py, batch_size)?;
            }
        }
        ex.flush_peers();
        ex.flush_sinks(py);
        if next_timer.is_none_or(|t| Instant::now() >= t) {
            next_timer = ex.on_timers(py)?;
        }
        ex.errors.maybe_summarise();
        if last_report.elapsed() >= Duration::from_millis(500) {
            last_report = Instant::now();
            publish_report(ex, view, stats);
        }
        if busy {
            continue;
        }
        // Idle: wait for input, the next timer, or a slow link, without the GIL.
        let mut wait = next_timer
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_millis(200))
            .min(Duration::from_millis(200));
        if ex.router.as_ref().is_some_and(|r| r.has_pending()) {
            wait = wait.min(Duration::from_millis(1));
        }
        let take_src = !congested && inbox.src_open;
        let event = py.detach(|| {
            rt.block_on(async {
                tokio::select! {
                    biased;
                    e = inbox.ctl.recv() => e,
                    e = inbox.src.recv(), if take_src => {
                        if e.is_none() { inbox.src_open = false; }
                        e
                    }
                    _ = tokio::time::sleep(wait) => None,
                }
            })
        });
        if let Some(e) = event {
            if let Some(stop) = handle(py, ex, e, &mut stopping_peers)? {
                return Ok(stop);
            }
        }
    }
}

fn publish_report(ex: &Executor, view: &ExternalView, stats: &IoStats) {
    if let Ok(mut r) = view.report.lock() {
        *r = format!(
            "{{\"messages_in\":{},\"shipped\":{},\"frames_in\":{},\"bad_frames\":{},\"sink_dropped\":{},\"dropped\":{},\"dropped_by_place\":{}}}",
            ex.messages_in,
            ex.router.as_ref().map_or(0, |r| r.shipped),
            stats.frames_in.load(Ordering::Relaxed),
            stats.bad_frames.load(Ordering::Relaxed),
            stats.sink_dropped.load(Ordering::Relaxed),
            ex.errors.total(),
            ex.errors.counts_json()
        );
    }
}
