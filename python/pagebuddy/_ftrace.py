"""Linux page-allocator traces (ftrace's ``kmem`` events) turned into pagebuddy operations.

The kernel reports its page allocator through tracepoints defined in
``include/trace/events/kmem.h`` and emitted from ``mm/page_alloc.c``. Read as text
(``cat trace``, ``trace_pipe``, or ``trace-cmd report``), one event is one line::

    bash-15390 [000] .....  395.954165: mm_page_alloc: page=... pfn=0x18597b order=0 ...
    thp-15391  [000] .....  395.958262: mm_page_free: page=... pfn=0x245000 order=0

What each event means, and what the replay does with it:

``mm_page_alloc`` (``pfn``, ``order``)
    An allocation handed to its caller (``__alloc_pages``): the start of a lifetime.
    The replay allocates a block of the same order. A failed allocation is reported
    with a null page and ``pfn=0x0``; it is counted, not replayed.
``mm_page_free`` (``pfn``, ``order``)
    A block given back (``free_pages_prepare``, on every path: ``__free_pages``,
    ``free_unref_folios``, the pieces after ``split_page`` or a folio split, the tail
    pieces ``__free_pages`` gives back when someone else still holds the head): the end
    of a lifetime. Older kernels call it ``mm_page_free_direct``.
``mm_page_free_batched`` (``pfn``)
    Emitted by ``free_unref_folios`` for a folio that ``free_pages_prepare`` has already
    reported with ``mm_page_free``, and always printed with ``order=0``: the same free
    told twice. It is used only when the trace has no ``mm_page_free`` at all (the event
    was not enabled); then it frees the whole block held at ``pfn``. Older kernels call
    it ``mm_pagevec_free``.
``mm_page_alloc_zone_locked``
    A block taken off the buddy lists under the zone lock, either for the caller (an
    ``mm_page_alloc`` of the same pfn follows) or to refill a per-CPU list
    (``percpu_refill=1``; the pages are handed out later, each with its own
    ``mm_page_alloc``). Not a lifetime of its own: counted, not used.
``mm_page_pcpu_drain``
    Pages moving from a per-CPU list back to the buddy lists. They were freed
    (``mm_page_free``) when they went on the per-CPU list: counted, not used.
``mm_page_alloc_extfrag``
    A fallback to another migratetype: counted, not used.

Pieces. A block allocated at order ``K`` may come back in pieces: after ``split_page``
(``alloc_pages_exact``, vmalloc) or a large folio's split, each piece is freed on its
own, at a smaller order, at a pfn inside the block (possibly the head itself). The
replay models this as the kernel did it: the first free of a piece splits the block
(``split``, which turns it into ``2**K`` held order-0 pages, as ``split_page`` does) and
puts the pages of that piece; later pieces put theirs.

What cannot be matched. A free of a pfn the trace never allocated (the page was
allocated before the trace began) is counted in ``unmatched_frees``. An allocation of a
pfn the replay still holds means a free was missed (lost events, or a trace filtered by
pid): the block held there is put first and counted in ``missed_frees``.

The module works in three steps, each usable alone:

1. :func:`parse_ftrace` reads the text into :class:`FtraceImport`: the allocation and
   free events with their line numbers, a count per event name seen, and what was
   skipped (other events, other tracers' lines, malformed lines with ``lenient``).
2. :func:`plan_lifetimes` turns those events into a :class:`Plan` of actions in the
   trace's pfn space (allocate, put, split), never applying one free twice, and measures
   the peak of live pages.
3. :class:`PfnMap` maps the trace's pfns to the pool's while a pool runs the plan:
   :meth:`PfnMap.ops` is an operation source in the lockstep engine's protocol, which
   :func:`replay_lockstep` runs through ``Pool`` and ``ReferencePool`` with
   :func:`pagebuddy._lockstep.run_ops`; :func:`replay_native` runs it on one ``Pool``
   alone; :func:`fit_pool` bisects the smallest pool that serves the whole plan.
"""

from __future__ import annotations

import itertools
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ._lockstep import OpSource, Outcome
from ._rules import Geometry, Op
from ._trace import TraceError

__all__ = [
    "ALLOC",
    "DEFAULT_HEADROOM",
    "FREE",
    "SPLIT",
    "FitResult",
    "FtraceError",
    "FtraceImport",
    "NativeResult",
    "PfnMap",
    "Plan",
    "default_nr_pages",
    "fit_pool",
    "ftrace_geometry",
    "parse_ftrace",
    "plan_lifetimes",
    "read_ftrace",
    "replay_lockstep",
    "replay_native",
]

#: Event names the replay uses, by role. Old kernels' names are aliases.
ALLOC_EVENTS = frozenset({"mm_page_alloc"})
FREE_EVENTS = frozenset({"mm_page_free", "mm_page_free_direct"})
BATCHED_EVENTS = frozenset({"mm_page_free_batched", "mm_pagevec_free"})
#: Page-allocator events counted but not replayed (see the module docstring).
UNUSED_PAGE_EVENTS = frozenset(
    {"mm_page_alloc_zone_locked", "mm_page_pcpu_drain", "mm_page_alloc_extfrag"}
)

#: Actions of a :class:`Plan`: ``(ALLOC, pfn, order)``, ``(FREE, pfn, 0)`` (put the block
#: held at ``pfn``), ``(SPLIT, pfn, order)`` (split the order-``order`` block at ``pfn``
#: into order-0 pages).
ALLOC, FREE, SPLIT = 0, 1, 2

#: Event codes inside :attr:`FtraceImport.events`.
_EV_ALLOC, _EV_FREE, _EV_BATCHED = 0, 1, 2

#: Largest order a trace may name (Linux's MAX_PAGE_ORDER is at most 15 on any arch).
MAX_TRACE_ORDER = 20

#: Default headroom over the peak of live pages when sizing the pool.
DEFAULT_HEADROOM = 2

# The head of an event line of tracefs or trace-cmd, found from the "-PID" that ends the
# task name: an optional "(TGID)", the CPU ("[001]" and optional flags, or trace-cmd -l's
# "1d..3."), a time stamp, and trace-cmd --ts-diff's "(+12)". Whatever comes before "-PID"
# is the task name, after an instance name with trace-cmd -B.
_HEAD = (
    r"-\d+\s+(?:\(\s*[\d-]+\)\s+)?(?:\[\d+\]\s+(?:\S+\s+)?|\d+\S*\s+)"
    r"\d+(?:\.\d+)?:\s+(?:\(\+?\d+\)\s+)?"
)
# An event line: the head, the event name, and for the page-allocator events their leading
# fields (page=, pfn=, order=).
_EVENT_LINE = re.compile(
    _HEAD + r"([A-Za-z_]\w*):(?:\s+|$)"
    r"(?:page=(\S+)\s+)?(?:pfn=(0x[0-9a-fA-F]+|\d+)\s+order=(\d+)(?!\S))?"
)
# The head without an event name: a function tracer's line ("func <-parent").
_TRACER_LINE = re.compile(r"\S" + _HEAD)
# function_graph: " 1)   0.123 us    |  func();", or with its time/cpu columns.
_GRAPH_LINE = re.compile(r"\s*(?:\d+\.\d+\s+(?:\|\s+)?)?\d+\)\s")
# The header of `cat trace`: fewer entries in the buffer than written means the oldest were
# overwritten.
_ENTRIES = re.compile(r"#\s*entries-in-buffer/entries-written:\s*(\d+)/(\d+)")
_LOST = re.compile(r"\[LOST (\d+) EVENTS\]|\[(\d+) EVENTS DROPPED\]")
# Lines trace-cmd report prints around the events.
_REPORT_HEADER = re.compile(
    r"(?:cpus=\d+|version = \S+|CPU \d+ is empty|CPU\d+ data recorded at offset=\S+"
    r"|\s*\d+ bytes in size(?: \(\d+ uncompressed\))?|#{3,}.*|\S+: (?:cpus=\d+|CPU \d+ is empty))"
)
_PFN = re.compile(r"(?:^|\s)pfn=(0x[0-9a-fA-F]+|\d+)(?!\S)")
_ORDER = re.compile(r"(?:^|\s)order=(\d+)(?!\S)")
_ORDER_0 = _ORDER.search("order=0")
_PAGE = re.compile(r"(?:^|\s)page=(\S+)")
_NULL_PAGES = frozenset({"(null)", "(nil)", "0x0", "0"})


class FtraceError(TraceError):
    """A malformed line in a kernel trace. ``line`` is 1-based (0 when unknown)."""


@dataclass
class FtraceImport:
    """What :func:`parse_ftrace` read.

    ``events`` holds the replay's events as ``(code, pfn, order, line)`` with code 0
    (allocation), 1 (free) or 2 (batched free); ``counts`` the number of lines of
    each event name seen, used or not.
    """

    source: str = "<trace>"
    events: list[tuple[int, int, int, int]] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    lines: int = 0
    #: Comment and header lines (``#`` lines, trace-cmd's ``cpus=``) and blank lines.
    comment_lines: int = 0
    #: Lines of events that are not page-allocator events (``sched_switch``, ...).
    other_event_lines: int = 0
    #: Lines of other tracers (function, function_graph).
    other_tracer_lines: int = 0
    #: Events the kernel reported as lost (``[LOST N EVENTS]``) or overwritten (the header's
    #: ``entries-in-buffer/entries-written``).
    lost_events: int = 0
    #: Allocations that failed (null page): counted, not replayed.
    failed_allocations: int = 0
    #: Malformed lines skipped under ``lenient`` (an error otherwise).
    malformed_lines: int = 0
    #: The first malformed lines, as ``"SOURCE:LINE: reason"``.
    malformed_examples: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def skipped(self) -> dict[str, int]:
        """Lines not replayed, by reason (JSON-friendly)."""
        unused = sum(self.counts[name] for name in UNUSED_PAGE_EVENTS)
        return {
            "other_events": self.other_event_lines,
            "other_tracers": self.other_tracer_lines,
            "unused_page_events": unused,
            "failed_allocations": self.failed_allocations,
            "malformed": self.malformed_lines,
            "comments": self.comment_lines,
        }


def _malformed(imp: FtraceImport, number: int, reason: str, lenient: bool) -> None:
    if not lenient:
        raise FtraceError(number, reason, imp.source)
    imp.malformed_lines += 1
    if len(imp.malformed_examples) < 20:
        imp.malformed_examples.append(f"{imp.source}:{number}: {reason}")


_EVENT_CODES = {
    **dict.fromkeys(ALLOC_EVENTS, _EV_ALLOC),
    **dict.fromkeys(FREE_EVENTS, _EV_FREE),
    **dict.fromkeys(BATCHED_EVENTS, _EV_BATCHED),
}


def _texts(
    lines: Iterable[str] | Iterable[bytes], imp: FtraceImport, lenient: bool
) -> Iterable[str | None]:
    """``lines`` as text: ``str`` as they are, ``bytes`` decoded as UTF-8 (``None`` for a
    line that is not, once :func:`_malformed` has let it pass)."""
    it = iter(lines)
    first = next(it, None)
    if first is None:
        return
    if not isinstance(first, bytes):
        yield first  # type: ignore[misc]
        yield from it  # type: ignore[misc]
        return
    for number, raw in enumerate(itertools.chain([first], it), 1):
        try:
            yield raw.decode("utf-8")  # type: ignore[union-attr]
        except UnicodeDecodeError as e:
            reason = f"not a text line (not UTF-8: {e.reason} at byte {e.start})"
            _malformed(imp, number, reason, lenient)
            yield None


def _is_null(page: str) -> bool:
    """A null ``page=`` as the kernel (``%p``) or trace-cmd prints it."""
    return page in _NULL_PAGES or not page.strip("0")


def _describe(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def parse_ftrace(
    lines: Iterable[str] | Iterable[bytes], source: str = "<trace>", *, lenient: bool = False
) -> FtraceImport:
    """Read tracefs or ``trace-cmd report`` text into an :class:`FtraceImport`.

    ``lines`` are ``str``, or ``bytes`` decoded here as UTF-8 (a line that is not is
    malformed).

    Lines of other events and other tracers are skipped and counted. A line that is
    none of these, or a page-allocator event without ``pfn=`` and ``order=``, is
    malformed: :class:`FtraceError` naming ``source`` and the line, or with ``lenient``
    skipped and counted.
    """
    t0 = time.perf_counter()
    imp = FtraceImport(source)
    events = imp.events
    counts = imp.counts
    search_event = _EVENT_LINE.search
    codes = _EVENT_CODES
    number = 0
    for number, raw in enumerate(_texts(lines, imp, lenient), 1):
        if raw is None:  # not UTF-8: counted by _texts
            continue
        m = search_event(raw)
        if m is not None:
            name, page, text, order_text = m.groups()
            counts[name] += 1
            code = codes.get(name)
            if code is None:
                if name not in UNUSED_PAGE_EVENTS:
                    imp.other_event_lines += 1
                continue
            if text is None:  # fields in another order than the kernel prints them
                rest = raw[m.end() :]
                f = _PFN.search(rest)
                o = _ORDER.search(rest)
                if o is None and code == _EV_BATCHED:
                    o = _ORDER_0  # its order is always 0; trace-cmd -R leaves it out
                if f is None or o is None:
                    _malformed(
                        imp,
                        number,
                        f"{name} without pfn=PFN order=ORDER: {_describe(rest.strip())}",
                        lenient,
                    )
                    continue
                text, order_text = f.group(1), o.group(1)
                p = _PAGE.search(rest)
                page = p.group(1) if p is not None else None
            order = int(order_text)
            pfn = int(text, 16) if text[1:2] in ("x", "X") else int(text)
            if order > MAX_TRACE_ORDER:
                _malformed(
                    imp, number, f"{name} of order {order} (at most {MAX_TRACE_ORDER})", lenient
                )
                continue
            if code == _EV_ALLOC and pfn == 0 and (page is None or _is_null(page)):
                imp.failed_allocations += 1
                continue
            events.append((code, pfn, order, number))
            continue
        text = raw.strip()
        if not text or text[0] == "#" or _REPORT_HEADER.fullmatch(text):
            imp.comment_lines += 1
            entries = _ENTRIES.match(text)
            if entries is not None:
                imp.lost_events += max(0, int(entries.group(2)) - int(entries.group(1)))
            continue
        lost = _LOST.search(text)
        if lost is not None:
            imp.lost_events += int(lost.group(1) or lost.group(2))
            continue
        if _TRACER_LINE.search(raw) or _GRAPH_LINE.match(raw):
            imp.other_tracer_lines += 1
            continue
        _malformed(imp, number, f"not a trace event line: {_describe(text)}", lenient)
    imp.lines = number
    imp.seconds = time.perf_counter() - t0
    return imp


def read_ftrace(path: str, *, lenient: bool = False) -> FtraceImport:
    """Read and parse the trace at ``path`` (``-`` for standard input), as UTF-8 whatever the
    locale says.

    Raises :class:`FtraceError` for a malformed line, and ``OSError`` if the file cannot be
    read.
    """
    if path == "-":
        import sys

        stdin = getattr(sys.stdin, "buffer", None)
        if stdin is None:
            raise FtraceError(0, "no standard input to read", "<stdin>")
        return _parse_bytes(stdin.read(), "<stdin>", lenient)
    with open(path, "rb") as f:
        data = f.read()
    return _parse_bytes(data, path, lenient)


def _parse_bytes(data: bytes, source: str, lenient: bool) -> FtraceImport:
    """Parse a whole trace read as bytes: decoded at once, or line by line (to name the
    line that is not UTF-8) when that fails."""
    t0 = time.perf_counter()
    try:
        lines: Iterable[str] | Iterable[bytes] = data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines = list(lines)[:-1]  # the empty string after the last newline is no line
    imp = parse_ftrace(lines, source, lenient=lenient)
    imp.seconds = time.perf_counter() - t0
    return imp


# -- lifetimes -----------------------------------------------------------------------------------


@dataclass
class Plan:
    """The trace's allocation lifetimes as actions in its own pfn space.

    ``actions`` are ``(ALLOC, pfn, order)``, ``(FREE, pfn, 0)`` and
    ``(SPLIT, pfn, order)``; ``lines[i]`` is the trace line that caused ``actions[i]``.
    """

    actions: list[tuple[int, int, int]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    allocations: int = 0
    #: Frees applied (whole blocks, or pieces of split blocks).
    frees: int = 0
    #: Frees of pfns the trace never allocated (allocated before it began).
    unmatched_frees: int = 0
    #: ``mm_page_free_batched`` events that repeat an ``mm_page_free``.
    duplicate_frees: int = 0
    #: Blocks freed in pieces (each split once, on the first piece's free).
    split_blocks: int = 0
    #: Frees of pieces of split blocks.
    piece_frees: int = 0
    #: Allocations of pfns still held: the block held there was put first.
    missed_frees: int = 0
    #: Frees of a larger order than the block held at their pfn: every block inside put.
    wide_frees: int = 0
    peak_live_pages: int = 0
    live_pages_at_end: int = 0
    #: Pages of every allocation added up: a pool this large serves any order of events.
    allocated_pages: int = 0
    max_order: int = 0
    #: True when ``mm_page_free_batched`` stood in for a missing ``mm_page_free``.
    batched_as_frees: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The counts (not the actions), JSON-friendly."""
        return {
            "actions": len(self.actions),
            "allocations": self.allocations,
            "frees": self.frees,
            "unmatched_frees": self.unmatched_frees,
            "duplicate_frees": self.duplicate_frees,
            "split_blocks": self.split_blocks,
            "piece_frees": self.piece_frees,
            "missed_frees": self.missed_frees,
            "wide_frees": self.wide_frees,
            "peak_live_pages": self.peak_live_pages,
            "live_pages_at_end": self.live_pages_at_end,
            "allocated_pages": self.allocated_pages,
            "max_order": self.max_order,
            "batched_as_frees": self.batched_as_frees,
        }


class _Lifetimes:
    """The blocks the trace holds and the actions that change them.

    ``live`` maps the head pfn of every held block to its order (a split block's pages
    are order-0 blocks of their own); ``cover`` maps every other page of a held block of
    order >= 1 to its head, so that the block holding any pfn is found in one lookup.
    """

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.live: dict[int, int] = {}
        self.cover: dict[int, int] = {}
        self.live_pages = 0
        self.pieces: set[int] = set()  # held order-0 pages of split blocks

    def holder(self, pfn: int) -> int | None:
        """Head of the held block that contains ``pfn``, if any."""
        if pfn in self.live:
            return pfn
        return self.cover.get(pfn)

    def put(self, head: int, line: int) -> None:
        order = self.live.pop(head)
        self.live_pages -= 1 << order
        if order:
            cover = self.cover
            for p in range(head + 1, head + (1 << order)):
                del cover[p]
        self.pieces.discard(head)
        self.plan.actions.append((FREE, head, 0))
        self.plan.lines.append(line)

    def split(self, head: int, line: int) -> None:
        live, cover = self.live, self.cover
        order = live[head]
        self.plan.actions.append((SPLIT, head, order))
        self.plan.lines.append(line)
        for p in range(head + 1, head + (1 << order)):
            del cover[p]
            live[p] = 0
        live[head] = 0
        self.pieces.update(range(head, head + (1 << order)))
        self.plan.split_blocks += 1

    def alloc(self, pfn: int, order: int, line: int) -> None:
        live = self.live
        plan = self.plan
        # Whatever is still held inside [pfn, pfn + 2**order) was freed unseen: put it.
        holder = self.holder(pfn)
        if holder is not None:
            self.put(holder, line)
            plan.missed_frees += 1
        if order:
            cover = self.cover
            end = pfn + (1 << order)
            for p in range(pfn + 1, end):
                if p in live or p in cover:
                    self.put(self.holder(p), line)  # type: ignore[arg-type]
                    plan.missed_frees += 1
            for p in range(pfn + 1, end):
                cover[p] = pfn
        live[pfn] = order
        self.live_pages += 1 << order
        if self.live_pages > plan.peak_live_pages:
            plan.peak_live_pages = self.live_pages
        plan.allocations += 1
        plan.allocated_pages += 1 << order
        plan.actions.append((ALLOC, pfn, order))
        plan.lines.append(line)

    def free(self, pfn: int, order: int, line: int) -> None:
        live = self.live
        plan = self.plan
        if live.get(pfn) == order:  # the common case: the block as it was allocated
            if self.pieces and pfn in self.pieces:
                plan.piece_frees += 1
            self.put(pfn, line)
            plan.frees += 1
            return
        holder = self.holder(pfn)
        if holder is None:
            plan.unmatched_frees += 1
            return
        held = live[holder]
        plan.frees += 1
        if held > order or holder != pfn:
            # A piece of a larger block: split it (once) and put the piece's pages.
            if held > 0:
                self.split(holder, line)
            for p in range(pfn, pfn + (1 << order)):
                if p in live:
                    self.put(p, line)
            plan.piece_frees += 1
            return
        # A block of a smaller order at this pfn: the free covers every block inside.
        for p in range(pfn, pfn + (1 << order)):
            h = self.holder(p)
            if h is not None:
                self.put(h, line)
        plan.wide_frees += 1

    def free_block(self, pfn: int, line: int) -> None:
        """A free that names no reliable order (``mm_page_free_batched``): the block at ``pfn``."""
        held = self.live.get(pfn)
        self.free(pfn, 0 if held is None else held, line)


def plan_lifetimes(imp: FtraceImport) -> Plan:
    """Turn the events of ``imp`` into a :class:`Plan` (see the module docstring)."""
    plan = Plan()
    state = _Lifetimes(plan)
    has_free = any(imp.counts[name] for name in FREE_EVENTS)
    plan.batched_as_frees = not has_free and any(imp.counts[name] for name in BATCHED_EVENTS)
    alloc, free, free_block = state.alloc, state.free, state.free_block
    live = state.live
    actions, lines = plan.actions, plan.lines
    max_order = 0
    for code, pfn, order, line in imp.events:
        if code == _EV_FREE:
            if order == 0 and live.get(pfn) == 0 and not state.pieces:
                # The common case inline: an order-0 page freed as it was allocated.
                del live[pfn]
                state.live_pages -= 1
                plan.frees += 1
                actions.append((FREE, pfn, 0))
                lines.append(line)
            else:
                free(pfn, order, line)
        elif code == _EV_ALLOC:
            if order == 0 and pfn not in live and pfn not in state.cover:
                live[pfn] = 0
                n = state.live_pages = state.live_pages + 1
                if n > plan.peak_live_pages:
                    plan.peak_live_pages = n
                plan.allocations += 1
                plan.allocated_pages += 1
                actions.append((ALLOC, pfn, 0))
                lines.append(line)
            else:
                alloc(pfn, order, line)
                if order > max_order:
                    max_order = order
        elif has_free:
            plan.duplicate_frees += 1
        else:
            free_block(pfn, line)
    plan.live_pages_at_end = state.live_pages
    plan.max_order = max_order
    return plan


# -- replaying a plan on pools -------------------------------------------------------------------


class PfnMap:
    """Maps the trace's pfns to the pool's while a pool runs a :class:`Plan`.

    :meth:`ops` yields pagebuddy operations (``("alloc", order)``, ``("put", pfn)``,
    ``("split", pfn)``) and receives each one's outcome through ``send``: an
    allocation's result becomes the pool block of the trace's block. An allocation
    the pool refuses (``OutOfMemory``, or an order the pool does not have) is counted
    in ``refused``, and the frees of that block are then skipped.
    """

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.pool_pfn: dict[int, int] = {}
        self.refused: Counter[str] = Counter()
        #: Index in ``plan.actions`` of the first refused allocation, or -1.
        self.first_refused = -1
        #: Index in ``plan.actions`` of the action each yielded operation came from.
        self.origin: list[int] = []
        self.skipped_frees = 0

    def ops(self) -> OpSource:
        """The operation source (see the class docstring), in the engine's protocol
        (:data:`pagebuddy._lockstep.OpSource`)."""
        pool_pfn = self.pool_pfn
        origin = self.origin
        for i, (kind, pfn, order) in enumerate(self.plan.actions):
            if kind == ALLOC:
                origin.append(i)
                value, exc = yield ("alloc", order)
                if exc is None:
                    pool_pfn[pfn] = value
                else:
                    self.refused[type(exc).__name__] += 1
                    if self.first_refused < 0:
                        self.first_refused = i
            elif kind == FREE:
                target = pool_pfn.pop(pfn, None)
                if target is None:
                    self.skipped_frees += 1
                    continue
                origin.append(i)
                yield ("put", target)
            else:
                target = pool_pfn.get(pfn)
                if target is None:
                    continue
                origin.append(i)
                _, exc = yield ("split", target)
                if exc is None:
                    for j in range(1, 1 << order):
                        pool_pfn[pfn + j] = target + j


def default_nr_pages(plan: Plan, headroom: int = DEFAULT_HEADROOM) -> int:
    """The default pool size: ``headroom`` times the peak of live pages, rounded up to a
    power of two, and at least one block of the trace's largest order (and 16 pages)."""
    need = max(plan.peak_live_pages * headroom, 1 << plan.max_order, 16)
    return 1 << (need - 1).bit_length()


def ftrace_geometry(nr_pages: int, plan: Plan | None = None) -> Geometry:
    """The geometry the replay uses: 4 KiB pages from pfn 0, no reserved pages, no zeroing
    (a trace carries no page contents), and orders up to Linux's (the cap 11 of pKVM and of
    x86's MAX_PAGE_ORDER 10), or up to the largest order in ``plan`` if that is larger."""
    cap = max(11, plan.max_order + 1) if plan is not None else 11
    return Geometry(nr_pages=nr_pages, page_size=4096, order_cap=cap, zero="never")


@dataclass
class NativeResult:
    """What :func:`replay_native` saw."""

    nr_pages: int
    geometry: Geometry | None = None
    ops: int = 0
    op_counts: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    #: Index in the plan's actions of the first refused allocation, or -1.
    first_refused: int = -1
    start_free_blocks: list[int] = field(default_factory=list)
    free_blocks: list[int] = field(default_factory=list)
    free_lists: list[list[int]] = field(default_factory=list)
    #: The operations applied (with ``keep_ops``).
    applied: list[Op] = field(default_factory=list)
    #: (operations applied, free blocks per order) along the run (with ``sample_every``).
    samples: list[tuple[int, list[int]]] = field(default_factory=list)
    #: Page states at the end (with ``want_map``), as :func:`pagebuddy._lockstep.arena_map`.
    arena_map: list[int] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def served(self) -> bool:
        """True when the pool served every allocation."""
        return not self.refused

    def as_run_result(self) -> Any:
        """The same figures as a lockstep :class:`~pagebuddy._lockstep.RunResult`."""
        from ._lockstep import RunResult

        r = RunResult(self.geometry)
        r.ops = list(self.applied)
        r.op_counts = Counter(self.op_counts)
        r.rejected = Counter(self.refused)
        r.start_free_blocks = list(self.start_free_blocks)
        r.end_free_blocks = list(self.free_blocks)
        r.start_free_pages = _pages(self.start_free_blocks)
        r.end_free_pages = _pages(self.free_blocks)
        r.samples = list(self.samples)
        r.arena_map = list(self.arena_map)
        r.seconds = self.seconds
        return r


def _pages(blocks: list[int]) -> int:
    return sum(n << k for k, n in enumerate(blocks))


def replay_native(
    plan: Plan,
    nr_pages: int,
    *,
    pool_cls: type | None = None,
    stop_at_refusal: bool = False,
    keep_ops: bool = False,
    sample_every: int = 0,
    want_map: bool = False,
) -> NativeResult:
    """Run ``plan`` on one pool (``pagebuddy.Pool`` by default) of ``nr_pages`` pages.

    With ``stop_at_refusal`` the run ends at the first refused allocation; with
    ``keep_ops`` the operations applied are kept (for ``--record``); ``sample_every``
    and ``want_map`` collect what a plot needs.
    """
    if pool_cls is None:
        from . import Pool as pool_cls
    t0 = time.perf_counter()
    g = ftrace_geometry(nr_pages, plan)
    pool = pool_cls(nr_pages, **g.kwargs())
    methods = {"alloc": pool.alloc_pages, "put": pool.put_page, "split": pool.split_page}
    mapper = PfnMap(plan)
    gen = mapper.ops()
    result = NativeResult(nr_pages, g)
    result.start_free_blocks = [len(x) for x in pool.free_lists()]
    if sample_every:
        result.samples.append((0, result.start_free_blocks))
    counts = result.op_counts
    applied = result.applied
    n = 0
    try:
        op = next(gen)
        while True:
            n += 1
            kind = op[0]
            counts[kind] += 1
            if keep_ops:
                applied.append(op)
            try:
                outcome: Outcome = (methods[kind](op[1]), None)
            except (ValueError, MemoryError) as e:
                outcome = (None, e)
                if stop_at_refusal and kind == "alloc":
                    mapper.refused[type(e).__name__] += 1
                    mapper.first_refused = mapper.origin[-1]
                    break
            if sample_every and n % sample_every == 0:
                result.samples.append((n, [len(x) for x in pool.free_lists()]))
            op = gen.send(outcome)
    except StopIteration:
        pass
    result.ops = n
    result.refused = mapper.refused
    result.first_refused = mapper.first_refused
    result.free_lists = pool.free_lists()
    result.free_blocks = [len(x) for x in result.free_lists]
    if sample_every and result.samples[-1][0] != n:
        result.samples.append((n, result.free_blocks))
    if want_map:
        from ._lockstep import arena_map

        result.arena_map = arena_map(pool, g)
    result.seconds = time.perf_counter() - t0
    return result


def replay_lockstep(
    plan: Plan,
    nr_pages: int,
    *,
    pool_cls: type | None = None,
    model_cls: type | None = None,
    compare_every: int = 1,
    sample_every: int = 0,
    want_map: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[Any, PfnMap]:
    """Run ``plan`` through ``Pool`` and ``ReferencePool`` in lockstep.

    Returns the :class:`~pagebuddy._lockstep.RunResult` and the :class:`PfnMap` that
    fed it (its ``origin`` maps each operation back to the plan's action).
    """
    from ._lockstep import run_ops

    mapper = PfnMap(plan)
    result = run_ops(
        ftrace_geometry(nr_pages, plan),
        mapper.ops(),
        pool_cls=pool_cls,
        model_cls=model_cls,
        compare_every=compare_every,
        sample_every=sample_every,
        want_map=want_map,
        progress=progress,
    )
    return result, mapper


@dataclass
class FitResult:
    """The smallest pool in which the policy serves the whole trace."""

    nr_pages: int
    peak_live_pages: int
    #: ``(nr_pages, served)`` for every replay tried, in order.
    tries: list[tuple[int, bool]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def overhead(self) -> float:
        """``nr_pages / peak_live_pages``: what the policy's fragmentation costs."""
        return self.nr_pages / self.peak_live_pages if self.peak_live_pages else 1.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "nr_pages": self.nr_pages,
            "peak_live_pages": self.peak_live_pages,
            "overhead_ratio": round(self.overhead, 4),
            "replays": len(self.tries),
            "tries": [{"nr_pages": n, "served": ok} for n, ok in self.tries],
            "seconds": round(self.seconds, 3),
        }


def fit_pool(
    plan: Plan,
    *,
    pool_cls: type | None = None,
    progress: Callable[[int, bool], None] | None = None,
) -> FitResult:
    """Find by bisection the smallest pool that serves every allocation of ``plan``.

    The bound below is the peak of live pages (no pool of fewer pages can serve the
    trace); the bound above starts at :func:`default_nr_pages` and doubles until a pool
    serves the trace, up to the pages of all allocations added up (a pool that large
    serves any trace; so does one of the next power of two, which is where the doubling
    stops). Each probe is a native replay that stops at the first refused allocation.
    The policy is not guaranteed to be monotonic in the pool size: the result is the
    smallest size the bisection found to serve, with the next smaller one it tried
    refusing.
    """
    t0 = time.perf_counter()
    peak = plan.peak_live_pages
    fit = FitResult(nr_pages=0, peak_live_pages=peak)

    def served(n: int) -> bool:
        ok = replay_native(plan, n, pool_cls=pool_cls, stop_at_refusal=True).served
        fit.tries.append((n, ok))
        if progress is not None:
            progress(n, ok)
        return ok

    if plan.allocations == 0:
        fit.nr_pages = 1
        fit.seconds = time.perf_counter() - t0
        return fit
    lo = max(0, peak - 1)  # largest size known (or assumed) not to serve
    hi = default_nr_pages(plan)
    limit = max(hi, 1 << (plan.allocated_pages - 1).bit_length())
    while not served(hi):
        lo = hi
        if hi >= limit:
            raise ValueError(f"no pool of up to {limit:,} pages serves the trace")
        hi = min(hi * 2, limit)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if served(mid):
            hi = mid
        else:
            lo = mid
    fit.nr_pages = hi
    fit.seconds = time.perf_counter() - t0
    return fit
