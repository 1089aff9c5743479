"""The two renderers of a report: one JSON document, or rich text and tables.

Every subcommand builds one report, a plain dict (see the subcommand modules); :func:`show`
prints it as JSON with ``--json`` and otherwise hands it to the rich renderer of its
``command``. The rich text says nothing the dict does not hold.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .. import _frag
from ._context import Context

AGREE = (
    "[green]Pool and ReferencePool agree[/] on every operation: results, exceptions, free "
    "lists, block contents, page counts and check()"
)


def show(ctx: Context, report: dict[str, Any]) -> None:
    """Print ``report``: JSON with ``--json``, else its command's rich rendering."""
    if ctx.json:
        ctx.emit_json(report)
    else:
        RICH[report["command"]](ctx.out, report)


# -- pieces ----------------------------------------------------------------------------------------


def size(nbytes: int) -> str:
    """``4 KiB``, ``64 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:g} {unit}"
        nbytes //= 1024
    return f"{nbytes} B"


def ms(s: float) -> str:
    """Seconds as ``12.3 ms`` or ``12.34 s``."""
    return f"{s * 1e3:,.1f} ms" if s < 10 else f"{s:,.2f} s"


def describe_geometry(g: dict[str, Any], max_order: int) -> str:
    """One line about a pool: its pages, first pfn, reserved pages, orders, policies."""
    parts = [
        f"{g['nr_pages']} pages of {size(g['page_size'])} ({size(g['nr_pages'] * g['page_size'])})",
        f"at pfn {g['base_pfn']:#x}",
        f"{g['reserved_pages']} reserved",
        f"orders 0 to {max_order - 1}",
        f"zero={g['zero']}",
    ]
    if g.get("links", "side") != "side":
        parts.append(f"links={g['links']}")
    if g.get("arena", "owned") != "owned":
        parts.append("caller's buffer")
    if g.get("cpus"):
        if "cache_batch" not in g and "cache_high" not in g:
            parts.append(f"per-CPU caches: cpus={g['cpus']}, sized by each slot")
        else:
            batch, high = g.get("cache_batch", 16), g.get("cache_high", 64)
            parts.append(f"per-CPU caches: cpus={g['cpus']}, batch {batch}, high {high}")
    return ", ".join(parts)


def divergence_text(d: dict[str, Any]) -> str:
    """What :class:`~pagebuddy._lockstep.Divergence` says, from its dict."""
    if d["op"] is not None:
        where = f"operation {d['step']} ({d['op']})"
    else:
        where = "constructor" if d["step"] < 0 else "comparison"
    return f"{where}: {d['detail']}"


def print_divergence(out: Console, d: dict[str, Any], where: str = "") -> None:
    """The divergence line, after ``where`` (a trace line, say)."""
    out.print(f"[bold red]DIVERGENCE[/] {escape(where + divergence_text(d))}", markup=True)


def frag_table(page_size: int, start: list[int], end: list[int]) -> Table:
    """Free blocks per order at start and end, with extfrag and unusable indices."""
    t = Table(
        title="Free blocks per order (buddyinfo) and Linux extfrag_index", title_justify="left"
    )
    for col in ("order", "block", "free at start", "free at end", "extfrag start"):
        t.add_column(col, justify="right")
    t.add_column("extfrag end", justify="right")
    t.add_column("unusable end", justify="right")
    for k in range(max(len(start), len(end))):
        t.add_row(
            str(k),
            size(page_size << k),
            str(start[k] if k < len(start) else 0),
            str(end[k] if k < len(end) else 0),
            _frag.format_thousandths(_frag.extfrag_index(start, k)),
            _frag.format_thousandths(_frag.extfrag_index(end, k)),
            _frag.format_thousandths(_frag.unusable_index(end, k)),
        )
    return t


def print_run(
    out: Console,
    report: dict[str, Any],
    op_counts: dict[str, int] | None = None,
    rejected: dict[str, int] | None = None,
) -> None:
    """Counts, refusals, the fragmentation table and the timing of a lockstep run's report."""
    op_counts = report["op_counts"] if op_counts is None else op_counts
    rejected = report["rejected"] if rejected is None else rejected
    counts = ", ".join(f"{k} {v:,}" for k, v in sorted(op_counts.items()))
    out.print(f"Operations: {sum(op_counts.values()):,} ({counts})")
    if sum(rejected.values()):
        kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(rejected.items()))
        out.print(f"Refused by both pools: {sum(rejected.values()):,} ({kinds})")
    g, start, end = report["geometry"], report["start"], report["end"]
    out.print(frag_table(g["page_size"], start["free_blocks"], end["free_blocks"]))
    out.print(f"buddyinfo at start: {start['buddyinfo']}")
    out.print(f"buddyinfo at end:   {end['buddyinfo']}")
    sp, ep = start["free_pages"], end["free_pages"]
    share = 100 * ep / g["nr_pages"]
    out.print(f"Free pages: {sp:,} at start, {ep:,} at end ({share:.1f}% of the pool)")

    def lo(k: int | None) -> str:
        return "none" if k is None else f"{k} ({size(g['page_size'] << k)})"

    out.print(
        f"Largest free order: {lo(start['largest_free_order'])} at start, "
        f"{lo(end['largest_free_order'])} at end"
    )
    out.print(
        "extfrag_index: -1.000 = the allocation would succeed; towards 0 it fails for lack of "
        "memory, towards 1 because free memory is fragmented"
    )
    t = report.get("time")
    if t is None:
        return
    out.print(
        f"Time for the operations (CPU time): Pool {ms(t['pool_ops_s'])} (best of 3), "
        f"ReferencePool {ms(t['reference_ops_s'])}; {compared(t['ratio'])} "
        f"(building the pool: {ms(t['pool_build_s'])} vs {ms(t['reference_build_s'])})"
    )
    if "ratio_nozero" in t:
        out.print(
            f"  the same operations with zero=never (bookkeeping only, no memset): "
            f"Pool {ms(t['pool_ops_nozero_s'])}, ReferencePool {ms(t['reference_ops_nozero_s'])}; "
            f"{compared(t['ratio_nozero'])}"
        )


def compared(ratio: float) -> str:
    """How ``Pool`` compares with ``ReferencePool``, from ``ratio`` = the reference's time over
    the pool's: "Pool is 3.2x faster", "Pool is 2.5x slower" (never "0.4x faster")."""
    if not ratio > 0 or math.isinf(ratio):
        return "too fast to compare (under the clock's resolution)"
    if f"{ratio:.1f}" == "1.0":
        return "Pool is as fast (1.0x)"
    if ratio > 1:
        return f"Pool is {ratio:,.1f}x faster"
    return f"Pool is {1 / ratio:,.1f}x slower"


def print_files(out: Console, r: dict[str, Any], record_note: str = "") -> None:
    """The files a run wrote: its plot and its trace."""
    if r.get("plot"):
        out.print(f"Plot written to {escape(r['plot'])}")
    if r.get("record"):
        out.print(f"Trace written to {escape(r['record'])}{record_note}")


# -- one renderer per command --------------------------------------------------------------------


def _demo(out: Console, r: dict[str, Any]) -> None:
    out.print(f"[bold]pagebuddy demo[/]: {describe_geometry(r['geometry'], r['max_order'])}")
    out.print(
        f"Workload: a hypervisor's page pool serving VMs (seed {r['seed']}): page-table pages "
        "(order 0), 2 MiB blocks (order 9), shared pages, block splits, bursts of frees"
    )
    if r["divergence"] is not None:
        print_divergence(out, r["divergence"])
    else:
        out.print(AGREE)
    print_run(out, r)
    print_files(out, r)
    out.print(f"Done in {r['seconds']:.1f} s")


def _demo_processes(out: Console, r: dict[str, Any]) -> None:
    out.print(
        f"[bold]pagebuddy demo --processes {r['processes']}[/]: one pool of {r['nr_pages']} pages "
        f"in shared memory; {r['ops']} operations ({r['ops_per_process']} a process): allocate, "
        "get/put, free, each held page stamped and read back"
    )
    verdict = "[green]every page accounted for[/]" if r["accounted"] else "[red]pages lost[/]"
    out.print(
        f"{verdict}: {r['free_pages']} free + {r['held_pages']} held = {r['nr_pages']}; "
        f"{r['held_by_workers']} held pages claimed by workers, {r['overlaps']} claimed twice, "
        f"{r['stamp_errors']} stamps overwritten, {r['checks']} checks passed"
    )
    out.print(f"Done in {r['seconds']:.1f} s")


def _replay_where(d: dict[str, Any]) -> str:
    if d["step"] < 0:
        return f"line {d['line']} (header): "
    return f"line {d['line']}: " if d["line"] is not None else "end of section: "


def _replay(out: Console, r: dict[str, Any]) -> None:
    out.print(
        f"[bold]pagebuddy replay[/] {escape(r['file'])}: "
        f"{r['sections']} section(s), {r['ops']:,} operations"
    )
    pool = describe_geometry(r["geometry"], r["max_order"])
    if r["sections"] > 1:
        out.print(f"Last section (line {r['header_line']}): {pool}")
    else:
        out.print(f"Pool: {pool}")
    d = r["divergence"]
    if d is not None:
        print_divergence(out, d, _replay_where(d))
    else:
        out.print(AGREE)
    if r["rejected_examples"]:
        out.print(
            f"[yellow]{r['rejected_total']:,} operation(s) broke the allocator's rules or ran "
            "out of memory[/] (both pools refused them and were left unchanged); the first ones:"
        )
        for line in r["rejected_examples"]:
            out.print(f"  {line}", markup=False)
    if r["sections"] > 1:
        out.print("Counts are for the whole trace; the table is for its last section.")
    print_run(out, r, r["trace_op_counts"], r["trace_rejected"])
    if r["plot"] and r["ok"]:
        out.print(f"Plot written to {escape(r['plot'])}")


def _fuzz(out: Console, r: dict[str, Any]) -> None:
    out.print(
        f"[bold]pagebuddy fuzz[/] seed {r['seed']} (repeat with --seed {r['seed']}): "
        f"{r['ops']:,} operations in {r['episodes']:,} episode(s), {r['seconds']:.1f} s, "
        f"{r['ops_per_second']:,.0f} ops/s; {r['rejected']:,} refused by both pools"
        + (" [yellow](interrupted)[/]" if r["interrupted"] else "")
    )
    if r["divergence"] is None:
        out.print("[green]No divergence[/]: Pool and ReferencePool agreed throughout")
    else:
        g = describe_geometry(r["geometry"], r["max_order"])
        out.print(f"[bold red]DIVERGENCE[/] in episode {r['episodes']} ({g}):")
        out.print(f"  {divergence_text(r['divergence'])}", markup=False)
        if r["shrunk_ops"]:
            out.print(
                f"Shrunk from {r['episode_ops']:,} to {r['shrunk_ops']} operation(s). "
                "Reproducer (a runnable Python script):"
            )
        else:
            out.print("The pools disagree before any operation. Reproducer (a Python script):")
        out.print()
        sys.stdout.flush()
        out.file.write(r["reproducer"])
        out.file.flush()
        if r["reproducer_file"]:
            out.print(f"\nReproducer written to {escape(r['reproducer_file'])}")
    if r["record"]:
        out.print(f"Trace written to {escape(r['record'])}")


def _bench(out: Console, r: dict[str, Any]) -> None:
    t = Table(
        title=f"Python benchmark ({r['mode']}: {r['pages']} pages of 4 KiB, zero='never', "
        f"best of {r['repeats']})",
        title_justify="left",
    )
    for col in ("workload", "unit", "Pool", "ReferencePool", "ratio"):
        t.add_column(col, justify="left" if col in ("workload", "unit") else "right")
    for m in r["results"]:
        t.add_row(
            m["name"],
            m["unit"],
            f"{m['pool_ns']:,.0f}",
            f"{m['reference_ns']:,.0f}",
            f"{m['ratio']:,.1f}x",
        )
    out.print(t)
    out.print(
        f"ns per call (per page for the batch calls), Python loop included; the loop alone "
        f"costs {r['loop_overhead_ns']:.0f} ns per iteration. Took {r['seconds']:.1f} s."
    )
    builtin = r.get("builtin_pair_ns", 0)
    # The pairs timed net of the loop, as the builtin pair is.
    net = ("ref_pair", "warm_pair", "cached_pair")
    pairs = {m["name"]: m["pool_ns"] for m in r["results"] if m["name"] in net}
    if builtin > 0 and pairs:
        ratios = ", ".join(f"{name} {ns / builtin:.2f}x" for name, ns in pairs.items())
        out.print(
            f"list.append + list.pop pair, timed in the same run: {builtin:.1f} ns net of the "
            f"loop; Pool's pairs (net of the loop too) against it: {ratios}."
        )
    shared = r.get("shared", [])
    if shared:
        t = Table(
            title="Pool.create_in over a bytearray (every call takes the process-shared lock "
            "and journals its writes) against Pool, same pages",
            title_justify="left",
        )
        for col in ("workload", "unit", "Pool", "shared", "shared / Pool"):
            t.add_column(col, justify="left" if col in ("workload", "unit") else "right")
        for m in shared:
            t.add_row(
                m["name"],
                m["unit"],
                f"{m['pool_ns']:,.0f}",
                f"{m['shared_ns']:,.0f}",
                f"{m['ratio']:.2f}x",
            )
        out.print(t)
    scaling = r.get("scaling", [])
    if scaling:
        t = Table(
            title=f"Pool without an arena, fresh and with a random half of its pages held: "
            f"alloc_many(0, {r['scaling_batch']}, out=) + put_many per page, "
            "alloc_pages(0) + put_page per pair (net of the loop)",
            title_justify="left",
        )
        for col in ("pages", "state", "batch ns/page", "pair ns"):
            t.add_column(col, justify="left" if col == "state" else "right")
        for m in scaling:
            t.add_row(
                f"{m['pages']:,}", m["state"], f"{m['batch_ns']:,.1f}", f"{m['pair_ns']:,.0f}"
            )
        out.print(t)


def _ftrace(out: Console, r: dict[str, Any]) -> None:
    from .ftrace import show as show_ftrace  # it builds on the pieces above

    show_ftrace(out, r)


def _conform(out: Console, r: dict[str, Any]) -> None:
    from .conform import show as show_conform  # it builds on the pieces above

    show_conform(out, r)


RICH: dict[str, Callable[[Console, dict[str, Any]], None]] = {
    "demo": _demo,
    "demo-processes": _demo_processes,
    "replay": _replay,
    "fuzz": _fuzz,
    "bench": _bench,
    "ftrace": _ftrace,
    "conform": _conform,
}
