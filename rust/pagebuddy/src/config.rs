//! Geometry: what a pool manages, validated once at construction.

use crate::error::GeometryError;
use crate::{MAX_PAGES, MAX_PAGE_SIZE};

/// When pages are zeroed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ZeroPolicy {
    /// As pKVM: a block is zeroed when it is freed (and the free pages once at construction), and
    /// bookkeeping kept inside free memory is cleared when a block leaves the free lists, so every
    /// allocated block reads as zeros.
    #[default]
    OnFree,
    /// A block is zeroed when it is allocated.
    OnAlloc,
    /// Pages are never zeroed: an allocated block holds what was last written there.
    Never,
}

/// What a pool manages and how; turned into a [`Geometry`] by the pool's constructor.
///
/// ```
/// use pagebuddy::{Config, ZeroPolicy};
/// let config = Config::new(37).base_pfn(5).reserved_pages(2).order_cap(4).zero(ZeroPolicy::Never);
/// assert_eq!(config.geometry().unwrap().max_order, 4);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Number of pages the pool starts with: its initial range, mainline's `range_start..
    /// range_end`. At most [`MAX_PAGES`]; 0 only for a pool that starts empty (`max_pages` >= 1).
    pub nr_pages: usize,
    /// Pages the pool may ever cover, from `base_pfn`: the initial range and room to
    /// [admit](crate::Pool::admit) blocks beyond it. Metadata, links and arena are sized for all
    /// of them. Default `nr_pages` (a pool that can only take back what it reclaimed).
    pub max_pages: usize,
    /// Bytes per page: a power of two from 64 to [`MAX_PAGE_SIZE`]. Default 4096.
    pub page_size: usize,
    /// Frame number of the arena's first page. Default 0.
    pub base_pfn: u64,
    /// The first `reserved_pages` pages start held (refcount 1) instead of free. Default 0.
    pub reserved_pages: usize,
    /// Upper bound on the number of orders (pKVM's `MAX_ORDER`). Default 11.
    pub order_cap: u32,
    /// When pages are zeroed. Default [`ZeroPolicy::OnFree`].
    pub zero: ZeroPolicy,
    /// The caller promises that the arena already reads as zeros (fresh anonymous memory), so
    /// [`ZeroPolicy::OnFree`] need not zero the free pages at construction, and that nothing
    /// but the pool's own users writes there, so [`Pool::check`](crate::Pool::check) need not
    /// read pages the pool never handed out. Default `false`.
    pub prezeroed: bool,
}

impl Config {
    /// A pool of `nr_pages` pages of 4 KiB from pfn 0, nothing reserved, at most 11 orders,
    /// zeroed on free.
    pub const fn new(nr_pages: usize) -> Self {
        Config {
            nr_pages,
            max_pages: nr_pages,
            page_size: 4096,
            base_pfn: 0,
            reserved_pages: 0,
            order_cap: 11,
            zero: ZeroPolicy::OnFree,
            prezeroed: false,
        }
    }

    /// Sets how many pages the pool may ever cover (see [`Config::max_pages`]); pages past
    /// `nr_pages` start as nobody's, until [admitted](crate::Pool::admit).
    ///
    /// ```
    /// use pagebuddy::Config;
    /// let geo = Config::new(0).max_pages(64).geometry()?;
    /// assert_eq!((geo.nr_pages, geo.range_pages, geo.max_order), (64, 0, 7));
    /// # Ok::<(), pagebuddy::GeometryError>(())
    /// ```
    pub const fn max_pages(mut self, max_pages: usize) -> Self {
        self.max_pages = max_pages;
        self
    }

    /// States the order bound as mainline does: `MAX_PAGE_ORDER`, the largest order, inclusive
    /// (`free_area[NR_PAGE_ORDERS]`, `NR_PAGE_ORDERS = MAX_PAGE_ORDER + 1`). The same pool as
    /// [`order_cap`](Self::order_cap)`(max_page_order + 1)`.
    ///
    /// ```
    /// use pagebuddy::Config;
    /// assert_eq!(Config::new(64).max_page_order(3), Config::new(64).order_cap(4));
    /// ```
    pub const fn max_page_order(mut self, max_page_order: u32) -> Self {
        self.order_cap = max_page_order.saturating_add(1);
        self
    }

    /// Sets the page size.
    pub const fn page_size(mut self, page_size: usize) -> Self {
        self.page_size = page_size;
        self
    }

    /// Sets the frame number of the first page.
    pub const fn base_pfn(mut self, base_pfn: u64) -> Self {
        self.base_pfn = base_pfn;
        self
    }

    /// Sets how many leading pages start held.
    pub const fn reserved_pages(mut self, reserved_pages: usize) -> Self {
        self.reserved_pages = reserved_pages;
        self
    }

    /// Sets the cap on the number of orders.
    pub const fn order_cap(mut self, order_cap: u32) -> Self {
        self.order_cap = order_cap;
        self
    }

    /// Sets the zero policy.
    pub const fn zero(mut self, zero: ZeroPolicy) -> Self {
        self.zero = zero;
        self
    }

    /// Declares whether the arena already reads as zeros (see [`Config::prezeroed`]).
    pub const fn prezeroed(mut self, prezeroed: bool) -> Self {
        self.prezeroed = prezeroed;
        self
    }

    /// Validates the configuration and derives `max_order`.
    pub const fn geometry(&self) -> Result<Geometry, GeometryError> {
        let page_size = self.page_size;
        if page_size < 64 || page_size > MAX_PAGE_SIZE || !page_size.is_power_of_two() {
            return Err(GeometryError::PageSize { page_size });
        }
        let (range_pages, nr_pages) = (self.nr_pages, self.max_pages);
        if range_pages > nr_pages {
            return Err(GeometryError::MaxPages {
                max_pages: nr_pages,
                nr_pages: range_pages,
            });
        }
        if nr_pages == 0 {
            return Err(GeometryError::NoPages);
        }
        if nr_pages > MAX_PAGES {
            return Err(GeometryError::TooManyPages { nr_pages });
        }
        // The last pfn, base_pfn + nr_pages - 1, must fit: a pool may end at pfn u64::MAX.
        if self.base_pfn.checked_add(nr_pages as u64 - 1).is_none() {
            return Err(GeometryError::PfnOverflow);
        }
        if self.reserved_pages > range_pages {
            return Err(GeometryError::Reserved {
                reserved_pages: self.reserved_pages,
                nr_pages: range_pages,
            });
        }
        if self.order_cap == 0 {
            return Err(GeometryError::OrderCap);
        }
        if nr_pages.checked_mul(page_size).is_none() {
            return Err(GeometryError::ArenaTooSmall {
                need: usize::MAX,
                have: 0,
            });
        }
        // pKVM: min(MAX_ORDER, get_order((nr_pages + 1) << PAGE_SHIFT)), i.e. bit_length(nr_pages).
        let bit_length = usize::BITS - nr_pages.leading_zeros();
        let max_order = if self.order_cap < bit_length {
            self.order_cap
        } else {
            bit_length
        };
        Ok(Geometry {
            nr_pages: nr_pages as u32,
            range_pages: range_pages as u32,
            page_size,
            base_pfn: self.base_pfn,
            reserved_pages: self.reserved_pages as u32,
            max_order,
            zero: self.zero,
        })
    }
}

/// A validated configuration: the pool's shape, as [`Pool::geometry`](crate::Pool::geometry)
/// reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Number of pages with metadata: every page the pool may ever cover
    /// ([`Config::max_pages`]).
    pub nr_pages: u32,
    /// Pages of the initial range, from the first: mainline's `[range_start, range_end)`. Blocks
    /// inside it coalesce as pKVM's; pages past it are external, never coalesced. `nr_pages`
    /// unless the pool was built to grow.
    pub range_pages: u32,
    /// Bytes per page.
    pub page_size: usize,
    /// Frame number of the first page.
    pub base_pfn: u64,
    /// Pages that started held.
    pub reserved_pages: u32,
    /// Number of orders: blocks have orders `0..max_order`.
    pub max_order: u32,
    /// When pages are zeroed.
    pub zero: ZeroPolicy,
}

impl Geometry {
    /// Bytes of arena the pool manages, `nr_pages * page_size`, or `None` if that overflows
    /// `usize` (never for a geometry that [`Config::geometry`] returned; the fields are public,
    /// so a hand-built one may ask for anything).
    ///
    /// ```
    /// use pagebuddy::Config;
    /// let geo = Config::new(8).page_size(64).geometry()?;
    /// assert_eq!(geo.arena_bytes(), Some(512));
    /// let huge = pagebuddy::Geometry { page_size: usize::MAX, ..geo };
    /// assert_eq!(huge.arena_bytes(), None);
    /// # Ok::<(), pagebuddy::GeometryError>(())
    /// ```
    pub const fn arena_bytes(&self) -> Option<usize> {
        (self.nr_pages as usize).checked_mul(self.page_size)
    }

    /// The page index of `pfn`, if it is in the pool.
    ///
    /// ```
    /// use pagebuddy::Config;
    /// let geo = Config::new(8).base_pfn(u64::MAX - 7).geometry()?;
    /// assert_eq!(geo.index(u64::MAX), Some(7));
    /// assert_eq!(geo.index(3), None);
    /// # Ok::<(), pagebuddy::GeometryError>(())
    /// ```
    #[inline]
    pub const fn index(&self, pfn: u64) -> Option<u32> {
        match pfn.checked_sub(self.base_pfn) {
            Some(i) if i < self.nr_pages as u64 => Some(i as u32),
            _ => None,
        }
    }

    /// The pfn of page index `idx`. Crate-internal: callers pass `idx < nr_pages` of a
    /// validated geometry, where `base_pfn + nr_pages - 1` fits in a `u64`
    /// ([`Config::geometry`] checks it), so the sum cannot overflow.
    #[inline]
    pub(crate) const fn pfn(&self, idx: u32) -> u64 {
        self.base_pfn + idx as u64
    }

    /// The index of the buddy of the block of `order` at `idx` (pKVM's `__find_buddy_nocheck`):
    /// the block whose pfn differs in bit `order`. It may lie outside the pool: then the index
    /// is `nr_pages` or more, or, below `base_pfn`, wraps to `2^64 - 2^order` or more. Callers
    /// pass `idx < nr_pages` and `order < 64`.
    #[inline(always)]
    pub(crate) const fn buddy(&self, idx: u32, order: u32) -> u64 {
        (self.pfn(idx) ^ (1 << order)).wrapping_sub(self.base_pfn)
    }
}
