"""Differential fuzzing of ``Pool`` against ``ReferencePool``.

A run is a series of *episodes*. Each episode builds a fresh pair of pools
(geometry drawn at random unless fixed by the caller), applies a few dozen to a
few thousand random operations in lockstep (:class:`pagebuddy._lockstep.Lockstep`)
and ends with a full comparison (free lists, every page's count, ``check()``,
arenas). Restarting keeps pools small, which keeps the pure-Python model fast,
covers many geometries, and bounds the length of any failing sequence.

Operations are drawn from what a caller does, with the model's answers used to
keep track of the pages held: allocations with orders skewed towards 0,
``put``/``get``/``split`` of held pages, batch calls, and a few invalid calls
(free, tail and out-of-range pages, bad orders, double puts). The pressure to
allocate rather than free drifts in phases so that pools fill to exhaustion and
drain back to whole blocks.

Results and ``free_pages`` are compared after every operation, free lists every
``compare_every`` operations. When the pools disagree, the episode's operations
are re-run comparing after every step (which finds the first operation that
shows it) and shrunk with delta debugging to a short sequence that still
diverges, which :func:`reproducer` turns into a standalone Python snippet.

Operations come from :func:`episode`, an operation source in the engine's sense
(:data:`pagebuddy._lockstep.OpSource`): it is sent each outcome and keeps track of the
pages held from the model's answers. Tests inject a deliberately broken pool through the
``pool_cls`` argument of :func:`fuzz`.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from . import _lockstep
from ._lockstep import Divergence, OpSource, diverges, reproducer, run_ops
from ._rules import MAX_REFCOUNT, OPERATIONS, TRACED, TRACED_FIXED, Geometry, Op, map_pfns
from ._trace import TraceWriter, format_header, format_op

__all__ = [
    "DEFAULT_SECONDS",
    "FuzzConfig",
    "FuzzResult",
    "ddmin",
    "episode",
    "fuzz",
    "random_geometry",
    "shrink",
]

#: Duration of a run when neither a number of operations nor a time is given.
DEFAULT_SECONDS = 30.0


@dataclass
class FuzzConfig:
    """Parameters of a fuzzing run. Geometry fields left ``None`` are drawn per episode."""

    ops: int | None = None
    seconds: float | None = None
    seed: int | None = None
    pages: int | None = None
    base_pfn: int | None = None
    reserved: int | None = None
    order_cap: int | None = None
    zero: str | None = None
    page_size: int | None = None
    links: str | None = None
    arena: str | None = None
    #: Per-CPU page caches (``Pool(..., cpus=N)``); their batch and high, when not given, are
    #: drawn per episode.
    cpus: int | None = None
    cache_batch: int | None = None
    cache_high: int | None = None
    #: Pools that grow and shrink: every pool has room past its initial range (which may be
    #: empty), and episodes admit and reclaim blocks and set the floor.
    grow: bool = False
    #: Compare free lists every this many operations (results: every operation).
    compare_every: int = 16
    #: Longest episode, in operations (episodes are drawn between 16 and this).
    episode_ops: int = 8192
    #: Time allowed for shrinking a divergence.
    shrink_seconds: float = 60.0


@dataclass
class FuzzResult:
    """What a fuzzing run did and found."""

    seed: int
    ops: int = 0
    episodes: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    divergence: Divergence | None = None
    #: Geometry and operations of the episode that diverged, as found.
    geometry: Geometry | None = None
    episode_ops: list[Op] = field(default_factory=list)
    #: After shrinking.
    shrunk_geometry: Geometry | None = None
    shrunk_ops: list[Op] = field(default_factory=list)
    shrunk_divergence: Divergence | None = None
    snippet: str = ""
    rejected: int = 0

    @property
    def ops_per_second(self) -> float:
        """Operations per second over the whole run."""
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    def trace_text(self) -> str:
        """The shrunk reproducer as a trace."""
        if self.shrunk_geometry is None:
            return ""
        lines = [format_header(self.shrunk_geometry)] + [format_op(op) for op in self.shrunk_ops]
        return "\n".join(lines) + "\n"


def random_geometry(rng: random.Random, cfg: FuzzConfig) -> Geometry:
    """Draw a pool geometry; fields fixed in ``cfg`` are kept."""
    n = cfg.pages
    if n is None:
        r = rng.random()
        if r < 0.55:
            n = int(2 ** rng.uniform(0, 10))
        elif r < 0.8:
            n = 1 << rng.randint(0, 11)
        else:
            n = max(1, (1 << rng.randint(1, 11)) + rng.randint(-3, 3))
        if cfg.reserved is not None:
            n = max(n, cfg.reserved)
    ps = cfg.page_size or rng.choice((64, 64, 64, 128, 256, 4096))
    base = cfg.base_pfn
    if base is None:
        r = rng.random()
        if r < 0.3:
            base = 0
        elif r < 0.6:
            base = rng.randint(0, 1 << 20) << rng.randint(0, 12)
        elif r < 0.85:
            base = rng.randint(1, 1 << 20)
        elif r < 0.95:
            base = 2**64 - n - rng.randint(0, 3)
        else:
            base = rng.randint(0, 1 << 44)
        base = max(0, min(base, 2**64 - n))
    res = cfg.reserved
    if res is None:
        r = rng.random()
        res = 0 if r < 0.5 else rng.randint(0, min(n, 16)) if r < 0.8 else rng.randint(0, n)
    cap = cfg.order_cap
    if cap is None:
        cap = 11 if rng.random() < 0.4 else rng.randint(1, 12)
    g = Geometry(
        nr_pages=n,
        page_size=ps,
        base_pfn=base,
        reserved_pages=res,
        order_cap=cap,
        zero=cfg.zero or rng.choice(("free", "alloc", "never")),
        links=cfg.links or rng.choice(("side", "intrusive")),
        arena=cfg.arena or rng.choice(("owned", "buffer")),
        options=_cache_options(rng, cfg),
    )
    if g.arena == "none":  # page numbers only: never zeroed, links in the side table
        g = g.replace(zero="never", links="side")
    if cfg.grow:
        g = _grow_geometry(rng, g)
    return g


def _grow_geometry(rng: random.Random, g: Geometry) -> Geometry:
    """``g`` with room to grow: ``max_pages`` past ``nr_pages``, and a fifth of the pools
    built empty (``nr_pages=0``: Android's ``hyp_pool_init_empty``)."""
    room = max(1, g.nr_pages // 2 + rng.randint(0, 64))
    room = min(room, 2**64 - g.base_pfn - g.nr_pages)
    empty = rng.random() < 0.2
    if room <= 0:
        return g
    n = 0 if empty else g.nr_pages
    return g.replace(
        nr_pages=n,
        max_pages=g.nr_pages + room,
        reserved_pages=0 if empty else g.reserved_pages,
    )


class _Absent:
    """Blocks the pool does not cover, as ``(pfn, order)``: what ``admit`` may take. Starts as
    the pages past the initial range, in aligned blocks; reclaims add to it."""

    def __init__(self, g: Geometry) -> None:
        self.blocks: list[tuple[int, int]] = []
        pfn, end = g.base_pfn + g.nr_pages, g.base_pfn + g.span
        while pfn < end:
            align = (pfn & -pfn).bit_length() - 1 if pfn else g.max_order
            k = min(align, (end - pfn).bit_length() - 1, g.max_order - 1)
            self.blocks.append((pfn, k))
            pfn += 1 << k

    def pick(self, rng: random.Random) -> tuple[int, int]:
        """An admit of part of one block: its head (or an aligned piece) at an order up to its
        own; the block stays listed until the admit is seen to succeed."""
        i = rng.randrange(len(self.blocks))
        pfn, k = self.blocks[i]
        j = rng.randint(0, k)
        piece = rng.randrange(1 << (k - j))
        return pfn + (piece << j), j

    def admitted(self, pfn: int, order: int) -> None:
        """The block ``(pfn, order)`` was admitted: the absent block holding it loses it; the
        rest stays, as aligned blocks."""
        for i, (head, k) in enumerate(self.blocks):
            if head <= pfn < head + (1 << k):
                del self.blocks[i]
                while k > order:  # halve towards the admitted piece, keeping the other half
                    k -= 1
                    half = head + (1 << k)
                    if pfn >= half:
                        self.blocks.append((head, k))
                        head = half
                    else:
                        self.blocks.append((half, k))
                return


def _cache_options(rng: random.Random, cfg: FuzzConfig) -> tuple[tuple[str, int], ...]:
    """``cpus``, with ``cache_batch`` and ``cache_high`` as given or drawn small (so that
    caches refill and drain often), or nothing for the exact pool; draws nothing from ``rng``
    without caches."""
    if not cfg.cpus:
        return ()
    if cfg.cache_high is None and cfg.cache_batch is None and rng.random() < 0.5:
        return (("cpus", cfg.cpus),)  # the default: caches that size themselves
    high = cfg.cache_high
    batch = cfg.cache_batch or rng.randint(1, min(8, high or 8))
    if high is None:
        high = batch + rng.randint(0, 8)
    return (("cpus", cfg.cpus), ("cache_batch", batch), ("cache_high", high))


class _Held:
    """The pages a caller holds (heads and order-0 pages), mirrored from the model's answers."""

    __slots__ = ("order", "pfns", "pos", "ref")

    def __init__(self) -> None:
        self.pfns: list[int] = []
        self.pos: dict[int, int] = {}
        self.ref: dict[int, int] = {}
        self.order: dict[int, int] = {}

    def add(self, pfn: int, order: int) -> None:
        if pfn in self.ref:  # already held (should not happen): keep the books consistent
            self.ref[pfn] += 1
            return
        self.pos[pfn] = len(self.pfns)
        self.pfns.append(pfn)
        self.ref[pfn] = 1
        self.order[pfn] = order

    def drop(self, pfn: int) -> bool:
        """One reference fewer; False if the page was not held."""
        r = self.ref.get(pfn)
        if r is None:
            return False
        if r > 1:
            self.ref[pfn] = r - 1
            return True
        del self.ref[pfn], self.order[pfn]
        i = self.pos.pop(pfn)
        last = self.pfns.pop()
        if last != pfn:
            self.pfns[i] = last
            self.pos[last] = i
        return True


def _pick_order(rng: random.Random, orders: int) -> int:
    if rng.random() < 0.7:
        k = 0
        while k + 1 < orders and rng.random() < 0.5:
            k += 1
        return k
    return rng.randrange(orders)


def _invalid_op(rng: random.Random, g: Geometry, held: _Held) -> Op:
    """An operation that should be refused (or is at least unusual)."""
    mo = g.max_order
    r = rng.random()
    if r < 0.2:
        return ("alloc", rng.choice((-1, mo, mo + 1, 64, 2**64, -(2**63))))
    if r < 0.35 and held.pfns:
        # a tail page of a held block (or the page after an order-0 page)
        return (rng.choice(("put", "get", "split")), rng.choice(held.pfns) + 1)
    if r < 0.45:
        return (rng.choice(("put", "get", "split")), rng.choice((-1, 2**64, 2**65 + 3)))
    if r < 0.55:
        return ("alloc_many", rng.randrange(mo), rng.randint(0, g.nr_pages + 2))
    lo = g.base_pfn - 2
    return (rng.choice(("put", "get", "split")), rng.randint(lo, g.base_pfn + g.nr_pages + 1))


def episode(rng: random.Random, g: Geometry, length: int, pump: bool = False) -> OpSource:
    """Yield ``length`` operations of one episode on a pool of ``g``, told each outcome.

    With ``pump``, once a page is held the episode takes references to it until its
    refcount passes the ceiling (so ``get_page`` must fail), then goes on as usual.
    """
    held = _Held()
    for i in range(g.reserved_pages):
        held.add(g.base_pfn + i, 0)
    absent = _Absent(g) if g.max_pages is not None else None
    orders = g.max_order
    rnd = rng.random
    p_alloc, left = 0.5, 0
    pump_left = MAX_REFCOUNT + 1 if pump else 0
    pumped: int | None = None
    for _ in range(length):
        if pump_left and held.pfns:
            if pumped is None:
                pumped = held.pfns[0]
            pump_left -= 1
            op: Op = ("get", pumped)
        else:
            if left <= 0:
                p_alloc = rng.uniform(0.15, 0.85)
                left = int(2 ** rng.uniform(4, 11))
            left -= 1
            grown = _grow_op(rng, g, absent) if absent is not None else None
            op = grown or _on_a_slot(rng, g, _draw(rng, g, held, p_alloc, orders))
        value, exc = yield op
        if absent is not None and exc is None:
            _observe_grow(absent, op, value)
        kind = op[0]
        if kind in ("alloc", "alloc_on") and exc is not None:
            if type(exc).__name__ == "OutOfMemory" and rnd() < 0.5:
                p_alloc = rng.uniform(0.1, 0.4)  # full: drain for a while
        else:
            _observe(held, op, value, exc)


def _grow_op(rng: random.Random, g: Geometry, absent: _Absent) -> Op | None:
    """Now and then, an operation that grows or shrinks the pool: an admit of a block it does
    not cover (sometimes of one it does), a reclaim, or a new floor; None otherwise."""
    r = rng.random()
    if r < 0.06:
        if absent.blocks and rng.random() < 0.9:
            return ("admit", *absent.pick(rng))
        pfn = rng.randint(g.base_pfn - 1, g.base_pfn + g.span)
        return ("admit", pfn, _pick_order(rng, g.max_order))
    if r < 0.09:
        return ("reclaim", _pick_order(rng, g.max_order))
    if r < 0.095:
        return ("reclaim_many", _pick_order(rng, g.max_order), rng.randint(0, 4))
    if r < 0.1:
        return ("floor", rng.choice((0, 0, rng.randint(0, g.span))))
    return None


def _observe_grow(absent: _Absent, op: Op, value: Any) -> None:
    """Follow what the pool covers after a successful ``op``."""
    kind = op[0]
    if kind == "admit":
        absent.admitted(op[1], op[2])
    elif kind == "reclaim":
        absent.blocks.append((value, op[1]))
    elif kind == "reclaim_many":
        absent.blocks.extend((pfn, op[1]) for pfn in value)


def _draw(rng: random.Random, g: Geometry, held: _Held, p_alloc: float, orders: int) -> Op:
    """One random operation: mostly valid, skewed by ``p_alloc`` towards allocating."""
    rnd = rng.random
    r = rnd()
    pfns = held.pfns
    if r < 0.03:
        return _invalid_op(rng, g, held)
    if r < 0.04:
        return _table_op(rng, g, held)
    if not pfns or r < p_alloc:
        if rnd() < 0.04:
            return ("alloc_many", _pick_order(rng, orders), rng.randint(0, 6))
        return ("alloc", _pick_order(rng, orders))
    r = rnd()
    pfn = pfns[int(rnd() * len(pfns))]
    if r < 0.7:
        return ("put", pfn)
    if r < 0.85:
        return ("get", pfn)
    if r < 0.95:
        for _ in range(3):  # prefer splitting a block bigger than a page
            if held.order[pfn]:
                break
            pfn = pfns[int(rnd() * len(pfns))]
        return ("split", pfn)
    k = min(len(pfns), rng.randint(1, 8))
    return ("put_many", tuple(rng.sample(pfns, k)) + ((pfn,) if rnd() < 0.1 else ()))


def _cpus(g: Geometry) -> int:
    """The geometry's CPU slots (0: no caches)."""
    return int(dict(g.options).get("cpus", 0))


def _cpu(rng: random.Random, g: Geometry) -> int:
    """A slot: mostly one of the pool's (or a few, without caches), sometimes past them
    (slot ``cpu % cpus``) or negative (refused)."""
    r = rng.random()
    if r < 0.9:
        return rng.randrange(max(1, _cpus(g)))
    return -1 if r < 0.93 else rng.randint(0, 2**64)


def _on_a_slot(rng: random.Random, g: Geometry, op: Op) -> Op:
    """On a cached pool, ``op`` sometimes through a named slot, or a slot's drain instead;
    otherwise ``op`` (through the thread's slot). Draws nothing without caches."""
    if not _cpus(g):
        return op
    r = rng.random()
    if r < 0.02:
        return ("drain", _cpu(rng, g))
    if r < 0.5 and op[0] == "alloc":
        return ("alloc_on", op[1], _cpu(rng, g))
    if r < 0.5 and op[0] == "put":
        return ("put_on", op[1], _cpu(rng, g))
    return op


def _table_op(rng: random.Random, g: Geometry, held: _Held) -> Op:
    """Any operation a trace can hold, from the rulebook's table, with arguments of the kinds
    its entry declares: a new operation is fuzzed without a change here (those that grow or
    shrink the pool only where it can grow: ``--grow``)."""
    kinds = TRACED if g.max_pages is not None else TRACED_FIXED
    kind = rng.choice(kinds)
    return (kind, *(_argument(rng, g, held, p) for p in OPERATIONS[kind].params))


def _argument(rng: random.Random, g: Geometry, held: _Held, param: str) -> Any:
    """A random argument of kind ``param``: mostly valid, sometimes not."""
    if param == "order":
        return _pick_order(rng, g.max_order) if rng.random() < 0.9 else g.max_order
    if param == "count":
        return rng.randint(0, 6)
    if param == "pfn":
        if held.pfns and rng.random() < 0.8:
            return rng.choice(held.pfns)
        return rng.randint(g.base_pfn - 2, g.base_pfn + g.span + 1)
    if param == "pfns":
        return tuple(_argument(rng, g, held, "pfn") for _ in range(rng.randint(1, 4)))
    if param == "cpu":
        return _cpu(rng, g)
    raise ValueError(f"no draw for an argument of kind {param!r}")


def _observe(held: _Held, op: Op, value: Any, exc: BaseException | None) -> None:
    """Update the pages held after ``op`` had outcome ``(value, exc)``."""
    kind = op[0]
    if exc is not None:
        return
    if kind == "put_many":
        for p in op[1]:
            held.drop(p)
    elif kind in ("put", "put_on"):
        held.drop(op[1])
    elif kind in ("alloc", "alloc_on"):
        held.add(value, op[1])
    elif kind == "get":
        held.ref[op[1]] = held.ref.get(op[1], 0) + 1
    elif kind == "split":
        pfn: int = op[1]
        k = held.order.get(pfn, 0)
        held.order[pfn] = 0
        for p in range(pfn + 1, pfn + (1 << k)):
            held.add(p, 0)
    elif kind == "alloc_many":
        for p in value:
            held.add(p, op[1])
    elif kind == "exact":
        for p in range(value, value + op[1]):
            held.add(p, 0)


def fuzz(
    cfg: FuzzConfig,
    *,
    pool_cls: type | None = None,
    model_cls: type | None = None,
    progress: Callable[[int, float], None] | None = None,
    record: IO[str] | None = None,
    on_divergence: Callable[[FuzzResult], None] | None = None,
) -> FuzzResult:
    """Run the differential fuzzer as configured by ``cfg``.

    Stops after ``cfg.ops`` operations or ``cfg.seconds`` seconds (whichever comes
    first; :data:`DEFAULT_SECONDS` when neither is set), at the first divergence,
    or on ``KeyboardInterrupt`` (``interrupted`` is then set). ``progress(ops,
    elapsed)`` is called about every 1024 operations. ``record`` receives the
    operations as a trace, one section per episode. ``on_divergence`` is called
    before shrinking starts.
    """
    seed = cfg.seed if cfg.seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    result = FuzzResult(seed=seed)
    limit_ops = cfg.ops if cfg.ops is not None else math.inf
    limit_s = cfg.seconds
    if limit_s is None and cfg.ops is None:
        limit_s = DEFAULT_SECONDS
    deadline = time.perf_counter() + limit_s if limit_s is not None else math.inf
    writer = TraceWriter(record, comment=f"pagebuddy fuzz --seed {seed}") if record else None
    t0 = time.perf_counter()
    done = 0
    try:
        while done < limit_ops and time.perf_counter() < deadline:
            g = random_geometry(rng, cfg)
            length = int(2 ** rng.uniform(4, math.log2(max(16, cfg.episode_ops))))
            pump = rng.random() < 0.002  # one episode in 500 overflows a refcount
            if pump:
                length += MAX_REFCOUNT + 1
            length = int(min(length, limit_ops - done))
            result.episodes += 1
            if writer:
                writer.section(g)

            def tick(n: int, base: int = done) -> bool:
                now = time.perf_counter()
                if progress is not None:
                    progress(base + n, now - t0)
                return now >= deadline

            run = run_ops(
                g,
                episode(rng, g, length, pump),
                pool_cls=pool_cls,
                model_cls=model_cls,
                compare_every=cfg.compare_every,
                keep_examples=0,
                progress=tick,
                record=writer.op if writer else None,
            )
            done += len(run.ops)
            result.rejected += sum(run.rejected.values())
            if run.divergence is not None:
                result.divergence = run.divergence
                result.geometry = g
                result.episode_ops = run.ops
                break
            if progress is not None:
                progress(done, time.perf_counter() - t0)
    except KeyboardInterrupt:
        result.interrupted = True
    result.ops = done
    result.seconds = time.perf_counter() - t0
    if writer:
        writer.flush()
    if result.divergence is not None and result.geometry is not None:
        if on_divergence is not None:
            on_divergence(result)
        g2, ops2, d2 = shrink(
            result.geometry,
            result.episode_ops,
            pool_cls,
            model_cls,
            seconds=cfg.shrink_seconds,
        )
        result.shrunk_geometry, result.shrunk_ops, result.shrunk_divergence = g2, ops2, d2
        classes = _lockstep.default_classes(g2)
        result.snippet = reproducer(
            g2,
            ops2,
            d2,
            pool_cls=pool_cls or classes[0],
            model_cls=model_cls or classes[1],
            origin=f"pagebuddy fuzz --seed {seed}",
        )
    return result


def shrink(
    geometry: Geometry,
    ops: list[Op],
    pool_cls: type | None = None,
    model_cls: type | None = None,
    *,
    seconds: float = 60.0,
) -> tuple[Geometry, list[Op], Divergence]:
    """Shrink a diverging operation list (delta debugging) and simplify its geometry.

    Returns ``(geometry, ops, divergence)`` of the smallest diverging case found
    within ``seconds``. Any divergence counts, not only the original one.
    """
    deadline = time.perf_counter() + seconds

    def test(g: Geometry, cand: list[Op]) -> Divergence | None:
        return diverges(g, cand, pool_cls, model_cls)

    d = test(geometry, ops)
    if d is None:
        # Not reproducible from a fresh pool comparing every step: keep it as found.
        d = Divergence(len(ops), None, "flaky", "the divergence did not reproduce on a re-run")
        return geometry, ops, d

    def cut(cand: list[Op], dv: Divergence) -> list[Op]:
        return cand[: dv.step + 1] if 0 <= dv.step < len(cand) else cand

    items = cut(ops, d)
    g = geometry
    for _round in range(3):
        before = (g, len(items))
        items, d = ddmin(items, d, lambda c, g=g: test(g, c), cut, deadline)
        for change in _geometry_simplifications(g):
            if time.perf_counter() >= deadline:
                break
            g2 = g.replace(**change)
            cand = _rebase(items, g.base_pfn, g2.base_pfn, g.span)
            d2 = test(g2, cand)
            if d2 is not None:
                g, d, items = g2, d2, cut(cand, d2)
        if (g, len(items)) == before or time.perf_counter() >= deadline:
            break
    return g, items, d


def _rebase(ops: list[Op], old: int, new: int, n: int) -> list[Op]:
    """Move the page frame numbers in ``ops`` that lie in (or next to) the pool."""
    if old == new:
        return ops

    def move(p: int) -> int:
        return p - old + new if old - 2 <= p < old + n + 2 and p - old + new >= 0 else p

    return [map_pfns(op, move) for op in ops]


def _geometry_simplifications(g: Geometry) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if g.base_pfn != 0:
        out.append({"base_pfn": 0})
    if g.arena != "owned":
        out.append({"arena": "owned"})
    if g.links != "side":
        out.append({"links": "side"})
    if g.zero != "free":
        out.append({"zero": "free"})
    if g.page_size != 64:
        out.append({"page_size": 64})
    return out


def ddmin(
    items: list[Op],
    d: Divergence,
    test: Callable[[list[Op]], Divergence | None],
    cut: Callable[[list[Op], Divergence], list[Op]],
    deadline: float,
) -> tuple[list[Op], Divergence]:
    """Delta debugging: drop chunks of ``items`` while ``test`` still finds a divergence
    (``cut`` trims a candidate to the step that showed it), until ``deadline``."""
    n = 2
    while len(items) >= 2 and time.perf_counter() < deadline:
        chunk = math.ceil(len(items) / n)
        reduced = False
        for start in range(0, len(items), chunk):
            cand = items[:start] + items[start + chunk :]
            if not cand:
                continue
            d2 = test(cand)
            if d2 is not None:
                items, d = cut(cand, d2), d2
                n = max(n - 1, 2)
                reduced = True
                break
            if time.perf_counter() >= deadline:
                return items, d
        if not reduced:
            if n >= len(items):
                break
            n = min(n * 2, len(items))
    return items, d
