//! `mapped::MappedSlice` (feature `hugepages`): zeroed, aligned, advised where the kernel offers
//! transparent huge pages, and a pool runs on it with either link store.
#![cfg(feature = "hugepages")]

use pagebuddy::mapped::{Advice, MapError, MappedSlice, HUGE_PAGE};
use pagebuddy::{Arena, Config, Intrusive, Link, PageMeta, Pool, SideTable, ZeroPolicy};

/// Whether this kernel takes `MADV_HUGEPAGE` (`always` or `madvise` selected).
fn thp_offered() -> Option<bool> {
    let text = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").ok()?;
    Some(!text.contains("[never]"))
}

#[test]
fn a_large_mapping_is_aligned_and_advised_where_offered() {
    let v = MappedSlice::<u64>::zeroed(3 << 18, Advice::HugePages).unwrap();
    assert_eq!(v.as_ptr() as usize % HUGE_PAGE, 0);
    assert_eq!(v.mapped_bytes() % HUGE_PAGE, 0);
    assert!(v.mapped_bytes() >= 6 << 20);
    if cfg!(target_os = "linux") {
        if let Some(offered) = thp_offered() {
            assert_eq!(v.huge_advised(), offered);
        }
    }
    assert!(v.iter().all(|&x| x == 0));
}

#[test]
fn default_advice_and_small_mappings_are_left_alone() {
    let v = MappedSlice::<u64>::zeroed(3 << 18, Advice::Default).unwrap();
    assert!(!v.huge_advised());
    let s = MappedSlice::<u32>::zeroed(100, Advice::HugePages).unwrap();
    assert!(!s.huge_advised());
    assert_eq!(s.len(), 100);
    let empty = MappedSlice::<Link>::zeroed(0, Advice::HugePages).unwrap();
    assert!(empty.is_empty());
}

#[test]
fn an_impossible_size_is_an_error() {
    let err = MappedSlice::<Link>::zeroed(usize::MAX / 4, Advice::HugePages).unwrap_err();
    assert_eq!(
        err,
        MapError {
            len: usize::MAX / 4,
            elem_bytes: 8
        }
    );
    assert!(err.to_string().contains("cannot map"), "{err}");
}

#[test]
fn pools_run_on_mapped_memory_with_both_stores() {
    let n = 1 << 12;
    let mut meta = MappedSlice::<PageMeta>::zeroed(n, Advice::HugePages).unwrap();
    meta.fill(PageMeta::INIT);
    let mut links = MappedSlice::<Link>::zeroed(n, Advice::HugePages).unwrap();
    let config = Config::new(n).zero(ZeroPolicy::Never);
    let mut side = Pool::without_arena(&mut meta, SideTable::new(&mut links), config).unwrap();
    let held: Vec<u64> = (0..n).map(|_| side.alloc(0).unwrap()).collect();
    assert_eq!(side.free_pages(), 0);
    for pfn in held {
        side.put(pfn).unwrap();
    }
    assert_eq!(side.free_pages() as usize, n);

    let mut meta = MappedSlice::<PageMeta>::zeroed(n, Advice::HugePages).unwrap();
    meta.fill(PageMeta::INIT);
    let mut arena = MappedSlice::<u8>::zeroed(n * 4096, Advice::HugePages).unwrap();
    let mut pool = Pool::new(Arena::new(&mut arena), &mut meta, Intrusive, Config::new(n)).unwrap();
    let a = pool.alloc(5).unwrap();
    let b = pool.alloc(0).unwrap();
    pool.put(a).unwrap();
    pool.put(b).unwrap();
    assert_eq!(pool.free_pages() as usize, n);
    pool.check().unwrap();
}
