# Set-up and entry points. `make quickstart` runs the main job, `make test` the test suite.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS := requirements/constraints-cpu.txt

.PHONY: setup quickstart test test-ci test-all lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

setup: $(BIN)/python
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e '.[dev]'

quickstart: setup
	$(BIN)/metazoo pipeline --config configs/quickstart.yaml

test: setup
	$(BIN)/python -m pytest -q

test-ci: setup
	$(BIN)/python -m pytest -q -m ci

test-all: setup
	$(BIN)/python -m pytest -q -m ''

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python bench/layers.py

clean:
	rm -rf $(VENV) zoo_store mlartifacts mlflow.db
