//! What the I/O threads tell the executor thread.
//!
//! Source frames come through one inbox; everything else (peers, the
//! control plane, the external channel, finished writes) through another
//! that the executor serves first, so a busy source never delays a barrier,
//! a heartbeat's verdict or a shutdown.

use bytes::Bytes;
use quoll_core::external::StateEntities;
use quoll_core::membership::Generation;
use quoll_core::node::NodeEvent;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::oneshot;

pub enum Event {
    /// Frames read from one connection of a source, in order. `position`
    /// (replayable sources only) is where the source stands once these
    /// frames are processed; a checkpoint records it. `epoch` is the
    /// incarnation of a restartable source (0 for others): frames of an
    /// incarnation stopped by a rollback are dropped. `keys` (connector and
    /// Kafka sources) gives each frame's message key, empty for none; with
    /// no keys at all every frame has the source's implicit key.
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
    /// A handoff batch from member `from` (restored state this worker
    /// owns; empty: the end of its handoff), on a data link of `generation`.
    Handoff {
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
    /// The external channel's shrink request (type 4): the workers that
    /// may leave (a query) or that now leave, or why not.
    Shrink {
        request: quoll_core::external::ShrinkRequest,
        reply: oneshot::Sender<Result<Vec<String>, String>>,
    },
    /// The external channel asks which keys this worker's state and window
    /// stages hold (its state-entity query).
    StateEntities(oneshot::Sender<StateEntities>),
}

/// A replayable source's position after some frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourcePosition {
    /// File source: the byte offset after the last frame.
    FileOffset(u64),
    /// Connector source: a stream and the message id of its last frame.
    Stream { id: u64, point_of_ref: u64 },
    /// Kafka source: the next offset of each partition these frames came
    /// from (or that it starts at).
    Partitions(Vec<(i32, i64)>),
}

/// Counters shared by the I/O tasks and the executor.
#[derive(Default)]
pub struct IoStats {
    pub frames_in: AtomicU64,
    pub bad_frames: AtomicU64,
    pub sink_dropped: AtomicU64,
}

/// How many frames a source may cut into one event. The executor can't
/// start a checkpoint or read a control message in the middle of an event,
/// so one event should keep it busy about [`EVENT_TIME`], however slow the
/// user code: the executor measures what a frame costs and sets the size
/// after every event ([`record_event_cost`]); readers look it up before
/// cutting each event ([`frames_per_event`]). Cheap frames get large
/// events, which keeps per-event overhead out of the throughput.
///
/// One value per process, as a worker process has one executor. It starts
/// small so that the events a reader queues before the first measurement
/// (up to the inbox's capacity, right after a start or a rollback) are
/// short too.
static FRAMES_PER_EVENT: AtomicUsize = AtomicUsize::new(MIN_FRAMES_AT_START);

/// What one source event should cost the executor.
pub const EVENT_TIME: Duration = Duration::from_millis(10);
/// The largest event, whatever a frame costs.
pub const MAX_FRAMES_PER_EVENT: usize = 1024;
const MIN_FRAMES_AT_START: usize = 16;

/// Frames the next source event may hold.
pub fn frames_per_event() -> usize {
    FRAMES_PER_EVENT.load(Ordering::Relaxed)
}

/// Tells the readers what an event of `frames` frames cost: the size drops
/// at once to what fits in [`EVENT_TIME`], and at most doubles per event
/// on the way up, so one cheap event after slow ones can't bring back
/// long ones.
pub fn record_event_cost(frames: usize, elapsed: Duration) {
    let next = next_frames_per_event(frames_per_event(), frames, elapsed);
    FRAMES_PER_EVENT.store(next, Ordering::Relaxed);
}

fn next_frames_per_event(now: usize, frames: usize, elapsed: Duration) -> usize {
    if frames == 0 {
        return now;
    }
    let per_frame = (elapsed.as_nanos() / frames as u128).max(1);
    let fits = usize::try_from(EVENT_TIME.as_nanos() / per_frame).unwrap_or(usize::MAX);
    fits.clamp(1, MAX_FRAMES_PER_EVENT)
        .min(now.saturating_mul(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_size_follows_the_cost_of_a_frame() {
        let ms = Duration::from_millis;
        // 0.5 ms a frame: 20 frames fill EVENT_TIME, at once.
        assert_eq!(next_frames_per_event(1024, 1024, ms(512)), 20);
        // Slower than EVENT_TIME per frame: one frame an event.
        assert_eq!(next_frames_per_event(20, 20, ms(400)), 1);
        // Cheap frames: the size doubles per event up to the cap.
        assert_eq!(next_frames_per_event(16, 16, Duration::from_micros(16)), 32);
        assert_eq!(
            next_frames_per_event(1024, 1024, Duration::from_micros(100)),
            MAX_FRAMES_PER_EVENT
        );
        // Nothing measured, nothing learnt; a zero duration is not a division by zero.
        assert_eq!(next_frames_per_event(64, 0, ms(5)), 64);
        assert_eq!(next_frames_per_event(64, 64, Duration::ZERO), 128);
    }
}
