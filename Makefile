# Two commands matter: `make demo` and `make test`. Both create the local venv and build the
# compiled core first; nothing else needs to be installed by hand.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.edgeops-installed
NATIVE := $(wildcard native/*.pyx native/*.pxd native/src/*.c native/src/*.h)

.PHONY: demo test lint typecheck unit integration test-debug-build bench clean help

help:
	@echo "make demo   - venv + compiled core, then broker, server and 5 simulated devices end to end"
	@echo "make test   - venv + compiled core, then lint, type check and the whole test suite"
	@echo "make bench  - the benchmarks in benches/ (tables on stdout, JSON in benches/results/)"

$(STAMP): pyproject.toml setup.py $(NATIVE)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/edgeops demo

lint: $(STAMP)
	$(BIN)/ruff check edgeops device_agent fleet_server tests benches setup.py

typecheck: $(STAMP)
	$(BIN)/mypy edgeops device_agent fleet_server

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q

integration: $(STAMP)
	$(BIN)/pytest tests/integration -q

# The drift kernels once more, compiled with bounds checking on, into a throwaway build tree.
# PYTHONPATH puts build/debug ahead of the editable install (whose finder comes last on
# sys.meta_path); EDGEOPS_EXPECT_DEBUG_BUILD makes tests/unit/test_native_build.py assert that the
# debug .so is the one loaded and that an out-of-bounds read raises IndexError. Cython is a build
# requirement only (pip builds in isolation), so it is installed into the venv here if missing.
test-debug-build: $(STAMP)
	rm -rf build/debug && mkdir -p build/debug
	cp -r setup.py pyproject.toml README.md native edgeops build/debug/
	rm -f build/debug/native/*.c build/debug/edgeops/_native/*.so
	$(BIN)/python -c "import Cython" 2>/dev/null || $(BIN)/python -m pip install -q "Cython>=3.0"
	cd build/debug && EDGEOPS_CYTHON_DEBUG=1 ../../$(BIN)/python setup.py -q build_ext --inplace >/dev/null
	cd build/debug && EDGEOPS_EXPECT_DEBUG_BUILD=1 PYTHONPATH=$(CURDIR)/build/debug \
		../../$(BIN)/pytest -q -p no:cacheprovider --rootdir=. $(CURDIR)/tests/unit -k "drift or native" \
		--confcutdir=$(CURDIR)/tests --import-mode=importlib

test: lint typecheck
	$(BIN)/pytest tests -q
	$(MAKE) --no-print-directory test-debug-build

bench: $(STAMP)
	@for b in benches/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache native/*.c edgeops/_native/*.so
