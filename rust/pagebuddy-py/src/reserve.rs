//! A pool's heap memory, reserved in full before any of it is written.
//!
//! Besides its arena, a pool takes from the heap its metadata (4 bytes a page), its side-table
//! links (8 bytes a page) and, with caches, a page reference (4 bytes a page) and the slots.
//! Allocated and written one after the other, a pool too large for the memory there commits
//! the metadata (16 GiB for 2**32 - 2 pages) before the next allocation fails, or the machine
//! runs out first. Reserved first (`reserve`, `zeroed_links`) and written after (`fill`), it
//! is refused with `MemoryError` before a byte is written: at once where the address space is
//! limited (`ulimit -v`).

use std::alloc::{alloc_zeroed, Layout};
use std::ptr::NonNull;

use pagebuddy::Link;
use pyo3::exceptions::PyMemoryError;
use pyo3::PyResult;

/// Room for `n` values of `T`, allocated and not written; `MemoryError` ("cannot allocate
/// `what`") when the heap cannot give it.
pub(crate) fn reserve<T>(n: usize, what: &str) -> PyResult<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| PyMemoryError::new_err(format!("cannot allocate {what}")))?;
    Ok(v)
}

/// `v`, which `reserve` made for `n` values, filled with `make()` within that room (no
/// allocation) and leaked, for its owner to free with `Box::from_raw`.
pub(crate) fn fill<T>(mut v: Vec<T>, n: usize, make: impl FnMut() -> T) -> NonNull<[T]> {
    v.extend(std::iter::repeat_with(make).take(n.min(v.capacity())));
    NonNull::from(Box::leak(v.into_boxed_slice()))
}

/// `n` side-table links, allocated zeroed, which writes nothing: the side table is read only
/// for pages on the free lists, whose links are written first (every read is range-checked
/// anyway), so its memory is committed only where blocks are listed, not 8 bytes a page.
pub(crate) fn zeroed_links(n: usize) -> PyResult<Box<[Link]>> {
    let fail = || PyMemoryError::new_err(format!("cannot allocate free-list links for {n} pages"));
    let layout = Layout::array::<Link>(n).map_err(|_| fail())?;
    if layout.size() == 0 {
        return Ok(Box::default());
    }
    // SAFETY: the layout has a non-zero size (checked above).
    let ptr = unsafe { alloc_zeroed(layout) }.cast::<Link>();
    if ptr.is_null() {
        return Err(fail());
    }
    // SAFETY: `ptr` is a live allocation of the global allocator with the layout of `n` links,
    // the layout of a `Box<[Link]>` of `n` elements, which becomes its only owner; a `Link` is
    // two `u32`s, so all zeros is a valid value of each.
    Ok(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, n)) })
}
