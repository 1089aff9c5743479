"""``pagebuddy ftrace FILE``: a Linux page-allocator trace replayed (see :mod:`pagebuddy._ftrace`).

:func:`report` imports the trace, plans its lifetimes, sizes the pool, replays it (in
lockstep, or natively alone with ``--no-reference``), optionally fits the smallest pool,
and returns one report; :func:`show` is its rich renderer.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .. import _ftrace
from .._ftrace import FtraceError, Plan
from .._trace import TraceWriter, memory_problem
from ._args import EXIT_DIVERGENCE, EXIT_OK, Usage, check_outputs, naming
from ._context import Context
from ._report import run_report, timing
from ._show import AGREE, describe_geometry, ms, print_divergence, print_files, print_run

DESCRIPTION = (
    "Replay a Linux page-allocator trace: the kmem events mm_page_alloc and mm_page_free "
    "(and their relatives) as tracefs prints them (cat trace, trace_pipe) or as trace-cmd "
    "report does. Every allocation of order k allocates an order-k block, every free puts "
    "the block it frees, through Pool and ReferencePool in lockstep (or Pool alone with "
    "--no-reference); the report is demo's. docs/cli.md tells how to capture a trace."
)

#: What the replay does with each page-allocator event, for the report.
ROLES = {
    "mm_page_alloc": "replayed: allocates a block",
    "mm_page_free": "replayed: puts a block or a piece",
    "mm_page_free_direct": "replayed: puts a block or a piece",
    "mm_page_free_batched": "repeats mm_page_free: not applied",
    "mm_pagevec_free": "repeats mm_page_free: not applied",
    "mm_page_alloc_zone_locked": "buddy lists -> per-CPU list: not used",
    "mm_page_pcpu_drain": "per-CPU list -> buddy lists: not used",
    "mm_page_alloc_extfrag": "migratetype fallback: not used",
}
_BATCHED_AS_FREE = "replayed: puts a block (no mm_page_free)"


def add_parser(
    sub: Any,
    common: Callable[[argparse.ArgumentParser], None],
    epilog: str,
    positive: Any,
    pages: Any,
) -> None:
    """Declare ``pagebuddy ftrace`` on the subparsers ``sub``."""
    import textwrap

    p = sub.add_parser(
        "ftrace",
        help="replay a Linux page-allocator trace (tracefs or trace-cmd text)",
        description=textwrap.fill(DESCRIPTION, 78),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", metavar="FILE", help="trace text ('-' for standard input)")
    p.add_argument(
        "--pages",
        type=pages,
        metavar="N",
        help="pool size in pages (default: twice the peak of live pages, rounded up to a "
        "power of two); at most 2**20 in lockstep, 2**32 - 2 with --no-reference",
    )
    p.add_argument(
        "--fit",
        action="store_true",
        help="also find (by bisection over native replays) the smallest pool that serves "
        "every allocation, and its ratio to the peak of live pages",
    )
    p.add_argument(
        "--no-reference", action="store_true", help="replay on Pool alone (fast), no lockstep"
    )
    p.add_argument(
        "--lenient", action="store_true", help="skip and count malformed lines instead of failing"
    )
    p.add_argument(
        "--compare-every",
        type=positive,
        default=1,
        metavar="N",
        help="lockstep: compare free lists every N operations (default 1)",
    )
    p.add_argument("--plot", metavar="PATH", help="write a PNG: free blocks over time, arena map")
    p.add_argument("--record", metavar="OUT", help="write the replay as a pagebuddy trace")
    common(p)


def _sizing(plan: Plan, pages: int | None) -> tuple[int, str]:
    if pages is not None:
        return pages, "--pages"
    n = _ftrace.default_nr_pages(plan)
    largest = n == 1 << plan.max_order and n > 16
    return n, (
        f"default: {_ftrace.DEFAULT_HEADROOM} x the peak of {plan.peak_live_pages:,} live pages, "
        f"rounded up to a power of two"
        + (f" and at least one order-{plan.max_order} block" if largest else "")
    )


def report(ctx: Context) -> dict[str, Any]:
    """Run ``pagebuddy ftrace``; its report (``exit_code``: 0, or 1 on a divergence)."""
    args = ctx.args
    check_outputs(args)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        # One pass: the events are planned as they are read, and none is kept.
        imp, plan = _ftrace.read_and_plan(args.file, lenient=args.lenient)
    except FtraceError as e:
        raise Usage(f"malformed trace: {e}", line=e.line, reason=e.reason) from None
    except OSError as e:
        raise Usage(f"cannot read {args.file}: {e.strerror or e}") from None
    t2, c2 = time.perf_counter(), time.process_time()
    nr_pages, rule = _sizing(plan, args.pages)
    g = _ftrace.ftrace_geometry(nr_pages, plan)
    too_many = memory_problem(g)
    if too_many and not args.no_reference:
        raise Usage(f"pool of {nr_pages:,} pages ({rule}): {too_many}; use --no-reference")
    if too_many and args.record:
        raise Usage(f"--record: pool of {nr_pages:,} pages ({rule}): {too_many}")
    want_plot = bool(args.plot)
    sample_every = max(1, len(plan.actions) // 400) if want_plot else 0
    if args.no_reference:
        result = _ftrace.replay_native(
            plan,
            nr_pages,
            keep_ops=bool(args.record),
            sample_every=sample_every,
            want_map=want_plot,
        ).as_run_result()
    else:
        result = ctx.counted(
            "lockstep",
            len(plan.actions),
            lambda tick: _ftrace.replay_lockstep(
                plan,
                nr_pages,
                compare_every=args.compare_every,
                sample_every=sample_every,
                want_map=want_plot,
                progress=tick,
            )[0],
        )
    replay_s, replay_cpu = result.seconds, time.process_time() - c2
    timed = timing(g, result.ops) if not args.no_reference and result.ok else None
    fit = None
    if args.fit:
        with ctx.progress() as prog:
            task = prog.add_task("fit", total=None)

            def tried(n: int, ok: bool) -> None:
                prog.update(task, description=f"fit: {n:,} pages {'serve' if ok else 'refuse'}")

            fit = _ftrace.fit_pool(plan, progress=tried)
    if args.record:
        with naming(args.record), open(args.record, "w", encoding="utf-8") as f:
            w = TraceWriter(f, comment=f"pagebuddy ftrace {args.file} (pool: {rule})")
            w.section(g)
            w.ops(result.ops)
    if want_plot and result.ok:
        from .._plot import plot_run

        with naming(args.plot):
            plot_run(result, args.plot, f"pagebuddy ftrace {args.file}")
    r = run_report("ftrace", g, result, timed)
    r.update(
        ops=sum(result.op_counts.values()),
        file=args.file,
        lines=imp.lines,
        events=dict(imp.counts),
        unmatched_frees=plan.unmatched_frees,
        peak_live_pages=plan.peak_live_pages,
        lifetimes=plan.as_dict(),
        skipped=imp.skipped(),
        lost_events=imp.lost_events,
        malformed_examples=imp.malformed_examples,
        pool={"nr_pages": nr_pages, "rule": rule},
        replay={
            "mode": "native" if args.no_reference else "lockstep",
            "seconds": round(replay_s, 4),
            "cpu_seconds": round(replay_cpu, 4),
            **({} if args.no_reference else {"compare_every": args.compare_every}),
        },
        import_seconds=round(t2 - t0, 4),
        import_cpu_seconds=round(c2 - c0, 4),
        fit=fit.as_dict() if fit is not None else None,
        record=args.record,
        plot=args.plot if want_plot and result.ok else None,
        seconds=round(time.perf_counter() - t0, 3),
        exit_code=EXIT_OK if result.ok else EXIT_DIVERGENCE,
    )
    return r


# -- the rich renderer ---------------------------------------------------------------------------


def _events_table(r: dict[str, Any]) -> Table:
    t = Table(title="Events", title_justify="left")
    t.add_column("event")
    t.add_column("lines", justify="right")
    t.add_column("in the replay")
    batched_as_frees = r["lifetimes"]["batched_as_frees"]
    for name, n in sorted(r["events"].items(), key=lambda kv: (-kv[1], kv[0])):
        role = ROLES.get(name, "another event: skipped")
        if batched_as_frees and name in _ftrace.BATCHED_EVENTS:
            role = _BATCHED_AS_FREE
        t.add_row(name, f"{n:,}", role)
    return t


def _skipped(out: Console, r: dict[str, Any]) -> None:
    sk = r["skipped"]
    other = [
        f"{sk['other_tracers']:,} lines of other tracers" if sk["other_tracers"] else "",
        f"{sk['failed_allocations']:,} failed allocations" if sk["failed_allocations"] else "",
        f"{sk['malformed']:,} malformed lines (--lenient)" if sk["malformed"] else "",
        f"{sk['comments']:,} comment or header lines" if sk["comments"] else "",
    ]
    if any(other):
        out.print("Also skipped: " + ", ".join(x for x in other if x))
    if r["lost_events"]:
        out.print(
            f"[yellow]The kernel lost {r['lost_events']:,} events[/] (a full buffer): "
            "allocations and frees may be missing"
        )
    for line in r["malformed_examples"][:5]:
        out.print(f"  {line}", markup=False)


def _lifetimes(out: Console, r: dict[str, Any]) -> None:
    lt = r["lifetimes"]
    pieces = (
        f" ({lt['piece_frees']:,} of pieces of {lt['split_blocks']:,} split block(s))"
        if lt["split_blocks"]
        else ""
    )
    out.print(
        f"Lifetimes: {lt['allocations']:,} allocations, {lt['frees']:,} frees{pieces}; "
        f"{lt['unmatched_frees']:,} unmatched frees (pages allocated before the trace began); "
        f"peak {lt['peak_live_pages']:,} live pages, {lt['live_pages_at_end']:,} at the end"
    )
    if lt["missed_frees"] or lt["wide_frees"]:
        out.print(
            f"[yellow]{lt['missed_frees']:,} allocation(s) of pages still held[/] (a free the "
            f"trace does not show: put first); {lt['wide_frees']:,} free(s) wider than "
            "their block"
        )


def _times(out: Console, r: dict[str, Any]) -> None:
    rp = r["replay"]
    if rp["mode"] == "lockstep":
        every = rp["compare_every"]
        when = "after every operation" if every == 1 else f"every {every} operations"
        what = f"Lockstep replay (Pool and ReferencePool; free lists compared {when})"
    else:
        what = "Native replay (Pool alone)"
    cpu = rp["cpu_seconds"] + r["import_cpu_seconds"]
    out.print(
        f"{what}: {ms(rp['seconds'])}; import and lifetimes {ms(r['import_seconds'])} "
        f"(wall clock; CPU time of both: {ms(cpu)})"
    )
    fit = r["fit"]
    if fit is not None:
        out.print(
            f"Fit: the smallest pool that serves the whole trace has [bold]{fit['nr_pages']:,}"
            f"[/] pages, {fit['overhead_ratio']:.4f} x the peak of {fit['peak_live_pages']:,} "
            f"live pages ({fit['replays']} native replays, {ms(fit['seconds'])})"
        )


def show(out: Console, r: dict[str, Any]) -> None:
    """The rich rendering of an ``ftrace`` report."""
    out.print(
        f"[bold]pagebuddy ftrace[/] {escape(r['file'])}: {r['lines']:,} lines, "
        f"{sum(r['events'].values()):,} events (read in {ms(r['import_seconds'])})"
    )
    out.print(_events_table(r))
    _skipped(out, r)
    _lifetimes(out, r)
    out.print(f"Pool: {describe_geometry(r['geometry'], r['max_order'])} ({r['pool']['rule']})")
    if r["divergence"] is not None:
        print_divergence(out, r["divergence"])
    elif r["replay"]["mode"] == "lockstep":
        out.print(AGREE)
    print_run(out, r)
    _times(out, r)
    print_files(out, r, " (pagebuddy replay runs it)")
    out.print(f"Done in {r['seconds']:.2f} s")
