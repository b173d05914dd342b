//! The checkpoint participant: one worker's side of the protocol.
//!
//! A worker takes part in checkpoint N from the first of "the coordinator
//! says begin N" or "barrier N arrived on a data link". It then records its
//! sources' positions, sends barrier N down every outgoing data link and
//! takes no more source input; data arriving on a link *after* that link's
//! barrier is held back. Once barrier N has come in on every link, all that
//! precedes the barriers has been processed: the worker snapshots its state
//! and sink positions, releases what it held, and resumes; the part is then
//! written durably (sinks pre-commit, the part file is synced) off the
//! executor thread, and reported to the coordinator. When the coordinator
//! says N is committed, sources may acknowledge what N covers, sinks
//! commit, and older files may go.
//!
//! The machine holds the data of links that are ahead (generic `D`) and the
//! source positions of every part not yet committed (generic `P`); it does
//! no I/O.
//!
//! # Invariants
//!
//! - At most one alignment at a time; a begin or barrier for an id not newer
//!   than the last begun one is stale and ignored, and a newer one abandons
//!   an unfinished alignment (the coordinator gave up on it).
//! - Data from a link is handed out in arrival order: held data is released
//!   right after the snapshot, before any later data of that link.
//! - A snapshot is a delta on the previous part only if that part is known
//!   durable and nothing failed since; otherwise it is full, so a committed
//!   chain never misses a key that changed.
//! - Source positions are acknowledged only for a committed checkpoint, and
//!   only those recorded when that checkpoint began.

use crate::checkpoint::CheckpointId;
use std::collections::{BTreeMap, VecDeque};

/// Write a full part (compacting the chain) after this many deltas.
pub const COMPACT_AFTER: u32 = 8;

/// What happened, as the participant needs to know it.
#[derive(Debug, Clone, PartialEq)]
pub enum ParticipantEvent {
    /// The coordinator began checkpoint `id`.
    Begin { id: CheckpointId },
    /// Barrier `id` arrived on the data link from member `from`.
    Barrier { from: usize, id: CheckpointId },
    /// This worker's part of `id` was written durably, or failed.
    PartWritten {
        id: CheckpointId,
        result: Result<(), String>,
    },
    /// The coordinator committed `id`.
    Committed { id: CheckpointId },
    /// The coordinator abandoned `id`.
    Aborted { id: CheckpointId },
}

/// What the caller must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum ParticipantAction<P, D> {
    /// Send barrier `id` on every outgoing data link, after everything sent
    /// so far.
    SendBarriers { id: CheckpointId },
    /// Snapshot state and sink positions now (a delta on `parent`, or full),
    /// then, off the executor thread, pre-commit the sinks, write the part
    /// durably, and report [`ParticipantEvent::PartWritten`].
    TakeSnapshot {
        id: CheckpointId,
        parent: Option<CheckpointId>,
    },
    /// Process data that was held back while aligning.
    Release { from: usize, data: D },
    /// Tell the coordinator this worker's part of `id` is durable.
    PartDone { id: CheckpointId },
    /// Tell the coordinator this worker's part of `id` failed.
    PartFailed { id: CheckpointId, reason: String },
    /// `id` is committed: sources may forget what `positions` cover, sinks
    /// commit what they pre-committed for `id`, files older than `id`'s
    /// chain may go (after compacting `id` into a full file if `compact`).
    Commit {
        id: CheckpointId,
        positions: P,
        compact: bool,
    },
    /// `id` was abandoned: sinks abort what they pre-committed for it.
    Abort { id: CheckpointId },
}

#[derive(Debug)]
struct Alignment<D> {
    id: CheckpointId,
    /// Per member: its barrier has arrived (always true for this worker).
    barrier_in: Vec<bool>,
    /// Per member: data that arrived after its barrier.
    held: Vec<VecDeque<D>>,
}

/// The chain of part files a delta builds on.
#[derive(Debug, Default)]
struct Chain {
    /// The newest part known durable, and the parent of the next delta.
    tip: Option<CheckpointId>,
    /// A part snapshotted and not yet known durable.
    writing: Option<(CheckpointId, Option<CheckpointId>)>,
    /// Deltas on top of the last full part.
    deltas: u32,
}

/// One worker's participation in checkpoints.
#[derive(Debug)]
pub struct Participant<P, D> {
    me: usize,
    members: usize,
    last_begun: CheckpointId,
    alignment: Option<Alignment<D>>,
    /// Source positions of every begun, uncommitted part.
    positions: BTreeMap<CheckpointId, P>,
    chain: Chain,
    last_committed: Option<CheckpointId>,
}

impl<P, D> Participant<P, D> {
    /// A participant of a cluster not formed yet.
    pub fn new() -> Self {
        Participant {
            me: 0,
            members: 1,
            last_begun: 0,
            alignment: None,
            positions: BTreeMap::new(),
            chain: Chain::default(),
            last_committed: None,
        }
    }

    /// State was restored to `checkpoint` (None: the beginning) in a cluster
    /// where this worker is member `me` of `members`; `files_read` part files
    /// made that image (a full one and the deltas on it); `moved`: state
    /// moved between workers, so the next part must be full. Whatever was
    /// in progress belonged to the old generation and is dropped.
    pub fn restored(
        &mut self,
        me: usize,
        members: usize,
        checkpoint: Option<CheckpointId>,
        files_read: usize,
        moved: bool,
    ) {
        self.me = me;
        self.members = members;
        self.alignment = None;
        self.positions.clear();
        self.last_begun = checkpoint.unwrap_or(0);
        self.last_committed = checkpoint;
        self.chain = Chain {
            tip: checkpoint.filter(|_| !moved),
            writing: None,
            deltas: files_read.saturating_sub(1) as u32,
        };
    }

    /// True while a checkpoint is being aligned: take no source input.
    pub fn aligning(&self) -> bool {
        self.alignment.is_some()
    }

    pub fn last_committed(&self) -> Option<CheckpointId> {
        self.last_committed
    }

    /// Data from member `from`: `Some` to process now, `None` if it is held
    /// (it came after that link's barrier).
    pub fn on_data(&mut self, from: usize, data: D) -> Option<D> {
        match &mut self.alignment {
            Some(a) if a.barrier_in.get(from).copied().unwrap_or(false) => {
                a.held[from].push_back(data);
                None
            }
            _ => Some(data),
        }
    }

    /// Handles one event; `positions` gives the sources' current positions
    /// and is called only when a checkpoint begins here.
    pub fn handle(
        &mut self,
        event: ParticipantEvent,
        positions: impl FnOnce() -> P,
        out: &mut Vec<ParticipantAction<P, D>>,
    ) {
        match event {
            ParticipantEvent::Begin { id } => {
                self.begin(id, positions, out);
                self.maybe_aligned(out);
            }
            ParticipantEvent::Barrier { from, id } => {
                self.begin(id, positions, out);
                if let Some(a) = &mut self.alignment {
                    if a.id == id {
                        if let Some(b) = a.barrier_in.get_mut(from) {
                            *b = true;
                        }
                    }
                }
                self.maybe_aligned(out);
            }
            ParticipantEvent::PartWritten { id, result } => {
                let Some((writing, parent)) = self.chain.writing else {
                    return;
                };
                if writing != id {
                    return;
                }
                self.chain.writing = None;
                match result {
                    Ok(()) => {
                        self.chain.tip = Some(id);
                        self.chain.deltas = if parent.is_some() {
                            self.chain.deltas + 1
                        } else {
                            0
                        };
                        out.push(ParticipantAction::PartDone { id });
                    }
                    Err(reason) => {
                        // The snapshot's changes are in no durable file: the
                        // next part must be full.
                        self.chain.tip = None;
                        out.push(ParticipantAction::PartFailed { id, reason });
                    }
                }
            }
            ParticipantEvent::Committed { id } => {
                let Some(positions) = self.positions.remove(&id) else {
                    return;
                };
                self.positions = self.positions.split_off(&(id + 1));
                self.last_committed = Some(id);
                let compact = self.chain.tip == Some(id) && self.chain.deltas >= COMPACT_AFTER;
                if compact {
                    self.chain.deltas = 0;
                }
                out.push(ParticipantAction::Commit {
                    id,
                    positions,
                    compact,
                });
            }
            ParticipantEvent::Aborted { id } => {
                if self.positions.remove(&id).is_none() {
                    return;
                }
                if self.alignment.as_ref().is_some_and(|a| a.id == id) {
                    self.release(out);
                }
                out.push(ParticipantAction::Abort { id });
            }
        }
    }

    fn begin(
        &mut self,
        id: CheckpointId,
        positions: impl FnOnce() -> P,
        out: &mut Vec<ParticipantAction<P, D>>,
    ) {
        if id <= self.last_begun {
            return;
        }
        if self.alignment.is_some() {
            // The coordinator moved on: the older checkpoint was abandoned.
            self.release(out);
        }
        self.last_begun = id;
        self.positions.insert(id, positions());
        out.push(ParticipantAction::SendBarriers { id });
        let mut barrier_in = vec![false; self.members];
        barrier_in[self.me] = true;
        let held = (0..self.members).map(|_| VecDeque::new()).collect();
        self.alignment = Some(Alignment {
            id,
            barrier_in,
            held,
        });
    }

    fn maybe_aligned(&mut self, out: &mut Vec<ParticipantAction<P, D>>) {
        let Some(a) = &self.alignment else { return };
        if !a.barrier_in.iter().all(|b| *b) {
            return;
        }
        let id = a.id;
        let parent = match self.chain.writing {
            Some(_) => None,
            None => self.chain.tip,
        };
        self.chain.writing = Some((id, parent));
        out.push(ParticipantAction::TakeSnapshot { id, parent });
        self.release(out);
    }

    /// Ends the alignment, handing out what it held, link by link in order.
    fn release(&mut self, out: &mut Vec<ParticipantAction<P, D>>) {
        let Some(a) = self.alignment.take() else {
            return;
        };
        for (from, held) in a.held.into_iter().enumerate() {
            out.extend(
                held.into_iter()
                    .map(|data| ParticipantAction::Release { from, data }),
            );
        }
    }
}

impl<P, D> Default for Participant<P, D> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Actions = Vec<ParticipantAction<u64, &'static str>>;

    fn step(p: &mut Participant<u64, &'static str>, e: ParticipantEvent, pos: u64) -> Actions {
        let mut out = Vec::new();
        p.handle(e, || pos, &mut out);
        out
    }

    #[test]
    fn aligns_holds_snapshots_then_releases_in_order() {
        let mut p = Participant::new();
        p.restored(1, 3, None, 0, false);
        assert_eq!(p.on_data(0, "a"), Some("a"));
        let out = step(&mut p, ParticipantEvent::Barrier { from: 0, id: 1 }, 10);
        assert_eq!(out, vec![ParticipantAction::SendBarriers { id: 1 }]);
        assert!(p.aligning());
        assert_eq!(p.on_data(0, "b"), None, "after its link's barrier: held");
        assert_eq!(
            p.on_data(2, "c"),
            Some("c"),
            "before its link's barrier: processed"
        );
        assert_eq!(p.on_data(0, "d"), None);
        let out = step(&mut p, ParticipantEvent::Begin { id: 1 }, 99);
        assert!(out.is_empty(), "already begun by the barrier");
        let out = step(&mut p, ParticipantEvent::Barrier { from: 2, id: 1 }, 99);
        assert_eq!(
            out,
            vec![
                ParticipantAction::TakeSnapshot {
                    id: 1,
                    parent: None
                },
                ParticipantAction::Release { from: 0, data: "b" },
                ParticipantAction::Release { from: 0, data: "d" },
            ]
        );
        assert!(!p.aligning());
        let out = step(
            &mut p,
            ParticipantEvent::PartWritten {
                id: 1,
                result: Ok(()),
            },
            0,
        );
        assert_eq!(out, vec![ParticipantAction::PartDone { id: 1 }]);
        let out = step(&mut p, ParticipantEvent::Committed { id: 1 }, 0);
        assert_eq!(
            out,
            vec![ParticipantAction::Commit {
                id: 1,
                positions: 10,
                compact: false
            }]
        );
    }

    #[test]
    fn after_state_moved_the_next_part_is_full() {
        let mut p: Participant<u64, &str> = Participant::new();
        p.restored(0, 1, Some(4), 3, true);
        let out = step(&mut p, ParticipantEvent::Begin { id: 5 }, 0);
        assert_eq!(
            out[1],
            ParticipantAction::TakeSnapshot {
                id: 5,
                parent: None
            },
            "a delta on 4 would keep key groups this worker no longer owns"
        );
    }

    #[test]
    fn deltas_build_on_durable_parts_only() {
        let mut p: Participant<u64, &str> = Participant::new();
        p.restored(0, 1, Some(4), 3, false);
        let out = step(&mut p, ParticipantEvent::Begin { id: 5 }, 0);
        assert_eq!(
            out[1],
            ParticipantAction::TakeSnapshot {
                id: 5,
                parent: Some(4)
            }
        );
        // 5 is abandoned while still being written; 6 can't build on it.
        step(&mut p, ParticipantEvent::Aborted { id: 5 }, 0);
        let out = step(&mut p, ParticipantEvent::Begin { id: 6 }, 0);
        assert_eq!(
            out[1],
            ParticipantAction::TakeSnapshot {
                id: 6,
                parent: None
            }
        );
        step(
            &mut p,
            ParticipantEvent::PartWritten {
                id: 6,
                result: Err("disk full".into()),
            },
            0,
        );
        let out = step(&mut p, ParticipantEvent::Begin { id: 7 }, 0);
        assert_eq!(
            out[1],
            ParticipantAction::TakeSnapshot {
                id: 7,
                parent: None
            },
            "after a failed write: full"
        );
        step(
            &mut p,
            ParticipantEvent::PartWritten {
                id: 7,
                result: Ok(()),
            },
            0,
        );
        let out = step(&mut p, ParticipantEvent::Begin { id: 8 }, 0);
        assert_eq!(
            out[1],
            ParticipantAction::TakeSnapshot {
                id: 8,
                parent: Some(7)
            }
        );
    }

    #[test]
    fn compacts_after_enough_deltas() {
        let mut p: Participant<u64, &str> = Participant::new();
        p.restored(0, 1, Some(1), 1, false);
        for id in 2..=(2 + COMPACT_AFTER as u64) {
            step(&mut p, ParticipantEvent::Begin { id }, id);
            step(
                &mut p,
                ParticipantEvent::PartWritten { id, result: Ok(()) },
                0,
            );
            let out = step(&mut p, ParticipantEvent::Committed { id }, 0);
            let want = id - 1 == COMPACT_AFTER as u64;
            assert_eq!(
                out,
                vec![ParticipantAction::Commit {
                    id,
                    positions: id,
                    compact: want
                }],
                "id {id}"
            );
        }
    }

    #[test]
    fn a_newer_begin_abandons_an_unfinished_alignment() {
        let mut p = Participant::new();
        p.restored(0, 2, None, 0, false);
        step(&mut p, ParticipantEvent::Begin { id: 1 }, 0);
        assert_eq!(
            p.on_data(1, "early"),
            Some("early"),
            "before its barrier: processed"
        );
        let out = step(&mut p, ParticipantEvent::Begin { id: 2 }, 0);
        assert_eq!(out, vec![ParticipantAction::SendBarriers { id: 2 }]);
        assert!(
            step(&mut p, ParticipantEvent::Barrier { from: 1, id: 1 }, 0).is_empty(),
            "stale barrier"
        );
        let out = step(&mut p, ParticipantEvent::Barrier { from: 1, id: 2 }, 0);
        assert_eq!(
            out,
            vec![ParticipantAction::TakeSnapshot {
                id: 2,
                parent: None
            }]
        );
    }

    proptest! {
        /// Over any interleaving of peers' data and barriers, the data of
        /// each link comes out (processed at once or released) exactly once
        /// and in order, and everything a link sent before its barrier comes
        /// out before the snapshot, everything after it after the snapshot.
        #[test]
        fn alignment_splits_every_link_at_its_barrier(
            members in 2usize..5,
            sends in proptest::collection::vec((0usize..5, 0u8..6), 0..120),
        ) {
            let me = 0;
            let mut p: Participant<(), (usize, u32, bool)> = Participant::new();
            p.restored(me, members, None, 0, false);
            let mut seq = vec![0u32; members];
            let mut barrier_sent = vec![false; members];
            let mut seen: Vec<Vec<(u32, bool)>> = vec![Vec::new(); members];
            let mut snapshot_taken = false;
            let deliver = |seen: &mut Vec<Vec<(u32, bool)>>, snapshot_taken: bool, (from, n, after): (usize, u32, bool)| {
                // Data sent after the barrier must come after the snapshot, and before it, before.
                assert_eq!(after, snapshot_taken, "link {from} message {n}");
                seen[from].push((n, after));
            };
            for (from, kind) in sends {
                let from = 1 + from % (members - 1);
                let mut out = Vec::new();
                if kind == 0 && !barrier_sent[from] {
                    barrier_sent[from] = true;
                    p.handle(ParticipantEvent::Barrier { from, id: 1 }, || (), &mut out);
                } else {
                    let d = (from, seq[from], barrier_sent[from]);
                    seq[from] += 1;
                    if let Some(d) = p.on_data(from, d) {
                        deliver(&mut seen, snapshot_taken, d);
                    }
                }
                for a in out {
                    match a {
                        ParticipantAction::TakeSnapshot { .. } => snapshot_taken = true,
                        ParticipantAction::Release { data, .. } => deliver(&mut seen, snapshot_taken, data),
                        _ => {}
                    }
                }
            }
            let mut out = Vec::new();
            for (from, sent) in barrier_sent.iter().enumerate().skip(1) {
                if !*sent {
                    p.handle(ParticipantEvent::Barrier { from, id: 1 }, || (), &mut out);
                }
            }
            for a in out {
                if let ParticipantAction::Release { data, .. } = a {
                    seen[data.0].push((data.1, data.2));
                }
            }
            for (from, got) in seen.iter().enumerate().skip(1) {
                let order: Vec<u32> = got.iter().map(|(n, _)| *n).collect();
                prop_assert_eq!(order, (0..seq[from]).collect::<Vec<_>>(), "link {}", from);
            }
        }
    }
}
