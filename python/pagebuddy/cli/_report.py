"""Pieces of the reports the subcommands build: plain dicts, the same for both renderers.

A lockstep run's report (:func:`run_report`) holds the geometry, the operation counts, the
refusals, the divergence if any, the free blocks at start and end with Linux's
fragmentation figures (:func:`state`) and the timing of both pools (:func:`timing`).
"""

from __future__ import annotations

from typing import Any

from .. import _frag
from .._bench import time_ops
from .._lockstep import Divergence, RunResult, default_classes
from .._rules import Geometry, Op


def state(blocks: list[int]) -> dict[str, Any]:
    """Free blocks per order and the figures derived from them."""
    orders = len(blocks)
    return {
        "free_blocks": blocks,
        "free_pages": _frag.free_pages(blocks),
        "largest_free_order": _frag.largest_free_order(blocks),
        "extfrag_index": [_frag.extfrag_index(blocks, k) / 1000 for k in range(orders)],
        "unusable_index": [_frag.unusable_index(blocks, k) / 1000 for k in range(orders)],
        "buddyinfo": _frag.buddyinfo_line(blocks),
    }


def timing(
    g: Geometry, ops: list[Op], pool_cls: type | None = None, model_cls: type | None = None
) -> dict[str, float]:
    """Time ``ops`` on each class, as given and again with zeroing off (bookkeeping only)."""
    if pool_cls is None or model_cls is None:
        dp, dm = default_classes(g)
        pool_cls, model_cls = pool_cls or dp, model_cls or dm
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


def divergence(d: Divergence | None, **extra: Any) -> dict[str, Any] | None:
    """A divergence as a dict (``step``, ``op``, ``what``, ``detail`` and ``extra``)."""
    return None if d is None else {**d.as_dict(), **extra}


def run_report(
    command: str, g: Geometry, result: RunResult, timed: dict[str, float] | None
) -> dict[str, Any]:
    """The report of one lockstep run of ``command``."""
    return {
        "command": command,
        "ok": result.ok,
        "geometry": g.as_dict(),
        "max_order": g.max_order,
        "ops": len(result.ops),
        "op_counts": dict(result.op_counts),
        "rejected": dict(result.rejected),
        "divergence": divergence(result.divergence),
        "start": state(result.start_free_blocks),
        "end": state(result.end_free_blocks),
        "time": timed,
    }
