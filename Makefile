# densebench: `make bench` and `make test` do everything on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.densebench-installed
TEST_STAMP := $(VENV)/.densebench-test-installed
PERF_STAMP := $(VENV)/.densebench-perf-installed

.PHONY: install bench bench-full test test-quick lint perf gpu-check clean

install: $(STAMP)

# What `densebench` needs (OpenVINO, NNCF, torchao and LoadGen included). Re-installs only
# when the project's requirements change. scripts/install.sh installs with uv where it can
# (about 1 minute on 2 cores against 2.5 with pip), with pip otherwise.
$(STAMP): pyproject.toml constraints.txt scripts/install.sh
	PYTHON=$(PYTHON) scripts/install.sh $(VENV) .
	touch $(STAMP)

# The suite's tools and the optional extras (Ray, for `densebench sweep --executor ray`), so
# that their tests run; `make bench` does not wait for them.
$(TEST_STAMP): $(STAMP)
	scripts/install.sh $(VENV) '.[dev,ray]'
	touch $(TEST_STAMP)

# The default benchmark, quick: densenet121 (random weights, labelled) with `--variant quick`:
# each runtime at fp32 and at its fastest reduced precision, all prepared from the artifact
# cache (eager, amp-bf16 where the CPU has bf16, aoti-int8, onnxruntime, onnxruntime-int8,
# openvino, openvino-bf16 where the CPU has bf16, openvino-int8), batch 16, compute only,
# one worker process per variant, at least 3 iterations and 1 s each. The artifacts are
# exported (aoti-int8: quantized and compiled) on the first run and loaded afterwards.
# `make bench-full`: every variant, batch 1 and 16, both modes, 3 worker processes each.
bench: install
	$(BIN)/densebench run --model densenet121 --variant quick --batch-size 16 --mode model \
		--repeats 1 --min-iters 3 --min-time 1 --warmup 1 --device cpu --name bench

bench-full: install
	$(BIN)/densebench run --model densenet121 --variant all --batch-size 1,16 --device cpu \
		--name bench-full

# densebench's own figures (harness overhead, best variant over eager at batch 16 and 1,
# time to first iteration, LoadGen, search, side by side with OpenVINO's benchmark_app and
# timm's benchmark.py), written to docs/performance.md. Run with nothing else running.
perf: $(PERF_STAMP)
	$(BIN)/python scripts/perf.py

# timm, for its benchmark.py side by side (section 7)
$(PERF_STAMP): $(TEST_STAMP)
	scripts/install.sh $(VENV) '.[dev,ray,perf]'
	touch $(PERF_STAMP)

# On a machine with an NVIDIA GPU; runs from the tree with whatever PyTorch it has.
gpu-check:
	bash scripts/gpu_check.sh

# Two test processes (pytest-xdist), whatever the machine: the tests hold under a second
# one's load, as under any other (8 min here against 12 in one process). `pytest` alone runs
# them one at a time; DENSEBENCH_TEST_PROCESSES=1 makes `make test` do so.
TEST_PROCESSES ?= $(or $(DENSEBENCH_TEST_PROCESSES),2)
test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_PROCESSES)

# The edit-test loop (about 2.5 minutes on 2 cores): everything but the tests marked slow (more
# than a few seconds each), ray and loadgen
test-quick: $(TEST_STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_PROCESSES) -m "not slow and not ray and not loadgen"

lint: $(TEST_STAMP)
	$(BIN)/ruff check densebench tests scripts

clean:
	rm -rf artifacts runs gpu-check build *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
