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
//! # JSON payloads
//!
//! The JSON shapes are tiny and fixed, so this module writes and reads them
//! by hand (see [`ClusterStatus`], [`ShrinkRequest`], [`ShrinkQueryResponse`],
//! [`SourceIds`] and [`StateEntities`]) with a small, strict parser that
//! accepts any valid JSON document, ignores unknown object keys and rejects
//! anything else with a [`JsonError`].
//!
//! # Decoding
//!
//! [`ExternalFrameDecoder`] is incremental: push bytes as they arrive in
//! chunks of any size, pop complete frames. A bad length makes the decoder
//! fail for good (there is no way to resynchronise a length-prefixed
//! stream); the connection should be closed. [`read_frame`] and
//! [`write_frame`] do the same on blocking `std::io` streams.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};

use thiserror::Error;

/// Size of the length field that starts every frame.
pub const LENGTH_FIELD_LEN: usize = 4;
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
        /// The message types of the external channel (spec 8.5).
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
    out.reserve(LENGTH_FIELD_LEN + len as usize);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(&ty.into().to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
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

/// Incremental decoder of external frames.
///
/// ```
/// use quoll_core::external::{encode_frame, ExternalFrameDecoder, MessageType};
/// let bytes = encode_frame(MessageType::Print, "hello");
/// let mut d = ExternalFrameDecoder::new();
/// d.push(&bytes[..3]);
/// assert_eq!(d.pop().unwrap(), None);
/// d.push(&bytes[3..]);
/// let f = d.pop().unwrap().unwrap();
/// assert_eq!(f.message_type(), Some(MessageType::Print));
/// assert_eq!(f.payload, b"hello");
/// ```
#[derive(Debug, Clone)]
pub struct ExternalFrameDecoder {
    buf: Vec<u8>,
    start: usize,
    max_len: u32,
    failed: Option<FrameError>,
}

impl Default for ExternalFrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ExternalFrameDecoder {
    /// A decoder with the default maximum of [`MAX_FRAME_LEN`].
    pub fn new() -> Self {
        Self::with_max_len(MAX_FRAME_LEN)
    }

    /// A decoder accepting length fields up to `max_len` (at least 2).
    pub fn with_max_len(max_len: u32) -> Self {
        ExternalFrameDecoder {
            buf: Vec::new(),
            start: 0,
            max_len: max_len.max(MIN_FRAME_LEN),
            failed: None,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && (self.start == self.buf.len() || self.start >= 64 * 1024) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes pushed and not yet returned in a frame.
    pub fn buffered_len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// True if no partial frame is pending (a clean place for the peer to
    /// close the connection).
    pub fn is_empty(&self) -> bool {
        self.buffered_len() == 0
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    /// After an error every later call returns the same error.
    pub fn pop(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let avail = &self.buf[self.start..];
        if avail.len() < LENGTH_FIELD_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]);
        if let Err(e) = check_len(len, self.max_len) {
            self.failed = Some(e.clone());
            return Err(e);
        }
        let total = LENGTH_FIELD_LEN + len as usize;
        if avail.len() < total {
            return Ok(None);
        }
        let msg_type = u16::from_be_bytes([avail[4], avail[5]]);
        let payload = avail[LENGTH_FIELD_LEN + TYPE_FIELD_LEN..total].to_vec();
        self.start += total;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Ok(Some(Frame { msg_type, payload }))
    }
}

fn check_len(len: u32, max: u32) -> Result<(), FrameError> {
    if len < MIN_FRAME_LEN {
        Err(FrameError::LengthTooShort { len })
    } else if len > max {
        Err(FrameError::LengthTooLong {
            len: len as u64,
            max,
        })
    } else {
        Ok(())
    }
}

/// Reads one frame from a blocking stream. `Ok(None)` on a clean end of
/// stream before the first byte of a frame; an end of stream inside a frame
/// is `UnexpectedEof`; a bad length is `InvalidData` wrapping a
/// [`FrameError`].
pub fn read_frame<R: Read + ?Sized>(r: &mut R) -> io::Result<Option<Frame>> {
    let mut header = [0u8; LENGTH_FIELD_LEN + TYPE_FIELD_LEN];
    // First byte: distinguishes a clean close from a truncated frame.
    let mut got = 0;
    while got == 0 {
        match r.read(&mut header[..1]) {
            Ok(0) => return Ok(None),
            Ok(n) => got = n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    r.read_exact(&mut header[1..LENGTH_FIELD_LEN])?;
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    check_len(len, MAX_FRAME_LEN).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    r.read_exact(&mut header[LENGTH_FIELD_LEN..])?;
    let msg_type = u16::from_be_bytes([header[4], header[5]]);
    let mut payload = vec![0u8; len as usize - TYPE_FIELD_LEN];
    r.read_exact(&mut payload)?;
    Ok(Some(Frame { msg_type, payload }))
}

/// Writes one frame (in a single `write_all`) and flushes. A payload that
/// is too long is `InvalidInput`.
pub fn write_frame<W: Write + ?Sized>(
    w: &mut W,
    ty: impl Into<u16>,
    payload: impl AsRef<[u8]>,
) -> io::Result<()> {
    let bytes = try_encode_frame(ty, payload)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    w.write_all(&bytes)?;
    w.flush()
}

// ---------------------------------------------------------------------------
// JSON payloads
// ---------------------------------------------------------------------------

/// Errors reading a JSON payload.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JsonError {
    /// Not valid JSON.
    #[error("invalid JSON at byte {pos}: {msg}")]
    Syntax {
        /// Byte offset of the problem.
        pos: usize,
        /// What was wrong.
        msg: String,
    },
    /// A required key is absent.
    #[error("JSON object has no \"{0}\" key")]
    MissingKey(String),
    /// A value has the wrong type or range.
    #[error("JSON key \"{key}\": expected {expected}")]
    WrongType {
        /// The key (or a description of the position).
        key: String,
        /// What was expected.
        expected: &'static str,
    },
}

/// A parsed JSON value (numbers keep their text, so integers are exact).
#[derive(Debug, Clone, PartialEq)]
pub enum JsonValue {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// A number, as written.
    Number(String),
    /// A string, unescaped.
    String(String),
    /// An array.
    Array(Vec<JsonValue>),
    /// An object, keys in document order (a repeated key keeps all entries;
    /// lookups see the last one).
    Object(Vec<(String, JsonValue)>),
}

impl JsonValue {
    /// Parses one JSON document (surrounding whitespace allowed).
    pub fn parse(text: &str) -> Result<JsonValue, JsonError> {
        let mut p = Parser {
            s: text.as_bytes(),
            pos: 0,
            depth: 0,
        };
        p.ws();
        let v = p.value()?;
        p.ws();
        if p.pos != p.s.len() {
            return Err(p.err("trailing characters after the JSON value"));
        }
        Ok(v)
    }

    /// For an object, the value of `key` (the last one if repeated).
    pub fn get(&self, key: &str) -> Option<&JsonValue> {
        match self {
            JsonValue::Object(entries) => {
                entries.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
            }
            _ => None,
        }
    }

    /// A non-negative integer that fits in `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            JsonValue::Number(n) => n.parse::<u64>().ok(),
            _ => None,
        }
    }

    /// A boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            JsonValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// A string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            JsonValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// An array of strings.
    pub fn as_str_array(&self) -> Option<Vec<String>> {
        match self {
            JsonValue::Array(items) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => None,
        }
    }
}

const MAX_JSON_DEPTH: usize = 128;

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn err(&self, msg: &str) -> JsonError {
        JsonError::Syntax {
            pos: self.pos,
            msg: msg.to_owned(),
        }
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn expect_lit(&mut self, lit: &str, v: JsonValue) -> Result<JsonValue, JsonError> {
        if self.s[self.pos..].starts_with(lit.as_bytes()) {
            self.pos += lit.len();
            Ok(v)
        } else {
            Err(self.err("unknown literal"))
        }
    }

    fn value(&mut self) -> Result<JsonValue, JsonError> {
        match self.peek() {
            None => Err(self.err("unexpected end of input")),
            Some(b'n') => self.expect_lit("null", JsonValue::Null),
            Some(b't') => self.expect_lit("true", JsonValue::Bool(true)),
            Some(b'f') => self.expect_lit("false", JsonValue::Bool(false)),
            Some(b'"') => Ok(JsonValue::String(self.string()?)),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'[') => {
                self.enter()?;
                self.pos += 1;
                let mut items = Vec::new();
                self.ws();
                if self.peek() == Some(b']') {
                    self.pos += 1;
                } else {
                    loop {
                        self.ws();
                        items.push(self.value()?);
                        self.ws();
                        match self.peek() {
                            Some(b',') => self.pos += 1,
                            Some(b']') => {
                                self.pos += 1;
                                break;
                            }
                            _ => return Err(self.err("expected ',' or ']' in array")),
                        }
                    }
                }
                self.depth -= 1;
                Ok(JsonValue::Array(items))
            }
            Some(b'{') => {
                self.enter()?;
                self.pos += 1;
                let mut entries = Vec::new();
                self.ws();
                if self.peek() == Some(b'}') {
                    self.pos += 1;
                } else {
                    loop {
                        self.ws();
                        if self.peek() != Some(b'"') {
                            return Err(self.err("expected a string key in object"));
                        }
                        let k = self.string()?;
                        self.ws();
                        if self.peek() != Some(b':') {
                            return Err(self.err("expected ':' after object key"));
                        }
                        self.pos += 1;
                        self.ws();
                        let v = self.value()?;
                        entries.push((k, v));
                        self.ws();
                        match self.peek() {
                            Some(b',') => self.pos += 1,
                            Some(b'}') => {
                                self.pos += 1;
                                break;
                            }
                            _ => return Err(self.err("expected ',' or '}' in object")),
                        }
                    }
                }
                self.depth -= 1;
                Ok(JsonValue::Object(entries))
            }
            Some(_) => Err(self.err("unexpected character")),
        }
    }

    fn enter(&mut self) -> Result<(), JsonError> {
        self.depth += 1;
        if self.depth > MAX_JSON_DEPTH {
            Err(self.err("nesting too deep"))
        } else {
            Ok(())
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<JsonValue, JsonError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err("expected a digit")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.err("expected a digit after '.'"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.err("expected a digit in exponent"));
            }
        }
        // Only ASCII was consumed.
        Ok(JsonValue::Number(
            String::from_utf8_lossy(&self.s[start..self.pos]).into_owned(),
        ))
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let h = self
            .s
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.err("truncated \\u escape"))?;
        let text = std::str::from_utf8(h).map_err(|_| self.err("bad \\u escape"))?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.err("bad \\u escape"));
        }
        let v = u32::from_str_radix(text, 16).map_err(|_| self.err("bad \\u escape"))?;
        self.pos += 4;
        Ok(v)
    }

    fn string(&mut self) -> Result<String, JsonError> {
        debug_assert_eq!(self.peek(), Some(b'"'));
        self.pos += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(b) = self.peek() else {
                return Err(self.err("unterminated string"));
            };
            match b {
                b'"' => {
                    self.pos += 1;
                    // The input is &str and escapes produce valid UTF-8.
                    return String::from_utf8(out).map_err(|_| self.err("invalid UTF-8 in string"));
                }
                b'\\' => {
                    self.pos += 1;
                    let Some(e) = self.peek() else {
                        return Err(self.err("unterminated escape"));
                    };
                    self.pos += 1;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let cp = if (0xD800..0xDC00).contains(&hi) {
                                if self.s.get(self.pos..self.pos + 2) != Some(b"\\u") {
                                    return Err(self.err("lone high surrogate in \\u escape"));
                                }
                                self.pos += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.err("invalid low surrogate in \\u escape"));
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else if (0xDC00..0xE000).contains(&hi) {
                                return Err(self.err("lone low surrogate in \\u escape"));
                            } else {
                                hi
                            };
                            char::from_u32(cp).ok_or_else(|| self.err("invalid \\u escape"))?
                        }
                        _ => return Err(self.err("unknown escape")),
                    };
                    let mut tmp = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
                }
                0x00..=0x1F => return Err(self.err("control character in string")),
                _ => {
                    out.push(b);
                    self.pos += 1;
                }
            }
        }
    }
}

/// Appends `s` as a JSON string literal (with quotes), escaping `"`, `\`
/// and control characters; other characters, non-ASCII included, are
/// written as they are (the payload is UTF-8).
pub fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                use fmt::Write as _;
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_json_str_array(out: &mut String, items: &[String]) {
    out.push('[');
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json_string(out, s);
    }
    out.push(']');
}

fn parse_object(text: &str) -> Result<JsonValue, JsonError> {
    let v = JsonValue::parse(text)?;
    match v {
        JsonValue::Object(_) => Ok(v),
        _ => Err(JsonError::WrongType {
            key: "(document)".into(),
            expected: "an object",
        }),
    }
}

fn req<'a>(obj: &'a JsonValue, key: &str) -> Result<&'a JsonValue, JsonError> {
    obj.get(key)
        .ok_or_else(|| JsonError::MissingKey(key.to_owned()))
}

fn req_u64(obj: &JsonValue, key: &str) -> Result<u64, JsonError> {
    req(obj, key)?.as_u64().ok_or(JsonError::WrongType {
        key: key.to_owned(),
        expected: "a non-negative integer",
    })
}

fn req_bool(obj: &JsonValue, key: &str) -> Result<bool, JsonError> {
    req(obj, key)?.as_bool().ok_or(JsonError::WrongType {
        key: key.to_owned(),
        expected: "a boolean",
    })
}

fn req_strs(obj: &JsonValue, key: &str) -> Result<Vec<String>, JsonError> {
    req(obj, key)?.as_str_array().ok_or(JsonError::WrongType {
        key: key.to_owned(),
        expected: "an array of strings",
    })
}

/// Payload of a cluster-status response (type 10):
/// `{"worker_count": int, "worker_names": [str], "processing_messages": bool}`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterStatus {
    /// Number of workers in the cluster.
    pub worker_count: u64,
    /// Their names.
    pub worker_names: Vec<String>,
    /// False while a stop-the-world phase (migration, rollback) runs.
    pub processing_messages: bool,
}

impl ClusterStatus {
    /// Compact JSON, keys in the order of the spec.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(64);
        out.push_str("{\"worker_count\":");
        out.push_str(&self.worker_count.to_string());
        out.push_str(",\"worker_names\":");
        write_json_str_array(&mut out, &self.worker_names);
        out.push_str(",\"processing_messages\":");
        out.push_str(if self.processing_messages {
            "true"
        } else {
            "false"
        });
        out.push('}');
        out
    }

    /// Reads the JSON written by [`ClusterStatus::to_json`] or by Wallaroo
    /// (any key order and whitespace; unknown keys are ignored).
    pub fn from_json(text: &str) -> Result<ClusterStatus, JsonError> {
        let obj = parse_object(text)?;
        Ok(ClusterStatus {
            worker_count: req_u64(&obj, "worker_count")?,
            worker_names: req_strs(&obj, "worker_names")?,
            processing_messages: req_bool(&obj, "processing_messages")?,
        })
    }
}

/// Payload of a shrink request (type 4):
/// `{"query": bool, "node_names": [str], "node_count": int}`.
/// With `query` true it only asks which workers could leave (answered with
/// type 5); otherwise it asks the named workers, or `node_count` workers,
/// to leave.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShrinkRequest {
    /// Only a query.
    pub query: bool,
    /// Workers to remove (may be empty when `node_count` is used).
    pub node_names: Vec<String>,
    /// How many workers to remove (may be 0 when names are given).
    pub node_count: u64,
}

impl ShrinkRequest {
    /// Compact JSON.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(64);
        out.push_str("{\"query\":");
        out.push_str(if self.query { "true" } else { "false" });
        out.push_str(",\"node_names\":");
        write_json_str_array(&mut out, &self.node_names);
        out.push_str(",\"node_count\":");
        out.push_str(&self.node_count.to_string());
        out.push('}');
        out
    }

    /// Reads the JSON; missing `query` means false, missing `node_names`
    /// means none and missing `node_count` means 0.
    pub fn from_json(text: &str) -> Result<ShrinkRequest, JsonError> {
        let obj = parse_object(text)?;
        Ok(ShrinkRequest {
            query: if obj.get("query").is_some() {
                req_bool(&obj, "query")?
            } else {
                false
            },
            node_names: if obj.get("node_names").is_some() {
                req_strs(&obj, "node_names")?
            } else {
                Vec::new()
            },
            node_count: if obj.get("node_count").is_some() {
                req_u64(&obj, "node_count")?
            } else {
                0
            },
        })
    }
}

/// Payload of a shrink query response (type 5):
/// `{"node_names": [str], "node_count": int}`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShrinkQueryResponse {
    /// Workers that could leave.
    pub node_names: Vec<String>,
    /// Their number.
    pub node_count: u64,
}

impl ShrinkQueryResponse {
    /// Compact JSON.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(48);
        out.push_str("{\"node_names\":");
        write_json_str_array(&mut out, &self.node_names);
        out.push_str(",\"node_count\":");
        out.push_str(&self.node_count.to_string());
        out.push('}');
        out
    }

    /// Reads the JSON.
    pub fn from_json(text: &str) -> Result<ShrinkQueryResponse, JsonError> {
        let obj = parse_object(text)?;
        Ok(ShrinkQueryResponse {
            node_names: req_strs(&obj, "node_names")?,
            node_count: req_u64(&obj, "node_count")?,
        })
    }
}

/// Payload of a source-ids response (type 15): `{"source_ids": [str]}`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SourceIds {
    /// The ids of the sources on this worker.
    pub source_ids: Vec<String>,
}

impl SourceIds {
    /// Compact JSON.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(32);
        out.push_str("{\"source_ids\":");
        write_json_str_array(&mut out, &self.source_ids);
        out.push('}');
        out
    }

    /// Reads the JSON.
    pub fn from_json(text: &str) -> Result<SourceIds, JsonError> {
        let obj = parse_object(text)?;
        Ok(SourceIds {
            source_ids: req_strs(&obj, "source_ids")?,
        })
    }
}

/// Payload of a state-entity response (type 18): an object mapping each
/// state stage id (decimal string) to the keys held on this worker.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StateEntities {
    /// Stage id -> keys.
    pub by_stage: BTreeMap<String, Vec<String>>,
}

impl StateEntities {
    /// Compact JSON, stages in key order.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(64);
        out.push('{');
        for (i, (stage, keys)) in self.by_stage.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_json_string(&mut out, stage);
            out.push(':');
            write_json_str_array(&mut out, keys);
        }
        out.push('}');
        out
    }

    /// Reads the JSON.
    pub fn from_json(text: &str) -> Result<StateEntities, JsonError> {
        let JsonValue::Object(entries) = parse_object(text)? else {
            unreachable!()
        };
        let mut by_stage = BTreeMap::new();
        for (k, v) in entries {
            let keys = v.as_str_array().ok_or(JsonError::WrongType {
                key: k.clone(),
                expected: "an array of strings",
            })?;
            by_stage.insert(k, keys);
        }
        Ok(StateEntities { by_stage })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
            let mut d = ExternalFrameDecoder::new();
            d.push(&len.to_be_bytes());
            assert_eq!(d.pop(), Err(FrameError::LengthTooShort { len }));
            d.push(&encode_frame(MessageType::Print, "x"));
            assert_eq!(d.pop(), Err(FrameError::LengthTooShort { len }));
        }
    }

    #[test]
    fn length_too_long_is_an_error() {
        let mut d = ExternalFrameDecoder::new();
        d.push(&(MAX_FRAME_LEN + 1).to_be_bytes());
        assert_eq!(
            d.pop(),
            Err(FrameError::LengthTooLong {
                len: MAX_FRAME_LEN as u64 + 1,
                max: MAX_FRAME_LEN
            })
        );
        let mut d = ExternalFrameDecoder::new();
        d.push(&u32::MAX.to_be_bytes());
        assert!(matches!(d.pop(), Err(FrameError::LengthTooLong { .. })));
        // Exactly the maximum is fine (announced, waiting for the bytes).
        let mut d = ExternalFrameDecoder::new();
        d.push(&MAX_FRAME_LEN.to_be_bytes());
        assert_eq!(d.pop(), Ok(None));
        // A custom maximum.
        let mut d = ExternalFrameDecoder::with_max_len(10);
        d.push(&encode_frame(MessageType::Print, "123456789"));
        assert_eq!(d.pop(), Err(FrameError::LengthTooLong { len: 11, max: 10 }));
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
    fn decoder_bookkeeping() {
        let mut d = ExternalFrameDecoder::default();
        assert!(d.is_empty());
        assert_eq!(d.pop(), Ok(None));
        let a = encode_frame(MessageType::RotateLog, "w1");
        let b = encode_frame(MessageType::ClusterStatusQuery, "");
        d.push(&a);
        d.push(&b[..5]);
        assert_eq!(d.buffered_len(), a.len() + 5);
        assert_eq!(
            d.pop().unwrap(),
            Some(Frame::new(MessageType::RotateLog, "w1"))
        );
        assert_eq!(d.pop().unwrap(), None);
        assert!(!d.is_empty());
        d.push(&b[5..]);
        let f = d.pop().unwrap().unwrap();
        assert_eq!(f.message_type(), Some(MessageType::ClusterStatusQuery));
        assert!(f.payload.is_empty());
        assert!(d.is_empty());
        let unknown = Frame {
            msg_type: 500,
            payload: b"\xff".to_vec(),
        };
        assert_eq!(unknown.message_type(), None);
        assert!(unknown.payload_str().is_err());
        assert_eq!(unknown.payload_lossy(), "\u{fffd}");
    }

    #[test]
    fn blocking_read_write() {
        let mut wire = Vec::new();
        write_frame(&mut wire, MessageType::Print, "one").unwrap();
        write_frame(&mut wire, MessageType::CleanShutdown, "").unwrap();
        let mut r = io::Cursor::new(wire.clone());
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some(Frame::new(MessageType::Print, "one"))
        );
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some(Frame::new(MessageType::CleanShutdown, ""))
        );
        assert_eq!(read_frame(&mut r).unwrap(), None);
        // Truncated frame.
        let mut r = io::Cursor::new(wire[..5].to_vec());
        assert_eq!(
            read_frame(&mut r).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        // Bad length.
        let mut r = io::Cursor::new(vec![0, 0, 0, 1, 0]);
        let e = read_frame(&mut r).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("below the minimum"), "{e}");
    }

    #[test]
    fn cluster_status_json() {
        let s = ClusterStatus {
            worker_count: 2,
            worker_names: vec!["initializer".into(), "worker-1".into()],
            processing_messages: true,
        };
        assert_eq!(
            s.to_json(),
            r#"{"worker_count":2,"worker_names":["initializer","worker-1"],"processing_messages":true}"#
        );
        assert_eq!(ClusterStatus::from_json(&s.to_json()).unwrap(), s);
        // Other key order, whitespace, unknown keys.
        let t = " {\n \"processing_messages\" : false, \"extra\": {\"a\": [1, 2.5e3, null]},\n \"worker_names\": [], \"worker_count\": 0 } ";
        assert_eq!(
            ClusterStatus::from_json(t).unwrap(),
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
        let j = odd.to_json();
        assert!(j.contains(r#"a\"b\\c\nd\u0001é😀"#), "{j}");
        assert_eq!(ClusterStatus::from_json(&j).unwrap(), odd);
        let esc = r#"{"worker_count":1,"worker_names":["\u00e9\ud83d\ude00\/"],"processing_messages":true}"#;
        assert_eq!(
            ClusterStatus::from_json(esc).unwrap().worker_names,
            vec!["é😀/".to_string()]
        );
    }

    #[test]
    fn cluster_status_json_errors() {
        use JsonError::*;
        assert_eq!(
            ClusterStatus::from_json(r#"{"worker_names":[],"processing_messages":true}"#),
            Err(MissingKey("worker_count".into()))
        );
        assert!(matches!(
            ClusterStatus::from_json(
                r#"{"worker_count":-1,"worker_names":[],"processing_messages":true}"#
            ),
            Err(WrongType { .. })
        ));
        assert!(matches!(
            ClusterStatus::from_json(
                r#"{"worker_count":1.5,"worker_names":[],"processing_messages":true}"#
            ),
            Err(WrongType { .. })
        ));
        assert!(matches!(
            ClusterStatus::from_json(
                r#"{"worker_count":1,"worker_names":[1],"processing_messages":true}"#
            ),
            Err(WrongType { .. })
        ));
        assert!(matches!(
            ClusterStatus::from_json(
                r#"{"worker_count":1,"worker_names":[],"processing_messages":"yes"}"#
            ),
            Err(WrongType { .. })
        ));
        for bad in [
            "",
            "[]",
            "{",
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"{"a":tru}"#,
            r#"{"a":"\x"}"#,
            r#"{"a":"\ud83d"}"#,
            r#"{"a":"\ude00"}"#,
            "{\"a\":\"\u{1}\"}",
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{} x"#,
            r#"{"a":"unterminated}"#,
        ] {
            assert!(ClusterStatus::from_json(bad).is_err(), "accepted {bad:?}");
        }
        let deep = "[".repeat(1000);
        assert!(JsonValue::parse(&deep).is_err());
    }

    #[test]
    fn other_payloads_json() {
        let r = ShrinkRequest {
            query: true,
            node_names: vec!["w2".into()],
            node_count: 1,
        };
        assert_eq!(
            r.to_json(),
            r#"{"query":true,"node_names":["w2"],"node_count":1}"#
        );
        assert_eq!(ShrinkRequest::from_json(&r.to_json()).unwrap(), r);
        assert_eq!(
            ShrinkRequest::from_json(r#"{"node_count":2}"#).unwrap(),
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
        assert_eq!(ShrinkQueryResponse::from_json(&q.to_json()).unwrap(), q);
        let s = SourceIds {
            source_ids: vec!["123".into()],
        };
        assert_eq!(s.to_json(), r#"{"source_ids":["123"]}"#);
        assert_eq!(SourceIds::from_json(&s.to_json()).unwrap(), s);
        let mut e = StateEntities::default();
        assert_eq!(e.to_json(), "{}");
        e.by_stage
            .insert("42".into(), vec!["k1".into(), "k\"2".into()]);
        e.by_stage.insert("7".into(), vec![]);
        assert_eq!(e.to_json(), r#"{"42":["k1","k\"2"],"7":[]}"#);
        assert_eq!(StateEntities::from_json(&e.to_json()).unwrap(), e);
        assert!(StateEntities::from_json(r#"{"1": 2}"#).is_err());
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
            let mut d = ExternalFrameDecoder::new();
            let mut out = Vec::new();
            for w in points.windows(2) {
                d.push(&wire[w[0]..w[1]]);
                while let Some(f) = d.pop().unwrap() {
                    out.push(f);
                }
            }
            prop_assert!(d.is_empty());
            prop_assert_eq!(out, frames);
        }

        #[test]
        fn blocking_reader_round_trip(frames in proptest::collection::vec(arb_frame(), 0..10)) {
            let mut wire = Vec::new();
            for f in &frames {
                write_frame(&mut wire, f.msg_type, &f.payload).unwrap();
            }
            let mut r = io::Cursor::new(wire);
            let mut out = Vec::new();
            while let Some(f) = read_frame(&mut r).unwrap() {
                out.push(f);
            }
            prop_assert_eq!(out, frames);
        }

        #[test]
        fn cluster_status_round_trip(
            worker_count in any::<u64>(),
            worker_names in proptest::collection::vec(any::<String>(), 0..6),
            processing_messages in any::<bool>(),
        ) {
            let s = ClusterStatus { worker_count, worker_names, processing_messages };
            prop_assert_eq!(ClusterStatus::from_json(&s.to_json()).unwrap(), s);
        }

        #[test]
        fn json_parser_never_panics(text in "\\PC{0,64}") {
            let _ = JsonValue::parse(&text);
        }
    }
}
