"""Shared pools: one pool inside a buffer, opened by several processes, surviving SIGKILL."""

from __future__ import annotations

import mmap
import multiprocessing
import os
import signal
import time
from multiprocessing import shared_memory
from pathlib import Path

import pytest

from pagebuddy import CorruptionError, Pool
from pagebuddy._shared import held_pages, kill_rounds, lock_holder, pool_bytes, run_processes

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")


def test_create_in_fills_the_buffer_and_attach_sees_the_same_pool() -> None:
    buf = bytearray(pool_bytes(64))
    pool = Pool.create_in(buf, base_pfn=64, reserved_pages=2, zero="alloc")
    assert pool.shared and pool.nr_pages >= 64 and pool.free_pages == pool.nr_pages - 2
    pfn = pool.alloc_pages(3)
    pool.view(pfn)[:4] = b"page"
    other = Pool.attach(buf)
    assert (other.nr_pages, other.base_pfn, other.zero) == (pool.nr_pages, 64, "alloc")
    assert bytes(other.view(pfn)[:4]) == b"page"
    assert other.page_count(pfn) == 1
    other.put_page(pfn)
    assert pool.free_pages == pool.nr_pages - 2
    pool.check()


@pytest.mark.parametrize("links", ["side", "intrusive"])
def test_every_operation_through_two_handles(links: str) -> None:
    buf = bytearray(pool_bytes(128))
    a = Pool.create_in(buf, links=links, max_order=5)
    b = Pool.attach(buf)
    pfns = a.alloc_many(1, 5)
    b.get_page(pfns[0])
    b.split_page(pfns[1])
    a.put_page(pfns[0])
    b.put_many([pfns[0], pfns[1], pfns[1] + 1, *pfns[2:]])
    assert a.free_pages == a.nr_pages
    assert a.free_lists() == b.free_lists()
    b.check()


def test_refused_bytes_are_not_written() -> None:
    buf = bytearray(pool_bytes(32))
    Pool.create_in(buf)
    for bad, exc in [
        (bytearray(len(buf)), ValueError),  # not a pool
        (buf[: len(buf) // 2], ValueError),  # truncated
        (buf[:100], ValueError),
    ]:
        before = bytes(bad)
        with pytest.raises(exc):
            Pool.attach(bad)
        assert bytes(bad) == before
    version = bytearray(buf)
    version[8] += 1
    with pytest.raises(ValueError, match="layout version"):
        Pool.attach(version)
    header = bytearray(buf)
    header[20] ^= 0x40  # a geometry field: the checksum no longer matches
    with pytest.raises(CorruptionError, match="header"):
        Pool.attach(header)
    assert header[:20] == buf[:20]
    with pytest.raises(TypeError):
        Pool.attach(bytes(buf))


def test_corrupt_metadata_is_a_corruption_error() -> None:
    buf = bytearray(pool_bytes(32))
    pool = Pool.create_in(buf)
    del pool
    damaged = bytearray(buf)
    # The first metadata entry: page 0 heads a free block; claim it is held.
    from pagebuddy._shared import LOCK_WORD

    assert lock_holder(damaged) == 0 and LOCK_WORD == 96
    start = _meta_offset(damaged)
    damaged[start] = 7
    before = bytes(damaged)
    with pytest.raises(CorruptionError):
        Pool.attach(damaged)
    assert bytes(damaged) == before


@pytest.mark.parametrize("links", ["side", "intrusive"])
@pytest.mark.parametrize("end", ["head", "tail"])
def test_list_ends_outside_the_pool_are_a_corruption_error(links: str, end: str) -> None:
    """The header's list ends are bytes any holder of the buffer can write: a head or a tail
    that names a page past the pool is refused as corruption by the call that reads it, with
    nothing changed, and never a panic."""
    import struct

    buf = bytearray(pool_bytes(64))
    pool = Pool.create_in(buf, links=links)
    held = pool.alloc_pages(0)
    # The ends: heads, tails and lengths of 32 lists (u32 each), found by the lengths, which
    # are the buddyinfo padded to 32.
    lens = struct.pack("=32I", *(pool.buddyinfo() + [0] * (32 - len(pool.buddyinfo()))))
    at = bytes(buf).find(lens, 0, _meta_offset(buf))
    assert at > 0 and bytes(buf).find(lens, at + 1, _meta_offset(buf)) == -1
    first = at - (128 if end == "tail" else 256)
    bad = pool.nr_pages + 5
    for k in range(pool.max_order):
        struct.pack_into("=I", buf, first + 4 * k, bad)
    state = bytes(buf[first : first + 384]), bytes(buf[_meta_offset(buf) :])
    calls = (
        [lambda: pool.put_page(held), lambda: pool.put_many([held])]
        if end == "tail"
        else [lambda: pool.alloc_pages(0), lambda: pool.alloc_many(0, 2)]
    )
    for call in calls:
        with pytest.raises(CorruptionError, match=r"pfn \d+"):
            call()
        assert (bytes(buf[first : first + 384]), bytes(buf[_meta_offset(buf) :])) == state
    with pytest.raises(CorruptionError):
        pool.check()


_SCRIBBLE = r"""
import random, struct, sys
from pagebuddy import Pool
from pagebuddy._shared import pool_bytes

for seed in range(int(sys.argv[1]), int(sys.argv[2])):
    rng = random.Random(seed)
    buf = bytearray(pool_bytes(64))
    pool = Pool.create_in(buf, links=rng.choice(["side", "intrusive"]),
                          zero=rng.choice(["never", "free"]))
    n, held = pool.nr_pages, []
    meta = struct.unpack_from("=Q", buf, 56)[0]
    links = struct.unpack_from("=Q", buf, 64)[0]
    bi = pool.buddyinfo()
    heads = bytes(buf).find(struct.pack("=32I", *(bi + [0] * (32 - len(bi)))), 0, meta) - 256
    def scribble():
        where = rng.randrange(3)
        if where == 0:  # a list's head, tail, length, tail's or head's prev, or the mask
            v = rng.choice([rng.randrange(2 * n), 0xFFFFFFFF, rng.getrandbits(32)])
            struct.pack_into("=I", buf, heads + 4 * rng.randrange(161), v)
        elif where == 1:  # a byte of a page's metadata
            buf[meta + 4 * rng.randrange(n) + rng.randrange(4)] = rng.randrange(256)
        else:  # half a link (the side table's; in-page links are the pages' bytes)
            struct.pack_into("=I", buf, links + 4 * rng.randrange(2 * n), rng.randrange(2 * n))
    for step in range(80):
        if rng.random() < 0.15:
            scribble()
        op = rng.randrange(11)
        try:
            if op == 0: held.append(pool.alloc_pages(rng.randrange(8)))
            elif op == 1 and held: pool.put_page(held.pop(rng.randrange(len(held))))
            elif op == 2: held.extend(pool.alloc_many(rng.randrange(3), rng.randrange(1, 5)))
            elif op == 3 and held: pool.put_many([held.pop()])
            elif op == 4: pool.check()
            elif op == 5: pool.get_page(rng.randrange(n))
            elif op == 6: pool.put_page(rng.randrange(n))
            elif op == 7 and held: pool.split_page(rng.choice(held))
            elif op == 8: held.append(pool.alloc_exact(rng.randrange(1, 9)))
            elif op == 9: pool.reclaim(rng.randrange(4))
            elif op == 10: pool.page_count(rng.randrange(n)); pool.free_lists()
        except (ValueError, KeyError, MemoryError, RuntimeError, OverflowError):
            pass
print("done")
"""


def test_scribbled_shared_bytes_never_crash_the_interpreter() -> None:
    """Another holder of a shared pool's buffer can write anything into its list ends,
    metadata and links: every call then succeeds or raises, and the interpreter never aborts
    (a panic in the core would). 150 seeded pools, each scribbled on between operations."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _SCRIBBLE, "0", "150"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr[-2000:]


def _meta_offset(buf: bytearray) -> int:
    import struct

    return int(struct.unpack_from("=Q", buf, 56)[0])  # meta_off in the fixed header


def test_shared_memory_across_processes_stress() -> None:
    """4 processes, thousands of operations each (batches among them), views written and read
    back, check() every 100 operations; the parent accounts for every page."""
    report = run_processes(4, 2500, seed=7, pages=2048, check_every=100, batches=True)
    assert report["ops"] == 10000
    assert report["checks"] == 100
    assert report["stamp_errors"] == 0
    assert report["overlaps"] == 0
    assert report["accounted"], report


@pytest.mark.parametrize("links", ["side", "intrusive"])
def test_batches_on_a_shared_pool_are_all_or_nothing(links: str) -> None:
    buf = bytearray(pool_bytes(64))
    pool = Pool.create_in(buf, links=links)
    other = Pool.attach(buf)
    a = pool.alloc_many(1, 3)
    run = other.alloc_exact(3)
    assert [pool.page_count(p) for p in range(run, run + 3)] == [1, 1, 1]
    free = pool.free_pages
    lists = pool.free_lists()
    with pytest.raises(ValueError, match="not held"):
        other.put_many([a[0], a[1], a[0], a[0]])  # a[0] is held once
    with pytest.raises(MemoryError):
        other.alloc_many(0, free + 1)
    assert (pool.free_pages, pool.free_lists()) == (free, lists)
    assert [pool.page_count(p) for p in a] == [1, 1, 1]
    other.put_many([*a, *range(run, run + 3)])
    pool.check()
    assert pool.free_pages == pool.nr_pages
    del pool, other


def _steps_child(name: str, crash_at: int) -> None:
    """A fixed sequence of every kind of operation, killed (SIGKILL) at crash point ``crash_at``;
    exits 0 if the sequence ends first."""
    from pagebuddy._native import _crash_after

    shm = shared_memory.SharedMemory(name=name)
    pool = Pool.attach(shm.buf)
    _crash_after(crash_at)
    a = pool.alloc_pages(2)
    pool.get_page(a)
    b = list(pool.alloc_many(0, 3))
    run = pool.alloc_exact(3)
    pool.put_many([a, *b[:2]])
    pool.split_page(a)
    pool.put_many([a, a + 1, run])
    pool.put_page(a + 2)
    pool.put_page(b[2])
    _crash_after(0)
    os._exit(0)


@pytest.mark.parametrize("links", ["side", "intrusive"])
def test_a_process_stopped_at_every_step_of_its_operations(links: str) -> None:
    """A child killed at each crash point in turn (its journal written, each link write, each
    commit) of a sequence of every operation, batches and exact runs included: the pool it
    leaves passes check() once recovered (the parent takes the lock over from it), and every
    page is free or held."""
    shm = shared_memory.SharedMemory(create=True, size=pool_bytes(64))
    try:
        ctx = multiprocessing.get_context("fork")
        stopped = 0
        for crash_at in range(1, 400):
            pool = Pool.create_in(shm.buf, max_order=4, links=links)
            child = ctx.Process(target=_steps_child, args=(shm.name, crash_at))
            child.start()
            child.join()
            if child.exitcode != 0:
                assert child.exitcode == -signal.SIGKILL, child.exitcode
                assert lock_holder(shm.buf) == child.pid  # stopped inside an operation
                stopped += 1
            pool.check()
            held = held_pages(pool)
            assert pool.free_pages + sum(held.values()) == pool.nr_pages
            del pool
            if child.exitcode == 0:
                break
        else:
            raise AssertionError("the sequence never ended")
        assert stopped > 40, stopped
    finally:
        shm.close()
        shm.unlink()


#: Most rounds of kills test_sigkill_at_random_moments runs while waiting for one to land inside
#: an operation (about one kill in ten to sixty does).
KILL_ROUNDS_MAX = 30


def test_sigkill_at_random_moments() -> None:
    """Rounds of PAGEBUDDY_KILLS random kills (seeds 3, 4, ...), every page accounted for after
    each, until at least one kill has landed inside an operation (the victim's pid in the lock
    word when it died): every run recovers at least one operation left half done."""
    kills = int(os.environ.get("PAGEBUDDY_KILLS", "60"))
    inside = 0
    for seed in range(3, 3 + KILL_ROUNDS_MAX):
        report = kill_rounds(kills, seed=seed)
        assert report["accounted"], report
        assert report["stamp_errors"] == 0 and report["overlaps"] == 0
        assert (
            report["free_pages"] + report["held_by_survivors"] + report["held_by_killed"]
            == report["epochs"] * report["nr_pages"]
        )
        inside += report["killed_inside_operation"]
        if inside:
            break
    assert inside > 0, f"none of {KILL_ROUNDS_MAX} rounds of {kills} kills landed in an operation"


def _file_worker(path: str) -> None:
    with open(path, "r+b") as f:
        m = mmap.mmap(f.fileno(), 0)
        pool = Pool.attach(m)
        held: list[int] = []
        i = 0
        while True:
            i += 1
            if len(held) < 20 and i % 3:
                held.append(pool.alloc_pages(i % 6))
            elif held:
                pool.put_page(held.pop(0))


def test_file_backed_pool_reopened_after_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "pool.bin"
    path.write_bytes(bytes(pool_bytes(1024)))
    with open(path, "r+b") as f:
        m = mmap.mmap(f.fileno(), 0)
        pool = Pool.create_in(m, max_order=6)
        total = pool.nr_pages
        del pool
        m.close()
    ctx = multiprocessing.get_context("fork")
    inside = 0
    for round_ in range(12):
        p = ctx.Process(target=_file_worker, args=(str(path),))
        p.start()
        assert p.pid is not None
        if round_ % 2:
            time.sleep(0.05 + 0.01 * round_)  # a random moment
        else:
            assert _stop_inside_an_operation(p.pid, path), f"round {round_}: never inside"
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        with open(path, "r+b") as f:
            m = mmap.mmap(f.fileno(), 0)
            inside += lock_holder(m) == p.pid
            pool = Pool.attach(m)  # recovers, checks
            assert lock_holder(m) == 0
            held = held_pages(pool)
            assert pool.free_pages + sum(held.values()) == total
            for pfn in held:  # the dead process's pages: put them back on its behalf
                while pool.page_count(pfn):
                    pool.put_page(pfn)
            assert pool.free_pages == total
            pool.check()
            del pool
            m.close()
    assert inside >= 6, f"{inside} of 12 kills landed inside an operation, not the 6 aimed"


def _stop_inside_an_operation(pid: int, path: Path, seconds: float = 60.0) -> bool:
    """Stop the child ``pid`` (SIGSTOP) until it is stopped inside an operation, its pid in the
    lock word of the pool in ``path``; resume it (SIGCONT) each time it is not. True once it
    is, False after ``seconds`` of trying (a bound in time, not in tries: on a loaded machine
    the child may run for only a few of them)."""
    deadline = time.monotonic() + seconds
    with open(path, "r+b") as f:
        m = mmap.mmap(f.fileno(), 0)
    try:
        while time.monotonic() < deadline:
            for _ in range(1000):
                os.kill(pid, signal.SIGSTOP)
                _, status = os.waitpid(pid, os.WUNTRACED)
                assert os.WIFSTOPPED(status), status
                if lock_holder(m) == pid:
                    return True
                os.kill(pid, signal.SIGCONT)
        return False
    finally:
        m.close()


def test_shared_memory_view_in_another_process() -> None:
    shm = shared_memory.SharedMemory(create=True, size=pool_bytes(16))
    try:
        pool = Pool.create_in(shm.buf)
        pfn = pool.alloc_pages(0)
        ctx = multiprocessing.get_context("fork")
        p = ctx.Process(target=_write_page, args=(shm.name, pfn))
        p.start()
        p.join()
        assert p.exitcode == 0
        assert bytes(pool.view(pfn)[:6]) == b"child!"
        pool.put_page(pfn)
        pool.check()
        del pool
    finally:
        shm.close()
        shm.unlink()


def _write_page(name: str, pfn: int) -> None:
    shm = shared_memory.SharedMemory(name=name)
    pool = Pool.attach(shm.buf)
    pool.view(pfn)[:6] = b"child!"
    del pool
    shm.close()


def test_demo_processes_accounts_for_every_page() -> None:
    import contextlib
    import io
    import json

    from pagebuddy import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["demo", "--processes", "3", "--ops", "400", "--json"])
    report = json.loads(out.getvalue())
    assert code == 0
    assert report["command"] == "demo-processes" and report["accounted"]
    assert report["ops"] == 1200 and report["overlaps"] == 0 and report["stamp_errors"] == 0
