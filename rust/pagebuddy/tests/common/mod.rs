//! A small, obviously-right model of the pool and a differential runner that drives a real
//! [`Pool`] and the model with the same operations and compares everything observable after every
//! step. Shared by `tests/model.rs` (proptest) and the `differential` fuzz target.
//!
//! The model is deliberately naive: `Vec`s indexed by page, one `VecDeque` of pfns per order, and
//! the pKVM rules of the contract written out literally. Its initial state is built by holding
//! every page and putting pages `reserved..nr_pages` one by one, which is the definition.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::ptr::NonNull;
use std::vec::Vec;

pub use pagebuddy::ZeroPolicy;
use pagebuddy::{Arena, Config, Error, Intrusive, Link, LinkStore, PageMeta, Pool, SideTable};

/// The shape of a pool under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geo {
    /// Pages, 1 or more.
    pub nr_pages: usize,
    /// Frame number of page 0.
    pub base_pfn: u64,
    /// Leading pages that start held (at most `nr_pages`).
    pub reserved: usize,
    /// The `order_cap` of the config, 1 or more.
    pub order_cap: u32,
    /// Bytes per page (a power of two, at least 64).
    pub page_size: usize,
}

impl Geo {
    /// The pool's config under `zero`.
    pub fn config(&self, zero: ZeroPolicy) -> Config {
        Config::new(self.nr_pages)
            .base_pfn(self.base_pfn)
            .reserved_pages(self.reserved)
            .order_cap(self.order_cap)
            .page_size(self.page_size)
            .zero(zero)
    }

    /// `min(order_cap, bit_length(nr_pages))`, computed the slow way.
    pub fn max_order(&self) -> u32 {
        let mut bits = 0;
        while (self.nr_pages >> bits) != 0 {
            bits += 1;
        }
        bits.min(self.order_cap)
    }
}

/// How an operation picks its page, resolved against the model's state at that step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    /// The i-th held page (refcount > 0), modulo their number; the first page if none is held.
    Held(u16),
    /// The i-th page with refcount 0 (free heads and tails), modulo their number.
    Unheld(u16),
    /// `base_pfn - 2 + i % (nr_pages + 4)`: pages of the pool and two on either side.
    Near(u16),
    /// Any pfn at all.
    Raw(u64),
}

/// One step of a sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `alloc(order)`, any order (invalid ones included).
    Alloc(u32),
    /// `put(pfn)`.
    Put(Pick),
    /// `get(pfn)`.
    Get(Pick),
    /// `get(pfn)` repeated `n` times (reaches the refcount limit), each result compared.
    GetN(Pick, u16),
    /// `split(pfn)`.
    Split(Pick),
    /// Writes a pattern over a page if the model says it is held (as a user of the page would);
    /// nothing otherwise.
    Write(Pick, u8),
}

/// A geometry and an operation sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Case {
    /// The pool.
    pub geo: Geo,
    /// What is done to it.
    pub ops: Vec<Op>,
}

/// Where the pool under test keeps its free-list links.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    /// [`SideTable`].
    Side,
    /// [`Intrusive`].
    Intrusive,
}

/// Every link store and zero policy.
pub const CONFIGS: [(Store, ZeroPolicy); 6] = [
    (Store::Side, ZeroPolicy::OnFree),
    (Store::Side, ZeroPolicy::OnAlloc),
    (Store::Side, ZeroPolicy::Never),
    (Store::Intrusive, ZeroPolicy::OnFree),
    (Store::Intrusive, ZeroPolicy::OnAlloc),
    (Store::Intrusive, ZeroPolicy::Never),
];

/// The model: the contract's rules, literally.
#[derive(Clone, Debug)]
pub struct Model {
    pub geo: Geo,
    pub max_order: u32,
    pub zero: ZeroPolicy,
    /// Per page.
    pub refcount: Vec<u16>,
    /// Per page: `Some(order)` for heads, `None` for tails.
    pub order: Vec<Option<u32>>,
    /// Per order, FIFO, head first: pfns of free blocks.
    pub lists: Vec<VecDeque<u64>>,
    /// What the arena should hold (meaningful where the zero policy defines it).
    pub mem: Vec<u8>,
}

/// The byte every arena starts with at offset `i`: never zero, so zeroing shows.
pub fn initial_byte(i: usize) -> u8 {
    (i.wrapping_mul(131) % 251) as u8 + 1
}

impl Model {
    /// Every page held once (refcount 1, order 0), then pages `reserved..nr_pages` put in order.
    pub fn new(geo: Geo, zero: ZeroPolicy) -> Self {
        let n = geo.nr_pages;
        let mut m = Model {
            geo,
            max_order: geo.max_order(),
            zero,
            refcount: vec![1; n],
            order: vec![Some(0); n],
            lists: (0..geo.max_order()).map(|_| VecDeque::new()).collect(),
            mem: (0..n * geo.page_size).map(initial_byte).collect(),
        };
        for i in geo.reserved..n {
            m.put(geo.base_pfn + i as u64).expect("initial put");
        }
        m
    }

    fn index(&self, pfn: u64) -> Option<usize> {
        let i = pfn.checked_sub(self.geo.base_pfn)?;
        (i < self.geo.nr_pages as u64).then_some(i as usize)
    }

    fn pfn(&self, i: usize) -> u64 {
        self.geo.base_pfn + i as u64
    }

    fn zero_block(&mut self, i: usize, order: u32) {
        let ps = self.geo.page_size;
        self.mem[i * ps..(i + (1 << order)) * ps].fill(0);
    }

    pub fn alloc(&mut self, order: u32) -> Result<u64, Error> {
        if order >= self.max_order {
            return Err(Error::InvalidOrder {
                order,
                max_order: self.max_order,
            });
        }
        let Some(mut k) = (order..self.max_order).find(|&k| !self.lists[k as usize].is_empty())
        else {
            return Err(Error::OutOfMemory { order });
        };
        let p = self.lists[k as usize].pop_front().unwrap();
        while k > order {
            k -= 1;
            let upper = p ^ (1 << k);
            let u = self.index(upper).unwrap();
            self.order[u] = Some(k);
            self.refcount[u] = 0;
            self.lists[k as usize].push_back(upper);
        }
        let i = self.index(p).unwrap();
        assert_eq!(self.refcount[i], 0, "model: allocated a held page");
        self.refcount[i] = 1;
        self.order[i] = Some(order);
        if self.zero == ZeroPolicy::OnAlloc {
            self.zero_block(i, order);
        }
        Ok(p)
    }

    pub fn put(&mut self, pfn: u64) -> Result<(), Error> {
        let i = self.index(pfn).ok_or(Error::PfnOutOfRange { pfn })?;
        if self.refcount[i] == 0 {
            return Err(Error::NotHeld { pfn });
        }
        self.refcount[i] -= 1;
        if self.refcount[i] > 0 {
            return Ok(());
        }
        let mut order = self.order[i].unwrap();
        if self.zero == ZeroPolicy::OnFree {
            self.zero_block(i, order);
        }
        let mut p = pfn;
        self.order[i] = None;
        while order + 1 < self.max_order {
            let buddy = p ^ (1 << order);
            let Some(b) = self.index(buddy) else { break };
            if !(self.refcount[b] == 0 && self.order[b] == Some(order)) {
                break;
            }
            let list = &mut self.lists[order as usize];
            let at = list.iter().position(|&x| x == buddy).unwrap();
            list.remove(at);
            self.order[b] = None;
            p = p.min(buddy);
            order += 1;
        }
        let h = self.index(p).unwrap();
        self.order[h] = Some(order);
        self.lists[order as usize].push_back(p);
        Ok(())
    }

    pub fn get(&mut self, pfn: u64) -> Result<(), Error> {
        let i = self.index(pfn).ok_or(Error::PfnOutOfRange { pfn })?;
        match self.refcount[i] {
            0 => Err(Error::NotHeld { pfn }),
            u16::MAX => Err(Error::RefcountOverflow { pfn }),
            _ => {
                self.refcount[i] += 1;
                Ok(())
            }
        }
    }

    pub fn split(&mut self, pfn: u64) -> Result<(), Error> {
        let i = self.index(pfn).ok_or(Error::PfnOutOfRange { pfn })?;
        if self.refcount[i] == 0 {
            return Err(Error::NotHeld { pfn });
        }
        let order = self.order[i].unwrap();
        for t in i + 1..i + (1 << order) {
            self.refcount[t] = 1;
            self.order[t] = Some(0);
        }
        self.order[i] = Some(0);
        Ok(())
    }

    /// Whether page `i` lies in a held block.
    pub fn page_held(&self, i: usize) -> bool {
        let h = (0..=i).rev().find(|&h| self.order[h].is_some()).unwrap();
        let order = self.order[h].unwrap();
        h + (1 << order) > i && self.refcount[h] > 0
    }

    /// For every page, whether it lies in a held block (one pass).
    pub fn held_pages(&self) -> Vec<bool> {
        let mut held = vec![false; self.geo.nr_pages];
        let mut i = 0;
        while i < held.len() {
            let size = 1usize << self.order[i].unwrap();
            let end = (i + size).min(held.len());
            held[i..end].fill(self.refcount[i] > 0);
            i = end;
        }
        held
    }

    pub fn free_pages(&self) -> u32 {
        self.lists
            .iter()
            .enumerate()
            .map(|(k, l)| (l.len() as u32) << k)
            .sum()
    }

    pub fn capacity(&self, order: u32) -> u64 {
        (order..self.max_order)
            .map(|k| (self.lists[k as usize].len() as u64) << (k - order))
            .sum()
    }

    /// The pfn `pick` means in the current state.
    pub fn resolve(&self, pick: Pick) -> u64 {
        let n = self.geo.nr_pages;
        let nth = |want_held: bool, i: u16| {
            let pages: Vec<usize> = (0..n)
                .filter(|&p| (self.refcount[p] > 0) == want_held)
                .collect();
            match pages.len() {
                0 => self.pfn(0),
                len => self.pfn(pages[i as usize % len]),
            }
        };
        match pick {
            Pick::Held(i) => nth(true, i),
            Pick::Unheld(i) => nth(false, i),
            Pick::Near(i) => self
                .geo
                .base_pfn
                .wrapping_sub(2)
                .wrapping_add(i as u64 % (n as u64 + 4)),
            Pick::Raw(pfn) => pfn,
        }
    }
}

/// Owned memory for one pool.
struct Mem {
    arena: Vec<u8>,
    meta: Vec<PageMeta>,
    links: Vec<Link>,
}

/// Runs `case` for every link store and zero policy.
pub fn run(case: &Case) {
    for (store, zero) in CONFIGS {
        run_one(case, store, zero);
    }
}

/// Runs `case` on one configuration, panicking at the first difference from the model.
pub fn run_one(case: &Case, store: Store, zero: ZeroPolicy) {
    let geo = case.geo;
    let n = geo.nr_pages;
    let mut mem = Mem {
        arena: (0..n * geo.page_size).map(initial_byte).collect(),
        meta: vec![PageMeta::INIT; n],
        links: vec![Link::EMPTY; n],
    };
    let base = NonNull::new(mem.arena.as_mut_ptr()).unwrap();
    // SAFETY: `mem.arena` outlives the pool and is only touched through `base` below, in pages
    // the model says are held (the caller's own pages) or read while the pool is not running.
    let arena = unsafe { Arena::from_raw(base, mem.arena.len()) };
    let config = geo.config(zero);
    let ctx = format!("{store:?} {zero:?} {geo:?}");
    match store {
        Store::Side => {
            let pool = Pool::new(arena, &mut mem.meta, SideTable::new(&mut mem.links), config)
                .unwrap_or_else(|e| panic!("{ctx}: new: {e}"));
            drive(pool, base, case, store, zero, &ctx);
        }
        Store::Intrusive => {
            let pool = Pool::new(arena, &mut mem.meta, Intrusive, config)
                .unwrap_or_else(|e| panic!("{ctx}: new: {e}"));
            drive(pool, base, case, store, zero, &ctx);
        }
    }
}

fn drive<L: LinkStore>(
    mut pool: Pool<'_, L>,
    base: NonNull<u8>,
    case: &Case,
    store: Store,
    zero: ZeroPolicy,
    ctx: &str,
) {
    let mut model = Model::new(case.geo, zero);
    compare(&pool, &model, base, store, ctx, usize::MAX, None);
    for (step, &op) in case.ops.iter().enumerate() {
        match op {
            Op::Alloc(order) => {
                let want = model.alloc(order);
                let got = pool.alloc(order);
                assert_eq!(got, want, "{ctx}: step {step}: {op:?}");
            }
            Op::Put(pick) | Op::Get(pick) | Op::Split(pick) => {
                let pfn = model.resolve(pick);
                let (want, got) = match op {
                    Op::Put(_) => (model.put(pfn), pool.put(pfn)),
                    Op::Get(_) => (model.get(pfn), pool.get(pfn)),
                    _ => (model.split(pfn), pool.split(pfn)),
                };
                assert_eq!(got, want, "{ctx}: step {step}: {op:?} on pfn {pfn}");
            }
            Op::GetN(pick, times) => {
                let pfn = model.resolve(pick);
                for t in 0..times {
                    let want = model.get(pfn);
                    let got = pool.get(pfn);
                    assert_eq!(got, want, "{ctx}: step {step}: get #{t} of {pfn}");
                }
            }
            Op::Write(pick, byte) => {
                let pfn = model.resolve(pick);
                let Some(i) = model.index(pfn) else { continue };
                if !model.page_held(i) {
                    continue;
                }
                let ps = case.geo.page_size;
                for j in 0..ps {
                    let b = byte.wrapping_add(j as u8);
                    model.mem[i * ps + j] = b;
                    // SAFETY: page i is held, so the caller may write it; the byte lies inside
                    // the arena, which `base` points to.
                    unsafe { base.as_ptr().add(i * ps + j).write(b) };
                }
            }
        }
        compare(&pool, &model, base, store, ctx, step, Some(op));
    }
}

/// Everything observable, pool against model.
fn compare<L: LinkStore>(
    pool: &Pool<'_, L>,
    model: &Model,
    base: NonNull<u8>,
    store: Store,
    ctx: &str,
    step: usize,
    op: Option<Op>,
) {
    let geo = model.geo;
    let n = geo.nr_pages;
    let at = || format!("{ctx}: after step {step} ({op:?})");
    if let Err(c) = pool.check() {
        panic!("{}: check: {c}", at());
    }
    assert_eq!(pool.max_order(), model.max_order, "{}", at());
    let g = pool.geometry();
    assert_eq!(
        (g.nr_pages as usize, g.base_pfn, g.reserved_pages as usize),
        (n, geo.base_pfn, geo.reserved),
        "{}",
        at()
    );
    for k in 0..model.max_order + 2 {
        let got: Vec<u64> = pool.free_list(k).collect();
        let want: Vec<u64> = match model.lists.get(k as usize) {
            Some(l) => l.iter().copied().collect(),
            None => Vec::new(),
        };
        assert_eq!(got, want, "{}: free list {k}", at());
    }
    let info: Vec<u32> = model.lists.iter().map(|l| l.len() as u32).collect();
    assert_eq!(pool.buddyinfo(), &info[..], "{}: buddyinfo", at());
    assert_eq!(
        pool.free_pages(),
        model.free_pages(),
        "{}: free_pages",
        at()
    );
    for k in 0..model.max_order + 2 {
        assert_eq!(
            pool.capacity(k),
            model.capacity(k),
            "{}: capacity({k})",
            at()
        );
    }
    for i in 0..n {
        let pfn = geo.base_pfn + i as u64;
        let want_order = model.order[i];
        assert_eq!(
            pool.refcount(pfn),
            Ok(model.refcount[i]),
            "{}: refcount({pfn})",
            at()
        );
        assert_eq!(pool.order(pfn), Ok(want_order), "{}: order({pfn})", at());
        let meta = pool.page(pfn).unwrap();
        let raw = want_order.map_or(pagebuddy::NO_ORDER, |o| o as u8);
        assert_eq!(
            (meta.refcount, meta.order),
            (model.refcount[i], raw),
            "{}",
            at()
        );
    }
    for pfn in [
        geo.base_pfn.wrapping_sub(1),
        geo.base_pfn + n as u64,
        u64::MAX,
    ] {
        if model.index(pfn).is_none() {
            assert_eq!(
                pool.refcount(pfn),
                Err(Error::PfnOutOfRange { pfn }),
                "{}",
                at()
            );
        }
    }
    // Arena bytes, where the model defines them: everywhere with a side table (the allocator
    // only ever writes zeros there), in held pages with intrusive links unless never zeroed.
    if store == Store::Intrusive && model.zero == ZeroPolicy::Never {
        return;
    }
    let ps = geo.page_size;
    // SAFETY: the arena is `n * ps` bytes at `base` and the pool is not running.
    let bytes = unsafe { std::slice::from_raw_parts(base.as_ptr(), n * ps) };
    for (i, held) in model.held_pages().into_iter().enumerate() {
        if store == Store::Side || held {
            let range = i * ps..(i + 1) * ps;
            assert!(
                bytes[range.clone()] == model.mem[range],
                "{}: arena bytes of pfn {}",
                at(),
                geo.base_pfn + i as u64
            );
        }
    }
}

/// Reads a fuzz input as a case: 6 bytes of geometry, then 4 bytes per operation (at most 256).
pub fn decode(data: &[u8]) -> Case {
    let mut bytes = data.iter().copied();
    let mut next = move || bytes.next().unwrap_or(0);
    let nr_pages = 1 + next() as usize % 70;
    let base_pfn = match next() {
        b @ 0..=63 => b as u64,
        b @ 64..=127 => 37 + b as u64,
        b @ 128..=191 => (1u64 << 40) + b as u64,
        b => u64::MAX - 80 - b as u64,
    };
    let reserved = next() as usize % (nr_pages + 1);
    let order_cap = match next() % 13 {
        12 => 24,
        c => 1 + c as u32,
    };
    let page_size = 64 << (next() % 2);
    let geo = Geo {
        nr_pages,
        base_pfn,
        reserved,
        order_cap,
        page_size,
    };
    let _ = next();
    let body = data.get(6..).unwrap_or(&[]);
    let ops = body
        .chunks(4)
        .take(256)
        .map(|c| {
            let c = [
                c[0],
                *c.get(1).unwrap_or(&0),
                *c.get(2).unwrap_or(&0),
                *c.get(3).unwrap_or(&0),
            ];
            let arg = u16::from_le_bytes([c[2], c[3]]);
            let pick = match c[1] % 8 {
                0..=3 => Pick::Held(arg),
                4 => Pick::Unheld(arg),
                5 | 6 => Pick::Near(arg),
                _ => Pick::Raw(u64::from(arg) << (c[1] / 8)),
            };
            match c[0] % 16 {
                0..=4 => Op::Alloc(match c[1] {
                    255 => u32::MAX - u32::from(c[2]),
                    b => u32::from(b % 14),
                }),
                5..=8 => Op::Put(pick),
                9 | 10 => Op::Get(pick),
                11 => Op::GetN(pick, if c[0] == 251 { u16::MAX } else { arg % 64 }),
                12 | 13 => Op::Split(pick),
                _ => Op::Write(pick, c[2]),
            }
        })
        .collect();
    Case { geo, ops }
}
