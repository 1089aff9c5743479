"""The fast entry points of ``get_page``, ``put_page`` and ``alloc_pages`` (``fast.rs``).

A call with one plain ``int`` argument runs the core's call directly; every other shape (a
keyword, an ``int`` subclass, an ``__index__`` object, a huge or negative int) and every failure
goes to the full method. These tests hold both routes to the same results, errors and
introspection, on every kind of pool, and check that a failure leaves no exception behind.
"""

from __future__ import annotations

import enum
import inspect
import sys
import threading
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pagebuddy import OutOfMemory, PageError, Pool


class Index:
    """Not an int, but usable as one (``operator.index``)."""

    def __init__(self, v: int) -> None:
        self.v = v

    def __index__(self) -> int:
        return self.v


class Small(enum.IntEnum):
    ZERO = 0
    ONE = 1


def pools() -> list[tuple[str, Any]]:
    return [
        ("side", lambda: Pool(64, zero="never")),
        (
            "intrusive",
            lambda: Pool.create_in(bytearray(1 << 20), zero="free", links="intrusive"),
        ),
        ("bare", lambda: Pool(64, arena=False, zero="never")),
        ("cached", lambda: Pool(64, zero="never", cpus=2, cache_batch=2, cache_high=4)),
        ("shared", lambda: Pool.create_in(bytearray(1 << 20), page_size=4096, zero="never")),
    ]


@pytest.fixture(params=[f for _, f in pools()], ids=[n for n, _ in pools()])
def make(request: pytest.FixtureRequest) -> Any:
    return request.param


def test_signatures_and_docs_are_the_methods() -> None:
    assert str(inspect.signature(Pool.get_page)) == "(self, /, pfn)"
    assert str(inspect.signature(Pool.put_page)) == "(self, /, pfn, *, cpu=None)"
    assert str(inspect.signature(Pool.alloc_pages)) == "(self, /, order, *, cpu=None)"
    assert Pool.get_page.__doc__.startswith("Takes one more reference to a held page.")
    assert Pool.put_page.__doc__.startswith("Drops one reference to a held page")
    assert Pool.alloc_pages.__doc__.startswith("Allocates a block of 2**order pages")
    assert Pool.get_page.__name__ == "get_page"
    assert Pool.alloc_pages.__qualname__ == "Pool.alloc_pages"


def test_every_argument_shape_gives_the_same_pages(make: Any) -> None:
    a, b = make(), make()
    shapes = [
        lambda v: v,
        lambda v: Small(v) if v < 2 else v,
        lambda v: Index(v),
        lambda v: np.uint64(v),
        lambda v: bool(v) if v < 2 else v,
    ]
    for i in range(40):
        shape = shapes[i % len(shapes)]
        order = i % 3
        x = a.alloc_pages(order)
        y = b.alloc_pages(shape(order))
        assert x == y
        a.get_page(x)
        b.get_page(shape(y))
        a.put_page(x)
        b.put_page(shape(y))
        if i % 2:
            a.put_page(x)
            b.put_page(shape(y))
    assert a.free_pages == b.free_pages
    a.check()
    b.check()


def test_keywords_take_the_full_route() -> None:
    p = Pool(64, zero="never", cpus=2, cache_batch=2, cache_high=4)
    x = p.alloc_pages(0, cpu=1)
    p.put_page(x, cpu=1)
    assert p.alloc_pages(order=0, cpu=1) == x
    p.put_page(pfn=x, cpu=1)
    p.drain_all()
    p.check()


@pytest.mark.parametrize(
    ("call", "exc", "text"),
    [
        (lambda p: p.get_page(63), PageError, "get_page: pfn 63"),
        (lambda p: p.get_page(10**30), PageError, "outside the pool"),
        (lambda p: p.get_page(-1), PageError, "-1"),
        (lambda p: p.get_page("1"), TypeError, "get_page: pfn must be an int, got str"),
        (lambda p: p.get_page(1.0), TypeError, "must be an int"),
        (lambda p: p.put_page(63), PageError, "put_page: pfn 63"),
        (lambda p: p.put_page(2**64), PageError, "outside the pool"),
        (lambda p: p.put_page(), TypeError, "pfn"),
        (lambda p: p.put_page(1, 2), TypeError, "positional"),
        (lambda p: p.put_page(1, cpu=-1), ValueError, "cpu must be >= 0"),
        (lambda p: p.put_page(1, bogus=1), TypeError, "bogus"),
        (lambda p: p.alloc_pages(40), ValueError, "alloc_pages: order 40 is invalid"),
        (lambda p: p.alloc_pages(2**64), ValueError, "order"),
        (lambda p: p.alloc_pages(None), TypeError, "alloc_pages: order must be an int"),
        (lambda p: p.alloc_pages(), TypeError, "order"),
    ],
)
def test_errors_name_the_call_and_change_nothing(
    make: Any, call: Any, exc: type, text: str
) -> None:
    p = make()
    held = p.alloc_pages(0)
    free = p.free_pages
    with pytest.raises(exc, match=None) as info:
        call(p)
    assert text in str(info.value)
    assert sys.exc_info() == (None, None, None)
    assert p.free_pages == free
    assert p.page_count(held) == 1
    p.check()


def test_out_of_memory_is_raised_with_the_free_count(make: Any) -> None:
    p = make()
    held = [p.alloc_pages(0) for _ in range(p.free_pages)]
    with pytest.raises(OutOfMemory, match=r"alloc_pages: .*free pages: 0"):
        p.alloc_pages(0)
    for x in held:
        p.put_page(x)
    assert p.alloc_pages(0) in held


def test_descriptor_refuses_another_self() -> None:
    with pytest.raises(TypeError, match="get_page"):
        Pool.get_page(object(), 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="put_page"):
        Pool.put_page(3, 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="alloc_pages"):
        Pool.alloc_pages(None, 0)  # type: ignore[arg-type]


def test_threads_on_a_cached_pool_use_their_own_slots() -> None:
    # Fixed sizes: each slot keeps all 50 pages a thread frees (auto-sized slots would keep
    # only their share of the bound, 1024 // 8 // 4 = 32, and give the rest to the pool).
    p = Pool(1024, zero="never", cpus=4, cache_high=64)
    seen: list[list[int]] = []
    lock = threading.Lock()

    def work() -> None:
        mine = [p.alloc_pages(0) for _ in range(50)]
        for x in mine:
            p.get_page(x)
            p.put_page(x)
        with lock:
            seen.append(mine)
        for x in mine:
            p.put_page(x)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pfns = [x for mine in seen for x in mine]
    assert len(pfns) == len(set(pfns)) == 200
    p.drain_all()
    assert p.free_pages == 1024
    p.check()


# The same random sequence of calls, one pool driven through the fast route (plain ints, no
# keywords) and one through the full methods (every argument wrapped so that the fast route
# refuses it): same results, same exception types and messages, same free lists, every step.
OPS = st.lists(
    st.tuples(
        st.sampled_from(["alloc", "get", "put"]),
        st.integers(min_value=-2, max_value=80),
    ),
    max_size=120,
)


def _outcome(call: Any, *args: Any, **kwargs: Any) -> tuple[str, Any]:
    try:
        return ("ok", call(*args, **kwargs))
    except (PageError, OutOfMemory, ValueError, TypeError) as e:
        return (type(e).__name__, str(e))


@given(ops=OPS, cpus=st.sampled_from([0, 2]))
def test_fast_and_full_routes_agree(ops: list[tuple[str, int]], cpus: int) -> None:
    fast = Pool(64, zero="never", cpus=cpus, cache_batch=2, cache_high=4)
    full = Pool(64, zero="never", cpus=cpus, cache_batch=2, cache_high=4)
    held: list[int] = []
    for op, k in ops:
        if op == "alloc":
            v = k % 8  # order 7 is out of range
            a = _outcome(fast.alloc_pages, v)
            b = _outcome(full.alloc_pages, Index(v), cpu=None)
            if a[0] == "ok":
                held.append(a[1])
        else:
            # Mostly a pfn handed out before (held once, twice, or freed since), else any int.
            v = held[k % len(held)] if held and k < 60 else k - 2
            if op == "get":
                a = _outcome(fast.get_page, v)
                b = _outcome(full.get_page, Index(v))
            else:
                a = _outcome(fast.put_page, v)
                b = _outcome(full.put_page, Index(v), cpu=None)
        assert a == b, (op, v)
        assert sys.exc_info() == (None, None, None)
        assert fast.free_pages == full.free_pages
        assert fast.free_lists() == full.free_lists()
    fast.check()
    full.check()
