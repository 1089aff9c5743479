//! Model checking of the shared pool's lock word (`OwnerLock`) with loom: mutual exclusion
//! between owners, the take-over of a lock whose holder died (exactly one waiter takes it, and
//! only once the holder's slot mutex says it died), and the owner table's protocol.
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

impl Robust {
    fn new() -> Self {
        Robust {
            holder: AtomicU32::new(0),
            died: AtomicU32::new(0),
        }
    }

    /// `pthread_mutex_trylock`: taken if free (its last holder died or let it go).
    fn try_take(&self, me: u32) -> bool {
        let taken = self
            .holder
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            .is_ok();
        if taken {
            self.died.store(0, Ordering::Relaxed);
        }
        taken
    }
}

/// One owner slot of the table: its robust mutex (held by the owner's keeper thread while the
/// owner lives), its generation and state (written under the pool's lock), and the pages its
/// owner holds (the accounting, under the pool's lock).
struct Slot {
    mutex: Robust,
    generation: AtomicU32,
    live: AtomicU32,
    pages: UnsafeCell<u32>,
}

/// The owner table's protocol (`owners.rs`): owner 1 registers in the one slot, takes two
/// pages and dies; owner 2 reclaims the dead (the slot's mutex taken only once owner 1's
/// keeper died), and registers in the slot it freed. Every step is under the pool's lock (the
/// `Held` robust mutex). Checked: a live owner is never reclaimed (its mutex is held); the
/// pages are conserved (free + held == 4); a reused slot has a new generation, so owner 1's id
/// never names owner 2.
#[test]
fn the_owner_table_register_die_reclaim_reuse() {
    loom::model(|| {
        let pool = Arc::new(Robust::new());
        let slot = Arc::new(Slot {
            mutex: Robust::new(),
            generation: AtomicU32::new(0),
            live: AtomicU32::new(0),
            pages: UnsafeCell::new(0),
        });
        let free = Arc::new(UnsafeCell::new(4u32));
        let dead = Arc::new(AtomicU32::new(0));
        let one = {
            let (pool, slot, free, dead) = (pool.clone(), slot.clone(), free.clone(), dead.clone());
            thread::spawn(move || {
                let lock = Held(&pool, 1);
                lock.acquire().unwrap();
                if slot.live.load(Ordering::Relaxed) != 0 {
                    lock.release();
                    return None; // the table is full: not registered
                }
                // The keeper thread takes the slot's mutex, then the slot goes live.
                assert!(slot.mutex.try_take(11), "a free slot's mutex is free");
                slot.live.store(1, Ordering::Relaxed);
                let id = slot.generation.load(Ordering::Relaxed);
                // SAFETY: under the pool's lock, checked by loom.
                unsafe {
                    free.with_mut(|f| *f -= 2);
                    slot.pages.with_mut(|p| *p += 2);
                }
                lock.release();
                // The process dies: the kernel frees the keeper's mutex, marked dead.
                dead.store(1, Ordering::Relaxed);
                Held(&slot.mutex, 11).die();
                Some(id)
            })
        };
        let two = {
            let (pool, slot, free, dead) = (pool.clone(), slot.clone(), free.clone(), dead.clone());
            thread::spawn(move || {
                let lock = Held(&pool, 2);
                lock.acquire().unwrap();
                let mut reclaimed = 0;
                if slot.live.load(Ordering::Relaxed) != 0 && slot.mutex.try_take(2) {
                    assert_eq!(dead.load(Ordering::Relaxed), 1, "a live owner reclaimed");
                    // SAFETY: under the pool's lock.
                    unsafe {
                        let p = slot.pages.with_mut(|p| core::mem::take(&mut *p));
                        free.with_mut(|f| *f += p);
                        reclaimed = p;
                    }
                    slot.generation.fetch_add(1, Ordering::Relaxed);
                    slot.live.store(0, Ordering::Relaxed);
                    slot.mutex.holder.store(0, Ordering::Release);
                }
                let mine = if slot.live.load(Ordering::Relaxed) == 0 {
                    assert!(slot.mutex.try_take(22));
                    slot.live.store(1, Ordering::Relaxed);
                    Some(slot.generation.load(Ordering::Relaxed))
                } else {
                    None
                };
                lock.release();
                (reclaimed, mine)
            })
        };
        let id1 = one.join().unwrap();
        let (reclaimed, id2) = two.join().unwrap();
        // SAFETY: every thread has joined.
        let (free, held) = unsafe { (free.with(|f| *f), slot.pages.with(|p| *p)) };
        assert_eq!(free + held, 4, "pages conserved");
        if let (Some(a), Some(b)) = (id1, id2) {
            assert_ne!(a, b, "a reused slot keeps no old id");
            assert_eq!(reclaimed, 2);
        }
        assert!(id1.is_some() || id2.is_some());
    });
}

/// The lock of layout version 5 as the Python bindings take it: the word holds the holder's
/// owner code, taken with one compare-and-swap; a waiter takes it over from a holder only once
/// a try of the holder's slot mutex succeeds (the holder's keeper died with its process, so the
/// kernel freed and marked the mutex). Owner 1, if it takes the word first, dies in its
/// critical section (torn state, word left naming it); owner 2 waits meanwhile, probing. Checked:
/// owner 2 never takes over a live holder, it repairs the torn state when it took over, and no
/// increment is lost.
#[test]
fn the_word_taken_over_only_from_an_owner_whose_slot_mutex_is_free() {
    loom::model(|| {
        let word = Arc::new(AtomicU32::new(0));
        let keeper1 = Arc::new(Robust::new());
        assert!(
            keeper1.try_take(11),
            "owner 1's keeper holds its slot mutex"
        );
        let dead = Arc::new(AtomicU32::new(0));
        let state = Arc::new(UnsafeCell::new((0u32, 0u32)));
        let one = {
            let (word, keeper1, dead, state) =
                (word.clone(), keeper1.clone(), dead.clone(), state.clone());
            thread::spawn(move || {
                let lock = OwnerLock::new(&word);
                if lock.try_lock(1).is_err() {
                    return false; // owner 2 came first: owner 1 does nothing
                }
                // SAFETY: under the lock word, checked by loom.
                state.with_mut(|s| unsafe {
                    (*s).1 = 1;
                    (*s).0 += 1;
                });
                // Dies inside: the word and the torn state are left.
                dead.store(1, Ordering::Relaxed);
                Held(&keeper1, 11).die();
                true
            })
        };
        let two = {
            let (word, keeper1, dead, state) =
                (word.clone(), keeper1.clone(), dead.clone(), state.clone());
            thread::spawn(move || {
                let lock = OwnerLock::new(&word);
                loop {
                    match lock.try_lock(2) {
                        Ok(()) => break,
                        Err(holder) => {
                            assert_eq!(holder, 1);
                            // The holder's liveness: a try of its slot mutex.
                            if keeper1.try_take(2) {
                                assert_eq!(dead.load(Ordering::Relaxed), 1, "live holder");
                                keeper1.holder.store(0, Ordering::Release);
                                if lock.take_from(1, 2) {
                                    // SAFETY: the word is ours; the holder is dead.
                                    state.with_mut(|s| unsafe { (*s).1 = 0 });
                                    break;
                                }
                            }
                            thread::yield_now();
                        }
                    }
                }
                // SAFETY: under the lock word.
                state.with_mut(|s| unsafe {
                    assert_eq!((*s).1, 0, "a torn state used unrepaired");
                    (*s).0 += 1;
                });
                lock.unlock(2);
            })
        };
        let ran1 = one.join().unwrap();
        two.join().unwrap();
        // SAFETY: every thread has joined.
        let (count, _) = state.with(|s| unsafe { *s });
        assert_eq!(count, 1 + u32::from(ran1));
    });
}
