//! One worker's coordination as one state machine: membership, checkpoints
//! and recovery composed.
//!
//! A [`Node`] takes every event of a worker's control plane (a connection
//! came up, a control message arrived, a link closed, a barrier arrived, a
//! part file is durable, a timer fired) and returns the [`NodeAction`]s the
//! binding carries out, in order. It does no I/O, so the model test
//! (`tests/cluster_model.rs`) runs whole clusters of nodes through random
//! interleavings of messages, crashes and restarts.
//!
//! # Life of a node
//!
//! ```text
//!  start ─▶ Forming ── formed ──▶ Restoring ── Restored ──▶ Running
//!             ▲                                               │ a member lost (resilient),
//!             └──────────── recover: tear down, new generation ◀┘ Reform, initializer lost
//! ```
//!
//! Recovery rolls the whole cluster back: every link of the formation is
//! torn down, the cluster forms again under a new generation, and every
//! worker restores the last checkpoint the initializer's commit log names
//! (`rollback_to`). The initializer reports the cluster running (status,
//! and the ready lines the first time) once every worker restored; only then
//! do checkpoints begin again.
//!
//! # Restore
//!
//! Every formation restores the same way, whether the membership changed
//! or not. Each worker loads its own part of `rollback_to` (if it wrote
//! one: a worker that joined after that checkpoint did not), keeps the
//! entries of the key groups it owns under the new membership and hands
//! every other entry to its owner over the data links, then says "done"
//! to every peer ([`NodeAction::Load`], [`NodeEvent::Loaded`]). Once its
//! own image is loaded and every peer's handoff is done
//! ([`NodeEvent::HandoffDone`]), it installs the result
//! ([`NodeAction::Restore`]). Each key's state therefore comes from the
//! one worker whose part held it and ends on the one worker that owns it.
//! A restore that moved state makes the next part a full one, so no part
//! chain mixes key groups of two memberships.
//!
//! No worker takes source input until every member restored: the
//! initializer, once it has every `Restored`, tells them all
//! (`Control::AllRestored`). A worker's restore includes its sinks'
//! recovery, which sends again the output a previous run left in doubt
//! (a Kafka transaction that did not commit); a key that moved must not
//! get output from its new owner before that, or its output would reach
//! the sink out of order.
//!
//! # Growing
//!
//! A worker started with `--join` becomes a member (see
//! [`crate::membership::initializer`]). If the cluster is formed, the
//! initializer first pauses it: every worker takes no more source input
//! (`Control::Pause`), a checkpoint begins at once, and when it commits the
//! cluster re-forms with the joiner and rolls back to it, so nothing is
//! replayed and nothing is lost (if that checkpoint fails, the re-formation
//! rolls back to the last one that committed). The initializer records the
//! workers that joined, with the checkpoint each first formation of theirs
//! rolled back to, durably ([`NodeAction::RecordMembership`]) before
//! welcoming them. A joined worker wrote a part of every checkpoint after
//! that one, and of none before: `Welcome` tells each worker whether it
//! holds a part of `rollback_to`.
//!
//! # Placement
//!
//! Which member owns each key group is decided by the initializer for each
//! formation and sent in `Welcome` (see [`crate::placement`]): the even
//! split at first, then load-aware on a grow or a shrink, and when the
//! load stays uneven (`rebalance_interval`). Every worker reports the keyed
//! messages it processed per key group with each checkpoint part
//! (`Control::Load`, before `CheckpointDone`); the initializer checks the
//! sum at each commit, and a rebalance is a membership change without new
//! members: pause, checkpoint, re-form with the new placement. The
//! placement is recorded with the membership before anyone hears of it.
//!
//! # Invariants
//!
//! - Generations only grow, on every node, across restarts of the
//!   initializer too (it records each one durably before it is used).
//! - Data, barriers and checkpoint messages of another generation are
//!   dropped; data of the current generation that arrives before this node
//!   restored is held until it has, then handed out in arrival order.
//! - Source input is taken only while running, not aligning a barrier,
//!   and once every member of the generation restored.
//! - A rollback always lands on a committed checkpoint (or the beginning,
//!   if none was ever committed).

use crate::checkpoint::coordinator::{Coordinator, CoordinatorAction, CoordinatorEvent};
use crate::checkpoint::participant::{Participant, ParticipantAction, ParticipantEvent};
use crate::checkpoint::CheckpointId;
use crate::key_group::{KeyGroupMap, KEY_GROUPS};
use crate::membership::initializer::{
    FormationRules, InitializerAction, InitializerEvent, InitializerMembership,
};
use crate::membership::joiner::{JoinerAction, JoinerEvent, JoinerMembership, Welcomed};
use crate::membership::{Generation, LinkId};
use crate::placement::{self, KeyGroupLoad};
use crate::wire::{Control, Member};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// How a worker takes part in the cluster (from its command line).
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub initializer: bool,
    pub worker_count: usize,
    /// The application's topology fingerprint: every worker must run the same.
    pub fingerprint: u64,
    pub resilient: bool,
    /// The initializer's data address as the others reach it.
    pub data_addr: String,
    /// Where this worker's sources accept clients (`Member::sources`).
    pub sources: Vec<(String, String)>,
    pub checkpoint_interval: Duration,
    pub checkpoint_timeout: Duration,
    /// Initializer: why a worker may not join (`--join`), if it may not.
    pub grow_refusal: Option<String>,
    /// How long a formation step may wait on peers before starting over.
    pub step_timeout: Duration,
    /// How long a joiner waits before connecting again after a failed attempt.
    pub retry_after: Duration,
    /// How long a joiner keeps trying while its name is held by a connection
    /// the initializer has not seen close (more than the heartbeat timeout).
    pub refusal_patience: Duration,
    /// Initializer: how long the cluster runs between checks of its load
    /// balance (None: key groups move only when the membership changes).
    pub rebalance_interval: Option<Duration>,
}

/// What a starting worker found on disk.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// The initializer's commit log: the last committed checkpoint.
    pub last_committed: Option<CheckpointId>,
    /// The initializer's commit log: the newest generation recorded.
    pub generation: Generation,
    /// This worker found resilience files of its own.
    pub has_files: bool,
    /// The initializer's membership record.
    pub membership: MembershipRecord,
}

/// How the membership changed since the cluster first formed, as the
/// initializer records it durably.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MembershipRecord {
    /// Workers that joined, in joining order.
    pub joined: Vec<JoinedMember>,
    /// Workers leaving: members that own no key groups and hand their
    /// state to the others until a checkpoint without them commits.
    pub leaving: Vec<String>,
    /// Workers that left.
    pub left: Vec<String>,
    /// How many workers the cluster has (with the joined, without the
    /// left; a worker that left and joined again counts once). Absent
    /// until the membership first changes: the command line's count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_count: Option<usize>,
    /// Which worker owns each key group, as runs in key-group order.
    /// Empty until the placement first changes: the even split.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placement: Vec<PlacementRun>,
}

/// `groups` consecutive key groups owned by `worker`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlacementRun {
    pub worker: String,
    pub groups: u32,
}

/// A worker that joined the cluster after it first formed, as the
/// initializer records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JoinedMember {
    pub name: String,
    /// The checkpoint its first formation rolled back to: it wrote a part
    /// of every later checkpoint, of none up to this one.
    pub after: Option<CheckpointId>,
}

impl JoinedMember {
    fn wrote(&self, checkpoint: CheckpointId) -> bool {
        self.after.is_none_or(|a| a < checkpoint)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeEvent {
    /// Time passed (see [`Node::next_deadline`]).
    Tick,
    /// A joiner's connection to the initializer is up.
    Connected { link: LinkId },
    /// A control message arrived on `link`.
    Control { link: LinkId, msg: Control },
    /// A control link closed, failed, or went silent past the heartbeat
    /// timeout.
    LinkClosed { link: LinkId, why: String },
    /// This worker's data links of `generation` are up both ways.
    DataLinksUp { generation: Generation },
    /// Barrier `id` arrived on the data link from member `from`.
    Barrier {
        from: usize,
        generation: Generation,
        id: CheckpointId,
    },
    /// The binding loaded what [`NodeAction::Load`] asked for, from
    /// `files_read` part files, and handed the entries it does not own to
    /// their owners (`moved`: there were some).
    Loaded {
        generation: Generation,
        files_read: usize,
        moved: bool,
    },
    /// Member `from` has handed over everything of its image that this
    /// worker owns (`moved`: some peer has handed this worker state).
    HandoffDone {
        from: usize,
        generation: Generation,
        moved: bool,
    },
    /// The binding restored what [`NodeAction::Restore`] asked for.
    Restored { generation: Generation },
    /// This worker's part of `id` is durable, or failed; `load`: the keyed
    /// messages it processed since its last part.
    PartWritten {
        generation: Generation,
        id: CheckpointId,
        result: Result<(), String>,
        load: KeyGroupLoad,
    },
    /// The initializer's commit record of `id` is durable, or failed.
    CommitRecorded {
        generation: Generation,
        id: CheckpointId,
        result: Result<(), String>,
    },
}

/// Why a worker must stop.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NodeFatal {
    #[error("{0}")]
    Refused(String),
    #[error(
        "the initializer runs {} resilience but this worker {} --run-with-resilience; start every worker with the same flags",
        if *.initializer_resilient { "with" } else { "without" },
        if *.initializer_resilient { "lacks" } else { "has" }
    )]
    ResilienceMismatch { initializer_resilient: bool },
    #[error(
        "the cluster rolls back to checkpoint {checkpoint} but this worker has no resilience files"
    )]
    NoFilesForRollback { checkpoint: CheckpointId },
}

/// Things worth telling the operator.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    WaitingForWorkers {
        more: usize,
    },
    Joined {
        name: String,
        joined: usize,
        expected: usize,
    },
    FormationInterrupted {
        reason: String,
    },
    WorkerLost {
        name: String,
        why: String,
    },
    /// Without resilience a lost worker can't be replaced.
    NoRecovery {
        name: String,
    },
    RollingBack {
        reason: String,
    },
    /// A worker joins the running cluster.
    Growing {
        name: String,
    },
    /// Joiners wait for `more` others of their batch before joining.
    WaitingForJoiners {
        more: usize,
    },
    /// Workers begin to leave the cluster (shrink).
    Shrinking {
        names: Vec<String>,
    },
    /// Workers have left the cluster.
    Left {
        names: Vec<String>,
    },
    /// `name` had left the cluster and restarted with its files: it was
    /// told to leave again.
    Dismissed {
        name: String,
    },
    /// Key groups move to even the load: the busiest worker carries
    /// `before` times the mean load, `after` once `moved` groups moved.
    Rebalancing {
        before: f64,
        after: f64,
        moved: usize,
    },
    /// Files were found, but no checkpoint was ever committed.
    StartingFresh,
    CheckpointAbandoned {
        id: CheckpointId,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeAction<P, D> {
    /// Connect to the initializer after `after`, retrying until it answers;
    /// report [`NodeEvent::Connected`].
    Connect {
        after: Duration,
    },
    /// Send `Join` (with this worker's name, data address, fingerprint).
    SendJoin {
        link: LinkId,
        has_files: bool,
    },
    /// The initializer is at `to` (a member redirected this joiner):
    /// connect there from now on.
    Redirect {
        to: String,
    },
    Send {
        link: LinkId,
        msg: Control,
    },
    /// Send `Refused { reason, retry }` on `link`, then close it.
    Refuse {
        link: LinkId,
        reason: String,
        retry: bool,
    },
    Close {
        link: LinkId,
    },
    /// Durably record that `generation` is in use, before anyone hears of it.
    RecordGeneration {
        generation: Generation,
    },
    /// Durably record the membership's changes, before anyone hears of them.
    RecordMembership {
        record: MembershipRecord,
    },
    /// This worker has left the cluster (shrink): stop, exit 0.
    Leave,
    /// Open a data link to every other member and accept one from each;
    /// report [`NodeEvent::DataLinksUp`].
    OpenDataLinks {
        members: Vec<Member>,
        me: usize,
        generation: Generation,
    },
    /// Close every link of the formation; the initializer first tells every
    /// member to re-form (`reform`).
    TearDown {
        reform: Option<String>,
        /// Links to keep open (joiners waiting for the next formation).
        keep: Vec<LinkId>,
    },
    /// The cluster is formed: route by `placement` (the `leaving` members
    /// own no key groups).
    Formed {
        members: Vec<Member>,
        me: usize,
        generation: Generation,
        leaving: Vec<String>,
        placement: KeyGroupMap,
    },
    /// Load this worker's part of `checkpoint` (None: the empty image),
    /// send every entry of a key group another member owns to it, and then
    /// an end of handoff to every member; report [`NodeEvent::Loaded`].
    Load {
        generation: Generation,
        checkpoint: Option<CheckpointId>,
    },
    /// Restore state (the loaded image and what was handed over), sinks
    /// and sources to `checkpoint` (None: the beginning); report
    /// [`NodeEvent::Restored`].
    Restore {
        generation: Generation,
        checkpoint: Option<CheckpointId>,
    },
    /// The cluster is processing (every worker restored); `announce` the
    /// first time.
    Running {
        announce: bool,
    },
    /// Process data or a barrier that arrived before this worker restored.
    Release {
        from: usize,
        data: D,
    },
    /// A step of this worker's checkpoint participation.
    Checkpoint(ParticipantAction<P, D>),
    /// Append "`id` committed" to the commit log durably; report
    /// [`NodeEvent::CommitRecorded`].
    RecordCommit {
        id: CheckpointId,
        generation: Generation,
    },
    Notice(Notice),
    Fatal(NodeFatal),
}

enum Role {
    Initializer(InitializerMembership),
    Joiner(JoinerMembership),
}

#[derive(Debug, PartialEq)]
enum Phase {
    Forming,
    Restoring,
    Running,
    Stopped,
}

/// What arrived before this worker restored.
enum Early<D> {
    Data(usize, D),
    Barrier(usize, CheckpointId),
}

/// One worker's coordination state machine; `P` is the sources' positions,
/// `D` a batch of data from a peer.
pub struct Node<P, D> {
    config: NodeConfig,
    role: Role,
    coordinator: Option<Coordinator>,
    participant: Option<Participant<P, D>>,
    recovered: Recovered,
    generation: Generation,
    phase: Phase,
    members: Vec<Member>,
    me: usize,
    /// Initializer: the control link of each member (index 0 unused).
    member_links: Vec<LinkId>,
    rollback_to: Option<CheckpointId>,
    first_formation: bool,
    announced: bool,
    early: Vec<Early<D>>,
    /// Initializer: members whose `Restored` has not come yet.
    awaiting_restored: BTreeSet<usize>,
    /// Initializer: a formation waits for the commit record under way.
    awaiting_record: bool,
    /// Restoring: the own image is loaded (`files_read`, `moved`).
    loaded: Option<(usize, bool)>,
    /// Restoring (and before, in this generation): the members whose
    /// handoff is done.
    handed: BTreeSet<usize>,
    /// Some handoff to this worker carried state.
    moved_in: bool,
    /// Initializer: the membership's changes (joined workers with their
    /// first rollback point, leaving and left ones); and the joined
    /// workers whose first formation has not begun yet.
    record: MembershipRecord,
    unplaced: Vec<String>,
    /// Initializer: the membership changes; the cluster re-forms once
    /// the change's checkpoint (the first begun after the pause) ends.
    change: Option<Change>,
    /// No source input until the cluster re-forms (the membership changes).
    paused: bool,
    /// Every member restored this generation (`Control::AllRestored`);
    /// no source input and no window timers before (see "Restore" above).
    all_restored: bool,
    /// The members leaving the cluster (they own no key groups).
    leaving: Vec<String>,
    /// The formed cluster's placement of key groups on `members`.
    placement: Option<KeyGroupMap>,
    /// Initializer: the placement decided for the formation under way.
    next_placement: Option<(Generation, KeyGroupMap)>,
    /// Initializer: the cluster's keyed messages per key group since it
    /// last began running (at `window_start`).
    load: KeyGroupLoad,
    window_start: Option<Instant>,
}

/// A membership change waiting for its checkpoint.
struct Change {
    reason: String,
    checkpoint: Option<CheckpointId>,
    /// The leaving workers' state is checkpointed without them: they go.
    depart: bool,
}

/// Why a shrink request is refused (external channel type 6).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ShrinkRefused(pub String);

type Out<P, D> = Vec<NodeAction<P, D>>;

impl<P, D> Node<P, D> {
    pub fn new(config: NodeConfig, recovered: Recovered) -> Self {
        let role = if config.initializer {
            Role::Initializer(InitializerMembership::new(
                FormationRules {
                    name: config.name.clone(),
                    data_addr: config.data_addr.clone(),
                    sources: config.sources.clone(),
                    worker_count: config.worker_count.max(1),
                    fingerprint: config.fingerprint,
                    resilient: config.resilient,
                    step_timeout: config.step_timeout,
                    grow_refusal: config.grow_refusal.clone(),
                },
                recovered
                    .membership
                    .joined
                    .iter()
                    .map(|j| j.name.clone())
                    .collect(),
                recovered.membership.left.clone(),
                recovered.membership.worker_count,
            ))
        } else {
            Role::Joiner(JoinerMembership::new(
                config.name.clone(),
                config.step_timeout,
                config.retry_after,
                config.refusal_patience,
            ))
        };
        let coordinator = (config.resilient && config.initializer).then(|| {
            Coordinator::new(
                config.checkpoint_interval,
                config.checkpoint_timeout,
                recovered.last_committed,
            )
        });
        let participant = config.resilient.then(Participant::new);
        let record = recovered.membership.clone();
        Node {
            config,
            role,
            coordinator,
            participant,
            recovered,
            generation: 0,
            phase: Phase::Forming,
            members: Vec::new(),
            me: 0,
            member_links: Vec::new(),
            rollback_to: None,
            first_formation: true,
            announced: false,
            early: Vec::new(),
            awaiting_restored: BTreeSet::new(),
            awaiting_record: false,
            loaded: None,
            handed: BTreeSet::new(),
            moved_in: false,
            record,
            unplaced: Vec::new(),
            change: None,
            paused: false,
            all_restored: false,
            leaving: Vec::new(),
            placement: None,
            next_placement: None,
            load: KeyGroupLoad::default(),
            window_start: None,
        }
    }

    pub fn generation(&self) -> Generation {
        self.generation
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Take source input now?
    pub fn takes_input(&self) -> bool {
        self.cluster_restored()
            && !self.paused
            && !self.leaving.contains(&self.config.name)
            && !self.participant.as_ref().is_some_and(|p| p.aligning())
    }

    /// True once every member of this generation restored (this worker
    /// included): window timers may fire. Before, a window of a key that
    /// moved could fire ahead of the output its old owner re-sends.
    pub fn cluster_restored(&self) -> bool {
        self.phase == Phase::Running && self.all_restored
    }

    /// True once this worker has restored and processes (it may still be
    /// aligning a barrier).
    pub fn running(&self) -> bool {
        self.phase == Phase::Running
    }

    /// The checkpoint the initializer's coordinator has in flight.
    pub fn checkpoint_in_flight(&self) -> Option<CheckpointId> {
        self.coordinator.as_ref().and_then(|c| c.in_flight())
    }

    /// The last committed checkpoint this worker knows of.
    pub fn last_committed(&self) -> Option<CheckpointId> {
        self.participant.as_ref().and_then(|p| p.last_committed())
    }

    /// When the next [`NodeEvent::Tick`] is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        let formation = match &self.role {
            Role::Initializer(m) => m.deadline(),
            Role::Joiner(m) => m.deadline(),
        };
        let checkpoint = self.coordinator.as_ref().and_then(|c| c.next_deadline());
        formation.into_iter().chain(checkpoint).min()
    }

    /// Starts the worker's part of the cluster.
    pub fn start(&mut self, now: Instant, out: &mut Out<P, D>) {
        self.form(now, out);
    }

    /// Data from member `from`, sent under `generation`: `Some` to process
    /// now; `None` if it is stale (dropped) or held.
    pub fn on_data(&mut self, from: usize, generation: Generation, data: D) -> Option<D> {
        if generation != self.generation {
            return None;
        }
        match self.phase {
            Phase::Running => match &mut self.participant {
                Some(p) => p.on_data(from, data),
                None => Some(data),
            },
            Phase::Forming | Phase::Restoring => {
                self.early.push(Early::Data(from, data));
                None
            }
            Phase::Stopped => None,
        }
    }

    /// Handles one event; `positions` reads the sources' positions when a
    /// checkpoint begins on this worker.
    pub fn handle(
        &mut self,
        event: NodeEvent,
        now: Instant,
        positions: &mut dyn FnMut() -> P,
        out: &mut Out<P, D>,
    ) {
        if self.phase == Phase::Stopped {
            return;
        }
        match event {
            NodeEvent::Tick => {
                self.membership_event(MembershipEvent::Tick, now, out);
                self.coordinator_event(CoordinatorEvent::Tick { now }, now, positions, out);
            }
            NodeEvent::Connected { link } => {
                self.membership_event(MembershipEvent::Connected(link), now, out)
            }
            NodeEvent::Control { link, msg } => self.on_control(link, msg, now, positions, out),
            NodeEvent::LinkClosed { link, why } => {
                self.membership_event(MembershipEvent::Closed(link, why), now, out)
            }
            NodeEvent::DataLinksUp { generation } => {
                self.membership_event(MembershipEvent::OwnLinksUp(generation), now, out)
            }
            NodeEvent::Barrier {
                from,
                generation,
                id,
            } => {
                if generation != self.generation {
                    return;
                }
                match self.phase {
                    Phase::Running => self.participant_event(
                        ParticipantEvent::Barrier { from, id },
                        now,
                        positions,
                        out,
                    ),
                    Phase::Forming | Phase::Restoring => self.early.push(Early::Barrier(from, id)),
                    Phase::Stopped => {}
                }
            }
            NodeEvent::Loaded {
                generation,
                files_read,
                moved,
            } => {
                if generation == self.generation && self.phase == Phase::Restoring {
                    self.loaded = Some((files_read, moved));
                    self.maybe_restore(out);
                }
            }
            NodeEvent::HandoffDone {
                from,
                generation,
                moved,
            } => {
                if generation == self.generation && self.phase != Phase::Running {
                    self.handed.insert(from);
                    self.moved_in |= moved;
                    self.maybe_restore(out);
                }
            }
            NodeEvent::Restored { generation } => {
                if generation == self.generation && self.phase == Phase::Restoring {
                    self.restored(now, positions, out);
                }
            }
            NodeEvent::PartWritten {
                generation,
                id,
                result,
                load,
            } => {
                if generation == self.generation {
                    if result.is_ok() && self.phase == Phase::Running {
                        self.report_load(load, out);
                    }
                    self.participant_event(
                        ParticipantEvent::PartWritten { id, result },
                        now,
                        positions,
                        out,
                    );
                }
            }
            NodeEvent::CommitRecorded {
                generation,
                id,
                result,
            } => {
                let e = CoordinatorEvent::CommitRecorded {
                    id,
                    generation,
                    result,
                    now,
                };
                self.coordinator_event(e, now, positions, out);
                if std::mem::take(&mut self.awaiting_record) {
                    self.form(now, out);
                }
            }
        }
    }

    // ---- formation and recovery

    /// Starts a formation: the initializer under a new generation, a joiner
    /// by connecting.
    fn form(&mut self, now: Instant, out: &mut Out<P, D>) {
        self.phase = Phase::Forming;
        self.early.clear();
        self.clear_handoffs();
        self.change = None;
        if let Role::Joiner(m) = &mut self.role {
            let mut actions = Vec::new();
            m.join(Duration::ZERO, &mut actions);
            self.joiner_actions(actions, now, out);
            return;
        }
        if self.coordinator.as_ref().is_some_and(|c| c.recording()) {
            // The rollback point waits for the commit record under way (see
            // `handle`'s `CommitRecorded`).
            self.awaiting_record = true;
            return;
        }
        self.generation = self.generation.max(self.recovered.generation) + 1;
        if self.config.resilient {
            out.push(NodeAction::RecordGeneration {
                generation: self.generation,
            });
        }
        self.rollback_to = self.coordinator.as_ref().and_then(|c| c.last_committed());
        let unplaced = std::mem::take(&mut self.unplaced);
        self.place_joined(unplaced, out);
        let mut actions = Vec::new();
        if let Role::Initializer(m) = &mut self.role {
            m.gather(self.generation, now, &mut actions);
        }
        self.initializer_actions(actions, now, out);
    }

    /// Rolls the whole cluster back (see the module doc).
    fn recover(&mut self, reason: String, now: Instant, out: &mut Out<P, D>) {
        out.push(NodeAction::Notice(Notice::RollingBack {
            reason: reason.clone(),
        }));
        let reform = self.config.initializer.then_some(reason);
        let keep = self.waiting();
        out.push(NodeAction::TearDown { reform, keep });
        if let Some(c) = &mut self.coordinator {
            c.stop();
        }
        self.form(now, out);
    }

    /// Initializer: `names` joined; their first formation rolls back to
    /// `rollback_to`. Recorded durably before anyone hears of it.
    fn place_joined(&mut self, names: Vec<String>, out: &mut Out<P, D>) {
        if names.is_empty() {
            return;
        }
        let after = self.rollback_to;
        for name in names {
            self.record.joined.retain(|j| j.name != name);
            self.record.left.retain(|l| *l != name);
            self.record.joined.push(JoinedMember { name, after });
        }
        self.record_membership(out);
    }

    /// Initializer: records the membership durably (before anyone hears
    /// of the change), with the count of workers it describes.
    fn record_membership(&mut self, out: &mut Out<P, D>) {
        if let Role::Initializer(m) = &self.role {
            // Joiners not placed yet are not in the record.
            self.record.worker_count = Some(m.worker_count() - self.unplaced.len());
        }
        out.push(NodeAction::RecordMembership {
            record: self.record.clone(),
        });
    }

    /// Initializer: the links of joiners waiting for the next formation.
    fn waiting(&self) -> Vec<LinkId> {
        match &self.role {
            Role::Initializer(m) => m.waiting(),
            Role::Joiner(_) => Vec::new(),
        }
    }

    fn clear_handoffs(&mut self) {
        self.loaded = None;
        self.handed.clear();
        self.moved_in = false;
    }

    /// Does member `name` hold a part of `checkpoint`?
    fn wrote(&self, name: &str, checkpoint: Option<CheckpointId>) -> bool {
        checkpoint.is_some_and(|c| {
            self.record
                .joined
                .iter()
                .find(|j| j.name == name)
                .is_none_or(|j| j.wrote(c))
        })
    }

    fn formed(&mut self, formation: Welcomed, out: &mut Out<P, D>) {
        let Welcomed {
            members,
            me,
            generation,
            rollback_to,
            has_part,
            leaving,
            placement,
            ..
        } = formation;
        if self.config.resilient {
            let has_files = self.recovered.has_files || !self.first_formation;
            if let (Some(checkpoint), true, false) = (rollback_to, has_part, has_files) {
                self.fail(NodeFatal::NoFilesForRollback { checkpoint }, out);
                return;
            }
            if self.first_formation && self.recovered.has_files && rollback_to.is_none() {
                out.push(NodeAction::Notice(Notice::StartingFresh));
            }
        }
        self.generation = generation;
        self.rollback_to = rollback_to;
        self.paused = false;
        self.all_restored = false;
        self.leaving = leaving.clone();
        // The others may restore before this worker: their handoffs to it
        // are done before its own is.
        self.awaiting_restored = (1..members.len()).collect();
        self.members = members.clone();
        self.me = me;
        self.first_formation = false;
        self.phase = Phase::Restoring;
        self.placement = Some(placement.clone());
        self.load = KeyGroupLoad::default();
        self.window_start = None;
        out.push(NodeAction::Formed {
            members,
            me,
            generation,
            leaving,
            placement,
        });
        out.push(NodeAction::Load {
            generation,
            checkpoint: rollback_to.filter(|_| has_part),
        });
    }

    /// With the own image loaded and every peer's handoff done: restore.
    fn maybe_restore(&mut self, out: &mut Out<P, D>) {
        if self.phase != Phase::Restoring || self.loaded.is_none() {
            return;
        }
        if self.handed.len() + 1 < self.members.len() {
            return;
        }
        out.push(NodeAction::Restore {
            generation: self.generation,
            checkpoint: self.rollback_to,
        });
    }

    fn restored(&mut self, now: Instant, positions: &mut dyn FnMut() -> P, out: &mut Out<P, D>) {
        let (files_read, moved_out) = self.loaded.unwrap_or((0, false));
        let moved = moved_out || self.moved_in;
        self.clear_handoffs();
        if let Some(p) = &mut self.participant {
            p.restored(
                self.me,
                self.members.len(),
                self.rollback_to,
                files_read,
                moved,
            );
        }
        self.phase = Phase::Running;
        for early in std::mem::take(&mut self.early) {
            match early {
                Early::Data(from, data) => match &mut self.participant {
                    Some(p) => {
                        if let Some(data) = p.on_data(from, data) {
                            out.push(NodeAction::Release { from, data });
                        }
                    }
                    None => out.push(NodeAction::Release { from, data }),
                },
                Early::Barrier(from, id) => self.participant_event(
                    ParticipantEvent::Barrier { from, id },
                    now,
                    positions,
                    out,
                ),
            }
        }
        match &self.role {
            Role::Joiner(m) => {
                if let Some(link) = m.link() {
                    out.push(NodeAction::Send {
                        link,
                        msg: Control::Restored {
                            generation: self.generation,
                        },
                    });
                }
                self.announce(out);
            }
            Role::Initializer(_) => self.maybe_all_restored(now, out),
        }
    }

    /// The membership changes: no more input anywhere, a checkpoint now,
    /// and the re-formation once it ends (see "Growing" and "Shrinking").
    fn pause_for(&mut self, reason: String, depart: bool, now: Instant, out: &mut Out<P, D>) {
        self.paused = true;
        self.broadcast(
            Control::Pause {
                generation: self.generation,
            },
            out,
        );
        self.change = Some(Change {
            reason,
            checkpoint: None,
            depart,
        });
        if let Some(c) = &mut self.coordinator {
            c.hurry(now);
        }
    }

    /// The checkpoint a membership change waits for ended (`id`, committed
    /// or not): the leavers go if it committed, and the cluster re-forms.
    fn maybe_change(
        &mut self,
        id: CheckpointId,
        committed: bool,
        now: Instant,
        out: &mut Out<P, D>,
    ) {
        let Some(change) = self.change.take_if(|c| c.checkpoint == Some(id)) else {
            return;
        };
        if change.depart && committed {
            // Recorded before anyone is told: an initializer killed between
            // the two must not restart waiting for a worker that left. (A
            // leaver not yet told, coming back to a restarted initializer
            // that has it as left, is told then: `InitializerAction::Dismiss`.)
            let gone = std::mem::take(&mut self.record.leaving);
            if let Role::Initializer(m) = &mut self.role {
                m.leave(&gone);
            }
            self.record.left.extend(gone.iter().cloned());
            self.record_membership(out);
            for (i, m) in self.members.iter().enumerate().skip(1) {
                if gone.contains(&m.name) {
                    let link = self.member_links[i];
                    let generation = self.generation;
                    out.push(NodeAction::Send {
                        link,
                        msg: Control::Leave { generation },
                    });
                }
            }
            out.push(NodeAction::Notice(Notice::Left { names: gone }));
        }
        self.recover(change.reason, now, out);
    }

    /// Initializer: the external channel's shrink request (Wallaroo's type
    /// 4). A query returns the workers that may leave; otherwise the named
    /// workers (or the last `count` by name) begin to leave, and are
    /// returned. Only the initializer stays out of both.
    pub fn shrink(
        &mut self,
        query: bool,
        names: &[String],
        count: usize,
        now: Instant,
        out: &mut Out<P, D>,
    ) -> Result<Vec<String>, ShrinkRefused> {
        let refuse = |why: String| Err(ShrinkRefused(why));
        if !self.config.initializer {
            return refuse(
                "send shrink requests to the initializer's external channel (--external of the \
                 worker started with --cluster-initializer)"
                    .into(),
            );
        }
        if !self.config.resilient {
            return refuse(
                "shrinking a running cluster needs --run-with-resilience on every worker (the \
                 leaving workers' state moves through a checkpoint)"
                    .into(),
            );
        }
        let candidates: Vec<String> = self
            .members
            .iter()
            .skip(1)
            .map(|m| m.name.clone())
            .collect();
        if query {
            return Ok(candidates);
        }
        if self.phase != Phase::Running || self.change.is_some() || !self.leaving.is_empty() {
            return refuse(
                "the cluster is changing (a join, a shrink or a recovery is under way); ask again \
                 once it runs"
                    .into(),
            );
        }
        let leaving: Vec<String> = if names.is_empty() {
            if count == 0 || count > candidates.len() {
                return refuse(format!(
                    "can't remove {count} of the {} workers: the initializer stays, so at most {} \
                     may leave",
                    self.members.len(),
                    candidates.len()
                ));
            }
            candidates[candidates.len() - count..].to_vec()
        } else {
            let mut seen = BTreeSet::new();
            for n in names {
                if *n == self.config.name {
                    return refuse(format!(
                        "'{n}' is the initializer, which coordinates the cluster and can't leave"
                    ));
                }
                if !candidates.contains(n) {
                    return refuse(format!(
                        "no worker named '{n}' (the workers: {})",
                        self.members
                            .iter()
                            .map(|m| m.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                if !seen.insert(n.clone()) {
                    return refuse(format!("'{n}' is named twice"));
                }
            }
            names.to_vec()
        };
        self.record.leaving = leaving.clone();
        self.record_membership(out);
        out.push(NodeAction::Notice(Notice::Shrinking {
            names: leaving.clone(),
        }));
        let reason = format!("worker(s) {} leave", leaving.join(", "));
        self.pause_for(reason, false, now, out);
        Ok(leaving)
    }

    /// Initializer: the placement of the formation of `generation` over
    /// `members`, decided once (see [`crate::placement`]) and recorded
    /// before any member hears of it if it differs from the recorded one.
    fn placement_for(
        &mut self,
        generation: Generation,
        members: &[Member],
        out: &mut Out<P, D>,
    ) -> KeyGroupMap {
        if let Some((g, map)) = &self.next_placement {
            if *g == generation {
                return map.clone();
            }
        }
        let eligible: Vec<usize> = (0..members.len())
            .filter(|&i| !self.record.leaving.contains(&members[i].name))
            .collect();
        let previous = self.previous_placement(members);
        let map = placement::place(previous.as_deref(), &eligible, &self.load);
        let runs = named_runs(&map, members);
        let changed = previous.as_ref().is_some_and(|p| {
            p.iter()
                .zip(map.owners())
                .any(|(was, is)| *was != Some(*is))
        });
        if changed && runs != self.record.placement {
            self.record.placement = runs;
            self.record_membership(out);
        }
        self.next_placement = Some((generation, map.clone()));
        map
    }

    /// The placement in force, as each key group's owner's index in
    /// `members` (None: not a member): the recorded one, else the last
    /// formation's; None if there is neither (the even split).
    fn previous_placement(&self, members: &[Member]) -> Option<Vec<Option<usize>>> {
        let index = |name: &str| members.iter().position(|m| m.name == name);
        if !self.record.placement.is_empty() {
            let owners: Vec<Option<usize>> = self
                .record
                .placement
                .iter()
                .flat_map(|run| std::iter::repeat_n(index(&run.worker), run.groups as usize))
                .collect();
            // A record that does not cover the key groups is not used.
            return (owners.len() == KEY_GROUPS as usize).then_some(owners);
        }
        let map = self.placement.as_ref()?;
        Some(
            map.owners()
                .iter()
                .map(|&o| self.members.get(o).and_then(|m| index(&m.name)))
                .collect(),
        )
    }

    /// This worker's part is durable: its load goes to the
    /// initializer (before `CheckpointDone`, so the commit sees it).
    fn report_load(&mut self, load: KeyGroupLoad, out: &mut Out<P, D>) {
        match &self.role {
            Role::Initializer(_) => self.load.merge(&load),
            Role::Joiner(m) => {
                let counts = load.sparse();
                if let (Some(link), false) = (m.link(), counts.is_empty()) {
                    let generation = self.generation;
                    out.push(NodeAction::Send {
                        link,
                        msg: Control::Load { generation, counts },
                    });
                }
            }
        }
    }

    /// Initializer, at a commit: once the cluster has run for the
    /// rebalance interval, re-form with a better placement if the load is
    /// uneven enough (see [`crate::placement`]); the load window starts
    /// again either way.
    fn maybe_rebalance(&mut self, now: Instant, out: &mut Out<P, D>) {
        let Some(interval) = self.config.rebalance_interval else {
            return;
        };
        if self.phase != Phase::Running || self.change.is_some() || !self.leaving.is_empty() {
            return;
        }
        if self.window_start.is_none_or(|t| now < t + interval) {
            return;
        }
        let Some(map) = &self.placement else { return };
        let load = self.load.take();
        self.window_start = Some(now);
        let eligible: Vec<usize> = (0..self.members.len()).collect();
        let Some(next) = placement::rebalance(map, &eligible, &load) else {
            return;
        };
        let before = placement::imbalance(map, &eligible, &load);
        let after = placement::imbalance(&next, &eligible, &load);
        let moved = (map.owners().iter().zip(next.owners()))
            .filter(|(a, b)| a != b)
            .count();
        self.record.placement = named_runs(&next, &self.members);
        self.record_membership(out);
        out.push(NodeAction::Notice(Notice::Rebalancing {
            before,
            after,
            moved,
        }));
        let reason = format!(
            "rebalancing: {moved} key groups move (the busiest worker had {before:.2}x the mean load, {after:.2}x after)"
        );
        self.pause_for(reason, false, now, out);
    }

    fn maybe_all_restored(&mut self, now: Instant, out: &mut Out<P, D>) {
        if !self.awaiting_restored.is_empty() || self.phase != Phase::Running {
            return;
        }
        self.all_restored = true;
        self.broadcast(
            Control::AllRestored {
                generation: self.generation,
            },
            out,
        );
        if let Some(c) = &mut self.coordinator {
            c.start(self.generation, self.rollback_to, now);
        }
        self.window_start = Some(now);
        if !self.leaving.is_empty() && self.change.is_none() {
            // The leavers handed their state over: checkpoint it without
            // them, and let them go.
            let reason = format!("worker(s) {} left", self.leaving.join(", "));
            self.pause_for(reason, true, now, out);
        }
        self.announce(out);
    }

    fn announce(&mut self, out: &mut Out<P, D>) {
        out.push(NodeAction::Running {
            announce: !self.announced,
        });
        self.announced = true;
    }

    fn fail(&mut self, fatal: NodeFatal, out: &mut Out<P, D>) {
        self.phase = Phase::Stopped;
        out.push(NodeAction::Fatal(fatal));
    }

    // ---- control messages

    fn on_control(
        &mut self,
        link: LinkId,
        msg: Control,
        now: Instant,
        positions: &mut dyn FnMut() -> P,
        out: &mut Out<P, D>,
    ) {
        if let Role::Joiner(m) = &self.role {
            if m.link() != Some(link) {
                return;
            }
            match msg {
                Control::Checkpoint { id, generation } => {
                    if generation == self.generation && self.phase == Phase::Running {
                        self.participant_event(ParticipantEvent::Begin { id }, now, positions, out);
                    }
                }
                Control::Committed { id, generation } => {
                    if generation == self.generation {
                        self.participant_event(
                            ParticipantEvent::Committed { id },
                            now,
                            positions,
                            out,
                        );
                    }
                }
                Control::Pause { generation } => {
                    if generation == self.generation {
                        self.paused = true;
                    }
                }
                Control::AllRestored { generation } => {
                    if generation == self.generation {
                        self.all_restored = true;
                    }
                }
                // While forming, `Leave` answers this worker's `Join`: the
                // joiner machine takes it.
                Control::Leave { generation } if self.phase != Phase::Forming => {
                    if generation == self.generation {
                        self.phase = Phase::Stopped;
                        out.push(NodeAction::Leave);
                    }
                }
                Control::Abort { id, generation, .. } => {
                    if generation == self.generation {
                        self.participant_event(
                            ParticipantEvent::Aborted { id },
                            now,
                            positions,
                            out,
                        );
                    }
                }
                msg => self.membership_event(MembershipEvent::Message(link, msg), now, out),
            }
            return;
        }
        match msg {
            Control::Join {
                name,
                data_addr,
                sources,
                fingerprint,
                grow,
                batch,
                has_files,
                ..
            } => {
                let e = InitializerEvent::Join {
                    link,
                    name,
                    data_addr,
                    sources,
                    fingerprint,
                    grow,
                    batch: batch.max(1) as usize,
                    has_files,
                };
                self.membership_event(MembershipEvent::Initializer(e), now, out);
            }
            Control::LinksUp { .. } => self.membership_event(
                MembershipEvent::Initializer(InitializerEvent::LinksUp { link }),
                now,
                out,
            ),
            Control::Restored { generation } => {
                if generation != self.generation {
                    return;
                }
                if let Some(member) = self.member_of(link) {
                    self.awaiting_restored.remove(&member);
                    self.maybe_all_restored(now, out);
                }
            }
            Control::CheckpointDone {
                id,
                generation,
                error,
            } => {
                let Some(member) = self.member_of(link) else {
                    return;
                };
                let e = match error {
                    None => CoordinatorEvent::PartDone {
                        id,
                        generation,
                        member,
                    },
                    Some(e) => {
                        let reason = format!("worker '{}': {e}", self.members[member].name);
                        CoordinatorEvent::PartFailed {
                            id,
                            generation,
                            member,
                            reason,
                        }
                    }
                };
                self.coordinator_event(e, now, positions, out);
            }
            Control::Load { generation, counts }
                if generation == self.generation && self.member_of(link).is_some() =>
            {
                self.load.merge(&KeyGroupLoad::from_sparse(&counts));
            }
            _ => {}
        }
    }

    fn member_of(&self, link: LinkId) -> Option<usize> {
        self.member_links
            .iter()
            .position(|l| *l == link)
            .filter(|i| *i > 0)
    }

    // ---- the machines' actions

    fn membership_event(&mut self, event: MembershipEvent, now: Instant, out: &mut Out<P, D>) {
        match &mut self.role {
            Role::Initializer(m) => {
                let e = match event {
                    MembershipEvent::Tick => InitializerEvent::Tick { now },
                    MembershipEvent::Closed(link, why) => {
                        InitializerEvent::LinkClosed { link, why }
                    }
                    MembershipEvent::OwnLinksUp(generation) => {
                        InitializerEvent::OwnLinksUp { generation }
                    }
                    MembershipEvent::Initializer(e) => e,
                    MembershipEvent::Connected(_) | MembershipEvent::Message(..) => return,
                };
                let mut actions = Vec::new();
                m.handle(e, now, &mut actions);
                self.initializer_actions(actions, now, out);
            }
            Role::Joiner(m) => {
                let e = match event {
                    MembershipEvent::Tick => JoinerEvent::Tick { now },
                    MembershipEvent::Closed(link, why) => JoinerEvent::LinkClosed { link, why },
                    MembershipEvent::OwnLinksUp(generation) => {
                        JoinerEvent::OwnLinksUp { generation }
                    }
                    MembershipEvent::Connected(link) => JoinerEvent::Connected { link },
                    MembershipEvent::Message(link, msg) => JoinerEvent::Message { link, msg },
                    MembershipEvent::Initializer(_) => return,
                };
                let mut actions = Vec::new();
                m.handle(e, now, &mut actions);
                self.joiner_actions(actions, now, out);
            }
        }
    }

    fn initializer_actions(
        &mut self,
        actions: Vec<InitializerAction>,
        now: Instant,
        out: &mut Out<P, D>,
    ) {
        for a in actions {
            match a {
                InitializerAction::Waiting { more } => {
                    out.push(NodeAction::Notice(Notice::WaitingForWorkers { more }))
                }
                InitializerAction::Accepted {
                    name,
                    joined,
                    expected,
                    ..
                } => out.push(NodeAction::Notice(Notice::Joined {
                    name,
                    joined,
                    expected,
                })),
                InitializerAction::Refuse {
                    link,
                    reason,
                    retry,
                } => out.push(NodeAction::Refuse {
                    link,
                    reason,
                    retry,
                }),
                InitializerAction::Close { link } => out.push(NodeAction::Close { link }),
                InitializerAction::Dismiss { link, name } => {
                    out.push(NodeAction::Notice(Notice::Dismissed { name }));
                    let generation = self.generation;
                    out.push(NodeAction::Send {
                        link,
                        msg: Control::Leave { generation },
                    });
                    out.push(NodeAction::Close { link });
                }
                InitializerAction::Welcome {
                    link,
                    name,
                    members,
                    generation,
                } => {
                    let has_part = self.wrote(&name, self.rollback_to);
                    let placement = self.placement_for(generation, &members, out).runs();
                    let msg = Control::Welcome {
                        members,
                        generation,
                        rollback_to: self.rollback_to,
                        has_part,
                        leaving: self.record.leaving.clone(),
                        resilient: self.config.resilient,
                        placement,
                    };
                    out.push(NodeAction::Send { link, msg });
                }
                InitializerAction::OpenDataLinks {
                    members,
                    generation,
                } => {
                    if members.len() > 1 {
                        out.push(NodeAction::OpenDataLinks {
                            members,
                            me: 0,
                            generation,
                        });
                    }
                }
                InitializerAction::Start { link, generation } => out.push(NodeAction::Send {
                    link,
                    msg: Control::Start { generation },
                }),
                InitializerAction::Formed {
                    members,
                    links,
                    generation,
                } => {
                    self.member_links = std::iter::once(LinkId(u64::MAX)).chain(links).collect();
                    let placement = self.placement_for(generation, &members, out);
                    // The initializer formed every cluster: it wrote a part
                    // of every committed checkpoint.
                    let formation = Welcomed {
                        members,
                        me: 0,
                        generation,
                        rollback_to: self.rollback_to,
                        has_part: self.rollback_to.is_some(),
                        leaving: self.record.leaving.clone(),
                        resilient: self.config.resilient,
                        placement,
                    };
                    self.formed(formation, out);
                }
                InitializerAction::Interrupted { reason } => {
                    out.push(NodeAction::Notice(Notice::FormationInterrupted { reason }));
                    let keep = self.waiting();
                    out.push(NodeAction::TearDown { reform: None, keep });
                    self.form(now, out);
                    return;
                }
                InitializerAction::MemberLost { name, why, .. } => {
                    out.push(NodeAction::Notice(Notice::WorkerLost {
                        name: name.clone(),
                        why: why.clone(),
                    }));
                    if self.config.resilient {
                        self.recover(format!("lost worker '{name}': {why}"), now, out);
                        return;
                    }
                    out.push(NodeAction::Notice(Notice::NoRecovery { name }));
                }
                InitializerAction::Grow { name, formed, more } => {
                    out.push(NodeAction::Notice(Notice::Growing { name: name.clone() }));
                    if self.phase == Phase::Forming && !self.awaiting_record {
                        // The formation under way takes it: its rollback
                        // point is known.
                        self.place_joined(vec![name.clone()], out);
                    } else {
                        // Placed when the next formation begins (`form`).
                        self.unplaced.push(name.clone());
                    }
                    if formed && more > 0 {
                        out.push(NodeAction::Notice(Notice::WaitingForJoiners { more }));
                    } else if formed && self.change.is_none() {
                        self.pause_for(format!("worker '{name}' joins"), false, now, out);
                    }
                }
            }
        }
    }

    fn joiner_actions(&mut self, actions: Vec<JoinerAction>, now: Instant, out: &mut Out<P, D>) {
        for a in actions {
            match a {
                JoinerAction::Connect { after } => out.push(NodeAction::Connect { after }),
                JoinerAction::SendJoin { link } => {
                    let has_files = self.recovered.has_files || !self.first_formation;
                    out.push(NodeAction::SendJoin { link, has_files });
                }
                JoinerAction::OpenDataLinks {
                    members,
                    me,
                    generation,
                } => {
                    // Peers that start first may send data of this
                    // generation before `Start` reaches this worker: it is
                    // held, not dropped. What was held of an older
                    // generation (sent before the rollback) goes.
                    if generation != self.generation {
                        self.early.clear();
                        self.clear_handoffs();
                    }
                    self.generation = generation;
                    out.push(NodeAction::OpenDataLinks {
                        members,
                        me,
                        generation,
                    })
                }
                JoinerAction::Redirect { to } => out.push(NodeAction::Redirect { to }),
                JoinerAction::SendLinksUp { link } => out.push(NodeAction::Send {
                    link,
                    msg: Control::LinksUp {
                        name: self.config.name.clone(),
                    },
                }),
                JoinerAction::Close { link } => out.push(NodeAction::Close { link }),
                JoinerAction::Formed { welcomed, .. } => {
                    if welcomed.resilient != self.config.resilient {
                        self.fail(
                            NodeFatal::ResilienceMismatch {
                                initializer_resilient: welcomed.resilient,
                            },
                            out,
                        );
                        return;
                    }
                    self.formed(welcomed, out);
                }
                JoinerAction::Interrupted { reason } => {
                    out.push(NodeAction::Notice(Notice::FormationInterrupted { reason }));
                    out.push(NodeAction::TearDown {
                        reform: None,
                        keep: Vec::new(),
                    });
                }
                JoinerAction::Refused { reason } => {
                    self.fail(NodeFatal::Refused(reason), out);
                    return;
                }
                JoinerAction::Dismissed => {
                    self.phase = Phase::Stopped;
                    out.push(NodeAction::Leave);
                    return;
                }
                JoinerAction::InitializerLost { why } => {
                    let name = self
                        .members
                        .first()
                        .map_or("initializer".to_string(), |m| m.name.clone());
                    out.push(NodeAction::Notice(Notice::WorkerLost {
                        name: name.clone(),
                        why: why.clone(),
                    }));
                    if self.config.resilient {
                        self.recover(format!("lost worker '{name}': {why}"), now, out);
                        return;
                    }
                    out.push(NodeAction::Notice(Notice::NoRecovery { name }));
                }
                JoinerAction::Reform { reason } => {
                    if self.config.resilient {
                        self.recover(
                            format!("the initializer re-forms the cluster: {reason}"),
                            now,
                            out,
                        );
                        return;
                    }
                }
            }
        }
    }

    fn coordinator_event(
        &mut self,
        event: CoordinatorEvent,
        now: Instant,
        positions: &mut dyn FnMut() -> P,
        out: &mut Out<P, D>,
    ) {
        let members = self.members.len();
        let Some(c) = &mut self.coordinator else {
            return;
        };
        let Some(action) = c.handle(event, members) else {
            return;
        };
        match action {
            CoordinatorAction::Begin { id, generation } => {
                if let Some(g) = self.change.as_mut().filter(|g| g.checkpoint.is_none()) {
                    g.checkpoint = Some(id);
                }
                self.broadcast(Control::Checkpoint { id, generation }, out);
                self.participant_event(ParticipantEvent::Begin { id }, now, positions, out);
            }
            CoordinatorAction::RecordCommit { id, generation } => {
                out.push(NodeAction::RecordCommit { id, generation })
            }
            CoordinatorAction::Commit { id, generation } => {
                self.broadcast(Control::Committed { id, generation }, out);
                self.participant_event(ParticipantEvent::Committed { id }, now, positions, out);
                self.maybe_change(id, true, now, out);
                self.maybe_rebalance(now, out);
            }
            CoordinatorAction::Abort {
                id,
                generation,
                reason,
            } => {
                out.push(NodeAction::Notice(Notice::CheckpointAbandoned {
                    id,
                    reason: reason.clone(),
                }));
                self.broadcast(
                    Control::Abort {
                        id,
                        generation,
                        reason,
                    },
                    out,
                );
                self.participant_event(ParticipantEvent::Aborted { id }, now, positions, out);
                self.maybe_change(id, false, now, out);
            }
        }
    }

    /// Sends `msg` to every other member (initializer only).
    fn broadcast(&self, msg: Control, out: &mut Out<P, D>) {
        for &link in self.member_links.iter().skip(1) {
            out.push(NodeAction::Send {
                link,
                msg: msg.clone(),
            });
        }
    }

    fn participant_event(
        &mut self,
        event: ParticipantEvent,
        now: Instant,
        positions: &mut dyn FnMut() -> P,
        out: &mut Out<P, D>,
    ) {
        let Some(p) = &mut self.participant else {
            return;
        };
        let mut actions = Vec::new();
        p.handle(event, &mut *positions, &mut actions);
        let generation = self.generation;
        for a in actions {
            match a {
                ParticipantAction::PartDone { id } => match &self.role {
                    Role::Initializer(_) => {
                        let e = CoordinatorEvent::PartDone {
                            id,
                            generation,
                            member: 0,
                        };
                        self.coordinator_event(e, now, positions, out);
                    }
                    Role::Joiner(m) => {
                        if let Some(link) = m.link() {
                            let msg = Control::CheckpointDone {
                                id,
                                generation,
                                error: None,
                            };
                            out.push(NodeAction::Send { link, msg });
                        }
                    }
                },
                ParticipantAction::PartFailed { id, reason } => match &self.role {
                    Role::Initializer(_) => {
                        let reason = format!("worker '{}': {reason}", self.config.name);
                        let e = CoordinatorEvent::PartFailed {
                            id,
                            generation,
                            member: 0,
                            reason,
                        };
                        self.coordinator_event(e, now, positions, out);
                    }
                    Role::Joiner(m) => {
                        if let Some(link) = m.link() {
                            let msg = Control::CheckpointDone {
                                id,
                                generation,
                                error: Some(reason),
                            };
                            out.push(NodeAction::Send { link, msg });
                        }
                    }
                },
                other => out.push(NodeAction::Checkpoint(other)),
            }
        }
    }
}

/// A membership event before it is given to the role's machine.
enum MembershipEvent {
    Tick,
    Connected(LinkId),
    Message(LinkId, Control),
    Closed(LinkId, String),
    OwnLinksUp(Generation),
    Initializer(InitializerEvent),
}

/// `map` over `members` as named runs, the membership record's form.
fn named_runs(map: &KeyGroupMap, members: &[Member]) -> Vec<PlacementRun> {
    map.runs()
        .into_iter()
        .map(|(owner, groups)| PlacementRun {
            worker: members
                .get(owner as usize)
                .map_or_else(String::new, |m| m.name.clone()),
            groups,
        })
        .collect()
}
