#!/usr/bin/env python3
"""Python benchmark: cost per call of ``pagebuddy.Pool`` against ``pagebuddy.ReferencePool``.

The same front end as ``pagebuddy bench`` (see :mod:`pagebuddy._bench`)::

    python benches/python_bench.py            # quick mode: 2**14 pages, best of 5
    python benches/python_bench.py --tiny     # a few seconds; what CI runs
    python benches/python_bench.py --json     # one JSON object (schema pagebuddy-python-bench/1)
"""

from __future__ import annotations

import sys

from pagebuddy import cli


def main(argv: list[str] | None = None) -> int:
    """Run ``pagebuddy bench`` with these arguments (``--quick`` is the default mode)."""
    args = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--quick"]
    return cli.main(["bench", "--no-progress", *args])


if __name__ == "__main__":
    sys.exit(main())
