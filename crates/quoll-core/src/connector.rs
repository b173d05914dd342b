//! Connector protocol v3: the frames that external connector processes and
//! a worker's connector sources and sinks exchange.
//!
//! Pure encoding and decoding, no I/O: the worker's source task
//! (`quoll-py`) and `quoll send --connector` (`quoll-tools`) both build on
//! this module.
//!
//! # Frame layout
//!
//! ```text
//! +----------------+------------+---------------------------+
//! | length: u32 BE | type: u8   | body: length - 1 bytes    |
//! +----------------+------------+---------------------------+
//! ```
//!
//! `length` counts the type byte and the body (at least 1; a reader's limit
//! is [`MAX_FRAME_SIZE`] unless the source configures another). All
//! integers are big-endian;
//! a *short string* is a `u16` length followed by that many bytes (UTF-8 for
//! text; invalid UTF-8 is decoded lossily, so a decoder never fails on it).
//!
//! | Type | Name | Body |
//! |---|---|---|
//! | 0 | HELLO | short version, short cookie, short program_name, short instance_name |
//! | 1 | OK | u32 initial_credits |
//! | 2 | ERROR | short message |
//! | 3 | NOTIFY | u64 stream_id, short stream_name, u64 point_of_ref |
//! | 4 | NOTIFY_ACK | u8 success, u64 stream_id, u64 point_of_ref |
//! | 5 | MESSAGE | u64 stream_id, u64 message_id, i64 event_time, short key, payload = rest of the frame |
//! | 6 | ACK | u32 credits, u32 count, count × (u64 stream_id, u64 point_of_ref) |
//! | 7 | RESTART | u32 length + address (`"host:port"`, may be empty) |
//! | 8 | EOS_MESSAGE | u64 stream_id |
//!
//! A point of reference of [`NO_POSITION`] (`u64::MAX`) means "nothing
//! processed yet". Decoding is strict about layout: a body shorter than its
//! fields or with bytes left over after them is an error (except MESSAGE,
//! whose payload is whatever follows the key).
//!
//! # Decoding a stream
//!
//! Frames are cut by [`crate::frame`]; [`ConnectorCodec`] is the decoder
//! (`FramedRead` on an async socket, [`crate::frame::BlockingFramedRead`] on
//! a blocking one). A bad length field (zero, or above the decoder's
//! limit) makes it fail for good, since a length-prefixed stream can't be
//! re-synchronised. A frame whose length is fine but whose body is
//! malformed (unknown type, short or over-long body) is consumed and
//! reported as an error for that frame only; the protocol still requires
//! the receiver to answer ERROR and close. `docs/formats.md` has this
//! layout with the other protocols'.

use std::fmt;

pub use bytes::Bytes;
use bytes::{Buf, BytesMut};
use thiserror::Error;

pub use crate::frame::LENGTH_FIELD_LEN;
use crate::frame::{ByteOrder, FrameCodec, LengthError, LengthPrefixed, Protocol};

/// The only protocol version a worker's source accepts in HELLO.
pub const PROTOCOL_VERSION: &str = "0.0.1";
/// The point of reference that means "nothing processed yet".
pub const NO_POSITION: u64 = u64::MAX;
/// Default (and usual) largest value of the length field: 16 MiB.
pub const MAX_FRAME_SIZE: u32 = 16 * 1024 * 1024;
/// Largest short string.
pub const MAX_SHORT_STRING: usize = u16::MAX as usize;
/// Bytes of a MESSAGE frame before its key and payload: length, type,
/// stream id, message id, event time, key length.
pub const MESSAGE_OVERHEAD: usize = LENGTH_FIELD_LEN + 1 + 8 + 8 + 8 + 2;

/// The ERROR text for a HELLO with another version.
pub fn unknown_version_error(version: &str) -> String {
    format!("Unknown protocol version: {version}")
}

/// The ERROR text for a HELLO with the wrong cookie.
pub fn bad_cookie_error(got: &str, wanted: &str) -> String {
    format!("Bad cookie: {got}, wanted: {wanted}")
}

/// The ERROR text for a MESSAGE on a stream that is not open on the
/// connection.
pub fn bad_stream_error(stream_id: u64) -> String {
    format!("Bad/unregistered stream_id {stream_id}")
}

/// The ERROR text for a frame a worker does not expect.
pub fn invalid_message_error(what: &str) -> String {
    format!("Invalid message: {what}")
}

/// The frame types of protocol v3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum FrameType {
    /// 0: client → worker, opens a session.
    Hello = 0,
    /// 1: worker → client, accepts the session with initial credits.
    Ok = 1,
    /// 2: either way; the sender closes after it.
    Error = 2,
    /// 3: client → worker, opens a stream.
    Notify = 3,
    /// 4: worker → client, answers NOTIFY.
    NotifyAck = 4,
    /// 5: client → worker, one message of a stream.
    Message = 5,
    /// 6: worker → client, credits and acknowledged positions.
    Ack = 6,
    /// 7: worker → client, reconnect (to the address, or the same one).
    Restart = 7,
    /// 8: client → worker, end of a stream.
    EosMessage = 8,
}

impl FrameType {
    /// Every type, in numeric order.
    pub const ALL: [FrameType; 9] = [
        FrameType::Hello,
        FrameType::Ok,
        FrameType::Error,
        FrameType::Notify,
        FrameType::NotifyAck,
        FrameType::Message,
        FrameType::Ack,
        FrameType::Restart,
        FrameType::EosMessage,
    ];

    /// The type for a wire value, `None` for an unknown one.
    pub fn from_u8(v: u8) -> Option<FrameType> {
        FrameType::ALL.get(v as usize).copied()
    }

    /// The wire value.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// The protocol's name: `HELLO`, `NOTIFY_ACK`, ...
    pub fn name(self) -> &'static str {
        match self {
            FrameType::Hello => "HELLO",
            FrameType::Ok => "OK",
            FrameType::Error => "ERROR",
            FrameType::Notify => "NOTIFY",
            FrameType::NotifyAck => "NOTIFY_ACK",
            FrameType::Message => "MESSAGE",
            FrameType::Ack => "ACK",
            FrameType::Restart => "RESTART",
            FrameType::EosMessage => "EOS_MESSAGE",
        }
    }
}

impl fmt::Display for FrameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors of encoding and decoding.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConnectorError {
    /// The length field is 0: there is not even a type byte.
    #[error("connector frame length 0: a frame needs at least its type byte")]
    EmptyFrame,
    /// The length field (or a frame to encode) is above the limit.
    #[error("connector frame length {len} exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The length (type + body).
        len: u64,
        /// The limit in force.
        max: u64,
    },
    /// An unknown type byte.
    #[error("unknown connector frame type {0}")]
    UnknownType(u8),
    /// The body ends before a field does.
    #[error("{frame} frame truncated: its {field} needs {needed} bytes but only {left} remain")]
    Truncated {
        /// Frame type name.
        frame: &'static str,
        /// Field name.
        field: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the body.
        left: usize,
    },
    /// Bytes remain after the last field.
    #[error("{frame} frame has {extra} unexpected bytes after its last field")]
    TrailingBytes {
        /// Frame type name.
        frame: &'static str,
        /// Bytes left over.
        extra: usize,
    },
    /// A short string to encode is longer than 65535 bytes.
    #[error("{frame} field {field} is {len} bytes, more than a short string's {MAX_SHORT_STRING}")]
    StringTooLong {
        /// Frame type name.
        frame: &'static str,
        /// Field name.
        field: &'static str,
        /// Its length.
        len: usize,
    },
}

impl ConnectorError {
    /// True if the error leaves a stream impossible to re-synchronise
    /// (a bad length field); a decoder then keeps failing with it.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            ConnectorError::EmptyFrame | ConnectorError::FrameTooLarge { .. }
        )
    }

    /// The frame type named by a malformed-body error (a body shorter than
    /// its fields, or with bytes left over).
    pub fn malformed_frame(&self) -> Option<&'static str> {
        match self {
            ConnectorError::Truncated { frame, .. }
            | ConnectorError::TrailingBytes { frame, .. } => Some(frame),
            _ => None,
        }
    }
}

impl From<LengthError> for ConnectorError {
    fn from(e: LengthError) -> Self {
        match e {
            LengthError::TooShort { .. } => ConnectorError::EmptyFrame,
            LengthError::TooLong { len, max } => ConnectorError::FrameTooLarge { len, max },
        }
    }
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectorMessage {
    /// 0 HELLO.
    Hello {
        /// Protocol version; a worker's source accepts only [`PROTOCOL_VERSION`].
        version: String,
        /// Shared secret.
        cookie: String,
        /// Client program name.
        program_name: String,
        /// Client instance name.
        instance_name: String,
    },
    /// 1 OK.
    Ok {
        /// Credits the client starts with.
        initial_credits: u32,
    },
    /// 2 ERROR.
    Error {
        /// What went wrong.
        message: String,
    },
    /// 3 NOTIFY.
    Notify {
        /// Stream id.
        stream_id: u64,
        /// Stream name.
        stream_name: String,
        /// The client's idea of the position (the worker decides).
        point_of_ref: u64,
    },
    /// 4 NOTIFY_ACK.
    NotifyAck {
        /// True if the stream is now open on this connection.
        success: bool,
        /// Stream id.
        stream_id: u64,
        /// Resume after this position; [`NO_POSITION`] = from the start.
        point_of_ref: u64,
    },
    /// 5 MESSAGE.
    Message {
        /// Stream id.
        stream_id: u64,
        /// Strictly increasing per stream.
        message_id: u64,
        /// Event time (client-defined).
        event_time: i64,
        /// Key; empty = no key.
        key: Bytes,
        /// Payload; empty = "no message".
        payload: Bytes,
    },
    /// 6 ACK.
    Ack {
        /// Credits to add to the client's balance.
        credits: u32,
        /// `(stream_id, point_of_ref)` acknowledged up to and including.
        acks: Vec<(u64, u64)>,
    },
    /// 7 RESTART.
    Restart {
        /// `"host:port"` to reconnect to; empty = the same address.
        address: String,
    },
    /// 8 EOS_MESSAGE.
    Eos {
        /// Stream id.
        stream_id: u64,
    },
}

pub(crate) fn put_short(
    out: &mut Vec<u8>,
    s: &[u8],
    frame: &'static str,
    field: &'static str,
) -> Result<(), ConnectorError> {
    if s.len() > MAX_SHORT_STRING {
        return Err(ConnectorError::StringTooLong {
            frame,
            field,
            len: s.len(),
        });
    }
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
    Ok(())
}

/// How connector frames are cut: BE length, type byte included, 1 to
/// [`MAX_FRAME_SIZE`] (readers may set another limit).
const CONNECTOR_LENGTH: LengthPrefixed = LengthPrefixed::new(ByteOrder::Big, 1, MAX_FRAME_SIZE);

/// Starts a frame of type `ty` at the end of `out`; returns where it starts.
fn begin(out: &mut Vec<u8>, ty: FrameType) -> usize {
    let start = CONNECTOR_LENGTH.begin(out);
    out.push(ty.as_u8());
    start
}

/// Fills in the length of the frame that starts at `start`, or removes it
/// if it is too long for the length field (the reader's limit is the
/// reader's to enforce).
fn finish(out: &mut Vec<u8>, start: usize) -> Result<(), ConnectorError> {
    Ok(CONNECTOR_LENGTH.finish(out, start)?)
}

/// Appends one MESSAGE frame to `out` without building a
/// [`ConnectorMessage`] (the client's hot path). Writes nothing on error.
pub fn encode_message_into(
    out: &mut Vec<u8>,
    stream_id: u64,
    message_id: u64,
    event_time: i64,
    key: &[u8],
    payload: &[u8],
) -> Result<(), ConnectorError> {
    let start = begin(out, FrameType::Message);
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(&message_id.to_be_bytes());
    out.extend_from_slice(&event_time.to_be_bytes());
    if let Err(e) = put_short(out, key, "MESSAGE", "key") {
        out.truncate(start);
        return Err(e);
    }
    out.extend_from_slice(payload);
    finish(out, start)
}

impl ConnectorMessage {
    /// The frame type.
    pub fn frame_type(&self) -> FrameType {
        match self {
            ConnectorMessage::Hello { .. } => FrameType::Hello,
            ConnectorMessage::Ok { .. } => FrameType::Ok,
            ConnectorMessage::Error { .. } => FrameType::Error,
            ConnectorMessage::Notify { .. } => FrameType::Notify,
            ConnectorMessage::NotifyAck { .. } => FrameType::NotifyAck,
            ConnectorMessage::Message { .. } => FrameType::Message,
            ConnectorMessage::Ack { .. } => FrameType::Ack,
            ConnectorMessage::Restart { .. } => FrameType::Restart,
            ConnectorMessage::Eos { .. } => FrameType::EosMessage,
        }
    }

    /// An ERROR message.
    pub fn error(message: impl Into<String>) -> ConnectorMessage {
        ConnectorMessage::Error {
            message: message.into(),
        }
    }

    /// Appends the whole frame (length, type, body) to `out`. On error
    /// (a short string over 65535 bytes, a frame over 4 GiB) nothing is
    /// written.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), ConnectorError> {
        if let ConnectorMessage::Message {
            stream_id,
            message_id,
            event_time,
            key,
            payload,
        } = self
        {
            return encode_message_into(out, *stream_id, *message_id, *event_time, key, payload);
        }
        let ty = self.frame_type();
        let name = ty.name();
        let start = begin(out, ty);
        let r = (|| {
            match self {
                ConnectorMessage::Hello {
                    version,
                    cookie,
                    program_name,
                    instance_name,
                } => {
                    put_short(out, version.as_bytes(), name, "version")?;
                    put_short(out, cookie.as_bytes(), name, "cookie")?;
                    put_short(out, program_name.as_bytes(), name, "program_name")?;
                    put_short(out, instance_name.as_bytes(), name, "instance_name")?;
                }
                ConnectorMessage::Ok { initial_credits } => {
                    out.extend_from_slice(&initial_credits.to_be_bytes())
                }
                ConnectorMessage::Error { message } => {
                    put_short(out, message.as_bytes(), name, "message")?
                }
                ConnectorMessage::Notify {
                    stream_id,
                    stream_name,
                    point_of_ref,
                } => {
                    out.extend_from_slice(&stream_id.to_be_bytes());
                    put_short(out, stream_name.as_bytes(), name, "stream_name")?;
                    out.extend_from_slice(&point_of_ref.to_be_bytes());
                }
                ConnectorMessage::NotifyAck {
                    success,
                    stream_id,
                    point_of_ref,
                } => {
                    out.push(u8::from(*success));
                    out.extend_from_slice(&stream_id.to_be_bytes());
                    out.extend_from_slice(&point_of_ref.to_be_bytes());
                }
                ConnectorMessage::Ack { credits, acks } => {
                    let count =
                        u32::try_from(acks.len()).map_err(|_| ConnectorError::FrameTooLarge {
                            len: 9 + 16 * acks.len() as u64,
                            max: u32::MAX as u64,
                        })?;
                    out.extend_from_slice(&credits.to_be_bytes());
                    out.extend_from_slice(&count.to_be_bytes());
                    for (id, por) in acks {
                        out.extend_from_slice(&id.to_be_bytes());
                        out.extend_from_slice(&por.to_be_bytes());
                    }
                }
                ConnectorMessage::Restart { address } => {
                    let len = u32::try_from(address.len()).map_err(|_| {
                        ConnectorError::FrameTooLarge {
                            len: address.len() as u64 + 5,
                            max: u32::MAX as u64,
                        }
                    })?;
                    out.extend_from_slice(&len.to_be_bytes());
                    out.extend_from_slice(address.as_bytes());
                }
                ConnectorMessage::Eos { stream_id } => {
                    out.extend_from_slice(&stream_id.to_be_bytes())
                }
                ConnectorMessage::Message { .. } => unreachable!("handled above"),
            }
            Ok(())
        })();
        match r {
            Ok(()) => finish(out, start),
            Err(e) => {
                out.truncate(start);
                Err(e)
            }
        }
    }

    /// The whole frame (length, type, body).
    pub fn encode(&self) -> Result<Vec<u8>, ConnectorError> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// Decodes a frame body of type `ty` (the bytes after the type byte).
    pub fn decode_body(ty: u8, body: Bytes) -> Result<ConnectorMessage, ConnectorError> {
        let ty = FrameType::from_u8(ty).ok_or(ConnectorError::UnknownType(ty))?;
        let mut r = Reader {
            frame: ty.name(),
            buf: body,
        };
        let msg = match ty {
            FrameType::Hello => ConnectorMessage::Hello {
                version: r.short_string("version")?,
                cookie: r.short_string("cookie")?,
                program_name: r.short_string("program_name")?,
                instance_name: r.short_string("instance_name")?,
            },
            FrameType::Ok => ConnectorMessage::Ok {
                initial_credits: r.u32("initial_credits")?,
            },
            FrameType::Error => ConnectorMessage::Error {
                message: r.short_string("message")?,
            },
            FrameType::Notify => ConnectorMessage::Notify {
                stream_id: r.u64("stream_id")?,
                stream_name: r.short_string("stream_name")?,
                point_of_ref: r.u64("point_of_ref")?,
            },
            FrameType::NotifyAck => ConnectorMessage::NotifyAck {
                success: r.take("success", 1)?[0] != 0,
                stream_id: r.u64("stream_id")?,
                point_of_ref: r.u64("point_of_ref")?,
            },
            FrameType::Message => {
                let stream_id = r.u64("stream_id")?;
                let message_id = r.u64("message_id")?;
                let event_time = r.u64("event_time")? as i64;
                let key = r.short_bytes("key")?;
                let payload = std::mem::take(&mut r.buf);
                ConnectorMessage::Message {
                    stream_id,
                    message_id,
                    event_time,
                    key,
                    payload,
                }
            }
            FrameType::Ack => {
                let credits = r.u32("credits")?;
                let count = r.u32("count")? as usize;
                let needed = count.saturating_mul(16);
                if r.buf.len() < needed {
                    return Err(ConnectorError::Truncated {
                        frame: r.frame,
                        field: "positions",
                        needed,
                        left: r.buf.len(),
                    });
                }
                let mut acks = Vec::with_capacity(count);
                for _ in 0..count {
                    acks.push((r.u64("stream_id")?, r.u64("point_of_ref")?));
                }
                ConnectorMessage::Ack { credits, acks }
            }
            FrameType::Restart => {
                let len = r.u32("address length")? as usize;
                let a = r.take("address", len)?;
                ConnectorMessage::Restart {
                    address: String::from_utf8_lossy(&a).into_owned(),
                }
            }
            FrameType::EosMessage => ConnectorMessage::Eos {
                stream_id: r.u64("stream_id")?,
            },
        };
        if !r.buf.is_empty() {
            return Err(ConnectorError::TrailingBytes {
                frame: r.frame,
                extra: r.buf.len(),
            });
        }
        Ok(msg)
    }

    /// Decodes one complete frame, length field included; the length must
    /// match `frame.len()` exactly (no limit beyond the u32 itself).
    pub fn decode(frame: &[u8]) -> Result<ConnectorMessage, ConnectorError> {
        let mut codec = ConnectorCodec::with_max_frame_size(u32::MAX);
        let mut buf = BytesMut::from(frame);
        match codec.decode_frame(&mut buf)? {
            Some(m) if buf.is_empty() => Ok(m),
            Some(m) => Err(ConnectorError::TrailingBytes {
                frame: m.frame_type().name(),
                extra: buf.len(),
            }),
            None => Err(ConnectorError::Truncated {
                frame: "connector",
                field: "frame",
                needed: frame_len_needed(frame),
                left: frame.len(),
            }),
        }
    }
}

fn frame_len_needed(frame: &[u8]) -> usize {
    if frame.len() < LENGTH_FIELD_LEN {
        LENGTH_FIELD_LEN
    } else {
        LENGTH_FIELD_LEN + u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize
    }
}

pub(crate) struct Reader {
    pub(crate) frame: &'static str,
    pub(crate) buf: Bytes,
}

impl Reader {
    pub(crate) fn take(&mut self, field: &'static str, n: usize) -> Result<Bytes, ConnectorError> {
        if self.buf.len() < n {
            return Err(ConnectorError::Truncated {
                frame: self.frame,
                field,
                needed: n,
                left: self.buf.len(),
            });
        }
        Ok(self.buf.split_to(n))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, ConnectorError> {
        Ok(self.take(field, 4)?.get_u32())
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, ConnectorError> {
        Ok(self.take(field, 8)?.get_u64())
    }

    pub(crate) fn short_bytes(&mut self, field: &'static str) -> Result<Bytes, ConnectorError> {
        let n = self.take(field, 2)?.get_u16() as usize;
        self.take(field, n)
    }

    pub(crate) fn short_string(&mut self, field: &'static str) -> Result<String, ConnectorError> {
        let b = self.short_bytes(field)?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }
}

/// Reads the body of a connector frame (type byte first).
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectorProtocol;

impl Protocol for ConnectorProtocol {
    type Frame = ConnectorMessage;
    type Error = ConnectorError;

    fn parse(&mut self, mut body: BytesMut) -> Result<ConnectorMessage, ConnectorError> {
        // The length is at least 1, so the type byte is there.
        let ty = body.get_u8();
        ConnectorMessage::decode_body(ty, body.freeze())
    }
}

/// The decoder of a connector byte stream; a body that does not parse is
/// consumed and reported, a bad length fails for good (see
/// [`ConnectorError::is_fatal`]).
pub type ConnectorCodec = FrameCodec<ConnectorProtocol>;

impl Default for ConnectorCodec {
    fn default() -> Self {
        FrameCodec::new(CONNECTOR_LENGTH, ConnectorProtocol)
    }
}

impl ConnectorCodec {
    /// A decoder that rejects length fields above `max` (at least 1).
    pub fn with_max_frame_size(max: u32) -> Self {
        FrameCodec::new(
            LengthPrefixed::new(ByteOrder::Big, 1, max.max(1)),
            ConnectorProtocol,
        )
    }

    /// The limit on the length field.
    pub fn max_frame_size(&self) -> u32 {
        self.length().max_len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio_util::codec::Decoder;

    fn short(b: &[u8]) -> Vec<u8> {
        let mut v = (b.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(b);
        v
    }

    fn frame(ty: u8, body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 1) as u32).to_be_bytes().to_vec();
        v.push(ty);
        v.extend_from_slice(body);
        v
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    fn layouts() -> Vec<(ConnectorMessage, Vec<u8>)> {
        vec![
            (
                ConnectorMessage::Hello {
                    version: "0.0.1".into(),
                    cookie: "cookie".into(),
                    program_name: "prog".into(),
                    instance_name: "inst".into(),
                },
                frame(
                    0,
                    &cat(&[
                        &short(b"0.0.1"),
                        &short(b"cookie"),
                        &short(b"prog"),
                        &short(b"inst"),
                    ]),
                ),
            ),
            (
                ConnectorMessage::Ok {
                    initial_credits: 67,
                },
                frame(1, &67u32.to_be_bytes()),
            ),
            (
                ConnectorMessage::error("Bad cookie"),
                frame(2, &short(b"Bad cookie")),
            ),
            (
                ConnectorMessage::Notify {
                    stream_id: 9,
                    stream_name: "stream-9".into(),
                    point_of_ref: 123,
                },
                frame(
                    3,
                    &cat(&[
                        &9u64.to_be_bytes(),
                        &short(b"stream-9"),
                        &123u64.to_be_bytes(),
                    ]),
                ),
            ),
            (
                ConnectorMessage::NotifyAck {
                    success: true,
                    stream_id: 9,
                    point_of_ref: NO_POSITION,
                },
                frame(4, &cat(&[&[1], &9u64.to_be_bytes(), &[0xff; 8]])),
            ),
            (
                ConnectorMessage::NotifyAck {
                    success: false,
                    stream_id: 1,
                    point_of_ref: 0,
                },
                frame(4, &cat(&[&[0], &1u64.to_be_bytes(), &0u64.to_be_bytes()])),
            ),
            (
                ConnectorMessage::Message {
                    stream_id: 1,
                    message_id: 2,
                    event_time: -3,
                    key: Bytes::from_static(b"key"),
                    payload: Bytes::from_static(b"payload"),
                },
                frame(
                    5,
                    &cat(&[
                        &1u64.to_be_bytes(),
                        &2u64.to_be_bytes(),
                        &(-3i64).to_be_bytes(),
                        &short(b"key"),
                        b"payload",
                    ]),
                ),
            ),
            (
                ConnectorMessage::Message {
                    stream_id: 1,
                    message_id: 2,
                    event_time: 3,
                    key: Bytes::new(),
                    payload: Bytes::new(),
                },
                frame(
                    5,
                    &cat(&[
                        &1u64.to_be_bytes(),
                        &2u64.to_be_bytes(),
                        &3i64.to_be_bytes(),
                        &[0, 0],
                    ]),
                ),
            ),
            (
                ConnectorMessage::Ack {
                    credits: 10,
                    acks: vec![(1, 2), (3, 4)],
                },
                frame(
                    6,
                    &cat(&[
                        &10u32.to_be_bytes(),
                        &2u32.to_be_bytes(),
                        &1u64.to_be_bytes(),
                        &2u64.to_be_bytes(),
                        &3u64.to_be_bytes(),
                        &4u64.to_be_bytes(),
                    ]),
                ),
            ),
            (
                ConnectorMessage::Ack {
                    credits: 0,
                    acks: vec![],
                },
                frame(6, &[0; 8]),
            ),
            (
                ConnectorMessage::Restart {
                    address: "127.0.0.1:5555".into(),
                },
                frame(7, &cat(&[&14u32.to_be_bytes(), b"127.0.0.1:5555"])),
            ),
            (
                ConnectorMessage::Restart {
                    address: String::new(),
                },
                frame(7, &0u32.to_be_bytes()),
            ),
            (
                ConnectorMessage::Eos {
                    stream_id: 0x2a2b2c3d2a2b2c3d,
                },
                frame(8, &0x2a2b2c3d2a2b2c3du64.to_be_bytes()),
            ),
        ]
    }

    #[test]
    fn byte_layouts() {
        for (msg, bytes) in layouts() {
            assert_eq!(msg.encode().unwrap(), bytes, "{msg:?}");
            assert_eq!(ConnectorMessage::decode(&bytes).unwrap(), msg);
            assert_eq!(msg.frame_type().as_u8(), bytes[4]);
        }
        // The exact HELLO bytes, spelled out.
        let hello = layouts()[0].1.clone();
        assert_eq!(
            hello,
            b"\x00\x00\x00\x1c\x00\x00\x050.0.1\x00\x06cookie\x00\x04prog\x00\x04inst".to_vec()
        );
    }

    #[test]
    fn encode_message_into_matches_enum() {
        let mut a = Vec::new();
        encode_message_into(&mut a, 7, 8, 9, b"k", b"data").unwrap();
        let m = ConnectorMessage::Message {
            stream_id: 7,
            message_id: 8,
            event_time: 9,
            key: Bytes::from_static(b"k"),
            payload: Bytes::from_static(b"data"),
        };
        assert_eq!(a, m.encode().unwrap());
        assert_eq!(a.len(), MESSAGE_OVERHEAD + 1 + 4);
    }

    #[test]
    fn error_texts() {
        assert_eq!(
            unknown_version_error("v0.0.1"),
            "Unknown protocol version: v0.0.1"
        );
        assert_eq!(bad_cookie_error("x", "y"), "Bad cookie: x, wanted: y");
        assert_eq!(bad_stream_error(5), "Bad/unregistered stream_id 5");
        assert_eq!(invalid_message_error("ACK"), "Invalid message: ACK");
    }

    #[test]
    fn frame_types() {
        for (i, t) in FrameType::ALL.iter().enumerate() {
            assert_eq!(t.as_u8() as usize, i);
            assert_eq!(FrameType::from_u8(i as u8), Some(*t));
        }
        assert_eq!(FrameType::from_u8(9), None);
        assert_eq!(FrameType::NotifyAck.to_string(), "NOTIFY_ACK");
    }

    #[test]
    fn the_longest_short_string_fits() {
        let longest = "x".repeat(MAX_SHORT_STRING);
        let hello = ConnectorMessage::Hello {
            version: "0.0.1".into(),
            cookie: longest,
            program_name: String::new(),
            instance_name: String::new(),
        };
        let mut out = Vec::new();
        hello
            .encode_into(&mut out)
            .expect("65535 bytes fit a short string");
        assert_eq!(ConnectorMessage::decode(&out).expect("decodes"), hello);
    }

    #[test]
    fn the_default_limit_is_16_mib_of_length_field() {
        let mut codec = ConnectorCodec::default();
        assert_eq!(codec.max_frame_size(), 16 << 20);
        // A length field just over the limit fails for good, before any body.
        let mut buf = BytesMut::from(&((16u32 << 20) + 1).to_be_bytes()[..]);
        match codec.decode(&mut buf) {
            Err(crate::frame::ReadError::Protocol(e)) => assert!(e.is_fatal(), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_cut_frame_says_how_many_bytes_it_needed() {
        let whole = frame(8, &7u64.to_be_bytes());
        for cut in 0..whole.len() {
            let needed = if cut < 4 { 4 } else { whole.len() };
            match ConnectorMessage::decode(&whole[..cut]) {
                Err(ConnectorError::Truncated {
                    needed: n, left, ..
                }) => {
                    assert_eq!((n, left), (needed, cut), "cut at {cut}")
                }
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn too_long_strings_write_nothing() {
        let mut out = vec![1, 2, 3];
        let long = "x".repeat(70_000);
        let e = ConnectorMessage::Hello {
            version: "0.0.1".into(),
            cookie: long.clone(),
            program_name: String::new(),
            instance_name: String::new(),
        }
        .encode_into(&mut out)
        .unwrap_err();
        assert!(matches!(
            e,
            ConnectorError::StringTooLong {
                field: "cookie",
                len: 70_000,
                ..
            }
        ));
        assert_eq!(out, vec![1, 2, 3]);
        let e = encode_message_into(&mut out, 1, 1, 0, long.as_bytes(), b"").unwrap_err();
        assert!(matches!(
            e,
            ConnectorError::StringTooLong { field: "key", .. }
        ));
        assert_eq!(out, vec![1, 2, 3]);
        // A long payload is fine: it is not a short string.
        encode_message_into(&mut out, 1, 1, 0, b"", long.as_bytes()).unwrap();
    }

    #[test]
    fn malformed_bodies() {
        let e = ConnectorMessage::decode(&frame(9, &[])).unwrap_err();
        assert_eq!(e, ConnectorError::UnknownType(9));
        let e = ConnectorMessage::decode(&frame(1, &[0, 0])).unwrap_err();
        assert!(
            matches!(
                e,
                ConnectorError::Truncated {
                    frame: "OK",
                    field: "initial_credits",
                    ..
                }
            ),
            "{e}"
        );
        let e = ConnectorMessage::decode(&frame(8, &[0; 9])).unwrap_err();
        assert_eq!(
            e,
            ConnectorError::TrailingBytes {
                frame: "EOS_MESSAGE",
                extra: 1
            }
        );
        // An ACK that claims more positions than it holds (no huge allocation).
        let e = ConnectorMessage::decode(&frame(
            6,
            &cat(&[&0u32.to_be_bytes(), &u32::MAX.to_be_bytes()]),
        ))
        .unwrap_err();
        assert!(
            matches!(
                e,
                ConnectorError::Truncated {
                    field: "positions",
                    ..
                }
            ),
            "{e}"
        );
        // A short string longer than the body.
        let e = ConnectorMessage::decode(&frame(2, &[0, 5, b'a'])).unwrap_err();
        assert!(
            matches!(e, ConnectorError::Truncated { frame: "ERROR", .. }),
            "{e}"
        );
        // Invalid UTF-8 decodes lossily.
        let m = ConnectorMessage::decode(&frame(2, &[0, 1, 0xff])).unwrap();
        assert_eq!(m, ConnectorMessage::error("\u{fffd}"));
        // A MESSAGE too short for its header.
        let e = ConnectorMessage::decode(&frame(5, &[0; 20])).unwrap_err();
        assert!(
            matches!(
                e,
                ConnectorError::Truncated {
                    frame: "MESSAGE",
                    field: "event_time",
                    ..
                }
            ),
            "{e}"
        );
        // A complete frame must be exactly one frame.
        let mut two = frame(8, &[0; 8]);
        two.push(0);
        assert!(ConnectorMessage::decode(&two).is_err());
        assert!(ConnectorMessage::decode(&two[..5]).is_err());
    }

    #[test]
    fn decoder_limits_and_recovery() {
        let mut d = ConnectorCodec::with_max_frame_size(100);
        let mut buf = BytesMut::new();
        // A bad body: the frame is consumed, the next one still decodes.
        buf.extend_from_slice(&frame(42, b"xyz"));
        buf.extend_from_slice(&frame(8, &5u64.to_be_bytes()));
        let e = d.decode_frame(&mut buf).unwrap_err();
        assert!(!e.is_fatal());
        assert_eq!(
            d.decode_frame(&mut buf).unwrap(),
            Some(ConnectorMessage::Eos { stream_id: 5 })
        );
        assert_eq!(d.decode_frame(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
        // A frame over the limit fails for good.
        buf.extend_from_slice(&101u32.to_be_bytes());
        let e = d.decode_frame(&mut buf).unwrap_err();
        assert_eq!(e, ConnectorError::FrameTooLarge { len: 101, max: 100 });
        assert!(e.is_fatal());
        buf.extend_from_slice(&frame(8, &5u64.to_be_bytes()));
        assert_eq!(d.decode_frame(&mut buf).unwrap_err(), e);
        // A zero length fails for good too.
        let mut d = ConnectorCodec::default();
        assert_eq!(d.max_frame_size(), MAX_FRAME_SIZE);
        let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
        assert_eq!(
            d.decode_frame(&mut buf).unwrap_err(),
            ConnectorError::EmptyFrame
        );
        // Exactly at the limit is fine.
        let mut d = ConnectorCodec::with_max_frame_size(9);
        let mut buf = BytesMut::from(&frame(8, &1u64.to_be_bytes())[..]);
        assert_eq!(
            d.decode_frame(&mut buf).unwrap(),
            Some(ConnectorMessage::Eos { stream_id: 1 })
        );
    }

    #[test]
    fn malformed_frame_names_the_type() {
        let e = ConnectorMessage::decode(&frame(1, &[0, 0])).unwrap_err();
        assert_eq!(e.malformed_frame(), Some("OK"));
        let e = ConnectorMessage::decode(&frame(8, &[0; 9])).unwrap_err();
        assert_eq!(e.malformed_frame(), Some("EOS_MESSAGE"));
        assert_eq!(ConnectorError::UnknownType(9).malformed_frame(), None);
    }

    fn short_text() -> impl Strategy<Value = String> {
        proptest::collection::vec(any::<char>(), 0..12).prop_map(|c| c.into_iter().collect())
    }

    fn bytes_up_to(n: usize) -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..n).prop_map(Bytes::from)
    }

    fn message() -> impl Strategy<Value = ConnectorMessage> {
        prop_oneof![
            (short_text(), short_text(), short_text(), short_text()).prop_map(|(a, b, c, d)| {
                ConnectorMessage::Hello {
                    version: a,
                    cookie: b,
                    program_name: c,
                    instance_name: d,
                }
            }),
            any::<u32>().prop_map(|c| ConnectorMessage::Ok { initial_credits: c }),
            short_text().prop_map(ConnectorMessage::error),
            (any::<u64>(), short_text(), any::<u64>()).prop_map(|(a, b, c)| {
                ConnectorMessage::Notify {
                    stream_id: a,
                    stream_name: b,
                    point_of_ref: c,
                }
            }),
            (any::<bool>(), any::<u64>(), any::<u64>()).prop_map(|(a, b, c)| {
                ConnectorMessage::NotifyAck {
                    success: a,
                    stream_id: b,
                    point_of_ref: c,
                }
            }),
            (
                any::<u64>(),
                any::<u64>(),
                any::<i64>(),
                bytes_up_to(20),
                bytes_up_to(300)
            )
                .prop_map(|(a, b, c, k, p)| ConnectorMessage::Message {
                    stream_id: a,
                    message_id: b,
                    event_time: c,
                    key: k,
                    payload: p,
                }),
            (
                any::<u32>(),
                proptest::collection::vec((any::<u64>(), any::<u64>()), 0..6)
            )
                .prop_map(|(c, a)| ConnectorMessage::Ack {
                    credits: c,
                    acks: a
                }),
            short_text().prop_map(|a| ConnectorMessage::Restart { address: a }),
            any::<u64>().prop_map(|s| ConnectorMessage::Eos { stream_id: s }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip_across_arbitrary_splits(
            msgs in proptest::collection::vec(message(), 0..12),
            splits in proptest::collection::vec(any::<usize>(), 0..10),
        ) {
            let mut bytes = Vec::new();
            for m in &msgs {
                m.encode_into(&mut bytes).unwrap();
            }
            for m in &msgs {
                let one = m.encode().unwrap();
                prop_assert_eq!(&ConnectorMessage::decode(&one).unwrap(), m);
            }
            let mut cuts: Vec<usize> = splits.iter().map(|s| if bytes.is_empty() { 0 } else { s % bytes.len() }).collect();
            cuts.push(0);
            cuts.push(bytes.len());
            cuts.sort_unstable();
            let mut d = ConnectorCodec::default();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for w in cuts.windows(2) {
                buf.extend_from_slice(&bytes[w[0]..w[1]]);
                while let Some(m) = d.decode_frame(&mut buf).unwrap() {
                    got.push(m);
                }
            }
            prop_assert_eq!(got, msgs);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut d = ConnectorCodec::with_max_frame_size(64);
            let mut buf = BytesMut::from(&data[..]);
            for _ in 0..100 {
                match d.decode_frame(&mut buf) {
                    Ok(None) => break,
                    Ok(Some(_)) => {}
                    Err(e) if e.is_fatal() => break,
                    Err(_) => {}
                }
            }
            let _ = d.decode_eof(&mut buf);
            let _ = ConnectorMessage::decode(&data);
        }
    }
}
