//! The lock of a shared pool: one 32-bit word in the shared bytes that holds the owner id of the
//! process holding it (0: free), so that a waiter can tell that the holder died and take the
//! lock over. Used by [`SharedPool`](crate::SharedPool); separate so that loom can model it.

#[cfg(not(loom))]
use core::sync::atomic::{AtomicU32, Ordering};
#[cfg(loom)]
use loom::sync::atomic::{AtomicU32, Ordering};

/// The word's value when no one holds the lock. Owner ids are never 0.
pub const UNLOCKED: u32 = 0;

/// How a lock was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// From a free word: the last holder finished its critical section.
    Clean,
    /// From a holder that died inside its critical section: the caller must run recovery before
    /// it trusts anything the lock protects.
    TakenFrom(u32),
}

/// A process-shared lock over `word`: test-and-test-and-set, the holder's id in the word.
pub struct OwnerLock<'w> {
    word: &'w AtomicU32,
}

impl<'w> OwnerLock<'w> {
    /// The lock held in `word`.
    pub fn new(word: &'w AtomicU32) -> Self {
        OwnerLock { word }
    }

    /// The current holder, if any.
    pub fn holder(&self) -> Option<u32> {
        match self.word.load(Ordering::Relaxed) {
            UNLOCKED => None,
            id => Some(id),
        }
    }

    /// Takes the lock for `me` (not 0) without waiting; `Err(holder)` if someone holds it.
    pub fn try_lock(&self, me: u32) -> Result<(), u32> {
        self.word
            .compare_exchange(UNLOCKED, me, Ordering::Acquire, Ordering::Relaxed)
            .map(drop)
    }

    /// Takes the lock for `me` (not 0), spinning while it is held. A holder other than `me` for
    /// which `is_dead` says true is replaced by `me` in one compare-and-swap, so that of several
    /// waiters only one takes over; that one learns it from [`Acquired::TakenFrom`].
    ///
    /// `me` itself in the word is another thread of the same owner: it is waited for, never
    /// taken over. `pause` runs between polls (a spin hint, a yield).
    pub fn lock(
        &self,
        me: u32,
        is_dead: impl Fn(u32) -> bool,
        mut pause: impl FnMut(u32),
    ) -> Acquired {
        let mut polls = 0u32;
        loop {
            match self.word.load(Ordering::Relaxed) {
                UNLOCKED if self.try_lock(me).is_ok() => return Acquired::Clean,
                holder
                    if holder != UNLOCKED
                        && holder != me
                        && is_dead(holder)
                        && self
                            .word
                            .compare_exchange(holder, me, Ordering::Acquire, Ordering::Relaxed)
                            .is_ok() =>
                {
                    return Acquired::TakenFrom(holder)
                }
                _ => {}
            }
            pause(polls);
            polls = polls.saturating_add(1);
        }
    }

    /// Replaces `holder` by `me` (not 0) in one compare-and-swap: whether the word held
    /// `holder`. For a waiter that found `holder` dead: of several, only one takes over.
    pub fn take_from(&self, holder: u32, me: u32) -> bool {
        self.word
            .compare_exchange(holder, me, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Frees the word whoever holds it: only for a caller that knows the holder is gone.
    pub fn clear(&self) {
        self.word.store(UNLOCKED, Ordering::Release);
    }

    /// Releases the lock that `me` holds, with release ordering: one store, as a spin lock's
    /// release. (Only the holder calls it; a holder is taken over only once it is dead, and a
    /// dead one calls nothing, so the word holds `me`.)
    pub fn unlock(&self, me: u32) {
        debug_assert_eq!(self.word.load(Ordering::Relaxed), me);
        self.word.store(UNLOCKED, Ordering::Release);
    }
}

/// A lock between processes that a shared pool's operations take before its owner word
/// ([`SharedPool::lock_outer`](crate::SharedPool::lock_outer)): one that the platform releases
/// when its holder dies and that tells the next holder so, whatever the holder's PID namespace
/// and whether its pid was reused. On Linux, the Python bindings' lock is a robust,
/// process-shared `pthread_mutex_t` in the pool's header
/// ([`SharedPool::outer_lock_area`](crate::SharedPool::outer_lock_area)): the kernel walks a dead
/// thread's robust list and marks the futex `FUTEX_OWNER_DIED`, and the next locker gets
/// `EOWNERDEAD`.
///
/// Under it the owner word no longer decides who holds the pool: whatever the word holds when
/// the outer lock is taken was left by a holder that died, and recovery runs from the journal.
///
/// ```
/// use core::cell::Cell;
/// use pagebuddy::shmlock::OuterLock;
///
/// /// A lock for one thread: taken or not.
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
/// let f = Flag(Cell::new(false));
/// assert_eq!(f.acquire(), Ok(false));
/// assert_eq!(f.acquire(), Err(()));
/// f.release();
/// assert_eq!(f.acquire(), Ok(false));
/// ```
pub trait OuterLock {
    /// Why the lock was not taken (a timeout, an interrupt); nothing was changed.
    type Error;
    /// Takes the lock, waiting as the implementation decides. `Ok(true)`: its last holder died
    /// holding it (the caller recovers before it trusts anything the lock protects).
    fn acquire(&self) -> Result<bool, Self::Error>;
    /// Releases the lock that the caller took with [`acquire`](Self::acquire).
    fn release(&self);
}

impl OwnerLock<'_> {
    /// Writes `me` (not 0) into the word whoever holds it, and returns what it held (0: free).
    /// Only under an [`OuterLock`], which excludes every live holder (a holder left in the word
    /// then died) and every other writer of the word, and orders this against them: a load and
    /// a store, no read-modify-write.
    pub fn take_over(&self, me: u32) -> u32 {
        let was = self.word.load(Ordering::Relaxed);
        self.word.store(me, Ordering::Relaxed);
        was
    }
}
