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
use pagebuddy::shmlock::{Acquired, OwnerLock};

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
