"""Tests of the ``pagebuddy`` command and the modules behind it."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import pagebuddy
from conftest import run_json, run_main
from pagebuddy import Pool, ReferencePool, _frag, _fuzz, _lockstep, _trace
from pagebuddy._lockstep import diverges, run_ops
from pagebuddy._trace import Geometry, TraceError, parse_trace

TRACE_DIR = Path(__file__).resolve().parent / "data"

ROOT = Path(__file__).resolve().parent.parent


# -- deliberately broken pools (module level, so that reproducers can import them) -------------


class LeakyPool:
    """A Pool whose put_page silently does nothing for some pages (a leak)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._pool = Pool(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    def put_page(self, pfn: int) -> None:
        if pfn % 7 == 3 and self._pool.page_count(pfn) == 1:
            return
        self._pool.put_page(pfn)


class SwappedListPool:
    """A Pool that reports its order-0 free list out of FIFO order (seen only in free_lists)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._pool = Pool(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    def free_lists(self) -> list[list[int]]:
        lists = self._pool.free_lists()
        if len(lists[0]) >= 3:
            lists[0][1], lists[0][2] = lists[0][2], lists[0][1]
        return lists


def inject(monkeypatch: pytest.MonkeyPatch, pool_cls: type) -> None:
    """Make every command pair ``pool_cls`` (instead of Pool) with ReferencePool."""
    monkeypatch.setattr(_lockstep, "default_classes", lambda g=None: (pool_cls, ReferencePool))


# -- demo ----------------------------------------------------------------------------------------


def test_python_m_pagebuddy_runs_the_demo() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pagebuddy"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "Free blocks per order" in proc.stdout
    assert "Pool and ReferencePool agree" in proc.stdout
    assert "extfrag" in proc.stdout
    assert "Pool is" in proc.stdout and "faster" in proc.stdout
    assert "\x1b[" not in proc.stdout  # no escape codes when stdout is not a terminal
    # No progress bar either: on a pipe, only the progress lines of a run past 10 s.
    for line in proc.stderr.splitlines():
        assert line.startswith(("lockstep: ", "timing both pools: ")), proc.stderr


def test_demo_in_process_without_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys)
    assert code == 0
    assert "Free blocks per order" in out
    assert "buddyinfo at end:" in out
    assert "Largest free order" in out


def test_demo_plot_writes_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    out_png = tmp_path / "out.png"
    code, _, _ = run_main(capsys, "demo", "--ops", "3000", "--plot", str(out_png))
    assert code == 0
    data = out_png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    h, w = matplotlib.image.imread(str(out_png)).shape[:2]
    assert w > 1.5 * h  # two panels side by side


def test_plot_without_matplotlib_names_the_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    code, _, err = run_main(capsys, "demo", "--plot", str(tmp_path / "x.png"))
    assert code == 2
    assert "pagebuddy[plot]" in err
    assert not (tmp_path / "x.png").exists()


def test_demo_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, d = run_json(capsys, "demo", "--ops", "2000", "--seed", "5")
    assert code == 0
    assert d["command"] == "demo" and d["ok"] is True and d["divergence"] is None
    assert len(d["end"]["free_blocks"]) == d["max_order"] == 11
    assert len(d["end"]["extfrag_index"]) == 11
    assert all(-1.0 <= x <= 1.0 for x in d["end"]["extfrag_index"])
    assert d["time"]["ratio"] > 0
    assert sum(d["op_counts"].values()) == d["ops"]


def test_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "--help")
    assert code == 0
    for sub in ("demo", "fuzz", "replay", "bench"):
        assert sub in out
    assert "exit codes" in out and "130" in out
    code, out, _ = run_main(capsys, "fuzz", "--help")
    assert code == 0 and "--max-order" in out and "exit codes" in out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(capsys, "fuzz", "--ops", "0")[0] == 2
    assert run_main(capsys, "fuzz", "--pages", "4", "--reserved", "9")[0] == 2
    assert run_main(capsys, "no-such-command")[0] == 2
    assert run_main(capsys, "replay", "/nonexistent/trace.txt")[0] == 2


def test_unbounded_and_too_many_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for value in ("inf", "1e309", "nan", "-inf"):
        code, out, err = run_main(capsys, "fuzz", "--seconds", value)
        assert code == 2 and out == "" and err.count("\n") == 1 and "--seconds" in err, value
    code, report = run_json(capsys, "fuzz", "--shrink-seconds", "inf")
    assert code == 2 and "finite" in report["error"]
    code, report = run_json(capsys, "demo", "--processes", "65")
    assert code == 2 and "--processes" in report["error"] and "64" in report["error"]
    code, out, _ = run_main(capsys, "demo", "--help")
    assert "(at most 64;" in " ".join(out.split())


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_output_errors_name_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "demo", "--ops", "50", "--record", "/dev/full")
    assert code == 2 and err.strip().endswith("/dev/full: No space left on device"), err
    code, report = run_json(capsys, "fuzz", "--ops", "50", "--record", "/dev/full")
    assert code == 2 and report["error"].startswith("/dev/full: "), report
    trace = tmp_path / "t.trace"
    assert run_main(capsys, "demo", "--ops", "50", "--record", str(trace))[0] == 0
    code, report = run_json(
        capsys,
        "ftrace",
        str(TRACE_DIR / "kmem-thp-split.trace"),
        "--no-reference",
        "--record",
        "/dev/full",
    )
    assert code == 2 and report["error"].startswith("/dev/full: "), report


def test_speed_is_said_faster_or_slower() -> None:
    from pagebuddy.cli._show import compared

    assert compared(3.24) == "Pool is 3.2x faster"
    assert compared(0.4) == "Pool is 2.5x slower"
    assert compared(1.02) == compared(0.98) == "Pool is as fast (1.0x)"
    assert "faster" not in compared(0.5) and "compare" in compared(float("inf"))
    assert "compare" in compared(0.0)


def test_progress_lines_without_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The interval is 10 s; a shorter one, set through the environment, shows the mechanism.
    from pagebuddy.cli._context import PROGRESS_SECONDS, PROGRESS_SECONDS_ENV, progress_seconds

    assert progress_seconds() == PROGRESS_SECONDS == 10.0
    monkeypatch.setenv(PROGRESS_SECONDS_ENV, "0.02")
    code, out, err = run_main(capsys, "fuzz", "--seconds", "0.5", "--seed", "3", "--pages", "64")
    assert code == 0 and "No divergence" in out
    lines = err.splitlines()
    assert len(lines) >= 3 and all(line.startswith("fuzz: ") for line in lines), err
    assert lines[-1].endswith(", done") and " ops/s" in lines[-1]
    trace = tmp_path / "demo.trace"
    assert run_main(capsys, "demo", "--ops", "1000", "--record", str(trace))[0] == 0
    for argv in (
        ("replay", str(trace)),
        ("ftrace", str(TRACE_DIR / "kmem-thp-split.trace")),
        ("bench", "--tiny"),
    ):
        code, out, err = run_main(capsys, *argv)
        assert code == 0 and out
        assert len(err.splitlines()) >= 3 and err.splitlines()[-1].endswith(", done"), argv
    # --no-progress: none.
    code, out, err = run_main(capsys, "replay", str(trace), "--no-progress")
    assert code == 0 and out and err == ""
    # A bad interval is the default one.
    for bad in ("0", "-1", "nan", "inf", "soon"):
        monkeypatch.setenv(PROGRESS_SECONDS_ENV, bad)
        assert progress_seconds() == PROGRESS_SECONDS


#: A range written with dots (``0..9``, ``0..=3``, ``0 .. max_order``): the notation is
#: "A to B", both ends included, in the docs, the help and the messages.
_DOTS = re.compile(r"[\w`)}]\s?\.\.=?\s?[\w`({-]")


def _prose(path: Path) -> str:
    """The text of a Markdown file outside its Rust code blocks (Rust's own ranges)."""
    out, rust = [], False
    for text in path.read_text(encoding="utf-8").splitlines():
        if text.startswith("```"):
            rust = text.startswith("```rust")
            continue
        if not rust:
            out.append(text)
    return "\n".join(out)


def test_one_notation_for_ranges(capsys: pytest.CaptureFixture[str]) -> None:
    root = Path(__file__).resolve().parents[1]
    for doc in ("README.md", "docs/cli.md"):
        found = _DOTS.findall(_prose(root / doc))
        assert not found, (doc, found)
    for command in ("demo", "fuzz", "replay", "bench", "ftrace"):
        _, out, _ = run_main(capsys, command, "--help")
        assert not _DOTS.findall(out), (command, _DOTS.findall(out))
    for cls in (Pool, ReferencePool):
        assert not _DOTS.findall(cls.__doc__ or "")
        for name in ("alloc_pages", "put_page", "alloc_exact", "free_lists", "max_order"):
            assert not _DOTS.findall(getattr(cls, name).__doc__ or ""), (cls, name)
            assert "[`" not in (getattr(cls, name).__doc__ or "")
    messages = []
    for cls in (Pool, ReferencePool):
        pool = cls(8, page_size=64)
        got = []
        for call in (
            lambda p=pool: p.alloc_pages(9),
            lambda p=pool: p.alloc_exact(99),
            lambda c=cls: c(0, page_size=64),
            lambda c=cls: c(8, page_size=3),
            lambda c=cls: c(8, page_size=64, reserved_pages=9),
            lambda c=cls: c(8, page_size=64, cpus=-1),
            lambda c=cls: c(8, page_size=64, cpus=1, cache_batch=0),
        ):
            with pytest.raises(ValueError) as info:
                call()
            got.append(str(info.value))
        for message in got:
            assert not _DOTS.findall(message), message
        assert "orders 0 to 3" in got[0] and "runs are 1 to 8 pages" in got[1], got
        messages.append(got)
    assert messages[0][:2] == messages[1][:2]
    code, report = run_json(capsys, "demo", "--cpus", "-1")
    assert code == 2 and "from 0 to 65536" in report["error"]


# -- replay and the trace format ----------------------------------------------------------------


def test_replay_round_trips_a_demo_recording(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "demo.trace"
    code, demo = run_json(capsys, "demo", "--ops", "2500", "--record", str(trace))
    assert code == 0
    code, replay = run_json(capsys, "replay", str(trace))
    assert code == 0
    assert replay["ok"] is True
    assert replay["ops"] == demo["ops"]
    assert replay["op_counts"] == demo["op_counts"]
    assert replay["end"]["free_blocks"] == demo["end"]["free_blocks"]
    assert replay["geometry"] == demo["geometry"]
    sections = _trace.read_trace(str(trace))
    again = "".join(_trace.dump_trace(sections))
    assert parse_trace(again.splitlines())[0].ops == sections[0].ops


def test_replay_round_trips_a_fuzz_recording(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "fuzz.trace"
    code, fz = run_json(capsys, "fuzz", "--ops", "3000", "--seed", "11", "--record", str(trace))
    assert code == 0 and fz["ok"]
    sections = _trace.read_trace(str(trace))
    assert len(sections) == fz["episodes"]
    assert sum(len(s.ops) for s in sections) == fz["ops"] == 3000
    code, out, _ = run_main(capsys, "replay", str(trace))
    assert code == 0
    assert "agree" in out
    if fz["rejected"]:
        assert "refused" in out.lower()


def test_replay_text_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.trace"
    trace.write_text(
        "# a small trace\n"
        "pagebuddy-trace v1 nr_pages=16 base_pfn=0x100 max_order=5\n"
        "alloc 2\nalloc 0\nget 260\nput 260\nsplit 256\nput 257\nput_many 258 259\nput 256\n"
    )
    code, out, _ = run_main(capsys, "replay", str(trace))
    assert code == 0, out
    assert "Free blocks per order" in out and "agree" in out


BREAKING = (
    "pagebuddy-trace v1 nr_pages=8 max_order=4\n"
    "alloc 0\n"
    "put 0\n"
    "put 0\n"  # line 4: a put of a free page
    "alloc 7\n"  # line 5: no such order
    "get 99\n"  # line 6: outside the pool
)


def test_replay_reports_rule_breaking_operations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "bad-rules.trace"
    trace.write_text(BREAKING)
    code, out, err = run_main(capsys, "replay", str(trace))
    assert code == 0, err
    assert "line 4: put 0: PageError" in out
    assert "line 5: alloc 7: ValueError" in out
    assert "line 6: get 99: PageError" in out
    assert "agree" in out
    assert run_main(capsys, "replay", "--strict", str(trace))[0] == 3
    code, d = run_json(capsys, "replay", str(trace))
    assert code == 0 and d["rejected_total"] == 3


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("alloc 0\n", 1, "before the header"),
        ("", 0, "empty trace"),
        ("pagebuddy-trace v1 nr_pages=8\nalloc 0\nfree 3\n", 3, "unknown operation 'free'"),
        ("pagebuddy-trace v1 nr_pages=8\nput\n", 2, "put takes 1 argument"),
        ("pagebuddy-trace v1 nr_pages=8\nalloc 1 2\n", 2, "alloc takes 1 argument"),
        ("pagebuddy-trace v1 nr_pages=8\n\n# c\nput twelve\n", 4, "not an integer: 'twelve'"),
        ("pagebuddy-trace v1 nr_pages=8\nalloc_many 0\n", 2, "alloc_many takes 2 arguments"),
        ("pagebuddy-trace v1 nr_pages=8\nput_many\n", 2, "at least one PFN"),
        ("pagebuddy-trace v2 nr_pages=8\n", 1, "unsupported trace version"),
        ("pagebuddy-trace v1 pages=8\n", 1, "unknown header field 'pages'"),
        ("pagebuddy-trace v1 base_pfn=3\n", 1, "lacks nr_pages"),
        ("pagebuddy-trace v1 nr_pages=0\n", 1, "invalid geometry"),
        ("pagebuddy-trace v1 nr_pages=8 page_size=100\n", 1, "power of two"),
        ("pagebuddy-trace v1 nr_pages=8 zero=sometimes\n", 1, "zero='sometimes'"),
        ("pagebuddy-trace v1 nr_pages=8 nr_pages=9\n", 1, "given twice"),
        ("pagebuddy-trace v1 nr_pages\n", 1, "not KEY=VALUE"),
        ("pagebuddy-trace v1 nr_pages=8\nalloc 0\n \npagebuddy-trace v1\n", 4, "nr_pages"),
        ("pagebuddy-trace v1 nr_pages=2097152 page_size=4096\n", 1, "at most 4 GiB"),
    ],
)
def test_malformed_traces_are_refused_with_line_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, line: int, reason: str
) -> None:
    trace = tmp_path / "bad.trace"
    trace.write_text(text)
    with pytest.raises(TraceError) as info:
        _trace.read_trace(str(trace))
    assert info.value.line == line
    assert reason in info.value.reason
    code, out, err = run_main(capsys, "replay", str(trace))
    assert code == 2
    assert out == ""
    expected = f"{trace}:{line}:" if line else f"{trace}:"
    assert expected in err.replace("\n", "")
    assert "Traceback" not in err
    code, d = run_json(capsys, "replay", str(trace))
    assert code == 2 and d["line"] == line and reason in d["reason"]


def test_binary_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "bin.trace"
    trace.write_bytes(b"\xff\xfe\x00garbage")
    code, _, err = run_main(capsys, "replay", str(trace))
    assert code == 2 and "not a text file" in err


def test_trace_format_round_trip() -> None:
    g = Geometry(
        nr_pages=100,
        page_size=64,
        base_pfn=0x1000,
        reserved_pages=3,
        order_cap=5,
        zero="never",
        links="intrusive",
        arena="buffer",
    )
    ops = [
        ("alloc", 3),
        ("put", 4099),
        ("get", -1),
        ("split", 2**64),
        ("alloc_many", 0, 4),
        ("put_many", (4100, 4101)),
    ]
    text = "".join(_trace.dump_trace([_trace.Section(g, ops)], comment="hello\nworld"))
    assert text.startswith("# hello\n# world\npagebuddy-trace v1 ")
    (s,) = parse_trace(text.splitlines(), "mem")
    assert s.geometry == g
    assert s.ops == ops
    assert s.lines == [4, 5, 6, 7, 8, 9]


# -- fuzz ----------------------------------------------------------------------------------------


def test_fuzz_small_run_is_clean(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "fuzz", "--ops", "5000", "--seed", "3")
    assert code == 0
    assert "No divergence" in out and "seed 3" in out


def test_fuzz_fixed_geometry_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, d = run_json(
        capsys,
        "fuzz",
        "--ops",
        "3000",
        "--seed",
        "9",
        "--pages",
        "100",
        "--base-pfn",
        "0x10",
        "--reserved",
        "5",
        "--max-order",
        "4",
        "--zero",
        "alloc",
    )
    assert code == 0
    assert d["ok"] is True and d["ops"] == 3000 and d["reproducer"] is None
    assert d["ops_per_second"] > 0


def test_fuzz_seconds(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """--seconds stops the run at the first reading of the fuzzer's clock past the budget. The
    clock is a fake one, 10 ms further on at each reading, so the test does not depend on the
    machine's speed."""
    readings = itertools.count()
    clock = types.SimpleNamespace(perf_counter=lambda: next(readings) / 100)
    monkeypatch.setattr(_fuzz, "time", clock)
    code, d = run_json(capsys, "fuzz", "--seconds", "0.5", "--seed", "1", "--base-pfn", "0")
    assert code == 0 and d["ok"] is True and d["ops"] > 0
    assert 0.5 <= d["seconds"] <= 0.53, d


def test_fuzz_is_deterministic_for_a_seed() -> None:
    cfg = _fuzz.FuzzConfig(ops=2000, seed=42)
    a, b = _fuzz.fuzz(cfg), _fuzz.fuzz(cfg)
    assert (a.ops, a.episodes, a.rejected) == (b.ops, b.episodes, b.rejected)


def _exec_snippet(snippet: str) -> None:
    exec(compile(snippet, "<reproducer>", "exec"), {"__name__": "__reproducer__"})


@pytest.mark.parametrize("broken", [LeakyPool, SwappedListPool])
def test_injected_divergence_is_shrunk_to_a_reproducer(broken: type) -> None:
    result = _fuzz.fuzz(_fuzz.FuzzConfig(ops=50_000, seed=3), pool_cls=broken)
    assert result.divergence is not None
    assert result.shrunk_divergence is not None
    assert 1 <= len(result.shrunk_ops) <= 20
    assert len(result.shrunk_ops) <= len(result.episode_ops)
    snippet = result.snippet
    assert f"import {broken.__name__} as Pool" in snippet
    # The reproducer reproduces ...
    with pytest.raises(AssertionError):
        _exec_snippet(snippet)
    # ... and is specific: with the real Pool it passes.
    fixed = snippet.replace(f"from {broken.__module__} import {broken.__name__} as Pool", "")
    _exec_snippet(fixed)
    # The shrunk case diverges as a trace too.
    assert diverges(result.shrunk_geometry, result.shrunk_ops, broken) is not None
    assert diverges(result.shrunk_geometry, result.shrunk_ops) is None


def test_fuzz_command_with_injected_pool_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    inject(monkeypatch, LeakyPool)
    repro = tmp_path / "repro.py"
    code, out, _ = run_main(
        capsys, "fuzz", "--ops", "50000", "--seed", "3", "--reproducer", str(repro)
    )
    assert code == 1
    assert "DIVERGENCE" in out and "Reproducer" in out
    assert "step(" in out and "from pagebuddy import Pool, ReferencePool" in out
    snippet = repro.read_text()
    assert snippet in out
    with pytest.raises(AssertionError):
        _exec_snippet(snippet)
    code, d = run_json(capsys, "fuzz", "--ops", "50000", "--seed", "3")
    assert code == 1 and d["ok"] is False
    # A reproducer of the same seed (shrinking may stop elsewhere when time runs short).
    assert d["reproducer"].startswith(snippet.partition("\n")[0])
    with pytest.raises(AssertionError):
        _exec_snippet(d["reproducer"])
    assert d["reproducer_trace"].startswith("pagebuddy-trace v1")


def test_replay_detects_divergence_with_line_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    trace = tmp_path / "t.trace"
    ops = "alloc 0\n" * 8 + "".join(f"put {p}\n" for p in range(8))
    trace.write_text("pagebuddy-trace v1 nr_pages=8\n" + ops)
    assert run_main(capsys, "replay", str(trace))[0] == 0
    inject(monkeypatch, LeakyPool)
    code, out, _ = run_main(capsys, "replay", str(trace))
    assert code == 1
    assert "DIVERGENCE line 13:" in out  # "put 3" is on line 13
    code, d = run_json(capsys, "replay", str(trace))
    assert code == 1 and d["divergence"]["line"] == 13


def test_lockstep_detects_contents_not_zeroed() -> None:
    class NoZeroPool:
        zero = "free"  # claims the policy it does not follow

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["zero"] = "never"
            self._pool = Pool(*args, **kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._pool, name)

    g = Geometry(nr_pages=4, page_size=64, order_cap=3)
    ops = [("alloc", 0), ("put", 0), ("alloc", 0)]
    assert diverges(g, ops) is None
    d = diverges(g, ops, NoZeroPool)
    assert d is not None and d.what == "contents" and d.step == 2


# -- fragmentation figures -----------------------------------------------------------------------


def test_extfrag_index_matches_the_kernel_formula() -> None:
    # Nothing free at all.
    assert _frag.extfrag_index([0, 0, 0], 1) == 0
    # A suitable block exists: the allocation would succeed.
    assert _frag.extfrag_index([0, 0, 1], 1) == -1000
    assert _frag.format_thousandths(-1000) == "-1.000"
    # Four free order-0 blocks, order 1 requested:
    # 1000 - (1000 + 4 * 1000 // 2) // 4 = 1000 - 750 = 250.
    assert _frag.extfrag_index([4, 0, 0], 1) == 250
    assert _frag.format_thousandths(250) == "0.250"
    # One free page, order 3 requested: lack of memory. The formula goes below 0 when
    # fewer pages than requested are free, as the kernel's does: 1000 - 1125 = -125.
    assert _frag.extfrag_index([1, 0, 0, 0], 3) == -125
    assert _frag.format_thousandths(-125) == "-0.125"
    # Many scattered pages, large request: close to 1.
    assert _frag.extfrag_index([512, 0, 0, 0, 0, 0, 0, 0, 0, 0], 9) == 1000 - 2000 // 512
    assert _frag.unusable_index([4, 0, 1], 2) == 500
    assert _frag.unusable_index([0, 0, 0], 0) == 1000
    assert _frag.largest_free_order([3, 0, 1, 0]) == 2
    assert _frag.largest_free_order([0, 0]) is None
    assert _frag.free_pages([3, 0, 1]) == 7
    assert _frag.buddyinfo_line([1, 2]).split()[-2:] == ["1", "2"]


def test_run_ops_reports_states_and_map() -> None:
    g = Geometry(nr_pages=16, base_pfn=32, reserved_pages=2, order_cap=5)
    r = run_ops(g, [("alloc", 2), ("alloc", 0), ("get", 36)], sample_every=1, want_map=True)
    assert r.ok
    assert len(r.samples) == 4
    assert r.arena_map[:2] == [3, 3]  # reserved
    assert r.arena_map[4] == 2  # shared: refcount 2
    assert r.arena_map.count(0) == r.end_free_pages


# -- bench ---------------------------------------------------------------------------------------


def test_bench_tiny_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, d = run_json(capsys, "bench", "--tiny")
    assert code == 0
    assert d["command"] == "bench" and d["mode"] == "tiny"
    names = {r["name"] for r in d["results"]}
    assert {"alloc", "put", "get", "split", "alloc_many", "put_many", "churn", "mixed"} <= names
    assert {"ref_pair", "alloc_pair", "cached_pair"} <= names and d["builtin_pair_ns"] > 0
    assert all(r["pool_ns"] > 0 and r["reference_ns"] > 0 for r in d["results"])
    # The shared pool against the in-process pool, on the same workloads.
    assert [m["name"] for m in d["shared"]] == ["churn", "window"]
    for m in d["shared"]:
        assert m["pool_ns"] > 0 and m["shared_ns"] > 0
        assert m["ratio"] == pytest.approx(m["shared_ns"] / m["pool_ns"], rel=0.02)
    # Pool alone without an arena, fresh and half held, at the tiny mode's one size.
    assert [(m["pages"], m["state"]) for m in d["scaling"]] == [(256, "fresh"), (256, "half held")]
    assert all(m["batch_ns"] > 0 and m["pair_ns"] > -1000 for m in d["scaling"])


def test_bench_scaling_pools_hold_what_they_say() -> None:
    # The half-held pool of the scaling part has half its pages free, picked at random, and
    # its batches give back every page they take.
    import random

    from pagebuddy import Pool, _bench

    pool = _bench._arenaless(Pool, 1024, True, random.Random(1))
    assert not pool.arena and pool.free_pages == 512
    fresh = _bench._arenaless(Pool, 1024, False, random.Random(1))
    assert fresh.free_pages == 1024
    assert _bench._batches(pool, 1024) > 0
    assert pool.free_pages == 512
    pool.check()


def test_bench_with_pages_leaves_the_scaling_part_out(capsys: pytest.CaptureFixture[str]) -> None:
    code, d = run_json(capsys, "bench", "--tiny", "--pages", "64")
    assert code == 0 and d["pages"] == 64 and d["scaling"] == []


def test_bench_shared_pools_match() -> None:
    # Both pools of the shared comparison have the same pages, and the same free ones.
    from pagebuddy import Pool, _bench

    for n in (16, 100, 256):
        pages = _bench._shared_pages(Pool, n)
        shared, local = _bench._shared_pool(Pool, n, pages), _bench._local_pool(Pool, n, pages)
        assert shared.shared and not local.shared
        assert shared.nr_pages == local.nr_pages >= n
        assert shared.free_pages == local.free_pages == n


def test_bench_script_tiny() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benches" / "python_bench.py"), "--tiny"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "churn" in proc.stdout and "ratio" in proc.stdout


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "--version")
    assert code == 0 and pagebuddy.__version__ in out
