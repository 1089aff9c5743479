//! Per-CPU page caches in front of a [`LockedPool`]: Linux's `struct per_cpu_pages`.
//!
//! A [`CachedPool`] keeps, for each CPU slot and each of the lowest orders, a LIFO stack of free
//! blocks taken from the pool (Linux's pcp lists). An allocation of a cached order pops the
//! hottest block of the caller's slot, and the free of one pushes it there (`rmqueue_pcplist`,
//! `free_unref_page`): neither touches the pool's lock. Only an empty cache (refill: `batch`
//! blocks) and a cache above `high` (drain: the `batch` coldest) take the pool's lock, once for
//! the whole batch. Higher orders go straight to the pool. By default each slot sizes its
//! `batch` and `high` by itself, from its own refills and drains, and all caches together keep
//! to a bound (an eighth of the pool); see [`auto`].
//!
//! A CPU that makes many calls in a row claims its slot with [`CachedPool::local`]: through the
//! [`LocalCache`] it gets, a hit takes no lock at all, and a [`Page`] (a block held once, by that
//! value) is freed without any atomic read-modify-write. See [`local`] for what other CPUs see
//! while a slot is claimed.
//!
//! # What the pool sees
//!
//! The pool keeps one reference on every block that has left its free lists, whether a caller
//! holds it or a cache does: its metadata says *held*, refcount 1. The callers' reference counts
//! live in the caller-provided [`PageRef`]s, one atomic word per page (refcount and order), so
//! that `put`, `get` and the cache's hand-out never take the pool's lock. A block is back in the
//! pool, free and coalesced, only when a cache drains it; [`drain_all`](CachedPool::drain_all)
//! leaves the pool exactly as if the caches did not exist (with the callers' blocks held).
//!
//! # The contract kept
//!
//! - A cached block is free: its refcount reads 0, so `get`, `put` and `split` on it fail with
//!   [`Error::NotHeld`] exactly as on a free block of the pool, and
//!   [`free_pages`](CachedPool::free_pages) counts it.
//! - Zero policies hold: under [`ZeroPolicy::OnFree`] a block is zeroed by the `put` that drops
//!   its last reference, before it enters a cache or the pool; under [`ZeroPolicy::OnAlloc`] by
//!   the `alloc` that hands it out. Either way outside the pool's lock.
//! - Before an allocation fails with [`Error::OutOfMemory`], the caller's own slot is drained
//!   and the allocation retried, then every other slot, and retried once more (Linux drains the
//!   pcp lists before it gives up). Meanwhile other threads keep allocating and freeing, so a
//!   block another thread frees into its cache after that slot was drained is not seen: the
//!   failure means "nothing was free in the pool or in any cache at the moment each was looked
//!   at", not a snapshot of the whole.
//!
//! # Memory ordering
//!
//! - A slot's stacks are read and written only under the slot's lock ([`RawLock`]: acquire on
//!   lock, release on unlock), and the pool only under its own lock. Locks are always taken in
//!   one order, slot before pool, and at most one slot at a time, except by
//!   [`check`](CachedPool::check), which takes every slot in increasing index and then the pool:
//!   no cycle, no deadlock. When each CPU uses its own slot, its lock is never contended.
//! - A slot claimed by a [`LocalCache`] is reached without its lock, by the handle alone: every
//!   critical section reads the claim under the lock before it touches the stacks and leaves a
//!   claimed slot alone, and no call ever waits for a handle (see [`local`]). The handle takes
//!   only the pool's lock, for refills and drains.
//! - A [`PageRef`] word changes by compare-and-swap (`get`, `put`, `split`) or, while no caller
//!   holds the block, by the one thread that owns it (the cache that hands it out). The `put` that
//!   drops the last reference swaps with release ordering and then issues an acquire fence, as
//!   `Arc` does: every write the other holders made to the block happens before it is zeroed or
//!   handed out again. A block then reaches another thread only through a slot's lock or the
//!   pool's, which carry the zeroed bytes along.
//! - Between a stack (or the pool) and a caller, outside every lock, a block is *in transit*:
//!   taken and not yet handed out, or freed by its last `put` and not yet cached. Its word says
//!   so, set under the lock it leaves (or by the `put`'s compare-and-swap) and cleared under the
//!   lock it joins (or by the hand-out), so [`check`](CachedPool::check), which holds every
//!   lock, finds each block cached, held or in transit, and is exact while other threads call
//!   the pool through the slots' locks. [`free_pages`](CachedPool::free_pages) does not count a
//!   block in transit; it is exact when no call is in flight. A slot claimed by a
//!   [`LocalCache`] publishes only its page count, without a lock: `check` run meanwhile may
//!   see that count and the handle's blocks at different moments (see [`local`]).
//!
//! ```
//! use pagebuddy::{
//!     cache_blocks, CacheConfig, CacheSlot, CachedPool, Config, Intrusive, LockedPool, PageMeta,
//!     PageRef, Pool,
//! };
//!
//! const PAGES: usize = 64;
//! let (mut arena, mut meta) = ([0u8; PAGES * 64], [PageMeta::INIT; PAGES]);
//! let pool = Pool::new(&mut arena[..], &mut meta, Intrusive, Config::new(PAGES).page_size(64))?;
//!
//! // Two CPU slots, orders 0..=1 cached, 4 blocks per refill or drain, at most 8 kept.
//! let config = CacheConfig::new().orders(2).batch(4).high(8);
//! let mut slots: [CacheSlot; 2] = core::array::from_fn(|_| CacheSlot::new());
//! let mut blocks = vec![0u32; cache_blocks(2, &config)];
//! let mut refs = [PageRef::INIT; PAGES];
//! let pool = CachedPool::new(LockedPool::new(pool), &mut slots, &mut blocks, &mut refs, config)?;
//!
//! let a = pool.alloc(0, 0)?; // refills slot 0 with pages 0..4 and hands out page 0
//! assert_eq!((a, pool.cached_pages(0)), (0, 3));
//! pool.put(0, a)?; // back on top of slot 0's stack: the next alloc gets it again
//! assert_eq!(pool.alloc(0, 0)?, a);
//! assert_eq!(pool.put(1, 5), Err(pagebuddy::Error::NotHeld { pfn: 5 })); // free
//! assert_eq!(pool.free_pages(), 63); // cached pages count as free
//! pool.put(1, a)?; // freed into slot 1
//! pool.drain_all()?;
//! pool.check()?;
//! assert_eq!(pool.with_core(|p| p.buddyinfo().to_vec()), [0, 0, 0, 0, 0, 0, 1]);
//! # Ok::<(), pagebuddy::Error>(())
//! ```

use core::cell::Cell;
use core::ptr::NonNull;
#[cfg(not(loom))]
use core::{
    cell::UnsafeCell,
    sync::atomic::{fence, AtomicBool, AtomicU32, Ordering},
};
#[cfg(loom)]
use loom::{
    cell::UnsafeCell,
    sync::atomic::{fence, AtomicBool, AtomicU32, Ordering},
};

use crate::config::{Geometry, ZeroPolicy};
use crate::error::{Corruption, CorruptionKind, Error, GeometryError};
use crate::lock::{LockedPool, RawLock, SpinLock};
use crate::store::{LinkStore, PageMeta, SideTable, NO_ORDER};
use crate::Pool;

pub use crate::{MAX_CACHED_ORDERS, MAX_CACHE_HIGH};

pub mod auto;
pub mod local;
pub use auto::SlotSizes;
use auto::{Limits, Sizing, Trip};
pub use local::{LocalCache, Page};

/// How the per-CPU caches of a [`CachedPool`] behave (Linux's pcp `batch` and `high`).
///
/// [`new`](Self::new) sizes each slot by itself, from `batch` 16 and `high` 64 up to
/// `high_max` 2048, with all caches together holding at most an eighth of the pool (see
/// [`auto`]); [`batch`](Self::batch) or [`high`](Self::high) fix the sizes instead.
///
/// ```
/// use pagebuddy::CacheConfig;
/// let config = CacheConfig::new().batch(8).high(32); // fixed sizes
/// assert_eq!((config.orders, config.batch, config.high), (4, 8, 32));
/// assert!(!config.is_auto());
/// assert_eq!(config.slot_blocks(), 4 * 33);
/// assert!(CacheConfig::new().batch(0).validate().is_err());
/// let auto = CacheConfig::new(); // sized by the slot's own traffic
/// assert!(auto.is_auto());
/// assert_eq!((auto.high_max, auto.fraction, auto.slot_blocks()), (2048, 8, 4 * 2049));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// Orders `0..orders` are cached; higher orders go straight to the pool. At most
    /// [`MAX_CACHED_ORDERS`]; a pool with fewer orders caches all of its own. Default 4
    /// (orders 0..=3: Linux's `PAGE_ALLOC_COSTLY_ORDER` is 3).
    pub orders: u32,
    /// Blocks an empty cache takes from the pool at once, and blocks a full one gives back.
    /// Default 16.
    pub batch: u32,
    /// Blocks a cache keeps: a `put` that takes it above `high` gives the `batch` coldest back.
    /// Default 64. When the caches size themselves, the smallest `high`, where a slot starts.
    pub high: u32,
    /// The largest `high` a slot grows to. Above `high`, each slot sizes itself ([`auto`]);
    /// equal to `high`, the sizes stay fixed. Default 2048.
    pub high_max: u32,
    /// When the caches size themselves, all of them together hold at most `nr_pages /
    /// fraction` pages (each slot its share). Default 8. Unused with fixed sizes.
    pub fraction: u32,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl CacheConfig {
    /// Orders 0..=3 cached, each slot sized by itself from batch 16 and high 64 up to high
    /// 2048, all caches together holding at most an eighth of the pool.
    pub const fn new() -> Self {
        CacheConfig {
            orders: 4,
            batch: 16,
            high: 64,
            high_max: 2048,
            fraction: 8,
        }
    }

    /// Sets how many orders (from 0) are cached.
    pub const fn orders(mut self, orders: u32) -> Self {
        self.orders = orders;
        self
    }

    /// Fixes the blocks moved per refill or drain (and so the sizes: no auto sizing).
    pub const fn batch(mut self, batch: u32) -> Self {
        self.batch = batch;
        self.high_max = self.high;
        self
    }

    /// Fixes the blocks a cache keeps before it drains (and so the sizes: no auto sizing).
    pub const fn high(mut self, high: u32) -> Self {
        self.high = high;
        self.high_max = high;
        self
    }

    /// Sizes each slot by itself from the current `batch` and `high` up to `high_max` (a
    /// `high_max` equal to `high` fixes the sizes).
    pub const fn auto(mut self, high_max: u32) -> Self {
        self.high_max = high_max;
        self
    }

    /// Sets the bound of auto-sized caches: all together hold at most `nr_pages / fraction`.
    pub const fn fraction(mut self, fraction: u32) -> Self {
        self.fraction = fraction;
        self
    }

    /// Whether each slot sizes itself (`high_max > high`).
    pub const fn is_auto(&self) -> bool {
        self.high_max > self.high
    }

    /// Checks the bounds: `1 <= batch <= high <= high_max <= MAX_CACHE_HIGH`,
    /// `orders <= MAX_CACHED_ORDERS`, and `fraction >= 1` when the caches size themselves.
    pub const fn validate(&self) -> Result<(), GeometryError> {
        if self.batch == 0
            || self.batch > self.high
            || self.high > self.high_max
            || self.high_max > MAX_CACHE_HIGH
            || self.orders as usize > MAX_CACHED_ORDERS
            || (self.is_auto() && self.fraction == 0)
        {
            return Err(GeometryError::CacheConfig {
                orders: self.orders,
                batch: self.batch,
                // The high that breaks the rule: `high_max` when it is the one out of bounds.
                high: if self.high <= MAX_CACHE_HIGH
                    && (self.high_max < self.high || self.high_max > MAX_CACHE_HIGH)
                {
                    self.high_max
                } else {
                    self.high
                },
            });
        }
        Ok(())
    }

    /// Block entries one slot needs: `high_max + 1` per cached order (a `put` may take a cache
    /// to `high + 1` before it drains).
    pub const fn slot_blocks(&self) -> usize {
        (self.orders as usize).saturating_mul(self.high_max as usize + 1)
    }
}

/// Block entries (`u32`s) a [`CachedPool`] with `cpus` slots needs: `cpus` times
/// [`CacheConfig::slot_blocks`].
///
/// ```
/// use pagebuddy::{cache_blocks, CacheConfig};
/// assert_eq!(cache_blocks(8, &CacheConfig::new().high(64)), 8 * 4 * 65);
/// assert_eq!(cache_blocks(8, &CacheConfig::new()), 8 * 4 * 2049); // auto: up to high 2048
/// ```
pub const fn cache_blocks(cpus: usize, config: &CacheConfig) -> usize {
    cpus.saturating_mul(config.slot_blocks())
}

/// Refcount bits of a [`PageRef`] word.
const REFS: u32 = 0xFFFF;
/// The order sits above the refcount.
const ORDER_SHIFT: u32 = 16;
/// The word of a page no caller holds: refcount 0, no order.
const FREE: u32 = (NO_ORDER as u32) << ORDER_SHIFT;
/// `check`'s mark on a cached block it has seen (refcount 0, so every call still sees it free).
const SEEN: u32 = FREE | 1 << 24;
/// The head of a block on its way between a cache (or the pool) and a caller, outside every
/// lock: taken out of a stack (or the pool) and not yet handed out, or freed by its last `put`
/// and not yet cached (or freed into the pool). Its refcount bits are 0, so every call sees it
/// free; [`CachedPool::check`] counts it as the pool's and no cache's. Set under the lock of the
/// stack or pool it leaves (or by the `put`'s compare-and-swap), cleared under the lock of the
/// one it joins (or by the hand-out), so that `check`, which holds every lock, sees each block
/// in a stack, held, or in transit, never lost.
const TRANSIT: u32 = FREE | 1 << 26;
/// Set on the head of a block a [`Page`] owns: held once, by that value alone. Its refcount bits
/// stay 0, so that `get`, `put` and `split` on its pfn fail as on a free page and never write the
/// word: only the `Page` does.
const UNIQUE: u32 = 1 << 25;

const fn held(refcount: u32, order: u32) -> u32 {
    refcount | order << ORDER_SHIFT
}

/// The word of the head of a block of `order` that a [`Page`] owns.
const fn unique(order: u32) -> u32 {
    UNIQUE | order << ORDER_SHIFT
}

/// The refcount a word stands for: its count, or 1 for a [`Page`]'s block.
const fn refs_of(word: u32) -> u32 {
    if word & UNIQUE != 0 {
        1
    } else {
        word & REFS
    }
}

/// One page's holders as a [`CachedPool`] counts them: its refcount and, for the head of a held
/// block, its order, in one atomic word. Provide one per page of the pool.
///
/// ```
/// use pagebuddy::PageRef;
/// let refs = [PageRef::INIT; 16];
/// let more: Vec<PageRef> = (0..16).map(|_| PageRef::new()).collect();
/// # assert_eq!(refs.len() + more.len(), 32);
/// ```
#[derive(Debug)]
pub struct PageRef(AtomicU32);

impl PageRef {
    /// The value to fill a fresh slice with (`[PageRef::INIT; N]`): each use is a new word.
    #[cfg(not(loom))]
    #[allow(clippy::declare_interior_mutable_const)]
    pub const INIT: PageRef = PageRef::new();

    /// A page no caller holds.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        PageRef(AtomicU32::new(FREE))
    }

    /// A page no caller holds.
    #[cfg(loom)]
    pub fn new() -> Self {
        PageRef(AtomicU32::new(FREE))
    }

    #[inline]
    fn load(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }

    #[inline]
    fn set(&self, word: u32) {
        self.0.store(word, Ordering::Relaxed)
    }
}

impl Default for PageRef {
    fn default() -> Self {
        Self::new()
    }
}

/// One CPU slot's lock and the lengths of its per-order stacks; the stacks themselves live in
/// the block storage given to [`CachedPool::new`].
///
/// ```
/// use pagebuddy::{CacheSlot, SpinLock};
/// let slots: [CacheSlot<SpinLock>; 4] = core::array::from_fn(|_| CacheSlot::new());
/// # assert_eq!(slots.len(), 4);
/// ```
// Each slot on cache lines of its own (128 bytes: pairs of lines are fetched together on
// x86-64), so that CPUs working on their own slots never share a line.
#[repr(align(128))]
pub struct CacheSlot<R: RawLock = SpinLock> {
    lock: R,
    /// Set while a [`LocalCache`] owns the slot: its stacks are then reached by that handle
    /// alone, without the lock, and everyone else leaves them alone (see [`CachedPool::local`]).
    claimed: AtomicBool,
    /// Pages in the stacks, written with each length by whoever owns the stacks, so that
    /// [`CachedPool::free_pages`] can count a claimed slot without touching its stacks.
    pages: AtomicU32,
    lens: UnsafeCell<Stacks>,
}

/// What the owner of a slot's stacks reaches: their lengths, and the slot's sizes ([`auto`]).
#[derive(Clone, Copy)]
struct Stacks {
    lens: [u32; MAX_CACHED_ORDERS],
    sizing: Sizing,
}

impl<R: RawLock> Default for CacheSlot<R> {
    fn default() -> Self {
        Self::new()
    }
}

impl<R: RawLock> CacheSlot<R> {
    /// An unlocked slot with empty caches.
    pub fn new() -> Self {
        CacheSlot {
            lock: R::new(),
            claimed: AtomicBool::new(false),
            pages: AtomicU32::new(0),
            lens: UnsafeCell::new(Stacks {
                lens: [0; MAX_CACHED_ORDERS],
                sizing: Sizing::EMPTY,
            }),
        }
    }

    /// Whether a [`LocalCache`] owns the slot. Read under the lock: the acquire pairs with the
    /// release of the handle's drop, so that a slot seen unclaimed shows the handle's last writes.
    fn is_claimed(&self) -> bool {
        self.claimed.load(Ordering::Acquire)
    }

    /// Runs `f` on the stack lengths of a slot the caller has claimed, without the lock.
    ///
    /// # Safety
    /// The caller owns the slot's claim ([`CachedPool::local`]): no one else reaches the lengths.
    unsafe fn with_claimed<T>(&self, f: impl FnOnce(&mut Stacks) -> T) -> T {
        #[cfg(not(loom))]
        {
            // SAFETY: the claim keeps every other caller off the lengths (see `with`), and the
            // reference does not outlive `f`.
            f(unsafe { &mut *self.lens.get() })
        }
        #[cfg(loom)]
        {
            // SAFETY: as above; loom additionally checks that no other access overlaps.
            self.lens.with_mut(|p| f(unsafe { &mut *p }))
        }
    }

    /// Runs `f` on the stack lengths inside one critical section of the slot's lock; `None`,
    /// without touching them, while a [`LocalCache`] owns the slot.
    fn with<T>(&self, f: impl FnOnce(&mut Stacks) -> T) -> Option<T> {
        self.lock.lock();
        let _held = SlotHeld(&self.lock);
        // The claim is read before any reference to the lengths is made: the owner of a claim
        // has them to itself.
        if self.is_claimed() {
            return None;
        }
        #[cfg(not(loom))]
        {
            // SAFETY: the lock is held until `_held` drops, after `f` returns, and the lengths
            // are only reached here and in `lens_locked`, whose caller holds the lock too, or by
            // the owner of the slot's claim, which `CachedPool::local` lets in only once no
            // critical section is running, and which every later one sees (above).
            Some(f(unsafe { &mut *self.lens.get() }))
        }
        #[cfg(loom)]
        {
            // SAFETY: as above; loom additionally checks that no other access overlaps.
            Some(self.lens.with_mut(|p| f(unsafe { &mut *p })))
        }
    }

    /// Waits out a critical section of the slot's lock that is running, if any.
    fn wait_unlocked(&self) {
        self.lock.lock();
        drop(SlotHeld(&self.lock));
    }

    /// The stack lengths, read while the caller holds the lock.
    ///
    /// # Safety
    /// The caller holds the slot's lock.
    unsafe fn lens_locked(&self) -> [u32; MAX_CACHED_ORDERS] {
        #[cfg(not(loom))]
        {
            // SAFETY: the caller holds the lock, so no `with` writes the lengths meanwhile.
            unsafe { (*self.lens.get()).lens }
        }
        #[cfg(loom)]
        {
            // SAFETY: as above.
            self.lens.with(|p| unsafe { (*p).lens })
        }
    }
}

/// Releases a slot's lock when dropped.
struct SlotHeld<'l, R: RawLock>(&'l R);

impl<R: RawLock> Drop for SlotHeld<'_, R> {
    fn drop(&mut self) {
        // SAFETY: a `SlotHeld` is only made right after `lock` returned on the same lock.
        unsafe { self.0.unlock() }
    }
}

/// Every slot's lock, taken in increasing index by `CachedPool::lock_all`; released when dropped.
struct AllHeld<'l, R: RawLock>(&'l [CacheSlot<R>]);

impl<R: RawLock> Drop for AllHeld<'_, R> {
    fn drop(&mut self) {
        for slot in self.0 {
            // SAFETY: `lock_all` locked every slot of this slice before making the `AllHeld`.
            unsafe { slot.lock.unlock() }
        }
    }
}

/// One slot's stacks, while its lock is held: per order, the page indices of the cached blocks,
/// coldest at the bottom (index 0), hottest on top.
struct Cache<'s> {
    lens: &'s mut [u32; MAX_CACHED_ORDERS],
    /// The slot's sizes and their history.
    sizing: &'s mut Sizing,
    blocks: &'s [Cell<u32>],
    /// Entries per order: `high + 1`.
    cap: usize,
    /// The slot's published page count, kept equal to the stacks' pages.
    pages: &'s AtomicU32,
}

impl Cache<'_> {
    /// The storage of order `order`'s stack (empty past the storage, which `new` rules out).
    fn stack(&self, order: u32) -> &[Cell<u32>] {
        let start = order as usize * self.cap;
        self.blocks.get(start..start + self.cap).unwrap_or(&[])
    }

    /// Pages in the slot's stacks.
    fn pages(&self) -> u32 {
        self.pages.load(Ordering::Relaxed)
    }

    fn len(&self, order: u32) -> usize {
        self.lens.get(order as usize).map_or(0, |&n| n as usize)
    }

    fn set_len(&mut self, order: u32, len: usize) {
        if let Some(n) = self.lens.get_mut(order as usize) {
            // Only the owner of the stacks writes the count: a load and a store, no
            // read-modify-write.
            let pages = self.pages.load(Ordering::Relaxed);
            let pages = pages
                .wrapping_add((len as u32) << order)
                .wrapping_sub(*n << order);
            self.pages.store(pages, Ordering::Relaxed);
            *n = len as u32;
        }
    }

    /// Takes the hottest block of `order`.
    fn pop(&mut self, order: u32) -> Option<u32> {
        let len = self.len(order).checked_sub(1)?;
        let idx = self.stack(order).get(len)?.get();
        self.set_len(order, len);
        Some(idx)
    }

    /// Puts `idx` on top of `order`'s stack; `false` if the stack is full.
    fn push(&mut self, order: u32, idx: u32) -> bool {
        let len = self.len(order);
        match self.stack(order).get(len) {
            Some(top) => {
                top.set(idx);
                self.set_len(order, len + 1);
                true
            }
            None => false,
        }
    }

    /// Reverses the stack of `order` from `from` to the top.
    fn reverse_from(&mut self, order: u32, from: usize) {
        if let Some(part) = self.stack(order).get(from..self.len(order)) {
            for i in 0..part.len() / 2 {
                part[i].swap(&part[part.len() - 1 - i]);
            }
        }
    }

    /// Returns the `n` coldest blocks of `order` to `pool`, coldest first, and moves the rest
    /// down. On an error the blocks not yet returned stay cached.
    fn give_back<L: LinkStore>(
        &mut self,
        pool: &mut Pool<'_, L>,
        order: u32,
        n: usize,
    ) -> Result<(), Error> {
        let len = self.len(order);
        let stack = self.stack(order);
        let mut done = 0;
        let mut result = Ok(());
        for block in stack.iter().take(n.min(len)) {
            // The block is zeroed as the policy asks (by `put`, or never dirtied since refill).
            result = pool.put_zeroed(pool.geo.pfn(block.get()));
            if result.is_err() {
                break;
            }
            done += 1;
        }
        for i in done..len {
            stack[i - done].set(stack[i].get());
        }
        self.set_len(order, len - done);
        result
    }
}

/// A [`LockedPool`] with per-CPU caches of the lowest orders in front of it.
///
/// Every call names the CPU slot it runs for, as kernel code passes `smp_processor_id()`: any
/// number works (slot `cpu % cpus`), and a thread may use any slot, but the caches only avoid
/// contention while each CPU (or thread) sticks to its own. A block may be freed through a slot
/// other than the one that allocated it. See the [module documentation](crate::cache) for the
/// design and a full example.
pub struct CachedPool<'a, L: LinkStore = SideTable<'a>, R: RawLock = SpinLock> {
    pub(crate) core: LockedPool<'a, L, R>,
    slots: &'a [CacheSlot<R>],
    /// Each slot's stacks: `slot_blocks` entries per slot, `cap` per order.
    blocks: &'a [Cell<u32>],
    refs: &'a [PageRef],
    arena: NonNull<u8>,
    arena_len: usize,
    geo: Geometry,
    /// Orders cached: `min(config.orders, max_order)`.
    orders: u32,
    /// The configured sizes, how far they may grow, and each slot's share of the bound.
    limits: Limits,
    fraction: u32,
    slot_blocks: usize,
    cap: usize,
}

// SAFETY: `core` is Sync under these bounds. A slot's lengths and its part of `blocks` are only
// reached under the slot's lock (`with_cache`, or `lock_all` for `check`), so sharing the pool
// hands them to one thread at a time; `refs` are atomics. The arena pointer is only written
// through for blocks the writing call owns alone (see `zero_block`).
unsafe impl<'a, L: LinkStore, R: RawLock + Sync> Sync for CachedPool<'a, L, R> where
    Pool<'a, L>: Send
{
}

// SAFETY: every part is a unique borrow (taken as `&mut` by `new`) or, for the arena, a pointer
// into memory the pool already owns; moving them together to another thread is as sound as
// moving the `LockedPool`, which needs `Pool: Send` and `R: Send`.
unsafe impl<'a, L: LinkStore, R: RawLock + Send> Send for CachedPool<'a, L, R> where
    Pool<'a, L>: Send
{
}

impl<'a, L: LinkStore, R: RawLock> CachedPool<'a, L, R> {
    /// Puts caches in front of `core`: one slot per entry of `slots`, stacks in `blocks`
    /// (at least [`cache_blocks`]`(slots.len(), &config)` entries), one [`PageRef`] per page in
    /// `refs`.
    ///
    /// The caches start empty. Blocks already held in `core` stay held, with their refcounts
    /// moved to `refs`.
    ///
    /// Where CPUs run in parallel, start `refs` on a 128-byte boundary: a slot's pages come in
    /// refill batches of consecutive pages (16 from a free pool, starting at a multiple of 16)
    /// and every hit writes their words, so with `refs` aligned a batch fills whole cache lines
    /// and two slots' batches never share one (docs/benchmarks.md measures the difference on 16
    /// cores).
    pub fn new(
        core: LockedPool<'a, L, R>,
        slots: &'a mut [CacheSlot<R>],
        blocks: &'a mut [u32],
        refs: &'a mut [PageRef],
        config: CacheConfig,
    ) -> Result<Self, Error> {
        config.validate()?;
        if slots.is_empty() {
            return Err(GeometryError::NoCacheSlots.into());
        }
        let need = cache_blocks(slots.len(), &config);
        let have = blocks.len();
        if have < need {
            return Err(GeometryError::CacheTooSmall { need, have }.into());
        }
        let (geo, (arena, arena_len)) = core.with(|p| (p.geo, p.arena.raw()));
        let pages = geo.nr_pages as usize;
        if refs.len() < pages {
            let have = refs.len();
            return Err(GeometryError::PageRefsTooSmall { need: pages, have }.into());
        }
        let budget = if config.is_auto() {
            // Each slot's share of the bound: all together hold at most nr_pages / fraction.
            (pages / config.fraction as usize / slots.len()).min(u32::MAX as usize) as u32
        } else {
            u32::MAX
        };
        let limits = Limits {
            batch: config.batch,
            high: config.high,
            high_max: config.high_max,
            budget,
        };
        for slot in slots.iter() {
            slot.claimed.store(false, Ordering::Relaxed);
            slot.with(|st| {
                st.lens = [0; MAX_CACHED_ORDERS];
                st.sizing = Sizing::new(&limits);
            });
            slot.pages.store(0, Ordering::Relaxed);
        }
        let refs = &refs[..pages];
        // The pool keeps one reference per held page on behalf of all its holders.
        core.with(|p| {
            for (m, r) in p.meta.iter_mut().zip(refs) {
                if m.refcount > 0 {
                    r.set(held(u32::from(m.refcount), u32::from(m.order)));
                    m.refcount = 1;
                } else {
                    r.set(FREE);
                }
            }
        });
        Ok(CachedPool {
            core,
            slots,
            blocks: Cell::from_mut(&mut blocks[..need]).as_slice_of_cells(),
            refs,
            arena,
            arena_len,
            geo,
            orders: config.orders.min(geo.max_order),
            limits,
            fraction: config.fraction,
            slot_blocks: config.slot_blocks(),
            cap: config.high_max as usize + 1,
        })
    }

    /// The pool's shape.
    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// Number of CPU slots.
    pub fn cpus(&self) -> usize {
        self.slots.len()
    }

    /// The configuration in effect (`orders` capped at the pool's `max_order`).
    pub fn config(&self) -> CacheConfig {
        CacheConfig {
            orders: self.orders,
            batch: self.limits.batch,
            high: self.limits.high,
            high_max: self.limits.high_max,
            fraction: self.fraction,
        }
    }

    /// Pages all caches together may hold: `nr_pages / fraction` rounded down to a multiple of
    /// the slots, when the caches size themselves; `None` with fixed sizes (no bound).
    pub fn cache_bound(&self) -> Option<u64> {
        (self.limits.budget != u32::MAX)
            .then(|| u64::from(self.limits.budget) * self.slots.len() as u64)
    }

    /// CPU `cpu`'s slot's current `high` and `batch` (the configured ones with fixed sizes);
    /// `None` while a [`LocalCache`] owns the slot (ask it: [`LocalCache::sizes`]).
    pub fn cache_sizes(&self, cpu: usize) -> Option<SlotSizes> {
        self.with_cache(self.slot_index(cpu), |c| c.sizing.sizes())
    }

    /// The slot that CPU `cpu` uses.
    #[inline]
    fn slot_index(&self, cpu: usize) -> usize {
        let n = self.slots.len();
        if cpu < n {
            cpu
        } else {
            cpu % n
        }
    }

    /// Slot `s`'s part of the block storage.
    #[inline]
    fn slot_stacks(&self, s: usize) -> &[Cell<u32>] {
        let start = s * self.slot_blocks;
        self.blocks
            .get(start..start + self.slot_blocks)
            .unwrap_or(&[])
    }

    /// Runs `f` on slot `s`'s stacks under its lock; `None`, without running `f`, while a
    /// [`LocalCache`] owns the slot.
    #[inline]
    fn with_cache<T>(&self, s: usize, f: impl FnOnce(&mut Cache<'_>) -> T) -> Option<T> {
        let (blocks, cap, slot) = (self.slot_stacks(s), self.cap, &self.slots[s]);
        let pages = &slot.pages;
        slot.with(|st| {
            f(&mut Cache {
                lens: &mut st.lens,
                sizing: &mut st.sizing,
                blocks,
                cap,
                pages,
            })
        })
    }

    #[inline]
    fn index(&self, pfn: u64) -> Result<u32, Error> {
        self.geo.index(pfn).ok_or(Error::PfnOutOfRange { pfn })
    }

    #[inline]
    fn page_ref(&self, idx: u32) -> &PageRef {
        // `idx` comes from `index` or from the pool, so it is below nr_pages == refs.len().
        &self.refs[idx as usize]
    }

    /// The error for a `Page` whose head no longer holds its unique word: out of line, so
    /// that the free it guards stays small.
    #[cold]
    #[inline(never)]
    fn bad_head(&self, idx: u32) -> Error {
        self.corrupt(CorruptionKind::BadHead, idx).into()
    }

    fn corrupt(&self, kind: CorruptionKind, idx: u32) -> Corruption {
        Corruption {
            kind,
            pfn: self.geo.pfn(idx),
        }
    }

    /// Zeroes the block of `order` at `idx`, which the calling operation owns alone: its last
    /// reference was just dropped by this call's compare-and-swap, or it was just taken off a
    /// cache or the pool for this call to hand out. Nothing else reads or writes its bytes.
    /// A freed block (`cold`) of an uncached order bypasses the CPU caches
    /// ([`Arena::zero_cold`](crate::Arena)); a block of a cached order, freed onto a CPU's
    /// stack or taken from one, is reused soon and stays hot, and is zeroed with `memset`
    /// (`zeroing::zero_bytes`), as any other block is. Out of line: the memset is the cost, and
    /// the hits that call it stay small.
    #[inline(never)]
    fn zero_block(&self, idx: u32, order: u32, cold: bool) {
        let off = idx as usize * self.geo.page_size;
        let len = self.geo.page_size << order;
        if off
            .checked_add(len)
            .is_some_and(|end| end <= self.arena_len)
        {
            // SAFETY: off + len <= arena_len (checked above), so the offset stays inside the
            // arena's allocation.
            let p = unsafe { self.arena.as_ptr().add(off) };
            // SAFETY (each call): [p, p + len) lies inside the arena, which is valid for writes
            // for the pool's life, and no one else accesses the block's bytes (see above).
            if cold && order >= self.orders {
                unsafe { crate::zeroing::zero_cold_bytes(p, len) }
            } else {
                unsafe { crate::zeroing::zero_bytes(p, len) }
            }
        }
    }

    /// Allocates a block of `2^order` pages for CPU `cpu` and returns the pfn of its head.
    ///
    /// A cached order pops the hottest block of the slot's cache; an empty cache first takes
    /// `batch` blocks from the pool under one acquisition of its lock (the first is handed out,
    /// the rest cached so that they come out in the order the pool gave them). Other orders are
    /// allocated from the pool. Before [`Error::OutOfMemory`], the slot and then every other slot
    /// are drained (see the [module documentation](crate::cache)).
    #[inline]
    pub fn alloc(&self, cpu: usize, order: u32) -> Result<u64, Error> {
        match self.try_alloc(cpu, order) {
            Err(Error::OutOfMemory { .. }) => self.alloc_after_draining(cpu, order),
            result => result,
        }
    }

    #[inline]
    fn try_alloc(&self, cpu: usize, order: u32) -> Result<u64, Error> {
        if order >= self.orders {
            let idx = self.alloc_uncached(order)?;
            return Ok(self.hand_out(idx, order, held(1, order)));
        }
        let cached: Option<Result<u32, Error>> = self.with_cache(self.slot_index(cpu), |c| {
            let idx = match c.pop(order) {
                Some(idx) => idx,
                None => self.refill(c, order)?,
            };
            self.page_ref(idx).set(TRANSIT);
            Ok(idx)
        });
        let idx = match cached {
            Some(idx) => idx?,
            // A LocalCache owns the slot: straight to the pool.
            None => self.alloc_uncached(order)?,
        };
        Ok(self.hand_out(idx, order, held(1, order)))
    }

    /// A block of `order` from the pool itself, past the caches, in transit to the caller.
    fn alloc_uncached(&self, order: u32) -> Result<u32, Error> {
        self.core.with(|p| {
            let idx = self.index(p.alloc_unzeroed(order)?)?;
            self.page_ref(idx).set(TRANSIT);
            Ok(idx)
        })
    }

    /// Takes up to `batch` blocks of `order` from the pool into the empty cache `c`, under one
    /// acquisition of the pool's lock, and returns the first. Auto sizing: the trip is counted
    /// first, the slot keeps to its share of the bound, and a pool that cannot fill the batch
    /// puts the slot back at its configured sizes.
    fn refill(&self, c: &mut Cache<'_>, order: u32) -> Result<u32, Error> {
        let base = self.geo.base_pfn;
        c.sizing.trip(Trip::Refill, &self.limits);
        let (batch, budget) = (c.sizing.batch, self.limits.budget);
        self.core.with(|p| {
            let first = match p.alloc_unzeroed(order) {
                Ok(first) => first,
                Err(e) => {
                    c.sizing.reset(&self.limits);
                    return Err(e);
                }
            };
            let from = c.len(order);
            for _ in 1..batch {
                if c.pages().saturating_add(1 << order) > budget {
                    break;
                }
                let Ok(pfn) = p.alloc_unzeroed(order) else {
                    c.sizing.reset(&self.limits);
                    break;
                };
                if !c.push(order, (pfn - base) as u32) {
                    p.put_zeroed(pfn)?;
                    break;
                }
            }
            c.reverse_from(order, from);
            Ok((first - base) as u32)
        })
    }

    /// Gives the caller the block of `order` at `idx`: zeroed if the policy says so at
    /// allocation, its head's word set to `word` (refcount 1, or a [`Page`]'s).
    #[inline]
    fn hand_out(&self, idx: u32, order: u32, word: u32) -> u64 {
        if self.geo.zero == ZeroPolicy::OnAlloc {
            self.zero_block(idx, order, false);
        }
        self.page_ref(idx).set(word);
        self.geo.pfn(idx)
    }

    #[cold]
    fn alloc_after_draining(&self, cpu: usize, order: u32) -> Result<u64, Error> {
        let own = self.slot_index(cpu);
        self.drain_slot(own)?;
        match self.try_alloc(cpu, order) {
            Err(Error::OutOfMemory { .. }) => {}
            result => return result,
        }
        for s in (0..self.slots.len()).filter(|&s| s != own) {
            self.drain_slot(s)?;
        }
        self.try_alloc(cpu, order)
    }

    /// A contiguous run of exactly `nr_pages` order-0 pages ([`Pool::alloc_exact`]), from the
    /// pool behind the caches under its lock; each page of the run is held once. Before
    /// [`Error::OutOfMemory`] the caches are drained as for [`alloc`](Self::alloc).
    pub fn alloc_exact(&self, cpu: usize, nr_pages: u64) -> Result<u64, Error> {
        match self.try_alloc_exact(nr_pages) {
            Err(Error::OutOfMemory { .. }) => {}
            result => return result,
        }
        let own = self.slot_index(cpu);
        self.drain_slot(own)?;
        match self.try_alloc_exact(nr_pages) {
            Err(Error::OutOfMemory { .. }) => {}
            result => return result,
        }
        for s in (0..self.slots.len()).filter(|&s| s != own) {
            self.drain_slot(s)?;
        }
        self.try_alloc_exact(nr_pages)
    }

    fn try_alloc_exact(&self, nr_pages: u64) -> Result<u64, Error> {
        self.core.with(|p| {
            let pfn = p.alloc_exact(nr_pages)?;
            let idx = self.index(pfn)?;
            for page in idx..idx + nr_pages as u32 {
                self.page_ref(page).set(held(1, 0));
            }
            Ok(pfn)
        })
    }

    /// Drops one reference to `pfn`. When it was the last, the block is zeroed per the policy
    /// and, for a cached order, pushed on top of CPU `cpu`'s cache (a cache that goes above
    /// `high` returns its `batch` coldest blocks to the pool under one acquisition of its lock);
    /// a block of a higher order is freed into the pool.
    #[inline]
    pub fn put(&self, cpu: usize, pfn: u64) -> Result<(), Error> {
        let idx = self.index(pfn)?;
        let Some(order) = self.drop_ref(idx, pfn, TRANSIT)? else {
            return Ok(());
        };
        if self.geo.zero == ZeroPolicy::OnFree {
            self.zero_block(idx, order, true);
        }
        if order >= self.orders {
            return self.free_into_pool(idx);
        }
        self.with_cache(self.slot_index(cpu), |c| self.cache_freed(c, idx, order))
            // A LocalCache owns the slot: straight to the pool.
            .unwrap_or_else(|| self.free_into_pool(idx))
    }

    /// Frees the block at `idx`, which the caller owns alone and has zeroed as the policy asks,
    /// into the pool: its word free again under the pool's lock.
    fn free_into_pool(&self, idx: u32) -> Result<(), Error> {
        self.core.with(|p| {
            self.page_ref(idx).set(FREE);
            p.put_zeroed(self.geo.pfn(idx))
        })
    }

    /// Pushes the freed block of a cached `order` at `idx` on top of `c`; a cache that goes
    /// above `high` (or past its share of the bound) returns its `batch` coldest blocks to the
    /// pool under one acquisition of its lock.
    #[inline]
    fn cache_freed(&self, c: &mut Cache<'_>, idx: u32, order: u32) -> Result<(), Error> {
        c.sizing.tick();
        if !c.push(order, idx) {
            return self.free_into_pool(idx);
        }
        // Cached: no longer in transit (this runs under the stacks' lock, or their claim).
        self.page_ref(idx).set(FREE);
        if c.len(order) > c.sizing.high as usize || c.pages() > self.limits.budget {
            c.sizing.trip(Trip::Drain, &self.limits);
            let batch = c.sizing.batch as usize;
            return self.core.with(|p| c.give_back(p, order, batch));
        }
        Ok(())
    }

    /// Drops one reference to page `idx`; `Some(order)` when it was the last, and the block of
    /// that order now belongs to the caller alone, its word then `last` ([`TRANSIT`] through
    /// the slots' locks, [`FREE`] through a [`LocalCache`]).
    #[inline]
    fn drop_ref(&self, idx: u32, pfn: u64, last: u32) -> Result<Option<u32>, Error> {
        let r = &self.page_ref(idx).0;
        let mut word = r.load(Ordering::Relaxed);
        loop {
            let refcount = word & REFS;
            if refcount == 0 {
                return Err(self.not_held(idx, pfn));
            }
            let order = word >> ORDER_SHIFT;
            if order >= self.geo.max_order {
                return Err(self.corrupt(CorruptionKind::BadHead, idx).into());
            }
            let is_last = refcount == 1;
            let new = if is_last { last } else { word - 1 };
            match r.compare_exchange_weak(word, new, Ordering::Release, Ordering::Relaxed) {
                Ok(_) if is_last => {
                    // Every other holder's writes to the block happen before this point.
                    fence(Ordering::Acquire);
                    return Ok(Some(order));
                }
                Ok(_) => return Ok(None),
                Err(current) => word = current,
            }
        }
    }

    /// Takes one more reference to a held page ([`Pool::get`]).
    pub fn get(&self, pfn: u64) -> Result<(), Error> {
        let r = &self.page_ref(self.index(pfn)?).0;
        let mut word = r.load(Ordering::Relaxed);
        loop {
            match word & REFS {
                0 => return Err(self.not_held(self.index(pfn)?, pfn)),
                REFS => return Err(Error::RefcountOverflow { pfn }),
                _ => {}
            }
            match r.compare_exchange_weak(word, word + 1, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(current) => word = current,
            }
        }
    }

    /// Splits the held block headed by `pfn` into order-0 pages ([`Pool::split`]): each former
    /// tail gets refcount 1, the head keeps its refcount. Runs under the pool's lock, so that no
    /// block of the split can reach the pool before the pool has split it too.
    pub fn split(&self, pfn: u64) -> Result<(), Error> {
        let idx = self.index(pfn)?;
        self.core.with(|p| {
            let r = &self.page_ref(idx).0;
            let mut word = r.load(Ordering::Relaxed);
            let order = loop {
                let (refcount, order) = (word & REFS, word >> ORDER_SHIFT);
                if refcount == 0 {
                    return Err(if p.meta[idx as usize].is_absent() {
                        Error::NotCovered { pfn }
                    } else {
                        Error::NotHeld { pfn }
                    });
                }
                let m = p.meta[idx as usize];
                if order >= self.geo.max_order || u32::from(m.order) != order || m.refcount == 0 {
                    return Err(self.corrupt(CorruptionKind::BadHead, idx).into());
                }
                match r.compare_exchange_weak(
                    word,
                    held(refcount, 0),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break order,
                    Err(current) => word = current,
                }
            };
            for tail in idx + 1..idx + (1 << order) {
                self.page_ref(tail).set(held(1, 0));
            }
            p.split(pfn)
        })
    }

    /// Returns every block cached in CPU `cpu`'s slot to the pool (orders ascending, coldest
    /// first), under one acquisition of the slot's lock and one of the pool's.
    pub fn drain(&self, cpu: usize) -> Result<(), Error> {
        self.drain_slot(self.slot_index(cpu))
    }

    /// [`drain`](Self::drain) for every slot in turn. Afterwards, if no other call ran meanwhile,
    /// the pool holds every free page and [`check`](Self::check) passes.
    pub fn drain_all(&self) -> Result<(), Error> {
        let mut result = Ok(());
        for s in 0..self.slots.len() {
            result = result.and(self.drain_slot(s));
        }
        result
    }

    /// Drains slot `s`, every order even after an error; returns the first error. A slot a
    /// [`LocalCache`] owns is left alone.
    fn drain_slot(&self, s: usize) -> Result<(), Error> {
        self.with_cache(s, |c| self.drain_cache(c))
            .unwrap_or(Ok(()))
    }

    /// Returns every block of `c` to the pool under one acquisition of its lock, and puts the
    /// slot back at its configured sizes.
    fn drain_cache(&self, c: &mut Cache<'_>) -> Result<(), Error> {
        c.sizing.reset(&self.limits);
        self.core.with(|p| {
            let mut result = Ok(());
            for order in 0..self.orders {
                let n = c.len(order);
                result = result.and(c.give_back(p, order, n));
            }
            result
        })
    }

    /// Free pages: in the pool and in every cache (each slot's count read in turn, claimed
    /// slots included).
    pub fn free_pages(&self) -> u32 {
        let cached: u32 = self
            .slots
            .iter()
            .map(|s| s.pages.load(Ordering::Relaxed))
            .sum();
        cached + self.core.free_pages()
    }

    /// Pages cached in CPU `cpu`'s slot (also while a [`LocalCache`] owns it).
    pub fn cached_pages(&self, cpu: usize) -> u32 {
        self.slots[self.slot_index(cpu)]
            .pages
            .load(Ordering::Relaxed)
    }

    /// The blocks of `order` cached in CPU `cpu`'s slot, coldest first (the next allocation
    /// takes the last): copies as many as fit into `out` and returns how many there are. While a
    /// [`LocalCache`] owns the slot, copies nothing and returns 0 (ask the handle:
    /// [`LocalCache::cached_blocks`]).
    pub fn cached_blocks(&self, cpu: usize, order: u32, out: &mut [u64]) -> usize {
        self.with_cache(self.slot_index(cpu), |c| self.copy_blocks(c, order, out))
            .unwrap_or(0)
    }

    fn copy_blocks(&self, c: &Cache<'_>, order: u32, out: &mut [u64]) -> usize {
        let len = c.len(order);
        for (o, b) in out.iter_mut().zip(c.stack(order).iter().take(len)) {
            *o = self.geo.pfn(b.get());
        }
        len
    }

    /// The refcount of `pfn` (0 for free and cached pages and for tails; 1 for a [`Page`]).
    pub fn refcount(&self, pfn: u64) -> Result<u16, Error> {
        let idx = self.index(pfn)?;
        match refs_of(self.page_ref(idx).load()) as u16 {
            0 => match self.not_held(idx, pfn) {
                e @ Error::NotCovered { .. } => Err(e),
                _ => Ok(0),
            },
            refcount => Ok(refcount),
        }
    }

    /// The error for a page no caller holds: [`Error::NotCovered`] if the pool does not cover
    /// it (see [`Pool::admit`]), else [`Error::NotHeld`]. Takes the pool's lock: errors only.
    #[cold]
    fn not_held(&self, idx: u32, pfn: u64) -> Error {
        self.core.with(|p| {
            if p.meta.get(idx as usize).is_some_and(PageMeta::is_absent) {
                Error::NotCovered { pfn }
            } else {
                Error::NotHeld { pfn }
            }
        })
    }

    /// The metadata of `pfn` as a [`Pool`] without caches would report it: a cached block is a
    /// free head of its order.
    pub fn page(&self, pfn: u64) -> Result<PageMeta, Error> {
        let idx = self.index(pfn)?;
        self.core.with(|p| {
            let word = self.page_ref(idx).load();
            let m = p.meta[idx as usize];
            Ok(match refs_of(word) {
                0 if m.is_absent() => return Err(Error::NotCovered { pfn }),
                0 if m.refcount > 0 => PageMeta::new(0, m.order),
                0 => m,
                refcount => PageMeta::new(refcount as u16, (word >> ORDER_SHIFT) as u8),
            })
        })
    }

    /// The order of the block `pfn` heads, or `None` for a tail page.
    pub fn order(&self, pfn: u64) -> Result<Option<u32>, Error> {
        let order = self.page(pfn)?.order;
        Ok((order != NO_ORDER).then_some(u32::from(order)))
    }

    /// Runs `f` on the pool under its lock, for queries ([`Pool::buddyinfo`],
    /// [`Pool::free_list`], ...). Blocks in the caches are held in the pool's eyes. Calling the
    /// cached pool from `f` deadlocks.
    pub fn with_core<T>(&self, f: impl FnOnce(&Pool<'a, L>) -> T) -> T {
        self.core.with(|p| f(p))
    }

    /// Every slot's lock, in increasing index.
    fn lock_all(&self) -> AllHeld<'_, R> {
        for slot in self.slots {
            slot.lock.lock();
        }
        AllHeld(self.slots)
    }

    /// Validates the pool ([`Pool::check`]) and the caches against it: every cached block is
    /// a block of its stack's order that the pool holds and no caller does, cached once; every
    /// block the pool holds is held by a caller (with the same order), cached, or in transit
    /// between the two; no caller holds a page the pool has free. Exact while other threads
    /// call the pool through the slots' locks; a slot a [`LocalCache`] claims is counted, not
    /// walked, and exact only while its handle is idle (see the
    /// [module documentation](crate::cache)).
    pub fn check(&self) -> Result<(), Corruption> {
        let _all = self.lock_all();
        self.core.with(|p| {
            p.check()?;
            let cached = self.check_pages(p)?;
            let marked = self.mark_cached(p, cached);
            self.unmark_cached();
            marked
        })
    }

    /// Compares every page's [`PageRef`] with the pool's metadata and counts, per order, the
    /// blocks that must be in the caches.
    fn check_pages(&self, p: &Pool<'a, L>) -> Result<[u32; MAX_CACHED_ORDERS], Corruption> {
        let mut cached = [0u32; MAX_CACHED_ORDERS];
        for (idx, (m, r)) in (0u32..).zip(p.meta.iter().zip(self.refs)) {
            let word = r.load();
            let order = u32::from(m.order);
            let ok = match (word & REFS, m.refcount) {
                // A Page's block: held by the pool too, with the same order.
                (0, held) if word & UNIQUE != 0 => held > 0 && word == unique(order),
                // In transit: the pool's, no cache's, no caller's yet (or any more).
                (0, held) if word == TRANSIT => held > 0 && order < self.geo.max_order,
                (0, _) if word != FREE => false,
                (0, 0) => true,
                (0, _) => match cached.get_mut(order as usize) {
                    Some(n) if order < self.orders => {
                        *n += 1;
                        true
                    }
                    _ => false,
                },
                (_, 0) => false,
                _ => word >> ORDER_SHIFT == order,
            };
            if !ok {
                return Err(self.corrupt(CorruptionKind::Cache, idx));
            }
        }
        Ok(cached)
    }

    /// Walks every cached block (all slots locked), requiring a block the pool holds, of its
    /// stack's order, seen once (marked [`SEEN`] on the way), and `expect[k]` blocks of order k.
    fn mark_cached(
        &self,
        p: &Pool<'a, L>,
        expect: [u32; MAX_CACHED_ORDERS],
    ) -> Result<(), Corruption> {
        let mut seen = [0u32; MAX_CACHED_ORDERS];
        // Pages in the slots that LocalCaches own, whose stacks only their owners may read.
        let mut claimed = 0u32;
        for s in 0..self.slots.len() {
            let slot = &self.slots[s];
            if slot.is_claimed() {
                claimed = claimed.wrapping_add(slot.pages.load(Ordering::Relaxed));
                continue;
            }
            // SAFETY: `check` holds every slot's lock, and the slot is not claimed.
            let lens = unsafe { slot.lens_locked() };
            for order in 0..self.orders {
                let len = lens[order as usize] as usize;
                let start = s * self.slot_blocks + order as usize * self.cap;
                if len > self.cap {
                    return Err(self.corrupt(CorruptionKind::Cache, 0));
                }
                for b in self.blocks.get(start..start + len).unwrap_or(&[]) {
                    let idx = b.get();
                    let Some(m) = p.meta.get(idx as usize) else {
                        return Err(self.corrupt(CorruptionKind::Cache, 0));
                    };
                    let r = self.page_ref(idx);
                    if m.refcount == 0 || u32::from(m.order) != order || r.load() != FREE {
                        return Err(self.corrupt(CorruptionKind::Cache, idx));
                    }
                    r.set(SEEN);
                    seen[order as usize] += 1;
                }
            }
        }
        // What the walked slots did not show must be exactly the claimed slots' pages.
        let mut unseen = 0u32;
        for (k, (&a, &b)) in seen.iter().zip(&expect).enumerate() {
            if a > b {
                return Err(self.corrupt(CorruptionKind::Cache, 0));
            }
            unseen = unseen.wrapping_add((b - a) << k);
        }
        if unseen != claimed {
            return Err(self.corrupt(CorruptionKind::Cache, 0));
        }
        Ok(())
    }

    /// Clears `mark_cached`'s marks.
    fn unmark_cached(&self) {
        for r in self.refs {
            if r.load() == SEEN {
                r.set(FREE);
            }
        }
    }

    /// Drains every cache and returns the pool, with the callers' refcounts back in its
    /// metadata.
    #[cfg(not(loom))]
    pub fn into_inner(self) -> Result<LockedPool<'a, L, R>, Error> {
        // Owning the pool means no LocalCache is alive: a slot still claimed belongs to one that
        // was forgotten (`mem::forget`), and is drained like the others.
        for slot in self.slots {
            slot.claimed.store(false, Ordering::Relaxed);
        }
        self.drain_all()?;
        self.core.with(|p| {
            for (m, r) in p.meta.iter_mut().zip(self.refs) {
                // A Page's block (refs_of 1) stays held once, as the pool has it.
                let refcount = refs_of(r.load());
                if refcount > 0 {
                    m.refcount = refcount as u16;
                }
            }
        });
        Ok(self.core)
    }
}

/// This thread's CPU slot number for [`CachedPool`]: 0 for the first thread that asks, 1 for
/// the next, and so on (a pool uses slot `n % cpus`).
///
/// ```
/// let here = pagebuddy::thread_cpu();
/// assert_eq!(pagebuddy::thread_cpu(), here);
/// let there = std::thread::spawn(pagebuddy::thread_cpu).join().unwrap();
/// assert_ne!(here, there);
/// ```
#[cfg(all(feature = "std", not(loom)))]
pub fn thread_cpu() -> usize {
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    std::thread_local! {
        static CPU: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    CPU.with(|cpu| *cpu)
}

#[cfg(all(feature = "std", not(loom)))]
impl<L: LinkStore, R: RawLock> CachedPool<'_, L, R> {
    /// [`alloc`](Self::alloc) for this thread's slot ([`thread_cpu`]).
    pub fn alloc_local(&self, order: u32) -> Result<u64, Error> {
        self.alloc(thread_cpu(), order)
    }

    /// [`put`](Self::put) into this thread's slot ([`thread_cpu`]).
    pub fn put_local(&self, pfn: u64) -> Result<(), Error> {
        self.put(thread_cpu(), pfn)
    }

    /// [`drain`](Self::drain) of this thread's slot ([`thread_cpu`]).
    pub fn drain_local(&self) -> Result<(), Error> {
        self.drain(thread_cpu())
    }
}

#[cfg(all(test, not(loom)))]
pub(super) mod tests {
    use std::vec;
    use std::vec::Vec;

    use super::*;
    use crate::{Config, Link};

    pub(super) const PS: usize = 64;

    pub(super) struct Mem {
        pub(super) arena: Vec<u8>,
        meta: Vec<PageMeta>,
        links: Vec<Link>,
        slots: Vec<CacheSlot>,
        blocks: Vec<u32>,
        refs: Vec<PageRef>,
    }

    impl Mem {
        pub(super) fn new(nr: usize, cpus: usize, config: &CacheConfig) -> Self {
            Mem {
                arena: vec![0; nr * PS],
                meta: vec![PageMeta::INIT; nr],
                links: vec![Link::EMPTY; nr],
                slots: (0..cpus).map(|_| CacheSlot::new()).collect(),
                blocks: vec![0; cache_blocks(cpus, config)],
                refs: (0..nr).map(|_| PageRef::new()).collect(),
            }
        }

        pub(super) fn pool(
            &mut self,
            config: Config,
            cache: CacheConfig,
        ) -> Result<CachedPool<'_>, Error> {
            let pool = Pool::new(
                &mut self.arena[..],
                &mut self.meta,
                SideTable::new(&mut self.links),
                config,
            )?;
            CachedPool::new(
                LockedPool::new(pool),
                &mut self.slots,
                &mut self.blocks,
                &mut self.refs,
                cache,
            )
        }
    }

    pub(super) fn small() -> CacheConfig {
        CacheConfig::new().orders(2).batch(2).high(3)
    }

    pub(super) fn cfg(nr: usize) -> Config {
        Config::new(nr).page_size(PS)
    }

    #[test]
    fn config_bounds() {
        let c = CacheConfig::default();
        assert_eq!(c, CacheConfig::new());
        assert_eq!((c.orders, c.batch, c.high), (4, 16, 64));
        assert_eq!((c.high_max, c.fraction, c.is_auto()), (2048, 8, true));
        assert_eq!(c.slot_blocks(), 4 * 2049);
        assert_eq!(cache_blocks(3, &c), 3 * 4 * 2049);
        let fixed = c.high(64);
        assert_eq!((fixed.high_max, fixed.is_auto()), (64, false));
        assert_eq!(cache_blocks(3, &fixed), 3 * 4 * 65);
        assert_eq!(c.batch(8).high_max, 64);
        assert_eq!(c.high(8).batch(8).auto(100).high_max, 100);
        assert_eq!(cache_blocks(usize::MAX, &c), usize::MAX);
        let bad = |c: CacheConfig| {
            Err(GeometryError::CacheConfig {
                orders: c.orders,
                batch: c.batch,
                high: c.high,
            })
        };
        for c in [
            CacheConfig::new().batch(0),
            CacheConfig::new().batch(65),
            CacheConfig::new().high(MAX_CACHE_HIGH + 1).batch(1),
            CacheConfig::new().orders(MAX_CACHED_ORDERS as u32 + 1),
            CacheConfig::new().fraction(0),
        ] {
            assert_eq!(c.validate(), bad(c));
        }
        for c in [
            CacheConfig::new().auto(63),
            CacheConfig::new().auto(MAX_CACHE_HIGH + 1),
        ] {
            assert_eq!(
                c.validate(),
                Err(GeometryError::CacheConfig {
                    orders: 4,
                    batch: 16,
                    high: c.high_max
                })
            );
        }
        for c in [
            CacheConfig::new().batch(1).high(1),
            CacheConfig::new().batch(64),
            CacheConfig::new().high(MAX_CACHE_HIGH),
            CacheConfig::new().orders(MAX_CACHED_ORDERS as u32),
            CacheConfig::new().orders(0),
            CacheConfig::new().auto(MAX_CACHE_HIGH),
            CacheConfig::new().high(8).batch(4).fraction(0), // fixed: no bound to check
        ] {
            assert_eq!(c.validate(), Ok(()));
        }
    }

    #[test]
    fn storage_errors() {
        let c = small();
        let mut m = Mem::new(8, 2, &c);
        let bad = CacheConfig::new().batch(0);
        assert!(matches!(
            m.pool(cfg(8), bad),
            Err(Error::Geometry(GeometryError::CacheConfig { .. }))
        ));
        let mut m = Mem::new(8, 2, &c);
        m.slots.clear();
        assert_eq!(
            m.pool(cfg(8), c).err(),
            Some(GeometryError::NoCacheSlots.into())
        );
        let mut m = Mem::new(8, 2, &c);
        m.blocks.pop();
        assert_eq!(
            m.pool(cfg(8), c).err(),
            Some(GeometryError::CacheTooSmall { need: 16, have: 15 }.into())
        );
        let mut m = Mem::new(8, 2, &c);
        m.refs.pop();
        assert_eq!(
            m.pool(cfg(8), c).err(),
            Some(GeometryError::PageRefsTooSmall { need: 8, have: 7 }.into())
        );
        let mut m = Mem::new(8, 2, &c);
        m.blocks.push(0);
        m.refs.push(PageRef::new());
        let p = m.pool(cfg(8), c).unwrap();
        assert_eq!(p.cpus(), 2);
        assert_eq!(p.config(), c);
        assert_eq!(p.geometry(), cfg(8).geometry().unwrap());
        // Orders are capped at the pool's own.
        let mut m = Mem::new(2, 1, &CacheConfig::new());
        assert_eq!(
            m.pool(cfg(2), CacheConfig::new()).unwrap().config().orders,
            2
        );
    }

    #[test]
    fn held_pages_move_to_refs_and_back() {
        let c = small();
        let mut m = Mem::new(8, 1, &c);
        let mut pool = Pool::new(
            &mut m.arena[..],
            &mut m.meta,
            SideTable::new(&mut m.links),
            cfg(8).reserved_pages(1),
        )
        .unwrap();
        let a = pool.alloc(1).unwrap();
        pool.get(a).unwrap();
        pool.get(a).unwrap();
        let p = CachedPool::new(
            LockedPool::new(pool),
            &mut m.slots,
            &mut m.blocks,
            &mut m.refs,
            c,
        )
        .unwrap();
        assert_eq!((p.refcount(0), p.refcount(a)), (Ok(1), Ok(3)));
        assert_eq!(p.page(a), Ok(PageMeta::new(3, 1)));
        p.with_core(|core| assert_eq!(core.refcount(a), Ok(1)));
        p.check().unwrap();
        p.put(0, a).unwrap();
        let core = p.into_inner().unwrap();
        core.with(|core| {
            assert_eq!((core.refcount(0), core.refcount(a)), (Ok(1), Ok(2)));
            assert_eq!(core.refcount(a + 1), Ok(0));
        });
        core.check().unwrap();
    }

    #[test]
    fn queries_of_cached_and_free_pages() {
        let c = small();
        let mut m = Mem::new(8, 2, &c);
        let p = m.pool(cfg(8), c).unwrap();
        assert_eq!(p.alloc(5, 0), Ok(0)); // slot 1; refill caches page 1
        assert_eq!(p.cached_pages(1), 1);
        assert_eq!(p.cached_pages(0), 0);
        let mut out = [0u64; 1];
        assert_eq!(p.cached_blocks(3, 0, &mut out), 1);
        assert_eq!(out, [1]);
        assert_eq!(p.cached_blocks(3, 0, &mut []), 1);
        // A cached block reads as a free head of its order; a free pool block as itself.
        assert_eq!(p.page(1), Ok(PageMeta::new(0, 0)));
        assert_eq!(p.order(1), Ok(Some(0)));
        assert_eq!(p.page(2), Ok(PageMeta::new(0, 1)));
        assert_eq!(p.page(3), Ok(PageMeta::INIT));
        assert_eq!(p.order(3), Ok(None));
        assert_eq!(p.page(0), Ok(PageMeta::new(1, 0)));
        assert_eq!(p.page(8), Err(Error::PfnOutOfRange { pfn: 8 }));
        assert_eq!(p.refcount(8), Err(Error::PfnOutOfRange { pfn: 8 }));
        for e in [p.put(0, 1), p.get(1), p.split(1)] {
            assert_eq!(e, Err(Error::NotHeld { pfn: 1 }));
        }
        for e in [p.put(0, 9), p.get(9), p.split(9)] {
            assert_eq!(e, Err(Error::PfnOutOfRange { pfn: 9 }));
        }
        assert_eq!(p.free_pages(), 7);
        // Higher orders bypass the caches.
        assert_eq!(p.alloc(0, 2), Ok(4));
        assert_eq!(p.cached_pages(0), 0);
        assert_eq!(
            p.alloc(0, 4),
            Err(Error::InvalidOrder {
                order: 4,
                max_order: 4
            })
        );
        p.put(0, 4).unwrap();
        p.with_core(|core| assert_eq!(core.page(4), Ok(PageMeta::new(0, 2))));
        p.check().unwrap();
    }

    #[test]
    fn refcount_overflow() {
        let c = small();
        let mut m = Mem::new(4, 1, &c);
        let p = m.pool(cfg(4), c).unwrap();
        let a = p.alloc(0, 0).unwrap();
        for _ in 1..u16::MAX {
            p.get(a).unwrap();
        }
        assert_eq!(p.get(a), Err(Error::RefcountOverflow { pfn: a }));
        assert_eq!(p.refcount(a), Ok(u16::MAX));
        for _ in 1..u16::MAX {
            p.put(0, a).unwrap();
        }
        assert_eq!(p.refcount(a), Ok(1));
        assert_eq!(p.cached_pages(0), 1);
        p.put(0, a).unwrap();
        assert_eq!(p.cached_pages(0), 2);
    }

    #[test]
    fn zeroing_happens_outside_the_pool() {
        for zero in [ZeroPolicy::OnFree, ZeroPolicy::OnAlloc] {
            let c = small();
            let mut m = Mem::new(4, 1, &c);
            m.arena.fill(0xAA);
            let p = m.pool(cfg(4).zero(zero), c).unwrap();
            let a = p.alloc(0, 1).unwrap(); // order 1: cached
            let b = p.alloc(0, 2).err(); // not enough left
            assert_eq!(b, Some(Error::OutOfMemory { order: 2 }));
            let base = p.with_core(|core| core.page_addr(a).unwrap().as_ptr());
            // SAFETY: the block is held by this test; it lies in the arena.
            unsafe { base.write_bytes(0x11, 2 * PS) };
            p.put(0, a).unwrap();
            let first = p.alloc(0, 1).unwrap();
            assert_eq!(first, a);
            // SAFETY: as above.
            let bytes = unsafe { std::slice::from_raw_parts(base, 2 * PS) };
            assert!(bytes.iter().all(|&b| b == 0), "{zero:?}");
            p.put(0, a).unwrap();
            p.drain_all().unwrap();
            p.check().unwrap();
        }
    }

    #[test]
    fn full_cache_drains_its_coldest_batch() {
        let c = small(); // batch 2, high 3
        let mut m = Mem::new(16, 1, &c);
        let p = m.pool(cfg(16), c).unwrap();
        let pfns: Vec<u64> = (0..6).map(|_| p.alloc(0, 0).unwrap()).collect();
        assert_eq!(pfns, [0, 1, 2, 3, 4, 5]);
        for &pfn in &pfns[..3] {
            p.put(0, pfn).unwrap();
        }
        assert_eq!(p.cached_pages(0), 3);
        p.put(0, pfns[3]).unwrap(); // 4 > high: 0 and 1 go back, coalesced
        let mut out = [0u64; 4];
        assert_eq!(p.cached_blocks(0, 0, &mut out), 2);
        assert_eq!(out[..2], [2, 3]);
        // 0 and 1 merged behind the order-1 block the refills split off.
        p.with_core(|core| assert_eq!(core.free_list(1).collect::<Vec<_>>(), [6, 0]));
        p.check().unwrap();
    }

    /// A pool with page 0 held (refcount 2), 1 cached in slot 0, and a split order-1 block
    /// at 2-3 held, for the corruption tests.
    fn corrupt_case(check: impl Fn(&CachedPool<'_>)) {
        let c = small();
        let mut m = Mem::new(8, 2, &c);
        let p = m.pool(cfg(8), c).unwrap();
        assert_eq!(p.alloc(0, 0), Ok(0));
        p.get(0).unwrap();
        assert_eq!(p.alloc(1, 1), Ok(2));
        p.check().unwrap();
        check(&p);
    }

    fn cache_corruption(p: &CachedPool<'_>, pfn: u64) {
        assert_eq!(
            p.check(),
            Err(Corruption {
                kind: CorruptionKind::Cache,
                pfn
            })
        );
    }

    #[test]
    fn check_finds_each_broken_rule() {
        // A refcount-0 word with stray bits.
        corrupt_case(|p| {
            p.refs[5].set(FREE | 1);
            cache_corruption(p, 5);
            p.refs[5].set(0);
            cache_corruption(p, 5);
        });
        // A caller holds a page the pool has free.
        corrupt_case(|p| {
            p.refs[5].set(held(1, 0));
            cache_corruption(p, 5);
        });
        // Orders disagree.
        corrupt_case(|p| {
            p.refs[2].set(held(1, 0));
            cache_corruption(p, 2);
        });
        // A held block that no one holds and no cache has: lost.
        corrupt_case(|p| {
            p.refs[0].set(FREE);
            cache_corruption(p, 0);
        });
        // The same for a cached order: found by the counts.
        corrupt_case(|p| {
            p.refs[2].set(FREE);
            cache_corruption(p, 0);
        });
        // And for an uncached order: found at the page.
        corrupt_case(|p| {
            assert_eq!(p.alloc(0, 2), Ok(4));
            p.refs[4].set(FREE);
            cache_corruption(p, 4);
        });
        // A cached block that a caller holds.
        corrupt_case(|p| {
            p.refs[1].set(held(1, 0));
            cache_corruption(p, 1);
        });
        // A cached entry naming a free page, a page outside, a block of another order.
        for (entry, at) in [(5u32, 5u64), (99, 0), (2, 2)] {
            corrupt_case(|p| {
                p.blocks[0].set(entry);
                cache_corruption(p, at);
            });
        }
        // The same block cached twice (and block 1 lost).
        corrupt_case(|p| {
            p.refs[0].set(FREE);
            p.with_cache(0, |c| assert!(c.push(0, 1)));
            cache_corruption(p, 1);
            // Marks are cleared even so.
            assert!(p.refs.iter().all(|r| r.load() != SEEN));
        });
        // A stack longer than its storage: found by its length (at the base pfn), before its
        // entries, which past the storage name page 1 again and again.
        corrupt_case(|p| {
            for b in &p.blocks[1..=p.cap] {
                b.set(1);
            }
            p.with_cache(0, |c| c.set_len(0, p.cap + 1));
            cache_corruption(p, 0);
            p.with_cache(0, |c| c.set_len(0, 1));
            p.with_cache(0, |c| c.set_len(1, 0));
            p.blocks[p.cap].set(0);
            p.check().unwrap();
        });
        // A block cached in the wrong order's stack.
        corrupt_case(|p| {
            p.blocks[p.cap].set(1);
            p.with_cache(0, |c| {
                c.set_len(1, 1);
                c.set_len(0, 0);
            });
            cache_corruption(p, 1);
        });
        // A clean pool passes, marks and all.
        corrupt_case(|p| {
            p.check().unwrap();
            p.check().unwrap();
            assert_eq!(p.refs[1].load(), FREE);
        });
    }

    #[test]
    fn bad_words_are_corruption_not_panics() {
        corrupt_case(|p| {
            p.refs[0].set(held(1, NO_ORDER as u32));
            let bad = Err(Error::Corrupted(Corruption {
                kind: CorruptionKind::BadHead,
                pfn: 0,
            }));
            assert_eq!(p.put(0, 0), bad);
            assert_eq!(p.split(0), bad);
            p.refs[0].set(held(1, 3));
            assert_eq!(p.split(0), bad);
            assert_eq!(p.refcount(0), Ok(1));
        });
        // The pool no longer holds page 0 although a caller does.
        corrupt_case(|p| {
            p.core.with(|core| core.meta[0].refcount = 0);
            let bad = Err(Error::Corrupted(Corruption {
                kind: CorruptionKind::BadHead,
                pfn: 0,
            }));
            assert_eq!(p.split(0), bad);
        });
    }

    #[test]
    fn exact_runs_come_from_the_pool_after_draining() {
        let c = small();
        let mut m = Mem::new(8, 2, &c);
        let p = m.pool(cfg(8), c).unwrap();
        assert_eq!(p.alloc(1, 0), Ok(0)); // slot 1 caches page 1
        assert_eq!(p.alloc_exact(0, 3), Ok(4)); // pages 4, 5, 6; 7 back in the pool
        for pfn in 4..7 {
            assert_eq!((p.refcount(pfn), p.order(pfn)), (Ok(1), Ok(Some(0))));
        }
        assert_eq!(p.refcount(7), Ok(0));
        // Pages 2-3 are a free order-1 block: a run of 2 takes it, slot 1 keeps page 1.
        assert_eq!(p.alloc_exact(0, 2), Ok(2));
        assert_eq!(p.cached_pages(1), 1);
        assert_eq!(p.alloc_exact(0, 2), Err(Error::OutOfMemory { order: 1 }));
        assert_eq!(p.cached_pages(1), 0); // no order-1 block even after draining: page 7 and 1
        assert_eq!(
            p.alloc_exact(0, 0),
            Err(Error::InvalidRun {
                nr_pages: 0,
                max_pages: 8
            })
        );
        for pfn in [0, 2, 3, 4, 5, 6] {
            p.put(0, pfn).unwrap();
        }
        p.drain_all().unwrap();
        p.check().unwrap();
        assert_eq!(p.free_pages(), 8);
    }

    #[test]
    fn refills_hand_out_blocks_in_pool_order() {
        // A refill of 8 stacks 7 blocks, reversed so that they come out as the pool gave them.
        let c = CacheConfig::new().orders(1).batch(8).high(8);
        let mut m = Mem::new(32, 1, &c);
        let p = m.pool(cfg(32), c).unwrap();
        let got: Vec<u64> = (0..9).map(|_| p.alloc(0, 0).unwrap()).collect();
        assert_eq!(got, (0..9).collect::<Vec<u64>>());
        let mut out = [0u64; 9];
        assert_eq!(p.cached_blocks(0, 0, &mut out), 7);
        assert_eq!(out[..7], [15, 14, 13, 12, 11, 10, 9]);
    }

    #[test]
    fn slots_wrap_around() {
        let c = small();
        let mut m = Mem::new(8, 3, &c);
        let p = m.pool(cfg(8), c).unwrap();
        assert_eq!(p.alloc(4, 0), Ok(0));
        assert_eq!(p.cached_pages(1), 1);
        assert_eq!(p.cached_pages(7), 1);
        assert_eq!(p.cached_pages(usize::MAX), 0); // usize::MAX % 3 == 0
        p.drain(10).unwrap();
        assert_eq!(p.cached_pages(1), 0);
    }

    #[cfg(feature = "std")]
    #[test]
    fn local_slots_follow_the_thread() {
        let c = small();
        let mut m = Mem::new(8, 64, &c);
        let p = m.pool(cfg(8), c).unwrap();
        let pfn = p.alloc_local(0).unwrap();
        assert_eq!(p.cached_pages(thread_cpu()), 1);
        p.put_local(pfn).unwrap();
        assert_eq!(p.cached_pages(thread_cpu()), 2);
        std::thread::scope(|s| {
            s.spawn(|| {
                assert_eq!(p.cached_pages(thread_cpu()), 0);
                p.drain_local().unwrap();
            });
        });
        assert_eq!(p.cached_pages(thread_cpu()), 2);
        p.drain_local().unwrap();
        assert_eq!(p.cached_pages(thread_cpu()), 0);
        assert_eq!(p.free_pages(), 8);
        p.check().unwrap();
    }
}
