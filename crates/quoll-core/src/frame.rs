//! Length-prefixed frames: the one splitter behind every byte stream quoll
//! cuts into frames (the links between workers, the external channel, the
//! connector protocol, `quoll receive --framing framed`, and the records of
//! the resilience files).
//!
//! # Layout
//!
//! ```text
//! +--------------+-------------------------------+----------------+
//! | u32 length n | u32 checksum (only if the     | body (n bytes) |
//! | (BE or LE)   | format has one; not counted)  |                |
//! +--------------+-------------------------------+----------------+
//! ```
//!
//! Each user fixes the byte order of the length, whether a checksum field
//! follows it, and the smallest and largest `n` it accepts
//! ([`LengthPrefixed`]); the protocols then parse the body ([`Protocol`]).
//! What goes in the checksum field is the file format's business (the
//! resilience files keep a CRC-32 there). `docs/formats.md` lists every
//! protocol's choices.
//!
//! # Pieces
//!
//! - [`LengthPrefixed`]: a [`tokio_util::codec::Decoder`] that cuts bodies
//!   off a buffer, and the matching writer ([`LengthPrefixed::begin`],
//!   [`LengthPrefixed::finish`]).
//! - [`FrameCodec`]: a [`LengthPrefixed`] and a protocol's body parser; the
//!   decoder that `tokio_util::codec::FramedRead` drives for async sockets.
//! - [`BlockingFramedRead`]: the same decoders on a blocking
//!   [`std::io::Read`] (the command-line tools and test peers).
//! - [`ReadError`]: what reading frames fails with (the stream, a stream
//!   cut inside a frame, or the protocol).
//!
//! # Invariants
//!
//! - A length outside the bounds is reported as soon as its bytes are in,
//!   before anything is reserved for the body, and the decoder then fails
//!   for good with the same error: a length-prefixed stream can't be
//!   re-synchronised.
//! - A frame leaves the buffer whole or not at all.
//! - A stream that ends inside a frame is [`ReadError::Truncated`], never a
//!   short frame.
//!
//! tokio-util's `LengthDelimitedCodec` is not used underneath: it checks a
//! length only against a maximum, reports it without its value, and keeps
//! part of its state (a consumed length field) where a caller can't see
//! it; the protocols here report a too-short or too-long length, with its
//! value, the moment it arrives.

use std::io::{self, Read};

use bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

/// Size of the length field.
pub const LENGTH_FIELD_LEN: usize = 4;
/// Size of the checksum field, in formats that have one.
pub const CHECKSUM_FIELD_LEN: usize = 4;

/// Byte order of a length field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ByteOrder {
    Little,
    Big,
}

impl ByteOrder {
    /// The byte order of the build target.
    pub const NATIVE: ByteOrder = if cfg!(target_endian = "big") {
        ByteOrder::Big
    } else {
        ByteOrder::Little
    };

    fn read_u32(self, b: [u8; 4]) -> u32 {
        match self {
            ByteOrder::Big => u32::from_be_bytes(b),
            ByteOrder::Little => u32::from_le_bytes(b),
        }
    }

    fn u32_bytes(self, v: u32) -> [u8; 4] {
        match self {
            ByteOrder::Big => v.to_be_bytes(),
            ByteOrder::Little => v.to_le_bytes(),
        }
    }
}

/// A frame's length is out of bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LengthError {
    /// The length is below the smallest the protocol allows.
    #[error("frame length {len} is below the minimum of {min}")]
    TooShort { len: u32, min: u32 },
    /// The length is above the largest the protocol allows (or, when
    /// writing, above what the length field holds).
    #[error("frame length {len} exceeds the maximum of {max} bytes")]
    TooLong { len: u64, max: u64 },
}

/// What reading frames from a byte stream fails with.
#[derive(Debug, thiserror::Error)]
pub enum ReadError<E> {
    /// The stream itself failed (or timed out).
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The stream ended inside a frame.
    #[error("the stream ended inside a frame ({buffered} bytes of it received)")]
    Truncated { buffered: usize },
    /// The bytes break the protocol.
    #[error(transparent)]
    Protocol(E),
}

/// Cuts length-prefixed frames off a buffer (see the module docs); as a
/// [`Decoder`] it yields what follows each length field (the checksum
/// field, if the format has one, then the body).
#[derive(Debug, Clone)]
pub struct LengthPrefixed {
    order: ByteOrder,
    checksum: bool,
    min_len: u32,
    max_len: u32,
    /// A bad length seen earlier: every later call fails with it.
    failed: Option<LengthError>,
}

impl LengthPrefixed {
    /// Frames whose length field (in `order`) is within `min_len..=max_len`.
    pub const fn new(order: ByteOrder, min_len: u32, max_len: u32) -> Self {
        LengthPrefixed {
            order,
            checksum: false,
            min_len,
            max_len,
            failed: None,
        }
    }

    /// The same with a checksum field after the length field, which the
    /// length does not count.
    pub const fn with_checksum(mut self) -> Self {
        self.checksum = true;
        self
    }

    /// The largest length accepted.
    pub fn max_len(&self) -> u32 {
        self.max_len
    }

    /// Changes the largest length accepted from the next frame on.
    pub fn set_max_len(&mut self, max_len: u32) {
        self.max_len = max_len;
    }

    /// Bytes before the body: the length, and the checksum if any.
    pub fn header_len(&self) -> usize {
        LENGTH_FIELD_LEN + if self.checksum { CHECKSUM_FIELD_LEN } else { 0 }
    }

    /// The size of the frame at the start of `bytes`, header included,
    /// with its length checked; `None` until the length field is all there.
    pub fn frame_size(&self, bytes: &[u8]) -> Result<Option<usize>, LengthError> {
        let Some(field) = bytes.first_chunk::<LENGTH_FIELD_LEN>() else {
            return Ok(None);
        };
        let len = self.order.read_u32(*field);
        if len < self.min_len {
            return Err(LengthError::TooShort {
                len,
                min: self.min_len,
            });
        }
        if len > self.max_len {
            return Err(LengthError::TooLong {
                len: len.into(),
                max: self.max_len.into(),
            });
        }
        Ok(Some(self.header_len() + len as usize))
    }

    /// Takes the next whole frame off `src` and returns what follows its
    /// length field (the checksum field, if any, then the body); `None`
    /// until it is all there (room for it is then reserved).
    pub fn decode_frame(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, LengthError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let size = match self.frame_size(src) {
            Ok(Some(size)) => size,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.failed = Some(e);
                return Err(e);
            }
        };
        if src.len() < size {
            src.reserve(size - src.len());
            return Ok(None);
        }
        let mut frame = src.split_to(size);
        frame.advance(LENGTH_FIELD_LEN);
        Ok(Some(frame))
    }

    /// Starts a frame at the end of `out` (room for its header); returns
    /// where it starts, for [`finish`](Self::finish).
    pub fn begin(&self, out: &mut Vec<u8>) -> usize {
        let start = out.len();
        out.resize(start + self.header_len(), 0);
        start
    }

    /// Fills in the length of the frame begun at `start`, whose body is the
    /// rest of `out` (the checksum field, if any, is the caller's to fill).
    /// A body too long for the length field is removed (the frame with it)
    /// and is an error; the protocol's own maximum is the protocol's to
    /// check.
    pub fn finish(&self, out: &mut Vec<u8>, start: usize) -> Result<(), LengthError> {
        let body_at = start + self.header_len();
        let len = out.len() - body_at;
        let Ok(len32) = u32::try_from(len) else {
            out.truncate(start);
            return Err(LengthError::TooLong {
                len: len as u64,
                max: u32::MAX.into(),
            });
        };
        out[start..start + LENGTH_FIELD_LEN].copy_from_slice(&self.order.u32_bytes(len32));
        Ok(())
    }
}

/// At the end of a stream: the last result of a decoder, unless bytes of
/// an unfinished frame are left.
fn at_end<T, E>(
    decoded: Result<Option<T>, ReadError<E>>,
    src: &BytesMut,
) -> Result<Option<T>, ReadError<E>> {
    match decoded? {
        None if !src.is_empty() => Err(ReadError::Truncated {
            buffered: src.len(),
        }),
        other => Ok(other),
    }
}

impl Decoder for LengthPrefixed {
    type Item = BytesMut;
    type Error = ReadError<LengthError>;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, Self::Error> {
        self.decode_frame(src).map_err(ReadError::Protocol)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, Self::Error> {
        let decoded = self.decode(src);
        at_end(decoded, src)
    }
}

/// A protocol carried in length-prefixed frames: how it reads a body.
pub trait Protocol {
    /// What a frame means.
    type Frame;
    /// What breaks the protocol; a bad length is one of them.
    type Error: From<LengthError>;

    /// Reads one frame's body (the bytes after the length field).
    fn parse(&mut self, body: BytesMut) -> Result<Self::Frame, Self::Error>;
}

/// The decoder of one protocol: frames cut by a [`LengthPrefixed`], bodies
/// read by the protocol. A body that does not parse is consumed and
/// reported; the next call goes on with the next frame. (A protocol's
/// format has no checksum field.)
#[derive(Debug, Clone)]
pub struct FrameCodec<P> {
    length: LengthPrefixed,
    protocol: P,
}

impl<P: Protocol> FrameCodec<P> {
    pub const fn new(length: LengthPrefixed, protocol: P) -> Self {
        FrameCodec { length, protocol }
    }

    /// How frames are cut.
    pub fn length(&self) -> &LengthPrefixed {
        &self.length
    }

    /// The next frame in `src`, `None` until one is complete.
    pub fn decode_frame(&mut self, src: &mut BytesMut) -> Result<Option<P::Frame>, P::Error> {
        match self.length.decode_frame(src)? {
            Some(body) => self.protocol.parse(body).map(Some),
            None => Ok(None),
        }
    }
}

impl<P: Protocol> Decoder for FrameCodec<P> {
    type Item = P::Frame;
    type Error = ReadError<P::Error>;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<P::Frame>, Self::Error> {
        self.decode_frame(src).map_err(ReadError::Protocol)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<P::Frame>, Self::Error> {
        let decoded = self.decode(src);
        at_end(decoded, src)
    }
}

/// Bytes asked of the reader at a time.
const READ_CHUNK: usize = 64 << 10;

/// A [`Decoder`] on a blocking reader: `tokio_util::codec::FramedRead` for
/// `std::io`. Bytes read and not yet decoded stay buffered, so a read that
/// times out can be retried without losing part of a frame.
#[derive(Debug)]
pub struct BlockingFramedRead<R, D> {
    inner: R,
    decoder: D,
    buf: BytesMut,
}

impl<R: Read, D: Decoder> BlockingFramedRead<R, D> {
    pub fn new(inner: R, decoder: D) -> Self {
        BlockingFramedRead {
            inner,
            decoder,
            buf: BytesMut::new(),
        }
    }

    /// The reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The reader, to write to it or change its settings.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Bytes read and not yet decoded.
    pub fn read_buffer(&self) -> &BytesMut {
        &self.buf
    }

    /// The next frame already buffered, without reading.
    pub fn decode_buffered(&mut self) -> Result<Option<D::Item>, D::Error> {
        self.decoder.decode(&mut self.buf)
    }

    /// One read from the reader into the buffer; the byte count, 0 at the
    /// end of the stream.
    pub fn fill(&mut self) -> io::Result<usize> {
        let at = self.buf.len();
        self.buf.resize(at + READ_CHUNK, 0);
        let result = loop {
            match self.inner.read(&mut self.buf[at..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        self.buf.truncate(at + result.as_ref().map_or(0, |n| *n));
        result
    }

    /// The next frame, reading as needed; `None` at a clean end of stream.
    pub fn next_frame(&mut self) -> Result<Option<D::Item>, D::Error> {
        loop {
            if let Some(frame) = self.decode_buffered()? {
                return Ok(Some(frame));
            }
            if self.fill()? == 0 {
                return self.decoder.decode_eof(&mut self.buf);
            }
        }
    }
}

impl<R: Read, D: Decoder> Iterator for BlockingFramedRead<R, D> {
    type Item = Result<D::Item, D::Error>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_frame().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BE: LengthPrefixed = LengthPrefixed::new(ByteOrder::Big, 0, 1 << 20);

    fn frames_of(codec: &LengthPrefixed, bodies: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for b in bodies {
            let start = codec.begin(&mut out);
            out.extend_from_slice(b);
            codec.finish(&mut out, start).unwrap();
        }
        out
    }

    /// Feeds `bytes` cut at `cuts`, decoding after every piece.
    fn decode_split(codec: &mut LengthPrefixed, bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.push(0);
        points.push(bytes.len());
        points.sort_unstable();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for w in points.windows(2) {
            buf.extend_from_slice(&bytes[w[0]..w[1]]);
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                out.push(f.to_vec());
            }
        }
        assert!(codec.decode_eof(&mut buf).unwrap().is_none());
        out
    }

    #[test]
    fn layouts() {
        assert_eq!(
            frames_of(&BE, &[b"ab".to_vec()]),
            vec![0, 0, 0, 2, b'a', b'b']
        );
        let le = LengthPrefixed::new(ByteOrder::Little, 1, 100);
        assert_eq!(
            frames_of(&le, &[b"ab".to_vec()]),
            vec![2, 0, 0, 0, b'a', b'b']
        );
        // The checksum field is left to the caller and not counted.
        let checked = le.clone().with_checksum();
        assert_eq!(checked.header_len(), 8);
        let mut out = Vec::new();
        let start = checked.begin(&mut out);
        out.extend_from_slice(b"ab");
        checked.finish(&mut out, start).unwrap();
        assert_eq!(out, vec![2, 0, 0, 0, 0, 0, 0, 0, b'a', b'b']);
        let mut buf = BytesMut::from(&out[..]);
        let mut c = checked;
        assert_eq!(
            c.decode_frame(&mut buf).unwrap().unwrap(),
            &[0, 0, 0, 0, b'a', b'b'][..]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn bad_lengths_fail_at_once_and_for_good() {
        let mut c = LengthPrefixed::new(ByteOrder::Big, 2, 10);
        let mut buf = BytesMut::from(&[0, 0, 0, 1][..]);
        let e = LengthError::TooShort { len: 1, min: 2 };
        assert_eq!(c.decode_frame(&mut buf), Err(e));
        buf.extend_from_slice(&frames_of(&BE, &[b"fine".to_vec()]));
        assert_eq!(c.decode_frame(&mut buf), Err(e));

        let mut c = LengthPrefixed::new(ByteOrder::Big, 2, 10);
        let mut buf = BytesMut::from(&[0, 0, 0, 11][..]);
        assert_eq!(
            c.decode_frame(&mut buf),
            Err(LengthError::TooLong { len: 11, max: 10 })
        );
        // Exactly the maximum waits for its bytes, with room reserved.
        let mut c = LengthPrefixed::new(ByteOrder::Big, 2, 10);
        let mut buf = BytesMut::from(&[0, 0, 0, 10][..]);
        assert_eq!(c.decode_frame(&mut buf), Ok(None));
        assert!(buf.capacity() >= 14);
        // A lowered maximum applies from the next frame on.
        c.set_max_len(3);
        assert_eq!(c.max_len(), 3);
        assert_eq!(
            c.decode_frame(&mut buf),
            Err(LengthError::TooLong { len: 10, max: 3 })
        );
    }

    #[test]
    fn finish_refuses_what_the_field_cannot_hold() {
        let mut out = vec![9];
        let start = BE.begin(&mut out);
        assert_eq!(out, vec![9, 0, 0, 0, 0]);
        BE.finish(&mut out, start).unwrap();
        assert_eq!(out, vec![9, 0, 0, 0, 0]);
    }

    #[test]
    fn end_of_stream_inside_a_frame_is_truncated() {
        let bytes = frames_of(&BE, &[b"abc".to_vec()]);
        let mut c = BE.clone();
        let mut buf = BytesMut::from(&bytes[..5]);
        assert!(matches!(
            c.decode_eof(&mut buf),
            Err(ReadError::Truncated { buffered: 5 })
        ));
        let mut r = BlockingFramedRead::new(&bytes[..2], BE.clone());
        assert!(matches!(
            r.next_frame(),
            Err(ReadError::Truncated { buffered: 2 })
        ));
        let mut r = BlockingFramedRead::new(&bytes[..], BE.clone());
        assert_eq!(r.next_frame().unwrap().unwrap(), &b"abc"[..]);
        assert!(r.next_frame().unwrap().is_none());
    }

    /// A reader that hands out at most `step` bytes per read, and
    /// sometimes fails with `Interrupted` first.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
        interrupt: bool,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.interrupt = !self.interrupt;
            if self.interrupt {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    proptest! {
        #[test]
        fn any_split_decodes_the_same_frames(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 0..20),
            cuts in proptest::collection::vec(any::<usize>(), 0..20),
            checksum in any::<bool>(),
            little in any::<bool>(),
            step in 1usize..50,
        ) {
            let order = if little { ByteOrder::Little } else { ByteOrder::Big };
            let mut c = LengthPrefixed::new(order, 0, 1000);
            if checksum {
                c = c.with_checksum();
            }
            let bytes = frames_of(&c, &bodies);
            let skip = c.header_len() - LENGTH_FIELD_LEN;
            let split: Vec<Vec<u8>> = decode_split(&mut c.clone(), &bytes, &cuts)
                .into_iter()
                .map(|f| f[skip..].to_vec())
                .collect();
            prop_assert_eq!(&split, &bodies);
            let r = BlockingFramedRead::new(Trickle { data: &bytes, step, interrupt: false }, c.clone());
            let got: Vec<Vec<u8>> = r.map(|f| f.unwrap()[skip..].to_vec()).collect();
            prop_assert_eq!(&got, &bodies);
        }

        #[test]
        fn garbage_never_panics(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            checksum in any::<bool>(),
        ) {
            let mut c = LengthPrefixed::new(ByteOrder::Big, 1, 64);
            if checksum {
                c = c.with_checksum();
            }
            let mut buf = BytesMut::from(&data[..]);
            for _ in 0..400 {
                match c.decode_frame(&mut buf) {
                    Ok(None) => break,
                    Ok(Some(_)) => {}
                    Err(_) => break,
                }
            }
            let _ = c.decode_eof(&mut buf);
        }
    }
}
