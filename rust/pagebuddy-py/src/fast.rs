//! Fast entry points for the three calls a Python loop makes most: `get_page(pfn)`,
//! `put_page(pfn)` and `alloc_pages(order)`.
//!
//! PyO3's entry point for a method costs more than the core's work on such a call: counted
//! with callgrind over a `get_page` + `put_page` pair, about 350 instructions a call in the
//! extension (the trampoline with its panic guard and thread-local GIL count, the check of
//! `self`'s type through the lazily made type object, the argument parser), against about 20
//! for the core's `get` or `put`. The C API checks `self` already (a method descriptor refuses
//! an object of another type), so these functions do only what the call needs: read a plain int,
//! run the core's call, return `None` or the pfn.
//!
//! `install` puts them on the type as method descriptors of the C API's own kind, with the
//! PyO3 methods' names, signatures and docs, and keeps the PyO3 methods aside. Anything but the
//! plain case (another number of arguments, a keyword such as `cpu=`, an argument that is not
//! exactly an `int` in `0..2**64`) and every failure goes to the PyO3 method, which parses, runs
//! and reports as it always did: a failed call of the core changes nothing, so running it again
//! there gives the error the first attempt would have raised. So behaviour is the PyO3
//! method's, call for call; only the cost of the common case changes.

use std::ffi::{c_char, CString};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyType;

use crate::Pool;

/// The PyO3 methods, kept aside by `install`: `get_page`, `put_page`, `alloc_pages`. Each holds
/// a strong reference for the life of the process (the module is never unloaded).
static SLOW: [AtomicPtr<ffi::PyObject>; 3] = [
    AtomicPtr::new(ptr::null_mut()),
    AtomicPtr::new(ptr::null_mut()),
    AtomicPtr::new(ptr::null_mut()),
];
const GET: usize = 0;
const PUT: usize = 1;
const ALLOC: usize = 2;

/// Replaces `get_page`, `put_page` and `alloc_pages` of `ty` (the `Pool` type, made by PyO3)
/// with the fast entry points, keeping the PyO3 methods for everything else.
pub fn install(ty: &Bound<'_, PyType>) -> PyResult<()> {
    type Entry = (usize, &'static [u8], ffi::PyMethodDefPointer, i32);
    let entries: [Entry; 3] = [
        (
            GET,
            b"get_page\0",
            ffi::PyMethodDefPointer {
                PyCFunction: get_page,
            },
            ffi::METH_O,
        ),
        (
            PUT,
            b"put_page\0",
            ffi::PyMethodDefPointer {
                PyCFunctionFastWithKeywords: put_page,
            },
            ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
        ),
        (
            ALLOC,
            b"alloc_pages\0",
            ffi::PyMethodDefPointer {
                PyCFunctionFastWithKeywords: alloc_pages,
            },
            ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
        ),
    ];
    for (index, name, meth, flags) in entries {
        if !SLOW[index].load(Ordering::Acquire).is_null() {
            // Installed already: the type's method is a fast one now, and keeping it aside as
            // the full method would make a failure call itself.
            continue;
        }
        let text = std::str::from_utf8(&name[..name.len() - 1]).unwrap_or_default();
        let slow = ty.getattr(text)?;
        // The PyO3 method's docstring with its signature, as CPython reads it back
        // (`__text_signature__`, which `inspect.signature` and stubtest use).
        let sig: Option<String> = slow.getattr("__text_signature__")?.extract()?;
        let doc: Option<String> = slow.getattr("__doc__")?.extract()?;
        let sig = sig.ok_or_else(|| PyTypeError::new_err(format!("{text}: no signature")))?;
        let doc = CString::new(format!("{text}{sig}\n--\n\n{}", doc.unwrap_or_default()))
            .map_err(|_| PyTypeError::new_err(format!("{text}: docstring holds a NUL")))?;
        let def = Box::leak(Box::new(ffi::PyMethodDef {
            ml_name: name.as_ptr().cast::<c_char>(),
            ml_meth: meth,
            ml_flags: flags,
            ml_doc: doc.into_raw(),
        }));
        // SAFETY: `ty` is a live type object and `def` is a method definition that lives for
        // the rest of the process (leaked above), as a descriptor requires.
        let descr = unsafe { ffi::PyDescr_NewMethod(ty.as_ptr().cast::<ffi::PyTypeObject>(), def) };
        // SAFETY: a new reference or null with an exception set, as `from_owned_ptr_or_err`
        // takes.
        let descr = unsafe { Bound::from_owned_ptr_or_err(ty.py(), descr) }?;
        SLOW[index].store(slow.unbind().into_ptr(), Ordering::Release);
        ty.setattr(text, descr)?;
    }
    Ok(())
}

/// The pool behind `slf`.
///
/// # Safety
/// `slf` is the `self` that CPython passes a method descriptor's function: a live object
/// of the `Pool` type (the descriptor checked its type; `Pool` cannot be subclassed), borrowed
/// for the call, with the interpreter lock held.
unsafe fn pool<'a>(slf: *mut ffi::PyObject) -> &'a Pool {
    // SAFETY: the caller's promise: the lock is held and `slf` is a live `Pool`, which is
    // `frozen`, so a shared borrow of its contents needs no borrow flag.
    // The object outlives the call, so the reference may outlive the borrowed handle.
    unsafe {
        let py = Python::assume_attached();
        let bound = Borrowed::from_ptr(py, slf);
        &*(bound.cast_unchecked::<Pool>().get() as *const Pool)
    }
}

/// `obj` as a `u64` if it is exactly an `int` in `0..2**64`, with no exception left set.
///
/// # Safety
/// `obj` is a live object and the interpreter lock is held.
#[inline]
unsafe fn plain_u64(obj: *mut ffi::PyObject) -> Option<u64> {
    // SAFETY: the caller's promise; an exact int raises at most OverflowError here, which is
    // cleared, and calls no Python code.
    unsafe {
        if ffi::PyLong_CheckExact(obj) == 0 {
            return None;
        }
        let v = ffi::PyLong_AsUnsignedLongLong(obj);
        if v == u64::MAX && !ffi::PyErr_Occurred().is_null() {
            ffi::PyErr_Clear();
            return None;
        }
        Some(v)
    }
}

/// The one argument of a vectorcall as a `u64`, if the call has exactly one positional argument,
/// no keywords, and that argument is a plain int (`plain_u64`).
///
/// # Safety
/// As `plain_u64`; `args` holds `nargs` live objects.
#[inline]
unsafe fn only_plain_u64(
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> Option<u64> {
    if nargs != 1 || !kwnames.is_null() {
        return None;
    }
    // SAFETY: the caller's promise: `args[0]` is a live object.
    unsafe { plain_u64(*args) }
}

/// `None`, as a new reference.
///
/// # Safety
/// The interpreter lock is held.
unsafe fn none() -> *mut ffi::PyObject {
    // SAFETY: the caller's promise; `Py_None` is immortal or kept alive by this reference.
    unsafe {
        let none = ffi::Py_None();
        ffi::Py_IncRef(none);
        none
    }
}

/// Calls the PyO3 method `which` as `method(slf, *args, **kwargs)` with the vectorcall
/// arguments `args[..nargs]` and `kwnames` (the names of the last `len(kwnames)` items of
/// `args`), and returns its result or null with its exception set.
///
/// # Safety
/// As `pool`; `args` holds `nargs` plus `len(kwnames)` live objects.
#[cold]
unsafe fn slow(
    which: usize,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: the caller's promise; every pointer read below is one of those objects, and every
    // reference made is handed to `Bound`, which releases it.
    unsafe {
        let py = Python::assume_attached();
        let method = SLOW[which].load(Ordering::Acquire);
        if method.is_null() {
            PyTypeError::new_err("pagebuddy: the module is not initialised").restore(py);
            return ptr::null_mut();
        }
        let result = (|| -> PyResult<Bound<'_, PyAny>> {
            let nargs = nargs.max(0) as usize;
            let mut positional = Vec::with_capacity(nargs + 1);
            positional.push(Bound::from_borrowed_ptr(py, slf));
            for i in 0..nargs {
                positional.push(Bound::from_borrowed_ptr(py, *args.add(i)));
            }
            let kwargs = pyo3::types::PyDict::new(py);
            if !kwnames.is_null() {
                let names = Bound::from_borrowed_ptr(py, kwnames);
                for (i, name) in names.try_iter()?.enumerate() {
                    let name = name?;
                    kwargs.set_item(name, Bound::from_borrowed_ptr(py, *args.add(nargs + i)))?;
                }
            }
            let positional = pyo3::types::PyTuple::new(py, positional)?;
            Bound::from_borrowed_ptr(py, method).call(positional, Some(&kwargs))
        })();
        match result {
            Ok(v) => v.into_ptr(),
            Err(e) => {
                e.restore(py);
                ptr::null_mut()
            }
        }
    }
}

/// `Pool.get_page(pfn)` (`METH_O`).
unsafe extern "C" fn get_page(
    slf: *mut ffi::PyObject,
    arg: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls a `METH_O` function with the interpreter lock held, `slf` a live
    // instance of the descriptor's type (`Pool`) and `arg` a live object, both borrowed.
    unsafe {
        if let Some(pfn) = plain_u64(arg) {
            if pool(slf).try_get(Python::assume_attached(), pfn).is_some() {
                return none();
            }
        }
        slow(GET, slf, &arg, 1, ptr::null_mut())
    }
}

/// `Pool.put_page(pfn, *, cpu=None)` (`METH_FASTCALL | METH_KEYWORDS`).
unsafe extern "C" fn put_page(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls a `METH_FASTCALL | METH_KEYWORDS` function with the interpreter lock
    // held, `slf` a live `Pool`, and `args` holding `nargs` positional arguments followed by one
    // per name in `kwnames` (null when there are none), all borrowed.
    unsafe {
        if let Some(pfn) = only_plain_u64(args, nargs, kwnames) {
            if pool(slf).try_put(Python::assume_attached(), pfn).is_some() {
                return none();
            }
        }
        slow(PUT, slf, args, nargs, kwnames)
    }
}

/// `Pool.alloc_pages(order, *, cpu=None)` (`METH_FASTCALL | METH_KEYWORDS`).
unsafe extern "C" fn alloc_pages(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: as in `put_page`.
    unsafe {
        if let Some(order) = only_plain_u64(args, nargs, kwnames) {
            if let Some(pfn) = pool(slf).try_alloc(Python::assume_attached(), order) {
                // A new reference, or null with MemoryError set.
                return ffi::PyLong_FromUnsignedLongLong(pfn);
            }
        }
        slow(ALLOC, slf, args, nargs, kwnames)
    }
}
