//! Metadata bytes per page of each allocator over the 2^18-page pool, measured rather than
//! estimated: a counting global allocator attributes every heap allocation made inside an
//! allocator's own calls (construction included) to that allocator, and the bytes it keeps in its
//! struct or carves from its region are added. Printed, and written to
//! `target/pagebuddy-bench/footprint.json` for `scripts/bench_report.py`.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::time::Duration;

use common::*;
use pagebuddy::{Intrusive, LinkStore, ZeroPolicy};

/// Whether the current heap traffic is an allocator's own (the benchmark is single-threaded).
static ATTRIBUTE: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ATTRIBUTE.load(Ordering::Relaxed) {
            let live =
                LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed) + layout.size() as isize;
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ATTRIBUTE.load(Ordering::Relaxed) {
            LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn attributed<R>(f: impl FnOnce() -> R) -> R {
    ATTRIBUTE.store(true, Ordering::Relaxed);
    let r = f();
    ATTRIBUTE.store(false, Ordering::Relaxed);
    r
}

/// An allocator whose heap traffic is attributed to it.
struct Counted<A>(A);

impl<A: PageAlloc> PageAlloc for Counted<A> {
    fn alloc(&mut self, order: u32) -> Option<usize> {
        attributed(|| self.0.alloc(order))
    }

    fn free(&mut self, handle: usize, order: u32) {
        attributed(|| self.0.free(handle, order))
    }
}

struct State {
    name: &'static str,
    heap: isize,
    complete: bool,
    note: String,
}

struct Report {
    id: &'static str,
    label: &'static str,
    struct_bytes: usize,
    /// Bytes outside the arena that the caller provides or the allocator carves from its region.
    region_bytes: usize,
    /// Bytes kept inside free blocks (not extra memory).
    in_free_block: usize,
    states: Vec<State>,
    peak_heap: isize,
    how: String,
}

fn measure<A: PageAlloc>(
    budget: Duration,
    mut make: impl FnMut() -> A,
    mut report: Report,
) -> Report {
    LIVE.store(0, Ordering::Relaxed);
    PEAK.store(0, Ordering::Relaxed);
    report.struct_bytes = std::mem::size_of::<A>();
    let state = |name, complete, note: String| State {
        name,
        heap: LIVE.load(Ordering::Relaxed),
        complete,
        note,
    };

    let a = Counted(attributed(&mut make));
    report.states.push(state("free", true, String::new()));
    attributed(|| drop(a));

    let mut a = Counted(attributed(&mut make));
    let mut held = Vec::with_capacity(N);
    fill(&mut a, &mut held);
    report.states.push(state("full", true, String::new()));
    drop(held);
    attributed(|| drop(a));

    let mut a = Counted(attributed(&mut make));
    let s = match churn_setup(&mut a, &Budget::new(budget)) {
        Ok(_) => state("churn", true, String::new()),
        Err(o) => state(
            "churn",
            false,
            format!(
                "setup stopped at the {:.0} s budget after {} of {} frees",
                budget.as_secs_f64(),
                o.done,
                o.total
            ),
        ),
    };
    report.states.push(s);
    attributed(|| drop(a));

    let mut a = Counted(attributed(&mut make));
    let mut m = Mixed::new();
    let s = match m.warm(&mut a, &Budget::new(budget)) {
        Ok(()) => state("mixed", true, String::new()),
        Err(o) => state(
            "mixed",
            false,
            format!(
                "warm-up stopped at the {:.0} s budget after {} of {} steps",
                budget.as_secs_f64(),
                o.done,
                o.total
            ),
        ),
    };
    report.states.push(s);
    drop(m);
    attributed(|| drop(a));

    report.peak_heap = PEAK.load(Ordering::Relaxed);
    report
}

fn blank(
    id: &'static str,
    label: &'static str,
    region: usize,
    in_free: usize,
    how: &str,
) -> Report {
    Report {
        id,
        label,
        struct_bytes: 0,
        region_bytes: region,
        in_free_block: in_free,
        states: Vec::new(),
        peak_heap: 0,
        how: how.into(),
    }
}

fn main() {
    let short = std::env::var_os("BENCH_SHORT").is_some_and(|v| !v.is_empty() && v != "0");
    let budget = Duration::from_secs(if short { 5 } else { 60 });
    let mut mem = Mem::new();
    let mem = &mut mem;
    let mut reports = Vec::new();

    let meta = pagebuddy::meta_bytes(N);
    let links = pagebuddy::link_bytes(N);
    for (id, label, side) in [
        ("pagebuddy-side-never", "pagebuddy, side table", true),
        ("pagebuddy-intrusive-never", "pagebuddy, intrusive", false),
    ] {
        let how = if side {
            "caller-provided PageMeta slice (pagebuddy::meta_bytes: 4 B/page) and SideTable \
             (pagebuddy::link_bytes: 8 B/page); the pool allocates nothing"
        } else {
            "caller-provided PageMeta slice (pagebuddy::meta_bytes: 4 B/page); free-list links \
             live in the first 16 bytes of the head page of each free block with a successor on \
             its list (prev, next, a hint of the block two places on, zeros); the pool allocates \
             nothing"
        };
        let r = blank(
            id,
            label,
            meta + if side { links } else { 0 },
            if side { 0 } else { Intrusive::IN_PAGE_BYTES },
            how,
        );
        // SAFETY: each allocator made here is dropped before the next is made.
        let r = if side {
            measure(
                budget,
                || unsafe { Pb::side(&mut *mem, ZeroPolicy::Never) },
                r,
            )
        } else {
            measure(
                budget,
                || unsafe { Pb::intrusive(&mut *mem, ZeroPolicy::Never) },
                r,
            )
        };
        reports.push(r);
    }

    reports.push(measure(
        budget,
        BsaFrame::new,
        blank(
            "bsa-frame",
            "buddy_system_allocator::FrameAllocator",
            0,
            0,
            "one BTreeSet<usize> per order holding the start of each free block, on the heap \
             (B-tree nodes of up to 11 keys): grows with the number of free blocks; measured \
             with a counting global allocator",
        ),
    ));

    // SAFETY: as above.
    reports.push(measure(
        budget,
        || unsafe { BsaHeap::new(&mut *mem) },
        blank(
            "bsa-heap",
            "buddy_system_allocator::Heap",
            0,
            std::mem::size_of::<usize>(),
            "one intrusive singly linked list head per order in the struct; each free block \
             holds the next pointer (8 B) in its first word; no heap use",
        ),
    ));

    let levels = buddy_alloc_levels(N);
    let ba_bytes = buddy_alloc_meta_bytes(levels);
    let ba_front = BuddyAllocPages::front();
    {
        // SAFETY: as above.
        let a = unsafe { BuddyAllocPages::new(&mut *mem) };
        assert_eq!(
            a.available_bytes(),
            ARENA_BYTES,
            "buddy-alloc: the metadata size derived from its source does not match"
        );
    }
    let how = format!(
        "bitmaps and per-level list heads carved from the front of its region \
         (BuddyAlloc::new in buddy-alloc 0.6: {levels} levels, an 'alloc' bit per block of \
         every level and a 'split' bit per block of levels 1.., level k having \
         2^({levels}-k-1) blocks, plus 40 B per level): {ba_bytes} B, {ba_front} B once the \
         pages are page-aligned, checked with available_bytes() == 2^30; free blocks hold \
         16 B list nodes"
    );
    // SAFETY: as above.
    reports.push(measure(
        budget,
        || unsafe { BuddyAllocPages::new(&mut *mem) },
        blank("buddy-alloc", "buddy-alloc", ba_front, 16, &how),
    ));

    reports.push(measure(
        budget,
        || FreeListPages::new(&*mem),
        blank(
            "free-list",
            "free-list",
            0,
            0,
            "a sorted SmallVec<[PageRange; 16]> of free ranges (16 B each, on the heap past 16 \
             ranges): grows with fragmentation, not with the pool; measured with a counting \
             global allocator",
        ),
    ));

    let mut s = String::from("{\n  \"pages\": ");
    let _ = writeln!(s, "{N},\n  \"page_size\": {PAGE},\n  \"allocators\": [");
    for (i, r) in reports.iter().enumerate() {
        let mut states = String::new();
        for (j, st) in r.states.iter().enumerate() {
            let _ = write!(
                states,
                "{}{{\"state\": {}, \"heap_bytes\": {}, \"complete\": {}, \"note\": {}}}",
                if j > 0 { ", " } else { "" },
                json_str(st.name),
                st.heap,
                st.complete,
                json_str(&st.note)
            );
        }
        let _ = write!(
            s,
            "    {{\"id\": {}, \"label\": {}, \"struct_bytes\": {}, \"region_bytes\": {}, \
             \"in_free_block_bytes\": {}, \"peak_heap_bytes\": {}, \"how\": {}, \"states\": [{states}]}}",
            json_str(r.id),
            json_str(r.label),
            r.struct_bytes,
            r.region_bytes,
            r.in_free_block,
            r.peak_heap,
            json_str(&r.how),
        );
        s.push_str(if i + 1 < reports.len() { ",\n" } else { "\n" });
        let fixed = r.struct_bytes + r.region_bytes;
        print!(
            "{:<42} fixed {:>8} B ({:.3} B/page); heap:",
            r.label,
            fixed,
            fixed as f64 / N as f64
        );
        for st in &r.states {
            print!(
                " {}{} {} B ({:.3} B/page)",
                st.name,
                if st.complete { "" } else { " (partial)" },
                st.heap,
                st.heap as f64 / N as f64
            );
        }
        println!("; peak heap {} B", r.peak_heap);
    }
    s.push_str("  ]\n}\n");
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")))
        .join("pagebuddy-bench");
    let path = dir.join("footprint.json");
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, s)) {
        Ok(()) => eprintln!("wrote {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
}
