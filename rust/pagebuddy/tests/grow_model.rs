//! Property test: pools that grow and shrink against a literal model of mainline's and Android's
//! rules. Random geometries (room past the initial range, some built empty) and random
//! sequences of alloc, put, admit, reclaim and floors; after every step the results, every free
//! list, every page's state and the free page count must agree, and `check()` must pass.
//!
//! The model writes the rules out plainly: a page is nobody's, free or held; `admit` lists a
//! block at its order and merges it only inside the initial range (mainline's
//! `__hyp_attach_page`: external pages never coalesce); `reclaim` takes the block `alloc` would.
//!
//! `PROPTEST_CASES=N` raises the number of cases (default 512).

mod cases;

use std::collections::VecDeque;

use pagebuddy::{Config, Error, Link, PageMeta, Pool, SideTable, ZeroPolicy, ABSENT, NO_ORDER};
use proptest::prelude::*;

#[derive(Clone, Copy, Debug)]
enum Op {
    Alloc(u32),
    Put(u16),
    Admit(u16, u32),
    Reclaim(u32),
    Floor(u8),
}

/// The rules, literally: per page `None` (nobody's), or `Some((refcount, order))` with `order`
/// `None` for a tail.
struct Model {
    base: u64,
    range: usize,
    max_order: u32,
    pages: Vec<Option<(u16, Option<u32>)>>,
    lists: Vec<VecDeque<u64>>,
    floor: u32,
}

impl Model {
    fn new(base: u64, range: usize, span: usize, max_order: u32) -> Self {
        let mut m = Model {
            base,
            range,
            max_order,
            pages: vec![None; span],
            lists: vec![VecDeque::new(); max_order as usize],
            floor: 0,
        };
        // The initial range: every page held once, then put in increasing pfn order.
        for i in 0..range {
            m.pages[i] = Some((1, Some(0)));
        }
        for i in 0..range {
            m.put(base + i as u64).unwrap();
        }
        m
    }

    fn free_pages(&self) -> u32 {
        (0..self.lists.len())
            .map(|k| (self.lists[k].len() as u32) << k)
            .sum()
    }

    fn idx(&self, pfn: u64) -> Option<usize> {
        let i = pfn.checked_sub(self.base)? as usize;
        (i < self.pages.len()).then_some(i)
    }

    fn alloc(&mut self, order: u32) -> Option<u64> {
        let k = (order..self.max_order).find(|&k| !self.lists[k as usize].is_empty())?;
        let pfn = self.lists[k as usize].pop_front().unwrap();
        let i = self.idx(pfn).unwrap();
        for j in (order..k).rev() {
            let half = pfn + (1 << j);
            self.pages[i + (1 << j)] = Some((0, Some(j)));
            self.lists[j as usize].push_back(half);
        }
        self.pages[i] = Some((1, Some(order)));
        Some(pfn)
    }

    /// Frees the block at `pfn` (refcount already 0) and merges it inside the range only.
    fn attach(&mut self, mut pfn: u64, mut order: u32) {
        let (base, range) = (self.base, self.range as u64);
        let in_range = |p: u64| p >= base && p - base < range;
        let external = !in_range(pfn);
        let at = (pfn - base) as usize;
        self.pages[at] = Some((0, None));
        while !external && order + 1 < self.max_order {
            let buddy = pfn ^ (1 << order);
            if !in_range(buddy) || self.pages[(buddy - base) as usize] != Some((0, Some(order))) {
                break;
            }
            let list = &mut self.lists[order as usize];
            list.remove(list.iter().position(|&p| p == buddy).unwrap());
            self.pages[(buddy - base) as usize] = Some((0, None));
            pfn = pfn.min(buddy);
            order += 1;
        }
        self.pages[(pfn - base) as usize] = Some((0, Some(order)));
        self.lists[order as usize].push_back(pfn);
    }

    fn put(&mut self, pfn: u64) -> Option<()> {
        let i = self.idx(pfn)?;
        let (rc, order) = self.pages[i]?;
        if rc == 0 {
            return None;
        }
        if rc > 1 {
            self.pages[i] = Some((rc - 1, order));
            return Some(());
        }
        self.attach(pfn, order.unwrap());
        Some(())
    }

    fn admit(&mut self, pfn: u64, order: u32) -> Option<()> {
        let i = self.idx(pfn)?;
        let size = 1usize << order;
        let fits = order < self.max_order
            && pfn.trailing_zeros() >= order
            && i + size <= self.pages.len()
            && !(i < self.range && i + size > self.range)
            && self.pages[i..i + size].iter().all(Option::is_none);
        if !fits {
            return None;
        }
        for j in i..i + size {
            self.pages[j] = Some((0, None));
        }
        self.attach(pfn, order);
        Some(())
    }

    fn reclaim(&mut self, order: u32) -> Option<u64> {
        if order >= self.max_order || self.free_pages() < self.floor + (1 << order) {
            return None;
        }
        let pfn = self.alloc(order)?;
        let i = self.idx(pfn).unwrap();
        for j in i..i + (1 << order) {
            self.pages[j] = None;
        }
        Some(pfn)
    }

    /// A page as `PageMeta`.
    fn meta(&self, i: usize) -> PageMeta {
        let mut m = PageMeta::INIT;
        match self.pages[i] {
            None => m.order = ABSENT,
            Some((rc, order)) => {
                m.refcount = rc;
                m.order = order.map_or(NO_ORDER, |k| k as u8);
            }
        }
        m
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u32..6).prop_map(Op::Alloc),
        4 => any::<u16>().prop_map(Op::Put),
        4 => (any::<u16>(), 0u32..6).prop_map(|(p, k)| Op::Admit(p, k)),
        3 => (0u32..6).prop_map(Op::Reclaim),
        1 => any::<u8>().prop_map(Op::Floor),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases::from_env(512),
        ..ProptestConfig::default()
    })]

    #[test]
    fn grow_and_shrink_as_the_model(
        range in prop_oneof![Just(0usize), 1usize..40],
        room in 1usize..40,
        base in prop_oneof![Just(0u64), Just(3), Just(64), 0u64..200],
        cap in 1u32..12,
        ops in prop::collection::vec(op(), 0..120),
    ) {
        let span = range + room;
        let mut meta = vec![PageMeta::INIT; span];
        let mut links = vec![Link::EMPTY; span];
        let config = Config::new(range)
            .max_pages(span)
            .base_pfn(base)
            .order_cap(cap)
            .zero(ZeroPolicy::Never);
        let mut pool = Pool::without_arena(&mut meta, SideTable::new(&mut links), config).unwrap();
        let mut model = Model::new(base, range, span, pool.max_order());
        let mut held: Vec<u64> = Vec::new();
        for op in ops {
            match op {
                Op::Alloc(k) => {
                    let got = pool.alloc(k).ok();
                    prop_assert_eq!(got, model.alloc(k));
                    held.extend(got);
                }
                Op::Put(i) => {
                    // A held block most of the time, else any pfn near the pool.
                    let pfn = match held.len() {
                        0 => base + u64::from(i) % (span as u64 + 2),
                        n => held.swap_remove(i as usize % n),
                    };
                    prop_assert_eq!(pool.put(pfn).ok(), model.put(pfn));
                }
                Op::Admit(i, k) => {
                    let pfn = base + u64::from(i) % (span as u64 + 1);
                    let got = pool.admit(pfn, k);
                    prop_assert_eq!(got.ok(), model.admit(pfn, k), "admit({}, {}): {:?}", pfn, k, got);
                }
                Op::Reclaim(k) => prop_assert_eq!(pool.reclaim(k).ok(), model.reclaim(k)),
                Op::Floor(n) => {
                    pool.set_min_free_pages(u32::from(n) % (span as u32 + 1));
                    model.floor = pool.min_free_pages();
                }
            }
            prop_assert_eq!(pool.free_pages(), model.free_pages());
            for k in 0..pool.max_order() {
                let lists: Vec<u64> = pool.free_list(k).collect();
                prop_assert_eq!(&lists, &Vec::from(model.lists[k as usize].clone()));
            }
            for i in 0..span {
                let pfn = base + i as u64;
                let want = model.meta(i);
                match pool.page(pfn) {
                    Ok(m) => prop_assert_eq!(m, want),
                    Err(e) => {
                        prop_assert_eq!(e, Error::NotCovered { pfn });
                        prop_assert_eq!(want.order, ABSENT);
                    }
                }
            }
            pool.check().unwrap();
        }
    }
}
