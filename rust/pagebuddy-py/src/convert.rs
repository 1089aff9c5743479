//! Translation between Python values and the core's: arguments in, errors out.

use pagebuddy::{Config, Error, GeometryError, PageMeta, MAX_PAGES};
use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyList, PyMemoryView, PyString, PyTuple, PyType};

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
        if let Some(v) = plain_u64(obj) {
            return Ok(Int::Val(v));
        }
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

/// `obj` if it is an int that a `u64` holds, read in one call, the common case of every int
/// argument; `None`, with no exception left set, for anything else (an `__index__` object, a
/// negative or huge int), which `Int::of` then reads the slow way.
#[inline]
fn plain_u64(obj: &Bound<'_, PyAny>) -> Option<u64> {
    // SAFETY: `obj` is a live object and the `Bound` proves the GIL held. The call reads an int
    // and raises TypeError for anything else (it calls no `__index__`), OverflowError for an int
    // out of range.
    let v = unsafe { pyo3::ffi::PyLong_AsUnsignedLongLong(obj.as_ptr()) };
    if v == u64::MAX && PyErr::take(obj.py()).is_some() {
        return None;
    }
    Some(v)
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

/// A constructor argument as a `u64` (`ValueError` for an int no `u64` holds); whether the
/// value makes a pool is the core's to say ([`geometry_error`]).
pub fn unsigned(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<u64> {
    match Int::of(obj, || what)? {
        Int::Val(v) => Ok(v),
        big => Err(PyValueError::new_err(format!(
            "{what} must be an int from 0 to 2**64 - 1, got {}",
            big.text()
        ))),
    }
}

/// The `ValueError` for a geometry the core refuses, in the constructor's words (`max_order`
/// is the core's `order_cap`). Every variant is matched: a new one does not compile until it
/// is given its message.
pub fn geometry_error(err: GeometryError, config: &Config) -> PyErr {
    let message = match err {
        GeometryError::PageSize { page_size } => {
            format!("page_size must be a power of two from 64 to 2**30, got {page_size}")
        }
        GeometryError::NoPages => "nr_pages must be >= 1, got 0".to_string(),
        GeometryError::TooManyPages { nr_pages } => {
            format!("nr_pages must be at most {MAX_PAGES}, got {nr_pages}")
        }
        GeometryError::PfnOverflow => format!(
            "base_pfn {}: base_pfn + nr_pages must be <= 2**64 (nr_pages {})",
            config.base_pfn, config.max_pages
        ),
        GeometryError::Reserved {
            reserved_pages,
            nr_pages,
        } => format!("reserved_pages must be from 0 to {nr_pages}, got {reserved_pages}"),
        GeometryError::MaxPages {
            max_pages,
            nr_pages,
        } => format!("max_pages must be >= nr_pages ({nr_pages}), got {max_pages}"),
        GeometryError::OrderCap => "max_order must be >= 1, got 0".to_string(),
        GeometryError::ZeroWithoutArena => "arena=False needs zero='never': a pool without an \
                                            arena has no bytes to zero"
            .to_string(),
        GeometryError::ArenaTooSmall { need, have } => {
            format!("buffer holds {have} bytes, the pool needs nr_pages * page_size = {need}")
        }
        GeometryError::MetadataTooSmall { .. }
        | GeometryError::MetadataMisaligned
        | GeometryError::LinksTooSmall { .. }
        | GeometryError::LinksMisaligned
        | GeometryError::CacheTooSmall { .. }
        | GeometryError::PageRefsTooSmall { .. } => format!("pool metadata: {err}"),
        GeometryError::CacheConfig { .. } | GeometryError::NoCacheSlots => {
            format!("cache configuration: {err}")
        }
    };
    PyValueError::new_err(message)
}

/// `what` as an int from `min` to `max`, else `ValueError` naming the rule.
pub fn int_in(obj: &Bound<'_, PyAny>, what: &str, min: u64, max: u64) -> PyResult<u64> {
    let int = Int::of(obj, || what)?;
    match int.at_most(max) {
        Some(v) if v >= min => Ok(v),
        _ => Err(PyValueError::new_err(format!(
            "{what} must be an int from {min} to {max}, got {}",
            int.text()
        ))),
    }
}

/// An order argument: `ValueError` outside 0 to `max_order - 1`.
pub fn order(op: &str, obj: &Bound<'_, PyAny>, max_order: u32) -> PyResult<u32> {
    let int = Int::of(obj, || format!("{op}: order"))?;
    match int.at_most(u64::from(max_order).saturating_sub(1)) {
        Some(v) if max_order > 0 => Ok(v as u32),
        _ => Err(PyValueError::new_err(format!(
            "{op}: order {} is invalid: this pool has orders 0 to {}",
            int.text(),
            max_order - 1
        ))),
    }
}

/// The length of an exact-size run: `ValueError` outside 1 to `max_pages`.
pub fn run(op: &str, obj: &Bound<'_, PyAny>, max_pages: u64) -> PyResult<u64> {
    let int = Int::of(obj, || format!("{op}: nr_pages"))?;
    match int.at_most(max_pages) {
        Some(v) if v >= 1 => Ok(v),
        _ => Err(PyValueError::new_err(format!(
            "{op}: nr_pages {} is invalid: this pool's runs are 1 to {max_pages} pages",
            int.text()
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

/// The typecode of `obj` if it is an `array.array` (the type itself, not a subclass) of native
/// 64-bit unsigned ints (`'Q'`, or `'L'` where that is 8 bytes), else `None`. Such an array is
/// read and written through its own methods, without the memoryviews that `u64_view` makes for
/// any other buffer: a batch call pays for those per call, which matters for small batches.
fn u64_array<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyString>>> {
    static ARRAY: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    let py = obj.py();
    if !obj.get_type().is(ARRAY.import(py, "array", "array")?) {
        return Ok(None);
    }
    let code = obj
        .getattr(intern!(py, "typecode"))?
        .cast_into::<PyString>()?;
    let fits = matches!(&*code.to_cow()?, "Q" | "L")
        && obj.getattr(intern!(py, "itemsize"))?.extract::<usize>()? == 8;
    Ok(fits.then_some(code))
}

/// The memoryview of `obj` if it is a 1-D C-contiguous array of native 64-bit unsigned ints
/// (`array('Q')`, numpy `uint64`), else `None` (lists and tuples are not asked). The same rule
/// as `pagebuddy._rules.u64_array`.
fn u64_view<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyAny>>> {
    if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        return Ok(None);
    }
    let Ok(view) = PyMemoryView::from(obj) else {
        return Ok(None);
    };
    // The names interned once, not a new str each call: a batch pays for these per call.
    let py = obj.py();
    let view = view.into_any();
    let format = view.getattr(intern!(py, "format"))?;
    let format = format.cast::<PyString>()?.to_cow()?;
    // Native items only, as memoryview itself reads and writes them.
    let code = format.strip_prefix('@').unwrap_or(&format);
    let fits = matches!(code, "Q" | "L")
        && view.getattr(intern!(py, "itemsize"))?.extract::<usize>()? == 8
        && view.getattr(intern!(py, "ndim"))?.extract::<usize>()? == 1
        && view.getattr(intern!(py, "c_contiguous"))?.is_truthy()?;
    if fits {
        Ok(Some(view))
    } else {
        release(&view)?;
        Ok(None)
    }
}

/// `view.release()`.
fn release(view: &Bound<'_, PyAny>) -> PyResult<()> {
    view.call_method0(intern!(view.py(), "release")).map(drop)
}

/// The items of a u64 array (see `u64_view`), copied out in one piece; `None` for anything
/// else, which is read as an iterable.
pub fn read_u64s(obj: &Bound<'_, PyAny>) -> PyResult<Option<Vec<u64>>> {
    let bytes = if u64_array(obj)?.is_some() {
        obj.call_method0(intern!(obj.py(), "tobytes"))?
    } else {
        let Some(view) = u64_view(obj)? else {
            return Ok(None);
        };
        let bytes = view.call_method0(intern!(obj.py(), "tobytes"));
        release(&view)?;
        bytes?
    };
    let bytes = bytes.cast::<PyBytes>()?.as_bytes();
    let values = bytes
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect();
    Ok(Some(values))
}

/// `TypeError` unless `out` is a writable u64 array, `ValueError` unless it holds `count` items.
pub fn check_out(op: &str, out: &Bound<'_, PyAny>, count: u64) -> PyResult<()> {
    let len = if u64_array(out)?.is_some() {
        // An array is always writable.
        Some(out.len()?)
    } else {
        let view = u64_view(out)?;
        let len = match &view {
            Some(v) if !v.getattr(intern!(out.py(), "readonly"))?.is_truthy()? => Some(v.len()?),
            _ => None,
        };
        if let Some(v) = view {
            release(&v)?;
        }
        len
    };
    match len {
        None => Err(PyTypeError::new_err(format!(
            "{op}: out must be a writable 1-D array of 64-bit unsigned ints (array('Q'), \
             numpy uint64), not {}",
            type_name(out)
        ))),
        Some(len) if (len as u64) < count => Err(PyValueError::new_err(format!(
            "{op}: out holds {len} items, {count} requested"
        ))),
        Some(_) => Ok(()),
    }
}

/// Writes `values` into the first items of `out`, a u64 array that `check_out` accepted.
pub fn write_u64s(out: &Bound<'_, PyAny>, values: &[u64]) -> PyResult<()> {
    let py = out.py();
    let raw = PyBytes::new_with(py, values.len() * 8, |buf| {
        for (dst, v) in buf.chunks_exact_mut(8).zip(values) {
            dst.copy_from_slice(&v.to_ne_bytes());
        }
        Ok(())
    })?;
    if let Some(code) = u64_array(out)? {
        // An array of the same typecode made from those bytes, over the first items.
        let items = out.get_type().call1((code, raw))?;
        return set_slice(out, 0, values.len(), &items);
    }
    let view = PyMemoryView::from(out)?.into_any();
    let bytes = view.call_method1(intern!(py, "cast"), (intern!(py, "B"),))?;
    let result = set_slice(&bytes, 0, values.len() * 8, raw.as_any());
    release(&bytes)?;
    release(&view)?;
    result
}

/// A slice bound as the C API takes it; `OverflowError` past `isize::MAX` (no buffer is that
/// large, so nothing is sliced there).
fn ssize(n: usize) -> PyResult<pyo3::ffi::Py_ssize_t> {
    pyo3::ffi::Py_ssize_t::try_from(n)
        .map_err(|_| PyOverflowError::new_err(format!("slice bound {n} exceeds isize::MAX")))
}

/// `obj[start:stop]`, for a memoryview a new view of those bytes.
///
/// Not through PyO3's `PySlice::new`, which leaks the ints it makes (`PySlice_New` takes new
/// references to them, and PyO3 0.23 to 0.30 never drop theirs): 32 bytes a call for each
/// bound past the small-int cache. `PySequence_GetSlice` makes and drops its slice itself.
pub fn get_slice<'py>(
    obj: &Bound<'py, PyAny>,
    start: usize,
    stop: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let (start, stop) = (ssize(start)?, ssize(stop)?);
    // SAFETY: `obj` is a live object and the `Bound` proves the interpreter attached. The call
    // borrows `obj` and returns a new reference or null with an exception set, which is what
    // `from_owned_ptr_or_err` takes.
    unsafe {
        let item = pyo3::ffi::PySequence_GetSlice(obj.as_ptr(), start, stop);
        Bound::from_owned_ptr_or_err(obj.py(), item)
    }
}

/// `obj[start:stop] = value`, with no leaked slice bound (see `get_slice`).
pub fn set_slice(
    obj: &Bound<'_, PyAny>,
    start: usize,
    stop: usize,
    value: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let (start, stop) = (ssize(start)?, ssize(stop)?);
    // SAFETY: `obj` and `value` are live objects and the `Bound`s prove the interpreter
    // attached. The call borrows both (it takes its own reference to `value` if it keeps it)
    // and returns -1 with an exception set on failure.
    let rc = unsafe { pyo3::ffi::PySequence_SetSlice(obj.as_ptr(), start, stop, value.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(PyErr::fetch(obj.py()))
    }
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
        static PAGE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
        static OOM: PyOnceLock<Py<PyType>> = PyOnceLock::new();
        static CORRUPT: PyOnceLock<Py<PyType>> = PyOnceLock::new();
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
        Error::NotCovered { pfn } => raise(
            py,
            Exc::Page,
            format!("{op}: pfn {pfn} is not the pool's (never admitted, or reclaimed)"),
        ),
        Error::CannotAdmit { pfn, order, why } => raise(
            py,
            Exc::Page,
            format!("{op}: pfn {pfn} order {order} cannot be admitted: {why}"),
        ),
        Error::BelowFloor { .. } => raise(py, Exc::OutOfMemory, format!("{op}: {err}")),
        Error::RefcountOverflow { pfn } => raise(
            py,
            Exc::Page,
            format!("{op}: pfn {pfn} refcount would overflow {}", u16::MAX),
        ),
        Error::TooManyShares { .. } => raise(py, Exc::Page, format!("{op}: {err}")),
        Error::InvalidOrder { .. } | Error::InvalidRun { .. } | Error::Geometry(_) => {
            PyValueError::new_err(format!("{op}: {err}"))
        }
        Error::NoArena => PyTypeError::new_err(format!("{op}: {err}")),
        Error::OutOfMemory { .. } => raise(py, Exc::OutOfMemory, format!("{op}: {err}")),
        Error::Corrupted(c) => raise(py, Exc::Corruption, format!("{op}: {c}")),
    }
}
