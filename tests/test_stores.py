"""scripts/stores.py: how it reads callgrind's per-instruction costs and counts the writes."""

from __future__ import annotations

from types import ModuleType

import pytest

from support import script


def stores() -> ModuleType:
    return script("stores")


# A callgrind file as `--dump-instr=yes --cache-sim=yes` writes it: positions `instr line`,
# addresses absolute or relative to the line before, trailing zero counts left out, and the
# inclusive cost of a call on the line after `calls=`.
CALLGRIND = """\
version: 1
positions: instr line
events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw

ob=(1) /bin/floor
fn=(1) profiled
0x1000 10 100 0 100
+4 * 100 100
calls=100 0x2000 20
+5 * 800 200 500
+5 11 100 0 100
fn=(2) free
0x2000 20 100 0 100
+1 * 100 0 100
+2 * 100 100 0 0 0 7
0x2010 21 100 0 200
"""

OBJDUMP = """\
0000000000001000 <profiled>:
    1000:\tmov    %rcx,(%r12)
    1004:\tmov    0x8(%rbx),%rax
    1009:\tcall   2000 <free>
    100e:\tmov    %rdx,0x10(%rsp)

0000000000002000 <free>:
    2000:\tpush   %rbp
    2001:\tpush   %rbx
    2003:\tmov    (%rdi),%rax
    2010:\tbtc    %rdx,%rsi
"""


def test_self_costs_by_address_leave_out_the_inclusive_cost_of_calls() -> None:
    s = stores()
    costs = s.parse_callgrind(CALLGRIND)
    assert costs == {
        0x1000: [100, 0, 100],
        0x1004: [100, 100, 0],
        0x100E: [100, 0, 100],
        0x2000: [100, 0, 100],
        0x2001: [100, 0, 100],
        0x2003: [100, 100, 0],
        0x2010: [100, 0, 200],
    }
    # The call's line itself (0x1009) carried only the callee's inclusive cost.
    assert 0x1009 not in costs


def test_writes_per_operation_by_kind_without_valgrinds_own() -> None:
    s = stores()
    summary = s.summarise(s.parse_callgrind(CALLGRIND), s.parse_objdump(OBJDUMP), 100, 0.5)
    # btc on registers: valgrind's writes, not the program's.
    assert summary.writes == pytest.approx(4.0)
    assert summary.by_kind == {"push": 2.0, "call": 0.0, "stack": 1.0, "data": 1.0}
    assert summary.instructions == pytest.approx(7.0)
    listed = [(round(per, 2), addr, insn.text) for per, addr, insn in summary.rows]
    assert listed == [
        (1.0, 0x1000, "mov    %rcx,(%r12)"),
        (1.0, 0x100E, "mov    %rdx,0x10(%rsp)"),
        (1.0, 0x2000, "push   %rbp"),
        (1.0, 0x2001, "push   %rbx"),
    ]
    text = s.render("churn/intrusive", summary)
    assert text.splitlines()[0] == ("churn/intrusive: 4.0 writes and 7.0 instructions an operation")
    assert "push 2.0, call 0.0, stack 1.0, data 1.0" in text


def test_the_difference_of_two_runs_counts_only_the_extra_steps() -> None:
    s = stores()
    short = {0x10: [100, 10, 20], 0x20: [5, 0, 1]}
    long = {0x10: [300, 30, 60], 0x20: [5, 0, 1], 0x30: [8, 0, 4]}
    assert s.difference(short, long) == {
        0x10: [200, 20, 40],
        0x20: [0, 0, 0],
        0x30: [8, 0, 4],
    }


def test_a_file_without_data_counts_is_refused() -> None:
    s = stores()
    with pytest.raises(ValueError, match="lack one of"):
        s.parse_callgrind("positions: instr line\nevents: Ir\n0x10 1 5\n")


def test_a_case_names_a_workload_and_a_store() -> None:
    s = stores()
    assert s.case_arg("churn/intrusive") == ("churn", "intrusive")
    for bad in ("churn", "warm/intrusive", "churn/heap"):
        with pytest.raises(Exception, match="a case is WORKLOAD/STORE"):
            s.case_arg(bad)
