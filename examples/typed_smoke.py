"""Smoke test of an installed pagebuddy, written as typed user code.

CI runs it on every CPython present against the installed wheel or sdist, and checks it with
``mypy --strict`` against the package's stubs: both pools take the same arguments and answer the
same calls, so one function serves either.

    python examples/typed_smoke.py
"""

from __future__ import annotations

import sys

import pagebuddy
from pagebuddy import Fragmentation, OutOfMemory, PageError, Pool, ReferencePool

AnyPool = Pool | ReferencePool


def make(kind: type[Pool] | type[ReferencePool], buffer: bytearray | None) -> AnyPool:
    return kind(64, page_size=256, base_pfn=0x100, reserved_pages=1, buffer=buffer, zero="free")


def exercise(pool: AnyPool) -> list[int]:
    """Allocation, sharing, splitting, views, batches and errors; returns the pfns handed out."""
    seen: list[int] = []
    pfn = pool.alloc_pages(2)
    seen.append(pfn)
    view = pool.view(pfn)
    assert len(view) == 4 * pool.page_size
    view[:5] = b"hello"
    pool.get_page(pfn)
    assert pool.page_count(pfn) == 2
    pool.put_page(pfn)
    pool.put_page(pfn)  # last holder: zeroed and coalesced
    try:
        pool.put_page(pfn)
    except PageError as e:
        assert str(pfn) in str(e), e
    else:
        raise AssertionError("put of a free page was accepted")

    head = pool.alloc_pages(3)
    pool.split_page(head)
    for page in range(head, head + 8):
        pool.put_page(page)
    seen.append(head)

    pfns = pool.alloc_many(0, 10)
    seen.extend(pfns)
    pool.put_many(pfns)
    try:
        pool.alloc_many(pool.max_order - 1, 2)
    except OutOfMemory:
        pass
    else:
        raise AssertionError("two blocks of the top order fitted in a pool with a reserved page")
    pool.check()
    assert pool.free_pages == pool.nr_pages - pool.reserved_pages
    assert sum(len(heads) for heads in pool.free_lists()) > 0
    assert pool.buddyinfo() == [len(heads) for heads in pool.free_lists()]
    frag: Fragmentation = pool.fragmentation()
    assert frag.free_pages == pool.free_pages and frag.largest_free_order is not None
    return seen


def closing(kind: type[Pool] | type[ReferencePool]) -> None:
    """``with``: the buffer is let go at the end of the block, and the pool refuses calls."""
    buffer = bytearray(64 * 256)
    with make(kind, buffer) as pool:
        pool.put_page(pool.alloc_pages(0))
    assert pool.closed
    buffer.extend(b"x")  # resizable again: nothing exports it any more
    try:
        pool.alloc_pages(0)
    except ValueError as e:
        assert "the pool is closed" in str(e), e
    else:
        raise AssertionError("a closed pool allocated")


def cached(kind: type[Pool] | type[ReferencePool]) -> list[object]:
    """A pool with per-CPU caches (``cpus=2``): slots, LIFO reuse, drains; what it saw."""
    pool = kind(32, page_size=64, cpus=2, cache_batch=2, cache_high=4)
    pfn = pool.alloc_pages(0)  # this thread's slot, 0: refilled with 2 pages
    pool.put_page(pfn)
    assert pool.alloc_pages(0) == pfn  # the page just freed comes back first
    other = pool.alloc_many(0, 3, cpu=1)
    pool.put_many(other, cpu=1)
    seen: list[object] = [pfn, other, pool.cache_contents(0), pool.cache_contents(1)]
    pool.put_page(pfn)
    pool.drain_all()
    pool.check()
    assert pool.free_pages == pool.nr_pages and pool.cpus == 2
    return seen


def main() -> int:
    native = exercise(make(Pool, None))
    model = exercise(make(ReferencePool, bytearray(64 * 256)))
    assert native == model, (native, model)
    assert cached(Pool) == cached(ReferencePool)
    closing(Pool)
    closing(ReferencePool)
    print(
        f"pagebuddy {pagebuddy.__version__} on Python {sys.version.split()[0]}: "
        f"Pool and ReferencePool agree on {len(native)} allocations"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
