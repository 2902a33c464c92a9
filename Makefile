# The two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# the project-local Dagster instance: dagster.yaml is copied there, data stays under var/
export DAGSTER_HOME := $(CURDIR)/var/dagster

.PHONY: install demo test up broker lint bench clean

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --constraint constraints.txt --editable '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/churn-platform demo

test: $(STAMP)
	$(PY) -m pytest

up: $(STAMP)
	$(VENV)/bin/churn-platform up

broker: $(STAMP)
	$(VENV)/bin/churn-platform broker

lint: $(STAMP)
	$(VENV)/bin/ruff check churn_platform churn_platform_tests benchmarks
	$(VENV)/bin/ruff format --check churn_platform churn_platform_tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/extract.py
	$(PY) benchmarks/features.py
	$(PY) benchmarks/model.py

clean:
	rm -rf var .pytest_cache
