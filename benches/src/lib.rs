//! Benchmarks of `pagebuddy` against other page allocators: see `benches/alloc.rs`,
//! `benches/footprint.rs` and `docs/benchmarks.md`. This library is intentionally empty.
#![no_std]
