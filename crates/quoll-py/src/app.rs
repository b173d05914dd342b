//! From the Python side's flattened application to what the engine runs.
//!
//! `quoll.topology.flatten` hands over a `Topology` of dataclasses: sources,
//! stages and sinks, each with a `place` (how the application named it) and
//! a `spec` whose `kind` says which dataclass it is. This module reads them
//! by attribute name (the `*In` structs below mirror those dataclasses),
//! builds the engine's [`Topology`] (no Python inside) and, beside it, the
//! Python callables each stage, source and sink will invoke. Everything
//! here runs once, at start-up, with the GIL held.
//!
//! Invariant: every set-up error found here names the element by its
//! `place`. Wallaroo's config tuples and the choice between a decorated
//! object's raw function and its bound method are `quoll.topology`'s
//! business; unsupported source and sink kinds are refused there first.

use pyo3::conversion::FromPyObjectOwned;
use pyo3::prelude::*;
use pyo3::types::PyString;
use quoll_core::length_header::LengthHeader;
use quoll_core::topology::{SourceDef, StageDef, StageKind, Topology};
use quoll_core::windows::{LateDataPolicy, RangeWindowSpec};

/// A set-up error: the app can't run as built. The worker prints it and
/// exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// `place` names the source, stage or sink as the application did.
    #[error("{place}: {message}")]
    Invalid { place: String, message: String },
    #[error(transparent)]
    Topology(#[from] quoll_core::topology::TopologyError),
    #[error("{0}")]
    Python(String),
}

impl From<PyErr> for AppError {
    fn from(e: PyErr) -> Self {
        AppError::Python(e.to_string())
    }
}

/// The Python callables of one stage.
pub enum StageCalls {
    Stateless {
        call: Py<PyAny>,
    },
    KeyBy {
        call: Py<PyAny>,
    },
    Collect {
        key: Py<PyAny>,
    },
    State {
        call: Py<PyAny>,
        initial_state: Py<PyAny>,
    },
    Windows {
        aggregation: AggregationCalls,
    },
    Sinks,
}

/// The four bound methods of an `Aggregation` instance
/// (`quoll.topology.AggregationCalls`, read by attribute name).
#[derive(FromPyObject)]
pub struct AggregationCalls {
    pub initial_accumulator: Py<PyAny>,
    pub update: Py<PyAny>,
    pub combine: Py<PyAny>,
    pub output: Py<PyAny>,
}

/// How a source reads its input.
pub enum SourceSpec {
    /// A TCP listener whose frames are split as the decoder's header says.
    Tcp {
        host: String,
        port: String,
        header: LengthHeader,
        decode: Py<PyAny>,
        valid: bool,
        parallelism: usize,
    },
    /// A generator driven on the executor thread.
    Gen {
        initial_value: Py<PyAny>,
        apply: Py<PyAny>,
    },
    /// A file of framed records (quoll's own source).
    File {
        path: String,
        header: LengthHeader,
        decode: Py<PyAny>,
    },
    /// A connector-protocol listener (`wallaroo.experimental.SourceConnectorConfig`).
    Connector {
        host: String,
        port: String,
        decode: Py<PyAny>,
        cookie: String,
        max_credits: u32,
        refill_credits: u32,
    },
    /// This worker's share of a Kafka topic's partitions (crates/quoll-kafka).
    Kafka {
        topic: String,
        brokers: Vec<(String, String)>,
        log_level: String,
        decode: Py<PyAny>,
    },
}

pub struct SourcePlan {
    pub name: String,
    pub spec: SourceSpec,
    pub implicit_key: Py<PyAny>,
}

/// Where a sink writes.
pub enum SinkSpec {
    Tcp {
        host: String,
        port: String,
    },
    File {
        path: String,
    },
    /// A Kafka topic; `name` is unique in the app and stable across runs.
    Kafka {
        name: String,
        topic: String,
        brokers: Vec<(String, String)>,
        log_level: String,
        max_produce_buffer_ms: u64,
        max_message_size: usize,
    },
    /// A sink connector process (`wallaroo.experimental.SinkConnectorConfig`);
    /// `name` is unique in the app and names the worker's stream.
    Connector {
        name: String,
        host: String,
        port: String,
        cookie: String,
    },
}

pub struct SinkPlan {
    pub label: String,
    pub spec: SinkSpec,
    pub encode: Py<PyAny>,
}

/// Everything a worker runs: the engine's topology and its Python side.
pub struct AppPlan {
    pub topology: Topology,
    pub stage_calls: Vec<StageCalls>,
    pub sources: Vec<SourcePlan>,
    pub sinks: Vec<SinkPlan>,
}

// What `quoll.topology` hands over, field by field (see its dataclasses).

/// `quoll.topology.Topology`.
#[derive(FromPyObject)]
struct AppIn<'py> {
    app_name: String,
    sources: Vec<SourceIn<'py>>,
    stages: Vec<StageIn<'py>>,
    sinks: Vec<SinkIn<'py>>,
}

/// `quoll.topology.Source`; `spec` is one of the `*SourceIn` below.
#[derive(FromPyObject)]
struct SourceIn<'py> {
    name: String,
    place: String,
    entry: usize,
    implicit_key: String,
    spec: Bound<'py, PyAny>,
}

/// `quoll.topology.Stage`; `spec` is one of the `*StageIn` below.
#[derive(FromPyObject)]
struct StageIn<'py> {
    name: String,
    place: String,
    next: Option<usize>,
    spec: Bound<'py, PyAny>,
}

/// `quoll.topology.Sink`; `spec` is one of the `*SinkIn` below.
#[derive(FromPyObject)]
struct SinkIn<'py> {
    place: String,
    spec: Bound<'py, PyAny>,
}

/// `quoll.topology.TcpSource`.
#[derive(FromPyObject)]
struct TcpSourceIn {
    host: String,
    port: String,
    header_length: usize,
    length_fmt: String,
    decode: Py<PyAny>,
    valid: bool,
    parallelism: usize,
}

/// `quoll.topology.GenSource`.
#[derive(FromPyObject)]
struct GenSourceIn {
    initial_value: Py<PyAny>,
    apply: Py<PyAny>,
}

/// `quoll.topology.FileSource`.
#[derive(FromPyObject)]
struct FileSourceIn {
    path: String,
    header_length: usize,
    length_fmt: String,
    decode: Py<PyAny>,
}

/// `quoll.topology.ConnectorSource`.
#[derive(FromPyObject)]
struct ConnectorSourceIn {
    host: String,
    port: String,
    decode: Py<PyAny>,
    cookie: String,
    max_credits: u32,
    refill_credits: u32,
}

/// `quoll.topology.KafkaSource`.
#[derive(FromPyObject)]
struct KafkaSourceIn {
    topic: String,
    brokers: Vec<(String, String)>,
    log_level: String,
    decode: Py<PyAny>,
}

/// `quoll.topology.KafkaSink` (its `encode` already returns
/// `(payload, key, partition)` or None).
#[derive(FromPyObject)]
struct KafkaSinkIn {
    name: String,
    topic: String,
    brokers: Vec<(String, String)>,
    log_level: String,
    max_produce_buffer_ms: u64,
    max_message_size: usize,
    encode: Py<PyAny>,
}

/// `quoll.topology.ConnectorSink`.
#[derive(FromPyObject)]
struct ConnectorSinkIn {
    name: String,
    host: String,
    port: String,
    encode: Py<PyAny>,
    cookie: String,
}

/// `quoll.topology.TcpSink`.
#[derive(FromPyObject)]
struct TcpSinkIn {
    host: String,
    port: String,
    encode: Py<PyAny>,
}

/// `quoll.topology.FileSink`.
#[derive(FromPyObject)]
struct FileSinkIn {
    path: String,
    encode: Py<PyAny>,
}

/// `quoll.topology.StatelessStage`.
#[derive(FromPyObject)]
struct StatelessStageIn {
    call: Py<PyAny>,
    multi: bool,
}

/// `quoll.topology.KeyByStage`.
#[derive(FromPyObject)]
struct KeyByStageIn {
    call: Py<PyAny>,
}

/// `quoll.topology.CollectStage`.
#[derive(FromPyObject)]
struct CollectStageIn {
    key: String,
}

/// `quoll.topology.StateStage`.
#[derive(FromPyObject)]
struct StateStageIn {
    call: Py<PyAny>,
    initial_state: Py<PyAny>,
    multi: bool,
}

/// `quoll.topology.RangeWindowsStage`.
#[derive(FromPyObject)]
struct RangeWindowsStageIn {
    aggregation: AggregationCalls,
    range: u64,
    slide: u64,
    delay: u64,
    late_data_policy: String,
}

/// `quoll.topology.CountWindowsStage`.
#[derive(FromPyObject)]
struct CountWindowsStageIn {
    aggregation: AggregationCalls,
    count: u64,
}

/// `quoll.topology.SinksStage`.
#[derive(FromPyObject)]
struct SinksStageIn {
    sinks: Vec<usize>,
}

fn invalid(place: &str, message: impl Into<String>) -> AppError {
    AppError::Invalid {
        place: place.to_string(),
        message: message.into(),
    }
}

/// The `kind` tag of a spec (a class attribute of its dataclass).
fn kind_of(spec: &Bound<'_, PyAny>, place: &str) -> Result<String, AppError> {
    spec.getattr("kind")
        .and_then(|k| k.extract())
        .map_err(|e| invalid(place, format!("no kind tag: {e}")))
}

/// Reads a spec as the struct its `kind` names.
fn read<'py, T: FromPyObjectOwned<'py>>(
    spec: &Bound<'py, PyAny>,
    place: &str,
) -> Result<T, AppError> {
    spec.extract::<T>().map_err(|e| {
        let e: PyErr = e.into();
        invalid(place, e.to_string())
    })
}

/// The native frame splitter for a decoder's length header.
fn length_header(header_length: usize, fmt: &str, place: &str) -> Result<LengthHeader, AppError> {
    LengthHeader::parse(header_length, fmt)
        .map_err(|e| invalid(place, format!("decoder header: {e}")))
}

/// Builds the plan from the `quoll.topology.Topology` that
/// `quoll.topology.flatten` made.
pub fn build_plan(py: Python<'_>, app: &Bound<'_, PyAny>) -> Result<AppPlan, AppError> {
    let app: AppIn<'_> = app.extract()?;

    let mut stages = Vec::with_capacity(app.stages.len());
    let mut stage_calls = Vec::with_capacity(app.stages.len());
    for st in app.stages {
        let place = st.place.as_str();
        let (core_kind, calls) = match kind_of(&st.spec, place)?.as_str() {
            "stateless" => {
                let s: StatelessStageIn = read(&st.spec, place)?;
                (
                    StageKind::Stateless { multi: s.multi },
                    StageCalls::Stateless { call: s.call },
                )
            }
            "key_by" => {
                let s: KeyByStageIn = read(&st.spec, place)?;
                (StageKind::KeyBy, StageCalls::KeyBy { call: s.call })
            }
            "collect" => {
                let s: CollectStageIn = read(&st.spec, place)?;
                (
                    StageKind::Collect {
                        key: s.key.clone().into_bytes(),
                    },
                    StageCalls::Collect {
                        key: PyString::new(py, &s.key).into_any().unbind(),
                    },
                )
            }
            "state" => {
                let s: StateStageIn = read(&st.spec, place)?;
                (
                    StageKind::State { multi: s.multi },
                    StageCalls::State {
                        call: s.call,
                        initial_state: s.initial_state,
                    },
                )
            }
            "range_windows" => {
                let s: RangeWindowsStageIn = read(&st.spec, place)?;
                let policy = LateDataPolicy::parse(&s.late_data_policy)
                    .map_err(|e| invalid(place, e.to_string()))?;
                let spec = RangeWindowSpec::new(s.range, s.slide, s.delay, policy)
                    .map_err(|e| invalid(place, e.to_string()))?;
                (
                    StageKind::RangeWindows(spec),
                    StageCalls::Windows {
                        aggregation: s.aggregation,
                    },
                )
            }
            "count_windows" => {
                let s: CountWindowsStageIn = read(&st.spec, place)?;
                if s.count == 0 {
                    return Err(invalid(place, "count_windows(n) needs n >= 1"));
                }
                (
                    StageKind::CountWindows { count: s.count },
                    StageCalls::Windows {
                        aggregation: s.aggregation,
                    },
                )
            }
            "sinks" => {
                let s: SinksStageIn = read(&st.spec, place)?;
                (StageKind::Sinks { sinks: s.sinks }, StageCalls::Sinks)
            }
            other => return Err(invalid(place, format!("unknown stage kind '{other}'"))),
        };
        stages.push(StageDef {
            name: st.name,
            kind: core_kind,
            next: st.next,
        });
        stage_calls.push(calls);
    }

    let mut sources = Vec::with_capacity(app.sources.len());
    let mut source_defs = Vec::with_capacity(app.sources.len());
    for src in app.sources {
        let place = src.place.as_str();
        let kind = kind_of(&src.spec, place)?;
        let spec = match kind.as_str() {
            "tcp" => {
                let s: TcpSourceIn = read(&src.spec, place)?;
                SourceSpec::Tcp {
                    header: length_header(s.header_length, &s.length_fmt, place)?,
                    host: s.host,
                    port: s.port,
                    decode: s.decode,
                    valid: s.valid,
                    parallelism: s.parallelism.max(1),
                }
            }
            "gen" => {
                let s: GenSourceIn = read(&src.spec, place)?;
                SourceSpec::Gen {
                    initial_value: s.initial_value,
                    apply: s.apply,
                }
            }
            "file" => {
                let s: FileSourceIn = read(&src.spec, place)?;
                SourceSpec::File {
                    header: length_header(s.header_length, &s.length_fmt, place)?,
                    path: s.path,
                    decode: s.decode,
                }
            }
            "source_connector" => {
                let s: ConnectorSourceIn = read(&src.spec, place)?;
                SourceSpec::Connector {
                    host: s.host,
                    port: s.port,
                    decode: s.decode,
                    cookie: s.cookie,
                    max_credits: s.max_credits,
                    refill_credits: s.refill_credits,
                }
            }
            "kafka" => {
                let s: KafkaSourceIn = read(&src.spec, place)?;
                SourceSpec::Kafka {
                    topic: s.topic,
                    brokers: s.brokers,
                    log_level: s.log_level,
                    decode: s.decode,
                }
            }
            other => {
                return Err(invalid(
                    place,
                    format!("source kind '{other}' is not supported by this engine"),
                ))
            }
        };
        source_defs.push(SourceDef {
            name: src.name.clone(),
            kind,
            entry: src.entry,
            implicit_key: src.implicit_key.clone().into_bytes(),
        });
        sources.push(SourcePlan {
            name: src.name,
            spec,
            implicit_key: PyString::new(py, &src.implicit_key).into_any().unbind(),
        });
    }

    let mut sinks = Vec::with_capacity(app.sinks.len());
    for sink in app.sinks {
        let place = sink.place.as_str();
        let (spec, encode) = match kind_of(&sink.spec, place)?.as_str() {
            "tcp" => {
                let s: TcpSinkIn = read(&sink.spec, place)?;
                (
                    SinkSpec::Tcp {
                        host: s.host,
                        port: s.port,
                    },
                    s.encode,
                )
            }
            "file" => {
                let s: FileSinkIn = read(&sink.spec, place)?;
                (SinkSpec::File { path: s.path }, s.encode)
            }
            "kafka" => {
                let s: KafkaSinkIn = read(&sink.spec, place)?;
                (
                    SinkSpec::Kafka {
                        name: s.name,
                        topic: s.topic,
                        brokers: s.brokers,
                        log_level: s.log_level,
                        max_produce_buffer_ms: s.max_produce_buffer_ms,
                        max_message_size: s.max_message_size,
                    },
                    s.encode,
                )
            }
            "sink_connector" => {
                let s: ConnectorSinkIn = read(&sink.spec, place)?;
                (
                    SinkSpec::Connector {
                        name: s.name,
                        host: s.host,
                        port: s.port,
                        cookie: s.cookie,
                    },
                    s.encode,
                )
            }
            other => {
                return Err(invalid(
                    place,
                    format!("sink kind '{other}' is not supported by this engine"),
                ))
            }
        };
        let label = match &spec {
            SinkSpec::Tcp { host, port } => format!("tcp sink {host}:{port}"),
            SinkSpec::File { path } => format!("file sink {path}"),
            SinkSpec::Kafka { name, topic, .. } => format!("kafka sink '{name}' (topic '{topic}')"),
            SinkSpec::Connector {
                name, host, port, ..
            } => {
                format!("connector sink '{name}' at {host}:{port}")
            }
        };
        sinks.push(SinkPlan {
            label,
            spec,
            encode,
        });
    }

    let topology = Topology {
        app_name: app.app_name,
        sources: source_defs,
        stages,
        sink_count: sinks.len(),
    };
    topology.validate()?;
    Ok(AppPlan {
        topology,
        stage_calls,
        sources,
        sinks,
    })
}
