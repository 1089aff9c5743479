//! Batches: many blocks in one call, all or nothing.
//!
//! [`Pool::alloc_many`] and [`Pool::put_many`] either do the whole batch, exactly as the same
//! calls one by one would, or return an error having changed nothing. They add no policy of
//! their own: each is a check that the whole batch can be done, then the single-block calls.

use core::fmt;

use crate::error::{CorruptionKind, Error};
use crate::store::{Link, LinkStore, PageMeta};
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
        for pfn in out.iter_mut() {
            *pfn = self.alloc(order)?;
        }
        Ok(())
    }

    /// Checks, writing nothing, that `count` allocations of `order` will all succeed, so that a
    /// batch finds corruption before it hands out its first block. The allocations take the
    /// blocks at the heads of the lists from `order` up, one list after the other: a list is
    /// touched only once the lists below it are empty, and the halves a split leaves there are
    /// taken before the next block (their links are the pool's own, just written). So checking,
    /// on each list, as many head blocks as the batch will take reads everything that `alloc`
    /// and [`FreeLists::remove`] check.
    fn check_alloc_many(&self, order: u32, count: u64) -> Result<(), Error> {
        let mut left = count;
        for k in order..self.geo.max_order {
            if left == 0 {
                break;
            }
            let per_block = 1u64 << (k - order);
            let listed = u64::from(self.free.len[k as usize]);
            let take = left.div_ceil(per_block).min(listed);
            self.check_head_blocks(k, take)?;
            left = left.saturating_sub(take * per_block);
        }
        Ok(())
    }

    /// Checks, writing nothing, that the first `take` blocks of list `order` can be taken one
    /// after another from its head: each is a free head of that order, and each link that
    /// unlinking it reads is in range and points back at it. (Once a block is the head, its
    /// `prev` is NIL, written by the unlinking of the block before it; only the first block's
    /// `prev` is read as it is.)
    fn check_head_blocks(&self, order: u32, take: u64) -> Result<(), Error> {
        let mut next = self.free.first(order);
        for n in 0..take {
            let idx = next.ok_or(self.corrupt(CorruptionKind::Count, 0))?;
            let m = self.meta[idx as usize];
            if !(m.is_free_head() && u32::from(m.order) == order) {
                return Err(self.corrupt(CorruptionKind::NotFreeHead, idx));
            }
            let me = self.free.link(&self.arena, idx)?;
            let prev_ok =
                n > 0 || me.prev == Link::NIL || self.free.link(&self.arena, me.prev)?.next == idx;
            let next_ok = if me.next == Link::NIL {
                self.free.tail(order) == idx
            } else {
                self.free.link(&self.arena, me.next)?.prev == idx
            };
            let linked = prev_ok && next_ok;
            if !linked {
                return Err(self.corrupt(CorruptionKind::ListBroken, idx));
            }
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
    /// Only a corrupted pool ([`Error::Corrupted`]) can stop it part way.
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
        // Drop every reference, marking the pages whose last one goes, or undo and fail.
        for (index, &pfn) in pfns.iter().enumerate() {
            if let Err(error) = self.drop_reference(pfn) {
                self.undo_drops(&pfns[..index]);
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
        for (index, &pfn) in pfns.iter().enumerate() {
            if let Err(error) = self.put_dropped(pfn) {
                self.clear_marks(&pfns[index..]);
                return Err(BatchError { index, error });
            }
        }
        Ok(())
    }

    /// The metadata of `pfn` if this batch dropped its last reference.
    fn dropped(&mut self, pfn: u64) -> Option<&mut PageMeta> {
        let idx = self.geo.index(pfn)?;
        let m = &mut self.meta[idx as usize];
        (m.batch == DROPPED).then_some(m)
    }

    /// First pass of `put_many`: one reference fewer, checked as `put` checks it.
    fn drop_reference(&mut self, pfn: u64) -> Result<(), Error> {
        let (idx, m) = self.held(pfn)?;
        if m.refcount == 1 {
            self.block_order(idx, m)?;
            self.meta[idx as usize].batch = DROPPED;
        }
        self.meta[idx as usize].refcount -= 1;
        Ok(())
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

    /// Third pass of `put_many`: `put` of a page whose last reference the batch drops. As in
    /// `put`, a corrupt free list is found before the last reference goes.
    fn put_dropped(&mut self, pfn: u64) -> Result<(), Error> {
        let Some(m) = self.dropped(pfn) else {
            return Ok(());
        };
        if m.refcount > 1 {
            m.refcount -= 1;
            return Ok(());
        }
        let m = *m;
        let idx = self.index(pfn)?;
        let order = self.block_order(idx, m)?;
        self.check_attach(idx, order)?;
        self.meta[idx as usize] = PageMeta::new(0, m.order);
        Ok(self.attach::<true>(idx, order)?)
    }
}
