"""Default XLA flags for NVIDIA GPUs, added to $XLA_FLAGS before jax starts.

  from big_vision import xla_flags
  xla_flags.apply()          # first thing in a launcher, before any jax use

Why a module: XLA reads $XLA_FLAGS once, when the first backend starts, so
flags must be in the environment before any computation; a launcher
(`tools/bench.py`, `big_vision.train`) calls `apply()` at start-up.

Rules, so that nobody is surprised:
* Only when a CUDA jax plugin is installed and $JAX_PLATFORMS (if set) allows
  a GPU: CPU and TPU runs are left exactly as they are.
* A flag the user already put in $XLA_FLAGS (with any value) is never
  touched; nothing else there is changed either.
* $BIG_VISION_NO_XLA_FLAGS=1 turns all of this off.

The set is deliberately small: each flag is one that JAX's GPU performance
guide and NVIDIA's JAX containers recommend for data-parallel training, and
that does no harm on one GPU. Flags whose benefit depends on the jaxlib
version or the model (e.g. Triton GEMMs) are left to the user. The measured
effect on H100 is owed (tools/bench.py with and without
BIG_VISION_NO_XLA_FLAGS=1).
"""
import importlib.util
import os

# (flag, value, why).
GPU_FLAGS = (
    ("--xla_gpu_enable_latency_hiding_scheduler", "true",
     "schedules the gradient all-reduce to overlap with the backward pass "
     "(multi-GPU data parallelism); no effect with one device"),
)

_CUDA_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin",
                 "jax_plugins.xla_cuda12", "jax_plugins.xla_cuda13")


def _has_module(name: str) -> bool:
  try:
    return importlib.util.find_spec(name) is not None
  except (ImportError, ValueError):  # Parent package missing.
    return False


def gpu_expected() -> bool:
  """Whether jax will (probably) run on an NVIDIA GPU; starts no backend."""
  platforms = os.environ.get("JAX_PLATFORMS", "") or os.environ.get(
      "JAX_PLATFORM_NAME", "")
  if platforms and not any(p.strip() in ("cuda", "gpu")
                           for p in platforms.split(",")):
    return False
  return any(_has_module(m) for m in _CUDA_PLUGINS)


def flags_to_add(current: str, flags=GPU_FLAGS) -> list[str]:
  """The `--flag=value` items of `flags` not already named in `current`."""
  present = {item.split("=", 1)[0] for item in current.split()}
  return [f"{flag}={value}" for flag, value, _ in flags if flag not in present]


def apply(force_gpu: bool | None = None) -> list[str]:
  """Adds the default GPU flags to $XLA_FLAGS; returns the ones added.

  `force_gpu` overrides the detection (tests). Must run before jax starts a
  backend; later calls change nothing that jax will read.
  """
  if os.environ.get("BIG_VISION_NO_XLA_FLAGS", "") not in ("", "0"):
    return []
  on_gpu = gpu_expected() if force_gpu is None else force_gpu
  if not on_gpu:
    return []
  current = os.environ.get("XLA_FLAGS", "")
  added = flags_to_add(current)
  if added:
    os.environ["XLA_FLAGS"] = " ".join([current] + added).strip()
  return added
