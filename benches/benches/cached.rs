//! The per-CPU caches (`CachedPool`) against the exact pool, in one run over the same 2^18-page
//! pool as `alloc.rs`:
//!
//! - criterion groups `cached-hot` (alloc+free of one order-0 page; with `free-list` and
//!   `buddy_system_allocator::Heap` as in `alloc.rs`), `cached-churn` and `cached-mixed` (the
//!   workloads of `alloc.rs`), each with the exact `Pool`, the `CachedPool` (slot 0, through its
//!   lock) and a `LocalCache` that claimed slot 0 (`local`; in `cached-hot` also with `Page`s,
//!   `local-page`); side table, zero never;
//! - `threads`: total alloc+free pairs per second with 1, 2, 4 and 8 threads sharing one
//!   `LockedPool`, one `CachedPool` (a slot per thread, through its lock), one `CachedPool`
//!   with a `LocalCache` per thread (allocating and freeing `Page`s),
//!   `buddy_system_allocator`'s `LockedFrameAllocator` and `LockedHeap`; each thread keeps a
//!   window of 16 order-0 pages, allocating one and freeing its oldest per pair;
//! - `autosize`: the default cache, which sizes each slot by itself, against fixed sizings and
//!   the exact `LockedPool`, at 1 and 2 threads (a slot per thread, through `LocalCache`s) on
//!   four workloads: steady churn (a window of 16 order-0 pages), bursts of 256 and of 1,024
//!   order-0 pages (allocated, then freed), and mixed orders 0..=3 (a window of 16 blocks);
//!   with the sizes each slot converged to and the most pages the caches held against the bound;
//! - `zeroing`: bytes zeroed per second under each zero policy, beside `memset` (and
//!   non-temporal stores) over the same blocks: order-0 blocks (hot in cache) and order-9 blocks
//!   streaming through the whole 1 GiB arena.
//!
//! Besides criterion's estimates the run writes `target/pagebuddy-bench/cached.json`, which
//! `scripts/bench_report.py` turns into a section of `docs/benchmarks.md`.
//! `BENCH_SHORT=1` shortens everything, as in `alloc.rs`.

mod common;

use std::fmt::Write as _;
use std::hint::black_box;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use buddy_system_allocator::{LockedFrameAllocator, LockedHeap};
use common::*;
use criterion::Criterion;
use pagebuddy::{
    cache_blocks, CacheConfig, CacheSlot, CachedPool, LocalCache, LockedPool, PageRef, SideTable,
    SlotSizes, SpinLock, ZeroPolicy,
};

/// The cache configuration measured: the defaults (orders 0..=3, each slot sized by itself from
/// batch 16 and high 64).
const CACHE: CacheConfig = CacheConfig::new();
/// Slots: at least one per thread of the largest threads run (`BENCH_THREADS` may ask for up to
/// this many).
const SLOTS: usize = 64;
/// Thread counts of the threads benchmark unless `BENCH_THREADS` (a comma-separated list) names
/// others.
const THREADS: [usize; 4] = [1, 2, 4, 8];
/// Pages each thread keeps in the threads benchmark.
const WINDOW: usize = 16;
/// Pages each thread allocates, then frees, per burst of the cache-sizing benchmark: more than a
/// default cache holds, so that the default sizing refills and drains through the pool's lock.
const BURST: usize = 256;
/// The larger cache of the cache-sizing benchmark: a burst fits, so a warm cache never takes
/// the pool's lock.
const BIG_CACHE: CacheConfig = CacheConfig::new().batch(64).high(512);

std::thread_local! {
    /// Where `cached_pool` starts its `PageRef`s: at a 128-byte boundary, or (for the
    /// misaligned row of the threads benchmark) 16 bytes past one, as a plain `Vec` of the
    /// system allocator's large blocks starts.
    static REFS_ALIGN: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// `n` fresh `PageRef`s (leaked) starting `skew` bytes past a 128-byte boundary: `CachedPool::new`
/// asks for 0 where CPUs run in parallel, so that two slots' refill batches of consecutive pages
/// never share a cache line.
fn page_refs(n: usize, skew: usize) -> &'static mut [PageRef] {
    let extra = (128 + skew) / std::mem::size_of::<PageRef>();
    let refs: Vec<PageRef> = (0..n + extra).map(|_| PageRef::new()).collect();
    let refs = Box::leak(refs.into_boxed_slice());
    let off = refs.as_ptr().align_offset(128) + skew / std::mem::size_of::<PageRef>();
    &mut refs[off..off + n]
}

/// The thread counts measured: `BENCH_THREADS` (e.g. `1,2,4,8,16`), else `THREADS`.
fn thread_counts() -> Vec<usize> {
    let parsed = std::env::var("BENCH_THREADS").ok().map(|v| {
        v.split(',')
            .map(|t| {
                t.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|&t| (1..=SLOTS).contains(&t))
            })
            .collect::<Option<Vec<usize>>>()
            .unwrap_or_else(|| fail(&format!("BENCH_THREADS={v}: thread counts in 1..={SLOTS}")))
    });
    parsed.unwrap_or_else(|| THREADS.to_vec())
}

type Cpool = CachedPool<'static, SideTable<'static>, SpinLock>;
type Local<'p> = LocalCache<'p, 'static, SideTable<'static>, SpinLock>;

/// A `CachedPool` over the shared memory; the cache storage is leaked (a few per run).
///
/// # Safety
/// As `Pb::side`: no other allocator over `mem` may be alive while the result is.
unsafe fn cached_pool(mem: &mut Mem, zero: ZeroPolicy) -> Cpool {
    // SAFETY: the caller's promise.
    unsafe { cached_pool_with(mem, zero, CACHE) }
}

/// `cached_pool` with the cache configuration `config`.
///
/// # Safety
/// As `cached_pool`.
unsafe fn cached_pool_with(mem: &mut Mem, zero: ZeroPolicy, config: CacheConfig) -> Cpool {
    // SAFETY: the caller's promise.
    unsafe { cached_pool_slots(mem, zero, config, SLOTS) }
}

/// `cached_pool_with` with `slots` slots.
///
/// # Safety
/// As `cached_pool`.
unsafe fn cached_pool_slots(
    mem: &mut Mem,
    zero: ZeroPolicy,
    config: CacheConfig,
    slots: usize,
) -> Cpool {
    // SAFETY: the caller's promise.
    let Pb(pool) = unsafe { Pb::side(mem, zero) };
    let slots: Vec<CacheSlot> = (0..slots).map(|_| CacheSlot::new()).collect();
    let blocks = vec![0u32; cache_blocks(SLOTS, &config)];
    let pool = CachedPool::new(
        LockedPool::new(pool),
        Box::leak(slots.into_boxed_slice()),
        Box::leak(blocks.into_boxed_slice()),
        page_refs(N, REFS_ALIGN.with(|a| a.get())),
        config,
    );
    pool.unwrap_or_else(|e| fail(&format!("CachedPool: {e}")))
}

/// The cached pool through slot 0, for the single-threaded workloads.
struct Cached(Cpool);

impl PageAlloc for Cached {
    #[inline]
    fn alloc(&mut self, order: u32) -> Option<usize> {
        self.0.alloc(0, order).ok().map(|pfn| pfn as usize)
    }

    #[inline]
    fn free(&mut self, handle: usize, _order: u32) {
        if self.0.put(0, handle as u64).is_err() {
            fail("CachedPool: put failed")
        }
    }
}

/// The cached pool through a `LocalCache` on slot 0: no slot lock.
struct Handle<'p>(Local<'p>);

impl PageAlloc for Handle<'_> {
    #[inline]
    fn alloc(&mut self, order: u32) -> Option<usize> {
        self.0.alloc(order).ok().map(|pfn| pfn as usize)
    }

    #[inline]
    fn free(&mut self, handle: usize, _order: u32) {
        if self.0.put(handle as u64).is_err() {
            fail("LocalCache: put failed")
        }
    }
}

/// Claims slot 0 of `pool`.
fn handle(pool: &Cpool) -> Handle<'_> {
    Handle(pool.local(0).unwrap_or_else(|| fail("slot 0 is claimed")))
}

/// The criterion workloads: exact and cached side by side (and the hot pair's fastest peers).
fn criterion_groups(c: &mut Criterion, mem: &mut Mem) {
    let mut g = c.benchmark_group("cached-hot");
    let hot = |a: &mut dyn PageAlloc| {
        let h = a.alloc(0).unwrap_or_else(|| fail("hot: alloc failed"));
        a.free(black_box(h), 0);
    };
    {
        // SAFETY: each allocator is dropped before the next is made over `mem`.
        let mut a = unsafe { Pb::side(mem, ZeroPolicy::Never) };
        g.bench_function("exact", |b| b.iter(|| hot(&mut a)));
    }
    {
        // SAFETY: as above.
        let mut a = Cached(unsafe { cached_pool(mem, ZeroPolicy::Never) });
        g.bench_function("cached", |b| b.iter(|| hot(&mut a)));
    }
    {
        // SAFETY: as above.
        let pool = unsafe { cached_pool(mem, ZeroPolicy::Never) };
        let mut a = handle(&pool);
        g.bench_function("local", |b| b.iter(|| hot(&mut a)));
        // The same pair with a `Page`: held once, freed without an atomic read-modify-write.
        let h = &mut a.0;
        g.bench_function("local-page", |b| {
            b.iter(|| {
                let page = h
                    .alloc_page(0)
                    .unwrap_or_else(|_| fail("hot: alloc failed"));
                if h.free_page(black_box(page)).is_err() {
                    fail("hot: free failed")
                }
            })
        });
    }
    {
        let mut a = FreeListPages::new(mem);
        g.bench_function("free-list", |b| b.iter(|| hot(&mut a)));
    }
    {
        // SAFETY: as above.
        let mut a = unsafe { BsaHeap::new(mem) };
        g.bench_function("bsa-heap", |b| b.iter(|| hot(&mut a)));
    }
    g.finish();

    let budget = Budget::new(Duration::from_secs(60));
    let mut g = c.benchmark_group("cached-churn");
    {
        // SAFETY: as above.
        let mut a = unsafe { Pb::side(mem, ZeroPolicy::Never) };
        let mut held = churn_setup(&mut a, &budget).unwrap_or_else(|_| fail("churn setup"));
        let mut rng = Rng::new(SEED_CHURN);
        g.bench_function("exact", |b| {
            b.iter(|| churn_step(&mut a, &mut held, &mut rng))
        });
    }
    {
        // SAFETY: as above.
        let mut a = Cached(unsafe { cached_pool(mem, ZeroPolicy::Never) });
        let mut held = churn_setup(&mut a, &budget).unwrap_or_else(|_| fail("churn setup"));
        let mut rng = Rng::new(SEED_CHURN);
        g.bench_function("cached", |b| {
            b.iter(|| churn_step(&mut a, &mut held, &mut rng))
        });
    }
    {
        // SAFETY: as above.
        let pool = unsafe { cached_pool(mem, ZeroPolicy::Never) };
        let mut a = handle(&pool);
        let mut held = churn_setup(&mut a, &budget).unwrap_or_else(|_| fail("churn setup"));
        let mut rng = Rng::new(SEED_CHURN);
        g.bench_function("local", |b| {
            b.iter(|| churn_step(&mut a, &mut held, &mut rng))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("cached-mixed");
    {
        // SAFETY: as above.
        let mut a = unsafe { Pb::side(mem, ZeroPolicy::Never) };
        let mut m = Mixed::new();
        m.warm(&mut a, &budget)
            .unwrap_or_else(|_| fail("mixed warm"));
        g.bench_function("exact", |b| b.iter(|| m.step(&mut a)));
    }
    {
        // SAFETY: as above.
        let mut a = Cached(unsafe { cached_pool(mem, ZeroPolicy::Never) });
        let mut m = Mixed::new();
        m.warm(&mut a, &budget)
            .unwrap_or_else(|_| fail("mixed warm"));
        g.bench_function("cached", |b| b.iter(|| m.step(&mut a)));
    }
    {
        // SAFETY: as above.
        let pool = unsafe { cached_pool(mem, ZeroPolicy::Never) };
        let mut a = handle(&pool);
        let mut m = Mixed::new();
        m.warm(&mut a, &budget)
            .unwrap_or_else(|_| fail("mixed warm"));
        g.bench_function("local", |b| b.iter(|| m.step(&mut a)));
    }
    g.finish();
}

/// An allocator shared by threads; `cpu` is the calling thread's index.
trait Shared: Sync {
    fn alloc(&self, cpu: usize) -> Option<usize>;
    fn free(&self, cpu: usize, handle: usize);
}

impl Shared for LockedPool<'static, SideTable<'static>, SpinLock> {
    #[inline]
    fn alloc(&self, _cpu: usize) -> Option<usize> {
        LockedPool::alloc(self, 0).ok().map(|p| p as usize)
    }
    #[inline]
    fn free(&self, _cpu: usize, handle: usize) {
        if LockedPool::put(self, handle as u64).is_err() {
            fail("LockedPool: put failed")
        }
    }
}

impl Shared for Cpool {
    #[inline]
    fn alloc(&self, cpu: usize) -> Option<usize> {
        CachedPool::alloc(self, cpu, 0).ok().map(|p| p as usize)
    }
    #[inline]
    fn free(&self, cpu: usize, handle: usize) {
        if CachedPool::put(self, cpu, handle as u64).is_err() {
            fail("CachedPool: put failed")
        }
    }
}

impl Shared for LockedFrameAllocator<{ ORDER_CAP as usize }> {
    #[inline]
    fn alloc(&self, _cpu: usize) -> Option<usize> {
        self.lock().alloc(1)
    }
    #[inline]
    fn free(&self, _cpu: usize, handle: usize) {
        self.lock().dealloc(handle, 1)
    }
}

impl Shared for LockedHeap<{ 12 + ORDER_CAP as usize }> {
    #[inline]
    fn alloc(&self, _cpu: usize) -> Option<usize> {
        self.lock()
            .alloc(std::alloc::Layout::from_size_align(PAGE, PAGE).ok()?)
            .ok()
            .map(|p| p.as_ptr() as usize)
    }
    #[inline]
    fn free(&self, _cpu: usize, handle: usize) {
        let layout = std::alloc::Layout::from_size_align(PAGE, PAGE).unwrap();
        // SAFETY: `handle` came from `alloc` with the same layout.
        unsafe {
            self.lock()
                .dealloc(NonNull::new_unchecked(handle as *mut u8), layout)
        }
    }
}

/// One thread's view of an allocator in the threads benchmark, made on that thread.
trait Worker {
    /// What names an allocated page.
    type Held;
    fn alloc(&mut self) -> Self::Held;
    fn free(&mut self, held: Self::Held);
}

/// A `Shared` allocator as seen from thread `cpu`.
struct Via<'s, A>(&'s A, usize);

impl<A: Shared> Worker for Via<'_, A> {
    type Held = usize;
    #[inline]
    fn alloc(&mut self) -> usize {
        self.0
            .alloc(self.1)
            .unwrap_or_else(|| fail("threads: alloc"))
    }
    #[inline]
    fn free(&mut self, held: usize) {
        self.0.free(self.1, held)
    }
}

/// A thread's `LocalCache`: pages held once (`Page`), no lock and no atomic read-modify-write on
/// a cache hit.
impl<'p> Worker for Local<'p> {
    type Held = pagebuddy::Page<'p, 'static, SideTable<'static>, SpinLock>;
    #[inline]
    fn alloc(&mut self) -> Self::Held {
        self.alloc_page(0)
            .unwrap_or_else(|_| fail("threads: alloc_page"))
    }
    #[inline]
    fn free(&mut self, held: Self::Held) {
        if self.free_page(held).is_err() {
            fail("threads: free_page")
        }
    }
}

/// CPU time this thread has used, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One timed run: total pairs per second, and the CPUs the threads got on average (their CPU
/// time over the wall-clock time), which falls short of the thread count when other work on the
/// machine takes its share.
#[derive(Clone, Copy)]
struct Run {
    pairs_per_s: f64,
    cpus: f64,
}

/// What each thread of a threads run does.
#[derive(Clone, Copy)]
enum Pattern {
    /// Keep a window of `WINDOW` pages; per pair, allocate one and free the oldest.
    Window,
    /// Allocate `BURST` pages, then free them all, oldest first; a pair per page.
    Burst,
}

/// Pairs per second with `threads` threads for `dur`.
fn pairs_per_second<A: Shared>(a: &A, threads: usize, dur: Duration) -> Run {
    pairs_per_second_with(threads, dur, Pattern::Window, |cpu| Via(a, cpu))
}

/// Pairs per second with `threads` threads for `dur`, each working through `worker(cpu)`, made
/// on the thread, in `pattern`: a window is filled first and freed afterwards; a burst is warmed
/// once before the clock starts.
fn pairs_per_second_with<W: Worker>(
    threads: usize,
    dur: Duration,
    pattern: Pattern,
    worker: impl Fn(usize) -> W + Sync,
) -> Run {
    let start = Barrier::new(threads + 1);
    let stop = AtomicBool::new(false);
    let (total, cpu_ns, elapsed) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|cpu| {
                let (start, stop, worker) = (&start, &stop, &worker);
                s.spawn(move || {
                    let mut a = worker(cpu);
                    let mut held: Vec<W::Held> = Vec::with_capacity(BURST.max(WINDOW));
                    let fill = match pattern {
                        Pattern::Window => WINDOW,
                        Pattern::Burst => BURST,
                    };
                    for _ in 0..fill {
                        held.push(a.alloc());
                    }
                    if let Pattern::Burst = pattern {
                        for h in held.drain(..) {
                            a.free(h);
                        }
                    }
                    start.wait();
                    let cpu0 = thread_cpu_ns();
                    let mut pairs = 0u64;
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        match pattern {
                            Pattern::Window => {
                                for _ in 0..64 {
                                    let new = a.alloc();
                                    a.free(std::mem::replace(&mut held[i], new));
                                    i = (i + 1) % WINDOW;
                                }
                                pairs += 64;
                            }
                            Pattern::Burst => {
                                for _ in 0..BURST {
                                    held.push(a.alloc());
                                }
                                for h in held.drain(..) {
                                    a.free(h);
                                }
                                pairs += BURST as u64;
                            }
                        }
                    }
                    let cpu_ns = thread_cpu_ns().saturating_sub(cpu0);
                    for h in held {
                        a.free(h);
                    }
                    (pairs, cpu_ns)
                })
            })
            .collect();
        start.wait();
        let t = Instant::now();
        std::thread::sleep(dur);
        stop.store(true, Ordering::Relaxed);
        let elapsed = t.elapsed();
        let (total, cpu_ns) = workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .fold((0u64, 0u64), |(p, c), (wp, wc)| (p + wp, c + wc));
        (total, cpu_ns, elapsed)
    });
    Run {
        pairs_per_s: total as f64 / elapsed.as_secs_f64(),
        cpus: cpu_ns as f64 / elapsed.as_nanos() as f64,
    }
}

/// The best (by pairs per second) of `reps` runs of `run(threads)` at each thread count of
/// `counts`. The counts take turns within each round, so that a change in the machine's other
/// load hits them alike.
fn rounds(counts: &[usize], reps: usize, run: impl Fn(usize) -> Run) -> Vec<Run> {
    let mut best = vec![
        Run {
            pairs_per_s: 0.0,
            cpus: 0.0,
        };
        counts.len()
    ];
    for _ in 0..reps {
        for (b, &t) in best.iter_mut().zip(counts) {
            let r = run(t);
            if r.pairs_per_s > b.pairs_per_s {
                *b = r;
            }
        }
    }
    best
}

/// The best of `reps` runs at each thread count.
fn scaling<A: Shared>(a: &A, counts: &[usize], dur: Duration, reps: usize) -> Vec<Run> {
    rounds(counts, reps, |t| pairs_per_second(a, t, dur))
}

/// `scaling` with each thread claiming its own slot of `pool` through a `LocalCache`, in
/// `pattern`.
fn scaling_local(
    pool: &Cpool,
    counts: &[usize],
    pattern: Pattern,
    dur: Duration,
    reps: usize,
) -> Vec<Run> {
    rounds(counts, reps, |t| {
        pairs_per_second_with(t, dur, pattern, |cpu| {
            pool.local(cpu)
                .unwrap_or_else(|| fail("threads: slot claimed"))
        })
    })
}

/// `rows` as the JSON object `name` (thread counts, run length, rows of pairs per second and
/// CPUs used), printed as it goes.
fn threads_json(
    out: &mut String,
    name: &str,
    counts: &[usize],
    dur: Duration,
    reps: usize,
    rows: &[(String, Vec<Run>)],
) {
    let _ = write!(
        out,
        "\"{name}\": {{\"counts\": {counts:?}, \"seconds\": {}, \"reps\": {reps}, \"window\": {WINDOW}, \"burst\": {BURST}, \"rows\": [",
        dur.as_secs_f64()
    );
    for (i, (row, v)) in rows.iter().enumerate() {
        let pairs: Vec<String> = v.iter().map(|r| format!("{:.1}", r.pairs_per_s)).collect();
        let cpus: Vec<String> = v.iter().map(|r| format!("{:.3}", r.cpus)).collect();
        eprintln!(
            "{name}/{row}: [{}] pairs/s, [{}] CPUs used, at {counts:?} threads",
            pairs.join(", "),
            cpus.join(", ")
        );
        let _ = write!(
            out,
            "{}{{\"name\": {}, \"pairs_per_s\": [{}], \"cpus\": [{}]}}",
            if i > 0 { ", " } else { "" },
            json_str(row),
            pairs.join(", "),
            cpus.join(", ")
        );
    }
    out.push_str("]}");
}

fn threads_bench(mem: &mut Mem, out: &mut String) {
    let (dur, reps) = if short() {
        (Duration::from_millis(300), 3)
    } else {
        (Duration::from_secs(1), 5)
    };
    let counts = thread_counts();
    let counts = &counts[..];
    let mut rows: Vec<(String, Vec<Run>)> = Vec::new();
    {
        // SAFETY: each allocator is dropped before the next is made over `mem`.
        let Pb(pool) = unsafe { Pb::side(mem, ZeroPolicy::Never) };
        rows.push((
            "LockedPool".into(),
            scaling(&LockedPool::new(pool), counts, dur, reps),
        ));
    }
    {
        // SAFETY: as above.
        let pool = unsafe { cached_pool(mem, ZeroPolicy::Never) };
        rows.push(("CachedPool".into(), scaling(&pool, counts, dur, reps)));
    }
    {
        // SAFETY: as above.
        let pool = unsafe { cached_pool(mem, ZeroPolicy::Never) };
        let v = scaling_local(&pool, counts, Pattern::Window, dur, reps);
        rows.push(("CachedPool, LocalCache".into(), v));
    }
    {
        // As above, with the `PageRef`s 16 bytes past a 128-byte boundary: a 16-page batch's
        // words then share a cache line with the next batch's, often another thread's.
        REFS_ALIGN.with(|a| a.set(16));
        // SAFETY: as above.
        let pool = unsafe { cached_pool(mem, ZeroPolicy::Never) };
        REFS_ALIGN.with(|a| a.set(0));
        let v = scaling_local(&pool, counts, Pattern::Window, dur, reps);
        rows.push(("CachedPool, LocalCache, refs misaligned".into(), v));
    }
    {
        let f = LockedFrameAllocator::<{ ORDER_CAP as usize }>::new();
        f.lock().add_frame(0, N);
        rows.push((
            "LockedFrameAllocator".into(),
            scaling(&f, counts, dur, reps),
        ));
    }
    {
        let h = LockedHeap::<{ 12 + ORDER_CAP as usize }>::new();
        let start = mem.arena() as usize;
        // SAFETY: the arena is valid and managed by this heap alone while it lives.
        unsafe { h.lock().add_to_heap(start, start + ARENA_BYTES) };
        rows.push(("LockedHeap".into(), scaling(&h, counts, dur, reps)));
    }
    threads_json(out, "threads", counts, dur, reps, &rows);
    out.push_str(", ");
    // Cache sizing: bursts larger than the default cache, which refills and drains a batch at
    // a time through the pool's lock, against a cache that holds a whole burst.
    let mut sizing: Vec<(String, Vec<Run>)> = Vec::new();
    for config in [CACHE, BIG_CACHE] {
        // SAFETY: as above.
        let pool = unsafe { cached_pool_with(mem, ZeroPolicy::Never, config) };
        let name = if config.is_auto() {
            "LocalCache, default (auto)".to_string()
        } else {
            format!("LocalCache, batch {}, high {}", config.batch, config.high)
        };
        sizing.push((
            name,
            scaling_local(&pool, counts, Pattern::Burst, dur, reps),
        ));
    }
    threads_json(out, "sizing", counts, dur, reps, &sizing);
}

/// A workload of the auto-sizing benchmark, per thread.
#[derive(Clone, Copy)]
enum Load {
    /// A window of `WINDOW` order-0 pages: per pair, allocate one and free the oldest.
    Churn,
    /// Allocate this many order-0 pages, then free them, oldest first; a pair per page.
    Burst(usize),
    /// A window of `WINDOW` blocks of orders 0..=3 drawn by a per-thread xorshift.
    Mixed,
}

impl Load {
    fn name(self) -> String {
        match self {
            Load::Churn => "steady churn".into(),
            Load::Burst(n) => format!("bursts of {n}"),
            Load::Mixed => "mixed orders 0..3".into(),
        }
    }
}

/// One thread's allocator in the auto-sizing benchmark: blocks of any order, by pfn.
trait OrderWorker {
    fn alloc(&mut self, order: u32) -> u64;
    fn free(&mut self, pfn: u64);
    /// Pages in this thread's cache and its sizes (none for the exact pool).
    fn probe(&mut self) -> (u32, Option<SlotSizes>);
}

impl OrderWorker for &LockedPool<'static, SideTable<'static>, SpinLock> {
    #[inline]
    fn alloc(&mut self, order: u32) -> u64 {
        LockedPool::alloc(self, order).unwrap_or_else(|_| fail("autosize: alloc"))
    }
    #[inline]
    fn free(&mut self, pfn: u64) {
        if LockedPool::put(self, pfn).is_err() {
            fail("autosize: put")
        }
    }
    fn probe(&mut self) -> (u32, Option<SlotSizes>) {
        (0, None)
    }
}

impl OrderWorker for Local<'_> {
    #[inline]
    fn alloc(&mut self, order: u32) -> u64 {
        LocalCache::alloc(self, order).unwrap_or_else(|_| fail("autosize: alloc"))
    }
    #[inline]
    fn free(&mut self, pfn: u64) {
        if LocalCache::put(self, pfn).is_err() {
            fail("autosize: put")
        }
    }
    fn probe(&mut self) -> (u32, Option<SlotSizes>) {
        (self.cached_pages(), Some(self.sizes()))
    }
}

/// One run of the auto-sizing benchmark: pairs per second, the most pages all caches held
/// (the sum of each slot's most, sampled after every round of the workload) and each slot's
/// sizes at the end.
struct AutoRun {
    pairs_per_s: f64,
    most_cached: u64,
    sizes: Vec<Option<SlotSizes>>,
}

/// `threads` threads, each running `load` through `worker(cpu)` for `dur` after one warm round.
fn auto_run<W: OrderWorker>(
    threads: usize,
    dur: Duration,
    load: Load,
    worker: impl Fn(usize) -> W + Sync,
) -> AutoRun {
    let start = Barrier::new(threads + 1);
    let stop = AtomicBool::new(false);
    let round = |a: &mut W, held: &mut std::collections::VecDeque<u64>, rng: &mut u64| -> u64 {
        let mut next_order = || {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            (*rng % 4) as u32
        };
        match load {
            Load::Churn | Load::Mixed => {
                for _ in 0..64 {
                    let order = if let Load::Mixed = load {
                        next_order()
                    } else {
                        0
                    };
                    held.push_back(a.alloc(order));
                    if let Some(old) = held.pop_front() {
                        a.free(old);
                    }
                }
                64
            }
            Load::Burst(n) => {
                for _ in 0..n {
                    held.push_back(a.alloc(0));
                }
                while let Some(old) = held.pop_front() {
                    a.free(old);
                }
                n as u64
            }
        }
    };
    let (total, most, sizes, elapsed) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|cpu| {
                let (start, stop, worker, round) = (&start, &stop, &worker, &round);
                s.spawn(move || {
                    let mut a = worker(cpu);
                    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (cpu as u64 + 1);
                    let mut held = std::collections::VecDeque::with_capacity(4096);
                    if !matches!(load, Load::Burst(_)) {
                        for _ in 0..WINDOW {
                            held.push_back(a.alloc(0));
                        }
                    }
                    round(&mut a, &mut held, &mut rng);
                    start.wait();
                    let (mut pairs, mut most) = (0u64, 0u32);
                    while !stop.load(Ordering::Relaxed) {
                        pairs += round(&mut a, &mut held, &mut rng);
                        most = most.max(a.probe().0);
                    }
                    for old in held {
                        a.free(old);
                    }
                    (pairs, most, a.probe().1)
                })
            })
            .collect();
        start.wait();
        let t = Instant::now();
        std::thread::sleep(dur);
        stop.store(true, Ordering::Relaxed);
        let elapsed = t.elapsed();
        let mut sizes = Vec::new();
        let (mut total, mut most) = (0u64, 0u64);
        for w in workers {
            let (p, m, s) = w.join().unwrap();
            total += p;
            most += u64::from(m);
            sizes.push(s);
        }
        (total, most, sizes, elapsed)
    });
    AutoRun {
        pairs_per_s: total as f64 / elapsed.as_secs_f64(),
        most_cached: most,
        sizes,
    }
}

/// The default cache against fixed sizings and the exact pool (see the module documentation).
fn autosize_bench(mem: &mut Mem, out: &mut String) {
    let (dur, reps) = if short() {
        (Duration::from_millis(200), 3)
    } else {
        (Duration::from_millis(500), 5)
    };
    let counts = [1usize, 2];
    let loads = [
        Load::Churn,
        Load::Burst(256),
        Load::Burst(1024),
        Load::Mixed,
    ];
    let configs: [(String, Option<CacheConfig>); 5] = [
        ("LockedPool (exact)".into(), None),
        ("default (auto)".into(), Some(CacheConfig::new())),
        (
            "fixed batch 16, high 64".into(),
            Some(CacheConfig::new().batch(16).high(64)),
        ),
        (
            "fixed batch 64, high 512".into(),
            Some(CacheConfig::new().batch(64).high(512)),
        ),
        (
            "fixed batch 256, high 2048".into(),
            Some(CacheConfig::new().batch(256).high(2048)),
        ),
    ];
    let _ = write!(
        out,
        "\"autosize\": {{\"counts\": {counts:?}, \"seconds\": {}, \"reps\": {reps}, \"rows\": [",
        dur.as_secs_f64()
    );
    let mut first = true;
    for load in loads {
        for &t in &counts {
            // The best of `reps` runs per configuration, the configurations taking turns within
            // each round so that a change in the machine's other load hits them alike.
            let mut best: Vec<Option<AutoRun>> = configs.iter().map(|_| None).collect();
            let mut bound = None;
            for _ in 0..reps {
                for (b, (_, config)) in best.iter_mut().zip(&configs) {
                    let r = match config {
                        None => {
                            // SAFETY: each allocator is dropped before the next is made over `mem`.
                            let Pb(pool) = unsafe { Pb::side(mem, ZeroPolicy::Never) };
                            let pool = LockedPool::new(pool);
                            auto_run(t, dur, load, |_| &pool)
                        }
                        Some(config) => {
                            // SAFETY: as above.
                            let pool =
                                unsafe { cached_pool_slots(mem, ZeroPolicy::Never, *config, t) };
                            if config.is_auto() {
                                bound = pool.cache_bound();
                            }
                            auto_run(t, dur, load, |cpu| {
                                pool.local(cpu)
                                    .unwrap_or_else(|| fail("autosize: slot claimed"))
                            })
                        }
                    };
                    if b.as_ref().is_none_or(|b| r.pairs_per_s > b.pairs_per_s) {
                        *b = Some(r);
                    }
                }
            }
            let best: Vec<AutoRun> = best.into_iter().flatten().collect();
            let fixed_best = best[2..].iter().map(|r| r.pairs_per_s).fold(0.0, f64::max);
            let (exact, auto) = (&best[0], &best[1]);
            for ((name, _), r) in configs.iter().zip(&best) {
                let sizes: Vec<String> = r
                    .sizes
                    .iter()
                    .flatten()
                    .map(|s| format!("high {} batch {}", s.high, s.batch))
                    .collect();
                eprintln!(
                    "autosize/{}/{t} threads/{name}: {:.1} M pairs/s, most cached {} pages, sizes [{}]",
                    load.name(),
                    r.pairs_per_s / 1e6,
                    r.most_cached,
                    sizes.join("; ")
                );
                let _ = write!(
                    out,
                    "{}{{\"load\": {}, \"threads\": {t}, \"name\": {}, \"pairs_per_s\": {:.1}, \"most_cached\": {}, \"sizes\": [{}]}}",
                    if first { "" } else { ", " },
                    json_str(&load.name()),
                    json_str(name),
                    r.pairs_per_s,
                    r.most_cached,
                    r.sizes
                        .iter()
                        .flatten()
                        .map(|s| format!("[{}, {}]", s.high, s.batch))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                first = false;
            }
            let bound = bound.unwrap_or(0);
            eprintln!(
                "autosize/{}/{t} threads: default {:.2}x the best fixed sizing, {:.2}x the exact \
                 pool; most cached {} pages, bound {bound} pages: {}",
                load.name(),
                auto.pairs_per_s / fixed_best,
                auto.pairs_per_s / exact.pairs_per_s,
                auto.most_cached,
                if auto.most_cached <= bound {
                    "within"
                } else {
                    "EXCEEDED"
                }
            );
        }
    }
    out.push_str("]}");
}

/// Bytes per nanosecond (GB/s) of `step`, which zeroes `bytes` per call, best of `reps` timed
/// batches of `calls` calls.
fn gbps(bytes: usize, calls: usize, reps: usize, mut step: impl FnMut()) -> f64 {
    step();
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        for _ in 0..calls {
            step();
        }
        best = best.min(t.elapsed().as_nanos() as f64);
    }
    (bytes * calls) as f64 / best
}

/// Non-temporal zeroing (x86-64 `movntdq`, four to a 64-byte line, as the pool's own
/// `zeroing::stream_zero` writes them), for comparison with `memset`.
#[cfg(target_arch = "x86_64")]
fn zero_nt(p: *mut u8, n: usize) {
    use std::arch::x86_64::{__m128i, _mm_setzero_si128, _mm_sfence, _mm_stream_si128};
    let q = p.cast::<__m128i>();
    // SAFETY: callers pass page-aligned ranges of whole pages inside the arena, so every line
    // [q + 4i, q + 4i + 4) with i < n / 64 lies in it and is 16-byte aligned.
    unsafe {
        let z = _mm_setzero_si128();
        for i in 0..n / 64 {
            let line = q.add(4 * i);
            _mm_stream_si128(line, z);
            _mm_stream_si128(line.add(1), z);
            _mm_stream_si128(line.add(2), z);
            _mm_stream_si128(line.add(3), z);
        }
        _mm_sfence();
    }
}

fn zeroing_bench(mem: &mut Mem, out: &mut String) {
    let reps = if short() { 3 } else { 10 };
    let arena = mem.arena();
    let mut rows: Vec<(String, f64, f64)> = Vec::new();
    // Order 0, hot: one page zeroed per pair, in cache.
    let hot = |a: &mut dyn PageAlloc| {
        let h = a.alloc(0).unwrap_or_else(|| fail("zeroing: alloc"));
        a.free(black_box(h), 0);
    };
    let hot_memset = gbps(PAGE, 100_000, reps, || {
        // SAFETY: the first page of the arena, which no allocator uses meanwhile.
        unsafe { black_box(arena).write_bytes(0, PAGE) }
    });
    // Order 9 streaming: every order-9 block of the arena allocated, then every one freed.
    let blocks = N >> HUGE_ORDER;
    let stream_bytes = ARENA_BYTES;
    let mut got = Vec::with_capacity(blocks);
    let mut stream = |a: &mut dyn PageAlloc| {
        for _ in 0..blocks {
            got.push(
                a.alloc(HUGE_ORDER)
                    .unwrap_or_else(|| fail("zeroing: alloc 9")),
            );
        }
        for h in got.drain(..) {
            a.free(h, HUGE_ORDER);
        }
    };
    // One `memset` a block, as the pools call it: without `black_box`, the optimiser turns
    // the loop over consecutive blocks into one `memset` of the whole arena, which the C
    // library writes with non-temporal stores from some size on.
    let stream_memset = gbps(stream_bytes, 1, reps, || {
        for b in 0..blocks {
            // SAFETY: order-9 blocks of the arena, which no allocator uses meanwhile.
            unsafe {
                black_box(arena.add(b * (PAGE << HUGE_ORDER))).write_bytes(0, PAGE << HUGE_ORDER)
            }
        }
    });
    #[cfg(target_arch = "x86_64")]
    let stream_nt = gbps(stream_bytes, 1, reps, || {
        for b in 0..blocks {
            zero_nt(
                arena.wrapping_add(b * (PAGE << HUGE_ORDER)),
                PAGE << HUGE_ORDER,
            );
        }
    });
    #[cfg(not(target_arch = "x86_64"))]
    let stream_nt = 0.0;
    for zero in [ZeroPolicy::OnFree, ZeroPolicy::OnAlloc] {
        {
            // SAFETY: each allocator is dropped before the next is made over `mem`.
            let mut a = unsafe { Pb::side(mem, zero) };
            let h = gbps(PAGE, 100_000, reps, || hot(&mut a));
            let s = gbps(stream_bytes, 1, reps, || stream(&mut a));
            rows.push((format!("Pool, {zero:?}"), h, s));
        }
        // SAFETY: as above.
        let mut a = Cached(unsafe { cached_pool(mem, zero) });
        let h = gbps(PAGE, 100_000, reps, || hot(&mut a));
        let s = gbps(stream_bytes, 1, reps, || stream(&mut a));
        rows.push((format!("CachedPool, {zero:?}"), h, s));
    }
    let _ = write!(
        out,
        "\"zeroing\": {{\"memset_hot\": {hot_memset:.3}, \"memset_stream\": {stream_memset:.3}, \"nt_stream\": {stream_nt:.3}, \"rows\": ["
    );
    eprintln!("zeroing: memset {hot_memset:.1} GB/s (4 KiB, hot), {stream_memset:.1} GB/s (1 GiB in 2 MiB blocks), non-temporal {stream_nt:.1} GB/s");
    for (i, (name, h, s)) in rows.iter().enumerate() {
        eprintln!("zeroing/{name}: {h:.1} GB/s hot, {s:.1} GB/s streaming");
        let _ = write!(
            out,
            "{}{{\"name\": {}, \"hot\": {h:.3}, \"stream\": {s:.3}}}",
            if i > 0 { ", " } else { "" },
            json_str(name)
        );
    }
    out.push_str("]}");
}

fn main() {
    let mut c = criterion(short());
    let mut mem = Mem::new();
    let only = |what: &str| std::env::var("BENCH_CACHED").map_or(true, |v| v.contains(what));
    if only("criterion") {
        criterion_groups(&mut c, &mut mem);
    }
    let mut out = String::from("{");
    if only("threads") {
        threads_bench(&mut mem, &mut out);
        out.push_str(", ");
    }
    if only("autosize") {
        autosize_bench(&mut mem, &mut out);
        out.push_str(", ");
    }
    if only("zeroing") {
        zeroing_bench(&mut mem, &mut out);
        out.push_str(", ");
    }
    let _ = write!(out, "\"short\": {}}}", short());
    let dir = target_dir().join("pagebuddy-bench");
    let _ = std::fs::create_dir_all(&dir);
    if let Err(e) = std::fs::write(dir.join("cached.json"), out + "\n") {
        fail(&format!("writing cached.json: {e}"));
    }
    c.final_summary();
}
