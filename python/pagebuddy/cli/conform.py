"""``pagebuddy conform LIBRARY``: an implementation against the model (see
:mod:`pagebuddy._conform`).

:func:`add_parser` declares the subcommand, :func:`report` runs it and returns one report,
:func:`show` is its rich renderer.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import TextColumn

from .. import _conform
from .._conform_targets import HEADER, Target, TargetError
from .._lockstep import Divergence
from ._args import EXIT_DIVERGENCE, EXIT_INTERRUPTED, EXIT_OK, Usage, output_path
from ._context import Context
from ._report import divergence
from ._show import describe_geometry, divergence_text

DESCRIPTION = (
    "Run a buddy page allocator in lockstep with pagebuddy's model over random operations: "
    "a shared library exporting the C ABI of pagebuddy_conform.h (print it with --header), "
    "or with --exec a program speaking the line protocol (docs/conform.md). On a divergence "
    "the operations are shrunk and printed as a trace and as a C function that replays them "
    "through the ABI, and the exit code is 1."
)


def add_parser(
    sub: Any,
    common: Callable[[argparse.ArgumentParser], None],
    epilog: str,
    positive: Any,
    non_negative: Any,
    seconds: Any,
) -> None:
    """Declare ``pagebuddy conform`` on the subparsers ``sub``."""
    p = sub.add_parser(
        "conform",
        help="test a buddy allocator (a C library or a program) against the model",
        description=textwrap.fill(DESCRIPTION, 78),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("library", nargs="?", metavar="LIBRARY", help="shared library exporting the ABI")
    p.add_argument(
        "--exec",
        dest="exec_command",
        metavar="COMMAND",
        help="a program speaking the line protocol instead (split as a shell would)",
    )
    p.add_argument(
        "--in-process",
        action="store_true",
        help="load the library into this process (faster; a crash then ends the run) instead "
        "of a child process",
    )
    p.add_argument(
        "--header", action="store_true", help="print pagebuddy_conform.h (the ABI) and exit"
    )
    p.add_argument(
        "--level",
        choices=_conform.LEVELS,
        default="exact",
        help="exact: pKVM's policy, every pfn and free list in order (default); buddy: any "
        "buddy allocator, each answer legal",
    )
    p.add_argument(
        "--misuse",
        action="store_true",
        help="also invalid operations, which must be refused and change nothing (default: "
        "valid operations only, for implementations that abort on misuse)",
    )
    p.add_argument(
        "--ops",
        type=positive,
        metavar="N",
        help=f"number of operations (default: run for {_conform.DEFAULT_SECONDS:g} seconds)",
    )
    p.add_argument("--seconds", type=seconds, metavar="T", help="run for T seconds")
    p.add_argument("--seed", type=non_negative, help="random seed (random if not given)")
    p.add_argument("--pages", type=positive, metavar="N", help="nr_pages of every pool")
    p.add_argument("--base-pfn", type=non_negative, metavar="PFN", help="base_pfn")
    p.add_argument("--reserved", type=non_negative, metavar="N", help="reserved_pages")
    p.add_argument("--max-order", type=positive, metavar="K", help="order cap")
    p.add_argument(
        "--zero",
        choices=("free", "alloc", "never"),
        default="free",
        help="zero policy (default free, as pKVM)",
    )
    p.add_argument(
        "--page-size", type=positive, default=4096, metavar="BYTES", help="page size (4096)"
    )
    p.add_argument(
        "--compare-every",
        type=positive,
        default=16,
        metavar="N",
        help="compare free lists every N operations (default 16)",
    )
    p.add_argument(
        "--shrink-seconds",
        type=seconds,
        default=60.0,
        metavar="T",
        help="time allowed for shrinking a divergence (default 60)",
    )
    p.add_argument("--trace", metavar="FILE", help="write the shrunk operations as a trace")
    p.add_argument("--c-file", metavar="FILE", help="write the C reproducer to FILE")
    common(p)


def _config(args: Any) -> _conform.ConformConfig:
    cfg = _conform.ConformConfig(
        level=args.level,
        misuse=args.misuse,
        ops=args.ops,
        seconds=args.seconds,
        seed=args.seed,
        pages=args.pages,
        base_pfn=args.base_pfn,
        reserved=args.reserved,
        order_cap=args.max_order,
        zero=args.zero,
        page_size=args.page_size,
        compare_every=args.compare_every,
        shrink_seconds=args.shrink_seconds,
    )
    problem = _conform.config_problem(cfg)
    if problem:
        raise Usage(f"conform: {problem}")
    for option in ("trace", "c_file"):
        path = getattr(args, option)
        if path:
            output_path("--" + option.replace("_", "-"), path)
    return cfg


def report(ctx: Context) -> dict[str, Any]:
    """Run conform; the report (``exit_code``: 0, 1 on a divergence, 130 when interrupted)."""
    args = ctx.args
    if args.header:
        with open(HEADER, encoding="utf-8") as f:
            text = f.read()
        return {"command": "conform", "ok": True, "path": HEADER, "header": text, "exit_code": 0}
    cfg = _config(args)
    if args.library is None and args.exec_command is None:
        raise Usage("conform: give a shared library, or --exec COMMAND (see --help)")
    if args.library is not None and args.exec_command is not None:
        raise Usage("conform: give a shared library or --exec COMMAND, not both")
    try:
        target = _conform.open_target(args.library, args.exec_command, in_process=args.in_process)
    except TargetError as e:
        raise Usage(str(e)) from None
    try:
        result = _run(ctx, target, cfg)
    finally:
        target.close()
    for path, text in ((args.trace, result.trace_text()), (args.c_file, result.c_reproducer)):
        if path and text:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
    found = result.divergence is not None
    g, g2 = result.geometry, result.shrunk_geometry
    return {
        "command": "conform",
        "ok": not found,
        "target": result.target,
        "level": result.level,
        "misuse": result.misuse,
        "zero": result.zero,
        "optional": result.optional,
        "seed": result.seed,
        "ops": result.ops,
        "episodes": result.episodes,
        "rejected": result.rejected,
        "seconds": round(result.seconds, 3),
        "ops_per_second": round(result.ops_per_second, 1),
        "interrupted": result.interrupted,
        "divergence": _divergence(result.divergence),
        "geometry": g.as_dict() if g else None,
        "max_order": g.max_order if g else None,
        "episode_ops": len(result.episode_ops) if found else None,
        "shrunk_ops": len(result.shrunk_ops) if found else None,
        "shrunk_geometry": g2.as_dict() if g2 else None,
        "shrunk_divergence": _divergence(result.shrunk_divergence),
        "trace": result.trace_text() or None,
        "c_reproducer": result.c_reproducer or None,
        "trace_file": args.trace,
        "c_file": args.c_file,
        "exit_code": (
            EXIT_DIVERGENCE if found else (EXIT_INTERRUPTED if result.interrupted else EXIT_OK)
        ),
    }


def _divergence(d: Divergence | None) -> dict[str, Any] | None:
    """A divergence as a dict, in conform's words (the implementation, not ``Pool``)."""
    out = divergence(d)
    if out is not None:
        out["detail"] = _conform.implementation_words(out["detail"])
    return out


def _run(ctx: Context, target: Target, cfg: _conform.ConformConfig) -> _conform.ConformResult:
    """The run under a progress bar of operations (or seconds) and ops/s."""
    ops = cfg.ops
    limit = cfg.seconds if cfg.seconds is not None else (None if ops else _conform.DEFAULT_SECONDS)
    with ctx.progress(
        TextColumn("{task.fields[count]}"), TextColumn("{task.fields[rate]}")
    ) as prog:
        total = float(ops) if ops is not None else float(limit or 1)
        task = prog.add_task("conform", total=total, count="", rate="")

        def tick(n: int, elapsed: float) -> None:
            done = n if ops is not None else elapsed
            prog.update(
                task,
                completed=min(done, total),
                count=f"{n:,} ops",
                rate=f"{n / elapsed:,.0f} ops/s" if elapsed > 0 else "",
            )

        def shrinking(r: _conform.ConformResult) -> None:
            prog.update(task, description=f"divergence after {r.ops:,} ops; shrinking", total=None)

        return _conform.run(target, cfg, progress=tick, on_divergence=shrinking)


def show(out: Console, r: dict[str, Any]) -> None:
    """The rich rendering of a conform report."""
    if "header" in r:
        out.file.write(r["header"])
        out.file.flush()
        return
    misuse = "valid and invalid operations" if r["misuse"] else "valid operations only"
    optional = ", ".join(r["optional"]) or "none"
    out.print(
        f"[bold]pagebuddy conform[/] {escape(r['target'])}: level {r['level']}, {misuse}, "
        f"zero={r['zero']}; seed {r['seed']} (repeat with --seed {r['seed']})"
    )
    out.print(f"Optional functions exported: {optional}", markup=False)
    out.print(
        f"{r['ops']:,} operations in {r['episodes']:,} pool(s), {r['seconds']:.1f} s, "
        f"{r['ops_per_second']:,.0f} ops/s; {r['rejected']:,} refused by both"
        + (" [yellow](interrupted)[/]" if r["interrupted"] else "")
    )
    if r["divergence"] is None:
        out.print(
            f"[green]Agreement[/]: the implementation and the model agreed on all "
            f"{r['ops']:,} operations"
        )
        return
    g = describe_geometry(r["geometry"], r["max_order"])
    out.print(f"[bold red]DIVERGENCE[/] in pool {r['episodes']} ({escape(g)}):")
    out.print(f"  {divergence_text(r['divergence'])}", markup=False)
    if r["shrunk_divergence"] is not None:
        out.print(
            f"Shrunk from {r['episode_ops']:,} to {r['shrunk_ops']} operation(s): "
            f"{divergence_text(r['shrunk_divergence'])}",
            markup=False,
        )
    out.print("\nTrace (pagebuddy replay runs it on pagebuddy's own pool):\n")
    out.file.write(r["trace"])
    if r["c_reproducer"]:
        out.print("\nC reproducer (exits 1 while the divergence is there):\n")
        out.file.write(r["c_reproducer"])
    out.file.flush()
    for key, what in (("trace_file", "Trace"), ("c_file", "C reproducer")):
        if r[key]:
            out.print(f"{what} written to {escape(r[key])}")
