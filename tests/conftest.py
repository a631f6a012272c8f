"""Test-wide setup.

Eight virtual CPU devices, so that data-parallel and sharded code paths are
exercised on every run (DESIGN.md: multi-device behaviour is tested with
`--xla_force_host_platform_device_count=8`). Must run before jax is imported.
"""
import os
import tempfile

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Keep tensorflow from grabbing accelerators or all host threads in tests.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# JAX's persistent compilation cache, shared by the test processes (xdist
# workers and the trainers tests launch): the same tiny models and steps are
# compiled by many tests, and a rerun on the same machine compiles little.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), "big_vision_tests_jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
