#!/usr/bin/env python3
"""Store-forwarding hazards in the exact pool's compiled fast paths (x86-64; standard library and
binutils' objdump only).

A load that reads bytes of an earlier store still in the store buffer takes them from it only if
the store covers the whole load; a load that spans two narrower stores (two 4-byte stores read
back as one 8-byte word, say) waits until both stores have left the buffer, and stores leave it
in order. Behind the write of an intrusive link, whose page the TLB and the caches miss, that is
a wait for a page walk and a line from memory: a variant of the pool whose compiled allocation
built a list's two 4-byte link ends on the stack and read them back as one word took the
intrusive churn step from 95 to 157 ns (docs/exact-pool-levers.md, "Store-forwarding stalls").

This script builds the floor benchmark (`benches/benches/floor.rs`, the same build as
`scripts/misses.py`), disassembles it, and reports every load from a stack slot that overlaps an
earlier store to the stack without lying inside it, in the functions that run the pool's
operations. The scan follows each function's direct jumps (a call is taken to return and to
leave the caller's stack slots alone), and a store reaches every load on some path from it,
including paths the program never takes: read each finding in the disassembly. Exit status 1
if there is any.

    python3 scripts/forwarding.py                     # the floor benchmark, built here
    python3 scripts/forwarding.py --binary PATH       # a binary built elsewhere
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# The benchmark's calls into the pool (`Pb`'s `alloc` and `free`, where the pool's fast paths
# are inlined), the pool's own out-of-line functions, and the loops that time them.
HOT = r"Pb<L> as floor::Alloc>::(alloc|free)>|pagebuddy::pool::Pool<L>::|<floor::profiled(_steps)?>"

_REG8 = {"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp"} | {f"r{i}" for i in range(8, 16)}
_REG4 = {"eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp"} | {f"r{i}d" for i in range(8, 16)}
_REG2 = {"ax", "bx", "cx", "dx", "si", "di", "bp", "sp"} | {f"r{i}w" for i in range(8, 16)}
_REG1 = {"al", "bl", "cl", "dl", "ah", "bh", "ch", "dh", "sil", "dil", "bpl", "spl"} | {
    f"r{i}b" for i in range(8, 16)
}
_SUFFIX = {"b": 1, "w": 2, "l": 4, "q": 8}
_LINE = re.compile(r"^\s*([0-9a-f]+):\s+(\S+)\s+(.*?)\s*(?:#.*)?$")
_STACK = re.compile(r"^(-?0x[0-9a-f]+)?\(%rsp\)$")
_HEAD = re.compile(r"^[0-9a-f]+ <(.*)>:$")


@dataclass(frozen=True)
class Finding:
    """A load at `load_addr` of `load_size` bytes at `load_off` from `%rsp` overlapping the
    earlier store at `store_addr` of `store_size` bytes at `store_off`, without lying inside
    it, in function `function`."""

    function: str
    load_addr: str
    load_off: int
    load_size: int
    store_addr: str
    store_off: int
    store_size: int

    def __str__(self) -> str:
        return (
            f"{self.function}: load at {self.load_addr} of {self.load_size} bytes at "
            f"{self.load_off:#x}(%rsp) spans the store at {self.store_addr} of "
            f"{self.store_size} bytes at {self.store_off:#x}(%rsp)"
        )


def register_size(operand: str) -> int:
    """Bytes of a general or vector register operand (`%eax` 4, `%xmm0` 16); 0 otherwise."""
    name = operand.removeprefix("%")
    if name.startswith("xmm"):
        return 16
    if name.startswith("ymm"):
        return 32
    for size, names in ((8, _REG8), (4, _REG4), (2, _REG2), (1, _REG1)):
        if name in names:
            return size
    return 0


def operand_size(mnemonic: str, other: str) -> int:
    """Bytes a memory operand of `mnemonic` covers, from its other operand's register, from the
    mnemonic's width (`movzbl` reads 1, `setne` writes 1, `movl` 4), or 0 if unknown."""
    if mnemonic.startswith("set"):
        return 1
    if mnemonic.startswith(("movz", "movs")) and len(mnemonic) == 6:
        return _SUFFIX.get(mnemonic[4], 0)
    size = register_size(other)
    if size:
        return size
    return _SUFFIX.get(mnemonic[-1], 0)


def _writes_rsp(mnemonic: str, operands: Sequence[str]) -> bool:
    return mnemonic.startswith(("push", "pop", "leave", "ret")) or (
        bool(operands) and operands[-1] == "%rsp"
    )


@dataclass(frozen=True)
class _Insn:
    addr: int
    mnemonic: str
    operands: tuple[str, ...]


def _functions(asm: str, hot: str) -> list[tuple[str, list[_Insn]]]:
    """The functions of `asm` whose name matches `hot`, each as its instructions in order."""
    out: list[tuple[str, list[_Insn]]] = []
    current: list[_Insn] | None = None
    for line in asm.splitlines():
        head = _HEAD.match(line)
        if head:
            current = [] if re.search(hot, line) else None
            if current is not None:
                out.append((head.group(1), current))
            continue
        m = _LINE.match(line)
        if current is None or not m:
            continue
        addr, mnemonic, rest = m.groups()
        operands = tuple(o.strip() for o in re.split(r",(?![^(]*\))", rest)) if rest else ()
        current.append(_Insn(int(addr, 16), mnemonic, operands))
    return out


def _successors(code: list[_Insn], i: int, index: dict[int, int]) -> list[int]:
    """Indices of the instructions that may run after `code[i]` inside its function."""
    insn = code[i]
    out = []
    if insn.mnemonic.startswith("j") and insn.operands:
        target = insn.operands[0].split()[0]
        if re.fullmatch(r"[0-9a-f]+", target) and int(target, 16) in index:
            out.append(index[int(target, 16)])
    ends = insn.mnemonic.startswith(("jmp", "ret")) or insn.mnemonic in ("ud2", "int3")
    if not ends and i + 1 < len(code):
        out.append(i + 1)
    return out


_Store = tuple[int, int, int]  # (offset from %rsp, bytes, address of the store)
_PURE_READS = ("cmp", "test", "bt")


def _stack_access(insn: _Insn) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """What `insn` reads and writes of the stack, each as (offset from %rsp, bytes) or None:
    `mov`s and `set`s write their destination and `mov`s read their source, comparisons only
    read, `lea` touches nothing, and any other instruction reads a stack operand and, where it
    is the destination, writes it back (`add %eax,0x8(%rsp)`)."""
    ops, mnemonic = insn.operands, insn.mnemonic
    slots = [(k, m) for k, o in enumerate(ops) if (m := _STACK.match(o))]
    if len(slots) != 1 or mnemonic.startswith("lea"):
        return None, None
    k, m = slots[0]
    other = ops[1 - k] if len(ops) == 2 else ""
    size = operand_size(mnemonic, other)
    if not size:
        return None, None
    slot = (int(m.group(1) or "0", 16), size)
    last = k == len(ops) - 1
    if mnemonic.startswith("set") or (mnemonic.startswith("mov") and last):
        return None, slot
    if mnemonic.startswith("mov") or mnemonic.startswith(_PURE_READS) or not last:
        return slot, None
    return slot, slot


def scan(asm: str, hot: str = HOT) -> list[Finding]:
    """Every stack load in the functions of `asm` (objdump's AT&T disassembly) whose name matches
    `hot` that a store to the stack may reach (along the function's jumps, not overwritten
    whole on the way, the stack pointer unchanged) and that overlaps that store without lying
    inside it."""
    findings: list[Finding] = []
    for name, code in _functions(asm, hot):
        index = {insn.addr: i for i, insn in enumerate(code)}
        reach: list[set[_Store]] = [set() for _ in code]
        work = list(range(len(code)))
        while work:
            i = work.pop()
            insn = code[i]
            out = set(reach[i])
            if _writes_rsp(insn.mnemonic, insn.operands):
                out = set()
            else:
                _, written = _stack_access(insn)
                if written:
                    off, size = written
                    out = {s for s in out if not (off <= s[0] and s[0] + s[1] <= off + size)}
                    out.add((off, size, insn.addr))
            for j in _successors(code, i, index):
                if not out <= reach[j]:
                    reach[j] |= out
                    work.append(j)
        for i, insn in enumerate(code):
            read, _ = _stack_access(insn)
            if not read:
                continue
            off, size = read
            for s_off, s_size, s_addr in sorted(reach[i]):
                overlaps = s_off < off + size and off < s_off + s_size
                inside = s_off <= off and off + size <= s_off + s_size
                if overlaps and not inside:
                    findings.append(
                        Finding(name, f"{insn.addr:x}", off, size, f"{s_addr:x}", s_off, s_size)
                    )
    return findings


def floor_binary() -> str:
    """The floor benchmark's binary, built with the bench profile (as `scripts/misses.py`)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from misses import executable

    return executable()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", help="a floor benchmark binary (default: build it)")
    args = parser.parse_args()
    binary = args.binary or floor_binary()
    try:
        asm = subprocess.run(
            ["objdump", "-d", "-C", "--no-show-raw-insn", binary],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"forwarding: cannot disassemble {binary}: {e}", file=sys.stderr)
        return 2
    findings = scan(asm)
    for f in findings:
        print(f)
    functions = len(_functions(asm, HOT))
    print(
        f"{len(findings)} stack loads spanning narrower stores in {functions} functions of {binary}"
    )
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
