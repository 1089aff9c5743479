"""The pagebuddy trace format: a pool geometry and the operations applied to it.

A trace is a text file. Blank lines and lines starting with ``#`` are ignored.
It holds one or more *sections*; each starts with a header line that gives the
geometry of a fresh pool, followed by one operation per line::

    # recorded by: pagebuddy demo
    pagebuddy-trace v1 nr_pages=1024 base_pfn=0x80000 reserved_pages=8 zero=free
    alloc 0
    get 524296
    put 524296
    split 524304
    alloc_many 0 4
    put_many 524297 524298

Header keys (any order; ``nr_pages`` is required, the others default as shown):
``nr_pages``, ``page_size=4096``, ``base_pfn=0``, ``reserved_pages=0``,
``max_order=11`` (the cap, clamped by the pool), ``zero=free|alloc|never``,
``links=side|intrusive`` (the link store), ``arena=owned|buffer`` (whether the
pool owns its arena or is handed a ``bytearray``) and ``max_pages`` (room to grow:
the pages the pool may cover; ``nr_pages`` may then be 0, a pool built empty).
Integers may be written in decimal or as ``0x`` hexadecimal (also ``0o``,
``0b``), with an optional sign. The geometry must be one the constructor accepts,
with at most 2**20 pages and an arena (``nr_pages * page_size``) of at most 4 GiB.

Operations: ``alloc ORDER``, ``put PFN``, ``get PFN``, ``split PFN``,
``alloc_many ORDER COUNT`` and ``put_many PFN...``; for pools that grow and shrink,
``admit PFN ORDER``, ``reclaim ORDER``, ``reclaim_many ORDER COUNT`` and ``floor
COUNT`` (``set_min_free_pages``). Any integer is accepted as an
argument: whether the operation is allowed (a put of a free page, an order out of
range) is for the pool to decide, and replaying reports such operations as
rejected. A line that is not of this form is a format error, reported with its
line number by :class:`TraceError`. Integers may carry a sign and have at most
4300 digits.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from ._rules import ARENAS, LINK_STORES, OPERATIONS, TRACED, ZERO_POLICIES, Geometry, Op, format_op

__all__ = [
    "HEADER_MAGIC",
    "Geometry",
    "Op",
    "Section",
    "TraceError",
    "TraceWriter",
    "format_header",
    "format_op",
    "parse_trace",
    "read_trace",
]

HEADER_MAGIC = "pagebuddy-trace"
HEADER_VERSION = "v1"

#: Largest arena (``nr_pages * page_size``) a trace header may ask for.
MAX_ARENA_BYTES = 1 << 32

#: Largest arena of a pool handed a ``bytearray`` (``arena=buffer``): each pool of a lockstep
#: pair gets its own, committed at once (an owned arena is committed as it is written).
MAX_BUFFER_BYTES = 1 << 29

#: Most pages a trace header may ask for. A replay keeps state for every page in both pools
#: (the model's per-page lists cost about 16 bytes a page, the native metadata 12) and
#: compares every page at the end of each section: 2**20 pages is about 30 MiB and seconds.
MAX_PAGES = 1 << 20


class TraceError(ValueError):
    """A malformed trace. ``line`` is the 1-based line number (0 when unknown)."""

    def __init__(self, line: int, message: str, source: str = "<trace>") -> None:
        self.line = line
        self.reason = message
        self.source = source
        super().__init__(f"{source}:{line}: {message}" if line else f"{source}: {message}")


@dataclass
class Section:
    """One pool's worth of a trace: its geometry, operations and their line numbers."""

    geometry: Geometry
    ops: list[Op] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    header_line: int = 0


#: Most digits an integer of a trace may have (Python's own limit on converting text to int;
#: 4300 decimal digits is far beyond any pfn, order or count a pool accepts).
MAX_DIGITS = 4300


def _int(text: str, line: int, what: str, source: str) -> int:
    """An integer in decimal (leading zeros allowed) or ``0x``/``0o``/``0b``, with a sign."""
    sign, digits = (text[0], text[1:]) if text[:1] in "+-" else ("", text)
    if len(digits) > MAX_DIGITS:
        raise TraceError(
            line, f"{what} has {len(digits)} digits: at most {MAX_DIGITS} are accepted", source
        )
    try:
        if digits[:2].lower() in ("0x", "0o", "0b"):
            value = int(digits, 0)
        elif digits.isdecimal() and digits.isascii():
            value = int(digits, 10)
        else:
            raise ValueError(text)
    except ValueError:
        raise TraceError(line, f"{what} is not an integer: {text!r}", source) from None
    return -value if sign == "-" else value


_HEADER_INT_KEYS = (
    "nr_pages",
    "page_size",
    "base_pfn",
    "reserved_pages",
    "max_order",
    "max_pages",
)
_HEADER_STR_KEYS = {"zero": ZERO_POLICIES, "links": LINK_STORES, "arena": ARENAS}
#: Keywords of a pool mode (``Geometry.options``), written after the geometry when set.
_HEADER_OPTION_KEYS = ("cpus", "cache_batch", "cache_high")


def _parse_header(words: list[str], line: int, source: str) -> Geometry:
    if len(words) < 2 or words[1] != HEADER_VERSION:
        got = words[1] if len(words) > 1 else "nothing"
        raise TraceError(
            line, f"unsupported trace version {got!r} (expected {HEADER_VERSION})", source
        )
    values: dict[str, Any] = {}
    for word in words[2:]:
        key, eq, value = word.partition("=")
        if not eq or not value:
            raise TraceError(line, f"header field {word!r} is not KEY=VALUE", source)
        if key in values:
            raise TraceError(line, f"header field {key!r} given twice", source)
        if key in _HEADER_INT_KEYS or key in _HEADER_OPTION_KEYS:
            values[key] = _int(value, line, f"header field {key}", source)
        elif key in _HEADER_STR_KEYS:
            allowed = _HEADER_STR_KEYS[key]
            if value not in allowed:
                raise TraceError(
                    line,
                    f"header field {key}={value!r} must be one of {', '.join(allowed)}",
                    source,
                )
            values[key] = value
        else:
            known = ", ".join((*_HEADER_INT_KEYS, *_HEADER_STR_KEYS, *_HEADER_OPTION_KEYS))
            raise TraceError(line, f"unknown header field {key!r} (known: {known})", source)
    if "nr_pages" not in values:
        raise TraceError(line, "header lacks nr_pages=N", source)
    if "max_order" in values:
        values["order_cap"] = values.pop("max_order")
    options = tuple((k, values.pop(k)) for k in _HEADER_OPTION_KEYS if k in values)
    geometry = Geometry(**values, options=options)
    problem = geometry.problem() or _options_problem(options)
    if problem:
        raise TraceError(line, f"invalid geometry: {problem}", source)
    problem = memory_problem(geometry)
    if problem:
        raise TraceError(line, problem, source)
    return geometry


def _options_problem(options: tuple[tuple[str, int], ...]) -> str | None:
    """Why a pool would refuse the header's cache settings, or None."""
    given = dict(options)
    if not given:
        return None
    from ._cache import cache_problem

    cpus = given.get("cpus", 0)
    if cpus == 0:
        return None if set(given) <= {"cpus"} else "cache_batch and cache_high need cpus >= 1"
    return cache_problem(cpus, given.get("cache_batch", 16), given.get("cache_high", 64))


def memory_problem(g: Geometry) -> str | None:
    """Why running ``g`` in lockstep (a trace, a fuzz episode) would need more memory than it
    may ask for, or ``None``. The limits bound what a replay holds: the arenas, and the state
    both pools keep for every page."""
    arena = g.span * g.page_size
    if arena > MAX_ARENA_BYTES:
        return (
            f"an arena of {arena} bytes: at most 4 GiB may be asked for "
            f"(nr_pages * page_size <= {MAX_ARENA_BYTES})"
        )
    if g.span > MAX_PAGES:
        return (
            f"nr_pages={g.span}: at most {MAX_PAGES} pages may be asked for (both pools "
            f"keep state for every page; this many would need about "
            f"{g.span * 28 >> 20} MiB of metadata)"
        )
    if g.arena == "buffer" and arena > MAX_BUFFER_BYTES:
        return (
            f"arena=buffer with an arena of {arena} bytes: each pool is handed a bytearray of "
            f"that size, committed at once, so at most {MAX_BUFFER_BYTES >> 20} MiB may be "
            f"asked for (an owned arena may be up to 4 GiB)"
        )
    return None


def _parse_op(words: list[str], line: int, source: str) -> Op:
    kind = words[0]
    if kind not in TRACED:
        raise TraceError(
            line, f"unknown operation {kind!r} (expected one of {', '.join(TRACED)})", source
        )
    spec, args = OPERATIONS[kind], words[1:]
    if spec.params == ("pfns",):
        if not args:
            raise TraceError(line, f"{kind} needs at least one PFN", source)
        return (kind, tuple(_int(a, line, f"{kind} argument", source) for a in args))
    nargs = len(spec.params)
    if len(args) != nargs:
        plural = "s" if nargs > 1 else ""
        raise TraceError(line, f"{kind} takes {nargs} argument{plural}: {spec.usage}", source)
    if nargs == 1:
        return (kind, _int(args[0], line, f"{kind} argument", source))
    first = f"{kind} {spec.params[0]}"
    return (
        kind,
        _int(args[0], line, first, source),
        _int(args[1], line, spec.params[1], source),
    )


def parse_trace(lines: Iterable[str], source: str = "<trace>") -> list[Section]:
    """Parse trace text (an iterable of lines) into sections.

    Raises :class:`TraceError` naming the first malformed line.
    """
    sections: list[Section] = []
    current: Section | None = None
    for number, raw in enumerate(lines, 1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        words = text.split()
        if words[0] == HEADER_MAGIC:
            current = Section(_parse_header(words, number, source), header_line=number)
            sections.append(current)
            continue
        if current is None:
            raise TraceError(
                number,
                f"operation before the header line (a trace starts with "
                f"'{HEADER_MAGIC} {HEADER_VERSION} nr_pages=N ...')",
                source,
            )
        current.ops.append(_parse_op(words, number, source))
        current.lines.append(number)
    if not sections:
        raise TraceError(0, f"empty trace: no '{HEADER_MAGIC}' header line", source)
    return sections


def _decoded(raw: Iterable[bytes], source: str) -> Iterator[str]:
    """The lines of a binary stream as text; a line that is not UTF-8 is a :class:`TraceError`."""
    for number, line in enumerate(raw, 1):
        try:
            yield line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise TraceError(
                number, f"not a text file (not UTF-8: {e.reason} at byte {e.start})", source
            ) from None


def read_trace(path: str) -> list[Section]:
    """Read and parse the trace file at ``path`` (``-`` for standard input).

    The bytes are decoded as UTF-8 here, whatever the locale or ``PYTHONIOENCODING`` say.
    Raises :class:`TraceError` for a malformed trace and :class:`OSError` for a file that
    cannot be read.
    """
    if path == "-":
        import sys

        stdin = getattr(sys.stdin, "buffer", None)
        if stdin is None:
            raise TraceError(0, "no standard input to read", "<stdin>")
        return parse_trace(_decoded(stdin, "<stdin>"), "<stdin>")
    with open(path, "rb") as f:
        return parse_trace(_decoded(f, path), path)


def format_header(g: Geometry) -> str:
    """The header line for geometry ``g`` (without newline)."""
    parts = [
        HEADER_MAGIC,
        HEADER_VERSION,
        f"nr_pages={g.nr_pages}",
        f"page_size={g.page_size}",
        f"base_pfn={g.base_pfn:#x}",
        f"reserved_pages={g.reserved_pages}",
        f"max_order={g.order_cap}",
        f"zero={g.zero}",
    ]
    if g.max_pages is not None:
        parts.append(f"max_pages={g.max_pages}")
    if g.links != "side":
        parts.append(f"links={g.links}")
    if g.arena != "owned":
        parts.append(f"arena={g.arena}")
    parts += [f"{k}={v}" for k, v in g.options if k in _HEADER_OPTION_KEYS]
    return " ".join(parts)


class TraceWriter:
    """Writes a trace incrementally: :meth:`section` starts a pool, :meth:`op` adds a line."""

    def __init__(self, file: IO[str], comment: str | None = None) -> None:
        self._file = file
        if comment:
            for line in comment.splitlines():
                file.write(f"# {line}\n")

    def section(self, geometry: Geometry) -> None:
        """Start a new section (a fresh pool) with ``geometry``."""
        self._file.write(format_header(geometry) + "\n")

    def op(self, op: Op) -> None:
        """Append one operation to the current section."""
        self._file.write(format_op(op) + "\n")

    def ops(self, ops: Iterable[Op]) -> None:
        """Append several operations."""
        self._file.writelines(format_op(op) + "\n" for op in ops)

    def flush(self) -> None:
        """Flush the underlying file."""
        self._file.flush()


def dump_trace(sections: Iterable[Section], comment: str | None = None) -> Iterator[str]:
    """Yield the lines (with newlines) of a trace holding ``sections``."""
    if comment:
        for line in comment.splitlines():
            yield f"# {line}\n"
    for s in sections:
        yield format_header(s.geometry) + "\n"
        for op in s.ops:
            yield format_op(op) + "\n"
