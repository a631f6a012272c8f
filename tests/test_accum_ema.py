"""Gradient accumulation and parameter EMA, as implemented in train.py."""
import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from big_vision import objectives
from big_vision import optax as bv_optax
from big_vision import sharding
from big_vision import program
from big_vision import train
from big_vision import utils
from big_vision.configs import common
from big_vision.evaluators import common as evaluators

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_train  # pylint: disable=g-import-not-at-top,wrong-import-position

BATCH, RES = 64, 32


def _config(**overrides):
  config = ml_collections.ConfigDict(dict(
      seed=0, num_classes=10, loss="softmax_xent", model_name="vit",
      # 64 tokens per image: activations, not parameters, fill the memory.
      model=dict(width=64, depth=2, mlp_dim=256, num_heads=4,
                 patch_size=(4, 4), pool_type="gap"),
      optax_name="big_vision.momentum_hp", optax=dict(dtype="float32"),
      lr=0.05, wd=0.0, grad_clip_norm=1.0,
      schedule=dict(warmup_steps=2, decay_type="cosine"),
      accum_steps=1, ema_decay=0.0))
  config.update(overrides)
  return config


def _setup(config, total_steps=5):
  """(state, update_fn) exactly as train.train builds them."""
  mesh = sharding.make_mesh()
  _, model = program.create_model(config)
  objective = objectives.make(config, model, mesh)
  specs = {"image": ((BATCH, RES, RES, 3), np.float32)}
  rng = jax.random.PRNGKey(0)
  params_shape = jax.eval_shape(
      lambda r: program.init_fn_for(config, model, bv_optax.optax.identity(),
                                  specs)(r)["params"], rng)
  tx, _ = bv_optax.make(config, params_shape,
                        sched_kw=dict(total_steps=total_steps))
  init = program.init_fn_for(config, model, tx, specs)
  shardings = program.state_shardings(config, mesh, jax.eval_shape(init, rng))
  state = jax.jit(init, out_shardings=shardings)(rng)
  return mesh, state, program.make_update_fn(config, objective, tx, mesh,
                                           shardings)


def _batches(mesh, n):
  rng = np.random.default_rng(0)
  for _ in range(n):
    batch = {"image": rng.normal(size=(BATCH, RES, RES, 3)).astype(np.float32),
             "labels": np.eye(10, dtype=np.float32)[rng.integers(0, 10, BATCH)]}
    yield jax.device_put(batch, sharding.data_sharding(mesh))


EMA_DECAY = 0.7


@pytest.fixture(scope="module")
def runs():
  """5 steps of the same batches with accum_steps 1 and 4 (EMA on): per run
  the params after every step, the final EMA, and the step's temp memory."""
  out = {}
  for k in (1, 4):
    mesh, state, update = _setup(_config(accum_steps=k, ema_decay=EMA_DECAY))
    batches = list(_batches(mesh, 5))
    trajectory = [utils.flatten_dict(jax.device_get(state["params"]))]
    # One compilation serves the memory analysis and the steps.
    step = update.lower(state, batches[0]).compile()
    for batch in batches:
      state, info = step(state, batch)
      trajectory.append(utils.flatten_dict(jax.device_get(state["params"])))
    assert np.isfinite(float(info["training_loss"]))
    assert int(state["step"]) == 5
    out[k] = dict(trajectory=trajectory,
                  ema=utils.flatten_dict(jax.device_get(state["ema_params"])),
                  temp=step.memory_analysis().temp_size_in_bytes)
  return out


def test_accumulation_gives_the_large_batch_params(runs):
  final1, final4 = runs[1]["trajectory"][-1], runs[4]["trajectory"][-1]
  first = runs[1]["trajectory"][0]
  assert final1.keys() == final4.keys()
  for name in final1:
    np.testing.assert_allclose(final4[name], final1[name], atol=1e-5, rtol=0,
                               err_msg=name)
  moved = max(float(np.abs(final1[n] - first[n]).max()) for n in final1)
  assert moved > 1e-2  # The 5 steps did move the params.


def test_accumulation_with_mixup_gives_the_large_batch_params():
  """Mixup is drawn once per global batch, before the micro-batch split, so
  accum_steps stays invisible with it on (the digits recipe uses it)."""
  finals = {}
  for k in (1, 4):
    mesh, state, update = _setup(_config(accum_steps=k, mixup=dict(p=0.5)))
    for batch in _batches(mesh, 3):
      state, _ = update(state, batch)
    finals[k] = utils.flatten_dict(jax.device_get(state["params"]))
  assert finals[1].keys() == finals[4].keys()
  for name in finals[1]:
    np.testing.assert_allclose(finals[4][name], finals[1][name], atol=1e-5,
                               rtol=0, err_msg=name)


def test_mixup_changes_the_update():
  """...and it is on: the same steps without mixup end elsewhere."""
  finals = {}
  for p in (0.0, 0.5):
    mesh, state, update = _setup(_config(mixup=dict(p=p) if p else None))
    for batch in _batches(mesh, 2):
      state, _ = update(state, batch)
    finals[p] = np.asarray(jax.device_get(state["params"]["head"]["kernel"]))
  assert np.abs(finals[0.0] - finals[0.5]).max() > 1e-4


def test_accumulation_lowers_temp_memory(runs):
  t1, t4 = runs[1]["temp"], runs[4]["temp"]
  print(f"temp bytes per device: accum 1 {t1:,}, accum 4 {t4:,}")
  assert t4 < 0.6 * t1, (t1, t4)


def test_ema_follows_its_recursion(runs):
  """ema_0 = params_0, ema_t = d ema_{t-1} + (1 - d) params_t."""
  for k in (1, 4):
    trajectory = runs[k]["trajectory"]
    ema = trajectory[0]
    for p in trajectory[1:]:
      ema = {n: EMA_DECAY * ema[n] + (1 - EMA_DECAY) * p[n] for n in ema}
    got = runs[k]["ema"]
    assert got.keys() == ema.keys()
    for n in ema:
      np.testing.assert_allclose(got[n], ema[n], rtol=1e-5, atol=1e-7,
                                 err_msg=n)
    # It lags: the EMA is not the current params.
    assert not np.allclose(got["head/kernel"], trajectory[-1]["head/kernel"])


def test_accumulation_batch_must_split_evenly_over_devices(tmp_path):
  config = test_train.tiny_digits(total_steps=1, accum_steps=4)
  config.input.batch_size = 16  # 16 / (4 micro-batches * 8 devices): no.
  with pytest.raises(ValueError, match="accum_steps \\* devices = 4 \\* 8"):
    train.train(config, str(tmp_path))


class _Recorder:

  def __init__(self):
    self.seen = []

  def run(self, train_state):
    self.seen.append(train_state["params"])
    yield "x", 0.0


def test_use_ema_hands_the_ema_params_to_the_evaluator():
  state = {"params": {"w": 1}, "ema_params": {"w": 2}, "step": 0}
  rec = _Recorder()
  ev = evaluators.ScheduledEvaluator("e", rec, every=1, skip_first=False,
                                     prefix="e/", use_ema=True)
  assert dict(ev.run(state)) == {"e/x": 0.0}
  assert rec.seen == [{"w": 2}]
  with pytest.raises(ValueError, match="no config.ema_decay"):
    list(ev.run({"params": {"w": 1}}))


def test_use_ema_evaluator_from_config_scores_the_ema_params():
  """Any evaluator type with `use_ema=True` scores state["ema_params"]."""
  config = test_train.tiny_digits()
  config.evals = dict(
      test=common.digits_eval(res=16, log_steps=1, batch_size=16),
      ema=dict(common.digits_eval(res=16, log_steps=1, batch_size=16),
               use_ema=True))
  _, model = program.create_model(config)
  mesh = sharding.make_mesh()
  evals = {e.name: e for e in evaluators.from_config(
      config, program.make_predict_fn(model), mesh, total_steps=2)}
  assert evals["ema"].use_ema and not evals["test"].use_ema

  def params(seed, head):
    p = model.init(jax.random.PRNGKey(seed), np.zeros((1, 16, 16, 3)))
    p = p["params"]
    p["head"]["kernel"] = jax.random.normal(jax.random.PRNGKey(head),
                                            p["head"]["kernel"].shape)
    return p
  a, b = params(0, 1), params(2, 3)
  got = dict(evals["ema"].run({"params": a, "ema_params": b}))
  rename = lambda results: {k.replace("test/", "ema/"): v for k, v in results}
  want = rename(evals["test"].run({"params": b}))
  other = rename(evals["test"].run({"params": a}))
  assert got == want
  assert got["ema/loss"] != pytest.approx(other["ema/loss"], rel=1e-3)


def test_ema_with_model_init(tmp_path):
  train.train(test_train.tiny_digits(total_steps=1), str(tmp_path / "pre"))
  config = test_train.tiny_digits(total_steps=2, ema_decay=0.5,
                                  model_init=str(tmp_path / "pre"))
  final = train.train(config, str(tmp_path / "ft"))
  assert np.isfinite(final["training_loss"])


def test_bench_accum_cli_reports_the_transfer_step_memory(tmp_path):
  """tools/bench_accum.py as documented, on ViT-Ti/16 at 32px (5 tokens per
  image: the activations of 256 images outweigh the 5.5M parameters)."""
  out = str(tmp_path / "rows.json")
  tool = os.path.join(test_train.REPO, "tools", "bench_accum.py")
  proc = subprocess.run(
      [sys.executable, tool, "--model", "Ti/16", "--crop", "32",
       "--batch", "256", "--accum", "1,4", "--devices", "1", "--json", out],
      capture_output=True, text=True, cwd=test_train.REPO, timeout=600,
      check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  one, four = json.load(open(out))
  # ViT-Ti/16 (width 192, MLP 768, 12 blocks) at 32px: stem, class token,
  # posemb of the 4 patches (the class token gets none), blocks, encoder
  # norm, and cifar10's 10-way head (transfer.py's default dataset).
  w, m, d, c, p, n = 192, 768, 12, 10, 16, 4
  block = 4 * w + 4 * (w * w + w) + 2 * w * m + m + w
  want = p * p * 3 * w + w + w + n * w + d * block + 2 * w + w * c + c
  for row, k in ((one, 1), (four, 4)):
    assert row["params"] == want
    assert row["accum"] == k and row["devices"] == 1
    assert row["micro_batch_per_device"] == 256 // k
  # The same state and batch go in; the state comes back in its buffers.
  assert one["args_gib"] == four["args_gib"] >= 4 * want / 2**30
  assert one["alias_gib"] == four["alias_gib"] > 0
  # Micro-batches of 64 keep a quarter of the activations alive.
  assert four["temp_gib"] < 0.6 * one["temp_gib"], (one, four)
  assert f"{want:,} params" in proc.stdout
