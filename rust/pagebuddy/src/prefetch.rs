//! Prefetch hints: telling the CPU which line an operation about to come will read, so that its
//! miss overlaps the work before it instead of stalling it.
//!
//! A hint changes nothing a program can observe but time, and never faults. Where the target has
//! no hint instruction (or under Miri) it compiles to nothing.

/// Hints that the cache line holding `p` will be read soon.
///
/// Any address is harmless: `prefetcht0` (x86-64) and `prfm pldl1keep` (AArch64) do not fault,
/// read nothing architecturally and write nothing. Callers pass addresses inside memory the pool
/// owns, so that each hint fetches a line an operation will read.
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse", not(miri)))]
    // SAFETY: `prefetcht0` is a hint: it cannot fault whatever the address and has no
    // architectural effect, so no pointer validity is needed; SSE is part of the x86-64
    // baseline and the cfg requires it.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(all(target_arch = "aarch64", not(miri)))]
    // SAFETY: `prfm` is a hint: it cannot fault whatever the address, reads nothing
    // architecturally, writes nothing, touches no stack and no flags.
    unsafe {
        core::arch::asm!("prfm pldl1keep, [{0}]", in(reg) p, options(nostack, readonly, preserves_flags));
    }
    #[cfg(not(all(
        any(
            all(target_arch = "x86_64", target_feature = "sse"),
            target_arch = "aarch64"
        ),
        not(miri)
    )))]
    let _ = p;
}
