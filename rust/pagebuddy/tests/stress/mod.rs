//! What the multi-threaded stress tests share (`threads.rs` for `LockedPool`, `cache_threads.rs`
//! for `CachedPool`): the geometry, one pool's owned memory, the blocks a thread holds with the
//! tag it wrote into them, and the accounting checked once the threads are done.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::ptr::NonNull;

use pagebuddy::{Arena, Config, Error, Intrusive, Link, PageMeta, Pool, SideTable, ZeroPolicy};

pub const PS: usize = 64;
pub const NR: usize = 203;
pub const BASE: u64 = 37;
pub const RESERVED: usize = 3;
pub const THREADS: usize = 4;
pub const STEPS: usize = 20_000;
/// What an allocation of order 40 gets from a pool of this geometry (its top order is 8).
pub const TOO_LARGE: Error = Error::InvalidOrder {
    order: 40,
    max_order: 8,
};

/// xorshift64: deterministic per thread, no dependency.
pub struct Rng(pub u64);

impl Rng {
    /// Thread `id`'s stream.
    pub fn for_thread(id: usize) -> Self {
        Rng(0x9E37_79B9_7F4A_7C15 ^ ((id as u64 + 1) * 0x1234_5678_9ABC_DEF1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A block a thread holds: `pages` pages from `pfn`, `refs` references, filled with `tag`.
#[derive(Clone, Copy, Debug)]
pub struct Held {
    pub pfn: u64,
    pub pages: usize,
    pub refs: u16,
    pub tag: u8,
}

/// The arena's address, shared with the threads, which only touch pages they hold.
#[derive(Clone, Copy)]
pub struct Mem(usize);

impl Mem {
    fn page(self, pfn: u64) -> *mut u8 {
        (self.0 + (pfn - BASE) as usize * PS) as *mut u8
    }

    pub fn fill(self, h: &Held) {
        // SAFETY: the caller holds the block, so these bytes are its own; they lie in the arena.
        unsafe { self.page(h.pfn).write_bytes(h.tag, h.pages * PS) }
    }

    pub fn all(self, pfn: u64, pages: usize, byte: u8) -> bool {
        // SAFETY: as in `fill`: a block the caller holds, read while no one else may write it.
        let bytes = unsafe { std::slice::from_raw_parts(self.page(pfn), pages * PS) };
        bytes.iter().all(|&b| b == byte)
    }
}

/// One thread's side of the test: its random stream and the blocks it holds.
pub struct Holder {
    pub id: usize,
    pub rng: Rng,
    pub held: Vec<Held>,
    tag: u8,
}

impl Holder {
    pub fn new(id: usize) -> Self {
        Holder {
            id,
            rng: Rng::for_thread(id),
            held: Vec::new(),
            tag: 0,
        }
    }

    /// A random index into `held`, which must not be empty.
    pub fn pick(&mut self) -> usize {
        self.rng.below(self.held.len())
    }

    /// A fresh block of `order` at `pfn`: aligned, zeroed unless `zero` is `Never`; the holder
    /// fills it with a new tag of its own.
    pub fn took(&mut self, mem: Mem, zero: ZeroPolicy, pfn: u64, order: u32) {
        let pages = 1 << order;
        assert_eq!(pfn % pages as u64, 0, "misaligned block");
        if zero != ZeroPolicy::Never {
            assert!(mem.all(pfn, pages, 0), "block {pfn} not zeroed");
        }
        self.tag = self.tag.wrapping_add(1) | 1;
        let h = Held {
            pfn,
            pages,
            refs: 1,
            tag: (self.id as u8) << 5 | self.tag & 31,
        };
        mem.fill(&h);
        self.held.push(h);
    }

    /// One reference to a random held block given back through `put` (which may draw from the
    /// stream), after checking the block's bytes.
    pub fn put_one(&mut self, mem: Mem, put: impl FnOnce(&mut Rng, u64)) {
        let i = self.pick();
        let h = self.held[i];
        assert!(mem.all(h.pfn, h.pages, h.tag), "someone wrote into {h:?}");
        put(&mut self.rng, h.pfn);
        if h.refs > 1 {
            self.held[i].refs -= 1;
        } else {
            self.held.swap_remove(i);
        }
    }

    /// One more reference to a random held block, taken through `get`.
    pub fn get_one(&mut self, get: impl FnOnce(u64)) {
        let i = self.pick();
        get(self.held[i].pfn);
        self.held[i].refs += 1;
    }

    /// A random held block split through `split`: its pages are then held as order-0 blocks
    /// with the same tag.
    pub fn split_one(&mut self, split: impl FnOnce(u64)) {
        let i = self.pick();
        let h = self.held[i];
        split(h.pfn);
        self.held[i].pages = 1;
        for t in 1..h.pages as u64 {
            self.held.push(Held {
                pfn: h.pfn + t,
                pages: 1,
                refs: 1,
                tag: h.tag,
            });
        }
    }

    /// A pfn just past the pool's end.
    pub fn out_of_range_pfn(&mut self) -> u64 {
        BASE + (NR + self.rng.below(5)) as u64
    }

    /// A tail page of a random held block (none if the block is one page): never held by its
    /// own, since only heads are.
    pub fn tail(&mut self) -> Option<u64> {
        let i = self.pick();
        let h = self.held[i];
        (h.pages > 1).then(|| h.pfn + 1 + self.rng.below(h.pages - 1) as u64)
    }

    /// Every held block still bears its holder's tag.
    pub fn check_all(&self, mem: Mem) {
        for h in &self.held {
            assert!(mem.all(h.pfn, h.pages, h.tag), "someone wrote into {h:?}");
        }
    }

    /// Gives back about half of the blocks (every reference, through `put`); returns the rest.
    pub fn give_back_half(mut self, mut put: impl FnMut(u64)) -> Vec<Held> {
        let keep = self.held.split_off(self.held.len() / 2);
        for h in self.held {
            for _ in 0..h.refs {
                put(h.pfn);
            }
        }
        keep
    }
}

/// After the threads: every page of `kept` is held once and bears its holder's tag, `block`
/// checks each block against the pool, and no reserved page was handed out (`refcount` of each
/// is 1).
pub fn check_kept(
    kept: &[Held],
    mem: Mem,
    block: impl Fn(&Held),
    refcount: impl Fn(u64) -> Result<u16, Error>,
) {
    let mut pages = BTreeSet::new();
    for h in kept {
        for p in h.pfn..h.pfn + h.pages as u64 {
            assert!(pages.insert(p), "page {p} held twice");
        }
        assert!(mem.all(h.pfn, h.pages, h.tag), "someone wrote into {h:?}");
        block(h);
    }
    for p in BASE..BASE + RESERVED as u64 {
        assert!(!pages.contains(&p), "reserved page {p} handed out");
        assert_eq!(refcount(p), Ok(1));
    }
}

pub fn config(zero: ZeroPolicy) -> Config {
    Config::new(NR)
        .page_size(PS)
        .base_pfn(BASE)
        .reserved_pages(RESERVED)
        .zero(zero)
}

/// Owned memory for one pool; the arena is reached through `Mem` while the pool lives.
pub struct Storage {
    arena: Vec<u8>,
    meta: Vec<PageMeta>,
    links: Vec<Link>,
}

impl Storage {
    pub fn new() -> Self {
        Storage {
            arena: vec![0x5A; NR * PS],
            meta: vec![PageMeta::INIT; NR],
            links: vec![Link::EMPTY; NR],
        }
    }

    fn arena(&mut self) -> (Arena<'static>, Mem) {
        let ptr = NonNull::new(self.arena.as_mut_ptr()).unwrap();
        // SAFETY: the Vec outlives every pool built on it (a pool borrows its Storage's metadata,
        // so it is dropped first); besides the pool only the threads touch it, each only in
        // blocks it holds.
        (
            unsafe { Arena::from_raw(ptr, NR * PS) },
            Mem(ptr.as_ptr() as usize),
        )
    }

    /// A pool with its links in a side table.
    pub fn side_table(&mut self, zero: ZeroPolicy) -> (Pool<'_, SideTable<'_>>, Mem) {
        let (arena, mem) = self.arena();
        let pool = Pool::new(
            arena,
            &mut self.meta,
            SideTable::new(&mut self.links),
            config(zero),
        );
        (pool.unwrap(), mem)
    }

    /// A pool with its links in the free pages.
    pub fn intrusive(&mut self, zero: ZeroPolicy) -> (Pool<'_, Intrusive>, Mem) {
        let (arena, mem) = self.arena();
        let pool = Pool::new(arena, &mut self.meta, Intrusive, config(zero));
        (pool.unwrap(), mem)
    }
}
