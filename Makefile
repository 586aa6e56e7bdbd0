# Two commands a newcomer needs: `make demo` (the multi-hop story) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: test demo bench bench-quick lint typecheck protos venv system-deps clean

# Both README commands first install the Debian packages (when root; otherwise they say what to
# install), then make sure every extra imports (scripts/ensure-venv.sh): `make demo` then
# `make test`, or the other way round, any number of times, end with everything installed.
venv: system-deps
	@PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/ensure-venv.sh

system-deps:
	@PYTHON=$(PYTHON) bash scripts/system-deps.sh

test: venv
	$(PY) -m pytest -q -p no:cacheprovider

PACKAGE ?= x509
demo: venv
	$(PY) -m rpcsec demo --package $(PACKAGE)

bench: venv
	$(PY) -m benchmarks

bench-quick: venv
	$(PY) -m benchmarks --quick

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy

# Regenerate the committed gRPC code; tests/test_generated_code.py fails when it is stale.
protos: venv
	$(PY) -m rpcsec.grpc._codegen

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
