"""Bad input at the command line: every subcommand, with and without ``--json``.

The contract (docs/cli.md): bad input exits 2 with one line on standard error, or with
``--json`` one JSON object on standard output (``ok: false``, ``error``, ``exit_code``), and
never a traceback. The first tests pin the cases that once broke it, each in a child process
(a traceback is what fails them); the last ones feed random malformed arguments and traces to
every subcommand, in process (Hypothesis) and a seeded sample in child processes.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pagebuddy import _trace, cli
from support import run_cli

ROOT = Path(__file__).resolve().parent.parent
GOOD_TRACE = "pagebuddy-trace v1 nr_pages=8 page_size=64\nalloc 0\nput 0\n"
FTRACE = ROOT / "tests" / "data" / "kmem-thp-split.trace"


def pagebuddy(*argv: str, stdin: bytes = b"", **env: str) -> subprocess.CompletedProcess[bytes]:
    """``python -m pagebuddy ARGV`` in a child process, from the repository root, 80 columns."""
    return run_cli(*argv, stdin=stdin, cwd=ROOT, **{"COLUMNS": "80", **env})


def assert_usage_error(proc: subprocess.CompletedProcess[bytes], as_json: bool) -> dict[str, Any]:
    """Exit 2, no traceback; one line on stderr, or one JSON error object on stdout."""
    out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    shown = f"exit {proc.returncode}\n--- stdout\n{out[-3000:]}\n--- stderr\n{err[-3000:]}"
    assert proc.returncode == 2, shown
    assert "Traceback" not in out + err, shown
    if not as_json:
        assert out == "", shown
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), shown
        return {}
    assert err == "", shown
    obj = json.loads(out)
    assert obj["ok"] is False and obj["exit_code"] == 2 and obj["error"], shown
    return obj


# -- the cases of the robustness review ----------------------------------------------------------


@pytest.mark.parametrize("pages", ["1", "8", "15", "4294967295", "1048577"])
@pytest.mark.parametrize("as_json", [False, True])
def test_bench_pages_out_of_range_is_a_usage_error(pages: str, as_json: bool) -> None:
    proc = pagebuddy("bench", "--tiny", "--pages", pages, *(["--json"] if as_json else []))
    obj = assert_usage_error(proc, as_json)
    assert "from 16 to 1048576" in (obj["error"] if as_json else proc.stderr.decode())


def test_bench_refuses_pages_it_cannot_run() -> None:
    from pagebuddy import _bench

    with pytest.raises(ValueError, match="16"):
        _bench.run_benchmarks("tiny", pages=8)


@pytest.mark.parametrize(
    "argv",
    [
        ["fuzz", "--ops", "-1"],
        ["fuzz", "--seconds", "0"],
        ["replay", "/nonexistent/trace"],
        ["replay", "/"],
        ["fuzz", "--pages", "4294967295"],
        ["fuzz", "--reserved", "100", "--pages", "8"],
        ["fuzz", "--pages", "1048576", "--page-size", "8192"],
        ["demo", "--plot", "/nonexistent/dir/x.png"],
        ["demo", "--record", "/nonexistent/dir/x.trace"],
        ["demo", "--no-such-flag"],
        ["no-such-command"],
        ["--no-such-flag"],
        ["bench", "--pages", "1"],
    ],
    ids=" ".join,
)
@pytest.mark.parametrize("as_json", [False, True])
def test_usage_errors_are_one_line_or_one_json_object(argv: list[str], as_json: bool) -> None:
    obj = assert_usage_error(pagebuddy(*argv, *(["--json"] if as_json else [])), as_json)
    if as_json and argv[0] in cli._COMMANDS:
        assert obj["command"] == argv[0]


@pytest.mark.parametrize(
    ("option", "value"), [("--zero", "free"), ("--zero", "alloc"), ("--links", "intrusive")]
)
@pytest.mark.parametrize("as_json", [False, True])
def test_fuzz_without_an_arena_refuses_what_pool_refuses(
    option: str, value: str, as_json: bool
) -> None:
    """As ``Pool(..., arena=False, zero="free")`` raises ValueError: no silent switch."""
    argv = ["fuzz", "--arena", "none", option, value, "--ops", "10", "--seed", "1"]
    obj = assert_usage_error(pagebuddy(*argv, *(["--json"] if as_json else [])), as_json)
    text = obj["error"] if as_json else pagebuddy(*argv).stderr.decode()
    assert f"--arena none needs {option}" in text and f"not {value}" in text


def test_binary_stdin_is_a_malformed_trace_whatever_the_encoding() -> None:
    data = b"pagebuddy-trace v1 nr_pages=8\nput \xff\xfe\x00\n"
    for as_json in (False, True):
        proc = pagebuddy(
            "replay", "-", *(["--json"] if as_json else []), stdin=data, PYTHONIOENCODING="utf-8"
        )
        obj = assert_usage_error(proc, as_json)
        if as_json:
            assert obj["line"] == 2 and "not a text file" in obj["reason"]


def test_trace_too_big_for_memory_is_refused_at_once() -> None:
    trace = b"pagebuddy-trace v1 nr_pages=67108864 page_size=64 arena=buffer\nalloc 0\n"
    obj = assert_usage_error(pagebuddy("replay", "-", "--json", stdin=trace), True)
    assert obj["line"] == 1 and "at most 1048576 pages" in obj["reason"]
    assert "MiB" in obj["reason"]


def test_help_and_version_with_json_are_json() -> None:
    proc = pagebuddy("fuzz", "--help", "--json")
    assert proc.returncode == 0
    obj = json.loads(proc.stdout)
    assert obj["ok"] is True and "--max-order" in obj["help"]
    proc = pagebuddy("--version", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["version"]


def test_non_utf8_arguments_are_reported() -> None:
    # Arguments that are not UTF-8 reach Python as lone surrogates.
    for as_json in (False, True):
        proc = subprocess.run(
            [sys.executable, "-m", "pagebuddy", "fuzz", "--zero", b"\xff\xfe", "--no-progress"]
            + (["--json"] if as_json else []),
            capture_output=True,
            timeout=120,
            cwd=ROOT,
        )
        assert_usage_error(proc, as_json)


# -- trace integers (docs/cli.md: any integer is a well-formed argument) ------------------------


def test_trace_integers_take_a_sign_and_any_base() -> None:
    text = "pagebuddy-trace v1 nr_pages=0x10 base_pfn=+0o20\nput -0x10\nget +3\nsplit -0b101\n"
    (section,) = _trace.parse_trace(text.splitlines())
    assert section.geometry.nr_pages == 16 and section.geometry.base_pfn == 16
    assert section.ops == [("put", -16), ("get", 3), ("split", -5)]
    huge = "9" * _trace.MAX_DIGITS
    (section,) = _trace.parse_trace(["pagebuddy-trace v1 nr_pages=8", f"put -{huge}"])
    assert section.ops == [("put", -int(huge))]


@pytest.mark.parametrize("word", ["1.5", "0x", "--1", "+-1", "1e3", "0xg", "٣", "-"])
def test_trace_non_integers_are_refused(word: str) -> None:
    with pytest.raises(_trace.TraceError, match="not an integer"):
        _trace.parse_trace(["pagebuddy-trace v1 nr_pages=8", f"put {word}"])


def test_trace_integer_of_too_many_digits_says_so() -> None:
    with pytest.raises(_trace.TraceError, match="5000 digits: at most 4300"):
        _trace.parse_trace(["pagebuddy-trace v1 nr_pages=8", "put " + "9" * 5000])


def test_replay_refuses_operations_with_signed_integers_not_the_lines(tmp_path: Path) -> None:
    trace = tmp_path / "signed.trace"
    trace.write_text("pagebuddy-trace v1 nr_pages=8 page_size=64\nput -0x10\nalloc_many -1 2\n")
    proc = pagebuddy("replay", str(trace), "--json", "--strict")
    assert proc.returncode == 3, proc.stderr
    obj = json.loads(proc.stdout)
    assert obj["rejected_total"] == 2
    assert "put -16: PageError" in obj["rejected_examples"][0]


# -- --plot writes the path it is given ----------------------------------------------------------


def test_plot_writes_exactly_the_path_given(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "noext"
    proc = pagebuddy("demo", "--ops", "300", "--plot", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["noext"]


@pytest.mark.parametrize("as_json", [False, True])
def test_plot_into_a_directory_is_refused_before_running(tmp_path: Path, as_json: bool) -> None:
    pytest.importorskip("matplotlib")
    proc = pagebuddy("demo", "--plot", str(tmp_path), *(["--json"] if as_json else []))
    obj = assert_usage_error(proc, as_json)
    assert "is a directory" in (obj["error"] if as_json else proc.stderr.decode())
    assert list(tmp_path.iterdir()) == []


# -- random malformed arguments and traces -------------------------------------------------------

NOT_INT = ["", "x", "1.5", "0x", "--", "nan", "1e3", "0xg", "one", "0b2"]
# option -> values it refuses (each value alone is a usage error whatever else is given)
BAD_VALUES: dict[str, dict[str, list[str]]] = {
    "demo": {
        "--seed": NOT_INT,
        "--ops": [*NOT_INT, "0", "-1", "1000001", str(2**64)],
        "--plot": ["/", "/nonexistent/dir/x.png"],
        "--record": ["/", "/nonexistent/dir/x.trace"],
        "--cpus": [*NOT_INT, "-1", "65537"],
        "--cache-batch": [*NOT_INT, "0", "-1", "65537"],
        "--cache-high": [*NOT_INT, "0", "-1", "65537"],
    },
    "fuzz": {
        "--ops": [*NOT_INT, "0", "-1", "-5"],
        "--seconds": ["", "x", "0", "-1", "nan", "-inf", "0.0"],
        "--seed": [*NOT_INT, "-1"],
        "--pages": [*NOT_INT, "0", "-1", "1048577", "4294967295", str(2**64)],
        "--base-pfn": [*NOT_INT, "-1", str(2**64)],
        "--reserved": [*NOT_INT, "-1", "1048577"],
        "--max-order": [*NOT_INT, "0", "-1"],
        "--zero": ["sometimes", "", "FREE"],
        "--page-size": [*NOT_INT, "0", "32", "100", "4095", str(2**31)],
        "--links": ["both", ""],
        "--arena": ["shared", ""],
        "--compare-every": [*NOT_INT, "0", "-1"],
        "--shrink-seconds": ["x", "0", "-1", "nan"],
        "--record": ["/", "/nonexistent/dir/x.trace"],
        "--reproducer": ["/", "/nonexistent/dir/x.py"],
        "--cpus": [*NOT_INT, "-1", "65537"],
        "--cache-batch": [*NOT_INT, "0", "-1", "65537"],
        "--cache-high": [*NOT_INT, "0", "-1", "65537"],
    },
    "replay": {
        "--compare-every": [*NOT_INT, "0", "-1"],
        "--plot": ["/", "/nonexistent/dir/x.png"],
    },
    "bench": {"--pages": [*NOT_INT, "0", "1", "15", "1048577", "4294967295"]},
    "ftrace": {
        "--pages": [*NOT_INT, "0", "-1", "1048577"],
        "--compare-every": [*NOT_INT, "0", "-1"],
        "--plot": ["/", "/nonexistent/dir/x.png"],
        "--record": ["/", "/nonexistent/dir/x.trace"],
    },
}
# A valid, quick invocation of each subcommand (``TRACE`` stands for a good trace file).
BASE: dict[str, list[str]] = {
    "demo": ["--ops", "100"],
    "fuzz": ["--ops", "50", "--seed", "1", "--pages", "8"],
    "replay": ["TRACE"],
    "bench": ["--tiny", "--pages", "16"],
    "ftrace": ["FTRACE"],
}
# Malformed arguments any subcommand refuses.
BAD_ANYWHERE = [["--bogus"], ["--json=1"], ["--no-progress=yes"], ["-x"], ["--ops=", "--plot"]]
# Lines that make any trace malformed, wherever they are inserted.
BAD_LINES = [
    "alloc",
    "alloc 1 2",
    "put",
    "put x",
    "put 1.5",
    "alloc_many 0",
    "alloc_many 0 1 2",
    "put_many",
    "free 3",
    "ALLOC 0",
    "split 1 2",
    "get --1",
    "put " + "7" * 4301,
    "nr_pages=8",
    "pagebuddy-trace",
    "pagebuddy-trace v1",
    "pagebuddy-trace v2 nr_pages=8",
    "pagebuddy-trace v1 nr_pages=0",
    "pagebuddy-trace v1 nr_pages=x",
    "pagebuddy-trace v1 nr_pages=8 page_size=100",
    "pagebuddy-trace v1 nr_pages=8 reserved_pages=9",
    "pagebuddy-trace v1 nr_pages=8 nr_pages=8",
    "pagebuddy-trace v1 nr_pages=8 colour=red",
    "pagebuddy-trace v1 nr_pages=8 cpus=-1",
    "pagebuddy-trace v1 nr_pages=8 cache_batch=4",
    "pagebuddy-trace v1 nr_pages=8 cpus=2 cache_batch=5 cache_high=4",
    "alloc_on 0",
    "drain",
    "pagebuddy-trace v1 nr_pages=8 zero=sometimes",
    "pagebuddy-trace v1 nr_pages=8 links=",
    "pagebuddy-trace v1 nr_pages=8 max_order=0",
    "pagebuddy-trace v1 nr_pages=8 base_pfn=18446744073709551615",
    "pagebuddy-trace v1 nr_pages=67108864 page_size=64",
    "pagebuddy-trace v1 nr_pages=1048576 page_size=8192",
]


def malformed_trace(rng: random.Random) -> bytes:
    """A good trace with one line that makes it malformed, or a trace with no header."""
    lines = [line.encode() for line in GOOD_TRACE.splitlines()]
    r = rng.random()
    if r < 0.08:
        return rng.choice([b"", b"# only a comment\n", b"\n\n", b"alloc 0\n"])
    if r < 0.2:
        bad = b"\xff" + rng.randbytes(rng.randrange(0, 20)).replace(b"\n", b"")
    elif r < 0.3:
        junk = "".join(rng.choice("abc 0x-+=\t~é") for _ in range(rng.randrange(0, 12)))
        bad = ("?" + junk).encode()
    else:
        bad = rng.choice(BAD_LINES).encode()
    lines.insert(rng.randrange(len(lines) + 1), bad)
    return b"\n".join(lines) + b"\n"


# Lines that make a kernel trace (``ftrace``) malformed, wherever they are inserted.
BAD_FTRACE_LINES = [b"?garbage", b"\xff\xfe", b"alloc 0", b"mm_page_alloc: page=", b"nr_pages=8"]


def malformed_ftrace(rng: random.Random) -> bytes:
    lines = FTRACE.read_bytes().splitlines()[:40]
    lines.insert(rng.randrange(len(lines) + 1), rng.choice(BAD_FTRACE_LINES))
    return b"\n".join(lines) + b"\n"


def malformed_argv(rng: random.Random, trace: Path) -> tuple[list[str], bytes]:
    """A random malformed invocation: ``(argv, stdin)``; every one must exit 2."""
    command = rng.choice(list(BASE))
    good = {"TRACE": str(trace), "FTRACE": str(trace.with_name("good.ftrace"))}
    base = [good.get(a, a) for a in BASE[command]]
    stdin = b""
    r = rng.random()
    if r < 0.55:
        option = rng.choice(list(BAD_VALUES[command]))
        bad = [f"{option}={rng.choice(BAD_VALUES[command][option])}"]
    elif r < 0.65:
        others = {o for c in BAD_VALUES for o in BAD_VALUES[c]} - set(BAD_VALUES[command])
        bad = [rng.choice(sorted(others)), "1"]
    elif r < 0.75:
        bad = rng.choice(BAD_ANYWHERE)
    elif command == "replay" and r < 0.95:
        base, stdin, bad = ["-"], malformed_trace(rng), []
    elif command == "ftrace" and r < 0.95:
        base, stdin, bad = ["-"], malformed_ftrace(rng), []
    elif command in ("replay", "ftrace"):
        base, bad = [rng.choice(["/nonexistent/trace", "/"])], []
    elif command == "fuzz":
        bad = rng.choice(
            [
                ["--reserved", "9", "--pages", "8"],
                ["--pages", "1048576", "--page-size", "8192"],
                ["--base-pfn", str(2**64 - 1)],
            ]
        )
    else:
        bad = ["extra-positional"]
    return [command, *base, *bad, "--no-progress"], stdin


def run_in_process(argv: list[str], stdin: bytes) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    fake_stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    saved = sys.stdin
    sys.stdin = fake_stdin
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(argv)
    finally:
        sys.stdin = saved
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def good_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A good pagebuddy trace; a good kernel trace (``ftrace``) lies beside it."""
    path = tmp_path_factory.mktemp("cli") / "good.trace"
    path.write_text(GOOD_TRACE)
    path.with_name("good.ftrace").write_bytes(b"\n".join(FTRACE.read_bytes().splitlines()[:40]))
    return path


@given(seed=st.integers(0, 2**32 - 1), as_json=st.booleans())
def test_random_malformed_input_in_process(good_trace: Path, seed: int, as_json: bool) -> None:
    argv, stdin = malformed_argv(random.Random(seed), good_trace)
    if as_json:
        argv.append("--json")
    code, out, err = run_in_process(argv, stdin)
    shown = f"{argv} stdin={stdin[:200]!r}\n--- stdout\n{out[-2000:]}\n--- stderr\n{err[-2000:]}"
    assert code == 2, shown
    if as_json:
        assert err == "", shown
        obj = json.loads(out)
        assert obj["ok"] is False and obj["exit_code"] == 2, shown
    else:
        assert out == "" and len(err.strip().splitlines()) == 1, shown


def test_random_malformed_input_in_child_processes(good_trace: Path) -> None:
    rng = random.Random(20261126)
    for i in range(24):
        argv, stdin = malformed_argv(rng, good_trace)
        as_json = i % 2 == 1
        proc = pagebuddy(*argv, *(["--json"] if as_json else []), stdin=stdin)
        assert_usage_error(proc, as_json)
