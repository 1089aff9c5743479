"""No leak: every public method of every kind of pool, a million calls a group, memory flat.

The calls are grouped by what the bindings do for them (``GROUPS``): single-page calls, views,
batch calls with every kind of ``out`` and input array, queries and attributes, and the
failure path of each (the exceptions raised and caught). Each group runs on every kind of pool
(``KINDS``): a plain pool over its own arena (side-table and intrusive links), a pool without
an arena, a cached pool (``cpus=2``), a shared pool (``Pool.create_in``) and a second handle on
it (``Pool.attach``), and the pure-Python ``ReferencePool``, with a tenth of the share (its
calls are Python code, tenfold slower). A last group builds and drops pools of every kind,
with views that outlive their pool, and refused constructions.

Every call into a pool counts: a method, an attribute read, a construction. After a warm-up
(a tenth of the calls, so that free lists, caches and interned ints reach their steady state)
the resident set size (``/proc/self/statm``) is read, the group runs its million calls, and
the growth, beyond a few pages (``SLACK``) and divided by the calls, must stay under
``BYTES_PER_CALL``: the smallest leak there is, one Python int or one small heap block a call,
costs 32 bytes a call. The virtual size is bounded alike: it sees leaked mappings that are
never touched. Each group is measured in a child process, so that memory freed by earlier
tests cannot absorb a leak without the resident size growing.

``PAGEBUDDY_LEAK_SCALE=<n>`` multiplies the calls, for a long run by hand
(``docs/testing.md``, "Leaks from Python").
"""

from __future__ import annotations

import array
import contextlib
import copy
import functools
import gc
import json
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from pagebuddy import Pool, ReferencePool

CALLS = 1_000_000 * int(os.environ.get("PAGEBUDDY_LEAK_SCALE", "1"))
BYTES_PER_CALL = 1.0
#: Allowed on top, whatever the calls: a few pages of allocator noise (0.66 bytes a call more
#: for the hundred thousand calls of the lifetimes group).
SLACK = 64 << 10
PAGE = os.sysconf("SC_PAGE_SIZE")
NR_PAGES = 64
PAGE_SIZE = 64
#: Owner slots of the shared pools: a pool and a second handle.
SHARED_OWNERS = 2


def memory() -> tuple[int, int]:
    """(resident, virtual) bytes of this process."""
    with open("/proc/self/statm") as f:
        size, resident = (int(x) for x in f.read().split()[:2])
    return resident * PAGE, size * PAGE


class Index:
    """An ``__index__`` object: the bindings read it the slow way."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


# ------------------------------------------------------------------------------ the pools


@functools.cache
def shared_bytes() -> int:
    """The smallest buffer that holds a shared pool of ``NR_PAGES`` pages (and its two owner
    slots)."""
    for size in range(NR_PAGES * PAGE_SIZE, 2 * NR_PAGES * PAGE_SIZE + 4096, 8):
        with contextlib.suppress(ValueError):
            pool = Pool.create_in(bytearray(size), page_size=PAGE_SIZE, owners=SHARED_OWNERS)
            if pool.nr_pages == NR_PAGES:
                return size
    raise AssertionError(f"no buffer holds a shared pool of exactly {NR_PAGES} pages")


def shared_pair() -> tuple[Any, Any]:
    """A shared pool of ``NR_PAGES`` pages and a second handle on its buffer."""
    buffer = bytearray(shared_bytes())
    pool = Pool.create_in(buffer, page_size=PAGE_SIZE, owners=SHARED_OWNERS)
    return pool, Pool.attach(buffer)


#: kind -> (a fresh pool of that kind, its share of a group's calls).
KINDS: dict[str, tuple[Callable[[], Any], float]] = {
    "plain": (lambda: Pool(NR_PAGES, page_size=PAGE_SIZE), 1.0),
    "intrusive": (lambda: Pool(NR_PAGES, page_size=PAGE_SIZE, _links="intrusive"), 1.0),
    "arena-less": (lambda: Pool(NR_PAGES, arena=False), 1.0),
    "cached": (lambda: Pool(NR_PAGES, page_size=PAGE_SIZE, cpus=2), 1.0),
    "shared": (lambda: shared_pair()[0], 1.0),
    "attached": (lambda: shared_pair()[1], 1.0),
    "reference": (lambda: ReferencePool(NR_PAGES, page_size=PAGE_SIZE), 0.1),
}


def fails(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """Calls ``fn``, which must raise a documented exception; returns 1 (one call)."""
    try:
        fn(*args, **kwargs)
    except (TypeError, ValueError, MemoryError):  # PageError and OutOfMemory among them
        return 1
    raise AssertionError(f"{fn!r}{args} did not raise")


# ----------------------------------------------------------------------------- the groups
# Each takes a pool with every page free and leaves it so; returns the calls it made.


def slot(pool: Any, cpu: int) -> int | None:
    """``cpu`` on a pool with caches; None on one without, which refuses any other."""
    return cpu if pool.cpus else None


def single(pool: Any) -> int:
    pfn = pool.alloc_pages(0)
    pool.get_page(pfn)
    count = pool.page_count(pfn)
    pool.put_page(pfn)
    pool.put_page(pfn, cpu=slot(pool, 1))
    big = pool.alloc_pages(Index(2), cpu=slot(pool, 0))
    pool.split_page(big)
    for page in range(big, big + 4):
        pool.put_page(page)
    run = pool.alloc_exact(3)
    for page in range(run, run + 3):
        pool.put_page(page)
    assert count == 2
    return 15


def single_errors(pool: Any) -> int:
    pfn = pool.alloc_pages(0)
    pool.put_page(pfn)
    calls = 2
    calls += fails(pool.put_page, pfn)  # not held
    calls += fails(pool.get_page, pfn)
    calls += fails(pool.split_page, pfn)
    calls += fails(pool.page_count, -1)
    calls += fails(pool.put_page, 10**30)  # no u64 holds it
    calls += fails(pool.alloc_pages, 99)
    calls += fails(pool.alloc_pages, "x")
    calls += fails(pool.alloc_pages, 0, cpu=-1)
    calls += fails(pool.alloc_exact, 0)
    calls += fails(pool.alloc_exact, Index(10**20))
    whole = pool.alloc_pages(pool.max_order - 1)
    calls += 1 + fails(pool.alloc_pages, 0)  # out of memory
    calls += fails(pool.alloc_exact, 1)
    pool.put_page(whole)
    return calls + 1


def views(pool: Any) -> int:
    if not pool.arena:
        return fails(pool.view, 0) + fails(pool.view, "x")
    pfn = pool.alloc_pages(1)
    view = pool.view(pfn)
    view[0:8] = b"pagebudy"
    again = pool.view(Index(pfn))
    calls = 3 + fails(pool.view, pfn + 1)  # a tail page
    pool.put_page(pfn)
    calls += 1 + fails(pool.view, pfn)  # free
    calls += fails(pool.view, 10**30) + fails(pool.view, "x")
    assert again[0] == view[0]
    return calls


def batches(pool: Any, state: dict[str, Any]) -> int:
    pfns = pool.alloc_many(0, 12)
    pool.put_many(pfns)
    for out in state["outs"]:
        # 40 pfns: 320 bytes written, past the small ints that a slice bound would share.
        pool.alloc_many(0, 40, out=out)
        pool.put_many(out[:40] if isinstance(out, np.ndarray) else out.tolist()[:40])
    pool.put_many(pool.alloc_many(1, 3, out=state["q3"]))
    pool.put_many(pool.alloc_many(0, 2, cpu=slot(pool, 1)), cpu=slot(pool, 1))
    return 2 + 2 * len(state["outs"]) + 4


def batch_errors(pool: Any, state: dict[str, Any]) -> int:
    calls = fails(pool.alloc_many, 0, 10**30)
    calls += fails(pool.alloc_many, 0, NR_PAGES + 1)
    calls += fails(pool.alloc_many, 0, -1)
    calls += fails(pool.alloc_many, 99, 1)
    calls += fails(pool.alloc_many, 0, 4, out=state["q3"])  # too small
    calls += fails(pool.alloc_many, 0, 2, out=[0, 0])  # not an array
    calls += fails(pool.alloc_many, 0, 2, out=state["readonly"])
    held = pool.alloc_many(1, 2)
    calls += 1 + fails(pool.put_many, [*held, held[0]])  # the third is not held any more
    calls += fails(pool.put_many, [held[0], 10**30])
    calls += fails(pool.put_many, [held[0], "x"])
    calls += fails(pool.put_many, array.array("Q", [held[1], held[1], held[1]]))
    calls += fails(pool.put_many, 5)
    pool.put_many(held)
    return calls + 1


def queries(pool: Any) -> int:
    assert pool.free_pages == NR_PAGES
    lists = pool.free_lists()
    pool.check()
    text = repr(pool)
    attrs = (
        pool.nr_pages,
        pool.base_pfn,
        pool.page_size,
        pool.max_order,
        pool.reserved_pages,
        pool.arena,
        pool.zero,
        pool.cpus,
        pool.cache_batch,
        pool.cache_high,
    )
    contents = pool.cache_contents() + pool.cache_contents(cpu=slot(pool, 1))
    pool.drain()
    pool.drain(cpu=slot(pool, 1))
    pool.drain_all()
    calls = 8 + len(attrs)
    if isinstance(pool, Pool):
        calls += (pool.metadata_bytes > 0) + (pool.shared in (True, False))
    calls += fails(copy.copy, pool) + fails(copy.deepcopy, pool) + fails(pickle.dumps, pool)
    calls += fails(pool.__init__, NR_PAGES)
    calls += fails(pool.drain, cpu=-1) + fails(pool.cache_contents, cpu="x")
    assert lists and text and isinstance(contents, list)
    return calls


def lifetimes(state: dict[str, Any]) -> int:
    """Pools of every kind built and dropped; a view outlives its pool; refused builds."""
    owned = Pool(NR_PAGES, page_size=4096, zero="alloc")
    keep = owned.view(owned.alloc_pages(2))
    caller = Pool(NR_PAGES, page_size=PAGE_SIZE, buffer=state["numpy_arena"])
    cached = Pool(NR_PAGES, arena=False, cpus=3)
    shared, attached = shared_pair()
    view = attached.view(shared.alloc_pages(0))
    reference = ReferencePool(8, page_size=PAGE_SIZE)
    del owned, caller, cached, shared, attached, reference
    keep[0] = 1
    view[0] = 1
    calls = 9
    calls += fails(Pool, 0)
    calls += fails(Pool, 8, page_size=100)
    calls += fails(Pool, 8, zero="sometimes")
    calls += fails(Pool, 8, arena=False, zero="free")
    calls += fails(Pool, 8, cpus=-1)
    calls += fails(Pool, 8, buffer=b"read-only")
    calls += fails(Pool, 8, page_size=PAGE_SIZE, buffer=bytearray(PAGE_SIZE))
    calls += fails(Pool.create_in, bytearray(100), page_size=PAGE_SIZE)
    calls += fails(Pool.attach, bytearray(shared_bytes()))
    return calls


# ---------------------------------------------------------------------------- measurement


def batch_state() -> dict[str, Any]:
    """The arrays the batch groups fill and read."""
    readonly = np.zeros(4, dtype=np.uint64)
    readonly.flags.writeable = False
    return {
        "outs": [
            array.array("Q", bytes(8 * NR_PAGES)),
            np.zeros(NR_PAGES, dtype=np.uint64),
            memoryview(array.array("Q", bytes(8 * NR_PAGES))),
        ],
        "q3": array.array("Q", bytes(8 * 3)),
        "readonly": readonly,
    }


def keeps_an_int(pool: Any, state: dict[str, Any]) -> int:
    """A leak on purpose: one int kept (32 bytes) every other call."""
    pfn = pool.alloc_pages(0)
    state.setdefault("kept", []).append(pfn + 10**9)
    pool.put_page(pfn)
    return 2


GROUPS: dict[str, Callable[[Any, dict[str, Any]], int]] = {
    "single": lambda pool, _: single(pool),
    "single_errors": lambda pool, _: single_errors(pool),
    "views": lambda pool, _: views(pool),
    "batches": batches,
    "batch_errors": batch_errors,
    "queries": lambda pool, _: queries(pool),
}
#: Groups run only to show that the measurement sees a leak.
CALIBRATION: dict[str, Callable[[Any, dict[str, Any]], int]] = {
    "keeps_an_int": keeps_an_int,
}


def run_group(group: str, calls: int) -> dict[str, Any]:
    """Runs ``group`` for ``calls`` calls after a warm-up; the memory it kept, per call."""
    state = batch_state()
    state["numpy_arena"] = np.zeros(NR_PAGES * PAGE_SIZE // 8)
    if group == "lifetimes":
        rounds: list[tuple[Callable[[], int], int]] = [(lambda: lifetimes(state), calls)]
    else:
        body = {**GROUPS, **CALIBRATION}[group]
        kinds = KINDS if group in GROUPS else {"plain": KINDS["plain"]}
        total = sum(share for _, share in kinds.values())
        rounds = []
        for make, share in kinds.values():
            pool = make()
            rounds.append((lambda p=pool: body(p, state), int(calls * share / total)))

    def run(fraction: float) -> int:
        done = 0
        for fn, quota in rounds:
            mine = 0
            while mine < quota * fraction:
                mine += fn()
            done += mine
        return done

    run(0.1)  # warm-up
    gc.collect()
    rss0, vm0 = memory()
    start = time.perf_counter()
    done = run(1.0)
    elapsed = time.perf_counter() - start
    gc.collect()
    rss1, vm1 = memory()
    return {
        "group": group,
        "calls": done,
        "seconds": round(elapsed, 2),
        "rss_kib": [rss0 >> 10, rss1 >> 10],
        "bytes_per_call": (rss1 - rss0) / done,
        "vm_bytes_per_call": (vm1 - vm0) / done,
    }


def measured(group: str, calls: int = CALLS) -> dict[str, Any]:
    """``run_group`` in a child process (see the module's docstring)."""
    here = os.path.dirname(os.path.abspath(__file__))
    code = (
        f"import sys, json; sys.path.insert(0, {here!r}); import test_leak; "
        f"print(json.dumps(test_leak.run_group({group!r}, {calls})))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return result


def group_calls(group: str) -> int:
    """A group's calls: ``CALLS``, a tenth for lifetimes (a pool built costs about a hundred
    method calls)."""
    return CALLS // 10 if group == "lifetimes" else CALLS


@pytest.mark.parametrize("group", [*GROUPS, "lifetimes"])
def test_memory_stays_flat(group: str) -> None:
    result = measured(group, group_calls(group))
    print(json.dumps(result))
    assert result["calls"] >= group_calls(group), result
    allowed = BYTES_PER_CALL + SLACK / result["calls"]
    assert result["bytes_per_call"] < allowed, result
    assert result["vm_bytes_per_call"] < allowed, result


def test_the_bound_would_catch_the_smallest_leak() -> None:
    """A group that keeps one int every other call (16 bytes a call) measures above the bound.

    Measured the way the groups are, in a child process, with the same warm-up and reading.
    """
    result = measured("keeps_an_int", 200_000)
    assert result["bytes_per_call"] > 10 * BYTES_PER_CALL, result
