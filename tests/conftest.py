"""Test-wide setup.

Eight virtual CPU devices, so that data-parallel and sharded code paths are
exercised on every run (DESIGN.md: multi-device behaviour is tested with
`--xla_force_host_platform_device_count=8`), compiling fast (LLVM's -O0,
XLA's CPU element-wise emitters) except where a test trains long enough to
need optimised code (xla_opt.py). Must run before jax is imported.
"""
import os

import xla_opt  # pylint: disable=g-import-not-at-top,wrong-import-position

# XLA flags of the test processes (and of the trainers they launch, which
# inherit $XLA_FLAGS unless the test sets its own); a flag already in
# $XLA_FLAGS is left as it is. The fast-compile settings and the tests exempt
# from them: xla_opt.py.
for _flag in ("--xla_force_host_platform_device_count=8",
              *xla_opt.FAST_COMPILE_FLAGS,
              *xla_opt.PATIENT_COLLECTIVES_FLAGS):
  if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " +
                               _flag).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Keep tensorflow from grabbing accelerators or all host threads in tests.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# No compilation cache shared between test processes. A cache directory
# shared by many concurrent test processes (some with other device
# topologies: the multi-process tests run 2 x 4 devices) once served an
# executable that aborted an 8-device process; the cause is not pinned down,
# and a test suite must not depend on what earlier runs left on the machine.
# So each test process gets a private one for the run (pytest_configure
# below), tests of the cache (test_compile_cache.py, and test_never_lose.py's
# resumes) pass their own fresh directories, and other trainers that tests
# launch as subprocesses inherit "off".
os.environ.setdefault("BIG_VISION_COMPILATION_CACHE", "off")
os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)


import gc  # pylint: disable=g-import-not-at-top,wrong-import-position
import shutil  # pylint: disable=g-import-not-at-top,wrong-import-position
import sys  # pylint: disable=g-import-not-at-top,wrong-import-position
import tempfile  # pylint: disable=g-import-not-at-top,wrong-import-position

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

_WORKER_CACHE = []


def pytest_configure(config):
  """Each test process keeps its own compilation cache, for this run only.

  Many tests compile the same programs (the same tiny model's train step,
  init and predict functions under another test's name), and a process's
  in-memory jit caches do not outlive the function objects a test builds.
  JAX's persistent cache, keyed by the program and its compile options,
  serves them from disk instead. The directory belongs to one process (an
  xdist worker): nothing is shared between concurrent processes (see the
  note above), nothing survives the run, and the trainers that tests
  launch still inherit "off". Compile counts (the `compiled` fixture) are
  unchanged: jax reports a cache hit as a compile of that function.
  """
  del config
  from big_vision import compile_cache  # pylint: disable=g-import-not-at-top
  path = tempfile.mkdtemp(prefix="big_vision_tests_jax_cache_")
  _WORKER_CACHE.append(path)
  compile_cache.enable(path)


def pytest_collection_finish(session):
  """The heap of imports and collected tests leaves the cyclic collector
  (utils.freeze_gc_heap, as train.py does in a command-line run): ~5% of a
  recipe test's CPU went to full collections. Garbage that tests make is
  still collected."""
  del session
  from big_vision import utils  # pylint: disable=g-import-not-at-top
  gc.collect()
  utils.freeze_gc_heap()


def pytest_unconfigure(config):
  del config
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", None)
  for path in _WORKER_CACHE:
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def own_compile_cache(tmp_path):
  """A compilation cache of the test's own, empty at the start (so what the
  test compiles is compiled, not read from the worker's cache); the
  worker's cache settings are back afterwards. Yields its directory."""
  import jax  # pylint: disable=g-import-not-at-top
  from big_vision import compile_cache  # pylint: disable=g-import-not-at-top
  names = ("jax_compilation_cache_dir",
           "jax_persistent_cache_min_compile_time_secs")
  before = {n: getattr(jax.config, n) for n in names}
  path = str(tmp_path / "own_jax_cache")
  compile_cache.enable(path)
  yield path
  for n, v in before.items():
    jax.config.update(n, v)


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


# `make test-quick` runs `-m "not slow"`: the suite without the tests that
# train end to end, launch trainers or train to an accuracy (those compile
# and run whole train steps: ~85% of the suite's time). `make test` runs
# everything. A module here is slow as a whole; single tests by node id (no
# parameters); every `xla_optimized` test (it trains for hundreds of steps).
SLOW_MODULES = frozenset(f"tests/{m}.py" for m in (
    "test_recipes_as_written", "test_backbone_configs",
    "test_image_text_train", "test_never_lose", "test_synthetic_and_bench",
    "test_train", "test_captioning", "test_transfer", "test_program",
    "test_eval_only_fewshot", "test_accum_ema", "test_multihost", "test_sam",
    "test_siglip2_distill", "evaluators/test_finetune", "test_sharding",
    "test_plan", "test_vtab1k", "test_distill"))
SLOW_TESTS = frozenset((
    "tests/test_siglip2.py::test_evaluators_run_a_naflex_tower_at_several_sequence_lengths",
    "tests/test_config_check.py::test_cli_prints_one_error_line_and_exits_2",
    "tests/models/test_vit_hybrid.py::test_hybrid_forward_shapes_and_stem_output",
    # They train through train.py (a big_vision-style config; cifar10 as
    # prepared by its own TFDS builder).
    "tests/test_bigvision_config_compat.py::test_big_vision_style_config_trains_two_steps",
    "tests/datasets/test_tfds_real_builders.py::test_cifar10_prepared_by_tfds_builder_then_trained",
))


def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    module, _, name = item.nodeid.partition("::")
    if (module in SLOW_MODULES or f"{module}::{name.split('[')[0]}" in
        SLOW_TESTS or item.get_closest_marker("xla_optimized") is not None):
      item.add_marker(pytest.mark.slow)
