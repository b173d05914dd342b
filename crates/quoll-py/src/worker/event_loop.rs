//! The executor thread's event loop.
//!
//! It serves two inboxes: peers and the control plane first (and again
//! after every source event), then source input. It takes no source input
//! while the node says not to (forming, restoring, waiting for every member
//! to restore, aligning a barrier), nor
//! while frames for a slow worker pile up beyond `router::CONGESTED_BYTES`;
//! it keeps serving peers meanwhile, so a cycle of workers waiting on each
//! other drains. It holds the GIL while it works and releases it only to
//! wait.
//!
//! Output (sink buffers, batches for other workers) is handed over at the
//! end of every round and, within a round, once [`FLUSH_EVERY`] has passed
//! since the last hand-over: under steady input a round lasts up to
//! [`ROUND_TIME`], and holding output that long would be most of a
//! message's latency. Window timers run before the end-of-round flush, so
//! what they fire leaves at once, and only once every member restored
//! (`Node::cluster_restored`).

use super::{Stop, Worker};
use crate::error::WorkerError;
use crate::event::{record_event_cost, Event};
use crate::metrics::PUBLISH_EVERY;
use pyo3::prelude::*;
use quoll_core::external::ReportStatus;
use quoll_core::node::NodeEvent;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::info;

/// Events taken from an inbox per round before outputs are flushed.
const EVENTS_PER_ROUND: usize = 64;
/// A round of source input ends after this long, so checkpoints start on
/// time and control messages wait little, however slow the user code.
const ROUND_TIME: Duration = Duration::from_millis(20);
/// Within a round, output older than this is handed over after the current
/// event: the latency it adds is at most this plus one event
/// (`event::EVENT_TIME`), at a cost of at most a few thousand hand-overs
/// a second per sink and link.
const FLUSH_EVERY: Duration = Duration::from_micros(500);
/// The longest the loop sleeps without looking at the clock.
const MAX_WAIT: Duration = Duration::from_millis(200);
/// How often the report-status counters are refreshed.
const REPORT_EVERY: Duration = Duration::from_millis(500);

impl Worker {
    fn congested(&self) -> bool {
        self.ex.router.as_ref().is_some_and(|r| r.congested())
    }

    fn takes_input(&self) -> bool {
        self.node.takes_input() && !self.congested() && self.src_open
    }

    /// Runs until a clean stop or a fatal error.
    pub(super) fn run(&mut self, py: Python<'_>) -> Result<Stop, WorkerError> {
        let mut next_timer: Option<Instant> = self.ex.on_timers(py)?;
        let mut last_report = Instant::now();
        let mut last_publish = Instant::now();
        let batch_size = self.config.batch_size.max(1);
        let mut flushed = Instant::now();
        loop {
            if py.check_signals().is_err() {
                return Ok(Stop::Clean("interrupted".into()));
            }
            if self
                .node
                .next_deadline()
                .is_some_and(|d| Instant::now() >= d)
            {
                self.node_event(py, NodeEvent::Tick)?;
            }
            let mut busy = false;
            if let Some(stop) = self.serve_control(py, &mut flushed, &mut busy)? {
                return Ok(stop);
            }
            if self.takes_input() {
                let round = Instant::now();
                for _ in 0..EVENTS_PER_ROUND {
                    if round.elapsed() >= ROUND_TIME {
                        break;
                    }
                    match self.src_rx.try_recv() {
                        Ok(e) => {
                            busy = true;
                            if let Some(stop) = self.handle(py, e)? {
                                return Ok(stop);
                            }
                            self.flush_if_due(py, &mut flushed);
                            // Peers' data waits at most one source event,
                            // not a whole round: on 2 workers it made p99
                            // at half load about a round (20 ms).
                            if let Some(stop) = self.serve_control(py, &mut flushed, &mut busy)? {
                                return Ok(stop);
                            }
                            if !self.takes_input() {
                                break;
                            }
                        }
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            self.src_open = false;
                            break;
                        }
                        Err(mpsc::error::TryRecvError::Empty) => break,
                    }
                }
                if self.ex.generating() && self.node.takes_input() {
                    busy = true;
                    self.ex.run_generators(py, batch_size)?;
                }
            }
            // Nothing came in this round and no source input is held back:
            // the inboxes are empty (what idle window firing relies on).
            if !busy && (self.takes_input() || !self.src_open) {
                self.ex.inputs_drained();
            }
            let timers_due = next_timer.is_none_or(|t| Instant::now() >= t);
            if timers_due && self.node.cluster_restored() {
                next_timer = self.ex.on_timers(py)?;
            }
            self.ex.flush_peers();
            self.ex.flush_sinks(py);
            flushed = Instant::now();
            self.ex.errors.maybe_summarise();
            if last_publish.elapsed() >= PUBLISH_EVERY {
                last_publish = Instant::now();
                self.publish_metrics();
            }
            if last_report.elapsed() >= REPORT_EVERY {
                last_report = Instant::now();
                self.publish_report();
            }
            if busy {
                continue;
            }
            // Idle: wait for input, a timer or a slow link, without the GIL.
            let now = Instant::now();
            // Timers wait for `AllRestored`, which comes as a control event.
            let timer = next_timer.filter(|_| self.node.cluster_restored());
            let mut wait = [timer, self.node.next_deadline()]
                .into_iter()
                .flatten()
                .map(|t| t.saturating_duration_since(now))
                .fold(MAX_WAIT, Duration::min);
            if self.ex.router.as_ref().is_some_and(|r| r.has_pending()) {
                wait = wait.min(Duration::from_millis(1));
            }
            let take_src = self.takes_input();
            let (rt, ctl, src) = (&self.rt, &mut self.ctl_rx, &mut self.src_rx);
            let mut src_closed = false;
            let event = py.detach(|| {
                rt.block_on(async {
                    tokio::select! {
                        biased;
                        e = ctl.recv() => e,
                        e = src.recv(), if take_src => {
                            src_closed = e.is_none();
                            e
                        }
                        _ = tokio::time::sleep(wait) => None,
                    }
                })
            });
            self.src_open &= !src_closed;
            if let Some(e) = event {
                if let Some(stop) = self.handle(py, e)? {
                    return Ok(stop);
                }
            }
        }
    }

    /// Handles what the control inbox holds (peer data, barriers, control
    /// messages), up to [`EVENTS_PER_ROUND`] events; `Some(stop)` ends the
    /// loop.
    fn serve_control(
        &mut self,
        py: Python<'_>,
        flushed: &mut Instant,
        busy: &mut bool,
    ) -> Result<Option<Stop>, WorkerError> {
        for _ in 0..EVENTS_PER_ROUND {
            let Ok(e) = self.ctl_rx.try_recv() else { break };
            *busy = true;
            if let Some(stop) = self.handle(py, e)? {
                return Ok(Some(stop));
            }
            self.flush_if_due(py, flushed);
        }
        Ok(None)
    }

    /// Hands over buffered output if the last hand-over is [`FLUSH_EVERY`] old.
    fn flush_if_due(&mut self, py: Python<'_>, flushed: &mut Instant) {
        let now = Instant::now();
        if now.duration_since(*flushed) >= FLUSH_EVERY {
            self.ex.flush_peers();
            self.ex.flush_sinks(py);
            *flushed = now;
        }
    }

    /// Handles one event; `Some(stop)` ends the loop.
    fn handle(&mut self, py: Python<'_>, event: Event) -> Result<Option<Stop>, WorkerError> {
        match event {
            Event::Frames {
                source,
                frames,
                keys,
                position,
                epoch,
            } => {
                if epoch == 0 || epoch == self.source_epoch {
                    let (started, count) = (Instant::now(), frames.len());
                    self.ex.on_frames(py, source, frames, &keys, position)?;
                    record_event_cost(count, started.elapsed());
                }
            }
            Event::PeerData {
                from,
                generation,
                body,
            } => {
                if let Some(r) = &self.ex.router {
                    if let Some(peer) = r.names.get(from) {
                        // Counted as sent: the whole frame.
                        let bytes = body.len() + quoll_core::wire::FRAME_HEADER;
                        self.metrics.peer_frame(peer, bytes);
                    }
                }
                if let Some(body) = self.node.on_data(from, generation, body) {
                    self.ex.on_peer_data(py, from, &body)?;
                }
            }
            Event::Handoff {
                from,
                generation,
                body,
            } => self.on_handoff(py, from, generation, &body)?,
            Event::Node(e) => {
                self.node_event(py, e)?;
                if self.left {
                    return Ok(Some(Stop::Left));
                }
            }
            Event::Shrink { request, reply } => {
                let mut out = Vec::new();
                let answer = self.node.shrink(
                    request.query,
                    &request.node_names,
                    request.node_count as usize,
                    Instant::now(),
                    &mut out,
                );
                self.carry_out(py, out)?;
                let _ = reply.send(answer.map_err(|e| e.to_string()));
            }
            Event::Shutdown { reason } => {
                info!("stopping: {reason}");
                return Ok(Some(Stop::Clean(reason)));
            }
            Event::Fatal(reason) => return Err(WorkerError::Fatal(reason)),
            Event::StateEntities(reply) => {
                // The asker may have given up (its connection closed).
                let _ = reply.send(self.ex.state_entities());
            }
        }
        Ok(None)
    }

    /// Moves the executor's counts into the metrics registry.
    fn publish_metrics(&mut self) {
        let keys = self.ex.keys_held();
        let errors = self.ex.errors.counts();
        self.metrics.publish(&mut self.ex.meters, errors, keys);
        if let Some(r) = &mut self.ex.router {
            for (peer, frames, bytes) in r.take_sent() {
                self.metrics.peer_frames_sent(&peer, frames, bytes);
            }
        }
    }

    fn publish_report(&self) {
        let report = ReportStatus {
            messages_in: self.ex.messages_in,
            shipped: self.ex.router.as_ref().map_or(0, |r| r.shipped),
            frames_in: self.stats.frames_in.load(Ordering::Relaxed),
            bad_frames: self.stats.bad_frames.load(Ordering::Relaxed),
            sink_dropped: self.stats.sink_dropped.load(Ordering::Relaxed),
            dropped: self.ex.errors.total(),
            dropped_by_place: self.ex.errors.counts(),
        };
        if let (Ok(json), Ok(mut r)) = (serde_json::to_string(&report), self.view.report.lock()) {
            *r = json;
        }
    }
}
