# Two entry points a newcomer needs: `make serve` and `make test`.
# Both create the virtual environment on first use and are safe to re-run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: serve test test-slow lint bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/python -m service

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not slow" -q

# Slow tests include building and running the container image: Docker engine and debootstrap first.
test-slow: $(STAMP)
	docker/install-build-tools.sh
	$(BIN)/python -m pytest -m slow -q

bench: $(STAMP)
	$(BIN)/python -m models.bench
