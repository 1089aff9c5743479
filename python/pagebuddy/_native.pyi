"""Type stubs for the native extension ``pagebuddy._native``."""

from collections.abc import Iterable
from types import TracebackType
from typing import Literal, NoReturn, SupportsIndex, TypeVar, final, overload

from typing_extensions import Buffer, Self

from ._frag import Fragmentation

__all__ = [
    "Pool",
    "__version__",
    "_after_fork",
    "_after_fork_parent",
    "_before_fork",
    "_crash_after",
    "_stop_after",
]

__version__: str

def _after_fork() -> None:
    """Registered with ``os.register_at_fork``: a forked child locks shared pools as itself."""

def _after_fork_parent() -> None:
    """Registered with ``os.register_at_fork``: batch calls held back by a fork go on."""

def _before_fork() -> None:
    """Registered with ``os.register_at_fork``: a fork waits until no batch call of this process
    holds a pool, so that a child never finds one held by a thread it does not have."""

def _crash_after(n: int) -> None:
    """For tests: the ``n``-th crash point of a shared pool's operations from now (each step of
    an operation: its journal written, each link write, the commit) kills this process with
    SIGKILL; 0 disarms."""

def _stop_after(n: int) -> None:
    """For tests: as ``_crash_after``, but the process stops itself with SIGSTOP (a live holder
    of the lock that does not run) and goes on when it gets SIGCONT."""

_B = TypeVar("_B", bound=Buffer)

@final
class Pool:
    """A buddy page allocator over an arena of ``nr_pages`` pages (pKVM's hyp_pool)."""

    def __new__(
        cls,
        nr_pages: SupportsIndex,
        *,
        page_size: SupportsIndex = 4096,
        base_pfn: SupportsIndex = 0,
        reserved_pages: SupportsIndex = 0,
        max_order: SupportsIndex = 11,
        buffer: Buffer | None = None,
        zero: Literal["free", "alloc", "never"] = "free",
        arena: bool = True,
        cpus: SupportsIndex = 0,
        cache_batch: SupportsIndex | None = None,
        cache_high: SupportsIndex | None = None,
        max_pages: SupportsIndex | None = None,
    ) -> Self: ...
    def __init__(
        self,
        nr_pages: SupportsIndex,
        *,
        page_size: SupportsIndex = 4096,
        base_pfn: SupportsIndex = 0,
        reserved_pages: SupportsIndex = 0,
        max_order: SupportsIndex = 11,
        buffer: Buffer | None = None,
        zero: Literal["free", "alloc", "never"] = "free",
        arena: bool = True,
        cpus: SupportsIndex = 0,
        cache_batch: SupportsIndex | None = None,
        cache_high: SupportsIndex | None = None,
        max_pages: SupportsIndex | None = None,
    ) -> None:
        """The constructor's signature. Called once by ``Pool(...)``, which builds the pool in
        ``__new__``; any later call raises ``TypeError``: a pool is built once."""
    def __copy__(self) -> NoReturn:
        """Raises ``TypeError``: a pool owns its arena and pages and cannot be copied."""
    def __deepcopy__(self, _memo: object) -> NoReturn:
        """Raises ``TypeError``, as ``__copy__``."""
    @staticmethod
    def create_in(
        buffer: Buffer,
        *,
        page_size: SupportsIndex = 4096,
        base_pfn: SupportsIndex = 0,
        reserved_pages: SupportsIndex = 0,
        max_order: SupportsIndex = 11,
        zero: Literal["free", "alloc", "never"] = "free",
        links: Literal["side", "intrusive"] = "side",
        timeout: float | None = None,
        owners: SupportsIndex = 32,
    ) -> Pool:
        """Format ``buffer`` as a pool that lives entirely inside it (as many pages as fit after
        its header, owner table and metadata) and open it; other processes open it with
        ``attach``.

        ``timeout``: the most seconds each call of this handle waits for the pool's lock
        (None: as long as it takes) before it raises ``TimeoutError``, nothing changed. A wait
        lets other threads run and answers Ctrl-C with ``KeyboardInterrupt``.

        ``owners``: slots of the owner table (1 to 4096): how many handles may be open on the
        pool at once, in any processes. Each handle is an owner (``owner``); the references it
        took are dropped once it is found dead (``reclaim_dead``)."""
    @staticmethod
    def attach(buffer: Buffer, *, timeout: float | None = None) -> Pool:
        """Open the pool that ``create_in`` formatted in ``buffer``, rolling back an operation a
        killed process left half done; ValueError or CorruptionError for bytes it refuses, which
        it leaves exactly as they were (the recovery is kept only once every check passed).
        ``timeout`` as for ``create_in``. The handle becomes an owner (``owner``); the
        references of owners found dead are dropped first, as ``reclaim_dead`` does."""
    @property
    def shared(self) -> bool:
        """Whether the pool lives in a shared buffer (``create_in``, ``attach``)."""
    @property
    def owner(self) -> int | None:
        """This handle's owner id in a shared pool (slot in the low 32 bits, the slot's
        generation above); None for a pool that is not shared. A forked child's handle is a new
        owner, registered at its first call."""
    def reclaim_dead(self) -> int:
        """Drop the references of every owner of this shared pool found dead (its process
        died, or its handle was closed), as if each had put them, and free their slots; return
        the pages given back to the free lists. A page another live owner took a reference to
        stays held. ValueError on a pool that is not shared."""
    @property
    def timeout(self) -> float | None:
        """The most seconds each call of this handle waits for a shared pool's lock (the
        ``timeout`` given to ``create_in`` or ``attach``); None: as long as it takes, or not a
        shared pool."""
    def alloc_pages(self, order: SupportsIndex, *, cpu: SupportsIndex | None = None) -> int:
        """Allocate a block of ``2**order`` pages; return the pfn of its head.

        With ``cpus=N`` the block comes from slot ``cpu`` (default: this thread's).
        """
    def alloc_exact(self, nr_pages: SupportsIndex) -> int:
        """Allocate a contiguous run of exactly ``nr_pages`` order-0 pages; return its first pfn."""
    def put_page(self, pfn: SupportsIndex, *, cpu: SupportsIndex | None = None) -> None:
        """Drop one reference to a held page; at zero its block is freed and coalesced.

        With ``cpus=N`` a freed block of orders 0 to 3 goes to slot ``cpu``'s cache.
        """
    def get_page(self, pfn: SupportsIndex) -> None:
        """Take one more reference to a held page."""
    def split_page(self, pfn: SupportsIndex) -> None:
        """Split the held block headed by ``pfn`` into order-0 pages, each held once."""
    def page_count(self, pfn: SupportsIndex) -> int:
        """The refcount of a page (0 for free pages and tail pages)."""
    def free_lists(self) -> list[list[int]]:
        """One free list per order from 0 to ``max_order - 1``, head first."""
    def view(self, pfn: SupportsIndex) -> memoryview:
        """A writable view of the held block headed by ``pfn`` (TypeError without an arena)."""
    def check(self) -> None:
        """Validate every invariant; raise ``CorruptionError`` naming the broken rule."""
    def buddyinfo(self) -> list[int]:
        """Free blocks per order from 0 to ``max_order - 1`` (caches not counted), as buddyinfo."""
    def fragmentation(self) -> Fragmentation:
        """Free pages, largest free order and Linux's ``extfrag_index`` per order."""
    def close(self) -> None:
        """Release the buffer at once; every later call raises ``ValueError``."""
    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
    def __enter__(self) -> Self:
        """``with Pool(...) as pool:`` closes the pool at the end of the block."""
    def __exit__(
        self,
        _exc_type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        """Close the pool; an exception from the block goes on."""
    @overload
    def alloc_many(
        self,
        order: SupportsIndex,
        count: SupportsIndex,
        *,
        out: None = None,
        cpu: SupportsIndex | None = None,
    ) -> list[int]:
        """Allocate ``count`` blocks of ``order``, all or nothing, without the GIL."""
    @overload
    def alloc_many(
        self,
        order: SupportsIndex,
        count: SupportsIndex,
        *,
        out: _B,
        cpu: SupportsIndex | None = None,
    ) -> _B:
        """The same, written into the first ``count`` items of a ``uint64`` array ``out``."""
    def put_many(
        self, pfns: Iterable[SupportsIndex] | Buffer, *, cpu: SupportsIndex | None = None
    ) -> None:
        """Put every pfn in order, all or nothing, without the GIL; a failure names its index."""
    def admit(self, pfn: SupportsIndex, order: SupportsIndex) -> None:
        """Admit the free block of ``2**order`` pages at ``pfn``, which the pool does not cover
        (Android pKVM's ``hyp_pool_admit``); past the initial range it is never coalesced."""
    def reclaim(self, order: SupportsIndex) -> int:
        """Take the free block ``alloc_pages(order)`` would hand out out of the pool; its pfn."""
    def reclaim_many(self, order: SupportsIndex, count: SupportsIndex) -> list[int]:
        """``count`` reclaims of ``order``, all or nothing."""
    def reclaimable(self, order: SupportsIndex) -> int:
        """How many blocks of ``order`` reclaims could take now, the floor respected."""
    def covers(self, pfn: SupportsIndex) -> bool:
        """Whether ``pfn`` is the pool's now: initial range or admitted, not reclaimed."""
    @property
    def min_free_pages(self) -> int:
        """Android's ``min_free_pages``: the free pages ``reclaim`` leaves."""
    def set_min_free_pages(self, pages: SupportsIndex) -> None:
        """Set ``min_free_pages`` (0 to ``2**32 - 1``)."""
    @property
    def max_pages(self) -> int:
        """Pages the pool may ever cover, from ``base_pfn``."""
    def drain(self, cpu: SupportsIndex | None = None) -> None:
        """Return every block cached in slot ``cpu`` (default: this thread's) to the pool."""
    def drain_all(self) -> None:
        """Drain every slot; afterwards the free lists hold every free page."""
    def cache_contents(self, cpu: SupportsIndex | None = None) -> list[list[int]]:
        """Slot ``cpu``'s cached blocks, one list per cached order, coldest first."""
    def cache_sizes(self, cpu: SupportsIndex | None = None) -> tuple[int, int]:
        """Slot ``cpu``'s current ``(high, batch)`` (default: this thread's slot)."""
    @property
    def cache_auto(self) -> bool:
        """Whether each slot sizes its cache by itself (no ``cache_batch``/``cache_high``)."""
    @property
    def cache_bound(self) -> int | None:
        """Pages all auto-sized caches together may hold; None otherwise."""
    @property
    def cpus(self) -> int:
        """CPU slots with page caches (0: the exact pool)."""
    @property
    def cache_batch(self) -> int:
        """Blocks a cache takes from the pool when empty, and gives back when full."""
    @property
    def cache_high(self) -> int:
        """Blocks a cache keeps per order before it gives its coldest back."""
    @property
    def free_pages(self) -> int:
        """Number of pages currently in free blocks."""
    @property
    def nr_pages(self) -> int:
        """Pages the pool started with: its initial range, where blocks coalesce."""
    @property
    def base_pfn(self) -> int:
        """Pfn of the first page of the pool."""
    @property
    def page_size(self) -> int:
        """Bytes per page (a power of two)."""
    @property
    def max_order(self) -> int:
        """Effective number of orders: valid orders are 0 to ``max_order - 1``."""
    @property
    def reserved_pages(self) -> int:
        """Number of leading pages that construction left held."""
    @property
    def arena(self) -> bool:
        """Whether the pool has an arena (``False`` for ``arena=False``: page numbers only)."""
    @property
    def metadata_bytes(self) -> int:
        """Bytes of per-page metadata and side-table links kept besides the arena."""
    @property
    def zero(self) -> str:
        """The zeroing policy: ``"free"``, ``"alloc"`` or ``"never"``."""
