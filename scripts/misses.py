#!/usr/bin/env python3
"""Cache misses per operation of the exact pool's workloads, counted by callgrind's cache
simulation (standard library and valgrind only; `perf stat` has no hardware counters here).

Each case runs the floor benchmark's profile mode (`BENCH_FLOOR_PROFILE=workload/store/shift:ops`
in benches/benches/floor.rs: the state built, `ops` operations untimed, `ops` more inside the
function `profiled` or `profiled_steps`, the only ones callgrind collects in,
`--toggle-collect='*profiled*'`), twice:
once with this CPU's L1d and L2 as callgrind's D1 and LL, once with its L1d and L3, read from
/sys/devices/system/cpu/cpu0/cache. The misses of reads and writes of data, divided by `ops`, are
the misses per operation at each level; the first run also counts the writes per operation
(scripts/stores.py: valgrind's own writes for `bt*` on registers left out). Callgrind simulates
no TLB: what 4 KiB pages cost on top is the difference between the floor benchmark's two
mappings.

    python3 scripts/misses.py                       # 2^18 and 2^22 pages -> docs/data/misses.json
    python3 scripts/misses.py --shifts 18 --ops 20000 --out /tmp/m.json   # a quick look

scripts/bench_report.py renders docs/data/misses.json as the section "What bounds each
workload" of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stores  # scripts/stores.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
# 2: `ops` per workload (the floor section's round), and each case's own `ops`.
SCHEMA = "pagebuddy-misses/2"
WORKLOADS = ("floor", "hot", "churn", "mixed")
# Operations counted per workload: the floor benchmark's round (its `timed` calls and the chase's
# least number of reads), after as many untimed, as its timing does before its first round, so
# that the misses are counted where the floor section's times are taken.
FLOOR_OPS = {"floor": 1 << 20, "hot": 1 << 17, "churn": 1 << 20, "mixed": 1 << 20}
STORES = ("side-table", "intrusive", "frame")


def cache_levels() -> dict[str, tuple[int, int, int]]:
    """Data cache levels of CPU 0 as (bytes, ways, line): keys L1d, L2, L3."""
    out: dict[str, tuple[int, int, int]] = {}
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(base.glob("index*")):
        kind = (index / "type").read_text().strip()
        if kind == "Instruction":
            continue
        level = (index / "level").read_text().strip()
        size = (index / "size").read_text().strip()
        scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1], 1)
        nbytes = int(size.rstrip("KM")) * scale
        ways = int((index / "ways_of_associativity").read_text())
        line = int((index / "coherency_line_size").read_text())
        out["L1d" if level == "1" else f"L{level}"] = (nbytes, ways, line)
    return out


def simulable(level: tuple[int, int, int]) -> tuple[int, int, int]:
    """`level` (bytes, ways, line) as callgrind can simulate it: the same bytes and line, with
    the ways changed if need be so that the number of sets is a power of two, which callgrind
    requires (a 480 MiB 16-way L3 has 491,520 sets; simulated as 30-way, 262,144 sets)."""
    nbytes, ways, line = level
    lines = nbytes // line
    sets = lines // ways if ways else 0
    if sets > 0 and sets & (sets - 1) == 0 and lines % ways == 0:
        return level
    sets = 1 << max((lines // max(ways, 1)).bit_length() - 1, 0)
    while sets > 1 and lines % sets:
        sets >>= 1
    return (nbytes, lines // sets, line)


def arena_fits(arena: int, available: int) -> bool:
    """Whether an intrusive pool's arena of `arena` bytes, which its workloads touch in full,
    can be run with `available` bytes of memory to give: the arena, an eighth more and 1 GiB,
    as the floor benchmark asks (its `intrusive_case`). Callgrind keeps no shadow of the
    program's memory: at 2^22 pages the churn case peaked at 7.6 GiB resident, the part of the
    arena it touched included."""
    return arena + arena // 8 + (1 << 30) < available


def mem_available() -> int:
    """Bytes of memory the kernel says it can still give (`MemAvailable`), 0 if it does not
    say."""
    try:
        return (
            int(
                next(
                    ln.split()[1]
                    for ln in Path("/proc/meminfo").read_text().splitlines()
                    if ln.startswith("MemAvailable:")
                )
            )
            * 1024
        )
    except (OSError, StopIteration, ValueError):
        return 0


def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def not_run(shift: int, store: str, available: int) -> dict[str, Any] | None:
    """The case of `store` at 2^`shift` pages as a note of why it is not run, if it is not: an
    intrusive pool touches every page of its arena, so it runs only where the arena fits
    ([`arena_fits`]) in the `available` bytes."""
    if store != "intrusive" or arena_fits(4096 << shift, available):
        return None
    return {
        "shift": shift,
        "store": store,
        "note": f"not run: its {4096 << shift >> 20} MiB arena is touched in full and the "
        f"machine had {available >> 20} MiB available (the arena, an eighth more and 1 GiB "
        "are asked for)",
    }


def heading(schema: str, command: str, started: float) -> dict[str, Any]:
    """What a data file says first of its run: its schema, the date it `started`, its
    `command`, its seconds since, the CPU and the kernel."""
    return {
        "schema": schema,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "command": command,
        "seconds": round(time.time() - started),
        "cpu": cpu_model(),
        "kernel": platform.release(),
    }


def write_doc(out: str, doc: dict[str, Any]) -> None:
    """Writes `doc` as JSON to `out`, its folder made if need be."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr)


def executable() -> str:
    """The floor benchmark's binary, built with the bench profile."""
    proc = subprocess.run(
        [
            *("cargo", "bench", "-p", "pagebuddy-benches", "--bench", "floor"),
            *("--no-run", "--message-format=json"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    exe = floor_executable(proc.stdout)
    if exe is None:
        raise SystemExit("misses: no floor benchmark binary")
    return exe


def floor_executable(cargo_json: str) -> str | None:
    """The floor benchmark's binary named in the output of `cargo ... --message-format=json`
    (scripts/upstream_c.py reads its own build with it too)."""
    for line in cargo_json.splitlines():
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if (
            m.get("reason") == "compiler-artifact"
            and m.get("executable")
            and m["target"]["name"] == "floor"
        ):
            return str(m["executable"])
    return None


def misses(
    exe: str,
    case: str,
    ops: int,
    d1: tuple[int, int, int],
    ll: tuple[int, int, int],
    dump: Path | None = None,
):
    """(D1 misses, LL misses, instructions) of the profiled loop, data reads and writes; with
    `dump`, callgrind's costs per instruction are written there (for scripts/stores.py)."""
    spec = lambda c: ",".join(map(str, c))  # noqa: E731
    out = ["--callgrind-out-file=/dev/null"]
    if dump is not None:
        out = [f"--callgrind-out-file={dump}", "--dump-instr=yes"]
    proc = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            *out,
            "--cache-sim=yes",
            f"--I1={spec(d1)}",
            f"--D1={spec(d1)}",
            f"--LL={spec(ll)}",
            "--toggle-collect=*profiled*",
            exe,
        ],
        env={**os.environ, "BENCH_FLOOR_PROFILE": f"{case}:{ops}"},
        capture_output=True,
        text=True,
        check=False,
    )
    # Collected : Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw (trailing zeros left out)
    m = re.search(r"Collected :((?: \d+)+)", proc.stderr)
    if proc.returncode != 0 or m is None:
        raise SystemExit(f"misses: {case} failed: {proc.stderr[-500:]}")
    counts = [int(x) for x in m[1].split()] + [0] * 9
    ir, _dr, _dw, _i1, d1mr, d1mw, _il, dlmr, dlmw = counts[:9]
    return d1mr + d1mw, dlmr + dlmw, ir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shifts", default="18,22", help="log2 of the pool sizes (default 18,22)")
    ap.add_argument(
        "--ops",
        type=int,
        default=None,
        help="operations counted per case (default: the floor benchmark's round per workload)",
    )
    ap.add_argument("--out", default=str(ROOT / "docs" / "data" / "misses.json"))
    args = ap.parse_args(argv)
    if args.ops is not None and args.ops < 1:
        ap.error("--ops is at least 1")
    shifts = [int(x) for x in args.shifts.split(",")]
    levels = {k: simulable(v) for k, v in cache_levels().items()}
    exe = executable()
    available = mem_available()
    started = time.time()
    cases: list[dict[str, Any]] = []
    insns = None  # the binary's instructions, read once (scripts/stores.py)
    for shift in shifts:
        for store in STORES:
            if skipped := not_run(shift, store, available):
                cases.append(skipped)
                continue
            for workload in WORKLOADS:
                if store == "frame" and workload == "floor":
                    continue
                case = f"{workload}/{store}/{shift}"
                ops = args.ops or FLOOR_OPS[workload]
                print(f"misses: {case}", file=sys.stderr)
                dump = ROOT / "target" / f"misses.{os.getpid()}.callgrind"
                try:
                    d1, l2, ir = misses(exe, case, ops, levels["L1d"], levels["L2"], dump)
                    costs = stores.parse_callgrind(dump.read_text())
                finally:
                    dump.unlink(missing_ok=True)
                _, l3, _ = misses(exe, case, ops, levels["L1d"], levels["L3"])
                if insns is None:
                    insns = stores.objdump(exe)
                writes = stores.summarise(costs, insns, ops, float("inf")).writes
                cases.append(
                    {
                        "shift": shift,
                        "store": store,
                        "workload": workload,
                        "ops": ops,
                        "instructions": round(ir / ops, 1),
                        "writes": round(writes, 1),
                        "l1d": round(d1 / ops, 2),
                        "l2": round(l2 / ops, 2),
                        "l3": round(l3 / ops, 2),
                    }
                )
                print(f"misses: {case}: {cases[-1]}", file=sys.stderr)
    valgrind = subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout
    command = (
        "python3 scripts/misses.py"
        + (f" --shifts {args.shifts}" if args.shifts != "18,22" else "")
        + (f" --ops {args.ops}" if args.ops else "")
    )
    doc = {
        **heading(SCHEMA, command, started),
        "valgrind": valgrind.strip(),
        "caches": {k: {"bytes": b, "ways": w, "line": ln} for k, (b, w, ln) in levels.items()},
        "ops": args.ops or FLOOR_OPS,
        "cases": cases,
    }
    write_doc(args.out, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
