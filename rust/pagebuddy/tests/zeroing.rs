//! Zeroing of large blocks, which takes the non-temporal path (64 KiB and up) on x86-64: freed
//! blocks of every size read as zeros, with the arena at any alignment, through the exact pool and
//! the cached one, and nothing outside the block is touched.

use std::ptr::NonNull;

use pagebuddy::{
    cache_blocks, Arena, CacheConfig, CacheSlot, CachedPool, Config, Intrusive, LockedPool,
    PageMeta, PageRef, Pool, ZeroPolicy,
};

const PS: usize = 4096;
const NR: usize = 64;

/// Runs `body` on a pool of `NR` 4 KiB pages whose arena starts `skew` bytes into a buffer
/// filled with 0xEE, then requires the bytes around the arena untouched.
fn with_arena(skew: usize, zero: ZeroPolicy, body: impl FnOnce(Pool<'_, Intrusive>, *mut u8)) {
    let mut buf = vec![0xEEu8; NR * PS + 64];
    let mut meta = vec![PageMeta::INIT; NR];
    let base = buf.as_mut_ptr().wrapping_add(skew);
    // SAFETY: [base, base + NR * PS) lies inside `buf`, which outlives the pool and is only
    // reached through the pool and through blocks the test holds.
    let arena = unsafe { Arena::from_raw(NonNull::new(base).unwrap(), NR * PS) };
    let pool = Pool::new(arena, &mut meta, Intrusive, Config::new(NR).zero(zero)).unwrap();
    body(pool, base);
    assert!(buf[..skew].iter().all(|&b| b == 0xEE), "before the arena");
    assert!(
        buf[skew + NR * PS..].iter().all(|&b| b == 0xEE),
        "after the arena"
    );
}

fn fill(base: *mut u8, pfn: u64, order: u32) {
    // SAFETY: the caller holds the block; it lies in the arena.
    unsafe { base.add(pfn as usize * PS).write_bytes(0x77, PS << order) }
}

fn is_zero(base: *mut u8, pfn: u64, order: u32) -> bool {
    // SAFETY: the block lies in the arena and is held by the caller or free and unused.
    let s = unsafe { std::slice::from_raw_parts(base.add(pfn as usize * PS), PS << order) };
    s.iter().all(|&b| b == 0)
}

#[test]
fn freed_blocks_of_every_size_are_zero() {
    for skew in [0, 1, 8, 15, 16, 33] {
        with_arena(skew, ZeroPolicy::OnFree, |mut pool, base| {
            pool.check().unwrap();
            for order in 0..=6 {
                let pfn = pool.alloc(order).unwrap();
                fill(base, pfn, order);
                pool.put(pfn).unwrap();
                pool.check().unwrap();
            }
        });
    }
}

#[test]
fn cached_pool_zeroes_large_blocks_too() {
    for zero in [ZeroPolicy::OnFree, ZeroPolicy::OnAlloc] {
        with_arena(3, zero, |pool, base| {
            let config = CacheConfig::new().batch(2).high(4);
            let mut slots = vec![CacheSlot::new()];
            let mut blocks = vec![0u32; cache_blocks(1, &config)];
            let mut refs: Vec<PageRef> = (0..NR).map(|_| PageRef::new()).collect();
            let pool = CachedPool::new(
                LockedPool::<_>::new(pool),
                &mut slots,
                &mut blocks,
                &mut refs,
                config,
            )
            .unwrap();
            for round in 0..3 {
                for order in [0, 3, 4, 5] {
                    let pfn = pool.alloc(0, order).unwrap();
                    assert!(
                        is_zero(base, pfn, order),
                        "{zero:?} order {order} round {round}"
                    );
                    fill(base, pfn, order);
                    pool.put(0, pfn).unwrap();
                }
            }
            pool.drain_all().unwrap();
            pool.check().unwrap();
        });
    }
}
