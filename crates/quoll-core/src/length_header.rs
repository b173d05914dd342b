//! TCP source framing as a Wallaroo decoder declares it.
//!
//! A framed Wallaroo decoder declares `header_length` (1 to 8 bytes) and a
//! Python [`struct`] format whose single item is the payload length, e.g.
//! `@decoder(header_length=4, length_fmt=">I")`. Wallaroo then computes
//! `struct.unpack(fmt, header)[0]`. Calling into Python for every frame header
//! is needless, so [`LengthHeader::parse`] compiles the format once into
//! "read `size` bytes at `offset`, in this byte order, signed or not", with
//! exactly the semantics of CPython's `struct` for the formats that can
//! describe one integer:
//!
//! - an optional first character selecting byte order, size and alignment:
//!   `@` (or none) = native order, native sizes, native alignment; `=` =
//!   native order, standard sizes, no alignment; `<` little-endian, `>` and
//!   `!` big-endian, both standard sizes and no alignment;
//! - integer codes `b B h H i I l L q Q`, and `n N` in native mode only.
//!   Standard sizes are 1, 2, 4, 4 and 8 bytes for `b h i l q`; native sizes
//!   and alignments are the C ones of the build target (on x86_64/aarch64
//!   Linux `l`, `q` and `n` are 8 bytes);
//! - pad bytes `x`, with optional repeat counts (`"2xH"`, `"xxI"`); in native
//!   mode every integer item (a `0` count included: `"B0I"`) is first aligned
//!   to its natural alignment, exactly as `struct.calcsize` does;
//! - whitespace between items is ignored, as `struct` does (but not before
//!   the byte-order character nor between a count and its code).
//!
//! The format must hold exactly one integer item and its `calcsize` must equal
//! `header_length`. Everything else is rejected with a [`HeaderError`] naming
//! the format and the reason: a non-integer code (`f d e s p c ? P`), more than
//! one item (`"2I"`, `"BH"`), no item at all (`"x"`), `n`/`N` outside native
//! mode, unknown characters, a size mismatch and a header length outside 1..=8.
//! (`struct` itself accepts zero-count non-integer items such as `"0fI"`; we
//! reject those too: no real decoder uses them.)
//!
//! A signed length that decodes negative is a [`LengthError::NegativeLength`].
//! A length of 0 is a valid, empty payload (Wallaroo itself mishandled it).
//!
//! [`LengthHeaderCodec`] is the splitter of one connection's byte stream
//! into payloads, a `tokio_util::codec::Decoder`, with a maximum frame size
//! that skips oversized frames without losing sync; [`FrameDecoder`] is the
//! same with its own receive buffer. It is kept apart from
//! [`crate::frame::LengthPrefixed`] because it does more: any header length
//! from 1 to 8 bytes with the length field anywhere in it, signed lengths,
//! and frames over the limit skipped (reported once) rather than fatal.
//!
//! Invariants: payloads come out in stream order; an oversized frame's
//! payload is discarded byte for byte, so the next header is read in the
//! right place; a negative length ends the stream for good (there is no
//! way to find the next header); bytes buffered are bounded by what was
//! received and not yet taken, plus at most `max_frame_size` reserved for
//! the frame in progress.
//!
//! [`struct`]: https://docs.python.org/3/library/struct.html

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::Decoder;

pub use crate::frame::ByteOrder;
use crate::frame::ReadError;

/// The largest `header_length` a decoder may declare.
pub const MAX_HEADER_LENGTH: usize = 8;

/// A compiled length-header format: `header_length` bytes, of which the
/// `size` bytes at `offset` hold the payload length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LengthHeader {
    header_length: usize,
    offset: usize,
    size: usize,
    order: ByteOrder,
    signed: bool,
}

/// Why a `(header_length, format)` pair was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid length header (header_length={header_length}, format {format:?}): {kind}")]
pub struct HeaderError {
    pub header_length: usize,
    pub format: String,
    pub kind: HeaderErrorKind,
}

/// The reason inside a [`HeaderError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderErrorKind {
    #[error("header_length must be between 1 and {MAX_HEADER_LENGTH}")]
    HeaderLengthOutOfRange,
    #[error("bad char {0:?} in struct format")]
    BadChar(char),
    #[error("byte order character {0:?} is only allowed at the start of the format")]
    MisplacedByteOrder(char),
    #[error("repeat count given without format specifier")]
    CountWithoutCode,
    #[error("format code {0:?} is not an integer, so it cannot hold a length")]
    NonIntegerCode(char),
    #[error("format code {0:?} is only allowed in native mode (no prefix or '@')")]
    NativeOnlyCode(char),
    #[error("the format holds no integer item")]
    NoLengthItem,
    #[error("the format holds {0} items; a length format must hold exactly one integer")]
    MultipleItems(u64),
    #[error("struct.calcsize of the format is {calcsize}, not header_length")]
    SizeMismatch { calcsize: u64 },
    #[error("total struct size too long")]
    TooLong,
}

/// Why a header could not give a payload length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LengthError {
    #[error("header has {got} bytes, expected {expected}")]
    WrongHeaderSize { expected: usize, got: usize },
    #[error("negative payload length {0}")]
    NegativeLength(i64),
    /// Only from the encoder: the length does not fit the field.
    #[error("payload length {value} does not fit the length field (max {max})")]
    TooLarge { value: u64, max: u64 },
}

/// (size, alignment, signed) of an integer code, or `None` if `c` is not one.
fn int_code(c: char, native: bool) -> Option<(usize, usize, bool)> {
    use core::ffi::{c_int, c_long, c_longlong, c_schar, c_short};
    use core::mem::{align_of, size_of};
    let (size, align) = if native {
        match c {
            'b' | 'B' => (size_of::<c_schar>(), align_of::<c_schar>()),
            'h' | 'H' => (size_of::<c_short>(), align_of::<c_short>()),
            'i' | 'I' => (size_of::<c_int>(), align_of::<c_int>()),
            'l' | 'L' => (size_of::<c_long>(), align_of::<c_long>()),
            'q' | 'Q' => (size_of::<c_longlong>(), align_of::<c_longlong>()),
            'n' | 'N' => (size_of::<isize>(), align_of::<isize>()),
            _ => return None,
        }
    } else {
        match c {
            'b' | 'B' => (1, 1),
            'h' | 'H' => (2, 1),
            'i' | 'I' | 'l' | 'L' => (4, 1),
            'q' | 'Q' => (8, 1),
            _ => return None,
        }
    };
    Some((size, align, c.is_ascii_lowercase()))
}

/// Python's `Py_ISSPACE` (ASCII whitespace including vertical tab).
fn is_py_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

impl LengthHeader {
    /// Compile a decoder's `(header_length, length_fmt)`; see the module docs
    /// for what is accepted.
    pub fn parse(header_length: usize, fmt: &str) -> Result<LengthHeader, HeaderError> {
        let err = |kind| HeaderError {
            header_length,
            format: fmt.to_owned(),
            kind,
        };
        if !(1..=MAX_HEADER_LENGTH).contains(&header_length) {
            return Err(err(HeaderErrorKind::HeaderLengthOutOfRange));
        }
        let mut chars = fmt.chars().peekable();
        let (native, order) = match chars.peek() {
            Some('@') => (true, ByteOrder::NATIVE),
            Some('=') => (false, ByteOrder::NATIVE),
            Some('<') => (false, ByteOrder::Little),
            Some('>') | Some('!') => (false, ByteOrder::Big),
            _ => (true, ByteOrder::NATIVE),
        };
        if matches!(chars.peek(), Some('@' | '=' | '<' | '>' | '!')) {
            chars.next();
        }

        let mut offset: u64 = 0; // running calcsize
        let mut items: u64 = 0;
        let mut field: Option<(u64, usize, bool)> = None; // (offset, size, signed)
        while let Some(mut c) = chars.next() {
            if is_py_space(c) {
                continue;
            }
            let mut count: u64 = 1;
            if let Some(d) = c.to_digit(10) {
                count = u64::from(d);
                loop {
                    match chars.next() {
                        None => return Err(err(HeaderErrorKind::CountWithoutCode)),
                        Some(n) => match n.to_digit(10) {
                            Some(d) => {
                                count = count
                                    .checked_mul(10)
                                    .and_then(|v| v.checked_add(u64::from(d)))
                                    .ok_or_else(|| err(HeaderErrorKind::TooLong))?;
                            }
                            None => {
                                c = n;
                                break;
                            }
                        },
                    }
                }
            }
            match c {
                'x' => {
                    offset = offset
                        .checked_add(count)
                        .ok_or_else(|| err(HeaderErrorKind::TooLong))?;
                }
                'n' | 'N' if !native => return Err(err(HeaderErrorKind::NativeOnlyCode(c))),
                'f' | 'd' | 'e' | 's' | 'p' | 'c' | '?' | 'P' => {
                    return Err(err(HeaderErrorKind::NonIntegerCode(c)))
                }
                '@' | '=' | '<' | '>' | '!' => {
                    return Err(err(HeaderErrorKind::MisplacedByteOrder(c)))
                }
                _ => {
                    let Some((size, align, signed)) = int_code(c, native) else {
                        return Err(err(HeaderErrorKind::BadChar(c)));
                    };
                    if native {
                        let a = align as u64;
                        offset = offset
                            .checked_add(a - 1)
                            .ok_or_else(|| err(HeaderErrorKind::TooLong))?
                            / a
                            * a;
                    }
                    if count == 1 {
                        field = Some((offset, size, signed));
                    }
                    items = items.saturating_add(count);
                    offset = (size as u64)
                        .checked_mul(count)
                        .and_then(|n| n.checked_add(offset))
                        .ok_or_else(|| err(HeaderErrorKind::TooLong))?;
                }
            }
        }
        match items {
            0 => return Err(err(HeaderErrorKind::NoLengthItem)),
            1 => {}
            n => return Err(err(HeaderErrorKind::MultipleItems(n))),
        }
        if offset != header_length as u64 {
            return Err(err(HeaderErrorKind::SizeMismatch { calcsize: offset }));
        }
        let (field_offset, size, signed) = field.expect("exactly one item was counted");
        Ok(LengthHeader {
            header_length,
            offset: field_offset as usize,
            size,
            order,
            signed,
        })
    }

    /// Number of header bytes (what the decoder declared).
    pub fn header_length(&self) -> usize {
        self.header_length
    }

    /// Offset of the length field inside the header (non-zero with pad bytes
    /// or native alignment).
    pub fn field_offset(&self) -> usize {
        self.offset
    }

    /// Size in bytes of the length field.
    pub fn field_size(&self) -> usize {
        self.size
    }

    pub fn byte_order(&self) -> ByteOrder {
        self.order
    }

    pub fn is_signed(&self) -> bool {
        self.signed
    }

    /// The largest payload length the field can express.
    pub fn max_payload_length(&self) -> u64 {
        let bits = 8 * self.size as u32 - u32::from(self.signed);
        if bits >= 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        }
    }

    /// `struct.unpack(fmt, header)[0]`, as a payload length. `header` must be
    /// exactly `header_length` bytes.
    pub fn payload_length(&self, header: &[u8]) -> Result<u64, LengthError> {
        if header.len() != self.header_length {
            return Err(LengthError::WrongHeaderSize {
                expected: self.header_length,
                got: header.len(),
            });
        }
        let field = &header[self.offset..self.offset + self.size];
        let fold = |raw: u64, b: &u8| (raw << 8) | u64::from(*b);
        let raw = match self.order {
            ByteOrder::Big => field.iter().fold(0, fold),
            ByteOrder::Little => field.iter().rev().fold(0, fold),
        };
        if !self.signed {
            return Ok(raw);
        }
        let shift = 64 - 8 * self.size as u32;
        let value = ((raw << shift) as i64) >> shift;
        if value < 0 {
            Err(LengthError::NegativeLength(value))
        } else {
            Ok(value as u64)
        }
    }

    /// Append the header for a payload of `payload_length` bytes to `dst`
    /// (pad bytes are zero), as `struct.pack(fmt, payload_length)` would.
    pub fn put_header(
        &self,
        payload_length: u64,
        dst: &mut impl BufMut,
    ) -> Result<(), LengthError> {
        let max = self.max_payload_length();
        if payload_length > max {
            return Err(LengthError::TooLarge {
                value: payload_length,
                max,
            });
        }
        let mut header = [0u8; MAX_HEADER_LENGTH];
        let field = &mut header[self.offset..self.offset + self.size];
        let le = payload_length.to_le_bytes();
        for (i, byte) in le.iter().take(self.size).enumerate() {
            match self.order {
                ByteOrder::Little => field[i] = *byte,
                ByteOrder::Big => field[self.size - 1 - i] = *byte,
            }
        }
        dst.put_slice(&header[..self.header_length]);
        Ok(())
    }

    /// [`put_header`](Self::put_header) into a new vector.
    pub fn encode(&self, payload_length: u64) -> Result<Vec<u8>, LengthError> {
        let mut v = Vec::with_capacity(self.header_length);
        self.put_header(payload_length, &mut v)?;
        Ok(v)
    }
}

/// One payload cut out of the stream (the header is not included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub payload: Bytes,
}

/// A frame-level problem reported by [`FrameDecoder::next_frame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The declared payload length exceeds the maximum frame size. Reported
    /// once; the decoder then discards exactly `declared` payload bytes and
    /// carries on with the next header.
    #[error("frame declares a payload of {declared} bytes, more than the maximum {max}")]
    Oversized { declared: u64, max: u64 },
    /// The header itself is unusable (a negative length). The stream cannot
    /// be resynchronised: the decoder keeps returning this error and the
    /// connection should be closed.
    #[error("bad frame header: {0}")]
    Length(LengthError),
    /// The stream ended inside a frame (only from
    /// [`Decoder::decode_eof`]).
    #[error("the input ended in the middle of a frame ({} of {} {} bytes received)", .0.got, .0.expected, .0.part)]
    Truncated(Truncated),
}

impl FrameError {
    /// Whether the decoder can go on after this error.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, FrameError::Oversized { .. })
    }
}

/// Which part of a frame was cut short by the end of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramePart {
    /// `got` of the `expected` header bytes arrived.
    Header,
    /// The header arrived; `got` of the `expected` payload bytes arrived.
    Payload,
    /// An oversized frame (already reported) was being skipped; `got` of its
    /// `expected` payload bytes arrived.
    SkippedPayload,
}

impl std::fmt::Display for FramePart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FramePart::Header => "header",
            FramePart::Payload | FramePart::SkippedPayload => "payload",
        })
    }
}

/// A partial frame left when the connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated {
    pub part: FramePart,
    pub expected: u64,
    pub got: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DecodeState {
    /// Waiting for a complete header.
    Header,
    /// Header read; waiting for `len` payload bytes.
    Payload { len: usize },
    /// Discarding the payload of an oversized frame.
    Skip { declared: u64, remaining: u64 },
    /// A fatal header error; nothing more comes out.
    Failed(LengthError),
}

/// Splits one connection's byte stream into payloads, as a
/// [`tokio_util::codec::Decoder`] on the caller's buffer.
///
/// As a `Decoder` (with `FramedRead`) each item is `Ok(frame)`, or
/// `Err(FrameError::Oversized)` for a frame that is being skipped (the
/// stream goes on); a negative length, and the end of the stream inside a
/// frame ([`FrameError::Truncated`]), are the decoder's errors.
#[derive(Debug, Clone)]
pub struct LengthHeaderCodec {
    header: LengthHeader,
    max_frame_size: u64,
    state: DecodeState,
}

impl LengthHeaderCodec {
    pub fn new(header: LengthHeader, max_frame_size: u64) -> LengthHeaderCodec {
        LengthHeaderCodec {
            header,
            max_frame_size,
            state: DecodeState::Header,
        }
    }

    pub fn header(&self) -> &LengthHeader {
        &self.header
    }

    pub fn max_frame_size(&self) -> u64 {
        self.max_frame_size
    }

    /// The next complete frame in `buf`, `Ok(None)` if more bytes are
    /// needed, or an error for a bad frame (see [`FrameError`]). After a
    /// fatal error `buf` is emptied and every later call fails the same way.
    pub fn decode_frame(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        loop {
            match self.state {
                DecodeState::Failed(e) => return Err(FrameError::Length(e)),
                DecodeState::Skip {
                    declared,
                    remaining,
                } => {
                    let n = remaining.min(buf.len() as u64);
                    buf.advance(n as usize);
                    let remaining = remaining - n;
                    if remaining > 0 {
                        self.state = DecodeState::Skip {
                            declared,
                            remaining,
                        };
                        return Ok(None);
                    }
                    self.state = DecodeState::Header;
                }
                DecodeState::Header => {
                    let hl = self.header.header_length();
                    if buf.len() < hl {
                        return Ok(None);
                    }
                    let declared = match self.header.payload_length(&buf[..hl]) {
                        Ok(n) => n,
                        Err(e) => {
                            self.state = DecodeState::Failed(e);
                            *buf = BytesMut::new();
                            return Err(FrameError::Length(e));
                        }
                    };
                    buf.advance(hl);
                    match usize::try_from(declared) {
                        Ok(len) if declared <= self.max_frame_size => {
                            self.state = DecodeState::Payload { len };
                        }
                        _ => {
                            self.state = DecodeState::Skip {
                                declared,
                                remaining: declared,
                            };
                            return Err(FrameError::Oversized {
                                declared,
                                max: self.max_frame_size,
                            });
                        }
                    }
                }
                DecodeState::Payload { len } => {
                    if buf.len() < len {
                        buf.reserve(len - buf.len());
                        return Ok(None);
                    }
                    let payload = buf.split_to(len).freeze();
                    self.state = DecodeState::Header;
                    return Ok(Some(Frame { payload }));
                }
            }
        }
    }

    /// At the end of the stream (after [`decode_frame`](Self::decode_frame)
    /// returned `Ok(None)`), with `buf` what is left: the partial frame, if
    /// any. `None` after a fatal error, which was already reported.
    pub fn truncated(&self, buf: &BytesMut) -> Option<Truncated> {
        let got = buf.len() as u64;
        match self.state {
            DecodeState::Header if got > 0 => Some(Truncated {
                part: FramePart::Header,
                expected: self.header.header_length() as u64,
                got,
            }),
            DecodeState::Header | DecodeState::Failed(_) => None,
            DecodeState::Payload { len } => Some(Truncated {
                part: FramePart::Payload,
                expected: len as u64,
                got,
            }),
            DecodeState::Skip {
                declared,
                remaining,
            } => Some(Truncated {
                part: FramePart::SkippedPayload,
                expected: declared,
                got: (declared - remaining).saturating_add(got).min(declared),
            }),
        }
    }
}

impl Decoder for LengthHeaderCodec {
    type Item = Result<Frame, FrameError>;
    type Error = ReadError<FrameError>;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        match self.decode_frame(buf) {
            Ok(frame) => Ok(frame.map(Ok)),
            Err(e) if e.is_fatal() => Err(ReadError::Protocol(e)),
            Err(skipped) => Ok(Some(Err(skipped))),
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        let item = self.decode(buf)?;
        if item.is_none() {
            if let Some(t) = self.truncated(buf) {
                buf.clear();
                return Err(ReadError::Protocol(FrameError::Truncated(t)));
            }
        }
        Ok(item)
    }
}

/// A [`LengthHeaderCodec`] with its own receive buffer.
///
/// Feed bytes with [`push`](Self::push) (or read straight into
/// [`read_buf`](Self::read_buf)), then call [`next_frame`](Self::next_frame)
/// until it returns `Ok(None)`. Bytes pushed while an oversized frame is
/// skipped, or after a fatal error, are dropped without being buffered.
#[derive(Debug)]
pub struct FrameDecoder {
    codec: LengthHeaderCodec,
    buf: BytesMut,
}

impl FrameDecoder {
    pub fn new(header: LengthHeader, max_frame_size: u64) -> FrameDecoder {
        FrameDecoder {
            codec: LengthHeaderCodec::new(header, max_frame_size),
            buf: BytesMut::new(),
        }
    }

    pub fn header(&self) -> &LengthHeader {
        self.codec.header()
    }

    pub fn max_frame_size(&self) -> u64 {
        self.codec.max_frame_size()
    }

    /// Bytes received and not yet returned or skipped.
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// Append received bytes.
    pub fn push(&mut self, mut data: &[u8]) {
        if let DecodeState::Skip {
            declared,
            remaining,
        } = self.codec.state
        {
            if self.buf.is_empty() {
                let n = remaining.min(data.len() as u64);
                data = &data[n as usize..];
                self.codec.state = if remaining == n {
                    DecodeState::Header
                } else {
                    DecodeState::Skip {
                        declared,
                        remaining: remaining - n,
                    }
                };
            }
        }
        if matches!(self.codec.state, DecodeState::Failed(_)) {
            return;
        }
        self.buf.extend_from_slice(data);
    }

    /// The receive buffer, to read into directly (e.g. tokio's `read_buf`)
    /// instead of calling [`push`](Self::push).
    pub fn read_buf(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, or an
    /// error for a bad frame (see [`FrameError`]).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        self.codec.decode_frame(&mut self.buf)
    }

    /// At end of stream (after [`next_frame`](Self::next_frame) returned
    /// `Ok(None)`): the partial frame left over, if any. `None` after a fatal
    /// error, which was already reported.
    pub fn finish(&self) -> Option<Truncated> {
        self.codec.truncated(&self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type TableRow = (&'static str, usize, &'static [u8], Result<u64, i64>);

    /// (format, header_length, header bytes, `struct.unpack(fmt, bytes)[0]`):
    /// `Ok(v)` for v >= 0, `Err(v)` for a negative v. Generated on x86_64
    /// Linux with CPython 3 (`struct.calcsize(fmt)` is the header length;
    /// bytes: zeros, all-ones, 1..=n, two random draws with seed 7).
    #[rustfmt::skip]
    const PYTHON_TABLE: &[TableRow] = &[
        (">I", 4, &[0, 0, 0, 0], Ok(0)),
        (">I", 4, &[255, 255, 255, 255], Ok(4294967295)),
        (">I", 4, &[1, 2, 3, 4], Ok(16909060)),
        (">I", 4, &[165, 77, 202, 24], Ok(2773338648)),
        (">I", 4, &[37, 48, 187, 29], Ok(623950621)),
        ("<I", 4, &[0, 0, 0, 0], Ok(0)),
        ("<I", 4, &[255, 255, 255, 255], Ok(4294967295)),
        ("<I", 4, &[1, 2, 3, 4], Ok(67305985)),
        ("<I", 4, &[109, 19, 44, 222], Ok(3727430509)),
        ("<I", 4, &[214, 35, 123, 46], Ok(779822038)),
        ("!I", 4, &[0, 0, 0, 0], Ok(0)),
        ("!I", 4, &[255, 255, 255, 255], Ok(4294967295)),
        ("!I", 4, &[1, 2, 3, 4], Ok(16909060)),
        ("!I", 4, &[217, 30, 63, 114], Ok(3642638194)),
        ("!I", 4, &[31, 203, 25, 113], Ok(533404017)),
        ("=I", 4, &[0, 0, 0, 0], Ok(0)),
        ("=I", 4, &[255, 255, 255, 255], Ok(4294967295)),
        ("=I", 4, &[1, 2, 3, 4], Ok(67305985)),
        ("=I", 4, &[23, 68, 148, 214], Ok(3600040983)),
        ("=I", 4, &[73, 60, 157, 92], Ok(1553808457)),
        ("@I", 4, &[0, 0, 0, 0], Ok(0)),
        ("@I", 4, &[255, 255, 255, 255], Ok(4294967295)),
        ("@I", 4, &[1, 2, 3, 4], Ok(67305985)),
        ("@I", 4, &[52, 96, 190, 49], Ok(834560052)),
        ("@I", 4, &[32, 30, 105, 254], Ok(4268301856)),
        ("I", 4, &[0, 0, 0, 0], Ok(0)),
        ("I", 4, &[255, 255, 255, 255], Ok(4294967295)),
        ("I", 4, &[1, 2, 3, 4], Ok(67305985)),
        ("I", 4, &[218, 160, 238, 232], Ok(3907952858)),
        ("I", 4, &[185, 153, 127, 92], Ok(1551866297)),
        (">H", 2, &[0, 0], Ok(0)),
        (">H", 2, &[255, 255], Ok(65535)),
        (">H", 2, &[1, 2], Ok(258)),
        (">H", 2, &[124, 41], Ok(31785)),
        (">H", 2, &[153, 253], Ok(39421)),
        ("<H", 2, &[0, 0], Ok(0)),
        ("<H", 2, &[255, 255], Ok(65535)),
        ("<H", 2, &[1, 2], Ok(513)),
        ("<H", 2, &[175, 229], Ok(58799)),
        ("<H", 2, &[147, 37], Ok(9619)),
        ("!H", 2, &[0, 0], Ok(0)),
        ("!H", 2, &[255, 255], Ok(65535)),
        ("!H", 2, &[1, 2], Ok(258)),
        ("!H", 2, &[60, 214], Ok(15574)),
        ("!H", 2, &[84, 175], Ok(21679)),
        ("H", 2, &[0, 0], Ok(0)),
        ("H", 2, &[255, 255], Ok(65535)),
        ("H", 2, &[1, 2], Ok(513)),
        ("H", 2, &[77, 250], Ok(64077)),
        ("H", 2, &[215, 20], Ok(5335)),
        ("=H", 2, &[0, 0], Ok(0)),
        ("=H", 2, &[255, 255], Ok(65535)),
        ("=H", 2, &[1, 2], Ok(513)),
        ("=H", 2, &[39, 160], Ok(40999)),
        ("=H", 2, &[174, 179], Ok(45998)),
        ("b", 1, &[0], Ok(0)),
        ("b", 1, &[255], Err(-1)),
        ("b", 1, &[1], Ok(1)),
        ("b", 1, &[254], Err(-2)),
        ("b", 1, &[233], Err(-23)),
        ("B", 1, &[0], Ok(0)),
        ("B", 1, &[255], Ok(255)),
        ("B", 1, &[1], Ok(1)),
        ("B", 1, &[35], Ok(35)),
        ("B", 1, &[47], Ok(47)),
        (">b", 1, &[0], Ok(0)),
        (">b", 1, &[255], Err(-1)),
        (">b", 1, &[1], Ok(1)),
        (">b", 1, &[138], Err(-118)),
        (">b", 1, &[242], Err(-14)),
        ("<B", 1, &[0], Ok(0)),
        ("<B", 1, &[255], Ok(255)),
        ("<B", 1, &[1], Ok(1)),
        ("<B", 1, &[33], Ok(33)),
        ("<B", 1, &[31], Ok(31)),
        ("!b", 1, &[0], Ok(0)),
        ("!b", 1, &[255], Err(-1)),
        ("!b", 1, &[1], Ok(1)),
        ("!b", 1, &[158], Err(-98)),
        ("!b", 1, &[228], Err(-28)),
        (">h", 2, &[0, 0], Ok(0)),
        (">h", 2, &[255, 255], Err(-1)),
        (">h", 2, &[1, 2], Ok(258)),
        (">h", 2, &[145, 197], Err(-28219)),
        (">h", 2, &[177, 11], Err(-20213)),
        ("<h", 2, &[0, 0], Ok(0)),
        ("<h", 2, &[255, 255], Err(-1)),
        ("<h", 2, &[1, 2], Ok(513)),
        ("<h", 2, &[236, 181], Err(-18964)),
        ("<h", 2, &[86, 59], Ok(15190)),
        ("h", 2, &[0, 0], Ok(0)),
        ("h", 2, &[255, 255], Err(-1)),
        ("h", 2, &[1, 2], Ok(513)),
        ("h", 2, &[252, 30], Ok(7932)),
        ("h", 2, &[111, 147], Err(-27793)),
        ("i", 4, &[0, 0, 0, 0], Ok(0)),
        ("i", 4, &[255, 255, 255, 255], Err(-1)),
        ("i", 4, &[1, 2, 3, 4], Ok(67305985)),
        ("i", 4, &[66, 126, 203, 200], Err(-926187966)),
        ("i", 4, &[254, 41, 85, 229], Err(-447403522)),
        (">i", 4, &[0, 0, 0, 0], Ok(0)),
        (">i", 4, &[255, 255, 255, 255], Err(-1)),
        (">i", 4, &[1, 2, 3, 4], Ok(16909060)),
        (">i", 4, &[205, 142, 70, 220], Err(-846313764)),
        (">i", 4, &[142, 212, 183, 194], Err(-1898661950)),
        ("<i", 4, &[0, 0, 0, 0], Ok(0)),
        ("<i", 4, &[255, 255, 255, 255], Err(-1)),
        ("<i", 4, &[1, 2, 3, 4], Ok(67305985)),
        ("<i", 4, &[118, 77, 42, 90], Ok(1512721782)),
        ("<i", 4, &[77, 118, 119, 6], Ok(108492365)),
        ("=i", 4, &[0, 0, 0, 0], Ok(0)),
        ("=i", 4, &[255, 255, 255, 255], Err(-1)),
        ("=i", 4, &[1, 2, 3, 4], Ok(67305985)),
        ("=i", 4, &[248, 93, 134, 144], Err(-1870242312)),
        ("=i", 4, &[2, 74, 214, 189], Err(-1110029822)),
        ("<q", 8, &[0, 0, 0, 0, 0, 0, 0, 0], Ok(0)),
        ("<q", 8, &[255, 255, 255, 255, 255, 255, 255, 255], Err(-1)),
        ("<q", 8, &[1, 2, 3, 4, 5, 6, 7, 8], Ok(578437695752307201)),
        ("<q", 8, &[163, 64, 27, 233, 200, 203, 204, 201], Err(-3905522713072287581)),
        ("<q", 8, &[53, 246, 205, 31, 97, 34, 106, 225], Err(-2203911267103672779)),
        (">q", 8, &[0, 0, 0, 0, 0, 0, 0, 0], Ok(0)),
        (">q", 8, &[255, 255, 255, 255, 255, 255, 255, 255], Err(-1)),
        (">q", 8, &[1, 2, 3, 4, 5, 6, 7, 8], Ok(72623859790382856)),
        (">q", 8, &[83, 56, 174, 26, 52, 0, 77, 51], Ok(5996734331408633139)),
        (">q", 8, &[186, 13, 36, 106, 192, 76, 129, 177], Err(-5040332367046344271)),
        ("q", 8, &[0, 0, 0, 0, 0, 0, 0, 0], Ok(0)),
        ("q", 8, &[255, 255, 255, 255, 255, 255, 255, 255], Err(-1)),
        ("q", 8, &[1, 2, 3, 4, 5, 6, 7, 8], Ok(578437695752307201)),
        ("q", 8, &[186, 242, 62, 59, 249, 238, 245, 247], Err(-579294222838992198)),
        ("q", 8, &[159, 43, 73, 52, 175, 135, 245, 82], Ok(5977833266970438559)),
        ("<Q", 8, &[0, 0, 0, 0, 0, 0, 0, 0], Ok(0)),
        ("<Q", 8, &[255, 255, 255, 255, 255, 255, 255, 255], Ok(18446744073709551615)),
        ("<Q", 8, &[1, 2, 3, 4, 5, 6, 7, 8], Ok(578437695752307201)),
        ("<Q", 8, &[11, 105, 185, 75, 13, 152, 46, 133], Ok(9596775038845544715)),
        ("<Q", 8, &[187, 85, 182, 114, 168, 114, 99, 122], Ok(8819018563126187451)),
        (">Q", 8, &[0, 0, 0, 0, 0, 0, 0, 0], Ok(0)),
        (">Q", 8, &[255, 255, 255, 255, 255, 255, 255, 255], Ok(18446744073709551615)),
        (">Q", 8, &[1, 2, 3, 4, 5, 6, 7, 8], Ok(72623859790382856)),
        (">Q", 8, &[205, 116, 102, 252, 182, 14, 14, 143], Ok(14804571110645829263)),
        (">Q", 8, &[241, 132, 99, 176, 228, 178, 186, 41], Ok(17403144471468751401)),
        ("Q", 8, &[0, 0, 0, 0, 0, 0, 0, 0], Ok(0)),
        ("Q", 8, &[255, 255, 255, 255, 255, 255, 255, 255], Ok(18446744073709551615)),
        ("Q", 8, &[1, 2, 3, 4, 5, 6, 7, 8], Ok(578437695752307201)),
        ("Q", 8, &[112, 52, 116, 240, 100, 172, 104, 247], Ok(17827688674476962928)),
        ("Q", 8, &[0, 245, 176, 43, 61, 198, 102, 244], Ok(17610981358907225344)),
        ("@L", 8, &[0, 0, 0, 0, 0, 0, 0, 0], Ok(0)),
        ("@L", 8, &[255, 255, 255, 255, 255, 255, 255, 255], Ok(18446744073709551615)),
        ("@L", 8, &[1, 2, 3, 4, 5, 6, 7, 8], Ok(578437695752307201)),
        ("@L", 8, &[91, 222, 170, 44, 202, 237, 205, 43], Ok(3156440366445157979)),
        ("@L", 8, &[81, 87, 65, 14, 77, 238, 74, 242], Ok(17459028920174204753)),
        ("L", 8, &[0, 0, 0, 0, 0, 0, 0, 0], Ok(0)),
        ("L", 8, &[255, 255, 255, 255, 255, 255, 255, 255], Ok(18446744073709551615)),
        ("L", 8, &[1, 2, 3, 4, 5, 6, 7, 8], Ok(578437695752307201)),
        ("L", 8, &[179, 79, 67, 10, 7, 52, 71, 222], Ok(16016827804608057267)),
        ("L", 8, &[99, 108, 14, 128, 108, 149, 123, 166], Ok(11996346325668883555)),
        ("<l", 4, &[0, 0, 0, 0], Ok(0)),
        ("<l", 4, &[255, 255, 255, 255], Err(-1)),
        ("<l", 4, &[1, 2, 3, 4], Ok(67305985)),
        ("<l", 4, &[132, 214, 67, 31], Ok(524539524)),
        ("<l", 4, &[181, 234, 215, 66], Ok(1121446581)),
        ("<L", 4, &[0, 0, 0, 0], Ok(0)),
        ("<L", 4, &[255, 255, 255, 255], Ok(4294967295)),
        ("<L", 4, &[1, 2, 3, 4], Ok(67305985)),
        ("<L", 4, &[77, 9, 225, 93], Ok(1575029069)),
        ("<L", 4, &[2, 76, 88, 72], Ok(1213746178)),
        ("=l", 4, &[0, 0, 0, 0], Ok(0)),
        ("=l", 4, &[255, 255, 255, 255], Err(-1)),
        ("=l", 4, &[1, 2, 3, 4], Ok(67305985)),
        ("=l", 4, &[242, 61, 31, 166], Err(-1507901966)),
        ("=l", 4, &[247, 54, 29, 127], Ok(2132621047)),
        ("!L", 4, &[0, 0, 0, 0], Ok(0)),
        ("!L", 4, &[255, 255, 255, 255], Ok(4294967295)),
        ("!L", 4, &[1, 2, 3, 4], Ok(16909060)),
        ("!L", 4, &[97, 141, 21, 50], Ok(1636635954)),
        ("!L", 4, &[231, 14, 32, 226], Ok(3876462818)),
        ("@l", 8, &[0, 0, 0, 0, 0, 0, 0, 0], Ok(0)),
        ("@l", 8, &[255, 255, 255, 255, 255, 255, 255, 255], Err(-1)),
        ("@l", 8, &[1, 2, 3, 4, 5, 6, 7, 8], Ok(578437695752307201)),
        ("@l", 8, &[166, 102, 141, 231, 244, 126, 132, 103], Ok(7459226473154307750)),
        ("@l", 8, &[229, 70, 213, 62, 200, 226, 161, 37], Ok(2711697800329250533)),
        ("n", 8, &[0, 0, 0, 0, 0, 0, 0, 0], Ok(0)),
        ("n", 8, &[255, 255, 255, 255, 255, 255, 255, 255], Err(-1)),
        ("n", 8, &[1, 2, 3, 4, 5, 6, 7, 8], Ok(578437695752307201)),
        ("n", 8, &[123, 219, 37, 108, 155, 62, 79, 187], Err(-4949668628201612421)),
        ("n", 8, &[73, 129, 70, 239, 112, 48, 203, 249], Err(-447210476384386743)),
        ("N", 8, &[0, 0, 0, 0, 0, 0, 0, 0], Ok(0)),
        ("N", 8, &[255, 255, 255, 255, 255, 255, 255, 255], Ok(18446744073709551615)),
        ("N", 8, &[1, 2, 3, 4, 5, 6, 7, 8], Ok(578437695752307201)),
        ("N", 8, &[83, 114, 82, 220, 206, 173, 215, 100], Ok(7266467627756843603)),
        ("N", 8, &[182, 163, 47, 187, 9, 173, 234, 225], Ok(16279014060390851510)),
        ("@n", 8, &[0, 0, 0, 0, 0, 0, 0, 0], Ok(0)),
        ("@n", 8, &[255, 255, 255, 255, 255, 255, 255, 255], Err(-1)),
        ("@n", 8, &[1, 2, 3, 4, 5, 6, 7, 8], Ok(578437695752307201)),
        ("@n", 8, &[9, 196, 169, 151, 32, 57, 117, 53], Ok(3852047868431549449)),
        ("@n", 8, &[43, 135, 139, 20, 92, 138, 66, 216], Err(-2863574284967901397)),
        ("@N", 8, &[0, 0, 0, 0, 0, 0, 0, 0], Ok(0)),
        ("@N", 8, &[255, 255, 255, 255, 255, 255, 255, 255], Ok(18446744073709551615)),
        ("@N", 8, &[1, 2, 3, 4, 5, 6, 7, 8], Ok(578437695752307201)),
        ("@N", 8, &[132, 207, 76, 253, 167, 45, 142, 29], Ok(2129689873325281156)),
        ("@N", 8, &[93, 217, 37, 137, 8, 45, 133, 42], Ok(3063904636179437917)),
        ("xxI", 8, &[0, 0, 0, 0, 0, 0, 0, 0], Ok(0)),
        ("xxI", 8, &[255, 255, 255, 255, 255, 255, 255, 255], Ok(4294967295)),
        ("xxI", 8, &[1, 2, 3, 4, 5, 6, 7, 8], Ok(134678021)),
        ("xxI", 8, &[113, 34, 135, 62, 232, 5, 173, 213], Ok(3584886248)),
        ("xxI", 8, &[137, 66, 22, 122, 56, 82, 134, 25], Ok(428233272)),
        ("2xH", 4, &[0, 0, 0, 0], Ok(0)),
        ("2xH", 4, &[255, 255, 255, 255], Ok(65535)),
        ("2xH", 4, &[1, 2, 3, 4], Ok(1027)),
        ("2xH", 4, &[92, 103, 159, 156], Ok(40095)),
        ("2xH", 4, &[105, 148, 228, 91], Ok(23524)),
        ("<2xH", 4, &[0, 0, 0, 0], Ok(0)),
        ("<2xH", 4, &[255, 255, 255, 255], Ok(65535)),
        ("<2xH", 4, &[1, 2, 3, 4], Ok(1027)),
        ("<2xH", 4, &[138, 177, 9, 128], Ok(32777)),
        ("<2xH", 4, &[18, 7, 9, 97], Ok(24841)),
        (">xxH", 4, &[0, 0, 0, 0], Ok(0)),
        (">xxH", 4, &[255, 255, 255, 255], Ok(65535)),
        (">xxH", 4, &[1, 2, 3, 4], Ok(772)),
        (">xxH", 4, &[243, 125, 228, 54], Ok(58422)),
        (">xxH", 4, &[221, 253, 201, 157], Ok(51613)),
        ("<3xB", 4, &[0, 0, 0, 0], Ok(0)),
        ("<3xB", 4, &[255, 255, 255, 255], Ok(255)),
        ("<3xB", 4, &[1, 2, 3, 4], Ok(4)),
        ("<3xB", 4, &[110, 117, 175, 101], Ok(101)),
        ("<3xB", 4, &[71, 207, 177, 27], Ok(27)),
        ("=xI", 5, &[0, 0, 0, 0, 0], Ok(0)),
        ("=xI", 5, &[255, 255, 255, 255, 255], Ok(4294967295)),
        ("=xI", 5, &[1, 2, 3, 4, 5], Ok(84148994)),
        ("=xI", 5, &[66, 7, 36, 130, 220], Ok(3699516423)),
        ("=xI", 5, &[83, 28, 43, 195, 144], Ok(2428709660)),
        ("xH", 4, &[0, 0, 0, 0], Ok(0)),
        ("xH", 4, &[255, 255, 255, 255], Ok(65535)),
        ("xH", 4, &[1, 2, 3, 4], Ok(1027)),
        ("xH", 4, &[124, 150, 23, 235], Ok(60183)),
        ("xH", 4, &[94, 80, 137, 228], Ok(58505)),
        ("xI", 8, &[0, 0, 0, 0, 0, 0, 0, 0], Ok(0)),
        ("xI", 8, &[255, 255, 255, 255, 255, 255, 255, 255], Ok(4294967295)),
        ("xI", 8, &[1, 2, 3, 4, 5, 6, 7, 8], Ok(134678021)),
        ("xI", 8, &[1, 134, 186, 168, 165, 125, 17, 158], Ok(2651946405)),
        ("xI", 8, &[111, 182, 93, 0, 171, 195, 42, 243], Ok(4079666091)),
        ("@xI", 8, &[0, 0, 0, 0, 0, 0, 0, 0], Ok(0)),
        ("@xI", 8, &[255, 255, 255, 255, 255, 255, 255, 255], Ok(4294967295)),
        ("@xI", 8, &[1, 2, 3, 4, 5, 6, 7, 8], Ok(134678021)),
        ("@xI", 8, &[142, 102, 127, 2, 46, 135, 45, 73], Ok(1227720494)),
        ("@xI", 8, &[204, 21, 201, 11, 153, 155, 119, 43], Ok(729258905)),
        ("B0I", 4, &[0, 0, 0, 0], Ok(0)),
        ("B0I", 4, &[255, 255, 255, 255], Ok(255)),
        ("B0I", 4, &[1, 2, 3, 4], Ok(1)),
        ("B0I", 4, &[79, 199, 166, 253], Ok(79)),
        ("B0I", 4, &[76, 145, 74, 22], Ok(76)),
        ("0IB", 1, &[0], Ok(0)),
        ("0IB", 1, &[255], Ok(255)),
        ("0IB", 1, &[1], Ok(1)),
        ("0IB", 1, &[219], Ok(219)),
        ("0IB", 1, &[71], Ok(71)),
        ("xb", 2, &[0, 0], Ok(0)),
        ("xb", 2, &[255, 255], Err(-1)),
        ("xb", 2, &[1, 2], Ok(2)),
        ("xb", 2, &[8, 117], Ok(117)),
        ("xb", 2, &[43, 15], Ok(15)),
        ("7xB", 8, &[0, 0, 0, 0, 0, 0, 0, 0], Ok(0)),
        ("7xB", 8, &[255, 255, 255, 255, 255, 255, 255, 255], Ok(255)),
        ("7xB", 8, &[1, 2, 3, 4, 5, 6, 7, 8], Ok(8)),
        ("7xB", 8, &[21, 68, 184, 53, 192, 231, 25, 9], Ok(9)),
        ("7xB", 8, &[125, 250, 135, 1, 233, 35, 47, 33], Ok(33)),
        ("I ", 4, &[0, 0, 0, 0], Ok(0)),
        ("I ", 4, &[255, 255, 255, 255], Ok(4294967295)),
        ("I ", 4, &[1, 2, 3, 4], Ok(67305985)),
        ("I ", 4, &[242, 129, 38, 135], Ok(2267447794)),
        ("I ", 4, &[120, 105, 118, 235], Ok(3950406008)),
        ("2x2xI", 8, &[0, 0, 0, 0, 0, 0, 0, 0], Ok(0)),
        ("2x2xI", 8, &[255, 255, 255, 255, 255, 255, 255, 255], Ok(4294967295)),
        ("2x2xI", 8, &[1, 2, 3, 4, 5, 6, 7, 8], Ok(134678021)),
        ("2x2xI", 8, &[252, 195, 39, 245, 147, 23, 101, 39], Ok(660936595)),
        ("2x2xI", 8, &[75, 169, 130, 155, 68, 6, 246, 31], Ok(536217156)),
    ];

    #[test]
    #[cfg(all(target_endian = "little", target_pointer_width = "64", not(windows)))]
    fn matches_cpython_struct_table() {
        assert!(PYTHON_TABLE.len() >= 30);
        for &(fmt, hl, bytes, expected) in PYTHON_TABLE {
            let h =
                LengthHeader::parse(hl, fmt).unwrap_or_else(|e| panic!("{fmt:?} rejected: {e}"));
            let got = h.payload_length(bytes);
            match expected {
                Ok(v) => assert_eq!(got, Ok(v), "{fmt:?} {bytes:?}"),
                Err(v) => assert_eq!(
                    got,
                    Err(LengthError::NegativeLength(v)),
                    "{fmt:?} {bytes:?}"
                ),
            }
            // The encoder reproduces the field (pads are zero).
            if let Ok(v) = expected {
                let enc = h.encode(v).unwrap();
                assert_eq!(h.payload_length(&enc), Ok(v));
                let (o, s) = (h.field_offset(), h.field_size());
                assert_eq!(enc[o..o + s], bytes[o..o + s], "{fmt:?}");
            }
        }
    }

    /// Random formats (seed 11) with CPython's verdict: `Some((calcsize,
    /// struct.unpack(fmt, bytes(range(1, calcsize + 1)))[0]))` when the format
    /// is valid, holds exactly one integer item and has calcsize 1..=8;
    /// `None` when `struct` rejects it or it is not a single-integer format.
    #[rustfmt::skip]
    const PYTHON_RANDOM_FORMATS: &[(&str, Option<(usize, u64)>)] = &[
        ("=xf l", None),
        ("02IH", None),
        ("=ih?", None),
        ("!2", None),
        ("=020I", None),
        ("<f", None),
        ("B", Some((1, 1))),
        ("2b", None),
        ("!nx l", None),
        ("<0Q", None),
        ("=3", None),
        ("0qx?", None),
        ("!q", Some((8, 72623859790382856))),
        ("@fQ", None),
        (" ", None),
        ("!x", None),
        ("xhb", None),
        ("!l", Some((4, 16909060))),
        ("x", None),
        ("=xh 0", None),
        ("nhQ", None),
        ("@x", None),
        ("!i", Some((4, 16909060))),
        ("b", Some((1, 1))),
        ("xI3?", None),
        ("flix", None),
        (">Hxxl", None),
        (" Qb", None),
        ("x2", None),
        (">B", Some((1, 1))),
        ("xq", None),
        ("Qxh", None),
        ("l", Some((8, 578437695752307201))),
        ("<b2", None),
        ("@2xi", Some((8, 134678021))),
        ("< ixI", None),
        (">QL", None),
        ("!lI", None),
        (">3x", None),
        ("=x", None),
        ("H", Some((2, 513))),
        ("Lxq", None),
        ("=QfIh", None),
        ("x?", None),
        (">q", Some((8, 72623859790382856))),
        ("bh", None),
        ("@xLBB", None),
        ("Nf ", None),
        ("N", Some((8, 578437695752307201))),
        ("n3f ", None),
        ("=QBb", None),
        ("<x", None),
        ("nih", None),
        ("?NBi", None),
        ("!Nh3", None),
        ("<2", None),
        (">x b2", None),
        ("h", Some((2, 513))),
        ("=x x", None),
        ("=?hff", None),
        ("2hx", None),
        ("Hx", Some((3, 513))),
        ("!qbNQ", None),
        ("fI", None),
        ("!3xx", None),
        ("x3q", None),
        ("llxL", None),
        ("<lii", None),
        ("=Bhq", None),
        ("!Hx", Some((3, 258))),
        ("=lxx", Some((6, 67305985))),
        (">3n2x", None),
        ("@B", Some((1, 1))),
        ("@3", None),
        ("> NQ", None),
        (">0", None),
        ("xlbq", None),
        ("B0", None),
        ("H0?0", None),
        (">h3l", None),
        ("qIbx", None),
        ("<I", Some((4, 67305985))),
        ("N?f", None),
        ("<xL", Some((5, 84148994))),
        ("xixx", None),
        ("<xn0", None),
        ("0", None),
        (">l", Some((4, 16909060))),
        ("hQ?n", None),
        ("@N", Some((8, 578437695752307201))),
        ("<B", Some((1, 1))),
        ("=?xq", None),
        ("=l", Some((4, 67305985))),
        ("!I", Some((4, 16909060))),
        ("<3ix", None),
        ("x hL", None),
        ("=?0I", None),
        ("<Q3x", None),
        ("!Qi", None),
        ("< xl", Some((5, 84148994))),
        ("=f", None),
        ("b?Bf", None),
        ("h?", None),
        ("=xqLx", None),
        ("=nx", None),
        ("!fnHl", None),
        ("=q", Some((8, 578437695752307201))),
        ("Lb", None),
        (">nNL", None),
        ("<Hx H", None),
        ("!lfx", None),
        ("0xf2", None),
        ("0?", None),
        (">fl", None),
        ("!L0", None),
        ("!In2", None),
        ("@ll", None),
        ("Li", None),
        ("!?ilx", None),
        (">H", Some((2, 258))),
    ];

    #[test]
    #[cfg(all(target_endian = "little", target_pointer_width = "64", not(windows)))]
    fn random_formats_agree_with_cpython() {
        for &(fmt, verdict) in PYTHON_RANDOM_FORMATS {
            match verdict {
                Some((hl, value)) => {
                    let h = LengthHeader::parse(hl, fmt)
                        .unwrap_or_else(|e| panic!("{fmt:?} rejected: {e}"));
                    let header: Vec<u8> = (1..=hl as u8).collect();
                    assert_eq!(h.payload_length(&header), Ok(value), "{fmt:?}");
                    for other in (1..=MAX_HEADER_LENGTH).filter(|&n| n != hl) {
                        assert!(LengthHeader::parse(other, fmt).is_err(), "{fmt:?} {other}");
                    }
                }
                None => {
                    for hl in 1..=MAX_HEADER_LENGTH {
                        assert!(LengthHeader::parse(hl, fmt).is_err(), "{fmt:?} accepted");
                    }
                }
            }
        }
    }

    #[test]
    #[cfg(all(target_endian = "little", target_pointer_width = "64", not(windows)))]
    fn native_alignment_layout() {
        // (fmt, calcsize, field offset, field size) as CPython computes them.
        for (fmt, hl, off, size) in [
            ("xH", 4, 2, 2),
            ("xI", 8, 4, 4),
            ("@xI", 8, 4, 4),
            ("=xI", 5, 1, 4),
            ("B0I", 4, 0, 1),
            ("0IB", 1, 0, 1),
            ("xxI", 8, 4, 4),
            ("3xH", 6, 4, 2),
        ] {
            let h = LengthHeader::parse(hl, fmt).unwrap();
            assert_eq!((h.field_offset(), h.field_size()), (off, size), "{fmt:?}");
        }
        // Native "xq" aligns q to 8 bytes: calcsize 16, too long for a header;
        // the standard-size "=xq" is 9.
        let e = LengthHeader::parse(8, "xq").unwrap_err();
        assert_eq!(e.kind, HeaderErrorKind::SizeMismatch { calcsize: 16 });
        let e = LengthHeader::parse(8, "=xq").unwrap_err();
        assert_eq!(e.kind, HeaderErrorKind::SizeMismatch { calcsize: 9 });
    }

    #[test]
    fn rejections_name_the_reason() {
        use HeaderErrorKind::*;
        let cases: &[(&str, usize, HeaderErrorKind)] = &[
            (">I", 3, SizeMismatch { calcsize: 4 }),
            ("<Q", 4, SizeMismatch { calcsize: 8 }),
            ("=xI", 4, SizeMismatch { calcsize: 5 }),
            ("2I", 8, MultipleItems(2)),
            ("<BH", 3, MultipleItems(2)),
            ("<bxI", 6, MultipleItems(2)),
            (">f", 4, NonIntegerCode('f')),
            ("d", 8, NonIntegerCode('d')),
            ("4s", 4, NonIntegerCode('s')),
            ("p", 1, NonIntegerCode('p')),
            ("<e", 2, NonIntegerCode('e')),
            ("c", 1, NonIntegerCode('c')),
            ("?", 1, NonIntegerCode('?')),
            ("P", 8, NonIntegerCode('P')),
            ("0fI", 4, NonIntegerCode('f')),
            (">n", 8, NativeOnlyCode('n')),
            ("<N", 8, NativeOnlyCode('N')),
            ("x", 1, NoLengthItem),
            ("", 1, NoLengthItem),
            ("@", 1, NoLengthItem),
            ("x<H", 3, MisplacedByteOrder('<')),
            (" <I", 4, MisplacedByteOrder('<')),
            ("2 I", 4, BadChar(' ')),
            ("<z", 1, BadChar('z')),
            ("I2", 4, CountWithoutCode),
            ("2", 1, CountWithoutCode),
            ("99999999999999999999I", 4, TooLong),
            (">I", 0, HeaderLengthOutOfRange),
            ("9xB", 10, HeaderLengthOutOfRange),
            ("é", 1, BadChar('é')),
        ];
        for (fmt, hl, kind) in cases {
            let e = LengthHeader::parse(*hl, fmt).unwrap_err();
            assert_eq!(&e.kind, kind, "{fmt:?}");
            let msg = e.to_string();
            assert!(msg.contains(&format!("{fmt:?}")), "{msg}");
        }
        let msg = LengthHeader::parse(3, ">I").unwrap_err().to_string();
        assert_eq!(
            msg,
            "invalid length header (header_length=3, format \">I\"): \
             struct.calcsize of the format is 4, not header_length"
        );
    }

    #[test]
    fn header_slice_must_have_header_length() {
        let h = LengthHeader::parse(4, ">I").unwrap();
        assert_eq!(
            h.payload_length(&[0, 0, 1]),
            Err(LengthError::WrongHeaderSize {
                expected: 4,
                got: 3
            })
        );
    }

    #[test]
    fn encoder_limits() {
        let h = LengthHeader::parse(1, "b").unwrap();
        assert_eq!(h.max_payload_length(), 127);
        assert_eq!(h.encode(127).unwrap(), vec![127]);
        assert_eq!(
            h.encode(128),
            Err(LengthError::TooLarge {
                value: 128,
                max: 127
            })
        );
        let h = LengthHeader::parse(8, "<Q").unwrap();
        assert_eq!(h.max_payload_length(), u64::MAX);
        let h = LengthHeader::parse(8, ">q").unwrap();
        assert_eq!(h.max_payload_length(), i64::MAX as u64);
        assert_eq!(
            h.payload_length(&[0x80, 0, 0, 0, 0, 0, 0, 0]),
            Err(LengthError::NegativeLength(i64::MIN))
        );
    }

    /// Every format a decoder can sensibly declare, with its header length.
    fn supported_formats() -> Vec<(usize, String)> {
        let mut v = Vec::new();
        for prefix in ["", "@", "=", "<", ">", "!"] {
            let native = prefix.is_empty() || prefix == "@";
            for code in "bBhHiIlLqQnN".chars() {
                let Some((size, _, _)) = int_code(code, native) else {
                    continue;
                };
                if !native && (code == 'n' || code == 'N') {
                    continue;
                }
                if size <= MAX_HEADER_LENGTH {
                    v.push((size, format!("{prefix}{code}")));
                }
                // Pad bytes in front, when they fit: aligned in native mode.
                let pad_total = if native { size } else { 1 };
                if pad_total + size <= MAX_HEADER_LENGTH {
                    v.push((pad_total + size, format!("{prefix}x{code}")));
                }
                if !native && size + 3 <= MAX_HEADER_LENGTH {
                    v.push((size + 3, format!("{prefix}2x{code}x")));
                }
            }
        }
        v
    }

    fn any_format() -> impl Strategy<Value = LengthHeader> {
        let headers: Vec<LengthHeader> = supported_formats()
            .iter()
            .map(|(hl, f)| LengthHeader::parse(*hl, f).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        prop::sample::select(headers)
    }

    fn any_signed_format() -> impl Strategy<Value = LengthHeader> {
        let headers: Vec<LengthHeader> = supported_formats()
            .iter()
            .map(|(hl, f)| LengthHeader::parse(*hl, f).unwrap())
            .filter(|h| h.is_signed())
            .collect();
        prop::sample::select(headers)
    }

    #[test]
    fn all_supported_formats_parse() {
        let n = supported_formats().len();
        assert!(n > 60, "{n}");
        for (hl, f) in supported_formats() {
            LengthHeader::parse(hl, &f).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    proptest! {
        #[test]
        fn encode_then_decode(h in any_format(), raw in any::<u64>()) {
            let max = h.max_payload_length();
            let value = if max == u64::MAX { raw } else { raw % (max + 1) };
            let bytes = h.encode(value).unwrap();
            prop_assert_eq!(bytes.len(), h.header_length());
            prop_assert_eq!(h.payload_length(&bytes), Ok(value));
        }

        #[test]
        fn signed_negative_is_an_error(h in any_signed_format(), raw in any::<u64>()) {
            let mut bytes = h.encode(raw % (h.max_payload_length() + 1)).unwrap();
            // Set the sign bit of the field.
            let msb = match h.byte_order() {
                ByteOrder::Big => h.field_offset(),
                ByteOrder::Little => h.field_offset() + h.field_size() - 1,
            };
            bytes[msb] |= 0x80;
            let is_negative = matches!(h.payload_length(&bytes), Err(LengthError::NegativeLength(v)) if v < 0);
            prop_assert!(is_negative);
        }

        #[test]
        fn frames_survive_arbitrary_splits(
            h in any_format(),
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..20),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
        ) {
            let payloads: Vec<Vec<u8>> = payloads
                .into_iter()
                .map(|mut p| { p.truncate(h.max_payload_length() as usize); p })
                .collect();
            let mut stream = Vec::new();
            for p in &payloads {
                h.put_header(p.len() as u64, &mut stream).unwrap();
                stream.extend_from_slice(p);
            }
            let mut dec = FrameDecoder::new(h, 1 << 20);
            let got = feed(&mut dec, &stream, &cuts);
            let want: Vec<Result<Vec<u8>, FrameError>> = payloads.into_iter().map(Ok).collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(dec.finish(), None);
            prop_assert_eq!(dec.buffered_len(), 0);
        }

        #[test]
        fn oversized_frames_are_skipped_in_sync(
            h in any_format(),
            max in 0u64..100,
            frames in prop::collection::vec((any::<bool>(), 0usize..120, any::<u8>()), 0..20),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
            push_mode in any::<bool>(),
        ) {
            let limit = h.max_payload_length().min(120);
            prop_assume!(limit > max);
            let mut stream = Vec::new();
            let mut want = Vec::new();
            for (oversized, len, fill) in frames {
                let len = len as u64;
                let len = if oversized { max + 1 + len % (limit - max) } else { len % (max + 1) };
                h.put_header(len, &mut stream).unwrap();
                let payload: Vec<u8> = (0..len).map(|i| fill.wrapping_add(i as u8)).collect();
                stream.extend_from_slice(&payload);
                if len > max {
                    want.push(Err(FrameError::Oversized { declared: len, max }));
                } else {
                    want.push(Ok(payload));
                }
            }
            let mut dec = FrameDecoder::new(h, max);
            let got = if push_mode {
                feed(&mut dec, &stream, &cuts)
            } else {
                feed_read_buf(&mut dec, &stream, &cuts)
            };
            prop_assert_eq!(&got, &want);
            prop_assert_eq!(dec.finish(), None);
            // The same through the `Decoder` trait, ending with `decode_eof`.
            let mut codec = LengthHeaderCodec::new(h, max);
            prop_assert_eq!(feed_codec(&mut codec, &stream, &cuts).unwrap(), want);
        }

        #[test]
        fn codec_reports_a_cut_frame_at_the_end(
            h in any_format(),
            payload in prop::collection::vec(any::<u8>(), 1..100),
            keep in any::<prop::sample::Index>(),
        ) {
            let payload = &payload[..payload.len().min(h.max_payload_length() as usize)];
            let mut stream = Vec::new();
            h.put_header(payload.len() as u64, &mut stream).unwrap();
            stream.extend_from_slice(payload);
            let keep = keep.index(stream.len());
            let mut codec = LengthHeaderCodec::new(h, 1 << 20);
            let r = feed_codec(&mut codec, &stream[..keep], &[]);
            if keep == 0 {
                prop_assert_eq!(r.unwrap(), vec![]);
            } else {
                prop_assert!(matches!(r, Err(ReadError::Protocol(FrameError::Truncated(_)))));
            }
        }

        #[test]
        fn codec_garbage_never_panics(
            h in any_format(),
            max in 0u64..100,
            data in prop::collection::vec(any::<u8>(), 0..300),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let _ = feed_codec(&mut LengthHeaderCodec::new(h, max), &data, &cuts);
        }

        #[test]
        fn truncated_stream_is_reported(
            h in any_format(),
            payload in prop::collection::vec(any::<u8>(), 1..100),
            keep in any::<prop::sample::Index>(),
        ) {
            let payload = &payload[..payload.len().min(h.max_payload_length() as usize)];
            let mut stream = Vec::new();
            h.put_header(payload.len() as u64, &mut stream).unwrap();
            stream.extend_from_slice(payload);
            let keep = keep.index(stream.len()); // strictly shorter than the frame
            let mut dec = FrameDecoder::new(h, 1 << 20);
            dec.push(&stream[..keep]);
            prop_assert_eq!(dec.next_frame(), Ok(None));
            let t = dec.finish();
            let hl = h.header_length();
            if keep == 0 {
                prop_assert_eq!(t, None);
            } else if keep < hl {
                prop_assert_eq!(t, Some(Truncated { part: FramePart::Header, expected: hl as u64, got: keep as u64 }));
            } else {
                prop_assert_eq!(t, Some(Truncated {
                    part: FramePart::Payload,
                    expected: payload.len() as u64,
                    got: (keep - hl) as u64,
                }));
            }
        }
    }

    /// Push `stream` in pieces cut at `cuts`, draining after every push.
    fn feed(
        dec: &mut FrameDecoder,
        stream: &[u8],
        cuts: &[prop::sample::Index],
    ) -> Vec<Result<Vec<u8>, FrameError>> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        points.push(0);
        points.push(stream.len());
        points.sort_unstable();
        let mut out = Vec::new();
        for w in points.windows(2) {
            dec.push(&stream[w[0]..w[1]]);
            drain(dec, &mut out);
        }
        out
    }

    /// Same as [`feed`] but through `read_buf`, so nothing is skipped at push.
    fn feed_read_buf(
        dec: &mut FrameDecoder,
        stream: &[u8],
        cuts: &[prop::sample::Index],
    ) -> Vec<Result<Vec<u8>, FrameError>> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        points.push(0);
        points.push(stream.len());
        points.sort_unstable();
        let mut out = Vec::new();
        for w in points.windows(2) {
            dec.read_buf().extend_from_slice(&stream[w[0]..w[1]]);
            drain(dec, &mut out);
        }
        out
    }

    /// A payload, or why its frame was skipped.
    type Payload = Result<Vec<u8>, FrameError>;

    /// Decodes `stream` cut at `cuts` with the `Decoder` trait, then
    /// `decode_eof`; skipped frames come out as their `Err`.
    fn feed_codec(
        codec: &mut LengthHeaderCodec,
        stream: &[u8],
        cuts: &[prop::sample::Index],
    ) -> Result<Vec<Payload>, ReadError<FrameError>> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        points.push(0);
        points.push(stream.len());
        points.sort_unstable();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for w in points.windows(2) {
            buf.extend_from_slice(&stream[w[0]..w[1]]);
            while let Some(item) = codec.decode(&mut buf)? {
                out.push(item.map(|f| f.payload.to_vec()));
            }
        }
        while let Some(item) = codec.decode_eof(&mut buf)? {
            out.push(item.map(|f| f.payload.to_vec()));
        }
        Ok(out)
    }

    fn drain(dec: &mut FrameDecoder, out: &mut Vec<Result<Vec<u8>, FrameError>>) {
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => out.push(Ok(f.payload.to_vec())),
                Ok(None) => break,
                Err(e) => out.push(Err(e)),
            }
        }
    }

    #[test]
    fn zero_length_frame_is_an_empty_payload() {
        let h = LengthHeader::parse(2, ">H").unwrap();
        let mut dec = FrameDecoder::new(h, 10);
        dec.push(&[0, 0, 0, 1, b'a', 0, 0]);
        assert_eq!(dec.next_frame().unwrap().unwrap().payload, Bytes::new());
        assert_eq!(
            dec.next_frame().unwrap().unwrap().payload,
            Bytes::from_static(b"a")
        );
        assert_eq!(dec.next_frame().unwrap().unwrap().payload, Bytes::new());
        assert_eq!(dec.next_frame(), Ok(None));
        assert_eq!(dec.finish(), None);
    }

    #[test]
    fn oversized_skip_spans_later_pushes() {
        let h = LengthHeader::parse(4, ">I").unwrap();
        let mut dec = FrameDecoder::new(h, 4);
        dec.push(&[0, 0, 0, 10, 1, 2]);
        assert_eq!(
            dec.next_frame(),
            Err(FrameError::Oversized {
                declared: 10,
                max: 4
            })
        );
        assert_eq!(dec.next_frame(), Ok(None));
        assert_eq!(
            dec.finish(),
            Some(Truncated {
                part: FramePart::SkippedPayload,
                expected: 10,
                got: 2
            })
        );
        dec.push(&[3, 4, 5, 6, 7]);
        assert_eq!(dec.buffered_len(), 0, "skipped bytes are not buffered");
        dec.push(&[8, 9, 10, 0, 0, 0, 2, b'o', b'k']);
        assert_eq!(
            dec.next_frame().unwrap().unwrap().payload,
            Bytes::from_static(b"ok")
        );
        assert_eq!(dec.next_frame(), Ok(None));
        assert_eq!(dec.finish(), None);
    }

    #[test]
    fn negative_length_poisons_the_stream() {
        let h = LengthHeader::parse(2, ">h").unwrap();
        let mut dec = FrameDecoder::new(h, 100);
        dec.push(&[0, 1, b'a', 0xff, 0xfe, 0, 1, b'b']);
        assert_eq!(
            dec.next_frame().unwrap().unwrap().payload,
            Bytes::from_static(b"a")
        );
        let e = dec.next_frame().unwrap_err();
        assert_eq!(e, FrameError::Length(LengthError::NegativeLength(-2)));
        assert!(e.is_fatal());
        assert!(!FrameError::Oversized {
            declared: 1,
            max: 0
        }
        .is_fatal());
        dec.push(&[0, 1, b'c']);
        assert_eq!(dec.next_frame(), Err(e));
        assert_eq!(dec.buffered_len(), 0);
        assert_eq!(dec.finish(), None);
    }
}
