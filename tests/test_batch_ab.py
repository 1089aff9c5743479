"""scripts/batch_ab.py: two builds of the extension, timed on the batch workload in one process."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import pagebuddy._native as native
from support import SCRIPTS, script


def test_times_each_build_in_one_process() -> None:
    # In a child process: the builds' copies of the package stay loaded where they run.
    so = native.__file__
    argv = ["--shift", "10", "--rounds", "2", f"one={so}", f"two={so}"]
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "batch_ab.py"), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("2^10 pages half held, batches of 256, 2 rounds, ns a page\n")
    for name in ("one", "two"):
        line = next(x for x in out.splitlines() if x.startswith(f"{name}: "))
        # Medians, a minimum and each round's batch: positive numbers, two rounds.
        figures = re.fullmatch(
            rf"{name}: alloc_many median ([\d.]+) min ([\d.]+), put_many median ([\d.]+); "
            r"batches ([\d.]+) ([\d.]+)",
            line,
        )
        assert figures is not None, line
        assert all(float(f) > 0 for f in figures.groups())


@pytest.mark.parametrize(
    "argv",
    [
        ["only=x", "other=x"],
        ["a=/no/such/file.so", "b=/no/such/file.so"],
        ["not-a-pair", "b=x"],
    ],
)
def test_refuses_what_it_cannot_load(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    batch_ab = script("batch_ab")
    with pytest.raises(SystemExit) as exit_:
        batch_ab.main(argv)
    assert exit_.value.code == 2
    assert "expected name=path of an extension file" in capsys.readouterr().err


def test_needs_two_builds(capsys: pytest.CaptureFixture[str]) -> None:
    batch_ab = script("batch_ab")
    with pytest.raises(SystemExit) as exit_:
        batch_ab.main([f"one={native.__file__}"])
    assert exit_.value.code == 2
    assert "two or more builds" in capsys.readouterr().err
