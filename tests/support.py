"""What the pytest modules and the abuse driver (a plain script) share.

``tests/`` is on ``sys.path`` both under pytest (rootdir-relative test modules) and when
``abuse_driver.py`` runs as a script, so both import this module by its bare name.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


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
