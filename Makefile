# The README's two set-up commands. Both create .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

venv: $(PY)

## make demo: install fl-core and run examples/hello-numpy in the simulator
demo: $(PY)
	$(PIP) install --quiet -e .
	$(VENV)/bin/fl-core run examples/hello-numpy --clients 3 --workspace fl-workspace/hello-numpy
	$(PY) -c "import numpy as np; m = np.load('fl-workspace/hello-numpy/final_model.npz'); print('final model:', {k: m[k].ravel()[:3].tolist() for k in m.files})"

## make test: install fl-core with [dev] and the test plugin package, run the whole suite
test: $(PY)
	$(PIP) install --quiet -e ".[dev]" ./tests/thirdparty_plugin
	$(PY) -m pytest

clean:
	rm -rf $(VENV) fl-workspace .pytest_cache .mypy_cache .ruff_cache
