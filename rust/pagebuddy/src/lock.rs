//! Locking: one lock per pool (pKVM's `hyp_spinlock_t`), and a `&self` API around a [`Pool`].
//!
//! Every operation runs entirely inside one critical section, so no thread can observe a page
//! whose refcount dropped to 0 before it reached a free list, nor a page taken off a free list
//! before its refcount was set.

//! `SpinLock` needs an atomic compare-and-swap, so it exists only on targets that have one
//! (`cfg(target_has_atomic = "8")`). On targets without (`thumbv6m-none-eabi`, Cortex-M0, for
//! one) the lock is left out, not emulated: [`LockedPool`] has no default lock there and takes any
//! [`RawLock`] the platform provides, typically one that masks interrupts on a single core.

#[cfg(not(loom))]
use core::cell::UnsafeCell;
#[cfg(all(not(loom), target_has_atomic = "8"))]
use core::sync::atomic::{AtomicBool, Ordering};
#[cfg(loom)]
use loom::{
    cell::UnsafeCell,
    sync::atomic::{AtomicBool, Ordering},
};

use crate::batch::BatchError;
use crate::error::{Corruption, Error};
use crate::store::LinkStore;
use crate::Pool;

/// A mutual-exclusion primitive without data, as `LockedPool` needs it.
///
/// # Safety
/// `lock` must not return while another caller holds the lock, and `unlock` must release it with
/// release ordering (what the holder wrote is visible to the next holder).
pub unsafe trait RawLock {
    /// An unlocked lock.
    fn new() -> Self;
    /// Blocks until the lock is held by the caller.
    fn lock(&self);
    /// Releases the lock.
    ///
    /// # Safety
    /// The caller holds the lock, taken by `lock`.
    unsafe fn unlock(&self);
}

/// A test-and-test-and-set spinlock for `no_std`. With the `std` feature, a waiter that has spun
/// for a while yields its time slice between attempts, so that a holder preempted on the same core
/// can finish.
///
/// Only on targets with an atomic compare-and-swap (`target_has_atomic = "8"`).
#[cfg(target_has_atomic = "8")]
#[derive(Debug)]
pub struct SpinLock {
    locked: AtomicBool,
}

// SAFETY: `lock` returns only after swapping `locked` from false to true with acquire ordering,
// which one caller at a time can do; `unlock` stores false with release ordering.
#[cfg(target_has_atomic = "8")]
unsafe impl RawLock for SpinLock {
    fn new() -> Self {
        SpinLock {
            locked: AtomicBool::new(false),
        }
    }

    fn lock(&self) {
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            let mut spins = 0u32;
            while self.locked.load(Ordering::Relaxed) {
                #[cfg(loom)]
                loom::thread::yield_now();
                #[cfg(all(feature = "std", not(loom)))]
                if spins >= 100 {
                    std::thread::yield_now();
                }
                spins = spins.saturating_add(1);
                core::hint::spin_loop();
            }
        }
    }

    unsafe fn unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }
}

/// A blocking lock built on `std::sync::{Mutex, Condvar}`: waiters sleep instead of spinning,
/// and an uncontended lock/unlock costs two short mutex sections and no system call.
#[cfg(feature = "std")]
#[derive(Debug, Default)]
pub struct StdLock {
    state: std::sync::Mutex<StdLockState>,
    released: std::sync::Condvar,
}

#[cfg(feature = "std")]
#[derive(Debug, Default)]
struct StdLockState {
    held: bool,
    waiters: u32,
}

#[cfg(feature = "std")]
impl StdLock {
    fn state(&self) -> std::sync::MutexGuard<'_, StdLockState> {
        // The state is two plain fields updated together: a panic elsewhere cannot tear them.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

// SAFETY: `held` is only read and set under `state`, whose lock/unlock give acquire/release
// ordering; `lock` returns only after it turned `held` from false to true itself.
#[cfg(feature = "std")]
unsafe impl RawLock for StdLock {
    fn new() -> Self {
        Self::default()
    }

    fn lock(&self) {
        let mut state = self.state();
        while state.held {
            state.waiters += 1;
            state = self
                .released
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            state.waiters -= 1;
        }
        state.held = true;
    }

    unsafe fn unlock(&self) {
        let waiters = {
            let mut state = self.state();
            state.held = false;
            state.waiters
        };
        if waiters > 0 {
            self.released.notify_one();
        }
    }
}

/// Releases the lock when dropped, also on unwinding.
struct Held<'l, R: RawLock>(&'l R);

impl<R: RawLock> Drop for Held<'_, R> {
    fn drop(&mut self) {
        // SAFETY: a `Held` is only made right after `lock` returned, by `LockedPool::with`.
        unsafe { self.0.unlock() }
    }
}

/// A [`Pool`] behind one lock, usable through `&self` from many threads.
///
/// ```
/// use pagebuddy::{Config, Intrusive, LockedPool, PageMeta, Pool, SpinLock};
/// let (mut arena, mut meta) = ([0u8; 16 * 64], [PageMeta::INIT; 16]);
/// let pool = Pool::new(&mut arena[..], &mut meta, Intrusive, Config::new(16).page_size(64))?;
/// let pool: LockedPool<'_, Intrusive, SpinLock> = LockedPool::new(pool);
/// std::thread::scope(|s| {
///     for _ in 0..4 {
///         s.spawn(|| {
///             let pfn = pool.alloc(0).unwrap();
///             pool.put(pfn).unwrap();
///         });
///     }
/// });
/// assert_eq!(pool.free_pages(), 16);
/// pool.check()?;
/// # Ok::<(), pagebuddy::Error>(())
/// ```
///
/// On targets without compare-and-swap there is no [`SpinLock`] and so no default lock (nor,
/// since defaults must trail, a default link store): name both, as in
/// `LockedPool<'a, SideTable<'a>, MyIrqLock>`.
pub struct LockedPool<
    'a,
    #[cfg(target_has_atomic = "8")] L: LinkStore = crate::store::SideTable<'a>,
    #[cfg(target_has_atomic = "8")] R: RawLock = SpinLock,
    #[cfg(not(target_has_atomic = "8"))] L: LinkStore,
    #[cfg(not(target_has_atomic = "8"))] R: RawLock,
> {
    lock: R,
    pool: UnsafeCell<Pool<'a, L>>,
}

// SAFETY: the pool is only reached through `with`, which holds the lock for the whole access, so
// sharing `&LockedPool` hands the pool to one thread at a time: that needs `Pool: Send`.
unsafe impl<'a, L: LinkStore, R: RawLock + Sync> Sync for LockedPool<'a, L, R> where
    Pool<'a, L>: Send
{
}

impl<'a, L: LinkStore, R: RawLock> LockedPool<'a, L, R> {
    /// Puts `pool` behind a new lock.
    pub fn new(pool: Pool<'a, L>) -> Self {
        LockedPool {
            lock: R::new(),
            pool: UnsafeCell::new(pool),
        }
    }

    /// Runs `f` on the pool inside one critical section. Calling `with` again from `f` deadlocks.
    pub fn with<T>(&self, f: impl FnOnce(&mut Pool<'a, L>) -> T) -> T {
        self.lock.lock();
        let _held = Held(&self.lock);
        #[cfg(not(loom))]
        {
            // SAFETY: the lock is held until `_held` drops, after `f` returns, and every access to
            // the cell goes through here, so this is the only reference to the pool.
            f(unsafe { &mut *self.pool.get() })
        }
        #[cfg(loom)]
        {
            // SAFETY: as above; loom additionally checks that no other access overlaps.
            self.pool.with_mut(|p| f(unsafe { &mut *p }))
        }
    }

    /// The pool, without locking: `&mut self` proves no one else can reach it.
    #[cfg(not(loom))]
    pub fn get_mut(&mut self) -> &mut Pool<'a, L> {
        self.pool.get_mut()
    }

    /// The pool, unlocked for good.
    #[cfg(not(loom))]
    pub fn into_inner(self) -> Pool<'a, L> {
        self.pool.into_inner()
    }

    /// [`Pool::alloc`] under the lock.
    pub fn alloc(&self, order: u32) -> Result<u64, Error> {
        self.with(|p| p.alloc(order))
    }

    /// [`Pool::put`] under the lock.
    pub fn put(&self, pfn: u64) -> Result<(), Error> {
        self.with(|p| p.put(pfn))
    }

    /// [`Pool::get`] under the lock.
    pub fn get(&self, pfn: u64) -> Result<(), Error> {
        self.with(|p| p.get(pfn))
    }

    /// [`Pool::split`] under the lock.
    pub fn split(&self, pfn: u64) -> Result<(), Error> {
        self.with(|p| p.split(pfn))
    }

    /// [`Pool::alloc_many`] under the lock: the whole batch in one critical section.
    ///
    /// ```
    /// use pagebuddy::{Config, Intrusive, LockedPool, PageMeta, Pool, SpinLock};
    /// let (mut arena, mut meta) = ([0u8; 16 * 64], [PageMeta::INIT; 16]);
    /// let pool = Pool::new(&mut arena[..], &mut meta, Intrusive, Config::new(16).page_size(64))?;
    /// let pool: LockedPool<'_, Intrusive, SpinLock> = LockedPool::new(pool);
    /// let mut pfns = [0; 4];
    /// pool.alloc_many(0, &mut pfns)?;
    /// assert_eq!(pool.free_pages(), 12);
    /// # Ok::<(), pagebuddy::Error>(())
    /// ```
    pub fn alloc_many(&self, order: u32, pfns: &mut [u64]) -> Result<(), Error> {
        self.with(|p| p.alloc_many(order, pfns))
    }

    /// [`Pool::put_many`] under the lock: the whole batch in one critical section.
    ///
    /// ```
    /// use pagebuddy::{Config, Intrusive, LockedPool, PageMeta, Pool, SpinLock};
    /// let (mut arena, mut meta) = ([0u8; 16 * 64], [PageMeta::INIT; 16]);
    /// let pool = Pool::new(&mut arena[..], &mut meta, Intrusive, Config::new(16).page_size(64))?;
    /// let pool: LockedPool<'_, Intrusive, SpinLock> = LockedPool::new(pool);
    /// let (a, b) = (pool.alloc(0)?, pool.alloc(0)?);
    /// assert_eq!(pool.put_many(&[a, b, 99]).map_err(|e| e.index), Err(2));
    /// assert_eq!(pool.free_pages(), 14); // nothing was put
    /// pool.put_many(&[a, b])?;
    /// assert_eq!(pool.free_pages(), 16);
    /// # Ok::<(), pagebuddy::Error>(())
    /// ```
    pub fn put_many(&self, pfns: &[u64]) -> Result<(), BatchError> {
        self.with(|p| p.put_many(pfns))
    }

    /// [`Pool::free_pages`] under the lock.
    pub fn free_pages(&self) -> u32 {
        self.with(|p| p.free_pages())
    }

    /// [`Pool::check`] under the lock.
    pub fn check(&self) -> Result<(), Corruption> {
        self.with(|p| p.check())
    }
}
