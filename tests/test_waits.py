"""scripts/waits.py and its section of docs/benchmarks.md: which instruction each timed step's
samples are charged to, and how the page names it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from support import script
from test_figures import bench_report

ROOT = Path(__file__).resolve().parent.parent

OBJDUMP = """
0000000000001000 <floor::profiled_steps>:
    1000:\tpush   %rbx
    1001:\tmov    0x0(%rbp,%r13,8),%rsi
    1006:\tcall   2000 <<floor::Pb<L> as floor::Alloc>::free>
    100b:\tret

0000000000002000 <<floor::Pb<L> as floor::Alloc>::free>:
    2000:\tmov    (%rdi),%r10
    2003:\tmovzwl (%r10,%rdx,4),%eax
    2008:\ttest   %ax,%ax
    200b:\tret

0000000000003000 <<floor::Pb<L> as floor::Alloc>::free>:
    3000:\tmov    (%rdi),%r10
    3003:\tprefetcht0 (%rax,%r10,1)
    3008:\tjmp    3010
"""

BIAS = 0x5555_0000_0000


def waits() -> ModuleType:
    return script("waits")


def samples(m: ModuleType) -> Counter[tuple[int, str, int]]:
    text = "\n".join(
        [
            # 6 samples after the metadata load of the first `free` instance ...
            *[f"  {BIAS + 0x2008:x} <floor::Pb<L> as floor::Alloc>::free+0x8"] * 6,
            # ... 3 after the hint of the second instance (the same name, another function) ...
            *[f"  {BIAS + 0x3008:x} <floor::Pb<L> as floor::Alloc>::free+0x8"] * 3,
            # ... 2 after the handle's read in the loop, and 1 in the C library.
            *[f"  {BIAS + 0x1006:x} floor::profiled_steps+0x6"] * 2,
            "  7f0000001234 __memmove_avx512_unaligned_erms+0x34",
            # ... and 1 on the first instruction of `free`, after the call into it.
            f"  {BIAS + 0x2000:x} <floor::Pb<L> as floor::Alloc>::free+0x0",
            "  garbage line",
        ]
    )
    return m.parse_samples(text)


def test_samples_are_counted_by_address_symbol_and_offset() -> None:
    m = waits()
    s = samples(m)
    assert sum(s.values()) == 13
    assert s[(BIAS + 0x2008, "<floor::Pb<L> as floor::Alloc>::free", 8)] == 6
    assert s[(0x7F0000001234, "__memmove_avx512_unaligned_erms", 0x34)] == 1


def test_the_load_address_is_the_one_every_sample_agrees_with() -> None:
    m = waits()
    # `free` names two functions: only one page-aligned bias fits both of its samples' offsets
    # and the loop's.
    assert m.load_bias(samples(m), m.disassembly(OBJDUMP)[0]) == BIAS


def test_no_load_address_is_a_clear_error() -> None:
    m = waits()
    bad = Counter({(BIAS + 0x2008, "floor::profiled_steps", 8): 1})
    bad[(BIAS + 0x9008, "floor::profiled_steps", 8)] = 1
    with pytest.raises(SystemExit, match="no single load address"):
        m.load_bias(bad, m.disassembly(OBJDUMP)[0])


def test_each_sample_is_charged_to_the_instruction_before_it() -> None:
    m = waits()
    starts, insns = m.disassembly(OBJDUMP)
    total, rows = m.waits(samples(m), BIAS, insns, set(starts[1]))
    assert total == 13
    assert rows == [
        {"share": 0.462, "addr": 0x2003, "insn": "movzwl (%r10,%rdx,4),%eax"},
        {"share": 0.231, "addr": 0x3003, "insn": "prefetcht0 (%rax,%r10,1)"},
        {"share": 0.154, "addr": 0x1001, "insn": "mov    0x0(%rbp,%r13,8),%rsi"},
        {"share": 0.077, "outside": "__memmove_avx512_unaligned_erms"},
        {"share": 0.077, "entry": "<floor::Pb<L> as floor::Alloc>::free"},
    ]
    # The least share kept, and how many rows.
    _, few = m.waits(samples(m), BIAS, insns, set(starts[1]), 5, 0.2)
    assert [r["share"] for r in few] == [0.462, 0.231]
    _, top = m.waits(samples(m), BIAS, insns, set(starts[1]), 1)
    assert len(top) == 1


def test_addr2line_frames_are_read_innermost_first() -> None:
    text = "\n".join(
        [
            "0x0000000000003003",
            "core::core_arch::x86::sse::_mm_prefetch",
            "/rustc/abc/library/core/src/../../stdarch/crates/core_arch/src/x86/sse.rs:1873",
            "pagebuddy::arena::Arena::prefetch",
            "/work/main/rust/pagebuddy/src/arena.rs:150 (discriminator 2)",
            "pagebuddy::store::FreeLists<L>::take_head",
            "/work/main/rust/pagebuddy/src/store.rs:561",
            "0x0000000000002003",
            "pagebuddy::pool::Pool<L>::held",
            "/work/main/rust/pagebuddy/src/pool.rs:484",
        ]
    )
    assert waits().parse_addr2line(text) == {
        0x3003: [
            ("core::core_arch::x86::sse::_mm_prefetch", "sse.rs:1873"),
            ("pagebuddy::arena::Arena::prefetch", "arena.rs:150"),
            ("pagebuddy::store::FreeLists<L>::take_head", "store.rs:561"),
        ],
        0x2003: [("pagebuddy::pool::Pool<L>::held", "pool.rs:484")],
    }


def test_a_missing_tool_is_named_before_anything_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    m = waits()
    monkeypatch.setattr(m.shutil, "which", lambda tool: None if tool == "perf" else "/bin/true")
    monkeypatch.setattr(m, "executable", lambda: pytest.fail("built before the check"))
    with pytest.raises(SystemExit, match="waits: perf not found"):
        m.main(["--shifts", "18"])


def doc(cases: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "schema": "pagebuddy-waits/1",
        "date": "2026-12-05 17:00 UTC",
        "command": "python3 scripts/waits.py",
        "seconds": 400,
        "cpu": "Test CPU",
        "kernel": "6.1",
        "perf": "perf version 6.1",
        "frequency": 10000,
        "cases": cases,
    }


def test_the_section_names_each_case_and_its_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = bench_report()
    data = tmp_path / "waits.json"
    prefetch = [
        ["core::core_arch::x86::sse::_mm_prefetch", "sse.rs:1873"],
        ["pagebuddy::prefetch::prefetch", "prefetch.rs:19"],
        ["pagebuddy::arena::Arena::prefetch", "arena.rs:150"],
        ["<pagebuddy::store::Intrusive as pagebuddy::store::LinkStore>::prefetch", "store.rs:285"],
        ["pagebuddy::store::FreeLists<L>::take_head", "store.rs:561"],
        ["pagebuddy::pool::Pool<L>::alloc", "pool.rs:295"],
    ]
    data.write_text(
        json.dumps(
            doc(
                [
                    {
                        "shift": 22,
                        "store": "intrusive",
                        "workload": "churn",
                        "pages": "huge",
                        "ops": 1 << 21,
                        "ns": 216.03,
                        "samples": 9000,
                        "waits": [
                            {
                                "share": 0.251,
                                "insn": "prefetcht0 (%rax,%r10,1)",
                                "frames": prefetch,
                            },
                            {
                                "share": 0.182,
                                "insn": "mov    0x0(%rbp,%r13,8),%rsi",
                                "frames": [
                                    ["<floor::Churn as floor::Workload>::step", "floor.rs:274"],
                                    ["floor::profiled_steps", "floor.rs:720"],
                                ],
                            },
                        ],
                    },
                    {
                        "shift": 18,
                        "store": "frame",
                        "workload": "mixed",
                        "pages": "4 KiB",
                        "ops": 1 << 25,
                        "ns": 61.2,
                        "samples": 20000,
                        "waits": [
                            {"share": 0.094, "outside": "__memmove_avx512_unaligned_erms"},
                            {"share": 0.05, "entry": "<floor::Pb<L> as floor::Alloc>::free"},
                            {
                                "share": 0.039,
                                "insn": "movzwl 0x62(%r13),%ebx",
                                "frames": [
                                    [
                                        "alloc::collections::btree::node::NodeRef<B,K,V,T>::keys",
                                        "node.rs:1",
                                    ],
                                    ["<u32>::wrapping_add", "uint_macros.rs:1"],
                                ],
                            },
                        ],
                    },
                    {"shift": 22, "store": "side-table", "note": "not run: no memory"},
                ]
            )
        )
    )
    monkeypatch.setattr(module, "WAITS", data)
    out: list[str] = []
    module.waits_section(out)
    text = "\n".join(out)
    assert "## Where each workload waits" in text
    assert "10,000 samples a second" in text
    churn = next(line for line in out if line.startswith("- **churn**"))
    assert churn == (
        "- **churn**: 2^22 pagebuddy, intrusive (huge pages, 216 ns a step, 9,000 samples): "
        "25.1% after `prefetcht0` in prefetch ← Arena::prefetch ← "
        "Intrusive::prefetch ← FreeLists::take_head; 18.2% after `mov` in Churn::step (the "
        "benchmark) ← profiled_steps (the benchmark)."
    )
    mixed = next(line for line in out if line.startswith("- **mixed**"))
    assert "9.4% in `__memmove_avx512_unaligned_erms` (outside the binary" in mixed
    assert "5.0% on the first instruction of Pb::free (the benchmark) (after its call)" in mixed
    assert "3.9% after `movzwl` in NodeRef::keys (the standard library)" in mixed
    assert "2^22, pagebuddy, side table: not run: no memory." in text


@pytest.mark.parametrize(
    ("function", "named"),
    [
        ("pagebuddy::pool::Pool<L>::held", "Pool::held"),
        (
            "<pagebuddy::store::Intrusive as pagebuddy::store::LinkStore>::prefetch",
            "Intrusive::prefetch",
        ),
        ("<alloc::collections::btree::map::BTreeMap<K,V,A>>::remove", "BTreeMap::remove"),
        ("pagebuddy::prefetch::prefetch", "prefetch"),
        ("<floor::Churn as floor::Workload>::step", "Churn::step (the benchmark)"),
        ("floor::profiled_steps", "profiled_steps (the benchmark)"),
    ],
)
def test_a_frame_is_named_by_its_type_and_function(function: str, named: str) -> None:
    assert bench_report().wait_frame(function) == named


def test_no_data_no_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = bench_report()
    monkeypatch.setattr(module, "WAITS", tmp_path / "missing.json")
    out: list[str] = []
    module.waits_section(out)
    assert out == []


def test_the_page_shows_the_waits_the_data_holds() -> None:
    data = ROOT / "docs" / "data" / "waits.json"
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    d = json.loads(data.read_text())
    assert d["schema"] == "pagebuddy-waits/1"
    for c in d["cases"]:
        if "workload" not in c:
            continue
        assert f"{c['samples']:,} samples" in page
        for r in c["waits"]:
            assert f"{r['share'] * 100:.1f}%" in page
