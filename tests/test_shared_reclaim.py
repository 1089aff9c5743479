"""Owners of shared pools: every handle registers in the pool's owner table, and the references
an owner took are dropped once it is found dead (killed, exited, or its handle closed), so the
pages of the dead are not leaked; a page another live owner took a reference to stays held."""

from __future__ import annotations

import os
import random
import signal
import struct
import sys
import time
from multiprocessing import shared_memory
from typing import Any

import pytest

from pagebuddy import PageError, Pool
from pagebuddy._shared import (
    OWNER_SLOT,
    OWNER_TABLE_HEAD,
    header_bytes,
    lock_holder,
    pool_bytes,
)

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(os, "fork"),
    reason="robust process-shared mutexes and fork: Linux",
)

#: Workers the kill test starts and kills (PAGEBUDDY_OWNER_KILLS for a longer run).
KILLS = int(os.environ.get("PAGEBUDDY_OWNER_KILLS", "1000"))


def _child(fn: Any) -> int:
    """Fork a child that runs ``fn()`` and exits 0 (1 if it raised); its pid."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            fn()
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def _wait(pid: int) -> int:
    """The child's exit status: its exit code, or minus the signal that killed it."""
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_every_handle_is_an_owner_with_its_own_id() -> None:
    buf = bytearray(pool_bytes(64))
    a = Pool.create_in(buf, owners=3)
    b = Pool.attach(buf)
    assert isinstance(a.owner, int) and isinstance(b.owner, int)
    assert a.owner != b.owner
    assert Pool(8).owner is None
    with pytest.raises(ValueError, match="not a shared pool"):
        Pool(8).reclaim_dead()
    for bad in (0, 4097):
        with pytest.raises(ValueError, match="owners must be from 1 to 4096"):
            Pool.create_in(bytearray(pool_bytes(64)), owners=bad)
    c = Pool.attach(buf)
    with pytest.raises(RuntimeError, match="3 owner slots are all held by live handles"):
        Pool.attach(buf)
    # A closed handle's owner has ended: its slot is reclaimed and taken again, under a new
    # generation (so its old id names no one).
    old = c.owner
    assert old is not None
    c.close()
    d = Pool.attach(buf)
    assert d.owner is not None and d.owner & 0xFFFFFFFF == old & 0xFFFFFFFF
    assert d.owner >> 32 == (old >> 32) + 1
    a.check()


def test_version_4_buffers_are_refused_untouched() -> None:
    buf = bytearray(pool_bytes(32))
    Pool.create_in(buf).close()
    struct.pack_into("=I", buf, 8, 4)
    before = bytes(buf)
    with pytest.raises(ValueError, match=r"layout version 4 \(no owner table.*format the buffer"):
        Pool.attach(buf)
    assert bytes(buf) == before


def test_a_closed_owners_pages_are_reclaimed_and_shared_ones_survive() -> None:
    buf = bytearray(pool_bytes(64))
    a = Pool.create_in(buf, reserved_pages=2)
    b = Pool.attach(buf)
    only_b = b.alloc_pages(2)
    shared = b.alloc_pages(0)
    a.get_page(shared)
    split = b.alloc_pages(1)
    b.split_page(split)
    assert a.reclaim_dead() == 0, "b is alive"
    b.close()
    assert a.reclaim_dead() == 4 + 2
    assert a.page_count(only_b) == 0
    assert a.page_count(shared) == 1, "a's own reference"
    a.put_page(shared)
    assert a.free_pages == a.nr_pages - 2
    a.check()


def test_put_takes_the_putters_reference_first() -> None:
    buf = bytearray(pool_bytes(64))
    a = Pool.create_in(buf)
    b = Pool.attach(buf)
    pfn = a.alloc_pages(0)
    b.get_page(pfn)
    a.get_page(pfn)
    b.put_page(pfn)  # b's own
    b.put_page(pfn)  # b holds none: from a's
    assert a.page_count(pfn) == 1
    b.get_page(pfn)
    a.put_page(pfn)  # a's last: b's reference becomes the one the page is tagged with
    a.close()
    assert b.reclaim_dead() == 0
    assert b.page_count(pfn) == 1
    b.put_page(pfn)
    assert b.free_pages == b.nr_pages
    b.check()


def test_an_owner_shares_a_bounded_number_of_other_owners_pages() -> None:
    buf = bytearray(pool_bytes(64))
    a = Pool.create_in(buf)
    b = Pool.attach(buf)
    pfns = [a.alloc_pages(0) for _ in range(17)]
    for pfn in pfns[:16]:
        b.get_page(pfn)
    with pytest.raises(PageError, match=f"pfn {pfns[16]} is held by another owner"):
        b.get_page(pfns[16])
    assert b.page_count(pfns[16]) == 1, "refused: nothing changed"
    b.get_page(pfns[0])  # a page it shares already: counted in the same entry
    assert b.page_count(pfns[0]) == 3
    a.check()


def test_a_killed_owners_pages_are_reclaimed_at_attach() -> None:
    shm = shared_memory.SharedMemory(create=True, size=pool_bytes(128))
    try:
        pool = Pool.create_in(shm.buf)
        r, w = os.pipe()

        def work() -> None:
            mine = Pool.attach(shm.buf)
            kept = mine.alloc_pages(3)
            shared = mine.alloc_pages(0)
            os.write(w, struct.pack("<QQQ", kept, shared, mine.owner or 0))
            time.sleep(60)

        child = _child(work)
        kept, shared, owner = struct.unpack("<QQQ", os.read(r, 24))
        assert owner != pool.owner
        pool.get_page(shared)
        os.kill(child, signal.SIGKILL)
        assert _wait(child) == -signal.SIGKILL
        again = Pool.attach(shm.buf)  # reclaims the dead owner's references
        assert again.page_count(kept) == 0
        assert again.page_count(shared) == 1
        pool.put_page(shared)
        assert pool.free_pages == pool.nr_pages
        pool.check()
        del pool, again
    finally:
        shm.close()
        shm.unlink()


@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_a_forked_child_is_a_new_owner() -> None:
    shm = shared_memory.SharedMemory(create=True, size=pool_bytes(64))
    try:
        pool = Pool.create_in(shm.buf)
        r, w = os.pipe()

        def work() -> None:
            pfn = pool.alloc_pages(1)
            os.write(w, struct.pack("<QQ", pool.owner or 0, pfn))

        child = _child(work)
        owner, pfn = struct.unpack("<QQ", os.read(r, 16))
        assert _wait(child) == 0
        assert owner != pool.owner and pool.owner is not None
        assert pool.page_count(pfn) == 1
        # The child exited: its owner is dead, and what it held is given back.
        assert pool.reclaim_dead() == 2
        assert pool.free_pages == pool.nr_pages
        pool.check()
        pool.close()
    finally:
        shm.close()
        shm.unlink()


#: The board: 64 posted pfns, then one byte per worker, set once it holds pages.
POSTS = 64


def _worker(name: str, board: str, seed: int) -> None:  # pragma: no cover - a forked child
    """Attach, then allocate, share (get_page on pfns other workers posted on the board) and
    put, until killed: about 12 blocks held, and as many references to other workers'. The
    worker's byte on the board is set once it has made 20 calls."""
    block = shared_memory.SharedMemory(name=name)
    posts = shared_memory.SharedMemory(name=board)
    pool = Pool.attach(block.buf)
    rng = random.Random(seed)
    held: list[int] = []
    calls = 0
    while True:
        calls += 1
        if calls == 20:
            posts.buf[8 * POSTS + seed] = 1
        r = rng.random()
        try:
            if not held or (r < 0.4 and len(held) < 12):
                pfn = pool.alloc_pages(rng.randrange(3))
                held.append(pfn)
                struct.pack_into("<Q", posts.buf, 8 * rng.randrange(64), pfn)
            elif r < 0.7 and len(held) < 24:
                pfn = struct.unpack_from("<Q", posts.buf, 8 * rng.randrange(64))[0]
                pool.get_page(pfn)
                held.append(pfn)
            else:
                pool.put_page(held.pop(rng.randrange(len(held))))
        except (PageError, MemoryError):
            pass


def _shared_pages(pool: Pool, buf: Any, slots: int = 32) -> int:
    """Held pages whose owner tag says other owners share them (layout version 5)."""
    tags = (header_bytes(buf) + 63) // 64 * 64 + OWNER_TABLE_HEAD + slots * OWNER_SLOT
    return sum(
        1
        for i in range(pool.nr_pages)
        if struct.unpack_from("=H", buf, tags + 2 * i)[0] & 0x8000
        and pool.page_count(pool.base_pfn + i) > 0
    )


def test_killed_workers_leak_nothing() -> None:
    """KILLS workers, 8 at a time, each killed (SIGKILL) at a random instant (0 to 20 ms after
    its first 20 calls) while it holds pages, some of them shared with other workers through
    get_page. Once every worker is dead, one attach gives every page back: free_pages ==
    nr_pages - reserved_pages, check() passes."""
    shm = shared_memory.SharedMemory(create=True, size=pool_bytes(512))
    board = shared_memory.SharedMemory(create=True, size=8 * POSTS + KILLS)
    live: list[tuple[int, int]] = []
    deadline: dict[int, float] = {}
    try:
        pool = Pool.create_in(shm.buf, reserved_pages=3, max_order=6)
        expected = pool.nr_pages - 3
        rng = random.Random(21)
        started = killed = inside = 0
        t0 = time.perf_counter()
        while started < KILLS or live:
            while started < KILLS and len(live) < 8:
                pid = _child(lambda s=started: _worker(shm.name, board.name, s))
                live.append((pid, started))
                started += 1
            now = time.perf_counter()
            for pid, worker in list(live):
                if pid not in deadline and board.buf[8 * POSTS + worker]:
                    deadline[pid] = now + rng.uniform(0, 0.02)
                if deadline.get(pid, now + 1) <= now:
                    os.kill(pid, signal.SIGKILL)
                    assert _wait(pid) == -signal.SIGKILL
                    inside += lock_holder(shm.buf) == pid  # died holding the pool's lock
                    killed += 1
                    live.remove((pid, worker))
            time.sleep(0.0005)
        shared = _shared_pages(pool, shm.buf)
        held_before = expected - pool.free_pages
        after = Pool.attach(shm.buf)
        after.check()
        leaked = expected - after.free_pages
        print(
            f"\nkill test: {killed} workers killed in {time.perf_counter() - t0:.1f} s "
            f"({inside} holding the lock); {held_before} of {expected} pages held by the dead "
            f"({shared} shared by several), {leaked} leaked after one attach"
        )
        assert killed == KILLS
        assert after.free_pages == expected, leaked
        del pool, after
    finally:
        for pid, _ in live:
            os.kill(pid, signal.SIGKILL)
            _wait(pid)
        shm.close()
        shm.unlink()
        board.close()
        board.unlink()
