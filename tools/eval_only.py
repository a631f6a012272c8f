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
from big_vision import config_check
from big_vision import metric_writer
from big_vision import program
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
  # The trainer's own program builder, without optimizer state.
  prog = program.build(config, optimizer=False)
  if config.get("model_init"):
    params = prog.init_state()["params"]
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
                            prog.shardings["params"])
    source = f"{workdir} (step {step})"
  logging.info("Evaluating %s: %s parameters.", source,
               f"{utils.tree_count(params):,}")

  evals = evaluators.from_config(config, prog.predict_fn, prog.mesh,
                                 total_steps=max(prog.total_steps, step, 1),
                                 steps_per_epoch=prog.steps_per_epoch,
                                 batch_size=prog.batch_size)
  writer = metric_writer.MetricWriter(workdir, resume_step=None)
  results = {}
  for ev in evals:
    for name, value in ev.run({"params": params, "step": step}):
      logging.info("[%d] %s = %.5f", step, name, value)
      results[name] = value
  writer.write(step, results)
  writer.close()
  return results


def main(argv):
  del argv
  workdir = flags.FLAGS.workdir
  if not workdir:
    raise app.UsageError("--workdir is required.")
  config = flags.FLAGS.config
  config_check.apply_override_precedence(config, sys.argv,
                                         log=logging.warning)
  results = evaluate(config, workdir)
  for name, value in sorted(results.items()):
    print(f"{name}: {value:.5f}")


if __name__ == "__main__":
  app.run(main)
