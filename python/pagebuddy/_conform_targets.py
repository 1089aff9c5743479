"""The implementations ``pagebuddy conform`` drives, and how it reaches them.

Two ways in (docs/conform.md):

* :class:`Library`: a shared library that exports the C ABI of ``pagebuddy_conform.h``
  (:data:`HEADER`), loaded with ctypes into this process;
* :class:`Process`: a command that speaks the line protocol on its standard input and
  output, for implementations that are not a C library.

Both make :class:`Raw` pools: one call per operation, answered with the ABI's return code
(and a pfn for ``alloc``). :func:`pool_class` turns them into a class with ``Pool``'s
constructor and methods (codes become ``Pool``'s exceptions), which is what the lockstep
engine (:mod:`pagebuddy._lockstep`) pairs with the model.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._errors import OutOfMemory, PageError
from ._rules import Geometry

__all__ = [
    "ERRORS",
    "HEADER",
    "PB_EFAULT",
    "PB_EINVAL",
    "PB_ENOMEM",
    "ZERO_CODES",
    "Hosted",
    "ImplementationError",
    "Library",
    "Process",
    "Raw",
    "Target",
    "TargetError",
    "pool_class",
]

#: The path of ``pagebuddy_conform.h``, the C ABI a library exports (shipped in the package).
HEADER = str(Path(__file__).resolve().parent / "include" / "pagebuddy_conform.h")

PB_OK, PB_ENOMEM, PB_EFAULT, PB_EINVAL = 0, -12, -14, -22
#: Return code -> its name in the header.
ERRORS = {PB_ENOMEM: "PB_ENOMEM", PB_EFAULT: "PB_EFAULT", PB_EINVAL: "PB_EINVAL"}
#: Zero policy -> its ``PB_ZERO_*`` value.
ZERO_CODES = {"free": 0, "alloc": 1, "never": 2}
#: The protocol's name for "not supported" (ENOSYS).
_ENOSYS = -38

#: The optional capabilities, by the name the protocol's ``abi`` answer lists them under.
OPTIONAL = ("free_list", "page_count", "page_address")


class TargetError(Exception):
    """The implementation cannot be reached: a library that does not load or lacks a required
    function, a command that does not start or does not speak the protocol."""


class ImplementationError(Exception):
    """The implementation answered what the ABI does not allow (an unknown return code, a
    malformed line, a process that died): reported as a divergence."""


class Raw:
    """One pool of an implementation: the ABI's calls, answered with its codes."""

    def alloc(self, order: int) -> tuple[int, int]:
        """``(code, pfn)``; the pfn is meaningful only with code 0."""
        raise NotImplementedError

    def page_op(self, name: str, pfn: int) -> int:
        """``put``, ``get`` or ``split`` of ``pfn``: the code."""
        raise NotImplementedError

    def free_pages(self) -> int:
        """Pages in free blocks."""
        raise NotImplementedError

    def free_list(self, order: int) -> list[int]:
        """The free blocks of ``order``, head first (only when the target has ``free_list``)."""
        raise NotImplementedError

    def page_count(self, pfn: int) -> int:
        """The refcount of ``pfn`` (only when the target has ``page_count``)."""
        raise NotImplementedError

    def block(self, pfn: int, nbytes: int) -> Any:
        """A writable view of ``nbytes`` bytes from page ``pfn`` (only with ``page_address``)."""
        raise NotImplementedError

    def close(self) -> None:
        """Destroy the pool."""


class Target:
    """An implementation: makes :class:`Raw` pools. ``name`` says what it is; ``optional``
    holds the optional capabilities it has (names from :data:`OPTIONAL`)."""

    name = ""
    optional: frozenset[str] = frozenset()

    def create(self, g: Geometry, zero: str) -> Raw | None:
        """A new pool of ``g`` with zero policy ``zero``, or None if the implementation
        refuses it."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the implementation (a process is ended)."""


# -- a shared library -----------------------------------------------------------------------------

_U64, _UINT, _INT, _P = ctypes.c_uint64, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p
#: Function -> (restype, argtypes), as pagebuddy_conform.h declares them.
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "pb_create": (_P, [_U64, _U64, _U64, _UINT, _INT, _U64]),
    "pb_destroy": (None, [_P]),
    "pb_alloc": (_INT, [_P, _UINT, ctypes.POINTER(_U64)]),
    "pb_put": (_INT, [_P, _U64]),
    "pb_get": (_INT, [_P, _U64]),
    "pb_split": (_INT, [_P, _U64]),
    "pb_free_pages": (_U64, [_P]),
    "pb_free_list": (_U64, [_P, _UINT, ctypes.POINTER(_U64), _U64]),
    "pb_page_count": (_UINT, [_P, _U64]),
    "pb_page_address": (_P, [_P, _U64]),
}
_REQUIRED = ("pb_create", "pb_destroy", "pb_alloc", "pb_put", "pb_get", "pb_split", "pb_free_pages")


class Library(Target):
    """A shared library exporting ``pagebuddy_conform.h``, loaded into this process.

    Raises :class:`TargetError` if it cannot be loaded or lacks a required function. The
    library runs in this process: one that crashes takes the process with it (the line
    protocol, :class:`Process`, keeps an implementation apart).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        text = os.fspath(path)
        self.name = text
        if not os.path.isfile(text):
            raise TargetError(f"{text}: no such file (a shared library is expected)")
        try:
            self.lib = ctypes.CDLL(os.path.abspath(text))
        except OSError as e:
            raise TargetError(f"{text}: cannot be loaded as a shared library: {e}") from None
        missing = [f for f in _REQUIRED if not hasattr(self.lib, f)]
        if missing:
            raise TargetError(
                f"{text}: does not export {', '.join(missing)} "
                "(the functions pagebuddy_conform.h requires; see pagebuddy conform --header)"
            )
        self.fns: dict[str, Any] = {}
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(self.lib, name, None)
            if fn is not None:
                fn.restype, fn.argtypes = restype, argtypes
                self.fns[name] = fn
        self.optional = frozenset(o for o in OPTIONAL if f"pb_{o}" in self.fns)

    def create(self, g: Geometry, zero: str) -> Raw | None:
        args = (g.nr_pages, g.base_pfn, g.reserved_pages, g.order_cap, ZERO_CODES[zero])
        handle = self.fns["pb_create"](*args, g.page_size)
        return _LibraryPool(self, handle, g) if handle else None


class _LibraryPool(Raw):
    def __init__(self, target: Library, handle: int, g: Geometry) -> None:
        self.fns, self.handle = target.fns, handle
        self.pfn = _U64()
        self.out = (_U64 * g.nr_pages)()
        self.page_ops = {k: self.fns[f"pb_{k}"] for k in ("put", "get", "split")}

    def alloc(self, order: int) -> tuple[int, int]:
        code = self.fns["pb_alloc"](self.handle, order, ctypes.byref(self.pfn))
        return code, self.pfn.value

    def page_op(self, name: str, pfn: int) -> int:
        return int(self.page_ops[name](self.handle, pfn))

    def free_pages(self) -> int:
        return int(self.fns["pb_free_pages"](self.handle))

    def free_list(self, order: int) -> list[int]:
        n = self.fns["pb_free_list"](self.handle, order, self.out, len(self.out))
        if n > len(self.out):
            raise ImplementationError(
                f"pb_free_list: order {order}: {n} free blocks in a pool of {len(self.out)} pages"
            )
        return self.out[:n]

    def page_count(self, pfn: int) -> int:
        return int(self.fns["pb_page_count"](self.handle, pfn))

    def block(self, pfn: int, nbytes: int) -> memoryview:
        address = self.fns["pb_page_address"](self.handle, pfn)
        if not address:
            raise ImplementationError(f"pb_page_address: pfn {pfn}: returned NULL for a held page")
        return memoryview((ctypes.c_ubyte * nbytes).from_address(address)).cast("B")

    def close(self) -> None:
        if self.handle:
            self.fns["pb_destroy"](self.handle)
            self.handle = 0


# -- a process speaking the line protocol ---------------------------------------------------------


class Process(Target):
    """A command speaking the line protocol (docs/conform.md) on standard input and output.

    ``command`` is a list of arguments, or one string split as a shell would. The process is
    started at once and asked ``abi 1``; it must answer ``0`` and the optional capabilities
    it has (``free_list``, ``page_count``), else :class:`TargetError`. A process that dies is
    started again for the next pool.
    """

    #: The optional capabilities a process may have.
    CAPABILITIES: tuple[str, ...] = ("free_list", "page_count")
    #: The least time a process is given to answer its first line, ``abi 1``, while it starts.
    STARTUP_SECONDS: float = 10.0

    def __init__(self, command: str | Sequence[str], *, timeout: float = 10.0) -> None:
        try:
            self.argv = shlex.split(command) if isinstance(command, str) else list(command)
        except ValueError as e:  # unbalanced quotes
            raise TargetError(f"command {command!r}: {e}") from None
        if not self.argv:
            raise TargetError("an empty command")
        self.name = shlex.join(self.argv)
        self.timeout = timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.current: _ProcessPool | None = None
        words = self._start()
        unknown = sorted(set(words) - set(self.CAPABILITIES))
        if unknown:
            raise TargetError(f"{self.name}: 'abi 1' answered unknown capabilities {unknown}")
        self.optional = frozenset(words)

    def _start(self) -> list[str]:
        self.current, self._pending = None, b""
        try:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
            )
        except OSError as e:
            raise TargetError(f"{self.name}: cannot be started: {e.strerror or e}") from None
        try:  # starting up may take longer than an answer: at least STARTUP_SECONDS for this one
            answer = self.ask("abi 1", timeout=max(self.timeout, self.STARTUP_SECONDS))
        except ImplementationError as e:
            self.close()
            raise TargetError(f"{self.name}: does not speak the protocol: {e}") from None
        if answer[:1] == ["-2"]:  # the host of a library: why it cannot load it
            self.close()
            raise TargetError(" ".join(answer[1:]))
        if not answer or answer[0] != "0":
            self.close()
            raise TargetError(f"{self.name}: 'abi 1' answered {' '.join(answer)!r}, not '0 ...'")
        return answer[1:]

    def ask(self, line: str, timeout: float | None = None) -> list[str]:
        """Send one line, read the answer's words; :class:`ImplementationError` if the
        process is gone, or gives no answer within ``timeout`` seconds (default: the target's;
        the process is then ended)."""
        limit = self.timeout if timeout is None else timeout
        proc = self.proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise ImplementationError(f"no answer to {line!r}: the process has exited")
        try:
            proc.stdin.write(line.encode() + b"\n")
        except (OSError, ValueError):
            status = self._status()
            raise ImplementationError(f"no answer to {line!r}: the process {status}") from None
        fd, deadline = proc.stdout.fileno(), time.monotonic() + limit
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            ready = select.select([fd], [], [], max(0.0, left))[0] if left > 0 else []
            if not ready:
                proc.kill()
                proc.wait()  # reaped, so that the next pool starts a new process
                raise ImplementationError(
                    f"no answer to {line!r} within {limit:g} s: the process was ended"
                )
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise ImplementationError(f"no answer to {line!r}: the process {self._status()}")
            self._pending += chunk
        answer, _, self._pending = self._pending.partition(b"\n")
        return answer.decode(errors="replace").split()

    def _status(self) -> str:
        proc = self.proc
        if proc is None:
            return "was not started"
        code = proc.poll()
        if code is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = proc.wait(timeout=1.0)
        return "is still running" if code is None else f"exited with status {code}"

    def create(self, g: Geometry, zero: str) -> Raw | None:
        if self.proc is None or self.proc.poll() is not None:
            self.close()
            self._start()
        if self.current is not None:  # one pool at a time: the last one is done with
            self.current.close()
        answer = self.ask(
            f"create {g.nr_pages} {g.base_pfn} {g.reserved_pages} {g.order_cap} "
            f"{ZERO_CODES[zero]} {g.page_size}"
        )
        if answer != ["0"]:
            return None
        self.current = _ProcessPool(self)
        return self.current

    def close(self) -> None:
        proc, self.proc, self.current = self.proc, None, None
        if proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if proc.stdin is not None:
                proc.stdin.close()
        try:
            proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


class Hosted(Process):
    """A shared library exporting ``pagebuddy_conform.h``, run in a child process
    (:mod:`pagebuddy._conform_host`) that speaks the line protocol: a library that crashes
    ends that process, which is a divergence, not the end of the run. Raises
    :class:`TargetError` as :class:`Library` does."""

    CAPABILITIES = OPTIONAL

    def __init__(self, path: str | os.PathLike[str]) -> None:
        text = os.fspath(path)
        if not os.path.isfile(text):
            raise TargetError(f"{text}: no such file (a shared library is expected)")
        super().__init__([sys.executable, "-m", "pagebuddy._conform_host", os.path.abspath(text)])
        self.name = text


class _RemoteBlock:
    """The bytes of a block in a hosted library: compared and filled as the engine does with
    a view (``==``, ``tobytes``, ``len``, ``[:] = fill``), one request each."""

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, pool: _ProcessPool, pfn: int, nbytes: int) -> None:
        self.pool, self.pfn, self.nbytes = pool, pfn, nbytes

    def tobytes(self) -> bytes:
        line = f"block {self.pfn} {self.nbytes}"
        answer = self.pool.target.ask(line)
        try:
            if answer[:1] != ["0"]:
                raise ValueError
            parts = [run.split(":") for run in answer[1:]]
            data = b"".join(bytes([int(b)]) * int(n) for n, b in parts)
        except ValueError:
            raise ImplementationError(f"{line!r} was answered {' '.join(answer)!r}") from None
        if len(data) != self.nbytes:
            raise ImplementationError(f"{line!r} was answered {len(data)} bytes")
        return data

    def __len__(self) -> int:
        return self.nbytes

    def __eq__(self, other: object) -> bool:
        return self.tobytes() == bytes(memoryview(other))  # type: ignore[arg-type]

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __setitem__(self, key: slice, data: bytes) -> None:
        whole = key == slice(None) and len(data) == self.nbytes
        if not whole or data.count(data[:1]) != len(data):
            raise ValueError("a hosted block is only filled whole, with one byte value")
        self.pool._call(f"fill {self.pfn} {self.nbytes} {data[0]}", 0)


def _ints(answer: list[str], line: str) -> list[int]:
    try:
        return [int(w) for w in answer]
    except ValueError:
        raise ImplementationError(f"{line!r} was answered {' '.join(answer)!r}") from None


class _ProcessPool(Raw):
    def __init__(self, target: Process) -> None:
        self.target = target

    def _call(self, line: str, values: int) -> list[int]:
        answer = _ints(self.target.ask(line), line)
        if not answer or (answer[0] == 0 and len(answer) != 1 + values and values >= 0):
            raise ImplementationError(f"{line!r} was answered {answer!r}")
        return answer

    def alloc(self, order: int) -> tuple[int, int]:
        answer = self._call(f"alloc {order}", 1)
        return answer[0], answer[1] if answer[0] == 0 else 0

    def page_op(self, name: str, pfn: int) -> int:
        return self._call(f"{name} {pfn}", 0)[0]

    def free_pages(self) -> int:
        return self._call("free_pages", 1)[1]

    def free_list(self, order: int) -> list[int]:
        return self._call(f"free_list {order}", -1)[1:]

    def page_count(self, pfn: int) -> int:
        return self._call(f"page_count {pfn}", 1)[1]

    def block(self, pfn: int, nbytes: int) -> Any:
        return _RemoteBlock(self, pfn, nbytes)

    def close(self) -> None:
        if self.target.current is self:
            self.target.current = None
            with contextlib.suppress(ImplementationError):
                self.target.ask("destroy")


# -- Pool's face on a Raw pool --------------------------------------------------------------------


class Channel:
    """What the pool side of a lockstep pair last answered to ``alloc``, for a model that
    follows the implementation's choices (the ``buddy`` level): ``(pfn, exception)``."""

    def __init__(self) -> None:
        self.alloc: tuple[int | None, BaseException | None] = (None, None)


def _raise(code: int, what: str) -> None:
    if code == PB_OK:
        return
    name = ERRORS.get(code)
    if name is None:
        raise ImplementationError(f"{what}: returned {code}, which is no code of the ABI")
    cls = {PB_ENOMEM: OutOfMemory, PB_EFAULT: PageError, PB_EINVAL: ValueError}[code]
    raise cls(f"{what}: the implementation returned {name}")


class External:
    """An implementation's pool with ``Pool``'s methods, for the lockstep engine.

    Return codes become ``Pool``'s exceptions (PB_ENOMEM: OutOfMemory, PB_EINVAL:
    ValueError, PB_EFAULT: PageError; any other: :class:`ImplementationError`). What the
    implementation does not export reads as nothing (no free lists, refcounts 0), as the
    model's side is then seen too (:class:`Seen`). ``sort_lists`` sorts each free list (the
    ``buddy`` level, where their order is the implementation's own).
    """

    cpus, cache_batch, cache_high = 0, 16, 64

    def __init__(
        self,
        target: Target,
        g: Geometry,
        zero: str,
        *,
        sort_lists: bool,
        channel: Channel | None,
    ) -> None:
        self.nr_pages, self.page_size, self.base_pfn = g.nr_pages, g.page_size, g.base_pfn
        self.reserved_pages, self.max_order, self.zero = g.reserved_pages, g.max_order, g.zero
        self._sort, self._channel = sort_lists, channel
        self._orders: dict[int, int] = {}
        self._target = target
        raw = target.create(g, zero)
        if raw is None:
            raise ImplementationError(
                f"pb_create: refused nr_pages={g.nr_pages} base_pfn={g.base_pfn} "
                f"reserved_pages={g.reserved_pages} order_cap={g.order_cap} zero={zero} "
                f"page_size={g.page_size} (returned NULL)"
            )
        self.raw: Raw = raw

    def __del__(self) -> None:
        raw = getattr(self, "raw", None)
        if raw is not None:
            raw.close()

    def __repr__(self) -> str:
        return f"External({self._target.name}, nr_pages={self.nr_pages})"

    def alloc_pages(self, order: int) -> int:
        code, pfn = self.raw.alloc(order)
        channel = self._channel
        try:
            _raise(code, f"alloc_pages: order {order}")
        except Exception as e:
            if channel is not None:
                channel.alloc = (None, e)
            raise
        if channel is not None:
            channel.alloc = (pfn, None)
        self._orders[pfn] = order
        return pfn

    def put_page(self, pfn: int) -> None:
        _raise(self.raw.page_op("put", pfn), f"put_page: pfn {pfn}")

    def get_page(self, pfn: int) -> None:
        _raise(self.raw.page_op("get", pfn), f"get_page: pfn {pfn}")

    def split_page(self, pfn: int) -> None:
        _raise(self.raw.page_op("split", pfn), f"split_page: pfn {pfn}")
        order = self._orders.pop(pfn, 0)
        self._orders.update(dict.fromkeys(range(pfn, pfn + (1 << order)), 0))

    @property
    def free_pages(self) -> int:
        return self.raw.free_pages()

    def free_lists(self) -> list[list[int]]:
        if "free_list" not in self._target.optional:
            return []
        lists = [self.raw.free_list(k) for k in range(self.max_order)]
        return [sorted(x) for x in lists] if self._sort else lists

    def page_count(self, pfn: int) -> int:
        return self.raw.page_count(pfn) if "page_count" in self._target.optional else 0

    def view(self, pfn: int) -> Any:
        order = self._orders.get(pfn, 0)
        return self.raw.block(pfn, self.page_size << order)

    def check(self) -> None:
        """Nothing to check: the ABI has no checker."""

    def _not_in_abi(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("the conform ABI has no batch calls and no per-CPU caches")

    alloc_many = put_many = alloc_exact = drain = _not_in_abi


class Seen:
    """The model as the implementation is seen: what the implementation does not export
    (free lists, refcounts) reads as nothing on this side too, so the engine compares only
    what both show. Everything else is the model's."""

    def __init__(self, model: Any, optional: frozenset[str]) -> None:
        self.inner = model
        self._lists = "free_list" in optional
        self._counts = "page_count" in optional

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not built (yet)
            raise AttributeError(name)
        return getattr(self.inner, name)

    def free_lists(self) -> list[list[int]]:
        lists: list[list[int]] = self.inner.free_lists() if self._lists else []
        return lists

    def page_count(self, pfn: int) -> int:
        return int(self.inner.page_count(pfn)) if self._counts else 0


def pool_class(
    target: Target, zero: str, *, sort_lists: bool = False, channel: Channel | None = None
) -> type[External]:
    """A class with ``Pool``'s constructor for the engine: ``(nr_pages, **Pool keywords)``
    makes an :class:`External` pool of ``target`` with zero policy ``zero`` (whatever the
    keywords say: the model may run without an arena, where zeroing is not seen)."""

    class Bound(External):
        def __init__(self, nr_pages: int, **kw: Any) -> None:
            g = Geometry(
                nr_pages,
                page_size=kw["page_size"],
                base_pfn=kw["base_pfn"],
                reserved_pages=kw["reserved_pages"],
                order_cap=kw["max_order"],
                zero=kw.get("zero", "free"),
            )
            super().__init__(target, g, zero, sort_lists=sort_lists, channel=channel)

    return Bound
