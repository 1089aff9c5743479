//! Model checking of `LockedPool`'s critical sections with loom: every interleaving of the lock's
//! atomics and every access to the pool cell is explored, and each test asserts `check()` and the
//! exact state that each interleaving must leave.
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p pagebuddy --test loom --release --target-dir target/loom
//! ```
#![cfg(loom)]

use std::collections::BTreeSet;

use loom::sync::Arc;
use loom::thread;
use pagebuddy::{
    Config, Error, Intrusive, Link, LinkStore, LockedPool, PageMeta, Pool, SideTable, SpinLock,
};

const PS: usize = 64;

type Locked<L> = LockedPool<'static, L, SpinLock>;

/// Memory for one pool, leaked: loom threads need `'static` data and each run is tiny.
fn leak<T: Clone>(value: T, n: usize) -> &'static mut [T] {
    Box::leak(vec![value; n].into_boxed_slice())
}

fn side_table(nr: usize) -> Locked<SideTable<'static>> {
    let config = Config::new(nr).page_size(PS);
    let links = SideTable::new(leak(Link::EMPTY, nr));
    let pool = Pool::new(leak(0u8, nr * PS), leak(PageMeta::INIT, nr), links, config);
    LockedPool::new(pool.unwrap())
}

fn intrusive(nr: usize) -> Locked<Intrusive> {
    let config = Config::new(nr).page_size(PS);
    let pool = Pool::new(
        leak(0u8, nr * PS),
        leak(PageMeta::INIT, nr),
        Intrusive,
        config,
    );
    LockedPool::new(pool.unwrap())
}

fn lists<L: LinkStore>(pool: &Locked<L>) -> Vec<Vec<u64>> {
    pool.with(|p| {
        (0..p.max_order())
            .map(|k| p.free_list(k).collect())
            .collect()
    })
}

fn buddyinfo<L: LinkStore>(pool: &Locked<L>) -> Vec<u32> {
    pool.with(|p| p.buddyinfo().to_vec())
}

/// Runs `body` under loom for both link stores and returns, per store, how many executions loom
/// explored and which outcomes (as `body` names them) it saw.
fn both_stores(nr: usize, body: fn(Handle) -> u8) -> [(usize, BTreeSet<u8>); 2] {
    let run = |make: fn(usize) -> Handle| {
        let seen = std::sync::Arc::new(std::sync::Mutex::new((0, BTreeSet::new())));
        let record = seen.clone();
        loom::model(move || {
            let outcome = body(make(nr));
            let mut r = record.lock().unwrap();
            r.0 += 1;
            r.1.insert(outcome);
        });
        let r = seen.lock().unwrap().clone();
        eprintln!("{nr} pages: {} executions, outcomes {:?}", r.0, r.1);
        r
    };
    [
        run(|nr| Arc::new(Box::new(side_table(nr)))),
        run(|nr| Arc::new(Box::new(intrusive(nr)))),
    ]
}

/// Asserts that loom explored more than one execution and saw exactly `outcomes`.
fn explored(runs: [(usize, BTreeSet<u8>); 2], outcomes: &[u8]) {
    for (executions, seen) in runs {
        assert!(executions > 1, "loom explored {executions} execution(s)");
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), outcomes);
    }
}

/// A pool shared by the threads of one loom execution.
type Handle = Arc<Box<dyn Shared>>;

/// The operations the tests need, object-safe so one body serves both stores.
trait Shared: Send + Sync {
    fn alloc(&self, order: u32) -> Result<u64, Error>;
    fn put(&self, pfn: u64) -> Result<(), Error>;
    fn get(&self, pfn: u64) -> Result<(), Error>;
    fn refcount(&self, pfn: u64) -> Result<u16, Error>;
    fn free_pages(&self) -> u32;
    fn check(&self);
    fn lists(&self) -> Vec<Vec<u64>>;
    fn buddyinfo(&self) -> Vec<u32>;
}

impl<L: LinkStore + Send> Shared for Locked<L>
where
    Pool<'static, L>: Send,
{
    fn alloc(&self, order: u32) -> Result<u64, Error> {
        LockedPool::alloc(self, order)
    }
    fn put(&self, pfn: u64) -> Result<(), Error> {
        LockedPool::put(self, pfn)
    }
    fn get(&self, pfn: u64) -> Result<(), Error> {
        LockedPool::get(self, pfn)
    }
    fn refcount(&self, pfn: u64) -> Result<u16, Error> {
        self.with(|p| p.refcount(pfn))
    }
    fn free_pages(&self) -> u32 {
        LockedPool::free_pages(self)
    }
    fn check(&self) {
        LockedPool::check(self).unwrap()
    }
    fn lists(&self) -> Vec<Vec<u64>> {
        lists(self)
    }
    fn buddyinfo(&self) -> Vec<u32> {
        buddyinfo(self)
    }
}

#[test]
fn two_threads_alloc_and_put() {
    let runs = both_stores(4, |pool| {
        let spawn = |order| {
            let pool = pool.clone();
            thread::spawn(move || {
                let pfn = pool.alloc(order).unwrap();
                pool.put(pfn).unwrap();
                pfn
            })
        };
        let (a, b) = (spawn(0), spawn(1));
        let (a, b) = (a.join().unwrap(), b.join().unwrap());
        assert!(a < 4 && b < 4 && b % 2 == 0);
        pool.check();
        assert_eq!(pool.free_pages(), 4);
        assert_eq!(pool.buddyinfo(), [0, 0, 1]);
        (a * 4 + b) as u8
    });
    // (0, 0): one after the other; (0, 2) and (2, 0): both held at once, either first.
    explored(runs, &[0, 2, 8]);
}

#[test]
fn two_threads_hold_disjoint_blocks() {
    let runs = both_stores(4, |pool| {
        let spawn = |order| {
            let pool = pool.clone();
            thread::spawn(move || pool.alloc(order).unwrap())
        };
        let (a, b) = (spawn(0), spawn(1));
        let (a, b) = (a.join().unwrap(), b.join().unwrap());
        // The order-1 block and the page never overlap, whoever went first.
        assert!(!(b..b + 2).contains(&a), "page {a} inside block {b}");
        pool.check();
        assert_eq!(pool.free_pages(), 1);
        assert_eq!((pool.refcount(a), pool.refcount(b)), (Ok(1), Ok(1)));
        // alloc(0) first: 0 | 2-3 (and 1 stays free); alloc(1) first: 0-1 | 2 (and 3 stays).
        let expect = if a == 0 { (2, 1) } else { (0, a ^ 1) };
        assert_eq!((b, pool.lists()[0].clone()), (expect.0, vec![expect.1]));
        pool.put(a).unwrap();
        pool.put(b).unwrap();
        pool.check();
        assert_eq!(pool.buddyinfo(), [0, 0, 1]);
        a as u8
    });
    explored(runs, &[0, 2]);
}

#[test]
fn put_races_alloc_of_the_buddy() {
    // Two pages: page 0 held, its buddy 1 free. One thread frees 0 while another allocates a
    // page: either it gets 1 (the buddy, before the put) or the put merged 0-1 first and the
    // allocation splits it again and gets 0. Never both, never a page on a list and held.
    let runs = both_stores(2, |pool| {
        assert_eq!(pool.alloc(0), Ok(0));
        let putter = {
            let pool = pool.clone();
            thread::spawn(move || pool.put(0).unwrap())
        };
        let allocator = {
            let pool = pool.clone();
            thread::spawn(move || pool.alloc(0).unwrap())
        };
        putter.join().unwrap();
        let got = allocator.join().unwrap();
        pool.check();
        assert_eq!(pool.refcount(got), Ok(1));
        assert_eq!(pool.refcount(got ^ 1), Ok(0));
        assert_eq!(pool.free_pages(), 1);
        assert_eq!(pool.lists(), [vec![got ^ 1], vec![]]);
        pool.put(got).unwrap();
        pool.check();
        assert_eq!(pool.lists(), [vec![], vec![0]]);
        got as u8
    });
    explored(runs, &[0, 1]);
}

#[test]
fn put_races_alloc_of_the_merged_block() {
    // Page 0 held, 1 free: alloc(1) needs the block that only the put of 0 creates.
    let runs = both_stores(2, |pool| {
        assert_eq!(pool.alloc(0), Ok(0));
        let putter = {
            let pool = pool.clone();
            thread::spawn(move || pool.put(0).unwrap())
        };
        let allocator = {
            let pool = pool.clone();
            thread::spawn(move || pool.alloc(1))
        };
        putter.join().unwrap();
        let outcome = match allocator.join().unwrap() {
            Ok(pfn) => {
                assert_eq!(pfn, 0);
                assert_eq!(pool.free_pages(), 0);
                assert_eq!(pool.lists(), [vec![], vec![]]);
                pool.put(0).unwrap();
                1
            }
            Err(e) => {
                assert_eq!(e, Error::OutOfMemory { order: 1 });
                assert_eq!(pool.free_pages(), 2);
                0
            }
        };
        pool.check();
        assert_eq!(pool.lists(), [vec![], vec![0]]);
        outcome
    });
    explored(runs, &[0, 1]);
}

#[test]
fn get_races_the_last_put() {
    // A get on a page whose last reference is being dropped either comes first (the page stays
    // held) or finds it free (NotHeld): never a page that is freed and held at once.
    let runs = both_stores(2, |pool| {
        assert_eq!(pool.alloc(0), Ok(0));
        let putter = {
            let pool = pool.clone();
            thread::spawn(move || pool.put(0).unwrap())
        };
        let getter = {
            let pool = pool.clone();
            thread::spawn(move || pool.get(0))
        };
        putter.join().unwrap();
        let outcome = match getter.join().unwrap() {
            Ok(()) => {
                assert_eq!(pool.refcount(0), Ok(1));
                assert_eq!(pool.lists(), [vec![1], vec![]]);
                pool.put(0).unwrap();
                1
            }
            Err(e) => {
                assert_eq!(e, Error::NotHeld { pfn: 0 });
                0
            }
        };
        pool.check();
        assert_eq!(pool.lists(), [vec![], vec![0]]);
        assert_eq!(pool.free_pages(), 2);
        outcome
    });
    explored(runs, &[0, 1]);
}
