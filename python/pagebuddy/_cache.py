"""Pure-Python model of the per-CPU page caches (``Pool(..., cpus=N)``, the core's ``CachedPool``).

The model is an exact :class:`~pagebuddy._reference.ReferencePool` (the pool behind the caches)
plus, per CPU slot, one LIFO stack of free blocks per cached order, written to be obviously
right:

* orders 0 to ``min(4, max_order) - 1`` are cached; higher orders go straight to the pool;
* ``alloc`` pops the top of the slot's stack; an empty stack first takes ``cache_batch`` blocks
  from the pool (fewer if it runs out), hands out the first and stacks the rest so that they
  come out in the order the pool gave them;
* the ``put`` that drops a block's last reference pushes it on top of the slot's stack; a stack
  that grows above ``cache_high`` returns its ``cache_batch`` coldest blocks (from the bottom)
  to the pool, coldest first;
* before ``OutOfMemory``, the slot is drained and the allocation retried, then every other slot
  (in slot order) and retried once more;
* ``drain(cpu)`` returns a slot's blocks to the pool, orders ascending, coldest first.

Sizes: with ``cache_batch`` and ``cache_high`` both left out, each slot sizes itself (the core's
``cache::auto``), from the slot's own history counted in operations:

* every free into a slot's cache counts one operation (allocations do not count); a *trip*
  is a refill or a drain of a batch;
* a trip of the other kind than the last within ``2 * high`` operations doubles ``high`` (at
  most ``AUTO_HIGH_MAX``); one of the same kind more than ``8 * high`` after the last halves it
  (at least ``cache_high``); either way ``batch`` becomes ``high // 4`` clamped to
  ``cache_batch .. 32 * cache_batch`` (and at most ``high``);
* a refill the pool cannot fill, and a drain of the whole slot, put the slot back at
  ``cache_batch``/``cache_high``;
* each slot holds at most ``nr_pages // AUTO_FRACTION // cpus`` pages: a refill stops before
  it would go past, and a free that goes past (or above ``high``) drains a batch.

With either given, the sizes are fixed and there is no bound.

The pool keeps each block that left its free lists held once (refcount 1); the callers'
refcounts are kept here. A cached block reads as free (refcount 0). Zeroing follows the native
pool: under ``zero="free"`` the put that drops the last reference zeroes the block, under
``"alloc"`` the allocation that hands it out (also from a cache); taking blocks from the pool
and giving them back zero nothing more.

Slots: a call names its slot with ``cpu=`` (any int >= 0, slot ``cpu % cpus``) or, without it,
uses the calling thread's: the first thread to call gets slot 0, the next slot 1, and so on,
modulo ``cpus``. Deterministic; never imports the native module.
"""

from __future__ import annotations

import array
import operator
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn, SupportsIndex, TypeVar, cast, overload

from . import _frag, _rules
from ._errors import CorruptionError, OutOfMemory, PageError
from ._reference import ReferencePool, _as_int
from ._rules import MAX_REFCOUNT

if TYPE_CHECKING:
    from typing_extensions import Buffer, Self

    _B = TypeVar("_B", bound=Buffer)

__all__ = ["CachedReferencePool"]


def _pfn(op: str, pfn: object) -> int:
    """A pfn argument: an int (TypeError otherwise); one that fits no ``u64`` is outside."""
    pfn = _as_int(pfn, f"{op}: pfn")
    if not 0 <= pfn < 1 << 64:
        raise PageError(_rules.msg_outside(op, pfn))
    return pfn


#: Orders cached (from 0), as the core's default ``CacheConfig``.
CACHED_ORDERS = 4
#: Largest ``cache_high``.
MAX_CACHE_HIGH = 1 << 16
#: The largest ``high`` an auto-sized slot grows to.
AUTO_HIGH_MAX = 2048
#: Auto-sized caches together hold at most ``nr_pages // AUTO_FRACTION`` pages.
AUTO_FRACTION = 8
#: An auto-sized batch is at most ``cache_batch << BATCH_SCALE_MAX``.
BATCH_SCALE_MAX = 5
#: Most slots a pool may have.
MAX_CPUS = 1 << 16


def cache_problem(cpus: int, batch: int, high: int) -> str | None:
    """Why ``cpus``, ``cache_batch`` and ``cache_high`` are refused, or None."""
    if not 1 <= cpus <= MAX_CPUS:
        return f"cpus must be an int from 0 to {MAX_CPUS}, got {cpus}"
    for name, value in (("cache_batch", batch), ("cache_high", high)):
        if not 1 <= value <= MAX_CACHE_HIGH:
            return f"{name} must be an int from 1 to {MAX_CACHE_HIGH}, got {value}"
    if not 1 <= batch <= high <= MAX_CACHE_HIGH:
        return (
            f"cache_batch {batch} and cache_high {high}: need "
            f"1 <= cache_batch <= cache_high <= {MAX_CACHE_HIGH}"
        )
    return None


class CachedReferencePool:
    """Model of ``Pool(nr_pages, ..., cpus=N, cache_batch=None, cache_high=None)``.

    Same constructor and methods as ``pagebuddy.Pool``; ``alloc_pages``, ``put_page``,
    ``alloc_many`` and ``put_many`` take an optional ``cpu=`` slot, and ``drain``,
    ``drain_all`` and ``cache_contents`` show and empty the caches. With ``cpus=0`` the
    constructor returns a plain :class:`~pagebuddy.ReferencePool`, as ``Pool`` keeps its exact
    pool. Registered as a virtual subclass of ``ReferencePool``, which is what it models:
    ``isinstance(ReferencePool(64, cpus=2), ReferencePool)`` holds. Not thread-safe.
    """

    def __new__(cls, nr_pages: SupportsIndex, **kwargs: Any) -> Any:
        """``cpus=0`` (or none): the exact model."""
        try:
            exact = operator.index(kwargs.get("cpus", 0)) == 0
        except TypeError:
            exact = False
        if exact:
            return ReferencePool(nr_pages, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        nr_pages: SupportsIndex,
        *,
        cpus: SupportsIndex,
        cache_batch: SupportsIndex | None = None,
        cache_high: SupportsIndex | None = None,
        **kwargs: Any,
    ) -> None:
        core = ReferencePool(nr_pages, **kwargs)
        cpus = _as_int(cpus, "cpus")
        auto = cache_batch is None and cache_high is None
        batch = 16 if cache_batch is None else _as_int(cache_batch, "cache_batch")
        high = 64 if cache_high is None else _as_int(cache_high, "cache_high")
        problem = cache_problem(cpus, batch, high)
        if problem:
            raise ValueError(problem)
        self._core = core
        self._cpus, self._batch, self._high = cpus, batch, high
        self._auto = auto
        #: Pages one slot may hold (None: no bound, fixed sizes).
        self._budget = core.max_pages // AUTO_FRACTION // cpus if auto else None
        #: Per slot: [high, batch, operations, operations at the last trip, last trip kind].
        self._sizing: list[list[Any]] = [[high, batch, 0, 0, None] for _ in range(cpus)]
        self._orders = min(CACHED_ORDERS, core.max_order)
        #: _stacks[slot][order]: cached block pfns, coldest first (the next alloc takes the last).
        self._stacks: list[list[list[int]]] = [
            [[] for _ in range(self._orders)] for _ in range(cpus)
        ]
        #: The callers' refcount of each page (the pool holds each block once for them all).
        self._refs = list(core._refcount)
        #: Each thread's slot, given on its first call; a thread-local, as thread idents are reused.
        self._local = threading.local()
        self._threads = 0
        self._closed = False

    # ---------------------------------------------------------------- attributes

    nr_pages = property(lambda self: self._core.nr_pages, doc="Pages of the initial range.")
    max_pages = property(lambda self: self._core.max_pages, doc="Pages the pool may cover.")
    page_size = property(lambda self: self._core.page_size, doc="Bytes per page.")
    base_pfn = property(lambda self: self._core.base_pfn, doc="Pfn of the first page.")
    reserved_pages = property(lambda self: self._core.reserved_pages, doc="Pages held at start.")
    max_order = property(lambda self: self._core.max_order, doc="Number of orders.")
    zero = property(lambda self: self._core.zero, doc="The zero policy.")
    arena = property(lambda self: self._core.arena, doc="Whether the pool has an arena.")
    cpus = property(lambda self: self._cpus, doc="Number of CPU slots.")
    cache_batch = property(lambda self: self._batch, doc="Blocks per refill or drain.")
    cache_high = property(lambda self: self._high, doc="Blocks a cache keeps.")
    cache_auto = property(lambda self: self._auto, doc="Whether each slot sizes itself.")

    @property
    def cache_bound(self) -> int | None:
        """Pages all caches together may hold when they size themselves, else None."""
        return None if self._budget is None else self._budget * self._cpus

    def close(self) -> None:
        """Close the pool behind the caches (``ReferencePool.close``): the arena is released
        at once and every later call raises ValueError; closing again does nothing."""
        self._closed = True
        self._core.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def __enter__(self) -> Self:
        """``with``: the pool is closed at the end of the block."""
        if self._closed:
            self._refuse("__enter__")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the pool; an exception from the block goes on."""
        self.close()

    def _refuse(self, op: str) -> NoReturn:
        """The ValueError of a call on a closed pool."""
        raise ValueError(_rules.msg_closed(op))

    def buddyinfo(self) -> list[int]:
        """Free blocks per order on the pool's free lists (cached blocks are not on them, as
        Linux's ``/proc/buddyinfo`` leaves out its per-CPU lists)."""
        if self._closed:
            self._refuse("buddyinfo")
        return self._core.buddyinfo()

    def fragmentation(self) -> _frag.Fragmentation:
        """The figures of :meth:`buddyinfo` (``ReferencePool.fragmentation``)."""
        if self._closed:
            self._refuse("fragmentation")
        return self._core.fragmentation()

    @property
    def free_pages(self) -> int:
        """Free pages: in the pool's free blocks and in every cache."""
        if self._closed:
            self._refuse("free_pages")
        cached = sum(
            len(stack) << order for slot in self._stacks for order, stack in enumerate(slot)
        )
        return self._core.free_pages + cached

    def __repr__(self) -> str:
        """As ``ReferencePool``'s, with the cache settings."""
        state = "closed=True" if self._closed else f"free_pages={self.free_pages}"
        room = f", max_pages={self.max_pages}" if self.max_pages != self.nr_pages else ""
        return (
            f"{type(self).__name__}(nr_pages={self.nr_pages}{room}, page_size={self.page_size}, "
            f"base_pfn={self.base_pfn}, max_order={self.max_order}, zero={self.zero!r}, "
            f"cpus={self._cpus}, cache_batch={self._batch}, cache_high={self._high}, "
            f"{state})"
        )

    # ---------------------------------------------------------------- slots and pages

    def _slot(self, op: str, cpu: object) -> int:
        """The slot of ``cpu``, or of the calling thread when it is None."""
        if cpu is None:
            slot = getattr(self._local, "slot", None)
            if slot is None:
                slot = self._local.slot = self._threads
                self._threads += 1
            return slot % self._cpus
        cpu = _as_int(cpu, f"{op}: cpu")
        if cpu < 0:
            raise ValueError(f"{op}: cpu must be >= 0, got {cpu}")
        return cpu % self._cpus

    def _index(self, op: str, pfn: object) -> tuple[int, int]:
        """``(pfn, index)`` of an in-pool pfn, else PageError (TypeError for a non-int)."""
        pfn = _as_int(pfn, f"{op}: pfn")
        core = self._core
        if not core._in_pool(pfn):
            raise PageError(_rules.msg_outside(op, pfn))
        return pfn, pfn - core.base_pfn

    def _held(self, op: str, pfn: object) -> tuple[int, int]:
        """``(pfn, index)`` of a page a caller holds, else PageError."""
        pfn, i = self._index(op, pfn)
        if self._refs[i] == 0:
            if self._core._absent[i]:
                raise PageError(_rules.msg_not_covered(op, pfn))
            # A cached block heads a free block; so does a free one of the pool.
            raise PageError(_rules.msg_not_held(op, pfn, self._core._order[i] is not None))
        return pfn, i

    def _zero_block(self, pfn: int, order: int) -> None:
        self._core._zero_block(pfn, order)

    # ---------------------------------------------------------------- the pool behind

    def _take(self, order: int) -> int | None:
        """The pool's allocation without zeroing (the caches zero when they hand out)."""
        core = self._core
        for j in range(order, core.max_order):
            if core._free_area[j]:
                pfn = core._free_area[j][0]
                break
        else:
            return None
        core._extract(pfn, order)
        core._refcount[core._index(pfn)] = 1
        return pfn

    def _give_back(self, pfn: int) -> None:
        """Free a block the pool holds once for the caches (already zeroed where due)."""
        self._core.put_page(pfn)

    # ---------------------------------------------------------------- sizes

    def _slot_pages(self, slot: int) -> int:
        return sum(len(stack) << order for order, stack in enumerate(self._stacks[slot]))

    def _tick(self, slot: int) -> None:
        self._sizing[slot][2] += 1

    def _reset(self, slot: int) -> None:
        sizing = self._sizing[slot]
        sizing[0], sizing[1], sizing[3], sizing[4] = self._high, self._batch, sizing[2], None

    def _trip(self, slot: int, kind: str) -> None:
        """A refill or drain of a batch: resize as the module docstring says."""
        if not self._auto:
            return
        sizing = self._sizing[slot]
        high, _, ops, mark, last = sizing
        since = ops - mark
        if last is not None and last != kind and since <= 2 * high:
            high = min(2 * high, AUTO_HIGH_MAX)
        elif last == kind and since > 8 * high:
            high = max(high // 2, self._high)
        batch = min(max(high // 4, self._batch), self._batch << BATCH_SCALE_MAX, high)
        sizing[:] = [high, batch, ops, ops, kind]

    # ---------------------------------------------------------------- the caches

    def _hand_out(self, pfn: int, order: int) -> int:
        if self.zero == "alloc":
            self._zero_block(pfn, order)
        self._refs[pfn - self.base_pfn] = 1
        return pfn

    def _try_alloc(self, slot: int, order: int) -> int | None:
        if order >= self._orders:
            pfn = self._take(order)
            return None if pfn is None else self._hand_out(pfn, order)
        stack = self._stacks[slot][order]
        if not stack:
            self._trip(slot, "refill")
            batch = self._sizing[slot][1]
            first = self._take(order)
            if first is None:
                self._reset(slot)
                return None
            rest: list[int] = []
            budget, pages = self._budget, self._slot_pages(slot)
            while len(rest) + 1 < batch:
                if budget is not None and pages + ((len(rest) + 1) << order) > budget:
                    break
                pfn = self._take(order)
                if pfn is None:
                    self._reset(slot)
                    break
                rest.append(pfn)
            stack.extend(reversed(rest))
            return self._hand_out(first, order)
        return self._hand_out(stack.pop(), order)

    def _alloc(self, slot: int, order: int) -> int | None:
        pfn = self._try_alloc(slot, order)
        if pfn is not None:
            return pfn
        self._drain(slot)
        pfn = self._try_alloc(slot, order)
        if pfn is not None:
            return pfn
        for other in range(self._cpus):
            if other != slot:
                self._drain(other)
        return self._try_alloc(slot, order)

    def _put(self, op: str, slot: int, pfn: int) -> None:
        pfn, i = self._held(op, pfn)
        self._refs[i] -= 1
        if self._refs[i]:
            return
        core = self._core
        order = core._order[i]
        assert order is not None
        if self.zero == "free":
            self._zero_block(pfn, order)
        if order >= self._orders:
            self._give_back(pfn)
            return
        self._tick(slot)
        stack = self._stacks[slot][order]
        stack.append(pfn)
        high, budget = self._sizing[slot][0], self._budget
        if len(stack) > high or (budget is not None and self._slot_pages(slot) > budget):
            self._trip(slot, "drain")
            batch = self._sizing[slot][1]
            cold = stack[:batch]
            del stack[:batch]
            for block in cold:
                self._give_back(block)

    def _drain(self, slot: int) -> None:
        self._reset(slot)
        for stack in self._stacks[slot]:
            blocks = list(stack)
            stack.clear()
            for pfn in blocks:
                self._give_back(pfn)

    # ---------------------------------------------------------------- public API

    def alloc_pages(self, order: SupportsIndex, *, cpu: SupportsIndex | None = None) -> int:
        """Allocate a block of ``2**order`` pages for slot ``cpu`` (default: this thread's)."""
        if self._closed:
            self._refuse("alloc_pages")
        order = self._core._check_order("alloc_pages", order)
        slot = self._slot("alloc_pages", cpu)
        pfn = self._alloc(slot, order)
        if pfn is None:
            raise OutOfMemory(_rules.msg_out_of_memory(order, self.free_pages))
        return pfn

    def alloc_exact(self, nr_pages: SupportsIndex) -> int:
        """A run of exactly ``nr_pages`` order-0 pages from the pool behind the caches (as
        ``ReferencePool.alloc_exact``), each held once; before OutOfMemory the caches are
        drained, this thread's slot first, as for ``alloc_pages``."""
        if self._closed:
            self._refuse("alloc_exact")
        core = self._core
        n = _as_int(nr_pages, "alloc_exact: nr_pages")
        largest = 1 << (core.max_order - 1)
        if not 1 <= n <= largest:
            raise ValueError(_rules.msg_bad_run("alloc_exact", n, largest))
        slot = self._slot("alloc_exact", None)
        for attempt in range(3):
            try:
                pfn = core.alloc_exact(n)
            except OutOfMemory:
                if attempt == 0:
                    self._drain(slot)
                elif attempt == 1:
                    for other in range(self._cpus):
                        if other != slot:
                            self._drain(other)
                else:
                    raise
                continue
            for i in range(pfn - core.base_pfn, pfn - core.base_pfn + n):
                self._refs[i] = 1
            return pfn
        raise AssertionError("unreachable")

    @overload
    def alloc_many(
        self,
        order: SupportsIndex,
        count: SupportsIndex,
        *,
        out: None = None,
        cpu: SupportsIndex | None = None,
    ) -> list[int]: ...
    @overload
    def alloc_many(
        self,
        order: SupportsIndex,
        count: SupportsIndex,
        *,
        out: _B,
        cpu: SupportsIndex | None = None,
    ) -> _B: ...
    def alloc_many(
        self,
        order: SupportsIndex,
        count: SupportsIndex,
        *,
        out: Buffer | None = None,
        cpu: SupportsIndex | None = None,
    ) -> list[int] | Buffer:
        """``count`` allocations through one slot, all or nothing.

        When one fails, the blocks already taken are put back through the slot, the last
        first (so a cache that had them holds them in its old order again), and OutOfMemory
        names how many could be had. ``out`` is as for ``ReferencePool.alloc_many``: a
        writable uint64 array that receives the pfns and is returned.
        """
        if self._closed:
            self._refuse("alloc_many")
        order = self._core._check_order("alloc_many", order)
        count = _as_int(count, "alloc_many: count")
        if count < 0:
            raise ValueError(f"alloc_many: count must be >= 0, not {count}")
        view = None if out is None else _rules.u64_array(out)
        if out is not None:
            if view is None or view.readonly:
                raise TypeError(_rules.msg_bad_out("alloc_many", out))
            if len(view) < count:
                raise ValueError(_rules.msg_short_out("alloc_many", len(view), count))
        slot = self._slot("alloc_many", cpu)
        got: list[int] = []
        while len(got) < count:
            pfn = self._alloc(slot, order)
            if pfn is None:
                for block in reversed(got):
                    self._put("alloc_many", slot, block)
                raise OutOfMemory(_rules.msg_batch_out_of_memory(count, order, len(got)))
            got.append(pfn)
        if view is None:
            return got
        with view, view.cast("B") as raw:
            raw[: 8 * count] = array.array("Q", got).tobytes()
        assert out is not None  # view is out's
        return out

    def put_page(self, pfn: SupportsIndex, *, cpu: SupportsIndex | None = None) -> None:
        """Drop one reference; the last one caches the block in slot ``cpu`` (or frees it)."""
        if self._closed:
            self._refuse("put_page")
        pfn = _pfn("put_page", pfn)
        self._put("put_page", self._slot("put_page", cpu), pfn)

    def put_many(
        self, pfns: Iterable[SupportsIndex] | Buffer, *, cpu: SupportsIndex | None = None
    ) -> None:
        """``put_page`` every pfn in order through one slot, all or nothing.

        Each pfn is first checked as ``put_page`` would find it after the ones before it; the
        first that cannot be put raises PageError naming its index, and nothing is put. A
        uint64 array is read as ``ReferencePool.put_many`` reads it.
        """
        if self._closed:
            self._refuse("put_many")
        view = _rules.u64_array(pfns)
        items: Iterable[object]
        if view is not None:
            with view:
                items = view.tolist()
        else:
            items = cast("Iterable[SupportsIndex]", pfns)
        converted = [_as_int(pfn, f"put_many: pfns[{k}]") for k, pfn in enumerate(items)]
        slot = self._slot("put_many", cpu)
        dropped: dict[int, int] = {}
        for k, pfn in enumerate(converted):
            op = f"put_many: pfns[{k}]"
            pfn, i = self._index(op, pfn)
            if self._refs[i] <= dropped.get(pfn, 0):
                raise PageError(_rules.msg_not_held(op, pfn, self._core._order[i] is not None))
            dropped[pfn] = dropped.get(pfn, 0) + 1
        for k, pfn in enumerate(converted):
            self._put(f"put_many: pfns[{k}]", slot, pfn)

    def get_page(self, pfn: SupportsIndex) -> None:
        """Take one more reference on a held page."""
        if self._closed:
            self._refuse("get_page")
        pfn, i = self._held("get_page", pfn)
        if self._refs[i] == MAX_REFCOUNT:
            raise PageError(_rules.msg_refcount_overflow("get_page", pfn))
        self._refs[i] += 1

    def split_page(self, pfn: SupportsIndex) -> None:
        """Split a held block into held order-0 pages (the head keeps its refcount)."""
        if self._closed:
            self._refuse("split_page")
        pfn, i = self._held("split_page", pfn)
        order = self._core._order[i]
        assert order is not None
        self._core.split_page(pfn)
        for tail in range(i + 1, i + (1 << order)):
            self._refs[tail] = 1

    def page_count(self, pfn: SupportsIndex) -> int:
        """The callers' refcount of a page (0 for free and cached pages and for tails)."""
        if self._closed:
            self._refuse("page_count")
        pfn, i = self._index("page_count", pfn)
        if self._core._absent[i]:
            raise PageError(_rules.msg_not_covered("page_count", pfn))
        return self._refs[i]

    def free_lists(self) -> list[list[int]]:
        """The pool's free lists (cached blocks are not on them)."""
        if self._closed:
            self._refuse("free_lists")
        return self._core.free_lists()

    def view(self, pfn: SupportsIndex) -> memoryview:
        """A writable view of a block a caller holds."""
        if self._closed:
            self._refuse("view")
        pfn, _ = self._held("view", pfn)
        return self._core.view(pfn)

    # ---------------------------------------------------------------- grow and shrink

    @property
    def min_free_pages(self) -> int:
        """The pool's ``min_free_pages``."""
        return self._core.min_free_pages

    def set_min_free_pages(self, pages: SupportsIndex) -> None:
        """Set the pool's ``min_free_pages``."""
        if self._closed:
            self._refuse("set_min_free_pages")
        self._core.set_min_free_pages(pages)

    def covers(self, pfn: SupportsIndex) -> bool:
        """Whether ``pfn`` is the pool's now."""
        if self._closed:
            self._refuse("covers")
        return self._core.covers(pfn)

    def _drained(self, op: str) -> ReferencePool:
        """Every cache drained, for a call that grows or shrinks the pool: the pool's model."""
        if self._closed:
            self._refuse(op)
        for slot in range(self._cpus):
            self._drain(slot)
        return self._core

    def admit(self, pfn: SupportsIndex, order: SupportsIndex) -> None:
        """The pool's ``admit``: the block checked first (a refused one drains nothing), then
        every cache drained."""
        if self._closed:
            self._refuse("admit")
        pfn, order, _ = self._core._check_admit(pfn, order)
        self._drained("admit").admit(pfn, order)

    def reclaim(self, order: SupportsIndex) -> int:
        """The pool's ``reclaim``, after draining every cache (also when it then fails: the
        caches are drained to see every free page)."""
        if self._closed:
            self._refuse("reclaim")
        self._core._check_order("reclaim", order)
        return self._drained("reclaim").reclaim(order)

    def reclaim_many(self, order: SupportsIndex, count: SupportsIndex) -> list[int]:
        """The pool's ``reclaim_many``, after draining every cache, as ``reclaim``."""
        if self._closed:
            self._refuse("reclaim_many")
        self._core._check_order("reclaim_many", order)
        count = _as_int(count, "reclaim_many: count")
        if count < 0:
            raise ValueError(f"reclaim_many: count must be >= 0, got {count}")
        return self._drained("reclaim_many").reclaim_many(order, count)

    def reclaimable(self, order: SupportsIndex) -> int:
        """The pool's ``reclaimable`` (cached blocks not counted)."""
        if self._closed:
            self._refuse("reclaimable")
        return self._core.reclaimable(order)

    def drain(self, cpu: SupportsIndex | None = None) -> None:
        """Return every block cached in slot ``cpu`` (default: this thread's) to the pool."""
        if self._closed:
            self._refuse("drain")
        self._drain(self._slot("drain", cpu))

    def drain_all(self) -> None:
        """Drain every slot in turn."""
        if self._closed:
            self._refuse("drain_all")
        for slot in range(self._cpus):
            self._drain(slot)

    def cache_contents(self, cpu: SupportsIndex | None = None) -> list[list[int]]:
        """Slot ``cpu``'s cached blocks, one list per cached order, coldest first."""
        if self._closed:
            self._refuse("cache_contents")
        return [list(stack) for stack in self._stacks[self._slot("cache_contents", cpu)]]

    def cache_sizes(self, cpu: SupportsIndex | None = None) -> tuple[int, int]:
        """Slot ``cpu``'s current ``(high, batch)`` (default: this thread's slot)."""
        high, batch = self._sizing[self._slot("cache_sizes", cpu)][:2]
        return high, batch

    def check(self) -> None:
        """The pool's ``check()``, then the caches against it: each cached block is held by
        the pool, of its stack's order, nobody's, cached once; every block the pool holds is a
        caller's or cached."""
        if self._closed:
            self._refuse("check")

        def fail(message: str) -> NoReturn:
            raise CorruptionError(f"check: {message}")

        core = self._core
        core.check()
        cached: set[int] = set()
        for slot, stacks in enumerate(self._stacks):
            for order, stack in enumerate(stacks):
                if len(stack) > max(self._high, AUTO_HIGH_MAX if self._auto else 0):
                    fail(f"slot {slot} caches {len(stack)} blocks of order {order}")
                for pfn in stack:
                    i = pfn - core.base_pfn
                    if pfn in cached:
                        fail(f"pfn {pfn} is cached twice")
                    cached.add(pfn)
                    if core._order[i] != order or core._refcount[i] != 1 or self._refs[i]:
                        fail(f"cached pfn {pfn} is not a block of order {order} nobody holds")
        for i, refs in enumerate(self._refs):
            pfn = core.base_pfn + i
            if not 0 <= refs <= MAX_REFCOUNT:
                fail(f"pfn {pfn} has refcount {refs}")
            in_core = core._refcount[i]
            if refs and not in_core:
                fail(f"pfn {pfn} is held by a caller but free in the pool")
            if in_core and not refs and pfn not in cached:
                fail(f"pfn {pfn} is held by the pool for no one")


ReferencePool.register(CachedReferencePool)
