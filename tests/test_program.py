"""The one program builder (big_vision/program.py) and what it decides.

Schedules as `transfer.py` writes them, the learning rate the step reports,
the logical sharding tactic through the config check, command-line duration
overrides, the trainable-only gradient, and tools/bench.py on any config.
"""
import os
import re
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from big_vision import config_check
from big_vision import metric_writer
from big_vision import program
from big_vision import train
from big_vision.evaluators import common as evaluators

import test_train  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = test_train.REPO
CONFIGS = test_train.CONFIG_DIR


def _tiny(**overrides):
  """The tiny digits config, overrides allowed to change a key's type."""
  config = test_train.tiny_digits()
  with config.ignore_type():
    for k, v in overrides.items():
      config[k] = v
  return config


# ----------------------------------------------------------------------------
# transfer.py's schedule, as written.
# ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def transfer_program(tmp_path_factory):
  npz = str(tmp_path_factory.mktemp("ckpt") / "ti16.npz")  # never read here
  config = test_train.load_config(
      os.path.join(CONFIGS, "transfer.py"),
      f"model={npz},arch=Ti/16,dataset=cifar10,crop=32")
  bs = config.input.batch_size
  specs = {"image": ((bs, 32, 32, 3), np.float32),
           "labels": ((bs, 10), np.float32)}
  # The dataset's size is what the program needs from the data; the recipe
  # itself (schedule, evals, optimizer) is the config's own.
  return config, program.build(config, data=(49_000, specs))


def test_transfer_warms_up_over_10_percent_to_exactly_lr_then_cosine_to_0(
    transfer_program):
  config, prog = transfer_program
  total = prog.total_steps
  assert total == config.total_steps
  warmup = round(0.1 * total)
  (name, fn), = prog.schedules
  lr = [float(config.lr * fn(t)) for t in range(total + 1)]
  assert lr[0] == 0.0
  np.testing.assert_allclose(lr[warmup // 2], config.lr / 2, rtol=1e-6)
  assert lr[warmup] == pytest.approx(config.lr, rel=1e-7)  # Exactly lr...
  assert max(lr[:total]) == pytest.approx(config.lr, rel=1e-7)  # ...its peak.
  assert np.all(np.diff(lr[:warmup + 1]) > 0)
  assert np.all(np.diff(lr[warmup:]) < 0)
  mid = warmup + (total - warmup) // 2
  np.testing.assert_allclose(
      lr[mid], config.lr * 0.5 * (1 + np.cos(np.pi * (mid - warmup) /
                                             (total - warmup))), rtol=1e-5)
  assert lr[total] == pytest.approx(0.0, abs=1e-12)  # 0 at the last step.
  assert name == ".*"


def test_transfer_validates_at_every_20_percent_and_tests_at_the_end(
    transfer_program):
  config, prog = transfer_program
  total = prog.total_steps
  evals = {e.name: e for e in evaluators.from_config(
      config, prog.predict_fn, prog.mesh, total_steps=total,
      steps_per_epoch=prog.steps_per_epoch, batch_size=prog.batch_size)}
  val = [s for s in range(total + 1) if evals["val"].due(s, 0, total)]
  test = [s for s in range(total + 1) if evals["test"].due(s, 0, total)]
  assert val == [0] + [round(k * 0.2 * total) for k in range(1, 6)], val
  assert test == [0, total]


@pytest.mark.parametrize("key,value,where", [
    ("schedule", dict(warmup_percent=10, decay_type="cosine"),
     "warmup_percent=10 must be a fraction"),
    ("evals", dict(t=dict(type="classification", log_percent=20,
                          data=dict(name="digits", split="test"),
                          pp_fn="decode|onehot(10, key='label', "
                          "key_result='labels')|keep('image', 'labels')")),
     "config.evals.t.log_percent: must be <= 1"),
])
def test_a_percent_above_one_is_a_config_error(key, value, where, tmp_path):
  config = _tiny(total_steps=4, **{key: value})
  with pytest.raises(config_check.ConfigError, match=where):
    config_check.validate(config, str(tmp_path))


# ----------------------------------------------------------------------------
# The learning rate logged is the one the step applied, per schedule group.
# ----------------------------------------------------------------------------
def test_logged_lr_is_what_each_schedule_group_applied(tmp_path):
  config = _tiny(
      total_steps=4, log_training_steps=1, lr=0.1, lr_mults=None,
      optax_name="identity", wd=0.0, grad_clip_norm=None,
      schedule=[("head/.*", dict(decay_type="constant")),
                (".*", dict(warmup_steps=2, decay_type="linear"))])
  train.train(config, str(tmp_path))
  lines = [l for l in metric_writer.read(str(tmp_path))
           if "training_loss" in l]
  assert [l["step"] for l in lines] == [1, 2, 3, 4]
  # Update t (0-based) is logged at step t + 1. Linear after a 2-step warmup:
  # t/2 for t < 2, then (4 - t) / 2.
  body = [0.0, 0.05, 0.1, 0.05]
  for line, want in zip(lines, body):
    assert line["lr/head/.*"] == pytest.approx(0.1)
    assert line["lr/.*"] == pytest.approx(want, abs=1e-7)
    assert line["lr"] == line["lr/head/.*"]  # `lr`: the first group.


def test_sgd_update_equals_logged_lr_times_gradient():
  """With plain SGD the head moves by exactly -lr * grad at each step."""
  config = _tiny(
      total_steps=3, lr=0.5, optax_name="identity", wd=0.0, mixup=None,
      grad_clip_norm=None, schedule=dict(warmup_steps=2, decay_type="cosine"))
  bs = config.input.batch_size
  specs = {"image": ((bs, 32, 32, 3), np.float32),
           "labels": ((bs, 10), np.float32)}
  prog = program.build(config, data=(1500, specs))
  state = prog.init_state()
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(bs, 32, 32, 3)).astype(np.float32),
           "labels": np.eye(10, dtype=np.float32)[rng.integers(0, 10, bs)]}
  batch = jax.device_put(batch, program.sharding.data_sharding(prog.mesh))
  for _ in range(3):
    before = np.asarray(state["params"]["head"]["bias"])
    step = int(state["step"])
    # Jitted: one program, not dozens of eager ops on 8-device arrays (a
    # worker once aborted inside one of them, in XLA, under a full suite).
    grads = jax.jit(jax.grad(lambda p: prog.objective.loss(
        p, batch, jax.random.split(jax.random.fold_in(
            prog.rng, step))[1])))(state["params"])
    state, info = prog.update_fn(state, batch)
    moved = np.asarray(state["params"]["head"]["bias"]) - before
    np.testing.assert_allclose(
        moved, -float(info["lr"]) * np.asarray(grads["head"]["bias"]),
        rtol=1e-4, atol=1e-7)
  assert float(info["lr"]) == pytest.approx(
      0.5 * 0.5 * (1 + np.cos(np.pi * 0 / 1)))  # t=2: warmup done, cos(0).


# ----------------------------------------------------------------------------
# Sharding: the logical tactic through the config check and the trainer.
# ----------------------------------------------------------------------------
def test_logical_sharding_config_passes_the_check_and_shards(tmp_path):
  config = test_train.tiny_digits(total_steps=1)
  config.model.update(logical_axes=True, width=64, mlp_dim=128)
  config.mesh = [("data", 2), ("fsdp", 4)]
  config.sharding_strategy = [(".*", "logical")]
  config.sharding_rules = [("mlp", "fsdp"), ("embed", None)]
  prog = config_check.validate(config, str(tmp_path))
  spec = prog.shardings["params"]["Transformer"]["encoderblock_0"][
      "MlpBlock_0"]["Dense_0"]["kernel"].spec
  assert tuple(spec) == (None, "fsdp"), spec  # (embed, mlp) -> mlp on fsdp.
  final = train.train(config, str(tmp_path))
  assert np.isfinite(final["training_loss"])


# ----------------------------------------------------------------------------
# Command-line duration overrides win over the module's exclusive key.
# ----------------------------------------------------------------------------
def test_cli_total_steps_replaces_the_config_total_epochs():
  config = test_train.load_config(os.path.join(CONFIGS, "vit_digits.py"))
  assert config.get("total_epochs") and not config.get("total_steps")
  config.total_steps = 60  # What config_flags does with the override.
  lines = config_check.apply_override_precedence(
      config, ["train", "--config.total_steps=60", "--config.lr=0.1"])
  assert config.total_epochs is None and config.total_steps == 60
  epochs = test_train.load_config(
      os.path.join(CONFIGS, "vit_digits.py")).total_epochs
  assert lines == [f"--config.total_steps replaces config.total_epochs="
                   f"{epochs!r} set by the config module."]


def test_cli_override_of_nested_durations():
  config = ml_collections.ConfigDict(dict(
      schedule=dict(warmup_percent=0.1, decay_type="cosine"),
      evals=dict(val=dict(log_percent=0.2))))
  config.schedule.warmup_steps = 5
  config.evals.val.log_steps = 7
  config_check.apply_override_precedence(
      config, ["x", "--config.schedule.warmup_steps=5",
               "--config.evals.val.log_steps", "7"])
  assert config.schedule.warmup_percent is None
  assert config.evals.val.log_percent is None
  assert (config.schedule.warmup_steps, config.evals.val.log_steps) == (5, 7)


# `python -m big_vision.train ARGS`, as `-m` runs it (runpy, as __main__),
# counting the cyclic garbage collections before the first step is done.
_COUNT_COLLECTIONS = """
import gc, logging, runpy, sys
events = []
gc.callbacks.append(lambda phase, info: phase == "start" and events.append(1))
class FirstStep(logging.Handler):
  def emit(self, record):
    if "Launch to first step done" in record.getMessage():
      events.append("first step")
logging.getLogger().addHandler(FirstStep())
sys.argv = ["big_vision.train"] + sys.argv[1:]
try:
  runpy.run_module("big_vision.train", run_name="__main__", alter_sys=True)
finally:
  print("collections before the first step:", events.index("first step"),
        "enabled at exit:", gc.isenabled(), file=sys.stderr)
"""


def test_cli_total_steps_on_vit_digits_runs_that_many_steps(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-c", _COUNT_COLLECTIONS,
       "--config", os.path.join(CONFIGS, "vit_digits.py"),
       "--workdir", str(tmp_path / "wd"), "--config.total_steps=3",
       "--config.log_training_steps=1"],
      capture_output=True, text=True, cwd=REPO, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "replaces config.total_epochs" in proc.stderr
  steps = [l["step"] for l in metric_writer.read(str(tmp_path / "wd"))
           if "training_loss" in l]
  assert steps == [1, 2, 3]
  # A command-line run launches without the cyclic collector (train.py,
  # _collect_again): a few explicit collections by libraries at most,
  # instead of hundreds, and the collector is on again after the first step.
  counted = re.search(r"collections before the first step: (\d+) enabled at "
                      r"exit: (\w+)", proc.stderr)
  assert counted, proc.stderr[-3000:]
  assert int(counted[1]) < 20 and counted[2] == "True", counted[0]


def test_collect_again_turns_the_collector_on_once(monkeypatch):
  calls = []
  monkeypatch.setattr(train.gc, "enable", lambda: calls.append("enable"))
  train._collect_again()  # Imported as a module: the collector was left on.
  assert not calls and not train._GC_OFF_UNTIL_FIRST_STEP
  monkeypatch.setattr(train, "_GC_OFF_UNTIL_FIRST_STEP", True)
  train._collect_again()
  train._collect_again()
  assert calls == ["enable"] and not train._GC_OFF_UNTIL_FIRST_STEP


# ----------------------------------------------------------------------------
# Only trainable parameters are differentiated.
# ----------------------------------------------------------------------------
def _count_ops(jaxpr, names=("dot_general", "conv_general_dilated")) -> int:
  n = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in names:
      n += 1
    for sub in jax.core.jaxprs_in_params(eqn.params):
      n += _count_ops(sub, names)
  return n


def test_frozen_tower_has_no_backward_pass():
  """LiT: with the image tower frozen the step holds the image tower's
  forward matmuls only; trained, also their backward ones."""
  def step_matmuls(frozen):
    config = test_train.load_config(
        os.path.join(CONFIGS, "proj", "image_text", "siglip_demo.py"),
        "runlocal")
    config.evals = {}
    with config.ignore_type():
      config.schedule = ([("img/.*", None)] if frozen else []) + [
          (".*", dict(decay_type="constant"))]
    prog = program.build(config)
    jaxpr = jax.make_jaxpr(prog.update_fn)(prog.abstract_state(),
                                           prog.abstract_batch())
    return _count_ops(jaxpr.jaxpr), prog

  frozen, prog = step_matmuls(True)
  full, _ = step_matmuls(False)
  shape, dtype = prog.input_specs["image"]
  img_fwd = _count_ops(jax.make_jaxpr(
      lambda p, x: prog.model.apply({"params": p}, x, None, train=True,
                                    rngs={"dropout": jax.random.PRNGKey(0)}))(
          prog.state_shape["params"],
          jax.ShapeDtypeStruct(shape, dtype)).jaxpr)
  assert img_fwd > 0
  # Each forward matmul of the trained tower has one (weight gradient only,
  # e.g. the patch embedding of the input pixels) or two backward matmuls;
  # frozen, none of them is in the step.
  assert img_fwd <= full - frozen <= 2 * img_fwd, (full, frozen, img_fwd)


@pytest.mark.parametrize("config_fn,entry", [
    (lambda: _tiny(ema_decay=0.9), "ema_params"),
    # Two towers, a decoder and the EMA teacher (objective.extra state).
    (lambda: test_train.load_config(
        os.path.join(CONFIGS, "proj", "siglip2", "siglip2_demo.py"),
        "runlocal"), "teacher"),
], ids=["vit_ema", "siglip2_extra_state"])
def test_state_shape_is_what_the_init_function_returns(config_fn, entry):
  """build() derives the state's shapes from the params' shapes (the model
  is traced once); they must be exactly the init function's output."""
  prog = program.build(config_fn())
  want = jax.eval_shape(prog.init_fn(), prog.rng)
  got = prog.state_shape
  assert jax.tree.structure(got) == jax.tree.structure(want)
  describe = lambda x: (x.shape, x.dtype, x.weak_type)
  assert (jax.tree.leaves(jax.tree.map(describe, got))
          == jax.tree.leaves(jax.tree.map(describe, want)))
  assert set(got) == {"params", "opt", "step", entry}


# ----------------------------------------------------------------------------
# tools/bench.py on any config.
# ----------------------------------------------------------------------------
def test_bench_times_a_real_data_config_on_batches_shaped_by_its_pp():
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "tools", "bench.py"),
       "--config", os.path.join(CONFIGS, "vit_digits.py"), "--steps", "2",
       "--warmup", "1"],
      capture_output=True, text=True, cwd=REPO, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  last = proc.stdout.strip().splitlines()[-1]
  assert last.startswith("images/second: ") and float(last.split()[-1]) > 0


def test_bench_bad_config_is_one_error_line():
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "tools", "bench.py"),
       "--config", os.path.join(CONFIGS, "vit_digits.py"),
       "--config.model_name=vitt", "--steps", "1"],
      capture_output=True, text=True, cwd=REPO, timeout=600)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
  assert "Did you mean 'vit'" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_bench_counts_a_frozen_tower_forward_only():
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      "bench_tool", os.path.join(REPO, "tools", "bench.py"))
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  config = test_train.load_config(
      os.path.join(CONFIGS, "bench", "siglip_b16.py"), "freeze=img")
  prog = program.build(config)
  model, shape = prog.model, prog.input_specs["image"][0][1:]
  full = bench.two_towers_train_flops(model, shape, 64, 256)
  lit = bench.two_towers_train_flops(model, shape, 64, 256, frozen={"img"})
  embed, rest = bench._vit_tower_flops(model.img, shape)  # pylint: disable=protected-access
  assert full - lit == pytest.approx(embed + 2 * rest)  # The img backward.
  assert not any(jax.tree.leaves(prog.trainable["img"]))
  assert all(jax.tree.leaves(prog.trainable["txt"]))
