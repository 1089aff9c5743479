//! Property test: random geometries and operation sequences, the pool against a literal model of
//! the contract, for both link stores and all three zero policies, with `check()` and a full
//! comparison (return values, every free list, every page's refcount and order, counts, arena
//! bytes where defined) after every step.
//!
//! `PROPTEST_CASES=N` raises the number of cases (default 1024).

mod cases;
mod common;

use common::{Case, Geo, Op, Pick};
use proptest::prelude::*;

fn base_pfn() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(5),
        Just(37),
        Just(1 << 40),
        0u64..130,
        (0u64..200).prop_map(|d| u64::MAX - 70 - d),
        any::<u64>().prop_map(|b| b >> 2),
    ]
}

fn geo() -> impl Strategy<Value = Geo> {
    (
        1usize..=70,
        base_pfn(),
        1u32..=11,
        prop::bool::weighted(0.15),
        any::<u16>(),
        0..8u8,
    )
        .prop_map(|(nr_pages, base_pfn, order_cap, big_cap, r, ps)| Geo {
            nr_pages,
            base_pfn,
            // A third of the pools have reserved pages.
            reserved: if r % 3 == 0 {
                r as usize % (nr_pages + 1)
            } else {
                0
            },
            order_cap: if big_cap { 24 } else { order_cap },
            page_size: if ps == 0 { 128 } else { 64 },
        })
}

fn pick() -> impl Strategy<Value = Pick> {
    prop_oneof![
        5 => any::<u16>().prop_map(Pick::Held),
        1 => any::<u16>().prop_map(Pick::Unheld),
        2 => any::<u16>().prop_map(Pick::Near),
        1 => any::<u64>().prop_map(Pick::Raw),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u32..13).prop_map(Op::Alloc),
        1 => any::<u32>().prop_map(Op::Alloc),
        5 => pick().prop_map(Op::Put),
        2 => pick().prop_map(Op::Get),
        1 => (pick(), prop_oneof![20 => 0u16..8, 1 => Just(u16::MAX)])
            .prop_map(|(p, n)| Op::GetN(p, n)),
        2 => pick().prop_map(Op::Split),
        2 => (pick(), any::<u8>()).prop_map(|(p, b)| Op::Write(p, b)),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (geo(), prop::collection::vec(op(), 0..100)).prop_map(|(geo, ops)| Case { geo, ops })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases::from_env(1024), ..ProptestConfig::default() })]

    #[test]
    fn pool_matches_model(case in case()) {
        common::run(&case);
    }
}

/// The model itself, on the contract's worked examples: nothing else checks the checker.
#[test]
fn model_matches_known_states() {
    let geo = Geo {
        nr_pages: 37,
        base_pfn: 5,
        reserved: 1,
        order_cap: 11,
        page_size: 64,
    };
    let mut m = common::Model::new(geo, common::ZeroPolicy::OnFree);
    let lists: Vec<Vec<u64>> = m
        .lists
        .iter()
        .map(|l| l.iter().copied().collect())
        .collect();
    assert_eq!(
        lists,
        [vec![], vec![6, 40], vec![], vec![8, 32], vec![16], vec![]]
    );
    assert_eq!(m.alloc(3), Ok(8));
    assert_eq!(
        m.alloc(9),
        Err(pagebuddy::Error::InvalidOrder {
            order: 9,
            max_order: 6
        })
    );
    m.put(8).unwrap();
    assert_eq!(m.lists[3], [32, 8]);
    let nine = Geo {
        nr_pages: 9,
        base_pfn: 0,
        reserved: 0,
        order_cap: 11,
        page_size: 64,
    };
    let m = common::Model::new(nine, common::ZeroPolicy::Never);
    assert_eq!(m.lists[3], [0]);
    assert_eq!(m.lists[0], [8]);
}

/// Every input in the differential fuzz corpus, replayed (so regressions found by fuzzing stay
/// covered where no fuzzing toolchain is installed). The corpus lives in the repository, beside
/// the crate, and is not part of the packaged crate: there (the crate's `Cargo.toml.orig`, which
/// `cargo package` writes, is present) there is nothing to replay and the test says so; in the
/// repository the corpus must be there and hold at least one input.
#[test]
fn fuzz_corpus_replays() {
    let crate_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = crate_dir.join("../../fuzz/corpus/differential");
    if crate_dir.join("Cargo.toml.orig").exists() {
        println!("packaged crate: the fuzz corpus is not shipped, nothing to replay");
        return;
    }
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the fuzz corpus {} cannot be read: {e}", dir.display()));
    let mut replayed = 0usize;
    for entry in entries {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("corpus input {} cannot be read: {e}", path.display()));
        common::run(&common::decode(&data));
        replayed += 1;
    }
    println!("replayed {replayed} corpus inputs from {}", dir.display());
    assert!(
        replayed > 0,
        "the fuzz corpus {} holds no input",
        dir.display()
    );
}

/// Hand-picked sequences that reach the rarer paths on purpose.
#[test]
fn directed_sequences() {
    let g = |nr_pages, base_pfn, reserved, order_cap| Geo {
        nr_pages,
        base_pfn,
        reserved,
        order_cap,
        page_size: 64,
    };
    let cases = [
        // Refcount overflow at 65535, then back down.
        Case {
            geo: g(2, 0, 0, 11),
            ops: vec![
                Op::Alloc(0),
                Op::GetN(Pick::Held(0), u16::MAX),
                Op::Put(Pick::Held(0)),
                Op::Get(Pick::Held(0)),
                Op::Get(Pick::Held(0)),
            ],
        },
        // Split of a reserved page, of a big block, then puts of every page in reverse.
        Case {
            geo: g(37, 5, 3, 11),
            ops: [
                Op::Split(Pick::Held(0)),
                Op::Alloc(4),
                Op::Split(Pick::Held(3)),
            ]
            .into_iter()
            .chain((0..20).map(|i| Op::Put(Pick::Held(19 - i))))
            .collect(),
        },
        // A pool at the very top of the pfn space.
        Case {
            geo: g(70, u64::MAX - 70, 0, 24),
            ops: (0..30)
                .map(|i| {
                    if i % 3 == 2 {
                        Op::Put(Pick::Held(i))
                    } else {
                        Op::Alloc(i as u32 % 4)
                    }
                })
                .collect(),
        },
    ];
    for case in &cases {
        common::run(case);
    }
}
