"""Test-wide setup.

Eight virtual CPU devices, so that data-parallel and sharded code paths are
exercised on every run (DESIGN.md: multi-device behaviour is tested with
`--xla_force_host_platform_device_count=8`), compiling at LLVM's -O0 except
where a test trains long enough to need optimised code (xla_opt.py). Must run
before jax is imported.
"""
import os
import tempfile

import xla_opt  # pylint: disable=g-import-not-at-top,wrong-import-position

# XLA flags of the test processes (and of the trainers they launch, which
# inherit $XLA_FLAGS); a flag already in $XLA_FLAGS is left as it is. The
# fast-compile level and the tests exempt from it: xla_opt.py.
for _flag in ("--xla_force_host_platform_device_count=8",
              xla_opt.FAST_COMPILE_FLAG):
  if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " +
                               _flag).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Keep tensorflow from grabbing accelerators or all host threads in tests.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# No persistent compilation cache in tests. A cache directory shared by many
# concurrent test processes (some with other device topologies: the
# multi-process tests run 2 x 4 devices) once served an executable that
# aborted an 8-device process; the cause is not pinned down, and a test
# suite must not depend on what earlier runs left on the machine. Tests of
# the cache (test_compile_cache.py) pass their own fresh directories;
# trainers that tests launch as subprocesses inherit "off".
os.environ.setdefault("BIG_VISION_COMPILATION_CACHE", "off")
os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)


import sys  # pylint: disable=g-import-not-at-top,wrong-import-position

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(autouse=True)
def _no_leaked_tf_global_seed():
  """Tests that call tf.random.set_seed (hand-called pp ops) leave it unset.

  The library does not depend on it (test_input_pipeline checks that the
  training stream ignores it), but a leaked global seed would make later
  tests in the same worker draw other hand-called random ops.
  """
  yield
  tf = sys.modules.get("tensorflow")
  if tf is not None and hasattr(tf, "random"):
    tf.random.set_seed(None)


@pytest.fixture(autouse=True)
def _xla_optimized_marker(request):
  """`@pytest.mark.xla_optimized`: the test's jits compile at XLA's default
  optimisation level (xla_opt.py says why and which tests)."""
  if request.node.get_closest_marker("xla_optimized") is None:
    yield
    return
  with xla_opt.optimized():
    yield


@pytest.fixture
def compiled():
  """The names (e.g. "jit(step)") of the XLA compiles during the test, from
  jax's own monitoring events; tests clear it (`del compiled[:]`) to count
  from a later point."""
  import jax  # pylint: disable=g-import-not-at-top
  names = []

  def listen(name, secs, **kw):
    del secs
    if name.endswith("backend_compile_duration"):
      names.append(kw.get("fun_name"))

  jax.monitoring.register_event_duration_secs_listener(listen)
  yield names
  jax.monitoring.unregister_event_duration_listener(listen)
