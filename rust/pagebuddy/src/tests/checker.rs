//! `check()` names every broken rule, each condition on its own; and the small API surfaces
//! (error texts, conversions, arena and lock accessors) that the operation tests do not reach.

use std::string::ToString;
use std::vec;

use super::*;
use crate::CorruptionKind as K;

fn broken(r: Result<(), Corruption>) -> Option<(CorruptionKind, u64)> {
    r.err().map(|c| (c.kind, c.pfn))
}

/// 8 pages from pfn 16, every page allocated at order 0, then `free` put back in that order.
fn singles<'m>(mem: &'m mut Mem, free: &[u64]) -> Pool<'m, SideTable<'m>> {
    let mut pool = mem.side(cfg(8).base_pfn(16)).unwrap();
    for _ in 0..8 {
        pool.alloc(0).unwrap();
    }
    for &pfn in free {
        pool.put(pfn).unwrap();
    }
    pool.check().unwrap();
    pool
}

#[test]
fn check_counts_mask_and_lengths() {
    let mut mem = Mem::new(8);
    let mut pool = mem.side(cfg(8).base_pfn(16)).unwrap();
    assert_eq!(lists(&pool), vec![vec![], vec![], vec![], vec![16]]);
    pool.free.ends_mut().mask |= 1 << 1; // a bit for an empty list
    assert_eq!(broken(pool.check()), Some((K::Count, 16)));
    pool.free.ends_mut().mask &= !(1 << 1);
    pool.free.ends_mut().mask &= !(1 << 3); // no bit for a non-empty list
    assert_eq!(broken(pool.check()), Some((K::Count, 16)));
    pool.free.ends_mut().mask |= 1 << 3;
    pool.check().unwrap();
    // A list past max_order (4) with a length and a consistent mask bit.
    pool.free.ends_mut().len[5] = 1;
    pool.free.ends_mut().mask |= 1 << 5;
    assert_eq!(broken(pool.check()), Some((K::Count, 16)));
    pool.free.ends_mut().len[5] = 0;
    pool.free.ends_mut().mask &= !(1 << 5);
    pool.check().unwrap();
    // The free pages are the lists' lengths times their blocks' sizes: no count of their own.
    assert_eq!(pool.free_pages(), 8);
    pool.free.ends_mut().len[1] = 3;
    assert_eq!(pool.free_pages(), 14);
}

#[test]
fn check_finds_each_list_inconsistency_alone() {
    // Length too large (the walk ends early, tail and next are right).
    let mut mem = Mem::new(8);
    let mut pool = singles(&mut mem, &[19]);
    pool.free.ends_mut().len[0] = 2;
    assert_eq!(broken(pool.check()), Some((K::ListBroken, 19)));

    // Tail names the first node of two (length and next are right): the first node, read as
    // the tail, has the tail's `prev`, not NIL.
    let mut mem = Mem::new(8);
    let mut pool = singles(&mut mem, &[19, 21]);
    assert_eq!(lists(&pool)[0], [19, 21]);
    pool.free.set_tail(0, 3);
    assert_eq!(broken(pool.check()), Some((K::ListBroken, 19)));

    // Length too small: the walk stops before the end.
    pool.free.set_tail(0, 5);
    pool.check().unwrap();
    pool.free.ends_mut().len[0] = 1;
    assert_eq!(broken(pool.check()), Some((K::ListBroken, 19)));
    pool.free.ends_mut().len[0] = 2;

    // An empty list with a tail: reported at the last page, the walk having named none.
    pool.free.set_tail(2, 1);
    assert_eq!(broken(pool.check()), Some((K::ListBroken, 23)));
}

#[test]
fn check_finds_a_misplaced_link() {
    // The first node's `next` names a page (in range) other than the tail, which follows it.
    let mut mem = Mem::new(8);
    let mut pool = mem.intrusive(cfg(8).zero(ZeroPolicy::Never)).unwrap();
    for _ in 0..8 {
        pool.alloc(0).unwrap();
    }
    pool.put(3).unwrap();
    pool.put(5).unwrap();
    pool.put(7).unwrap();
    let link = Link { prev: 3, next: 6 };
    let (arena, _) = pool.parts_mut();
    Intrusive.store(arena, PS, 5, link);
    // (Page 6 is held: its first bytes, the caller's, are no link in range.)
    assert_eq!(broken(pool.check()), Some((K::LinkOutOfRange, 6)));
    // The tail's `prev` (kept in the list's ends) names a page other than its predecessor.
    Intrusive.store(pool.parts_mut().0, PS, 5, Link { prev: 3, next: 7 });
    pool.check().unwrap();
    pool.free.ends_mut().tail_prev[0] = 3;
    assert_eq!(broken(pool.check()), Some((K::ListBroken, 7)));
}

/// A pool of `n` pages, all reserved (held at order 0), whose metadata the test then bends.
fn held(mem: &mut Mem, n: usize, cap: u32) -> Pool<'_, SideTable<'_>> {
    let config = cfg(n)
        .reserved_pages(n)
        .order_cap(cap)
        .zero(ZeroPolicy::Never);
    let pool = mem.side(config).unwrap();
    pool.check().unwrap();
    pool
}

#[test]
fn check_finds_each_bad_head_alone() {
    // Order at max_order, although aligned and inside the pool.
    let mut mem = Mem::new(8);
    let mut pool = held(&mut mem, 8, 2);
    let meta = pool.parts_mut().1;
    meta[0] = PageMeta::new(1, 2);
    meta[1..4].fill(PageMeta::INIT);
    assert_eq!(broken(pool.check()), Some((K::BadHead, 0)));

    // Misaligned, although of a valid order and inside the pool.
    let mut mem = Mem::new(8);
    let mut pool = held(&mut mem, 8, 11);
    let meta = pool.parts_mut().1;
    meta[1] = PageMeta::new(1, 1);
    meta[2] = PageMeta::INIT;
    assert_eq!(broken(pool.check()), Some((K::BadHead, 1)));

    // Running past the end, although aligned and of a valid order.
    let mut mem = Mem::new(6);
    let mut pool = held(&mut mem, 6, 11);
    let meta = pool.parts_mut().1;
    meta[4] = PageMeta::new(1, 2);
    meta[5] = PageMeta::INIT;
    assert_eq!(broken(pool.check()), Some((K::BadHead, 4)));
}

#[test]
fn check_finds_orphans_tails_and_unlisted_heads() {
    let mut mem = Mem::new(4);
    let mut pool = held(&mut mem, 4, 11);
    pool.parts_mut().1[2] = PageMeta::INIT;
    assert_eq!(broken(pool.check()), Some((K::Orphan, 2)));

    let mut mem = Mem::new(4);
    let mut pool = held(&mut mem, 4, 11);
    pool.parts_mut().1[3].refcount = 0; // a free head on no list; its buddy 2 is held
    assert_eq!(broken(pool.check()), Some((K::Unlisted, 0)));

    let mut mem = Mem::new(4);
    let mut pool = held(&mut mem, 4, 11);
    let meta = pool.parts_mut().1;
    meta[0] = PageMeta::new(1, 1);
    meta[1] = PageMeta::new(1, NO_ORDER); // a tail with a refcount
    assert_eq!(broken(pool.check()), Some((K::BadTail, 1)));
}

#[test]
fn check_finds_uncoalesced_buddies_below_the_top_order_only() {
    let mut mem = Mem::new(8);
    let mut pool = singles(&mut mem, &[16]);
    pool.parts_mut().1[1] = PageMeta::new(0, 0); // 17: free, unlisted, buddy of free 16
    assert_eq!(broken(pool.check()), Some((K::Uncoalesced, 16)));
    // At the top order, buddies stay apart and that is right.
    let mut mem = Mem::new(8);
    let pool = mem.side(cfg(8).order_cap(2)).unwrap();
    assert_eq!(lists(&pool), vec![vec![], vec![0, 2, 4, 6]]);
    pool.check().unwrap();
}

#[test]
fn check_finds_nonzero_free_bytes_past_intrusive_links() {
    // The first byte after the 16 bytes of links and the last byte of the block.
    for (at, bytes) in [
        (16, [1, 0, 0, 0, 0, 0, 0, 0]),
        (4 * PS - 8, [0, 0, 0, 0, 0, 0, 0, 1]),
    ] {
        let mut mem = Mem::new(4);
        let mut pool = mem.intrusive(cfg(4)).unwrap();
        pool.check().unwrap();
        let (arena, _) = pool.parts_mut();
        arena.write8(at, bytes);
        assert_eq!(broken(pool.check()), Some((K::NotZero, 0)), "byte {at}");
    }
    // Bytes 0..8 of a free head that shares its list are its links: ListBroken or
    // LinkOutOfRange, not NotZero (two blocks of order 2, at pages 0 and 4).
    let mut mem = Mem::new(8);
    let mut pool = mem.intrusive(cfg(8).order_cap(3)).unwrap();
    pool.parts_mut()
        .0
        .write8(0, [9, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
    assert_eq!(broken(pool.check()), Some((K::LinkOutOfRange, 0)));
}

#[test]
fn a_block_alone_on_its_list_keeps_no_link() {
    // One free block of order 2: its first bytes are not the pool's, so whatever is written
    // there is neither read nor reported, and it is handed out as it was left.
    let mut mem = Mem::new(4);
    let mut pool = mem.intrusive(cfg(4).zero(ZeroPolicy::Never)).unwrap();
    pool.parts_mut()
        .0
        .write8(0, [9, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
    pool.check().unwrap();
    assert_eq!(pool.alloc(2), Ok(0));
    assert_eq!(
        pool.parts().0.read8(0),
        [9, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]
    );
    pool.put(0).unwrap();
    pool.check().unwrap();
    // Split: each upper half joins an empty list alone, and its first bytes stay as they
    // were; the free merges them back, and the block is alone on its list again.
    let before = [1, 2].map(|half| pool.parts().0.read8(half * PS));
    let pfn = pool.alloc(0).unwrap();
    assert_eq!(pfn, 0);
    assert_eq!([1, 2].map(|half| pool.parts().0.read8(half * PS)), before);
    pool.check().unwrap();
    pool.put(pfn).unwrap();
    assert_eq!(lists(&pool), vec![vec![], vec![], vec![0]]);
    pool.check().unwrap();
}

#[test]
fn a_list_tail_keeps_its_link_in_the_ends() {
    // Two order-2 blocks at pages 0 and 4 on list 2: page 0's link is in its page, the tail's
    // (page 4's) in the list's ends, its page untouched. Taking the first clears its link and
    // makes page 4 alone; taking that writes nothing either; freeing both back writes page 0's
    // link only.
    let mut mem = Mem::new(8);
    let mut pool = mem
        .intrusive(cfg(8).order_cap(3).zero(ZeroPolicy::Never))
        .unwrap();
    let untouched = pool.parts().0.read8(4 * PS);
    let link =
        |pool: &Pool<'_, Intrusive>, page: usize| Intrusive.load(pool.parts().0, PS, page as u32);
    let first = Link {
        prev: Link::NIL,
        next: 4,
    };
    assert_eq!(link(&pool, 0), first);
    assert_eq!(pool.free.ends().tail_prev[2], 0);
    assert_eq!(pool.parts().0.read8(4 * PS), untouched);
    assert_eq!(pool.alloc(2), Ok(0));
    assert_eq!(pool.parts().0.read8(0), [0; 8]);
    assert_eq!(pool.parts().0.read8(4 * PS), untouched);
    pool.check().unwrap();
    assert_eq!(pool.alloc(2), Ok(4));
    assert_eq!(pool.parts().0.read8(4 * PS), untouched);
    pool.put(0).unwrap();
    pool.put(4).unwrap();
    assert_eq!(link(&pool, 0), first);
    assert_eq!(pool.parts().0.read8(4 * PS), untouched);
    pool.check().unwrap();
    // A tail's `prev` in the ends is checked as a link in a page is.
    pool.free.ends_mut().tail_prev[2] = 8;
    assert_eq!(broken(pool.check()), Some((K::LinkOutOfRange, 4)));
    pool.free.ends_mut().tail_prev[2] = 4;
    assert_eq!(broken(pool.check()), Some((K::ListBroken, 4)));
}

/// A pool of `LONG` single pages (orders capped at 1) with intrusive links: one list, longer
/// than the length from which its links hint the block two places on, the pages on it in pfn
/// order.
const LONG: usize = 2048;

fn long_list(mem: &mut Mem) -> Pool<'_, Intrusive> {
    mem.intrusive(cfg(LONG).order_cap(1).zero(ZeroPolicy::Never))
        .unwrap()
}

#[test]
fn each_link_of_a_long_list_hints_the_block_two_places_on() {
    // Appended in pfn order as the pool was built: from the append that found 1024 blocks on
    // the list on, each wrote into the link of the block two places before the one it
    // appended.
    let mut mem = Mem::new(LONG);
    let mut pool = long_list(&mut mem);
    let ahead = |pool: &Pool<'_, Intrusive>, page: u32| Intrusive.ahead(pool.parts().0, PS, page);
    // Appended while the list was shorter: no hint (the memory's own bytes).
    assert_ne!(ahead(&pool, 1021), 1023);
    assert_eq!((ahead(&pool, 1022), ahead(&pool, 2045)), (1024, 2047));
    // Taken, a block's 16 bytes are cleared: link, hint and the zeros after.
    for want in 0..=1022 {
        assert_eq!(pool.alloc(0), Ok(want));
    }
    let page = 1022 * PS;
    assert_eq!(
        [page, page + 8].map(|at| pool.parts().0.read8(at)),
        [[0; 8]; 2]
    );
    // Put back behind the tail of a list still 1025 blocks long: the block two places after
    // the one before the tail.
    pool.put(1022).unwrap();
    assert_eq!(ahead(&pool, 2046), 1022);
    pool.check().unwrap();
}

#[test]
fn a_long_list_chases_its_hints_whatever_they_hold() {
    // Every hint scribbled, each a different kind of nonsense, and the pages still come out
    // in list order, the pool sound after each.
    let n = LONG;
    let mut mem = Mem::new(n);
    let mut pool = long_list(&mut mem);
    for page in 0..n {
        let bad = [u32::MAX, n as u32, page as u32, 7][page % 4];
        let mut scribbled = [0u8; 8];
        scribbled[..4].copy_from_slice(&bad.to_le_bytes());
        pool.parts_mut().0.write8(page * PS + 8, scribbled);
    }
    pool.check().unwrap();
    for want in 0..n as u64 {
        assert_eq!(pool.alloc(0), Ok(want));
    }
    assert_eq!(pool.alloc(0), Err(Error::OutOfMemory { order: 0 }));
    for pfn in 0..n as u64 {
        pool.put(pfn).unwrap();
    }
    pool.check().unwrap();
}

#[test]
fn error_texts() {
    let cases: [(Error, &str); 7] = [
        (Error::PfnOutOfRange { pfn: 3 }, "pfn 3 is outside the pool"),
        (Error::NotHeld { pfn: 4 }, "pfn 4 is not held (refcount 0)"),
        (
            Error::RefcountOverflow { pfn: 5 },
            "pfn 5 refcount would overflow 65535",
        ),
        (
            Error::InvalidOrder {
                order: 9,
                max_order: 4,
            },
            "order 9 is invalid: this pool has orders 0 to 3",
        ),
        (
            Error::OutOfMemory { order: 2 },
            "out of memory: no free block of order >= 2",
        ),
        (
            GeometryError::NoPages.into(),
            "bad geometry: nr_pages must be at least 1",
        ),
        (
            Corruption {
                kind: K::Count,
                pfn: 7,
            }
            .into(),
            "corrupted pool: free counts disagree with the free lists (at pfn 7)",
        ),
    ];
    for (e, text) in cases {
        assert_eq!(e.to_string(), text);
    }
    let geometry = [
        GeometryError::PageSize { page_size: 3 },
        GeometryError::NoPages,
        GeometryError::TooManyPages { nr_pages: 1 },
        GeometryError::PfnOverflow,
        GeometryError::Reserved {
            reserved_pages: 2,
            nr_pages: 1,
        },
        GeometryError::OrderCap,
        GeometryError::ArenaTooSmall { need: 2, have: 1 },
        GeometryError::MetadataTooSmall { need: 2, have: 1 },
        GeometryError::MetadataMisaligned,
        GeometryError::LinksTooSmall { need: 2, have: 1 },
        GeometryError::LinksMisaligned,
    ];
    let texts: Vec<_> = geometry.iter().map(|g| g.to_string()).collect();
    assert_eq!(
        texts[0],
        "page_size 3 is not a power of two from 64 to 1073741824"
    );
    assert_eq!(texts[6], "arena holds 1 bytes, needs 2");
    assert!(texts.iter().all(|t| !t.is_empty()));
    let kinds = [
        K::LinkOutOfRange,
        K::ListBroken,
        K::NotFreeHead,
        K::BadHead,
        K::Orphan,
        K::BadTail,
        K::Unlisted,
        K::Uncoalesced,
        K::Count,
        K::NotZero,
    ];
    let mut seen: Vec<_> = kinds
        .iter()
        .map(|&kind| Corruption { kind, pfn: 1 }.to_string())
        .collect();
    assert!(seen
        .iter()
        .all(|t| t.ends_with("(at pfn 1)") && t.len() > 12));
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), kinds.len());
    assert_eq!(
        Error::from(GeometryError::OrderCap),
        Error::Geometry(GeometryError::OrderCap)
    );
}

#[test]
fn sizes_and_limits() {
    assert_eq!(MAX_PAGES, u32::MAX as usize - 1);
    assert_eq!((meta_bytes(3), link_bytes(5)), (12, 40));
    assert_eq!(
        (meta_bytes(usize::MAX), link_bytes(usize::MAX)),
        (usize::MAX, usize::MAX)
    );
    assert_eq!(carve_bytes(3, 64, true), 64);
    assert_eq!(carve_bytes(32, 64, false), 128);
    assert_eq!(carve_bytes(32, 64, true), 384);
    assert_eq!(carve_bytes(usize::MAX / 4, 64, true), usize::MAX);
    let mut bytes = [0u8; 3];
    let arena = Arena::new(&mut bytes);
    assert_eq!((arena.len(), arena.is_empty()), (3, false));
    let arena = Arena::new(&mut bytes[..0]);
    assert_eq!((arena.len(), arena.is_empty()), (0, true));
    let g = cfg(5).base_pfn(10).geometry().unwrap();
    assert_eq!(
        (g.arena_bytes(), g.index(14), g.index(15), g.pfn(2)),
        (Some(5 * PS), Some(4), None, 12)
    );
}

#[test]
fn arena_ranges_stay_inside() {
    let mut bytes = [7u8; 16];
    let mut arena = Arena::new(&mut bytes);
    assert_eq!(arena.read8(8), [7; 8]);
    assert_eq!(arena.read8(9), [0; 8]); // would end past the arena
    arena.write8(9, [1; 8]); // ignored
    arena.zero(10, 7); // ignored
    assert!(!arena.is_zero(0, 17));
    arena.zero(8, 8);
    assert!(arena.is_zero(8, 8) && !arena.is_zero(7, 2));
    arena.write8(0, [1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(arena.read8(0), [1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(bytes, [1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0]);
}

#[cfg(not(loom))]
#[test]
fn locked_pool_accessors() {
    let mut mem = Mem::new(4);
    let mut locked: LockedPool<'_, Intrusive> = LockedPool::new(mem.intrusive(cfg(4)).unwrap());
    assert_eq!(locked.get_mut().alloc(1), Ok(0));
    assert_eq!(locked.free_pages(), 2);
    assert_eq!(locked.split(0), Ok(()));
    assert_eq!(locked.get(1), Ok(()));
    assert_eq!(locked.put(1), Ok(()));
    assert_eq!(locked.put(1), Ok(()));
    assert_eq!(locked.put(1), Err(Error::NotHeld { pfn: 1 }));
    assert_eq!(locked.get(9), Err(Error::PfnOutOfRange { pfn: 9 }));
    assert_eq!(locked.split(9), Err(Error::PfnOutOfRange { pfn: 9 }));
    assert_eq!(locked.alloc(2), Err(Error::OutOfMemory { order: 2 }));
    assert_eq!(locked.alloc(1), Ok(2));
    assert_eq!(locked.with(|p| p.refcount(2)), Ok(1));
    locked.check().unwrap();
    // A stray write into a free page shows through the lock too.
    locked.with(|p| p.parts_mut().0.write8(PS + 16, [1; 8]));
    assert_eq!(locked.check().map_err(|c| c.kind), Err(K::NotZero));
    let pool = locked.into_inner();
    assert_eq!((pool.free_pages(), pool.refcount(0)), (1, Ok(1)));
}

/// Mutual exclusion, without a clock: whoever holds the lock marks the critical section
/// occupied and yields inside it, so a second thread let in finds it occupied. First the main
/// thread holds the lock while the others, all started, try to take it; then they take turns.
#[cfg(not(loom))]
#[test]
fn spinlock_excludes() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    const THREADS: usize = 4;
    const ROUNDS: usize = 500;
    let lock = SpinLock::new();
    let (inside, overlaps, entries, started) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    let critical = || {
        if inside.fetch_add(1, SeqCst) != 0 {
            overlaps.fetch_add(1, SeqCst);
        }
        entries.fetch_add(1, SeqCst);
        std::thread::yield_now();
        inside.fetch_sub(1, SeqCst);
    };
    lock.lock();
    inside.fetch_add(1, SeqCst);
    let entered_while_held = std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                started.fetch_add(1, SeqCst);
                for _ in 0..ROUNDS {
                    lock.lock();
                    critical();
                    // SAFETY: this thread took the lock just above.
                    unsafe { lock.unlock() };
                }
            });
        }
        while started.load(SeqCst) < THREADS {
            std::thread::yield_now();
        }
        for _ in 0..1000 {
            std::thread::yield_now(); // the others are at the held lock now
        }
        let entered = entries.load(SeqCst);
        inside.fetch_sub(1, SeqCst);
        // SAFETY: taken by this thread before the scope.
        unsafe { lock.unlock() };
        entered
    });
    assert_eq!(entered_while_held, 0, "entered a held lock");
    assert_eq!(overlaps.load(SeqCst), 0, "two holders at once");
    assert_eq!(entries.load(SeqCst), THREADS * ROUNDS);
    assert_eq!(inside.load(SeqCst), 0);
}

#[test]
fn alloc_never_hands_out_a_held_page_that_scribbled_links_listed() {
    // Pages 0 and 2 free on list 0, 1 and 3 held. Stray writes make 0's link name held page 3 as
    // its successor (and 3's first bytes, the holder's data, point back): taking 0 off the list
    // makes 3 the list's head. The next allocation must refuse it, changing nothing.
    let mut mem = Mem::new(4);
    let mut pool = mem.intrusive(cfg(4).zero(ZeroPolicy::Never)).unwrap();
    for _ in 0..4 {
        pool.alloc(0).unwrap();
    }
    pool.put(0).unwrap();
    pool.put(2).unwrap();
    assert_eq!(lists(&pool)[0], [0, 2]);
    let (arena, _) = pool.parts_mut();
    Intrusive.store(
        arena,
        PS,
        0,
        Link {
            prev: Link::NIL,
            next: 3,
        },
    );
    Intrusive.store(
        arena,
        PS,
        3,
        Link {
            prev: 0,
            next: Link::NIL,
        },
    );
    assert_eq!(pool.alloc(0), Ok(0));
    let before = snapshot(&pool);
    let refused = Error::Corrupted(Corruption {
        kind: K::NotFreeHead,
        pfn: 3,
    });
    assert_eq!(pool.alloc(0), Err(refused));
    assert_eq!(snapshot(&pool), before);
    assert_eq!(pool.refcount(3), Ok(1));
    assert!(pool.check().is_err());
}

#[test]
fn side_table_from_bytes_needs_exactly_link_bytes() {
    let mut words = [0u32; 8]; // 32 bytes, 4-byte aligned
                               // SAFETY: u8 has no alignment or validity requirements; `words` outlives the slice.
    let bytes: &mut [u8] =
        unsafe { core::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), 32) };
    assert!(SideTable::from_bytes(&mut bytes[..32], 4).is_ok());
    assert_eq!(
        SideTable::from_bytes(&mut bytes[..31], 4).err(),
        Some(GeometryError::LinksTooSmall { need: 32, have: 31 })
    );
    assert_eq!(
        SideTable::from_bytes(&mut bytes[1..], 3).err(),
        Some(GeometryError::LinksMisaligned)
    );
}

#[test]
fn links_must_name_a_page_of_the_pool() {
    // Two free blocks of order 2 at pfns 8 and 12 (pages 0 and 4) on one list, intrusive links
    // in their first bytes: page 0's is (NIL, 4).
    for (link, ok) in [
        (
            Link {
                prev: Link::NIL,
                next: 8,
            },
            false,
        ), // one past the last page
        (
            Link {
                prev: 8,
                next: Link::NIL,
            },
            false,
        ),
        (
            Link {
                prev: Link::NIL - 1,
                next: Link::NIL,
            },
            false,
        ),
        (
            Link {
                prev: Link::NIL,
                next: Link::NIL,
            },
            true,
        ), // in range, but the list holds two blocks
        (
            Link {
                prev: 3,
                next: Link::NIL,
            },
            true,
        ),
    ] {
        let mut mem = Mem::new(8);
        let mut pool = mem.intrusive(cfg(8).order_cap(3).base_pfn(8)).unwrap();
        Intrusive.store(pool.parts_mut().0, PS, 0, link);
        let kind = if ok { K::ListBroken } else { K::LinkOutOfRange };
        assert_eq!(broken(pool.check()), Some((kind, 8)), "{link:?}");
        if !ok {
            let err = Error::Corrupted(Corruption { kind, pfn: 8 });
            let before = snapshot(&pool);
            assert_eq!(pool.alloc(0), Err(err), "{link:?}");
            assert_eq!(snapshot(&pool), before);
        }
    }
}

#[test]
fn alloc_trusts_no_mask_bit_without_a_list_head() {
    let mut mem = Mem::new(8);
    let mut pool = mem.side(cfg(8).base_pfn(8)).unwrap();
    pool.free.ends_mut().mask |= 1; // list 0 is empty
    let before = snapshot(&pool);
    let count = Error::Corrupted(Corruption {
        kind: K::Count,
        pfn: 8,
    });
    assert_eq!(pool.alloc(0), Err(count));
    assert_eq!(snapshot(&pool), before);
}

/// An allocation looks at its own order's list first, as upstream does, and reads the mask only
/// when that list is empty: a listed head whose mask bit is clear is still taken (after the
/// checks of a head), and `check` reports the mask.
#[test]
fn alloc_looks_at_its_own_list_before_the_mask() {
    let mut mem = Mem::new(8);
    let mut pool = mem.side(cfg(8).base_pfn(8)).unwrap();
    let pfn = pool.alloc(0).unwrap();
    let buddy = pool.alloc(0).unwrap();
    pool.put(pfn).unwrap(); // list 0: [pfn], its buddy held
    assert_eq!(lists(&pool)[0], vec![pfn]);
    pool.free.ends_mut().mask &= !1;
    assert_eq!(broken(pool.check()), Some((K::Count, 8)));
    assert_eq!(pool.alloc(0), Ok(pfn));
    pool.put(pfn).unwrap();
    pool.put(buddy).unwrap();
    pool.check().unwrap();
}

/// Free lists over a side table, driven directly: list 0 holds pages 0, 1, 2 of pfns 8..12.
fn three_listed(links: &mut [Link]) -> crate::store::FreeLists<SideTable<'_>> {
    let mut lists = crate::store::FreeLists::new(SideTable::new(links), 4, 8, PS);
    let mut bytes = [0u8; 4 * PS];
    let mut arena = Arena::new(&mut bytes);
    for idx in 0..3 {
        lists.append(&mut arena, idx, 0).unwrap();
    }
    lists
}

/// Unlinks `idx` from list `order` as a merging free does: planned, then unlinked.
fn remove(
    lists: &mut crate::store::FreeLists<SideTable<'_>>,
    arena: &mut Arena<'_>,
    idx: u32,
    order: u32,
) -> Result<(), Corruption> {
    let u = lists.plan_remove(arena, idx, order)?;
    if lists.unlink(arena, order, u) {
        lists.remask(0, 1 << order);
    }
    Ok(())
}

#[test]
fn remove_checks_both_neighbours_and_the_length() {
    let mut bytes = [0u8; 4 * PS];
    let mut arena = Arena::new(&mut bytes);
    let broken_at = |pfn| {
        Err(Corruption {
            kind: K::ListBroken,
            pfn,
        })
    };
    // The successor (the tail, whose link the ends keep) does not point back.
    let mut links = [Link::EMPTY; 4];
    let mut lists = three_listed(&mut links);
    lists.ends_mut().tail_prev[0] = 0;
    assert_eq!(remove(&mut lists, &mut arena, 1, 0), broken_at(9));
    assert_eq!(
        (lists.first(0), lists.tail(0), lists.ends().len[0]),
        (Ok(Some(0)), 2, 3)
    );
    // The predecessor does not point forward.
    let mut links = [Link::EMPTY; 4];
    let mut lists = three_listed(&mut links);
    lists.links.store(
        &mut arena,
        PS,
        0,
        Link {
            prev: Link::NIL,
            next: 2,
        },
    );
    assert_eq!(remove(&mut lists, &mut arena, 1, 0), broken_at(9));
    assert_eq!(
        lists.link_in(&arena, 2, 0),
        Ok(Link {
            prev: 1,
            next: Link::NIL
        })
    );
    // Links agree but the list claims to be empty.
    let mut links = [Link::EMPTY; 4];
    let mut lists = three_listed(&mut links);
    lists.ends_mut().len[0] = 0;
    assert_eq!(remove(&mut lists, &mut arena, 0, 0), broken_at(8));
    lists.ends_mut().len[0] = 3;
    assert_eq!(remove(&mut lists, &mut arena, 1, 0), Ok(()));
    assert_eq!(
        lists
            .iter(&arena, 0)
            .map(|r| r.unwrap().0)
            .collect::<Vec<_>>(),
        [0, 2]
    );
}
