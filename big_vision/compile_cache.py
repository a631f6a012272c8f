"""JAX's persistent compilation cache, on by default for launches.

  from big_vision import compile_cache
  compile_cache.enable()            # default: ~/.cache/big_vision/jax_cache
  compile_cache.enable("/fast/disk/jax_cache")
  compile_cache.enable("off")       # what --compilation_cache=off does

Why: the train step, the evaluators' predict functions and the optimizer
init are compiled anew at every launch, and a resume (or a second run of the
same config) compiles exactly the same programs again: on a pod that is
minutes per preemption. With the cache, XLA executables are keyed by the
program and the compile options and read back from disk instead.

The directory is shared by every run of the user (runs of the same config in
different workdirs share entries); $BIG_VISION_COMPILATION_CACHE (else
jax's own $JAX_COMPILATION_CACHE_DIR) sets the default, and "off" (flag or
variable) disables it. Programs that compile in
under MIN_COMPILE_SECONDS are not stored: reading them back would cost about
as much as compiling them, and orbax alone compiles hundreds of tiny ones
(each well under 0.05 s on 2 CPU cores). The classification evaluator's
metric program compiles in ~0.13 s and is read back in ~0.02 s, so it is
stored (a warm `vit_digits.py` launch 0.1-0.2 s sooner than with 0.2 s,
8 alternating launches each).

The train step and the state init also go, whole, into
<cache dir>/big_vision_executables (executable_cache.py): read from there,
they are not even traced. It is on and off with this cache.
"""
import os

DEFAULT_DIR = os.path.join(os.path.expanduser("~"), ".cache", "big_vision",
                           "jax_cache")
ENV = "BIG_VISION_COMPILATION_CACHE"
OFF = ("off", "none", "0", "false", "")
MIN_COMPILE_SECONDS = 0.05


def resolve(setting: str | None = None) -> str | None:
  """The cache directory for `setting` ("auto"/None, "off", or a path)."""
  if setting in (None, "auto"):
    setting = os.environ.get(ENV) or os.environ.get(
        "JAX_COMPILATION_CACHE_DIR") or DEFAULT_DIR
  if str(setting).strip().lower() in OFF:
    return None
  return os.path.expanduser(str(setting))


def enable(setting: str | None = None) -> str | None:
  """Points jax's persistent compilation cache at `setting`; returns the
  directory in use, or None when off. Call before the first compilation."""
  import jax  # pylint: disable=g-import-not-at-top
  path = resolve(setting)
  if path is None:
    jax.config.update("jax_compilation_cache_dir", None)
    return None
  if "://" not in path:
    os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs",
                    MIN_COMPILE_SECONDS)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path
