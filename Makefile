# pagebuddy: `make demo` runs the main job, `make test` builds and runs every test.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.deps-installed
export HYPOTHESIS_PROFILE ?= $(if $(CI),ci,dev)

.PHONY: all demo develop test test-rust test-python lint lint-rust lint-python fmt wheel sdist bench \
        bench-python \
        clean

all: test

# valgrind, fuzz-short, fuzz-long, loom, mutants: the Rust core's evidence beyond cargo test.
include mk/rust-evidence.mk

$(PY):
	python3 -m venv $(VENV)

# Build and test dependencies, installed once per change of pyproject.toml or of this list
# (mypy: the tests type-check snippets against the stubs).
$(STAMP): pyproject.toml Makefile | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "maturin>=1.9.4,<2" "rich>=13" "matplotlib>=3.5" \
	    "pytest>=7" "hypothesis>=6.80" "numpy>=1.22" "ruff>=0.5" "mypy>=1.10" \
	    "typing_extensions>=4.6"
	touch $@

## develop: build the native module (release) into the venv
develop: $(STAMP)
	$(VENV)/bin/maturin develop --release --quiet --extras plot

## demo: the main job
demo: develop
	$(PY) -m pagebuddy

## test: everything CI checks
test: lint test-rust test-python

lint: lint-rust lint-python

lint-rust:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

lint-python: $(STAMP)
	$(VENV)/bin/ruff check python tests benches examples
	$(VENV)/bin/ruff format --check python tests benches examples

test-rust:
	cargo test -p pagebuddy --all-features

test-python: develop
	$(PY) -m pytest -q

## fmt: format Rust and Python sources
fmt: $(STAMP)
	cargo fmt --all
	$(VENV)/bin/ruff format python tests benches examples
	$(VENV)/bin/ruff check --fix python tests benches examples

## bench: every benchmark in short mode; rewrites docs/benchmarks.md from the run
bench: develop
	PATH="$(abspath $(VENV))/bin:$$PATH" scripts/bench.sh

## bench-python: the Python benchmark and the core's side of it; rewrites that section only
bench-python: develop
	PATH="$(abspath $(VENV))/bin:$$PATH" scripts/bench.sh --python

# Tools of `make wheel` only: zig as the linker that targets an old glibc, auditwheel to confirm it.
WHEEL_TOOLS := $(VENV)/.wheel-tools-installed
$(WHEEL_TOOLS): $(STAMP)
	$(PY) -m pip install -q "ziglang>=0.13" "auditwheel>=6"
	touch $@

## wheel: one abi3 manylinux2014 (glibc 2.17) wheel in dist/, stripped, checked by auditwheel
wheel: $(WHEEL_TOOLS)
	rm -f dist/pagebuddy-*.whl
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/maturin build --release --zig \
	    --compatibility manylinux2014 --out dist
	$(VENV)/bin/auditwheel show dist/pagebuddy-*.whl

## sdist: the source distribution in dist/
sdist: $(STAMP)
	rm -f dist/pagebuddy-*.tar.gz
	$(VENV)/bin/maturin sdist --out dist

clean:
	cargo clean
	rm -rf $(VENV) dist .pytest_cache .hypothesis
