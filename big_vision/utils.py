"""Small helpers shared by every layer: tree names, step arithmetic, progress.

Imports only numpy and jax (no tensorflow, no flax), so that models, the
optimizer and tools can all use it.
"""
import concurrent.futures
import dataclasses
import difflib
import gc
import os
import re
import tempfile
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import numpy as np


# ----------------------------------------------------------------------------
# Errors a user can act on.
# ----------------------------------------------------------------------------
def unknown_name_error(kind: str, name: Any, valid: Iterable[str],
                       where: str = "") -> ValueError:
  """A ValueError naming the bad value, a close match and the valid choices."""
  valid = sorted(set(map(str, valid)))
  close = difflib.get_close_matches(str(name), valid, n=1)
  hint = f" Did you mean {close[0]!r}?" if close else ""
  loc = f" (in {where})" if where else ""
  return ValueError(
      f"Unknown {kind} {name!r}{loc}.{hint} Valid choices: {', '.join(valid)}.")


class ConfigError(ValueError):
  """A mistake in the config; str() is one line naming where and what.

  Raised by the config check and by `program.build`; `python -m
  big_vision.train` prints it as `error: <message>` and exits with status 2.
  """

  def __init__(self, where: str, message: str):
    message = " ".join(str(message).split())  # One line, always.
    if where and where not in message:
      message = f"{where}: {message}"
    super().__init__(message)
    self.where = where


def lookup(kind: str, name: Any, registry, get: Callable[[str], Any] | None
           = None, where: str = "") -> Any:
  """The one lookup of every pluggable kind (models, evaluators, losses,
  objectives, optimizers, schedules, sharding tactics, pp ops, data sources).

  `registry` is a mapping name -> entry, or a list of valid names with `get`
  loading an entry by name (module-backed kinds). An unknown name raises the
  same ValueError everywhere: the bad name, a close match, every valid one.
  """
  names = list(registry.keys()) if hasattr(registry, "keys") else list(registry)
  if name not in names:
    raise unknown_name_error(kind, name, names, where=where)
  return get(name) if get is not None else registry[name]


class Registry(dict):
  """The one registry idiom of big_vision: name -> entry for one kind.

    DECAYS = utils.Registry("decay_type", where="config.schedule")

    @DECAYS.register("cosine")
    def _cosine(...): ...

    DECAYS.lookup(name)   # the entry, or the ValueError of `lookup` above

  Used for every pluggable kind that lives in code: losses, objectives,
  optimizers, schedule decays, sharding tactics, data sources (pp ops keep
  big_vision's global `pp.registry.Registry`, which reports unknown names
  the same way). Kinds that are whole modules (models, evaluators) use
  `ModuleRegistry`, with the same `lookup` and the same error.
  """

  def __init__(self, kind: str, where: str = "", entries=None):
    super().__init__(entries or {})
    self.kind, self.where = kind, where

  def register(self, name: str):
    """Decorator adding `fn` under `name`; a second registration is an error."""
    def deco(fn):
      if name in self:
        raise ValueError(f"{self.kind} {name!r} is already registered.")
      self[name] = fn
      return fn
    return deco

  def names(self) -> list[str]:
    return sorted(self)

  def lookup(self, name: str, where: str | None = None,
             extra_names: Iterable[str] = ()):
    """The entry of `name`; else ValueError naming the valid ones (plus
    `extra_names`: choices that another mechanism accepts)."""
    if name in self:
      return self[name]
    raise unknown_name_error(self.kind, name, list(self) + list(extra_names),
                             where=self.where if where is None else where)


class ModuleRegistry:
  """A kind whose entries are the modules of a package (models, evaluators):
  a new module is a new entry. `exclude` names the package's helper modules,
  which are never offered (e.g. models/resnet_stem.py is a building block)."""

  def __init__(self, kind: str, package: str, exclude: Iterable[str] = (),
               where: str = ""):
    self.kind, self.package, self.where = kind, package, where
    self.exclude = tuple(exclude)

  def names(self) -> list[str]:
    import importlib  # pylint: disable=g-import-not-at-top
    import pkgutil  # pylint: disable=g-import-not-at-top
    pkg = importlib.import_module(self.package)
    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__)
                  if m.name not in self.exclude and not m.name.startswith("_"))

  def __contains__(self, name) -> bool:
    return name in self.names()

  def lookup(self, name: str, where: str | None = None):
    import importlib  # pylint: disable=g-import-not-at-top
    names = self.names()
    if name not in names:
      raise unknown_name_error(self.kind, name, names,
                               where=self.where if where is None else where)
    return importlib.import_module(f"{self.package}.{name}")


# ----------------------------------------------------------------------------
# Trees with '/'-joined names, the layout of published checkpoints.
# ----------------------------------------------------------------------------
def _key_name(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def tree_flatten_with_names(tree) -> tuple[list[tuple[str, Any]], Any]:
  """Returns ([(name, leaf), ...], treedef); name like 'Transformer/x/kernel'."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  named = [("/".join(_key_name(k) for k in path), leaf) for path, leaf in leaves]
  return named, treedef


def tree_map_with_names(fn: Callable[[str, Any], Any], tree):
  """Like jax.tree.map but `fn(name, leaf)` also sees the leaf's '/' name."""
  named, treedef = tree_flatten_with_names(tree)
  return jax.tree_util.tree_unflatten(treedef, [fn(n, x) for n, x in named])


def flatten_dict(tree: Mapping, prefix: str = "") -> dict[str, Any]:
  """Nested dict -> {'a/b/c': leaf}. Only dicts are descended into."""
  out = {}
  for k, v in tree.items():
    name = f"{prefix}/{k}" if prefix else str(k)
    if isinstance(v, Mapping):
      out.update(flatten_dict(v, name))
    else:
      out[name] = v
  return out


def unflatten_dict(flat: Mapping[str, Any]) -> dict:
  """{'a/b/c': leaf} -> nested dict (inverse of `flatten_dict`)."""
  tree: dict = {}
  for name, v in flat.items():
    node = tree
    *parents, leaf = name.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def match_rules(rules: Sequence[tuple[str, Any]], name: str,
                default: Any = dataclasses.MISSING) -> Any:
  """Value of the first `(regex, value)` rule whose regex fully matches name."""
  for pattern, value in rules:
    if re.fullmatch(pattern, name):
      return value
  if default is dataclasses.MISSING:
    raise ValueError(
        f"Parameter {name!r} is not matched by any of the patterns "
        f"{[p for p, _ in rules]}. Add a pattern for it (e.g. ('.*', ...)).")
  return default


def tree_count(tree) -> int:
  """Number of scalars in a tree of arrays or ShapeDtypeStructs."""
  return int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(tree)))


def tree_bytes(tree) -> int:
  return int(sum(np.prod(x.shape, dtype=np.int64) * np.dtype(x.dtype).itemsize
                 for x in jax.tree.leaves(tree)))


# ----------------------------------------------------------------------------
# Step arithmetic: a duration may be given in steps, epochs, examples or %.
# ----------------------------------------------------------------------------
def steps(prefix: str, config: Mapping, data_size: int | None = None,
          batch_size: int | None = None, total_steps: int | None = None,
          default: Any = ValueError) -> int:
  """Number of steps for `{prefix}_steps|_epochs|_examples|_percent` in config.

  Exactly one of the four may be set. `config` is any mapping (ConfigDict ok).
  E.g. steps("total", config, data_size=50000, batch_size=512) with
  config.total_epochs=10 gives ceil(10 * 50000 / 512) = 977.
  """
  suffixes = {"steps", "epochs", "examples", "percent"}
  given = [s for s in suffixes if config.get(f"{prefix}_{s}") is not None]
  if len(given) > 1:
    raise ValueError(f"Set only one of {[f'{prefix}_{s}' for s in given]}.")
  if not given:
    if default is ValueError:
      raise ValueError(f"Config needs one of {prefix}_steps, {prefix}_epochs, "
                       f"{prefix}_examples or {prefix}_percent.")
    return default
  suffix = given[0]
  value = config.get(f"{prefix}_{suffix}")
  if suffix == "steps":
    return int(value)
  if suffix == "percent":
    # A fraction of the run, as in big_vision: 0.1 is 10% of the steps.
    if not 0 <= value <= 1:
      raise ValueError(
          f"{prefix}_percent={value} must be a fraction of the run in [0, 1] "
          f"(e.g. {prefix}_percent=0.1 for 10% of the steps).")
    if total_steps is None:
      raise ValueError(f"{prefix}_percent needs total_steps to be known.")
    return int(round(value * total_steps))
  if batch_size is None:
    raise ValueError(f"{prefix}_{suffix} needs the batch size.")
  if suffix == "examples":
    return int(np.ceil(value / batch_size))
  if data_size is None:
    raise ValueError(f"{prefix}_epochs needs the dataset size.")
  return int(np.ceil(value * data_size / batch_size))


# ----------------------------------------------------------------------------
# Progress and ETA on the console.
# ----------------------------------------------------------------------------
class Chrono:
  """Measures throughput between log steps, excluding paused time (evals, ckpt)."""

  def __init__(self, first_step: int, total_steps: int, global_bs: int,
               num_devices: int):
    self.first_step = first_step
    self.total_steps = total_steps
    self.global_bs = global_bs
    self.num_devices = num_devices
    self.start_time = time.monotonic()
    self.prev_time = None
    self.prev_step = first_step
    self.paused_total = 0.0
    self.paused_since_prev = 0.0
    self._pause_start = None
    self.accum_core_hours = 0.0

  def pause(self):
    self._pause_start = time.monotonic()

  def resume(self):
    dt = time.monotonic() - self._pause_start
    self.paused_total += dt
    self.paused_since_prev += dt

  def tick(self, step: int) -> dict[str, float]:
    """Metrics since the previous tick. The first tick only starts the clock
    (it includes compilation, which would distort the throughput)."""
    now = time.monotonic()
    out = {}
    if self.prev_time is not None and step > self.prev_step:
      dt = now - self.prev_time - self.paused_since_prev
      nsteps = step - self.prev_step
      out["steps_per_sec"] = nsteps / max(dt, 1e-9)
      out["img_per_sec"] = out["steps_per_sec"] * self.global_bs
      out["img_per_sec_per_core"] = out["img_per_sec"] / self.num_devices
      self.accum_core_hours += dt * self.num_devices / 3600
      out["core_hours"] = self.accum_core_hours
      remaining = self.total_steps - step
      self.eta_sec = remaining / out["steps_per_sec"]
    self.prev_time, self.prev_step, self.paused_since_prev = now, step, 0.0
    return out

  def note(self, step: int) -> str:
    eta = getattr(self, "eta_sec", None)
    pct = 100.0 * step / max(self.total_steps, 1)
    s = f"step {step}/{self.total_steps} ({pct:.1f}%)"
    if eta is not None:
      s += f", ETA {_fmt_seconds(eta)}"
    s += f", elapsed {_fmt_seconds(time.monotonic() - self.start_time)}"
    return s


def write_atomically(path: str, write: Callable[[Any], None]):
  """Writes the local file `path` whole or not at all: `write(f)` fills a
  temporary file beside it (flushed to disk), which is then renamed over
  `path`; on any failure the temporary file is removed and `path` is left
  as it was. A reader never sees a partial file."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".tmp-",
                             dir=directory)
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def on_thread(fn: Callable[[], Any], name: str) -> concurrent.futures.Future:
  """Starts `fn()` on a thread of its own, at once; `.result()` returns or
  raises what it did. Python waits for the thread at exit."""
  pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=name)
  future = pool.submit(fn)
  pool.shutdown(wait=False)  # The thread ends with its one task.
  return future


def freeze_gc_heap():
  """Takes every object alive now out of Python's cyclic garbage collector.

  A process that has imported jax, flax and tensorflow holds about a million
  long-lived objects, and tracing a step allocates millions of short-lived
  ones: every full collection walked the long-lived ones again (1.2 s of a
  7 s warm vit_digits launch, ~5% of a compile-heavy test). Frozen objects
  are never scanned (gc.freeze), and a larger first-generation threshold
  makes the collections during tracing rarer. Objects made later are still
  collected; frozen ones are never freed, so call it where what is alive is
  meant to live (after imports), not between runs.
  """
  gc.freeze()
  gc.set_threshold(10_000, 10, 10)


def _fmt_seconds(s: float) -> str:
  s = int(s)
  h, rem = divmod(s, 3600)
  m, sec = divmod(rem, 60)
  return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"
