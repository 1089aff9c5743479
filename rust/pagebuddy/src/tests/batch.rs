//! Batches: `alloc_many` and `put_many` equal the single calls, or change nothing.

use std::vec;
use std::vec::Vec;

use super::{cfg, snapshot, Mem};
use crate::*;

/// Runs `$body` on a side-table pool and on an intrusive one built from `$config`.
macro_rules! both_stores {
    ($config:expr, |$pool:ident| $body:block) => {{
        let mut mem = Mem::new($config.nr_pages);
        {
            let mut $pool = mem.side($config).unwrap();
            $body
        }
        let mut mem = Mem::new($config.nr_pages);
        {
            let mut $pool = mem.intrusive($config).unwrap();
            $body
        }
    }};
}

#[test]
fn alloc_many_equals_allocs_one_by_one() {
    let config = cfg(37).base_pfn(5).reserved_pages(1);
    for order in 0..5 {
        for count in [0, 1, 2, 3, 7] {
            let mut one_by_one = Mem::new(37);
            let mut single = one_by_one.side(config).unwrap();
            let want: Result<Vec<u64>, Error> = (0..count).map(|_| single.alloc(order)).collect();
            let Ok(want) = want else { continue };
            both_stores!(config, |pool| {
                let mut pfns = vec![0; count];
                pool.alloc_many(order, &mut pfns).unwrap();
                assert_eq!(pfns, want);
                assert_eq!(snapshot(&pool).0, snapshot(&single).0);
                pool.check().unwrap();
            });
        }
    }
}

#[test]
fn alloc_many_refusals_change_nothing() {
    both_stores!(cfg(9).base_pfn(37).reserved_pages(1), |pool| {
        let before = snapshot(&pool);
        for order in 0..4 {
            let fits = pool.capacity(order) as usize;
            let mut pfns = vec![0; fits + 1];
            assert_eq!(
                pool.alloc_many(order, &mut pfns),
                Err(Error::OutOfMemory { order })
            );
            assert_eq!(snapshot(&pool), before);
        }
        let bad = Error::InvalidOrder {
            order: 4,
            max_order: 4,
        };
        assert_eq!(pool.alloc_many(4, &mut []), Err(bad));
        assert_eq!(snapshot(&pool), before);
        let mut all = vec![0; 8];
        pool.alloc_many(0, &mut all).unwrap(); // exactly the capacity
        assert_eq!(pool.free_pages(), 0);
        pool.check().unwrap();
    });
}

#[test]
fn put_many_equals_puts_one_by_one() {
    let config = cfg(16).base_pfn(32);
    both_stores!(config, |pool| {
        let mut single_mem = Mem::new(16);
        let mut single = single_mem.side(config).unwrap();
        let mut heads = Vec::new();
        for order in [0, 1, 0, 2, 0, 1] {
            let pfn = pool.alloc(order).unwrap();
            assert_eq!(single.alloc(order), Ok(pfn));
            heads.push(pfn);
        }
        // A page held three times and put three times, another held twice and put once.
        for p in [heads[0], heads[0], heads[2]] {
            pool.get(p).unwrap();
            single.get(p).unwrap();
        }
        let batch = [
            heads[0], heads[3], heads[0], heads[1], heads[2], heads[5], heads[0],
        ];
        pool.put_many(&batch).unwrap();
        for &p in &batch {
            single.put(p).unwrap();
        }
        assert_eq!(snapshot(&pool).0, snapshot(&single).0);
        assert_eq!(snapshot(&pool).1, snapshot(&single).1);
        assert_eq!(pool.refcount(heads[2]), Ok(1));
        pool.check().unwrap();
        assert_eq!(pool.put_many(&[]), Ok(()));
    });
}

#[test]
fn put_many_refusals_change_nothing_and_name_the_element() {
    both_stores!(cfg(9).base_pfn(37).reserved_pages(1), |pool| {
        // pfns 37..46, 37 reserved: 38-39 held, 44 held, 45 free.
        let held = pool.alloc(1).unwrap();
        let single = pool.alloc(0).unwrap();
        pool.get(single).unwrap();
        let before = snapshot(&pool);
        let cases: [(&[u64], usize, Error); 6] = [
            (&[held, 36], 1, Error::PfnOutOfRange { pfn: 36 }),
            (&[held, single, 46], 2, Error::PfnOutOfRange { pfn: 46 }),
            (&[single, held + 1], 1, Error::NotHeld { pfn: held + 1 }),
            (&[45], 0, Error::NotHeld { pfn: 45 }),
            (&[held, 37, held], 2, Error::NotHeld { pfn: held }),
            (
                &[single, single, held, single],
                3,
                Error::NotHeld { pfn: single },
            ),
        ];
        for (pfns, index, error) in cases {
            assert_eq!(pool.put_many(pfns), Err(BatchError { index, error }));
            assert_eq!(snapshot(&pool), before);
            pool.check().unwrap();
        }
        pool.put_many(&[single, held, 37, single]).unwrap();
        assert_eq!(pool.free_pages(), 9);
        pool.check().unwrap();
    });
}

#[test]
fn locked_pool_batches() {
    let mut mem = Mem::new(16);
    let pool: LockedPool<'_, _, SpinLock> = LockedPool::new(mem.side(cfg(16)).unwrap());
    let mut pfns = [0; 4];
    pool.alloc_many(2, &mut pfns).unwrap();
    assert_eq!(pfns, [0, 4, 8, 12]);
    let err = BatchError {
        index: 4,
        error: Error::NotHeld { pfn: 0 },
    };
    assert_eq!(pool.put_many(&[0, 4, 8, 12, 0]), Err(err));
    assert_eq!(pool.free_pages(), 0);
    pool.put_many(&pfns).unwrap();
    assert_eq!(pool.free_pages(), 16);
    pool.check().unwrap();
}
