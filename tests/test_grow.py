"""Pools that grow and shrink: ``admit``, ``reclaim``, ``reclaim_many``, ``reclaimable`` and the
``min_free_pages`` floor, on plain, cached and shared pools, native and model alike.

The differential state machines (``test_differential.py``, ``test_cached.py``) and ``pagebuddy
fuzz --grow`` drive these calls at random in lockstep with the model; this file spells out the
rules: mainline's external blocks (listed at their order, never merged), the block a reclaim
takes, the floor, and misuse refused with the state unchanged.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from multiprocessing import shared_memory
from typing import Any

import pytest

from pagebuddy import OutOfMemory, PageError, Pool, ReferencePool
from pagebuddy._shared import held_pages, lock_holder, pool_bytes
from support import run_cli

POOLS = [Pool, ReferencePool]


def state(pool: Any) -> tuple[Any, ...]:
    """Everything a call could change: free lists, counts, coverage, caches, the floor."""
    pfns = range(pool.base_pfn, pool.base_pfn + pool.max_pages)
    covered = [p for p in pfns if pool.covers(p)]
    caches = [pool.cache_contents(cpu) for cpu in range(pool.cpus)]
    counts = [pool.page_count(p) for p in covered]
    return (pool.free_lists(), pool.free_pages, covered, counts, caches, pool.min_free_pages)


@pytest.mark.parametrize("cls", POOLS)
def test_empty_pool_grown_by_order_zero_admits_serves_as_mainline_external_pages(cls: Any) -> None:
    """Android's hyp_pool_init_empty, then hyp_pool_admit of single pages: every page is
    external, so it is listed at order 0 and never coalesced with its free buddy (mainline's
    __hyp_attach_page), while allocation takes list heads FIFO as ever."""
    pool = cls(0, max_pages=8, page_size=64)
    assert (pool.nr_pages, pool.max_pages, pool.max_order, pool.free_pages) == (0, 8, 4, 0)
    for pfn in (5, 4, 0, 1, 2, 3, 6, 7):
        pool.admit(pfn, 0)
    # Four buddy pairs, all free, none merged.
    assert pool.free_lists() == [[5, 4, 0, 1, 2, 3, 6, 7], [], [], []]
    with pytest.raises(OutOfMemory):
        pool.alloc_pages(1)  # eight free pages, no block of two
    assert [pool.alloc_pages(0) for _ in range(4)] == [5, 4, 0, 1]
    for pfn in (4, 5, 1, 0):
        pool.put_page(pfn)  # each to the tail of list 0, its buddy free beside it
    assert pool.free_lists() == [[2, 3, 6, 7, 4, 5, 1, 0], [], [], []]
    # An order-1 block admitted past the range splits, and its halves never merge back.
    grown = cls(0, max_pages=16, page_size=64)
    grown.admit(8, 1)
    assert grown.alloc_pages(0) == 8
    grown.put_page(8)
    assert grown.free_lists() == [[9, 8], [], [], [], []]
    pool.check()
    grown.check()


@pytest.mark.parametrize("cls", POOLS)
def test_reclaim_takes_the_block_alloc_would_and_its_pages_are_nobodys(cls: Any) -> None:
    pool, twin = cls(37, base_pfn=5, page_size=64), cls(37, base_pfn=5, page_size=64)
    for order in (3, 0, 1, 0):
        assert pool.reclaim(order) == twin.alloc_pages(order)
    assert pool.free_lists() == twin.free_lists()
    assert pool.reclaim_many(0, 3) == [twin.alloc_pages(0) for _ in range(3)]
    assert pool.free_lists() == twin.free_lists()
    # pfns 8-15 were the first reclaim: every call on them is a PageError naming the pfn.
    for call in (pool.put_page, pool.get_page, pool.split_page, pool.page_count, pool.view):
        with pytest.raises(PageError, match=r"pfn 9 is not the pool's"):
            call(9)
    assert not pool.covers(9) and pool.covers(16)
    pool.admit(8, 3)  # back, and coalesced as a block of the initial range
    assert pool.covers(9)
    pool.check()


@pytest.mark.parametrize("cls", POOLS)
def test_floor_stops_reclaim_not_allocation(cls: Any) -> None:
    pool = cls(16, page_size=64, zero="never", arena=False)
    assert pool.reclaimable(2) == 4
    pool.set_min_free_pages(10)
    assert (pool.min_free_pages, pool.reclaimable(0), pool.reclaimable(2)) == (10, 6, 1)
    assert pool.reclaim_many(0, 6) == [0, 1, 2, 3, 4, 5]
    with pytest.raises(OutOfMemory, match="floor min_free_pages 10"):
        pool.reclaim(0)
    assert pool.alloc_pages(3) == 8  # allocation may use the floor up
    assert pool.free_pages == 2
    pool.check()


@pytest.mark.parametrize("cls", POOLS)
@pytest.mark.parametrize("cpus", [0, 2])
def test_misuse_is_refused_with_the_state_unchanged(cls: Any, cpus: int) -> None:
    pool = cls(6, max_pages=14, base_pfn=16, page_size=64, cpus=cpus)
    pool.admit(24, 1)
    held = pool.alloc_pages(0)
    pool.put_page(pool.alloc_pages(0))  # something in the caches of a cached pool
    before = state(pool)
    refused = [
        (PageError, "admit", (25, 1), "pfn 25 order 1 cannot be admitted: the head is not"),
        (PageError, "admit", (20, 2), "crosses the end of the initial range"),
        (PageError, "admit", (24, 2), "pfn 24 is already the pool's"),
        (PageError, "admit", (held, 0), f"pfn {held} is already the pool's"),
        (PageError, "admit", (32, 0), "pfn 32 is outside the pool"),
        (PageError, "admit", (-1, 0), "pfn -1 is outside the pool"),
        (PageError, "admit", (24, 3), "runs past the pool's max_pages"),
        (ValueError, "admit", (26, 5), "order 5 is invalid"),
        (TypeError, "admit", ("26", 0), "pfn"),
        (ValueError, "reclaim", (-1,), "order -1 is invalid"),
        (ValueError, "reclaim_many", (0, -1), "count must be >= 0"),
        (ValueError, "reclaimable", (9,), "order 9 is invalid"),
        (ValueError, "set_min_free_pages", (-1,), "pages must be from 0"),
        (TypeError, "set_min_free_pages", (1.5,), "pages"),
    ]
    for exc, method, args, text in refused:
        with pytest.raises(exc, match=text):
            getattr(pool, method)(*args)
        assert state(pool) == before, (method, args)
    pool.check()


@pytest.mark.parametrize("cls", POOLS)
def test_cached_pools_drain_before_they_grow_or_shrink(cls: Any) -> None:
    pool = cls(16, max_pages=24, page_size=64, cpus=2, cache_batch=2, cache_high=4)
    plain = cls(16, max_pages=24, page_size=64)
    pfn = pool.alloc_pages(0, cpu=0)
    pool.put_page(pfn, cpu=0)
    assert any(pool.cache_contents(0))
    # The reclaim sees every free page: the caches go back first, then alloc_pages' block.
    assert pool.reclaim(0) == plain.reclaim(0)
    assert not any(pool.cache_contents(0)) and pool.free_lists() == plain.free_lists()
    pool.admit(16, 3)
    plain.admit(16, 3)
    assert pool.free_lists() == plain.free_lists()
    pool.check()


def test_arena_room_holds_admitted_blocks_and_they_are_zeroed() -> None:
    """The arena spans max_pages: a block admitted past the initial range has its bytes
    there, zeroed under zero='free' as a freed block is; a reclaimed block's bytes are the
    caller's (no view: the pool no longer covers them)."""
    buf = bytearray(b"\xaa" * (16 * 64))
    pool = Pool(8, max_pages=16, page_size=64, buffer=buf)
    assert bytes(buf[8 * 64 :]) == b"\xaa" * (8 * 64)  # not the pool's yet: untouched
    pool.admit(8, 3)
    assert bytes(buf[8 * 64 :]) == bytes(8 * 64)
    pfn = pool.reclaim(3)
    assert pfn == 0
    buf[:64] = b"\x55" * 64  # the caller's now
    pool.admit(0, 3)
    assert bytes(buf[:64]) == bytes(64)
    pool.check()


def test_shared_pools_grow_and_shrink_and_another_handle_sees_it() -> None:
    buf = bytearray(1 << 16)
    pool = Pool.create_in(buf, page_size=4096, max_order=5)
    other = Pool.attach(buf)
    before = state(other)
    pfn = pool.reclaim(2)
    assert not other.covers(pfn) and other.free_pages == before[1] - 4
    with pytest.raises(PageError, match=f"pfn {pfn} is not the pool's"):
        other.put_page(pfn)
    assert pfn == 8
    with pytest.raises(PageError, match="pfn 0 is already the pool's"):
        other.admit(0, 3)
    other.admit(pfn, 2)
    assert state(pool) == before
    pool.check()


def _grow_child(name: str, crash_at: int) -> None:
    """Reclaims and admits on a shared pool, killed (SIGKILL) at crash point ``crash_at``; exits
    0 if the sequence ends first."""
    from pagebuddy._native import _crash_after

    shm = shared_memory.SharedMemory(name=name)
    pool = Pool.attach(shm.buf)
    _crash_after(crash_at)
    big = pool.reclaim(2)
    one = pool.reclaim(0)
    pool.admit(big, 2)
    pages = pool.reclaim_many(0, 3)
    for pfn in pages:
        pool.admit(pfn, 0)
    pool.admit(one, 0)
    _crash_after(0)
    os._exit(0)


@pytest.mark.parametrize("links", ["side", "intrusive"])
def test_shared_admit_and_reclaim_are_journaled_at_every_crash_point(links: str) -> None:
    """A child killed at each crash point in turn of a sequence of reclaims and admits: the pool
    it leaves passes check() once recovered, and every page is free or not the pool's (the
    child holds none), none lost and none twice."""
    shm = shared_memory.SharedMemory(create=True, size=pool_bytes(64))
    try:
        ctx = multiprocessing.get_context("fork")
        stopped = 0
        for crash_at in range(1, 200):
            pool = Pool.create_in(shm.buf, max_order=4, links=links)
            child = ctx.Process(target=_grow_child, args=(shm.name, crash_at))
            child.start()
            child.join()
            if child.exitcode != 0:
                assert child.exitcode == -signal.SIGKILL, child.exitcode
                assert lock_holder(shm.buf) == child.pid  # stopped inside an operation
                stopped += 1
            pool.check()
            pfns = range(pool.base_pfn, pool.base_pfn + pool.max_pages)
            uncovered = sum(1 for p in pfns if not pool.covers(p))
            assert held_pages(pool) == {}
            assert pool.free_pages + uncovered == pool.max_pages
            del pool
            if child.exitcode == 0:
                break
        else:
            raise AssertionError("the sequence never ended")
        assert stopped > 10, stopped
    finally:
        shm.close()
        shm.unlink()


@pytest.mark.parametrize("cls", POOLS)
def test_constructor_takes_max_pages(cls: Any) -> None:
    assert cls(8).max_pages == 8
    assert "max_pages=32" in repr(cls(8, max_pages=32))
    for bad in ({"max_pages": 4}, {"max_pages": 0}):
        with pytest.raises(ValueError):
            cls(8, **bad)
    with pytest.raises(ValueError):
        cls(0)
    with pytest.raises(ValueError):
        cls(0, max_pages=8, reserved_pages=1)
    with pytest.raises(ValueError):
        cls(4, max_pages=8, base_pfn=2**64 - 6)


def test_fuzz_grow_runs_in_lockstep() -> None:
    proc = run_cli("fuzz", "--grow", "--ops", "20000", "--seed", "7", "--json", "--no-progress")
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    assert report["divergence"] is None and report["ops"] == 20000


def _grow_worker(name: str, seed: int, steps: int) -> None:
    """Random reclaims, admits back, allocations and frees on a shared pool; at the end every
    block it reclaimed is admitted back and every block it holds is put."""
    import random

    shm = shared_memory.SharedMemory(name=name)
    pool = Pool.attach(shm.buf)
    rng = random.Random(seed)
    reclaimed: list[tuple[int, int]] = []
    held: list[int] = []
    for _ in range(steps):
        r, order = rng.random(), rng.randrange(3)
        try:
            if r < 0.3:
                reclaimed.append((pool.reclaim(order), order))
            elif r < 0.5 and reclaimed:
                pool.admit(*reclaimed.pop(rng.randrange(len(reclaimed))))
            elif r < 0.8:
                held.append(pool.alloc_pages(order))
            elif held:
                pool.put_page(held.pop(rng.randrange(len(held))))
        except OutOfMemory:
            pass
    for pfn, order in reclaimed:
        pool.admit(pfn, order)
    pool.put_many(held)
    os._exit(0)


def test_shared_pool_grown_and_shrunk_by_processes_at_once_loses_no_page() -> None:
    """Four processes reclaim, admit, allocate and free on one shared pool at the same time;
    once they have given everything back, every page is free again and check() passes."""
    shm = shared_memory.SharedMemory(create=True, size=pool_bytes(256))
    try:
        pool = Pool.create_in(shm.buf, max_order=5)
        total = pool.free_pages
        ctx = multiprocessing.get_context("fork")
        workers = [ctx.Process(target=_grow_worker, args=(shm.name, s, 3000)) for s in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
            assert w.exitcode == 0
        pool.check()
        assert pool.free_pages == total
        assert all(pool.covers(p) for p in range(pool.base_pfn, pool.base_pfn + total))
        del pool
    finally:
        shm.close()
        shm.unlink()


def test_cached_pool_grown_and_shrunk_by_threads_at_once_loses_no_page() -> None:
    """Threads on their own slots allocate and free while others reclaim and admit back (each
    draining every cache first); at the end every page is free again and check() passes."""
    import random
    import threading

    pool = Pool(512, max_pages=640, page_size=64, cpus=4, cache_batch=4, cache_high=8)
    for pfn in range(512, 640, 8):
        pool.admit(pfn, 3)
    total = pool.free_pages
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        held: list[int] = []
        reclaimed: list[tuple[int, int]] = []
        try:
            for _ in range(2000):
                r, order = rng.random(), rng.randrange(3)
                try:
                    if r < 0.2:
                        reclaimed.append((pool.reclaim(order), order))
                    elif r < 0.35 and reclaimed:
                        pool.admit(*reclaimed.pop())
                    elif r < 0.7:
                        held.append(pool.alloc_pages(order, cpu=seed))
                    elif held:
                        pool.put_page(held.pop(rng.randrange(len(held))), cpu=seed)
                except OutOfMemory:
                    pass
            for pfn, order in reclaimed:
                pool.admit(pfn, order)
            pool.put_many(held, cpu=seed)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    pool.drain_all()
    pool.check()
    assert pool.free_pages == total


class FloorlessPool:
    """A Pool whose reclaim ignores the floor (a bug ``fuzz --grow`` must find)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._pool = Pool(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    def reclaim(self, order: int) -> int:
        floor = self._pool.min_free_pages
        self._pool.set_min_free_pages(0)
        try:
            return self._pool.reclaim(order)
        finally:
            self._pool.set_min_free_pages(floor)


def test_fuzz_grow_finds_a_reclaim_below_the_floor_and_shrinks_it() -> None:
    from pagebuddy import _fuzz
    from pagebuddy._lockstep import diverges

    cfg = _fuzz.FuzzConfig(ops=40_000, seed=3, grow=True, shrink_seconds=20)
    result = _fuzz.fuzz(cfg, pool_cls=FloorlessPool)
    assert result.divergence is not None
    assert result.shrunk_geometry is not None and result.shrunk_geometry.max_pages is not None
    assert 1 <= len(result.shrunk_ops) < len(result.episode_ops)
    assert any(op[0] == "floor" for op in result.shrunk_ops)
    assert diverges(result.shrunk_geometry, result.shrunk_ops, FloorlessPool) is not None
    assert diverges(result.shrunk_geometry, result.shrunk_ops) is None
