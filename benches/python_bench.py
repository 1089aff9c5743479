#!/usr/bin/env python3
"""Python benchmark: cost per call of ``pagebuddy.Pool`` against ``pagebuddy.ReferencePool``.

A thin wrapper around :mod:`pagebuddy._bench` (also available as ``pagebuddy bench``)::

    python benches/python_bench.py            # quick mode: 2**14 pages, best of 3
    python benches/python_bench.py --tiny     # a few seconds; what CI runs
    python benches/python_bench.py --json     # one JSON object (schema pagebuddy-python-bench/1)
"""

from __future__ import annotations

import argparse
import json
import sys

from pagebuddy import _bench


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the benchmark, print a table or JSON; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="quick mode (the default)")
    mode.add_argument("--tiny", action="store_true", help="tiny mode, for CI")
    parser.add_argument("--pages", type=int, help="pool size in pages (overrides the mode's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    result = _bench.run_benchmarks(
        "tiny" if args.tiny else "quick",
        pages=args.pages,
        progress=None if args.json else lambda name: print(f"  {name} ...", file=sys.stderr),
    )
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(_bench.format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
