#!/usr/bin/env python3
"""Two or more builds of the native module, timed on the same batch workload in one process.

The workload is the Python benchmark's scaling batch (`pagebuddy bench`, "Batches on pools half
held at random"): an arena-less pool of 2^shift pages, every page allocated, a random half put
back in random order, then `alloc_many(0, 256, out=)` + `put_many` of the same array, over and
over. Each round builds a fresh pool for each build in turn (the order reversed every other
round), passes once over the whole pool untimed, then times 2^18 pages' worth of batches, the
two calls apart. Printed per build: the median and minimum ns per page of `alloc_many`, the
median of `put_many`, and each round's batch.

The builds are extension files (`_native.abi3.so`, as `make develop` or `cargo build --release
-p pagebuddy-py --features pyo3/extension-module` leaves them, the latter as
`lib_native.so`), each loaded beside its own copy of `python/pagebuddy` under another package
name, so that one process holds them all and every build meets the same machine state:

    python3 scripts/batch_ab.py old=/tmp/old.so new=python/pagebuddy/_native.abi3.so
    python3 scripts/batch_ab.py --shift 14 --rounds 6 old=/tmp/old.so new=/tmp/new.so

Pin it for steadier figures (`taskset -c 1 python3 scripts/batch_ab.py ...`).
"""

from __future__ import annotations

import argparse
import array
import gc
import importlib
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BATCH = 256


def load(builds: list[tuple[str, Path]], into: Path) -> dict[str, Any]:
    """Each build as package `pb_<name>`: a copy of python/pagebuddy with that extension."""
    sys.path.insert(0, str(into))
    mods = {}
    for name, so in builds:
        pkg = into / f"pb_{name}"
        shutil.copytree(ROOT / "python" / "pagebuddy", pkg, ignore=shutil.ignore_patterns("*.so"))
        shutil.copy(so, pkg / "_native.abi3.so")
        mods[name] = importlib.import_module(pkg.name)
    return mods


def one(mod: Any, n: int, order: list[int]) -> tuple[float, float]:
    """A fresh pool of `n` pages half held (pages `order[n // 2:]` put back): ns per page of
    `alloc_many` and of `put_many`."""
    pool = mod.Pool(n, zero="never", arena=False)
    every = array.array("Q", bytes(8 * n))
    pool.alloc_many(0, n, out=every)
    pool.put_many(array.array("Q", (every[i] for i in order[n // 2 :])))
    buf = array.array("Q", bytes(8 * BATCH))
    alloc_many, put_many, clock = pool.alloc_many, pool.put_many, time.perf_counter_ns

    def run(pages: int) -> tuple[float, float]:
        took_alloc = took_put = 0
        for _ in range(max(1, pages // BATCH)):
            t0 = clock()
            alloc_many(0, BATCH, out=buf)
            t1 = clock()
            put_many(buf)
            t2 = clock()
            took_alloc += t1 - t0
            took_put += t2 - t1
        done = max(1, pages // BATCH) * BATCH
        return took_alloc / done, took_put / done

    run(n)  # untimed: the mappings are committed on first touch
    timed = run(1 << 18)
    pool.close()
    return timed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("builds", nargs="+", help="name=path of an extension file (two or more)")
    p.add_argument("--shift", type=int, default=22, help="pages of the pool: 2^shift (22)")
    p.add_argument("--rounds", type=int, default=12, help="rounds, each build once (12)")
    args = p.parse_args(argv)
    builds = []
    for b in args.builds:
        name, sep, path = b.partition("=")
        if not sep or not name.isidentifier() or not Path(path).is_file():
            p.error(f"{b!r}: expected name=path of an extension file")
        builds.append((name, Path(path)))
    if len(builds) < 2 or args.shift < 10 or args.rounds < 1:
        p.error("two or more builds, --shift 10 or more, --rounds 1 or more")
    n = 1 << args.shift
    order = list(range(n))
    random.Random(1).shuffle(order)
    with tempfile.TemporaryDirectory() as tmp:
        mods = load(builds, Path(tmp))
        got: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in builds}
        gc.disable()
        for r in range(args.rounds):
            for name, _ in builds if r % 2 == 0 else builds[::-1]:
                got[name].append(one(mods[name], n, order))
    print(f"2^{args.shift} pages half held, batches of {BATCH}, {args.rounds} rounds, ns a page")
    for name, _ in builds:
        allocs = [a for a, _ in got[name]]
        puts = [q for _, q in got[name]]
        batches = " ".join(f"{a + q:.1f}" for a, q in got[name])
        print(
            f"{name}: alloc_many median {statistics.median(allocs):.1f} min {min(allocs):.1f}, "
            f"put_many median {statistics.median(puts):.1f}; batches {batches}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
