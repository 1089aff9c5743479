"""Shared pools' lock between processes: a robust, process-shared mutex in the header, which no
PID namespace, reused pid or stopped holder fools; waits that time out and answer Ctrl-C; and
refusals that leave every byte as it was."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from multiprocessing import shared_memory
from typing import Any

import pytest

from pagebuddy import CorruptionError, Pool
from pagebuddy._native import _stop_after
from pagebuddy._shared import (
    LOCK_WORD,
    STATE_WORD,
    boot_word,
    lock_area,
    lock_holder,
    pool_bytes,
)

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="robust process-shared mutexes: Linux"
)


@pytest.fixture
def shm() -> Iterator[shared_memory.SharedMemory]:
    block = shared_memory.SharedMemory(create=True, size=pool_bytes(256))
    try:
        yield block
    finally:
        block.close()
        block.unlink()


def _stop_inside_batch(name: str) -> None:
    """A child that stops itself (SIGSTOP) between two steps of a batch: alive, holding the
    pool's lock, not running."""
    block = shared_memory.SharedMemory(name=name)
    pool = Pool.attach(block.buf)
    _stop_after(3)
    pool.alloc_many(0, 8)
    os._exit(0)


@contextlib.contextmanager
def _stopped_holder(name: str) -> Iterator[Any]:
    """A forked child stopped inside an operation on the pool in ``name``, killed on the way out
    unless the test resumed it (``_resume``): a stopped child outlives its test otherwise, and
    keeps open the pipes it inherited from the test process."""
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_stop_inside_batch, args=(name,))
    child.start()
    assert child.pid is not None
    try:
        while True:  # until it has stopped
            _, status = os.waitpid(child.pid, os.WUNTRACED | os.WNOHANG)
            if status and os.WIFSTOPPED(status):
                break
            time.sleep(0.001)
        yield child
    finally:
        if child.exitcode is None:
            os.kill(child.pid, signal.SIGKILL)
            child.join()


def _resume(child: Any) -> None:
    assert child.pid is not None
    os.kill(child.pid, signal.SIGCONT)
    child.join()
    assert child.exitcode == 0


def test_a_stopped_holder_makes_waiters_time_out_and_changes_nothing(
    shm: shared_memory.SharedMemory,
) -> None:
    pool = Pool.create_in(shm.buf, timeout=0.2)
    assert pool.timeout == 0.2 and Pool.attach(shm.buf).timeout is None
    assert Pool(8).timeout is None
    free = pool.free_pages
    with _stopped_holder(shm.name) as child:
        assert lock_holder(shm.buf) == child.pid
        with pytest.raises(TimeoutError, match=r"timeout=0\.2 s"):
            pool.alloc_pages(0)
        with pytest.raises(TimeoutError):
            pool.alloc_many(0, 2)
        with pytest.raises(TimeoutError):
            Pool.attach(shm.buf, timeout=0.05)
        _resume(child)  # it finishes its batch: only its 8 pages are taken
    assert pool.free_pages == free - 8
    pool.check()


def test_a_waiter_gets_keyboard_interrupt_and_other_threads_run(
    shm: shared_memory.SharedMemory,
) -> None:
    pool = Pool.create_in(shm.buf)
    ticks = 0
    stop = threading.Event()
    # SIGINT raises KeyboardInterrupt (Python's own handler) only while armed, around the wait:
    # a signal still on its way once the waiter has been interrupted, or sent while the test
    # cleans up, is dropped instead of raising where nothing catches it (in the test runner,
    # which would take it for Ctrl-C and stop).
    armed = False

    def on_sigint(signum: int, frame: Any) -> None:
        if armed:
            signal.default_int_handler(signum, frame)

    def tick() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0.001)

    def interrupt() -> None:
        # SIGINT every 0.2 s until the waiter is interrupted: one signal that lands before the
        # wait starts (a loaded machine) is answered where it lands, and the next one reaches
        # the wait.
        while not stop.wait(0.2):
            os.kill(os.getpid(), signal.SIGINT)

    ticker = threading.Thread(target=tick)
    sender = threading.Thread(target=interrupt)
    interrupted = False
    before = ticks
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        with _stopped_holder(shm.name) as child:
            try:
                ticker.start()
                sender.start()
                while not interrupted:
                    entered = float("inf")
                    try:
                        before, entered = ticks, time.monotonic()
                        armed = True
                        try:
                            pool.alloc_pages(0)  # no timeout: waits until interrupted
                        finally:
                            armed = False
                    except KeyboardInterrupt:
                        # Raised by the wait, not by a signal that landed before it began.
                        interrupted = time.monotonic() - entered > 0.05
                    else:
                        pytest.fail("alloc_pages returned while a stopped process held the lock")
                assert ticks > before  # the other thread ran while this one waited
            finally:
                stop.set()
                for thread in (sender, ticker):
                    if thread.is_alive():
                        thread.join()
                _resume(child)
    finally:
        # The sender has stopped and its last signal has been dropped by now.
        signal.signal(signal.SIGINT, previous)
    assert lock_holder(shm.buf) == 0
    pool.check()


@pytest.mark.parametrize("who", ["caller", "live process"])
def test_a_lock_word_naming_a_live_process_does_not_hang(who: str) -> None:
    buf = bytearray(pool_bytes(64))
    pool = Pool.create_in(buf, timeout=5)
    del pool
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pid = os.getpid() if who == "caller" else sleeper.pid
        struct.pack_into("=I", buf, LOCK_WORD, pid)
        pool = Pool.attach(buf, timeout=5)
        assert lock_holder(buf) == 0
        struct.pack_into("=I", buf, LOCK_WORD, pid)  # and on a handle already open
        pfn = pool.alloc_pages(1)
        pool.put_page(pfn)
        assert pool.free_pages == pool.nr_pages
        pool.check()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_lock_left_from_an_earlier_boot_is_initialised_anew() -> None:
    buf = bytearray(pool_bytes(64))
    Pool.create_in(buf)
    # A futex word naming a thread of another boot, and that boot's id.
    struct.pack_into("=I", buf, lock_area(buf), 12345)
    struct.pack_into("=Q", buf, boot_word(buf), 0x1234_5678_9ABC_DEF0)
    pool = Pool.attach(buf, timeout=5)
    assert struct.unpack_from("=I", buf, lock_area(buf))[0] == 0
    pool.put_page(pool.alloc_pages(0))
    pool.check()


def test_version_3_buffers_are_refused_untouched() -> None:
    buf = bytearray(pool_bytes(32))
    Pool.create_in(buf)
    struct.pack_into("=I", buf, 8, 3)
    before = bytes(buf)
    with pytest.raises(ValueError, match=r"layout version 3.*format the buffer anew"):
        Pool.attach(buf)
    assert bytes(buf) == before


def _meta_offset(buf: Any) -> int:
    return int(struct.unpack_from("=Q", buf, 56)[0])


@pytest.mark.parametrize("boot", ["this boot", "earlier boot"])
def test_a_refused_attach_leaves_every_byte_as_it_was(boot: str) -> None:
    """A dead holder's pid in the lock word, a batch's scratch bit in the state word, counts in
    scratch bytes, and metadata that breaks an invariant: refused, and not one byte written."""
    buf = bytearray(pool_bytes(64))
    pool = Pool.create_in(buf)
    pool.alloc_many(0, 3)
    del pool
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    struct.pack_into("=I", buf, LOCK_WORD, dead.pid)
    struct.pack_into("=I", buf, STATE_WORD, 4)  # SCRATCH: a batch was counting
    meta = _meta_offset(buf)
    buf[meta + 3] = 2  # page 0's scratch byte
    buf[meta + 4 * 40] = 7  # page 40, in a free block, claims a refcount
    if boot == "earlier boot":
        struct.pack_into("=Q", buf, boot_word(buf), 0x1234_5678_9ABC_DEF0)
    before = bytes(buf)
    with pytest.raises(CorruptionError):
        Pool.attach(buf, timeout=5)
    assert bytes(buf) == before


def test_a_refused_create_in_writes_nothing() -> None:
    buf = bytearray(pool_bytes(32))
    buf[:] = bytes(range(256)) * (len(buf) // 256) + bytes(len(buf) % 256)
    before = bytes(buf)
    for bad in [{"page_size": 100}, {"max_order": 0}, {"timeout": -1}, {"timeout": "x"}]:
        with pytest.raises((ValueError, TypeError)):
            Pool.create_in(buf, **bad)
        assert bytes(buf) == before
    with pytest.raises(ValueError, match="timeout"):
        Pool.attach(buf, timeout=float("nan"))


_NAMESPACED = """
import sys
from multiprocessing import resource_tracker
from pagebuddy._shared import worker_loop
# The block belongs to the host's test, which unlinks it: not this process's tracker.
resource_tracker.register = lambda *args: None
res = worker_loop(sys.argv[1], 2, int(sys.argv[2]), 7, check_every=10, free_at_end=True,
                  batches=True)
print(res.ops, res.stamp_errors, res.checks)
"""


#: A new PID namespace (with its own /proc), as a container has.
UNSHARE = ["unshare", "-p", "-f", "--mount-proc"]


def _unshare_works() -> bool:
    try:
        r = subprocess.run([*UNSHARE, "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def test_mutual_exclusion_with_a_process_in_another_pid_namespace(
    shm: shared_memory.SharedMemory,
) -> None:
    """A process in its own PID namespace (where the host's pids do not exist) and a host
    process share the pool for 1,000 rounds each: stamps written into held pages are never
    overwritten by the other, and check() passes on both sides throughout."""
    if not _unshare_works():
        pytest.skip("unshare -p -f --mount-proc is refused here (needs root or user namespaces)")
    from pagebuddy._shared import worker_loop

    pool = Pool.create_in(shm.buf, max_order=4)
    rounds = 1000
    inside = subprocess.Popen(
        [*UNSHARE, sys.executable, "-c", _NAMESPACED, shm.name, str(rounds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    host = worker_loop(shm.name, 1, rounds, 3, check_every=10, free_at_end=True, batches=True)
    out, _ = inside.communicate(timeout=600)
    assert inside.returncode == 0, out
    ops, stamp_errors, checks = map(int, out.split())
    assert (ops, stamp_errors) == (rounds, 0) and checks == rounds // 10
    assert (host.ops, host.stamp_errors) == (rounds, 0)
    assert pool.free_pages == pool.nr_pages
    pool.check()


def test_create_in_over_a_live_plain_pool_is_refused_untouched() -> None:
    ba = bytearray(pool_bytes(64))
    plain = Pool(64, buffer=ba)
    pfn = plain.alloc_pages(0)
    plain.view(pfn)[:4] = b"mine"
    before = bytes(ba)
    with pytest.raises(ValueError, match="overlaps the arena of a live Pool"):
        Pool.create_in(ba)
    with pytest.raises(ValueError, match="overlaps"):
        Pool.attach(ba)
    assert bytes(ba) == before
    del plain


def test_a_plain_pool_over_a_live_shared_buffer_or_its_views_is_refused() -> None:
    ba = bytearray(pool_bytes(64))
    shared = Pool.create_in(ba)
    pfn = shared.alloc_pages(3)
    before = bytes(ba)
    with pytest.raises(ValueError, match="buffer of a live shared Pool"):
        Pool(15, buffer=ba)
    with pytest.raises(ValueError, match="buffer of a live shared Pool"):
        Pool(8, buffer=shared.view(pfn))
    with pytest.raises(ValueError, match="buffer of a live shared Pool"):
        Pool(8, buffer=shared.view(pfn), cpus=1)
    with pytest.raises(ValueError, match="buffer of a live shared Pool"):
        Pool.create_in(shared.view(pfn))
    assert bytes(ba) == before
    shared.check()


def test_a_second_create_in_over_a_live_shared_buffer_is_refused() -> None:
    ba = bytearray(pool_bytes(64))
    first = Pool.create_in(ba)
    pfn = first.alloc_pages(0)
    before = bytes(ba)
    with pytest.raises(ValueError, match="buffer of a live shared Pool"):
        Pool.create_in(ba)
    with pytest.raises(ValueError, match="buffer of a live shared Pool"):
        Pool.create_in(memoryview(ba)[: len(ba) // 2])
    assert bytes(ba) == before and first.page_count(pfn) == 1
    second = Pool.attach(ba)  # what shared pools are for
    assert second.page_count(pfn) == 1
    del first, second
    again = Pool.create_in(ba)  # once every handle is gone
    assert again.free_pages == again.nr_pages


def _fork_child_op(pool: Pool) -> None:
    """In a forked child: one operation, which succeeds or times out, then exit 0 (1 for any
    other outcome)."""
    code = 1
    try:
        pool.put_page(pool.alloc_pages(0))
        code = 0
    except TimeoutError:
        code = 0
    finally:
        os._exit(code)


def _fork_during_batches(pool: Pool) -> None:
    """Fork 20 times while another thread runs batches on ``pool``: every child's operation on
    it completes (or times out); none blocks."""
    stop = threading.Event()

    def batches() -> None:
        while not stop.is_set():
            pool.put_many(pool.alloc_many(0, 64))

    worker = threading.Thread(target=batches)
    worker.start()
    try:
        for _ in range(20):
            pid = os.fork()
            if pid == 0:
                _fork_child_op(pool)
            deadline = time.monotonic() + 60
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                assert time.monotonic() < deadline, "the child blocked past its timeout"
                time.sleep(0.01)
            assert os.waitstatus_to_exitcode(status) == 0
    finally:
        stop.set()
        worker.join()
    assert pool.free_pages == pool.nr_pages
    pool.check()


@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
@pytest.mark.parametrize("memory", ["shared", "private"])
def test_fork_with_a_batch_in_flight_never_blocks_the_child_past_its_timeout(memory: str) -> None:
    """A thread runs batches while the main thread forks: the fork waits until the batch has
    released the pool's lock, so a child's copy of it (a private buffer) is never held by a
    thread the child does not have; each child's operation completes (or, were it held, would
    raise TimeoutError after 0.5 s rather than block)."""
    if memory == "private":
        _fork_during_batches(Pool.create_in(bytearray(pool_bytes(256)), timeout=0.5))
        return
    block = shared_memory.SharedMemory(create=True, size=pool_bytes(256))
    try:
        _fork_during_batches(Pool.create_in(block.buf, timeout=0.5))
    finally:
        block.close()
        block.unlink()


@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
@pytest.mark.parametrize("kind", ["plain", "intrusive", "cached"])
def test_fork_with_a_batch_in_flight_on_an_in_process_pool(kind: str) -> None:
    """A plain pool handed off to a batch, or a cached pool's lock held by one, at the fork
    would be held in the child by a thread it does not have: the fork waits until the batch
    has given the pool back, and every child's operation completes."""
    extra: dict[str, Any] = {"cpus": 2} if kind == "cached" else {}
    if kind == "intrusive":
        extra["buffer"] = bytearray(256 * 4096)
    _fork_during_batches(Pool(256, **extra))
