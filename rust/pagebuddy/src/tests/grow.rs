//! Pools that grow and shrink: admit, reclaim, the floor, and mainline's external blocks.

use std::vec;
use std::vec::Vec;

use proptest::prelude::*;

use super::{cfg, snapshot, Mem};
use crate::*;

/// Mainline's rule, spelled out: a pool built empty and grown only by order-0 admits lists each
/// page at order 0 and never merges them, whatever is freed next to what.
#[test]
fn empty_pool_grown_by_order_zero_admits_never_merges() {
    let mut mem = Mem::new(8);
    let mut pool = Pool::new_empty(
        &mut mem.arena[..],
        &mut mem.meta,
        SideTable::new(&mut mem.links),
        cfg(8),
    )
    .unwrap();
    assert_eq!((pool.free_pages(), pool.max_order()), (0, 4));
    for pfn in [5, 4, 0, 1, 2, 3, 6, 7] {
        pool.admit(pfn, 0).unwrap();
    }
    // Eight order-0 blocks, FIFO in admit order; none merged although every pair is buddies.
    assert_eq!(pool.buddyinfo(), &[8, 0, 0, 0]);
    assert_eq!(
        pool.free_list(0).collect::<Vec<_>>(),
        [5, 4, 0, 1, 2, 3, 6, 7]
    );
    assert_eq!(pool.alloc(1), Err(Error::OutOfMemory { order: 1 }));
    let got: Vec<u64> = (0..4).map(|_| pool.alloc(0).unwrap()).collect();
    assert_eq!(got, [5, 4, 0, 1]);
    // Freed buddies 4 and 5, 0 and 1: each goes to the tail of list 0, unmerged.
    for pfn in [4, 5, 1, 0] {
        pool.put(pfn).unwrap();
    }
    assert_eq!(
        pool.free_list(0).collect::<Vec<_>>(),
        [2, 3, 6, 7, 4, 5, 1, 0]
    );
    assert_eq!(pool.buddyinfo(), &[8, 0, 0, 0]);
    pool.check().unwrap();
}

#[test]
fn external_blocks_are_listed_at_their_order_and_split_but_never_merge() {
    let mut mem = Mem::new(16);
    let mut pool = mem.side(cfg(8).max_pages(16)).unwrap();
    assert_eq!(pool.buddyinfo(), &[0, 0, 0, 1, 0]);
    pool.admit(12, 2).unwrap();
    pool.admit(8, 2).unwrap(); // buddy of 12-15 at order 2: not merged
    assert_eq!(pool.buddyinfo(), &[0, 0, 2, 1, 0]);
    // alloc(1) splits the head of list 2 (12-15): 14-15 listed at order 1.
    assert_eq!(pool.alloc(1).unwrap(), 12);
    assert_eq!(pool.buddyinfo(), &[0, 1, 1, 1, 0]);
    pool.put(12).unwrap(); // 12-13 back at order 1, beside 14-15: not merged
    assert_eq!(pool.free_list(1).collect::<Vec<_>>(), [14, 12]);
    pool.check().unwrap();
}

#[test]
fn internal_blocks_do_not_merge_with_external_buddies() {
    let mut mem = Mem::new(8);
    // Range 0-5: blocks 0-3, 4-5; 6-7 admitted is external, buddy of 4-5 at order 1.
    let mut pool = mem.side(cfg(6).max_pages(8)).unwrap();
    pool.admit(6, 1).unwrap();
    let a = pool.alloc(1).unwrap();
    assert_eq!(a, 4);
    pool.put(a).unwrap();
    assert_eq!(pool.buddyinfo(), &[0, 2, 1, 0]);
    pool.check().unwrap();
}

#[test]
fn reclaim_takes_the_block_alloc_would() {
    for order in 0..4 {
        let (mut a, mut b) = (Mem::new(37), Mem::new(37));
        let mut grow = a.side(cfg(37).base_pfn(5)).unwrap();
        let mut twin = b.side(cfg(37).base_pfn(5)).unwrap();
        for _ in 0..3 {
            assert_eq!(grow.reclaim(order), twin.alloc(order));
        }
        assert_eq!(grow.buddyinfo(), twin.buddyinfo());
        assert_eq!(grow.free_pages(), twin.free_pages());
        grow.check().unwrap();
    }
}

#[test]
fn reclaimed_pages_are_nobodys() {
    let mut mem = Mem::new(8);
    let mut pool = mem.intrusive(cfg(8)).unwrap();
    let pfn = pool.reclaim(2).unwrap();
    assert_eq!(pfn, 0);
    for p in 0..4 {
        let e = Err(Error::NotCovered { pfn: p });
        assert_eq!(pool.put(p), e);
        assert_eq!(pool.get(p), e);
        assert_eq!(pool.split(p), e);
        assert_eq!(pool.page(p).map(drop), e);
        assert!(!pool.covers(p));
    }
    assert!(pool.covers(4));
    pool.check().unwrap();
    // Back: zeroed, covered, coalesced with its free buddy 4-7 (inside the range).
    pool.admit(0, 2).unwrap();
    assert_eq!(pool.buddyinfo(), &[0, 0, 0, 1]);
    pool.check().unwrap();
}

#[test]
fn admitted_bytes_are_zeroed_on_free() {
    let mut mem = Mem::new(8);
    let mut pool = mem.intrusive(cfg(4).max_pages(8)).unwrap();
    // Pages 4-7 hold 0xAA (the caller's bytes) until admitted.
    pool.admit(4, 2).unwrap();
    pool.check().unwrap();
    let pfn = pool.alloc(2).unwrap();
    let pfn = if pfn == 4 {
        pfn
    } else {
        pool.alloc(2).unwrap()
    };
    assert_eq!(pfn, 4);
    let (arena, _, _) = pool.parts();
    assert!(arena.is_zero(4 * super::PS, 4 * super::PS));
}

#[test]
fn misuse_changes_nothing() {
    let mut mem = Mem::new(16);
    let mut pool = mem.side(cfg(6).max_pages(16).base_pfn(16)).unwrap();
    pool.admit(24, 1).unwrap();
    let held = pool.alloc(0).unwrap();
    let before = snapshot(&pool);
    let refuse = |pfn, order, why| Err(Error::CannotAdmit { pfn, order, why });
    assert_eq!(pool.admit(25, 1), refuse(25, 1, AdmitError::Misaligned));
    assert_eq!(pool.admit(20, 2), refuse(20, 2, AdmitError::Straddles));
    assert_eq!(
        pool.admit(24, 2),
        refuse(24, 2, AdmitError::Covered { pfn: 24 })
    );
    assert_eq!(
        pool.admit(held, 0),
        refuse(held, 0, AdmitError::Covered { pfn: held })
    );
    assert_eq!(
        pool.admit(17, 0),
        refuse(17, 0, AdmitError::Covered { pfn: 17 })
    );
    assert_eq!(pool.admit(32, 0), Err(Error::PfnOutOfRange { pfn: 32 }));
    assert_eq!(pool.admit(15, 0), Err(Error::PfnOutOfRange { pfn: 15 }));
    assert_eq!(
        pool.admit(16, 5),
        Err(Error::InvalidOrder {
            order: 5,
            max_order: 5
        })
    );
    assert_eq!(
        pool.reclaim(7),
        Err(Error::InvalidOrder {
            order: 7,
            max_order: 5
        })
    );
    assert_eq!(pool.reclaim(3), Err(Error::OutOfMemory { order: 3 }));
    pool.set_min_free_pages(7);
    let floor = Error::BelowFloor {
        order: 0,
        free_pages: 7,
        min_free_pages: 7,
    };
    assert_eq!(pool.reclaim(0), Err(floor));
    assert_eq!(pool.reclaim_many(0, &mut [0; 1]), Err(floor));
    pool.set_min_free_pages(0);
    assert_eq!(
        pool.reclaim_many(0, &mut [0; 8]),
        Err(Error::OutOfMemory { order: 0 })
    );
    assert_eq!(snapshot(&pool), before);
    pool.check().unwrap();
}

#[test]
fn config_states_orders_as_mainline_and_checks_max_pages() {
    assert_eq!(
        Config::new(64).max_page_order(10).geometry(),
        Config::new(64).order_cap(11).geometry()
    );
    assert_eq!(
        Config::new(9).max_pages(8).geometry(),
        Err(GeometryError::MaxPages {
            max_pages: 8,
            nr_pages: 9
        })
    );
    assert_eq!(Config::new(0).geometry(), Err(GeometryError::NoPages));
    assert_eq!(
        Config::new(2).reserved_pages(3).max_pages(8).geometry(),
        Err(GeometryError::Reserved {
            reserved_pages: 3,
            nr_pages: 2
        })
    );
    let mut mem = Mem::new(8);
    assert!(matches!(
        Pool::new_empty(
            &mut mem.arena[..],
            &mut mem.meta,
            Intrusive,
            cfg(8).reserved_pages(1)
        ),
        Err(Error::Geometry(GeometryError::Reserved { .. }))
    ));
}

#[test]
fn check_finds_a_block_across_the_range_end_and_an_absent_page_held() {
    let mut mem = Mem::new(8);
    let mut pool = mem.side(cfg(6).max_pages(8)).unwrap();
    assert_eq!(pool.alloc(1).unwrap(), 4);
    pool.check().unwrap();
    // The held block at 4 made order 2: 4-7 crosses the range end at 6.
    pool.parts_mut().1[4] = PageMeta::new(1, 2);
    assert_eq!(pool.check().unwrap_err().kind, CorruptionKind::BadHead);
    pool.parts_mut().1[4] = PageMeta::new(1, 1);
    pool.check().unwrap();
    // An absent page with a refcount.
    pool.parts_mut().1[7] = PageMeta::new(1, ABSENT);
    assert_eq!(pool.check().unwrap_err().kind, CorruptionKind::BadHead);
}

#[derive(Clone, Debug)]
enum GrowOp {
    Alloc(u32),
    Put(u16),
    Admit(u16, u32),
    Reclaim(u32),
    ReclaimMany(u32, u8),
    Floor(u8),
}

fn grow_op() -> impl Strategy<Value = GrowOp> {
    prop_oneof![
        4 => (0u32..5).prop_map(GrowOp::Alloc),
        4 => any::<u16>().prop_map(GrowOp::Put),
        4 => (any::<u16>(), 0u32..5).prop_map(|(p, k)| GrowOp::Admit(p, k)),
        3 => (0u32..5).prop_map(GrowOp::Reclaim),
        1 => (0u32..4, 0u8..6).prop_map(|(k, n)| GrowOp::ReclaimMany(k, n)),
        1 => (0u8..40).prop_map(GrowOp::Floor),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    })]

    /// Any sequence keeps every invariant, and every page is free, held or nobody's: free
    /// pages + held pages + absent pages = the pool's pages. A refused call changes nothing.
    #[test]
    fn grow_and_shrink_keep_the_invariants(
        range in 0usize..24,
        extra in 1usize..24,
        base in prop_oneof![Just(0u64), Just(3), Just(32)],
        ops in prop::collection::vec(grow_op(), 0..80),
    ) {
        let n = range + extra;
        let mut mem = Mem::new(n);
        let mut pool = mem.intrusive(cfg(range).max_pages(n).base_pfn(base)).unwrap();
        let mut held: Vec<(u64, u32)> = vec![];
        for op in ops {
            let before = snapshot(&pool);
            let ok = match op {
                GrowOp::Alloc(k) => pool.alloc(k).map(|p| held.push((p, k))).is_ok(),
                GrowOp::Put(i) if !held.is_empty() => {
                    let (p, _) = held.swap_remove(i as usize % held.len());
                    pool.put(p).unwrap();
                    true
                }
                GrowOp::Put(i) => pool.put(base + u64::from(i) % n as u64).is_ok(),
                GrowOp::Admit(i, k) => pool.admit(base + u64::from(i) % n as u64, k).is_ok(),
                GrowOp::Reclaim(k) => pool.reclaim(k).is_ok(),
                GrowOp::ReclaimMany(k, c) => {
                    let mut out = vec![0; c as usize];
                    pool.reclaim_many(k, &mut out).is_ok()
                }
                GrowOp::Floor(f) => {
                    pool.set_min_free_pages(u32::from(f));
                    true
                }
            };
            if !ok {
                prop_assert_eq!(snapshot(&pool), before);
            }
            pool.check().unwrap();
            let held_pages: u64 = held.iter().map(|&(_, k)| 1u64 << k).sum();
            let absent = (0..n as u64).filter(|&i| !pool.covers(base + i)).count() as u64;
            prop_assert_eq!(u64::from(pool.free_pages()) + held_pages + absent, n as u64);
        }
    }
}
