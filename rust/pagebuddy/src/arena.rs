//! The caller's memory: the only place where the allocator touches raw bytes.

use core::marker::PhantomData;
use core::ptr::NonNull;

/// The bytes a pool manages: page `i` is `page_size` bytes at offset `i * page_size`.
///
/// An `Arena` is a raw view so that the caller may keep writing into allocated pages (through
/// pointers of its own) while the pool is alive; the pool itself only writes into pages that are
/// free or being handed out, and only within `len` bytes.
pub struct Arena<'a> {
    ptr: NonNull<u8>,
    len: usize,
    _memory: PhantomData<&'a mut [u8]>,
}

impl<'a> Arena<'a> {
    /// The arena over a mutable slice, borrowed for the pool's life.
    pub fn new(bytes: &'a mut [u8]) -> Self {
        Arena {
            ptr: NonNull::from(&mut *bytes).cast(),
            len: bytes.len(),
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

    /// The raw view, for the per-CPU caches, which zero blocks they own outside the pool's lock.
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

    /// Reads 8 bytes at `off` (unaligned); zeros outside the arena.
    #[inline]
    pub(crate) fn read8(&self, off: usize) -> [u8; 8] {
        match self.range(off, 8) {
            // SAFETY: 8 bytes at `p` lie inside the arena; read_unaligned has no alignment need.
            Some(p) => unsafe { core::ptr::read_unaligned(p as *const [u8; 8]) },
            None => [0; 8],
        }
    }

    /// Writes 8 bytes at `off` (unaligned); a range outside the arena is left alone.
    #[inline]
    pub(crate) fn write8(&mut self, off: usize, bytes: [u8; 8]) {
        if let Some(p) = self.range(off, 8) {
            // SAFETY: 8 bytes at `p` lie inside the arena; write_unaligned has no alignment need.
            unsafe { core::ptr::write_unaligned(p as *mut [u8; 8], bytes) }
        }
    }
}

// SAFETY: an Arena is a unique borrow of its bytes (`new`) or carries the same promise by
// contract (`from_raw`); moving that borrow to another thread is as sound as moving `&mut [u8]`.
unsafe impl Send for Arena<'_> {}

/// Writes `n` zero bytes at `p`: the one place where pages are zeroed.
///
/// # Safety
/// `p` must be valid for writes of `n` bytes that no one else accesses meanwhile.
#[inline]
pub(crate) unsafe fn zero_bytes(p: *mut u8, n: usize) {
    // SAFETY: the caller's contract; u8 has no alignment requirement.
    unsafe { core::ptr::write_bytes(p, 0, n) }
}
