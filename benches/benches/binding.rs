//! The core's side of the Python benchmark (`benches/python_bench.py`, `pagebuddy bench`): the
//! same calls on the same pool state, so that the Python figure minus this one is what the
//! binding costs (argument and result conversion, the call, the lock), apart from the policy.
//!
//! The pool is the Python benchmark's in quick mode: 16,384 pages of 4096 B, zero never, links
//! in a side table, orders capped at 11. Criterion group `binding`:
//!
//! - `get-put`: `get` + `put` of a page held twice (no policy work); per pair;
//! - `alloc-put`: `alloc(0)` + `put` of that page on an otherwise free pool (the whole policy:
//!   FIFO take, ten splits, ten merges, list append); per pair;
//! - `locked-get-put`, `locked-alloc-put`: the same through `LockedPool` with its `SpinLock`,
//!   as the Python pool calls them;
//! - `batch`: `alloc_many(0)` of 4096 pages into a slice then `put_many` of it; per batch.
//!
//! `BENCH_SHORT=1` shortens everything, as in `alloc.rs`.

mod common;

use std::hint::black_box;

use common::{criterion, short};
use pagebuddy::{Config, Link, LockedPool, PageMeta, Pool, SideTable, SpinLock, ZeroPolicy};

/// Pages of the pool, bytes a page, pages per batch: those of the Python benchmark.
const PAGES: usize = 1 << 14;
const PAGE_SIZE: usize = 4096;
const BATCH: usize = 4096;

/// Memory for one pool, as the Python pool holds it.
struct Mem {
    arena: Vec<u8>,
    meta: Vec<PageMeta>,
    links: Vec<Link>,
}

impl Mem {
    fn new() -> Self {
        Mem {
            arena: vec![0; PAGES * PAGE_SIZE],
            meta: vec![PageMeta::INIT; PAGES],
            links: vec![Link::EMPTY; PAGES],
        }
    }

    /// A fresh free pool over this memory.
    fn pool(&mut self) -> Pool<'_, SideTable<'_>> {
        let config = Config::new(PAGES)
            .page_size(PAGE_SIZE)
            .zero(ZeroPolicy::Never);
        let links = SideTable::new(&mut self.links);
        Pool::new(&mut self.arena[..], &mut self.meta, links, config)
            .unwrap_or_else(|e| panic!("binding bench: pool: {e}"))
    }
}

fn main() {
    let mut c = criterion(short());
    let mut mem = Mem::new();
    let mut g = c.benchmark_group("binding");
    {
        let mut pool = mem.pool();
        let pfn = pool.alloc(0).unwrap();
        pool.get(pfn).unwrap(); // held twice: get + put never frees it
        g.bench_function("get-put", |b| {
            b.iter(|| {
                pool.get(black_box(pfn)).unwrap();
                pool.put(black_box(pfn)).unwrap();
            })
        });
    }
    {
        let mut pool = mem.pool();
        g.bench_function("alloc-put", |b| {
            b.iter(|| {
                let pfn = pool.alloc(black_box(0)).unwrap();
                pool.put(black_box(pfn)).unwrap();
            })
        });
    }
    {
        // Every page held but one, whose buddy is held: the pair takes that page and gives it
        // back, with no split and no merge, so that the policy's own work is as small as the
        // get + put pair's and the Python figure minus this one is the binding's cost.
        let mut pool = mem.pool();
        let mut all = vec![0u64; PAGES];
        pool.alloc_many(0, &mut all).unwrap();
        pool.put(all[0]).unwrap();
        g.bench_function("alloc-put-warm", |b| {
            b.iter(|| {
                let pfn = pool.alloc(black_box(0)).unwrap();
                pool.put(black_box(pfn)).unwrap();
            })
        });
    }
    {
        let pool: LockedPool<'_, _, SpinLock> = LockedPool::new(mem.pool());
        let pfn = pool.alloc(0).unwrap();
        pool.get(pfn).unwrap();
        g.bench_function("locked-get-put", |b| {
            b.iter(|| {
                pool.get(black_box(pfn)).unwrap();
                pool.put(black_box(pfn)).unwrap();
            })
        });
    }
    {
        let pool: LockedPool<'_, _, SpinLock> = LockedPool::new(mem.pool());
        g.bench_function("locked-alloc-put", |b| {
            b.iter(|| {
                let pfn = pool.alloc(black_box(0)).unwrap();
                pool.put(black_box(pfn)).unwrap();
            })
        });
    }
    {
        let mut pool = mem.pool();
        let mut pfns = vec![0u64; BATCH];
        g.bench_function("batch", |b| {
            b.iter(|| {
                pool.alloc_many(0, black_box(&mut pfns)).unwrap();
                pool.put_many(black_box(&pfns)).unwrap();
            })
        });
    }
    g.finish();
    c.final_summary();
}
