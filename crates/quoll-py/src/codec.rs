//! The one codec of a worker: how Python objects become bytes that cross to
//! another worker or go to disk, and back.
//!
//! Selection (spec 4.2): if the app module has both `serialize` and
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
//! all the way down.

use crate::user_errors::format_traceback;
use pyo3::exceptions::PyValueError;
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
        let start = out.len();
        match self {
            Codec::Default {
                dumps, protocol, ..
            } => {
                out.push(TAG_FAST);
                if fast_encode(obj, out, 0) {
                    return Ok(());
                }
                out.truncate(start);
                let py = obj.py();
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
                let py = obj.py();
                let result =
                    serialize
                        .bind(py)
                        .call1((obj,))
                        .map_err(|e| CodecError::UserSerialize {
                            type_name: type_name(obj),
                            reason: e.to_string(),
                            traceback: format_traceback(py, &e),
                        })?;
                out.push(TAG_USER);
                if let Ok(b) = result.cast::<PyBytes>() {
                    out.extend_from_slice(b.as_bytes());
                } else if let Ok(b) = result.cast::<pyo3::types::PyByteArray>() {
                    out.extend_from_slice(&b.to_vec());
                } else {
                    out.truncate(start);
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
        let (&tag, body) = blob
            .split_first()
            .ok_or_else(|| CodecError::Decode("empty blob".into()))?;
        match (tag, self) {
            (TAG_FAST, Codec::Default { .. }) => {
                let mut at = body;
                let v = fast_decode(py, &mut at).map_err(|e| CodecError::Decode(format!("fast codec: {e}")))?;
                if !at.is_empty() {
                    return Err(CodecError::Decode(format!("fast codec: {} trailing bytes", at.len())));
                }
                Ok(v)
            }
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

fn put_len(out: &mut Vec<u8>, n: usize) -> bool {
    match u32::try_from(n) {
        Ok(n) => {
            out.extend_from_slice(&n.to_le_bytes());
            true
        }
        Err(_) => false,
    }
}

/// Fast-encodes `obj` if it is a plain value; false (with garbage appended,
/// which the caller truncates) if it is not.
fn fast_encode(obj: &Bound<'_, PyAny>, out: &mut Vec<u8>, depth: usize) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    if obj.is_none() {
        out.push(b'n');
        return true;
    }
    if obj.is_exact_instance_of::<PyString>() {
        let Ok(s) = obj.cast::<PyString>() else {
            return false;
        };
        // A str with lone surrogates has no UTF-8 form: pickle handles it.
        let Ok(s) = s.to_str() else { return false };
        out.push(b's');
        if !put_len(out, s.len()) {
            return false;
        }
        out.extend_from_slice(s.as_bytes());
        return true;
    }
    if obj.is_exact_instance_of::<PyBool>() {
        out.push(if obj.is_truthy().unwrap_or(false) {
            b't'
        } else {
            b'f'
        });
        return true;
    }
    if obj.is_exact_instance_of::<PyInt>() {
        let Ok(v) = obj.extract::<i64>() else {
            return false;
        };
        out.push(b'i');
        out.extend_from_slice(&v.to_le_bytes());
        return true;
    }
    if obj.is_exact_instance_of::<PyFloat>() {
        let Ok(f) = obj.cast::<PyFloat>() else {
            return false;
        };
        out.push(b'd');
        out.extend_from_slice(&f.value().to_bits().to_le_bytes());
        return true;
    }
    if obj.is_exact_instance_of::<PyBytes>() {
        let Ok(b) = obj.cast::<PyBytes>() else {
            return false;
        };
        out.push(b'b');
        if !put_len(out, b.as_bytes().len()) {
            return false;
        }
        out.extend_from_slice(b.as_bytes());
        return true;
    }
    if obj.is_exact_instance_of::<PyTuple>() {
        let Ok(t) = obj.cast::<PyTuple>() else {
            return false;
        };
        out.push(b'(');
        if !put_len(out, t.len()) {
            return false;
        }
        return t.iter().all(|item| fast_encode(&item, out, depth + 1));
    }
    if obj.is_exact_instance_of::<PyList>() {
        let Ok(l) = obj.cast::<PyList>() else {
            return false;
        };
        // Encode a snapshot: items are counted first, so the list must not
        // change size under us (no user code runs here, so it can't).
        out.push(b'[');
        if !put_len(out, l.len()) {
            return false;
        }
        return l.iter().all(|item| fast_encode(&item, out, depth + 1));
    }
    if obj.is_exact_instance_of::<PyDict>() {
        let Ok(d) = obj.cast::<PyDict>() else {
            return false;
        };
        out.push(b'{');
        if !put_len(out, d.len()) {
            return false;
        }
        return d
            .iter()
            .all(|(k, v)| fast_encode(&k, out, depth + 1) && fast_encode(&v, out, depth + 1));
    }
    false
}

fn take<'a>(at: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if at.len() < n {
        return Err(format!("truncated: wanted {n} bytes, {} left", at.len()));
    }
    let (head, rest) = at.split_at(n);
    *at = rest;
    Ok(head)
}

fn take_len(at: &mut &[u8]) -> Result<usize, String> {
    let b = take(at, 4)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

fn fast_decode<'py>(py: Python<'py>, at: &mut &[u8]) -> Result<Bound<'py, PyAny>, String> {
    let tag = take(at, 1)?[0];
    Ok(match tag {
        b'n' => py.None().into_bound(py),
        b't' => PyBool::new(py, true).to_owned().into_any(),
        b'f' => PyBool::new(py, false).to_owned().into_any(),
        b'i' => {
            let b = take(at, 8)?;
            i64::from_le_bytes(b.try_into().expect("8 bytes"))
                .into_pyobject(py)
                .map_err(|e| e.to_string())?
                .into_any()
        }
        b'd' => {
            let b = take(at, 8)?;
            PyFloat::new(
                py,
                f64::from_bits(u64::from_le_bytes(b.try_into().expect("8 bytes"))),
            )
            .into_any()
        }
        b's' => {
            let n = take_len(at)?;
            let s = std::str::from_utf8(take(at, n)?).map_err(|e| e.to_string())?;
            PyString::new(py, s).into_any()
        }
        b'b' => {
            let n = take_len(at)?;
            PyBytes::new(py, take(at, n)?).into_any()
        }
        b'(' | b'[' => {
            let n = take_len(at)?;
            if n > at.len() {
                return Err(format!("container of {n} items in {} bytes", at.len()));
            }
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(fast_decode(py, at)?);
            }
            if tag == b'(' {
                PyTuple::new(py, items)
                    .map_err(|e| e.to_string())?
                    .into_any()
            } else {
                PyList::new(py, items)
                    .map_err(|e| e.to_string())?
                    .into_any()
            }
        }
        b'{' => {
            let n = take_len(at)?;
            if n > at.len() {
                return Err(format!("dict of {n} items in {} bytes", at.len()));
            }
            let d = PyDict::new(py);
            for _ in 0..n {
                let k = fast_decode(py, at)?;
                let v = fast_decode(py, at)?;
                d.set_item(k, v).map_err(|e| e.to_string())?;
            }
            d.into_any()
        }
        other => return Err(format!("unknown value tag {other:#04x}")),
    })
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
        let mut out = Vec::with_capacity(64);
        codec
            .encode(obj, &mut out)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(PyBytes::new(py, &out))
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
