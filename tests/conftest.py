"""Test-wide setup.

Eight virtual CPU devices, so that data-parallel and sharded code paths are
exercised on every run (DESIGN.md: multi-device behaviour is tested with
`--xla_force_host_platform_device_count=8`). Must run before jax is imported.
"""
import os

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Keep tensorflow from grabbing accelerators or all host threads in tests.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
