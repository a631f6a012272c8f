"""Checkpoints: train-state save/resume (orbax) and `.npz` params import/export.

Train state: `Checkpointer(workdir)` saves the train-state dict under
`workdir/checkpoints/<step>/` asynchronously; see its docstring for the
crash-safety guarantees. `load_params(workdir)` returns the params of the last
complete checkpoint, so a workdir can stand wherever an `.npz` can.

Parameter import/export as `.npz`: one array per leaf, keys are the leaf's
path joined with '/' (e.g. `Transformer/encoder_norm/scale`). This is the
layout of the published big_vision / vit_jax checkpoints, so files written
here load there and vice versa.

bfloat16 (and other ml_dtypes floats such as float8) cannot be stored by
`np.savez` in a form other readers understand, so such leaves are UPCAST to
float32 on save. That is exact (every bfloat16 value is a float32 value) and
keeps the file loadable by any numpy; the price is that `load_params`
returns float32 for them (cast back with `.astype` if needed; `vit.load`
casts to the dtype of the initialised params anyway).

Paths: local paths, or `gs://...` through `tf.io.gfile` when tensorflow is
importable (imported lazily, only for such paths: this module must import on
machines without tensorflow).
"""
import io
import os
import tempfile
import uuid
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from big_vision import utils


def _is_remote(path: str) -> bool:
  return "://" in str(path)


def _gfile():
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError as e:  # Also raised when sys.modules["tensorflow"] = None.
    raise ImportError(
        "Reading or writing remote paths (gs://...) needs tensorflow's "
        "tf.io.gfile, and tensorflow is not importable here. Copy the file "
        "to a local path (e.g. with `gcloud storage cp`) or install "
        "tensorflow.") from e
  return tf.io.gfile


def _to_storable(name: str, leaf) -> np.ndarray:
  try:
    arr = np.asarray(leaf)
  except Exception as e:  # e.g. a jax.Array sharded across processes.
    raise ValueError(
        f"Cannot convert parameter {name!r} to a host numpy array ({e}). "
        "Arrays sharded across processes must be gathered first.") from e
  # Builtin numpy dtypes have kind in "biufcSU?"; ml_dtypes (bfloat16,
  # float8_*) show up as void-kind "V" and are not portable in .npz.
  if arr.dtype.kind == "V":
    arr = arr.astype(np.float32)
  elif arr.dtype == object:
    raise ValueError(f"Parameter {name!r} is not an array of numbers.")
  return arr


def save_params(params: Any, path: str) -> None:
  """Writes a pytree of arrays to `path` as `.npz`, atomically.

  Written to a temporary file next to `path`, then renamed over it, so a
  crash never leaves a truncated file where a checkpoint was expected. The
  path is used as given (no '.npz' suffix is appended).
  """
  named, _ = utils.tree_flatten_with_names(params)
  arrays = {name: _to_storable(name, leaf) for name, leaf in named}
  if len(arrays) != len(named):
    raise ValueError("Two leaves of the tree have the same '/'-joined name.")

  path = os.fspath(path)
  if _is_remote(path):
    gfile = _gfile()
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with gfile.GFile(tmp, "wb") as f:
      f.write(buf.getvalue())
    gfile.rename(tmp, path, overwrite=True)
    return

  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".tmp-",
                             dir=directory)
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def load_params(path: str) -> dict:
  """Params from an `.npz` (ours or a published one) or a training workdir.

  Returns a nested dict of numpy arrays, split on '/' in the keys. For a
  workdir, the params of its last complete checkpoint.
  """
  path = os.fspath(path)
  if not _is_remote(path) and os.path.isdir(path):
    return Checkpointer(path, read_only=True).restore_params_to_host()
  if _is_remote(path):
    with _gfile().GFile(path, "rb") as f:
      data = io.BytesIO(f.read())
  else:
    if not os.path.exists(path):
      raise FileNotFoundError(f"No checkpoint at {path!r}.")
    data = path
  with np.load(data, allow_pickle=False) as npz:
    flat: Mapping[str, np.ndarray] = {k: npz[k] for k in npz.files}
  return utils.unflatten_dict(flat)


# ----------------------------------------------------------------------------
# Train state (orbax).
# ----------------------------------------------------------------------------
CKPT_SUBDIR = "checkpoints"


def _split(state: dict) -> dict:
  """Params are their own item, so `load_params` reads nothing else."""
  return {"params": state["params"],
          "rest": {k: v for k, v in state.items() if k != "params"}}


class Checkpointer:
  """Saves and restores the train state dict, one orbax item per entry.

  Saves are asynchronous: training continues while arrays are written. Each
  checkpoint is written to a temporary directory and renamed when complete,
  so a kill mid-write leaves the previous checkpoint intact and
  `latest_step()` never returns a partial one. Keeps the newest checkpoint
  plus every `keep_every`-th step.
  """

  def __init__(self, workdir: str, *, keep_every: int | None = None,
               async_save: bool = True, read_only: bool = False):
    self.directory = os.path.abspath(os.path.join(workdir, CKPT_SUBDIR))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1, keep_period=keep_every or None,
        enable_async_checkpointing=async_save, create=not read_only,
        read_only=read_only)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: dict):
    if step in self.manager.all_steps():
      return
    self.manager.save(step, args=ocp.args.Composite(
        **{k: ocp.args.StandardSave(v) for k, v in _split(state).items()}))

  def wait(self):
    self.manager.wait_until_finished()

  def restore(self, step: int, state_shape: dict, shardings: dict) -> dict:
    """Restores directly into `shardings`: no host ever holds the whole state."""
    abstract = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        state_shape, shardings)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        **{k: ocp.args.StandardRestore(v)
           for k, v in _split(abstract).items()}))
    return {"params": restored["params"], **restored["rest"]}

  def restore_params_to_host(self, step: int | None = None) -> dict:
    """Only the params of a checkpoint, as numpy arrays (any device count)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No complete checkpoint in {self.directory}.")
    meta = self.manager.item_metadata(step)["params"]
    cpu = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
    abstract = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu), meta)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract)))
    return jax.tree.map(np.asarray, restored["params"])
