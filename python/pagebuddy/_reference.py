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

import array
import mmap
import operator
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal, NoReturn, SupportsIndex

from . import _arenas, _rules
from ._errors import CorruptionError, OutOfMemory, PageError
from ._rules import LINK_STORES, MAX_REFCOUNT, ZERO_POLICIES

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ["ReferencePool"]


def _as_int(value: object, what: str) -> int:
    """Convert ``value`` with ``operator.index`` (as the native side does), else TypeError."""
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{what} must be an int, not {type(value).__name__}") from None


def _check_cpu(op: str, cpu: object) -> None:
    """A ``cpu=`` argument: None, or an int >= 0 (TypeError / ValueError otherwise)."""
    if cpu is not None and (value := _as_int(cpu, f"{op}: cpu")) < 0:
        raise ValueError(f"{op}: cpu must be >= 0, got {value}")


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


class ReferencePool:
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
    :class:`pagebuddy._cache.CachedReferencePool`. With ``cpus=0`` (the default) there are no
    caches: ``cpu=`` arguments are checked and otherwise ignored, ``drain`` and ``drain_all``
    do nothing and ``cache_contents`` is empty, as on the native pool.

    Not thread-safe: share it between threads only under a lock of your own.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        """``cpus=N`` with N other than 0: the cached pool's model."""
        try:
            exact = operator.index(kwargs.get("cpus", 0)) == 0
        except TypeError:
            exact = False
        if cls is ReferencePool and not exact:
            from ._cache import CachedReferencePool

            return CachedReferencePool(*args, **kwargs)
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
        cache_batch: SupportsIndex = 16,
        cache_high: SupportsIndex = 64,
    ) -> None:
        """Validate the arguments, then build the initial state (that of the sequential puts).

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

        def checked(*ints: int) -> None:
            # The arguments not yet read at their defaults, which are valid.
            defaults = (1, 4096, 0, 0, 11)
            problem = _rules.geometry_problem(*ints, *defaults[len(ints) :])
            if problem:
                raise ValueError(problem)

        nr_pages = _as_int(nr_pages, "nr_pages")
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
        zero = _as_choice(zero, "zero", ZERO_POLICIES)
        links = _as_choice(_links, "_links", LINK_STORES)
        problem = _rules.arena_problem(arena, zero, links, buffer is not None)
        if problem:
            raise ValueError(problem)
        from ._cache import cache_problem

        batch, high = _as_int(cache_batch, "cache_batch"), _as_int(cache_high, "cache_high")
        problem = cache_problem(max(1, _as_int(cpus, "cpus")), batch, high)
        if problem:
            raise ValueError(problem)
        # Checked as a cached pool's would be, and otherwise unused: without caches the
        # settings read as the defaults, as on the native pool.
        del batch, high
        # The bytes behind the pages, or None for a pool of page numbers only.
        view = _arena_from(buffer, nr_pages * page_size) if arena else None
        if view is not None:
            try:
                # Before anything is written to it: a refused buffer is left as it was.
                self._claim = _arenas.claim(_arenas.address_of(view), view.nbytes, "ReferencePool")
            except ValueError:
                view.release()
                raise
        self._zero, self._links = zero, links

        self._nr_pages = nr_pages
        self._page_size = page_size
        self._base_pfn = base_pfn
        self._reserved_pages = reserved_pages
        self._max_order = _rules.max_order(nr_pages, cap)
        self._arena: memoryview | None = view

        # Per-page metadata (index i is pfn base_pfn + i): refcount, and the order of the
        # block the page heads (None for a page that heads no block, a "tail").
        try:
            self._refcount: list[int] = [1] * nr_pages
            self._order: list[int | None] = [0] * nr_pages
            # free_area[k]: the heads of the free blocks of order k, head of the list first.
            self._free_area: list[list[int]] = [[] for _ in range(self._max_order)]
            self._lay_out_free_blocks(fresh_arena=buffer is None)
        except MemoryError:
            raise MemoryError(f"cannot allocate metadata for {nr_pages} pages") from None

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
        self._refcount[first:] = [0] * (n - first)
        self._order[first:] = [None] * (n - first)
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

    def drain(self, cpu: SupportsIndex | None = None) -> None:
        """Nothing to give back: a pool without caches (``cpu`` is checked)."""
        _check_cpu("drain", cpu)

    def drain_all(self) -> None:
        """Nothing to give back: a pool without caches."""

    def cache_contents(self, cpu: SupportsIndex | None = None) -> list[list[int]]:
        """No caches: an empty list (``cpu`` is checked)."""
        _check_cpu("cache_contents", cpu)
        return []

    @property
    def free_pages(self) -> int:
        """Number of pages currently in free blocks."""
        return sum(len(heads) << order for order, heads in enumerate(self._free_area))

    def __repr__(self) -> str:
        """``ReferencePool(nr_pages=..., page_size=..., base_pfn=..., max_order=..., ...)``."""
        return (
            f"{type(self).__name__}(nr_pages={self._nr_pages}, page_size={self._page_size}, "
            f"base_pfn={self._base_pfn}, max_order={self._max_order}, zero={self._zero!r}, "
            f"free_pages={self.free_pages})"
        )

    # ---------------------------------------------------------------- domain helpers

    def _index(self, pfn: int) -> int:
        """Metadata index of an in-pool pfn."""
        return pfn - self._base_pfn

    def _in_pool(self, pfn: int) -> bool:
        """Whether ``pfn`` is one of this pool's pages."""
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
        """pKVM ``__find_buddy_avail``: an in-pool page, free, heading a block of ``order``."""
        if not self._in_pool(pfn):
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
        while order + 1 < self._max_order:
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
        order = self._check_order("alloc_pages", order)
        _check_cpu("alloc_pages", cpu)
        return self._alloc(order)

    def alloc_many(
        self,
        order: SupportsIndex,
        count: SupportsIndex,
        *,
        out: Buffer | None = None,
        cpu: SupportsIndex | None = None,
    ) -> Any:
        """Allocate ``count`` blocks of ``order``, all or nothing; return their head pfns.

        Equivalent to ``count`` successive ``alloc_pages(order)`` calls, except that when
        the free lists cannot supply all of them OutOfMemory is raised and nothing is
        allocated. ``order`` is validated first (TypeError / ValueError), then ``count``
        (TypeError if not an int, ValueError if negative), then ``out``. The pfns come back
        as a list, or, with ``out`` (a writable array of 64-bit unsigned ints of at least
        ``count`` items: TypeError / ValueError otherwise), in its first ``count`` items,
        and ``out`` is returned.
        """
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
        view = _rules.u64_array(pfns)
        if view is not None:
            with view:
                pfns = view.tolist()
        converted = [_as_int(pfn, f"put_many: pfns[{k}]") for k, pfn in enumerate(pfns)]
        _check_cpu("put_many", cpu)
        dropped: dict[int, int] = {}
        for k, pfn in enumerate(converted):
            op = f"put_many: pfns[{k}]"
            i = self._check_in_pool(op, pfn)
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
        pfn = _as_int(pfn, "page_count: pfn")
        return self._refcount[self._check_in_pool("page_count", pfn)]

    def free_lists(self) -> list[list[int]]:
        """The head pfns of the free blocks, one list per order from 0 to ``max_order - 1``.

        Each list is in FIFO order: the block ``alloc_pages`` would take next comes first.
        """
        return [list(heads) for heads in self._free_area]

    def view(self, pfn: SupportsIndex) -> memoryview:
        """A writable byte view of the held block headed by ``pfn``.

        It covers ``page_size << order`` bytes of the arena from offset
        ``(pfn - base_pfn) * page_size``, and keeps the arena alive after the pool is gone.
        Raises TypeError if ``pfn`` is not an int, PageError if it is outside the pool or not
        held.
        """
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

    def check(self) -> None:
        """Verify every invariant of the model's own state; raise CorruptionError if broken.

        Checked: metadata shapes and ranges; every free-list entry is an in-pool, aligned,
        free head of that list's order and appears once; every page lies in exactly one
        block (a free block, or a held block headed by a page with refcount > 0) and is its
        head or a tail (refcount 0, no order); no two free buddies of the same order are
        left uncoalesced below ``max_order - 1``; ``free_pages`` matches the blocks; under
        ``zero="free"`` all free memory reads as zero.
        """

        def fail(message: str) -> NoReturn:
            raise CorruptionError(f"check: {message}")

        n, base = self._nr_pages, self._base_pfn
        if len(self._refcount) != n or len(self._order) != n:
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
            for j in range(i, min(n, i + (1 << order))):
                if owner[j] is not None:
                    fail(f"pfn {base + j} lies in the blocks at pfns {owner[j]} and {pfn}")
                if j != i and (self._refcount[j] != 0 or self._order[j] is not None):
                    fail(f"pfn {base + j} inside the block at pfn {pfn} is not a tail page")
                owner[j] = pfn
        for i in range(n):
            if owner[i] is None:
                fail(f"pfn {base + i} belongs to no block")

        for pfn in free_heads:
            order = self._order[self._index(pfn)]
            assert order is not None
            buddy = self._buddy(pfn, order)
            # A buddy on the free lists with our order is free and heads a block like ours.
            buddy_free = buddy in free_heads and self._order[self._index(buddy)] == order
            if order + 1 < self._max_order and buddy_free:
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
