//! What the I/O threads tell the executor thread.
//!
//! Source frames come through one inbox; everything else (peers, the
//! control plane, the external channel, finished writes) through another
//! that the executor serves first, so a busy source never delays a barrier,
//! a heartbeat's verdict or a shutdown.

use bytes::Bytes;
use quoll_core::membership::Generation;
use quoll_core::node::NodeEvent;
use std::sync::atomic::AtomicU64;

pub enum Event {
    /// Frames read from one connection of a source, in order. `position`
    /// (replayable sources only) is where the source stands once these
    /// frames are processed; a checkpoint records it. `epoch` is the
    /// incarnation of a restartable source (0 for others): frames of an
    /// incarnation stopped by a rollback are dropped. `keys` (connector
    /// sources) gives each frame's MESSAGE key, empty for none; with no
    /// keys at all every frame has the source's implicit key.
    Frames {
        source: usize,
        frames: Vec<Bytes>,
        keys: Vec<Bytes>,
        position: Option<SourcePosition>,
        epoch: u32,
    },
    /// A data batch from member `from`, on a data link of `generation`.
    PeerData {
        from: usize,
        generation: Generation,
        body: Bytes,
    },
    /// An event for this worker's coordination state machine.
    Node(NodeEvent),
    /// A clean shutdown, requested here (external channel) or by another
    /// worker: the whole cluster stops.
    Shutdown { reason: String },
    /// An I/O task can't go on and the worker must stop.
    Fatal(String),
}

/// A replayable source's position after some frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourcePosition {
    /// File source: the byte offset after the last frame.
    FileOffset(u64),
    /// Connector source: a stream and the message id of its last frame.
    Stream { id: u64, point_of_ref: u64 },
}

/// Counters shared by the I/O tasks and the executor.
#[derive(Default)]
pub struct IoStats {
    pub frames_in: AtomicU64,
    pub bad_frames: AtomicU64,
    pub sink_dropped: AtomicU64,
}
