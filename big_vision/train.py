r"""The one trainer: a config module in, checkpoints and metrics out.

  python -m big_vision.train --config big_vision/configs/vit_digits.py \
      --workdir workdirs/digits [--config.total_steps=100 ...]

Re-running the same command with the same workdir resumes from the last
complete checkpoint. The pieces (model, train state, update step) are plain
functions so that tools (eval_only, plan, bench) build exactly what training
runs. Nothing here imports tensorflow at module level: only the data side
does, and only when real data is read.
"""
import importlib
import logging as py_logging
import os
import pkgutil
import signal
import sys
from typing import Any

from absl import app
from absl import flags
from absl import logging
import flax
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
import ml_collections
from ml_collections import config_flags
import numpy as np
import optax

from big_vision import checkpoint
from big_vision import config_check
from big_vision import metric_writer
from big_vision import objectives
from big_vision import optax as bv_optax
from big_vision import sharding
from big_vision import utils
from big_vision import xla_flags
from big_vision.evaluators import common as evaluators



def define_flags():
  """Command-line flags, defined only when run as the trainer.

  (Tools import this module for its functions and define their own flags.)
  `--config.key=value` may add keys the config module does not set (e.g.
  `model_init`); misspelt keys are caught by the config check before any
  work starts.
  """
  config_flags.DEFINE_config_file(
      "config", None, "Training configuration module.",
      lock_config=False, accept_new_attributes=True)
  flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go.")
  flags.DEFINE_bool("distributed", None,
                    "Call jax.distributed.initialize() (multi-process runs). "
                    "Default: when JAX_COORDINATOR_ADDRESS is set.")


# ----------------------------------------------------------------------------
# Model.
# ----------------------------------------------------------------------------
def available_models() -> list[str]:
  import big_vision.models as pkg  # pylint: disable=g-import-not-at-top
  return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__)
                if m.name not in ("common",) and not m.name.startswith("_"))


def model_module(name: str):
  if name not in available_models():
    raise utils.unknown_name_error("model", name, available_models(),
                                   where="config.model_name")
  return importlib.import_module(f"big_vision.models.{name}")


def create_model(config):
  """(model module, flax module) for `config.model_name` / `config.model`.

  `config.compute_dtype` (e.g. "bfloat16") is the matmul dtype of every tower
  (`dtype_mm`) unless the model config sets one itself; params stay float32.
  """
  module = model_module(config.model_name)
  kwargs = dict(config.get("model") or {})
  if "num_classes" in config:
    kwargs["num_classes"] = config.num_classes
  if config.get("compute_dtype"):
    towers = [k for k in ("image", "text") if isinstance(kwargs.get(k), dict)]
    for cfg in [kwargs[t] for t in towers] if towers else [kwargs]:
      cfg.setdefault("dtype_mm", config.compute_dtype)
  return module, module.Model(**kwargs)


# ----------------------------------------------------------------------------
# Train state: {"params", "opt", "step"[, "ema_params"]}, created sharded.
# ----------------------------------------------------------------------------
def init_fn_for(config, model, tx, input_specs: dict[str, tuple],
                boxed: bool = False):
  """A function rng -> train state, to be jitted with the target shardings.

  `input_specs`: {batch key: (shape, dtype)} of the model inputs, in the order
  the model takes them; the model is initialised on a batch of one.
  `boxed=True` keeps flax's logical-partitioning boxes on the params (only
  for `jax.eval_shape`, to read the logical axis names).
  """
  def init(rng):
    dummy = [jnp.zeros((1,) + tuple(shape[1:]), dtype)
             for shape, dtype in input_specs.values()]
    params = model.init({"params": rng, "dropout": rng}, *dummy,
                        train=False)["params"]
    if not boxed:
      params = sharding.unbox(params)
    params = flax.core.unfreeze(params)
    state = {"params": params, "opt": tx.init(params),
             "step": jnp.zeros((), jnp.int32)}
    if config.get("ema_decay"):
      state["ema_params"] = params
    return state
  return init


def state_shardings(config, mesh, state_shape, logical_axes=None):
  """Shardings of the train state from config.sharding_strategy (+ rules)."""
  strategy = config.get("sharding_strategy") or [(".*", "replicate")]
  shardings = sharding.infer_shardings(
      mesh, {k: v for k, v in state_shape.items() if k != "step"}, strategy,
      rules=config.get("sharding_rules"), logical_axes=logical_axes)
  shardings["step"] = sharding.replicated(mesh)
  return shardings


def make_update_fn(config, objective: objectives.Objective, tx, mesh,
                   shardings):
  """The jitted, buffer-donating train step: (state, batch) -> (state, info)."""
  accum_steps = int(config.get("accum_steps", 1))
  ema_decay = config.get("ema_decay")
  base_rng = jax.random.PRNGKey(config.get("seed", 0))
  batch_spec = P(sharding.data_axes(mesh))

  def grads_of(params, batch, rng):
    if accum_steps == 1:
      return jax.value_and_grad(objective.loss)(params, batch, rng)
    # Micro-batch j takes examples j, j+k, j+2k, ...: every device keeps an
    # equal share of each micro-batch, so no data moves between devices.
    def split(x):
      x = x.reshape((x.shape[0] // accum_steps, accum_steps) + x.shape[1:])
      x = jnp.swapaxes(x, 0, 1)
      return jax.lax.with_sharding_constraint(
          x, NamedSharding(mesh, P(None, *batch_spec)))
    micro = jax.tree.map(split, batch)

    def body(carry, xs):
      mb, i = xs
      loss, g = jax.value_and_grad(objective.loss)(
          params, mb, jax.random.fold_in(rng, i))
      return jax.tree.map(jnp.add, carry, (loss, g)), None
    zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
    (loss, grads), _ = jax.lax.scan(body, zeros,
                                    (micro, jnp.arange(accum_steps)))
    return jax.tree.map(lambda x: x / accum_steps, (loss, grads))

  def update(state, batch):
    # Inside the traced function: jax's trace cache ignores flax's rules.
    with sharding.activation_context(mesh, config.get("sharding_rules")):
      return _update(state, batch)

  def _update(state, batch):
    step = state["step"]
    rng = jax.random.fold_in(base_rng, step)  # rng is a function of the step.
    params = state["params"]
    loss, grads = grads_of(params, batch, rng)
    updates, opt = tx.update(grads, state["opt"], params)
    new_params = optax.apply_updates(params, updates)
    new_state = {"params": new_params, "opt": opt, "step": step + 1}
    if ema_decay:
      new_state["ema_params"] = jax.tree.map(
          lambda e, p: ema_decay * e + (1 - ema_decay) * p,
          state["ema_params"], new_params)
    info = {"training_loss": loss,
            "l2_grads": optax.global_norm(grads),
            "l2_params": optax.global_norm(new_params),
            "l2_updates": optax.global_norm(updates)}
    return new_state, info

  batch_sharding = NamedSharding(mesh, batch_spec)
  return jax.jit(update, donate_argnums=(0,),
                 in_shardings=(shardings, batch_sharding),
                 out_shardings=(shardings, sharding.replicated(mesh)))


def make_train_data(config, mesh, start_step: int):
  """Training batches as global jax.Arrays sharded over the mesh's data axes.

  Returns (iterator, number of training examples, {key: (shape, dtype)} of a
  per-process batch). `data.name="synthetic"` generates batches on device and
  never imports tensorflow (benchmarks, GPU machines without TF); everything
  else goes through the tf.data pipeline.
  """
  data_sharding = sharding.data_sharding(mesh)
  if (config.input.get("data") or {}).get("name") == "synthetic":
    from big_vision.datasets import synthetic  # pylint: disable=g-import-not-at-top
    return synthetic.make_train_data(config.input, data_sharding,
                                     seed=config.get("seed", 0),
                                     start_step=start_step)
  from big_vision import input_pipeline  # pylint: disable=g-import-not-at-top
  train_ds, ntrain = input_pipeline.training(
      config.input, seed=config.get("seed", 0), start_step=start_step)
  specs = {k: (tuple(v.shape), v.dtype.as_numpy_dtype)
           for k, v in train_ds.element_spec.items()}
  batches = input_pipeline.start_global(input_pipeline.as_numpy(train_ds),
                                        data_sharding)
  return batches, ntrain, specs


def model_input_specs(batch_specs, objective: objectives.Objective,
                      batch_size: int):
  """{key: (global shape, dtype)} of the model inputs, from batch specs."""
  specs = {}
  for key in objective.model_inputs:
    if key not in batch_specs:
      raise ValueError(
          f"The model input {key!r} is not produced by config.input.pp; it "
          f"yields {sorted(batch_specs)}.")
    shape, dtype = batch_specs[key]
    if None in shape[1:]:
      raise ValueError(
          f"config.input.pp yields {key!r} of unknown shape {shape[1:]}; add an "
          "op that fixes it (e.g. resize(224) or a crop).")
    specs[key] = ((batch_size,) + tuple(shape[1:]), dtype)
  return specs


def make_predict_fn(model):
  """predict_fn(params, *inputs, **kw) -> model outputs, in inference mode."""
  def predict_fn(params, *args, **kwargs):
    return model.apply({"params": params}, *args, train=False, **kwargs)
  return predict_fn


def load_model_init(config, module, state, shardings):
  """Replaces fresh params by `config.model_init` (npz or workdir), sharded."""
  init_params = jax.device_get(state["params"])
  dont_load = (config.get("model_load") or {}).get("dont_load", ())
  loaded = module.load(init_params, config.model_init, config.get("model"),
                       dont_load=dont_load)
  params = jax.device_put(loaded, shardings["params"])
  return params


# ----------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------
class _Preemption:
  """Turns SIGTERM into 'checkpoint at the current step and exit 0'."""

  def __init__(self):
    self.requested = False
    try:
      signal.signal(signal.SIGTERM, self._handler)
    except ValueError:  # Not the main thread (e.g. inside a test runner).
      pass

  def _handler(self, signum, frame):
    del signum, frame
    self.requested = True


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) `config` in `workdir`. Returns the final metrics."""
  # Every config mistake fails here, in seconds, before anything compiles.
  config_check.validate(config, workdir)
  if jax.process_count() > 1:  # All hosts past the checks before orbax starts.
    multihost_utils.sync_global_devices("big_vision config checked")
  preempt = _Preemption()
  mesh = sharding.make_mesh(config.get("mesh"))
  shards = sharding.num_data_shards(mesh)
  batch_size = config.input.batch_size
  if batch_size % shards:
    raise ValueError(
        f"config.input.batch_size={batch_size} is not divisible by the "
        f"{shards} data-parallel devices of the mesh {dict(mesh.shape)}.")
  if batch_size % (int(config.get("accum_steps", 1)) * shards):
    raise ValueError(
        f"config.input.batch_size={batch_size} must be divisible by "
        f"accum_steps * devices = {config.accum_steps} * {shards}.")

  module, model = create_model(config)
  objective = objectives.make(config, model, mesh)
  ckpt = checkpoint.Checkpointer(
      workdir, keep_every=config.get("keep_ckpt_steps"))
  first_step = ckpt.latest_step() or 0

  batches, ntrain, batch_specs = make_train_data(config, mesh, first_step)
  total_steps = utils.steps("total", config, data_size=ntrain,
                            batch_size=batch_size)
  steps_per_epoch = ntrain / batch_size
  input_specs = model_input_specs(batch_specs, objective, batch_size)

  # The optimizer needs the parameter tree (for masks), which needs the
  # model's shapes: evaluate both abstractly, allocate nothing yet.
  rng = jax.random.PRNGKey(config.get("seed", 0))
  params_shape = jax.eval_shape(
      lambda r: init_fn_for(config, model, optax.identity(), input_specs)(r)
      ["params"], rng)
  tx, sched_fns = bv_optax.make(
      config, params_shape, sched_kw=dict(
          total_steps=total_steps, batch_size=batch_size, data_size=ntrain))
  init = init_fn_for(config, model, tx, input_specs)
  state_shape = jax.eval_shape(init, rng)
  boxed = jax.eval_shape(
      lambda r: init_fn_for(config, model, optax.identity(), input_specs,
                            boxed=True)(r)["params"], rng)
  shardings = state_shardings(config, mesh, state_shape,
                              sharding.logical_axes_of(boxed) or None)
  logging.info("Model %s: %s parameters.", config.model_name,
               f"{utils.tree_count(state_shape['params']):,}")

  # Lines after the restored step are redone; with no checkpoint, all are
  # (the step-0 evals included), so every step appears exactly once.
  writer = metric_writer.MetricWriter(
      workdir, resume_step=first_step if first_step else -1)
  predict_fn = make_predict_fn(model)
  evals = evaluators.from_config(config, predict_fn, mesh,
                                 total_steps=total_steps,
                                 steps_per_epoch=steps_per_epoch,
                                 batch_size=batch_size)

  if first_step:
    logging.info("Resuming from the checkpoint of step %d in %s.", first_step,
                 workdir)
    state = ckpt.restore(first_step, state_shape, shardings)
  else:
    state = jax.jit(init, out_shardings=shardings)(rng)
    if config.get("model_init"):
      params = load_model_init(config, module, state, shardings)
      state["params"] = params
      state["opt"] = jax.jit(tx.init, out_shardings=shardings["opt"])(params)
      if "ema_params" in state:
        # Own buffers: the step donates both trees.
        state["ema_params"] = jax.tree.map(jnp.copy, params)

  update_fn = make_update_fn(config, objective, tx, mesh, shardings)

  chrono = utils.Chrono(first_step, total_steps, batch_size, jax.device_count())
  log_every = int(config.get("log_training_steps", 50))
  ckpt_every = int(config.get("ckpt_steps", 0) or 0)
  last_log_step = first_step
  final = {}

  def run_evals(step):
    chrono.pause()
    for ev in evals:
      if ev.due(step, first_step, total_steps):
        results = dict(ev.run(state))
        for k, v in results.items():
          logging.info("[%d] %s = %.5f", step, k, v)
        writer.write(step, results)
        final.update(results)
    chrono.resume()

  if first_step == 0:
    run_evals(0)
  chrono.tick(first_step)
  step = first_step
  for step in range(first_step + 1, total_steps + 1):
    state, info = update_fn(state, next(batches))

    if step % log_every == 0 or step == total_steps or preempt.requested:
      info = jax.device_get(info)  # The only host sync of the loop.
      bad = [k for k, v in info.items() if not np.isfinite(v)]
      if bad:
        raise FloatingPointError(
            f"{', '.join(bad)} became NaN/inf between steps {last_log_step} "
            f"and {step}. The last good checkpoint in {workdir} is kept; "
            "lower the learning rate or enable grad_clip_norm.")
      measures = {**info, **chrono.tick(step),
                  "epoch": step / steps_per_epoch}
      for i, fn in enumerate(sched_fns):
        measures[f"global_schedule{i if i else ''}"] = float(fn(step - 1))
      measures["lr"] = float(config.get("lr", 0.0)) * measures.get(
          "global_schedule", 1.0)
      writer.write(step, measures)
      logging.info("[%d] loss=%.5f | %s", step, info["training_loss"],
                   chrono.note(step))
      final["training_loss"] = float(info["training_loss"])
      last_log_step = step

    # Evals of a step run BEFORE its checkpoint: once the checkpoint exists,
    # a resumed run starts after this step and would never redo them. On
    # preemption they are skipped: the grace period is for the checkpoint.
    if not preempt.requested:
      run_evals(step)
    if preempt.requested or (ckpt_every and step % ckpt_every == 0) or (
        step == total_steps):
      chrono.pause()
      ckpt.save(step, state)  # Returns once the arrays are on the host, so
      chrono.resume()         # the next step may donate `state`'s buffers.
    if preempt.requested:
      ckpt.wait()
      writer.flush()
      writer.close()
      msg = (f"Preempted (SIGTERM): checkpoint of step {step} written to "
             f"{workdir}. Resume with the same command.")
      logging.warning(msg)
      print(msg, flush=True)
      return final

  ckpt.wait()
  writer.flush()
  writer.close()
  return final


class _QuietLibraries:
  """Drops INFO records of chatty libraries (orbax logs every file it writes)."""

  PREFIXES = ("orbax", "etils", "tensorflow_datasets")

  def filter(self, record):
    if record.levelno >= py_logging.WARNING:
      return True
    return not any(f"/{p}/" in record.pathname for p in self.PREFIXES)


def main(argv):
  del argv
  xla_flags.apply()  # Before jax touches a backend.
  logging.get_absl_handler().addFilter(_QuietLibraries())
  config = flags.FLAGS.config
  workdir = flags.FLAGS.workdir
  if not workdir:
    raise app.UsageError("--workdir is required.")
  distributed = flags.FLAGS.distributed
  if distributed is None:
    distributed = bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))
  if distributed:
    jax.distributed.initialize()
  try:
    final = train(config, workdir)
  except config_check.ConfigError as e:
    # One line a user can act on, not a traceback (see config_check).
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  for k, v in sorted(final.items()):
    print(f"{k}: {v:.5f}")


def _parse_flags_or_exit(argv):
  """absl's flag parsing, but a bad --config (file, :arg or override) is one
  `error:` line and exit status 2, like the errors of config_check."""
  try:
    argv = flags.FLAGS(argv)
    if flags.FLAGS.config is None:
      raise flags.Error("--config is required.")
    flags.FLAGS.config.keys()  # A config file that failed to load raises.
  except (flags.Error, OSError, ValueError) as e:
    print(f"error: {config_check.flag_error_line(e)}", file=sys.stderr,
          flush=True)
    sys.exit(2)
  return argv


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=_parse_flags_or_exit)
