"""Image-text training through the one trainer: objectives, LiT, the demo.

The last test trains the siglip_demo config to completion: the one long test
of the image-text suite (about a minute on 2 idle CPU cores).
"""
import importlib.util
import itertools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from big_vision import checkpoint
from big_vision import metric_writer
from big_vision import objectives
from big_vision import sharding
from big_vision import train
from big_vision import utils
from big_vision.datasets import shapes_captions
from big_vision.models import two_towers
from big_vision.models import vit
import xla_opt  # tests/ is on sys.path (rootdir conftest).

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "big_vision", "configs", "proj", "image_text")

IMAGE = dict(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=(8, 8),
             pool_type="gap")
TEXT = dict(width=24, depth=1, mlp_dim=48, num_heads=2, vocab_size=40,
            dropout=0.0)


def load_config(name, arg=None):
  spec = importlib.util.spec_from_file_location(
      "cfg", os.path.join(CONFIGS, name))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


# ----------------------------------------------------------------------------
# The embedded data.
# ----------------------------------------------------------------------------
def test_shapes_captions_is_deterministic_and_holds_out_combinations():
  a = list(itertools.islice(shapes_captions.generate("test"), 5))
  b = list(itertools.islice(shapes_captions.generate("test"), 5))
  for (_, x), (_, y) in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    assert x["texts"] == y["texts"]
  train_ex = [ex for _, ex in itertools.islice(
      shapes_captions.generate("train"), 600)]
  test_ex = [ex for _, ex in itertools.islice(
      shapes_captions.generate("test"), 300)]
  pairs = lambda exs: {(ex["color"], ex["size"]) for ex in exs}
  assert not pairs(train_ex) & pairs(test_ex)
  assert len(pairs(test_ex)) == 6 and len(pairs(train_ex)) == 12
  # No attribute predicts the shape in training: every (colour, size) pair
  # of the split comes with all three shapes (and backgrounds are drawn
  # independently).
  triplets = shapes_captions.combinations("train")
  assert len(triplets) == 36
  for c, z in pairs(train_ex):
    assert {s for s, c2, z2 in triplets if (c2, z2) == (c, z)} == set(
        shapes_captions.SHAPES)
  for key in ("shape", "color", "background", "size"):
    assert {ex[key] for ex in train_ex} == {ex[key] for ex in test_ex}
  for ex in test_ex[:50]:
    assert len(set(ex["texts"])) == shapes_captions.NUM_CAPTIONS
    for text in ex["texts"]:
      words = set(text.replace(",", "").split())
      # Every caption names the shape, or its colour and background.
      assert ex["shape"] in words or {ex["color"], ex["background"]} <= words
      assert words <= {ex["shape"], ex["color"], ex["size"], ex["background"],
                       "a", "on", "background", "picture", "of", "shape",
                       "in", "image", "with"}, text
    # The shape is where the pixels differ from the background.
    img = ex["image"].astype(int)
    corner = img[0, 0]
    assert np.abs(img - corner).sum(-1).max() > 100


# ----------------------------------------------------------------------------
# Objectives: numbers equal a numpy computation; ring == single device.
# ----------------------------------------------------------------------------
def _model_and_batch(bias_init=-10.0, batch=16):
  model = two_towers.Model(image=IMAGE, text=TEXT, out_dim=16,
                           temperature_init=10.0, bias_init=bias_init)
  rng = np.random.RandomState(0)
  batch = {"image": rng.uniform(-1, 1, (batch, 16, 16, 3)).astype(np.float32),
           "labels": rng.randint(0, 40, (batch, 6)).astype(np.int32)}
  params = model.init(jax.random.PRNGKey(0), batch["image"][:1],
                      batch["labels"][:1])["params"]
  # Moves t and b off their inits so that they matter in the check.
  params["t"] = params["t"] * 0.5
  if "b" in params:
    params["b"] = params["b"] * 0.3
  return model, params, batch


def _numpy_losses(model, params, batch):
  apply = jax.jit(lambda p, x, y: model.apply({"params": p}, x, y))
  zimg, ztxt, out = jax.device_get(apply(params, batch["image"],
                                         batch["labels"]))
  zimg, ztxt = np.float64(zimg), np.float64(ztxt)
  t = float(np.exp(params["t"][0]))
  logits = t * zimg @ ztxt.T
  n = len(zimg)
  labels = 2 * np.eye(n) - 1
  b = float(params["b"][0]) if "b" in params else 0.0
  sig = np.sum(np.log1p(np.exp(-labels * (logits + b)))) / n
  lse = lambda x, axis: np.log(np.exp(x).sum(axis))
  diag = np.diag(logits)
  soft = np.mean(0.5 * ((lse(logits, 1) - diag) + (lse(logits, 0) - diag)))
  assert np.isclose(out["t"], t)
  return sig, soft


def test_contrastive_objectives_equal_numpy():
  model, params, batch = _model_and_batch()
  sig, soft = _numpy_losses(model, params, batch)
  config = ml_collections.ConfigDict({"loss": "sigmoid_contrastive"})
  obj = objectives.make(config, model)
  assert obj.model_inputs == ("image", "labels")
  rng = jax.random.PRNGKey(1)
  np.testing.assert_allclose(jax.jit(obj.loss)(params, batch, rng), sig,
                             rtol=1e-5)
  config.loss = "softmax_contrastive"
  obj = objectives.make(config, model)
  np.testing.assert_allclose(jax.jit(obj.loss)(params, batch, rng), soft,
                             rtol=1e-5)


def test_sigmoid_objective_on_8_devices_equals_single_device_and_grads():
  assert jax.device_count() == 8
  model, params, batch = _model_and_batch()
  mesh = sharding.make_mesh()
  config = ml_collections.ConfigDict({"loss": "sigmoid_contrastive"})
  ring = objectives.make(config, model, mesh)
  single = objectives.make(config, model)  # No mesh: full B x B matrix.
  rng = jax.random.PRNGKey(1)
  shard = lambda x: jax.device_put(x, sharding.data_sharding(mesh))
  sharded_batch = jax.tree.map(shard, batch)
  grad = lambda obj, b: jax.jit(jax.value_and_grad(obj.loss))(params, b, rng)
  (l_ring, g_ring), (l_one, g_one) = grad(ring, sharded_batch), grad(
      single, batch)
  sig, _ = _numpy_losses(model, params, batch)
  np.testing.assert_allclose(l_ring, sig, rtol=1e-5)
  np.testing.assert_allclose(l_ring, l_one, rtol=1e-6)
  flat_ring, flat_one = utils.flatten_dict(g_ring), utils.flatten_dict(g_one)
  for k in flat_one:
    np.testing.assert_allclose(flat_ring[k], flat_one[k], rtol=2e-4,
                               atol=1e-7, err_msg=k)
  # The ring is really used: its jaxpr has the ppermute hops.
  text = str(jax.make_jaxpr(ring.loss)(params, batch, rng))
  assert "ppermute" in text


# ----------------------------------------------------------------------------
# LiT: a locked image tower loaded from a ViT checkpoint.
# ----------------------------------------------------------------------------
def test_lit_keeps_the_image_tower_bit_identical(tmp_path):
  config = load_config("lit_b16b.py", "runlocal")
  config.total_steps = 2
  config.ckpt_steps = 1
  config.evals = {}
  # An "AugReg" ViT-mu/8 classifier checkpoint for the image tower.
  image_cfg = dict(config.model.image)
  vit_model = vit.Model(21, **image_cfg)
  vit_params = vit_model.init(jax.random.PRNGKey(7),
                              jnp.zeros((1, 32, 32, 3)))["params"]
  vit_params = jax.tree.map(lambda x: np.asarray(x) + 0.25, vit_params)
  npz = str(tmp_path / "vit.npz")
  checkpoint.save_params(vit_params, npz)
  config.model_init = {"img": npz}
  train.train(config, str(tmp_path / "lit"))

  ckpt = checkpoint.Checkpointer(str(tmp_path / "lit"), read_only=True)
  want = utils.flatten_dict(vit_params)
  steps = [utils.flatten_dict(ckpt.restore_params_to_host(s)) for s in (1, 2)]
  for params in steps:
    img = {k[4:]: v for k, v in params.items() if k.startswith("img/")}
    assert set(img) == set(want) - {"head/kernel", "head/bias"}
    for k, v in img.items():
      np.testing.assert_array_equal(v, want[k], err_msg=k)
  txt = [k for k in steps[0] if k.startswith("txt/")]
  assert any(not np.array_equal(steps[0][k], steps[1][k]) for k in txt)


# ----------------------------------------------------------------------------
# The demo, end to end (the one long test of this file).
# ----------------------------------------------------------------------------
def test_LONG_siglip_demo_reaches_zeroshot_090_on_held_out_combinations(
    tmp_path):
  """Trains siglip_demo.py with the documented command (one CPU device)."""
  env = xla_opt.optimized_env()  # Trains for minutes: optimised code.
  env["XLA_FLAGS"] = " ".join(
      f for f in env.get("XLA_FLAGS", "").split()
      if "xla_force_host_platform_device_count" not in f)
  env["JAX_PLATFORMS"] = "cpu"
  workdir = str(tmp_path / "demo")
  cmd = [sys.executable, "-m", "big_vision.train", "--config",
         os.path.join(CONFIGS, "siglip_demo.py"), "--workdir", workdir]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                        cwd=REPO, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = metric_writer.read(workdir)
  final = {}
  for line in lines:
    final.update(line)
  speeds = [l["steps_per_sec"] for l in lines if "steps_per_sec" in l]
  print(json.dumps({k: v for k, v in final.items() if "/" in k}, indent=1))
  print(f"median steps/s: {np.median(speeds):.2f}")
  assert final["zeroshot/color/top1"] >= 0.9, final
  assert final["zeroshot/shape/top1"] > 0.4, final  # Chance: 1/3.
  assert 0.0 < final["retrieval/i2t/r@1"] <= 1.0
  assert final["contrastive/i2t_acc"] > 1 / 200  # Better than chance.
