"""The model of the ``buddy`` level of ``pagebuddy conform``: any buddy allocator.

:class:`BuddyModel` keeps pagebuddy's rules (blocks of ``2**order`` pages aligned to their
size, refcounts, split, coalescing on free exactly as pKVM's ``__hyp_attach_page`` merges)
but not pKVM's choice of block: where ``ReferencePool`` allocates the head of the first
non-empty free list, :class:`BuddyModel` takes the block the implementation chose (read from
the :class:`~pagebuddy._conform_targets.Channel` its twin in the lockstep pair writes) and
checks that the choice is legal: a pfn of the pool, aligned to the order, every page of the
block free. An illegal answer raises :class:`IllegalAnswer`, which the engine reports as a
divergence. When the implementation refuses, the model allocates on its own (the block
``ReferencePool`` would take), so a refusal while a block of the order is free is a
divergence too.

Free lists are sets here: :meth:`BuddyModel.free_lists` gives each order's blocks sorted,
and so does the implementation's side, so comparing them checks conservation and complete
coalescing (a set of free pages has one decomposition into coalesced blocks) without the
order of the lists.
"""

from __future__ import annotations

from typing import Any

from . import _rules
from ._conform_targets import Channel
from ._errors import OutOfMemory, PageError
from ._rules import MAX_REFCOUNT

__all__ = ["BuddyModel", "IllegalAnswer"]


class IllegalAnswer(Exception):
    """The implementation allocated a block no buddy allocator may hand out now: the block of
    ``pfn``."""

    def __init__(self, message: str, pfn: Any) -> None:
        super().__init__(message)
        self.pfn = pfn


class BuddyModel:
    """A buddy allocator's rules, following the implementation's choice of blocks.

    Takes ``ReferencePool``'s constructor keywords (those of the geometries conform draws:
    an owned arena or none) and ``channel``, where the implementation's last ``alloc``
    outcome is read.
    """

    cpus, cache_batch, cache_high = 0, 16, 64

    def __init__(
        self,
        nr_pages: int,
        *,
        page_size: int,
        base_pfn: int,
        reserved_pages: int,
        max_order: int,
        zero: str,
        channel: Channel,
        arena: bool = True,
    ) -> None:
        problem = _rules.geometry_problem(nr_pages, page_size, base_pfn, reserved_pages, max_order)
        if problem:
            raise ValueError(problem)
        self.nr_pages, self.page_size, self.base_pfn = nr_pages, page_size, base_pfn
        self.reserved_pages, self.zero = reserved_pages, zero
        self.max_order = _rules.max_order(nr_pages, max_order)
        self._channel = channel
        self._arena = bytearray(nr_pages * page_size) if arena else None
        self._ref = [1] * nr_pages
        # The order of the block each page heads; None for a page inside a block.
        self._order: list[int | None] = [0] * nr_pages
        self._free: list[set[int]] = [set() for _ in range(self.max_order)]
        i = reserved_pages
        while i < nr_pages:  # the layout of putting every page in turn (ReferencePool's)
            pfn = base_pfn + i
            align = (pfn & -pfn).bit_length() - 1 if pfn else self.max_order
            order = min(align, (nr_pages - i).bit_length() - 1, self.max_order - 1)
            self._ref[i], self._order[i] = 0, order
            self._order[i + 1 : i + (1 << order)] = [None] * ((1 << order) - 1)
            self._ref[i + 1 : i + (1 << order)] = [0] * ((1 << order) - 1)
            self._free[order].add(pfn)
            i += 1 << order

    # -- state ------------------------------------------------------------------------------------

    @property
    def free_pages(self) -> int:
        """Pages in free blocks."""
        return sum(len(s) << k for k, s in enumerate(self._free))

    def free_lists(self) -> list[list[int]]:
        """Each order's free blocks, sorted."""
        return [sorted(s) for s in self._free]

    def page_count(self, pfn: int) -> int:
        """The refcount of ``pfn`` (PageError outside the pool)."""
        return self._ref[self._index("page_count", pfn)]

    def view(self, pfn: int) -> memoryview:
        """The bytes of the held block at ``pfn``."""
        if self._arena is None:
            raise TypeError(_rules.MSG_NO_ARENA_VIEW)
        i = self._held("view", pfn)
        order = self._order[i] or 0
        start = i * self.page_size
        return memoryview(self._arena)[start : start + (self.page_size << order)]

    def check(self) -> None:
        """Nothing beyond what every operation checks."""

    # -- helpers ----------------------------------------------------------------------------------

    def _index(self, op: str, pfn: int) -> int:
        if not self.base_pfn <= pfn < self.base_pfn + self.nr_pages:
            raise PageError(_rules.msg_outside(op, pfn))
        return pfn - self.base_pfn

    def _held(self, op: str, pfn: int) -> int:
        i = self._index(op, pfn)
        if self._ref[i] == 0:
            raise PageError(_rules.msg_not_held(op, pfn, self._order[i] is not None))
        return i

    def _zero(self, pfn: int, order: int) -> None:
        if self._arena is not None:
            start = (pfn - self.base_pfn) * self.page_size
            self._arena[start : start + (self.page_size << order)] = bytes(self.page_size << order)

    def _containing(self, pfn: int, order: int) -> tuple[int, int] | None:
        """The free block ``(head, order)`` that holds the block of ``order`` at ``pfn``."""
        for k in range(order, self.max_order):
            head = pfn & ~((1 << k) - 1)
            if head in self._free[k]:
                return head, k
        return None

    def _illegal(self, pfn: Any, order: int) -> str | None:
        """Why the block of ``order`` at ``pfn`` may not be handed out now, or None."""
        if not isinstance(pfn, int):
            return f"pfn {pfn!r} is not a page frame number"
        last = self.base_pfn + self.nr_pages - 1
        if not self.base_pfn <= pfn <= last:
            return f"pfn {pfn} is outside the pool (pfns {self.base_pfn}..{last})"
        if pfn % (1 << order):
            return f"pfn {pfn} is not aligned to a block of order {order} ({1 << order} pages)"
        if pfn + (1 << order) - 1 > last:
            return f"the block of order {order} at pfn {pfn} runs past the end of the pool"
        if self._containing(pfn, order) is None:
            held = [p for p in range(pfn, pfn + (1 << order)) if self._ref[p - self.base_pfn]]
            what = f"page {held[0]} is held" if held else "not all of its pages are free"
            return f"the block of order {order} at pfn {pfn} is not free: {what}"
        return None

    def _take(self, pfn: int, order: int) -> None:
        """Carve the block of ``order`` at ``pfn`` out of the free block holding it."""
        found = self._containing(pfn, order)
        assert found is not None
        head, k = found
        self._free[k].discard(head)
        while k > order:
            k -= 1
            upper = head + (1 << k)
            keep, other = (upper, head) if pfn >= upper else (head, upper)
            self._order[other - self.base_pfn] = k
            self._free[k].add(other)
            head = keep
        i = pfn - self.base_pfn
        self._order[i], self._ref[i] = order, 1
        if self.zero == "alloc":
            self._zero(pfn, order)

    # -- operations -------------------------------------------------------------------------------

    def alloc_pages(self, order: int) -> int:
        """The implementation's block, if legal (:class:`IllegalAnswer` otherwise); when it
        refused, the model's own (OutOfMemory if there is none)."""
        if not 0 <= order < self.max_order:
            raise ValueError(_rules.msg_bad_order("alloc_pages", order, self.max_order))
        pfn, refused = self._channel.alloc
        if refused is None:
            problem = self._illegal(pfn, order)
            if problem:
                raise IllegalAnswer(f"alloc_pages: order {order}: {problem}", pfn)
            assert pfn is not None
        else:
            k = next((k for k in range(order, self.max_order) if self._free[k]), None)
            if k is None:
                raise OutOfMemory(_rules.msg_out_of_memory(order, self.free_pages))
            pfn = min(self._free[k])
        self._take(pfn, order)
        return pfn

    def put_page(self, pfn: int) -> None:
        """Drop a reference; the last one frees the block and coalesces it (pKVM's rule)."""
        i = self._held("put_page", pfn)
        self._ref[i] -= 1
        if self._ref[i]:
            return
        order = self._order[i]
        assert order is not None
        if self.zero == "free":
            self._zero(pfn, order)
        self._order[i] = None
        while order + 1 < self.max_order:
            buddy = pfn ^ (1 << order)
            if buddy not in self._free[order]:
                break
            self._free[order].discard(buddy)
            self._order[buddy - self.base_pfn] = None
            pfn, order = min(pfn, buddy), order + 1
        self._order[pfn - self.base_pfn] = order
        self._free[order].add(pfn)

    def get_page(self, pfn: int) -> None:
        """One more reference (PageError past :data:`MAX_REFCOUNT`)."""
        i = self._held("get_page", pfn)
        if self._ref[i] == MAX_REFCOUNT:
            raise PageError(_rules.msg_refcount_overflow("get_page", pfn))
        self._ref[i] += 1

    def split_page(self, pfn: int) -> None:
        """The held block at ``pfn`` as held order-0 pages."""
        i = self._held("split_page", pfn)
        order = self._order[i] or 0
        self._order[i : i + (1 << order)] = [0] * (1 << order)
        self._ref[i + 1 : i + (1 << order)] = [1] * ((1 << order) - 1)

    def _not_in_abi(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("the conform ABI has no batch calls and no per-CPU caches")

    alloc_many = put_many = alloc_exact = drain = _not_in_abi
