//! What the benchmark targets share: the memory, one adapter per allocator, the workloads and a
//! deterministic random number generator. Every allocator sees the same pool (2^18 pages of
//! 4 KiB, prefaulted before anything is timed) and the same random streams.

#![allow(dead_code)] // each benchmark target uses a different part of this module

use std::alloc::Layout;
use std::hint::black_box;
use std::path::PathBuf;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use buddy_alloc::buddy_alloc::{BuddyAlloc, BuddyAllocParam};
use buddy_system_allocator::{FrameAllocator, Heap};
use criterion::Criterion;
use free_list::{FreeList, PageLayout, PageRange};
use pagebuddy::{Arena, Config, Intrusive, Link, PageMeta, Pool, SideTable, ZeroPolicy};

/// log2 of the pool size in pages.
pub const POOL_SHIFT: u32 = 18;
/// Pages in the pool.
pub const N: usize = 1 << POOL_SHIFT;
/// Bytes per page.
pub const PAGE: usize = 4096;
/// Bytes of the arena.
pub const ARENA_BYTES: usize = N * PAGE;
/// Pages held in the churn workload, and the target of the mixed workload.
pub const HALF: usize = N / 2;
/// Highest order the mixed workload draws (P(k) ~ 2^-(k+1) for k in 0..=MIXED_MAX_ORDER).
pub const MIXED_MAX_ORDER: u32 = 9;
/// Mixed steps run before the mixed and huge workloads are timed.
pub const MIXED_WARM_STEPS: usize = 1 << 19;
/// Order of the huge workload.
pub const HUGE_ORDER: u32 = 9;
/// Order-9 attempts per huge iteration: as many as half a free pool could hold at best.
pub const HUGE_ATTEMPTS: usize = HALF >> HUGE_ORDER;
/// Largest block, in pages, of the allocators whose cap is configurable: pKVM's MAX_ORDER 11,
/// so orders 0..=10.
pub const ORDER_CAP: u32 = 11;
/// Alignment of the arena: the largest block of the capped allocators (4 MiB), so that
/// address-based buddies (`Heap`) pair exactly as page-number buddies do.
const ARENA_ALIGN: usize = PAGE << (ORDER_CAP - 1);
/// Room in front of the arena, for allocators that carve their metadata from their region.
const FRONT: usize = ARENA_ALIGN;

/// Seeds: one stream per purpose, the same for every allocator.
pub const SEED_CHURN: u64 = 0x9E37_79B9_7F4A_7C15;
pub const SEED_FILL: u64 = 0xD1B5_4A32_D192_ED03;
pub const SEED_MIXED: u64 = 0x2545_F491_4F6C_DD1D;

/// xorshift64* (Vigna): tiny, fast and deterministic.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    #[inline(always)]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (multiply-shift; the bias is below 2^-40 for the sizes used here).
    #[inline(always)]
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// An order in `0..=MIXED_MAX_ORDER` with P(k) proportional to 2^-(k+1).
    #[inline(always)]
    pub fn order(&mut self) -> u32 {
        loop {
            let k = (self.next_u64() | (1 << 63)).trailing_zeros();
            if k <= MIXED_MAX_ORDER {
                return k;
            }
        }
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// A random permutation of `0..N`, the order in which fill-drain frees.
pub fn drain_order() -> Vec<u32> {
    let mut perm: Vec<u32> = (0..N as u32).collect();
    Rng::new(SEED_FILL).shuffle(&mut perm);
    perm
}

#[cold]
#[inline(never)]
pub fn fail(what: &str) -> ! {
    panic!("{what}")
}

/// What every allocator offers the workloads: blocks of 2^order pages, named by a handle (a page
/// frame number or an address), freed with the order they were allocated with.
pub trait PageAlloc {
    fn alloc(&mut self, order: u32) -> Option<usize>;
    fn free(&mut self, handle: usize, order: u32);
}

/// The memory every allocator works in: the arena (2^18 pages, 4 MiB aligned, with 4 MiB of room
/// in front), pagebuddy's metadata and side table, all prefaulted.
pub struct Mem {
    raw: *mut u8,
    base: *mut u8,
    layout: Layout,
    meta: Vec<PageMeta>,
    links: Vec<Link>,
}

impl Mem {
    /// The memory, prefaulted: every byte written, so that every page is resident before
    /// anything is timed.
    pub fn new() -> Self {
        Self::with_prefault(true)
    }

    /// The memory, zeroed; prefaulted only if asked (instruction-count profiles skip it).
    pub fn with_prefault(prefault: bool) -> Self {
        // Over-allocate with a small alignment and align by hand: the allocator then maps fresh
        // zero pages instead of writing zeros over a gigabyte.
        let layout =
            Layout::from_size_align(ARENA_ALIGN + FRONT + ARENA_BYTES, 16).expect("layout");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        if raw.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        let base = raw.wrapping_add(raw.align_offset(ARENA_ALIGN));
        if prefault {
            // SAFETY: `base` is inside the allocation with FRONT + ARENA_BYTES bytes after it.
            unsafe { std::ptr::write_bytes(base, 0, FRONT + ARENA_BYTES) };
        }
        let mut meta = vec![PageMeta::INIT; N];
        let mut links = vec![Link::EMPTY; N];
        black_box((&mut meta, &mut links));
        Mem {
            raw,
            base,
            layout,
            meta,
            links,
        }
    }

    /// The first byte of the arena.
    pub fn arena(&self) -> *mut u8 {
        // SAFETY: FRONT < layout.size().
        unsafe { self.base.add(FRONT) }
    }

    /// The bytes in front of the arena available to an allocator's own metadata.
    pub fn front_bytes(&self) -> usize {
        FRONT
    }
}

impl Default for Mem {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.raw, self.layout) }
    }
}

/// pagebuddy over the shared memory, with either link store.
pub struct Pb<L: pagebuddy::LinkStore>(pub Pool<'static, L>);

/// pagebuddy's configuration for the benchmarks.
pub fn pb_config(zero: ZeroPolicy) -> Config {
    Config::new(N).order_cap(ORDER_CAP).zero(zero)
}

impl Pb<SideTable<'static>> {
    /// # Safety
    /// No other allocator over `mem` may be alive while the result is, and `mem` must outlive it.
    pub unsafe fn side(mem: &mut Mem, zero: ZeroPolicy) -> Self {
        // SAFETY: by the caller's promise, these views are the only ones alive for the pool's
        // life; the arena pointer is valid for ARENA_BYTES bytes.
        let (arena, meta, links) = unsafe {
            (
                Arena::from_raw(NonNull::new_unchecked(mem.arena()), ARENA_BYTES),
                std::slice::from_raw_parts_mut(mem.meta.as_mut_ptr(), N),
                std::slice::from_raw_parts_mut(mem.links.as_mut_ptr(), N),
            )
        };
        match Pool::new(arena, meta, SideTable::new(links), pb_config(zero)) {
            Ok(pool) => Pb(pool),
            Err(e) => fail(&format!("pagebuddy: {e}")),
        }
    }
}

impl Pb<Intrusive> {
    /// # Safety
    /// As [`Pb::side`].
    pub unsafe fn intrusive(mem: &mut Mem, zero: ZeroPolicy) -> Self {
        // SAFETY: as in `side`.
        let (arena, meta) = unsafe {
            (
                Arena::from_raw(NonNull::new_unchecked(mem.arena()), ARENA_BYTES),
                std::slice::from_raw_parts_mut(mem.meta.as_mut_ptr(), N),
            )
        };
        match Pool::new(arena, meta, Intrusive, pb_config(zero)) {
            Ok(pool) => Pb(pool),
            Err(e) => fail(&format!("pagebuddy: {e}")),
        }
    }
}

impl<L: pagebuddy::LinkStore> PageAlloc for Pb<L> {
    #[inline]
    fn alloc(&mut self, order: u32) -> Option<usize> {
        self.0.alloc(order).ok().map(|pfn| pfn as usize)
    }

    #[inline]
    fn free(&mut self, handle: usize, _order: u32) {
        if self.0.put(handle as u64).is_err() {
            fail("pagebuddy: put failed")
        }
    }
}

/// `buddy_system_allocator::FrameAllocator`: frame numbers, free blocks in one `BTreeSet` per
/// order. `ORDER_CAP` orders, like pKVM.
pub struct BsaFrame(FrameAllocator<{ ORDER_CAP as usize }>);

impl BsaFrame {
    pub fn new() -> Self {
        let mut f = FrameAllocator::new();
        f.add_frame(0, N);
        BsaFrame(f)
    }
}

impl Default for BsaFrame {
    fn default() -> Self {
        Self::new()
    }
}

impl PageAlloc for BsaFrame {
    #[inline]
    fn alloc(&mut self, order: u32) -> Option<usize> {
        self.0.alloc(1 << order)
    }

    #[inline]
    fn free(&mut self, handle: usize, order: u32) {
        self.0.dealloc(handle, 1 << order)
    }
}

/// `buddy_system_allocator::Heap` driven with page-size, page-aligned layouts: byte orders up to
/// 12 + 10 (4 MiB blocks, as the frame allocators), free lists linked through the free blocks.
pub struct BsaHeap(Heap<{ 12 + ORDER_CAP as usize }>);

#[inline(always)]
fn page_layout(order: u32) -> Layout {
    // SAFETY: PAGE << order is a multiple of the power-of-two alignment PAGE and far below
    // isize::MAX for order <= 10.
    unsafe { Layout::from_size_align_unchecked(PAGE << order, PAGE) }
}

impl BsaHeap {
    /// # Safety
    /// As [`Pb::side`].
    pub unsafe fn new(mem: &mut Mem) -> Self {
        let mut h = Heap::new();
        let start = mem.arena() as usize;
        // SAFETY: the arena is valid and, by the caller's promise, managed by this heap alone.
        unsafe { h.add_to_heap(start, start + ARENA_BYTES) };
        BsaHeap(h)
    }
}

impl PageAlloc for BsaHeap {
    #[inline]
    fn alloc(&mut self, order: u32) -> Option<usize> {
        self.0
            .alloc(page_layout(order))
            .ok()
            .map(|p| p.as_ptr() as usize)
    }

    #[inline]
    fn free(&mut self, handle: usize, order: u32) {
        // SAFETY: `handle` came from `alloc` with the same order.
        unsafe {
            self.0.dealloc(
                NonNull::new_unchecked(handle as *mut u8),
                page_layout(order),
            )
        }
    }
}

/// Bytes `buddy-alloc` 0.6 carves from the front of its region for `entries_size` levels: one
/// `Entry` (3 pointers) and one list head (`Node`, 2 pointers) per level, one "alloc" bit per
/// block of levels `0..entries_size` and one "split" bit per block of levels `1..entries_size`,
/// level k having 2^(entries_size - k - 1) blocks (`BuddyAlloc::new`).
pub fn buddy_alloc_meta_bytes(entries_size: usize) -> usize {
    let word = std::mem::size_of::<usize>();
    let nblock = |k: usize| 1usize << (entries_size - k - 1);
    let bits = |k: usize| nblock(k).div_ceil(8);
    let alloc: usize = (0..entries_size).map(bits).sum();
    let split: usize = (1..entries_size).map(bits).sum();
    entries_size * (3 * word + 2 * word) + alloc + split
}

/// `entries_size` of a `buddy-alloc` region of `pages` leaves: log2 + 2.
pub fn buddy_alloc_levels(pages: usize) -> usize {
    pages.ilog2() as usize + 2
}

/// `buddy-alloc`'s `BuddyAlloc` (4 KiB leaves): metadata bitmaps in front of the pages, free lists
/// linked through the free blocks, no cap on the order. Its region starts just far enough in front
/// of the arena that the pages it manages are exactly the arena's 2^18.
pub struct BuddyAllocPages(BuddyAlloc);

impl BuddyAllocPages {
    /// Bytes in front of the arena that the region starts at.
    pub fn front() -> usize {
        // The region has N pages plus the metadata pages: fewer than N more, so log2 stays 18.
        buddy_alloc_meta_bytes(buddy_alloc_levels(N)).next_multiple_of(PAGE)
    }

    /// # Safety
    /// As [`Pb::side`].
    pub unsafe fn new(mem: &mut Mem) -> Self {
        let front = Self::front();
        assert!(front <= mem.front_bytes());
        // SAFETY: `front` bytes in front of the arena belong to `mem`.
        let start = unsafe { mem.arena().sub(front) };
        // SAFETY: the region is valid and, by the caller's promise, used by nothing else.
        let a = unsafe { BuddyAlloc::new(BuddyAllocParam::new(start, front + ARENA_BYTES, PAGE)) };
        BuddyAllocPages(a)
    }

    pub fn available_bytes(&self) -> usize {
        self.0.available_bytes()
    }
}

impl PageAlloc for BuddyAllocPages {
    #[inline]
    fn alloc(&mut self, order: u32) -> Option<usize> {
        let p = self.0.malloc(PAGE << order);
        (!p.is_null()).then_some(p as usize)
    }

    #[inline]
    fn free(&mut self, handle: usize, _order: u32) {
        self.0.free(handle as *mut u8)
    }
}

/// `free-list`'s `FreeList`: a sorted vector of free page ranges (16 inline), over the arena's
/// addresses; blocks are requested with their natural alignment, as buddy blocks have it.
pub struct FreeListPages(FreeList<16>);

impl FreeListPages {
    pub fn new(mem: &Mem) -> Self {
        let mut f = FreeList::new();
        let start = mem.arena() as usize;
        let range = PageRange::new(start, start + ARENA_BYTES).expect("range");
        // SAFETY: the range is only handed out as numbers, never dereferenced here.
        unsafe { f.deallocate(range) }.expect("deallocate");
        FreeListPages(f)
    }

    pub fn ranges(&self) -> usize {
        self.0.iter().count()
    }
}

impl PageAlloc for FreeListPages {
    #[inline]
    fn alloc(&mut self, order: u32) -> Option<usize> {
        let size = PAGE << order;
        let layout = match PageLayout::from_size_align(size, size) {
            Ok(l) => l,
            Err(_) => fail("free-list: layout"),
        };
        self.0.allocate(layout).ok().map(|r| r.start())
    }

    #[inline]
    fn free(&mut self, handle: usize, order: u32) {
        let range = match PageRange::from_start_len(handle, PAGE << order) {
            Ok(r) => r,
            Err(_) => fail("free-list: range"),
        };
        // SAFETY: the range was allocated from this list and is no longer used.
        if unsafe { self.0.deallocate(range) }.is_err() {
            fail("free-list: deallocate")
        }
    }
}

/// No allocator at all: what the harness itself costs (RNG, handle bookkeeping, black boxes).
#[derive(Default)]
pub struct NoAllocator(usize);

impl PageAlloc for NoAllocator {
    #[inline]
    fn alloc(&mut self, _order: u32) -> Option<usize> {
        self.0 = self.0.wrapping_add(1);
        Some(black_box(self.0))
    }

    #[inline]
    fn free(&mut self, handle: usize, _order: u32) {
        black_box(handle);
    }
}

/// A wall-clock budget for the untimed setups and for whole-cycle probes, checked every
/// `CHECK_EVERY` operations, so that an allocator whose operations cost O(free blocks) can't
/// stall the run.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    start: Instant,
    limit: Duration,
}

pub const CHECK_EVERY: usize = 1024;

/// An unfinished setup or cycle: how far it got.
#[derive(Clone, Copy, Debug)]
pub struct OutOfTime {
    pub done: usize,
    pub total: usize,
    pub elapsed: Duration,
    pub what: &'static str,
}

impl Budget {
    pub fn new(limit: Duration) -> Self {
        Budget {
            start: Instant::now(),
            limit,
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    #[inline]
    pub fn check(&self, done: usize, total: usize, what: &'static str) -> Result<(), OutOfTime> {
        let elapsed = self.start.elapsed();
        if elapsed > self.limit {
            Err(OutOfTime {
                done,
                total,
                elapsed,
                what,
            })
        } else {
            Ok(())
        }
    }
}

/// Frees `handles` in order, checking the budget every `CHECK_EVERY` frees.
fn free_all<A: PageAlloc>(
    a: &mut A,
    handles: &[usize],
    order: u32,
    budget: &Budget,
    what: &'static str,
) -> Result<(), OutOfTime> {
    for (c, chunk) in handles.chunks(CHECK_EVERY).enumerate() {
        for &h in chunk {
            a.free(h, order);
        }
        budget.check((c + 1) * CHECK_EVERY, handles.len(), what)?;
    }
    Ok(())
}

/// Allocates every page at order 0.
pub fn fill<A: PageAlloc>(a: &mut A, held: &mut Vec<usize>) {
    fill_at(a, held, N);
}

/// Allocates `n` pages at order 0 (every page of a pool of `n`).
fn fill_at<A: PageAlloc>(a: &mut A, held: &mut Vec<usize>, n: usize) {
    held.clear();
    for _ in 0..n {
        match a.alloc(0) {
            Some(h) => held.push(h),
            None => fail("fill: pool exhausted early"),
        }
    }
}

/// The churn state: every page allocated at order 0, then a random half freed in random order;
/// returns the held half.
pub fn churn_setup<A: PageAlloc>(a: &mut A, budget: &Budget) -> Result<Vec<usize>, OutOfTime> {
    churn_setup_at(a, N, budget)
}

/// [`churn_setup`] on a pool of `n` pages.
pub fn churn_setup_at<A: PageAlloc>(
    a: &mut A,
    n: usize,
    budget: &Budget,
) -> Result<Vec<usize>, OutOfTime> {
    let mut all = Vec::with_capacity(n);
    fill_at(a, &mut all, n);
    Rng::new(SEED_CHURN ^ 1).shuffle(&mut all);
    free_all(
        a,
        &all[n / 2..],
        0,
        budget,
        "freeing a random half of the pool",
    )?;
    all.truncate(n / 2);
    Ok(all)
}

/// One churn step: free a random held page, allocate one in its place.
#[inline(always)]
pub fn churn_step<A: PageAlloc>(a: &mut A, held: &mut [usize], rng: &mut Rng) {
    let i = rng.below(held.len());
    churn_at(a, held, i);
}

/// Frees held page `i` and allocates one in its place.
#[inline(always)]
pub fn churn_at<A: PageAlloc>(a: &mut A, held: &mut [usize], i: usize) {
    a.free(held[i], 0);
    held[i] = match a.alloc(0) {
        Some(h) => h,
        None => fail("churn: alloc failed"),
    };
}

/// Runs `steps` more churn steps, untimed, and returns how often the page allocated was the page
/// just freed.
pub fn churn_reuse<A: PageAlloc>(
    a: &mut A,
    held: &mut [usize],
    rng: &mut Rng,
    steps: usize,
) -> f64 {
    let mut same = 0;
    for _ in 0..steps {
        let i = rng.below(held.len());
        let freed = held[i];
        churn_at(a, held, i);
        same += usize::from(held[i] == freed);
    }
    same as f64 / steps.max(1) as f64
}

/// One fill-drain cycle: every page allocated at order 0, then all freed in `order`.
pub fn fill_drain<A: PageAlloc>(
    a: &mut A,
    held: &mut Vec<usize>,
    order: &[u32],
    budget: Option<&Budget>,
) -> Result<(), OutOfTime> {
    fill(a, held);
    for (c, chunk) in order.chunks(CHECK_EVERY).enumerate() {
        for &i in chunk {
            a.free(held[i as usize], 0);
        }
        if let Some(b) = budget {
            b.check(
                (c + 1) * CHECK_EVERY,
                N,
                "draining the pool in random order",
            )?;
        }
    }
    Ok(())
}

/// The mixed workload: orders drawn with P(k) ~ 2^-(k+1), random frees, about half the pages held.
pub struct Mixed {
    pub held: Vec<(usize, u32)>,
    pub held_pages: usize,
    pub rng: Rng,
    pub allocs: u64,
    pub failed: u64,
    pub frees: u64,
}

impl Default for Mixed {
    fn default() -> Self {
        Self::new()
    }
}

impl Mixed {
    pub fn new() -> Self {
        Mixed {
            held: Vec::with_capacity(N),
            held_pages: 0,
            rng: Rng::new(SEED_MIXED),
            allocs: 0,
            failed: 0,
            frees: 0,
        }
    }

    /// One step: below half full, allocate a block of a drawn order; otherwise free a random
    /// held block.
    #[inline(always)]
    pub fn step<A: PageAlloc>(&mut self, a: &mut A) {
        if self.held_pages < HALF {
            let k = self.rng.order();
            self.allocs += 1;
            match a.alloc(k) {
                Some(h) => {
                    self.held.push((h, k));
                    self.held_pages += 1 << k;
                }
                None => self.failed += 1,
            }
        } else {
            let i = self.rng.below(self.held.len());
            let (h, k) = self.held.swap_remove(i);
            self.frees += 1;
            a.free(h, k);
            self.held_pages -= 1 << k;
        }
    }

    /// Runs the untimed warm-up steps that bring the pool to its fragmented, half-full state.
    pub fn warm<A: PageAlloc>(&mut self, a: &mut A, budget: &Budget) -> Result<(), OutOfTime> {
        for c in 0..MIXED_WARM_STEPS / CHECK_EVERY {
            for _ in 0..CHECK_EVERY {
                self.step(a);
            }
            budget.check(
                (c + 1) * CHECK_EVERY,
                MIXED_WARM_STEPS,
                "mixed warm-up steps",
            )?;
        }
        self.allocs = 0;
        self.failed = 0;
        self.frees = 0;
        Ok(())
    }
}

/// One huge iteration: `HUGE_ATTEMPTS` order-9 allocations, then every block obtained freed (last
/// first). Returns how many succeeded.
#[inline(always)]
pub fn huge_round<A: PageAlloc>(a: &mut A, got: &mut Vec<usize>) -> usize {
    got.clear();
    for _ in 0..HUGE_ATTEMPTS {
        if let Some(h) = a.alloc(HUGE_ORDER) {
            got.push(h);
        }
    }
    let n = got.len();
    while let Some(h) = got.pop() {
        a.free(h, HUGE_ORDER);
    }
    n
}

/// `s` as a JSON string literal, for the result files the report generator reads.
pub fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = std::fmt::Write::write_fmt(&mut out, format_args!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Whether `BENCH_SHORT` asks for the short mode.
pub fn short() -> bool {
    std::env::var_os("BENCH_SHORT").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Criterion as every benchmark target here runs it: no plots, the short mode's settings when
/// `short`, then what the command line says.
pub fn criterion(short: bool) -> Criterion {
    let mut c = Criterion::default().without_plots();
    if short {
        c = c
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_millis(700))
            .sample_size(20)
            .nresamples(2000);
    }
    c.configure_from_args()
}

/// Cargo's target directory, where the benchmarks leave their JSON for the report.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")))
}
