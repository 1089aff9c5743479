"""A pool's metadata, links and owned arena are advised for huge pages (MADV_HUGEPAGE) where the
kernel offers them: /proc/self/smaps marks such mappings with the ``hg`` flag."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pagebuddy import Pool

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux")
    or not THP.exists()
    or "[never]" in THP.read_text(encoding="ascii"),
    reason="transparent huge pages: Linux, not set to never",
)


def advised_sizes() -> list[int]:
    """Sizes in KiB of this process's mappings that carry the huge-page advice (``hg``)."""
    sizes, size = [], 0
    for line in Path("/proc/self/smaps").read_text(encoding="ascii", errors="replace").splitlines():
        if line.startswith("Size:"):
            size = int(line.split()[1])
        elif line.startswith("VmFlags:") and " hg" in f" {line.split(':', 1)[1]}":
            sizes.append(size)
    return sizes


def test_metadata_and_links_are_advised() -> None:
    before = advised_sizes()
    n = 1 << 20  # 4 MiB of metadata, 8 MiB of links
    pool = Pool(n, arena=False, zero="never")
    after = advised_sizes()
    new = sorted(set(after) - set(before)) or sorted(after)
    assert 4096 in new and 8192 in new, (before, after)
    pfn = pool.alloc_pages(3)
    pool.put_page(pfn)
    pool.check()


def test_an_owned_arena_is_advised() -> None:
    before = len(advised_sizes())
    pool = Pool(1 << 10, zero="never")  # a 4 MiB arena
    assert len(advised_sizes()) > before
    pfn = pool.alloc_pages(0)
    pool.view(pfn)[:8] = b"pagebudy"
    assert bytes(pool.view(pfn)[:8]) == b"pagebudy"
    pool.put_page(pfn)
    pool.check()
