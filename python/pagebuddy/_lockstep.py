"""Run operations through ``Pool`` and ``ReferencePool`` side by side and compare them.

:class:`Lockstep` owns one pool of each class built from the same
:class:`~pagebuddy._trace.Geometry`. :meth:`Lockstep.apply` performs one operation
on both and raises :class:`Divergence` as soon as they disagree. After every
operation it compares

* the result, or the class of the exception raised (for ``put_many`` also the
  index the error message names),
* ``free_pages``,
* for a block just allocated, its contents (``view()``), which it then fills with
  :data:`FILL` so that a later allocation shows whether it was zeroed as the
  policy requires (skipped under ``zero="never"`` with the intrusive link store,
  where contents are not modelled),

and every ``compare_every`` operations (1 = every one) the free lists.
:meth:`Lockstep.finish` compares everything: free lists, ``page_count`` of every
page, ``check()`` on both pools, and, when both pools were given a buffer and use
the side-table link store, the whole arenas.

A divergence found late (with ``compare_every > 1``) is still a divergence of
the operations applied so far; re-running them with ``compare_every=1`` (see
:func:`diverges`) pins down the first operation that shows it.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ._trace import OP_KINDS, Geometry, Op, format_op

__all__ = [
    "FILL",
    "Divergence",
    "GeometryRefused",
    "Lockstep",
    "Outcome",
    "RunResult",
    "default_classes",
    "diverges",
    "run_ops",
    "time_ops",
]

#: Byte written over every block the lockstep run allocates.
FILL = 0x5A

#: ``(value, None)`` when the call returned, ``(None, exception)`` when it raised.
Outcome = tuple[Any, Optional[BaseException]]

_PFNS_INDEX = re.compile(r"pfns\[(\d+)\]")


def default_classes() -> tuple[type, type]:
    """``(pagebuddy.Pool, pagebuddy.ReferencePool)``, imported on first use."""
    from . import Pool, ReferencePool

    return Pool, ReferencePool


def describe_outcome(value: Any, exc: BaseException | None) -> str:
    """Human-readable form of an outcome: ``returned 5`` or ``raised PageError: ...``."""
    if exc is None:
        return f"returned {value!r}"
    message = str(exc)
    return f"raised {type(exc).__name__}" + (f": {message}" if message else "")


class Divergence(Exception):
    """``Pool`` and ``ReferencePool`` disagree.

    ``step`` is the number of operations applied before the one that showed it
    (-1 for the constructor, ``len(ops)`` for the final comparison), ``op`` that
    operation (or ``None``), ``what`` a short kind (``"result"``,
    ``"exception"``, ``"free_pages"``, ``"free_lists"``, ``"contents"``,
    ``"page_count"``, ``"check"``, ``"arena"``, ``"constructor"``) and
    ``detail`` the full explanation.
    """

    def __init__(self, step: int, op: Op | None, what: str, detail: str) -> None:
        self.step = step
        self.op = op
        self.what = what
        self.detail = detail
        where = f"operation {step} ({format_op(op)})" if op is not None else _where(step)
        super().__init__(f"{where}: {detail}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "step": self.step,
            "op": format_op(self.op) if self.op is not None else None,
            "what": self.what,
            "detail": self.detail,
        }


class GeometryRefused(ValueError):
    """Both pools refused to be built with the geometry given (same exception class)."""


def _where(step: int) -> str:
    return "constructor" if step < 0 else "final comparison"


def _call(f: Callable[..., Any], args: tuple[Any, ...]) -> Outcome:
    try:
        return f(*args), None
    except Exception as e:
        return None, e
    except BaseException as e:  # e.g. a Rust panic surfacing as PanicException
        if isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        return None, e


def _first_diff(a: list[list[int]], b: list[list[int]]) -> str:
    if len(a) != len(b):
        return f"Pool has {len(a)} free lists, ReferencePool {len(b)}"
    for order, (la, lb) in enumerate(zip(a, b)):
        if la != lb:
            return f"free list of order {order}: Pool {_short(la)}, ReferencePool {_short(lb)}"
    return "free lists differ"


def _short(xs: list[int], limit: int = 12) -> str:
    if len(xs) <= limit:
        return repr(xs)
    return "[" + ", ".join(map(str, xs[:limit])) + f", ... ({len(xs)} blocks)]"


class Lockstep:
    """A ``Pool`` and a ``ReferencePool`` of the same geometry, driven together.

    ``pool_cls``/``model_cls`` default to ``pagebuddy.Pool``/``ReferencePool``; any
    class with the same constructor and methods can stand in (tests use this to
    inject a broken pool). Raises :class:`Divergence` from the constructor if the
    two disagree on the initial state.
    """

    def __init__(
        self,
        geometry: Geometry,
        pool_cls: type | None = None,
        model_cls: type | None = None,
        *,
        compare_every: int = 1,
        contents: bool = True,
    ) -> None:
        if pool_cls is None or model_cls is None:
            dp, dm = default_classes()
            pool_cls = pool_cls or dp
            model_cls = model_cls or dm
        self.geometry = geometry
        self.compare_every = max(1, compare_every)
        self.contents = contents and not (
            geometry.zero == "never" and geometry.links == "intrusive"
        )
        (self.pool, self.pool_buffer), ea = _build(geometry, pool_cls)
        (self.model, self.model_buffer), eb = _build(geometry, model_cls)
        if ea is not None or eb is not None:
            if ea is None or eb is None or type(ea) is not type(eb):
                raise Divergence(
                    -1,
                    None,
                    "constructor",
                    f"Pool {describe_outcome(None, ea) if ea else 'was built'}, "
                    f"ReferencePool {describe_outcome(None, eb) if eb else 'was built'}",
                )
            # Both refuse the geometry: not a divergence, a bad geometry.
            raise GeometryRefused(f"both pools refuse this geometry: {describe_outcome(None, eb)}")
        self.steps = 0
        self._fa = {k: getattr(self.pool, m) for k, (m, _) in OP_KINDS.items()}
        self._fb = {k: getattr(self.model, m) for k, (m, _) in OP_KINDS.items()}
        self._fills: dict[int, bytes] = {}
        self.compare_state(-1, None)

    # -- comparisons -------------------------------------------------------------------------

    def compare_state(self, step: int, op: Op | None) -> None:
        """Compare ``free_pages`` and the free lists now."""
        fa, fb = self.pool.free_pages, self.model.free_pages
        if fa != fb:
            raise Divergence(step, op, "free_pages", f"free_pages: Pool {fa}, ReferencePool {fb}")
        la, lb = self.pool.free_lists(), self.model.free_lists()
        if la != lb:
            late = (
                f" (free lists are compared every {self.compare_every} operations)"
                if self.compare_every > 1 and step >= 0
                else ""
            )
            raise Divergence(step, op, "free_lists", _first_diff(la, lb) + late)

    def _compare_block(self, step: int, op: Op, pfn: int) -> None:
        va, vb = self.pool.view(pfn), self.model.view(pfn)
        ba, bb = va.tobytes(), vb.tobytes()
        if ba != bb:
            off = (
                next(i for i, (x, y) in enumerate(zip(ba, bb)) if x != y)
                if len(ba) == len(bb)
                else min(len(ba), len(bb))
            )
            raise Divergence(
                step,
                op,
                "contents",
                f"contents of the new block at pfn {pfn} differ "
                f"({len(ba)} vs {len(bb)} bytes; first difference at byte {off}: "
                f"Pool {ba[off : off + 1].hex() or 'end'}, "
                f"ReferencePool {bb[off : off + 1].hex() or 'end'})",
            )
        n = len(va)
        fill = self._fills.get(n)
        if fill is None:
            fill = self._fills[n] = bytes([FILL]) * n
        va[:] = fill
        vb[:] = fill

    def apply(self, op: Op) -> Outcome:
        """Apply ``op`` to both pools; return the ReferencePool's outcome.

        Raises :class:`Divergence` if the pools disagree.
        """
        kind = op[0]
        fa = self._fa[kind]
        fb = self._fb[kind]
        if len(op) == 2:
            arg = op[1]
            try:
                ra = fa(arg)
                ea = None
            except Exception as e:
                ra, ea = None, e
            except BaseException as e:
                ra, ea = _call(_reraise, (e,))
            try:
                rb = fb(arg)
                eb = None
            except Exception as e:
                rb, eb = None, e
            except BaseException as e:
                rb, eb = _call(_reraise, (e,))
        else:
            ra, ea = _call(fa, op[1:])
            rb, eb = _call(fb, op[1:])
        step = self.steps
        if ea is None and eb is None:
            if ra != rb:
                raise Divergence(
                    step,
                    op,
                    "result",
                    f"Pool {describe_outcome(ra, None)}, "
                    f"ReferencePool {describe_outcome(rb, None)}",
                )
            if self.contents and (kind == "alloc" or kind == "alloc_many"):
                for pfn in [rb] if kind == "alloc" else rb:
                    self._compare_block(step, op, pfn)
        elif ea is None or eb is None or type(ea) is not type(eb):
            raise Divergence(
                step,
                op,
                "exception",
                f"Pool {describe_outcome(ra, ea)}, ReferencePool {describe_outcome(rb, eb)}",
            )
        elif kind == "put_many":
            ia, ib = _PFNS_INDEX.search(str(ea)), _PFNS_INDEX.search(str(eb))
            if (ia and ia.group(1)) != (ib and ib.group(1)):
                raise Divergence(
                    step,
                    op,
                    "exception",
                    f"put_many failed at different elements: Pool {describe_outcome(None, ea)}, "
                    f"ReferencePool {describe_outcome(None, eb)}",
                )
        if self.pool.free_pages != self.model.free_pages:
            raise Divergence(
                step,
                op,
                "free_pages",
                f"after it, free_pages: Pool {self.pool.free_pages}, "
                f"ReferencePool {self.model.free_pages}",
            )
        self.steps = step + 1
        if self.steps % self.compare_every == 0:
            self.compare_state(step, op)
        return rb, eb

    def finish(self) -> None:
        """Compare the complete state of both pools; raises :class:`Divergence`."""
        step = self.steps
        self.compare_state(step, None)
        g = self.geometry
        pfns = range(g.base_pfn, g.base_pfn + g.nr_pages)
        ca = [self.pool.page_count(p) for p in pfns]
        cb = [self.model.page_count(p) for p in pfns]
        if ca != cb:
            i = next(i for i, (x, y) in enumerate(zip(ca, cb)) if x != y)
            raise Divergence(
                step,
                None,
                "page_count",
                f"page_count({g.base_pfn + i}): Pool {ca[i]}, ReferencePool {cb[i]}",
            )
        for name, pool in (("Pool", self.pool), ("ReferencePool", self.model)):
            _, exc = _call(pool.check, ())
            if exc is not None:
                raise Divergence(
                    step, None, "check", f"{name}.check() {describe_outcome(None, exc)}"
                )
        if (
            self.pool_buffer is not None
            and self.model_buffer is not None
            and g.links == "side"
            and self.pool_buffer != self.model_buffer
        ):
            a, b = self.pool_buffer, self.model_buffer
            i = next(i for i in range(len(a)) if a[i] != b[i])
            raise Divergence(
                step,
                None,
                "arena",
                f"arenas differ first at byte {i} (pfn {g.base_pfn + i // g.page_size}): "
                f"Pool {a[i]:#04x}, ReferencePool {b[i]:#04x}",
            )

    def free_blocks(self) -> list[int]:
        """Number of free blocks per order (from the native pool)."""
        return [len(x) for x in self.pool.free_lists()]


def _reraise(e: BaseException) -> Any:
    raise e


def _build(geometry: Geometry, cls: type) -> tuple[tuple[Any, bytearray | None], Exception | None]:
    try:
        return geometry.build(cls), None
    except Exception as e:
        return (None, None), e


@dataclass
class RunResult:
    """What :func:`run_ops` saw."""

    geometry: Geometry
    ops: list[Op] = field(default_factory=list)
    divergence: Divergence | None = None
    rejected: Counter[str] = field(default_factory=Counter)
    #: First rejected operations: (index in ops, op, exception class name, message).
    rejected_examples: list[tuple[int, Op, str, str]] = field(default_factory=list)
    op_counts: Counter[str] = field(default_factory=Counter)
    start_free_blocks: list[int] = field(default_factory=list)
    end_free_blocks: list[int] = field(default_factory=list)
    start_free_pages: int = 0
    end_free_pages: int = 0
    #: (operations applied, free blocks per order) sampled along the run.
    samples: list[tuple[int, list[int]]] = field(default_factory=list)
    #: Per page at the end: 0 free, 1 held, 2 shared (refcount >= 2), 3 reserved.
    arena_map: list[int] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the pools agreed throughout."""
        return self.divergence is None


#: Page states in :attr:`RunResult.arena_map`.
PAGE_FREE, PAGE_HELD, PAGE_SHARED, PAGE_RESERVED = 0, 1, 2, 3


def arena_map(pool: Any, geometry: Geometry) -> list[int]:
    """Classify every page of ``pool``: free, held, shared (refcount >= 2) or reserved.

    A page is *reserved* if it is one of the first ``reserved_pages`` and not free.
    """
    base = geometry.base_pfn
    states = [PAGE_HELD] * geometry.nr_pages
    for order, blocks in enumerate(pool.free_lists()):
        n = 1 << order
        for pfn in blocks:
            i = pfn - base
            states[i : i + n] = [PAGE_FREE] * n
    for i in range(geometry.nr_pages):
        if states[i] == PAGE_FREE:
            continue
        if i < geometry.reserved_pages:
            states[i] = PAGE_RESERVED
        elif pool.page_count(base + i) >= 2:
            states[i] = PAGE_SHARED
    return states


def _plain(ops: Iterable[Op]) -> Generator[Op, Outcome, None]:
    for op in ops:  # noqa: UP028 (``yield from`` would forward send() to the iterator)
        yield op


def run_ops(
    geometry: Geometry,
    source: Iterable[Op] | Generator[Op, Outcome, None],
    *,
    pool_cls: type | None = None,
    model_cls: type | None = None,
    compare_every: int = 1,
    contents: bool = True,
    sample_every: int = 0,
    keep_examples: int = 20,
    progress: Callable[[int], None] | None = None,
    final: bool = True,
    want_map: bool = False,
) -> RunResult:
    """Run ``source`` through both pools in lockstep and collect a :class:`RunResult`.

    ``source`` is either an iterable of operations or a generator that receives
    each operation's outcome (the ReferencePool's ``(value, exception)``) through
    ``send`` and yields the next operation; this is how workloads that depend on
    the addresses they were given are driven. Rejected operations (both pools
    raise the same exception) are counted, not fatal. ``progress(n)`` is called
    every 1024 operations with the number applied so far. With ``final`` the run
    ends with :meth:`Lockstep.finish`.
    """
    result = RunResult(geometry)
    t0 = time.perf_counter()
    try:
        ls = Lockstep(geometry, pool_cls, model_cls, compare_every=compare_every, contents=contents)
    except Divergence as d:
        result.divergence = d
        return result
    result.start_free_blocks = ls.free_blocks()
    result.start_free_pages = ls.model.free_pages
    if sample_every:
        result.samples.append((0, result.start_free_blocks))
    gen: Generator[Op, Outcome, None] = source if isinstance(source, Generator) else _plain(source)
    ops = result.ops
    counts = result.op_counts
    apply = ls.apply
    try:
        op = next(gen)
        while True:
            ops.append(op)
            counts[op[0]] += 1
            value, exc = apply(op)
            if exc is not None:
                name = type(exc).__name__
                result.rejected[name] += 1
                if len(result.rejected_examples) < keep_examples:
                    result.rejected_examples.append((len(ops) - 1, op, name, str(exc)))
            n = ls.steps
            if sample_every and n % sample_every == 0:
                result.samples.append((n, ls.free_blocks()))
            if progress is not None and n & 1023 == 0:
                progress(n)
            op = gen.send((value, exc))
    except StopIteration:
        pass
    except Divergence as d:
        result.divergence = d
    if result.divergence is None and final:
        try:
            ls.finish()
        except Divergence as d:
            result.divergence = d
    result.end_free_blocks = ls.free_blocks()
    result.end_free_pages = ls.model.free_pages
    if sample_every and (not result.samples or result.samples[-1][0] != ls.steps):
        result.samples.append((ls.steps, result.end_free_blocks))
    if want_map:
        result.arena_map = arena_map(ls.pool, geometry)
    result.seconds = time.perf_counter() - t0
    return result


def diverges(
    geometry: Geometry,
    ops: list[Op],
    pool_cls: type | None = None,
    model_cls: type | None = None,
) -> Divergence | None:
    """Re-run ``ops`` on fresh pools comparing after every step; the divergence or ``None``."""
    try:
        ls = Lockstep(geometry, pool_cls, model_cls, compare_every=1)
        for op in ops:
            ls.apply(op)
        ls.finish()
    except Divergence as d:
        return d
    except GeometryRefused:
        return None
    return None


def time_ops(cls: type, geometry: Geometry, ops: list[Op], repeat: int = 1) -> tuple[float, float]:
    """Time ``ops`` on fresh pools of ``cls``: ``(build seconds, ops seconds)``, best of ``repeat``.

    Times are CPU time of this process (``time.process_time``), which a busy
    machine disturbs less than wall-clock time. Exceptions (rejected operations)
    are caught and ignored; the loop is the same for every class and its cost is
    included in both times.
    """
    best_build = best_ops = float("inf")
    for _ in range(max(1, repeat)):
        t0 = time.process_time()
        pool, _buf = geometry.build(cls)
        t1 = time.process_time()
        calls = [(getattr(pool, OP_KINDS[op[0]][0]), op[1:]) for op in ops]
        t2 = time.process_time()
        for f, args in calls:
            try:  # noqa: SIM105 (contextlib.suppress costs more than the call being timed)
                f(*args)
            except Exception:
                pass
        t3 = time.process_time()
        best_build = min(best_build, t1 - t0)
        best_ops = min(best_ops, t3 - t2)
        del calls, pool
    return best_build, best_ops
