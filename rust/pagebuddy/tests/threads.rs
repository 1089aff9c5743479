//! A `LockedPool` hammered from several std threads with mixed operations (alloc of every order,
//! put, get, split, erroneous calls), then `check()` and exact accounting: the free page count is
//! the pool's size less what the threads still hold, every held block is distinct, its refcount
//! is what its holder counted and its bytes are what its holder wrote (so no page was ever handed
//! to two holders, and the allocator never wrote into a held page).

use std::sync::Barrier;

use pagebuddy::{Error, LinkStore, LockedPool, Pool, RawLock, SpinLock, ZeroPolicy};

mod stress;

use stress::{check_kept, Held, Holder, Mem, Storage, NR, RESERVED, STEPS, THREADS, TOO_LARGE};

fn worker<L: LinkStore, R: RawLock>(
    pool: &LockedPool<'_, L, R>,
    mem: Mem,
    zero: ZeroPolicy,
    id: usize,
    start: &Barrier,
) -> Vec<Held> {
    let mut me = Holder::new(id);
    start.wait();
    for _ in 0..STEPS {
        match me.rng.below(12) {
            0..=3 => {
                let order = me.rng.below(5) as u32;
                match pool.alloc(order) {
                    Ok(pfn) => me.took(mem, zero, pfn, order),
                    Err(e) => assert_eq!(e, Error::OutOfMemory { order }),
                }
            }
            4..=6 if !me.held.is_empty() => me.put_one(mem, |_, pfn| pool.put(pfn).unwrap()),
            7 if !me.held.is_empty() => me.get_one(|pfn| pool.get(pfn).unwrap()),
            8 if !me.held.is_empty() => me.split_one(|pfn| pool.split(pfn).unwrap()),
            9 => {
                let pfn = me.out_of_range_pfn();
                assert_eq!(pool.put(pfn), Err(Error::PfnOutOfRange { pfn }));
                assert_eq!(pool.alloc(40), Err(TOO_LARGE));
            }
            10 if !me.held.is_empty() => {
                // A tail of a held block of someone's, or a free page: never held by the caller.
                if let Some(tail) = me.tail() {
                    assert_eq!(pool.get(tail), Err(Error::NotHeld { pfn: tail }));
                }
            }
            _ => me.check_all(mem),
        }
    }
    // Give back about half, keep the rest for the accounting.
    me.give_back_half(|pfn| pool.put(pfn).unwrap())
}

fn sorted_lists<L: LinkStore>(pool: &Pool<'_, L>) -> Vec<Vec<u64>> {
    (0..pool.max_order())
        .map(|k| {
            let mut l: Vec<u64> = pool.free_list(k).collect();
            l.sort_unstable();
            l
        })
        .collect()
}

fn hammer<'a, L: LinkStore, R: RawLock + Sync>(pool: Pool<'a, L>, mem: Mem, zero: ZeroPolicy)
where
    Pool<'a, L>: Send,
{
    let initial = sorted_lists(&pool);
    let pool: LockedPool<'_, L, R> = LockedPool::new(pool);
    assert_eq!(pool.with(|p| p.max_order()), 8);

    let start = Barrier::new(THREADS);
    let kept: Vec<Held> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|id| {
                let (pool, start) = (&pool, &start);
                s.spawn(move || worker(pool, mem, zero, id, start))
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });

    pool.check().unwrap();
    let held_pages: usize = kept.iter().map(|h| h.pages).sum();
    assert_eq!(pool.free_pages() as usize, NR - RESERVED - held_pages);
    check_kept(
        &kept,
        mem,
        |h| {
            pool.with(|p| {
                assert_eq!(p.refcount(h.pfn), Ok(h.refs), "{h:?}");
                assert_eq!(p.order(h.pfn), Ok(Some(h.pages.trailing_zeros())), "{h:?}");
                for t in h.pfn + 1..h.pfn + h.pages as u64 {
                    assert_eq!((p.refcount(t), p.order(t)), (Ok(0), Ok(None)), "tail {t}");
                }
            })
        },
        |p| pool.with(|pool| pool.refcount(p)),
    );
    // Everything back: the free blocks are the initial ones again (in some list order).
    for h in &kept {
        for _ in 0..h.refs {
            pool.put(h.pfn).unwrap();
        }
    }
    pool.check().unwrap();
    assert_eq!(pool.free_pages() as usize, NR - RESERVED);
    assert_eq!(pool.with(|p| sorted_lists(p)), initial);
}

fn side_table<R: RawLock + Sync>(zero: ZeroPolicy) {
    let mut s = Storage::new();
    let (pool, mem) = s.side_table(zero);
    hammer::<_, R>(pool, mem, zero);
}

fn intrusive<R: RawLock + Sync>(zero: ZeroPolicy) {
    let mut s = Storage::new();
    let (pool, mem) = s.intrusive(zero);
    hammer::<_, R>(pool, mem, zero);
}

#[test]
fn spinlock_side_table() {
    for zero in [ZeroPolicy::OnFree, ZeroPolicy::OnAlloc, ZeroPolicy::Never] {
        side_table::<SpinLock>(zero);
    }
}

#[test]
fn spinlock_intrusive() {
    for zero in [ZeroPolicy::OnFree, ZeroPolicy::OnAlloc, ZeroPolicy::Never] {
        intrusive::<SpinLock>(zero);
    }
}

#[cfg(feature = "std")]
#[test]
fn std_lock_both_stores() {
    side_table::<pagebuddy::StdLock>(ZeroPolicy::OnFree);
    intrusive::<pagebuddy::StdLock>(ZeroPolicy::OnFree);
}
