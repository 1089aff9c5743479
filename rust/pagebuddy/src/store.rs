//! Storage: per-page metadata (the vmemmap) and the per-order free lists with their links.
//!
//! Links are page indices, never pointers, and every link read is range-checked, so even a link
//! store whose contents someone else can write (the [`Intrusive`] one) can only ever steer the
//! allocator to pages of its own pool.

use crate::arena::Arena;
use crate::error::{Corruption, CorruptionKind, GeometryError};
use crate::prefetch::prefetch;

/// Order of a page that is not the head of a block (pKVM's `HYP_NO_ORDER`).
pub const NO_ORDER: u8 = u8::MAX;

/// Order of a page that is not the pool's: past its initial range and never admitted, or
/// reclaimed (see [`Pool::admit`](crate::Pool::admit)). Its refcount is 0.
pub const ABSENT: u8 = NO_ORDER - 1;

/// Largest number of orders a pool can have: page indices are `u32`.
pub const MAX_ORDERS: usize = 32;

/// Length from which a list's links carry the hint of the block two places on
/// ([`LinkStore::ahead`]): an append to a list this long writes it, and an allocation from it
/// reads it and hints that block's link ([`FreeLists::take_head`]). A list is FIFO: its head
/// was appended as many appends ago as the list is long, so the heads of a list this long are
/// in no cache and no TLB, and the chase through their pages bounds its allocations. On
/// shorter lists the heads are cached and the hint only costs: written, read and followed
/// there, it took the hot pair (a list of 256 order-10 blocks) from 93 to 102 ns, and read
/// there the churn step whose lists hold a few blocks from 52 to 71 ns
/// (docs/exact-pool-levers.md, "Two links a miss on long lists").
const AHEAD_FROM: u32 = 1024;

/// Per-page metadata, pKVM's `struct hyp_page`: 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageMeta {
    /// Holders of the page; 0 for free pages and for the tail pages of any block.
    pub refcount: u16,
    /// Order of the block this page heads, or [`NO_ORDER`].
    pub order: u8,
    /// Scratch for a batch call in progress (see `batch.rs`); 0 outside one.
    pub(crate) batch: u8,
}

impl PageMeta {
    /// The value metadata slices are filled with before a pool is built.
    pub const INIT: PageMeta = PageMeta {
        refcount: 0,
        order: NO_ORDER,
        batch: 0,
    };

    pub(crate) const fn new(refcount: u16, order: u8) -> Self {
        PageMeta {
            refcount,
            order,
            batch: 0,
        }
    }

    /// Overwrites `self` with `m` in one 4-byte store. `*meta = PageMeta::new(..)` compiles to
    /// a store per field, and an allocation writes a page's metadata once for its head and
    /// once for each half it splits off: three stores each where one does.
    #[inline(always)]
    pub(crate) fn set(&mut self, m: PageMeta) {
        let [r0, r1] = m.refcount.to_ne_bytes();
        let bits = u32::from_ne_bytes([r0, r1, m.order, m.batch]);
        // SAFETY: `self` is 4 writable bytes (PageMeta is repr(C): a u16 then two u8s, no
        // padding), exclusively borrowed; write_unaligned needs no alignment; the bytes written
        // are `m`'s fields in that order, each in its native representation.
        unsafe { core::ptr::write_unaligned((self as *mut PageMeta).cast::<u32>(), bits) }
    }

    /// Whether this page heads a free block.
    #[inline]
    pub const fn is_free_head(&self) -> bool {
        self.refcount == 0 && self.order < ABSENT
    }

    /// Whether this page is not the pool's ([`ABSENT`]).
    #[inline]
    pub const fn is_absent(&self) -> bool {
        self.refcount == 0 && self.order == ABSENT
    }
}

// `PageMeta::set` writes a page's metadata as one 4-byte word.
const _: () = assert!(core::mem::size_of::<PageMeta>() == 4);

/// Reinterprets a byte slice as `[T]`, checking size and alignment.
fn cast_slice<T>(bytes: &mut [u8], count: usize) -> Result<&mut [T], ()> {
    let size = core::mem::size_of::<T>();
    let need = count.checked_mul(size).ok_or(())?;
    if bytes.len() < need || bytes.as_ptr().align_offset(core::mem::align_of::<T>()) != 0 {
        return Err(());
    }
    // SAFETY: the pointer is aligned for T and `need` bytes are in bounds and exclusively
    // borrowed for the returned lifetime; T is `PageMeta` or `Link`, plain integers for which
    // every bit pattern is valid.
    Ok(unsafe { core::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<T>(), count) })
}

/// Views `bytes` as the metadata of `nr_pages` pages.
pub(crate) fn meta_from_bytes(
    bytes: &mut [u8],
    nr_pages: usize,
) -> Result<&mut [PageMeta], GeometryError> {
    let need = crate::meta_bytes(nr_pages);
    let have = bytes.len();
    if have < need {
        return Err(GeometryError::MetadataTooSmall { need, have });
    }
    cast_slice(bytes, nr_pages).map_err(|()| GeometryError::MetadataMisaligned)
}

/// A free-list node: the neighbours' page indices, [`Link::NIL`] at the ends.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    /// Previous node.
    pub prev: u32,
    /// Next node.
    pub next: u32,
}

impl Link {
    /// No neighbour.
    pub const NIL: u32 = u32::MAX;
    /// A node with no neighbours; fill side tables with it.
    pub const EMPTY: Link = Link {
        prev: Link::NIL,
        next: Link::NIL,
    };
}

/// The ends of the per-order free lists: each list's head, tail and length, the mask of the
/// non-empty ones, the link of each list's tail, and what the link of each list's head holds
/// as its `prev`. A pool keeps them in itself unless its [`LinkStore`] keeps them elsewhere
/// (a shared pool keeps them in its header, see [`SharedPool`](crate::SharedPool)).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListEnds {
    pub(crate) head: [u32; MAX_ORDERS],
    pub(crate) tail: [u32; MAX_ORDERS],
    pub(crate) len: [u32; MAX_ORDERS],
    /// Bit k set <=> list k is non-empty.
    pub(crate) mask: u32,
    /// The `prev` of each list's tail, whose link is kept here and not in the link store (its
    /// `next` is NIL); meaningless for a list of fewer than two blocks.
    pub(crate) tail_prev: [u32; MAX_ORDERS],
    /// The `prev` that the link of each list's head holds in the link store: the block taken
    /// from the head before it, or NIL; meaningless for a list of fewer than two blocks. A
    /// head has no predecessor, but its link is not rewritten when the block before it leaves
    /// (see [`FreeLists::unlink`]); it is checked against this instead.
    pub(crate) head_prev: [u32; MAX_ORDERS],
}

impl ListEnds {
    /// Every list empty.
    pub const EMPTY: ListEnds = ListEnds {
        head: [Link::NIL; MAX_ORDERS],
        tail: [Link::NIL; MAX_ORDERS],
        len: [0; MAX_ORDERS],
        mask: 0,
        tail_prev: [Link::NIL; MAX_ORDERS],
        head_prev: [Link::NIL; MAX_ORDERS],
    };
}

/// Where free-list links live. Reads may return anything: the free lists check every value.
///
/// Only blocks with a successor on their list keep a link here: the link of each list's tail
/// (its `prev`, and a `next` of NIL) is kept with the list's ends ([`ListEnds`]), so the free
/// lists neither write nor read it in the store. A block's link is written when a block is
/// appended behind it, and [`clear`](Self::clear)ed when it leaves its list or becomes the
/// tail again. When a list's head leaves it, the successor that becomes the head keeps its
/// link as it was: its `prev` still names the block that left, which the list's ends
/// remember ([`ListEnds`]) and check it against.
pub trait LinkStore {
    /// Reads the link of page `idx`.
    fn load(&self, arena: &Arena<'_>, page_size: usize, idx: u32) -> Link;
    /// Writes the link of page `idx`, which heads a free block.
    fn store(&mut self, arena: &mut Arena<'_>, page_size: usize, idx: u32, link: Link);
    /// Page `idx` left the free lists: erase what `store` left behind, if it is in the arena.
    fn clear(&mut self, arena: &mut Arena<'_>, page_size: usize, idx: u32);
    /// Bytes of bookkeeping the store keeps at the start of a free head page (0 if none).
    const IN_PAGE_BYTES: usize;
    /// Whether the store can hold the links of `nr_pages` pages.
    fn fits(&self, nr_pages: u32) -> Result<(), GeometryError>;

    /// Hints that the link of page `idx` will be read soon. A hint only: it may do nothing (the
    /// default), and changes nothing but time.
    #[inline(always)]
    fn prefetch(&self, arena: &Arena<'_>, page_size: usize, idx: u32) {
        let _ = (arena, page_size, idx);
    }

    /// What the link of `idx` hints lies two places after `idx` on its list
    /// ([`store_ahead`](Self::store_ahead)): a block to [`prefetch`](Self::prefetch) the link
    /// of, never relied on. It may be stale or anything at all (NIL, the default, if the store
    /// keeps no such hint).
    #[inline(always)]
    fn ahead(&self, arena: &Arena<'_>, page_size: usize, idx: u32) -> u32 {
        let _ = (arena, page_size, idx);
        Link::NIL
    }

    /// Hints in the link of `idx`, a block with a successor on its list, that `ahead` now
    /// follows that successor. Does nothing by default.
    #[inline(always)]
    fn store_ahead(&mut self, arena: &mut Arena<'_>, page_size: usize, idx: u32, ahead: u32) {
        let _ = (arena, page_size, idx, ahead);
    }

    /// The free lists' ends, given the pool's own `ends`: those, unless the store keeps the
    /// ends somewhere else.
    #[inline(always)]
    fn ends<'e>(&self, ends: &'e ListEnds) -> &'e ListEnds {
        ends
    }

    /// [`ends`](Self::ends), to write.
    #[inline(always)]
    fn ends_mut<'e>(&self, ends: &'e mut ListEnds) -> &'e mut ListEnds {
        ends
    }
}

/// Links in the free pages themselves, as upstream pKVM: no extra metadata. While a free block
/// has a successor on its list, the first 16 bytes of its head page are the pool's: `prev` and
/// `next` (little-endian `u32`s); then, on a list of 1024 blocks or more, a hint of the block
/// two places further on ([`ahead`](LinkStore::ahead)), whose link an allocation taking the
/// block from the list's head hints, so that the chase through the list's pages runs two links
/// a miss; then 4 bytes of zeros. The tail of a list keeps no link in its page (the list's
/// ends hold it, see [`ListEnds`]), so a block freed onto the tail of a list is not written to
/// until another block is appended behind it, and a block alone on its list never is: its
/// bytes are left as they were (zeros, under a zero policy). The 16 bytes are zeroed, with one
/// store, when the block leaves the list or becomes the tail again. Taking a list's head does
/// not write its successor's page: the successor becomes the head, its `prev` still naming the
/// block taken, as the list's ends expect.
#[derive(Clone, Copy, Debug, Default)]
pub struct Intrusive;

impl LinkStore for Intrusive {
    const IN_PAGE_BYTES: usize = 16;

    // The link is one little-endian u64 (prev in the low half), read with one 8-byte load and
    // written with one 8-byte store: never two halves written and read back whole, a pattern
    // the store buffer cannot forward.
    #[inline]
    fn load(&self, arena: &Arena<'_>, page_size: usize, idx: u32) -> Link {
        let v = u64::from_le(arena.read_u64(idx as usize * page_size));
        Link {
            prev: v as u32,
            next: (v >> 32) as u32,
        }
    }

    #[inline]
    fn store(&mut self, arena: &mut Arena<'_>, page_size: usize, idx: u32, link: Link) {
        let v = u64::from(link.prev) | u64::from(link.next) << 32;
        arena.write_u64(idx as usize * page_size, v.to_le());
    }

    #[inline]
    fn clear(&mut self, arena: &mut Arena<'_>, page_size: usize, idx: u32) {
        arena.zero16(idx as usize * page_size);
    }

    #[inline(always)]
    fn ahead(&self, arena: &Arena<'_>, page_size: usize, idx: u32) -> u32 {
        u32::from_le(arena.read_u32(idx as usize * page_size + 8))
    }

    #[inline(always)]
    fn store_ahead(&mut self, arena: &mut Arena<'_>, page_size: usize, idx: u32, ahead: u32) {
        arena.write_u32(idx as usize * page_size + 8, ahead.to_le());
    }

    fn fits(&self, _nr_pages: u32) -> Result<(), GeometryError> {
        Ok(())
    }

    #[inline(always)]
    fn prefetch(&self, arena: &Arena<'_>, page_size: usize, idx: u32) {
        arena.prefetch(idx as usize * page_size);
    }
}

/// Links in a caller-provided table beside the metadata (8 bytes a page), so that nothing written
/// into the arena can affect the allocator.
#[derive(Debug)]
pub struct SideTable<'a> {
    links: &'a mut [Link],
}

impl<'a> SideTable<'a> {
    /// A side table over `links`, which needs one entry per page of the pool.
    pub fn new(links: &'a mut [Link]) -> Self {
        SideTable { links }
    }

    /// A side table carved from raw bytes: [`link_bytes`](crate::link_bytes)`(nr_pages)` bytes,
    /// 4-byte aligned.
    pub fn from_bytes(bytes: &'a mut [u8], nr_pages: usize) -> Result<Self, GeometryError> {
        let need = crate::link_bytes(nr_pages);
        let have = bytes.len();
        if have < need {
            return Err(GeometryError::LinksTooSmall { need, have });
        }
        let links = cast_slice(bytes, nr_pages).map_err(|()| GeometryError::LinksMisaligned)?;
        Ok(SideTable { links })
    }
}

impl LinkStore for SideTable<'_> {
    const IN_PAGE_BYTES: usize = 0;

    #[inline]
    fn load(&self, _: &Arena<'_>, _: usize, idx: u32) -> Link {
        self.links.get(idx as usize).copied().unwrap_or(Link::EMPTY)
    }

    #[inline]
    fn store(&mut self, _: &mut Arena<'_>, _: usize, idx: u32, link: Link) {
        if let Some(slot) = self.links.get_mut(idx as usize) {
            *slot = link;
        }
    }

    #[inline]
    fn clear(&mut self, _: &mut Arena<'_>, _: usize, _: u32) {}

    #[inline(always)]
    fn prefetch(&self, _: &Arena<'_>, _: usize, idx: u32) {
        if let Some(link) = self.links.get(idx as usize) {
            prefetch(link);
        }
    }

    fn fits(&self, nr_pages: u32) -> Result<(), GeometryError> {
        let need = crate::link_bytes(nr_pages as usize);
        let have = core::mem::size_of_val(self.links);
        if have < need {
            return Err(GeometryError::LinksTooSmall { need, have });
        }
        Ok(())
    }
}

/// The array slot of list `order`. Callers pass orders below `max_order <= MAX_ORDERS`, for which
/// this is the identity; the mask only lets the compiler drop the bounds checks.
#[inline(always)]
fn slot(order: u32) -> usize {
    order as usize % MAX_ORDERS
}

/// The mask bits of the lists of orders `k..top` (`top <= MAX_ORDERS`), for
/// [`FreeLists::remask`].
#[inline(always)]
pub(crate) fn orders_to_top(k: u32, top: u32) -> u32 {
    ((1u64 << top) - (1u64 << k)) as u32
}

/// What unlinking a node from its list reads, checked by [`FreeLists::plan_remove`]: the node,
/// its neighbours ([`Link::NIL`] where the list ends), and the far links of those neighbours,
/// which the unlink writes back unchanged.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Unlink {
    idx: u32,
    prev: u32,
    next: u32,
    /// `prev`'s own `prev` (meaningless when `prev` is NIL).
    prev_prev: u32,
    /// `next`'s own `next` (meaningless when `next` is NIL).
    next_next: u32,
}

impl Unlink {
    /// The node it unlinks.
    #[inline(always)]
    pub(crate) fn idx(&self) -> u32 {
        self.idx
    }
}

/// The per-order FIFO free lists (pKVM's `free_area`), doubly linked through a [`LinkStore`].
pub(crate) struct FreeLists<L> {
    pub(crate) links: L,
    /// The lists' ends, unless `links` keeps them elsewhere: reached through
    /// [`ends`](Self::ends) and [`ends_mut`](Self::ends_mut) only.
    own: ListEnds,
    nr_pages: u32,
    base_pfn: u64,
    /// The page size: an in-page link is at `idx * page_size`, a multiply. Kept as a number,
    /// not as its log2: a shift by a variable amount needs `cl` on x86-64 (without BMI2), and
    /// an allocation also shifts by its order, so the two took turns in that register and the
    /// allocation saved more registers and spilled (docs/exact-pool-levers.md, "The page
    /// size multiplied, not shifted").
    page_size: usize,
}

impl<L: LinkStore> FreeLists<L> {
    pub(crate) fn new(links: L, nr_pages: u32, base_pfn: u64, page_size: usize) -> Self {
        FreeLists {
            links,
            own: ListEnds::EMPTY,
            nr_pages,
            base_pfn,
            page_size,
        }
    }

    fn corrupt(&self, kind: CorruptionKind, idx: u32) -> Corruption {
        Corruption {
            kind,
            pfn: self.base_pfn + idx as u64,
        }
    }

    /// The free pages: the length of each list below `max_order` times its blocks' size,
    /// summed (a shared pool's lengths are bytes any process can write: a sum past `u32::MAX`
    /// reads as that, and a list at or above `max_order` is one `check` reports).
    #[inline]
    pub(crate) fn free_pages(&self, max_order: u32) -> u32 {
        let len = &self.ends().len[..(max_order as usize).min(MAX_ORDERS)];
        let sum = (0..len.len()).fold(0u64, |sum, k| sum + (u64::from(len[k]) << k));
        u32::try_from(sum).unwrap_or(u32::MAX)
    }

    /// Sets the mask bits of the lists in `filled` (each now non-empty) and clears those in
    /// `emptied` (each now empty): the mask written once for all the lists an operation
    /// appended to or unlinked from (see [`append_planned_masking`](Self::append_planned_masking)).
    #[inline(always)]
    pub(crate) fn remask(&mut self, filled: u32, emptied: u32) {
        if filled | emptied != 0 {
            let ends = self.ends_mut();
            ends.mask = (ends.mask | filled) & !emptied;
        }
    }

    /// The lists' ends (the pool's own, or where the link store keeps them).
    #[inline(always)]
    pub(crate) fn ends(&self) -> &ListEnds {
        self.links.ends(&self.own)
    }

    /// [`ends`](Self::ends), to write.
    #[inline(always)]
    pub(crate) fn ends_mut(&mut self) -> &mut ListEnds {
        self.links.ends_mut(&mut self.own)
    }

    /// The link of `idx`, with both ends checked to be NIL or a page of the pool.
    #[inline]
    pub(crate) fn link(&self, arena: &Arena<'_>, idx: u32) -> Result<Link, Corruption> {
        let link = self.links.load(arena, self.page_size, idx);
        if self.names_a_page(link.prev) && self.names_a_page(link.next) {
            Ok(link)
        } else {
            Err(self.corrupt(CorruptionKind::LinkOutOfRange, idx))
        }
    }

    /// Whether a link's end `i` is NIL or a page of the pool: `i == NIL || i < nr_pages` in one
    /// comparison (NIL + 1 wraps to 0, and nr_pages is at most MAX_PAGES < NIL).
    #[inline(always)]
    fn names_a_page(&self, i: u32) -> bool {
        i.wrapping_add(1) <= self.nr_pages
    }

    /// The link of `idx`, a block on list `order`: read and checked as [`link`](Self::link)
    /// does, but for the list's ends. The tail's link is the one the list's ends hold (its
    /// `prev` in range, checked here; NIL for a list of one). The head's `prev` is NIL: its
    /// store holds the block taken from the head before it (taking a head leaves its
    /// successor's link as it was, see [`unlink`](Self::unlink)), checked
    /// against what the list's ends remember (`head_prev`). (The caller checks that the
    /// list's ends name `idx` where it has no neighbour, as for any block.)
    #[inline(always)]
    pub(crate) fn link_in(
        &self,
        arena: &Arena<'_>,
        idx: u32,
        order: u32,
    ) -> Result<Link, Corruption> {
        let (o, ends) = (slot(order), self.ends());
        if ends.tail[o] != idx {
            let link = self.link(arena, idx)?;
            if ends.head[o] != idx {
                return Ok(link);
            }
            // The head's link holds the `prev` the ends remember, and stands for NIL.
            if link.prev != ends.head_prev[o] {
                return Err(self.corrupt(CorruptionKind::ListBroken, idx));
            }
            return Ok(Link {
                prev: Link::NIL,
                next: link.next,
            });
        }
        let prev = if ends.len[o] == 1 {
            Link::NIL
        } else {
            ends.tail_prev[o]
        };
        if self.names_a_page(prev) {
            Ok(Link {
                prev,
                next: Link::NIL,
            })
        } else {
            Err(self.corrupt(CorruptionKind::LinkOutOfRange, idx))
        }
    }

    /// The head of list `order`, `None` if the list is empty. The ends of a shared pool lie in
    /// bytes that any process can write, so a head outside the pool is corruption, found here
    /// before anything indexes with it.
    #[inline]
    pub(crate) fn first(&self, order: u32) -> Result<Option<u32>, Corruption> {
        match self.ends().head.get(order as usize) {
            Some(&h) if h < self.nr_pages => Ok(Some(h)),
            Some(&h) if h != Link::NIL => Err(self.corrupt(CorruptionKind::LinkOutOfRange, h)),
            _ => Ok(None),
        }
    }

    /// Takes `idx`, the head of list `order`, off it, then hints
    /// what the next removal of the new head will miss on: its metadata in `meta` and its
    /// link, both at addresses the unlink read. A list is FIFO and allocations take its head,
    /// so without the hints each allocation of that order waits for two misses in a row, the
    /// second at an address the first returns. The unlink reads and writes no other block's
    /// link: the new head's `prev` already names `idx`, which the ends now remember.
    ///
    /// On a list of [`AHEAD_FROM`] blocks or more, whose head was appended at least that many
    /// appends before and is in no cache, the link of the block after the new head is hinted
    /// instead of the new head's own, as the link of `idx` names it ([`LinkStore::ahead`]): the
    /// allocations then chase the list two links a miss, not one. The new head's link is not
    /// hinted again there: the take before this one hinted it, as its block after the new head.
    /// (A block appended while its list was shorter names no such block, or a stale one: the
    /// hint is then lost for that take, and the take after it waits for its head's link.)
    ///
    /// Returns the new head: NIL if the list emptied.
    #[inline(always)]
    pub(crate) fn take_head(
        &mut self,
        arena: &mut Arena<'_>,
        idx: u32,
        order: u32,
        meta: &[PageMeta],
    ) -> Result<u32, Corruption> {
        let u = self.plan_take_head(arena, idx, order)?;
        // Read before the unlink clears it.
        let ahead = if self.len(order) >= AHEAD_FROM {
            self.links.ahead(arena, self.page_size, idx)
        } else {
            Link::NIL
        };
        if self.unlink(arena, order, u) {
            self.remask(0, 1 << order);
        }
        if let Some(m) = meta.get(u.next as usize) {
            prefetch(m);
            if ahead == Link::NIL {
                self.links.prefetch(arena, self.page_size, u.next);
            } else {
                // Hinting the new head's link here too, a line already on its way, took a
                // churn step at 2^22 pages from 215 to 199 ns: with links in the pages, the
                // hints of pages no TLB holds are where a step waits
                // (docs/exact-pool-levers.md).
                self.links.prefetch(arena, self.page_size, ahead);
            }
        }
        Ok(u.next)
    }

    /// Takes the first `count` blocks of list `order` off it, head first, telling `taken`
    /// each: what `count` calls of [`take_head`](Self::take_head) do, with one write to the
    /// list's ends for all of them. The list must hold more than `count` blocks, whose first
    /// `count` links were read and checked while it was as it is now (a batch's
    /// `check_head_blocks`), so this cannot fail. Returns the new head.
    ///
    /// Why it is the same: each `take_head` of a list of two or more makes the successor the
    /// head, remembers the block taken as the head's `prev` (`head_prev`), clears the taken
    /// block's link and counts one block fewer ([`unlink`](Self::unlink) with no `prev`). The
    /// list never gets down to its tail here, so no take reaches the tail's branches: after
    /// `count` of them the head is the successor of the last block taken, `head_prev` is that
    /// block, the `count` links are cleared and the length is `count` less. The mask keeps the
    /// list's bit, as it stays non-empty.
    #[inline(always)]
    pub(crate) fn take_heads(
        &mut self,
        arena: &mut Arena<'_>,
        order: u32,
        count: u32,
        mut taken: impl FnMut(u32),
    ) -> u32 {
        let o = slot(order);
        let (mut idx, mut last) = (self.ends().head[o], Link::NIL);
        for _ in 0..count {
            let next = self.links.load(arena, self.page_size, idx).next;
            self.links.clear(arena, self.page_size, idx);
            taken(idx);
            (last, idx) = (idx, next);
        }
        let ends = self.ends_mut();
        ends.head[o] = idx;
        ends.head_prev[o] = last;
        ends.len[o] = ends.len[o].wrapping_sub(count);
        // The link the next allocation reads, as `take_head` hints it (the caller hints the
        // new head's metadata).
        self.links.prefetch(arena, self.page_size, idx);
        idx
    }

    /// Checks that [`append`](Self::append) to list `order` can succeed: the tail's link, the
    /// only one it reads, is in range. Writes nothing.
    #[inline]
    pub(crate) fn check_append(&self, arena: &Arena<'_>, order: u32) -> Result<(), Corruption> {
        self.plan_append(arena, order).map(drop)
    }

    /// What [`append`](Self::append) to list `order` reads, read and checked: the link of the
    /// list's tail, `None` if the list is empty (a tail outside the pool is corruption, as a
    /// head is: see [`first`](Self::first)), which the list's ends hold
    /// ([`link_in`](Self::link_in)). Writes nothing; valid for
    /// [`append_planned`](Self::append_planned) until list `order` changes.
    #[inline(always)]
    pub(crate) fn plan_append(
        &self,
        arena: &Arena<'_>,
        order: u32,
    ) -> Result<Option<Link>, Corruption> {
        match self.ends().tail[slot(order)] {
            Link::NIL => Ok(None),
            tail if tail < self.nr_pages => self.link_in(arena, tail, order).map(Some),
            tail => Err(self.corrupt(CorruptionKind::LinkOutOfRange, tail)),
        }
    }

    /// Appends `idx` at the tail of list `order`.
    #[inline]
    pub(crate) fn append(
        &mut self,
        arena: &mut Arena<'_>,
        idx: u32,
        order: u32,
    ) -> Result<(), Corruption> {
        let tail = self.plan_append(arena, order)?;
        self.append_planned(arena, idx, order, tail);
        Ok(())
    }

    /// [`append`](Self::append) with the tail's link that [`plan_append`](Self::plan_append)
    /// read while list `order` was as it is now. Cannot fail.
    #[inline(always)]
    pub(crate) fn append_planned(
        &mut self,
        arena: &mut Arena<'_>,
        idx: u32,
        order: u32,
        tail_link: Option<Link>,
    ) {
        self.append_planned_masking::<true>(arena, idx, order, tail_link);
    }

    /// [`append_planned`](Self::append_planned), setting the list's mask bit if `MASK`. Without
    /// it the list is non-empty afterwards and the caller sets its bit
    /// ([`remask`](Self::remask)) once it has appended to every list it appends to: a split
    /// appends to one list per half, and writes the mask once, not once per half.
    ///
    /// The appended block becomes the tail, whose link the list's ends keep: nothing is
    /// written into its page now (a freed page is most often one no cache holds). The old
    /// tail's link, kept in the ends until now, is written into its store, whole; on a list of
    /// [`AHEAD_FROM`] blocks or more, the old tail's predecessor is told that the block two
    /// places after it is the new tail ([`LinkStore::store_ahead`]); and the new tail's link
    /// is hinted, for the append that will write it.
    #[inline(always)]
    pub(crate) fn append_planned_masking<const MASK: bool>(
        &mut self,
        arena: &mut Arena<'_>,
        idx: u32,
        order: u32,
        tail_link: Option<Link>,
    ) {
        let o = slot(order);
        let tail = self.ends().tail[o];
        match tail_link {
            Some(mut t) if tail != Link::NIL => {
                t.next = idx;
                self.links.store(arena, self.page_size, tail, t);
                // The tail's predecessor, whose link the append before wrote (a line the
                // caches still hold), has `idx` two places after it.
                if t.prev != Link::NIL && self.ends().len[o] >= AHEAD_FROM {
                    self.links.store_ahead(arena, self.page_size, t.prev, idx);
                }
                let ends = self.ends_mut();
                ends.tail_prev[o] = tail;
                if ends.head[o] == tail {
                    // A list of one: its head's link, written now, has a `prev` of NIL.
                    ends.head_prev[o] = Link::NIL;
                }
                self.links.prefetch(arena, self.page_size, idx);
            }
            _ => {
                let ends = self.ends_mut();
                ends.head[o] = idx;
                if MASK {
                    ends.mask |= 1 << o;
                }
            }
        }
        let ends = self.ends_mut();
        ends.tail[o] = idx;
        ends.len[o] += 1;
    }

    /// [`append_planned_masking::<false>`](Self::append_planned_masking) of `idx` to list
    /// `order` if the list is empty (its tail NIL, so [`plan_append`](Self::plan_append) reads
    /// nothing): `idx` becomes its head and tail. Returns whether it appended; a list with a
    /// tail is left to the planned append.
    #[inline(always)]
    pub(crate) fn append_to_empty(&mut self, idx: u32, order: u32) -> bool {
        let (o, ends) = (slot(order), self.ends_mut());
        if ends.tail[o] != Link::NIL {
            return false;
        }
        ends.head[o] = idx;
        ends.tail[o] = idx;
        ends.len[o] += 1;
        true
    }

    /// Checks that unlinking `idx` from list `order` ([`plan_remove`](Self::plan_remove), then
    /// [`unlink`](Self::unlink)) can succeed. Writes nothing.
    #[inline]
    pub(crate) fn check_remove(
        &self,
        arena: &Arena<'_>,
        idx: u32,
        order: u32,
    ) -> Result<(), Corruption> {
        self.plan_remove(arena, idx, order).map(drop)
    }

    /// What unlinking `idx` from list `order` reads, read and checked: the
    /// links of `idx` and of its neighbours on the list, each in range and pointing back at
    /// `idx` (or the list's head or tail being `idx` where there is no neighbour). Writes
    /// nothing; valid for [`unlink`](Self::unlink) until list `order` changes.
    #[inline(always)]
    pub(crate) fn plan_remove(
        &self,
        arena: &Arena<'_>,
        idx: u32,
        order: u32,
    ) -> Result<Unlink, Corruption> {
        let o = slot(order);
        if self.ends().len[o] == 1 {
            return self.plan_remove_alone(idx, order);
        }
        let me = self.link_in(arena, idx, order)?;
        let prev = if me.prev == Link::NIL {
            None
        } else {
            Some(self.link(arena, me.prev)?)
        };
        let next = if me.next == Link::NIL {
            None
        } else {
            Some(self.link_in(arena, me.next, order)?)
        };
        let ends = self.ends();
        let consistent = match prev {
            Some(p) => p.next == idx,
            None => ends.head[o] == idx,
        } && match next {
            Some(n) => n.prev == idx,
            None => ends.tail[o] == idx,
        } && ends.len[o] > 0;
        if !consistent {
            return Err(self.corrupt(CorruptionKind::ListBroken, idx));
        }
        Ok(Unlink {
            idx,
            prev: me.prev,
            next: me.next,
            prev_prev: prev.map_or(Link::NIL, |p| p.prev),
            next_next: next.map_or(Link::NIL, |n| n.next),
        })
    }

    /// [`plan_remove`](Self::plan_remove) of `idx` from list `order` of one block: it must be
    /// that block (the list's head and tail), whose link is NIL both ways and kept nowhere.
    #[inline(always)]
    fn plan_remove_alone(&self, idx: u32, order: u32) -> Result<Unlink, Corruption> {
        let (o, ends) = (slot(order), self.ends());
        if ends.head[o] == idx && ends.tail[o] == idx {
            Ok(Unlink {
                idx,
                prev: Link::NIL,
                next: Link::NIL,
                prev_prev: Link::NIL,
                next_next: Link::NIL,
            })
        } else {
            Err(self.corrupt(CorruptionKind::ListBroken, idx))
        }
    }

    /// Checks that `idx` is the block of list `order`, a list of one ([`len`](Self::len) 1):
    /// its head and its tail, as [`plan_remove`](Self::plan_remove) checks it. Writes nothing;
    /// [`unlink_alone`](Self::unlink_alone) then unlinks it, until list `order` changes.
    #[inline(always)]
    pub(crate) fn check_alone(&self, idx: u32, order: u32) -> Result<(), Corruption> {
        self.plan_remove_alone(idx, order).map(drop)
    }

    /// [`unlink`](Self::unlink) of the block of list `order`, alone on it, as
    /// [`check_alone`](Self::check_alone) found it: the list's ends become those of an empty
    /// list (its link, kept in the ends, is NIL both ways, and no store holds it). Leaves the
    /// mask bit to the caller, as `unlink` does.
    #[inline(always)]
    pub(crate) fn unlink_alone(&mut self, order: u32) {
        let (o, ends) = (slot(order), self.ends_mut());
        ends.head[o] = Link::NIL;
        ends.tail[o] = Link::NIL;
        ends.len[o] = 0;
    }

    /// [`unlink_alone`](Self::unlink_alone) from each list of orders `order..top`, each of
    /// one block that [`check_alone`](Self::check_alone) found, and their mask bits cleared:
    /// the lists that a free's merges with buddies each alone on its list empty.
    #[inline(always)]
    pub(crate) fn unlink_alone_from(&mut self, order: u32, top: u32) {
        let ends = self.ends_mut();
        let orders = (order as usize).min(MAX_ORDERS)..(top as usize).min(MAX_ORDERS);
        if let (Some(heads), Some(tails), Some(lens)) = (
            ends.head.get_mut(orders.clone()),
            ends.tail.get_mut(orders.clone()),
            ends.len.get_mut(orders),
        ) {
            for ((head, tail), len) in heads.iter_mut().zip(tails).zip(lens) {
                *head = Link::NIL;
                *tail = Link::NIL;
                *len = 0;
            }
        }
        self.remask(0, orders_to_top(order, top));
    }

    /// What taking `idx`, the head of list `order` (what [`first`](Self::first) returned),
    /// reads, read and checked: the head's own link only, planned as an unlink with no `prev`
    /// and the head's successor as `next` (NIL for a list of one). Its `prev` must be what the
    /// list's ends remember (`head_prev`), its `next` in range, and a head without a successor
    /// the list's tail. Its successor's link, which [`plan_remove`](Self::plan_remove) reads
    /// to check that it points back, is one that taking the head neither writes nor relies
    /// on: the successor becomes the head, and that link is checked when it is taken in turn.
    /// Writes nothing; valid for [`unlink`](Self::unlink) until list `order` changes.
    #[inline(always)]
    pub(crate) fn plan_take_head(
        &self,
        arena: &Arena<'_>,
        idx: u32,
        order: u32,
    ) -> Result<Unlink, Corruption> {
        let o = slot(order);
        if self.ends().len[o] == 1 {
            return self.plan_remove_alone(idx, order);
        }
        // A list of two or more: the head has a link in the store (only the tail has not),
        // whose `prev` `link_in` checks against the ends.
        let ends = self.ends();
        if ends.head[o] != idx || ends.tail[o] == idx || ends.len[o] == 0 {
            return Err(self.corrupt(CorruptionKind::ListBroken, idx));
        }
        match self.link_in(arena, idx, order)?.next {
            Link::NIL => Err(self.corrupt(CorruptionKind::ListBroken, idx)),
            next => Ok(Unlink {
                idx,
                prev: Link::NIL,
                next,
                prev_prev: Link::NIL,
                next_next: Link::NIL,
            }),
        }
    }

    /// Unlinks `idx` from list `order`, wherever it is, with what
    /// [`plan_remove`](Self::plan_remove) read while list `order` was as it is now, so it
    /// cannot fail: every link involved was read and checked before the first write, and a
    /// corrupt neighbourhood was reported with nothing changed. Returns whether the list
    /// emptied, and leaves its mask bit to the caller, who clears it
    /// ([`remask`](Self::remask)) once for all the lists it unlinks from: a free unlinks one
    /// buddy per merge, each from its own list.
    ///
    /// A tail has no link in the store to clear (the ends hold it), so taking a block alone on
    /// its list writes only the list's ends: a split's halves merged back, the page a free just
    /// listed taken again. A block that becomes the tail has its link moved into the ends and
    /// cleared in the store; a successor that is the tail has its `prev` rewritten in the ends.
    /// A successor that becomes the head keeps its link as it is, its `prev` naming `idx`,
    /// which the ends remember (`head_prev`): an allocation from a list writes no page but
    /// the one it takes.
    #[inline(always)]
    pub(crate) fn unlink(&mut self, arena: &mut Arena<'_>, order: u32, u: Unlink) -> bool {
        let o = slot(order);
        let Unlink {
            idx,
            prev,
            next,
            prev_prev,
            next_next,
        } = u;
        let tail = self.ends().tail[o];
        if prev == Link::NIL {
            self.ends_mut().head[o] = next;
        } else if next == Link::NIL {
            // `prev` becomes the tail: its link moves into the ends.
            self.ends_mut().tail_prev[o] = prev_prev;
            self.links.clear(arena, self.page_size, prev);
        } else {
            let link = Link {
                prev: prev_prev,
                next,
            };
            self.links.store(arena, self.page_size, prev, link);
        }
        if next == Link::NIL {
            self.ends_mut().tail[o] = prev;
        } else if prev == Link::NIL {
            // `next` becomes the head: its link keeps `idx` as its `prev`, which the ends
            // now remember instead of its page being written.
            self.ends_mut().head_prev[o] = idx;
        } else if next == tail {
            self.ends_mut().tail_prev[o] = prev;
        } else {
            let link = Link {
                prev,
                next: next_next,
            };
            self.links.store(arena, self.page_size, next, link);
        }
        // A planned unlink has no `next` exactly when `idx` is the tail (`plan_remove`), whose
        // link the ends held.
        if next != Link::NIL {
            self.links.clear(arena, self.page_size, idx);
        }
        let ends = self.ends_mut();
        ends.len[o] = ends.len[o].wrapping_sub(1);
        ends.len[o] == 0
    }

    /// Walks list `order` from its head: at most `len` nodes, and no more than the pool has
    /// pages (a shared pool's lengths are bytes any process can write, and its links can
    /// close a cycle), stopping at the first bad link.
    pub(crate) fn iter<'s>(&'s self, arena: &'s Arena<'s>, order: u32) -> ListIter<'s, L> {
        let ends = self.ends();
        let (next, len) = match (ends.head.get(order as usize), ends.len.get(order as usize)) {
            (Some(&h), Some(&n)) => (h, n),
            _ => (Link::NIL, 0),
        };
        ListIter {
            lists: self,
            arena,
            order,
            next,
            left: len.min(self.nr_pages),
        }
    }

    pub(crate) fn tail(&self, order: u32) -> u32 {
        self.ends()
            .tail
            .get(order as usize)
            .copied()
            .unwrap_or(Link::NIL)
    }

    /// How many blocks list `order` holds, as its ends count them.
    #[inline(always)]
    pub(crate) fn len(&self, order: u32) -> u32 {
        self.ends().len[slot(order)]
    }

    #[cfg(test)]
    pub(crate) fn set_tail(&mut self, order: u32, idx: u32) {
        self.ends_mut().tail[order as usize] = idx;
    }
}

/// Iterator over one free list's page indices, head first.
pub(crate) struct ListIter<'s, L> {
    lists: &'s FreeLists<L>,
    arena: &'s Arena<'s>,
    /// The list walked (below `MAX_ORDERS`, or the walk is empty).
    order: u32,
    next: u32,
    left: u32,
}

impl<L: LinkStore> Iterator for ListIter<'_, L> {
    /// `Err` once, at the first node whose link is out of range, then the walk ends.
    type Item = Result<(u32, Link), Corruption>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 || self.next == Link::NIL || self.next >= self.lists.nr_pages {
            return None;
        }
        self.left -= 1;
        let idx = self.next;
        match self.lists.link_in(self.arena, idx, self.order) {
            Ok(link) => {
                self.next = link.next;
                Some(Ok((idx, link)))
            }
            Err(c) => {
                self.left = 0;
                Some(Err(c))
            }
        }
    }
}
