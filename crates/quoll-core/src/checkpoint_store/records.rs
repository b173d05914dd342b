//! The record framing of the resilience files, and the reader that checks
//! it.
//!
//! ```text
//! +-----------------+------------------------+-------------------+
//! | u32 LE length n | u32 LE crc32 (payload) | payload (n bytes) |
//! +-----------------+------------------------+-------------------+
//! ```
//!
//! Records are cut by [`crate::frame::LengthPrefixed`] (little-endian
//! length, a checksum field, `n >= 1`), the decoder that also cuts the
//! protocols' frames; this module fills and checks the CRC-32, decodes the
//! postcard payloads, and says which record is bad and where.
//!
//! Invariants: a record handed out is whole and matches its checksum. A
//! record is never longer than the file holds after its header: before each
//! record the reader lowers the decoder's limit to those bytes, so a cut-off
//! (or corrupt) length is known before anything is read or reserved for it.
//! Problems name the record (numbered from 1, the header) and its byte
//! offset.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use bytes::{Buf, BytesMut};
use serde::{Deserialize, Serialize};

use super::{corrupt, io_err, truncated, StoreError, FORMAT_VERSION};
use crate::frame::{ByteOrder, LengthError, LengthPrefixed};

/// How records are cut.
const RECORD_LENGTH: LengthPrefixed =
    LengthPrefixed::new(ByteOrder::Little, 1, u32::MAX).with_checksum();
/// Bytes before a record's payload: its length and its checksum.
const RECORD_HEADER: usize = 8;
/// Bytes read from a file at a time.
const READ_CHUNK: usize = 256 << 10;

/// A record that can append its own postcard payload to a buffer.
pub(super) trait Payload: Serialize {
    fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), String> {
        *out = postcard::to_extend(self, std::mem::take(out))
            .map_err(|e| format!("can't encode a record: {e}"))?;
        Ok(())
    }
}

/// Appends one framed record (length, crc32, postcard payload) to `out`.
pub(super) fn frame_into<T: Payload>(out: &mut Vec<u8>, record: &T) -> Result<(), String> {
    let start = RECORD_LENGTH.begin(out);
    record.encode_into(out)?;
    RECORD_LENGTH.finish(out, start).map_err(|e| match e {
        LengthError::TooLong { len, .. } => {
            format!("a record of {len} bytes is larger than a record can hold (4 GiB)")
        }
        other => other.to_string(),
    })?;
    let crc = crc32fast::hash(&out[start + RECORD_HEADER..]);
    out[start + 4..start + RECORD_HEADER].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// A record that failed framing.
#[derive(Debug, Clone, Copy)]
pub(super) struct BadRecord {
    /// Record number, from 1.
    pub record: u64,
    /// Byte offset where the record starts.
    pub offset: u64,
    /// Bytes from `offset` to the end of the file.
    pub rest: u64,
    pub problem: BadKind,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum BadKind {
    /// Fewer than 8 bytes left for the length and checksum.
    CutHeader,
    /// The payload runs past the end of the file.
    CutPayload { declared: u32 },
    /// A zero length (no record is empty).
    Empty,
    /// The payload does not match its checksum.
    Checksum,
}

impl BadRecord {
    pub fn into_error(self, path: &Path) -> StoreError {
        let BadRecord {
            record,
            offset,
            rest,
            problem,
        } = self;
        match problem {
            BadKind::CutHeader => truncated(
                path,
                format!("ends inside record {record} (at byte {offset}, {rest} bytes of its 8-byte length and checksum)"),
            ),
            BadKind::CutPayload { declared } => truncated(
                path,
                format!(
                    "ends inside record {record} (at byte {offset} it declares {declared} bytes, only {} follow)",
                    rest - RECORD_HEADER as u64
                ),
            ),
            BadKind::Empty => corrupt(path, format!("record {record} (at byte {offset}) has length 0")),
            BadKind::Checksum => {
                corrupt(path, format!("record {record} (at byte {offset}) fails its checksum"))
            }
        }
    }
}

/// What [`RecordReader::next`] found; a record's payload is left in the
/// reader ([`RecordReader::payload`]).
pub(super) enum Next {
    Record { record: u64, offset: u64 },
    End,
    Bad(BadRecord),
}

/// A record's number, byte offset and payload.
pub(super) type Located<'a> = (u64, u64, &'a [u8]);

/// Reads the records of a file, one at a time (memory: the largest record
/// and a read buffer).
pub(super) struct RecordReader {
    pub path: PathBuf,
    file: File,
    /// Length of the file.
    pub len: u64,
    /// Offset of the next record.
    pub offset: u64,
    /// Records read so far.
    records: u64,
    /// Bytes of the file read so far.
    read: u64,
    /// The bytes read and not yet cut: the file from `offset` on.
    buf: BytesMut,
    codec: LengthPrefixed,
    /// The payload of the last record read.
    payload: BytesMut,
}

impl RecordReader {
    /// `None` if the file does not exist.
    pub fn open(path: &Path) -> Result<Option<Self>, StoreError> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(path, "open the resilience file", e)),
        };
        let len = file
            .metadata()
            .map_err(|e| io_err(path, "read the metadata of", e))?
            .len();
        Ok(Some(RecordReader {
            path: path.to_path_buf(),
            file,
            len,
            offset: 0,
            records: 0,
            read: 0,
            buf: BytesMut::new(),
            codec: RECORD_LENGTH,
            payload: BytesMut::new(),
        }))
    }

    pub fn at_end(&self) -> bool {
        self.offset == self.len
    }

    /// The payload of the record [`next`](Self::next) last returned.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    pub fn next(&mut self) -> Result<Next, StoreError> {
        let rest = self.len - self.offset;
        if rest == 0 {
            return Ok(Next::End);
        }
        let record = self.records + 1;
        let offset = self.offset;
        let bad = |problem| {
            Ok(Next::Bad(BadRecord {
                record,
                offset,
                rest,
                problem,
            }))
        };
        if rest < RECORD_HEADER as u64 {
            return bad(BadKind::CutHeader);
        }
        let room = rest - RECORD_HEADER as u64;
        self.codec
            .set_max_len(u32::try_from(room).unwrap_or(u32::MAX));
        let mut frame = loop {
            match self.codec.decode_frame(&mut self.buf) {
                Ok(Some(frame)) => break frame,
                Ok(None) => self.fill()?,
                Err(LengthError::TooShort { .. }) => return bad(BadKind::Empty),
                Err(LengthError::TooLong { len, .. }) => {
                    return bad(BadKind::CutPayload {
                        declared: len as u32,
                    })
                }
            }
        };
        let crc = frame.get_u32_le();
        if crc32fast::hash(&frame) != crc {
            return bad(BadKind::Checksum);
        }
        self.offset += (RECORD_HEADER + frame.len()) as u64;
        self.records = record;
        self.payload = frame;
        Ok(Next::Record { record, offset })
    }

    /// Reads the next chunk of the file into the buffer. Only called while
    /// a record the file has room for is incomplete, so bytes are left.
    fn fill(&mut self) -> Result<(), StoreError> {
        let want = (self.len - self.read).min(READ_CHUNK as u64) as usize;
        if want == 0 {
            let e = io::Error::from(io::ErrorKind::UnexpectedEof);
            return Err(io_err(&self.path, "read", e));
        }
        let at = self.buf.len();
        self.buf.resize(at + want, 0);
        self.file
            .read_exact(&mut self.buf[at..])
            .map_err(|e| io_err(&self.path, "read", e))?;
        self.read += want as u64;
        Ok(())
    }

    /// The next record, any framing problem being an error; `None` at the end.
    pub fn next_good(&mut self) -> Result<Option<Located<'_>>, StoreError> {
        match self.next()? {
            Next::Record { record, offset } => Ok(Some((record, offset, &self.payload))),
            Next::End => Ok(None),
            Next::Bad(bad) => Err(bad.into_error(&self.path)),
        }
    }

    /// Are all bytes from `offset` to the end zero? (The reader can't be
    /// used for records after this.)
    pub fn rest_is_zero(&mut self, offset: u64) -> Result<bool, StoreError> {
        let err = |e| io_err(&self.path, "read", e);
        self.file.seek(SeekFrom::Start(offset)).map_err(err)?;
        let mut chunk = [0u8; 4096];
        let mut left = self.len - offset;
        while left > 0 {
            let n = chunk.len().min(left as usize);
            self.file
                .read_exact(&mut chunk[..n])
                .map_err(|e| io_err(&self.path, "read", e))?;
            if chunk[..n].iter().any(|&b| b != 0) {
                return Ok(false);
            }
            left -= n as u64;
        }
        Ok(true)
    }
}

/// Decodes a whole payload (trailing bytes are an error).
pub(super) fn decode<'a, T: Deserialize<'a>>(
    path: &Path,
    record: u64,
    offset: u64,
    payload: &'a [u8],
) -> Result<T, StoreError> {
    match postcard::take_from_bytes(payload) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(corrupt(
            path,
            format!(
                "record {record} (at byte {offset}) has {} stray bytes after its content",
                rest.len()
            ),
        )),
        Err(e) => Err(corrupt(
            path,
            format!("record {record} (at byte {offset}) can't be decoded: {e}"),
        )),
    }
}

/// Checks the version of a first record before decoding it in full. With
/// `tagged`, the payload is an enum whose variant 0 is the header; otherwise
/// a struct. Either way the version is the header's first field.
pub(super) fn check_version(path: &Path, payload: &[u8], tagged: bool) -> Result<(), StoreError> {
    let version = if tagged {
        match postcard::take_from_bytes::<(u32, u32)>(payload) {
            Ok(((0, version), _)) => Some(version),
            _ => None,
        }
    } else {
        postcard::take_from_bytes::<u32>(payload)
            .ok()
            .map(|(version, _)| version)
    };
    match version {
        None => Err(corrupt(path, "record 1 is not a header")),
        Some(FORMAT_VERSION) => Ok(()),
        Some(found) => Err(StoreError::UnsupportedVersion {
            path: path.to_path_buf(),
            found,
            supported: FORMAT_VERSION,
        }),
    }
}
