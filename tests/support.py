"""What the pytest modules and the abuse driver (a plain script) share.

``tests/`` is on ``sys.path`` both under pytest (rootdir-relative test modules) and when
``abuse_driver.py`` runs as a script, so both import this module by its bare name.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def script(name: str) -> ModuleType:
    """``scripts/NAME.py``, loaded as the module ``NAME`` (registered in ``sys.modules``, where
    dataclasses look their module up; ``scripts/`` goes on ``sys.path`` for the scripts' imports
    of each other)."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run_cli(
    *argv: str, stdin: bytes = b"", cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[bytes]:
    """``python -m pagebuddy ARGV`` in a child process, ``env`` added to this one's."""
    return subprocess.run(
        [sys.executable, "-m", "pagebuddy", *argv],
        input=stdin,
        capture_output=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, **env},
    )


def claim_pages(owner: dict[int, int], holder: int, head: int, order: int) -> list[tuple[int, int]]:
    """Record ``holder`` as the owner of every page of the block ``head`` of ``order``.

    Returns the ``(pfn, previous holder)`` of each page that was still owned: a page handed out
    twice. The caller serialises calls on a shared ``owner``.
    """
    clashes = []
    for page in range(head, head + (1 << order)):
        if page in owner:
            clashes.append((page, owner[page]))
        owner[page] = holder
    return clashes
