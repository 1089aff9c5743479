#!/usr/bin/env python3
"""Writes to memory per operation of the exact pool's workloads, instruction by instruction,
counted by callgrind (standard library, valgrind and objdump only).

With links in the pages, a churn step writes the freed page's link into a line that the caches
and the TLB miss, and stores leave the store queue in order: every store after that one waits
behind it, so the stores a step makes, not only its misses, set the step's time
(docs/exact-pool-levers.md, "Stores a step"). This script runs the floor benchmark's profile
mode (`BENCH_FLOOR_PROFILE`, benches/benches/floor.rs) under
`valgrind --tool=callgrind --dump-instr=yes --toggle-collect='*profiled*'`, so that only the
profiled loop counts, and prints the writes of an operation: in all, by kind (registers saved
by `push`, return addresses of `call`, other stack slots, and everything else: the
allocator's own data and the benchmark's), and each instruction that writes, with its
function and its disassembly. With `--upstream`, upstream pKVM's C in the harness that
scripts/upstream_c.py builds (target/upstream/build) is counted the same way; it has no
profiled function, so its figure is the difference of two runs of different lengths.

    python3 scripts/stores.py churn/intrusive
    python3 scripts/stores.py hot/side-table --ops 50000 --min 0.5
    python3 scripts/stores.py churn/intrusive --upstream
    python3 scripts/stores.py mixed/intrusive --exe /tmp/floor-before   # another build

Valgrind runs `bt`, `btc`, `bts` and `btr` on registers through memory of its own; those
writes are not the program's and are left out.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM = ROOT / "target" / "upstream" / "build"
WORKLOADS = ("hot", "churn", "mixed")
STORES = ("side-table", "intrusive", "frame")
# The events kept of callgrind's (`--cache-sim=yes` counts data reads and writes).
EVENTS = ("Ir", "Dr", "Dw")
COST = re.compile(r"^(0x[0-9a-fA-F]+|[+-]\d+|\*)\s+(\S+)((?:\s+\d+)*)\s*$")


@dataclass
class Insn:
    """One instruction of the binary: its function and its disassembly."""

    function: str
    text: str

    @property
    def mnemonic(self) -> str:
        return self.text.split()[0] if self.text.split() else ""

    def kind(self) -> str:
        """What a write of this instruction is: push, call, stack or data."""
        m = self.mnemonic
        if m.startswith("push"):
            return "push"
        if m.startswith("call"):
            return "call"
        if "(%rsp" in self.text:
            return "stack"
        return "data"

    def writes_memory(self) -> bool:
        """Whether the instruction can write memory at all: a memory operand, or an implicit
        write (`push`, `call`, string stores). Valgrind's writes for `bt*` on registers are
        its own."""
        m = self.mnemonic
        if m.startswith(("push", "call")):
            return True
        return "(" in self.text


def parse_callgrind(text: str) -> dict[int, list[int]]:
    """Self cost per instruction address of a callgrind output file written with
    `--dump-instr=yes` (positions `instr line`): the inclusive cost of each call, on the line
    after `calls=`, is left out."""
    costs: dict[int, list[int]] = {}
    positions = ["instr"]
    columns = list(range(len(EVENTS)))
    last = 0
    after_calls = False
    for line in text.splitlines():
        if line.startswith("positions:"):
            positions = line.split(":", 1)[1].split()
            continue
        if line.startswith("events:"):
            names = line.split(":", 1)[1].split()
            if not all(e in names for e in EVENTS):
                raise ValueError(f"callgrind events {names} lack one of {EVENTS}")
            columns = [names.index(e) for e in EVENTS]
            continue
        if line.startswith("calls="):
            after_calls = True
            continue
        m = COST.match(line)
        if m is None or positions[0] != "instr":
            continue
        tok = m[1]
        if tok.startswith("0x"):
            addr = int(tok, 16)
        elif tok == "*":
            addr = last
        else:
            addr = last + int(tok)
        last = addr
        if after_calls:
            after_calls = False
            continue
        rest = m[3].split()
        if len(positions) == 1:
            # Without line numbers, the second field is the first count.
            rest = [m[2], *rest]
        vals = [int(x) for x in rest]
        c = costs.setdefault(addr, [0] * len(EVENTS))
        for i, col in enumerate(columns):
            # Trailing zeros are left out of a cost line.
            c[i] += vals[col] if col < len(vals) else 0
    return costs


def parse_objdump(text: str) -> dict[int, Insn]:
    """Every instruction of `objdump -d --no-show-raw-insn -C` output, by address."""
    out: dict[int, Insn] = {}
    func = "?"
    for line in text.splitlines():
        m = re.match(r"^([0-9a-f]+) <(.*)>:$", line)
        if m:
            func = m[2]
            continue
        m = re.match(r"^\s+([0-9a-f]+):\s+(.*\S)\s*$", line)
        if m:
            out[int(m[1], 16)] = Insn(func, m[2])
    return out


def difference(a: dict[int, list[int]], b: dict[int, list[int]]) -> dict[int, list[int]]:
    """`b - a`, address by address."""
    zero = [0] * len(EVENTS)
    return {k: [v[i] - a.get(k, zero)[i] for i in range(len(EVENTS))] for k, v in b.items()}


@dataclass
class Summary:
    instructions: float
    writes: float
    by_kind: dict[str, float]
    rows: list[tuple[float, int, Insn]]


def summarise(
    costs: dict[int, list[int]], insns: dict[int, Insn], ops: float, least: float
) -> Summary:
    """Per operation: instructions, writes in all and by kind, and the instructions writing at
    least `least` times an operation, most first (ties in address order)."""
    by_kind = {"push": 0.0, "call": 0.0, "stack": 0.0, "data": 0.0}
    rows: list[tuple[float, int, Insn]] = []
    ir = writes = 0.0
    for addr, (i, _dr, dw) in costs.items():
        ir += i / ops
        if dw <= 0:
            continue
        insn = insns.get(addr, Insn("?", "?"))
        if insn.text != "?" and not insn.writes_memory():
            continue
        per = dw / ops
        writes += per
        by_kind[insn.kind()] += per
        if per >= least:
            rows.append((per, addr, insn))
    rows.sort(key=lambda r: (-round(r[0], 2), r[1]))
    return Summary(ir, writes, by_kind, rows)


def render(title: str, s: Summary) -> str:
    kinds = ", ".join(f"{k} {v:.1f}" for k, v in s.by_kind.items())
    lines = [f"{title}: {s.writes:.1f} writes and {s.instructions:.1f} instructions an operation"]
    lines.append(f"  writes by kind: {kinds}")
    for per, addr, insn in s.rows:
        lines.append(f"  {per:6.2f}  {addr:8x}  {insn.function[:48]:<48}  {insn.text}")
    return "\n".join(lines)


def callgrind(cmd: list[str], env: dict[str, str], collect: bool) -> dict[int, list[int]]:
    """Runs `cmd` under callgrind and returns its self cost per instruction."""
    out = ROOT / "target" / f"stores.{os.getpid()}.callgrind"
    args = [
        "valgrind",
        "--tool=callgrind",
        "--dump-instr=yes",
        "--cache-sim=yes",
        f"--callgrind-out-file={out}",
    ]
    if collect:
        args.append("--toggle-collect=*profiled*")
    proc = subprocess.run([*args, *cmd], env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"stores: {' '.join(cmd)} failed under valgrind: {proc.stderr[-400:]}")
    try:
        return parse_callgrind(out.read_text())
    finally:
        out.unlink(missing_ok=True)


def disassemble(exe: str) -> str:
    """`objdump -d --no-show-raw-insn -C` of `exe`."""
    return subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", "-C", exe],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def objdump(exe: str) -> dict[int, Insn]:
    return parse_objdump(disassemble(exe))


def case_arg(text: str) -> tuple[str, str]:
    workload, _, store = text.partition("/")
    if workload not in WORKLOADS or store not in STORES:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a case is WORKLOAD/STORE, WORKLOAD one of {', '.join(WORKLOADS)}, "
            f"STORE one of {', '.join(STORES)}"
        )
    return workload, store


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", type=case_arg, help="WORKLOAD/STORE, e.g. churn/intrusive")
    ap.add_argument("--shift", type=int, default=18, help="log2 of the pool's pages (18)")
    ap.add_argument("--ops", type=int, default=100_000, help="operations counted (100000)")
    ap.add_argument("--zero", choices=("never", "on-free"), default="never")
    ap.add_argument("--min", type=float, default=0.5, help="list instructions writing this often")
    ap.add_argument("--upstream", action="store_true", help="upstream pKVM's C as well")
    ap.add_argument("--exe", help="a build of the floor benchmark to count (default: build one)")
    args = ap.parse_args(argv)
    if args.ops < 2 or not 10 <= args.shift <= 26:
        ap.error("--ops is at least 2 and --shift 10 to 26")
    workload, store = args.case
    from misses import executable  # scripts/misses.py, beside this script

    exe = args.exe or executable()
    if not Path(exe).is_file():
        raise SystemExit(f"stores: {exe}: no such file")
    env = {
        **os.environ,
        "BENCH_FLOOR_PROFILE": f"{workload}/{store}/{args.shift}:{args.ops}",
        "BENCH_FLOOR_ZERO": args.zero,
    }
    costs = callgrind([exe], env, collect=True)
    print(
        render(
            f"{workload}/{store}, 2^{args.shift} pages",
            summarise(costs, objdump(exe), args.ops, args.min),
        )
    )
    if args.upstream:
        c = UPSTREAM / f"upstream-{'on' if args.zero == 'on-free' else 'off'}-none"
        if not c.exists():
            raise SystemExit(f"stores: {c} is not built: run scripts/upstream_c.py first")
        half = max(args.ops // 2, 1)
        short = callgrind([str(c), workload, str(args.shift), str(half)], dict(os.environ), False)
        long = callgrind(
            [str(c), workload, str(args.shift), str(args.ops)], dict(os.environ), False
        )
        # The harness runs as many untimed steps as timed ones: two steps each.
        per = 2 * (args.ops - half)
        title = f"{workload}/upstream C (no-op lock), 2^{args.shift} pages"
        print(render(title, summarise(difference(short, long), objdump(str(c)), per, args.min)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
