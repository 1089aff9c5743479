//! Exact-size runs: a contiguous run of any number of pages, as Linux's `alloc_pages_exact` and
//! pKVM's `guest_s2_zalloc_pages_exact` build it from `hyp_split_page`.
//!
//! [`Pool::alloc_exact`] adds no policy of its own: it is [`alloc`](Pool::alloc) of the smallest
//! block that holds the run, [`split`](Pool::split) of that block into held order-0 pages, and
//! [`put`](Pool::put) of each page past the run, in increasing pfn order (they coalesce as any
//! put does).

use crate::error::Error;
use crate::store::LinkStore;
use crate::Pool;

/// The order of the smallest block that holds `nr_pages >= 1` pages: `ceil(log2(nr_pages))`.
pub(crate) fn run_order(nr_pages: u64) -> u32 {
    u64::BITS - (nr_pages - 1).leading_zeros()
}

impl<L: LinkStore> Pool<'_, L> {
    /// The largest run [`alloc_exact`](Self::alloc_exact) accepts: the pages of the largest
    /// block, `2^(max_order - 1)`.
    pub fn max_run(&self) -> u64 {
        1 << (self.geo.max_order - 1)
    }

    /// Allocates a contiguous run of exactly `nr_pages` pages and returns the pfn of its first
    /// page. Each page of the run is then held once (order 0) and is put on its own.
    ///
    /// The smallest block that holds the run is allocated as [`alloc`](Self::alloc) would, split
    /// into order-0 pages ([`split`](Self::split)), and the pages past the run are put back
    /// one by one in increasing pfn order, coalescing as they go. Errors change nothing:
    /// [`Error::InvalidRun`] unless `1 <= nr_pages <=` [`max_run`](Self::max_run),
    /// [`Error::OutOfMemory`] when no block of that order is free. The free lists the pages put
    /// back join are checked before the block is taken, so only a pool corrupted elsewhere
    /// ([`Error::Corrupted`]) can stop it part way.
    ///
    /// ```
    /// use pagebuddy::{Config, Error, Link, PageMeta, Pool, SideTable};
    /// let (mut arena, mut meta, mut links) = ([0u8; 8 * 64], [PageMeta::INIT; 8], [Link::EMPTY; 8]);
    /// let config = Config::new(8).page_size(64);
    /// let mut pool = Pool::new(&mut arena[..], &mut meta, SideTable::new(&mut links), config)?;
    /// let pfn = pool.alloc_exact(3)?; // from the order-3 block: pages 0, 1, 2
    /// assert_eq!(pfn, 0);
    /// assert_eq!(pool.free_pages(), 5);
    /// assert_eq!(pool.buddyinfo(), &[1, 0, 1, 0]); // page 3 put back; pages 4-7 left by the split
    /// for p in pfn..pfn + 3 {
    ///     assert_eq!(pool.refcount(p)?, 1);
    /// }
    /// assert_eq!(pool.alloc_exact(9), Err(Error::InvalidRun { nr_pages: 9, max_pages: 8 }));
    /// pool.put(1)?;
    /// pool.check()?;
    ///
    /// // A pool that ends at the last pfn: the run's block ends there too.
    /// let (mut meta, mut links) = ([PageMeta::INIT; 4], [Link::EMPTY; 4]);
    /// let config = Config::new(4).base_pfn(u64::MAX - 3).zero(pagebuddy::ZeroPolicy::Never);
    /// let mut pool = Pool::without_arena(&mut meta, SideTable::new(&mut links), config)?;
    /// assert_eq!(pool.alloc_exact(3)?, u64::MAX - 3);
    /// assert_eq!(pool.free_list(0).collect::<Vec<_>>(), [u64::MAX]);
    /// # Ok::<(), Error>(())
    /// ```
    pub fn alloc_exact(&mut self, nr_pages: u64) -> Result<u64, Error> {
        let max_pages = self.max_run();
        if nr_pages == 0 || nr_pages > max_pages {
            return Err(Error::InvalidRun {
                nr_pages,
                max_pages,
            });
        }
        let order = run_order(nr_pages);
        for k in 0..order {
            self.free.check_append(&self.arena, k)?;
        }
        let pfn = self.alloc(order)?;
        self.split(pfn)?;
        // By page index, not pfn: a pool may end at pfn u64::MAX, where `pfn + 2^order` of its
        // last block would overflow. The block lies inside the pool, so the indices fit.
        let head = (pfn - self.geo.base_pfn) as u32;
        for idx in head + nr_pages as u32..head + (1 << order) {
            self.put(self.geo.pfn(idx))?;
        }
        Ok(pfn)
    }
}

#[cfg(test)]
mod tests {
    use super::run_order;

    #[test]
    fn run_order_is_the_smallest_block_that_holds_the_run() {
        for n in 1u64..=1 << 12 {
            let k = run_order(n);
            assert!(
                n <= 1 << k && (k == 0 || n > 1 << (k - 1)),
                "{n} pages: order {k}"
            );
        }
    }
}
