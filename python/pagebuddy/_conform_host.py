"""A shared library under test in a child process: ``python -m pagebuddy._conform_host LIB``.

``pagebuddy conform LIBRARY`` runs the library here, not in its own process, unless
``--in-process`` is given: a library that crashes (a broken allocator corrupting its lists)
ends this process, which conform reports as a divergence (and starts again to shrink it),
instead of ending conform. This process loads the library with ctypes
(:class:`pagebuddy._conform_targets.Library`) and answers the line protocol on its standard
input and output (docs/conform.md), with two requests beyond it for block contents:

* ``block PFN NBYTES``: ``0`` then the bytes from page ``PFN`` as runs ``COUNT:BYTE`` (in
  decimal; a block usually holds one or two runs);
* ``fill PFN NBYTES BYTE``: write ``BYTE`` over them; ``0``.
"""

from __future__ import annotations

import sys
from typing import IO

from ._conform_targets import ImplementationError, Library, Raw, TargetError
from ._rules import Geometry

ZERO_POLICIES = {0: "free", 1: "alloc", 2: "never"}


def runs(data: bytes) -> list[str]:
    """``data`` as runs ``COUNT:BYTE``."""
    out: list[str] = []
    i, n = 0, len(data)
    while i < n:
        b = data[i]
        j = i + 1
        # Find the end of the run a chunk at a time (blocks are mostly one value).
        while j < n:
            chunk = data[j : j + 4096]
            if chunk == bytes([b]) * len(chunk):
                j += len(chunk)
                continue
            j += next(k for k, x in enumerate(chunk) if x != b)
            break
        out.append(f"{j - i}:{b}")
        i = j
    return out


def answer(lib: Library, pool: Raw | None, words: list[str]) -> tuple[Raw | None, str]:
    """The new current pool and the answer to one request."""
    op, args = words[0], [int(w) for w in words[1:]]
    if op == "abi":
        return pool, " ".join(["0", *sorted(lib.optional)])
    if op == "create":
        if pool is not None:
            pool.close()
        n, base, reserved, cap, zero, page_size = args
        g = Geometry(n, page_size=page_size, base_pfn=base, reserved_pages=reserved, order_cap=cap)
        pool = lib.create(g, ZERO_POLICIES[zero])
        return pool, "0" if pool is not None else "-12"
    if pool is None:
        return None, "-22"
    if op == "destroy":
        pool.close()
        return None, "0"
    if op == "alloc":
        code, pfn = pool.alloc(args[0])
        return pool, f"{code} {pfn}" if code == 0 else str(code)
    if op in ("put", "get", "split"):
        return pool, str(pool.page_op(op, args[0]))
    if op == "free_pages":
        return pool, f"0 {pool.free_pages()}"
    if op == "free_list":
        return pool, " ".join(map(str, [0, *pool.free_list(args[0])]))
    if op == "page_count":
        return pool, f"0 {pool.page_count(args[0])}"
    if op == "block":
        return pool, " ".join(["0", *runs(pool.block(args[0], args[1]).tobytes())])
    if op == "fill":
        view = pool.block(args[0], args[1])
        view[:] = bytes([args[2]]) * args[1]
        return pool, "0"
    return pool, "-22"


def serve(path: str, rfile: IO[str], wfile: IO[str]) -> int:
    """Answer requests from ``rfile`` on ``wfile`` until it ends; the exit status."""
    try:
        lib = Library(path)
    except TargetError as e:
        wfile.write(f"-2 {e}\n")
        wfile.flush()
        return 2
    pool: Raw | None = None
    for line in rfile:
        words = line.split()
        if not words:
            continue
        try:
            pool, text = answer(lib, pool, words)
        except (ValueError, IndexError, ImplementationError) as e:
            text = f"-22 {e}".replace("\n", " ")
        wfile.write(text + "\n")
        wfile.flush()
    if pool is not None:
        pool.close()
    return 0


if __name__ == "__main__":  # pragma: no cover (run as a child process by conform)
    if len(sys.argv) != 2:
        sys.stderr.write("usage: python -m pagebuddy._conform_host LIBRARY\n")
        sys.exit(2)
    sys.exit(serve(sys.argv[1], sys.stdin, sys.stdout))
