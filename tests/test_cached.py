"""The cached pool (``Pool(..., cpus=N)``, the core's ``CachedPool``) against its model.

The model is ``pagebuddy._cache.CachedReferencePool`` (what ``ReferencePool(..., cpus=N)``
returns), paired with ``Pool`` by the lockstep engine through the rulebook's ``MODELS``. A
Hypothesis state machine drives both with the engine's operations (through the calling
thread's slot) and with calls that name their slot (``cpu=``), drains of one slot and of all;
after every step the results (or exception classes), every slot's cache contents in order, the
free lists, ``free_pages``, every page's refcount, the arenas as far as the policy defines them
and both ``check()``\\ s must agree.

Step budget: under the ``ci`` profile the machine runs 60 examples of 50 steps;
``test_cached_machine`` fails if fewer than 2,000 rule steps ran.
"""

from __future__ import annotations

import array
import contextlib
import random
import threading
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from pagebuddy import OutOfMemory, PageError, Pool, ReferencePool
from pagebuddy._cache import CachedReferencePool
from pagebuddy._lockstep import Divergence, Lockstep, call, describe
from pagebuddy._rules import KIND_OF_METHOD, Geometry

MIN_CI_STEPS = 2000


def cached_twin(fill_seed: int | None = None, **kwargs: Any) -> Lockstep:
    """A cached Pool and its model built alike, compared by the engine after each call."""
    g = Geometry.from_kwargs(**kwargs)
    if fill_seed is not None:
        g = g.replace(arena="buffer")
    twin = Lockstep(g, fill_seed=fill_seed, strict=True)
    assert isinstance(twin.model, CachedReferencePool)
    agree(twin)
    return twin


def agree(twin: Lockstep) -> None:
    """Everything the engine compares: with caches, also every slot's contents in order and
    the cache settings."""
    twin.agree()


def both(twin: Lockstep, method: str, *args: Any, **kwargs: Any) -> Any:
    """``method(*args, **kwargs)`` on both pools; the model's result, or None when both raised.

    A method of the operation table goes through the engine (results, exception classes and
    messages, new blocks' contents, ``free_pages``, free lists and every slot's cache);
    ``drain`` and ``drain_all`` are compared here, the state after them by :func:`agree`.
    """
    kind = KIND_OF_METHOD.get(method)
    if kind is not None:
        value, exc = twin.apply((kind, *args), make_kwargs=lambda: dict(kwargs))
        return value if exc is None else None
    oa = _call(twin.pool, method, args, kwargs)
    ob = _call(twin.model, method, args, kwargs)
    (ra, ea), (rb, eb) = oa, ob
    if (ea is None) != (eb is None) or (ea is not None and type(ea) is not type(eb)):
        detail = f"Pool {describe(oa)}, the model {describe(ob)}"
        raise Divergence(twin.steps, None, "exception", detail)
    if ea is None and ra != rb:
        raise Divergence(twin.steps, None, "result", f"Pool {ra!r}, the model {rb!r}")
    twin.steps += 1
    return rb if eb is None else None


def _call(pool: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return call(lambda *a: getattr(pool, method)(*a, **kwargs), args)


# ------------------------------------------------------------------------- state machine


@st.composite
def geometries(draw: st.DrawFn) -> tuple[dict[str, Any], int | None]:
    nr_pages = draw(st.one_of(st.integers(1, 9), st.sampled_from([16, 17, 31, 33, 64])))
    batch = draw(st.integers(1, 4))
    geometry = {
        "nr_pages": nr_pages,
        "page_size": 64,
        "base_pfn": draw(st.sampled_from([0, 5, 37, 2**64 - nr_pages])),
        "reserved_pages": draw(st.one_of(st.just(0), st.integers(0, nr_pages))),
        "max_order": draw(st.integers(1, 11)),
        "zero": draw(st.sampled_from(["free", "alloc", "never"])),
        "_links": draw(st.sampled_from(["side", "intrusive"])),
        "cpus": draw(st.integers(1, 3)),
        "cache_batch": batch,
        "cache_high": batch + draw(st.integers(0, 4)),
    }
    if draw(st.booleans()):
        # The default: caches that size themselves, in pools large enough that each slot's
        # share of the bound (nr_pages // 8 // cpus) holds a few pages.
        del geometry["cache_batch"], geometry["cache_high"]
        geometry["nr_pages"] = nr_pages = draw(st.sampled_from([64, 100, 256]))
        geometry["base_pfn"] = draw(st.sampled_from([0, 5, 2**64 - nr_pages]))
        geometry["reserved_pages"] = draw(st.one_of(st.just(0), st.integers(0, nr_pages)))
    room = draw(st.one_of(st.just(0), st.just(0), st.integers(1, 24)), label="room to grow")
    if room and geometry["base_pfn"] + nr_pages + room <= 2**64:
        geometry["max_pages"] = nr_pages + room
    return geometry, draw(st.one_of(st.none(), st.integers(0, 2**32)))


class CachedMachine(RuleBasedStateMachine):
    """Random calls on a cached Pool and its model, which must stay in lockstep."""

    rule_steps = 0

    def __init__(self) -> None:
        super().__init__()
        self.twin: Lockstep | None = None

    @initialize(built=geometries())
    def build(self, built: tuple[dict[str, Any], int | None]) -> None:
        geometry, seed = built
        self.twin = cached_twin(seed, **geometry)

    def step(self) -> Lockstep:
        type(self).rule_steps += 1
        assert self.twin is not None
        return self.twin

    def cpu(self, data: st.DataObject) -> Any:
        return data.draw(st.one_of(st.integers(0, 4), st.just(None), st.just(-1)), label="cpu")

    def pfn(self, data: st.DataObject) -> int:
        twin = self.twin
        assert twin is not None
        held = twin.held()
        if held and data.draw(st.integers(0, 4), label="held?") > 0:
            return data.draw(st.sampled_from(held), label="pfn")
        pfns = twin.pfns
        return data.draw(st.sampled_from([*pfns, pfns.start - 1, pfns.stop]), label="pfn")

    def order(self, data: st.DataObject) -> int:
        assert self.twin is not None
        return data.draw(st.integers(0, self.twin.model.max_order), label="order")

    @rule(data=st.data())
    def alloc_on(self, data: st.DataObject) -> None:
        both(self.step(), "alloc_pages", self.order(data), cpu=self.cpu(data))

    @rule(data=st.data())
    def put_on(self, data: st.DataObject) -> None:
        both(self.step(), "put_page", self.pfn(data), cpu=self.cpu(data))

    @rule(data=st.data(), count=st.integers(0, 6))
    def alloc_many_on(self, data: st.DataObject, count: int) -> None:
        both(self.step(), "alloc_many", self.order(data), count, cpu=self.cpu(data))

    @rule(data=st.data(), length=st.integers(1, 4))
    def put_many_on(self, data: st.DataObject, length: int) -> None:
        pfns = [self.pfn(data) for _ in range(length)]
        both(self.step(), "put_many", pfns, cpu=self.cpu(data))

    @rule(data=st.data(), count=st.integers(0, 6), spare=st.integers(0, 2))
    def alloc_many_into_array(self, data: st.DataObject, count: int, spare: int) -> None:
        """``alloc_many(..., out=array('Q'))``, each pool into an array of its own."""
        cpu = self.cpu(data)
        self.step().apply(
            ("alloc_many", self.order(data), count),
            make_kwargs=lambda: {"out": array.array("Q", [0] * (count + spare)), "cpu": cpu},
        )

    @rule(data=st.data(), length=st.integers(1, 4))
    def put_many_from_array(self, data: st.DataObject, length: int) -> None:
        twin = self.step()
        pfns = [p for p in (self.pfn(data) for _ in range(length)) if 0 <= p < 2**64]
        cpu = self.cpu(data)
        twin.apply(
            ("put_many", tuple(pfns)),
            make_args=lambda: (array.array("Q", pfns),),
            make_kwargs=lambda: {"cpu": cpu},
        )

    @rule(data=st.data())
    def alloc_exact(self, data: st.DataObject) -> None:
        assert self.twin is not None
        largest = 1 << (self.twin.model.max_order - 1)
        self.step().apply(("exact", data.draw(st.integers(0, largest + 1), label="nr_pages")))

    @rule(data=st.data())
    def alloc(self, data: st.DataObject) -> None:
        self.step().apply(("alloc", self.order(data)))

    @rule(data=st.data())
    def reclaim(self, data: st.DataObject) -> None:
        """A reclaim drains every cache first, then takes the block alloc_pages would."""
        self.step().apply(("reclaim", self.order(data)))

    @rule(data=st.data(), count=st.integers(0, 4))
    def reclaim_many(self, data: st.DataObject, count: int) -> None:
        self.step().apply(("reclaim_many", self.order(data), count))

    @rule(data=st.data())
    def admit(self, data: st.DataObject) -> None:
        """Admit at a pfn the pool does not cover (or, now and then, one it does)."""
        twin = self.step()
        uncovered = [p for p in twin.pfns if not twin.model.covers(p)] or list(twin.pfns)
        pfn = data.draw(st.sampled_from(uncovered), label="pfn")
        twin.apply(("admit", pfn, self.order(data)))

    @rule(data=st.data())
    def put(self, data: st.DataObject) -> None:
        self.step().apply(("put", self.pfn(data)))

    @rule(data=st.data())
    def get(self, data: st.DataObject) -> None:
        self.step().apply(("get", self.pfn(data)))

    @rule(data=st.data())
    def split(self, data: st.DataObject) -> None:
        self.step().apply(("split", self.pfn(data)))

    @rule(data=st.data(), seed=st.integers(0, 2**32))
    def write(self, data: st.DataObject, seed: int) -> None:
        twin = self.step()
        held = twin.held()
        if held:
            pfn = data.draw(st.sampled_from(held), label="pfn")
            twin.write(pfn, seed, random.Random(seed).randbytes(100))

    @rule(data=st.data())
    def drain(self, data: st.DataObject) -> None:
        twin = self.step()
        both(twin, "drain", self.cpu(data))
        agree(twin)

    @rule()
    def drain_all(self) -> None:
        twin = self.step()
        both(twin, "drain_all")
        agree(twin)
        for cpu in range(twin.model.cpus):
            assert all(not stack for stack in twin.pool.cache_contents(cpu))

    @invariant()
    def pools_agree(self) -> None:
        if self.twin is not None:
            agree(self.twin)


def _profile_name() -> str | None:
    from hypothesis import settings

    get_name = getattr(settings, "get_current_profile_name", None)
    return get_name() if get_name else getattr(settings, "_current_profile", None)


def test_cached_machine() -> None:
    CachedMachine.rule_steps = 0
    run_state_machine_as_test(CachedMachine)
    if _profile_name() == "ci":
        assert CachedMachine.rule_steps >= MIN_CI_STEPS, CachedMachine.rule_steps


# ------------------------------------------------------------------------- fixed cases


@pytest.mark.parametrize("impl", [Pool, ReferencePool], ids=["Pool", "ReferencePool"])
def test_the_policy_on_both(impl: type) -> None:
    """Refill in pool order, LIFO reuse, drain of the coldest batch above high, drain_all."""
    pool = impl(16, page_size=64, cpus=2, cache_batch=2, cache_high=3)
    assert (pool.cpus, pool.cache_batch, pool.cache_high) == (2, 2, 3)
    assert [pool.alloc_pages(0, cpu=0) for _ in range(4)] == [0, 1, 2, 3]
    assert pool.cache_contents(0) == [[], [], [], []]
    assert pool.alloc_pages(0, cpu=1) == 4
    assert pool.cache_contents(1) == [[5], [], [], []]
    assert pool.free_pages == 16 - 5
    for pfn in (0, 1, 2):
        pool.put_page(pfn, cpu=0)
    assert pool.cache_contents(0) == [[0, 1, 2], [], [], []]
    assert pool.page_count(0) == 0
    with pytest.raises(PageError, match=r"^put_page: pfn 0 "):
        pool.put_page(0, cpu=1)  # cached: free
    pool.put_page(3, cpu=0)  # 4 > high: 0 and 1 go back, coalesced
    assert pool.cache_contents(0) == [[2, 3], [], [], []]
    assert pool.free_lists()[1][-1] == 0
    assert pool.alloc_pages(0, cpu=0) == 3  # the hottest
    pool.put_page(3, cpu=2)  # cpu 2 is slot 0
    pool.drain(1)
    assert pool.cache_contents(1) == [[], [], [], []]
    pool.put_page(4)
    pool.drain_all()
    pool.check()
    assert pool.free_pages == 16
    assert pool.free_lists()[-1] == [0]


@pytest.mark.parametrize("impl", [Pool, ReferencePool], ids=["Pool", "ReferencePool"])
def test_arguments_on_both(impl: type) -> None:
    for bad, exc in [
        ({"cpus": -1}, ValueError),
        ({"cpus": 2**16 + 1}, ValueError),
        ({"cpus": "2"}, TypeError),
        ({"cpus": 2, "cache_batch": 0}, ValueError),
        ({"cpus": 2, "cache_batch": 5, "cache_high": 4}, ValueError),
        ({"cache_high": 2**16 + 1}, ValueError),
    ]:
        with pytest.raises(exc):
            impl(8, page_size=64, **bad)
    exact = impl(8, page_size=64, cpus=0)
    assert (exact.cpus, exact.cache_contents(), exact.cache_contents(None)) == (0, [], [])
    exact.drain()
    exact.drain(None)
    exact.drain_all()
    # Without caches there is no slot to name: any cpu but None is refused, nothing changes.
    for refused in (
        lambda: exact.alloc_pages(0, cpu=7),
        lambda: exact.cache_contents(5),
        lambda: exact.drain(0),
    ):
        with pytest.raises(ValueError, match=r"cpu=\d names a CPU slot, but this pool has no"):
            refused()
    assert exact.free_pages == 8
    assert exact.alloc_pages(0, cpu=None) == 0
    with pytest.raises(ValueError, match="cpu must be >= 0"):
        exact.alloc_pages(0, cpu=-1)
    with pytest.raises(TypeError):
        exact.put_page(0, cpu="0")
    with pytest.raises(ValueError, match=r"^put_page: cpu=3 names a CPU slot"):
        exact.put_page(0, cpu=3)
    assert exact.page_count(0) == 1
    exact.put_page(0)
    pool = impl(8, page_size=64, cpus=2, cache_high=64)
    with pytest.raises(ValueError, match=r"^drain: cpu must be >= 0"):
        pool.drain(-1)
    with pytest.raises(TypeError):
        pool.cache_contents(1.0)
    assert pool.alloc_pages(0, cpu=2**70) == 0  # slot 2**70 % 2 == 0
    assert pool.cache_contents(0) == [[7, 6, 5, 4, 3, 2, 1], [], [], []]
    assert "cpus=2, cache_batch=16, cache_high=64" in repr(pool)


def test_out_of_memory_drains_every_slot_first() -> None:
    twin = cached_twin(nr_pages=8, page_size=64, cpus=3, cache_batch=2, cache_high=2)
    for cpu in (0, 1, 2, 0):
        both(twin, "alloc_pages", 0, cpu=cpu)  # slots 1 and 2 each cache one page
    assert twin.model.cache_contents(1) == [[3], [], [], []]
    agree(twin)
    assert both(twin, "alloc_pages", 2, cpu=0) is None  # OutOfMemory, after draining all
    assert all(twin.pool.cache_contents(c) == [[], [], [], []] for c in range(3))
    agree(twin)
    assert both(twin, "alloc_many", 0, 9, cpu=1) is None  # the 4 blocks taken go back
    assert twin.pool.cache_contents(1) == [[5, 3], [], [], []]  # 7 and 6 went back (high 2)
    agree(twin)


def test_out_of_memory_raises_when_nothing_is_left() -> None:
    for impl in (Pool, ReferencePool):
        pool = impl(4, page_size=64, cpus=2, cache_batch=4, cache_high=4)
        got = [pool.alloc_pages(0, cpu=c) for c in (0, 1, 0, 1)]
        assert sorted(got) == [0, 1, 2, 3]
        with pytest.raises(OutOfMemory, match=r"^alloc_pages: out of memory"):
            pool.alloc_pages(0, cpu=1)
        with pytest.raises(OutOfMemory, match=r"^alloc_many: out of memory"):
            pool.alloc_many(0, 1)
        pool.put_many(got, cpu=1)
        pfn = pool.alloc_pages(0, cpu=0)
        with pytest.raises(PageError, match=r"^put_many: pfns\[1\]"):
            pool.put_many([pfn, pfn], cpu=0)  # all or nothing: pfn stays held
        pool.put_page(pfn)
        assert pool.free_pages == 4
        pool.check()


def test_threads_get_their_own_slots() -> None:
    """Each thread's first call takes the next slot; the model counts threads alike."""
    fixed = {"cpus": 4, "cache_batch": 16}
    pools = [Pool(64, page_size=64, **fixed), ReferencePool(64, page_size=64, **fixed)]
    results: list[list[Any]] = []
    for pool in pools:
        seen: list[Any] = [pool.alloc_pages(0)]  # main thread: slot 0
        for _ in range(3):
            t = threading.Thread(target=lambda p=pool, s=seen: s.append(p.alloc_pages(0)))
            t.start()
            t.join()
        results.append([seen, [pool.cache_contents(c) for c in range(4)]])
    assert results[0] == results[1]
    assert [len(c[0]) for c in results[0][1]] == [15, 15, 15, 15]


def test_concurrent_threads_conserve_pages() -> None:
    """Threads hammering one cached Pool (batch calls without the GIL): no page handed out
    twice; after drain_all the pool holds every page and check() passes."""
    pool = Pool(256, page_size=64, cpus=4, cache_batch=4, cache_high=8)
    held: list[list[int]] = [[] for _ in range(6)]
    errors: list[BaseException] = []

    def work(k: int) -> None:
        rng = random.Random(k)
        mine = held[k]
        try:
            for _ in range(3000):
                r = rng.random()
                if r < 0.45:
                    with contextlib.suppress(OutOfMemory):
                        mine.append(pool.alloc_pages(rng.randrange(3)))
                elif r < 0.5:
                    with contextlib.suppress(OutOfMemory):
                        mine.extend(pool.alloc_many(0, rng.randrange(1, 5)))
                elif mine:
                    pfn = mine.pop(rng.randrange(len(mine)))
                    if r < 0.9:
                        pool.put_page(pfn)
                    else:
                        pool.put_many([pfn])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    pfns = [pfn for mine in held for pfn in mine]
    assert len(pfns) == len(set(pfns))
    pool.drain_all()
    pool.check()
    for pfn in pfns:
        pool.put_page(pfn)
    pool.drain_all()
    pool.check()
    assert pool.free_pages == 256


# ------------------------------------------------------------------------- the command line


def test_demo_and_fuzz_cover_the_cached_pool(capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import run_json, run_main

    code, report = run_json(capsys, "demo", "--cpus", "2", "--ops", "2000")
    assert (code, report["ok"], report["geometry"]["cpus"]) == (0, True, 2)
    code, report = run_json(
        capsys, "demo", "--cpus", "1", "--cache-batch", "2", "--cache-high", "3", "--ops", "500"
    )
    geometry = report["geometry"]
    assert (code, geometry["cache_batch"], geometry["cache_high"]) == (0, 2, 3)
    code, out, _ = run_main(capsys, "demo", "--cpus", "3", "--ops", "300", "--no-progress")
    assert code == 0 and "per-CPU caches: cpus=3, sized by each slot" in out
    code, report = run_json(capsys, "fuzz", "--cpus", "3", "--ops", "3000", "--seed", "5")
    assert (code, report["ok"], report["ops"]) == (0, True, 3000)
    code, report = run_json(
        capsys, "fuzz", "--cpus", "2", "--cache-high", "1", "--ops", "1000", "--seed", "2"
    )
    assert (code, report["ok"]) == (0, True)
    code, out, _ = run_main(capsys, "fuzz", "--cpus", "2", "--ops", "200", "--no-progress")
    assert code == 0 and "No divergence" in out


@pytest.mark.parametrize(
    ("args", "rule"),
    [
        (["--cpus", "-1"], "argument --cpus: must be from 0 to 65536"),
        (["--cpus", "65537"], "argument --cpus: must be from 0 to 65536"),
        (["--cpus", "2", "--cache-batch", "0"], "argument --cache-batch: must be from 1 to 65536"),
        (["--cpus", "2", "--cache-high", "0"], "argument --cache-high: must be from 1 to 65536"),
        (
            ["--cpus", "2", "--cache-batch", "5", "--cache-high", "4"],
            "--cache-high 4 is below --cache-batch 5",
        ),
        (["--cache-batch", "4"], "--cache-batch needs --cpus N with N >= 1"),
        (["--cpus", "0", "--cache-high", "4"], "--cache-high needs --cpus N with N >= 1"),
    ],
)
@pytest.mark.parametrize("command", ["demo", "fuzz"])
def test_bad_cache_options_exit_2_naming_the_rule(
    capsys: pytest.CaptureFixture[str], command: str, args: list[str], rule: str
) -> None:
    from conftest import run_json, run_main

    code, report = run_json(capsys, command, *args, "--ops", "10")
    assert (code, report["ok"], report["exit_code"]) == (2, False, 2)
    assert rule in report["error"]
    code, out, err = run_main(capsys, command, *args, "--ops", "10")
    assert code == 2 and out == ""
    assert rule in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_demo_processes_refuses_caches(capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import run_json

    code, report = run_json(capsys, "demo", "--processes", "2", "--cpus", "2", "--ops", "10")
    assert code == 2 and "--processes runs a pool shared between" in report["error"]


@pytest.mark.parametrize("impl", [Pool, ReferencePool], ids=["Pool", "ReferencePool"])
@pytest.mark.parametrize(
    ("kwargs", "exc", "rule"),
    [
        ({"cpus": -1}, ValueError, "cpus"),
        ({"cpus": 2, "cache_batch": 0}, ValueError, "cache_batch"),
        ({"cpus": 2, "cache_batch": 8, "cache_high": 4}, ValueError, "cache_batch <= cache_high"),
        ({"cpus": 2, "cache_high": 2**16 + 1}, ValueError, "cache_high"),
        ({"cpus": 1.5}, TypeError, "cpus"),
    ],
)
def test_bad_cache_arguments_name_the_rule(
    impl: type, kwargs: dict[str, Any], exc: type, rule: str
) -> None:
    with pytest.raises(exc, match=rule):
        impl(8, page_size=64, **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cpus": -1},
        {"cpus": 2**16 + 1},
        {"cpus": 2, "cache_batch": 0},
        {"cache_batch": 0},
        {"cpus": 2, "cache_high": 2**16 + 1},
        {"cpus": 2, "cache_batch": 8, "cache_high": 4},
    ],
)
def test_both_refuse_bad_cache_settings_in_the_same_words(kwargs: dict[str, Any]) -> None:
    messages = []
    for impl in (Pool, ReferencePool):
        with pytest.raises(ValueError) as info:
            impl(8, page_size=64, **kwargs)
        messages.append(str(info.value))
    assert messages[0] == messages[1]


@pytest.mark.parametrize("impl", [Pool, ReferencePool], ids=["Pool", "ReferencePool"])
def test_arrays_exact_runs_and_arena_less_pools_with_caches(impl: type) -> None:
    """What came beside the caches works with them: out= and array batches through a slot,
    alloc_exact past the caches, and pools of page numbers only."""
    pool = impl(64, cpus=2, cache_batch=4, cache_high=8, arena=False)
    assert pool.arena is False
    out = array.array("Q", [0] * 6)
    assert pool.alloc_many(0, 5, out=out, cpu=1) is out
    assert list(out) == [0, 1, 2, 3, 4, 0]
    assert pool.cache_contents(1) == [[7, 6, 5], [], [], []]
    pool.put_many(out[:5], cpu=0)
    assert pool.cache_contents(0) == [[0, 1, 2, 3, 4], [], [], []]
    run = pool.alloc_exact(5)
    assert [pool.page_count(p) for p in range(run, run + 6)] == [1, 1, 1, 1, 1, 0]
    with pytest.raises(TypeError, match="arena"):
        pool.view(run)
    with pytest.raises(ValueError, match="cpu"):
        pool.put_many(array.array("Q", [run]), cpu=-1)
    assert pool.page_count(run) == 1  # refused: nothing put
    for p in range(run, run + 5):
        pool.put_page(p)
    pool.drain_all()
    pool.check()
    assert pool.free_pages == 64


def test_fuzz_finds_a_wrong_cache_model() -> None:
    """The lockstep engine with the cache model really compares the caches' effects: a model
    whose caches hand out the coldest block instead of the hottest diverges."""

    class ColdFirst(CachedReferencePool):
        def _try_alloc(self, slot: int, order: int) -> int | None:
            stack = self._stacks[slot][order] if order < self._orders else []
            if len(stack) > 1:
                stack.reverse()
            return super()._try_alloc(slot, order)

    g = Geometry.from_kwargs(16, page_size=64, cpus=1, cache_batch=4, cache_high=8)
    twin = Lockstep(g, Pool, ColdFirst)
    with pytest.raises(Divergence):
        for op in [("alloc", 0), ("alloc", 0), ("alloc", 0), ("put", 0), ("alloc", 0)]:
            twin.apply(op)
            twin.agree()


def test_fuzz_names_every_slot() -> None:
    """``fuzz --cpus`` calls through named slots and drains them: a model that puts every
    call on the thread's slot is caught, and the run's trace replays the cached pool."""
    import io

    from pagebuddy import _fuzz
    from pagebuddy._trace import parse_trace

    class ThreadSlotOnly(CachedReferencePool):
        def _slot(self, op: str, cpu: object) -> int:
            return super()._slot(op, None if isinstance(cpu, int) and cpu >= 0 else cpu)

    cfg = _fuzz.FuzzConfig(ops=20000, seed=3, cpus=3, shrink_seconds=5)
    found = _fuzz.fuzz(cfg, model_cls=ThreadSlotOnly)
    assert found.divergence is not None
    trace = io.StringIO()
    result = _fuzz.fuzz(_fuzz.FuzzConfig(ops=3000, seed=3, cpus=3), record=trace)
    assert result.divergence is None
    sections = parse_trace(trace.getvalue().splitlines())
    assert all(dict(s.geometry.options)["cpus"] == 3 for s in sections)
    kinds = {op[0] for s in sections for op in s.ops}
    assert {"alloc_on", "put_on", "drain", "alloc", "put"} <= kinds, kinds


def test_the_cache_model_never_imports_the_native_module() -> None:
    import ast
    import pathlib

    from pagebuddy import _cache

    tree = ast.parse(pathlib.Path(_cache.__file__).read_text())
    imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if "native" in m], imported
    assert all(inspect_doc(getattr(CachedReferencePool, name)) for name in public_members())


def public_members() -> list[str]:
    return [name for name in vars(CachedReferencePool) if not name.startswith("_")]


def inspect_doc(member: Any) -> bool:
    import inspect

    return bool(inspect.getdoc(member))


# ------------------------------------------------------------------------- auto sizing


@pytest.mark.parametrize("impl", [Pool, ReferencePool], ids=["Pool", "ReferencePool"])
def test_caches_size_themselves_by_default(impl: Any) -> None:
    pool = impl(4096, page_size=64, zero="never", cpus=2)
    assert (pool.cache_auto, pool.cache_bound) == (True, 4096 // 8 // 2 * 2)
    assert (pool.cache_batch, pool.cache_high) == (16, 64)
    assert pool.cache_sizes(0) == pool.cache_sizes(1) == (64, 16)
    # Bursts of 200 pages through slot 0, allocated then freed: refills and drains come close
    # together, so slot 0 grows until a burst fits; slot 1 is left as it was.
    for _ in range(8):
        pfns = [pool.alloc_pages(0, cpu=0) for _ in range(200)]
        for pfn in pfns:
            pool.put_page(pfn, cpu=0)
        assert sum(len(s) for s in pool.cache_contents(0)) <= pool.cache_bound // 2
    high, batch = pool.cache_sizes(0)
    assert high >= 256 and batch == min(high // 4, 16 * 32)
    assert pool.cache_sizes(1) == (64, 16)
    # Back to the configured sizes when drained.
    pool.drain(0)
    assert pool.cache_sizes(0) == (64, 16)
    pool.check()


@pytest.mark.parametrize("impl", [Pool, ReferencePool], ids=["Pool", "ReferencePool"])
def test_caches_keep_to_their_share_of_the_bound(impl: Any) -> None:
    pool = impl(1024, page_size=64, zero="never", cpus=4)  # 32 pages per slot
    assert pool.cache_bound == 128
    held = [pool.alloc_pages(order, cpu=k % 4) for k in range(300) for order in (k % 3,)]
    for k, pfn in enumerate(held):
        pool.put_page(pfn, cpu=k % 4)
        cached = [
            sum(len(s) << order for order, s in enumerate(pool.cache_contents(cpu)))
            for cpu in range(4)
        ]
        assert max(cached) <= 32 and sum(cached) <= pool.cache_bound
    # An allocation still drains every cache before OutOfMemory.
    assert pool.alloc_pages(10) == 0
    pool.put_page(0)
    pool.check()


@pytest.mark.parametrize("impl", [Pool, ReferencePool], ids=["Pool", "ReferencePool"])
def test_either_size_given_fixes_both(impl: Any) -> None:
    for fixed in ({"cache_batch": 8}, {"cache_high": 32}):
        pool = impl(4096, page_size=64, zero="never", cpus=1, **fixed)
        assert (pool.cache_auto, pool.cache_bound) == (False, None)
        sizes = (pool.cache_high, pool.cache_batch)
        for _ in range(4):
            pfns = [pool.alloc_pages(0) for _ in range(200)]
            for pfn in pfns:
                pool.put_page(pfn)
        assert pool.cache_sizes() == sizes
    exact = impl(64, page_size=64)
    assert (exact.cache_auto, exact.cache_bound, exact.cache_sizes()) == (False, None, (64, 16))
    for cpu in (-1, 3):
        with pytest.raises(ValueError, match="cache_sizes: cpu"):
            exact.cache_sizes(cpu)


def test_auto_sizing_in_lockstep() -> None:
    """Bursts of growing and shrinking length over three slots: every slot's sizes and
    contents agree after each burst."""
    twin = cached_twin(nr_pages=2048, page_size=64, zero="never", cpus=3)
    pool, model = twin.pool, twin.model
    rng = random.Random(7)
    for step in range(40):
        cpu, order, n = step % 3, rng.choice([0, 0, 1, 3]), rng.choice([8, 60, 130, 300])
        pfns = []
        for _ in range(n):
            try:
                a = pool.alloc_pages(order, cpu=cpu)
            except OutOfMemory:
                with pytest.raises(OutOfMemory):
                    model.alloc_pages(order, cpu=cpu)
                break
            assert model.alloc_pages(order, cpu=cpu) == a
            pfns.append(a)
        for pfn in pfns:
            pool.put_page(pfn, cpu=(cpu + step) % 3)
            model.put_page(pfn, cpu=(cpu + step) % 3)
        twin.compare_caches()
        assert pool.free_pages == model.free_pages
    assert any(pool.cache_sizes(cpu) != (64, 16) for cpu in range(3))
    pool.check()
