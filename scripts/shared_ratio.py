"""A shared pool's cost per call against the in-process pool's, from Python: the ``shared``
workloads of ``pagebuddy bench`` (``churn``, ``window``) on ``Pool(n)`` and on
``Pool.create_in(bytearray(...))`` of the same pages, best of ROUNDS interleaved rounds.

    .venv/bin/python scripts/shared_ratio.py [ROUNDS]      # default 7; 2**14 pages
"""

from __future__ import annotations

import random
import sys

from pagebuddy import Pool
from pagebuddy import _bench as bench


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    n = 1 << 14
    pages = bench._shared_pages(Pool, n)
    best: dict[tuple[str, str], float] = {}
    for _ in range(rounds):
        for name, _unit, _description, on in bench.SHARED_WORKLOADS:
            for label, make in (("pool", bench._local_pool), ("shared", bench._shared_pool)):
                ns = on(make(Pool, n, pages), n, random.Random(1))
                best[name, label] = min(best.get((name, label), float("inf")), ns)
    for name, *_ in bench.SHARED_WORKLOADS:
        local, shared = best[name, "pool"], best[name, "shared"]
        print(f"{name}: pool {local:.1f} ns, shared {shared:.1f} ns, ratio {shared / local:.2f}x")


if __name__ == "__main__":
    main()
