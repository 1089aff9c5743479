//! Translation between Python values and the core's: arguments in, errors out.

use pagebuddy::{Error, PageMeta};
use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::PyType;

/// A Python int argument, classified without losing what made it unusable: an int no `u64`
/// holds keeps its value as text, for messages (which name the value, never an object's
/// `repr`: an `__index__` object or a numpy scalar is the int it stands for).
pub enum Int {
    Val(u64),
    Negative(String),
    Huge(String),
}

impl Int {
    /// Reads an int as `operator.index` would: non-ints raise `TypeError` naming `what()`.
    pub fn of<S: std::fmt::Display>(
        obj: &Bound<'_, PyAny>,
        what: impl FnOnce() -> S,
    ) -> PyResult<Int> {
        match obj.extract::<u64>() {
            Ok(v) => Ok(Int::Val(v)),
            Err(e) if e.is_instance_of::<PyOverflowError>(obj.py()) => {
                // Compare the index, not the object: it may be any type with `__index__`.
                let index = obj
                    .py()
                    .import("operator")?
                    .getattr("index")?
                    .call1((obj,))?;
                let text = index.str()?.to_string();
                Ok(if index.lt(0)? {
                    Int::Negative(text)
                } else {
                    Int::Huge(text)
                })
            }
            Err(e) if e.is_instance_of::<PyTypeError>(obj.py()) => Err(PyTypeError::new_err(
                format!("{} must be an int, got {}", what(), type_name(obj)),
            )),
            Err(e) => Err(e),
        }
    }

    /// The value if it is at most `max`.
    pub fn at_most(&self, max: u64) -> Option<u64> {
        match *self {
            Int::Val(v) if v <= max => Some(v),
            _ => None,
        }
    }

    /// The value, as text.
    pub fn text(&self) -> String {
        match self {
            Int::Val(v) => v.to_string(),
            Int::Negative(t) | Int::Huge(t) => t.clone(),
        }
    }
}

/// A pfn argument: ints that fit no `u64` are outside every pool.
pub fn pfn(op: &str, obj: &Bound<'_, PyAny>) -> PyResult<u64> {
    match Int::of(obj, || format!("{op}: pfn"))? {
        Int::Val(v) => Ok(v),
        big => Err(raise(
            obj.py(),
            Exc::Page,
            format!("{op}: pfn {} is outside the pool", big.text()),
        )),
    }
}

/// `what` as an int in `min..=max`, else `ValueError` naming the rule.
pub fn int_in(obj: &Bound<'_, PyAny>, what: &str, min: u64, max: u64) -> PyResult<u64> {
    let int = Int::of(obj, || what)?;
    match int.at_most(max) {
        Some(v) if v >= min => Ok(v),
        _ => Err(PyValueError::new_err(format!(
            "{what} must be an int in {min}..={max}, got {}",
            int.text()
        ))),
    }
}

/// An order argument: `ValueError` outside `0..max_order`.
pub fn order(op: &str, obj: &Bound<'_, PyAny>, max_order: u32) -> PyResult<u32> {
    let int = Int::of(obj, || format!("{op}: order"))?;
    match int.at_most(u64::from(max_order).saturating_sub(1)) {
        Some(v) if max_order > 0 => Ok(v as u32),
        _ => Err(PyValueError::new_err(format!(
            "{op}: order {} is invalid: this pool has orders 0..{}",
            int.text(),
            max_order - 1
        ))),
    }
}

/// The length of an exact-size run: `ValueError` outside `1..=max_pages`.
pub fn run(op: &str, obj: &Bound<'_, PyAny>, max_pages: u64) -> PyResult<u64> {
    match Int::of(obj, || format!("{op}: nr_pages"))?.at_most(max_pages) {
        Some(v) if v >= 1 => Ok(v),
        _ => Err(PyValueError::new_err(format!(
            "{op}: nr_pages {} is invalid: this pool's runs are 1..{max_pages} pages",
            obj.repr()?
        ))),
    }
}

/// A `bool` argument (`True` or `False` only).
pub fn flag(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<bool> {
    if obj.is_instance_of::<pyo3::types::PyBool>() {
        obj.is_truthy()
    } else {
        Err(PyTypeError::new_err(format!(
            "{what} must be a bool, got {}",
            type_name(obj)
        )))
    }
}

/// What `view` raises on a pool without an arena.
pub const MSG_NO_ARENA_VIEW: &str =
    "view: this pool has no arena (arena=False): its pages are numbers only, with no bytes to view";

/// The rules of `arena=False`, each refused with why: no bytes to zero, none to link through,
/// none to be given.
pub fn arena_less(zero: &str, intrusive: bool, buffer: bool) -> PyResult<()> {
    let why = if zero != "never" {
        format!(
            "arena=False needs zero='never', got '{zero}': a pool without an arena has no bytes \
             to zero"
        )
    } else if intrusive {
        "arena=False needs _links='side': a pool without an arena has no free pages to keep \
         links in"
            .to_string()
    } else if buffer {
        "arena=False takes no buffer: a pool without an arena has no bytes".to_string()
    } else {
        return Ok(());
    };
    Err(PyValueError::new_err(why))
}

/// A `str` argument that must be one of `choices`.
pub fn choice<'a>(obj: &Bound<'_, PyAny>, what: &str, choices: &[&'a str]) -> PyResult<&'a str> {
    let s: String = obj.extract().map_err(|_| {
        PyTypeError::new_err(format!("{what} must be a str, got {}", type_name(obj)))
    })?;
    choices.iter().copied().find(|c| *c == s).ok_or_else(|| {
        PyValueError::new_err(format!("{what} must be one of {choices:?}, got {s:?}"))
    })
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// The exception classes of `pagebuddy._errors`, shared with the reference model.
#[derive(Clone, Copy)]
pub enum Exc {
    /// `PageError` (a `ValueError`): a pfn the call cannot take.
    Page,
    /// `OutOfMemory` (a `MemoryError`).
    OutOfMemory,
    /// `CorruptionError` (a `RuntimeError`): a broken invariant.
    Corruption,
}

impl Exc {
    /// The class, imported once.
    fn class(self, py: Python<'_>) -> PyResult<Bound<'_, PyType>> {
        static PAGE: GILOnceCell<Py<PyType>> = GILOnceCell::new();
        static OOM: GILOnceCell<Py<PyType>> = GILOnceCell::new();
        static CORRUPT: GILOnceCell<Py<PyType>> = GILOnceCell::new();
        let (cell, name) = match self {
            Exc::Page => (&PAGE, "PageError"),
            Exc::OutOfMemory => (&OOM, "OutOfMemory"),
            Exc::Corruption => (&CORRUPT, "CorruptionError"),
        };
        cell.import(py, "pagebuddy._errors", name).cloned()
    }
}

/// Raises `exc(msg)`.
pub fn raise(py: Python<'_>, exc: Exc, msg: String) -> PyErr {
    match exc.class(py) {
        Ok(cls) => PyErr::from_type(cls, msg),
        Err(e) => e,
    }
}

/// What a page was when a call on it failed, to say which rule it broke.
fn not_held_reason(page: Option<PageMeta>) -> &'static str {
    match page {
        Some(m) if m.order != pagebuddy::NO_ORDER => "refcount 0: free page",
        _ => "refcount 0: tail page of a block",
    }
}

/// The Python exception for a core error in `op`; `page` is the pfn's metadata, if any.
///
/// Every variant of the core's [`Error`] is matched here, by name: a new one does not compile
/// until it is given its exception.
pub fn error(py: Python<'_>, op: &str, err: Error, page: Option<PageMeta>) -> PyErr {
    match err {
        Error::PfnOutOfRange { pfn } => raise(
            py,
            Exc::Page,
            format!("{op}: pfn {pfn} is outside the pool"),
        ),
        Error::NotHeld { pfn } => raise(
            py,
            Exc::Page,
            format!("{op}: pfn {pfn} is not held ({})", not_held_reason(page)),
        ),
        Error::RefcountOverflow { pfn } => raise(
            py,
            Exc::Page,
            format!("{op}: pfn {pfn} refcount would overflow {}", u16::MAX),
        ),
        Error::InvalidOrder { .. } | Error::InvalidRun { .. } | Error::Geometry(_) => {
            PyValueError::new_err(format!("{op}: {err}"))
        }
        Error::NoArena => PyTypeError::new_err(format!("{op}: {err}")),
        Error::OutOfMemory { .. } => raise(py, Exc::OutOfMemory, format!("{op}: {err}")),
        Error::Corrupted(c) => raise(py, Exc::Corruption, format!("{op}: {c}")),
    }
}
