# AutoBio Illustrations — the two commands that matter: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
# On this kind of machine the CPU wheel of torch 2.13.0 lies on disk; a wider range would pull a CUDA build.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo up down status test lint typecheck pytest clean chromium node client docs

# (Re)create the virtualenv when it is missing or pyproject.toml changed.
$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e '.[worker,embedded,dev]'
	@touch $(STAMP)

venv: $(STAMP)

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
