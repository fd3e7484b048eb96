# Two targets a user needs: `make repro` (set up + run the pipeline) and `make test`.
# Everything runs inside .venv; the stage commands in dvc.yaml call `python`, so .venv/bin goes first on PATH.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: setup repro test clean-venv
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt -c constraints.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

repro: setup
	dvc repro

test: setup
	python -m pytest -q

clean-venv:
	rm -rf $(VENV)
