#!/usr/bin/env bash
# Runs one cargo-fuzz target of the core for a number of seconds:
#   scripts/fuzz.sh TARGET SECONDS [extra libFuzzer flags...]
# TARGET is `differential`, `scribble` or `attach`. Needs a nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz`); without them it says so and exits 0, so CI can call it anywhere.
# Builds with debug assertions (overflow checks) and AddressSanitizer, the cargo-fuzz default.
set -euo pipefail
cd "$(dirname "$0")/.."

target=${1:?usage: scripts/fuzz.sh TARGET SECONDS [libFuzzer flags...]}
seconds=${2:?usage: scripts/fuzz.sh TARGET SECONDS [libFuzzer flags...]}
shift 2

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: skipped ($target): no nightly toolchain (rustup toolchain install nightly)"
    exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: skipped ($target): cargo-fuzz is not installed (cargo install cargo-fuzz)"
    exit 0
fi

# New inputs go to fuzz/target/corpus/TARGET (not committed); the committed seeds in
# fuzz/corpus/TARGET are read as a second corpus directory.
root=$PWD
work="$root/fuzz/target/corpus/$target"
mkdir -p "$work" "$root/fuzz/corpus/$target"
cd fuzz
exec cargo +nightly fuzz run --debug-assertions "$target" "$work" "$root/fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "$@"
