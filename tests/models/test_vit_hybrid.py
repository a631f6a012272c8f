"""The hybrid R50+ViT: a ResNet stem under the ViT, with released names."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vision import utils
from big_vision.models import resnet_stem
from big_vision.models import vit


def _shapes(model, res=224):
  return jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, res, res, 3)))
  )["params"]


def test_r50_vit_b16_parameter_count_and_names():
  params = _shapes(vit.Model(1000, variant="B/16", pool_type="tok",
                             resnet=dict(num_layers=50, width=1)), res=384)
  names = utils.flatten_dict(params)
  # Released R50+ViT-B/16 names: the stem sits next to `embedding`.
  for name in ("conv_root/kernel", "gn_root/scale",
               "block1/unit1/conv1/kernel", "block3/unit9/gn3/bias",
               "embedding/kernel", "Transformer/encoder_norm/scale"):
    assert name in names, name
  assert names["embedding/kernel"].shape == (1, 1, 1024, 768)
  assert names["pos_embedding"].shape == (1, 24 * 24, 768)
  # Published: 98.95M for the released (fine-tuned, no pre-logits)
  # R50+ViT-B/16 at 384px, whose vit_jax layout has one more posemb slot.
  count = utils.tree_count(params)
  assert count + 768 == 98_950_952, count


def test_hybrid_forward_shapes_and_stem_output():
  model = vit.Model(10, width=32, depth=1, num_heads=2, mlp_dim=64,
                    patch_size=16, resnet=dict(num_layers=(1, 1, 1), width=1))
  x = jnp.ones((2, 32, 32, 3))
  # Jitted: op by op, init and apply compiled ~190 ops one at a time.
  params = jax.jit(model.init)(jax.random.PRNGKey(0), x)["params"]
  logits, out = jax.jit(model.apply)({"params": params}, x)
  assert logits.shape == (2, 10)
  stride = resnet_stem.output_stride((1, 1, 1))
  assert out["resnet"].shape[1:3] == (32 // stride, 32 // stride)
  assert out["stem"].shape == (2, 2, 2, 32)
  np.testing.assert_array_equal(params["embedding"]["kernel"].shape,
                                (1, 1, resnet_stem.output_channels((1, 1, 1),
                                                                   1), 32))


@pytest.mark.parametrize("resnet,error", [
    (dict(num_layers=50, widht=1), "Did you mean 'width'"),
])
def test_hybrid_bad_options(resnet, error):
  with pytest.raises(ValueError, match=error):
    vit.Model(10, variant="B/16", resnet=resnet)


def test_hybrid_patch_not_multiple_of_stride():
  with pytest.raises(ValueError, match="multiple of the ResNet stem's stride"):
    vit.Model(10, variant="B/8", resnet=dict(num_layers=50))


# ----------------------------------------------------------------------------
# The whole hybrid forward pass, against numpy.
# ----------------------------------------------------------------------------
def _load_test_vit():
  """tests/models/test_vit.py, for its numpy ViT (`_np_vit`, `_randomize`)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "test_vit.py")
  spec = importlib.util.spec_from_file_location("_vit_reference", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _same_pads(size, k, stride):
  """TF/XLA 'SAME': ceil(size / stride) outputs; the odd pixel goes after."""
  out = -(-size // stride)
  total = max((out - 1) * stride + k - size, 0)
  return total // 2, total - total // 2


def _np_pad(x, k, stride, value=0.0, symmetric=False):
  lo, hi = ((k - 1) // 2, (k - 1) // 2) if symmetric else _same_pads(
      x.shape[1], k, stride)
  return np.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)),
                constant_values=value)


def _np_windows(x, k, stride):
  """[N, OH, OW, k, k, C] windows of an (already padded) NHWC map."""
  oh = (x.shape[1] - k) // stride + 1
  ow = (x.shape[2] - k) // stride + 1
  return np.stack([np.stack([x[:, i * stride:i * stride + k,
                               j * stride:j * stride + k]
                             for j in range(ow)], 1) for i in range(oh)], 1)


def _np_stem(x, p, stages, symmetric=False):
  """vit_jax's hybrid ResNet: WS convs (eps on the std), GN(32, 1e-6)."""
  relu = lambda v: np.maximum(v, 0)

  def conv(v, kernel, stride=1):
    ws = (kernel - kernel.mean((0, 1, 2))) / (kernel.std((0, 1, 2)) + 1e-5)
    k = kernel.shape[0]
    return np.einsum("nijhwc,hwco->nijo",
                     _np_windows(_np_pad(v, k, stride, symmetric=symmetric),
                                 k, stride), ws)

  def gn(v, q):
    n, h, w, c = v.shape
    g = v.reshape(n, h, w, 32, c // 32)
    g = (g - g.mean((1, 2, 4), keepdims=True)) / np.sqrt(
        g.var((1, 2, 4), keepdims=True) + 1e-6)
    return g.reshape(v.shape) * q["scale"] + q["bias"]

  x = relu(gn(conv(x, p["conv_root"]["kernel"], 2), p["gn_root"]))
  x = _np_windows(_np_pad(x, 3, 2, value=-np.inf, symmetric=symmetric), 3,
                  2).max((3, 4))
  for i, units in enumerate(stages):
    for j in range(units):
      u = p[f"block{i + 1}"][f"unit{j + 1}"]
      stride = 2 if i > 0 and j == 0 else 1
      shortcut = x
      if "conv_proj" in u:
        shortcut = gn(conv(x, u["conv_proj"]["kernel"], stride), u["gn_proj"])
      y = relu(gn(conv(x, u["conv1"]["kernel"]), u["gn1"]))
      y = relu(gn(conv(y, u["conv2"]["kernel"], stride), u["gn2"]))
      y = gn(conv(y, u["conv3"]["kernel"]), u["gn3"])
      x = relu(shortcut + y)
  return x


def test_hybrid_forward_matches_numpy():
  """Stem (root conv, GN, 'SAME' max-pool, a plain and a strided stage),
  then the (patch / stride) embedding conv and the transformer, end to end.

  32px input, stages (1, 1) at width 0.5: 8x8 -> 4x4x256 feature map; patch
  16 in pixels is a 2x2 embedding conv on it, hence 2x2 tokens.
  """
  ref = _load_test_vit()
  stages = (1, 1)
  model = vit.Model(5, width=32, depth=1, num_heads=2, mlp_dim=64,
                    patch_size=16, pool_type="tok", rep_size=True,
                    resnet=dict(num_layers=stages, width=0.5))
  img = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3)),
                   np.float64)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 32, 32, 3)))["params"]
  # Random values everywhere (gn3 starts at scale 0, head at 0: hidden bugs).
  params = ref._randomize(shapes)
  logits, out = jax.jit(model.apply)({"params": params},
                                     jnp.asarray(img, jnp.float32))
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)

  fmap = _np_stem(img, p, stages)
  assert fmap.shape == (2, 4, 4, 256) == out["resnet"].shape
  np.testing.assert_allclose(out["resnet"], fmap, rtol=1e-4, atol=1e-4)
  assert params["embedding"]["kernel"].shape == (2, 2, 256, 32)
  assert out["stem"].shape == (2, 2, 2, 32)
  # The ViT part: the numpy ViT's patchify of the feature map with 2x2
  # patches is the embedding conv.
  want = ref._np_vit(p, fmap, patch=2)
  np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)
  assert np.abs(want).mean() > 0.1  # Not a trivially small output.
  # BiT's symmetric padding (a plausible mix-up) gives other numbers.
  wrong = _np_stem(img, p, stages, symmetric=True)
  assert np.abs(np.asarray(out["resnet"]) - wrong).mean() > 0.05
