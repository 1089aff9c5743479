//! Pools that grow and shrink: reclaiming 1 GiB of free 4 KiB pages out of a pool and admitting
//! it back, as 2 MiB blocks (order 9) and as single pages (order 0), timed apart.
//!
//! The pool is arena-less (page numbers only: what reclaim and admit cost is bookkeeping) and
//! covers exactly 1 GiB, 262,144 pages of 4096 B, orders capped at 11, all free at the start
//! (256 blocks of 4 MiB). Criterion group `grow`, each iteration the whole gigabyte:
//!
//! - `reclaim-2m`: `reclaim_many(9, ..)` of 512 blocks (each splits a 4 MiB block, or takes the
//!   half the last one left); `admit-2m`: `admit` of each back, in the order taken (every
//!   second one merges with its buddy into a 4 MiB block again);
//! - `reclaim-4k`: `reclaim_many(0, ..)` of 262,144 pages (in increasing pfn order: each 4 MiB
//!   block is split down as alloc(0) does); `admit-4k`: `admit` of each back, in that order
//!   (merging up to 4 MiB blocks as they complete).
//!
//! Each timed half runs on the state the other left: the pool full for a reclaim, empty for an
//! admit, the untimed half restoring it. Throughput is in pages: per page = time / 262,144.
//! `BENCH_SHORT=1` shortens everything, as in `alloc.rs`.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::{criterion, short};
use criterion::Throughput;
use pagebuddy::{Config, Link, PageMeta, Pool, SideTable, ZeroPolicy};

/// 1 GiB of 4 KiB pages.
const PAGES: usize = 1 << 18;

/// The cases: name and order of the blocks moved.
const CASES: [(&str, u32); 2] = [("2m", 9), ("4k", 0)];

fn main() {
    let mut c = criterion(short());
    let mut meta = vec![PageMeta::INIT; PAGES];
    let mut links = vec![Link::EMPTY; PAGES];
    let config = Config::new(PAGES).zero(ZeroPolicy::Never).order_cap(11);
    let mut pool = Pool::without_arena(&mut meta, SideTable::new(&mut links), config).unwrap();
    let mut g = c.benchmark_group("grow");
    g.throughput(Throughput::Elements(PAGES as u64));
    for (name, order) in CASES {
        let mut pfns = vec![0u64; PAGES >> order];
        g.bench_function(format!("reclaim-{name}"), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    pool.reclaim_many(black_box(order), &mut pfns).unwrap();
                    spent += t.elapsed();
                    admit_all(&mut pool, &pfns, order);
                }
                spent
            })
        });
        g.bench_function(format!("admit-{name}"), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    pool.reclaim_many(order, &mut pfns).unwrap();
                    let t = Instant::now();
                    admit_all(&mut pool, &pfns, order);
                    spent += t.elapsed();
                }
                spent
            })
        });
        assert_eq!(pool.free_pages() as usize, PAGES);
        pool.check().unwrap();
    }
    g.finish();
    c.final_summary();
}

/// Admits every block of `pfns` back, in the order taken.
fn admit_all(pool: &mut Pool<'_>, pfns: &[u64], order: u32) {
    for &pfn in pfns {
        pool.admit(black_box(pfn), order).unwrap();
    }
}
