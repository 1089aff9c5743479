"""The ``pagebuddy`` command (also ``python -m pagebuddy``).

Subcommands: ``demo`` (the default), ``fuzz``, ``replay``, ``bench`` and ``ftrace``; see
``pagebuddy --help`` and ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import io
import json
import os
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Sequence
from typing import IO, Any, Callable, NoReturn

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from . import _frag
from ._bench import time_ops
from ._lockstep import GeometryRefused, RunResult, run_ops
from ._trace import (
    MAX_PAGES,
    Geometry,
    Section,
    TraceError,
    TraceWriter,
    format_op,
    memory_problem,
    read_trace,
)

__all__ = [
    "EXIT_DIVERGENCE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REJECTED",
    "EXIT_USAGE",
    "build_parser",
    "main",
]

EXIT_OK = 0
EXIT_DIVERGENCE = 1
EXIT_USAGE = 2
EXIT_REJECTED = 3
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """\
exit codes:
  0    success: Pool and ReferencePool agreed on everything
  1    divergence: Pool and ReferencePool disagreed (fuzz prints a reproducer)
  2    usage error, malformed trace (reported with its line number), unreadable
       file or unwritable output, or a missing optional dependency (--plot
       needs: pip install 'pagebuddy[plot]'); one line, or JSON with --json
  3    replay --strict: the trace holds operations the allocator refused
       (e.g. a put of a free page); they are reported either way
  130  interrupted (Ctrl-C)
"""

DESCRIPTION = """\
pagebuddy: a pKVM-style buddy page allocator (native Pool) checked against a
pure-Python model (ReferencePool). Without a subcommand, runs the demo
(`pagebuddy --json` is `pagebuddy demo --json`).
"""


#: Most operations ``demo --ops`` generates (the workload is built in memory before it runs).
MAX_DEMO_OPS = 1_000_000


class _Usage(Exception):
    """A usage error (exit code 2): bad arguments, an unreadable or malformed input.

    ``extra`` holds fields that the JSON error object carries besides ``error``.
    """

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.extra = extra


class _Parser(argparse.ArgumentParser):
    """An argument parser that raises :class:`_Usage` instead of printing usage and exiting,
    so that ``main`` reports every usage error the same way (one line, or JSON)."""

    def error(self, message: str) -> NoReturn:
        raise _Usage(f"{self.prog}: {message} (see {self.prog} --help)")

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        # argparse turns `--opt=--` into an empty list without calling the option's type.
        for arg in args if args is not None else sys.argv[1:]:
            if arg == "--":
                break
            option, eq, value = arg.partition("=")
            if arg.startswith("-") and eq and value == "--":
                self.error(f"argument {option}: expected one argument")
        return super().parse_known_args(args, namespace)


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _positive(text: str) -> int:
    v = _int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text!r}")
    return v


def _non_negative(text: str) -> int:
    v = _int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return v


def _int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An argument type: an integer in ``lo..hi``."""

    def parse(text: str) -> int:
        v = _int(text)
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be in {lo}..{hi}: {text!r}")
        return v

    return parse


def _output_path(option: str, path: str) -> None:
    """Refuse, before any work, an output path that cannot be a file: a directory, or a file
    in a directory that does not exist."""
    if os.path.isdir(path):
        raise _Usage(f"{option} {path}: is a directory (give a file name)")
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        raise _Usage(f"{option} {path}: directory {parent} does not exist")


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return v


def _wrap(text: str) -> str:
    return textwrap.fill(text, 78)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``pagebuddy`` command."""
    from ._bench import MAX_PAGES as BENCH_MAX_PAGES
    from ._bench import MIN_PAGES as BENCH_MIN_PAGES
    from ._fuzz import DEFAULT_SECONDS
    from ._workload import DEMO_OPS, DEMO_SEED

    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="pagebuddy", description=DESCRIPTION, epilog=EXIT_CODES_HELP, formatter_class=fmt
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    # (`pagebuddy --version --json`; `pagebuddy --json` alone is `pagebuddy demo --json`)
    parser.add_argument("--json", action="store_true", dest="top_json", help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--json", action="store_true", help="print one JSON object instead of tables"
        )
        p.add_argument(
            "--no-progress", action="store_true", help="no progress bar (off anyway if not a TTY)"
        )

    demo = sub.add_parser(
        "demo",
        help="replay the embedded VM-host workload through both pools (default)",
        description=_wrap(
            "Replay the embedded workload (a hypervisor's page pool serving VMs: "
            "page-table pages at order 0, 2 MiB blocks at order 9, shared pages, block splits, "
            "bursts of frees) through Pool and ReferencePool in lockstep, check that they agree, "
            "and report fragmentation and timing."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    demo.add_argument(
        "--seed", type=_int, default=DEMO_SEED, help=f"workload seed (default {DEMO_SEED})"
    )
    demo.add_argument(
        "--ops",
        type=_int_in(1, MAX_DEMO_OPS),
        default=DEMO_OPS,
        help=f"approximate number of operations (default {DEMO_OPS}, at most {MAX_DEMO_OPS})",
    )
    demo.add_argument(
        "--plot", metavar="PATH", help="write a PNG: free blocks over time, arena map"
    )
    demo.add_argument("--record", metavar="FILE", help="write the operations as a trace")
    common(demo)

    fz = sub.add_parser(
        "fuzz",
        help="differential fuzzing of Pool against ReferencePool",
        description=_wrap(
            "Random operations on random geometries, run through Pool and "
            "ReferencePool in lockstep. On a divergence the operations are shrunk to a short "
            "reproducer, printed as a runnable Python snippet, and the exit code is 1. "
            "Geometry options not given are drawn at random for each episode (fresh pool)."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    fz.add_argument(
        "--ops",
        type=_positive,
        nargs="?",
        const=-1,
        metavar="N",
        help=f"number of operations; without N, run for about {DEFAULT_SECONDS:g} seconds "
        f"(also the default when neither --ops nor --seconds is given)",
    )
    fz.add_argument("--seconds", type=_seconds, metavar="T", help="run for T seconds")
    fz.add_argument("--seed", type=_non_negative, help="random seed (random if not given)")
    fz.add_argument(
        "--pages",
        type=_int_in(1, MAX_PAGES),
        metavar="N",
        help=f"nr_pages of every pool (at most {MAX_PAGES})",
    )
    fz.add_argument("--base-pfn", type=_non_negative, metavar="PFN", help="base_pfn")
    fz.add_argument("--reserved", type=_int_in(0, MAX_PAGES), metavar="N", help="reserved_pages")
    fz.add_argument("--max-order", type=_positive, metavar="K", help="max_order cap")
    fz.add_argument("--zero", choices=("free", "alloc", "never"), help="zero policy")
    fz.add_argument("--page-size", type=_positive, metavar="BYTES", help="page_size")
    fz.add_argument("--links", choices=("side", "intrusive"), help="link store")
    fz.add_argument(
        "--arena",
        choices=("owned", "buffer"),
        help="pool-owned arena, or a bytearray handed in (arenas are then compared)",
    )
    fz.add_argument(
        "--compare-every",
        type=_positive,
        default=16,
        metavar="N",
        help="compare free lists every N operations (default 16; results are compared "
        "after every operation, everything at the end of each episode)",
    )
    fz.add_argument(
        "--shrink-seconds",
        type=_seconds,
        default=60.0,
        metavar="T",
        help="time allowed for shrinking a divergence (default 60)",
    )
    fz.add_argument("--record", metavar="FILE", help="write the operations as a trace")
    fz.add_argument(
        "--reproducer", metavar="FILE", help="also write the reproducer snippet to FILE"
    )
    common(fz)

    rp = sub.add_parser(
        "replay",
        help="replay a trace file through both pools",
        description=_wrap(
            "Replay a trace (see docs/cli.md for the format) through Pool and "
            "ReferencePool in lockstep and report as demo does. Operations the allocator "
            "refuses (a put of a free page, an allocation that runs out of memory) are "
            "reported, not fatal."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    rp.add_argument("file", metavar="FILE", help="trace file ('-' for standard input)")
    rp.add_argument("--strict", action="store_true", help="exit 3 if any operation was refused")
    rp.add_argument(
        "--compare-every",
        type=_positive,
        default=1,
        metavar="N",
        help="compare free lists every N operations (default 1)",
    )
    rp.add_argument("--plot", metavar="PATH", help="write a PNG of the last section")
    common(rp)

    bn = sub.add_parser(
        "bench",
        help="the quick Python benchmark: Pool vs ReferencePool per call",
        description=_wrap(
            "Cost per call of Pool and ReferencePool for alloc, put, get, split, "
            "the batch calls, and churn and mixed workloads, with their ratio."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    bn.add_argument("--tiny", action="store_true", help="a tiny run (a few seconds)")
    bn.add_argument(
        "--pages",
        type=_int_in(BENCH_MIN_PAGES, BENCH_MAX_PAGES),
        metavar="N",
        help=f"pool size in pages ({BENCH_MIN_PAGES}..{BENCH_MAX_PAGES})",
    )
    common(bn)

    from ._ftrace_cmd import add_parser as add_ftrace

    add_ftrace(sub, common, EXIT_CODES_HELP, _positive, _int_in(1, 2**32 - 2))
    return parser


# -- output helpers ------------------------------------------------------------------------------


class _Ctx:
    """Consoles and options shared by the subcommands."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.json: bool = getattr(args, "json", False)
        self.out = Console(file=sys.stdout, highlight=False, soft_wrap=True)
        self.err = Console(file=sys.stderr, highlight=False, soft_wrap=True)
        self.show_progress = self.err.is_terminal and not getattr(args, "no_progress", False)

    def progress(self, *extra: Any) -> Progress:
        return Progress(
            SpinnerColumn(),
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            *extra,
            TimeElapsedColumn(),
            console=self.err,
            transient=True,
            disable=not self.show_progress,
        )

    def emit_json(self, obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
        sys.stdout.flush()


def _size(nbytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:g} {unit}"
        nbytes //= 1024
    return f"{nbytes} B"


def _describe_geometry(g: Geometry) -> str:
    orders = g.max_order
    parts = [
        f"{g.nr_pages} pages of {_size(g.page_size)} ({_size(g.nr_pages * g.page_size)})",
        f"at pfn {g.base_pfn:#x}",
        f"{g.reserved_pages} reserved",
        f"orders 0..{orders - 1}",
        f"zero={g.zero}",
    ]
    if g.links != "side":
        parts.append(f"links={g.links}")
    if g.arena != "owned":
        parts.append("caller's buffer")
    return ", ".join(parts)


def _state(blocks: list[int]) -> dict[str, Any]:
    orders = len(blocks)
    return {
        "free_blocks": blocks,
        "free_pages": _frag.free_pages(blocks),
        "largest_free_order": _frag.largest_free_order(blocks),
        "extfrag_index": [_frag.extfrag_index(blocks, k) / 1000 for k in range(orders)],
        "unusable_index": [_frag.unusable_index(blocks, k) / 1000 for k in range(orders)],
        "buddyinfo": _frag.buddyinfo_line(blocks),
    }


def _frag_table(g: Geometry, start: list[int], end: list[int]) -> Table:
    t = Table(
        title="Free blocks per order (buddyinfo) and Linux extfrag_index", title_justify="left"
    )
    t.add_column("order", justify="right")
    t.add_column("block", justify="right")
    t.add_column("free at start", justify="right")
    t.add_column("free at end", justify="right")
    t.add_column("extfrag start", justify="right")
    t.add_column("extfrag end", justify="right")
    t.add_column("unusable end", justify="right")
    for k in range(max(len(start), len(end))):
        s = start[k] if k < len(start) else 0
        e = end[k] if k < len(end) else 0
        t.add_row(
            str(k),
            _size(g.page_size << k),
            str(s),
            str(e),
            _frag.format_thousandths(_frag.extfrag_index(start, k)),
            _frag.format_thousandths(_frag.extfrag_index(end, k)),
            _frag.format_thousandths(_frag.unusable_index(end, k)),
        )
    return t


def _timing(g: Geometry, ops: list[Any], pool_cls: type, model_cls: type) -> dict[str, float]:
    """Time ``ops`` on each class, as given and again with zeroing off (bookkeeping only)."""
    pb, po = time_ops(pool_cls, g, ops, repeat=3)
    rb, ro = time_ops(model_cls, g, ops, repeat=1)
    t = {
        "pool_build_s": pb,
        "pool_ops_s": po,
        "reference_build_s": rb,
        "reference_ops_s": ro,
        "ratio": ro / po if po > 0 else float("inf"),
    }
    if g.zero != "never":
        g0 = g.replace(zero="never")
        _, po0 = time_ops(pool_cls, g0, ops, repeat=3)
        _, ro0 = time_ops(model_cls, g0, ops, repeat=1)
        t.update(
            pool_ops_nozero_s=po0,
            reference_ops_nozero_s=ro0,
            ratio_nozero=ro0 / po0 if po0 > 0 else float("inf"),
        )
    return t


def _ms(s: float) -> str:
    return f"{s * 1e3:,.1f} ms" if s < 10 else f"{s:,.2f} s"


def _print_report(
    ctx: _Ctx,
    g: Geometry,
    result: RunResult,
    timing: dict[str, float] | None,
    op_counts: Counter[str] | None = None,
    rejected_counts: Counter[str] | None = None,
) -> None:
    out = ctx.out
    op_counts = result.op_counts if op_counts is None else op_counts
    rejected_counts = result.rejected if rejected_counts is None else rejected_counts
    counts = ", ".join(f"{k} {v:,}" for k, v in sorted(op_counts.items()))
    out.print(f"Operations: {sum(op_counts.values()):,} ({counts})")
    rejected = sum(rejected_counts.values())
    if rejected:
        kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(rejected_counts.items()))
        out.print(f"Refused by both pools: {rejected:,} ({kinds})")
    out.print(_frag_table(g, result.start_free_blocks, result.end_free_blocks))
    out.print(f"buddyinfo at start: {_frag.buddyinfo_line(result.start_free_blocks)}")
    out.print(f"buddyinfo at end:   {_frag.buddyinfo_line(result.end_free_blocks)}")
    sp, ep = result.start_free_pages, result.end_free_pages
    out.print(
        f"Free pages: {sp:,} at start, {ep:,} at end ({100 * ep / g.nr_pages:.1f}% of the pool)"
    )
    ls, le = (
        _frag.largest_free_order(result.start_free_blocks),
        _frag.largest_free_order(result.end_free_blocks),
    )

    def lo(k: int | None) -> str:
        return "none" if k is None else f"{k} ({_size(g.page_size << k)})"

    out.print(f"Largest free order: {lo(ls)} at start, {lo(le)} at end")
    out.print(
        "extfrag_index: -1.000 = the allocation would succeed; towards 0 it fails for lack of "
        "memory, towards 1 because free memory is fragmented"
    )
    if timing is not None:
        out.print(
            f"Time for the operations (CPU time): Pool {_ms(timing['pool_ops_s'])} (best of 3), "
            f"ReferencePool {_ms(timing['reference_ops_s'])}; "
            f"Pool is {timing['ratio']:,.1f}x faster "
            f"(building the pool: {_ms(timing['pool_build_s'])} vs "
            f"{_ms(timing['reference_build_s'])})"
        )
        if "ratio_nozero" in timing:
            out.print(
                f"  the same operations with zero=never (bookkeeping only, no memset): "
                f"Pool {_ms(timing['pool_ops_nozero_s'])}, "
                f"ReferencePool {_ms(timing['reference_ops_nozero_s'])}; "
                f"Pool is {timing['ratio_nozero']:,.1f}x faster"
            )


def _report_dict(
    command: str, g: Geometry, result: RunResult, timing: dict[str, float] | None
) -> dict[str, Any]:
    return {
        "command": command,
        "ok": result.ok,
        "geometry": g.as_dict(),
        "max_order": g.max_order,
        "ops": len(result.ops),
        "op_counts": dict(result.op_counts),
        "rejected": dict(result.rejected),
        "divergence": result.divergence.as_dict() if result.divergence else None,
        "start": _state(result.start_free_blocks),
        "end": _state(result.end_free_blocks),
        "time": timing,
    }


def _classes() -> tuple[type, type]:
    from . import _lockstep

    return _lockstep.default_classes()


def _check_plot() -> None:
    from ._plot import _pyplot

    _pyplot()


def _run_with_progress(
    ctx: _Ctx, label: str, total: int, run: Callable[[Callable[[int], None]], RunResult]
) -> RunResult:
    with ctx.progress(MofNCompleteColumn()) as prog:
        task = prog.add_task(label, total=total)

        def tick(n: int) -> None:
            prog.update(task, completed=min(n, total))

        return run(tick)


# -- demo ----------------------------------------------------------------------------------------


def cmd_demo(ctx: _Ctx) -> int:
    """``pagebuddy demo``."""
    from ._workload import DEMO_GEOMETRY, demo_workload

    args = ctx.args
    if args.plot:
        _check_plot()
        _output_path("--plot", args.plot)
    if args.record:
        _output_path("--record", args.record)
    g = DEMO_GEOMETRY
    pool_cls, model_cls = _classes()
    t0 = time.perf_counter()
    result = _run_with_progress(
        ctx,
        "lockstep",
        args.ops,
        lambda tick: run_ops(
            g,
            demo_workload(g, args.seed, args.ops),
            pool_cls=pool_cls,
            model_cls=model_cls,
            sample_every=max(1, args.ops // 400),
            want_map=bool(args.plot),
            progress=tick,
        ),
    )
    if args.record:
        with open(args.record, "w", encoding="utf-8") as f:
            w = TraceWriter(f, comment=f"pagebuddy demo --seed {args.seed} --ops {args.ops}")
            w.section(g)
            w.ops(result.ops)
    timing = None
    if result.ok:
        with ctx.progress() as prog:
            prog.add_task("timing both pools", total=None)
            timing = _timing(g, result.ops, pool_cls, model_cls)
    if args.plot:
        from ._plot import plot_run

        plot_run(result, args.plot, f"pagebuddy demo (seed {args.seed})")
    elapsed = time.perf_counter() - t0
    if ctx.json:
        d = _report_dict("demo", g, result, timing)
        d.update(seed=args.seed, plot=args.plot, record=args.record, seconds=round(elapsed, 3))
        ctx.emit_json(d)
    else:
        out = ctx.out
        out.print(f"[bold]pagebuddy demo[/]: {_describe_geometry(g)}")
        out.print(
            "Workload: a hypervisor's page pool serving VMs (seed "
            f"{args.seed}): page-table pages (order 0), 2 MiB blocks (order 9), shared pages, "
            "block splits, bursts of frees"
        )
        if result.divergence is not None:
            _print_divergence(ctx, result, None)
        else:
            out.print(
                "[green]Pool and ReferencePool agree[/] on every operation: results, "
                "exceptions, free lists, block contents, page counts and check()"
            )
        _print_report(ctx, g, result, timing)
        if args.plot:
            out.print(f"Plot written to {escape(args.plot)}")
        if args.record:
            out.print(f"Trace written to {escape(args.record)}")
        out.print(f"Done in {elapsed:.1f} s")
    return EXIT_OK if result.ok else EXIT_DIVERGENCE


def _print_divergence(ctx: _Ctx, result: RunResult, section: Section | None) -> None:
    d = result.divergence
    assert d is not None
    where = ""
    if section is not None:
        if 0 <= d.step < len(section.lines):
            where = f"line {section.lines[d.step]}: "
        elif d.step < 0:
            where = f"line {section.header_line} (header): "
        else:
            where = "end of section: "
    ctx.out.print(f"[bold red]DIVERGENCE[/] {escape(where + str(d))}", markup=True)


# -- replay --------------------------------------------------------------------------------------


def cmd_replay(ctx: _Ctx) -> int:
    """``pagebuddy replay FILE``."""
    args = ctx.args
    if args.plot:
        _check_plot()
        _output_path("--plot", args.plot)
    try:
        sections = read_trace(args.file)
    except TraceError as e:
        raise _Usage(f"malformed trace: {e}", line=e.line, reason=e.reason) from None
    except OSError as e:
        raise _Usage(f"cannot read {args.file}: {e.strerror or e}") from None
    pool_cls, model_cls = _classes()
    total = sum(len(s.ops) for s in sections)
    t0 = time.perf_counter()
    results: list[RunResult] = []
    rejected_lines: list[str] = []
    n_rejected = 0
    timing = {
        "pool_build_s": 0.0,
        "pool_ops_s": 0.0,
        "reference_build_s": 0.0,
        "reference_ops_s": 0.0,
        "pool_ops_nozero_s": 0.0,
        "reference_ops_nozero_s": 0.0,
    }
    with ctx.progress(MofNCompleteColumn()) as prog:
        task = prog.add_task("replay", total=total)
        done = 0
        for i, s in enumerate(sections):
            last = i == len(sections) - 1
            base = done

            def tick(n: int, base: int = base) -> None:
                prog.update(task, completed=base + n)

            try:
                r = run_ops(
                    s.geometry,
                    s.ops,
                    pool_cls=pool_cls,
                    model_cls=model_cls,
                    compare_every=args.compare_every,
                    sample_every=max(1, len(s.ops) // 400) if last and args.plot else 0,
                    want_map=bool(last and args.plot),
                    progress=tick,
                    keep_examples=max(0, 20 - len(rejected_lines)),
                )
            except GeometryRefused as e:
                raise _Usage(
                    f"malformed trace: {args.file}:{s.header_line}: {e}",
                    line=s.header_line,
                    reason=str(e),
                ) from None
            results.append(r)
            done += len(s.ops)
            n_rejected += sum(r.rejected.values())
            for idx, op, name, message in r.rejected_examples:
                rejected_lines.append(f"line {s.lines[idx]}: {format_op(op)}: {name}: {message}")
            if not r.ok:
                break
            t = _timing(s.geometry, s.ops, pool_cls, model_cls)
            for k in timing:
                timing[k] += t.get(k, t[k.replace("_nozero", "")])
    for suffix in ("", "_nozero"):
        po, ro = timing[f"pool_ops{suffix}_s"], timing[f"reference_ops{suffix}_s"]
        timing[f"ratio{suffix}"] = ro / po if po > 0 else 0.0
    elapsed = time.perf_counter() - t0
    final = results[-1]
    section = sections[len(results) - 1]
    ok = all(r.ok for r in results)
    if args.plot and ok:
        from ._plot import plot_run

        plot_run(final, args.plot, f"pagebuddy replay {args.file}")
    code = EXIT_OK if ok else EXIT_DIVERGENCE
    if ok and args.strict and n_rejected:
        code = EXIT_REJECTED
    if ctx.json:
        d = _report_dict("replay", section.geometry, final, timing if ok else None)
        d.update(
            ok=ok,
            file=args.file,
            sections=len(sections),
            ops=total,
            rejected_total=n_rejected,
            rejected_examples=rejected_lines,
            divergence=(
                {**final.divergence.as_dict(), "line": _line_of(final, section)}
                if final.divergence
                else None
            ),
            seconds=round(elapsed, 3),
            exit_code=code,
        )
        ctx.emit_json(d)
        return code
    out = ctx.out
    out.print(
        f"[bold]pagebuddy replay[/] {escape(args.file)}: "
        f"{len(sections)} section(s), {total:,} operations"
    )
    if len(sections) > 1:
        out.print(
            f"Last section (line {section.header_line}): {_describe_geometry(section.geometry)}"
        )
    else:
        out.print(f"Pool: {_describe_geometry(section.geometry)}")
    if not ok:
        _print_divergence(ctx, final, section)
    else:
        out.print(
            "[green]Pool and ReferencePool agree[/] on every operation: results, exceptions, "
            "free lists, block contents, page counts and check()"
        )
    if rejected_lines:
        out.print(
            f"[yellow]{n_rejected:,} operation(s) broke the allocator's rules or ran out of "
            f"memory[/] (both pools refused them and were left unchanged); the first ones:"
        )
        for line in rejected_lines:
            out.print(f"  {line}", markup=False)
    op_counts: Counter[str] = Counter()
    rejected_counts: Counter[str] = Counter()
    for r in results:
        op_counts.update(r.op_counts)
        rejected_counts.update(r.rejected)
    if len(sections) > 1:
        out.print("Counts are for the whole trace; the table is for its last section.")
    _print_report(ctx, section.geometry, final, timing if ok else None, op_counts, rejected_counts)
    if args.plot and ok:
        out.print(f"Plot written to {escape(args.plot)}")
    return code


def _line_of(result: RunResult, section: Section) -> int | None:
    d = result.divergence
    if d is None:
        return None
    if 0 <= d.step < len(section.lines):
        return section.lines[d.step]
    return section.header_line if d.step < 0 else None


# -- fuzz ----------------------------------------------------------------------------------------


def cmd_fuzz(ctx: _Ctx) -> int:
    """``pagebuddy fuzz``."""
    from . import _fuzz

    args = ctx.args
    if args.reserved is not None and args.pages is not None and args.reserved > args.pages:
        raise _Usage(f"--reserved {args.reserved} exceeds --pages {args.pages}")
    ps = args.page_size
    if ps is not None and (ps < 64 or ps > 2**30 or ps & (ps - 1)):
        raise _Usage(f"--page-size {ps} must be a power of two in 64..2**30")
    if args.pages is not None:
        # The largest geometry an episode may draw: options not given at their most costly.
        worst = Geometry(nr_pages=args.pages, page_size=ps or 4096, arena=args.arena or "buffer")
        problem = memory_problem(worst)
        if problem:
            drawn = (
                ""
                if ps and args.arena
                else " (--page-size and --arena not given may be drawn as 4096 and buffer)"
            )
            raise _Usage(f"--pages {args.pages}: {problem}{drawn}")
    for option in ("record", "reproducer"):
        if getattr(args, option):
            _output_path(f"--{option}", getattr(args, option))
    if args.base_pfn is not None and args.base_pfn + (args.pages or 1) > 2**64:
        raise _Usage("--base-pfn: base_pfn + nr_pages must be <= 2**64")
    ops = args.ops if args.ops not in (None, -1) else None
    seconds = args.seconds
    if args.ops == -1 and seconds is None:
        seconds = _fuzz.DEFAULT_SECONDS
    cfg = _fuzz.FuzzConfig(
        ops=ops,
        seconds=seconds,
        seed=args.seed,
        pages=args.pages,
        base_pfn=args.base_pfn,
        reserved=args.reserved,
        order_cap=args.max_order,
        zero=args.zero,
        page_size=args.page_size,
        links=args.links,
        arena=args.arena,
        compare_every=args.compare_every,
        shrink_seconds=args.shrink_seconds,
    )
    limit_s = seconds if seconds is not None else (_fuzz.DEFAULT_SECONDS if ops is None else None)
    # Line-buffered, so that if the native module crashes the trace ends at the operation
    # that crashed it (and faulthandler prints where).
    if not faulthandler.is_enabled():
        # (AttributeError etc.: stderr without a file descriptor, as under pytest)
        with contextlib.suppress(AttributeError, OSError, ValueError):
            faulthandler.enable()
    record: IO[str] | None = (
        open(args.record, "w", encoding="utf-8", buffering=1)  # noqa: SIM115 (closed below)
        if args.record
        else None
    )
    try:
        with ctx.progress(
            TextColumn("{task.fields[count]}"), TextColumn("{task.fields[rate]}")
        ) as prog:
            total = float(ops) if ops is not None else float(limit_s or 1)
            task = prog.add_task("fuzz", total=total, count="", rate="")

            def tick(n: int, elapsed: float) -> None:
                done = n if ops is not None else elapsed
                if ops is not None and limit_s is not None:
                    done = max(n / ops, elapsed / limit_s) * total
                prog.update(
                    task,
                    completed=min(done, total),
                    count=f"{n:,} ops",
                    rate=f"{n / elapsed:,.0f} ops/s" if elapsed > 0 else "",
                )

            def shrinking(r: _fuzz.FuzzResult) -> None:
                prog.update(
                    task,
                    description=f"divergence after {r.ops:,} ops; shrinking",
                    total=None,
                )

            result = _fuzz.fuzz(cfg, progress=tick, record=record, on_divergence=shrinking)
    finally:
        if record is not None:
            record.close()
    if result.snippet and args.reproducer:
        with open(args.reproducer, "w", encoding="utf-8") as f:
            f.write(result.snippet)
    found = result.divergence is not None
    code = EXIT_DIVERGENCE if found else (EXIT_INTERRUPTED if result.interrupted else EXIT_OK)
    if ctx.json:
        ctx.emit_json(
            {
                "command": "fuzz",
                "ok": not found,
                "seed": result.seed,
                "ops": result.ops,
                "episodes": result.episodes,
                "rejected": result.rejected,
                "seconds": round(result.seconds, 3),
                "ops_per_second": round(result.ops_per_second, 1),
                "interrupted": result.interrupted,
                "divergence": result.divergence.as_dict() if result.divergence else None,
                "geometry": result.geometry.as_dict() if result.geometry else None,
                "shrunk_ops": len(result.shrunk_ops) if found else None,
                "shrunk_divergence": (
                    result.shrunk_divergence.as_dict() if result.shrunk_divergence else None
                ),
                "reproducer": result.snippet or None,
                "reproducer_trace": result.trace_text() or None,
                "record": args.record,
                "exit_code": code,
            }
        )
        return code
    out = ctx.out
    out.print(
        f"[bold]pagebuddy fuzz[/] seed {result.seed} (repeat with --seed {result.seed}): "
        f"{result.ops:,} operations in {result.episodes:,} episode(s), {result.seconds:.1f} s, "
        f"{result.ops_per_second:,.0f} ops/s; {result.rejected:,} refused by both pools"
        + (" [yellow](interrupted)[/]" if result.interrupted else "")
    )
    if not found:
        out.print("[green]No divergence[/]: Pool and ReferencePool agreed throughout")
    else:
        d = result.divergence
        g = result.geometry
        assert d is not None and g is not None
        out.print(
            f"[bold red]DIVERGENCE[/] in episode {result.episodes} ({_describe_geometry(g)}):"
        )
        out.print(f"  {d}", markup=False)
        if result.shrunk_ops:
            out.print(
                f"Shrunk from {len(result.episode_ops):,} to {len(result.shrunk_ops)} "
                "operation(s). Reproducer (a runnable Python script):"
            )
        else:
            out.print("The pools disagree before any operation. Reproducer (a Python script):")
        out.print()
        sys.stdout.flush()
        out.file.write(result.snippet)
        out.file.flush()
        if args.reproducer:
            out.print(f"\nReproducer written to {escape(args.reproducer)}")
    if args.record:
        out.print(f"Trace written to {escape(args.record)}")
    return code


# -- bench ---------------------------------------------------------------------------------------


def cmd_bench(ctx: _Ctx) -> int:
    """``pagebuddy bench``."""
    from . import _bench

    args = ctx.args
    mode = "tiny" if args.tiny else "quick"
    pool_cls, model_cls = _classes()
    with ctx.progress() as prog:
        task = prog.add_task("bench", total=len(_bench.WORKLOADS))

        names = [w[0] for w in _bench.WORKLOADS]

        def step(name: str) -> None:
            prog.update(task, description=f"bench: {name}", completed=names.index(name))

        result = _bench.run_benchmarks(
            mode, pages=args.pages, pool_cls=pool_cls, model_cls=model_cls, progress=step
        )
    if ctx.json:
        ctx.emit_json({"command": "bench", **result.as_dict()})
        return EXIT_OK
    t = Table(
        title=f"Python benchmark ({mode}: {result.pages} pages of 4 KiB, zero='never', "
        f"best of {result.repeats})",
        title_justify="left",
    )
    for col in ("workload", "unit", "Pool", "ReferencePool", "ratio"):
        t.add_column(col, justify="left" if col in ("workload", "unit") else "right")
    for m in result.results:
        t.add_row(m.name, m.unit, f"{m.pool_ns:,.0f}", f"{m.reference_ns:,.0f}", f"{m.ratio:,.1f}x")
    ctx.out.print(t)
    ctx.out.print(
        f"ns per call (per page for the batch calls), Python loop included; the loop alone "
        f"costs {result.loop_overhead_ns:.0f} ns per iteration. Took {result.seconds:.1f} s."
    )
    return EXIT_OK


def cmd_ftrace(ctx: _Ctx) -> int:
    """``pagebuddy ftrace FILE`` (in :mod:`pagebuddy._ftrace_cmd`)."""
    from ._ftrace_cmd import cmd_ftrace as run

    return run(ctx)


# -- entry point ---------------------------------------------------------------------------------

_COMMANDS: dict[str, Callable[[_Ctx], int]] = {
    "demo": cmd_demo,
    "fuzz": cmd_fuzz,
    "replay": cmd_replay,
    "bench": cmd_bench,
    "ftrace": cmd_ftrace,
}


def _wants_json(argv: Sequence[str]) -> bool:
    """Whether ``argv`` asks for JSON (``--json`` or an abbreviation argparse would accept),
    decided before parsing so that a usage error can be reported as JSON too."""
    for arg in argv:
        if arg == "--":
            return False
        if len(arg) > 2 and "--json".startswith(arg):
            return True
    return False


def _command_of(argv: Sequence[str]) -> str | None:
    return next((a for a in argv if a in _COMMANDS), None)


def _report_error(
    json_out: bool, command: str | None, message: str, code: int, **extra: Any
) -> int:
    """Report a failure as one line on stderr, or as one JSON object on stdout; return ``code``."""
    if json_out:
        obj = {"command": command, "ok": False, "error": message, **extra, "exit_code": code}
        sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
        sys.stdout.flush()
    else:
        err = Console(file=sys.stderr, highlight=False, soft_wrap=True)
        err.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)
    return code


def _parse(parser: argparse.ArgumentParser, argv: list[str], json_out: bool) -> Any:
    """``parser.parse_args(argv)``; ``--help`` prints the help (inside JSON with ``--json``) and
    returns the exit code instead of a namespace."""
    if not json_out:
        try:
            return parser.parse_args(argv)
        except SystemExit as e:  # --help
            return int(e.code or 0)
    text = io.StringIO()
    try:
        with contextlib.redirect_stdout(text):
            return parser.parse_args(argv)
    except SystemExit as e:
        code = int(e.code or 0)
        obj = {"command": _command_of(argv), "ok": code == 0, "help": text.getvalue()}
        sys.stdout.write(json.dumps({**obj, "exit_code": code}, indent=2) + "\n")
        return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pagebuddy`` with ``argv`` (default ``sys.argv[1:]``); return the exit code.

    Every outcome is reported: bad input exits 2 with one line on standard error (with
    ``--json``, one JSON object on standard output), never a traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "demo")  # no subcommand: the demo, with the options given
    json_out = _wants_json(argv)
    command = _command_of(argv)
    parser = build_parser()
    try:
        args = _parse(parser, argv, json_out)
    except _Usage as e:
        return _report_error(json_out, command, str(e), EXIT_USAGE, **e.extra)
    if isinstance(args, int):
        return args
    if args.version:
        from . import __version__

        if json_out:
            sys.stdout.write(json.dumps({"ok": True, "version": __version__}) + "\n")
        else:
            sys.stdout.write(f"pagebuddy {__version__}\n")
        return EXIT_OK
    if args.command is None:
        return _report_error(
            json_out, None, "a command is needed (see pagebuddy --help)", EXIT_USAGE
        )
    ctx = _Ctx(args)
    try:
        return _COMMANDS[args.command](ctx)
    except _Usage as e:
        return _report_error(ctx.json, args.command, str(e), EXIT_USAGE, **e.extra)
    except GeometryRefused as e:
        return _report_error(ctx.json, args.command, str(e), EXIT_USAGE)
    except KeyboardInterrupt:
        return _report_error(ctx.json, args.command, "interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:
        return EXIT_OK
    except OSError as e:  # a file named on the command line cannot be read or written
        message = f"{e.filename}: {e.strerror}" if e.filename is not None else str(e)
        return _report_error(ctx.json, args.command, message, EXIT_USAGE)
    except Exception as e:
        from ._plot import PlotUnavailable

        if isinstance(e, PlotUnavailable):
            return _report_error(ctx.json, args.command, str(e), EXIT_USAGE)
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
