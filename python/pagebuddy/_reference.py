"""Pure-Python reference model of the pagebuddy allocator (the oracle for differential tests).

This module spells out the pKVM ``hyp_pool`` policy (arch/arm64/kvm/hyp/nvhe/page_alloc.c)
with plain lists, written to be obviously right rather than fast:

* one FIFO free list per order; a block joins at the tail and ``alloc`` takes the head;
* ``attach`` (``__hyp_attach_page``): zero the freed block (zero policy ``"free"``), then
  merge it with its buddy ``pfn ^ (1 << order)`` while the buddy is a free head of the same
  order inside the pool and ``order + 1 < max_order``; the merged block joins the tail of its
  list;
* ``extract`` (``__hyp_extract_page``): take a block off its list and halve it down to the
  requested order, each upper half joining the tail of the list of its order.

It shares no code with the native ``pagebuddy.Pool`` and never imports it.
"""

from __future__ import annotations

import abc
import array
import mmap
import operator
import re
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, NoReturn, SupportsIndex, TypeVar, cast, overload

from . import _arenas, _frag, _rules
from ._errors import CorruptionError, OutOfMemory, PageError
from ._rules import LINK_STORES, MAX_REFCOUNT, ZERO_POLICIES

if TYPE_CHECKING:
    from typing_extensions import Buffer, Self

    _B = TypeVar("_B", bound=Buffer)

__all__ = ["ReferencePool"]


def _as_int(value: object, what: str) -> int:
    """Convert ``value`` with ``operator.index`` (as the native side does), else TypeError."""
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{what} must be an int, not {type(value).__name__}") from None


def _check_cpu(op: str, cpu: object) -> None:
    """A ``cpu=`` argument to a pool without caches: None, else TypeError for a non-int and
    ValueError for any int (a negative one is refused as such first)."""
    if cpu is None:
        return
    slot = _as_int(cpu, f"{op}: cpu")
    if slot < 0:
        raise ValueError(f"{op}: cpu must be >= 0, got {slot}")
    raise ValueError(_rules.msg_no_caches(op, slot))


def _as_choice(value: object, what: str, choices: tuple[str, ...]) -> str:
    """Check that ``value`` is one of the strings in ``choices``."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, choices))}, not {value!r}")
    return value


def _new_arena(size: int) -> memoryview:
    """``size`` zero bytes, as a private anonymous mapping where the platform has one: pages
    are committed when written, not before (a bytearray would commit them all at once)."""
    flags = {"flags": mmap.MAP_PRIVATE} if hasattr(mmap, "MAP_PRIVATE") else {}
    try:
        return memoryview(mmap.mmap(-1, size, **flags))
    except (OSError, OverflowError, ValueError) as e:
        raise MemoryError(f"cannot map an arena of {size} bytes: {e}") from None


def _all_zero(view: memoryview) -> bool:
    """Whether a flat byte view holds only zeros (compared a chunk at a time, in C)."""
    chunk = 1 << 20
    zeros = bytes(min(chunk, view.nbytes))
    for off in range(0, view.nbytes, chunk):
        part = view[off : off + chunk]
        if part != zeros[: part.nbytes]:
            return False
    return True


def _arena_from(buffer: object, size: int) -> memoryview:
    """A writable, flat byte view of the first ``size`` bytes of ``buffer`` (or a new arena).

    A refused buffer is released before raising, so it is not left exported (pinned).
    """
    if buffer is None:
        return _new_arena(size)
    try:
        view = memoryview(buffer)  # type: ignore[arg-type]
    except (TypeError, ValueError, BufferError):
        raise TypeError(
            f"buffer must support the buffer protocol, not {type(buffer).__name__}"
        ) from None
    with view:
        if view.readonly:
            raise TypeError("buffer must be writable")
        if not view.c_contiguous:
            raise TypeError("buffer must be C-contiguous")
        # 'O' items are object pointers (numpy object arrays): raw bytes must not go there.
        if "O" in re.sub(r":[^:]*:", "", view.format):
            raise TypeError("buffer holds Python objects")
        with view.cast("B") as raw:
            if raw.nbytes < size:
                raise ValueError(
                    f"buffer holds {raw.nbytes} bytes; nr_pages * page_size needs {size}"
                )
            return raw[:size]


#: ``zero`` not passed: ``"free"``, or ``"never"`` for a pool without an arena.
_DEFAULT_ZERO: Any = object()


# ABCMeta for `register` alone (the cached model is a virtual subclass): nothing is abstract.
class ReferencePool(metaclass=abc.ABCMeta):  # noqa: B024
    """Pure-Python model of a pKVM buddy page pool; same API and behaviour as ``pagebuddy.Pool``.

    Pages ``i in range(nr_pages)`` have pfn ``base_pfn + i`` and own bytes
    ``[i * page_size, (i + 1) * page_size)`` of the arena (``buffer``, or a zeroed anonymous
    mapping when ``buffer`` is None). A block of order ``k`` is ``2**k`` pages whose head
    pfn is a multiple of ``2**k``. Valid orders are 0 to ``max_order - 1`` with
    ``max_order = min(max_order argument, nr_pages.bit_length())``.

    The pool starts with every page held once (refcount 1, order 0); then every page from
    ``reserved_pages`` on is put, one by one in increasing pfn order. ``zero`` chooses when
    block contents are cleared: ``"free"`` (when a block is freed, as pKVM does), ``"alloc"``
    (when it is allocated) or ``"never"``. ``_links`` is accepted and recorded for parity with
    the native pool; link bytes in the arena are not modelled. ``arena=False`` makes a pool of
    page numbers only: no arena, ``zero="never"`` (the default then), links ``"side"``;
    ``view`` is a TypeError.

    ``cpus=N`` (N >= 1) models the pool with per-CPU caches: the constructor then returns a
    :class:`pagebuddy._cache.CachedReferencePool`, which is a ``ReferencePool`` for
    ``isinstance`` (a virtual subclass). With ``cpus=0`` (the default) there are no caches:
    a ``cpu=`` argument other than None is refused (ValueError), ``drain`` and ``drain_all``
    do nothing and ``cache_contents`` is empty, as on the native pool.

    ``close()`` (or leaving a ``with`` block) releases the arena at once; see :meth:`close`.

    Not thread-safe: share it between threads only under a lock of your own.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> ReferencePool:
        """``cpus=N`` with N other than 0: the cached pool's model."""
        try:
            exact = operator.index(kwargs.get("cpus", 0)) == 0
        except TypeError:
            exact = False
        if cls is ReferencePool and not exact:
            from ._cache import CachedReferencePool

            return cast(ReferencePool, CachedReferencePool(*args, **kwargs))
        return super().__new__(cls)

    def __init__(
        self,
        nr_pages: SupportsIndex,
        *,
        page_size: SupportsIndex = 4096,
        base_pfn: SupportsIndex = 0,
        reserved_pages: SupportsIndex = 0,
        max_order: SupportsIndex = 11,
        buffer: Buffer | None = None,
        zero: Literal["free", "alloc", "never"] = _DEFAULT_ZERO,
        _links: Literal["side", "intrusive"] = "side",
        arena: bool = True,
        cpus: SupportsIndex = 0,
        cache_batch: SupportsIndex | None = None,
        cache_high: SupportsIndex | None = None,
        max_pages: SupportsIndex | None = None,
    ) -> None:
        """Validate the arguments, then build the initial state (that of the sequential puts).

        ``max_pages`` (default ``nr_pages``): the pages the pool may ever cover, from
        ``base_pfn``; pages past ``nr_pages`` (the initial range, which may then be 0) are
        nobody's until admitted (:meth:`admit`). Metadata and arena are sized for all of them.

        The arguments are checked one after another in the order of the signature, each for
        its type and then its value, as ``Pool`` does. Int arguments go through
        ``operator.index`` (TypeError otherwise). ValueError unless
        ``1 <= nr_pages <= 2**32 - 2``, ``page_size`` is a power of two from 64 to ``2**30``,
        ``base_pfn >= 0`` with ``base_pfn + nr_pages <= 2**64``,
        ``0 <= reserved_pages <= nr_pages`` and ``max_order >= 1``. ``zero`` and ``_links``
        must be one of their strings (TypeError for a non-str). ``buffer`` must export a
        writable C-contiguous buffer (TypeError) of at least ``nr_pages * page_size`` bytes
        (ValueError); it stays exported, so a bytearray cannot be resized, while the pool or
        one of its views lives. A buffer overlapping the arena of a live pool (of either class)
        is refused with ValueError. Its owner must not free or resize it behind the pool's back
        (numpy's ``refcheck=False``) nor write into it but through views of held blocks while
        the pool or a view lives (README, "A buffer handed to a pool"). ``__init__`` builds a
        pool once: calling it again raises TypeError.
        """
        if hasattr(self, "_free_area"):
            raise TypeError(_rules.msg_already_built(type(self).__name__))

        nr_pages = _as_int(nr_pages, "nr_pages")
        span = nr_pages if max_pages is None else _as_int(max_pages, "max_pages")
        room = None if max_pages is None else span

        def checked(*ints: int) -> None:
            # The arguments not yet read at their defaults, which are valid.
            defaults = (1, 4096, 0, 0, 11)
            problem = _rules.geometry_problem(*ints, *defaults[len(ints) :], room)
            if problem:
                raise ValueError(problem)

        checked(nr_pages)
        page_size = _as_int(page_size, "page_size")
        checked(nr_pages, page_size)
        base_pfn = _as_int(base_pfn, "base_pfn")
        checked(nr_pages, page_size, base_pfn)
        reserved_pages = _as_int(reserved_pages, "reserved_pages")
        checked(nr_pages, page_size, base_pfn, reserved_pages)
        cap = _as_int(max_order, "max_order")
        checked(nr_pages, page_size, base_pfn, reserved_pages, cap)
        if not isinstance(arena, bool):
            raise TypeError(f"arena must be a bool, got {type(arena).__name__}")
        if zero is _DEFAULT_ZERO:
            zero = "free" if arena else "never"
        zero = cast(Literal["free", "alloc", "never"], _as_choice(zero, "zero", ZERO_POLICIES))
        links = _as_choice(_links, "_links", LINK_STORES)
        problem = _rules.arena_problem(arena, zero, links, buffer is not None)
        if problem:
            raise ValueError(problem)
        from ._cache import cache_problem

        batch = 16 if cache_batch is None else _as_int(cache_batch, "cache_batch")
        high = 64 if cache_high is None else _as_int(cache_high, "cache_high")
        problem = cache_problem(max(1, _as_int(cpus, "cpus")), batch, high)
        if problem:
            raise ValueError(problem)
        # Checked as a cached pool's would be, and otherwise unused: without caches the
        # settings read as the defaults, as on the native pool.
        del batch, high
        # The bytes behind the pages, or None for a pool of page numbers only.
        view = _arena_from(buffer, span * page_size) if arena else None
        if view is not None:
            try:
                # Before anything is written to it: a refused buffer is left as it was.
                self._claim = _arenas.claim(_arenas.address_of(view), view.nbytes, "ReferencePool")
            except ValueError:
                view.release()
                raise
        self._zero, self._links = zero, links

        self._nr_pages = nr_pages
        self._span = span
        self._min_free = 0
        self._page_size = page_size
        self._base_pfn = base_pfn
        self._reserved_pages = reserved_pages
        self._max_order = _rules.max_order(span, cap)
        self._arena: memoryview | None = view

        # Per-page metadata (index i is pfn base_pfn + i): refcount, and the order of the
        # block the page heads (None for a page that heads no block, a "tail").
        try:
            self._refcount: list[int] = [1] * span
            self._order: list[int | None] = [0] * span
            # Pages the pool does not cover: past the initial range until admitted, and
            # reclaimed ones (refcount 0, no order, in no block).
            self._absent: list[bool] = [False] * nr_pages + [True] * (span - nr_pages)
            # free_area[k]: the heads of the free blocks of order k, head of the list first.
            self._free_area: list[list[int]] = [[] for _ in range(self._max_order)]
            self._closed = False
            self._lay_out_free_blocks(fresh_arena=buffer is None)
        except MemoryError:
            raise MemoryError(f"cannot allocate metadata for {span} pages") from None

    def _put_every_free_page(self) -> None:
        """The definition of the initial state: put every non-reserved page, in pfn order.

        O(nr_pages) Python steps; :meth:`_lay_out_free_blocks` builds the same state in
        O(free blocks), and the tests check that the two agree.
        """
        for pfn in range(self._base_pfn + self._reserved_pages, self._base_pfn + self._nr_pages):
            self.put_page(pfn)

    def _lay_out_free_blocks(self, fresh_arena: bool) -> None:
        """The state of :meth:`_put_every_free_page`, built directly: the pages from
        ``reserved_pages`` on as the largest blocks that are aligned, fit before the end and
        are below ``max_order``, listed in increasing pfn order (a page merges upward exactly
        while its block stays so, and each block is listed when its last page is put), with
        their memory zeroed under ``zero="free"`` (a fresh arena already is)."""
        n, base, first = self._nr_pages, self._base_pfn, self._reserved_pages
        self._refcount[first:] = [0] * (self._span - first)
        self._order[first:] = [None] * (self._span - first)
        if self._zero == "free" and not fresh_arena:
            assert self._arena is not None
            ps, chunk = self._page_size, 1 << 20
            for off in range(first * ps, n * ps, chunk):
                end = min(off + chunk, n * ps)
                self._arena[off:end] = bytes(end - off)
        i = first
        while i < n:
            pfn = base + i
            align = (pfn & -pfn).bit_length() - 1 if pfn else self._max_order
            order = min(align, (n - i).bit_length() - 1, self._max_order - 1)
            self._order[i] = order
            self._free_area[order].append(pfn)
            i += 1 << order

    def __init_subclass__(cls, **kwargs: object) -> None:
        """Like ``Pool``, ReferencePool is not a base class (TypeError): wrap a pool instead."""
        raise TypeError(_rules.msg_no_subclass("ReferencePool"))

    def __copy__(self) -> NoReturn:
        """A pool owns its arena and its pages: it cannot be copied (TypeError), as ``Pool``."""
        raise TypeError(_rules.msg_no_copy(type(self).__name__))

    def __deepcopy__(self, memo: object) -> NoReturn:
        """As :meth:`__copy__`."""
        raise TypeError(_rules.msg_no_copy(type(self).__name__))

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        """A pool cannot be pickled (TypeError), as ``Pool``."""
        raise TypeError(_rules.msg_no_copy(type(self).__name__))

    # ---------------------------------------------------------------- closing

    def close(self) -> None:
        """Release the arena at once: the pool's hold on ``buffer`` (or its own mapping) and
        its claim on that memory end, so the owner may ``mmap.close()`` it or hand it to a new
        pool right away. Closing again does nothing.

        Afterwards every method, and ``free_pages``, raises ValueError saying the pool is
        closed; the geometry attributes, ``closed`` and ``repr`` still answer. A view handed
        out before stays valid and keeps the buffer exported until it is released (``del``,
        ``view.release()`` or ``with pool.view(pfn) as v:``); it is plain memory then, which
        no pool owns, as after the pool is collected.
        """
        if self._closed:
            return
        self._closed = True
        if self._arena is not None:
            self._arena.release()
        self.__dict__.pop("_claim", None)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def __enter__(self) -> Self:
        """``with ReferencePool(...) as pool:`` closes the pool at the end of the block."""
        if self._closed:
            raise ValueError(_rules.msg_closed("__enter__"))
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

    # ---------------------------------------------------------------- read-only attributes

    @property
    def nr_pages(self) -> int:
        """Number of pages in the pool."""
        return self._nr_pages

    @property
    def page_size(self) -> int:
        """Bytes per page (a power of two)."""
        return self._page_size

    @property
    def base_pfn(self) -> int:
        """Pfn of the first page of the pool."""
        return self._base_pfn

    @property
    def reserved_pages(self) -> int:
        """Number of leading pages that construction left held (refcount 1, order 0)."""
        return self._reserved_pages

    @property
    def max_order(self) -> int:
        """Effective number of orders: valid orders are 0 to ``max_order - 1``."""
        return self._max_order

    @property
    def zero(self) -> str:
        """The zeroing policy: ``"free"``, ``"alloc"`` or ``"never"``."""
        return self._zero

    @property
    def cpus(self) -> int:
        """CPU slots with page caches: 0 (``cpus=N`` gives a ``CachedReferencePool``)."""
        return 0

    @property
    def cache_batch(self) -> int:
        """16, the default: without caches the ``cache_batch`` argument is only checked."""
        return 16

    @property
    def cache_high(self) -> int:
        """64, the default: without caches the ``cache_high`` argument is only checked."""
        return 64

    @property
    def cache_auto(self) -> bool:
        """False: no caches to size."""
        return False

    @property
    def cache_bound(self) -> int | None:
        """None: no caches to bound."""
        return None

    def cache_sizes(self, cpu: SupportsIndex | None = None) -> tuple[int, int]:
        """``(cache_high, cache_batch)``, the defaults: no caches (``cpu`` is checked)."""
        _check_cpu("cache_sizes", cpu)
        return 64, 16

    def drain(self, cpu: SupportsIndex | None = None) -> None:
        """Nothing to give back: a pool without caches (``cpu`` other than None: ValueError)."""
        if self._closed:
            self._refuse("drain")
        _check_cpu("drain", cpu)

    def drain_all(self) -> None:
        """Nothing to give back: a pool without caches."""
        if self._closed:
            self._refuse("drain_all")

    def cache_contents(self, cpu: SupportsIndex | None = None) -> list[list[int]]:
        """No caches: an empty list (``cpu`` other than None: ValueError)."""
        if self._closed:
            self._refuse("cache_contents")
        _check_cpu("cache_contents", cpu)
        return []

    @property
    def free_pages(self) -> int:
        """Number of pages currently in free blocks."""
        if self._closed:
            self._refuse("free_pages")
        return sum(len(heads) << order for order, heads in enumerate(self._free_area))

    def buddyinfo(self) -> list[int]:
        """Free blocks per order from 0 to ``max_order - 1``, like a line of ``/proc/buddyinfo``."""
        if self._closed:
            self._refuse("buddyinfo")
        return [len(heads) for heads in self._free_area]

    def fragmentation(self) -> _frag.Fragmentation:
        """Free pages, the largest free order and Linux's ``extfrag_index`` per order, computed
        from :meth:`buddyinfo` as ``pagebuddy demo`` reports them
        (:class:`pagebuddy.Fragmentation`)."""
        if self._closed:
            self._refuse("fragmentation")
        return _frag.fragmentation(self.buddyinfo())

    def __repr__(self) -> str:
        """``ReferencePool(nr_pages=..., page_size=..., base_pfn=..., max_order=..., ...)``,
        ending in ``closed=True`` instead of ``free_pages=...`` once closed."""
        state = "closed=True" if self._closed else f"free_pages={self.free_pages}"
        room = f", max_pages={self._span}" if self._span != self._nr_pages else ""
        return (
            f"{type(self).__name__}(nr_pages={self._nr_pages}{room}, "
            f"page_size={self._page_size}, "
            f"base_pfn={self._base_pfn}, max_order={self._max_order}, zero={self._zero!r}, "
            f"{state})"
        )

    # ---------------------------------------------------------------- domain helpers

    def _index(self, pfn: int) -> int:
        """Metadata index of an in-pool pfn."""
        return pfn - self._base_pfn

    def _in_pool(self, pfn: int) -> bool:
        """Whether ``pfn`` has metadata: one of the ``max_pages`` pages the pool may cover."""
        return self._base_pfn <= pfn < self._base_pfn + self._span

    def _in_range(self, pfn: int) -> bool:
        """Whether ``pfn`` is in the initial range (mainline's ``[range_start, range_end)``),
        where blocks coalesce; pages past it are external, never coalesced."""
        return self._base_pfn <= pfn < self._base_pfn + self._nr_pages

    @staticmethod
    def _buddy(pfn: int, order: int) -> int:
        """The pfn of the buddy of the order-``order`` block headed by ``pfn``."""
        return pfn ^ (1 << order)

    def _block_bytes(self, pfn: int, order: int) -> slice:
        """Arena byte range of the order-``order`` block headed by ``pfn``."""
        start = self._index(pfn) * self._page_size
        return slice(start, start + (self._page_size << order))

    def _zero_block(self, pfn: int, order: int) -> None:
        """Fill the block with zero bytes."""
        assert self._arena is not None  # a pool without an arena never zeroes
        where = self._block_bytes(pfn, order)
        self._arena[where] = bytes(where.stop - where.start)

    def _is_free_head(self, pfn: int, order: int) -> bool:
        """pKVM ``__find_buddy_avail``: a page of the initial range, free, heading a block of
        ``order``."""
        if not self._in_range(pfn):
            return False
        i = self._index(pfn)
        return self._refcount[i] == 0 and self._order[i] == order

    def _attach(self, pfn: int) -> None:
        """pKVM ``__hyp_attach_page``: free the block headed by ``pfn`` and coalesce it."""
        order = self._order[self._index(pfn)]
        assert order is not None
        if self._zero == "free":
            self._zero_block(pfn, order)
        self._order[self._index(pfn)] = None
        # Mainline: an external block (past the initial range) is listed as it is.
        while order + 1 < self._max_order and self._in_range(pfn):
            buddy = self._buddy(pfn, order)
            if not self._is_free_head(buddy, order):
                break
            self._free_area[order].remove(buddy)
            self._order[self._index(buddy)] = None
            pfn = min(pfn, buddy)
            order += 1
        self._order[self._index(pfn)] = order
        self._free_area[order].append(pfn)

    def _extract(self, pfn: int, order: int) -> None:
        """pKVM ``__hyp_extract_page``: unlink the free block ``pfn``, halve it to ``order``."""
        i = self._index(pfn)
        block_order = self._order[i]
        assert block_order is not None
        self._free_area[block_order].remove(pfn)
        while block_order > order:
            block_order -= 1
            self._order[i] = block_order
            upper = self._buddy(pfn, block_order)
            self._order[self._index(upper)] = block_order
            self._free_area[block_order].append(upper)

    def _check_order(self, op: str, order: object) -> int:
        """Validate an order argument (TypeError / ValueError)."""
        order = _as_int(order, f"{op}: order")
        if not 0 <= order < self._max_order:
            raise ValueError(_rules.msg_bad_order(op, order, self._max_order))
        return order

    def _check_in_pool(self, op: str, pfn: int) -> int:
        """Metadata index of ``pfn``, or PageError when it is outside the pool."""
        if not self._in_pool(pfn):
            raise PageError(_rules.msg_outside(op, pfn))
        return self._index(pfn)

    def _check_held(self, op: str, pfn: int) -> int:
        """Metadata index of ``pfn``, or PageError unless it is in the pool and held."""
        i = self._check_in_pool(op, pfn)
        if self._refcount[i] == 0:
            if self._absent[i]:
                raise PageError(_rules.msg_not_covered(op, pfn))
            raise PageError(_rules.msg_not_held(op, pfn, self._order[i] is not None))
        return i

    def _alloc(self, order: int) -> int:
        """pKVM ``hyp_alloc_pages`` for a valid order: head of the first non-empty list."""
        for j in range(order, self._max_order):
            if self._free_area[j]:
                pfn = self._free_area[j][0]
                break
        else:
            raise OutOfMemory(_rules.msg_out_of_memory(order, self.free_pages))
        self._extract(pfn, order)
        self._refcount[self._index(pfn)] = 1
        if self._zero == "alloc":
            self._zero_block(pfn, order)
        return pfn

    def _put(self, op: str, pfn: object) -> None:
        """pKVM ``hyp_put_page``: drop one reference; the last one frees the block."""
        pfn = _as_int(pfn, f"{op}: pfn")
        i = self._check_held(op, pfn)
        self._refcount[i] -= 1
        if self._refcount[i] == 0:
            self._attach(pfn)

    # ---------------------------------------------------------------- public API

    def alloc_pages(self, order: SupportsIndex, *, cpu: SupportsIndex | None = None) -> int:
        """Allocate a block of ``2**order`` pages and return the pfn of its head page.

        The head of the first non-empty free list of order ``>= order`` is taken and split
        down to ``order``; each upper half joins the tail of the free list of its order. The
        head gets refcount 1. Raises TypeError if ``order`` is not an int, ValueError if it
        is not from 0 to ``max_order - 1``, OutOfMemory if no block is large enough.
        """
        if self._closed:
            self._refuse("alloc_pages")
        order = self._check_order("alloc_pages", order)
        _check_cpu("alloc_pages", cpu)
        return self._alloc(order)

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
        """Allocate ``count`` blocks of ``order``, all or nothing; return their head pfns.

        Equivalent to ``count`` successive ``alloc_pages(order)`` calls, except that when
        the free lists cannot supply all of them OutOfMemory is raised and nothing is
        allocated. ``order`` is validated first (TypeError / ValueError), then ``count``
        (TypeError if not an int, ValueError if negative), then ``out``. The pfns come back
        as a list, or, with ``out`` (a writable array of 64-bit unsigned ints of at least
        ``count`` items: TypeError / ValueError otherwise), in its first ``count`` items,
        and ``out`` is returned.
        """
        if self._closed:
            self._refuse("alloc_many")
        order = self._check_order("alloc_many", order)
        count = _as_int(count, "alloc_many: count")
        if count < 0:
            raise ValueError(f"alloc_many: count must be >= 0, not {count}")
        view = None if out is None else _rules.u64_array(out)
        if out is not None:
            if view is None or view.readonly:
                raise TypeError(_rules.msg_bad_out("alloc_many", out))
            if len(view) < count:
                raise ValueError(_rules.msg_short_out("alloc_many", len(view), count))
        _check_cpu("alloc_many", cpu)
        capacity = sum(
            len(self._free_area[j]) << (j - order) for j in range(order, self._max_order)
        )
        if count > capacity:
            raise OutOfMemory(_rules.msg_batch_out_of_memory(count, order, capacity))
        pfns = [self._alloc(order) for _ in range(count)]
        if view is None:
            return pfns
        with view, view.cast("B") as raw:
            raw[: 8 * count] = array.array("Q", pfns).tobytes()
        assert out is not None  # view is out's
        return out

    def alloc_exact(self, nr_pages: SupportsIndex) -> int:
        """Allocate a contiguous run of exactly ``nr_pages`` pages; return its first pfn.

        Linux's ``alloc_pages_exact``: the smallest block that holds the run is allocated as
        ``alloc_pages`` would, split into held order-0 pages (``split_page``), and each page
        past the run is put back in increasing pfn order (coalescing as puts do). Each page of
        the run is then held once and put on its own. Raises TypeError if ``nr_pages`` is not
        an int, ValueError unless ``1 <= nr_pages <= 2**(max_order - 1)``, OutOfMemory if no
        block that holds the run is free; nothing changes then.
        """
        if self._closed:
            self._refuse("alloc_exact")
        n = _as_int(nr_pages, "alloc_exact: nr_pages")
        largest = 1 << (self._max_order - 1)
        if not 1 <= n <= largest:
            raise ValueError(_rules.msg_bad_run("alloc_exact", n, largest))
        order = (n - 1).bit_length()
        if not any(self._free_area[order:]):
            raise OutOfMemory(_rules.msg_exact_out_of_memory(n, order, self.free_pages))
        pfn = self._alloc(order)
        self.split_page(pfn)
        for page in range(pfn + n, pfn + (1 << order)):
            self._put("alloc_exact", page)
        return pfn

    def get_page(self, pfn: SupportsIndex) -> None:
        """Take one more reference on the held page ``pfn``.

        Raises TypeError if ``pfn`` is not an int, PageError if it is outside the pool, not
        held, or its refcount is already 65535 (nothing changes then).
        """
        if self._closed:
            self._refuse("get_page")
        pfn = _as_int(pfn, "get_page: pfn")
        i = self._check_held("get_page", pfn)
        if self._refcount[i] == MAX_REFCOUNT:
            raise PageError(_rules.msg_refcount_overflow("get_page", pfn))
        self._refcount[i] += 1

    def put_page(self, pfn: SupportsIndex, *, cpu: SupportsIndex | None = None) -> None:
        """Drop one reference on the held page ``pfn``; the last one frees its block.

        A freed block is zeroed under ``zero="free"``, then merged with its free buddies and
        appended at the tail of the free list of the resulting order. Raises TypeError if
        ``pfn`` is not an int, PageError if it is outside the pool or not held.
        """
        if self._closed:
            self._refuse("put_page")
        pfn = _as_int(pfn, "put_page: pfn")
        if not 0 <= pfn < 1 << 64:
            raise PageError(_rules.msg_outside("put_page", pfn))
        _check_cpu("put_page", cpu)
        self._put("put_page", pfn)

    def put_many(
        self, pfns: Iterable[SupportsIndex] | Buffer, *, cpu: SupportsIndex | None = None
    ) -> None:
        """``put_page`` every pfn of ``pfns`` in order, all or nothing.

        All elements are converted first: a non-int raises TypeError. Then each is checked as
        ``put_page`` would find it after the ones before it (a page put more often than it is
        held fails at the extra put): the first that cannot be put raises PageError naming its
        index (``"put_many: pfns[3]: ..."``), and nothing is put.
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
        _check_cpu("put_many", cpu)
        dropped: dict[int, int] = {}
        for k, pfn in enumerate(converted):
            op = f"put_many: pfns[{k}]"
            i = self._check_in_pool(op, pfn)
            if self._absent[i]:
                raise PageError(_rules.msg_not_covered(op, pfn))
            if self._refcount[i] <= dropped.get(pfn, 0):
                raise PageError(_rules.msg_not_held(op, pfn, self._order[i] is not None))
            dropped[pfn] = dropped.get(pfn, 0) + 1
        for k, pfn in enumerate(converted):
            self._put(f"put_many: pfns[{k}]", pfn)

    def split_page(self, pfn: SupportsIndex) -> None:
        """Turn the held block headed by ``pfn`` into ``2**order`` held order-0 pages.

        The head keeps its refcount; every former tail page gets refcount 1. A no-op on an
        order-0 page. Raises TypeError if ``pfn`` is not an int, PageError if it is outside
        the pool or not held.
        """
        if self._closed:
            self._refuse("split_page")
        pfn = _as_int(pfn, "split_page: pfn")
        i = self._check_held("split_page", pfn)
        order = self._order[i]
        assert order is not None
        self._order[i] = 0
        for tail in range(i + 1, i + (1 << order)):
            self._refcount[tail] = 1
            self._order[tail] = 0

    def page_count(self, pfn: SupportsIndex) -> int:
        """The refcount of page ``pfn`` (0 for a free page or a tail page).

        Raises TypeError if ``pfn`` is not an int, PageError if it is outside the pool.
        """
        if self._closed:
            self._refuse("page_count")
        pfn = _as_int(pfn, "page_count: pfn")
        i = self._check_in_pool("page_count", pfn)
        if self._absent[i]:
            raise PageError(_rules.msg_not_covered("page_count", pfn))
        return self._refcount[i]

    def free_lists(self) -> list[list[int]]:
        """The head pfns of the free blocks, one list per order from 0 to ``max_order - 1``.

        Each list is in FIFO order: the block ``alloc_pages`` would take next comes first.
        """
        if self._closed:
            self._refuse("free_lists")
        return [list(heads) for heads in self._free_area]

    def view(self, pfn: SupportsIndex) -> memoryview:
        """A writable byte view of the held block headed by ``pfn``.

        It covers ``page_size << order`` bytes of the arena from offset
        ``(pfn - base_pfn) * page_size``, and keeps the arena alive after the pool is gone.
        Raises TypeError if ``pfn`` is not an int, PageError if it is outside the pool or not
        held.
        """
        if self._closed:
            self._refuse("view")
        if self._arena is None:
            raise TypeError(_rules.MSG_NO_ARENA_VIEW)
        pfn = _as_int(pfn, "view: pfn")
        i = self._check_held("view", pfn)
        order = self._order[i]
        assert order is not None
        return self._arena[self._block_bytes(pfn, order)]

    @property
    def arena(self) -> bool:
        """Whether the pool has an arena (False for ``arena=False``)."""
        return self._arena is not None

    # ---------------------------------------------------------------- grow and shrink

    @property
    def max_pages(self) -> int:
        """Pages the pool may ever cover, from ``base_pfn`` (``nr_pages`` unless given)."""
        return self._span

    @property
    def min_free_pages(self) -> int:
        """Android's ``min_free_pages``: the free pages :meth:`reclaim` leaves (allocation may
        use them). 0 unless set."""
        if self._closed:
            self._refuse("min_free_pages")
        return self._min_free

    def set_min_free_pages(self, pages: SupportsIndex) -> None:
        """Set :attr:`min_free_pages`: an int from 0 to ``2**32 - 1`` (ValueError otherwise)."""
        if self._closed:
            self._refuse("set_min_free_pages")
        pages = _as_int(pages, "set_min_free_pages: pages")
        if not 0 <= pages < 1 << 32:
            raise ValueError(
                f"set_min_free_pages: pages must be from 0 to {(1 << 32) - 1}, got {pages}"
            )
        self._min_free = pages

    def covers(self, pfn: SupportsIndex) -> bool:
        """Whether ``pfn`` is the pool's now: in its initial range or admitted, not reclaimed."""
        if self._closed:
            self._refuse("covers")
        pfn = _as_int(pfn, "covers: pfn")
        return self._in_pool(pfn) and not self._absent[self._index(pfn)]

    def admit(self, pfn: SupportsIndex, order: SupportsIndex) -> None:
        """Android pKVM's ``hyp_pool_admit``: add the free block of ``2**order`` pages at
        ``pfn``, which the pool does not cover, as one free block.

        Past the initial range the block is external (mainline's ``__hyp_attach_page``): listed
        at ``order``, never coalesced; inside it (a block reclaimed before) it coalesces as any
        free. Zeroed under ``zero="free"``. Checked in this order, nothing changed on refusal:
        ``pfn`` (TypeError; PageError outside the pool), ``order`` (TypeError, ValueError),
        then PageError for a block that is misaligned, runs past ``max_pages``, crosses the end
        of the initial range or overlaps a page the pool covers.
        """
        if self._closed:
            self._refuse("admit")
        pfn, order, i = self._check_admit(pfn, order)
        for j in range(i, i + (1 << order)):
            self._absent[j] = False
        self._order[i] = order
        self._attach(pfn)

    def _check_admit(self, pfn: object, order: object) -> tuple[int, int, int]:
        """``(pfn, order, index)`` of a block :meth:`admit` takes, or why not; reads only."""
        op = "admit"
        pfn = _as_int(pfn, f"{op}: pfn")
        if not 0 <= pfn < 1 << 64:
            raise PageError(_rules.msg_outside(op, pfn))
        order = self._check_order(op, order)
        i = self._check_in_pool(op, pfn)
        size, end = 1 << order, self._nr_pages
        if pfn % size:
            why = "the head is not aligned to the block's size"
        elif i + size > self._span:
            why = "the block runs past the pool's max_pages"
        elif i < end < i + size:
            why = "the block crosses the end of the initial range"
        else:
            covered = next((j for j in range(i, i + size) if not self._absent[j]), None)
            why = "" if covered is None else f"pfn {self._base_pfn + covered} is already the pool's"
        if why:
            raise PageError(_rules.msg_cannot_admit(op, pfn, order, why))
        return pfn, order, i

    def _reclaim_check(self, op: str, order: int, count: int) -> None:
        """OutOfMemory unless ``count`` reclaims of ``order`` can be made (``count`` blocks
        from the free lists, ``min_free_pages`` left)."""
        if count == 0:
            return
        capacity = sum(
            len(self._free_area[j]) << (j - order) for j in range(order, self._max_order)
        )
        if capacity < count:
            raise OutOfMemory(f"{op}: out of memory: no free block of order >= {order}")
        free = self.free_pages
        if free < self._min_free + (count << order):
            raise OutOfMemory(_rules.msg_below_floor(op, order, free, self._min_free))

    def _forget(self, pfn: int, order: int) -> None:
        """The block just taken off the free lists leaves the pool: nobody's."""
        i = self._index(pfn)
        for j in range(i, i + (1 << order)):
            self._refcount[j], self._order[j], self._absent[j] = 0, None, True

    def reclaim(self, order: SupportsIndex) -> int:
        """Take one free block of ``2**order`` pages out of the pool and return its pfn: the
        block :meth:`alloc_pages` would hand out (pKVM's own rule, deterministic). Its pages
        are no longer the pool's (every call on them is a PageError) until admitted again.

        Raises TypeError / ValueError for a bad order, OutOfMemory with no free block of that
        order or above, or when fewer than :attr:`min_free_pages` free pages would be left.
        """
        if self._closed:
            self._refuse("reclaim")
        order = self._check_order("reclaim", order)
        self._reclaim_check("reclaim", order, 1)
        pfn = self._alloc_unzeroed(order)
        self._forget(pfn, order)
        return pfn

    def reclaim_many(self, order: SupportsIndex, count: SupportsIndex) -> list[int]:
        """``count`` reclaims of ``order``, all or nothing; their pfns in the order taken."""
        if self._closed:
            self._refuse("reclaim_many")
        order = self._check_order("reclaim_many", order)
        count = _as_int(count, "reclaim_many: count")
        if count < 0:
            raise ValueError(f"reclaim_many: count must be >= 0, got {count}")
        self._reclaim_check("reclaim_many", order, count)
        pfns = [self._alloc_unzeroed(order) for _ in range(count)]
        for pfn in pfns:
            self._forget(pfn, order)
        return pfns

    def reclaimable(self, order: SupportsIndex) -> int:
        """Android's ``hyp_pool_reclaimable``: how many blocks of ``order`` reclaims could take
        one after another now, the floor respected."""
        if self._closed:
            self._refuse("reclaimable")
        order = self._check_order("reclaimable", order)
        capacity = sum(
            len(self._free_area[j]) << (j - order) for j in range(order, self._max_order)
        )
        return min(capacity, max(0, self.free_pages - self._min_free) >> order)

    def _alloc_unzeroed(self, order: int) -> int:
        """:meth:`_alloc`'s block, without the zeroing of ``zero="alloc"`` (the caller takes
        the bytes back)."""
        for j in range(order, self._max_order):
            if self._free_area[j]:
                pfn = self._free_area[j][0]
                break
        else:  # pragma: no cover - _reclaim_check rules it out
            raise OutOfMemory(_rules.msg_out_of_memory(order, self.free_pages))
        self._extract(pfn, order)
        return pfn

    def check(self) -> None:
        """Verify every invariant of the model's own state; raise CorruptionError if broken.

        Checked: metadata shapes and ranges; every free-list entry is an in-pool, aligned,
        free head of that list's order and appears once; every page lies in exactly one
        block (a free block, or a held block headed by a page with refcount > 0) and is its
        head or a tail (refcount 0, no order); no two free buddies of the same order are
        left uncoalesced below ``max_order - 1``; ``free_pages`` matches the blocks; under
        ``zero="free"`` all free memory reads as zero.
        """
        if self._closed:
            self._refuse("check")

        def fail(message: str) -> NoReturn:
            raise CorruptionError(f"check: {message}")

        n, base, end = self._span, self._base_pfn, self._nr_pages
        if len(self._refcount) != n or len(self._order) != n or len(self._absent) != n:
            fail(f"metadata arrays do not have {n} entries")
        if len(self._free_area) != self._max_order:
            fail(f"there are {len(self._free_area)} free lists, not {self._max_order}")
        if self._arena is not None and self._arena.nbytes != n * self._page_size:
            fail(f"arena is {self._arena.nbytes} bytes, not {n * self._page_size}")
        for i in range(n):
            refcount, order = self._refcount[i], self._order[i]
            if not 0 <= refcount <= MAX_REFCOUNT:
                fail(f"pfn {base + i} has refcount {refcount}")
            if order is not None and not 0 <= order < self._max_order:
                fail(f"pfn {base + i} has order {order} (orders are 0 to {self._max_order - 1})")
            if self._absent[i] and (refcount or order is not None):
                fail(f"pfn {base + i} is not the pool's but has refcount or order")

        free_heads: set[int] = set()
        for order, heads in enumerate(self._free_area):
            for pfn in heads:
                if not self._in_pool(pfn):
                    fail(f"free list {order} holds pfn {pfn}, outside the pool")
                if pfn in free_heads:
                    fail(f"pfn {pfn} is on the free lists twice")
                free_heads.add(pfn)
                i = self._index(pfn)
                if self._order[i] != order:
                    fail(f"free list {order} holds pfn {pfn} of order {self._order[i]}")
                if self._refcount[i] != 0:
                    fail(f"free list {order} holds pfn {pfn} with refcount {self._refcount[i]}")

        owner: list[int | None] = [None] * n  # head pfn of the block covering each page
        for i in range(n):
            order, pfn = self._order[i], base + i
            if order is None:
                continue
            if self._refcount[i] == 0 and pfn not in free_heads:
                fail(f"pfn {pfn} heads a free block of order {order} that is on no free list")
            if pfn % (1 << order) != 0:
                fail(f"pfn {pfn} heads a block of order {order} but is not aligned to it")
            if i + (1 << order) > n:
                fail(f"block of order {order} at pfn {pfn} runs past the end of the pool")
            if i < end < i + (1 << order):
                fail(f"block of order {order} at pfn {pfn} crosses the end of the initial range")
            for j in range(i, min(n, i + (1 << order))):
                if owner[j] is not None:
                    fail(f"pfn {base + j} lies in the blocks at pfns {owner[j]} and {pfn}")
                if self._absent[j]:
                    fail(f"pfn {base + j} inside the block at pfn {pfn} is not the pool's")
                if j != i and (self._refcount[j] != 0 or self._order[j] is not None):
                    fail(f"pfn {base + j} inside the block at pfn {pfn} is not a tail page")
                owner[j] = pfn
        for i in range(n):
            if owner[i] is None and not self._absent[i]:
                fail(f"pfn {base + i} belongs to no block")

        for pfn in free_heads:
            order = self._order[self._index(pfn)]
            assert order is not None
            buddy = self._buddy(pfn, order)
            # A buddy on the free lists with our order is free and heads a block like ours.
            buddy_free = buddy in free_heads and self._order[self._index(buddy)] == order
            # External blocks never merge; nor does one whose buddy is external.
            external = not (self._in_range(pfn) and self._in_range(buddy))
            if order + 1 < self._max_order and buddy_free and not external:
                fail(f"free buddies {pfn} and {buddy} of order {order} are not coalesced")

        in_free_blocks = sum(1 for i in range(n) if owner[i] in free_heads)
        if self.free_pages != in_free_blocks:
            fail(f"free lists count {self.free_pages} pages, free blocks hold {in_free_blocks}")

        if self._zero == "free" and self._arena is not None:
            for pfn in sorted(free_heads):
                order = self._order[self._index(pfn)]
                assert order is not None
                if not _all_zero(self._arena[self._block_bytes(pfn, order)]):
                    fail(f"free block of order {order} at pfn {pfn} is not zero")
