//! Scribbling: an intrusive-store pool (free-list links inside the free pages) whose arena gets
//! arbitrary bytes written anywhere between operations: free pages, link slots, held pages.
//!
//! Required: no panic, no access outside the arena and the metadata (AddressSanitizer watches the
//! heap buffers), every operation returns. While every write so far landed in held pages (as a
//! user's writes do), the pool must also stay exactly consistent: `check()` passes and no call
//! reports corruption.
#![no_main]

use core::ptr::NonNull;

use libfuzzer_sys::fuzz_target;
use pagebuddy::{Arena, Config, Error, Intrusive, PageMeta, Pool, ZeroPolicy, NO_ORDER};

const PS: usize = 64;

/// Whether page `i` lies in a held block, by the pool's own metadata.
fn held(pool: &Pool<'_, Intrusive>, base: u64, i: usize) -> bool {
    (0..=i)
        .rev()
        .map(|h| (h, pool.page(base + h as u64).unwrap()))
        .find(|(_, m)| m.order != NO_ORDER)
        .is_some_and(|(h, m)| h + (1usize << m.order.min(31)) > i && m.refcount > 0)
}

/// The input, read a byte at a time; zeros once it runs out.
struct Input<'d>(core::slice::Iter<'d, u8>);

impl Input<'_> {
    fn next(&mut self) -> Option<u8> {
        self.0.next().copied()
    }

    fn byte(&mut self) -> u8 {
        self.next().unwrap_or(0)
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data.iter());
    let nr = 1 + input.byte() as usize % 64;
    let base = match input.byte() {
        b @ 0..=127 => u64::from(b),
        b => (1 << 40) + u64::from(b),
    };
    let reserved = input.byte() as usize % (nr + 1);
    let cap = match input.byte() % 12 {
        11 => 24,
        c => 1 + u32::from(c),
    };
    let zero = match input.byte() % 3 {
        0 => ZeroPolicy::OnFree,
        1 => ZeroPolicy::OnAlloc,
        _ => ZeroPolicy::Never,
    };
    let config = Config::new(nr)
        .page_size(PS)
        .base_pfn(base)
        .reserved_pages(reserved)
        .order_cap(cap)
        .zero(zero);

    let len = nr * PS;
    let mut arena: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
    let mut meta = vec![PageMeta::INIT; nr];
    let ptr = NonNull::new(arena.as_mut_ptr()).unwrap();
    // SAFETY: `arena` outlives the pool and is only accessed through `ptr`. Writing into free
    // pages breaks the pool's contract on purpose: the pool must survive it.
    let mut pool = Pool::new(
        unsafe { Arena::from_raw(ptr, len) },
        &mut meta,
        Intrusive,
        config,
    )
    .expect("valid geometry");
    let max_order = pool.max_order();
    let mut tainted = false;

    for _ in 0..512 {
        let Some(tag) = input.next() else { break };
        let (a, b) = (input.byte(), input.byte());
        let pfn = base.wrapping_add(u64::from(a) % (nr as u64 + 2));
        let result = match tag % 8 {
            0 | 1 => {
                let order = u32::from(b % 14);
                let r = pool.alloc(order);
                if let Ok(p) = r {
                    let i = p.wrapping_sub(base);
                    assert!(i < nr as u64, "alloc returned pfn {p} outside the pool");
                    assert!(p.trailing_zeros() >= order, "misaligned block {p}/{order}");
                    assert!(
                        i + (1 << order) <= nr as u64,
                        "block {p}/{order} runs past the end"
                    );
                }
                r.map(drop)
            }
            2 | 3 => pool.put(pfn),
            4 => pool.get(pfn),
            5 => pool.split(pfn),
            // Arbitrary bytes at an arbitrary offset: `b` of them, taken from the input.
            6 => {
                let off = (usize::from(a) << 8 | usize::from(b)) % len;
                let n = usize::from(input.byte() % 16 + 1).min(len - off);
                for j in 0..n {
                    let i = (off + j) / PS;
                    tainted |= !held(&pool, base, i);
                    let v = input.byte();
                    // SAFETY: off + j < len: inside the arena's allocation.
                    unsafe { ptr.as_ptr().add(off + j).write(v) };
                }
                Ok(())
            }
            // Eight bytes over a page's link slot: a plausible-looking link most of the time.
            _ => {
                let i = usize::from(a) % nr;
                tainted |= !held(&pool, base, i);
                let link = match b % 4 {
                    0 => [input.byte(), 0, 0, 0, input.byte(), 0, 0, 0],
                    1 => [input.byte() % nr as u8, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF],
                    2 => [0xFF, 0xFF, 0xFF, 0xFF, input.byte() % nr as u8, 0, 0, 0],
                    _ => core::array::from_fn(|_| input.byte()),
                };
                // SAFETY: page i starts at i * PS; 8 bytes fit in a page.
                unsafe { core::ptr::write_unaligned(ptr.as_ptr().add(i * PS).cast(), link) };
                Ok(())
            }
        };
        let checked = pool.check();
        if !tainted {
            assert!(
                !matches!(result, Err(Error::Corrupted(_))),
                "corruption reported without a stray write: {result:?}"
            );
            assert_eq!(checked, Ok(()), "check failed without a stray write");
        }
        // Every query is bounded and in range, whatever the links say.
        for k in 0..=max_order {
            let listed = pool.buddyinfo().get(k as usize).copied().unwrap_or(0);
            let mut walked = 0u32;
            for p in pool.free_list(k) {
                assert!(
                    p.wrapping_sub(base) < nr as u64,
                    "free list {k} names pfn {p}"
                );
                walked += 1;
            }
            assert!(
                walked <= listed,
                "free list {k}: walked {walked} of {listed}"
            );
            let _ = pool.capacity(k);
        }
        let _ = pool.free_pages();
    }
});
