//! The initializer's side of membership: gathering joins, welcoming,
//! waiting for every data link, starting, then watching the members.
//!
//! # Growing
//!
//! A worker started with `--join` sends `Join` with `grow`. If its name is
//! not a member's, it becomes one: the machine adds it to the members that
//! joined after formation ([`InitializerMembership::joined`], which the
//! caller records durably before anything else happens). A formed cluster
//! is then re-formed by the caller ([`InitializerAction::Grow`]) and a
//! formation still linking starts over; meanwhile the joiner's link waits,
//! open, and the next formation begins with it. One still gathering just
//! takes it. A joiner may say it is one of a batch of k (`--worker-count
//! k` with `--join`): a formed cluster then waits, running, until k
//! joiners wait, and takes them in one change. Growing needs resilience: the new formation restores the last
//! checkpoint with key groups moved to their new owners (see
//! [`crate::node`]).
//!
//! # States
//!
//! ```text
//!  gather(g) ──▶ Gathering ── worker_count-1 joined ──▶ Linking ── all LinksUp + own ──▶ Formed
//!                   ▲                                      │ a member's link closed,      │ a member's link
//!                   │                                      │ or the step deadline passed  │ closed or went
//!                   └──── Interrupted (caller: gather(g+1)) ◀┘                              ▼ silent: MemberLost
//! ```
//!
//! # Invariants
//!
//! - No two members share a name, and none has the initializer's name or
//!   another application's fingerprint.
//! - `Welcome` goes out only with exactly `worker_count` members (the
//!   command line's count plus the workers that joined since), the
//!   initializer first and the others sorted by name; `Start` only once
//!   every member confirmed its data links and the initializer's own are up.
//! - Once formed, a stranger (a name not in the cluster) is refused and
//!   changes nothing, and so is a second process with a member's name: only
//!   a member's own link closing (or going silent) makes it lost.
//! - Events of links that are no longer part of the formation change
//!   nothing.

use super::{Generation, LinkId};
use crate::wire::Member;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The rules the initializer forms a cluster by.
#[derive(Debug, Clone)]
pub struct FormationRules {
    /// The initializer's `--name`.
    pub name: String,
    /// The initializer's data address, as the others should reach it.
    pub data_addr: String,
    /// The initializer's source addresses (`Member::sources`).
    pub sources: Vec<(String, String)>,
    pub worker_count: usize,
    /// The application's topology fingerprint.
    pub fingerprint: u64,
    pub resilient: bool,
    /// How long a formation step may wait on peers.
    pub step_timeout: Duration,
    /// Why a worker may not join this cluster (`--join`), if it may not.
    pub grow_refusal: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum InitializerEvent {
    /// The first message on a new control connection; `grow`: the worker
    /// was started with `--join`.
    Join {
        link: LinkId,
        name: String,
        data_addr: String,
        sources: Vec<(String, String)>,
        fingerprint: u64,
        grow: bool,
        /// With `grow`: the size of the batch it joins with.
        batch: usize,
        /// The worker has resilience files of an earlier run.
        has_files: bool,
    },
    /// A control connection closed, failed or went silent.
    LinkClosed {
        link: LinkId,
        why: String,
    },
    /// The member on `link` has all its data links up.
    LinksUp {
        link: LinkId,
    },
    /// The initializer's own data links of `generation` are up.
    OwnLinksUp {
        generation: Generation,
    },
    Tick {
        now: Instant,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum InitializerAction {
    /// Waiting for `more` workers to join.
    Waiting { more: usize },
    /// `name` joined on `link`: `joined` of `expected` workers are in.
    Accepted {
        link: LinkId,
        name: String,
        joined: usize,
        expected: usize,
    },
    /// Tell `link` why it is refused (and whether it may try again later),
    /// then close it.
    Refuse {
        link: LinkId,
        reason: String,
        retry: bool,
    },
    /// Close `link` (a connection this formation no longer uses).
    Close { link: LinkId },
    /// `name` left the cluster, then restarted with its files: send it
    /// `Leave` on `link` (it stops, done), then close the link.
    Dismiss { link: LinkId, name: String },
    Welcome {
        link: LinkId,
        /// The welcomed worker's name.
        name: String,
        members: Vec<Member>,
        generation: Generation,
    },
    /// Open this worker's data links to every other member.
    OpenDataLinks {
        members: Vec<Member>,
        generation: Generation,
    },
    Start {
        link: LinkId,
        generation: Generation,
    },
    /// The cluster is formed: `links[i]` is the control link of member
    /// `i + 1`.
    Formed {
        members: Vec<Member>,
        links: Vec<LinkId>,
        generation: Generation,
    },
    /// The formation failed and must start over under a new generation
    /// (the caller records it, then calls [`InitializerMembership::gather`]).
    Interrupted { reason: String },
    /// `name` joins the cluster (it is now in [`InitializerMembership::joined`]):
    /// record that durably before the actions that follow; if the cluster
    /// is `formed`, re-form it when the caller sees fit (it tears down,
    /// keeping the [`InitializerMembership::waiting`] links, and calls
    /// [`InitializerMembership::gather`]) and once `more` is 0 (the joiners
    /// of its batch still to come). Unless the formation under way takes it
    /// at once, the joiner's link waits, open, for the next one.
    Grow {
        name: String,
        formed: bool,
        more: usize,
    },
    /// A member of the formed cluster is gone.
    MemberLost {
        index: usize,
        name: String,
        why: String,
    },
}

/// The link of a member lost in a cluster without resilience.
const LOST: LinkId = LinkId(u64::MAX);

#[derive(Debug, Clone)]
struct Candidate {
    link: LinkId,
    name: String,
    data_addr: String,
    sources: Vec<(String, String)>,
    /// The batch it joins with (1 unless it grows the cluster).
    batch: usize,
}

#[derive(Debug)]
enum Phase {
    Idle,
    Gathering {
        candidates: Vec<Candidate>,
    },
    Linking {
        members: Vec<Member>,
        links: Vec<LinkId>,
        awaiting: BTreeSet<LinkId>,
        own_up: bool,
        deadline: Instant,
    },
    Formed {
        members: Vec<Member>,
        links: Vec<LinkId>,
    },
}

/// The initializer's membership machine.
#[derive(Debug)]
pub struct InitializerMembership {
    rules: FormationRules,
    generation: Generation,
    phase: Phase,
    /// Workers that joined after the cluster first formed, in joining order.
    joined: Vec<String>,
    /// Workers that left it (by a shrink).
    left: Vec<String>,
    /// Joiners whose links wait for the next formation.
    waiting: Vec<Candidate>,
    /// How many workers a formation waits for.
    worker_count: usize,
}

impl InitializerMembership {
    /// The machine of a cluster of `worker_count` workers (recorded by an
    /// earlier run; if none was, `rules.worker_count` plus the `joined` ones
    /// less the `left` ones).
    pub fn new(
        rules: FormationRules,
        joined: Vec<String>,
        left: Vec<String>,
        worker_count: Option<usize>,
    ) -> Self {
        let worker_count = worker_count
            .unwrap_or((rules.worker_count + joined.len()).saturating_sub(left.len()))
            .max(1);
        InitializerMembership {
            worker_count,
            rules,
            generation: 0,
            phase: Phase::Idle,
            joined,
            left,
            waiting: Vec::new(),
        }
    }

    /// The workers that joined after the cluster first formed.
    pub fn joined(&self) -> &[String] {
        &self.joined
    }

    /// The links of joiners waiting for the next formation: the caller
    /// keeps them open when it tears the formation down.
    pub fn waiting(&self) -> Vec<LinkId> {
        self.waiting.iter().map(|c| c.link).collect()
    }

    /// How many workers a formation waits for.
    pub fn worker_count(&self) -> usize {
        self.worker_count
    }

    /// `names` have left the cluster: formations no longer wait for them,
    /// and they are refused unless they join again (`--join`).
    pub fn leave(&mut self, names: &[String]) {
        self.left.extend(names.iter().cloned());
        self.worker_count = self.worker_count.saturating_sub(names.len()).max(1);
    }

    /// Is `name` a worker the cluster knows (formed with, or joined)?
    fn is_known(&self, name: &str) -> bool {
        let member = match &self.phase {
            Phase::Linking { members, .. } | Phase::Formed { members, .. } => {
                members.iter().any(|m| m.name == name)
            }
            _ => false,
        };
        member || (self.joined.iter().any(|j| j == name) && !self.left.iter().any(|l| l == name))
    }

    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// The members and their control links, once formed.
    pub fn formed(&self) -> Option<(&[Member], &[LinkId])> {
        match &self.phase {
            Phase::Formed { members, links } => Some((members, links)),
            _ => None,
        }
    }

    /// The link of each member of the formation in progress or formed.
    pub fn links(&self) -> Vec<LinkId> {
        match &self.phase {
            Phase::Idle => Vec::new(),
            Phase::Gathering { candidates } => candidates.iter().map(|c| c.link).collect(),
            Phase::Linking { links, .. } | Phase::Formed { links, .. } => links.clone(),
        }
    }

    pub fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Linking { deadline, .. } => Some(*deadline),
            _ => None,
        }
    }

    /// Begins gathering joins for a formation under `generation` (already
    /// recorded durably), closing every link of the previous one.
    pub fn gather(
        &mut self,
        generation: Generation,
        now: Instant,
        out: &mut Vec<InitializerAction>,
    ) {
        out.extend(
            self.links()
                .into_iter()
                .map(|link| InitializerAction::Close { link }),
        );
        self.generation = generation;
        let candidates = std::mem::take(&mut self.waiting);
        let more = self.worker_count() - 1 - candidates.len();
        self.phase = Phase::Gathering { candidates };
        if more > 0 {
            out.push(InitializerAction::Waiting { more });
        }
        self.maybe_welcome(now, out);
    }

    pub fn handle(
        &mut self,
        event: InitializerEvent,
        now: Instant,
        out: &mut Vec<InitializerAction>,
    ) {
        match event {
            InitializerEvent::Join {
                link,
                name,
                data_addr,
                sources,
                fingerprint,
                grow,
                batch,
                has_files,
            } => {
                let c = Candidate {
                    link,
                    name,
                    data_addr,
                    sources,
                    batch,
                };
                // A worker that left may join again only afresh: restarted
                // with its files, it is a leaver that missed its leave (it
                // was killed after the leave committed), so it is told again.
                let acceptable = self.refusal(&c, fingerprint).is_none();
                if acceptable && has_files && self.left.contains(&c.name) {
                    out.push(InitializerAction::Dismiss {
                        link: c.link,
                        name: c.name,
                    });
                } else if acceptable && grow && !self.is_known(&c.name) {
                    self.on_grow(c, now, out);
                } else {
                    self.on_join(c, fingerprint, now, out);
                }
            }
            InitializerEvent::LinkClosed { link, why } => self.on_closed(link, why, out),
            InitializerEvent::LinksUp { link } => {
                if let Phase::Linking { awaiting, .. } = &mut self.phase {
                    awaiting.remove(&link);
                }
                self.maybe_start(out);
            }
            InitializerEvent::OwnLinksUp { generation } => {
                if let Phase::Linking { own_up, .. } = &mut self.phase {
                    *own_up |= generation == self.generation;
                }
                self.maybe_start(out);
            }
            InitializerEvent::Tick { now } => {
                if let Phase::Linking { deadline, .. } = &self.phase {
                    if now >= *deadline {
                        let secs = self.rules.step_timeout.as_secs();
                        self.interrupt(
                            format!("waiting for every data link took longer than {secs} s"),
                            out,
                        );
                    }
                }
            }
        }
    }

    fn refusal(&self, c: &Candidate, fingerprint: u64) -> Option<String> {
        let name = &c.name;
        if fingerprint != self.rules.fingerprint {
            return Some(format!(
                "worker '{name}' runs a different application (topology fingerprint {fingerprint:#x}, \
                 the initializer's is {:#x}); start every worker with the same app and app version",
                self.rules.fingerprint
            ));
        }
        if *name == self.rules.name {
            return Some(format!(
                "'{name}' is the initializer's name; give each worker a unique --name"
            ));
        }
        None
    }

    /// Why a worker that left may not take part (unless it joins again).
    fn gone(&self, name: &str) -> Option<String> {
        self.left.iter().any(|l| l == name).then(|| {
            format!(
                "worker '{name}' left the cluster (shrink); to add it again, start it with --join \
                 and an empty --resilience-dir"
            )
        })
    }

    fn on_join(
        &mut self,
        c: Candidate,
        fingerprint: u64,
        now: Instant,
        out: &mut Vec<InitializerAction>,
    ) {
        if let Some(reason) = self.refusal(&c, fingerprint).or_else(|| self.gone(&c.name)) {
            out.push(InitializerAction::Refuse {
                link: c.link,
                reason,
                retry: false,
            });
            return;
        }
        // A name held by a connection not known to be closed: a second
        // process with that name, or the restart of one whose old
        // connection's close has not been noticed yet (its heartbeats stop
        // within the timeout). It may try again; nothing else changes.
        let mut reason = format!(
            "a worker named '{}' is already in the cluster; give each worker a unique --name",
            c.name
        );
        if !self.rules.resilient {
            reason.push_str(
                " (a worker that restarted can't rejoin a cluster that runs without \
                 --run-with-resilience: restart the whole cluster)",
            );
        }
        let taken = InitializerAction::Refuse {
            link: c.link,
            reason,
            retry: true,
        };
        let expected = self.worker_count();
        match &mut self.phase {
            Phase::Idle => out.push(InitializerAction::Close { link: c.link }),
            Phase::Gathering { candidates } => {
                if candidates.iter().any(|k| k.name == c.name) {
                    out.push(taken);
                    return;
                }
                out.push(InitializerAction::Accepted {
                    link: c.link,
                    name: c.name.clone(),
                    joined: candidates.len() + 2,
                    expected,
                });
                candidates.push(c);
                self.maybe_welcome(now, out);
            }
            Phase::Linking { members, links, .. } | Phase::Formed { members, links } => {
                let Some(index) = members.iter().position(|m| m.name == c.name) else {
                    // A worker that joined, waiting for the formation that
                    // takes it in, may try again; a stranger may not.
                    let joining = self.joined.contains(&c.name);
                    let reason = match joining {
                        true => format!("the cluster re-forms to take in '{}'", c.name),
                        false => self.full(&c.name),
                    };
                    out.push(InitializerAction::Refuse {
                        link: c.link,
                        reason,
                        retry: joining,
                    });
                    return;
                };
                if links[index - 1] != LOST {
                    out.push(taken);
                    return;
                }
                let reason = format!(
                    "worker '{}' restarted, but the cluster runs without --run-with-resilience, so it can't \
                     rejoin; restart the whole cluster",
                    c.name
                );
                out.push(InitializerAction::Refuse {
                    link: c.link,
                    reason,
                    retry: false,
                });
            }
        }
    }

    /// A worker that is not a member asks to join (`--join`): it becomes
    /// one, in the formation under way if it is still gathering, else in
    /// the next (its link waits, open).
    fn on_grow(&mut self, c: Candidate, now: Instant, out: &mut Vec<InitializerAction>) {
        if let Some(why) = &self.rules.grow_refusal {
            let reason = format!("worker '{}' can't join: {why}", c.name);
            out.push(InitializerAction::Refuse {
                link: c.link,
                reason,
                retry: false,
            });
            return;
        }
        // One that left and joins again is no longer "left".
        if let Some(i) = self.left.iter().position(|l| *l == c.name) {
            self.left.remove(i);
        } else {
            self.joined.push(c.name.clone());
        }
        self.worker_count += 1;
        let name = c.name.clone();
        let formed = matches!(self.phase, Phase::Formed { .. });
        // The joiners waiting, this one included, and the largest batch
        // any of them joins with.
        let waiting = self.waiting.len() + 1;
        let batch = self
            .waiting
            .iter()
            .map(|w| w.batch)
            .fold(c.batch, usize::max);
        out.push(InitializerAction::Grow {
            name: name.clone(),
            formed,
            more: batch.saturating_sub(waiting),
        });
        match &self.phase {
            // Still gathering: it is simply one more candidate.
            Phase::Gathering { .. } => self.on_join(c, self.rules.fingerprint, now, out),
            Phase::Linking { .. } => {
                self.waiting.push(c);
                self.interrupt(format!("worker '{name}' joins"), out);
            }
            Phase::Formed { .. } | Phase::Idle => self.waiting.push(c),
        }
    }

    fn full(&self, name: &str) -> String {
        let names: Vec<&str> = match &self.phase {
            Phase::Linking { members, .. } | Phase::Formed { members, .. } => {
                members.iter().map(|m| m.name.as_str()).collect()
            }
            _ => Vec::new(),
        };
        format!(
            "the cluster already has its {} workers ({}); a worker named '{name}' can't join: restart a member with \
             its original command, or start the new worker with --join (and --run-with-resilience) to grow the cluster",
            names.len(),
            names.join(", ")
        )
    }

    fn on_closed(&mut self, link: LinkId, why: String, out: &mut Vec<InitializerAction>) {
        self.waiting.retain(|c| c.link != link);
        match &mut self.phase {
            Phase::Idle => {}
            Phase::Gathering { candidates } => candidates.retain(|c| c.link != link),
            Phase::Linking { members, links, .. } => {
                if let Some(i) = links.iter().position(|l| *l == link) {
                    let name = members[i + 1].name.clone();
                    self.interrupt(format!("worker '{name}': {why}"), out);
                }
            }
            Phase::Formed { members, links } => {
                if let Some(i) = links.iter().position(|l| *l == link) {
                    let name = members[i + 1].name.clone();
                    out.push(InitializerAction::MemberLost {
                        index: i + 1,
                        name,
                        why,
                    });
                    if self.rules.resilient {
                        self.phase = Phase::Idle;
                    } else {
                        // Without resilience the others go on; the lost
                        // member's link is no longer watched.
                        links[i] = LOST;
                    }
                }
            }
        }
    }

    fn interrupt(&mut self, reason: String, out: &mut Vec<InitializerAction>) {
        out.extend(
            self.links()
                .into_iter()
                .map(|link| InitializerAction::Close { link }),
        );
        self.phase = Phase::Idle;
        out.push(InitializerAction::Interrupted { reason });
    }

    fn maybe_welcome(&mut self, now: Instant, out: &mut Vec<InitializerAction>) {
        let expected = self.worker_count();
        let Phase::Gathering { candidates } = &mut self.phase else {
            return;
        };
        if candidates.len() + 1 < expected {
            return;
        }
        let mut candidates = std::mem::take(candidates);
        candidates.sort_by(|a, b| a.name.cmp(&b.name));
        let mut members = vec![Member {
            name: self.rules.name.clone(),
            data_addr: self.rules.data_addr.clone(),
            sources: self.rules.sources.clone(),
        }];
        members.extend(candidates.iter().map(|c| Member {
            name: c.name.clone(),
            data_addr: c.data_addr.clone(),
            sources: c.sources.clone(),
        }));
        let links: Vec<LinkId> = candidates.iter().map(|c| c.link).collect();
        let generation = self.generation;
        for c in &candidates {
            out.push(InitializerAction::Welcome {
                link: c.link,
                name: c.name.clone(),
                members: members.clone(),
                generation,
            });
        }
        out.push(InitializerAction::OpenDataLinks {
            members: members.clone(),
            generation,
        });
        let awaiting = links.iter().copied().collect();
        let deadline = now + self.rules.step_timeout;
        // Alone, there are no data links to wait for.
        let own_up = members.len() == 1;
        self.phase = Phase::Linking {
            members,
            links,
            awaiting,
            own_up,
            deadline,
        };
        self.maybe_start(out);
    }

    fn maybe_start(&mut self, out: &mut Vec<InitializerAction>) {
        let Phase::Linking {
            members,
            links,
            awaiting,
            own_up: true,
            ..
        } = &mut self.phase
        else {
            return;
        };
        if !awaiting.is_empty() {
            return;
        }
        let generation = self.generation;
        out.extend(
            links
                .iter()
                .map(|&link| InitializerAction::Start { link, generation }),
        );
        let (members, links) = (std::mem::take(members), std::mem::take(links));
        out.push(InitializerAction::Formed {
            members: members.clone(),
            links: links.clone(),
            generation,
        });
        self.phase = Phase::Formed { members, links };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: u64 = 0xfeed;

    fn machine(worker_count: usize, resilient: bool) -> InitializerMembership {
        InitializerMembership::new(
            FormationRules {
                name: "initializer".into(),
                data_addr: "127.0.0.1:1".into(),
                sources: Vec::new(),
                worker_count,
                fingerprint: FP,
                resilient,
                step_timeout: Duration::from_secs(20),
                grow_refusal: (!resilient).then(|| "no resilience".to_string()),
            },
            Vec::new(),
            Vec::new(),
            None,
        )
    }

    fn join(
        m: &mut InitializerMembership,
        link: u64,
        name: &str,
        now: Instant,
    ) -> Vec<InitializerAction> {
        join_as(m, link, name, false, 1, now)
    }

    /// `name` sends `Join` on `link`; `grow`: started with `--join`, one
    /// of `batch` joiners.
    fn join_as(
        m: &mut InitializerMembership,
        link: u64,
        name: &str,
        grow: bool,
        batch: usize,
        now: Instant,
    ) -> Vec<InitializerAction> {
        let mut out = Vec::new();
        let e = InitializerEvent::Join {
            link: LinkId(link),
            name: name.into(),
            data_addr: format!("d{link}"),
            sources: Vec::new(),
            fingerprint: FP,
            grow,
            batch,
            has_files: false,
        };
        m.handle(e, now, &mut out);
        out
    }

    fn ev(
        m: &mut InitializerMembership,
        e: InitializerEvent,
        now: Instant,
    ) -> Vec<InitializerAction> {
        let mut out = Vec::new();
        m.handle(e, now, &mut out);
        out
    }

    fn formed_cluster(now: Instant) -> InitializerMembership {
        let mut m = machine(3, true);
        m.gather(1, now, &mut Vec::new());
        join(&mut m, 10, "w2", now);
        join(&mut m, 11, "w1", now);
        ev(&mut m, InitializerEvent::OwnLinksUp { generation: 1 }, now);
        ev(&mut m, InitializerEvent::LinksUp { link: LinkId(10) }, now);
        let out = ev(&mut m, InitializerEvent::LinksUp { link: LinkId(11) }, now);
        assert!(
            matches!(out.last(), Some(InitializerAction::Formed { .. })),
            "{out:?}"
        );
        m
    }

    #[test]
    fn forms_with_members_sorted_by_name_after_every_link() {
        let now = Instant::now();
        let mut m = machine(3, true);
        let mut out = Vec::new();
        m.gather(7, now, &mut out);
        assert_eq!(out, vec![InitializerAction::Waiting { more: 2 }]);
        join(&mut m, 10, "w2", now);
        let out = join(&mut m, 11, "w1", now);
        let names = |ms: &[Member]| ms.iter().map(|m| m.name.clone()).collect::<Vec<_>>();
        let welcomed: Vec<_> = out
            .iter()
            .filter_map(|a| match a {
                InitializerAction::Welcome {
                    link,
                    members,
                    generation: 7,
                    ..
                } => Some((*link, names(members))),
                _ => None,
            })
            .collect();
        let order = vec!["initializer".to_string(), "w1".into(), "w2".into()];
        assert_eq!(
            welcomed,
            vec![(LinkId(11), order.clone()), (LinkId(10), order.clone())]
        );
        assert!(ev(&mut m, InitializerEvent::LinksUp { link: LinkId(10) }, now).is_empty());
        assert!(
            ev(&mut m, InitializerEvent::OwnLinksUp { generation: 6 }, now).is_empty(),
            "stale generation"
        );
        assert!(
            ev(&mut m, InitializerEvent::OwnLinksUp { generation: 7 }, now).is_empty(),
            "w1 not up yet"
        );
        let out = ev(&mut m, InitializerEvent::LinksUp { link: LinkId(11) }, now);
        assert_eq!(out.len(), 3);
        assert_eq!(
            out[0],
            InitializerAction::Start {
                link: LinkId(11),
                generation: 7
            }
        );
        let InitializerAction::Formed {
            members,
            links,
            generation: 7,
        } = &out[2]
        else {
            panic!("{out:?}")
        };
        assert_eq!(
            (names(members), links.clone()),
            (order, vec![LinkId(11), LinkId(10)])
        );
    }

    #[test]
    fn refuses_strangers_duplicates_and_other_apps() {
        let now = Instant::now();
        let mut m = machine(3, true);
        m.gather(1, now, &mut Vec::new());
        join(&mut m, 1, "w1", now);
        let mut out = Vec::new();
        let other_app = InitializerEvent::Join {
            link: LinkId(2),
            name: "w9".into(),
            data_addr: "x".into(),
            sources: Vec::new(),
            fingerprint: 1,
            grow: false,
            batch: 1,
            has_files: false,
        };
        m.handle(other_app, now, &mut out);
        assert!(
            matches!(&out[..], [InitializerAction::Refuse { reason, .. }] if reason.contains("different application"))
        );
        let out = join(&mut m, 3, "w1", now);
        assert!(
            matches!(&out[..], [InitializerAction::Refuse { reason, .. }] if reason.contains("already in the cluster"))
        );
        let out = join(&mut m, 4, "initializer", now);
        assert!(
            matches!(&out[..], [InitializerAction::Refuse { reason, .. }] if reason.contains("initializer's name"))
        );
        // A candidate whose connection closed no longer holds its name.
        ev(
            &mut m,
            InitializerEvent::LinkClosed {
                link: LinkId(1),
                why: "closed".into(),
            },
            now,
        );
        let out = join(&mut m, 5, "w1", now);
        assert!(
            matches!(&out[0], InitializerAction::Accepted { joined: 2, .. }),
            "{out:?}"
        );
    }

    #[test]
    fn after_formation_strangers_are_refused_and_members_lost() {
        let now = Instant::now();
        let mut m = formed_cluster(now);
        let out = join(&mut m, 20, "w3", now);
        assert!(
            matches!(&out[..], [InitializerAction::Refuse { reason, .. }]
            if reason.contains("the cluster already has its 3 workers (initializer, w1, w2)"))
        );
        assert!(m.formed().is_some(), "a stranger changes nothing");
        assert!(ev(
            &mut m,
            InitializerEvent::LinkClosed {
                link: LinkId(20),
                why: "x".into()
            },
            now
        )
        .is_empty());
        let out = join(&mut m, 21, "w2", now);
        assert!(
            matches!(&out[..], [InitializerAction::Refuse { reason, retry: true, .. }]
            if reason.contains("already in the cluster")),
            "a second process with a member's name is refused, may retry, and rolls nothing back"
        );
        assert!(m.formed().is_some());
        let out = ev(
            &mut m,
            InitializerEvent::LinkClosed {
                link: LinkId(10),
                why: "closed".into(),
            },
            now,
        );
        assert!(
            matches!(&out[..], [InitializerAction::MemberLost { index: 2, name, .. }] if name == "w2"),
            "only its own link makes a member lost"
        );
    }

    fn grow(m: &mut InitializerMembership, link: u64, name: &str) -> Vec<InitializerAction> {
        join_as(m, link, name, true, 1, Instant::now())
    }

    #[test]
    fn a_batch_of_joiners_is_taken_in_once_all_of_it_waits() {
        let now = Instant::now();
        let mut m = formed_cluster(now);
        let mut more = Vec::new();
        for (link, name) in [(30, "w3"), (31, "w4"), (32, "w5")] {
            let out = join_as(&mut m, link, name, true, 3, now);
            let [InitializerAction::Grow {
                more: m,
                formed: true,
                ..
            }] = out[..]
            else {
                panic!("{out:?}")
            };
            more.push(m);
        }
        assert_eq!(more, [2, 1, 0]);
        assert_eq!(m.waiting().len(), 3);
        assert_eq!(m.worker_count(), 6);
    }

    #[test]
    fn a_joiner_grows_a_formed_cluster_and_is_then_a_member() {
        let now = Instant::now();
        let mut m = formed_cluster(now);
        let out = grow(&mut m, 30, "w3");
        assert_eq!(
            out,
            vec![InitializerAction::Grow {
                name: "w3".into(),
                formed: true,
                more: 0,
            }]
        );
        assert_eq!(m.joined(), ["w3".to_string()]);
        assert_eq!(m.waiting(), vec![LinkId(30)], "its link waits, open");
        assert!(m.formed().is_some(), "formed until the caller re-forms");
        let twin = grow(&mut m, 31, "w3");
        assert!(
            matches!(&twin[..], [InitializerAction::Refuse { retry: true, .. }]),
            "a second process with the joiner's name: {twin:?}"
        );
        let mut out = Vec::new();
        m.gather(2, now, &mut out);
        assert!(
            !out.contains(&InitializerAction::Close { link: LinkId(30) }),
            "{out:?}"
        );
        assert_eq!(out.last(), Some(&InitializerAction::Waiting { more: 2 }));
        join(&mut m, 32, "w1", now);
        let out = join(&mut m, 33, "w2", now);
        let welcomed: Vec<_> = out
            .iter()
            .filter_map(|a| match a {
                InitializerAction::Welcome { name, members, .. } => {
                    Some((name.clone(), members.len()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(welcomed.len(), 3, "{out:?}");
        assert!(welcomed.iter().all(|(_, n)| *n == 4));
        // A known joiner (a restart with its --join command) is a member:
        // no second grow.
        assert!(!out
            .iter()
            .any(|a| matches!(a, InitializerAction::Grow { .. })));
        assert_eq!(m.worker_count(), 4);
    }

    #[test]
    fn a_leaver_back_with_its_files_is_dismissed_and_without_them_joins_afresh() {
        let now = Instant::now();
        let mut m = formed_cluster(now);
        m.leave(&["w1".to_string()]);
        m.gather(2, now, &mut Vec::new());
        let back = |m: &mut InitializerMembership, link: u64, grow: bool, has_files: bool| {
            let e = InitializerEvent::Join {
                link: LinkId(link),
                name: "w1".into(),
                data_addr: format!("d{link}"),
                sources: Vec::new(),
                fingerprint: FP,
                grow,
                batch: 1,
                has_files,
            };
            ev(m, e, now)
        };
        for (link, grow) in [(40, false), (41, true)] {
            assert_eq!(
                back(&mut m, link, grow, true),
                vec![InitializerAction::Dismiss {
                    link: LinkId(link),
                    name: "w1".into(),
                }],
                "restarted with its files (grow: {grow})"
            );
        }
        let out = back(&mut m, 42, false, false);
        assert!(
            matches!(&out[..], [InitializerAction::Refuse { retry: false, reason, .. }]
                if reason.contains("left the cluster")),
            "no files and no --join: {out:?}"
        );
        let out = back(&mut m, 43, true, false);
        assert!(
            matches!(&out[..], [InitializerAction::Grow { name, .. }, InitializerAction::Accepted { .. }]
                if name == "w1"),
            "no files and --join: it joins again, {out:?}"
        );
    }

    /// The initializer and "w1" (on link 1), formed, without resilience.
    fn formed_pair_without_resilience(now: Instant) -> InitializerMembership {
        let mut m = machine(2, false);
        m.gather(1, now, &mut Vec::new());
        join(&mut m, 1, "w1", now);
        ev(&mut m, InitializerEvent::OwnLinksUp { generation: 1 }, now);
        ev(&mut m, InitializerEvent::LinksUp { link: LinkId(1) }, now);
        m
    }

    #[test]
    fn joining_without_resilience_is_refused_and_changes_nothing() {
        let now = Instant::now();
        let mut m = formed_pair_without_resilience(now);
        let out = grow(&mut m, 2, "w2");
        assert!(
            matches!(&out[..], [InitializerAction::Refuse { reason, retry: false, .. }]
            if reason.contains("w2") && reason.contains("no resilience")),
            "{out:?}"
        );
        assert!(m.formed().is_some() && m.joined().is_empty());
    }

    #[test]
    fn without_resilience_a_restarted_member_is_refused() {
        let now = Instant::now();
        let mut m = formed_pair_without_resilience(now);
        let out = join(&mut m, 2, "w1", now);
        assert!(
            matches!(&out[..], [InitializerAction::Refuse { retry: true, .. }]),
            "its old link is still up"
        );
        let out = ev(
            &mut m,
            InitializerEvent::LinkClosed {
                link: LinkId(1),
                why: "closed".into(),
            },
            now,
        );
        assert!(matches!(
            &out[..],
            [InitializerAction::MemberLost { index: 1, .. }]
        ));
        assert!(m.formed().is_some(), "the others go on");
        let out = join(&mut m, 3, "w1", now);
        assert!(
            matches!(&out[..], [InitializerAction::Refuse { reason, retry: false, .. }] if reason.contains("can't rejoin"))
        );
        let again = ev(
            &mut m,
            InitializerEvent::LinkClosed {
                link: LinkId(1),
                why: "closed".into(),
            },
            now,
        );
        assert!(again.is_empty(), "lost once");
    }

    #[test]
    fn a_slow_or_lost_member_interrupts_linking() {
        let now = Instant::now();
        let mut m = machine(2, true);
        m.gather(1, now, &mut Vec::new());
        join(&mut m, 1, "w1", now);
        let out = ev(
            &mut m,
            InitializerEvent::Tick {
                now: now + Duration::from_secs(21),
            },
            now,
        );
        assert_eq!(out[0], InitializerAction::Close { link: LinkId(1) });
        assert!(
            matches!(&out[1], InitializerAction::Interrupted { reason } if reason.contains("longer than 20 s"))
        );
        let mut out = Vec::new();
        m.gather(2, now, &mut out);
        join(&mut m, 2, "w1", now);
        let out = ev(
            &mut m,
            InitializerEvent::LinkClosed {
                link: LinkId(2),
                why: "its control link closed".into(),
            },
            now,
        );
        assert!(
            matches!(&out[1], InitializerAction::Interrupted { reason } if reason.contains("w1"))
        );
    }
}
