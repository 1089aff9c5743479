"""The rulebook of the Python side: limits, policies, the operation table, shared messages.

Everything here is a fact about the allocator's contract that more than one module needs:
``ReferencePool`` (the model), the trace format, the lockstep engine, the fuzzer and the
command line read it from here and nowhere else. It imports nothing from the package, so
the model stays independent of the native module.

**Orders.** ``max_order`` means two things in the public API, and the code keeps one word
for each:

* the *cap* a caller passes (``Pool(..., max_order=11)``, the trace header's ``max_order=``,
  ``--max-order``), called ``order_cap`` in the code (as ``Config::order_cap`` in the core);
* the *count* a pool reports (``pool.max_order``): the number of orders the pool really has,
  ``min(order_cap, nr_pages.bit_length())``, so valid orders are 0 to ``max_order - 1``.
  :func:`max_order` computes it; :attr:`Geometry.max_order` is that count.

**Operations.** An operation is a tuple ``(kind, *args)`` (:data:`Op`); :data:`OPERATIONS`
maps each kind to the pool method it calls, its arguments and the exception classes it may
raise. The trace format writes the traced kinds one per line (:func:`format_op`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ARENAS",
    "DEFAULT_ORDER_CAP",
    "LINK_BYTES",
    "LINK_STORES",
    "MAX_PAGES",
    "MAX_REFCOUNT",
    "MODELS",
    "OPERATIONS",
    "ZERO_POLICIES",
    "Geometry",
    "Op",
    "Operation",
    "arena_comparison",
    "contents_comparable",
    "format_op",
    "geometry_problem",
    "max_order",
]

# -- limits ---------------------------------------------------------------------------------------

#: Most pages one pool can manage (page indices are ``u32`` with ``u32::MAX`` meaning none).
MAX_PAGES = 2**32 - 2
#: Page sizes are powers of two in this range.
MIN_PAGE_SIZE, MAX_PAGE_SIZE = 64, 2**30
#: Pfns are ``u64``: ``base_pfn + nr_pages`` may not pass this.
PFN_LIMIT = 2**64
#: The default cap on the number of orders (pKVM's ``MAX_ORDER``).
DEFAULT_ORDER_CAP = 11
#: A page's refcount is 16 bits: ``get_page`` refuses to go past this.
MAX_REFCOUNT = 65535
#: Bytes of free-list links (prev, next and a hint of the block after next) an intrusive free
#: block keeps at the start of its head page.
LINK_BYTES = 16

# -- policies -------------------------------------------------------------------------------------

#: When block contents are cleared: when freed (pKVM), when allocated, or never.
ZERO_POLICIES = ("free", "alloc", "never")
#: Where free-list links live: a side table beside the metadata, or the free pages themselves.
LINK_STORES = ("side", "intrusive")
#: Whether the pool owns its arena, is handed a caller's buffer (a ``bytearray``), or has no
#: arena at all (``arena=False``: page numbers only, zero ``"never"``, links ``"side"``).
ARENAS = ("owned", "buffer", "none")

#: Pool modes beyond the plain one: a constructor keyword that selects the mode, mapped to
#: ``"module:Class"`` of the model that the lockstep engine pairs with ``Pool`` for it.
#: A new mode adds one entry here and its model beside ``_reference.py``.
MODELS: dict[str, str] = {"cpus": "pagebuddy._cache:CachedReferencePool"}


def max_order(nr_pages: int, order_cap: int) -> int:
    """The number of orders a pool of ``nr_pages`` has under ``order_cap`` (pKVM's rule).

    ``min(MAX_ORDER, get_order((nr_pages + 1) << PAGE_SHIFT))`` is
    ``min(order_cap, nr_pages.bit_length())``.
    """
    return min(order_cap, nr_pages.bit_length())


def geometry_problem(
    nr_pages: int,
    page_size: int,
    base_pfn: int,
    reserved_pages: int,
    order_cap: int,
    max_pages: int | None = None,
) -> str | None:
    """Why the constructor refuses these integer arguments (a ``ValueError`` text), or None.

    ``max_pages`` (None: ``nr_pages``) is the pages the pool may ever cover; ``nr_pages``, its
    initial range, may then be 0 (a pool that starts empty) and must not exceed it."""
    span = nr_pages if max_pages is None else max_pages
    if max_pages is not None and not 0 <= nr_pages <= max_pages:
        return f"max_pages must be >= nr_pages ({nr_pages}), not {max_pages}"
    if not 1 <= span <= MAX_PAGES:
        return f"nr_pages must be from 1 to {MAX_PAGES}, not {span}"
    if not (MIN_PAGE_SIZE <= page_size <= MAX_PAGE_SIZE and page_size & (page_size - 1) == 0):
        return f"page_size must be a power of two from 64 to 2**30, not {page_size}"
    if base_pfn < 0 or base_pfn + span > PFN_LIMIT:
        return f"base_pfn {base_pfn}: pfns must be from 0 to 2**64 - 1"
    if not 0 <= reserved_pages <= nr_pages:
        return f"reserved_pages must be from 0 to {nr_pages}, not {reserved_pages}"
    if order_cap < 1:
        return f"max_order must be >= 1, not {order_cap}"
    return None


def contents_comparable(zero: str, links: str, arena: str = "owned") -> bool:
    """Whether an allocated block's contents are defined by the policy (so two pools agree).

    ``zero="never"`` with intrusive links leaves them undefined: the block may hold the
    free-list links it carried while free, which the model does not write. A pool without an
    arena (``arena="none"``) has no contents at all.
    """
    return arena != "none" and not (zero == "never" and links == "intrusive")


def arena_problem(arena: object, zero: str, links: str, buffer: bool) -> str | None:
    """Why ``arena=False`` refuses the other keywords (a ``ValueError`` text), or None."""
    if arena is not False:
        return None
    if zero != "never":
        return (
            f"arena=False needs zero='never', got '{zero}': a pool without an arena has no "
            "bytes to zero"
        )
    if links != "side":
        return (
            "arena=False needs _links='side': a pool without an arena has no free pages to "
            "keep links in"
        )
    if buffer:
        return "arena=False takes no buffer: a pool without an arena has no bytes"
    return None


def arena_comparison(zero: str, links: str) -> str:
    """How much of two pools' arenas must match byte for byte.

    ``"whole"`` with a side table (the arena holds only what callers wrote and zeroing);
    ``"except links"`` with intrusive links under ``zero="free"`` (all but the
    :data:`LINK_BYTES` at the head of each free block); ``"held"`` otherwise when contents are
    comparable (only held blocks); ``"none"`` when they are not.
    """
    if links == "side":
        return "whole"
    if zero == "free":
        return "except links"
    return "held" if contents_comparable(zero, links) else "none"


# -- operations -----------------------------------------------------------------------------------

#: An operation: ``("alloc", order)``, ``("put", pfn)``, ``("get", pfn)``, ``("split", pfn)``,
#: ``("alloc_many", order, count)``, ``("put_many", (pfn, ...))``, ``("exact", nr_pages)``,
#: ``("alloc_on", order, cpu)``, ``("put_on", pfn, cpu)``, ``("drain", cpu)``,
#: ``("page_count", pfn)`` or ``("view", pfn)``. Arguments are usually ints; the engine passes
#: whatever is there.
Op = tuple[str, Any] | tuple[str, Any, Any]


@dataclass(frozen=True)
class Operation:
    """One entry of the operation table."""

    #: The word in traces and in :data:`Op` tuples.
    kind: str
    #: The pool method it calls (the same on ``Pool`` and ``ReferencePool``).
    method: str
    #: Argument names: ``order``, ``count``, ``pfn`` or ``pfns`` (a tuple of pfns).
    params: tuple[str, ...]
    #: Exception class names the method may raise for bad input (from ``pagebuddy._errors``
    #: or builtins).
    raises: frozenset[str]
    #: Whether it changes the pool (and so belongs in a trace).
    mutates: bool = True
    #: The last parameters, passed by keyword (``cpu``: the slot of a cached pool).
    keywords: tuple[str, ...] = ()

    def bind(self, pool: Any) -> Any:
        """``pool``'s method as a callable of the arguments in :attr:`params` order (those in
        :attr:`keywords` go by keyword); further keyword arguments pass through."""
        method = getattr(pool, self.method)
        if not self.keywords:
            return method
        first, names = len(self.params) - len(self.keywords), self.keywords

        def call(*args: Any, **kwargs: Any) -> Any:
            return method(*args[:first], **dict(zip(names, args[first:], strict=False)), **kwargs)

        return call

    @property
    def usage(self) -> str:
        """``"alloc ORDER"``, ``"put_many PFN..."``: the trace line's form."""
        words = [p.upper() if p != "pfns" else "PFN..." for p in self.params]
        return " ".join([self.kind, *words])


_PAGE = frozenset({"TypeError", "PageError"})
_ALLOC = frozenset({"TypeError", "ValueError", "OutOfMemory"})
#: A put names its slot on a cached pool: ``cpu=-1`` is a ValueError.
_PUT = _PAGE | {"ValueError"}
_CPU = frozenset({"TypeError", "ValueError"})
#: Admit names a pfn and an order: a bad order is a ValueError, a refused block a PageError.
_ADMIT = _PAGE | {"ValueError"}

#: Every operation, by kind.
OPERATIONS: Mapping[str, Operation] = {
    op.kind: op
    for op in (
        Operation("alloc", "alloc_pages", ("order",), _ALLOC),
        Operation("put", "put_page", ("pfn",), _PUT),
        Operation("get", "get_page", ("pfn",), _PAGE),
        Operation("split", "split_page", ("pfn",), _PAGE),
        Operation("alloc_many", "alloc_many", ("order", "count"), _ALLOC),
        Operation("put_many", "put_many", ("pfns",), _PUT),
        Operation("exact", "alloc_exact", ("count",), _ALLOC),
        # Through a named slot of a cached pool (``cpu=``; refused with ValueError without
        # caches), and the slot's drain.
        Operation("alloc_on", "alloc_pages", ("order", "cpu"), _ALLOC, keywords=("cpu",)),
        Operation("put_on", "put_page", ("pfn", "cpu"), _PUT, keywords=("cpu",)),
        Operation("drain", "drain", ("cpu",), _CPU),
        # Pools that grow and shrink (Android pKVM's hyp_pool_admit / hyp_pool_reclaim): a
        # cached pool drains every cache first.
        Operation("admit", "admit", ("pfn", "order"), _ADMIT),
        Operation("reclaim", "reclaim", ("order",), _ALLOC),
        Operation("reclaim_many", "reclaim_many", ("order", "count"), _ALLOC),
        Operation("floor", "set_min_free_pages", ("count",), _CPU),
        Operation("reclaimable", "reclaimable", ("order",), _CPU, mutates=False),
        Operation("page_count", "page_count", ("pfn",), _PAGE, mutates=False),
        Operation("view", "view", ("pfn",), _PAGE, mutates=False),
    )
}
#: The kinds a trace may hold (those that change the pool).
TRACED = tuple(k for k, op in OPERATIONS.items() if op.mutates)
#: The operations of pools that grow and shrink (admit, reclaim, the floor).
GROW_KINDS = frozenset({"admit", "reclaim", "reclaim_many", "floor", "reclaimable"})
#: :data:`TRACED` without them: what a pool that is never grown sees.
TRACED_FIXED = tuple(k for k in TRACED if k not in GROW_KINDS)
#: Operation kind by pool method name (the first kind that calls it: ``alloc`` for
#: ``alloc_pages``, not ``alloc_on``).
KIND_OF_METHOD = {op.method: op.kind for op in reversed(list(OPERATIONS.values()))}


def format_op(op: Op) -> str:
    """One operation as a trace line (without newline): ``alloc 3``, ``put_many 5 6``."""
    kind, *args = op
    if OPERATIONS[kind].params == ("pfns",):
        return kind + "".join(f" {p}" for p in args[0])
    return " ".join([kind, *map(str, args)])


def op_pfns(op: Op) -> list[Any]:
    """The pfn arguments of ``op`` (empty for ``alloc``, ``alloc_many`` and ``exact``)."""
    kind, *args = op
    params = OPERATIONS[kind].params
    if params == ("pfns",):
        return list(args[0])
    return [a for p, a in zip(params, args, strict=False) if p == "pfn"]


def map_pfns(op: Op, move: Any) -> Op:
    """``op`` with ``move(pfn)`` applied to each of its pfn arguments."""
    kind, *args = op
    params = OPERATIONS[kind].params
    if params == ("pfns",):
        return (kind, tuple(move(p) for p in args[0]))
    return (kind, *(move(a) if p == "pfn" else a for p, a in zip(params, args, strict=False)))


# -- geometry -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """The constructor arguments of a pool, shared by ``Pool`` and ``ReferencePool``.

    ``order_cap`` is the ``max_order`` keyword (a cap); :attr:`max_order` is the number of
    orders the pool will have. ``links`` selects the private link store and ``arena``
    whether the pool owns its arena (``"owned"``), is given a ``bytearray``
    (``"buffer"``), which lets a run compare whole arenas, or has none (``"none"``:
    ``arena=False``, with ``zero="never"`` and ``links="side"``). ``options`` holds further
    constructor keywords, for pool modes (see :data:`MODELS`).
    """

    nr_pages: int
    page_size: int = 4096
    base_pfn: int = 0
    reserved_pages: int = 0
    order_cap: int = DEFAULT_ORDER_CAP
    zero: str = "free"
    links: str = "side"
    arena: str = "owned"
    options: tuple[tuple[str, Any], ...] = ()
    #: Pages the pool may ever cover (the ``max_pages`` keyword); None: ``nr_pages``.
    max_pages: int | None = None

    @property
    def span(self) -> int:
        """Pages with metadata (and arena bytes): ``max_pages``, or ``nr_pages``."""
        return self.nr_pages if self.max_pages is None else self.max_pages

    @property
    def max_order(self) -> int:
        """Number of orders the pool will have: valid orders are 0 to ``max_order - 1``."""
        return max_order(self.span, self.order_cap)

    def problem(self) -> str | None:
        """Why the constructor would refuse this geometry, or None."""
        return geometry_problem(
            self.nr_pages,
            self.page_size,
            self.base_pfn,
            self.reserved_pages,
            self.order_cap,
            self.max_pages,
        )

    def _keywords(self) -> dict[str, Any]:
        """The integer and policy keywords, under the constructor's names."""
        return {
            "page_size": self.page_size,
            "base_pfn": self.base_pfn,
            "reserved_pages": self.reserved_pages,
            "max_order": self.order_cap,
            "zero": self.zero,
        }

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the pool constructor, without ``buffer``."""
        kw = self._keywords()
        if self.links != "side":
            kw["_links"] = self.links
        if self.arena == "none":
            kw["arena"] = False
        if self.max_pages is not None:
            kw["max_pages"] = self.max_pages
        kw.update(self.options)
        return kw

    @classmethod
    def from_kwargs(cls, nr_pages: int, **kw: Any) -> Geometry:
        """The geometry of ``Pool(nr_pages, **kw)`` (``buffer`` given: ``arena="buffer"``)."""
        known = {
            "page_size": "page_size",
            "base_pfn": "base_pfn",
            "reserved_pages": "reserved_pages",
            "max_order": "order_cap",
            "zero": "zero",
            "_links": "links",
            "max_pages": "max_pages",
        }
        fields = {known[k]: v for k, v in kw.items() if k in known}
        if kw.get("buffer") is not None:
            fields["arena"] = "buffer"
        if kw.get("arena") is False:
            fields["arena"] = "none"
            fields.setdefault("zero", "never")
        skip = ("buffer", "arena")
        options = tuple((k, v) for k, v in kw.items() if k not in known and k not in skip)
        return cls(nr_pages, options=options, **fields)

    def build(self, cls: Any, buffer: Any = None) -> tuple[Any, Any]:
        """Construct a pool of class ``cls``; returns ``(pool, buffer or None)``.

        With ``arena="buffer"`` the pool gets ``buffer``, or a new zeroed ``bytearray``.
        """
        if self.arena == "buffer" and buffer is None:
            buffer = bytearray(self.span * self.page_size)
        kw = self.kwargs()
        if self.arena == "buffer":
            kw["buffer"] = buffer
        return cls(self.nr_pages, **kw), (buffer if self.arena == "buffer" else None)

    def replace(self, **changes: Any) -> Geometry:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """All fields, for JSON output; the cap under its constructor name ``max_order``."""
        return {
            "nr_pages": self.nr_pages,
            **self._keywords(),
            "links": self.links,
            "arena": self.arena,
            **({} if self.max_pages is None else {"max_pages": self.max_pages}),
            **dict(self.options),
        }


# -- messages both pools share ---------------------------------------------------------------------


def msg_outside(op: str, pfn: Any) -> str:
    """A pfn that is not one of the pool's pages."""
    return f"{op}: pfn {pfn} is outside the pool"


def msg_not_held(op: str, pfn: int, free_head: bool) -> str:
    """A page with refcount 0: a free block's head, or a tail page of a block."""
    what = "free page" if free_head else "tail page of a block"
    return f"{op}: pfn {pfn} is not held (refcount 0: {what})"


def msg_not_covered(op: str, pfn: int) -> str:
    """A page the pool does not cover: past its initial range and never admitted, or
    reclaimed."""
    return f"{op}: pfn {pfn} is not the pool's (never admitted, or reclaimed)"


def msg_cannot_admit(op: str, pfn: int, order: int, why: str) -> str:
    """``admit`` of a block the pool cannot take (``why``: the rule it breaks)."""
    return f"{op}: pfn {pfn} order {order} cannot be admitted: {why}"


def msg_below_floor(op: str, order: int, free_pages: int, floor: int) -> str:
    """A reclaim that would leave fewer than ``min_free_pages`` free pages."""
    return (
        f"{op}: cannot reclaim order {order}: {free_pages} free pages, floor min_free_pages {floor}"
    )


def msg_refcount_overflow(op: str, pfn: int) -> str:
    """``get_page`` on a page already at :data:`MAX_REFCOUNT`."""
    return f"{op}: pfn {pfn} refcount would overflow {MAX_REFCOUNT}"


def msg_bad_order(op: str, order: Any, orders: int) -> str:
    """An order outside 0 to ``max_order - 1``."""
    return f"{op}: order {order} is invalid: this pool has orders 0 to {orders - 1}"


def msg_out_of_memory(order: int, free_pages: int) -> str:
    """``alloc_pages`` with every list from ``order`` up empty."""
    return (
        f"alloc_pages: out of memory: no free block of order >= {order} (free pages: {free_pages})"
    )


def msg_bad_run(op: str, nr_pages: Any, max_pages: int) -> str:
    """An exact-size run of no pages, or of more than the largest block holds."""
    return f"{op}: nr_pages {nr_pages} is invalid: this pool's runs are 1 to {max_pages} pages"


def msg_exact_out_of_memory(nr_pages: int, order: int, free_pages: int) -> str:
    """``alloc_exact`` with no free block that holds the run."""
    return (
        f"alloc_exact: out of memory: no free block of order >= {order} for a run of "
        f"{nr_pages} pages (free pages: {free_pages})"
    )


#: What ``view`` raises (``TypeError``) on a pool without an arena.
MSG_NO_ARENA_VIEW = (
    "view: this pool has no arena (arena=False): its pages are numbers only, with no bytes to view"
)


def u64_array(obj: object) -> memoryview | None:
    """A memoryview of ``obj`` if it is a 1-D C-contiguous array of native 64-bit unsigned
    ints (``array('Q')``, numpy ``uint64``): the batch calls read and write those with no
    Python object per page. None for anything else (lists and tuples are not asked), which
    the batch calls read as an iterable."""
    if isinstance(obj, (list, tuple)):
        return None
    try:
        view = memoryview(obj)  # type: ignore[arg-type]
    except TypeError:
        return None
    code = view.format[1:] if view.format.startswith("@") else view.format
    if code in ("Q", "L") and view.itemsize == 8 and view.ndim == 1 and view.c_contiguous:
        return view
    view.release()
    return None


def msg_bad_out(op: str, out: object) -> str:
    """``alloc_many(..., out=...)`` given something it cannot write pfns into."""
    return (
        f"{op}: out must be a writable 1-D array of 64-bit unsigned ints (array('Q'), "
        f"numpy uint64), not {type(out).__name__}"
    )


def msg_short_out(op: str, length: int, count: int) -> str:
    """``alloc_many(..., out=...)`` with fewer items than blocks asked for."""
    return f"{op}: out holds {length} items, {count} requested"


def msg_batch_out_of_memory(count: Any, order: int, capacity: int) -> str:
    """``alloc_many`` asking for more blocks than the free lists hold."""
    return (
        f"alloc_many: out of memory: {count} blocks of order {order} requested, "
        f"{capacity} available"
    )


def msg_no_caches(op: str, cpu: int) -> str:
    """``cpu=`` given to a pool without per-CPU caches (built without ``cpus=N``)."""
    return (
        f"{op}: cpu={cpu} names a CPU slot, but this pool has no per-CPU caches "
        f"(build it with cpus=N to use slots)"
    )


def msg_closed(op: str) -> str:
    """Any call on a pool after ``close()``."""
    return f"{op}: the pool is closed: a closed pool takes no calls (build a new one)"


def msg_no_copy(cls: str) -> str:
    """``copy.copy``, ``copy.deepcopy`` or ``pickle`` of a pool."""
    return (
        f"{cls} cannot be copied or pickled: it owns its arena and its pages "
        f"(build a new pool with the same arguments)"
    )


def msg_already_built(cls: str) -> str:
    """``__init__`` called again on a pool."""
    return f"{cls}.__init__ called on a pool already built: a pool is built once"


def msg_no_subclass(cls: str) -> str:
    """A class statement deriving from a pool class."""
    return f"type {cls!r} is not an acceptable base type: wrap a pool rather than derive from it"
