"""Fragmentation figures computed from free-block counts per order.

The input everywhere is ``free_blocks``: the number of free blocks of each order
(``[len(l) for l in pool.free_lists()]``), like a line of ``/proc/buddyinfo``.

External fragmentation index (Linux ``extfrag_index``)
------------------------------------------------------
:func:`extfrag_index` follows ``__fragmentation_index()`` in the kernel's
``mm/vmstat.c``, in the same integer arithmetic (thousandths). For a request of
order ``k``, with ``requested = 2**k``::

    F_blocks = sum(free_blocks)                       # free blocks of every order
    F_pages  = sum(n << j for j, n in enumerate(free_blocks))
    S        = sum(n << (j - k) for j, n in enumerate(free_blocks) if j >= k)

    if F_blocks == 0:  index = 0       (nothing free at all)
    elif S > 0:        index = -1000   (-1.000: the allocation would succeed)
    else:              index = 1000 - (1000 + F_pages * 1000 // requested) // F_blocks

that is ``1 - (1 + F_pages / requested) / F_blocks`` rounded down to thousandths.
Near 0 the request fails for lack of memory; near 1 it fails because the free
memory is fragmented into blocks too small for it. The kernel prints it as
``"%d.%03d" % (index // 1000, index % 1000)`` with C division (``-1.000``); so do
we.

Unusable free space index
-------------------------
:func:`unusable_index` follows ``unusable_free_index()`` in the same file: the
fraction of free pages that cannot be used for an order-``k`` request,
``(F_pages - S * 2**k) * 1000 // F_pages`` (1000 when nothing is free).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

__all__ = [
    "Fragmentation",
    "buddyinfo_line",
    "extfrag_index",
    "format_thousandths",
    "fragmentation",
    "free_pages",
    "largest_free_order",
    "unusable_index",
]


def free_pages(free_blocks: Sequence[int]) -> int:
    """Total free pages: ``sum(n << order)``."""
    return sum(n << j for j, n in enumerate(free_blocks))


def largest_free_order(free_blocks: Sequence[int]) -> int | None:
    """The highest order with a free block, or ``None`` if nothing is free."""
    for j in range(len(free_blocks) - 1, -1, -1):
        if free_blocks[j]:
            return j
    return None


def _suitable(free_blocks: Sequence[int], order: int) -> int:
    return sum(n << (j - order) for j, n in enumerate(free_blocks) if j >= order)


def extfrag_index(free_blocks: Sequence[int], order: int) -> int:
    """Linux ``extfrag_index`` for a request of ``order``, in thousandths (-1000 to 1000)."""
    total_blocks = sum(free_blocks)
    if total_blocks == 0:
        return 0
    if _suitable(free_blocks, order):
        return -1000
    requested = 1 << order
    return 1000 - (1000 + free_pages(free_blocks) * 1000 // requested) // total_blocks


def unusable_index(free_blocks: Sequence[int], order: int) -> int:
    """Linux ``unusable_index`` for a request of ``order``, in thousandths (0 to 1000)."""
    pages = free_pages(free_blocks)
    if pages == 0:
        return 1000
    return (pages - (_suitable(free_blocks, order) << order)) * 1000 // pages


def format_thousandths(value: int) -> str:
    """Format like the kernel's ``"%d.%03d"`` with C (truncating) division: -1000 -> ``-1.000``."""
    sign = "-" if value < 0 else ""
    whole, frac = divmod(abs(value), 1000)
    return f"{sign}{whole}.{frac:03d}"


def buddyinfo_line(free_blocks: Sequence[int], name: str = "pagebuddy") -> str:
    """A ``/proc/buddyinfo``-style line: ``Node 0, zone pagebuddy  3  1  0 ...``."""
    return f"Node 0, zone {name:>9} " + " ".join(f"{n:6d}" for n in free_blocks)


class Fragmentation(NamedTuple):
    """What ``pool.fragmentation()`` returns: the figures of one ``buddyinfo()`` line.

    ``extfrag_index[k]`` is Linux's ``extfrag_index`` for a request of order ``k``, as the
    kernel prints it (``/sys/kernel/debug/extfrag/extfrag_index``) and the command reports
    it: ``-1.0`` where the request would succeed, else a value in thousandths between 0
    (it fails for lack of free memory) and 1 (it fails because free memory is fragmented).
    """

    #: Pages in the free blocks counted.
    free_pages: int
    #: The highest order with a free block, or None when nothing is free.
    largest_free_order: int | None
    #: One value per order, from 0 to ``max_order - 1``.
    extfrag_index: tuple[float, ...]


Fragmentation.__module__ = "pagebuddy"  # where users import it from


def fragmentation(free_blocks: Sequence[int]) -> Fragmentation:
    """The :class:`Fragmentation` figures of ``free_blocks`` (free blocks per order)."""
    return Fragmentation(
        free_pages(free_blocks),
        largest_free_order(free_blocks),
        tuple(extfrag_index(free_blocks, k) / 1000 for k in range(len(free_blocks))),
    )
