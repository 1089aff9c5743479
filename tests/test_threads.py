"""Python threads sharing one native ``Pool``.

Several threads run random mixes of ``alloc_pages``, ``get_page``, ``put_page``,
``split_page``, ``alloc_many`` and ``put_many`` on one pool while a shared registry (under a
Python lock) records which thread owns every page. A page handed to a thread while another
thread still owns it is caught twice over: by the registry, and by the bytes each owner writes
through its views (checked again just before the owner puts the block back). Refcounts of owned
pages must match what their owner did. Afterwards ``check()`` must pass, ``free_pages`` must
equal ``nr_pages`` minus the pages still held, and putting everything back must coalesce the
pool to a single block.

A second test shows that ``alloc_many`` and ``put_many`` release the GIL while they work.

``ReferencePool`` is documented as not thread-safe, so only the native pool is tested here.
"""

from __future__ import annotations

import contextlib
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from pagebuddy import OutOfMemory, Pool
from support import claim_pages

NR_PAGES = 512  # one block of order 9: everything coalesces back into it
PAGE_SIZE = 64
THREADS = 6
STEPS = 6000  # per thread
SWITCH_INTERVAL_S = 1e-5  # switch threads far more often than the default 5 ms


@dataclass
class Block:
    order: int
    refs: int
    tag: int


@dataclass
class Shared:
    pool: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    owner: dict[int, int] = field(default_factory=dict)  # page -> thread id
    errors: list[str] = field(default_factory=list)
    ops: dict[str, int] = field(default_factory=dict)

    def claim(self, me: int, head: int, order: int) -> None:
        with self.lock:
            for page, holder in claim_pages(self.owner, me, head, order):
                self.errors.append(
                    f"thread {me} got pfn {page} (block {head}, order {order}) "
                    f"still owned by thread {holder}"
                )

    def release(self, me: int, head: int, order: int) -> None:
        with self.lock:
            for page in range(head, head + (1 << order)):
                got = self.owner.pop(page, None)
                if got != me:
                    self.errors.append(f"thread {me} releases pfn {page} owned by {got}")


class Worker:
    """One thread's random walk over the shared pool."""

    def __init__(self, shared: Shared, me: int, seed: int, start: threading.Barrier) -> None:
        self.shared, self.pool, self.me = shared, shared.pool, me
        self.rng = random.Random(seed)
        self.start = start
        self.held: dict[int, Block] = {}
        self.ops: dict[str, int] = {}

    def fail(self, message: str) -> None:
        self.shared.errors.append(f"thread {self.me}: {message}")

    def took(self, head: int, order: int) -> None:
        self.shared.claim(self.me, head, order)
        tag = self.rng.randrange(1, 256)
        view = self.pool.view(head)
        if len(view) != PAGE_SIZE << order:
            self.fail(f"view of {head} has {len(view)} bytes, order {order}")
        view[:] = bytes([tag]) * len(view)
        self.held[head] = Block(order, 1, tag)
        if self.pool.page_count(head) != 1:
            self.fail(f"fresh block {head} has refcount {self.pool.page_count(head)}")

    def verify(self, head: int) -> None:
        block = self.held[head]
        data = bytes(self.pool.view(head))
        if data != bytes([block.tag]) * (PAGE_SIZE << block.order):
            self.fail(f"block {head} (order {block.order}) was overwritten by someone else")
        if self.pool.page_count(head) != block.refs:
            self.fail(f"block {head}: refcount {self.pool.page_count(head)}, not {block.refs}")

    def drop(self, head: int) -> None:
        """Put one reference; the last one gives the block back (registry first)."""
        self.verify(head)
        block = self.held[head]
        if block.refs == 1:
            del self.held[head]
            self.shared.release(self.me, head, block.order)
        else:
            block.refs -= 1
        self.pool.put_page(head)

    def step(self) -> None:
        rng, pool = self.rng, self.pool
        op = rng.choice(
            ["alloc", "alloc", "alloc_many", "put", "put", "put_many", "get", "split", "check"]
        )
        self.ops[op] = self.ops.get(op, 0) + 1
        heads = list(self.held)
        if op == "alloc":
            order = rng.choice([0, 0, 0, 1, 1, 2, 3, 4])
            with contextlib.suppress(OutOfMemory):
                self.took(pool.alloc_pages(order), order)
        elif op == "alloc_many":
            order, count = rng.choice([0, 0, 1, 2]), rng.randrange(0, 24)
            try:
                pfns = pool.alloc_many(order, count)
            except OutOfMemory:
                return
            if len(pfns) != count or len(set(pfns)) != count:
                self.fail(f"alloc_many({order}, {count}) returned {pfns}")
            for pfn in pfns:
                self.took(pfn, order)
        elif op == "put" and heads:
            self.drop(rng.choice(heads))
        elif op == "put_many" and heads:
            batch = rng.sample(heads, min(len(heads), rng.randrange(1, 16)))
            for head in batch:
                self.verify(head)
                block = self.held[head]
                block.refs -= 1
                if block.refs == 0:
                    del self.held[head]
                    self.shared.release(self.me, head, block.order)
            pool.put_many(batch)
        elif op == "get" and heads:
            head = rng.choice(heads)
            pool.get_page(head)
            self.held[head].refs += 1
            self.verify(head)
        elif op == "split" and heads:
            head = rng.choice(heads)
            block = self.held[head]
            self.verify(head)
            pool.split_page(head)
            for tail in range(head + 1, head + (1 << block.order)):
                self.held[tail] = Block(0, 1, block.tag)
                self.verify(tail)
            block.order = 0
            self.verify(head)
        elif op == "check":
            pool.check()

    def run(self) -> None:
        try:
            self.start.wait()
            for _ in range(STEPS):
                self.step()
        except Exception as exc:  # report it, let the others finish
            self.fail(f"{type(exc).__name__}: {exc}")


@pytest.mark.parametrize("zero", ["free", "alloc"])
@pytest.mark.parametrize("links", ["side", "intrusive"])
def test_threads_share_one_pool(links: str, zero: str) -> None:
    pool = Pool(NR_PAGES, page_size=PAGE_SIZE, zero=zero, _links=links)
    shared = Shared(pool)
    start = threading.Barrier(THREADS)
    workers = [Worker(shared, me, seed=1000 * me + 7, start=start) for me in range(THREADS)]
    threads = [threading.Thread(target=w.run, name=f"pool-{w.me}") for w in workers]
    old = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
            assert not t.is_alive(), "a worker hung"
    finally:
        sys.setswitchinterval(old)
    assert not shared.errors, "\n".join(shared.errors[:20])

    pool.check()
    held_pages = sum(1 << b.order for w in workers for b in w.held.values())
    assert pool.free_pages == NR_PAGES - held_pages
    assert len(shared.owner) == held_pages
    for w in workers:
        for head, block in w.held.items():
            assert pool.page_count(head) == block.refs
            assert all(shared.owner[p] == w.me for p in range(head, head + (1 << block.order)))
            assert all(pool.page_count(p) == 0 for p in range(head + 1, head + (1 << block.order)))
    # Every kind of operation ran, and ran a fair number of times.
    for op in ("alloc", "alloc_many", "put", "put_many", "get", "split", "check"):
        assert sum(w.ops.get(op, 0) for w in workers) > 100, op

    for w in workers:
        pool.put_many([h for h, b in w.held.items() for _ in range(b.refs)])
    assert pool.free_pages == NR_PAGES
    assert pool.free_lists() == [[] for _ in range(9)] + [[0]]
    pool.check()


def test_threads_batch_only_contention() -> None:
    """Threads doing nothing but batch calls: every block comes back, nothing lost."""
    pool = Pool(NR_PAGES, page_size=PAGE_SIZE, base_pfn=3, reserved_pages=1)
    errors: list[str] = []
    start = threading.Barrier(4)

    def run(seed: int) -> None:
        rng = random.Random(seed)
        start.wait()
        try:
            for _ in range(800):
                order = rng.randrange(0, 3)
                try:
                    pfns = pool.alloc_many(order, rng.randrange(1, 40))
                except OutOfMemory:
                    continue
                rng.shuffle(pfns)
                pool.put_many(pfns)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert pool.free_pages == NR_PAGES - 1
    pool.check()
    pool.put_page(3)
    assert pool.free_pages == NR_PAGES
    pool.check()


@contextlib.contextmanager
def spinner() -> Iterator[Callable[[Callable[[], Any]], bool]]:
    """Yield ``ran_during(call)``: whether another Python thread ran while ``call()`` ran.

    The switch interval is made huge, so the spinning thread can take the GIL only when the
    main thread gives it up of its own accord (a blocking call, or native code releasing it).
    """
    counter = [0]
    stop = threading.Event()
    started = threading.Event()

    def spin() -> None:
        started.set()
        while not stop.is_set():
            counter[0] += 1
            time.sleep(0)  # hand the GIL back at once, so the main thread never waits long

    def ran_during(call: Callable[[], Any]) -> bool:
        before = counter[0]
        call()
        return counter[0] != before

    old = sys.getswitchinterval()
    thread = threading.Thread(target=spin)
    sys.setswitchinterval(1000.0)
    try:
        thread.start()
        started.wait()
        yield ran_during
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(old)


def test_batch_calls_release_the_gil() -> None:
    """While alloc_many/put_many work, another thread runs; during pure Python it cannot."""
    pool = Pool(1 << 18, page_size=64, zero="never")
    pfns: list[int] = []

    def alloc() -> None:
        pfns[:] = pool.alloc_many(0, 1 << 18)

    def put() -> None:
        pool.put_many(pfns)

    def python_busy() -> None:
        sum(range(300_000))

    # The thread gets the GIL within a few tries when it is released (more when the machine
    # is loaded and the spinning thread is slow to be scheduled).
    tries = 50
    with spinner() as ran_during:

        def alloc_released() -> bool:
            released = ran_during(alloc)
            put()
            return released

        def put_released() -> bool:
            alloc()
            return ran_during(put)

        assert not any(ran_during(python_busy) for _ in range(20))
        assert any(alloc_released() for _ in range(tries)), "alloc_many kept the GIL"
        assert any(put_released() for _ in range(tries)), "put_many kept the GIL"
    assert pool.free_pages == 1 << 18
    pool.check()
