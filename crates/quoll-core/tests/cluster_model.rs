//! A model of a whole cluster driven through `quoll_core::node::Node`:
//! random interleavings of messages, timers, crashes and restarts, with the
//! protocol's invariants checked at every step and exactly-once checked at
//! the end.
//!
//! The simulator plays the binding: it numbers connections, delivers each
//! link's messages in order (a crashed process's last messages may still
//! arrive, as TCP delivers what was sent before the close), writes part
//! files and commit records asynchronously (a crash may or may not leave a
//! write durable), and runs a tiny application: every worker's source reads
//! items `(worker, 0..ITEMS)`, each item goes to the worker that owns it,
//! which appends it to its state and to an exactly-once sink file (cut back
//! to the checkpointed length on restore).
//!
//! Some workers may start later, with `--join`: the cluster grows to take
//! them in, and restores move state to the new owners of its items. Some
//! runs shrink the cluster once (`Node::shrink`, as the external channel
//! asks): the leavers hand their state over and go, and their items read
//! before they left must still be counted exactly once.
//!
//! Workers report made-up, skewed loads with their checkpoint parts, so the
//! initializer rebalances key groups now and then (a re-formation with a
//! new placement); every formation's placement is checked to leave leaving
//! workers nothing.
//!
//! Checked at every step: a commit record is written only when every member
//! of that generation has its part durable; committed ids grow; a restore
//! lands on a committed checkpoint; generations never go back on a running
//! process or on the initializer's disk; applied data is of the node's
//! current generation. Checked at the end (after the last crash the cluster
//! must finish on its own): every source read to its end, a committed
//! checkpoint covers all input, the sinks hold every item exactly once,
//! and so does the state, each item on the worker that owns it.

use proptest::prelude::*;
use quoll_core::checkpoint::participant::ParticipantAction;
use quoll_core::checkpoint::CheckpointId;
use quoll_core::key_group::{KeyGroupMap, KEY_GROUPS};
use quoll_core::membership::{Generation, LinkId};
use quoll_core::node::{
    MembershipRecord, Node, NodeAction, NodeConfig, NodeEvent, Notice, Recovered,
};
use quoll_core::placement::KeyGroupLoad;
use quoll_core::wire::{Control, Member};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

type Item = (usize, u64);
/// Per source (worker index), the next item to read.
type Positions = Vec<u64>;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// The key group of `item`.
fn group(item: Item) -> u32 {
    let h = (item.0 as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ item.1.wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    ((h >> 17) % u64::from(KEY_GROUPS)) as u32
}

/// The member owning `item` under `placement`.
fn owner_of(item: Item, placement: &KeyGroupMap) -> usize {
    placement.owner_of_group(group(item))
}

/// A formation as one worker knows it: the members, its index, the
/// generation, and the placement of key groups.
type Formation = (Vec<Member>, usize, Generation, KeyGroupMap);

#[derive(Clone, Debug)]
struct Snapshot {
    state: Vec<Item>,
    source_pos: u64,
    sink_len: usize,
}

/// What survives a crash.
#[derive(Default)]
struct Disk {
    parts: BTreeMap<CheckpointId, Snapshot>,
    /// The initializer's commit log.
    commits: Vec<CheckpointId>,
    generation: Generation,
    log_exists: bool,
    /// The exactly-once sink file.
    sink: Vec<Item>,
    /// The initializer's membership record.
    membership: MembershipRecord,
}

#[derive(Debug)]
enum Msg {
    Control(Control),
    Closed,
}

#[derive(Debug)]
enum DataMsg {
    Item(Item),
    Barrier(CheckpointId),
    /// Restored state the receiver owns, then the end of the handoff.
    Handoff(Vec<Item>),
    HandoffDone {
        moved: bool,
    },
}

struct Proc {
    node: Node<Positions, Item>,
    state: Vec<Item>,
    source_pos: u64,
    /// Restoring: the own image loaded (the state kept, the checkpoint's
    /// source position and sink length) and the state handed over.
    loaded: Option<Snapshot>,
    handed_in: Vec<(Generation, Item)>,
    /// Part writes in progress: (generation, id, snapshot).
    writing: Vec<(Generation, CheckpointId, Snapshot)>,
    /// The commit record in progress (initializer).
    recording: Option<(Generation, CheckpointId)>,
    connect_at: Option<Instant>,
    formed: Option<Formation>,
    /// Data links this process opened: (generation, members).
    data_open: Option<(Generation, Vec<usize>)>,
    data_up_sent: bool,
    last_generation: Generation,
}

struct Link {
    ends: (usize, usize),
    open: bool,
}

struct Sim {
    rng: Rng,
    n: usize,
    /// Workers `0..founding` form the cluster; the others join it later,
    /// in name order, as workers started with `--join`.
    founding: usize,
    started: Vec<bool>,
    /// Per worker: it left the cluster by a shrink, having read this many
    /// of its items.
    left: Vec<Option<u64>>,
    /// This run asks for a shrink once.
    shrink_once: bool,
    items: u64,
    now: Instant,
    procs: Vec<Option<Proc>>,
    disks: Vec<Disk>,
    links: BTreeMap<LinkId, Link>,
    next_link: u64,
    /// Control messages per (link, receiving worker), in order.
    control: BTreeMap<(LinkId, usize), VecDeque<Msg>>,
    /// Data per link, in order: (the sender's member index, the receiving
    /// worker, the generation).
    data: BTreeMap<(usize, usize, Generation), VecDeque<DataMsg>>,
    /// Items of restored state handed to another worker.
    moved: usize,
    /// Joins that paused a running cluster (the initializer's `Pause`s).
    pauses: usize,
    /// (worker, generation): the worker restored in that generation.
    restored: BTreeSet<(usize, Generation)>,
    /// Rebalances the initializer decided.
    rebalances: usize,
    /// Leavers that crashed after their leave committed, restarted, and
    /// were told to leave again.
    dismissed: usize,
    /// Workers may join before the first commit.
    seed_joins_early: bool,
    trace: Vec<String>,
}

/// The worker (simulated process) a member is: after a shrink, member
/// indices and worker numbers differ.
fn worker_of(m: &Member) -> usize {
    if m.name == "initializer" {
        0
    } else {
        m.name[1..].parse().expect("w<number>")
    }
}

fn name(i: usize) -> String {
    if i == 0 {
        "initializer".into()
    } else {
        format!("w{i}")
    }
}

fn config(i: usize, founding: usize) -> NodeConfig {
    NodeConfig {
        name: name(i),
        initializer: i == 0,
        worker_count: founding,
        fingerprint: 7,
        resilient: true,
        data_addr: format!("data-{i}"),
        sources: Vec::new(),
        checkpoint_interval: Duration::from_millis(300),
        checkpoint_timeout: Duration::from_secs(5),
        step_timeout: Duration::from_secs(3),
        retry_after: Duration::from_millis(100),
        refusal_patience: Duration::from_secs(6),
        grow_refusal: None,
        rebalance_interval: Some(Duration::from_secs(2)),
    }
}

impl Sim {
    fn new(seed: u64, n: usize, founding: usize, items: u64) -> Sim {
        let mut sim = Sim {
            rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            n,
            founding,
            started: vec![false; n],
            left: vec![None; n],
            shrink_once: seed % 3 == 1,
            items,
            now: Instant::now(),
            procs: (0..n).map(|_| None).collect(),
            disks: (0..n).map(|_| Disk::default()).collect(),
            links: BTreeMap::new(),
            next_link: 1,
            control: BTreeMap::new(),
            data: BTreeMap::new(),
            moved: 0,
            pauses: 0,
            restored: BTreeSet::new(),
            rebalances: 0,
            dismissed: 0,
            seed_joins_early: seed.is_multiple_of(2),
            trace: Vec::new(),
        };
        for i in 0..founding {
            sim.start(i);
        }
        sim
    }

    fn fail(&self, what: String) -> ! {
        let keep = std::env::var("QUOLL_TRACE").map_or(60, |_| usize::MAX);
        let tail: Vec<&String> = self.trace.iter().rev().take(keep).collect();
        let tail: Vec<String> = tail.into_iter().rev().cloned().collect();
        panic!("{what}\n--- last events ---\n{}", tail.join("\n"));
    }

    fn start(&mut self, i: usize) {
        let disk = &self.disks[i];
        let recovered = Recovered {
            last_committed: disk.commits.last().copied(),
            generation: disk.generation,
            has_files: !disk.parts.is_empty() || (i == 0 && disk.log_exists),
            membership: disk.membership.clone(),
        };
        self.trace.push(format!("start {i} {recovered:?}"));
        self.started[i] = true;
        let node = Node::new(config(i, self.founding), recovered);
        self.procs[i] = Some(Proc {
            node,
            state: Vec::new(),
            source_pos: 0,
            loaded: None,
            handed_in: Vec::new(),
            writing: Vec::new(),
            recording: None,
            connect_at: None,
            formed: None,
            data_open: None,
            data_up_sent: false,
            last_generation: 0,
        });
        let mut out = Vec::new();
        let now = self.now;
        self.procs[i].as_mut().unwrap().node.start(now, &mut out);
        self.apply(i, out);
    }

    fn crash(&mut self, i: usize) {
        let Some(p) = self.procs[i].take() else {
            return;
        };
        self.trace.push(format!("CRASH {i}"));
        // A write under way may or may not have reached the disk.
        for (_, id, snap) in p.writing {
            if self.rng.chance(50) {
                self.disks[i].parts.insert(id, snap);
            }
        }
        if let Some((_, id)) = p.recording {
            if self.rng.chance(50) {
                self.disks[i].commits.push(id);
            }
        }
        self.gone_away(i);
    }

    /// Worker `i`'s process is gone: its links close, data for it is lost.
    fn gone_away(&mut self, i: usize) {
        let mine: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| l.open && (l.ends.0 == i || l.ends.1 == i))
            .map(|(k, _)| *k)
            .collect();
        for link in mine {
            self.close_link(link, i);
        }
        self.data.retain(|(_, to, _), _| *to != i);
    }

    /// Worker `by` closes `link`: the other end sees it closed after what
    /// was already sent; nothing more reaches `by`.
    fn close_link(&mut self, link: LinkId, by: usize) {
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        if !l.open {
            return;
        }
        l.open = false;
        let other = if l.ends.0 == by { l.ends.1 } else { l.ends.0 };
        self.control
            .entry((link, other))
            .or_default()
            .push_back(Msg::Closed);
        self.control.remove(&(link, by));
    }

    fn send(&mut self, from: usize, link: LinkId, msg: Control) {
        let Some(l) = self.links.get(&link) else {
            return;
        };
        if !l.open {
            return;
        }
        let to = if l.ends.0 == from { l.ends.1 } else { l.ends.0 };
        self.control
            .entry((link, to))
            .or_default()
            .push_back(Msg::Control(msg));
    }

    fn event(&mut self, i: usize, e: NodeEvent) {
        let Some(p) = self.procs[i].as_mut() else {
            return;
        };
        self.trace.push(format!("{i} <- {e:?}"));
        let mut out = Vec::new();
        let pos = p.source_pos;
        let mut positions = || vec![pos];
        p.node.handle(e, self.now, &mut positions, &mut out);
        self.apply(i, out);
    }

    fn check_generation(&mut self, i: usize) {
        let p = self.procs[i].as_mut().unwrap();
        let g = p.node.generation();
        if g < p.last_generation {
            let last = p.last_generation;
            self.fail(format!(
                "worker {i}: generation went back from {last} to {g}"
            ));
        }
        p.last_generation = g;
    }

    fn apply(&mut self, i: usize, actions: Vec<NodeAction<Positions, Item>>) {
        for a in actions {
            if self.procs[i].is_none() {
                return;
            }
            self.trace.push(format!("{i} -> {a:?}"));
            match a {
                NodeAction::Connect { after } => {
                    self.procs[i].as_mut().unwrap().connect_at = Some(self.now + after)
                }
                NodeAction::SendJoin { link, has_files } => {
                    let msg = Control::Join {
                        name: name(i),
                        data_addr: format!("data-{i}"),
                        sources: Vec::new(),
                        fingerprint: 7,
                        has_files,
                        grow: i >= self.founding,
                        batch: 1,
                        metrics_addr: None,
                    };
                    self.send(i, link, msg);
                }
                NodeAction::Send { link, msg } => {
                    if matches!(msg, Control::Pause { .. }) {
                        self.pauses += 1;
                    }
                    // A leaver is told only once its leave is recorded: an
                    // initializer restarted in between must not wait for it.
                    if matches!(msg, Control::Leave { .. }) {
                        if let Some(l) = self.links.get(&link) {
                            let to = if l.ends.0 == i { l.ends.1 } else { l.ends.0 };
                            assert!(
                                self.disks[0].membership.left.contains(&name(to)),
                                "{} told to leave before its leave was recorded",
                                name(to)
                            );
                        }
                    }
                    self.send(i, link, msg)
                }
                NodeAction::Refuse {
                    link,
                    reason,
                    retry,
                } => {
                    self.send(i, link, Control::Refused { reason, retry });
                    self.close_link(link, i);
                }
                NodeAction::Close { link } => self.close_link(link, i),
                NodeAction::RecordGeneration { generation } => {
                    let d = &mut self.disks[i];
                    if generation <= d.generation {
                        let had = d.generation;
                        self.fail(format!("generation {generation} recorded after {had}"));
                    }
                    d.generation = generation;
                    d.log_exists = true;
                }
                NodeAction::OpenDataLinks {
                    members,
                    generation,
                    ..
                } => {
                    let p = self.procs[i].as_mut().unwrap();
                    p.data_open = Some((generation, members.iter().map(worker_of).collect()));
                    p.data_up_sent = false;
                }
                NodeAction::TearDown { reform, keep } => {
                    let mine: Vec<LinkId> = self
                        .links
                        .iter()
                        .filter(|(k, _)| !keep.contains(k))
                        .filter(|(_, l)| l.open && (l.ends.0 == i || l.ends.1 == i))
                        .map(|(k, _)| *k)
                        .collect();
                    for link in mine {
                        if let Some(reason) = &reform {
                            self.send(
                                i,
                                link,
                                Control::Reform {
                                    reason: reason.clone(),
                                },
                            );
                        }
                        self.close_link(link, i);
                    }
                    let p = self.procs[i].as_mut().unwrap();
                    p.formed = None;
                    p.data_open = None;
                }
                NodeAction::Formed {
                    members,
                    me,
                    generation,
                    leaving,
                    placement,
                } => {
                    let leaver_owns = (0..members.len())
                        .any(|m| leaving.contains(&members[m].name) && placement.owned_by(m) > 0);
                    if leaver_owns {
                        self.fail(format!("worker {i} formed with a leaver owning key groups"));
                    }
                    self.procs[i].as_mut().unwrap().formed =
                        Some((members, me, generation, placement));
                    self.check_generation(i);
                }
                NodeAction::Redirect { to } => self.fail(format!(
                    "worker {i} redirected to {to}: no member redirects here"
                )),
                NodeAction::RecordMembership { record } => {
                    if i != 0 {
                        self.fail(format!("worker {i} records the membership"));
                    }
                    self.disks[0].membership = record;
                }
                NodeAction::Leave => {
                    let p = self.procs[i].take().unwrap();
                    if p.formed.is_none() {
                        // A leaver that crashed before it heard it had left
                        // is told again when it comes back with its files;
                        // `gone` counts what it read.
                        self.trace.push(format!("DISMISSED {i}"));
                        self.dismissed += 1;
                        if self.gone(i).is_none() {
                            self.fail(format!("worker {i} dismissed, but it did not leave"));
                        }
                        return;
                    }
                    self.trace.push(format!("LEFT {i} at {}", p.source_pos));
                    if !p.state.is_empty() {
                        self.fail(format!("worker {i} leaves holding state {:?}", p.state));
                    }
                    self.left[i] = Some(p.source_pos);
                    self.gone_away(i);
                    return;
                }
                NodeAction::Load {
                    generation,
                    checkpoint,
                } => self.load(i, generation, checkpoint),
                NodeAction::Restore { generation, .. } => {
                    let p = self.procs[i].as_mut().unwrap();
                    let snap = p.loaded.take().expect("loaded before restore");
                    p.state = snap.state;
                    let handed = std::mem::take(&mut p.handed_in);
                    p.state.extend(
                        handed
                            .into_iter()
                            .filter(|(g, _)| *g == generation)
                            .map(|(_, item)| item),
                    );
                    p.source_pos = snap.source_pos;
                    self.restored.insert((i, generation));
                    self.event(i, NodeEvent::Restored { generation });
                }
                NodeAction::Running { .. } => {}
                NodeAction::Release { from, data } => self.apply_item(i, from, data),
                NodeAction::Checkpoint(c) => self.checkpoint(i, c),
                NodeAction::RecordCommit { id, generation } => {
                    let workers: Vec<usize> = self.procs[i]
                        .as_ref()
                        .unwrap()
                        .formed
                        .as_ref()
                        .map_or(vec![0], |f| f.0.iter().map(worker_of).collect());
                    for m in workers {
                        if !self.disks[m].parts.contains_key(&id) {
                            self.fail(format!(
                                "commit of {id} recorded while worker {m}'s part is not durable"
                            ));
                        }
                    }
                    if let Some(&last) = self.disks[i].commits.last() {
                        if id <= last {
                            self.fail(format!("commit of {id} after {last}"));
                        }
                    }
                    self.procs[i].as_mut().unwrap().recording = Some((generation, id));
                }
                NodeAction::Notice(Notice::Rebalancing { .. }) => self.rebalances += 1,
                NodeAction::Notice(_) => {}
                NodeAction::Fatal(f) => self.fail(format!("worker {i} stopped: {f}")),
            }
        }
    }

    /// Loads worker `i`'s part and hands what others own to them.
    fn load(&mut self, i: usize, generation: Generation, checkpoint: Option<CheckpointId>) {
        if let Some(id) = checkpoint {
            if !self.disks[0].commits.contains(&id) {
                self.fail(format!(
                    "worker {i} rolls back to {id}, which is not committed"
                ));
            }
        }
        // The binding waits for part writes under way before it restores:
        // each is on disk, or failed.
        let writing = std::mem::take(&mut self.procs[i].as_mut().unwrap().writing);
        for (_, id, snap) in writing {
            if self.rng.chance(50) {
                self.disks[i].parts.insert(id, snap);
            }
        }
        let disk = &mut self.disks[i];
        let snap = match checkpoint {
            Some(id) => match disk.parts.get(&id) {
                Some(s) => s.clone(),
                None => self.fail(format!(
                    "worker {i} has no part of committed checkpoint {id}"
                )),
            },
            None => Snapshot {
                state: Vec::new(),
                source_pos: 0,
                sink_len: 0,
            },
        };
        disk.parts
            .retain(|id, _| checkpoint.is_some_and(|c| *id <= c));
        disk.sink.truncate(snap.sink_len);
        let p = self.procs[i].as_mut().unwrap();
        let (members, me, _, owners) = p.formed.clone().expect("formed before loading");
        let mut moved = false;
        let mut kept = Vec::new();
        let mut away: Vec<Vec<Item>> = vec![Vec::new(); members.len()];
        for item in snap.state {
            let to = owner_of(item, &owners);
            if to == me {
                kept.push(item);
            } else {
                moved = true;
                away[to].push(item);
            }
        }
        p.loaded = Some(Snapshot {
            state: kept,
            ..snap
        });
        for (to, items) in away.into_iter().enumerate().filter(|(to, _)| *to != me) {
            let q = self
                .data
                .entry((me, worker_of(&members[to]), generation))
                .or_default();
            let moved = !items.is_empty();
            self.moved += items.len();
            if moved {
                q.push_back(DataMsg::Handoff(items));
            }
            q.push_back(DataMsg::HandoffDone { moved });
        }
        self.event(
            i,
            NodeEvent::Loaded {
                generation,
                files_read: 1,
                moved,
            },
        );
    }

    fn checkpoint(&mut self, i: usize, c: ParticipantAction<Positions, Item>) {
        match c {
            ParticipantAction::SendBarriers { id } => {
                let (members, me, generation) = {
                    let f = self.procs[i]
                        .as_ref()
                        .unwrap()
                        .formed
                        .as_ref()
                        .expect("formed");
                    (f.0.clone(), f.1, f.2)
                };
                for to in (0..members.len()).filter(|t| *t != me) {
                    self.data
                        .entry((me, worker_of(&members[to]), generation))
                        .or_default()
                        .push_back(DataMsg::Barrier(id));
                }
            }
            ParticipantAction::TakeSnapshot { id, .. } => {
                let p = self.procs[i].as_mut().unwrap();
                let snap = Snapshot {
                    state: p.state.clone(),
                    source_pos: p.source_pos,
                    sink_len: self.disks[i].sink.len(),
                };
                let g = p.node.generation();
                p.writing.push((g, id, snap));
            }
            ParticipantAction::Release { from, data } => self.apply_item(i, from, data),
            ParticipantAction::Commit { id, positions, .. } => {
                let snap_pos = self.disks[i].parts.get(&id).map(|s| s.source_pos);
                if snap_pos != Some(positions[0]) {
                    self.fail(format!("worker {i}: commit {id} acknowledges {positions:?}, its part says {snap_pos:?}"));
                }
                let disk = &mut self.disks[i];
                disk.parts.retain(|k, _| *k >= id);
            }
            ParticipantAction::Abort { .. } => {}
            ParticipantAction::PartDone { .. } | ParticipantAction::PartFailed { .. } => {
                self.fail("part reports must become control messages".into())
            }
        }
    }

    fn apply_item(&mut self, i: usize, _from: usize, item: Item) {
        let p = self.procs[i].as_mut().unwrap();
        let (_, me, _, owners) = p.formed.as_ref().expect("formed when applying data");
        if owner_of(item, owners) != *me {
            self.fail(format!("worker {i} got {item:?}, which it does not own"));
        }
        p.state.push(item);
        self.disks[i].sink.push(item);
    }

    /// One random step; false when nothing could be done.
    fn step(&mut self, may_crash: bool) -> bool {
        let mut choices: Vec<u8> = Vec::new();
        if !self.control.values().all(|q| q.is_empty()) {
            choices.extend([0, 0, 0]);
        }
        if !self.data.values().all(|q| q.is_empty()) {
            choices.extend([1, 1, 1]);
        }
        if self
            .procs
            .iter()
            .flatten()
            .any(|p| !p.writing.is_empty() || p.recording.is_some())
        {
            choices.push(2);
        }
        if self
            .procs
            .iter()
            .flatten()
            .any(|p| p.node.takes_input() && p.source_pos < self.items)
        {
            choices.extend([3, 3]);
        }
        choices.push(4);
        if may_crash {
            choices.push(5);
        }
        if (0..self.n).any(|i| self.down(i)) {
            choices.push(6);
        }
        // Joining after a commit makes the restore move state.
        let may_join = self.seed_joins_early || !self.disks[0].commits.is_empty();
        if self.started.contains(&false) && may_join {
            choices.push(7);
        }
        // Once every worker has started, some runs shrink the cluster.
        let shrinkable = self.procs[0]
            .as_ref()
            .is_some_and(|p| p.node.takes_input() && p.node.members().len() > 1);
        if self.shrink_once && !self.started.contains(&false) && shrinkable {
            choices.push(8);
        }
        self.connect_and_link_up();
        match choices[self.rng.below(choices.len())] {
            0 => {
                let keys: Vec<(LinkId, usize)> = self
                    .control
                    .iter()
                    .filter(|(_, q)| !q.is_empty())
                    .map(|(k, _)| *k)
                    .collect();
                let (link, to) = keys[self.rng.below(keys.len())];
                let msg = self
                    .control
                    .get_mut(&(link, to))
                    .unwrap()
                    .pop_front()
                    .unwrap();
                match msg {
                    Msg::Control(msg) => self.event(to, NodeEvent::Control { link, msg }),
                    Msg::Closed => self.event(
                        to,
                        NodeEvent::LinkClosed {
                            link,
                            why: "closed".into(),
                        },
                    ),
                }
            }
            1 => {
                let keys: Vec<(usize, usize, Generation)> = self
                    .data
                    .iter()
                    .filter(|(_, q)| !q.is_empty())
                    .map(|(k, _)| *k)
                    .collect();
                let (from, to, generation) = keys[self.rng.below(keys.len())];
                let msg = self
                    .data
                    .get_mut(&(from, to, generation))
                    .unwrap()
                    .pop_front()
                    .unwrap();
                match msg {
                    DataMsg::Item(item) => {
                        let Some(p) = self.procs[to].as_mut() else {
                            return true;
                        };
                        if let Some(item) = p.node.on_data(from, generation, item) {
                            if generation != p.node.generation() {
                                self.fail(format!(
                                    "worker {to} applies data of generation {generation}"
                                ));
                            }
                            self.trace
                                .push(format!("{to} applies {item:?} from {from}"));
                            self.apply_item(to, from, item);
                        }
                    }
                    DataMsg::Barrier(id) => self.event(
                        to,
                        NodeEvent::Barrier {
                            from,
                            generation,
                            id,
                        },
                    ),
                    DataMsg::Handoff(items) => {
                        let Some(p) = self.procs[to].as_mut() else {
                            return true;
                        };
                        p.handed_in
                            .extend(items.into_iter().map(|item| (generation, item)));
                    }
                    DataMsg::HandoffDone { moved } => self.event(
                        to,
                        NodeEvent::HandoffDone {
                            from,
                            generation,
                            moved,
                        },
                    ),
                }
            }
            2 => {
                let busy: Vec<usize> = (0..self.n)
                    .filter(|i| {
                        self.procs[*i]
                            .as_ref()
                            .is_some_and(|p| !p.writing.is_empty() || p.recording.is_some())
                    })
                    .collect();
                let i = busy[self.rng.below(busy.len())];
                let p = self.procs[i].as_mut().unwrap();
                if let Some((generation, id)) = p.recording.take() {
                    self.disks[i].commits.push(id);
                    self.event(
                        i,
                        NodeEvent::CommitRecorded {
                            generation,
                            id,
                            result: Ok(()),
                        },
                    );
                } else {
                    let (generation, id, snap) = p.writing.remove(0);
                    let result = if self.rng.chance(4) {
                        Err("disk full".to_string())
                    } else {
                        self.disks[i].parts.insert(id, snap);
                        Ok(())
                    };
                    // A few hot key groups, now and then.
                    let hot: Vec<(u32, u64)> = match self.rng.chance(30) {
                        true => (0..3)
                            .map(|_| {
                                let g = self.rng.below(KEY_GROUPS as usize) as u32;
                                (g, 2_000 + self.rng.below(20_000) as u64)
                            })
                            .collect(),
                        false => Vec::new(),
                    };
                    self.event(
                        i,
                        NodeEvent::PartWritten {
                            generation,
                            id,
                            result,
                            load: KeyGroupLoad::from_sparse(&hot),
                        },
                    );
                }
            }
            3 => {
                let ready: Vec<usize> = (0..self.n)
                    .filter(|i| {
                        self.procs[*i]
                            .as_ref()
                            .is_some_and(|p| p.node.takes_input() && p.source_pos < self.items)
                    })
                    .collect();
                let i = ready[self.rng.below(ready.len())];
                let p = self.procs[i].as_mut().unwrap();
                let item = (i, p.source_pos);
                p.source_pos += 1;
                let (members, me, generation, owners) =
                    p.formed.clone().expect("formed when taking input");
                // Input only once every member restored: a moved key's old
                // owner has re-sent its in-doubt output by then.
                for m in &members {
                    let w = worker_of(m);
                    assert!(
                        self.restored.contains(&(w, generation)),
                        "worker {i} took input in generation {generation} before {} restored",
                        m.name
                    );
                }
                let to = owner_of(item, &owners);
                if to == me {
                    self.apply_item(i, me, item);
                } else {
                    self.data
                        .entry((me, worker_of(&members[to]), generation))
                        .or_default()
                        .push_back(DataMsg::Item(item));
                }
            }
            4 => {
                self.now += Duration::from_millis(self.rng.below(80) as u64);
                for i in 0..self.n {
                    let due = self.procs[i]
                        .as_ref()
                        .and_then(|p| p.node.next_deadline())
                        .is_some_and(|d| d <= self.now);
                    if due {
                        self.event(i, NodeEvent::Tick);
                    }
                }
            }
            5 => {
                let i = self.rng.below(self.n);
                self.crash(i);
            }
            6 => {
                let down: Vec<usize> = (0..self.n).filter(|i| self.down(*i)).collect();
                let i = down[self.rng.below(down.len())];
                self.start(i);
            }
            8 => {
                self.shrink_once = false;
                let p = self.procs[0].as_mut().unwrap();
                let count = 1 + self.rng.below(p.node.members().len() - 1);
                let mut out = Vec::new();
                let asked = p.node.shrink(false, &[], count, self.now, &mut out);
                self.trace.push(format!("SHRINK by {count}: {asked:?}"));
                if let Err(e) = asked {
                    self.fail(format!("a shrink of a running cluster was refused: {e}"));
                }
                self.apply(0, out);
            }
            _ => {
                // The next worker joins the running cluster.
                if let Some(i) = self.started.iter().position(|s| !s) {
                    self.trace.push(format!("JOIN {i}"));
                    self.start(i);
                }
            }
        }
        true
    }

    /// Connections that can be made and data links that are all up.
    fn connect_and_link_up(&mut self) {
        for i in 1..self.n {
            let want = self.procs[i]
                .as_ref()
                .and_then(|p| p.connect_at)
                .is_some_and(|t| t <= self.now);
            if want && self.procs[0].is_some() {
                self.procs[i].as_mut().unwrap().connect_at = None;
                let link = LinkId(self.next_link);
                self.next_link += 1;
                self.links.insert(
                    link,
                    Link {
                        ends: (i, 0),
                        open: true,
                    },
                );
                self.event(i, NodeEvent::Connected { link });
            }
        }
        for i in 0..self.n {
            let Some((g, workers)) = self.procs[i]
                .as_ref()
                .filter(|p| !p.data_up_sent)
                .and_then(|p| p.data_open.clone())
            else {
                continue;
            };
            let all = workers.iter().all(|w| {
                self.procs[*w]
                    .as_ref()
                    .is_some_and(|p| p.data_open.as_ref().is_some_and(|(gm, _)| *gm == g))
            });
            if all {
                self.procs[i].as_mut().unwrap().data_up_sent = true;
                self.event(i, NodeEvent::DataLinksUp { generation: g });
            }
        }
    }

    /// Worker `i` is down and may be restarted: it crashed, and did not
    /// hear it had left (a leaver that crashed after its leave committed
    /// is restarted too, as an operator would, and is told to leave again).
    fn down(&self, i: usize) -> bool {
        self.started[i] && self.procs[i].is_none() && self.left[i].is_none()
    }

    /// How many of its items worker `i` read if it left the cluster: the
    /// position it left at, or, if it crashed before it heard it had left,
    /// the position of its newest part (the checkpoint taken without it).
    fn gone(&self, i: usize) -> Option<u64> {
        self.left[i].or_else(|| {
            self.disks[0].membership.left.contains(&name(i)).then(|| {
                self.disks[i]
                    .parts
                    .values()
                    .last()
                    .map_or(0, |s| s.source_pos)
            })
        })
    }

    fn finished(&self) -> bool {
        let all_read = (0..self.n).filter(|i| self.gone(*i).is_none()).all(|i| {
            self.procs[i]
                .as_ref()
                .is_some_and(|p| p.node.running() && p.source_pos == self.items)
        });
        let quiet =
            self.control.values().all(|q| q.is_empty()) && self.data.values().all(|q| q.is_empty());
        // A committed checkpoint covers all input.
        let covered = self.disks[0].commits.last().is_some_and(|last| {
            (0..self.n).filter(|i| self.gone(*i).is_none()).all(|i| {
                self.disks[i]
                    .parts
                    .get(last)
                    .is_some_and(|s| s.source_pos == self.items)
            })
        });
        all_read && quiet && covered
    }

    fn check_exactly_once(&self) {
        let mut seen: BTreeMap<Item, usize> = BTreeMap::new();
        for d in &self.disks {
            for it in &d.sink {
                *seen.entry(*it).or_default() += 1;
            }
        }
        let want: BTreeSet<Item> = (0..self.n)
            .flat_map(|i| (0..self.gone(i).unwrap_or(self.items)).map(move |k| (i, k)))
            .collect();
        let doubled: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
        let missing: Vec<_> = want.iter().filter(|k| !seen.contains_key(k)).collect();
        if !doubled.is_empty() || !missing.is_empty() || seen.len() != want.len() {
            self.fail(format!(
                "sinks are not exactly once: doubled {doubled:?}, missing {missing:?}"
            ));
        }
        // The state too: each item once, on the worker that owns it now.
        let mut held: BTreeMap<Item, usize> = BTreeMap::new();
        for (i, p) in self.procs.iter().enumerate() {
            let Some(p) = p.as_ref().filter(|_| self.gone(i).is_none()) else {
                continue;
            };
            let Some((_, me, _, owners)) = p.formed.as_ref() else {
                self.fail(format!("worker {i} is not formed at the end"));
            };
            for it in &p.state {
                if owner_of(*it, owners) != *me {
                    self.fail(format!(
                        "worker {me} holds state of {it:?}, which it does not own"
                    ));
                }
                *held.entry(*it).or_default() += 1;
            }
        }
        let doubled: Vec<_> = held.iter().filter(|(_, c)| **c > 1).collect();
        let missing: Vec<_> = want.iter().filter(|k| !held.contains_key(k)).collect();
        if !doubled.is_empty() || !missing.is_empty() {
            self.fail(format!(
                "state is not exactly once: doubled {doubled:?}, missing {missing:?}"
            ));
        }
    }
}

/// What one run did: items of restored state moved between workers,
/// messages that paused a member for a membership change, workers that
/// left, rebalances, leavers dismissed on their restart.
type Done = (usize, usize, usize, usize, usize);

/// Runs one cluster to the end.
fn run(seed: u64, n: usize, founding: usize, items: u64, crashes: usize) -> Done {
    let mut sim = Sim::new(seed, n, founding, items);
    let mut left = crashes;
    let mut steps = 0;
    while left > 0 {
        steps += 1;
        let before = sim.procs.iter().filter(|p| p.is_none()).count();
        let may_crash = sim.rng.chance(3);
        sim.step(may_crash);
        if sim.procs.iter().filter(|p| p.is_none()).count() > before {
            left -= 1;
        }
        if steps > 20_000 {
            break;
        }
    }
    let mut quiet_steps = 0;
    while !sim.finished() {
        sim.step(false);
        quiet_steps += 1;
        if quiet_steps > 200_000 {
            sim.fail(format!(
                "no progress after the last crash (seed {seed}, {n} workers, {founding} founding, {crashes} crashes)"
            ));
        }
    }
    sim.check_exactly_once();
    let left = (0..n).filter(|i| sim.gone(*i).is_some()).count();
    (sim.moved, sim.pauses, left, sim.rebalances, sim.dismissed)
}

#[test]
fn one_worker_without_crashes() {
    run(1, 1, 1, 50, 0);
}

#[test]
fn three_workers_without_crashes() {
    run(2, 3, 3, 60, 0);
}

#[test]
fn three_workers_shrink_without_crashes() {
    let left: usize = (1..30).map(|seed| run(seed, 3, 3, 60, 0).2).sum();
    assert!(left > 0, "no run shrank the cluster");
}

#[test]
fn leavers_restarted_after_their_leave_are_told_to_leave_again() {
    let runs: Vec<Done> = (1..300).map(|seed| run(seed, 3, 3, 20, 4)).collect();
    assert!(
        runs.iter().any(|r| r.4 > 0),
        "no leaver crashed after its leave and was restarted"
    );
}

#[test]
fn skewed_load_rebalances_without_crashes() {
    let runs: Vec<Done> = (1..20).map(|seed| run(seed, 3, 3, 60, 0)).collect();
    assert!(runs.iter().any(|r| r.3 > 0), "no run rebalanced");
}

#[test]
fn one_worker_grows_to_three_without_crashes() {
    let runs: Vec<Done> = (1..20).map(|seed| run(seed, 3, 1, 60, 0)).collect();
    assert!(
        runs.iter().any(|r| r.0 > 0),
        "no run moved state to a joined worker"
    );
    assert!(
        runs.iter().any(|r| r.1 > 0),
        "no join paused a running cluster"
    );
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("QUOLL_MODEL_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(1000),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Any interleaving, any crashes and restarts: the invariants hold at
    /// every step and the cluster ends exactly once.
    #[test]
    fn clusters_survive_random_crashes(seed in any::<u64>(), n in 1usize..5, items in 5u64..60, crashes in 0usize..6) {
        run(seed, n, n, items, crashes);
    }

    /// The same while workers join: state moves to its new owners, and
    /// still every item ends in the sinks exactly once.
    #[test]
    fn growing_clusters_survive_random_crashes(seed in any::<u64>(), n in 2usize..5, grow in 1usize..3, items in 5u64..60, crashes in 0usize..6) {
        run(seed, n, n.saturating_sub(grow).max(1), items, crashes);
    }
}

/// A debugging aid, not part of the suite: with
/// `QUOLL_MODEL_REPLAY=seed,n,founding,items,crashes` it replays one run (add
/// `QUOLL_TRACE=1` for the whole trace); without it, it searches for the
/// smallest failing run and names it.
/// `cargo test --release -p quoll-core --test cluster_model hunt -- --ignored`
#[test]
#[ignore]
fn hunt() {
    if let Ok(spec) = std::env::var("QUOLL_MODEL_REPLAY") {
        let v: Vec<u64> = spec
            .split(',')
            .map(|x| x.trim().parse().expect("numbers"))
            .collect();
        let (moved, pauses, left, rebalances, dismissed) =
            run(v[0], v[1] as usize, v[2] as usize, v[3], v[4] as usize);
        println!("{moved} items of state moved, {pauses} pause messages, {left} workers left, {rebalances} rebalances, {dismissed} leavers dismissed");
        return;
    }
    for n in 2..5 {
        for founding in 1..=n {
            for crashes in 0..5 {
                for items in [5u64, 10, 20] {
                    for seed in 1..3000u64 {
                        if std::panic::catch_unwind(|| run(seed, n, founding, items, crashes))
                            .is_err()
                        {
                            panic!("smallest failure found: QUOLL_MODEL_REPLAY={seed},{n},{founding},{items},{crashes}");
                        }
                    }
                }
            }
        }
    }
}
