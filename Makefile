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

# Three test processes on a 2-core machine: a test process often waits (on
# the trainers it launches, on tf.data, on the GIL while another of its own
# threads compiles), and a third keeps both cores busy. Measured on the
# 2-core dev machine: 1038 s of pytest with -n 3, 98% of both cores (user +
# sys); -n 2 left ~10% idle (1198 s the day before). With faster compiles
# (tests/xla_opt.py): 810-844 s, 183-188% of the 2 cores; the largest module
# (test_recipes_as_written.py, ~480 CPU-s) runs on one process for most of it.
TEST_WORKERS ?= 3

test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=10 tests

# The inner loop: everything but the tests marked slow (tests/conftest.py).
test-quick: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=5 -m "not slow" tests

# Build products only. Run outputs (workdirs/: checkpoints, metrics) are
# never deleted by make clean.
clean:
	rm -rf $(VENV) build *.egg-info
