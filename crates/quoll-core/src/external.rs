//! The external channel (`--external`): frames, message types and payloads.
//!
//! Every worker started with `--external HOST:PORT` listens there for
//! control requests from tools and test harnesses (`quoll status`,
//! `quoll shutdown`, the Wallaroo test harness). Replies go back on the
//! connection that carried the request.
//!
//! # Frame layout
//!
//! ```text
//! +----------------+----------------+---------------------------+
//! | length: u32 BE | type: u16 BE   | payload: length - 2 bytes |
//! +----------------+----------------+---------------------------+
//! ```
//!
//! - `length` counts the type field and the payload, so it is `2 + payload
//!   size` and never less than 2. A length above [`MAX_FRAME_LEN`] (16 MiB)
//!   is treated as a corrupt stream.
//! - `type` is one of [`MessageType`]; unknown types still decode (a
//!   [`Frame`] keeps the raw `u16`) so that a worker can answer them with an
//!   error instead of dropping the connection.
//! - `payload` is UTF-8 text or JSON, often empty for requests.
//!
//! Frames are cut by [`crate::frame`]; [`ExternalCodec`] is the decoder
//! (`FramedRead` on an async socket, [`crate::frame::BlockingFramedRead`] on a
//! blocking one). A bad length makes it fail for good (a length-prefixed
//! stream can't be re-synchronised): the connection should be closed.
//! `docs/formats.md` has this layout with the other protocols'.
//!
//! # JSON payloads
//!
//! [`ClusterStatus`], [`ShrinkRequest`], [`ShrinkQueryResponse`],
//! [`SourceIds`], [`StateEntities`] and [`ReportStatus`] are the payloads,
//! read and written with `serde_json`: compact, keys in the order of the
//! fields; unknown keys are ignored when reading.

use std::collections::BTreeMap;
use std::fmt;

use bytes::{Buf, BytesMut};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::frame::{ByteOrder, FrameCodec, LengthError, LengthPrefixed, Protocol};

/// Size of the message-type field that follows the length.
pub const TYPE_FIELD_LEN: usize = 2;
/// Smallest valid value of the length field: a type and an empty payload.
pub const MIN_FRAME_LEN: u32 = TYPE_FIELD_LEN as u32;
/// Largest accepted value of the length field (16 MiB).
pub const MAX_FRAME_LEN: u32 = 16 * 1024 * 1024;
/// Largest payload that fits in a frame.
pub const MAX_PAYLOAD_LEN: usize = MAX_FRAME_LEN as usize - TYPE_FIELD_LEN;

macro_rules! message_types {
    ($( $(#[$doc:meta])* $name:ident = $value:literal, )*) => {
        /// The message types of the external channel.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u16)]
        pub enum MessageType {
            $( $(#[$doc])* $name = $value, )*
        }

        impl MessageType {
            /// Every message type, in numeric order.
            pub const ALL: &'static [MessageType] = &[$(MessageType::$name,)*];

            /// The type for a wire value, `None` for an unknown one.
            pub fn from_u16(value: u16) -> Option<MessageType> {
                match value {
                    $( $value => Some(MessageType::$name), )*
                    _ => None,
                }
            }

            /// The wire value.
            pub fn as_u16(self) -> u16 {
                self as u16
            }

            /// The name used in this crate (`ClusterStatusQuery`, ...).
            pub fn name(self) -> &'static str {
                match self {
                    $( MessageType::$name => stringify!($name), )*
                }
            }
        }
    };
}

message_types! {
    /// 1: print the payload text on the worker's stdout.
    Print = 1,
    /// 2: rotate the log; payload: worker name.
    RotateLog = 2,
    /// 3: clean shutdown of the cluster; payload: optional text.
    CleanShutdown = 3,
    /// 4: shrink request; JSON `{"query": bool, "node_names": [str], "node_count": int}`.
    ShrinkRequest = 4,
    /// 5: shrink query response; JSON `{"node_names": [str], "node_count": int}`.
    ShrinkQueryResponse = 5,
    /// 6: shrink error; payload: text.
    ShrinkError = 6,
    /// 7: partition query.
    PartitionQuery = 7,
    /// 8: partition query response (JSON, internal shape).
    PartitionQueryResponse = 8,
    /// 9: cluster-status query; empty payload.
    ClusterStatusQuery = 9,
    /// 10: cluster-status response; JSON, see [`ClusterStatus`].
    ClusterStatusResponse = 10,
    /// 11: cluster status "not initialized"; empty; sent until the worker is ready.
    ClusterStatusNotInitialized = 11,
    /// 12: partition-count query.
    PartitionCountQuery = 12,
    /// 13: partition-count query response (JSON, internal shape).
    PartitionCountQueryResponse = 13,
    /// 14: source-ids query.
    SourceIdsQuery = 14,
    /// 15: source-ids response; JSON `{"source_ids": [str]}`, see [`SourceIds`].
    SourceIdsQueryResponse = 15,
    /// 16: report status; payload: text.
    ReportStatus = 16,
    /// 17: state-entity query.
    StateEntityQuery = 17,
    /// 18: state-entity response; JSON object stage id -> keys, see [`StateEntities`].
    StateEntityQueryResponse = 18,
    /// 19: stateless-partition query.
    StatelessPartitionQuery = 19,
    /// 20: stateless-partition query response (JSON, internal shape).
    StatelessPartitionQueryResponse = 20,
    /// 21: state-entity count query.
    StateEntityCountQuery = 21,
    /// 22: state-entity count response (JSON, internal shape).
    StateEntityCountQueryResponse = 22,
    /// 23: stateless-partition count query.
    StatelessPartitionCountQuery = 23,
    /// 24: stateless-partition count response (JSON, internal shape).
    StatelessPartitionCountQueryResponse = 24,
    /// 25: cluster-wide state-entity count query.
    ClusterStateEntityCountQuery = 25,
    /// 26: cluster-wide state-entity count response (JSON, internal shape).
    ClusterStateEntityCountQueryResponse = 26,
}

impl MessageType {
    /// For a query type, the type of its response (9 -> 10, 7 -> 8, ...).
    /// Types that are not queries give `None`. Note that a cluster-status
    /// query may also be answered with [`MessageType::ClusterStatusNotInitialized`].
    pub fn response_type(self) -> Option<MessageType> {
        use MessageType::*;
        match self {
            ShrinkRequest => Some(ShrinkQueryResponse),
            PartitionQuery => Some(PartitionQueryResponse),
            ClusterStatusQuery => Some(ClusterStatusResponse),
            PartitionCountQuery => Some(PartitionCountQueryResponse),
            SourceIdsQuery => Some(SourceIdsQueryResponse),
            StateEntityQuery => Some(StateEntityQueryResponse),
            StatelessPartitionQuery => Some(StatelessPartitionQueryResponse),
            StateEntityCountQuery => Some(StateEntityCountQueryResponse),
            StatelessPartitionCountQuery => Some(StatelessPartitionCountQueryResponse),
            ClusterStateEntityCountQuery => Some(ClusterStateEntityCountQueryResponse),
            _ => None,
        }
    }
}

impl From<MessageType> for u16 {
    fn from(t: MessageType) -> u16 {
        t as u16
    }
}

impl TryFrom<u16> for MessageType {
    type Error = u16;
    /// Fails with the unknown value.
    fn try_from(value: u16) -> Result<Self, u16> {
        MessageType::from_u16(value).ok_or(value)
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.as_u16())
    }
}

/// Errors of the frame layer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The length field is below 2, so there is not even a type.
    #[error("external frame length {len} is below the minimum of {MIN_FRAME_LEN} (a frame needs at least its 2-byte type)")]
    LengthTooShort {
        /// The length field as read.
        len: u32,
    },
    /// The length field is above the maximum.
    #[error("external frame length {len} exceeds the maximum of {max} bytes")]
    LengthTooLong {
        /// The length field as read (or that would be written).
        len: u64,
        /// The maximum in force.
        max: u32,
    },
}

impl From<LengthError> for FrameError {
    fn from(e: LengthError) -> Self {
        match e {
            LengthError::TooShort { len, .. } => FrameError::LengthTooShort { len },
            LengthError::TooLong { len, max } => FrameError::LengthTooLong {
                len,
                max: u32::try_from(max).unwrap_or(u32::MAX),
            },
        }
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The raw message type (see [`Frame::message_type`]).
    pub msg_type: u16,
    /// The payload bytes (normally UTF-8).
    pub payload: Vec<u8>,
}

impl Frame {
    /// A frame of a known type.
    pub fn new(ty: MessageType, payload: impl Into<Vec<u8>>) -> Frame {
        Frame {
            msg_type: ty.as_u16(),
            payload: payload.into(),
        }
    }

    /// The message type, `None` if the value is unknown.
    pub fn message_type(&self) -> Option<MessageType> {
        MessageType::from_u16(self.msg_type)
    }

    /// The payload as text.
    pub fn payload_str(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.payload)
    }

    /// The payload as text, invalid UTF-8 replaced by U+FFFD.
    pub fn payload_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.payload)
    }

    /// The encoded frame.
    pub fn encode(&self) -> Vec<u8> {
        encode_frame(self.msg_type, &self.payload)
    }
}

/// How external frames are cut: BE length, type included, 2 to
/// [`MAX_FRAME_LEN`].
const EXTERNAL_LENGTH: LengthPrefixed =
    LengthPrefixed::new(ByteOrder::Big, MIN_FRAME_LEN, MAX_FRAME_LEN);

/// Appends one frame to `out`. Fails (writing nothing) if the payload is
/// longer than [`MAX_PAYLOAD_LEN`].
pub fn encode_frame_into(
    out: &mut Vec<u8>,
    ty: impl Into<u16>,
    payload: impl AsRef<[u8]>,
) -> Result<(), FrameError> {
    let payload = payload.as_ref();
    let len = payload.len() as u64 + TYPE_FIELD_LEN as u64;
    if len > MAX_FRAME_LEN as u64 {
        return Err(FrameError::LengthTooLong {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    out.reserve(EXTERNAL_LENGTH.header_len() + len as usize);
    let start = EXTERNAL_LENGTH.begin(out);
    out.extend_from_slice(&ty.into().to_be_bytes());
    out.extend_from_slice(payload);
    Ok(EXTERNAL_LENGTH.finish(out, start)?)
}

/// Encodes one frame, failing if the payload is too long.
pub fn try_encode_frame(
    ty: impl Into<u16>,
    payload: impl AsRef<[u8]>,
) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    encode_frame_into(&mut out, ty, payload)?;
    Ok(out)
}

/// Encodes one frame: `u32` BE length (2 + payload size), `u16` BE type,
/// payload. `ty` is a [`MessageType`] or a raw `u16`; `payload` is `&str`,
/// `&[u8]`, `Vec<u8>`, ...
///
/// # Panics
///
/// If the payload is longer than [`MAX_PAYLOAD_LEN`] (16 MiB - 2); use
/// [`try_encode_frame`] when the payload size is not under control.
pub fn encode_frame(ty: impl Into<u16>, payload: impl AsRef<[u8]>) -> Vec<u8> {
    match try_encode_frame(ty, payload) {
        Ok(v) => v,
        Err(e) => panic!("encode_frame: {e}"),
    }
}

/// Reads the body of an external frame (type first).
#[derive(Debug, Clone, Copy, Default)]
pub struct ExternalProtocol;

impl Protocol for ExternalProtocol {
    type Frame = Frame;
    type Error = FrameError;

    fn parse(&mut self, mut body: BytesMut) -> Result<Frame, FrameError> {
        // The length is at least 2, so the type is there; any type decodes.
        let msg_type = body.get_u16();
        Ok(Frame {
            msg_type,
            payload: body.to_vec(),
        })
    }
}

/// The decoder of the external channel.
///
/// ```
/// use bytes::BytesMut;
/// use quoll_core::external::{encode_frame, ExternalCodec, MessageType};
/// let bytes = encode_frame(MessageType::Print, "hello");
/// let mut codec = ExternalCodec::default();
/// let mut buf = BytesMut::from(&bytes[..3]);
/// assert_eq!(codec.decode_frame(&mut buf).unwrap(), None);
/// buf.extend_from_slice(&bytes[3..]);
/// let f = codec.decode_frame(&mut buf).unwrap().unwrap();
/// assert_eq!(f.message_type(), Some(MessageType::Print));
/// assert_eq!(f.payload, b"hello");
/// ```
pub type ExternalCodec = FrameCodec<ExternalProtocol>;

impl Default for ExternalCodec {
    fn default() -> Self {
        FrameCodec::new(EXTERNAL_LENGTH, ExternalProtocol)
    }
}

impl ExternalCodec {
    /// A decoder accepting length fields up to `max_len` (at least 2).
    pub fn with_max_len(max_len: u32) -> Self {
        let length = LengthPrefixed::new(ByteOrder::Big, MIN_FRAME_LEN, max_len.max(MIN_FRAME_LEN));
        FrameCodec::new(length, ExternalProtocol)
    }
}

// ---------------------------------------------------------------------------
// JSON payloads
// ---------------------------------------------------------------------------

/// Payload of a cluster-status response (type 10):
/// `{"worker_count": int, "worker_names": [str], "processing_messages": bool}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Number of workers in the cluster.
    pub worker_count: u64,
    /// Their names.
    pub worker_names: Vec<String>,
    /// False while a stop-the-world phase (migration, rollback) runs.
    pub processing_messages: bool,
}

/// Payload of a shrink request (type 4):
/// `{"query": bool, "node_names": [str], "node_count": int}`.
/// With `query` true it only asks which workers could leave (answered with
/// type 5); otherwise it asks the named workers, or `node_count` workers,
/// to leave. A missing `query` means false, missing `node_names` none and
/// missing `node_count` 0.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ShrinkRequest {
    /// Only a query.
    pub query: bool,
    /// Workers to remove (may be empty when `node_count` is used).
    pub node_names: Vec<String>,
    /// How many workers to remove (may be 0 when names are given).
    pub node_count: u64,
}

/// Payload of a shrink query response (type 5):
/// `{"node_names": [str], "node_count": int}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ShrinkQueryResponse {
    /// Workers that could leave.
    pub node_names: Vec<String>,
    /// Their number.
    pub node_count: u64,
}

/// Payload of a source-ids response (type 15): `{"source_ids": [str]}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SourceIds {
    /// The ids of the sources on this worker.
    pub source_ids: Vec<String>,
}

/// Payload of a state-entity response (type 18): an object mapping each
/// state stage id (decimal string) to the keys held on this worker, stages
/// in key order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StateEntities {
    /// Stage id -> keys.
    pub by_stage: BTreeMap<String, Vec<String>>,
}

/// Payload of a worker's report-status reply (type 16): its counters.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ReportStatus {
    /// Messages taken in from sources.
    pub messages_in: u64,
    /// Messages sent to other workers.
    pub shipped: u64,
    /// Frames read from sources.
    pub frames_in: u64,
    /// Source frames that could not be read (bad or cut-off framing).
    pub bad_frames: u64,
    /// Sink output dropped while a sink was disconnected too long.
    pub sink_dropped: u64,
    /// Messages dropped after an error in user code or data.
    pub dropped: u64,
    /// Those, per place (stage or source).
    pub dropped_by_place: BTreeMap<String, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{BlockingFramedRead, ReadError};
    use proptest::prelude::*;
    use std::io;
    use tokio_util::codec::Decoder;

    #[test]
    fn each_query_is_answered_with_wallaroos_response_type() {
        // (query, response) as wire values, as Wallaroo's tools expect them.
        let pairs = [
            (4, 5),
            (7, 8),
            (9, 10),
            (12, 13),
            (14, 15),
            (17, 18),
            (19, 20),
            (21, 22),
            (23, 24),
            (25, 26),
        ];
        for &t in MessageType::ALL {
            let want = pairs
                .iter()
                .find(|(q, _)| *q == t.as_u16())
                .map(|&(_, r)| MessageType::from_u16(r).expect("a known type"));
            assert_eq!(t.response_type(), want, "{}", t.name());
        }
    }

    #[test]
    fn frame_layout() {
        let f = encode_frame(MessageType::ClusterStatusQuery, "");
        assert_eq!(f, vec![0, 0, 0, 2, 0, 9]);
        let f = encode_frame(MessageType::Print, "hi");
        assert_eq!(f, vec![0, 0, 0, 4, 0, 1, b'h', b'i']);
        let f = encode_frame(0x1234u16, b"\xff".as_slice());
        assert_eq!(f, vec![0, 0, 0, 3, 0x12, 0x34, 0xff]);
    }

    #[test]
    fn message_type_table() {
        assert_eq!(MessageType::ALL.len(), 26);
        for (i, t) in MessageType::ALL.iter().enumerate() {
            assert_eq!(t.as_u16() as usize, i + 1);
            assert_eq!(MessageType::from_u16(t.as_u16()), Some(*t));
            assert_eq!(MessageType::try_from(t.as_u16()), Ok(*t));
        }
        assert_eq!(MessageType::from_u16(0), None);
        assert_eq!(MessageType::from_u16(27), None);
        assert_eq!(MessageType::try_from(99), Err(99));
        assert_eq!(MessageType::CleanShutdown.as_u16(), 3);
        assert_eq!(MessageType::ClusterStatusResponse.as_u16(), 10);
        assert_eq!(MessageType::ClusterStatusNotInitialized.as_u16(), 11);
        assert_eq!(MessageType::SourceIdsQuery.as_u16(), 14);
        assert_eq!(MessageType::ReportStatus.as_u16(), 16);
        assert_eq!(MessageType::StateEntityQueryResponse.as_u16(), 18);
        assert_eq!(
            MessageType::ClusterStatusQuery.response_type(),
            Some(MessageType::ClusterStatusResponse)
        );
        assert_eq!(
            MessageType::ClusterStateEntityCountQuery.response_type(),
            Some(MessageType::ClusterStateEntityCountQueryResponse)
        );
        assert_eq!(MessageType::Print.response_type(), None);
        assert_eq!(MessageType::RotateLog.to_string(), "RotateLog (2)");
    }

    #[test]
    fn length_too_short_is_an_error_and_sticks() {
        for len in [0u32, 1] {
            let mut d = ExternalCodec::default();
            let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
            assert_eq!(
                d.decode_frame(&mut buf),
                Err(FrameError::LengthTooShort { len })
            );
            buf.extend_from_slice(&encode_frame(MessageType::Print, "x"));
            assert_eq!(
                d.decode_frame(&mut buf),
                Err(FrameError::LengthTooShort { len })
            );
        }
    }

    #[test]
    fn length_too_long_is_an_error() {
        let mut d = ExternalCodec::default();
        let mut buf = BytesMut::from(&(MAX_FRAME_LEN + 1).to_be_bytes()[..]);
        assert_eq!(
            d.decode_frame(&mut buf),
            Err(FrameError::LengthTooLong {
                len: MAX_FRAME_LEN as u64 + 1,
                max: MAX_FRAME_LEN
            })
        );
        let mut d = ExternalCodec::default();
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        assert!(matches!(
            d.decode_frame(&mut buf),
            Err(FrameError::LengthTooLong { .. })
        ));
        // Exactly the maximum is fine (announced, waiting for the bytes).
        let mut d = ExternalCodec::default();
        let mut buf = BytesMut::from(&MAX_FRAME_LEN.to_be_bytes()[..]);
        assert_eq!(d.decode_frame(&mut buf), Ok(None));
        // A custom maximum.
        let mut d = ExternalCodec::with_max_len(10);
        let mut buf = BytesMut::from(&encode_frame(MessageType::Print, "123456789")[..]);
        assert_eq!(
            d.decode_frame(&mut buf),
            Err(FrameError::LengthTooLong { len: 11, max: 10 })
        );
        let msg = FrameError::LengthTooLong { len: 11, max: 10 }.to_string();
        assert!(msg.contains("11") && msg.contains("10"), "{msg}");
    }

    #[test]
    fn encode_rejects_oversized_payload() {
        let big = vec![0u8; MAX_PAYLOAD_LEN + 1];
        assert!(matches!(
            try_encode_frame(MessageType::Print, &big),
            Err(FrameError::LengthTooLong { .. })
        ));
        let mut out = vec![7u8];
        assert!(encode_frame_into(&mut out, MessageType::Print, &big).is_err());
        assert_eq!(out, vec![7u8]);
        let ok = vec![0u8; MAX_PAYLOAD_LEN];
        let f = try_encode_frame(MessageType::Print, &ok).unwrap();
        assert_eq!(&f[..4], &MAX_FRAME_LEN.to_be_bytes());
    }

    #[test]
    #[should_panic(expected = "encode_frame")]
    fn encode_frame_panics_on_oversized_payload() {
        encode_frame(MessageType::Print, vec![0u8; MAX_PAYLOAD_LEN + 1]);
    }

    #[test]
    fn decoding_in_pieces() {
        let mut d = ExternalCodec::default();
        let mut buf = BytesMut::new();
        assert_eq!(d.decode_frame(&mut buf), Ok(None));
        let a = encode_frame(MessageType::RotateLog, "w1");
        let b = encode_frame(MessageType::ClusterStatusQuery, "");
        buf.extend_from_slice(&a);
        buf.extend_from_slice(&b[..5]);
        assert_eq!(
            d.decode_frame(&mut buf).unwrap(),
            Some(Frame::new(MessageType::RotateLog, "w1"))
        );
        assert_eq!(d.decode_frame(&mut buf).unwrap(), None);
        assert_eq!(buf.len(), 5);
        buf.extend_from_slice(&b[5..]);
        let f = d.decode_frame(&mut buf).unwrap().unwrap();
        assert_eq!(f.message_type(), Some(MessageType::ClusterStatusQuery));
        assert!(f.payload.is_empty());
        assert!(buf.is_empty());
        let unknown = Frame {
            msg_type: 500,
            payload: b"\xff".to_vec(),
        };
        assert_eq!(unknown.message_type(), None);
        assert!(unknown.payload_str().is_err());
        assert_eq!(unknown.payload_lossy(), "\u{fffd}");
    }

    #[test]
    fn blocking_reads() {
        let mut wire = Vec::new();
        encode_frame_into(&mut wire, MessageType::Print, "one").unwrap();
        encode_frame_into(&mut wire, MessageType::CleanShutdown, "").unwrap();
        let mut r =
            BlockingFramedRead::new(io::Cursor::new(wire.clone()), ExternalCodec::default());
        assert_eq!(
            r.next_frame().unwrap(),
            Some(Frame::new(MessageType::Print, "one"))
        );
        assert_eq!(
            r.next_frame().unwrap(),
            Some(Frame::new(MessageType::CleanShutdown, ""))
        );
        assert_eq!(r.next_frame().unwrap(), None);
        // Truncated frame.
        let mut r = BlockingFramedRead::new(&wire[..5], ExternalCodec::default());
        assert!(matches!(
            r.next_frame(),
            Err(ReadError::Truncated { buffered: 5 })
        ));
        // Bad length.
        let mut r = BlockingFramedRead::new(&[0u8, 0, 0, 1, 0][..], ExternalCodec::default());
        let e = r.next_frame().unwrap_err();
        assert!(matches!(
            e,
            ReadError::Protocol(FrameError::LengthTooShort { len: 1 })
        ));
        assert!(e.to_string().contains("below the minimum"), "{e}");
    }

    #[test]
    fn cluster_status_json() {
        let s = ClusterStatus {
            worker_count: 2,
            worker_names: vec!["initializer".into(), "worker-1".into()],
            processing_messages: true,
        };
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(
            j,
            r#"{"worker_count":2,"worker_names":["initializer","worker-1"],"processing_messages":true}"#
        );
        assert_eq!(serde_json::from_str::<ClusterStatus>(&j).unwrap(), s);
        // Other key order, whitespace, unknown keys.
        let t = " {\n \"processing_messages\" : false, \"extra\": {\"a\": [1, 2.5e3, null]},\n \"worker_names\": [], \"worker_count\": 0 } ";
        assert_eq!(
            serde_json::from_str::<ClusterStatus>(t).unwrap(),
            ClusterStatus {
                worker_count: 0,
                worker_names: vec![],
                processing_messages: false
            }
        );
        // Escapes both ways.
        let odd = ClusterStatus {
            worker_count: 1,
            worker_names: vec!["a\"b\\c\nd\u{1}é😀".into()],
            processing_messages: false,
        };
        let j = serde_json::to_string(&odd).unwrap();
        assert!(j.contains(r#"a\"b\\c\nd\u0001é😀"#), "{j}");
        assert_eq!(serde_json::from_str::<ClusterStatus>(&j).unwrap(), odd);
        let esc = r#"{"worker_count":1,"worker_names":["\u00e9\ud83d\ude00\/"],"processing_messages":true}"#;
        assert_eq!(
            serde_json::from_str::<ClusterStatus>(esc)
                .unwrap()
                .worker_names,
            vec!["é😀/".to_string()]
        );
    }

    #[test]
    fn cluster_status_json_errors() {
        let e = serde_json::from_str::<ClusterStatus>(
            r#"{"worker_names":[],"processing_messages":true}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("worker_count"), "{e}");
        for bad in [
            r#"{"worker_count":-1,"worker_names":[],"processing_messages":true}"#,
            r#"{"worker_count":1.5,"worker_names":[],"processing_messages":true}"#,
            r#"{"worker_count":1,"worker_names":[1],"processing_messages":true}"#,
            r#"{"worker_count":1,"worker_names":[],"processing_messages":"yes"}"#,
            "",
            "[]",
            "{",
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"{"a":tru}"#,
            r#"{"a":"\x"}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{} x"#,
            r#"{"a":"unterminated}"#,
        ] {
            assert!(
                serde_json::from_str::<ClusterStatus>(bad).is_err(),
                "accepted {bad:?}"
            );
        }
    }

    #[test]
    fn other_payloads_json() {
        let r = ShrinkRequest {
            query: true,
            node_names: vec!["w2".into()],
            node_count: 1,
        };
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(j, r#"{"query":true,"node_names":["w2"],"node_count":1}"#);
        assert_eq!(serde_json::from_str::<ShrinkRequest>(&j).unwrap(), r);
        assert_eq!(
            serde_json::from_str::<ShrinkRequest>(r#"{"node_count":2}"#).unwrap(),
            ShrinkRequest {
                query: false,
                node_names: vec![],
                node_count: 2
            }
        );
        let q = ShrinkQueryResponse {
            node_names: vec!["a".into(), "b".into()],
            node_count: 2,
        };
        let j = serde_json::to_string(&q).unwrap();
        assert_eq!(j, r#"{"node_names":["a","b"],"node_count":2}"#);
        assert_eq!(serde_json::from_str::<ShrinkQueryResponse>(&j).unwrap(), q);
        let s = SourceIds {
            source_ids: vec!["123".into()],
        };
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(j, r#"{"source_ids":["123"]}"#);
        assert_eq!(serde_json::from_str::<SourceIds>(&j).unwrap(), s);
        let mut e = StateEntities::default();
        assert_eq!(serde_json::to_string(&e).unwrap(), "{}");
        e.by_stage
            .insert("42".into(), vec!["k1".into(), "k\"2".into()]);
        e.by_stage.insert("7".into(), vec![]);
        let j = serde_json::to_string(&e).unwrap();
        assert_eq!(j, r#"{"42":["k1","k\"2"],"7":[]}"#);
        assert_eq!(serde_json::from_str::<StateEntities>(&j).unwrap(), e);
        assert!(serde_json::from_str::<StateEntities>(r#"{"1": 2}"#).is_err());
    }

    #[test]
    fn report_status_json() {
        let mut r = ReportStatus {
            messages_in: 10,
            shipped: 2,
            frames_in: 9,
            bad_frames: 1,
            sink_dropped: 0,
            dropped: 3,
            ..ReportStatus::default()
        };
        r.dropped_by_place
            .insert("stage 'a \"b\"' (computation)".into(), 3);
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(
            j,
            r#"{"messages_in":10,"shipped":2,"frames_in":9,"bad_frames":1,"sink_dropped":0,"dropped":3,"dropped_by_place":{"stage 'a \"b\"' (computation)":3}}"#
        );
        assert_eq!(serde_json::from_str::<ReportStatus>(&j).unwrap(), r);
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(msg_type, payload)| Frame { msg_type, payload })
    }

    proptest! {
        #[test]
        fn round_trip_across_arbitrary_splits(
            frames in proptest::collection::vec(arb_frame(), 0..20),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..40),
        ) {
            let mut wire = Vec::new();
            for f in &frames {
                encode_frame_into(&mut wire, f.msg_type, &f.payload).unwrap();
            }
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
            points.push(0);
            points.push(wire.len());
            points.sort_unstable();
            let mut d = ExternalCodec::default();
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for w in points.windows(2) {
                buf.extend_from_slice(&wire[w[0]..w[1]]);
                while let Some(f) = d.decode_frame(&mut buf).unwrap() {
                    out.push(f);
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(out, frames);
        }

        #[test]
        fn blocking_reader_round_trip(frames in proptest::collection::vec(arb_frame(), 0..10)) {
            let mut wire = Vec::new();
            for f in &frames {
                wire.extend_from_slice(&f.encode());
            }
            let r = BlockingFramedRead::new(io::Cursor::new(wire), ExternalCodec::default());
            let out: Vec<Frame> = r.map(|f| f.unwrap()).collect();
            prop_assert_eq!(out, frames);
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut d = ExternalCodec::with_max_len(64);
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = d.decode(&mut buf) {}
            let _ = d.decode_eof(&mut buf);
        }

        #[test]
        fn cluster_status_round_trip(
            worker_count in any::<u64>(),
            worker_names in proptest::collection::vec(any::<String>(), 0..6),
            processing_messages in any::<bool>(),
        ) {
            let s = ClusterStatus { worker_count, worker_names, processing_messages };
            let j = serde_json::to_string(&s).unwrap();
            prop_assert_eq!(serde_json::from_str::<ClusterStatus>(&j).unwrap(), s);
        }
    }
}
