"""The arenas of live pools: each byte of memory belongs to at most one pool.

A pool owns its arena exclusively (the core's ``Arena::from_raw`` contract): it zeroes free
blocks and, with intrusive links, keeps its free lists in them. Two pools over the same bytes
would wipe and relink each other's pages, and since ``Pool``'s batch calls release the GIL,
from two threads under two locks. So ``Pool`` and ``ReferencePool`` both claim their arena
here before they write to it, and a pool whose memory overlaps the arena of a live pool,
whichever its class, is refused with ``ValueError`` and nothing is written. A claim ends when
its pool is collected; views a pool handed out may outlive it, and are then plain memory.
"""

from __future__ import annotations

import ctypes
import itertools
import threading

__all__ = ["Claim", "address_of", "claim"]

_lock = threading.Lock()
_live: dict[int, tuple[int, int, str]] = {}  # key -> (first byte, end, owner's class name)
_keys = itertools.count()


class Claim:
    """A live pool's hold on ``[start, end)``; released when the pool drops it."""

    __slots__ = ("_key",)

    def __init__(self, key: int) -> None:
        self._key = key

    def __del__(self) -> None:
        # No lock here: a collection may run this inside `claim`, which holds it. A dict pop
        # is atomic, and `claim` reads a snapshot.
        _live.pop(self._key, None)


def claim(start: int, length: int, owner: str) -> Claim:
    """Claim ``length`` bytes at address ``start`` for a pool of class ``owner``.

    Raises ValueError naming the live pool whose arena overlaps them.
    """
    end = start + length
    with _lock:
        for first, last, other in tuple(_live.values()):
            if start < last and first < end:
                raise ValueError(
                    f"buffer overlaps the arena of a live {other} (bytes {first:#x}..{last:#x} "
                    f"of memory; this buffer is {start:#x}..{end:#x}): two pools must not "
                    f"share memory, give each its own buffer"
                )
        key = next(_keys)
        _live[key] = (start, end, owner)
    return Claim(key)


def address_of(view: memoryview) -> int:
    """The address of the first byte of a writable, C-contiguous byte view."""
    pin = (ctypes.c_char * view.nbytes).from_buffer(view)
    try:
        return ctypes.addressof(pin)
    finally:
        del pin
