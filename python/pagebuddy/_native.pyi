"""Type stubs for the native extension ``pagebuddy._native``."""

from collections.abc import Iterable
from typing import Literal

from typing_extensions import Buffer

__version__: str

class Pool:
    """A buddy page allocator over an arena of ``nr_pages`` pages (pKVM's hyp_pool)."""

    def __init__(
        self,
        nr_pages: int,
        *,
        page_size: int = 4096,
        base_pfn: int = 0,
        reserved_pages: int = 0,
        max_order: int = 11,
        buffer: Buffer | None = None,
        zero: Literal["free", "alloc", "never"] = "free",
    ) -> None: ...
    def alloc_pages(self, order: int) -> int:
        """Allocate a block of ``2**order`` pages; return the pfn of its head."""
    def put_page(self, pfn: int) -> None:
        """Drop one reference to a held page; at zero its block is freed and coalesced."""
    def get_page(self, pfn: int) -> None:
        """Take one more reference to a held page."""
    def split_page(self, pfn: int) -> None:
        """Split the held block headed by ``pfn`` into order-0 pages, each held once."""
    def page_count(self, pfn: int) -> int:
        """The refcount of a page (0 for free pages and tail pages)."""
    def free_lists(self) -> list[list[int]]:
        """One free list per order ``0..max_order``, head first."""
    def view(self, pfn: int) -> memoryview:
        """A writable view of the held block headed by ``pfn``."""
    def check(self) -> None:
        """Validate every invariant; raise ``CorruptionError`` naming the broken rule."""
    def alloc_many(self, order: int, count: int) -> list[int]:
        """Allocate ``count`` blocks of ``order``, all or nothing, without the GIL."""
    def put_many(self, pfns: Iterable[int]) -> None:
        """Put every pfn in order, all or nothing, without the GIL; a failure names its index."""
    @property
    def free_pages(self) -> int: ...
    @property
    def nr_pages(self) -> int: ...
    @property
    def base_pfn(self) -> int: ...
    @property
    def page_size(self) -> int: ...
    @property
    def max_order(self) -> int: ...
    @property
    def reserved_pages(self) -> int: ...
    @property
    def zero(self) -> str: ...
