//! A non-initializer worker's side of membership: connect, join, open the
//! data links, wait for `Start`, then watch the link to the initializer.
//!
//! # States
//!
//! ```text
//!  join() ─▶ Connecting ─ Connected ─▶ Joining ─ Welcome ─▶ Linking ─ own links up ─▶ AwaitingStart ─ Start ─▶ Formed
//!              ▲                          │ Refused: fatal     │ link closed / deadline      │                    │
//!              └────────── Interrupted ◀──┴────────────────────┴─────────────────────────────┘                    │
//!                                                              InitializerLost / Reform (caller recovers) ◀───────┘
//! ```
//!
//! In `Joining`, `Leave` ends the worker like a refusal, but as done
//! (`Dismissed`): it had left the cluster before it restarted.
//!
//! # Invariants
//!
//! - Only messages on the current link to the initializer are acted on.
//! - A refusal is final, and so is `Leave` in answer to `Join` (the worker
//!   left the cluster before it restarted); every other failure before
//!   `Start` starts the formation over from a new connection.
//! - A member that is not the initializer answers `Join` with `Redirect`:
//!   the joiner connects to the initializer from then on. More than
//!   [`MAX_REDIRECTS`] redirects in a row refuse the worker (a loop).
//! - `Formed` is reported once per formation, with the generation of the
//!   welcome that began it.

use super::{Generation, LinkId};
use crate::checkpoint::CheckpointId;
use crate::key_group::KeyGroupMap;
use crate::wire::{Control, Member};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq)]
pub enum JoinerEvent {
    /// A connection to the initializer is up.
    Connected {
        link: LinkId,
    },
    /// A control message from the initializer.
    Message {
        link: LinkId,
        msg: Control,
    },
    /// This worker's data links of `generation` are up both ways.
    OwnLinksUp {
        generation: Generation,
    },
    /// The link to the initializer closed, failed or went silent.
    LinkClosed {
        link: LinkId,
        why: String,
    },
    Tick {
        now: Instant,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum JoinerAction {
    /// Connect to the initializer after `after` (retrying until it answers).
    Connect {
        after: Duration,
    },
    /// Send `Join` on `link`.
    SendJoin {
        link: LinkId,
    },
    /// The initializer is at `to`: connect there from now on.
    Redirect {
        to: String,
    },
    OpenDataLinks {
        members: Vec<Member>,
        me: usize,
        generation: Generation,
    },
    SendLinksUp {
        link: LinkId,
    },
    /// Close `link` and every data link of the attempt.
    Close {
        link: LinkId,
    },
    Formed {
        link: LinkId,
        welcomed: Welcomed,
    },
    /// The formation failed before `Start`; it starts over.
    Interrupted {
        reason: String,
    },
    /// The initializer refused this worker: stop with this reason.
    Refused {
        reason: String,
    },
    /// The initializer answered the join with `Leave`: this worker left the
    /// cluster (a shrink) before its restart, so it stops, done.
    Dismissed,
    /// The formed cluster lost its initializer.
    InitializerLost {
        why: String,
    },
    /// The initializer re-forms the cluster (it lost another worker).
    Reform {
        reason: String,
    },
}

/// A formation as the initializer's `Welcome` describes it to one worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Welcomed {
    pub members: Vec<Member>,
    /// This worker's index in `members`.
    pub me: usize,
    pub generation: Generation,
    /// The checkpoint every member restores.
    pub rollback_to: Option<CheckpointId>,
    /// This worker wrote a part of `rollback_to`.
    pub has_part: bool,
    /// Members leaving the cluster (they own no key groups).
    pub leaving: Vec<String>,
    pub resilient: bool,
    /// Which member owns each key group.
    pub placement: KeyGroupMap,
}

#[derive(Debug)]
enum Phase {
    Idle,
    Connecting,
    Joining {
        link: LinkId,
    },
    Linking {
        link: LinkId,
        welcomed: Welcomed,
        deadline: Instant,
    },
    AwaitingStart {
        link: LinkId,
        welcomed: Welcomed,
        deadline: Instant,
    },
    Formed {
        link: LinkId,
    },
}

/// A joining worker's membership machine.
#[derive(Debug)]
pub struct JoinerMembership {
    name: String,
    step_timeout: Duration,
    /// The pause before connecting again after a failed attempt.
    retry_after: Duration,
    /// How long a refusal that may pass (`retry`) is tried again.
    refusal_patience: Duration,
    /// When the current run of passing refusals began.
    refused_since: Option<Instant>,
    /// Redirects since the last welcome.
    redirects: u32,
    phase: Phase,
}

/// Redirects in a row after which a joiner gives up.
pub const MAX_REDIRECTS: u32 = 3;

impl JoinerMembership {
    pub fn new(
        name: String,
        step_timeout: Duration,
        retry_after: Duration,
        refusal_patience: Duration,
    ) -> Self {
        JoinerMembership {
            name,
            step_timeout,
            retry_after,
            refusal_patience,
            refused_since: None,
            redirects: 0,
            phase: Phase::Idle,
        }
    }

    /// Starts (or starts again) joining the cluster, connecting after `after`.
    pub fn join(&mut self, after: Duration, out: &mut Vec<JoinerAction>) {
        self.phase = Phase::Connecting;
        out.push(JoinerAction::Connect { after });
    }

    /// The current link to the initializer, if any.
    pub fn link(&self) -> Option<LinkId> {
        match self.phase {
            Phase::Idle | Phase::Connecting => None,
            Phase::Joining { link }
            | Phase::Linking { link, .. }
            | Phase::AwaitingStart { link, .. } => Some(link),
            Phase::Formed { link } => Some(link),
        }
    }

    pub fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Linking { deadline, .. } | Phase::AwaitingStart { deadline, .. } => {
                Some(*deadline)
            }
            _ => None,
        }
    }

    pub fn handle(&mut self, event: JoinerEvent, now: Instant, out: &mut Vec<JoinerAction>) {
        match event {
            JoinerEvent::Connected { link } => {
                if matches!(self.phase, Phase::Connecting) {
                    self.phase = Phase::Joining { link };
                    out.push(JoinerAction::SendJoin { link });
                } else {
                    out.push(JoinerAction::Close { link });
                }
            }
            JoinerEvent::Message { link, msg } => {
                if self.link() == Some(link) {
                    self.on_message(link, msg, now, out);
                }
            }
            JoinerEvent::OwnLinksUp { generation } => {
                if let Phase::Linking {
                    link,
                    welcomed,
                    deadline,
                } = &self.phase
                {
                    if welcomed.generation == generation {
                        let (link, welcomed, deadline) = (*link, welcomed.clone(), *deadline);
                        out.push(JoinerAction::SendLinksUp { link });
                        self.phase = Phase::AwaitingStart {
                            link,
                            welcomed,
                            deadline,
                        };
                    }
                }
            }
            JoinerEvent::LinkClosed { link, why } => {
                if self.link() != Some(link) {
                    return;
                }
                if matches!(self.phase, Phase::Formed { .. }) {
                    self.phase = Phase::Idle;
                    out.push(JoinerAction::InitializerLost { why });
                } else {
                    self.interrupt(link, format!("the initializer: {why}"), out);
                }
            }
            JoinerEvent::Tick { now } => {
                if let (Some(deadline), Some(link)) = (self.deadline(), self.link()) {
                    if now >= deadline {
                        let secs = self.step_timeout.as_secs();
                        self.interrupt(
                            link,
                            format!("the cluster did not start within {secs} s"),
                            out,
                        );
                    }
                }
            }
        }
    }

    fn on_message(
        &mut self,
        link: LinkId,
        msg: Control,
        now: Instant,
        out: &mut Vec<JoinerAction>,
    ) {
        match (msg, &self.phase) {
            (
                Control::Welcome {
                    members,
                    generation,
                    rollback_to,
                    has_part,
                    leaving,
                    resilient,
                    placement,
                },
                Phase::Joining { .. },
            ) => {
                let Some(me) = members.iter().position(|m| m.name == self.name) else {
                    let reason =
                        "the initializer's member list does not name this worker".to_string();
                    self.phase = Phase::Idle;
                    out.push(JoinerAction::Refused { reason });
                    return;
                };
                let placement = match KeyGroupMap::from_runs(&placement, members.len()) {
                    Ok(p) => p,
                    Err(e) => {
                        let reason = format!("the initializer's welcome is unusable: {e}");
                        self.phase = Phase::Idle;
                        out.push(JoinerAction::Refused { reason });
                        return;
                    }
                };
                out.push(JoinerAction::OpenDataLinks {
                    members: members.clone(),
                    me,
                    generation,
                });
                let welcomed = Welcomed {
                    members,
                    me,
                    generation,
                    rollback_to,
                    has_part,
                    leaving,
                    resilient,
                    placement,
                };
                self.refused_since = None;
                self.redirects = 0;
                self.phase = Phase::Linking {
                    link,
                    welcomed,
                    deadline: now + self.step_timeout,
                };
            }
            (Control::Refused { reason, retry }, _) => {
                let since = *self.refused_since.get_or_insert(now);
                if retry && now < since + self.refusal_patience {
                    let reason = format!(
                        "the initializer refused this worker for now ({reason}); trying again"
                    );
                    self.interrupt(link, reason, out);
                    return;
                }
                self.phase = Phase::Idle;
                out.push(JoinerAction::Close { link });
                out.push(JoinerAction::Refused {
                    reason: format!("the initializer refused this worker: {reason}"),
                });
            }
            (Control::Leave { .. }, Phase::Joining { .. }) => {
                self.phase = Phase::Idle;
                out.push(JoinerAction::Close { link });
                out.push(JoinerAction::Dismissed);
            }
            (Control::Redirect { to }, Phase::Joining { .. }) => {
                out.push(JoinerAction::Close { link });
                self.redirects += 1;
                if self.redirects > MAX_REDIRECTS {
                    self.phase = Phase::Idle;
                    out.push(JoinerAction::Refused {
                        reason: format!(
                            "redirected {} times in a row (last to {to}) without reaching the \
                             initializer; give --join the initializer's --control address",
                            self.redirects
                        ),
                    });
                    return;
                }
                out.push(JoinerAction::Redirect { to });
                self.join(Duration::ZERO, out);
            }
            (Control::Start { .. }, Phase::AwaitingStart { welcomed, .. }) => {
                let welcomed = welcomed.clone();
                self.phase = Phase::Formed { link };
                out.push(JoinerAction::Formed { link, welcomed });
            }
            (Control::Reform { reason }, Phase::Formed { .. }) => {
                self.phase = Phase::Idle;
                out.push(JoinerAction::Reform { reason });
            }
            (Control::Shutdown { .. } | Control::Ping | Control::Pong, _) => {}
            (other, Phase::Formed { .. }) => drop(other),
            (other, _) => {
                self.interrupt(
                    link,
                    format!("the initializer sent {other:?} during cluster formation"),
                    out,
                );
            }
        }
    }

    fn interrupt(&mut self, link: LinkId, reason: String, out: &mut Vec<JoinerAction>) {
        out.push(JoinerAction::Close { link });
        out.push(JoinerAction::Interrupted { reason });
        self.join(self.retry_after, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETRY: Duration = Duration::from_millis(200);
    const PATIENCE: Duration = Duration::from_secs(6);

    fn members() -> Vec<Member> {
        ["initializer", "w1", "w2"]
            .iter()
            .map(|n| Member {
                name: n.to_string(),
                data_addr: format!("{n}:1"),
                sources: Vec::new(),
            })
            .collect()
    }

    fn welcome(generation: Generation) -> Control {
        Control::Welcome {
            members: members(),
            generation,
            rollback_to: Some(3),
            has_part: true,
            leaving: Vec::new(),
            resilient: true,
            placement: KeyGroupMap::even(3).runs(),
        }
    }

    /// "w1", connected to the initializer on link 1, its `Join` sent.
    fn joining(now: Instant) -> JoinerMembership {
        let mut m = JoinerMembership::new("w1".into(), Duration::from_secs(20), RETRY, PATIENCE);
        m.join(Duration::ZERO, &mut Vec::new());
        ev(&mut m, JoinerEvent::Connected { link: LinkId(1) }, now);
        m
    }

    fn ev(m: &mut JoinerMembership, e: JoinerEvent, now: Instant) -> Vec<JoinerAction> {
        let mut out = Vec::new();
        m.handle(e, now, &mut out);
        out
    }

    #[test]
    fn a_redirect_sends_the_joiner_to_the_initializer_and_a_loop_is_refused() {
        let now = Instant::now();
        let mut m = JoinerMembership::new("w2".into(), Duration::from_secs(20), RETRY, PATIENCE);
        m.join(Duration::ZERO, &mut Vec::new());
        for round in 1..=MAX_REDIRECTS + 1 {
            let link = LinkId(u64::from(round));
            ev(&mut m, JoinerEvent::Connected { link }, now);
            let msg = Control::Redirect {
                to: "init:1".into(),
            };
            let out = ev(&mut m, JoinerEvent::Message { link, msg }, now);
            if round <= MAX_REDIRECTS {
                assert_eq!(
                    out,
                    vec![
                        JoinerAction::Close { link },
                        JoinerAction::Redirect {
                            to: "init:1".into()
                        },
                        JoinerAction::Connect {
                            after: Duration::ZERO
                        },
                    ]
                );
            } else {
                let [JoinerAction::Close { .. }, JoinerAction::Refused { reason }] = &out[..]
                else {
                    panic!("a loop not refused: {out:?}")
                };
                assert!(reason.contains("redirected 4 times"), "{reason}");
            }
        }
    }

    #[test]
    fn a_welcome_with_an_unusable_placement_is_refused() {
        let now = Instant::now();
        let mut m = JoinerMembership::new("w2".into(), Duration::from_secs(20), RETRY, PATIENCE);
        m.join(Duration::ZERO, &mut Vec::new());
        ev(&mut m, JoinerEvent::Connected { link: LinkId(4) }, now);
        let Control::Welcome { members, .. } = welcome(9) else {
            unreachable!()
        };
        let msg = Control::Welcome {
            members,
            generation: 9,
            rollback_to: None,
            has_part: false,
            leaving: Vec::new(),
            resilient: true,
            placement: vec![(0, 1000), (3, 24)],
        };
        let out = ev(
            &mut m,
            JoinerEvent::Message {
                link: LinkId(4),
                msg,
            },
            now,
        );
        let [JoinerAction::Refused { reason }] = &out[..] else {
            panic!("not refused: {out:?}")
        };
        assert!(reason.contains("names worker 3 of only 3"), "{reason}");
    }

    #[test]
    fn joins_links_up_and_starts() {
        let now = Instant::now();
        let mut m = JoinerMembership::new("w2".into(), Duration::from_secs(20), RETRY, PATIENCE);
        let mut out = Vec::new();
        m.join(Duration::ZERO, &mut out);
        assert_eq!(
            out,
            vec![JoinerAction::Connect {
                after: Duration::ZERO
            }]
        );
        assert_eq!(
            ev(&mut m, JoinerEvent::Connected { link: LinkId(4) }, now),
            vec![JoinerAction::SendJoin { link: LinkId(4) }]
        );
        let out = ev(
            &mut m,
            JoinerEvent::Message {
                link: LinkId(4),
                msg: welcome(9),
            },
            now,
        );
        assert_eq!(
            out,
            vec![JoinerAction::OpenDataLinks {
                members: members(),
                me: 2,
                generation: 9
            }]
        );
        assert!(
            ev(
                &mut m,
                JoinerEvent::Message {
                    link: LinkId(4),
                    msg: Control::Start { generation: 9 }
                },
                now
            )
            .iter()
            .any(|a| matches!(a, JoinerAction::Interrupted { .. })),
            "Start before LinksUp is a protocol error"
        );
    }

    #[test]
    fn full_formation_then_loss() {
        let now = Instant::now();
        let mut m = joining(now);
        ev(
            &mut m,
            JoinerEvent::Message {
                link: LinkId(1),
                msg: welcome(2),
            },
            now,
        );
        assert!(
            ev(&mut m, JoinerEvent::OwnLinksUp { generation: 1 }, now).is_empty(),
            "stale generation"
        );
        assert_eq!(
            ev(&mut m, JoinerEvent::OwnLinksUp { generation: 2 }, now),
            vec![JoinerAction::SendLinksUp { link: LinkId(1) }]
        );
        assert!(ev(
            &mut m,
            JoinerEvent::Message {
                link: LinkId(9),
                msg: Control::Start { generation: 2 }
            },
            now
        )
        .is_empty());
        let out = ev(
            &mut m,
            JoinerEvent::Message {
                link: LinkId(1),
                msg: Control::Start { generation: 2 },
            },
            now,
        );
        assert_eq!(
            out,
            vec![JoinerAction::Formed {
                link: LinkId(1),
                welcomed: Welcomed {
                    members: members(),
                    me: 1,
                    generation: 2,
                    rollback_to: Some(3),
                    has_part: true,
                    leaving: Vec::new(),
                    resilient: true,
                    placement: KeyGroupMap::even(3),
                }
            }]
        );
        assert!(ev(
            &mut m,
            JoinerEvent::LinkClosed {
                link: LinkId(7),
                why: "x".into()
            },
            now
        )
        .is_empty());
        let out = ev(
            &mut m,
            JoinerEvent::LinkClosed {
                link: LinkId(1),
                why: "its control link closed".into(),
            },
            now,
        );
        assert_eq!(
            out,
            vec![JoinerAction::InitializerLost {
                why: "its control link closed".into()
            }]
        );
    }

    #[test]
    fn refusal_is_final_and_other_failures_retry() {
        let now = Instant::now();
        let mut m = joining(now);
        let out = ev(
            &mut m,
            JoinerEvent::LinkClosed {
                link: LinkId(1),
                why: "closed".into(),
            },
            now,
        );
        assert_eq!(out[0], JoinerAction::Close { link: LinkId(1) });
        assert!(matches!(out[1], JoinerAction::Interrupted { .. }));
        assert_eq!(out[2], JoinerAction::Connect { after: RETRY });
        ev(&mut m, JoinerEvent::Connected { link: LinkId(2) }, now);
        ev(
            &mut m,
            JoinerEvent::Message {
                link: LinkId(2),
                msg: welcome(3),
            },
            now,
        );
        let out = ev(
            &mut m,
            JoinerEvent::Tick {
                now: now + Duration::from_secs(25),
            },
            now,
        );
        assert!(
            matches!(&out[1], JoinerAction::Interrupted { reason } if reason.contains("within 20 s"))
        );
        ev(&mut m, JoinerEvent::Connected { link: LinkId(3) }, now);
        let out = ev(
            &mut m,
            JoinerEvent::Message {
                link: LinkId(3),
                msg: Control::Refused {
                    reason: "no".into(),
                    retry: false,
                },
            },
            now,
        );
        assert!(matches!(&out[1], JoinerAction::Refused { reason } if reason.ends_with("no")));
        assert_eq!(m.link(), None);
    }

    #[test]
    fn leave_in_answer_to_join_dismisses_the_worker() {
        let now = Instant::now();
        let mut m = joining(now);
        let out = ev(
            &mut m,
            JoinerEvent::Message {
                link: LinkId(1),
                msg: Control::Leave { generation: 7 },
            },
            now,
        );
        assert_eq!(
            out,
            vec![
                JoinerAction::Close { link: LinkId(1) },
                JoinerAction::Dismissed
            ]
        );
        assert_eq!(m.link(), None);
    }

    #[test]
    fn a_refusal_that_may_pass_is_tried_again_for_a_while() {
        let t0 = Instant::now();
        let mut m = JoinerMembership::new("w1".into(), Duration::from_secs(20), RETRY, PATIENCE);
        m.join(Duration::ZERO, &mut Vec::new());
        let busy = || Control::Refused {
            reason: "name taken".into(),
            retry: true,
        };
        for (i, secs) in [0u64, 3, 5].into_iter().enumerate() {
            let link = LinkId(i as u64 + 1);
            let now = t0 + Duration::from_secs(secs);
            ev(&mut m, JoinerEvent::Connected { link }, now);
            let out = ev(&mut m, JoinerEvent::Message { link, msg: busy() }, now);
            assert_eq!(
                out.last(),
                Some(&JoinerAction::Connect { after: RETRY }),
                "at {secs} s: {out:?}"
            );
        }
        let now = t0 + Duration::from_secs(7);
        ev(&mut m, JoinerEvent::Connected { link: LinkId(9) }, now);
        let out = ev(
            &mut m,
            JoinerEvent::Message {
                link: LinkId(9),
                msg: busy(),
            },
            now,
        );
        assert!(
            matches!(out.last(), Some(JoinerAction::Refused { reason }) if reason.contains("name taken"))
        );
    }
}
