"""Train-state checkpoints with orbax (TO BE MERGED INTO checkpoint.py)."""
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

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
