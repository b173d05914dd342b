//! Why a worker stops, as a type.
//!
//! Every fatal error of the binding is a [`WorkerError`]: the core's errors
//! keep their type (a corrupt checkpoint file is a `StoreError::Corrupt`
//! inside a [`quoll_objstore::Error`], not a string), so callers can tell
//! them apart, and every message names
//! the thing as the user named it (the flag, the source, the file).

use crate::app::AppError;
use crate::user_errors::Fatal;
use quoll_core::node::NodeFatal;
use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("{0}")]
    App(#[from] AppError),
    /// A listener could not be bound: `what` names the flag or the source.
    #[error("can't listen on {what} {addr}: {source}{hint}")]
    Listen {
        what: String,
        addr: String,
        #[source]
        source: io::Error,
        hint: &'static str,
    },
    #[error("{what} is required: {hint}")]
    Missing {
        what: &'static str,
        hint: &'static str,
    },
    #[error(transparent)]
    Cookie(#[from] crate::cookie::CookieError),
    /// `--tls-cert`, `--tls-key` or `--tls-ca` (the error names the file).
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("can't start the I/O runtime: {0}")]
    Runtime(#[source] io::Error),
    #[error("{label}: can't open {path}: {source}", path = .path.display())]
    SinkFile {
        label: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Sink(String),
    /// A Kafka source or sink that can't be set up: `place` names it.
    #[error("{place}: {problem}")]
    KafkaConfig { place: String, problem: String },
    /// The error names the Kafka source or sink, topic, brokers and worker.
    #[error(transparent)]
    Kafka(#[from] quoll_kafka::KafkaError),
    /// A resilience file, the commit log, or their object storage.
    #[error(transparent)]
    Store(#[from] quoll_objstore::Error),
    #[error("cluster formation: {0}")]
    Cluster(#[from] NodeFatal),
    #[error("{fatal} in {dir}; restart it with the same --resilience-dir it ran with", dir = .dir.display())]
    NoFiles { fatal: NodeFatal, dir: PathBuf },
    /// The checkpoint to roll back to could not be loaded.
    #[error("recovery: {0}")]
    Load(#[source] quoll_objstore::Error),
    #[error("recovery: {0}")]
    Restore(String),
    /// This worker left its cluster (a shrink) in an earlier run: it stops,
    /// done (exit 0). Not a failure; the text names its left marker.
    #[error(
        "this worker left its cluster (a shrink), so it does not run again; to add it to a \
         cluster again, delete {0} (or use an empty --resilience-dir) and start it with --join"
    )]
    AlreadyLeft(String),
    /// A user error under `--on-user-error fail`, or data the engine can't go on with.
    #[error("{0}")]
    Fatal(String),
}

impl From<Fatal> for WorkerError {
    fn from(Fatal(m): Fatal) -> Self {
        WorkerError::Fatal(m)
    }
}
