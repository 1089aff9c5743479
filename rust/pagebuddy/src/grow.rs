//! Pools that grow and shrink, as mainline and Android pKVM's: blocks admitted past the initial
//! range (donated memory), free blocks reclaimed (handed back), and a floor of free pages that
//! reclaim leaves.
//!
//! The policy stays pKVM's ([`Pool::attach`](crate::Pool) in `pool.rs`): a block outside the
//! initial range `[range_start, range_end)` is *external*, listed at the order it carries and
//! never coalesced (mainline's `__hyp_attach_page`). This file is the mechanism and its
//! bookkeeping: which pages the pool covers. A pool has metadata for
//! [`Config::max_pages`](crate::Config::max_pages) pages; it covers its initial range, plus the
//! blocks admitted, minus the blocks reclaimed. A page it does not cover has refcount 0 and
//! order [`ABSENT`]: in no block, on no list, and every call on it is
//! [`Error::NotCovered`].
//!
//! | Android pKVM | pagebuddy |
//! |---|---|
//! | `hyp_pool_init(pool, pfn, nr_pages, reserved)` | [`Pool::new`] (`Config::new(nr_pages)`) |
//! | `hyp_pool_init_empty(pool, nr_pages)` | [`Pool::new_empty`], or `Config::new(0).max_pages(n)` |
//! | `hyp_pool_admit(pool, page, order)` | [`Pool::admit`] |
//! | `hyp_pool_reclaim(pool, ...)` | [`Pool::reclaim`], [`Pool::reclaim_many`] |
//! | `hyp_pool_reclaimable(pool, order)` | [`Pool::reclaimable`] |
//! | `pool->free_pages`, `pool->min_free_pages` | [`Pool::free_pages`], [`Pool::min_free_pages`] |

use crate::arena::Arena;
#[cfg(target_has_atomic = "32")]
use crate::cache::CachedPool;
use crate::config::Config;
use crate::error::{AdmitError, Error};
#[cfg(target_has_atomic = "32")]
use crate::lock::RawLock;
use crate::pool::{Plan, Pool};
use crate::store::{LinkStore, PageMeta, ABSENT};

impl<'a, L: LinkStore> Pool<'a, L> {
    /// Android's `hyp_pool_init_empty`: a pool that covers no page yet, with room for
    /// `config.max_pages` pages (at least `config.nr_pages`), grown by [`admit`](Self::admit).
    /// Every block admitted is external (the initial range is empty): listed at its order and
    /// never coalesced. The arena, metadata and links are sized for all the room; the arena's
    /// bytes are the caller's until a block that holds them is admitted.
    ///
    /// ```
    /// use pagebuddy::{Config, Error, Link, PageMeta, Pool, SideTable};
    /// let mut arena = [0u8; 8 * 64];
    /// let (mut meta, mut links) = ([PageMeta::INIT; 8], [Link::EMPTY; 8]);
    /// let config = Config::new(8).page_size(64);
    /// let mut pool = Pool::new_empty(&mut arena[..], &mut meta, SideTable::new(&mut links), config)?;
    /// assert_eq!(pool.free_pages(), 0);
    /// assert_eq!(pool.alloc(0), Err(Error::OutOfMemory { order: 0 }));
    /// pool.admit(4, 2)?; // pages 4-7
    /// assert_eq!(pool.alloc(0)?, 4);
    /// # Ok::<(), Error>(())
    /// ```
    pub fn new_empty(
        arena: impl Into<Arena<'a>>,
        meta: &'a mut [PageMeta],
        links: L,
        config: Config,
    ) -> Result<Self, Error> {
        let room = if config.max_pages > config.nr_pages {
            config.max_pages
        } else {
            config.nr_pages
        };
        Self::new(
            arena,
            meta,
            links,
            Config::new(0).max_pages(room).like(config),
        )
    }

    /// Whether `pfn` is one of the pool's pages now: in its initial range or an admitted block,
    /// and not reclaimed.
    ///
    /// ```
    /// use pagebuddy::{Config, Link, PageMeta, Pool};
    /// let (mut meta, mut links) = ([PageMeta::INIT; 8], [Link::EMPTY; 8]);
    /// let config = Config::new(4).max_pages(8).zero(pagebuddy::ZeroPolicy::Never);
    /// let pool = Pool::without_arena(&mut meta, pagebuddy::SideTable::new(&mut links), config)?;
    /// assert!(pool.covers(3) && !pool.covers(4) && !pool.covers(8));
    /// # Ok::<(), pagebuddy::Error>(())
    /// ```
    pub fn covers(&self, pfn: u64) -> bool {
        self.geo
            .index(pfn)
            .is_some_and(|idx| !self.meta[idx as usize].is_absent())
    }

    /// Android's `hyp_pool_admit`: adds the free block of `2^order` pages at `pfn`, which the
    /// pool does not cover, as one free block. Past the initial range it is external: listed
    /// at `order` and never coalesced (mainline's rule); inside it (a block reclaimed before),
    /// it coalesces as any free. Zeroed per the zero policy, as a freed block is.
    ///
    /// Errors change nothing: [`Error::InvalidOrder`] for an order the pool cannot list,
    /// [`Error::PfnOutOfRange`] for a pfn past its [`max_pages`](crate::Config::max_pages),
    /// [`Error::CannotAdmit`] for a misaligned block, one that runs past the end, crosses the
    /// end of the initial range or overlaps a page the pool covers.
    ///
    /// ```
    /// use pagebuddy::{AdmitError, Config, Error, Link, PageMeta, Pool, SideTable, ZeroPolicy};
    /// let (mut meta, mut links) = ([PageMeta::INIT; 16], [Link::EMPTY; 16]);
    /// let config = Config::new(8).max_pages(16).zero(ZeroPolicy::Never);
    /// let mut pool = Pool::without_arena(&mut meta, SideTable::new(&mut links), config)?;
    /// pool.admit(8, 0)?;
    /// pool.admit(9, 0)?; // external: pages 8 and 9 stay two order-0 blocks
    /// assert_eq!(pool.buddyinfo(), &[2, 0, 0, 1, 0]);
    /// let why = AdmitError::Covered { pfn: 8 };
    /// assert_eq!(pool.admit(8, 1), Err(Error::CannotAdmit { pfn: 8, order: 1, why }));
    /// pool.check()?;
    /// # Ok::<(), Error>(())
    /// ```
    pub fn admit(&mut self, pfn: u64, order: u32) -> Result<(), Error> {
        self.admit_planned(pfn, order, &mut ())
    }

    /// The index of the block `admit` may add, or why not; reads only.
    pub(crate) fn check_admit(&self, pfn: u64, order: u32) -> Result<u32, Error> {
        let max_order = self.geo.max_order;
        if order >= max_order {
            return Err(Error::InvalidOrder { order, max_order });
        }
        let idx = self.index(pfn)?;
        let refuse = |why| Err(Error::CannotAdmit { pfn, order, why });
        if pfn.trailing_zeros() < order {
            return refuse(AdmitError::Misaligned);
        }
        let size = 1u32 << order;
        if size > self.geo.nr_pages - idx {
            return refuse(AdmitError::PastEnd);
        }
        let range = self.geo.range_pages;
        if idx < range && idx + size > range {
            return refuse(AdmitError::Straddles);
        }
        let block = &self.meta[idx as usize..(idx + size) as usize];
        if let Some(i) = block.iter().position(|m| !m.is_absent()) {
            return refuse(AdmitError::Covered {
                pfn: pfn + i as u64,
            });
        }
        Ok(idx)
    }

    /// [`admit`](Self::admit), telling `plan` what it will change before it writes.
    pub(crate) fn admit_planned(
        &mut self,
        pfn: u64,
        order: u32,
        plan: &mut impl Plan,
    ) -> Result<(), Error> {
        let idx = self.check_admit(pfn, order)?;
        let end = idx + (1 << order);
        // The head; its tails go from ABSENT to INIT in increasing order (a shared pool
        // journals them as a range, see `layout.rs`); then the buddies it merges with (none for
        // an external block) and the list it joins.
        plan.note(idx, self.meta[idx as usize]);
        self.check_attach(idx, order, plan)?;
        plan.begin();
        for m in &mut self.meta[idx as usize..end as usize] {
            *m = PageMeta::INIT;
        }
        self.meta[idx as usize] = PageMeta::new(0, order as u8);
        // The caller wrote these bytes: `check` reads them from now on.
        self.touched = self.touched.max(end);
        self.attach::<true>(idx, order)?;
        Ok(())
    }

    /// Takes one free block of `2^order` pages out of the pool and returns its pfn: the block
    /// that [`alloc`](Self::alloc)`(order)` would hand out (the head of the first non-empty list
    /// at or above `order`, split down the same way), so the rule is pKVM's own and any model of
    /// the pool follows it. The block is no longer the pool's: its bytes are the caller's, and
    /// every call on its pages is [`Error::NotCovered`] until it is [admitted](Self::admit)
    /// again. Not zeroed (under [`ZeroPolicy::OnFree`](crate::ZeroPolicy::OnFree) it already
    /// reads as zeros).
    ///
    /// Errors change nothing: [`Error::InvalidOrder`], [`Error::OutOfMemory`] with no free block
    /// of `order` or above, [`Error::BelowFloor`] when fewer than
    /// [`min_free_pages`](Self::min_free_pages) free pages would be left.
    ///
    /// ```
    /// use pagebuddy::{Config, Error, Link, PageMeta, Pool, SideTable, ZeroPolicy};
    /// let (mut meta, mut links) = ([PageMeta::INIT; 8], [Link::EMPTY; 8]);
    /// let config = Config::new(8).zero(ZeroPolicy::Never);
    /// let mut pool = Pool::without_arena(&mut meta, SideTable::new(&mut links), config)?;
    /// assert_eq!(pool.reclaim(1)?, 0); // splits 0-7: 4-7 and 2-3 stay listed
    /// assert_eq!(pool.put(0), Err(Error::NotCovered { pfn: 0 }));
    /// pool.set_min_free_pages(5);
    /// assert_eq!(pool.reclaim(0)?, 2); // 6 free pages, 5 left
    /// let floor = Error::BelowFloor { order: 0, free_pages: 5, min_free_pages: 5 };
    /// assert_eq!(pool.reclaim(0), Err(floor));
    /// pool.admit(0, 1)?; // back (its buddy, page 2, is not the pool's: no merge)
    /// assert_eq!(pool.buddyinfo(), &[1, 1, 1, 0]);
    /// pool.check()?;
    /// # Ok::<(), Error>(())
    /// ```
    pub fn reclaim(&mut self, order: u32) -> Result<u64, Error> {
        self.reclaim_planned(order, &mut ())
    }

    /// Why a reclaim of `count` blocks of `order` cannot be done, if it cannot; reads only.
    pub(crate) fn check_reclaim(&self, order: u32, count: u64) -> Result<(), Error> {
        let max_order = self.geo.max_order;
        if order >= max_order {
            return Err(Error::InvalidOrder { order, max_order });
        }
        if count == 0 {
            return Ok(());
        }
        if self.capacity(order) < count {
            return Err(Error::OutOfMemory { order });
        }
        let floor = u64::from(self.min_free);
        let free_pages = self.free_pages();
        if u64::from(free_pages) < floor + (count << order) {
            return Err(Error::BelowFloor {
                order,
                free_pages,
                min_free_pages: self.min_free,
            });
        }
        Ok(())
    }

    /// [`reclaim`](Self::reclaim), telling `plan` what it will change before it writes.
    pub(crate) fn reclaim_planned(
        &mut self,
        order: u32,
        plan: &mut impl Plan,
    ) -> Result<u64, Error> {
        self.check_reclaim(order, 1)?;
        let pfn = self.alloc_zeroing::<false, _>(order, plan)?;
        self.forget(pfn, order);
        Ok(pfn)
    }

    /// The block of `order` at `pfn`, just taken off the free lists as if allocated, leaves
    /// the pool: its pages become [`ABSENT`], the head first, then the tails in increasing
    /// order (a shared pool journals them as a range, see `layout.rs`).
    fn forget(&mut self, pfn: u64, order: u32) {
        if let Some(idx) = self.geo.index(pfn) {
            let end = (idx as usize + (1 << order)).min(self.meta.len());
            for m in &mut self.meta[idx as usize..end] {
                *m = PageMeta::new(0, ABSENT);
            }
        }
    }

    /// `out.len()` [reclaims](Self::reclaim) of `order`, all or nothing: the blocks, in the
    /// order the reclaims one by one would take them, are written to `out`. Errors change
    /// nothing: as `reclaim`'s, for the whole batch.
    ///
    /// ```
    /// use pagebuddy::{Config, Link, PageMeta, Pool, SideTable, ZeroPolicy};
    /// let (mut meta, mut links) = ([PageMeta::INIT; 8], [Link::EMPTY; 8]);
    /// let config = Config::new(8).zero(ZeroPolicy::Never);
    /// let mut pool = Pool::without_arena(&mut meta, SideTable::new(&mut links), config)?;
    /// let mut out = [0u64; 3];
    /// pool.reclaim_many(1, &mut out)?;
    /// assert_eq!(out, [0, 2, 4]);
    /// assert_eq!((pool.free_pages(), pool.reclaimable(1)), (2, 1));
    /// # Ok::<(), pagebuddy::Error>(())
    /// ```
    pub fn reclaim_many(&mut self, order: u32, out: &mut [u64]) -> Result<(), Error> {
        let count = out.len() as u64;
        self.check_reclaim(order, count)?;
        // A corrupt free list is found before the first block leaves (as `alloc_many` does).
        self.check_alloc_many(order, count)?;
        for slot in out.iter_mut() {
            *slot = self.reclaim_planned(order, &mut ())?;
        }
        Ok(())
    }

    /// Android's `hyp_pool_reclaimable`: how many blocks of `order` [`reclaim`](Self::reclaim)
    /// could take one after another now, the floor respected (0 for an order the pool cannot
    /// list).
    ///
    /// ```
    /// use pagebuddy::{Config, Link, PageMeta, Pool, SideTable, ZeroPolicy};
    /// let (mut meta, mut links) = ([PageMeta::INIT; 8], [Link::EMPTY; 8]);
    /// let config = Config::new(8).zero(ZeroPolicy::Never);
    /// let mut pool = Pool::without_arena(&mut meta, SideTable::new(&mut links), config)?;
    /// assert_eq!(pool.reclaimable(1), 4);
    /// pool.set_min_free_pages(3);
    /// assert_eq!(pool.reclaimable(1), 2);
    /// # Ok::<(), pagebuddy::Error>(())
    /// ```
    pub fn reclaimable(&self, order: u32) -> u64 {
        if order >= self.geo.max_order {
            return 0;
        }
        let above_floor = u64::from(self.free_pages().saturating_sub(self.min_free)) >> order;
        self.capacity(order).min(above_floor)
    }

    /// Android's `min_free_pages`: the free pages [`reclaim`](Self::reclaim) leaves in the pool
    /// for its own allocations. Allocation is not refused below it (the floor is there for
    /// allocation to use); [`refill_needed`](Self::refill_needed) says how far below it the pool
    /// is, the pages a caller would ask to be donated. 0 (no floor) unless set.
    pub fn min_free_pages(&self) -> u32 {
        self.min_free
    }

    /// Sets [`min_free_pages`](Self::min_free_pages); any value (a floor above the free pages
    /// only stops reclaim).
    ///
    /// ```
    /// use pagebuddy::{Config, Link, PageMeta, Pool, SideTable, ZeroPolicy};
    /// let (mut meta, mut links) = ([PageMeta::INIT; 8], [Link::EMPTY; 8]);
    /// let config = Config::new(8).zero(ZeroPolicy::Never);
    /// let mut pool = Pool::without_arena(&mut meta, SideTable::new(&mut links), config)?;
    /// pool.set_min_free_pages(4);
    /// pool.alloc(3)?; // allocation may use the floor up
    /// assert_eq!((pool.min_free_pages(), pool.refill_needed()), (4, 4));
    /// # Ok::<(), pagebuddy::Error>(())
    /// ```
    pub fn set_min_free_pages(&mut self, pages: u32) {
        self.min_free = pages;
    }

    /// Pages the pool lacks to reach its floor: `min_free_pages - free_pages`, or 0 (Android's
    /// refill request to the host when a pool runs dry).
    pub fn refill_needed(&self) -> u32 {
        self.min_free.saturating_sub(self.free_pages())
    }
}

impl Config {
    /// `self` with every setting of `other` but the page counts.
    const fn like(mut self, other: Config) -> Config {
        self.page_size = other.page_size;
        self.base_pfn = other.base_pfn;
        self.reserved_pages = other.reserved_pages;
        self.order_cap = other.order_cap;
        self.zero = other.zero;
        self.prezeroed = other.prezeroed;
        self
    }
}

/// The same calls on a pool with per-CPU caches: each drains every cache first
/// ([`CachedPool::drain_all`]), so that a reclaim sees every free page and takes the block a
/// pool without caches would, then runs on the pool under its lock.
#[cfg(target_has_atomic = "32")]
impl<L: LinkStore, R: RawLock> CachedPool<'_, L, R> {
    /// [`Pool::admit`]: the block checked first (a refused one drains nothing: draining frees
    /// no page the pool does not cover), then every cache drained.
    pub fn admit(&self, pfn: u64, order: u32) -> Result<(), Error> {
        self.core.with(|p| p.check_admit(pfn, order))?;
        self.drain_all()?;
        self.core.with(|p| p.admit(pfn, order))
    }

    /// [`Pool::reclaim`], after draining every cache (also when it then fails: the caches are
    /// drained to see every free page).
    pub fn reclaim(&self, order: u32) -> Result<u64, Error> {
        self.drain_all()?;
        self.core.with(|p| p.reclaim(order))
    }

    /// [`Pool::reclaim_many`], after draining every cache.
    pub fn reclaim_many(&self, order: u32, out: &mut [u64]) -> Result<(), Error> {
        self.drain_all()?;
        self.core.with(|p| p.reclaim_many(order, out))
    }

    /// [`Pool::reclaimable`] of the pool's free lists (cached blocks not counted: a reclaim
    /// drains them first).
    pub fn reclaimable(&self, order: u32) -> u64 {
        self.core.with(|p| p.reclaimable(order))
    }

    /// [`Pool::min_free_pages`].
    pub fn min_free_pages(&self) -> u32 {
        self.core.with(|p| p.min_free_pages())
    }

    /// [`Pool::set_min_free_pages`].
    pub fn set_min_free_pages(&self, pages: u32) {
        self.core.with(|p| p.set_min_free_pages(pages))
    }
}
