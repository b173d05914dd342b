//! `quoll._engine`: the Python binding of the quoll engine.
//!
//! The coordination of a worker (formation, checkpoints, recovery) is
//! decided in `quoll_core::node`; this crate carries it out and runs the
//! user's Python code.
//!
//! - `worker`: set-up, the event loop, and carrying out the node's actions.
//! - `executor`: the thread that runs user code, batch by batch; snapshots and restores.
//! - `router`: where keyed messages go, batched per worker.
//! - `links`: control and data links between workers, heartbeats.
//! - `sources`, `sinks`, `connector_source`: input and output on tokio threads.
//! - `external_channel`: the worker's side of the external channel (status, shutdown).
//! - `checkpoint_files`: this worker's part files and the initializer's commit log.
//! - `event`: what the I/O threads tell the executor.
//! - `app`: the flattened application to the engine's plan.
//! - `codec`: the worker's one codec (the app's serialize/deserialize, else fast codec and pickle).
//! - `user_errors`: how errors in user code and data are reported and counted.
//! - `logging`: log lines, levels, and Wallaroo's fixed lines.
//! - `error`: why a worker stops.

use pyo3::prelude::*;

mod app;
mod checkpoint_files;
mod codec;
mod connector_sink;
mod connector_source;
mod cookie;
mod error;
mod event;
mod executor;
mod external_channel;
mod kafka_io;
mod links;
mod logging;
mod metrics;
mod router;
mod sinks;
mod sources;
mod tls;
mod user_errors;
mod worker;

/// Runs one of quoll's Rust tools (`send`, `receive`, `status`, `shutdown`)
/// with its command-line arguments; returns the exit code.
#[pyfunction]
fn tool_main(py: Python<'_>, args: Vec<String>) -> i32 {
    py.detach(|| quoll_tools::run(args))
}

#[pymodule]
fn _engine(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(worker::run_worker, m)?)?;
    m.add_function(wrap_pyfunction!(tool_main, m)?)?;
    m.add_function(wrap_pyfunction!(codec::codec_encode, m)?)?;
    m.add_function(wrap_pyfunction!(codec::codec_decode, m)?)?;
    Ok(())
}
