//! A `LockedPool` hammered from several std threads with mixed operations (alloc of every order,
//! put, get, split, erroneous calls), then `check()` and exact accounting: the free page count is
//! the pool's size less what the threads still hold, every held block is distinct, its refcount
//! is what its holder counted and its bytes are what its holder wrote (so no page was ever handed
//! to two holders, and the allocator never wrote into a held page).

use std::collections::BTreeSet;
use std::ptr::NonNull;
use std::sync::Barrier;

use pagebuddy::{
    Arena, Config, Error, Intrusive, Link, LinkStore, LockedPool, PageMeta, Pool, RawLock,
    SideTable, SpinLock, ZeroPolicy,
};

const PS: usize = 64;
const NR: usize = 203;
const BASE: u64 = 37;
const RESERVED: usize = 3;
const THREADS: usize = 4;
const STEPS: usize = 20_000;

/// xorshift64: deterministic per thread, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A block a thread holds: `pages` pages from `pfn`, `refs` references, filled with `tag`.
#[derive(Clone, Copy, Debug)]
struct Held {
    pfn: u64,
    pages: usize,
    refs: u16,
    tag: u8,
}

/// The arena's address, shared with the threads, which only touch pages they hold.
#[derive(Clone, Copy)]
struct Mem(usize);

impl Mem {
    fn page(self, pfn: u64) -> *mut u8 {
        (self.0 + (pfn - BASE) as usize * PS) as *mut u8
    }

    fn fill(self, h: &Held) {
        // SAFETY: the caller holds the block, so these bytes are its own; they lie in the arena.
        unsafe { self.page(h.pfn).write_bytes(h.tag, h.pages * PS) }
    }

    fn all(self, pfn: u64, pages: usize, byte: u8) -> bool {
        // SAFETY: as in `fill`: a block the caller holds, read while no one else may write it.
        let bytes = unsafe { std::slice::from_raw_parts(self.page(pfn), pages * PS) };
        bytes.iter().all(|&b| b == byte)
    }
}

fn worker<L: LinkStore, R: RawLock>(
    pool: &LockedPool<'_, L, R>,
    mem: Mem,
    zero: ZeroPolicy,
    id: usize,
    start: &Barrier,
) -> Vec<Held> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((id as u64 + 1) * 0x1234_5678_9ABC_DEF1));
    let mut held: Vec<Held> = Vec::new();
    let mut tag = 0u8;
    start.wait();
    for _ in 0..STEPS {
        match rng.below(12) {
            0..=3 => {
                let order = rng.below(5) as u32;
                match pool.alloc(order) {
                    Ok(pfn) => {
                        let pages = 1 << order;
                        assert_eq!(pfn % pages as u64, 0, "misaligned block");
                        if zero != ZeroPolicy::Never {
                            assert!(mem.all(pfn, pages, 0), "block {pfn} not zeroed");
                        }
                        tag = tag.wrapping_add(1) | 1;
                        let h = Held {
                            pfn,
                            pages,
                            refs: 1,
                            tag: (id as u8) << 5 | tag & 31,
                        };
                        mem.fill(&h);
                        held.push(h);
                    }
                    Err(e) => assert_eq!(e, Error::OutOfMemory { order }),
                }
            }
            4..=6 if !held.is_empty() => {
                let i = rng.below(held.len());
                let h = held[i];
                assert!(mem.all(h.pfn, h.pages, h.tag), "someone wrote into {h:?}");
                pool.put(h.pfn).unwrap();
                if h.refs > 1 {
                    held[i].refs -= 1;
                } else {
                    held.swap_remove(i);
                }
            }
            7 if !held.is_empty() => {
                let i = rng.below(held.len());
                pool.get(held[i].pfn).unwrap();
                held[i].refs += 1;
            }
            8 if !held.is_empty() => {
                let i = rng.below(held.len());
                let h = held[i];
                pool.split(h.pfn).unwrap();
                held[i].pages = 1;
                for t in 1..h.pages as u64 {
                    held.push(Held {
                        pfn: h.pfn + t,
                        pages: 1,
                        refs: 1,
                        tag: h.tag,
                    });
                }
            }
            9 => {
                let pfn = BASE + (NR + rng.below(5)) as u64;
                assert_eq!(pool.put(pfn), Err(Error::PfnOutOfRange { pfn }));
                assert_eq!(
                    pool.alloc(40),
                    Err(Error::InvalidOrder {
                        order: 40,
                        max_order: 8
                    })
                );
            }
            10 if !held.is_empty() => {
                // A tail of a held block of someone's, or a free page: never held by the caller.
                let h = held[rng.below(held.len())];
                if h.pages > 1 {
                    let tail = h.pfn + 1 + rng.below(h.pages - 1) as u64;
                    assert_eq!(pool.get(tail), Err(Error::NotHeld { pfn: tail }));
                }
            }
            _ => {
                for h in &held {
                    assert!(mem.all(h.pfn, h.pages, h.tag), "someone wrote into {h:?}");
                }
            }
        }
    }
    // Give back about half, keep the rest for the accounting.
    let keep = held.split_off(held.len() / 2);
    for h in held {
        for _ in 0..h.refs {
            pool.put(h.pfn).unwrap();
        }
    }
    keep
}

fn sorted_lists<L: LinkStore>(pool: &Pool<'_, L>) -> Vec<Vec<u64>> {
    (0..pool.max_order())
        .map(|k| {
            let mut l: Vec<u64> = pool.free_list(k).collect();
            l.sort_unstable();
            l
        })
        .collect()
}

fn config(zero: ZeroPolicy) -> Config {
    Config::new(NR)
        .page_size(PS)
        .base_pfn(BASE)
        .reserved_pages(RESERVED)
        .zero(zero)
}

fn hammer<'a, L: LinkStore, R: RawLock + Sync>(pool: Pool<'a, L>, mem: Mem, zero: ZeroPolicy)
where
    Pool<'a, L>: Send,
{
    let initial = sorted_lists(&pool);
    let pool: LockedPool<'_, L, R> = LockedPool::new(pool);
    assert_eq!(pool.with(|p| p.max_order()), 8);

    let start = Barrier::new(THREADS);
    let kept: Vec<Held> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|id| {
                let (pool, start) = (&pool, &start);
                s.spawn(move || worker(pool, mem, zero, id, start))
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });

    pool.check().unwrap();
    let held_pages: usize = kept.iter().map(|h| h.pages).sum();
    assert_eq!(pool.free_pages() as usize, NR - RESERVED - held_pages);
    let mut pages = BTreeSet::new();
    for h in &kept {
        for p in h.pfn..h.pfn + h.pages as u64 {
            assert!(pages.insert(p), "page {p} held twice");
        }
        assert!(mem.all(h.pfn, h.pages, h.tag), "someone wrote into {h:?}");
        pool.with(|p| {
            assert_eq!(p.refcount(h.pfn), Ok(h.refs), "{h:?}");
            assert_eq!(p.order(h.pfn), Ok(Some(h.pages.trailing_zeros())), "{h:?}");
            for t in h.pfn + 1..h.pfn + h.pages as u64 {
                assert_eq!((p.refcount(t), p.order(t)), (Ok(0), Ok(None)), "tail {t}");
            }
        });
    }
    for p in BASE..BASE + RESERVED as u64 {
        assert!(!pages.contains(&p), "reserved page {p} handed out");
        assert_eq!(pool.with(|pool| pool.refcount(p)), Ok(1));
    }
    // Everything back: the free blocks are the initial ones again (in some list order).
    for h in &kept {
        for _ in 0..h.refs {
            pool.put(h.pfn).unwrap();
        }
    }
    pool.check().unwrap();
    assert_eq!(pool.free_pages() as usize, NR - RESERVED);
    assert_eq!(pool.with(|p| sorted_lists(p)), initial);
}

/// Owned memory for one pool; the arena is reached through `Mem` while the pool lives.
struct Storage {
    arena: Vec<u8>,
    meta: Vec<PageMeta>,
    links: Vec<Link>,
}

impl Storage {
    fn new() -> Self {
        Storage {
            arena: vec![0x5A; NR * PS],
            meta: vec![PageMeta::INIT; NR],
            links: vec![Link::EMPTY; NR],
        }
    }

    fn arena(&mut self) -> (Arena<'static>, Mem) {
        let ptr = NonNull::new(self.arena.as_mut_ptr()).unwrap();
        // SAFETY: the Vec outlives every pool built on it in this file (each test drops its pool
        // before its Storage); besides the pool only the threads touch it, each only in blocks it
        // holds.
        (
            unsafe { Arena::from_raw(ptr, NR * PS) },
            Mem(ptr.as_ptr() as usize),
        )
    }
}

fn side_table<R: RawLock + Sync>(zero: ZeroPolicy) {
    let mut s = Storage::new();
    let (arena, mem) = s.arena();
    let pool = Pool::new(
        arena,
        &mut s.meta,
        SideTable::new(&mut s.links),
        config(zero),
    );
    hammer::<_, R>(pool.unwrap(), mem, zero);
}

fn intrusive<R: RawLock + Sync>(zero: ZeroPolicy) {
    let mut s = Storage::new();
    let (arena, mem) = s.arena();
    let pool = Pool::new(arena, &mut s.meta, Intrusive, config(zero));
    hammer::<_, R>(pool.unwrap(), mem, zero);
}

#[test]
fn spinlock_side_table() {
    for zero in [ZeroPolicy::OnFree, ZeroPolicy::OnAlloc, ZeroPolicy::Never] {
        side_table::<SpinLock>(zero);
    }
}

#[test]
fn spinlock_intrusive() {
    for zero in [ZeroPolicy::OnFree, ZeroPolicy::OnAlloc, ZeroPolicy::Never] {
        intrusive::<SpinLock>(zero);
    }
}

#[cfg(feature = "std")]
#[test]
fn std_lock_both_stores() {
    side_table::<pagebuddy::StdLock>(ZeroPolicy::OnFree);
    intrusive::<pagebuddy::StdLock>(ZeroPolicy::OnFree);
}
