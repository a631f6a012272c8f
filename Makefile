# Entry points, self-contained on a machine with only Python:
#   make demo   create .venv, install, train vit_digits.py, print the test accuracy
#   make test   create .venv, install with test extras, run pytest
#   make test-quick   the same without the end-to-end training tests (inner loop)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= workdirs/demo

.PHONY: demo test test-quick venv clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(PY) -m big_vision.train --config big_vision/configs/vit_digits.py --workdir $(DEMO_DIR)
	$(PY) tools/print_result.py --workdir $(DEMO_DIR)

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile --durations=10 tests

# The inner loop: everything but the tests marked slow (tests/conftest.py).
test-quick: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile --durations=5 -m "not slow" tests

# Build products only. Run outputs (workdirs/: checkpoints, metrics) are
# never deleted by make clean.
clean:
	rm -rf $(VENV) build *.egg-info
