# Two entry points, each works on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-fast benchmark clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) tools/demo.py --work-dir work_dirs/demo

test: $(VENV)/.installed
	$(PY) -m pytest -q -ra

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -ra -m 'not slow'

benchmark: $(VENV)/.installed
	$(PY) tools/benchmark.py

clean:
	rm -rf $(VENV) work_dirs .pytest_cache
