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
   the peak of live pages. :func:`read_and_plan` does both steps in one pass over a file,
   a chunk at a time, keeping no event: its memory is that of the blocks held and of the
   plan's actions (17 bytes each), whatever the length of the trace.
3. :class:`PfnMap` maps the trace's pfns to the pool's while a pool runs the plan:
   :meth:`PfnMap.ops` is an operation source in the lockstep engine's protocol, which
   :func:`replay_lockstep` runs through ``Pool`` and ``ReferencePool`` with
   :func:`pagebuddy._lockstep.run_ops`; :func:`replay_native` runs it on one ``Pool``
   alone; :func:`fit_pool` bisects the smallest pool that serves the whole plan.
"""

from __future__ import annotations

import re
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, overload

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


def _texts(lines: Iterable[str | bytes], imp: FtraceImport, lenient: bool) -> Iterator[str | None]:
    """``lines`` as text: ``str`` as they are, ``bytes`` decoded as UTF-8 (``None`` for a
    line that is not, once :func:`_malformed` has let it pass). The two may be mixed."""
    for number, raw in enumerate(lines, 1):
        if isinstance(raw, str):
            yield raw
            continue
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as e:
            reason = f"not a text line (not UTF-8: {e.reason} at byte {e.start})"
            _malformed(imp, number, reason, lenient)
            yield None


def _is_null(page: str) -> bool:
    """A null ``page=`` as the kernel (``%p``) or trace-cmd prints it."""
    return page in _NULL_PAGES or not page.strip("0")


def _describe(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _digits(text: str) -> str:
    """A decimal number as a message shows it: whole up to 20 digits, else its first digits
    and how many there are."""
    return text if len(text) <= 20 else f"{text[:8]}... ({len(text):,} digits)"


def _u64(text: str) -> int | None:
    """A trace's number (decimal, or hexadecimal with ``0x``) if it fits in 64 bits, else
    None; never a conversion of more digits than that takes (Python refuses decimal text of
    over 4,300 digits)."""
    if text[1:2] in ("x", "X"):
        digits = text[2:].lstrip("0")
        return int(digits or "0", 16) if len(digits) <= 16 else None
    digits = text.lstrip("0")
    if len(digits) > 20:
        return None
    value = int(digits or "0")
    return value if value < 1 << 64 else None


#: Most distinct event names counted by name; lines of further names are counted as
#: :data:`OTHER_EVENT_NAMES`, so that the counts stay small whatever the trace holds.
MAX_EVENT_NAMES = 1000
OTHER_EVENT_NAMES = "(other event names)"

#: An event as :func:`parse_ftrace` hands it on: ``(code, pfn, order, line)``.
Event = tuple[int, int, int, int]


def parse_ftrace(
    lines: Iterable[str] | Iterable[bytes], source: str = "<trace>", *, lenient: bool = False
) -> FtraceImport:
    """Read tracefs or ``trace-cmd report`` text into an :class:`FtraceImport`.

    ``lines`` are ``str``, or ``bytes`` decoded here as UTF-8 (a line that is not is
    malformed).

    Lines of other events and other tracers are skipped and counted. A line that is
    none of these, a page-allocator event without ``pfn=`` and ``order=``, of an order
    above :data:`MAX_TRACE_ORDER` or with a pfn beyond 64 bits, or a lost-event count
    beyond 64 bits, is malformed: :class:`FtraceError` naming ``source`` and the line,
    or with ``lenient`` skipped and counted.
    """
    imp = FtraceImport(source)
    _scan(lines, imp, lenient, imp.events.append)
    return imp


def _scan(
    lines: Iterable[str | bytes],
    imp: FtraceImport,
    lenient: bool,
    emit: Callable[[Event], object],
) -> None:
    """:func:`parse_ftrace`'s work: the counts into ``imp``, each event to ``emit`` as it is
    read (nothing of a line is kept once it is read)."""
    t0 = time.perf_counter()
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
            code = codes.get(name)
            if code is None:
                if name not in counts and len(counts) >= MAX_EVENT_NAMES:
                    name = OTHER_EVENT_NAMES
                counts[name] += 1
                if name not in UNUSED_PAGE_EVENTS:
                    imp.other_event_lines += 1
                continue
            counts[name] += 1
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
            order = int(order_text) if len(order_text) <= 4 else _u64(order_text)
            if order is None or order > MAX_TRACE_ORDER:
                shown = _digits(order_text.lstrip("0") or "0")
                _malformed(
                    imp, number, f"{name} of order {shown} (at most {MAX_TRACE_ORDER})", lenient
                )
                continue
            pfn = _u64(text)
            if pfn is None:
                shown = text if text[1:2] in ("x", "X") else _digits(text)
                _malformed(
                    imp,
                    number,
                    f"{name} at pfn {_describe(shown)}, beyond 64 bits (2**64 - 1 at most)",
                    lenient,
                )
                continue
            if code == _EV_ALLOC and pfn == 0 and (page is None or _is_null(page)):
                imp.failed_allocations += 1
                continue
            emit((code, pfn, order, number))
            continue
        text = raw.strip()
        if not text or text[0] == "#" or _REPORT_HEADER.fullmatch(text):
            entries = _ENTRIES.match(text)
            if entries is not None:
                in_buffer, written = _u64(entries.group(1)), _u64(entries.group(2))
                if in_buffer is None or written is None:
                    reason = "entries-in-buffer/entries-written beyond 64 bits"
                    _malformed(imp, number, f"{reason}: {_describe(text)}", lenient)
                    continue
                imp.lost_events += max(0, written - in_buffer)
            imp.comment_lines += 1
            continue
        lost = _LOST.search(text)
        if lost is not None:
            n = _u64(lost.group(1) or lost.group(2))
            if n is None:
                reason = "a count of lost events beyond 64 bits"
                _malformed(imp, number, f"{reason}: {_describe(text)}", lenient)
                continue
            imp.lost_events += n
            continue
        if _TRACER_LINE.search(raw) or _GRAPH_LINE.match(raw):
            imp.other_tracer_lines += 1
            continue
        _malformed(imp, number, f"not a trace event line: {_describe(text)}", lenient)
    imp.lines = number
    imp.seconds = time.perf_counter() - t0


#: Bytes read from a trace file at a time.
_CHUNK = 1 << 22


def _stream_lines(f: IO[bytes]) -> Iterator[str | bytes]:
    """The lines of a binary stream, without their newlines, read :data:`_CHUNK` bytes at a
    time: each chunk's lines as ``str`` when it is UTF-8 (decoded at once), as ``bytes``
    otherwise (:func:`_texts` decodes them one by one, to name the line that is not). The
    empty text after the last newline is no line."""
    pieces: list[bytes] = []  # the start of a line longer than a chunk, joined once it ends
    while True:
        block = f.read(_CHUNK)
        if not block:
            break
        cut = block.rfind(b"\n")
        if cut < 0:
            pieces.append(block)
            continue
        data = b"".join([*pieces, block[:cut]]) if pieces else block[:cut]
        pieces = [block[cut + 1 :]] if cut + 1 < len(block) else []
        yield from _split(data)
    if pieces:
        yield from _split(b"".join(pieces))


def _split(data: bytes) -> list[str] | list[bytes]:
    try:
        return data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        return data.split(b"\n")


def _read(path: str, lenient: bool, emit: Callable[[Event], object]) -> FtraceImport:
    """Scan the trace at ``path`` (``-``: standard input), a chunk at a time."""
    if path == "-":
        import sys

        stdin = getattr(sys.stdin, "buffer", None)
        if stdin is None:
            raise FtraceError(0, "no standard input to read", "<stdin>")
        imp = FtraceImport("<stdin>")
        _scan(_stream_lines(stdin), imp, lenient, emit)
    else:
        imp = FtraceImport(path)
        with open(path, "rb") as f:
            _scan(_stream_lines(f), imp, lenient, emit)
    if imp.lines == 0:
        raise FtraceError(0, "empty trace: no lines", imp.source)
    return imp


def read_ftrace(path: str, *, lenient: bool = False) -> FtraceImport:
    """Read and parse the trace at ``path`` (``-`` for standard input), as UTF-8 whatever the
    locale says, keeping its events (:func:`read_and_plan` keeps none).

    Raises :class:`FtraceError` for a malformed line or an empty trace, and ``OSError`` if
    the file cannot be read.
    """
    imp = FtraceImport()
    got = _read(path, lenient, imp.events.append)
    got.events = imp.events
    return got


def read_and_plan(path: str, *, lenient: bool = False) -> tuple[FtraceImport, Plan]:
    """Read the trace at ``path`` as :func:`read_ftrace` does and plan its lifetimes as
    :func:`plan_lifetimes` does, in one pass that keeps no event: the memory is that of the
    blocks held at each point and of the plan's actions (:class:`Actions`, 17 bytes each),
    whatever the number of lines, events and unmatched frees. ``imp.seconds`` is the time
    of the whole pass; ``imp.events`` stays empty.
    """
    planner = _Planner()
    imp = _read(path, lenient, planner.feed)
    t0 = time.perf_counter()
    plan = planner.finish(imp.counts)
    imp.seconds += time.perf_counter() - t0
    return imp, plan


# -- lifetimes -----------------------------------------------------------------------------------


class Actions(Sequence[tuple[int, int, int]]):
    """A plan's actions, ``(kind, pfn, order)`` as a sequence of tuples, stored in 9 bytes
    each: a byte for the kind and the order (at most :data:`MAX_TRACE_ORDER`), 8 for the
    pfn (a trace's pfns fit in 64 bits)."""

    __slots__ = ("meta", "pfns")

    def __init__(self, actions: Iterable[tuple[int, int, int]] = ()) -> None:
        #: ``kind << 5 | order`` of each action.
        self.meta = array("B")
        #: The pfn of each action.
        self.pfns = array("Q")
        for action in actions:
            self.append(action)

    def append(self, action: tuple[int, int, int]) -> None:
        """Add ``(kind, pfn, order)`` at the end."""
        kind, pfn, order = action
        self.meta.append(kind << 5 | order)
        self.pfns.append(pfn)

    def __len__(self) -> int:
        return len(self.pfns)

    @overload
    def __getitem__(self, i: int) -> tuple[int, int, int]: ...
    @overload
    def __getitem__(self, i: slice) -> list[tuple[int, int, int]]: ...
    def __getitem__(self, i: int | slice) -> tuple[int, int, int] | list[tuple[int, int, int]]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        m = self.meta[i]
        return (m >> 5, self.pfns[i], m & 31)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        for m, pfn in zip(self.meta, self.pfns, strict=True):
            yield (m >> 5, pfn, m & 31)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Actions):
            return self.meta == other.meta and self.pfns == other.pfns
        if isinstance(other, Sequence):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Actions({list(self)!r})"


def _lines() -> array[int]:
    return array("Q")


@dataclass
class Plan:
    """The trace's allocation lifetimes as actions in its own pfn space.

    ``actions`` are ``(ALLOC, pfn, order)``, ``(FREE, pfn, 0)`` and
    ``(SPLIT, pfn, order)`` (:class:`Actions`); ``lines[i]`` is the trace line that caused
    ``actions[i]``. Each action takes 17 bytes (9 for it, 8 for its line).
    """

    actions: Actions = field(default_factory=Actions)
    lines: array[int] = field(default_factory=_lines)
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


class _Planner:
    """:func:`plan_lifetimes` one event at a time (:meth:`feed`), then :meth:`finish`.

    Whether ``mm_page_free_batched`` is a free of its own depends on whether the trace has
    any ``mm_page_free`` (``has_free``). Unless the caller knows, the first batched free
    read before any free is held back, with every event after it (9 + 8 bytes each), until
    a free decides it or the trace ends; a trace with frees holds back nothing after its
    first free.
    """

    def __init__(self, has_free: bool | None = None) -> None:
        self.plan = plan = Plan()
        self.state = state = _Lifetimes(plan)
        self.has_free = has_free
        self.max_order = 0
        #: Events held back while ``has_free`` is undecided: code << 5 | order, pfn, line.
        self._waiting = False
        self._held_meta = array("B")
        self._held_pfns = array("Q")
        self._held_lines = array("Q")
        self._live = state.live
        self._cover = state.cover
        self._meta = plan.actions.meta
        self._pfns = plan.actions.pfns
        self._lines = plan.lines

    def feed(self, event: Event) -> None:
        """Apply one event ``(code, pfn, order, line)``."""
        code, pfn, order, line = event
        plan = self.plan
        if code == _EV_FREE:
            if self._waiting:
                self._decide(True)
            elif self.has_free is None:
                self.has_free = True
            state = self.state
            if order == 0 and self._live.get(pfn) == 0 and not state.pieces:
                # The common case inline: an order-0 page freed as it was allocated.
                del self._live[pfn]
                state.live_pages -= 1
                plan.frees += 1
                self._meta.append(FREE << 5)
                self._pfns.append(pfn)
                self._lines.append(line)
            else:
                state.free(pfn, order, line)
        elif self._waiting:
            self._held_meta.append(code << 5 | order)
            self._held_pfns.append(pfn)
            self._held_lines.append(line)
        elif code == _EV_ALLOC:
            state = self.state
            if order == 0 and pfn not in self._live and pfn not in self._cover:
                self._live[pfn] = 0
                n = state.live_pages = state.live_pages + 1
                if n > plan.peak_live_pages:
                    plan.peak_live_pages = n
                plan.allocations += 1
                plan.allocated_pages += 1
                self._meta.append(ALLOC << 5)
                self._pfns.append(pfn)
                self._lines.append(line)
            else:
                state.alloc(pfn, order, line)
                if order > self.max_order:
                    self.max_order = order
        elif self.has_free:
            plan.duplicate_frees += 1
        elif self.has_free is None:
            self._waiting = True
            self.feed(event)
        else:
            self.state.free_block(pfn, line)

    def _decide(self, has_free: bool) -> None:
        """``has_free`` is known: apply the events held back."""
        self.has_free = has_free
        self._waiting = False
        held = zip(self._held_meta, self._held_pfns, self._held_lines, strict=True)
        self._held_meta, self._held_pfns, self._held_lines = array("B"), array("Q"), array("Q")
        for m, pfn, line in held:
            self.feed((m >> 5, pfn, m & 31, line))

    def finish(self, counts: Counter[str]) -> Plan:
        """The plan, once every event was fed; ``counts`` are the lines per event name."""
        has_free = any(counts[name] for name in FREE_EVENTS)
        if self._waiting:
            self._decide(has_free)
        plan = self.plan
        plan.batched_as_frees = not has_free and any(counts[name] for name in BATCHED_EVENTS)
        plan.live_pages_at_end = self.state.live_pages
        plan.max_order = self.max_order
        return plan


def plan_lifetimes(imp: FtraceImport) -> Plan:
    """Turn the events of ``imp`` into a :class:`Plan` (see the module docstring)."""
    planner = _Planner(has_free=any(imp.counts[name] for name in FREE_EVENTS))
    feed = planner.feed
    for event in imp.events:
        feed(event)
    return planner.finish(imp.counts)


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
        self.origin: array[int] = array("Q")
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
