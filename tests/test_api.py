"""The API's surface: typed signatures, close() and ``with``, buddyinfo() and fragmentation(),
the model's class, the exceptions' module, ``cpu=`` on a pool without caches.

Every kind of pool is covered: plain with an arena (here a caller's mmap), without one
(``arena=False``), with per-CPU caches (``cpus=2``) and shared (``Pool.create_in`` and
``Pool.attach``, native only), on both classes where the kind exists.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import inspect
import mmap
import pathlib
import pickle
import pydoc
import random
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import pytest

import pagebuddy
from pagebuddy import (
    CorruptionError,
    Fragmentation,
    OutOfMemory,
    PageError,
    Pool,
    ReferencePool,
    _frag,
)
from pagebuddy._cache import CachedReferencePool
from pagebuddy._lockstep import Divergence, Lockstep
from pagebuddy._rules import Geometry
from pagebuddy._shared import pool_bytes
from pagebuddy.cli._report import state

NATIVE_STUB = pathlib.Path(pagebuddy.__file__).with_name("_native.pyi")
PAGES = 64
PAGE = 4096

#: How each kind of pool is built over a fresh mmap (None for a pool without an arena).
KINDS: dict[str, Callable[[type, mmap.mmap | None], Any]] = {
    "plain": lambda cls, m: cls(PAGES, buffer=m),
    "arena-less": lambda cls, m: cls(PAGES, arena=False),
    "cached": lambda cls, m: cls(PAGES, buffer=m, cpus=2, cache_batch=2, cache_high=4),
    "shared": lambda cls, m: Pool.create_in(m),
    "attached": lambda cls, m: (Pool.create_in(m), Pool.attach(m))[1],
}
CASES = [
    (cls, kind)
    for cls in (Pool, ReferencePool)
    for kind in KINDS
    if cls is Pool or kind not in ("shared", "attached")
]
IDS = [f"{cls.__name__}-{kind}" for cls, kind in CASES]


def buffer_for(kind: str) -> mmap.mmap | None:
    if kind == "arena-less":
        return None
    size = pool_bytes(PAGES) if kind in ("shared", "attached") else PAGES * PAGE
    return mmap.mmap(-1, size)


def build(cls: type, kind: str) -> tuple[Any, mmap.mmap | None]:
    m = buffer_for(kind)
    return KINDS[kind](cls, m), m


# ---------------------------------------------------------------------------- signatures

CONSTRUCTOR = [
    "nr_pages",
    "page_size",
    "base_pfn",
    "reserved_pages",
    "max_order",
    "buffer",
    "zero",
    "arena",
    "cpus",
    "cache_batch",
    "cache_high",
    "max_pages",
]


def test_signature_of_pool_shows_the_constructor() -> None:
    sig = inspect.signature(Pool)
    assert list(sig.parameters) == CONSTRUCTOR
    assert str(sig).startswith("(nr_pages, *, page_size=4096, base_pfn=0, reserved_pages=0,")
    kinds = {p.kind for name, p in sig.parameters.items() if name != "nr_pages"}
    assert kinds == {inspect.Parameter.KEYWORD_ONLY}
    model = inspect.signature(ReferencePool.__init__).parameters
    for name, p in sig.parameters.items():
        assert str(p.default) == str(model[name].default) or name == "zero", name


def test_help_shows_the_parameters() -> None:
    text = pydoc.render_doc(Pool, renderer=pydoc.plaintext)
    assert "Pool(nr_pages, *, page_size=4096, base_pfn=0" in text
    assert "cache_high=None, max_pages=None)" in text
    assert "*_args" not in text


def stub_class(name: str) -> ast.ClassDef:
    tree = ast.parse(NATIVE_STUB.read_text())
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)


def test_every_method_of_both_pools_is_typed() -> None:
    stubbed = set()
    for node in stub_class("Pool").body:
        if isinstance(node, ast.FunctionDef):
            stubbed.add(node.name)
            args = node.args
            params = args.posonlyargs + args.args + args.kwonlyargs
            params += [a for a in (args.vararg, args.kwarg) if a]
            untyped = [
                a.arg for a in params if a.annotation is None and a.arg not in ("self", "cls")
            ]
            assert not untyped and node.returns is not None, (node.name, untyped)
    public = {n for n in dir(Pool) if not n.startswith("_")}
    assert public <= stubbed, public - stubbed
    for cls in (ReferencePool, CachedReferencePool):
        for name in (n for n in dir(cls) if not n.startswith("_")):
            member = inspect.getattr_static(cls, name)
            if isinstance(member, property) and cls is ReferencePool:
                member = member.fget
            if not inspect.isfunction(member):
                continue
            hints = member.__annotations__
            assert hints.get("return", "Any") != "Any", (cls.__name__, name)
            params = [p for p in inspect.signature(member).parameters if p != "self"]
            assert all(p in hints for p in params), (cls.__name__, name, params)
    assert {"close", "closed", "buddyinfo", "fragmentation"} <= stubbed


GOOD = """
    from array import array

    from pagebuddy import Fragmentation, Pool, ReferencePool

    for cls in (Pool, ReferencePool):
        with cls(64, page_size=4096, buffer=bytearray(64 * 4096), cpus=0) as pool:
            pfns: list[int] = pool.alloc_many(0, 4)
            out: array[int] = pool.alloc_many(0, 2, out=array("Q", [0, 0]))
            info: list[int] = pool.buddyinfo()
            frag: Fragmentation = pool.fragmentation()
            largest: int | None = frag.largest_free_order
            pool.put_many(pfns)
        closed: bool = pool.closed
    model: ReferencePool = ReferencePool(64, cpus=2)
"""
BAD = """
    from pagebuddy import Pool

    Pool("x", bogus=1, page_size="big")
"""


def test_mypy_strict_accepts_typed_use_and_rejects_a_bad_constructor(
    tmp_path: pathlib.Path,
) -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed in this environment (make installs it: make test)")
    good, bad = tmp_path / "good.py", tmp_path / "bad.py"
    good.write_text(textwrap.dedent(GOOD))
    bad.write_text(textwrap.dedent(BAD))
    run = subprocess.run(
        [
            *(sys.executable, "-m", "mypy", "--strict", "--no-error-summary"),
            *("--cache-dir", str(tmp_path / "cache"), str(good), str(bad)),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = run.stdout.splitlines()
    assert run.returncode == 1, run.stdout + run.stderr
    assert not [line for line in lines if line.startswith(str(good))], run.stdout
    errors = [line for line in lines if line.startswith(str(bad)) and ": error:" in line]
    assert any('Unexpected keyword argument "bogus"' in line for line in errors), run.stdout
    assert any('Argument 1 to "Pool" has incompatible type "str"' in line for line in errors)
    assert any('Argument "page_size" to "Pool"' in line for line in errors), run.stdout


# ---------------------------------------------------------------------------- close / with

#: Every call a closed pool refuses, by the name its message gives.
CALLS: dict[str, Callable[[Any], Any]] = {
    "alloc_pages": lambda p: p.alloc_pages(0),
    "alloc_many": lambda p: p.alloc_many(0, 2),
    "alloc_exact": lambda p: p.alloc_exact(3),
    "put_page": lambda p: p.put_page(0),
    "put_many": lambda p: p.put_many([0]),
    "get_page": lambda p: p.get_page(0),
    "split_page": lambda p: p.split_page(0),
    "page_count": lambda p: p.page_count(0),
    "free_lists": lambda p: p.free_lists(),
    "view": lambda p: p.view(0),
    "check": lambda p: p.check(),
    "drain": lambda p: p.drain(),
    "drain_all": lambda p: p.drain_all(),
    "cache_contents": lambda p: p.cache_contents(),
    "buddyinfo": lambda p: p.buddyinfo(),
    "fragmentation": lambda p: p.fragmentation(),
    "free_pages": lambda p: p.free_pages,
    "__enter__": lambda p: p.__enter__(),
}


def closed_message(op: str) -> str:
    return f"{op}: the pool is closed: a closed pool takes no calls (build a new one)"


@pytest.mark.parametrize(("cls", "kind"), CASES, ids=IDS)
def test_with_closes_and_the_buffer_is_released_at_once(cls: type, kind: str) -> None:
    pool, m = build(cls, kind)
    with pool as p:
        assert p is pool and not p.closed
        pfn = p.alloc_pages(2)
        if p.arena:
            with p.view(pfn) as v:
                v[:5] = b"hello"
        p.put_page(pfn)
    assert pool.closed
    if m is not None:
        m.close()  # no BufferError: nothing exports it any more
    for op, call in CALLS.items():
        with pytest.raises(ValueError) as e:
            call(pool)
        assert str(e.value) == closed_message(op)
    # What does not touch the pool still answers.
    assert (pool.nr_pages, pool.page_size) == (pool.nr_pages, PAGE)
    assert repr(pool).endswith("closed=True)")
    pool.close()  # again: nothing
    assert pool.closed


@pytest.mark.parametrize(("cls", "kind"), CASES, ids=IDS)
def test_close_then_a_new_pool_over_the_same_buffer(cls: type, kind: str) -> None:
    pool, m = build(cls, kind)
    pool.alloc_pages(0)
    pool.close()
    if m is None:
        return
    again = Pool.create_in(m) if kind in ("shared", "attached") else cls(PAGES, buffer=m)
    assert again.free_pages == again.nr_pages
    again.close()
    m.close()


@pytest.mark.parametrize("cls", [Pool, ReferencePool])
def test_exception_in_with_block_goes_on_and_the_pool_is_closed(cls: type) -> None:
    m = mmap.mmap(-1, PAGES * PAGE)
    with pytest.raises(OutOfMemory), cls(PAGES, buffer=m) as pool:
        pool.alloc_many(0, PAGES + 1)
    assert pool.closed
    m.close()


@pytest.mark.parametrize("cls", [Pool, ReferencePool])
def test_a_view_handed_out_before_close_stays_valid_and_holds_the_buffer(cls: type) -> None:
    m = mmap.mmap(-1, PAGES * PAGE)
    pool = cls(PAGES, buffer=m)
    view = pool.view(pool.alloc_pages(1))
    pool.close()
    view[:3] = b"abc"  # plain memory now, still mapped: the view holds it
    assert bytes(m[:3]) == b"abc"
    with pytest.raises(BufferError):
        m.close()
    view.release()
    m.close()


@pytest.mark.parametrize("cls", [Pool, ReferencePool])
def test_close_of_a_pool_that_owns_its_arena(cls: type) -> None:
    pool = cls(PAGES)
    view = pool.view(pool.alloc_pages(0))
    pool.close()
    view[:2] = b"ok"
    assert bytes(view[:2]) == b"ok"
    with pytest.raises(ValueError, match=r"^view: the pool is closed"):
        pool.view(0)


def test_closing_one_handle_of_a_shared_pool_leaves_the_others() -> None:
    m = mmap.mmap(-1, pool_bytes(PAGES))
    a = Pool.create_in(m)
    b = Pool.attach(m)
    pfn = a.alloc_pages(1)
    a.close()
    assert b.page_count(pfn) == 1
    b.put_page(pfn)
    assert b.free_pages == b.nr_pages
    b.check()
    b.close()
    m.close()


class ClosesOnIndex:
    """An int whose conversion closes the pool and unmaps its buffer: the call must then find
    the pool closed, never reach the core (whose memory is gone)."""

    def __init__(self, pool: Any, m: mmap.mmap | None, value: int) -> None:
        self.pool, self.m, self.value = pool, m, value

    def __index__(self) -> int:
        self.pool.close()
        if self.m is not None:
            self.m.close()
        return self.value


NATIVE_IDS = [i for (cls, _), i in zip(CASES, IDS, strict=True) if cls is Pool]


@pytest.mark.parametrize("kind", [k for c, k in CASES if c is Pool], ids=NATIVE_IDS)
@pytest.mark.parametrize(
    "call",
    [
        lambda p, x: p.put_page(x),
        lambda p, x: p.put_many([x]),
        lambda p, x: p.alloc_many(0, x),
        lambda p, x: p.alloc_pages(0, cpu=x) if p.cpus else p.alloc_exact(x),
        lambda p, x: p.get_page(x),
        lambda p, x: p.page_count(x),
    ],
    ids=["put_page", "put_many", "alloc_many", "alloc_pages-or-exact", "get_page", "page_count"],
)
def test_a_pool_closed_while_its_arguments_convert_is_never_reached(
    kind: str, call: Callable[[Any, Any], Any]
) -> None:
    pool, m = build(Pool, kind)
    held = pool.alloc_pages(0)
    with pytest.raises(ValueError, match="the pool is closed"):
        call(pool, ClosesOnIndex(pool, m, held if held else 1))
    assert pool.closed


def churn(
    pool: Any, held: list[list[int]], me: int, start: threading.Barrier, errors: list[Any]
) -> None:
    """Batches of allocations and frees into ``held[me]`` until the pool is closed."""
    rng = random.Random(me)
    start.wait()
    try:
        while True:
            try:
                if held[me] and rng.random() < 0.5:
                    pool.put_many(held[me])
                    held[me] = []
                else:
                    held[me] += pool.alloc_many(0, rng.randint(1, 4))
            except OutOfMemory:
                continue
    except ValueError as e:
        if "the pool is closed" not in str(e):
            errors.append(e)
    except BaseException as e:
        errors.append(e)


@pytest.mark.parametrize("kind", ["plain", "cached", "shared"])
def test_close_while_batch_calls_run_in_threads(kind: str) -> None:
    """Threads allocate and free in batches (without the interpreter lock) while the pool is
    closed: each call does its whole batch or raises the closed ValueError, the buffer is
    released once close() returns, and on a shared pool a fresh handle finds every invariant
    intact and every page free (the closed handle's references dropped when it attaches)."""
    for seed in range(4):
        pool, m = build(Pool, kind)
        assert m is not None
        held: list[list[int]] = [[] for _ in range(4)]
        errors: list[BaseException] = []
        start = threading.Barrier(len(held) + 1)

        threads = [
            threading.Thread(target=churn, args=(pool, held, i, start, errors))
            for i in range(len(held))
        ]
        for t in threads:
            t.start()
        start.wait()
        time.sleep(seed / 500)  # close at a different point of the threads' work each time
        pool.close()
        for t in threads:
            t.join()
        assert not errors, errors
        if kind == "shared":
            # The closed handle's owner has ended: attach drops every reference it took.
            fresh = Pool.attach(m)
            assert fresh.free_pages == fresh.nr_pages
            assert all(fresh.page_count(p) == 0 for h in held for p in h)
            fresh.check()
            fresh.close()
        m.close()


# ---------------------------------------------------------------------------- buddyinfo / frag


@pytest.mark.parametrize(("cls", "kind"), CASES, ids=IDS)
def test_buddyinfo_and_fragmentation_match_the_free_lists_and_the_command(
    cls: type, kind: str
) -> None:
    pool, m = build(cls, kind)
    rng = random.Random(7)
    held: list[int] = []
    for _ in range(200):
        if held and rng.random() < 0.45:
            pool.put_page(held.pop(rng.randrange(len(held))))
        else:
            with contextlib.suppress(OutOfMemory):
                held.append(pool.alloc_pages(rng.randrange(4)))
        blocks = pool.buddyinfo()
        assert blocks == [len(heads) for heads in pool.free_lists()]
        frag = pool.fragmentation()
        assert isinstance(frag, Fragmentation)
        figures = state(blocks)
        assert frag.free_pages == figures["free_pages"]
        assert frag.largest_free_order == figures["largest_free_order"]
        assert list(frag.extfrag_index) == figures["extfrag_index"]
        assert len(frag.extfrag_index) == pool.max_order
    pool.close()
    if m is not None:
        m.close()


def test_fragmentation_of_a_full_pool_and_of_a_fragmented_one() -> None:
    for cls in (Pool, ReferencePool):
        pool = cls(16, page_size=64)
        assert pool.buddyinfo() == [0, 0, 0, 0, 1]
        assert pool.fragmentation() == (16, 4, (-1.0,) * 5)
        pfns = pool.alloc_many(0, 16)
        assert pool.fragmentation() == (0, None, (0.0,) * 5)
        pool.put_many(pfns[::2])  # every other page: 8 free order-0 blocks
        assert pool.buddyinfo() == [8, 0, 0, 0, 0]
        frag = pool.fragmentation()
        assert frag.largest_free_order == 0 and frag.free_pages == 8
        # extfrag for order 1: 1 - (1 + 8/2) / 8 = 0.375, as Linux computes it.
        assert frag.extfrag_index == (-1.0, 0.375, 0.625, 0.75, 0.813)
        assert frag.extfrag_index[1] == _frag.extfrag_index([8, 0, 0, 0, 0], 1) / 1000


@pytest.mark.parametrize("options", [(), (("cpus", 2),)], ids=["exact", "cached"])
def test_lockstep_compares_buddyinfo_and_fragmentation(options: Any) -> None:
    g = Geometry(40, page_size=64, base_pfn=3, options=options)
    pools = Lockstep(g)
    rng = random.Random(1)
    for _ in range(300):
        held = pools.held()
        if held and rng.random() < 0.5:
            pools.apply(("put", rng.choice(held)))
        else:
            pools.apply(("alloc", rng.randrange(3)))
        assert pools.pool.buddyinfo() == pools.model.buddyinfo()
        assert pools.pool.fragmentation() == pools.model.fragmentation()
    pools.agree()
    # A model whose buddyinfo lies is caught by the comparison.
    real = pools.model.buddyinfo
    pools.model.buddyinfo = lambda: [*real()[:-1], real()[-1] + 1]
    with pytest.raises(Divergence) as e:
        pools.compare_state()
    assert e.value.what == "buddyinfo"


# ---------------------------------------------------------------------------- the model's class


def test_a_cached_model_is_a_reference_pool() -> None:
    cached = ReferencePool(64, cpus=2)
    assert type(cached) is CachedReferencePool
    assert isinstance(cached, ReferencePool)
    assert issubclass(CachedReferencePool, ReferencePool)
    assert isinstance(ReferencePool(64), ReferencePool)
    assert not isinstance(Pool(64), ReferencePool)
    assert not isinstance(Pool(64, cpus=2), ReferencePool)


# ---------------------------------------------------------------------------- exceptions


def test_exceptions_are_named_after_the_package() -> None:
    for exc in (PageError, OutOfMemory, CorruptionError, Fragmentation):
        assert exc.__module__ == "pagebuddy"
        assert getattr(pagebuddy, exc.__name__) is exc
    for cls in (Pool, ReferencePool):
        pool = cls(4, page_size=64)
        for call, name in [
            (lambda p=pool: p.alloc_many(0, 5), "pagebuddy.OutOfMemory"),
            (lambda p=pool: p.put_page(0), "pagebuddy.PageError"),
        ]:
            with pytest.raises((OutOfMemory, PageError)) as e:
                call()
            text = "".join(traceback.format_exception_only(e.type, e.value))
            assert text.startswith(f"{name}: "), text
            again = pickle.loads(pickle.dumps(e.value))
            assert type(again) is e.type and str(again) == str(e.value)


# ---------------------------------------------------------------------------- cpu=


CPU_CALLS: dict[str, Callable[[Any, int], Any]] = {
    "alloc_pages": lambda p, c: p.alloc_pages(0, cpu=c),
    "alloc_many": lambda p, c: p.alloc_many(0, 2, cpu=c),
    "put_page": lambda p, c: p.put_page(p.base_pfn, cpu=c),
    "put_many": lambda p, c: p.put_many([p.base_pfn], cpu=c),
    "drain": lambda p, c: p.drain(c),
    "cache_contents": lambda p, c: p.cache_contents(c),
}


@pytest.mark.parametrize("kind", ["plain", "arena-less", "shared", "attached"])
def test_cpu_on_a_pool_without_caches_is_refused_alike(kind: str) -> None:
    classes = (Pool, ReferencePool) if kind in ("plain", "arena-less") else (Pool,)
    pools = [build(cls, kind) for cls in classes]
    messages: dict[str, set[str]] = {}
    for pool, _ in pools:
        pool.alloc_pages(0)  # base_pfn is held: a put would otherwise succeed
        before = (pool.free_lists(), pool.page_count(pool.base_pfn))
        for op, call in CPU_CALLS.items():
            for cpu in (0, 3):
                with pytest.raises(ValueError) as e:
                    call(pool, cpu)
                messages.setdefault(f"{op} {cpu}", set()).add(str(e.value))
                assert str(e.value) == (
                    f"{op}: cpu={cpu} names a CPU slot, but this pool has no per-CPU caches "
                    "(build it with cpus=N to use slots)"
                )
        assert (pool.free_lists(), pool.page_count(pool.base_pfn)) == before
        assert pool.alloc_pages(0, cpu=None) >= pool.base_pfn
    assert all(len(texts) == 1 for texts in messages.values()), messages
