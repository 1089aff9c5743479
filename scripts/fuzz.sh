#!/usr/bin/env bash
# Runs one cargo-fuzz target of the core for a number of seconds:
#   scripts/fuzz.sh TARGET SECONDS [extra libFuzzer flags...]
# TARGET is `differential`, `scribble` or `attach`. Needs cargo-fuzz (`cargo install cargo-fuzz
# --locked`) and builds with the active toolchain: libFuzzer builds need rustc's `-Z` flags,
# which a nightly rustc accepts as they are and a stable or beta one once RUSTC_BOOTSTRAP=1 is
# set (done here). Without cargo-fuzz it says "skipped" and exits 0, except under CI (CI set),
# where it fails: a CI run must not pass having fuzzed nothing.
# Builds with debug assertions (overflow checks) and the sanitizer FUZZ_SANITIZER (default
# `address`, AddressSanitizer, whose runtime ships with the x86_64-unknown-linux-gnu std of
# every channel; `none` builds without).
set -euo pipefail
cd "$(dirname "$0")/.."

target=${1:?usage: scripts/fuzz.sh TARGET SECONDS [libFuzzer flags...]}
seconds=${2:?usage: scripts/fuzz.sh TARGET SECONDS [libFuzzer flags...]}
shift 2
sanitizer=${FUZZ_SANITIZER:-address}

if ! cargo fuzz --version >/dev/null 2>&1; then
    if [ -n "${CI:-}" ]; then
        echo "fuzz: error ($target): cargo-fuzz is not installed (cargo install cargo-fuzz --locked)" >&2
        exit 1
    fi
    echo "fuzz: skipped ($target): cargo-fuzz is not installed (cargo install cargo-fuzz --locked)"
    exit 0
fi
if ! rustc -V | grep -q -- '-nightly'; then
    export RUSTC_BOOTSTRAP=1
fi
echo "fuzz: $target for ${seconds}s with $(rustc -V), $(cargo fuzz --version), sanitizer $sanitizer"

# New inputs go to fuzz/target/corpus/TARGET (not committed); the committed seeds in
# fuzz/corpus/TARGET are read as a second corpus directory.
root=$PWD
work="$root/fuzz/target/corpus/$target"
mkdir -p "$work" "$root/fuzz/corpus/$target"
cd fuzz
exec cargo fuzz run --debug-assertions --sanitizer "$sanitizer" "$target" "$work" \
    "$root/fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "$@"
