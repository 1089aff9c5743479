//! The cached mode of `pagebuddy._native.Pool` (`cpus=N`): the core's [`CachedPool`] in front
//! of the pool, and the memory it borrows. A call names its CPU slot with `cpu=`, or uses the
//! calling thread's: the first thread to call the pool gets slot 0, the next slot 1, and so on
//! (modulo `cpus`). Policy lives in the core; this file only translates.

use std::cell::Cell;
use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread::ThreadId;

use pagebuddy::{
    cache_blocks, BatchError, CacheConfig, CacheSlot, CachedPool, Corruption, Error, Intrusive,
    LinkStore, LockedPool, PageMeta, PageRef, SideTable, SpinLock,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::convert::{self, Int};
use crate::reserve;

/// Most slots a pool may have.
pub(crate) const MAX_CPUS: u64 = 1 << 16;

type Cached<L> = CachedPool<'static, L, SpinLock>;

/// A cached pool over either link store.
enum Caches {
    Side(Cached<SideTable<'static>>),
    Intrusive(Cached<Intrusive>),
}

/// Runs `$body` on the cached pool, whatever its link store.
macro_rules! on {
    ($c:expr, |$p:ident| $body:expr) => {
        match &$c.pool {
            Caches::Side($p) => $body,
            Caches::Intrusive($p) => $body,
        }
    };
}

/// The cache storage the core borrows as `'static`; freed after the cached pool is dropped.
struct CacheStorage {
    slots: NonNull<[CacheSlot]>,
    blocks: NonNull<[u32]>,
    refs: NonNull<[PageRef]>,
}

impl Drop for CacheStorage {
    fn drop(&mut self) {
        // SAFETY: all three came from `Box::leak` in `reserve::fill` and are freed only here, once;
        // `Cache` declares the cached pool (their only borrower) before the storage, so it has
        // been dropped already.
        unsafe {
            drop(Box::from_raw(self.slots.as_ptr()));
            drop(Box::from_raw(self.blocks.as_ptr()));
            drop(Box::from_raw(self.refs.as_ptr()));
        }
    }
}

// SAFETY: the storage only frees its boxes on drop; the core reaches them under its locks.
unsafe impl Send for CacheStorage {}
// SAFETY: the storage itself is never read through `&self`.
unsafe impl Sync for CacheStorage {}

/// The cached pool, its storage and the threads' slots.
pub(crate) struct Cache {
    // Field order is drop order: the pool goes before the storage it borrows.
    pool: Caches,
    _storage: CacheStorage,
    /// The threads that have called the pool, in the order of their first call.
    threads: Mutex<Vec<ThreadId>>,
    /// This pool's number, never reused: the key of the threads' remembered slots.
    id: u64,
    cpus: usize,
    config: CacheConfig,
}

/// Numbers for `Cache::id`, from 1 (0 marks an empty `LAST_SLOT`).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The last cached pool this thread called (its `id`) and the thread's slot in it: a call
    /// without `cpu=` on the same pool again, the common case, finds its slot here without
    /// taking the `threads` lock. Ids are never reused, so an entry never names another pool.
    static LAST_SLOT: Cell<(u64, usize)> = const { Cell::new((0, 0)) };
}

/// The cache settings of a `Pool(...)` call: `cpus` (0: no caches), `cache_batch`, `cache_high`.
/// Neither batch nor high: the caches size themselves (`CacheConfig::new()`); either: fixed
/// sizes, the other at its default.
pub(crate) fn settings(
    cpus: Option<&Bound<'_, PyAny>>,
    batch: Option<&Bound<'_, PyAny>>,
    high: Option<&Bound<'_, PyAny>>,
) -> PyResult<(usize, CacheConfig)> {
    let cpus = match cpus {
        Some(c) => convert::int_in(c, "cpus", 0, MAX_CPUS)? as usize,
        None => 0,
    };
    let limit = u64::from(pagebuddy::MAX_CACHE_HIGH);
    let given = |v: Option<&Bound<'_, PyAny>>| v.is_some_and(|v| !v.is_none());
    let (batch_given, high_given) = (given(batch), given(high));
    let (batch, high) = (batch.filter(|_| batch_given), high.filter(|_| high_given));
    let batch = match batch {
        Some(b) => convert::int_in(b, "cache_batch", 1, limit)? as u32,
        None => CacheConfig::new().batch,
    };
    let high = match high {
        Some(h) => convert::int_in(h, "cache_high", 1, limit)? as u32,
        None => CacheConfig::new().high,
    };
    let config = if batch_given || high_given {
        CacheConfig::new().batch(batch).high(high)
    } else {
        CacheConfig::new()
    };
    config.validate().map_err(|_| {
        PyValueError::new_err(format!(
            "cache_batch {batch} and cache_high {high}: need 1 <= cache_batch <= cache_high <= \
             {limit}"
        ))
    })?;
    Ok((cpus, config))
}

/// The caches' storage reserved, not yet written: a pool reserves all its heap memory before it
/// writes any (see `reserve.rs`).
pub(crate) struct Reserved {
    slots: Vec<CacheSlot>,
    blocks: Vec<u32>,
    refs: Vec<PageRef>,
}

impl Reserved {
    /// Reserves the storage of `cpus` slots in front of a pool of `nr_pages` pages.
    pub(crate) fn new(nr_pages: usize, cpus: usize, config: &CacheConfig) -> PyResult<Self> {
        Ok(Reserved {
            slots: reserve::reserve(cpus, &format!("{cpus} cache slots"))?,
            blocks: reserve::reserve(
                cache_blocks(cpus, config),
                &format!("the caches of {cpus} slots"),
            )?,
            refs: reserve::reserve(nr_pages, &format!("page references for {nr_pages} pages"))?,
        })
    }
}

/// The slice behind a pointer from `reserve::fill`.
///
/// # Safety
/// `ptr` comes from `reserve::fill`, is borrowed by nothing else, and outlives every use of the
/// result.
unsafe fn borrow<T>(ptr: NonNull<[T]>) -> &'static mut [T] {
    // SAFETY: the caller's promise; `reserve::fill` made `ptr` from a live boxed slice.
    unsafe { &mut *ptr.as_ptr() }
}

/// Builds the cached pool over `core` with the storage `reserved` for it, written now.
fn build<L: LinkStore>(
    core: LockedPool<'static, L, SpinLock>,
    reserved: Reserved,
    nr_pages: usize,
    cpus: usize,
    config: CacheConfig,
) -> PyResult<(Cached<L>, CacheStorage)> {
    let storage = CacheStorage {
        slots: reserve::fill(reserved.slots, cpus, CacheSlot::new),
        blocks: reserve::fill(reserved.blocks, cache_blocks(cpus, &config), || 0u32),
        refs: reserve::fill(reserved.refs, nr_pages, PageRef::new),
    };
    // SAFETY: `storage` owns the three boxes; the caller stores it in a `Cache` after the pool,
    // which is dropped first (on error the pool never existed).
    let (slots, blocks, refs) = unsafe {
        (
            borrow(storage.slots),
            borrow(storage.blocks),
            borrow(storage.refs),
        )
    };
    let pool = CachedPool::new(core, slots, blocks, refs, config)
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok((pool, storage))
}

impl Cache {
    /// Caches in front of a side-table pool.
    pub(crate) fn side(
        core: LockedPool<'static, SideTable<'static>, SpinLock>,
        reserved: Reserved,
        nr_pages: usize,
        cpus: usize,
        config: CacheConfig,
    ) -> PyResult<Self> {
        let (pool, storage) = build(core, reserved, nr_pages, cpus, config)?;
        Ok(Self::new(Caches::Side(pool), storage, cpus, config))
    }

    /// Caches in front of an intrusive pool.
    pub(crate) fn intrusive(
        core: LockedPool<'static, Intrusive, SpinLock>,
        reserved: Reserved,
        nr_pages: usize,
        cpus: usize,
        config: CacheConfig,
    ) -> PyResult<Self> {
        let (pool, storage) = build(core, reserved, nr_pages, cpus, config)?;
        Ok(Self::new(Caches::Intrusive(pool), storage, cpus, config))
    }

    fn new(pool: Caches, storage: CacheStorage, cpus: usize, config: CacheConfig) -> Self {
        Cache {
            pool,
            _storage: storage,
            threads: Mutex::new(Vec::new()),
            // Relaxed: the number only has to be unique, it orders nothing.
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            cpus,
            config,
        }
    }

    /// Bytes the pool and its caches keep besides the arena: metadata, links with a side table,
    /// one `PageRef` per page, the slots and their block storage.
    pub(crate) fn metadata_bytes(&self, nr_pages: usize) -> usize {
        let links = match self.pool {
            Caches::Side(_) => pagebuddy::link_bytes(nr_pages),
            Caches::Intrusive(_) => 0,
        };
        pagebuddy::meta_bytes(nr_pages)
            + links
            + nr_pages * std::mem::size_of::<PageRef>()
            + self.cpus * std::mem::size_of::<CacheSlot>()
            + cache_blocks(self.cpus, &self.config) * std::mem::size_of::<u32>()
    }

    /// Number of slots.
    pub(crate) fn cpus(&self) -> usize {
        self.cpus
    }

    /// The batch and high settings.
    pub(crate) fn config(&self) -> CacheConfig {
        self.config
    }

    /// The slot a call runs for: `cpu`, or the calling thread's.
    pub(crate) fn slot(&self, op: &str, cpu: Option<&Bound<'_, PyAny>>) -> PyResult<usize> {
        match cpu {
            Some(c) if !c.is_none() => match Int::of(c, || format!("{op}: cpu"))? {
                Int::Val(v) => Ok((v % self.cpus as u64) as usize),
                Int::Huge(_) => Ok(huge_slot(c, self.cpus)?),
                Int::Negative(t) => Err(PyValueError::new_err(format!(
                    "{op}: cpu must be >= 0, got {t}"
                ))),
            },
            _ => Ok(self.thread_slot()),
        }
    }

    /// This thread's slot: the order in which threads first called the pool, modulo `cpus`.
    #[inline]
    pub(crate) fn thread_slot(&self) -> usize {
        if self.cpus == 1 {
            return 0; // every thread's, whatever its order
        }
        let (id, slot) = LAST_SLOT.with(Cell::get);
        if id == self.id {
            return slot;
        }
        let slot = self.first_slot();
        LAST_SLOT.with(|last| last.set((self.id, slot)));
        slot
    }

    /// This thread's slot, looked up (or given, on its first call) in `threads`.
    #[cold]
    #[inline(never)]
    fn first_slot(&self) -> usize {
        let me = std::thread::current().id();
        let mut threads = self
            .threads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = match threads.iter().position(|t| *t == me) {
            Some(n) => n,
            None => {
                threads.push(me);
                threads.len() - 1
            }
        };
        n % self.cpus
    }

    pub(crate) fn alloc(&self, cpu: usize, order: u32) -> Result<u64, Error> {
        on!(self, |p| p.alloc(cpu, order))
    }

    /// Fills `out` with allocations from slot `cpu`; when one fails, the blocks taken are put
    /// back through the slot, the last first, and the error comes with how many were had.
    pub(crate) fn alloc_many(
        &self,
        cpu: usize,
        order: u32,
        out: &mut [u64],
    ) -> Result<(), (Error, u64)> {
        for n in 0..out.len() {
            match self.alloc(cpu, order) {
                Ok(pfn) => out[n] = pfn,
                Err(e) => {
                    for &pfn in out[..n].iter().rev() {
                        self.put(cpu, pfn).map_err(|e| (e, n as u64))?;
                    }
                    return Err((e, n as u64));
                }
            }
        }
        Ok(())
    }

    /// Puts every pfn through slot `cpu`, all or nothing: each is first checked as `put` would
    /// find it after the ones before it (a page put more often than it is held fails at the
    /// extra put), and the first that cannot be put is named, with nothing put.
    pub(crate) fn put_many(&self, cpu: usize, pfns: &[u64]) -> Result<(), BatchError> {
        let mut dropped: HashMap<u64, u32> = HashMap::new();
        for (index, &pfn) in pfns.iter().enumerate() {
            let held = self
                .refcount(pfn)
                .map_err(|error| BatchError { index, error })?;
            let n = dropped.entry(pfn).or_insert(0);
            if u32::from(held) <= *n {
                let error = Error::NotHeld { pfn };
                return Err(BatchError { index, error });
            }
            *n += 1;
        }
        for (index, &pfn) in pfns.iter().enumerate() {
            self.put(cpu, pfn)
                .map_err(|error| BatchError { index, error })?;
        }
        Ok(())
    }

    pub(crate) fn alloc_exact(&self, cpu: usize, nr_pages: u64) -> Result<u64, Error> {
        on!(self, |p| p.alloc_exact(cpu, nr_pages))
    }

    pub(crate) fn put(&self, cpu: usize, pfn: u64) -> Result<(), Error> {
        on!(self, |p| p.put(cpu, pfn))
    }

    pub(crate) fn get(&self, pfn: u64) -> Result<(), Error> {
        on!(self, |p| p.get(pfn))
    }

    pub(crate) fn split(&self, pfn: u64) -> Result<(), Error> {
        on!(self, |p| p.split(pfn))
    }

    pub(crate) fn refcount(&self, pfn: u64) -> Result<u16, Error> {
        on!(self, |p| p.refcount(pfn))
    }

    pub(crate) fn page(&self, pfn: u64) -> Result<PageMeta, Error> {
        on!(self, |p| p.page(pfn))
    }

    pub(crate) fn free_pages(&self) -> u32 {
        on!(self, |p| p.free_pages())
    }

    pub(crate) fn admit(&self, pfn: u64, order: u32) -> Result<(), Error> {
        on!(self, |p| p.admit(pfn, order))
    }

    pub(crate) fn reclaim(&self, order: u32) -> Result<u64, Error> {
        on!(self, |p| p.reclaim(order))
    }

    pub(crate) fn reclaim_many(&self, order: u32, out: &mut [u64]) -> Result<(), Error> {
        on!(self, |p| p.reclaim_many(order, out))
    }

    pub(crate) fn reclaimable(&self, order: u32) -> u64 {
        on!(self, |p| p.reclaimable(order))
    }

    pub(crate) fn min_free_pages(&self) -> u32 {
        on!(self, |p| p.min_free_pages())
    }

    pub(crate) fn set_min_free_pages(&self, pages: u32) {
        on!(self, |p| p.set_min_free_pages(pages))
    }

    pub(crate) fn covers(&self, pfn: u64) -> bool {
        on!(self, |p| p.with_core(|c| c.covers(pfn)))
    }

    pub(crate) fn free_lists(&self, max_order: u32) -> Vec<Vec<u64>> {
        on!(self, |p| p.with_core(|c| (0..max_order)
            .map(|k| c.free_list(k).collect())
            .collect()))
    }

    /// Free blocks per order on the pool's free lists (cached blocks are not on them).
    pub(crate) fn buddyinfo(&self) -> Vec<u32> {
        on!(self, |p| p.with_core(|c| c.buddyinfo().to_vec()))
    }

    pub(crate) fn check(&self) -> Result<(), Corruption> {
        on!(self, |p| p.check())
    }

    pub(crate) fn drain(&self, cpu: usize) -> Result<(), Error> {
        on!(self, |p| p.drain(cpu))
    }

    pub(crate) fn drain_all(&self) -> Result<(), Error> {
        on!(self, |p| p.drain_all())
    }

    /// Slot `cpu`'s current high and batch (the configured ones while a handle owns it, which
    /// Python never makes).
    pub(crate) fn sizes(&self, cpu: usize) -> (u32, u32) {
        let sizes = on!(self, |p| p.cache_sizes(cpu));
        sizes.map_or((self.config.high, self.config.batch), |s| (s.high, s.batch))
    }

    /// Pages all caches together may hold, when they size themselves.
    pub(crate) fn bound(&self) -> Option<u64> {
        on!(self, |p| p.cache_bound())
    }

    /// Slot `cpu`'s cached blocks, one list per cached order, coldest first.
    pub(crate) fn contents(&self, cpu: usize) -> Vec<Vec<u64>> {
        on!(self, |p| {
            let mut out = vec![0u64; p.config().high_max as usize + 1];
            (0..p.config().orders)
                .map(|k| {
                    let n = p.cached_blocks(cpu, k, &mut out);
                    out[..n.min(out.len())].to_vec()
                })
                .collect()
        })
    }
}

/// The slot of a cpu number too large for `u64`: `cpu % cpus`, computed by Python.
fn huge_slot(cpu: &Bound<'_, PyAny>, cpus: usize) -> PyResult<usize> {
    let index = cpu
        .py()
        .import("operator")?
        .getattr("index")?
        .call1((cpu,))?;
    index.rem(cpus)?.extract()
}
