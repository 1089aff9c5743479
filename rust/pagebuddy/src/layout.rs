//! Shared and persistent pools: the whole allocator inside the caller's bytes.
//!
//! ```text
//! offset 0          header: magic, layout version, endianness tag, geometry, link store, zero
//!                   policy, offsets, a checksum of all that; then the lock word, the state word,
//!                   two slots of free-list heads/tails/lengths/mask/free count, the undo journal
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
//! that finds its holder dead (the caller says how to tell; the Python layer uses pids) takes it
//! over and runs recovery first.
//!
//! **Crash safety.** The policy ([`Pool`]) runs unchanged on metadata and links that live in the
//! shared bytes, with its list heads loaded from the header's active slot. Before it writes, the
//! layer above records in the header's undo journal the old value of every metadata entry the
//! operation will touch (which pages an operation touches follows from pKVM's rules: the split
//! chain of an allocation, the merge chain of a free) and, as the policy runs, of every link
//! before it is overwritten ([`Journaled`]). The operation commits by writing the new heads into
//! the other slot and then, in one atomic store, flipping the active slot and clearing the
//! journal. A process killed at any instruction before that store leaves a valid journal, and
//! [`SharedPool::recover`] writes the old values back in reverse order: the operation never
//! happened. Zeroing a freed block is idempotent and needs no undo. After the store, the
//! operation is complete. Either way no page is lost or duplicated, and `check()` passes.
//!
//! Pages held by a process that dies stay held: the pool cannot know whether the holder shared
//! them with a survivor. The caller decides (a survivor may `put` them on the dead one's behalf).

use core::marker::PhantomData;
use core::ptr::{addr_of, addr_of_mut, NonNull};
use core::sync::atomic::{fence, AtomicU32, Ordering};

use crate::arena::Arena;
use crate::config::{Config, Geometry, ZeroPolicy};
use crate::error::{Corruption, CorruptionKind, Error, GeometryError};
use crate::shmlock::{Acquired, OwnerLock};
use crate::store::{
    meta_from_bytes, FreeLists, Intrusive, Link, LinkStore, PageMeta, SideTable, MAX_ORDERS,
    NO_ORDER,
};
use crate::Pool;

/// The magic bytes at offset 0 of every shared pool.
pub const LAYOUT_MAGIC: [u8; 8] = *b"pgbuddy\0";
/// The layout version this build writes and the only one it opens.
pub const LAYOUT_VERSION: u32 = 1;
/// Written in the writer's byte order: read back in the other order it is `0x0403_0201`.
const ENDIAN_TAG: u32 = 0x0102_0304;

/// Metadata entries one operation may change: an allocation changes the taken block's head and
/// the head of each half it splits off (at most `MAX_ORDERS`); a free changes the freed head and
/// each buddy it merges with (at most `MAX_ORDERS`).
const META_UNDO: usize = MAX_ORDERS + 2;
/// Link writes one operation may make: an allocation unlinks one head (2 writes) and appends one
/// half per order split (2 writes each); a free unlinks one buddy per merge (3 writes each) and
/// appends the result (2 writes). At most `3 * MAX_ORDERS + 2`.
const LINK_UNDO: usize = 3 * MAX_ORDERS + 4;

/// State word bits.
const SLOT: u32 = 1;
const JOURNAL_VALID: u32 = 2;
/// An operation that the journal does not cover (a batch) is in progress.
const UNJOURNALED: u32 = 4;

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
    _pad: u32,
    base_pfn: u64,
    meta_off: u64,
    links_off: u64,
    pages_off: u64,
    total_bytes: u64,
}

/// One slot of free-list state: what [`FreeLists`] keeps outside the links.
#[repr(C)]
#[derive(Clone, Copy)]
struct Lists {
    head: [u32; MAX_ORDERS],
    tail: [u32; MAX_ORDERS],
    len: [u32; MAX_ORDERS],
    mask: u32,
    free_pages: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct MetaUndo {
    idx: u32,
    old: PageMeta,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct LinkUndo {
    idx: u32,
    old: Link,
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
    n_meta: u32,
    n_links: u32,
    split: SplitUndo,
    _pad: u32,
    lists: [Lists; 2],
    meta_undo: [MetaUndo; META_UNDO],
    link_undo: [LinkUndo; LINK_UNDO],
}

/// Bytes of the header; the metadata starts at the next multiple of 64.
pub const HEADER_BYTES: usize = core::mem::size_of::<Header>();

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

/// Where each region starts for `nr_pages` pages: `(meta_off, links_off, pages_off, total)`.
fn regions(
    nr_pages: usize,
    page_size: usize,
    intrusive: bool,
) -> Option<(usize, usize, usize, usize)> {
    let meta_off = align_up(HEADER_BYTES, 64)?;
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

/// How many pages of `page_size` bytes a shared pool fits in `len` bytes (0 if none).
///
/// ```
/// let n = pagebuddy::pages_that_fit(1 << 20, 4096, false);
/// assert!(n > 240 && n < 256);
/// ```
pub fn pages_that_fit(len: usize, page_size: usize, intrusive: bool) -> usize {
    if page_size == 0 {
        return 0;
    }
    let per_page = page_size + 4 + if intrusive { 0 } else { 8 };
    let mut n = len.saturating_sub(HEADER_BYTES) / per_page;
    while n > 0 && regions(n, page_size, intrusive).map_or(true, |r| r.3 > len) {
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

/// A [`LinkStore`] that records the old value of every link it overwrites in the shared pool's
/// undo journal before it writes, while an operation is armed.
pub struct Journaled<'a, L> {
    inner: L,
    hdr: NonNull<Header>,
    armed: bool,
    overflow: bool,
    _bytes: PhantomData<&'a mut [u8]>,
}

impl<L: LinkStore> Journaled<'_, L> {
    fn record(&mut self, arena: &Arena<'_>, page_size: usize, idx: u32) {
        if !self.armed {
            return;
        }
        let old = self.inner.load(arena, page_size, idx);
        let h = self.hdr.as_ptr();
        // SAFETY: `hdr` points at the header of the bytes this store was built over, valid for
        // the store's life; the caller holds the pool's lock, so no one else writes the journal.
        unsafe {
            let n = (*h).n_links as usize;
            if n >= LINK_UNDO {
                self.overflow = true;
                return;
            }
            addr_of_mut!((*h).link_undo[n]).write(LinkUndo { idx, old });
            fence(Ordering::Release);
            addr_of_mut!((*h).n_links).write_volatile(n as u32 + 1);
        }
        // The count is stored before the link it covers.
        fence(Ordering::Release);
        #[cfg(test)]
        tests_hook::point();
    }
}

impl<L: LinkStore> LinkStore for Journaled<'_, L> {
    const IN_PAGE_BYTES: usize = L::IN_PAGE_BYTES;

    #[inline]
    fn load(&self, arena: &Arena<'_>, page_size: usize, idx: u32) -> Link {
        self.inner.load(arena, page_size, idx)
    }

    #[inline]
    fn store(&mut self, arena: &mut Arena<'_>, page_size: usize, idx: u32, link: Link) {
        self.record(arena, page_size, idx);
        self.inner.store(arena, page_size, idx, link);
    }

    #[inline]
    fn clear(&mut self, arena: &mut Arena<'_>, page_size: usize, idx: u32) {
        if L::IN_PAGE_BYTES > 0 {
            self.record(arena, page_size, idx);
        }
        self.inner.clear(arena, page_size, idx);
    }

    fn fits(&self, nr_pages: u32) -> Result<(), GeometryError> {
        self.inner.fits(nr_pages)
    }
}

/// A pool that lives entirely in caller-provided bytes, shared by every process that maps them
/// (see the [module documentation](self) for the layout, the lock and crash safety).
///
/// Each process opens the bytes with [`attach`](Self::attach) (or formats them with
/// [`create_in`](Self::create_in)) under its own owner id, and runs operations through
/// [`lock`](Self::lock), which returns a [`SharedGuard`].
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
    pool: core::cell::UnsafeCell<Pool<'a, Journaled<'a, L>>>,
    hdr: NonNull<Header>,
    owner: u32,
    is_dead: fn(u32) -> bool,
}

// SAFETY: the pool cell is only reached under the shared lock, which excludes every other
// thread and process; the raw pointers point into bytes the pool borrows for `'a`.
unsafe impl<L: LinkStore + Send> Send for SharedPool<'_, L> {}
// SAFETY: as above: `&SharedPool` hands out the cell only through `lock`.
unsafe impl<L: LinkStore + Send> Sync for SharedPool<'_, L> {}

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
        if owner == 0 {
            return Err(LayoutError::Owner);
        }
        if ptr.as_ptr().align_offset(8) != 0 {
            return Err(LayoutError::Misaligned);
        }
        let geo = config.geometry()?;
        let n = geo.nr_pages as usize;
        let (meta_off, links_off, pages_off, total) = regions(n, geo.page_size, L::INTRUSIVE)
            .ok_or(LayoutError::Truncated {
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
            _pad: 0,
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
            core::ptr::write_bytes(ptr.as_ptr(), 0, HEADER_BYTES);
            addr_of_mut!((*h).fixed).write(fixed);
        }
        // SAFETY: regions lie inside [ptr, ptr + total) and do not overlap; the caller's contract.
        let (meta, links, arena) =
            unsafe { carve::<L>(ptr, meta_off, links_off, pages_off, n, geo.page_size)? };
        let pool = Pool::new(
            arena,
            meta,
            Journaled {
                inner: links,
                hdr,
                armed: false,
                overflow: false,
                _bytes: PhantomData,
            },
            config,
        )
        .map_err(|e| match e {
            Error::Geometry(g) => LayoutError::Geometry(g),
            Error::Corrupted(c) => LayoutError::Corrupted(c),
            _ => LayoutError::Header,
        })?;
        let shared = SharedPool {
            pool: core::cell::UnsafeCell::new(pool),
            hdr,
            owner,
            is_dead: never_dead,
        };
        shared.store_lists(0);
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
        // Validate what the journal names before anyone acts on it: read-only.
        pool.journal_in_range()?;
        if pool.journal_state() & (JOURNAL_VALID | UNJOURNALED) != 0 {
            pool.recover_checked()?;
        } else {
            pool.pool_ref().check()?;
        }
        // Accepted: a holder recorded in the lock word died with its process.
        pool.lock_word().clear();
        Ok(pool)
    }

    /// Validates the header of the pool in `len` bytes at `ptr` and opens it for `owner`,
    /// reading only the header and writing nothing. The state is not checked: other processes
    /// may be changing it; run [`SharedGuard::check`] under the lock.
    ///
    /// # Safety
    /// `ptr` is valid for reads and writes of `len` bytes for `'a`; everyone else that accesses
    /// them does so through a shared pool of their own (or through pages they hold).
    pub unsafe fn attach_raw(
        ptr: NonNull<u8>,
        len: usize,
        owner: u32,
    ) -> Result<Self, LayoutError> {
        if owner == 0 {
            return Err(LayoutError::Owner);
        }
        if ptr.as_ptr().align_offset(8) != 0 {
            return Err(LayoutError::Misaligned);
        }
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
        let expect = regions(n, geo.page_size, intrusive).ok_or(LayoutError::Header)?;
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
        let free = FreeLists::new(
            Journaled {
                inner: links,
                hdr,
                armed: false,
                overflow: false,
                _bytes: PhantomData,
            },
            geo.nr_pages,
            geo.base_pfn,
            geo.page_size,
        );
        let pool = Pool {
            arena,
            meta,
            free,
            geo,
            free_pages: 0,
            touched: geo.nr_pages,
        };
        let shared = SharedPool {
            pool: core::cell::UnsafeCell::new(pool),
            hdr,
            owner,
            is_dead: never_dead,
        };
        shared.load_lists();
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

    /// Takes the lock (spinning, `pause(polls)` between polls), taking it over from a holder that
    /// the [`set_is_dead`](Self::set_is_dead) test says died, and then recovering the operation
    /// it left half done ([`SharedGuard::recover`]). If that cannot be done (the journal is
    /// damaged), the guard still holds the lock, [`SharedGuard::damage`] says why and every
    /// operation fails with [`CorruptionKind::Journal`] until the pool is rebuilt.
    pub fn lock_with(&self, pause: impl FnMut(u32)) -> SharedGuard<'_, 'a, L> {
        self.lock_as(self.owner, pause)
    }

    /// [`lock_with`](Self::lock_with) under another owner id (not 0; 0 is taken as this
    /// pool's own): for a handle inherited by a forked child, which must not lock under its
    /// parent's id.
    pub fn lock_as(&self, owner: u32, mut pause: impl FnMut(u32)) -> SharedGuard<'_, 'a, L> {
        let owner = if owner == 0 { self.owner } else { owner };
        let how = self.lock_word().lock(owner, self.is_dead, &mut pause);
        let mut guard = SharedGuard {
            shared: self,
            owner,
            damage: None,
        };
        if matches!(how, Acquired::TakenFrom(_))
            || guard.journal_state() & (JOURNAL_VALID | UNJOURNALED) != 0
        {
            guard.damage = guard.recover().err();
        }
        self.load_lists();
        guard
    }

    /// [`lock_with`](Self::lock_with) with a spin hint between polls.
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

    fn pool_ref(&self) -> &Pool<'a, Journaled<'a, L>> {
        // SAFETY: callers hold the lock or, at open, exclusive bytes.
        unsafe { &*self.pool.get() }
    }

    #[allow(clippy::mut_from_ref)]
    fn pool_mut(&self) -> &mut Pool<'a, Journaled<'a, L>> {
        // SAFETY: callers hold the lock (or exclusive bytes), which excludes every other access
        // to the cell, and do not keep another reference from `pool_ref` alive across this one.
        unsafe { &mut *self.pool.get() }
    }

    fn h(&self) -> *mut Header {
        self.hdr.as_ptr()
    }

    /// Loads the active slot's list state into the policy's free lists.
    fn load_lists(&self) {
        let slot = (self.journal_state() & SLOT) as usize;
        // SAFETY: the header is valid for the pool's life; the caller holds the lock.
        let lists = unsafe { addr_of!((*self.h()).lists[slot]).read() };
        let pool = self.pool_mut();
        let (head, tail, len, mask) = pool.free.ends_mut();
        *head = lists.head;
        *tail = lists.tail;
        *len = lists.len;
        *mask = lists.mask;
        pool.free_pages = lists.free_pages;
    }

    /// Stores the policy's list state into `slot`.
    fn store_lists(&self, slot: usize) {
        let pool = self.pool_mut();
        let free_pages = pool.free_pages;
        let (head, tail, len, mask) = pool.free.ends_mut();
        let lists = Lists {
            head: *head,
            tail: *tail,
            len: *len,
            mask: *mask,
            free_pages,
        };
        // SAFETY: as in `load_lists`.
        unsafe { addr_of_mut!((*self.h()).lists[slot & 1]).write(lists) }
    }

    /// Checks, reading only, that every journal entry names a page of the pool and that its
    /// counts are in bounds, and that an interrupted split left a prefix written.
    fn journal_in_range(&self) -> Result<(), LayoutError> {
        let state = self.journal_state();
        if state & !(SLOT | JOURNAL_VALID | UNJOURNALED) != 0 {
            return Err(LayoutError::Journal);
        }
        if state & UNJOURNALED != 0 {
            return Err(LayoutError::Journal);
        }
        if state & JOURNAL_VALID == 0 {
            return Ok(());
        }
        let n = self.pool_ref().geo.nr_pages;
        let h = self.h();
        // SAFETY: the header is readable for the pool's life.
        let (n_meta, n_links, split) =
            unsafe { ((*h).n_meta as usize, (*h).n_links as usize, (*h).split) };
        if n_meta > META_UNDO || n_links > LINK_UNDO {
            return Err(LayoutError::Journal);
        }
        for i in 0..n_meta {
            // SAFETY: i < META_UNDO.
            if unsafe { (*h).meta_undo[i].idx } >= n {
                return Err(LayoutError::Journal);
            }
        }
        for i in 0..n_links {
            // SAFETY: i < LINK_UNDO.
            if unsafe { (*h).link_undo[i].idx } >= n {
                return Err(LayoutError::Journal);
            }
        }
        if split.count > 0 {
            let end = u64::from(split.idx) + u64::from(split.count);
            if end > u64::from(n) {
                return Err(LayoutError::Journal);
            }
            let meta = &self.pool_ref().meta[split.idx as usize..end as usize];
            let done = meta
                .iter()
                .take_while(|m| **m == PageMeta::new(1, 0))
                .count();
            if meta[done..].iter().any(|m| *m != PageMeta::INIT) {
                return Err(LayoutError::Journal);
            }
        }
        Ok(())
    }

    /// Writes every journaled old value back (links in reverse, then metadata, then the split's
    /// tails), swapping each with the value it replaces so that [`unrecover`](Self::unrecover)
    /// can put the bytes back exactly.
    fn undo(&self) {
        let h = self.h();
        let pool = self.pool_mut();
        let ps = pool.geo.page_size;
        // SAFETY: `journal_in_range` vouched for every count and index; the lock is held.
        unsafe {
            let n_links = (*h).n_links as usize;
            for i in (0..n_links).rev() {
                let e = addr_of_mut!((*h).link_undo[i]);
                let (idx, old) = ((*e).idx, (*e).old);
                let cur = pool.free.links.inner.load(&pool.arena, ps, idx);
                pool.free.links.inner.store(&mut pool.arena, ps, idx, old);
                (*e).old = cur;
            }
            let n_meta = (*h).n_meta as usize;
            for i in (0..n_meta).rev() {
                let e = addr_of_mut!((*h).meta_undo[i]);
                let idx = (*e).idx as usize;
                core::mem::swap(&mut pool.meta[idx], &mut (*e).old);
            }
            let split = addr_of_mut!((*h).split);
            if (*split).count > 0 {
                let (start, count) = ((*split).idx as usize, (*split).count as usize);
                let tails = &mut pool.meta[start..start + count];
                let done = tails
                    .iter()
                    .take_while(|m| **m == PageMeta::new(1, 0))
                    .count();
                tails[..done].fill(PageMeta::INIT);
                (*split).done = done as u32;
            }
        }
    }

    /// Reverts [`undo`](Self::undo): the same swaps in the other order, and the split's `done`
    /// count back to `done` (its value before the undo), so that refused bytes are exactly as
    /// they were.
    fn unrecover(&self, done: u32) {
        let h = self.h();
        let pool = self.pool_mut();
        let ps = pool.geo.page_size;
        // SAFETY: as in `undo`, which ran just before over the same, unchanged journal.
        unsafe {
            let split = (*h).split;
            if split.count > 0 {
                let start = split.idx as usize;
                pool.meta[start..start + split.done as usize].fill(PageMeta::new(1, 0));
            }
            addr_of_mut!((*h).split.done).write(done);
            for i in 0..(*h).n_meta as usize {
                let e = addr_of_mut!((*h).meta_undo[i]);
                let idx = (*e).idx as usize;
                core::mem::swap(&mut pool.meta[idx], &mut (*e).old);
            }
            for i in 0..(*h).n_links as usize {
                let e = addr_of_mut!((*h).link_undo[i]);
                let (idx, old) = ((*e).idx, (*e).old);
                let cur = pool.free.links.inner.load(&pool.arena, ps, idx);
                pool.free.links.inner.store(&mut pool.arena, ps, idx, old);
                (*e).old = cur;
            }
        }
    }

    /// Recovery at open: undo, check, and either clear the journal or revert and refuse.
    fn recover_checked(&self) -> Result<(), LayoutError> {
        if self.journal_state() & UNJOURNALED != 0 {
            return Err(LayoutError::Journal);
        }
        // SAFETY: the header is readable; `attach` holds the bytes exclusively.
        let done = unsafe { (*self.h()).split.done };
        self.undo();
        self.load_lists();
        if let Err(c) = self.pool_ref().check() {
            self.unrecover(done);
            return Err(LayoutError::Corrupted(c));
        }
        self.clear_journal();
        Ok(())
    }

    fn clear_journal(&self) {
        fence(Ordering::Release);
        self.state_word()
            .fetch_and(!(JOURNAL_VALID | UNJOURNALED), Ordering::Release);
    }
}

/// The lock of a [`SharedPool`], held: the pool's operations, each journaled and committed on
/// its own. Read-only queries ([`Pool::page`], [`Pool::free_list`], [`Pool::check`], ...) come
/// through `Deref`. The lock is released on drop.
pub struct SharedGuard<'s, 'a, L: SharedLinks<'a>> {
    shared: &'s SharedPool<'a, L>,
    owner: u32,
    damage: Option<LayoutError>,
}

impl<'a, L: SharedLinks<'a>> core::ops::Deref for SharedGuard<'_, 'a, L> {
    type Target = Pool<'a, Journaled<'a, L>>;
    fn deref(&self) -> &Self::Target {
        self.shared.pool_ref()
    }
}

/// Mutable access to the policy for operations that the journal does not cover (batches): the
/// state word marks one in progress until the guard drops, and a process killed inside it leaves
/// a pool that recovery refuses as corrupt rather than guesses at.
impl<'a, L: SharedLinks<'a>> core::ops::DerefMut for SharedGuard<'_, 'a, L> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.shared
            .state_word()
            .fetch_or(UNJOURNALED, Ordering::Release);
        fence(Ordering::Release);
        self.shared.pool_mut()
    }
}

impl<'a, L: SharedLinks<'a>> Drop for SharedGuard<'_, 'a, L> {
    fn drop(&mut self) {
        if self.damage.is_none() && self.journal_state() & UNJOURNALED != 0 {
            self.commit();
        }
        self.shared.lock_word().unlock(self.owner);
    }
}

impl<'a, L: SharedLinks<'a>> SharedGuard<'_, 'a, L> {
    fn journal_state(&self) -> u32 {
        self.shared.journal_state()
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

    /// Rolls back the operation that a dead holder left half done (if its journal is valid) and
    /// clears the journal. Refuses, changing nothing, a journal that names pages outside the
    /// pool or that covers an operation it cannot undo.
    pub fn recover(&mut self) -> Result<(), LayoutError> {
        let s = self.shared;
        s.journal_in_range()?;
        if s.journal_state() & JOURNAL_VALID != 0 {
            s.undo();
            s.clear_journal();
        }
        s.load_lists();
        Ok(())
    }

    /// Starts a journaled operation that will change the metadata of `pages` (and of `split`'s
    /// tails): records their old values, then marks the journal valid.
    fn begin(&mut self, pages: &[u32], split: Option<(u32, u32)>) {
        let s = self.shared;
        let h = s.h();
        let pool = s.pool_mut();
        // SAFETY: the lock is held; at most META_UNDO pages (callers pass at most one per order
        // plus one) and every index is a page of the pool (callers found them there).
        unsafe {
            for (i, &idx) in pages.iter().take(META_UNDO).enumerate() {
                let old = pool.meta[idx as usize];
                addr_of_mut!((*h).meta_undo[i]).write(MetaUndo { idx, old });
            }
            (*h).n_meta = pages.len().min(META_UNDO) as u32;
            (*h).n_links = 0;
            let (idx, count) = split.unwrap_or((0, 0));
            (*h).split = SplitUndo {
                idx,
                count,
                done: 0,
            };
        }
        fence(Ordering::Release);
        s.state_word().fetch_or(JOURNAL_VALID, Ordering::Release);
        fence(Ordering::Release);
        pool.free.links.armed = true;
        pool.free.links.overflow = false;
        #[cfg(test)]
        tests_hook::point();
    }

    /// Completes an operation: the new list state into the other slot, then one store that
    /// makes it the active one and clears the journal.
    fn commit(&mut self) {
        let s = self.shared;
        s.pool_mut().free.links.armed = false;
        let state = s.journal_state();
        let next = (state & SLOT) ^ 1;
        s.store_lists(next as usize);
        fence(Ordering::Release);
        #[cfg(test)]
        tests_hook::point();
        s.state_word().store(next, Ordering::Release);
        #[cfg(test)]
        tests_hook::point();
    }

    /// Ends a journaled operation that failed: whatever it wrote is rolled back (a policy error
    /// leaves the pool unchanged already; this also covers corruption found halfway).
    fn abort(&mut self) {
        let s = self.shared;
        s.pool_mut().free.links.armed = false;
        s.undo();
        s.clear_journal();
        s.load_lists();
    }

    fn finish<T>(&mut self, r: Result<T, Error>) -> Result<T, Error> {
        match r {
            Ok(v) => {
                self.commit();
                Ok(v)
            }
            Err(e) => {
                self.abort();
                Err(e)
            }
        }
    }

    /// [`Pool::alloc`], journaled: the metadata it will change is that of the head it takes
    /// and of the head of each half it splits off.
    pub fn alloc(&mut self, order: u32) -> Result<u64, Error> {
        self.usable()?;
        let pool = self.shared.pool_ref();
        let mut pages = [0u32; META_UNDO];
        let mut n = 0;
        if order < pool.geo.max_order && pool.free.mask >> order != 0 {
            let found = order + (pool.free.mask >> order).trailing_zeros();
            if let Some(idx) = pool.free.first(found) {
                pages[0] = idx;
                n = 1;
                for k in order..found {
                    if let Some(half) = idx.checked_add(1 << k).filter(|&i| i < pool.geo.nr_pages) {
                        pages[n] = half;
                        n += 1;
                    }
                }
            }
        }
        self.begin(&pages[..n], None);
        let r = self.shared.pool_mut().alloc(order);
        self.finish(r)
    }

    /// [`Pool::put`], journaled: the metadata it will change is that of the page and, if this
    /// is the last reference, of each free buddy it merges with.
    pub fn put(&mut self, pfn: u64) -> Result<(), Error> {
        self.usable()?;
        let pool = self.shared.pool_ref();
        let mut pages = [0u32; META_UNDO];
        let mut n = 0;
        if let Ok((idx, m)) = pool.held(pfn) {
            pages[0] = idx;
            n = 1;
            if m.refcount == 1 {
                let geo = pool.geo;
                let (mut head, mut order) = (idx, u32::from(m.order));
                while order + 1 < geo.max_order && n < META_UNDO {
                    let Some(buddy) = geo.index(geo.pfn(head) ^ (1 << order)) else {
                        break;
                    };
                    let b = pool.meta[buddy as usize];
                    if !(b.refcount == 0 && u32::from(b.order) == order) {
                        break;
                    }
                    pages[n] = buddy;
                    n += 1;
                    head = head.min(buddy);
                    order += 1;
                }
            }
        }
        self.begin(&pages[..n], None);
        let r = self.shared.pool_mut().put(pfn);
        self.finish(r)
    }

    /// [`Pool::get`], journaled.
    pub fn get(&mut self, pfn: u64) -> Result<(), Error> {
        self.usable()?;
        let idx = self.shared.pool_ref().held(pfn).map(|(i, _)| i);
        let pages = [idx.unwrap_or(0)];
        self.begin(&pages[..usize::from(idx.is_ok())], None);
        let r = self.shared.pool_mut().get(pfn);
        self.finish(r)
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
        self.begin(&[idx], Some((idx + 1, tails)));
        let r = self.shared.pool_mut().split(pfn);
        self.finish(r)
    }

    /// [`Pool::alloc_many`], as that many journaled allocations: all or nothing (the blocks
    /// taken are put back if one fails).
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

/// Test-only crash points: a hook called between the steps of an operation.
#[cfg(test)]
pub(crate) mod tests_hook {
    use std::boxed::Box;
    use std::cell::RefCell;

    std::thread_local! {
        static HOOK: RefCell<Option<Box<dyn FnMut()>>> = const { RefCell::new(None) };
    }

    /// Runs `hook` at every crash point until `clear`.
    pub(crate) fn set(hook: impl FnMut() + 'static) {
        HOOK.with(|h| *h.borrow_mut() = Some(Box::new(hook)));
    }

    pub(crate) fn clear() {
        HOOK.with(|h| *h.borrow_mut() = None);
    }

    pub(crate) fn point() {
        HOOK.with(|h| {
            if let Some(f) = h.borrow_mut().as_mut() {
                f();
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
        let mut other = good.clone();
        other[8] = 2;
        assert_eq!(try_attach(other), Err(LayoutError::Version { found: 2 }));
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
    /// opened, recovers to the state before or after the operation, with check() passing.
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
            let snaps: std::rc::Rc<std::cell::RefCell<Vec<Vec<u8>>>> = Default::default();
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
                tests_hook::set(move || {
                    // SAFETY: a read-only copy of the bytes at a crash point, as a killed process
                    // would leave them.
                    sink2
                        .borrow_mut()
                        .push(unsafe { core::slice::from_raw_parts(base, len) }.to_vec());
                });
                let mut g = pool.lock();
                let op = r % 5;
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
                    _ => {}
                }
                g.check().unwrap();
                let free_after = g.free_pages();
                drop(g);
                tests_hook::clear();
                let after: Vec<u8> = unsafe { core::slice::from_raw_parts(base, len) }.to_vec();
                for snap in snaps.borrow_mut().drain(..) {
                    points += 1;
                    let mut w = buffer(len);
                    let b = bytes(&mut w);
                    b.copy_from_slice(&snap);
                    let p = SharedPool::<L<'_>>::attach(b, 2)
                        .unwrap_or_else(|e| panic!("step {step} op {op}: {e}"));
                    let g = p.lock();
                    g.check().unwrap();
                    let f = g.free_pages();
                    assert!(f == free_before || f == free_after, "step {step}");
                    drop(g);
                    // Metadata and links are exactly the state before or after.
                    let meta = |img: &[u8]| {
                        let off = align_up(HEADER_BYTES, 64).unwrap();
                        img[off..off + 4 * n].to_vec()
                    };
                    let m = meta(bytes(&mut w));
                    assert!(
                        m == meta(&before) || m == meta(&after),
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
