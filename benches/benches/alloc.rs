//! Criterion benchmarks: pagebuddy against `buddy_system_allocator` (`FrameAllocator` and `Heap`),
//! `buddy-alloc` and `free-list`, on the same workloads over the same 2^18-page pool.
//!
//! `cargo bench -p pagebuddy-benches --bench alloc` runs them in full; `BENCH_SHORT=1` shortens
//! warm-up and measurement (criterion's own `--warm-up-time`, `--measurement-time` and
//! `--sample-size` still override). Besides criterion's estimates, the run writes
//! `target/pagebuddy-bench/alloc.json`: what each iteration counts, the huge workload's success
//! rates, and every pairing that could not be measured with criterion, with the reason.
//! `scripts/bench_report.py` turns both into `docs/benchmarks.md`.

mod common;

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use common::*;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, SamplingMode};
use pagebuddy::ZeroPolicy;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Pb { side: bool, zero: ZeroPolicy },
    Frame,
    Heap,
    BuddyAlloc,
    FreeList,
    NoAllocator,
}

struct Spec {
    id: &'static str,
    label: &'static str,
    kind: Kind,
}

const fn pb(id: &'static str, label: &'static str, side: bool, zero: ZeroPolicy) -> Spec {
    Spec {
        id,
        label,
        kind: Kind::Pb { side, zero },
    }
}

const SPECS: &[Spec] = &[
    pb(
        "pagebuddy-side-never",
        "pagebuddy, side table, zero never",
        true,
        ZeroPolicy::Never,
    ),
    pb(
        "pagebuddy-intrusive-never",
        "pagebuddy, intrusive, zero never",
        false,
        ZeroPolicy::Never,
    ),
    pb(
        "pagebuddy-side-onfree",
        "pagebuddy, side table, zero on free",
        true,
        ZeroPolicy::OnFree,
    ),
    pb(
        "pagebuddy-intrusive-onfree",
        "pagebuddy, intrusive, zero on free",
        false,
        ZeroPolicy::OnFree,
    ),
    pb(
        "pagebuddy-side-onalloc",
        "pagebuddy, side table, zero on alloc",
        true,
        ZeroPolicy::OnAlloc,
    ),
    pb(
        "pagebuddy-intrusive-onalloc",
        "pagebuddy, intrusive, zero on alloc",
        false,
        ZeroPolicy::OnAlloc,
    ),
    Spec {
        id: "bsa-frame",
        label: "buddy_system_allocator::FrameAllocator",
        kind: Kind::Frame,
    },
    Spec {
        id: "bsa-heap",
        label: "buddy_system_allocator::Heap",
        kind: Kind::Heap,
    },
    Spec {
        id: "buddy-alloc",
        label: "buddy-alloc",
        kind: Kind::BuddyAlloc,
    },
    Spec {
        id: "free-list",
        label: "free-list",
        kind: Kind::FreeList,
    },
    Spec {
        id: "harness",
        label: "harness only (no allocator)",
        kind: Kind::NoAllocator,
    },
];

/// Builds the allocator of `$spec` with a fresh `make` closure and evaluates `$body` with it.
/// Each `make()` result must be dropped before the next call: they share the memory.
macro_rules! with_allocator {
    ($mem:expr, $spec:expr, |$make:ident| $body:expr) => {
        match $spec.kind {
            Kind::Pb { side: true, zero } => {
                // SAFETY: every workload drops an allocator before it makes the next.
                let $make = &mut || unsafe { Pb::side(&mut *$mem, zero) };
                $body
            }
            Kind::Pb { side: false, zero } => {
                // SAFETY: as above.
                let $make = &mut || unsafe { Pb::intrusive(&mut *$mem, zero) };
                $body
            }
            Kind::Frame => {
                let $make = &mut BsaFrame::new;
                $body
            }
            Kind::Heap => {
                // SAFETY: as above.
                let $make = &mut || unsafe { BsaHeap::new(&mut *$mem) };
                $body
            }
            Kind::BuddyAlloc => {
                // SAFETY: as above.
                let $make = &mut || unsafe { BuddyAllocPages::new(&mut *$mem) };
                $body
            }
            Kind::FreeList => {
                let $make = &mut || FreeListPages::new(&*$mem);
                $body
            }
            Kind::NoAllocator => {
                let $make = &mut NoAllocator::default;
                $body
            }
        }
    };
}

/// How a pairing was measured.
enum Status {
    /// Criterion's estimate (in `target/criterion/<workload>/<id>`), per iteration.
    Criterion,
    /// One timed run, too slow for repeated sampling.
    SingleRun { ns_per_op: f64 },
    /// Could not finish within the budget; `ns_per_op_min` is a lower bound when there is one.
    OutOfTime { ns_per_op_min: Option<f64> },
    /// The workload does not apply to this allocator.
    NotApplicable,
}

struct Entry {
    workload: &'static str,
    id: &'static str,
    status: Status,
    ops_per_iter: f64,
    note: String,
    /// (name, value) pairs: success rates and the like.
    extra: Vec<(&'static str, f64)>,
}

struct Settings {
    short: bool,
    /// Wall-clock budget of one untimed setup or one whole-cycle probe.
    budget: Duration,
    /// A whole cycle slower than this is reported from its single timed run.
    single_run_over: Duration,
    /// A per-operation workload slower than this per iteration is reported from a timed probe.
    slow_iter: Duration,
}

struct Runner {
    settings: Settings,
    filter: Option<String>,
    entries: Vec<Entry>,
    perm: Vec<u32>,
}

impl Runner {
    /// Whether criterion would run `group/id` (its filter is a regex; anything beyond a plain
    /// substring is treated as matching, so that criterion decides).
    fn selected(&self, group: &str, id: &str) -> bool {
        match &self.filter {
            None => true,
            Some(f) if f.chars().any(|c| "\\^$.|?*+()[]{}".contains(c)) => true,
            Some(f) => format!("{group}/{id}").contains(f.as_str()),
        }
    }

    fn record(
        &mut self,
        workload: &'static str,
        spec: &Spec,
        status: Status,
        ops: f64,
    ) -> &mut Entry {
        let note = match &status {
            Status::Criterion => "",
            Status::SingleRun { .. } => "single timed run",
            Status::OutOfTime { .. } => "did not finish within the budget",
            Status::NotApplicable => "not applicable",
        };
        eprintln!("{workload}/{}: {note}", spec.id);
        self.entries.push(Entry {
            workload,
            id: spec.id,
            status,
            ops_per_iter: ops,
            note: String::new(),
            extra: Vec::new(),
        });
        self.entries.last_mut().expect("just pushed")
    }

    fn out_of_time(&mut self, workload: &'static str, spec: &Spec, o: OutOfTime, min: Option<f64>) {
        let per = o.elapsed.as_nanos() as f64 / o.done.max(1) as f64;
        let phase = if min.is_some() {
            "the first timed cycle"
        } else {
            "the untimed setup"
        };
        let note = format!(
            "{phase} ({}) did not finish within the {:.0} s budget: {} of {} operations \
             after {:.1} s, {:.0} ns each on average so far",
            o.what,
            self.settings.budget.as_secs_f64(),
            o.done.min(o.total),
            o.total,
            o.elapsed.as_secs_f64(),
            per
        );
        eprintln!("{workload}/{}: {note}", spec.id);
        let e = self.record(
            workload,
            spec,
            Status::OutOfTime { ns_per_op_min: min },
            1.0,
        );
        e.note = note;
    }
}

/// Runs `step` for up to 0.2 s (at most 4096 times): mean time per call.
fn probe(mut step: impl FnMut()) -> (Duration, u32) {
    let start = Instant::now();
    let mut n = 0;
    while n < 4096 && start.elapsed() < Duration::from_millis(200) {
        step();
        n += 1;
    }
    (start.elapsed() / n, n)
}

/// Either hands a per-iteration workload to criterion or, when one iteration is slower than
/// `slow_iter`, reports the probe's mean.
fn per_op_bench(
    g: &mut BenchmarkGroup<'_, WallTime>,
    r: &mut Runner,
    workload: &'static str,
    spec: &Spec,
    ops: f64,
    mut step: impl FnMut(),
) {
    let (mean, n) = probe(&mut step);
    if mean > r.settings.slow_iter {
        let e = r.record(
            workload,
            spec,
            Status::SingleRun {
                ns_per_op: mean.as_nanos() as f64 / ops,
            },
            ops,
        );
        e.note = format!(
            "{:.1} ms per iteration: mean of {n} timed iterations instead of criterion sampling",
            mean.as_secs_f64() * 1e3
        );
        return;
    }
    g.bench_function(spec.id, |b| b.iter(&mut step));
    r.record(workload, spec, Status::Criterion, ops);
}

fn hot<A: PageAlloc>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    r: &mut Runner,
    spec: &Spec,
    make: &mut dyn FnMut() -> A,
) {
    let mut a = make();
    per_op_bench(g, r, "hot", spec, 1.0, || {
        let h = match a.alloc(0) {
            Some(h) => h,
            None => fail("hot: alloc failed"),
        };
        a.free(black_box(h), 0);
    });
}

fn churn<A: PageAlloc>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    r: &mut Runner,
    spec: &Spec,
    make: &mut dyn FnMut() -> A,
) {
    let mut a = make();
    let mut held = match churn_setup(&mut a, &Budget::new(r.settings.budget)) {
        Ok(h) => h,
        Err(o) => return r.out_of_time("churn", spec, o, None),
    };
    let mut rng = Rng::new(SEED_CHURN);
    per_op_bench(g, r, "churn", spec, 1.0, || {
        churn_step(&mut a, &mut held, &mut rng)
    });
    let reuse = churn_reuse(&mut a, &mut held, &mut rng, 1 << 14);
    if let Some(e) = r.entries.last_mut() {
        e.extra.push(("reuse_rate", reuse));
    }
}

fn fill_drain_bench<A: PageAlloc>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    r: &mut Runner,
    spec: &Spec,
    make: &mut dyn FnMut() -> A,
) {
    let mut a = make();
    let mut held = Vec::with_capacity(N);
    let budget = Budget::new(r.settings.budget);
    let perm = std::mem::take(&mut r.perm);
    let t = Instant::now();
    let probe = fill_drain(&mut a, &mut held, &perm, Some(&budget));
    let took = t.elapsed();
    match probe {
        Err(o) => {
            // The whole cycle takes longer than what already ran: a lower bound per page.
            let min = o.elapsed.as_nanos() as f64 / N as f64;
            r.out_of_time("fill-drain", spec, o, Some(min));
        }
        Ok(()) if took > r.settings.single_run_over => {
            let e = r.record(
                "fill-drain",
                spec,
                Status::SingleRun {
                    ns_per_op: took.as_nanos() as f64 / N as f64,
                },
                N as f64,
            );
            e.note = format!(
                "one cycle took {:.2} s: a single timed cycle instead of criterion sampling",
                took.as_secs_f64()
            );
        }
        Ok(()) => {
            g.bench_function(spec.id, |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        if fill_drain(&mut a, &mut held, &perm, None).is_err() {
                            fail("fill-drain")
                        }
                    }
                    start.elapsed()
                })
            });
            r.record("fill-drain", spec, Status::Criterion, N as f64);
        }
    }
    r.perm = perm;
}

fn mixed<A: PageAlloc>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    r: &mut Runner,
    spec: &Spec,
    make: &mut dyn FnMut() -> A,
) {
    let mut a = make();
    let mut m = Mixed::new();
    if let Err(o) = m.warm(&mut a, &Budget::new(r.settings.budget)) {
        return r.out_of_time("mixed", spec, o, None);
    }
    per_op_bench(g, r, "mixed", spec, 1.0, || m.step(&mut a));
    let rate = m.failed as f64 / m.allocs.max(1) as f64;
    if let Some(e) = r.entries.last_mut() {
        e.extra.push(("alloc_failure_rate", rate));
        e.extra.push(("steps", (m.allocs + m.frees) as f64));
    }
}

fn huge<A: PageAlloc>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    r: &mut Runner,
    spec: &Spec,
    make: &mut dyn FnMut() -> A,
) {
    let mut a = make();
    let mut m = Mixed::new();
    if let Err(o) = m.warm(&mut a, &Budget::new(r.settings.budget)) {
        return r.out_of_time("huge", spec, o, None);
    }
    drop(m);
    let mut got = Vec::with_capacity(HUGE_ATTEMPTS);
    let (mut rounds, mut successes) = (0u64, 0u64);
    per_op_bench(g, r, "huge", spec, HUGE_ATTEMPTS as f64, || {
        successes += huge_round(&mut a, &mut got) as u64;
        rounds += 1;
    });
    let rate = successes as f64 / (rounds * HUGE_ATTEMPTS as u64).max(1) as f64;
    eprintln!("huge/{}: success rate {:.1}%", spec.id, rate * 100.0);
    if let Some(e) = r.entries.last_mut() {
        e.extra.push(("success_rate", rate));
        e.extra
            .push(("attempts", (rounds * HUGE_ATTEMPTS as u64) as f64));
    }
}

fn init<A: PageAlloc>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    r: &mut Runner,
    workload: &'static str,
    spec: &Spec,
    make: &mut dyn FnMut() -> A,
) {
    g.bench_function(spec.id, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let a = black_box(make());
                total += start.elapsed();
                drop(a);
            }
            total
        })
    });
    r.record(workload, spec, Status::Criterion, 1.0);
}

/// Criterion's positional filter, if any (options that take a value are skipped with it).
fn criterion_filter() -> Option<String> {
    const WITH_VALUE: &[&str] = &[
        "-c",
        "--color",
        "--colour",
        "-s",
        "--save-baseline",
        "-b",
        "--baseline",
        "--baseline-lenient",
        "--load-baseline",
        "--sample-size",
        "--warm-up-time",
        "--measurement-time",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--quick",
        "--profile-time",
        "--plotting-backend",
        "--output-format",
        "--format",
        "--logfile",
        "--skip",
    ];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if WITH_VALUE.contains(&a.as_str()) {
            if a != "--quick" {
                args.next();
            }
        } else if !a.starts_with('-') {
            return Some(a);
        }
    }
    None
}

fn json_num(x: f64) -> String {
    if x.is_finite() {
        format!("{x}")
    } else {
        "null".into()
    }
}

fn write_notes(r: &Runner, started: std::time::SystemTime, wall: Duration) {
    let mut s = String::from("{\n");
    let since = started
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let _ = writeln!(s, "  \"started_unix\": {since},");
    let _ = writeln!(s, "  \"wall_seconds\": {},", json_num(wall.as_secs_f64()));
    let _ = writeln!(s, "  \"short\": {},", r.settings.short);
    let _ = writeln!(
        s,
        "  \"budget_seconds\": {},",
        json_num(r.settings.budget.as_secs_f64())
    );
    let _ = writeln!(
        s,
        "  \"filter\": {},",
        r.filter.as_deref().map_or("null".into(), json_str)
    );
    let _ = writeln!(
        s,
        "  \"pool\": {{\"pages\": {N}, \"page_size\": {PAGE}, \"order_cap\": {ORDER_CAP}, \
         \"mixed_max_order\": {MIXED_MAX_ORDER}, \"mixed_warm_steps\": {MIXED_WARM_STEPS}, \
         \"huge_order\": {HUGE_ORDER}, \"huge_attempts\": {HUGE_ATTEMPTS}}},"
    );
    s.push_str("  \"allocators\": [\n");
    for (i, spec) in SPECS.iter().enumerate() {
        let (store, zero) = match spec.kind {
            Kind::Pb { side, zero } => (
                json_str(if side { "side-table" } else { "intrusive" }),
                json_str(match zero {
                    ZeroPolicy::Never => "never",
                    ZeroPolicy::OnFree => "on-free",
                    ZeroPolicy::OnAlloc => "on-alloc",
                }),
            ),
            _ => ("null".into(), "null".into()),
        };
        let _ = write!(
            s,
            "    {{\"id\": {}, \"label\": {}, \"pagebuddy\": {}, \"store\": {store}, \"zero\": {zero}}}",
            json_str(spec.id),
            json_str(spec.label),
            matches!(spec.kind, Kind::Pb { .. })
        );
        s.push_str(if i + 1 < SPECS.len() { ",\n" } else { "\n" });
    }
    s.push_str("  ],\n  \"results\": [\n");
    for (i, e) in r.entries.iter().enumerate() {
        let (status, ns) = match e.status {
            Status::Criterion => ("criterion", "null".into()),
            Status::SingleRun { ns_per_op } => ("single-run", json_num(ns_per_op)),
            Status::OutOfTime { ns_per_op_min } => {
                ("out-of-time", ns_per_op_min.map_or("null".into(), json_num))
            }
            Status::NotApplicable => ("not-applicable", "null".into()),
        };
        let mut extra = String::new();
        for (k, v) in &e.extra {
            let _ = write!(extra, ", {}: {}", json_str(k), json_num(*v));
        }
        let _ = write!(
            s,
            "    {{\"workload\": {}, \"id\": {}, \"status\": {}, \"ns_per_op\": {ns}, \
             \"ops_per_iter\": {}, \"note\": {}{extra}}}",
            json_str(e.workload),
            json_str(e.id),
            json_str(status),
            json_num(e.ops_per_iter),
            json_str(&e.note),
        );
        s.push_str(if i + 1 < r.entries.len() { ",\n" } else { "\n" });
    }
    s.push_str("  ]\n}\n");
    let dir = target_dir().join("pagebuddy-bench");
    let path = dir.join("alloc.json");
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, s)) {
        Ok(()) => eprintln!("wrote {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
}

/// `BENCH_PROFILE=workload/id[:iterations]`: runs that one pairing's timed loop (no criterion,
/// no budget) for `perf` or `valgrind --tool=callgrind`, and prints the mean time per operation.
/// `BENCH_PROFILE_PREFAULT=0` skips prefaulting the arena, which only instruction counts allow.
fn profile(spec_arg: &str, mem: &mut Mem) {
    let (name, iters) = match spec_arg.split_once(':') {
        Some((n, i)) => (n, i.parse().unwrap_or(1_000_000)),
        None => (spec_arg, 1_000_000u64),
    };
    let Some((workload, id)) = name.split_once('/') else {
        fail("BENCH_PROFILE: expected workload/id")
    };
    let Some(spec) = SPECS.iter().find(|s| s.id == id) else {
        fail("BENCH_PROFILE: unknown allocator id")
    };
    let budget = Budget::new(Duration::from_secs(3600));
    let ns = with_allocator!(mem, spec, |make| {
        let mut a = make();
        let start;
        let ops;
        match workload {
            "hot" => {
                start = Instant::now();
                for _ in 0..iters {
                    let h = a.alloc(0).unwrap_or_else(|| fail("alloc"));
                    a.free(black_box(h), 0);
                }
                ops = iters;
            }
            "churn" => {
                let mut held = churn_setup(&mut a, &budget).unwrap_or_else(|_| fail("setup"));
                let mut rng = Rng::new(SEED_CHURN);
                start = Instant::now();
                for _ in 0..iters {
                    churn_step(&mut a, &mut held, &mut rng);
                }
                ops = iters;
            }
            "mixed" => {
                let mut m = Mixed::new();
                m.warm(&mut a, &budget).unwrap_or_else(|_| fail("setup"));
                start = Instant::now();
                for _ in 0..iters {
                    m.step(&mut a);
                }
                ops = iters;
            }
            "fill-drain" => {
                let perm = drain_order();
                let mut held = Vec::with_capacity(N);
                start = Instant::now();
                for _ in 0..iters {
                    let _ = fill_drain(&mut a, &mut held, &perm, None);
                }
                ops = iters * N as u64;
            }
            _ => fail("BENCH_PROFILE: workload is hot, churn, mixed or fill-drain"),
        }
        start.elapsed().as_nanos() as f64 / ops as f64
    });
    println!("{name}: {ns:.2} ns per operation");
}

fn main() {
    if let Some(p) = std::env::var_os("BENCH_PROFILE") {
        let prefault = std::env::var_os("BENCH_PROFILE_PREFAULT").is_none_or(|v| v != "0");
        let mut mem = Mem::with_prefault(prefault);
        return profile(&p.to_string_lossy(), &mut mem);
    }
    let short = std::env::var_os("BENCH_SHORT").is_some_and(|v| !v.is_empty() && v != "0");
    let settings = if short {
        Settings {
            short,
            budget: Duration::from_secs(5),
            single_run_over: Duration::from_millis(500),
            slow_iter: Duration::from_millis(5),
        }
    } else {
        Settings {
            short,
            budget: Duration::from_secs(60),
            single_run_over: Duration::from_secs(3),
            slow_iter: Duration::from_millis(20),
        }
    };
    let mut c = criterion(short);

    let started = std::time::SystemTime::now();
    let wall = Instant::now();
    let mut mem = Mem::new();
    let mut r = Runner {
        settings,
        filter: criterion_filter(),
        entries: Vec::new(),
        perm: drain_order(),
    };
    let mem = &mut mem;

    let per_op: &[&'static str] = &["hot", "churn", "fill-drain", "mixed", "huge"];
    for &workload in per_op {
        let mut g = c.benchmark_group(workload);
        if workload == "fill-drain" {
            g.sampling_mode(SamplingMode::Flat);
        }
        for spec in SPECS {
            if !r.selected(workload, spec.id) {
                continue;
            }
            with_allocator!(mem, spec, |make| match workload {
                "hot" => hot(&mut g, &mut r, spec, make),
                "churn" => churn(&mut g, &mut r, spec, make),
                "fill-drain" => fill_drain_bench(&mut g, &mut r, spec, make),
                "mixed" => mixed(&mut g, &mut r, spec, make),
                _ => huge(&mut g, &mut r, spec, make),
            });
        }
        g.finish();
    }

    for workload in ["init", "init-zeroed"] {
        let mut g = c.benchmark_group(workload);
        g.sampling_mode(SamplingMode::Flat);
        for spec in SPECS {
            if !r.selected(workload, spec.id) {
                continue;
            }
            let zeroes = matches!(
                spec.kind,
                Kind::Pb {
                    zero: ZeroPolicy::OnFree,
                    ..
                }
            );
            let applies = match spec.kind {
                Kind::NoAllocator => false,
                Kind::Pb { .. } => zeroes == (workload == "init-zeroed"),
                _ => workload == "init",
            };
            if !applies {
                if workload == "init-zeroed"
                    && !matches!(spec.kind, Kind::Pb { .. } | Kind::NoAllocator)
                {
                    let e = r.record(workload, spec, Status::NotApplicable, 1.0);
                    e.note = "does not zero pages at all".into();
                }
                continue;
            }
            with_allocator!(mem, spec, |make| init(&mut g, &mut r, workload, spec, make));
        }
        g.finish();
    }

    write_notes(&r, started, wall.elapsed());
    c.final_summary();
}
