//! Memory for a pool's metadata, links and arena, mapped aligned to huge pages and advised for
//! them (feature `hugepages`).
//!
//! A pool's state is read at random: one page's [`PageMeta`], its buddy's and the links of the
//! blocks around it, anywhere in arrays of 4 and 8 bytes a page. Mapped with 4 KiB pages, a
//! 2^22-page pool's 48 MiB of state takes 12,288 translations, far more than the TLB holds, so
//! most reads pay a page walk on top of the cache miss; the kernel maps its own vmemmap with
//! huge pages for the same reason. [`MappedSlice`] maps an anonymous, private region whose start
//! is aligned to [`HUGE_PAGE`] and, when asked and the kernel offers transparent huge pages
//! (`/sys/kernel/mm/transparent_hugepage/enabled` set to `always` or `madvise`), advises it with
//! `madvise(MADV_HUGEPAGE)` before any byte is touched. Where the advice is refused (a kernel
//! without transparent huge pages, another Unix, a region smaller than one huge page) the
//! mapping stays as it is and nothing fails: [`MappedSlice::huge_advised`] tells which. On
//! targets without `mmap` the memory comes from the global allocator, zeroed.
//!
//! Nothing is written when the region is mapped: pages are committed as the pool touches them,
//! so a side table's links cost memory only where blocks are listed. The mapping is an ordinary
//! one (no `MAP_NORESERVE`): a size the kernel would never be able to commit is refused up
//! front, as the global allocator's would be.
//!
//! ```
//! use pagebuddy::mapped::{Advice, MappedSlice};
//! use pagebuddy::{Arena, Config, Intrusive, Link, PageMeta, Pool, SideTable, ZeroPolicy};
//!
//! // A pool of page numbers (no arena): metadata and side-table links, 12 bytes a page.
//! let n = 1 << 10;
//! let mut meta = MappedSlice::<PageMeta>::zeroed(n, Advice::HugePages).unwrap();
//! meta.fill(PageMeta::INIT);
//! let mut links = MappedSlice::<Link>::zeroed(n, Advice::HugePages).unwrap();
//! let config = Config::new(n).zero(ZeroPolicy::Never);
//! let mut pool = Pool::without_arena(&mut meta, SideTable::new(&mut links), config).unwrap();
//! let pfn = pool.alloc(3).unwrap();
//! pool.put(pfn).unwrap();
//! assert_eq!(pool.free_pages() as usize, n);
//!
//! // Intrusive links live in the arena's free pages: map the arena the same way.
//! let mut meta = MappedSlice::<PageMeta>::zeroed(n, Advice::HugePages).unwrap();
//! meta.fill(PageMeta::INIT);
//! let mut arena = MappedSlice::<u8>::zeroed(n * 4096, Advice::HugePages).unwrap();
//! let pool = Pool::new(Arena::new(&mut arena), &mut meta, Intrusive, Config::new(n)).unwrap();
//! assert_eq!(pool.free_pages() as usize, n);
//! ```

use core::fmt;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;

use crate::store::{Link, PageMeta};

/// Size of the huge pages the mappings are aligned to: 2 MiB, the x86-64 and arm64 (4 KiB
/// granule) PMD size.
///
/// ```
/// assert_eq!(pagebuddy::mapped::HUGE_PAGE, 2 << 20);
/// ```
pub const HUGE_PAGE: usize = 2 << 20;

/// What to ask the kernel about a new mapping.
///
/// ```
/// use pagebuddy::mapped::Advice;
/// assert_ne!(Advice::HugePages, Advice::Default);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Advice {
    /// Align the region to [`HUGE_PAGE`] and advise it with `MADV_HUGEPAGE` where the kernel
    /// offers transparent huge pages.
    HugePages,
    /// A plain page-aligned mapping, no advice: the kernel's default page size (unless its
    /// transparent huge pages are set to `always`).
    Default,
}

/// The region could not be mapped: the address space or the memory ran out (`ulimit -v`), or
/// the size overflows.
///
/// ```
/// use pagebuddy::mapped::{Advice, MappedSlice};
/// let err = MappedSlice::<u64>::zeroed(usize::MAX, Advice::Default).unwrap_err();
/// assert!(err.to_string().contains("cannot map"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapError {
    /// Elements asked for.
    pub len: usize,
    /// Bytes of one element.
    pub elem_bytes: usize,
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.len.checked_mul(self.elem_bytes) {
            Some(b) => write!(f, "cannot map {b} bytes ({} elements)", self.len),
            None => write!(
                f,
                "cannot map {} elements of {} bytes: the size overflows",
                self.len, self.elem_bytes
            ),
        }
    }
}

impl std::error::Error for MapError {}

mod sealed {
    pub trait Sealed {}
}

/// Types for which all-zero bytes are a valid value, so that a fresh mapping is a valid slice
/// of them before anything is written. Sealed: implemented for the pool's per-page types and
/// the unsigned integers.
///
/// ```
/// use pagebuddy::mapped::{Advice, MappedSlice, ZeroValid};
/// fn zeroed<T: ZeroValid>(n: usize) -> MappedSlice<T> {
///     MappedSlice::zeroed(n, Advice::Default).unwrap()
/// }
/// assert_eq!(zeroed::<pagebuddy::Link>(2)[1], pagebuddy::Link { prev: 0, next: 0 });
/// ```
///
/// # Safety
/// Every bit pattern of zeros must be a valid value of the type.
pub unsafe trait ZeroValid: sealed::Sealed + Sized {}

macro_rules! zero_valid {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        // SAFETY: plain integers, or `repr(C)` structs of them: zero is a valid value.
        unsafe impl ZeroValid for $t {}
    )*};
}
zero_valid!(u8, u16, u32, u64, usize, PageMeta, Link);

/// `len` values of `T` in their own mapping, zeroed, aligned to [`HUGE_PAGE`] and advised for
/// huge pages when asked (see the [module](self)); unmapped on drop. Derefs to `[T]`.
///
/// ```
/// use pagebuddy::mapped::{Advice, MappedSlice};
/// let mut v = MappedSlice::<u32>::zeroed(1 << 20, Advice::HugePages).unwrap();
/// assert_eq!(v.len(), 1 << 20);
/// assert!(v.iter().all(|&x| x == 0));
/// v[7] = 3;
/// assert_eq!(v.as_ptr() as usize % pagebuddy::mapped::HUGE_PAGE, 0);
/// ```
pub struct MappedSlice<T: ZeroValid> {
    ptr: NonNull<T>,
    len: usize,
    /// Bytes mapped at `ptr` (0: nothing mapped, `ptr` dangling).
    bytes: usize,
    huge: bool,
    _owns: PhantomData<T>,
}

// SAFETY: the slice owns its values as a `Vec<T>` would.
unsafe impl<T: ZeroValid + Send> Send for MappedSlice<T> {}
// SAFETY: shared access hands out `&[T]` only.
unsafe impl<T: ZeroValid + Sync> Sync for MappedSlice<T> {}

impl<T: ZeroValid> MappedSlice<T> {
    /// `len` zeroed values in a new mapping; nothing is written, so nothing is committed yet.
    ///
    /// ```
    /// use pagebuddy::mapped::{Advice, MappedSlice};
    /// let v = MappedSlice::<u64>::zeroed(3, Advice::Default).unwrap();
    /// assert_eq!(&v[..], &[0, 0, 0]);
    /// assert!(!v.huge_advised());
    /// ```
    pub fn zeroed(len: usize, advice: Advice) -> Result<Self, MapError> {
        let err = MapError {
            len,
            elem_bytes: core::mem::size_of::<T>(),
        };
        let bytes = len
            .checked_mul(core::mem::size_of::<T>())
            .filter(|&b| b <= isize::MAX as usize / 2)
            .ok_or(err)?;
        if bytes == 0 {
            return Ok(MappedSlice {
                ptr: NonNull::dangling(),
                len,
                bytes: 0,
                huge: false,
                _owns: PhantomData,
            });
        }
        let (ptr, mapped, huge) = sys::map(bytes, advice == Advice::HugePages).ok_or(err)?;
        Ok(MappedSlice {
            ptr: ptr.cast(),
            len,
            bytes: mapped,
            huge,
            _owns: PhantomData,
        })
    }

    /// Whether the kernel accepted the huge-page advice for this mapping.
    ///
    /// ```
    /// use pagebuddy::mapped::{Advice, MappedSlice};
    /// let small = MappedSlice::<u8>::zeroed(4096, Advice::HugePages).unwrap();
    /// assert!(!small.huge_advised()); // smaller than one huge page: left as it is
    /// ```
    pub fn huge_advised(&self) -> bool {
        self.huge
    }

    /// Bytes the mapping spans (the values' bytes rounded up to whole pages, or to whole huge
    /// pages when advised).
    ///
    /// ```
    /// use pagebuddy::mapped::{Advice, MappedSlice};
    /// let v = MappedSlice::<u8>::zeroed(10, Advice::Default).unwrap();
    /// assert!(v.mapped_bytes() >= 10);
    /// ```
    pub fn mapped_bytes(&self) -> usize {
        self.bytes
    }

    /// Writes `value` into every element (this commits the memory).
    ///
    /// ```
    /// use pagebuddy::mapped::{Advice, MappedSlice};
    /// use pagebuddy::PageMeta;
    /// let mut meta = MappedSlice::<PageMeta>::zeroed(8, Advice::Default).unwrap();
    /// meta.fill(PageMeta::INIT);
    /// assert!(meta.iter().all(|m| *m == PageMeta::INIT));
    /// ```
    pub fn fill(&mut self, value: T)
    where
        T: Copy,
    {
        self.as_mut_slice().fill(value);
    }

    /// The values.
    ///
    /// ```
    /// use pagebuddy::mapped::{Advice, MappedSlice};
    /// let v = MappedSlice::<u16>::zeroed(2, Advice::Default).unwrap();
    /// assert_eq!(v.as_slice(), &[0, 0]);
    /// ```
    pub fn as_slice(&self) -> &[T] {
        // SAFETY: `ptr` is aligned for `T` (page-aligned, or dangling with `len * size_of::<T>()
        // == 0`) and valid for `len` values, all initialised (zero is valid, `T: ZeroValid`),
        // owned by `self` and borrowed shared here.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The values, mutably.
    ///
    /// ```
    /// use pagebuddy::mapped::{Advice, MappedSlice};
    /// let mut v = MappedSlice::<u16>::zeroed(2, Advice::Default).unwrap();
    /// v.as_mut_slice()[1] = 9;
    /// assert_eq!(&v[..], &[0, 9]);
    /// ```
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as in `as_slice`, borrowed exclusively through `&mut self`.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: ZeroValid> Deref for MappedSlice<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: ZeroValid> DerefMut for MappedSlice<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.as_mut_slice()
    }
}

impl<T: ZeroValid> fmt::Debug for MappedSlice<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappedSlice")
            .field("len", &self.len)
            .field("mapped_bytes", &self.bytes)
            .field("huge_advised", &self.huge)
            .finish()
    }
}

impl<T: ZeroValid> Drop for MappedSlice<T> {
    fn drop(&mut self) {
        if self.bytes != 0 {
            // SAFETY: `ptr` and `bytes` are what `sys::map` returned, unmapped only here; the
            // values need no drop (`ZeroValid` types are plain data).
            unsafe { sys::unmap(self.ptr.cast(), self.bytes) }
        }
    }
}

#[cfg(unix)]
mod sys {
    use core::ptr::NonNull;

    use super::HUGE_PAGE;

    /// Bytes of an anonymous region that maps whole huge pages: `bytes` rounded up.
    fn huge_rounded(bytes: usize) -> Option<usize> {
        bytes.checked_next_multiple_of(HUGE_PAGE)
    }

    /// Maps `bytes` (non-zero) zeroed, private and anonymous: the start, the bytes mapped and
    /// whether the huge-page advice was taken. `None` when the kernel refuses the mapping.
    pub(super) fn map(bytes: usize, huge: bool) -> Option<(NonNull<u8>, usize, bool)> {
        let want_huge = huge && bytes >= HUGE_PAGE;
        let len = if want_huge {
            huge_rounded(bytes)?
        } else {
            bytes
        };
        // Over-map by one huge page so that an aligned start fits, then unmap the slack.
        let over = if want_huge {
            len.checked_add(HUGE_PAGE)?
        } else {
            len
        };
        // SAFETY: a fresh anonymous private mapping at an address the kernel picks: it aliases
        // nothing.
        let raw = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                over,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED || raw.is_null() {
            return None;
        }
        let raw = raw.cast::<u8>();
        if !want_huge {
            return Some((NonNull::new(raw)?, len, false));
        }
        let head = raw.align_offset(HUGE_PAGE);
        let tail = over - head - len;
        // SAFETY: `raw..raw + over` is the mapping just made; the head and tail ranges lie
        // inside it, page-aligned (mmap returns a page-aligned start, HUGE_PAGE and `len` are
        // multiples of the page size), and nothing refers to them.
        let start = unsafe {
            if head != 0 {
                libc::munmap(raw.cast(), head);
            }
            let start = raw.add(head);
            if tail != 0 {
                libc::munmap(start.add(len).cast(), tail);
            }
            start
        };
        let advised = advise(start, len);
        Some((NonNull::new(start)?, len, advised))
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn advise(start: *mut u8, len: usize) -> bool {
        // SAFETY: `start..start + len` is a mapping of ours, untouched so far; the advice
        // changes how it is backed, never its contents.
        unsafe { libc::madvise(start.cast(), len, libc::MADV_HUGEPAGE) == 0 }
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn advise(_start: *mut u8, _len: usize) -> bool {
        false
    }

    /// Unmaps what `map` mapped.
    ///
    /// # Safety
    /// `ptr` and `bytes` are a start and length `map` returned, not unmapped yet, and nothing
    /// refers to that memory any more.
    pub(super) unsafe fn unmap(ptr: NonNull<u8>, bytes: usize) {
        // SAFETY: the caller's promise.
        unsafe { libc::munmap(ptr.as_ptr().cast(), bytes) };
    }
}

#[cfg(not(unix))]
mod sys {
    use core::ptr::NonNull;
    use std::alloc::{alloc_zeroed, dealloc, Layout};

    /// Alignment of the fallback allocation: a page.
    const ALIGN: usize = 4096;

    /// Zeroed memory from the global allocator; no advice.
    pub(super) fn map(bytes: usize, _huge: bool) -> Option<(NonNull<u8>, usize, bool)> {
        let layout = Layout::from_size_align(bytes, ALIGN).ok()?;
        // SAFETY: `bytes` is non-zero (the caller checks).
        let ptr = unsafe { alloc_zeroed(layout) };
        Some((NonNull::new(ptr)?, bytes, false))
    }

    /// Frees what `map` allocated.
    ///
    /// # Safety
    /// As the Unix `unmap`.
    pub(super) unsafe fn unmap(ptr: NonNull<u8>, bytes: usize) {
        // SAFETY: `map` allocated `ptr` with this layout (valid then, so valid now).
        unsafe {
            dealloc(
                ptr.as_ptr(),
                Layout::from_size_align_unchecked(bytes, ALIGN),
            )
        }
    }
}
