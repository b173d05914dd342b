//! The checkpoint coordinator: the initializer's side of the protocol.
//!
//! It decides when checkpoint N begins, collects every member's "my part of
//! N is durable", has the commit recorded durably, and only then declares N
//! committed. It does no I/O: the caller turns [`CoordinatorAction`]s into
//! messages and commit-log appends, and feeds back what happened as
//! [`CoordinatorEvent`]s.
//!
//! # States
//!
//! ```text
//!            start()                      Tick (due)
//!  Stopped ──────────▶ Idle { next_due } ────────────▶ Collecting { id, waiting }
//!     ▲                  ▲      ▲                          │ last PartDone
//!     │ stop()           │      │ PartFailed / timeout     ▼
//!     └──── (any) ───────┘      └──────────────────── Recording { id }
//!                        ▲                                 │ CommitRecorded
//!                        └─────────────────────────────────┘  (Commit)
//! ```
//!
//! # Invariants
//!
//! - At most one checkpoint is in flight; the next begins only after the
//!   previous one was committed or abandoned, and no earlier than
//!   `interval` after that.
//! - Checkpoint N is committed (the [`CoordinatorAction::Commit`] is
//!   returned) only after every member of the generation reported its part
//!   of N durable *and* the commit record was reported durable.
//! - Ids grow by one per begun checkpoint; after a (re)start they continue
//!   from the checkpoint the cluster rolled back to, so the ids of
//!   checkpoints abandoned by a rollback are used again (every worker
//!   removed their files when it rolled back).
//! - Reports of another generation, or of a checkpoint that is not the one
//!   in flight, change nothing.

use crate::checkpoint::CheckpointId;
use crate::membership::Generation;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// What happened, as the coordinator needs to know it.
#[derive(Debug, Clone, PartialEq)]
pub enum CoordinatorEvent {
    /// Time passes; a checkpoint may be due or overdue.
    Tick { now: Instant },
    /// Member `member` (an index in the generation's member list) has made
    /// its part of checkpoint `id` durable.
    PartDone {
        id: CheckpointId,
        generation: Generation,
        member: usize,
    },
    /// Member `member` could not make its part durable (`reason` names it).
    PartFailed {
        id: CheckpointId,
        generation: Generation,
        member: usize,
        reason: String,
    },
    /// The commit record of `id` is durable (`Ok`) or could not be written.
    CommitRecorded {
        id: CheckpointId,
        generation: Generation,
        result: Result<(), String>,
        now: Instant,
    },
}

/// What the caller must do.
#[derive(Debug, Clone, PartialEq)]
pub enum CoordinatorAction {
    /// Begin checkpoint `id` everywhere (this worker too).
    Begin {
        id: CheckpointId,
        generation: Generation,
    },
    /// Append "`id` committed" to the commit log durably, then report
    /// [`CoordinatorEvent::CommitRecorded`].
    RecordCommit {
        id: CheckpointId,
        generation: Generation,
    },
    /// `id` is complete: tell every member (this worker too).
    Commit {
        id: CheckpointId,
        generation: Generation,
    },
    /// `id` will never complete: tell every member, so pre-committed sink
    /// transactions are aborted.
    Abort {
        id: CheckpointId,
        generation: Generation,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// No formed cluster to checkpoint.
    Stopped,
    /// The cluster is gone, but the commit record of `id` was being
    /// written: whether `id` committed is known only once it is reported.
    StoppedRecording {
        id: CheckpointId,
    },
    Idle {
        next_due: Instant,
    },
    /// Waiting for the members in `waiting` to report their part durable.
    Collecting {
        id: CheckpointId,
        began: Instant,
        waiting: BTreeSet<usize>,
    },
    /// Every part is durable; the commit record is being written.
    Recording {
        id: CheckpointId,
    },
}

/// The coordinator of one initializer process.
#[derive(Debug)]
pub struct Coordinator {
    interval: Duration,
    /// A checkpoint still collecting parts after this long is abandoned.
    timeout: Duration,
    generation: Generation,
    next_id: CheckpointId,
    last_committed: Option<CheckpointId>,
    phase: Phase,
    /// The next checkpoint begins as soon as none is in flight.
    hurry: bool,
}

impl Coordinator {
    /// A coordinator whose commit log says `last_committed` (None: nothing
    /// was ever committed). It begins nothing until [`Coordinator::start`].
    pub fn new(
        interval: Duration,
        timeout: Duration,
        last_committed: Option<CheckpointId>,
    ) -> Coordinator {
        Coordinator {
            interval,
            timeout,
            generation: 0,
            next_id: last_committed.map_or(1, |c| c + 1),
            last_committed,
            phase: Phase::Stopped,
            hurry: false,
        }
    }

    /// The next checkpoint is wanted now: it begins at the next tick if
    /// none is in flight, else right after the one in flight ends.
    pub fn hurry(&mut self, now: Instant) {
        match &mut self.phase {
            Phase::Idle { next_due } => *next_due = now,
            _ => self.hurry = true,
        }
    }

    /// When the next checkpoint is due: `normal`, or `now` if hurried.
    fn due(&mut self, normal: Instant, now: Instant) -> Instant {
        if std::mem::take(&mut self.hurry) {
            now
        } else {
            normal
        }
    }

    /// The cluster of `generation` has formed with `members` workers, every
    /// one restored to `rollback_to`: checkpoints begin again, the first one
    /// an interval from `now`.
    pub fn start(
        &mut self,
        generation: Generation,
        rollback_to: Option<CheckpointId>,
        now: Instant,
    ) {
        self.generation = generation;
        self.next_id = rollback_to.map_or(1, |c| c + 1);
        let next_due = self.due(now + self.interval, now);
        self.phase = Phase::Idle { next_due };
    }

    /// The cluster is gone (a member was lost): whatever is in flight is
    /// dropped; the rollback that follows undoes every worker's part. A
    /// commit record being written is awaited (see
    /// [`Coordinator::recording`]): the rollback point depends on it.
    pub fn stop(&mut self) {
        self.hurry = false;
        self.phase = match self.phase {
            Phase::Recording { id } | Phase::StoppedRecording { id } => {
                Phase::StoppedRecording { id }
            }
            _ => Phase::Stopped,
        };
    }

    /// True while stopped with a commit record still being written: the
    /// last committed checkpoint is not known until it is reported.
    pub fn recording(&self) -> bool {
        matches!(self.phase, Phase::StoppedRecording { .. })
    }

    pub fn last_committed(&self) -> Option<CheckpointId> {
        self.last_committed
    }

    /// The checkpoint in flight, if any.
    pub fn in_flight(&self) -> Option<CheckpointId> {
        match self.phase {
            Phase::Collecting { id, .. } | Phase::Recording { id } => Some(id),
            Phase::Stopped | Phase::StoppedRecording { .. } | Phase::Idle { .. } => None,
        }
    }

    /// When the caller should next send a [`CoordinatorEvent::Tick`].
    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Idle { next_due } => Some(*next_due),
            Phase::Collecting { began, .. } => Some(*began + self.timeout),
            Phase::Stopped | Phase::StoppedRecording { .. } | Phase::Recording { .. } => None,
        }
    }

    pub fn handle(&mut self, event: CoordinatorEvent, members: usize) -> Option<CoordinatorAction> {
        let generation = self.generation;
        match event {
            CoordinatorEvent::Tick { now } => match &self.phase {
                Phase::Idle { next_due } if now >= *next_due => {
                    let id = self.next_id;
                    self.next_id += 1;
                    self.phase = Phase::Collecting {
                        id,
                        began: now,
                        waiting: (0..members).collect(),
                    };
                    Some(CoordinatorAction::Begin { id, generation })
                }
                Phase::Collecting { id, began, .. } if now >= *began + self.timeout => {
                    let id = *id;
                    let next_due = self.due(now + self.interval, now);
                    self.phase = Phase::Idle { next_due };
                    let reason = format!(
                        "not every worker finished its part within {} s",
                        self.timeout.as_secs_f64()
                    );
                    Some(CoordinatorAction::Abort {
                        id,
                        generation,
                        reason,
                    })
                }
                _ => None,
            },
            CoordinatorEvent::PartDone {
                id,
                generation: g,
                member,
            } => {
                let Phase::Collecting {
                    id: current,
                    waiting,
                    ..
                } = &mut self.phase
                else {
                    return None;
                };
                if g != generation || *current != id {
                    return None;
                }
                waiting.remove(&member);
                if !waiting.is_empty() {
                    return None;
                }
                self.phase = Phase::Recording { id };
                Some(CoordinatorAction::RecordCommit { id, generation })
            }
            CoordinatorEvent::PartFailed {
                id,
                generation: g,
                reason,
                ..
            } => {
                let Phase::Collecting {
                    id: current, began, ..
                } = &self.phase
                else {
                    return None;
                };
                if g != generation || *current != id {
                    return None;
                }
                let began = *began;
                let next_due = self.due(began + self.interval, began);
                self.phase = Phase::Idle { next_due };
                Some(CoordinatorAction::Abort {
                    id,
                    generation,
                    reason,
                })
            }
            CoordinatorEvent::CommitRecorded {
                id,
                generation: g,
                result,
                now,
            } => {
                if let Phase::StoppedRecording { id: current } = self.phase {
                    if current == id {
                        self.phase = Phase::Stopped;
                        if result.is_ok() {
                            self.last_committed = Some(id);
                        }
                    }
                    return None;
                }
                let Phase::Recording { id: current } = self.phase else {
                    return None;
                };
                if g != generation || current != id {
                    return None;
                }
                let next_due = self.due(now + self.interval, now);
                self.phase = Phase::Idle { next_due };
                match result {
                    Ok(()) => {
                        self.last_committed = Some(id);
                        Some(CoordinatorAction::Commit { id, generation })
                    }
                    Err(reason) => Some(CoordinatorAction::Abort {
                        id,
                        generation,
                        reason: format!("the commit record could not be written: {reason}"),
                    }),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: Duration = Duration::from_secs(1);

    fn tick(c: &mut Coordinator, now: Instant, members: usize) -> Option<CoordinatorAction> {
        c.handle(CoordinatorEvent::Tick { now }, members)
    }

    #[test]
    fn commits_only_after_every_part_and_the_record() {
        let t0 = Instant::now();
        let mut c = Coordinator::new(SEC, 10 * SEC, None);
        assert_eq!(tick(&mut c, t0, 3), None, "stopped until a cluster forms");
        c.start(4, None, t0);
        assert_eq!(tick(&mut c, t0, 3), None, "not due yet");
        assert_eq!(
            tick(&mut c, t0 + SEC, 3),
            Some(CoordinatorAction::Begin {
                id: 1,
                generation: 4
            })
        );
        assert_eq!(
            tick(&mut c, t0 + 2 * SEC, 3),
            None,
            "one in flight at a time"
        );
        for m in [2, 0] {
            let e = CoordinatorEvent::PartDone {
                id: 1,
                generation: 4,
                member: m,
            };
            assert_eq!(c.handle(e, 3), None);
        }
        let stale = CoordinatorEvent::PartDone {
            id: 1,
            generation: 3,
            member: 1,
        };
        assert_eq!(
            c.handle(stale, 3),
            None,
            "an older generation's report is ignored"
        );
        let last = CoordinatorEvent::PartDone {
            id: 1,
            generation: 4,
            member: 1,
        };
        assert_eq!(
            c.handle(last, 3),
            Some(CoordinatorAction::RecordCommit {
                id: 1,
                generation: 4
            })
        );
        assert_eq!(c.last_committed(), None, "not before the record is durable");
        let t = t0 + 2 * SEC;
        let recorded = CoordinatorEvent::CommitRecorded {
            id: 1,
            generation: 4,
            result: Ok(()),
            now: t,
        };
        assert_eq!(
            c.handle(recorded, 3),
            Some(CoordinatorAction::Commit {
                id: 1,
                generation: 4
            })
        );
        assert_eq!(c.last_committed(), Some(1));
        assert_eq!(c.next_deadline(), Some(t + SEC));
    }

    #[test]
    fn a_failed_part_or_record_or_a_timeout_abandons() {
        let t0 = Instant::now();
        let mut c = Coordinator::new(SEC, 5 * SEC, Some(6));
        c.start(1, Some(6), t0);
        assert_eq!(
            tick(&mut c, t0 + SEC, 2),
            Some(CoordinatorAction::Begin {
                id: 7,
                generation: 1
            })
        );
        let failed = CoordinatorEvent::PartFailed {
            id: 7,
            generation: 1,
            member: 1,
            reason: "disk full".into(),
        };
        assert!(matches!(
            c.handle(failed, 2),
            Some(CoordinatorAction::Abort { id: 7, .. })
        ));
        assert_eq!(c.in_flight(), None);
        assert_eq!(
            tick(&mut c, t0 + 2 * SEC, 2),
            Some(CoordinatorAction::Begin {
                id: 8,
                generation: 1
            })
        );
        assert!(matches!(
            tick(&mut c, t0 + 7 * SEC, 2),
            Some(CoordinatorAction::Abort { id: 8, .. })
        ));
        assert_eq!(
            tick(&mut c, t0 + 8 * SEC, 2),
            Some(CoordinatorAction::Begin {
                id: 9,
                generation: 1
            })
        );
        for m in 0..2 {
            c.handle(
                CoordinatorEvent::PartDone {
                    id: 9,
                    generation: 1,
                    member: m,
                },
                2,
            );
        }
        let bad = CoordinatorEvent::CommitRecorded {
            id: 9,
            generation: 1,
            result: Err("EIO".into()),
            now: t0,
        };
        assert!(matches!(
            c.handle(bad, 2),
            Some(CoordinatorAction::Abort { id: 9, .. })
        ));
        assert_eq!(c.last_committed(), Some(6));
    }

    #[test]
    fn a_commit_record_under_way_is_awaited_when_stopped() {
        let t0 = Instant::now();
        let mut c = Coordinator::new(SEC, 5 * SEC, None);
        c.start(1, None, t0);
        tick(&mut c, t0 + SEC, 1);
        c.handle(
            CoordinatorEvent::PartDone {
                id: 1,
                generation: 1,
                member: 0,
            },
            1,
        );
        c.stop();
        assert!(c.recording());
        assert_eq!(c.last_committed(), None);
        let done = CoordinatorEvent::CommitRecorded {
            id: 1,
            generation: 1,
            result: Ok(()),
            now: t0,
        };
        assert_eq!(
            c.handle(done, 1),
            None,
            "the cluster is gone: nobody to tell"
        );
        assert!(!c.recording());
        assert_eq!(c.last_committed(), Some(1), "but the rollback lands on it");
    }

    #[test]
    fn ids_resume_after_the_rollback_point() {
        let t0 = Instant::now();
        let mut c = Coordinator::new(SEC, 5 * SEC, Some(3));
        c.start(2, Some(3), t0);
        assert_eq!(
            tick(&mut c, t0 + SEC, 1),
            Some(CoordinatorAction::Begin {
                id: 4,
                generation: 2
            })
        );
        c.stop();
        assert_eq!(c.in_flight(), None);
        let late = CoordinatorEvent::PartDone {
            id: 4,
            generation: 2,
            member: 0,
        };
        assert_eq!(c.handle(late, 1), None, "nothing is in flight once stopped");
        c.start(3, Some(3), t0 + SEC);
        assert_eq!(
            tick(&mut c, t0 + 2 * SEC, 1),
            Some(CoordinatorAction::Begin {
                id: 4,
                generation: 3
            })
        );
    }

    proptest! {
        /// Whatever the reports and their order, a commit needs every
        /// member's part of that very checkpoint in the current generation,
        /// one checkpoint is in flight at a time, and committed ids grow.
        #[test]
        fn random_reports_keep_the_invariants(
            members in 1usize..5,
            steps in proptest::collection::vec((0u8..5, 0usize..5, 0u64..4, 0u64..3, any::<bool>()), 1..200),
        ) {
            let t0 = Instant::now();
            let mut c = Coordinator::new(SEC, 4 * SEC, None);
            c.start(1, None, t0);
            let mut now = t0;
            let mut done: BTreeSet<usize> = BTreeSet::new();
            let mut in_flight: Option<u64> = None;
            let mut last_commit = 0;
            for (kind, member, id_off, gen, ok) in steps {
                now += Duration::from_millis(300);
                let current = c.in_flight();
                let id = current.unwrap_or(1) + id_off.saturating_sub(1);
                let event = match kind {
                    0 | 1 => CoordinatorEvent::Tick { now },
                    2 => CoordinatorEvent::PartDone { id, generation: gen, member: member % members },
                    3 => CoordinatorEvent::PartFailed { id, generation: gen, member: member % members, reason: "x".into() },
                    _ => CoordinatorEvent::CommitRecorded { id, generation: gen, result: if ok { Ok(()) } else { Err("x".into()) }, now },
                };
                if let CoordinatorEvent::PartDone { id: i, generation: 1, member: m } = &event {
                    if Some(*i) == in_flight { done.insert(*m); }
                }
                match c.handle(event, members) {
                    Some(CoordinatorAction::Begin { id, generation }) => {
                        prop_assert_eq!(generation, 1);
                        prop_assert_eq!(in_flight, None, "begun while another was in flight");
                        in_flight = Some(id);
                        done.clear();
                    }
                    Some(CoordinatorAction::RecordCommit { id, .. }) => {
                        prop_assert_eq!(Some(id), in_flight);
                        prop_assert_eq!(done.len(), members, "recorded before every part was durable");
                    }
                    Some(CoordinatorAction::Commit { id, .. }) => {
                        prop_assert_eq!(Some(id), in_flight);
                        prop_assert!(id > last_commit);
                        last_commit = id;
                        in_flight = None;
                    }
                    Some(CoordinatorAction::Abort { id, .. }) => {
                        prop_assert_eq!(Some(id), in_flight);
                        in_flight = None;
                    }
                    None => {}
                }
                prop_assert_eq!(c.in_flight(), in_flight);
            }
        }
    }
}
