"""The conformance kit: any buddy page allocator run in lockstep with pagebuddy's model.

``pagebuddy conform`` (and :func:`conform`) drives an implementation reached through
:mod:`pagebuddy._conform_targets` (a shared library exporting ``pagebuddy_conform.h``, or a
process speaking the line protocol) with random operation sequences, through the one engine
(:mod:`pagebuddy._lockstep`): the implementation is the pool side of the pair, the model the
other. As ``fuzz`` does, a run is a series of episodes, each a fresh pool of a random
geometry (options fix any field) and a few dozen to a few thousand operations; a
divergence is shrunk (delta debugging, :func:`pagebuddy._fuzz.ddmin`) to a short list,
written as a trace (:mod:`pagebuddy._trace`) and as a C function that replays it against
the implementation (:func:`c_reproducer`).

**Levels.** ``exact``: the model is ``ReferencePool``, pKVM's policy: every pfn, every free
list in order. ``buddy``: the model is :class:`pagebuddy._conform_buddy.BuddyModel`, any
buddy allocator: each block handed out must be legal (a pfn of the pool, aligned, every page
free), free lists are compared as sets (conservation, complete coalescing), and a refusal
must come exactly when no block of the order is free.

**Misuse.** Without ``misuse`` the implementation is only given valid operations (orders in
range; put, get and split of held pages, at most :data:`MAX_REFS` references to a page), so
one that aborts on misuse, as pKVM's ``BUG_ON`` does, can be tested. With ``misuse`` a few
operations in a hundred are not valid (orders out of range, free pages, tail pages, pfns
outside the pool, puts of pages already freed): each must be refused with the code the
model gives and change nothing.

**What is compared.** After every operation, the result (pfn or code) and the free page
count; every ``compare_every`` operations, the free lists (if the implementation exports
``pb_free_list``); after every allocation under zero policies ``free`` and ``alloc``, that
the new block reads as zero (if it exports ``pb_page_address``; the block is then filled
with 0x5a); at the end of an episode, every page's refcount (``pb_page_count``) and the
contents of every held block.
"""

from __future__ import annotations

import math
import os
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._conform_buddy import BuddyModel, IllegalAnswer
from ._conform_targets import (
    ERRORS,
    HEADER,
    Channel,
    Hosted,
    ImplementationError,
    Library,
    Process,
    Seen,
    Target,
    TargetError,
    pool_class,
)
from ._fuzz import FuzzConfig, ddmin, random_geometry
from ._lockstep import FILL, Divergence, GeometryRefused, Lockstep, OpSource, RunResult, run_ops
from ._rules import Geometry, Op, format_op, map_pfns
from ._trace import format_header

__all__ = [
    "DEFAULT_SECONDS",
    "HEADER",
    "LEVELS",
    "MAX_REFS",
    "ConformConfig",
    "ConformResult",
    "TargetError",
    "c_reproducer",
    "config_problem",
    "conform",
    "implementation_words",
    "open_target",
    "run",
]

#: The strictness levels.
LEVELS = ("exact", "buddy")
#: Duration of a run when neither a number of operations nor a time is given.
DEFAULT_SECONDS = 30.0
#: Most references valid operations take to one page (``get`` stops there).
MAX_REFS = 8
#: Operation kinds of the ABI (a trace of a conform run holds only these).
KINDS = ("alloc", "put", "get", "split")


@dataclass
class ConformConfig:
    """Parameters of a conform run. Geometry fields left ``None`` are drawn per episode."""

    level: str = "exact"
    misuse: bool = False
    ops: int | None = None
    seconds: float | None = None
    seed: int | None = None
    pages: int | None = None
    base_pfn: int | None = None
    reserved: int | None = None
    order_cap: int | None = None
    zero: str = "free"
    page_size: int = 4096
    #: Compare free lists every this many operations (results: every operation).
    compare_every: int = 16
    #: Longest episode, in operations (episodes are drawn between 16 and this).
    episode_ops: int = 4096
    #: Time allowed for shrinking a divergence.
    shrink_seconds: float = 60.0


@dataclass
class ConformResult:
    """What a conform run did and found."""

    target: str
    level: str
    misuse: bool
    seed: int
    zero: str
    #: The optional functions the implementation exports (``free_list``, ...).
    optional: list[str] = field(default_factory=list)
    ops: int = 0
    episodes: int = 0
    seconds: float = 0.0
    rejected: int = 0
    interrupted: bool = False
    divergence: Divergence | None = None
    #: Geometry (the model's: ``arena="none"`` where contents are not compared) and
    #: operations of the episode that diverged, as found and shrunk.
    geometry: Geometry | None = None
    episode_ops: list[Op] = field(default_factory=list)
    shrunk_geometry: Geometry | None = None
    shrunk_ops: list[Op] = field(default_factory=list)
    shrunk_divergence: Divergence | None = None
    #: The shrunk case as a C function (and ``main``) calling the ABI.
    c_reproducer: str = ""

    @property
    def ok(self) -> bool:
        """True when the implementation agreed with the model throughout."""
        return self.divergence is None

    @property
    def ops_per_second(self) -> float:
        """Operations per second over the whole run."""
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    def trace_text(self) -> str:
        """The shrunk case as a trace (``pagebuddy replay`` runs it on pagebuddy's own pool)."""
        if self.shrunk_geometry is None:
            return ""
        head = (
            f"# pagebuddy conform {self.target} --level {self.level}"
            f"{' --misuse' if self.misuse else ''} --seed {self.seed}: the implementation's "
            f"zero policy was {self.zero}"
        )
        lines = [head, format_header(self.shrunk_geometry)]
        return "\n".join(lines + [format_op(op) for op in self.shrunk_ops]) + "\n"


def open_target(
    library: str | os.PathLike[str] | None,
    command: str | Sequence[str] | None,
    *,
    in_process: bool = False,
) -> Target:
    """The implementation: a shared library (in a child process, or with ``in_process`` in
    this one), or a command speaking the line protocol (one of the two). Raises
    :class:`TargetError` when it cannot be reached."""
    if (library is None) == (command is None):
        raise TargetError("give a shared library or a command (one of the two)")
    if library is not None:
        return Library(library) if in_process else Hosted(library)
    return Process(command or "")


def config_problem(cfg: ConformConfig) -> str | None:
    """Why ``cfg`` cannot run, or None."""
    if cfg.level not in LEVELS:
        return f"level must be one of {', '.join(LEVELS)}, not {cfg.level!r}"
    if cfg.zero not in ("free", "alloc", "never"):
        return f"zero must be free, alloc or never, not {cfg.zero!r}"
    ps = cfg.page_size
    if not (64 <= ps <= 1 << 20 and ps & (ps - 1) == 0):
        return f"page_size must be a power of two in 64..2**20, not {ps}"
    if cfg.pages is not None and not 1 <= cfg.pages <= 1 << 16:
        return f"pages must be in 1..65536, not {cfg.pages}"
    if (cfg.pages or 1025) * ps > 1 << 30:
        return (
            f"pools of {cfg.pages or 'up to 1025'} pages of {ps} bytes: at most 1 GiB a pool "
            "(the implementation and the model each hold one; give --pages)"
        )
    if cfg.reserved is not None and cfg.reserved > (cfg.pages or 1 << 16):
        return f"reserved {cfg.reserved} exceeds the pool's pages"
    if cfg.base_pfn is not None and not 0 <= cfg.base_pfn <= 2**64 - (cfg.pages or 1):
        return "base_pfn + nr_pages must be <= 2**64"
    if cfg.order_cap is not None and cfg.order_cap < 1:
        return f"order cap must be >= 1, not {cfg.order_cap}"
    if cfg.ops is not None and cfg.ops < 1:
        return f"ops must be >= 1, not {cfg.ops}"
    return None


# -- the pair -----------------------------------------------------------------------------------


@dataclass
class _Pair:
    """The classes of the lockstep pair for one run, and the model's geometry rule."""

    target: Target
    level: str
    zero: str

    def __post_init__(self) -> None:
        self.channel = Channel() if self.level == "buddy" else None
        self.pool_cls = pool_class(
            self.target, self.zero, sort_lists=self.level == "buddy", channel=self.channel
        )

        optional, channel = self.target.optional, self.channel

        class Model(Seen):
            """The level's model, seen as the implementation is (:class:`Seen`)."""

            def __init__(self, nr_pages: int, **kw: Any) -> None:
                from ._reference import ReferencePool

                if channel is not None:
                    kw.pop("_links", None)
                    inner: Any = BuddyModel(nr_pages, channel=channel, **kw)
                else:
                    inner = ReferencePool(nr_pages, **kw)
                super().__init__(inner, optional)

        self.model = Model

    @property
    def contents(self) -> bool:
        """Whether new blocks' bytes are compared (zeroing is then seen)."""
        return "page_address" in self.target.optional and self.zero != "never"

    def geometry(self, rng: random.Random, cfg: ConformConfig) -> Geometry:
        """A random geometry for the model: an owned arena with the implementation's zero
        policy where contents are compared, else none."""
        arena = "owned" if self.contents else "none"
        fc = FuzzConfig(
            pages=cfg.pages,
            base_pfn=cfg.base_pfn,
            reserved=cfg.reserved,
            order_cap=cfg.order_cap,
            zero=self.zero if self.contents else "never",
            page_size=cfg.page_size,
            links="side",
            arena=arena,
        )
        g = random_geometry(rng, fc)
        if cfg.pages is None and g.nr_pages > 1024:  # keep episodes light: 4 MiB of arena
            g = g.replace(nr_pages=g.nr_pages >> 1, reserved_pages=min(g.reserved_pages, 512))
            g = g.replace(base_pfn=min(g.base_pfn, 2**64 - g.nr_pages))
        return g


# -- operations -----------------------------------------------------------------------------------


def episode(rng: random.Random, g: Geometry, length: int, misuse: bool) -> OpSource:
    """``length`` operations on a pool of ``g``, told each outcome (the model's): valid ones
    only, unless ``misuse`` (then a few in a hundred are not)."""
    ref: dict[int, int] = dict.fromkeys(range(g.base_pfn, g.base_pfn + g.reserved_pages), 1)
    order: dict[int, int] = dict.fromkeys(ref, 0)
    pfns = list(ref)
    orders = g.max_order
    p_alloc, left = 0.5, 0
    for _ in range(length):
        if left <= 0:
            p_alloc, left = rng.uniform(0.15, 0.85), int(2 ** rng.uniform(4, 10))
        left -= 1
        if misuse and rng.random() < 0.05:
            op = _misuse(rng, g, pfns, order)
        elif not pfns or rng.random() < p_alloc:
            k = 0
            while k + 1 < orders and rng.random() < 0.5:
                k += 1
            op = ("alloc", k if rng.random() < 0.7 else rng.randrange(orders))
        else:
            pfn = rng.choice(pfns)
            r = rng.random()
            if r < 0.7 or (r < 0.85 and ref[pfn] >= MAX_REFS):
                op = ("put", pfn)
            elif r < 0.85:
                op = ("get", pfn)
            else:
                if not order[pfn]:
                    pfn = rng.choice(pfns)
                op = ("split", pfn)
        value, exc = yield op
        if exc is not None:
            continue
        kind = op[0]
        if kind == "alloc":
            ref[value], order[value] = 1, op[1]
            pfns.append(value)
        elif kind == "get":
            ref[op[1]] += 1
        elif kind == "put":
            ref[op[1]] -= 1
            if not ref[op[1]]:
                del ref[op[1]], order[op[1]]
                pfns.remove(op[1])
        elif kind == "split":
            head = op[1]
            tails = range(head + 1, head + (1 << order[head]))
            order[head] = 0
            ref.update(dict.fromkeys(tails, 1))
            order.update(dict.fromkeys(tails, 0))
            pfns.extend(tails)


def _misuse(rng: random.Random, g: Geometry, pfns: list[int], order: dict[int, int]) -> Op:
    """An operation that is not valid (or, drawn at random, sometimes is)."""
    r = rng.random()
    if r < 0.2:
        return ("alloc", rng.choice((g.max_order, g.max_order + 1, 63, 2**32 - 1)))
    kind = rng.choice(("put", "get", "split"))
    big = [p for p in pfns if order[p]]
    if r < 0.45 and big:
        head = rng.choice(big)
        return (kind, head + rng.randrange(1, 1 << order[head]))  # a tail page
    if r < 0.65:
        outside = [p for p in (g.base_pfn - 1, g.base_pfn + g.nr_pages) if 0 <= p < 2**64]
        if outside:
            return (kind, rng.choice(outside))
    return (kind, rng.randrange(g.base_pfn, g.base_pfn + g.nr_pages))  # a free page, mostly


def _valid(model: Any, g: Geometry, op: Op) -> bool:
    """Whether ``op`` is valid on ``model`` now (shrinking keeps to valid operations unless
    misuse is on: an implementation may abort on anything else)."""
    kind, arg = op[0], op[1]
    if kind == "alloc":
        return bool(0 <= arg < g.max_order)
    if not g.base_pfn <= arg < g.base_pfn + g.nr_pages:
        return False
    count = model.page_count(arg)
    return bool(count > 0 and (kind != "get" or count < MAX_REFS))


# -- running ------------------------------------------------------------------------------------


def conform(
    library: str | os.PathLike[str] | None = None,
    *,
    command: str | Sequence[str] | None = None,
    in_process: bool = False,
    level: str = "exact",
    misuse: bool = False,
    ops: int | None = None,
    seconds: float | None = None,
    seed: int | None = None,
    pages: int | None = None,
    base_pfn: int | None = None,
    reserved: int | None = None,
    order_cap: int | None = None,
    zero: str = "free",
    page_size: int = 4096,
    compare_every: int = 16,
    shrink_seconds: float = 60.0,
    progress: Callable[[int, float], None] | None = None,
) -> ConformResult:
    """Run an implementation in lockstep with pagebuddy's model; what it found.

    The implementation is ``library`` (a shared library exporting ``pagebuddy_conform.h``,
    whose path is :data:`pagebuddy.CONFORM_HEADER`; run in a child process, so that a crash
    is a finding, or with ``in_process`` in this one, faster) or ``command`` (a program
    speaking the line protocol; a string is split as a shell would). ``level`` is ``"exact"`` or
    ``"buddy"``; ``misuse`` adds invalid operations. The run stops after ``ops`` operations
    or ``seconds`` seconds (30 seconds when neither is given) or at the first divergence,
    which is then shrunk (for at most ``shrink_seconds``) and written as a trace
    (:meth:`ConformResult.trace_text`) and a C reproducer (``c_reproducer``). Geometry
    options left ``None`` are drawn per episode. ``progress(ops, elapsed)`` is called about
    every 1024 operations.

    Raises :class:`TargetError` if the implementation cannot be reached, ``ValueError`` for
    options no run can have.

    >>> r = conform("examples/conform/libbuddy.so", ops=10_000)  # doctest: +SKIP
    >>> r.ok
    True
    """
    cfg = ConformConfig(
        level=level,
        misuse=misuse,
        ops=ops,
        seconds=seconds,
        seed=seed,
        pages=pages,
        base_pfn=base_pfn,
        reserved=reserved,
        order_cap=order_cap,
        zero=zero,
        page_size=page_size,
        compare_every=compare_every,
        shrink_seconds=shrink_seconds,
    )
    problem = config_problem(cfg)
    if problem:
        raise ValueError(problem)
    target = open_target(library, command, in_process=in_process)
    try:
        return run(target, cfg, progress=progress)
    finally:
        target.close()


def run(
    target: Target,
    cfg: ConformConfig,
    *,
    progress: Callable[[int, float], None] | None = None,
    on_divergence: Callable[[ConformResult], None] | None = None,
) -> ConformResult:
    """:func:`conform` on a target already open."""
    seed = cfg.seed if cfg.seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    pair = _Pair(target, cfg.level, cfg.zero)
    result = ConformResult(
        target.name, cfg.level, cfg.misuse, seed, cfg.zero, sorted(target.optional)
    )
    limit_ops = cfg.ops if cfg.ops is not None else math.inf
    limit_s = cfg.seconds if cfg.seconds is not None else (None if cfg.ops else DEFAULT_SECONDS)
    deadline = time.perf_counter() + limit_s if limit_s is not None else math.inf
    t0 = time.perf_counter()
    done = 0
    try:
        while done < limit_ops and time.perf_counter() < deadline:
            g = pair.geometry(rng, cfg)
            length = int(2 ** rng.uniform(4, math.log2(max(16, cfg.episode_ops))))
            length = int(min(length, limit_ops - done))
            result.episodes += 1

            def tick(n: int, base: int = done) -> bool:
                now = time.perf_counter()
                if progress is not None:
                    progress(base + n, now - t0)
                return now >= deadline

            seen: list[Op] = []
            try:
                r = run_ops(
                    g,
                    episode(rng, g, length, cfg.misuse),
                    pool_cls=pair.pool_cls,
                    model_cls=pair.model,
                    compare_every=cfg.compare_every,
                    keep_examples=0,
                    progress=tick,
                    record=seen.append,
                )
            except ImplementationError as e:  # from a state read (free pages, free lists)
                r = RunResult(g, seen, divergence=_broken(seen, e))
            done += len(r.ops)
            result.rejected += sum(r.rejected.values())
            if r.divergence is not None:
                result.divergence, result.geometry, result.episode_ops = r.divergence, g, r.ops
                break
            if progress is not None:
                progress(done, time.perf_counter() - t0)
    except KeyboardInterrupt:
        result.interrupted = True
    result.ops, result.seconds = done, time.perf_counter() - t0
    if result.divergence is not None and result.geometry is not None:
        if on_divergence is not None:
            on_divergence(result)
        g2, ops2, d2 = shrink(
            pair, result.geometry, result.episode_ops, cfg.misuse, cfg.shrink_seconds
        )
        result.shrunk_geometry, result.shrunk_ops, result.shrunk_divergence = g2, ops2, d2
        if isinstance(target, (Library, Hosted)):  # a command is not reached through the ABI
            result.c_reproducer = c_reproducer(pair, g2, ops2, d2, result)
    return result


def _broken(ops: list[Op], e: ImplementationError) -> Divergence:
    """An answer the ABI does not allow, read after ``ops``, as a divergence."""
    return Divergence(len(ops) - 1, ops[-1] if ops else None, "implementation", str(e))


def _diverges(pair: _Pair, g: Geometry, ops: list[Op], misuse: bool) -> Divergence | None:
    """Re-run ``ops`` on a fresh pair comparing after every step; the divergence or None.
    Without ``misuse`` a list that holds an invalid operation does not count."""
    done: list[Op] = []
    try:
        ls = Lockstep(g, pair.pool_cls, pair.model)
        for op in ops:
            if not misuse and not _valid(ls.model.inner, g, op):
                return None
            done.append(op)
            ls.apply(op)
        ls.agree()
    except Divergence as d:
        return d
    except ImplementationError as e:
        return _broken(done, e)
    except GeometryRefused:
        return None
    return None


def shrink(
    pair: _Pair, g: Geometry, ops: list[Op], misuse: bool, seconds: float
) -> tuple[Geometry, list[Op], Divergence]:
    """The shortest diverging list delta debugging finds within ``seconds`` (then the pool
    moved to pfn 0, if it still diverges). Any divergence counts, but one of the constructor
    only if the first was one."""
    deadline = time.perf_counter() + seconds
    d = _diverges(pair, g, ops, misuse)
    if d is None:
        d = Divergence(len(ops), None, "flaky", "the divergence did not reproduce on a re-run")
        return g, ops, d
    first = d.what

    def test(cand: list[Op], g: Geometry = g) -> Divergence | None:
        d2 = _diverges(pair, g, cand, misuse)
        return None if d2 is None or (d2.what == "constructor" and first != "constructor") else d2

    def cut(cand: list[Op], dv: Divergence) -> list[Op]:
        return cand[: dv.step + 1] if 0 <= dv.step < len(cand) else cand

    items, d = ddmin(cut(ops, d), d, test, cut, deadline)
    # Nearer pfn 0: at 0, or at the same offset from a multiple of 2**max_order (where every
    # block keeps its alignment, so the operations mean the same).
    for base in (0, g.base_pfn % (1 << g.max_order)):
        if base == g.base_pfn or time.perf_counter() >= deadline:
            continue
        g2, old = g.replace(base_pfn=base), g.base_pfn

        def move(p: int, old: int = old, new: int = base, n: int = g.nr_pages) -> int:
            return p - old + new if old <= p < old + n else p

        cand = [map_pfns(op, move) for op in items]
        d2 = test(cand, g2)
        if d2 is not None:
            g, items, d = g2, cut(cand, d2), d2
            break
    return g, items, d


# -- the C reproducer -----------------------------------------------------------------------------

_C_ZERO = {"free": "PB_ZERO_FREE", "alloc": "PB_ZERO_ALLOC", "never": "PB_ZERO_NEVER"}
_C_PRELUDE = """\
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "pagebuddy_conform.h"

#define EXPECT(cond, ...)                                          \\
\tdo {                                                             \\
\t\tif (!(cond)) {                                                 \\
\t\t\tfprintf(stderr, "pb_repro: " __VA_ARGS__);                 \\
\t\t\tfputc('\\n', stderr);                                        \\
\t\t\treturn 1;                                                  \\
\t\t}                                                            \\
\t} while (0)
"""
_C_BLOCK = """
/* Whether the n bytes at pfn all read as `want`; then they are filled with `fill`, as conform
 * fills every new block. */
static int pb_repro_block(struct pb_pool *p, uint64_t pfn, uint64_t n, int want, int fill)
{
\tunsigned char *b = pb_page_address(p, pfn);
\tuint64_t i = 0;

\twhile (b && i < n && b[i] == want)
\t\ti++;
\tif (b && fill >= 0)
\t\tmemset(b, fill, n);
\treturn b && i == n;
}
"""
_C_LIST = """
/* Whether free list `order` holds exactly the n pfns of `want` (in that order if `ordered`). */
static int pb_repro_list(struct pb_pool *p, unsigned order, const uint64_t *want, uint64_t n,
\t\t\t int ordered)
{
\tuint64_t got[%d], k = pb_free_list(p, order, got, %d), i, j;

\tif (k != n)
\t\treturn 0;
\tfor (i = 0; i < n; i++) {
\t\tfor (j = ordered ? i : 0; j < n && got[j] != want[i]; j++)
\t\t\tif (ordered)
\t\t\t\treturn 0;
\t\tif (j == n)
\t\t\treturn 0;
\t}
\treturn 1;
}
"""


def _c_expect(index: int, op: Op, outcome: tuple[Any, BaseException | None]) -> list[str]:
    """The call of ``op`` and the check of its outcome (the model's)."""
    kind, arg = op[0], op[1]
    what = f"operation {index} ({format_op(op)})"
    value, exc = outcome
    call = (
        f"rc = pb_alloc(p, {arg}u, &pfn);" if kind == "alloc" else f"rc = pb_{kind}(p, {arg}ull);"
    )
    if isinstance(exc, IllegalAnswer):
        return [
            call,
            f'EXPECT(rc != 0 || pfn != {exc.pfn}ull, "{what}: returned pfn %llu: '
            f'{_c_string(str(exc))}", (unsigned long long)pfn);',
        ]
    code = _code(exc)
    if kind == "alloc" and code == 0:
        return [
            call,
            f'EXPECT(rc == 0 && pfn == {value}ull, "{what}: returned %d, pfn %llu; the model: '
            f'0, pfn {value}", rc, (unsigned long long)pfn);',
        ]
    name = ERRORS.get(code, "0")
    return [call, f'EXPECT(rc == {name}, "{what}: returned %d; the model: {name}", rc);']


def _code(exc: BaseException | None) -> int:
    from ._errors import OutOfMemory, PageError

    if exc is None:
        return 0
    if isinstance(exc, OutOfMemory):
        return -12
    if isinstance(exc, PageError):
        return -14
    return -22


def _c_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")


def c_reproducer(
    pair: _Pair, g: Geometry, ops: list[Op], d: Divergence, result: ConformResult
) -> str:
    """A C file whose ``pb_repro()`` replays ``ops`` through the ABI and checks each outcome
    against the model's: it returns 1 (with a line on standard error) where the
    implementation parts from the model, 0 if it agrees. A ``main`` calls it, unless
    ``PB_REPRO_NO_MAIN`` is defined."""
    steps: list[tuple[Op, Any, int]] = []  # (op, the model's outcome, its free pages)
    try:
        ls = Lockstep(g, pair.pool_cls, pair.model)
    except Divergence:  # the constructor: the model alone says what a fresh pool holds
        model: Any = pair.model(g.nr_pages, **g.kwargs()).inner
        seen: list[list[int]] | None = None
    else:
        model = ls.model.inner
        for op in ops:
            try:
                ls.apply(op)
            except (Divergence, ImplementationError):
                break
            finally:
                steps.append((op, ls.last[1], model.free_pages))
        try:
            seen = ls.pool.free_lists()
        except ImplementationError:
            seen = None
    lines = [
        f"/* Reproducer from pagebuddy conform {result.target} --level {result.level}"
        f"{' --misuse' if result.misuse else ''} --seed {result.seed}:",
        f" *   {_c_comment(implementation_words(str(d)))}",
        f" * {len(ops)} operation(s). Build it with the implementation and its adapter:",
        " *   pagebuddy conform --header > pagebuddy_conform.h",
        " *   cc -I. repro.c ADAPTER.c ALLOCATOR.c && ./a.out",
        " * ./a.out exits 1 (and says why) while the divergence is there, 0 once it is gone. */",
        _C_PRELUDE.rstrip("\n"),
    ]
    contents = g.arena != "none"
    lists = d.what in ("free_lists", "constructor") and "free_list" in pair.target.optional
    if contents:
        lines.append(_C_BLOCK.rstrip("\n"))
    if lists:
        lines.append((_C_LIST % (g.nr_pages, g.nr_pages)).rstrip("\n"))
    body = [
        f"struct pb_pool *p = pb_create({g.nr_pages}ull, {g.base_pfn:#x}ull, "
        f"{g.reserved_pages}ull, {g.order_cap}u, {_C_ZERO[pair.zero]}, {g.page_size}ull);",
        "uint64_t pfn = 0;",
        "int rc = 0;",
        "",
        'EXPECT(p != NULL, "pb_create returned NULL");',
    ]
    if d.step < 0:
        body += _c_state(model, "after pb_create", lists, pair.level, None)
    for i, (op, outcome, free) in enumerate(steps):
        body += [f"/* {i}: {format_op(op)} */", *_c_expect(i, op, outcome)]
        if contents and op[0] == "alloc" and outcome[1] is None:
            n = g.page_size << op[1]
            body.append(
                f'EXPECT(pb_repro_block(p, pfn, {n}ull, 0, {FILL:#x}), "operation {i}: the '
                f'new block at pfn %llu does not read as zero", (unsigned long long)pfn);'
            )
        body.append(
            f'EXPECT(pb_free_pages(p) == {free}ull, "after operation {i}: %llu free pages; the '
            f'model: {free}", (unsigned long long)pb_free_pages(p));'
        )
    if lists and d.step >= 0:
        body += _c_state(model, f"after operation {len(steps) - 1}", lists, pair.level, seen)
    if d.what == "page_count" and "page_count" in pair.target.optional:
        for pfn in range(g.base_pfn, g.base_pfn + g.nr_pages):
            want = model.page_count(pfn)
            body.append(
                f'EXPECT(pb_page_count(p, {pfn}ull) == {want}u, "at the end: page_count({pfn}) '
                f'is %u; the model: {want}", pb_page_count(p, {pfn}ull));'
            )
    if d.what == "contents" and d.op is None and contents:  # held blocks, at the end
        for pfn in range(g.base_pfn, g.base_pfn + g.nr_pages):
            if model.page_count(pfn) == 0:
                continue
            data = model.view(pfn).tobytes()
            if data.count(data[:1]) == len(data):  # one value throughout: checked
                body.append(
                    f"EXPECT(pb_repro_block(p, {pfn}ull, {len(data)}ull, {data[0]:#x}, -1), "
                    f'"at the end: the held block at pfn {pfn} does not read as {data[0]:#x}");'
                )
    body += ["pb_destroy(p);", "return 0;"]
    lines += ["", "int pb_repro(void)", "{"]
    lines += [("\t" + b) if b else "" for b in body]
    lines += [
        "}",
        "",
        "#ifndef PB_REPRO_NO_MAIN",
        "int main(void)",
        "{",
        "\treturn pb_repro();",
        "}",
        "#endif",
    ]
    return "\n".join(lines) + "\n"


def _c_state(
    model: Any, when: str, lists: bool, level: str, seen: list[list[int]] | None
) -> list[str]:
    """Checks of the free lists (with ``lists``: those that differ from the implementation's
    ``seen``, or all) and, after ``pb_create``, the free page count, as the model has them
    now."""
    free = model.free_pages
    out = []
    if when == "after pb_create":
        out.append(
            f'EXPECT(pb_free_pages(p) == {free}ull, "{when}: %llu free pages; the model: {free}", '
            f"(unsigned long long)pb_free_pages(p));"
        )
    if not lists:
        return out
    for k, blocks in enumerate(model.free_lists()):
        if seen is not None and k < len(seen) and seen[k] == blocks:
            continue
        name = f"want{k}"
        items = ", ".join(f"{b}ull" for b in blocks) or "0"
        shown = _c_string(str(blocks if len(blocks) <= 8 else [*blocks[:8], "..."]))
        out += [
            f"{{ static const uint64_t {name}[] = {{ {items} }};",
            f"  EXPECT(pb_repro_list(p, {k}, {name}, {len(blocks)}, {int(level == 'exact')}), "
            f'"{when}: free list {k} is not {shown}"); }}',
        ]
    return out


def implementation_words(text: str) -> str:
    """A divergence's text with the engine's word for the pool side, ``Pool``, replaced by
    what it is here: the implementation."""
    return re.sub(r"\bPool\b", "the implementation", text)


def _c_comment(text: str) -> str:
    return text.replace("*/", "* /")
