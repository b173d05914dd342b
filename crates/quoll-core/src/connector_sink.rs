//! The worker side of a connector sink (Wallaroo's `ConnectorSink`): the
//! two-phase-commit messages carried inside connector frames, and
//! [`SinkSession`], the state machine that decides what a worker sends to
//! its sink connector process. Pure: the socket task in `quoll-py`
//! (`connector_sink.rs`) feeds it events and carries out its actions.
//!
//! # Wire
//!
//! The worker connects and sends HELLO(`"v0.0.1"`), NOTIFY for stream 1
//! (named `<app>-w-<worker>-id-<sink>`, with the committed offset as its
//! point of reference) and, with resilience only, LIST_UNCOMMITTED: its
//! presence tells the sink connector that the stream's data is final only
//! at PHASE2 commit. Each output is a
//! MESSAGE on stream 1 whose `message_id` is the byte offset of its payload in
//! the sink's stream. 2PC messages travel as MESSAGE payloads on stream 0
//! (`u8` tag, then the body, see [`TwoPc`]).
//!
//! # Invariants (with resilience)
//!
//! - `committed` is the stream offset that the last committed checkpoint
//!   covers; the sink has (or is told to commit) every byte before it, and
//!   the session keeps every output from `committed` on, so whatever a sink
//!   connector lost (a restart, an abort) can be sent again.
//! - At most one transaction is open: between PHASE1 and PHASE2 no stream-1
//!   data is sent. A transaction `<stream>:c_id=<N>` covers
//!   `[committed, end)` as of checkpoint N's barrier.
//! - After every PHASE2, and on every new connection, data is sent again
//!   from `committed`: a sink that discarded uncommitted bytes gets them
//!   back, at the same offsets, and one that kept them sees an offset below
//!   its end and overwrites (documented sink rule).
//! - An in-doubt transaction (listed by REPLY_UNCOMMITTED) is committed
//!   only when the session knows its checkpoint committed (a commit it saw,
//!   or the checkpoint the worker restored); anything else is aborted.
//! - Nothing here blocks: a vote that can't be given (not connected, a
//!   transaction already open) is an abort vote at once, and every
//!   `pre_commit` gets exactly one [`SinkAction::Vote`] (the worker waits
//!   for it before a rollback): from the sink's REPLY, or an abort vote
//!   when the connection goes, the checkpoint is abandoned or the worker
//!   rolls back first.
//!
//! Without resilience there are no transactions: outputs are sent once, in
//! order, and held only while the sink is not connected (at-least-once as
//! far as the connection goes; docs/connectors.md).

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use thiserror::Error;

use crate::checkpoint::CheckpointId;
use crate::connector::{put_short, ConnectorError, ConnectorMessage, Reader};

/// The version a worker sends in HELLO to a sink connector (with the `v`).
pub const SINK_PROTOCOL_VERSION: &str = "v0.0.1";
/// The stream that carries 2PC messages.
pub const CONTROL_STREAM: u64 = 0;
/// The stream that carries the sink's output.
pub const DATA_STREAM: u64 = 1;
/// A sink must grant at least this many credits in OK.
pub const MIN_CREDITS: u32 = 2;

/// 2PC tags (the first payload byte of a stream-0 MESSAGE).
const LIST_UNCOMMITTED: u8 = 201;
const REPLY_UNCOMMITTED: u8 = 202;
const PHASE1: u8 = 203;
const REPLY: u8 = 204;
const PHASE2: u8 = 205;
const WORKERS_LEFT: u8 = 206;

/// A malformed 2PC payload.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TwoPcError {
    /// An empty stream-0 payload.
    #[error("empty 2PC message")]
    Empty,
    /// A tag outside 201..=206.
    #[error("unknown 2PC message tag {0}")]
    UnknownTag(u8),
    /// A body that does not match its tag's layout.
    #[error("malformed 2PC message: {0}")]
    Layout(#[from] ConnectorError),
}

/// One 2PC message (the payload of a MESSAGE on stream 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TwoPc {
    /// 201, worker to sink: which transactions are in doubt?
    ListUncommitted { rtag: u64 },
    /// 202, sink to worker: the in-doubt transactions.
    ReplyUncommitted { rtag: u64, txn_ids: Vec<String> },
    /// 203, worker to sink: prepare `txn_id`, covering `(stream, start, end)`.
    Phase1 {
        txn_id: String,
        where_list: Vec<(u64, u64, u64)>,
    },
    /// 204, sink to worker: the vote.
    Reply { txn_id: String, commit: bool },
    /// 205, worker to sink: the decision.
    Phase2 { txn_id: String, commit: bool },
    /// 206, worker to sink: workers that left the cluster.
    WorkersLeft { rtag: u64, workers: Vec<String> },
}

impl TwoPc {
    /// The payload bytes (tag and body, no inner length).
    pub fn encode(&self) -> Result<Vec<u8>, ConnectorError> {
        let mut out = Vec::new();
        let n32 = |n: usize| {
            u32::try_from(n).map_err(|_| ConnectorError::FrameTooLarge {
                len: n as u64,
                max: u32::MAX as u64,
            })
        };
        match self {
            TwoPc::ListUncommitted { rtag } => {
                out.push(LIST_UNCOMMITTED);
                out.extend_from_slice(&rtag.to_be_bytes());
            }
            TwoPc::ReplyUncommitted { rtag, txn_ids }
            | TwoPc::WorkersLeft {
                rtag,
                workers: txn_ids,
            } => {
                let (tag, field) = if matches!(self, TwoPc::ReplyUncommitted { .. }) {
                    (REPLY_UNCOMMITTED, "txn_id")
                } else {
                    (WORKERS_LEFT, "worker_name")
                };
                out.push(tag);
                out.extend_from_slice(&rtag.to_be_bytes());
                out.extend_from_slice(&n32(txn_ids.len())?.to_be_bytes());
                for t in txn_ids {
                    put_short(&mut out, t.as_bytes(), "2PC", field)?;
                }
            }
            TwoPc::Phase1 { txn_id, where_list } => {
                out.push(PHASE1);
                put_short(&mut out, txn_id.as_bytes(), "PHASE1", "txn_id")?;
                out.extend_from_slice(&n32(where_list.len())?.to_be_bytes());
                for (s, a, b) in where_list {
                    out.extend_from_slice(&s.to_be_bytes());
                    out.extend_from_slice(&a.to_be_bytes());
                    out.extend_from_slice(&b.to_be_bytes());
                }
            }
            TwoPc::Reply { txn_id, commit } | TwoPc::Phase2 { txn_id, commit } => {
                out.push(if matches!(self, TwoPc::Reply { .. }) {
                    REPLY
                } else {
                    PHASE2
                });
                put_short(&mut out, txn_id.as_bytes(), "2PC", "txn_id")?;
                out.push(u8::from(*commit));
            }
        }
        Ok(out)
    }

    /// Decodes a stream-0 payload; strict about its length.
    pub fn decode(payload: &[u8]) -> Result<TwoPc, TwoPcError> {
        let (&tag, body) = payload.split_first().ok_or(TwoPcError::Empty)?;
        let name = match tag {
            LIST_UNCOMMITTED => "LIST_UNCOMMITTED",
            REPLY_UNCOMMITTED => "REPLY_UNCOMMITTED",
            PHASE1 => "PHASE1",
            REPLY => "REPLY",
            PHASE2 => "PHASE2",
            WORKERS_LEFT => "WORKERS_LEFT",
            other => return Err(TwoPcError::UnknownTag(other)),
        };
        let mut r = Reader {
            frame: name,
            buf: Bytes::copy_from_slice(body),
        };
        let strings = |r: &mut Reader, field| -> Result<Vec<String>, ConnectorError> {
            let n = r.u32("count")?;
            (0..n).map(|_| r.short_string(field)).collect()
        };
        let vote = |r: &mut Reader| -> Result<(String, bool), ConnectorError> {
            let txn_id = r.short_string("txn_id")?;
            let commit = r.take("commit", 1)?[0] != 0;
            Ok((txn_id, commit))
        };
        let msg = match tag {
            LIST_UNCOMMITTED => TwoPc::ListUncommitted {
                rtag: r.u64("rtag")?,
            },
            REPLY_UNCOMMITTED => TwoPc::ReplyUncommitted {
                rtag: r.u64("rtag")?,
                txn_ids: strings(&mut r, "txn_id")?,
            },
            PHASE1 => {
                let txn_id = r.short_string("txn_id")?;
                let n = r.u32("count")?;
                let mut where_list = Vec::new();
                for _ in 0..n {
                    where_list.push((r.u64("stream_id")?, r.u64("start_por")?, r.u64("end_por")?));
                }
                TwoPc::Phase1 { txn_id, where_list }
            }
            REPLY => {
                let (txn_id, commit) = vote(&mut r)?;
                TwoPc::Reply { txn_id, commit }
            }
            PHASE2 => {
                let (txn_id, commit) = vote(&mut r)?;
                TwoPc::Phase2 { txn_id, commit }
            }
            _ => TwoPc::WorkersLeft {
                rtag: r.u64("rtag")?,
                workers: strings(&mut r, "worker_name")?,
            },
        };
        if !r.buf.is_empty() {
            return Err(ConnectorError::TrailingBytes {
                frame: name,
                extra: r.buf.len(),
            }
            .into());
        }
        Ok(msg)
    }

    /// The MESSAGE frame (stream 0, id 0, no event time, no key) carrying it.
    pub fn to_frame(&self) -> Result<ConnectorMessage, ConnectorError> {
        Ok(ConnectorMessage::Message {
            stream_id: CONTROL_STREAM,
            message_id: 0,
            event_time: 0,
            key: Bytes::new(),
            payload: self.encode()?.into(),
        })
    }
}

/// The name of a worker's stream into a sink (Wallaroo's layout).
pub fn stream_name(app: &str, worker: &str, sink: &str) -> String {
    format!("{app}-w-{worker}-id-{sink}")
}

/// The transaction id of checkpoint `id` on `stream`.
pub fn txn_id(stream: &str, id: CheckpointId) -> String {
    format!("{stream}:c_id={id}")
}

/// The checkpoint of a transaction id of `stream` (None: another stream's,
/// or not of that form).
pub fn txn_checkpoint(stream: &str, txn: &str) -> Option<CheckpointId> {
    txn.strip_prefix(stream)?
        .strip_prefix(":c_id=")?
        .parse()
        .ok()
}

/// What the session asks of its socket task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkAction {
    /// Write these frames, in order.
    Send(Vec<ConnectorMessage>),
    /// The vote on checkpoint `id`: `Err` with the reason is an abort vote.
    Vote {
        id: CheckpointId,
        vote: Result<(), String>,
    },
    /// Close the connection (after sending what came before) and connect
    /// again later; `reason` is None for a quiet close (RESTART, a rollback).
    Reconnect { reason: Option<String> },
}

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conn {
    Down,
    /// HELLO, NOTIFY and LIST_UNCOMMITTED sent; waiting for the three answers.
    Handshake {
        ok: bool,
        notified: bool,
    },
    Up,
}

/// The open transaction, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Txn {
    None,
    /// PHASE1 sent, the vote not in yet.
    Voting {
        id: CheckpointId,
        end: u64,
    },
    /// Voted commit; waiting for the checkpoint's outcome.
    Voted {
        id: CheckpointId,
        end: u64,
    },
}

/// Decisions remembered for in-doubt transactions after a reconnect.
const OUTCOMES_KEPT: usize = 16;

/// The worker side of one connector sink on one worker.
#[derive(Debug)]
pub struct SinkSession {
    resilient: bool,
    cookie: String,
    app: String,
    worker: String,
    stream: String,
    conn: Conn,
    txn: Txn,
    /// Offset covered by the last committed checkpoint.
    committed: u64,
    /// Offset after the last output.
    end: u64,
    /// Offset up to which output went out on this connection.
    sent: u64,
    /// Outputs not yet safe to forget: from `committed` on (resilient) or
    /// not yet sent (not resilient), each with its offset.
    kept: VecDeque<(u64, Bytes)>,
    /// Recent decisions by checkpoint (true: committed).
    outcomes: BTreeMap<CheckpointId, bool>,
    rtag: u64,
}

impl SinkSession {
    /// A session for `sink` of `app` on `worker`; nothing is sent before
    /// [`SinkSession::connected`].
    pub fn new(resilient: bool, cookie: &str, app: &str, worker: &str, sink: &str) -> Self {
        SinkSession {
            resilient,
            cookie: cookie.to_owned(),
            app: app.to_owned(),
            worker: worker.to_owned(),
            stream: stream_name(app, worker, sink),
            conn: Conn::Down,
            txn: Txn::None,
            committed: 0,
            end: 0,
            sent: 0,
            kept: VecDeque::new(),
            outcomes: BTreeMap::new(),
            rtag: 0,
        }
    }

    /// The stream's name (`<app>-w-<worker>-id-<sink>`).
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// True once the handshake is done on the current connection.
    pub fn is_up(&self) -> bool {
        self.conn == Conn::Up
    }

    /// The offset after the last output.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The offset the last committed checkpoint covers.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Bytes of output held (for a bound while disconnected).
    pub fn kept_bytes(&self) -> u64 {
        self.end - self.kept.front().map_or(self.end, |(o, _)| *o)
    }

    /// A connection was made: the handshake's three frames.
    pub fn connected(&mut self) -> Vec<SinkAction> {
        self.conn = Conn::Handshake {
            ok: false,
            notified: false,
        };
        self.rtag += 1;
        let mut frames = vec![
            ConnectorMessage::Hello {
                version: SINK_PROTOCOL_VERSION.into(),
                cookie: self.cookie.clone(),
                program_name: self.app.clone(),
                instance_name: self.worker.clone(),
            },
            ConnectorMessage::Notify {
                stream_id: DATA_STREAM,
                stream_name: self.stream.clone(),
                point_of_ref: self.committed,
            },
        ];
        // LIST_UNCOMMITTED is also what tells a sink connector that this
        // stream uses 2PC: without resilience it is not sent.
        if self.resilient {
            if let Ok(f) = (TwoPc::ListUncommitted { rtag: self.rtag }).to_frame() {
                frames.push(f);
            }
        }
        vec![SinkAction::Send(frames)]
    }

    /// The connection is gone (closed, failed, or closed on our request).
    pub fn disconnected(&mut self) -> Vec<SinkAction> {
        self.conn = Conn::Down;
        match self.txn {
            Txn::Voting { id, .. } => {
                self.txn = Txn::None;
                vec![SinkAction::Vote {
                    id,
                    vote: Err(
                        "the connection to the sink connector was lost before its vote".into(),
                    ),
                }]
            }
            _ => Vec::new(),
        }
    }

    /// A frame from the sink connector.
    pub fn on_frame(&mut self, msg: ConnectorMessage) -> Vec<SinkAction> {
        match (self.conn, msg) {
            (_, ConnectorMessage::Error { message }) => {
                self.close_on(format!("the sink connector sent ERROR: {message}"), false)
            }
            (_, ConnectorMessage::Restart { .. }) => {
                let mut out = self.disconnected();
                out.push(SinkAction::Reconnect { reason: None });
                out
            }
            (
                Conn::Handshake {
                    ok: false,
                    notified,
                },
                ConnectorMessage::Ok { initial_credits },
            ) => {
                if initial_credits < MIN_CREDITS {
                    return self.close_on(
                        format!("the sink connector granted {initial_credits} credits in OK; at least {MIN_CREDITS} are needed"),
                        true,
                    );
                }
                self.conn = Conn::Handshake { ok: true, notified };
                self.up_without_2pc()
            }
            (
                Conn::Handshake {
                    ok,
                    notified: false,
                },
                ConnectorMessage::NotifyAck {
                    success, stream_id, ..
                },
            ) => {
                if !success || stream_id != DATA_STREAM {
                    return self.close_on(
                        format!(
                            "the sink connector refused stream {stream_id} ('{}') in NOTIFY_ACK",
                            self.stream
                        ),
                        true,
                    );
                }
                self.conn = Conn::Handshake { ok, notified: true };
                self.up_without_2pc()
            }
            (
                Conn::Handshake {
                    ok: true,
                    notified: true,
                },
                ConnectorMessage::Message {
                    stream_id: CONTROL_STREAM,
                    payload,
                    ..
                },
            ) => match TwoPc::decode(&payload) {
                Ok(TwoPc::ReplyUncommitted { rtag, txn_ids }) if rtag == self.rtag => {
                    self.resolve(txn_ids)
                }
                Ok(other) => self.close_on(
                    format!(
                        "expected REPLY_UNCOMMITTED (rtag {}), got {other:?}",
                        self.rtag
                    ),
                    true,
                ),
                Err(e) => self.close_on(format!("bad 2PC message: {e}"), true),
            },
            (
                Conn::Up,
                ConnectorMessage::Message {
                    stream_id: CONTROL_STREAM,
                    payload,
                    ..
                },
            ) => match TwoPc::decode(&payload) {
                Ok(TwoPc::Reply { txn_id, commit }) => self.on_vote(&txn_id, commit),
                Ok(other) => self.close_on(format!("unexpected 2PC message {other:?}"), true),
                Err(e) => self.close_on(format!("bad 2PC message: {e}"), true),
            },
            (Conn::Down, _) => Vec::new(),
            (_, other) => self.close_on(
                format!("unexpected {} frame", other.frame_type().name()),
                true,
            ),
        }
    }

    /// Output of the stage, in order: one payload per message.
    pub fn write(&mut self, messages: impl IntoIterator<Item = Bytes>) -> Vec<SinkAction> {
        for m in messages {
            let len = m.len() as u64;
            self.kept.push_back((self.end, m));
            self.end += len;
        }
        self.send_data()
    }

    /// Checkpoint `id`'s barrier: PHASE1 over `[committed, end)`, or an
    /// abort vote at once if that can't be asked now. Without resilience
    /// the vote is yes at once.
    pub fn pre_commit(&mut self, id: CheckpointId) -> Vec<SinkAction> {
        if !self.resilient {
            return vec![SinkAction::Vote { id, vote: Ok(()) }];
        }
        let refuse = |why: &str| {
            vec![SinkAction::Vote {
                id,
                vote: Err(why.into()),
            }]
        };
        if self.conn != Conn::Up {
            return refuse("not connected to the sink connector");
        }
        if self.txn != Txn::None {
            return refuse("an earlier transaction is still open");
        }
        let phase1 = TwoPc::Phase1 {
            txn_id: txn_id(&self.stream, id),
            where_list: vec![(DATA_STREAM, self.committed, self.end)],
        };
        match phase1.to_frame() {
            Ok(f) => {
                self.txn = Txn::Voting { id, end: self.end };
                vec![SinkAction::Send(vec![f])]
            }
            Err(e) => refuse(&format!("can't encode PHASE1: {e}")),
        }
    }

    /// Checkpoint `id` committed cluster-wide.
    pub fn commit(&mut self, id: CheckpointId) -> Vec<SinkAction> {
        self.remember(id, true);
        match self.txn {
            Txn::Voted { id: t, end } if t == id => {
                self.committed = end;
                while self.kept.front().is_some_and(|(o, _)| *o < end) {
                    self.kept.pop_front();
                }
                self.decide(id, true)
            }
            _ => Vec::new(),
        }
    }

    /// Checkpoint `id` was abandoned.
    pub fn abort(&mut self, id: CheckpointId) -> Vec<SinkAction> {
        self.remember(id, false);
        match self.txn {
            Txn::Voting { id: t, .. } if t == id => {
                // Abandoned before the sink voted: the vote is still owed
                // (the worker waits for it before it can restore), and the
                // sink's late REPLY is ignored.
                let mut out = vec![SinkAction::Vote {
                    id,
                    vote: Err(
                        "the checkpoint was abandoned before the sink connector voted".into(),
                    ),
                }];
                out.extend(self.decide(id, false));
                out
            }
            Txn::Voted { id: t, .. } if t == id => self.decide(id, false),
            _ => Vec::new(),
        }
    }

    /// Workers left the cluster (a shrink): WORKERS_LEFT naming them, for
    /// a sink connector that keeps track of the workers writing to it. Only
    /// on a connection that is up: one made later starts with HELLOs from
    /// the workers that are members then.
    pub fn workers_left(&mut self, workers: Vec<String>) -> Vec<SinkAction> {
        if self.conn != Conn::Up || workers.is_empty() {
            return Vec::new();
        }
        self.rtag += 1;
        match (TwoPc::WorkersLeft {
            rtag: self.rtag,
            workers,
        })
        .to_frame()
        {
            Ok(frame) => vec![SinkAction::Send(vec![frame])],
            // A name too long for the frame's short string: the message is
            // advisory, so it is not sent.
            Err(_) => Vec::new(),
        }
    }

    /// Start-up or rollback to `checkpoint`, whose offset for this sink is
    /// `offset`: output after it is forgotten, and the connection is made
    /// again so that the sink resolves what is in doubt and drops what no
    /// checkpoint covers.
    pub fn restore(&mut self, checkpoint: Option<CheckpointId>, offset: u64) -> Vec<SinkAction> {
        if let Some(c) = checkpoint {
            self.outcomes.insert(c, true);
        }
        let mut out = Vec::new();
        if let Txn::Voting { id, .. } = self.txn {
            out.push(SinkAction::Vote {
                id,
                vote: Err("rolled back before the sink connector voted".into()),
            });
        }
        self.txn = Txn::None;
        self.committed = offset;
        self.end = offset;
        self.sent = offset;
        self.kept.clear();
        if self.conn != Conn::Down {
            self.conn = Conn::Down;
            out.push(SinkAction::Reconnect { reason: None });
        }
        out
    }

    fn remember(&mut self, id: CheckpointId, committed: bool) {
        self.outcomes.insert(id, committed);
        while self.outcomes.len() > OUTCOMES_KEPT {
            self.outcomes.pop_first();
        }
    }

    /// PHASE2 for the open transaction, then data again from `committed`.
    fn decide(&mut self, id: CheckpointId, commit: bool) -> Vec<SinkAction> {
        self.txn = Txn::None;
        if self.conn != Conn::Up {
            // The next connection's REPLY_UNCOMMITTED brings it up again.
            return Vec::new();
        }
        let mut out = Vec::new();
        if let Ok(f) = (TwoPc::Phase2 {
            txn_id: txn_id(&self.stream, id),
            commit,
        })
        .to_frame()
        {
            out.push(SinkAction::Send(vec![f]));
        }
        self.sent = self.committed;
        out.extend(self.send_data());
        out
    }

    fn on_vote(&mut self, txn: &str, commit: bool) -> Vec<SinkAction> {
        match self.txn {
            Txn::Voting { id, end } if txn_checkpoint(&self.stream, txn) == Some(id) => {
                if commit {
                    self.txn = Txn::Voted { id, end };
                    vec![SinkAction::Vote { id, vote: Ok(()) }]
                } else {
                    // The checkpoint can't commit; its abort will follow.
                    self.txn = Txn::Voted { id, end };
                    vec![SinkAction::Vote {
                        id,
                        vote: Err(format!("the sink connector voted to abort {txn}")),
                    }]
                }
            }
            // A late vote on a transaction already decided.
            _ => Vec::new(),
        }
    }

    /// The answer to LIST_UNCOMMITTED: decide each in-doubt transaction of
    /// this stream; then the connection is up and data flows from
    /// `committed`.
    fn resolve(&mut self, txn_ids: Vec<String>) -> Vec<SinkAction> {
        let mut frames = Vec::new();
        for t in txn_ids {
            let Some(c) = txn_checkpoint(&self.stream, &t) else {
                continue;
            };
            if matches!(self.txn, Txn::Voted { id, .. } if id == c) {
                // Its checkpoint is still being decided: PHASE2 comes then.
                continue;
            }
            let commit = self.outcomes.get(&c).copied().unwrap_or(false);
            if let Ok(f) = (TwoPc::Phase2 { txn_id: t, commit }).to_frame() {
                frames.push(f);
            }
        }
        self.conn = Conn::Up;
        let mut out = if frames.is_empty() {
            Vec::new()
        } else {
            vec![SinkAction::Send(frames)]
        };
        if self.txn == Txn::None {
            self.sent = if self.resilient {
                self.committed
            } else {
                self.sent
            };
            out.extend(self.send_data());
        }
        out
    }

    /// Without resilience the handshake ends with OK and NOTIFY_ACK.
    fn up_without_2pc(&mut self) -> Vec<SinkAction> {
        if self.resilient
            || self.conn
                != (Conn::Handshake {
                    ok: true,
                    notified: true,
                })
        {
            return Vec::new();
        }
        self.resolve(Vec::new())
    }

    /// Sends what has not gone out on this connection, unless a
    /// transaction is open.
    fn send_data(&mut self) -> Vec<SinkAction> {
        if self.conn != Conn::Up || self.txn != Txn::None || self.sent >= self.end {
            return Vec::new();
        }
        let from = self.kept.partition_point(|(o, _)| *o < self.sent);
        let frames = self
            .kept
            .range(from..)
            .map(|(offset, payload)| ConnectorMessage::Message {
                stream_id: DATA_STREAM,
                message_id: *offset,
                event_time: 0,
                key: Bytes::new(),
                payload: payload.clone(),
            })
            .collect();
        self.sent = self.end;
        if !self.resilient {
            self.kept.clear();
        }
        vec![SinkAction::Send(frames)]
    }

    fn close_on(&mut self, reason: String, answer: bool) -> Vec<SinkAction> {
        let mut out = Vec::new();
        if answer {
            out.push(SinkAction::Send(vec![ConnectorMessage::error(
                reason.clone(),
            )]));
        }
        out.extend(self.disconnected());
        out.push(SinkAction::Reconnect {
            reason: Some(reason),
        });
        out
    }
}

#[cfg(test)]
mod tests;
