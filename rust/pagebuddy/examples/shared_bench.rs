//! Per-operation cost of a shared pool (in the caller's bytes, journaled, behind the owner lock)
//! against the in-process pool (`LockedPool` with a `SpinLock`), on the same workload in the same
//! run: a window of 64 held blocks of orders 0..4, each step freeing the oldest and allocating
//! one (so allocations split and frees coalesce). Each round runs both pools one after the
//! other, timed by the thread's CPU time (on Linux; wall time elsewhere), so that other work on
//! the machine counts less; the ratios still scatter with what shares the caches, so the median
//! of the rounds' ratios is reported beside the best time of each.
//!
//! ```text
//! cargo run --release -p pagebuddy --example shared_bench
//! ```
//!
//! `SHARED_BENCH_ROUNDS=n` runs `n` rounds instead of 15, and `SHARED_BENCH_ONLY=local` or
//! `shared` runs one pool alone: for counting instructions under callgrind.

/// Nanoseconds of CPU time this thread has run (Linux), or since the first call (elsewhere).
#[cfg(target_os = "linux")]
fn now_ns() -> f64 {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: clock_gettime writes one timespec (two 64-bit fields on 64-bit Linux) into `ts`.
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.sec as f64 * 1e9 + ts.nsec as f64
}

#[cfg(not(target_os = "linux"))]
fn now_ns() -> f64 {
    use std::sync::OnceLock;
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as f64
}

use pagebuddy::{Config, Link, LockedPool, PageMeta, Pool, SharedPool, SideTable, SpinLock};

const PAGES: usize = 1 << 14;
const PS: usize = 64;
const STEPS: usize = 500_000;
const ROUNDS: usize = 15;

fn orders() -> Vec<u32> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 5) as u32
        })
        .collect()
}

/// Runs the workload through `alloc` and `put`; nanoseconds per operation.
fn run(mut alloc: impl FnMut(u32) -> u64, mut put: impl FnMut(u64)) -> f64 {
    let orders = orders();
    let mut window = std::collections::VecDeque::new();
    for &order in &orders[..64] {
        window.push_back(alloc(order));
    }
    let t = now_ns();
    for i in 0..STEPS {
        put(window.pop_front().unwrap());
        window.push_back(alloc(orders[i % orders.len()]));
    }
    let ns = (now_ns() - t) / (2 * STEPS) as f64;
    for pfn in window {
        put(pfn);
    }
    ns
}

fn main() {
    let config = Config::new(PAGES)
        .page_size(PS)
        .zero(pagebuddy::ZeroPolicy::Never);
    let rounds_wanted = std::env::var("SHARED_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ROUNDS)
        .max(1);
    let only = std::env::var("SHARED_BENCH_ONLY").unwrap_or_default();
    let mut rounds = Vec::new();
    for _ in 0..rounds_wanted {
        let mut arena = vec![0u8; PAGES * PS];
        let mut meta = vec![PageMeta::INIT; PAGES];
        let mut links = vec![Link::EMPTY; PAGES];
        let pool = Pool::new(
            &mut arena[..],
            &mut meta,
            SideTable::new(&mut links),
            config,
        )
        .unwrap();
        let locked: LockedPool<'_, SideTable<'_>, SpinLock> = LockedPool::new(pool);
        let local = if only == "shared" {
            f64::NAN
        } else {
            run(
                |o| locked.with(|p| p.alloc(o).unwrap()),
                |pfn| locked.with(|p| p.put(pfn).unwrap()),
            )
        };

        let len = 8192 + PAGES * (PS + 12) + PS;
        let mut words = vec![0u64; len / 8 + 1];
        // SAFETY: u64s have no padding; the byte view covers exactly their memory.
        let bytes: &mut [u8] =
            unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), words.len() * 8) };
        let n = pagebuddy::pages_that_fit(bytes.len(), PS, false).min(PAGES);
        let shared = SharedPool::<SideTable>::create_in(
            bytes,
            Config::new(n).page_size(PS).zero(config.zero),
            1,
        )
        .unwrap();
        let remote = if only == "local" {
            f64::NAN
        } else {
            run(
                |o| shared.lock().alloc(o).unwrap(),
                |pfn| shared.lock().put(pfn).unwrap(),
            )
        };
        rounds.push((local, remote));
    }
    for (i, (l, s)) in rounds.iter().enumerate() {
        println!(
            "round {i}: in-process {l:.1} ns/op, shared {s:.1} ns/op, ratio {:.2}",
            s / l
        );
    }
    let best_l = rounds.iter().map(|r| r.0).fold(f64::INFINITY, f64::min);
    let best_s = rounds.iter().map(|r| r.1).fold(f64::INFINITY, f64::min);
    println!(
        "best of {}: in-process {best_l:.1} ns/op, shared {best_s:.1} ns/op, ratio {:.2}",
        rounds.len(),
        best_s / best_l
    );
    let mut ratios: Vec<f64> = rounds.iter().map(|(l, s)| s / l).collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "median ratio of {} rounds: {:.2}",
        ratios.len(),
        ratios[ratios.len() / 2]
    );
}
