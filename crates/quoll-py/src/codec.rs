//! The one codec of a worker: how Python objects become bytes that cross to
//! another worker or go to disk, and back.
//!
//! Selection: if the app module has both `serialize` and
//! `deserialize`, every object goes through them and nothing else. Otherwise
//! plain values use a fast internal encoding and everything else is pickled
//! with the highest protocol.
//!
//! Blob layout: one codec tag byte, then the body.
//!
//! | tag | body |
//! |-----|------|
//! | `0x51` (`Q`) | fast-encoded plain value (below) |
//! | `0x50` (`P`) | `pickle.dumps(obj, HIGHEST_PROTOCOL)` |
//! | `0x55` (`U`) | the bytes the app's `serialize(obj)` returned |
//!
//! Fast encoding, recursively: `n` None, `t`/`f` bool, `i` + i64 LE (ints
//! outside i64 are not plain), `d` + f64 bits LE (NaN payloads and -0.0
//! survive), `s` + u32 LE length + UTF-8, `b` + u32 LE length + bytes,
//! `(` tuple / `[` list + u32 LE count + items, `{` dict + u32 LE count +
//! key, value pairs in insertion order. Only exact built-in types qualify
//! (`type(v) is str`, never a subclass) and containers only if every item
//! does, up to [`MAX_DEPTH`] levels; anything else makes the whole value go
//! to pickle. Invariant: `decode(encode(v)) == v` and the types are identical
//! all the way down. The decoder refuses, with an error and never a crash,
//! any body the encoder can't produce: truncated, trailing bytes, unknown
//! tags, invalid UTF-8, counts larger than the bytes left, nesting deeper
//! than [`MAX_DEPTH`].
//!
//! Speed (the codec runs once per item that crosses workers, and per state
//! entry in checkpoints; see docs/performance.md for the figures): scalars
//! are encoded and decoded inline and only containers recurse; container
//! items are read as borrowed references; tuples and lists are built in
//! place; an ASCII string is decoded by one copy into a new compact string
//! (everything else through Python's UTF-8 decoder, which validates it
//! once); errors are plain values until they are reported. The few
//! `unsafe` blocks each say what they rely on.

use crate::user_errors::format_traceback;
use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

const TAG_FAST: u8 = b'Q';
const TAG_PICKLE: u8 = b'P';
const TAG_USER: u8 = b'U';
/// Nesting deeper than this goes to pickle.
pub const MAX_DEPTH: usize = 32;

/// Why an object could not be encoded or decoded; the text names the type
/// and the reason, for the user-error report.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("pickle can't serialize a {type_name}: {reason} (define serialize/deserialize in the app module to handle it)")]
    Pickle { type_name: String, reason: String },
    #[error("the app's serialize() raised on a {type_name}: {reason}")]
    UserSerialize {
        type_name: String,
        reason: String,
        traceback: Option<String>,
    },
    #[error("the app's deserialize() raised: {reason}")]
    UserDeserialize {
        reason: String,
        traceback: Option<String>,
    },
    #[error("the app's serialize() returned {returned} for a {type_name}; it must return bytes")]
    NotBytes { type_name: String, returned: String },
    #[error("{0}")]
    Decode(String),
}

impl CodecError {
    /// The Python traceback, where the app's own function raised.
    pub fn traceback(&self) -> Option<&str> {
        match self {
            CodecError::UserSerialize { traceback, .. }
            | CodecError::UserDeserialize { traceback, .. } => traceback.as_deref(),
            _ => None,
        }
    }
}

/// A worker's codec.
pub enum Codec {
    Default {
        dumps: Py<PyAny>,
        loads: Py<PyAny>,
        protocol: Py<PyAny>,
    },
    User {
        serialize: Py<PyAny>,
        deserialize: Py<PyAny>,
    },
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "<unknown type>".into())
}

impl Codec {
    /// The default codec (fast encoding, else pickle).
    pub fn default_codec(py: Python<'_>) -> PyResult<Codec> {
        let pickle = py.import("pickle")?;
        Ok(Codec::Default {
            dumps: pickle.getattr("dumps")?.unbind(),
            loads: pickle.getattr("loads")?.unbind(),
            protocol: pickle.getattr("HIGHEST_PROTOCOL")?.unbind(),
        })
    }

    /// The app's own pair.
    pub fn user(serialize: Py<PyAny>, deserialize: Py<PyAny>) -> Codec {
        Codec::User {
            serialize,
            deserialize,
        }
    }

    pub fn is_user(&self) -> bool {
        matches!(self, Codec::User { .. })
    }

    /// Appends the blob for `obj` to `out`. On error `out` is unchanged.
    pub fn encode(&self, obj: &Bound<'_, PyAny>, out: &mut Vec<u8>) -> Result<(), CodecError> {
        // The fast path inline; pickle and the app's pair out of line, so
        // that this stays small.
        if let Codec::Default { .. } = self {
            let start = out.len();
            out.push(TAG_FAST);
            if fast_encode(obj.as_borrowed(), out, 0) {
                return Ok(());
            }
            out.truncate(start);
        }
        self.encode_other(obj, out)
    }

    /// [`Codec::encode`] of what the fast encoding does not take.
    #[inline(never)]
    fn encode_other(&self, obj: &Bound<'_, PyAny>, out: &mut Vec<u8>) -> Result<(), CodecError> {
        let py = obj.py();
        match self {
            Codec::Default {
                dumps, protocol, ..
            } => {
                let pickled = dumps
                    .bind(py)
                    .call1((obj, protocol.bind(py)))
                    .map_err(|e| CodecError::Pickle {
                        type_name: type_name(obj),
                        reason: e.to_string(),
                    })?;
                let bytes = pickled.cast::<PyBytes>().map_err(|_| CodecError::Pickle {
                    type_name: type_name(obj),
                    reason: "pickle.dumps did not return bytes".into(),
                })?;
                out.push(TAG_PICKLE);
                out.extend_from_slice(bytes.as_bytes());
                Ok(())
            }
            Codec::User { serialize, .. } => {
                let result =
                    serialize
                        .bind(py)
                        .call1((obj,))
                        .map_err(|e| CodecError::UserSerialize {
                            type_name: type_name(obj),
                            reason: e.to_string(),
                            traceback: format_traceback(py, &e),
                        })?;
                if let Ok(b) = result.cast::<PyBytes>() {
                    out.push(TAG_USER);
                    out.extend_from_slice(b.as_bytes());
                } else if let Ok(b) = result.cast::<pyo3::types::PyByteArray>() {
                    out.push(TAG_USER);
                    out.extend_from_slice(&b.to_vec());
                } else {
                    return Err(CodecError::NotBytes {
                        type_name: type_name(obj),
                        returned: type_name(&result),
                    });
                }
                Ok(())
            }
        }
    }

    /// Decodes one blob made by [`Codec::encode`].
    pub fn decode<'py>(
        &self,
        py: Python<'py>,
        blob: &[u8],
    ) -> Result<Bound<'py, PyAny>, CodecError> {
        // The fast path inline, the rest out of line (as in `encode`).
        if let ([TAG_FAST, body @ ..], Codec::Default { .. }) = (blob, self) {
            let mut at = body;
            return match fast_decode(py, &mut at, 0) {
                Ok(v) if at.is_empty() => Ok(v),
                Ok(_) => Err(FastDecodeError::from(DecodeProblem::Trailing(at.len())).into()),
                Err(e) => Err(e.into()),
            };
        }
        self.decode_other(py, blob)
    }

    /// [`Codec::decode`] of blobs that are not fast-encoded.
    #[inline(never)]
    fn decode_other<'py>(
        &self,
        py: Python<'py>,
        blob: &[u8],
    ) -> Result<Bound<'py, PyAny>, CodecError> {
        let (&tag, body) = blob
            .split_first()
            .ok_or_else(|| CodecError::Decode("empty blob".into()))?;
        match (tag, self) {
            (TAG_PICKLE, Codec::Default { loads, .. }) => loads
                .bind(py)
                .call1((PyBytes::new(py, body),))
                .map_err(|e| CodecError::Decode(format!("pickle.loads failed: {e}"))),
            (TAG_USER, Codec::User { deserialize, .. }) => deserialize
                .bind(py)
                .call1((PyBytes::new(py, body),))
                .map_err(|e| CodecError::UserDeserialize { reason: e.to_string(), traceback: format_traceback(py, &e) }),
            (tag, codec) => Err(CodecError::Decode(format!(
                "blob tag {tag:#04x} does not belong to this worker's codec ({}): were the workers started with different apps?",
                if codec.is_user() { "the app's serialize/deserialize" } else { "the default codec" }
            ))),
        }
    }
}

/// Appends a tag and a u32 LE length or count; false if `n` does not fit.
/// Each `put_*` appends one fixed-size array (one capacity check, an
/// inlined copy) and at most one slice.
fn put_header(out: &mut Vec<u8>, tag: u8, n: usize) -> bool {
    let Ok(n) = u32::try_from(n) else {
        return false;
    };
    let [a, b, c, d] = n.to_le_bytes();
    out.extend_from_slice(&[tag, a, b, c, d]);
    true
}

/// Appends a tag, a u32 LE length and `bytes`; false if the length does not fit.
fn put_sized(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) -> bool {
    if !put_header(out, tag, bytes.len()) {
        return false;
    }
    out.extend_from_slice(bytes);
    true
}

/// Appends a tag and an 8-byte LE scalar.
fn put_scalar(out: &mut Vec<u8>, tag: u8, bits: [u8; 8]) {
    let mut buf = [tag; 9];
    buf[1..].copy_from_slice(&bits);
    out.extend_from_slice(&buf);
}

/// Fast-encodes `obj` if it is a plain value; false (with garbage appended,
/// which the caller truncates) if it is not. `depth` is `obj`'s nesting
/// level (0 at the top).
///
/// Scalars are handled inline (a container's items are mostly scalars, so
/// they cost no call); containers go to [`encode_container`]. Items are
/// visited as borrowed references (no reference count traffic): nothing
/// here runs Python code, so no container can change while it is read.
#[inline(always)]
fn fast_encode(obj: Borrowed<'_, '_, PyAny>, out: &mut Vec<u8>, depth: usize) -> bool {
    // The most frequent types first; each test is one type-pointer compare.
    if let Ok(s) = obj.cast_exact::<PyString>() {
        // A str with lone surrogates has no UTF-8 form: pickle handles it.
        return match s.to_str() {
            Ok(s) => put_sized(out, b's', s.as_bytes()),
            Err(_) => false,
        };
    }
    if obj.is_exact_instance_of::<PyInt>() {
        return match int_to_i64(obj) {
            Some(v) => {
                put_scalar(out, b'i', v.to_le_bytes());
                true
            }
            None => false,
        };
    }
    if let Ok(f) = obj.cast_exact::<PyFloat>() {
        put_scalar(out, b'd', f.value().to_bits().to_le_bytes());
        return true;
    }
    if obj.is_none() {
        out.push(b'n');
        return true;
    }
    if let Ok(b) = obj.cast_exact::<PyBool>() {
        out.push(if b.is_true() { b't' } else { b'f' });
        return true;
    }
    if let Ok(b) = obj.cast_exact::<PyBytes>() {
        return put_sized(out, b'b', b.as_bytes());
    }
    encode_container(obj, out, depth)
}

/// [`fast_encode`] for tuples, lists and dicts (anything else is not
/// plain). A container at level `depth` is plain only if `depth` is at
/// most [`MAX_DEPTH`], and, if it has items, `depth + 1` too.
#[inline(never)]
fn encode_container(obj: Borrowed<'_, '_, PyAny>, out: &mut Vec<u8>, depth: usize) -> bool {
    let deepest = depth >= MAX_DEPTH;
    if depth > MAX_DEPTH {
        return false;
    }
    if let Ok(t) = obj.cast_exact::<PyTuple>() {
        return put_header(out, b'(', t.len())
            && (t.is_empty() || !deepest)
            && t.iter_borrowed()
                .all(|item| fast_encode(item, out, depth + 1));
    }
    if let Ok(l) = obj.cast_exact::<PyList>() {
        // Items are counted first; the list can't change size under us (see above).
        let n = l.len();
        return put_header(out, b'[', n)
            && (n == 0 || !deepest)
            && (0..n).all(|i| match l.get_item(i) {
                Ok(item) => fast_encode(item.as_borrowed(), out, depth + 1),
                Err(_) => false,
            });
    }
    if let Ok(d) = obj.cast_exact::<PyDict>() {
        return put_header(out, b'{', d.len())
            && (d.is_empty() || !deepest)
            && d.iter().all(|(k, v)| {
                fast_encode(k.as_borrowed(), out, depth + 1)
                    && fast_encode(v.as_borrowed(), out, depth + 1)
            });
    }
    false
}

/// The value of an exact `int`, if it fits in an i64.
fn int_to_i64(obj: Borrowed<'_, '_, PyAny>) -> Option<i64> {
    let mut overflow: std::ffi::c_int = 0;
    // SAFETY: `obj` is a live `int` (checked by the caller) and the GIL is
    // held; PyLong_AsLongLongAndOverflow reports overflow in the flag, not
    // by raising, and can't fail otherwise on an exact int.
    let v = unsafe { pyo3::ffi::PyLong_AsLongLongAndOverflow(obj.as_ptr(), &mut overflow) };
    (overflow == 0).then_some(v)
}

/// Why a fast-encoded body can't be decoded: a [`DecodeProblem`], boxed
/// so that the decoder's results stay two words wide (returned in
/// registers) on its success path; made only on the error path.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct FastDecodeError(Box<DecodeProblem>);

/// What is wrong with a fast-encoded body.
#[derive(Debug, thiserror::Error)]
pub enum DecodeProblem {
    #[error("truncated: wanted {wanted} bytes, {left} left")]
    Truncated { wanted: usize, left: usize },
    #[error("{what} of {count} items in {left} bytes")]
    TooManyItems {
        what: &'static str,
        count: usize,
        left: usize,
    },
    #[error("nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("unknown value tag {0:#04x}")]
    UnknownTag(u8),
    #[error("{0} trailing bytes")]
    Trailing(usize),
    #[error("{0}")]
    Python(String),
}

impl From<DecodeProblem> for FastDecodeError {
    #[cold]
    fn from(p: DecodeProblem) -> Self {
        FastDecodeError(Box::new(p))
    }
}

impl From<FastDecodeError> for CodecError {
    #[cold]
    fn from(e: FastDecodeError) -> Self {
        CodecError::Decode(format!("fast codec: {e}"))
    }
}

impl From<PyErr> for FastDecodeError {
    #[cold]
    fn from(e: PyErr) -> Self {
        DecodeProblem::Python(e.to_string()).into()
    }
}

fn take<'a>(at: &mut &'a [u8], n: usize) -> Result<&'a [u8], FastDecodeError> {
    match at.split_at_checked(n) {
        Some((head, rest)) => {
            *at = rest;
            Ok(head)
        }
        None => Err(DecodeProblem::Truncated {
            wanted: n,
            left: at.len(),
        }
        .into()),
    }
}

fn take_array<const N: usize>(at: &mut &[u8]) -> Result<[u8; N], FastDecodeError> {
    let mut a = [0u8; N];
    a.copy_from_slice(take(at, N)?);
    Ok(a)
}

fn take_len(at: &mut &[u8]) -> Result<usize, FastDecodeError> {
    Ok(u32::from_le_bytes(take_array(at)?) as usize)
}

/// A container's item count, refused if the rest of the blob can't hold
/// that many items (each takes at least one byte), so a corrupt count never
/// makes a huge allocation.
fn take_count(at: &mut &[u8], what: &'static str) -> Result<usize, FastDecodeError> {
    let count = take_len(at)?;
    if count > at.len() {
        return Err(DecodeProblem::TooManyItems {
            what,
            count,
            left: at.len(),
        }
        .into());
    }
    Ok(count)
}

/// A new `str` from UTF-8 bytes, validated once. ASCII (most keys and
/// words) is copied straight into a fresh compact ASCII string; anything
/// else goes through Python's UTF-8 decoder, which refuses invalid bytes.
fn new_str<'py>(py: Python<'py>, bytes: &[u8]) -> Result<Bound<'py, PyAny>, FastDecodeError> {
    if !bytes.is_ascii() {
        return Ok(PyString::from_bytes(py, bytes)?.into_any());
    }
    // A length from take_len is a u32, so it fits.
    let n = bytes.len() as ffi::Py_ssize_t;
    // SAFETY: the GIL is held. PyUnicode_New(n, 127) returns a new compact
    // ASCII str with room for exactly n one-byte characters (or NULL with an
    // exception set, turned into Err); it is filled with n ASCII bytes, as
    // that kind requires, before anything else can see it.
    unsafe {
        let s = Bound::from_owned_ptr_or_err(py, ffi::PyUnicode_New(n, 127))?;
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            ffi::PyUnicode_1BYTE_DATA(s.as_ptr()),
            bytes.len(),
        );
        Ok(s)
    }
}

/// A tuple or list of `n` items decoded from `at`, filled in place (no
/// intermediate `Vec`); `depth` is the items' level.
fn new_sequence<'py>(
    py: Python<'py>,
    at: &mut &[u8],
    tuple: bool,
    n: usize,
    depth: usize,
) -> Result<Bound<'py, PyAny>, FastDecodeError> {
    // A count from take_count is a u32, so it fits.
    let len = n as ffi::Py_ssize_t;
    // SAFETY: the GIL is held. PyTuple_New/PyList_New return a new object
    // with `len` empty (NULL) slots, or NULL with an exception set (Err).
    // Slot i is set exactly once, with a reference we own, and the object
    // is not shared until every slot is set. If an item fails, the object
    // is dropped with its remaining slots NULL, which tuple and list
    // deallocation (and the cycle collector's traversal) skip.
    unsafe {
        let new = if tuple {
            ffi::PyTuple_New(len)
        } else {
            ffi::PyList_New(len)
        };
        let seq = Bound::from_owned_ptr_or_err(py, new)?;
        for i in 0..len {
            let item = fast_decode(py, at, depth)?.into_ptr();
            if tuple {
                ffi::PyTuple_SET_ITEM(seq.as_ptr(), i, item);
            } else {
                ffi::PyList_SET_ITEM(seq.as_ptr(), i, item);
            }
        }
        Ok(seq)
    }
}

/// Decodes one value at nesting level `depth` from the front of `at`.
/// Scalars inline, containers through [`decode_container`] (as in
/// [`fast_encode`]).
#[inline(always)]
fn fast_decode<'py>(
    py: Python<'py>,
    at: &mut &[u8],
    depth: usize,
) -> Result<Bound<'py, PyAny>, FastDecodeError> {
    let [tag] = take_array::<1>(at)?;
    Ok(match tag {
        b's' => {
            let n = take_len(at)?;
            new_str(py, take(at, n)?)?
        }
        b'i' => PyInt::new(py, i64::from_le_bytes(take_array(at)?)).into_any(),
        b'd' => PyFloat::new(py, f64::from_bits(u64::from_le_bytes(take_array(at)?))).into_any(),
        b'n' => py.None().into_bound(py),
        b't' => PyBool::new(py, true).to_owned().into_any(),
        b'f' => PyBool::new(py, false).to_owned().into_any(),
        b'b' => {
            let n = take_len(at)?;
            PyBytes::new(py, take(at, n)?).into_any()
        }
        other => decode_container(py, other, at, depth)?,
    })
}

/// [`fast_decode`] of a tuple, list or dict tagged `tag`, with the
/// encoder's depth limit (a corrupt blob must not exhaust the stack).
#[inline(never)]
fn decode_container<'py>(
    py: Python<'py>,
    tag: u8,
    at: &mut &[u8],
    depth: usize,
) -> Result<Bound<'py, PyAny>, FastDecodeError> {
    let what = match tag {
        b'(' => "tuple",
        b'[' => "list",
        b'{' => "dict",
        other => return Err(DecodeProblem::UnknownTag(other).into()),
    };
    let n = take_count(at, what)?;
    if depth > MAX_DEPTH || (n > 0 && depth >= MAX_DEPTH) {
        return Err(DecodeProblem::TooDeep.into());
    }
    if tag != b'{' {
        return new_sequence(py, at, tag == b'(', n, depth + 1);
    }
    let d = PyDict::new(py);
    for _ in 0..n {
        let k = fast_decode(py, at, depth + 1)?;
        let v = fast_decode(py, at, depth + 1)?;
        d.set_item(k, v)?;
    }
    Ok(d.into_any())
}

/// The default codec, made once per process (importing pickle per call
/// would dominate what the test and benchmark hooks below measure).
static DEFAULT_CODEC: pyo3::sync::PyOnceLock<Codec> = pyo3::sync::PyOnceLock::new();

/// Runs `f` with the codec the hooks below were asked for.
fn with_codec<T>(
    py: Python<'_>,
    serialize: Option<Py<PyAny>>,
    deserialize: Option<Py<PyAny>>,
    f: impl FnOnce(&Codec) -> PyResult<T>,
) -> PyResult<T> {
    match (serialize, deserialize) {
        (Some(s), Some(d)) => f(&Codec::user(s, d)),
        _ => f(DEFAULT_CODEC.get_or_try_init(py, || Codec::default_codec(py))?),
    }
}

thread_local! {
    /// The hook's output buffer, reused between calls so that a call costs
    /// no allocation besides the `bytes` it returns (as the engine's own
    /// encoding appends to a batch buffer). Taken out while in use: a nested
    /// call (an app's serialize calling the hook) gets an empty one.
    static HOOK_BUFFER: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// A reused buffer larger than this is dropped rather than kept.
const HOOK_BUFFER_KEEP: usize = 64 << 10;

/// `quoll._engine.codec_encode(obj, serialize=None, deserialize=None)`:
/// the blob the worker would ship for `obj` (tests and benchmarks).
#[pyfunction]
#[pyo3(signature = (obj, serialize=None, deserialize=None))]
pub fn codec_encode<'py>(
    py: Python<'py>,
    obj: &Bound<'py, PyAny>,
    serialize: Option<Py<PyAny>>,
    deserialize: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyBytes>> {
    with_codec(py, serialize, deserialize, |codec| {
        let mut out = HOOK_BUFFER.take();
        out.clear();
        let result = codec
            .encode(obj, &mut out)
            .map(|()| PyBytes::new(py, &out))
            .map_err(|e| PyValueError::new_err(e.to_string()));
        if out.capacity() <= HOOK_BUFFER_KEEP {
            HOOK_BUFFER.set(out);
        }
        result
    })
}

/// `quoll._engine.codec_decode(blob, serialize=None, deserialize=None)`.
#[pyfunction]
#[pyo3(signature = (blob, serialize=None, deserialize=None))]
pub fn codec_decode<'py>(
    py: Python<'py>,
    blob: &[u8],
    serialize: Option<Py<PyAny>>,
    deserialize: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    with_codec(py, serialize, deserialize, |codec| {
        codec
            .decode(py, blob)
            .map_err(|e| PyValueError::new_err(e.to_string()))
    })
}

#[cfg(test)]
mod tests {
    //! The decoder's unsafe paths (strings and sequences built in place) on
    //! good and corrupt bodies. Round trips of every plain type are covered
    //! from Python by tests/python/test_codec.py.
    use super::*;

    fn with_py<T>(f: impl FnOnce(Python<'_>) -> T) -> T {
        Python::initialize();
        Python::attach(f)
    }

    fn roundtrip<'py>(
        py: Python<'py>,
        codec: &Codec,
        v: &Bound<'py, PyAny>,
    ) -> (Vec<u8>, Bound<'py, PyAny>) {
        let mut blob = Vec::new();
        codec.encode(v, &mut blob).expect("plain values encode");
        let back = codec
            .decode(py, &blob)
            .expect("a blob the encoder made decodes");
        (blob, back)
    }

    fn nested_lists(py: Python<'_>, levels: usize) -> Bound<'_, PyAny> {
        let mut v = PyInt::new(py, 0).into_any();
        for _ in 0..levels {
            v = PyList::new(py, [v]).expect("a list").into_any();
        }
        v
    }

    #[test]
    fn strings_ascii_and_not_roundtrip_as_exact_str() {
        with_py(|py| {
            let codec = Codec::default_codec(py).expect("pickle imports");
            for s in [
                "",
                "w",
                "word",
                "é€𝄞",
                "ascii then é",
                &"long ascii ".repeat(100),
            ] {
                let v = PyString::new(py, s).into_any();
                let (blob, back) = roundtrip(py, &codec, &v);
                assert_eq!(blob[..2], [TAG_FAST, b's']);
                assert!(back.is_exact_instance_of::<PyString>());
                assert_eq!(back.extract::<String>().expect("a str"), s);
                // The new string is a proper str: it hashes and compares like the original.
                assert_eq!(back.hash().expect("hash"), v.hash().expect("hash"));
            }
        });
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        with_py(|py| {
            let codec = Codec::default_codec(py).expect("pickle imports");
            let blob = [TAG_FAST, b's', 2, 0, 0, 0, 0xc3, 0x28];
            let e = codec.decode(py, &blob).expect_err("invalid UTF-8");
            assert!(
                e.to_string().starts_with("fast codec: UnicodeDecodeError"),
                "{e}"
            );
        });
    }

    #[test]
    fn a_sequence_cut_short_is_an_error_and_drops_cleanly() {
        with_py(|py| {
            let codec = Codec::default_codec(py).expect("pickle imports");
            let v = PyTuple::new(py, ["a", "b", "c"])
                .expect("a tuple")
                .into_any();
            let (blob, _) = roundtrip(py, &codec, &v);
            let list = PyList::new(py, ["a", "b", "c"]).expect("a list").into_any();
            let (list_blob, _) = roundtrip(py, &codec, &list);
            // Every cut leaves the tuple or list partly filled when its
            // items run out; it must be freed with its empty slots.
            for b in [&blob, &list_blob] {
                for cut in 1..b.len() {
                    assert!(codec.decode(py, &b[..cut]).is_err(), "cut at {cut}");
                }
            }
        });
    }

    #[test]
    fn nesting_up_to_max_depth_roundtrips_and_deeper_bodies_are_refused() {
        with_py(|py| {
            let codec = Codec::default_codec(py).expect("pickle imports");
            let v = nested_lists(py, MAX_DEPTH);
            let (blob, back) = roundtrip(py, &codec, &v);
            assert_eq!(blob[0], TAG_FAST);
            assert!(back.eq(&v).expect("compare"));
            // One level more goes to pickle...
            let (deeper, _) = roundtrip(py, &codec, &nested_lists(py, MAX_DEPTH + 1));
            assert_eq!(deeper[0], TAG_PICKLE);
            // ...and a fast body nested that deep (which the encoder never
            // makes) is refused, as is a far deeper one, without recursing
            // without bound.
            for levels in [MAX_DEPTH + 1, 100_000] {
                let mut body = vec![TAG_FAST];
                for _ in 0..levels {
                    body.extend_from_slice(&[b'[', 1, 0, 0, 0]);
                }
                body.extend_from_slice(&[b'i', 0, 0, 0, 0, 0, 0, 0, 0]);
                let e = codec.decode(py, &body).expect_err("too deep");
                assert_eq!(
                    e.to_string(),
                    format!("fast codec: nested deeper than {MAX_DEPTH} levels")
                );
            }
        });
    }

    #[test]
    fn an_empty_container_may_sit_at_max_depth() {
        with_py(|py| {
            let codec = Codec::default_codec(py).expect("pickle imports");
            let mut v = PyTuple::empty(py).into_any();
            for _ in 0..MAX_DEPTH {
                v = PyList::new(py, [v]).expect("a list").into_any();
            }
            let (blob, back) = roundtrip(py, &codec, &v);
            assert_eq!(blob[0], TAG_FAST);
            assert!(back.eq(&v).expect("compare"));
        });
    }
}
