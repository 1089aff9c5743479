//! Batches: many blocks in one call, all or nothing.
//!
//! [`Pool::alloc_many`] and [`Pool::put_many`] either do the whole batch, exactly as the same
//! calls one by one would, or return an error having changed nothing. They add no policy of
//! their own: each is a check that the whole batch can be done, then the single-block calls,
//! except where a list's head blocks or a whole free block are handed out, or a whole block
//! comes back, at once. There a batch takes a shortcut whose end state is provably the one the
//! single calls reach: the same pfns in the same order, the same free lists in the same FIFO
//! order, the same metadata, counts and page bytes (inline links included). Only the stale
//! entries a side table keeps for pages on no list, or at a list's tail, may differ: no
//! operation reads them (a page's link is written when a block is appended behind it, before
//! any read).
//!
//! - A list's heads out: the blocks that list `order` holds beyond its tail, as many as the batch
//!   wants, are its allocations' first blocks; one walk takes them all, each as `alloc` takes a
//!   head that splits nothing, and the list's ends are written once ([`Pool::take_listed`]).
//! - A whole block out: when the lists from the batch's order up to the first non-empty one, k,
//!   are empty and the batch wants at least a block of order k's worth, the allocations one by one
//!   take the head block of list k, split it, and take back each half they listed, in ascending
//!   pfn order, leaving the lists below k empty again ([`Pool::take_whole_block`]).
//! - A whole block back: the last puts of an aligned, ascending run of 2^k order-0 pages end as one
//!   free of the order-k block, each half listed on the way being taken back by its buddy's merge
//!   ([`Pool::free_whole_run`]).

use core::fmt;

use crate::config::ZeroPolicy;
use crate::error::{CorruptionKind, Error};
use crate::prefetch::prefetch;
use crate::store::{Link, LinkStore, PageMeta, NO_ORDER};
use crate::Pool;

/// A batch call failed at `pfns[index]`; nothing was changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchError {
    /// The position of the first element that could not be done.
    pub index: usize,
    /// Why.
    pub error: Error,
}

/// The error without its position, for `?` in functions returning [`Error`].
impl From<BatchError> for Error {
    fn from(e: BatchError) -> Self {
        e.error
    }
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pfns[{}]: {}", self.index, self.error)
    }
}

/// Marks a page whose last reference the batch being applied dropped, until it is attached.
const DROPPED: u8 = 1;

impl<L: LinkStore> Pool<'_, L> {
    /// Allocates `out.len()` blocks of `2^order` pages into `out`, all or nothing: on any error
    /// (an invalid order, too little memory, a corrupt free list) no block is taken and the pool
    /// is unchanged. The blocks are those that `out.len()` calls of [`alloc`](Self::alloc)
    /// return, in that order.
    ///
    /// ```
    /// use pagebuddy::{Config, Error, Link, PageMeta, Pool, SideTable};
    /// let (mut arena, mut meta, mut links) = ([0u8; 8 * 64], [PageMeta::INIT; 8], [Link::EMPTY; 8]);
    /// let config = Config::new(8).page_size(64);
    /// let mut pool = Pool::new(&mut arena[..], &mut meta, SideTable::new(&mut links), config)?;
    /// let mut pfns = [0; 3];
    /// pool.alloc_many(1, &mut pfns)?;
    /// assert_eq!(pfns, [0, 2, 4]);
    /// assert_eq!(pool.alloc_many(1, &mut [0; 2]), Err(Error::OutOfMemory { order: 1 }));
    /// assert_eq!(pool.free_pages(), 2);
    /// # Ok::<(), Error>(())
    /// ```
    pub fn alloc_many(&mut self, order: u32, out: &mut [u64]) -> Result<(), Error> {
        let max_order = self.geo.max_order;
        if order >= max_order {
            return Err(Error::InvalidOrder { order, max_order });
        }
        if self.capacity(order) < out.len() as u64 {
            return Err(Error::OutOfMemory { order });
        }
        self.check_alloc_many(order, out.len() as u64)?;
        let mut filled = self.take_listed(order, out);
        while filled < out.len() {
            filled += self.alloc_next(order, &mut out[filled..])?;
        }
        Ok(())
    }

    /// The first allocations of a batch that [`check_alloc_many`](Self::check_alloc_many) has
    /// just checked: as many blocks as list `order` holds beyond its tail, up to `out.len()`,
    /// taken from its head at once ([`FreeLists::take_heads`](crate::store::FreeLists::take_heads))
    /// and each handed out as [`alloc`](Self::alloc) hands it out: held once, counted in what
    /// the pool has touched, zeroed per the policy. Returns how many.
    ///
    /// These are the allocations one by one: each takes the head of list `order`, the first
    /// list `alloc` looks at, and splits nothing. The check read every link they read, as many
    /// head blocks of that list as the batch takes, the way `alloc` reads them, so none can
    /// fail. A batch of single pages from a pool in use, whose order-0 list is long, is this
    /// loop alone: per block a link read (in cache: the check read it), a link cleared and the
    /// metadata written.
    fn take_listed(&mut self, order: u32, out: &mut [u64]) -> usize {
        let count = (self.free.len(order).saturating_sub(1) as usize).min(out.len());
        if count == 0 {
            return 0;
        }
        let (mut filled, mut end) = (0, self.touched);
        let head = self
            .free
            .take_heads(&mut self.arena, order, count as u32, |idx| {
                if let Some(m) = self.meta.get_mut(idx as usize) {
                    m.set(PageMeta::new(1, order as u8));
                }
                end = end.max(idx + (1 << order));
                if let Some(slot) = out.get_mut(filled) {
                    *slot = self.geo.pfn(idx);
                }
                filled += 1;
            });
        self.touched = end;
        // The metadata the next allocation of `order` reads, as `take_head` hints it.
        prefetch(self.meta.as_ptr().wrapping_add(head as usize));
        if self.geo.zero == ZeroPolicy::OnAlloc {
            for &pfn in &out[..count] {
                if let Some(idx) = self.geo.index(pfn) {
                    self.zero_block(idx, order);
                }
            }
        }
        count
    }

    /// The next allocations of a batch, into the start of `out` (not empty): a whole free block
    /// where the batch wants at least that many blocks of `order`, else one `alloc`. Returns how
    /// many were made.
    fn alloc_next(&mut self, order: u32, out: &mut [u64]) -> Result<usize, Error> {
        // The first non-empty list at or above `order`: the one `alloc` takes from.
        let found = order + (self.free.ends().mask >> order).trailing_zeros();
        if found < self.geo.max_order && (1usize << (found - order)) <= out.len() {
            let blocks = &mut out[..1 << (found - order)];
            self.take_whole_block(order, found, blocks)?;
            return Ok(blocks.len());
        }
        out[0] = self.alloc(order)?;
        Ok(1)
    }

    /// `out.len() = 2^(found - order)` allocations of `order` at once, where `found` is the first
    /// non-empty list at or above `order`: the head block of list `found`, handed out as its
    /// blocks of `order` in ascending pfn order.
    ///
    /// Why this is what `alloc` one by one does: the first call takes that head block and splits
    /// it, listing one upper half on each of the empty lists `order..found`. Each later call takes
    /// the only block on the lowest non-empty of those lists, which is the lowest half not yet
    /// handed out, and splits it the same way. So the blocks come out in ascending order, every
    /// list below `found` ends empty as it began, and the only list that keeps a change is
    /// `found`, which lost its head. Each block but the first was listed alone on an empty list
    /// and taken from it alone, which writes no link (see
    /// [`FreeLists`](crate::store::FreeLists)); the first was unlinked from list `found`.
    fn take_whole_block(&mut self, order: u32, found: u32, out: &mut [u64]) -> Result<(), Error> {
        let idx = self.free_head(found)?;
        self.free
            .take_head(&mut self.arena, idx, found, self.meta)?;
        let page_size = self.geo.page_size;
        for (i, pfn) in out.iter_mut().enumerate() {
            let head = idx + ((i as u32) << order);
            self.meta[head as usize].set(PageMeta::new(1, order as u8));
            *pfn = self.geo.pfn(head);
        }
        self.touched = self.touched.max(idx + (1 << found));
        if self.geo.zero == ZeroPolicy::OnAlloc {
            self.arena
                .zero(idx as usize * page_size, page_size << found);
        }
        Ok(())
    }

    /// Checks, writing nothing, that `count` allocations of `order` will all succeed, so that a
    /// batch finds corruption before it hands out its first block. The allocations take the
    /// blocks at the heads of the lists from `order` up, one list after the other: a list is
    /// touched only once the lists below it are empty, and the halves a split leaves there are
    /// taken before the next block (their links are the pool's own, just written). So checking,
    /// on each list, as many head blocks as the batch will take reads everything that `alloc`
    /// and [`FreeLists::take_head`] check.
    pub(crate) fn check_alloc_many(&self, order: u32, count: u64) -> Result<(), Error> {
        let mut left = count;
        for k in order..self.geo.max_order {
            if left == 0 {
                break;
            }
            let per_block = 1u64 << (k - order);
            let listed = u64::from(self.free.ends().len[k as usize]);
            let take = left.div_ceil(per_block).min(listed);
            self.check_head_blocks(k, take)?;
            left = left.saturating_sub(take * per_block);
        }
        Ok(())
    }

    /// Checks, writing nothing, that the first `take` blocks of list `order` can be taken one
    /// after another from its head: each is a free head of that order, each link that taking
    /// it reads is in range, and the last block by the list's length, and only that one, is
    /// without a successor: the list's tail. Each block is the list's head when it is taken,
    /// whose link's `prev` must name the block taken before it (checked against the list's
    /// ends for the first, [`FreeLists::link_in`](crate::store::FreeLists::link_in)); that
    /// also rules out a walk that comes back to a block it passed.
    pub(crate) fn check_head_blocks(&self, order: u32, take: u64) -> Result<(), Error> {
        let mut next = self.free.first(order)?;
        let listed = u64::from(self.free.len(order));
        let mut before = Link::NIL;
        for n in 0..take {
            let idx = next.ok_or(self.corrupt(CorruptionKind::Count, 0))?;
            self.check_listed_head(idx, order)?;
            let me = self.free.link_in(&self.arena, idx, order)?;
            // The last block by the list's length is taken alone on its list, so it must be
            // the tail; any other must have a successor.
            let last = n + 1 == listed;
            let ends_ok = (me.next == Link::NIL) == last && (!last || self.free.tail(order) == idx);
            if me.prev != before || !ends_ok {
                return Err(self.corrupt(CorruptionKind::ListBroken, idx));
            }
            before = idx;
            next = (me.next != Link::NIL).then_some(me.next);
        }
        Ok(())
    }

    /// Drops one reference to each pfn of `pfns`, all or nothing: the same as [`put`](Self::put)
    /// of each in turn, but first every element is checked (including a page put more times
    /// than it is held), and if one fails nothing is changed.
    ///
    /// The error names the first element that fails, with the error `put` would have returned
    /// there ([`Error::PfnOutOfRange`], [`Error::NotHeld`]). Blocks whose last reference is
    /// dropped are freed and coalesced in the order of those last references, as with `put`.
    /// With links in the pages ([`Intrusive`](crate::store::Intrusive)), which any write into
    /// a free page can change, every free-list link the frees will read is checked before the
    /// first write, as `put` checks its own, so a corrupt list ([`Error::Corrupted`], naming
    /// the element whose free would meet it) changes nothing either; a side table is written
    /// by the pool alone. (The checks may look at a little more than the frees will: on a
    /// corrupt pool a batch may refuse where the calls one by one would not yet have failed.)
    ///
    /// ```
    /// use pagebuddy::{BatchError, Config, Error, Link, PageMeta, Pool, SideTable};
    /// let (mut arena, mut meta, mut links) = ([0u8; 8 * 64], [PageMeta::INIT; 8], [Link::EMPTY; 8]);
    /// let config = Config::new(8).page_size(64);
    /// let mut pool = Pool::new(&mut arena[..], &mut meta, SideTable::new(&mut links), config)?;
    /// let (a, b) = (pool.alloc(0)?, pool.alloc(0)?);
    /// // b twice: the second put would find it free, so nothing is put.
    /// let err = BatchError { index: 2, error: Error::NotHeld { pfn: b } };
    /// assert_eq!(pool.put_many(&[a, b, b]), Err(err));
    /// assert_eq!((pool.refcount(a)?, pool.refcount(b)?), (1, 1));
    /// pool.put_many(&[a, b])?;
    /// assert_eq!(pool.free_pages(), 8);
    /// # Ok::<(), Error>(())
    /// ```
    pub fn put_many(&mut self, pfns: &[u64]) -> Result<(), BatchError> {
        // Drop every reference, marking the pages whose last one goes and checking the links
        // their frees will read, or undo and fail.
        let mut first = None;
        for (index, &pfn) in pfns.iter().enumerate() {
            let dropped = self.drop_reference(pfn);
            if let Ok(true) = dropped {
                first.get_or_insert(index);
            }
            if let Err(error) = dropped {
                self.undo_drops(&pfns[..index]);
                return Err(BatchError { index, error });
            }
        }
        if let (Some(index), true) = (first, L::IN_PAGE_BYTES > 0) {
            if let Err(error) = self.check_tails(self.geo.max_order) {
                self.undo_drops(pfns);
                return Err(BatchError { index, error });
            }
        }
        // Give the marked pages their references back, then put them in turn: each block is
        // attached at its last reference, as `put` one by one would.
        for &pfn in pfns {
            if let Some(m) = self.dropped(pfn) {
                m.refcount += 1;
            }
        }
        let mut index = 0;
        while index < pfns.len() {
            match self.put_next(&pfns[index..]) {
                Ok(done) => index += done,
                Err(error) => {
                    self.clear_marks(&pfns[index..]);
                    return Err(BatchError { index, error });
                }
            }
        }
        Ok(())
    }

    /// Checks, writing nothing, the neighbourhood on its list of each free block that the free
    /// of the block of `order` at `idx` may merge with: the buddy at each order from `order`
    /// up, while the merging can reach it. `batch` tells the pages whose blocks the batch has
    /// freed before this one (`Some(true)`: the merging may go on past them), or, for a batch
    /// whose frees are all known, those it frees whatever their turn; `Some(false)` stops the
    /// walk. For the others (`None`) their metadata says: a held page stops the merging; a free
    /// head of the buddy's order is checked ([`check_listed`](Self::check_listed)); anything
    /// else (a smaller free block, a tail page) may still be freed whole, so the walk goes on.
    ///
    /// Why this is enough for a batch of frees: each free merges with free blocks that are
    /// buddies of a block holding its page, and appends to a list's tail. Walked at each last
    /// reference, in the batch's order, the buddies met are those the frees one by one merge
    /// with (and a few more: a page the batch freed earlier may head only part of its buddy),
    /// each checked as it is now; every unlink and append rewires only blocks so checked, keeps
    /// every other checked block's neighbours pointing back at it, and every block the batch
    /// lists is linked by the batch itself. With the tails checked too
    /// ([`check_tails`](Self::check_tails)), no free of the batch can meet corruption. On a
    /// sound pool every check passes; on a corrupt one the batch may refuse where the frees one
    /// by one would not yet have failed.
    pub(crate) fn check_merges(
        &self,
        idx: u32,
        order: u32,
        batch: impl Fn(PageMeta) -> Option<bool>,
    ) -> Result<(), Error> {
        let pfn = self.geo.pfn(idx);
        for k in order..self.merge_limit(idx).saturating_sub(1) {
            let head = pfn >> k << k;
            let Some(buddy) = self.range_index(head ^ (1 << k)) else {
                break;
            };
            let b = self.meta[buddy as usize];
            match batch(b) {
                Some(true) => continue,
                Some(false) => break,
                None if b.refcount > 0 => break,
                None if u32::from(b.order) == k => self.check_listed(buddy, k)?,
                None => {}
            }
        }
        Ok(())
    }

    /// Checks, writing nothing, that the free head `idx` of `order` sits on list `order` as a
    /// sound list holds it: what [`FreeLists::check_remove`](crate::store::FreeLists::check_remove)
    /// checks, and also that each neighbour its link names is a free head of that order, none of
    /// the batch's, and that it has no `prev` exactly when it is the head and no `next` exactly
    /// when it is the tail. (`put` reads only the first part; a batch, which goes on after the
    /// unlink, needs the lists around it sound.)
    fn check_listed(&self, idx: u32, order: u32) -> Result<(), Error> {
        self.free.check_remove(&self.arena, idx, order)?;
        let me = self.free.link_in(&self.arena, idx, order)?;
        let listed = |i: u32| {
            i == Link::NIL
                || self.meta.get(i as usize).is_some_and(|m| {
                    m.is_free_head() && u32::from(m.order) == order && m.batch == 0
                })
        };
        let ends_ok = (me.prev == Link::NIL) == (self.free.first(order) == Ok(Some(idx)))
            && (me.next == Link::NIL) == (self.free.tail(order) == idx);
        if listed(me.prev) && listed(me.next) && ends_ok {
            Ok(())
        } else {
            Err(self.corrupt(CorruptionKind::ListBroken, idx))
        }
    }

    /// Checks, writing nothing, that each list below `orders` can be appended to any number of
    /// times while the batch unlinks the blocks [`check_merges`](Self::check_merges) checked:
    /// its tail, if any, has a link in range, and no block names the tail as its `prev` unless
    /// the tail names it as its `next` (a tail whose `next` is not NIL is harmless, as `put`
    /// finds it, while the block it names does not point back: an append just writes over it).
    pub(crate) fn check_tails(&self, orders: u32) -> Result<(), Error> {
        for k in 0..orders {
            let tail = self.free.tail(k);
            let Some(link) = self.free.plan_append(&self.arena, k)? else {
                continue;
            };
            let next = link.next;
            // The link of `next` (a page of the pool: the tail's link is in range), unchecked:
            // only whether it names the tail matters.
            let (links, page_size) = (&self.free.links, self.geo.page_size);
            if next != Link::NIL && links.load(&self.arena, page_size, next).prev == tail {
                return Err(self.corrupt(CorruptionKind::ListBroken, tail));
            }
        }
        Ok(())
    }

    /// Third pass of `put_many`, at the start of `pfns` (not empty): a whole run of last puts in
    /// one free where [`run_order`](Self::run_order) finds one and it is sure to succeed, else
    /// [`put_dropped`](Self::put_dropped) of the first element. Returns how many were put.
    fn put_next(&mut self, pfns: &[u64]) -> Result<usize, Error> {
        if let Some((idx, order)) = self.run_order(pfns) {
            if self.check_whole_run(idx, order).is_ok() {
                self.free_whole_run(idx, order)?;
                return Ok(1 << order);
            }
        }
        self.put_dropped(pfns[0])?;
        Ok(1)
    }

    /// The metadata of `pfn` if this batch dropped its last reference.
    fn dropped(&mut self, pfn: u64) -> Option<&mut PageMeta> {
        let idx = self.geo.index(pfn)?;
        let m = &mut self.meta[idx as usize];
        (m.batch == DROPPED).then_some(m)
    }

    /// First pass of `put_many`: one reference fewer, checked as `put` checks it; at the last,
    /// the links its free will read are checked ([`check_merges`](Self::check_merges), the
    /// pages freed before it marked [`DROPPED`]) and the page is marked. Returns whether it was
    /// the last.
    fn drop_reference(&mut self, pfn: u64) -> Result<bool, Error> {
        let (idx, m) = self.held(pfn)?;
        let last = m.refcount == 1;
        if last {
            let order = self.block_order(idx, m)?;
            // Only links others can write need checking ahead: a side table is the pool's
            // alone (its frees check what they read, as `put` does, and find it sound).
            if L::IN_PAGE_BYTES > 0 {
                self.check_merges(idx, order, |b| (b.batch == DROPPED).then_some(true))?;
            }
            self.meta[idx as usize].batch = DROPPED;
        }
        self.meta[idx as usize].refcount -= 1;
        Ok(last)
    }

    /// Gives back the references a failed first pass dropped.
    fn undo_drops(&mut self, pfns: &[u64]) {
        for &pfn in pfns {
            if let Some(idx) = self.geo.index(pfn) {
                let m = &mut self.meta[idx as usize];
                m.refcount += 1;
                m.batch = 0;
            }
        }
    }

    /// Clears the marks a batch cut short by corruption leaves (those pages stay held, with the
    /// references the batch did not drop).
    fn clear_marks(&mut self, pfns: &[u64]) {
        for &pfn in pfns {
            if let Some(m) = self.dropped(pfn) {
                m.batch = 0;
            }
        }
    }

    /// The run that `pfns` starts with, as the index of its first page and its order k >= 1, if
    /// its first 2^k elements are 2^k consecutive pfns from one aligned to 2^k (k below
    /// `max_order`), each an order-0 page with its last reference dropped by this batch and
    /// only this one left, so that these are the last puts of each.
    fn run_order(&self, pfns: &[u64]) -> Option<(u32, u32)> {
        let first = *pfns.first()?;
        // A run has at least two elements, from an even pfn: most batches are not runs, and
        // their first two elements say so at once.
        if first & 1 != 0 || pfns.get(1) != Some(&first.wrapping_add(1)) {
            return None;
        }
        let idx = self.geo.index(first)?;
        let top = first.trailing_zeros().min(self.geo.max_order - 1);
        let most = pfns.len().min(1 << top);
        let last_put = PageMeta {
            refcount: 1,
            order: 0,
            batch: DROPPED,
        };
        let len = (0..most)
            .take_while(|&i| {
                let next = idx as usize + i;
                // External pages never merge: a run is one free only inside the range.
                next < self.geo.range_pages as usize
                    && pfns[i] == first.wrapping_add(i as u64)
                    && self.meta[next] == last_put
            })
            .count();
        let order = len.checked_ilog2().filter(|&k| k > 0)?;
        Some((idx, order))
    }

    /// Checks, writing nothing, that the puts of the run of order `order` at `idx` one by one
    /// would succeed and change nothing that [`free_whole_run`](Self::free_whole_run) does not:
    /// they append a block to each list below `order` and take it back off, which reads the
    /// tail's link and writes its `next` back to NIL, so each such tail's link must be in range
    /// with a NIL `next`; then they end as the free of the whole block, which
    /// [`check_attach`](Self::check_attach) checks.
    fn check_whole_run(&self, idx: u32, order: u32) -> Result<(), Error> {
        for k in 0..order {
            let tail = self.free.plan_append(&self.arena, k)?;
            if tail.is_some_and(|link| link.next != Link::NIL) {
                return Err(self.corrupt(CorruptionKind::ListBroken, self.free.tail(k)));
            }
        }
        Ok(self.check_attach(idx, order, &mut ())?)
    }

    /// The last puts of the run of `2^order` pages at `idx` (see
    /// [`run_order`](Self::run_order)), as one free of the block they make.
    ///
    /// Why this is what the puts one by one do: the pages are put in ascending order, so each
    /// block of order j < `order` in the run is complete when its last page is put; a lower half
    /// then finds its buddy still held and is appended to list j, and an upper half finds that
    /// lower half free and merges with it (unlinking it), up to the block of the next order. No
    /// merge inside the run reaches outside it, so the last put frees the whole block of `order`
    /// and merges on from there as a free of that block does. On the way, each list below
    /// `order` got one block at its tail and lost it again, which leaves that list as it was
    /// (its tail's `next` NIL again, see [`check_whole_run`](Self::check_whole_run)). The bytes
    /// (see [`FreeLists`](crate::store::FreeLists)): each block appended became the tail, whose
    /// link the list's ends keep, so none is written into the run's pages; on a list j that was
    /// not empty, the tail's link was written into its store when the block was appended
    /// behind it and cleared when the block left and it became the tail again. The block is
    /// zeroed whole per the policy as the last put zeroes it: the same bytes.
    fn free_whole_run(&mut self, idx: u32, order: u32) -> Result<(), Error> {
        let page_size = self.geo.page_size;
        for page in idx..idx + (1 << order) {
            self.meta[page as usize] = PageMeta::new(0, NO_ORDER);
        }
        for j in 0..order {
            let tail = self.free.tail(j);
            if tail != Link::NIL {
                self.free.links.clear(&mut self.arena, page_size, tail);
            }
        }
        Ok(self.attach::<true>(idx, order)?)
    }

    /// Third pass of `put_many`: `put` of a page whose last reference the batch drops. As in
    /// `put`, a corrupt free list is found before the last reference goes.
    fn put_dropped(&mut self, pfn: u64) -> Result<(), Error> {
        let Some(idx) = self.geo.index(pfn) else {
            return Ok(());
        };
        let slot = &mut self.meta[idx as usize];
        // Read whole before any byte of it is written: a load of bytes that a store just
        // before wrote only part of waits for that store to reach the cache.
        let mut m = *slot;
        if m.batch != DROPPED {
            return Ok(());
        }
        if m.refcount > 1 {
            slot.refcount -= 1;
            return Ok(());
        }
        // The mark goes first: a free that meets corruption changes nothing else, and leaves
        // the page held once, unmarked, as `clear_marks` would.
        m.batch = 0;
        slot.batch = 0;
        self.put_last::<true, ()>(idx, m, &mut ())
    }
}
