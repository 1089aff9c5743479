# pagebuddy: `make demo` runs the main job, `make test` builds and runs the test suite.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.deps-installed
NATIVE := $(VENV)/.native-built
export HYPOTHESIS_PROFILE ?= $(if $(CI),ci,dev)
# pip says nothing it did not do (no "Requirement already satisfied", no "Ignoring ...: markers").
export PIP_QUIET := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# The interpreter .venv is made from: CPython 3.10 or later, `PYTHON=python3.11 make demo` to name
# one. scripts/venv-python.sh picks it before any work: an older one is refused at once, and a
# .venv made by another interpreter than PYTHON is made anew. Goals that need no Python skip it.
NO_PYTHON_GOALS := clean lint-rust test-rust valgrind fuzz-short fuzz-long loom loom-core loom-gate \
    mutants bench-upstream
ifneq ($(filter-out $(NO_PYTHON_GOALS),$(or $(MAKECMDGOALS),all)),)
VENV_PYTHON := $(shell scripts/venv-python.sh "$(VENV)" "$(PYTHON)")
ifneq ($(.SHELLSTATUS),0)
$(error $(VENV_PYTHON))
endif
endif

.PHONY: all demo develop test test-rust test-python lint lint-rust lint-python fmt wheel sdist bench \
        bench-python bench-upstream \
        clean

all: test

# valgrind, fuzz-short, fuzz-long, loom, mutants: the Rust core's evidence beyond cargo test.
include mk/rust-evidence.mk

$(PY):
	@echo "make: making $(VENV) with $(VENV_PYTHON) ($$($(VENV_PYTHON) -V 2>&1))"
	$(VENV_PYTHON) -m venv $(VENV)

# Build and test dependencies, installed once per change of pyproject.toml or of this list
# (mypy: the tests type-check snippets against the stubs).
$(STAMP): pyproject.toml Makefile | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "maturin>=1.9.4,<2" "rich>=13" "matplotlib>=3.5" \
	    "pytest>=7" "pytest-timeout>=2.1" "pytest-xdist>=3.5" "hypothesis>=6.80" "numpy>=1.22" \
	    "ruff>=0.5" \
	    "mypy>=1.10" \
	    "typing_extensions>=4.6"
	touch $@

# What the native module is built from: rebuilt when one of these changes (Python sources are
# installed in place and need no build).
NATIVE_SOURCES := pyproject.toml Cargo.toml Cargo.lock rust/pagebuddy/Cargo.toml \
    rust/pagebuddy-py/Cargo.toml $(shell find rust/pagebuddy/src rust/pagebuddy-py/src -name '*.rs')

## develop: build the native module (release) into the venv
develop: $(NATIVE)

$(NATIVE): $(STAMP) $(NATIVE_SOURCES)
	@echo "make: building the Rust core and the module pagebuddy._native (release) into $(VENV);" \
	    "cargo lists each crate it compiles (a few minutes the first time)"
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release --extras plot
	@touch $@

## demo: the main job
demo: develop
	$(PY) -m pagebuddy

## test: the test suite: fmt, clippy, cargo test, ruff, pytest (CI, .ci/run, runs it and more)
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

# pytest on PYTEST_WORKERS processes (pytest-xdist; `make test PYTEST_WORKERS=auto` for one per
# core, `PYTEST_WORKERS=0` for none): an idle worker takes tests queued for a busy one, so the
# minute-long tests do not leave the other worker idle at the end.
PYTEST_WORKERS ?= 2

test-python: develop
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal

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

## bench-upstream: the exact pool against upstream pKVM's page_alloc.c compiled in user space
## (docs/upstream-c.md; fetches Debian's linux-source-6.1 unless PAGEBUDDY_KERNEL_SRC names a tree)
bench-upstream:
	python3 scripts/upstream_c.py

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
