# Every target bootstraps .venv itself (idempotent: the stamp is refreshed only when
# pyproject.toml changes). On this machine torch==2.13.0 (CPU build) comes from local disk.
PY      := .venv/bin/python
STAMP   := .venv/.installed
TORCH   ?= torch==2.13.0
export HF_HUB_OFFLINE := 1

.PHONY: venv demo test test-slow lint toy-table clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[eval,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	.venv/bin/ruff check .

toy-table: $(STAMP)
	$(PY) scripts/toy_table.py

clean:
	rm -rf .venv outputs runs .cache
