//! A pool for callers that already take turns under a lock of their own (an *outer* lock, such
//! as Python's global interpreter lock), which one of them can hand off to run without it.
//!
//! Holders of the outer lock exclude each other already: they need no lock of the pool's, only to
//! know that no one is running with the pool handed off. That is one flag, which they read with
//! an acquire load and wait out, and which only a holder of the outer lock sets, in
//! [`HandoffPool::hand_off`]. So a holder that reads it clear keeps the pool to itself until it
//! lets the outer lock go, and a call from a holder costs no atomic read-modify-write. The
//! [`Handoff`] it sets the flag for runs without the outer lock (a batch call with Python's lock
//! released) and clears the flag with release ordering when it is dropped.

#[cfg(not(loom))]
use core::cell::UnsafeCell;
#[cfg(not(loom))]
use core::sync::atomic::{AtomicBool, Ordering};
#[cfg(loom)]
use loom::{
    cell::UnsafeCell,
    sync::atomic::{AtomicBool, Ordering},
};

use crate::store::LinkStore;
use crate::Pool;

/// A [`Pool`] for callers that hold one outer lock: no lock of its own, and a [`Handoff`] for a
/// holder that wants to run without the outer lock.
///
/// ```
/// use pagebuddy::{Config, HandoffPool, Link, PageMeta, Pool, SideTable};
/// use std::sync::Mutex;
///
/// let (mut arena, mut meta, mut links) = ([0u8; 16 * 64], [PageMeta::INIT; 16], [Link::EMPTY; 16]);
/// let pool = Pool::new(&mut arena[..], &mut meta, SideTable::new(&mut links), Config::new(16).page_size(64))?;
/// let (outer, pool) = (Mutex::new(()), HandoffPool::new(pool));
/// std::thread::scope(|s| {
///     s.spawn(|| {
///         let held = outer.lock().unwrap();
///         // SAFETY: every call that needs it is made holding `outer`, held until it returns.
///         let pfn = unsafe { pool.with_outer(|p| p.alloc(0)) }.unwrap();
///         let mut handoff = unsafe { pool.hand_off() };
///         drop(held); // the handoff runs without the outer lock
///         handoff.with(|p| p.put(pfn)).unwrap();
///     });
///     s.spawn(|| {
///         let _held = outer.lock().unwrap();
///         // SAFETY: as above.
///         let pfn = unsafe { pool.with_outer(|p| p.alloc(1)) }.unwrap();
///         unsafe { pool.with_outer(|p| p.put(pfn)) }.unwrap();
///     });
/// });
/// let _held = outer.lock().unwrap();
/// // SAFETY: as above.
/// assert_eq!(unsafe { pool.with_outer(|p| p.free_pages()) }, 16);
/// # Ok::<(), pagebuddy::Error>(())
/// ```
pub struct HandoffPool<'a, L: LinkStore> {
    /// Set by a holder of the outer lock for a [`Handoff`], cleared when the handoff is dropped.
    handed_off: AtomicBool,
    pool: UnsafeCell<Pool<'a, L>>,
}

// SAFETY: the pool is reached only by a holder of the outer lock while no handoff is out (one at
// a time, by the outer lock) or through the one handoff out (`hand_off` waits for the previous
// one to be dropped), so sharing `&HandoffPool` hands the pool to one thread at a time.
unsafe impl<'a, L: LinkStore> Sync for HandoffPool<'a, L> where Pool<'a, L>: Send {}

impl<'a, L: LinkStore> HandoffPool<'a, L> {
    /// Puts `pool` behind the outer lock.
    pub fn new(pool: Pool<'a, L>) -> Self {
        HandoffPool {
            handed_off: AtomicBool::new(false),
            pool: UnsafeCell::new(pool),
        }
    }

    /// Runs `f` on the pool, once no handoff is out.
    ///
    /// # Safety
    /// The caller holds the outer lock, the one lock that every caller of `with_outer` and
    /// [`hand_off`](Self::hand_off) on this pool holds, and keeps it until `f` returns.
    pub unsafe fn with_outer<T>(&self, f: impl FnOnce(&mut Pool<'a, L>) -> T) -> T {
        self.wait();
        // SAFETY: no handoff is out (`wait` saw it dropped, and its accesses happen before this
        // one by the release and acquire), none can be made until the caller lets the outer lock
        // go, and every other caller holds the outer lock: this is the only reference.
        unsafe { self.reach(f) }
    }

    /// Hands the pool off, once no other handoff is out: until the [`Handoff`] is dropped, it
    /// alone reaches the pool, from any thread, with or without the outer lock. Callers of
    /// [`with_outer`](Self::with_outer) and `hand_off` wait for that drop: a handoff that is
    /// never dropped (leaked) leaves them waiting for good.
    ///
    /// # Safety
    /// The caller holds the outer lock, as for [`with_outer`](Self::with_outer), until this
    /// returns.
    pub unsafe fn hand_off(&self) -> Handoff<'_, 'a, L> {
        self.wait();
        // Relaxed: the next holder of the outer lock sees it through that lock.
        self.handed_off.store(true, Ordering::Relaxed);
        Handoff { owner: self }
    }

    /// Waits until no handoff is out; the handoff's accesses then happen before the caller's.
    fn wait(&self) {
        let mut spins = 0u32;
        while self.handed_off.load(Ordering::Acquire) {
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

    /// Runs `f` on the pool.
    ///
    /// # Safety
    /// No other reference to the pool exists until `f` returns.
    unsafe fn reach<T>(&self, f: impl FnOnce(&mut Pool<'a, L>) -> T) -> T {
        #[cfg(not(loom))]
        {
            // SAFETY: the caller's promise.
            f(unsafe { &mut *self.pool.get() })
        }
        #[cfg(loom)]
        {
            // SAFETY: as above; loom additionally checks that no other access overlaps.
            self.pool.with_mut(|p| f(unsafe { &mut *p }))
        }
    }

    /// The pool, without waiting: `&mut self` proves no one else can reach it.
    #[cfg(not(loom))]
    pub fn get_mut(&mut self) -> &mut Pool<'a, L> {
        self.pool.get_mut()
    }
}

/// The pool of a [`HandoffPool`], handed off by a holder of the outer lock: usable from any
/// thread without that lock until dropped.
pub struct Handoff<'p, 'a, L: LinkStore> {
    owner: &'p HandoffPool<'a, L>,
}

impl<'a, L: LinkStore> Handoff<'_, 'a, L> {
    /// Runs `f` on the pool.
    pub fn with<T>(&mut self, f: impl FnOnce(&mut Pool<'a, L>) -> T) -> T {
        // SAFETY: while this handoff is out, callers of `with_outer` and `hand_off` wait, and
        // `&mut self` makes this the only access through it.
        unsafe { self.owner.reach(f) }
    }
}

impl<L: LinkStore> Drop for Handoff<'_, '_, L> {
    fn drop(&mut self) {
        // Release: what the handoff did happens before the next caller's access.
        self.owner.handed_off.store(false, Ordering::Release);
    }
}
