# Two entry points, each works on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo demo-deformable models test test-fast benchmark clean

$(VENV)/.installed: pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# The main job on built-in data: DETR with a T2T-ViT backbone on the generated shapes set
# (train, COCO evaluation, a picture of predictions). Run again, it resumes where it stopped.
DEMO_CFG := configs/demo/detr_t2t_shapes.py
DEMO_DIR := work_dirs/demo
demo: $(VENV)/.installed
	$(PY) tools/train.py $(DEMO_CFG) --work-dir $(DEMO_DIR) --resume
	$(PY) tools/test.py $(DEMO_CFG) $$(cat $(DEMO_DIR)/last_checkpoint) --work-dir $(DEMO_DIR)/test \
		--out $(DEMO_DIR)/detections.json
	$(PY) tools/infer.py $(DEMO_CFG) $$(cat $(DEMO_DIR)/last_checkpoint) --val 8 \
		--out $(DEMO_DIR)/predictions.png

# The same with Deformable DETR (same backbone, data and steps), then both runs' curves side by side.
DEFORMABLE_CFG := configs/demo/deformable_detr_t2t_shapes.py
DEFORMABLE_DIR := work_dirs/demo_deformable
demo-deformable: $(VENV)/.installed
	$(PY) tools/train.py $(DEFORMABLE_CFG) --work-dir $(DEFORMABLE_DIR) --resume
	$(PY) tools/test.py $(DEFORMABLE_CFG) $$(cat $(DEFORMABLE_DIR)/last_checkpoint) \
		--work-dir $(DEFORMABLE_DIR)/test --out $(DEFORMABLE_DIR)/detections.json
	$(PY) tools/infer.py $(DEFORMABLE_CFG) $$(cat $(DEFORMABLE_DIR)/last_checkpoint) --val 8 \
		--out $(DEFORMABLE_DIR)/predictions.png
	test ! -d $(DEMO_DIR) || $(PY) tools/plot_curves.py $(DEMO_DIR) $(DEFORMABLE_DIR) \
		--labels DETR "Deformable DETR" --out $(DEFORMABLE_DIR)/curves.png

models: $(VENV)/.installed
	$(PY) tools/analyze.py

test: $(VENV)/.installed
	$(PY) -m pytest -q -ra

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -ra -m 'not slow'

benchmark: $(VENV)/.installed
	$(PY) tools/benchmark.py

clean:
	rm -rf $(VENV) work_dirs .pytest_cache
