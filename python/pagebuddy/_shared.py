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
from dataclasses import dataclass, field
from multiprocessing import shared_memory
from typing import Any

from ._native import Pool

#: Bytes of the stamp at the start of each held page: worker number, sequence number.
STAMP = struct.Struct("<QQ")


def pool_bytes(pages: int, page_size: int = 4096) -> int:
    """Bytes of a buffer in which ``Pool.create_in`` fits at least ``pages`` pages (header,
    4 bytes of metadata and 8 of links a page, alignment of the pages)."""
    return 8192 + pages * 12 + (pages + 1) * page_size


def held_pages(pool: Pool) -> dict[int, int]:
    """Every held block of ``pool``: head pfn -> pages (read under the pool's lock, page by page)."""
    held: dict[int, int] = {}
    pfn, end = pool.base_pfn, pool.base_pfn + pool.nr_pages
    while pfn < end:
        if pool.page_count(pfn) > 0:
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
) -> WorkerResult:
    """Run ``ops`` operations (or until ``stop`` is set) on the pool in shared memory ``name``."""
    shm = shared_memory.SharedMemory(name=name)
    try:
        pool = Pool.attach(shm.buf)
        rng = random.Random(seed)
        res = WorkerResult(worker)
        mine: dict[int, tuple[int, int]] = {}  # pfn -> (seq, extra references)
        seq = 0
        i = 0
        while (stop is None and i < ops) or (stop is not None and not stop.is_set()):
            i += 1
            r = rng.random()
            if r < 0.45 or not mine:
                try:
                    pfn = pool.alloc_pages(rng.randrange(max_order))
                except MemoryError:
                    pfn = None
                if pfn is not None:
                    seq += 1
                    stamp_block(pool, pfn, worker, seq)
                    mine[pfn] = (seq, 0)
            elif r < 0.6:
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
        del pool
        return res
    finally:
        shm.close()


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
) -> dict[str, Any]:
    """Run ``processes`` workers of ``ops`` operations each on one shared pool; the accounting."""
    size = pool_bytes(pages, page_size)
    shm = shared_memory.SharedMemory(create=True, size=size)
    try:
        pool = Pool.create_in(shm.buf, page_size=page_size)
        ctx = multiprocessing.get_context()
        out = ctx.Queue()
        procs = [
            ctx.Process(
                target=_worker_main,
                args=(
                    (shm.name, w + 1, ops, seed * 1000 + w, {"max_order": max_order, "check_every": check_every}),
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
