//! `SinkSession` against a model sink connector that follows the sink rules
//! of docs/connectors.md (the same rules as quoll's file sink connector),
//! through random writes, checkpoints, votes, lost connections, sink
//! restarts and rollbacks: the sink's committed bytes are always a prefix
//! of the stream, and after a final checkpoint they are all of it.

use super::*;
use proptest::prelude::*;

/// The byte at `offset` of the stream: output regenerated after a rollback
/// is the same as before it.
fn byte_at(offset: u64) -> u8 {
    (offset % 251) as u8
}

fn output(from: u64, len: u64) -> Bytes {
    (from..from + len).map(byte_at).collect::<Vec<u8>>().into()
}

#[derive(Debug, Default)]
struct ModelSink {
    /// Durable: the committed bytes, and a prepared transaction.
    committed: Vec<u8>,
    prepared: Option<(String, Vec<u8>)>,
    /// Lost on a restart or a new connection.
    pending: Vec<u8>,
    broken: bool,
    /// Whether the next vote is forced to abort.
    refuse_next: bool,
}

impl ModelSink {
    fn new_connection(&mut self) {
        self.pending.clear();
        self.broken = false;
    }

    fn handle(&mut self, msg: ConnectorMessage) -> Vec<ConnectorMessage> {
        match msg {
            ConnectorMessage::Hello { version, .. } => {
                assert_eq!(version, SINK_PROTOCOL_VERSION);
                vec![ConnectorMessage::Ok {
                    initial_credits: 100,
                }]
            }
            ConnectorMessage::Notify { stream_id, .. } => vec![ConnectorMessage::NotifyAck {
                success: true,
                stream_id,
                point_of_ref: 0,
            }],
            ConnectorMessage::Message {
                stream_id: DATA_STREAM,
                message_id,
                payload,
                ..
            } => {
                assert!(self.prepared.is_none(), "data while a transaction is open");
                let base = self.committed.len() as u64;
                let have = base + self.pending.len() as u64;
                if message_id + payload.len() as u64 <= base {
                } else if message_id < base || message_id > have {
                    self.broken = true;
                } else {
                    self.pending.truncate((message_id - base) as usize);
                    self.pending.extend_from_slice(&payload);
                }
                Vec::new()
            }
            ConnectorMessage::Message { payload, .. } => {
                let reply = match TwoPc::decode(&payload).expect("valid 2PC") {
                    TwoPc::ListUncommitted { rtag } => TwoPc::ReplyUncommitted {
                        rtag,
                        txn_ids: self.prepared.iter().map(|(t, _)| t.clone()).collect(),
                    },
                    TwoPc::Phase1 { txn_id, where_list } => {
                        let base = self.committed.len() as u64;
                        let ok = !self.broken
                            && !std::mem::take(&mut self.refuse_next)
                            && self.prepared.is_none()
                            && where_list
                                == vec![(DATA_STREAM, base, base + self.pending.len() as u64)];
                        if ok {
                            self.prepared =
                                Some((txn_id.clone(), std::mem::take(&mut self.pending)));
                        }
                        TwoPc::Reply { txn_id, commit: ok }
                    }
                    TwoPc::Phase2 { txn_id, commit } => {
                        if self.prepared.as_ref().is_some_and(|(t, _)| *t == txn_id) {
                            let (_, bytes) = self.prepared.take().expect("checked");
                            if commit {
                                self.committed.extend_from_slice(&bytes);
                            }
                        }
                        self.pending.clear();
                        self.broken = false;
                        return Vec::new();
                    }
                    other => panic!("unexpected {other:?}"),
                };
                vec![reply.to_frame().expect("encodes")]
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Write(u8, u8),
    /// A checkpoint's barrier: PHASE1 and the vote (`refuse`: the sink
    /// votes abort).
    Checkpoint {
        refuse: bool,
    },
    /// The open checkpoint's outcome (`others_ok`: the other workers' parts
    /// were good).
    Decide {
        others_ok: bool,
    },
    LoseConnection,
    RestartSink,
    Connect,
    Rollback,
    /// The sink's answers so far reach the worker.
    Deliver,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..5, 1u8..20).prop_map(|(n, len)| Op::Write(n, len)),
        3 => prop::bool::weighted(0.1).prop_map(|refuse| Op::Checkpoint { refuse }),
        3 => prop::bool::weighted(0.8).prop_map(|others_ok| Op::Decide { others_ok }),
        1 => Just(Op::LoseConnection),
        1 => Just(Op::RestartSink),
        3 => Just(Op::Connect),
        6 => Just(Op::Deliver),
        1 => Just(Op::Rollback),
    ]
}

struct World {
    session: SinkSession,
    sink: ModelSink,
    up: bool,
    next_id: CheckpointId,
    /// The last committed checkpoint and its offset.
    last_commit: Option<(CheckpointId, u64)>,
    votes: Vec<(CheckpointId, Result<(), String>)>,
    /// The checkpoint in flight: its id and the offset it covers.
    open: Option<(CheckpointId, u64)>,
    /// Frames from the sink not yet read by the session.
    inbox: VecDeque<ConnectorMessage>,
    /// Checkpoints whose vote the session still owes.
    owed: std::collections::BTreeSet<CheckpointId>,
}

impl World {
    fn run(&mut self, actions: Vec<SinkAction>) {
        let mut queue: VecDeque<SinkAction> = actions.into();
        while let Some(a) = queue.pop_front() {
            match a {
                SinkAction::Send(frames) => {
                    for f in frames {
                        if !self.up {
                            break;
                        }
                        // The sink's answers are in flight until `deliver`.
                        self.inbox.extend(self.sink.handle(f));
                    }
                }
                SinkAction::Vote { id, vote } => {
                    assert!(
                        self.owed.remove(&id),
                        "a vote on {id} nobody asked for, or a second one"
                    );
                    self.votes.push((id, vote));
                }
                SinkAction::Reconnect { .. } => {
                    self.up = false;
                    self.inbox.clear();
                }
            }
        }
    }

    /// The sink's answers reach the session.
    fn deliver(&mut self) {
        while let Some(m) = self.inbox.pop_front() {
            let a = self.session.on_frame(m);
            self.run(a);
        }
    }

    fn connect(&mut self) {
        if !self.up {
            self.up = true;
            self.sink.new_connection();
            let a = self.session.connected();
            self.run(a);
        }
    }

    fn lose(&mut self) {
        if self.up {
            self.up = false;
            self.inbox.clear();
            let a = self.session.disconnected();
            self.run(a);
        }
    }

    fn checkpoint(&mut self, refuse: bool) {
        if self.open.is_some() {
            return; // one checkpoint in flight at a time
        }
        self.next_id += 1;
        let id = self.next_id;
        self.sink.refuse_next = refuse;
        self.votes.clear();
        let end = self.session.end();
        self.owed.insert(id);
        let a = self.session.pre_commit(id);
        self.run(a);
        self.open = Some((id, end));
    }

    fn decide(&mut self, others_ok: bool) {
        let Some((id, end)) = self.open.take() else {
            return;
        };
        // A vote not in yet: the coordinator can't commit without it and
        // abandons the checkpoint (a timeout, another worker's failure).
        let ok = self.votes.iter().any(|(v, r)| *v == id && r.is_ok());
        if ok && others_ok {
            self.last_commit = Some((id, end));
            let a = self.session.commit(id);
            self.run(a);
        } else {
            let a = self.session.abort(id);
            self.run(a);
        }
        assert!(self.owed.is_empty(), "votes never given: {:?}", self.owed);
    }

    fn check_prefix(&self) {
        let c = &self.sink.committed;
        assert_eq!(
            c.as_slice(),
            &output(0, c.len() as u64)[..],
            "sink holds wrong bytes"
        );
        let covered = self.last_commit.map_or(0, |(_, o)| o);
        assert!(
            c.len() as u64 <= covered,
            "sink committed more than any checkpoint covers"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn committed_output_is_exactly_the_stream(ops in prop::collection::vec(op(), 1..80)) {
        let mut w = World {
            session: SinkSession::new(true, "c", "app", "w1", "out"),
            sink: ModelSink::default(),
            up: false,
            next_id: 0,
            last_commit: None,
            votes: Vec::new(),
            open: None,
            owed: Default::default(),
            inbox: VecDeque::new(),
        };
        let a = w.session.restore(None, 0);
        w.run(a);
        for op in ops {
            match op {
                Op::Write(n, len) => {
                    let mut msgs = Vec::new();
                    let mut at = w.session.end();
                    for _ in 0..n {
                        msgs.push(output(at, u64::from(len)));
                        at += u64::from(len);
                    }
                    let a = w.session.write(msgs);
                    w.run(a);
                }
                Op::Checkpoint { refuse } => w.checkpoint(refuse),
                Op::Decide { others_ok } => w.decide(others_ok),
                Op::LoseConnection => w.lose(),
                Op::RestartSink => {
                    w.lose();
                    w.sink.pending.clear();
                }
                Op::Connect => w.connect(),
                Op::Deliver => w.deliver(),
                Op::Rollback => {
                    // The checkpoint in flight never commits.
                    w.open = None;
                    let (c, off) = w.last_commit.map_or((None, 0), |(c, o)| (Some(c), o));
                    let a = w.session.restore(c, off);
                    w.run(a);
                    assert!(w.owed.is_empty(), "votes never given: {:?}", w.owed);
                    w.lose();
                }
            }
            w.check_prefix();
        }
        // Settle: the open checkpoint decided, then connected, one
        // checkpoint that everyone votes for.
        w.decide(true);
        w.connect();
        w.deliver();
        w.checkpoint(false);
        w.deliver();
        w.decide(true);
        let end = w.session.end();
        prop_assert_eq!(w.last_commit.map(|(_, o)| o), Some(end));
        prop_assert_eq!(w.sink.committed.len() as u64, end);
        w.check_prefix();
    }
}

#[test]
fn two_pc_layouts_round_trip_and_match_the_spec() {
    let p1 = TwoPc::Phase1 {
        txn_id: "s:c_id=3".into(),
        where_list: vec![(1, 10, 20)],
    };
    let bytes = p1.encode().expect("encodes");
    let mut want = vec![203, 0, 8];
    want.extend_from_slice(b"s:c_id=3");
    want.extend_from_slice(&1u32.to_be_bytes());
    for v in [1u64, 10, 20] {
        want.extend_from_slice(&v.to_be_bytes());
    }
    assert_eq!(bytes, want);
    for m in [
        p1,
        TwoPc::ListUncommitted { rtag: 7 },
        TwoPc::ReplyUncommitted {
            rtag: 7,
            txn_ids: vec!["a".into(), "b".into()],
        },
        TwoPc::Reply {
            txn_id: "t".into(),
            commit: false,
        },
        TwoPc::Phase2 {
            txn_id: "t".into(),
            commit: true,
        },
        TwoPc::WorkersLeft {
            rtag: 1,
            workers: vec!["w2".into()],
        },
    ] {
        assert_eq!(TwoPc::decode(&m.encode().expect("encodes")), Ok(m));
    }
    assert_eq!(TwoPc::decode(&[]), Err(TwoPcError::Empty));
    assert_eq!(TwoPc::decode(&[9]), Err(TwoPcError::UnknownTag(9)));
    assert!(matches!(
        TwoPc::decode(&[204, 0, 1, b'x', 1, 0]),
        Err(TwoPcError::Layout(_))
    ));
    assert_eq!(txn_checkpoint("a-w-b-id-c", "a-w-b-id-c:c_id=12"), Some(12));
    assert_eq!(txn_checkpoint("a-w-b-id-c", "other:c_id=12"), None);
}

#[test]
fn a_refused_notify_or_an_error_closes_with_a_reason() {
    let mut s = SinkSession::new(true, "c", "app", "w1", "out");
    s.connected();
    s.on_frame(ConnectorMessage::Ok {
        initial_credits: 10,
    });
    let a = s.on_frame(ConnectorMessage::NotifyAck {
        success: false,
        stream_id: 1,
        point_of_ref: 0,
    });
    assert!(matches!(&a[0], SinkAction::Send(f) if matches!(f[0], ConnectorMessage::Error { .. })));
    assert!(
        matches!(a.last(), Some(SinkAction::Reconnect { reason: Some(r) }) if r.contains("refused stream 1 ('app-w-w1-id-out')"))
    );
    s.connected();
    let a = s.on_frame(ConnectorMessage::error("disk full"));
    assert_eq!(
        a,
        vec![SinkAction::Reconnect {
            reason: Some("the sink connector sent ERROR: disk full".into())
        }]
    );
    // A checkpoint while not connected is an abort vote, at once.
    assert!(matches!(
        &s.pre_commit(4)[..],
        [SinkAction::Vote {
            id: 4,
            vote: Err(_)
        }]
    ));
}

#[test]
fn without_resilience_outputs_flow_after_ok_and_notify_ack() {
    let mut s = SinkSession::new(false, "c", "app", "w1", "out");
    s.restore(None, 0);
    let held = s.write([Bytes::from_static(b"ab")]);
    assert!(
        held.is_empty(),
        "nothing is sent before the connection is up"
    );
    let hello = s.connected();
    assert!(
        matches!(&hello[..], [SinkAction::Send(f)] if f.len() == 2),
        "no LIST_UNCOMMITTED"
    );
    assert!(s
        .on_frame(ConnectorMessage::Ok { initial_credits: 5 })
        .is_empty());
    let a = s.on_frame(ConnectorMessage::NotifyAck {
        success: true,
        stream_id: 1,
        point_of_ref: 0,
    });
    assert!(
        matches!(&a[..], [SinkAction::Send(f)] if matches!(&f[0], ConnectorMessage::Message { message_id: 0, .. }))
    );
    let a = s.write([Bytes::from_static(b"cde"), Bytes::from_static(b"f")]);
    let ids: Vec<u64> = match &a[..] {
        [SinkAction::Send(f)] => f
            .iter()
            .map(|m| match m {
                ConnectorMessage::Message { message_id, .. } => *message_id,
                _ => u64::MAX,
            })
            .collect(),
        _ => Vec::new(),
    };
    assert_eq!(ids, vec![2, 5], "message ids are byte offsets");
    assert_eq!(s.kept_bytes(), 0);
    assert!(matches!(
        &s.pre_commit(1)[..],
        [SinkAction::Vote {
            id: 1,
            vote: Ok(())
        }]
    ));
}

#[test]
fn workers_left_goes_out_on_stream_0_only_on_a_connection_that_is_up() {
    let mut s = SinkSession::new(false, "c", "app", "w1", "out");
    s.restore(None, 0);
    assert!(s.workers_left(vec!["w2".into()]).is_empty(), "down");
    s.connected();
    assert!(s.workers_left(vec!["w2".into()]).is_empty(), "handshake");
    s.on_frame(ConnectorMessage::Ok { initial_credits: 5 });
    s.on_frame(ConnectorMessage::NotifyAck {
        success: true,
        stream_id: 1,
        point_of_ref: 0,
    });
    let a = s.workers_left(vec!["w2".into(), "w3".into()]);
    let [SinkAction::Send(frames)] = &a[..] else {
        panic!("{a:?}")
    };
    let [ConnectorMessage::Message {
        stream_id: 0,
        payload,
        ..
    }] = &frames[..]
    else {
        panic!("{frames:?}")
    };
    assert!(matches!(
        TwoPc::decode(payload),
        Ok(TwoPc::WorkersLeft { workers, .. }) if workers == ["w2", "w3"]
    ));
    assert!(s.workers_left(Vec::new()).is_empty());
}
