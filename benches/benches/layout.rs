//! Where a page's bookkeeping lives: today's two arrays (4 bytes of `PageMeta` per page in one,
//! 8 bytes of free-list links in the side table) against one 12-byte record per page holding
//! both, so that the policy touches one cache line per page instead of two.
//!
//! Both layouts run one prototype of the exact policy, written after `pool.rs` and `store.rs`
//! step for step (split on alloc, appending each upper half; coalesce on free; FIFO lists; every
//! link range-checked and the neighbours' back-links checked before the first write; the buddy
//! checks and the list's tail read before a free changes anything), generic over the layout.
//! The real `Pool` (side table) runs in the same criterion groups, so that the two-array
//! prototype can be compared with what it copies. Workloads and pool as in `alloc.rs`: 2^18
//! pages, orders capped at 11, zero never; `hot`, `churn` and `mixed` from `common`.
//!
//! A record of 12 bytes sometimes straddles two lines; a third layout pads it to 16 bytes, four
//! to a line, none straddling. And since a layout can only save misses where the state
//! outgrows the caches, churn runs a second time at 2^22 pages (48 MiB of state, past this
//! kind of machine's last-level cache; `layout-churn-22`), on the prototypes only (the real
//! pool's arena would be 16 GiB).
//!
//! `BENCH_SHORT=1` shortens everything, as in `alloc.rs`.

mod common;

use std::hint::black_box;
use std::time::Duration;

use common::*;
use pagebuddy::ZeroPolicy;

const NIL: u32 = u32::MAX;
const NO_ORDER: u8 = u8::MAX;
const ORDERS: usize = 32;

#[derive(Clone, Copy)]
struct Meta {
    refcount: u16,
    order: u8,
    _batch: u8,
}

impl Meta {
    const INIT: Meta = Meta {
        refcount: 0,
        order: NO_ORDER,
        _batch: 0,
    };
    const fn new(refcount: u16, order: u8) -> Self {
        Meta {
            refcount,
            order,
            _batch: 0,
        }
    }
}

#[derive(Clone, Copy)]
struct Link {
    prev: u32,
    next: u32,
}

const EMPTY: Link = Link {
    prev: NIL,
    next: NIL,
};

/// Where the metadata and the links of page `i` live.
trait Layout {
    fn new(n: usize) -> Self;
    fn meta(&self, i: u32) -> Meta;
    fn meta_mut(&mut self, i: u32) -> &mut Meta;
    fn link(&self, i: u32) -> Link;
    fn set_link(&mut self, i: u32, l: Link);
}

/// Today's layout: `PageMeta` in one array, the side table's links in another.
struct TwoArrays {
    meta: Vec<Meta>,
    links: Vec<Link>,
}

impl Layout for TwoArrays {
    fn new(n: usize) -> Self {
        TwoArrays {
            meta: vec![Meta::INIT; n],
            links: vec![EMPTY; n],
        }
    }
    #[inline]
    fn meta(&self, i: u32) -> Meta {
        self.meta[i as usize]
    }
    #[inline]
    fn meta_mut(&mut self, i: u32) -> &mut Meta {
        &mut self.meta[i as usize]
    }
    #[inline]
    fn link(&self, i: u32) -> Link {
        self.links.get(i as usize).copied().unwrap_or(EMPTY)
    }
    #[inline]
    fn set_link(&mut self, i: u32, l: Link) {
        if let Some(slot) = self.links.get_mut(i as usize) {
            *slot = l;
        }
    }
}

/// A layout of one record per page, the metadata and the links side by side: `$rec`, aligned
/// to `$align` bytes (its size rounds up to that), and `$layout`, the array of them.
macro_rules! record_layout {
    ($(#[$doc:meta])* $rec:ident, $layout:ident, $align:literal) => {
        #[derive(Clone, Copy)]
        #[repr(C, align($align))]
        struct $rec {
            meta: Meta,
            link: Link,
        }

        $(#[$doc])*
        struct $layout(Vec<$rec>);

        impl Layout for $layout {
            fn new(n: usize) -> Self {
                $layout(vec![
                    $rec {
                        meta: Meta::INIT,
                        link: EMPTY
                    };
                    n
                ])
            }
            #[inline]
            fn meta(&self, i: u32) -> Meta {
                self.0[i as usize].meta
            }
            #[inline]
            fn meta_mut(&mut self, i: u32) -> &mut Meta {
                &mut self.0[i as usize].meta
            }
            #[inline]
            fn link(&self, i: u32) -> Link {
                self.0.get(i as usize).map_or(EMPTY, |r| r.link)
            }
            #[inline]
            fn set_link(&mut self, i: u32, l: Link) {
                if let Some(r) = self.0.get_mut(i as usize) {
                    r.link = l;
                }
            }
        }
    };
}

record_layout!(
    /// One 12-byte record per page: some straddle two cache lines.
    Record,
    OneRecord,
    4
);
record_layout!(
    /// One record per page padded to 16 bytes: four to a line, none straddling two.
    Record16,
    OneRecord16,
    16
);

/// The exact policy over a layout (base pfn 0, so pfn == index).
struct Proto<S> {
    s: S,
    head: [u32; ORDERS],
    tail: [u32; ORDERS],
    len: [u32; ORDERS],
    mask: u32,
    nr: u32,
    max_order: u32,
    free_pages: u32,
}

type R<T> = Result<T, ()>;

#[inline(always)]
fn slot(order: u32) -> usize {
    order as usize % ORDERS
}

impl<S: Layout> Proto<S> {
    /// Every page free, as the largest aligned blocks, listed in increasing pfn order.
    fn new(n: usize, max_order: u32) -> Self {
        let mut p = Proto {
            s: S::new(n),
            head: [NIL; ORDERS],
            tail: [NIL; ORDERS],
            len: [0; ORDERS],
            mask: 0,
            nr: n as u32,
            max_order,
            free_pages: 0,
        };
        let top = max_order - 1;
        let mut idx = 0;
        while idx < n as u32 {
            *p.s.meta_mut(idx) = Meta::new(0, top as u8);
            p.append(idx, top).unwrap_or_else(|()| fail("populate"));
            p.free_pages += 1 << top;
            idx += 1 << top;
        }
        p
    }

    #[inline]
    fn link(&self, idx: u32) -> R<Link> {
        let l = self.s.link(idx);
        let ok = |i: u32| i.wrapping_add(1) <= self.nr;
        if ok(l.prev) && ok(l.next) {
            Ok(l)
        } else {
            Err(())
        }
    }

    #[inline]
    fn check_append(&self, order: u32) -> R<()> {
        match self.tail[slot(order)] {
            NIL => Ok(()),
            t => self.link(t).map(drop),
        }
    }

    #[inline]
    fn append(&mut self, idx: u32, order: u32) -> R<()> {
        let o = slot(order);
        let tail = self.tail[o];
        if tail != NIL {
            let mut t = self.link(tail)?;
            t.next = idx;
            self.s.set_link(tail, t);
        } else {
            self.head[o] = idx;
            self.mask |= 1 << o;
        }
        self.s.set_link(
            idx,
            Link {
                prev: tail,
                next: NIL,
            },
        );
        self.tail[o] = idx;
        self.len[o] += 1;
        Ok(())
    }

    #[inline(always)]
    fn neighbours(&self, idx: u32, order: u32) -> R<(Link, Option<Link>, Option<Link>)> {
        let o = slot(order);
        let me = self.link(idx)?;
        let prev = if me.prev == NIL {
            None
        } else {
            Some(self.link(me.prev)?)
        };
        let next = if me.next == NIL {
            None
        } else {
            Some(self.link(me.next)?)
        };
        let consistent = match prev {
            Some(p) => p.next == idx,
            None => self.head[o] == idx,
        } && match next {
            Some(n) => n.prev == idx,
            None => self.tail[o] == idx,
        } && self.len[o] > 0;
        if !consistent {
            return Err(());
        }
        Ok((me, prev, next))
    }

    #[inline(always)]
    fn remove(&mut self, idx: u32, order: u32) -> R<()> {
        let o = slot(order);
        let (me, prev, next) = self.neighbours(idx, order)?;
        match prev {
            Some(mut p) => {
                p.next = me.next;
                self.s.set_link(me.prev, p);
            }
            None => self.head[o] = me.next,
        }
        match next {
            Some(mut n) => {
                n.prev = me.prev;
                self.s.set_link(me.next, n);
            }
            None => self.tail[o] = me.prev,
        }
        self.len[o] -= 1;
        if self.len[o] == 0 {
            self.mask &= !(1 << o);
        }
        Ok(())
    }

    #[inline]
    fn buddy_avail(&self, idx: u32, order: u32) -> Option<u32> {
        let buddy = idx ^ (1 << order);
        if buddy >= self.nr {
            return None;
        }
        let m = self.s.meta(buddy);
        (m.refcount == 0 && u32::from(m.order) == order).then_some(buddy)
    }

    fn alloc(&mut self, order: u32) -> R<u32> {
        if order >= self.max_order {
            return Err(());
        }
        let avail = self.mask >> order;
        if avail == 0 {
            return Err(());
        }
        let found = order + avail.trailing_zeros();
        let idx = match self.head.get(found as usize) {
            Some(&h) if h != NIL => h,
            _ => return Err(()),
        };
        let m = self.s.meta(idx);
        if !(m.refcount == 0 && m.order != NO_ORDER && u32::from(m.order) == found) {
            return Err(());
        }
        self.remove(idx, found)?;
        let mut k = found;
        while k > order {
            k -= 1;
            let buddy = idx + (1 << k);
            *self.s.meta_mut(buddy) = Meta::new(0, k as u8);
            self.append(buddy, k)?;
        }
        *self.s.meta_mut(idx) = Meta::new(1, order as u8);
        self.free_pages -= 1 << order;
        Ok(idx)
    }

    fn put(&mut self, idx: u32) -> R<()> {
        if idx >= self.nr {
            return Err(());
        }
        let m = self.s.meta(idx);
        if m.refcount == 0 {
            return Err(());
        }
        if m.refcount > 1 {
            self.s.meta_mut(idx).refcount -= 1;
            return Ok(());
        }
        let order = u32::from(m.order);
        if order >= self.max_order {
            return Err(());
        }
        // check_attach: every link the merge will touch, read before any write.
        let (mut head, mut k) = (idx, order);
        while k + 1 < self.max_order {
            let Some(buddy) = self.buddy_avail(head, k) else {
                break;
            };
            self.neighbours(buddy, k)?;
            head = head.min(buddy);
            k += 1;
        }
        self.check_append(k)?;
        self.s.meta_mut(idx).refcount = 0;
        // attach
        self.free_pages += 1 << order;
        self.s.meta_mut(idx).order = NO_ORDER;
        let (mut head, mut k) = (idx, order);
        while k + 1 < self.max_order {
            let Some(buddy) = self.buddy_avail(head, k) else {
                break;
            };
            self.remove(buddy, k)?;
            self.s.meta_mut(buddy).order = NO_ORDER;
            head = head.min(buddy);
            k += 1;
        }
        self.s.meta_mut(head).order = k as u8;
        self.append(head, k)
    }
}

impl<S: Layout> PageAlloc for Proto<S> {
    #[inline]
    fn alloc(&mut self, order: u32) -> Option<usize> {
        Proto::alloc(self, order).ok().map(|i| i as usize)
    }
    #[inline]
    fn free(&mut self, handle: usize, _order: u32) {
        if self.put(handle as u32).is_err() {
            fail("prototype: put failed")
        }
    }
}

/// Pages of the second churn run: past the last-level cache.
const LARGE_SHIFT: u32 = 22;

type Group<'c> = criterion::BenchmarkGroup<'c, criterion::measurement::WallTime>;

fn hot<A: PageAlloc>(g: &mut Group<'_>, id: &str, a: &mut A) {
    g.bench_function(id, |b| {
        b.iter(|| {
            let h = a.alloc(0).unwrap_or_else(|| fail("hot: alloc failed"));
            a.free(black_box(h), 0);
        })
    });
}

fn churn<A: PageAlloc>(g: &mut Group<'_>, id: &str, a: &mut A, n: usize) {
    // Its own minute for the untimed setup (one for the whole run ran out in full mode).
    let mut held = churn_setup_at(a, n, &Budget::new(Duration::from_secs(60)))
        .unwrap_or_else(|_| fail("churn setup"));
    let mut rng = Rng::new(SEED_CHURN);
    g.bench_function(id, |b| b.iter(|| churn_step(a, &mut held, &mut rng)));
}

fn mixed<A: PageAlloc>(g: &mut Group<'_>, id: &str, a: &mut A) {
    // Each untimed warm-up gets its own minute (one for the whole run ran out in full mode).
    let mut m = Mixed::new();
    m.warm(a, &Budget::new(Duration::from_secs(60)))
        .unwrap_or_else(|_| fail("mixed warm"));
    g.bench_function(id, |b| b.iter(|| m.step(a)));
}

/// `$run(group, id, prototype $(, arg)*)` for each prototype over `$n` pages, one at a time.
macro_rules! prototypes {
    ($g:expr, $n:expr, $run:ident $(, $arg:expr)*) => {
        $run($g, "two-arrays", &mut Proto::<TwoArrays>::new($n, ORDER_CAP) $(, $arg)*);
        $run($g, "one-record", &mut Proto::<OneRecord>::new($n, ORDER_CAP) $(, $arg)*);
        $run($g, "one-record-16", &mut Proto::<OneRecord16>::new($n, ORDER_CAP) $(, $arg)*);
    };
}

fn main() {
    let mut c = criterion(short());
    let mut mem = Mem::new();
    let mut g = c.benchmark_group("layout-hot");
    {
        // SAFETY: each pool over `mem` is dropped at the end of its block, before the next
        // is made.
        let mut a = unsafe { Pb::side(&mut mem, ZeroPolicy::Never) };
        hot(&mut g, "pool", &mut a);
    }
    prototypes!(&mut g, N, hot);
    g.finish();

    let mut g = c.benchmark_group("layout-churn");
    {
        // SAFETY: as above.
        let mut a = unsafe { Pb::side(&mut mem, ZeroPolicy::Never) };
        churn(&mut g, "pool", &mut a, N);
    }
    prototypes!(&mut g, N, churn, N);
    g.finish();

    let mut g = c.benchmark_group("layout-mixed");
    {
        // SAFETY: as above.
        let mut a = unsafe { Pb::side(&mut mem, ZeroPolicy::Never) };
        mixed(&mut g, "pool", &mut a);
    }
    prototypes!(&mut g, N, mixed);
    g.finish();
    drop(mem);

    let large = 1 << LARGE_SHIFT;
    let mut g = c.benchmark_group(format!("layout-churn-{LARGE_SHIFT}"));
    prototypes!(&mut g, large, churn, large);
    g.finish();
    c.final_summary();
}
