# The README's two set-up commands. Both create .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test test-fast venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

venv: $(PY)

## make demo: install fl-core and run examples/hello-numpy in the simulator
demo: $(PY)
	$(PIP) install --quiet -e .
	$(VENV)/bin/fl-core run examples/hello-numpy --clients 3 --workspace fl-workspace/hello-numpy
	$(PY) -c "import numpy as np; m = np.load('fl-workspace/hello-numpy/final_model.npz'); print('final model:', {k: m[k].ravel()[:3].tolist() for k in m.files})"
	@echo "fl-core is installed in $(VENV): '. $(VENV)/bin/activate' puts it on your PATH (or run $(VENV)/bin/fl-core)"

## make test: install fl-core with [dev,torch,examples] and the test plugin package, lint, type-check, run the suite
# The strict editable install links real files under fl_core/fl_plugins, which mypy needs.
# [torch] and [examples] too, so the tensor conversion tests and hello-pytorch run
# (and mypy sees torch's types) instead of skipping.
test: $(PY)
	$(PIP) install --quiet -e ".[dev,torch,examples]" --config-settings editable_mode=strict
	$(PIP) install --quiet ./tests/thirdparty_plugin
	$(PIP) install --quiet ./tests/thirdparty_transport
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy -p fl_core -p fl_plugins
	$(PY) -m pytest

## make test-fast: the suite without the whole-system runs (marker e2e), for the edit-test loop
test-fast: $(PY)
	$(PIP) install --quiet -e ".[dev,torch,examples]" --config-settings editable_mode=strict
	$(PIP) install --quiet ./tests/thirdparty_plugin ./tests/thirdparty_transport
	$(PY) -m pytest -q -m "not e2e"

clean:
	rm -rf $(VENV) build fl-workspace .pytest_cache .mypy_cache .ruff_cache
