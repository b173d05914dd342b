//! `quoll._engine`: the Python binding of the quoll engine.
//!
//! - [`app`]: the flattened application tuple to the engine's plan.
//! - [`executor`]: the thread that runs user code, batch by batch.
//! - [`io`]: sockets and files on tokio threads (sources, sinks).
//! - [`external_channel`]: the worker's side of the external channel (status, shutdown).
//! - [`connector_source`]: connector protocol v3 sources (external clients, replay after rollback).
//! - [`cluster`]: formation, heartbeats and the links between workers.
//! - [`checkpoint`]: checkpoint files, the commit log, the protocol's state machines.
//! - [`codec`]: the worker's one codec (the app's serialize/deserialize, else fast codec and pickle).
//! - [`worker`]: start-up, wiring and the event loop of one worker.
//! - [`user_errors`]: how errors in user code and data are reported and counted.

use pyo3::prelude::*;

mod app;
mod checkpoint;
mod cluster;
mod codec;
mod connector_source;
mod executor;
mod external_channel;
mod io;
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
