#!/usr/bin/env bash
# Runs every test binary of the core crate (unit tests and tests/*.rs) under valgrind memcheck:
#   scripts/valgrind.sh
# Fails on the first binary with a memcheck error or a definite/possible leak. The property test
# runs PROPTEST_CASES cases (default here 32: valgrind is ~50x slower than native).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v valgrind >/dev/null; then
    echo "valgrind: not installed (apt-get install valgrind)" >&2
    exit 1
fi
export PROPTEST_CASES=${PROPTEST_CASES:-32}

# The test executables, as cargo reports them.
mapfile -t bins < <(
    cargo test -p pagebuddy --all-features --tests --no-run --message-format=json 2>/dev/null |
        python3 -c '
import json, sys
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["profile"]["test"]:
        print(msg["executable"])
'
)
if [ ${#bins[@]} -eq 0 ]; then
    echo "valgrind: no test binaries found" >&2
    exit 1
fi

status=0
for bin in "${bins[@]}"; do
    echo "== valgrind $(basename "$bin")"
    log=$(mktemp)
    if valgrind --error-exitcode=1 --leak-check=full --fair-sched=yes \
        --suppressions=scripts/valgrind.supp --log-file="$log" \
        "$bin" --test-threads=2 -q; then
        grep -E "ERROR SUMMARY|definitely lost|possibly lost|suppressed:|in use at exit" "$log" | sed 's/^==[0-9]*== //'
    else
        status=1
        cat "$log"
    fi
    rm -f "$log"
done
exit $status
