# The two commands of the README: each sets up .venv on a fresh machine, then runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade pip
	$(BIN)/python -m pip install -qq -c constraints.txt torch==2.13.0
	PYTHONWARNINGS=ignore $(BIN)/python -m pip install -qq -c constraints.txt -e '.[dev]'  # no setuptools notices
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/prunekit demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
