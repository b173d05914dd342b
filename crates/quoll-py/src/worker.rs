//! One worker process: wires the plan to sockets, forms the cluster, runs
//! the executor loop, takes part in checkpoints and recovery.
//!
//! `run_worker` is called by `quoll.worker` on the Python main thread after
//! the app has been imported and `application_setup` has run. That thread
//! becomes the executor; a small tokio runtime carries the I/O. Start-up
//! binds every listener before the ready lines are printed, so a harness
//! that waits for "Application is ready to work!" can connect at once.
//!
//! The event loop serves two inboxes: peers and control first, then source
//! input. It takes no source input while a checkpoint's barriers are being
//! aligned, nor while frames for a slow worker pile up beyond
//! [`crate::executor::CONGESTED_BYTES`]; it keeps serving peers, so a cycle
//! of workers waiting on each other drains.
//!
//! With resilience, losing a worker (link closed, or silent past the
//! heartbeat timeout) makes the whole cluster re-form under a new
//! generation and roll back to the last committed checkpoint; a restarted
//! worker does the same from its files.

use crate::app::{build_plan, SinkSpec, SourceSpec};
use crate::checkpoint::{Alignment, Coordinator, Files, Image, WorkerCheckpoints};
use crate::cluster::{Cluster, ControlPlane, WelcomePlan};
use crate::codec::Codec;
use crate::connector_source::{self, ConnectorCommand, ConnectorSourceConfig};
use crate::executor::{Executor, Router, SourceProgress};
use crate::external_channel::{self, ExternalView};
use crate::io::{self, Event, IoStats, SinkCommand};
use crate::user_errors::{Fatal, OnUserError, UserErrors};
use pyo3::exceptions::{PyRuntimeError, PySystemExit};
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use quoll_core::length_header::LengthHeader;
use quoll_core::wire::{self, Control};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

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
    pub resilience: bool,
    pub resilience_dir: String,
    pub checkpoint_interval_ns: u64,
}

/// Events taken from an inbox per round before outputs are flushed.
const EVENTS_PER_ROUND: usize = 64;
/// A round of source input ends after this long, so checkpoints start on
/// time and control messages wait little, however slow the user code.
const ROUND_TIME: Duration = Duration::from_millis(20);
/// How long a stopping worker waits for its sinks to write what they hold.
const SINK_DRAIN: Duration = Duration::from_secs(10);

fn bind(
    rt: &tokio::runtime::Runtime,
    addr: &str,
    what: &str,
) -> Result<tokio::net::TcpListener, String> {
    rt.block_on(tokio::net::TcpListener::bind(addr))
        .map_err(|e| format!("{what}: can't listen on {addr}: {e}"))
}

/// A sink whose writer task is not started yet.
enum PendingSink {
    Tcp {
        label: String,
        addr: String,
        rx: mpsc::Receiver<SinkCommand>,
    },
    File {
        label: String,
        file: tokio::fs::File,
        rx: mpsc::Receiver<SinkCommand>,
    },
}

/// A file source's task, restarted at a checkpointed offset on rollback.
struct FileSource {
    index: usize,
    name: String,
    path: String,
    header: LengthHeader,
    task: Option<AbortHandle>,
}

/// A connector source's task, told about commits and rollbacks.
struct ConnectorHandle {
    index: usize,
    commands: mpsc::Sender<ConnectorCommand>,
}

/// Everything the event loop works with.
struct Worker<'a> {
    config: &'a WorkerConfig,
    worker: Arc<str>,
    rt: &'a tokio::runtime::Runtime,
    view: &'a ExternalView,
    stats: Arc<IoStats>,
    src_tx: mpsc::Sender<Event>,
    ctl_tx: mpsc::Sender<Event>,
    file_sources: Vec<FileSource>,
    connectors: Vec<ConnectorHandle>,
    /// Incarnation of the replayable sources: frames of older ones are dropped.
    source_epoch: u32,
    sinks: Vec<mpsc::Sender<SinkCommand>>,
    plane: Option<ControlPlane>,
    cluster: Option<Cluster>,
    checkpoints: Option<WorkerCheckpoints>,
    coordinator: Option<Coordinator>,
    generation: u64,
    stopping: bool,
    /// Initializer: the workers whose `Restored` has not come yet.
    awaiting_restored: Option<std::collections::BTreeSet<usize>>,
    /// The ready lines have been printed (they are printed once).
    announced: bool,
}

/// Runs a worker until a clean shutdown. Raises `SystemExit(2)` on a set-up
/// error and `RuntimeError` on a fatal error while running.
#[pyfunction]
#[pyo3(signature = (config, app, codec=None))]
pub fn run_worker(
    py: Python<'_>,
    config: WorkerConfig,
    app: &Bound<'_, PyTuple>,
    codec: Option<(Py<PyAny>, Py<PyAny>)>,
) -> PyResult<()> {
    let exit = |msg: String| -> PyErr {
        eprintln!("quoll: error: worker '{}': {msg}", config.name);
        PySystemExit::new_err(2)
    };
    let plan = build_plan(py, app).map_err(|e| exit(e.to_string()))?;
    let fingerprint = plan.topology.fingerprint();
    let app_name = plan.topology.app_name.clone();
    let codec = match codec {
        Some((s, d)) => Codec::user(s, d),
        None => Codec::default_codec(py)?,
    };
    let worker: Arc<str> = Arc::from(config.name.as_str());
    let policy = if config.on_user_error == "fail" {
        OnUserError::Fail
    } else {
        OnUserError::Skip
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("quoll-io")
        .enable_all()
        .build()
        .map_err(|e| exit(format!("can't start the I/O runtime: {e}")))?;
    let (src_tx, mut src_rx) = mpsc::channel::<Event>(64);
    // Peer batches are up to ~64 KiB: 128 of them bound what a fast peer can
    // queue here; beyond that its link stops being read (back-pressure).
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<Event>(128);
    let stats = Arc::new(IoStats::default());
    if config.resilience {
        println!("****RESILIENCE MODE is active****");
    }

    // Sources: bind now so errors are reported before "ready". File
    // sources start once it is known where they resume.
    let mut source_ids = Vec::new();
    let mut file_sources = Vec::new();
    let mut connectors = Vec::new();
    let first_epoch = 1;
    for (index, src) in plan.sources.iter().enumerate() {
        source_ids.push(src.name.clone());
        match &src.spec {
            SourceSpec::Tcp {
                host,
                port,
                header,
                valid,
                parallelism,
                ..
            } => {
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
            SourceSpec::File { path, header, .. } => file_sources.push(FileSource {
                index,
                name: src.name.clone(),
                path: path.replace("{worker}", &config.name),
                header: *header,
                task: None,
            }),
            SourceSpec::Connector {
                host,
                port,
                cookie,
                max_credits,
                refill_credits,
                ..
            } => {
                let addr = format!("{host}:{port}");
                let listener = bind(&rt, &addr, &format!("source '{}'", src.name)).map_err(exit)?;
                let (commands, rx) = mpsc::channel(64);
                let cfg = ConnectorSourceConfig {
                    name: src.name.clone(),
                    cookie: cookie.clone(),
                    max_credits: *max_credits,
                    refill_credits: *refill_credits,
                    max_frame_size: config.max_frame_size,
                    epoch: first_epoch,
                };
                rt.spawn(connector_source::run_connector_source(
                    worker.clone(),
                    index,
                    cfg,
                    listener,
                    src_tx.clone(),
                    rx,
                    config.resilience,
                ));
                connectors.push(ConnectorHandle { index, commands });
            }
            SourceSpec::Gen { .. } => {}
        }
    }

    // Sinks: files are opened now (an error is a set-up error); the writer
    // tasks start once nothing else in set-up can fail, so an early exit
    // never leaves one behind.
    let mut sink_txs = Vec::new();
    let mut pending_sinks = Vec::new();
    for sink in &plan.sinks {
        let (stx, srx) = mpsc::channel(64);
        sink_txs.push(stx);
        pending_sinks.push(match &sink.spec {
            SinkSpec::Tcp { host, port } => PendingSink::Tcp {
                label: sink.label.clone(),
                addr: format!("{host}:{port}"),
                rx: srx,
            },
            SinkSpec::File { path } => {
                let path = path.replace("{worker}", &config.name);
                let label = sink.label.replace("{worker}", &config.name);
                let file = rt
                    .block_on(
                        tokio::fs::OpenOptions::new()
                            .create(true)
                            .write(true)
                            .truncate(false)
                            .open(&path),
                    )
                    .map_err(|e| exit(format!("{label}: can't open {path}: {e}")))?;
                PendingSink::File {
                    label,
                    file,
                    rx: srx,
                }
            }
        });
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
        rt.spawn(external_channel::run_external(
            worker.clone(),
            listener,
            view.clone(),
            ctl_tx.clone(),
        ));
    }

    let errors = UserErrors::new(&config.name, policy);
    let sinks = sink_txs.clone();
    let mut ex = Executor::new(py, plan, sink_txs, codec, errors, rt.handle().clone())?;

    let clustered = config.worker_count > 1 || !config.cluster_initializer;
    let plane = if clustered {
        let control = config
            .control
            .clone()
            .ok_or_else(|| exit("a cluster needs --control HOST:PORT".into()))?;
        let data = if config.cluster_initializer {
            config.data.clone()
        } else {
            config.my_data.clone()
        };
        let bound = rt.block_on(ControlPlane::bind(
            config.name.clone(),
            config.cluster_initializer,
            config.worker_count.max(1),
            control,
            data,
            fingerprint,
        ));
        Some(bound.map_err(exit)?)
    } else {
        None
    };
    let files = Files {
        dir: PathBuf::from(&config.resilience_dir),
        app: app_name,
        worker: config.name.clone(),
    };
    let mut w = Worker {
        config: &config,
        worker: worker.clone(),
        rt: &rt,
        view: &view,
        stats: stats.clone(),
        src_tx,
        ctl_tx,
        file_sources,
        connectors,
        source_epoch: first_epoch,
        sinks,
        plane,
        cluster: None,
        checkpoints: None,
        coordinator: None,
        generation: 0,
        stopping: false,
        awaiting_restored: None,
        announced: false,
    };
    let had_files = config.resilience && files.exist(config.cluster_initializer);
    if config.resilience && config.cluster_initializer {
        let interval = Duration::from_nanos(config.checkpoint_interval_ns.max(1_000_000));
        w.coordinator = Some(Coordinator::open(&files, interval).map_err(exit)?);
    }
    if config.resilience {
        w.checkpoints = Some(WorkerCheckpoints::new(files));
        ex.enable_generators(false);
    }
    if had_files {
        println!("Attempting to recover...");
        println!("Recovering from recovery files!");
    }
    let sink_tasks: Vec<_> = pending_sinks
        .into_iter()
        .map(|p| match p {
            PendingSink::Tcp { label, addr, rx } => rt.spawn(io::run_tcp_sink(
                worker.clone(),
                label,
                addr,
                rx,
                stats.clone(),
            )),
            PendingSink::File { label, file, rx } => {
                rt.spawn(io::run_file_sink(worker.clone(), label, file, rx))
            }
        })
        .collect();
    if let Err(Fatal(m)) = w.start(py, &mut ex, Occasion::StartUp { had_files }) {
        // Let the sink writers finish before the runtime goes away.
        drop(w);
        drop(ex);
        let _ = py.detach(|| {
            rt.block_on(async { tokio::time::timeout(SINK_DRAIN, futures_join(sink_tasks)).await })
        });
        return Err(exit(m));
    }

    w.started();
    let mut inbox = Inbox {
        src: &mut src_rx,
        src_open: true,
        ctl: &mut ctl_rx,
    };
    let result = w.event_loop(py, &mut ex, &mut inbox);
    view.processing.store(false, Ordering::SeqCst);

    // A requested stop goes to the whole cluster.
    let clean = matches!(result, Ok(Stop::Requested(_)) | Ok(Stop::Relayed));
    if let (Some(c), Ok(Stop::Requested(reason))) = (&w.cluster, &result) {
        let _ = c.control_out.try_send(Control::Shutdown {
            reason: reason.clone(),
        });
    }
    ex.flush_peers();
    ex.flush_sinks(py);
    let dropped = ex.errors.total();
    drop(ex);
    let cluster = w.cluster.take();
    let checkpoints = w.checkpoints.take();
    drop(w);
    // Sink writers end once every sender is dropped (the executor's and the
    // worker's, both gone now) and what they hold is written.
    py.detach(|| {
        rt.block_on(async {
            let _ = tokio::time::timeout(SINK_DRAIN, async {
                futures_join(sink_tasks).await;
                if let Some(c) = cluster {
                    drop(c.control_out);
                    let _ = c.control_writer.await;
                }
            })
            .await;
        });
    });
    rt.shutdown_timeout(Duration::from_millis(500));
    if clean {
        if let Some(c) = checkpoints {
            if let Err(e) = c.files.remove_all(config.cluster_initializer) {
                eprintln!("quoll: error: worker '{}': clean shutdown could not remove its resilience files: {e}", config.name);
            }
        }
    }
    if dropped > 0 {
        println!(
            "quoll: worker '{}': {dropped} messages were dropped after errors",
            config.name
        );
    }
    result
        .map(|_| ())
        .map_err(|Fatal(m)| PyRuntimeError::new_err(m))
}

/// Waits for every task (sink writers ending once their senders are gone).
async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

/// Why a worker (re)starts its part of the cluster.
#[derive(Clone, Copy)]
enum Occasion {
    /// The process started; `had_files`: it found resilience files of its own.
    StartUp { had_files: bool },
    /// The cluster lost a worker and rolls back.
    Recovery,
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

impl Worker<'_> {
    fn is_initializer(&self) -> bool {
        self.config.cluster_initializer
    }

    fn workers(&self) -> usize {
        self.cluster.as_ref().map_or(1, |c| c.members.len())
    }

    fn me(&self) -> usize {
        self.cluster.as_ref().map_or(0, |c| c.me)
    }

    /// Forms the cluster (if any), restores the checkpoint it rolls back to
    /// and starts the replayable sources where that checkpoint left them.
    fn start(
        &mut self,
        py: Python<'_>,
        ex: &mut Executor,
        occasion: Occasion,
    ) -> Result<(), Fatal> {
        let (has_files, why) = match occasion {
            Occasion::StartUp { had_files } => (had_files, "start-up"),
            Occasion::Recovery => (true, "recovery"),
        };
        let mut rollback_to = None;
        if let Some(c) = &mut self.coordinator {
            let (last_committed, generation) = c.recovery_point().map_err(Fatal)?;
            rollback_to = last_committed;
            self.generation = generation.max(self.generation) + 1;
            c.new_generation(self.generation).map_err(Fatal)?;
        } else if self.plane.is_none() {
            self.generation += 1;
        }
        if let Some(plane) = &mut self.plane {
            let plan = WelcomePlan {
                generation: self.generation,
                rollback_to,
                resilient: self.config.resilience,
            };
            let events = self.ctl_tx.clone();
            let rt = self.rt;
            let formed = py
                .detach(|| rt.block_on(plane.form(&plan, has_files, events)))
                .map_err(|e| Fatal(format!("cluster formation ({why}): {e}")))?;
            if formed.resilient != self.config.resilience {
                return Err(Fatal(format!(
                    "the initializer runs {} resilience but this worker {} --run-with-resilience; start every worker with the same flags",
                    if formed.resilient { "with" } else { "without" },
                    if self.config.resilience { "has" } else { "lacks" }
                )));
            }
            self.generation = formed.generation;
            rollback_to = formed.rollback_to;
            let names: Vec<String> = formed.members.iter().map(|m| m.name.clone()).collect();
            if let Ok(mut n) = self.view.worker_names.lock() {
                *n = names.clone();
            }
            ex.router = Some(Router::new(
                formed.me,
                names,
                formed.generation,
                formed.data_out.clone(),
            ));
            self.cluster = Some(formed);
        }
        if let Some(cp) = &mut self.checkpoints {
            if !has_files && rollback_to.is_some() {
                return Err(Fatal(format!(
                    "the cluster rolls back to checkpoint {} but this worker has no resilience files in {}; \
                     restart it with the same --resilience-dir it ran with",
                    rollback_to.unwrap_or_default(),
                    cp.files.dir.display()
                )));
            }
            if matches!(occasion, Occasion::StartUp { had_files: true }) && rollback_to.is_none() {
                println!(
                    "quoll: worker '{}': resilience files in {} are from a run that never completed a checkpoint; starting fresh",
                    self.worker,
                    cp.files.dir.display()
                );
            }
            let files = cp.files.clone();
            let image = py
                .detach(|| files.load(rollback_to))
                .map_err(|e| Fatal(format!("recovery: {e}")))?;
            self.restore(py, ex, image)?;
        } else {
            self.truncate_sinks(py, &vec![0; self.sinks.len()])?;
            self.restart_sources(&[]);
        }
        Ok(())
    }

    /// Puts the executor, sinks and file sources where `image` says.
    fn restore(&mut self, py: Python<'_>, ex: &mut Executor, image: Image) -> Result<(), Fatal> {
        let restored = ex
            .restore(py, &image.entries, &image.sources, &image.sinks)
            .map_err(|e| Fatal(format!("recovery: {e}")))?;
        self.truncate_sinks(py, &restored.sink_offsets)?;
        self.restart_sources(&restored.progress);
        let cp = self.checkpoints.as_mut().expect("resilient");
        cp.restored(image.checkpoint, image.files_read);
        ex.enable_generators(image.checkpoint.is_some());
        if let Some(id) = image.checkpoint {
            println!(
                "RESILIENCE: Replayed {} entries from recovery log file.",
                restored.entries
            );
            println!(
                "|~~ - Recovery COMPLETE - ~~| (checkpoint {id}, generation {})",
                self.generation
            );
        } else if self.generation > 1 {
            println!("RESILIENCE: Replayed 0 entries from recovery log file.");
            println!("|~~ - Recovery COMPLETE - ~~| (no checkpoint was complete: started over, generation {})", self.generation);
        }
        Ok(())
    }

    fn truncate_sinks(&self, py: Python<'_>, offsets: &[u64]) -> Result<(), Fatal> {
        let rt = self.rt;
        let sinks = self.sinks.clone();
        py.detach(|| {
            rt.block_on(async {
                for (tx, &len) in sinks.iter().zip(offsets) {
                    let (reply, done) = oneshot::channel();
                    if tx.send(SinkCommand::Truncate(len, reply)).await.is_ok() {
                        if let Ok(Err(e)) = done.await {
                            return Err(Fatal(e));
                        }
                    }
                }
                Ok(())
            })
        })
    }

    /// Starts the replayable sources again where `progress` says (from
    /// the beginning where it says nothing), as a new incarnation.
    fn restart_sources(&mut self, progress: &[SourceProgress]) {
        self.source_epoch += 1;
        for f in self.file_sources.iter_mut() {
            if let Some(t) = f.task.take() {
                t.abort();
            }
            let offset = progress.get(f.index).map_or(0, |p| p.file_offset);
            let task = self.rt.spawn(io::run_file_source(
                self.worker.clone(),
                f.index,
                f.name.clone(),
                f.path.clone(),
                f.header,
                self.config.max_frame_size,
                offset,
                self.source_epoch,
                self.src_tx.clone(),
                self.stats.clone(),
            ));
            f.task = Some(task.abort_handle());
        }
        for c in &self.connectors {
            let resume = progress
                .get(c.index)
                .map(|p| p.streams.iter().map(|(s, p)| (*s, *p)).collect())
                .unwrap_or_default();
            if c.commands
                .try_send(ConnectorCommand::Restart {
                    resume,
                    epoch: self.source_epoch,
                })
                .is_err()
            {
                eprintln!(
                    "quoll: error: worker '{}': connector source {} did not take its restart",
                    self.worker, c.index
                );
            }
        }
    }

    /// Rolls the whole cluster back: tear down this formation, re-form
    /// under a new generation, restore the last committed checkpoint.
    fn recover(&mut self, py: Python<'_>, ex: &mut Executor, reason: &str) -> Result<(), Fatal> {
        println!(
            "quoll: worker '{}': rolling back to the last complete checkpoint: {reason}",
            self.worker
        );
        self.view.processing.store(false, Ordering::SeqCst);
        if let Some(c) = self.cluster.take() {
            // The initializer tells the others first, so they re-form now
            // rather than when their heartbeat times out.
            let last = self.is_initializer().then(|| Control::Reform {
                reason: reason.to_string(),
            });
            let rt = self.rt;
            py.detach(|| rt.block_on(c.tear_down(last)));
        }
        ex.router = None;
        if let Some(cp) = &mut self.checkpoints {
            cp.alignment = None;
        }
        if let Some(c) = &mut self.coordinator {
            c.finish();
        }
        self.start(py, ex, Occasion::Recovery)?;
        self.started();
        Ok(())
    }

    /// This worker's state is loaded and it processes again. A worker tells
    /// the initializer; the initializer reports the cluster ready (status
    /// `processing_messages`, and the first time the ready lines) once every
    /// worker has.
    fn started(&mut self) {
        if !self.is_initializer() {
            if let Some(c) = &self.cluster {
                let _ = c.control_out.try_send(Control::Restored {
                    generation: self.generation,
                });
            }
            self.ready();
            return;
        }
        let others: std::collections::BTreeSet<usize> = (1..self.workers()).collect();
        if others.is_empty() {
            self.ready();
        } else {
            self.awaiting_restored = Some(others);
        }
    }

    fn ready(&mut self) {
        self.view.ready.store(true, Ordering::SeqCst);
        self.view.processing.store(true, Ordering::SeqCst);
        if !self.announced {
            self.announced = true;
            if self.is_initializer() {
                println!("Application has successfully initialized.");
            }
            println!("|~~ INIT PHASE III: Application is ready to work! ~~|");
        }
    }

    // ---- checkpoints ----

    /// Starts this worker's part of checkpoint `id` (see `checkpoint`).
    fn begin_checkpoint(
        &mut self,
        py: Python<'_>,
        ex: &mut Executor,
        id: u64,
    ) -> Result<(), Fatal> {
        let (workers, me, generation) = (self.workers(), self.me(), self.generation);
        let Some(cp) = &mut self.checkpoints else {
            return Ok(());
        };
        if id <= cp.last_begun || cp.alignment.is_some() {
            return Ok(());
        }
        cp.last_begun = id;
        cp.progress_at.insert(id, ex.progress());
        if let Some(r) = &mut ex.router {
            r.send_to_all(wire::barrier_frame(generation, id));
        }
        cp.alignment = Some(Alignment::new(id, workers, me));
        self.maybe_aligned(py, ex)
    }

    fn on_barrier(
        &mut self,
        py: Python<'_>,
        ex: &mut Executor,
        from: usize,
        generation: u64,
        id: u64,
    ) -> Result<(), Fatal> {
        if generation != self.generation {
            return Ok(());
        }
        let begun = self.checkpoints.as_ref().map_or(0, |c| c.last_begun);
        if id > begun {
            self.begin_checkpoint(py, ex, id)?;
        }
        if let Some(a) = self.checkpoints.as_mut().and_then(|c| c.alignment.as_mut()) {
            if a.id == id {
                if let Some(b) = a.barriers.get_mut(from) {
                    *b = true;
                }
            }
        }
        self.maybe_aligned(py, ex)
    }

    /// With every barrier in: snapshot, resume, hand the file to an I/O
    /// thread, then process what was held back.
    fn maybe_aligned(&mut self, py: Python<'_>, ex: &mut Executor) -> Result<(), Fatal> {
        let Some(cp) = &mut self.checkpoints else {
            return Ok(());
        };
        if !cp.alignment.as_ref().is_some_and(|a| a.complete()) {
            return Ok(());
        }
        let a = cp.alignment.take().expect("checked");
        let generation = self.generation;
        let parent = cp.next_parent();
        let id = a.id;
        // Output of peer messages processed while aligning belongs before
        // the barrier too, so sink lengths are taken now, with the state.
        let sink_offsets = ex.sink_offsets(py);
        match ex.snapshot(py, parent.is_none(), &sink_offsets) {
            Ok(snapshot) => {
                let files = cp.files.clone();
                let sinks = self.sinks.clone();
                let events = self.ctl_tx.clone();
                self.rt.spawn(async move {
                    let mut result = Ok(());
                    for tx in sinks {
                        let (reply, done) = oneshot::channel();
                        if tx.send(SinkCommand::Sync(reply)).await.is_ok() {
                            if let Ok(Err(e)) = done.await {
                                result = Err(e);
                            }
                        }
                    }
                    if result.is_ok() {
                        result =
                            tokio::task::spawn_blocking(move || files.write(id, parent, snapshot))
                                .await
                                .unwrap_or_else(|e| Err(format!("checkpoint writer failed: {e}")));
                    }
                    let _ = events
                        .send(Event::CheckpointWritten {
                            id,
                            generation,
                            parent,
                            result,
                        })
                        .await;
                });
            }
            Err(e) => {
                eprintln!("quoll: error: worker '{}': checkpoint {id} can't be taken: {e}; it is abandoned and the next one will retry", self.worker);
                self.checkpoint_done(py, ex, id, Some(e))?;
            }
        }
        for (from, held) in a.held.into_iter().enumerate() {
            for body in held {
                ex.on_peer_data(py, from, &body)?;
            }
        }
        Ok(())
    }

    /// This worker's part of `id` is durable (or failed): tell the coordinator.
    fn checkpoint_done(
        &mut self,
        py: Python<'_>,
        ex: &mut Executor,
        id: u64,
        error: Option<String>,
    ) -> Result<(), Fatal> {
        let generation = self.generation;
        if self.is_initializer() {
            self.on_done(py, ex, id, 0, error)
        } else {
            if let Some(c) = &self.cluster {
                let _ = c.control_out.try_send(Control::CheckpointDone {
                    id,
                    generation,
                    error,
                });
            }
            Ok(())
        }
    }

    /// Coordinator: worker `who` finished its part of `id`. With everyone
    /// done, "id committed" goes durably into the commit log, and only then
    /// to the workers.
    fn on_done(
        &mut self,
        py: Python<'_>,
        ex: &mut Executor,
        id: u64,
        who: usize,
        error: Option<String>,
    ) -> Result<(), Fatal> {
        let generation = self.generation;
        let Some(c) = &mut self.coordinator else {
            return Ok(());
        };
        if let Some(e) = error {
            if c.in_flight.as_ref().is_some_and(|(cur, _)| *cur == id) {
                let name = self
                    .cluster
                    .as_ref()
                    .and_then(|cl| cl.members.get(who))
                    .map_or("initializer", |m| m.name.as_str());
                eprintln!("quoll: error: checkpoint {id} abandoned: worker '{name}': {e}");
                c.finish();
            }
            return Ok(());
        }
        if !c.done(id, who) {
            return Ok(());
        }
        let result = py.detach(|| c.commit(id, generation));
        c.finish();
        match result {
            Ok(()) => {
                if let Some(cl) = &self.cluster {
                    let _ = cl
                        .control_out
                        .try_send(Control::Committed { id, generation });
                }
                self.on_committed(ex, id);
            }
            Err(e) => eprintln!(
                "quoll: error: checkpoint {id} could not be marked complete: {e}; it is abandoned"
            ),
        }
        Ok(())
    }

    /// Checkpoint `id` is complete cluster-wide: connector clients may
    /// forget what it covers, old files go.
    fn on_committed(&mut self, ex: &mut Executor, id: u64) {
        let Some(cp) = &mut self.checkpoints else {
            return;
        };
        if let Some(progress) = cp.progress_at.get(&id) {
            for c in &self.connectors {
                let positions = progress
                    .get(c.index)
                    .map(|p| p.streams.iter().map(|(s, p)| (*s, *p)).collect())
                    .unwrap_or_default();
                let _ = c
                    .commands
                    .try_send(ConnectorCommand::Committed { positions });
            }
        }
        let compact = cp.committed(id);
        ex.enable_generators(true);
        let files = cp.files.clone();
        let worker = self.worker.clone();
        self.rt.spawn_blocking(move || {
            if let Err(e) = files.after_commit(id, compact) {
                eprintln!("quoll: error: worker '{worker}': after checkpoint {id}: {e}");
            }
        });
    }

    /// Handles one event; `Some(stop)` ends the loop.
    fn handle(
        &mut self,
        py: Python<'_>,
        ex: &mut Executor,
        e: Event,
    ) -> Result<Option<Stop>, Fatal> {
        match e {
            Event::Frames {
                source,
                frames,
                keys,
                position,
                epoch,
            } => {
                if epoch == 0 || epoch == self.source_epoch {
                    ex.on_frames(py, source, frames, &keys, position)?
                }
            }
            Event::PeerData { from, body } => {
                if let Some(a) = self.checkpoints.as_mut().and_then(|c| c.alignment.as_mut()) {
                    if a.barriers.get(from).copied().unwrap_or(false) {
                        a.held[from].push_back(body);
                        return Ok(None);
                    }
                }
                ex.on_peer_data(py, from, &body)?
            }
            Event::PeerBarrier {
                from,
                generation,
                checkpoint,
            } => self.on_barrier(py, ex, from, generation, checkpoint)?,
            Event::Control {
                from,
                generation,
                msg,
            } => {
                if generation != self.generation {
                    return Ok(None);
                }
                match msg {
                    Control::Checkpoint { id, .. } => self.begin_checkpoint(py, ex, id)?,
                    Control::CheckpointDone { id, error, .. } => {
                        self.on_done(py, ex, id, from, error)?
                    }
                    Control::Committed { id, .. } => self.on_committed(ex, id),
                    Control::Restored { .. } => {
                        if let Some(waiting) = &mut self.awaiting_restored {
                            waiting.remove(&from);
                            if waiting.is_empty() {
                                self.awaiting_restored = None;
                                self.ready();
                            }
                        }
                    }
                    Control::Reform { reason } => {
                        if self.config.resilience {
                            self.recover(
                                py,
                                ex,
                                &format!("the initializer re-forms the cluster: {reason}"),
                            )?;
                        }
                    }
                    other => eprintln!(
                        "quoll: worker '{}': unexpected control message {other:?}",
                        self.worker
                    ),
                }
            }
            Event::PeerLost {
                name,
                generation,
                why,
                control,
            } => {
                if generation != self.generation || self.stopping {
                    return Ok(None);
                }
                eprintln!(
                    "quoll: error: worker '{}': lost worker '{name}': {why}",
                    self.worker
                );
                if !self.config.resilience {
                    eprintln!("quoll: worker '{}': without --run-with-resilience the cluster can't recover; messages for '{name}' are dropped", self.worker);
                } else if control {
                    // The initializer watches every control link; the others
                    // watch theirs to the initializer. A data link's loss is
                    // followed by its control link's, or by a Reform.
                    self.recover(py, ex, &format!("lost worker '{name}': {why}"))?;
                }
            }
            // A write that finishes after a rollback belongs to the old generation.
            Event::CheckpointWritten { generation, .. } if generation != self.generation => {}
            Event::CheckpointWritten {
                id, parent, result, ..
            } => match result {
                Ok(()) => {
                    if let Some(cp) = &mut self.checkpoints {
                        cp.written(id, parent);
                    }
                    self.checkpoint_done(py, ex, id, None)?;
                }
                Err(e) => {
                    eprintln!(
                        "quoll: error: worker '{}': checkpoint {id} could not be written: {e}",
                        self.worker
                    );
                    self.checkpoint_done(py, ex, id, Some(e))?;
                }
            },
            Event::Shutdown {
                reason,
                from_cluster,
            } => {
                println!("quoll: stopping: {reason}");
                self.stopping = true;
                return Ok(Some(if from_cluster {
                    Stop::Relayed
                } else {
                    Stop::Requested(reason)
                }));
            }
        }
        Ok(None)
    }

    fn aligning(&self) -> bool {
        self.checkpoints
            .as_ref()
            .is_some_and(|c| c.alignment.is_some())
    }

    fn event_loop(
        &mut self,
        py: Python<'_>,
        ex: &mut Executor,
        inbox: &mut Inbox<'_>,
    ) -> Result<Stop, Fatal> {
        let mut next_timer: Option<Instant> = ex.on_timers(py)?;
        let mut last_report = Instant::now();
        let batch_size = self.config.batch_size.max(1);
        loop {
            if py.check_signals().is_err() {
                return Ok(Stop::Requested("interrupted".into()));
            }
            let workers = self.workers();
            if let Some(id) = self.coordinator.as_mut().and_then(|c| c.due(workers)) {
                if let Some(c) = &self.cluster {
                    let _ = c.control_out.try_send(Control::Checkpoint {
                        id,
                        generation: self.generation,
                    });
                }
                self.begin_checkpoint(py, ex, id)?;
            }
            let paused = self.aligning() || ex.router.as_ref().is_some_and(|r| r.congested());
            let mut busy = false;
            for _ in 0..EVENTS_PER_ROUND {
                let Ok(e) = inbox.ctl.try_recv() else { break };
                busy = true;
                if let Some(stop) = self.handle(py, ex, e)? {
                    return Ok(stop);
                }
            }
            let paused = paused || self.aligning();
            if !paused && inbox.src_open {
                let round = Instant::now();
                for _ in 0..EVENTS_PER_ROUND {
                    if round.elapsed() >= ROUND_TIME {
                        break;
                    }
                    match inbox.src.try_recv() {
                        Ok(e) => {
                            busy = true;
                            if let Some(stop) = self.handle(py, ex, e)? {
                                return Ok(stop);
                            }
                            if self.aligning() {
                                break;
                            }
                        }
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            inbox.src_open = false;
                            break;
                        }
                        Err(mpsc::error::TryRecvError::Empty) => break,
                    }
                }
                if ex.generating() && !self.aligning() {
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
                publish_report(ex, self.view, &self.stats);
            }
            if busy {
                continue;
            }
            // Idle: wait for input, the next timer, a checkpoint or a slow
            // link, without the GIL.
            let mut wait = next_timer
                .map(|t| t.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_millis(200))
                .min(Duration::from_millis(200));
            if let Some(c) = &self.coordinator {
                wait = wait.min(
                    c.next_at
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(1)),
                );
            }
            if ex.router.as_ref().is_some_and(|r| r.has_pending()) {
                wait = wait.min(Duration::from_millis(1));
            }
            let take_src = !self.aligning()
                && !ex.router.as_ref().is_some_and(|r| r.congested())
                && inbox.src_open;
            let rt = self.rt;
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
                if let Some(stop) = self.handle(py, ex, e)? {
                    return Ok(stop);
                }
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
