# One command each: `make test` (creates .venv, installs, runs every test), `make run` (the embedded stack).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# chDB 3.7 for the bench's Kafka-engine baseline (chDB 26.x cannot run that engine)
ENGINE_STAMP := .venv-kafka-engine/.installed
# the chart library of the page of `make run`, vendored in devstack/web/vendor (make vendor-chartjs)
CHARTJS_VERSION := 4.6.1

.PHONY: test lint typecheck test-tools run dashboards vendor-chartjs bench bench-quick bench-memory bench-ab bench-sdk chaos clean

$(STAMP): pyproject.toml sdk/pyproject.toml $(wildcard pipeline/native/*.c pipeline/native/*.h)
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required"'
	@command -v cc >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y gcc libc6-dev; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ./sdk
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

$(ENGINE_STAMP): bench/kafka-engine-requirements.txt
	$(PYTHON) -m venv $(dir $@)
	$(dir $@)bin/pip install --quiet -r $<
	touch $@

test: lint typecheck test-tools
	$(BIN)/python -m pytest -q

# ruff's rules and format (pyproject.toml; the SDK client's for Python 3.9: sdk/pyproject.toml), and every
# `noqa` or `type: ignore` saying why on its own line. .pre-commit-config.yaml runs the same.
NO_REASON := \# (noqa(: [A-Z0-9, ]+)?|type: ignore(\[[a-z, -]+\])?) *$$
lint: $(STAMP)
	$(BIN)/ruff check --no-cache .
	$(BIN)/ruff format --check --no-cache .
	@! git grep -nE '$(NO_REASON)' -- '*.py' || \
		{ echo 'say why on the same line: "# noqa: CODE - why", "# type: ignore[code]  # why"' >&2; exit 1; }

# mypy: the runtime and the dev stack (pyproject.toml), the SDK client under --strict (sdk/pyproject.toml)
typecheck: $(STAMP)
	$(BIN)/mypy --cache-dir $(VENV)/.mypy_cache
	cd sdk && ../$(BIN)/mypy --cache-dir ../$(VENV)/.mypy_cache-sdk

# Debian's packages the tests drive: Chromium (the page test; a browser download cannot work here),
# prometheus (promtool and a real Prometheus for the operators' panels and alerts) and
# prometheus-alertmanager (amtool checks the Alertmanager configuration and its routes)
test-tools:
	@command -v chromium >/dev/null && command -v promtool >/dev/null && command -v amtool >/dev/null || \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium prometheus prometheus-alertmanager; }

# Grafana's dashboards, generated from the panels (pipeline/panels.py, devstack/grafana.py)
dashboards: $(STAMP)
	$(BIN)/python -m devstack.grafana

# Chart.js's built file and license from the npm registry (development time only; committed)
vendor-chartjs:
	rm -rf .kern/chartjs && mkdir -p .kern/chartjs
	cd .kern/chartjs && npm pack --silent chart.js@$(CHARTJS_VERSION) && tar xzf chart.js-$(CHARTJS_VERSION).tgz
	cp .kern/chartjs/package/dist/chart.umd.min.js devstack/web/vendor/chart.umd.min.js
	cp .kern/chartjs/package/LICENSE.md devstack/web/vendor/chart.js-LICENSE.md

run: $(STAMP)
	$(BIN)/kern-telemetry dev

bench: $(STAMP) $(ENGINE_STAMP)
	$(BIN)/python -m bench.run

bench-quick: $(STAMP) $(ENGINE_STAMP)
	$(BIN)/python -m bench.run --quick

bench-memory: $(STAMP)
	$(BIN)/python -m bench.run --memory

# the worker of two commits on the same topic, alternating: make bench-ab BEFORE=<rev> [AFTER=<rev>]
bench-ab: $(STAMP)
	$(BIN)/python -m bench.ab --before $(BEFORE) --after $(or $(AFTER),HEAD)

bench-sdk: $(STAMP)
	$(BIN)/pip install --quiet -e './sdk[fast]'
	$(BIN)/python -m bench.sdk_client

chaos: $(STAMP)
	$(BIN)/python -m pytest -q -s tests/test_exactly_once.py tests/test_outages.py --chaos-long \
		'tests/test_privacy.py::test_distinct_sessions_are_estimated_within_one_percent_killed_or_not'

clean:
	rm -rf $(VENV) .venv-kafka-engine .kern .pytest_cache .hypothesis
