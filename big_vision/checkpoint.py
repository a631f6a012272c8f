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
import glob
import io
import json
import os
import shutil
import time
import threading
import uuid
from typing import Any, Mapping

from absl import logging
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

  utils.write_atomically(path, lambda f: np.savez(f, **arrays))


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
# Written into each step's directory before orbax makes it final (renames it
# or writes its commit marker): {relative path: size in bytes} of every file.
MANIFEST = "_BV_FILES.json"
# `checkpoints/_BV_PENDING-<step>`: written before a save starts, removed once
# the step's manifest exists. A finalized step without a manifest but with
# this mark is complete (orbax's commit is atomic): its manifest write failed,
# or the process died between orbax's finalization and the manifest. A step
# without either lost its manifest afterwards (e.g. a half-done deletion).
PENDING = "_BV_PENDING-"
_ITEMS = ("params", "rest")
_TMP_MARK = ".orbax-checkpoint-tmp"


def _split(state: dict) -> dict:
  """Params are their own item, so `load_params` reads nothing else."""
  return {"params": state["params"],
          "rest": {k: v for k, v in state.items() if k != "params"}}


def _item_handler() -> ocp.PyTreeCheckpointHandler:
  """Orbax's pytree handler (the one StandardCheckpointHandler wraps: same
  files), writing each array whole when there is one process.

  Orbax's default, replica-parallel writing, lets every replica of a
  replicated array write a slice of it, which spreads the writing over hosts.
  With one process the same host writes every slice, so it gains nothing, and
  each slice is a jitted program per array shape and device: 176 compiles
  (~5 s on CPU) at a small ViT's first save.
  """
  if jax.process_count() > 1:
    return ocp.PyTreeCheckpointHandler()  # Orbax's global registry.
  whole = ocp.type_handlers.ArrayHandler(use_replica_parallel=False)
  registry = ocp.type_handlers.create_type_handler_registry(
      (jax.Array, whole),
      *((ty, ocp.type_handlers.get_type_handler(ty))
        for ty in (int, float, bytes, np.number, np.ndarray, str)))
  return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


def _restore_arg(abstract) -> ocp.args.PyTreeRestore:
  """Restores `abstract`'s leaves with their shapes, dtypes and shardings
  (what StandardRestore does)."""
  return ocp.args.PyTreeRestore(
      abstract,
      restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))


# Rewritten by orbax when it commits the step, after the manifest is written:
# only their existence is checked.
_COMMIT_FILES = ("_CHECKPOINT_METADATA", "commit_success.txt")


def _list_files(directory: str) -> dict[str, int | None]:
  out = {}
  for root, _, files in os.walk(directory):
    for f in files:
      if f.startswith(MANIFEST):
        continue
      path = os.path.join(root, f)
      out[os.path.relpath(path, directory)] = (
          None if f in _COMMIT_FILES else os.path.getsize(path))
  return out


def check_step_dir(step_dir: str, expect_manifest: bool = False,
                   pending: bool = False) -> str | None:
  """Why the checkpoint in `step_dir` cannot be used, or None if it can.

  With a manifest (written by this class just before orbax finalized the
  checkpoint) every listed file must exist with its recorded size: this
  catches deleted and truncated array files at the cost of one stat per file,
  without reading any data. Checkpoints without a manifest (other writers)
  only get a structural check, unless `expect_manifest` (their siblings have
  one, so this one lost it: e.g. a deletion of an old checkpoint that was
  killed half-way). `pending`: the step's save never got to write its
  manifest (see PENDING), so a missing one is no sign of damage.
  """
  if not os.path.isdir(step_dir):
    return "its directory is missing"
  manifest = os.path.join(step_dir, MANIFEST)
  if expect_manifest and not pending and not os.path.exists(manifest):
    return f"its file list {MANIFEST} is missing (partially deleted?)"
  if os.path.exists(manifest):
    try:
      with open(manifest) as f:
        expected = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
      return f"its file list {MANIFEST} is unreadable ({e})"
    for rel, size in sorted(expected.items()):
      path = os.path.join(step_dir, rel)
      if not os.path.exists(path):
        return f"file {rel} is missing"
      actual = os.path.getsize(path)
      if size is not None and actual != size:
        return f"file {rel} has {actual} bytes instead of {size} (truncated)"
    return None
  for item in _ITEMS:
    for name in ("_METADATA", "manifest.ocdbt"):
      if not os.path.exists(os.path.join(step_dir, item, name)):
        return f"file {item}/{name} is missing"
  return None


PAUSE_IN_SAVE_ENV = "BIG_VISION_TEST_PAUSE_IN_SAVE"


def _test_pause_in_save(workdir: str, step: int):
  """Test hook (BIG_VISION_TEST_PAUSE_IN_SAVE=<step>): in the middle of an
  asynchronous save of `step` (arrays written, directory not yet final),
  writes <workdir>/.paused_in_save_<step> and waits until it is removed or
  the process killed: tests kill a write at a known point."""
  path = os.path.join(workdir, f".paused_in_save_{step}")
  with open(path + ".tmp", "w") as f:
    f.write(str(os.getpid()))
  os.replace(path + ".tmp", path)
  while os.path.exists(path):
    time.sleep(0.01)


class Checkpointer:
  """Saves and restores the train state dict, one orbax item per entry.

  Crash safety, i.e. what a kill at any moment leaves behind:
  * Saves are asynchronous, but the device-to-host copy of every array
    happens inside `save()` (orbax's default for arrays without a transfer
    priority), so the caller may donate the state's buffers to the next step
    as soon as `save()` returns.
  * A checkpoint is written into `<step>.orbax-checkpoint-tmp` and renamed to
    `<step>` only when complete: a kill mid-write leaves the previous
    checkpoints intact. Leftover tmp directories are deleted on start.
  * Just before that rename, the size of every file is recorded in the step's
    `_BV_FILES.json`. `latest_step()` checks it and skips (with a warning
    naming the step and the reason) a newest checkpoint whose files were
    since deleted or truncated; a writable Checkpointer moves such a
    directory aside to `<step>.corrupt-<time>` so the step can be saved again.
  * The newest `keep` (2) checkpoints are kept, so there is a previous one to
    fall back to, plus every `keep_every`-th step. (A kill while orbax
    deletes an old one can leave it half-deleted: it is never used, and
    orbax deletes it again later.)
  """

  def __init__(self, workdir: str, *, keep_every: int | None = None,
               keep: int = 2, async_save: bool = True,
               read_only: bool = False, timeout_s: float | None = None):
    """`timeout_s` (big_vision's `config.ckpt_timeout`): how long a save
    waits for the previous asynchronous save to finish before raising
    TimeoutError (checkpointing has become the bottleneck: a slow or distant
    disk, or ckpt_steps too small); None waits as long as it takes."""
    self.timeout_s = timeout_s
    self.directory = os.path.join(workdir, CKPT_SUBDIR)
    if not _is_remote(self.directory):
      self.directory = os.path.abspath(self.directory)
    self.read_only = read_only
    self._async = async_save
    self._saving_step = None
    if read_only:
      options = ocp.CheckpointManagerOptions(
          read_only=True, create=False, max_to_keep=None,
          save_interval_steps=0)
    else:
      options = ocp.CheckpointManagerOptions(
          max_to_keep=keep, keep_period=keep_every or None,
          enable_async_checkpointing=async_save,
          async_options=ocp.options.AsyncOptions(
              post_finalization_callback=self._write_manifest)
          if async_save else None)
    if not read_only:
      self._remove_tmp_dirs()
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={k: _item_handler() for k in _ITEMS})
    if not read_only:
      self._finish_pending_manifests()

  # -- Integrity. --------------------------------------------------------------
  def _remove_tmp_dirs(self):
    """Deletes what writes killed mid-way left (before anything is written).

    Done here, synchronously, rather than by orbax's asynchronous cleanup:
    a new save of the same step must never race with the removal.
    """
    if _is_remote(self.directory) or jax.process_index() != 0:
      return
    for path in glob.glob(os.path.join(self.directory, f"*{_TMP_MARK}*")):
      logging.warning("Removing %s, left by a checkpoint write that did not "
                      "finish.", path)
      shutil.rmtree(path, ignore_errors=True)

  def _writes_marks(self) -> bool:
    return jax.process_index() == 0 and not _is_remote(self.directory)

  def _pending_path(self, step: int) -> str:
    return os.path.join(self.directory, f"{PENDING}{step}")

  def _pending_steps(self) -> set[int]:
    out = set()
    for path in glob.glob(os.path.join(self.directory, f"{PENDING}*")):
      try:
        out.add(int(os.path.basename(path)[len(PENDING):]))
      except ValueError:
        continue
    return out

  def _mark_pending(self, step: int):
    if not self._writes_marks():
      return
    os.makedirs(self.directory, exist_ok=True)
    with open(self._pending_path(step), "w") as f:
      f.flush()
      os.fsync(f.fileno())

  def _clear_pending(self, step: int):
    try:
      os.remove(self._pending_path(step))
    except FileNotFoundError:
      pass

  def _finish_pending_manifests(self):
    """Manifests of finalized steps whose save did not get to write one.

    (Or clears the mark of a save that never finalized: its tmp dir is gone.)
    """
    if not self._writes_marks():
      return
    for step in sorted(self._pending_steps()):
      step_dir = os.path.join(self.directory, str(step))
      if os.path.isdir(step_dir) and not os.path.exists(
          os.path.join(step_dir, MANIFEST)):
        logging.warning("Checkpoint of step %d was finalized but its file "
                        "list %s was not written; writing it now.", step,
                        MANIFEST)
        if not self._write_manifest_to(step, step_dir):
          continue  # Keep the mark: the step stays trusted without one.
      self._clear_pending(step)

  def _write_manifest_to(self, step: int, step_dir: str) -> bool:
    try:
      payload = json.dumps({"step": step, "files": _list_files(step_dir)})
      tmp_file = os.path.join(step_dir, MANIFEST + ".tmp")
      with open(tmp_file, "w") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp_file, os.path.join(step_dir, MANIFEST))
      return True
    except Exception as e:  # pylint: disable=broad-except
      # Never fail a save over its manifest: the step's PENDING mark stays,
      # so it is not mistaken for a damaged one; the next start retries.
      logging.warning("Could not write the file list of checkpoint %s: %s",
                      step, e)
      return False

  def _write_manifest(self):
    """Runs after the arrays are written, before the step dir is final."""
    step = self._saving_step
    if step is None or not self._writes_marks():
      return
    tmp = sorted(glob.glob(os.path.join(self.directory,
                                        f"{step}{_TMP_MARK}*")))
    step_dir = tmp[-1] if tmp else os.path.join(self.directory, str(step))
    if self._write_manifest_to(step, step_dir):
      # The manifest goes with the directory's (atomic) rename: from now on
      # the step is either absent or complete with its manifest.
      self._clear_pending(step)
    if tmp and os.environ.get(PAUSE_IN_SAVE_ENV) == str(step):
      _test_pause_in_save(os.path.dirname(self.directory), step)

  def check(self, step: int) -> str | None:
    """Why checkpoint `step` is unusable (see `check_step_dir`), or None."""
    if _is_remote(self.directory):
      return None  # Object stores: orbax's commit marker is all we have.
    expect_manifest = bool(glob.glob(os.path.join(self.directory, "*",
                                                  MANIFEST)))
    return check_step_dir(os.path.join(self.directory, str(step)),
                          expect_manifest=expect_manifest,
                          pending=os.path.exists(self._pending_path(step)))

  def all_steps(self) -> list[int]:
    """Steps of finalized checkpoints, oldest first (complete or not)."""
    self.manager.reload()
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step; None if there is none.

    Finalized but damaged checkpoints (files deleted or truncated since) are
    skipped with a warning; a writable Checkpointer moves them aside.
    """
    steps = self.all_steps()
    bad = []
    for step in reversed(steps):
      reason = self.check(step)
      if reason is None:
        break
      bad.append((step, reason))
    else:
      step = None
    for b, reason in bad:
      fallback = (f"using the previous complete one, step {step}"
                  if step is not None else
                  "there is no earlier complete one: starting from scratch")
      logging.warning("Checkpoint of step %d in %s is incomplete or corrupt: "
                      "%s; %s.", b, self.directory, reason, fallback)
    if bad and not self.read_only:
      self._quarantine([b for b, _ in bad])
    return step

  def _quarantine(self, steps):
    if jax.process_index() == 0:
      stamp = time.strftime("%Y%m%d-%H%M%S")
      for step in steps:
        src = os.path.join(self.directory, str(step))
        dst = f"{src}.corrupt-{stamp}"
        try:
          os.replace(src, dst)
          logging.warning("Moved the damaged checkpoint %s aside to %s.", src,
                          dst)
        except OSError as e:
          logging.warning("Could not move the damaged checkpoint %s aside: %s",
                          src, e)
    self.manager.reload()

  # -- Save / restore. ---------------------------------------------------------
  def save(self, step: int, state: dict):
    """Starts saving `state` as `step`; returns once the arrays are on host."""
    # The previous save must be final before `_saving_step` changes: its
    # manifest callback reads it. (orbax waits for it anyway.)
    self._wait_for_previous(step)
    if step in self.manager.all_steps():
      return
    self._saving_step = step
    self._mark_pending(step)
    self.manager.save(step, args=ocp.args.Composite(
        **{k: ocp.args.PyTreeSave(v) for k, v in _split(state).items()}),
                      force=True)
    if not self._async:
      self._write_manifest_after_the_fact(step)

  def _wait_for_previous(self, step: int):
    if self.timeout_s is None:
      self.manager.wait_until_finished()
      return
    waiter = threading.Thread(target=self.manager.wait_until_finished,
                              daemon=True)
    waiter.start()
    waiter.join(self.timeout_s)
    if waiter.is_alive():
      raise TimeoutError(
          f"Checkpoint of step {self._saving_step} still being written after "
          f"ckpt_timeout={self.timeout_s}s, when step {step} is due: "
          "checkpointing is the bottleneck (a slow or distant disk, or "
          "ckpt_steps too small). Raise config.ckpt_timeout or ckpt_steps.")

  def _write_manifest_after_the_fact(self, step):
    # Synchronous saves are final when save() returns; no callback runs.
    step_dir = os.path.join(self.directory, str(step))
    if os.path.isdir(step_dir) and not os.path.exists(
        os.path.join(step_dir, MANIFEST)):
      self._write_manifest()

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    """Waits for the save in flight, then stops orbax's background threads.

    Call before exiting (also on errors): a save still running when the
    interpreter shuts down fails ("cannot schedule new futures after
    shutdown") and leaves a half-written step.
    """
    self.manager.wait_until_finished()
    self.manager.close()

  def restore(self, step: int, state_shape: dict, shardings: dict) -> dict:
    """Restores directly into `shardings`: no host ever holds the whole state."""
    abstract = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        state_shape, shardings)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          **{k: _restore_arg(v) for k, v in _split(abstract).items()}))
    except Exception as e:  # pylint: disable=broad-except
      raise RuntimeError(
          f"Could not restore the checkpoint of step {step} from "
          f"{self.directory}: {type(e).__name__}: {e}. If it is damaged, move "
          f"{os.path.join(self.directory, str(step))} aside to resume from the "
          "previous checkpoint.") from e
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
        params=_restore_arg(abstract)))
    return jax.tree.map(np.asarray, restored["params"])
