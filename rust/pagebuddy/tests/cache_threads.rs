//! A `CachedPool` hammered from several std threads: alloc of cached and uncached orders, put
//! through the thread's own slot and through others, blocks handed from thread to thread and
//! freed by the receiver, get, split, drains, calls that must fail; the pool is small, so caches
//! run dry and allocations drain the slots before they fail. Each thread also claims its slot
//! for stretches (`LocalCache`), allocating and freeing through the handle, as pfns and as
//! `Page`s (freed through the handle, through any slot, or shared), while the others drain,
//! allocate and free around it. Each holder fills its blocks with a
//! tag and checks it before every put, so a page handed to two holders at once, or a write by
//! the allocator into a held page, fails the test. Afterwards: free + held + cached = total,
//! every held page in exactly one block with the refcount its holder counted; after
//! `drain_all()`, `check()` passes and the pool holds every page that no thread holds.

use std::sync::{Barrier, Mutex};

use pagebuddy::{
    cache_blocks, CacheConfig, CacheSlot, CachedPool, Error, LinkStore, LocalCache, LockedPool,
    Page, PageRef, Pool, RawLock, SpinLock, ZeroPolicy,
};

mod stress;

use stress::{check_kept, Held, Holder, Mem, Storage, NR, RESERVED, STEPS, THREADS, TOO_LARGE};

struct Shared<'p, 'a, L: LinkStore, R: RawLock> {
    pool: &'p CachedPool<'a, L, R>,
    mem: Mem,
    zero: ZeroPolicy,
    start: Barrier,
    /// Blocks in transit from one thread to another (with all their references).
    mailbox: Mutex<Vec<Held>>,
}

fn worker<L: LinkStore, R: RawLock>(sh: &Shared<'_, '_, L, R>, id: usize) -> Vec<Held> {
    let (pool, mem) = (sh.pool, sh.mem);
    let mut me = Holder::new(id);
    let cpu = id;
    // This thread's claim on its slot, held for stretches (none while another thread of a shared
    // slot has it), and the blocks it holds as `Page`s.
    let mut local: Option<LocalCache<'_, '_, L, R>> = None;
    let mut pages: Vec<(Page<'_, '_, L, R>, Held)> = Vec::new();
    sh.start.wait();
    for _ in 0..STEPS {
        match me.rng.below(20) {
            0..=4 => {
                let order = [0, 0, 0, 1, 2, 3, 4][me.rng.below(7)];
                match pool.alloc(cpu, order) {
                    Ok(pfn) => me.took(mem, sh.zero, pfn, order),
                    Err(e) => assert_eq!(e, Error::OutOfMemory { order }),
                }
            }
            5..=8 if !me.held.is_empty() => me.put_one(mem, |rng, pfn| {
                // Mostly through the own slot, sometimes through another one.
                let through = if rng.below(4) == 0 { rng.below(8) } else { cpu };
                pool.put(through, pfn).unwrap();
            }),
            9 if !me.held.is_empty() => me.get_one(|pfn| pool.get(pfn).unwrap()),
            10 if !me.held.is_empty() => me.split_one(|pfn| pool.split(pfn).unwrap()),
            11 if !me.held.is_empty() => {
                let i = me.pick();
                let h = me.held.swap_remove(i);
                sh.mailbox.lock().unwrap().push(h);
            }
            12 => {
                let got = sh.mailbox.lock().unwrap().pop();
                if let Some(h) = got {
                    assert!(mem.all(h.pfn, h.pages, h.tag), "someone wrote into {h:?}");
                    me.held.push(h);
                }
            }
            13 => {
                if me.rng.below(8) == 0 {
                    pool.drain(cpu).unwrap();
                }
                let pfn = me.out_of_range_pfn();
                assert_eq!(pool.put(cpu, pfn), Err(Error::PfnOutOfRange { pfn }));
                assert_eq!(pool.alloc(cpu, 40), Err(TOO_LARGE));
            }
            14 if !me.held.is_empty() => {
                if let Some(tail) = me.tail() {
                    assert_eq!(pool.get(tail), Err(Error::NotHeld { pfn: tail }));
                    assert_eq!(pool.put(cpu, tail), Err(Error::NotHeld { pfn: tail }));
                }
            }
            15 => match local.take() {
                Some(mut h) => {
                    if me.rng.below(4) == 0 {
                        h.drain().unwrap();
                        assert_eq!(h.cached_pages(), 0);
                    }
                }
                None => local = pool.local(cpu),
            },
            16 => {
                if let Some(h) = local.as_mut() {
                    let order = [0, 0, 0, 1, 2, 3, 4][me.rng.below(7)];
                    if me.rng.below(2) == 0 {
                        match h.alloc(order) {
                            Ok(pfn) => me.took(mem, sh.zero, pfn, order),
                            Err(e) => assert_eq!(e, Error::OutOfMemory { order }),
                        }
                    } else {
                        match h.alloc_page(order) {
                            Ok(page) => {
                                let pfn = page.pfn();
                                me.took(mem, sh.zero, pfn, order);
                                let held = me.held.pop().unwrap();
                                assert_eq!(pool.refcount(pfn), Ok(1));
                                assert_eq!(pool.get(pfn), Err(Error::NotHeld { pfn }));
                                assert_eq!(pool.put(cpu, pfn), Err(Error::NotHeld { pfn }));
                                pages.push((page, held));
                            }
                            Err(e) => assert_eq!(e, Error::OutOfMemory { order }),
                        }
                    }
                }
            }
            17 if !me.held.is_empty() => {
                if let Some(h) = local.as_mut() {
                    me.put_one(mem, |_, pfn| h.put(pfn).unwrap());
                }
            }
            18 if !pages.is_empty() => {
                let (page, held) = pages.swap_remove(me.rng.below(pages.len()));
                assert!(
                    mem.all(held.pfn, held.pages, held.tag),
                    "someone wrote into {held:?}"
                );
                match (me.rng.below(3), local.as_mut()) {
                    (0, _) => {
                        assert_eq!(page.share(), held.pfn);
                        me.held.push(held);
                    }
                    (1, Some(h)) => h.free_page(page).unwrap(),
                    _ => page.free(me.rng.below(8)).unwrap(),
                }
            }
            _ => {
                me.check_all(mem);
                for (_, h) in &pages {
                    assert!(mem.all(h.pfn, h.pages, h.tag), "someone wrote into {h:?}");
                }
            }
        }
    }
    drop(local);
    for (page, held) in pages {
        if me.rng.below(2) == 0 {
            assert_eq!(page.share(), held.pfn);
            me.held.push(held);
        } else {
            page.free(cpu).unwrap();
        }
    }
    me.give_back_half(|pfn| pool.put(cpu, pfn).unwrap())
}

fn hammer<L: LinkStore, R: RawLock + Sync>(
    pool: Pool<'_, L>,
    mem: Mem,
    zero: ZeroPolicy,
    cpus: usize,
) where
    for<'x> Pool<'x, L>: Send,
{
    let config = CacheConfig::new().batch(4).high(8);
    let mut slots: Vec<CacheSlot<R>> = (0..cpus).map(|_| CacheSlot::new()).collect();
    let mut blocks = vec![0u32; cache_blocks(cpus, &config)];
    let mut refs: Vec<PageRef> = (0..NR).map(|_| PageRef::new()).collect();
    let pool: CachedPool<'_, L, R> = CachedPool::new(
        LockedPool::new(pool),
        &mut slots,
        &mut blocks,
        &mut refs,
        config,
    )
    .unwrap();

    let sh = Shared {
        pool: &pool,
        mem,
        zero,
        start: Barrier::new(THREADS),
        mailbox: Mutex::new(Vec::new()),
    };
    let mut kept: Vec<Held> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|id| {
                let sh = &sh;
                s.spawn(move || worker(sh, id))
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    kept.extend(sh.mailbox.into_inner().unwrap());

    // Conservation before draining: free in the pool + cached + held = every unreserved page.
    let held_pages: usize = kept.iter().map(|h| h.pages).sum();
    let cached: u32 = (0..cpus).map(|s| pool.cached_pages(s)).sum();
    let core_free = pool.with_core(|p| p.free_pages());
    assert_eq!(
        core_free as usize + cached as usize + held_pages,
        NR - RESERVED
    );
    assert_eq!(pool.free_pages(), core_free + cached);
    pool.check().unwrap();

    pool.drain_all().unwrap();
    pool.check().unwrap();
    assert_eq!((0..cpus).map(|s| pool.cached_pages(s)).sum::<u32>(), 0);
    assert_eq!(
        pool.with_core(|p| p.free_pages()) as usize,
        NR - RESERVED - held_pages
    );
    check_kept(
        &kept,
        mem,
        |h| {
            assert_eq!(pool.refcount(h.pfn), Ok(h.refs), "{h:?}");
            assert_eq!(pool.order(h.pfn), Ok(Some(h.pages.trailing_zeros())));
        },
        |p| pool.refcount(p),
    );
    for h in &kept {
        for _ in 0..h.refs {
            pool.put(0, h.pfn).unwrap();
        }
    }
    pool.drain_all().unwrap();
    pool.check().unwrap();
    assert_eq!(pool.free_pages() as usize, NR - RESERVED);
}

fn side_table<R: RawLock + Sync>(zero: ZeroPolicy, cpus: usize) {
    let mut s = Storage::new();
    let (pool, mem) = s.side_table(zero);
    hammer::<_, R>(pool, mem, zero, cpus);
}

fn intrusive<R: RawLock + Sync>(zero: ZeroPolicy, cpus: usize) {
    let mut s = Storage::new();
    let (pool, mem) = s.intrusive(zero);
    hammer::<_, R>(pool, mem, zero, cpus);
}

#[test]
fn own_slots_side_table() {
    for zero in [ZeroPolicy::OnFree, ZeroPolicy::OnAlloc, ZeroPolicy::Never] {
        side_table::<SpinLock>(zero, THREADS);
    }
}

#[test]
fn own_slots_intrusive() {
    for zero in [ZeroPolicy::OnFree, ZeroPolicy::OnAlloc, ZeroPolicy::Never] {
        intrusive::<SpinLock>(zero, THREADS);
    }
}

#[test]
fn shared_slots() {
    // Two slots for four threads: slot locks contended.
    side_table::<SpinLock>(ZeroPolicy::OnFree, 2);
    intrusive::<SpinLock>(ZeroPolicy::OnAlloc, 1);
}

#[cfg(feature = "std")]
#[test]
fn std_lock() {
    side_table::<pagebuddy::StdLock>(ZeroPolicy::OnFree, THREADS);
    intrusive::<pagebuddy::StdLock>(ZeroPolicy::Never, 2);
}

/// `check()` while other threads allocate and free through the slots' locks (cached orders and
/// uncached ones, refills and drains included): every call passes, since a block between a
/// stack and a caller is in transit, not lost. Afterwards the pages are all there.
#[test]
fn check_is_exact_under_load() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let mut s = Storage::new();
    let (pool, _) = s.side_table(ZeroPolicy::OnFree);
    let config = CacheConfig::new().batch(4).high(8);
    let cpus = 2;
    let mut slots: Vec<CacheSlot> = (0..cpus).map(|_| CacheSlot::new()).collect();
    let mut blocks = vec![0u32; cache_blocks(cpus, &config)];
    let mut refs: Vec<PageRef> = (0..NR).map(|_| PageRef::new()).collect();
    let pool: CachedPool<'_, _> = CachedPool::new(
        LockedPool::new(pool),
        &mut slots,
        &mut blocks,
        &mut refs,
        config,
    )
    .unwrap();
    let (stop, ops) = (AtomicBool::new(false), AtomicUsize::new(0));
    let checks = std::thread::scope(|s| {
        for cpu in 0..cpus {
            let (pool, stop, ops) = (&pool, &stop, &ops);
            s.spawn(move || {
                let mut held = Vec::new();
                let mut rng = stress::Rng::for_thread(cpu);
                while !stop.load(Ordering::Relaxed) {
                    let order = [0, 0, 0, 1, 2, 3, 4, 5][rng.below(8)];
                    if held.len() < 16 && rng.below(2) == 0 {
                        if let Ok(pfn) = pool.alloc(cpu, order) {
                            held.push(pfn);
                        }
                    } else if let Some(pfn) = held.pop() {
                        pool.put(cpu, pfn).unwrap();
                    }
                    ops.fetch_add(1, Ordering::Relaxed);
                }
                for pfn in held {
                    pool.put(cpu, pfn).unwrap();
                }
            });
        }
        let mut checks = 0;
        let mut result = Ok(());
        while result.is_ok() && (checks < 2_000 || ops.load(Ordering::Relaxed) < 20_000) {
            result = pool
                .check()
                .map_err(|c| format!("check {checks} under load: {c}"));
            checks += 1;
        }
        stop.store(true, Ordering::Relaxed);
        result.map(|()| checks)
    });
    assert!(checks.unwrap() >= 2_000);
    pool.drain_all().unwrap();
    pool.check().unwrap();
    assert_eq!(pool.free_pages() as usize, NR - RESERVED);
}
