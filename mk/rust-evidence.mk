# Evidence for the Rust core beyond `cargo test` (docs/testing.md says what each covers).
#   make valgrind     memcheck over every test binary of the core, 0 errors required
#   make fuzz-short   each cargo-fuzz target for FUZZ_SHORT seconds (skipped without cargo-fuzz,
#                     an error under CI; any toolchain, see scripts/fuzz.sh)
#   make fuzz-long    each cargo-fuzz target for FUZZ_LONG seconds
#   make loom         loom model checking of LockedPool, CachedPool, shared and handoff pools (own
#                     target dir: target/loom), and of the Python pool's close gate (target/loom-gate)
#   make mutants      cargo-mutants over the core crate (skipped without cargo-mutants)

# Whatever includes this file keeps its own default goal.
rust_evidence_default_goal := $(.DEFAULT_GOAL)

FUZZ_SHORT   ?= 30
FUZZ_LONG    ?= 600
MUTANTS_JOBS ?= 2

.PHONY: valgrind fuzz-short fuzz-long loom loom-core loom-gate mutants

valgrind:
	scripts/valgrind.sh

fuzz-short:
	scripts/fuzz.sh differential $(FUZZ_SHORT)
	scripts/fuzz.sh scribble $(FUZZ_SHORT)
	scripts/fuzz.sh attach $(FUZZ_SHORT)

fuzz-long:
	scripts/fuzz.sh differential $(FUZZ_LONG)
	scripts/fuzz.sh scribble $(FUZZ_LONG)
	scripts/fuzz.sh attach $(FUZZ_LONG)

# Two halves with target directories of their own: `make -j2 --output-sync=target loom` (as CI
# does) builds and runs them side by side, each model single-threaded.
loom: loom-core loom-gate

loom-core:
	RUSTFLAGS="--cfg loom" cargo test -p pagebuddy --test loom --test loom_cache --test loom_shm --test loom_handoff --release \
	    --target-dir target/loom -- --nocapture --test-threads=1

loom-gate:
	RUSTFLAGS="--cfg gate_loom" cargo test -p pagebuddy-py --lib --release --target-dir target/loom-gate \
	    -- --nocapture --test-threads=1 loom_model

# Doctests are left out (each compiles separately; the unit tests cover the same functions) and
# the property test runs 128 cases per mutant.
mutants:
	@if cargo mutants --version >/dev/null 2>&1; then \
	    PROPTEST_CASES=128 cargo mutants -p pagebuddy --all-features --gitignore true \
	        -j $(MUTANTS_JOBS) --timeout 90 -- --tests; \
	else \
	    echo "mutants: skipped: cargo-mutants is not installed (cargo install cargo-mutants)"; \
	fi

.DEFAULT_GOAL := $(rust_evidence_default_goal)
