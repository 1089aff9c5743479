//! Property test of `CachedPool`: random geometries, cache configurations and operation sequences
//! against a model of the cache policy written out literally (per-slot `Vec` stacks, per-page
//! refcounts, and an exact `Pool` as the pool behind the caches, itself checked against the
//! contract's model in `tests/model.rs`). After every step: the return value, every slot's stacks
//! in order, the pool's free lists, every page's refcount and metadata, `free_pages`, `check()`;
//! the bytes of every block handed out are zero where the policy promises it. At the end
//! `drain_all` must leave the pool equal to the model's and `check()` passing.
//!
//! `PROPTEST_CASES=N` changes the number of cases (default 512).

mod cases;

use pagebuddy::{
    cache_blocks, CacheConfig, CacheSlot, CachedPool, Config, Error, Intrusive, Link, LinkStore,
    LockedPool, PageMeta, PageRef, Pool, SideTable, SpinLock, ZeroPolicy,
};
use proptest::prelude::*;

const PS: usize = 64;

#[derive(Clone, Copy, Debug)]
struct Shape {
    nr_pages: usize,
    base_pfn: u64,
    reserved: usize,
    order_cap: u32,
    cpus: usize,
    cache: CacheConfig,
}

impl Shape {
    fn config(&self, zero: ZeroPolicy) -> Config {
        Config::new(self.nr_pages)
            .base_pfn(self.base_pfn)
            .reserved_pages(self.reserved)
            .order_cap(self.order_cap)
            .page_size(PS)
            .zero(zero)
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Alloc(usize, u32),
    /// Put of the i-th held block (modulo), through a slot.
    Put(usize, u16),
    /// Put of an arbitrary pfn near the pool.
    PutRaw(usize, u16),
    Get(u16),
    GetRaw(u16),
    Split(u16),
    SplitRaw(u16),
    Drain(usize),
    DrainAll,
}

/// The literal model: the cache policy over an exact pool.
struct Model<'a> {
    core: Pool<'a, SideTable<'a>>,
    /// Per slot, per cached order: page pfns, coldest first.
    stacks: Vec<Vec<Vec<u64>>>,
    /// Per page: the callers' refcount and the order of a held head.
    refs: Vec<(u16, u32)>,
    orders: u32,
    batch: usize,
    high: usize,
    base: u64,
}

impl Model<'_> {
    fn slot(&self, cpu: usize) -> usize {
        cpu % self.stacks.len()
    }

    fn idx(&self, pfn: u64) -> Result<usize, Error> {
        match pfn.checked_sub(self.base) {
            Some(i) if i < self.refs.len() as u64 => Ok(i as usize),
            _ => Err(Error::PfnOutOfRange { pfn }),
        }
    }

    fn alloc(&mut self, cpu: usize, order: u32) -> Result<u64, Error> {
        match self.try_alloc(cpu, order) {
            Err(Error::OutOfMemory { .. }) => {}
            r => return r,
        }
        let own = self.slot(cpu);
        self.drain_slot(own);
        match self.try_alloc(cpu, order) {
            Err(Error::OutOfMemory { .. }) => {}
            r => return r,
        }
        for s in 0..self.stacks.len() {
            if s != own {
                self.drain_slot(s);
            }
        }
        self.try_alloc(cpu, order)
    }

    fn try_alloc(&mut self, cpu: usize, order: u32) -> Result<u64, Error> {
        let pfn = if order >= self.orders {
            self.core.alloc(order)?
        } else {
            let s = self.slot(cpu);
            match self.stacks[s][order as usize].pop() {
                Some(pfn) => pfn,
                None => {
                    let first = self.core.alloc(order)?;
                    let mut rest = Vec::new();
                    while rest.len() + 1 < self.batch {
                        match self.core.alloc(order) {
                            Ok(pfn) => rest.push(pfn),
                            Err(_) => break,
                        }
                    }
                    rest.reverse();
                    self.stacks[s][order as usize] = rest;
                    first
                }
            }
        };
        let i = self.idx(pfn).unwrap();
        self.refs[i] = (1, order);
        Ok(pfn)
    }

    fn put(&mut self, cpu: usize, pfn: u64) -> Result<(), Error> {
        let i = self.idx(pfn)?;
        let (refcount, order) = self.refs[i];
        match refcount {
            0 => return Err(Error::NotHeld { pfn }),
            1 => self.refs[i] = (0, 0),
            _ => {
                self.refs[i].0 -= 1;
                return Ok(());
            }
        }
        if order >= self.orders {
            return self.core.put(pfn);
        }
        let (s, high, batch) = (self.slot(cpu), self.high, self.batch);
        let stack = &mut self.stacks[s][order as usize];
        stack.push(pfn);
        if stack.len() > high {
            let cold: Vec<u64> = stack.drain(..batch).collect();
            for pfn in cold {
                self.core.put(pfn).unwrap();
            }
        }
        Ok(())
    }

    fn get(&mut self, pfn: u64) -> Result<(), Error> {
        let i = self.idx(pfn)?;
        match self.refs[i].0 {
            0 => Err(Error::NotHeld { pfn }),
            u16::MAX => Err(Error::RefcountOverflow { pfn }),
            _ => {
                self.refs[i].0 += 1;
                Ok(())
            }
        }
    }

    fn split(&mut self, pfn: u64) -> Result<(), Error> {
        let i = self.idx(pfn)?;
        let (refcount, order) = self.refs[i];
        if refcount == 0 {
            return Err(Error::NotHeld { pfn });
        }
        self.refs[i].1 = 0;
        for t in i + 1..i + (1 << order) {
            self.refs[t] = (1, 0);
        }
        self.core.split(pfn)
    }

    fn drain_slot(&mut self, s: usize) {
        for order in 0..self.orders as usize {
            for pfn in std::mem::take(&mut self.stacks[s][order]) {
                self.core.put(pfn).unwrap();
            }
        }
    }

    fn cached_pages(&self) -> u32 {
        let mut n = 0;
        for slot in &self.stacks {
            for (k, stack) in slot.iter().enumerate() {
                n += (stack.len() as u32) << k;
            }
        }
        n
    }

    fn held(&self) -> Vec<u64> {
        (0..self.refs.len())
            .filter(|&i| self.refs[i].0 > 0)
            .map(|i| self.base + i as u64)
            .collect()
    }
}

fn lists<L: LinkStore>(p: &Pool<'_, L>) -> Vec<Vec<u64>> {
    (0..p.max_order())
        .map(|k| p.free_list(k).collect())
        .collect()
}

fn raw_pfn(shape: &Shape, r: u16) -> u64 {
    (shape.base_pfn + (r as u64 % (shape.nr_pages as u64 + 4))).saturating_sub(2)
}

fn compare<L: LinkStore>(cached: &CachedPool<'_, L, SpinLock>, model: &Model<'_>, shape: &Shape) {
    let mut out = vec![0u64; shape.cache.high as usize + 1];
    for (s, slot) in model.stacks.iter().enumerate() {
        for (k, stack) in slot.iter().enumerate() {
            let n = cached.cached_blocks(s, k as u32, &mut out);
            assert_eq!(&out[..n], &stack[..], "slot {s} order {k}");
        }
    }
    for k in model.orders..pagebuddy::MAX_CACHED_ORDERS as u32 {
        assert_eq!(cached.cached_blocks(0, k, &mut out), 0);
    }
    assert_eq!(cached.with_core(|p| lists(p)), lists(&model.core));
    assert_eq!(
        cached.free_pages(),
        model.core.free_pages() + model.cached_pages()
    );
    for (i, &(refcount, order)) in model.refs.iter().enumerate() {
        let pfn = shape.base_pfn + i as u64;
        assert_eq!(cached.refcount(pfn), Ok(refcount), "refcount of {pfn}");
        let core = model.core.page(pfn).unwrap();
        let expect = if refcount > 0 {
            (refcount, Some(order))
        } else {
            let order = (core.order != pagebuddy::NO_ORDER).then_some(core.order as u32);
            (0, order)
        };
        let page = cached.page(pfn).unwrap();
        assert_eq!(
            (page.refcount, cached.order(pfn).unwrap()),
            expect,
            "page {pfn}"
        );
    }
    cached.check().unwrap();
}

fn run<L: LinkStore>(shape: &Shape, ops: &[Op], zero: ZeroPolicy, links: L, arena: &mut [u8]) {
    let n = shape.nr_pages;
    let mut meta = vec![PageMeta::INIT; n];
    let pool = Pool::new(&mut arena[..], &mut meta, links, shape.config(zero)).unwrap();
    let mut slots: Vec<CacheSlot> = (0..shape.cpus).map(|_| CacheSlot::new()).collect();
    let mut blocks = vec![0u32; cache_blocks(shape.cpus, &shape.cache)];
    let mut refs: Vec<PageRef> = (0..n).map(|_| PageRef::new()).collect();
    let cached = CachedPool::new(
        LockedPool::new(pool),
        &mut slots,
        &mut blocks,
        &mut refs,
        shape.cache,
    )
    .unwrap();
    let arena_ptr = cached.with_core(|p| p.page_addr(shape.base_pfn).unwrap().as_ptr());

    let (mut m_arena, mut m_meta, mut m_links) = (
        vec![0u8; n * PS],
        vec![PageMeta::INIT; n],
        vec![Link::EMPTY; n],
    );
    let core = Pool::new(
        &mut m_arena[..],
        &mut m_meta,
        SideTable::new(&mut m_links),
        shape.config(ZeroPolicy::Never),
    )
    .unwrap();
    let orders = shape.cache.orders.min(core.max_order());
    let mut model = Model {
        core,
        stacks: vec![vec![Vec::new(); orders as usize]; shape.cpus],
        refs: (0..n)
            .map(|i| if i < shape.reserved { (1, 0) } else { (0, 0) })
            .collect(),
        orders,
        batch: shape.cache.batch as usize,
        high: shape.cache.high as usize,
        base: shape.base_pfn,
    };
    assert_eq!(cached.config().orders, orders);
    compare(&cached, &model, shape);

    for &op in ops {
        let held = model.held();
        let pick = |r: u16| held.get(r as usize % held.len().max(1)).copied();
        match op {
            Op::Alloc(cpu, order) => {
                let got = cached.alloc(cpu, order);
                assert_eq!(got, model.alloc(cpu, order), "{op:?}");
                if let Ok(pfn) = got {
                    let len = PS << order;
                    let off = (pfn - shape.base_pfn) as usize * PS;
                    // SAFETY: the block was just handed out: its bytes are this test's.
                    let bytes = unsafe { std::slice::from_raw_parts_mut(arena_ptr.add(off), len) };
                    if zero != ZeroPolicy::Never {
                        assert!(bytes.iter().all(|&b| b == 0), "block {pfn} not zeroed");
                    }
                    bytes.fill(0xA5);
                }
            }
            Op::Put(cpu, r) => {
                if let Some(pfn) = pick(r) {
                    assert_eq!(cached.put(cpu, pfn), model.put(cpu, pfn), "{op:?}");
                }
            }
            Op::PutRaw(cpu, r) => {
                let pfn = raw_pfn(shape, r);
                assert_eq!(cached.put(cpu, pfn), model.put(cpu, pfn), "{op:?}");
            }
            Op::Get(r) => {
                if let Some(pfn) = pick(r) {
                    assert_eq!(cached.get(pfn), model.get(pfn), "{op:?}");
                }
            }
            Op::GetRaw(r) => {
                let pfn = raw_pfn(shape, r);
                assert_eq!(cached.get(pfn), model.get(pfn), "{op:?}");
            }
            Op::Split(r) => {
                if let Some(pfn) = pick(r) {
                    assert_eq!(cached.split(pfn), model.split(pfn), "{op:?}");
                }
            }
            Op::SplitRaw(r) => {
                let pfn = raw_pfn(shape, r);
                assert_eq!(cached.split(pfn), model.split(pfn), "{op:?}");
            }
            Op::Drain(cpu) => {
                assert_eq!(cached.drain(cpu), Ok(()));
                model.drain_slot(model.slot(cpu));
            }
            Op::DrainAll => {
                assert_eq!(cached.drain_all(), Ok(()));
                for s in 0..shape.cpus {
                    model.drain_slot(s);
                }
            }
        }
        compare(&cached, &model, shape);
    }
    assert_eq!(cached.drain_all(), Ok(()));
    for s in 0..shape.cpus {
        model.drain_slot(s);
    }
    compare(&cached, &model, shape);
    // Back to an exact pool: the callers' refcounts return to its metadata.
    let core = cached.into_inner().unwrap();
    core.check().unwrap();
    core.with(|p| {
        assert_eq!(lists(p), lists(&model.core));
        for (i, &(refcount, _)) in model.refs.iter().enumerate() {
            assert_eq!(p.refcount(shape.base_pfn + i as u64), Ok(refcount));
        }
    });
}

fn shape() -> impl Strategy<Value = Shape> {
    (
        1usize..=80,
        prop_oneof![Just(0u64), Just(5), Just(37), Just(1 << 40)],
        0usize..4,
        1u32..=11,
        1usize..=3,
        0u32..=6,
        1u32..=6,
        0u32..=4,
    )
        .prop_map(
            |(nr_pages, base_pfn, reserved, order_cap, cpus, orders, batch, extra)| Shape {
                nr_pages,
                base_pfn,
                reserved: reserved.min(nr_pages),
                order_cap,
                cpus,
                cache: CacheConfig::new()
                    .orders(orders)
                    .batch(batch)
                    .high(batch + extra),
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0usize..5, prop_oneof![6 => 0u32..4, 1 => 0u32..9]).prop_map(|(c, k)| Op::Alloc(c, k)),
        8 => (0usize..5, any::<u16>()).prop_map(|(c, r)| Op::Put(c, r)),
        1 => (0usize..5, any::<u16>()).prop_map(|(c, r)| Op::PutRaw(c, r)),
        2 => any::<u16>().prop_map(Op::Get),
        1 => any::<u16>().prop_map(Op::GetRaw),
        1 => any::<u16>().prop_map(Op::Split),
        1 => any::<u16>().prop_map(Op::SplitRaw),
        1 => (0usize..5).prop_map(Op::Drain),
        1 => Just(Op::DrainAll),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases::from_env(512)))]

    #[test]
    fn cached_pool_matches_the_model(
        shape in shape(),
        ops in prop::collection::vec(op(), 0..120),
        zero in prop_oneof![
            Just(ZeroPolicy::OnFree),
            Just(ZeroPolicy::OnAlloc),
            Just(ZeroPolicy::Never),
        ],
        intrusive in any::<bool>(),
    ) {
        let mut arena = vec![0x5Au8; shape.nr_pages * PS];
        if intrusive {
            run(&shape, &ops, zero, Intrusive, &mut arena);
        } else {
            let mut links = vec![Link::EMPTY; shape.nr_pages];
            run(&shape, &ops, zero, SideTable::new(&mut links), &mut arena);
        }
    }
}
