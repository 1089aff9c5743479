//! The invariant checker: validates a whole pool and names the first broken rule.

use crate::config::ZeroPolicy;
use crate::error::{Corruption, CorruptionKind as K};
use crate::store::{Link, LinkStore, PageMeta, ABSENT, MAX_ORDERS, NO_ORDER};
use crate::Pool;

impl<L: LinkStore> Pool<'_, L> {
    /// Validates the whole state in O(nr_pages + arena bytes checked for zero):
    /// - every list is well formed (prev/next agree, tail and length right, no stray link) and
    ///   holds only free heads of its order;
    /// - every page is the head of exactly one block (aligned, of an order below `max_order`,
    ///   inside the pool) or one of its tails (refcount 0, no order), or is not the pool's
    ///   ([`ABSENT`](crate::ABSENT): never admitted, or reclaimed; in no block, on no list);
    /// - no block crosses the end of the initial range, and only blocks inside it coalesce:
    ///   external blocks (admitted past it) never have a free buddy merged;
    /// - every free head is listed, no two free buddies of an order below `max_order - 1` are left
    ///   uncoalesced, and the lists' lengths and the non-empty mask agree with the lists (the
    ///   free page count is their sum: [`free_pages`](Self::free_pages));
    /// - under [`ZeroPolicy::OnFree`], free memory is zero (but for the links an
    ///   [`Intrusive`](crate::Intrusive) store keeps at the start of each free head page). In a
    ///   [prezeroed](crate::Config::prezeroed) arena, pages never handed out are not read: the
    ///   check costs what the pool has written, and leaves a lazily committed arena uncommitted.
    ///
    /// ```
    /// use pagebuddy::{Config, Intrusive, PageMeta, Pool};
    /// let (mut arena, mut meta) = ([0u8; 4 * 64], [PageMeta::INIT; 4]);
    /// let mut pool = Pool::new(&mut arena[..], &mut meta, Intrusive, Config::new(4).page_size(64))?;
    /// let pfn = pool.alloc(0)?;
    /// pool.check()?;
    /// pool.put(pfn)?;
    /// pool.check()?;
    /// # Ok::<(), pagebuddy::Error>(())
    /// ```
    pub fn check(&self) -> Result<(), Corruption> {
        let geo = self.geometry();
        let (arena, meta, free) = self.parts();
        let at = |kind, idx: u32| Corruption {
            kind,
            pfn: geo.pfn(idx),
        };

        for order in 0..MAX_ORDERS as u32 {
            let len = free.ends().len[order as usize];
            if (free.ends().mask >> order & 1 == 1) != (len > 0)
                || (order >= geo.max_order && len > 0)
            {
                return Err(at(K::Count, 0));
            }
            let (mut prev, mut next, mut seen) = (Link::NIL, Link::NIL, 0u32);
            for node in free.iter(arena, order) {
                let (idx, link) = node?;
                if link.prev != prev {
                    return Err(at(K::ListBroken, idx));
                }
                let m = meta[idx as usize];
                if !(m.is_free_head() && u32::from(m.order) == order) {
                    return Err(at(K::NotFreeHead, idx));
                }
                (prev, next, seen) = (idx, link.next, seen + 1);
            }
            if seen != len || next != Link::NIL || free.tail(order) != prev {
                return Err(at(K::ListBroken, prev.min(geo.nr_pages - 1)));
            }
        }
        let heads = self.check_blocks(false)?;
        // Each listed node is a verified free head at most once (prev links rule out repeats),
        // so equal counts mean every free head is listed.
        match (0..MAX_ORDERS).find(|&k| heads[k] != free.ends().len[k]) {
            Some(_) => Err(at(K::Unlisted, 0)),
            None => Ok(()),
        }
    }

    /// The part of [`check`](Self::check) that reads only the metadata and the free memory:
    /// every page heads one block or is one of its tails, no two free buddies are left
    /// uncoalesced, and free memory is zero where the policy says so. Returns the number of
    /// free heads of each order. (A shared pool's recovery rebuilds the free lists from
    /// metadata that passes this; with `links_anywhere`, the bytes a [`LinkStore`] keeps at the
    /// start of a page may be set in every page of a free block, not only its head: a split
    /// undone leaves links there, which the rebuild clears.)
    pub(crate) fn check_blocks(
        &self,
        links_anywhere: bool,
    ) -> Result<[u32; MAX_ORDERS], Corruption> {
        let geo = self.geometry();
        let (arena, meta, _) = self.parts();
        let at = |kind, idx: u32| Corruption {
            kind,
            pfn: geo.pfn(idx),
        };
        let mut heads = [0u32; MAX_ORDERS];
        let mut idx = 0u32;
        while idx < geo.nr_pages {
            let m = meta[idx as usize];
            if m.order == NO_ORDER {
                return Err(at(K::Orphan, idx));
            }
            // A page that is not the pool's (never admitted, or reclaimed) is nobody's: no
            // refcount, in no block, on no list (lists hold free heads only).
            if m.order == ABSENT {
                if m != PageMeta::new(0, ABSENT) {
                    return Err(at(K::BadHead, idx));
                }
                idx += 1;
                continue;
            }
            let order = u32::from(m.order);
            let size = 1u32 << order.min(31);
            let aligned = geo.pfn(idx).trailing_zeros() >= order;
            // A block lies wholly inside the initial range or wholly past it (admit refuses a
            // block that crosses its end, and external blocks never merge).
            let end = if idx < geo.range_pages {
                geo.range_pages
            } else {
                geo.nr_pages
            };
            if order >= geo.max_order || !aligned || size > end - idx {
                return Err(at(K::BadHead, idx));
            }
            if let Some(t) = (idx + 1..idx + size).find(|&t| meta[t as usize] != PageMeta::INIT) {
                return Err(at(K::BadTail, t));
            }
            if m.refcount == 0 {
                heads[order as usize] += 1;
                // External blocks (past the initial range) never merge; nor does a block inside
                // it with a buddy past it (mainline's `__find_buddy_avail`).
                if order + 1 < geo.max_order && idx < geo.range_pages {
                    let buddy = self.range_index(geo.pfn(idx) ^ (1 << order));
                    if buddy.is_some_and(|b| {
                        let bm = meta[b as usize];
                        bm.is_free_head() && u32::from(bm.order) == order
                    }) {
                        return Err(at(K::Uncoalesced, idx));
                    }
                }
                // Pages never handed out in a prezeroed arena read as zeros unread.
                let written = (idx + size).min(self.touched).saturating_sub(idx);
                if geo.zero == ZeroPolicy::OnFree && written > 0 {
                    let skip = L::IN_PAGE_BYTES;
                    let off = idx as usize * geo.page_size;
                    let zero = if links_anywhere && skip > 0 {
                        (0..written as usize).all(|p| {
                            arena.is_zero(off + p * geo.page_size + skip, geo.page_size - skip)
                        })
                    } else {
                        arena.is_zero(off + skip, written as usize * geo.page_size - skip)
                    };
                    if !zero {
                        return Err(at(K::NotZero, idx));
                    }
                }
            }
            idx += size;
        }
        Ok(heads)
    }
}
