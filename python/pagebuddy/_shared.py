"""Shared pools across processes: the worker loop of ``pagebuddy demo --processes N`` and of the
multi-process tests, and the parent's accounting.

Each worker attaches to one pool in a ``multiprocessing.shared_memory`` block, allocates blocks,
takes and drops extra references to them (get/put), writes a stamp (its number and a sequence
number) into every page it holds and reads it back before it frees the block: a page that two
workers held at once would show the other's stamp. The parent then checks that every page is
free or held by exactly one worker.
"""

from __future__ import annotations

import multiprocessing
import random
import struct
import time
from dataclasses import dataclass, field
from multiprocessing import shared_memory
from typing import Any

from ._native import Pool

#: Bytes of the stamp at the start of each held page: worker number, sequence number.
STAMP = struct.Struct("<QQ")


def pool_bytes(pages: int, page_size: int = 4096) -> int:
    """Bytes of a buffer in which ``Pool.create_in`` fits at least ``pages`` pages (header and
    its default 32 owner slots of 192 bytes, 2 bytes of owner tag, 4 of metadata and 8 of links
    a page, alignment of the pages)."""
    return 8192 + 32 * 192 + pages * 14 + (pages + 1) * page_size


def held_pages(pool: Pool) -> dict[int, int]:
    """Every held block of ``pool``: head pfn -> pages (read page by page)."""
    held: dict[int, int] = {}
    pfn, end = pool.base_pfn, pool.base_pfn + pool.nr_pages
    while pfn < end:
        if not pool.covers(pfn):  # reclaimed: nobody's
            pfn += 1
        elif pool.page_count(pfn) > 0:
            n = len(pool.view(pfn)) // pool.page_size
            held[pfn] = n
            pfn += n
        else:
            pfn += 1
    return held


def stamp_block(pool: Pool, pfn: int, worker: int, seq: int) -> None:
    """Write the stamp into every page of the held block at ``pfn``."""
    view = pool.view(pfn)
    for off in range(0, len(view), pool.page_size):
        STAMP.pack_into(view, off, worker, seq)


def stamp_ok(pool: Pool, pfn: int, worker: int, seq: int) -> bool:
    """Whether every page of the held block at ``pfn`` still holds the stamp."""
    view = pool.view(pfn)
    return all(
        STAMP.unpack_from(view, off) == (worker, seq) for off in range(0, len(view), pool.page_size)
    )


@dataclass
class WorkerResult:
    """What a worker reports: the blocks it still holds and what it saw."""

    worker: int
    held: dict[int, int] = field(default_factory=dict)
    ops: int = 0
    stamp_errors: int = 0
    checks: int = 0


def worker_loop(
    name: str,
    worker: int,
    ops: int,
    seed: int,
    *,
    max_order: int = 3,
    check_every: int = 0,
    free_at_end: bool = False,
    stop: Any = None,
    max_held: int = 0,
    batches: bool = False,
    ready: Any = None,
    hold_until_all: bool = False,
) -> WorkerResult:
    """Run ``ops`` operations (or until ``stop`` is set) on the pool in shared memory ``name``;
    with ``batches``, a fifth of them are ``alloc_many``, ``alloc_exact`` and ``put_many``.
    ``ready[worker]`` (a lock-free shared array) is set once the worker has attached; with
    ``hold_until_all``, the worker keeps its handle (and so its pages: a handle let go is an
    owner that ended, whose pages the next attach reclaims) until every entry is set."""
    shm = shared_memory.SharedMemory(name=name)
    try:
        pool = Pool.attach(shm.buf)
        if ready is not None:
            ready[worker] = 1
        rng = random.Random(seed)
        res = WorkerResult(worker)
        mine: dict[int, tuple[int, int]] = {}  # pfn -> (seq, extra references)
        seq = 0
        i = 0
        # `stop` is a lock-free shared flag (a RawValue): a process killed while reading a
        # locked one (an Event) would leave its lock held.
        while (stop is None and i < ops) or (stop is not None and not stop.value):
            i += 1
            r = rng.random()
            room = not (max_held and len(mine) >= max_held)
            if batches and r < 0.1 and room:
                for pfn in _alloc_batch(pool, rng, max_order):
                    seq += 1
                    stamp_block(pool, pfn, worker, seq)
                    mine[pfn] = (seq, 0)
            elif batches and r < 0.2 and mine:
                picks = rng.sample(list(mine), min(len(mine), rng.randrange(1, 4)))
                for pfn in picks:
                    if not stamp_ok(pool, pfn, worker, mine[pfn][0]):
                        res.stamp_errors += 1
                pool.put_many(picks)
                for pfn in picks:
                    s, extra = mine[pfn]
                    if extra:
                        mine[pfn] = (s, extra - 1)
                    else:
                        del mine[pfn]
            elif (r < 0.4 or not mine) and room:
                try:
                    pfn = pool.alloc_pages(rng.randrange(max_order))
                except MemoryError:
                    pfn = None
                if pfn is not None:
                    seq += 1
                    stamp_block(pool, pfn, worker, seq)
                    mine[pfn] = (seq, 0)
            elif r < 0.55:
                pfn = rng.choice(list(mine))
                s, extra = mine[pfn]
                pool.get_page(pfn)
                mine[pfn] = (s, extra + 1)
            else:
                pfn = rng.choice(list(mine))
                s, extra = mine[pfn]
                if not stamp_ok(pool, pfn, worker, s):
                    res.stamp_errors += 1
                pool.put_page(pfn)
                if extra:
                    mine[pfn] = (s, extra - 1)
                else:
                    del mine[pfn]
            res.ops += 1
            if check_every and res.ops % check_every == 0:
                pool.check()
                res.checks += 1
        if free_at_end:
            for pfn, (s, extra) in list(mine.items()):
                if not stamp_ok(pool, pfn, worker, s):
                    res.stamp_errors += 1
                for _ in range(extra + 1):
                    pool.put_page(pfn)
            mine.clear()
        for pfn in mine:
            res.held[pfn] = len(pool.view(pfn)) // pool.page_size
        while hold_until_all and ready is not None and not all(ready):
            time.sleep(0.001)
        del pool
        return res
    finally:
        shm.close()


def _alloc_batch(pool: Pool, rng: random.Random, max_order: int) -> list[int]:
    """The heads of what one ``alloc_many`` (1 to 3 blocks) or ``alloc_exact`` (1 to 5 pages,
    each its own order-0 block) took; none when the pool is out of memory."""
    try:
        if rng.random() < 0.5:
            return list(pool.alloc_many(rng.randrange(max_order), rng.randrange(1, 4)))
        n = rng.randrange(1, 6)
        run = pool.alloc_exact(n)
        return list(range(run, run + n))
    except MemoryError:
        return []


def _worker_main(args: tuple[Any, ...], out: Any) -> None:
    out.put(worker_loop(*args[:4], **args[4]))


def run_processes(
    processes: int,
    ops: int,
    seed: int,
    *,
    pages: int = 1024,
    page_size: int = 4096,
    max_order: int = 3,
    check_every: int = 0,
    batches: bool = False,
) -> dict[str, Any]:
    """Run ``processes`` workers of ``ops`` operations each on one shared pool; the accounting
    (``batches``: see ``worker_loop``)."""
    size = pool_bytes(pages, page_size)
    shm = shared_memory.SharedMemory(create=True, size=size)
    try:
        pool = Pool.create_in(shm.buf, page_size=page_size)
        ctx = multiprocessing.get_context()
        out = ctx.Queue()
        # Set by each worker (numbered from 1) once attached; index 0 is nobody's.
        ready = ctx.RawArray("b", [1] + [0] * processes)
        procs = [
            ctx.Process(
                target=_worker_main,
                args=(
                    (
                        shm.name,
                        w + 1,
                        ops,
                        seed * 1000 + w,
                        {
                            "max_order": max_order,
                            "check_every": check_every,
                            "batches": batches,
                            "ready": ready,
                            "hold_until_all": True,
                        },
                    ),
                    out,
                ),
            )
            for w in range(processes)
        ]
        for p in procs:
            p.start()
        results: list[WorkerResult] = [out.get() for _ in procs]
        for p in procs:
            p.join()
        pool.check()
        owner: dict[int, int] = {}
        overlaps = 0
        for res in results:
            for pfn, n in res.held.items():
                for page in range(pfn, pfn + n):
                    if page in owner:
                        overlaps += 1
                    owner[page] = res.worker
        actual = held_pages(pool)
        held_total = sum(actual.values())
        report = {
            "processes": processes,
            "ops_per_process": ops,
            "ops": sum(r.ops for r in results),
            "nr_pages": pool.nr_pages,
            "free_pages": pool.free_pages,
            "held_pages": held_total,
            "held_by_workers": len(owner),
            "overlaps": overlaps,
            "stamp_errors": sum(r.stamp_errors for r in results),
            "checks": sum(r.checks for r in results),
            "accounted": pool.free_pages + held_total == pool.nr_pages
            and held_total == len(owner)
            and overlaps == 0,
        }
        del pool
        return report
    finally:
        shm.close()
        shm.unlink()


#: Offset of the lock word in a shared pool's header (after the 88-byte fixed part and its
#: 8-byte checksum): it holds the pid of the process inside an operation, 0 when none is.
LOCK_WORD = 96


#: The lock word's value while a handle that is not an owner yet holds the lock.
REGISTRANT = 0xFFFFFFFF
#: Bytes of the owner table before its first slot, and of each slot; the offset in a slot of
#: the pid of the process that took it (layout version 5, ``owners.rs``).
OWNER_TABLE_HEAD, OWNER_SLOT, OWNER_PID = 64, 192, 56


def lock_holder(buf: Any) -> int:
    """The pid of the process holding the pool's lock, as the holder's owner slot records it
    (0: unlocked; -1: a handle that is not an owner yet, or a word naming no slot)."""
    word = int(struct.unpack_from("=I", buf, LOCK_WORD)[0])
    if word == 0:
        return 0
    slot = (word & 0x1FFF) - 1
    if word == REGISTRANT or slot < 0:
        return -1
    table = (header_bytes(buf) + 63) // 64 * 64
    return int(
        struct.unpack_from("=I", buf, table + OWNER_TABLE_HEAD + slot * OWNER_SLOT + OWNER_PID)[0]
    )


def kill_rounds(
    kills: int,
    seed: int,
    *,
    workers: int = 3,
    pages: int = 2048,
    max_order: int = 5,
    per_epoch: int = 20,
    max_delay: float = 0.01,
) -> dict[str, Any]:
    """Keep ``workers`` processes busy on one shared pool (single operations and batches:
    ``alloc_many``, ``alloc_exact``, ``put_many``) and SIGKILL one at a random moment,
    ``kills`` times, replacing it each time; after each kill, check the pool (which recovers an
    operation the victim left half done). Every ``per_epoch`` kills, stop the survivors and
    account for every page: free, held by a survivor as it reports, or held by a killed worker
    not yet found dead (a worker that attaches reclaims the pages of the dead). Each epoch starts
    a fresh pool in the same memory."""
    import os
    import signal
    import time

    rng = random.Random(seed)
    shm = shared_memory.SharedMemory(create=True, size=pool_bytes(pages))
    procs: dict[int, Any] = {}
    total = {
        "kills": 0,
        "killed_inside_operation": 0,
        "epochs": 0,
        "free_pages": 0,
        "held_by_survivors": 0,
        "held_by_killed": 0,
        "overlaps": 0,
        "stamp_errors": 0,
        "accounted": True,
    }
    try:
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        n_started = 0
        # Set by each worker once attached: the epoch stops only then, so that no late attach
        # reclaims the pages of survivors that have already reported and let their handle go.
        ready = ctx.RawArray("b", kills + workers * (kills // per_epoch + 2) + 1)
        while total["kills"] < kills:
            pool = Pool.create_in(shm.buf, max_order=max_order + 1)
            stop = ctx.RawValue("b", 0)

            def start(stop: Any = stop) -> None:
                nonlocal n_started
                n_started += 1
                kw = {
                    "max_order": max_order,
                    "stop": stop,
                    "max_held": 6,
                    "batches": True,
                    "ready": ready,
                }
                args = (shm.name, n_started, 0, seed * 100003 + n_started, kw)
                p = ctx.Process(target=_worker_main, args=(args, out))
                p.start()
                procs[n_started] = p

            for _ in range(workers):
                start()
            for _ in range(min(per_epoch, kills - total["kills"])):
                time.sleep(rng.uniform(0, max_delay))
                p = procs.pop(rng.choice(list(procs)))
                assert p.pid is not None
                # Stopped first, so that what it holds is read before a survivor takes the
                # lock over from it (a stopped holder is alive: no one does).
                os.kill(p.pid, signal.SIGSTOP)
                os.waitpid(p.pid, os.WUNTRACED)
                inside = lock_holder(shm.buf) == p.pid
                os.kill(p.pid, signal.SIGKILL)
                p.join()
                if inside:
                    total["killed_inside_operation"] += 1  # died holding the lock
                pool.check()
                total["kills"] += 1
                start()
            while not all(ready[i] for i in procs):
                time.sleep(0.001)
            stop.value = 1
            results: list[WorkerResult] = [out.get() for _ in procs]
            for p in procs.values():
                p.join()
            procs.clear()
            pool.check()
            actual = held_pages(pool)
            owner: dict[int, int] = {}
            overlaps = 0
            for res in results:
                for pfn, n in res.held.items():
                    if actual.get(pfn) != n:
                        overlaps += 1  # a survivor's block is not held as such
                    for page in range(pfn, pfn + n):
                        if page in owner:
                            overlaps += 1
                        owner[page] = res.worker
            held_total = sum(actual.values())
            total["epochs"] += 1
            total["free_pages"] += pool.free_pages
            total["held_by_survivors"] += len(owner)
            total["held_by_killed"] += held_total - len(owner)
            total["overlaps"] += overlaps
            total["stamp_errors"] += sum(r.stamp_errors for r in results)
            total["accounted"] = bool(
                total["accounted"]
                and pool.free_pages + held_total == pool.nr_pages
                and overlaps == 0
                and len(owner) <= held_total
            )
            total["nr_pages"] = pool.nr_pages
            del pool
        return total
    finally:
        for p in procs.values():
            if p.is_alive():
                p.kill()
                p.join()
        shm.close()
        shm.unlink()


#: Offset of the state word (the journal's bits) in a shared pool's header.
STATE_WORD = 100


def header_bytes(buf: Any) -> int:
    """Bytes of the pool's header (its fixed part records them)."""
    return int(struct.unpack_from("=I", buf, 16)[0])


def lock_area(buf: Any) -> int:
    """Offset of the robust mutex (64 bytes) in the pool's header: before the boot word, which
    ends the header."""
    return header_bytes(buf) - 72


def boot_word(buf: Any) -> int:
    """Offset of the boot word: which boot of the machine initialised the mutex."""
    return header_bytes(buf) - 8
