//! Read-only queries: per-page metadata, addresses, free lists and counts.

use core::ptr::NonNull;

use crate::error::Error;
use crate::store::{LinkStore, PageMeta, NO_ORDER};
use crate::Pool;

impl<L: LinkStore> Pool<'_, L> {
    /// The metadata of `pfn`; [`Error::NotCovered`] for a page that is not the pool's now
    /// (see [`Pool::admit`]).
    pub fn page(&self, pfn: u64) -> Result<PageMeta, Error> {
        let m = self.meta[self.index(pfn)? as usize];
        if m.is_absent() {
            return Err(Error::NotCovered { pfn });
        }
        Ok(m)
    }

    /// The refcount of `pfn` (0 for free pages and tails).
    pub fn refcount(&self, pfn: u64) -> Result<u16, Error> {
        Ok(self.page(pfn)?.refcount)
    }

    /// The order of the block `pfn` heads, or `None` for a tail page.
    pub fn order(&self, pfn: u64) -> Result<Option<u32>, Error> {
        let order = self.page(pfn)?.order;
        Ok((order != NO_ORDER).then_some(order as u32))
    }

    /// The address of page `pfn` in the arena (pKVM's `hyp_page_to_virt`).
    /// [`Error::NoArena`] for a pool [without an arena](Pool::without_arena).
    pub fn page_addr(&self, pfn: u64) -> Result<NonNull<u8>, Error> {
        let off = self.index(pfn)? as usize * self.geo.page_size;
        if !self.has_arena() {
            return Err(Error::NoArena);
        }
        // `off` is below nr_pages * page_size <= arena length, so the pointer stays in bounds.
        NonNull::new(self.arena.as_ptr().wrapping_add(off)).ok_or(Error::PfnOutOfRange { pfn })
    }

    /// The pfn of the page holding `addr` (pKVM's `hyp_virt_to_pfn`), if it is in the pool.
    pub fn addr_pfn(&self, addr: *const u8) -> Option<u64> {
        let off = (addr as usize).wrapping_sub(self.arena.as_ptr() as usize);
        // off < nr_pages * page_size, so the page index is below nr_pages.
        let inside =
            self.has_arena() && matches!(self.geo.arena_bytes(), Some(bytes) if off < bytes);
        inside.then(|| self.geo.pfn((off / self.geo.page_size) as u32))
    }

    /// Free blocks per order `0..max_order`, like a line of `/proc/buddyinfo`.
    pub fn buddyinfo(&self) -> &[u32] {
        &self.free.ends().len[..self.geo.max_order as usize]
    }

    /// How many blocks of `order` could be allocated one after another right now.
    pub fn capacity(&self, order: u32) -> u64 {
        let orders = order.min(self.geo.max_order)..self.geo.max_order;
        orders
            .map(|k| u64::from(self.free.ends().len[k as usize]) << (k - order))
            .sum()
    }

    /// The free list of `order`, head first, as pfns. On a corrupt list the walk stops early;
    /// [`check`](Self::check) says why.
    pub fn free_list(&self, order: u32) -> impl Iterator<Item = u64> + '_ {
        let order = if order < self.geo.max_order {
            order
        } else {
            u32::MAX
        };
        self.free
            .iter(&self.arena, order)
            .map_while(Result::ok)
            .map(|(i, _)| self.geo.pfn(i))
    }
}
