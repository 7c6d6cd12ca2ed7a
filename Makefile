# densebench: `make bench` and `make test` do everything on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.densebench-installed

.PHONY: install bench test lint perf gpu-check clean

install: $(STAMP)

# Re-installs only when the project's requirements change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

bench: install
	for f in torchscript onnx checkpoint aoti; do \
		$(BIN)/densebench export --model densenet121 --format $$f || exit 1; done
	$(BIN)/densebench export --model densenet121 --format onnx --precision fp16
	$(BIN)/densebench export --model densenet121 --format onnx --precision int8
	$(BIN)/densebench artifacts

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check densebench tests

clean:
	rm -rf artifacts runs build *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
