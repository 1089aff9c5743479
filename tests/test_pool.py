"""Plain tests of the Python API of ``pagebuddy.Pool`` (and of ``ReferencePool`` where shared).

Every test that states contract behaviour runs on both classes: the native ``Pool`` and the
pure-Python ``ReferencePool`` must behave alike, so the same assertions hold for both. Tests of
native-only behaviour (shared arenas, exports held by the Rust side) say so in their name.

Covered: each exception class and its message (naming the pfn or order and the rule broken);
failed calls leaving the pool untouched; bytearray, ``mmap.mmap`` and numpy arenas (views write
into the caller's buffer at ``(pfn - base_pfn) * page_size``); views outliving their pool;
exports pinning a bytearray or mmap; refused buffers; constructor validation; bytes past
``nr_pages * page_size`` never touched; ``alloc_many`` and ``put_many`` all or
nothing; ``repr``; docstrings; read-only attributes.
"""

from __future__ import annotations

import array
import contextlib
import gc
import mmap
import pydoc
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

import pagebuddy
from pagebuddy import CorruptionError, OutOfMemory, PageError, Pool, ReferencePool

POOL_CLASSES = [Pool, ReferencePool]
LINKS = ["side", "intrusive"]
ZEROS = ["free", "alloc", "never"]
MAX_REFCOUNT = 65535
LINK_BYTES = 16  # prev, next, a hint and zeros at the start of a free head page (intrusive)

PUBLIC_METHODS = [
    "alloc_pages",
    "alloc_many",
    "get_page",
    "put_page",
    "put_many",
    "split_page",
    "page_count",
    "free_lists",
    "view",
    "check",
]
ATTRIBUTES = [
    "free_pages",
    "nr_pages",
    "base_pfn",
    "page_size",
    "max_order",
    "zero",
    "reserved_pages",
]


@pytest.fixture(params=POOL_CLASSES, ids=lambda cls: cls.__name__)
def cls(request: pytest.FixtureRequest) -> type:
    """Each pool class in turn."""
    return request.param


class Index:
    """An int-like object: only ``__index__``, as ``operator.index`` requires."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        # In test ids: the same in every pytest-xdist worker, unlike the default's address.
        return f"Index({self.value})"


def pfns_of(pool: Any) -> range:
    return range(pool.base_pfn, pool.base_pfn + pool.nr_pages)


def state(pool: Any, buffer: Any = None) -> tuple[Any, ...]:
    """Everything observable about a pool: lists, free pages, refcounts and, given, the arena."""
    arena = bytes(memoryview(buffer).cast("B")) if buffer is not None else None
    refcounts = [pool.page_count(pfn) for pfn in pfns_of(pool)]
    return pool.free_lists(), pool.free_pages, refcounts, arena


def capacity(pool: Any, order: int) -> int:
    """How many blocks of ``order`` the free lists can supply."""
    lists = pool.free_lists()
    return sum(len(lists[j]) << (j - order) for j in range(order, pool.max_order))


def raises(exc: type[BaseException], fn: Callable[..., Any], *args: Any) -> str:
    """Call ``fn(*args)``, require exactly ``exc`` (not a subclass) and return its message."""
    with pytest.raises(exc) as info:
        fn(*args)
    assert type(info.value) is exc, f"{type(info.value).__name__} instead of {exc.__name__}"
    return str(info.value)


# ------------------------------------------------------------------------- policy basics


def test_initial_state_and_fifo_order(cls: type) -> None:
    """Construction puts pages one by one; alloc takes list heads and appends upper halves."""
    pool = cls(9, page_size=64, base_pfn=5)
    assert pool.max_order == 4  # min(11, (9).bit_length())
    assert pool.free_lists() == [[5], [6, 12], [8], []]
    assert pool.free_pages == 9
    assert pool.alloc_pages(0) == 5
    assert pool.alloc_pages(0) == 6  # head of list 1 split: 7 joins list 0
    assert pool.free_lists() == [[7], [12], [8], []]
    assert pool.alloc_pages(2) == 8
    assert pool.page_count(8) == 1
    assert [pool.page_count(p) for p in (9, 10, 11)] == [0, 0, 0]  # tails
    pool.put_page(6)
    assert pool.free_lists() == [[], [12, 6], [], []]
    pool.check()


def test_effective_max_order_is_clamped(cls: type) -> None:
    for nr_pages, cap, expected in [(1, 11, 1), (8, 11, 4), (9, 2, 2), (2**11, 11, 11), (3, 1, 1)]:
        pool = cls(nr_pages, page_size=64, max_order=cap)
        assert pool.max_order == expected
        assert len(pool.free_lists()) == expected


def test_reserved_pages_stay_held(cls: type) -> None:
    pool = cls(8, page_size=64, reserved_pages=3)
    assert [pool.page_count(p) for p in range(8)] == [1, 1, 1, 0, 0, 0, 0, 0]
    assert pool.free_pages == 5
    assert pool.free_lists() == [[3], [], [4], []]
    assert len(pool.view(1)) == 64
    pool.put_page(2)
    pool.put_page(0)
    pool.put_page(1)
    assert pool.free_lists() == [[], [], [], [0]]
    pool.check()


def test_split_get_and_refcounts(cls: type) -> None:
    pool = cls(16, page_size=64)
    head = pool.alloc_pages(2)
    pool.get_page(head)
    assert pool.page_count(head) == 2
    assert len(pool.view(head)) == 64 << 2
    pool.split_page(head)
    assert [pool.page_count(head + i) for i in range(4)] == [2, 1, 1, 1]
    assert len(pool.view(head + 3)) == 64
    assert len(pool.view(head)) == 64
    pool.split_page(head)  # order 0 now: a no-op
    for pfn in (head + 3, head + 1, head, head, head + 2):
        pool.put_page(pfn)
    assert pool.free_pages == 16
    assert pool.free_lists() == [[], [], [], [], [0]]
    pool.check()


def test_bools_and_index_objects_are_ints(cls: type) -> None:
    pool = cls(True, page_size=64, base_pfn=False, reserved_pages=False, max_order=True)
    assert (pool.nr_pages, pool.base_pfn, pool.max_order) == (1, 0, 1)
    assert type(pool.nr_pages) is int
    assert pool.alloc_pages(False) == 0
    pool.get_page(Index(0))
    pool.put_page(np.uint64(0))
    pool.put_page(False)
    big = cls(Index(4), page_size=Index(64), base_pfn=np.int64(4), reserved_pages=np.uint8(1))
    assert big.alloc_pages(True) == 6
    assert big.page_count(Index(6)) == 1
    assert big.alloc_many(np.int32(0), Index(1)) == [5]
    big.put_many([Index(6), np.int64(5), True * 4])
    assert big.free_pages == 4


def test_index_objects_out_of_range_are_classified_like_ints(cls: type) -> None:
    """An ``__index__`` object out of every range fails like the int it stands for."""
    pool = cls(8, page_size=64)
    for value in (-1, 2**64, 2**70):
        raises(PageError, pool.put_page, Index(value))
        raises(PageError, pool.page_count, Index(value))
        raises(PageError, pool.put_many, [Index(value)])
        raises(ValueError, pool.alloc_pages, Index(value))
        raises(ValueError, lambda v=value: cls(Index(v), page_size=64))
    raises(ValueError, pool.alloc_many, 0, Index(-1))
    raises(OutOfMemory, pool.alloc_many, 0, Index(2**70))
    assert pool.free_pages == 8


def test_messages_name_the_value_of_an_index_object_not_its_repr() -> None:
    """A message names the int an ``__index__`` object stands for, as the model's does."""
    messages = []
    for pool_cls in (Pool, ReferencePool):
        pool = pool_cls(8, page_size=64)
        cached = pool_cls(8, page_size=64, cpus=2)
        got = [
            raises(ValueError, pool.alloc_exact, Index(2**70)),
            raises(ValueError, pool.alloc_exact, Index(0)),
            raises(ValueError, lambda c=cached: c.alloc_pages(0, cpu=Index(-5))),
            raises(ValueError, lambda p=pool: p.alloc_pages(0, cpu=Index(-5))),
            raises(ValueError, lambda c=pool_cls: c(8, page_size=64, max_order=Index(-3))),
        ]
        for message in got:
            assert "Index" not in message and "object at" not in message, message
        assert str(2**70) in got[0] and "-5" in got[2] and "-3" in got[4]
        messages.append(got)
    assert messages[0][:4] == messages[1][:4]  # the calls; the constructors word theirs apart


# ------------------------------------------------------------------------- exceptions


def test_exception_hierarchy() -> None:
    assert issubclass(PageError, ValueError)
    assert issubclass(OutOfMemory, MemoryError)
    assert issubclass(CorruptionError, RuntimeError)
    assert pagebuddy.PageError is PageError
    assert pagebuddy.OutOfMemory is OutOfMemory
    assert pagebuddy.CorruptionError is CorruptionError
    for exc in (PageError, OutOfMemory, CorruptionError):
        assert exc.__module__ == "pagebuddy"
        assert exc.__doc__


def test_invalid_order_is_a_value_error_naming_the_order(cls: type) -> None:
    pool = cls(9, page_size=64)
    for order in (4, 5, 11, -1, 2**64, 2**100, -(2**100)):
        msg = raises(ValueError, pool.alloc_pages, order)
        assert f"order {order} " in msg and "invalid" in msg and "0 to 3" in msg, msg
        msg = raises(ValueError, pool.alloc_many, order, 1)
        assert f"order {order} " in msg and "0 to 3" in msg, msg


def test_out_of_memory_names_the_order(cls: type) -> None:
    pool = cls(9, page_size=64, base_pfn=5)
    pool.alloc_pages(2)
    msg = raises(OutOfMemory, pool.alloc_pages, 3)
    assert "order >= 3" in msg and "out of memory" in msg, msg
    pool.alloc_many(0, pool.free_pages)
    for order in range(pool.max_order):
        msg = raises(OutOfMemory, pool.alloc_pages, order)
        assert f"order >= {order}" in msg, msg


def test_page_errors_name_pfn_and_rule(cls: type) -> None:
    pool = cls(8, page_size=64, base_pfn=8)
    head = pool.alloc_pages(1)
    assert head == 8
    assert pool.free_lists() == [[], [10], [12], []]
    free = 12
    for op in ("put_page", "get_page", "split_page", "view"):
        fn = getattr(pool, op)
        msg = raises(PageError, fn, free)
        assert f"{op}: pfn {free} is not held" in msg and "free page" in msg, msg
        msg = raises(PageError, fn, head + 1)
        assert f"{op}: pfn {head + 1} is not held" in msg and "tail page" in msg, msg
    for op in ("put_page", "get_page", "split_page", "view", "page_count"):
        fn = getattr(pool, op)
        for pfn in (7, 16, 0, -1, 2**64 - 1, 2**64, 2**80, -(2**80)):
            msg = raises(PageError, fn, pfn)
            assert f"{op}: pfn {pfn} is outside the pool" in msg, msg


def test_messages_are_exact(cls: type) -> None:
    """The texts of the rulebook, word for word, from both pools."""
    pool = cls(16, page_size=64, reserved_pages=12)  # 12 o2 free, its buddy 8 held
    with pytest.raises(PageError) as info:
        pool.put_page(12)
    assert str(info.value) == "put_page: pfn 12 is not held (refcount 0: free page)"
    with pytest.raises(ValueError) as info:
        cls(1024, page_size=64).alloc_pages(12)
    assert str(info.value) == "alloc_pages: order 12 is invalid: this pool has orders 0 to 10"
    pool = cls(8, page_size=64, reserved_pages=3)  # [[3], [], [4], []]
    with pytest.raises(OutOfMemory) as info:
        pool.alloc_pages(3)
    assert str(info.value).startswith("alloc_pages: out of memory: no free block of order >= 3")
    for _ in range(MAX_REFCOUNT - 1):
        pool.get_page(2)  # a reserved page, held once
    with pytest.raises(PageError) as info:
        pool.get_page(2)
    assert str(info.value) == "get_page: pfn 2 refcount would overflow 65535"


def test_double_put_is_a_page_error(cls: type) -> None:
    pool = cls(4, page_size=64)
    pfn = pool.alloc_pages(0)
    pool.put_page(pfn)
    msg = raises(PageError, pool.put_page, pfn)
    assert f"pfn {pfn} is not held" in msg, msg


def test_refcount_overflow(cls: type) -> None:
    pool = cls(2, page_size=64)
    pfn = pool.alloc_pages(0)
    for _ in range(MAX_REFCOUNT - 1):
        pool.get_page(pfn)
    assert pool.page_count(pfn) == MAX_REFCOUNT
    msg = raises(PageError, pool.get_page, pfn)
    assert f"get_page: pfn {pfn} refcount would overflow 65535" in msg, msg
    assert pool.page_count(pfn) == MAX_REFCOUNT
    for _ in range(MAX_REFCOUNT):
        pool.put_page(pfn)
    assert pool.page_count(pfn) == 0
    pool.check()


@pytest.mark.parametrize("bad", ["1", 1.0, None, b"\x00", [0], object(), 1j])
def test_type_errors_name_the_argument(cls: type, bad: Any) -> None:
    pool = cls(4, page_size=64)
    pool.alloc_pages(0)
    for op in ("put_page", "get_page", "split_page", "view", "page_count"):
        msg = raises(TypeError, getattr(pool, op), bad)
        assert f"{op}: pfn must be an int" in msg, msg
    msg = raises(TypeError, pool.alloc_pages, bad)
    assert "alloc_pages: order must be an int" in msg, msg
    msg = raises(TypeError, pool.alloc_many, bad, 1)
    assert "alloc_many: order must be an int" in msg, msg
    msg = raises(TypeError, pool.alloc_many, 0, bad)
    assert "alloc_many: count must be an int" in msg, msg
    msg = raises(TypeError, pool.put_many, [0, bad])
    assert "put_many: pfns[1] must be an int" in msg, msg


def test_check_raises_corruption_error_naming_the_page(cls: type) -> None:
    """Under zero="free" free memory must read as zero; a stale view can break that."""
    pool = cls(8, page_size=64, base_pfn=8)
    pfn = pool.alloc_pages(1)
    stale = pool.view(pfn)
    pool.put_page(pfn)
    pool.check()
    stale[100] = 1
    with pytest.raises(CorruptionError) as info:
        pool.check()
    msg = str(info.value)
    assert "zero" in msg and re.search(r"pfn (8|9)\b", msg), msg
    stale[100] = 0
    pool.check()


def test_native_intrusive_corrupt_link_is_reported() -> None:
    """A stale write over the links of an intrusive free list: CorruptionError, no crash."""
    pool = Pool(8, page_size=64, _links="intrusive")
    pfns = [pool.alloc_pages(0) for _ in range(4)]
    stale = pool.view(pfns[0])
    pool.put_page(pfns[0])
    pool.put_page(pfns[2])  # the order-0 list is 0, 2: linked
    stale[0:LINK_BYTES] = b"\xfe" * LINK_BYTES
    with pytest.raises(CorruptionError, match=r"check: .*link.*pfn 0"):
        pool.check()
    with pytest.raises(CorruptionError, match=r"alloc_pages: .*pfn 0"):
        pool.alloc_pages(0)


# ------------------------------------------------------------------------- failed calls


def failing_calls(pool: Any) -> Iterator[tuple[str, Callable[[], Any], type[BaseException]]]:
    """Calls that must fail on ``pool`` (prepared by ``busy_pool``), with their exception."""
    base, end = pool.base_pfn, pool.base_pfn + pool.nr_pages
    held = [p for p in pfns_of(pool) if pool.page_count(p) > 0]
    lists = pool.free_lists()
    free_heads = [p for heads in lists for p in heads]
    tails = [
        p for p in pfns_of(pool) if pool.page_count(p) == 0 and p not in free_heads
    ]  # tails of held or free blocks
    full = [p for p in held if pool.page_count(p) == MAX_REFCOUNT]
    assert held and free_heads and tails and full
    empty = [k for k in range(pool.max_order) if capacity(pool, k) == 0]
    assert empty, "busy_pool must leave some order without free blocks"
    outside = [base - 1, end, -1, 2**64, 2**100]
    for pfn in free_heads + tails + outside:
        for op in ("put_page", "get_page", "split_page", "view"):
            yield f"{op}({pfn})", lambda op=op, pfn=pfn: getattr(pool, op)(pfn), PageError
    for pfn in outside:
        yield f"page_count({pfn})", lambda pfn=pfn: pool.page_count(pfn), PageError
    for pfn in full:
        yield f"get_page({pfn})", lambda pfn=pfn: pool.get_page(pfn), PageError
    for order in empty:
        yield f"alloc_pages({order})", lambda order=order: pool.alloc_pages(order), OutOfMemory
    for order in range(pool.max_order):
        n = capacity(pool, order) + 1
        yield (
            f"alloc_many({order}, {n})",
            lambda order=order, n=n: pool.alloc_many(order, n),
            OutOfMemory,
        )
        huge = lambda order=order: pool.alloc_many(order, 2**70)  # noqa: E731
        yield f"alloc_many({order}, 2**70)", huge, OutOfMemory
    for order in (-1, pool.max_order, 2**70):
        yield f"alloc_pages({order})", lambda order=order: pool.alloc_pages(order), ValueError
        yield f"alloc_many({order}, 0)", lambda order=order: pool.alloc_many(order, 0), ValueError
    yield "alloc_many(0, -1)", lambda: pool.alloc_many(0, -1), ValueError
    for bad in ("0", 0.0, None, [held[0]]):
        yield f"alloc_pages({bad!r})", lambda bad=bad: pool.alloc_pages(bad), TypeError
        yield f"alloc_many(0, {bad!r})", lambda bad=bad: pool.alloc_many(0, bad), TypeError
        for op in ("put_page", "get_page", "split_page", "view", "page_count"):
            yield f"{op}({bad!r})", lambda op=op, bad=bad: getattr(pool, op)(bad), TypeError
        # Conversion happens before anything is applied: the held pages stay held.
        yield (
            f"put_many([..., {bad!r}])",
            lambda bad=bad: pool.put_many([*held, bad]),
            TypeError,
        )
    yield "put_many(3)", lambda: pool.put_many(3), TypeError
    yield "put_many([free])", lambda: pool.put_many([free_heads[0]]), PageError


def busy_pool(cls: type, zero: str, links: str) -> tuple[Any, bytearray]:
    """A pool over a caller buffer with held, split, shared, saturated and free blocks."""
    nr_pages, page_size = 21, 64
    buffer = bytearray(range(256)) * (nr_pages * page_size // 256 + 1)
    pool = cls(
        nr_pages,
        page_size=page_size,
        base_pfn=3,
        reserved_pages=2,
        buffer=buffer,
        zero=zero,
        _links=links,
    )
    big = pool.alloc_pages(3)  # pfns 3..23: the first of the two order-3 blocks
    pool.view(big)[:] = b"\x5a" * len(pool.view(big))
    two = pool.alloc_pages(2)
    pool.get_page(two)
    one = pool.alloc_pages(1)
    pool.split_page(one)
    for _ in range(MAX_REFCOUNT - 1):
        pool.get_page(one + 1)
    for pfn in (two, one, one + 1):
        pool.view(pfn)[:] = bytes([pfn]) * len(pool.view(pfn))
    pool.check()
    return pool, buffer


@pytest.mark.parametrize("links", LINKS)
@pytest.mark.parametrize("zero", ZEROS)
def test_failed_calls_change_nothing(cls: type, zero: str, links: str) -> None:
    pool, buffer = busy_pool(cls, zero, links)
    count = 0
    for label, call, exc in failing_calls(pool):
        before = state(pool, buffer)
        with pytest.raises(exc) as info:
            call()
        assert isinstance(info.value, exc), label
        assert state(pool, buffer) == before, f"{label} changed the pool"
        count += 1
    assert count > 100
    pool.check()


# ------------------------------------------------------------------------- batch calls


@pytest.mark.parametrize("links", LINKS)
def test_alloc_many_is_alloc_pages_repeated(cls: type, links: str) -> None:
    twin_a = cls(37, page_size=64, base_pfn=5, reserved_pages=3, _links=links)
    twin_b = cls(37, page_size=64, base_pfn=5, reserved_pages=3, _links=links)
    for order, count in [(0, 3), (1, 2), (2, 0), (0, 1), (3, 1), (1, 3)]:
        got = twin_a.alloc_many(order, count)
        assert got == [twin_b.alloc_pages(order) for _ in range(count)]
        assert twin_a.free_lists() == twin_b.free_lists()
    # Exactly the capacity succeeds and empties every list at or above the order.
    left = capacity(twin_a, 1)
    got = twin_a.alloc_many(1, left)
    assert len(got) == left and len(set(got)) == left
    assert capacity(twin_a, 1) == 0
    twin_a.check()


def test_alloc_many_all_or_nothing(cls: type) -> None:
    pool = cls(13, page_size=64, base_pfn=3)
    for order in range(pool.max_order):
        before = state(pool)
        can = capacity(pool, order)
        msg = raises(OutOfMemory, pool.alloc_many, order, can + 1)
        assert "alloc_many" in msg and f"order {order}" in msg, msg
        assert str(can + 1) in msg, msg
        assert state(pool) == before
    assert pool.alloc_many(0, 0) == []
    assert pool.alloc_many(0, False) == []
    got = pool.alloc_many(0, 13)
    assert sorted(got) == list(range(3, 16))
    assert pool.free_pages == 0
    assert raises(OutOfMemory, pool.alloc_many, 0, 1)
    assert pool.alloc_many(0, 0) == []


def test_alloc_many_out_of_memory_message_names_the_requested_count(cls: type) -> None:
    """The count asked for appears as given, even when it fits no machine integer."""
    pool = cls(4, page_size=64)
    for count in (5, 2**64 - 1, 2**64, 2**70):
        msg = raises(OutOfMemory, pool.alloc_many, 0, count)
        assert f"{count} blocks of order 0" in msg, msg


def test_alloc_many_validates_order_before_count(cls: type) -> None:
    pool = cls(4, page_size=64)
    raises(ValueError, pool.alloc_many, 7, "x")
    raises(TypeError, pool.alloc_many, "x", -1)
    msg = raises(ValueError, pool.alloc_many, 0, -1)
    assert "count" in msg and "-1" in msg, msg
    raises(ValueError, pool.alloc_many, 0, -(2**70))
    assert pool.free_pages == 4


def test_put_many_is_all_or_nothing_and_names_the_failing_index(cls: type) -> None:
    pool = cls(16, page_size=64)
    a, b, c, d = pool.alloc_many(0, 4)
    pool.get_page(b)

    def counts() -> list[int]:
        return [pool.page_count(p) for p in (a, b, c, d)]

    msg = raises(PageError, pool.put_many, [a, b, 999, c])
    assert msg.startswith("put_many: pfns[2]: pfn 999"), msg
    assert "outside the pool" in msg, msg
    assert counts() == [1, 2, 1, 1]  # nothing was put
    # A put more than the page is held: the extra one fails, and nothing is put.
    msg = raises(PageError, pool.put_many, iter([b, c, c, d]))
    assert msg.startswith(f"put_many: pfns[2]: pfn {c} is not held"), msg
    msg = raises(PageError, pool.put_many, (x for x in [d, -5]))
    assert msg.startswith("put_many: pfns[1]: pfn -5 is outside the pool"), msg
    msg = raises(PageError, pool.put_many, [d, a, 2**70, 999])
    assert msg.startswith(f"put_many: pfns[2]: pfn {2**70} is outside the pool"), msg
    msg = raises(PageError, pool.put_many, [d, 999, 2**70])
    assert msg.startswith("put_many: pfns[1]: pfn 999 is outside the pool"), msg
    assert counts() == [1, 2, 1, 1]
    before = pool.free_lists()
    pool.put_many([])
    pool.put_many(())
    assert pool.free_lists() == before
    pool.put_many([b, a, b, c, d])  # b twice: it was held twice
    assert pool.free_pages == 16
    pool.check()


def test_put_many_converts_everything_first(cls: type) -> None:
    pool = cls(8, page_size=64)
    held = pool.alloc_many(0, 3)
    before = state(pool)
    msg = raises(TypeError, pool.put_many, [*held, "x", 2**80])
    assert "put_many: pfns[3] must be an int" in msg, msg
    raises(TypeError, pool.put_many, [*held, None])
    raises(TypeError, pool.put_many, None)
    raises(TypeError, pool.put_many, 5)
    assert state(pool) == before
    pool.put_many(Index(p) for p in held)
    assert pool.free_pages == 8


def test_put_many_propagates_the_iterables_own_error(cls: type) -> None:
    pool = cls(4, page_size=64)
    held = pool.alloc_many(0, 2)

    def boom() -> Iterator[int]:
        yield held[0]
        raise KeyError("from the iterable")

    with pytest.raises(KeyError, match="from the iterable"):
        pool.put_many(boom())
    assert [pool.page_count(p) for p in held] == [1, 1]


# ------------------------------------------------------------------------- arenas


def float_array(nbytes: int) -> np.ndarray:
    return np.full(nbytes // 8, np.pi, dtype=np.float64)


ARENAS: dict[str, Callable[[int], Any]] = {
    "bytearray": lambda n: bytearray(b"\x77") * n,
    "mmap": lambda n: mmap.mmap(-1, n),
    "numpy-uint8": lambda n: np.full(n, 0x77, dtype=np.uint8),
    "numpy-float64": float_array,
    "numpy-2d-int32": lambda n: np.arange(n // 4, dtype=np.int32).reshape(-1, 16),
    "memoryview": lambda n: memoryview(bytearray(n)),
    "array": lambda n: array.array("q", range(n // 8)),
    "numpy-structured": lambda n: np.zeros(n // 12 + 1, np.dtype([("a", "<i4"), ("b", "<f8")])),
}


def raw(buffer: Any) -> memoryview:
    """The caller's own bytes, not going through the pool."""
    return memoryview(buffer).cast("B")


@pytest.mark.parametrize("links", LINKS)
@pytest.mark.parametrize("kind", list(ARENAS))
def test_views_write_into_the_callers_buffer(cls: type, kind: str, links: str) -> None:
    nr_pages, page_size, base_pfn = 19, 128, 13
    buffer = ARENAS[kind](nr_pages * page_size + 3 * page_size)
    pool = cls(nr_pages, page_size=page_size, base_pfn=base_pfn, buffer=buffer, _links=links)
    mine = raw(buffer)
    for order in (0, 2, 1, 3, 0):
        pfn = pool.alloc_pages(order)
        view = pool.view(pfn)
        assert view.format == "B" and not view.readonly
        assert view.nbytes == page_size << order
        pattern = bytes((pfn * 7 + i) & 0xFF for i in range(view.nbytes))
        view[:] = pattern
        off = (pfn - base_pfn) * page_size
        assert mine[off : off + len(pattern)] == pattern
        # ... and the caller's writes show through the view.
        mine[off] = 0xEE
        assert view[0] == 0xEE
    pool.check()


@pytest.mark.parametrize("links", LINKS)
def test_zeroing_lands_in_the_callers_buffer(cls: type, links: str) -> None:
    """zero="free": construction zeroes the free pages (not the reserved ones, nor the slack)."""
    nr_pages, page_size = 11, 64
    buffer = float_array((nr_pages + 2) * page_size)
    pool = cls(nr_pages, page_size=page_size, reserved_pages=2, buffer=buffer, _links=links)
    mine = raw(buffer)
    pi_bytes = np.float64(np.pi).tobytes() * (page_size // 8)
    assert mine[: 2 * page_size] == pi_bytes * 2  # reserved: untouched
    assert mine[nr_pages * page_size :] == pi_bytes * 2  # slack: untouched
    heads = {p for heads in pool.free_lists() for p in heads}
    for pfn in range(2, nr_pages):
        page = mine[pfn * page_size : (pfn + 1) * page_size]
        skip = LINK_BYTES if links == "intrusive" and pfn in heads else 0
        assert not any(page[skip:]), pfn
    pool.put_page(0)
    assert not any(mine[LINK_BYTES:page_size])
    assert np.count_nonzero(buffer[nr_pages * page_size // 8 :] == np.pi) == 2 * page_size // 8


@pytest.mark.parametrize("zero", ZEROS)
def test_zero_policies(cls: type, zero: str) -> None:
    buffer = bytearray(b"\x11") * (8 * 64)
    pool = cls(8, page_size=64, buffer=buffer, zero=zero, max_order=1)
    assert pool.zero == zero
    expected_initial = b"\x00" if zero == "free" else b"\x11"
    pfn = pool.alloc_pages(0)
    assert bytes(pool.view(pfn)) == (b"\x00" if zero != "never" else expected_initial) * 64
    pool.view(pfn)[:] = b"\x42" * 64
    pool.put_page(pfn)
    assert bytes(buffer[pfn * 64 : (pfn + 1) * 64]) == (b"\x00" if zero == "free" else b"\x42") * 64
    # max_order=1: one FIFO list of single pages; cycle round to the same page again.
    for _ in range(7):
        pool.put_page(pool.alloc_pages(0))
    again = pool.alloc_pages(0)
    assert again == pfn
    assert bytes(pool.view(again)) == (b"\x42" if zero == "never" else b"\x00") * 64


@pytest.mark.parametrize("links", LINKS)
@pytest.mark.parametrize("zero", ZEROS)
@pytest.mark.parametrize("kind", ["bytearray", "numpy-float64"])
def test_bytes_past_the_arena_are_never_touched(
    cls: type, zero: str, links: str, kind: str
) -> None:
    nr_pages, page_size = 23, 64
    size = nr_pages * page_size
    buffer = (
        bytearray(b"\xa5") * (size + 1000)
        if kind == "bytearray"
        else np.full((size + 1024) // 8, -1.5, dtype=np.float64)
    )
    mine = raw(buffer)
    tail = bytes(mine[size:])
    pool = cls(nr_pages, page_size=page_size, base_pfn=1, buffer=buffer, zero=zero, _links=links)
    held: list[int] = []
    for round_ in range(4):
        for order in range(pool.max_order - 1, -1, -1):
            with contextlib.suppress(OutOfMemory):
                held += pool.alloc_many(order, 2)
        for pfn in held:
            pool.view(pfn)[:] = b"\xff" * pool.view(pfn).nbytes
        last = max(held)
        pool.split_page(last)
        pool.get_page(last)
        held.append(last)
        pool.put_many(held[::2])
        for pfn in held[1::2]:
            pool.put_page(pfn)
        # Split tails are held pages now: put whatever is still held.
        pool.put_many([p for p in pfns_of(pool) if pool.page_count(p) > 0])
        held = []
        assert pool.free_pages == nr_pages, round_
        assert bytes(mine[size:]) == tail
    pool.check()
    del pool
    gc.collect()
    assert bytes(mine[size:]) == tail


def test_view_outlives_its_pool(cls: type) -> None:
    pool = cls(4, page_size=4096)
    pfn = pool.alloc_pages(1)
    view = pool.view(pfn)
    view[:] = b"\x33" * 8192
    del pool
    gc.collect()
    assert view.nbytes == 8192 and bytes(view[:4]) == b"\x33" * 4
    view[:] = b"\x44" * 8192
    view[8191] = 0x45
    assert bytes(view[8190:]) == b"\x44\x45"
    assert sum(view) == 0x44 * 8191 + 0x45


@pytest.mark.parametrize("kind", ["bytearray", "mmap", "numpy-float64"])
def test_view_of_a_caller_buffer_outlives_pool_and_buffer_name(cls: type, kind: str) -> None:
    buffer = ARENAS[kind](4 * 256)
    pool = cls(4, page_size=256, buffer=buffer)
    view = pool.view(pool.alloc_pages(2))
    del pool, buffer
    gc.collect()
    view[:] = b"\x01" * 1024
    assert bytes(view) == b"\x01" * 1024


def test_bytearray_arena_cannot_be_resized_while_the_pool_lives(cls: type) -> None:
    buffer = bytearray(4 * 64)
    pool = cls(4, page_size=64, buffer=buffer)
    for resize in (
        lambda: buffer.append(0),
        lambda: buffer.extend(b"xy"),
        lambda: buffer.pop(),
        lambda: buffer.clear(),
        lambda: buffer.__delitem__(slice(0, 1)),
        lambda: buffer.__setitem__(slice(0, 1), b""),
        lambda: buffer.__iadd__(b"x"),
    ):
        with pytest.raises(BufferError):
            resize()
    assert len(buffer) == 4 * 64
    buffer[0:4] = b"abcd"  # same-size writes are fine
    assert pool.free_pages == 4
    del pool
    gc.collect()
    buffer.extend(b"xy")
    buffer.pop()
    assert len(buffer) == 4 * 64 + 1


def test_live_view_still_pins_the_bytearray_after_the_pool_is_gone(cls: type) -> None:
    buffer = bytearray(4 * 64)
    pool = cls(4, page_size=64, buffer=buffer)
    view = pool.view(pool.alloc_pages(0))
    del pool
    gc.collect()
    with pytest.raises(BufferError):
        buffer.append(0)
    view.release()
    gc.collect()
    buffer.append(0)


def test_mmap_arena_cannot_be_closed_while_the_pool_lives(cls: type) -> None:
    mm = mmap.mmap(-1, 4 * 64)
    pool = cls(4, page_size=64, buffer=mm)
    with pytest.raises(BufferError):
        mm.close()
    assert not mm.closed
    del pool
    gc.collect()
    mm.close()
    assert mm.closed


def readonly_numpy(n: int) -> np.ndarray:
    arr = np.zeros(n // 8, dtype=np.float64)
    arr.flags.writeable = False
    return arr


READ_ONLY: dict[str, Callable[[int], Any]] = {
    "bytes": lambda n: bytes(n),
    "memoryview-of-bytes": lambda n: memoryview(bytes(n)),
    "readonly-memoryview": lambda n: memoryview(bytearray(n)).toreadonly(),
    "readonly-numpy": readonly_numpy,
}

NOT_CONTIGUOUS: dict[str, Callable[[int], Any]] = {
    "memoryview-step-2": lambda n: memoryview(bytearray(2 * n))[::2],
    "numpy-step-2": lambda n: np.zeros(2 * n, dtype=np.uint8)[::2],
    "numpy-fortran": lambda n: np.zeros((n // 8, 8), dtype=np.uint8, order="F"),
    "numpy-transposed": lambda n: np.zeros((8, n // 8), dtype=np.uint8).T,
    "numpy-column": lambda n: np.zeros((n, 2), dtype=np.uint8)[:, 0],
}

NOT_BUFFERS: dict[str, Any] = {
    "list": [0] * 256,
    "str": "x" * 256,
    "int": 256,
    "float": 256.0,
    "dict": {},
    "object": object(),
    "array-like": np.zeros(256).tolist(),
    "numpy-datetime64": np.zeros(32, dtype="M8[s]"),  # an ndarray that exports no buffer
}


@pytest.mark.parametrize(
    "dtype", [object, [("a", "<i8"), ("b", object)]], ids=["object", "struct-with-object"]
)
def test_arrays_of_python_objects_are_refused(cls: type, dtype: Any) -> None:
    """Raw bytes must never land on object pointers."""
    with pytest.raises(TypeError):
        cls(1, page_size=64, buffer=np.empty(64, dtype=dtype))


@pytest.mark.parametrize("kind", list(READ_ONLY))
def test_read_only_buffers_are_refused(cls: type, kind: str) -> None:
    with pytest.raises(TypeError):
        cls(4, page_size=64, buffer=READ_ONLY[kind](256))


def test_read_only_file_mapping_is_refused(cls: type, tmp_path: Any) -> None:
    path = tmp_path / "arena"
    path.write_bytes(bytes(4096))
    with open(path, "rb") as f:
        read_only = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    with pytest.raises(TypeError):
        cls(4, page_size=64, buffer=read_only)
    read_only.close()
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
        pool = cls(4, page_size=64, buffer=mm)
        pool.view(pool.alloc_pages(0))[:] = b"\x09" * 64
        del pool
        gc.collect()
        mm.flush()
    assert path.read_bytes()[:64] == b"\x09" * 64


@pytest.mark.parametrize("kind", list(NOT_CONTIGUOUS))
def test_non_contiguous_buffers_are_refused(cls: type, kind: str) -> None:
    buffer = NOT_CONTIGUOUS[kind](256)
    assert not memoryview(buffer).c_contiguous
    with pytest.raises(TypeError):
        cls(4, page_size=64, buffer=buffer)


@pytest.mark.parametrize("kind", list(NOT_BUFFERS))
def test_non_buffers_are_refused(cls: type, kind: str) -> None:
    with pytest.raises(TypeError):
        cls(4, page_size=64, buffer=NOT_BUFFERS[kind])


@pytest.mark.parametrize("kind", ["bytearray", "mmap", "numpy-float64", "memoryview", "array"])
def test_too_small_buffers_are_refused(cls: type, kind: str) -> None:
    need = 4 * 64
    for size in (need - 8, 8, need // 2):
        buffer = ARENAS[kind](size)
        msg = raises(ValueError, lambda b=buffer: cls(4, page_size=64, buffer=b))
        assert str(need) in msg, msg
    for buffer in (bytearray(0), np.zeros(0)):
        raises(ValueError, lambda b=buffer: cls(4, page_size=64, buffer=b))
    # A refused buffer is not left pinned.
    small = bytearray(need - 1)
    with pytest.raises(ValueError):
        cls(4, page_size=64, buffer=small)
    gc.collect()
    small.append(0)
    cls(4, page_size=64, buffer=small).check()


# ------------------------------------------------------------------------- constructor


GOOD_ARGS: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"nr_pages": 1}, {"nr_pages": 1, "page_size": 4096, "max_order": 1}),
    ({"nr_pages": True}, {"nr_pages": 1}),
    ({"nr_pages": Index(3), "page_size": 64}, {"nr_pages": 3, "max_order": 2}),
    ({"nr_pages": 2, "page_size": 64}, {"page_size": 64}),
    ({"nr_pages": 5, "page_size": 64, "base_pfn": True}, {"base_pfn": 1}),
    ({"nr_pages": 5, "page_size": 64, "base_pfn": 2**63}, {"base_pfn": 2**63}),
    ({"nr_pages": 5, "page_size": 64, "reserved_pages": 5}, {"reserved_pages": 5}),
    ({"nr_pages": 5, "page_size": 64, "reserved_pages": True}, {"reserved_pages": 1}),
    ({"nr_pages": 5, "page_size": 64, "max_order": True}, {"max_order": 1}),
    ({"nr_pages": 5, "page_size": 64, "max_order": 2**64}, {"max_order": 3}),
    ({"nr_pages": 5, "page_size": 64, "max_order": 2**200}, {"max_order": 3}),
    ({"nr_pages": 5, "page_size": 64, "max_order": 2}, {"max_order": 2}),
    ({"nr_pages": 5, "page_size": 64, "zero": "alloc"}, {"zero": "alloc"}),
    ({"nr_pages": 5, "page_size": 64, "_links": "intrusive"}, {"free_pages": 5}),
    ({"nr_pages": 5, "page_size": 64, "_links": "side"}, {"free_pages": 5}),
]


@pytest.mark.parametrize(("kwargs", "expected"), GOOD_ARGS, ids=lambda v: repr(v)[:60])
def test_constructor_accepts(cls: type, kwargs: dict[str, Any], expected: dict[str, Any]) -> None:
    pool = cls(**kwargs)
    for name, value in expected.items():
        got = getattr(pool, name)
        assert got == value and type(got) is type(value), name
    pool.check()


def test_largest_page_size(cls: type) -> None:
    """page_size may be 2**30 (over a lazily mapped arena nobody touches under "never")."""
    arena = mmap.mmap(-1, 2 * 2**30)
    pool = cls(2, page_size=2**30, buffer=arena, zero="never")
    assert (pool.page_size, pool.max_order, pool.free_pages) == (2**30, 2, 2)
    pool.check()
    del pool
    gc.collect()
    arena.close()


BAD_ARGS: list[tuple[dict[str, Any], type[BaseException]]] = [
    # nr_pages
    ({"nr_pages": 0}, ValueError),
    ({"nr_pages": False}, ValueError),
    ({"nr_pages": -1}, ValueError),
    ({"nr_pages": 2**32 - 1}, ValueError),
    ({"nr_pages": 2**64}, ValueError),
    ({"nr_pages": 2**200}, ValueError),
    ({"nr_pages": -(2**200)}, ValueError),
    ({"nr_pages": 1.0}, TypeError),
    ({"nr_pages": "1"}, TypeError),
    ({"nr_pages": [1]}, TypeError),
    ({"nr_pages": object()}, TypeError),
    # page_size
    ({"nr_pages": 1, "page_size": True}, ValueError),
    ({"nr_pages": 1, "page_size": 0}, ValueError),
    ({"nr_pages": 1, "page_size": 32}, ValueError),
    ({"nr_pages": 1, "page_size": 63}, ValueError),
    ({"nr_pages": 1, "page_size": 96}, ValueError),
    ({"nr_pages": 1, "page_size": 4095}, ValueError),
    ({"nr_pages": 1, "page_size": 2**31}, ValueError),
    ({"nr_pages": 1, "page_size": 2**64}, ValueError),
    ({"nr_pages": 1, "page_size": -4096}, ValueError),
    ({"nr_pages": 1, "page_size": 4096.0}, TypeError),
    ({"nr_pages": 1, "page_size": "4096"}, TypeError),
    # base_pfn
    ({"nr_pages": 1, "base_pfn": -1}, ValueError),
    ({"nr_pages": 1, "base_pfn": 2**64}, ValueError),
    ({"nr_pages": 2, "base_pfn": 2**64 - 1}, ValueError),
    ({"nr_pages": 1, "base_pfn": -(2**100)}, ValueError),
    ({"nr_pages": 1, "base_pfn": 0.5}, TypeError),
    # reserved_pages
    ({"nr_pages": 2, "reserved_pages": 3}, ValueError),
    ({"nr_pages": 2, "reserved_pages": -1}, ValueError),
    ({"nr_pages": 2, "reserved_pages": 2**64 + 1}, ValueError),
    ({"nr_pages": 2, "reserved_pages": "0"}, TypeError),
    # max_order
    ({"nr_pages": 2, "max_order": 0}, ValueError),
    ({"nr_pages": 2, "max_order": False}, ValueError),
    ({"nr_pages": 2, "max_order": -1}, ValueError),
    ({"nr_pages": 2, "max_order": -(2**70)}, ValueError),
    ({"nr_pages": 2, "max_order": 11.0}, TypeError),
    # zero / _links
    ({"nr_pages": 2, "zero": "FREE"}, ValueError),
    ({"nr_pages": 2, "zero": ""}, ValueError),
    ({"nr_pages": 2, "zero": "free "}, ValueError),
    ({"nr_pages": 2, "zero": b"free"}, TypeError),
    ({"nr_pages": 2, "zero": 0}, TypeError),
    ({"nr_pages": 2, "zero": ["free"]}, TypeError),
    ({"nr_pages": 2, "_links": "table"}, ValueError),
    ({"nr_pages": 2, "_links": b"side"}, TypeError),
    ({"nr_pages": 2, "_links": 1}, TypeError),
    # from the former differential contract tests (buffers and more argument types)
    ({"nr_pages": 0}, ValueError),
    ({"nr_pages": -1}, ValueError),
    ({"nr_pages": 2**32 - 1}, ValueError),
    ({"nr_pages": 2**64}, ValueError),
    ({"nr_pages": "9"}, TypeError),
    ({"nr_pages": 9.0}, TypeError),
    ({"nr_pages": None}, TypeError),
    ({"nr_pages": 9, "page_size": 32}, ValueError),
    ({"nr_pages": 9, "page_size": 63}, ValueError),
    ({"nr_pages": 9, "page_size": 96}, ValueError),
    ({"nr_pages": 9, "page_size": 0}, ValueError),
    ({"nr_pages": 9, "page_size": -4096}, ValueError),
    ({"nr_pages": 9, "page_size": 2**31}, ValueError),
    ({"nr_pages": 9, "page_size": 4096.0}, TypeError),
    ({"nr_pages": 9, "base_pfn": -1}, ValueError),
    ({"nr_pages": 9, "base_pfn": 2**64 - 8}, ValueError),
    ({"nr_pages": 1, "base_pfn": 2**64}, ValueError),
    ({"nr_pages": 9, "base_pfn": "0"}, TypeError),
    ({"nr_pages": 9, "reserved_pages": -1}, ValueError),
    ({"nr_pages": 9, "reserved_pages": 10}, ValueError),
    ({"nr_pages": 9, "reserved_pages": 0.5}, TypeError),
    ({"nr_pages": 9, "max_order": 0}, ValueError),
    ({"nr_pages": 9, "max_order": -1}, ValueError),
    ({"nr_pages": 9, "max_order": "4"}, TypeError),
    ({"nr_pages": 9, "zero": "FREE"}, ValueError),
    ({"nr_pages": 9, "zero": ""}, ValueError),
    ({"nr_pages": 9, "zero": 1}, TypeError),
    ({"nr_pages": 9, "zero": None}, TypeError),
    ({"nr_pages": 9, "_links": "list"}, ValueError),
    ({"nr_pages": 9, "_links": 0}, TypeError),
    ({"nr_pages": 9, "_links": None}, TypeError),
    ({"nr_pages": 9, "page_size": None}, TypeError),
    ({"nr_pages": 9, "base_pfn": None}, TypeError),
    ({"nr_pages": 9, "reserved_pages": None}, TypeError),
    ({"nr_pages": 9, "max_order": None}, TypeError),
    ({"nr_pages": 9, "page_size": 64, "buffer": bytes(576)}, TypeError),
    ({"nr_pages": 9, "page_size": 64, "buffer": memoryview(bytes(576))}, TypeError),
    ({"nr_pages": 9, "page_size": 64, "buffer": 576}, TypeError),
    ({"nr_pages": 9, "page_size": 64, "buffer": "x" * 576}, TypeError),
    ({"nr_pages": 9, "page_size": 64, "buffer": np.zeros(144, np.int64)[::2]}, TypeError),
    (
        {"nr_pages": 9, "page_size": 64, "buffer": np.zeros((9, 128), np.uint8)[:, :64]},
        TypeError,
    ),
    ({"nr_pages": 9, "page_size": 64, "buffer": bytearray(575)}, ValueError),
    ({"nr_pages": 9, "page_size": 64, "buffer": np.zeros(71, np.float64)}, ValueError),
]


def _kwargs_id(value: Any) -> str:
    """Test id of a constructor-keywords dict (buffers by type and size)."""
    if not isinstance(value, dict):
        return getattr(value, "__name__", repr(value))

    def show(item: Any) -> str:
        if isinstance(item, (bytes, bytearray, memoryview, np.ndarray)):
            return f"{type(item).__name__}[{memoryview(item).nbytes}]"
        # Without an address in the id: every pytest-xdist worker must collect the same ids.
        text = repr(item)
        return f"<{type(item).__name__}>" if " at 0x" in text else text[:40]

    return ",".join(f"{key}={show(item)}" for key, item in value.items())


@pytest.mark.parametrize(("kwargs", "exc"), BAD_ARGS, ids=_kwargs_id)
def test_constructor_rejects(cls: type, kwargs: dict[str, Any], exc: type) -> None:
    """The message names the offending argument (the last one given)."""
    offending = list(kwargs)[-1]
    with pytest.raises(exc) as info:
        cls(**{"page_size": 64, **kwargs})
    assert type(info.value) is exc
    assert offending in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "name", ["page_size", "base_pfn", "reserved_pages", "max_order", "zero", "_links"]
)
def test_none_is_rejected_like_any_non_int_or_non_str(cls: type, name: str) -> None:
    """Int arguments go through operator.index and zero/_links must be str: None is neither."""
    with pytest.raises(TypeError):
        cls(4, **{name: None})


@pytest.mark.parametrize("nr_pages", [1, 2, 33])
def test_pool_may_end_at_the_top_of_the_pfn_space(cls: type, nr_pages: int) -> None:
    """base_pfn + nr_pages <= 2**64 is valid: the last page has pfn 2**64 - 1."""
    pool = cls(nr_pages, page_size=64, base_pfn=2**64 - nr_pages)
    top = 2**64 - 1
    assert pool.free_pages == nr_pages
    pool.check()
    held = pool.alloc_many(0, nr_pages)
    assert top in held
    pool.view(top)[:] = b"\x01" * 64
    pool.put_page(top)
    raises(PageError, pool.put_page, 2**64)


def test_arena_that_cannot_be_had_raises_memory_error(cls: type) -> None:
    """A pool-owned arena of 2**62 bytes fits no address space: MemoryError, as for metadata."""
    with pytest.raises(MemoryError):
        cls(2**32 - 2, page_size=2**30)


# ------------------------------------------------------------------------- surface


def test_repr(cls: type) -> None:
    name = cls.__name__
    pool = cls(9)
    assert repr(pool) == (
        f"{name}(nr_pages=9, page_size=4096, base_pfn=0, max_order=4, zero='free', free_pages=9)"
    )
    pool = cls(37, page_size=64, base_pfn=5, reserved_pages=3, max_order=3, zero="never")
    pool.alloc_pages(2)
    assert repr(pool) == (
        f"{name}(nr_pages=37, page_size=64, base_pfn=5, max_order=3, zero='never', free_pages=30)"
    )


def test_every_public_method_is_documented(cls: type) -> None:
    text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
    for name in PUBLIC_METHODS + ATTRIBUTES:
        assert re.search(rf"\b{name}\b", text), f"help() does not mention {name}"
        doc = getattr(cls, name).__doc__
        assert doc and len(doc.strip()) > 10, f"{name} has no docstring"
    public = [n for n in dir(cls) if not n.startswith("_")]
    assert set(PUBLIC_METHODS + ATTRIBUTES) <= set(public)
    for name in public:
        assert getattr(cls, name).__doc__, f"{name} has no docstring"
    assert cls.__doc__ and "nr_pages" in cls.__doc__


def test_help_runs(cls: type, capsys: pytest.CaptureFixture[str]) -> None:
    help(cls)
    out = capsys.readouterr().out
    for name in PUBLIC_METHODS:
        assert name in out


@pytest.mark.parametrize("name", ATTRIBUTES)
def test_attributes_are_read_only(cls: type, name: str) -> None:
    pool = cls(4, page_size=64, reserved_pages=1)
    before = getattr(pool, name)
    with pytest.raises(AttributeError):
        setattr(pool, name, before)
    with pytest.raises(AttributeError):
        delattr(pool, name)
    assert getattr(pool, name) == before
