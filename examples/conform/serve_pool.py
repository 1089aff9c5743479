"""pagebuddy's own ``Pool`` behind conform's line protocol (docs/conform.md, "The line protocol").

    pagebuddy conform --exec "python examples/conform/serve_pool.py"

One request per line on standard input, one answer per line on standard output: the return
code (0 or a negative errno value of pagebuddy_conform.h), then any values. A program in any
language that answers the same way can be tested; this one serves the native pool.
"""

from __future__ import annotations

import sys

from pagebuddy import OutOfMemory, PageError, Pool

ENOMEM, EFAULT, EINVAL = -12, -14, -22
ZERO = {0: "free", 1: "alloc", 2: "never"}


def answer(pool: Pool | None, words: list[str]) -> str:
    """The answer to one request."""
    op, args = words[0], [int(w) for w in words[1:]]
    if op == "abi":
        return "0 free_list page_count" if args == [1] else str(EINVAL)
    if op == "create":
        return "0"  # the pool is built by main()
    assert pool is not None
    try:
        if op == "alloc":
            return f"0 {pool.alloc_pages(args[0])}"
        if op in ("put", "get", "split"):
            getattr(pool, f"{op}_page")(args[0])
            return "0"
        if op == "free_pages":
            return f"0 {pool.free_pages}"
        if op == "free_list":
            return " ".join(map(str, [0, *pool.free_lists()[args[0]]]))
        if op == "page_count":
            return f"0 {pool.page_count(args[0])}"
    except OutOfMemory:
        return str(ENOMEM)
    except PageError:
        return str(EFAULT)
    except ValueError:
        return str(EINVAL)
    return str(EINVAL)  # an unknown request


def main() -> None:
    pool: Pool | None = None
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "create":
            n, base, reserved, cap, zero, page_size = (int(w) for w in words[1:])
            pool = Pool(
                n,
                page_size=page_size,
                base_pfn=base,
                reserved_pages=reserved,
                max_order=cap,
                zero=ZERO[zero],
            )
        elif words[0] == "destroy":
            pool = None
            print("0", flush=True)
            continue
        print(answer(pool, words), flush=True)


if __name__ == "__main__":
    main()
