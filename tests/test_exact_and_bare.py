"""Exact-size runs (``alloc_exact``) and pools without an arena (``arena=False``).

The differential state machine (``test_differential.py``) runs both against the model; these
tests show what it does not: that a run is contiguous in the arena, that a refused call changes
nothing, the rules of ``arena=False``, and that a pool of 2**30 pages without an arena is built
and used within 12 bytes of metadata a page.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from pagebuddy import OutOfMemory, Pool, ReferencePool

IMPLS = [Pool, ReferencePool]


@pytest.fixture(params=IMPLS, ids=["Pool", "ReferencePool"])
def impl(request: pytest.FixtureRequest) -> Any:
    return request.param


def test_alloc_exact_run_is_contiguous(impl: Any) -> None:
    """Each run of n pages is n consecutive pfns, each held once at order 0, and its bytes are
    n consecutive pages of the caller's buffer; the pages past the run are free again."""
    ps, n_pages = 64, 128
    for n in range(1, 65):
        buf = bytearray(n_pages * ps)
        pool = impl(n_pages, page_size=ps, base_pfn=1024, buffer=buf)
        pfn = pool.alloc_exact(n)
        assert [pool.page_count(p) for p in range(pfn, pfn + n)] == [1] * n
        assert pool.free_pages == n_pages - n
        for i, p in enumerate(range(pfn, pfn + n)):
            view = pool.view(p)
            assert view.nbytes == ps  # an order-0 page
            view[:] = bytes([i + 1]) * ps
        start = (pfn - 1024) * ps
        run = bytes(buf[start : start + n * ps])
        assert run == b"".join(bytes([i + 1]) * ps for i in range(n))
        pool.check()
        for p in range(pfn, pfn + n):  # each page is put on its own
            pool.put_page(p)
        assert pool.free_pages == n_pages
        assert pool.free_lists()[-1] == [1024]  # everything coalesced back
        pool.check()


def test_alloc_exact_puts_back_the_pages_past_the_run(impl: Any) -> None:
    """A run of 5 takes the order-3 block and puts pages 5, 6, 7 back: 5 stays alone (its buddy
    4 is held), 6 and 7 coalesce into an order-1 block."""
    pool = impl(16, page_size=64, max_order=5)
    assert pool.alloc_exact(5) == 0
    assert pool.free_lists() == [[5], [6], [], [8], []]


def test_alloc_exact_refusals_change_nothing(impl: Any) -> None:
    pool = impl(8, page_size=64)
    a = pool.alloc_exact(7)
    before = (pool.free_lists(), [pool.page_count(p) for p in range(8)])
    with pytest.raises(OutOfMemory, match="run of 8 pages"):
        pool.alloc_exact(8)
    for bad in (0, -1, 9, 2**70):
        with pytest.raises(ValueError, match=r"alloc_exact: nr_pages .* runs are 1 to 8 pages"):
            pool.alloc_exact(bad)
    with pytest.raises(TypeError):
        pool.alloc_exact("3")
    assert (pool.free_lists(), [pool.page_count(p) for p in range(8)]) == before
    assert a == 0


def test_arena_less_rules(impl: Any) -> None:
    pool = impl(64, arena=False)
    assert (pool.zero, pool.arena) == ("never", False)
    assert impl(64, arena=False, zero="never").zero == "never"
    with pytest.raises(ValueError, match=r"zero='never'.*no bytes to zero"):
        impl(64, arena=False, zero="free")
    with pytest.raises(ValueError, match="_links='side'"):
        impl(64, arena=False, _links="intrusive")
    with pytest.raises(ValueError, match="takes no buffer"):
        impl(64, arena=False, buffer=bytearray(64 * 4096))
    with pytest.raises(TypeError, match="arena must be a bool"):
        impl(64, arena=0)
    pfn = pool.alloc_pages(2)
    with pytest.raises(TypeError, match=r"view: this pool has no arena \(arena=False\)"):
        pool.view(pfn)
    pool.put_page(pfn)
    pool.check()
    assert impl(64).arena is True


_HUGE = """
import json, resource, time
from pagebuddy import Pool
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t0, r0 = time.perf_counter(), rss()
pool = Pool(1 << 30, arena=False, max_order=20)
built = time.perf_counter() - t0
pfns = pool.alloc_many(0, 4096)
run = pool.alloc_exact(300_000)
top = pool.alloc_pages(19)
pool.put_many(pfns)
pool.put_many(range(run, run + 300_000))
pool.put_page(top)
assert pool.free_pages == 1 << 30
print(json.dumps({"nr_pages": pool.nr_pages, "metadata_bytes": pool.metadata_bytes,
                  "peak_rss_growth": rss() - r0, "build_s": round(built, 2)}))
"""


def _available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 0


@pytest.mark.skipif(sys.maxsize < 2**40, reason="a 2**30-page pool needs a 64-bit address space")
def test_two_to_the_thirty_pages_without_an_arena() -> None:
    """Built once, in a child process (its memory is freed when it exits): 12 bytes a page
    declared, and far less committed, since only the metadata (4 bytes a page) is written at
    construction and the side table (8 bytes a page) only where blocks are listed: the peak
    growth of the resident set is the 4 GiB of metadata and at most 128 MiB more."""
    if _available_bytes() < 6 << 30:
        pytest.skip("a 2**30-page pool wants 6 GiB of available memory")
    out = subprocess.run(
        [sys.executable, "-c", _HUGE],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONHASHSEED": "0"},
        check=True,
    )
    report = json.loads(out.stdout)
    print(f"\n2**30-page pool without an arena: {report}")
    assert report["nr_pages"] == 1 << 30
    assert report["metadata_bytes"] == 12 << 30  # at most 12 bytes a page
    committed = report["peak_rss_growth"]
    assert committed <= (4 << 30) + (128 << 20), f"{committed >> 20} MiB committed, not 4 GiB"


# ------------------------------------------------------------------------- batches as arrays


def test_batches_as_uint64_arrays(impl: Any) -> None:
    """alloc_many writes into a caller's array('Q') or numpy uint64 array and returns it;
    put_many reads either; the pfns are those of the list form, and the pools end alike."""
    import array

    import numpy as np

    lists, arrays = impl(256, page_size=64), impl(256, page_size=64)
    out = array.array("Q", [7] * 12)
    assert arrays.alloc_many(0, 10, out=out) is out
    assert out.tolist() == [*lists.alloc_many(0, 10), 7, 7]
    blocks = np.zeros(3, dtype=np.uint64)
    assert arrays.alloc_many(2, 3, out=blocks) is blocks
    assert blocks.tolist() == lists.alloc_many(2, 3)
    assert arrays.alloc_many(0, 0, out=array.array("Q")) is not None
    arrays.put_many(out[:10])
    lists.put_many(out.tolist()[:10])
    arrays.put_many(blocks)
    lists.put_many(blocks.tolist())
    assert arrays.free_lists() == lists.free_lists()
    assert arrays.free_pages == 256
    arrays.check()


def test_every_kind_of_u64_array_is_read_and_written_alike(impl: Any) -> None:
    # `array.array` itself is read and written through its own methods, anything else with
    # 64-bit unsigned items (a subclass, numpy) through a memoryview: the same pages either way.
    import array

    import numpy as np

    class Sub(array.array):  # type: ignore[type-arg]
        pass

    kinds = [lambda n: array.array("Q", bytes(8 * n)), lambda n: Sub("Q", bytes(8 * n))]
    kinds.append(lambda n: np.zeros(n, np.uint64))
    if array.array("L").itemsize == 8:
        kinds.append(lambda n: array.array("L", bytes(8 * n)))
    pools = [impl(64, page_size=64) for _ in kinds]
    for pool, make in zip(pools, kinds, strict=True):
        out = make(6)
        got = pool.alloc_many(0, 4, out=out)
        assert got is out
        # The first four items are written, the rest left as they were.
        assert list(out) == [0, 1, 2, 3, 0, 0]
        pool.put_many(out[1:3])
        again = make(3)
        pool.alloc_many(1, 3, out=again)
        assert list(again) == [4, 6, 8]
        pool.put_many(again)
    assert all(p.free_lists() == pools[0].free_lists() for p in pools)
    with pytest.raises(TypeError, match=r"alloc_many: out must be a writable 1-D array"):
        pools[0].alloc_many(0, 1, out=array.array("I", bytes(16)))
    with pytest.raises(ValueError, match=r"alloc_many: out holds 1 items, 2 requested"):
        pools[0].alloc_many(0, 2, out=array.array("Q", bytes(8)))
    # An array of 4-byte items is read as an iterable of ints.
    pools[0].put_many(array.array("I", [0]))
    assert pools[0].page_count(0) == 0


def test_array_batches_are_all_or_nothing(impl: Any) -> None:
    import array

    import numpy as np

    pool = impl(64, page_size=64)
    held = pool.alloc_many(0, 4, out=array.array("Q", bytes(32)))
    before = pool.free_lists()
    with pytest.raises(ValueError, match=r"put_many: pfns\[4\]: pfn 0 is not held"):
        pool.put_many(array.array("Q", [*held, held[0]]))  # one put too many: none is put
    with pytest.raises(OutOfMemory):
        pool.alloc_many(0, 61, out=np.zeros(61, np.uint64))
    with pytest.raises(ValueError, match=r"alloc_many: out holds 2 items, 3 requested"):
        pool.alloc_many(0, 3, out=array.array("Q", [0, 0]))
    for bad in (bytearray(64), [0] * 8, np.zeros(8, np.int64), np.zeros((2, 4), np.uint64)):
        with pytest.raises(TypeError, match=r"alloc_many: out must be a writable 1-D array"):
            pool.alloc_many(0, 3, out=bad)
    readonly = np.zeros(8, np.uint64)
    readonly.flags.writeable = False
    with pytest.raises(TypeError, match=r"alloc_many: out must be a writable"):
        pool.alloc_many(0, 3, out=readonly)
    assert pool.free_lists() == before
    pool.put_many(readonly[:0])  # read-only arrays are fine to read
    pool.put_many(np.array(held, dtype=np.int64))  # other int arrays are read as iterables
    assert pool.free_pages == 64
