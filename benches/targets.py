#!/usr/bin/env python3
"""Speed targets of the Python package, each measured against its target.

The test suite checks what these runs compute; how long they take is measured here, since a
loaded machine would fail a timed test for no fault of the code::

    python benches/targets.py            # every figure, a table; exit 0 whether met or not
    python benches/targets.py --json     # one JSON object (schema pagebuddy-targets/1)
    python benches/targets.py --strict   # exit 1 when a target is missed

Figures (CPU time of the process, ``time.process_time``, unless said otherwise):

``ftrace_200k``       import and native replay of 200,000 synthetic kmem events
                      (``tests/test_ftrace.py``); target 2 s.
``check_1gib``        ``check()`` of a pool that owns a 1 GiB arena, mapped and not committed
                      (``tests/test_robustness.py``); target 1 s.
``reference_4m``      ``ReferencePool(2**22, page_size=64)`` built and checked
                      (``tests/test_robustness.py``, ``tests/abuse_driver.py``); target 20 s.
``fuzz_half_second``  ``pagebuddy fuzz --seconds 0.5`` from start to return, wall-clock: how
                      far past its budget a time-limited run stops (``tests/test_cli.py``);
                      target 5 s.
``threads_6x6000``    six threads of 6,000 random steps each on one ``Pool``, wall-clock
                      (``tests/test_threads.py``, once cut at 4 s); target 4 s.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
SCHEMA = "pagebuddy-targets/1"


def _ftrace_200k() -> float:
    from pagebuddy._ftrace import default_nr_pages, parse_ftrace, plan_lifetimes, replay_native

    sys.path.insert(0, str(TESTS))
    from test_ftrace import synthetic_trace

    lines = synthetic_trace(200_000)
    t0 = time.process_time()
    imp = parse_ftrace(lines)
    plan = plan_lifetimes(imp)
    result = replay_native(plan, default_nr_pages(plan))
    seconds = time.process_time() - t0
    assert imp.lines == 200_000 and result.served
    return seconds


def _check_1gib() -> float:
    import pagebuddy

    pool = pagebuddy.Pool(2**18, page_size=4096)
    pfn = pool.alloc_pages(4)
    pool.view(pfn)[:] = b"x" * (16 * 4096)
    pool.put_page(pfn)
    t0 = time.process_time()
    pool.check()
    return time.process_time() - t0


def _reference_4m() -> float:
    from pagebuddy import ReferencePool

    t0 = time.process_time()
    model = ReferencePool(2**22, page_size=64)
    model.check()
    seconds = time.process_time() - t0
    assert model.free_pages == 2**22
    return seconds


def _fuzz_half_second() -> float:
    from pagebuddy import _fuzz

    t0 = time.perf_counter()
    result = _fuzz.fuzz(_fuzz.FuzzConfig(seconds=0.5, seed=1, base_pfn=0))
    seconds = time.perf_counter() - t0
    assert result.divergence is None and result.ops > 0
    return seconds


def _threads_6x6000() -> float:
    sys.path.insert(0, str(TESTS))
    import test_threads

    t0 = time.perf_counter()
    test_threads.test_threads_share_one_pool("side", "free")
    return time.perf_counter() - t0


#: name -> (what is measured, target in seconds, the measurement)
TARGETS: dict[str, tuple[str, float, Callable[[], float]]] = {
    "ftrace_200k": ("import + native replay of 200,000 kmem events (CPU)", 2.0, _ftrace_200k),
    "check_1gib": ("check() of an owned 1 GiB arena (CPU)", 1.0, _check_1gib),
    "reference_4m": ("ReferencePool(2**22) built and checked (CPU)", 20.0, _reference_4m),
    "fuzz_half_second": ("fuzz --seconds 0.5, start to return (wall)", 5.0, _fuzz_half_second),
    "threads_6x6000": ("6 threads x 6,000 steps on one Pool (wall)", 4.0, _threads_6x6000),
}


def main(argv: list[str] | None = None) -> int:
    """Measure every figure (or those named), print them against their targets."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(TARGETS))
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in TARGETS]
    if unknown:
        parser.error(f"unknown figure {unknown[0]!r} (choose from {', '.join(TARGETS)})")
    names = args.names or list(TARGETS)
    results = []
    for name in names:
        what, target, measure = TARGETS[name]
        seconds = measure()
        results.append(
            {
                "name": name,
                "what": what,
                "seconds": round(seconds, 3),
                "target_seconds": target,
                "met": seconds <= target,
            }
        )
        if not args.json:
            mark = "met" if seconds <= target else "MISSED"
            print(f"{name:<18} {seconds:8.3f} s  target {target:5.1f} s  {mark:<6}  {what}")
    if args.json:
        doc = {
            "schema": SCHEMA,
            "python": platform.python_implementation() + " " + platform.python_version(),
            "machine": platform.machine(),
            "date": time.strftime("%Y-%m-%d"),
            "results": results,
        }
        print(json.dumps(doc, indent=1))
    return 1 if args.strict and not all(r["met"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
