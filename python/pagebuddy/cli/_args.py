"""The command line's arguments: exit codes, the parser of every subcommand, argument types.

Usage errors are raised as :class:`Usage` (exit code 2) so that ``main`` reports every one
the same way: one line, or one JSON object with ``--json``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from .._cache import MAX_CACHE_HIGH, MAX_CPUS, cache_problem
from .._rules import ARENAS, LINK_STORES, ZERO_POLICIES
from .._trace import MAX_PAGES

EXIT_OK = 0
EXIT_DIVERGENCE = 1
EXIT_USAGE = 2
EXIT_REJECTED = 3
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """\
exit codes:
  0    success: Pool and ReferencePool agreed on everything
  1    divergence: Pool and ReferencePool disagreed (fuzz prints a reproducer)
  2    usage error, malformed trace (reported with its line number), unreadable
       file or unwritable output, or a missing optional dependency (--plot
       needs: pip install 'pagebuddy[plot]'); one line, or JSON with --json
  3    replay --strict: the trace holds operations the allocator refused
       (e.g. a put of a free page); they are reported either way
  130  interrupted (Ctrl-C)
"""

DESCRIPTION = """\
pagebuddy: a pKVM-style buddy page allocator (native Pool) checked against a
pure-Python model (ReferencePool). Without a subcommand, runs the demo
(`pagebuddy --json` is `pagebuddy demo --json`).
"""


#: Most operations ``demo --ops`` generates (the workload is built in memory before it runs).
MAX_DEMO_OPS = 1_000_000

#: Most worker processes ``demo --processes`` starts (each is a Python interpreter of its own).
MAX_DEMO_PROCESSES = 64


class Usage(Exception):
    """A usage error (exit code 2): bad arguments, an unreadable or malformed input.

    ``extra`` holds fields that the JSON error object carries besides ``error``.
    """

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.extra = extra


class Parser(argparse.ArgumentParser):
    """An argument parser that raises :class:`Usage` instead of printing usage and exiting,
    so that ``main`` reports every usage error the same way (one line, or JSON)."""

    def error(self, message: str) -> NoReturn:
        raise Usage(f"{self.prog}: {message} (see {self.prog} --help)")

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        # argparse turns `--opt=--` into an empty list without calling the option's type.
        for arg in args if args is not None else sys.argv[1:]:
            if arg == "--":
                break
            option, eq, value = arg.partition("=")
            if arg.startswith("-") and eq and value == "--":
                self.error(f"argument {option}: expected one argument")
        return super().parse_known_args(args, namespace)


def integer(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def positive(text: str) -> int:
    v = integer(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text!r}")
    return v


def non_negative(text: str) -> int:
    v = integer(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return v


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An argument type: an integer from ``lo`` to ``hi``, both included."""

    def parse(text: str) -> int:
        v = integer(text)
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be from {lo} to {hi}: {text!r}")
        return v

    return parse


def output_path(option: str, path: str) -> None:
    """Refuse, before any work, an output path that cannot be a file: a directory, or a file
    in a directory that does not exist."""
    if os.path.isdir(path):
        raise Usage(f"{option} {path}: is a directory (give a file name)")
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        raise Usage(f"{option} {path}: directory {parent} does not exist")


@contextlib.contextmanager
def naming(path: str) -> Iterator[None]:
    """Give ``path`` to an ``OSError`` raised inside without a file name (a write to, or the
    close of, the file at ``path``: ``ENOSPC`` on ``/dev/full``, ``EIO`` on ``/proc/version``),
    so that the one line ``main`` prints says which file: ``PATH: why``."""
    try:
        yield
    except BrokenPipeError:  # standard output or error: not the file
        raise
    except OSError as e:
        if e.filename is not None:
            raise
        raise OSError(e.errno, e.strerror or str(e), path) from None


def check_outputs(args: Any) -> None:
    """Before any work: ``--plot`` needs matplotlib, and every output path (``--plot``,
    ``--record``, ``--reproducer``) must be able to be a file."""
    if getattr(args, "plot", None):
        from .._plot import _pyplot

        _pyplot()
    for option in ("plot", "record", "reproducer"):
        path = getattr(args, option, None)
        if path:
            output_path(f"--{option}", path)


def cache_options(p: argparse.ArgumentParser, drawn: bool) -> None:
    """``--cache-batch`` and ``--cache-high`` of a command that takes ``--cpus``."""
    default = (
        "drawn per episode, or sized by each slot itself"
        if drawn
        else "16 and 64, sized by each slot itself when both are left out"
    )
    p.add_argument(
        "--cache-batch",
        type=int_in(1, MAX_CACHE_HIGH),
        metavar="B",
        help=f"blocks a cache takes from the pool when empty and gives back when full "
        f"(needs --cpus; default {default})",
    )
    p.add_argument(
        "--cache-high",
        type=int_in(1, MAX_CACHE_HIGH),
        metavar="H",
        help=f"blocks a cache keeps per order, at least --cache-batch (needs --cpus; default "
        f"{default})",
    )


def check_cache_options(args: Any) -> tuple[tuple[str, int], ...]:
    """The ``Pool`` keywords of ``--cpus``, ``--cache-batch`` and ``--cache-high`` (those
    given), or :class:`Usage` naming the rule they break."""
    batch, high = args.cache_batch, args.cache_high
    if not args.cpus:
        if batch is not None or high is not None:
            option = "--cache-batch" if batch is not None else "--cache-high"
            raise Usage(f"{option} needs --cpus N with N >= 1 (a pool with per-CPU caches)")
        return ()
    if batch is not None and high is not None and cache_problem(args.cpus, batch, high):
        raise Usage(
            f"--cache-high {high} is below --cache-batch {batch}: a cache gives back "
            f"--cache-batch blocks when it holds more than --cache-high "
            f"(need 1 <= cache_batch <= cache_high <= {MAX_CACHE_HIGH})"
        )
    options = [("cpus", args.cpus)]
    options += [("cache_batch", batch)] if batch is not None else []
    options += [("cache_high", high)] if high is not None else []
    return tuple(options)


def seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds: {text!r}")
    return v


def _wrap(text: str) -> str:
    return textwrap.fill(text, 78)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``pagebuddy`` command."""
    from .._bench import MAX_PAGES as BENCH_MAX_PAGES
    from .._bench import MIN_PAGES as BENCH_MIN_PAGES
    from .._fuzz import DEFAULT_SECONDS
    from .._workload import DEMO_OPS, DEMO_SEED

    fmt = argparse.RawDescriptionHelpFormatter
    parser = Parser(
        prog="pagebuddy", description=DESCRIPTION, epilog=EXIT_CODES_HELP, formatter_class=fmt
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    # (`pagebuddy --version --json`; `pagebuddy --json` alone is `pagebuddy demo --json`)
    parser.add_argument("--json", action="store_true", dest="top_json", help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--json", action="store_true", help="print one JSON object instead of tables"
        )
        p.add_argument(
            "--no-progress", action="store_true", help="no progress bar (off anyway if not a TTY)"
        )

    demo = sub.add_parser(
        "demo",
        help="replay the embedded VM-host workload through both pools (default)",
        description=_wrap(
            "Replay the embedded workload (a hypervisor's page pool serving VMs: "
            "page-table pages at order 0, 2 MiB blocks at order 9, shared pages, block splits, "
            "bursts of frees) through Pool and ReferencePool in lockstep, check that they agree, "
            "and report fragmentation and timing."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    demo.add_argument(
        "--seed", type=integer, default=DEMO_SEED, help=f"workload seed (default {DEMO_SEED})"
    )
    demo.add_argument(
        "--ops",
        type=int_in(1, MAX_DEMO_OPS),
        default=DEMO_OPS,
        help=f"approximate number of operations (default {DEMO_OPS}, at most {MAX_DEMO_OPS})",
    )
    demo.add_argument(
        "--plot", metavar="PATH", help="write a PNG: free blocks over time, arena map"
    )
    demo.add_argument(
        "--processes",
        type=int_in(0, MAX_DEMO_PROCESSES),
        default=0,
        metavar="N",
        help="run N worker processes on one pool in shared memory instead (allocate, get/put, "
        f"free, write into held pages); the parent accounts for every page (at most "
        f"{MAX_DEMO_PROCESSES}; default 0: the lockstep demo)",
    )
    demo.add_argument("--record", metavar="FILE", help="write the operations as a trace")
    demo.add_argument(
        "--cpus",
        type=int_in(0, MAX_CPUS),
        default=0,
        metavar="N",
        help="per-CPU page caches in front of the pool (Pool(..., cpus=N), the calls made from "
        "slot 0); the model is then the cache model (default 0: the exact pool)",
    )
    cache_options(demo, drawn=False)
    common(demo)

    fz = sub.add_parser(
        "fuzz",
        help="differential fuzzing of Pool against ReferencePool",
        description=_wrap(
            "Random operations on random geometries, run through Pool and "
            "ReferencePool in lockstep. On a divergence the operations are shrunk to a short "
            "reproducer, printed as a runnable Python snippet, and the exit code is 1. "
            "Geometry options not given are drawn at random for each episode (fresh pool)."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    fz.add_argument(
        "--ops",
        type=positive,
        nargs="?",
        const=-1,
        metavar="N",
        help=f"number of operations; without N, run for about {DEFAULT_SECONDS:g} seconds "
        f"(also the default when neither --ops nor --seconds is given)",
    )
    fz.add_argument("--seconds", type=seconds, metavar="T", help="run for T seconds")
    fz.add_argument("--seed", type=non_negative, help="random seed (random if not given)")
    fz.add_argument(
        "--pages",
        type=int_in(1, MAX_PAGES),
        metavar="N",
        help=f"nr_pages of every pool (at most {MAX_PAGES})",
    )
    fz.add_argument("--base-pfn", type=non_negative, metavar="PFN", help="base_pfn")
    fz.add_argument("--reserved", type=int_in(0, MAX_PAGES), metavar="N", help="reserved_pages")
    fz.add_argument("--max-order", type=positive, metavar="K", help="max_order cap")
    fz.add_argument("--zero", choices=ZERO_POLICIES, help="zero policy")
    fz.add_argument("--page-size", type=positive, metavar="BYTES", help="page_size")
    fz.add_argument("--links", choices=LINK_STORES, help="link store")
    fz.add_argument(
        "--arena",
        choices=ARENAS,
        help="pool-owned arena, a bytearray handed in (arenas are then compared), or none: "
        "page numbers only (needs --zero never and --links side if given)",
    )
    fz.add_argument(
        "--cpus",
        type=int_in(0, MAX_CPUS),
        metavar="N",
        help="per-CPU page caches in front of the pool (Pool(..., cpus=N)), compared with the "
        "cache model; cache_batch and cache_high are drawn per episode unless given (default "
        "0: the exact pool)",
    )
    cache_options(fz, drawn=True)
    fz.add_argument(
        "--grow",
        action="store_true",
        help="pools that grow and shrink: every pool gets room past its pages (max_pages; a "
        "fifth start empty), and episodes admit and reclaim blocks and set min_free_pages",
    )
    fz.add_argument(
        "--compare-every",
        type=positive,
        default=16,
        metavar="N",
        help="compare free lists every N operations (default 16; results are compared "
        "after every operation, everything at the end of each episode)",
    )
    fz.add_argument(
        "--shrink-seconds",
        type=seconds,
        default=60.0,
        metavar="T",
        help="time allowed for shrinking a divergence (default 60)",
    )
    fz.add_argument("--record", metavar="FILE", help="write the operations as a trace")
    fz.add_argument(
        "--reproducer", metavar="FILE", help="also write the reproducer snippet to FILE"
    )
    common(fz)

    rp = sub.add_parser(
        "replay",
        help="replay a trace file through both pools",
        description=_wrap(
            "Replay a trace (see docs/cli.md for the format) through Pool and "
            "ReferencePool in lockstep and report as demo does. Operations the allocator "
            "refuses (a put of a free page, an allocation that runs out of memory) are "
            "reported, not fatal."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    rp.add_argument("file", metavar="FILE", help="trace file ('-' for standard input)")
    rp.add_argument("--strict", action="store_true", help="exit 3 if any operation was refused")
    rp.add_argument(
        "--compare-every",
        type=positive,
        default=1,
        metavar="N",
        help="compare free lists every N operations (default 1)",
    )
    rp.add_argument("--plot", metavar="PATH", help="write a PNG of the last section")
    common(rp)

    bn = sub.add_parser(
        "bench",
        help="the quick Python benchmark: Pool vs ReferencePool per call",
        description=_wrap(
            "Cost per call of Pool and ReferencePool for alloc, put, get, split, "
            "the batch calls, and churn and mixed workloads, with their ratio."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    bn.add_argument("--tiny", action="store_true", help="a tiny run (a few seconds)")
    bn.add_argument(
        "--pages",
        type=int_in(BENCH_MIN_PAGES, BENCH_MAX_PAGES),
        metavar="N",
        help=f"pool size in pages ({BENCH_MIN_PAGES} to {BENCH_MAX_PAGES})",
    )
    common(bn)

    from .ftrace import add_parser as add_ftrace

    add_ftrace(sub, common, EXIT_CODES_HELP, positive, int_in(1, 2**32 - 2))

    from .conform import add_parser as add_conform

    add_conform(sub, common, EXIT_CODES_HELP, positive, non_negative, seconds)
    return parser
