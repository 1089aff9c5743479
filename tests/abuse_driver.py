"""Abuse driver for pagebuddy pools; ``tests/test_abuse.py`` runs it in a child process.

    python tests/abuse_driver.py SCENARIO SEED STEPS

Everything is drawn from ``random.Random(SEED)``, so a failure replays exactly. Scenarios:

``side``
    Side-table pools of random geometry (every zero policy) over caller buffers, each driven in
    lockstep with a ``ReferencePool`` twin: random calls with random arguments (valid, huge,
    negative, wrong types, ``__index__`` objects, numpy scalars, bools, re-entrant and raising
    ``__index__``), random bytes written through held *and stale* views of both arenas. Every
    call must raise only a documented exception class, and the same result or class on both;
    free lists, free pages, refcounts and arena bytes must stay equal; ``check()`` must pass on
    both. The one exception: under ``zero="free"`` a stale write leaves free memory non-zero,
    which both pools' ``check()`` must then report (``CorruptionError`` about zeroing).

``intrusive``
    Intrusive-link pools driven the same way (no twin), plus forged links written through stale
    views over the free lists, and pools asked to use a block of another live pool as their
    arena, which both classes must refuse (``ValueError``) leaving the block as it was. A corrupted
    list may surface only as ``CorruptionError``, ``PageError``, ``OutOfMemory`` or
    ``ValueError`` (``TypeError`` stays possible for arguments of the wrong type) -- never as a
    crash, a hang, a write outside the arena, or a page handed out while it is still held.

``buffers``
    The constructor with every kind of buffer object (bytearray, memoryview, anonymous and file
    mmaps, numpy arrays of many dtypes and shapes, array.array, ctypes arrays, views of other
    pools) and random arguments. Read-only, non-contiguous and non-buffer objects must be
    refused with ``TypeError``, too-small ones and views of a live pool with ``ValueError``;
    accepted ones are used (views must write into the caller's buffer, bytes past the arena
    stay untouched) and must refuse resizing (``BufferError``) only while the pool or one of
    its views lives.

``stray_batches``
    Stray writes into the pages of plain and shared pools (``Pool(..., buffer=)`` and
    ``Pool.create_in``), with links in a side table or in the pages (and into a shared pool's
    side table, which lives in its buffer too), each followed by a batch
    call (``alloc_many``, ``put_many``, ``alloc_exact``): a batch that raises
    ``CorruptionError`` must leave the pool exactly as it was (free pages, every refcount, the
    free lists, and every byte of metadata, links and pages). STEPS is the number of writes;
    the summary counts each call's ``CorruptionError`` exceptions and the state changes among
    them (which must be 0).
``leaks``
    Random calls on every kind of pool (plain, intrusive, arena-less, cached, shared and an
    attached handle on it, ``ReferencePool``): allocations of every kind with every ``out``
    array, puts from every kind of input, references, splits, views kept and written, queries,
    drains, and refused calls with junk arguments. After a warm-up the resident size may grow
    by less than a byte a call (one leaked int a call is 32); every pool then gets its pages
    back and checks.

``catalogue``
    Each case a careless or hostile caller once broke, by name (see ``CATALOGUE``): two pools
    over one buffer, traces and pools that ask for more memory than there is, ``check()``
    committing the arena, tracebacks and non-JSON errors at the command line, trace integers,
    ``--plot`` paths, ``put_many`` half done, state changed on corruption, ``Pool`` and
    ``ReferencePool`` behaving differently, messages showing an object instead of its value,
    and what a buffer's owner can no longer do under a live pool. (Overflow in the Rust
    core's public helpers is not reachable from Python: ``cargo test`` covers it.)

Common to all: bytes before and after the arena (the pool gets a slice of a larger buffer) are
sentinels that must never change. Exit status 0 means no violation; 1 means a violation,
reported on stdout with the seed and the last calls. A crash kills the process with a signal
(``faulthandler`` prints the Python stack) and a hang is caught by the parent's timeout.
"""

from __future__ import annotations

import array
import contextlib
import copy
import ctypes
import faulthandler
import gc
import json
import mmap
import operator
import os
import pickle
import random
import struct
import subprocess
import sys
import tempfile
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from pagebuddy import CorruptionError, OutOfMemory, PageError, Pool, ReferencePool
from pagebuddy._lockstep import Divergence, Lockstep
from pagebuddy._rules import KIND_OF_METHOD, OPERATIONS, Geometry
from support import claim_pages, run_cli

NIL = 0xFFFFFFFF
SENTINEL = 0xA5

# Documented exception classes of each call, from the rulebook (exact classes: PageError is
# not a plain ValueError and vice versa).
CLASSES = {c.__name__: c for c in (TypeError, ValueError, PageError, OutOfMemory)}
DOCUMENTED: dict[str, set[type]] = {
    op.method: {CLASSES[name] for name in op.raises} for op in OPERATIONS.values()
}
# What a corrupted intrusive free list may add to any call.
CORRUPTED = {CorruptionError, PageError, OutOfMemory, ValueError}


class Violation(Exception):
    """The pool broke its contract (as opposed to raising a documented exception)."""


class Boom(Exception):
    """Raised on purpose by argument objects; it must come out of the call unchanged."""


# ------------------------------------------------------------------------- argument objects


class Index:
    """An int-like object; ``hook`` runs inside ``__index__`` (re-entrant calls)."""

    def __init__(self, value: int, hook: Callable[[], None] | None = None) -> None:
        self.value, self.hook = value, hook

    def __index__(self) -> int:
        if self.hook is not None:
            self.hook()
        return self.value

    def __repr__(self) -> str:
        return f"Index({self.value}{', hook' if self.hook else ''})"


class Raising:
    """``__index__`` raises Boom."""

    raised = 0

    def __index__(self) -> int:
        Raising.raised += 1
        raise Boom("from __index__")

    def __repr__(self) -> str:
        return "Raising()"


class NotAnInt:
    """``__index__`` returns a str: operator.index raises TypeError."""

    def __index__(self) -> Any:
        return "3"

    def __repr__(self) -> str:
        return "NotAnInt()"


class IntSub(int):
    pass


JUNK: list[Any] = [
    1.0,
    float("nan"),
    float("inf"),
    "3",
    "",
    None,
    [1],
    (1,),
    b"\x01",
    bytearray(b"\x01"),
    {1: 2},
    object(),
    1j,
    np.float64(2.0),
    np.True_,
    NotAnInt(),
    range(3),
]


class Context:
    """Random source, call log and counters shared by a scenario."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.log: deque[str] = deque(maxlen=40)
        self.step = 0
        self.counts: dict[str, int] = {}

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    def note(self, text: str) -> None:
        self.log.append(f"step {self.step}: {text}")

    def fail(self, message: str) -> None:
        raise Violation(message)


def wrap(ctx: Context, value: int) -> Any:
    """``value`` as some int-like object."""
    rng = ctx.rng
    kind = rng.randrange(6)
    if kind == 0:
        return Index(value)
    if kind == 1 and -(2**63) <= value < 2**63:
        return np.int64(value)
    if kind == 2 and 0 <= value < 2**64:
        return np.uint64(value)
    if kind == 3:
        return IntSub(value)
    if kind == 4 and value in (0, 1):
        return bool(value)
    return value


# ------------------------------------------------------------------------- pool under test


class Subject:
    """One pool (and, in the side scenario, its ReferencePool twin) plus what we know of it."""

    def __init__(
        self, ctx: Context, geometry: dict[str, Any], twin: bool, buffer: Any = None
    ) -> None:
        self.ctx = ctx
        self.geometry = geometry
        self.nr_pages = geometry["nr_pages"]
        self.page_size = geometry.get("page_size", 4096)
        self.base = geometry.get("base_pfn", 0)
        self.zero = geometry.get("zero", "free")
        self.size = self.nr_pages * self.page_size
        self.guarded: list[tuple[bytearray, int]] = []  # (whole buffer, lead)
        self.lead = ctx.rng.choice([0, 0, 8, 64, 4096])
        self.slack = ctx.rng.choice([0, 1, 64, 4096])
        pattern = ctx.rng.randbytes(self.size)
        if buffer is None:
            buffer = self.guarded_buffer(pattern)
        # A twin is a lockstep pair (the engine compares them); a lone pool is called directly.
        self.pair: Lockstep | None = None
        self.ref: ReferencePool | None = None
        if twin:
            g = Geometry.from_kwargs(**geometry, buffer=buffer)
            self.pair = Lockstep(
                g, Pool, ReferencePool, buffers=(buffer, self.guarded_buffer(pattern))
            )
            self.pool, self.ref = self.pair.pool, self.pair.model
        else:
            self.pool = Pool(**geometry, buffer=buffer)
        self.held: dict[int, int] = {}  # head pfn -> order, for every held block
        self.owner: dict[int, int] = {}  # page -> head of the held block it lies in
        for i in range(geometry.get("reserved_pages", 0)):
            self.add_block(self.base + i, 0)
        self.dirty_free_memory = False  # a stale write may have left free memory non-zero
        self.alive = True

    def guarded_buffer(self, pattern: bytes) -> memoryview:
        """A slice of a larger bytearray; the bytes around it are sentinels."""
        whole = bytearray([SENTINEL]) * (self.lead + self.size + self.slack)
        whole[self.lead : self.lead + self.size] = pattern
        self.guarded.append((whole, self.lead))
        return memoryview(whole)[self.lead :]

    def check_sentinels(self) -> None:
        for whole, lead in self.guarded:
            outside = whole[:lead] + whole[lead + self.size :]
            if outside.count(SENTINEL) != len(outside):
                self.ctx.fail("bytes outside the arena changed")

    # --- held-block bookkeeping (metadata lives outside the arena: it is always trustworthy)

    def add_block(self, head: int, order: int) -> None:
        for page, holder in claim_pages(self.owner, head, head, order):
            self.ctx.fail(
                f"pfn {page} handed out in block {head} (order {order}) while it lies in "
                f"held block {holder}"
            )
        self.held[head] = order

    def allocated(self, pfns: list[int], order: int) -> None:
        if len(set(pfns)) != len(pfns):
            self.ctx.fail(f"the same block returned twice: {pfns}")
        for pfn in pfns:
            if not isinstance(pfn, int) or not self.base <= pfn < self.base + self.nr_pages:
                self.ctx.fail(f"allocated pfn {pfn!r} outside the pool")
            if pfn % (1 << order):
                self.ctx.fail(f"block {pfn} of order {order} is misaligned")
            self.add_block(pfn, order)

    def split(self, head: int) -> None:
        order = self.held.get(head)
        if order is None:
            self.ctx.fail(f"split_page({head}) succeeded on a page not known to be held")
        for tail in range(head + 1, head + (1 << order)):
            self.held[tail] = 0
            self.owner[tail] = tail
        self.held[head] = 0

    def resync(self) -> None:
        """Forget blocks whose head was freed (put, put_many or a re-entrant call)."""
        for head in list(self.held):
            if self.pool.page_count(head) == 0:
                order = self.held.pop(head)
                for page in range(head, head + (1 << order)):
                    del self.owner[page]

    def rescan(self) -> None:
        """Learn held blocks a failed call left behind (a batch cut short by corruption)."""
        for pfn in range(self.base, self.base + self.nr_pages):
            if pfn not in self.held and self.pool.page_count(pfn) > 0:
                order = (self.pool.view(pfn).nbytes // self.page_size).bit_length() - 1
                self.add_block(pfn, order)

    def held_pages(self) -> int:
        return sum(1 << order for order in self.held.values())

    # --- random arguments

    def pfn_value(self) -> int:
        rng = self.ctx.rng
        end = self.base + self.nr_pages
        r = rng.random()
        if r < 0.45 and self.held:
            return rng.choice(list(self.held))
        if r < 0.75:
            return rng.randrange(self.base, end)
        return rng.choice([self.base - 1, end, 0, -1, 2**63, 2**64 - 1, 2**64, 2**100, -(2**100)])

    def pfn_arg(self) -> Any:
        rng = self.ctx.rng
        r = rng.random()
        if r < 0.7:
            return self.pfn_value()
        if r < 0.85:
            return wrap(self.ctx, self.pfn_value())
        if r < 0.92:
            return rng.choice(JUNK)
        if r < 0.95:
            return Raising()
        return Index(self.pfn_value(), hook=self.hook())

    def order_arg(self) -> Any:
        rng = self.ctx.rng
        max_order = self.pool.max_order
        r = rng.random()
        if r < 0.7:
            return min(rng.randrange(max_order), rng.randrange(max_order))
        if r < 0.8:
            return rng.choice([-1, max_order, 11, 2**32, 2**64, 2**70, -(2**70)])
        if r < 0.9:
            return wrap(self.ctx, rng.randrange(-1, max_order + 1))
        if r < 0.97:
            return rng.choice(JUNK)
        return Raising()

    def count_arg(self) -> Any:
        rng = self.ctx.rng
        r = rng.random()
        if r < 0.8:
            return rng.randrange(0, 6)
        if r < 0.9:
            return rng.choice([-1, 2**32, 2**64 - 1, 2**64, 2**70, -(2**70), self.nr_pages + 1])
        if r < 0.97:
            return rng.choice(JUNK)
        return wrap(self.ctx, rng.randrange(-1, 4))

    def pfns_arg(self) -> Callable[[], Any]:
        """A factory: each pool of a twin pair needs its own iterator."""
        rng = self.ctx.rng
        items = [self.pfn_arg() if rng.random() < 0.2 else self.pfn_value() for _ in range(9)]
        items = items[: rng.randrange(0, 9)]
        kind = rng.choice(["list", "list", "tuple", "gen", "dupes", "raising", "junk"])
        if kind == "dupes" and items:
            items = items + items[:1]
        if kind == "junk":
            junk = rng.choice([5, None, 1.5, object(), 2**70])
            return lambda: junk
        if kind == "tuple":
            return lambda: tuple(items)
        if kind == "gen":
            return lambda: (x for x in items)
        if kind == "raising":
            # Plain ints only: whether a bad element or the iterable's own error comes first
            # is not specified.
            items = [self.pfn_value() for _ in items]

            def boom() -> Any:
                yield from items
                Raising.raised += 1
                raise Boom("from the iterable")

            return boom
        return lambda: list(items)

    def hook(self) -> Callable[[], None]:
        """A call made from inside ``__index__``: read-only on twins, anything otherwise."""
        rng = self.ctx.rng
        choice = rng.randrange(4 if self.ref is None else 2)

        def hook() -> None:
            self.ctx.count("re-entrant calls")
            if choice == 0:
                self.pool.free_lists()
            elif choice == 1:
                self.pool.page_count(self.base)
                repr(self.pool)
            elif choice == 2:
                try:
                    pfn = self.pool.alloc_pages(0)
                except tuple(CORRUPTED):
                    return
                self.allocated([pfn], 0)
            else:
                with contextlib.suppress(CorruptionError):
                    self.pool.check()

        return hook


def outcome(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any, BaseException | None]:
    try:
        return fn(*args), None
    except Violation:
        raise  # found inside a re-entrant call
    except Exception as exc:
        return None, exc


class Driver:
    """Runs random operations on the live subjects of one scenario."""

    def __init__(self, ctx: Context, intrusive: bool) -> None:
        self.ctx = ctx
        self.intrusive = intrusive
        self.subjects: list[Subject] = []
        # Every view handed out: (native view, twin's view or None, its pool, its pfn).
        self.views: deque[tuple[memoryview, memoryview | None, Subject, int]] = deque(maxlen=64)

    # --- geometry

    def geometry(self) -> dict[str, Any]:
        rng = self.ctx.rng
        nr_pages = rng.choice([1, 2, 3, 5, 8, 9, 16, 17, 31, 32, 33, 64, 70])
        top = 2**64 - nr_pages - 1  # the very top of the pfn space is tested in test_pool.py
        base = rng.choice([0, 0, 1, 3, 5, 37, 64, 2**20 + 3, 2**32, 2**63 - 1, top, top - 17])
        return {
            "nr_pages": nr_pages,
            "page_size": rng.choice([64, 64, 128, 256]),
            "base_pfn": base,
            "reserved_pages": min(nr_pages, rng.choice([0, 0, 0, 1, 2, nr_pages // 2, nr_pages])),
            "max_order": rng.choice([1, 2, 3, 4, 6, 11, 11, 12, 2**40]),
            "zero": rng.choice(["free", "alloc", "never"]),
            "_links": "intrusive" if self.intrusive else "side",
        }

    def new_subject(self) -> None:
        geometry = self.geometry()
        buffer = None
        outers = [s for s in self.subjects if s.held]
        if self.intrusive and outers and self.ctx.rng.random() < 0.3:
            # An arena inside a held block of another pool, which may free it under us: two
            # pools over one memory, refused (ValueError) with the block left as it was.
            outer = self.ctx.rng.choice(outers)
            head = self.ctx.rng.choice(list(outer.held))
            view = outer.pool.view(head)
            pages = view.nbytes // geometry["page_size"]
            if pages:
                nested = dict(geometry, nr_pages=min(geometry["nr_pages"], pages))
                nested["reserved_pages"] = min(nested["reserved_pages"], nested["nr_pages"])
                before = bytes(view)
                cls = self.ctx.rng.choice([Pool, ReferencePool])
                try:
                    cls(**nested, buffer=view)
                except ValueError as exc:
                    if "overlaps the arena of a live Pool" not in str(exc):
                        self.ctx.fail(f"nested arena refused for another reason: {exc}")
                else:
                    self.ctx.fail(f"{cls.__name__} accepted a block of a live pool as its arena")
                if bytes(view) != before:
                    self.ctx.fail("a refused nested arena changed the block")
                self.ctx.count("refused nested arenas")
        self.ctx.note(f"new pool {geometry}")
        subject = Subject(self.ctx, geometry, twin=not self.intrusive, buffer=buffer)
        self.subjects.append(subject)
        if len(self.subjects) > 3:
            self.retire(self.subjects.pop(0))

    def retire(self, subject: Subject) -> None:
        """Final checks on a pool we stop using; its views stay behind as stale views."""
        self.final_checks(subject)
        subject.alive = False
        del subject.pool, subject.ref, subject.pair
        if self.ctx.rng.random() < 0.5:
            gc.collect()
        subject.check_sentinels()

    # --- one step

    def call(self, s: Subject, op: str, make_args: Callable[[], tuple[Any, ...]]) -> Any:
        """Call ``op`` on the pool (a twin pair through the engine); police the exception."""
        raised_before = Raising.raised
        if s.pair is not None:
            try:
                s.pair.apply((KIND_OF_METHOD[op],), make_args)
            except Divergence as d:
                self.ctx.fail(str(d))
            (result, exc), (ref_result, _) = s.pair.last
            args = make_args()
        else:
            args = make_args()
            result, exc = outcome(getattr(s.pool, op), args)
        shown = ", ".join(repr(a)[:40] for a in args)
        self.ctx.note(
            f"{op}({shown}) -> {type(exc).__name__ + ': ' + str(exc) if exc else repr(result)}"
        )
        if exc is not None:
            self.ctx.count(type(exc).__name__)
            allowed = set(DOCUMENTED[op])
            if self.intrusive:
                allowed |= CORRUPTED
            if Raising.raised != raised_before:
                allowed.add(Boom)
            if type(exc) not in allowed:
                self.ctx.fail(f"{op} raised {type(exc).__name__}: {exc}")
            if self.intrusive:
                # Under corruption a failed batch may have allocated part of its blocks.
                s.resync()
                s.rescan()
        if exc is None and op == "view":
            self.views.append((result, ref_result if s.pair else None, s, plain_int(args[0])))
        if exc is None:
            if op in ("alloc_pages", "alloc_many"):
                pfns = [result] if op == "alloc_pages" else result
                if op == "alloc_many" and len(pfns) != plain_int(args[1]):
                    self.ctx.fail(f"alloc_many returned {len(pfns)} blocks")
                if pfns:
                    s.allocated(pfns, plain_int(args[0]))
            elif op == "split_page":
                s.split(plain_int(args[0]))
        return result

    def write(self) -> None:
        """Random bytes through a random view: held, stale, or of a pool long gone."""
        if not self.views:
            return
        rng = self.ctx.rng
        live = [v for v in self.views if v[2].alive]
        native, ref, subject, pfn = rng.choice(live if live and rng.random() < 0.8 else self.views)
        if not subject.alive:
            self.ctx.count("writes into dead pools")
        elif subject.held.get(pfn) == (native.nbytes // subject.page_size).bit_length() - 1:
            self.ctx.count("writes into held blocks")
        else:
            self.ctx.count("stale writes")  # the block was freed (and maybe reused) since
        n = native.nbytes
        r = rng.random()
        if r < 0.4:
            off = rng.randrange(n)
            data = rng.randbytes(rng.randrange(1, min(64, n - off) + 1))
        elif r < 0.5:
            off, data = 0, bytes([rng.randrange(256)]) * n
        else:
            # A forged free-list link (prev, next) at the start of one of the view's pages.
            page = rng.randrange(max(1, n // 64)) * 64
            nr = max(1, n // 64)
            pick = lambda: rng.choice([NIL, 0, 1, nr, nr - 1, rng.randrange(2**32), 2**31])  # noqa: E731
            off, data = page, struct.pack("<II", pick(), pick())
        native[off : off + len(data)] = data
        if ref is not None:
            ref[off : off + len(data)] = data
        for s in self.subjects:
            s.dirty_free_memory = True
        self.ctx.note(f"write {len(data)} bytes at {off} of a {n}-byte view")

    def step(self) -> None:
        rng = self.ctx.rng
        if not self.subjects or rng.random() < 0.004:
            self.new_subject()
        s = rng.choice(self.subjects)
        op = rng.choice(
            ["alloc_pages"] * 4
            + ["put_page"] * 4
            + ["alloc_many", "put_many", "get_page", "split_page", "page_count"]
            + ["view"] * 3
            + ["write"] * 4
            + ["check", "free_lists", "gc"]
        )
        if op == "write":
            self.write()
        elif op == "gc":
            gc.collect()
        elif op == "alloc_pages":
            args: tuple[Any, ...] = (s.order_arg(),)
            self.call(s, op, lambda: args)
        elif op == "alloc_many":
            args = (s.order_arg(), s.count_arg())
            self.call(s, op, lambda: args)
        elif op == "put_many":
            make = s.pfns_arg()
            self.call(s, op, lambda: (make(),))
        elif op in ("check", "free_lists"):
            self.check_state(s, full=op == "check")
        else:
            args = (s.pfn_arg(),)
            self.call(s, op, lambda: args)
        s.resync()
        if s.pair is not None and rng.random() < 0.25:
            self.compare(s)

    # --- consistency

    def compare(self, s: Subject) -> None:
        """Twins agree on everything observable (the engine's comparisons but ``check()``)."""
        assert s.pair is not None
        try:
            s.pair.compare_state()
            s.pair.compare_counts()
            s.pair.compare_contents()
        except Divergence as d:
            self.ctx.fail(str(d))
        if s.pool.free_pages != s.nr_pages - s.held_pages():
            self.ctx.fail(f"free_pages {s.pool.free_pages} != {s.nr_pages} - {s.held_pages()}")
        if repr(s.pool).split("(", 1)[1] != repr(s.ref).split("(", 1)[1]:
            self.ctx.fail(f"repr differs: {s.pool!r} / {s.ref!r}")

    def check_state(self, s: Subject, full: bool) -> None:
        lists = s.pool.free_lists()
        if len(lists) != s.pool.max_order:
            self.ctx.fail(f"{len(lists)} free lists for max_order {s.pool.max_order}")
        repr(s.pool)
        _ = s.pool.free_pages
        if not full:
            return
        _, exc = outcome(s.pool.check, ())
        self.ctx.note(f"check() -> {exc!r}")
        if s.ref is None:
            if exc is not None:
                self.ctx.count("CorruptionError")
                if type(exc) is not CorruptionError:
                    self.ctx.fail(f"check raised {type(exc).__name__}: {exc}")
            return
        _, ref_exc = outcome(s.ref.check, ())
        if type(exc) is not type(ref_exc):
            self.ctx.fail(f"check: Pool {exc!r} but ReferencePool {ref_exc!r}")
        if exc is not None:
            # Side tables never corrupt; only the zeroing promise can be broken from outside.
            if not (
                type(exc) is CorruptionError
                and s.zero == "free"
                and s.dirty_free_memory
                and "zero" in str(exc)
            ):
                self.ctx.fail(f"check raised {type(exc).__name__}: {exc}")
            self.ctx.count("check: free memory not zero")

    def final_checks(self, s: Subject) -> None:
        self.check_state(s, full=True)
        if s.pair is not None:
            self.compare(s)
        s.check_sentinels()


def plain_int(value: Any) -> int:
    """The int an accepted argument stood for, without running its hook again."""
    return value.value if isinstance(value, Index) else operator.index(value)


def run_pools(ctx: Context, intrusive: bool, steps: int) -> None:
    driver = Driver(ctx, intrusive)
    for ctx.step in range(steps):
        driver.step()
    for s in driver.subjects:
        driver.final_checks(s)
    # Views of every pool, live or dead, take one more round of writes; then all go.
    for _ in range(200):
        driver.write()
    driver.subjects.clear()
    gc.collect()


# ------------------------------------------------------------------------- buffers scenario


def file_mapping(size: int, access: int) -> mmap.mmap:
    fd, path = tempfile.mkstemp(prefix="pagebuddy-abuse-")
    try:
        os.write(fd, bytes([SENTINEL]) * size)
        return mmap.mmap(fd, size, access=access)
    finally:
        os.close(fd)
        os.unlink(path)


def pool_view(size: int, keep_pool: bool) -> memoryview:
    """``size`` bytes of a block of another pool, which may already be gone."""
    pages = max(1, -(-size // 64))
    order = (pages - 1).bit_length()
    helper = Pool(1 << order, page_size=64)
    view = helper.view(helper.alloc_pages(order))[:size]
    if keep_pool:
        KEEP.append(helper)
    return view


KEEP: list[Any] = []

# Objects the pool must accept, by size in bytes (a multiple of 64).
WRITABLE: dict[str, Callable[[int], Any]] = {
    "bytearray": lambda n: bytearray(n),
    "memoryview": lambda n: memoryview(bytearray(n)),
    "memoryview-slice": lambda n: memoryview(bytearray(n + 24))[8 : 8 + n],
    "memoryview-2d": lambda n: memoryview(bytearray(n)).cast("B", (n // 8, 8)),
    "mmap": lambda n: mmap.mmap(-1, n),
    "mmap-file": lambda n: file_mapping(n, mmap.ACCESS_WRITE),
    "mmap-copy": lambda n: file_mapping(n, mmap.ACCESS_COPY),
    "numpy-uint8": lambda n: np.zeros(n, dtype=np.uint8),
    "numpy-int16": lambda n: np.zeros(n // 2, dtype=np.int16),
    "numpy-float32": lambda n: np.zeros(n // 4, dtype=np.float32),
    "numpy-float64": lambda n: np.full(n // 8, np.pi),
    "numpy-big-endian": lambda n: np.zeros(n // 8, dtype=">f8"),
    "numpy-complex128": lambda n: np.zeros(n // 16, dtype=np.complex128),
    "numpy-bool": lambda n: np.zeros(n, dtype=bool),
    "numpy-2d-int32": lambda n: np.zeros((n // 64, 16), dtype=np.int32),
    "numpy-3d-uint16": lambda n: np.zeros((2, n // 64, 16), dtype=np.uint16),
    "numpy-structured": lambda n: np.zeros(n // 16, dtype=[("a", "<i8"), ("b", "<f8")]),
    "array-B": lambda n: array.array("B", bytes(n)),
    "array-d": lambda n: array.array("d", [0.0] * (n // 8)),
    "ctypes-char": lambda n: (ctypes.c_char * n)(),
    "ctypes-double": lambda n: (ctypes.c_double * (n // 8))(),
    "ctypes-2d": lambda n: ((ctypes.c_int32 * 4) * (n // 16))(),
    "dead-pool-view": lambda n: pool_view(n, keep_pool=False),
}
# numpy object arrays are left out on purpose: they export PyObject pointers as their buffer,
# and any raw write into them (through a pool or a plain memoryview) crashes the interpreter.


def read_only_numpy(n: int) -> np.ndarray:
    arr = np.zeros(n // 8)
    arr.flags.writeable = False
    return arr


REFUSED: dict[str, tuple[Callable[[int], Any], type]] = {
    "bytes": (lambda n: bytes(n), TypeError),
    "memoryview-of-bytes": (lambda n: memoryview(bytes(n)), TypeError),
    "read-only-memoryview": (lambda n: memoryview(bytearray(n)).toreadonly(), TypeError),
    "read-only-numpy": (read_only_numpy, TypeError),
    "numpy-frombuffer-bytes": (lambda n: np.frombuffer(bytes(n), dtype=np.uint8), TypeError),
    "read-only-mmap": (lambda n: file_mapping(n, mmap.ACCESS_READ), TypeError),
    "read-only-pool-view": (lambda n: pool_view(n, keep_pool=True).toreadonly(), TypeError),
    # Memory of a live pool is that pool's: a second pool over it is refused.
    "pool-view": (lambda n: pool_view(n, keep_pool=True), ValueError),
    "memoryview-step-2": (lambda n: memoryview(bytearray(2 * n))[::2], TypeError),
    "numpy-step-2": (lambda n: np.zeros(2 * n, dtype=np.uint8)[::2], TypeError),
    "numpy-fortran": (lambda n: np.zeros((n // 8, 8), dtype=np.uint8, order="F"), TypeError),
    "numpy-transposed": (lambda n: np.zeros((8, n // 8), dtype=np.uint8).T, TypeError),
    "numpy-column": (lambda n: np.zeros((n, 2), dtype=np.uint8)[:, 0], TypeError),
    "list": (lambda n: [0] * n, TypeError),
    "str": (lambda n: "x" * n, TypeError),
    "int": (lambda n: n, TypeError),
    "float": (lambda n: float(n), TypeError),
    "dict": (lambda n: {}, TypeError),
    "object": (lambda n: object(), TypeError),
    "range": (lambda n: range(n), TypeError),
    "index": (lambda n: Index(n), TypeError),
    "empty-bytearray": (lambda n: bytearray(), ValueError),
    "empty-numpy": (lambda n: np.zeros(0), ValueError),
    "numpy-0d": (lambda n: np.array(1.0), ValueError),
}


def as_bytes(obj: Any) -> memoryview:
    """The caller's own view of an arena object, as flat bytes."""
    view = memoryview(obj)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def junk_geometry(ctx: Context) -> dict[str, Any]:
    """Constructor keywords with random, often invalid, values (never an oversized arena)."""
    rng = ctx.rng

    def value(good: list[Any]) -> Any:
        r = rng.random()
        if r < 0.6:
            return rng.choice(good)
        if r < 0.75:
            return rng.choice([-1, 0, 2**31, 2**32 - 1, 2**64, 2**70, -(2**70), True, False])
        if r < 0.85:
            return wrap(ctx, rng.choice(good))
        if r < 0.97:
            return rng.choice([x for x in JUNK if x is not None])
        return Raising()

    geometry = {
        "nr_pages": value([1, 3, 4, 8]),
        "page_size": value([64, 128]),
        "base_pfn": value([0, 5, 2**40]),
        "reserved_pages": value([0, 1, 2]),
        "max_order": value([1, 3, 11]),
        "zero": rng.choice(["free", "alloc", "never", "FREE", b"free", 3, ""]),
        "_links": rng.choice(["side", "intrusive", "x", 0]),
    }
    for key in rng.sample(list(geometry), rng.randrange(0, 4)):
        del geometry[key]
    return geometry


def exercise(ctx: Context, pool: Any, obj: Any, need: int) -> list[memoryview]:
    """Use an accepted arena: views write into the caller's bytes, the rest stays put."""
    mine = as_bytes(obj)
    tail = bytes(mine[need:])
    views = []
    for _ in range(ctx.rng.randrange(1, 6)):
        try:
            pfn = pool.alloc_pages(ctx.rng.randrange(pool.max_order))
        except OutOfMemory:
            break
        view = pool.view(pfn)
        data = ctx.rng.randbytes(view.nbytes)
        view[:] = data
        off = (pfn - pool.base_pfn) * pool.page_size
        if mine[off : off + len(data)] != data:
            ctx.fail(f"{type(obj).__name__}: a view write did not land at offset {off}")
        views.append(view)
        if ctx.rng.random() < 0.5:
            pool.put_page(pfn)  # the view is stale now
    pool.check()
    if bytes(mine[need:]) != tail:
        ctx.fail(f"{type(obj).__name__}: bytes past the arena changed")
    mine.release()
    return views


def pinned(obj: Any) -> bool | None:
    """Try to resize or close ``obj``: True if refused with BufferError, None if n/a."""
    try:
        if isinstance(obj, bytearray):
            obj.append(0)
            obj.pop()
        elif isinstance(obj, array.array):
            obj.append(obj[0] if len(obj) else 0)
            obj.pop()
        elif isinstance(obj, mmap.mmap):
            obj.close()
        else:
            return None
    except BufferError:
        return True
    return False


def run_buffers(ctx: Context, steps: int) -> None:
    kinds = list(WRITABLE) + list(REFUSED)
    for ctx.step in range(steps):
        rng = ctx.rng
        valid = rng.random() < 0.75
        kind = rng.choice(kinds)
        if valid:
            page_size = rng.choice([64, 128, 256])
            nr_pages = rng.choice([1, 2, 3, 4, 7, 8, 16])
            geometry: dict[str, Any] = {
                "nr_pages": nr_pages,
                "page_size": page_size,
                "base_pfn": rng.choice([0, 1, 6, 2**50 + 3]),
                "reserved_pages": rng.randrange(nr_pages + 1),
                "max_order": rng.choice([1, 2, 11]),
                "zero": rng.choice(["free", "alloc", "never"]),
                "_links": rng.choice(["side", "intrusive"]),
            }
            need = nr_pages * page_size
        else:
            geometry = junk_geometry(ctx)
            need = 4 * 64
        size = need
        expected: type | None = None
        if kind in WRITABLE:
            r = rng.random()
            if r < 0.2:
                size = max(64, need - 64 * rng.randrange(1, need // 64 + 1))
                expected = ValueError if size < need else None
            elif r < 0.5:
                size = need + 64 * rng.randrange(1, 8)
            make = WRITABLE[kind]
        else:
            make, expected = REFUSED[kind]
        results = []
        for cls in (Pool, ReferencePool):
            obj = make(size)
            raised = Raising.raised
            try:
                pool = cls(**geometry, buffer=obj)
            except Exception as exc:
                results.append(type(exc))
                allowed = {TypeError, ValueError} | ({Boom} if Raising.raised != raised else set())
                ctx.note(f"{cls.__name__}({geometry}, buffer={kind}[{size}]) -> {exc!r}")
                if type(exc) not in allowed:
                    ctx.fail(
                        f"{cls.__name__} with a {kind} buffer raised {type(exc).__name__}: {exc}"
                    )
                if valid and type(exc) is expected:
                    ctx.count(f"refused {kind}")
                if valid and type(exc) is not expected:
                    ctx.fail(
                        f"{cls.__name__} with a {kind} buffer of {size} bytes raised {exc!r}, "
                        f"not {expected}"
                    )
                continue
            results.append(None)
            ctx.note(f"{cls.__name__}({geometry}, buffer={kind}[{size}]) -> ok")
            if valid and expected is not None:
                ctx.fail(f"{cls.__name__} accepted a {kind} buffer of {size} bytes")
            ctx.count(f"accepted {kind}")
            views = exercise(ctx, pool, obj, pool.nr_pages * pool.page_size)
            if pinned(obj) is False:
                ctx.fail(f"{kind} could be resized or closed under a live {cls.__name__}")
            del pool
            gc.collect()
            if views and pinned(obj) is False:
                ctx.fail(f"{kind} could be resized under a live view")
            for view in views:
                view[: min(8, view.nbytes)] = b"\xff" * min(8, view.nbytes)  # still valid memory
                view.release()
            gc.collect()
            if pinned(obj) is True:
                ctx.fail(f"{kind} still pinned after its {cls.__name__} and views are gone")
            if isinstance(obj, mmap.mmap) and not obj.closed:
                obj.close()
        if valid and results[0] is not results[1]:
            ctx.fail(f"{kind}: Pool {results[0]} but ReferencePool {results[1]}")
        KEEP.clear()


# ------------------------------------------------------------------- stray_batches scenario

#: Offsets of ``meta_off`` and ``links_off`` in a shared pool's fixed header. Everything from
#: ``meta_off`` on (metadata, side-table links, pages) is state; the header before it also holds
#: the undo journal, which a refused call may write without changing the pool.
META_OFF_AT, LINKS_OFF_AT = 56, 64


class StrayTarget:
    """One pool of the ``stray_batches`` scenario and the bytes it lives in."""

    def __init__(self, ctx: Context) -> None:
        rng = ctx.rng
        self.shared = rng.random() < 0.5
        self.links = rng.choice(["side", "intrusive", "intrusive"])
        self.page_size = 64
        zero = rng.choice(["free", "alloc", "never"])
        max_order = rng.choice([3, 5, 11])
        if self.shared:
            self.buffer = bytearray(rng.choice([8, 16, 32]) * 1024)
            self.pool = Pool.create_in(
                self.buffer, page_size=64, zero=zero, links=self.links, max_order=max_order
            )
            self.state_from = struct.unpack_from("=Q", self.buffer, META_OFF_AT)[0]
            self.links_at = struct.unpack_from("=Q", self.buffer, LINKS_OFF_AT)[0]
        else:
            nr = rng.choice([16, 32, 64, 100])
            self.buffer = bytearray(nr * 64)
            self.pool = Pool(
                nr, page_size=64, buffer=self.buffer, zero=zero, max_order=max_order,
                _links=self.links,
            )  # fmt: skip
            self.state_from = self.links_at = 0
        self.kind = f"{'shared' if self.shared else 'plain'}-{self.links}"
        # Where the pages lie in the buffer: a held page's view tells.
        self.pages_at = -1
        self.held: list[int] = []

    def state(self) -> tuple[Any, ...]:
        pool = self.pool
        pfns = range(pool.base_pfn, pool.base_pfn + pool.nr_pages)
        counts = [pool.page_count(p) for p in pfns]
        return pool.free_pages, counts, pool.free_lists(), bytes(self.buffer[self.state_from :])

    def page_offset(self, pfn: int) -> int:
        if self.pages_at < 0:
            if not self.held:
                return -1
            head = self.held[0]
            self.pages_at = (
                offset_in(self.buffer, self.pool, head) - (head - self.pool.base_pfn) * 64
            )
        return self.pages_at + (pfn - self.pool.base_pfn) * 64


def offset_in(buffer: bytearray, pool: Pool, held: int) -> int:
    """Where the held page `held` of `pool` lies in `buffer`, the pool's bytes."""
    view = np.frombuffer(pool.view(held), dtype=np.uint8)
    return int(view.ctypes.data - np.frombuffer(buffer, dtype=np.uint8).ctypes.data)


def stray_write(ctx: Context, t: StrayTarget) -> None:
    """A stray write: mostly a link-sized value over a free block's link (a page index of the
    pool, NIL or anything), at the start of its page or, in a shared pool with a side table, in
    that table; sometimes random bytes anywhere in a page."""
    rng, pool = ctx.rng, t.pool
    pfn = pool.base_pfn + rng.randrange(pool.nr_pages)
    at = t.page_offset(pfn)
    if at < 0:
        return
    if rng.random() < 0.8:
        lists = [p for order in pool.free_lists() for p in order]
        if lists:
            pfn = rng.choice(lists)
            at = t.page_offset(pfn)
        if t.shared and t.links == "side":
            at = t.links_at + 8 * (pfn - pool.base_pfn)
        value = rng.choice([rng.randrange(pool.nr_pages), NIL, rng.getrandbits(32)])
        struct.pack_into("=I", t.buffer, at + 4 * rng.randrange(2), value)
    else:
        off = rng.randrange(t.page_size - 4)
        t.buffer[at + off : at + off + 4] = rng.randbytes(4)
    ctx.count("writes")


def stray_batch(ctx: Context, t: StrayTarget) -> None:
    """One batch call on `t`; a CorruptionError must leave its state as it was."""
    rng, pool = ctx.rng, t.pool
    call = rng.choice(["alloc_many", "alloc_many", "put_many", "put_many", "alloc_exact"])
    before = t.state()
    try:
        if call == "alloc_many":
            order = rng.choice([0, 0, 1, 2])
            t.held += pool.alloc_many(order, rng.randrange(1, 12))
        elif call == "put_many":
            if not t.held:
                return
            rng.shuffle(t.held)
            n = rng.randrange(1, len(t.held) + 1)
            batch = sorted(t.held[:n]) if rng.random() < 0.5 else t.held[:n]
            pool.put_many(batch)
            gone = set(batch)
            t.held = [p for p in t.held if p not in gone]
        else:
            n = rng.randrange(1, 9)
            head = pool.alloc_exact(n)
            t.held += range(head, head + n)
    except CorruptionError as exc:
        ctx.count(f"{t.kind} {call} CorruptionError")
        if t.state() != before:
            ctx.count(f"{t.kind} {call} changed")
            ctx.fail(f"{t.kind} {call} raised {exc} and changed the pool")
    except (OutOfMemory, PageError, ValueError):
        pass
    # Learn what the pool holds (a refused batch left everything as it was).
    t.held = [p for p in t.held if pool.page_count(p) > 0]


def run_stray_batches(ctx: Context, steps: int) -> None:
    target = StrayTarget(ctx)
    for ctx.step in range(steps):
        if ctx.step % 50 == 0 or (not target.pool.free_pages and not target.held):
            target = StrayTarget(ctx)
            ctx.note(f"new {target.kind} pool")
            ctx.count(f"{target.kind} pools")
            target.held = target.pool.alloc_many(0, target.pool.free_pages // 2)
        stray_write(ctx, target)
        for _ in range(ctx.rng.randrange(1, 4)):
            stray_batch(ctx, target)


# ------------------------------------------------------------------------- catalogue scenario


def expect_usage_error(
    ctx: Context, proc: subprocess.CompletedProcess[bytes], json_out: bool
) -> None:
    """Exit 2, no traceback, one line on stderr or one JSON error object on stdout."""
    out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    shown = f"{proc.args[3:]}: exit {proc.returncode}, stdout {out[-300:]!r}, stderr {err[-300:]!r}"
    if proc.returncode != 2 or "Traceback" in out + err:
        ctx.fail(f"not a usage error: {shown}")
    if json_out:
        try:
            obj = json.loads(out)
        except ValueError:
            ctx.fail(f"--json printed no JSON object: {shown}")
        if obj.get("ok") is not False or obj.get("exit_code") != 2 or not obj.get("error"):
            ctx.fail(f"--json error object incomplete: {shown}")
    elif out or len(err.strip().splitlines()) != 1:
        ctx.fail(f"not one line on stderr: {shown}")


def raised(fn: Callable[[], Any]) -> BaseException | None:
    try:
        fn()
    except Exception as exc:
        return exc
    return None


def forge(view: memoryview, prev: int, next_: int) -> None:
    view[:8] = struct.pack("<II", prev, next_)


def case_two_pools_one_buffer(ctx: Context) -> None:
    for first, second in [(Pool, Pool), (Pool, ReferencePool), (ReferencePool, Pool)]:
        whole = bytearray(16 * 64)
        pool = first(16, page_size=64, buffer=whole)
        pfn = pool.alloc_pages(2)
        pool.view(pfn)[:] = b"\x5a" * 256
        before = bytes(whole)
        for buffer in (whole, memoryview(whole)[64 * 3 :], pool.view(pfn)):
            exc = raised(lambda b=buffer, c=second: c(2, page_size=64, buffer=b))
            if type(exc) is not ValueError or "overlaps" not in str(exc):
                ctx.fail(f"{second.__name__} over a live {first.__name__}'s arena: {exc!r}")
        if bytes(whole) != before:
            ctx.fail("a refused pool wrote into the live pool's arena")
        del pool
        gc.collect()
        second(16, page_size=64, buffer=whole).check()  # the memory is free for a pool again


def case_trace_asks_for_too_much(ctx: Context) -> None:
    trace = b"pagebuddy-trace v1 nr_pages=67108864 page_size=64 arena=buffer\nalloc 0\n"
    proc = run_cli("replay", "-", "--json", stdin=trace)
    expect_usage_error(ctx, proc, True)
    if "pages" not in json.loads(proc.stdout)["reason"]:
        ctx.fail(f"the refusal does not say what is too much: {proc.stdout!r}")
    model = ReferencePool(2**22, page_size=64)  # O(free blocks), not an object per page
    model.check()  # how long it takes is a benchmark's: benches/targets.py
    if model.free_pages != 2**22:
        ctx.fail(f"ReferencePool of 2**22 pages has {model.free_pages} free pages")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * mmap.PAGESIZE


def case_check_commits_nothing(ctx: Context) -> None:
    if not sys.platform.startswith("linux"):
        return
    pool = Pool(2**18, page_size=4096)  # 1 GiB, mapped and not committed
    before = rss()
    pool.check()
    if rss() - before > 16 << 20:
        ctx.fail(f"check() committed {(rss() - before) >> 20} MiB of the arena")


def case_cli_tracebacks(ctx: Context) -> None:
    for pages in ("1", "15", "4294967295"):
        for json_out in (False, True):
            argv = ["bench", "--tiny", "--pages", pages] + (["--json"] if json_out else [])
            expect_usage_error(ctx, run_cli(*argv), json_out)
    binary = b"pagebuddy-trace v1 nr_pages=8\nput \xff\xfe\n"
    proc = run_cli("replay", "-", stdin=binary, PYTHONIOENCODING="utf-8")
    expect_usage_error(ctx, proc, False)


def case_cli_json_errors(ctx: Context) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for argv in (
            ["fuzz", "--ops", "-1"],
            ["fuzz", "--seconds", "0"],
            ["replay", os.path.join(tmp, "missing.trace")],
            ["replay", tmp],
            ["fuzz", "--pages", "4294967295"],
            ["fuzz", "--reserved", "100", "--pages", "8"],
            ["demo", "--plot", os.path.join(tmp, "no", "dir", "x.png")],
            ["no-such-command"],
            ["replay", "/nonexistent"],
            ["demo", "--no-such-flag"],
        ):
            expect_usage_error(ctx, run_cli(*argv, "--json"), True)


def case_trace_integers(ctx: Context) -> None:
    from pagebuddy import _trace

    big = "9" * 4300
    (section,) = _trace.parse_trace(["pagebuddy-trace v1 nr_pages=8", "put -0x10", f"get {big}"])
    if section.ops != [("put", -16), ("get", int(big))]:
        ctx.fail(f"integers misread: {section.ops!r}")
    exc = raised(lambda: _trace.parse_trace(["pagebuddy-trace v1 nr_pages=8", "put " + "9" * 5000]))
    if not isinstance(exc, _trace.TraceError) or "digits" not in str(exc):
        ctx.fail(f"a 5000-digit integer: {exc!r}")


def case_plot_paths(ctx: Context) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "noext")
        proc = run_cli("demo", "--ops", "300", "--plot", path, "--json")
        if proc.returncode != 0 or sorted(os.listdir(tmp)) != ["noext"]:
            ctx.fail(f"--plot noext wrote {os.listdir(tmp)} (exit {proc.returncode})")
        expect_usage_error(ctx, run_cli("demo", "--plot", tmp), False)


def case_put_many_all_or_nothing(ctx: Context) -> None:
    for cls in (Pool, ReferencePool):
        pool = cls(32, page_size=64, max_order=1)
        a, b = pool.alloc_pages(0), pool.alloc_pages(0)
        free = pool.free_pages
        exc = raised(lambda p=pool, a=a, b=b: p.put_many([a, 31, b]))
        if type(exc) is not PageError or "pfns[1]" not in str(exc):
            ctx.fail(f"{cls.__name__}.put_many with 31 not held: {exc!r}")
        if (pool.page_count(a), pool.page_count(b), pool.free_pages) != (1, 1, free):
            ctx.fail(f"{cls.__name__}.put_many changed the pool before raising")


def case_corruption_changes_nothing(ctx: Context) -> None:
    pool = Pool(8, page_size=64, zero="never", _links="intrusive")
    pool.alloc_many(0, 8)
    stale = pool.view(0)
    pool.put_many([0, 2])  # the order-0 list is 0, 2: linked (a block alone has no link)
    forge(stale, 2**31, 2**31)
    free = pool.free_pages
    if type(raised(lambda: pool.put_page(1))) is not CorruptionError:
        ctx.fail("put_page next to a forged link did not report corruption")
    if (pool.page_count(1), pool.free_pages) != (1, free):
        ctx.fail("put_page changed the pool before reporting corruption")
    pool = Pool(8, page_size=64, zero="never", _links="intrusive")
    pool.alloc_many(0, 8)
    stale = pool.view(2)
    pool.put_many([0, 2, 4])  # 0 -> 2 -> 4: the tail's link is kept in the list's ends
    forge(stale, 0, 2**31)
    if type(raised(lambda: pool.alloc_many(0, 3))) is not CorruptionError:
        ctx.fail("alloc_many over a forged link did not report corruption")
    if (pool.page_count(0), pool.free_pages) != (0, 3):
        ctx.fail("alloc_many handed out a block before reporting corruption")


def case_batch_meets_corruption(ctx: Context) -> None:
    buf = bytearray(32 * 64)
    pool = Pool(32, page_size=64, buffer=buf, _links="intrusive", zero="never")
    pool.alloc_many(0, 32)
    pool.put_page(16)
    pool.put_page(9)
    buf[16 * 64 : 16 * 64 + 8] = b"\x5a" * 8  # free page 16's links: junk
    before = (pool.free_pages, pool.page_count(0), pool.page_count(8), bytes(buf))
    exc = raised(lambda: pool.put_many([0, 8]))
    if type(exc) is not CorruptionError or "pfns[1]" not in str(exc):
        ctx.fail(f"put_many over a junk link: {exc!r}")
    after = (pool.free_pages, pool.page_count(0), pool.page_count(8), bytes(buf))
    if after != before:
        ctx.fail(f"put_many changed the pool before reporting corruption: {exc}")
    shared = bytearray(16 * 1024)
    pool = Pool.create_in(shared, page_size=64, links="intrusive", zero="never")
    pages = range(pool.base_pfn, pool.base_pfn + pool.nr_pages)
    pool.alloc_many(0, pool.free_pages)
    pool.put_page(16)
    pool.put_page(9)

    def state() -> tuple[Any, ...]:
        return pool.free_pages, pool.free_lists(), [pool.page_count(p) for p in pages]

    at = offset_in(shared, pool, 8) + 8 * 64  # page 16, from held page 8
    shared[at : at + 8] = b"\x5a" * 8
    before_s = state()
    exc = raised(lambda: pool.put_many([0, 8]))
    if type(exc) is not CorruptionError or state() != before_s:
        ctx.fail(f"shared put_many over a junk link: {exc!r}, changed: {state() != before_s}")


def case_check_under_load(ctx: Context) -> None:
    import threading

    pool = Pool(4096, cpus=2)
    stop = threading.Event()
    errors: list[BaseException] = []
    loops = [0]

    def churn() -> None:
        try:
            while not stop.is_set():
                pool.put_many(pool.alloc_many(0, 64))
                loops[0] += 1
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=churn)
    worker.start()
    checks = failed = 0
    try:
        # At least 10,000 checks, and as many more as it takes for the worker to run 200 rounds.
        while checks < 200_000 and (checks < 10_000 or loops[0] < 200):
            try:
                pool.check()
            except CorruptionError:
                failed += 1
            checks += 1
    finally:
        stop.set()
        worker.join()
    if failed or errors or loops[0] < 200:
        ctx.fail(
            f"check() under load: {failed} of {checks} raised CorruptionError "
            f"({loops[0]} rounds of the worker); worker: {errors}"
        )
    pool.drain_all()
    pool.check()


def case_pool_and_model_alike(ctx: Context) -> None:
    structured = np.zeros(64, dtype=[("Oa", "<i8"), ("bO", "<f8")])
    outcomes: dict[str, list[Any]] = {}
    for cls in (Pool, ReferencePool):
        pool = cls(8, page_size=64)
        got = outcomes.setdefault(cls.__name__, [])
        got.append(type(raised(lambda c=cls: c(0, zero=5))))
        got.append(type(raised(lambda c=cls, s=structured: c(8, page_size=64, buffer=s))))
        got.append(type(raised(lambda p=pool: copy.copy(p))))
        got.append(type(raised(lambda p=pool: copy.deepcopy(p))))
        got.append(type(raised(lambda p=pool: pickle.dumps(p))))
        pool.alloc_pages(0)
        got.append(type(raised(lambda p=pool: p.__init__(8, page_size=64))))
        got.append(pool.free_pages)
        got.append(type(raised(lambda p=pool: weakref.ref(p))))
        got.append(type(raised(lambda c=cls: type("Derived", (c,), {}))))
        got.append(type(raised(lambda c=cls: c(8, 4096))))
    if outcomes["Pool"] != outcomes["ReferencePool"]:
        ctx.fail(f"Pool and ReferencePool differ: {outcomes}")


def case_messages_name_values(ctx: Context) -> None:
    for cls in (Pool, ReferencePool):
        pool = cls(8, page_size=64)
        held = pool.alloc_pages(0)
        for bad, value in ((Index(-7), "-7"), (np.uint64(2**64 - 1), str(2**64 - 1))):
            exc = raised(lambda p=pool, h=held, b=bad: p.put_many([h, b]))
            if exc is None or value not in str(exc) or "Index(" in str(exc):
                ctx.fail(f"{cls.__name__}.put_many names {exc!r}, not {value}")
        exc = raised(lambda p=pool: p.alloc_many(0, np.uint64(2**64 - 1)))
        if exc is None or "np.uint64" in str(exc) or str(2**64 - 1) not in str(exc):
            ctx.fail(f"{cls.__name__}.alloc_many names {exc!r}")
        exc = raised(lambda c=cls: c(8, 4096))
        if not isinstance(exc, TypeError) or "1 positional arguments" in str(exc):
            ctx.fail(f"{cls.__name__}(8, 4096): {exc!r}")
    exc = raised(lambda: ReferencePool(2**32 - 2, page_size=2**30))
    if not isinstance(exc, MemoryError) or not str(exc):
        ctx.fail(f"an arena too large to allocate: {exc!r} (an empty message)")


def case_buffer_owner_cannot_pull_the_rug(ctx: Context) -> None:
    for cls in (Pool, ReferencePool):
        arr = np.zeros(8 * 64, dtype=np.uint8)
        pool = cls(8, page_size=64, buffer=arr)
        if type(raised(lambda a=arr: a.resize(16 * 64))) is not ValueError:
            ctx.fail(f"a numpy array could be resized under a live {cls.__name__}")
        ba = bytearray(8 * 64)
        other = cls(8, page_size=64, buffer=ba)
        if type(raised(lambda b=ba: b.extend(b"x"))) is not BufferError:
            ctx.fail(f"a bytearray could be resized under a live {cls.__name__}")
        del pool, other


#: name -> case; each raises Violation (through ``ctx.fail``) when the contract is broken.
CATALOGUE: dict[str, Callable[[Context], None]] = {
    "two_pools_one_buffer": case_two_pools_one_buffer,
    "trace_asks_for_too_much": case_trace_asks_for_too_much,
    "check_commits_nothing": case_check_commits_nothing,
    "cli_tracebacks": case_cli_tracebacks,
    "cli_json_errors": case_cli_json_errors,
    "trace_integers": case_trace_integers,
    "plot_paths": case_plot_paths,
    "put_many_all_or_nothing": case_put_many_all_or_nothing,
    "corruption_changes_nothing": case_corruption_changes_nothing,
    "batch_meets_corruption": case_batch_meets_corruption,
    "check_under_load": case_check_under_load,
    "pool_and_model_alike": case_pool_and_model_alike,
    "messages_name_values": case_messages_name_values,
    "buffer_owner_cannot_pull_the_rug": case_buffer_owner_cannot_pull_the_rug,
}


def run_catalogue(ctx: Context, steps: int) -> None:
    names = list(CATALOGUE)
    ctx.rng.shuffle(names)  # no case may depend on another's leftovers
    for ctx.step, name in enumerate(names[: max(1, steps)]):
        ctx.note(f"case {name}")
        CATALOGUE[name](ctx)
        gc.collect()
        ctx.count(f"case {name}")


# ------------------------------------------------------------------------- leaks scenario

#: Resident growth allowed per call once warm: the smallest leak, an int a call, is 32.
LEAK_BYTES_PER_CALL = 1.0


def leak_subjects() -> dict[str, tuple[Any, list[tuple[int, int]]]]:
    """Every kind of pool, each with the blocks it holds as (pfn, order) pairs, one per
    reference; a shared pool and its attached handle share one list (one pool, two handles)."""
    buffer = bytearray(16 << 10)
    shared = Pool.create_in(buffer, page_size=64)
    shared_held: list[tuple[int, int]] = []
    return {
        "plain": (Pool(64, page_size=64), []),
        "intrusive": (Pool(64, page_size=64, _links="intrusive", zero="never"), []),
        "arena-less": (Pool(64, arena=False), []),
        "cached": (Pool(64, page_size=64, cpus=2), []),
        "shared": (shared, shared_held),
        "attached": (Pool.attach(buffer), shared_held),
        "reference": (ReferencePool(64, page_size=64), []),
    }


def u64s(ctx: Context, values: list[int]) -> Any:
    """``values`` as a list, an ``array('Q')``, a numpy ``uint64`` array or a memoryview."""
    kind = ctx.rng.randrange(4)
    if kind == 0:
        return values
    if kind == 1:
        return array.array("Q", values)
    if kind == 2:
        return np.array(values, dtype=np.uint64)
    return memoryview(array.array("Q", values))


def leak_step(ctx: Context, pool: Any, held: list[tuple[int, int]], views: deque[Any]) -> None:
    """One random call on ``pool``, valid or not, keeping ``held`` in step with the pool."""
    rng = ctx.rng
    op = rng.randrange(12) if len(held) < 48 else rng.choice((3, 4))
    cpu = {"cpu": rng.randrange(3)} if rng.random() < 0.2 else {}
    pick = rng.randrange(len(held)) if held else -1
    if op == 0:
        order = rng.randrange(4)
        held.append((pool.alloc_pages(wrap(ctx, order), **cpu), order))
    elif op == 1:
        order, count = rng.randrange(3), rng.randrange(48)
        out = None if rng.random() < 0.3 else u64s(ctx, [0] * (count + rng.randrange(3)))
        if isinstance(out, list):
            out = None
        pfns = pool.alloc_many(order, wrap(ctx, count), out=out, **cpu)
        held.extend((int(pfn), order) for pfn in list(pfns)[:count])
    elif op == 2:
        n = rng.randrange(1, 6)
        first = pool.alloc_exact(wrap(ctx, n))
        held.extend((first + i, 0) for i in range(n))
    elif op == 3 and held:
        pool.put_page(wrap(ctx, held[pick][0]), **cpu)
        held.pop(pick)
    elif op == 4 and held:
        chosen = sorted(rng.sample(range(len(held)), rng.randrange(1, len(held) + 1)))
        pool.put_many(u64s(ctx, [held[i][0] for i in chosen]), **cpu)
        for i in reversed(chosen):
            held.pop(i)
    elif op == 5 and held:
        pool.get_page(held[pick][0])
        held.append(held[pick])
    elif op == 6 and held and held[pick][1] > 0:
        head, order = held[pick]
        pool.split_page(head)
        refs = held.count((head, order))
        held[:] = [entry for entry in held if entry != (head, order)]
        held.extend([(head, 0)] * refs + [(head + i, 0) for i in range(1, 1 << order)])
    elif op == 7 and held and pool.arena:
        view = pool.view(held[pick][0])
        view[0] = rng.randrange(256)
        views.append(view)
        ctx.count("views")
    elif op == 8:
        query = rng.randrange(8)
        if query == 0:
            pool.check()
        elif query == 1:
            pool.free_lists()
        elif query == 2:
            repr(pool)
        elif query == 3:
            pool.page_count(rng.randrange(80))
        elif query == 4:
            pool.cache_contents(**cpu)
        elif query == 5:
            pool.drain(**cpu)
        elif query == 6:
            pool.drain_all()
        else:
            attributes = (pool.free_pages, pool.nr_pages, pool.max_order, pool.zero, pool.cpus)
            ctx.count("attributes", len(attributes) > 0)
    else:
        leak_refused(ctx, pool)


#: Arguments no call takes: junk, ints outside every pool (the shared one has some 240 pages).
NO_PFN: list[Any] = [*JUNK, -1, 2**64, 10**30, Index(-5), Index(2**40), 1 << 20]
#: What ``put_many`` refuses: no iterable, or elements outside every pool.
NO_PFNS: list[Any] = [5, 1.5, ["x"], [2**70], [-1], [Index(-5)], (1 << 20,), np.uint64(3)]


def leak_refused(ctx: Context, pool: Any) -> None:
    """A call that must raise a documented exception (its failure path)."""
    ctx.count("refused")
    method = ctx.rng.choice(
        ["alloc_pages", "put_page", "get_page", "split_page", "page_count", "view", "alloc_exact"]
    )
    arg = ctx.rng.choice(NO_PFN)
    junk = ctx.rng.choice(NO_PFNS) if ctx.rng.random() < 0.2 else None
    try:
        if junk is None:
            getattr(pool, method)(arg)
        else:
            pool.put_many(junk)
    except (TypeError, ValueError, MemoryError):  # PageError and OutOfMemory among them
        return
    ctx.fail(f"{method}({arg!r}) or put_many({junk!r}) was accepted")


def run_leaks(ctx: Context, steps: int) -> None:
    """Random calls on every kind of pool; resident memory must stay flat once warm."""
    subjects = leak_subjects()
    names = list(subjects)
    weights = [0.05 if name == "reference" else 1.0 for name in names]
    views: deque[Any] = deque(maxlen=4)

    def run(n: int) -> None:
        for _ in range(n):
            ctx.step += 1
            name = ctx.rng.choices(names, weights)[0]
            pool, held = subjects[name]
            try:
                leak_step(ctx, pool, held, views)
            except (TypeError, ValueError, MemoryError) as exc:
                ctx.count(type(exc).__name__)
            ctx.count("calls")

    run(steps // 10)  # warm-up: free lists, caches and interned ints reach their steady state
    gc.collect()
    before = rss()
    run(steps)
    views.clear()
    gc.collect()
    grown = rss() - before
    ctx.note(f"resident memory grew {grown} bytes over {steps} calls")
    if grown > LEAK_BYTES_PER_CALL * steps:
        ctx.fail(f"resident memory grew {grown / steps:.2f} bytes a call over {steps} calls")
    for name, (pool, held) in subjects.items():
        pool.check()
        if name != "attached":
            pool.put_many([pfn for pfn, _ in held])
            pool.drain_all()
            if pool.free_pages != pool.nr_pages:
                ctx.fail(f"{name}: {pool.free_pages} pages free of {pool.nr_pages} at the end")


def main() -> int:
    faulthandler.enable()
    scenario, seed, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    ctx = Context(seed)
    print(f"abuse: scenario={scenario} seed={seed} steps={steps}", flush=True)
    try:
        if scenario == "buffers":
            run_buffers(ctx, steps)
        elif scenario == "catalogue":
            run_catalogue(ctx, steps)
        elif scenario == "stray_batches":
            run_stray_batches(ctx, steps)
        elif scenario == "leaks":
            run_leaks(ctx, steps)
        else:
            run_pools(ctx, intrusive=scenario == "intrusive", steps=steps)
    except Violation as violation:
        print(f"VIOLATION at step {ctx.step} (scenario={scenario} seed={seed}): {violation}")
        print("last calls:")
        print("\n".join(f"  {line}" for line in ctx.log))
        return 1
    counts = " ".join(f"{k.replace(' ', '_')}={v}" for k, v in sorted(ctx.counts.items()))
    print(f"ok: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
