//! Differential fuzzing: the input is decoded into a geometry and an operation sequence, which is
//! run on the pool and on the literal model of `rust/pagebuddy/tests/common`, for both link stores
//! and all three zero policies, with `check()` and a full comparison after every step.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../rust/pagebuddy/tests/common/mod.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    common::run(&common::decode(data));
});
