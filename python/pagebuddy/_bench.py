"""The quick Python benchmark: cost per call of ``Pool`` against ``ReferencePool``.

Every workload runs the same Python loop against a fresh pool of each class, so
the figures are what a Python caller pays per call, loop included; the cost of
that loop alone is measured too and reported as ``loop_overhead_ns``. Pools use
4 KiB pages and ``zero="never"``, so the figures are the allocator's bookkeeping
and not memset. Random choices are drawn before timing starts, the garbage
collector is off while timing, and each figure is the best of a few runs.
Times are CPU time of the process (``time.process_time_ns``), which other load on
the machine disturbs less than wall-clock time.

Workloads (``n`` = pages in the pool):

``alloc``        ``alloc_pages(0)`` until the pool is full (``n`` calls).
``put``          ``put_page`` of every page of a full pool in random order.
``get``          ``get_page`` of every page of a full pool.
``split``        ``split_page`` of order-4 blocks (``n / 16`` calls).
``alloc_many``   ``alloc_many(0, n)`` on a free pool, per page.
``put_many``     ``put_many`` of all ``n`` pages in random order, per page.
``churn``        every page allocated at order 0, a random half freed; then free a
                 random held page and allocate one, repeatedly; per call.
``mixed``        orders 0 to 9 with P(k) ~ 2^-(k+1), random frees, the pool kept
                 about half full; per call.
``batch_array``  ``alloc_many(0, 4096, out=buf)`` then ``put_many(buf)`` with
                 ``buf = array('Q')``: no Python object per page; per page.
``ref_pair``     ``get_page`` + ``put_page`` of a page held twice: no policy work,
                 only the call into the pool (argument, lock, result); per pair.
                 ``builtin_pair_ns`` is ``list.append`` + ``list.pop`` timed in the
                 same loop shape; both are net of an empty ``for`` loop.
``alloc_pair``   ``alloc_pages(0)`` + ``put_page`` of that page: the whole policy
                 (FIFO take, split, coalesce, list append); per pair, net of an empty
                 ``for`` loop as ``ref_pair``.
``warm_pair``    the same pair on a pool with every page held but one, whose buddy is held:
                 the page is taken and given back with no split and no merge, so the
                 policy's work is as small as ``ref_pair``'s; per pair, net of the loop.
``cached_pair``  the same pair on a pool with per-CPU caches (``cpus=1``), through the
                 calling thread's slot: the page comes off and goes back onto the slot's
                 LIFO cache; per pair, net of the empty loop like ``builtin_pair_ns``.

Shared pools (``shared`` in the report): the same caller against ``Pool(n)`` and against
``Pool.create_in(bytearray(...))`` of the same ``n`` pages, whose every call takes the
pool's process-shared lock and journals its writes; per call, loop included:

``churn``        as above.
``window``       64 held blocks of orders 0 to 4: free the oldest, allocate one (the workload
                 of the core's ``shared_bench`` example); per call.

Scaling (``scaling`` in the report): ``Pool`` alone, without an arena (``arena=False``: only
its metadata and links, 12 bytes a page, which the caller of a large pool of page numbers
keeps), at several sizes (``quick``: 2**14, 2**18 and 2**22 pages), each fresh and with a
random half of its pages held (every page allocated, then a random half freed in random
order); on each:

``batch``        ``alloc_many(0, 256, out=buf)`` then ``put_many(buf)``, ``buf`` an
                 ``array('Q')``; per page.
``pair``         ``alloc_pages(0)`` + ``put_page`` of that page; per pair, net of the loop.

Modes: ``quick`` (2**14 pages, best of 5) and ``tiny`` (2**8 pages, one run; it
exists so that CI can check the benchmark still runs). The repeats are interleaved: each
round measures every workload once, so that a busy moment of the machine lands on one round
of every workload rather than on every round of one, and each figure is its best round.
"""

from __future__ import annotations

import collections
import gc
import platform
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from ._rules import OPERATIONS, Geometry, Op

__all__ = [
    "MAX_PAGES",
    "MIN_PAGES",
    "MODES",
    "SCALING",
    "BenchResult",
    "Measurement",
    "ScalingMeasurement",
    "SharedMeasurement",
    "cpu_ns",
    "run_benchmarks",
    "time_ops",
]

T = TypeVar("T")

#: mode -> (pages, repeats)
MODES: dict[str, tuple[int, int]] = {"quick": (1 << 14, 5), "tiny": (1 << 8, 1)}

SCHEMA = "pagebuddy-python-bench/1"

#: mode -> log2 of the pool sizes of the scaling part, and its best-of count
SCALING: dict[str, tuple[tuple[int, ...], int]] = {"quick": ((14, 18, 22), 3), "tiny": ((8,), 1)}
#: Pages per ``alloc_many`` / ``put_many`` call of the scaling part.
SCALING_BATCH = 256

#: Bounds of ``pages``: ``split`` times order-4 blocks (16 pages each), and a pool of 4 KiB
#: pages is at most 4 GiB.
MIN_PAGES = 16
MAX_PAGES = 1 << 20


@dataclass
class Measurement:
    """One workload: nanoseconds per unit for each class, and their ratio."""

    name: str
    unit: str
    description: str
    pool_ns: float
    reference_ns: float

    @property
    def ratio(self) -> float:
        """How many times faster ``Pool`` is than ``ReferencePool``."""
        return self.reference_ns / self.pool_ns if self.pool_ns > 0 else float("inf")


@dataclass
class SharedMeasurement:
    """One workload on an in-process pool and on a shared one: nanoseconds per call each."""

    name: str
    unit: str
    description: str
    pool_ns: float
    shared_ns: float

    @property
    def ratio(self) -> float:
        """The shared pool's cost per call over the in-process pool's."""
        return self.shared_ns / self.pool_ns if self.pool_ns > 0 else float("inf")


@dataclass
class ScalingMeasurement:
    """``Pool`` without an arena at one size and state: per page of a batch, per pair."""

    pages: int
    #: ``"fresh"`` or ``"half held"`` (a random half of the pages allocated).
    state: str
    #: ``alloc_many(0, 256, out=)`` + ``put_many``, per page.
    batch_ns: float
    #: ``alloc_pages(0)`` + ``put_page``, per pair, net of the loop.
    pair_ns: float


@dataclass
class BenchResult:
    """A whole benchmark run."""

    mode: str
    pages: int
    repeats: int
    loop_overhead_ns: float
    results: list[Measurement] = field(default_factory=list)
    #: ``list.append`` + ``list.pop``, net of the loop: the yardstick of ``ref_pair``.
    builtin_pair_ns: float = 0.0
    seconds: float = 0.0
    #: ``Pool`` against ``Pool.create_in`` on the same workloads (empty without ``create_in``).
    shared: list[SharedMeasurement] = field(default_factory=list)
    #: ``Pool`` without an arena at several sizes, fresh and half held.
    scaling: list[ScalingMeasurement] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The JSON document ``--json`` prints (schema ``pagebuddy-python-bench/1``)."""
        return {
            "schema": SCHEMA,
            "mode": self.mode,
            "pages": self.pages,
            "page_size": 4096,
            "zero": "never",
            "repeats": self.repeats,
            "python": platform.python_implementation() + " " + platform.python_version(),
            "platform": platform.platform(),
            "machine": platform.machine(),
            "date": time.strftime("%Y-%m-%d"),
            "seconds": round(self.seconds, 3),
            "loop_overhead_ns": round(self.loop_overhead_ns, 1),
            "builtin_pair_ns": round(self.builtin_pair_ns, 1),
            "results": [
                {
                    **asdict(m),
                    "pool_ns": round(m.pool_ns, 1),
                    "reference_ns": round(m.reference_ns, 1),
                    "ratio": round(m.ratio, 2),
                }
                for m in self.results
            ],
            "shared": [
                {
                    **asdict(m),
                    "pool_ns": round(m.pool_ns, 1),
                    "shared_ns": round(m.shared_ns, 1),
                    "ratio": round(m.ratio, 2),
                }
                for m in self.shared
            ],
            "scaling_batch": SCALING_BATCH,
            "scaling": [
                {**asdict(m), "batch_ns": round(m.batch_ns, 2), "pair_ns": round(m.pair_ns, 1)}
                for m in self.scaling
            ],
        }


def _new(cls: type, pages: int) -> Any:
    return cls(pages, zero="never")


def cpu_ns(fn: Callable[[], T]) -> tuple[int, T]:
    """Run ``fn`` with the garbage collector off: (CPU nanoseconds it took, its result).

    The one timing helper of the package: CPU time of the process
    (``time.process_time_ns``), which other load on the machine disturbs less than
    wall-clock time.
    """
    gc.collect()
    gc.disable()
    try:
        t0 = time.process_time_ns()
        value = fn()
        t1 = time.process_time_ns()
    finally:
        gc.enable()
    return t1 - t0, value


def _timed(fn: Callable[[], int]) -> float:
    """Run ``fn`` (which returns how many units it did); ns per unit."""
    ns, units = cpu_ns(fn)
    return ns / max(1, units)


def time_ops(cls: type, geometry: Geometry, ops: list[Op], repeat: int = 1) -> tuple[float, float]:
    """Time ``ops`` on fresh pools of ``cls``: ``(build seconds, ops seconds)``, best of ``repeat``.

    Exceptions (rejected operations) are caught and ignored; the loop is the same for every
    class and its cost is included in both times.
    """
    best_build = best_ops = float("inf")
    for _ in range(max(1, repeat)):
        build_ns, (pool, _buf) = cpu_ns(lambda: geometry.build(cls))
        methods = {kind: o.bind(pool) for kind, o in OPERATIONS.items()}
        calls = [(methods[op[0]], op[1:]) for op in ops]

        def run(calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = calls) -> None:
            for f, args in calls:
                try:  # noqa: SIM105 (contextlib.suppress costs more than the call being timed)
                    f(*args)
                except Exception:
                    pass

        ops_ns, _ = cpu_ns(run)
        best_build = min(best_build, build_ns / 1e9)
        best_ops = min(best_ops, ops_ns / 1e9)
        del calls, pool
    return best_build, best_ops


# Each workload: (cls, pages, rng) -> ns per unit, measured on a fresh pool.


def _alloc(cls: type, n: int, rng: random.Random) -> float:
    pool = _new(cls, n)
    alloc = pool.alloc_pages

    def run() -> int:
        for _ in range(n):
            alloc(0)
        return n

    return _timed(run)


def _full(cls: type, n: int) -> tuple[Any, list[int]]:
    pool = _new(cls, n)
    return pool, pool.alloc_many(0, n)


def _put(cls: type, n: int, rng: random.Random) -> float:
    pool, pfns = _full(cls, n)
    rng.shuffle(pfns)
    put = pool.put_page

    def run() -> int:
        for p in pfns:
            put(p)
        return n

    return _timed(run)


def _get(cls: type, n: int, rng: random.Random) -> float:
    pool, pfns = _full(cls, n)
    get = pool.get_page

    def run() -> int:
        for p in pfns:
            get(p)
        return n

    return _timed(run)


def _split(cls: type, n: int, rng: random.Random) -> float:
    pool = _new(cls, n)
    heads = pool.alloc_many(4, n >> 4)
    split = pool.split_page

    def run() -> int:
        for p in heads:
            split(p)
        return len(heads)

    return _timed(run)


def _alloc_many(cls: type, n: int, rng: random.Random) -> float:
    pool = _new(cls, n)
    return _timed(lambda: len(pool.alloc_many(0, n)))


def _put_many(cls: type, n: int, rng: random.Random) -> float:
    pool, pfns = _full(cls, n)
    rng.shuffle(pfns)

    def run() -> int:
        pool.put_many(pfns)
        return n

    return _timed(run)


def _churn(cls: type, n: int, rng: random.Random) -> float:
    return _churn_on(_new(cls, n), n, rng)


def _churn_on(pool: Any, n: int, rng: random.Random) -> float:
    every = pool.alloc_many(0, n)
    rng.shuffle(every)
    pool.put_many(every[n // 2 :])  # a random half freed in random order
    held = every[: n // 2]
    iters = 2 * n
    picks = [rng.randrange(len(held)) for _ in range(iters)]
    put, alloc = pool.put_page, pool.alloc_pages

    def run() -> int:
        for i in picks:
            put(held[i])
            held[i] = alloc(0)
        return 2 * iters

    return _timed(run)


def _mixed(cls: type, n: int, rng: random.Random) -> float:
    from . import OutOfMemory

    pool = _new(cls, n)
    top = min(10, pool.max_order)
    iters = 2 * n
    orders = []
    for _ in range(iters):
        k = 0
        while k + 1 < top and rng.random() < 0.5:
            k += 1
        orders.append(k)
    coins = [rng.random() for _ in range(iters)]
    picks = [rng.random() for _ in range(iters)]
    half = n // 2
    put, alloc = pool.put_page, pool.alloc_pages
    held: list[int] = []
    sizes: list[int] = []

    def run() -> int:
        used = 0
        for k, coin, pick in zip(orders, coins, picks, strict=True):
            if held and (used >= half or coin < 0.3):
                i = int(pick * len(held))
                put(held[i])
                used -= sizes[i]
                held[i] = held[-1]
                sizes[i] = sizes[-1]
                held.pop()
                sizes.pop()
            else:
                try:
                    held.append(alloc(k))
                except OutOfMemory:
                    continue
                sizes.append(1 << k)
                used += 1 << k
        return iters

    return _timed(run)


#: Pages per batch of ``batch_array``, and rounds of it per timing.
BATCH, BATCH_ROUNDS = 4096, 16


def _batch_array(cls: type, n: int, rng: random.Random) -> float:
    import array

    pool = _new(cls, n)
    size = min(BATCH, n)
    buf = array.array("Q", bytes(8 * size))
    alloc_many, put_many = pool.alloc_many, pool.put_many

    def run() -> int:
        for _ in range(BATCH_ROUNDS):
            alloc_many(0, size, out=buf)
            put_many(buf)
        return BATCH_ROUNDS * size

    return _timed(run)


def _ref_pair(cls: type, n: int, rng: random.Random) -> float:
    pool = _new(cls, n)
    pfn = pool.alloc_pages(0)
    pool.get_page(pfn)  # held twice: get + put never frees it
    get, put = pool.get_page, pool.put_page
    xs = [pfn] * n

    def run() -> int:
        for p in xs:
            get(p)
            put(p)
        return n

    return _timed(run) - _empty_loop(n)


def _put_alloc_pairs(pool: Any, n: int) -> float:
    """``put_page(alloc_pages(0))`` ``n`` times on ``pool``, per pair, net of the empty loop."""
    alloc, put = pool.alloc_pages, pool.put_page
    xs = [0] * n

    def run() -> int:
        for k in xs:
            put(alloc(k))
        return n

    return _timed(run) - _empty_loop(n)


def _alloc_pair(cls: type, n: int, rng: random.Random) -> float:
    return _put_alloc_pairs(_new(cls, n), n)


def _warm_pair(cls: type, n: int, rng: random.Random) -> float:
    pool = _new(cls, n)
    held = pool.alloc_many(0, n)
    pool.put_page(held[0])  # the only free page; its buddy is held, so it never merges
    return _put_alloc_pairs(pool, n)


def _arenaless(cls: type, n: int, half: bool, rng: random.Random) -> Any:
    """``cls(n)`` without an arena, fresh or with a random half of its pages held."""
    import array

    pool = cls(n, zero="never", arena=False)
    if half:
        every = array.array("Q", bytes(8 * n))
        pool.alloc_many(0, n, out=every)
        pfns = every.tolist()
        rng.shuffle(pfns)
        pool.put_many(array.array("Q", pfns[n // 2 :]))
    return pool


def _batches(pool: Any, pages: int) -> float:
    """``alloc_many(0, size, out=)`` + ``put_many`` for about ``pages`` pages, ``size``
    ``SCALING_BATCH`` or a quarter of the pool if smaller; per page."""
    import array

    size = min(SCALING_BATCH, pool.nr_pages // 4)
    buf = array.array("Q", bytes(8 * size))
    alloc_many, put_many = pool.alloc_many, pool.put_many
    rounds = max(1, pages // size)

    def run() -> int:
        for _ in range(rounds):
            alloc_many(0, size, out=buf)
            put_many(buf)
        return rounds * size

    return _timed(run)


def scaling(
    cls: type, mode: str, seed: int = 1, progress: Callable[[str], None] | None = None
) -> list[ScalingMeasurement]:
    """The scaling part of ``mode`` on ``cls`` (``Pool``): each size fresh and half held."""
    shifts, best_of = SCALING[mode]
    out = []
    for shift in shifts:
        n = 1 << shift
        for state in ("fresh", "half held"):
            if progress is not None:
                progress(f"scaling 2^{shift} {state}")
            pool = _arenaless(cls, n, state == "half held", random.Random(seed))
            units = min(n, 1 << 18) if mode != "tiny" else n
            # One untimed pass over the whole pool first: the metadata and links are mapped
            # zeroed and committed on first touch, which is not what a batch costs after that.
            _batches(pool, n)
            batch = min(_batches(pool, units) for _ in range(best_of))
            pair = min(_put_alloc_pairs(pool, units // 4 or 1) for _ in range(best_of))
            out.append(ScalingMeasurement(n, state, batch, pair))
            del pool
    return out


def _cached_pair(cls: type, n: int, rng: random.Random) -> float:
    pool = cls(n, zero="never", cpus=1)
    pool.put_page(pool.alloc_pages(0))  # the slot's first refill, and this thread's slot
    return _put_alloc_pairs(pool, n)


def _window_on(pool: Any, n: int, rng: random.Random) -> float:
    """64 held blocks of orders 0 to 4 (in a pool under 256 pages, one block per 32 pages and
    lower orders); each step frees the oldest and allocates one; per call."""
    orders = [rng.randrange(min(5, max(1, n.bit_length() - 4))) for _ in range(4096)]
    held = max(1, min(64, n // 32))
    window = collections.deque(pool.alloc_pages(k) for k in orders[:held])
    steps = [orders[i % len(orders)] for i in range(2 * n)]
    put, alloc, oldest, push = pool.put_page, pool.alloc_pages, window.popleft, window.append

    def run() -> int:
        for k in steps:
            put(oldest())
            push(alloc(k))
        return 2 * len(steps)

    return _timed(run)


def _shared_pages(cls: type, n: int) -> int:
    """Pages ``cls.create_in`` fits in a ``bytearray`` made for ``n`` pages (``n`` or a few
    more): both pools of the shared comparison have that many, the ones beyond ``n`` reserved."""
    from ._shared import pool_bytes

    return cls.create_in(bytearray(pool_bytes(n)), zero="never").nr_pages


def _shared_pool(cls: type, n: int, pages: int) -> Any:
    """``cls.create_in`` over a ``bytearray`` made for ``n`` pages, which holds ``pages`` of
    them (:func:`_shared_pages`): those beyond ``n`` are reserved, so that ``n`` are free."""
    from ._shared import pool_bytes

    return cls.create_in(bytearray(pool_bytes(n)), zero="never", reserved_pages=pages - n)


def _local_pool(cls: type, n: int, pages: int) -> Any:
    """An in-process pool of the same geometry as :func:`_shared_pool`'s."""
    return cls(pages, zero="never", reserved_pages=pages - n)


def _builtin_pair(n: int) -> float:
    """``list.append`` + ``list.pop`` per pair, net of the loop alone."""
    stack: list[int] = []
    push, pop = stack.append, stack.pop
    xs = list(range(n))

    def run() -> int:
        for x in xs:
            push(x)
            pop()
        return n

    return min(_timed(run) for _ in range(3)) - _empty_loop(n)


def _empty_loop(n: int) -> float:
    """A ``for`` loop that does nothing, per iteration: what the pairs are net of."""
    xs = list(range(n))

    def run() -> int:
        for _ in xs:
            pass
        return n

    return min(_timed(run) for _ in range(3))


def _overhead(n: int) -> float:
    def noop(_: int) -> None:
        return None

    xs = list(range(n))

    def run() -> int:
        for x in xs:
            noop(x)
        return n

    return min(_timed(run) for _ in range(3))


WORKLOADS: list[tuple[str, str, str, Callable[[type, int, random.Random], float]]] = [
    ("alloc", "ns/call", "alloc_pages(0) until the pool is full", _alloc),
    ("put", "ns/call", "put_page of every page, random order", _put),
    ("get", "ns/call", "get_page of every page", _get),
    ("split", "ns/call", "split_page of order-4 blocks", _split),
    ("alloc_many", "ns/page", "alloc_many(0, n) on a free pool", _alloc_many),
    ("put_many", "ns/page", "put_many of every page, random order", _put_many),
    ("churn", "ns/call", "random half held: put a random page, alloc one", _churn),
    ("mixed", "ns/call", "orders 0 to 9, P(k)~2^-(k+1), kept half full", _mixed),
    ("batch_array", "ns/page", "alloc_many + put_many of 4096 pages via array('Q')", _batch_array),
    ("ref_pair", "ns/pair", "get_page + put_page, page held twice (net of empty loop)", _ref_pair),
    (
        "alloc_pair",
        "ns/pair",
        "alloc_pages(0) + put_page of that page (net of empty loop)",
        _alloc_pair,
    ),
    (
        "warm_pair",
        "ns/pair",
        "alloc_pages(0) + put_page, one free page, no split or merge (net of empty loop)",
        _warm_pair,
    ),
    (
        "cached_pair",
        "ns/pair",
        "alloc_pages(0) + put_page on Pool(cpus=1) (net of empty loop)",
        _cached_pair,
    ),
]


SHARED_WORKLOADS: list[tuple[str, str, str, Callable[[Any, int, random.Random], float]]] = [
    ("churn", "ns/call", "random half held: put a random page, alloc one", _churn_on),
    ("window", "ns/call", "64 held blocks of orders 0 to 4: put the oldest, alloc one", _window_on),
]


def run_benchmarks(
    mode: str = "quick",
    *,
    pages: int | None = None,
    pool_cls: type | None = None,
    model_cls: type | None = None,
    seed: int = 1,
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Run every workload on both classes; ``progress(name)`` is called before each."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r} (choose from {', '.join(MODES)})")
    n, repeats = MODES[mode]
    sized = pages is not None  # one size asked for: the scaling part, of its own sizes, is left out
    n = n if pages is None else pages
    if not MIN_PAGES <= n <= MAX_PAGES:
        raise ValueError(f"pages must be from {MIN_PAGES} to {MAX_PAGES}, not {n}")
    if pool_cls is None or model_cls is None:
        from . import Pool, ReferencePool

        pool_cls = pool_cls or Pool
        model_cls = model_cls or ReferencePool
    t0 = time.perf_counter()
    result = BenchResult(mode, n, repeats, _overhead(n))
    best: dict[tuple[str, str], float] = {}
    builtin = float("inf")
    shared = hasattr(pool_cls, "create_in")
    pages = _shared_pages(pool_cls, n) if shared else n
    for _ in range(repeats):
        builtin = min(builtin, _builtin_pair(n))
        for name, _unit, _description, on in SHARED_WORKLOADS if shared else ():
            if progress is not None:
                progress("shared " + name)
            for label, make in (("pool", _local_pool), ("shared", _shared_pool)):
                ns = on(make(pool_cls, n, pages), n, random.Random(seed))
                best[name, label] = min(best.get((name, label), float("inf")), ns)
        for name, _unit, _description, fn in WORKLOADS:
            if progress is not None:
                progress(name)
            for label, cls in (("pool", pool_cls), ("reference", model_cls)):
                ns = fn(cls, n, random.Random(seed))
                best[name, label] = min(best.get((name, label), float("inf")), ns)
    result.builtin_pair_ns = builtin
    for name, unit, description, _on in SHARED_WORKLOADS if shared else ():
        result.shared.append(
            SharedMeasurement(name, unit, description, best[name, "pool"], best[name, "shared"])
        )
    for name, unit, description, _fn in WORKLOADS:
        result.results.append(
            Measurement(name, unit, description, best[name, "pool"], best[name, "reference"])
        )
    if not sized:
        result.scaling = scaling(pool_cls, mode, seed, progress)
    result.seconds = time.perf_counter() - t0
    return result
