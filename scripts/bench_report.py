#!/usr/bin/env python3
"""Write docs/benchmarks.md from one run of scripts/bench.sh (standard library only).

Reads, under the cargo target directory:
  criterion/<workload>/<id>/new/estimates.json   criterion's estimates, per iteration
  pagebuddy-bench/alloc.json        what each iteration counts, success rates, and every pairing
                                    measured without criterion or not at all, with the reason
  pagebuddy-bench/footprint.json    metadata bytes of each allocator
  pagebuddy-bench/instructions.txt  instructions per hot alloc+free pair (callgrind), if any
  pagebuddy-bench/python.json       the Python benchmark (or python.status: why it did not run)
  pagebuddy-bench/python_floor.txt  the side table's floor just before and after it
  pagebuddy-bench/cached.json       the per-CPU caches: threads scaling and zeroing bandwidth
                                    (criterion's cached-* groups beside it)
  pagebuddy-bench/floor.json        the floor: a dependent random read over each pool's state
                                    beside hot, churn and mixed, per size, store and mapping
Nothing is asserted: targets are reported as met or missed with the measured value.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
DATA = TARGET / "pagebuddy-bench"
CRITERION = TARGET / "criterion"

REF = "pagebuddy-side-never"
PB_NEVER = ["pagebuddy-side-never", "pagebuddy-intrusive-never"]
PEERS = ["bsa-frame", "bsa-heap", "buddy-alloc", "free-list"]
SHORT_NAMES = {
    "pagebuddy-side-never": "pagebuddy (side table)",
    "pagebuddy-intrusive-never": "pagebuddy (intrusive)",
    "bsa-frame": "FrameAllocator",
    "bsa-heap": "Heap",
    "buddy-alloc": "buddy-alloc",
    "free-list": "free-list",
}

# workload -> (unit of one operation, what the workload does)
WORKLOADS: dict[str, tuple[str, str]] = {
    "hot": (
        "alloc+free pair",
        "alloc and free of one order-0 page on an otherwise free pool",
    ),
    "churn": (
        "free+alloc step",
        "every page allocated at order 0 and a random half freed (untimed); then each step frees "
        "a random held page and allocates one in its place",
    ),
    "fill-drain": (
        "page (its alloc and its free)",
        "every page allocated at order 0, then all freed in one fixed random order; one "
        "iteration is the whole cycle, reported per page",
    ),
    "mixed": (
        "step (one alloc or one free)",
        "orders 0..9 drawn with P(k) ~ 2^-(k+1); below half full a step allocates, otherwise it "
        "frees a random held block; 2^19 untimed steps first",
    ),
    "huge": (
        "order-9 attempt (and the free of each success)",
        "after the same 2^19 mixed steps (pool half full and fragmented), each iteration tries "
        "256 order-9 allocations (as many as half a pool could hold at best), then frees what it "
        "got",
    ),
    "init": (
        "pool of 2^18 pages",
        "building the allocator over the pool: metadata only (pagebuddy with zero never and on "
        "alloc, which write the same state)",
    ),
    "init-zeroed": (
        "pool of 2^18 pages",
        "building pagebuddy with zero on free, which zeroes the whole 1 GiB arena once",
    ),
}


def load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def fmt_ns(ns: float | None) -> str:
    if ns is None:
        return "-"
    for unit, scale in (("ns", 1.0), ("µs", 1e3), ("ms", 1e6), ("s", 1e9)):
        v = ns / scale
        if v < 999.5 or unit == "s":
            if v < 9.995:
                return f"{v:.2f} {unit}"
            if v < 99.95:
                return f"{v:.1f} {unit}"
            return f"{v:.0f} {unit}"
    return f"{ns:.0f} ns"


def fmt_ratio(r: float) -> str:
    if r < 0.0995:
        return f"{r:.2g}x"
    if r < 9.995:
        return f"{r:.2f}x"
    if r < 99.95:
        return f"{r:.1f}x"
    return f"{r:,.0f}x"


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


class Run:
    """One benchmark run: notes written by the bench binaries and criterion's estimates."""

    def __init__(self) -> None:
        self.alloc = load_json(DATA / "alloc.json")
        self.footprint = load_json(DATA / "footprint.json")
        self.labels: dict[str, str] = {}
        self.results: dict[tuple[str, str], dict[str, Any]] = {}
        if self.alloc:
            self.labels = {a["id"]: a["label"] for a in self.alloc["allocators"]}
            for r in self.alloc["results"]:
                self.results[(r["workload"], r["id"])] = r

    def criterion_ns(self, workload: str, ident: str) -> tuple[float | None, str, tuple]:
        """Criterion's estimate per iteration (slope if linear sampling, else mean), the
        reason when there is none, and the 95% confidence interval."""
        path = CRITERION / workload / ident / "new" / "estimates.json"
        est = load_json(path)
        if est is None:
            return None, "criterion estimate missing", ()
        started = (self.alloc or {}).get("started_unix", 0)
        if path.stat().st_mtime + 1 < started:
            return None, "criterion estimate is older than this run", ()
        pick = est.get("slope") or est.get("mean")
        ci = pick["confidence_interval"]
        return float(pick["point_estimate"]), "", (ci["lower_bound"], ci["upper_bound"])

    def measure(self, workload: str, ident: str) -> dict[str, Any]:
        """ns per operation, or why there is none: keys ns, kind, note, entry."""
        r = self.results.get((workload, ident))
        if r is None:
            return {"ns": None, "kind": "none", "note": "not run", "entry": {}}
        status = r["status"]
        if status == "criterion":
            ns, why, ci = self.criterion_ns(workload, ident)
            if ns is None:
                return {"ns": None, "kind": "none", "note": why, "entry": r}
            ops = r["ops_per_iter"]
            return {
                "ns": ns / ops,
                "kind": "ns",
                "note": "",
                "entry": r,
                "ci": tuple(x / ops for x in ci),
            }
        if status == "single-run":
            return {"ns": r["ns_per_op"], "kind": "single", "note": r["note"], "entry": r}
        if status == "out-of-time":
            kind = "lower-bound" if r["ns_per_op"] is not None else "none"
            return {"ns": r["ns_per_op"], "kind": kind, "note": r["note"], "entry": r}
        return {"ns": None, "kind": "none", "note": r["note"] or status, "entry": r}


class Notes:
    """Numbered notes under a table."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def ref(self, text: str) -> str:
        if text not in self.items:
            self.items.append(text)
        return f"[{self.items.index(text) + 1}]"

    def render(self) -> list[str]:
        return [f"{i + 1}. {t}" for i, t in enumerate(self.items)] + ([""] if self.items else [])


def cell(m: dict[str, Any], notes: Notes, ref_ns: float | None, ratio: bool = True) -> str:
    kind, ns = m["kind"], m["ns"]
    if kind == "none":
        return f"not measured {notes.ref(m['note'])}"
    text = fmt_ns(ns)
    if kind == "lower-bound":
        text = f"≥ {text}"
    if ratio and ref_ns:
        text += f" ({'≥ ' if kind == 'lower-bound' else ''}{fmt_ratio(ns / ref_ns)})"
    if kind in ("single", "lower-bound"):
        text += f" {notes.ref(m['note'])}"
    return text


def extras(m: dict[str, Any]) -> str:
    e = m["entry"]
    parts: list[str] = []
    if e.get("id") == "harness":
        return ""
    if "success_rate" in e:
        parts.append(f"success rate {pct(e['success_rate'])} of {int(e['attempts']):,} attempts")
    if "reuse_rate" in e:
        parts.append(f"re-allocated the page just freed in {pct(e['reuse_rate'])} of steps")
    if e.get("alloc_failure_rate"):
        parts.append(f"{pct(e['alloc_failure_rate'])} of allocations failed")
    return "; ".join(parts)


def machine() -> dict[str, str]:
    cpu = "unknown"
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    if "model name" in fields:
        cpu = fields["model name"]
        if "cpu family" in fields and "model" in fields:
            cpu += f" (family {fields['cpu family']}, model {fields['model']})"

    def run(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return "unknown"

    thp = "unknown"
    with contextlib.suppress(OSError):
        thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    load = []
    for name in ("loadavg.before", "loadavg.after"):
        try:
            load.append(" ".join((DATA / name).read_text().split()[:3]))
        except OSError:
            load.append("?")
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "kernel": platform.release(),
        "rustc": run("rustc", "--version") or "unknown",
        "thp": thp,
        "load": f"{load[0]} before, {load[1]} after",
    }


def pinning() -> str:
    """How the single-threaded benchmarks were placed on the CPUs (`pin.txt`, from bench.sh)."""
    try:
        pin = (DATA / "pin.txt").read_text().strip()
    except OSError:
        pin = ""
    if pin and pin != "none":
        return (
            f"- The single-threaded benchmarks (this table's, the layout, the floor, the "
            f"footprint and the core's side of the Python benchmark) ran pinned to one CPU "
            f"(`{pin}`); the threaded ones and the Python benchmark were not."
        )
    return "- No benchmark was pinned to a CPU (one CPU, or no `taskset`)."


def busy(m: dict[str, str]) -> str:
    """A warning when other work shared the machine during the run."""
    try:
        load = max(float(x.split()[0]) for x in m["load"].split(", ") if x[0].isdigit())
        cores = int(m["cores"])
    except (ValueError, KeyError):
        return ""
    if load <= cores:
        return ""
    return (
        f". **The machine was busy with other work** (1-minute load {load:.1f} on {cores} "
        "cores): absolute times are inflated and noisier than on an idle machine; the "
        "instruction counts are not affected"
    )


def instructions() -> tuple[dict[tuple[str, str], int], str]:
    """Instructions per operation from callgrind, keyed by (workload, id)."""
    counts: dict[tuple[str, str], int] = {}
    try:
        text = (DATA / "instructions.txt").read_text()
    except OSError:
        return counts, "not measured (no instructions.txt)"
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2].isdigit():
            counts[(parts[0], parts[1])] = int(parts[2])
    return counts, "" if counts else text.strip()


def overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two criterion measurements' 95% confidence intervals overlap."""
    ca, cb = a.get("ci"), b.get("ci")
    return bool(ca and cb and ca[0] <= cb[1] and cb[0] <= ca[1])


def rust_tables(run: Run, out: list[str]) -> None:
    ref_label = run.labels.get(REF, REF)
    out += [
        "## Rust: time per operation, and ratio to pagebuddy",
        "",
        f"Reference: **{ref_label}**. The ratio is the allocator's time divided by the "
        "reference's: above 1 the reference is faster. Peers don't zero pages, so they are "
        "compared with zeroing off; the zero policies are measured on their own below.",
        "",
    ]
    cols = PB_NEVER + PEERS
    out.append("| workload | unit | " + " | ".join(SHORT_NAMES[c] for c in cols) + " |")
    out.append("|---|---|" + "---|" * len(cols))
    notes = Notes()
    for w, (unit, _) in WORKLOADS.items():
        if w == "init-zeroed":
            continue
        ref_ns = run.measure(w, REF)["ns"]
        cells = [cell(run.measure(w, c), notes, ref_ns) for c in cols]
        out.append(f"| {w} | {unit} | " + " | ".join(cells) + " |")
    out.append("")
    out += notes.render()

    out += ["### Every allocator and zero policy, per workload", ""]
    for w, (unit, what) in WORKLOADS.items():
        notes = Notes()
        ref_ns = run.measure(w, REF)["ns"]
        out += [f"**{w}** ({what}); time per {unit}:", ""]
        out += [
            "| allocator | time | 95% CI | ratio to reference | notes |",
            "|---|---|---|---|---|",
        ]
        for ident, label in run.labels.items():
            m = run.measure(w, ident)
            if m["entry"] == {} and m["note"] == "not run":
                continue
            if m["kind"] == "none":
                out.append(f"| {label} | not measured | - | - | {m['note']} |")
                continue
            t = fmt_ns(m["ns"])
            if m["kind"] == "lower-bound":
                t = f"≥ {t}"
            r = fmt_ratio(m["ns"] / ref_ns) if ref_ns else "-"
            if m["kind"] == "lower-bound" and ref_ns:
                r = f"≥ {r}"
            note = "; ".join(x for x in (m["note"], extras(m)) if x)
            ci = m.get("ci")
            ci_text = f"{fmt_ns(ci[0])} to {fmt_ns(ci[1])}" if ci else "-"
            out.append(f"| {label} | {t} | {ci_text} | {r} | {note} |")
        out.append("")


def footprint_table(run: Run, out: list[str]) -> None:
    out += ["## Metadata bytes per page", ""]
    fp = run.footprint
    if not fp:
        out += ["Not measured: `target/pagebuddy-bench/footprint.json` is missing.", ""]
        return
    pages = fp["pages"]
    out += [
        f"Over the same pool of {pages:,} pages. *Fixed* is the allocator's struct plus the "
        "table the caller provides or the allocator carves from its region; *heap* is what it "
        "allocated from the global allocator, counted by a counting global allocator that "
        "attributes to an allocator only the allocations made inside its own calls, in four "
        "states: just built (free), every page allocated (full), the churn state (half held at "
        "random) and the mixed state. Bytes kept inside free blocks cost no extra memory and "
        "are listed apart.",
        "",
        "| allocator | fixed | heap: free / full / churn / mixed | B/page, free pool | "
        "B/page, worst state | in each free block | how it was derived |",
        "|---|---|---|---|---|---|---|",
    ]
    for a in fp["allocators"]:
        fixed = a["struct_bytes"] + a["region_bytes"]
        heaps = []
        worst = 0
        for s in a["states"]:
            h = s["heap_bytes"]
            worst = max(worst, h)
            heaps.append(f"{h:,}" + ("" if s["complete"] else " (partial: " + s["note"] + ")"))
        free_heap = a["states"][0]["heap_bytes"] if a["states"] else 0
        per_free = (fixed + free_heap) / pages
        per_worst = (fixed + worst) / pages
        inblock = f"{a['in_free_block_bytes']} B" if a["in_free_block_bytes"] else "-"
        out.append(
            f"| {a['label']} | {fixed:,} B | {' / '.join(heaps)} B | {per_free:.3f} | "
            f"{per_worst:.3f} | {inblock} | {a['how']} |"
        )
    out.append("")


def evaluate(
    run: Run, counts: dict[tuple[str, str], int]
) -> tuple[list[tuple[str, str, str]], list[str]]:
    """Targets: (target, measured, verdict) rows, and the bound explanations for misses."""
    rows: list[tuple[str, str, str]] = []
    bounds: list[str] = []
    shared = [w for w in WORKLOADS if w != "init-zeroed"]

    # 1. Faster than every peer on every shared workload.
    lost, won, unknown = [], [], []
    for w in shared:
        ref = run.measure(w, REF)
        for p in PEERS:
            m = run.measure(w, p)
            if ref["ns"] is None:
                unknown.append(f"{w}/{SHORT_NAMES[p]} (reference not measured)")
            elif m["kind"] in ("ns", "single"):
                (won if ref["ns"] < m["ns"] else lost).append((w, p, m["ns"] / ref["ns"]))
            elif m["kind"] == "lower-bound" and ref["ns"] < m["ns"]:
                won.append((w, p, m["ns"] / ref["ns"]))
            elif m["entry"].get("status") == "out-of-time":
                unknown.append(f"{w}/{SHORT_NAMES[p]} (the peer's untimed setup ran out of time)")
            else:
                unknown.append(f"{w}/{SHORT_NAMES[p]} ({m['note']})")
    measured = (
        f"faster in {len(won)} of {len(won) + len(lost)} measured pairings"
        + (
            "; slower in "
            + ", ".join(f"{w} vs {SHORT_NAMES[p]} ({fmt_ratio(r)})" for w, p, r in lost)
            if lost
            else ""
        )
        + ("; not comparable: " + ", ".join(unknown) if unknown else "")
    )
    rows.append(
        (
            "pagebuddy faster than every peer on every shared workload",
            measured,
            "met" if not lost and won else "missed",
        )
    )

    # 2. At least 3x faster than FrameAllocator.
    ratios = []
    for w in shared:
        ref, m = run.measure(w, REF), run.measure(w, "bsa-frame")
        if ref["ns"] and m["ns"] is not None and m["kind"] != "none":
            ratios.append((w, m["ns"] / ref["ns"]))
    short = [(w, r) for w, r in ratios if r < 3]
    rows.append(
        (
            "at least 3x faster than `buddy_system_allocator::FrameAllocator`",
            ", ".join(f"{w} {fmt_ratio(r)}" for w, r in ratios) or "not measured",
            ("met" if not short else "missed") if ratios else "not measured",
        )
    )

    # 3. Hot pair at most 40 ns, side table, zeroing off.
    hot = run.measure("hot", REF)
    hot_ok = hot["ns"] is not None and hot["ns"] <= 40
    rows.append(
        (
            "hot order-0 alloc+free ≤ 40 ns (side table, zero never)",
            fmt_ns(hot["ns"]) if hot["ns"] is not None else hot["note"],
            "met" if hot_ok else ("missed" if hot["ns"] is not None else "not measured"),
        )
    )

    # 4. Init metadata under 2 ms.
    init = run.measure("init", REF)
    init_i = run.measure("init", "pagebuddy-intrusive-never")
    init_ok = init["ns"] is not None and init["ns"] < 2e6
    rows.append(
        (
            "init metadata for 2^18 pages < 2 ms",
            f"{fmt_ns(init['ns'])} (side table), {fmt_ns(init_i['ns'])} (intrusive)",
            "met" if init_ok else "missed",
        )
    )

    # Bounds of the misses.
    ref_hot = hot["ns"]
    heap_hot = run.measure("hot", "bsa-heap")["ns"]
    fl_hot = run.measure("hot", "free-list")["ns"]
    if (not hot_ok or any(w == "hot" for w, _, _ in lost)) and ref_hot:
        n_pb = counts.get(("hot", REF))
        n_heap = counts.get(("hot", "bsa-heap"))
        n_fl = counts.get(("hot", "free-list"))
        ipc = ""
        if n_pb:
            ipc = (
                f" Callgrind counts **{n_pb:,} instructions per pair** for pagebuddy "
                f"({n_pb / ref_hot:.1f} per ns at the measured {fmt_ns(ref_hot)}: the pair is "
                "bound by instruction count, not by memory)"
            )
            if n_heap:
                ipc += f", against {n_heap:,} for `Heap`"
            if n_fl:
                ipc += f" and {n_fl:,} for free-list"
            ipc += "."
            if not hot_ok:
                need = n_pb * 40 / ref_hot
                ipc += (
                    f" At the same rate 40 ns allows about {need:,.0f} instructions per pair, "
                    f"{100 * (1 - need / n_pb):.0f}% fewer."
                )
        bounds.append(
            f"**hot ({fmt_ns(ref_hot)}; Heap {fmt_ns(heap_hot)}, free-list {fmt_ns(fl_hot)}).** "
            "On a free pool every free block is an order-10 block, so each order-0 alloc splits "
            "one ten times (ten list appends and metadata writes) and the free merges it back "
            "ten times (ten buddy checks and list removals): pKVM's policy, which keeps no split "
            "block around. With FIFO lists the merged block goes to the tail of the 256-block "
            "order-10 list, so consecutive pairs walk all 256 blocks. Each list operation reads "
            "and range-checks every link it touches, including the neighbours' back-links, "
            "before its first write, so that a corrupted link is an error rather than a wild "
            "write; the metadata and result plumbing add the rest." + ipc + " `Heap` also "
            "splits and merges ten levels, but on singly linked LIFO lists with no per-page "
            "metadata and no checks; free-list does not split at all (it trims its first "
            "range). Getting there without changing the policy means list operations of a "
            "fraction of today's instructions with every check kept; a shorter check for a buddy "
            "alone on its list was measured and did not pay. `put` checks each link once (one "
            "walk), a free that merges with nothing and an allocation that splits nothing take "
            "short paths of their own, an allocation hints the lines the next one of its order "
            "will miss on, and a split the lines the next split of its list will write ([the "
            "levers](exact-pool-levers.md), with what was measured and not kept)."
        )
    if any(w == "churn" for w, _, _ in lost):
        ref_c = run.measure("churn", REF)
        losers = [(p, run.measure("churn", p)) for w, p, _ in lost if w == "churn"]
        reuse = ", ".join(
            f"{SHORT_NAMES.get(i, i)} {pct(run.measure('churn', i)['entry']['reuse_rate'])}"
            for i in [REF, *PEERS]
            if "reuse_rate" in run.measure("churn", i)["entry"]
        )
        n_pb = counts.get(("churn", REF))
        instr = ""
        if n_pb:
            others = ", ".join(
                f"{SHORT_NAMES[p]} {counts[('churn', p)]:,}"
                for p, _ in losers
                if ("churn", p) in counts
            )
            instr = (
                f" Callgrind counts {n_pb:,} instructions per step for pagebuddy"
                + (f" against {others}" if others else "")
                + ", so the gap is not in the work done."
            )
        bounds.append(
            f"**churn ({fmt_ns(ref_c['ns'])}; "
            + ", ".join(f"{SHORT_NAMES[p]} {fmt_ns(m['ns'])}" for p, m in losers)
            + ").** How often a step re-allocated the page it had just freed, measured over "
            f"{1 << 14:,} further steps: {reuse}. Merges drain the order-0 free blocks until "
            "none is left; from then on a freed page whose buddy is held is the only order-0 "
            "block, and the next order-0 allocation takes it back, FIFO lists included. A "
            "step is then one free without merging and one allocation without splitting."
            + instr
            + " pagebuddy reads and writes the metadata of a random page on every step (its "
            "`PageMeta` and its buddy's, one line of 1 MiB; a block alone on its list has no "
            "link, so the side table is not touched), which misses the near caches; "
            "FrameAllocator keeps no per-page state, and its order-0 set holds at most the one "
            "page in flight. The step is bound by that miss."
        )
    if any(w == "init" for w, _, _ in lost) or not init_ok:
        peers = ", ".join(f"{SHORT_NAMES[p]} {fmt_ns(run.measure('init', p)['ns'])}" for p in PEERS)
        ba = next(
            (a for a in (run.footprint or {}).get("allocators", []) if a["id"] == "buddy-alloc"),
            None,
        )
        ba_text = (
            f"buddy-alloc writes its bitmaps ({ba['region_bytes']:,} B, "
            f"{ba['region_bytes'] / run.footprint['pages']:.2f} B per page)"
            if ba
            else "buddy-alloc writes its bitmaps"
        )
        bounds.append(
            f"**init ({fmt_ns(init['ns'])}; {peers}).** pagebuddy writes 4 bytes of "
            "`PageMeta` for each of the 2^18 pages (1 MiB, O(n)) and lists 256 order-10 "
            "blocks. FrameAllocator and Heap record one entry per 4 MiB block (256), free-list "
            f"one range, and {ba_text}. The per-page metadata is what makes refcounts, "
            "`get`/`split` and the O(1) buddy check possible; writing it is the bound."
        )
    for w, p, r in lost:
        if w in ("hot", "churn", "init"):
            continue
        ref_w, m = run.measure(w, REF), run.measure(w, p)
        why = (
            "The 95% confidence intervals of the two overlap: this run cannot tell them apart."
            if overlap(ref_w, m)
            else {
                "huge": "An order-9 attempt takes the first free block of order 9 or above, "
                "or fails when there is none, and the free merges it back: little work, so "
                "fixed per-call costs decide, and pagebuddy's include checking that the block "
                "it takes is still a free head of that order and validating its links.",
            }.get(w, "No analysis of this pairing in this run.")
        )
        bounds.append(
            f"**{w} against {SHORT_NAMES[p]} ({fmt_ns(ref_w['ns'])} vs {fmt_ns(m['ns'])}, "
            f"{fmt_ratio(r)}).** {why}"
        )
    frame_heap = {}
    for a in (run.footprint or {}).get("allocators", []):
        if a["id"] == "bsa-frame":
            frame_heap = {s["state"]: s["heap_bytes"] for s in a["states"]}
    for w, r in short:
        if w in ("hot", "churn", "init"):
            continue
        ref_w, fr = run.measure(w, REF), run.measure(w, "bsa-frame")
        why = {
            "mixed": "Mixed steps mostly move low-order blocks (P(k) ~ 2^-(k+1)), and "
            "FrameAllocator's B-tree sets are small in this state"
            + (
                f" ({frame_heap['mixed']:,} B of heap, against {frame_heap['churn']:,} B in "
                "the churn state)"
                if "mixed" in frame_heap and "churn" in frame_heap
                else ""
            )
            + ", so its O(log n) lookups stay cheap.",
            "huge": "An order-9 attempt takes the first free block of order 9 or above, or "
            "fails when there is none: little work for either allocator, so fixed per-call "
            "costs weigh most.",
            "fill-drain": "The drain frees pages in random order over 1 GiB, so both are bound "
            "by cache misses on the bookkeeping of random pages.",
        }.get(w, "")
        bounds.append(
            f"**{w} against FrameAllocator ({fmt_ns(ref_w['ns'])} vs {fmt_ns(fr['ns'])}, "
            f"{fmt_ratio(r)}: pagebuddy is faster, but by less than 3x).** {why}"
        )
    return rows, bounds


CACHED_GROUPS = {
    "cached-hot": "hot: alloc+free of one order-0 page (per pair)",
    "cached-churn": "churn: free a random held page, allocate one (per step)",
    "cached-mixed": "mixed: orders 0..9, half full (per step)",
}
CACHED_IDS = {
    "exact": "Pool (exact)",
    "cached": "CachedPool (1 slot)",
    "local": "CachedPool, LocalCache",
    "local-page": "LocalCache, Page",
    "free-list": "free-list",
    "bsa-heap": "buddy_system_allocator::Heap",
}
LAYOUT_GROUPS = {
    "layout-hot": "hot (per alloc+free pair)",
    "layout-churn": "churn (per free+alloc step)",
    "layout-mixed": "mixed (per step)",
    "layout-churn-22": "churn at 2^22 pages (per step)",
}
LAYOUT_IDS = {
    "pool": "Pool (side table)",
    "two-arrays": "prototype, two arrays",
    "one-record": "prototype, one 12-byte record",
    "one-record-16": "prototype, one 16-byte record",
}
# The record layouts, each compared with the two arrays.
LAYOUT_RECORDS = ("one-record", "one-record-16")


MANY_CORES = ROOT / "docs" / "data" / "threads-16cores.json"


def threads_table(th: dict[str, Any], what: str = "thread") -> list[str]:
    """A threads benchmark block (``threads`` or ``sizing`` of cached.json) as a table: pairs
    per second at each thread count, the scaling at 2 threads and at the most, and the CPUs the
    threads got."""
    counts = th["counts"]
    top = max(counts)
    lines = [
        "| allocator | "
        + " | ".join(f"{c} {what}{'s' if c > 1 else ''}" for c in counts)
        + (" | 2 / 1" if 2 in counts else "")
        + (f" | {top} / 1" if top > 2 else "")
        + " | CPUs the threads got |",
        "|---|" + "---|" * (len(counts) + (2 in counts) + (top > 2) + 1),
    ]
    for row in th["rows"]:
        v, cpus = row["pairs_per_s"], row.get("cpus") or []
        cells = [f"{x / 1e6:.2f} M/s" for x in v]
        if 2 in counts:
            cells.append(fmt_ratio(v[counts.index(2)] / v[0]) if v[0] else "-")
        if top > 2:
            cells.append(fmt_ratio(v[counts.index(top)] / v[0]) if v[0] else "-")
        cells.append(", ".join(f"{c:.2f}" for c in cpus) if cpus else "-")
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return lines


def sizing_text(sz: dict[str, Any], auto: bool) -> str:
    """What the cache-sizing block is; `auto`: the run's default cache sized each slot by itself
    (runs that also wrote `autosize`), else it was the fixed batch 16, high 64 of earlier runs."""
    head = (
        f"Cache sizing: each thread allocates a burst of {sz['burst']} order-0 pages through its "
        "own `LocalCache` (`Page`s), then frees them all, oldest first; a pair per page, best of "
        f"{sz['reps']} runs of {sz['seconds']:g} s. "
    )
    if not auto:
        return head + (
            "With the default cache (batch 16, high 64) a burst empties the slot's stack and "
            "refills it 16 blocks at a time, and the frees go above `high` and drain 16 at a "
            "time, each under the pool's lock; the larger cache (batch 64, high 512) holds a "
            "whole burst, so once warm it never takes the pool's lock."
        )
    return head + (
        "The default cache starts at batch 16, high 64, "
        "where a burst empties the slot's stack and refills it 16 blocks at a time, and the frees "
        "go above `high` and drain 16 at a time, each under the pool's lock; refills and drains "
        "that close together make each slot grow (`cache::auto`) until a burst fits, as the "
        "larger fixed cache (batch 64, high 512) does from the start: once warm, neither takes "
        "the pool's lock."
    )


def many_cores() -> list[str]:
    """The threads benchmark on a machine with 16 cores (docs/data/threads-16cores.json, from a
    real run there) and what it says about cache sizing; nothing when the file is missing."""
    try:
        d = json.loads(MANY_CORES.read_text())
    except (OSError, ValueError):
        return []
    th, sz, hot = d["threads"], d.get("sizing"), d.get("cached_hot", {})
    counts = th["counts"]
    top = max(counts)
    i2, it = counts.index(2), counts.index(top)
    rows = {r["name"]: r["pairs_per_s"] for r in th["rows"]}
    lines = [
        f"### On {d['cores']} cores",
        "",
        f"The same benchmark on a machine with {d['cores']} cores: {d['cpu']}; {d['date']}; "
        f"load average (1, 5, 15 min) {d['load_before']} before, {d['load_after']} after. "
        f"Command: `{d['command']}` (full mode: best of {th['reps']} runs of "
        f"{th['seconds']:g} s). Figures from `{MANY_CORES.relative_to(ROOT)}`; "
        "compare them with each other, not with the 2-core tables above.",
        "",
    ]
    lines += [*threads_table(th), ""]
    if sz:
        lines += [sizing_text(sz, "autosize" in d), "", *threads_table(sz), ""]
    if hot:
        cells = ", ".join(
            f"{name} {fmt_ns(hot[key]['ns'])}"
            for key, name in (
                ("exact", "`Pool`"),
                ("cached", "`CachedPool`"),
                ("local", "`LocalCache`"),
                ("local-page", "`LocalCache`, `Page`"),
                ("free-list", "`free-list`"),
                ("bsa-heap", "`Heap`"),
            )
            if key in hot
        )
        lines += [f"Hot order-0 pair on one thread of that machine (criterion): {cells}.", ""]
    lp, cp = rows.get("LockedPool"), rows.get("CachedPool")
    lc = rows.get("CachedPool, LocalCache")
    bullets = []
    if lp:
        best = max(lp[1:])
        bullets.append(
            f"The one lock does not scale: `LockedPool` does {lp[0] / 1e6:.2f} M pairs/s on 1 "
            f"thread, {lp[i2] / 1e6:.2f} M/s on 2 and {lp[it] / 1e6:.2f} M/s on {top}; more "
            f"cores only add contention (best with more than one thread: {best / 1e6:.2f} M/s)."
        )
    if cp and lc:
        bullets.append(
            f"Per-CPU caches do: `CachedPool` (each call through its slot's lock) goes from "
            f"{cp[0] / 1e6:.2f} to {cp[it] / 1e6:.2f} M pairs/s at {top} threads "
            f"({cp[it] / cp[0]:.2f}x, {cp[it] / lp[it]:.0f}x `LockedPool` there), and "
            f"`LocalCache`s with `Page`s from {lc[0] / 1e6:.2f} to {lc[it] / 1e6:.2f} M/s "
            f"({lc[it] / lc[0]:.2f}x). Both fall short of {top}x although each thread had a "
            "CPU to itself (the last column)."
        )
    mis = rows.get("CachedPool, LocalCache, refs misaligned")
    if lc and mis:
        bullets.append(
            f"False sharing shows at scale: with the `PageRef`s 16 bytes off a 128-byte "
            f"boundary the same `LocalCache`s do {mis[it] / 1e6:.2f} M pairs/s at {top} "
            f"threads against {lc[it] / 1e6:.2f} M/s aligned ({mis[it] / lc[it]:.2f}x; "
            f"{mis[i2] / 1e6:.2f} against {lc[i2] / 1e6:.2f} M/s at 2): each refill batch's words "
            "then share a cache line with the next batch's, another CPU's, and every hit writes "
            "one of them."
        )
    if sz:
        srows = sz["rows"]
        if len(srows) >= 2:
            small, big = srows[0]["pairs_per_s"], srows[1]["pairs_per_s"]
            sc = sz["counts"]
            s2, st = sc.index(2), sc.index(max(sc))
            bullets.append(
                f"Cache sizing decides it. With the default cache, bursts of {sz['burst']} "
                f"pages run at {small[0] / 1e6:.2f} M pairs/s on 1 thread and "
                f"{small[st] / 1e6:.2f} M/s on {max(sc)} ({small[st] / small[0]:.2f}x): every "
                "refill and drain takes the pool's lock, and at 2 threads already "
                f"({small[s2] / 1e6:.2f} M/s) the threads queue on it. A cache that holds a "
                f"burst (batch 64, high 512) runs at {big[0] / 1e6:.2f} M/s on 1 thread and "
                f"{big[st] / 1e6:.2f} M/s on {max(sc)} ({big[st] / big[0]:.2f}x), "
                f"{big[st] / small[st]:.0f}x the default. On many cores size `high` to the "
                "working set a CPU frees and reallocates between refills (Linux scales pcp "
                "`high` with the zone and the CPU count for this reason), and `batch` to a "
                "fraction of it, so that the lock is taken once per many pairs."
            )
    slot_pages = 64 * (1 + 2 + 4 + 8)  # high blocks of each cached order 0..=3
    pool = 1 << 18
    bullets.append(
        f"The price is memory parked in caches: with the defaults a slot holds up to "
        f"{slot_pages} pages across orders 0..=3, so 16 slots may hold {16 * slot_pages:,} pages "
        f"({100 * 16 * slot_pages / pool:.1f}% of a 2^18-page pool) and 64 slots "
        f"{64 * slot_pages:,} ({100 * 64 * slot_pages / pool:.1f}%). With high 512 a slot may "
        f"hold 512 blocks of each cached order, {8 * slot_pages:,} pages across orders 0..=3 "
        f"(16 slots: {16 * 8 * slot_pages:,}, {100 * 16 * 8 * slot_pages / pool:.1f}% of that "
        "pool); caching order 0 alone at that size (`CacheConfig::orders(1)`) keeps it to 512 "
        f"pages a slot ({16 * 512:,} for 16 slots, {100 * 16 * 512 / pool:.1f}%). A fixed budget "
        "of cached pages divided among the slots keeps this bounded, and the drain before "
        "OutOfMemory, which visits every slot, gets slower as slots are added."
    )
    exact = hot.get("exact", {}).get("ns")
    if exact:
        bullets.append(
            f"A refill holds the pool's lock for a whole batch: about 16 exact allocations with "
            f"the default batch (~{fmt_ns(16 * exact / 2)} at that machine's exact hot-pair "
            f"cost of {fmt_ns(exact)}), so {top} CPUs that miss at once wait up to "
            f"~{fmt_ns((top - 1) * 16 * exact / 2)} for the last refill."
        )
    lines += [f"- {b}" for b in bullets] + [""]
    return lines


def layout_section(run: Run, out: list[str]) -> None:
    """Two arrays against one record per page: criterion's layout-* groups."""
    figures: dict[tuple[str, str], float] = {}
    cis: dict[tuple[str, str], tuple] = {}
    rows = []
    for group, what in LAYOUT_GROUPS.items():
        cells = []
        for ident in LAYOUT_IDS:
            ns, _why, ci = run.criterion_ns(group, ident)
            if ns is not None:
                figures[(group, ident)] = ns
                cis[(group, ident)] = ci
                lo, hi = ci
                cells.append(f"{fmt_ns(ns)} ({fmt_ns(lo)} to {fmt_ns(hi)})")
            else:
                cells.append("-")
        two = figures.get((group, "two-arrays"))
        for rec in LAYOUT_RECORDS:
            one = figures.get((group, rec))
            cells.append(fmt_ratio(one / two) if one and two else "-")
        rows.append(f"| {what} | " + " | ".join(cells) + " |")
    if not figures:
        return
    out += [
        "## Metadata layout: two arrays or one record per page",
        "",
        "`cargo bench -p pagebuddy-benches --bench layout` (`benches/benches/layout.rs`), in the "
        "same run, same pool (side table, zero never). Today a page's 4 bytes of `PageMeta` and "
        "its 8 bytes of links sit in two arrays, so a page the policy touches costs two cache "
        "lines; the alternative keeps both in one record: 12 bytes (some straddle two lines) or "
        "padded to 16 (four to a line). All run one prototype of the exact policy, copied from "
        "`pool.rs` and `store.rs` step for step and generic over the layout; the real `Pool` "
        "runs beside them at 2^18 pages to show how close the two-array prototype is to what it "
        "copies. Churn runs again at 2^22 pages (48 MiB of state, past the last-level cache), "
        "prototypes only, in memory of 4 KiB pages.",
        "",
        "| workload | "
        + " | ".join(LAYOUT_IDS.values())
        + " | 12-byte record / two arrays | 16-byte record / two arrays |",
        "|---|" + "---|" * (len(LAYOUT_IDS) + len(LAYOUT_RECORDS)),
        *rows,
        "",
        "Cells: criterion's estimate (95% confidence interval).",
        "",
    ]
    # Told apart only where the 95% confidence intervals do not overlap.
    verdicts = []
    large_gain = False
    for rec in LAYOUT_RECORDS:
        faster, slower, level = [], [], []
        for g in LAYOUT_GROUPS:
            if (g, rec) not in figures or (g, "two-arrays") not in figures:
                continue
            ratio = figures[(g, rec)] / figures[(g, "two-arrays")]
            (one_lo, one_hi), (two_lo, two_hi) = cis[(g, rec)], cis[(g, "two-arrays")]
            name = f"{LAYOUT_GROUPS[g].split(' (')[0]} ({fmt_ratio(ratio)})"
            if one_hi < two_lo:
                faster.append(name)
                large_gain |= g == "layout-churn-22"
            elif one_lo > two_hi:
                slower.append(name)
            else:
                level.append(name)
        if faster or slower or level:
            verdicts.append(
                f"the {LAYOUT_IDS[rec].split('one ')[1]} is "
                + (f"faster on {', '.join(faster)}" if faster else "faster on none")
                + (f"; slower on {', '.join(slower)}" if slower else "")
                + (f"; not told apart on {', '.join(level)}" if level else "")
            )
    if verdicts:
        out += [
            "One record against two arrays, in this run (told apart only where the confidence "
            "intervals do not overlap): "
            + "; ".join(verdicts)
            + ". "
            + (
                "A record gains on the large pool here: worth a store of its own. "
                if large_gain
                else "The pool keeps its two arrays. A record saves a line only where the "
                "policy reads a page's metadata and its own link together, and a churn step's "
                "misses are mostly elsewhere (the buddy's list neighbours, the list heads, the "
                "held page itself): the large pool, where misses decide the time, does not gain "
                "here. "
            )
            + "One record changes `Pool`'s constructor (the caller provides `PageMeta` and the "
            "side table's links separately, and `Intrusive` keeps links in the pages), the "
            "metadata bytes of `Pool::without_arena` and the on-disk layout of shared pools, "
            "which stores the two apart.",
            "",
        ]


def cached_section(run: Run, out: list[str]) -> None:
    """The per-CPU caches: criterion's cached-* groups, the threads table and zeroing."""
    data = load_json(DATA / "cached.json")
    if data is None:
        out += ["## Per-CPU caches", "", "Not run: no `target/pagebuddy-bench/cached.json`.", ""]
        return
    out += [
        "## Per-CPU caches (`CachedPool`)",
        "",
        "`cargo bench -p pagebuddy-benches --bench cached` (`benches/benches/cached.rs`), in the "
        "same run as the tables above, over the same pool; side table, zero never, default cache "
        "configuration (orders 0..=3 cached, each slot sized by itself from batch 16 and high 64). "
        "The single-threaded workloads "
        "use slot 0.",
        "",
        "`CachedPool` takes the slot's lock on every call; `CachedPool, LocalCache` goes "
        "through a handle that has claimed slot 0 (`CachedPool::local`: no slot lock; a `put` "
        "still drops the refcount by compare-and-swap); `LocalCache, Page` hands the block out "
        "as a `Page`, held once by that value, so that its free needs no atomic "
        "read-modify-write either.",
        "",
        "| workload | " + " | ".join(CACHED_IDS.values()) + " | best cached / exact |",
        "|---|" + "---|" * (len(CACHED_IDS) + 1),
    ]
    figures: dict[tuple[str, str], float] = {}
    for group, what in CACHED_GROUPS.items():
        cells = []
        for ident in CACHED_IDS:
            ns, _why, ci = run.criterion_ns(group, ident)
            if ns is not None:
                figures[(group, ident)] = ns
                lo, hi = ci
                cells.append(f"{fmt_ns(ns)} ({fmt_ns(lo)} to {fmt_ns(hi)})")
            else:
                cells.append("-")
        ex = figures.get((group, "exact"))
        cached = [
            figures[(group, i)] for i in ("cached", "local", "local-page") if (group, i) in figures
        ]
        ratio = fmt_ratio(min(cached) / ex) if ex and cached else "-"
        out.append(f"| {what} | " + " | ".join(cells) + f" | {ratio} |")
    out += ["", "Cells: criterion's estimate (95% confidence interval).", ""]
    slot, fl = figures.get(("cached-hot", "cached")), figures.get(("cached-hot", "free-list"))
    local, page = figures.get(("cached-hot", "local")), figures.get(("cached-hot", "local-page"))
    if slot and local and page and fl:
        verdict = "met" if page <= 6 and page < fl else "missed"
        below = "below" if page < fl else "not below"
        out += [
            f"Cached hot pair: {fmt_ns(page)} through a `LocalCache` with `Page`s, "
            f"{below} `free-list`'s {fmt_ns(fl)} in the same run; the target is at most 6 ns on "
            "the AMD machine the targets were set on and below `free-list`'s figure: "
            f"**{verdict}** here. Each atomic read-modify-write the pair drops saves several "
            f"nanoseconds on this virtual machine's CPU: {fmt_ns(slot)} with the slot's lock "
            "taken by the alloc and by the put plus the refcount's compare-and-swap (three, as "
            "Linux's `rmqueue_pcplist`, `free_unref_page` and `put_page_testzero`), "
            f"{fmt_ns(local)} through the handle (one: the refcount's), {fmt_ns(page)} with a "
            "`Page` (none), "
            "which is what `free-list` and `Heap` make too.",
            "",
        ]

    th = data.get("threads")
    if th:
        counts = th["counts"]
        cores = os.cpu_count() or 1
        out += [
            "### Threads",
            "",
            f"Total alloc+free pairs per second, all threads together: each thread keeps a "
            f"window of {th['window']} order-0 pages and, per pair, allocates one and frees its "
            f"oldest; best of {th['reps']} runs of {th['seconds']:g} s. `CachedPool` gives each "
            "thread its own slot, through the slot's lock on every call; `CachedPool, LocalCache` "
            "has each thread claim its slot once and allocate and free `Page`s through the "
            "handle (its `PageRef`s start on a 128-byte boundary, as `CachedPool::new` asks; "
            "the `refs misaligned` row starts them 16 bytes past one, as a plain `Vec` from the "
            "system allocator does, so that neighbouring refill batches share cache lines); "
            "the others share one lock. This machine has "
            f"{os.cpu_count()} cores: {', '.join(str(c) for c in counts if c > cores)}"
            " threads are oversubscribed.",
            "",
        ]
        out += threads_table(th)
        out += [
            "",
            "*CPUs the threads got*: the threads' CPU time (`CLOCK_THREAD_CPUTIME_ID`) over the "
            "wall-clock time of the best run, at each thread count. Other work on the machine "
            "takes its share (the scheduler divides the CPUs between sessions, not threads), so "
            "a second thread may add far less than a second CPU. A thread count counts as "
            "scaling only by the wall-clock figure.",
            "",
        ]
        rows = {r["name"]: r["pairs_per_s"] for r in th["rows"]}
        cp, lp = rows.get("CachedPool"), rows.get("LockedPool")
        lc = rows.get("CachedPool, LocalCache")
        if cp and lp and 2 in counts:
            i2 = counts.index(2)
            out.append(
                f"`CachedPool` with 2 threads: {cp[i2] / cp[0]:.2f}x its 1-thread throughput "
                f"(target 1.8x: **{'met' if cp[i2] / cp[0] >= 1.8 else 'missed'}**)"
                + (
                    f"; through `LocalCache`s: {lc[i2] / lc[0]:.2f}x "
                    f"(**{'met' if lc[i2] / lc[0] >= 1.8 else 'missed'}**), "
                    f"{lc[0] / cp[0]:.2f}x `CachedPool`'s pairs on 1 thread"
                    if lc
                    else ""
                )
                + f"; `LockedPool`: {lp[i2] / lp[0]:.2f}x. At 2 threads `CachedPool` does "
                f"{cp[i2] / lp[i2]:.2f}x the pairs of `LockedPool`."
            )
            out.append("")
        sz = data.get("sizing")
        if sz:
            out += [sizing_text(sz, "autosize" in data), "", *threads_table(sz), ""]
        out += many_cores()
    z = data.get("zeroing")
    if z:
        out += [
            "### Zeroing",
            "",
            "Bytes zeroed per second, in GB/s, with each zero policy (the whole operation timed, "
            "allocation bookkeeping included), beside plain `memset` (`write_bytes`, one call a "
            "block, as the pools make them) and non-temporal stores (`movntdq`, four to a line, "
            "as the pools write them) over the same blocks: *hot* is the order-0 "
            "alloc+free pair (one 4 KiB page per pair: the same, cache-hot page every time for "
            "`CachedPool`, whose LIFO cache hands back the page just freed; a different, cold "
            "page each time for `Pool`, whose FIFO lists walk through every top-order block); "
            "*streaming* allocates every order-9 "
            "block of the 1 GiB arena and frees them all (1 GiB zeroed per cycle, in 2 MiB "
            "blocks, far beyond the caches). Best of the timed batches.",
            "",
            "| zeroing | hot (4 KiB) | streaming (2 MiB blocks) |",
            "|---|---|---|",
            f"| memset alone | {z['memset_hot']:.1f} GB/s | {z['memset_stream']:.1f} GB/s |",
            f"| non-temporal stores alone | - | {z['nt_stream']:.1f} GB/s |",
        ]
        for row in z["rows"]:
            out.append(f"| {row['name']} | {row['hot']:.1f} GB/s | {row['stream']:.1f} GB/s |")
        out += [
            "",
            "Freed blocks of 64 KiB and more are zeroed with non-temporal stores "
            "(`zeroing::zero_cold_bytes`), so the streaming rows with zero on free write at the "
            "non-temporal rate rather than `memset`'s; zero on alloc keeps `memset`, which "
            "leaves the block in the cache for the caller who is about to use it. Every other "
            "block is zeroed with `memset` alone (`zeroing::zero_bytes`; "
            'docs/exact-pool-levers.md, "The zeroing\'s hints, taken out"). The exact '
            "pool's hot row is bound by the cold page the FIFO lists hand out, not by zeroing: "
            "the cached pool zeroes the same 4 KiB at several times the rate.",
            "",
        ]


def core_side(run: Run) -> dict[str, float]:
    """The core's side of the Python benchmark (benches/benches/binding.rs): ns per pair, per
    page for ``batch``; only the estimates this run wrote."""
    found = {}
    for ident in (
        "get-put",
        "alloc-put",
        "alloc-put-warm",
        "locked-get-put",
        "locked-alloc-put",
        "batch",
    ):
        ns, _, _ = run.criterion_ns("binding", ident)
        if ns is not None:
            found[ident] = ns / 4096 if ident == "batch" else ns
    return found


def python_section(run: Run, out: list[str], rows: list[tuple[str, str, str]]) -> None:
    out += ["## Python: `Pool` against `ReferencePool`", ""]
    data = load_json(DATA / "python.json")
    if data is None:
        try:
            why = (DATA / "python.status").read_text().strip()
        except OSError:
            why = "not run: no result from benches/python_bench.py"
        out += [f"Python benchmark {why}.", ""]
        rows.append(("Python: Pool ≥ 20x ReferencePool per call on churn", why, "not measured"))
        rows.append(("Python: alloc_many + put_many ≤ 30 ns per page", why, "not measured"))
        return
    out += [
        f"`benches/python_bench.py --quick --json`: {data['mode']} mode, {data['pages']:,} "
        f"pages of {data['page_size']} B, zero={data['zero']!r}, best of {data['repeats']}, "
        f"{data['python']}; CPU time per call or per page, Python loop included (the loop "
        f"alone costs {data['loop_overhead_ns']} ns per iteration).",
        "",
        "| workload | unit | Pool | ReferencePool | ReferencePool / Pool |",
        "|---|---|---|---|---|",
    ]
    by = {r["name"]: r for r in data["results"]}
    for r in data["results"]:
        out.append(
            f"| {r['name']} | {r['unit']} | {fmt_ns(r['pool_ns'])} | "
            f"{fmt_ns(r['reference_ns'])} | {fmt_ratio(r['ratio'])} |"
        )
    out.append("")
    core = core_side(run)
    builtin = data.get("builtin_pair_ns")
    if core:
        out += [
            "The core's side (`benches/benches/binding.rs`, criterion group `binding`): the same "
            "calls on the same pool state (16,384 pages of 4096 B, zero never, side table), so "
            "that the Python figure minus the core's is the binding's own cost: the call, "
            "reading the int argument and making the result, the check that no batch call has "
            "the pool handed off (`get_page`, `put_page` and `alloc_pages` enter through the "
            "fast entry points of `rust/pagebuddy-py/src/fast.rs`, which skip PyO3's "
            "trampoline and argument parser; the Python pool's lock is the interpreter lock, "
            "where the core through `LockedPool` pays a spin lock). The two programs run one "
            "after the other on a shared machine: compare ratios from this one run.",
            "",
            "| calls | core (`Pool`) | core through `LockedPool` | Python `Pool` | Python - core |",
            "|---|---|---|---|---|",
        ]
        for ident, name, label, unit in (
            ("get-put", "ref_pair", "get + put of a page held twice", "pair"),
            ("alloc-put", "alloc_pair", "alloc(0) + put on a free pool", "pair"),
            (
                "alloc-put-warm",
                "warm_pair",
                "alloc(0) + put of the one free page (no split, no merge)",
                "pair",
            ),
            ("batch", "batch_array", "alloc_many + put_many of 4096 pages", "page"),
        ):
            py = by.get(name)
            c = core.get(ident)
            if py is None or c is None:
                continue
            locked = core.get(f"locked-{ident}")
            # The core's pair slower than the same pair from Python: the two programs ran under
            # different load, and their difference says nothing about the binding.
            net = py["pool_ns"] - c
            out.append(
                f"| {label} (per {unit}) | {fmt_ns(c)} | {fmt_ns(locked)} | "
                f"{fmt_ns(py['pool_ns'])} | {fmt_ns(net) if net >= 0 else DISTURBED_CELL} |"
            )
        out += [
            "",
            f"Python pairs are net of an empty `for` loop; `list.append` + `list.pop`, timed in "
            f"the same run and net of the same loop, costs {fmt_ns(builtin)} a pair.",
            "",
        ]
    net = [(name, by[name]) for name in ("ref_pair", "warm_pair", "cached_pair") if name in by]
    if builtin and net:
        out += [
            f"The pairs net of the loop against `list.append` + `list.pop` ({fmt_ns(builtin)}, "
            "timed in the same run and net of the same loop): "
            + "; ".join(
                f"{name} {fmt_ns(r['pool_ns'])} ({r['pool_ns'] / builtin:.2f}x)" for name, r in net
            )
            + ". `cached_pair` is `alloc_pages(0)` + `put_page` on `Pool(n, cpus=1)` through "
            "the thread's slot: the page comes off the slot's LIFO cache and goes back on it.",
            "",
        ]
    shared = data.get("shared") or []
    if shared:
        out += [
            "A pool inside a buffer (`Pool.create_in(bytearray(...))`: every call takes the "
            "pool's process-shared lock and journals its writes, so that a killed process "
            "leaves nothing half done) against the in-process `Pool` with the same pages, same "
            "workload, same rounds; per call, Python loop included (`window`: 64 held blocks of "
            "orders 0..4, each step puts the oldest and allocates one, the workload of the "
            "core's `shared_bench` example):",
            "",
            "| workload | unit | Pool | Pool.create_in | shared / in-process |",
            "|---|---|---|---|---|",
        ]
        for r in shared:
            out.append(
                f"| {r['name']} | {r['unit']} | {fmt_ns(r['pool_ns'])} | "
                f"{fmt_ns(r['shared_ns'])} | {r['ratio']:.2f}x |"
            )
        out.append("")
    notes = []
    churn = by.get("churn")
    if churn and churn["ratio"] < 20:
        notes.append(
            f"churn: `Pool` costs {fmt_ns(churn['pool_ns'])} per call, of which the Python "
            f"loop alone is {data['loop_overhead_ns']} ns and the rest is the call into the "
            "extension, the check that no batch has the pool handed off and the core's own "
            "step (see the Rust churn row above); the ratio is bounded by how cheap the "
            "pure-Python model's step is "
            f"({fmt_ns(churn['reference_ns'])})."
        )
    cached, ref = by.get("cached_pair"), by.get("ref_pair")
    if cached and ref and builtin and cached["pool_ns"] > 3 * builtin:
        two_calls = ref["pool_ns"] - core.get("get-put", 0.0)
        notes.append(
            f"cached_pair: {fmt_ns(cached['pool_ns'])} a pair is two calls into the extension "
            f"(the get_page + put_page pair, which does next to no work in the core, costs "
            f"{fmt_ns(two_calls)} for its two calls here) and the core's cached pair (about "
            f"{fmt_ns(max(0.0, cached['pool_ns'] - two_calls))} left: the slot lock's "
            "compare-and-swap on alloc, the refcount's and the slot lock's on put; see the "
            "per-CPU caches section). The binding adds no lock of its own: the thread's slot is "
            "a thread-local read, none with one slot."
        )
    if notes:
        out += ["What bounds the Python misses:", ""] + [f"- {n}" for n in notes] + [""]
    if churn:
        rows.append(
            (
                "Python: Pool ≥ 20x ReferencePool per call on churn",
                f"{fmt_ratio(churn['ratio'])} ({fmt_ns(churn['pool_ns'])} vs "
                f"{fmt_ns(churn['reference_ns'])})",
                "met" if churn["ratio"] >= 20 else "missed",
            )
        )
    am, pm = by.get("alloc_many"), by.get("put_many")
    if am and pm:
        total = am["pool_ns"] + pm["pool_ns"]
        rows.append(
            (
                "Python: alloc_many + put_many ≤ 30 ns per page",
                f"alloc_many {fmt_ns(am['pool_ns'])} + put_many {fmt_ns(pm['pool_ns'])} = "
                f"{fmt_ns(total)} per page allocated and freed",
                "met"
                if total <= 30
                else (
                    "missed (each alone is within 30 ns)"
                    if max(am["pool_ns"], pm["pool_ns"]) <= 30
                    else "missed"
                ),
            )
        )
    batch = by.get("batch_array")
    if batch:
        in_core = f" (the core alone: {fmt_ns(core['batch'])} per page)" if "batch" in core else ""
        rows.append(
            (
                "Python: alloc_many + put_many via array('Q') ≤ 10 ns per page (zero=never)",
                f"{fmt_ns(batch['pool_ns'])} per page allocated and freed{in_core}",
                "met" if batch["pool_ns"] <= 10 else "missed",
            )
        )
    for name, ident, label in (
        ("warm_pair", "alloc-put-warm", "alloc_pages(0) + put_page (one free page, no split)"),
        ("ref_pair", "get-put", "get_page + put_page (page held twice)"),
    ):
        pair = by.get(name)
        if not (pair and builtin):
            continue
        target = (
            f"Python: binding overhead of one {label} pair (Python pair - core pair) ≤ 2x "
            "list.append + list.pop"
        )
        if ident not in core:
            rows.append((target, "the core's pair was not measured in this run", "not measured"))
            continue
        overhead = pair["pool_ns"] - core[ident]
        if overhead < 0:
            rows.append(
                (
                    target,
                    f"the core's pair ({fmt_ns(core[ident])}) took longer than the Python pair "
                    f"({fmt_ns(pair['pool_ns'])}) in this run: {DISTURBED}",
                    "not measured",
                )
            )
            continue
        rows.append(
            (
                target,
                f"{fmt_ns(pair['pool_ns'])} - {fmt_ns(core[ident])} = {fmt_ns(overhead)} vs "
                f"{fmt_ns(builtin)} ({overhead / builtin:.2f}x)",
                "met" if overhead <= 2 * builtin else "missed",
            )
        )
    cached = by.get("cached_pair")
    if cached and builtin:
        rows.append(
            (
                "Python: alloc_pages(0) + put_page on a cached pool (cpus=1) ≤ 3x "
                "list.append + list.pop (both net of the loop)",
                f"{fmt_ns(cached['pool_ns'])} vs {fmt_ns(builtin)} "
                f"({cached['pool_ns'] / builtin:.2f}x)",
                "met" if cached["pool_ns"] <= 3 * builtin else "missed",
            )
        )
    exact = by.get("alloc_pair")
    if exact and "alloc-put" in core and core["alloc-put"] > exact["pool_ns"]:
        rows.append(
            (
                "Python: alloc_pages(0) + put_page pair on the exact pool (reported, no bound)",
                f"{fmt_ns(exact['pool_ns'])} per pair; the core's pair took longer "
                f"({fmt_ns(core['alloc-put'])}) in its own run: {DISTURBED}",
                "reported",
            )
        )
    elif exact and "alloc-put" in core:
        rows.append(
            (
                "Python: alloc_pages(0) + put_page pair on the exact pool (reported, no bound)",
                f"{fmt_ns(exact['pool_ns'])} per pair, of which the core's policy "
                f"{fmt_ns(core['alloc-put'])} in the core's own run: the FIFO lists' cold walk "
                "(each pair splits the head order-10 block ten times and merges it back to the "
                "tail of the list), whose cost swings with what else the caches hold, so the "
                "binding's overhead is measured on the warm pair instead",
                "reported",
            )
        )
    python_floor(data, out, rows)


FLOOR_WORKLOADS = {
    "hot": "hot pair",
    "churn": "churn step",
    "mixed": "mixed step",
}
FLOOR_STORES = {"side-table": "side table", "intrusive": "intrusive"}
FLOOR_ADVICE = {"default": "4 KiB pages", "huge": "huge pages"}
#: The mapping the Python package gives its pools' metadata and links (rust/pagebuddy-py,
#: `mapped::MappedSlice` with `Advice::HugePages`): the floor its figures are read against.
PYTHON_FLOOR_ADVICE = "huge"
#: Bounds of the floor's goals: churn and Python batches at most 1.5x the floor,
#: the hot pair at most 3x.
FLOOR_GOALS = {"churn": 1.5, "hot": 3.0}


def fmt_bytes(b: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= scale:
            v = b / scale
            return f"{v:.0f} {unit}" if v == int(v) or v >= 100 else f"{v:.1f} {unit}"
    return f"{b} B"


def pow2(n: int) -> str:
    return f"2^{n.bit_length() - 1}" if n > 0 and n & (n - 1) == 0 else f"{n:,}"


def floor_cases(data: dict[str, Any]) -> dict[tuple[int, str, str], dict[str, Any]]:
    """The floor run's cases, keyed by (pages, store, advice)."""
    return {(c["pages"], c["store"], c["advice"]): c for c in data.get("cases", [])}


def best_mapping(
    cases: dict[tuple[int, str, str], dict[str, Any]], pages: int, store: str, key: str
) -> tuple[str, dict[str, Any]] | None:
    """The mapping whose `key` figure is lower, with its case."""
    got = [
        (a, cases[(pages, store, a)])
        for a in FLOOR_ADVICE
        if (pages, store, a) in cases and cases[(pages, store, a)].get(key) is not None
    ]
    return min(got, key=lambda x: x[1][key]) if got else None


def floor_section(run: Run, out: list[str], rows: list[tuple[str, str, str]]) -> None:
    """Each exact workload as a multiple of the floor (target/pagebuddy-bench/floor.json)."""
    data = load_json(DATA / "floor.json")
    out += ["## The floor: each workload as a multiple of one dependent random read", ""]
    if data is None:
        out += ["Not run: no `target/pagebuddy-bench/floor.json`.", ""]
        return
    cases = floor_cases(data)
    peers = {p["pages"]: p for p in data.get("peers", []) if p.get("id") == "bsa-frame"}
    least = {p["pages"]: p for p in data.get("peers", []) if p.get("id") == "least"}
    sizes = sorted({c["pages"] for c in data["cases"]})
    out += [
        "`cargo bench -p pagebuddy-benches --bench floor` (`benches/benches/floor.rs`), in the "
        f"same run; median of {data['rounds']} timed rounds per figure. The *floor* is what one "
        "read costs when each read's address is the value of the read before (a pointer chase "
        "through one random cycle over the 64-byte lines of a pool's state), in the very "
        "mappings the pool is then built on: a workload that missed the caches once per "
        "operation, with nothing to overlap, would cost 1x. The side table's state is its "
        "metadata and its links (12 bytes a page, two mappings); the intrusive store keeps its "
        "links in the first bytes of each free page, so its state is the metadata and the "
        "first line of every page of the arena (a line, and with 4 KiB pages a TLB entry, of "
        "its own per page: what the pool's link reads need). Each store is measured on two "
        "mappings: 4 KiB pages, and aligned to 2 MiB and advised with `MADV_HUGEPAGE` "
        "(`pagebuddy::mapped::MappedSlice`, the helper the Python package maps its pools with); "
        "*AnonHugePages* is the process's memory the kernel backed with huge pages at the end "
        "of the case. The workloads are those of the tables above, scaled to the pool (churn "
        "holds half the pages, mixed keeps half full after two warm-up steps a page), zero "
        "never, orders capped at 11; FrameAllocator runs the same workloads at each size, "
        "before that size's pools and again after them (its figure is the mean of the two, "
        "each a median of the rounds), so that it meets the machine as the pools did. "
        "Steps of churn and mixed do not depend on the memory the step before read, so the "
        "processor overlaps their misses and they can cost less than 1x. *Least* is what a "
        "churn step costs an allocator that keeps the least state per page: a 4-byte word "
        "(held or free) checked and flipped on each free and allocation, huge pages, the free "
        "pages on a LIFO stack so that each allocation takes the page just freed: what the "
        "workload itself costs (a held page's handle read at a random index of its array, then "
        "that page's word), a few instructions a step, so that the processor overlaps the "
        "reads of many steps. The *overlapped read* reads the floor's lines in the same "
        "random order, but with no read's address the value of another, so that the processor "
        "keeps as many of the misses in flight as it can: what a miss costs when nothing waits "
        "on it, and k times it the least that k misses an operation over that state can cost. "
        "Between the two lies how much of its misses a workload overlaps.",
        "",
        "| pages | store | mapping | state | floor | overlapped read | "
        + " | ".join(FLOOR_WORKLOADS.values())
        + " | AnonHugePages |",
        "|---|---|---|---|---|---|" + "---|" * len(FLOOR_WORKLOADS) + "---|",
    ]
    notes = Notes()
    for pages in sizes:
        for store, store_name in FLOOR_STORES.items():
            for advice, advice_name in FLOOR_ADVICE.items():
                c = cases.get((pages, store, advice))
                if c is None:
                    continue
                f = c["floor_ns"]
                cells = []
                for w in FLOOR_WORKLOADS:
                    ns = c.get(f"{w}_ns")
                    if ns is None:
                        cells.append(f"not measured {notes.ref(c['note'])}" if c["note"] else "-")
                    elif f:
                        cells.append(f"{fmt_ns(ns)} ({fmt_ratio(ns / f)})")
                    else:
                        cells.append(fmt_ns(ns))
                floor_cell = fmt_ns(f) if f is not None else f"not measured {notes.ref(c['note'])}"
                over = c.get("overlapped_ns")
                over_cell = fmt_ns(over) if over is not None else "-"
                huge = c.get("anon_huge_kib")
                mapping = advice_name
                if advice == "huge" and not c.get("huge_advised"):
                    # The largest mapping: the links (8 bytes a page), or the arena.
                    largest = pages * (8 if store == "side-table" else data["page_size"])
                    mapping += (
                        " (not advised: smaller than one)"
                        if largest < 2 << 20
                        else " (advice refused)"
                    )
                out.append(
                    f"| {pow2(pages)} | {store_name} | {mapping} | "
                    f"{fmt_bytes(c['state_bytes'])} | {floor_cell} | {over_cell} | "
                    + " | ".join(cells)
                    + f" | {'-' if huge is None else f'{huge:,} KiB'} |"
                )
        p = peers.get(pages)
        if p:
            out.append(
                f"| {pow2(pages)} | FrameAllocator | its own (B-trees on the heap) | - | - | - | "
                + " | ".join(fmt_ns(p.get(f"{w}_ns")) for w in FLOOR_WORKLOADS)
                + " | - |"
            )
        lst = least.get(pages)
        if lst:
            out.append(
                f"| {pow2(pages)} | least (a word a page, LIFO) | huge | "
                f"{fmt_bytes(4 * pages)} | - | - | "
                + " | ".join(
                    fmt_ns(lst[f"{w}_ns"]) if lst.get(f"{w}_ns") else "-" for w in FLOOR_WORKLOADS
                )
                + " | - |"
            )
    out.append("")
    out += notes.render()
    out += [
        "Cells: time per operation (its multiple of the floor of the same store and mapping)."
        + (
            " The machine was busy during this run: the floor and the workloads ran at "
            "different moments, so their ratios carry the swings of the load; read them "
            "against a run on a quiet machine before judging a goal."
            if busy(machine())
            else ""
        ),
        "",
    ]

    # The peers of the main tables (same run, 2^18 pages) against the side table's floor.
    side = cases.get((1 << 18, "side-table", "default"))
    if side and side.get("floor_ns") and run.alloc:
        f = side["floor_ns"]
        parts = []
        for w in FLOOR_WORKLOADS:
            got = []
            for ident in PB_NEVER + PEERS:
                m = run.measure(w, ident)
                if m["kind"] in ("ns", "single"):
                    got.append(f"{SHORT_NAMES[ident]} {fmt_ns(m['ns'])} ({fmt_ratio(m['ns'] / f)})")
            if got:
                parts.append(f"{w}: " + ", ".join(got))
        if parts:
            out += [
                "The allocators of the first table (same run, 2^18 pages, their own memory), as "
                f"multiples of the side table's floor with 4 KiB pages ({fmt_ns(f)}): "
                + "; ".join(parts)
                + ".",
                "",
            ]

    # Huge pages against 4 KiB pages, per store and size.
    verdicts = []
    for pages in sizes:
        for store, store_name in FLOOR_STORES.items():
            a, b = cases.get((pages, store, "default")), cases.get((pages, store, "huge"))
            if not a or not b:
                continue
            ratios = [
                f"{w} {fmt_ratio(b[f'{w}_ns'] / a[f'{w}_ns'])}"
                for w in ("floor", *FLOOR_WORKLOADS)
                if a.get(f"{w}_ns") and b.get(f"{w}_ns")
            ]
            if ratios:
                verdicts.append(f"{pow2(pages)} {store_name}: " + ", ".join(ratios))
    if verdicts:
        out += [
            "Huge pages against 4 KiB pages (time with huge pages / time without; below 1 huge "
            "pages are faster): " + "; ".join(verdicts) + ".",
            "",
        ]

    # The goals: churn at most 1.5x the floor and no slower than FrameAllocator, the hot pair
    # at most 3x, at 2^18 and 2^22 pages, each store on its better mapping.
    slow: dict[int, list[str]] = {}
    for pages in (1 << 18, 1 << 22):
        for store, store_name in FLOOR_STORES.items():
            for w, bound in FLOOR_GOALS.items():
                best = best_mapping(cases, pages, store, f"{w}_ns")
                target = (
                    f"{w} ≤ {bound:g}x the floor at {pow2(pages)} pages ({store_name}, "
                    "the faster mapping)"
                )
                if best is None or not best[1].get("floor_ns"):
                    c = cases.get((pages, store, "default")) or {}
                    rows.append((target, c.get("note") or "not measured", "not measured"))
                    continue
                advice, c = best
                r = c[f"{w}_ns"] / c["floor_ns"]
                measured = (
                    f"{fmt_ns(c[f'{w}_ns'])} against a floor of {fmt_ns(c['floor_ns'])} "
                    f"({FLOOR_ADVICE[advice]}): {fmt_ratio(r)}"
                )
                verdict = "met" if r <= bound else "missed"
                p = peers.get(pages)
                if w == "churn" and p and p.get("churn_ns"):
                    fa = p["churn_ns"]
                    measured += f"; FrameAllocator {fmt_ns(fa)} ({fmt_ratio(c['churn_ns'] / fa)})"
                    if c["churn_ns"] > fa:
                        verdict = "missed"
                    target += " and no slower than FrameAllocator"
                lst = least.get(pages)
                if w == "churn" and lst and lst.get("churn_ns"):
                    # Its own state, not this store's: its time alone, no multiple.
                    measured += f"; least {fmt_ns(lst['churn_ns'])}"
                rows.append((target, measured, verdict + busy_mark()))
                if w == "churn" and r <= bound and verdict == "missed":
                    slow.setdefault(pages, []).append(f"{store_name} {fmt_ns(c['churn_ns'])}")
    for pages, stores in slow.items():
        fa = fmt_ns(peers[pages]["churn_ns"])
        head = (
            f"The churn step at {pow2(pages)} pages ({', '.join(stores)}) is within its floor "
            f"but slower than FrameAllocator's ({fa}). "
        )
        if pages == 1 << 18:
            # Timed after 2^20 steps: the order-0 list has drained (65,276 blocks when the
            # state is built, 124 after 400,000 steps, none after 800,000).
            same = []
            for ident in ("pagebuddy-side-never", "pagebuddy-intrusive-never", "bsa-frame"):
                m = run.measure("churn", ident) if run.alloc else {"kind": None}
                if m["kind"] in ("ns", "single"):
                    same.append(f"{SHORT_NAMES[ident]} {fmt_ns(m['ns'])}")
            text = (
                "It is timed after 2^20 steps, when the order-0 list has drained to a block or "
                "two: each step frees a random held page, whose metadata is read at a random "
                "place (and, with intrusive links, its page hinted for the next append), and "
                "takes back the page freed the step before, still cached. That is about half "
                "FrameAllocator's instructions (the table of instructions above) and a few "
                "nanoseconds either way from its step"
                + (
                    "; the same workload in the first table, same run, same size: "
                    + ", ".join(same)
                    if same
                    else ""
                )
                + "."
            )
        else:
            text = (
                "There the order-0 list still drains while it is timed, 10^5 blocks long or "
                "more: each step takes the list's head, freed long before, and reads its link "
                "to learn the next head, a chase through the list's links (with intrusive links, "
                "through the pages of the arena, each a miss and on 4 KiB pages a page walk) "
                "that the links' hint of the block two places on runs two links a miss "
                '(docs/exact-pool-levers.md, "Two links a miss on long lists"). FrameAllocator '
                "keeps no state in the pages and reuses the lowest free frame."
                + churn_memory_misses(pages)
            )
        out += [head + text, ""]


def churn_memory_misses(pages: int) -> str:
    """What docs/data/misses.json counts for the churn step at `pages` pages: the misses of
    memory (the L3's) a step of each store and of FrameAllocator, where it counted them on the
    floor section's timed steps; nothing otherwise."""
    d = load_json(MISSES)
    if not d or not isinstance(d.get("ops"), dict):
        return ""
    got = {
        c["store"]: c
        for c in d["cases"]
        if c.get("workload") == "churn" and 1 << c["shift"] == pages
    }
    if "intrusive" not in got or "frame" not in got:
        return ""
    parts = [
        f"{MISS_STORES[store].removeprefix('pagebuddy, ')} {got[store]['l3']:.2f}"
        for store in ("intrusive", "side-table", "frame")
        if store in got
    ]
    return (
        ' Counted on the steps it times (docs/data/misses.json, "What bounds each workload" '
        "below), misses past the L3, that is of memory, a step: " + ", ".join(parts) + ". The "
        "intrusive store's links lie in the first line of each free page of a "
        f"{fmt_bytes(pages * 4096)} arena (4 KiB pages there); FrameAllocator's state is its "
        "B-trees on the heap."
    )


def busy_mark() -> str:
    """What a verdict against the floor adds when the run was on a busy machine."""
    return " (busy machine: recheck on a quiet one)" if busy(machine()) else ""


def floor_beside_python() -> dict[int, tuple[float, float | None, float | None]]:
    """The side table's floor that bench.sh measured just before and just after the Python
    benchmark (python_floor.txt), per pool size: (the mean of the two, before, after)."""
    seen: dict[int, dict[str, float]] = {}
    try:
        text = (DATA / "python_floor.txt").read_text()
    except OSError:
        return {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3 or parts[0] not in ("before", "after"):
            continue
        try:
            pages, ns = int(parts[1]), float(parts[2])
        except ValueError:
            continue
        seen.setdefault(pages, {})[parts[0]] = ns
    return {
        pages: (statistics.mean(both.values()), both.get("before"), both.get("after"))
        for pages, both in seen.items()
    }


def python_floor(data: dict[str, Any], out: list[str], rows: list[tuple[str, str, str]]) -> None:
    """The Python scaling figures as multiples of the side table's floor: the one measured
    around the Python benchmark (python_floor.txt) where there is one, else the floor
    benchmark's (floor.json)."""
    scaling = data.get("scaling") or []
    if not scaling:
        return
    floor = load_json(DATA / "floor.json")
    cases = floor_cases(floor) if floor else {}
    beside = floor_beside_python()
    for (pages, store, advice), c in list(cases.items()):
        if store == "side-table" and advice == PYTHON_FLOOR_ADVICE and pages in beside:
            cases[(pages, store, advice)] = {**c, "floor_ns": beside[pages][0]}
    for pages, (mean, _, _) in beside.items():
        cases.setdefault((pages, "side-table", PYTHON_FLOOR_ADVICE), {"floor_ns": mean})
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(floor["started_unix"])) if floor else ""
    if beside:
        source = (
            "measured as the floor benchmark measures it, just before and just after the "
            "Python benchmark, in the same run (the mean of the two; "
            + ", ".join(
                f"{pow2(pages)}: {fmt_ns(before)} before, {fmt_ns(after)} after"
                for pages, (_, before, after) in sorted(beside.items())
                if before is not None and after is not None
            )
            + "), so that each multiple compares figures of the same minutes"
        )
    elif floor:
        source = f"the floor benchmark's run of {when}"
    else:
        source = "no floor run (not measured)"
    out += [
        f"`Pool` alone, without an arena (`arena=False`: its metadata and side-table links only, "
        "mapped with huge pages), fresh and with a random half of its pages held (every page "
        "allocated, then a random half freed in random order): `alloc_many(0, "
        f"{data.get('scaling_batch', 256)}, out=buf)` + `put_many(buf)` per page, after one "
        "untimed pass over the whole pool, and `alloc_pages(0)` + `put_page` per pair net of "
        "the loop; best of 3. *Floor*: the side table's, huge pages, at the same size, "
        + source
        + " (see the floor section).",
        "",
        "| pages | state | batch, per page | pair | floor |",
        "|---|---|---|---|---|",
    ]
    for m in scaling:
        c = cases.get((m["pages"], "side-table", PYTHON_FLOOR_ADVICE)) or {}
        f = c.get("floor_ns")

        def mult(ns: float, f: float | None = f) -> str:
            return f"{fmt_ns(ns)} ({fmt_ratio(ns / f)})" if f else fmt_ns(ns)

        out.append(
            f"| {pow2(m['pages'])} | {m['state']} | {mult(m['batch_ns'])} | "
            f"{mult(m['pair_ns'])} | {fmt_ns(f)} |"
        )
    out += [
        "",
        "Cells: time (its multiple of the floor)."
        + (
            " The machine was busy: the floor and these figures ran at different moments, "
            "under different load."
            if busy(machine()) and not beside
            else ""
        ),
        "",
    ]
    big = next((m for m in scaling if m["pages"] == 1 << 22 and m["state"] == "half held"), None)
    if big is not None:
        c = cases.get((1 << 22, "side-table", PYTHON_FLOOR_ADVICE)) or {}
        f = c.get("floor_ns")
        fresh = next((m for m in scaling if m["pages"] == 1 << 22 and m["state"] == "fresh"), None)
        if f and fresh is not None:
            out += [python_batch_bound(big["batch_ns"], fresh["batch_ns"], f), ""]
        target = (
            "Python: alloc_many + put_many on a 2^22-page pool half held at random ≤ 1.5x the "
            "floor per page"
        )
        if f:
            r = big["batch_ns"] / f
            rows.append(
                (
                    target,
                    f"{fmt_ns(big['batch_ns'])} per page against {fmt_ns(f)}: {fmt_ratio(r)}",
                    ("met" if r <= 1.5 else "missed") + busy_mark(),
                )
            )
        else:
            rows.append((target, "no floor measured at 2^22 pages", "not measured"))


def python_batch_bound(batch: float, fresh: float, floor: float) -> str:
    """What bounds the batch on the 2^22-page pool half held at random, from this run's figures."""
    extra = batch - fresh
    return (
        f"What bounds the batch on the 2^22-page pool half held at random ({fmt_ns(batch)} a "
        f"page, {fmt_ratio(batch / floor)} the floor): with half the pages held at random, "
        "about a quarter of the pool is single free pages on the order-0 list, in the order "
        "they were freed, and `alloc_many` walks that list from its head to check the blocks "
        "it will take before it takes them (in one more walk, through lines the check left in "
        "the caches). Each head's successor is learned from the side-table link of the head "
        "before it: one dependent read a page at a random place of the 48 MiB of state, the "
        "floor's own pattern, which hinting the next head (as each allocation does) cannot "
        "overlap. "
        "`put_many` then appends the same pages at the list's tail, each after reading its "
        "metadata at a random place, reads that do not depend on one another. On the fresh "
        f"pool of the same size the batch costs {fmt_ns(fresh)} a page; the difference, "
        f"{fmt_ns(extra)}, is {fmt_ratio(extra / floor)} the floor: about the chase's one "
        "read a page plus the frees' reads. A side table keeps 8 bytes of links a page, with "
        "no room for the hint of the block two places on that intrusive links carry in the "
        'free pages (docs/exact-pool-levers.md, "Two links a miss on long lists"). The '
        "floor here, over 48 MiB, can move by half from one run to the next where the "
        "machine's last-level cache, shared with other machines' work, is larger than that "
        "state, and the batch with it, by less; where the run measured the floor just before "
        "and just after the Python benchmark (the table above says so), the two are read "
        "against the same minutes."
    )


MISSES = ROOT / "docs" / "data" / "misses.json"
MISS_STORES = {
    "side-table": "pagebuddy, side table",
    "intrusive": "pagebuddy, intrusive",
    "frame": "FrameAllocator",
}
MISS_WORKLOADS = {
    "floor": (
        "read",
        "one read of the chase; its misses are what one operation would cost at the floor",
    ),
    "hot": (
        "pair",
        "on a free pool each order-0 alloc splits an order-10 block ten times and the free "
        "merges it back ten times; the FIFO lists hand out the next order-10 block each pair, "
        "so consecutive pairs walk all of that list's blocks",
    ),
    "churn": (
        "step",
        "a free of a random held page (its metadata, its buddy's, the list's ends and the "
        "link it is listed with) and an allocation that takes that page back",
    ),
    "mixed": (
        "step",
        "an allocation of a drawn order (list take, splits) or the free of a random held "
        "block (its merges): a few random pages' metadata and links each",
    ),
}


def bound_level(c: dict[str, Any]) -> tuple[str, float, str]:
    """The deepest level that workload case `c` (of misses.json) misses at least once an
    operation, which bounds it: (its words, the misses an operation there, its key)."""
    if c["l3"] >= 0.9:
        return "memory", c["l3"], "l3"
    if c["l2"] >= 0.9:
        return "the L3 (misses of the L2 it serves)", c["l2"], "l2"
    # Under one simulated L2 miss: the L2's latency on its L1d misses, instructions, or the
    # page walks callgrind does not simulate, which the sampled waits tell apart
    # (`waits_section`).
    return (
        "the L2, instructions or page walks (under one L2 miss; where it waits tells which)",
        c["l1d"],
        "l1d",
    )


def counted(ops: int | dict[str, int]) -> str:
    """What misses.json's `ops` says was counted: one number for every workload, or, per
    workload, the floor benchmark's first timed round (the same steps its times are taken on)."""
    if isinstance(ops, int):
        return f"{ops:,} operations of each workload"
    units = {"floor": "reads", "hot": "pairs", "churn": "steps", "mixed": "steps"}
    each = ", ".join(f"{n:,} {w} {units.get(w, 'operations')}" for w, n in ops.items())
    return f"the floor section's first timed round of each workload ({each})"


def misses_section(out: list[str], floor: dict[str, Any] | None = None) -> None:
    """What bounds each workload: misses per operation, from docs/data/misses.json (written by
    scripts/misses.py; nothing when it is missing). The times are the floor section's; with
    `floor` (that section's floor.json), each workload's misses are also priced at the
    overlapped read of the same state ([`overlap_bounds`])."""
    try:
        d = json.loads(MISSES.read_text())
    except (OSError, ValueError):
        return
    caches = d["caches"]

    def cache(name: str) -> str:
        c = caches[name]
        return f"{name} {fmt_bytes(c['bytes'])} {c['ways']}-way"

    out += [
        "## What bounds each workload",
        "",
        f"`{d['command']}` ({d['date']}; {d['cpu']}; {d['valgrind']}; "
        f"{d['seconds']} s): callgrind's cache simulation of this CPU's data caches "
        f"({', '.join(cache(k) for k in ('L1d', 'L2', 'L3') if k in caches)}, 64-byte lines; "
        f"run once with the L2 and once with the L3 as the last level), over {counted(d['ops'])} "
        "counted after as many untimed ones, in the floor benchmark's profile mode "
        "(`BENCH_FLOOR_PROFILE`, 4 KiB pages). Cells: data "
        "misses (reads and writes) per operation at each level, and instructions and writes "
        "per operation; the times are those of the floor section. Callgrind simulates no TLB: "
        "what a page walk adds shows in the floor section as the difference between 4 KiB and "
        "huge pages. Writes count beside the misses where an operation writes a line that "
        "misses, as a free with links in the pages writes the freed page's link: stores leave "
        "the store queue in order, so each write after that one waits for it "
        '([the levers](exact-pool-levers.md), "Stores a step"; `scripts/stores.py` lists '
        "them by instruction). Figures from `docs/data/misses.json`.",
        "",
        "| pages | allocator | workload | instructions | writes | L1d misses | L2 misses "
        "| L3 misses |",
        "|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for c in d["cases"]:
        pages = 1 << c["shift"]
        if "workload" not in c:
            notes.append(f"{pow2(pages)}, {MISS_STORES[c['store']]}: {c['note']}.")
            continue
        w = c["workload"]
        writes = f"{c['writes']:,.1f}" if "writes" in c else "-"
        out.append(
            f"| {pow2(pages)} | {MISS_STORES[c['store']]} | {w} (per {MISS_WORKLOADS[w][0]}) "
            f"| {c['instructions']:,.0f} | {writes} | {c['l1d']:.2f} | {c['l2']:.2f} "
            f"| {c['l3']:.2f} |"
        )
    out.append("")
    if notes:
        out += [" ".join(notes), ""]

    # Per workload: what it touches, and what the counts say about the bound.
    by = {(1 << c["shift"], c["store"], c["workload"]): c for c in d["cases"] if "workload" in c}
    for w, (unit, what) in MISS_WORKLOADS.items():
        if w == "floor":
            continue
        parts = []
        for (pages, store, ww), c in sorted(by.items()):
            if ww != w or store == "frame":
                continue
            fl = by.get((pages, store, "floor"))
            # The deepest level the workload misses at least once an operation bounds it; the
            # floor's read misses the same levels once, so the count at that level is the
            # workload's cost in floor reads (before the overlap of independent misses).
            level, n, at = bound_level(c)
            worth = (
                f", {n / fl[at]:.1f} floor reads' worth"
                if fl and fl[at] >= 0.5 and at != "l1d"
                else ""
            )
            writes = f", {c['writes']:,.1f} writes" if "writes" in c else ""
            parts.append(
                f"{pow2(pages)} {store.replace('-', ' ')}: {c['instructions']:,.0f} "
                f"instructions{writes} and {c['l1d']:.2f} / {c['l2']:.2f} / {c['l3']:.2f} "
                f"misses a {unit} (L1d / L2 / L3), bound by {level}{worth}"
            )
        frame = [
            f"{pow2(pages)} {c['instructions']:,.0f} instructions, {c['l3']:.2f} L3 misses"
            for (pages, store, ww), c in sorted(by.items())
            if ww == w and store == "frame"
        ]
        if parts:
            out += [
                f"- **{w}** ({what}). "
                + "; ".join(parts)
                + (f". FrameAllocator: {', '.join(frame)}" if frame else "")
                + ".",
                "",
            ]
    if floor is not None:
        out += overlap_bounds(d, floor)


WAITS = ROOT / "docs" / "data" / "waits.json"
# Frames left out of a sampled instruction's name: the standard library's and the compiler's
# (a primitive type's methods, `<u32>::wrapping_add`), which every caller shares.
WAIT_FRAMES_SKIPPED = re.compile(r"^<?(core|alloc|std)::|^<[ui](8|16|32|64|128|size)[> ]")


def wait_frame(function: str) -> str:
    """A frame of a sampled instruction as the page names it: its function without crate
    path, module or generics (`Pool::held`, `Intrusive::prefetch`, `prefetch`), the
    benchmark's marked as such."""
    name = function
    m = re.match(r"^<(.+?) as .+>::([^:]+)$", name)
    if m:
        name = f"{m[1]}::{m[2]}"
    elif name.startswith("<"):
        # `<Type<..>>::method`: the type's brackets dropped where they close.
        depth = 0
        for i, ch in enumerate(name):
            depth += {"<": 1, ">": -1}.get(ch, 0)
            if depth == 0:
                name = name[1:i] + name[i + 1 :]
                break
    while True:
        stripped = re.sub(r"<[^<>]*>", "", name)
        if stripped == name:
            break
        name = stripped
    # A method keeps its type (`Pool::held`); a free function drops its module (`prefetch`).
    parts = name.split("::")[-2:]
    short = "::".join(parts if parts[0][:1].isupper() else parts[-1:])
    return f"{short} (the benchmark)" if function.lstrip("<").startswith("floor::") else short


def wait_row(r: dict[str, Any]) -> str:
    """One sampled instruction: its share, its mnemonic and the frames it is inlined from,
    innermost first (at most four, the standard library's left out)."""
    share = f"{r['share'] * 100:.1f}%"
    if "outside" in r:
        return f"{share} in `{r['outside']}` (outside the binary: the C library)"
    if "entry" in r:
        return f"{share} on the first instruction of {wait_frame(r['entry'])} (after its call)"
    every = [f for f, _ in r.get("frames", [])]
    frames = [f for f in every if not WAIT_FRAMES_SKIPPED.match(f)]
    named = " ← ".join(wait_frame(f) for f in frames[:4])
    if not named:
        named = f"{wait_frame(every[0])} (the standard library)" if every else "?"
    return f"{share} after `{r['insn'].split()[0]}` in {named}"


def waits_section(out: list[str]) -> None:
    """Where each workload waits: the instructions its timed steps were sampled after, from
    docs/data/waits.json (written by scripts/waits.py; nothing when it is missing)."""
    try:
        d = json.loads(WAITS.read_text())
    except (OSError, ValueError):
        return
    out += [
        "## Where each workload waits",
        "",
        f"`{d['command']}` ({d['date']}; {d['cpu']}; {d['perf']}; {d['seconds']} s): "
        f"`perf record -e cpu-clock:u` at {d['frequency']:,} samples a second (a timer: this "
        "machine has no hardware counters) on the floor benchmark's profile mode, enabled "
        "around its timed loop only (`BENCH_FLOOR_PERF_CTL`), 2^18 pages on 4 KiB pages and "
        "2^22 on huge pages (FrameAllocator on its heap). A timer sample lands on the "
        "instruction after the one the core was waiting to retire, so each is charged to the "
        "instruction before it, named here with the functions it was inlined from, innermost "
        "first (the standard library's left out). Shares of each case's samples, for the "
        "instructions with 2% of them or more; the time a step is that of the sampled run, "
        "slower than the floor section's. Callgrind's counts above simulate no TLB: a step "
        "that waits on a page walk shows here. Figures from `docs/data/waits.json`.",
        "",
    ]
    notes = []
    for w in ("hot", "churn", "mixed"):
        parts = []
        for c in d["cases"]:
            if "workload" not in c:
                if w == "hot":
                    notes.append(
                        f"{pow2(1 << c['shift'])}, {MISS_STORES[c['store']]}: {c['note']}."
                    )
                continue
            if c["workload"] != w:
                continue
            head = (
                f"{pow2(1 << c['shift'])} {MISS_STORES[c['store']]} ({c['pages']} pages, "
                f"{fmt_ns(c['ns'])} a {MISS_WORKLOADS[w][0]}, {c['samples']:,} samples)"
            )
            rows = [wait_row(r) for r in c["waits"]]
            parts.append(f"{head}: " + ("; ".join(rows) if rows else "no instruction at 2%"))
        if parts:
            out += [f"- **{w}**: " + ". ".join(parts) + ".", ""]
    if notes:
        out += [" ".join(notes), ""]


def overlap_bounds(misses: dict[str, Any], floor: dict[str, Any]) -> list[str]:
    """Each workload's misses priced at the overlapped read: the misses an operation at the
    level that bounds it (misses.json, 4 KiB pages) times one overlapped read over the same
    state on 4 KiB pages (floor.json), the least those misses cost with all of them in flight;
    beside it the time measured on that mapping, and its multiple of that least. Only where the
    floor's read misses to that same level (a read that misses the L3 does not price a miss the
    L3 serves), and nothing when the floor run measured no overlapped read."""
    cases = floor_cases(floor)
    # The level each state's own read misses to (the floor read's misses in misses.json): the
    # overlapped read prices a miss of that level only.
    read_level = {
        (c["shift"], c["store"]): bound_level(c)[2]
        for c in misses.get("cases", [])
        if c.get("workload") == "floor"
    }
    lines = []
    for w in FLOOR_WORKLOADS:
        parts = []
        for c in misses.get("cases", []):
            if c.get("workload") != w or c["store"] not in FLOOR_STORES:
                continue
            pages = 1 << c["shift"]
            f = cases.get((pages, c["store"], "default"))
            if not f or f.get("overlapped_ns") is None or f.get(f"{w}_ns") is None:
                continue
            _, n, at = bound_level(c)
            if at == "l1d" or read_level.get((c["shift"], c["store"])) != at:
                continue
            least = n * f["overlapped_ns"]
            ns = f[f"{w}_ns"]
            parts.append(
                f"{pow2(pages)} {FLOOR_STORES[c['store']]} {n:.2f} x {fmt_ns(f['overlapped_ns'])} "
                f"= {fmt_ns(least)}, measured {fmt_ns(ns)} ({fmt_ratio(ns / least)})"
            )
        if parts:
            lines.append(f"- **{w}**: " + "; ".join(parts) + ".")
    if not lines:
        return []
    return [
        "The same misses with every one of them in flight at once: the misses an operation at "
        "the level that bounds the workload (above, 4 KiB pages) times one overlapped read of "
        "the floor section over the same state and mapping, where the floor's read misses to "
        "that same level, against the time the floor section measured there. Near 1x the "
        "workload keeps as many misses in flight as the machine allows and only fewer misses "
        "would make it faster; well above, its misses wait on one another or on its "
        "instructions.",
        "",
        *lines,
        "",
    ]


PYTHON_HEADING = "## Python: `Pool` against `ReferencePool`"
DISTURBED = (
    "the two programs ran under different load (a busy machine), so their difference is not the "
    "binding's cost; rerun on a quiet machine"
)
DISTURBED_CELL = "- (core slower: disturbed run)"


def python_only(args: argparse.Namespace) -> int:
    """Rewrites the Python section of the page, and the Python rows of its targets table, from
    a run of ``scripts/bench.sh --python``; the rest of the page stays as it was."""
    page = Path(args.out)
    try:
        text = page.read_text()
    except OSError:
        print(f"no {page} to update: run scripts/bench.sh", file=sys.stderr)
        return 1
    m = machine()
    section: list[str] = []
    rows: list[tuple[str, str, str]] = []
    python_section(Run(), section, rows)
    try:  # the run's time: when it wrote its results
        stamp = (DATA / "python.json").stat().st_mtime
    except OSError:
        stamp = time.time()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(stamp))
    shared = busy(m).replace("; the instruction counts are not affected", "")
    ran = (
        f" ({args.seconds} s of benchmarks after {args.build_seconds} s of building)"
        if args.seconds is not None
        else ""
    )
    section[2:2] = [
        f"This section is from its own run, `{args.command}`{ran}, {when}; {m['cpu']}, "
        f"{m['cores']} cores; load average (1, 5, 15 min) {m['load']}{shared}. The machine is "
        "shared with other builds: compare the ratios of one run, not absolute times across "
        "runs.",
        "",
    ]
    start = text.find(PYTHON_HEADING)
    if start < 0:
        print(f"{page} has no Python section: run scripts/bench.sh", file=sys.stderr)
        return 1
    end = text.find("\n## ", start + len(PYTHON_HEADING))
    end = len(text) if end < 0 else end + 1
    text = text[:start] + "\n".join(section) + "\n" + text[end:]
    # The targets table: the Python rows of this run in place of the old ones.
    lines = text.split("\n")
    kept = [ln for ln in lines if not ln.startswith("| Python:")]
    at = next(
        (i for i, ln in enumerate(kept) if ln == "| target | measured | verdict |"),
        None,
    )
    if at is not None:
        end_of_table = at + 2
        while end_of_table < len(kept) and kept[end_of_table].startswith("|"):
            end_of_table += 1
        new_rows = [f"| {t} | {v} | **{verdict}** |" for t, v, verdict in rows]
        kept[end_of_table:end_of_table] = new_rows
    page.write_text("\n".join(kept))
    print(f"rewrote the Python section of {page}", file=sys.stderr)
    return 0


# Sections measured by their own commands (not by scripts/bench.sh), carried over from the page
# as they are: each names its command, CPU and date itself.
KEPT_SECTIONS = (
    "## Shared pool against the in-process pool",
    "## Pools that grow and shrink",
)


def kept_sections(page: Path) -> list[str]:
    """The lines of each of ``KEPT_SECTIONS`` found in ``page``, up to the next ``## `` heading."""
    if not page.exists():
        return []
    lines = page.read_text().splitlines()
    kept: list[str] = []
    for heading in KEPT_SECTIONS:
        if heading not in lines:
            continue
        start = lines.index(heading)
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        kept += lines[start:end]
    return kept


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--command", default="scripts/bench.sh")
    ap.add_argument("--mode", default="short")
    ap.add_argument("--seconds", type=int, help="wall time of the benchmarks")
    ap.add_argument("--build-seconds", type=int, help="wall time of the build")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    ap.add_argument(
        "--python-only",
        action="store_true",
        help="rewrite only the Python section of --out and its rows of the targets table",
    )
    args = ap.parse_args(argv)
    if args.python_only:
        return python_only(args)

    run = Run()
    if run.alloc is None:
        print("no target/pagebuddy-bench/alloc.json: run scripts/bench.sh", file=sys.stderr)
        return 1
    m = machine()
    counts, counts_why = instructions()
    pool = run.alloc["pool"]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(run.alloc["started_unix"]))
    settings = (
        "short mode (`BENCH_SHORT=1`: 0.3 s warm-up, 0.7 s measurement, 20 samples per benchmark)"
        if run.alloc["short"]
        else "full mode (criterion's defaults: 3 s warm-up, 5 s measurement, 100 samples)"
    )
    out = [
        "# Benchmarks",
        "",
        "<!-- Generated by scripts/bench_report.py from one run of scripts/bench.sh; "
        "regenerate instead of editing. -->",
        "",
        f"- Date: {started}",
        f"- Command: `{args.command}`"
        + (
            f" ({args.seconds} s of benchmarks after {args.build_seconds} s of building)"
            if args.seconds is not None
            else ""
        ),
        f"- CPU: {m['cpu']}, {m['cores']} cores; Linux {m['kernel']}; {m['rustc']}",
        f"- Load average (1, 5, 15 min): {m['load']}" + busy(m),
        f"- Transparent huge pages: `{m['thp']}`",
        f"- Criterion: {settings}; untimed setups and whole-cycle probes get a "
        f"{run.alloc['budget_seconds']:.0f} s budget each",
        f"- Pool: {pool['pages']:,} pages of {pool['page_size']} B (1 GiB), prefaulted before "
        f"anything is timed; orders capped at {pool['order_cap']} (blocks up to "
        f"{1 << (pool['order_cap'] - 1)} pages) where the allocator allows it",
        "",
    ]

    rust_tables(run, out)
    out += kept_sections(Path(args.out))
    footprint_table(run, out)
    cached_section(run, out)
    layout_section(run, out)

    rows, bounds = evaluate(run, counts)
    floor_out: list[str] = []
    floor_section(run, floor_out, rows)
    misses_section(floor_out, load_json(DATA / "floor.json"))
    waits_section(floor_out)
    python_out: list[str] = []
    python_section(run, python_out, rows)

    out += [
        "## Targets",
        "",
        "Measured in this run and reported, never asserted by a test.",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
    ]
    out += [f"| {t} | {v} | **{verdict}** |" for t, v, verdict in rows]
    out.append("")
    if bounds:
        out += ["### What bounds the missed targets", ""]
        for b in bounds:
            out += [f"- {b}", ""]
    if counts:
        out += [
            "Instructions per operation, counted by callgrind (`BENCH_PROFILE=<workload>/<id>:n` "
            "at two loop lengths, 20,000 and 60,000 pairs for hot, 1,000,000 and 3,000,000 steps "
            "for churn; the difference divided by the difference in length cancels the setup):",
            "",
            "| workload | " + " | ".join(SHORT_NAMES[c] for c in PB_NEVER + PEERS) + " |",
            "|---|" + "---|" * len(PB_NEVER + PEERS),
        ]
        for w in dict.fromkeys(k[0] for k in counts):
            out.append(
                f"| {w} | "
                + " | ".join(
                    f"{counts[(w, c)]:,}" if (w, c) in counts else "-" for c in PB_NEVER + PEERS
                )
                + " |"
            )
        out.append("")
    elif counts_why:
        out += [f"Instruction counts: {counts_why}.", ""]

    out += floor_out
    out += python_out
    out += [
        "## How the Rust numbers are made",
        "",
        "- Peers: `buddy_system_allocator` 0.13 `FrameAllocator<11>` (frame numbers) and "
        "`Heap<23>` driven with `Layout::from_size_align(4096 << order, 4096)` (byte orders "
        "12..22, the arena 4 MiB aligned so that address buddies are page buddies), "
        "`buddy-alloc` 0.6 `BuddyAlloc` with 4 KiB leaves (its region starts just far enough "
        "before the arena for its bitmaps; it has no order cap, so a free pool is one "
        "2^18-page block), and `free-list` 0.3 `FreeList<16>` asked for naturally aligned "
        "blocks (`PageLayout::from_size_align(4096 << order, 4096 << order)`).",
        "- pagebuddy runs every workload with each zero policy and both link stores; the "
        "harness-only row is the same loop with no allocator (RNG, handle bookkeeping).",
        "- Same operations for everyone: one xorshift64* stream per purpose with fixed seeds, "
        "so every allocator sees the same draws (which page index to free, which order).",
    ]
    for w, (unit, what) in WORKLOADS.items():
        out.append(f"- **{w}**: {what}. One operation is one {unit}.")
    out += [
        "- A pairing whose untimed setup, or whose single whole cycle, exceeds the budget is "
        "reported as not measured with how far it got; a whole cycle that finishes but is too "
        "slow for repeated sampling is reported from that one timed cycle, and so is an "
        "iteration slower than a few milliseconds (mean of the probe's iterations). Nothing "
        "is dropped silently.",
        "- `BENCH_PROFILE=workload/id[:n]` runs one pairing's timed loop alone, for `perf` or "
        "callgrind (`perf stat` has no hardware counters on this machine).",
        pinning(),
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(out))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
