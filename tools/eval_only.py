r"""Runs a config's evaluators on a checkpoint, without training.

  # Any .npz (published big_vision / vit_jax layout, or tools/export.py output):
  python tools/eval_only.py --config big_vision/configs/vit_digits.py \
      --config.model_init=model.npz --workdir workdirs/eval_model

  # The last complete checkpoint of a training workdir:
  python tools/eval_only.py --config big_vision/configs/vit_digits.py \
      --workdir workdirs/digits

Params come from `config.model_init` when set (loaded through the model's
`load`, so position embeddings are resampled and `config.model_load.dont_load`
applies), else from the workdir's last checkpoint. Metrics are appended to
`<workdir>/metrics.jsonl` and TensorBoard files at the checkpoint's step (0
for an .npz), exactly as training writes them; nothing is ever truncated.
"""
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
# pylint: disable=g-import-not-at-top
from big_vision import checkpoint
from big_vision import metric_writer
from big_vision import objectives
from big_vision import sharding
from big_vision import train
from big_vision import utils
from big_vision.evaluators import common as evaluators
# pylint: enable=g-import-not-at-top

config_flags.DEFINE_config_file(
    "config", None, "Config module whose evaluators run.",
    lock_config=False, accept_new_attributes=True)
flags.DEFINE_string("workdir", None, "Metrics go here; its last checkpoint "
                    "is evaluated unless --config.model_init is given.")


def evaluate(config, workdir: str) -> dict[str, float]:
  """Runs every evaluator of `config` once; returns {metric: value}."""
  mesh = sharding.make_mesh(config.get("mesh"))
  module, model = train.create_model(config)
  objective = objectives.make(config, model, mesh)
  _, ntrain, batch_specs = train.make_train_data(config, mesh, 0)
  batch_size = config.input.batch_size
  input_specs = train.model_input_specs(batch_specs, objective, batch_size)
  init = train.init_fn_for(config, model, _NoOptimizer(), input_specs)
  rng = jax.random.PRNGKey(config.get("seed", 0))
  state_shape = jax.eval_shape(init, rng)
  shardings = train.state_shardings(config, mesh, state_shape)

  if config.get("model_init"):
    state = jax.jit(init, out_shardings=shardings)(rng)
    params = train.load_model_init(config, module, state, shardings)
    step = 0
    source = config.model_init
  else:
    ckpt = checkpoint.Checkpointer(workdir, read_only=True)
    step = ckpt.latest_step()
    if step is None:
      raise ValueError(
          f"Nothing to evaluate: --workdir {workdir} has no complete "
          "checkpoint and --config.model_init is not set.")
    params = jax.device_put(ckpt.restore_params_to_host(step),
                            shardings["params"])
    source = f"{workdir} (step {step})"
  logging.info("Evaluating %s: %s parameters.", source,
               f"{utils.tree_count(params):,}")

  total_steps = utils.steps("total", config, data_size=ntrain,
                            batch_size=batch_size, default=step or 1)
  evals = evaluators.from_config(config, train.make_predict_fn(model), mesh,
                                 total_steps=total_steps,
                                 steps_per_epoch=ntrain / batch_size,
                                 batch_size=batch_size)
  writer = metric_writer.MetricWriter(workdir, resume_step=None)
  results = {}
  for ev in evals:
    for name, value in ev.run({"params": params, "step": step}):
      logging.info("[%d] %s = %.5f", step, name, value)
      results[name] = value
  writer.write(step, results)
  writer.close()
  return results


class _NoOptimizer:
  """Eval-only needs the params alone: an empty optimizer state."""

  def init(self, params):
    del params
    return ()


def main(argv):
  del argv
  workdir = flags.FLAGS.workdir
  if not workdir:
    raise app.UsageError("--workdir is required.")
  results = evaluate(flags.FLAGS.config, workdir)
  for name, value in sorted(results.items()):
    print(f"{name}: {value:.5f}")


if __name__ == "__main__":
  app.run(main)
