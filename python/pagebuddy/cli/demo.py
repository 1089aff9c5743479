"""``pagebuddy demo``: the embedded VM-host workload through both pools, in lockstep."""

from __future__ import annotations

import time
from typing import Any

from .._lockstep import run_ops
from .._trace import TraceWriter
from .._workload import DEMO_GEOMETRY, demo_workload
from ._args import (
    EXIT_DIVERGENCE,
    EXIT_OK,
    Usage,
    check_cache_options,
    check_outputs,
    naming,
)
from ._context import Context
from ._report import run_report, timing


def report(ctx: Context) -> dict[str, Any]:
    """Run the demo; its report (``exit_code``: 0, or 1 on a divergence)."""
    args = ctx.args
    options = check_cache_options(args)
    if args.processes:
        if options:
            raise Usage(
                "--cpus: --processes runs a pool shared between processes, which has no "
                "per-CPU caches"
            )
        return processes_report(ctx)
    check_outputs(args)
    g = DEMO_GEOMETRY
    if options:
        g = g.replace(options=options)
    t0 = time.perf_counter()
    result = ctx.counted(
        "lockstep",
        args.ops,
        lambda tick: run_ops(
            g,
            demo_workload(g, args.seed, args.ops),
            sample_every=max(1, args.ops // 400),
            want_map=bool(args.plot),
            progress=tick,
        ),
    )
    if args.record:
        with naming(args.record), open(args.record, "w", encoding="utf-8") as f:
            w = TraceWriter(f, comment=f"pagebuddy demo --seed {args.seed} --ops {args.ops}")
            w.section(g)
            w.ops(result.ops)
    timed = None
    if result.ok:
        with ctx.progress() as prog:
            prog.add_task("timing both pools", total=None)
            timed = timing(g, result.ops)
    if args.plot:
        from .._plot import plot_run

        with naming(args.plot):
            plot_run(
                result,
                args.plot,
                f"pagebuddy demo: a hypervisor's page pool serving VMs (seed {args.seed})",
            )
    r = run_report("demo", g, result, timed)
    r.update(
        seed=args.seed,
        plot=args.plot,
        record=args.record,
        seconds=round(time.perf_counter() - t0, 3),
        exit_code=EXIT_OK if result.ok else EXIT_DIVERGENCE,
    )
    return r


def processes_report(ctx: Context) -> dict[str, Any]:
    """``demo --processes N``: N workers on one shared pool; exit 1 unless every page is
    accounted for and no page was held by two workers at once."""
    from .._shared import run_processes

    args = ctx.args
    t0 = time.perf_counter()
    r = run_processes(args.processes, args.ops, args.seed, check_every=max(1, args.ops // 10))
    bad = not r["accounted"] or r["stamp_errors"] or r["overlaps"]
    r.update(
        command="demo-processes",
        seed=args.seed,
        seconds=round(time.perf_counter() - t0, 3),
        exit_code=EXIT_DIVERGENCE if bad else EXIT_OK,
    )
    return r
