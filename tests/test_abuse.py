"""Abuse from Python: random calls, random arguments, stray writes, every kind of buffer.

Each scenario of ``tests/abuse_driver.py`` (see its docstring) runs in a child interpreter, so
that a crash (segfault, abort) or a hang fails the test instead of killing the test run:

* ``side``: side-table pools in lockstep with a ``ReferencePool``; only documented exception
  classes, the same on both, equal state, ``check()`` consistent throughout;
* ``intrusive``: intrusive-link pools whose free lists are scribbled over through stale views.
  Corruption may surface only as ``CorruptionError``, ``PageError``, ``OutOfMemory`` or
  ``ValueError`` (plus ``TypeError`` for arguments of the wrong type), never as a crash, a hang,
  a write outside the arena, or a page handed out while still held;
* ``stray_batches``: stray writes into the pages of plain and shared pools, both link stores,
  each followed by batch calls: a ``CorruptionError`` must come with the pool unchanged;
* ``buffers``: the constructor with every kind of buffer object, read-only, non-contiguous,
  non-buffer and too-small ones included, which must be refused (``TypeError`` /
  ``ValueError``).
* ``leaks``: random calls, valid and refused, on every kind of pool; resident memory must
  stay flat (under a byte a call) once warm.

Runs are seeded and bounded (about a second each). The seed is printed on failure together with
the command that replays it. ``PAGEBUDDY_ABUSE_SEED=<int>`` or ``=random`` picks another seed
and ``PAGEBUDDY_ABUSE_SCALE=<n>`` multiplies the step counts, for longer runs by hand.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

DRIVER = Path(__file__).with_name("abuse_driver.py")
TIMEOUT_S = 120

# scenario -> (default seed, steps, counters that must be non-zero for the run to count)
SCENARIOS: dict[str, tuple[int, int, list[str]]] = {
    "side": (20240601, 4000, ["stale_writes", "check:_free_memory_not_zero", "re-entrant_calls"]),
    "intrusive": (20240602, 6000, ["stale_writes", "CorruptionError", "refused_nested_arenas"]),
    "buffers": (20240603, 400, ["accepted_numpy-float64", "refused_read-only-memoryview"]),
    "stray_batches": (
        20261203,
        3000,
        [
            "writes",
            "plain-intrusive_put_many_CorruptionError",
            "shared-intrusive_put_many_CorruptionError",
            "shared-intrusive_alloc_many_CorruptionError",
            "shared-side_put_many_CorruptionError",
        ],
    ),
    "leaks": (20261203, 300_000, ["views", "refused", "OutOfMemory", "attributes"]),
}
# The catalogue: every case, by name (``steps`` is how many of them run).
CASES = [
    "two_pools_one_buffer",
    "trace_asks_for_too_much",
    "check_commits_nothing",
    "cli_tracebacks",
    "cli_json_errors",
    "trace_integers",
    "plot_paths",
    "put_many_all_or_nothing",
    "corruption_changes_nothing",
    "batch_meets_corruption",
    "check_under_load",
    "pool_and_model_alike",
    "messages_name_values",
    "buffer_owner_cannot_pull_the_rug",
]
SCENARIOS["catalogue"] = (20261126, len(CASES), [f"case_{name}" for name in CASES])


def seed_for(scenario: str) -> int:
    choice = os.environ.get("PAGEBUDDY_ABUSE_SEED")
    if choice == "random":
        return random.SystemRandom().randrange(2**32)
    return int(choice) if choice else SCENARIOS[scenario][0]


def run(scenario: str, seed: int, steps: int) -> tuple[subprocess.CompletedProcess[str], str]:
    cmd = [sys.executable, str(DRIVER), scenario, str(seed), str(steps)]
    replay = f"python {DRIVER} {scenario} {seed} {steps}"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"{scenario} seed={seed}: hung for {TIMEOUT_S} s (replay: {replay})\n{exc.stdout!r}"
        )
    return proc, replay


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_abuse(scenario: str) -> None:
    _, steps, required = SCENARIOS[scenario]
    steps *= int(os.environ.get("PAGEBUDDY_ABUSE_SCALE", "1"))
    seed = seed_for(scenario)
    proc, replay = run(scenario, seed, steps)
    output = f"--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        pytest.fail(f"{scenario} seed={seed}: died of {name} (replay: {replay})\n{output}")
    assert proc.returncode == 0, f"{scenario} seed={seed} failed (replay: {replay})\n{output}"
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.startswith("ok:"), output
    counts = dict(item.split("=") for item in summary[3:].split())
    for counter in required:
        assert int(counts.get(counter, 0)) > 0, f"{counter} never happened: {summary}"
