# One command to set up and run the relay, one to set up and run the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run demo test fuzz lint format bench bench-cluster soak clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/chat-relay serve

demo: $(STAMP)
	$(BIN)/chat-relay demo

test: lint
	$(BIN)/pytest -q

# The property test of tests/test_fuzz.py at length (`make test` runs 150 examples).
FUZZ_EXAMPLES ?= 5000
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q --timeout 3600 tests/test_fuzz.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python -m bench

# One room on SQLite, on Redis and over two Redis nodes (needs redis-server); < 10 minutes.
bench-cluster: $(STAMP)
	$(BIN)/python -m bench.cluster

# About 10 minutes, not part of `make test`: docs/reliability.md has a run.
soak: $(STAMP)
	$(BIN)/python -m bench.soak

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
