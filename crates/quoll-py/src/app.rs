//! From the Python side's flattened application to what the engine runs.
//!
//! `quoll.topology.as_engine_tuples` hands over plain tuples; this module
//! checks their shapes, builds the engine's [`Topology`] (no Python inside)
//! and, beside it, the Python callables each stage, source and sink will
//! invoke. Everything here runs once, at start-up, with the GIL held.

use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};
use quoll_core::length_header::LengthHeader;
use quoll_core::topology::{SourceDef, StageDef, StageKind, Topology};
use quoll_core::windows::{LateDataPolicy, RangeWindowSpec};

/// A set-up error: the app can't run as built. The worker prints it and
/// exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("stage {stage}: {message}")]
    Stage { stage: String, message: String },
    #[error("source '{source_name}': {message}")]
    Source {
        source_name: String,
        message: String,
    },
    #[error("sink {index} ({config}): {message}")]
    Sink {
        index: usize,
        config: String,
        message: String,
    },
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

/// The four bound methods of an `Aggregation` instance.
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
}

pub struct SourcePlan {
    pub name: String,
    pub spec: SourceSpec,
    pub implicit_key: Py<PyAny>,
}

/// Where a sink writes.
pub enum SinkSpec {
    Tcp { host: String, port: String },
    File { path: String },
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

fn item<'py>(t: &Bound<'py, PyTuple>, i: usize) -> PyResult<Bound<'py, PyAny>> {
    t.get_item(i)
}

fn text(obj: &Bound<'_, PyAny>) -> String {
    obj.str()
        .map(|s| s.to_string())
        .unwrap_or_else(|_| "<unprintable>".into())
}

/// Reads the framing of a Wallaroo decoder: `header_length()` plus the
/// struct format the `wallaroo.decoder` decorator recorded.
fn decoder_framing(
    decoder: &Bound<'_, PyAny>,
    source_name: &str,
) -> Result<(LengthHeader, Py<PyAny>), AppError> {
    let err = |message: String| AppError::Source {
        source_name: source_name.to_string(),
        message,
    };
    let header_length: usize = decoder
        .call_method0("header_length")
        .and_then(|v| v.extract())
        .map_err(|e| err(format!("decoder.header_length() failed: {e}")))?;
    let fmt: String = match decoder.getattr("_quoll_length_fmt") {
        Ok(f) => f
            .extract()
            .map_err(|e| err(format!("decoder length format: {e}")))?,
        Err(_) => {
            return Err(err(
                "the decoder was not made with @wallaroo.decoder(header_length, length_fmt); \
                 quoll splits TCP frames natively and needs the struct format of the length header"
                    .into(),
            ))
        }
    };
    let header = LengthHeader::parse(header_length, &fmt)
        .map_err(|e| err(format!("decoder header: {e}")))?;
    let decode = direct(decoder, "decode")?;
    Ok((header, decode))
}

/// The raw user function of a decorator-made object, else its bound method
/// (the same rule as `quoll.topology._direct`).
fn direct(obj: &Bound<'_, PyAny>, method: &str) -> PyResult<Py<PyAny>> {
    let cls = obj.get_type();
    if let Ok(func) = cls.getattr("_quoll_func") {
        if cls
            .getattr("__module__")
            .map(|m| text(&m) == "wallaroo")
            .unwrap_or(false)
        {
            return Ok(func.unbind());
        }
    }
    Ok(obj.getattr(method)?.unbind())
}

/// Builds the plan from `(app_name, sources, stages, sinks)` as made by
/// `quoll.topology.as_engine_tuples`.
pub fn build_plan(py: Python<'_>, app: &Bound<'_, PyTuple>) -> Result<AppPlan, AppError> {
    let app_name: String = item(app, 0)?.extract()?;
    let py_sources = item(app, 1)?;
    let py_stages = item(app, 2)?;
    let py_sinks = item(app, 3)?;

    let mut stages = Vec::new();
    let mut stage_calls = Vec::new();
    for (index, st) in py_stages.try_iter()?.enumerate() {
        let st = st?;
        let st = st.cast::<PyTuple>().map_err(PyErr::from)?;
        let kind: String = item(st, 0)?.extract()?;
        let name: String = item(st, 1)?.extract()?;
        let next: Option<usize> = item(st, 2)?.extract()?;
        let call = item(st, 3)?;
        let params = item(st, 6)?;
        let params = params.cast::<PyTuple>().map_err(PyErr::from)?;
        let stage_err = |message: String| AppError::Stage {
            stage: format!("{index} ('{name}')"),
            message,
        };
        let (core_kind, calls) = match kind.as_str() {
            "computation" | "computation_multi" => (
                StageKind::Stateless {
                    multi: kind == "computation_multi",
                },
                StageCalls::Stateless {
                    call: call.unbind(),
                },
            ),
            "key_by" => (
                StageKind::KeyBy,
                StageCalls::KeyBy {
                    call: call.unbind(),
                },
            ),
            "collect" => {
                let key: String = item(params, 0)?.extract()?;
                (
                    StageKind::Collect {
                        key: key.clone().into_bytes(),
                    },
                    StageCalls::Collect {
                        key: PyString::new(py, &key).into_any().unbind(),
                    },
                )
            }
            "state_computation" | "state_computation_multi" => (
                StageKind::State {
                    multi: kind == "state_computation_multi",
                },
                StageCalls::State {
                    call: call.unbind(),
                    initial_state: item(st, 4)?.unbind(),
                },
            ),
            "range_windows" | "count_windows" => {
                let agg = item(st, 5)?;
                let agg = agg.cast::<PyTuple>().map_err(PyErr::from)?;
                let aggregation = AggregationCalls {
                    initial_accumulator: item(agg, 0)?.unbind(),
                    update: item(agg, 1)?.unbind(),
                    combine: item(agg, 2)?.unbind(),
                    output: item(agg, 3)?.unbind(),
                };
                let core = if kind == "range_windows" {
                    let range: u64 = item(params, 0)?.extract()?;
                    let slide: u64 = item(params, 1)?.extract()?;
                    let delay: u64 = item(params, 2)?.extract()?;
                    let policy_name: String = item(params, 3)?.extract()?;
                    let policy = LateDataPolicy::parse(&policy_name)
                        .map_err(|e| stage_err(e.to_string()))?;
                    let spec = RangeWindowSpec::new(range, slide, delay, policy)
                        .map_err(|e| stage_err(e.to_string()))?;
                    StageKind::RangeWindows(spec)
                } else {
                    let count: u64 = item(params, 0)?.extract()?;
                    if count == 0 {
                        return Err(stage_err("count_windows(n) needs n >= 1".into()));
                    }
                    StageKind::CountWindows { count }
                };
                (core, StageCalls::Windows { aggregation })
            }
            "sinks" => {
                let sinks: Vec<usize> = item(st, 7)?.extract()?;
                (StageKind::Sinks { sinks }, StageCalls::Sinks)
            }
            other => return Err(stage_err(format!("unknown stage kind '{other}'"))),
        };
        stages.push(StageDef {
            name,
            kind: core_kind,
            next,
        });
        stage_calls.push(calls);
    }

    let mut sources = Vec::new();
    let mut source_defs = Vec::new();
    for src in py_sources.try_iter()? {
        let src = src?;
        let src = src.cast::<PyTuple>().map_err(PyErr::from)?;
        let kind: String = item(src, 0)?.extract()?;
        let name: String = item(src, 1)?.extract()?;
        let entry: usize = item(src, 2)?.extract()?;
        let implicit_key: String = item(src, 3)?.extract()?;
        let cfg = item(src, 4)?;
        let cfg = cfg.cast::<PyTuple>().map_err(PyErr::from)?;
        let err = |message: String| AppError::Source {
            source_name: name.clone(),
            message,
        };
        let spec = match kind.as_str() {
            "tcp" => {
                let host = text(&item(cfg, 2)?);
                let port = text(&item(cfg, 3)?);
                let (header, decode) = decoder_framing(&item(cfg, 4)?, &name)?;
                let valid: bool = item(cfg, 5).and_then(|v| v.is_truthy()).unwrap_or(true);
                let parallelism: usize = item(cfg, 6).and_then(|v| v.extract()).unwrap_or(10);
                SourceSpec::Tcp { host, port, header, decode, valid, parallelism: parallelism.max(1) }
            }
            "gen" => {
                let g = item(cfg, 2)?;
                let initial_value = g.getattr("initial_value").map_err(|e| err(format!("generator: {e}")))?;
                let apply = g.getattr("apply").map_err(|e| err(format!("generator: {e}")))?;
                SourceSpec::Gen { initial_value: initial_value.unbind(), apply: apply.unbind() }
            }
            "file" => {
                let path = text(&item(cfg, 2)?);
                let (header, decode) = decoder_framing(&item(cfg, 3)?, &name)?;
                SourceSpec::File { path, header, decode }
            }
            "source_connector" => {
                // ("source_connector", name, host, str(port), encoder, decoder, cookie, max_credits, refill_credits);
                // the worker frames the protocol itself and calls only decode().
                let decoder = item(cfg, 5)?;
                let decode = direct(&decoder, "decode")?;
                let number = |i: usize, what: &str| -> Result<u32, AppError> {
                    item(cfg, i)?.extract::<u32>().map_err(|e| err(format!("{what}: {e}")))
                };
                SourceSpec::Connector {
                    host: text(&item(cfg, 2)?),
                    port: text(&item(cfg, 3)?),
                    decode,
                    cookie: text(&item(cfg, 6)?),
                    max_credits: number(7, "max_credits")?,
                    refill_credits: number(8, "refill_credits")?,
                }
            }
            other => {
                return Err(err(format!(
                    "source kind '{other}' is not supported yet by quoll (supported: tcp, gen, file, source_connector)"
                )))
            }
        };
        source_defs.push(SourceDef {
            name: name.clone(),
            kind,
            entry,
            implicit_key: implicit_key.clone().into_bytes(),
        });
        sources.push(SourcePlan {
            name,
            spec,
            implicit_key: PyString::new(py, &implicit_key).into_any().unbind(),
        });
    }

    let mut sinks = Vec::new();
    for (index, cfg) in py_sinks.try_iter()?.enumerate() {
        let cfg = cfg?;
        let config = text(&cfg);
        let cfg = cfg.cast::<PyTuple>().map_err(PyErr::from)?;
        let err = |message: String| AppError::Sink {
            index,
            config: config.clone(),
            message,
        };
        let kind: String = item(cfg, 0)?.extract()?;
        let (spec, encoder) = match kind.as_str() {
            "tcp" => {
                let host = text(&item(cfg, 2)?);
                let port = text(&item(cfg, 3)?);
                (SinkSpec::Tcp { host, port }, item(cfg, 4)?)
            }
            "file" => (
                SinkSpec::File {
                    path: text(&item(cfg, 2)?),
                },
                item(cfg, 3)?,
            ),
            other => {
                return Err(err(format!(
                    "sink kind '{other}' is not supported yet by quoll (supported: tcp, file)"
                )))
            }
        };
        let label = match &spec {
            SinkSpec::Tcp { host, port } => format!("tcp sink {host}:{port}"),
            SinkSpec::File { path } => format!("file sink {path}"),
        };
        let encode = direct(&encoder, "encode").map_err(|e| err(format!("encoder: {e}")))?;
        sinks.push(SinkPlan {
            label,
            spec,
            encode,
        });
    }

    let topology = Topology {
        app_name,
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
