# Plática — `make run` and `make test` work on a fresh machine with Python 3.11+ and make.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run serve test lint format bench db-upgrade lock clean messages

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@rm -f $(VENV)/.installed-* && touch $@

## run: install, migrate and serve on http://127.0.0.1:8000 (SQLite, dry-run sender by default;
##      HOST/PORT from the environment, .env or the command line: make run PORT=8080)
run: $(STAMP)
	$(BIN)/platica db upgrade
	$(BIN)/platica serve

serve: $(STAMP)
	$(BIN)/platica serve

db-upgrade: $(STAMP)
	$(BIN)/platica db upgrade

## test: every test; PostgreSQL ones use TEST_DATABASE_URL (skipped if none answers, unless CI=true),
##       in TEST_PROCESSES processes (each with its own PostgreSQL database; 0: all in one)
TEST_PROCESSES ?= 2
test: $(STAMP)
	$(BIN)/pytest -n $(TEST_PROCESSES) --dist worksteal $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

## messages: extract the dashboard's strings into its .pot and merge them into each language's .po
LOCALE := src/platica/dashboard/locale
messages: $(STAMP)
	$(BIN)/pybabel extract -F babel.cfg -k N_ --no-location --sort-output --omit-header -w 100 \
		-o $(LOCALE)/messages.pot .
	$(BIN)/pybabel update -i $(LOCALE)/messages.pot -d $(LOCALE) -w 100 --no-fuzzy-matching \
		--ignore-obsolete

## bench: SPEC §6 on this machine (fakes, PostgreSQL and SQLite, < 10 min) -> docs/benchmark.md
bench: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

## lock: re-pin every dependency from pyproject.toml into requirements.lock
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	.lock-venv/bin/pip freeze --exclude-editable --exclude platica > requirements.lock
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
