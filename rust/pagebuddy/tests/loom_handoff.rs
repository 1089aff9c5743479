//! Model checking of `HandoffPool` with loom: callers take turns under an outer lock (a loom
//! `Mutex`, as Python's interpreter lock), one of them hands the pool off and lets the outer lock
//! go before using it; every interleaving of the handoff flag, the outer lock and every access to
//! the pool cell is explored (loom fails on any access that could overlap another), and each test
//! asserts `check()` and the exact state each interleaving must leave.
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p pagebuddy --test loom_handoff --release --target-dir target/loom
//! ```
#![cfg(loom)]

use loom::sync::{Arc, Mutex};
use loom::thread;
use pagebuddy::{Config, HandoffPool, Link, PageMeta, Pool, SideTable};

const PS: usize = 64;

type Shared = Arc<(Mutex<()>, HandoffPool<'static, SideTable<'static>>)>;

/// Memory for one pool, leaked: loom threads need `'static` data and each run is tiny.
fn leak<T: Clone>(value: T, n: usize) -> &'static mut [T] {
    Box::leak(vec![value; n].into_boxed_slice())
}

fn shared(nr: usize) -> Shared {
    let config = Config::new(nr).page_size(PS);
    let links = SideTable::new(leak(Link::EMPTY, nr));
    let pool = Pool::new(leak(0u8, nr * PS), leak(PageMeta::INIT, nr), links, config).unwrap();
    Arc::new((Mutex::new(()), HandoffPool::new(pool)))
}

/// A call under the outer lock.
fn outer<T>(s: &Shared, f: impl FnOnce(&mut Pool<'static, SideTable<'static>>) -> T) -> T {
    let _held = s.0.lock().unwrap();
    // SAFETY: every call on this pool is made holding `s.0`, held until it returns.
    unsafe { s.1.with_outer(f) }
}

/// A call through a handoff, with the outer lock let go once the pool is handed off.
fn handed_off<T>(s: &Shared, f: impl FnOnce(&mut Pool<'static, SideTable<'static>>) -> T) -> T {
    let held = s.0.lock().unwrap();
    // SAFETY: as in `outer`, held until `hand_off` returns.
    let mut handoff = unsafe { s.1.hand_off() };
    drop(held);
    handoff.with(f)
}

/// A handed-off batch against a call under the outer lock: both complete, the pool stays whole.
#[test]
fn batch_handed_off_against_a_call_under_the_outer_lock() {
    loom::model(|| {
        let s = shared(4);
        let t = {
            let s = s.clone();
            thread::spawn(move || {
                let mut pfns = [0; 2];
                handed_off(&s, |p| p.alloc_many(0, &mut pfns)).unwrap();
                handed_off(&s, |p| p.put_many(&pfns)).unwrap();
            })
        };
        let pfn = outer(&s, |p| p.alloc(1)).unwrap();
        outer(&s, |p| p.put(pfn)).unwrap();
        t.join().unwrap();
        outer(&s, |p| {
            p.check().unwrap();
            assert_eq!(p.free_pages(), 4);
        });
    });
}

/// Two handoffs from two threads: the second waits for the first to be dropped.
#[test]
fn two_handoffs_take_turns() {
    loom::model(|| {
        let s = shared(2);
        let t = {
            let s = s.clone();
            thread::spawn(move || handed_off(&s, |p| p.alloc(0)).unwrap())
        };
        let mine = handed_off(&s, |p| p.alloc(0)).unwrap();
        let theirs = t.join().unwrap();
        assert_ne!(mine, theirs);
        outer(&s, |p| {
            assert_eq!(p.free_pages(), 0);
            p.put(mine).unwrap();
            p.put(theirs).unwrap();
            p.check().unwrap();
            assert_eq!(p.buddyinfo(), &[0, 1]);
        });
    });
}
