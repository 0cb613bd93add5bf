# The two commands: `make run` serves the demo; `make test` passes the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint check-deps docs clean

$(BIN)/python:
	scripts/system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Re-install whenever pyproject.toml changes.
$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	GRAPHGATE_ENV=development $(BIN)/graphgate serve --host $(HOST) --port $(PORT)

check-deps:
	scripts/system-deps.sh --test

lint: $(VENV)/.installed-test
	$(BIN)/ruff check service tests
	$(BIN)/mypy

test: check-deps lint
	$(BIN)/python -m pytest

docs: $(VENV)/.installed-test
	$(BIN)/python -m service.config_reference --write

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache

# Benchmarks (bench/, docs/performance.md). `bench`: graphgate side by side with a bare
# FastAPI app and `langgraph dev` (when langgraph-cli[inmem] is installed), a few minutes;
# `bench-smoke`: the same harness at tiny sizes, under a minute (tests/bench runs it too).
.PHONY: bench bench-smoke
bench: $(VENV)/.installed-run
	scripts/system-deps.sh --bench
	$(BIN)/python -m bench --json-out var/bench/latest.json

bench-smoke: $(VENV)/.installed-run
	$(BIN)/python -m bench --smoke

# The container image, built with buildah and no network during the build (needs root;
# see docs/deploy-k8s.md). IMAGE_ARGS passes options, e.g. --push docker-archive:/tmp/g.tar.
.PHONY: image test-image
image:
	scripts/system-deps.sh --image
	scripts/build-image.sh $(IMAGE_ARGS)

# Builds the image for real and runs it (about 2.5 minutes from a cold cache); kept out
# of `make test` so the suite stays well inside CI's time.
test-image: $(VENV)/.installed-test
	scripts/system-deps.sh --image
	$(BIN)/python -m pytest -m image tests/deploy/test_dockerfile_build.py
