"""MLP-Mixer: released names and counts, a numpy re-implementation, loading."""
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from big_vision import checkpoint
from big_vision import utils
from big_vision.models import mlp_mixer


def _abstract_params(model, size=224):
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3))))
  return shapes["params"]


def _closed_form_count(variant, size=224, classes=1000):
  cfg = mlp_mixer.decode_variant(variant)
  p, c = cfg["patch_size"][0], cfg["hidden_dim"]
  s, t = (size // p)**2, cfg["tokens_mlp_dim"]
  d = cfg["channels_mlp_dim"]
  block = 2 * 2 * c + (s * t + t + t * s + s) + (c * d + d + d * c + c)
  return (p * p * 3 * c + c) + cfg["num_blocks"] * block + 2 * c + (
      c * classes + classes)


# ----------------------------------------------------------------------------
# Released layout and size.
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("variant,published", [("B/16", 59.9e6),
                                               ("L/16", 208e6)])
def test_parameter_count_matches_published(variant, published):
  n = utils.tree_count(_abstract_params(mlp_mixer.Model(1000, variant=variant)))
  assert abs(n - published) / published < 0.005
  assert n == _closed_form_count(variant)


@pytest.mark.parametrize("variant", mlp_mixer.VARIANTS)
def test_every_variant_matches_closed_form(variant):
  cfg = mlp_mixer.decode_variant(variant)
  size = cfg["patch_size"][0] * 2  # 4 tokens: keeps eval_shape trivial.
  n = utils.tree_count(_abstract_params(
      mlp_mixer.Model(10, variant=variant), size))
  assert n == _closed_form_count(variant, size, 10)


def test_published_widths():
  got = {v: mlp_mixer.decode_variant(v) for v in ("S/32", "B/16", "L/16",
                                                  "H/14")}
  assert got["S/32"] == dict(patch_size=(32, 32), hidden_dim=512,
                             tokens_mlp_dim=256, channels_mlp_dim=2048,
                             num_blocks=8)
  assert got["B/16"]["hidden_dim"] == 768 and got["B/16"]["num_blocks"] == 12
  assert got["L/16"]["channels_mlp_dim"] == 4096
  assert got["H/14"] == dict(patch_size=(14, 14), hidden_dim=1280,
                             tokens_mlp_dim=640, channels_mlp_dim=5120,
                             num_blocks=32)


def test_parameter_names_are_the_released_ones():
  flat = utils.flatten_dict(
      _abstract_params(mlp_mixer.Model(1000, variant="B/16")))
  expected = {
      "stem/kernel": (16, 16, 3, 768), "stem/bias": (768,),
      "MixerBlock_0/LayerNorm_0/scale": (768,),
      "MixerBlock_0/LayerNorm_0/bias": (768,),
      "MixerBlock_0/token_mixing/Dense_0/kernel": (196, 384),
      "MixerBlock_0/token_mixing/Dense_0/bias": (384,),
      "MixerBlock_0/token_mixing/Dense_1/kernel": (384, 196),
      "MixerBlock_0/token_mixing/Dense_1/bias": (196,),
      "MixerBlock_0/LayerNorm_1/scale": (768,),
      "MixerBlock_11/channel_mixing/Dense_0/kernel": (768, 3072),
      "MixerBlock_11/channel_mixing/Dense_1/kernel": (3072, 768),
      "MixerBlock_11/channel_mixing/Dense_1/bias": (768,),
      "pre_head_layer_norm/scale": (768,),
      "pre_head_layer_norm/bias": (768,),
      "head/kernel": (768, 1000), "head/bias": (1000,),
  }
  for name, shape in expected.items():
    assert flat[name].shape == shape, name
  assert len(flat) == 4 + 12 * 12 + 2  # stem, blocks, pre-head LN, head.


def test_bad_variant_or_argument_named():
  with pytest.raises(ValueError, match=r"'B/14'.*Valid choices: B/16, B/32"):
    mlp_mixer.Model(10, variant="B/14")
  with pytest.raises(ValueError, match=r"'num_layers'.*num_blocks"):
    mlp_mixer.Model(10, num_layers=3)


def test_explicit_keywords_override_variant():
  m = mlp_mixer.Model(10, variant="S/16", num_blocks=2, patch_size=8)
  assert (m.num_blocks, m.patch_size, m.hidden_dim) == (2, (8, 8), 512)


# ----------------------------------------------------------------------------
# Forward, against numpy.
# ----------------------------------------------------------------------------
_TINY_CFG = dict(patch_size=(4, 4), hidden_dim=16, tokens_mlp_dim=8,
                 channels_mlp_dim=32, num_blocks=2)
_TINY = mlp_mixer.Model(5, head_zeroinit=False, **_TINY_CFG)


@pytest.fixture(scope="module")
def tiny():
  init = jax.jit(_TINY.init)
  x = jnp.zeros((1, 16, 16, 3))
  return (init(jax.random.PRNGKey(0), x)["params"],
          init(jax.random.PRNGKey(1), x)["params"])


def _np_forward(params, x):
  """Mixer from the paper's equations, in float64 numpy."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)

  def ln(v, q):
    mu, var = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
    return (v - mu) / np.sqrt(var + 1e-6) * q["scale"] + q["bias"]

  def gelu(v):  # The tanh approximation, flax's default.
    return 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v**3)))

  def mlp(v, q):
    h = gelu(v @ q["Dense_0"]["kernel"] + q["Dense_0"]["bias"])
    return h @ q["Dense_1"]["kernel"] + q["Dense_1"]["bias"]

  n, size = x.shape[0], x.shape[1]
  g = size // 4
  patches = x.reshape(n, g, 4, g, 4, 3).transpose(0, 1, 3, 2, 4, 5)
  tokens = patches.reshape(n, g * g, 4 * 4 * 3) @ p["stem"]["kernel"].reshape(
      48, -1) + p["stem"]["bias"]
  for i in range(2):
    b = p[f"MixerBlock_{i}"]
    u = ln(tokens, b["LayerNorm_0"]).transpose(0, 2, 1)
    tokens = tokens + mlp(u, b["token_mixing"]).transpose(0, 2, 1)
    tokens = tokens + mlp(ln(tokens, b["LayerNorm_1"]), b["channel_mixing"])
  pre = ln(tokens, p["pre_head_layer_norm"]).mean(1)
  return pre @ p["head"]["kernel"] + p["head"]["bias"], pre


def test_forward_matches_numpy(tiny):
  params, _ = tiny
  x = np.random.default_rng(0).normal(size=(3, 16, 16, 3)).astype(np.float32)
  logits, out = jax.jit(_TINY.apply)({"params": params}, x)
  want_logits, want_pre = _np_forward(params, x.astype(np.float64))
  np.testing.assert_allclose(out["pre_logits"], want_pre, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-4)
  assert out["stem"].shape == (3, 4, 4, 16)
  assert out["input_tokens"].shape == (3, 16, 16)
  assert out["block1"].shape == (3, 16, 16)
  np.testing.assert_array_equal(out["logits"], logits)


def test_zero_head_and_no_head():
  x = jnp.zeros((2, 16, 16, 3))
  model = mlp_mixer.Model(5, **_TINY_CFG)
  head = jax.jit(model.init)(jax.random.PRNGKey(0), x)["params"]["head"]
  np.testing.assert_array_equal(head["kernel"], 0.0)
  for nc in (None, 0):
    model = mlp_mixer.Model(nc, **_TINY_CFG)
    params = _abstract_params(model, 16)
    assert "head" not in params
    y, out = jax.eval_shape(model.apply, {"params": params}, x)
    assert y.shape == (2, 16) and "logits" not in out


def test_drop_path_formula():
  x = jnp.ones((4000, 3, 2))
  y = np.asarray(mlp_mixer._drop_path(x, 0.25, jax.random.PRNGKey(0)))
  kept = y[:, 0, 0] != 0
  # Whole examples dropped; survivors scaled by 1/keep; expectation preserved.
  np.testing.assert_array_equal(y[kept], np.float32(1) / np.float32(0.75))
  np.testing.assert_array_equal(y[~kept], 0.0)
  assert abs(kept.mean() - 0.75) < 0.03
  assert abs(y.mean() - 1.0) < 0.04


def test_stochastic_depth_only_when_training(tiny):
  params, _ = tiny
  model = mlp_mixer.Model(5, head_zeroinit=False, stoch_depth=0.5,
                          **_TINY_CFG)
  x = np.random.default_rng(1).normal(size=(16, 16, 16, 3)).astype(np.float32)
  apply = jax.jit(model.apply, static_argnames="train")
  ref, _ = jax.jit(_TINY.apply)({"params": params}, x)
  ev, _ = apply({"params": params}, x, train=False)
  np.testing.assert_allclose(ev, ref, rtol=1e-6, atol=1e-6)
  a, _ = apply({"params": params}, x, train=True,
               rngs={"dropout": jax.random.PRNGKey(0)})
  b, _ = apply({"params": params}, x, train=True,
               rngs={"dropout": jax.random.PRNGKey(1)})
  assert not np.allclose(a, ev) and not np.allclose(a, b)
  # Without stochastic depth, train and eval agree (no other randomness).
  t, _ = jax.jit(_TINY.apply, static_argnames="train")(
      {"params": params}, x, train=True)
  np.testing.assert_allclose(t, ref, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------
# Loading.
# ----------------------------------------------------------------------------
def test_save_load_round_trip_exact(tmp_path, tiny):
  trained, fresh = tiny
  flat = {k: np.asarray(v) for k, v in utils.flatten_dict(trained).items()}
  path = str(tmp_path / "mixer.npz")
  checkpoint.save_params(trained, path)
  np.savez(str(tmp_path / "plain.npz"), **flat)  # As the released files.
  for loaded in (mlp_mixer.load(fresh, path, {}),
                 mlp_mixer.load(fresh, np.load(str(tmp_path / "plain.npz")))):
    got = utils.flatten_dict(loaded)
    assert got.keys() == flat.keys()
    for k, v in got.items():
      np.testing.assert_array_equal(v, flat[k], err_msg=k)
  x = np.random.default_rng(2).normal(size=(2, 16, 16, 3)).astype(np.float32)
  apply = jax.jit(_TINY.apply)
  np.testing.assert_array_equal(apply({"params": loaded}, x)[0],
                                apply({"params": trained}, x)[0])


def test_dont_load_head_keeps_new_head(tiny):
  trained, fresh = tiny
  ckpt = {k: np.asarray(v) for k, v in utils.flatten_dict(trained).items()}
  ckpt["head/kernel"] = np.ones((16, 1000), np.float32)  # 1000-class ckpt.
  ckpt["head/bias"] = np.ones((1000,), np.float32)
  with pytest.raises(ValueError,
                     match=r"head/kernel: \(16, 1000\) vs \(16, 5\)"):
    mlp_mixer.load(fresh, ckpt)
  got = utils.flatten_dict(
      mlp_mixer.load(fresh, ckpt, dont_load=("head/.*",)))
  want_new = utils.flatten_dict(fresh)
  for k, v in got.items():
    src = want_new if k.startswith("head/") else ckpt
    np.testing.assert_array_equal(v, src[k], err_msg=k)


def test_other_resolution_is_reported_by_name():
  # The token-mixing MLP is sized by the token count: 16 vs 64 tokens.
  init = _abstract_params(_TINY, 32)
  ckpt = _abstract_params(_TINY, 16)
  with pytest.raises(ValueError) as e:
    mlp_mixer.load(init, ckpt)
  msg = str(e.value)
  assert "MixerBlock_0/token_mixing/Dense_0/kernel: (16, 8) vs (64, 8)" in msg
  assert "MixerBlock_1/token_mixing/Dense_1/bias: (16,) vs (64,)" in msg
  assert "channel_mixing" not in msg


# ----------------------------------------------------------------------------
# Layering and training.
# ----------------------------------------------------------------------------
def test_imports_without_tensorflow():
  code = ("import sys; sys.modules['tensorflow'] = None\n"
          "import big_vision.models.mlp_mixer as m\n"
          "assert 'tensorflow' not in [k for k, v in sys.modules.items() "
          "if v is not None]\n"
          "m.Model(10, variant='B/16')\n")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True,
                     text=True, env=env, timeout=120)
  assert r.returncode == 0, r.stderr


def test_sgd_reduces_loss_on_tiny_problem():
  model = mlp_mixer.Model(5, stoch_depth=0.1, **_TINY_CFG)  # Zero head.
  rng = np.random.default_rng(0)
  x = rng.normal(size=(10, 16, 16, 3)).astype(np.float32)
  y = np.arange(10) % 5
  x += y[:, None, None, None] * 0.3
  params = jax.jit(model.init)(jax.random.PRNGKey(0), x[:1])["params"]
  tx = optax.sgd(0.3)
  opt = tx.init(params)

  def loss_fn(p, rng):
    logits, _ = model.apply({"params": p}, x, train=True,
                            rngs={"dropout": rng})
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def step(p, o, rng):
    loss, g = jax.value_and_grad(loss_fn)(p, rng)
    u, o = tx.update(g, o)
    return optax.apply_updates(p, u), o, loss

  losses = []
  for i in range(10):
    params, opt, loss = step(params, opt, jax.random.PRNGKey(i))
    losses.append(float(loss))
  assert losses[0] == pytest.approx(math.log(5), rel=1e-5)  # Zero head.
  assert losses[-1] < 0.8 * losses[0], losses
