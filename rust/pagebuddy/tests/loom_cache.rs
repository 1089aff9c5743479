//! Model checking of `CachedPool` with loom: the slot locks, the pool's lock, the `PageRef`
//! words and every access to the slots' stacks and the pool cell are explored in every
//! interleaving. Each test asserts `check()` and conservation after the threads join, drains
//! and requires the pool to be whole again, and requires that every outcome of the race was seen.
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p pagebuddy --test loom_cache --release --target-dir target/loom
//! ```
#![cfg(loom)]

use std::collections::BTreeSet;

use loom::sync::Arc;
use loom::thread;
use pagebuddy::{
    cache_blocks, CacheConfig, CacheSlot, CachedPool, Config, Error, Link, LockedPool, PageMeta,
    PageRef, Pool, SideTable, SpinLock,
};

const PS: usize = 64;

type Cached = CachedPool<'static, SideTable<'static>, SpinLock>;

fn leak<T: Clone>(value: T, n: usize) -> &'static mut [T] {
    Box::leak(vec![value; n].into_boxed_slice())
}

/// A cached pool of `nr` pages, `cpus` slots, order 0 cached with the given batch and high.
fn cached(nr: usize, cpus: usize, batch: u32, high: u32) -> Arc<Cached> {
    let config = Config::new(nr).page_size(PS);
    let links = SideTable::new(leak(Link::EMPTY, nr));
    let pool = Pool::new(leak(0u8, nr * PS), leak(PageMeta::INIT, nr), links, config).unwrap();
    let cache = CacheConfig::new().orders(1).batch(batch).high(high);
    let slots: Vec<CacheSlot> = (0..cpus).map(|_| CacheSlot::new()).collect();
    let refs: Vec<PageRef> = (0..nr).map(|_| PageRef::new()).collect();
    let pool = CachedPool::new(
        LockedPool::new(pool),
        Box::leak(slots.into_boxed_slice()),
        leak(0u32, cache_blocks(cpus, &cache)),
        Box::leak(refs.into_boxed_slice()),
        cache,
    );
    Arc::new(pool.unwrap())
}

/// Everything back: no caller holds a page, the caches are empty, the pool is one free block.
fn whole(pool: &Cached, nr: u32) {
    pool.drain_all().unwrap();
    pool.check().unwrap();
    assert_eq!(pool.free_pages(), nr);
    let top = nr.trailing_zeros() as usize;
    pool.with_core(|p| assert_eq!(p.buddyinfo()[top], 1));
}

/// Runs `body` under loom; returns how many executions were explored and the outcomes seen.
fn explore(body: fn() -> u8) -> (usize, BTreeSet<u8>) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new((0, BTreeSet::new())));
    let record = seen.clone();
    loom::model(move || {
        let outcome = body();
        let mut r = record.lock().unwrap();
        r.0 += 1;
        r.1.insert(outcome);
    });
    let r = seen.lock().unwrap().clone();
    eprintln!("{} executions, outcomes {:?}", r.0, r.1);
    r
}

fn explored((executions, seen): (usize, BTreeSet<u8>), outcomes: &[u8]) {
    assert!(executions > 1, "loom explored {executions} execution(s)");
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), outcomes);
}

#[test]
fn refill_races_drain_and_put_on_another_slot() {
    // Slot 0 caches page 1 (its refill of 2 handed out page 0). Slot 1 refills while slot 0 is
    // drained and page 0 is freed into slot 1: the refill gets 2 (pages 2-3 split, page 1 still
    // cached), 1 (the drain came first) or 0 (the put came first: no refill at all).
    let runs = explore(|| {
        let pool = cached(4, 2, 2, 2);
        assert_eq!(pool.alloc(0, 0), Ok(0));
        assert_eq!(pool.cached_pages(0), 1);
        let refill = {
            let pool = pool.clone();
            thread::spawn(move || pool.alloc(1, 0).unwrap())
        };
        let drain = {
            let pool = pool.clone();
            thread::spawn(move || pool.drain(0).unwrap())
        };
        pool.put(1, 0).unwrap();
        let got = refill.join().unwrap();
        drain.join().unwrap();
        pool.check().unwrap();
        assert_eq!(pool.refcount(got), Ok(1));
        assert_eq!(pool.free_pages(), 3);
        assert_eq!(pool.cached_pages(0), 0);
        pool.put(1, got).unwrap();
        whole(&pool, 4);
        got as u8
    });
    explored(runs, &[0, 1, 2]);
}

#[test]
fn put_races_alloc_on_the_same_slot() {
    // Slot 0 caches page 1; page 0 is freed into slot 0 while slot 0 allocates: LIFO gives the
    // freed page if the put came first, the cached one otherwise.
    let runs = explore(|| {
        let pool = cached(2, 1, 2, 2);
        assert_eq!(pool.alloc(0, 0), Ok(0));
        let putter = {
            let pool = pool.clone();
            thread::spawn(move || pool.put(0, 0).unwrap())
        };
        let got = pool.alloc(0, 0).unwrap();
        putter.join().unwrap();
        pool.check().unwrap();
        assert_eq!(pool.free_pages(), 1);
        assert_eq!(pool.cached_pages(0), 1);
        pool.put(0, got).unwrap();
        whole(&pool, 2);
        got as u8
    });
    explored(runs, &[0, 1]);
}

#[test]
fn alloc_drains_the_other_slots_before_failing() {
    // Two pages. Slot 0 caches page 1; slot 1 finds the pool empty, drains itself, then slot 0,
    // and gets page 1, unless the put of page 0 into slot 0 came before that drain: then both
    // pages go back, merge, and the refill hands out page 0 (caching 1 in slot 1).
    let runs = explore(|| {
        let pool = cached(2, 2, 2, 2);
        assert_eq!(pool.alloc(0, 0), Ok(0));
        let allocator = {
            let pool = pool.clone();
            thread::spawn(move || pool.alloc(1, 0))
        };
        pool.put(0, 0).unwrap();
        let got = allocator.join().unwrap().unwrap();
        pool.check().unwrap();
        assert_eq!(pool.free_pages(), 1);
        pool.put(1, got).unwrap();
        whole(&pool, 2);
        got as u8
    });
    explored(runs, &[0, 1]);
}

#[test]
fn get_races_the_last_put() {
    // The get either comes first (the page stays held) or finds it cached (NotHeld).
    let runs = explore(|| {
        let pool = cached(2, 2, 1, 1);
        assert_eq!(pool.alloc(0, 0), Ok(0));
        let putter = {
            let pool = pool.clone();
            thread::spawn(move || pool.put(0, 0).unwrap())
        };
        let outcome = match pool.get(0) {
            Ok(()) => 1,
            Err(e) => {
                assert_eq!(e, Error::NotHeld { pfn: 0 });
                0
            }
        };
        putter.join().unwrap();
        pool.check().unwrap();
        assert_eq!(pool.refcount(0), Ok(outcome));
        if outcome == 1 {
            pool.put(1, 0).unwrap();
        }
        whole(&pool, 2);
        outcome as u8
    });
    explored(runs, &[0, 1]);
}

#[test]
fn split_races_a_put_of_the_head() {
    // Two holders of an order-1 block: one splits it while the other drops its reference. Either
    // way the head ends with one reference and order 0, the tail with one, and both free cleanly
    // through the order-0 cache.
    let runs = explore(|| {
        let pool = cached(2, 2, 1, 1);
        assert_eq!(pool.alloc(0, 1), Ok(0));
        pool.get(0).unwrap();
        let putter = {
            let pool = pool.clone();
            thread::spawn(move || pool.put(1, 0).unwrap())
        };
        pool.split(0).unwrap();
        putter.join().unwrap();
        pool.check().unwrap();
        assert_eq!((pool.refcount(0), pool.order(0)), (Ok(1), Ok(Some(0))));
        assert_eq!((pool.refcount(1), pool.order(1)), (Ok(1), Ok(Some(0))));
        pool.put(0, 0).unwrap();
        pool.put(1, 1).unwrap();
        whole(&pool, 2);
        0
    });
    explored(runs, &[0]);
}

#[test]
fn local_claim_races_drain_all_and_put_on_another_slot() {
    // Slot 0 caches page 1, slot 1 page 3; pages 0 and 2 are held. While the pool is drained and
    // page 2 freed into slot 1, this thread claims slot 0 (waiting out the drain's critical
    // section if it is in one) and, through the handle, allocates and frees without the slot's
    // lock: a Page, then page 0. The drain either emptied slot 0 before the claim (outcome 0)
    // or skips it (1); loom checks that no access to slot 0's stacks overlaps another.
    let runs = explore(|| {
        let pool = cached(4, 2, 2, 2);
        assert_eq!(pool.alloc(0, 0), Ok(0));
        assert_eq!(pool.alloc(1, 0), Ok(2));
        let drainer = {
            let pool = pool.clone();
            thread::spawn(move || pool.drain_all().unwrap())
        };
        let putter = {
            let pool = pool.clone();
            thread::spawn(move || pool.put(1, 2).unwrap())
        };
        let mut local = pool.local(0).unwrap();
        let outcome = local.cached_pages();
        let page = local.alloc_page(0).unwrap();
        assert_eq!(pool.refcount(page.pfn()), Ok(1));
        local.free_page(page).unwrap();
        local.put(0).unwrap();
        drop(local);
        drainer.join().unwrap();
        putter.join().unwrap();
        pool.check().unwrap();
        assert_eq!(pool.free_pages(), 4);
        whole(&pool, 4);
        outcome as u8
    });
    explored(runs, &[0, 1]);
}

#[test]
fn a_claimed_slot_is_not_drained_for_another_cpu() {
    // Two pages: 0 held, 1 cached in slot 0, which this thread claims. Another thread claims
    // slot 1 and allocates: the pool is empty and its last-resort drain skips slot 0 while the
    // claim lasts, so it gets page 1 only if this thread's handle was dropped first.
    let runs = explore(|| {
        let pool = cached(2, 2, 2, 2);
        assert_eq!(pool.alloc(0, 0), Ok(0));
        let local = pool.local(0).unwrap();
        let other = {
            let pool = pool.clone();
            thread::spawn(move || pool.local(1).unwrap().alloc(0))
        };
        drop(local);
        let outcome = match other.join().unwrap() {
            Ok(pfn) => {
                assert_eq!(pfn, 1);
                pool.put(1, pfn).unwrap();
                1
            }
            Err(e) => {
                assert_eq!(e, Error::OutOfMemory { order: 0 });
                0
            }
        };
        pool.put(0, 0).unwrap();
        pool.check().unwrap();
        whole(&pool, 2);
        outcome
    });
    explored(runs, &[0, 1]);
}

#[test]
fn check_races_alloc_and_put() {
    // Slot 0 allocates (a hit: page 1 is cached), frees the block again (back into the cache),
    // allocates an uncached order-1 block from the pool and frees it; meanwhile another thread
    // runs `check()`, which must pass at every point in between: before, after, or with a
    // block in transit between a stack (or the pool) and the caller.
    let runs = explore(|| {
        let pool = cached(4, 1, 2, 2);
        assert_eq!(pool.alloc(0, 0), Ok(0));
        let user = {
            let pool = pool.clone();
            thread::spawn(move || {
                let pfn = pool.alloc(0, 0).unwrap();
                pool.put(0, pfn).unwrap();
                let big = pool.alloc(0, 1).unwrap();
                pool.put(0, big).unwrap();
                pfn as u8
            })
        };
        let checked = pool.check();
        let got = user.join().unwrap();
        assert_eq!(checked, Ok(()));
        pool.put(0, 0).unwrap();
        whole(&pool, 4);
        got
    });
    explored(runs, &[1]);
}
