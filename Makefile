# Two entry points: `make demo` and `make test`. Both install what they need once
# (.venv + pinned Python deps, node_modules with the real MicroPython runtime) and reuse it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PY_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: demo test install bench bench-lr fuzz clean

demo: install
	$(VENV)/bin/skip2lora demo

test: install
	$(PY) -m pytest

# 10,000+ generated streams into the protocol core (CPython), the fixed corpus under MicroPython,
# then whole runs over a faulty link (1% of bytes flipped, 0.5% dropped) against the emulator
fuzz: install
	FUZZ_EXAMPLES=5000 $(PY) -m pytest -s tests/firmware/test_fuzz.py
	$(PY) -m skip2lora.link.relay --runs 3

bench: install
	$(VENV)/bin/skip2lora bench --runtime numpy --json out/bench-numpy.json

# the lr export picks vs the best rate on the test set, on every shipped scenario (~75 s)
bench-lr: install
	for s in rotate noise gain fan-env fan-room fan-speed; do \
		$(VENV)/bin/skip2lora probe-lr --scenario $$s --quiet --json out/lr/$$s.json || exit 1; done

install: $(PY_STAMP) $(NODE_STAMP)

# pip's own lines show it working (--quiet left half a minute silent); its last step, unpacking the
# packages, still prints nothing for some seconds
$(PY_STAMP): pyproject.toml requirements.lock
	@echo "installing the pinned Python packages into $(VENV), once (about half a minute) ..."
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --progress-bar off --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

$(NODE_STAMP): package.json package-lock.json
	@echo "installing the MicroPython WebAssembly runtime into node_modules, once ..."
	npm ci --no-audit --no-fund
	touch $@

clean:
	rm -rf $(VENV) node_modules out
