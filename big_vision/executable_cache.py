"""Whole compiled programs on disk, so that a warm launch does not trace them.

  compiled = executable_cache.load_or_compile(
      "train_step", executable_cache.key(parts),
      lambda: update_fn.lower(*abstract_args))
  state, info = compiled(state, batch)

Why: JAX's persistent compilation cache (compile_cache.py) skips XLA's
compile, but it is keyed by the lowered program, so every launch still
traces the step to a jaxpr and lowers it to StableHLO before it can look the
executable up. That is Python holding the GIL: about 0.8 s of a 5.3 s warm
`vit_digits.py` launch on 2 CPU cores, and it grows with the model and the
optimizer. Here a program is stored whole (jax's serialize_executable: the
XLA executable with its argument and result trees) under a key made of
what went into building it, so a later launch loads it without tracing.

The key must change whenever the program could. It is the hash of:
  - `parts` from the caller: the resolved config, the abstract
    arguments (shapes, dtypes, weak types, shardings) and whatever the
    program was built from besides them (e.g. the training set's size);
  - the code: the contents of every big_vision source file, and the size
    and modification time of every file of the installed packages programs
    are built with (PACKAGES: jax, flax, optax, ...; editable installs
    included), with the jax and jaxlib versions;
  - the machine: backend, platform version, the devices (ids, kinds,
    processes), every jax config value and the XLA/JAX/TPU/CUDA environment
    variables.
Anything not in the key cannot change what is stored: when in doubt, a part
goes in (a missed entry only costs the trace it would have saved).

It lives beside the compilation cache (<cache dir>/big_vision_executables),
so it is on exactly when that is (--compilation_cache=off turns both off),
and only in single-process runs: a multi-process executable spans other
processes' devices, which jax cannot load from a file. An entry that cannot
be read (truncated, from another jax) is compiled again and rewritten, with
a warning; entries are written atomically (utils.write_atomically).
"""
import hashlib
import importlib.util
import os
import pickle
import threading
from typing import Any, Callable

from absl import logging
import jax
from jax.experimental import serialize_executable

from big_vision import utils

SUBDIR = "big_vision_executables"
# Environment variables that can change how programs are traced or compiled.
ENV_PREFIXES = ("XLA_", "JAX_", "TPU_", "LIBTPU", "CUDA_", "NVIDIA_",
                "BIG_VISION_")
# The installed packages whose code goes into big_vision's programs.
PACKAGES = ("jax", "jaxlib", "flax", "optax", "chex", "numpy", "einops",
            "ml_collections")
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def directory() -> str | None:
  """Where entries go, or None when the cache is off (no compilation cache,
  a remote one, or several processes)."""
  base = jax.config.jax_compilation_cache_dir
  if not base or "://" in base or jax.process_count() > 1:
    return None
  return os.path.join(base, SUBDIR)


def _source_digest(root: str) -> bytes:
  """Contents of every .py file under `root` (sorted by path)."""
  h = hashlib.sha256()
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for name in sorted(filenames):
      if name.endswith(".py"):
        path = os.path.join(dirpath, name)
        h.update(os.path.relpath(path, root).encode() + b"\0")
        with open(path, "rb") as f:
          h.update(f.read() + b"\0")
  return h.digest()


def _installed_digest() -> bytes:
  """Path, size and mtime of every file of the packages programs are built
  with (PACKAGES, as installed): a fixed list, so that the key does not
  depend on which modules happen to be imported when it is computed."""
  entries = []
  for name in PACKAGES:
    spec = importlib.util.find_spec(name)
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
      for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for f in sorted(filenames):
          path = os.path.join(dirpath, f)
          try:
            st = os.stat(path)
          except OSError:
            continue
          entries.append(f"{path}\0{st.st_size}\0{st.st_mtime_ns}")
  return hashlib.sha256("\n".join(entries).encode()).digest()


def _machine() -> str:
  backend = jax.devices()[0].client
  devices = [(d.id, d.process_index, d.device_kind, d.platform)
             for d in jax.devices()]
  env = sorted((k, v) for k, v in os.environ.items()
               if k.startswith(ENV_PREFIXES))
  config = sorted((k, repr(v)) for k, v in jax.config.values.items())
  return repr((jax.__version__, jax.lib.__version__, backend.platform,
               backend.platform_version, jax.process_index(),
               jax.process_count(), devices, env, config))


def fingerprint() -> str:
  """The code and the machine, as one hex digest (see the module doc).

  Not memoized: source edits since the last call must count. It takes
  about 20-40 ms (stat calls, ~1 MB of big_vision source)."""
  h = hashlib.sha256()
  h.update(_source_digest(_PACKAGE_DIR))
  h.update(_installed_digest())
  h.update(_machine().encode())
  return h.hexdigest()


def key(parts: Any) -> str:
  """The key of a program built from `parts` (see the module doc), with
  this process's code and machine. Compute it once per program builder
  (program.Program.executable_key): it reads the source and stats the
  installed files."""
  h = hashlib.sha256(fingerprint().encode())
  h.update(repr(parts).encode())
  return h.hexdigest()[:40]


def entry_path(name: str, program_key: str) -> str | None:
  """The file of program `name` under `program_key`; None when off."""
  d = directory()
  return None if d is None else os.path.join(d, f"{name}-{program_key}.bin")


def _load(path: str) -> jax.stages.Compiled:
  with open(path, "rb") as f:
    in_tree, out_tree, device_ids, blob = pickle.load(f)
  by_id = {d.id: d for d in jax.devices()}
  return serialize_executable.deserialize_and_load(
      blob, in_tree, out_tree,
      execution_devices=[by_id[i] for i in device_ids])


def _store(path: str, compiled: jax.stages.Compiled):
  blob, in_tree, out_tree = serialize_executable.serialize(compiled)
  # The devices it runs on, in order: a program for one device of eight is
  # loaded for that one.
  device_ids = [d.id for d in compiled.runtime_executable().local_devices()]
  utils.write_atomically(path, lambda f: pickle.dump(
      (in_tree, out_tree, device_ids, blob), f,
      protocol=pickle.HIGHEST_PROTOCOL))


class _JaxCacheReads(threading.local):
  """Per thread: how many executables jax read from its persistent cache."""
  count = 0

  def __call__(self, event, **kwargs):
    del kwargs
    if event == "/jax/compilation_cache/cache_hits":
      self.count += 1


_JAX_CACHE_READS = _JaxCacheReads()
jax.monitoring.register_event_listener(_JAX_CACHE_READS)


def load_or_compile(name: str, program_key: str,
                    lower: Callable[[], jax.stages.Lowered]
                    ) -> jax.stages.Compiled:
  """The compiled program: read from the cache, else `lower().compile()`
  and stored.

  Only a program XLA has just compiled is stored. One that jax read from
  its own compilation cache is not: serialized again, it can lack kernels
  (XLA:CPU, jaxlib 0.10: "Function ..._fusion not found" when it runs), so
  that launch traces as before, and the next real compile stores it.
  """
  path = entry_path(name, program_key)
  if path is not None and os.path.exists(path):
    try:
      return _load(path)
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("Could not load %s (%s: %s); compiling it again.",
                      path, type(e).__name__, e)
  reads = _JAX_CACHE_READS.count
  compiled = lower().compile()
  if path is not None and _JAX_CACHE_READS.count == reads:
    try:
      _store(path, compiled)
    except Exception as e:  # pylint: disable=broad-except
      # E.g. a program with constants jax cannot serialize: it just is
      # traced again next time.
      logging.info("Not storing %s (%s: %s).", name, type(e).__name__, e)
  return compiled
