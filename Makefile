# densebench: `make bench` and `make test` do everything on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.densebench-installed

.PHONY: install bench bench-full test lint perf gpu-check clean

install: $(STAMP)

# Re-installs only when the project's requirements change. The optional extras (Ray, for
# `densebench sweep --executor ray`) are installed too, so that their tests run.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,ray]'
	touch $(STAMP)

# The default benchmark, quick: densenet121 (random weights, labelled), every variant this
# CPU supports, batch 16, compute only, one worker process per variant, at least 3
# iterations and 1 s each. Exported artifacts (ONNX, TorchScript, AOTInductor) are cached,
# so later runs skip their export. `make bench-full`: batch 1 and 16, both modes, 3 worker
# processes per variant (intervals that hold from one run to the next).
bench: install
	$(BIN)/densebench run --model densenet121 --variant all --batch-size 16 --mode model \
		--repeats 1 --min-iters 3 --min-time 1 --warmup 1 --device cpu --name bench

bench-full: install
	$(BIN)/densebench run --model densenet121 --variant all --batch-size 1,16 --device cpu \
		--name bench-full

# densebench's own figures (harness overhead, best variant over eager, time to first
# iteration), written to docs/performance.md. Run with nothing else on the machine.
perf: install
	$(BIN)/python scripts/perf.py

# On a machine with an NVIDIA GPU; runs from the tree with whatever PyTorch it has.
gpu-check:
	bash scripts/gpu_check.sh

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check densebench tests

clean:
	rm -rf artifacts runs gpu-check build *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
