"""The conformance kit (``pagebuddy conform``, docs/conform.md) on the example allocator.

The example under ``examples/conform`` (a buddy allocator in C and its adapter to
``pagebuddy_conform.h``) is built with the C compiler, correct and with each of its three
deliberate bugs: the correct one must agree at both levels, with and without misuse; each
broken one must be caught where its bug breaks a rule of the level, shrunk to at most 10
operations, and the C reproducer printed must compile against it and fail, and pass
against the correct one. The line protocol is driven through ``serve_pool.py``, which serves
pagebuddy's own ``Pool``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import pagebuddy
from pagebuddy import _conform, _trace
from pagebuddy._conform_targets import HEADER, Process, Raw, Target, TargetError
from pagebuddy._reference import ReferencePool
from pagebuddy._rules import Geometry
from support import run_cli

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "conform"
SOURCES = [EXAMPLE / "buddy.c", EXAMPLE / "adapter.c"]
INCLUDE = Path(HEADER).parent
CC = shutil.which("gcc") or shutil.which("cc")
BUGS = ("LIFO", "MERGE", "HELD_BUDDY")

needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler")


def compile_c(out: Path, *sources: Path, shared: bool, bug: str | None = None) -> Path:
    """Build ``sources`` (with ``-DBUDDY_BUG_<bug>``) into ``out``."""
    assert CC is not None
    flags = ["-shared", "-fPIC"] if shared else []
    define = [f"-DBUDDY_BUG_{bug}"] if bug else []
    cmd = [CC, "-O1", "-Wall", "-Werror", *flags, *define, f"-I{INCLUDE}", f"-I{EXAMPLE}"]
    subprocess.run([*cmd, *map(str, sources), "-o", str(out)], check=True)
    return out


@pytest.fixture(scope="module")
def libs(tmp_path_factory: pytest.TempPathFactory) -> dict[str | None, Path]:
    """The example as a shared library: correct (key None) and with each bug."""
    if CC is None:
        pytest.skip("no C compiler")
    d = tmp_path_factory.mktemp("conform")
    return {
        bug: compile_c(d / f"libbuddy-{bug or 'ok'}.so", *SOURCES, shared=True, bug=bug)
        for bug in (None, *BUGS)
    }


# -- the example agrees ---------------------------------------------------------------------------


@needs_cc
@pytest.mark.parametrize("level", _conform.LEVELS)
@pytest.mark.parametrize("misuse", [False, True])
def test_the_example_agrees_with_the_model(
    libs: dict[str | None, Path], level: str, misuse: bool
) -> None:
    # In this process (fast), and in the child process conform runs a library in by default.
    r = pagebuddy.conform(
        libs[None], level=level, misuse=misuse, ops=4000, seed=11, in_process=True
    )
    assert r.ok, r.divergence
    hosted = pagebuddy.conform(libs[None], level=level, misuse=misuse, ops=4000, seed=11)
    assert hosted.ok and (hosted.ops, hosted.rejected) == (r.ops, r.rejected), hosted.divergence
    assert r.ops == 4000 and r.episodes >= 2
    assert r.optional == ["free_list", "page_address", "page_count"]
    assert r.rejected > 0  # out-of-memory refusals at least (and misuse, with it)


@needs_cc
@pytest.mark.parametrize("zero", ["alloc", "never"])
def test_the_example_agrees_under_every_zero_policy(
    libs: dict[str | None, Path], zero: str
) -> None:
    r = pagebuddy.conform(libs[None], zero=zero, ops=2000, seed=5, page_size=64, in_process=True)
    assert r.ok, r.divergence


# -- the broken variants are caught, shrunk, and reproduced in C ----------------------------------

#: Bug -> the levels that must catch it. LIFO lists are legal for a buddy allocator.
CAUGHT = {"LIFO": ("exact",), "MERGE": ("exact", "buddy"), "HELD_BUDDY": ("exact", "buddy")}


@needs_cc
@pytest.mark.parametrize("bug", BUGS)
@pytest.mark.parametrize("level", _conform.LEVELS)
def test_a_broken_variant_is_caught_and_shrunk(
    libs: dict[str | None, Path], bug: str, level: str, tmp_path: Path
) -> None:
    r = pagebuddy.conform(libs[bug], level=level, ops=20_000, seed=2, shrink_seconds=30)
    if level not in CAUGHT[bug]:
        assert r.ok, r.divergence
        return
    assert not r.ok and r.shrunk_divergence is not None
    assert 1 <= len(r.shrunk_ops) <= 10, r.trace_text()
    assert r.shrunk_divergence.what != "flaky"
    # The trace is the project's format, and pagebuddy's own pool agrees with the model on it.
    (section,) = _trace.parse_trace(r.trace_text().splitlines())
    assert section.ops == r.shrunk_ops
    trace = tmp_path / "shrunk.trace"
    trace.write_text(r.trace_text())
    proc = run_cli("replay", str(trace), "--json", cwd=ROOT)
    assert proc.returncode == 0 and json.loads(proc.stdout)["ok"], proc.stdout
    # The C reproducer fails against the broken variant and passes against the correct one.
    c_file = tmp_path / "repro.c"
    c_file.write_text(r.c_reproducer)
    for variant, want in ((bug, 1), (None, 0)):
        exe = compile_c(tmp_path / f"repro-{variant}", c_file, *SOURCES, shared=False, bug=variant)
        run = subprocess.run([str(exe)], capture_output=True, text=True, check=False)
        assert run.returncode == want, (variant, run.stderr, r.c_reproducer)
        assert (run.stderr.startswith("pb_repro: ")) == (want == 1), run.stderr


# -- the line protocol ----------------------------------------------------------------------------


def serve_pool() -> list[str]:
    return [sys.executable, str(EXAMPLE / "serve_pool.py")]


@pytest.mark.parametrize("level", _conform.LEVELS)
def test_a_process_speaking_the_protocol_agrees(level: str) -> None:
    r = pagebuddy.conform(command=serve_pool(), level=level, misuse=True, ops=1500, seed=4)
    assert r.ok, r.divergence
    assert r.optional == ["free_list", "page_count"] and r.ops == 1500


def test_a_process_that_dies_is_a_divergence_and_no_traceback() -> None:
    # Answers the handshake and the pool, then exits at the first operation.
    script = (
        "import sys\n"
        "for line in sys.stdin:\n"
        "    w = line.split()\n"
        "    if w[0] in ('abi', 'create'): print('0', flush=True)\n"
        "    elif w[0] == 'free_pages': print('0 1', flush=True)\n"
        "    else: sys.exit(3)\n"
    )
    r = pagebuddy.conform(command=[sys.executable, "-c", script], ops=50, seed=1, pages=1)
    assert not r.ok and r.shrunk_divergence is not None and r.shrunk_ops == [("alloc", 0)]
    assert "exited with status 3" in r.shrunk_divergence.detail, r.shrunk_divergence
    assert r.c_reproducer == ""  # a process is not reached through the C ABI


def test_a_process_that_hangs_is_ended_and_is_a_divergence() -> None:
    script = (
        "import sys, time\n"
        "for line in sys.stdin:\n"
        "    w = line.split()\n"
        "    if w[0] == 'alloc': time.sleep(60)\n"
        "    print('0 1' if w[0] == 'free_pages' else '0', flush=True)\n"
    )
    target = Process([sys.executable, "-c", script], timeout=0.5)
    try:
        cfg = _conform.ConformConfig(ops=5, seed=1, pages=1, shrink_seconds=5)
        r = _conform.run(target, cfg)
    finally:
        target.close()
    assert r.shrunk_divergence is not None and r.shrunk_ops == [("alloc", 0)]
    assert "no answer to 'alloc 0' within 0.5 s" in r.shrunk_divergence.detail


@pytest.mark.parametrize(
    ("command", "says"),
    [
        (["/nonexistent/program"], "cannot be started"),
        ([sys.executable, "-c", "print('hello')"], "answered"),
        ([sys.executable, "-c", "pass"], "does not speak the protocol"),
    ],
)
def test_a_process_that_does_not_speak_the_protocol_is_refused(
    command: list[str], says: str
) -> None:
    with pytest.raises(TargetError, match=says):
        pagebuddy.conform(command=command, ops=10)


# -- the buddy level: illegal answers ------------------------------------------------------------


class _Liar(Raw):
    """ReferencePool's answers, except that its third allocation hands out the first block
    again (which is held)."""

    def __init__(self, g: Geometry) -> None:
        self.pool = ReferencePool(
            g.nr_pages,
            page_size=g.page_size,
            base_pfn=g.base_pfn,
            reserved_pages=g.reserved_pages,
            max_order=g.order_cap,
            arena=False,
        )
        self.allocs: list[int] = []

    def alloc(self, order: int) -> tuple[int, int]:
        try:
            pfn = self.pool.alloc_pages(order)
        except Exception:
            return -12, 0
        self.allocs.append(pfn)
        return 0, self.allocs[0] if len(self.allocs) == 3 else pfn

    def page_op(self, name: str, pfn: int) -> int:
        try:
            getattr(self.pool, f"{name}_page")(pfn)
        except Exception:
            return -14
        return 0

    def free_pages(self) -> int:
        return self.pool.free_pages


class _LiarTarget(Target):
    name = "liar"

    def create(self, g: Geometry, zero: str) -> Raw | None:
        return _Liar(g)


def test_buddy_level_refuses_a_block_that_is_held() -> None:
    cfg = _conform.ConformConfig(level="buddy", ops=200, seed=3, pages=64, reserved=0)
    r = _conform.run(_LiarTarget(), cfg)
    d = r.shrunk_divergence
    assert d is not None and d.what == "exception", r.divergence
    assert "IllegalAnswer" in d.detail and "is not free: page" in d.detail, d.detail
    assert len(r.shrunk_ops) <= 10


# -- the command line ----------------------------------------------------------------------------


def test_header_is_printed_and_importable() -> None:
    text = Path(pagebuddy.CONFORM_HEADER).read_text()
    assert "int pb_alloc(struct pb_pool *pool, unsigned int order, uint64_t *pfn);" in text
    proc = run_cli("conform", "--header", cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.decode() == text
    proc = run_cli("conform", "--header", "--json", cwd=ROOT)
    obj = json.loads(proc.stdout)
    assert obj["header"] == text and obj["path"] == pagebuddy.CONFORM_HEADER


@needs_cc
def test_cli_reports_agreement_and_divergence(libs: dict[str | None, Path], tmp_path: Path) -> None:
    proc = run_cli("conform", str(libs[None]), "--ops", "3000", "--seed", "1", cwd=ROOT)
    out = proc.stdout.decode()
    assert proc.returncode == 0 and "agreed on all 3,000 operations" in out, out
    trace, c_file = tmp_path / "t.trace", tmp_path / "r.c"
    argv = ["conform", str(libs["LIFO"]), "--ops", "20000", "--seed", "2", "--json"]
    proc = run_cli(*argv, "--trace", str(trace), "--c-file", str(c_file), cwd=ROOT)
    obj: dict[str, Any] = json.loads(proc.stdout)
    assert proc.returncode == 1 and obj["exit_code"] == 1 and not obj["ok"]
    assert obj["shrunk_ops"] <= 10 and obj["level"] == "exact"
    assert trace.read_text() == obj["trace"] and c_file.read_text() == obj["c_reproducer"]


def assert_usage(proc: subprocess.CompletedProcess[bytes], as_json: bool, says: str) -> None:
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 2 and "Traceback" not in out + err, out + err
    if as_json:
        obj = json.loads(out)
        assert obj["ok"] is False and obj["exit_code"] == 2 and says in obj["error"], obj
    else:
        assert out == "" and len(err.strip().splitlines()) == 1 and says in err, err


@pytest.mark.parametrize("as_json", [False, True])
@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ([], "give a shared library"),
        (["/nonexistent/lib.so"], "no such file"),
        (["README.md"], "cannot be loaded"),
        (["README.md", "--exec", "true"], "not both"),
        (["--exec", "/nonexistent/program"], "cannot be started"),
        (["--exec", "'unbalanced"], "No closing quotation"),
        (["--exec", ""], "an empty command"),
        (["x.so", "--level", "loose"], "invalid choice"),
        (["x.so", "--page-size", "100"], "page_size must be a power of two"),
        (["x.so", "--pages", "0"], "must be >= 1"),
        (["x.so", "--page-size", str(2**20)], "at most 1 GiB a pool"),
        (["x.so", "--pages", "8", "--reserved", "9"], "reserved 9 exceeds"),
        (["x.so", "--base-pfn", str(2**64)], "base_pfn + nr_pages"),
        (["x.so", "--ops", "10", "--trace", "/nonexistent/dir/t"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_or_one_json_object(
    argv: list[str], says: str, as_json: bool
) -> None:
    proc = run_cli("conform", *argv, "--no-progress", *(["--json"] if as_json else []), cwd=ROOT)
    assert_usage(proc, as_json, says)


CRASHING = """
#include "pagebuddy_conform.h"
struct pb_pool { int unused; };
static struct pb_pool one;
struct pb_pool *pb_create(uint64_t n, uint64_t b, uint64_t r, unsigned c, int z, uint64_t s)
{ (void)n, (void)b, (void)r, (void)c, (void)z, (void)s; return &one; }
void pb_destroy(struct pb_pool *p) { (void)p; }
int pb_alloc(struct pb_pool *p, unsigned order, uint64_t *pfn)
{ (void)p, (void)order, (void)pfn; return *(volatile int *)0; }
int pb_put(struct pb_pool *p, uint64_t pfn) { (void)p, (void)pfn; return PB_EFAULT; }
int pb_get(struct pb_pool *p, uint64_t pfn) { (void)p, (void)pfn; return PB_EFAULT; }
int pb_split(struct pb_pool *p, uint64_t pfn) { (void)p, (void)pfn; return PB_EFAULT; }
uint64_t pb_free_pages(struct pb_pool *p) { (void)p; return 1; }
"""


@needs_cc
def test_a_library_that_crashes_is_a_divergence(tmp_path: Path) -> None:
    src = tmp_path / "crash.c"
    src.write_text(CRASHING)
    lib = compile_c(tmp_path / "crash.so", src, shared=True)
    r = pagebuddy.conform(lib, ops=20, seed=1, pages=1, shrink_seconds=10)
    assert not r.ok and r.shrunk_divergence is not None
    assert r.shrunk_ops == [("alloc", 0)]
    assert "exited with status -11" in r.shrunk_divergence.detail, r.shrunk_divergence


@needs_cc
def test_a_library_without_the_required_functions_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "half.c"
    src.write_text("void *pb_create(void) { return 0; }\n")
    lib = compile_c(tmp_path / "half.so", src, shared=True)
    proc = run_cli("conform", str(lib), cwd=ROOT)
    assert_usage(proc, False, "does not export pb_destroy, pb_alloc")
