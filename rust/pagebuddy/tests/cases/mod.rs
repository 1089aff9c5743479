//! How many cases the proptest suites (`model.rs`, `cache_model.rs`) run.

/// `PROPTEST_CASES` when it is set to a number, else `default`.
pub fn from_env(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
