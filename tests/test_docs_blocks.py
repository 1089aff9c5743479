"""Every code block of README.md, rust/pagebuddy/README.md and docs/*.md runs, or says why not.

The rules are in ``tests/docs_blocks.py`` and, for authors, in docs/contributing.md ("Code
blocks in the docs"). The second half of this file checks that the rules catch what they
should: a block that raises, a wrong output, an unmarked ``make``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import docs_blocks
from docs_blocks import ROOT, Block, blocks, check_block, documents, rustdoc_files

ALL = [b for path in documents() for b in blocks(path)]
CODE = [b for b in ALL if b.is_code]


def test_the_documents_have_blocks_of_each_kind() -> None:
    langs = {b.lang for b in CODE}
    assert {"python", "sh", "console", "rust", "toml"} <= langs, langs
    assert any(b.not_run is None and b.lang in docs_blocks.SHELL for b in CODE)


def test_rustdoc_runs_both_readmes() -> None:
    assert rustdoc_files() == {
        (ROOT / "README.md").resolve(),
        (ROOT / "rust" / "pagebuddy" / "README.md").resolve(),
    }


@pytest.mark.parametrize("block", CODE, ids=[b.where for b in CODE])
def test_block(block: Block) -> None:
    failures = check_block(block)
    assert not failures, "\n".join(failures)


# -- the rules catch what they should ----------------------------------------------------------


def doc(tmp_path: Path, text: str) -> list[Block]:
    path = tmp_path / "doc.md"
    path.write_text(text, encoding="utf-8")
    return blocks(path)


def test_a_python_block_that_raises_fails(tmp_path: Path) -> None:
    (block,) = doc(
        tmp_path, "# t\n\n```python\nimport pagebuddy\npagebuddy.Pool(8).put_page(0)\n```\n"
    )
    (failure,) = check_block(block)
    assert "doc.md:3: exit code 1" in failure
    assert "line 5" in failure and "PageError" in failure


def test_a_wrong_output_fails_and_a_right_one_passes(tmp_path: Path) -> None:
    text = (
        "```python\n"
        "import pagebuddy\n"
        "print(pagebuddy.Pool(8).free_pages)  # -> 7\n"
        "print('Pool(nr_pages=8, x)')  # -> Pool(nr_pages=8, ...)\n"
        "```\n"
    )
    (block,) = doc(tmp_path, text)
    (failure,) = check_block(block)
    assert failure.endswith("line 3 printed '8', the comment says '7'")
    (block,) = doc(tmp_path, text.replace("# -> 7", "# -> 8"))
    assert check_block(block) == []


def test_a_print_comment_that_is_not_an_output_fails(tmp_path: Path) -> None:
    (block,) = doc(tmp_path, "```python\nprint(1)  # one\n```\n")
    (failure,) = check_block(block)
    assert "'# -> OUTPUT'" in failure
    (block,) = doc(tmp_path, "```python\nx = 1  # -> 1\n```\n")
    (failure,) = check_block(block)
    assert "only a line that starts with print(...)" in failure


def test_a_print_that_prints_nothing_fails(tmp_path: Path) -> None:
    (block,) = doc(tmp_path, "```python\nif False:\n    print(1)  # -> 1\n```\n")
    (failure,) = check_block(block)
    assert failure.endswith("doc.md:1: line 3 printed nothing")


def test_shell_commands_other_than_pagebuddy_must_be_marked(tmp_path: Path) -> None:
    text = "```sh\nmake demo   # build\n```\n"
    (block,) = doc(tmp_path, text)
    (failure,) = check_block(block)
    assert "'make demo' is not a pagebuddy command" in failure
    (block,) = doc(tmp_path, "<!-- not run: builds the project -->\n" + text)
    assert block.not_run == "builds the project"
    assert check_block(block) == []
    (block,) = doc(tmp_path, "<!-- not run: -->\n" + text)
    assert "needs a reason" in check_block(block)[0]


def test_pagebuddy_commands_run_small_and_must_succeed(tmp_path: Path) -> None:
    (block,) = doc(
        tmp_path,
        "```console\n$ pagebuddy fuzz --ops 1000000 --pages 64\nsample output\n"
        "$ pagebuddy replay missing.trace\n```\n",
    )
    runs, errors = docs_blocks.parse_shell(block)
    assert errors == []
    assert runs == [
        (2, ["fuzz", "--ops", "200", "--pages", "64"]),
        (4, ["replay", "missing.trace"]),
    ]
    (failure,) = check_block(block)
    assert "line 4: pagebuddy replay missing.trace exited 2" in failure


def test_small_arguments() -> None:
    assert docs_blocks.small([]) == ["--ops", "200"]
    assert docs_blocks.small(["fuzz", "--ops"]) == ["fuzz", "--ops", "200"]
    assert docs_blocks.small(["fuzz", "--seconds", "600", "--zero", "never"]) == [
        "fuzz",
        "--seconds",
        "1",
        "--zero",
        "never",
    ]
    assert docs_blocks.small(["bench", "--json"]) == ["bench", "--json", "--tiny"]
    assert docs_blocks.small(["replay", "run.trace"]) == ["replay", "run.trace"]


def test_a_rust_block_outside_the_doctested_files_fails(tmp_path: Path) -> None:
    (block,) = doc(tmp_path, "```rust\nlet x = 1;\n```\n")
    (failure,) = check_block(block)
    assert "outside the files rustdoc runs as doctests" in failure


def test_text_blocks_are_not_code_and_take_no_marker(tmp_path: Path) -> None:
    (block,) = doc(tmp_path, "```\npagebuddy demo [--seed S]\n```\n")
    assert not block.is_code and check_block(block) == []
    (block,) = doc(tmp_path, "<!-- not run: x -->\n```text\nout\n```\n")
    assert "never run by this test" in check_block(block)[0]


def test_fences_nest_and_indent(tmp_path: Path) -> None:
    found = doc(
        tmp_path,
        "- a list\n\n  ```python\n  x = 1\n  ```\n\n````md\n```python\nnot a block\n```\n````\n",
    )
    assert [(b.line, b.lang, b.text) for b in found] == [
        (3, "python", "x = 1\n"),
        (7, "md", "```python\nnot a block\n```\n"),
    ]
