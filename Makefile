# Two commands do all set-up on a fresh machine with Python 3.11:
#   make run   - start the app on the built-in synthetic cohort
#   make test  - run the whole test suite (lint, unit, property, AppTest, browser, Spark)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8501

.PHONY: run test bench bench-cold lint clean

$(VENV)/.runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt requirements-spark.txt
	$(PY) -m pip install -q -r requirements-dev.txt -r requirements-spark.txt
	touch $@

run: $(VENV)/.runtime
	$(VENV)/bin/streamlit run app.py --server.port $(PORT)

test: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

bench: $(VENV)/.dev
	$(PY) -m kn026.bench.engine
	$(PY) -m kn026.bench.engine --whole --markdown

bench-cold: $(VENV)/.dev
	$(PY) -m kn026.bench.app --cold --floor

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis tests/artifacts
