# The two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# the project-local Dagster instance: dagster.yaml is copied there, data stays under var/
export DAGSTER_HOME := $(CURDIR)/var/dagster

.PHONY: install chromium postgresql demo test up broker lint bench scale soak fuzz clean

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --constraint constraints.txt --editable '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/churn-platform demo

# Debian's Chromium for the browser test of `make up`: Playwright drives it and never
# downloads a browser of its own. Installed with apt when missing (CI runs as root).
chromium:
	@command -v chromium >/dev/null && exit 0; \
	if [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium for the UI test ..."; \
		log=$$(mktemp); \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends chromium; } >$$log 2>&1 \
			|| { tail -20 $$log; rm -f $$log; exit 1; }; \
		rm -f $$log; \
	else \
		echo "chromium is not installed: the UI test will be skipped (apt-get install chromium)"; \
	fi

# Debian's PostgreSQL for the tests of Dagster on PostgreSQL (churn_platform_tests/deploy/):
# each test session runs a throw-away cluster of its own (initdb and pg_ctl in a temporary
# directory, a loopback port), never the packaged service. Installed with apt when missing.
postgresql:
	@{ ls /usr/lib/postgresql/*/bin/initdb || command -v initdb; } >/dev/null 2>&1 && exit 0; \
	if [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's postgresql for the Dagster-on-PostgreSQL tests ..."; \
		log=$$(mktemp); \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends postgresql; } >$$log 2>&1 \
			|| { tail -20 $$log; rm -f $$log; exit 1; }; \
		rm -f $$log; \
	else \
		echo "PostgreSQL is not installed: the Dagster-on-PostgreSQL tests will be skipped (apt-get install postgresql)"; \
	fi

test: $(STAMP) chromium postgresql
	$(PY) -m pytest

up: $(STAMP)
	$(VENV)/bin/churn-platform up

broker: $(STAMP)
	$(VENV)/bin/churn-platform broker

lint: $(STAMP)
	$(VENV)/bin/ruff check churn_platform churn_platform_tests benchmarks
	$(VENV)/bin/ruff format --check churn_platform churn_platform_tests benchmarks

bench: $(STAMP) postgresql
	$(PY) benchmarks/extract.py
	$(PY) benchmarks/replay.py
	$(PY) benchmarks/features.py
	$(PY) benchmarks/model.py
	$(PY) benchmarks/model_load.py
	$(PY) benchmarks/reasons.py
	$(PY) benchmarks/streaming.py
	$(PY) benchmarks/freshness.py
	$(PY) benchmarks/deployment.py
	$(PY) benchmarks/own_data.py
	$(PY) benchmarks/lake_week.py
	$(PY) benchmarks/feature_evidence.py

# the whole batch pipeline at 1M, 3M and 10M events (~10 min on 2 cores, 590 s measured)
scale: $(STAMP)
	$(PY) benchmarks/scale.py

# kill -9 of the extract at seeded random points, 25 rounds, then exactly-once checks
soak: $(STAMP)
	$(PY) benchmarks/soak.py

# the hostile-input tests, writing how many inputs they tried to benchmarks/results/fuzz.json
fuzz: $(STAMP)
	CHURN_WRITE_FUZZ_RESULTS=1 $(PY) -m pytest -q churn_platform_tests/reliability/test_hostile_input.py

clean:
	rm -rf var .pytest_cache
