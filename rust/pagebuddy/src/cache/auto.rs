//! Caches that size themselves: each slot's `high` and `batch` follow its own traffic, in the
//! spirit of Linux 6.7's `pcp->high` auto-tuning and `CONFIG_PCP_BATCH_SCALE_MAX`.
//!
//! A [`CacheConfig`](super::CacheConfig) whose `high_max` is above its `high` sizes each slot by
//! itself (what [`CacheConfig::new`](super::CacheConfig::new) gives); one with `high_max ==
//! high` keeps the fixed `batch` and `high` (what [`batch`](super::CacheConfig::batch) and
//! [`high`](super::CacheConfig::high) give). The decision depends only on the slot's own history,
//! counted in operations, never in time, so that it replays exactly:
//!
//! - every free into the slot's cache counts one operation (frees only, so that the hit of an
//!   allocation does no more than before); a *trip* is a refill or a drain of a batch, the only
//!   calls that take the pool's lock;
//! - **grow**: a refill that follows a drain (or a drain that follows a refill) within
//!   `2 * high` operations means the slot swings between allocating and freeing more than it
//!   keeps: `high` doubles, up to `high_max`;
//! - **shrink**: two trips of the same kind more than `8 * high` operations apart mean the slot
//!   idles: `high` halves, down to the configured `high`;
//! - **reset**: a refill the pool cannot fill (it runs low), and any drain of the whole slot
//!   ([`CachedPool::drain`](super::CachedPool::drain), or before
//!   [`Error::OutOfMemory`](crate::Error::OutOfMemory)), put the slot back at the configured sizes;
//! - `batch` follows `high`: `high / 4`, at least the configured `batch` and at most 32 times it
//!   (Linux's default `CONFIG_PCP_BATCH_SCALE_MAX` of 5).
//!
//! **Bound**: the caches of an auto-sized pool together never hold more than `nr_pages /
//! fraction` pages (default fraction 8, Linux's smallest `percpu_pagelist_high_fraction`): each
//! slot keeps at most its share, `nr_pages / fraction / cpus` pages, refilling no more and
//! draining a batch whenever a free would take it past. Fixed sizes have no such bound.
//!
//! ```
//! use pagebuddy::{
//!     cache_blocks, CacheConfig, CacheSlot, CachedPool, Config, Intrusive, LockedPool, PageMeta,
//!     PageRef, Pool,
//! };
//!
//! const PAGES: usize = 4096;
//! let (mut arena, mut meta) = (vec![0u8; PAGES * 64], vec![PageMeta::INIT; PAGES]);
//! let pool = Pool::new(&mut arena[..], &mut meta, Intrusive, Config::new(PAGES).page_size(64))?;
//! let config = CacheConfig::new().orders(1); // auto: batch 16, high 64, up to high 2048
//! let mut slots: [CacheSlot; 1] = core::array::from_fn(|_| CacheSlot::new());
//! let mut blocks = vec![0u32; cache_blocks(1, &config)];
//! let mut refs: Vec<PageRef> = (0..PAGES).map(|_| PageRef::new()).collect();
//! let pool = CachedPool::new(LockedPool::new(pool), &mut slots, &mut blocks, &mut refs, config)?;
//! assert_eq!(pool.cache_sizes(0).map(|s| (s.high, s.batch)), Some((64, 16)));
//!
//! // Bursts of 200 pages, allocated then freed: the slot grows until a burst fits.
//! for _ in 0..8 {
//!     let pfns: Vec<u64> = (0..200).map(|_| pool.alloc(0, 0)).collect::<Result<_, _>>()?;
//!     for pfn in pfns {
//!         pool.put(0, pfn)?;
//!     }
//! }
//! let sizes = pool.cache_sizes(0).unwrap();
//! assert!(sizes.high >= 256 && sizes.batch >= 64, "{sizes:?}");
//! assert!(pool.cached_pages(0) <= PAGES as u32 / 8); // the bound
//! pool.drain(0)?; // back to the configured sizes
//! assert_eq!(pool.cache_sizes(0).map(|s| (s.high, s.batch)), Some((64, 16)));
//! # Ok::<(), pagebuddy::Error>(())
//! ```

/// Largest factor by which an auto-sized slot scales its `batch` (Linux's default
/// `CONFIG_PCP_BATCH_SCALE_MAX` is 5: `batch << 5`).
const BATCH_SCALE_MAX: u32 = 5;

/// A slot's sizes at the moment they were read: see [`CachedPool::cache_sizes`](super::CachedPool::cache_sizes).
///
/// ```
/// use pagebuddy::SlotSizes;
/// let s = SlotSizes { high: 64, batch: 16 };
/// assert_eq!((s.high, s.batch), (64, 16));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotSizes {
    /// Blocks of each cached order the slot keeps before a free drains a batch.
    pub high: u32,
    /// Blocks a refill takes, and a drain gives back.
    pub batch: u32,
}

/// What the pool's configuration allows a slot: the configured sizes, the largest `high`, and
/// the slot's share of the bound in pages (`u32::MAX`: none, for fixed sizes).
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    pub batch: u32,
    pub high: u32,
    pub high_max: u32,
    /// Pages one slot may hold.
    pub budget: u32,
}

impl Limits {
    fn auto(&self) -> bool {
        self.high_max > self.high
    }

    /// The batch that goes with `high`.
    fn batch_for(&self, high: u32) -> u32 {
        let most = self.batch.saturating_mul(1 << BATCH_SCALE_MAX);
        (high / 4).clamp(self.batch, most.max(self.batch)).min(high)
    }
}

/// The kind of a slot's last trip to the pool's lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Trip {
    None,
    Refill,
    Drain,
}

/// One slot's sizes and the history they are decided from. Lives beside the stack lengths and
/// is reached only by whoever owns the stacks (the slot's lock, or its `LocalCache`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Sizing {
    pub high: u32,
    pub batch: u32,
    /// Frees into the cache, wrapping.
    ops: u32,
    /// `ops` at the last trip.
    mark: u32,
    last: Trip,
}

impl Sizing {
    /// Before `CachedPool::new` sets the configured sizes.
    pub const EMPTY: Sizing = Sizing {
        high: 0,
        batch: 0,
        ops: 0,
        mark: 0,
        last: Trip::None,
    };

    /// The configured sizes, no history.
    pub fn new(limits: &Limits) -> Sizing {
        Sizing {
            high: limits.high,
            batch: limits.batch,
            ..Sizing::EMPTY
        }
    }

    /// Counts one free into the cache.
    #[inline(always)]
    pub fn tick(&mut self) {
        self.ops = self.ops.wrapping_add(1);
    }

    /// Back to the configured sizes (the pool runs low, or the slot was drained whole).
    pub fn reset(&mut self, limits: &Limits) {
        self.high = limits.high;
        self.batch = limits.batch;
        self.last = Trip::None;
        self.mark = self.ops;
    }

    /// Records a trip to the pool's lock and resizes as the module documentation says.
    pub fn trip(&mut self, kind: Trip, limits: &Limits) {
        if !limits.auto() {
            return;
        }
        let since = self.ops.wrapping_sub(self.mark);
        if self.last != Trip::None && self.last != kind && since <= self.high.saturating_mul(2) {
            self.high = self.high.saturating_mul(2).min(limits.high_max);
        } else if self.last == kind && since > self.high.saturating_mul(8) {
            self.high = (self.high / 2).max(limits.high);
        }
        self.batch = limits.batch_for(self.high);
        self.last = kind;
        self.mark = self.ops;
    }

    pub fn sizes(&self) -> SlotSizes {
        SlotSizes {
            high: self.high,
            batch: self.batch,
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    const AUTO: Limits = Limits {
        batch: 16,
        high: 64,
        high_max: 2048,
        budget: u32::MAX,
    };

    fn run(s: &mut Sizing, ops: u32, kind: Trip) {
        for _ in 0..ops {
            s.tick();
        }
        s.trip(kind, &AUTO);
    }

    #[test]
    fn alternating_trips_grow_and_far_ones_shrink() {
        let mut s = Sizing::new(&AUTO);
        run(&mut s, 10, Trip::Refill);
        assert_eq!(
            s.sizes(),
            SlotSizes {
                high: 64,
                batch: 16
            }
        );
        run(&mut s, 100, Trip::Drain);
        assert_eq!(
            s.sizes(),
            SlotSizes {
                high: 128,
                batch: 32
            }
        );
        for _ in 0..10 {
            run(&mut s, 1, Trip::Refill);
            run(&mut s, 1, Trip::Drain);
        }
        assert_eq!(
            s.sizes(),
            SlotSizes {
                high: 2048,
                batch: 512
            }
        );
        // Same kind, close together: no change.
        run(&mut s, 500, Trip::Drain);
        assert_eq!(s.high, 2048);
        // Same kind, far apart: halves, down to the configured high.
        run(&mut s, 2048 * 8 + 1, Trip::Drain);
        assert_eq!(
            s.sizes(),
            SlotSizes {
                high: 1024,
                batch: 256
            }
        );
        for _ in 0..10 {
            run(&mut s, 1 << 20, Trip::Drain);
        }
        assert_eq!(
            s.sizes(),
            SlotSizes {
                high: 64,
                batch: 16
            }
        );
        // Alternation far apart: no growth.
        run(&mut s, 129, Trip::Refill);
        assert_eq!(s.high, 64);
        s.reset(&AUTO);
        assert_eq!(
            s.sizes(),
            SlotSizes {
                high: 64,
                batch: 16
            }
        );
    }

    #[test]
    fn fixed_sizes_never_move() {
        let fixed = Limits {
            high_max: 64,
            ..AUTO
        };
        let mut s = Sizing::new(&fixed);
        for _ in 0..10 {
            s.trip(Trip::Refill, &fixed);
            s.trip(Trip::Drain, &fixed);
        }
        assert_eq!(
            s.sizes(),
            SlotSizes {
                high: 64,
                batch: 16
            }
        );
    }

    #[test]
    fn batch_scales_at_most_32_times() {
        let l = Limits {
            batch: 1,
            high: 1,
            high_max: 1 << 16,
            budget: u32::MAX,
        };
        assert_eq!(
            (l.batch_for(1), l.batch_for(8), l.batch_for(1 << 16)),
            (1, 2, 32)
        );
    }
}
