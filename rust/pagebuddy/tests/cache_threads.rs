//! A `CachedPool` hammered from several std threads: alloc of cached and uncached orders, put
//! through the thread's own slot and through others, blocks handed from thread to thread and
//! freed by the receiver, get, split, drains, calls that must fail; the pool is small, so caches
//! run dry and allocations drain the slots before they fail. Each holder fills its blocks with a
//! tag and checks it before every put, so a page handed to two holders at once, or a write by
//! the allocator into a held page, fails the test. Afterwards: free + held + cached = total,
//! every held page in exactly one block with the refcount its holder counted; after
//! `drain_all()`, `check()` passes and the pool holds every page that no thread holds.

use std::collections::BTreeSet;
use std::ptr::NonNull;
use std::sync::{Barrier, Mutex};

use pagebuddy::{
    cache_blocks, Arena, CacheConfig, CacheSlot, CachedPool, Config, Error, Intrusive, Link,
    LinkStore, LockedPool, PageMeta, PageRef, Pool, RawLock, SideTable, SpinLock, ZeroPolicy,
};

const PS: usize = 64;
const NR: usize = 203;
const BASE: u64 = 37;
const RESERVED: usize = 3;
const THREADS: usize = 4;
const STEPS: usize = 20_000;

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

#[derive(Clone, Copy, Debug)]
struct Held {
    pfn: u64,
    pages: usize,
    refs: u16,
    tag: u8,
}

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
        // SAFETY: a block the caller holds, read while no one else may write it.
        let bytes = unsafe { std::slice::from_raw_parts(self.page(pfn), pages * PS) };
        bytes.iter().all(|&b| b == byte)
    }
}

struct Shared<'p, 'a, L: LinkStore, R: RawLock> {
    pool: &'p CachedPool<'a, L, R>,
    mem: Mem,
    zero: ZeroPolicy,
    start: Barrier,
    /// Blocks in transit from one thread to another (with all their references).
    mailbox: Mutex<Vec<Held>>,
}

fn worker<L: LinkStore, R: RawLock>(sh: &Shared<'_, '_, L, R>, id: usize) -> Vec<Held> {
    let (pool, mem) = (sh.pool, sh.mem);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((id as u64 + 1) * 0x1234_5678_9ABC_DEF1));
    let mut held: Vec<Held> = Vec::new();
    let mut tag = 0u8;
    let cpu = id;
    sh.start.wait();
    for _ in 0..STEPS {
        match rng.below(16) {
            0..=4 => {
                let order = [0, 0, 0, 1, 2, 3, 4][rng.below(7)];
                match pool.alloc(cpu, order) {
                    Ok(pfn) => {
                        let pages = 1 << order;
                        assert_eq!(pfn % pages as u64, 0, "misaligned block");
                        if sh.zero != ZeroPolicy::Never {
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
            5..=8 if !held.is_empty() => {
                let i = rng.below(held.len());
                let h = held[i];
                assert!(mem.all(h.pfn, h.pages, h.tag), "someone wrote into {h:?}");
                // Mostly through the own slot, sometimes through another one.
                let through = if rng.below(4) == 0 { rng.below(8) } else { cpu };
                pool.put(through, h.pfn).unwrap();
                if h.refs > 1 {
                    held[i].refs -= 1;
                } else {
                    held.swap_remove(i);
                }
            }
            9 if !held.is_empty() => {
                let i = rng.below(held.len());
                pool.get(held[i].pfn).unwrap();
                held[i].refs += 1;
            }
            10 if !held.is_empty() => {
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
            11 if !held.is_empty() => {
                let h = held.swap_remove(rng.below(held.len()));
                sh.mailbox.lock().unwrap().push(h);
            }
            12 => {
                let got = sh.mailbox.lock().unwrap().pop();
                if let Some(h) = got {
                    assert!(mem.all(h.pfn, h.pages, h.tag), "someone wrote into {h:?}");
                    held.push(h);
                }
            }
            13 => {
                if rng.below(8) == 0 {
                    pool.drain(cpu).unwrap();
                }
                let pfn = BASE + (NR + rng.below(5)) as u64;
                assert_eq!(pool.put(cpu, pfn), Err(Error::PfnOutOfRange { pfn }));
                assert_eq!(
                    pool.alloc(cpu, 40),
                    Err(Error::InvalidOrder {
                        order: 40,
                        max_order: 8
                    })
                );
            }
            14 if !held.is_empty() => {
                let h = held[rng.below(held.len())];
                if h.pages > 1 {
                    let tail = h.pfn + 1 + rng.below(h.pages - 1) as u64;
                    assert_eq!(pool.get(tail), Err(Error::NotHeld { pfn: tail }));
                    assert_eq!(pool.put(cpu, tail), Err(Error::NotHeld { pfn: tail }));
                }
            }
            _ => {
                for h in &held {
                    assert!(mem.all(h.pfn, h.pages, h.tag), "someone wrote into {h:?}");
                }
            }
        }
    }
    let keep = held.split_off(held.len() / 2);
    for h in held {
        for _ in 0..h.refs {
            pool.put(cpu, h.pfn).unwrap();
        }
    }
    keep
}

fn hammer<L: LinkStore, R: RawLock + Sync>(
    pool: Pool<'_, L>,
    mem: Mem,
    zero: ZeroPolicy,
    cpus: usize,
) where
    for<'x> Pool<'x, L>: Send,
{
    let config = CacheConfig::new().batch(4).high(8);
    let mut slots: Vec<CacheSlot<R>> = (0..cpus).map(|_| CacheSlot::new()).collect();
    let mut blocks = vec![0u32; cache_blocks(cpus, &config)];
    let mut refs: Vec<PageRef> = (0..NR).map(|_| PageRef::new()).collect();
    let pool: CachedPool<'_, L, R> = CachedPool::new(
        LockedPool::new(pool),
        &mut slots,
        &mut blocks,
        &mut refs,
        config,
    )
    .unwrap();

    let sh = Shared {
        pool: &pool,
        mem,
        zero,
        start: Barrier::new(THREADS),
        mailbox: Mutex::new(Vec::new()),
    };
    let mut kept: Vec<Held> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|id| {
                let sh = &sh;
                s.spawn(move || worker(sh, id))
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    kept.extend(sh.mailbox.into_inner().unwrap());

    // Conservation before draining: free in the pool + cached + held = every unreserved page.
    let held_pages: usize = kept.iter().map(|h| h.pages).sum();
    let cached: u32 = (0..cpus).map(|s| pool.cached_pages(s)).sum();
    let core_free = pool.with_core(|p| p.free_pages());
    assert_eq!(
        core_free as usize + cached as usize + held_pages,
        NR - RESERVED
    );
    assert_eq!(pool.free_pages(), core_free + cached);
    pool.check().unwrap();

    pool.drain_all().unwrap();
    pool.check().unwrap();
    assert_eq!((0..cpus).map(|s| pool.cached_pages(s)).sum::<u32>(), 0);
    assert_eq!(
        pool.with_core(|p| p.free_pages()) as usize,
        NR - RESERVED - held_pages
    );
    let mut pages = BTreeSet::new();
    for h in &kept {
        for p in h.pfn..h.pfn + h.pages as u64 {
            assert!(pages.insert(p), "page {p} held twice");
        }
        assert!(mem.all(h.pfn, h.pages, h.tag), "someone wrote into {h:?}");
        assert_eq!(pool.refcount(h.pfn), Ok(h.refs), "{h:?}");
        assert_eq!(pool.order(h.pfn), Ok(Some(h.pages.trailing_zeros())));
    }
    for p in BASE..BASE + RESERVED as u64 {
        assert!(!pages.contains(&p), "reserved page {p} handed out");
        assert_eq!(pool.refcount(p), Ok(1));
    }
    for h in &kept {
        for _ in 0..h.refs {
            pool.put(0, h.pfn).unwrap();
        }
    }
    pool.drain_all().unwrap();
    pool.check().unwrap();
    assert_eq!(pool.free_pages() as usize, NR - RESERVED);
}

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

fn config(zero: ZeroPolicy) -> Config {
    Config::new(NR)
        .page_size(PS)
        .base_pfn(BASE)
        .reserved_pages(RESERVED)
        .zero(zero)
}

fn side_table<R: RawLock + Sync>(zero: ZeroPolicy, cpus: usize) {
    let mut s = Storage::new();
    let (arena, mem) = s.arena();
    let pool = Pool::new(
        arena,
        &mut s.meta,
        SideTable::new(&mut s.links),
        config(zero),
    );
    hammer::<_, R>(pool.unwrap(), mem, zero, cpus);
}

fn intrusive<R: RawLock + Sync>(zero: ZeroPolicy, cpus: usize) {
    let mut s = Storage::new();
    let (arena, mem) = s.arena();
    let pool = Pool::new(arena, &mut s.meta, Intrusive, config(zero));
    hammer::<_, R>(pool.unwrap(), mem, zero, cpus);
}

#[test]
fn own_slots_side_table() {
    for zero in [ZeroPolicy::OnFree, ZeroPolicy::OnAlloc, ZeroPolicy::Never] {
        side_table::<SpinLock>(zero, THREADS);
    }
}

#[test]
fn own_slots_intrusive() {
    for zero in [ZeroPolicy::OnFree, ZeroPolicy::OnAlloc, ZeroPolicy::Never] {
        intrusive::<SpinLock>(zero, THREADS);
    }
}

#[test]
fn shared_slots() {
    // Two slots for four threads: slot locks contended.
    side_table::<SpinLock>(ZeroPolicy::OnFree, 2);
    intrusive::<SpinLock>(ZeroPolicy::OnAlloc, 1);
}

#[cfg(feature = "std")]
#[test]
fn std_lock() {
    side_table::<pagebuddy::StdLock>(ZeroPolicy::OnFree, THREADS);
    intrusive::<pagebuddy::StdLock>(ZeroPolicy::Never, 2);
}
