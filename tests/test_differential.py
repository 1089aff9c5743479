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

Step budget: under the ``ci`` profile the machine runs 60 examples of up to 60 steps (one of
which builds the pools); Hypothesis ends some examples early, and a run takes about 2,900 rule
steps. ``test_differential_machine`` counts them and fails if fewer than 2,500 ran.
"""

from __future__ import annotations

import random
from typing import Any

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

from pagebuddy import PageError
from pagebuddy._lockstep import Lockstep
from pagebuddy._rules import MAX_REFCOUNT, OPERATIONS, Geometry

MIN_CI_STEPS = 2500
#: Steps per example at least (the ``ci`` profile's 50, raised for this machine).
STEPS_PER_EXAMPLE = 60
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
    room = draw(st.one_of(st.just(0), st.just(0), st.integers(1, 40)), label="room to grow")
    if room and base_pfn + nr_pages + room <= 2**64:
        # A pool that grows: room past its pages, or built empty (hyp_pool_init_empty).
        geometry["max_pages"] = nr_pages + room
        if draw(st.booleans(), label="empty"):
            geometry.update(nr_pages=0, reserved_pages=0)
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
        if param == "cpu":
            return data.draw(st.one_of(st.integers(0, 3), st.just(-1), st.just(2**64)), "cpu")
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

    @rule(data=st.data())
    def admit_uncovered(self, data: st.DataObject) -> None:
        """Admit at a pfn the pool does not cover (never admitted, or reclaimed), at an order
        that may or may not fit there."""
        twin = self.step()
        uncovered = [p for p in twin.pfns if not twin.model.covers(p)]
        if uncovered:
            pfn = data.draw(st.sampled_from(uncovered), label="pfn")
            order = data.draw(st.integers(0, max(0, (pfn & -pfn).bit_length() - 1)), "order")
            twin.apply(("admit", pfn, min(order, twin.model.max_order)))

    @rule(data=st.data())
    def reclaim(self, data: st.DataObject) -> None:
        self.step().apply(("reclaim", self.order(data)))

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


def _pfn_rule(kind: str) -> Any:
    """A rule calling the one-pfn operation ``kind`` (one rule each keeps them as frequent)."""

    def call(self: DifferentialMachine, data: st.DataObject) -> None:
        self.step().apply((kind, self.pfn(data)))

    call.__name__ = call.__qualname__ = kind
    return rule(data=st.data())(call)


for _kind in ("put", "get", "split", "page_count", "view"):
    setattr(DifferentialMachine, _kind, _pfn_rule(_kind))


def _profile_name() -> str | None:
    get_name = getattr(settings, "get_current_profile_name", None)
    return get_name() if get_name else getattr(settings, "_current_profile", None)


def test_differential_machine() -> None:
    DifferentialMachine.rule_steps = 0
    steps = max(STEPS_PER_EXAMPLE, settings.default.stateful_step_count)
    run_state_machine_as_test(DifferentialMachine, settings=settings(stateful_step_count=steps))
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
