"""The lockstep engine: run operations through ``Pool`` and its model side by side, compare.

Every tool that compares the native pool with the model goes through this module: the
``demo``, ``replay``, ``fuzz`` and ``ftrace`` commands, the Hypothesis state machine, the
abuse tests, and the reproducer a fuzz run prints (which is a short script calling it).

**Operations.** An operation is a tuple ``(kind, *args)`` (:data:`pagebuddy._rules.Op`);
the kinds, the pool method each calls and its arguments are in
:data:`pagebuddy._rules.OPERATIONS`. Arguments are passed as they are, so a test can hand
in junk to see both pools refuse it alike.

**Sources.** An operation source (:data:`OpSource`) is a generator that yields
operations and receives, through ``send``, the outcome of each one (the model's
``(value, exception)``, :data:`Outcome`), so that later operations can use the pfns earlier
ones returned::

    def source() -> OpSource:
        pfn, exc = yield ("alloc", 0)
        if exc is None:
            yield ("put", pfn)

A plain list (or any iterable) of operations is a source too (:func:`as_source`).

**Running.** :func:`run_ops` runs a source through a fresh pair of pools of a
:class:`~pagebuddy._rules.Geometry` and returns a :class:`RunResult` (operations, counts,
refusals, free blocks at start and end, samples, divergence). :func:`diverges` re-runs a
list comparing everything after every step; :func:`reproducer` writes a standalone script
that does the same. :class:`Lockstep` is the pair itself, for callers that drive it one
operation at a time (the state machine, the abuse driver):

* :meth:`Lockstep.apply` performs one operation on both pools and compares the outcomes:
  the same value, or the same exception class (for ``put_many`` also the index its message
  names; with ``strict=True`` also that both messages start with ``"method: "`` and
  name the pfn or order); a new block's contents, which it then fills with :data:`FILL`;
  ``free_pages``; and every ``compare_every`` operations the free lists (and, on a cached
  pool, every slot's cache contents in order);
* :meth:`Lockstep.agree` compares everything: free lists, ``buddyinfo()``,
  ``fragmentation()``, ``free_pages``, every page's
  refcount, the contents of every held block, the arenas as far as the policy defines them
  (:func:`pagebuddy._rules.arena_comparison`), the bytes past the arena, and ``check()``.

Any disagreement raises :class:`Divergence` (an ``AssertionError``).

**Pool modes.** The pair is ``(pagebuddy.Pool, model)``; the model is ``ReferencePool``
unless the geometry's ``options`` name a keyword listed in
:data:`pagebuddy._rules.MODELS`, whose model class is used instead. Both classes get
the same constructor arguments (:meth:`Geometry.kwargs`), so a new mode needs no change
here.
"""

from __future__ import annotations

import functools
import importlib
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import Any

from ._rules import (
    LINK_BYTES,
    MODELS,
    OPERATIONS,
    Geometry,
    Op,
    arena_comparison,
    contents_comparable,
    format_op,
)

__all__ = [
    "FILL",
    "Divergence",
    "GeometryRefused",
    "Lockstep",
    "OpSource",
    "Outcome",
    "RunResult",
    "as_source",
    "call",
    "default_classes",
    "diverges",
    "reproducer",
    "run_ops",
]

#: Byte written over every block the lockstep run allocates.
FILL = 0x5A

#: ``(value, None)`` when the call returned, ``(None, exception)`` when it raised.
Outcome = tuple[Any, BaseException | None]

#: A generator of operations that is sent the outcome of each one.
OpSource = Generator[Op, Outcome, None]

_PFNS_INDEX = re.compile(r"pfns\[(\d+)\]")


def as_source(ops: Iterable[Op] | OpSource) -> OpSource:
    """``ops`` as a source: a generator is returned as it is, an iterable is wrapped."""
    if isinstance(ops, Generator):
        return ops
    return _plain(ops)


def _plain(ops: Iterable[Op]) -> OpSource:
    for op in ops:  # noqa: UP028 (``yield from`` would forward send() to the iterator)
        yield op


def call(fn: Callable[..., Any], args: tuple[Any, ...]) -> Outcome:
    """Call ``fn(*args)``; the outcome, with any exception caught (Ctrl-C excepted)."""
    try:
        return fn(*args), None
    except Exception as e:
        return None, e
    except BaseException as e:  # e.g. a Rust panic surfacing as PanicException
        if isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        return None, e


def describe(outcome: Outcome) -> str:
    """Human-readable form of an outcome: ``returned 5`` or ``raised PageError: ...``."""
    value, exc = outcome
    if exc is None:
        return f"returned {value!r}"
    message = str(exc)
    return f"raised {type(exc).__name__}" + (f": {message}" if message else "")


def default_classes(geometry: Geometry | None = None) -> tuple[type, type]:
    """``(pagebuddy.Pool, model)``: ``ReferencePool``, or the mode's model (see module doc)."""
    from . import Pool, ReferencePool

    for key, _ in geometry.options if geometry is not None else ():
        if key in MODELS:
            module, _, name = MODELS[key].partition(":")
            return Pool, getattr(importlib.import_module(module), name)
    return Pool, ReferencePool


class Divergence(AssertionError):
    """``Pool`` and its model disagree.

    ``step`` is the number of operations applied before the one that showed it (-1 for the
    constructor, the number applied for a comparison between operations), ``op`` that
    operation (or ``None``), ``what`` a short kind (``"result"``, ``"exception"``,
    ``"message"``, ``"free_pages"``, ``"free_lists"``, ``"buddyinfo"``,
    ``"fragmentation"``, ``"caches"``, ``"contents"``,
    ``"page_count"``, ``"check"``, ``"arena"``, ``"constructor"``, ``"attribute"``) and
    ``detail`` the explanation.
    """

    def __init__(self, step: int, op: Op | None, what: str, detail: str) -> None:
        self.step = step
        self.op = op
        self.what = what
        self.detail = detail
        where = f"operation {step} ({format_op(op)})" if op is not None else _where(step)
        super().__init__(f"{where}: {detail}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "step": self.step,
            "op": format_op(self.op) if self.op is not None else None,
            "what": self.what,
            "detail": self.detail,
        }


class GeometryRefused(ValueError):
    """Both pools refused to be built with the geometry given (same exception class)."""


def _where(step: int) -> str:
    return "constructor" if step < 0 else "comparison"


def _first_diff(a: list[list[int]], b: list[list[int]]) -> str:
    if len(a) != len(b):
        return f"Pool has {len(a)} free lists, the model {len(b)}"
    for order, (la, lb) in enumerate(zip(a, b, strict=True)):
        if la != lb:
            return f"free list of order {order}: Pool {_short(la)}, model {_short(lb)}"
    return "free lists differ"


def _short(xs: list[int], limit: int = 12) -> str:
    if len(xs) <= limit:
        return repr(xs)
    return "[" + ", ".join(map(str, xs[:limit])) + f", ... ({len(xs)} blocks)]"


def _message_problem(method: str, op: Op, name: str, text: str) -> str | None:
    """What a refusal's message fails to say: the call, and the pfn or order at fault."""
    if not text.startswith(f"{method}: "):
        return f"does not name {method}"
    if name == "PageError" and not text.startswith(f"{method}: pfn {op[1]} "):
        return "does not name the pfn"
    takes_order = OPERATIONS[op[0]].params[:1] == ("order",)
    bad_order = takes_order and name == "ValueError" and isinstance(op[1], int) and op[1] < 0
    if bad_order and f"order {op[1]} " not in text:
        return "names no order"
    return None


def _new_pfns(op: Op, result: Any) -> list[int]:
    """The pfns an ``alloc_many`` handed out: its list, or the first ``count`` items of the
    ``out=`` array it filled (which may be longer)."""
    if isinstance(result, list) or len(op) < 3 or not isinstance(op[2], int):
        return list(result)
    return list(result)[: op[2]]


def _first_byte(a: Any, b: Any) -> int:
    pairs = enumerate(zip(a, b, strict=False))
    return next((i for i, (x, y) in pairs if x != y), min(len(a), len(b)))


#: Attributes both pools must report alike.
ATTRIBUTES = (
    "nr_pages",
    "page_size",
    "base_pfn",
    "reserved_pages",
    "max_order",
    "zero",
    "cpus",
    "cache_batch",
    "cache_high",
    "cache_auto",
    "cache_bound",
)
#: Attributes of pools that grow and shrink, compared where both pools have them.
GROW_ATTRIBUTES = ("max_pages", "min_free_pages")


class Lockstep:
    """A ``Pool`` and its model of the same geometry, driven together.

    ``pool_cls``/``model_cls`` default to :func:`default_classes`; any class with the same
    constructor and methods can stand in (tests inject broken pools this way). With
    ``arena="buffer"``, ``buffers`` gives the two caller buffers (default: zeroed
    ``bytearray``\\ s); ``fill_seed`` fills them with the same random bytes and adds a page of
    slack past the arena that must never change. ``strict`` also checks that refusals are of
    a class the operation documents, that their messages name the call and the pfn or order
    at fault, and that both pools' ``repr`` agree past the class name. Raises
    :class:`Divergence` from the constructor if the two disagree on the initial state,
    :class:`GeometryRefused` if both refuse the geometry.
    """

    def __init__(
        self,
        geometry: Geometry,
        pool_cls: type | None = None,
        model_cls: type | None = None,
        *,
        compare_every: int = 1,
        buffers: tuple[Any, Any] | None = None,
        fill_seed: int | None = None,
        strict: bool = False,
    ) -> None:
        if pool_cls is None or model_cls is None:
            dp, dm = default_classes(geometry)
            pool_cls, model_cls = pool_cls or dp, model_cls or dm
        self.geometry = geometry
        self.compare_every = max(1, compare_every)
        self.strict = strict
        self.contents = contents_comparable(geometry.zero, geometry.links, geometry.arena)
        self.size = geometry.span * geometry.page_size
        self.slack = b""
        if buffers is None and fill_seed is not None and geometry.arena == "buffer":
            pattern = random.Random(fill_seed).randbytes(self.size + geometry.page_size)
            buffers = (bytearray(pattern), bytearray(pattern))
            self.slack = pattern[self.size :]
        a, b = buffers if buffers is not None else (None, None)
        built_a = call(geometry.build, (pool_cls, a))
        built_b = call(geometry.build, (model_cls, b))
        ea, eb = built_a[1], built_b[1]
        if ea is not None or eb is not None:
            if ea is None or eb is None or type(ea) is not type(eb):
                raise Divergence(
                    -1,
                    None,
                    "constructor",
                    f"Pool {describe(built_a) if ea else 'was built'}, "
                    f"the model {describe(built_b) if eb else 'was built'}",
                )
            raise GeometryRefused(f"both pools refuse this geometry: {describe(built_b)}")
        (self.pool, self.pool_buffer), (self.model, self.model_buffer) = built_a[0], built_b[0]
        self.steps = 0
        #: The pool's and the model's outcome of the last operation.
        self.last: tuple[Outcome, Outcome] = ((None, None), (None, None))
        self._fills: dict[int, bytes] = {}
        # Every operation both pools have (a pool under conformance test may lack those of
        # pools that grow and shrink).
        self._methods = {
            kind: (o.bind(self.pool), o.bind(self.model))
            for kind, o in OPERATIONS.items()
            if hasattr(self.pool, o.method) and hasattr(self.model, o.method)
        }
        self.compare_attributes(-1)
        self.compare_state(-1, None)

    @property
    def pfns(self) -> range:
        """The pool's pfns: every page it may cover (``max_pages``)."""
        g = self.geometry
        return range(g.base_pfn, g.base_pfn + g.span)

    def covered(self, pool: Any) -> list[int]:
        """The pfns ``pool`` covers now (all of them for a pool that cannot grow)."""
        covers = getattr(pool, "covers", None)
        return list(self.pfns) if covers is None else [p for p in self.pfns if covers(p)]

    # -- driving --------------------------------------------------------------------------------

    def apply(
        self,
        op: Op,
        make_args: Callable[[], tuple[Any, ...]] | None = None,
        make_kwargs: Callable[[], dict[str, Any]] | None = None,
    ) -> Outcome:
        """Apply ``op`` to both pools; return the model's outcome.

        ``make_args``, if given, is called once per pool for the arguments (for iterators and
        argument objects that each pool must get afresh); otherwise they are ``op[1:]``.
        ``make_kwargs``, likewise, for keyword arguments (``cpu=`` on a cached pool, an
        ``out=`` array of each pool's own). Raises :class:`Divergence` if the pools disagree.
        """
        kind = op[0]
        fa, fb = self._methods[kind]
        if make_kwargs is not None:
            fa, fb = functools.partial(fa, **make_kwargs()), functools.partial(fb, **make_kwargs())
        oa = call(fa, make_args() if make_args else op[1:])
        ob = call(fb, make_args() if make_args else op[1:])
        self.last = (oa, ob)
        step = self.steps
        (ra, ea), (rb, eb) = oa, ob
        if ea is None and eb is None:
            self._compare_values(step, op, ra, rb)
        elif ea is None or eb is None or type(ea) is not type(eb):
            raise Divergence(
                step, op, "exception", f"Pool {describe(oa)}, the model {describe(ob)}"
            )
        else:
            self._compare_errors(step, op, ea, eb)
        if self.pool.free_pages != self.model.free_pages:
            raise Divergence(
                step,
                op,
                "free_pages",
                f"after it, free_pages: Pool {self.pool.free_pages}, "
                f"the model {self.model.free_pages}",
            )
        self.steps = step + 1
        if self.steps % self.compare_every == 0:
            self.compare_state(step, op)
        return ob

    def _compare_values(self, step: int, op: Op, ra: Any, rb: Any) -> None:
        kind = op[0]
        if kind == "view":
            if ra.nbytes != rb.nbytes or ra.readonly or ra.format != "B":
                raise Divergence(step, op, "result", f"views differ: {ra!r}, {rb!r}")
            if self.contents and ra != rb:
                raise Divergence(step, op, "contents", f"contents of block {op[1]} differ")
            return
        if ra != rb:
            raise Divergence(
                step, op, "result", f"Pool {describe((ra, None))}, the model {describe((rb, None))}"
            )
        if self.contents and kind in ("alloc", "alloc_many"):
            for pfn in [rb] if kind == "alloc" else _new_pfns(op, rb):
                self._compare_new_block(step, op, pfn)
        if self.contents and kind == "exact":
            for pfn in range(rb, rb + op[1]):
                self._compare_new_block(step, op, pfn)

    def _compare_errors(self, step: int, op: Op, ea: BaseException, eb: BaseException) -> None:
        ia, ib = _PFNS_INDEX.search(str(ea)), _PFNS_INDEX.search(str(eb))
        if op[0] == "put_many" and (ia and ia.group(1)) != (ib and ib.group(1)):
            raise Divergence(
                step,
                op,
                "exception",
                f"put_many failed at different elements: Pool {describe((None, ea))}, "
                f"the model {describe((None, eb))}",
            )
        if not self.strict:
            return
        name = type(eb).__name__
        if name not in OPERATIONS[op[0]].raises:
            raise Divergence(step, op, "exception", f"undocumented {describe((None, eb))}")
        if op[0] == "put_many":
            if name == "PageError" and not (ia and ib):
                raise Divergence(step, op, "message", "put_many: PageError names no index")
            return
        for who, exc in (("Pool", ea), ("the model", eb)):
            problem = _message_problem(OPERATIONS[op[0]].method, op, name, str(exc))
            if problem:
                raise Divergence(step, op, "message", f"{who}: {str(exc)!r} {problem}")

    def _compare_new_block(self, step: int, op: Op, pfn: int) -> None:
        va, vb = self.pool.view(pfn), self.model.view(pfn)
        if va != vb:
            ba, bb = va.tobytes(), vb.tobytes()
            off = _first_byte(ba, bb)
            raise Divergence(
                step,
                op,
                "contents",
                f"contents of the new block at pfn {pfn} differ "
                f"({len(ba)} vs {len(bb)} bytes; first difference at byte {off}: "
                f"Pool {ba[off : off + 1].hex() or 'end'}, "
                f"the model {bb[off : off + 1].hex() or 'end'})",
            )
        n = len(va)
        fill = self._fills.get(n)
        if fill is None:
            fill = self._fills[n] = bytes([FILL]) * n
        va[:] = fill
        vb[:] = fill

    def write(self, pfn: int, offset: int, data: bytes) -> None:
        """Write ``data`` into the held block at ``pfn`` of both pools, at ``offset`` (wrapped)."""
        va, vb = self.pool.view(pfn), self.model.view(pfn)
        offset %= vb.nbytes
        data = data[: vb.nbytes - offset]
        va[offset : offset + len(data)] = data
        vb[offset : offset + len(data)] = data

    def held(self) -> list[int]:
        """Pfns of the pages the model holds (each heads a held block)."""
        count = self.model.page_count
        return [pfn for pfn in self.covered(self.model) if count(pfn) > 0]

    def capacity(self, order: int) -> int:
        """How many blocks of ``order`` the model's free lists can supply."""
        lists = self.model.free_lists()
        return sum(len(lists[j]) << (j - order) for j in range(order, len(lists)))

    def free_blocks(self) -> list[int]:
        """Number of free blocks per order (from the native pool)."""
        return [len(x) for x in self.pool.free_lists()]

    # -- comparisons ----------------------------------------------------------------------------

    def compare_state(self, step: int | None = None, op: Op | None = None) -> None:
        """Compare ``free_pages``, the free lists, ``buddyinfo()`` and ``fragmentation()`` (where
        both pools have them) and, on a cached pool (``cpus=N``), every slot's cache contents in
        order now."""
        step = self.steps if step is None else step
        fa, fb = self.pool.free_pages, self.model.free_pages
        if fa != fb:
            raise Divergence(step, op, "free_pages", f"free_pages: Pool {fa}, the model {fb}")
        la, lb = self.pool.free_lists(), self.model.free_lists()
        if la != lb:
            late = (
                f" (free lists are compared every {self.compare_every} operations)"
                if self.compare_every > 1 and step >= 0
                else ""
            )
            raise Divergence(step, op, "free_lists", _first_diff(la, lb) + late)
        for query in ("buddyinfo", "fragmentation"):
            ask_a, ask_b = getattr(self.pool, query, None), getattr(self.model, query, None)
            if ask_a is None or ask_b is None:
                continue  # a pool under conformance test (``_conform``) may not answer it
            qa, qb = ask_a(), ask_b()
            if qa != qb:
                raise Divergence(step, op, query, f"{query}(): Pool {qa}, the model {qb}")
        if self.geometry.max_pages is not None:
            for order in range(self.geometry.max_order):
                qa, qb = self.pool.reclaimable(order), self.model.reclaimable(order)
                if qa != qb:
                    raise Divergence(
                        step, op, "reclaimable", f"reclaimable({order}): Pool {qa}, the model {qb}"
                    )
        self.compare_caches(step, op)

    def compare_caches(self, step: int | None = None, op: Op | None = None) -> None:
        """Compare every slot's cached blocks, order by order, coldest first, and its current
        ``(high, batch)`` (nothing to compare without caches)."""
        step = self.steps if step is None else step
        for cpu in range(getattr(self.model, "cpus", 0)):
            ca, cb = self.pool.cache_contents(cpu), self.model.cache_contents(cpu)
            if ca != cb:
                raise Divergence(step, op, "caches", f"slot {cpu}: Pool {ca}, the model {cb}")
            sa, sb = self.pool.cache_sizes(cpu), self.model.cache_sizes(cpu)
            if sa != sb:
                raise Divergence(
                    step, op, "caches", f"slot {cpu} (high, batch): Pool {sa}, the model {sb}"
                )

    def compare_attributes(self, step: int | None = None) -> None:
        """Compare the geometry attributes and ``repr`` (past the class name)."""
        step = self.steps if step is None else step
        grown = [n for n in GROW_ATTRIBUTES if hasattr(self.pool, n) and hasattr(self.model, n)]
        for name in (*ATTRIBUTES, *grown):
            va, vb = getattr(self.pool, name), getattr(self.model, name)
            if va != vb:
                raise Divergence(step, None, "attribute", f"{name}: Pool {va!r}, the model {vb!r}")
        ra, rb = repr(self.pool).partition("(")[2], repr(self.model).partition("(")[2]
        if self.strict and ra != rb:
            raise Divergence(step, None, "attribute", f"repr: Pool ({ra}, the model ({rb}")

    def compare_counts(self) -> None:
        """Compare every page's refcount."""
        pa, pb = self.covered(self.pool), self.covered(self.model)
        if pa != pb:
            i = _first_byte(pa, pb)
            raise Divergence(
                self.steps, None, "covers", f"covered pfns differ first at {(pa + pb)[i]}"
            )
        ca = [self.pool.page_count(p) for p in pb]
        cb = [self.model.page_count(p) for p in pb]
        if ca != cb:
            i = _first_byte(ca, cb)
            raise Divergence(
                self.steps,
                None,
                "page_count",
                f"page_count({pb[i]}): Pool {ca[i]}, the model {cb[i]}",
            )

    def compare_contents(self) -> None:
        """Compare held blocks' contents, and the arenas as far as the policy defines them."""
        g, step = self.geometry, self.steps
        if self.contents:
            for pfn in self.held():
                if self.pool.view(pfn) != self.model.view(pfn):
                    raise Divergence(step, None, "contents", f"contents of block {pfn} differ")
        a, b = self.pool_buffer, self.model_buffer
        if a is None or b is None:
            return
        for who, buf in (("Pool", a), ("the model", b)):
            if self.slack and bytes(buf[self.size :]) != self.slack:
                raise Divergence(step, None, "arena", f"{who} wrote past the arena")
        rule = arena_comparison(g.zero, g.links)
        if rule in ("whole", "except links"):
            a, b = bytearray(a[: self.size]), bytearray(b[: self.size])
            if rule == "except links":
                for head in (h for heads in self.model.free_lists() for h in heads):
                    at = (head - g.base_pfn) * g.page_size
                    a[at : at + LINK_BYTES] = b[at : at + LINK_BYTES]
            if a != b:
                i = _first_byte(a, b)
                raise Divergence(
                    step,
                    None,
                    "arena",
                    f"arenas differ first at byte {i} (pfn {g.base_pfn + i // g.page_size}): "
                    f"Pool {a[i]:#04x}, the model {b[i]:#04x}",
                )

    def compare_checks(self) -> None:
        """Run ``check()`` on both pools."""
        for name, pool in (("Pool", self.pool), ("the model", self.model)):
            outcome = call(pool.check, ())
            if outcome[1] is not None:
                raise Divergence(self.steps, None, "check", f"{name}.check() {describe(outcome)}")

    def agree(self) -> None:
        """Compare the complete state of both pools; raises :class:`Divergence`."""
        self.compare_state(self.steps, None)
        self.compare_attributes()
        self.compare_counts()
        self.compare_contents()
        self.compare_checks()


@dataclass
class RunResult:
    """What :func:`run_ops` saw."""

    geometry: Geometry
    ops: list[Op] = field(default_factory=list)
    divergence: Divergence | None = None
    rejected: Counter[str] = field(default_factory=Counter)
    #: First rejected operations: (index in ops, op, exception class name, message).
    rejected_examples: list[tuple[int, Op, str, str]] = field(default_factory=list)
    op_counts: Counter[str] = field(default_factory=Counter)
    start_free_blocks: list[int] = field(default_factory=list)
    end_free_blocks: list[int] = field(default_factory=list)
    start_free_pages: int = 0
    end_free_pages: int = 0
    #: (operations applied, free blocks per order) sampled along the run.
    samples: list[tuple[int, list[int]]] = field(default_factory=list)
    #: Per page at the end: 0 free, 1 held, 2 shared (refcount >= 2), 3 reserved.
    arena_map: list[int] = field(default_factory=list)
    #: Every OutOfMemory refusal: (index in ops, order of the block asked for).
    out_of_memory: list[tuple[int, int]] = field(default_factory=list)
    seconds: float = 0.0
    #: True when ``progress`` asked the run to stop early.
    stopped: bool = False

    @property
    def ok(self) -> bool:
        """True when the pools agreed throughout."""
        return self.divergence is None


#: Page states in :attr:`RunResult.arena_map`.
PAGE_FREE, PAGE_HELD, PAGE_SHARED, PAGE_RESERVED = 0, 1, 2, 3


def arena_map(pool: Any, geometry: Geometry) -> list[int]:
    """Classify every page of ``pool``: free, held, shared (refcount >= 2) or reserved.

    A page is *reserved* if it is one of the first ``reserved_pages`` and not free; a page
    the pool does not cover (never admitted, or reclaimed) reads as free.
    """
    base = geometry.base_pfn
    covers = getattr(pool, "covers", None)
    states = [PAGE_HELD] * geometry.span
    for order, blocks in enumerate(pool.free_lists()):
        n = 1 << order
        for pfn in blocks:
            i = pfn - base
            states[i : i + n] = [PAGE_FREE] * n
    for i in range(geometry.span):
        if states[i] == PAGE_FREE or (covers is not None and not covers(base + i)):
            states[i] = PAGE_FREE
            continue
        if i < geometry.reserved_pages:
            states[i] = PAGE_RESERVED
        elif pool.page_count(base + i) >= 2:
            states[i] = PAGE_SHARED
    return states


def _order_asked(op: Op) -> int:
    """The order of the block an allocation asked for (``exact``: the block that holds the
    run); -1 when its arguments say none."""
    try:
        n = int(op[1])
    except (TypeError, ValueError, IndexError):
        return -1
    return (n - 1).bit_length() if op[0] == "exact" else n


def run_ops(
    geometry: Geometry,
    source: Iterable[Op] | OpSource,
    *,
    pool_cls: type | None = None,
    model_cls: type | None = None,
    compare_every: int = 1,
    sample_every: int = 0,
    keep_examples: int = 20,
    progress: Callable[[int], bool | None] | None = None,
    record: Callable[[Op], None] | None = None,
    final: bool = True,
    want_map: bool = False,
) -> RunResult:
    """Run ``source`` through a fresh :class:`Lockstep` pair and collect a :class:`RunResult`.

    Rejected operations (both pools raise the same exception) are counted, not fatal.
    ``progress(n)`` is called every 1024 operations with the number applied so far; when it
    returns true the run stops there (``stopped``). ``record(op)`` sees each operation before
    it is applied. With ``final`` the run ends with :meth:`Lockstep.agree`. Raises
    :class:`GeometryRefused` when both pools refuse the geometry.
    """
    result = RunResult(geometry)
    t0 = time.perf_counter()
    try:
        ls = Lockstep(geometry, pool_cls, model_cls, compare_every=compare_every)
    except Divergence as d:
        result.divergence = d
        return result
    result.start_free_blocks = ls.free_blocks()
    result.start_free_pages = ls.model.free_pages
    if sample_every:
        result.samples.append((0, result.start_free_blocks))
    gen = as_source(source)
    ops, counts, rejected, apply = result.ops, result.op_counts, result.rejected, ls.apply
    try:
        op = next(gen)
        while True:
            if record is not None:
                record(op)
            ops.append(op)
            counts[op[0]] += 1
            outcome = apply(op)
            exc = outcome[1]
            if exc is not None:
                name = type(exc).__name__
                rejected[name] += 1
                if name == "OutOfMemory":
                    result.out_of_memory.append((len(ops) - 1, _order_asked(op)))
                if len(result.rejected_examples) < keep_examples:
                    result.rejected_examples.append((len(ops) - 1, op, name, str(exc)))
            n = ls.steps
            if sample_every and n % sample_every == 0:
                result.samples.append((n, ls.free_blocks()))
            if progress is not None and n & 1023 == 0 and progress(n):
                result.stopped = True
                break
            op = gen.send(outcome)
    except StopIteration:
        pass
    except Divergence as d:
        result.divergence = d
    if result.divergence is None and final:
        try:
            ls.agree()
        except Divergence as d:
            result.divergence = d
    result.end_free_blocks = ls.free_blocks()
    result.end_free_pages = ls.model.free_pages
    if sample_every and (not result.samples or result.samples[-1][0] != ls.steps):
        result.samples.append((ls.steps, result.end_free_blocks))
    if want_map:
        result.arena_map = arena_map(ls.pool, geometry)
    result.seconds = time.perf_counter() - t0
    return result


def diverges(
    geometry: Geometry,
    ops: list[Op],
    pool_cls: type | None = None,
    model_cls: type | None = None,
) -> Divergence | None:
    """Re-run ``ops`` on fresh pools comparing after every step; the divergence or ``None``."""
    try:
        ls = Lockstep(geometry, pool_cls, model_cls)
        for op in ops:
            ls.apply(op)
        ls.agree()
    except Divergence as d:
        return d
    except GeometryRefused:
        return None
    return None


# -- reproducers -----------------------------------------------------------------------------------


def _import_line(cls: type | None, name: str) -> str:
    """``from module import Class as Pool`` for a class other than the package's own."""
    if cls is None or "<locals>" in cls.__qualname__:
        return ""
    from . import Pool, ReferencePool

    if cls in (Pool, ReferencePool):
        return ""
    return f"from {cls.__module__} import {cls.__qualname__} as {name}  # the class under test"


def _pfn_text(g: Geometry) -> Callable[[Any], str]:
    def text(p: Any) -> str:
        if g.base_pfn and g.base_pfn - 2 <= p < g.base_pfn + g.nr_pages + 2:
            d = p - g.base_pfn
            return f"BASE + {d}" if d >= 0 else f"BASE - {-d}"
        return repr(p)

    return text


def _op_text(op: Op, g: Geometry) -> str:
    pfn = _pfn_text(g)
    kind, *args = op
    params = OPERATIONS[kind].params
    if params == ("pfns",):
        items = [pfn(p) for p in args[0]]
        parts = ["(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"]
    else:
        parts = [pfn(a) if p == "pfn" else repr(a) for p, a in zip(params, args, strict=False)]
    return f"step(({kind!r}, {', '.join(parts)}))"


def reproducer(
    geometry: Geometry,
    ops: list[Op],
    divergence: Divergence | None,
    *,
    pool_cls: type | None = None,
    model_cls: type | None = None,
    origin: str = "",
) -> str:
    """A standalone Python script that replays ``ops`` through the engine, comparing each step.

    Running it raises :class:`Divergence` (an ``AssertionError``) where the pools disagree,
    and prints a line if they agree.
    """
    head = ["# Reproducer: Pool and its model disagree."]
    if origin:
        shrunk = f"shrunk to {len(ops)} operation(s)" if ops else "no operation needed"
        head.append(f"# Found by `{origin}`; {shrunk}.")
    if divergence is not None:
        head += [f"# Divergence: {line}" for line in str(divergence).splitlines()]
    imports = [
        "from pagebuddy import Pool, ReferencePool",
        "from pagebuddy._lockstep import Lockstep",
        "from pagebuddy._rules import Geometry",
    ]
    for cls, name in ((pool_cls, "Pool"), (model_cls, "ReferencePool")):
        line = _import_line(cls, name)
        if line:
            imports.append(line)
    fields = ", ".join(f"{k}={v!r}" for k, v in vars(geometry).items() if k != "nr_pages")
    lines = [
        *head,
        *imports,
        "",
        f"BASE = {geometry.base_pfn}",
        f"GEOMETRY = Geometry({geometry.nr_pages}, {fields})",
        "pools = Lockstep(GEOMETRY, Pool, ReferencePool)",
        "step = pools.apply",
        "",
        *(_op_text(op, geometry) for op in ops),
        "pools.agree()",
        'print("no divergence: Pool and ReferencePool agree")',
    ]
    return "\n".join(lines) + "\n"
