#!/usr/bin/env bash
# Runs every benchmark and writes docs/benchmarks.md from that run:
#   - the Rust benchmarks (criterion; benches/benches/alloc.rs) against the peer allocators,
#   - the per-CPU caches: cached vs exact, threads scaling, zeroing (benches/benches/cached.rs),
#   - the metadata layout: two arrays against one record per page (benches/benches/layout.rs),
#   - the metadata footprint measurement (benches/benches/footprint.rs),
#   - the floor: a dependent random read over each pool's state, mapped as the pool's is,
#     beside hot, churn and mixed at 2^14, 2^18 and 2^22 pages (benches/benches/floor.rs),
#   - the core's side of the Python benchmark: the same calls on the same pool state
#     (benches/benches/binding.rs),
#   - instruction counts of the hot alloc+free pair under callgrind, when valgrind is installed,
#   - the Python benchmark (benches/python_bench.py --quick --json), when it can run, with the
#     side table's floor measured just before and just after it (python_floor),
# then scripts/bench_report.py turns the results into the page.
#
# Usage: scripts/bench.sh          short mode (well under 5 minutes once built)
#        scripts/bench.sh --full   criterion's default warm-up, measurement and sample size
#        scripts/bench.sh --python the Python benchmark and the core's side of it only (short
#                                  mode); rewrites the Python section of docs/benchmarks.md and
#                                  its rows of the targets table, and leaves the rest as it is
set -euo pipefail
cd "$(dirname "$0")/.."

mode=short
python_only=0
case "${1:-}" in
    "") ;;
    --full) mode=full ;;
    --python) python_only=1 ;;
    *) echo "usage: $0 [--full | --python]" >&2; exit 2 ;;
esac
command="scripts/bench.sh${1:+ $1}"
out=target/pagebuddy-bench
mkdir -p "$out"
rm -f "$out"/python.json "$out"/python.status "$out"/python_floor.txt
# Criterion keeps old estimates around; drop this suite's so that the page can only show this run.
rm -rf target/criterion/binding
if [ "$python_only" = 0 ]; then
    rm -f "$out"/alloc.json "$out"/footprint.json "$out"/instructions.txt "$out"/cached.json \
        "$out"/floor.json
    rm -rf target/criterion/{hot,churn,fill-drain,mixed,huge,init,init-zeroed,cached-hot,cached-churn,cached-mixed,layout-hot,layout-churn,layout-mixed,layout-churn-22}
fi

if [ "$mode" = short ]; then
    export BENCH_SHORT=1
else
    unset BENCH_SHORT
fi

t0=$(date +%s)
cat /proc/loadavg > "$out"/loadavg.before

# The executable `cargo bench` builds for bench target $1 (built already), on stdout.
bench_exe() {
    cargo bench -p pagebuddy-benches --bench "$1" --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$1"
}

# The floor beside the Python benchmark: the side table's (huge pages), at each size the Python
# benchmark's scaling part runs, measured as the floor benchmark's profile mode measures it,
# just before ($1 = before) or just after ($1 = after) it and run as it is (not pinned), so that
# the batch's multiple of the floor compares two figures of the same moment. Appends
# "<when> <pages> <ns>" lines to "$out"/python_floor.txt.
python_floor() {
    local exe shift ns
    exe=$(bench_exe floor)
    [ -n "$exe" ] || return 0
    for shift in 14 18 22; do
        ns=$(BENCH_FLOOR_PROFILE="floor/side-table/$shift:2000000" BENCH_FLOOR_HUGE=1 \
            BENCH_FLOOR_PREFAULT=1 "$exe" 2>&1 | awk '/ns per operation/ { print $1 }')
        [ -n "$ns" ] && echo "$1 $(( 1 << shift )) $ns" >> "$out"/python_floor.txt
    done
    return 0
}

# The Python benchmark into "$out"/python.json, or why not into "$out"/python.status.
python_bench() {
    echo "== Python benchmark" >&2
    py=python3
    [ -x .venv/bin/python ] && py=.venv/bin/python
    if [ ! -f benches/python_bench.py ]; then
        echo "not run: benches/python_bench.py is not in this tree" > "$out"/python.status
    else
        if ! "$py" -c 'import pagebuddy._native' 2>/dev/null; then
            echo "building the native module (make develop)" >&2
            make develop >&2 || true
            [ -x .venv/bin/python ] && py=.venv/bin/python
        fi
        if ! "$py" -c 'import pagebuddy._native' 2>/dev/null; then
            echo "not run: the native module pagebuddy._native could not be imported or built" \
                > "$out"/python.status
        elif python_floor before &&
            "$py" benches/python_bench.py --quick --json > "$out"/python.json 2> "$out"/python.log
        then
            python_floor after
        else
            echo "not run: benches/python_bench.py failed: $(tail -n 1 "$out"/python.log)" \
                > "$out"/python.status
            rm -f "$out"/python.json
        fi
    fi
}

# The single-threaded benchmarks run pinned to one CPU where there are two or more, so that the
# scheduler does not move a timed loop from one CPU (and its caches) to another mid-run. The
# threaded benchmark (cached) and the Python benchmark are not pinned.
pin=()
if command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -ge 2 ]; then
    pin=(taskset -c 1)
fi
echo "${pin[*]:-none}" > "$out"/pin.txt

if [ "$python_only" = 1 ]; then
    echo "== building the core's side of the Python benchmark, and the floor" >&2
    cargo bench -p pagebuddy-benches --bench binding --no-run
    cargo bench -p pagebuddy-benches --bench floor --no-run
    t_built=$(date +%s)
    echo "== Rust: the core's side of the Python benchmark" >&2
    "${pin[@]}" cargo bench -p pagebuddy-benches --bench binding 2>&1 | tee "$out"/binding.log
    python_bench
    cat /proc/loadavg > "$out"/loadavg.after
    t1=$(date +%s)
    echo "== writing the Python section of docs/benchmarks.md" >&2
    python3 scripts/bench_report.py --python-only --command "$command" \
        --seconds "$(( t1 - t_built ))" --build-seconds "$(( t_built - t0 ))" \
        --out docs/benchmarks.md
    exit 0
fi

echo "== building the benchmarks" >&2
cargo bench -p pagebuddy-benches --no-run
t_built=$(date +%s)


echo "== Rust: criterion benchmarks ($mode mode)" >&2
"${pin[@]}" cargo bench -p pagebuddy-benches --bench alloc 2>&1 | tee "$out"/alloc.log

echo "== Rust: per-CPU caches, threads and zeroing" >&2
cargo bench -p pagebuddy-benches --bench cached 2>&1 | tee "$out"/cached.log

echo "== Rust: the core's side of the Python benchmark" >&2
"${pin[@]}" cargo bench -p pagebuddy-benches --bench binding 2>&1 | tee "$out"/binding.log

echo "== Rust: metadata layout (two arrays or one record per page)" >&2
"${pin[@]}" cargo bench -p pagebuddy-benches --bench layout 2>&1 | tee "$out"/layout.log

echo "== Rust: the floor (a dependent random read over each pool's state) at 2^14, 2^18, 2^22 pages" >&2
"${pin[@]}" cargo bench -p pagebuddy-benches --bench floor 2>&1 | tee "$out"/floor.log

echo "== Rust: metadata footprint" >&2
"${pin[@]}" cargo bench -p pagebuddy-benches --bench footprint 2>&1 | tee "$out"/footprint.log

if command -v valgrind >/dev/null 2>&1; then
    echo "== Rust: instructions per operation (callgrind)" >&2
    exe=$(bench_exe alloc)
    irefs() {
        BENCH_PROFILE="$1:$2" BENCH_PROFILE_PREFAULT=0 valgrind --tool=callgrind \
            --callgrind-out-file=/dev/null "$exe" 2>&1 |
            awk '/I[ ]+refs:/ { gsub(",", "", $NF); print $NF }'
    }
    # The difference between two loop lengths cancels the setup. Heap and free-list are left
    # out of churn: their setup alone takes minutes under valgrind.
    count() {
        local a b
        a=$(irefs "$1/$2" "$3")
        b=$(irefs "$1/$2" "$4")
        if [ -n "$a" ] && [ -n "$b" ]; then
            echo "$1 $2 $(( (b - a) / ($4 - $3) ))" | tee -a "$out"/instructions.txt
        fi
    }
    for id in pagebuddy-side-never pagebuddy-intrusive-never bsa-frame bsa-heap buddy-alloc \
        free-list; do
        count hot "$id" 20000 60000
    done
    for id in pagebuddy-side-never pagebuddy-intrusive-never bsa-frame buddy-alloc; do
        count churn "$id" 1000000 3000000
    done
else
    echo "valgrind not installed: no instruction counts" > "$out"/instructions.txt
fi

python_bench

cat /proc/loadavg > "$out"/loadavg.after
t1=$(date +%s)
echo "== writing docs/benchmarks.md" >&2
python3 scripts/bench_report.py --command "$command" --mode "$mode" \
    --seconds "$(( t1 - t_built ))" --build-seconds "$(( t_built - t0 ))" --out docs/benchmarks.md
echo "benchmarks ran in $(( t1 - t_built )) s (plus $(( t_built - t0 )) s of building)" >&2
