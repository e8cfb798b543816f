# Switchyard's front door. Every target sets itself up first (scripts/setup.sh
# is a no-op when nothing changed).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
BUF := $(VENV)/bin/buf
PYTEST_ARGS ?=

.PHONY: setup run test lint proto proto-check bench bench-vllm clean

setup:
	@scripts/setup.sh

# `make run` needs only the main environment, not the test tools (scripts/setup.d).
run:
	@scripts/setup.sh --main-only
	@scripts/run-local.sh

test: setup lint
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup proto-check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(BUF) lint
	$(BUF) format --diff --exit-code

# Regenerates the stubs, one home per language: Python clients/python/src/switchyard/v1,
# Go clients/go/switchyard/v1, TypeScript clients/typescript/src/gen.
proto: setup
	$(BUF) generate

# Fails when the committed stubs differ from what the .proto files generate.
proto-check: setup
	@tmp="$$(mktemp -d)"; trap 'rm -rf "$$tmp"' EXIT; \
	$(BUF) generate -o "$$tmp" && \
	diff -r -x __init__.py -x __pycache__ "$$tmp/clients/python/src/switchyard/v1" clients/python/src/switchyard/v1 && \
	diff -r "$$tmp/clients/go/switchyard" clients/go/switchyard && \
	diff -r "$$tmp/clients/typescript/src/gen" clients/typescript/src/gen \
	  || { echo "generated stubs are stale: run 'make proto' and commit the result" >&2; exit 1; }

# The peer server (llama_cpp.server, llama-cpp-python's [server] extra) is in
# requirements/dev.txt: make test runs every benchmark once in its smoke mode.
bench: setup
	$(PY) benchmarks/llamacpp_overhead.py

# Our vllm model server against `vllm serve` (both from .venv-vllm, the CPU build).
bench-vllm: setup
	$(PY) benchmarks/vllm_overhead.py

clean:
	rm -rf $(VENV) .venv-vllm .venv-checkov .run .mypy_cache .ruff_cache .pytest_cache

# `switchyard bench --compare`: a scripted model server direct vs through the router;
# JSON and HTML report in .run/ (see README "Benchmarking").
.PHONY: bench-router
bench-router: setup
	$(PY) benchmarks/bench_router_compare.py

# The router's HTTP front against its gRPC path, and the HTTP servers it was chosen from.
.PHONY: bench-http
bench-http: setup
	$(PY) benchmarks/http_front.py
	$(PY) benchmarks/http_servers.py
