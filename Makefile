# Two entry points: `make demo` and `make test`. Both install what they need once
# (.venv + pinned Python deps, node_modules with the real MicroPython runtime) and reuse it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PY_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: demo test install bench clean

demo: install
	$(VENV)/bin/skip2lora demo

test: install
	$(PY) -m pytest

bench: install
	$(VENV)/bin/skip2lora bench --runtime numpy --json out/bench-numpy.json

install: $(PY_STAMP) $(NODE_STAMP)

$(PY_STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

clean:
	rm -rf $(VENV) node_modules out
