"""``pagebuddy fuzz``: differential fuzzing (see :mod:`pagebuddy._fuzz`)."""

from __future__ import annotations

import contextlib
import faulthandler
from typing import IO, Any

from rich.progress import TextColumn

from .. import _fuzz, _rules
from .._rules import Geometry
from .._trace import memory_problem
from ._args import (
    EXIT_DIVERGENCE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Usage,
    check_cache_options,
    check_outputs,
    naming,
)
from ._context import Context
from ._report import divergence


def _config(args: Any) -> _fuzz.FuzzConfig:
    """The run's configuration, or :class:`Usage` for options no pool can have."""
    if args.reserved is not None and args.pages is not None and args.reserved > args.pages:
        raise Usage(f"--reserved {args.reserved} exceeds --pages {args.pages}")
    if args.arena == "none":
        # Refused as Pool(..., arena=False) refuses them; options not given are drawn to fit.
        if args.zero not in (None, "never"):
            raise Usage(
                f"--arena none needs --zero never, not {args.zero}: a pool without an arena "
                "has no bytes to zero"
            )
        if args.links not in (None, "side"):
            raise Usage(
                f"--arena none needs --links side, not {args.links}: a pool without an arena "
                "has no free pages to keep links in"
            )
    ps = args.page_size
    if ps is not None and _rules.geometry_problem(1, ps, 0, 0, 1):
        raise Usage(f"--page-size {ps} must be a power of two from 64 to 2**30")
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
            raise Usage(f"--pages {args.pages}: {problem}{drawn}")
    check_outputs(args)
    check_cache_options(args)
    if args.base_pfn is not None and args.base_pfn + (args.pages or 1) > _rules.PFN_LIMIT:
        raise Usage("--base-pfn: base_pfn + nr_pages must be <= 2**64")
    ops = args.ops if args.ops not in (None, -1) else None
    seconds = args.seconds
    if args.ops == -1 and seconds is None:
        seconds = _fuzz.DEFAULT_SECONDS
    return _fuzz.FuzzConfig(
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
        cpus=args.cpus,
        cache_batch=args.cache_batch,
        cache_high=args.cache_high,
        grow=args.grow,
        compare_every=args.compare_every,
        shrink_seconds=args.shrink_seconds,
    )


def _run(ctx: Context, cfg: _fuzz.FuzzConfig, record: IO[str] | None) -> _fuzz.FuzzResult:
    """The fuzzer under a progress bar of operations (or seconds) and ops/s."""
    ops = cfg.ops
    limit_s = cfg.seconds if cfg.seconds is not None else (None if ops else _fuzz.DEFAULT_SECONDS)
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
            prog.update(task, description=f"divergence after {r.ops:,} ops; shrinking", total=None)

        return _fuzz.fuzz(cfg, progress=tick, record=record, on_divergence=shrinking)


def report(ctx: Context) -> dict[str, Any]:
    """Fuzz; the report (``exit_code``: 0, 1 on a divergence, 130 when interrupted)."""
    args = ctx.args
    cfg = _config(args)
    if not faulthandler.is_enabled():
        # (AttributeError etc.: stderr without a file descriptor, as under pytest)
        with contextlib.suppress(AttributeError, OSError, ValueError):
            faulthandler.enable()
    # Line-buffered, so that if the native module crashes the trace ends at the operation
    # that crashed it (and faulthandler prints where).
    with naming(args.record) if args.record else contextlib.nullcontext():
        record: IO[str] | None = (
            open(args.record, "w", encoding="utf-8", buffering=1)  # noqa: SIM115 (closed below)
            if args.record
            else None
        )
        try:
            result = _run(ctx, cfg, record)
        finally:
            if record is not None:
                record.close()
    if result.snippet and args.reproducer:
        with naming(args.reproducer), open(args.reproducer, "w", encoding="utf-8") as f:
            f.write(result.snippet)
    found = result.divergence is not None
    g = result.geometry
    return {
        "command": "fuzz",
        "ok": not found,
        "seed": result.seed,
        "ops": result.ops,
        "episodes": result.episodes,
        "rejected": result.rejected,
        "seconds": round(result.seconds, 3),
        "ops_per_second": round(result.ops_per_second, 1),
        "interrupted": result.interrupted,
        "divergence": divergence(result.divergence),
        "geometry": g.as_dict() if g else None,
        "max_order": g.max_order if g else None,
        "episode_ops": len(result.episode_ops) if found else None,
        "shrunk_ops": len(result.shrunk_ops) if found else None,
        "shrunk_divergence": divergence(result.shrunk_divergence),
        "reproducer": result.snippet or None,
        "reproducer_trace": result.trace_text() or None,
        "reproducer_file": args.reproducer,
        "record": args.record,
        "exit_code": (
            EXIT_DIVERGENCE if found else (EXIT_INTERRUPTED if result.interrupted else EXIT_OK)
        ),
    }
