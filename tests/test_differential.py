"""Differential tests: the native ``Pool`` against the pure-Python ``ReferencePool``.

Both pools are built with the same geometry (and, when the arena is caller-provided, two
identical copies of the same random bytes) and driven with the same calls. After every call
they must agree on the result or on the exception class, and then on the free lists,
``free_pages``, every page's refcount and the arena contents; both ``check()`` must pass.

The comparing is the lockstep engine's (``pagebuddy._lockstep.Lockstep``, with
``strict=True``: messages name the call and the pfn or order at fault); which arena bytes
must match under each zero policy and link store is the rulebook's
(``pagebuddy._rules.arena_comparison``). Bytes past ``nr_pages * page_size`` of a caller
buffer must never change.

Step budget: under the ``ci`` profile the machine runs 60 examples of 50 steps, one of which
builds the pools, i.e. 2,940 rule steps; ``test_differential_machine`` counts the steps and
fails if fewer than 2,000 ran.
"""

from __future__ import annotations

import mmap
import operator
import random
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from pagebuddy import CorruptionError, OutOfMemory, PageError, Pool, ReferencePool
from pagebuddy._lockstep import Lockstep
from pagebuddy._rules import MAX_REFCOUNT, OPERATIONS, Geometry

MIN_CI_STEPS = 2000
# Pfns and orders that fit no pool (and no machine integer).
WILD_PFNS = [-1, -(2**63), -(2**70), 2**63, 2**64 - 1, 2**64, 2**70]
WILD_ORDERS = [-1, -(2**70), 11, 12, 63, 64, 2**32, 2**64, 2**70]
NOT_INTS: list[Any] = ["3", 1.0, None, b"\x01", [1]]


def twin(geometry: dict[str, Any], fill_seed: int | None = None) -> Lockstep:
    """A Pool and a ReferencePool built alike (over two copies of the same random bytes when
    ``fill_seed`` is given), compared by the engine after each call, messages included."""
    g = Geometry.from_kwargs(**geometry)
    if fill_seed is not None:
        g = g.replace(arena="buffer")
    pools = Lockstep(g, fill_seed=fill_seed, strict=True)
    pools.agree()
    return pools


# ------------------------------------------------------------------------- state machine


@st.composite
def geometries(draw: st.DrawFn) -> tuple[dict[str, Any], int | None]:
    """Constructor keywords for a pool, and a seed for caller-buffer contents (or None)."""
    nr_pages = draw(
        st.one_of(st.integers(1, 9), st.sampled_from([10, 13, 16, 17, 23, 31, 33, 37, 64, 65, 70]))
    )
    base_pfn = draw(
        st.one_of(
            st.sampled_from([0, 1, 5, 37, 64, 2**32 - 3, 2**64 - nr_pages]),
            st.integers(0, 130),
        )
    )
    geometry = {
        "nr_pages": nr_pages,
        "page_size": draw(st.sampled_from([64, 64, 128, 4096])),
        "base_pfn": base_pfn,
        "reserved_pages": draw(st.one_of(st.just(0), st.integers(0, nr_pages))),
        "max_order": draw(st.integers(1, 11)),
        "zero": draw(st.sampled_from(["free", "alloc", "never"])),
        "_links": draw(st.sampled_from(["side", "intrusive"])),
    }
    if draw(st.integers(0, 3), label="arena") == 0:
        # A pool without an arena: page numbers only, links in the side table, never zeroed.
        geometry.update(zero="never", _links="side", arena=False)
        return geometry, None
    return geometry, draw(st.one_of(st.none(), st.integers(0, 2**32)))


class DifferentialMachine(RuleBasedStateMachine):
    """Random sequences of calls on a Pool and a ReferencePool that must stay in lockstep."""

    rule_steps = 0  # rule steps run, over all examples

    def __init__(self) -> None:
        super().__init__()
        self.twin: Lockstep | None = None

    @initialize(built=geometries())
    def build(self, built: tuple[dict[str, Any], int | None]) -> None:
        self.twin = twin(*built)

    @property
    def pools(self) -> Lockstep:
        assert self.twin is not None
        return self.twin

    def step(self) -> Lockstep:
        """The pools, counting one rule step."""
        type(self).rule_steps += 1
        return self.pools

    def pfn(self, data: st.DataObject) -> int:
        """A held pfn most of the time, else a pfn near or far outside the held ones."""
        pfns, held = self.pools.pfns, self.pools.held()
        kind = data.draw(st.integers(0 if held else 6, 9), label="kind")
        if kind < 6:
            choices: Any = held
        elif kind < 8:
            choices = pfns
        elif kind == 8:
            choices = [pfns.start - 2, pfns.start - 1, pfns.stop, pfns.stop + 1]
        else:
            choices = WILD_PFNS
        return data.draw(st.sampled_from(choices), label="pfn")

    def order(self, data: st.DataObject) -> int:
        """A valid order most of the time, else an invalid one."""
        max_order = self.pools.model.max_order
        options = [st.integers(0, max_order - 1)] * 3 + [
            st.sampled_from([*WILD_ORDERS, max_order, max_order + 1])
        ]
        return data.draw(st.one_of(options), label="order")

    def argument(self, param: str, data: st.DataObject) -> Any:
        """An argument of the kind an operation table entry declares."""
        if param == "order":
            return self.order(data)
        if param == "count":
            return data.draw(st.integers(-1, 5), label="count")
        if param == "pfn":
            return self.pfn(data)
        if param == "pfns":
            return [self.pfn(data) for _ in range(data.draw(st.integers(0, 4), label="length"))]
        raise AssertionError(f"no strategy for an argument of kind {param!r}")

    @rule(data=st.data(), kind=st.sampled_from(sorted(OPERATIONS)))
    def any_operation(self, data: st.DataObject, kind: str) -> None:
        """Any operation of the rulebook's table: a new one is exercised without a new rule."""
        args = [self.argument(param, data) for param in OPERATIONS[kind].params]
        self.step().apply((kind, *args))

    @rule(data=st.data())
    def alloc_pages(self, data: st.DataObject) -> None:
        self.step().apply(("alloc", self.order(data)))

    @rule(data=st.data(), count=st.one_of(st.integers(-1, 5), st.just(2**40)))
    def alloc_many(self, data: st.DataObject, count: int) -> None:
        self.step().apply(("alloc_many", self.order(data), count))

    @rule(data=st.data(), extra=st.integers(0, 1))
    def alloc_many_to_capacity(self, data: st.DataObject, extra: int) -> None:
        """alloc_many right at (or one past) what the free lists can supply."""
        twin = self.step()
        order = data.draw(st.integers(0, twin.model.max_order - 1), label="order")
        twin.apply(("alloc_many", order, twin.capacity(order) + extra))

    @rule(data=st.data(), nr_pages=st.one_of(st.integers(1, 9), st.integers(-1, 70)))
    def alloc_exact(self, data: st.DataObject, nr_pages: int) -> None:
        """A run of any length, up to (and past) the largest block."""
        self.step().apply(("exact", nr_pages))

    @rule(data=st.data())
    def put_page(self, data: st.DataObject) -> None:
        self.step().apply(("put", self.pfn(data)))

    @rule(data=st.data())
    def get_page(self, data: st.DataObject) -> None:
        self.step().apply(("get", self.pfn(data)))

    @rule(data=st.data())
    def split_page(self, data: st.DataObject) -> None:
        self.step().apply(("split", self.pfn(data)))

    @rule(data=st.data())
    def page_count(self, data: st.DataObject) -> None:
        self.step().apply(("page_count", self.pfn(data)))

    @rule(data=st.data())
    def view(self, data: st.DataObject) -> None:
        self.step().apply(("view", self.pfn(data)))

    @rule(
        data=st.data(),
        offset=st.integers(0, 2**20),
        seed=st.integers(0, 2**32),
        size=st.integers(1, 300),
    )
    def write(self, data: st.DataObject, offset: int, seed: int, size: int) -> None:
        twin = self.step()
        held = twin.held()
        if held and twin.geometry.arena != "none":
            pfn = data.draw(st.sampled_from(held), label="pfn")
            twin.write(pfn, offset, random.Random(seed).randbytes(size))

    @rule(data=st.data(), length=st.integers(1, 6), not_int=st.sampled_from([None, *NOT_INTS]))
    def put_many(self, data: st.DataObject, length: int, not_int: Any) -> None:
        pfns: list[Any] = [self.pfn(data) for _ in range(length)]
        if not_int is not None and data.draw(st.booleans(), label="insert non-int"):
            pfns.insert(data.draw(st.integers(0, length), label="at"), not_int)
        self.step().apply(("put_many", pfns))

    @precondition(lambda self: self.twin is not None and self.twin.model.free_pages == 0)
    @rule()
    def release_all(self) -> None:
        """When the pool is full, drop every reference (reserved pages too): all coalesces."""
        twin = self.step()
        count = twin.model.page_count
        twin.apply(("put_many", [pfn for pfn in twin.held() for _ in range(count(pfn))]))

    @invariant()
    def pools_agree(self) -> None:
        if self.twin is not None:
            self.twin.agree()


def _profile_name() -> str | None:
    get_name = getattr(settings, "get_current_profile_name", None)
    return get_name() if get_name else getattr(settings, "_current_profile", None)


def test_differential_machine() -> None:
    DifferentialMachine.rule_steps = 0
    run_state_machine_as_test(DifferentialMachine)
    if _profile_name() == "ci":
        assert DifferentialMachine.rule_steps >= MIN_CI_STEPS, DifferentialMachine.rule_steps


# ------------------------------------------------------------------------- fixed scripts


def _scripted_run(twin: Lockstep, rng: random.Random, steps: int) -> None:
    """Fill the pool, release it in a random order, then run random calls, comparing each."""
    ref = twin.model
    for order in reversed(range(ref.max_order)):
        while twin.apply(("alloc", order))[1] is None:
            twin.agree()
        twin.agree()
    assert ref.free_pages == 0
    for pfn in twin.held():
        twin.write(pfn, 0, rng.randbytes(rng.randrange(1, 2 * twin.geometry.page_size)))
    held = twin.held()
    rng.shuffle(held)
    for pfn in held[: len(held) // 3]:
        twin.apply(("split", pfn))
        twin.agree()
    refs = [pfn for pfn in twin.held() for _ in range(ref.page_count(pfn))]
    rng.shuffle(refs)
    while refs:
        size = rng.randrange(1, 5)
        chunk, refs = refs[:size], refs[size:]
        twin.apply(("put_many", chunk))
        twin.agree()
    assert ref.free_pages == ref.nr_pages
    for _ in range(steps):
        held = twin.held()
        pfn = rng.choice(held) if held and rng.random() < 0.8 else rng.choice(WILD_PFNS)
        action = rng.randrange(7)
        if action == 0:
            twin.apply(("alloc", rng.randrange(-1, ref.max_order + 1)))
        elif action == 1:
            twin.apply(("alloc_many", rng.randrange(ref.max_order), rng.randrange(4)))
        elif action == 2:
            twin.apply(("put", pfn))
        elif action == 3:
            twin.apply(("get", pfn))
        elif action == 4:
            twin.apply(("split", pfn))
        elif action == 5 and held:
            data = rng.randbytes(rng.randrange(1, 100))
            twin.write(rng.choice(held), rng.randrange(1 << 16), data)
        else:
            twin.apply(("put_many", [*rng.sample(held, min(len(held), 3)), pfn]))
        twin.agree()


@pytest.mark.parametrize("fill_seed", [None, 7])
def test_geometry_family(geometry: dict[str, Any], fill_seed: int | None) -> None:
    _scripted_run(twin(geometry, fill_seed), random.Random(geometry_seed(geometry)), steps=120)


def geometry_seed(geometry: dict[str, Any]) -> int:
    """A stable seed derived from a geometry (str hashing is randomized per process)."""
    return sum(ord(c) * (i + 1) for i, c in enumerate(repr(sorted(geometry.items()))))


def test_refcount_overflow_agrees() -> None:
    pools = twin({"nr_pages": 4, "page_size": 64})
    pfn = pools.apply(("alloc", 1))[0]
    for _ in range(MAX_REFCOUNT - 1):
        pools.pool.get_page(pfn)
        pools.model.get_page(pfn)
    pools.agree()
    assert isinstance(pools.apply(("get", pfn))[1], PageError)
    assert pools.pool.page_count(pfn) == MAX_REFCOUNT
    pools.apply(("split", pfn))  # the head keeps 65535, the tail gets 1
    pools.agree()
    for _ in range(MAX_REFCOUNT - 1):
        pools.pool.put_page(pfn)
        pools.model.put_page(pfn)
    pools.agree()
    pools.apply(("put_many", [pfn, pfn + 1, pfn]))  # one put too many: nothing is put
    pools.agree()
    assert pools.model.free_lists() == [[], [2], []]
    pools.apply(("put_many", [pfn, pfn + 1]))
    pools.agree()
    assert pools.model.free_lists() == [[], [], [0]]


# ------------------------------------------------------------------------- the contract, on both


@pytest.fixture(params=[Pool, ReferencePool], ids=["Pool", "ReferencePool"])
def impl(request: pytest.FixtureRequest) -> type:
    return request.param


def _kwargs_id(value: Any) -> str:
    """Test id of a constructor-keywords dict (buffers by type and size)."""
    if not isinstance(value, dict):
        return getattr(value, "__name__", repr(value))

    def show(item: Any) -> str:
        if isinstance(item, (bytes, bytearray, memoryview, np.ndarray)):
            return f"{type(item).__name__}[{memoryview(item).nbytes}]"
        return repr(item)

    return ",".join(f"{key}={show(item)}" for key, item in value.items())


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
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
    ],
    ids=_kwargs_id,
)
def test_constructor_rejects(impl: type, kwargs: dict[str, Any], error: type) -> None:
    with pytest.raises(error) as info:
        impl(**kwargs)
    assert type(info.value) is error


def _read_only_array() -> np.ndarray:
    array = np.zeros(576, np.uint8)
    array.flags.writeable = False
    return array


@pytest.mark.parametrize(
    "dtype",
    [object, [("a", "<i8"), ("b", object)]],
    ids=["object", "struct-with-object"],
)
def test_constructor_rejects_arrays_of_objects(impl: type, dtype: Any) -> None:
    with pytest.raises(TypeError):
        impl(1, page_size=64, buffer=np.empty(64, dtype=dtype))


def test_constructor_rejects_read_only_numpy(impl: type) -> None:
    with pytest.raises(TypeError):
        impl(9, page_size=64, buffer=_read_only_array())


@pytest.mark.parametrize(
    ("kwargs", "max_order", "free_lists"),
    [
        ({"nr_pages": True}, 1, [[0]]),
        ({"nr_pages": np.int64(9), "page_size": np.uint16(64)}, 4, [[8], [], [], [0]]),
        ({"nr_pages": 9, "max_order": 2**70}, 4, [[8], [], [], [0]]),
        ({"nr_pages": 9, "max_order": 12}, 4, [[8], [], [], [0]]),
        ({"nr_pages": 9, "reserved_pages": 9}, 4, [[], [], [], []]),
        ({"nr_pages": 9, "base_pfn": 2**64 - 9}, 4, [[2**64 - 9], [], [], [2**64 - 8]]),
    ],
)
def test_constructor_accepts(
    impl: type, kwargs: dict[str, Any], max_order: int, free_lists: list[list[int]]
) -> None:
    pool = impl(**kwargs)
    assert pool.max_order == max_order
    assert pool.free_lists() == free_lists
    pool.check()


def test_largest_page_size(impl: type) -> None:
    # Two 1 GiB pages over a lazily allocated mapping; "never" so that nothing is touched.
    with mmap.mmap(-1, 2**31) as mapping:
        pool = impl(2, page_size=2**30, buffer=mapping, zero="never")
        assert (pool.page_size, pool.max_order, pool.free_lists()) == (2**30, 2, [[], [0]])
        del pool


@pytest.mark.parametrize(
    "make",
    [
        lambda size: bytearray(size),
        lambda size: mmap.mmap(-1, size),
        lambda size: memoryview(bytearray(size)),
        lambda size: np.zeros(size // 8, np.float64),
        lambda size: np.zeros((size // 64, 16), np.int32),
        lambda size: np.zeros(size // 12 + 1, np.dtype([("a", "<i4"), ("b", "<f8")])),
    ],
    ids=["bytearray", "mmap", "memoryview", "float64", "int32-2d", "structured"],
)
def test_buffer_kinds(impl: type, make: Callable[[int], Any]) -> None:
    buffer = make(16 * 64)
    raw = memoryview(buffer).cast("B")
    raw[:] = b"\xa5" * raw.nbytes
    pool = impl(16, page_size=64, buffer=buffer, reserved_pages=1)
    assert bytes(raw[:64]) == b"\xa5" * 64  # the reserved page is never freed, never zeroed
    assert not any(raw[64 : 16 * 64])  # the free pages were zeroed by the initial puts
    assert bytes(raw[16 * 64 :]) == b"\xa5" * (raw.nbytes - 16 * 64)
    pfn = pool.alloc_pages(2)
    pool.view(pfn)[:] = b"\x11" * 256
    assert bytes(raw[pfn * 64 : pfn * 64 + 256]) == b"\x11" * 256
    pool.put_page(pfn)
    assert not any(raw[pfn * 64 : pfn * 64 + 256])
    pool.check()


def test_bytearray_cannot_be_resized_while_used(impl: type) -> None:
    buffer = bytearray(4 * 64)
    pool = impl(4, page_size=64, buffer=buffer)
    with pytest.raises(BufferError):
        buffer.append(0)
    with pytest.raises(BufferError):
        del buffer[:64]
    assert len(buffer) == 4 * 64
    pool.check()


def test_view_outlives_pool(impl: type) -> None:
    pool = impl(4, page_size=64)
    pfn = pool.alloc_pages(1)
    view = pool.view(pfn)
    view[:] = b"\x5a" * 128
    del pool
    assert bytes(view) == b"\x5a" * 128
    view[0] = 1
    assert view[0] == 1


def test_view_shape(impl: type) -> None:
    pool = impl(37, base_pfn=5, page_size=128)
    pfn = pool.alloc_pages(3)
    view = pool.view(pfn)
    assert (view.format, view.ndim, view.nbytes, view.readonly) == ("B", 1, 128 << 3, False)


def test_repr(impl: type) -> None:
    assert repr(impl(9)) == (
        f"{impl.__name__}(nr_pages=9, page_size=4096, base_pfn=0, max_order=4, zero='free', "
        "free_pages=9)"
    )


@pytest.mark.parametrize("bad", NOT_INTS)
def test_non_int_arguments(impl: type, bad: Any) -> None:
    pool = impl(9, page_size=64)
    held = pool.alloc_pages(0)
    before = pool.free_lists()
    for call in (
        lambda: pool.alloc_pages(bad),
        lambda: pool.get_page(bad),
        lambda: pool.put_page(bad),
        lambda: pool.split_page(bad),
        lambda: pool.page_count(bad),
        lambda: pool.view(bad),
        lambda: pool.alloc_many(bad, 1),
        lambda: pool.alloc_many(0, bad),
        lambda: pool.put_many([held, bad]),
        lambda: pool.put_many(7),
    ):
        with pytest.raises(TypeError):
            call()
    assert pool.free_lists() == before
    assert pool.page_count(held) == 1


def test_alloc_many_checks_order_before_count(impl: type) -> None:
    pool = impl(9, page_size=64)
    with pytest.raises(ValueError):
        pool.alloc_many(4, "x")
    with pytest.raises(TypeError):
        pool.alloc_many("x", -1)
    with pytest.raises(ValueError):
        pool.alloc_many(0, -1)


def test_index_protocol_ints(impl: type) -> None:
    pool = impl(9, page_size=64)
    pfn = pool.alloc_pages(np.int8(1))
    pool.get_page(np.uint64(pfn))
    assert pool.page_count(operator.index(np.int32(pfn))) == 2
    pool.put_many(np.array([pfn, pfn]))
    assert pool.alloc_pages(True) == pfn
    assert pool.free_lists() == [[8], [2], [4], []]


def test_contract_messages(impl: type) -> None:
    pool = impl(16, page_size=64, reserved_pages=12)  # 12 o2 free, its buddy 8 held
    with pytest.raises(PageError) as info:
        pool.put_page(12)
    assert str(info.value) == "put_page: pfn 12 is not held (refcount 0: free page)"
    with pytest.raises(ValueError) as info:
        impl(1024, page_size=64).alloc_pages(12)
    assert str(info.value) == "alloc_pages: order 12 is invalid: this pool has orders 0..10"
    pool = impl(8, page_size=64, reserved_pages=3)  # [[3], [], [4], []]
    with pytest.raises(OutOfMemory) as info:
        pool.alloc_pages(3)
    assert str(info.value).startswith("alloc_pages: out of memory: no free block of order >= 3")
    for _ in range(MAX_REFCOUNT - 1):
        pool.get_page(2)  # a reserved page, held once
    with pytest.raises(PageError) as info:
        pool.get_page(2)
    assert str(info.value) == "get_page: pfn 2 refcount would overflow 65535"


def test_corruption_error_is_exported() -> None:
    assert issubclass(CorruptionError, RuntimeError)
