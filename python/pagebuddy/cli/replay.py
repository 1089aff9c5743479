"""``pagebuddy replay FILE``: every section of a trace through both pools, in lockstep."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from rich.progress import MofNCompleteColumn

from .._lockstep import GeometryRefused, RunResult, run_ops
from .._rules import format_op
from .._trace import Section, TraceError, read_trace
from ._args import EXIT_DIVERGENCE, EXIT_OK, EXIT_REJECTED, Usage, check_outputs, naming
from ._context import Context
from ._report import divergence, run_report, timing

#: Refused operations listed in a report (all are counted).
EXAMPLES = 20

_TIMES = (
    "pool_build_s",
    "pool_ops_s",
    "reference_build_s",
    "reference_ops_s",
    "pool_ops_nozero_s",
    "reference_ops_nozero_s",
)


def _read(path: str) -> list[Section]:
    try:
        return read_trace(path)
    except TraceError as e:
        raise Usage(f"malformed trace: {e}", line=e.line, reason=e.reason) from None
    except OSError as e:
        raise Usage(f"cannot read {path}: {e.strerror or e}") from None


def _line_of(result: RunResult, section: Section) -> int | None:
    d = result.divergence
    if d is None:
        return None
    if 0 <= d.step < len(section.lines):
        return section.lines[d.step]
    return section.header_line if d.step < 0 else None


def report(ctx: Context) -> dict[str, Any]:
    """Replay the trace; its report (``exit_code``: 0, 1 on a divergence, 3 with ``--strict``
    when operations were refused)."""
    args = ctx.args
    check_outputs(args)
    sections = _read(args.file)
    total = sum(len(s.ops) for s in sections)
    t0 = time.perf_counter()
    results: list[RunResult] = []
    rejected_lines: list[str] = []
    times = dict.fromkeys(_TIMES, 0.0)
    with ctx.progress(MofNCompleteColumn()) as prog:
        task = prog.add_task("replay", total=total)
        done = 0
        for i, s in enumerate(sections):
            plot = bool(args.plot) and i == len(sections) - 1

            def tick(n: int, base: int = done) -> None:
                prog.update(task, completed=base + n)

            try:
                r = run_ops(
                    s.geometry,
                    s.ops,
                    compare_every=args.compare_every,
                    sample_every=max(1, len(s.ops) // 400) if plot else 0,
                    want_map=plot,
                    progress=tick,
                    keep_examples=max(0, EXAMPLES - len(rejected_lines)),
                )
            except GeometryRefused as e:
                raise Usage(
                    f"malformed trace: {args.file}:{s.header_line}: {e}",
                    line=s.header_line,
                    reason=str(e),
                ) from None
            results.append(r)
            done += len(s.ops)
            for idx, op, name, message in r.rejected_examples:
                rejected_lines.append(f"line {s.lines[idx]}: {format_op(op)}: {name}: {message}")
            if not r.ok:
                break
            t = timing(s.geometry, s.ops)
            for k in times:
                times[k] += t.get(k, t[k.replace("_nozero", "")])
    for suffix in ("", "_nozero"):
        po, ro = times[f"pool_ops{suffix}_s"], times[f"reference_ops{suffix}_s"]
        times[f"ratio{suffix}"] = ro / po if po > 0 else 0.0
    final, section = results[-1], sections[len(results) - 1]
    ok = all(r.ok for r in results)
    if args.plot and ok:
        from .._plot import plot_run

        with naming(args.plot):
            plot_run(final, args.plot, f"pagebuddy replay {args.file}")
    op_counts: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    for r in results:
        op_counts.update(r.op_counts)
        rejected.update(r.rejected)
    code = EXIT_OK if ok else EXIT_DIVERGENCE
    if ok and args.strict and rejected:
        code = EXIT_REJECTED
    d = run_report("replay", section.geometry, final, times if ok else None)
    d.update(
        ok=ok,
        file=args.file,
        sections=len(sections),
        header_line=section.header_line,
        ops=total,
        trace_op_counts=dict(op_counts),
        trace_rejected=dict(rejected),
        rejected_total=sum(rejected.values()),
        rejected_examples=rejected_lines,
        divergence=divergence(final.divergence, line=_line_of(final, section)),
        plot=args.plot,
        seconds=round(time.perf_counter() - t0, 3),
        exit_code=code,
    )
    return d
