//! Frames between workers.
//!
//! Every worker-to-worker connection (the control link to the initializer
//! and the one-way data links between every ordered pair of workers)
//! carries the same frame, cut by [`crate::frame`]:
//!
//! ```text
//! +----------------+---------+-------------------------+
//! | u32 BE length  | u8 kind | body (length - 1 bytes) |
//! +----------------+---------+-------------------------+
//! ```
//!
//! The length counts the kind and the body: at least 1, at most
//! [`MAX_WIRE_FRAME`].
//!
//! | kind | body |
//! |------|------|
//! | [`KIND_CONTROL`] | postcard-encoded [`Control`] |
//! | [`KIND_DATA`] | a data batch (below) |
//! | [`KIND_BARRIER`] | u64 LE generation, u64 LE checkpoint id |
//! | [`KIND_AUTH`] | postcard-encoded [`AuthMessage`] (the first frames of every link, see [`crate::handshake`]) |
//! | [`KIND_HANDOFF`] | a data batch of checkpointed state entries during a restore (below) |
//!
//! A data batch carries messages for keyed stages owned by the receiver:
//!
//! ```text
//! u64 LE generation | u32 LE count | count x message
//! message = u32 LE stage | u16 LE key length | key bytes
//!         | i64 LE event time | u32 LE value length | value bytes (a codec blob)
//! ```
//!
//! A handoff batch has the data batch's layout; each message is one entry
//! of keyed state (stage, key, event time 0, the entry's checkpoint blob)
//! that the sender restored and the receiver owns under the current
//! key-group map. The sender's last handoff batch of a restore is empty: it
//! says "nothing more from me" (see [`crate::node`], "Restore").
//!
//! Readers use [`WireCodec`] with `tokio_util::codec::FramedRead` on a
//! socket.
//! `docs/formats.md` has these layouts with the other protocols'.
//!
//! Invariants: a batch holds messages in the order the sender processed
//! them, and links are FIFO, so per-key order survives a hop. The
//! generation lets a receiver drop batches sent before a rollback. A barrier
//! for checkpoint N on a link separates the messages the sender processed
//! before its part of checkpoint N from those after. A bad length (0, or
//! over the limit) ends the link: the stream can't be re-synchronised.

use bytes::{Buf, BytesMut};
use serde::{Deserialize, Serialize};

use crate::frame::{ByteOrder, FrameCodec, LengthError, LengthPrefixed, Protocol};
use crate::handshake::AuthMessage;

/// Bytes before a frame's body: its u32 length and its kind.
pub const FRAME_HEADER: usize = 5;
pub const KIND_CONTROL: u8 = 1;
pub const KIND_DATA: u8 = 2;
pub const KIND_BARRIER: u8 = 3;
pub const KIND_AUTH: u8 = 4;
pub const KIND_HANDOFF: u8 = 5;
/// Handshake frames are small; a peer not yet authenticated can't make a
/// worker buffer more than this.
pub const MAX_AUTH_FRAME: u32 = 4 << 10;
/// Frames larger than this are refused: a peer speaking garbage must not
/// make a worker allocate without bound.
pub const MAX_WIRE_FRAME: u32 = 256 << 20;

/// A worker as the others know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    /// Where the worker accepts data links.
    pub data_addr: String,
    /// Where its TCP and connector sources accept clients: `(source name,
    /// host:port)`; a leaving worker sends its connector clients to
    /// another member's.
    pub sources: Vec<(String, String)>,
}

/// Control messages.
///
/// Formation (also after a failure, with a new generation): `Join` (worker
/// to initializer), `Welcome` or `Refused` (initializer to worker; `Welcome`
/// names the checkpoint everyone rolls back to), `DataHello` (first frame
/// of every data link), `LinksUp` (worker to initializer once all its data
/// links are up in both directions), `Start` (initializer to all).
///
/// Running: `Ping`/`Pong` heartbeats; checkpoints (`Checkpoint` from the
/// initializer, `CheckpointDone` back once the worker's part is durable,
/// `Committed` once the initializer has durably marked it complete, `Abort`
/// if it never will be);
/// `Reform` (the initializer lost a worker: everyone re-forms and rolls
/// back); `Pause` (a worker joins: no more source input until the cluster
/// re-forms); `Load` (the keyed messages a worker processed per key group, for
/// placement); `Shutdown` in both directions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Control {
    Join {
        name: String,
        data_addr: String,
        /// `Member::sources`.
        sources: Vec<(String, String)>,
        fingerprint: u64,
        has_files: bool,
        /// Started with `--join`: a worker that may grow the cluster.
        grow: bool,
        /// With `grow`: it is one of this many joiners (its
        /// `--worker-count`), which join together.
        batch: u32,
        /// Where the worker serves its metrics (`--metrics-listen`), for
        /// the initializer's dashboard.
        metrics_addr: Option<String>,
    },
    Welcome {
        members: Vec<Member>,
        generation: u64,
        rollback_to: Option<u64>,
        /// The welcomed worker wrote a part of `rollback_to` (false for a
        /// worker that joined the cluster after it).
        has_part: bool,
        /// Members that are leaving the cluster: they own no key groups and
        /// hand their state to the others.
        leaving: Vec<String>,
        resilient: bool,
        /// Which member owns each key group, as `(member index, run
        /// length)` runs in key-group order (`KeyGroupMap::runs`).
        placement: Vec<(u32, u32)>,
    },
    /// The initializer refuses the join; `retry`: the reason may pass
    /// (a name still held by a connection whose close was not noticed yet).
    Refused {
        reason: String,
        retry: bool,
    },
    DataHello {
        from: String,
        generation: u64,
    },
    LinksUp {
        name: String,
    },
    Start {
        generation: u64,
    },
    /// A worker has restored its state after `Start` and is processing.
    Restored {
        generation: u64,
    },
    Ping,
    Pong,
    Checkpoint {
        id: u64,
        generation: u64,
    },
    CheckpointDone {
        id: u64,
        generation: u64,
        error: Option<String>,
    },
    Committed {
        id: u64,
        generation: u64,
    },
    Reform {
        reason: String,
    },
    /// A worker joins or workers leave: take no more source input until
    /// the cluster re-forms (after the next checkpoint).
    Pause {
        generation: u64,
    },
    /// To a leaving worker whose state is handed over and checkpointed
    /// without it: stop, and exit 0.
    Leave {
        generation: u64,
    },
    Shutdown {
        reason: String,
    },
    /// The initializer abandoned checkpoint `id`: what was pre-committed
    /// for it is aborted.
    Abort {
        id: u64,
        generation: u64,
        reason: String,
    },
    /// The keyed messages a worker processed per key group, `(key group,
    /// count)`, since its last report: sent before each `CheckpointDone`.
    Load {
        generation: u64,
        counts: Vec<(u32, u64)>,
    },
    /// A member that is not the initializer, to a worker that asked it to
    /// join (`--join` with that member's `--my-control`): the initializer's
    /// control address is `to`.
    Redirect {
        to: String,
    },
    /// Every member restored this generation (so every sink's recovery,
    /// the re-sending of output a previous run left in doubt included, is
    /// done): take source input from now on.
    AllRestored {
        generation: u64,
    },
}

/// Why bytes from a peer could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WireError {
    #[error("frame of {len} bytes is larger than the limit of {max}")]
    TooLarge { len: u64, max: u64 },
    #[error("empty frame (no kind byte)")]
    Empty,
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("bad control message: {0}")]
    BadControl(String),
    #[error("bad data batch: {0}")]
    BadBatch(&'static str),
    #[error("a frame of kind {0} before the link was authenticated")]
    NotAuthenticated(u8),
}

/// One frame read from a peer.
#[derive(Debug, PartialEq)]
pub enum WireFrame {
    Control(Control),
    /// The body of a data batch, parsed lazily with [`BatchReader`].
    Data(bytes::Bytes),
    /// The body of a handoff batch (same layout), empty to end a handoff.
    Handoff(bytes::Bytes),
    Barrier {
        generation: u64,
        checkpoint: u64,
    },
}

/// Encodes a barrier frame.
pub fn barrier_frame(generation: u64, checkpoint: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(21);
    out.extend_from_slice(&17u32.to_be_bytes());
    out.push(KIND_BARRIER);
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&checkpoint.to_le_bytes());
    out
}

/// Encodes a control frame.
pub fn control_frame(msg: &Control) -> Vec<u8> {
    postcard_frame(KIND_CONTROL, msg)
}

/// Encodes a handshake frame.
pub fn auth_frame(msg: &AuthMessage) -> Vec<u8> {
    postcard_frame(KIND_AUTH, msg)
}

fn postcard_frame<T: Serialize>(kind: u8, msg: &T) -> Vec<u8> {
    // Plain enums of owned data always serialise.
    let body = postcard::to_allocvec(msg).expect("protocol messages always serialise");
    let mut out = Vec::with_capacity(body.len() + 5);
    out.extend_from_slice(&((body.len() + 1) as u32).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(&body);
    out
}

/// How wire frames are cut: BE length, kind byte included, up to
/// [`MAX_WIRE_FRAME`].
const WIRE_LENGTH: LengthPrefixed = LengthPrefixed::new(ByteOrder::Big, 1, MAX_WIRE_FRAME);

impl From<LengthError> for WireError {
    fn from(e: LengthError) -> Self {
        match e {
            LengthError::TooShort { .. } => WireError::Empty,
            LengthError::TooLong { len, max } => WireError::TooLarge { len, max },
        }
    }
}

/// Reads the body of a wire frame (kind byte first).
#[derive(Debug, Clone, Copy, Default)]
pub struct WireProtocol;

impl Protocol for WireProtocol {
    type Frame = WireFrame;
    type Error = WireError;

    fn parse(&mut self, mut body: BytesMut) -> Result<WireFrame, WireError> {
        // The length is at least 1, so the kind byte is there.
        match body.get_u8() {
            KIND_CONTROL => postcard::from_bytes(&body)
                .map(WireFrame::Control)
                .map_err(|e| WireError::BadControl(e.to_string())),
            KIND_DATA => Ok(WireFrame::Data(body.freeze())),
            KIND_HANDOFF => Ok(WireFrame::Handoff(body.freeze())),
            KIND_BARRIER if body.len() == 16 => Ok(WireFrame::Barrier {
                generation: body.get_u64_le(),
                checkpoint: body.get_u64_le(),
            }),
            KIND_BARRIER => Err(WireError::BadBatch("barrier frame of the wrong size")),
            other => Err(WireError::UnknownKind(other)),
        }
    }
}

/// Reads handshake frames (and nothing else) before a link is trusted.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuthProtocol;

impl Protocol for AuthProtocol {
    type Frame = AuthMessage;
    type Error = WireError;

    fn parse(&mut self, mut body: BytesMut) -> Result<AuthMessage, WireError> {
        match body.get_u8() {
            KIND_AUTH => {
                postcard::from_bytes(&body).map_err(|e| WireError::BadControl(e.to_string()))
            }
            other => Err(WireError::NotAuthenticated(other)),
        }
    }
}

/// The decoder of a link until it is authenticated.
pub type AuthCodec = FrameCodec<AuthProtocol>;

impl Default for AuthCodec {
    fn default() -> Self {
        FrameCodec::new(
            LengthPrefixed::new(ByteOrder::Big, 1, MAX_AUTH_FRAME),
            AuthProtocol,
        )
    }
}

/// The decoder of a link: `FramedRead<_, WireCodec>` yields [`WireFrame`]s.
pub type WireCodec = FrameCodec<WireProtocol>;

impl Default for WireCodec {
    fn default() -> Self {
        FrameCodec::new(WIRE_LENGTH, WireProtocol)
    }
}

/// Builds a data frame, message by message.
#[derive(Debug)]
pub struct BatchWriter {
    buf: Vec<u8>,
    count: u32,
}

const BATCH_HEADER: usize = 4 + 1 + 8 + 4;

/// The longest key a message can carry between workers (its length is a
/// u16). Callers refuse longer keys: [`BatchWriter::push`] would cut them.
pub const MAX_KEY_LEN: usize = u16::MAX as usize;

impl BatchWriter {
    /// A data batch.
    pub fn new(generation: u64) -> BatchWriter {
        BatchWriter::of_kind(KIND_DATA, generation, 64 << 10)
    }

    /// A handoff batch (see the module doc).
    pub fn handoff(generation: u64) -> BatchWriter {
        BatchWriter::of_kind(KIND_HANDOFF, generation, 1 << 10)
    }

    fn of_kind(kind: u8, generation: u64, capacity: usize) -> BatchWriter {
        let mut buf = Vec::with_capacity(capacity);
        buf.extend_from_slice(&[0; 4]);
        buf.push(kind);
        buf.extend_from_slice(&generation.to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes());
        BatchWriter { buf, count: 0 }
    }

    /// Appends one message; the value is written by `write_value` (the
    /// codec), which appends to the vector it is given. `key` must be at
    /// most [`MAX_KEY_LEN`] bytes.
    pub fn push<E>(
        &mut self,
        stage: u32,
        key: &[u8],
        event_time: i64,
        write_value: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let start = self.buf.len();
        debug_assert!(key.len() <= MAX_KEY_LEN, "key of {} bytes", key.len());
        let key_len = u16::try_from(key.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&stage.to_le_bytes());
        self.buf.extend_from_slice(&key_len.to_le_bytes());
        self.buf.extend_from_slice(&key[..key_len as usize]);
        self.buf.extend_from_slice(&event_time.to_le_bytes());
        let len_at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        if let Err(e) = write_value(&mut self.buf) {
            self.buf.truncate(start);
            return Err(e);
        }
        let value_len = (self.buf.len() - len_at - 4) as u32;
        self.buf[len_at..len_at + 4].copy_from_slice(&value_len.to_le_bytes());
        self.count += 1;
        Ok(())
    }

    pub fn len(&self) -> u32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes buffered so far.
    pub fn size(&self) -> usize {
        self.buf.len()
    }

    /// The finished frame, ready to write to the link.
    pub fn finish(mut self) -> Vec<u8> {
        let len = (self.buf.len() - 4) as u32;
        self.buf[0..4].copy_from_slice(&len.to_be_bytes());
        self.buf[13..17].copy_from_slice(&self.count.to_le_bytes());
        self.buf
    }
}

/// One message of a data batch.
#[derive(Debug, PartialEq)]
pub struct WireMessage<'a> {
    pub stage: u32,
    pub key: &'a [u8],
    pub event_time: i64,
    pub value: &'a [u8],
}

/// Reads the messages of a data batch body (the bytes after the kind).
pub struct BatchReader<'a> {
    pub generation: u64,
    remaining: u32,
    at: &'a [u8],
}

impl<'a> BatchReader<'a> {
    pub fn new(body: &'a [u8]) -> Result<BatchReader<'a>, WireError> {
        if body.len() < BATCH_HEADER - 5 {
            return Err(WireError::BadBatch("shorter than its header"));
        }
        let generation = u64::from_le_bytes(body[0..8].try_into().expect("8 bytes"));
        let remaining = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes"));
        Ok(BatchReader {
            generation,
            remaining,
            at: &body[12..],
        })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.at.len() < n {
            return Err(WireError::BadBatch("truncated message"));
        }
        let (head, rest) = self.at.split_at(n);
        self.at = rest;
        Ok(head)
    }
}

impl<'a> Iterator for BatchReader<'a> {
    type Item = Result<WireMessage<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let mut read = || -> Result<WireMessage<'a>, WireError> {
            let stage = u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"));
            let key_len = u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")) as usize;
            let key = self.take(key_len)?;
            let event_time = i64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes"));
            let value_len = u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize;
            let value = self.take(value_len)?;
            Ok(WireMessage {
                stage,
                key,
                event_time,
                value,
            })
        };
        let r = read();
        if r.is_err() {
            self.remaining = 0;
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn next_frame(buf: &mut BytesMut) -> Result<Option<WireFrame>, WireError> {
        WireCodec::default().decode_frame(buf)
    }
    use bytes::BytesMut;
    use proptest::prelude::*;

    fn frames_of(bytes: &[u8], splits: &[usize]) -> Vec<WireFrame> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut at = 0;
        let mut cuts: Vec<usize> = splits.iter().map(|s| s % (bytes.len() + 1)).collect();
        cuts.push(bytes.len());
        cuts.sort_unstable();
        for cut in cuts {
            buf.extend_from_slice(&bytes[at..cut.max(at)]);
            at = cut.max(at);
            while let Some(f) = next_frame(&mut buf).expect("valid frames") {
                out.push(f);
            }
        }
        assert!(buf.is_empty());
        out
    }

    proptest! {
        #[test]
        fn batches_round_trip_across_any_split(
            generation in any::<u64>(),
            msgs in proptest::collection::vec(
                (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..40), any::<i64>(), proptest::collection::vec(any::<u8>(), 0..200)),
                0..30),
            splits in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut w = BatchWriter::new(generation);
            for (stage, key, et, value) in &msgs {
                w.push::<()>(*stage, key, *et, |out| { out.extend_from_slice(value); Ok(()) }).unwrap();
            }
            prop_assert_eq!(w.len() as usize, msgs.len());
            let mut bytes = w.finish();
            let hello = control_frame(&Control::DataHello { from: "w1".into(), generation });
            bytes.extend_from_slice(&hello);
            bytes.extend_from_slice(&barrier_frame(generation, 7));
            let frames = frames_of(&bytes, &splits);
            prop_assert_eq!(frames.len(), 3);
            prop_assert_eq!(&frames[2], &WireFrame::Barrier { generation, checkpoint: 7 });
            let WireFrame::Data(body) = &frames[0] else { panic!("data first") };
            let reader = BatchReader::new(body).unwrap();
            prop_assert_eq!(reader.generation, generation);
            let got: Vec<_> = reader.map(|m| m.unwrap()).map(|m| (m.stage, m.key.to_vec(), m.event_time, m.value.to_vec())).collect();
            prop_assert_eq!(got, msgs);
            prop_assert_eq!(&frames[1], &WireFrame::Control(Control::DataHello { from: "w1".into(), generation }));
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut codec = WireCodec::default();
            let mut buf = BytesMut::from(&data[..]);
            // Bad bodies are consumed one by one; a bad length ends it.
            for _ in 0..300 {
                match codec.decode_frame(&mut buf) {
                    Ok(Some(WireFrame::Data(body))) => {
                        if let Ok(reader) = BatchReader::new(&body) {
                            for _ in reader {}
                        }
                    }
                    Ok(Some(_)) | Err(WireError::UnknownKind(_) | WireError::BadControl(_) | WireError::BadBatch(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }

    #[test]
    fn failed_value_leaves_batch_unchanged() {
        let mut w = BatchWriter::new(1);
        w.push::<()>(1, b"k", 5, |out| {
            out.push(1);
            Ok(())
        })
        .unwrap();
        assert!(w
            .push(2, b"j", 6, |out| {
                out.push(9);
                Err("no")
            })
            .is_err());
        let bytes = w.finish();
        let frames = frames_of(&bytes, &[]);
        let WireFrame::Data(body) = &frames[0] else {
            panic!()
        };
        let msgs: Vec<_> = BatchReader::new(body).unwrap().collect();
        assert_eq!(
            msgs,
            vec![Ok(WireMessage {
                stage: 1,
                key: b"k",
                event_time: 5,
                value: &[1]
            })]
        );
    }

    #[test]
    fn rejects_garbage() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 1][..]);
        assert!(matches!(
            next_frame(&mut buf),
            Err(WireError::TooLarge { .. })
        ));
        let mut buf = BytesMut::from(&[0, 0, 0, 1, 9][..]);
        assert_eq!(next_frame(&mut buf), Err(WireError::UnknownKind(9)));
        let mut buf = BytesMut::from(&[0, 0, 0, 0][..]);
        assert_eq!(next_frame(&mut buf), Err(WireError::Empty));
        let body = [0u8; 12];
        let mut body = body.to_vec();
        body[8] = 1; // claims one message, has none
        let mut r = BatchReader::new(&body).unwrap();
        assert!(matches!(r.next(), Some(Err(WireError::BadBatch(_)))));
        assert!(r.next().is_none());
    }
}
