//! The allocation policy: pKVM's `hyp_pool`, with every misuse turned into an [`Error`].
//!
//! Invariants relied on throughout (and verified by [`Pool::check`]):
//! - every page is exactly one of: the head of a free block (refcount 0, order set, on the list of
//!   its order), the head of a held block (refcount > 0, order set), or a tail page of either
//!   (refcount 0, [`NO_ORDER`]);
//! - a block of order k starts at a pfn divisible by 2^k and lies inside the pool;
//! - no two free buddies of the same order `k + 1 < max_order` coexist: they would have coalesced.

use core::mem::MaybeUninit;

use crate::arena::Arena;
use crate::config::{Config, Geometry, ZeroPolicy};
use crate::error::{Corruption, CorruptionKind, Error, GeometryError};
use crate::prefetch::prefetch;
#[cfg(doc)]
use crate::store::Intrusive;
use crate::store::{
    orders_to_top, FreeLists, Link, LinkStore, PageMeta, SideTable, Unlink, ABSENT, MAX_ORDERS,
    NO_ORDER,
};

/// The buddies that the block of `order` at `idx` merges with up to `top`, in merge order: each
/// the buddy of the block merged so far, found again from it, as [`Pool::plan_lone_merges`]
/// found each free, and so in the pool (the cast to `u32` keeps its value).
#[inline(always)]
fn lone_buddies(geo: Geometry, idx: u32, order: u32, top: u32) -> impl Iterator<Item = u32> {
    (order..top).scan(idx, move |head, order| {
        let buddy = geo.buddy(*head, order) as u32;
        *head = (*head).min(buddy);
        Some(buddy)
    })
}

/// Makes tail pages of the buddies that the block of `order` at offset `freed` of `block` (a
/// merged block of `2^top` pages, `top = log2(block.len())`) merges with, each the buddy of the
/// block merged so far: the block at `freed` with bit k flipped and the bits below it cleared,
/// for each k in `order..top`. The write pass of a free whose buddies are each alone on their
/// lists ([`Pool::plan_lone_merges`] found them).
#[inline(always)]
fn unmark_lone_buddies(block: &mut [PageMeta], freed: u32, order: u32) {
    let Some(last) = block.len().checked_sub(1) else {
        return;
    };
    // Every offset below is a subset of the bits of `last`, so at most `last`: in the block.
    let mut merged = freed as usize & last;
    let mut bit = 1usize.checked_shl(order).unwrap_or(0) & last;
    while bit != 0 {
        let buddy = merged ^ bit;
        // The merged block's head: `merged` with bit k cleared.
        merged &= buddy;
        // SAFETY: `merged` and `bit` are subsets of the bits of `last` (masked), so `buddy` is
        // too: at most `last`, below `block.len()`.
        unsafe { block.get_unchecked_mut(buddy) }.order = NO_ORDER;
        bit = (bit << 1) & last;
    }
}

/// What the read pass of a free learned ([`Pool::plan_attach`]): what unlinking each buddy it
/// merges with reads, in merge order, and the link of the tail of the list the merged block
/// joins. Each step unlinks from a different list and the merged block joins yet another, so
/// none of the writes invalidates what a later step read.
///
/// Step `i` (below `n`) is either a buddy alone on its list (bit `i` of `alone` set, the buddy
/// in `buddies[i]`), whose unlink empties the list and writes its ends only, or a buddy with
/// neighbours, whose unlink `steps[i]` holds; only the one of the two is initialised. A free
/// pool's merges are all of the first kind: each split's upper half is alone on its list.
pub(crate) struct Merges {
    n: usize,
    alone: u32,
    buddies: [MaybeUninit<u32>; MAX_ORDERS],
    steps: [MaybeUninit<Unlink>; MAX_ORDERS],
    tail: Option<Link>,
}

impl Merges {
    /// Nothing learned yet (writes nothing: the steps stay uninitialised).
    #[inline(always)]
    fn new() -> Self {
        Merges {
            n: 0,
            alone: 0,
            // SAFETY: as for `steps` below: every bit pattern is a valid array of `MaybeUninit`.
            buddies: unsafe {
                MaybeUninit::<[MaybeUninit<u32>; MAX_ORDERS]>::uninit().assume_init()
            },
            // Not `[MaybeUninit::uninit(); MAX_ORDERS]`: that repeat is a loop of stores of an
            // undefined value, which the optimiser may turn into a memset of the whole array
            // on every free.
            // SAFETY: an array of `MaybeUninit` needs no initialisation: every bit pattern,
            // uninitialised ones included, is a valid `[MaybeUninit<Unlink>; MAX_ORDERS]`.
            steps: unsafe {
                MaybeUninit::<[MaybeUninit<Unlink>; MAX_ORDERS]>::uninit().assume_init()
            },
            tail: None,
        }
    }
}

/// What a caller that journals an operation (a shared pool, see `layout.rs`) learns of it before
/// the operation writes anything: the old metadata of every page it will change, then the
/// moment it starts writing. The exact pool's own calls pass `()`, which compiles to nothing.
pub(crate) trait Plan {
    /// Page `idx`, whose metadata is `old`, will change.
    fn note(&mut self, idx: u32, old: PageMeta);
    /// Everything is checked and noted: the writes start.
    fn begin(&mut self);
}

impl Plan for () {
    #[inline(always)]
    fn note(&mut self, _: u32, _: PageMeta) {}
    #[inline(always)]
    fn begin(&mut self) {}
}

/// A buddy allocator over one arena: pKVM's `struct hyp_pool`, without its lock (see
/// [`LockedPool`](crate::LockedPool)).
///
/// `L` is where free-list links live: [`SideTable`] (beside the metadata, immune to whatever is
/// written into the arena) or [`Intrusive`] (inside the free pages, no extra memory).
///
/// ```
/// use pagebuddy::{Config, Link, PageMeta, Pool, SideTable};
///
/// let mut arena = [0u8; 8 * 64];
/// let mut meta = [PageMeta::INIT; 8];
/// let mut links = [Link::EMPTY; 8];
/// let config = Config::new(8).page_size(64);
/// let mut pool = Pool::new(&mut arena[..], &mut meta, SideTable::new(&mut links), config)?;
///
/// let pfn = pool.alloc(1)?; // two pages
/// assert_eq!(pfn, 0);
/// assert_eq!(pool.free_pages(), 6);
/// pool.get(pfn)?; // a second holder
/// pool.put(pfn)?;
/// pool.put(pfn)?; // last holder: freed, zeroed and coalesced
/// assert_eq!(pool.free_pages(), 8);
/// assert_eq!(pool.buddyinfo(), &[0, 0, 0, 1]);
/// # Ok::<(), pagebuddy::Error>(())
/// ```
pub struct Pool<'a, L: LinkStore = SideTable<'a>> {
    pub(crate) arena: Arena<'a>,
    pub(crate) meta: &'a mut [PageMeta],
    pub(crate) free: FreeLists<L>,
    pub(crate) geo: Geometry,
    /// Pages `touched..nr_pages` have never been handed out and their bytes were never written
    /// (the arena was [prezeroed](Config::prezeroed) and construction left them alone), so they
    /// read as zeros without being read: [`check`](Self::check) does not touch them, which keeps
    /// a large, lazily committed arena uncommitted. `nr_pages` when construction wrote them.
    pub(crate) touched: u32,
    /// Android's `min_free_pages`: the free pages [`reclaim`](Self::reclaim) leaves (grow.rs).
    pub(crate) min_free: u32,
}

impl<'a, L: LinkStore> Pool<'a, L> {
    /// Builds a pool over `arena` with one [`PageMeta`] per page in `meta` and links in `links`.
    ///
    /// The result is exactly that of holding every page (refcount 1, order 0) and then putting
    /// pages `reserved_pages..nr_pages` one by one in increasing pfn order, built in O(nr_pages).
    pub fn new(
        arena: impl Into<Arena<'a>>,
        meta: &'a mut [PageMeta],
        links: L,
        config: Config,
    ) -> Result<Self, Error> {
        let geo = config.geometry()?;
        let arena = arena.into();
        // (a validated geometry's arena size fits in usize; see Config::geometry)
        let need = geo.arena_bytes().unwrap_or(usize::MAX);
        if arena.len() < need {
            return Err(GeometryError::ArenaTooSmall {
                need,
                have: arena.len(),
            }
            .into());
        }
        Self::build(arena, meta, links, geo, config.prezeroed)
    }

    /// The constructors' common part, once the arena is known to fit `geo` (or is none): checks
    /// the metadata and links, then lays out the initial state.
    pub(crate) fn build(
        arena: Arena<'a>,
        meta: &'a mut [PageMeta],
        links: L,
        geo: Geometry,
        prezeroed: bool,
    ) -> Result<Self, Error> {
        let n = geo.nr_pages as usize;
        if meta.len() < n {
            let have = core::mem::size_of_val(meta);
            return Err(GeometryError::MetadataTooSmall {
                need: crate::meta_bytes(n),
                have,
            }
            .into());
        }
        links.fits(geo.nr_pages)?;
        let mut pool = Self::adopt(arena, meta, links, geo);
        pool.populate(prezeroed)?;
        Ok(pool)
    }

    /// The pool over `meta` and `links` as they are, with empty list ends and no free page: the
    /// caller lays out or loads the state (`populate`, or a shared pool's header).
    pub(crate) fn adopt(
        arena: Arena<'a>,
        meta: &'a mut [PageMeta],
        links: L,
        geo: Geometry,
    ) -> Self {
        Pool {
            arena,
            meta,
            free: FreeLists::new(links, geo.nr_pages, geo.base_pfn, geo.page_size),
            geo,
            touched: geo.nr_pages,
            min_free: 0,
        }
    }

    /// Lays out the initial state: reserved pages held, the rest of the initial range as the
    /// largest aligned blocks that fit, each appended to its list in increasing pfn order, and
    /// the pages past the range nobody's ([`ABSENT`]). Sequential puts produce the same: a page
    /// merges upward exactly while its block stays aligned, inside the free range and below
    /// `max_order`, and each block is listed when its last page is put.
    fn populate(&mut self, prezeroed: bool) -> Result<(), Corruption> {
        let (n, reserved) = (self.geo.range_pages, self.geo.reserved_pages);
        for m in &mut self.meta[..n as usize] {
            *m = PageMeta::INIT;
        }
        for m in &mut self.meta[n as usize..self.geo.nr_pages as usize] {
            *m = PageMeta::new(0, ABSENT);
        }
        for m in &mut self.meta[..reserved as usize] {
            *m = PageMeta::new(1, 0);
        }
        if self.geo.zero == ZeroPolicy::OnFree && !prezeroed {
            let ps = self.geo.page_size;
            self.arena
                .zero_cold(reserved as usize * ps, (n - reserved) as usize * ps);
        }
        // Reserved pages are held from the start: their bytes are the caller's.
        self.touched = if prezeroed { reserved } else { n };
        let mut idx = reserved;
        while idx < n {
            let order = self.largest_block(idx);
            self.meta[idx as usize] = PageMeta::new(0, order as u8);
            self.free.append(&mut self.arena, idx, order)?;
            idx += 1 << order;
        }
        Ok(())
    }

    /// Order of the largest block that starts at `idx`, is aligned and fits before the end.
    fn largest_block(&self, idx: u32) -> u32 {
        let align = self.geo.pfn(idx).trailing_zeros();
        let room = (self.geo.range_pages - idx).ilog2();
        align.min(room).min(self.geo.max_order - 1)
    }

    /// The pool's shape.
    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// Number of orders: blocks have orders `0..max_order`.
    pub fn max_order(&self) -> u32 {
        self.geo.max_order
    }

    /// Free pages, in all blocks: each list's length times its blocks' size, summed (the
    /// pool keeps no count of its own, which would cost every allocation and free a store).
    pub fn free_pages(&self) -> u32 {
        self.free.free_pages(self.geo.max_order)
    }

    pub(crate) fn index(&self, pfn: u64) -> Result<u32, Error> {
        self.geo.index(pfn).ok_or(Error::PfnOutOfRange { pfn })
    }

    pub(crate) fn corrupt(&self, kind: CorruptionKind, idx: u32) -> Error {
        Error::Corrupted(Corruption {
            kind,
            pfn: self.geo.pfn(idx),
        })
    }

    /// Byte range of the block of `order` at `idx`.
    fn block_bytes(&self, idx: u32, order: u32) -> (usize, usize) {
        (
            idx as usize * self.geo.page_size,
            self.geo.page_size << order,
        )
    }

    /// Zeroes a block about to be handed out. Out of line, as is
    /// [`zero_freed_block`](Self::zero_freed_block): inlined, its call made the allocation and
    /// the free keep more values in saved registers on every path, zeroing or not (churn: 298 to
    /// 292 instructions a step).
    #[inline(never)]
    pub(crate) fn zero_block(&mut self, idx: u32, order: u32) {
        let (off, len) = self.block_bytes(idx, order);
        self.arena.zero(off, len);
    }

    /// Zeroes a block that was just freed (see [`Arena::zero_cold`]).
    #[inline(never)]
    fn zero_freed_block(&mut self, idx: u32, order: u32) {
        let (off, len) = self.block_bytes(idx, order);
        self.arena.zero_cold(off, len);
    }

    /// The page index of `pfn` if it is in the initial range (where blocks coalesce).
    #[inline(always)]
    pub(crate) fn range_index(&self, pfn: u64) -> Option<u32> {
        // One comparison: below `base_pfn` the difference wraps to at least
        // `2^64 - base_pfn`, which a validated geometry keeps above `range_pages`.
        let i = pfn.wrapping_sub(self.geo.base_pfn);
        (i < u64::from(self.geo.range_pages)).then_some(i as u32)
    }

    /// pKVM's `__find_buddy_avail`: the buddy of the block of `order` at `idx`, if it is in the
    /// pool's initial range (mainline: pages outside `[range_start, range_end)` are external and
    /// never coalesced) and is a free block of the same order.
    #[inline(always)]
    fn buddy_avail(&self, idx: u32, order: u32) -> Option<u32> {
        // The metadata of the initial range (all of it: `meta` covers every page), so that one
        // comparison checks both that the buddy is in the range and that its metadata is there.
        let range = self.meta.get(..self.geo.range_pages as usize)?;
        let buddy = self.geo.buddy(idx, order);
        let m = *range.get(usize::try_from(buddy).ok()?)?;
        // `order` is below max_order, so an equal order is never NO_ORDER: a free head.
        (m.refcount == 0 && u32::from(m.order) == order).then_some(buddy as u32)
    }

    /// Allocates a block of `2^order` pages and returns the pfn of its head.
    ///
    /// Takes the head of the first non-empty list at or above `order` and splits it down,
    /// appending each upper half to the tail of its order's list. The head gets refcount 1; its
    /// other pages are tails.
    pub fn alloc(&mut self, order: u32) -> Result<u64, Error> {
        self.alloc_zeroing::<true, ()>(order, &mut ())
    }

    /// [`alloc`](Self::alloc), telling `plan` what it will change before it writes (a shared
    /// pool journals it).
    #[cfg_attr(not(target_has_atomic = "32"), allow(dead_code))]
    #[inline(always)]
    pub(crate) fn alloc_planned(&mut self, order: u32, plan: &mut impl Plan) -> Result<u64, Error> {
        self.alloc_zeroing::<true, _>(order, plan)
    }

    /// [`alloc`](Self::alloc) without the zeroing that [`ZeroPolicy::OnAlloc`] asks for: the
    /// per-CPU caches zero a block when they hand it out, outside the pool's lock.
    #[cfg_attr(not(target_has_atomic = "32"), allow(dead_code))]
    pub(crate) fn alloc_unzeroed(&mut self, order: u32) -> Result<u64, Error> {
        self.alloc_zeroing::<false, ()>(order, &mut ())
    }

    /// The allocation, zeroing per the policy if `ZERO` (a constant, so that each form compiles
    /// to its own straight-line code).
    #[inline(always)]
    pub(crate) fn alloc_zeroing<const ZERO: bool, P: Plan>(
        &mut self,
        order: u32,
        plan: &mut P,
    ) -> Result<u64, Error> {
        let max_order = self.geo.max_order;
        if order >= max_order {
            return Err(Error::InvalidOrder { order, max_order });
        }
        // A block of the very order asked for, if its list has one: the head, split nothing.
        // That list is looked at first, as upstream's loop does; the mask of non-empty lists
        // finds the next one up only when it is empty. (Reading the mask first put the
        // mask's read-modify-writes, a free's and an allocation's, on the path of every
        // allocation: docs/exact-pool-levers.md, "Taking a list's head reads its own link
        // only".)
        let Some(idx) = self.free.first(order)? else {
            let avail = self.free.ends().mask >> order;
            if avail == 0 {
                return Err(Error::OutOfMemory { order });
            }
            let found = order + avail.trailing_zeros();
            if found == order {
                // The mask says list `order` holds blocks, but it has no head.
                return Err(self.corrupt(CorruptionKind::Count, 0));
            }
            return self.alloc_splitting::<ZERO, P>(order, found, plan);
        };
        self.check_listed_head(idx, order)?;
        plan.note(idx, self.meta[idx as usize]);
        plan.begin();
        self.free
            .take_head(&mut self.arena, idx, order, self.meta)?;
        self.hand_out::<ZERO>(idx, order)
    }

    /// The head of the non-empty list `order`, checked to be a free head of that order.
    #[inline(always)]
    pub(crate) fn free_head(&self, order: u32) -> Result<u32, Error> {
        let Some(idx) = self.free.first(order)? else {
            return Err(self.corrupt(CorruptionKind::Count, 0));
        };
        self.check_listed_head(idx, order)?;
        Ok(idx)
    }

    /// Checks that `idx`, listed on list `order`, is a free head of that order whose block
    /// lies in the pool ([`block_fits`](Self::block_fits)), before an allocation takes it.
    #[inline(always)]
    pub(crate) fn check_listed_head(&self, idx: u32, order: u32) -> Result<(), Error> {
        // pKVM's hyp_page_ref_init, as the review asked: the head must still be free, checked
        // in the same critical section that hands it out.
        let m = self.meta[idx as usize];
        if !(m.is_free_head() && m.order as u32 == order) {
            return Err(self.corrupt(CorruptionKind::NotFreeHead, idx));
        }
        if !self.block_fits(idx, order) {
            return Err(self.corrupt(CorruptionKind::BadHead, idx));
        }
        Ok(())
    }

    /// Whether a block of `order` at `idx` lies in the pool: below `max_order`, and its pages
    /// all the pool's. A list's head and a page's order come from bytes a shared pool's other
    /// processes can write, so each block that an operation is about to split, hand out or
    /// write the pages of is checked first. (A block inside the pool but misaligned harms
    /// nothing an operation indexes; [`check`](Self::check) reports it.)
    #[inline(always)]
    pub(crate) fn block_fits(&self, idx: u32, order: u32) -> bool {
        order < self.geo.max_order
            && u64::from(idx) + (1u64 << order) <= u64::from(self.geo.nr_pages)
    }

    /// An allocation of `order` that takes the head of the larger list `found` and splits it
    /// down: out of line, so that an allocation that splits nothing does not pay for the
    /// split's bookkeeping.
    #[inline(never)]
    fn alloc_splitting<const ZERO: bool, P: Plan>(
        &mut self,
        order: u32,
        found: u32,
        plan: &mut P,
    ) -> Result<u64, Error> {
        let idx = self.free_head(found)?;
        // What changes: the head, and the head of each upper half split off (see `extract`).
        plan.note(idx, self.meta[idx as usize]);
        for k in order..found {
            let half = idx + (1 << k);
            if let Some(&old) = self.meta.get(half as usize) {
                plan.note(half, old);
            }
        }
        plan.begin();
        let next = self
            .free
            .take_head(&mut self.arena, idx, found, self.meta)?;
        // The block the next split of this list will split: the new head, or (the list
        // emptied) this one, whose lines the split writes anyway.
        let next = if next == Link::NIL { idx } else { next };
        let next = self.meta.as_ptr().wrapping_add(next as usize);
        self.extract(idx, found, order, next)?;
        self.hand_out::<ZERO>(idx, order)
    }

    /// The end of an allocation: the block of `order` at `idx`, off the lists and split, is
    /// held once, counted and zeroed per the policy (if `ZERO`).
    #[inline(always)]
    fn hand_out<const ZERO: bool>(&mut self, idx: u32, order: u32) -> Result<u64, Error> {
        self.meta[idx as usize].set(PageMeta::new(1, order as u8));
        // Stored only when it grows: once every page has been handed out, never.
        let end = idx + (1 << order);
        if end > self.touched {
            self.touched = end;
        }
        if ZERO && self.geo.zero == ZeroPolicy::OnAlloc {
            self.zero_block(idx, order);
        }
        Ok(self.geo.pfn(idx))
    }

    /// pKVM's `__hyp_extract_page`: splits the unlisted free block of `order` at `idx` down to
    /// `target`, listing each upper half. The block is aligned to `2^order`, so the upper half
    /// of order k is simply `idx + 2^k` and lies inside the block.
    ///
    /// Each half joins a list of its own, most often an empty one, whose bit the mask of the
    /// non-empty lists gains: the mask is written once, after the loop, for every order the
    /// halves took (or, before an error returns, for those listed by then), not once a half.
    ///
    /// Each step also hints the same half of `next`, the metadata of the block that the next
    /// split of this list will split (the list's new head, which `take_head` returned).
    /// Hinted in the split's loop rather than in one of their own after it, the hints took the
    /// hot pair from 39.8 to 40.2 ns down to 38.4 to 38.9 ns on an AMD EPYC
    /// (docs/exact-pool-levers.md, "The next split's hints, in the split's own loop"). An
    /// allocation that splits a block takes the head of a FIFO list and writes a line per half
    /// (from 2^4 pages up no two share a line), one store after another; hinted one split
    /// ahead, those misses overlap each other and the work in between. The halves below 2^4
    /// pages lie on `next`'s own line, which `take_head` hints; their hints cost an instruction
    /// each and find it there. A hint only: any address is harmless to it.
    ///
    /// The block's metadata is bounds-checked once, not once a half, and a half that meets a
    /// list with a tail leaves the rest of the split to
    /// [`extract_onto_lists`](Self::extract_onto_lists), so that the split into empty lists
    /// keeps its values in registers: the hot pair went from 1,032 to 935 instructions with
    /// the hints' block taken from `take_head` (docs/exact-pool-levers.md, "The split and the
    /// lone merges, leaner").
    fn extract(
        &mut self,
        idx: u32,
        mut order: u32,
        target: u32,
        next: *const PageMeta,
    ) -> Result<(), Corruption> {
        let top = order;
        // The block's metadata, bounds-checked once for every half (the caller found the block
        // in the pool: `block_fits`).
        let start = idx as usize;
        let Some(block) = self.meta.get_mut(start..start + (1 << order)) else {
            return Err(Corruption {
                kind: CorruptionKind::BadHead,
                pfn: self.geo.pfn(idx),
            });
        };
        // The size of the halves, halved each step: `2^order` after the decrement.
        let mut half = block.len();
        while order > target {
            order -= 1;
            half >>= 1;
            prefetch(next.wrapping_add(half));
            // SAFETY: `block.len()` is `2^top`, at least 1, and `half` is that halved at least
            // once (above), so below it.
            unsafe { block.get_unchecked_mut(half) }.set(PageMeta::new(0, order as u8));
            // An empty list takes the half as its head and tail, reading nothing.
            if !self.free.append_to_empty(idx + half as u32, order) {
                return self.extract_onto_lists(idx, order, target, top, next);
            }
        }
        self.free.remask(orders_to_top(target, top), 0);
        Ok(())
    }

    /// The rest of [`extract`](Self::extract) from the half of `order` (its metadata written
    /// and hinted) on, once a half meets a list with a tail (a pool in use): that tail's link is
    /// read and checked before the half is appended behind it. Out of line, so that the split
    /// into empty lists keeps its values in registers.
    #[inline(never)]
    fn extract_onto_lists(
        &mut self,
        idx: u32,
        mut order: u32,
        target: u32,
        top: u32,
        next: *const PageMeta,
    ) -> Result<(), Corruption> {
        loop {
            let buddy = idx + (1 << order);
            if !self.free.append_to_empty(buddy, order) {
                let tail = match self.free.plan_append(&self.arena, order) {
                    Ok(tail) => tail,
                    Err(e) => {
                        self.free.remask(orders_to_top(order + 1, top), 0);
                        return Err(e);
                    }
                };
                self.free
                    .append_planned_masking::<false>(&mut self.arena, buddy, order, tail);
            }
            if order == target {
                break;
            }
            order -= 1;
            prefetch(next.wrapping_add(1 << order));
            self.meta[(idx + (1 << order)) as usize].set(PageMeta::new(0, order as u8));
        }
        self.free.remask(orders_to_top(target, top), 0);
        Ok(())
    }

    /// The index and metadata of `pfn`, which must be held (refcount > 0).
    pub(crate) fn held(&self, pfn: u64) -> Result<(u32, PageMeta), Error> {
        let idx = self.index(pfn)?;
        let m = self.meta[idx as usize];
        if m.refcount == 0 {
            return Err(if m.order == ABSENT {
                Error::NotCovered { pfn }
            } else {
                Error::NotHeld { pfn }
            });
        }
        Ok((idx, m))
    }

    /// The order of the block that the held page `idx` heads: a held page always heads a block
    /// of a valid order, so anything else is corruption. (Whether the block lies in the pool
    /// is checked where its pages are written: [`split`](Self::split).)
    pub(crate) fn block_order(&self, idx: u32, m: PageMeta) -> Result<u32, Error> {
        match u32::from(m.order) {
            order if order < self.geo.max_order => Ok(order),
            _ => Err(self.corrupt(CorruptionKind::BadHead, idx)),
        }
    }

    /// Drops one reference to `pfn`; at zero its block is freed and coalesced.
    pub fn put(&mut self, pfn: u64) -> Result<(), Error> {
        self.put_zeroing::<true, ()>(pfn, &mut ())
    }

    /// [`put`](Self::put), telling `plan` what it will change before it writes, when it frees
    /// the block (dropping one of several references is one store and tells nothing).
    #[cfg_attr(not(target_has_atomic = "32"), allow(dead_code))]
    #[inline(always)]
    pub(crate) fn put_planned(&mut self, pfn: u64, plan: &mut impl Plan) -> Result<(), Error> {
        self.put_zeroing::<true, _>(pfn, plan)
    }

    /// [`put`](Self::put) for a block whose bytes the caller has already zeroed as
    /// [`ZeroPolicy::OnFree`] requires (the per-CPU caches do it outside the pool's lock).
    #[cfg_attr(not(target_has_atomic = "32"), allow(dead_code))]
    pub(crate) fn put_zeroed(&mut self, pfn: u64) -> Result<(), Error> {
        self.put_zeroing::<false, ()>(pfn, &mut ())
    }

    #[inline(always)]
    fn put_zeroing<const ZERO: bool, P: Plan>(
        &mut self,
        pfn: u64,
        plan: &mut P,
    ) -> Result<(), Error> {
        let (idx, m) = self.held(pfn)?;
        if m.refcount > 1 {
            self.meta[idx as usize].refcount -= 1;
            return Ok(());
        }
        self.put_last::<ZERO, P>(idx, m, plan)
    }

    /// The put of the last reference to the page `idx`, whose metadata `m` is: its block is
    /// freed and coalesced, zeroed per the policy if `ZERO`. (A batch's puts run this too.)
    #[inline(always)]
    pub(crate) fn put_last<const ZERO: bool, P: Plan>(
        &mut self,
        idx: u32,
        m: PageMeta,
        plan: &mut P,
    ) -> Result<(), Error> {
        let order = self.block_order(idx, m)?;
        // A corrupt free list is found before anything changes: the page stays held, nothing
        // is zeroed, counted or unlinked, so no page is left neither held nor free. What
        // changes: the page, and each buddy it merges with (`plan_attach` finds them).
        plan.note(idx, m);
        if order + 1 < self.merge_limit(idx) {
            if let Some(buddy) = self.buddy_avail(idx, order) {
                if self.free.len(order) == 1 {
                    return self.put_merging_lone::<ZERO, P>(idx, order, buddy, plan);
                }
                return self.put_merging_out_of_line::<ZERO, P>(idx, order, plan);
            }
        }
        // Nothing to merge with: the free is one append to the list of its order, whose tail's
        // link is checked first. The same as `attach` with no merge step, without the merge
        // plan's bookkeeping, so that a free that merges with nothing (most frees of single
        // pages once a pool is in use) runs only this.
        let tail = self.free.plan_append(&self.arena, order)?;
        let zero = ZERO && self.geo.zero == ZeroPolicy::OnFree;
        if zero {
            return self.put_appending_zeroed(idx, order, tail, plan);
        }
        self.put_appending(idx, order, tail, plan, false)
    }

    /// The end of a free that merges with nothing: the block appended after `tail` (what
    /// `plan_append` read), then zeroed if `zero`.
    #[inline(always)]
    fn put_appending<P: Plan>(
        &mut self,
        idx: u32,
        order: u32,
        tail: Option<Link>,
        plan: &mut P,
        zero: bool,
    ) -> Result<(), Error> {
        plan.begin();
        self.meta[idx as usize].refcount = 0;
        self.free.append_planned(&mut self.arena, idx, order, tail);
        // Zeroed last: see `attach_planned`.
        if zero {
            self.zero_freed_block(idx, order);
        }
        Ok(())
    }

    /// [`put_appending`](Self::put_appending) zeroing: out of line and in tail position, so
    /// that a free that does not zero makes no call on its way (see
    /// [`put_merging_out_of_line`](Self::put_merging_out_of_line)).
    #[inline(never)]
    fn put_appending_zeroed<P: Plan>(
        &mut self,
        idx: u32,
        order: u32,
        tail: Option<Link>,
        plan: &mut P,
    ) -> Result<(), Error> {
        self.put_appending(idx, order, tail, plan, true)
    }

    /// [`put_merging`](Self::put_merging) out of line. With the merge and the zeroing
    /// ([`put_appending_zeroed`](Self::put_appending_zeroed)) a call away in tail position, a
    /// free that merges with nothing makes no call on its way and saves three registers, not
    /// six: the common free of a pool in use, whose page is taken back by the next allocation
    /// (docs/exact-pool-levers.md, "Stores a step"; `scripts/stores.py` counts the stores).
    /// Side tables inlined the merge until their free stopped writing the freed page's link:
    /// then the saved registers cost their steady churn step more than the call costs their
    /// hot pair (docs/exact-pool-levers.md, "Taking a list's head reads its own link only").
    #[inline(never)]
    fn put_merging_out_of_line<const ZERO: bool, P: Plan>(
        &mut self,
        idx: u32,
        order: u32,
        plan: &mut P,
    ) -> Result<(), Error> {
        self.put_merging::<ZERO, P>(idx, order, plan)
    }

    /// A free whose buddy is alone on its list, as a block split from is (each split's upper
    /// half joins a list of its own): while each buddy it merges with is alone on its list,
    /// its merges need no record between the read pass and the write pass
    /// ([`plan_lone_merges`](Self::plan_lone_merges), then `unmark_lone_buddies` and
    /// [`FreeLists::unlink_alone_from`]), and a free pool's hot pair (an allocation that
    /// splits, and the free that merges it back) runs about a tenth fewer instructions. A free
    /// that meets a buddy with neighbours on its list is planned again from the start, as any
    /// other ([`put_merging_out_of_line`](Self::put_merging_out_of_line)).
    ///
    /// The write pass works within the merged block's metadata, bounds-checked once: each
    /// buddy is found from its offset there, and the lists' ends are emptied in a loop of
    /// their own.
    #[inline(never)]
    fn put_merging_lone<const ZERO: bool, P: Plan>(
        &mut self,
        idx: u32,
        order: u32,
        buddy: u32,
        plan: &mut P,
    ) -> Result<(), Error> {
        let Some(top) = self.plan_lone_merges(idx, order, buddy)? else {
            return self.put_merging_out_of_line::<ZERO, P>(idx, order, plan);
        };
        // The merged block: `idx` with bits `order..top` of its pfn cleared, as each merge with
        // the buddy above clears one.
        let merged = (1u64 << top) - (1u64 << order);
        let head = (self.geo.pfn(idx) & !merged).wrapping_sub(self.geo.base_pfn) as u32;
        let (start, end) = (head as usize, head as usize + (1 << top));
        if end > self.meta.len() {
            // Its buddies' heads are in the pool, but a buddy's metadata claims a block that
            // runs past it: corruption, left to the general merge, which indexes each page on
            // its own (`check` reports it).
            return self.put_merging_out_of_line::<ZERO, P>(idx, order, plan);
        }
        let tail = self.free.plan_append(&self.arena, top)?;
        for buddy in lone_buddies(self.geo, idx, order, top) {
            if let Some(&old) = self.meta.get(buddy as usize) {
                plan.note(buddy, old);
            }
        }
        plan.begin();
        let block = &mut self.meta[start..end];
        // `head <= idx`: the read pass found every buddy's pfn at or above `base_pfn`.
        let offset = idx.wrapping_sub(head);
        unmark_lone_buddies(block, offset, order);
        let freed = &mut block[offset as usize];
        freed.refcount = 0;
        // After merging, `idx` may no longer be the head: unmark it now.
        freed.order = NO_ORDER;
        block[0].order = top as u8;
        self.free.unlink_alone_from(order, top);
        self.free.append_planned(&mut self.arena, head, top, tail);
        // Zeroed last: see `attach_planned`.
        if ZERO && self.geo.zero == ZeroPolicy::OnFree {
            self.zero_freed_block(idx, order);
        }
        Ok(())
    }

    /// The read pass of a free of the block of `order` at `idx` whose buddies are each alone on
    /// their lists, checked as [`plan_attach`](Self::plan_attach) checks every buddy, from
    /// `buddy`, the first, which the caller found free and of the order
    /// ([`buddy_avail`](Self::buddy_avail)): the order of the merged block, or `None` if a buddy
    /// it would merge with has neighbours on its list. Writes nothing, and tells no plan: a free
    /// planned again would tell it twice.
    #[inline(always)]
    fn plan_lone_merges(
        &self,
        idx: u32,
        order: u32,
        buddy: u32,
    ) -> Result<Option<u32>, Corruption> {
        let (mut head, mut order, mut buddy) = (idx, order, buddy);
        let max_order = self.merge_limit(idx);
        loop {
            if self.free.len(order) != 1 {
                return Ok(None);
            }
            self.free.check_alone(buddy, order)?;
            head = head.min(buddy);
            order += 1;
            if order + 1 >= max_order {
                break;
            }
            let Some(next) = self.buddy_avail(head, order) else {
                break;
            };
            buddy = next;
        }
        Ok(Some(order))
    }

    /// The rest of a free whose block merges with its buddy (`put_zeroing` found it free).
    #[inline(always)]
    fn put_merging<const ZERO: bool, P: Plan>(
        &mut self,
        idx: u32,
        order: u32,
        plan: &mut P,
    ) -> Result<(), Error> {
        // Filled in place: a `Merges` is a few hundred bytes, not worth a copy.
        let mut merges = Merges::new();
        self.plan_attach(idx, order, plan, &mut merges)?;
        plan.begin();
        self.meta[idx as usize].refcount = 0;
        self.attach_planned::<ZERO>(idx, order, &merges);
        Ok(())
    }

    /// The read pass of a free: [`check_attach`](Self::check_attach), keeping what it read for
    /// [`attach_planned`](Self::attach_planned), so that the free walks the buddies once.
    /// Writes nothing.
    #[inline(always)]
    pub(crate) fn plan_attach(
        &self,
        idx: u32,
        order: u32,
        plan: &mut impl Plan,
        merges: &mut Merges,
    ) -> Result<(), Corruption> {
        merges.n = 0;
        merges.alone = 0;
        let (mut head, mut order, max_order) = (idx, order, self.merge_limit(idx));
        // At most max_order - 1 <= MAX_ORDERS - 1 steps: `n` stays below MAX_ORDERS.
        while order + 1 < max_order {
            let Some(buddy) = self.buddy_avail(head, order) else {
                break;
            };
            let i = merges.n % MAX_ORDERS;
            if self.free.len(order) == 1 {
                self.free.check_alone(buddy, order)?;
                merges.alone |= 1 << i;
                merges.buddies[i] = MaybeUninit::new(buddy);
            } else {
                merges.steps[i] =
                    MaybeUninit::new(self.free.plan_remove(&self.arena, buddy, order)?);
            }
            if let Some(&old) = self.meta.get(buddy as usize) {
                plan.note(buddy, old);
            }
            merges.n += 1;
            head = head.min(buddy);
            order += 1;
        }
        merges.tail = self.free.plan_append(&self.arena, order)?;
        Ok(())
    }

    /// The write pass of a free: [`attach`](Self::attach) of the block of `order` at `idx`
    /// with what [`plan_attach`](Self::plan_attach) read of the same state. Cannot fail.
    #[inline(always)]
    fn attach_planned<const ZERO: bool>(&mut self, idx: u32, order: u32, merges: &Merges) {
        let freed = (idx, order);
        // After merging, `idx` may no longer be the head: unmark it now.
        self.meta[idx as usize].order = NO_ORDER;
        let (mut head, mut order) = (idx, order);
        // The lists emptied by the merges, their mask bits cleared once after the loop: those
        // of the lone buddies' lists (step i unlinks from list `order + i`) and any other the
        // loop empties.
        let mut emptied = merges.alone.checked_shl(order).unwrap_or(0);
        let meta = &mut *self.meta;
        for (i, (step, alone)) in merges
            .steps
            .iter()
            .zip(&merges.buddies)
            .enumerate()
            .take(merges.n)
        {
            let buddy = if merges.alone & (1 << i) != 0 {
                // SAFETY: `plan_attach` cleared `alone`, then for each of its steps i < n (and
                // n < MAX_ORDERS: see there) either set bit i and wrote `buddies[i]`, or left
                // it clear and wrote `steps[i]`. Bit i is set: `buddies[i]` is initialised.
                let buddy = unsafe { alone.assume_init() };
                self.free.unlink_alone(order);
                buddy
            } else {
                // SAFETY: as above; bit i is clear and i < n (`take`): `steps[i]` is
                // initialised.
                let unlink = unsafe { step.assume_init() };
                if self.free.unlink(&mut self.arena, order, unlink) {
                    emptied |= 1 << order;
                }
                unlink.idx()
            };
            meta[buddy as usize].order = NO_ORDER;
            head = head.min(buddy);
            order += 1;
        }
        self.free.remask(0, emptied);
        meta[head as usize].order = order as u8;
        self.free
            .append_planned(&mut self.arena, head, order, merges.tail);
        // The freed block is zeroed last, after the lists' writes: the stores that zero it are
        // still on their way to the cache when the call returns, and the reads of the lists'
        // ends and the saved registers that would come after them otherwise wait behind any
        // of those stores whose address has the same offset in its 4 KiB page (the processor
        // tells such addresses apart only after a stall). Nothing written here lies in the
        // freed block: its pages were held, so no list names them, and the merged block joins
        // its list as the tail, whose link the lists' ends keep.
        if ZERO && self.geo.zero == ZeroPolicy::OnFree {
            self.zero_freed_block(freed.0, freed.1);
        }
    }

    /// Reads and checks every link that [`attach`](Self::attach) of the block of `order` at
    /// `idx` will touch, writing nothing: the free buddies it will merge with (found from the
    /// metadata alone, as `attach` finds them) and the tail of the list it will join. Each merge
    /// step unlinks from a different list, so the checks of one step still hold after the
    /// writes of the steps before it, and `attach` cannot fail halfway.
    pub(crate) fn check_attach(
        &self,
        idx: u32,
        order: u32,
        plan: &mut impl Plan,
    ) -> Result<(), Corruption> {
        self.plan_attach(idx, order, plan, &mut Merges::new())
    }

    /// Orders below which a block at `idx` merges: `max_order`, or 0 for an external block
    /// (mainline's `__hyp_attach_page`: a page outside `[range_start, range_end)` is listed at the
    /// order it carries and never coalesced).
    #[inline(always)]
    pub(crate) fn merge_limit(&self, idx: u32) -> u32 {
        if idx < self.geo.range_pages {
            self.geo.max_order
        } else {
            0
        }
    }

    /// pKVM's `__hyp_attach_page`: merges the block with free buddies of equal order while the
    /// order stays below `max_order` (external blocks: never, see
    /// [`merge_limit`](Self::merge_limit)), lists the result, and zeroes the block per the
    /// policy (unless `ZERO` is false: the caller did; pKVM zeroes first, and nothing the
    /// lists' writes touch lies in the block, so the order changes no byte):
    /// [`plan_attach`](Self::plan_attach), then [`attach_planned`](Self::attach_planned), so
    /// that a corrupt list is found before the first write.
    pub(crate) fn attach<const ZERO: bool>(
        &mut self,
        idx: u32,
        order: u32,
    ) -> Result<(), Corruption> {
        let mut merges = Merges::new();
        self.plan_attach(idx, order, &mut (), &mut merges)?;
        self.attach_planned::<ZERO>(idx, order, &merges);
        Ok(())
    }

    /// Takes one more reference to a held page.
    pub fn get(&mut self, pfn: u64) -> Result<(), Error> {
        let (idx, m) = self.held(pfn)?;
        if m.refcount == u16::MAX {
            return Err(Error::RefcountOverflow { pfn });
        }
        self.meta[idx as usize].refcount += 1;
        Ok(())
    }

    /// Splits the held block headed by `pfn` into `2^order` order-0 pages: each former tail gets
    /// refcount 1 and the head keeps its refcount. Each page is then put on its own.
    pub fn split(&mut self, pfn: u64) -> Result<(), Error> {
        let (idx, m) = self.held(pfn)?;
        let order = self.block_order(idx, m)?;
        if !self.block_fits(idx, order) {
            return Err(self.corrupt(CorruptionKind::BadHead, idx));
        }
        let end = idx as usize + (1usize << order);
        for tail in &mut self.meta[idx as usize + 1..end] {
            *tail = PageMeta::new(1, 0);
        }
        self.meta[idx as usize].order = 0;
        Ok(())
    }

    pub(crate) fn parts(&self) -> (&Arena<'a>, &[PageMeta], &FreeLists<L>) {
        (&self.arena, self.meta, &self.free)
    }

    #[cfg(test)]
    pub(crate) fn parts_mut(&mut self) -> (&mut Arena<'a>, &mut [PageMeta]) {
        (&mut self.arena, self.meta)
    }
}
