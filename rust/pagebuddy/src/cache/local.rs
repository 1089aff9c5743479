//! A CPU's own handle on its cache slot: the pcp lists as kernel code runs them, with preemption
//! off (Linux's `pcp_spin_trylock` under `preempt_disable`), so that a hit takes no lock at all.
//!
//! [`CachedPool::local`] claims slot `cpu` for as long as the returned [`LocalCache`] lives.
//! Through it, [`alloc`](LocalCache::alloc) and [`put`](LocalCache::put) reach the slot's stacks
//! without the slot's lock; only a refill or a drain takes the pool's lock, once per batch. While
//! the slot is claimed, everyone else leaves its stacks alone and never waits for the handle:
//!
//! - [`CachedPool::alloc`] and [`CachedPool::put`] for that CPU go straight to the pool, under
//!   its lock, as for an uncached order;
//! - [`CachedPool::drain`], [`drain_all`](CachedPool::drain_all) and the drain that precedes
//!   [`Error::OutOfMemory`] on other CPUs skip the slot: its blocks stay cached, and another CPU's
//!   allocation may fail while they sit there (drop the handle or call
//!   [`LocalCache::drain`] to give them back);
//! - [`CachedPool::cached_blocks`] reports none for the slot; [`cached_pages`](CachedPool::cached_pages)
//!   and [`free_pages`](CachedPool::free_pages) still count its pages, from a count the handle
//!   publishes with each change;
//! - [`CachedPool::check`] does not walk the slot's stacks: it requires the blocks missing from
//!   the other slots to add up to exactly the claimed slots' pages.
//!
//! A second [`CachedPool::local`] for a claimed slot returns `None`. No call waits for a handle,
//! so no sequence of calls on one thread can deadlock on one.
//!
//! # The claim
//!
//! A slot's `claimed` flag is set by compare-and-swap (acquire: the previous owner's writes to the
//! stacks are seen), then the slot's lock is taken and released once, which waits out a critical
//! section that began before the flag was set; every later critical section reads the flag
//! under the lock and stays off the stacks. Dropping the handle clears the flag with release
//! ordering, which the next critical section's acquire load pairs with.
//!
//! # Pages: held once, no atomic read-modify-write
//!
//! A block handed out as a pfn carries a refcount that `get` and `put` change by
//! compare-and-swap from any thread, so freeing it takes one atomic read-modify-write even
//! through a handle. A [`Page`] is a block held once, by that value alone (it is neither `Copy`
//! nor `Clone`): its word in the [`PageRef`](crate::PageRef)s says so, every refcount operation
//! on its pfn fails with [`Error::NotHeld`] without writing the word, and so only the `Page`'s
//! owner writes it, with plain stores. [`alloc_page`](LocalCache::alloc_page) and
//! [`free_page`](LocalCache::free_page) make the hot pair without any atomic read-modify-write;
//! [`Page::share`] turns a page into an ordinary pfn with refcount 1.
//!
//! ```
//! use pagebuddy::{
//!     cache_blocks, CacheConfig, CacheSlot, CachedPool, Config, Error, Intrusive, LockedPool,
//!     PageMeta, PageRef, Pool,
//! };
//!
//! const PAGES: usize = 64;
//! let (mut arena, mut meta) = ([0u8; PAGES * 64], [PageMeta::INIT; PAGES]);
//! let pool = Pool::new(&mut arena[..], &mut meta, Intrusive, Config::new(PAGES).page_size(64))?;
//! let config = CacheConfig::new().orders(2).batch(4).high(8);
//! let mut slots: [CacheSlot; 2] = core::array::from_fn(|_| CacheSlot::new());
//! let mut blocks = vec![0u32; cache_blocks(2, &config)];
//! let mut refs = [PageRef::INIT; PAGES];
//! let pool = CachedPool::new(LockedPool::new(pool), &mut slots, &mut blocks, &mut refs, config)?;
//!
//! let mut cpu0 = pool.local(0).expect("slot 0 is free");
//! assert!(pool.local(0).is_none()); // one handle per slot
//! let a = cpu0.alloc(0)?; // refills slot 0 with pages 0..4 and hands out page 0
//! cpu0.put(a)?; // back on top of the stack, no lock taken
//! let page = cpu0.alloc_page(0)?; // the same page, held once by `page`
//! assert_eq!((page.pfn(), pool.refcount(a)), (a, Ok(1)));
//! assert_eq!(pool.put(1, a), Err(Error::NotHeld { pfn: a })); // only `page` can free it
//! cpu0.free_page(page)?;
//! assert_eq!(pool.alloc(0, 0)?, 4); // slot 0 is claimed: straight to the pool
//! pool.drain_all()?; // leaves slot 0 alone
//! assert_eq!(pool.cached_pages(0), 4);
//! drop(cpu0);
//! pool.put(0, 4)?;
//! pool.drain_all()?;
//! pool.check()?;
//! assert_eq!(pool.free_pages(), 64);
//! # Ok::<(), Error>(())
//! ```

use core::cell::Cell;
use core::fmt;
use core::ptr;

use super::{held, unique, Cache, CacheSlot, CachedPool, FREE};
use crate::config::ZeroPolicy;
use crate::error::{CorruptionKind, Error};
use crate::lock::{RawLock, SpinLock};
use crate::store::{LinkStore, SideTable};

#[cfg(not(loom))]
use core::sync::atomic::Ordering;
#[cfg(loom)]
use loom::sync::atomic::Ordering;

/// A CPU's claim on its cache slot of a [`CachedPool`]: allocations and frees through it take no
/// lock on a cache hit. Made by [`CachedPool::local`]; the slot is given back when it drops.
///
/// It stays on the thread that made it (it is neither `Send` nor `Sync`), as kernel code keeps
/// preemption off while it uses the pcp lists. See the [module documentation](self) for what
/// other CPUs see meanwhile.
///
/// ```
/// # use pagebuddy::{cache_blocks, CacheConfig, CacheSlot, CachedPool, Config, Intrusive,
/// #     LockedPool, PageMeta, PageRef, Pool};
/// # let (mut arena, mut meta) = ([0u8; 16 * 64], [PageMeta::INIT; 16]);
/// # let pool = Pool::new(&mut arena[..], &mut meta, Intrusive, Config::new(16).page_size(64))?;
/// # let config = CacheConfig::new().orders(1).batch(2).high(4);
/// # let mut slots: [CacheSlot; 1] = core::array::from_fn(|_| CacheSlot::new());
/// # let mut blocks = vec![0u32; cache_blocks(1, &config)];
/// # let mut refs = [PageRef::INIT; 16];
/// # let pool = CachedPool::new(LockedPool::new(pool), &mut slots, &mut blocks, &mut refs, config)?;
/// let mut cpu = pool.local(0).unwrap();
/// let pfns = [cpu.alloc(0)?, cpu.alloc(0)?, cpu.alloc(0)?];
/// assert_eq!(pfns, [0, 1, 2]);
/// for pfn in pfns {
///     cpu.put(pfn)?;
/// }
/// let mut cached = [0u64; 8];
/// assert_eq!(cpu.cached_blocks(0, &mut cached), 4); // 3, then the three freed on top
/// assert_eq!(cached[..4], [3, 0, 1, 2]);
/// cpu.drain()?;
/// assert_eq!(cpu.cached_pages(), 0);
/// # Ok::<(), pagebuddy::Error>(())
/// ```
pub struct LocalCache<'p, 'a, L: LinkStore = SideTable<'a>, R: RawLock = SpinLock> {
    pool: &'p CachedPool<'a, L, R>,
    slot: &'p CacheSlot<R>,
    /// The slot's part of the block storage (its `Cell`s also make the handle `!Send`, `!Sync`).
    blocks: &'p [Cell<u32>],
    /// The slot's index.
    s: usize,
}

/// A block held once, by this value alone: made by [`LocalCache::alloc_page`], freed by
/// [`LocalCache::free_page`] or [`Page::free`] without any atomic read-modify-write. `get`, `put`
/// and `split` on its pfn fail with [`Error::NotHeld`]; [`share`](Page::share) makes it an
/// ordinary held block. A `Page` that is dropped instead of freed leaves its block held for
/// good, as a leaked pfn does.
///
/// ```
/// # use pagebuddy::{cache_blocks, CacheConfig, CacheSlot, CachedPool, Config, Intrusive,
/// #     LockedPool, PageMeta, PageRef, Pool};
/// # let (mut arena, mut meta) = ([0u8; 16 * 64], [PageMeta::INIT; 16]);
/// # let pool = Pool::new(&mut arena[..], &mut meta, Intrusive, Config::new(16).page_size(64))?;
/// # let config = CacheConfig::new().orders(1).batch(2).high(4);
/// # let mut slots: [CacheSlot; 2] = core::array::from_fn(|_| CacheSlot::new());
/// # let mut blocks = vec![0u32; cache_blocks(2, &config)];
/// # let mut refs = [PageRef::INIT; 16];
/// # let pool = CachedPool::new(LockedPool::new(pool), &mut slots, &mut blocks, &mut refs, config)?;
/// let page = pool.local(0).unwrap().alloc_page(1)?; // order 1: past the cache
/// assert_eq!((page.pfn(), page.order()), (0, 1));
/// // Pages move between threads: this one is freed into slot 1's stack, under its lock.
/// std::thread::scope(|s| s.spawn(|| page.free(1)).join().unwrap())?;
/// let page = pool.local(1).unwrap().alloc_page(0)?;
/// let pfn = page.share(); // now an ordinary held page
/// pool.get(pfn)?;
/// assert_eq!(pool.refcount(pfn), Ok(2));
/// # Ok::<(), pagebuddy::Error>(())
/// ```
#[must_use = "a Page that is not freed leaves its block held"]
pub struct Page<'p, 'a, L: LinkStore = SideTable<'a>, R: RawLock = SpinLock> {
    pool: &'p CachedPool<'a, L, R>,
    idx: u32,
    order: u32,
}

impl<L: LinkStore, R: RawLock> fmt::Debug for Page<'_, '_, L, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Page")
            .field("pfn", &self.pfn())
            .field("order", &self.order)
            .finish()
    }
}

impl<L: LinkStore, R: RawLock> fmt::Debug for LocalCache<'_, '_, L, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCache").field("cpu", &self.s).finish()
    }
}

impl<'a, L: LinkStore, R: RawLock> CachedPool<'a, L, R> {
    /// Claims CPU `cpu`'s slot (`cpu % cpus`) for the returned handle, through which a cache hit
    /// takes no lock; `None` if another handle holds the slot. See [`LocalCache`] and the
    /// [module documentation](crate::cache::local) for what others see while it lives.
    ///
    /// Waits only for a critical section of the slot already running (another call's brief use
    /// of the slot's lock), never for a handle.
    pub fn local(&self, cpu: usize) -> Option<LocalCache<'_, 'a, L, R>> {
        let s = self.slot_index(cpu);
        let slot = &self.slots[s];
        slot.claimed
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        // A critical section that began before the claim may still be using the stacks: wait
        // it out. Every one after this reads the claim under the lock and stays off them.
        slot.with(|_| ());
        Some(LocalCache {
            pool: self,
            slot,
            blocks: self.slot_stacks(s),
            s,
        })
    }

    /// Frees the block `page` owns through CPU `cpu`'s slot, taking the slot's lock (or straight
    /// into the pool while a [`LocalCache`] owns the slot).
    fn free_page_at(&self, cpu: usize, page: Page<'_, 'a, L, R>) -> Result<(), Error> {
        let (idx, order) = (page.idx, page.order);
        self.release_page(idx, order)?;
        if order >= self.orders {
            return self.core.with(|p| p.put_zeroed(self.geo.pfn(idx)));
        }
        self.with_cache(self.slot_index(cpu), |c| self.cache_freed(c, idx, order))
            .unwrap_or_else(|| self.core.with(|p| p.put_zeroed(self.geo.pfn(idx))))
    }

    /// Ends the unique hold of the block of `order` at `idx`: its word goes back to free, and the
    /// block is zeroed if the policy says so at free. The caller owned the block through a
    /// [`Page`] and now owns it alone, neither held nor cached, until it caches or frees it.
    #[inline]
    fn release_page(&self, idx: u32, order: u32) -> Result<(), Error> {
        let r = self.page_ref(idx);
        // Only the Page writes a unique word, so this is still its own (barring corruption).
        if r.load() != unique(order) {
            return Err(self.corrupt(CorruptionKind::BadHead, idx).into());
        }
        r.set(FREE);
        if self.geo.zero == ZeroPolicy::OnFree {
            self.zero_block(idx, order, true);
        }
        Ok(())
    }
}

impl<'p, 'a, L: LinkStore, R: RawLock> LocalCache<'p, 'a, L, R> {
    /// The slot this handle owns (`cpu % cpus` of [`CachedPool::local`]).
    pub fn cpu(&self) -> usize {
        self.s
    }

    /// The pool, for the calls the handle does not offer ([`CachedPool::get`],
    /// [`CachedPool::split`], ...).
    pub fn pool(&self) -> &'p CachedPool<'a, L, R> {
        self.pool
    }

    /// Runs `f` on the slot's stacks, which this handle owns.
    #[inline]
    fn with<T>(&mut self, f: impl FnOnce(&'p CachedPool<'a, L, R>, &mut Cache<'_>) -> T) -> T {
        let (pool, blocks, pages) = (self.pool, self.blocks, &self.slot.pages);
        let cap = pool.cap;
        // SAFETY: this handle owns the slot's claim, taken by `CachedPool::local` and given back
        // only when it drops; `&mut self` keeps its own calls from overlapping.
        unsafe {
            self.slot.with_claimed(|lens| {
                f(
                    pool,
                    &mut Cache {
                        lens,
                        blocks,
                        cap,
                        pages,
                    },
                )
            })
        }
    }

    /// [`CachedPool::alloc`] through this slot without its lock: pops the hottest cached block
    /// (an empty cache refills `batch` blocks under one acquisition of the pool's lock); higher
    /// orders come from the pool. Before [`Error::OutOfMemory`] this slot is drained, then every
    /// other slot not claimed by a handle.
    #[inline]
    pub fn alloc(&mut self, order: u32) -> Result<u64, Error> {
        let idx = match self.pop_hot(order) {
            Some(idx) => idx,
            None => self.take(order)?,
        };
        Ok(self.pool.hand_out(idx, order, held(1, order)))
    }

    /// [`alloc`](Self::alloc), handing the block out as a [`Page`]: held once, by the returned
    /// value alone, so that [`free_page`](Self::free_page) needs no atomic read-modify-write.
    #[inline]
    pub fn alloc_page(&mut self, order: u32) -> Result<Page<'p, 'a, L, R>, Error> {
        let idx = match self.pop_hot(order) {
            Some(idx) => idx,
            None => self.take(order)?,
        };
        self.pool.hand_out(idx, order, unique(order));
        Ok(Page {
            pool: self.pool,
            idx,
            order,
        })
    }

    /// The hit: pops the hottest block of a cached `order`; `None` for an uncached order or an
    /// empty cache. [`Cache::pop`] written out, so that the hit compiles to a few instructions.
    #[inline(always)]
    fn pop_hot(&mut self, order: u32) -> Option<u32> {
        if order >= self.pool.orders {
            return None;
        }
        let (blocks, cap, pages) = (self.blocks, self.pool.cap, &self.slot.pages);
        let k = order as usize;
        // SAFETY: this handle owns the slot's claim (see `with`).
        unsafe {
            self.slot.with_claimed(|lens| {
                let len = lens.get_mut(k)?;
                let top = len.checked_sub(1)?;
                let idx = blocks.get(k * cap + top as usize)?.get();
                *len = top;
                pages.store(
                    pages.load(Ordering::Relaxed).wrapping_sub(1 << k),
                    Ordering::Relaxed,
                );
                Some(idx)
            })
        }
    }

    /// The hit of a free: pushes the block of a cached `order` at `idx` on top of its stack if
    /// that keeps the stack at or below `high`; `false` (nothing done) otherwise.
    /// [`Cache::push`] written out, as [`pop_hot`](Self::pop_hot).
    #[inline(always)]
    fn push_hot(&mut self, order: u32, idx: u32) -> bool {
        if order >= self.pool.orders {
            return false;
        }
        let (blocks, cap, pages, high) =
            (self.blocks, self.pool.cap, &self.slot.pages, self.pool.high);
        let k = order as usize;
        // SAFETY: this handle owns the slot's claim (see `with`).
        unsafe {
            self.slot.with_claimed(|lens| {
                let Some(len) = lens.get_mut(k) else {
                    return false;
                };
                if *len >= high {
                    return false;
                }
                let Some(top) = blocks.get(k * cap + *len as usize) else {
                    return false;
                };
                top.set(idx);
                *len += 1;
                pages.store(
                    pages.load(Ordering::Relaxed).wrapping_add(1 << k),
                    Ordering::Relaxed,
                );
                true
            })
        }
    }

    /// A free block of `order` for this CPU when the hit missed: refilled, or from the pool,
    /// draining the caches before giving up.
    #[inline(never)]
    fn take(&mut self, order: u32) -> Result<u32, Error> {
        match self.try_take(order) {
            Err(Error::OutOfMemory { .. }) => self.take_after_draining(order),
            result => result,
        }
    }

    #[inline]
    fn try_take(&mut self, order: u32) -> Result<u32, Error> {
        if order >= self.pool.orders {
            return self.pool.alloc_uncached(order);
        }
        self.with(|pool, c| match c.pop(order) {
            Some(idx) => Ok(idx),
            None => pool.refill(c, order),
        })
    }

    #[cold]
    fn take_after_draining(&mut self, order: u32) -> Result<u32, Error> {
        self.drain()?;
        match self.try_take(order) {
            Err(Error::OutOfMemory { .. }) => {}
            result => return result,
        }
        for s in (0..self.pool.slots.len()).filter(|&s| s != self.s) {
            self.pool.drain_slot(s)?;
        }
        self.try_take(order)
    }

    /// [`CachedPool::put`] through this slot without its lock: drops one reference to `pfn` (a
    /// compare-and-swap, as other threads may hold it too); when it was the last, the block is
    /// zeroed per the policy and pushed on top of this slot's cache, which returns its `batch`
    /// coldest blocks to the pool when it goes above `high`.
    #[inline]
    pub fn put(&mut self, pfn: u64) -> Result<(), Error> {
        let idx = self.pool.index(pfn)?;
        let Some(order) = self.pool.drop_ref(idx, pfn)? else {
            return Ok(());
        };
        if self.pool.geo.zero == ZeroPolicy::OnFree {
            self.pool.zero_block(idx, order, true);
        }
        self.cache_freed(idx, order)
    }

    /// Frees the block `page` owns: no atomic read-modify-write, no lock on a cache hit. A page
    /// of another pool is freed into that pool's slot of the same number, under its lock.
    #[inline]
    pub fn free_page(&mut self, page: Page<'p, 'a, L, R>) -> Result<(), Error> {
        if !ptr::eq(page.pool, self.pool) {
            return page.free(self.s);
        }
        let (idx, order) = (page.idx, page.order);
        self.pool.release_page(idx, order)?;
        self.cache_freed(idx, order)
    }

    /// Puts the block of `order` at `idx`, which the caller owns alone and has zeroed as the
    /// policy asks, on this slot's cache, or into the pool for an uncached order.
    #[inline(always)]
    fn cache_freed(&mut self, idx: u32, order: u32) -> Result<(), Error> {
        if self.push_hot(order, idx) {
            return Ok(());
        }
        self.cache_freed_slow(idx, order)
    }

    /// [`cache_freed`](Self::cache_freed) past the hit: an uncached order, or a stack that goes
    /// above `high` and gives its coldest `batch` back.
    #[inline(never)]
    fn cache_freed_slow(&mut self, idx: u32, order: u32) -> Result<(), Error> {
        if order >= self.pool.orders {
            let pfn = self.pool.geo.pfn(idx);
            return self.pool.core.with(|p| p.put_zeroed(pfn));
        }
        self.with(|pool, c| pool.cache_freed(c, idx, order))
    }

    /// Returns every block cached in this slot to the pool, under one acquisition of its lock.
    pub fn drain(&mut self) -> Result<(), Error> {
        self.with(|pool, c| pool.drain_cache(c))
    }

    /// Pages cached in this slot.
    pub fn cached_pages(&self) -> u32 {
        self.slot.pages.load(Ordering::Relaxed)
    }

    /// The blocks of `order` cached in this slot, coldest first: copies as many as fit into
    /// `out` and returns how many there are ([`CachedPool::cached_blocks`]).
    pub fn cached_blocks(&mut self, order: u32, out: &mut [u64]) -> usize {
        self.with(|pool, c| pool.copy_blocks(c, order, out))
    }
}

impl<L: LinkStore, R: RawLock> Drop for LocalCache<'_, '_, L, R> {
    fn drop(&mut self) {
        // Release: the next critical section or handle on the slot sees every write made here.
        self.slot.claimed.store(false, Ordering::Release);
    }
}

impl<'p, 'a, L: LinkStore, R: RawLock> Page<'p, 'a, L, R> {
    /// The pfn of the block's head.
    pub fn pfn(&self) -> u64 {
        self.pool.geo.pfn(self.idx)
    }

    /// The block's order.
    pub fn order(&self) -> u32 {
        self.order
    }

    /// Frees the block through CPU `cpu`'s slot of its pool, taking the slot's lock
    /// ([`LocalCache::free_page`] takes none).
    pub fn free(self, cpu: usize) -> Result<(), Error> {
        self.pool.free_page_at(cpu, self)
    }

    /// Makes the block an ordinary held block with refcount 1 and returns its pfn, for
    /// [`CachedPool::get`], [`put`](CachedPool::put) and [`split`](CachedPool::split).
    pub fn share(self) -> u64 {
        // A plain store: no other call writes a Page's word (see the module documentation).
        self.pool.page_ref(self.idx).set(held(1, self.order));
        self.pfn()
    }
}
