"""Hybrid-ViT ResNet stem: vit_jax names, counts, strides, numerics."""
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from big_vision import utils
from big_vision.models import resnet_stem


def _abstract(module, size=224):
  return jax.eval_shape(lambda: module.init(
      jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3))))["params"]


def _closed_form_count(stages, width=1):
  w = int(64 * width)
  n = 7 * 7 * 3 * w + 2 * w
  cin = w
  for i, units in enumerate(stages):
    f = w * 2**i
    for j in range(units):
      n += cin * f + 2 * f + 9 * f * f + 2 * f + f * 4 * f + 2 * 4 * f
      if j == 0:
        n += cin * 4 * f + 2 * 4 * f  # conv_proj + gn_proj
      cin = 4 * f
  return n


# ----------------------------------------------------------------------------
# Layout and size.
# ----------------------------------------------------------------------------
def test_r50_stem_names_and_shapes():
  flat = utils.flatten_dict(_abstract(resnet_stem.ResNetStem(50, 1)))
  assert {n.split("/")[0] for n in flat} == {"conv_root", "gn_root", "block1",
                                             "block2", "block3"}
  expected = {
      "conv_root/kernel": (7, 7, 3, 64),
      "gn_root/scale": (64,), "gn_root/bias": (64,),
      "block1/unit1/conv1/kernel": (1, 1, 64, 64),
      "block1/unit1/gn1/scale": (64,),
      "block1/unit1/conv2/kernel": (3, 3, 64, 64),
      "block1/unit1/conv3/kernel": (1, 1, 64, 256),
      "block1/unit1/gn3/bias": (256,),
      "block1/unit1/conv_proj/kernel": (1, 1, 64, 256),
      "block1/unit1/gn_proj/scale": (256,),
      "block2/unit1/conv_proj/kernel": (1, 1, 256, 512),
      "block3/unit1/conv_proj/kernel": (1, 1, 512, 1024),
      "block3/unit9/conv3/kernel": (1, 1, 256, 1024),
  }
  for name, shape in expected.items():
    assert flat[name].shape == shape, name
  units = {}
  for n in flat:
    if n.startswith("block"):
      b, u = n.split("/")[:2]
      units.setdefault(b, set()).add(u)
  assert units == {f"block{i + 1}": {f"unit{j + 1}" for j in range(k)}
                   for i, k in enumerate((3, 4, 9))}
  projs = sorted(n.split("/")[0] + "/" + n.split("/")[1]
                 for n in flat if n.endswith("conv_proj/kernel"))
  assert projs == ["block1/unit1", "block2/unit1", "block3/unit1"]
  assert not any(n.endswith("bias") for n in flat if "/conv" in n)


@pytest.mark.parametrize("num_layers,width", [(50, 1), (26, 1), ((3, 4, 6, 3),
                                                                 1), ((), 2)])
def test_count_matches_closed_form(num_layers, width):
  n = utils.tree_count(_abstract(resnet_stem.ResNetStem(num_layers, width)))
  assert n == _closed_form_count(resnet_stem.stages_for(num_layers), width)


def test_r50_vit_b16_hybrid_total():
  # Stem + ViT-B/16 parts of the published R50+ViT-B/16 (~99M; 98.95M at
  # 384px with 1000 classes, the size of the released fine-tuned model).
  stem = utils.tree_count(_abstract(resnet_stem.ResNetStem(50, 1)))
  assert stem == 11_894_848
  d, mlp, depth = 768, 3072, 12
  block = 2 * 2 * d + 4 * (d * d + d) + (d * mlp + mlp + mlp * d + d)
  for size, published in ((224, 99e6), (384, 98.95e6)):
    tokens = (size // resnet_stem.output_stride(50))**2
    embedding = resnet_stem.output_channels(50) * d + d   # 1x1 conv
    vit = depth * block + 2 * d + (tokens + 1) * d + d + (d * 1000 + 1000)
    total = stem + embedding + vit
    assert abs(total - published) / published < 0.005, (size, total)


# ----------------------------------------------------------------------------
# Strides and shapes.
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("num_layers,stride,channels", [
    (50, 16, 1024), (26, 32, 2048), ((3, 4, 6, 3), 32, 2048), ((), 4, 64),
    ((1, 1), 8, 512)])
def test_output_stride_and_channels_match_the_feature_map(num_layers, stride,
                                                          channels):
  assert resnet_stem.output_stride(num_layers) == stride
  assert resnet_stem.output_channels(num_layers) == channels
  stem = resnet_stem.ResNetStem(num_layers, 1)
  x = jnp.zeros((2, 224, 224, 3))
  y = jax.eval_shape(lambda p: stem.apply({"params": p}, x), _abstract(stem))
  assert y.shape == (2, 224 // stride, 224 // stride, channels)


def test_width_factor():
  assert resnet_stem.output_channels(50, 2) == 2048
  flat = utils.flatten_dict(_abstract(resnet_stem.ResNetStem((1,), 2), 32))
  assert flat["conv_root/kernel"].shape == (7, 7, 3, 128)
  assert flat["block1/unit1/conv3/kernel"].shape == (1, 1, 128, 512)


def test_bad_num_layers_named():
  with pytest.raises(ValueError, match=r"34.*Valid choices: 26, 50"):
    resnet_stem.output_stride(34)
  with pytest.raises(ValueError, match=r"positive ints"):
    resnet_stem.stages_for((3, 0))


def test_build_puts_layers_in_the_callers_scope():
  """What vit.py does: the released hybrids have the stem at the top level."""

  class Hybrid(nn.Module):

    @nn.compact
    def __call__(self, x):
      x = resnet_stem.build(x, 50, 1)
      return nn.Conv(768, (1, 1), name="embedding")(x)

  params = _abstract(Hybrid())
  assert set(params) == {"conv_root", "gn_root", "block1", "block2", "block3",
                         "embedding"}
  assert params["embedding"]["kernel"].shape == (1, 1, 1024, 768)
  stem_only = _abstract(resnet_stem.ResNetStem(50, 1))
  same = {k: v for k, v in params.items() if k != "embedding"}
  assert jax.tree.map(lambda a: a.shape, same) == jax.tree.map(
      lambda a: a.shape, stem_only)


# ----------------------------------------------------------------------------
# Numerics, against numpy.
# ----------------------------------------------------------------------------
def _np_conv(x, w, pad):
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  kh, kw, _, cout = w.shape
  n, h, wd, _ = x.shape
  out = np.zeros((n, h - kh + 1, wd - kw + 1, cout))
  for i in range(out.shape[1]):
    for j in range(out.shape[2]):
      out[:, i, j] = np.einsum("nhwc,hwco->no", x[:, i:i + kh, j:j + kw], w)
  return out


def _np_ws(w, eps=1e-5):
  """vit_jax's weight standardisation: eps added to the std."""
  return (w - w.mean((0, 1, 2))) / (w.std((0, 1, 2)) + eps)


def _np_gn(x, p, groups=32, eps=1e-6):
  n, h, w, c = x.shape
  g = x.reshape(n, h, w, groups, c // groups)
  g = (g - g.mean((1, 2, 4), keepdims=True)) / np.sqrt(
      g.var((1, 2, 4), keepdims=True) + eps)
  return g.reshape(x.shape) * p["scale"] + p["bias"]


def test_residual_unit_matches_numpy():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 5, 5, 32)).astype(np.float32)
  unit = resnet_stem.ResidualUnit(32)  # 32 -> 128 channels: has a projection.
  params = jax.jit(unit.init)(jax.random.PRNGKey(0), x)["params"]
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  for k in ("gn1", "gn2", "gn3", "gn_proj"):  # Non-trivial affine params.
    p[k]["scale"] = rng.normal(size=p[k]["scale"].shape)
    p[k]["bias"] = rng.normal(size=p[k]["bias"].shape)
  got = unit.apply({"params": jax.tree.map(jnp.float32, p)}, x)

  def conv(v, name, pad=0):
    return _np_conv(v, _np_ws(p[name]["kernel"]), pad)

  xd = x.astype(np.float64)
  short = _np_gn(conv(xd, "conv_proj"), p["gn_proj"])
  y = np.maximum(_np_gn(conv(xd, "conv1"), p["gn1"]), 0)
  y = np.maximum(_np_gn(conv(y, "conv2", pad=1), p["gn2"]), 0)
  y = _np_gn(conv(y, "conv3"), p["gn3"])
  np.testing.assert_allclose(got, np.maximum(short + y, 0), rtol=1e-3,
                             atol=1e-3)


def test_units_start_as_identity():
  # gn3 starts at scale 0, so a unit without projection maps its (post-ReLU,
  # hence non-negative) input to itself: deep stems train like shallow ones.
  x = jnp.abs(jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 128)))
  unit = resnet_stem.ResidualUnit(32)
  params = jax.jit(unit.init)(jax.random.PRNGKey(1), x)["params"]
  assert "conv_proj" not in params
  np.testing.assert_array_equal(params["gn3"]["scale"], 0.0)
  np.testing.assert_allclose(unit.apply({"params": params}, x), x, atol=1e-6)


# ----------------------------------------------------------------------------
# Layering and training.
# ----------------------------------------------------------------------------
def test_imports_without_tensorflow():
  code = ("import sys; sys.modules['tensorflow'] = None\n"
          "import big_vision.models.resnet_stem as m\n"
          "assert 'tensorflow' not in [k for k, v in sys.modules.items() "
          "if v is not None]\n"
          "assert m.output_stride(50) == 16\n")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True,
                     text=True, env=env, timeout=120)
  assert r.returncode == 0, r.stderr


def test_sgd_reduces_loss_on_tiny_problem():

  class Classifier(nn.Module):

    @nn.compact
    def __call__(self, x):
      fmap = resnet_stem.ResNetStem((1,), 0.5, name="stem")(x)
      return nn.Dense(2, kernel_init=nn.initializers.zeros)(fmap.mean((1, 2)))

  model = Classifier()
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 16, 16, 3)).astype(np.float32)
  y = np.array([0, 1] * 4)
  x[y == 1, :, :8] += 1.0  # A spatial pattern: GroupNorm keeps it.
  params = jax.jit(model.init)(jax.random.PRNGKey(0), x[:1])["params"]
  tx = optax.sgd(0.2)
  opt = tx.init(params)

  def loss_fn(p):
    return optax.softmax_cross_entropy_with_integer_labels(
        model.apply({"params": p}, x), y).mean()

  @jax.jit
  def step(p, o):
    loss, g = jax.value_and_grad(loss_fn)(p)
    u, o = tx.update(g, o)
    return optax.apply_updates(p, u), o, loss

  losses = []
  for _ in range(8):
    params, opt, loss = step(params, opt)
    losses.append(float(loss))
  assert losses[0] == pytest.approx(np.log(2), rel=1e-5)
  assert losses[-1] < 0.7 * losses[0], losses
