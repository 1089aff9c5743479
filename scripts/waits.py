#!/usr/bin/env python3
"""Where each workload of the exact pool waits: the instructions its timed steps are sampled
after (perf's timer, `cpu-clock`: this machine has no hardware counters; standard library,
perf and binutils only).

Each case runs the floor benchmark's profile mode (`BENCH_FLOOR_PROFILE=workload/store/shift:ops`
in benches/benches/floor.rs: the state built, `ops` operations untimed, `ops` more timed) under
`perf record -D -1 --control=fifo:...`, which the benchmark enables around its timed loop only
(`BENCH_FLOOR_PERF_CTL`, `BENCH_FLOOR_PERF_ACK`). A timer sample lands on the instruction after
the one the core was waiting to retire, so each sample is charged to the instruction before it
(in address order), named with the functions it was inlined from (`addr2line -i`). Callgrind's
counts (scripts/misses.py) simulate no TLB: a step that waits on a page walk shows here, not
there. 2^18 pages are mapped with 4 KiB pages, 2^22 with huge pages, as the floor section's
rows the FrameAllocator goal is read on.

    python3 scripts/waits.py                   # 2^18 and 2^22 pages -> docs/data/waits.json
    python3 scripts/waits.py --shifts 18 --out /tmp/w.json   # a quick look

scripts/bench_report.py renders docs/data/waits.json as the section "Where each workload
waits" of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import bisect
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stores  # scripts/stores.py, beside this script
from misses import (  # scripts/misses.py, beside this script
    executable,
    heading,
    mem_available,
    not_run,
    write_doc,
)

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = "pagebuddy-waits/1"
WORKLOADS = ("hot", "churn", "mixed")
STORES = ("side-table", "intrusive", "frame")
# Timed operations per case: about a second of steps at 2^18 pages; at 2^22 the churn's are
# the floor section's (its rounds run from 2^20 to 2^22 steps after the state is built).
OPS = {
    18: {"hot": 1 << 23, "churn": 1 << 26, "mixed": 1 << 25},
    22: {"hot": 1 << 22, "churn": 1 << 21, "mixed": 1 << 23},
}
FREQUENCY = 10_000  # samples a second
TOP = 5  # instructions kept per case
TOOLS = ("perf", "objdump", "addr2line")
LEAST = 0.02  # and only those with this share of the samples or more


def disassembly(text: str) -> tuple[tuple[list[int], list[str]], tuple[list[int], list[str]]]:
    """From `objdump -d --no-show-raw-insn -C` output: the start address and name of every
    function, and every instruction's address and text, each by address."""
    starts: list[tuple[int, str]] = []
    insns: list[tuple[int, str]] = []
    for line in text.splitlines():
        if m := re.match(r"^([0-9a-f]+) <(.*)>:$", line):
            starts.append((int(m[1], 16), m[2]))
        elif m := re.match(r"^\s+([0-9a-f]+):\s+(.*\S)\s*$", line):
            insns.append((int(m[1], 16), m[2]))
    starts.sort()
    insns.sort()
    return ([a for a, _ in starts], [n for _, n in starts]), (
        [a for a, _ in insns],
        [t for _, t in insns],
    )


def parse_samples(script_text: str) -> Counter[tuple[int, str, int]]:
    """(ip, symbol, offset) of each sample in `perf script -F ip,sym,symoff` output, counted;
    samples outside any symbol are left out."""
    counts: Counter[tuple[int, str, int]] = Counter()
    for line in script_text.splitlines():
        m = re.match(r"^\s*([0-9a-f]+)\s+(.*)\+0x([0-9a-f]+)\s*$", line)
        if m:
            counts[(int(m[1], 16), m[2], int(m[3], 16))] += 1
    return counts


def load_bias(samples: Counter[tuple[int, str, int]], starts: tuple[list[int], list[str]]) -> int:
    """What was added to the binary's addresses when it was loaded: the one page-aligned
    difference between sample addresses and their symbol's address plus offset that every
    sample agrees with (a name can belong to several functions: generic instances)."""
    by_name: dict[str, list[int]] = {}
    for addr, name in zip(*starts, strict=True):
        by_name.setdefault(name, []).append(addr)
    common: set[int] | None = None
    for ip, sym, off in samples:
        if sym not in by_name:
            continue
        biases = {ip - (a + off) for a in by_name[sym] if (ip - (a + off)) % 4096 == 0}
        common = biases if common is None else common & biases
    if not common or len(common) != 1:
        raise SystemExit(f"waits: no single load address for the samples ({common})")
    return common.pop()


def frames(exe: str, addrs: list[int]) -> dict[int, list[tuple[str, str]]]:
    """(function, file:line) of each address and of the functions it was inlined into,
    innermost first (`addr2line -i`)."""
    if not addrs:
        return {}
    proc = subprocess.run(
        ["addr2line", "-e", exe, "-f", "-i", "-C", "-a", *(hex(a) for a in addrs)],
        capture_output=True,
        text=True,
        check=True,
    )
    return parse_addr2line(proc.stdout)


def parse_addr2line(text: str) -> dict[int, list[tuple[str, str]]]:
    """The frames of each address in `addr2line -f -i -a` output: after each address line,
    pairs of a function and its `file:line`, innermost first."""
    out: dict[int, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if re.match(r"^0x[0-9a-f]+$", lines[i]):
            current = out.setdefault(int(lines[i], 16), [])
            i += 1
            continue
        if current is not None and i + 1 < len(lines):
            where = lines[i + 1].split(" (discriminator")[0]
            file, _, line = where.rpartition(":")
            current.append((lines[i], f"{Path(file).name}:{line}"))
        i += 2
    return out


def waits(
    samples: Counter[tuple[int, str, int]],
    bias: int,
    insns: tuple[list[int], list[str]],
    names: set[str],
    top: int = TOP,
    least: float = LEAST,
) -> tuple[int, list[dict[str, Any]]]:
    """The instructions the samples are charged to (each sample to the instruction before its
    address), the `top` most sampled with at least `least` of them: (samples, rows of share,
    and address and instruction; or, for a function outside the binary (`names`: its
    functions), such as the C library's `malloc`, its name as `outside`; or, for a sample on a
    function's first instruction, whose wait was its caller's, the function as `entry`)."""
    addrs, texts = insns
    charged: Counter[int | str] = Counter()
    total = 0
    for (ip, sym, off), n in samples.items():
        total += n
        if sym not in names:
            charged[f"outside:{sym}"] += n
        elif off == 0:
            # The first instruction of a function: what came before it ran in its caller (the
            # call), not at the address before it.
            charged[f"entry:{sym}"] += n
        else:
            i = bisect.bisect_left(addrs, ip - bias) - 1
            if i >= 0:
                charged[addrs[i]] += n
    rows: list[dict[str, Any]] = []
    for where, n in charged.most_common(top):
        if not total or n / total < least:
            continue
        if isinstance(where, str):
            kind, _, sym = where.partition(":")
            rows.append({"share": round(n / total, 3), kind: sym})
        else:
            i = bisect.bisect_left(addrs, where)
            rows.append({"share": round(n / total, 3), "addr": where, "insn": texts[i]})
    return total, rows


def record(exe: str, case: str, ops: int, huge: bool, out: Path) -> tuple[str, float | None]:
    """Samples the timed loop of `case` into `out`: (perf script's lines, ns a step as the
    benchmark printed it under the sampler)."""
    with tempfile.TemporaryDirectory() as tmp:
        ctl, ack = Path(tmp, "ctl"), Path(tmp, "ack")
        os.mkfifo(ctl)
        os.mkfifo(ack)
        env = {
            **os.environ,
            "BENCH_FLOOR_PROFILE": f"{case}:{ops}",
            "BENCH_FLOOR_PREFAULT": "1",
            "BENCH_FLOOR_PERF_CTL": str(ctl),
            "BENCH_FLOOR_PERF_ACK": str(ack),
        }
        if huge:
            env["BENCH_FLOOR_HUGE"] = "1"
        proc = subprocess.run(
            [
                *("perf", "record", "-q", "-D", "-1", f"--control=fifo:{ctl},{ack}"),
                *("-e", "cpu-clock:u", "-F", str(FREQUENCY), "-o", str(out), exe),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    if proc.returncode != 0:
        raise SystemExit(f"waits: {case} failed: {proc.stderr[-500:]}")
    m = re.search(r"([\d.]+) ns per operation", proc.stderr)
    script = subprocess.run(
        ["perf", "script", "-i", str(out), "-F", "ip,sym,symoff"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return script, float(m[1]) if m else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shifts", default="18,22", help="log2 of the pool sizes (default 18,22)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "data" / "waits.json"))
    args = ap.parse_args(argv)
    shifts = [int(x) for x in args.shifts.split(",")]
    if any(s not in OPS for s in shifts):
        ap.error(f"--shifts: each one of {', '.join(map(str, OPS))}")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise SystemExit(
            f"waits: {', '.join(missing)} not found: it needs perf (linux-perf) and binutils"
        )
    exe = executable()
    starts, insns = disassembly(stores.disassemble(exe))
    available = mem_available()
    started = time.time()
    cases: list[dict[str, Any]] = []
    data = ROOT / "target" / f"waits.{os.getpid()}.data"
    for shift in shifts:
        huge = shift >= 22
        for store in STORES:
            if skipped := not_run(shift, store, available):
                cases.append(skipped)
                continue
            for workload in WORKLOADS:
                case = f"{workload}/{store}/{shift}"
                ops = OPS[shift][workload]
                print(f"waits: {case}", file=sys.stderr)
                try:
                    script, ns = record(exe, case, ops, huge and store != "frame", data)
                finally:
                    data.unlink(missing_ok=True)
                samples = parse_samples(script)
                bias = load_bias(samples, starts)
                total, rows = waits(samples, bias, insns, set(starts[1]))
                where = frames(exe, [r["addr"] for r in rows if "addr" in r])
                for r in rows:
                    if "addr" in r:
                        r["frames"] = [list(f) for f in where.get(r.pop("addr"), [])]
                cases.append(
                    {
                        "shift": shift,
                        "store": store,
                        "workload": workload,
                        "pages": "huge" if huge and store != "frame" else "4 KiB",
                        "ops": ops,
                        "ns": ns,
                        "samples": total,
                        "waits": rows,
                    }
                )
                print(f"waits: {case}: {ns} ns, {total} samples", file=sys.stderr)
    perf = subprocess.run(["perf", "--version"], capture_output=True, text=True).stdout
    command = "python3 scripts/waits.py" + (
        f" --shifts {args.shifts}" if args.shifts != "18,22" else ""
    )
    doc = {
        **heading(SCHEMA, command, started),
        "perf": perf.strip(),
        "frequency": FREQUENCY,
        "cases": cases,
    }
    write_doc(args.out, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
