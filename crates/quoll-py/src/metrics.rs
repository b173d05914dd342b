//! A worker's metrics in the Prometheus text format, and the HTTP server
//! that serves them (`--metrics-listen HOST:PORT`, `GET /metrics`; on the
//! initializer also the dashboard at `GET /` and the cluster view at
//! `GET /cluster`). The metric names and what they count are listed in
//! `docs/metrics.md`.
//!
//! Invariants:
//! - The executor thread never touches a Prometheus type per message. It
//!   counts in plain integers ([`ExecMeters`]) and keeps a bounded number of
//!   timing samples (1 in [`SAMPLE_EVERY`] stage calls and sink writes);
//!   the event loop moves them into the registry every
//!   [`PUBLISH_EVERY`] ([`Metrics::publish`]), so a scrape lags by at most
//!   that much. Per-event and per-batch counters (sources' bytes, peer
//!   batches, checkpoints) are updated where they happen.
//! - Every series carries the label `worker` (the worker's name), so series
//!   of several workers never collide once scraped together.
//! - Counters only go up: values drained from the executor are added, never
//!   set, so a rollback (which resets state, not counts) keeps them monotonic.

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// One stage call and one sink write in this many is timed (a power of
/// two: the test is a mask).
pub const SAMPLE_EVERY: u32 = 64;
const OPEN_METRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const CLASSIC_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often the event loop moves the executor's counts into the registry.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(100);
/// Timing samples kept between two publishes at most (the rest are not
/// taken): bounds memory if a long event delays the publish.
const MAX_SAMPLES: usize = 8192;

type Labels = Vec<(&'static str, String)>;
type Hist = Family<Labels, Histogram, fn() -> Histogram>;

fn seconds_histogram() -> Histogram {
    // 1 us .. ~4.5 min, factor 4 apart.
    Histogram::new(exponential_buckets(1e-6, 4.0, 15))
}

fn label(name: &'static str, value: &str) -> Labels {
    vec![(name, value.to_string())]
}

/// What the executor thread counts between two publishes. Plain integers:
/// the thread that owns the executor is the only writer.
pub struct ExecMeters {
    /// Per source: messages and bytes taken.
    source_in: Vec<(u64, u64)>,
    /// Per stage: messages processed here, messages passed on.
    stage_in: Vec<u64>,
    stage_out: Vec<u64>,
    /// Per sink: messages and bytes handed to the writer.
    sink_out: Vec<(u64, u64)>,
    /// `(stage, seconds)` of sampled user calls.
    stage_time: Vec<(usize, f64)>,
    /// `(sink, seconds)` from source arrival (ingest time) to the sink buffer.
    latency: Vec<(usize, f64)>,
    tick: u32,
}

impl ExecMeters {
    pub fn new(sources: usize, stages: usize, sinks: usize) -> ExecMeters {
        ExecMeters {
            source_in: vec![(0, 0); sources],
            stage_in: vec![0; stages],
            stage_out: vec![0; stages],
            sink_out: vec![(0, 0); sinks],
            stage_time: Vec::new(),
            latency: Vec::new(),
            tick: 0,
        }
    }

    #[inline]
    pub fn source_in(&mut self, source: usize, messages: usize, bytes: usize) {
        if let Some(c) = self.source_in.get_mut(source) {
            c.0 += messages as u64;
            c.1 += bytes as u64;
        }
    }

    /// Counts a message processed at `stage`; `Some(start)` when this call
    /// is one to time (see [`ExecMeters::timed`]).
    #[inline]
    pub fn enter(&mut self, stage: usize) -> Option<Instant> {
        if let Some(c) = self.stage_in.get_mut(stage) {
            *c += 1;
        }
        self.tick = self.tick.wrapping_add(1);
        (self.tick & (SAMPLE_EVERY - 1) == 0 && self.stage_time.len() < MAX_SAMPLES)
            .then(Instant::now)
    }

    #[inline]
    pub fn timed(&mut self, stage: usize, start: Option<Instant>) {
        if let Some(t) = start {
            self.stage_time.push((stage, t.elapsed().as_secs_f64()));
        }
    }

    #[inline]
    pub fn passed_on(&mut self, stage: usize, messages: usize) {
        if let Some(c) = self.stage_out.get_mut(stage) {
            *c += messages as u64;
        }
    }

    #[inline]
    pub fn sink_out(&mut self, sink: usize, messages: u64, bytes: usize) {
        if let Some(c) = self.sink_out.get_mut(sink) {
            c.0 += messages;
            c.1 += bytes as u64;
        }
    }

    /// A message whose source event arrived at `ingest_ns` (wall clock) was
    /// the `nth` written to `sink`'s current buffer; one in
    /// [`SAMPLE_EVERY`] is recorded.
    #[inline]
    pub fn written(&mut self, sink: usize, nth: u64, ingest_ns: i64, now_ns: impl FnOnce() -> i64) {
        if nth & u64::from(SAMPLE_EVERY - 1) == 1 && self.latency.len() < MAX_SAMPLES {
            let seconds = (now_ns() - ingest_ns).max(0) as f64 / 1e9;
            self.latency.push((sink, seconds));
        }
    }
}

/// A worker's state as `quoll_worker_state` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Joining the cluster for the first time.
    Forming,
    /// Processing.
    Up,
    /// Rolling back to a checkpoint (or re-forming after a loss).
    Recovering,
}

const STATES: [(WorkerState, &str); 3] = [
    (WorkerState::Forming, "forming"),
    (WorkerState::Up, "up"),
    (WorkerState::Recovering, "recovering"),
];

/// A member as the initializer's `/cluster` view shows it.
#[derive(Debug, Clone)]
pub struct MemberView {
    pub state: &'static str,
    /// The member's `--metrics-listen` address, as it sent it when joining.
    pub metrics: Option<String>,
    /// It is in the latest formation.
    in_formation: bool,
}

/// Every metric of one worker.
pub struct Metrics {
    registry: Registry,
    name: String,
    source_messages: Family<Labels, Counter>,
    source_bytes: Family<Labels, Counter>,
    stage_in: Family<Labels, Counter>,
    stage_out: Family<Labels, Counter>,
    stage_seconds: Hist,
    sink_messages: Family<Labels, Counter>,
    sink_bytes: Family<Labels, Counter>,
    latency: Hist,
    peer_frames_sent: Family<Labels, Counter>,
    peer_bytes_sent: Family<Labels, Counter>,
    peer_frames_received: Family<Labels, Counter>,
    peer_bytes_received: Family<Labels, Counter>,
    checkpoints_begun: Counter,
    checkpoints_committed: Counter,
    checkpoints_abandoned: Counter,
    checkpoint_seconds: Histogram,
    checkpoint_bytes: Counter,
    last_committed: Gauge,
    recoveries: Counter,
    recovery_seconds: Histogram,
    user_errors: Family<Labels, Counter>,
    key_groups: Gauge,
    keys: Gauge,
    resident: Gauge,
    state: Family<Labels, Gauge>,
    /// Names of sources, stages and sinks, by index.
    sources: Vec<String>,
    stages: Vec<String>,
    sinks: Vec<String>,
    /// Per place: user errors already added to `user_errors`.
    errors_seen: Mutex<BTreeMap<String, u64>>,
    /// Checkpoint being taken here and when it began.
    checkpoint_began: Mutex<Option<(u64, Instant)>>,
    /// When the current recovery began.
    recovery_began: Mutex<Option<Instant>>,
    /// Initializer only: the members and their state, for the dashboard.
    members: Mutex<BTreeMap<String, MemberView>>,
    /// Initializer only: the members' metrics addresses, from their joins.
    member_metrics: Mutex<BTreeMap<String, String>>,
}

impl Metrics {
    pub fn new(
        worker: &str,
        sources: Vec<String>,
        stages: Vec<String>,
        sinks: Vec<String>,
    ) -> Metrics {
        let worker_label = (Cow::Borrowed("worker"), Cow::Owned(worker.to_string()));
        let hist: fn() -> Histogram = seconds_histogram;
        let mut m = Metrics {
            registry: Registry::with_labels([worker_label].into_iter()),
            name: worker.to_string(),
            source_messages: Family::default(),
            source_bytes: Family::default(),
            stage_in: Family::default(),
            stage_out: Family::default(),
            stage_seconds: Family::new_with_constructor(hist),
            sink_messages: Family::default(),
            sink_bytes: Family::default(),
            latency: Family::new_with_constructor(hist),
            peer_frames_sent: Family::default(),
            peer_bytes_sent: Family::default(),
            peer_frames_received: Family::default(),
            peer_bytes_received: Family::default(),
            checkpoints_begun: Counter::default(),
            checkpoints_committed: Counter::default(),
            checkpoints_abandoned: Counter::default(),
            checkpoint_seconds: seconds_histogram(),
            checkpoint_bytes: Counter::default(),
            last_committed: Gauge::default(),
            recoveries: Counter::default(),
            recovery_seconds: seconds_histogram(),
            user_errors: Family::default(),
            key_groups: Gauge::default(),
            keys: Gauge::default(),
            resident: Gauge::default(),
            state: Family::default(),
            sources,
            stages,
            sinks,
            errors_seen: Mutex::new(BTreeMap::new()),
            checkpoint_began: Mutex::new(None),
            recovery_began: Mutex::new(None),
            members: Mutex::new(BTreeMap::new()),
            member_metrics: Mutex::new(BTreeMap::new()),
        };
        let r = &mut m.registry;
        r.register(
            "quoll_source_messages",
            "Messages taken from each source",
            m.source_messages.clone(),
        );
        r.register_with_unit(
            "quoll_source",
            "Bytes of frames taken from each source",
            Unit::Bytes,
            m.source_bytes.clone(),
        );
        r.register(
            "quoll_stage_messages_in",
            "Messages processed by each stage on this worker",
            m.stage_in.clone(),
        );
        r.register(
            "quoll_stage_messages_out",
            "Messages each stage passed on",
            m.stage_out.clone(),
        );
        r.register_with_unit(
            "quoll_stage_processing",
            "Time of a stage's user call (1 call in 64 is timed)",
            Unit::Seconds,
            m.stage_seconds.clone(),
        );
        r.register(
            "quoll_sink_messages",
            "Messages written to each sink",
            m.sink_messages.clone(),
        );
        r.register_with_unit(
            "quoll_sink",
            "Bytes written to each sink",
            Unit::Bytes,
            m.sink_bytes.clone(),
        );
        r.register_with_unit(
            "quoll_end_to_end_latency",
            "From a message's arrival at a source to its write to a sink (1 write in 64 is timed)",
            Unit::Seconds,
            m.latency.clone(),
        );
        r.register(
            "quoll_peer_frames_sent",
            "Data frames sent to each other worker",
            m.peer_frames_sent.clone(),
        );
        r.register_with_unit(
            "quoll_peer_sent",
            "Bytes of data frames sent to each other worker",
            Unit::Bytes,
            m.peer_bytes_sent.clone(),
        );
        r.register(
            "quoll_peer_frames_received",
            "Data frames received from each other worker",
            m.peer_frames_received.clone(),
        );
        r.register_with_unit(
            "quoll_peer_received",
            "Bytes of data frames received from each other worker",
            Unit::Bytes,
            m.peer_bytes_received.clone(),
        );
        r.register(
            "quoll_checkpoints_begun",
            "Checkpoints this worker began",
            m.checkpoints_begun.clone(),
        );
        r.register(
            "quoll_checkpoints_committed",
            "Checkpoints committed cluster-wide that this worker took part in",
            m.checkpoints_committed.clone(),
        );
        r.register(
            "quoll_checkpoints_abandoned",
            "Checkpoints abandoned",
            m.checkpoints_abandoned.clone(),
        );
        r.register_with_unit(
            "quoll_checkpoint_duration",
            "From a checkpoint's beginning on this worker to its commit",
            Unit::Seconds,
            m.checkpoint_seconds.clone(),
        );
        r.register_with_unit(
            "quoll_checkpoint_written",
            "Bytes of checkpoint files written",
            Unit::Bytes,
            m.checkpoint_bytes.clone(),
        );
        r.register(
            "quoll_checkpoint_last_committed_id",
            "The last checkpoint committed",
            m.last_committed.clone(),
        );
        r.register(
            "quoll_recoveries",
            "Rollbacks to a checkpoint this worker carried out",
            m.recoveries.clone(),
        );
        r.register_with_unit(
            "quoll_recovery_duration",
            "From the start of a recovery (a rollback, or the start of a restarted worker) to its restored state",
            Unit::Seconds,
            m.recovery_seconds.clone(),
        );
        r.register(
            "quoll_user_errors",
            "Messages dropped after an error in user code or data, per place",
            m.user_errors.clone(),
        );
        r.register(
            "quoll_key_groups",
            "Key groups this worker owns",
            m.key_groups.clone(),
        );
        r.register(
            "quoll_keys",
            "Keys held in state and window stages",
            m.keys.clone(),
        );
        r.register_with_unit(
            "process_resident_memory",
            "Resident memory of the worker process",
            Unit::Bytes,
            m.resident.clone(),
        );
        r.register(
            "quoll_worker_state",
            "1 for the worker's current state (forming, up, recovering)",
            m.state.clone(),
        );
        for s in &m.sources {
            m.source_messages
                .get_or_create(&label("source", s))
                .inc_by(0);
            m.source_bytes.get_or_create(&label("source", s)).inc_by(0);
        }
        for s in &m.stages {
            m.stage_in.get_or_create(&label("stage", s)).inc_by(0);
            m.stage_out.get_or_create(&label("stage", s)).inc_by(0);
        }
        for s in &m.sinks {
            m.sink_messages.get_or_create(&label("sink", s)).inc_by(0);
            m.sink_bytes.get_or_create(&label("sink", s)).inc_by(0);
        }
        m.set_state(WorkerState::Forming);
        m
    }

    /// Moves what the executor counted since the last call into the
    /// registry; `errors` are the user-error counts per place (totals).
    pub fn publish(&self, ex: &mut ExecMeters, errors: BTreeMap<String, u64>, keys: usize) {
        for (i, c) in ex.source_in.iter_mut().enumerate() {
            if let Some(name) = self.sources.get(i) {
                let l = label("source", name);
                self.source_messages
                    .get_or_create(&l)
                    .inc_by(std::mem::take(&mut c.0));
                self.source_bytes
                    .get_or_create(&l)
                    .inc_by(std::mem::take(&mut c.1));
            }
        }
        for (i, name) in self.stages.iter().enumerate() {
            let l = label("stage", name);
            if let Some(c) = ex.stage_in.get_mut(i) {
                self.stage_in.get_or_create(&l).inc_by(std::mem::take(c));
            }
            if let Some(c) = ex.stage_out.get_mut(i) {
                self.stage_out.get_or_create(&l).inc_by(std::mem::take(c));
            }
        }
        for (i, c) in ex.sink_out.iter_mut().enumerate() {
            if let Some(name) = self.sinks.get(i) {
                let l = label("sink", name);
                self.sink_messages
                    .get_or_create(&l)
                    .inc_by(std::mem::take(&mut c.0));
                self.sink_bytes
                    .get_or_create(&l)
                    .inc_by(std::mem::take(&mut c.1));
            }
        }
        for (stage, s) in ex.stage_time.drain(..) {
            if let Some(name) = self.stages.get(stage) {
                self.stage_seconds
                    .get_or_create(&label("stage", name))
                    .observe(s);
            }
        }
        for (sink, s) in ex.latency.drain(..) {
            if let Some(name) = self.sinks.get(sink) {
                self.latency.get_or_create(&label("sink", name)).observe(s);
            }
        }
        if let Ok(mut seen) = self.errors_seen.lock() {
            for (place, total) in errors {
                let before = seen.insert(place.clone(), total).unwrap_or(0);
                self.user_errors
                    .get_or_create(&label("place", &place))
                    .inc_by(total.saturating_sub(before));
            }
        }
        self.keys.set(i64::try_from(keys).unwrap_or(i64::MAX));
    }

    /// One data frame of `bytes` received from `peer`.
    pub fn peer_frame(&self, peer: &str, bytes: usize) {
        let l = label("peer", peer);
        self.peer_frames_received.get_or_create(&l).inc();
        self.peer_bytes_received
            .get_or_create(&l)
            .inc_by(bytes as u64);
    }

    /// `frames` data frames of `bytes` in all were sent to `peer`.
    pub fn peer_frames_sent(&self, peer: &str, frames: u64, bytes: u64) {
        let l = label("peer", peer);
        self.peer_frames_sent.get_or_create(&l).inc_by(frames);
        self.peer_bytes_sent.get_or_create(&l).inc_by(bytes);
    }

    pub fn set_state(&self, state: WorkerState) {
        for (s, name) in STATES {
            self.state
                .get_or_create(&label("state", name))
                .set(i64::from(s == state));
        }
        match state {
            WorkerState::Recovering => {
                if let Ok(mut r) = self.recovery_began.lock() {
                    r.get_or_insert_with(Instant::now);
                }
            }
            WorkerState::Forming | WorkerState::Up => {}
        }
    }

    /// A restarted worker's recovery begins with the process.
    pub fn recovery_began_at(&self, at: Instant) {
        if let Ok(mut r) = self.recovery_began.lock() {
            *r = Some(at);
        }
    }

    /// A rollback (`rolled_back`) or the first restore is done.
    pub fn restored(&self, rolled_back: bool) {
        let began = self.recovery_began.lock().ok().and_then(|mut r| r.take());
        if rolled_back {
            self.recoveries.inc();
            if let Some(t) = began {
                self.recovery_seconds.observe(t.elapsed().as_secs_f64());
            }
        }
    }

    fn key_groups(&self, owned: usize) {
        self.key_groups
            .set(i64::try_from(owned).unwrap_or(i64::MAX));
    }

    pub fn checkpoint_begun(&self, id: u64) {
        self.checkpoints_begun.inc();
        if let Ok(mut b) = self.checkpoint_began.lock() {
            *b = Some((id, Instant::now()));
        }
    }

    pub fn checkpoint_written(&self, bytes: u64) {
        self.checkpoint_bytes.inc_by(bytes);
    }

    pub fn checkpoint_committed(&self, id: u64) {
        self.checkpoints_committed.inc();
        self.last_committed
            .set(i64::try_from(id).unwrap_or(i64::MAX));
        if let Ok(mut b) = self.checkpoint_began.lock() {
            if let Some((began, t)) = b.take() {
                if began == id {
                    self.checkpoint_seconds.observe(t.elapsed().as_secs_f64());
                }
            }
        }
    }

    pub fn checkpoint_abandoned(&self) {
        self.checkpoints_abandoned.inc();
        if let Ok(mut b) = self.checkpoint_began.lock() {
            *b = None;
        }
    }

    // ---- the initializer's view of the cluster, for the dashboard

    /// A worker asked to join, giving its metrics address.
    pub fn member_joined(&self, name: &str, metrics: Option<String>) {
        if let (Some(addr), Ok(mut m)) = (metrics, self.member_metrics.lock()) {
            m.insert(name.to_string(), addr);
        }
    }

    /// The cluster formed with `names`, this worker owning `key_groups`;
    /// `metrics` is this worker's own metrics address. Its members are
    /// forming (first formation) or recovering until they run.
    pub fn formed(&self, names: &[String], key_groups: usize, first: bool, metrics: Option<&str>) {
        self.key_groups(key_groups);
        let state = if first { "forming" } else { "recovering" };
        let (Ok(mut members), Ok(addrs)) = (self.members.lock(), self.member_metrics.lock()) else {
            return;
        };
        for m in members.values_mut() {
            m.in_formation = false;
        }
        for name in names {
            let metrics = if *name == self.name {
                metrics.map(str::to_string)
            } else {
                addrs.get(name).cloned()
            };
            let view = MemberView {
                state,
                metrics,
                in_formation: true,
            };
            members.insert(name.clone(), view);
        }
    }

    /// This worker processes again; on the initializer, so does the
    /// formation it leads.
    pub fn running(&self) {
        self.set_state(WorkerState::Up);
        if let Ok(mut members) = self.members.lock() {
            for m in members.values_mut().filter(|m| m.in_formation) {
                m.state = "up";
            }
        }
    }

    /// The cluster rolls back: every member still in it recovers.
    pub fn rolling_back(&self) {
        self.set_state(WorkerState::Recovering);
        if let Ok(mut members) = self.members.lock() {
            for m in members.values_mut().filter(|m| m.state != "lost") {
                m.state = "recovering";
            }
        }
    }

    pub fn member_lost(&self, name: &str) {
        if let Ok(mut members) = self.members.lock() {
            if let Some(m) = members.get_mut(name) {
                m.state = "lost";
                m.in_formation = false;
            }
        }
    }

    fn cluster_json(&self) -> String {
        let members: serde_json::Map<String, serde_json::Value> = self
            .members
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(name, v)| {
                        let view = serde_json::json!({ "state": v.state, "metrics": v.metrics });
                        (name.clone(), view)
                    })
                    .collect()
            })
            .unwrap_or_default();
        serde_json::json!({ "initializer": self.name, "members": members }).to_string()
    }

    /// The metrics in OpenMetrics text.
    fn render(&self) -> Result<String, std::fmt::Error> {
        self.resident.set(resident_bytes().unwrap_or(0));
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// OpenMetrics text as Prometheus' older text format (version 0.0.4),
/// which `promtool check metrics` and clients that do not ask for
/// OpenMetrics read: a counter family is named with its `_total` suffix,
/// and there are no `# UNIT` or `# EOF` lines. Samples are the same.
fn classic_text(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{prefix}{name}{suffix} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Resident set size from `/proc/self/status` (`VmRSS`, in KiB; none
/// where there is no procfs).
fn resident_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The dashboard page (hand-written HTML, SVG and JS; no network needed).
const DASHBOARD: &str = include_str!("dashboard.html");

/// Serves `/metrics` (and on the initializer `/` and `/cluster`) until the
/// runtime stops.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, initializer: bool) {
    let mut app = axum::Router::new().route("/metrics", get(scrape));
    if initializer {
        app = app
            .route("/", get(|| async { Html(DASHBOARD) }))
            .route("/cluster", get(cluster));
    }
    if let Err(e) = axum::serve(listener, app.with_state(metrics)).await {
        tracing::error!("the metrics server stopped: {e}");
    }
}

/// `GET /metrics`: OpenMetrics to a client that asks for it (Prometheus
/// does), else the older text format.
async fn scrape(State(m): State<Arc<Metrics>>, headers: HeaderMap) -> Response {
    let open_metrics = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    match m.render() {
        Ok(body) => {
            let (kind, body) = if open_metrics {
                (OPEN_METRICS, body)
            } else {
                (CLASSIC_TEXT, classic_text(&body))
            };
            // The initializer's dashboard, on another port, reads it.
            let cors = (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*");
            ([(header::CONTENT_TYPE, kind), cors], body).into_response()
        }
        Err(e) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("metrics of worker '{}' could not be encoded: {e}", m.name),
        )
            .into_response(),
    }
}

async fn cluster(State(m): State<Arc<Metrics>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        m.cluster_json(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counter_families_with_total() {
        let m = Metrics::new(
            "w1",
            vec!["in".into()],
            vec!["split".into()],
            vec!["out".into()],
        );
        let mut ex = ExecMeters::new(1, 1, 1);
        ex.source_in(0, 3, 30);
        ex.sink_out(0, 2, 20);
        m.publish(
            &mut ex,
            BTreeMap::from([("stage 'split'".to_string(), 4)]),
            7,
        );
        let open = m.render().expect("encodes");
        assert!(
            open.contains("# TYPE quoll_source_messages counter"),
            "{open}"
        );
        assert!(open.ends_with("# EOF\n"), "{open}");
        let text = classic_text(&open);
        assert!(
            text.contains("# TYPE quoll_source_messages_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP quoll_source_bytes_total Bytes"),
            "{text}"
        );
        assert!(
            text.contains("quoll_source_bytes_total{worker=\"w1\",source=\"in\"} 30\n"),
            "{text}"
        );
        assert!(
            text.contains("quoll_user_errors_total{worker=\"w1\",place=\"stage 'split'\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE quoll_keys gauge\nquoll_keys{worker=\"w1\"} 7\n"),
            "{text}"
        );
        assert!(
            !text.contains("# UNIT") && !text.contains("# EOF"),
            "{text}"
        );
        // Counts drained once are not added again.
        m.publish(
            &mut ex,
            BTreeMap::from([("stage 'split'".to_string(), 4)]),
            7,
        );
        let again = classic_text(&m.render().expect("encodes"));
        assert!(again.contains("source=\"in\"} 30\n"), "{again}");
        assert!(again.contains("place=\"stage 'split'\"} 4\n"), "{again}");
    }
}
