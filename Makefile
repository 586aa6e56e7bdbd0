# Two commands a newcomer needs: `make demo` (the multi-hop story) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: test demo bench bench-quick lint typecheck protos venv system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench,http]'
	@$(PY) -m pip install -q -e '.[kerberos]' || echo "note: kerberos extra (gssapi) not installed: needs libkrb5-dev; Kerberos tests will skip"
	touch $(STAMP)

venv: $(STAMP)

system-deps:
	@bash scripts/system-deps.sh

test: system-deps $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

PACKAGE ?= x509
# kerberos and negotiate stories start a real MIT KDC: install it first when we can.
demo: $(if $(filter kerberos negotiate,$(PACKAGE)),system-deps) $(STAMP)
	$(PY) -m rpcsec demo --package $(PACKAGE)

bench: $(STAMP)
	$(PY) -m benchmarks

bench-quick: $(STAMP)
	$(PY) -m benchmarks --quick

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# Regenerate the committed gRPC code; tests/test_generated_code.py fails when it is stale.
protos: $(STAMP)
	$(PY) -m rpcsec.grpc._codegen

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
