# Everything a fresh machine needs, then the job. `make demo` and `make test` are the two front doors.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTEST_WORKERS ?= 2

.PHONY: venv mlserver-venv mlmd-venv feast-venv system-deps demo test lint typecheck layers unit integration bench schemas clean

CONSTRAINTS := services/constraints

$(VENV)/.stamp-install: pyproject.toml $(CONSTRAINTS)/main.txt
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]' -c $(CONSTRAINTS)/main.txt
	touch $@

venv: $(VENV)/.stamp-install

# MLServer (KServe's runtime for MLflow and sklearn models) pins FastAPI below 0.116, so it gets a
# virtualenv of its own, as its own container would; the KServe stand-in in tests/ runs it from here,
# and KServe's storage initializer (kserve-storage) beside it.
MLSERVER_VENV := .venv-mlserver
$(MLSERVER_VENV)/.stamp: $(CONSTRAINTS)/mlserver.txt
	test -x $(MLSERVER_VENV)/bin/python || python3.11 -m venv $(MLSERVER_VENV) || python3 -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/pip install -q -c $(CONSTRAINTS)/mlserver.txt 'mlserver==1.7.1' 'mlserver-mlflow==1.7.1' 'mlserver-sklearn==1.7.1' 'kserve-storage==0.21.*'
	touch $@

mlserver-venv: $(MLSERVER_VENV)/.stamp

# ml-metadata 1.17.1, the newest with a Python 3.11 wheel, pins protobuf<5 and mlcd needs protobuf 6: the
# MLMD writer (services/mlcd/adapters/mlmd_writer.py, MLCD_MLMD_PYTHON) runs from a virtualenv of its own.
MLMD_VENV := .venv-mlmd
$(MLMD_VENV)/.stamp: $(CONSTRAINTS)/mlmd.txt
	test -x $(MLMD_VENV)/bin/python || python3.11 -m venv $(MLMD_VENV) || python3 -m venv $(MLMD_VENV)
	$(MLMD_VENV)/bin/pip install -q -c $(CONSTRAINTS)/mlmd.txt 'ml-metadata==1.17.1'
	touch $@

mlmd-venv: $(MLMD_VENV)/.stamp

# Feast 0.67 needs pandas<3 and mlcd has pandas 3: the builder runs Feast's CLI (`feast plan`, `feast apply`)
# from a virtualenv of its own (MLCD_FEAST_BIN, services/mlcd/adapters/feast.py).
FEAST_VENV := .venv-feast
$(FEAST_VENV)/.stamp: $(CONSTRAINTS)/feast.txt
	test -x $(FEAST_VENV)/bin/python || python3.11 -m venv $(FEAST_VENV) || python3 -m venv $(FEAST_VENV)
	$(FEAST_VENV)/bin/pip install -q -c $(CONSTRAINTS)/feast.txt 'feast==0.67.*'
	touch $@

feast-venv: $(FEAST_VENV)/.stamp

# Debian packages the tests talk to for real: Prometheus, Alertmanager, Chromium for the /ui test.
system-deps:
	@missing=""; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v prometheus-alertmanager >/dev/null || missing="$$missing prometheus-alertmanager"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

demo: venv
	$(VENV)/bin/mlcd demo

lint: venv
	$(VENV)/bin/ruff check services tests benchmarks pipelines
	$(VENV)/bin/ruff format --check services tests benchmarks pipelines

typecheck: venv
	$(VENV)/bin/mypy

layers: venv
	$(VENV)/bin/lint-imports

test: venv $(MLSERVER_VENV)/.stamp $(MLMD_VENV)/.stamp $(FEAST_VENV)/.stamp system-deps lint typecheck layers
	$(VENV)/bin/pytest -q -n $(PYTEST_WORKERS) --dist loadgroup -p no:cacheprovider --durations=30

schemas: venv
	$(PY) -m mlcd.events > /dev/null

bench: venv
	$(PY) benchmarks/bus.py

clean:
	rm -rf $(VENV) $(MLSERVER_VENV) $(FEAST_VENV) .mlcd .pytest_cache .mypy_cache .ruff_cache
