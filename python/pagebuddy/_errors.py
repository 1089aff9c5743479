"""Exceptions raised by :class:`pagebuddy.Pool` and :class:`pagebuddy.ReferencePool`.

Each one derives from the built-in exception a caller would naturally catch, so code
that already handles ``ValueError`` or ``MemoryError`` keeps working. A call that
raises any of these leaves the pool exactly as it was (the batch calls ``alloc_many`` and
``put_many`` included: they do the whole batch or nothing).

Each class names the package as its module (``__module__ = "pagebuddy"``), where users import
it from: tracebacks, reprs and pickles say ``pagebuddy.OutOfMemory``.
"""

from __future__ import annotations

__all__ = ["CorruptionError", "OutOfMemory", "PageError"]


class PageError(ValueError):
    """A pfn was rejected by ``get_page``, ``put_page``, ``split_page``, ``view`` ...

    Raised when the pfn lies outside the pool, when the page is not held (a free page,
    the tail page of a block, or a second put of the same reference), or when taking
    one more reference would overflow the 16-bit refcount (65535).
    """

    __module__ = "pagebuddy"


class OutOfMemory(MemoryError):
    """No free block of a large enough order is available.

    ``alloc_pages`` raises it when every free list from the requested order up is
    empty; ``alloc_many`` raises it (allocating nothing) when the free lists cannot
    supply the whole batch.
    """

    __module__ = "pagebuddy"


class CorruptionError(RuntimeError):
    """``check()`` found an allocator invariant broken.

    The message names the invariant and the page or list where it failed. Seeing this
    means the metadata or the free lists are inconsistent, typically because the arena
    was written through a stale view of a freed block.
    """

    __module__ = "pagebuddy"
