//! The allocation policy: pKVM's `hyp_pool`, with every misuse turned into an [`Error`].
//!
//! Invariants relied on throughout (and verified by [`Pool::check`]):
//! - every page is exactly one of: the head of a free block (refcount 0, order set, on the list of
//!   its order), the head of a held block (refcount > 0, order set), or a tail page of either
//!   (refcount 0, [`NO_ORDER`]);
//! - a block of order k starts at a pfn divisible by 2^k and lies inside the pool;
//! - no two free buddies of the same order `k + 1 < max_order` coexist: they would have coalesced.

use core::ptr::NonNull;

use crate::arena::Arena;
use crate::config::{Config, Geometry, ZeroPolicy};
use crate::error::{Corruption, CorruptionKind, Error, GeometryError};
use crate::store::{
    meta_from_bytes, FreeLists, Intrusive, LinkStore, PageMeta, SideTable, NO_ORDER,
};

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
    arena: Arena<'a>,
    meta: &'a mut [PageMeta],
    pub(crate) free: FreeLists<L>,
    geo: Geometry,
    free_pages: u32,
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
        let n = geo.nr_pages as usize;
        let need = geo.arena_bytes();
        if arena.len() < need {
            return Err(GeometryError::ArenaTooSmall {
                need,
                have: arena.len(),
            }
            .into());
        }
        if meta.len() < n {
            let have = core::mem::size_of_val(meta);
            return Err(GeometryError::MetadataTooSmall {
                need: crate::meta_bytes(n),
                have,
            }
            .into());
        }
        links.fits(geo.nr_pages)?;
        let free = FreeLists::new(links, geo.nr_pages, geo.base_pfn, geo.page_size);
        let mut pool = Pool {
            arena,
            meta,
            free,
            geo,
            free_pages: 0,
        };
        pool.populate(config.prezeroed)?;
        Ok(pool)
    }

    /// Lays out the initial state: reserved pages held, the rest as the largest aligned blocks
    /// that fit, each appended to its list in increasing pfn order. Sequential puts produce the
    /// same: a page merges upward exactly while its block stays aligned, inside the free range
    /// and below `max_order`, and each block is listed when its last page is put.
    fn populate(&mut self, prezeroed: bool) -> Result<(), Corruption> {
        let (n, reserved) = (self.geo.nr_pages, self.geo.reserved_pages);
        for m in &mut self.meta[..n as usize] {
            *m = PageMeta::INIT;
        }
        for m in &mut self.meta[..reserved as usize] {
            *m = PageMeta::new(1, 0);
        }
        if self.geo.zero == ZeroPolicy::OnFree && !prezeroed {
            let ps = self.geo.page_size;
            self.arena
                .zero(reserved as usize * ps, (n - reserved) as usize * ps);
        }
        let mut idx = reserved;
        while idx < n {
            let order = self.largest_block(idx);
            self.meta[idx as usize] = PageMeta::new(0, order as u8);
            self.free.append(&mut self.arena, idx, order)?;
            self.free_pages += 1 << order;
            idx += 1 << order;
        }
        Ok(())
    }

    /// Order of the largest block that starts at `idx`, is aligned and fits before the end.
    fn largest_block(&self, idx: u32) -> u32 {
        let align = self.geo.pfn(idx).trailing_zeros();
        let room = (self.geo.nr_pages - idx).ilog2();
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

    /// Free pages, in all blocks.
    pub fn free_pages(&self) -> u32 {
        self.free_pages
    }

    fn index(&self, pfn: u64) -> Result<u32, Error> {
        self.geo.index(pfn).ok_or(Error::PfnOutOfRange { pfn })
    }

    fn corrupt(&self, kind: CorruptionKind, idx: u32) -> Error {
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

    fn zero_block(&mut self, idx: u32, order: u32) {
        let (off, len) = self.block_bytes(idx, order);
        self.arena.zero(off, len);
    }

    /// pKVM's `__find_buddy_avail`: the buddy of the block of `order` at `idx`, if it is in the
    /// pool and is a free block of the same order.
    fn buddy_avail(&self, idx: u32, order: u32) -> Option<u32> {
        let buddy = self.geo.index(self.geo.pfn(idx) ^ (1 << order))?;
        let m = self.meta[buddy as usize];
        (m.is_free_head() && m.order as u32 == order).then_some(buddy)
    }

    /// Allocates a block of `2^order` pages and returns the pfn of its head.
    ///
    /// Takes the head of the first non-empty list at or above `order` and splits it down,
    /// appending each upper half to the tail of its order's list. The head gets refcount 1; its
    /// other pages are tails.
    pub fn alloc(&mut self, order: u32) -> Result<u64, Error> {
        let max_order = self.geo.max_order;
        if order >= max_order {
            return Err(Error::InvalidOrder { order, max_order });
        }
        let avail = self.free.mask >> order;
        if avail == 0 {
            return Err(Error::OutOfMemory { order });
        }
        let found = order + avail.trailing_zeros();
        let idx = self
            .free
            .first(found)
            .ok_or(self.corrupt(CorruptionKind::Count, 0))?;
        // pKVM's hyp_page_ref_init, as the review asked: the head must still be free, checked
        // in the same critical section that hands it out.
        let m = self.meta[idx as usize];
        if !(m.is_free_head() && m.order as u32 == found) {
            return Err(self.corrupt(CorruptionKind::NotFreeHead, idx));
        }
        self.free.remove(&mut self.arena, idx, found)?;
        self.extract(idx, found, order)?;
        self.meta[idx as usize] = PageMeta::new(1, order as u8);
        self.free_pages -= 1 << order;
        if self.geo.zero == ZeroPolicy::OnAlloc {
            self.zero_block(idx, order);
        }
        Ok(self.geo.pfn(idx))
    }

    /// pKVM's `__hyp_extract_page`: splits the unlisted free block of `order` at `idx` down to
    /// `target`, listing each upper half. The block is aligned to `2^order`, so the upper half
    /// of order k is simply `idx + 2^k` and lies inside the block.
    fn extract(&mut self, idx: u32, mut order: u32, target: u32) -> Result<(), Corruption> {
        while order > target {
            order -= 1;
            let buddy = idx + (1 << order);
            self.meta[buddy as usize] = PageMeta::new(0, order as u8);
            self.free.append(&mut self.arena, buddy, order)?;
        }
        Ok(())
    }

    /// Drops one reference to `pfn`; at zero its block is freed and coalesced.
    pub fn put(&mut self, pfn: u64) -> Result<(), Error> {
        let idx = self.index(pfn)?;
        let m = self.meta[idx as usize];
        if m.refcount == 0 {
            return Err(Error::NotHeld { pfn });
        }
        if m.refcount > 1 {
            self.meta[idx as usize].refcount -= 1;
            return Ok(());
        }
        // A held page always heads a block of a valid order.
        if m.order as u32 >= self.geo.max_order {
            return Err(self.corrupt(CorruptionKind::BadHead, idx));
        }
        self.meta[idx as usize].refcount = 0;
        self.attach(idx, m.order as u32)?;
        Ok(())
    }

    /// pKVM's `__hyp_attach_page`: zeroes the block per the policy, merges it with free buddies
    /// of equal order while the order stays below `max_order`, and lists the result.
    fn attach(&mut self, idx: u32, order: u32) -> Result<(), Corruption> {
        if self.geo.zero == ZeroPolicy::OnFree {
            self.zero_block(idx, order);
        }
        self.free_pages += 1 << order;
        // After merging, `idx` may no longer be the head: unmark it now.
        self.meta[idx as usize].order = NO_ORDER;
        let (mut head, mut order) = (idx, order);
        while order + 1 < self.geo.max_order {
            let Some(buddy) = self.buddy_avail(head, order) else {
                break;
            };
            self.free.remove(&mut self.arena, buddy, order)?;
            self.meta[buddy as usize].order = NO_ORDER;
            head = head.min(buddy);
            order += 1;
        }
        self.meta[head as usize].order = order as u8;
        self.free.append(&mut self.arena, head, order)
    }

    /// Takes one more reference to a held page.
    pub fn get(&mut self, pfn: u64) -> Result<(), Error> {
        let idx = self.index(pfn)?;
        let m = &mut self.meta[idx as usize];
        match m.refcount {
            0 => Err(Error::NotHeld { pfn }),
            u16::MAX => Err(Error::RefcountOverflow { pfn }),
            _ => {
                m.refcount += 1;
                Ok(())
            }
        }
    }

    /// Splits the held block headed by `pfn` into `2^order` order-0 pages: each former tail gets
    /// refcount 1 and the head keeps its refcount. Each page is then put on its own.
    pub fn split(&mut self, pfn: u64) -> Result<(), Error> {
        let idx = self.index(pfn)?;
        let m = self.meta[idx as usize];
        if m.refcount == 0 {
            return Err(Error::NotHeld { pfn });
        }
        if m.order as u32 >= self.geo.max_order {
            return Err(self.corrupt(CorruptionKind::BadHead, idx));
        }
        let end = idx as usize + (1usize << m.order);
        for tail in &mut self.meta[idx as usize + 1..end] {
            *tail = PageMeta::new(1, 0);
        }
        self.meta[idx as usize].order = 0;
        Ok(())
    }

    /// The metadata of `pfn`.
    pub fn page(&self, pfn: u64) -> Result<PageMeta, Error> {
        Ok(self.meta[self.index(pfn)? as usize])
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
    pub fn page_addr(&self, pfn: u64) -> Result<NonNull<u8>, Error> {
        let off = self.index(pfn)? as usize * self.geo.page_size;
        // `off` is below nr_pages * page_size <= arena length, so the pointer stays in bounds.
        NonNull::new(self.arena.as_ptr().wrapping_add(off)).ok_or(Error::PfnOutOfRange { pfn })
    }

    /// The pfn of the page holding `addr` (pKVM's `hyp_virt_to_pfn`), if it is in the pool.
    pub fn addr_pfn(&self, addr: *const u8) -> Option<u64> {
        let off = (addr as usize).wrapping_sub(self.arena.as_ptr() as usize);
        (off < self.geo.arena_bytes()).then(|| self.geo.pfn((off / self.geo.page_size) as u32))
    }

    /// Free blocks per order `0..max_order`, like a line of `/proc/buddyinfo`.
    pub fn buddyinfo(&self) -> &[u32] {
        &self.free.len[..self.geo.max_order as usize]
    }

    /// How many blocks of `order` could be allocated one after another right now.
    pub fn capacity(&self, order: u32) -> u64 {
        let orders = order.min(self.geo.max_order)..self.geo.max_order;
        orders
            .map(|k| u64::from(self.free.len[k as usize]) << (k - order))
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

    pub(crate) fn parts(&self) -> (&Arena<'a>, &[PageMeta], &FreeLists<L>) {
        (&self.arena, self.meta, &self.free)
    }

    #[cfg(test)]
    pub(crate) fn parts_mut(&mut self) -> (&mut Arena<'a>, &mut [PageMeta]) {
        (&mut self.arena, self.meta)
    }

    #[cfg(test)]
    pub(crate) fn free_pages_mut(&mut self) -> &mut u32 {
        &mut self.free_pages
    }
}

/// Bytes that [`Pool::new_intrusive_in`] or [`Pool::new_side_table_in`] set aside at the front
/// of the arena for `nr_pages` pages: metadata (and links), rounded up to a whole page.
pub const fn carve_bytes(nr_pages: usize, page_size: usize, side_table: bool) -> usize {
    let links = if side_table {
        crate::link_bytes(nr_pages)
    } else {
        0
    };
    let front = crate::meta_bytes(nr_pages).saturating_add(links);
    match front.checked_next_multiple_of(if page_size == 0 { 1 } else { page_size }) {
        Some(n) => n,
        None => usize::MAX,
    }
}

/// Splits `bytes` into the front `carve_bytes` and the pages, or says how much was missing.
fn carve<'a>(
    bytes: &'a mut [u8],
    config: &Config,
    side_table: bool,
) -> Result<(&'a mut [u8], &'a mut [u8]), Error> {
    let geo = config.geometry()?;
    let front = carve_bytes(config.nr_pages, config.page_size, side_table);
    let need = front.saturating_add(geo.arena_bytes());
    if bytes.len() < need {
        return Err(GeometryError::ArenaTooSmall {
            need,
            have: bytes.len(),
        }
        .into());
    }
    Ok(bytes.split_at_mut(front))
}

impl<'a> Pool<'a, Intrusive> {
    /// A pool whose metadata is carved from the front of `bytes`
    /// ([`carve_bytes`]`(nr_pages, page_size, false)` bytes) and whose pages follow it; free-list
    /// links live in the free pages. `bytes` must be 2-byte aligned.
    ///
    /// ```
    /// use pagebuddy::{carve_bytes, Config, Pool};
    /// let config = Config::new(16).page_size(256);
    /// let mut bytes = vec![0u8; carve_bytes(16, 256, false) + 16 * 256];
    /// let mut pool = Pool::new_intrusive_in(&mut bytes, config)?;
    /// let pfn = pool.alloc(4)?;
    /// assert_eq!((pfn, pool.free_pages()), (0, 0));
    /// # Ok::<(), pagebuddy::Error>(())
    /// ```
    pub fn new_intrusive_in(bytes: &'a mut [u8], config: Config) -> Result<Self, Error> {
        let (front, pages) = carve(bytes, &config, false)?;
        let meta = meta_from_bytes(front, config.nr_pages)?;
        Pool::new(pages, meta, Intrusive, config)
    }
}

impl<'a> Pool<'a, SideTable<'a>> {
    /// A pool whose metadata and link table are carved from the front of `bytes`
    /// ([`carve_bytes`]`(nr_pages, page_size, true)` bytes) and whose pages follow it. `bytes`
    /// must be 4-byte aligned.
    ///
    /// ```
    /// use pagebuddy::{carve_bytes, Config, Pool};
    ///
    /// #[repr(C, align(64))]
    /// struct Memory([u8; 64 + 3 * 64]);
    /// assert_eq!(carve_bytes(3, 64, true), 64); // 3 * (4 + 8) bytes, rounded up to a page
    ///
    /// let mut memory = Memory([0; 64 + 3 * 64]);
    /// let pool = Pool::new_side_table_in(&mut memory.0, Config::new(3).page_size(64))?;
    /// assert_eq!(pool.buddyinfo(), &[1, 1]); // pages {2} and {0, 1}
    /// # Ok::<(), pagebuddy::Error>(())
    /// ```
    pub fn new_side_table_in(bytes: &'a mut [u8], config: Config) -> Result<Self, Error> {
        let (front, pages) = carve(bytes, &config, true)?;
        let (meta, links) = front.split_at_mut(crate::meta_bytes(config.nr_pages));
        let meta = meta_from_bytes(meta, config.nr_pages)?;
        let links = SideTable::from_bytes(links, config.nr_pages)?;
        Pool::new(pages, meta, links, config)
    }
}

impl<'a> From<&'a mut [u8]> for Arena<'a> {
    fn from(bytes: &'a mut [u8]) -> Self {
        Arena::new(bytes)
    }
}
