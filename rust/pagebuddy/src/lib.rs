//! A buddy page allocator after the pKVM hypervisor's `hyp_pool`
//! (`arch/arm64/kvm/hyp/nvhe/page_alloc.c`), over memory the caller provides: `no_std`, no heap,
//! no panics, every misuse an [`Error`] that leaves the pool untouched.
//!
//! - A [`Pool`] manages `nr_pages` pages of `page_size` bytes with frame numbers
//!   `base_pfn..base_pfn + nr_pages`. Blocks of order k hold 2^k pages and start at a pfn
//!   divisible by 2^k; a block's buddy is `pfn ^ (1 << k)`.
//! - Each page has 4 bytes of [`PageMeta`] (refcount and order) in a slice the caller provides,
//!   pKVM's vmemmap. Free blocks sit on per-order FIFO lists linked through a [`LinkStore`]:
//!   a [`SideTable`] beside the metadata or, as upstream, [`Intrusive`]ly in the free pages.
//! - [`Pool::alloc`] splits on allocation, [`Pool::put`] zeroes (per [`ZeroPolicy`]) and
//!   coalesces on free, [`Pool::get`] and [`Pool::split`] manage shared and split pages,
//!   [`Pool::check`] validates every invariant; [`Pool::alloc_many`] and [`Pool::put_many`] do
//!   a whole batch or nothing; [`Pool::alloc_exact`] hands out a contiguous run of any number
//!   of pages.
//! - [`Pool::without_arena`] builds a pool of page numbers only (device memory, blocks of a
//!   file, block ids), with no bytes behind them: 12 bytes of metadata and links a page.
//! - [`LockedPool`] puts a pool behind one lock for use from many threads, and [`CachedPool`]
//!   puts per-CPU caches of the lowest orders in front of it (Linux's `per_cpu_pages`), so that
//!   most allocations and frees take no shared lock.
//!
//! ```
//! use pagebuddy::{Config, Error, Link, PageMeta, Pool, SideTable, ZeroPolicy};
//!
//! const PAGES: usize = 37;
//! let mut arena = vec![0u8; PAGES * 4096];
//! let mut meta = [PageMeta::INIT; PAGES];
//! let mut links = [Link::EMPTY; PAGES];
//! let config = Config::new(PAGES).base_pfn(5).reserved_pages(1).zero(ZeroPolicy::OnFree);
//! let mut pool = Pool::new(&mut arena[..], &mut meta, SideTable::new(&mut links), config)?;
//!
//! // pfns 6..42 are free, as the largest aligned blocks: 6-7, 8-15, 16-31, 32-39, 40-41.
//! assert_eq!(pool.buddyinfo(), &[0, 2, 0, 2, 1, 0]);
//! let pfn = pool.alloc(3)?;
//! assert_eq!(pfn, 8); // the head of the order-3 list
//! assert_eq!(pool.alloc(9), Err(Error::InvalidOrder { order: 9, max_order: 6 }));
//! pool.put(pfn)?;
//! pool.check()?;
//! # Ok::<(), Error>(())
//! ```
#![no_std]
#![forbid(unsafe_op_in_unsafe_fn)]

#[cfg(any(feature = "std", test))]
extern crate std;

mod arena;
mod batch;
// The caches' reference counts are compare-and-swap words: targets without 32-bit CAS
// (thumbv6m-none-eabi) have no cached pool.
#[cfg(target_has_atomic = "32")]
pub mod cache;
mod carve;
mod check;
mod config;
mod error;
mod exact;
mod grow;
// The handoff flag: an atomic bool, loaded and stored only; gated as `SpinLock` is, since targets
// with atomic loads and stores but no compare-and-swap have no stable cfg of their own.
#[cfg(target_has_atomic = "8")]
mod handoff;
// Shared pools: the lock word and the journal's commit need 32-bit compare-and-swap.
#[cfg(all(target_has_atomic = "32", not(loom)))]
mod layout;
mod lock;
#[cfg(feature = "hugepages")]
pub mod mapped;
// The owners of shared pools: their table and accounting live in the shared bytes.
#[cfg(all(target_has_atomic = "32", not(loom)))]
pub mod owners;
mod pool;
mod prefetch;
mod query;
#[cfg(target_has_atomic = "32")]
pub mod shmlock;
mod store;
mod zeroing;

pub use arena::Arena;
pub use batch::BatchError;
#[cfg(all(feature = "std", not(loom), target_has_atomic = "32"))]
pub use cache::thread_cpu;
#[cfg(target_has_atomic = "32")]
pub use cache::{
    cache_blocks, CacheConfig, CacheSlot, CachedPool, LocalCache, Page, PageRef, SlotSizes,
};
pub use carve::carve_bytes;
pub use config::{Config, Geometry, ZeroPolicy};
pub use error::{AdmitError, Corruption, CorruptionKind, Error, GeometryError};
#[cfg(target_has_atomic = "8")]
pub use handoff::{Handoff, HandoffPool};
#[cfg(all(feature = "crash-points", target_has_atomic = "ptr", not(loom)))]
pub use layout::crash_points;
#[cfg(all(target_has_atomic = "32", not(loom)))]
pub use layout::{
    pages_that_fit, pages_that_fit_with, InHeader, LayoutError, OuterGuard, SharedGuard,
    SharedLinks, SharedPool, HEADER_BYTES, LAYOUT_MAGIC, LAYOUT_VERSION, OUTER_LOCK_BYTES,
};
#[cfg(target_has_atomic = "8")]
pub use lock::SpinLock;
#[cfg(feature = "std")]
pub use lock::StdLock;
pub use lock::{LockedPool, RawLock};
pub use pool::Pool;
pub use store::{
    Intrusive, Link, LinkStore, ListEnds, PageMeta, SideTable, ABSENT, MAX_ORDERS, NO_ORDER,
};

/// Most orders a [`CachedPool`] can cache (orders `0..MAX_CACHED_ORDERS`).
pub const MAX_CACHED_ORDERS: usize = 8;

/// Largest `high` a [`CacheConfig`] may set.
pub const MAX_CACHE_HIGH: u32 = 1 << 16;

/// Most pages one pool can manage: page indices are `u32`, with `u32::MAX` meaning "no page".
pub const MAX_PAGES: usize = (u32::MAX - 1) as usize;

/// Largest page: 1 GiB, the largest block size of the page tables pKVM maps.
pub const MAX_PAGE_SIZE: usize = 1 << 30;

/// Bytes of [`PageMeta`] that `nr_pages` pages need (4 per page, 2-byte aligned).
///
/// ```
/// assert_eq!(pagebuddy::meta_bytes(1 << 18), 1 << 20);
/// ```
pub const fn meta_bytes(nr_pages: usize) -> usize {
    nr_pages.saturating_mul(core::mem::size_of::<PageMeta>())
}

/// Bytes of [`SideTable`] links that `nr_pages` pages need (8 per page, 4-byte aligned).
///
/// ```
/// assert_eq!(pagebuddy::link_bytes(3), 24);
/// ```
pub const fn link_bytes(nr_pages: usize) -> usize {
    nr_pages.saturating_mul(core::mem::size_of::<Link>())
}

#[cfg(test)]
mod tests;

/// The README's Rust example runs as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;

/// The crate's own README (the one its package carries) runs as a doctest too.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct CrateReadmeDoctests;
