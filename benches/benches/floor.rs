//! The floor: what one dependent random read costs over memory the size of a pool's state,
//! mapped as the pool's is, measured in the same run as the exact pool's workloads on that same
//! memory, so that each workload can be read as a multiple of it.
//!
//! For each pool size (2^14, 2^18 and 2^22 pages by default; `BENCH_FLOOR_SHIFTS=18,22` to
//! choose), each link store and each mapping (4 KiB pages, or aligned to 2 MiB and advised with
//! `MADV_HUGEPAGE`, through `pagebuddy::mapped::MappedSlice`, the helper the Python package maps
//! its pools with):
//!
//! - **floor**: a pointer chase, each read's address the value of the one before, through one
//!   random cycle over the 64-byte lines of the pool's state, in the pool's own mappings before
//!   the pool is built on them. The *side table*'s state is its metadata (4 bytes a page) and its
//!   links (8 bytes a page), every line of both. The *intrusive* store keeps its links in the
//!   first bytes of each free page, so its state is the metadata and the first line of every page
//!   of the arena: a read lands on a line of its own and, with 4 KiB pages, a page of its own
//!   (a TLB entry per page, as the pool's link reads need).
//! - **overlapped**: the same lines read in the same random order, but no read's address
//!   depends on a read before it, so the processor overlaps as many misses as it can keep in
//!   flight: what a miss costs when nothing waits on it, the least a workload's misses over
//!   that state can cost together.
//! - **hot**, **churn**, **mixed**: the workloads of `alloc.rs` (`benches/benches/common`), scaled
//!   to the pool (churn holds half the pages; mixed keeps half full and warms up for two steps a
//!   page), zero never, orders capped at 11, on a pool built over the same mappings.
//! - `buddy_system_allocator::FrameAllocator` on the same workloads, per size (no mapping of
//!   its own: its B-trees come from the global allocator).
//! - **least**, per size, churn only: the least an allocator with state per page can do there
//!   (`Least`: a word a page, huge pages, a LIFO stack), which tells what the workload itself
//!   costs beyond the floor.
//!
//! Each figure is the median of several timed rounds (7, or 3 with `BENCH_SHORT=1`); the rounds
//! of the floor and of the overlapped read run half before and half after the workloads, so that
//! they see the machine's load as the workloads did. FrameAllocator runs before a size's pools
//! and again after them, and its figure is the mean of the two medians, for the same reason. An
//! intrusive pool touches every page of its arena on the way to the churn state (16 GiB at 2^22
//! pages of 4 KiB): unless the machine has that much memory available (`MemAvailable`) with an
//! eighth more and 1 GiB to spare, its floor, churn and mixed are reported as not measured, with
//! the reason, and only its hot pair (a fresh pool) runs. One mapping is alive at a time.
//!
//! Writes `target/pagebuddy-bench/floor.json` (schema `pagebuddy-floor/1`), which
//! `scripts/bench_report.py` turns into the floor section of `docs/benchmarks.md`.

mod common;

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Instant;

use buddy_system_allocator::FrameAllocator;
use common::{fail, json_str, short, target_dir, Rng, SEED_CHURN, SEED_MIXED};
use pagebuddy::mapped::{Advice, MappedSlice};
use pagebuddy::{Arena, Config, Intrusive, Link, LinkStore, PageMeta, Pool, SideTable, ZeroPolicy};

/// Bytes a page, as in `alloc.rs`.
const PAGE: usize = 4096;
/// Bytes a cache line.
const LINE: usize = 64;
/// Orders, as in `alloc.rs` (pKVM's MAX_ORDER).
const ORDER_CAP: u32 = 11;
/// Highest order of the mixed workload.
const MIXED_MAX_ORDER: u32 = 9;

#[derive(Clone, Copy, PartialEq)]
enum Store {
    Side,
    Intrusive,
}

impl Store {
    fn name(self) -> &'static str {
        match self {
            Store::Side => "side-table",
            Store::Intrusive => "intrusive",
        }
    }
}

fn advice_name(a: Advice) -> &'static str {
    match a {
        Advice::HugePages => "huge",
        Advice::Default => "default",
    }
}

/// Median of `xs` (non-empty).
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Timed rounds: the median of `rounds` runs of `step` `ops` times, in ns per call; one untimed
/// round first.
fn timed(rounds: usize, ops: usize, mut step: impl FnMut()) -> f64 {
    for _ in 0..ops {
        step();
    }
    let per = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..ops {
                step();
            }
            t.elapsed().as_nanos() as f64 / ops as f64
        })
        .collect();
    median(per)
}

/// The floor over the lines starting at `nodes` (addresses, each valid for a `usize` write and
/// read): links them into one random cycle, then chases it. ns per read, one figure a round.
///
/// # Safety
/// Every address in `nodes` is 8-byte aligned and points into memory owned by the caller that
/// nothing else uses meanwhile, the nodes at least 8 bytes apart.
unsafe fn chase(nodes: &mut [usize], rounds: usize) -> Vec<f64> {
    Rng::new(0xF100_12EE).shuffle(nodes);
    for i in 0..nodes.len() {
        let next = nodes[(i + 1) % nodes.len()];
        // SAFETY: the caller's promise.
        unsafe { *(nodes[i] as *mut usize) = next };
    }
    // Enough reads to go round the cycle at least once, and at least a million.
    let hops = nodes.len().max(1 << 20);
    let mut p = nodes[0];
    let walk = |n: usize| {
        for _ in 0..n {
            // SAFETY: every node holds the address of another node (written above).
            p = unsafe { *(p as *const usize) };
        }
        black_box(p);
    };
    per_read(nodes.len(), hops, rounds, walk)
}

/// `pass` over `warm` reads untimed, then `rounds` times over `reads` reads, timed: ns per
/// read, one figure a round.
fn per_read(warm: usize, reads: usize, rounds: usize, mut pass: impl FnMut(usize)) -> Vec<f64> {
    pass(warm);
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            pass(reads);
            t.elapsed().as_nanos() as f64 / reads as f64
        })
        .collect()
}

/// What one read costs when no read depends on another: the lines of `nodes`, in the random
/// order [`chase`] left them in, each read with its address known before the read before it
/// returns, so that the processor overlaps as many of the misses as it can keep in flight. ns
/// per read, one figure a round. The least that k misses an operation over the same lines can
/// cost with every one overlapped: k times this, where the floor is what they cost one after
/// the other.
///
/// # Safety
/// Every address in `nodes` is 8-byte aligned and points into memory owned by the caller that
/// nothing else uses meanwhile.
unsafe fn overlapped(nodes: &[usize], rounds: usize) -> Vec<f64> {
    // As many reads as the chase makes: the cycle's length, and at least a million.
    let reads = nodes.len().max(1 << 20);
    let read = |n: usize| {
        let mut sum = 0usize;
        let mut left = n;
        while left > 0 {
            let k = left.min(nodes.len());
            for &p in &nodes[..k] {
                // SAFETY: the caller's promise.
                sum = sum.wrapping_add(unsafe { *(p as *const usize) });
            }
            left -= k;
        }
        black_box(sum);
    };
    per_read(nodes.len(), reads, rounds, read)
}

/// The start of every `stride`-byte line of `bytes` bytes at `base`.
fn lines(base: *mut u8, bytes: usize, stride: usize, into: &mut Vec<usize>) {
    into.extend((0..bytes / stride).map(|i| base as usize + i * stride));
}

/// What the workloads need of an allocator.
trait Alloc {
    fn alloc(&mut self, order: u32) -> Option<usize>;
    fn free(&mut self, handle: usize, order: u32);
    /// The workload's state is built: what follows are its steps (for [`Traced`]; nothing
    /// elsewhere).
    #[inline(always)]
    fn mark(&mut self) {}
}

struct Pb<'a, L: LinkStore>(Pool<'a, L>);

impl<L: LinkStore> Alloc for Pb<'_, L> {
    #[inline]
    fn alloc(&mut self, order: u32) -> Option<usize> {
        self.0.alloc(order).ok().map(|p| p as usize)
    }

    #[inline]
    fn free(&mut self, handle: usize, _order: u32) {
        if self.0.put(handle as u64).is_err() {
            fail("floor: put failed")
        }
    }
}

struct Frame(FrameAllocator<{ ORDER_CAP as usize }>);

impl Alloc for Frame {
    #[inline]
    fn alloc(&mut self, order: u32) -> Option<usize> {
        self.0.alloc(1 << order)
    }

    #[inline]
    fn free(&mut self, handle: usize, order: u32) {
        self.0.dealloc(handle, 1 << order)
    }
}

/// The churn state of `a` over `n` pages: every page allocated at order 0, then a random half
/// freed in random order; returns the held half.
fn churn_state<A: Alloc>(n: usize, a: &mut A) -> Vec<usize> {
    let mut all: Vec<usize> = (0..n)
        .map(|_| a.alloc(0).unwrap_or_else(|| fail("churn: fill")))
        .collect();
    Rng::new(SEED_CHURN ^ 1).shuffle(&mut all);
    for &h in &all[n / 2..] {
        a.free(h, 0);
    }
    all.truncate(n / 2);
    all
}

/// Churn on `a` over `n` pages: every page allocated at order 0, a random half freed in random
/// order, then each step frees a random held page and allocates one in its place. ns per step.
fn churn<A: Alloc>(n: usize, rounds: usize, a: &mut A) -> f64 {
    let mut churn = Churn::new(n, a);
    timed(rounds, 1 << 20, || churn.step(a))
}

/// A workload's state, and its step on an allocator.
trait Workload {
    /// One step on `a`. Each implementation is `#[inline(always)]`, so that the step is inlined
    /// into the loop that runs it, as `benches/upstream/harness.c` writes its loops: a step
    /// left out of line (the compiler left the mixed step's closure so, too large to inline at
    /// two call sites) is a call that saves registers, stores a step besides the allocator's
    /// own, which the timing then charges to the allocator.
    fn step<A: Alloc>(&mut self, a: &mut A);
}

/// The churn workload's state: the held pages, and the generator that picks the one to free.
struct Churn {
    all: Vec<usize>,
    rng: Rng,
}

impl Churn {
    /// The churn state of `a` over `n` pages ([`churn_state`]).
    fn new<A: Alloc>(n: usize, a: &mut A) -> Self {
        Churn {
            all: churn_state(n, a),
            rng: Rng::new(SEED_CHURN),
        }
    }
}

impl Workload for Churn {
    #[inline(always)]
    fn step<A: Alloc>(&mut self, a: &mut A) {
        let i = self.rng.below(self.all.len());
        a.free(self.all[i], 0);
        self.all[i] = a.alloc(0).unwrap_or_else(|| fail("churn: alloc"));
    }
}

/// The least an allocator that keeps state per page can do on churn: one 4-byte word a page
/// (held or free), checked and flipped on each free and allocation, and the free pages on a
/// LIFO stack, so that an allocation takes the page freed just before, whose word is cached.
/// What is left is what the workload itself costs: the held page's handle read from its array
/// at a random index, then that page's word, in steps of a few instructions, whose reads the
/// processor overlaps across many steps. Single pages only.
struct Least {
    state: MappedSlice<u32>,
    free: Vec<u32>,
}

impl Least {
    fn new(n: usize) -> Self {
        Least {
            state: map::<u32>(n, Advice::HugePages),
            free: (0..n as u32).rev().collect(),
        }
    }
}

impl Alloc for Least {
    #[inline]
    fn alloc(&mut self, order: u32) -> Option<usize> {
        if order != 0 {
            return None;
        }
        let p = self.free.pop()? as usize;
        match self.state.get_mut(p) {
            Some(w) if *w == 0 => *w = 1,
            _ => fail("least: a listed page is not free"),
        }
        Some(p)
    }

    #[inline]
    fn free(&mut self, handle: usize, _order: u32) {
        match self.state.get_mut(handle) {
            Some(w) if *w == 1 => *w = 0,
            _ => fail("least: freeing a page that is not held"),
        }
        self.free.push(handle as u32);
    }
}

/// The mixed workload over `n` pages: while fewer than half the pages are held, each step
/// allocates a block of a drawn order (`k` with probability 2^-(k+1), redrawn above
/// [`MIXED_MAX_ORDER`]); otherwise it frees a random held block.
struct Mixed {
    held: Vec<(usize, u32)>,
    pages: usize,
    half: usize,
    rng: Rng,
}

impl Mixed {
    fn new(n: usize) -> Self {
        Mixed {
            held: Vec::with_capacity(n),
            pages: 0,
            half: n / 2,
            rng: Rng::new(SEED_MIXED),
        }
    }
}

impl Workload for Mixed {
    #[inline(always)]
    fn step<A: Alloc>(&mut self, a: &mut A) {
        if self.pages < self.half {
            let k = loop {
                let k = (self.rng.next_u64() | (1 << 63)).trailing_zeros();
                if k <= MIXED_MAX_ORDER {
                    break k;
                }
            };
            if let Some(h) = a.alloc(k) {
                self.held.push((h, k));
                self.pages += 1 << k;
            }
        } else {
            let i = self.rng.below(self.held.len());
            let (h, k) = self.held.swap_remove(i);
            a.free(h, k);
            self.pages -= 1 << k;
        }
    }
}

/// Hot, churn and mixed on `make()`'s allocator over `n` pages: ns per pair, step, step.
fn workloads<A: Alloc>(n: usize, rounds: usize, mut make: impl FnMut() -> A) -> [f64; 3] {
    let hot = {
        let mut a = make();
        timed(rounds, 1 << 17, || {
            let h = a.alloc(0).unwrap_or_else(|| fail("hot: alloc"));
            a.free(black_box(h), 0);
        })
    };
    let churn = churn(n, rounds, &mut make());
    let mixed = {
        let mut a = make();
        let mut mixed = Mixed::new(n);
        for _ in 0..2 * n {
            mixed.step(&mut a);
        }
        timed(rounds, 1 << 20, || mixed.step(&mut a))
    };
    [hot, churn, mixed]
}

/// Hot, churn and mixed on `buddy_system_allocator::FrameAllocator` over `n` pages (see
/// [`workloads`]).
fn frame_workloads(n: usize, rounds: usize) -> [f64; 3] {
    workloads(n, rounds, || {
        let mut f = FrameAllocator::new();
        f.add_frame(0, n);
        Frame(f)
    })
}

fn config(n: usize) -> Config {
    Config::new(n).order_cap(ORDER_CAP).zero(ZeroPolicy::Never)
}

/// Bytes of memory the kernel says it can still give (`MemAvailable`), if it says.
fn mem_available() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// KiB of this process's anonymous memory backed by huge pages now (`AnonHugePages`).
fn anon_huge_kib() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/smaps_rollup").ok()?;
    let line = text.lines().find(|l| l.starts_with("AnonHugePages:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

struct Case {
    shift: u32,
    store: Store,
    advice: Advice,
    /// Whether the kernel took the advice for the largest mapping (links, or the arena).
    huge_advised: bool,
    anon_huge_kib: Option<usize>,
    state_bytes: usize,
    floor: Option<f64>,
    /// One read over the same lines with the reads overlapped ([`overlapped`]).
    overlapped: Option<f64>,
    /// hot, churn, mixed
    ns: [Option<f64>; 3],
    note: String,
}

fn map<T: pagebuddy::mapped::ZeroValid>(n: usize, advice: Advice) -> MappedSlice<T> {
    MappedSlice::zeroed(n, advice).unwrap_or_else(|e| fail(&format!("floor: {e}")))
}

fn side_case(shift: u32, advice: Advice, rounds: usize) -> Case {
    let n = 1usize << shift;
    let mut meta = map::<PageMeta>(n, advice);
    let mut links = map::<Link>(n, advice);
    let mut nodes = Vec::with_capacity(n * 12 / LINE + 2);
    lines(meta.as_mut_ptr().cast(), n * 4, LINE, &mut nodes);
    lines(links.as_mut_ptr().cast(), n * 8, LINE, &mut nodes);
    // The floor's rounds before and after the workloads, so that a change of load on the
    // machine meanwhile moves the floor as it moves the workloads.
    // SAFETY: the nodes are the line starts of two live mappings of ours, 64 bytes apart.
    let mut floor_rounds = unsafe { chase(&mut nodes, rounds) };
    // SAFETY: as above.
    let mut overlapped_rounds = unsafe { overlapped(&nodes, rounds) };
    let ns = workloads(n, rounds, || {
        meta.fill(PageMeta::INIT);
        links.fill(Link::EMPTY);
        // SAFETY: each pool is dropped before the next `make` call (the workloads build them
        // one after the other), so these are the only live borrows of the two mappings.
        let (m, l) = unsafe {
            (
                std::slice::from_raw_parts_mut(meta.as_mut_ptr(), n),
                std::slice::from_raw_parts_mut(links.as_mut_ptr(), n),
            )
        };
        match Pool::without_arena(m, SideTable::new(l), config(n)) {
            Ok(p) => Pb(p),
            Err(e) => fail(&format!("floor: pool: {e}")),
        }
    });
    let anon_huge_kib = anon_huge_kib();
    // SAFETY: as above; no pool is alive any more.
    floor_rounds.extend(unsafe { chase(&mut nodes, rounds) });
    // SAFETY: as above.
    overlapped_rounds.extend(unsafe { overlapped(&nodes, rounds) });
    Case {
        shift,
        store: Store::Side,
        advice,
        huge_advised: links.huge_advised(),
        anon_huge_kib,
        state_bytes: n * 12,
        floor: Some(median(floor_rounds)),
        overlapped: Some(median(overlapped_rounds)),
        ns: ns.map(Some),
        note: String::new(),
    }
}

fn intrusive_case(shift: u32, advice: Advice, rounds: usize) -> Case {
    let n = 1usize << shift;
    let arena_bytes = n * PAGE;
    let mut meta = map::<PageMeta>(n, advice);
    let mut arena = map::<u8>(arena_bytes, advice);
    // The whole arena is touched on the way to the churn state and by the floor's chase.
    let room = mem_available();
    // With an eighth of the arena and 1 GiB to spare, for the rest of this process (metadata,
    // the chase's nodes, the workloads' vectors) and the machine's other work. The mappings of
    // the cases before this one are gone: each case drops its own.
    let fits = room.is_some_and(|r| arena_bytes + arena_bytes / 8 + (1 << 30) < r);
    let mut note = String::new();
    if !fits && advice == Advice::HugePages {
        // Even a fresh pool writes a link into the head page of each of its n / 1024 free
        // blocks, and each write commits the 2 MiB around it: half the arena.
        let note = format!(
            "not measured: even a fresh intrusive pool writes a link into each of its {} free \
             blocks, and with huge pages each write commits 2 MiB, {} MiB in all; the machine \
             had {} MiB available",
            n >> (ORDER_CAP - 1),
            (n >> (ORDER_CAP - 1)) * 2,
            room.map_or("an unknown number of".into(), |r| (r >> 20).to_string())
        );
        eprintln!("floor/2^{shift}/intrusive/huge: {note}");
        return Case {
            shift,
            store: Store::Intrusive,
            advice,
            huge_advised: arena.huge_advised(),
            anon_huge_kib: anon_huge_kib(),
            state_bytes: n * 4 + n * LINE,
            floor: None,
            overlapped: None,
            ns: [None; 3],
            note,
        };
    }
    let mut nodes = Vec::new();
    let floor_rounds = if fits {
        nodes.reserve(n + n * 4 / LINE + 1);
        lines(meta.as_mut_ptr().cast(), n * 4, LINE, &mut nodes);
        lines(arena.as_mut_ptr(), arena_bytes, PAGE, &mut nodes);
        // Before and after the workloads, as in `side_case`.
        // SAFETY: the nodes are line starts in two live mappings of ours, at least 64 bytes
        // apart.
        let floor = unsafe { chase(&mut nodes, rounds) };
        // SAFETY: as above.
        Some((floor, unsafe { overlapped(&nodes, rounds) }))
    } else {
        note = format!(
            "floor, churn and mixed not measured: the intrusive pool touches every page of its \
             {} MiB arena on the way to the churn state, and the machine had {} MiB available \
             (the arena, an eighth more and 1 GiB are asked for)",
            arena_bytes >> 20,
            room.map_or("an unknown number of".into(), |r| (r >> 20).to_string())
        );
        eprintln!("floor/2^{shift}/intrusive/{}: {note}", advice_name(advice));
        None
    };
    let mut make = || {
        meta.fill(PageMeta::INIT);
        // SAFETY: as in `side_case`: one pool at a time over these mappings.
        let (m, a) = unsafe {
            (
                std::slice::from_raw_parts_mut(meta.as_mut_ptr(), n),
                std::slice::from_raw_parts_mut(arena.as_mut_ptr(), arena_bytes),
            )
        };
        match Pool::new(Arena::new(a), m, Intrusive, config(n)) {
            Ok(p) => Pb(p),
            Err(e) => fail(&format!("floor: pool: {e}")),
        }
    };
    let ns = if fits {
        workloads(n, rounds, make).map(Some)
    } else {
        let mut a = make();
        let hot = timed(rounds, 1 << 17, || {
            let h = a.alloc(0).unwrap_or_else(|| fail("hot: alloc"));
            a.free(black_box(h), 0);
        });
        [Some(hot), None, None]
    };
    let anon_huge_kib = anon_huge_kib();
    let (floor, over) = floor_rounds.map_or((None, None), |(mut f, mut o)| {
        // SAFETY: as above; no pool is alive any more.
        f.extend(unsafe { chase(&mut nodes, rounds) });
        // SAFETY: as above.
        o.extend(unsafe { overlapped(&nodes, rounds) });
        (Some(median(f)), Some(median(o)))
    });
    Case {
        shift,
        store: Store::Intrusive,
        advice,
        huge_advised: arena.huge_advised(),
        anon_huge_kib,
        state_bytes: n * 4 + n * LINE,
        floor,
        overlapped: over,
        ns,
        note,
    }
}

fn opt(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v:.3}"),
        _ => "null".into(),
    }
}

fn shifts() -> Vec<u32> {
    match std::env::var("BENCH_FLOOR_SHIFTS") {
        Ok(s) if !s.trim().is_empty() => s
            .split(',')
            .map(|x| {
                x.trim()
                    .parse()
                    .ok()
                    .filter(|&k: &u32| (10..=30).contains(&k))
                    .unwrap_or_else(|| fail("BENCH_FLOOR_SHIFTS: log2 page counts, 10 to 30"))
            })
            .collect(),
        _ => vec![14, 18, 22],
    }
}

/// The loop a profile measures: `step` `ops` times. Its own function, never inlined, so that
/// `valgrind --tool=callgrind --toggle-collect='*profiled*'` counts this loop and nothing of the
/// setup; generic, so that the step is inlined into it as into the benchmark's own timed loop
/// (through a `dyn FnMut` every step would be a call, and the time and counts would include it).
#[inline(never)]
fn profiled<F: FnMut()>(ops: usize, step: &mut F) {
    for _ in 0..ops {
        step();
    }
}

/// `ops` untimed steps, so that the caches hold what the steady state holds, then `ops` more
/// through `profiled`.
fn warm_then_profile<F: FnMut()>(ops: usize, step: &mut F) {
    for _ in 0..ops {
        step();
    }
    time_loop(ops, step);
}

/// [`profiled`], then its time per operation on stderr (under valgrind, the simulated time).
/// Named apart from `profiled`: callgrind toggles collection on every function it matches.
fn time_loop<F: FnMut()>(ops: usize, step: &mut F) {
    sampled(ops, || profiled(ops, step));
}

/// `run`, `ops` timed operations, sampled by perf if it listens ([`Sampler`]), then their time
/// per operation on stderr ([`report`]).
fn sampled(ops: usize, run: impl FnOnce()) {
    let sampler = Sampler::from_env();
    let t = Instant::now();
    run();
    let elapsed = t.elapsed();
    drop(sampler);
    report(elapsed, ops);
}

/// `perf record --control` around the timed loop (`scripts/waits.py`): with
/// `BENCH_FLOOR_PERF_CTL` naming perf's control fifo (and `BENCH_FLOOR_PERF_ACK` its
/// acknowledgement fifo), sampling is enabled when a `Sampler` is made and disabled when it is
/// dropped, so that a profile started disabled (`perf record -D -1`) samples the timed steps
/// only, not the state's building nor the untimed steps before them. Nothing without them.
struct Sampler {
    ctl: Option<std::fs::File>,
    ack: Option<std::fs::File>,
}

impl Sampler {
    fn from_env() -> Self {
        let open = |var: &str, write: bool| {
            let path = std::env::var_os(var)?;
            let file = std::fs::OpenOptions::new()
                .read(!write)
                .write(write)
                .open(&path)
                .unwrap_or_else(|e| fail(&format!("{var}: {e}")));
            Some(file)
        };
        let mut s = Sampler {
            ctl: open("BENCH_FLOOR_PERF_CTL", true),
            ack: None,
        };
        if s.ctl.is_some() {
            s.ack = open("BENCH_FLOOR_PERF_ACK", false);
        }
        s.command("enable");
        s
    }

    /// Sends `cmd` to perf and waits for its acknowledgement, if there is a fifo for it.
    fn command(&mut self, cmd: &str) {
        use std::io::{Read, Write};
        let Some(ctl) = self.ctl.as_mut() else {
            return;
        };
        if ctl.write_all(format!("{cmd}\n").as_bytes()).is_err() {
            fail("BENCH_FLOOR_PERF_CTL: perf stopped listening");
        }
        if let Some(ack) = self.ack.as_mut() {
            let mut reply = [0u8; 5];
            if ack.read_exact(&mut reply).is_err() || &reply != b"ack\n\0" {
                fail("BENCH_FLOOR_PERF_ACK: no acknowledgement from perf");
            }
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.command("disable");
    }
}

/// The time per operation of `ops` operations that took `elapsed`, on stderr (under valgrind,
/// the simulated time).
fn report(elapsed: std::time::Duration, ops: usize) {
    eprintln!(
        "{:.2} ns per operation",
        elapsed.as_nanos() as f64 / ops.max(1) as f64
    );
}

/// [`warm_then_profile`] for a [`Workload`]: its steps inlined into the loops, the timed one
/// [`profiled_steps`].
fn warm_then_profile_steps<W: Workload, A: Alloc>(ops: usize, w: &mut W, a: &mut A) {
    for _ in 0..ops {
        w.step(a);
    }
    sampled(ops, || profiled_steps(ops, w, a));
}

/// [`profiled`] for a [`Workload`]: `w`'s step on `a`, `ops` times, inlined into this loop.
/// Named so that callgrind's `--toggle-collect='*profiled*'` collects it as well.
#[inline(never)]
fn profiled_steps<W: Workload, A: Alloc>(ops: usize, w: &mut W, a: &mut A) {
    for _ in 0..ops {
        w.step(a);
    }
}

/// One workload's state at `n` pages on `a`, then `ops` steps of it through `profiled` (hot) or
/// [`profiled_steps`] (churn, mixed).
fn profile_workload<A: Alloc>(workload: &str, n: usize, ops: usize, a: &mut A) {
    match workload {
        "hot" => {
            a.mark();
            warm_then_profile(ops, &mut || {
                let h = a.alloc(0).unwrap_or_else(|| fail("hot: alloc"));
                a.free(black_box(h), 0);
            })
        }
        "churn" => {
            let mut churn = Churn::new(n, a);
            a.mark();
            warm_then_profile_steps(ops, &mut churn, a)
        }
        "mixed" => {
            let mut mixed = Mixed::new(n);
            for _ in 0..2 * n {
                mixed.step(a);
            }
            // The state is built: tell the trace (`BENCH_FLOOR_TRACE`) before the steps profiled.
            a.mark();
            warm_then_profile_steps(ops, &mut mixed, a)
        }
        _ => fail("BENCH_FLOOR_PROFILE: workload is floor, hot, churn, mixed or init"),
    }
}

/// FNV-1a's offset basis and prime, folded over whole 64-bit values (one xor and one multiply
/// a value) for the trace; `benches/upstream/harness.c` folds the same.
const TRACE_BASIS: u64 = 0xCBF2_9CE4_8422_2325;
const TRACE_PRIME: u64 = 0x0100_0000_01B3;

/// An allocator that records what it hands out (`BENCH_FLOOR_TRACE`): how many allocations,
/// a hash of every result in order (a failure as `u64::MAX`), and the first `limit` results
/// after the workload's state is built ([`Alloc::mark`]).
struct Traced<A> {
    inner: A,
    allocs: u64,
    hash: u64,
    marked_at: Option<u64>,
    first: Vec<u64>,
    limit: usize,
}

impl<A: Alloc> Alloc for Traced<A> {
    fn alloc(&mut self, order: u32) -> Option<usize> {
        let r = self.inner.alloc(order);
        let v = r.map_or(u64::MAX, |h| h as u64);
        self.allocs += 1;
        self.hash = (self.hash ^ v).wrapping_mul(TRACE_PRIME);
        if self.marked_at.is_some() && self.first.len() < self.limit {
            self.first.push(v);
        }
        r
    }

    fn free(&mut self, handle: usize, order: u32) {
        self.inner.free(handle, order)
    }

    fn mark(&mut self) {
        self.marked_at = Some(self.allocs);
    }
}

/// The first values of the benchmarks' generator for `BENCH_FLOOR_TRACE`, so that a port of
/// it (`benches/upstream/harness.c`) can be checked against it line for line.
fn trace_rng() {
    let mut line = String::from("trace rng:");
    for seed in [SEED_CHURN, SEED_CHURN ^ 1, SEED_MIXED] {
        let mut r = Rng::new(seed);
        for _ in 0..3 {
            let _ = write!(line, " {:016x}", r.next_u64());
        }
        let _ = write!(line, " {}", r.below(1000));
        let _ = write!(line, " {}", (r.next_u64() | (1 << 63)).trailing_zeros());
    }
    println!("{line}");
}

/// [`profile_workload`] on `a`, through [`Traced`] when `BENCH_FLOOR_TRACE=limit` is set,
/// whose record then goes to stdout (handles are pfns).
fn run_profile<A: Alloc>(workload: &str, n: usize, ops: usize, mut a: A) {
    let Some(limit) = std::env::var("BENCH_FLOOR_TRACE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    else {
        return profile_workload(workload, n, ops, &mut a);
    };
    trace_rng();
    let mut t = Traced {
        inner: a,
        allocs: 0,
        hash: TRACE_BASIS,
        marked_at: None,
        first: Vec::with_capacity(limit),
        limit,
    };
    profile_workload(workload, n, ops, &mut t);
    println!(
        "trace {workload}: allocs {} hash {:016x} marked at {}",
        t.allocs,
        t.hash,
        t.marked_at.unwrap_or(0)
    );
    let mut line = String::from("trace first:");
    for v in &t.first {
        let _ = write!(line, " {v}");
    }
    println!("{line}");
}

/// `BENCH_FLOOR_ZERO`: `never` (the default) or `on-free`, the zero policy of a profile's pool.
fn profile_zero() -> ZeroPolicy {
    match std::env::var("BENCH_FLOOR_ZERO").as_deref() {
        Err(_) | Ok("") | Ok("never") => ZeroPolicy::Never,
        Ok("on-free") => ZeroPolicy::OnFree,
        Ok(_) => fail("BENCH_FLOOR_ZERO: never or on-free"),
    }
}

/// Writes a zero into every 4 KiB page of `bytes` (`BENCH_FLOOR_PREFAULT=1`), so that the
/// kernel commits the mapping before anything is timed, not during the first steps that reach
/// each page.
fn prefault(bytes: &mut [u8]) {
    for b in bytes.iter_mut().step_by(PAGE) {
        // SAFETY: `b` is a valid, exclusive reference; volatile so that the write is kept.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
}

/// The bytes of a mapping, to prefault it.
fn bytes_of<T: pagebuddy::mapped::ZeroValid>(m: &mut MappedSlice<T>) -> &mut [u8] {
    let len = std::mem::size_of_val(&**m);
    // SAFETY: the mapping's `len` bytes are valid for writes, exclusively ours for the borrow;
    // every type a `MappedSlice` holds is valid as zeros, and only zeros are written.
    unsafe { std::slice::from_raw_parts_mut(m.as_mut_ptr().cast::<u8>(), len) }
}

/// `BENCH_FLOOR_PROFILE=workload/store/shift[:ops]` (workload `floor`, `hot`, `churn`, `mixed`
/// or `init`; store `side-table`, `intrusive` or `frame` for FrameAllocator; 4 KiB pages, or
/// huge-page-advised mappings with `BENCH_FLOOR_HUGE=1`): builds that state, runs `ops`
/// operations (default 100,000) untimed and `ops` more through `profiled` or `profiled_steps`,
/// for callgrind's cache simulation to count the misses of those alone (`scripts/misses.py`),
/// and prints the time per operation of the profiled loop (one timed run, for comparing two
/// builds of the pool at a size `alloc.rs` does not run: alternate them, pinned to a core, and
/// take the minimum).
///
/// `init`'s operation is building the pool over its mappings (`Pool::new`, or
/// `Pool::without_arena` for a side table that zeroes nothing). `BENCH_FLOOR_ZERO=on-free`
/// builds the pool zeroing on free (default `never`); a side table then has an arena too.
/// `BENCH_FLOOR_PREFAULT=1` writes into every page of the mappings before the pool is built.
/// `BENCH_FLOOR_TRACE=limit` prints what the pool handed out (`run_profile`).
/// `BENCH_FLOOR_PERF_CTL` and `BENCH_FLOOR_PERF_ACK` enable perf's sampling around the timed
/// loop only ([`Sampler`], `scripts/waits.py`).
/// `scripts/upstream_c.py` runs this mode beside upstream pKVM's allocator.
fn profile(arg: &str) {
    let (name, ops) = match arg.split_once(':') {
        Some((n, o)) => (n, o.parse().unwrap_or(100_000)),
        None => (arg, 100_000usize),
    };
    let parts: Vec<&str> = name.split('/').collect();
    let [workload, store, shift] = parts[..] else {
        fail("BENCH_FLOOR_PROFILE: expected workload/store/shift[:ops]")
    };
    let n = 1usize << shift.parse::<u32>().unwrap_or_else(|_| fail("shift"));
    // 4 KiB pages, as `scripts/misses.py` counts them; `BENCH_FLOOR_HUGE=1` for the mappings
    // of the floor's huge-page rows.
    let advice = if std::env::var_os("BENCH_FLOOR_HUGE").is_some_and(|v| v == "1") {
        Advice::HugePages
    } else {
        Advice::Default
    };
    let zero = profile_zero();
    let cfg = config(n).zero(zero);
    let touch = std::env::var_os("BENCH_FLOOR_PREFAULT").is_some_and(|v| v == "1");
    match store {
        "side-table" => {
            let mut meta = map::<PageMeta>(n, advice);
            let mut links = map::<Link>(n, advice);
            if workload == "floor" {
                let mut nodes = Vec::new();
                lines(meta.as_mut_ptr().cast(), n * 4, LINE, &mut nodes);
                lines(links.as_mut_ptr().cast(), n * 8, LINE, &mut nodes);
                // SAFETY: as in `side_case`.
                return unsafe { chase_for_profile(&mut nodes, ops) };
            }
            // An arena only where the pool writes into it: zeroing.
            let mut arena = (zero != ZeroPolicy::Never).then(|| map::<u8>(n * PAGE, advice));
            if touch {
                prefault(bytes_of(&mut meta));
                prefault(bytes_of(&mut links));
                if let Some(a) = arena.as_mut() {
                    prefault(a);
                }
            }
            meta.fill(PageMeta::INIT);
            links.fill(Link::EMPTY);
            if workload == "init" {
                warm_then_profile(ops, &mut || {
                    let pool = match arena.as_deref_mut() {
                        Some(a) => {
                            Pool::new(Arena::new(a), &mut meta, SideTable::new(&mut links), cfg)
                        }
                        None => Pool::without_arena(&mut meta, SideTable::new(&mut links), cfg),
                    };
                    match pool {
                        Ok(p) => drop(black_box(p)),
                        Err(e) => fail(&format!("floor: pool: {e}")),
                    }
                });
            } else {
                let pool = match arena.as_deref_mut() {
                    Some(a) => Pool::new(Arena::new(a), &mut meta, SideTable::new(&mut links), cfg),
                    None => Pool::without_arena(&mut meta, SideTable::new(&mut links), cfg),
                };
                match pool {
                    Ok(p) => run_profile(workload, n, ops, Pb(p)),
                    Err(e) => fail(&format!("floor: pool: {e}")),
                }
            }
        }
        "intrusive" => {
            let mut meta = map::<PageMeta>(n, advice);
            let mut arena = map::<u8>(n * PAGE, advice);
            if workload == "floor" {
                let mut nodes = Vec::new();
                lines(meta.as_mut_ptr().cast(), n * 4, LINE, &mut nodes);
                lines(arena.as_mut_ptr(), n * PAGE, PAGE, &mut nodes);
                // SAFETY: as in `intrusive_case`.
                return unsafe { chase_for_profile(&mut nodes, ops) };
            }
            if touch {
                prefault(bytes_of(&mut meta));
                prefault(&mut arena);
            }
            meta.fill(PageMeta::INIT);
            if workload == "init" {
                warm_then_profile(ops, &mut || match Pool::new(
                    Arena::new(&mut arena),
                    &mut meta,
                    Intrusive,
                    cfg,
                ) {
                    Ok(p) => drop(black_box(p)),
                    Err(e) => fail(&format!("floor: pool: {e}")),
                });
            } else {
                match Pool::new(Arena::new(&mut arena), &mut meta, Intrusive, cfg) {
                    Ok(p) => run_profile(workload, n, ops, Pb(p)),
                    Err(e) => fail(&format!("floor: pool: {e}")),
                }
            }
        }
        "frame" => {
            if zero != ZeroPolicy::Never || workload == "init" {
                fail("BENCH_FLOOR_PROFILE: frame has no zero policy and no init workload");
            }
            let mut f = FrameAllocator::new();
            f.add_frame(0, n);
            run_profile(workload, n, ops, Frame(f))
        }
        _ => fail("BENCH_FLOOR_PROFILE: store is side-table, intrusive or frame"),
    }
    eprintln!("profiled {ops} operations of {name}");
}

/// The floor's chase for a profile: the cycle built and walked once untimed, then `ops` reads
/// through `profiled`.
///
/// # Safety
/// As [`chase`].
unsafe fn chase_for_profile(nodes: &mut [usize], ops: usize) {
    Rng::new(0xF100_12EE).shuffle(nodes);
    for i in 0..nodes.len() {
        let next = nodes[(i + 1) % nodes.len()];
        // SAFETY: the caller's promise.
        unsafe { *(nodes[i] as *mut usize) = next };
    }
    let mut p = nodes[0];
    let mut read = || {
        // SAFETY: every node holds the address of another node (written above).
        p = unsafe { *(p as *const usize) };
    };
    for _ in 0..nodes.len() {
        read();
    }
    time_loop(ops, &mut read);
    black_box(p);
}

fn main() {
    if let Ok(p) = std::env::var("BENCH_FLOOR_PROFILE") {
        return profile(&p);
    }
    // `cargo bench` passes `--bench`; this target takes no other argument.
    let rounds = if short() { 3 } else { 7 };
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let wall = Instant::now();
    let mut cases = Vec::new();
    let mut peers = Vec::new();
    for shift in shifts() {
        let n = 1usize << shift;
        // FrameAllocator before the pools and again after them, as the floor's rounds run
        // around the workloads: each pool's figures are read against it, so it sees the
        // machine as they did, not only as the last of them left it.
        let frame_before = frame_workloads(n, rounds);
        for store in [Store::Side, Store::Intrusive] {
            for advice in [Advice::Default, Advice::HugePages] {
                let c = match store {
                    Store::Side => side_case(shift, advice, rounds),
                    Store::Intrusive => intrusive_case(shift, advice, rounds),
                };
                let multiple = |x: Option<f64>| match (x, c.floor) {
                    (Some(x), Some(f)) => format!("{x:.1} ns ({:.2}x)", x / f),
                    (Some(x), None) => format!("{x:.1} ns"),
                    _ => "-".into(),
                };
                eprintln!(
                    "floor/2^{shift}/{}/{}: floor {} (overlapped {}), hot {}, churn {}, mixed {}; \
                     huge advised {}, AnonHugePages {} KiB",
                    store.name(),
                    advice_name(advice),
                    c.floor.map_or("-".into(), |f| format!("{f:.1} ns")),
                    c.overlapped.map_or("-".into(), |f| format!("{f:.1} ns")),
                    multiple(c.ns[0]),
                    multiple(c.ns[1]),
                    multiple(c.ns[2]),
                    c.huge_advised,
                    c.anon_huge_kib.map_or("?".into(), |k| k.to_string()),
                );
                cases.push(c);
            }
        }
        let frame_after = frame_workloads(n, rounds);
        let ns = [0, 1, 2].map(|k| (frame_before[k] + frame_after[k]) / 2.0);
        eprintln!(
            "floor/2^{shift}/FrameAllocator: hot {:.1} ns, churn {:.1} ns, mixed {:.1} ns \
             (before the pools {:.1}, {:.1}, {:.1}; after {:.1}, {:.1}, {:.1})",
            ns[0],
            ns[1],
            ns[2],
            frame_before[0],
            frame_before[1],
            frame_before[2],
            frame_after[0],
            frame_after[1],
            frame_after[2],
        );
        peers.push(("bsa-frame", shift, ns.map(Some)));
        let least = churn(n, rounds, &mut Least::new(n));
        eprintln!("floor/2^{shift}/least: churn {least:.1} ns");
        peers.push(("least", shift, [None, Some(least), None]));
    }

    let mut s = String::from("{\n  \"schema\": \"pagebuddy-floor/1\",\n");
    let _ = writeln!(s, "  \"started_unix\": {started},");
    let _ = writeln!(
        s,
        "  \"wall_seconds\": {:.1},",
        wall.elapsed().as_secs_f64()
    );
    let _ = writeln!(s, "  \"short\": {},", short());
    let _ = writeln!(s, "  \"rounds\": {rounds},");
    let _ = writeln!(s, "  \"page_size\": {PAGE},");
    s.push_str("  \"cases\": [\n");
    for (i, c) in cases.iter().enumerate() {
        let _ = write!(
            s,
            "    {{\"pages\": {}, \"shift\": {}, \"store\": {}, \"advice\": {}, \
             \"huge_advised\": {}, \"anon_huge_kib\": {}, \"state_bytes\": {}, \
             \"floor_ns\": {}, \"overlapped_ns\": {}, \"hot_ns\": {}, \"churn_ns\": {}, \
             \"mixed_ns\": {}, \"note\": {}}}",
            1usize << c.shift,
            c.shift,
            json_str(c.store.name()),
            json_str(advice_name(c.advice)),
            c.huge_advised,
            c.anon_huge_kib.map_or("null".into(), |k| k.to_string()),
            c.state_bytes,
            opt(c.floor),
            opt(c.overlapped),
            opt(c.ns[0]),
            opt(c.ns[1]),
            opt(c.ns[2]),
            json_str(&c.note),
        );
        s.push_str(if i + 1 < cases.len() { ",\n" } else { "\n" });
    }
    s.push_str("  ],\n  \"peers\": [\n");
    for (i, (id, shift, ns)) in peers.iter().enumerate() {
        let _ = write!(
            s,
            "    {{\"id\": {}, \"pages\": {}, \"shift\": {shift}, \"hot_ns\": {}, \
             \"churn_ns\": {}, \"mixed_ns\": {}}}",
            json_str(id),
            1usize << shift,
            opt(ns[0]),
            opt(ns[1]),
            opt(ns[2]),
        );
        s.push_str(if i + 1 < peers.len() { ",\n" } else { "\n" });
    }
    s.push_str("  ]\n}\n");
    let dir = target_dir().join("pagebuddy-bench");
    let path = dir.join("floor.json");
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, s)) {
        Ok(()) => eprintln!("wrote {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
}
