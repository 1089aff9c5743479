"""The arenas of live pools: each byte of memory belongs to at most one pool.

A pool owns its arena exclusively (the core's ``Arena::from_raw`` contract): it zeroes free
blocks and, with intrusive links, keeps its free lists in them. Two pools over the same bytes
would wipe and relink each other's pages, and since ``Pool``'s batch calls release the GIL,
from two threads under two locks. So ``Pool`` and ``ReferencePool`` both claim their arena
here before they write to it, and a pool whose memory overlaps the arena of a live pool,
whichever its class, is refused with ``ValueError`` and nothing is written. A claim ends when
its pool is collected; views a pool handed out may outlive it, and are then plain memory.

Shared pools claim their whole buffer too (``mode``): ``Pool.create_in`` formats it and is
refused over any part of a live pool's memory, shared or not (views of held blocks included,
since they lie inside it); ``Pool.attach`` opens a live shared pool's buffer, which is what
shared pools are for, and is refused only over other memory of a live pool.
"""

from __future__ import annotations

import collections
import ctypes
import itertools
import threading

__all__ = ["Claim", "address_of", "claim"]

_lock = threading.Lock()
# key -> (first byte, end, owner's class name, whether it is a shared pool's buffer); changed
# only by `claim`, under `_lock`.
_live: dict[int, tuple[int, int, str, bool]] = {}
# Keys of the claims released since `claim` last ran; `claim` drops them from `_live` first.
_released: collections.deque[int] = collections.deque()
_keys = itertools.count()


class Claim:
    """A live pool's hold on ``[start, end)``; released when the pool drops it."""

    __slots__ = ("_key",)

    def __init__(self, key: int) -> None:
        self._key = key

    def __del__(self) -> None:
        # Neither the lock nor `_live` here: a collection may run this inside `claim`, which
        # holds the lock and may be reading `_live` (a dict that changes size under a reader
        # makes it raise RuntimeError). A deque append is atomic; `claim` does the rest.
        _released.append(self._key)


def claim(start: int, length: int, owner: str, mode: str = "own") -> Claim:
    """Claim ``length`` bytes at address ``start`` for a pool of class ``owner``: ``mode`` is
    "own" (a pool's arena), "create" (a shared pool's buffer, formatted) or "attach" (a shared
    pool's buffer, opened: it may be exactly the buffer of live shared pools).

    Raises ValueError naming the live pool whose arena overlaps them.
    """
    end = start + length
    with _lock:
        # Claims released before this call go first: their memory may be this buffer's now.
        # One released while the loop runs (a collection inside it) stays until the next call;
        # its memory was still allocated when this buffer was, so it cannot overlap it.
        while _released:
            _live.pop(_released.popleft(), None)
        for first, last, other, shared in _live.values():
            if start < last and first < end:
                if mode == "attach" and shared and (first, last) == (start, end):
                    continue
                what = "buffer of a live shared" if shared else "arena of a live"
                raise ValueError(
                    f"buffer overlaps the {what} {other} (bytes {first:#x} to "
                    f"{last - 1:#x} of memory; this buffer is {start:#x} to {end - 1:#x}): two "
                    f"pools must not share memory, give each its own buffer"
                )
        key = next(_keys)
        _live[key] = (start, end, owner, mode != "own")
    return Claim(key)


def address_of(view: memoryview) -> int:
    """The address of the first byte of a writable, C-contiguous byte view."""
    pin = (ctypes.c_char * view.nbytes).from_buffer(view)
    try:
        return ctypes.addressof(pin)
    finally:
        del pin
