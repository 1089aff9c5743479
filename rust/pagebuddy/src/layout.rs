//! Shared and persistent pools: the whole allocator inside the caller's bytes.
//!
//! ```text
//! offset 0          header: magic, layout version, endianness tag, geometry, link store, zero
//!                   policy, owner slots, offsets, a checksum of all that; then the lock word,
//!                   the state word, the free page count, the undo journal, the free lists'
//!                   heads, tails, lengths, non-empty mask and tails' links, the outer lock's
//!                   64 bytes and the boot word
//! (next 64)         the owner table and every page's owner tag (2 bytes each): see `owners`
//! meta_off          PageMeta of every page (4 bytes each)
//! links_off         side-table links (8 bytes each; none for intrusive links)
//! pages_off         the pages, page_size-aligned relative to the start
//! ```
//!
//! Every field is fixed-width and in the writer's byte order, which the endianness tag records
//! (a pool written on a machine of the other endianness is refused). Nothing in the bytes is an
//! address: links are page indices and regions are offsets, so each process may map the bytes
//! wherever it likes.
//!
//! **Locking.** A 32-bit lock word holds the owner id of the holder ([`OwnerLock`]): a waiter
//! that finds its holder dead (the caller says how to tell) takes it over and runs recovery
//! first. A caller whose platform has a lock that tells a dead holder by itself takes that one
//! first ([`SharedPool::lock_outer`], an [`OuterLock`] in the header's
//! [`OUTER_LOCK_BYTES`]), and the word then only records the holder: the Python bindings use a
//! robust, process-shared `pthread_mutex_t`, so that no PID namespace, reused pid or stopped
//! holder is mistaken for a dead or live one. The header's boot word
//! ([`SharedPool::boot_word`]) lets that caller tell a lock state left from an earlier boot of
//! the machine (a file-backed pool).
//!
//! **Crash safety.** The policy ([`Pool`]) runs unchanged on metadata, links and free-list ends
//! that all live in the shared bytes: its link store ([`InHeader`]) keeps the lists' ends in the
//! header, so no handle holds a copy of them. Before it writes, the policy tells the layer
//! above what it will change (a `Plan`: the head it takes and the head of each half it splits
//! off, or the page it frees and each buddy it merges with, found by the checks it makes before
//! any write), which records the old metadata of those pages in the header's undo journal and
//! then marks the journal valid with their count, in the state word. The operation commits by
//! writing the free-page count and, in one store, clearing the journal's bits. The links and
//! the lists' ends are not journaled: they follow from the metadata. A `get`, or a `put` of one
//! of several references, is one store of a refcount and needs no journal.
//! A process killed at any instruction before the commit leaves a valid journal, and
//! [`SharedGuard::recover`] writes the old metadata back (the operation never happened), checks
//! the blocks it describes, and rebuilds every free list from it: each order's free blocks in
//! increasing pfn order, which may differ from the order the lists had (the pool is the same set
//! of free and held blocks, listed anew). Zeroing a freed block is idempotent and needs no undo.
//! After the commit the operation is complete. Either way no page is lost or duplicated, and
//! `check()` passes. The calls made of several operations ([`SharedGuard::alloc_many`],
//! [`SharedGuard::put_many`], [`SharedGuard::alloc_exact`]) check first, so that an error
//! changes nothing, and then journal each step on its own: a process killed part way leaves the
//! steps before done and the rest not begun.
//!
//! **Owners.** Recovery undoes the operation in progress, never the ones that completed. What a
//! dead process held is given back by the owner accounting ([`crate::owners`]): a guard that
//! accounts its operations to an owner ([`SharedGuard::account_to`]) tags every block it takes,
//! and [`SharedGuard::reclaim_dead`] drops the references of the owners found dead, as if each
//! had put them. References taken by a guard accounted to no one are tagged with no owner and
//! never reclaimed: their holder (or a survivor that knows them) puts them.

use core::marker::PhantomData;
use core::ptr::{addr_of, addr_of_mut, NonNull};
use core::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use crate::arena::Arena;
use crate::batch::BatchError;
use crate::config::{Config, Geometry, ZeroPolicy};
use crate::error::{Corruption, CorruptionKind, Error, GeometryError};
use crate::owners::{
    owner_table_bytes, tag_bytes, Owners, ACCOUNTING, DEFAULT_OWNER_SLOTS, MAX_OWNER_SLOTS,
};
use crate::pool::Plan;
use crate::shmlock::{Acquired, OuterLock, OwnerLock};
use crate::store::{
    meta_from_bytes, Intrusive, Link, LinkStore, ListEnds, PageMeta, SideTable, ABSENT, MAX_ORDERS,
    NO_ORDER,
};
use crate::Pool;

/// The magic bytes at offset 0 of every shared pool.
pub const LAYOUT_MAGIC: [u8; 8] = *b"pgbuddy\0";
/// The layout version this build writes and the only one it opens.
pub const LAYOUT_VERSION: u32 = 8;
/// Bytes of the header kept for an [`OuterLock`]'s own state (a robust `pthread_mutex_t`):
/// 8-aligned, zero in a freshly formatted pool.
pub const OUTER_LOCK_BYTES: usize = 64;
/// Written in the writer's byte order: read back in the other order it is `0x0403_0201`.
const ENDIAN_TAG: u32 = 0x0102_0304;

/// Metadata entries one operation may change: an allocation changes the taken block's head and
/// the head of each half it splits off (at most `MAX_ORDERS`); a free changes the freed head and
/// each buddy it merges with (at most `MAX_ORDERS`).
const META_UNDO: usize = MAX_ORDERS + 2;
/// State word bits. The journal covers the operation in progress.
const JOURNAL_VALID: u32 = 1;
/// An operation that the journal does not cover is in progress (see `DerefMut` of the guard).
const UNJOURNALED: u32 = 2;
/// A batch is counting references in the metadata's scratch byte (held heads only); recovery
/// clears every scratch byte.
const SCRATCH: u32 = 4;
/// The journal covers a split: the header's `split` names its tails.
const JOURNAL_SPLIT: u32 = 8;
/// The journal's metadata entries: how many, in these bits (at most `META_UNDO`).
const N_META_SHIFT: u32 = 8;
const N_META: u32 = 0xff << N_META_SHIFT;
/// With `JOURNAL_SPLIT`: the range's pages go from `INIT` to `ABSENT` (a reclaim's tails), not
/// to `(1, 0)`.
const JOURNAL_FORGET: u32 = 1 << 16;
/// With `JOURNAL_SPLIT`: the range's pages go from `ABSENT` to `INIT` (an admit's tails).
const JOURNAL_ADMIT: u32 = 1 << 17;
/// Every bit of the state word that describes the journal of the operation in progress.
const JOURNAL: u32 = JOURNAL_VALID | JOURNAL_SPLIT | JOURNAL_FORGET | JOURNAL_ADMIT | N_META;

/// The old and the new value of each page of the journaled range (`SplitUndo`), by the state
/// word's kind bits: a split's tails, a reclaim's (`JOURNAL_FORGET`) or an admit's
/// (`JOURNAL_ADMIT`). Each is written in increasing order, so a prefix has the new value.
fn range_values(state: u32) -> (PageMeta, PageMeta) {
    let absent = PageMeta::new(0, ABSENT);
    if state & JOURNAL_FORGET != 0 {
        (PageMeta::INIT, absent)
    } else if state & JOURNAL_ADMIT != 0 {
        (absent, PageMeta::INIT)
    } else {
        (PageMeta::INIT, PageMeta::new(1, 0))
    }
}

/// Link store kinds, as written in the header.
const LINKS_SIDE: u32 = 0;
const LINKS_INTRUSIVE: u32 = 1;

/// The immutable part of the header, covered by its checksum.
#[repr(C)]
#[derive(Clone, Copy)]
struct Fixed {
    magic: [u8; 8],
    version: u32,
    endian: u32,
    header_bytes: u32,
    page_size: u32,
    nr_pages: u32,
    reserved_pages: u32,
    max_order: u32,
    zero: u32,
    links: u32,
    /// Owner slots ([`crate::owners`]).
    slots: u32,
    base_pfn: u64,
    meta_off: u64,
    links_off: u64,
    pages_off: u64,
    total_bytes: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct MetaUndo {
    idx: u32,
    old: PageMeta,
}

/// The tails a split turns from `(0, NO_ORDER)` into `(1, 0)`: `count` pages from `idx`; `done`
/// is how many of them recovery found written (always a prefix), so that a refused recovery can
/// be reverted exactly.
#[repr(C)]
#[derive(Clone, Copy)]
struct SplitUndo {
    idx: u32,
    count: u32,
    done: u32,
}

#[repr(C)]
struct Header {
    fixed: Fixed,
    sum: u64,
    lock: u32,
    state: u32,
    /// The pool's free page count, the sum the policy makes of the lists' lengths, written by
    /// each commit for the processes of this layout version that read it.
    free_pages: u32,
    split: SplitUndo,
    meta_undo: [MetaUndo; META_UNDO],
    /// The free lists' ends, where the policy reads and writes them ([`InHeader`]).
    ends: ListEnds,
    /// The outer lock's bytes ([`SharedPool::outer_lock_area`]).
    outer: [u64; OUTER_LOCK_BYTES / 8],
    /// Which boot of the machine initialised the outer lock ([`SharedPool::boot_word`]).
    boot: u64,
}

/// Bytes of the header; the metadata starts at the next multiple of 64.
pub const HEADER_BYTES: usize = core::mem::size_of::<Header>();

// Tools outside the crate read the lock word (the holder's id) at a fixed offset: after the
// 88-byte fixed part and its checksum.
const _: () = assert!(core::mem::offset_of!(Header, lock) == 96);
const _: () = assert!(core::mem::offset_of!(Header, state) == 100);
// The attach fuzz target's seeds (fuzz/corpus/attach) write the journal at these offsets.
const _: () = assert!(core::mem::offset_of!(Header, split) == 108);
const _: () = assert!(core::mem::offset_of!(Header, meta_undo) == 120);
// The outer lock's bytes and the boot word end the header (tools find them from its size).
const _: () = assert!(core::mem::offset_of!(Header, outer) == HEADER_BYTES - OUTER_LOCK_BYTES - 8);
const _: () = assert!(core::mem::offset_of!(Header, boot) == HEADER_BYTES - 8);

/// Why bytes could not be formatted or opened as a shared pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// The bytes do not start with [`LAYOUT_MAGIC`].
    NotAPool,
    /// A pool of another layout version.
    Version {
        /// The version in the bytes.
        found: u32,
    },
    /// A pool written on a machine of the other byte order.
    Endianness,
    /// Fewer bytes than the layout needs.
    Truncated {
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        have: usize,
    },
    /// The bytes do not start at a multiple of 8.
    Misaligned,
    /// A pool whose links live elsewhere than the caller asked for.
    LinkStore {
        /// Whether the pool keeps its links in the free pages.
        intrusive: bool,
    },
    /// The owner id 0, which means "no owner".
    Owner,
    /// A number of owner slots out of `1..=MAX_OWNER_SLOTS`.
    OwnerSlots {
        /// The number asked for.
        slots: u32,
    },
    /// The geometry is invalid (or, when opening, its checksum matched but it is not one this
    /// build accepts).
    Geometry(GeometryError),
    /// The header's fixed part does not match its checksum, or its offsets do not fit.
    Header,
    /// The undo journal names pages outside the pool or an operation it cannot undo.
    Journal,
    /// The pool's state breaks an invariant (after recovery, if one was needed).
    Corrupted(Corruption),
}

impl core::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LayoutError::NotAPool => write!(f, "not a pagebuddy pool (no magic bytes)"),
            LayoutError::Version { found: 3 } => write!(
                f,
                "pool layout version 3 (its lock word names a bare pid), this build opens \
                 version {LAYOUT_VERSION}: format the buffer anew with create_in"
            ),
            LayoutError::Version { found: 4 } => write!(
                f,
                "pool layout version 4 (no owner table: the pages of a dead process stay held), \
                 this build opens version {LAYOUT_VERSION}: format the buffer anew with create_in"
            ),
            LayoutError::OwnerSlots { slots } => write!(
                f,
                "owner slots must be from 1 to {MAX_OWNER_SLOTS}, got {slots}"
            ),
            LayoutError::Version { found } => write!(
                f,
                "pool layout version {found}, this build opens version {LAYOUT_VERSION}"
            ),
            LayoutError::Endianness => write!(f, "pool written with the other byte order"),
            LayoutError::Truncated { need, have } => {
                write!(f, "pool needs {need} bytes, the buffer holds {have}")
            }
            LayoutError::Misaligned => write!(f, "pool bytes must start at a multiple of 8"),
            LayoutError::LinkStore { intrusive } => write!(
                f,
                "pool keeps its links {}",
                if *intrusive {
                    "in the free pages"
                } else {
                    "in a side table"
                }
            ),
            LayoutError::Owner => write!(f, "owner id 0 is reserved"),
            LayoutError::Geometry(g) => write!(f, "{g}"),
            LayoutError::Header => write!(f, "pool header is corrupt (checksum or offsets)"),
            LayoutError::Journal => write!(f, "pool journal is corrupt"),
            LayoutError::Corrupted(c) => write!(f, "{c}"),
        }
    }
}

impl From<GeometryError> for LayoutError {
    fn from(g: GeometryError) -> Self {
        LayoutError::Geometry(g)
    }
}

impl From<Corruption> for LayoutError {
    fn from(c: Corruption) -> Self {
        LayoutError::Corrupted(c)
    }
}

/// FNV-1a over the fixed part of the header.
fn checksum(fixed: &Fixed) -> u64 {
    let f = *fixed;
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(&f.magic);
    for w in [
        f.version,
        f.endian,
        f.header_bytes,
        f.page_size,
        f.nr_pages,
        f.reserved_pages,
        f.max_order,
        f.zero,
        f.links,
        f.slots,
    ] {
        eat(&w.to_ne_bytes());
    }
    for w in [
        f.base_pfn,
        f.meta_off,
        f.links_off,
        f.pages_off,
        f.total_bytes,
    ] {
        eat(&w.to_ne_bytes());
    }
    h
}

const fn align_up(x: usize, a: usize) -> Option<usize> {
    match x.checked_add(a - 1) {
        Some(y) => Some(y / a * a),
        None => None,
    }
}

/// Where the owner table and the tags start: `(owners_off, tags_off)`.
const fn owner_regions(slots: u32) -> (usize, usize) {
    // HEADER_BYTES is far below usize::MAX: no overflow.
    let owners_off = HEADER_BYTES.div_ceil(64) * 64;
    (owners_off, owners_off + owner_table_bytes(slots))
}

/// Where each region starts for `nr_pages` pages and `slots` owner slots:
/// `(meta_off, links_off, pages_off, total)`.
fn regions(
    nr_pages: usize,
    page_size: usize,
    intrusive: bool,
    slots: u32,
) -> Option<(usize, usize, usize, usize)> {
    let (_, tags_off) = owner_regions(slots);
    let meta_off = align_up(tags_off.checked_add(tag_bytes(nr_pages))?, 64)?;
    let links_off = align_up(meta_off.checked_add(crate::meta_bytes(nr_pages))?, 8)?;
    let links = if intrusive {
        0
    } else {
        crate::link_bytes(nr_pages)
    };
    let pages_off = align_up(links_off.checked_add(links)?, page_size)?;
    let total = pages_off.checked_add(nr_pages.checked_mul(page_size)?)?;
    Some((meta_off, links_off, pages_off, total))
}

/// How many pages of `page_size` bytes a shared pool with the default number of owner slots
/// ([`DEFAULT_OWNER_SLOTS`]) fits in `len` bytes (0 if none).
///
/// ```
/// let n = pagebuddy::pages_that_fit(1 << 20, 4096, false);
/// assert!(n > 240 && n < 256);
/// ```
pub fn pages_that_fit(len: usize, page_size: usize, intrusive: bool) -> usize {
    pages_that_fit_with(len, page_size, intrusive, DEFAULT_OWNER_SLOTS)
}

/// [`pages_that_fit`] for a pool of `slots` owner slots (0 pages if `slots` is out of
/// `1..=MAX_OWNER_SLOTS`).
///
/// ```
/// let (few, many) = (pagebuddy::pages_that_fit_with(1 << 20, 4096, false, 1),
///                    pagebuddy::pages_that_fit_with(1 << 20, 4096, false, 4096));
/// assert!(few > many);
/// ```
pub fn pages_that_fit_with(len: usize, page_size: usize, intrusive: bool, slots: u32) -> usize {
    if page_size == 0 || slots == 0 || slots > MAX_OWNER_SLOTS {
        return 0;
    }
    let per_page = page_size + 6 + if intrusive { 0 } else { 8 };
    let mut n = len.saturating_sub(owner_regions(slots).1) / per_page;
    while n > 0 && regions(n, page_size, intrusive, slots).is_none_or(|r| r.3 > len) {
        n -= 1;
    }
    n.min(crate::MAX_PAGES)
}

/// A link store that the shared layout builds over its own region.
pub trait SharedLinks<'a>: LinkStore + Sized {
    /// Whether the links live in the free pages.
    const INTRUSIVE: bool;
    /// The store over `bytes` (the links region) for `nr_pages` pages.
    fn over(bytes: &'a mut [u8], nr_pages: usize) -> Result<Self, GeometryError>;
}

impl<'a> SharedLinks<'a> for SideTable<'a> {
    const INTRUSIVE: bool = false;
    fn over(bytes: &'a mut [u8], nr_pages: usize) -> Result<Self, GeometryError> {
        SideTable::from_bytes(bytes, nr_pages)
    }
}

impl<'a> SharedLinks<'a> for Intrusive {
    const INTRUSIVE: bool = true;
    fn over(_: &'a mut [u8], _: usize) -> Result<Self, GeometryError> {
        Ok(Intrusive)
    }
}

/// The [`LinkStore`] of a shared pool: the links in `L`, the free lists' ends in the pool's
/// header, where every process that has the pool open reads and writes them under the lock.
pub struct InHeader<'a, L> {
    inner: L,
    ends: NonNull<ListEnds>,
    _bytes: PhantomData<&'a mut [u8]>,
}

impl<L: LinkStore> InHeader<'_, L> {
    /// `inner`, with the ends in the header at `hdr`.
    fn new(inner: L, hdr: NonNull<Header>) -> Self {
        // SAFETY: `hdr` points at a header (valid, 8-aligned), so the field's address is too.
        let ends = unsafe { NonNull::new_unchecked(addr_of_mut!((*hdr.as_ptr()).ends)) };
        InHeader {
            inner,
            ends,
            _bytes: PhantomData,
        }
    }
}

impl<L: LinkStore> LinkStore for InHeader<'_, L> {
    const IN_PAGE_BYTES: usize = L::IN_PAGE_BYTES;

    #[inline]
    fn load(&self, arena: &Arena<'_>, page_size: usize, idx: u32) -> Link {
        self.inner.load(arena, page_size, idx)
    }

    #[inline]
    fn store(&mut self, arena: &mut Arena<'_>, page_size: usize, idx: u32, link: Link) {
        crash_point(false);
        self.inner.store(arena, page_size, idx, link);
    }

    #[inline]
    fn clear(&mut self, arena: &mut Arena<'_>, page_size: usize, idx: u32) {
        if L::IN_PAGE_BYTES > 0 {
            crash_point(false);
        }
        self.inner.clear(arena, page_size, idx);
    }

    fn fits(&self, nr_pages: u32) -> Result<(), GeometryError> {
        self.inner.fits(nr_pages)
    }

    // A hint, never relied on (a rebuild clears it with the link): no crash point.
    #[inline(always)]
    fn ahead(&self, arena: &Arena<'_>, page_size: usize, idx: u32) -> u32 {
        self.inner.ahead(arena, page_size, idx)
    }

    #[inline(always)]
    fn store_ahead(&mut self, arena: &mut Arena<'_>, page_size: usize, idx: u32, ahead: u32) {
        self.inner.store_ahead(arena, page_size, idx, ahead);
    }

    #[inline(always)]
    fn prefetch(&self, arena: &Arena<'_>, page_size: usize, idx: u32) {
        self.inner.prefetch(arena, page_size, idx);
    }

    #[inline(always)]
    fn ends<'e>(&self, _: &'e ListEnds) -> &'e ListEnds {
        // SAFETY: the ends lie in the header of the bytes the store was built over, valid for
        // 'a, which outlives the pool that owns this store and so the borrow 'e of its own
        // ends. The pool is reached only under the shared lock (or with exclusive bytes), and
        // its free lists take each reference to the ends for one step, never two at once.
        unsafe { &*self.ends.as_ptr() }
    }

    #[inline(always)]
    fn ends_mut<'e>(&self, _: &'e mut ListEnds) -> &'e mut ListEnds {
        // SAFETY: as in `ends`; the caller's unique borrow of the pool's own ends stands for
        // the unique borrow of the header's while the lock is held.
        unsafe { &mut *self.ends.as_ptr() }
    }
}

/// A pool that lives entirely in caller-provided bytes, shared by every process that maps them.
///
/// Each process opens the bytes with [`attach`](Self::attach) (or formats them with
/// [`create_in`](Self::create_in)) under its own owner id, and runs operations through
/// [`lock`](Self::lock), which returns a [`SharedGuard`].
///
/// **Crash safety.** Every operation of the guard that writes more than one word is journaled
/// in the bytes before it writes: a process killed at any instant leaves either the state
/// before the operation or the state after it (once recovered by [`attach`](Self::attach) or
/// by the next [`lock`](Self::lock), which takes the lock over from a dead holder), so no page
/// is lost or handed out twice. Recovery lists the free blocks anew, in increasing pfn order
/// per order: the same free blocks, not necessarily in the order the lists had.
/// [`SharedGuard::alloc_many`], [`SharedGuard::put_many`] and [`SharedGuard::alloc_exact`]
/// journal each of their steps: killed part way, the steps before are done and the rest not.
///
/// **Owners.** Recovery undoes only the operation in progress. The references a dead owner took
/// are dropped by [`SharedGuard::reclaim_dead`] (see [`crate::owners`]); references taken by a
/// guard accounted to no one (the default: [`SharedGuard::account_to`]) are never reclaimed.
///
/// ```
/// use pagebuddy::{Config, SharedPool, SideTable};
///
/// let mut words = vec![0u64; (64 << 10) / 8]; // 8-byte aligned bytes
/// // SAFETY: u64s have no padding; the byte view covers exactly their memory.
/// let bytes: &mut [u8] =
///     unsafe { core::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), words.len() * 8) };
/// let n = pagebuddy::pages_that_fit(bytes.len(), 256, false);
/// let pool = SharedPool::<SideTable>::create_in(bytes, Config::new(n).page_size(256), 1).unwrap();
/// let pfn = {
///     let mut g = pool.lock();
///     let pfn = g.alloc(2).unwrap();
///     g.check().unwrap();
///     pfn
/// };
/// pool.lock().put(pfn).unwrap();
/// assert_eq!(pool.lock().free_pages() as usize, n);
/// ```
pub struct SharedPool<'a, L: LinkStore> {
    pool: core::cell::UnsafeCell<Pool<'a, InHeader<'a, L>>>,
    hdr: NonNull<Header>,
    owner: u32,
    is_dead: fn(u32) -> bool,
    owners: Owners,
}

// SAFETY: the pool cell is only reached under the shared lock, which excludes every other
// thread and process; the raw pointers point into bytes the pool borrows for `'a`.
unsafe impl<L: LinkStore + Send> Send for SharedPool<'_, L> {}
// SAFETY: as above: `&SharedPool` hands out the cell only through `lock`.
unsafe impl<L: LinkStore + Send> Sync for SharedPool<'_, L> {}

/// What opening bytes as a pool needs first, whether it formats or attaches them: an owner
/// (0 names no process) and bytes aligned for the header's 8-byte words.
fn opening(ptr: NonNull<u8>, owner: u32) -> Result<(), LayoutError> {
    if owner == 0 {
        return Err(LayoutError::Owner);
    }
    if ptr.as_ptr().align_offset(8) != 0 {
        return Err(LayoutError::Misaligned);
    }
    Ok(())
}

fn never_dead(_: u32) -> bool {
    false
}

impl<'a, L: SharedLinks<'a>> SharedPool<'a, L> {
    /// Formats `bytes` as a shared pool of `config` (its `nr_pages` pages must fit: see
    /// [`pages_that_fit`]) and opens it for `owner` (not 0). Whatever the bytes held is
    /// overwritten; the magic is written last, so bytes formatted halfway are not a pool.
    pub fn create_in(bytes: &'a mut [u8], config: Config, owner: u32) -> Result<Self, LayoutError> {
        let len = bytes.len();
        let ptr = NonNull::from(&mut *bytes).cast::<u8>();
        // SAFETY: `bytes` is borrowed mutably for 'a.
        unsafe { Self::create_raw(ptr, len, config, owner) }
    }

    /// [`create_raw`](Self::create_raw) with `slots` owner slots (from 1 to
    /// [`MAX_OWNER_SLOTS`]; [`create_raw`](Self::create_raw) makes [`DEFAULT_OWNER_SLOTS`]).
    ///
    /// # Safety
    /// As for [`create_raw`](Self::create_raw).
    pub unsafe fn create_raw_with(
        ptr: NonNull<u8>,
        len: usize,
        config: Config,
        owner: u32,
        slots: u32,
    ) -> Result<Self, LayoutError> {
        if slots == 0 || slots > MAX_OWNER_SLOTS {
            return Err(LayoutError::OwnerSlots { slots });
        }
        // SAFETY: the caller's contract.
        unsafe { Self::format(ptr, len, config, owner, slots) }
    }

    /// [`create_in`](Self::create_in) over `len` bytes at `ptr`.
    ///
    /// # Safety
    /// `ptr` is valid for reads and writes of `len` bytes for `'a`, and until this returns no one
    /// else accesses them. Afterwards other processes (or threads) may access them only through a
    /// shared pool of their own, and the caller only through pages it holds.
    pub unsafe fn create_raw(
        ptr: NonNull<u8>,
        len: usize,
        config: Config,
        owner: u32,
    ) -> Result<Self, LayoutError> {
        // SAFETY: the caller's contract.
        unsafe { Self::format(ptr, len, config, owner, DEFAULT_OWNER_SLOTS) }
    }

    /// [`create_raw_with`](Self::create_raw_with), `slots` checked.
    unsafe fn format(
        ptr: NonNull<u8>,
        len: usize,
        config: Config,
        owner: u32,
        slots: u32,
    ) -> Result<Self, LayoutError> {
        opening(ptr, owner)?;
        let geo = config.geometry()?;
        let n = geo.nr_pages as usize;
        let (meta_off, links_off, pages_off, total) =
            regions(n, geo.page_size, L::INTRUSIVE, slots).ok_or(LayoutError::Truncated {
                need: usize::MAX,
                have: len,
            })?;
        if total > len {
            return Err(LayoutError::Truncated {
                need: total,
                have: len,
            });
        }
        let fixed = Fixed {
            magic: [0; 8],
            version: LAYOUT_VERSION,
            endian: ENDIAN_TAG,
            header_bytes: HEADER_BYTES as u32,
            page_size: geo.page_size as u32,
            nr_pages: geo.nr_pages,
            reserved_pages: geo.reserved_pages,
            max_order: geo.max_order,
            zero: zero_code(geo.zero),
            links: if L::INTRUSIVE {
                LINKS_INTRUSIVE
            } else {
                LINKS_SIDE
            },
            slots,
            base_pfn: geo.base_pfn,
            meta_off: meta_off as u64,
            links_off: links_off as u64,
            pages_off: pages_off as u64,
            total_bytes: total as u64,
        };
        let hdr = ptr.cast::<Header>();
        let h = hdr.as_ptr();
        // SAFETY: the header fits (total > HEADER_BYTES) and `ptr` is 8-aligned, as Header
        // needs; the caller gives us the bytes exclusively until we return.
        unsafe {
            core::ptr::write_bytes(ptr.as_ptr(), 0, meta_off);
            addr_of_mut!((*h).fixed).write(fixed);
            addr_of_mut!((*h).ends).write(ListEnds::EMPTY);
        }
        // SAFETY: regions lie inside [ptr, ptr + total) and do not overlap; the caller's contract.
        let (meta, links, arena) =
            unsafe { carve::<L>(ptr, meta_off, links_off, pages_off, n, geo.page_size)? };
        let pool =
            Pool::new(arena, meta, InHeader::new(links, hdr), config).map_err(|e| match e {
                Error::Geometry(g) => LayoutError::Geometry(g),
                Error::Corrupted(c) => LayoutError::Corrupted(c),
                _ => LayoutError::Header,
            })?;
        let shared = SharedPool {
            pool: core::cell::UnsafeCell::new(pool),
            hdr,
            owner,
            is_dead: never_dead,
            // SAFETY: the table and the tags lie between the header and the metadata, zeroed
            // above.
            owners: unsafe { owners_at(ptr, slots, geo.nr_pages) },
        };
        shared.store_free_pages();
        let mut fixed = fixed;
        fixed.magic = LAYOUT_MAGIC;
        // SAFETY: as above.
        unsafe {
            addr_of_mut!((*h).sum).write(checksum(&fixed));
            fence(Ordering::Release);
            addr_of_mut!((*h).fixed.magic).write(LAYOUT_MAGIC);
        }
        fence(Ordering::Release);
        Ok(shared)
    }

    /// Opens the shared pool in `bytes` for `owner` (not 0), without rebuilding anything.
    ///
    /// Refuses bytes that are not a pool, of another layout version or byte order, truncated,
    /// with a header that does not match its checksum, a journal it cannot undo, or a state that
    /// fails [`Pool::check`]: and then the bytes are exactly as they were. A pool whose journal
    /// is valid (its last operation was interrupted) is recovered first; if the recovered state
    /// fails the check, the recovery is reverted before the error returns.
    ///
    /// Exclusive `bytes` mean that no one holds the lock now: a holder recorded in the lock word
    /// died with its process, and an accepted pool's lock word is cleared.
    pub fn attach(bytes: &'a mut [u8], owner: u32) -> Result<Self, LayoutError> {
        let len = bytes.len();
        let ptr = NonNull::from(&mut *bytes).cast::<u8>();
        // SAFETY: `bytes` is borrowed mutably for 'a.
        let pool = unsafe { Self::attach_raw(ptr, len, owner)? };
        // Validated before anyone acts on the journal (read-only); once accepted (the checker
        // does not read the scratch bytes of held heads), a batch's counts and a holder
        // recorded in the lock word died with their process.
        pool.open_checked()?;
        Ok(pool)
    }

    /// Validates the header of the pool in `len` bytes at `ptr` and opens it for `owner`,
    /// reading only the header and writing nothing. The state is not checked: other processes
    /// may be changing it; run [`Pool::check`] under the lock.
    ///
    /// # Safety
    /// `ptr` is valid for reads and writes of `len` bytes for `'a`; everyone else that accesses
    /// them does so through a shared pool of their own (or through pages they hold).
    pub unsafe fn attach_raw(
        ptr: NonNull<u8>,
        len: usize,
        owner: u32,
    ) -> Result<Self, LayoutError> {
        opening(ptr, owner)?;
        if len < HEADER_BYTES {
            if len >= 8 {
                // SAFETY: 8 bytes are readable.
                let magic = unsafe { core::ptr::read(ptr.as_ptr().cast::<[u8; 8]>()) };
                if magic != LAYOUT_MAGIC {
                    return Err(LayoutError::NotAPool);
                }
            }
            return Err(LayoutError::Truncated {
                need: HEADER_BYTES,
                have: len,
            });
        }
        let hdr = ptr.cast::<Header>();
        // SAFETY: HEADER_BYTES are readable and 8-aligned.
        let (fixed, sum) = unsafe {
            (
                addr_of!((*hdr.as_ptr()).fixed).read(),
                addr_of!((*hdr.as_ptr()).sum).read(),
            )
        };
        if fixed.magic != LAYOUT_MAGIC {
            return Err(LayoutError::NotAPool);
        }
        if fixed.endian != ENDIAN_TAG {
            return Err(if fixed.endian == ENDIAN_TAG.swap_bytes() {
                LayoutError::Endianness
            } else {
                LayoutError::Header
            });
        }
        if fixed.version != LAYOUT_VERSION {
            return Err(LayoutError::Version {
                found: fixed.version,
            });
        }
        if checksum(&fixed) != sum || fixed.header_bytes as usize != HEADER_BYTES {
            return Err(LayoutError::Header);
        }
        let intrusive = match fixed.links {
            LINKS_SIDE => false,
            LINKS_INTRUSIVE => true,
            _ => return Err(LayoutError::Header),
        };
        if intrusive != L::INTRUSIVE {
            return Err(LayoutError::LinkStore { intrusive });
        }
        let zero = match fixed.zero {
            0 => ZeroPolicy::OnFree,
            1 => ZeroPolicy::OnAlloc,
            2 => ZeroPolicy::Never,
            _ => return Err(LayoutError::Header),
        };
        let config = Config::new(fixed.nr_pages as usize)
            .page_size(fixed.page_size as usize)
            .base_pfn(fixed.base_pfn)
            .reserved_pages(fixed.reserved_pages as usize)
            .order_cap(fixed.max_order)
            .zero(zero);
        let geo = config.geometry()?;
        let n = geo.nr_pages as usize;
        if fixed.slots == 0 || fixed.slots > MAX_OWNER_SLOTS {
            return Err(LayoutError::Header);
        }
        let expect =
            regions(n, geo.page_size, intrusive, fixed.slots).ok_or(LayoutError::Header)?;
        let found = (
            fixed.meta_off as usize,
            fixed.links_off as usize,
            fixed.pages_off as usize,
            fixed.total_bytes as usize,
        );
        if geo.max_order != fixed.max_order || expect != found {
            return Err(LayoutError::Header);
        }
        if found.3 > len {
            return Err(LayoutError::Truncated {
                need: found.3,
                have: len,
            });
        }
        // SAFETY: the regions lie inside the bytes (total <= len), do not overlap, and are
        // accessed only under the lock (the caller's contract).
        let (meta, links, arena) =
            unsafe { carve::<L>(ptr, found.0, found.1, found.2, n, geo.page_size)? };
        let pool = Pool::adopt(arena, meta, InHeader::new(links, hdr), geo);
        let shared = SharedPool {
            pool: core::cell::UnsafeCell::new(pool),
            hdr,
            owner,
            is_dead: never_dead,
            // SAFETY: the table and the tags lie between the header and the metadata, inside
            // the bytes (checked above).
            owners: unsafe { owners_at(ptr, fixed.slots, geo.nr_pages) },
        };
        Ok(shared)
    }

    /// Sets how a waiter tells that the holder of the lock died (by default no holder is ever
    /// taken for dead). `is_dead` is given the holder's owner id.
    pub fn set_is_dead(&mut self, is_dead: fn(u32) -> bool) {
        self.is_dead = is_dead;
    }

    /// This pool's owner id.
    pub fn owner(&self) -> u32 {
        self.owner
    }

    /// The current holder of the lock, if any.
    pub fn holder(&self) -> Option<u32> {
        self.lock_word().holder()
    }

    /// The pool's shape.
    pub fn geometry(&self) -> Geometry {
        self.pool_ref().geo
    }

    /// Offset of page 0 from the start of the bytes.
    pub fn pages_offset(&self) -> usize {
        // SAFETY: the fixed header was validated at open and is never written afterwards.
        unsafe { addr_of!((*self.hdr.as_ptr()).fixed.pages_off).read() as usize }
    }

    /// The header's bytes kept for an [`OuterLock`] ([`OUTER_LOCK_BYTES`], 8-aligned): zero
    /// when the pool is formatted; the pool itself never reads or writes them.
    pub fn outer_lock_area(&self) -> NonNull<u8> {
        // SAFETY: the header is valid for the pool's life, so the field's address is non-null.
        unsafe { NonNull::new_unchecked(addr_of_mut!((*self.h()).outer).cast::<u8>()) }
    }

    /// The header's word for the caller's record of which boot of the machine initialised the
    /// outer lock (0 when formatted; the pool itself never reads or writes it): an outer lock
    /// whose state is left from an earlier boot (a file-backed pool) is initialised anew.
    pub fn boot_word(&self) -> &AtomicU64 {
        // SAFETY: the word is 8-aligned inside the header, lives as long as `self`, and every
        // process accesses it only atomically.
        unsafe { AtomicU64::from_ptr(addr_of_mut!((*self.h()).boot)) }
    }

    /// Takes `outer` and then the owner word for `owner` (not 0; 0 is taken as this pool's
    /// own). Under `outer` the word is taken whatever it holds: a holder left there died (the
    /// outer lock excludes every live one), and the operation it left half done is recovered
    /// as by [`lock_as`](Self::lock_as), whose guard the result dereferences to. `outer` is
    /// released after the word when the result drops. `Err`: `outer` was not taken and nothing
    /// changed.
    ///
    /// ```
    /// use core::cell::Cell;
    /// use pagebuddy::shmlock::OuterLock;
    /// use pagebuddy::{Config, SharedPool, SideTable};
    ///
    /// struct Flag(Cell<bool>);
    /// impl OuterLock for Flag {
    ///     type Error = ();
    ///     fn acquire(&self) -> Result<bool, ()> {
    ///         if self.0.replace(true) { Err(()) } else { Ok(false) }
    ///     }
    ///     fn release(&self) {
    ///         self.0.set(false);
    ///     }
    /// }
    /// let mut words = vec![0u64; (64 << 10) / 8];
    /// // SAFETY: u64s have no padding; the byte view covers exactly their memory.
    /// let bytes: &mut [u8] =
    ///     unsafe { core::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), words.len() * 8) };
    /// let n = pagebuddy::pages_that_fit(bytes.len(), 256, false);
    /// let pool = SharedPool::<SideTable>::create_in(bytes, Config::new(n).page_size(256), 1).unwrap();
    /// let outer = Flag(Cell::new(false));
    /// let pfn = pool.lock_outer(&outer, 1).unwrap().alloc(0).unwrap();
    /// assert!(!outer.0.get(), "released with the guard");
    /// pool.lock_outer(&outer, 1).unwrap().put(pfn).unwrap();
    /// assert_eq!(pool.lock().free_pages() as usize, n);
    /// ```
    pub fn lock_outer<'s, O: OuterLock>(
        &'s self,
        outer: &'s O,
        owner: u32,
    ) -> Result<OuterGuard<'s, 'a, L, O>, O::Error> {
        let died = outer.acquire()?;
        let owner = if owner == 0 { self.owner } else { owner };
        let stale = self.lock_word().take_over(owner);
        let mut guard = SharedGuard {
            shared: self,
            owner,
            damage: None,
            unjournaled: false,
            acct: 0,
        };
        if stale != 0 || guard.journal_state() != 0 {
            guard.damage = guard.recover_cold();
        }
        Ok(OuterGuard {
            guard: core::mem::ManuallyDrop::new(guard),
            outer,
            died,
        })
    }

    /// Opens the pool as [`attach`](Self::attach) does once the header is validated, with
    /// `outer` held: the journal checked, an interrupted operation rolled back, every invariant
    /// checked, and only then the recovered state kept (the scratch counts and the state word
    /// cleared, the owner word freed). Refused, every byte is as it was, the owner word
    /// included. `Ok(Err(_))`: refused; `Err`: `outer` was not taken.
    ///
    /// ```
    /// use core::cell::Cell;
    /// use pagebuddy::shmlock::OuterLock;
    /// use pagebuddy::{Config, SharedPool, SideTable};
    ///
    /// struct Flag(Cell<bool>);
    /// impl OuterLock for Flag {
    ///     type Error = ();
    ///     fn acquire(&self) -> Result<bool, ()> {
    ///         if self.0.replace(true) { Err(()) } else { Ok(false) }
    ///     }
    ///     fn release(&self) {
    ///         self.0.set(false);
    ///     }
    /// }
    /// let mut words = vec![0u64; (64 << 10) / 8];
    /// // SAFETY: u64s have no padding; the byte view covers exactly their memory.
    /// let bytes: &mut [u8] =
    ///     unsafe { core::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), words.len() * 8) };
    /// let n = pagebuddy::pages_that_fit(bytes.len(), 256, false);
    /// let pool = SharedPool::<SideTable>::create_in(bytes, Config::new(n).page_size(256), 1).unwrap();
    /// assert_eq!(pool.open_outer(&Flag(Cell::new(false))), Ok(Ok(())));
    /// ```
    pub fn open_outer<O: OuterLock>(&self, outer: &O) -> Result<Result<(), LayoutError>, O::Error> {
        outer.acquire()?;
        // Other processes may have changed the pool since it was opened.
        let r = self.open_checked();
        outer.release();
        Ok(r)
    }

    /// The checks and recovery of [`open_outer`](Self::open_outer), for a caller that holds the
    /// outer lock (or the bytes exclusively).
    fn open_checked(&self) -> Result<(), LayoutError> {
        self.journal_in_range()?;
        if self.journal_state() & ACCOUNTING != 0 {
            // Rolled back, checked, and rolled forward again if refused.
            self.swap_accounting();
            if let Err(e) = self.pool_ref().check() {
                self.swap_accounting();
                return Err(e.into());
            }
        } else if self.journal_state() & JOURNAL_VALID != 0 {
            self.recover_checked()?;
        } else {
            self.pool_ref().check()?;
        }
        self.clear_scratch();
        self.end_recovery();
        self.lock_word().clear();
        Ok(())
    }

    /// Takes the lock (spinning, `pause(polls)` between polls), taking it over from a holder that
    /// the [`set_is_dead`](Self::set_is_dead) test says died, and then recovering the operation
    /// it left half done ([`SharedGuard::recover`]). If that cannot be done (the journal is
    /// damaged), the guard still holds the lock, [`SharedGuard::damage`] says why and every
    /// operation fails with [`CorruptionKind::Journal`] until the pool is rebuilt.
    #[inline]
    pub fn lock_with(&self, pause: impl FnMut(u32)) -> SharedGuard<'_, 'a, L> {
        self.lock_as(self.owner, pause)
    }

    /// [`lock_with`](Self::lock_with) under another owner id (not 0; 0 is taken as this
    /// pool's own): for a handle inherited by a forked child, which must not lock under its
    /// parent's id.
    #[inline(always)]
    pub fn lock_as(&self, owner: u32, pause: impl FnMut(u32)) -> SharedGuard<'_, 'a, L> {
        let owner = if owner == 0 { self.owner } else { owner };
        let how = match self.lock_word().try_lock(owner) {
            Ok(()) => Acquired::Clean,
            Err(_) => self.lock_slow(owner, pause),
        };
        let mut guard = SharedGuard {
            shared: self,
            owner,
            damage: None,
            unjournaled: false,
            acct: 0,
        };
        if matches!(how, Acquired::TakenFrom(_)) || guard.journal_state() != 0 {
            guard.damage = guard.recover_cold();
        }
        guard
    }

    /// Takes the lock word for `owner` (not 0) if it is free, without waiting: `Err(holder)`
    /// if it is held. Like [`lock_as`](Self::lock_as), a journal left valid is recovered
    /// first. For a caller that waits in its own way (the Python bindings: the interpreter lock
    /// let go, signals and a timeout), telling a dead holder by the owner table
    /// ([`holder_area`](Self::holder_area)) and taking over with
    /// [`take_over_as`](Self::take_over_as).
    ///
    /// ```
    /// use pagebuddy::{Config, SharedPool, SideTable};
    ///
    /// let mut words = vec![0u64; (64 << 10) / 8];
    /// // SAFETY: u64s have no padding; the byte view covers exactly their memory.
    /// let bytes: &mut [u8] =
    ///     unsafe { core::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), words.len() * 8) };
    /// let n = pagebuddy::pages_that_fit(bytes.len(), 256, false);
    /// let pool = SharedPool::<SideTable>::create_in(bytes, Config::new(n).page_size(256), 1).unwrap();
    /// let g = pool.try_lock_as(5).ok().unwrap();
    /// assert_eq!(pool.try_lock_as(6).err(), Some(5));
    /// drop(g);
    /// assert!(pool.take_over_as(6, 5).is_none(), "5 no longer holds it");
    /// ```
    #[inline(always)]
    pub fn try_lock_as(&self, owner: u32) -> Result<SharedGuard<'_, 'a, L>, u32> {
        let owner = if owner == 0 { self.owner } else { owner };
        self.lock_word().try_lock(owner)?;
        Ok(self.locked(owner, false))
    }

    /// Replaces `holder`, which the caller found dead, by `owner` in the lock word in one
    /// compare-and-swap (so that of several waiters only one takes over), and recovers what it
    /// left half done: None if the word no longer holds `holder`.
    #[cold]
    pub fn take_over_as(&self, owner: u32, holder: u32) -> Option<SharedGuard<'_, 'a, L>> {
        let owner = if owner == 0 { self.owner } else { owner };
        if holder == 0 || holder == owner {
            return None;
        }
        let word = self.lock_word();
        word.take_from(holder, owner)
            .then(|| self.locked(owner, true))
    }

    /// The guard of a lock word just taken: recovered first if taken over or if a journal is
    /// valid.
    #[inline(always)]
    fn locked(&self, owner: u32, taken_over: bool) -> SharedGuard<'_, 'a, L> {
        let mut guard = SharedGuard {
            shared: self,
            owner,
            damage: None,
            unjournaled: false,
            acct: 0,
        };
        if taken_over || guard.journal_state() != 0 {
            guard.damage = guard.recover_cold();
        }
        guard
    }

    /// The lock word itself, for a caller that builds an [`OuterLock`] of its own over it
    /// (the Python bindings' lock for handles that are not owners yet): taking it this way
    /// recovers nothing, which [`open_outer`](Self::open_outer) or
    /// [`lock_outer`](Self::lock_outer) then does.
    ///
    /// ```
    /// use pagebuddy::{Config, SharedPool, SideTable};
    ///
    /// let mut words = vec![0u64; (64 << 10) / 8];
    /// // SAFETY: u64s have no padding; the byte view covers exactly their memory.
    /// let bytes: &mut [u8] =
    ///     unsafe { core::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), words.len() * 8) };
    /// let n = pagebuddy::pages_that_fit(bytes.len(), 256, false);
    /// let pool = SharedPool::<SideTable>::create_in(bytes, Config::new(n).page_size(256), 1).unwrap();
    /// assert_eq!(pool.owner_word().try_lock(9), Ok(()));
    /// assert_eq!(pool.holder(), Some(9));
    /// pool.owner_word().unlock(9);
    /// ```
    pub fn owner_word(&self) -> OwnerLock<'_> {
        self.lock_word()
    }

    /// The lock's wait, out of the way of its fast path.
    #[cold]
    #[inline(never)]
    fn lock_slow(&self, owner: u32, mut pause: impl FnMut(u32)) -> Acquired {
        self.lock_word().lock(owner, self.is_dead, &mut pause)
    }

    /// [`lock_with`](Self::lock_with) with a spin hint between polls.
    #[inline]
    pub fn lock(&self) -> SharedGuard<'_, 'a, L> {
        self.lock_with(|_| core::hint::spin_loop())
    }

    fn lock_word(&self) -> OwnerLock<'_> {
        // SAFETY: the lock word is 4-aligned inside the header, lives as long as `self`, and is
        // only ever accessed atomically by every process.
        OwnerLock::new(unsafe { AtomicU32::from_ptr(addr_of_mut!((*self.hdr.as_ptr()).lock)) })
    }

    fn state_word(&self) -> &AtomicU32 {
        // SAFETY: as for the lock word.
        unsafe { AtomicU32::from_ptr(addr_of_mut!((*self.hdr.as_ptr()).state)) }
    }

    fn journal_state(&self) -> u32 {
        self.state_word().load(Ordering::Acquire)
    }

    fn pool_ref(&self) -> &Pool<'a, InHeader<'a, L>> {
        // SAFETY: callers hold the lock or, at open, exclusive bytes.
        unsafe { &*self.pool.get() }
    }

    #[allow(clippy::mut_from_ref)]
    fn pool_mut(&self) -> &mut Pool<'a, InHeader<'a, L>> {
        // SAFETY: callers hold the lock (or exclusive bytes), which excludes every other access
        // to the cell, and do not keep another reference from `pool_ref` alive across this one.
        unsafe { &mut *self.pool.get() }
    }

    fn h(&self) -> *mut Header {
        self.hdr.as_ptr()
    }

    /// The owner table and tags.
    pub(crate) fn owners(&self) -> Owners {
        self.owners
    }

    /// The pages' metadata, for the owner accounting (under the lock).
    #[allow(clippy::mut_from_ref)]
    pub(crate) fn meta_mut(&self) -> &mut [PageMeta] {
        self.pool_mut().meta
    }

    /// The state word, for the owner accounting's journal bit.
    pub(crate) fn state(&self) -> &AtomicU32 {
        self.state_word()
    }

    /// Stores the free page count, which the policy sums from the lists' lengths, into the
    /// header, where the processes of this layout version read it.
    #[inline]
    fn store_free_pages(&self) {
        let free_pages = self.pool_ref().free_pages();
        // SAFETY: the header is valid for the pool's life; the caller holds the lock (or the
        // bytes exclusively).
        unsafe { addr_of_mut!((*self.h()).free_pages).write(free_pages) };
    }

    /// Checks, reading only, that every journal entry names a page of the pool and that its
    /// counts are in bounds, and that an interrupted split left a prefix written.
    fn journal_in_range(&self) -> Result<(), LayoutError> {
        let state = self.journal_state();
        if state & !(JOURNAL | UNJOURNALED | SCRATCH | ACCOUNTING) != 0 {
            return Err(LayoutError::Journal);
        }
        if state & UNJOURNALED != 0 {
            return Err(LayoutError::Journal);
        }
        if state & (JOURNAL_FORGET | JOURNAL_ADMIT) == JOURNAL_FORGET | JOURNAL_ADMIT {
            return Err(LayoutError::Journal);
        }
        if state & ACCOUNTING != 0 {
            // An accounting change is never inside another operation's journal.
            return match state & JOURNAL == 0 && self.accounting_in_range() {
                true => Ok(()),
                false => Err(LayoutError::Journal),
            };
        }
        if state & JOURNAL_VALID == 0 {
            // Journal bits without the valid one are left by no operation.
            return match state & JOURNAL {
                0 => Ok(()),
                _ => Err(LayoutError::Journal),
            };
        }
        let n = self.pool_ref().geo.nr_pages;
        let h = self.h();
        let n_meta = ((state & N_META) >> N_META_SHIFT) as usize;
        // SAFETY: the header is readable for the pool's life.
        let split = unsafe { (*h).split };
        let split = if state & JOURNAL_SPLIT != 0 {
            split
        } else {
            SplitUndo {
                idx: 0,
                count: 0,
                done: 0,
            }
        };
        if n_meta > META_UNDO {
            return Err(LayoutError::Journal);
        }
        for i in 0..n_meta {
            // SAFETY: i < META_UNDO.
            if unsafe { (*h).meta_undo[i].idx } >= n {
                return Err(LayoutError::Journal);
            }
        }
        if split.count > 0 {
            let end = u64::from(split.idx) + u64::from(split.count);
            if end > u64::from(n) {
                return Err(LayoutError::Journal);
            }
            let (old, new) = range_values(state);
            let meta = &self.pool_ref().meta[split.idx as usize..end as usize];
            let done = meta.iter().take_while(|m| **m == new).count();
            if meta[done..].iter().any(|m| *m != old) {
                return Err(LayoutError::Journal);
            }
        }
        Ok(())
    }

    /// Writes every journaled old metadata entry back (in reverse), then the split's tails,
    /// swapping each with the value it replaces so that [`unrecover`](Self::unrecover) can put
    /// the bytes back exactly. The free lists are left as they are: [`rebuild`](Self::rebuild)
    /// lists the free blocks anew.
    fn undo(&self) {
        let h = self.h();
        let pool = self.pool_mut();
        let state = self.journal_state();
        // SAFETY: `journal_in_range` vouched for every count and index; the lock is held.
        unsafe {
            let n_meta = ((state & N_META) >> N_META_SHIFT) as usize;
            for i in (0..n_meta).rev() {
                let e = addr_of_mut!((*h).meta_undo[i]);
                let idx = (*e).idx as usize;
                core::mem::swap(&mut pool.meta[idx], &mut (*e).old);
            }
            let split = addr_of_mut!((*h).split);
            if state & JOURNAL_SPLIT != 0 && (*split).count > 0 {
                let (start, count) = ((*split).idx as usize, (*split).count as usize);
                let (old, new) = range_values(state);
                let tails = &mut pool.meta[start..start + count];
                let done = tails.iter().take_while(|m| **m == new).count();
                tails[..done].fill(old);
                (*split).done = done as u32;
            }
        }
    }

    /// Reverts [`undo`](Self::undo): the split's tails back to their `done` prefix (and the
    /// count back to `done`, its value before the undo), then the same swaps in the other order,
    /// so that refused bytes are exactly as they were.
    fn unrecover(&self, done: u32) {
        let h = self.h();
        let pool = self.pool_mut();
        let state = self.journal_state();
        // SAFETY: as in `undo`, which ran just before over the same, unchanged journal.
        unsafe {
            let split = (*h).split;
            if state & JOURNAL_SPLIT != 0 && split.count > 0 {
                let start = split.idx as usize;
                let new = range_values(state).1;
                pool.meta[start..start + split.done as usize].fill(new);
            }
            addr_of_mut!((*h).split.done).write(done);
            for i in 0..((state & N_META) >> N_META_SHIFT) as usize {
                let e = addr_of_mut!((*h).meta_undo[i]);
                let idx = (*e).idx as usize;
                core::mem::swap(&mut pool.meta[idx], &mut (*e).old);
            }
        }
    }

    /// Rolls back the journaled operation: its metadata undone, checked, and the free lists
    /// rebuilt from it. Metadata that does not describe whole blocks is put back as it was
    /// (nothing written) and refused.
    fn roll_back(&self) -> Result<(), Corruption> {
        // SAFETY: the header is readable; the lock is held (or the bytes are exclusive).
        let done = unsafe { (*self.h()).split.done };
        self.undo();
        if let Err(c) = self.pool_ref().check_blocks(true) {
            self.unrecover(done);
            return Err(c);
        }
        self.relist();
        Ok(())
    }

    /// After [`undo`](Self::undo), with metadata that describes whole blocks: drops the
    /// journal's entries (a process killed from here on must not undo them again: the undo
    /// swapped them with the values they replaced), keeping its valid bit until the caller
    /// clears it, and lists every free block anew.
    fn relist(&self) {
        fence(Ordering::Release);
        let state = self.state_word();
        state.store(
            state.load(Ordering::Relaxed)
                & !(JOURNAL_SPLIT | JOURNAL_FORGET | JOURNAL_ADMIT | N_META),
            Ordering::Release,
        );
        fence(Ordering::Release);
        self.rebuild();
    }

    /// Lists every free block anew from the metadata alone, which describes whole blocks
    /// ([`Pool::check_blocks`] passed): each order's free heads appended in increasing pfn order,
    /// the free page count recounted. With links in the pages, the first bytes of every page
    /// of each free block are cleared first (a split undone leaves links in its other pages,
    /// and a block that ends up a list's tail keeps none there: see `FreeLists`).
    fn rebuild(&self) {
        let pool = self.pool_mut();
        *pool.free.ends_mut() = ListEnds::EMPTY;
        let (n, ps) = (pool.geo.nr_pages, pool.geo.page_size);
        let mut idx = 0u32;
        while idx < n {
            let m = pool.meta[idx as usize];
            if m.is_absent() {
                // Not the pool's (never admitted, or reclaimed): on no list.
                idx += 1;
                continue;
            }
            let order = u32::from(m.order);
            let size = 1u32 << order;
            if m.refcount == 0 {
                if L::IN_PAGE_BYTES > 0 {
                    for page in idx..idx + size {
                        pool.free.links.clear(&mut pool.arena, ps, page);
                    }
                }
                // The tail it reads was written just before: the append cannot fail.
                let _ = pool.free.append(&mut pool.arena, idx, order);
            }
            idx += size;
        }
        self.store_free_pages();
    }

    /// Recovery at open: roll back, check, and either keep the result or refuse with the bytes
    /// as they were.
    fn recover_checked(&self) -> Result<(), LayoutError> {
        self.roll_back()?;
        self.pool_ref().check()?;
        Ok(())
    }

    /// Zeroes the scratch byte of every page, if a batch was counting in them.
    fn clear_scratch(&self) {
        if self.journal_state() & SCRATCH != 0 {
            for m in self.pool_mut().meta.iter_mut() {
                m.batch = 0;
            }
        }
    }

    /// Ends a recovery: the state word cleared, which is the point where the recovered state
    /// becomes the pool's.
    fn end_recovery(&self) {
        fence(Ordering::Release);
        self.state_word().store(0, Ordering::Release);
    }
}

/// The journal of one operation, as the policy fills it ([`Plan`]): the old metadata of each
/// page it will change into the header's undo entries (and, for a split, its tails), then the
/// valid bit with their count.
struct Journal {
    hdr: NonNull<Header>,
    n: usize,
    /// A split's tails, `(first, count)`, which go from `(0, NO_ORDER)` to `(1, 0)` (or, with
    /// `kind`, as `range_values` says).
    split: Option<(u32, u32)>,
    /// `JOURNAL_FORGET` or `JOURNAL_ADMIT` for a reclaim's or an admit's range, else 0.
    kind: u32,
    begun: bool,
}

impl Journal {
    fn new<'a, L: SharedLinks<'a>>(shared: &SharedPool<'a, L>) -> Self {
        Journal {
            hdr: shared.hdr,
            n: 0,
            split: None,
            kind: 0,
            begun: false,
        }
    }
}

impl Plan for Journal {
    #[inline(always)]
    fn note(&mut self, idx: u32, old: PageMeta) {
        if self.n < META_UNDO {
            // SAFETY: the header is valid for the pool's life and the lock is held, so no one
            // else writes the journal; `n < META_UNDO`.
            unsafe {
                addr_of_mut!((*self.hdr.as_ptr()).meta_undo[self.n]).write(MetaUndo { idx, old })
            };
            self.n += 1;
        }
    }

    #[inline(always)]
    fn begin(&mut self) {
        let mut journal = JOURNAL_VALID | ((self.n as u32) << N_META_SHIFT & N_META);
        if let Some((idx, count)) = self.split {
            // SAFETY: as in `note`.
            unsafe {
                addr_of_mut!((*self.hdr.as_ptr()).split).write(SplitUndo {
                    idx,
                    count,
                    done: 0,
                })
            };
            journal |= JOURNAL_SPLIT | self.kind;
        }
        fence(Ordering::Release);
        // SAFETY: as for the pool's state word (`SharedPool::state_word`).
        let state = unsafe { AtomicU32::from_ptr(addr_of_mut!((*self.hdr.as_ptr()).state)) };
        state.store(state.load(Ordering::Relaxed) | journal, Ordering::Release);
        fence(Ordering::Release);
        self.begun = true;
        crash_point(false);
    }
}

/// The lock of a [`SharedPool`], held: the pool's operations, each journaled and committed on
/// its own. Read-only queries ([`Pool::page`], [`Pool::free_list`], [`Pool::check`], ...) come
/// through `Deref`. The lock is released on drop.
pub struct SharedGuard<'s, 'a, L: SharedLinks<'a>> {
    shared: &'s SharedPool<'a, L>,
    owner: u32,
    damage: Option<LayoutError>,
    /// Whether `DerefMut` marked an unjournaled operation in the state word, which the drop
    /// commits.
    unjournaled: bool,
    /// The owner slot + 1 that the references taken are accounted to (0: none).
    acct: u16,
}

impl<'a, L: SharedLinks<'a>> core::ops::Deref for SharedGuard<'_, 'a, L> {
    type Target = Pool<'a, InHeader<'a, L>>;
    fn deref(&self) -> &Self::Target {
        self.shared.pool_ref()
    }
}

/// Mutable access to the policy for operations that the journal does not cover: the state word
/// marks one in progress until the guard drops, and a process killed inside it leaves a pool
/// that recovery refuses as corrupt rather than guesses at. Every operation of the guard's own
/// (`alloc`, `put`, `get`, `split`, `alloc_many`, `put_many`, `alloc_exact`) is journaled, or
/// is one store that needs no journal.
impl<'a, L: SharedLinks<'a>> core::ops::DerefMut for SharedGuard<'_, 'a, L> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.unjournaled = true;
        let state = self.shared.state_word();
        state.store(
            state.load(Ordering::Relaxed) | UNJOURNALED,
            Ordering::Release,
        );
        fence(Ordering::Release);
        self.shared.pool_mut()
    }
}

impl<'a, L: SharedLinks<'a>> Drop for SharedGuard<'_, 'a, L> {
    #[inline(always)]
    fn drop(&mut self) {
        if self.unjournaled {
            self.commit_unjournaled();
        }
        self.shared.lock_word().unlock(self.owner);
    }
}

/// A [`SharedGuard`] taken under an [`OuterLock`] ([`SharedPool::lock_outer`]): dereferences to
/// it; on drop, releases the owner word and then the outer lock.
pub struct OuterGuard<'s, 'a, L: SharedLinks<'a>, O: OuterLock> {
    guard: core::mem::ManuallyDrop<SharedGuard<'s, 'a, L>>,
    outer: &'s O,
    died: bool,
}

impl<'a, L: SharedLinks<'a>, O: OuterLock> OuterGuard<'_, 'a, L, O> {
    /// Whether the outer lock's last holder died holding it (its owner's references are
    /// reclaimed once it is found dead: [`SharedGuard::reclaim_dead`]).
    pub fn taken_from_dead(&self) -> bool {
        self.died
    }
}

impl<'s, 'a, L: SharedLinks<'a>, O: OuterLock> core::ops::Deref for OuterGuard<'s, 'a, L, O> {
    type Target = SharedGuard<'s, 'a, L>;
    fn deref(&self) -> &Self::Target {
        &self.guard
    }
}

impl<'a, L: SharedLinks<'a>, O: OuterLock> core::ops::DerefMut for OuterGuard<'_, 'a, L, O> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.guard
    }
}

impl<'a, L: SharedLinks<'a>, O: OuterLock> Drop for OuterGuard<'_, 'a, L, O> {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: dropped once, here; the field is not used afterwards.
        unsafe { core::mem::ManuallyDrop::drop(&mut self.guard) };
        self.outer.release();
    }
}

impl<'s, 'a, L: SharedLinks<'a>> SharedGuard<'s, 'a, L> {
    fn journal_state(&self) -> u32 {
        self.shared.journal_state()
    }

    /// The pool this guard holds.
    pub(crate) fn shared(&self) -> &'s SharedPool<'a, L> {
        self.shared
    }

    /// The owner slot + 1 the references are accounted to (0: none).
    #[inline(always)]
    pub(crate) fn acct(&self) -> u16 {
        self.acct
    }

    pub(crate) fn set_acct(&mut self, acct: u16) {
        self.acct = acct;
    }

    /// `Err` while the pool is damaged.
    pub(crate) fn usable_now(&self) -> Result<(), Error> {
        self.usable()
    }

    /// A `get` of one store, unaccounted.
    pub(crate) fn plain_get(&mut self, pfn: u64) -> Result<(), Error> {
        let r = self.shared.pool_mut().get(pfn);
        self.end(false, r)
    }

    /// A `put` of one of several references: one store, unaccounted.
    pub(crate) fn plain_put(&mut self, pfn: u64) -> Result<(), Error> {
        let mut journal = Journal::new(self.shared);
        let r = self.shared.pool_mut().put_planned(pfn, &mut journal);
        self.end(journal.begun, r)
    }

    /// Why the operation a dead holder left half done could not be rolled back, if so.
    pub fn damage(&self) -> Option<LayoutError> {
        self.damage
    }

    /// `Err` while the pool is damaged (see [`damage`](Self::damage)).
    fn usable(&self) -> Result<(), Error> {
        match self.damage {
            None => Ok(()),
            Some(_) => Err(Error::Corrupted(Corruption {
                kind: CorruptionKind::Journal,
                pfn: self.shared.pool_ref().geo.base_pfn,
            })),
        }
    }

    /// Rolls back the operation that a dead holder left half done (if its journal is valid: its
    /// metadata undone, then every free list rebuilt from the metadata), clears a batch's
    /// scratch counts and the journal. Refuses, changing nothing, a journal that names pages
    /// outside the pool or that covers an operation it cannot undo, and undone metadata that
    /// does not describe whole blocks. A recovery stopped part way (its process killed too) is
    /// finished by the next one.
    pub fn recover(&mut self) -> Result<(), LayoutError> {
        let s = self.shared;
        s.journal_in_range()?;
        if s.journal_state() & ACCOUNTING != 0 {
            s.swap_accounting();
        } else if s.journal_state() & JOURNAL_VALID != 0 {
            s.roll_back()?;
        }
        s.clear_scratch();
        s.end_recovery();
        Ok(())
    }

    /// [`recover`](Self::recover), out of the way of the lock's fast path.
    #[cold]
    #[inline(never)]
    fn recover_cold(&mut self) -> Option<LayoutError> {
        self.recover().err()
    }

    /// Completes an operation: writes the free page count into the header and then, in one
    /// store, clears `flags` from the state word (the journal's bits, or `UNJOURNALED`): the
    /// commit point.
    #[inline(always)]
    fn commit(&mut self, flags: u32) {
        self.shared.store_free_pages();
        fence(Ordering::Release);
        crash_point(false);
        let state = self.shared.state_word();
        state.store(state.load(Ordering::Relaxed) & !flags, Ordering::Release);
        crash_point(true);
    }

    /// Commits what was done through `DerefMut`, unless the pool is damaged.
    #[cold]
    #[inline(never)]
    fn commit_unjournaled(&mut self) {
        if self.damage.is_none() {
            self.commit(UNJOURNALED);
        }
    }

    /// Ends a journaled operation that failed (corruption found halfway: every other error comes
    /// before the journal begins): the metadata is put back as it was and the lists rebuilt
    /// from it, or, where that metadata does not describe whole blocks (the pool was corrupt
    /// before), left with the lists as they are for `check` to report.
    #[cold]
    #[inline(never)]
    fn abort(&mut self) {
        let s = self.shared;
        s.undo();
        if s.pool_ref().check_blocks(true).is_ok() {
            s.relist();
        }
        fence(Ordering::Release);
        let state = s.state_word();
        state.store(state.load(Ordering::Relaxed) & !JOURNAL, Ordering::Release);
    }

    #[inline(always)]
    fn finish<T>(&mut self, r: Result<T, Error>) -> Result<T, Error> {
        match r {
            Ok(v) => {
                self.commit(JOURNAL);
                Ok(v)
            }
            Err(e) => {
                self.abort();
                Err(e)
            }
        }
    }

    /// [`Pool::alloc`], journaled: the policy tells the journal the metadata it will change
    /// (the head it takes and the head of each half it splits off) before it writes.
    pub fn alloc(&mut self, order: u32) -> Result<u64, Error> {
        self.usable()?;
        let mut journal = Journal::new(self.shared);
        let r = self.shared.pool_mut().alloc_planned(order, &mut journal);
        if let Ok(pfn) = r {
            // Before the commit: rolled back, the block is free and its tag means nothing.
            self.tag_taken((pfn - self.shared.pool_ref().geo.base_pfn) as u32);
        }
        self.end(journal.begun, r)
    }

    /// [`Pool::put`], journaled when it frees the block: the policy tells the journal the
    /// metadata it will change (the page's and each free buddy's it merges with) before it
    /// writes. Dropping one of several references is one store of the refcount, and a `pfn`
    /// that is not held fails before anything changes: neither needs the journal.
    pub fn put(&mut self, pfn: u64) -> Result<(), Error> {
        self.usable()?;
        let pool = self.shared.pool_ref();
        if let Some(idx) = pool.geo.index(pfn) {
            let m = pool.meta[idx as usize];
            if m.refcount > 1 {
                return self.put_accounted(pfn, idx, m);
            }
        }
        let mut journal = Journal::new(self.shared);
        let r = self.shared.pool_mut().put_planned(pfn, &mut journal);
        self.end(journal.begun, r)
    }

    /// Ends an operation: committed or rolled back if its journal was begun, else (one store,
    /// or an error before any) done as it is.
    #[inline(always)]
    fn end<T>(&mut self, begun: bool, r: Result<T, Error>) -> Result<T, Error> {
        if begun {
            self.finish(r)
        } else {
            crash_point(true);
            r
        }
    }

    /// [`Pool::get`]: one store of the refcount (or an error that changes nothing), which a
    /// killed process leaves done or not done, so the journal is not needed.
    pub fn get(&mut self, pfn: u64) -> Result<(), Error> {
        self.usable()?;
        let (idx, m) = self.shared.pool_ref().held(pfn)?;
        self.get_accounted(pfn, idx, m)
    }

    /// [`Pool::split`], journaled: the head's metadata, and its tails, which must all be
    /// `(0, NO_ORDER)` as every tail is (else the pool is corrupt and nothing changes).
    pub fn split(&mut self, pfn: u64) -> Result<(), Error> {
        self.usable()?;
        let pool = self.shared.pool_ref();
        let (idx, m) = pool.held(pfn)?;
        let order = pool.block_order(idx, m)?;
        let tails = (1u32 << order) - 1;
        let start = idx as usize + 1;
        let Some(range) = pool.meta.get(start..start + tails as usize) else {
            return Err(pool.corrupt(CorruptionKind::BadHead, idx));
        };
        if let Some(bad) = range
            .iter()
            .position(|t| t.refcount != 0 || t.order != NO_ORDER)
        {
            return Err(pool.corrupt(CorruptionKind::BadTail, idx + 1 + bad as u32));
        }
        let mut journal = Journal::new(self.shared);
        journal.note(idx, m);
        journal.split = Some((idx + 1, tails));
        journal.begin();
        let r = self.shared.pool_mut().split(pfn);
        if r.is_ok() {
            // Before the commit: rolled back, the tails are no pages' heads.
            for t in idx + 1..idx + 1 + tails {
                self.tag_taken(t);
            }
        }
        self.finish(r)
    }

    /// [`Pool::admit`], journaled: the head, the range of its tails (which go from `ABSENT` to
    /// `INIT`) and each free buddy it merges with, before anything is written. A process killed
    /// inside it leaves the block not the pool's again once recovered.
    pub fn admit(&mut self, pfn: u64, order: u32) -> Result<(), Error> {
        self.usable()?;
        let idx = self.shared.pool_ref().check_admit(pfn, order)?;
        let mut journal = Journal::new(self.shared);
        journal.split = Some((idx + 1, (1u32 << order) - 1));
        journal.kind = JOURNAL_ADMIT;
        let r = self
            .shared
            .pool_mut()
            .admit_planned(pfn, order, &mut journal);
        self.end(journal.begun, r)
    }

    /// [`Pool::reclaim`], journaled: the allocation's head and halves, and the range of the
    /// block's tails (which go from `INIT` to `ABSENT`), before anything is written. A process
    /// killed inside it leaves the block free in the pool once recovered.
    pub fn reclaim(&mut self, order: u32) -> Result<u64, Error> {
        self.usable()?;
        let pool = self.shared.pool_ref();
        pool.check_reclaim(order, 1)?;
        // The block `alloc(order)` takes: the head of the first non-empty list at or above it.
        let found = order + (pool.free.ends().mask >> order).trailing_zeros();
        let head = pool
            .free
            .first(found)?
            .ok_or(pool.corrupt(CorruptionKind::Count, 0))?;
        let mut journal = Journal::new(self.shared);
        journal.split = Some((head + 1, (1u32 << order) - 1));
        journal.kind = JOURNAL_FORGET;
        let r = self.shared.pool_mut().reclaim_planned(order, &mut journal);
        self.end(journal.begun, r)
    }

    /// [`Pool::reclaim_many`], as that many journaled reclaims: the same blocks in the same
    /// order, all checked first (a process killed part way has reclaimed those so far).
    pub fn reclaim_many(&mut self, order: u32, out: &mut [u64]) -> Result<(), Error> {
        self.usable()?;
        let pool = self.shared.pool_ref();
        pool.check_reclaim(order, out.len() as u64)?;
        pool.check_alloc_many(order, out.len() as u64)?;
        for slot in out.iter_mut() {
            *slot = self.reclaim(order)?;
        }
        Ok(())
    }

    /// [`Pool::alloc_many`], as that many journaled allocations: the same blocks in the same
    /// order, and all or nothing on an error (the blocks taken are put back if one fails). A
    /// process killed part way holds the blocks allocated so far (until its owner is reclaimed:
    /// see [`crate::owners`]).
    pub fn alloc_many(&mut self, order: u32, out: &mut [u64]) -> Result<(), Error> {
        self.usable()?;
        let pool = self.shared.pool_ref();
        let max_order = pool.geo.max_order;
        if order >= max_order {
            return Err(Error::InvalidOrder { order, max_order });
        }
        if pool.capacity(order) < out.len() as u64 {
            return Err(Error::OutOfMemory { order });
        }
        // Every block the allocations will unlink, checked before the first: none can meet a
        // corrupt list after the batch has begun.
        pool.check_alloc_many(order, out.len() as u64)?;
        for i in 0..out.len() {
            match self.alloc(order) {
                Ok(pfn) => out[i] = pfn,
                Err(e) => {
                    for &pfn in out[..i].iter().rev() {
                        let _ = self.put(pfn);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// [`Pool::put_many`], journaled: every element is first checked as `put` would check it
    /// (counting the batch's references to each page in the metadata's scratch byte, which
    /// recovery clears), and then each is put as one journaled [`put`](Self::put). An error
    /// changes nothing; a process killed part way has put a prefix of `pfns`, and holds the
    /// rest.
    pub fn put_many(&mut self, pfns: &[u64]) -> Result<(), BatchError> {
        self.usable()
            .map_err(|error| BatchError { index: 0, error })?;
        let state = self.shared.state_word();
        state.store(state.load(Ordering::Relaxed) | SCRATCH, Ordering::Release);
        fence(Ordering::Release);
        let counted = self
            .count_references(pfns)
            .and_then(|()| self.check_frees(pfns));
        let pool = self.shared.pool_mut();
        for &pfn in pfns {
            if let Some(m) = pool
                .geo
                .index(pfn)
                .and_then(|i| pool.meta.get_mut(i as usize))
            {
                m.batch = 0;
            }
        }
        fence(Ordering::Release);
        state.store(state.load(Ordering::Relaxed) & !SCRATCH, Ordering::Release);
        counted?;
        for (index, &pfn) in pfns.iter().enumerate() {
            self.put(pfn).map_err(|error| BatchError { index, error })?;
        }
        Ok(())
    }

    /// The first pass of [`put_many`](Self::put_many): the first element that `put` one by one
    /// would refuse, counting in each page's scratch byte how many of the batch's puts it has
    /// taken so far (past 255, by counting the earlier elements).
    fn count_references(&mut self, pfns: &[u64]) -> Result<(), BatchError> {
        let pool = self.shared.pool_mut();
        for (index, &pfn) in pfns.iter().enumerate() {
            let fail = |error| Err(BatchError { index, error });
            let (idx, m) = match pool.held(pfn) {
                Ok(found) => found,
                Err(error) => return fail(error),
            };
            let taken = match m.batch {
                u8::MAX => pfns[..index].iter().filter(|&&p| p == pfn).count(),
                b => usize::from(b),
            };
            if taken >= usize::from(m.refcount) {
                return fail(Error::NotHeld { pfn });
            }
            if taken + 1 == usize::from(m.refcount) {
                if let Err(error) = pool.block_order(idx, m) {
                    return fail(error);
                }
            }
            let b = &mut pool.meta[idx as usize].batch;
            *b = b.saturating_add(1);
        }
        Ok(())
    }

    /// The second pass of [`put_many`](Self::put_many), with the batch's references counted:
    /// every free-list link that the puts freeing a block will read, checked before the first
    /// put (see `Pool::check_merges`), so that none of them can meet corruption part way. A page
    /// is freed by the batch when it counts all its references (or more than the count holds:
    /// checked as if it were).
    fn check_frees(&self, pfns: &[u64]) -> Result<(), BatchError> {
        let pool = self.shared.pool_ref();
        let freed = |m: PageMeta| {
            m.refcount > 0 && (m.batch == u8::MAX || u16::from(m.batch) == m.refcount)
        };
        let mut first = None;
        for (index, &pfn) in pfns.iter().enumerate() {
            let Some(m) = pool.geo.index(pfn).map(|i| (i, pool.meta[i as usize])) else {
                continue;
            };
            if !freed(m.1) {
                continue;
            }
            first.get_or_insert(index);
            pool.check_merges(m.0, u32::from(m.1.order), |b| freed(b).then_some(true))
                .map_err(|error| BatchError { index, error })?;
        }
        match first {
            Some(index) => pool
                .check_tails(pool.geo.max_order)
                .map_err(|error| BatchError { index, error }),
            None => Ok(()),
        }
    }

    /// [`Pool::alloc_exact`], journaled: the same run, as one journaled [`alloc`](Self::alloc)
    /// of the smallest block that holds it, one journaled [`split`](Self::split) and one
    /// journaled [`put`](Self::put) of each page past the run. Errors change nothing; a process
    /// killed part way holds the block (or the run and the pages past it not yet put).
    pub fn alloc_exact(&mut self, nr_pages: u64) -> Result<u64, Error> {
        self.usable()?;
        let pool = self.shared.pool_ref();
        let max_pages = pool.max_run();
        if nr_pages == 0 || nr_pages > max_pages {
            return Err(Error::InvalidRun {
                nr_pages,
                max_pages,
            });
        }
        let order = crate::exact::run_order(nr_pages);
        for k in 0..order {
            pool.free.check_append(&pool.arena, k)?;
        }
        // The block the allocation unlinks, checked before its journal begins.
        pool.check_alloc_many(order, 1)?;
        let pfn = self.alloc(order)?;
        self.split(pfn)?;
        let geo = self.shared.pool_ref().geo;
        let head = (pfn - geo.base_pfn) as u32;
        for idx in head + nr_pages as u32..head + (1 << order) {
            self.put(geo.pfn(idx))?;
        }
        Ok(pfn)
    }
}

/// The owner table and tags of the pool at `ptr` with `slots` slots and `n` pages.
///
/// # Safety
/// The bytes at `ptr` hold the header, the table and the tags (`owner_regions`).
unsafe fn owners_at(ptr: NonNull<u8>, slots: u32, n: u32) -> Owners {
    let (owners_off, tags_off) = owner_regions(slots);
    // SAFETY: the caller's contract; both offsets are inside the bytes and aligned (64, and
    // the table's size is a multiple of 8).
    unsafe {
        Owners::new(
            NonNull::new_unchecked(ptr.as_ptr().add(owners_off)),
            slots,
            NonNull::new_unchecked(ptr.as_ptr().add(tags_off)),
            n,
        )
    }
}

/// The zero policy's code in the header.
fn zero_code(z: ZeroPolicy) -> u32 {
    match z {
        ZeroPolicy::OnFree => 0,
        ZeroPolicy::OnAlloc => 1,
        ZeroPolicy::Never => 2,
    }
}

/// The metadata, links and arena regions of the bytes at `ptr`.
///
/// # Safety
/// The regions lie inside bytes valid for reads and writes for `'a`, and are accessed only under
/// the pool's lock (or exclusively).
unsafe fn carve<'a, L: SharedLinks<'a>>(
    ptr: NonNull<u8>,
    meta_off: usize,
    links_off: usize,
    pages_off: usize,
    n: usize,
    page_size: usize,
) -> Result<(&'a mut [PageMeta], L, Arena<'a>), LayoutError> {
    let p = ptr.as_ptr();
    // SAFETY: the caller's contract; the three regions are disjoint (regions() lays them out one
    // after the other).
    unsafe {
        let meta = core::slice::from_raw_parts_mut(p.add(meta_off), links_off - meta_off);
        let links = core::slice::from_raw_parts_mut(p.add(links_off), pages_off - links_off);
        let arena = Arena::from_raw(NonNull::new_unchecked(p.add(pages_off)), n * page_size);
        Ok((meta_from_bytes(meta, n)?, L::over(links, n)?, arena))
    }
}

/// A crash point: a step of an operation where a process killed at that instant leaves a state
/// that recovery must handle (`committed`: right after a commit). Nothing happens here but in
/// this crate's tests (which copy the bytes there) and with the `crash-points` feature (which
/// may end the process there: `crash_points::arm`).
#[inline(always)]
pub(crate) fn crash_point(committed: bool) {
    #[cfg(test)]
    tests_hook::run(committed);
    #[cfg(all(feature = "crash-points", target_has_atomic = "ptr"))]
    crash_points::reached();
    let _ = committed;
}

/// Crash points for tests outside this crate (feature `crash-points`): a test process arms a
/// countdown, and the crash point where it runs out calls the test's action, which ends the
/// process between two steps of an operation (as SIGKILL at that instant would).
///
/// ```
/// # #[cfg(feature = "crash-points")] {
/// use pagebuddy::{crash_points, Config, SharedPool, SideTable};
///
/// static HIT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// let mut words = vec![0u64; (64 << 10) / 8];
/// // SAFETY: u64s have no padding; the byte view covers exactly their memory.
/// let bytes: &mut [u8] =
///     unsafe { core::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), words.len() * 8) };
/// let n = pagebuddy::pages_that_fit(bytes.len(), 256, false);
/// let pool = SharedPool::<SideTable>::create_in(bytes, Config::new(n).page_size(256), 1).unwrap();
/// // A real test would end the process; this action only notes that the point was reached.
/// crash_points::arm(1, || HIT.store(true, std::sync::atomic::Ordering::Relaxed));
/// pool.lock().alloc(0).unwrap(); // its first crash point: the journal just written
/// assert!(HIT.load(std::sync::atomic::Ordering::Relaxed));
/// # }
/// ```
#[cfg(all(feature = "crash-points", target_has_atomic = "ptr"))]
pub mod crash_points {
    use core::sync::atomic::{AtomicPtr, AtomicU32, Ordering};

    static LEFT: AtomicU32 = AtomicU32::new(0);
    static ACTION: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());

    /// Makes the `n`th crash point from now (1: the next), in any shared pool of this process,
    /// call `action`; 0 disarms. If `action` returns, the operation goes on as if nothing
    /// happened.
    pub fn arm(n: u32, action: fn()) {
        ACTION.store(action as *mut (), Ordering::Relaxed);
        LEFT.store(n, Ordering::Release);
    }

    pub(crate) fn reached() {
        if LEFT.load(Ordering::Relaxed) != 0 && LEFT.fetch_sub(1, Ordering::AcqRel) == 1 {
            let p = ACTION.load(Ordering::Acquire);
            if !p.is_null() {
                // SAFETY: ACTION only ever holds a `fn()` that `arm` stored, cast to a pointer
                // of the same size.
                let action = unsafe { core::mem::transmute::<*mut (), fn()>(p) };
                action();
            }
        }
    }
}

/// Test-only crash points: a hook called between the steps of an operation.
#[cfg(test)]
pub(crate) mod tests_hook {
    use std::boxed::Box;
    use std::cell::RefCell;

    type Hook = Box<dyn FnMut(bool)>;

    std::thread_local! {
        static HOOK: RefCell<Option<Hook>> = const { RefCell::new(None) };
    }

    /// Runs `hook` at every crash point until `clear`; its argument says whether the point
    /// follows a commit (the state there is one a completed step of the operation left).
    pub(crate) fn set(hook: impl FnMut(bool) + 'static) {
        HOOK.with(|h| *h.borrow_mut() = Some(Box::new(hook)));
    }

    pub(crate) fn clear() {
        HOOK.with(|h| *h.borrow_mut() = None);
    }

    pub(crate) fn run(committed: bool) {
        HOOK.with(|h| {
            if let Some(f) = h.borrow_mut().as_mut() {
                f(committed);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    const PS: usize = 64;

    /// Where the metadata of a pool of `n` pages starts (default owner slots).
    fn meta_offset(n: usize) -> usize {
        regions(n, PS, false, DEFAULT_OWNER_SLOTS).unwrap().0
    }

    /// 8-aligned bytes.
    fn buffer(len: usize) -> Vec<u64> {
        vec![0u64; len.div_ceil(8)]
    }

    fn bytes(v: &mut [u64]) -> &mut [u8] {
        // SAFETY: u64 has no padding; the byte view covers exactly the vector's memory.
        unsafe { core::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), v.len() * 8) }
    }

    fn config(bytes: usize, intrusive: bool) -> Config {
        Config::new(pages_that_fit(bytes, PS, intrusive))
            .page_size(PS)
            .base_pfn(3)
            .reserved_pages(1)
    }

    #[test]
    fn create_attach_and_operate() {
        let mut v = buffer(32 << 10);
        let b = bytes(&mut v);
        let cfg = config(b.len(), false);
        let pfn = {
            let pool = SharedPool::<SideTable>::create_in(b, cfg, 7).unwrap();
            let mut g = pool.lock();
            let pfn = g.alloc(2).unwrap();
            g.get(pfn).unwrap();
            g.check().unwrap();
            pfn
        };
        let pool = SharedPool::<SideTable>::attach(bytes(&mut v), 9).unwrap();
        let mut g = pool.lock();
        assert_eq!(g.refcount(pfn).unwrap(), 2);
        g.put(pfn).unwrap();
        g.put(pfn).unwrap();
        assert_eq!(g.free_pages(), cfg.nr_pages as u32 - 1);
        g.check().unwrap();
        assert_eq!(g.put(pfn), Err(Error::NotHeld { pfn }));
        drop(g);
        assert!(SharedPool::<Intrusive>::attach(bytes(&mut v), 9).is_err());
    }

    /// Corruption found after the journal began (a broken link of the block an allocation
    /// takes): the call fails, the metadata is as it was, and the free lists are listed anew
    /// from it, so the pool passes `check()` and goes on allocating.
    #[test]
    fn corruption_found_halfway_is_rolled_back() {
        let len = 32 << 10;
        let mut v = buffer(len);
        let base = bytes(&mut v).as_mut_ptr();
        // SAFETY (each call): a view of the live buffer's `len` bytes, used while no guard is
        // held (the pool only reaches them under its lock).
        let view = move || unsafe { core::slice::from_raw_parts_mut(base, len) };
        let cfg = config(len, false);
        let n = cfg.nr_pages;
        let (meta_off, links_off, ..) = regions(n, PS, false, DEFAULT_OWNER_SLOTS).unwrap();
        let pool = SharedPool::<SideTable>::create_in(bytes(&mut v), cfg, 1).unwrap();
        let (head, free) = {
            let mut g = pool.lock();
            // Two order-0 blocks on list 0, whose buddies are held: the first one's link is
            // read when the next `alloc(0)` takes it (a block alone on its list has none).
            let pages: [u64; 4] = core::array::from_fn(|_| g.alloc(0).unwrap());
            g.put(pages[0]).unwrap();
            g.put(pages[2]).unwrap();
            // The block the next `alloc(0)` takes: the head of the first non-empty list.
            let found = (0..g.geo.max_order)
                .find(|&k| g.free_list(k).next().is_some())
                .unwrap();
            let head = g.free_list(found).next().unwrap() - g.geo.base_pfn;
            (head as usize, g.free_pages())
        };
        let meta_before = view()[meta_off..meta_off + 4 * n].to_vec();
        // Its `prev` link out of range.
        let at = links_off + 8 * head;
        view()[at..at + 4].copy_from_slice(&(n as u32 + 5).to_ne_bytes());
        let mut g = pool.lock();
        let e = g.alloc(0).unwrap_err();
        assert!(matches!(e, Error::Corrupted(c) if c.kind == CorruptionKind::LinkOutOfRange));
        g.check().unwrap();
        assert_eq!(g.free_pages(), free);
        drop(g);
        assert_eq!(view()[meta_off..meta_off + 4 * n], meta_before[..]);
        let mut g = pool.lock();
        let pfn = g.alloc(0).unwrap();
        g.put(pfn).unwrap();
        g.check().unwrap();
    }

    /// A list's head or tail outside the pool (the header's list ends are bytes any process
    /// can write) is corruption: every operation that reads it fails with `LinkOutOfRange`
    /// naming that page and changes nothing, and none panics.
    fn list_ends_outside_the_pool<L: SharedLinks<'static>>(intrusive: bool) {
        let len = 32 << 10;
        for tails in [false, true] {
            for beyond in [0u32, 5, 1 << 20] {
                let v = std::boxed::Box::leak(buffer(len).into_boxed_slice());
                let base = bytes(v).as_mut_ptr();
                // SAFETY (each call): a view of the leaked buffer's `len` bytes, used while no
                // guard is held.
                let view = move || unsafe { core::slice::from_raw_parts_mut(base, len) };
                let cfg = config(len, intrusive).zero(ZeroPolicy::Never);
                let n = cfg.nr_pages;
                let pool = SharedPool::<L>::create_in(bytes(v), cfg, 1).unwrap();
                // A page, and pages up to its buddy, so that a free of the page merges with
                // nothing and reads only a list's tail.
                let held = pool.lock().alloc(0).unwrap();
                while pool.lock().refcount(held ^ 1) == Ok(0) {
                    pool.lock().alloc(0).unwrap();
                }
                let max_order = pool.lock().geo.max_order as usize;
                // Every list's head (or tail) names the same page past the pool's end.
                let bad = n as u32 + beyond;
                let ends =
                    core::mem::offset_of!(Header, ends) + if tails { 4 * MAX_ORDERS } else { 0 };
                for k in 0..max_order {
                    view()[ends + 4 * k..ends + 4 * k + 4].copy_from_slice(&bad.to_ne_bytes());
                }
                // What the calls may not change: the list ends, the metadata, the links and the
                // pages (the lock word and the journal's fields change with every call).
                let (meta_off, ..) = regions(n, PS, intrusive, DEFAULT_OWNER_SLOTS).unwrap();
                let ends_bytes = core::mem::offset_of!(Header, ends)
                    ..core::mem::offset_of!(Header, ends) + core::mem::size_of::<ListEnds>();
                let state = || [&view()[ends_bytes.clone()], &view()[meta_off..]].concat();
                let before = state();
                let out_of_range = Err(Error::Corrupted(Corruption {
                    kind: CorruptionKind::LinkOutOfRange,
                    pfn: 3 + u64::from(bad),
                }));
                let mut g = pool.lock();
                let mut out = [0u64; 2];
                if tails {
                    // A free appends at a list's tail, after any merge.
                    assert_eq!(g.put(held), out_of_range, "{bad}");
                    assert_eq!(g.put_many(&[held]).map_err(|e| e.error), out_of_range);
                } else {
                    // An allocation takes a list's head.
                    assert_eq!(g.alloc(0).map(drop), out_of_range, "{bad}");
                    assert_eq!(g.alloc_many(0, &mut out), out_of_range, "{bad}");
                    assert_eq!(g.reclaim(0).map(drop), out_of_range, "{bad}");
                }
                assert!(g.check().is_err(), "{bad}: check passed");
                drop(g);
                assert!(state() == before, "{bad}: a failed call changed the pool");
            }
        }
    }

    /// The header's mask of the non-empty lists and its free page count (which the pool sums
    /// from the lists' lengths) agree with the lists after every call, and a wrong mask bit is
    /// corruption `check` reports.
    fn header_keeps_mask_and_free_count<L: SharedLinks<'static>>(intrusive: bool) {
        let len = 32 << 10;
        let v = std::boxed::Box::leak(buffer(len).into_boxed_slice());
        let base = bytes(v).as_mut_ptr();
        // SAFETY (each call): a view of the leaked buffer's `len` bytes, used while no guard
        // is held.
        let view = move || unsafe { core::slice::from_raw_parts_mut(base, len) };
        let word = |at: usize| u32::from_ne_bytes(view()[at..at + 4].try_into().unwrap());
        let ends = core::mem::offset_of!(Header, ends);
        let (len_at, mask_at) = (ends + 8 * MAX_ORDERS, ends + 12 * MAX_ORDERS);
        let free_at = core::mem::offset_of!(Header, free_pages);
        let pool = SharedPool::<L>::create_in(bytes(v), config(len, intrusive), 1).unwrap();
        let agrees = |step: &str| {
            let lens: Vec<u32> = (0..MAX_ORDERS).map(|k| word(len_at + 4 * k)).collect();
            let mask = (0..MAX_ORDERS)
                .filter(|&k| lens[k] > 0)
                .fold(0, |m, k| m | 1 << k);
            assert_eq!(word(mask_at), mask, "{step}");
            let free: u32 = (0..MAX_ORDERS).map(|k| lens[k] << k).sum();
            assert_eq!(word(free_at), free, "{step}");
            assert_eq!(pool.lock().free_pages(), free, "{step}");
        };
        agrees("created");
        let mut held = Vec::new();
        for order in [0, 3, 0, 1, 5, 0] {
            held.push(pool.lock().alloc(order).unwrap());
            agrees("alloc");
        }
        let mut out = [0u64; 3];
        pool.lock().alloc_many(0, &mut out).unwrap();
        agrees("alloc_many");
        pool.lock().put_many(&out).unwrap();
        agrees("put_many");
        for pfn in held.into_iter().rev() {
            pool.lock().put(pfn).unwrap();
            agrees("put");
        }
        pool.lock().check().unwrap();
        // A bit for an empty list, then none for a non-empty one.
        let mask = word(mask_at);
        assert!(mask != 0 && mask != u32::MAX);
        for bad in [mask | (!mask & (!mask).wrapping_neg()), mask & (mask - 1)] {
            view()[mask_at..mask_at + 4].copy_from_slice(&bad.to_ne_bytes());
            let e = pool.lock().check().unwrap_err();
            assert_eq!(e.kind, CorruptionKind::Count, "{bad:#x}");
        }
    }

    #[test]
    fn the_header_keeps_its_mask_and_free_count() {
        header_keeps_mask_and_free_count::<SideTable<'static>>(false);
        header_keeps_mask_and_free_count::<Intrusive>(true);
    }

    #[test]
    fn list_ends_outside_the_pool_are_corruption() {
        list_ends_outside_the_pool::<SideTable<'static>>(false);
        list_ends_outside_the_pool::<Intrusive>(true);
    }

    /// Batches that meet a corrupt free list (links in the pages, one written over) fail with
    /// the pool as it was: metadata, pages, lists and counts.
    #[test]
    fn batches_meeting_corruption_change_nothing() {
        let len = 16 << 10;
        let mut v = buffer(len);
        let base = bytes(&mut v).as_mut_ptr();
        let n = pages_that_fit(len, PS, true);
        let cfg = Config::new(n).page_size(PS).zero(ZeroPolicy::Never);
        let meta_off = regions(n, PS, true, DEFAULT_OWNER_SLOTS).unwrap().0;
        let pool = SharedPool::<Intrusive>::create_in(bytes(&mut v), cfg, 1).unwrap();
        let mut g = pool.lock();
        let state = |g: &SharedGuard<'_, '_, Intrusive>| {
            let lists: Vec<Vec<u64>> = (0..g.geo.max_order)
                .map(|k| g.free_list(k).collect())
                .collect();
            // SAFETY: the live buffer's bytes, read while this thread holds the lock.
            let after = unsafe { core::slice::from_raw_parts(base.add(meta_off), len - meta_off) };
            (lists, g.free_pages(), after.to_vec())
        };
        g.alloc_many(0, &mut vec![0; n]).unwrap();
        g.put(16).unwrap();
        g.put(9).unwrap(); // list 0: [16, 9]
        let junk = g.page_addr(16).unwrap().as_ptr();
        // SAFETY: page 16 of the live pool, free; this is the stray write under test.
        unsafe { core::ptr::write_bytes(junk, 0x5a, 8) };
        let before = state(&g);
        let got = g.put_many(&[0, 8]);
        assert!(
            matches!(
                got,
                Err(BatchError {
                    index: 1,
                    error: Error::Corrupted(_)
                })
            ),
            "{got:?}"
        );
        assert_eq!(state(&g), before);
        // The allocations' turn: list 0's head, page 16, gets a `prev` (page 9, which points
        // back at it): unlinking it would leave the list's head on it, for the second to find.
        // SAFETY: as above, pages 9 and 16 (free), their links written over.
        unsafe {
            core::ptr::write_unaligned(g.page_addr(9).unwrap().as_ptr().cast(), [16u32, 16]);
            core::ptr::write_unaligned(junk.cast(), [9u32, 9]);
        }
        let before = state(&g);
        assert!(matches!(
            g.alloc_many(0, &mut [0; 2]),
            Err(Error::Corrupted(_))
        ));
        assert_eq!(state(&g), before);
    }

    /// Journals that recovery cannot act on, written over a valid image: each is refused and
    /// the bytes are left exactly as they were, the metadata an undo changed put back too.
    #[test]
    fn journals_that_cannot_be_undone_are_refused_untouched() {
        let len = 16 << 10;
        let mut v = buffer(len);
        let cfg = config(len, false);
        let n = cfg.nr_pages as u32;
        let pool = SharedPool::<SideTable>::create_in(bytes(&mut v), cfg, 1).unwrap();
        // A held block of order 2 at `head` (its tails are `head + 1..head + 4`).
        let head = {
            let mut g = pool.lock();
            let pfn = g.alloc(2).unwrap();
            g.alloc(0).unwrap();
            (pfn - g.geo.base_pfn) as usize
        };
        let good: Vec<u8> = bytes(&mut v).to_vec();
        let meta_off = meta_offset(n as usize);
        let word = |img: &mut Vec<u8>, off: usize, value: u32| {
            img[off..off + 4].copy_from_slice(&value.to_ne_bytes());
        };
        let meta = |img: &mut Vec<u8>, idx: usize, m: PageMeta| {
            let at = meta_off + 4 * idx;
            img[at..at + 2].copy_from_slice(&m.refcount.to_ne_bytes());
            img[at + 2] = m.order;
            img[at + 3] = m.batch;
        };
        let (state, split, undo) = (100, 108, 120);
        let valid = |entries: u32| JOURNAL_VALID | entries << N_META_SHIFT;
        let refused = |img: Vec<u8>| {
            let mut w = buffer(len);
            bytes(&mut w).copy_from_slice(&img);
            let r = SharedPool::<SideTable>::attach(bytes(&mut w), 2).map(drop);
            assert!(bytes(&mut w) == &img[..], "refused bytes were written");
            r.unwrap_err()
        };
        let mut cases: Vec<(Vec<u8>, &str)> = Vec::new();
        let mut img = good.clone();
        word(&mut img, state, 0x20);
        cases.push((img, "an unknown state bit"));
        let mut img = good.clone();
        word(&mut img, state, 1 << N_META_SHIFT);
        cases.push((img, "entries without the valid bit"));
        let mut img = good.clone();
        word(&mut img, state, JOURNAL_SPLIT);
        cases.push((img, "a split without the valid bit"));
        let mut img = good.clone();
        word(&mut img, state, valid(META_UNDO as u32 + 1));
        cases.push((img, "more entries than the journal holds"));
        let mut img = good.clone();
        word(&mut img, state, valid(1));
        word(&mut img, undo, n);
        cases.push((img, "an entry past the pool"));
        let mut img = good.clone();
        word(&mut img, state, valid(0) | JOURNAL_SPLIT);
        word(&mut img, split, n - 1);
        word(&mut img, split + 4, 2);
        cases.push((img, "a split past the pool"));
        let mut img = good.clone();
        word(&mut img, state, valid(0) | JOURNAL_SPLIT);
        word(&mut img, split, head as u32 + 1);
        word(&mut img, split + 4, 3);
        meta(&mut img, head + 2, PageMeta::new(1, 0));
        cases.push((img, "split tails that are not a prefix"));
        for (img, what) in cases {
            assert_eq!(refused(img), LayoutError::Journal, "{what}");
        }
        // Undone metadata that does not describe whole blocks: a head in the middle of the
        // held block, with a split's tails half written (a `done` prefix to put back too).
        let mut img = good.clone();
        word(&mut img, state, valid(1) | JOURNAL_SPLIT);
        word(&mut img, undo, head as u32 + 2);
        meta(&mut img, head, PageMeta::new(1, 0));
        // The entry's old value: a free head of order 1 inside the held block.
        let at = undo + 4;
        img[at..at + 4].copy_from_slice(&[0, 0, 1, 0]);
        word(&mut img, split, head as u32 + 1);
        word(&mut img, split + 4, 3);
        meta(&mut img, head + 1, PageMeta::new(1, 0));
        assert!(matches!(refused(img), LayoutError::Corrupted(_)));
    }

    /// A holder killed inside an operation, found dead by the next `lock`: the lock is taken
    /// over and the operation rolled back, for an allocation and for a split stopped with half
    /// its tails written.
    #[test]
    fn a_lock_taken_from_a_dead_holder_rolls_back() {
        let len = 16 << 10;
        let mut v = buffer(len);
        let base = bytes(&mut v).as_mut_ptr();
        let cfg = config(len, false);
        let n = cfg.nr_pages;
        let meta_off = meta_offset(n);
        let pool = SharedPool::<SideTable>::create_in(bytes(&mut v), cfg, 1).unwrap();
        let pfn = pool.lock().alloc(2).unwrap();
        // SAFETY (each call): a read-only copy of the live buffer between two steps of an
        // operation, as a killed process would leave it.
        let image = move || unsafe { core::slice::from_raw_parts(base, len) }.to_vec();
        let before = image();
        // The bytes right after each operation's journal began (its first crash point).
        let first: std::rc::Rc<std::cell::RefCell<Option<Vec<u8>>>> = Default::default();
        let sink = first.clone();
        tests_hook::set(move |_| {
            sink.borrow_mut().get_or_insert_with(image);
        });
        pool.lock().alloc(0).unwrap();
        let in_alloc = first.borrow_mut().take().unwrap();
        let between = image();
        pool.lock().split(pfn).unwrap();
        let mut in_split = first.borrow_mut().take().unwrap();
        tests_hook::clear();
        // The split wrote its first tail, (1, 0), and was killed.
        let head = (pfn - 3) as usize;
        let at = meta_off + 4 * (head + 1);
        in_split[at..at + 4].copy_from_slice(&[1, 0, 0, 0]);
        for (snap, expect) in [(in_alloc, before), (in_split, between)] {
            let mut w = buffer(len);
            bytes(&mut w).copy_from_slice(&snap);
            {
                let b = bytes(&mut w);
                // SAFETY: `w` outlives the pool and is reached only through it meanwhile.
                let mut p = unsafe {
                    SharedPool::<SideTable>::attach_raw(NonNull::from(&mut *b).cast(), b.len(), 2)
                }
                .unwrap();
                assert_eq!(p.holder(), Some(1));
                p.set_is_dead(|owner| owner == 1);
                let g = p.lock();
                assert_eq!(g.damage(), None);
                g.check().unwrap();
            }
            let m = meta_off..meta_off + 4 * n;
            assert!(
                bytes(&mut w)[m.clone()] == expect[m],
                "the metadata as before"
            );
            assert_eq!(bytes(&mut w)[100..104], [0; 4], "the journal is cleared");
        }
    }

    /// Recovery of a pool that zeroes on free, with links in the pages: links left in the first
    /// bytes of a free block's other pages (as an undone split leaves them) are accepted and
    /// cleared; any other byte set in free memory is refused, the bytes untouched.
    #[test]
    fn recovery_tolerates_only_links_in_free_memory() {
        let len = 16 << 10;
        let mut v = buffer(len);
        let cfg = config(len, true).zero(ZeroPolicy::OnFree);
        let n = cfg.nr_pages;
        let (.., pages_off, _) = regions(n, PS, true, DEFAULT_OWNER_SLOTS).unwrap();
        let pool = SharedPool::<Intrusive>::create_in(bytes(&mut v), cfg, 1).unwrap();
        let tail = {
            let g = pool.lock();
            let k = (1..g.geo.max_order)
                .find(|&k| g.free_list(k).next().is_some())
                .unwrap();
            let head = g.free_list(k).next().unwrap();
            (head - g.geo.base_pfn) as usize + 1
        };
        let mut good: Vec<u8> = bytes(&mut v).to_vec();
        // A valid journal with no entries: recovery checks the blocks and lists them anew. The
        // free page count one off, as a process killed before its commit wrote it leaves it:
        // the rebuild rewrites it, so a recovery refused after it wrote would show.
        good[100..104].copy_from_slice(&JOURNAL_VALID.to_ne_bytes());
        let free = u32::from_ne_bytes(good[104..108].try_into().unwrap());
        good[104..108].copy_from_slice(&(free - 1).to_ne_bytes());
        let page = pages_off + tail * PS;
        let open = |img: &[u8]| {
            let mut w = buffer(len);
            bytes(&mut w).copy_from_slice(img);
            let r = SharedPool::<Intrusive>::attach(bytes(&mut w), 2).map(|p| p.lock().check());
            (r, bytes(&mut w).to_vec())
        };
        let mut img = good.clone();
        img[page + 3] = 0x5a; // where a link would be
        let (r, after) = open(&img);
        assert_eq!(r, Ok(Ok(())));
        assert_eq!(
            after[page..page + PS],
            [0; PS][..],
            "the link bytes are cleared"
        );
        let mut img = good.clone();
        img[page + 40] = 0x5a; // past the link
        let (r, after) = open(&img);
        assert!(
            matches!(r, Err(LayoutError::Corrupted(c)) if c.kind == CorruptionKind::NotZero),
            "{r:?}"
        );
        assert!(after == img, "refused bytes were written");
    }

    #[test]
    fn refused_bytes_are_left_alone() {
        let mut v = buffer(16 << 10);
        let b = bytes(&mut v);
        let cfg = config(b.len(), false);
        let _ = SharedPool::<SideTable>::create_in(b, cfg, 1).unwrap();
        let good: Vec<u8> = bytes(&mut v).to_vec();
        let try_attach = |mut img: Vec<u8>| {
            let mut w = buffer(img.len());
            let b = &mut bytes(&mut w)[..img.len()];
            b.copy_from_slice(&img);
            let r = SharedPool::<SideTable>::attach(b, 1).map(drop);
            if r.is_err() {
                assert_eq!(b, &img[..]);
            }
            img.clear();
            r
        };
        assert_eq!(try_attach(vec![0; 4096]), Err(LayoutError::NotAPool));
        assert!(matches!(
            try_attach(good[..good.len() - 1].to_vec()),
            Err(LayoutError::Truncated { .. })
        ));
        // A version after this build's, and the one before it (version 7: 8 bytes of links in
        // a free page where version 8 keeps 16), are refused alike.
        for found in [LAYOUT_VERSION + 1, LAYOUT_VERSION - 1] {
            let mut other = good.clone();
            other[8] = found as u8;
            assert_eq!(try_attach(other), Err(LayoutError::Version { found }));
        }
        // Every single-byte change of the header's fixed part and of the metadata is refused
        // (or, for bytes no rule reads, accepted), never a panic, never a write.
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..400 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let mut img = good.clone();
            let at = (rng as usize) % (HEADER_BYTES + 2048);
            img[at] ^= (rng >> 40) as u8 | 1;
            let _ = try_attach(img);
        }
    }

    /// A snapshot of the bytes at every crash point of every operation of a workload: each one,
    /// opened, recovers to the state before or after the operation (or, for the calls made of
    /// several journaled steps, `alloc_many`, `put_many` and `alloc_exact`, after one of its
    /// steps), with check() passing and every page free or held.
    macro_rules! crash_everywhere {
        ($L:ty, $zero:expr) => {{
            type L<'x> = $L;
            let zero: ZeroPolicy = $zero;
            let len = 24 << 10;
            let mut v = buffer(len);
            let base = bytes(&mut v).as_mut_ptr();
            let cfg = config(len, L::INTRUSIVE).zero(zero);
            let n = cfg.nr_pages;
            let pool = SharedPool::<L<'_>>::create_in(bytes(&mut v), cfg, 1).unwrap();
            let snaps: std::rc::Rc<std::cell::RefCell<Vec<(Vec<u8>, bool)>>> = Default::default();
            let sink = snaps.clone();
            let mut held: Vec<u64> = Vec::new();
            let mut rng = 12345u64;
            let mut points = 0usize;
            for step in 0..300 {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let r = (rng >> 33) as usize;
                let before: Vec<u8> = {
                    // SAFETY: the pool is not in an operation; we only read.
                    unsafe { core::slice::from_raw_parts(base, len) }.to_vec()
                };
                let free_before = pool.lock().free_pages();
                let sink2 = sink.clone();
                tests_hook::set(move |committed| {
                    // SAFETY: a read-only copy of the bytes at a crash point, as a killed process
                    // would leave them.
                    let img = unsafe { core::slice::from_raw_parts(base, len) }.to_vec();
                    sink2.borrow_mut().push((img, committed));
                });
                let mut g = pool.lock();
                let op = r % 8;
                match op {
                    0 | 1 => {
                        if let Ok(pfn) = g.alloc((r >> 4) as u32 % 4) {
                            held.push(pfn);
                        }
                    }
                    2 if !held.is_empty() => {
                        let pfn = held.swap_remove((r >> 4) % held.len());
                        g.put(pfn).unwrap();
                    }
                    3 if !held.is_empty() => {
                        let pfn = held[(r >> 4) % held.len()];
                        g.get(pfn).unwrap();
                        held.push(pfn);
                    }
                    4 if !held.is_empty() => {
                        let i = (r >> 4) % held.len();
                        let pfn = held[i];
                        if g.refcount(pfn).unwrap() == 1 {
                            let order = g.order(pfn).unwrap().unwrap();
                            g.split(pfn).unwrap();
                            held.extend((1..1u64 << order).map(|t| pfn + t));
                        }
                    }
                    5 => {
                        let mut out = [0u64; 3];
                        let count = 1 + (r >> 4) % 3;
                        if g.alloc_many((r >> 8) as u32 % 3, &mut out[..count]).is_ok() {
                            held.extend_from_slice(&out[..count]);
                        }
                    }
                    6 if !held.is_empty() => {
                        let count = 1 + (r >> 4) % held.len().min(4);
                        let start = held.len() - count;
                        let batch: Vec<u64> = held.drain(start..).collect();
                        g.put_many(&batch).unwrap();
                    }
                    7 => {
                        if let Ok(pfn) = g.alloc_exact(1 + (r >> 4) as u64 % 7) {
                            let n = (1 + (r >> 4) % 7) as u64;
                            held.extend(pfn..pfn + n);
                        }
                    }
                    _ => {}
                }
                g.check().unwrap();
                let free_after = g.free_pages();
                drop(g);
                tests_hook::clear();
                let after: Vec<u8> = unsafe { core::slice::from_raw_parts(base, len) }.to_vec();
                let meta = |img: &[u8]| {
                    let off = meta_offset(n as usize);
                    img[off..off + 4 * n].to_vec()
                };
                // The states a crash may leave: before, after, and after each committed step.
                let mut states = vec![(meta(&before), free_before), (meta(&after), free_after)];
                let snaps = core::mem::take(&mut *snaps.borrow_mut());
                for (snap, committed) in &snaps {
                    if *committed {
                        let mut w = buffer(len);
                        bytes(&mut w).copy_from_slice(snap);
                        let f = SharedPool::<L<'_>>::attach(bytes(&mut w), 3)
                            .unwrap()
                            .lock()
                            .free_pages();
                        states.push((meta(bytes(&mut w)), f));
                    }
                }
                for (snap, _) in snaps {
                    points += 1;
                    let mut w = buffer(len);
                    let b = bytes(&mut w);
                    b.copy_from_slice(&snap);
                    let p = SharedPool::<L<'_>>::attach(b, 2)
                        .unwrap_or_else(|e| panic!("step {step} op {op}: {e}"));
                    let g = p.lock();
                    g.check().unwrap();
                    let f = g.free_pages();
                    drop(g);
                    // Metadata (scratch bytes included) and the free count are exactly those
                    // of one of the states, and check() passed: the links agree with them.
                    let m = meta(bytes(&mut w));
                    assert!(
                        states.iter().any(|(sm, sf)| *sm == m && *sf == f),
                        "step {step} op {op}"
                    );
                }
            }
            assert!(points > 300, "{points} crash points");
        }};
    }

    #[test]
    fn crash_at_every_point_side_table() {
        crash_everywhere!(SideTable<'x>, ZeroPolicy::OnFree);
    }

    #[test]
    fn crash_at_every_point_intrusive() {
        crash_everywhere!(Intrusive, ZeroPolicy::OnAlloc);
    }

    #[test]
    fn crash_at_every_point_intrusive_zero_on_free() {
        // An undone split leaves links in the first bytes of pages that are tails again, which
        // recovery must tolerate and clear: free memory reads as zeros after it.
        crash_everywhere!(Intrusive, ZeroPolicy::OnFree);
    }

    /// An outer lock for tests: always free, and says its last holder died while `died` is set.
    struct DeadOuter(core::cell::Cell<bool>);

    impl OuterLock for DeadOuter {
        type Error = ();
        fn acquire(&self) -> Result<bool, ()> {
            Ok(self.0.replace(false))
        }
        fn release(&self) {}
    }

    /// A holder that died at any crash point of an allocation that splits and of a free that
    /// merges, its owner id left in the word: `lock_outer` (the outer lock saying the holder
    /// died) takes the word over and recovers, and the pool passes check(); `open_outer` over
    /// the same image with metadata that breaks an invariant refuses, every byte as it was.
    #[test]
    fn lock_outer_takes_over_a_dead_holder_at_every_crash_point() {
        let len = 24 << 10;
        let mut v = buffer(len);
        let base = bytes(&mut v).as_mut_ptr();
        let cfg = config(len, false);
        let pool = SharedPool::<SideTable>::create_in(bytes(&mut v), cfg, 1).unwrap();
        pool.lock().alloc(0).unwrap();
        let snaps: std::rc::Rc<std::cell::RefCell<Vec<Vec<u8>>>> = Default::default();
        let sink = snaps.clone();
        // SAFETY (the hook): a read-only copy of the bytes between two steps of an operation.
        tests_hook::set(move |_| {
            sink.borrow_mut()
                .push(unsafe { core::slice::from_raw_parts(base, len) }.to_vec())
        });
        let pfn = pool.lock().alloc(2).unwrap();
        pool.lock().put(pfn).unwrap();
        tests_hook::clear();
        let snaps = core::mem::take(&mut *snaps.borrow_mut());
        assert!(snaps.len() > 4, "{} crash points", snaps.len());
        let meta_off = meta_offset(cfg.nr_pages);
        for snap in &snaps {
            let mut w = buffer(len);
            let b = bytes(&mut w);
            b.copy_from_slice(snap);
            let ptr = NonNull::new(b.as_mut_ptr()).unwrap();
            // SAFETY: the bytes live until the end of the iteration; only this handle uses them.
            let p = unsafe { SharedPool::<SideTable>::attach_raw(ptr, len, 2) }.unwrap();
            assert_eq!(p.holder(), Some(1));
            let outer = DeadOuter(core::cell::Cell::new(true));
            let g = p.lock_outer(&outer, 2).unwrap();
            assert_eq!(g.damage(), None);
            g.check().unwrap();
            drop(g);
            assert_eq!(p.holder(), None);

            let mut w = buffer(len);
            let b = bytes(&mut w);
            b.copy_from_slice(snap);
            b[meta_off + 4 * 7] = 9; // page 7 claims 9 references
            let before = b.to_vec();
            let ptr = NonNull::new(b.as_mut_ptr()).unwrap();
            // SAFETY: as above.
            let p = unsafe { SharedPool::<SideTable>::attach_raw(ptr, len, 2) }.unwrap();
            let outer = DeadOuter(core::cell::Cell::new(true));
            assert!(matches!(p.open_outer(&outer), Ok(Err(_))));
            assert!(bytes(&mut w) == &before[..], "a refused open wrote");
        }
    }

    /// A recovery is itself stopped at each of its crash points (the rebuild of the lists):
    /// recovering what that leaves gives the same pool as the recovery that ran to its end.
    #[test]
    fn a_recovery_stopped_anywhere_recovers_the_same() {
        let len = 24 << 10;
        let mut v = buffer(len);
        let base = bytes(&mut v).as_mut_ptr();
        let cfg = config(len, true).zero(ZeroPolicy::OnFree);
        let n = cfg.nr_pages;
        let pool = SharedPool::<Intrusive>::create_in(bytes(&mut v), cfg, 1).unwrap();
        {
            let mut g = pool.lock();
            for order in [0, 3, 1, 0, 2] {
                g.alloc(order).unwrap();
            }
        }
        let meta_off = meta_offset(n);
        // SAFETY (each call): a read-only copy of the `len` bytes of a live buffer, taken
        // between two steps of an operation, as a killed process would leave them.
        let image = move |p: *mut u8| unsafe { core::slice::from_raw_parts(p, len) }.to_vec();
        // Images of the bytes at every crash point of an allocation that splits and of a free
        // that merges.
        let snaps: std::rc::Rc<std::cell::RefCell<Vec<Vec<u8>>>> = Default::default();
        let sink = snaps.clone();
        tests_hook::set(move |_| sink.borrow_mut().push(image(base)));
        let pfn = pool.lock().alloc(2).unwrap();
        pool.lock().put(pfn).unwrap();
        tests_hook::clear();
        let mid_op = core::mem::take(&mut *snaps.borrow_mut());
        assert!(mid_op.len() > 4, "{} crash points", mid_op.len());
        let mut stopped = 0;
        for snap in &mid_op {
            // The recovery that runs to its end.
            let mut w = buffer(len);
            bytes(&mut w).copy_from_slice(snap);
            SharedPool::<Intrusive>::attach(bytes(&mut w), 2)
                .unwrap()
                .lock()
                .check()
                .unwrap();
            let expect = bytes(&mut w)[meta_off..meta_off + 4 * n].to_vec();
            // The same recovery, stopped at each of its own crash points and recovered again.
            let mut u = buffer(len);
            bytes(&mut u).copy_from_slice(snap);
            let ubase = bytes(&mut u).as_mut_ptr();
            let inner: std::rc::Rc<std::cell::RefCell<Vec<Vec<u8>>>> = Default::default();
            let sink = inner.clone();
            tests_hook::set(move |_| sink.borrow_mut().push(image(ubase)));
            SharedPool::<Intrusive>::attach(bytes(&mut u), 2).unwrap();
            tests_hook::clear();
            for partial in core::mem::take(&mut *inner.borrow_mut()) {
                stopped += 1;
                let mut x = buffer(len);
                bytes(&mut x).copy_from_slice(&partial);
                SharedPool::<Intrusive>::attach(bytes(&mut x), 3)
                    .unwrap()
                    .lock()
                    .check()
                    .unwrap();
                assert!(
                    bytes(&mut x)[meta_off..meta_off + 4 * n] == expect[..],
                    "a recovery stopped at its crash point {stopped} recovers another state"
                );
            }
        }
        assert!(stopped > 10, "{stopped} recoveries stopped");
    }

    /// Four threads, each with its own handle on the same bytes (as four processes would be),
    /// allocate, share and free; every page is held by at most one of them at a time.
    #[test]
    fn threads_conserve_pages() {
        let len = 64 << 10;
        let mut v = buffer(len);
        let b = bytes(&mut v);
        let cfg = config(len, false);
        let n = cfg.nr_pages as u32;
        let _ = SharedPool::<SideTable>::create_in(b, cfg, 1).unwrap();
        let addr = b.as_mut_ptr() as usize;
        let owners = std::sync::Mutex::new(std::collections::HashMap::<u64, u32>::new());
        std::thread::scope(|s| {
            for t in 1..=4u32 {
                let owners = &owners;
                s.spawn(move || {
                    // SAFETY: the bytes outlive the scope; every handle goes through the lock.
                    let pool = unsafe {
                        SharedPool::<SideTable>::attach_raw(
                            NonNull::new(addr as *mut u8).unwrap(),
                            len,
                            t,
                        )
                    }
                    .unwrap();
                    let mut mine = Vec::new();
                    let mut rng = u64::from(t) * 7919;
                    for _ in 0..3000 {
                        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1);
                        let mut g = pool.lock_with(|_| std::thread::yield_now());
                        if (rng >> 60) < 9 || mine.is_empty() {
                            if let Ok(pfn) = g.alloc((rng >> 40) as u32 % 3) {
                                let order = g.order(pfn).unwrap().unwrap();
                                let mut o = owners.lock().unwrap();
                                for p in pfn..pfn + (1 << order) {
                                    assert!(o.insert(p, t).is_none(), "page {p} held twice");
                                }
                                mine.push((pfn, order));
                            }
                        } else {
                            let (pfn, order) = mine.swap_remove((rng >> 20) as usize % mine.len());
                            let mut o = owners.lock().unwrap();
                            for p in pfn..pfn + (1 << order) {
                                assert_eq!(o.remove(&p), Some(t));
                            }
                            drop(o);
                            g.put(pfn).unwrap();
                        }
                    }
                    let mut g = pool.lock();
                    g.check().unwrap();
                    let mut o = owners.lock().unwrap();
                    for (pfn, order) in mine {
                        for p in pfn..pfn + (1 << order) {
                            assert_eq!(o.remove(&p), Some(t));
                        }
                        g.put(pfn).unwrap();
                    }
                });
            }
        });
        let pool = SharedPool::<SideTable>::attach(b, 1).unwrap();
        assert_eq!(pool.lock().free_pages(), n - 1);
    }
}
