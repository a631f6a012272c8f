"""BiT ResNet v2: released names and counts, the WS/GN formulas, loading."""
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
from big_vision.models import bit


def _abstract_params(model, size=224):
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3))))
  return shapes["params"]


def _init(model, size, seed=0, batch=1):
  init = jax.jit(model.init)  # Op-by-op init of a ResNet is slow on CPU.
  return init(jax.random.PRNGKey(seed), jnp.zeros((batch, size, size, 3)))[
      "params"]


# ----------------------------------------------------------------------------
# Released layout and size.
# ----------------------------------------------------------------------------
def test_r50x1_parameter_count_matches_published():
  n = utils.tree_count(_abstract_params(bit.Model(1000, variant="R50x1")))
  assert n == 25_549_352
  assert abs(n - 25.56e6) / 25.56e6 < 0.005


def test_closed_form_count_any_depth_and_width():
  # Independent count from the architecture, for a deep and wide variant.
  def count(blocks, w, classes):
    n = 7 * 7 * 3 * 64 * w
    cin = 64 * w
    for i, units in enumerate(blocks):
      mid = 64 * w * 2**i
      for j in range(units):
        n += 2 * cin + cin * mid          # a: GN(cin), 1x1
        n += 2 * mid + 9 * mid * mid      # b: GN(mid), 3x3
        n += 2 * mid + mid * 4 * mid      # c: GN(mid), 1x1
        if j == 0:
          n += cin * 4 * mid              # a/proj
        cin = 4 * mid
    return n + 2 * cin + cin * classes + classes
  for depth, width in ((101, 3), (152, 2), (26, 1)):
    model = bit.Model(21843, depth=depth, width=width)
    assert utils.tree_count(_abstract_params(model)) == count(
        bit.DEPTHS[depth], width, 21843)


def test_parameter_names_and_shapes_are_the_released_ones():
  flat = utils.flatten_dict(_abstract_params(bit.Model(1000, variant="R50x1")))
  expected = {
      "resnet/root_block/standardized_conv2d/kernel": (7, 7, 3, 64),
      "resnet/block1/unit01/a/group_norm/gamma": (64,),
      "resnet/block1/unit01/a/group_norm/beta": (64,),
      "resnet/block1/unit01/a/standardized_conv2d/kernel": (1, 1, 64, 64),
      "resnet/block1/unit01/a/proj/standardized_conv2d/kernel": (1, 1, 64, 256),
      "resnet/block1/unit01/b/standardized_conv2d/kernel": (3, 3, 64, 64),
      "resnet/block1/unit01/c/standardized_conv2d/kernel": (1, 1, 64, 256),
      "resnet/block2/unit01/a/proj/standardized_conv2d/kernel":
          (1, 1, 256, 512),
      "resnet/block4/unit03/c/standardized_conv2d/kernel": (1, 1, 512, 2048),
      "resnet/group_norm/gamma": (2048,),
      "resnet/group_norm/beta": (2048,),
      "resnet/head/conv2d/kernel": (1, 1, 2048, 1000),
      "resnet/head/conv2d/bias": (1000,),
  }
  for name, shape in expected.items():
    assert flat[name].shape == shape, name
  units = {n.split("/")[1]: set() for n in flat if "/unit" in n}
  for n in flat:
    if "/unit" in n:
      units[n.split("/")[1]].add(n.split("/")[2])
  assert {b: len(u) for b, u in units.items()} == {
      "block1": 3, "block2": 4, "block3": 6, "block4": 3}
  projs = sorted(n.split("/")[1] + "/" + n.split("/")[2]
                 for n in flat if "/proj/" in n)
  assert projs == [f"block{i}/unit01" for i in range(1, 5)]
  assert not any("bias" in n for n in flat if "standardized_conv2d" in n)


@pytest.mark.parametrize("variant,depth,width", [
    ("R50x1", 50, 1), ("R101x3", 101, 3), ("R152x4", 152, 4), ("R26x2", 26, 2)])
def test_variant_names(variant, depth, width):
  assert bit.decode_variant(variant) == dict(depth=depth, width=width)
  m = bit.Model(10, variant=variant)
  assert (m.depth, m.width) == (depth, width)


def test_bad_variant_depth_or_argument_named():
  with pytest.raises(ValueError, match=r"'R51x1'.*Did you mean 'R50x1'"):
    bit.Model(10, variant="R51x1")
  with pytest.raises(ValueError, match=r"depth 34.*101, 152, 26, 50"):
    bit.Model(10, depth=34)
  with pytest.raises(ValueError, match=r"'widht'.*Did you mean 'width'"):
    bit.Model(10, widht=2)


# ----------------------------------------------------------------------------
# The two formulas, against numpy.
# ----------------------------------------------------------------------------
def _np_conv(x, w, stride, pad):
  """Direct NHWC convolution with explicit symmetric padding."""
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  kh, kw, _, cout = w.shape
  n, h, wd, _ = x.shape
  oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
  out = np.zeros((n, oh, ow, cout))
  for i in range(oh):
    for j in range(ow):
      patch = x[:, i * stride:i * stride + kh, j * stride:j * stride + kw]
      out[:, i, j] = np.einsum("nhwc,hwco->no", patch, w)
  return out


def test_weight_standardisation_matches_numpy():
  rng = np.random.default_rng(0)
  w = rng.normal(0.3, 2.0, (3, 3, 5, 7)).astype(np.float32)
  mean = w.mean(axis=(0, 1, 2))
  var = w.var(axis=(0, 1, 2))
  want = (w - mean) / np.sqrt(var + 1e-10)
  got = np.asarray(bit.standardize_kernel(jnp.asarray(w), eps=1e-10))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got.mean(axis=(0, 1, 2)), 0, atol=1e-5)
  np.testing.assert_allclose(got.std(axis=(0, 1, 2)), 1, rtol=1e-5)


def test_std_conv_matches_numpy_and_ignores_kernel_affine():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 9, 9, 4)).astype(np.float32)
  conv = bit.StdConv(6, 3, 2, padding=((1, 1), (1, 1)))
  params = conv.init(jax.random.PRNGKey(0), x)["params"]
  k = np.asarray(params["kernel"], np.float64)
  ws = (k - k.mean((0, 1, 2))) / np.sqrt(k.var((0, 1, 2)) + 1e-10)
  got = np.asarray(conv.apply({"params": params}, x))
  np.testing.assert_allclose(got, _np_conv(x, ws, 2, 1), rtol=1e-4, atol=1e-4)
  # Invariance: a per-output-channel affine change of the raw kernel does not
  # change the conv (that is the point of standardising).
  scale = rng.uniform(0.5, 3.0, 6)
  shift = rng.normal(size=6)
  moved = {"kernel": jnp.asarray(k * scale + shift, jnp.float32)}
  np.testing.assert_allclose(conv.apply({"params": moved}, x), got,
                             rtol=1e-3, atol=1e-3)


def test_group_norm_matches_numpy():
  rng = np.random.default_rng(2)
  x = rng.normal(3.0, 5.0, (2, 4, 3, 64)).astype(np.float32)
  gamma = rng.normal(size=64).astype(np.float32)
  beta = rng.normal(size=64).astype(np.float32)
  g = x.reshape(2, 4, 3, 32, 2)
  mean = g.mean(axis=(1, 2, 4), keepdims=True)
  var = g.var(axis=(1, 2, 4), keepdims=True)
  want = ((g - mean) / np.sqrt(var + 1e-5)).reshape(x.shape) * gamma + beta
  gn = bit.GroupNorm()
  params = gn.init(jax.random.PRNGKey(0), x)["params"]
  assert set(params) == {"gamma", "beta"}
  got = gn.apply({"params": {"gamma": gamma, "beta": beta}}, x)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------
# One pre-activation bottleneck, against a numpy re-implementation.
# ----------------------------------------------------------------------------
def _np_bit_gn(x, p, groups=32, eps=1e-5):
  n, h, w, c = x.shape
  g = x.reshape(n, h, w, groups, c // groups)
  g = (g - g.mean((1, 2, 4), keepdims=True)) / np.sqrt(
      g.var((1, 2, 4), keepdims=True) + eps)
  return g.reshape(x.shape) * p["gamma"] + p["beta"]


def _np_bit_unit(x, p, strides, mutant=None):
  """BiT's ResNet v2 unit (He et al. 2016, "Identity Mappings"), as in the
  released TF code: every conv sees relu(GN(.)) of the previous output, the
  projection shortcut sees the pre-activated input, the 3x3 conv strides.
  `mutant` swaps in a plausible mistake, to show this test would catch it.
  """
  relu = lambda v: np.maximum(v, 0)

  def conv(v, kernel, stride=1):
    ws = (kernel - kernel.mean((0, 1, 2))) / np.sqrt(
        kernel.var((0, 1, 2)) + 1e-10)
    return _np_conv(v, ws, stride, (kernel.shape[0] - 1) // 2)

  def preact(v, scope):
    if mutant == "relu_before_norm":
      return _np_bit_gn(relu(v), p[scope]["group_norm"])
    return relu(_np_bit_gn(v, p[scope]["group_norm"]))

  a_in = preact(x, "a")
  shortcut = x
  if "proj" in p["a"]:
    src = x if mutant == "project_raw_input" else a_in
    shortcut = conv(src, p["a"]["proj"]["standardized_conv2d"]["kernel"],
                    strides)
  kernel = lambda scope: p[scope]["standardized_conv2d"]["kernel"]
  stride_a, stride_b = (strides, 1) if mutant == "stride_in_1x1" else (
      1, strides)
  y = conv(a_in, kernel("a"), stride_a)
  y = conv(preact(y, "b"), kernel("b"), stride_b)
  y = conv(preact(y, "c"), kernel("c"))
  if mutant == "post_activation_output":
    y = relu(y)
  return y + shortcut


@pytest.mark.parametrize("cin,mid,strides,size", [
    (64, 32, 2, 8),    # Projection shortcut, strided.
    (128, 32, 1, 6),   # Identity shortcut.
    (64, 32, 1, 5),    # Projection (channels change), no stride, odd size.
])
def test_bottleneck_unit_matches_numpy_and_catches_wrong_orders(
    cin, mid, strides, size):
  rng = np.random.default_rng(cin + strides + size)
  x = rng.normal(0.5, 2.0, (2, size, size, cin)).astype(np.float32)
  unit = bit.BottleneckV2(mid, strides)
  shapes = jax.eval_shape(unit.init, jax.random.PRNGKey(0), x)["params"]
  assert ("proj" in shapes["a"]) == (cin != 4 * mid or strides != 1)
  # Random values everywhere (numpy: no compile); GN affine away from (1, 0).
  p = utils.tree_map_with_names(
      lambda name, s: rng.uniform(0.5, 2.0, s.shape) if name.endswith("gamma")
      else rng.normal(size=s.shape), shapes)
  got = np.asarray(jax.jit(unit.apply)(
      {"params": jax.tree.map(jnp.float32, p)}, x), np.float64)
  out_size = (size - 1) // strides + 1
  assert got.shape == (2, out_size, out_size, 4 * mid)
  want = _np_bit_unit(x.astype(np.float64), p, strides)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  scale = np.abs(want).mean()
  mutants = ["relu_before_norm", "post_activation_output"]
  if "proj" in p["a"]:
    mutants.append("project_raw_input")
  if strides > 1:
    mutants.append("stride_in_1x1")
  for mutant in mutants:
    wrong = _np_bit_unit(x.astype(np.float64), p, strides, mutant)
    assert np.abs(got - wrong).mean() > 0.05 * scale, mutant


# ----------------------------------------------------------------------------
# Forward.
# ----------------------------------------------------------------------------
def test_forward_shapes_r26():
  model = bit.Model(10, variant="R26x1")
  x = jnp.zeros((2, 32, 32, 3))
  logits, out = jax.eval_shape(
      lambda p: model.apply({"params": p}, x, train=False),
      _abstract_params(model, 32))
  assert logits.shape == (2, 10)
  assert out["stem"].shape == (2, 8, 8, 64)
  assert out["block1"].shape == (2, 8, 8, 256)
  assert out["block2"].shape == (2, 4, 4, 512)
  assert out["block4"].shape == (2, 1, 1, 2048)
  assert out["pre_logits"].shape == (2, 2048)
  assert out["logits"].shape == (2, 10)


# One tiny network, initialised once (jit compiles dominate on CPU).
_TINY = bit.ResNetV2(7, blocks=(1, 1))


@pytest.fixture(scope="module")
def tiny():
  init = jax.jit(_TINY.init)
  x = jnp.zeros((1, 16, 16, 3))
  return (init(jax.random.PRNGKey(0), x)["params"],
          init(jax.random.PRNGKey(1), x)["params"], jax.jit(_TINY.apply))


def test_forward_values_and_zero_head(tiny):
  params, _, apply = tiny
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3))
  logits, out = apply({"params": params}, x)
  assert out["block2"].shape == (2, 2, 2, 512)
  np.testing.assert_array_equal(out["logits"], logits)
  np.testing.assert_array_equal(logits, 0.0)  # head_zeroinit
  assert float(jnp.std(out["pre_logits"])) > 0.01
  # pre_logits: mean over space of relu(GN(last block)), recomputed here.
  gn = bit.group_norm(out["block2"], params["group_norm"]["gamma"],
                      params["group_norm"]["beta"])
  np.testing.assert_allclose(out["pre_logits"],
                             jnp.maximum(gn, 0).mean(axis=(1, 2)), atol=1e-5)


def test_feature_map_sizes_at_224_match_bit():
  model = bit.Model(None, variant="R50x1")
  x = jnp.zeros((1, 224, 224, 3))
  params = _abstract_params(model)
  _, out = jax.eval_shape(lambda p: model.apply({"params": p}, x), params)
  assert [out[f"block{i}"].shape[1] for i in range(1, 5)] == [56, 28, 14, 7]
  assert out["stem"].shape == (1, 56, 56, 64)


def test_no_head():
  for nc in (None, 0):
    model = bit.ResNetV2(nc, blocks=(1,))
    x = jnp.ones((1, 16, 16, 3))
    params = _abstract_params(model, 16)
    assert "head" not in params
    y, out = jax.eval_shape(lambda p: model.apply({"params": p}, x), params)
    assert y.shape == (1, 256) and "logits" not in out


# ----------------------------------------------------------------------------
# Loading.
# ----------------------------------------------------------------------------
def _with_random_head(params, num_classes, seed):
  """`params` with a random head: stands in for a trained checkpoint."""
  rng = np.random.default_rng(seed)
  flat = {k: np.asarray(v) for k, v in utils.flatten_dict(params).items()}
  cin = flat["head/conv2d/kernel"].shape[2]
  flat["head/conv2d/kernel"] = rng.normal(
      size=(1, 1, cin, num_classes)).astype(np.float32)
  flat["head/conv2d/bias"] = rng.normal(size=num_classes).astype(np.float32)
  return flat


def test_save_load_round_trip_exact(tmp_path, tiny):
  params0, params1, apply = tiny
  flat = _with_random_head(params0, 7, seed=0)
  trained = utils.unflatten_dict(flat)
  path = str(tmp_path / "bit.npz")
  checkpoint.save_params(trained, path)
  # Released files are plain np.savez with '/'-joined names: same result.
  np.savez(str(tmp_path / "plain.npz"), **flat)
  for loaded in (bit.load(params1, path, {}),
                 bit.load(params1, dict(np.load(str(tmp_path / "plain.npz"))))):
    assert utils.flatten_dict(loaded).keys() == flat.keys()
    for k, v in utils.flatten_dict(loaded).items():
      np.testing.assert_array_equal(v, flat[k], err_msg=k)
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 16, 16, 3))
  np.testing.assert_array_equal(apply({"params": loaded}, x)[0],
                                apply({"params": trained}, x)[0])


def test_dont_load_head_keeps_new_head(tiny):
  params0, params1, _ = tiny
  ckpt = _with_random_head(params0, 21, seed=1)  # Pre-trained on 21 classes.
  with pytest.raises(ValueError, match=r"head/conv2d/kernel"):
    bit.load(params1, ckpt)
  got = utils.flatten_dict(bit.load(params1, ckpt, dont_load=("head/.*",)))
  want_new = utils.flatten_dict(params1)
  assert got.keys() == want_new.keys()
  for k, v in got.items():
    src = want_new if k.startswith("head/") else ckpt
    np.testing.assert_array_equal(v, src[k], err_msg=k)


def test_mismatch_is_reported_by_name():
  # Abstract trees suffice: mismatches are found before any value is read.
  init = _abstract_params(bit.ResNetV2(3, blocks=(1,), width=2), 16)
  ckpt = utils.flatten_dict(_abstract_params(bit.ResNetV2(3, blocks=(1,)), 16))
  with pytest.raises(ValueError) as e:
    bit.load(init, ckpt)
  msg = str(e.value)
  assert "root_block/standardized_conv2d/kernel: (7, 7, 3, 64) vs " \
         "(7, 7, 3, 128)" in msg
  del ckpt["group_norm/gamma"]
  ckpt["extra/thing"] = np.zeros(3)
  with pytest.raises(ValueError) as e:
    bit.load(_abstract_params(bit.ResNetV2(3, blocks=(1,)), 16), ckpt)
  assert "group_norm/gamma" in str(e.value) and "extra/thing" in str(e.value)


# ----------------------------------------------------------------------------
# Layering and training.
# ----------------------------------------------------------------------------
def test_imports_without_tensorflow():
  code = ("import sys; sys.modules['tensorflow'] = None\n"
          "import big_vision.models.bit as m\n"
          "assert 'tensorflow' not in [k for k, v in sys.modules.items() "
          "if v is not None]\n"
          "m.Model(10, variant='R50x1')\n")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True,
                     text=True, env=env, timeout=120)
  assert r.returncode == 0, r.stderr


def test_sgd_reduces_loss_on_tiny_problem(tiny):
  params, _, _ = tiny
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 16, 16, 3)).astype(np.float32)
  y = np.array([0, 1] * 4)
  x[y == 1] += 0.5  # Learnable: class 1 is brighter.
  tx = optax.sgd(0.05)
  opt = tx.init(params)

  def loss_fn(p):
    logits, _ = _TINY.apply({"params": p}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def step(p, o):
    loss, g = jax.value_and_grad(loss_fn)(p)
    u, o = tx.update(g, o)
    return optax.apply_updates(p, u), o, loss

  losses = []
  for _ in range(8):
    params, opt, loss = step(params, opt)
    losses.append(float(loss))
  assert losses[0] == pytest.approx(np.log(7), rel=1e-5)  # Zero head.
  assert losses[-1] < 0.5 * losses[0], losses
