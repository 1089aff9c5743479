//! The caller's memory: the only place where the allocator touches raw bytes, or none at all.
//!
//! A pool [without an arena](Pool::without_arena) manages page numbers only (blocks of GPU or
//! device memory, of a file, the block ids of a paged cache): its [`Arena::none`] has no bytes,
//! so every read and write the pool would make into pages finds nothing to touch.

use core::marker::PhantomData;
use core::ptr::NonNull;

use crate::config::{Config, ZeroPolicy};
use crate::error::{Error, GeometryError};
use crate::store::{PageMeta, SideTable};
use crate::zeroing::{zero_bytes, zero_cold_bytes};
use crate::Pool;

/// The bytes a pool manages: page `i` is `page_size` bytes at offset `i * page_size`.
///
/// An `Arena` is a raw view so that the caller may keep writing into allocated pages (through
/// pointers of its own) while the pool is alive; the pool itself only writes into pages that are
/// free or being handed out, and only within `len` bytes.
pub struct Arena<'a> {
    ptr: NonNull<u8>,
    len: usize,
    /// The offsets with 8 bytes of the arena from them are those below this: `len - 7`, or 0
    /// when `len < 8`. Kept so that an in-page link's bounds check is one comparison.
    word_end: usize,
    _memory: PhantomData<&'a mut [u8]>,
}

impl<'a> Arena<'a> {
    /// The arena over a mutable slice, borrowed for the pool's life.
    pub fn new(bytes: &'a mut [u8]) -> Self {
        Arena {
            ptr: NonNull::from(&mut *bytes).cast(),
            len: bytes.len(),
            word_end: bytes.len().saturating_sub(7),
            _memory: PhantomData,
        }
    }

    /// The arena over `len` bytes at `ptr`.
    ///
    /// # Safety
    /// `ptr` must be valid for reads and writes of `len` bytes for all of `'a`, and nothing else may
    /// access bytes of pages that are free in the pool while the pool is alive (the caller's own
    /// writes into pages it holds are fine).
    pub unsafe fn from_raw(ptr: NonNull<u8>, len: usize) -> Self {
        Arena {
            ptr,
            len,
            word_end: len.saturating_sub(7),
            _memory: PhantomData,
        }
    }

    /// No bytes at all: the arena of a pool [without one](Pool::without_arena). Every range
    /// lies outside it, so zeroing and in-page links never touch memory.
    ///
    /// ```
    /// let none = pagebuddy::Arena::none();
    /// assert!(none.is_empty());
    /// ```
    pub const fn none() -> Self {
        Arena {
            ptr: NonNull::dangling(),
            len: 0,
            word_end: 0,
            _memory: PhantomData,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the arena has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Pointer to the first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The range `[off, off + n)` if it lies inside the arena.
    #[inline]
    fn range(&self, off: usize, n: usize) -> Option<*mut u8> {
        let end = off.checked_add(n)?;
        if end > self.len {
            return None;
        }
        // SAFETY: off + n <= len, so the offset stays inside (or one past) the allocation that
        // `ptr` is valid for (the contract of `new`/`from_raw`).
        Some(unsafe { self.ptr.as_ptr().add(off) })
    }

    /// Writes zeros over `[off, off + n)`; a range outside the arena is left alone.
    #[inline]
    pub(crate) fn zero(&mut self, off: usize, n: usize) {
        if let Some(p) = self.range(off, n) {
            // SAFETY: `range` proved [off, off + n) lies inside the arena, which is valid for
            // writes and, being free or being handed out, not accessed by anyone else.
            unsafe { zero_bytes(p, n) }
        }
    }

    /// Writes zeros over `[off, off + n)` of a block that was just freed and is not about to be
    /// used: large blocks bypass the caches ([`zero_cold_bytes`]). A range outside the arena is
    /// left alone.
    #[inline]
    pub(crate) fn zero_cold(&mut self, off: usize, n: usize) {
        if let Some(p) = self.range(off, n) {
            // SAFETY: as in `zero`.
            unsafe { zero_cold_bytes(p, n) }
        }
    }

    /// The raw view, for the per-CPU caches, which zero blocks they own outside the pool's lock.
    #[cfg_attr(not(target_has_atomic = "32"), allow(dead_code))]
    pub(crate) fn raw(&self) -> (NonNull<u8>, usize) {
        (self.ptr, self.len)
    }

    /// Whether `[off, off + n)` is all zeros (`false` outside the arena).
    pub(crate) fn is_zero(&self, off: usize, n: usize) -> bool {
        match self.range(off, n) {
            // SAFETY: the range lies inside the arena, valid for reads of n bytes; the pool holds
            // it exclusively for the duration of this `&self` borrow.
            Some(p) => unsafe { core::slice::from_raw_parts(p, n) }
                .iter()
                .all(|&b| b == 0),
            None => false,
        }
    }

    /// Hints that the line holding byte `off` will be read soon (nothing outside the arena).
    #[inline(always)]
    pub(crate) fn prefetch(&self, off: usize) {
        if let Some(p) = self.range(off, 1) {
            crate::prefetch::prefetch(p);
        }
    }

    /// Reads 8 bytes at `off` (unaligned); zeros outside the arena.
    #[cfg(test)]
    pub(crate) fn read8(&self, off: usize) -> [u8; 8] {
        self.read_u64(off).to_ne_bytes()
    }

    /// Writes 8 bytes at `off` (unaligned); a range outside the arena is left alone.
    #[cfg(test)]
    pub(crate) fn write8(&mut self, off: usize, bytes: [u8; 8]) {
        self.write_u64(off, u64::from_ne_bytes(bytes));
    }

    /// The 8 bytes at `off` (unaligned) as one native-endian `u64`, read with one load; 0
    /// outside the arena.
    #[inline]
    pub(crate) fn read_u64(&self, off: usize) -> u64 {
        if off < self.word_end {
            // SAFETY: off < len - 7, so the 8 bytes [off, off + 8) lie inside the allocation
            // that `ptr` is valid for (the contract of `new`/`from_raw`); read_unaligned has no
            // alignment need.
            unsafe { core::ptr::read_unaligned(self.ptr.as_ptr().add(off) as *const u64) }
        } else {
            0
        }
    }

    /// Writes zeros over the 16 bytes at `off` (unaligned) with one store; a range outside the
    /// arena is left alone.
    #[inline]
    pub(crate) fn zero16(&mut self, off: usize) {
        if let Some(p) = self.range(off, 16) {
            // SAFETY: `range` proved [off, off + 16) lies inside the arena, valid for writes;
            // write_unaligned has no alignment need.
            unsafe { core::ptr::write_unaligned(p as *mut u128, 0) }
        }
    }

    /// The 4 bytes at `off` (unaligned) as one native-endian `u32`; 0 outside the arena.
    #[inline]
    pub(crate) fn read_u32(&self, off: usize) -> u32 {
        match self.range(off, 4) {
            // SAFETY: `range` proved [off, off + 4) lies inside the arena; read_unaligned has
            // no alignment need.
            Some(p) => unsafe { core::ptr::read_unaligned(p as *const u32) },
            None => 0,
        }
    }

    /// Writes `value` (native-endian) over the 4 bytes at `off` (unaligned); a range outside
    /// the arena is left alone.
    #[inline]
    pub(crate) fn write_u32(&mut self, off: usize, value: u32) {
        if let Some(p) = self.range(off, 4) {
            // SAFETY: `range` proved [off, off + 4) lies inside the arena, valid for writes;
            // write_unaligned has no alignment need.
            unsafe { core::ptr::write_unaligned(p as *mut u32, value) }
        }
    }

    /// Writes `value` (native-endian) over the 8 bytes at `off` (unaligned) with one store; a
    /// range outside the arena is left alone.
    #[inline]
    pub(crate) fn write_u64(&mut self, off: usize, value: u64) {
        if off < self.word_end {
            // SAFETY: as in `read_u64`, [off, off + 8) lies inside the arena, valid for writes;
            // write_unaligned has no alignment need.
            unsafe { core::ptr::write_unaligned(self.ptr.as_ptr().add(off) as *mut u64, value) }
        }
    }
}

impl<'a> Pool<'a, SideTable<'a>> {
    /// Builds a pool of page numbers only, with no bytes behind them: one [`PageMeta`] per page
    /// in `meta` and links in a [`SideTable`] (12 bytes a page in all, so 2^30 pages take
    /// 12 GiB), and nothing else. `config.zero` must be [`ZeroPolicy::Never`]
    /// ([`GeometryError::ZeroWithoutArena`] otherwise); `page_size` is validated but names no
    /// bytes here. The policy is that of [`Pool::new`], step for step;
    /// [`page_addr`](Pool::page_addr) is [`Error::NoArena`].
    ///
    /// ```
    /// use pagebuddy::{Config, Error, Link, PageMeta, Pool, SideTable, ZeroPolicy};
    /// let (mut meta, mut links) = ([PageMeta::INIT; 8], [Link::EMPTY; 8]);
    /// let config = Config::new(8).zero(ZeroPolicy::Never);
    /// let mut pool = Pool::without_arena(&mut meta, SideTable::new(&mut links), config)?;
    /// assert_eq!(pool.alloc(1)?, 0);
    /// assert_eq!(pool.page_addr(0), Err(Error::NoArena));
    /// assert!(!pool.has_arena());
    /// # Ok::<(), Error>(())
    /// ```
    pub fn without_arena(
        meta: &'a mut [PageMeta],
        links: SideTable<'a>,
        config: Config,
    ) -> Result<Self, Error> {
        let geo = config.geometry()?;
        if geo.zero != ZeroPolicy::Never {
            return Err(GeometryError::ZeroWithoutArena.into());
        }
        // No bytes: nothing to zero at construction, nothing for `check` to read.
        Self::build(Arena::none(), meta, links, geo, true)
    }
}

impl<L: crate::LinkStore> Pool<'_, L> {
    /// Whether the pool has bytes behind its pages (false for [`Pool::without_arena`]).
    pub fn has_arena(&self) -> bool {
        !self.arena.is_empty()
    }
}

// SAFETY: an Arena is a unique borrow of its bytes (`new`) or carries the same promise by
// contract (`from_raw`); moving that borrow to another thread is as sound as moving `&mut [u8]`.
unsafe impl Send for Arena<'_> {}
