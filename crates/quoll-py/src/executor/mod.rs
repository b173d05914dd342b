//! The executor: the one thread of a worker that touches Python.
//!
//! It owns every Python object of the dataflow (callables, state objects,
//! window accumulators, messages in flight) and holds the GIL while it runs a
//! batch; it releases the GIL only while it waits for the next event. I/O
//! threads hand it frames as bytes; it hands sinks encoded bytes.
//!
//! Messages move depth-first: `push(stage, value, key, event_time)` runs the
//! stage and pushes each output straight into the next stage, so a chain of
//! stages is one call chain (fused) and per-key order is the order messages
//! entered. Keys are the Python `str`/`bytes` objects the source or the key
//! extractor produced; they are compared as UTF-8 / raw bytes
//! (docs/wallaroo-compat.md, "Keys").
//!
//! Invariants:
//! - one state object per (state stage, key), created by `initial_state()` on
//!   the key's first message and passed by reference on every call;
//! - a user error drops exactly the message being processed (for `*_multi`,
//!   every output of that call) and nothing else;
//! - output for a sink is appended to that sink's buffer in processing order
//!   and handed to the sink's writer after each batch.

use crate::app::{AggregationCalls, AppPlan, SinkPlan, SinkSpec, SourceSpec, StageCalls};
use crate::codec::Codec;
use crate::event::SourcePosition;
use crate::logging::{wallaroo_line, WallarooLine};
use crate::metrics::ExecMeters;
use crate::router::Router;
use crate::sinks::{SinkChunk, SinkCommand};
use crate::user_errors::{Fatal, UserErrors};
use bytes::Bytes;
use keys::{arrived_key, key_bytes, normalise_key, quote_key, show_key, KeyError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString};
use quoll_core::key_group::KeyHashBuilder;
use quoll_core::topology::StageKind;
use quoll_core::windows::{
    Aggregator, CountWindowSpec, CountWindows, RangeWindowSpec, RangeWindows, WindowOutput,
};
use quoll_core::wire::{self, BatchReader};
use quoll_kafka::KafkaRecord;
pub use snapshot::Snapshot;
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tracing::{error, warn};

mod compact;
mod keys;
mod snapshot;

type KeyMap<V> = HashMap<Box<[u8]>, V, KeyHashBuilder>;
/// What a window timer fired for one key: the key, its outputs, and the
/// aggregation's error if it raised.
type Fired<'py> = (
    Py<PyAny>,
    Vec<WindowOutput<Bound<'py, PyAny>>>,
    Result<(), PyErr>,
);

/// Period of the count-window partial flush: 5 s, as in Wallaroo
/// (docs/wallaroo-compat.md, "Windows").
const COUNT_WINDOW_FLUSH: Duration = Duration::from_secs(5);
/// How long a range-window stage must hear nothing before its input counts
/// as quiet, and how far behind the wall clock its watermark then runs: a
/// message stamped at `t` is in this worker's inbox well within this (the
/// sending worker hands its batches over within a round, ~20 ms at worst),
/// so once the inboxes were found empty at `d`, every window ending before
/// `d - IDLE_ALLOWANCE - delay` is complete (docs/wallaroo-compat.md,
/// "Windows").
const IDLE_ALLOWANCE: Duration = Duration::from_millis(100);
/// The closest two idle firings of one stage may be: keys' windows end at
/// different times (per-key offsets), and each firing looks at every key.
const IDLE_TICK: Duration = Duration::from_millis(10);
/// Sink output is handed over once a buffer holds this much, or at the end
/// of a batch.
const SINK_FLUSH_BYTES: usize = 256 << 10;
/// A Kafka sink's records are handed over in lots of at most this many.
const KAFKA_FLUSH_RECORDS: usize = 1000;

enum Op {
    Stateless {
        call: Py<PyAny>,
        multi: bool,
    },
    KeyBy {
        call: Py<PyAny>,
    },
    Collect {
        key: Py<PyAny>,
    },
    State {
        call: Py<PyAny>,
        multi: bool,
        initial_state: Py<PyAny>,
        states: KeyMap<Keyed<Py<PyAny>>>,
        /// State restored from a checkpoint and not touched since: the
        /// codec blob, decoded on the key's first message (see
        /// snapshot.rs, `Executor::restore`). A key is in `states` or here,
        /// never both.
        restored: KeyMap<Vec<u8>>,
    },
    Range {
        agg: AggregationCalls,
        spec: RangeWindowSpec,
        windows: KeyMap<Keyed<RangeWindows<Py<PyAny>>>>,
        timers: WindowTimers,
    },
    Count {
        agg: AggregationCalls,
        spec: CountWindowSpec,
        windows: KeyMap<Keyed<CountWindows<Py<PyAny>>>>,
        next_flush: Instant,
    },
    Sinks {
        sinks: Vec<usize>,
    },
}

/// Per-key state of a keyed stage: the key as the user saw it (for
/// `Aggregation.output`), the state, and whether it changed since the last
/// checkpoint (incremental checkpoints write only those).
struct Keyed<T> {
    key: Py<PyAny>,
    value: T,
    dirty: bool,
}

/// Timer state of one range-window stage (docs/wallaroo-compat.md,
/// "Windows").
///
/// As in Wallaroo, a periodic tick of 2 x (range + delay) fires what the
/// upstreams' watermark makes due, and once all input has been quiet for two
/// ticks every key is flushed. On top of that, the **idle firing**: once the
/// stage has heard nothing for [`IDLE_ALLOWANCE`], its watermark follows the
/// wall clock of the last moment the executor found its inboxes empty, minus
/// that allowance, capped per key at the end of the key's data (exactly the
/// windows the quiet flush would fire, no trailing empty ones), and the stage
/// wakes when the next of those windows becomes due. So after the input
/// stops at `q`, a window ending at `e` fires by
/// `max(e + delay, q) + IDLE_ALLOWANCE + IDLE_TICK`, plus however long the
/// executor is busy; a busy executor (inboxes never empty) delays the idle
/// firing, never makes it fire early.
struct WindowTimers {
    period: Duration,
    next_tick: Instant,
    last_input: Instant,
    watermark: i64,
    /// The quiet flush has run since the last input.
    flushed_since_input: bool,
    /// The idle firing has fired every window up to the cap since the last
    /// input: nothing to do until the next message.
    idle_done: bool,
    /// The earliest watermark at which the idle firing has something to
    /// fire, as of its last pass (`i64::MIN`: unknown, look at every key).
    idle_next_wm: i64,
    /// When the idle firing looks next (`None`: as soon as input is quiet).
    idle_due: Option<Instant>,
    /// Per upstream worker (index): the newest event time heard from it and
    /// when. The stage's watermark is the minimum over upstreams heard
    /// within two timer periods: each upstream's event times only
    /// grow, so none of its messages can be late.
    upstreams: Vec<Option<(i64, Instant)>>,
}

impl WindowTimers {
    /// Notes a message from `origin` and returns the stage's watermark.
    fn advance(&mut self, origin: usize, et: i64, now: Instant) -> i64 {
        if self.upstreams.len() <= origin {
            self.upstreams.resize(origin + 1, None);
        }
        let last = self.upstreams[origin].map_or(et, |(t, _)| t.max(et));
        self.upstreams[origin] = Some((last, now));
        self.refresh(now);
        self.watermark
    }

    /// Recomputes the watermark from the live upstreams (never lowering it).
    fn refresh(&mut self, now: Instant) {
        let live = self.period * 2;
        let min_live = self
            .upstreams
            .iter()
            .flatten()
            .filter(|(_, heard)| now.duration_since(*heard) <= live)
            .map(|(t, _)| *t)
            .min();
        if let Some(w) = min_live {
            self.watermark = self.watermark.max(w);
        }
    }
}

struct Stage {
    /// `stage 'name' (kind)`, for errors.
    place: String,
    /// Runs on the owner of the message's key group.
    keyed: bool,
    next: Option<usize>,
    op: Op,
}

struct SinkOut {
    label: String,
    place: String,
    encode: Py<PyAny>,
    buf: Vec<u8>,
    /// A Kafka sink's records (None for byte sinks, which fill `buf`).
    records: Option<Vec<KafkaRecord>>,
    /// A connector sink: each output in `buf` is preceded by its length
    /// (`u32` BE) so that its writer can send it as one MESSAGE; `offset`
    /// counts payload bytes only, the stream offset the sink connector sees.
    framed: bool,
    messages: u64,
    tx: mpsc::Sender<SinkCommand>,
    /// Bytes handed to the writer since the sink (re)started at `base`.
    offset: u64,
}

/// Appends one output to a sink's buffer, behind its length if `framed`.
fn put_output(buf: &mut Vec<u8>, framed: bool, out: &[u8]) {
    if framed {
        // Outputs over 4 GiB can't be framed; the length field wraps like
        // any u32, and the sink connector rejects the frame.
        buf.extend_from_slice(&(out.len() as u32).to_be_bytes());
    }
    buf.extend_from_slice(out);
}

/// A generator source, driven on the executor thread.
struct GenSource {
    source: usize,
    name: String,
    initial_value: Py<PyAny>,
    apply: Py<PyAny>,
    cur: Option<Py<PyAny>>,
    /// It has emitted values (so starting over calls `initial_value()` again).
    emitted: bool,
}

/// How far a replayable source has been processed.
#[derive(Default, Clone)]
pub struct SourceProgress {
    pub file_offset: u64,
    /// Connector source: stream id to the last message id. Kafka source:
    /// partition to its next offset (both never negative), so the
    /// checkpoint format holds either.
    pub streams: std::collections::BTreeMap<u64, u64>,
}

impl SourceProgress {
    /// The position as a checkpoint stores it.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let streams: Vec<(u64, u64)> = self.streams.iter().map(|(a, b)| (*a, *b)).collect();
        postcard::to_allocvec(&(self.file_offset, streams)).map_err(|e| e.to_string())
    }

    /// A position [`SourceProgress::encode`] stored.
    pub fn decode(blob: &[u8]) -> Result<Self, String> {
        let (file_offset, streams): (u64, Vec<(u64, u64)>) =
            postcard::from_bytes(blob).map_err(|e| e.to_string())?;
        Ok(SourceProgress {
            file_offset,
            streams: streams.into_iter().collect(),
        })
    }
}

/// A framed source's decode call and where its messages go.
struct FramedSource {
    place: String,
    decode: Option<Py<PyAny>>,
    entry: usize,
    implicit_key: Py<PyAny>,
}

pub struct Executor {
    stages: Vec<Stage>,
    pub router: Option<Router>,
    /// The worker's one codec: messages to other workers, state to disk.
    pub codec: Codec,
    /// Puts state objects back into the compact layout after the codec.
    compactor: compact::Compactor,
    /// Per source: where it stands after the frames processed so far.
    progress: Vec<SourceProgress>,
    /// The worker the message being processed came from (this one for
    /// source input), for window watermarks.
    origin: usize,
    gens_enabled: bool,
    sources: Vec<FramedSource>,
    gens: Vec<GenSource>,
    sinks: Vec<SinkOut>,
    pub errors: UserErrors,
    rt: tokio::runtime::Handle,
    last_event_time: i64,
    /// Wall-clock ns when the event loop last found its inboxes empty: every
    /// message that was in them by then has been processed.
    drained_ns: i64,
    pub messages_in: u64,
    /// Counts and timing samples for the metrics (`crate::metrics`).
    pub meters: ExecMeters,
}

/// Wall-clock nanoseconds since the epoch, never decreasing within a worker.
fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl Executor {
    pub fn new(
        py: Python<'_>,
        plan: AppPlan,
        sink_txs: Vec<mpsc::Sender<SinkCommand>>,
        codec: Codec,
        errors: UserErrors,
        rt: tokio::runtime::Handle,
    ) -> PyResult<Executor> {
        let AppPlan {
            topology,
            stage_calls,
            sources,
            sinks,
        } = plan;
        let now = Instant::now();
        let mut stages = Vec::with_capacity(topology.stages.len());
        for (def, calls) in topology.stages.iter().zip(stage_calls) {
            let op = match (&def.kind, calls) {
                (StageKind::Stateless { multi }, StageCalls::Stateless { call }) => Op::Stateless {
                    call,
                    multi: *multi,
                },
                (StageKind::KeyBy, StageCalls::KeyBy { call }) => Op::KeyBy { call },
                (StageKind::Collect { .. }, StageCalls::Collect { key }) => Op::Collect { key },
                (
                    StageKind::State { multi },
                    StageCalls::State {
                        call,
                        initial_state,
                    },
                ) => Op::State {
                    call,
                    multi: *multi,
                    initial_state,
                    states: KeyMap::default(),
                    restored: KeyMap::default(),
                },
                (StageKind::RangeWindows(spec), StageCalls::Windows { aggregation }) => {
                    let period =
                        Duration::from_nanos(spec.timer_period()).max(Duration::from_millis(10));
                    Op::Range {
                        agg: aggregation,
                        spec: *spec,
                        windows: KeyMap::default(),
                        timers: WindowTimers {
                            period,
                            next_tick: now + period,
                            last_input: now,
                            watermark: i64::MIN,
                            flushed_since_input: true,
                            idle_done: true,
                            idle_next_wm: i64::MIN,
                            idle_due: None,
                            upstreams: Vec::new(),
                        },
                    }
                }
                (StageKind::CountWindows { count }, StageCalls::Windows { aggregation }) => {
                    Op::Count {
                        agg: aggregation,
                        spec: CountWindowSpec::new(*count).map_err(|e| {
                            pyo3::exceptions::PyValueError::new_err(format!("{}: {e}", def.name))
                        })?,
                        windows: KeyMap::default(),
                        next_flush: now + COUNT_WINDOW_FLUSH,
                    }
                }
                (StageKind::Sinks { sinks }, StageCalls::Sinks) => Op::Sinks {
                    sinks: sinks.clone(),
                },
                _ => unreachable!("app::build_plan pairs each stage kind with its calls"),
            };
            stages.push(Stage {
                place: format!("stage '{}' ({})", def.name, def.kind.label()),
                keyed: def.kind.is_keyed(),
                next: def.next,
                op,
            });
        }
        let mut framed = Vec::new();
        let mut gens = Vec::new();
        for (index, (src, def)) in sources.into_iter().zip(&topology.sources).enumerate() {
            let decode = match src.spec {
                SourceSpec::Tcp { decode, .. }
                | SourceSpec::File { decode, .. }
                | SourceSpec::Connector { decode, .. }
                | SourceSpec::Kafka { decode, .. } => Some(decode),
                SourceSpec::Gen {
                    initial_value,
                    apply,
                } => {
                    let cur = Some(initial_value.clone_ref(py));
                    gens.push(GenSource {
                        source: index,
                        name: src.name.clone(),
                        initial_value,
                        apply,
                        cur,
                        emitted: false,
                    });
                    None
                }
            };
            framed.push(FramedSource {
                place: format!("source '{}' ({})", src.name, def.kind),
                decode,
                entry: def.entry,
                implicit_key: src.implicit_key,
            });
        }
        let sinks: Vec<SinkOut> = sinks
            .into_iter()
            .zip(sink_txs)
            .map(
                |(
                    SinkPlan {
                        label,
                        encode,
                        spec,
                    },
                    tx,
                )| SinkOut {
                    place: format!("{label} (encoder)"),
                    label,
                    encode,
                    records: matches!(spec, SinkSpec::Kafka { .. }).then(Vec::new),
                    framed: matches!(spec, SinkSpec::Connector { .. }),
                    buf: Vec::with_capacity(SINK_FLUSH_BYTES * 2),
                    messages: 0,
                    tx,
                    offset: 0,
                },
            )
            .collect();
        let progress = (0..framed.len())
            .map(|_| SourceProgress::default())
            .collect();
        let meters = ExecMeters::new(framed.len(), stages.len(), sinks.len());
        let mut ex = Executor {
            stages,
            router: None,
            codec,
            compactor: compact::Compactor::new(py)?,
            progress,
            origin: 0,
            gens_enabled: true,
            sources: framed,
            gens,
            sinks,
            errors: UserErrors::new("", crate::user_errors::OnUserError::Skip),
            rt,
            last_event_time: 0,
            drained_ns: i64::MIN,
            messages_in: 0,
            meters,
        };
        ex.errors = errors;
        ex.start_generators(py)
            .map_err(|Fatal(m)| pyo3::exceptions::PyRuntimeError::new_err(m))?;
        Ok(ex)
    }

    /// Calls `initial_value()` of every generator source once
    /// (docs/wallaroo-compat.md, "Sources").
    fn start_generators(&mut self, py: Python<'_>) -> Result<(), Fatal> {
        for i in 0..self.gens.len() {
            let Some(init) = self.gens[i].cur.take() else {
                continue;
            };
            match init.bind(py).call0() {
                Ok(v) if v.is_none() => self.gen_stopped(i),
                Ok(v) => self.gens[i].cur = Some(v.unbind()),
                Err(e) => {
                    let place = format!("source '{}' (gen)", self.gens[i].name);
                    self.errors.report_py(py, &place, "initial_value()", e)?;
                    warn!(place = %place, "the generator could not start; it produces nothing");
                }
            }
        }
        Ok(())
    }

    fn gen_stopped(&mut self, i: usize) {
        wallaroo_line(WallarooLine::GenSourceStopped {
            name: &self.gens[i].name,
        });
        self.gens[i].cur = None;
    }

    /// True while some generator source still has values to emit.
    pub fn generating(&self) -> bool {
        self.gens_enabled && self.gens.iter().any(|g| g.cur.is_some())
    }

    /// The event time of messages ingested now: wall-clock nanoseconds,
    /// never decreasing within this worker.
    fn ingest_time(&mut self) -> i64 {
        let t = now_ns().max(self.last_event_time);
        self.last_event_time = t;
        t
    }

    /// Decodes and processes the frames of one source connection, then
    /// records where the source stands.
    pub fn on_frames(
        &mut self,
        py: Python<'_>,
        source: usize,
        frames: Vec<Bytes>,
        keys: &[Bytes],
        position: Option<SourcePosition>,
    ) -> Result<(), Fatal> {
        self.process_frames(py, source, frames, keys)?;
        match position {
            Some(SourcePosition::FileOffset(o)) => self.progress[source].file_offset = o,
            Some(SourcePosition::Stream { id, point_of_ref }) => {
                self.progress[source].streams.insert(id, point_of_ref);
            }
            Some(SourcePosition::Partitions(next)) => {
                let streams = &mut self.progress[source].streams;
                for (partition, offset) in next {
                    streams.insert(partition as u64, offset as u64);
                }
            }
            None => {}
        }
        Ok(())
    }

    /// A frame's key is its MESSAGE key where a connector gave one (as
    /// UTF-8; Wallaroo lost it, see docs/wallaroo-compat.md, "Sources"),
    /// else the source's implicit key.
    fn process_frames(
        &mut self,
        py: Python<'_>,
        source: usize,
        frames: Vec<Bytes>,
        keys: &[Bytes],
    ) -> Result<(), Fatal> {
        self.origin = self.me();
        let et = self.ingest_time();
        let bytes = frames.iter().map(Bytes::len).sum();
        self.meters.source_in(source, frames.len(), bytes);
        let src = &self.sources[source];
        let (Some(decode), entry) = (src.decode.as_ref().map(|d| d.clone_ref(py)), src.entry)
        else {
            return Ok(());
        };
        let implicit = src.implicit_key.bind(py).clone();
        let decode = decode.bind(py);
        for (i, frame) in frames.into_iter().enumerate() {
            self.messages_in += 1;
            let payload = PyBytes::new(py, &frame);
            match decode.call1((payload,)) {
                Ok(v) if v.is_none() => {}
                Ok(v) => match keys.get(i).filter(|k| !k.is_empty()) {
                    Some(k) => {
                        let key = PyString::new(py, &String::from_utf8_lossy(k)).into_any();
                        self.push(py, entry, v, &key, et)?
                    }
                    None => self.push(py, entry, v, &implicit, et)?,
                },
                Err(e) => {
                    let place = self.sources[source].place.clone();
                    let detail = format!("decoder, frame of {} bytes", frame.len());
                    self.errors.report_py(py, &place, &detail, e)?;
                }
            }
        }
        Ok(())
    }

    /// Emits up to `budget` values from every active generator
    /// (`apply(cur)` runs before `cur` goes downstream, as in Wallaroo;
    /// docs/wallaroo-compat.md, "Sources").
    pub fn run_generators(&mut self, py: Python<'_>, budget: usize) -> Result<(), Fatal> {
        self.origin = self.me();
        for i in 0..self.gens.len() {
            let source = self.gens[i].source;
            let (entry, key) = (
                self.sources[source].entry,
                self.sources[source].implicit_key.bind(py).clone(),
            );
            let apply = self.gens[i].apply.clone_ref(py);
            let et = self.ingest_time();
            for _ in 0..budget {
                let Some(cur) = self.gens[i].cur.take() else {
                    break;
                };
                self.gens[i].emitted = true;
                let cur = cur.into_bound(py);
                match apply.bind(py).call1((&cur,)) {
                    Ok(nxt) if nxt.is_none() => self.gen_stopped(i),
                    Ok(nxt) => self.gens[i].cur = Some(nxt.unbind()),
                    Err(e) => {
                        let place = format!("source '{}' (gen)", self.gens[i].name);
                        self.errors.report_py(py, &place, "apply()", e)?;
                        warn!(place = %place, "the generator stops after an error in apply()");
                    }
                }
                self.messages_in += 1;
                self.meters.source_in(source, 1, 0);
                self.push(py, entry, cur, &key, et)?;
            }
        }
        Ok(())
    }

    /// Runs `value` through stage `stage` and, depth-first, everything after
    /// it; a keyed stage whose key group another worker owns ships the
    /// message there instead.
    fn push<'py>(
        &mut self,
        py: Python<'py>,
        stage: usize,
        value: Bound<'py, PyAny>,
        key: &Bound<'py, PyAny>,
        et: i64,
    ) -> Result<(), Fatal> {
        if self.stages[stage].keyed {
            if let Some(router) = &mut self.router {
                let kb = match key_bytes(key) {
                    Ok(kb) => kb,
                    Err(e) => return self.key_error(py, stage, e),
                };
                let owner = router.route(kb);
                if owner != router.me {
                    return self.ship(owner, stage, kb, &value, et);
                }
            }
        }
        let timer = self.meters.enter(stage);
        let st = &mut self.stages[stage];
        let next = st.next;
        match &mut st.op {
            Op::Stateless { call, multi } => {
                let multi = *multi;
                let result = call.bind(py).call1((&value,));
                self.meters.timed(stage, timer);
                self.emit(py, stage, next, result, multi, key, et)
            }
            Op::KeyBy { call } => {
                let result = call.bind(py).call1((&value,));
                self.meters.timed(stage, timer);
                self.meters.passed_on(stage, 1);
                match result
                    .map_err(KeyError::Raised)
                    .and_then(|k| normalise_key(py, k))
                {
                    Ok(new_key) => self.push(py, next.expect("validated"), value, &new_key, et),
                    Err(e) => self.key_error(py, stage, e),
                }
            }
            Op::Collect { key } => {
                let key = key.bind(py).clone();
                self.meters.passed_on(stage, 1);
                self.push(py, next.expect("validated"), value, &key, et)
            }
            Op::State {
                call,
                multi,
                initial_state,
                states,
                restored,
            } => {
                let multi = *multi;
                let kb = match key_bytes(key) {
                    Ok(kb) => kb,
                    Err(e) => return self.key_error(py, stage, e),
                };
                if let Some(blob) = restored.remove(kb) {
                    match self.codec.decode(py, &blob) {
                        Ok(value) => {
                            states.insert(
                                kb.into(),
                                Keyed {
                                    key: key.clone().unbind(),
                                    value: value.unbind(),
                                    dirty: false,
                                },
                            );
                        }
                        Err(e) => {
                            // Kept for a later message (or checkpoint): the
                            // key's state is never replaced by a new one.
                            restored.insert(kb.into(), blob);
                            let place = st.place.clone();
                            let detail = format!("key {}, restoring its state", show_key(key));
                            return self.errors.report(&place, &detail, &e.to_string(), None);
                        }
                    }
                }
                let state = match states.get_mut(kb) {
                    Some(s) => {
                        s.dirty = true;
                        s.value.bind(py).clone()
                    }
                    None => match initial_state.bind(py).call0() {
                        Ok(s) => {
                            states.insert(
                                kb.into(),
                                Keyed {
                                    key: key.clone().unbind(),
                                    value: s.clone().unbind(),
                                    dirty: true,
                                },
                            );
                            s
                        }
                        Err(e) => {
                            let place = st.place.clone();
                            let detail = format!("key {}, initial_state()", show_key(key));
                            return self.errors.report_py(py, &place, &detail, e);
                        }
                    },
                };
                let result = call.bind(py).call1((&value, &state));
                self.meters.timed(stage, timer);
                self.emit(py, stage, next, result, multi, key, et)
            }
            Op::Range {
                agg,
                spec,
                windows,
                timers,
            } => {
                let kb = match key_bytes(key) {
                    Ok(kb) => kb,
                    Err(e) => return self.key_error(py, stage, e),
                };
                let now = Instant::now();
                timers.last_input = now;
                timers.flushed_since_input = false;
                timers.idle_done = false;
                timers.idle_next_wm = i64::MIN;
                timers.idle_due = None;
                let watermark = timers.advance(self.origin, et, now);
                let mut out = Vec::new();
                let mut aggregator = PyAggregation { py, calls: agg };
                let entry = match windows.get_mut(kb) {
                    Some(e) => e,
                    None => {
                        // Wallaroo draws a random grid offset per key;
                        // deriving it from the key keeps it the same on every
                        // worker and after a restart (docs/wallaroo-compat.md,
                        // "Windows").
                        let offset =
                            spec.offset_from_random(quoll_core::key_group::stable_hash(kb));
                        let w = RangeWindows::new(*spec, watermark, offset);
                        windows.entry(kb.into()).or_insert(Keyed {
                            key: key.clone().unbind(),
                            value: w,
                            dirty: true,
                        })
                    }
                };
                entry.dirty = true;
                let value = value.unbind();
                let r = entry
                    .value
                    .on_message(&mut aggregator, kb, &value, et, watermark, &mut out)
                    .map(|_| ());
                self.meters.timed(stage, timer);
                self.window_results(py, stage, next, key, r, out)
            }
            Op::Count {
                agg, spec, windows, ..
            } => {
                let kb = match key_bytes(key) {
                    Ok(kb) => kb,
                    Err(e) => return self.key_error(py, stage, e),
                };
                let mut out = Vec::new();
                let mut aggregator = PyAggregation { py, calls: agg };
                let entry = match windows.get_mut(kb) {
                    Some(e) => e,
                    None => windows.entry(kb.into()).or_insert(Keyed {
                        key: key.clone().unbind(),
                        value: CountWindows::new(*spec),
                        dirty: true,
                    }),
                };
                entry.dirty = true;
                let value = value.unbind();
                let r = entry
                    .value
                    .on_message(&mut aggregator, kb, &value, et, &mut out);
                self.meters.timed(stage, timer);
                self.window_results(py, stage, next, key, r, out)
            }
            Op::Sinks { sinks } => {
                for i in 0..sinks.len() {
                    let Op::Sinks { sinks } = &self.stages[stage].op else {
                        unreachable!()
                    };
                    let sink = sinks[i];
                    self.write_sink(py, sink, &value, key, et)?;
                }
                Ok(())
            }
        }
    }

    /// Encodes a message into the batch for worker `owner`.
    fn ship(
        &mut self,
        owner: usize,
        stage: usize,
        kb: &[u8],
        value: &Bound<'_, PyAny>,
        et: i64,
    ) -> Result<(), Fatal> {
        let Some(router) = self.router.as_mut() else {
            return Err(Fatal(format!(
                "stage {stage}: a message for worker {owner} but no cluster"
            )));
        };
        if kb.len() > wire::MAX_KEY_LEN {
            let detail = format!(
                "key {}... (cut), sending to worker '{}'",
                quote_key(&kb[..32]),
                router.names[owner]
            );
            let why = format!(
                "the key is {} bytes; a key that crosses workers can be at most {} bytes",
                kb.len(),
                wire::MAX_KEY_LEN
            );
            let place = self.stages[stage].place.clone();
            return self.errors.report(&place, &detail, &why, None);
        }
        let codec = &self.codec;
        match router.push(owner, stage as u32, kb, et, |out| codec.encode(value, out)) {
            Ok(()) => Ok(()),
            Err(e) => {
                let detail = format!(
                    "key {}, sending to worker '{}'",
                    quote_key(kb),
                    router.names[owner]
                );
                let place = self.stages[stage].place.clone();
                self.errors
                    .report(&place, &detail, &e.to_string(), e.traceback())
            }
        }
    }

    /// Processes a data batch from another worker.
    pub fn on_peer_data(&mut self, py: Python<'_>, from: usize, body: &[u8]) -> Result<(), Fatal> {
        let Some(router) = &self.router else {
            return Ok(());
        };
        let from_name = router
            .names
            .get(from)
            .cloned()
            .unwrap_or_else(|| format!("#{from}"));
        let reader = match BatchReader::new(body) {
            Ok(r) => r,
            Err(e) => {
                return self.errors.report(
                    &format!("data link from worker '{from_name}'"),
                    "batch",
                    &e.to_string(),
                    None,
                )
            }
        };
        self.origin = from;
        for msg in reader {
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    return self.errors.report(
                        &format!("data link from worker '{from_name}'"),
                        "batch",
                        &e.to_string(),
                        None,
                    )
                }
            };
            let stage = msg.stage as usize;
            if stage >= self.stages.len() {
                let cause =
                    format!("stage {stage} does not exist here: do the workers run the same app?");
                self.errors.report(
                    &format!("data link from worker '{from_name}'"),
                    "message",
                    &cause,
                    None,
                )?;
                continue;
            }
            let value = match self.codec.decode(py, msg.value) {
                Ok(v) => v,
                Err(e) => {
                    let place = self.stages[stage].place.clone();
                    let detail = format!(
                        "key {}, message from worker '{from_name}'",
                        quote_key(msg.key)
                    );
                    self.errors
                        .report(&place, &detail, &e.to_string(), e.traceback())?;
                    continue;
                }
            };
            let key = arrived_key(py, &value, msg.key);
            self.messages_in += 1;
            self.push(py, stage, value, &key, msg.event_time)?;
        }
        Ok(())
    }

    /// This worker's index in the cluster (0 when alone).
    fn me(&self) -> usize {
        self.router.as_ref().map_or(0, |r| r.me)
    }

    /// Hands batches for other workers to their links (never blocks).
    pub fn flush_peers(&mut self) {
        if let Some(r) = &mut self.router {
            r.flush();
        }
    }

    /// Handles a computation's result: `None` is no message; a `*_multi`
    /// result must be a list (docs/wallaroo-compat.md, "How user code is
    /// called").
    #[allow(clippy::too_many_arguments)]
    fn emit<'py>(
        &mut self,
        py: Python<'py>,
        stage: usize,
        next: Option<usize>,
        result: PyResult<Bound<'py, PyAny>>,
        multi: bool,
        key: &Bound<'py, PyAny>,
        et: i64,
    ) -> Result<(), Fatal> {
        let next = next.expect("validated: only sinks end a chain");
        match result {
            Ok(out) if out.is_none() => Ok(()),
            Ok(out) if !multi => {
                self.meters.passed_on(stage, 1);
                self.push(py, next, out, key, et)
            }
            Ok(out) => match out.cast::<PyList>() {
                Ok(list) => {
                    for item in list.iter() {
                        if !item.is_none() {
                            self.meters.passed_on(stage, 1);
                            self.push(py, next, item, key, et)?;
                        }
                    }
                    Ok(())
                }
                Err(_) => {
                    let place = self.stages[stage].place.clone();
                    let cause = format!(
                        "compute_multi must return a list (or None), got {}",
                        out.get_type()
                            .name()
                            .map(|n| n.to_string())
                            .unwrap_or_default()
                    );
                    self.errors
                        .report(&place, &format!("key {}", show_key(key)), &cause, None)
                }
            },
            Err(e) => {
                let place = self.stages[stage].place.clone();
                self.errors
                    .report_py(py, &place, &format!("key {}", show_key(key)), e)
            }
        }
    }

    fn key_error(&mut self, py: Python<'_>, stage: usize, e: KeyError) -> Result<(), Fatal> {
        let place = self.stages[stage].place.clone();
        match e {
            KeyError::Raised(e) => self.errors.report_py(py, &place, "key extractor", e),
            KeyError::BadType(t) => self.errors.report(
                &place,
                "key extractor",
                &format!(
                    "unexpected non-string value of type {t}: a key must be str, bytes or int"
                ),
                None,
            ),
            KeyError::NotUtf8(e) => self.errors.report(
                &place,
                "key",
                &format!("key str can't be encoded as UTF-8: {e}"),
                None,
            ),
        }
    }

    /// Pushes window outputs downstream, or reports the aggregation's error.
    fn window_results<'py>(
        &mut self,
        py: Python<'py>,
        stage: usize,
        next: Option<usize>,
        key: &Bound<'py, PyAny>,
        r: Result<(), PyErr>,
        out: Vec<WindowOutput<Bound<'py, PyAny>>>,
    ) -> Result<(), Fatal> {
        if let Err(e) = r {
            let place = self.stages[stage].place.clone();
            self.errors.report_py(
                py,
                &place,
                &format!("key {}, aggregation", show_key(key)),
                e,
            )?;
        }
        let next = next.expect("validated");
        self.meters.passed_on(stage, out.len());
        for o in out {
            self.push(py, next, o.value, key, o.event_time)?;
        }
        Ok(())
    }

    fn write_sink<'py>(
        &mut self,
        py: Python<'py>,
        sink: usize,
        value: &Bound<'py, PyAny>,
        key: &Bound<'py, PyAny>,
        et: i64,
    ) -> Result<(), Fatal> {
        let s = &mut self.sinks[sink];
        match s.encode.bind(py).call1((value,)) {
            Ok(b) if s.records.is_some() => {
                if b.is_none() {
                    return Ok(());
                }
                let record = match b.extract::<(Vec<u8>, Option<Vec<u8>>, Option<i32>)>() {
                    Ok((payload, key, partition)) => KafkaRecord {
                        payload: payload.into(),
                        key: key.map(Bytes::from),
                        partition,
                    },
                    Err(e) => {
                        let place = s.place.clone();
                        return self.errors.report(
                            &place,
                            &format!("key {}", show_key(key)),
                            &format!("encoder result is not (payload, key, partition): {e}"),
                            None,
                        );
                    }
                };
                let records = s.records.get_or_insert_with(Vec::new);
                records.push(record);
                s.messages += 1;
                if records.len() >= KAFKA_FLUSH_RECORDS {
                    self.flush_sink(py, sink);
                }
                Ok(())
            }
            Ok(b) => {
                if let Ok(bytes) = b.cast::<PyBytes>() {
                    put_output(&mut s.buf, s.framed, bytes.as_bytes());
                } else if let Ok(text) = b.cast::<PyString>() {
                    match text.to_str() {
                        Ok(t) => put_output(&mut s.buf, s.framed, t.as_bytes()),
                        Err(e) => {
                            let place = s.place.clone();
                            return self.errors.report(
                                &place,
                                &format!("key {}", show_key(key)),
                                &format!("encoder returned a str that is not valid UTF-8: {e}"),
                                None,
                            );
                        }
                    }
                } else if b.is_none() {
                    return Ok(());
                } else {
                    let place = s.place.clone();
                    let t = b
                        .get_type()
                        .name()
                        .map(|n| n.to_string())
                        .unwrap_or_default();
                    return self.errors.report(
                        &place,
                        &format!("key {}", show_key(key)),
                        &format!("encoder returned {t}; it must return bytes, str or None"),
                        None,
                    );
                }
                s.messages += 1;
                self.meters.written(sink, s.messages, et, now_ns);
                if s.buf.len() >= SINK_FLUSH_BYTES {
                    self.flush_sink(py, sink);
                }
                Ok(())
            }
            Err(e) => {
                let place = s.place.clone();
                self.errors
                    .report_py(py, &place, &format!("key {}", show_key(key)), e)
            }
        }
    }

    fn flush_sink(&mut self, py: Python<'_>, sink: usize) {
        let s = &mut self.sinks[sink];
        let chunk = match &mut s.records {
            Some(records) if records.is_empty() => return,
            Some(records) => {
                let bytes = records.iter().map(|r| r.payload.len()).sum();
                self.meters.sink_out(sink, records.len() as u64, bytes);
                SinkCommand::Records(std::mem::take(records))
            }
            None if s.buf.is_empty() => return,
            None => {
                let chunk = SinkChunk {
                    bytes: Bytes::from(std::mem::replace(
                        &mut s.buf,
                        Vec::with_capacity(SINK_FLUSH_BYTES * 2),
                    )),
                    messages: s.messages,
                };
                let framing = if s.framed { 4 * chunk.messages } else { 0 };
                s.offset += chunk.bytes.len() as u64 - framing;
                self.meters
                    .sink_out(sink, chunk.messages, chunk.bytes.len());
                SinkCommand::Write(chunk)
            }
        };
        s.messages = 0;
        self.send_to_sink(py, sink, chunk);
    }

    /// Hands `command` to sink `sink`'s writer after everything handed to
    /// it before (waiting, without the GIL, while its queue is full).
    pub fn send_to_sink(&self, py: Python<'_>, sink: usize, command: SinkCommand) {
        let s = &self.sinks[sink];
        match s.tx.try_send(command) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(command)) => {
                // Back-pressure: wait for the writer without holding the GIL.
                let tx = s.tx.clone();
                let rt = self.rt.clone();
                let label = s.label.clone();
                py.detach(move || {
                    if rt.block_on(tx.send(command)).is_err() {
                        error!(place = %label, "writer stopped; output dropped");
                    }
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                error!(place = %s.label, "writer stopped; output dropped");
            }
        }
    }

    /// The keys each state and window stage holds on this worker, by stage
    /// index (the same on every worker), for the external channel's
    /// state-entity query. A key is its bytes as text (`str` keys exactly;
    /// `bytes` keys that aren't UTF-8 lossily), in byte order.
    pub fn state_entities(&self) -> quoll_core::external::StateEntities {
        let mut by_stage = std::collections::BTreeMap::new();
        for (index, stage) in self.stages.iter().enumerate() {
            let mut keys: Vec<&[u8]> = match &stage.op {
                Op::State {
                    states, restored, ..
                } => states
                    .keys()
                    .chain(restored.keys())
                    .map(|k| &k[..])
                    .collect(),
                Op::Range { windows, .. } => windows.keys().map(|k| &k[..]).collect(),
                Op::Count { windows, .. } => windows.keys().map(|k| &k[..]).collect(),
                _ => continue,
            };
            keys.sort_unstable();
            let keys = keys
                .into_iter()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect();
            by_stage.insert(index.to_string(), keys);
        }
        quoll_core::external::StateEntities { by_stage }
    }

    /// Keys held by state and window stages (for the metrics).
    pub fn keys_held(&self) -> usize {
        self.stages
            .iter()
            .map(|s| match &s.op {
                Op::State {
                    states, restored, ..
                } => states.len() + restored.len(),
                Op::Range { windows, .. } => windows.len(),
                Op::Count { windows, .. } => windows.len(),
                _ => 0,
            })
            .sum()
    }

    pub fn sink_count(&self) -> usize {
        self.sinks.len()
    }

    /// Hands every sink's buffered output to its writer.
    pub fn flush_sinks(&mut self, py: Python<'_>) {
        for i in 0..self.sinks.len() {
            self.flush_sink(py, i);
        }
    }

    /// The event loop found both inboxes empty (source input not held back):
    /// everything sent to this worker until now has been processed.
    pub fn inputs_drained(&mut self) {
        self.drained_ns = now_ns();
    }

    /// Fires due window timers; returns when the next one is due.
    pub fn on_timers(&mut self, py: Python<'_>) -> Result<Option<Instant>, Fatal> {
        let now = Instant::now();
        let drained_ns = self.drained_ns;
        let allowance = IDLE_ALLOWANCE.as_nanos() as i64;
        let mut next_due: Option<Instant> = None;
        for stage in 0..self.stages.len() {
            let st = &mut self.stages[stage];
            let next = st.next;
            let mut fired: Vec<Fired<'_>> = Vec::new();
            match &mut st.op {
                Op::Range {
                    agg,
                    windows,
                    timers,
                    ..
                } => {
                    let mut aggregator = PyAggregation { py, calls: agg };
                    if now >= timers.next_tick {
                        timers.next_tick = now + timers.period;
                        timers.refresh(now);
                        let quiet = now.duration_since(timers.last_input) >= timers.period * 2;
                        if !(quiet && timers.flushed_since_input) {
                            for (kb, entry) in windows.iter_mut() {
                                let mut out = Vec::new();
                                let before = entry.value.next_window_start_ns();
                                let r = if quiet {
                                    entry.value.flush(&mut aggregator, kb, &mut out)
                                } else {
                                    entry.value.on_timer(
                                        &mut aggregator,
                                        kb,
                                        timers.watermark,
                                        &mut out,
                                    )
                                };
                                entry.dirty |= entry.value.next_window_start_ns() != before;
                                if !out.is_empty() || r.is_err() {
                                    fired.push((entry.key.clone_ref(py), out, r));
                                }
                            }
                            timers.flushed_since_input = quiet;
                            timers.idle_done |= quiet;
                        }
                    }
                    let quiet = now.duration_since(timers.last_input) >= IDLE_ALLOWANCE;
                    if quiet && !timers.idle_done && timers.idle_due.is_none_or(|d| now >= d) {
                        // The wall clock stands in for the silent upstreams'
                        // watermark (see `WindowTimers`).
                        let idle_wm = timers.watermark.max(drained_ns.saturating_sub(allowance));
                        if idle_wm >= timers.idle_next_wm {
                            let mut earliest: Option<i64> = None;
                            for (kb, entry) in windows.iter_mut() {
                                let mut out = Vec::new();
                                let before = entry.value.next_window_start_ns();
                                let cap = entry.value.flush_due_watermark_ns();
                                let r = entry.value.on_timer(
                                    &mut aggregator,
                                    kb,
                                    idle_wm.min(cap),
                                    &mut out,
                                );
                                entry.dirty |= entry.value.next_window_start_ns() != before;
                                let due = entry.value.next_due_watermark_ns();
                                if due <= cap {
                                    earliest = Some(earliest.map_or(due, |e| e.min(due)));
                                }
                                if !out.is_empty() || r.is_err() {
                                    fired.push((entry.key.clone_ref(py), out, r));
                                }
                            }
                            match earliest {
                                Some(due) => timers.idle_next_wm = due,
                                None => timers.idle_done = true,
                            }
                        }
                        if !timers.idle_done {
                            // Due when the wall clock minus the allowance
                            // reaches it (if the inboxes are empty then).
                            let wait = timers
                                .idle_next_wm
                                .saturating_sub(now_ns().saturating_sub(allowance))
                                .max(0) as u64;
                            timers.idle_due = Some(now + Duration::from_nanos(wait).max(IDLE_TICK));
                        }
                    }
                    // Awake for the periodic tick, the idle firing, and the
                    // moment input turns quiet (or, already quiet, a poll:
                    // a message may have come since).
                    let wake = if !quiet {
                        timers.last_input + IDLE_ALLOWANCE
                    } else if !timers.idle_done {
                        timers.idle_due.unwrap_or(now)
                    } else {
                        now + IDLE_ALLOWANCE
                    };
                    let wake = wake.min(timers.next_tick);
                    next_due = Some(next_due.map_or(wake, |d| d.min(wake)));
                }
                Op::Count {
                    agg,
                    windows,
                    next_flush,
                    ..
                } => {
                    if now >= *next_flush {
                        *next_flush = now + COUNT_WINDOW_FLUSH;
                        let mut aggregator = PyAggregation { py, calls: agg };
                        for (kb, entry) in windows.iter_mut() {
                            let mut out = Vec::new();
                            let before = entry.value.count();
                            let r = entry.value.flush_partial(&mut aggregator, kb, &mut out);
                            entry.dirty |= entry.value.count() != before;
                            if !out.is_empty() || r.is_err() {
                                fired.push((entry.key.clone_ref(py), out, r));
                            }
                        }
                    }
                    next_due = Some(next_due.map_or(*next_flush, |d| d.min(*next_flush)));
                }
                _ => {}
            }
            for (key, out, r) in fired {
                let key = key.into_bound(py);
                self.window_results(py, stage, next, &key, r, out)?;
            }
        }
        Ok(next_due)
    }
}

/// An `Aggregation` instance seen through the engine's [`Aggregator`] trait.
struct PyAggregation<'a, 'py> {
    py: Python<'py>,
    calls: &'a AggregationCalls,
}

impl<'py> Aggregator for PyAggregation<'_, 'py> {
    type Input = Py<PyAny>;
    type Acc = Py<PyAny>;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn initial_accumulator(&mut self) -> PyResult<Py<PyAny>> {
        Ok(self
            .calls
            .initial_accumulator
            .bind(self.py)
            .call0()?
            .unbind())
    }

    fn update(&mut self, input: &Py<PyAny>, acc: &mut Py<PyAny>) -> PyResult<()> {
        self.calls
            .update
            .bind(self.py)
            .call1((input.bind(self.py), acc.bind(self.py)))?;
        Ok(())
    }

    fn combine(&mut self, a: &Py<PyAny>, b: &Py<PyAny>) -> PyResult<Py<PyAny>> {
        Ok(self
            .calls
            .combine
            .bind(self.py)
            .call1((a.bind(self.py), b.bind(self.py)))?
            .unbind())
    }

    fn output(&mut self, key: &[u8], acc: &Py<PyAny>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let key = pyo3::types::PyBytes::new(self.py, key)
            .call_method1("decode", ("utf-8", "surrogateescape"))?;
        let out = self
            .calls
            .output
            .bind(self.py)
            .call1((key, acc.bind(self.py)))?;
        Ok(if out.is_none() { None } else { Some(out) })
    }
}
