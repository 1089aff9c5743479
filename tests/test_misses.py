"""scripts/misses.py: the cache geometries it asks callgrind to simulate."""

from __future__ import annotations

from types import ModuleType

import pytest

from support import script


def misses() -> ModuleType:
    return script("misses")


@pytest.mark.parametrize(
    "level",
    [(49152, 12, 64), (32768, 8, 64), (2 << 20, 16, 64), (512 << 10, 8, 64), (32 << 20, 16, 64)],
)
def test_a_cache_whose_sets_are_a_power_of_two_is_simulated_as_it_is(
    level: tuple[int, int, int],
) -> None:
    assert misses().simulable(level) == level


def test_a_cache_callgrind_refuses_keeps_its_size_with_other_ways() -> None:
    # 480 MiB, 16-way: 491,520 sets, which callgrind refuses (sets must be a power of two).
    nbytes, ways, line = misses().simulable((480 << 20, 16, 64))
    assert (nbytes, line) == (480 << 20, 64)
    sets = nbytes // line // ways
    assert sets * ways * line == nbytes
    assert sets & (sets - 1) == 0
    assert (ways, sets) == (30, 1 << 18)


def test_an_intrusive_arena_is_run_where_it_an_eighth_more_and_a_gib_fit() -> None:
    m = misses()
    arena = 16 << 30  # 2^22 pages of 4 KiB
    need = arena + arena // 8 + (1 << 30)
    assert m.arena_fits(arena, need + 1)
    assert not m.arena_fits(arena, need)
    # The machine the figures come from: 22,445 MiB available runs the 16 GiB arena.
    assert m.arena_fits(arena, 22445 << 20)
    assert not m.arena_fits(4096 << 23, 22445 << 20)


def test_an_intrusive_case_that_does_not_fit_is_a_note_and_others_run() -> None:
    m = misses()
    arena = 16 << 30
    note = m.not_run(22, "intrusive", arena)
    assert note is not None and note["store"] == "intrusive" and note["shift"] == 22
    assert note["note"].startswith("not run: its 16384 MiB arena is touched in full")
    assert m.not_run(22, "intrusive", arena + arena // 8 + (2 << 30)) is None
    assert m.not_run(22, "side-table", 0) is None
