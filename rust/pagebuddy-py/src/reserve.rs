//! A pool's heap memory, reserved in full before any of it is written.
//!
//! Besides its arena, a pool takes its metadata (4 bytes a page) and its side-table links (8
//! bytes a page) in mappings of their own (`mapped`), and from the heap, with caches, a page
//! reference (4 bytes a page) and the slots.
//! Allocated and written one after the other, a pool too large for the memory there commits
//! the metadata (16 GiB for 2**32 - 2 pages) before the next allocation fails, or the machine
//! runs out first. Reserved first (`reserve`, `zeroed_links`) and written after (`fill`), it
//! is refused with `MemoryError` before a byte is written: at once where the address space is
//! limited (`ulimit -v`).

use std::ptr::NonNull;

use pagebuddy::mapped::{Advice, MappedSlice, ZeroValid};
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

/// Most pages whose side-table links are advised for huge pages: 2^24 (128 MiB of links).
/// Metadata is written in full when a pool is built, so advising it commits nothing more; the
/// links are written only where blocks are listed, and with huge pages each listed block
/// commits the 2 MiB around its link instead of 4 KiB. Up to this size that costs at most the
/// links' own 128 MiB; above it (a pool of page numbers of 2^30 pages lists its 1,024 blocks
/// 8 MiB apart) the links keep 4 KiB pages and cost what is listed.
pub(crate) const HUGE_LINKS_MAX_PAGES: usize = 1 << 24;

/// `n` values of `T` in a mapping of their own (`pagebuddy::mapped`): zeroed and not written, so
/// committed only as the pool touches them; with `huge`, aligned to 2 MiB and advised for huge
/// pages where the kernel offers them, so that a large pool's random reads take one TLB entry
/// per 2 MiB instead of per 4 KiB. `MemoryError` ("cannot allocate `what`") when the region
/// cannot be mapped.
pub(crate) fn mapped<T: ZeroValid>(n: usize, huge: bool, what: &str) -> PyResult<MappedSlice<T>> {
    let advice = if huge {
        Advice::HugePages
    } else {
        Advice::Default
    };
    MappedSlice::zeroed(n, advice)
        .map_err(|_| PyMemoryError::new_err(format!("cannot allocate {what}")))
}
