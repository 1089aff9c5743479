"""``pagebuddy bench``: cost per call of Pool and ReferencePool (see :mod:`pagebuddy._bench`)."""

from __future__ import annotations

from typing import Any

from .. import _bench
from .._lockstep import default_classes
from ._args import EXIT_OK
from ._context import Context


def report(ctx: Context) -> dict[str, Any]:
    """Run the benchmark; its report (schema ``pagebuddy-python-bench/1``, plus ``command``)."""
    args = ctx.args
    mode = "tiny" if args.tiny else "quick"
    pool_cls, model_cls = default_classes()
    names = [w[0] for w in _bench.WORKLOADS] + ["shared " + w[0] for w in _bench.SHARED_WORKLOADS]
    if args.pages is None:
        names += [
            f"scaling 2^{shift} {state}"
            for shift in _bench.SCALING[mode][0]
            for state in ("fresh", "half held")
        ]
    with ctx.progress() as prog:
        task = prog.add_task("bench", total=len(names))

        def step(name: str) -> None:
            prog.update(task, description=f"bench: {name}", completed=names.index(name))

        result = _bench.run_benchmarks(
            mode, pages=args.pages, pool_cls=pool_cls, model_cls=model_cls, progress=step
        )
    return {"command": "bench", **result.as_dict(), "exit_code": EXIT_OK}
