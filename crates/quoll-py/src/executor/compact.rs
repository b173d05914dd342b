//! State objects put back into CPython's compact attribute layout.
//!
//! Since CPython 3.11 a plain object keeps its attributes in compact
//! "inline values" until something asks for its `__dict__`; from then on a
//! real dict holds them and every attribute read and write goes through it.
//! Pickle asks for `__dict__` when it encodes an object (each checkpoint of
//! a changed key) and when it decodes one (recovery), so without this every
//! state object of a resilient worker runs on the slow path after its first
//! checkpoint. Measured here for `state.count += 1`: 75 → 174 ns on 3.11,
//! 117 → 244 ns on 3.12, 106 → 186 ns on 3.13; a copy made by setting the
//! attributes one by one is back at 68, 109 and 95 ns.
//!
//! So after a checkpoint encodes a state object, [`Compactor::compact`]
//! makes a new object of the same type with the same attributes, in the
//! same order, set through the generic setattr (which fills the compact
//! layout), and the executor keeps it in place of the old one. Objects
//! decoded by a recovery (pickle leaves them with a real dict too) are
//! left as they are: copying every key would lengthen each recovery, and
//! the ones updated afterwards are copied at the next checkpoint anyway.
//!
//! Invariant: the copy is made only when it is exact, that is when the
//! object's whole state is its `__dict__`: every class of its MRO but
//! `object` is a Python class without `__slots__`, its `__new__` is
//! `object.__new__`, no class defines a data descriptor (a property, a
//! slot) besides `__dict__` and `__weakref__`, and nothing holds a weak
//! reference to the object. The type test is cached per type. Anything
//! else, or any error on the way, keeps the object as it is: this is an
//! optimisation and never changes what a state holds.
//!
//! What a user can see: a state object's identity changes at checkpoints.
//! Wallaroo's API hands a state object only to the call that updates it,
//! so only code that keeps its own reference between calls would notice
//! (docs/wallaroo-compat.md, "State").

use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyType};
use std::collections::HashMap;

/// Makes compact copies of state objects; one per executor.
pub struct Compactor {
    object: Py<PyAny>,
    object_new: Py<PyAny>,
    weakref_count: Py<PyAny>,
    /// Per type, by address, whether its objects can be copied exactly
    /// (the `Py<PyType>` keeps the type, and so its address, alive).
    types: HashMap<usize, (Py<PyType>, bool)>,
}

impl Compactor {
    pub fn new(py: Python<'_>) -> PyResult<Compactor> {
        let object = py.import("builtins")?.getattr("object")?;
        Ok(Compactor {
            object_new: object.getattr("__new__")?.unbind(),
            object: object.unbind(),
            weakref_count: py.import("weakref")?.getattr("getweakrefcount")?.unbind(),
            types: HashMap::new(),
        })
    }

    /// A compact copy of `obj` to keep in its place, or `None` to keep
    /// `obj` (not a plain object, or the copy failed).
    pub fn compact<'py>(&mut self, obj: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
        let py = obj.py();
        let ty = obj.get_type();
        if !self.qualifies(&ty) {
            return None;
        }
        let weakrefs: usize = self
            .weakref_count
            .bind(py)
            .call1((obj,))
            .and_then(|n| n.extract())
            .ok()?;
        if weakrefs > 0 {
            return None;
        }
        let dict = obj
            .getattr(intern!(py, "__dict__"))
            .ok()?
            .cast_into::<PyDict>()
            .ok()?;
        let copy = self.object_new.bind(py).call1((&ty,)).ok()?;
        for (name, value) in dict.iter() {
            // SAFETY: all three pointers are live objects bound to `py`;
            // the call sets an error and returns -1 on failure (a name
            // that is not a str, for one), which is fetched and dropped.
            let rc = unsafe {
                ffi::PyObject_GenericSetAttr(copy.as_ptr(), name.as_ptr(), value.as_ptr())
            };
            if rc != 0 {
                drop(PyErr::fetch(py));
                return None;
            }
        }
        Some(copy)
    }

    fn qualifies(&mut self, ty: &Bound<'_, PyType>) -> bool {
        let key = ty.as_ptr() as usize;
        if let Some((_, q)) = self.types.get(&key) {
            return *q;
        }
        let q = self.type_qualifies(ty).unwrap_or(false);
        self.types.insert(key, (ty.clone().unbind(), q));
        q
    }

    fn type_qualifies(&self, ty: &Bound<'_, PyType>) -> PyResult<bool> {
        let py = ty.py();
        if !ty
            .getattr(intern!(py, "__new__"))?
            .is(self.object_new.bind(py))
        {
            return Ok(false);
        }
        for class in ty.getattr(intern!(py, "__mro__"))?.try_iter()? {
            let class = class?;
            if class.is(self.object.bind(py)) {
                continue;
            }
            let class = class.cast_into::<PyType>()?;
            // A class from C (int, dict, an extension type) may keep state
            // outside `__dict__`.
            // SAFETY: `class` is a live type object.
            let heap = unsafe {
                ffi::PyType_HasFeature(class.as_ptr().cast(), ffi::Py_TPFLAGS_HEAPTYPE) != 0
            };
            if !heap {
                return Ok(false);
            }
            let attrs = class.getattr(intern!(py, "__dict__"))?;
            if attrs.contains(intern!(py, "__slots__"))? {
                return Ok(false);
            }
            for item in attrs.call_method0(intern!(py, "items"))?.try_iter()? {
                let (name, attr): (String, Bound<'_, PyAny>) = item?.extract()?;
                if name == "__dict__" || name == "__weakref__" {
                    continue;
                }
                let kind = attr.get_type();
                if kind.hasattr(intern!(py, "__set__"))?
                    || kind.hasattr(intern!(py, "__delete__"))?
                {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    fn with_module<R>(code: &str, f: impl FnOnce(Python<'_>, &Bound<'_, PyModule>) -> R) -> R {
        Python::initialize();
        Python::attach(|py| {
            let code = CString::new(code).unwrap();
            let m = PyModule::from_code(py, &code, c"compact_test.py", c"compact_test").unwrap();
            f(py, &m)
        })
    }

    const CLASSES: &str = r#"
import pickle, weakref

class Plain:
    def __init__(self):
        self.count = 3
        self.word = "w"

class Sub(Plain):
    pass

class Slotted:
    __slots__ = ("count",)

class WithProperty:
    @property
    def double(self):
        return 2

class OwnNew:
    def __new__(cls):
        return super().__new__(cls)

class FromInt(int):
    pass

def pickled(obj):
    return pickle.loads(pickle.dumps(obj))
"#;

    #[test]
    fn plain_objects_are_copied_with_every_attribute_in_order() {
        with_module(CLASSES, |py, m| {
            let mut c = Compactor::new(py).unwrap();
            for class in ["Plain", "Sub"] {
                let obj = m.getattr(class).unwrap().call0().unwrap();
                let obj = m.getattr("pickled").unwrap().call1((obj,)).unwrap();
                let copy = c.compact(&obj).expect("a plain object is copied");
                assert!(!copy.is(&obj));
                assert!(copy.get_type().is(obj.get_type()));
                let attrs = |o: &Bound<'_, PyAny>| -> Vec<(String, String)> {
                    o.getattr("__dict__")
                        .unwrap()
                        .call_method0("items")
                        .unwrap()
                        .try_iter()
                        .unwrap()
                        .map(|kv| {
                            let (k, v): (String, Bound<'_, PyAny>) = kv.unwrap().extract().unwrap();
                            (k, v.repr().unwrap().to_string())
                        })
                        .collect()
                };
                assert_eq!(attrs(&copy), attrs(&obj));
                assert_eq!(
                    attrs(&copy),
                    vec![("count".into(), "3".into()), ("word".into(), "'w'".into())]
                );
            }
        });
    }

    #[test]
    fn objects_with_state_outside_their_dict_are_kept() {
        with_module(CLASSES, |py, m| {
            let mut c = Compactor::new(py).unwrap();
            for class in ["Slotted", "WithProperty", "OwnNew", "FromInt"] {
                let obj = m.getattr(class).unwrap().call0().unwrap();
                assert!(c.compact(&obj).is_none(), "{class} must be kept");
            }
            // A weakly referenced object is kept: its referrers would lose it.
            let obj = m.getattr("Plain").unwrap().call0().unwrap();
            let _r = py
                .import("weakref")
                .unwrap()
                .getattr("ref")
                .unwrap()
                .call1((&obj,))
                .unwrap();
            assert!(c.compact(&obj).is_none());
            // A dict key that is not a str can't be set as an attribute.
            let obj = m.getattr("Plain").unwrap().call0().unwrap();
            obj.getattr("__dict__").unwrap().set_item(5, 1).unwrap();
            assert!(c.compact(&obj).is_none());
            assert!(!PyErr::occurred(py));
        });
    }
}
