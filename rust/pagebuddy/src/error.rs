//! Errors. Every misuse of a pool is one of these; none of them leaves a trace in the pool.

use core::fmt;

/// Why a call on a [`Pool`](crate::Pool) failed.
///
/// Every variant except [`Error::Corrupted`] is returned before anything is changed: the pool is
/// exactly as it was before the call. `Corrupted` means the pool's state was already inconsistent
/// (possible only when free-list links live in the arena and the arena was scribbled on); the
/// allocator never reads or writes outside its arena and metadata even then.
///
/// ```
/// use pagebuddy::{Config, Error, Intrusive, PageMeta, Pool};
/// let (mut arena, mut meta) = ([0u8; 64], [PageMeta::INIT; 1]);
/// let mut pool = Pool::new(&mut arena[..], &mut meta, Intrusive, Config::new(1).page_size(64))?;
/// assert_eq!(pool.put(7), Err(Error::PfnOutOfRange { pfn: 7 }));
/// assert_eq!(pool.put(0), Err(Error::NotHeld { pfn: 0 }));
/// # Ok::<(), Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The pfn is not one of the pool's pages.
    PfnOutOfRange {
        /// The pfn that was passed.
        pfn: u64,
    },
    /// The page is not held (refcount 0): a free page, a tail page of a block, or a double put.
    NotHeld {
        /// The page.
        pfn: u64,
    },
    /// `get` on a page whose refcount is already `u16::MAX`.
    RefcountOverflow {
        /// The page.
        pfn: u64,
    },
    /// A shared pool's owner took a reference to a page that another owner holds, and its
    /// share entries (`pagebuddy::owners::OWNER_SHARES` of them) all name other pages.
    TooManyShares {
        /// The page.
        pfn: u64,
    },
    /// The order is not below the pool's `max_order`.
    InvalidOrder {
        /// The order that was asked for.
        order: u32,
        /// The pool's number of orders.
        max_order: u32,
    },
    /// No free block of the order or above.
    OutOfMemory {
        /// The order that was asked for.
        order: u32,
    },
    /// An exact-size run ([`Pool::alloc_exact`](crate::Pool::alloc_exact)) of no pages, or of
    /// more pages than the largest block holds.
    InvalidRun {
        /// The number of pages that was asked for.
        nr_pages: u64,
        /// The largest run the pool can give: `2^(max_order - 1)` pages.
        max_pages: u64,
    },
    /// The pool has no arena ([`Pool::without_arena`](crate::Pool::without_arena)): its pages
    /// are numbers only, with no bytes behind them.
    NoArena,
    /// The pfn is one of the pool's pages by number but not the pool's now: past its initial
    /// range and never [admitted](crate::Pool::admit), or [reclaimed](crate::Pool::reclaim).
    NotCovered {
        /// The page.
        pfn: u64,
    },
    /// [`admit`](crate::Pool::admit) refused a block; see [`AdmitError`].
    CannotAdmit {
        /// The head of the block.
        pfn: u64,
        /// Its order.
        order: u32,
        /// The rule the block breaks.
        why: AdmitError,
    },
    /// [`reclaim`](crate::Pool::reclaim) would take the pool's free pages below its floor
    /// ([`min_free_pages`](crate::Pool::min_free_pages)).
    BelowFloor {
        /// The order asked for.
        order: u32,
        /// Free pages now.
        free_pages: u32,
        /// The floor.
        min_free_pages: u32,
    },
    /// The geometry passed at construction is unusable.
    Geometry(GeometryError),
    /// The pool's state is inconsistent; see [`Corruption`].
    Corrupted(Corruption),
}

/// Why [`admit`](crate::Pool::admit) refused a block (nothing changed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdmitError {
    /// The block's head is not a multiple of `2^order` pages.
    Misaligned,
    /// The block runs past the pages the pool may cover ([`Config::max_pages`](crate::Config)).
    PastEnd,
    /// The block crosses the end of the pool's initial range: part of it would coalesce and
    /// part of it would not.
    Straddles,
    /// A page of the block is already the pool's (free, held or a tail).
    Covered {
        /// The first such page.
        pfn: u64,
    },
}

impl fmt::Display for AdmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            AdmitError::Misaligned => f.write_str("the head is not aligned to the block's size"),
            AdmitError::PastEnd => f.write_str("the block runs past the pool's max_pages"),
            AdmitError::Straddles => f.write_str("the block crosses the end of the initial range"),
            AdmitError::Covered { pfn } => write!(f, "pfn {pfn} is already the pool's"),
        }
    }
}

/// Why a pool could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeometryError {
    /// `page_size` is not a power of two from 64 to [`MAX_PAGE_SIZE`](crate::MAX_PAGE_SIZE).
    PageSize {
        /// The size passed.
        page_size: usize,
    },
    /// `nr_pages` is 0.
    NoPages,
    /// `nr_pages` does not fit the page index type (`u32`, with `u32::MAX` reserved).
    TooManyPages {
        /// The count passed.
        nr_pages: usize,
    },
    /// The last pfn, `base_pfn + nr_pages - 1`, overflows `u64`.
    PfnOverflow,
    /// `reserved_pages > nr_pages`.
    Reserved {
        /// The count passed.
        reserved_pages: usize,
        /// The pool's size.
        nr_pages: usize,
    },
    /// `nr_pages > max_pages`: the initial range must fit in the pages the pool may cover.
    MaxPages {
        /// The pages the pool may cover.
        max_pages: usize,
        /// The initial range.
        nr_pages: usize,
    },
    /// `order_cap` is 0.
    OrderCap,
    /// A pool without an arena was asked to zero pages: only [`ZeroPolicy::Never`] applies
    /// where there are no bytes.
    ///
    /// [`ZeroPolicy::Never`]: crate::ZeroPolicy::Never
    ZeroWithoutArena,
    /// The arena holds fewer than `need` bytes.
    ArenaTooSmall {
        /// Bytes required.
        need: usize,
        /// Bytes given.
        have: usize,
    },
    /// The metadata slice holds fewer than `need` bytes.
    MetadataTooSmall {
        /// Bytes required.
        need: usize,
        /// Bytes given.
        have: usize,
    },
    /// The metadata slice is not aligned for [`PageMeta`](crate::PageMeta).
    MetadataMisaligned,
    /// The side table holds fewer than `need` bytes.
    LinksTooSmall {
        /// Bytes required.
        need: usize,
        /// Bytes given.
        have: usize,
    },
    /// The side table is not aligned for [`Link`](crate::Link).
    LinksMisaligned,
    /// A [`CacheConfig`](crate::CacheConfig) outside its bounds: `batch` must be in
    /// `1..=high`, `high` at most [`MAX_CACHE_HIGH`](crate::MAX_CACHE_HIGH) and `orders` at most
    /// [`MAX_CACHED_ORDERS`](crate::MAX_CACHED_ORDERS).
    CacheConfig {
        /// Orders cached.
        orders: u32,
        /// Blocks moved per refill or drain.
        batch: u32,
        /// Blocks a cache keeps before it drains.
        high: u32,
    },
    /// A [`CachedPool`](crate::CachedPool) was given no cache slots.
    NoCacheSlots,
    /// The cache block storage holds fewer than `need` entries
    /// ([`cache_blocks`](crate::cache_blocks)).
    CacheTooSmall {
        /// Entries required.
        need: usize,
        /// Entries given.
        have: usize,
    },
    /// Fewer [`PageRef`](crate::PageRef)s than the pool has pages.
    PageRefsTooSmall {
        /// Entries required (the pool's page count).
        need: usize,
        /// Entries given.
        have: usize,
    },
}

/// A broken invariant, found by [`Pool::check`](crate::Pool::check) or by a checked link read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Corruption {
    /// Which rule is broken.
    pub kind: CorruptionKind,
    /// The page where it was found.
    pub pfn: u64,
}

/// The rule a [`Corruption`] breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CorruptionKind {
    /// A free-list link names a page outside the pool.
    LinkOutOfRange,
    /// A node's `prev` does not name the node before it, or a list's tail is wrong.
    ListBroken,
    /// A listed block is not a free head of the list's order.
    NotFreeHead,
    /// A head's order is out of range, or the block is misaligned or runs past the pool.
    BadHead,
    /// A page is neither a head nor inside a block.
    Orphan,
    /// A tail page carries an order or a refcount.
    BadTail,
    /// A free head is on no list.
    Unlisted,
    /// Two free buddies of the same order were left uncoalesced.
    Uncoalesced,
    /// A list's length or the non-empty mask disagrees with the lists.
    Count,
    /// Free memory is not zero although the zero policy promises it.
    NotZero,
    /// A [`CachedPool`](crate::CachedPool)'s caches disagree with its pool: a cached block that
    /// is not a block of its cache's order held by the caches, a block cached twice, a block
    /// neither held, cached nor free, or a reference count the pool does not back.
    Cache,
    /// A shared pool's undo journal names pages outside the pool or an operation it cannot
    /// undo, so the operation a dead process left half done cannot be rolled back.
    Journal,
}

impl From<GeometryError> for Error {
    fn from(e: GeometryError) -> Self {
        Error::Geometry(e)
    }
}

impl From<Corruption> for Error {
    fn from(c: Corruption) -> Self {
        Error::Corrupted(c)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::PfnOutOfRange { pfn } => write!(f, "pfn {pfn} is outside the pool"),
            Error::NotHeld { pfn } => write!(f, "pfn {pfn} is not held (refcount 0)"),
            Error::RefcountOverflow { pfn } => {
                write!(f, "pfn {pfn} refcount would overflow {}", u16::MAX)
            }
            Error::TooManyShares { pfn } => write!(
                f,
                "pfn {pfn} is held by another owner and this owner's share entries are all \
                 taken by other owners' pages: put some of those first"
            ),
            Error::InvalidOrder { order, max_order } => write!(
                f,
                "order {order} is invalid: this pool has orders 0 to {}",
                max_order.saturating_sub(1)
            ),
            Error::OutOfMemory { order } => {
                write!(f, "out of memory: no free block of order >= {order}")
            }
            Error::InvalidRun {
                nr_pages,
                max_pages,
            } => write!(
                f,
                "nr_pages {nr_pages} is invalid: this pool's runs are 1 to {max_pages} pages"
            ),
            Error::NoArena => f.write_str("the pool has no arena: its pages have no bytes"),
            Error::NotCovered { pfn } => {
                write!(
                    f,
                    "pfn {pfn} is not the pool's (never admitted, or reclaimed)"
                )
            }
            Error::CannotAdmit { pfn, order, why } => {
                write!(f, "cannot admit pfn {pfn} order {order}: {why}")
            }
            Error::BelowFloor {
                order,
                free_pages,
                min_free_pages,
            } => write!(
                f,
                "cannot reclaim order {order}: {free_pages} free pages, floor min_free_pages \
                 {min_free_pages}"
            ),
            Error::Geometry(e) => write!(f, "bad geometry: {e}"),
            Error::Corrupted(c) => write!(f, "corrupted pool: {c}"),
        }
    }
}

impl fmt::Display for GeometryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            GeometryError::PageSize { page_size } => {
                write!(
                    f,
                    "page_size {page_size} is not a power of two from 64 to {}",
                    crate::MAX_PAGE_SIZE
                )
            }
            GeometryError::NoPages => f.write_str("nr_pages must be at least 1"),
            GeometryError::TooManyPages { nr_pages } => {
                write!(f, "nr_pages {nr_pages} exceeds {}", crate::MAX_PAGES)
            }
            GeometryError::PfnOverflow => f.write_str("base_pfn + nr_pages - 1 overflows u64"),
            GeometryError::Reserved {
                reserved_pages,
                nr_pages,
            } => {
                write!(
                    f,
                    "reserved_pages {reserved_pages} exceeds nr_pages {nr_pages}"
                )
            }
            GeometryError::MaxPages {
                max_pages,
                nr_pages,
            } => write!(f, "nr_pages {nr_pages} exceeds max_pages {max_pages}"),
            GeometryError::OrderCap => f.write_str("order_cap must be at least 1"),
            GeometryError::ZeroWithoutArena => f.write_str(
                "a pool without an arena has no bytes to zero: its zero policy must be Never",
            ),
            GeometryError::ArenaTooSmall { need, have } => {
                write!(f, "arena holds {have} bytes, needs {need}")
            }
            GeometryError::MetadataTooSmall { need, have } => {
                write!(f, "metadata holds {have} bytes, needs {need}")
            }
            GeometryError::MetadataMisaligned => f.write_str("metadata is misaligned"),
            GeometryError::LinksTooSmall { need, have } => {
                write!(f, "link table holds {have} bytes, needs {need}")
            }
            GeometryError::LinksMisaligned => f.write_str("link table is misaligned"),
            GeometryError::CacheConfig {
                orders,
                batch,
                high,
            } => write!(
                f,
                "cache orders {orders}, batch {batch}, high {high}: need 1 <= batch <= high <= {} \
                 and orders <= {}",
                crate::MAX_CACHE_HIGH,
                crate::MAX_CACHED_ORDERS
            ),
            GeometryError::NoCacheSlots => f.write_str("a cached pool needs at least one slot"),
            GeometryError::CacheTooSmall { need, have } => {
                write!(f, "cache storage holds {have} blocks, needs {need}")
            }
            GeometryError::PageRefsTooSmall { need, have } => {
                write!(f, "page refs hold {have} pages, need {need}")
            }
        }
    }
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            CorruptionKind::LinkOutOfRange => "a free-list link points outside the pool",
            CorruptionKind::ListBroken => "a free list's links are inconsistent",
            CorruptionKind::NotFreeHead => "a listed block is not a free head of the list's order",
            CorruptionKind::BadHead => "a head's order is out of range or misaligned",
            CorruptionKind::Orphan => "a page belongs to no block",
            CorruptionKind::BadTail => "a tail page carries an order or a refcount",
            CorruptionKind::Unlisted => "a free block is on no free list",
            CorruptionKind::Uncoalesced => "two free buddies were left uncoalesced",
            CorruptionKind::Count => "free counts disagree with the free lists",
            CorruptionKind::NotZero => "free memory is not zero",
            CorruptionKind::Cache => "the per-CPU caches disagree with the pool",
            CorruptionKind::Journal => "the shared pool's journal cannot be undone",
        };
        write!(f, "{what} (at pfn {})", self.pfn)
    }
}
