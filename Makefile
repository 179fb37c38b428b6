# lpuc developer entry points. Every target creates the virtual environment first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
OUT    := out
JOBS   ?= auto

.PHONY: setup demo test test-fast bench bench-compile conformance golden faults fuzz lint format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch lies on disk for exactly this version; install it before anything
	# that depends on torch, so pip never fetches a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[torch,test]'
	# MTCNN's trained ONet weights ship in this wheel: the real-weight CNN of the int8 tests. Its
	# metadata pins an old torch; the tests only read its data files, so none of its deps are needed.
	$(BIN)/pip install -q --no-deps facenet-pytorch==2.6.0
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	@mkdir -p $(OUT)
	$(BIN)/lpuc targets
	$(BIN)/lpuc compile models/mlp.onnx -o $(OUT)/mlp.lpu
	$(BIN)/lpuc run $(OUT)/mlp.lpu --check models/mlp.onnx --trace $(OUT)/mlp_trace.json -o $(OUT)/mlp_out.npz
	$(BIN)/lpuc report $(OUT)/mlp.lpu

test: setup
	$(BIN)/python -m pytest -n $(JOBS) -q

test-fast: setup
	$(BIN)/python -m pytest -n $(JOBS) -q -m "not slow"

bench: setup
	$(BIN)/python -m tests.benchmarks.bench
	$(BIN)/python -m tests.benchmarks.int8_bench
	$(BIN)/python -m tests.benchmarks.cnn_bench
	$(MAKE) bench-compile

# Compile time and peak RSS per stage for 4/12/24/48-layer GPT-2-shaped models (exported once, cached).
bench-compile: setup
	$(BIN)/python -m tests.benchmarks.compile_bench

conformance: setup
	$(BIN)/python -m tests.conformance.report

fuzz: setup
	$(BIN)/python -m tests.fuzz --cases 10000

# Rewrite tests/golden/summaries/ (checked by tests/test_golden.py) after an intended schedule change.
golden: setup
	$(BIN)/python -m tests.golden.regen

# Inject each fault of tests/faults/faults.py into a scratch copy and check the fast suite catches it.
faults: setup
	$(BIN)/python -m tests.faults.run

lint: setup
	$(BIN)/ruff check lpuc passes backends runtime tests models

format: setup
	$(BIN)/ruff format lpuc passes backends runtime tests models

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache build *.egg-info
