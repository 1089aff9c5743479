"""Unit tests of ReferencePool alone, against expectations worked out by hand from the rules.

Notation in comments: ``put 7: buddy 6 free o0 -> 6 o1`` means page 7 is freed, its buddy
(pfn 6) is a free head of order 0, so they merge into a block of order 1 headed by 6.
"""

from __future__ import annotations

import ast
import inspect
import pathlib
from collections.abc import Callable
from typing import Any

import pytest

from pagebuddy import CorruptionError, OutOfMemory, PageError, ReferencePool
from pagebuddy import _reference as reference_module
from pagebuddy import _rules as rules_module

PAGE = 64


def make(nr_pages: int, **kwargs: Any) -> ReferencePool:
    kwargs.setdefault("page_size", PAGE)
    pool = ReferencePool(nr_pages, **kwargs)
    pool.check()
    return pool


def counts(pool: ReferencePool) -> list[int]:
    return [pool.page_count(pfn) for pfn in range(pool.base_pfn, pool.base_pfn + pool.nr_pages)]


# ------------------------------------------------------------------------- initial state


def test_nine_pages() -> None:
    # puts 0..8 with max_order 4 (orders 0..3): 0+1 -> 0 o1; 2+3 -> 2 o1 -> 0 o2;
    # 4..7 -> 4 o2, which merges with 0 o2 -> 0 o3 (o3 is the top order); 8's buddy 9 is outside.
    pool = make(9)
    assert pool.max_order == 4
    assert pool.free_lists() == [[8], [], [], [0]]
    assert pool.free_pages == 9
    assert counts(pool) == [0] * 9
    assert (pool.nr_pages, pool.base_pfn, pool.page_size, pool.reserved_pages) == (9, 0, PAGE, 0)
    assert pool.zero == "free"


def test_37_pages_from_pfn_5() -> None:
    # pfns 5..41, max_order min(11, 6) = 6. 5 (buddy 4 outside); 6+7 -> 6 o1 (buddy 4 outside);
    # 8..15 -> 8 o3 (buddy 0 outside); 16..23 -> 16 o3, then 24..31 -> 24 o3 which takes 16 off
    # list 3 -> 16 o4 (buddy 0 outside); 32..39 -> 32 o3 (buddy 40 still held then);
    # 40+41 -> 40 o1 (buddy 42 outside). List 3 keeps 8 ahead of 32; list 1 keeps 6 ahead of 40.
    pool = make(37, base_pfn=5)
    assert pool.max_order == 6
    assert pool.free_lists() == [[5], [6, 40], [], [8, 32], [16], []]
    assert pool.free_pages == 37
    with pytest.raises(PageError):
        pool.page_count(4)
    with pytest.raises(PageError):
        pool.page_count(42)


def test_reserved_pages() -> None:
    # 8 pages, 0..2 reserved: put 3 (buddy 2 held); 4+5 -> 4 o1; 6+7 -> 6 o1 -> 4 o2 (buddy 0 held).
    pool = make(8, reserved_pages=3)
    assert pool.reserved_pages == 3
    assert pool.free_lists() == [[3], [], [4], []]
    assert counts(pool) == [1, 1, 1, 0, 0, 0, 0, 0]
    assert pool.free_pages == 5
    assert [len(pool.view(pfn)) for pfn in range(3)] == [PAGE] * 3
    pool.put_page(2)  # buddy 3 free o0 -> 2 o1; buddy 0 held
    assert pool.free_lists() == [[], [2], [4], []]
    pool.put_page(0)  # buddy 1 held
    assert pool.free_lists() == [[0], [2], [4], []]
    pool.put_page(1)  # 0+1 -> 0 o1 -> (2) 0 o2 -> (4) 0 o3, the top order
    assert pool.free_lists() == [[], [], [], [0]]
    pool.check()


def test_all_reserved() -> None:
    pool = make(9, reserved_pages=9)
    assert pool.free_lists() == [[], [], [], []]
    assert pool.free_pages == 0
    assert counts(pool) == [1] * 9
    with pytest.raises(OutOfMemory):
        pool.alloc_pages(0)


def test_initial_state_is_the_sequential_puts() -> None:
    built = make(23, base_pfn=3, reserved_pages=4)
    by_hand = make(23, base_pfn=3, reserved_pages=23)
    for pfn in range(3 + 4, 3 + 23):
        by_hand.put_page(pfn)
    assert built.free_lists() == by_hand.free_lists()
    assert counts(built) == counts(by_hand)


@pytest.mark.parametrize(
    ("nr_pages", "cap", "max_order"),
    [
        *[(1, 11, 1), (2, 11, 2), (3, 11, 2), (4, 11, 3), (7, 11, 3), (8, 11, 4), (70, 11, 7)],
        *[(1024, 11, 11), (2048, 11, 11), (2048, 12, 12), (9, 1, 1), (9, 2, 2), (9, 2**70, 4)],
    ],
)
def test_effective_max_order(nr_pages: int, cap: int, max_order: int) -> None:
    pool = make(nr_pages, max_order=cap)
    assert pool.max_order == max_order
    assert len(pool.free_lists()) == max_order


def _upstream_max_order(nr_pages: int, page_shift: int = 12, cap: int = 11) -> int:
    """pKVM's ``min(MAX_ORDER, get_order((nr_pages + 1) << PAGE_SHIFT))`` as C computes it:
    ``nr_pages`` an ``unsigned int`` (the shift wraps at 32 bits), ``get_order`` on a 64-bit
    ``unsigned long`` (``size--; size >>= PAGE_SHIFT; fls64(size)``, so 52 for 0)."""
    size = ((nr_pages + 1) << page_shift) % 2**32
    size = (size - 1) % 2**64
    return min(cap, (size >> page_shift).bit_length())


def test_upstream_max_order_parts_from_bit_length_at_two_to_the_twenty_pages() -> None:
    """README, "The policy": where pKVM's 32-bit arithmetic and ``bit_length`` part."""
    # Equal below 2**20 pages (every size: the README says so).
    assert all(_upstream_max_order(n) == rules_module.max_order(n, 11) for n in range(1, 2**20))
    # Above, upstream's is bit_length(nr_pages mod 2**20); pagebuddy's stays 11.
    cases = {2**20: 0, 2**20 + 1: 1, 2**20 + 5: 3, 2**20 + 1023: 10, 2**20 + 1024: 11}
    for n, upstream in cases.items():
        assert _upstream_max_order(n) == upstream == min(11, (n % 2**20).bit_length())
        assert rules_module.max_order(n, 11) == 11
    for n in (2**21, 3 * 2**20 + 7, 2**32 - 2**20 + 100, 2**32 - 2):
        assert _upstream_max_order(n) == min(11, (n % 2**20).bit_length())
    # 16 KiB and 64 KiB pages wrap at 2**18 and 2**16 pages.
    assert _upstream_max_order(2**18, page_shift=14) == 0 == _upstream_max_order(2**16, 16)
    assert _upstream_max_order(2**18 - 1, page_shift=14) == 11
    text = " ".join((pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    for claim in (
        "`min(MAX_ORDER, bit_length(nr_pages mod 2^20))`",
        "0 at 2^20 pages",
        "3 at 2^20 + 5",
        "10 at 2^20 + 1023, 11 again from 2^20 + 1024",
    ):
        assert claim in text, claim


def test_cap_one_keeps_every_page_separate() -> None:
    pool = make(9, max_order=1)
    assert pool.free_lists() == [list(range(9))]
    assert pool.alloc_pages(0) == 0
    pool.put_page(0)  # no coalescing at all: back at the tail
    assert pool.free_lists() == [[1, 2, 3, 4, 5, 6, 7, 8, 0]]
    with pytest.raises(ValueError):
        pool.alloc_pages(1)


def test_top_of_the_pfn_space() -> None:
    base = 2**64 - 9  # pfns 2**64 - 9 .. 2**64 - 1; 2**64 - 9 is odd, 2**64 - 8 is 8-aligned
    pool = make(9, base_pfn=base)
    assert pool.free_lists() == [[base], [], [], [base + 1]]
    assert pool.alloc_pages(3) == base + 1
    pool.put_page(base + 1)
    with pytest.raises(PageError):
        pool.put_page(2**64)


# ------------------------------------------------------------------------- alloc, put, split


def test_alloc_splits_upper_halves_onto_list_tails() -> None:
    pool = make(9)  # [[8], [], [], [0]]
    assert pool.alloc_pages(0) == 8
    assert pool.free_lists() == [[], [], [], [0]]
    # 0 o3 is halved: 4 joins list 2, 2 joins list 1, 1 joins list 0; 0 is returned.
    assert pool.alloc_pages(0) == 0
    assert pool.free_lists() == [[1], [2], [4], []]
    assert pool.alloc_pages(1) == 2
    assert pool.alloc_pages(1) == 4  # 4 o2 halved: 6 joins list 1
    assert pool.free_lists() == [[1], [6], [], []]
    assert pool.free_pages == 3
    assert counts(pool) == [1, 0, 1, 0, 1, 0, 0, 0, 1]
    with pytest.raises(OutOfMemory, match="order >= 2"):
        pool.alloc_pages(2)
    with pytest.raises(OutOfMemory):
        pool.alloc_pages(3)
    with pytest.raises(ValueError, match="order 4"):
        pool.alloc_pages(4)
    pool.put_page(0)  # buddy 1 free o0 -> 0 o1; buddy 2 held; joins list 1 behind 6
    assert pool.free_lists() == [[], [6, 0], [], []]
    assert pool.alloc_pages(1) == 6  # FIFO: the head of the list
    pool.check()


def test_split() -> None:
    pool = make(16)  # max_order 5: [[], [], [], [], [0]]
    assert pool.alloc_pages(2) == 0  # 8 joins list 3, 4 joins list 2
    assert pool.free_lists() == [[], [], [4], [8], []]
    assert counts(pool)[:4] == [1, 0, 0, 0]
    assert len(pool.view(0)) == 4 * PAGE
    pool.get_page(0)
    pool.get_page(0)
    pool.split_page(0)
    assert counts(pool)[:4] == [3, 1, 1, 1]  # the head keeps its refcount, tails get 1
    assert [len(pool.view(pfn)) for pfn in range(4)] == [PAGE] * 4
    assert pool.free_lists() == [[], [], [4], [8], []]
    pool.check()
    pool.put_page(1)  # buddy 0 held
    pool.put_page(3)  # buddy 2 held
    assert pool.free_lists() == [[1, 3], [], [4], [8], []]
    pool.put_many([0, 0, 0])  # 0+1 -> 0 o1; buddy 2 held
    assert pool.free_lists() == [[3], [0], [4], [8], []]
    pool.put_page(2)  # 2+3 -> 2 o1 -> (0) 0 o2 -> (4) 0 o3 -> (8) 0 o4
    assert pool.free_lists() == [[], [], [], [], [0]]
    pool.check()


def test_split_order_zero_is_a_no_op() -> None:
    pool = make(4)
    pfn = pool.alloc_pages(0)
    before = (pool.free_lists(), counts(pool))
    pool.split_page(pfn)
    assert (pool.free_lists(), counts(pool)) == before


def test_refcount_overflow() -> None:
    pool = make(2)
    pfn = pool.alloc_pages(0)
    for _ in range(65534):
        pool.get_page(pfn)
    assert pool.page_count(pfn) == 65535
    with pytest.raises(PageError, match="overflow 65535"):
        pool.get_page(pfn)
    assert pool.page_count(pfn) == 65535
    pool.put_page(pfn)
    assert pool.page_count(pfn) == 65534
    pool.get_page(pfn)
    pool.check()


# ------------------------------------------------------------------------- errors


def test_page_errors() -> None:
    pool = make(16)
    pfn = pool.alloc_pages(1)  # 0, with tail 1; 2 o1, 4 o2, 8 o3 free
    with pytest.raises(PageError, match=r"put_page: pfn 2 is not held \(refcount 0: free page\)"):
        pool.put_page(2)
    with pytest.raises(PageError, match=r"pfn 3 is not held \(refcount 0: tail page of a block\)"):
        pool.put_page(3)
    with pytest.raises(PageError, match="get_page: pfn 1 is not held"):
        pool.get_page(1)  # the tail of a held block
    with pytest.raises(PageError, match="split_page: pfn 9"):
        pool.split_page(9)
    with pytest.raises(PageError, match="view: pfn 4"):
        pool.view(4)
    for outside in (-1, 16, 17, 2**64, 2**70, -(2**70)):
        for method in ("put_page", "get_page", "split_page", "view", "page_count"):
            with pytest.raises(PageError, match=f"{method}: pfn {outside} is outside the pool"):
                getattr(pool, method)(outside)
    pool.put_page(pfn)
    with pytest.raises(PageError, match="pfn 0 is not held"):
        pool.put_page(pfn)  # double put
    assert pool.page_count(0) == 0
    assert pool.free_lists() == [[], [], [], [], [0]]


def _failing_calls(pool: ReferencePool, held: int) -> list[Callable[[], Any]]:
    return [
        lambda: pool.alloc_pages(-1),
        lambda: pool.alloc_pages(pool.max_order),
        lambda: pool.alloc_pages("0"),
        lambda: pool.alloc_pages(3),  # out of memory
        lambda: pool.alloc_many(0, 6),  # only 5 order-0 blocks to be had
        lambda: pool.alloc_many(1, 3),  # only 2 order-1 blocks
        lambda: pool.alloc_many(0, -1),
        lambda: pool.alloc_many(9, 1),
        lambda: pool.put_page(held + 1),
        lambda: pool.put_page(99),
        lambda: pool.get_page(6),
        lambda: pool.split_page(-3),
        lambda: pool.view(7),
        lambda: pool.put_many([held, held, "x"]),
        lambda: pool.put_many([99]),
        lambda: pool.page_count(8),
    ]


@pytest.mark.parametrize("call_index", range(16))
def test_failed_calls_change_nothing(call_index: int) -> None:
    buffer = bytearray(range(256)) * 2
    pool = make(8, buffer=buffer, reserved_pages=1, zero="never")
    held = pool.alloc_pages(1)  # [[1], [2], [4], []] -> 2 held; [[1], [], [4], []]
    pool.get_page(held)
    before = (pool.free_lists(), counts(pool), bytes(buffer), pool.free_pages)
    with pytest.raises((ValueError, TypeError, MemoryError)):
        _failing_calls(pool, held)[call_index]()
    assert (pool.free_lists(), counts(pool), bytes(buffer), pool.free_pages) == before
    pool.check()


def test_argument_types() -> None:
    pool = make(9)
    assert pool.alloc_pages(True) == 0  # bool is an int: order 1
    with pytest.raises(TypeError, match="order"):
        pool.alloc_pages(1.0)
    with pytest.raises(TypeError, match="pfn"):
        pool.get_page("0")
    with pytest.raises(TypeError):
        pool.put_many(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"order 4 is invalid: this pool has orders 0 to 3"):
        pool.alloc_many(4, "not even checked")


# ------------------------------------------------------------------------- zeroing


def _patterned(nr_pages: int) -> bytearray:
    return bytearray(b"\xaa" * (nr_pages * PAGE))


def test_zero_on_free() -> None:
    buffer = _patterned(4)
    pool = make(4, buffer=buffer, reserved_pages=1)  # 1 o0, 2 o1 free
    assert buffer[:PAGE] == b"\xaa" * PAGE  # the reserved page was never put
    assert buffer[PAGE:] == bytes(3 * PAGE)  # the initial puts zeroed the others
    assert pool.alloc_pages(1) == 2
    pool.view(2)[:] = b"\x55" * (2 * PAGE)
    assert buffer[2 * PAGE :] == b"\x55" * (2 * PAGE)
    pool.put_page(2)
    assert buffer[2 * PAGE :] == bytes(2 * PAGE)
    pool.check()


def test_zero_on_alloc() -> None:
    buffer = _patterned(4)
    pool = make(4, buffer=buffer, reserved_pages=1, zero="alloc")
    assert buffer == _patterned(4)
    assert pool.alloc_pages(1) == 2
    assert bytes(pool.view(2)) == bytes(2 * PAGE)
    pool.view(2)[:] = b"\x55" * (2 * PAGE)
    pool.put_page(2)
    assert buffer[2 * PAGE :] == b"\x55" * (2 * PAGE)  # freed memory keeps its bytes
    assert pool.alloc_pages(0) == 1  # zeroes page 1 and nothing else
    assert buffer == b"\xaa" * PAGE + bytes(PAGE) + b"\x55" * (2 * PAGE)
    pool.check()


def test_zero_never() -> None:
    buffer = _patterned(4)
    pool = make(4, buffer=buffer, reserved_pages=1, zero="never", _links="intrusive")
    assert buffer == _patterned(4)
    assert pool.alloc_pages(1) == 2
    assert bytes(pool.view(2)) == b"\xaa" * (2 * PAGE)
    pool.view(2)[:3] = b"abc"
    pool.put_page(2)
    assert pool.alloc_pages(1) == 2
    assert bytes(pool.view(2)[:4]) == b"abc\xaa"
    pool.check()


def test_owned_arena_starts_zeroed() -> None:
    for zero in ("free", "alloc", "never"):
        pool = make(5, zero=zero)
        assert bytes(pool.view(pool.alloc_pages(2))) == bytes(4 * PAGE)


# ------------------------------------------------------------------------- batches


# ------------------------------------------------------------------------- check()


def _corruptions() -> list[tuple[str, Callable[[ReferencePool], None]]]:
    def refcount_on_free_head(pool: ReferencePool) -> None:
        pool._refcount[8] = 1

    def head_listed_twice(pool: ReferencePool) -> None:
        pool._free_area[0].append(8)

    def head_on_wrong_list(pool: ReferencePool) -> None:
        pool._free_area[3].remove(0)
        pool._free_area[2].append(0)

    def unaligned_head(pool: ReferencePool) -> None:
        pool._order[0], pool._order[1] = None, 3
        pool._free_area[3] = [1]

    def page_in_no_block(pool: ReferencePool) -> None:
        pool._free_area[0].remove(8)
        pool._order[8] = None

    def free_head_on_no_list(pool: ReferencePool) -> None:
        pool._free_area[0].remove(8)

    def overlapping_blocks(pool: ReferencePool) -> None:
        pool._order[4] = 2  # a free head inside the free block at 0
        pool._free_area[2].append(4)

    def uncoalesced_buddies(pool: ReferencePool) -> None:
        pool._order[0], pool._order[4] = 2, 2
        pool._free_area[2] = [0, 4]
        pool._free_area[3] = []

    def dirty_free_memory(pool: ReferencePool) -> None:
        pool._arena[5 * PAGE + 3] = 1

    def refcount_out_of_range(pool: ReferencePool) -> None:
        pool._refcount[3] = -1

    return [
        (fn.__name__, fn)
        for fn in (
            refcount_on_free_head,
            head_listed_twice,
            head_on_wrong_list,
            unaligned_head,
            page_in_no_block,
            free_head_on_no_list,
            overlapping_blocks,
            uncoalesced_buddies,
            dirty_free_memory,
            refcount_out_of_range,
        )
    ]


@pytest.mark.parametrize(("name", "corrupt"), _corruptions(), ids=[n for n, _ in _corruptions()])
def test_check_detects(name: str, corrupt: Callable[[ReferencePool], None]) -> None:
    pool = make(9)  # [[8], [], [], [0]]
    corrupt(pool)
    with pytest.raises(CorruptionError, match=r"^check: "):
        pool.check()


def test_check_accepts_dirty_memory_unless_zeroing_on_free() -> None:
    for zero in ("alloc", "never"):
        pool = make(9, zero=zero)
        pool._arena[5 * PAGE + 3] = 1
        pool.check()


# ------------------------------------------------------------------------- documentation


def test_every_public_member_is_documented() -> None:
    assert ReferencePool.__doc__
    public = [name for name in vars(ReferencePool) if not name.startswith("_")]
    expected = {"alloc_pages", "alloc_many", "get_page", "put_page", "put_many", "split_page"}
    expected |= {"page_count", "free_lists", "view", "check", "free_pages", "nr_pages"}
    expected |= {"base_pfn", "page_size", "max_order", "zero", "reserved_pages"}
    expected |= {"alloc_exact", "arena"}
    expected |= {"cpus", "cache_batch", "cache_high", "drain", "drain_all", "cache_contents"}
    expected |= {"cache_sizes", "cache_auto", "cache_bound"}
    expected |= {"buddyinfo", "fragmentation", "close", "closed"}
    expected |= {"admit", "reclaim", "reclaim_many", "reclaimable", "covers", "max_pages"}
    expected |= {"min_free_pages", "set_min_free_pages"}
    assert set(public) == expected
    for name in public:
        assert inspect.getdoc(getattr(ReferencePool, name)), name


def test_model_never_imports_the_native_module() -> None:
    """The model and the rulebook it reads are independent of the native module."""
    for module in (reference_module, rules_module):
        tree = ast.parse(pathlib.Path(module.__file__).read_text())
        imported = [
            node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
        ] + [
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        ]
        assert not any("_native" in name for name in imported), module
