//! Unit tests: one or more per rule of the contract.

use std::vec;
use std::vec::Vec;

use crate::*;

const PS: usize = 64;

/// Owned storage for a pool in tests.
struct Mem {
    arena: Vec<u8>,
    meta: Vec<PageMeta>,
    links: Vec<Link>,
}

impl Mem {
    fn new(nr_pages: usize) -> Self {
        Mem {
            arena: vec![0xAA; nr_pages * PS],
            meta: vec![PageMeta::INIT; nr_pages],
            links: vec![Link::EMPTY; nr_pages],
        }
    }

    fn side(&mut self, config: Config) -> Result<Pool<'_, SideTable<'_>>, Error> {
        Pool::new(
            &mut self.arena[..],
            &mut self.meta,
            SideTable::new(&mut self.links),
            config,
        )
    }

    fn intrusive(&mut self, config: Config) -> Result<Pool<'_, Intrusive>, Error> {
        Pool::new(&mut self.arena[..], &mut self.meta, Intrusive, config)
    }
}

fn cfg(nr_pages: usize) -> Config {
    Config::new(nr_pages).page_size(PS)
}

fn lists<L: LinkStore>(pool: &Pool<'_, L>) -> Vec<Vec<u64>> {
    (0..pool.max_order())
        .map(|k| pool.free_list(k).collect())
        .collect()
}

/// Everything observable: lists, metadata, counts and arena bytes, but for the hint in each
/// free head's in-page link (bytes 8 up to `IN_PAGE_BYTES`, `LinkStore::ahead`), which no
/// operation relies on: a batch and the same calls one by one may leave different ones.
fn snapshot<L: LinkStore>(pool: &Pool<'_, L>) -> (Vec<Vec<u64>>, Vec<PageMeta>, u32, Vec<u8>) {
    let (arena, meta, _) = pool.parts();
    // SAFETY: the arena is valid for `len` bytes and borrowed by the pool for this whole scope.
    let mut bytes = unsafe { core::slice::from_raw_parts(arena.as_ptr(), arena.len()) }.to_vec();
    let page_size = pool.geometry().page_size;
    for (idx, m) in meta.iter().enumerate() {
        if m.is_free_head() {
            let hint = L::IN_PAGE_BYTES.saturating_sub(8);
            let at = idx * page_size + 8;
            bytes.iter_mut().skip(at).take(hint).for_each(|b| *b = 0);
        }
    }
    (lists(pool), meta.to_vec(), pool.free_pages(), bytes)
}

/// The definition of the initial state: hold every page, then put the unreserved ones in order.
fn by_puts(config: Config) -> (Vec<Vec<u64>>, Vec<PageMeta>, u32) {
    let mut mem = Mem::new(config.nr_pages);
    let mut pool = mem.side(config.reserved_pages(config.nr_pages)).unwrap();
    let base = config.base_pfn;
    for i in config.reserved_pages..config.nr_pages {
        pool.put(base + i as u64).unwrap();
        pool.check().unwrap();
    }
    let (l, m, f, _) = snapshot(&pool);
    (l, m, f)
}

#[test]
fn meta_set_writes_every_field() {
    let want = PageMeta {
        refcount: 0x1234,
        order: 7,
        batch: 9,
    };
    let mut metas = [PageMeta::INIT; 3];
    metas[1].set(want);
    assert_eq!(metas, [PageMeta::INIT, want, PageMeta::INIT]);
    metas[1].set(PageMeta::new(1, NO_ORDER));
    assert_eq!(metas[1], PageMeta::new(1, NO_ORDER));
}

#[test]
fn initial_state_equals_sequential_puts() {
    for nr in 1..=40usize {
        for base in [0u64, 1, 2, 3, 5, 7, 8, 37, 1 << 40] {
            for cap in [1, 2, 3, 4, 11] {
                for reserved in [0, 1, 3, nr / 2, nr] {
                    let config = cfg(nr)
                        .base_pfn(base)
                        .order_cap(cap)
                        .reserved_pages(reserved);
                    if reserved > nr {
                        continue;
                    }
                    let mut mem = Mem::new(nr);
                    let pool = mem.side(config).unwrap();
                    pool.check().unwrap();
                    let (l, m, f, _) = snapshot(&pool);
                    assert_eq!((l, m, f), by_puts(config), "{config:?}");
                }
            }
        }
    }
}

#[test]
fn max_order_is_capped_bit_length() {
    for (nr, cap, want) in [
        (1, 11, 1),
        (2, 11, 2),
        (3, 11, 2),
        (4, 11, 3),
        (9, 11, 4),
        (9, 2, 2),
    ] {
        assert_eq!(cfg(nr).order_cap(cap).geometry().unwrap().max_order, want);
    }
    assert_eq!(cfg(1 << 18).geometry().unwrap().max_order, 11);
    assert_eq!(cfg(1 << 18).order_cap(24).geometry().unwrap().max_order, 19);
    assert_eq!(
        cfg(MAX_PAGES).order_cap(1000).geometry().unwrap().max_order,
        32
    );
}

#[test]
fn nine_pages_from_zero() {
    let mut mem = Mem::new(9);
    let pool = mem.side(cfg(9)).unwrap();
    assert_eq!(lists(&pool), vec![vec![8], vec![], vec![], vec![0]]);
    assert_eq!(pool.free_pages(), 9);
}

#[test]
fn thirty_seven_pages_from_pfn_5() {
    let mut mem = Mem::new(37);
    let pool = mem.side(cfg(37).base_pfn(5)).unwrap();
    // 5 | 6-7 | 8-15 | 16-31 | 32-39 | 40-41
    assert_eq!(
        lists(&pool),
        vec![vec![5], vec![6, 40], vec![], vec![8, 32], vec![16], vec![]]
    );
}

#[test]
fn alloc_splits_and_appends_upper_halves() {
    let mut mem = Mem::new(8);
    let mut pool = mem.side(cfg(8)).unwrap();
    assert_eq!(pool.alloc(0), Ok(0));
    assert_eq!(lists(&pool), vec![vec![1], vec![2], vec![4], vec![]]);
    assert_eq!(pool.page(0).unwrap(), PageMeta::new(1, 0));
    assert_eq!(pool.alloc(1), Ok(2));
    assert_eq!(pool.alloc(1), Ok(4)); // splits 4-7: 6-7 goes to the tail of order 1
    assert_eq!(lists(&pool), vec![vec![1], vec![6], vec![], vec![]]);
    assert_eq!(pool.order(5), Ok(None));
    assert_eq!(pool.refcount(5), Ok(0));
    pool.check().unwrap();
}

#[test]
fn alloc_takes_the_list_head_fifo() {
    let mut mem = Mem::new(8);
    let mut pool = mem.side(cfg(8)).unwrap();
    let pfns: Vec<u64> = (0..8).map(|_| pool.alloc(0).unwrap()).collect();
    assert_eq!(pfns, [0, 1, 2, 3, 4, 5, 6, 7]);
    for pfn in [5, 2, 7] {
        pool.put(pfn).unwrap();
    }
    assert_eq!(lists(&pool)[0], [5, 2, 7]);
    assert_eq!(pool.alloc(0), Ok(5));
    assert_eq!(lists(&pool)[0], [2, 7]);
}

#[test]
fn put_coalesces_and_removes_buddy_mid_list() {
    let mut mem = Mem::new(8);
    let mut pool = mem.side(cfg(8)).unwrap();
    for _ in 0..8 {
        pool.alloc(0).unwrap();
    }
    for pfn in [6, 0, 3, 4] {
        pool.put(pfn).unwrap();
    }
    assert_eq!(lists(&pool)[0], [6, 0, 3, 4]);
    pool.put(1).unwrap(); // 0+1 merge: 0 leaves the middle of the list
    assert_eq!(lists(&pool), vec![vec![6, 3, 4], vec![0], vec![], vec![]]);
    pool.put(2).unwrap(); // 2+3 -> 2-3, + 0-1 -> 0-3
    assert_eq!(lists(&pool), vec![vec![6, 4], vec![], vec![0], vec![]]);
    pool.put(5).unwrap();
    pool.put(7).unwrap();
    assert_eq!(lists(&pool), vec![vec![], vec![], vec![], vec![0]]);
    pool.check().unwrap();
}

#[test]
fn buddy_outside_pool_never_coalesces() {
    // Pages are pfns 5..8: 5's buddy 4 and 7's order-1 buddy 4-5 lie outside.
    let mut mem = Mem::new(3);
    let mut pool = mem.side(cfg(3).base_pfn(5)).unwrap();
    assert_eq!(lists(&pool), vec![vec![5], vec![6]]);
    assert_eq!(pool.alloc(1), Ok(6));
    pool.put(6).unwrap();
    assert_eq!(lists(&pool), vec![vec![5], vec![6]]);
}

#[test]
fn coalescing_stops_below_max_order() {
    let mut mem = Mem::new(8);
    let mut pool = mem.side(cfg(8).order_cap(2)).unwrap();
    assert_eq!(lists(&pool), vec![vec![], vec![0, 2, 4, 6]]);
    assert_eq!(pool.alloc(1), Ok(0));
    pool.put(0).unwrap();
    assert_eq!(lists(&pool), vec![vec![], vec![2, 4, 6, 0]]);
    let mut mem = Mem::new(4);
    let mut pool = mem.side(cfg(4).order_cap(1)).unwrap();
    assert_eq!(lists(&pool), vec![vec![0, 1, 2, 3]]);
    assert_eq!(
        pool.alloc(1),
        Err(Error::InvalidOrder {
            order: 1,
            max_order: 1
        })
    );
    pool.check().unwrap();
}

#[test]
fn reserved_pages_start_held() {
    let mut mem = Mem::new(9);
    let mut pool = mem.side(cfg(9).reserved_pages(3)).unwrap();
    assert_eq!(pool.free_pages(), 6);
    assert_eq!(lists(&pool), vec![vec![3, 8], vec![], vec![4], vec![]]);
    assert_eq!(pool.refcount(1), Ok(1));
    pool.put(2).unwrap(); // merges with free 3; 0-1 is held
    assert_eq!(lists(&pool), vec![vec![8], vec![2], vec![4], vec![]]);
    pool.check().unwrap();
}

#[test]
fn get_and_put_count_references() {
    let mut mem = Mem::new(4);
    let mut pool = mem.side(cfg(4)).unwrap();
    let pfn = pool.alloc(2).unwrap();
    pool.get(pfn).unwrap();
    assert_eq!(pool.refcount(pfn), Ok(2));
    pool.put(pfn).unwrap();
    assert_eq!(pool.free_pages(), 0);
    pool.put(pfn).unwrap();
    assert_eq!(pool.free_pages(), 4);
    assert_eq!(pool.put(pfn), Err(Error::NotHeld { pfn }));
}

#[test]
fn refcount_overflows_at_u16_max() {
    let mut mem = Mem::new(2);
    let mut pool = mem.side(cfg(2)).unwrap();
    let pfn = pool.alloc(0).unwrap();
    for _ in 1..u16::MAX {
        pool.get(pfn).unwrap();
    }
    assert_eq!(pool.refcount(pfn), Ok(u16::MAX));
    let before = snapshot(&pool);
    assert_eq!(pool.get(pfn), Err(Error::RefcountOverflow { pfn }));
    assert_eq!(snapshot(&pool), before);
    pool.put(pfn).unwrap();
    assert_eq!(pool.refcount(pfn), Ok(u16::MAX - 1));
}

#[test]
fn split_makes_order_zero_pages() {
    let mut mem = Mem::new(8);
    let mut pool = mem.side(cfg(8)).unwrap();
    let pfn = pool.alloc(2).unwrap();
    pool.get(pfn).unwrap();
    pool.split(pfn).unwrap();
    assert_eq!(pool.page(pfn).unwrap(), PageMeta::new(2, 0));
    for t in 1..4 {
        assert_eq!(pool.page(pfn + t).unwrap(), PageMeta::new(1, 0));
    }
    pool.check().unwrap();
    for t in [3, 1, 2] {
        pool.put(pfn + t).unwrap();
    }
    // 3 and 1 wait for their held buddies; 2 merges with 3 but 0-1 is held.
    assert_eq!(lists(&pool), vec![vec![1], vec![2], vec![4], vec![]]);
    pool.put(pfn).unwrap();
    pool.put(pfn).unwrap();
    assert_eq!(lists(&pool), vec![vec![], vec![], vec![], vec![0]]);
    pool.split(0).unwrap_err();
    let pfn = pool.alloc(0).unwrap();
    pool.split(pfn).unwrap(); // order 0: nothing to split
    assert_eq!(pool.page(pfn).unwrap(), PageMeta::new(1, 0));
}

#[test]
fn every_error_leaves_state_untouched() {
    for intrusive in [false, true] {
        let mut mem = Mem::new(9);
        let config = cfg(9).base_pfn(37).reserved_pages(1);
        macro_rules! each {
            ($pool:expr) => {{
                let mut pool = $pool;
                // pfns 37..46, 37 reserved: 38-39 | 40-43 | 44-45
                let held = pool.alloc(1).unwrap();
                assert_eq!((held, pool.alloc(0)), (38, Ok(44)));
                let free_head = 45;
                assert_eq!(lists(&pool), vec![vec![45], vec![], vec![40], vec![]]);
                let before = snapshot(&pool);
                let tail = held + 1;
                let errors: Vec<(Error, Result<(), Error>)> = vec![
                    (Error::PfnOutOfRange { pfn: 36 }, pool.put(36)),
                    (Error::PfnOutOfRange { pfn: 46 }, pool.get(46)),
                    (Error::PfnOutOfRange { pfn: u64::MAX }, pool.split(u64::MAX)),
                    (Error::NotHeld { pfn: tail }, pool.put(tail)),
                    (Error::NotHeld { pfn: tail }, pool.get(tail)),
                    (Error::NotHeld { pfn: tail }, pool.split(tail)),
                    (Error::NotHeld { pfn: free_head }, pool.put(free_head)),
                    (
                        Error::InvalidOrder {
                            order: 4,
                            max_order: 4,
                        },
                        pool.alloc(4).map(drop),
                    ),
                    (
                        Error::InvalidOrder {
                            order: u32::MAX,
                            max_order: 4,
                        },
                        pool.alloc(u32::MAX).map(drop),
                    ),
                    (Error::OutOfMemory { order: 3 }, pool.alloc(3).map(drop)),
                ];
                for (want, got) in errors {
                    assert_eq!(got, Err(want));
                    assert_eq!(snapshot(&pool), before);
                }
                assert_eq!(pool.page(46), Err(Error::PfnOutOfRange { pfn: 46 }));
                pool.check().unwrap();
            }};
        }
        if intrusive {
            each!(mem.intrusive(config).unwrap());
        } else {
            each!(mem.side(config).unwrap());
        }
    }
}

#[test]
fn geometry_errors() {
    let mut mem = Mem::new(4);
    let bad = [
        (
            cfg(4).page_size(32),
            GeometryError::PageSize { page_size: 32 },
        ),
        (
            cfg(4).page_size(96),
            GeometryError::PageSize { page_size: 96 },
        ),
        (
            cfg(4).page_size(MAX_PAGE_SIZE << 1),
            GeometryError::PageSize {
                page_size: MAX_PAGE_SIZE << 1,
            },
        ),
        (cfg(0), GeometryError::NoPages),
        (
            cfg(MAX_PAGES + 1),
            GeometryError::TooManyPages {
                nr_pages: MAX_PAGES + 1,
            },
        ),
        (cfg(4).base_pfn(u64::MAX - 2), GeometryError::PfnOverflow),
        (
            cfg(4).reserved_pages(5),
            GeometryError::Reserved {
                reserved_pages: 5,
                nr_pages: 4,
            },
        ),
        (cfg(4).order_cap(0), GeometryError::OrderCap),
        (
            cfg(5),
            GeometryError::ArenaTooSmall {
                need: 5 * PS,
                have: 4 * PS,
            },
        ),
    ];
    for (config, want) in bad {
        assert_eq!(
            mem.side(config).err(),
            Some(Error::Geometry(want)),
            "{config:?}"
        );
    }
    let mut meta = [PageMeta::INIT; 3];
    let mut links = [Link::EMPTY; 3];
    let mut arena = [0u8; 4 * PS];
    let err = Pool::new(&mut arena[..], &mut meta, Intrusive, cfg(4)).err();
    assert_eq!(
        err,
        Some(Error::Geometry(GeometryError::MetadataTooSmall {
            need: 16,
            have: 12
        }))
    );
    let mut meta = [PageMeta::INIT; 4];
    let err = Pool::new(
        &mut arena[..],
        &mut meta,
        SideTable::new(&mut links),
        cfg(4),
    )
    .err();
    assert_eq!(
        err,
        Some(Error::Geometry(GeometryError::LinksTooSmall {
            need: 32,
            have: 24
        }))
    );
    let mut bytes = vec![0u32; 64];
    // SAFETY: u8 has no alignment or validity requirements; the Vec outlives the slice.
    let bytes: &mut [u8] =
        unsafe { core::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast(), 256) };
    let err = Pool::new_intrusive_in(&mut bytes[1..], cfg(2)).err();
    assert_eq!(
        err,
        Some(Error::Geometry(GeometryError::MetadataMisaligned))
    );
    let err = Pool::new_side_table_in(&mut bytes[2..], cfg(2)).err();
    assert_eq!(err, Some(Error::Geometry(GeometryError::LinksMisaligned)));
    let err = Pool::new_side_table_in(&mut bytes[..], cfg(4)).err();
    assert_eq!(
        err,
        Some(Error::Geometry(GeometryError::ArenaTooSmall {
            need: 320,
            have: 256
        }))
    );
    assert!(Pool::new_side_table_in(&mut bytes[..], cfg(3)).is_ok());
}

fn arena_bytes<L: LinkStore>(pool: &Pool<'_, L>, pfn: u64, len: usize) -> Vec<u8> {
    // SAFETY: the page lies inside the arena, which the pool borrows for this scope.
    unsafe { core::slice::from_raw_parts(pool.page_addr(pfn).unwrap().as_ptr(), len) }.to_vec()
}

fn scribble<L: LinkStore>(pool: &mut Pool<'_, L>, pfn: u64, len: usize, byte: u8) {
    // SAFETY: as above; the test holds the page, as a user would before writing into it.
    unsafe { core::ptr::write_bytes(pool.page_addr(pfn).unwrap().as_ptr(), byte, len) }
}

#[test]
fn zero_policies() {
    for intrusive in [false, true] {
        for zero in [ZeroPolicy::OnFree, ZeroPolicy::OnAlloc, ZeroPolicy::Never] {
            let mut mem = Mem::new(8);
            let config = cfg(8).reserved_pages(1).zero(zero);
            macro_rules! run {
                ($pool:expr) => {{
                    let mut pool = $pool;
                    // Reserved pages are never touched; free ones are zeroed once under OnFree.
                    assert_eq!(arena_bytes(&pool, 0, PS), vec![0xAA; PS]);
                    let pfn = pool.alloc(1).unwrap();
                    let got = arena_bytes(&pool, pfn, 2 * PS);
                    match zero {
                        ZeroPolicy::Never if intrusive => {
                            assert!(got[8..].iter().all(|&b| b == 0xAA))
                        }
                        ZeroPolicy::Never => assert_eq!(got, vec![0xAA; 2 * PS]),
                        _ => assert_eq!(got, vec![0; 2 * PS], "{zero:?}"),
                    }
                    scribble(&mut pool, pfn, 2 * PS, 0x55);
                    pool.put(pfn).unwrap();
                    pool.check().unwrap();
                    let again = pool.alloc(1).unwrap();
                    assert_eq!(again, pfn);
                    let got = arena_bytes(&pool, pfn, 2 * PS);
                    match zero {
                        ZeroPolicy::Never if intrusive => assert_eq!(got[8..], [0x55; 2 * PS - 8]),
                        ZeroPolicy::Never => assert_eq!(got, vec![0x55; 2 * PS]),
                        _ => assert_eq!(got, vec![0; 2 * PS]),
                    }
                }};
            }
            if intrusive {
                run!(mem.intrusive(config).unwrap());
            } else {
                run!(mem.side(config).unwrap());
            }
        }
    }
}

#[test]
fn check_reports_scribbled_free_memory() {
    let mut mem = Mem::new(4);
    let mut pool = mem.side(cfg(4)).unwrap();
    let pfn = pool.alloc(0).unwrap();
    pool.put(pfn).unwrap();
    scribble(&mut pool, 2, 1, 1);
    assert_eq!(
        pool.check().map_err(|c| c.kind),
        Err(CorruptionKind::NotZero)
    );
}

#[test]
fn check_reports_broken_metadata() {
    let mut mem = Mem::new(4);
    let mut pool = mem.side(cfg(4)).unwrap();
    pool.parts_mut().1[3] = PageMeta::new(0, 0);
    assert_eq!(
        pool.check().map_err(|c| c.kind),
        Err(CorruptionKind::BadTail)
    );
    pool.parts_mut().1[3] = PageMeta::INIT;
    pool.parts_mut().1[0] = PageMeta::new(0, 5);
    assert_eq!(
        pool.check().map_err(|c| c.kind),
        Err(CorruptionKind::NotFreeHead)
    );
}

#[test]
fn scribbled_intrusive_links_are_errors_not_wild_accesses() {
    // Every 8-byte pattern into every free head's link slot, then every operation: the result may
    // be Ok or Err, but all accesses stay inside the arena (Miri/valgrind watch this) and check()
    // notices the corruption whenever a list no longer matches.
    let patterns: [[u8; 8]; 5] = [
        [0xFF; 8],
        [0; 8],
        [3, 0, 0, 0, 200, 0, 0, 0],
        [1, 0, 0, 0, 1, 0, 0, 0],
        [0xFE, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0],
    ];
    for pattern in patterns {
        for victim in 0..9u64 {
            let mut mem = Mem::new(9);
            let mut pool = mem.intrusive(cfg(9).zero(ZeroPolicy::Never)).unwrap();
            let a = pool.alloc(0).unwrap();
            let b = pool.alloc(1).unwrap();
            pool.put(a).unwrap();
            let listed = (0..4).any(|k| pool.free_list(k).any(|p| p == victim));
            // SAFETY: the pfn is in the pool; this is the scribble under test.
            unsafe {
                core::ptr::write_unaligned(pool.page_addr(victim).unwrap().as_ptr().cast(), pattern)
            };
            if listed && pattern != [0; 8] {
                let _ = pool.check();
            }
            for order in 0..4 {
                let _ = pool.alloc(order);
            }
            let _ = pool.put(b);
            for pfn in 0..9 {
                let _ = pool.put(pfn);
                let _ = pool.alloc(0);
            }
            let _ = pool.check();
            let _ = lists(&pool);
        }
    }
}

#[test]
fn capacity_counts_blocks_obtainable() {
    let mut mem = Mem::new(9);
    let mut pool = mem.side(cfg(9).reserved_pages(1)).unwrap();
    assert_eq!(
        (
            pool.capacity(0),
            pool.capacity(1),
            pool.capacity(2),
            pool.capacity(3)
        ),
        (8, 3, 1, 0)
    );
    assert_eq!(pool.capacity(99), 0);
    for _ in 0..3 {
        pool.alloc(1).unwrap();
    }
    assert_eq!(pool.alloc(1), Err(Error::OutOfMemory { order: 1 }));
    assert_eq!(pool.capacity(0), 2);
}

#[test]
fn addresses_round_trip() {
    let mut mem = Mem::new(4);
    let pool = mem.side(cfg(4).base_pfn(100)).unwrap();
    let addr = pool.page_addr(102).unwrap();
    assert_eq!(pool.addr_pfn(addr.as_ptr()), Some(102));
    assert_eq!(pool.addr_pfn(addr.as_ptr().wrapping_add(PS - 1)), Some(102));
    assert_eq!(pool.addr_pfn(addr.as_ptr().wrapping_add(2 * PS)), None);
    assert_eq!(pool.addr_pfn(core::ptr::null()), None);
}

#[test]
fn locked_pool_from_threads() {
    let mut mem = Mem::new(256);
    let pool: LockedPool<'_, SideTable<'_>> = LockedPool::new(mem.side(cfg(256)).unwrap());
    std::thread::scope(|s| {
        for t in 0..4u32 {
            let pool = &pool;
            s.spawn(move || {
                let mut held = Vec::new();
                for i in 0..2000u32 {
                    if held.len() < 8 && (i + t) % 3 != 0 {
                        if let Ok(pfn) = pool.alloc((i + t) % 3) {
                            held.push(pfn);
                        }
                    } else if let Some(pfn) = held.pop() {
                        pool.put(pfn).unwrap();
                    }
                }
                for pfn in held {
                    pool.put(pfn).unwrap();
                }
            });
        }
    });
    assert_eq!(pool.free_pages(), 256);
    pool.check().unwrap();
}

#[cfg(feature = "std")]
#[test]
fn std_locked_pool_from_threads() {
    let mut mem = Mem::new(64);
    let pool: LockedPool<'_, Intrusive, StdLock> = LockedPool::new(mem.intrusive(cfg(64)).unwrap());
    std::thread::scope(|s| {
        for t in 0..4u32 {
            let pool = &pool;
            s.spawn(move || {
                for i in 0..3000u32 {
                    let pfn = pool.alloc((i + t) % 4).unwrap();
                    pool.get(pfn).unwrap();
                    pool.put(pfn).unwrap();
                    pool.put(pfn).unwrap();
                }
            });
        }
    });
    assert_eq!(pool.free_pages(), 64);
    pool.check().unwrap();
}

#[test]
fn prezeroed_skips_zeroing_at_construction_only() {
    let mut mem = Mem::new(4);
    let mut pool = mem.side(cfg(4).reserved_pages(1).prezeroed(true)).unwrap();
    // The arena was not zero (0xAA): the promise was false. check() takes it at its word for
    // pages never handed out (it does not read them), so the broken promise shows only once
    // such a page is: as a block that does not read as zeros.
    assert_eq!(arena_bytes(&pool, 1, PS), vec![0xAA; PS]);
    pool.check().unwrap();
    pool.put(0).unwrap(); // frees still zero
    assert_eq!(arena_bytes(&pool, 0, PS), vec![0; PS]);
    pool.check().unwrap();
    let pfn = pool.alloc(1).unwrap();
    assert_eq!(arena_bytes(&pool, pfn + 1, PS), vec![0xAA; PS]);
}

mod batch;
mod checker;
mod grow;

#[test]
fn pool_may_end_at_the_last_pfn() {
    let mut mem = Mem::new(4);
    let mut pool = mem.intrusive(cfg(4).base_pfn(u64::MAX - 3)).unwrap();
    // u64::MAX - 3 = ...fffc is 4-aligned: one block of order 2.
    assert_eq!(lists(&pool), vec![vec![], vec![], vec![u64::MAX - 3]]);
    let a = pool.alloc(0).unwrap();
    let b = pool.alloc(0).unwrap();
    let c = pool.alloc(1).unwrap();
    assert_eq!((a, b, c), (u64::MAX - 3, u64::MAX - 2, u64::MAX - 1));
    pool.put(c).unwrap();
    pool.put(a).unwrap();
    pool.put(b).unwrap();
    assert_eq!(pool.free_list(2).collect::<Vec<_>>(), vec![u64::MAX - 3]);
    assert_eq!(pool.put(u64::MAX), Err(Error::NotHeld { pfn: u64::MAX }));
    pool.check().unwrap();
}

/// Public geometry helpers answer for every input, hand-built geometries included: no overflow
/// (a panic in debug builds, a wrong answer in release).
#[test]
fn geometry_helpers_never_overflow() {
    let geo = cfg(8).base_pfn(u64::MAX - 7).geometry().unwrap();
    assert_eq!(geo.arena_bytes(), Some(8 * PS));
    assert_eq!(geo.index(u64::MAX), Some(7));
    assert_eq!(geo.index(u64::MAX - 8), None);
    assert_eq!(geo.index(0), None);
    for page_size in [usize::MAX, usize::MAX / 2 + 1, 1 << (usize::BITS - 1)] {
        let huge = Geometry {
            nr_pages: u32::MAX,
            page_size,
            ..geo
        };
        assert_eq!(huge.arena_bytes(), None);
    }
    let top = Geometry {
        nr_pages: u32::MAX,
        base_pfn: u64::MAX,
        ..geo
    };
    assert_eq!(top.index(u64::MAX), Some(0));
    assert_eq!(top.index(0), None);
    // A pool at the very top of the pfn space: addresses past its end have no pfn.
    let mut mem = Mem::new(8);
    let pool = mem.side(cfg(8).base_pfn(u64::MAX - 7)).unwrap();
    let last = pool.page_addr(u64::MAX).unwrap().as_ptr();
    assert_eq!(pool.addr_pfn(last), Some(u64::MAX));
    assert_eq!(pool.addr_pfn(last.wrapping_add(PS)), None);
    assert_eq!(pool.addr_pfn(last.wrapping_add(100 * PS)), None);
    assert_eq!(
        pool.page_addr(u64::MAX - 8),
        Err(Error::PfnOutOfRange { pfn: u64::MAX - 8 })
    );
}

/// Under scribbled intrusive links, an operation that reports corruption has changed nothing:
/// the page it was given stays held (not zeroed, not counted free, not half-merged), so no page
/// is left neither held nor free, and a batch hands out no block. Every link pattern into every
/// page, then every put, alloc and alloc_many.
#[test]
fn corruption_is_found_before_anything_changes() {
    let patterns: [[u8; 8]; 6] = [
        [0xFF; 8],
        [3, 0, 0, 0, 200, 0, 0, 0],
        [1, 0, 0, 0, 1, 0, 0, 0],
        [0xFE, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0],
        [0, 0, 0, 0x80, 0, 0, 0, 0x80],
        [5, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF],
    ];
    let mut refused = 0;
    for zero in [ZeroPolicy::OnFree, ZeroPolicy::Never] {
        for pattern in patterns {
            for victim in 0..16u64 {
                let mut mem = Mem::new(16);
                let mut pool = mem.intrusive(cfg(16).zero(zero)).unwrap();
                let held: Vec<u64> = (0..16).map(|_| pool.alloc(0).unwrap()).collect();
                for &pfn in &held {
                    scribble(&mut pool, pfn, PS, 0xBB);
                }
                // Free lists of every order: 0, 3, 5 (order 0), 8-9 (order 1), 12-15 (order 2).
                for pfn in [0, 3, 5, 8, 9, 12, 13, 14, 15] {
                    pool.put(pfn).unwrap();
                }
                // SAFETY: the pfn is in the pool; this is the scribble under test.
                unsafe {
                    core::ptr::write_unaligned(
                        pool.page_addr(victim).unwrap().as_ptr().cast(),
                        pattern,
                    )
                };
                for op in 0..38u64 {
                    let before = snapshot(&pool);
                    let result = match op {
                        0..=15 => pool.put(op),
                        16..=19 => pool.alloc((op - 16) as u32).map(drop),
                        _ => {
                            let mut out = vec![0; 1 + (op as usize - 20) / 3];
                            pool.alloc_many((op - 20) as u32 % 3, &mut out)
                        }
                    };
                    if let Err(e) = result {
                        assert_eq!(snapshot(&pool), before, "{e:?} changed the pool");
                        refused += matches!(e, Error::Corrupted(_)) as u32;
                    }
                }
            }
        }
    }
    assert!(refused > 50, "only {refused} operations found corruption");
}

/// A free that merges with buddies each alone on its list checks every such list's ends before
/// it writes anything: ends that name another block are corruption at the buddy, and the free
/// changes nothing, not even the merges below the broken one.
#[test]
fn a_merge_checks_the_lists_of_lone_buddies_before_it_writes() {
    type Scribble = fn(&mut ListEnds);
    let cases: [(Scribble, u64); 4] = [
        (|e| e.head[1] = 7, 2),
        (|e| e.tail[1] = 7, 2),
        (|e| e.head[0] = 5, 1),
        (|e| e.tail[0] = 9, 1),
    ];
    for (scribble, pfn) in cases {
        let mut mem = Mem::new(16);
        let mut pool = mem.side(cfg(16)).unwrap();
        let held: Vec<u64> = (0..16).map(|_| pool.alloc(0).unwrap()).collect();
        assert_eq!(held, (0..16).collect::<Vec<u64>>());
        // Page 1 alone on list 0; pages 2-3 merged, alone on list 1.
        for pfn in [1, 2, 3] {
            pool.put(pfn).unwrap();
        }
        scribble(pool.free.ends_mut());
        let (ends, meta) = (*pool.free.ends(), pool.parts().1.to_vec());
        assert_eq!(
            pool.put(0),
            Err(Error::Corrupted(Corruption {
                kind: CorruptionKind::ListBroken,
                pfn
            }))
        );
        assert_eq!(*pool.free.ends(), ends, "the free wrote the lists' ends");
        assert_eq!(pool.parts().1, &meta[..], "the free wrote metadata");
    }
    // Unscribbled, the same free merges both and lists one block of order 2.
    let mut mem = Mem::new(16);
    let mut pool = mem.side(cfg(16)).unwrap();
    for _ in 0..16 {
        pool.alloc(0).unwrap();
    }
    for pfn in [1, 2, 3, 0] {
        pool.put(pfn).unwrap();
    }
    assert_eq!(lists(&pool)[..3], [vec![], vec![], vec![0]]);
    pool.check().unwrap();
}

/// A free whose first buddies are each alone on their lists and whose next buddy has neighbours
/// on its list merges with all of them, as a free that meets the neighbours first does: the
/// lone buddies' lists emptied, the buddy with neighbours unlinked from among them, and the
/// merged block listed once.
#[test]
fn a_merge_from_lone_buddies_into_a_list_with_neighbours() {
    fn run<L: LinkStore>(mut pool: Pool<'_, L>) {
        let held: Vec<u64> = (0..16).map(|_| pool.alloc(0).unwrap()).collect();
        assert_eq!(held, (0..16).collect::<Vec<u64>>());
        // Page 1 alone on list 0; blocks 6-7, 2-3 and 10-11 on list 1, in that order; page
        // 0's merges: 1 (alone), then 2-3 (between two neighbours), then 4-7, held.
        for pfn in [1, 6, 7, 2, 3, 10, 11] {
            pool.put(pfn).unwrap();
        }
        assert_eq!(lists(&pool)[..3], [vec![1], vec![6, 2, 10], vec![]]);
        pool.put(0).unwrap();
        assert_eq!(lists(&pool)[..3], [vec![], vec![6, 10], vec![0]]);
        assert_eq!(pool.free_pages(), 8);
        pool.check().unwrap();
        // The next allocation of a page splits the head of list 1, the first non-empty one.
        assert_eq!(pool.alloc(0), Ok(6));
        assert_eq!(lists(&pool)[..3], [vec![7], vec![10], vec![0]]);
        pool.check().unwrap();
    }
    let mut mem = Mem::new(16);
    run(mem.side(cfg(16)).unwrap());
    let mut mem = Mem::new(16);
    run(mem.intrusive(cfg(16)).unwrap());
}

/// A free whose lone buddy's metadata claims a block that runs past the pool (corruption no
/// operation makes) merges as the general merge does, without reaching past the metadata: the
/// merged block is listed, and `check` reports what the claim made of the lists.
#[test]
fn a_merge_with_a_lone_buddy_past_the_pool() {
    fn run<L: LinkStore>(mut pool: Pool<'_, L>) {
        // 13 pages: blocks 0-7, 8-11 and 12 on lists 3, 2 and 0.
        assert_eq!(lists(&pool)[..4], [vec![12], vec![], vec![8], vec![0]]);
        assert_eq!(pool.alloc(2), Ok(8));
        // Page 12 claims to be a free block of order 2 (pages 12-15), alone on list 2.
        pool.parts_mut().1[12] = PageMeta::new(0, 2);
        let ends = pool.free.ends_mut();
        (ends.head[2], ends.tail[2], ends.len[2]) = (12, 12, 1);
        (ends.head[0], ends.tail[0], ends.len[0]) = (Link::NIL, Link::NIL, 0);
        ends.mask = 0b1100;
        pool.put(8).unwrap();
        assert_eq!(lists(&pool)[..4], [vec![], vec![], vec![], vec![0, 8]]);
        assert_eq!(pool.parts().1[8], PageMeta::new(0, 3));
        assert_eq!(pool.parts().1[12].order, NO_ORDER);
        assert!(pool.check().is_err());
    }
    let mut mem = Mem::new(13);
    run(mem.side(cfg(13)).unwrap());
    let mut mem = Mem::new(13);
    run(mem.intrusive(cfg(13)).unwrap());
}

/// In a prezeroed arena, check() reads only pages the pool has handed out: what lies past them
/// was never written by the pool (a lazily committed arena stays uncommitted). Written memory is
/// still checked, and arenas the pool zeroed itself are checked whole.
#[test]
fn check_reads_only_pages_ever_handed_out_of_a_prezeroed_arena() {
    let mut mem = Mem::new(16);
    mem.arena.fill(0);
    let mut pool = mem.side(cfg(16).reserved_pages(1).prezeroed(true)).unwrap();
    scribble(&mut pool, 9, 1, 7); // never handed out: not read
    pool.check().unwrap();
    let pfn = pool.alloc(1).unwrap(); // pages 2-3
    assert_eq!(pfn, 2);
    pool.put(pfn).unwrap();
    scribble(&mut pool, 3, 1, 7); // handed out and freed, then written through a stale pointer
    assert_eq!(
        pool.check().map_err(|c| c.kind),
        Err(CorruptionKind::NotZero)
    );
    scribble(&mut pool, 3, 1, 0);
    pool.check().unwrap();
    let big = pool.alloc(3).unwrap(); // pages 8-15: now page 9 counts
    pool.put(big).unwrap();
    pool.check().unwrap(); // put zeroed it
    scribble(&mut pool, 9, 1, 7);
    assert!(pool.check().is_err());

    let mut mem = Mem::new(16);
    let mut pool = mem.side(cfg(16)).unwrap(); // zeroed by construction: all of it is read
    scribble(&mut pool, 9, 1, 7);
    assert_eq!(
        pool.check().map_err(|c| c.kind),
        Err(CorruptionKind::NotZero)
    );
}

/// A page's order and a list's head are bytes a shared pool's other processes can write: a
/// block they describe that does not lie in the pool (an order at or above `max_order`, or
/// pages past the pool's end) is `BadHead`, found before the operation splits it, hands it out
/// or writes its pages, with nothing changed.
#[test]
fn blocks_that_do_not_fit_the_pool_are_bad_heads() {
    let bad = |pfn: u64| {
        Err(Error::Corrupted(Corruption {
            kind: CorruptionKind::BadHead,
            pfn,
        }))
    };
    // 12 pages, blocks of up to 8: 0-7 and 8-11 free.
    let mut mem = Mem::new(12);
    let mut pool = mem.side(cfg(12).order_cap(4)).unwrap();
    assert_eq!(pool.max_order(), 4);
    let (eight, zero, one) = (
        pool.alloc(2).unwrap(),
        pool.alloc(0).unwrap(),
        pool.alloc(0).unwrap(),
    );
    assert_eq!((eight, zero, one), (8, 0, 1));
    // Held pages claiming blocks that do not fit: 8 pages from pfn 8 run past the end, 16
    // pages is max_order.
    let _ = (zero, one);
    for (pfn, order) in [(eight, 3u8), (eight, 4)] {
        let idx = pfn as usize;
        let old = pool.meta[idx];
        pool.meta[idx].order = order;
        let before = snapshot(&pool);
        assert_eq!(pool.split(pfn), bad(pfn), "pfn {pfn} order {order}");
        if order >= 4 {
            assert_eq!(pool.put(pfn), bad(pfn), "pfn {pfn} order {order}");
        }
        assert_eq!(snapshot(&pool), before, "pfn {pfn} order {order}");
        pool.meta[idx] = old;
    }
    pool.put(eight).unwrap();
    // The only list non-empty is one of order `max_order`, whose head claims that order: the
    // allocation would split 16 pages from pfn 8.
    {
        let ends = pool.free.ends_mut();
        *ends = ListEnds::EMPTY;
        ends.mask = 1 << 4;
        ends.head[4] = 8;
        ends.tail[4] = 8;
        ends.len[4] = 1;
    }
    pool.meta[8].order = 4;
    let before = snapshot(&pool);
    assert_eq!(pool.alloc(0).map(drop), bad(8));
    assert_eq!(pool.alloc(3).map(drop), bad(8));
    assert_eq!(snapshot(&pool), before);
}
