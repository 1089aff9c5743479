//! Opening arbitrary bytes as a shared pool: `SharedPool::attach` on whatever the fuzzer gives,
//! laid over a valid pool image now and then so that deep paths (the journal, recovery, the
//! checker) are reached, not only the magic check.
//!
//! Required: no panic, no access outside the bytes (AddressSanitizer watches the buffer), and
//! bytes that attach refuses are exactly as they were. Bytes it accepts pass `check()` and take
//! an allocation and a free.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pagebuddy::{Config, Intrusive, SharedPool, SideTable};

const PS: usize = 64;
const LEN: usize = 16384;

/// A valid pool image of LEN bytes with a few blocks held (LEN leaves about a hundred pages
/// after the header and the owner table of layout version 5; the seeds in fuzz/corpus/attach
/// write header offsets, which version 5 keeps).
fn image(intrusive: bool) -> Vec<u64> {
    let mut words = vec![0u64; LEN / 8];
    let bytes = as_bytes(&mut words);
    let n = pagebuddy::pages_that_fit(LEN, PS, intrusive);
    let config = Config::new(n).page_size(PS).reserved_pages(1);
    if intrusive {
        let pool = SharedPool::<Intrusive>::create_in(bytes, config, 1).unwrap();
        let mut g = pool.lock();
        let a = g.alloc(1).unwrap();
        g.alloc(0).unwrap();
        g.put(a).unwrap();
    } else {
        let pool = SharedPool::<SideTable>::create_in(bytes, config, 1).unwrap();
        let mut g = pool.lock();
        let a = g.alloc(2).unwrap();
        g.get(a).unwrap();
        g.alloc(0).unwrap();
    }
    words
}

fn as_bytes(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: u64s have no padding; the byte view covers exactly their memory.
    unsafe { core::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), words.len() * 8) }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // mode bit 0: start from a valid image (else from zeros); bit 1: intrusive; the rest of
    // the input is (offset, byte) pairs written over the image, or the raw bytes.
    let intrusive = mode & 2 != 0;
    let mut words = if mode & 1 != 0 {
        let mut w = image(intrusive);
        let b = as_bytes(&mut w);
        for pair in rest.chunks_exact(3) {
            let off = usize::from(u16::from_le_bytes([pair[0], pair[1]])) % LEN;
            b[off] = pair[2];
        }
        w
    } else {
        let mut w = vec![0u64; rest.len().div_ceil(8).max(1)];
        as_bytes(&mut w)[..rest.len()].copy_from_slice(rest);
        w
    };
    let len = if mode & 1 != 0 {
        LEN - usize::from(mode >> 2) * 64 % LEN // sometimes truncated
    } else {
        rest.len()
    };
    let bytes = &mut as_bytes(&mut words)[..len];
    let before = bytes.to_vec();
    let opened = if intrusive {
        SharedPool::<Intrusive>::attach(bytes, 2).map(|p| {
            let mut g = p.lock();
            g.check().unwrap();
            if let Ok(pfn) = g.alloc(0) {
                g.put(pfn).unwrap();
            }
            g.check().unwrap();
        })
    } else {
        SharedPool::<SideTable>::attach(bytes, 2).map(|p| {
            let mut g = p.lock();
            g.check().unwrap();
            if let Ok(pfn) = g.alloc(0) {
                g.put(pfn).unwrap();
            }
            g.check().unwrap();
        })
    };
    if opened.is_err() {
        assert_eq!(&as_bytes(&mut words)[..len], &before[..], "refused bytes were written");
    }
});
