//! Zeroing blocks: the one place where pages are zeroed.
//!
//! A block is zeroed with `memset` ([`zero_bytes`]), nothing before it: hinting the lines of a
//! block that no cache holds before `memset` starts made the zeroing faster on one core and far
//! slower on another, where `memset` seems to write whole lines without reading them first
//! (stores that read each line were as slow there as the hints), so that the hints read what
//! nothing needed (docs/exact-pool-levers.md, "The zeroing's hints, taken out"). Blocks of
//! `STREAM_MIN` bytes and more, when freed, go to memory with non-temporal stores instead.

/// Writes `n` zero bytes at `p`: `memset`.
///
/// # Safety
/// `p` must be valid for writes of `n` bytes that no one else accesses meanwhile.
#[inline]
pub(crate) unsafe fn zero_bytes(p: *mut u8, n: usize) {
    // SAFETY: the caller's contract; u8 has no alignment requirement.
    unsafe { core::ptr::write_bytes(p, 0, n) }
}

/// Blocks of at least this many bytes are zeroed with non-temporal stores by
/// `zero_cold_bytes`: 64 KiB, above the orders the per-CPU caches keep hot with 4 KiB pages.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2", not(miri)))]
pub(crate) const STREAM_MIN: usize = 64 << 10;

/// Writes `n` zero bytes at `p` for a block that was just freed: from `STREAM_MIN` bytes on
/// (on x86-64 with SSE2), with non-temporal stores, which go to memory without first reading each line
/// into the cache and without evicting what the cache holds; [`zero_bytes`] otherwise (and where
/// SSE2 is off, as on `x86_64-unknown-none`, whose kernels do not save vector registers). Freed
/// blocks wait on a free list (at its tail) before they are used again, so caching their zeros
/// would only displace hotter data. Allocation-time zeroing keeps [`zero_bytes`]: that block is
/// used next.
///
/// # Safety
/// As [`zero_bytes`].
#[inline]
pub(crate) unsafe fn zero_cold_bytes(p: *mut u8, n: usize) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2", not(miri)))]
    if n >= STREAM_MIN {
        // SAFETY: the caller's contract.
        return unsafe { stream_zero(p, n) };
    }
    // SAFETY: the caller's contract.
    unsafe { zero_bytes(p, n) }
}

/// Non-temporal zeroing: `memset` up to the first line boundary, then each 64-byte line of the
/// aligned middle with four `movntdq` in a row, `memset` for the rest, then a store fence so that
/// the zeros are ordered before any later store (the free-list links an intrusive store writes
/// next, the lock's release). Written a whole line at a time, a line leaves the write-combining
/// buffer full; one 16-byte store a loop iteration made a cold 64 KiB block take 1.45x as long
/// on an AMD EPYC (docs/exact-pool-levers.md, "Non-temporal stores a whole line at a time").
///
/// # Safety
/// As [`zero_bytes`].
#[cfg(all(target_arch = "x86_64", target_feature = "sse2", not(miri)))]
unsafe fn stream_zero(p: *mut u8, n: usize) {
    use core::arch::x86_64::{__m128i, _mm_setzero_si128, _mm_sfence, _mm_stream_si128};
    const LINE: usize = 64;
    let head = p.align_offset(LINE).min(n);
    let lines = (n - head) / LINE;
    // SAFETY: every write stays in [p, p + n), valid for writes by the caller's contract: the
    // head is [p, p + head), line i is [p + head + 64i, p + head + 64i + 64) with i < lines,
    // and the rest ends at p + n. The stream stores go to 16-byte aligned addresses (p + head
    // is 64-byte aligned). SSE2 is part of the x86-64 baseline.
    unsafe {
        zero_bytes(p, head);
        let q = p.add(head).cast::<__m128i>();
        let zero = _mm_setzero_si128();
        for i in 0..lines {
            let line = q.add(4 * i);
            _mm_stream_si128(line, zero);
            _mm_stream_si128(line.add(1), zero);
            _mm_stream_si128(line.add(2), zero);
            _mm_stream_si128(line.add(3), zero);
        }
        _mm_sfence();
        zero_bytes(p.add(head + lines * LINE), n - head - lines * LINE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size from none to past a 4 KiB page, at every offset in a 64-byte line: exactly the
    /// bytes asked for become zero, and not one byte beside them.
    #[test]
    fn zeroes_exactly_the_range() {
        const LINE: usize = 64;
        let mut buf = [0xa5u8; 4096 + 3 * LINE];
        for off in 0..LINE {
            for n in (0..buf.len() - off).step_by(61).chain([4095, 4096, 4097]) {
                if off + n > buf.len() {
                    continue;
                }
                buf.fill(0xa5);
                // SAFETY: [off, off + n) lies in `buf`, which nothing else touches.
                unsafe { zero_bytes(buf.as_mut_ptr().add(off), n) };
                assert!(buf[..off].iter().all(|&b| b == 0xa5), "before {off}+{n}");
                assert!(buf[off..off + n].iter().all(|&b| b == 0), "in {off}+{n}");
                assert!(buf[off + n..].iter().all(|&b| b == 0xa5), "after {off}+{n}");
            }
        }
    }

    /// The freed-block zeroing, below and above the size it streams from, at offsets inside
    /// a 64-byte line and on one.
    #[test]
    fn zeroes_a_freed_block_of_any_size() {
        for n in [
            0,
            1,
            4095,
            4096,
            64 << 10,
            (64 << 10) + 17,
            (64 << 10) + 100,
        ] {
            for off in [1, 16, 63, 64] {
                let mut buf = std::vec![0x5au8; n + 128];
                // SAFETY: [off, off + n) lies in `buf`, which nothing else touches.
                unsafe { zero_cold_bytes(buf.as_mut_ptr().add(off), n) };
                assert!(buf[..off].iter().all(|&b| b == 0x5a), "{n} at {off}");
                assert!(buf[off..off + n].iter().all(|&b| b == 0), "{n} at {off}");
                assert!(buf[off + n..].iter().all(|&b| b == 0x5a), "{n} at {off}");
            }
        }
    }
}
