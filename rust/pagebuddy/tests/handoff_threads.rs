//! A `HandoffPool` hammered from several std threads that take turns under one outer lock (a
//! `Mutex`, as Python's interpreter lock), about one call in four made through a handoff with the
//! outer lock let go first (as the bindings' batch calls run): mixed operations, batches
//! included, then `check()` and exact accounting as in `threads.rs` (no page handed to two
//! holders, the free count is the pool's size less what the threads hold, no write into a held
//! page).

use std::sync::{Barrier, Mutex};

use pagebuddy::{Error, HandoffPool, LinkStore, Pool, ZeroPolicy};

mod stress;

use stress::{check_kept, Held, Holder, Mem, Storage, NR, RESERVED, STEPS, THREADS, TOO_LARGE};

/// The pool and the outer lock every caller takes.
struct Outer<'p, 'a, L: LinkStore> {
    lock: &'p Mutex<()>,
    pool: &'p HandoffPool<'a, L>,
}

impl<'a, L: LinkStore> Outer<'_, 'a, L> {
    /// `f` under the outer lock, or through a handoff once the outer lock is let go.
    fn call<T>(&self, handoff: bool, f: impl FnOnce(&mut Pool<'a, L>) -> T) -> T {
        let held = self.lock.lock().unwrap();
        if handoff {
            // SAFETY: every call on this pool is made holding `self.lock`, held until it returns.
            let mut handoff = unsafe { self.pool.hand_off() };
            drop(held);
            handoff.with(f)
        } else {
            // SAFETY: as above, held until `f` returns.
            unsafe { self.pool.with_outer(f) }
        }
    }
}

fn worker<L: LinkStore>(
    pool: &Outer<'_, '_, L>,
    mem: Mem,
    zero: ZeroPolicy,
    id: usize,
    start: &Barrier,
) -> Vec<Held> {
    let mut me = Holder::new(id);
    start.wait();
    for _ in 0..STEPS {
        let off = me.rng.below(4) == 0;
        match me.rng.below(12) {
            0..=2 => {
                let order = me.rng.below(5) as u32;
                match pool.call(off, |p| p.alloc(order)) {
                    Ok(pfn) => me.took(mem, zero, pfn, order),
                    Err(e) => assert_eq!(e, Error::OutOfMemory { order }),
                }
            }
            3 => {
                let order = me.rng.below(3) as u32;
                let mut pfns = vec![0; 1 + me.rng.below(8)];
                match pool.call(off, |p| p.alloc_many(order, &mut pfns)) {
                    Ok(()) => pfns.iter().for_each(|&pfn| me.took(mem, zero, pfn, order)),
                    Err(e) => assert_eq!(e, Error::OutOfMemory { order }),
                }
            }
            4..=5 if !me.held.is_empty() => {
                me.put_one(mem, |_, pfn| pool.call(off, |p| p.put(pfn)).unwrap())
            }
            6 if !me.held.is_empty() => me.put_one(mem, |_, pfn| {
                pool.call(off, |p| p.put_many(&[pfn])).unwrap()
            }),
            7 if !me.held.is_empty() => me.get_one(|pfn| pool.call(off, |p| p.get(pfn)).unwrap()),
            8 if !me.held.is_empty() => {
                me.split_one(|pfn| pool.call(off, |p| p.split(pfn)).unwrap())
            }
            9 => {
                let pfn = me.out_of_range_pfn();
                let got = pool.call(off, |p| p.put(pfn));
                assert_eq!(got, Err(Error::PfnOutOfRange { pfn }));
                assert_eq!(pool.call(off, |p| p.alloc(40)), Err(TOO_LARGE));
            }
            10 if !me.held.is_empty() => {
                if let Some(tail) = me.tail() {
                    let got = pool.call(off, |p| p.get(tail));
                    assert_eq!(got, Err(Error::NotHeld { pfn: tail }));
                }
            }
            _ => me.check_all(mem),
        }
    }
    me.give_back_half(|pfn| pool.call(false, |p| p.put(pfn)).unwrap())
}

fn hammer<'a, L: LinkStore>(pool: Pool<'a, L>, mem: Mem, zero: ZeroPolicy)
where
    Pool<'a, L>: Send,
{
    let mut pool = HandoffPool::new(pool);
    let lock = Mutex::new(());
    let start = Barrier::new(THREADS);
    let outer = Outer {
        lock: &lock,
        pool: &pool,
    };
    let kept: Vec<Held> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|id| {
                let (outer, start) = (&outer, &start);
                s.spawn(move || worker(outer, mem, zero, id, start))
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let pool = pool.get_mut();
    pool.check().unwrap();
    let held_pages: usize = kept.iter().map(|h| h.pages).sum();
    assert_eq!(pool.free_pages() as usize, NR - RESERVED - held_pages);
    check_kept(
        &kept,
        mem,
        |h| assert_eq!(pool.refcount(h.pfn), Ok(h.refs), "{h:?}"),
        |p| pool.refcount(p),
    );
    for h in &kept {
        for _ in 0..h.refs {
            pool.put(h.pfn).unwrap();
        }
    }
    pool.check().unwrap();
    assert_eq!(pool.free_pages() as usize, NR - RESERVED);
}

#[test]
fn handoff_side_table() {
    for zero in [ZeroPolicy::OnFree, ZeroPolicy::OnAlloc, ZeroPolicy::Never] {
        let mut s = Storage::new();
        let (pool, mem) = s.side_table(zero);
        hammer(pool, mem, zero);
    }
}

#[test]
fn handoff_intrusive() {
    for zero in [ZeroPolicy::OnFree, ZeroPolicy::Never] {
        let mut s = Storage::new();
        let (pool, mem) = s.intrusive(zero);
        hammer(pool, mem, zero);
    }
}
