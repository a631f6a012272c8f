"""Two-tower model: published names, inits, outputs, checkpoint loading."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vision import checkpoint
from big_vision import utils
from big_vision.models import two_towers
from big_vision.models import vit

IMAGE = dict(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=(8, 8),
             pool_type="gap")
TEXT = dict(width=24, depth=1, mlp_dim=48, num_heads=2, vocab_size=40)


def make(**kw):
  cfg = dict(image=IMAGE, text=TEXT, out_dim=16, temperature_init=10.0,
             bias_init=-10.0)
  cfg.update(kw)
  return two_towers.Model(**cfg), cfg


def inputs(seed=0, batch=4):
  rng = np.random.RandomState(seed)
  images = rng.uniform(-1, 1, (batch, 16, 16, 3)).astype(np.float32)
  tokens = rng.randint(0, 40, (batch, 6)).astype(np.int32)
  return images, tokens


def init(model, seed=0):
  images, tokens = inputs()
  return model.init(jax.random.PRNGKey(seed), images[:1], tokens[:1])["params"]


def flat(tree):
  return utils.flatten_dict(jax.device_get(tree))


def test_published_names_and_paper_inits():
  params = init(make()[0])
  assert set(params) == {"img", "txt", "t", "b"}
  names = flat(params)
  for name in ("img/embedding/kernel", "img/pos_embedding", "img/head/kernel",
               "img/Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel",
               "txt/Embed_0/embedding", "txt/pos_embedding",
               "txt/Encoder_0/encoder_norm/scale", "txt/head/kernel"):
    assert name in names, name
  assert names["t"].shape == names["b"].shape == (1,)
  np.testing.assert_allclose(names["t"], [math.log(10.0)], rtol=1e-7)
  np.testing.assert_array_equal(names["b"], [-10.0])
  # Heads are not zero-initialised inside a two-tower model.
  assert np.abs(names["img/head/kernel"]).max() > 0


def test_outputs_are_normalised_and_either_side_may_be_missing():
  model, _ = make()
  params = init(model)
  images, tokens = inputs(1)
  zimg, ztxt, out = model.apply({"params": params}, images, tokens)
  np.testing.assert_allclose(np.linalg.norm(zimg, axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(ztxt, axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(out["t"], 10.0, rtol=1e-6)
  np.testing.assert_allclose(out["b"], -10.0)
  # The embedding is the tower's head output, normalised.
  head = out["img/logits"]
  np.testing.assert_allclose(
      zimg, head / np.linalg.norm(head, axis=-1, keepdims=True), rtol=1e-5)
  assert "txt/pre_logits" in out and "img/pre_logits" in out

  zimg_only, none, _ = model.apply({"params": params}, images, None)
  none2, ztxt_only, _ = model.apply({"params": params}, None, tokens)
  assert none is None and none2 is None
  np.testing.assert_allclose(zimg_only, zimg, rtol=1e-6)
  np.testing.assert_allclose(ztxt_only, ztxt, rtol=1e-6)


def test_no_bias_and_lit_style_out_dim():
  model, _ = make(bias_init=None, out_dim=(None, 32))
  params = init(model)
  assert "b" not in params and "head" not in params["img"]
  images, tokens = inputs()
  zimg, ztxt, out = model.apply({"params": params}, images, tokens)
  assert zimg.shape == ztxt.shape == (4, 32) and "b" not in out
  bad, _ = make(out_dim=(None, 16))
  with pytest.raises(ValueError, match="out_dim"):
    init(bad)


@pytest.mark.parametrize("kw,message", [
    (dict(image_model="vitt"), "Did you mean 'vit'"),
    (dict(num_classes=10), "num_classes"),
    (dict(temperature_init=0.0), "temperature_init"),
])
def test_bad_configs_are_named(kw, message):
  with pytest.raises(ValueError, match=message):
    make(**kw)


def test_load_whole_published_style_npz(tmp_path):
  model, cfg = make()
  trained = init(model, seed=1)
  path = str(tmp_path / "siglip.npz")
  # Published files keep everything under "params/".
  checkpoint.save_params({"params": trained}, path)
  loaded = two_towers.load(init(model, seed=2), path, cfg)
  a, b = flat(trained), flat(loaded)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_whole_checkpoint_without_bias_needs_dont_load(tmp_path):
  no_bias = init(make(bias_init=None)[0], seed=1)
  path = str(tmp_path / "clip.npz")
  checkpoint.save_params(no_bias, path)
  model, cfg = make()
  fresh = init(model, seed=2)
  with pytest.raises(ValueError, match="b"):
    two_towers.load(fresh, path, cfg)
  loaded = two_towers.load(fresh, path, cfg, dont_load=("b",))
  np.testing.assert_array_equal(loaded["b"], fresh["b"])
  np.testing.assert_array_equal(loaded["t"], no_bias["t"])


def test_lit_loads_image_tower_from_a_vit_checkpoint(tmp_path):
  # An AugReg-style classifier checkpoint: ViT with a 21-class head.
  vit_model = vit.Model(21, **IMAGE)
  vit_params = vit_model.init(jax.random.PRNGKey(5),
                              jnp.zeros((1, 16, 16, 3)))["params"]
  vit_params = jax.tree.map(lambda x: x + 0.5, vit_params)  # not an init.
  path = str(tmp_path / "vit.npz")
  checkpoint.save_params(vit_params, path)

  model, cfg = make(out_dim=(None, 32), bias_init=None)
  fresh = init(model, seed=2)
  with pytest.raises(ValueError, match="head"):
    two_towers.load(fresh, {"img": path}, cfg)
  loaded = two_towers.load(fresh, {"img": path}, cfg,
                           dont_load=("img/head/.*",))
  want = flat(vit_params)
  got = flat(loaded["img"])
  assert set(got) == set(want) - {"head/kernel", "head/bias"}
  for k in got:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  # The text tower and t keep their fresh init.
  for k, v in flat(fresh["txt"]).items():
    np.testing.assert_array_equal(flat(loaded["txt"])[k], v)
  np.testing.assert_array_equal(loaded["t"], fresh["t"])


def test_tower_from_a_two_tower_checkpoint_is_narrowed(tmp_path):
  model, cfg = make()
  other = init(model, seed=3)
  path = str(tmp_path / "two.npz")
  checkpoint.save_params({"params": other}, path)
  fresh = init(model, seed=4)
  loaded = two_towers.load(fresh, {"text": path}, cfg)
  for k, v in flat(other["txt"]).items():
    np.testing.assert_array_equal(flat(loaded["txt"])[k], v)
  for k, v in flat(fresh["img"]).items():
    np.testing.assert_array_equal(flat(loaded["img"])[k], v)
  with pytest.raises(ValueError, match="Did you mean 'img'"):
    two_towers.load(fresh, {"imgg": path}, cfg)
