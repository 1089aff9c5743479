//! Model checking of the shared pool's lock word (`OwnerLock`) with loom: mutual exclusion
//! between owners, and the take-over of a lock whose holder died (exactly one waiter takes it).
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p pagebuddy --test loom_shm --release --target-dir target/loom
//! ```
#![cfg(loom)]

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicU32, Ordering};
use loom::sync::Arc;
use loom::thread;
use pagebuddy::shmlock::{Acquired, OuterLock, OwnerLock};

/// Two owners each increment a counter under the lock twice: no increment is lost.
#[test]
fn owners_exclude_each_other() {
    loom::model(|| {
        let word = Arc::new(AtomicU32::new(0));
        let count = Arc::new(UnsafeCell::new(0u32));
        let handles: Vec<_> = (1..=2u32)
            .map(|me| {
                let (word, count) = (word.clone(), count.clone());
                thread::spawn(move || {
                    let lock = OwnerLock::new(&word);
                    assert_eq!(
                        lock.lock(me, |_| false, |_| thread::yield_now()),
                        Acquired::Clean
                    );
                    // SAFETY: under the lock, checked by loom.
                    count.with_mut(|c| unsafe { *c += 1 });
                    lock.unlock(me);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        // SAFETY: every thread has joined.
        assert_eq!(count.with(|c| unsafe { *c }), 2);
        assert_eq!(word.load(Ordering::Relaxed), 0);
    });
}

/// Owner 7 died holding the lock; two waiters find it dead: exactly one takes it over (and
/// would recover), the other then gets it cleanly after the first releases.
#[test]
fn a_dead_holder_is_taken_over_once() {
    loom::model(|| {
        let word = Arc::new(AtomicU32::new(7));
        let handles: Vec<_> = (1..=2u32)
            .map(|me| {
                let word = word.clone();
                thread::spawn(move || {
                    let lock = OwnerLock::new(&word);
                    let how = lock.lock(me, |id| id == 7, |_| thread::yield_now());
                    lock.unlock(me);
                    how
                })
            })
            .collect();
        let hows: Vec<Acquired> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let taken = hows
            .iter()
            .filter(|h| **h == Acquired::TakenFrom(7))
            .count();
        assert_eq!(taken, 1, "{hows:?}");
        assert_eq!(word.load(Ordering::Relaxed), 0);
    });
}

/// A robust mutex as the kernel keeps one: its holder's id, and whether a holder died holding
/// it (the next `acquire` gets `Ok(true)`, as `EOWNERDEAD`). `die` is a holder's thread ending
/// without releasing: the kernel frees the mutex and marks it.
struct Robust {
    holder: AtomicU32,
    died: AtomicU32,
}

struct Held<'r>(&'r Robust, u32);

impl OuterLock for Held<'_> {
    type Error = ();
    fn acquire(&self) -> Result<bool, ()> {
        while self
            .0
            .holder
            .compare_exchange(0, self.1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            thread::yield_now();
        }
        Ok(self.0.died.swap(0, Ordering::Relaxed) != 0)
    }
    fn release(&self) {
        self.0.holder.store(0, Ordering::Release);
    }
}

impl Held<'_> {
    fn die(&self) {
        self.0.died.store(1, Ordering::Relaxed);
        self.0.holder.store(0, Ordering::Release);
    }
}

/// The protocol of `SharedPool::lock_outer`: the outer lock, then the owner word taken over
/// whatever it holds. Owner 1 dies inside its critical section (the word names it, the state is
/// torn); owner 2 takes the lock once, before or after. If after, it finds the death (the outer
/// lock says so and the word names 1) and repairs the state; either way no increment is lost
/// and no torn state is used unrepaired.
#[test]
fn the_outer_lock_and_the_owner_word() {
    loom::model(|| {
        let robust = Arc::new(Robust {
            holder: AtomicU32::new(0),
            died: AtomicU32::new(0),
        });
        let word = Arc::new(AtomicU32::new(0));
        // (count, torn): a critical section writes torn = 1, count += 1, torn = 0.
        let state = Arc::new(UnsafeCell::new((0u32, 0u32)));
        let repairs = Arc::new(AtomicU32::new(0));
        let handles: Vec<_> = (1..=2u32)
            .map(|me| {
                let (robust, word, state, repairs) =
                    (robust.clone(), word.clone(), state.clone(), repairs.clone());
                thread::spawn(move || {
                    let outer = Held(&robust, me);
                    let died = outer.acquire().unwrap();
                    let lock = OwnerLock::new(&word);
                    let stale = lock.take_over(me);
                    // SAFETY: under the outer lock, checked by loom.
                    state.with_mut(|s| unsafe {
                        assert_eq!(died, stale != 0, "the word names a holder iff it died");
                        if died {
                            assert_eq!(stale, 1);
                            (*s).1 = 0; // recovery: the torn update undone
                            repairs.fetch_add(1, Ordering::Relaxed);
                        }
                        assert_eq!((*s).1, 0, "a torn state seen without recovery");
                        (*s).1 = 1;
                        (*s).0 += 1;
                    });
                    if me == 1 {
                        outer.die(); // torn stays 1, the word keeps 1
                        return;
                    }
                    // SAFETY: as above.
                    state.with_mut(|s| unsafe { (*s).1 = 0 });
                    lock.unlock(me);
                    outer.release();
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        // SAFETY: every thread has joined.
        let (count, torn) = state.with(|s| unsafe { *s });
        assert_eq!(count, 2);
        // The death was repaired once, unless owner 1 ran last.
        let last_was_1 = torn == 1;
        assert_eq!(repairs.load(Ordering::Relaxed), u32::from(!last_was_1));
    });
}
