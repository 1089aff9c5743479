"""The code blocks of the documentation, and how ``tests/test_docs_blocks.py`` runs each one.

The rules (docs/contributing.md, "Code blocks in the docs", says the same to authors):

* ``python``: run as a script in a fresh interpreter, in an empty directory. A ``print(...)``
  line may state its output in a trailing comment ``# -> OUTPUT``; the test then asserts what
  that line printed (``...`` in OUTPUT matches any text). A trailing comment on a ``print``
  line that does not start with ``->`` is an error, so that no output is claimed unchecked.
* ``sh``, ``shell``, ``bash``: every command is run; ``console``: every line that starts with
  ``$`` is (the other lines are sample output, not compared). Only the ``pagebuddy`` command
  runs (``pagebuddy ...`` or ``python -m pagebuddy ...``, joined with ``&&`` if need be), in an
  empty directory with a link ``tests`` to the repository's ``tests/`` (so
  ``tests/data/*.trace`` resolve), with small arguments: ``--ops`` 200 (added to ``demo`` and
  ``fuzz``), ``--seconds`` 1, ``--processes`` 2, ``bench`` with ``--tiny``. Each must exit 0.
  Any other command (``make``, ``pip``, ``cargo``, ``cd``...) makes the block an error unless
  it is marked as not run.
* ``rust``: rustdoc runs it, as a doctest of ``rust/pagebuddy/src/lib.rs`` (which includes
  README.md and rust/pagebuddy/README.md); a ``rust`` block in any other file is an error.
* ``toml``: parsed (on CPython 3.11 and later, which have ``tomllib``).
* Any other language, or none (``text``, synopses, sample output): not code, not run.

A block that cannot run here (it needs root, a network, a toolchain the tests do not have, or
it is ``make`` itself) carries, on the line just before its opening fence, an HTML comment that
Markdown does not show: ``<!-- not run: REASON -->``. The reason is required.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import tokenize
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIB_RS = ROOT / "rust" / "pagebuddy" / "src" / "lib.rs"
TIMEOUT_S = 180

PYTHON = {"python", "py", "python3"}
SHELL = {"sh", "shell", "bash"}
CONSOLE = {"console"}
RUST = {"rust"}
TOML = {"toml"}

NOT_RUN = re.compile(r"^\s*<!--\s*not run:\s*(?P<reason>.*?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
SMALL = {"--ops": "200", "--seconds": "1", "--processes": "2"}


def documents(root: Path = ROOT) -> list[Path]:
    """Every document whose blocks are checked: both READMEs and docs/*.md."""
    return [
        root / "README.md",
        root / "rust" / "pagebuddy" / "README.md",
        *sorted((root / "docs").glob("*.md")),
    ]


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its language, its text, and its marker if any."""

    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    not_run: str | None  # the marker's reason, or None when unmarked

    @property
    def where(self) -> str:
        try:
            name = self.path.relative_to(ROOT)
        except ValueError:
            name = self.path
        return f"{name}:{self.line}"

    @property
    def is_code(self) -> bool:
        return self.lang in PYTHON | SHELL | CONSOLE | RUST | TOML


def blocks(path: Path, text: str | None = None) -> list[Block]:
    """The fenced code blocks of a Markdown file, in order."""
    lines = (path.read_text(encoding="utf-8") if text is None else text).splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None or (m["fence"][0] == "`" and "`" in m["info"]):
            i += 1
            continue
        indent, fence = len(m["indent"]), m["fence"]
        words = re.split(r"[\s,]+", m["info"].strip(), maxsplit=1)
        lang = words[0].lower()
        prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = NOT_RUN.match(prev)
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            close = FENCE.match(lines[j])
            if (
                close is not None
                and close["fence"][0] == fence[0]
                and len(close["fence"]) >= len(fence)
                and not close["info"].strip()
            ):
                break
            line = lines[j]
            body.append(line[min(indent, len(line) - len(line.lstrip(" "))) :])
            j += 1
        found.append(
            Block(
                path=path,
                line=i + 1,
                lang=lang,
                text="\n".join(body) + "\n",
                not_run=marker["reason"] if marker else None,
            )
        )
        i = j + 1
    return found


def rustdoc_files(lib_rs: Path = LIB_RS) -> set[Path]:
    """The Markdown files ``lib.rs`` includes as doctests (``#[doc = include_str!(...)]``)."""
    names = re.findall(r'include_str!\("([^"]+\.md)"\)', lib_rs.read_text(encoding="utf-8"))
    return {(lib_rs.parent / name).resolve() for name in names}


# -- python ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    line: int  # line in the document
    expected: str


def output_claims(block: Block) -> tuple[list[Claim], list[str]]:
    """The ``# -> OUTPUT`` claims of a Python block, and the rule breaks found on the way."""
    claims: list[Claim] = []
    errors: list[str] = []
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(block.text).readline))
    except (tokenize.TokenError, SyntaxError) as e:
        return [], [f"{block.where}: cannot be tokenized: {e}"]
    first_name: dict[int, str] = {}
    for tok in tokens:
        if tok.type == tokenize.NAME and tok.start[0] not in first_name:
            first_name[tok.start[0]] = tok.string
    for tok in tokens:
        if tok.type != tokenize.COMMENT:
            continue
        row = tok.start[0]
        line = block.line + row
        body = tok.string[1:].strip()
        is_print = first_name.get(row) == "print" and tok.line.lstrip().startswith("print(")
        if body.startswith("->"):
            if not is_print:
                errors.append(
                    f"{block.where}: line {line}: '# ->' states an output, but only a line "
                    "that starts with print(...) may carry one"
                )
            else:
                claims.append(Claim(line, body[2:].strip()))
        elif is_print:
            errors.append(
                f"{block.where}: line {line}: the comment of a print line must be its output, "
                f"written '# -> OUTPUT' (found {tok.string!r})"
            )
    return claims, errors


HARNESS = r"""
import builtins, io, json, sys
source_path, name, printed_path = sys.argv[1:4]
printed = []
real_print = builtins.print


def recording_print(*args, **kwargs):
    if kwargs.get("file") is None:
        buf = io.StringIO()
        real_print(*args, **{**kwargs, "file": buf})
        printed.append([sys._getframe(1).f_lineno, buf.getvalue()])
    real_print(*args, **kwargs)


builtins.print = recording_print
with open(source_path, encoding="utf-8") as f:
    code = compile(f.read(), name, "exec")
try:
    exec(code, {"__name__": "__main__"})
finally:
    with open(printed_path, "w", encoding="utf-8") as f:
        json.dump(printed, f)
"""


def matches(expected: str, got: str) -> bool:
    """``got`` is ``expected``, each ``...`` in it standing for any text."""
    pattern = ".*?".join(re.escape(part) for part in expected.split("..."))
    return re.fullmatch(pattern, got, flags=re.DOTALL) is not None


def run_python(block: Block) -> list[str]:
    """Runs a Python block in a fresh interpreter; the failures, empty when it passed."""
    claims, errors = output_claims(block)
    if errors:
        return errors
    with tempfile.TemporaryDirectory(prefix="pagebuddy-docs-") as tmp:
        work = Path(tmp)
        source = work / "block.py"
        # Blank lines first, so that a traceback gives the line in the document.
        source.write_text("\n" * block.line + block.text, encoding="utf-8")
        (work / "harness.py").write_text(HARNESS, encoding="utf-8")
        printed_path = work / "printed.json"
        try:
            proc = subprocess.run(
                [sys.executable, "harness.py", "block.py", block.where, "printed.json"],
                cwd=work,
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S,
                env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
            )
        except subprocess.TimeoutExpired:
            return [f"{block.where}: did not finish in {TIMEOUT_S} s"]
        if proc.returncode != 0:
            return [f"{block.where}: exit code {proc.returncode}\n{proc.stderr.strip()}"]
        printed: dict[int, list[str]] = {}
        for row, text in json.loads(printed_path.read_text(encoding="utf-8")):
            printed.setdefault(row, []).append(text.rstrip("\n"))
    failures = []
    for claim in claims:
        got = printed.get(claim.line)
        if not got:
            failures.append(f"{block.where}: line {claim.line} printed nothing")
        elif not all(matches(claim.expected, text) for text in got):
            failures.append(
                f"{block.where}: line {claim.line} printed {got[-1]!r}, "
                f"the comment says {claim.expected!r}"
            )
    return failures


# -- shell -----------------------------------------------------------------------------------


def shell_commands(block: Block) -> list[tuple[int, str]]:
    """(line in the document, command line) of each command of a sh or console block."""
    commands: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for row, raw in enumerate(block.text.splitlines(), start=block.line + 1):
        line = raw.rstrip()
        if not pending:
            if block.lang in CONSOLE:
                if not line.startswith("$"):
                    continue
                line = line[1:].strip()
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            start = row
        if line.endswith("\\"):
            pending.append(line[:-1])
            continue
        pending.append(line)
        commands.append((start, " ".join(part.strip() for part in pending)))
        pending = []
    if pending:
        commands.append((start, " ".join(part.strip() for part in pending)))
    return commands


def pagebuddy_argv(words: list[str]) -> list[str] | None:
    """The arguments after ``pagebuddy`` or ``python -m pagebuddy``, or None for another command."""
    if words[:1] == ["pagebuddy"]:
        return words[1:]
    if (
        len(words) >= 3
        and re.fullmatch(r"python3?", words[0])
        and words[1:3] == ["-m", "pagebuddy"]
    ):
        return words[3:]
    return None


def small(argv: list[str]) -> list[str]:
    """The same command with the small arguments the test runs it with."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in SMALL:
            out += [word, SMALL[word]]
            has_value = i + 1 < len(argv) and not argv[i + 1].startswith("-")
            i += 2 if has_value else 1
            continue
        out.append(word)
        i += 1
    sub = next((w for w in out if not w.startswith("-")), "demo")
    if sub in ("demo", "fuzz") and "--ops" not in out and "--seconds" not in out:
        out.append("--ops")
        out.append(SMALL["--ops"])
    if sub == "bench" and "--tiny" not in out:
        out.append("--tiny")
    return out


def parse_shell(block: Block) -> tuple[list[tuple[int, list[str]]], list[str]]:
    """The pagebuddy commands of a shell block (small arguments applied), and the rule breaks."""
    runs: list[tuple[int, list[str]]] = []
    errors: list[str] = []
    for line, command in shell_commands(block):
        try:
            words = shlex.split(command, comments=True)
        except ValueError as e:
            errors.append(f"{block.where}: line {line}: cannot be parsed: {e}")
            continue
        parts: list[list[str]] = [[]]
        for word in words:
            if word == "&&":
                parts.append([])
            else:
                parts[-1].append(word)
        for part in parts:
            argv = pagebuddy_argv(part)
            if argv is None:
                errors.append(
                    f"{block.where}: line {line}: {shlex.join(part) or command!r} is not a "
                    "pagebuddy command; run only pagebuddy commands here, or mark the block "
                    "<!-- not run: REASON --> on the line before its fence"
                )
            else:
                runs.append((line, small(argv)))
    return runs, errors


def run_shell(block: Block) -> list[str]:
    """Runs each pagebuddy command of a shell block in order; the failures, empty on success."""
    runs, errors = parse_shell(block)
    if errors:
        return errors
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="pagebuddy-docs-") as tmp:
        work = Path(tmp)
        (work / "tests").symlink_to(ROOT / "tests", target_is_directory=True)
        for line, argv in runs:
            for flag, value in itertools.pairwise(argv):
                if flag in ("--plot", "--record", "--reproducer") and "/" in value:
                    (work / value).parent.mkdir(parents=True, exist_ok=True)
            try:
                proc = subprocess.run(
                    [sys.executable, "-m", "pagebuddy", *argv],
                    cwd=work,
                    capture_output=True,
                    text=True,
                    timeout=TIMEOUT_S,
                    stdin=subprocess.DEVNULL,
                )
            except subprocess.TimeoutExpired:
                failures.append(f"{block.where}: line {line}: did not finish in {TIMEOUT_S} s")
                break
            if proc.returncode != 0:
                failures.append(
                    f"{block.where}: line {line}: pagebuddy {shlex.join(argv)} exited "
                    f"{proc.returncode}\n{(proc.stderr or proc.stdout).strip()[-2000:]}"
                )
                break
    return failures


# -- the rest --------------------------------------------------------------------------------


def run_toml(block: Block) -> list[str]:
    try:
        import tomllib
    except ImportError:  # CPython 3.10
        return []
    try:
        tomllib.loads(block.text)
    except tomllib.TOMLDecodeError as e:
        return [f"{block.where}: not valid TOML: {e}"]
    return []


def check_block(block: Block, rustdoc: set[Path] | None = None) -> list[str]:
    """Everything wrong with one block (run it if it is code and not marked), empty if nothing."""
    if block.not_run is not None:
        if not block.not_run:
            return [f"{block.where}: '<!-- not run: REASON -->' needs a reason"]
        if not block.is_code or block.lang in RUST:
            return [
                f"{block.where}: a '{block.lang or 'plain'}' block is never run by this test: "
                "drop its '<!-- not run -->' marker (rust blocks use rustdoc's own attributes)"
            ]
        return []
    if block.lang in PYTHON:
        return run_python(block)
    if block.lang in SHELL | CONSOLE:
        return run_shell(block)
    if block.lang in RUST:
        files = rustdoc_files() if rustdoc is None else rustdoc
        if block.path.resolve() not in files:
            return [
                f"{block.where}: a rust block outside the files rustdoc runs as doctests "
                f"({', '.join(sorted(str(p.relative_to(ROOT)) for p in files))})"
            ]
        return []
    if block.lang in TOML:
        return run_toml(block)
    return []
