//! Keys as the engine handles them: the bytes a key hashes and compares
//! by (a `str` as UTF-8, `bytes` as they are), the normalisation of key
//! extractor results, and how keys are shown in messages.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

/// Why a message has no usable key.
pub(super) enum KeyError {
    Raised(PyErr),
    BadType(String),
    NotUtf8(String),
}

/// The key bytes: a `str` as UTF-8, `bytes` as they are
/// (docs/wallaroo-compat.md, "Keys").
pub(super) fn key_bytes<'a>(key: &'a Bound<'_, PyAny>) -> Result<&'a [u8], KeyError> {
    if let Ok(s) = key.cast::<PyString>() {
        return s
            .to_str()
            .map(str::as_bytes)
            .map_err(|e| KeyError::NotUtf8(e.to_string()));
    }
    if let Ok(b) = key.cast::<PyBytes>() {
        return Ok(b.as_bytes());
    }
    Err(KeyError::BadType(
        key.get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default(),
    ))
}

/// The key of a message that came from another worker, as a Python object:
/// the value itself when it is a `str` of exactly those bytes (a message
/// keyed by its own text, as word count's words are: one string made
/// instead of two), else [`key_object`] of the bytes.
pub(super) fn arrived_key<'py>(
    py: Python<'py>,
    value: &Bound<'py, PyAny>,
    kb: &[u8],
) -> Bound<'py, PyAny> {
    if let Ok(s) = value.cast::<PyString>() {
        if s.to_str().is_ok_and(|text| text.as_bytes() == kb) {
            return value.clone();
        }
    }
    key_object(py, kb)
}

/// A key extractor's result as a key: `str` and `bytes` as they are, an
/// `int` (including `bool`) as `chr(n)`, like wallaroo's decorator does.
pub(super) fn normalise_key<'py>(
    py: Python<'py>,
    k: Bound<'py, PyAny>,
) -> Result<Bound<'py, PyAny>, KeyError> {
    if k.is_instance_of::<PyString>() || k.is_instance_of::<PyBytes>() {
        return Ok(k);
    }
    if let Ok(n) = k.extract::<i64>() {
        if k.is_instance_of::<pyo3::types::PyInt>() || k.is_instance_of::<pyo3::types::PyBool>() {
            return match u32::try_from(n).ok().and_then(char::from_u32) {
                Some(c) => Ok(PyString::new(py, c.encode_utf8(&mut [0; 4])).into_any()),
                None => Err(KeyError::BadType(format!(
                    "int {n} (not a valid chr() code point)"
                ))),
            };
        }
    }
    Err(KeyError::BadType(
        k.get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default(),
    ))
}

/// Key bytes quoted the way [`show_key`] shows a key object (Python's repr
/// of a plain str, or of bytes).
pub(super) fn quote_key(kb: &[u8]) -> String {
    match std::str::from_utf8(kb) {
        Ok(s) if !s.contains('\'') && !s.contains('\\') && s.chars().all(|c| !c.is_control()) => {
            format!("'{s}'")
        }
        Ok(s) => format!("{s:?}"),
        Err(_) => format!("b{:?}", String::from_utf8_lossy(kb)),
    }
}

/// A key for error messages: its repr, shortened.
pub(super) fn show_key(key: &Bound<'_, PyAny>) -> String {
    let mut s = key
        .repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "<key>".into());
    if s.len() > 80 {
        let mut cut = 77;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// The key object for key bytes read back from a checkpoint or a peer: a
/// `str` if they are UTF-8, else `bytes`.
pub(super) fn key_object<'py>(py: Python<'py>, kb: &[u8]) -> Bound<'py, PyAny> {
    match std::str::from_utf8(kb) {
        Ok(s) => PyString::new(py, s).into_any(),
        Err(_) => PyBytes::new(py, kb).into_any(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_arrived_key_is_the_value_only_when_the_bytes_match() {
        Python::initialize();
        Python::attach(|py| {
            let word = PyString::new(py, "quoll").into_any();
            let same = arrived_key(py, &word, b"quoll");
            assert!(same.is(&word), "a value equal to its key is the key");

            let other = arrived_key(py, &word, b"numbat");
            assert!(!other.is(&word));
            assert_eq!(other.extract::<String>().unwrap(), "numbat");

            let number = 7i64.into_pyobject(py).unwrap().into_any();
            let from_int = arrived_key(py, &number, "é".as_bytes());
            assert_eq!(from_int.extract::<String>().unwrap(), "é");

            let raw = arrived_key(py, &word, &[0xff, 0x00]);
            assert_eq!(raw.cast::<PyBytes>().unwrap().as_bytes(), &[0xff, 0x00]);
        });
    }
}
