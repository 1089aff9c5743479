"""The floor section of docs/benchmarks.md: multiples and verdicts come from floor.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from test_figures import bench_report


def case(
    pages: int,
    store: str,
    advice: str,
    floor: float | None,
    overlapped: float | None = None,
    **ns: float,
) -> dict[str, Any]:
    return {
        "pages": pages,
        "shift": pages.bit_length() - 1,
        "store": store,
        "advice": advice,
        "huge_advised": advice == "huge",
        "anon_huge_kib": 2048 if advice == "huge" else 0,
        "state_bytes": pages * 12,
        "floor_ns": floor,
        "overlapped_ns": overlapped,
        "hot_ns": ns.get("hot"),
        "churn_ns": ns.get("churn"),
        "mixed_ns": ns.get("mixed"),
        "note": "" if floor else "not enough memory",
    }


@pytest.fixture
def report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    module = bench_report()
    monkeypatch.setattr(module, "DATA", tmp_path)
    cases = [
        case(1 << 18, "side-table", "default", 20.0, 1.5, hot=100.0, churn=50.0, mixed=20.0),
        case(1 << 18, "side-table", "huge", 10.0, hot=25.0, churn=14.0, mixed=9.0),
        case(1 << 22, "side-table", "huge", 100.0, hot=200.0, churn=140.0, mixed=90.0),
        case(1 << 22, "intrusive", "default", None, hot=300.0),
    ]
    peers = [
        {"id": "bsa-frame", "pages": 1 << 18, "shift": 18, "hot_ns": 300.0, "churn_ns": 12.0},
        {"id": "bsa-frame", "pages": 1 << 22, "shift": 22, "hot_ns": 300.0, "churn_ns": 150.0},
        {"id": "least", "pages": 1 << 22, "shift": 22, "hot_ns": None, "churn_ns": 230.0},
    ]
    doc = {"schema": "pagebuddy-floor/1", "started_unix": 0, "rounds": 3, "cases": cases}
    (tmp_path / "floor.json").write_text(json.dumps({**doc, "peers": peers}))
    return module


def test_each_workload_is_a_multiple_of_its_own_floor(report: Any) -> None:
    out: list[str] = []
    rows: list[tuple[str, str, str]] = []
    report.floor_section(report.Run(), out, rows)
    text = "\n".join(out)
    # The overlapped read beside the floor, "-" where the run did not measure it.
    row = "| 2^18 | side table | 4 KiB pages | 3 MiB | 20.0 ns | 1.50 ns | 100 ns (5.00x) |"
    assert row in text
    assert "| 2^18 | side table | huge pages | 3 MiB | 10.0 ns | - | 25.0 ns (2.50x) |" in text
    # Without a floor the workload is shown alone and the reason is a note.
    assert "| 2^22 | intrusive | 4 KiB pages |" in text and "not enough memory" in text
    verdicts = {t: v for t, _, v in rows}
    # 2^18 side table, huge pages: churn 1.4x the floor but slower than FrameAllocator.
    churn18 = next(
        t for t in verdicts if t.startswith("churn ≤ 1.5x the floor at 2^18 pages (side")
    )
    assert verdicts[churn18] == "missed"
    hot18 = next(t for t in verdicts if t.startswith("hot ≤ 3x the floor at 2^18 pages (side"))
    assert verdicts[hot18] == "met"
    churn22 = next(
        t for t in verdicts if t.startswith("churn ≤ 1.5x the floor at 2^22 pages (side")
    )
    assert verdicts[churn22] == "met"
    # The least per-page allocator is a row of its own and a reference in the churn goals,
    # beside FrameAllocator, never in its place.
    least = "| 2^22 | least (a word a page, LIFO) | huge | 16 MiB | - | - | - | 230 ns | - | - |"
    assert least in text
    assert "| 2^22 | FrameAllocator |" in text
    measured = {t: m for t, m, _ in rows}
    assert "FrameAllocator 150 ns" in measured[churn22]
    assert measured[churn22].endswith("; least 230 ns")
    intrusive22 = [v for t, v in verdicts.items() if "2^22 pages (intrusive" in t]
    assert intrusive22 == ["not measured", "not measured"]


#: The Python benchmark's scaling part, as python.json holds it.
SCALING = {
    "scaling_batch": 256,
    "scaling": [
        {"pages": 1 << 22, "state": "half held", "batch_ns": 160.0, "pair_ns": 250.0},
        {"pages": 1 << 14, "state": "fresh", "batch_ns": 8.0, "pair_ns": 120.0},
    ],
}


def test_python_batches_are_read_against_the_side_tables_floor(report: Any) -> None:
    out: list[str] = []
    rows: list[tuple[str, str, str]] = []
    report.python_floor(SCALING, out, rows)
    text = "\n".join(out)
    assert "| 2^22 | half held | 160 ns (1.60x) | 250 ns (2.50x) | 100 ns |" in text
    assert "| 2^14 | fresh | 8.00 ns | 120 ns | - |" in text
    assert rows == [
        (
            "Python: alloc_many + put_many on a 2^22-page pool half held at random ≤ 1.5x the "
            "floor per page",
            "160 ns per page against 100 ns: 1.60x",
            "missed",
        )
    ]


def test_python_batches_prefer_the_floor_measured_around_them(report: Any) -> None:
    # bench.sh measures the side table's floor just before and just after the Python benchmark:
    # the batch is read against the mean of the two, and the page names both.
    (report.DATA / "python_floor.txt").write_text(
        "before 4194304 90.0\nbefore 16384 4.0\nafter 4194304 110.0\nafter 16384 6.0\n"
        "garbage line\nafter 262144 not-a-number\n"
    )
    out: list[str] = []
    rows: list[tuple[str, str, str]] = []
    report.python_floor(SCALING, out, rows)
    text = "\n".join(out)
    assert "| 2^22 | half held | 160 ns (1.60x) | 250 ns (2.50x) | 100 ns |" in text
    # No floor.json case at 2^14: the one measured beside the benchmark stands alone.
    assert "| 2^14 | fresh | 8.00 ns (1.60x) | 120 ns (24.0x) | 5.00 ns |" in text
    assert "2^22: 90.0 ns before, 110 ns after" in text
    assert "the floor benchmark's run of" not in text
    assert rows[0][1] == "160 ns per page against 100 ns: 1.60x"


def test_misses_are_priced_at_the_overlapped_read_of_their_own_state(report: Any) -> None:
    floor = json.loads((report.DATA / "floor.json").read_text())
    miss = {"shift": 18, "store": "side-table", "l1d": 3.0, "l3": 0.0}
    misses = {
        "cases": [
            # The side table's read misses the L2, served by the L3: it prices L2 misses.
            {**miss, "workload": "floor", "l1d": 1.0, "l2": 1.0},
            # Bound by the L3: 2 L2 misses a step, at 1.5 ns each overlapped = 3 ns; 50 ns.
            {**miss, "workload": "churn", "l2": 2.0},
            # Under one L2 miss: bound by instructions, so no price.
            {**miss, "workload": "mixed", "l2": 0.5},
            # A size whose 4 KiB case has no overlapped read: left out.
            {**miss, "workload": "hot", "l2": 4.0, "shift": 22},
        ]
    }
    text = "\n".join(report.overlap_bounds(misses, floor))
    churn = "- **churn**: 2^18 side table 2.00 x 1.50 ns = 3.00 ns, measured 50.0 ns (16.7x)."
    assert churn in text
    assert "mixed" not in text and "hot" not in text
    # Where the state's own read misses memory, it does not price misses the L3 serves.
    misses["cases"][0]["l3"] = 1.0
    assert report.overlap_bounds(misses, floor) == []
    # A floor run without overlapped reads (an older floor.json) prices nothing.
    for c in floor["cases"]:
        c.pop("overlapped_ns")
    assert report.overlap_bounds(misses, floor) == []


def test_the_misses_say_which_steps_they_were_counted_on(report: Any) -> None:
    # An older misses.json counted one number of operations for every workload.
    assert report.counted(100_000) == "100,000 operations of each workload"
    # Now each workload's own: the floor section's first timed round, the steps it times.
    ops = {"floor": 1 << 20, "hot": 1 << 17, "churn": 1 << 20, "mixed": 1 << 20}
    text = report.counted(ops)
    assert text.startswith("the floor section's first timed round of each workload")
    assert "131,072 hot pairs" in text and "1,048,576 churn steps" in text


def test_the_churn_at_2_22_names_its_misses_of_memory_from_the_counted_steps(
    report: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    churn = {"workload": "churn", "shift": 22, "l1d": 7.0, "l2": 6.0}
    cases = [
        {**churn, "store": "intrusive", "l3": 3.25},
        {**churn, "store": "side-table", "l3": 0.0},
        {**churn, "store": "frame", "l3": 0.0},
    ]
    path = tmp_path / "misses.json"
    monkeypatch.setattr(report, "MISSES", path)
    ops = {"floor": 1 << 20, "hot": 1 << 17, "churn": 1 << 20, "mixed": 1 << 20}
    path.write_text(json.dumps({"ops": ops, "cases": cases}))
    text = report.churn_memory_misses(1 << 22)
    assert "a step: intrusive 3.25, side table 0.00, FrameAllocator 0.00." in text
    assert "16 GiB arena" in text
    # Misses counted on other steps than the timed ones (one count for every workload), or
    # without FrameAllocator's, say nothing.
    path.write_text(json.dumps({"ops": 100_000, "cases": cases}))
    assert report.churn_memory_misses(1 << 22) == ""
    path.write_text(json.dumps({"ops": ops, "cases": cases[:2]}))
    assert report.churn_memory_misses(1 << 22) == ""
