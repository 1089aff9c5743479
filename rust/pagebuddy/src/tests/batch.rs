//! Batches: `alloc_many` and `put_many` equal the single calls, or change nothing.

use std::vec;
use std::vec::Vec;

use super::{cfg, snapshot, Mem};
use crate::*;

/// Runs `$body` on a side-table pool and on an intrusive one built from `$config`.
macro_rules! both_stores {
    ($config:expr, |$pool:ident| $body:block) => {{
        let mut mem = Mem::new($config.nr_pages);
        {
            let mut $pool = mem.side($config).unwrap();
            $body
        }
        let mut mem = Mem::new($config.nr_pages);
        {
            let mut $pool = mem.intrusive($config).unwrap();
            $body
        }
    }};
}

#[test]
fn alloc_many_equals_allocs_one_by_one() {
    let config = cfg(37).base_pfn(5).reserved_pages(1);
    for order in 0..5 {
        for count in [0, 1, 2, 3, 7] {
            let mut one_by_one = Mem::new(37);
            let mut single = one_by_one.side(config).unwrap();
            let want: Result<Vec<u64>, Error> = (0..count).map(|_| single.alloc(order)).collect();
            let Ok(want) = want else { continue };
            both_stores!(config, |pool| {
                let mut pfns = vec![0; count];
                pool.alloc_many(order, &mut pfns).unwrap();
                assert_eq!(pfns, want);
                assert_eq!(snapshot(&pool).0, snapshot(&single).0);
                pool.check().unwrap();
            });
        }
    }
}

/// A pool of 128 pages with 32 single pages on list 0, in a scrambled order: its first 64
/// pages held, then the even ones put back (their odd buddies held, nothing merges); the other
/// 64 pages free as one block.
fn long_list_0<L: LinkStore>(pool: &mut Pool<'_, L>) {
    let all: Vec<u64> = (0..64).map(|_| pool.alloc(0).unwrap()).collect();
    for i in 0..32 {
        // 7 is odd, so i * 7 % 32 runs over every even page once.
        pool.put(all[i * 7 % 32 * 2]).unwrap();
    }
    assert_eq!(pool.free_list(0).count(), 32);
}

/// `count` single pages from `long_list_0`'s pool with links in `$store`, as one batch and one
/// by one: the same pages, bytes, links and high-water mark.
macro_rules! batch_from_a_long_list {
    ($store:ident, $config:expr, $count:expr) => {{
        let (config, count) = ($config, $count);
        let mut one_by_one = Mem::new(128);
        let mut single = one_by_one.$store(config).unwrap();
        long_list_0(&mut single);
        let want: Vec<u64> = (0..count).map(|_| single.alloc(0).unwrap()).collect();
        let mut batch = Mem::new(128);
        let mut pool = batch.$store(config).unwrap();
        long_list_0(&mut pool);
        let mut pfns = vec![0; count];
        pool.alloc_many(0, &mut pfns).unwrap();
        let why = std::format!("{}, {:?}, {count}", stringify!($store), config.zero);
        assert_eq!(pfns, want, "{why}");
        assert_eq!(snapshot(&pool), snapshot(&single), "{why}");
        assert_eq!(pool.touched, single.touched, "{why}");
        let links: Vec<Link> = pool
            .free
            .iter(&pool.arena, 0)
            .map(|l| l.unwrap().1)
            .collect();
        let want_links: Vec<Link> = single
            .free
            .iter(&single.arena, 0)
            .map(|l| l.unwrap().1)
            .collect();
        assert_eq!(links, want_links, "{why}");
        pool.check().unwrap();
    }};
}

/// A batch of single pages from a long list 0 takes the blocks beyond its tail at once
/// (`take_listed`), then goes on one by one: every count around the list's length gives the
/// pages, bytes, links and high-water mark that `alloc` one by one gives, for both stores and
/// every zero policy.
#[test]
fn alloc_many_from_a_long_list_equals_allocs_one_by_one() {
    for zero in [ZeroPolicy::Never, ZeroPolicy::OnAlloc, ZeroPolicy::OnFree] {
        let config = cfg(128).base_pfn(128).zero(zero);
        for count in [1, 2, 30, 31, 32, 33, 40] {
            batch_from_a_long_list!(intrusive, config, count);
            batch_from_a_long_list!(side, config, count);
        }
    }
}

#[test]
fn alloc_many_refusals_change_nothing() {
    both_stores!(cfg(9).base_pfn(37).reserved_pages(1), |pool| {
        let before = snapshot(&pool);
        for order in 0..4 {
            let fits = pool.capacity(order) as usize;
            let mut pfns = vec![0; fits + 1];
            assert_eq!(
                pool.alloc_many(order, &mut pfns),
                Err(Error::OutOfMemory { order })
            );
            assert_eq!(snapshot(&pool), before);
        }
        let bad = Error::InvalidOrder {
            order: 4,
            max_order: 4,
        };
        assert_eq!(pool.alloc_many(4, &mut []), Err(bad));
        assert_eq!(snapshot(&pool), before);
        let mut all = vec![0; 8];
        pool.alloc_many(0, &mut all).unwrap(); // exactly the capacity
        assert_eq!(pool.free_pages(), 0);
        pool.check().unwrap();
    });
}

#[test]
fn put_many_equals_puts_one_by_one() {
    let config = cfg(16).base_pfn(32);
    both_stores!(config, |pool| {
        let mut single_mem = Mem::new(16);
        let mut single = single_mem.side(config).unwrap();
        let mut heads = Vec::new();
        for order in [0, 1, 0, 2, 0, 1] {
            let pfn = pool.alloc(order).unwrap();
            assert_eq!(single.alloc(order), Ok(pfn));
            heads.push(pfn);
        }
        // A page held three times and put three times, another held twice and put once.
        for p in [heads[0], heads[0], heads[2]] {
            pool.get(p).unwrap();
            single.get(p).unwrap();
        }
        let batch = [
            heads[0], heads[3], heads[0], heads[1], heads[2], heads[5], heads[0],
        ];
        pool.put_many(&batch).unwrap();
        for &p in &batch {
            single.put(p).unwrap();
        }
        assert_eq!(snapshot(&pool).0, snapshot(&single).0);
        assert_eq!(snapshot(&pool).1, snapshot(&single).1);
        assert_eq!(pool.refcount(heads[2]), Ok(1));
        pool.check().unwrap();
        assert_eq!(pool.put_many(&[]), Ok(()));
    });
}

#[test]
fn put_many_refusals_change_nothing_and_name_the_element() {
    both_stores!(cfg(9).base_pfn(37).reserved_pages(1), |pool| {
        // pfns 37..46, 37 reserved: 38-39 held, 44 held, 45 free.
        let held = pool.alloc(1).unwrap();
        let single = pool.alloc(0).unwrap();
        pool.get(single).unwrap();
        let before = snapshot(&pool);
        let cases: [(&[u64], usize, Error); 6] = [
            (&[held, 36], 1, Error::PfnOutOfRange { pfn: 36 }),
            (&[held, single, 46], 2, Error::PfnOutOfRange { pfn: 46 }),
            (&[single, held + 1], 1, Error::NotHeld { pfn: held + 1 }),
            (&[45], 0, Error::NotHeld { pfn: 45 }),
            (&[held, 37, held], 2, Error::NotHeld { pfn: held }),
            (
                &[single, single, held, single],
                3,
                Error::NotHeld { pfn: single },
            ),
        ];
        for (pfns, index, error) in cases {
            assert_eq!(pool.put_many(pfns), Err(BatchError { index, error }));
            assert_eq!(snapshot(&pool), before);
            pool.check().unwrap();
        }
        pool.put_many(&[single, held, 37, single]).unwrap();
        assert_eq!(pool.free_pages(), 9);
        pool.check().unwrap();
    });
}

#[test]
fn locked_pool_batches() {
    let mut mem = Mem::new(16);
    let pool: LockedPool<'_, _, SpinLock> = LockedPool::new(mem.side(cfg(16)).unwrap());
    let mut pfns = [0; 4];
    pool.alloc_many(2, &mut pfns).unwrap();
    assert_eq!(pfns, [0, 4, 8, 12]);
    let err = BatchError {
        index: 4,
        error: Error::NotHeld { pfn: 0 },
    };
    assert_eq!(pool.put_many(&[0, 4, 8, 12, 0]), Err(err));
    assert_eq!(pool.free_pages(), 0);
    pool.put_many(&pfns).unwrap();
    assert_eq!(pool.free_pages(), 16);
    pool.check().unwrap();
}

/// A run whose puts one by one would write over a list's tail differently from the whole-block
/// free (a tail whose `next` is not NIL, which the puts set back to NIL) is put one by one.
#[test]
fn put_many_takes_no_shortcut_past_a_bad_tail() {
    let (mut a, mut b) = (Mem::new(16), Mem::new(16));
    let config = cfg(16).zero(ZeroPolicy::Never);
    let mut pool = a.intrusive(config).unwrap();
    let mut single = b.intrusive(config).unwrap();
    for p in [&mut pool, &mut single] {
        p.alloc_many(0, &mut [0; 16]).unwrap();
        p.put(5).unwrap(); // list 0: [5]
                           // SAFETY: page 5 is free and in the pool; this is the scribble under test: its
                           // link's `next` made 3, in range but not NIL.
        unsafe { core::ptr::write_unaligned(p.page_addr(5).unwrap().as_ptr().add(4).cast(), 3u32) };
    }
    pool.put_many(&[8, 9, 10, 11]).unwrap();
    for pfn in [8, 9, 10, 11] {
        single.put(pfn).unwrap();
    }
    assert_eq!(snapshot(&pool), snapshot(&single));
    assert_eq!(pool.free_list(2).collect::<Vec<_>>(), [8]);
}

/// Batches against the same calls one by one, on random pool states: random geometries, zero
/// policies, both link stores, prezeroed arenas or not; held pages written over so that zeroing
/// shows. Batches are mostly long ascending runs of held pages, the case the whole-block paths
/// take, edited at random (elements dropped, swapped, repeated, or a bad one inserted).
mod against_single_calls {
    use std::vec;
    use std::vec::Vec;

    use proptest::prelude::*;

    use super::super::{snapshot, Mem, PS};
    use crate::*;

    #[derive(Clone, Debug)]
    enum Step {
        Alloc(u32),
        AllocMany(u32, u8),
        Put(u16),
        Get(u16),
        Split(u16),
        Write(u16, u8),
    }

    #[derive(Clone, Debug)]
    enum Edit {
        Drop(u16),
        Swap(u16, u16),
        Repeat(u16),
        Insert(u16, u64),
    }

    #[derive(Clone, Debug)]
    enum Batch {
        Alloc(u32, u16),
        /// The held pages in ascending order, each as often as it is held (`drain`: the extra
        /// references first, apart) or once, then edited.
        Put {
            drain: bool,
            edits: Vec<Edit>,
        },
    }

    #[derive(Clone, Debug)]
    struct Case {
        nr_pages: usize,
        base_pfn: u64,
        reserved: usize,
        order_cap: u32,
        zero: ZeroPolicy,
        prezeroed: bool,
        steps: Vec<Step>,
        batches: Vec<Batch>,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (0u32..6).prop_map(Step::Alloc),
            3 => (0u32..3, any::<u8>()).prop_map(|(o, n)| Step::AllocMany(o, n)),
            3 => any::<u16>().prop_map(Step::Put),
            1 => any::<u16>().prop_map(Step::Get),
            2 => any::<u16>().prop_map(Step::Split),
            2 => (any::<u16>(), any::<u8>()).prop_map(|(p, b)| Step::Write(p, b)),
        ]
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            any::<u16>().prop_map(Edit::Drop),
            (any::<u16>(), any::<u16>()).prop_map(|(a, b)| Edit::Swap(a, b)),
            any::<u16>().prop_map(Edit::Repeat),
            (any::<u16>(), any::<u64>()).prop_map(|(a, p)| Edit::Insert(a, p)),
        ]
    }

    fn batch() -> impl Strategy<Value = Batch> {
        prop_oneof![
            1 => (0u32..4, any::<u16>()).prop_map(|(o, n)| Batch::Alloc(o, n)),
            2 => (
                any::<bool>(),
                prop_oneof![3 => Just(vec![]), 2 => prop::collection::vec(edit(), 0..4)],
            )
                .prop_map(|(drain, edits)| Batch::Put { drain, edits }),
        ]
    }

    fn case() -> impl Strategy<Value = Case> {
        (
            (
                prop_oneof![1usize..=40, 40usize..=300],
                prop_oneof![Just(0u64), Just(64), 0u64..100, Just(u64::MAX - 299)],
                any::<u16>(),
                prop_oneof![Just(11u32), 1u32..=9],
            ),
            (0u8..3, any::<bool>()),
            prop::collection::vec(step(), 0..40),
            prop::collection::vec(batch(), 1..4),
        )
            .prop_map(
                |((nr_pages, base_pfn, r, order_cap), (z, prezeroed), steps, batches)| Case {
                    nr_pages,
                    base_pfn: base_pfn.min(u64::MAX - nr_pages as u64 + 1),
                    reserved: if r % 4 == 0 {
                        r as usize % (nr_pages + 1)
                    } else {
                        0
                    },
                    order_cap,
                    zero: [ZeroPolicy::OnFree, ZeroPolicy::OnAlloc, ZeroPolicy::Never][z as usize],
                    prezeroed,
                    steps,
                    batches,
                },
            )
    }

    /// Everything either pool could show: lists, metadata, counts, arena bytes (intrusive links
    /// included), the links of every listed block, and the high-water mark of pages handed out.
    type State = (
        (Vec<Vec<u64>>, Vec<PageMeta>, u32, Vec<u8>),
        Vec<Vec<Link>>,
        u32,
    );

    fn state<L: LinkStore>(pool: &Pool<'_, L>) -> State {
        let links = (0..pool.max_order())
            .map(|k| {
                let listed = pool.free.iter(&pool.arena, k);
                listed.map(|l| l.map(|(_, link)| link).unwrap()).collect()
            })
            .collect();
        (snapshot(pool), links, pool.touched)
    }

    /// The held pages, ascending, with their refcounts.
    fn held<L: LinkStore>(pool: &Pool<'_, L>) -> Vec<(u64, u16)> {
        let g = pool.geometry();
        (0..g.nr_pages)
            .map(|i| g.base_pfn + u64::from(i))
            .filter_map(|p| pool.refcount(p).ok().filter(|&r| r > 0).map(|r| (p, r)))
            .collect()
    }

    fn pick(held: &[(u64, u16)], n: u16) -> Option<u64> {
        (!held.is_empty()).then(|| held[n as usize % held.len()].0)
    }

    /// A random step, done on both pools alike.
    fn apply<L: LinkStore>(pool: &mut Pool<'_, L>, step: &Step) {
        let held = held(pool);
        let _ = match *step {
            Step::Alloc(order) => pool.alloc(order).map(drop),
            Step::AllocMany(order, n) => pool.alloc_many(order, &mut vec![0; n as usize % 64]),
            Step::Put(n) => pick(&held, n).map_or(Ok(()), |p| pool.put(p)),
            Step::Get(n) => pick(&held, n).map_or(Ok(()), |p| pool.get(p)),
            Step::Split(n) => pick(&held, n).map_or(Ok(()), |p| pool.split(p)),
            Step::Write(n, byte) => {
                if let Some(p) = pick(&held, n) {
                    let at = pool.page_addr(p).unwrap().as_ptr();
                    // SAFETY: a held page's PS bytes are the holder's to write.
                    unsafe { core::ptr::write_bytes(at, byte, PS) };
                }
                Ok(())
            }
        };
    }

    fn put_batch(held: &[(u64, u16)], drain: bool, edits: &[Edit]) -> Vec<u64> {
        let mut pfns: Vec<u64> = Vec::new();
        if drain {
            for &(p, r) in held {
                pfns.extend(core::iter::repeat_n(p, r as usize - 1));
            }
        }
        pfns.extend(held.iter().map(|&(p, _)| p));
        for e in edits {
            let at = |n: u16, len: usize| n as usize % len.max(1);
            match *e {
                Edit::Drop(n) if !pfns.is_empty() => drop(pfns.remove(at(n, pfns.len()))),
                Edit::Swap(a, b) if !pfns.is_empty() => {
                    let len = pfns.len();
                    pfns.swap(at(a, len), at(b, len));
                }
                Edit::Repeat(n) if !pfns.is_empty() => {
                    let p = pfns[at(n, pfns.len())];
                    pfns.push(p);
                }
                Edit::Insert(n, p) => pfns.insert(at(n, pfns.len() + 1), p),
                _ => {}
            }
        }
        pfns
    }

    /// One batch on `pool`, the same calls one by one on `single`: the same outcome and state,
    /// or a refusal that changed nothing on `pool`. Returns whether the two are still alike (the
    /// single calls before a refused element were done).
    fn compare<L: LinkStore>(
        pool: &mut Pool<'_, L>,
        single: &mut Pool<'_, L>,
        batch: &Batch,
    ) -> bool {
        let before = state(pool);
        match batch {
            &Batch::Alloc(order, n) => {
                let count = n as usize % (2 * pool.geometry().nr_pages as usize + 2);
                let mut pfns = vec![0; count];
                let got = pool.alloc_many(order, &mut pfns);
                if got.is_ok() {
                    let want: Vec<u64> = (0..count).map(|_| single.alloc(order).unwrap()).collect();
                    assert_eq!(pfns, want);
                } else {
                    assert_eq!(state(pool), before, "{got:?} changed the pool");
                    return true;
                }
            }
            Batch::Put { drain, edits } => {
                let pfns = put_batch(&held(pool), *drain, edits);
                let got = pool.put_many(&pfns);
                let mut want = Ok(());
                for (index, &pfn) in pfns.iter().enumerate() {
                    if let Err(error) = single.put(pfn) {
                        want = Err(BatchError { index, error });
                        break;
                    }
                }
                assert_eq!(got, want, "put_many({pfns:?})");
                if got.is_err() {
                    assert_eq!(state(pool), before, "{got:?} changed the pool");
                    return false;
                }
            }
        }
        assert_eq!(state(pool), state(single));
        pool.check().unwrap();
        true
    }

    /// Twin pools of `$store` (`side` or `intrusive`) for `$case`: the steps on both, then
    /// each batch on one and as single calls on the other.
    macro_rules! run {
        ($case:expr, $store:ident) => {{
            let case: &Case = $case;
            let config = Config::new(case.nr_pages)
                .page_size(PS)
                .base_pfn(case.base_pfn)
                .reserved_pages(case.reserved)
                .order_cap(case.order_cap)
                .zero(case.zero)
                .prezeroed(case.prezeroed);
            let fill = if case.prezeroed { 0 } else { 0xAA };
            let (mut a, mut b) = (Mem::new(case.nr_pages), Mem::new(case.nr_pages));
            a.arena.fill(fill);
            b.arena.fill(fill);
            let mut pool = a.$store(config).unwrap();
            let mut single = b.$store(config).unwrap();
            for step in &case.steps {
                apply(&mut pool, step);
                apply(&mut single, step);
            }
            assert_eq!(state(&pool), state(&single));
            for batch in &case.batches {
                if !compare(&mut pool, &mut single, batch) {
                    break;
                }
            }
        }};
    }

    /// Writes `value` over the `prev` (`half` even) or `next` half of the link of the free head
    /// picked by `n`, if there is one: the stray write that an intrusive pool's lists meet.
    fn scribble<L: LinkStore>(pool: &mut Pool<'_, L>, n: u16, half: u8, value: u32) {
        let g = pool.geometry();
        let heads: Vec<u64> = (0..g.nr_pages)
            .map(|i| g.base_pfn + u64::from(i))
            .filter(|&p| pool.page(p).is_ok_and(|m| m.is_free_head()))
            .collect();
        if heads.is_empty() {
            return;
        }
        let at = pool
            .page_addr(heads[n as usize % heads.len()])
            .unwrap()
            .as_ptr();
        // SAFETY: a page of the pool's arena, 8 bytes in; this is the stray write under test.
        unsafe { core::ptr::write_unaligned(at.add(4 * usize::from(half % 2)).cast(), value) };
    }

    /// A value for a scribbled link: mostly a page of the pool (so that the lists stay in
    /// range and the damage goes deep), else NIL or anything.
    fn link_value(nr_pages: usize, v: u32) -> u32 {
        match v % 8 {
            0 => Link::NIL,
            1 => v,
            _ => (v >> 3) % nr_pages as u32,
        }
    }

    /// One batch on a pool whose lists may be corrupt, the same calls one by one on its twin:
    /// a batch that fails leaves the pool exactly as it was, and a `put_many` that succeeds is
    /// what the puts one by one do. (Allocations one by one on a corrupt list may take blocks
    /// its links lead them to that a batch, taking whole blocks, does not: a successful
    /// `alloc_many` ends the comparison.) Returns whether the twins are still alike.
    fn all_or_nothing<L: LinkStore>(
        pool: &mut Pool<'_, L>,
        single: &mut Pool<'_, L>,
        batch: &Batch,
    ) -> bool {
        let before = snapshot(pool);
        let ok = match batch {
            &Batch::Alloc(order, n) => {
                let count = n as usize % (2 * pool.geometry().nr_pages as usize + 2);
                if pool.alloc_many(order, &mut vec![0; count]).is_ok() {
                    return false;
                }
                false // refused: compared below
            }
            Batch::Put { drain, edits } => {
                let pfns = put_batch(&held(pool), *drain, edits);
                let ok = pool.put_many(&pfns).is_ok();
                if ok {
                    for &pfn in &pfns {
                        assert_eq!(single.put(pfn), Ok(()), "put_many({pfns:?}) at {pfn}");
                    }
                }
                ok
            }
        };
        if ok {
            assert_eq!(snapshot(pool), snapshot(single));
        } else {
            assert_eq!(
                snapshot(pool),
                before,
                "a refused {batch:?} changed the pool"
            );
        }
        ok
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: crate::tests::batch::cases(256),
            ..ProptestConfig::default()
        })]

        /// Intrusive pools whose free lists were written over: a batch that fails, however it
        /// fails, changes nothing, and one that succeeds is what the calls one by one do.
        #[test]
        fn batches_meeting_stray_writes_change_nothing(
            case in case(),
            writes in prop::collection::vec((any::<u16>(), any::<u8>(), any::<u32>()), 1..4),
        ) {
            let config = Config::new(case.nr_pages)
                .page_size(PS)
                .base_pfn(case.base_pfn)
                .reserved_pages(case.reserved)
                .order_cap(case.order_cap)
                .zero(case.zero)
                .prezeroed(case.prezeroed);
            let (mut a, mut b) = (Mem::new(case.nr_pages), Mem::new(case.nr_pages));
            let mut pool = a.intrusive(config).unwrap();
            let mut single = b.intrusive(config).unwrap();
            for step in &case.steps {
                apply(&mut pool, step);
                apply(&mut single, step);
            }
            for &(n, half, v) in &writes {
                let value = link_value(case.nr_pages, v);
                scribble(&mut pool, n, half, value);
                scribble(&mut single, n, half, value);
            }
            for batch in &case.batches {
                if !all_or_nothing(&mut pool, &mut single, batch) {
                    break;
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: crate::tests::batch::cases(512),
            ..ProptestConfig::default()
        })]

        #[test]
        fn batches_equal_single_calls(case in case()) {
            run!(&case, side);
            run!(&case, intrusive);
        }
    }
}

/// `PROPTEST_CASES` if set, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The case: the batch's second put merges with page 9, whose neighbour on list 0 (page
/// 16) has junk for a link. The first put would have been done before the second found it; the
/// batch finds it first and changes nothing.
#[test]
fn put_many_meeting_corruption_changes_nothing() {
    let mut mem = Mem::new(32);
    let mut pool = mem.intrusive(cfg(32).zero(ZeroPolicy::Never)).unwrap();
    pool.alloc_many(0, &mut [0; 32]).unwrap();
    pool.put(16).unwrap();
    pool.put(9).unwrap(); // list 0: [16, 9]
                          // SAFETY: page 16 is free and in the pool; this is the stray write under test.
    unsafe { core::ptr::write_bytes(pool.page_addr(16).unwrap().as_ptr(), 0x5a, 8) };
    let before = snapshot(&pool);
    let got = pool.put_many(&[0, 8]);
    assert!(
        matches!(
            got,
            Err(BatchError {
                index: 1,
                error: Error::Corrupted(_)
            })
        ),
        "{got:?}"
    );
    assert_eq!(snapshot(&pool), before);
    assert_eq!((pool.refcount(0), pool.refcount(8)), (Ok(1), Ok(1)));
}

/// An intrusive pool of 16 pages, all held but pages 1, 3 and 5: list 0 is [1, 3, 5].
fn list_1_3_5(mem: &mut Mem) -> Pool<'_, Intrusive> {
    let mut pool = mem.intrusive(cfg(16).zero(ZeroPolicy::Never)).unwrap();
    pool.alloc_many(0, &mut [0; 16]).unwrap();
    pool.put_many(&[1, 3, 5]).unwrap();
    pool
}

/// A list whose links reach its tail before its length says: taken one by one, the tail
/// would be taken while the list still counts two blocks, which `alloc` refuses. The batch
/// refuses first, with nothing changed.
#[test]
fn alloc_many_refuses_a_list_shorter_than_its_length() {
    let mut mem = Mem::new(16);
    let mut pool = list_1_3_5(&mut mem);
    // SAFETY: page 1 is free and in the pool: its `next` made 5, the tail.
    unsafe { core::ptr::write_unaligned(pool.page_addr(1).unwrap().as_ptr().add(4).cast(), 5u32) };
    let before = snapshot(&pool);
    let got = pool.alloc_many(0, &mut [0; 2]);
    assert!(matches!(got, Err(Error::Corrupted(_))), "{got:?}");
    assert_eq!(snapshot(&pool), before);
    assert_eq!(pool.alloc(0), Ok(1));
    assert!(matches!(pool.alloc(0), Err(Error::Corrupted(_))));
}

/// A list head whose `prev` points back into the list, not at the block taken before it (NIL
/// on a list built by appends), which the list's ends remember: `alloc` refuses it, and the
/// batch refuses first.
#[test]
fn alloc_many_refuses_a_head_with_a_prev() {
    let mut mem = Mem::new(16);
    let mut pool = list_1_3_5(&mut mem);
    // SAFETY: pages 1 and 5 are free and in the pool: 1's `prev` made 5, 5's `next` made 1.
    unsafe {
        core::ptr::write_unaligned(pool.page_addr(1).unwrap().as_ptr().cast(), 5u32);
        core::ptr::write_unaligned(pool.page_addr(5).unwrap().as_ptr().add(4).cast(), 1u32);
    }
    let before = snapshot(&pool);
    let got = pool.alloc_many(0, &mut [0; 2]);
    assert!(matches!(got, Err(Error::Corrupted(_))), "{got:?}");
    assert_eq!(snapshot(&pool), before);
}
