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

# The main job on built-in data: until the detector lands, the model table (params, MACs, paper).
demo: $(VENV)/.installed
	mkdir -p work_dirs/demo
	$(PY) tools/analyze.py --out work_dirs/demo/models.md

test: $(VENV)/.installed
	$(PY) -m pytest -q -ra

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -ra -m 'not slow'

benchmark: $(VENV)/.installed
	$(PY) tools/benchmark.py

clean:
	rm -rf $(VENV) work_dirs .pytest_cache
