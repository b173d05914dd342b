//! One worker process, in four phases: [`Worker::set_up`] (bind every
//! listener, open every file, build the executor and the coordination
//! node), [`Worker::start`] (begin forming the cluster), [`Worker::run`]
//! (the event loop, see `event_loop`) and [`Worker::shut_down`].
//!
//! `run_worker` is called by `quoll.worker` on the Python main thread after
//! the app has been imported and `application_setup` has run. That thread
//! becomes the executor; a small tokio runtime carries the I/O. Set-up binds
//! every listener before anything is announced, so a harness that waits for
//! "Application is ready to work!" can connect at once.
//!
//! Coordination (formation, checkpoints, recovery) is decided by
//! [`quoll_core::node::Node`]; this module and `actions` only carry out what
//! it asks (see `docs/architecture.md` for the path of a barrier).

mod actions;
mod event_loop;

use crate::app::{build_plan, SinkSpec, SourceSpec};
use crate::checkpoint_files::Files;
use crate::codec::Codec;
use crate::connector_source::{self, ConnectorCommand, ConnectorSourceConfig};
use crate::error::WorkerError;
use crate::event::{Event, IoStats};
use crate::executor::{Executor, SourceProgress};
use crate::external_channel::{self, ExternalView};
use crate::kafka_io::{self, KafkaSourceRunner};
use crate::links::{Links, CONNECT_RETRY, HEARTBEAT_TIMEOUT};
use crate::logging::{self, wallaroo_line, WallarooLine};
use crate::metrics::{Metrics, WorkerState};
use crate::sinks::{self, SinkCommand};
use crate::user_errors::{OnUserError, UserErrors};
use bytes::Bytes;
use pyo3::exceptions::{PyRuntimeError, PySystemExit};
use pyo3::prelude::*;
use quoll_core::checkpoint_store::CommitLog;
use quoll_core::length_header::LengthHeader;
use quoll_core::node::{Node, NodeConfig};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle};
use tracing::{error, info, warn};

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
    /// Started with `--join`: `control` is the address it joins through.
    pub join: bool,
    pub control: Option<String>,
    pub data: Option<String>,
    pub my_data: Option<String>,
    /// Not the initializer: where to send joiners to the initializer.
    pub my_control: Option<String>,
    pub resilience: bool,
    pub resilience_dir: String,
    pub checkpoint_interval_ns: u64,
    pub log_level: Option<String>,
    pub cookie_file: Option<String>,
    /// PEM files for TLS on the links (all three or none).
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub tls_ca: Option<String>,
    /// A TCP source connection silent this long is closed (0: never).
    pub in_idle_timeout_s: u64,
    /// Where to serve the metrics (and, on the initializer, the dashboard).
    pub metrics_listen: Option<String>,
    /// Initializer: how often at most key groups move to even the load (0: never).
    pub rebalance_interval_s: u64,
}

/// How long a stopping worker waits for its sinks to write what they hold.
const SINK_DRAIN: Duration = Duration::from_secs(10);
/// A formation step that waits on peers gives up after this long.
const FORMATION_STEP: Duration = Duration::from_secs(20);
/// Checkpoints still collecting parts after this many intervals (and at
/// least [`MIN_CHECKPOINT_TIMEOUT`]) are abandoned.
const CHECKPOINT_TIMEOUT_INTERVALS: u32 = 10;
const MIN_CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(60);

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
    name: String,
    commands: mpsc::Sender<ConnectorCommand>,
}

/// A TCP source's accept loop: stopped when this worker leaves the cluster.
struct TcpSourceHandle {
    name: String,
    addr: String,
    accept: AbortHandle,
}

/// Why the event loop ended.
enum Stop {
    /// Shutdown asked here (external channel, Ctrl-C), or relayed by the
    /// cluster: every other worker is told too.
    Clean(String),
    /// This worker left the cluster (shrink); the others go on.
    Left,
}

/// Everything a running worker holds.
pub(crate) struct Worker {
    config: WorkerConfig,
    /// The application's topology fingerprint (every worker runs the same).
    fingerprint: u64,
    rt: Runtime,
    ex: Executor,
    node: Node<Vec<SourceProgress>, Bytes>,
    /// Links to other workers (`None` when the worker is alone).
    links: Option<Links>,
    view: Arc<ExternalView>,
    stats: Arc<IoStats>,
    src_tx: mpsc::Sender<Event>,
    src_rx: mpsc::Receiver<Event>,
    src_open: bool,
    ctl_tx: mpsc::Sender<Event>,
    ctl_rx: mpsc::Receiver<Event>,
    file_sources: Vec<FileSource>,
    connectors: Vec<ConnectorHandle>,
    tcp_sources: Vec<TcpSourceHandle>,
    /// Where this worker's TCP and connector sources accept clients:
    /// `(source name, host:port)`, told to the other members.
    source_addrs: Vec<(String, String)>,
    kafka_sources: Vec<KafkaSourceRunner>,
    /// This worker's index among the members, and their number (for the
    /// Kafka partitions it reads); set when the cluster forms.
    /// The Kafka partitions this worker reads.
    share: crate::kafka_io::PartitionShare,
    /// Incarnation of the replayable sources: frames of older ones are dropped.
    source_epoch: u32,
    sinks: Vec<mpsc::Sender<SinkCommand>>,
    sink_tasks: Vec<JoinHandle<()>>,
    /// This worker's resilience files (with resilience only).
    files: Option<Files>,
    /// The initializer's commit log (with resilience only).
    commit_log: Option<CommitLog>,
    /// Part files being written: awaited before a restore, so a late write
    /// never lands after the rollback removed its file.
    part_writes: Vec<JoinHandle<()>>,
    /// A restore under way: the own image loaded (see `actions.rs`).
    loaded: Option<crate::checkpoint_files::Image>,
    /// State entries other workers handed over, per generation: stage ->
    /// its entries.
    handed_in: std::collections::BTreeMap<
        quoll_core::membership::Generation,
        std::collections::BTreeMap<u32, quoll_core::checkpoint_store::StageEntries>,
    >,
    /// The first restore is done: errors from now on are run-time errors.
    started_up: bool,
    /// This worker has left the cluster (shrink): the event loop ends.
    left: bool,
    metrics: Arc<Metrics>,
}

/// Why a worker may not join this cluster (`--join`), if it may not.
fn grow_refusal(config: &WorkerConfig) -> Option<String> {
    (!config.resilience).then(|| {
        "growing a running cluster needs --run-with-resilience on every worker (the new \
         membership restores the last checkpoint)"
            .into()
    })
}

/// Runs a worker until a clean shutdown. Raises `SystemExit(2)` on an error
/// while setting up, forming or first restoring, and `RuntimeError` on a
/// fatal error while running.
#[pyfunction]
#[pyo3(signature = (config, app, codec=None))]
pub fn run_worker(
    py: Python<'_>,
    config: WorkerConfig,
    app: &Bound<'_, PyAny>,
    codec: Option<(Py<PyAny>, Py<PyAny>)>,
) -> PyResult<()> {
    let level = config
        .log_level
        .as_deref()
        .and_then(logging::level_from_flag)
        .unwrap_or(tracing::level_filters::LevelFilter::INFO);
    logging::init(&config.name, level);
    let mut w = match Worker::set_up(py, config, app, codec) {
        Ok(w) => w,
        Err(e @ WorkerError::AlreadyLeft(_)) => {
            info!("{e}");
            return Ok(());
        }
        Err(e) => {
            error!("{e}");
            return Err(PySystemExit::new_err(2));
        }
    };
    let result = w.start(py).and_then(|()| w.run(py));
    let started_up = w.started_up;
    w.shut_down(py, &result);
    match result {
        Ok(Stop::Clean(_) | Stop::Left) => Ok(()),
        Err(e) => {
            error!("{e}");
            if started_up {
                Err(PyRuntimeError::new_err(e.to_string()))
            } else {
                Err(PySystemExit::new_err(2))
            }
        }
    }
}

fn listen(
    rt: &Runtime,
    addr: &str,
    what: &str,
    hint: &'static str,
) -> Result<TcpListener, WorkerError> {
    rt.block_on(TcpListener::bind(addr))
        .map_err(|source| WorkerError::Listen {
            what: what.to_string(),
            addr: addr.to_string(),
            source,
            hint,
        })
}

/// `host` with the port `listener` is bound to (the `--in` port may be 0).
fn bound_addr(host: &str, listener: &TcpListener) -> String {
    let port = listener.local_addr().map_or(0, |a| a.port());
    format!("{host}:{port}")
}

impl Worker {
    /// Binds every listener and opens every file; nothing is announced yet.
    fn set_up(
        py: Python<'_>,
        config: WorkerConfig,
        app: &Bound<'_, PyAny>,
        codec: Option<(Py<PyAny>, Py<PyAny>)>,
    ) -> Result<Worker, WorkerError> {
        let started = std::time::Instant::now();
        let plan = build_plan(py, app)?;
        let metrics = Arc::new(Metrics::new(
            &config.name,
            plan.sources.iter().map(|s| s.name.clone()).collect(),
            plan.topology
                .stages
                .iter()
                .map(|s| s.name.clone())
                .collect(),
            plan.sinks.iter().map(|s| s.label.clone()).collect(),
        ));
        let fingerprint = plan.topology.fingerprint();
        let app_name = plan.topology.app_name.clone();
        // A worker that left its cluster binds, connects and opens nothing.
        let files = match config.resilience {
            true => Some(Files::open(
                &config.resilience_dir,
                app_name.clone(),
                config.name.clone(),
            )?),
            false => None,
        };
        if let Some(marker) = files
            .as_ref()
            .map(Files::left_marker)
            .transpose()?
            .flatten()
        {
            return Err(WorkerError::AlreadyLeft(marker));
        }
        let codec = match codec {
            Some((s, d)) => Codec::user(s, d),
            None => Codec::default_codec(py).map_err(|e| WorkerError::Fatal(e.to_string()))?,
        };
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
            .map_err(WorkerError::Runtime)?;
        let (src_tx, src_rx) = mpsc::channel::<Event>(64);
        // Peer batches are up to ~64 KiB: 128 of them bound what a fast peer
        // can queue here; beyond that its link stops being read.
        let (ctl_tx, ctl_rx) = mpsc::channel::<Event>(128);
        let stats = Arc::new(IoStats::default());
        if config.resilience {
            wallaroo_line(WallarooLine::ResilienceMode);
        }

        // Sources: bind now so errors come before anything is announced.
        // File sources start once it is known where they resume.
        let mut source_ids = Vec::new();
        let mut file_sources = Vec::new();
        let mut connectors = Vec::new();
        let mut tcp_sources = Vec::new();
        let mut source_addrs = Vec::new();
        let mut kafka_sources = Vec::new();
        let first_epoch = 1;
        for (index, src) in plan.sources.iter().enumerate() {
            source_ids.push(src.name.clone());
            let what = format!("source '{}' at", src.name);
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
                    let listener = listen(&rt, &format!("{host}:{port}"), &what, "")?;
                    let addr = bound_addr(host, &listener);
                    source_addrs.push((src.name.clone(), addr.clone()));
                    let accept = rt.spawn(crate::sources::run_tcp_source(
                        index,
                        src.name.clone(),
                        listener,
                        *header,
                        config.max_frame_size,
                        crate::sources::TcpLimits {
                            parallelism: *parallelism,
                            idle_timeout: (config.in_idle_timeout_s > 0)
                                .then(|| Duration::from_secs(config.in_idle_timeout_s)),
                        },
                        src_tx.clone(),
                        stats.clone(),
                    ));
                    tcp_sources.push(TcpSourceHandle {
                        name: src.name.clone(),
                        addr,
                        accept: accept.abort_handle(),
                    });
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
                    let listener = listen(&rt, &format!("{host}:{port}"), &what, "")?;
                    source_addrs.push((src.name.clone(), bound_addr(host, &listener)));
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
                        index,
                        cfg,
                        listener,
                        src_tx.clone(),
                        rx,
                        config.resilience,
                    ));
                    connectors.push(ConnectorHandle {
                        index,
                        name: src.name.clone(),
                        commands,
                    });
                }
                SourceSpec::Kafka {
                    topic,
                    brokers,
                    log_level,
                    ..
                } => {
                    let place = format!("kafka source '{}' (topic '{topic}')", src.name);
                    let bad = |problem| WorkerError::KafkaConfig {
                        place: place.clone(),
                        problem,
                    };
                    let mut cfg = quoll_kafka::KafkaSourceConfig::new(
                        &app_name,
                        &src.name,
                        &config.name,
                        topic,
                        quoll_kafka::Brokers::from_pairs(brokers).map_err(bad)?,
                        0,
                        1,
                    );
                    cfg.log_level = quoll_kafka::LogLevel::parse(log_level).map_err(bad)?;
                    kafka_sources.push(KafkaSourceRunner::new(index, cfg));
                }
                SourceSpec::Gen { .. } => {}
            }
        }

        // Sinks: files are opened now; the writer tasks start once nothing
        // else in set-up can fail, so an early exit leaves none behind.
        let mut sink_txs = Vec::new();
        let mut pending_sinks = Vec::new();
        for sink in &plan.sinks {
            let (tx, rx) = mpsc::channel(64);
            sink_txs.push(tx);
            pending_sinks.push(match &sink.spec {
                SinkSpec::Tcp { host, port } => PendingSink::Tcp {
                    label: sink.label.clone(),
                    addr: format!("{host}:{port}"),
                    rx,
                },
                SinkSpec::File { path } => {
                    let path = path.replace("{worker}", &config.name);
                    let label = sink.label.replace("{worker}", &config.name);
                    let mut options = tokio::fs::OpenOptions::new();
                    options.create(true).write(true).truncate(false);
                    let file = rt.block_on(options.open(&path)).map_err(|source| {
                        WorkerError::SinkFile {
                            label: label.clone(),
                            path: PathBuf::from(&path),
                            source,
                        }
                    })?;
                    PendingSink::File { label, file, rx }
                }
                SinkSpec::Kafka {
                    name,
                    topic,
                    brokers,
                    log_level,
                    max_produce_buffer_ms,
                    max_message_size,
                } => {
                    let bad = |problem| WorkerError::KafkaConfig {
                        place: sink.label.clone(),
                        problem,
                    };
                    let delivery = if config.resilience {
                        quoll_kafka::Delivery::ExactlyOnce {
                            resilience_dir: PathBuf::from(&config.resilience_dir),
                        }
                    } else {
                        quoll_kafka::Delivery::AtLeastOnce
                    };
                    let mut cfg = quoll_kafka::KafkaSinkConfig::new(
                        &app_name,
                        &config.name,
                        name,
                        topic,
                        quoll_kafka::Brokers::from_pairs(brokers).map_err(bad)?,
                        delivery,
                    );
                    cfg.log_level = quoll_kafka::LogLevel::parse(log_level).map_err(bad)?;
                    cfg.max_produce_buffer = Duration::from_millis(*max_produce_buffer_ms);
                    cfg.max_message_size = *max_message_size;
                    // Started now (its thread only waits for commands): the
                    // first restore's `recover` connects.
                    let handle = quoll_kafka::KafkaSink::spawn(cfg)?;
                    PendingSink::Kafka {
                        label: sink.label.clone(),
                        handle,
                        rx,
                    }
                }
                SinkSpec::Connector {
                    name,
                    host,
                    port,
                    cookie,
                } => PendingSink::Connector {
                    label: sink.label.clone(),
                    addr: format!("{host}:{port}"),
                    session: quoll_core::connector_sink::SinkSession::new(
                        config.resilience,
                        cookie,
                        &app_name,
                        &config.name,
                        name,
                    ),
                    rx,
                },
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
            let listener = listen(&rt, addr, "--external", "")?;
            rt.spawn(external_channel::run_external(
                listener,
                view.clone(),
                ctl_tx.clone(),
            ));
        }

        if let Some(addr) = &config.metrics_listen {
            let listener = listen(&rt, addr, "--metrics-listen", "")?;
            rt.spawn(crate::metrics::serve(
                listener,
                metrics.clone(),
                config.cluster_initializer,
            ));
        }

        let links = Self::bind_links(&rt, &config, &ctl_tx)?;
        let recovered = match &files {
            Some(f) => f.recovered(config.cluster_initializer)?,
            None => Default::default(),
        };
        let commit_log = match (&files, config.cluster_initializer) {
            (Some(f), true) => Some(f.commit_log()?),
            _ => None,
        };
        if recovered.has_files {
            metrics.set_state(WorkerState::Recovering);
            metrics.recovery_began_at(started);
            wallaroo_line(WallarooLine::AttemptingToRecover);
            wallaroo_line(WallarooLine::RecoveringFromFiles);
        }
        let interval = Duration::from_nanos(config.checkpoint_interval_ns.max(1_000_000));
        let grow_refusal = grow_refusal(&config);
        let node_config = NodeConfig {
            name: config.name.clone(),
            initializer: config.cluster_initializer,
            worker_count: if links.is_some() {
                config.worker_count.max(1)
            } else {
                1
            },
            fingerprint,
            resilient: config.resilience,
            data_addr: links.as_ref().map_or_else(String::new, |l| l.data_addr()),
            sources: source_addrs.clone(),
            checkpoint_interval: interval,
            checkpoint_timeout: (interval * CHECKPOINT_TIMEOUT_INTERVALS)
                .max(MIN_CHECKPOINT_TIMEOUT),
            step_timeout: FORMATION_STEP,
            retry_after: CONNECT_RETRY,
            refusal_patience: HEARTBEAT_TIMEOUT * 2,
            // A rebalance re-forms the cluster the way a grow does.
            rebalance_interval: (config.rebalance_interval_s > 0 && grow_refusal.is_none())
                .then(|| Duration::from_secs(config.rebalance_interval_s)),
            grow_refusal,
        };
        let node = Node::new(node_config, recovered);

        let errors = UserErrors::new(&config.name, policy);
        let mut ex = Executor::new(
            py,
            plan,
            sink_txs.clone(),
            codec,
            errors,
            rt.handle().clone(),
        )
        .map_err(|e| WorkerError::Fatal(e.to_string()))?;
        if config.resilience {
            ex.enable_generators(false);
        }
        let sink_tasks = pending_sinks
            .into_iter()
            .map(|p| match p {
                PendingSink::Tcp { label, addr, rx } => {
                    rt.spawn(sinks::run_tcp_sink(label, addr, rx, stats.clone()))
                }
                PendingSink::File { label, file, rx } => {
                    rt.spawn(sinks::run_file_sink(label, file, rx))
                }
                PendingSink::Connector {
                    label,
                    addr,
                    session,
                    rx,
                } => rt.spawn(crate::connector_sink::run_connector_sink(
                    label,
                    addr,
                    session,
                    rx,
                    stats.clone(),
                )),
                PendingSink::Kafka { label, handle, rx } => rt.spawn(kafka_io::run_kafka_sink(
                    label,
                    handle,
                    rx,
                    ctl_tx.clone(),
                    stats.clone(),
                )),
            })
            .collect();
        Ok(Worker {
            config,
            fingerprint,
            rt,
            ex,
            node,
            links,
            view,
            stats,
            src_tx,
            src_rx,
            src_open: true,
            ctl_tx,
            ctl_rx,
            file_sources,
            connectors,
            tcp_sources,
            source_addrs,
            kafka_sources,
            share: crate::kafka_io::PartitionShare::alone(),
            source_epoch: first_epoch,
            sinks: sink_txs,
            sink_tasks,
            files,
            commit_log,
            part_writes: Vec::new(),
            loaded: None,
            handed_in: Default::default(),
            started_up: false,
            left: false,
            metrics,
        })
    }

    /// The links of a worker in a cluster: the initializer listens on
    /// `--control` and `--data`, another worker on `--my-data` if given.
    fn bind_links(
        rt: &Runtime,
        config: &WorkerConfig,
        events: &mpsc::Sender<Event>,
    ) -> Result<Option<Links>, WorkerError> {
        // An initializer given both addresses forms a cluster even alone,
        // so that workers can join it later.
        let clustered = config.worker_count > 1
            || !config.cluster_initializer
            || (config.control.is_some() && config.data.is_some());
        if !clustered {
            return Ok(None);
        }
        let cookie = crate::cookie::load(config.cookie_file.as_deref())?;
        tracing::debug!(
            "links are authenticated with the cluster secret from {}",
            cookie.source
        );
        let tls = crate::tls::Tls::from_flags(
            config.tls_cert.as_deref(),
            config.tls_key.as_deref(),
            config.tls_ca.as_deref(),
        )?;
        if tls.is_some() {
            info!("links between workers run TLS 1.3 (--tls-cert, --tls-key, --tls-ca)");
        }
        let creds = crate::links::Credentials {
            secret: cookie.secret.into(),
            tls,
        };
        let control = config.control.clone().ok_or(WorkerError::Missing {
            what: "--control HOST:PORT",
            hint: "every worker of a cluster names the initializer's control address",
        })?;
        let links = if config.cluster_initializer {
            let data = config.data.clone().ok_or(WorkerError::Missing {
                what: "--data HOST:PORT",
                hint: "the initializer listens there for the other workers' data links",
            })?;
            let c = listen(
                rt,
                &control,
                "--control",
                " (is another initializer running?)",
            )?;
            let d = listen(rt, &data, "--data", "")?;
            Links::initializer(rt.handle().clone(), events.clone(), creds, c, d, control)
        } else {
            let my_data = match &config.my_data {
                Some(a) => Some(listen(rt, a, "--my-data", "")?),
                None => None,
            };
            // Wallaroo required --my-control and quoll ignored it: a
            // listener that can't be had costs only joins through here.
            let my_control = config.my_control.as_deref().and_then(|a| {
                listen(rt, a, "--my-control", "")
                    .map_err(|e| warn!("{e}; workers can't join the cluster through this one"))
                    .ok()
            });
            Links::joiner(
                rt.handle().clone(),
                events.clone(),
                creds,
                control,
                my_data,
                my_control,
            )
        };
        Ok(Some(links))
    }

    /// Begins forming the cluster (alone: forms at once).
    fn start(&mut self, py: Python<'_>) -> Result<(), WorkerError> {
        let mut out = Vec::new();
        self.node.start(std::time::Instant::now(), &mut out);
        self.carry_out(py, out)
    }

    /// Flushes what the executor holds, tells the cluster (on a clean stop),
    /// lets the sinks write what they hold, and on a clean stop removes the
    /// resilience files.
    fn shut_down(mut self, py: Python<'_>, result: &Result<Stop, WorkerError>) {
        self.view.processing.store(false, Ordering::SeqCst);
        self.ex.flush_peers();
        self.ex.flush_sinks(py);
        let dropped = self.ex.errors.total();
        let clean = result.is_ok();
        let left = matches!(result, Ok(Stop::Left));
        let Worker {
            config,
            rt,
            ex,
            links,
            sinks,
            sink_tasks,
            files,
            part_writes,
            ..
        } = self;
        drop(ex);
        if clean {
            // A clean stop: no rollback will follow.
            rt.block_on(async {
                for tx in &sinks {
                    let _ = tx.send(SinkCommand::Finish).await;
                }
            });
        }
        drop(sinks);
        let reason = match result {
            Ok(Stop::Clean(reason)) => Some(reason.clone()),
            Ok(Stop::Left) | Err(_) => None,
        };
        // Sink writers end once every sender is gone and what they hold is
        // written.
        py.detach(|| {
            rt.block_on(async {
                let _ = tokio::time::timeout(SINK_DRAIN, async {
                    for t in sink_tasks.into_iter().chain(part_writes) {
                        let _ = t.await;
                    }
                })
                .await;
                if let Some(mut links) = links {
                    match reason {
                        Some(reason) => links.shut_down(reason).await,
                        None => drop(links.tear_down(None, &[])),
                    }
                }
            });
        });
        rt.shutdown_timeout(Duration::from_millis(500));
        if clean {
            if let Some(f) = files {
                let removed = match left {
                    true => f.leave(),
                    false => f.remove_all(config.cluster_initializer),
                };
                if let Err(e) = removed {
                    error!("clean shutdown could not remove the resilience files: {e}");
                }
            }
        }
        if dropped > 0 {
            info!("{dropped} messages were dropped after errors");
        }
    }
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
    Kafka {
        label: String,
        handle: quoll_kafka::KafkaSinkHandle,
        rx: mpsc::Receiver<SinkCommand>,
    },
    Connector {
        label: String,
        addr: String,
        session: quoll_core::connector_sink::SinkSession,
        rx: mpsc::Receiver<SinkCommand>,
    },
}
