# AutoBio Illustrations — the two commands that matter: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The locks (`make lock` writes them from pyproject.toml): api.txt for Dockerfile.api and Dockerfile.worker-cpu,
# worker.txt for Dockerfile.worker, dev.txt (the same versions plus `embedded` and `dev`) for this venv and CI.
# torch is pinned once, in requirements/torch.txt, and left out of the locks: here its CPU wheel (on this kind of
# machine it lies on disk, where pip's find-links point), in Dockerfile.worker the CUDA build of the same version.
LOCKS := requirements/api.txt requirements/worker.txt requirements/dev.txt
TORCH_PIN := requirements/torch.txt
# Where the torch CPU wheel lies; `make lock` resolves torch's own dependencies against it (PyPI's torch wheel for
# Linux is the CUDA build, whose nvidia-* and triton dependencies belong to the CUDA image only). Elsewhere uv asks
# the PyTorch CPU index (--torch-backend cpu).
TORCH_WHEELS ?= /opt/wheels
TORCH_SOURCE = $(if $(wildcard $(TORCH_WHEELS)/torch-*+cpu-*.whl),--find-links $(TORCH_WHEELS),--torch-backend cpu)
# `make lock LOCK_ARGS=--upgrade` moves every pin to the newest allowed release; plain `make lock` keeps the pins
# already in the files and only adds, drops or moves what pyproject.toml now asks for.
LOCK_ARGS ?=
UV_COMPILE = $(BIN)/uv pip compile pyproject.toml --quiet --generate-hashes --python-version 3.11 \
	--custom-compile-command "make lock" $(LOCK_ARGS)

.PHONY: venv lock demo up down status test lint typecheck pytest clean chromium node client docs

# (Re)create the virtualenv when it is missing or pyproject.toml or a lock changed: torch's pinned CPU wheel, then
# exactly the locked versions (hash-checked), then the project itself without resolving anything.
$(STAMP): pyproject.toml Makefile $(LOCKS) $(TORCH_PIN)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r $(TORCH_PIN)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@$(BIN)/python -m pip check >/dev/null || { $(BIN)/python -m pip check; \
		echo "make venv: the locks in requirements/ do not give what pyproject.toml asks for: run make lock" >&2; \
		exit 1; }
	@touch $(STAMP)

venv: $(STAMP)

## requirements/*.txt from pyproject.toml, with hashes (uv from the venv; bootstrapped when there is none yet).
## worker.txt first; api.txt and dev.txt are constrained to its versions, so every image and CI agree.
lock:
	@test -x $(BIN)/uv || { test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); \
		$(BIN)/python -m pip install --quiet "uv>=0.9"; }
	$(UV_COMPILE) --extra worker -c $(TORCH_PIN) --no-emit-package torch $(TORCH_SOURCE) -o requirements/worker.txt
	$(UV_COMPILE) -c requirements/worker.txt -o requirements/api.txt
	$(UV_COMPILE) --extra worker --extra embedded --extra dev -c $(TORCH_PIN) -c requirements/worker.txt \
		--no-emit-package torch $(TORCH_SOURCE) -o requirements/dev.txt

## The embedded demo: start API, workers, beat, Flower and Redis; submit a job with a reference photo; show it.
demo: venv
	HF_HUB_OFFLINE=1 $(BIN)/illustrations demo

## Keep the embedded stack running (make down stops it).
up: venv
	HF_HUB_OFFLINE=1 $(BIN)/illustrations up

down:
	@if [ -x $(BIN)/illustrations ]; then $(BIN)/illustrations down; else echo "nothing to stop"; fi

status: venv
	$(BIN)/illustrations status

## docs/configuration.md, rendered from the settings' own descriptions (a test fails when it is stale).
docs: venv
	$(BIN)/python -m shared.settings_docs

## ruff, then the import contracts in pyproject.toml (the arrows between the rooms, no cycles).
lint: venv
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-logo --no-cache

typecheck: venv
	$(BIN)/mypy

## Debian's Chromium for the /ops page test (playwright drives it; no browser download). Installed once, as root.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian's chromium (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

## Debian's Node.js and npm for the TypeScript client's tests (clients/typescript). Installed once, as root.
node:
	@command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || { \
		echo "installing Debian's nodejs and npm (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm; }

## The TypeScript client's types, regenerated from the API's OpenAPI document (a test fails when they are stale).
client: venv node
	$(BIN)/illustrations openapi --output clients/typescript/openapi.json
	cd clients/typescript && npm ci --no-audit --no-fund --prefer-offline && \
		npx openapi-typescript openapi.json --output src/schema.d.ts

pytest: venv chromium node
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

## Lint, type-check, then the whole suite against PostgreSQL and Redis on their standard loopback ports.
test: lint typecheck pytest

clean: down
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
