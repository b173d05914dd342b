//! quoll's engine, without Python.
//!
//! Everything here is generic over opaque values (bytes or a type parameter),
//! so the pieces are unit- and property-tested with plain Rust values. The
//! Python binding (`quoll-py`) supplies the values, the user calls and the
//! executor thread that drives these state machines.
//!
//! - [`checkpoint`]: the checkpoint protocol as state machines: coordinator and participant.
//! - [`handshake`]: link authentication by challenge-response over the cluster secret.
//! - [`membership`]: cluster formation and membership as state machines.
//! - [`node`]: one worker's coordination (membership, checkpoints, recovery) as one state machine.
//! - [`checkpoint_store`]: durable checkpoint files (full and delta), the coordinator's commit log, the membership file.
//! - [`key_group`]: the stable key hash, key groups and their assignment to workers.
//! - [`placement`]: load-aware placement of key groups on workers.
//! - [`length_header`]: TCP source framing as a Wallaroo decoder declares it.
//! - [`windows`]: range and count window state per key.
//! - [`frame`]: length-prefixed frames, the one decoder every protocol and file format builds on.
//! - [`external`]: the external channel's frames (cluster status, shutdown).
//! - [`topology`]: the dataflow as the engine sees it: stages, links, routing points.
//! - [`wire`]: frames between workers: control messages and data batches.
//! - [`connector`]: connector protocol v3 frames (sources fed by external clients).

pub mod checkpoint;
pub mod checkpoint_store;
pub mod connector;
pub mod connector_sink;
pub mod external;
pub mod frame;
pub mod handshake;
pub mod key_group;
pub mod length_header;
pub mod membership;
pub mod node;
pub mod placement;
pub mod topology;
pub mod windows;
pub mod wire;
