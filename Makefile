# One command each: `make test` (creates .venv, installs, runs every test), `make run` (the embedded stack).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# chDB 3.7 for the bench's Kafka-engine baseline (chDB 26.x cannot run that engine)
ENGINE_STAMP := .venv-kafka-engine/.installed

.PHONY: test run bench bench-quick bench-memory bench-ab bench-sdk chaos clean

$(STAMP): pyproject.toml sdk/pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ./sdk
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

$(ENGINE_STAMP): bench/kafka-engine-requirements.txt
	$(PYTHON) -m venv $(dir $@)
	$(dir $@)bin/pip install --quiet -r $<
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest -q

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
	$(BIN)/python -m pytest -q -s tests/test_exactly_once.py tests/test_outages.py --chaos-long

clean:
	rm -rf $(VENV) .venv-kafka-engine .kern .pytest_cache .hypothesis
