"""Tests for big_vision.models.vit and big_vision.models.common.

Numbers, not "it ran": published parameter counts, a numpy re-implementation
of the forward pass (both the big_vision and the vit_jax semantics), and
equalities between implementations (scan/loop, remat, attention kernels).
"""
import logging
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vision import checkpoint
from big_vision import utils
from big_vision.models import common
from big_vision.models import vit

# A tiny ViT: 32px images, 8px patches -> 4x4 grid, width 32, 2 blocks.
TINY = dict(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=8)
RES = 32


def _images(n=2, res=RES, seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), (n, res, res, 3))


def _init(model, res=RES, seed=0):
  return model.init(jax.random.PRNGKey(seed),
                    jnp.zeros((1, res, res, 3)))["params"]


def _randomize(params, seed=1, scale=0.3):
  """Non-trivial values everywhere (zero-init head/cls would hide bugs).

  numpy, not jax.random: no compilation per leaf shape."""
  rng = np.random.RandomState(seed)

  def one(name, x):
    noise = scale * rng.randn(*x.shape).astype(np.float32)
    return 1.0 + 0.1 * noise if name.endswith("scale") else noise
  return utils.tree_map_with_names(one, params)


def _abstract(model, res=RES):
  """Parameter ShapeDtypeStructs: layout checks without any compute."""
  return jax.eval_shape(lambda: _init(model, res=res))


def _shapes(params):
  return {n: tuple(x.shape) for n, x in utils.flatten_dict(params).items()}


# ----------------------------------------------------------------------------
# A second implementation, in numpy.
# ----------------------------------------------------------------------------
def _np_ln(x, p):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]


def _np_gelu(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _np_attn(xq, xkv, p):
  q = np.einsum("bld,dhk->blhk", xq, p["query"]["kernel"]) + p["query"]["bias"]
  k = np.einsum("bld,dhk->blhk", xkv, p["key"]["kernel"]) + p["key"]["bias"]
  v = np.einsum("bld,dhk->blhk", xkv, p["value"]["kernel"]) + p["value"]["bias"]
  logits = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1])
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  o = np.einsum("bhqs,bshk->bqhk", probs, v)
  return np.einsum("bqhk,hkd->bqd", o, p["out"]["kernel"]) + p["out"]["bias"]


def _np_mlp(x, p):
  h = _np_gelu(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
  return h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]


def _np_vit(p, img, patch, vit_jax_layout=False):
  """ViT forward with class token, pre_logits and head, from scratch."""
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), p)
  img = np.asarray(img, np.float64)
  n, hh, ww, c = img.shape
  gh, gw = hh // patch, ww // patch
  patches = img.reshape(n, gh, patch, gw, patch, c).transpose(0, 1, 3, 2, 4, 5)
  patches = patches.reshape(n, gh * gw, patch * patch * c)
  k = p["embedding"]["kernel"].reshape(patch * patch * c, -1)
  x = patches @ k + p["embedding"]["bias"]
  cls = np.broadcast_to(p["cls"], (n, 1, x.shape[-1]))
  if vit_jax_layout:  # Concatenate first, then add N+1 position embeddings.
    x = np.concatenate([cls, x], 1)
    x = x + p["Transformer"]["posembed_input"]["pos_embedding"]
    names = ("LayerNorm_0", "MultiHeadDotProductAttention_1", "LayerNorm_2",
             "MlpBlock_3")
  else:  # Add N position embeddings, then concatenate.
    x = np.concatenate([cls, x + p["pos_embedding"]], 1)
    names = ("LayerNorm_0", "MultiHeadDotProductAttention_0", "LayerNorm_1",
             "MlpBlock_0")
  i = 0
  while f"encoderblock_{i}" in p["Transformer"]:
    b = p["Transformer"][f"encoderblock_{i}"]
    y = _np_ln(x, b[names[0]])
    x = x + _np_attn(y, y, b[names[1]])
    x = x + _np_mlp(_np_ln(x, b[names[2]]), b[names[3]])
    i += 1
  x = _np_ln(x, p["Transformer"]["encoder_norm"])[:, 0]
  x = np.tanh(x @ p["pre_logits"]["kernel"] + p["pre_logits"]["bias"])
  return x @ p["head"]["kernel"] + p["head"]["bias"]


# ----------------------------------------------------------------------------
# Sizes and layout.
# ----------------------------------------------------------------------------
def test_variant_table_matches_published_sizes():
  expected = {
      "mu": (32, 1, 128, 2), "Ti": (192, 12, 768, 3), "S": (384, 12, 1536, 6),
      "M": (512, 12, 2048, 8), "B": (768, 12, 3072, 12),
      "L": (1024, 24, 4096, 16), "So400m": (1152, 27, 4304, 16),
      "H": (1280, 32, 5120, 16), "g": (1408, 40, 6144, 16),
      "G": (1664, 48, 8192, 16), "e": (1792, 56, 15360, 16)}
  for name, (w, d, m, h) in expected.items():
    cfg = vit.decode_variant(f"{name}/14")
    assert cfg == dict(width=w, depth=d, mlp_dim=m, num_heads=h,
                       patch_size=(14, 14))
  assert "patch_size" not in vit.decode_variant("B")
  assert vit.decode_variant(None) == {}


def test_param_count_b16_both_layouts():
  model = vit.Model(1000, variant="B/16", pool_type="tok")
  shapes = jax.eval_shape(lambda: _init(model, res=224))
  assert utils.tree_count(shapes) == 86_566_888
  # vit_jax keeps a posemb slot for the class token: +768.
  vj = vit.to_vit_jax(shapes)
  assert utils.tree_count(vj) == 86_567_656
  assert vj["Transformer"]["posembed_input"]["pos_embedding"].shape == (
      1, 197, 768)
  back = vit.from_vit_jax(vj)
  assert _shapes(back) == _shapes(shapes)


@pytest.mark.parametrize("variant,count", [
    ("L/16", 303_300_608), ("H/14", 630_763_520), ("g/14", 1_011_201_024),
    ("G/14", 1_842_774_016), ("So400m/14", 412_443_504)])
def test_param_count_large_no_head_with_cls(variant, count):
  # Class token, no pre_logits, no head ("tok" pooling, num_classes=None).
  # scan=True only to make tracing fast; the count is layout independent.
  model = vit.Model(None, variant=variant, pool_type="tok", scan=True)
  shapes = jax.eval_shape(lambda: _init(model, res=224))
  assert utils.tree_count(shapes) == count


def test_param_names_and_shapes():
  model = vit.Model(10, **TINY, pool_type="tok", rep_size=True)
  got = _shapes(_abstract(model))
  exp = {
      "embedding/kernel": (8, 8, 3, 32), "embedding/bias": (32,),
      "cls": (1, 1, 32), "pos_embedding": (1, 16, 32),
      "Transformer/encoder_norm/scale": (32,),
      "Transformer/encoder_norm/bias": (32,),
      "pre_logits/kernel": (32, 32), "pre_logits/bias": (32,),
      "head/kernel": (32, 10), "head/bias": (10,),
  }
  for i in range(2):
    b = f"Transformer/encoderblock_{i}/"
    for ln in ("LayerNorm_0", "LayerNorm_1"):
      exp[b + ln + "/scale"] = exp[b + ln + "/bias"] = (32,)
    a = b + "MultiHeadDotProductAttention_0/"
    for qkv in ("query", "key", "value"):
      exp[a + qkv + "/kernel"] = (32, 2, 16)
      exp[a + qkv + "/bias"] = (2, 16)
    exp[a + "out/kernel"], exp[a + "out/bias"] = (2, 16, 32), (32,)
    m = b + "MlpBlock_0/"
    exp[m + "Dense_0/kernel"], exp[m + "Dense_0/bias"] = (32, 64), (64,)
    exp[m + "Dense_1/kernel"], exp[m + "Dense_1/bias"] = (64, 32), (32,)
  assert got == exp


def test_scan_layout_and_map_head_names():
  model = vit.Model(None, **TINY, pool_type="map", scan=True)
  got = _shapes(_abstract(model))
  assert got["Transformer/encoderblock/MlpBlock_0/Dense_0/kernel"] == (2, 32, 64)
  assert got["Transformer/encoderblock/MultiHeadDotProductAttention_0/"
             "query/kernel"] == (2, 32, 2, 16)
  assert not any("encoderblock_" in n for n in got)
  assert got["MAPHead_0/probe"] == (1, 1, 32)
  assert got["MAPHead_0/MultiHeadDotProductAttention_0/out/kernel"] == (2, 16,
                                                                         32)
  assert got["MAPHead_0/MlpBlock_0/Dense_1/kernel"] == (64, 32)
  assert "MAPHead_0/LayerNorm_0/scale" in got
  assert "cls" not in got and "head/kernel" not in got


# ----------------------------------------------------------------------------
# Forward pass semantics.
# ----------------------------------------------------------------------------
def test_forward_matches_numpy_reference():
  model = vit.Model(5, **TINY, pool_type="tok", rep_size=True)
  params = _randomize(_init(model))
  img = _images()
  logits, out = model.apply({"params": params}, img)
  ref = _np_vit(params, img, patch=8)
  np.testing.assert_allclose(logits, ref, atol=1e-4, rtol=1e-4)
  for name in ("stem", "with_posemb", "encoded", "pre_logits", "logits",
               "block00", "block01"):
    assert name in out
  assert out["stem"].shape == (2, 4, 4, 32)
  assert out["block01"].shape == (2, 17, 32)
  assert out["logits_2d"].shape == (2, 4, 4, 5)


def test_pool_types():
  img = _images()
  for pool in ("tok", "gap", "map", "none"):
    model = vit.Model(3, **TINY, pool_type=pool)
    params = _randomize(_init(model))
    logits, out = model.apply({"params": params}, img)
    enc = np.asarray(out["encoded"])
    if pool == "tok":
      assert enc.shape == (2, 17, 32)
      np.testing.assert_allclose(out["head_input"], enc[:, 0])
    elif pool == "gap":
      np.testing.assert_allclose(out["head_input"], enc.mean(1), atol=1e-6)
    elif pool == "none":
      assert logits.shape == (2, 16, 3)
    if pool != "none":
      assert logits.shape == (2, 3)
    head = params["head"]
    np.testing.assert_allclose(
        logits, np.asarray(out["head_input"]) @ head["kernel"] + head["bias"],
        atol=1e-5)


def test_sincos2d_posemb_values():
  model = vit.Model(None, **TINY, posemb="sincos2d", pool_type="gap")
  params = _init(model)
  assert "pos_embedding" not in params
  _, out = model.apply({"params": params}, _images())
  pe = np.asarray(out["with_posemb"]) - np.asarray(out["stem"]).reshape(2, 16,
                                                                         32)
  # Token (row r, col c), channel j in quarter q: f_i = 1e4 ** (-i / 7).
  f = 1e4 ** (-np.arange(8) / 7)
  for r in range(4):
    for c in range(4):
      want = np.concatenate([np.sin(c * f), np.cos(c * f), np.sin(r * f),
                             np.cos(r * f)])
      np.testing.assert_allclose(pe[0, r * 4 + c], want, atol=1e-5)
  np.testing.assert_allclose(pe[0], pe[1], atol=1e-6)


def test_head_init():
  img = _images()
  model = vit.Model(7, **TINY, pool_type="gap")
  logits, _ = model.apply({"params": _init(model)}, img)
  np.testing.assert_array_equal(logits, np.zeros((2, 7)))
  model = vit.Model(7, **TINY, pool_type="gap", init_head_bias=-10)
  logits, _ = model.apply({"params": _init(model)}, img)
  np.testing.assert_array_equal(logits, np.full((2, 7), -10.0))
  model = vit.Model(7, **TINY, pool_type="gap", head_zeroinit=False)
  assert np.abs(_init(model)["head"]["kernel"]).max() > 0


def test_rep_size_int():
  model = vit.Model(3, **TINY, pool_type="gap", rep_size=12)
  params = _init(model)
  assert params["pre_logits"]["kernel"].shape == (32, 12)
  _, out = model.apply({"params": params}, _images())
  assert out["pre_logits"].shape == (2, 12)
  assert np.abs(out["pre_logits"]).max() < 1  # tanh


# ----------------------------------------------------------------------------
# Implementations that must agree.
# ----------------------------------------------------------------------------
def _loss_and_grads(model, params, img):
  """(loss, grads, (logits, out)) from one jitted function (one compile)."""
  def loss(p):
    logits, out = model.apply({"params": p}, img)
    return jnp.sum(jnp.sin(logits)), (logits, out["block01"])
  (l, aux), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return l, g, aux


_KW_MAP = dict(**TINY, pool_type="map")


@pytest.fixture(scope="module")
def plain_reference():
  """Params, loss, grads and outputs of the plain (no scan/remat) model."""
  plain = vit.Model(4, **_KW_MAP)
  params = _randomize(_init(plain))
  img = _images()
  return (params, img) + _loss_and_grads(plain, params, img)


def _assert_trees_close(a, b, **tol):
  for (n, x), (_, y) in zip(utils.tree_flatten_with_names(a)[0],
                            utils.tree_flatten_with_names(b)[0]):
    np.testing.assert_allclose(y, x, err_msg=n, **tol)


@pytest.mark.parametrize("scan,remat", [
    (True, "none"), (False, "nothing_saveable"), (True, "nothing_saveable"),
    (False, "dots_with_no_batch_dims_saveable")])
def test_scan_and_remat_match_plain(plain_reference, scan, remat):
  params, img, l0, g0, (logits0, block0) = plain_reference
  other = vit.Model(4, **_KW_MAP, scan=scan, remat_policy=remat)
  other_params = common.pyloop_to_scan(params) if scan else params
  assert _shapes(other_params) == _shapes(_abstract(other))
  l1, g1, (logits1, block1) = _loss_and_grads(other, other_params, img)
  np.testing.assert_allclose(l1, l0, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(logits1, logits0, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(block1, block0, rtol=1e-5, atol=1e-5)
  _assert_trees_close(g0, common.scan_to_pyloop(g1) if scan else g1,
                      rtol=1e-4, atol=1e-5)


def test_attention_impls_agree(plain_reference):
  params, img, l0, g0, (logits0, _) = plain_reference  # attn_impl="auto".
  l1, g1, _ = _loss_and_grads(vit.Model(4, **_KW_MAP, attn_impl="einsum"),
                              params, img)
  np.testing.assert_allclose(l1, l0, rtol=1e-5, atol=1e-5)
  _assert_trees_close(g0, g1, rtol=1e-4, atol=1e-5)
  logits2, _ = vit.Model(4, **_KW_MAP, attn_impl="xla").apply(
      {"params": params}, img)
  np.testing.assert_allclose(logits2, logits0, rtol=1e-5, atol=1e-5)


def test_bfloat16_matmuls_close_to_float32():
  kw = dict(**TINY, pool_type="tok", rep_size=True)
  f32 = vit.Model(5, **kw)
  bf16 = vit.Model(5, **kw, dtype_mm="bfloat16")
  params = _randomize(_init(f32), scale=0.1)
  assert all(x.dtype == jnp.float32
             for x in jax.tree.leaves(_abstract(bf16)))
  img = _images()
  l32, out32 = jax.jit(f32.apply)({"params": params}, img)
  l16, out16 = jax.jit(bf16.apply)({"params": params}, img)
  assert out16["stem"].dtype == jnp.bfloat16
  assert l16.dtype == jnp.float32
  assert np.abs(np.asarray(l16) - np.asarray(l32)).max() < 1e-2
  assert np.abs(np.asarray(l16) - np.asarray(l32)).max() > 0  # really bf16
  # Gradients through the float32-logits einsum path with bf16 inputs.
  m = vit.Model(5, **kw, dtype_mm="bfloat16", attn_impl="einsum")
  _, grads, _ = _loss_and_grads(m, params, img)
  assert all(g.dtype == jnp.float32 and np.isfinite(g).all()
             for g in jax.tree.leaves(grads))
  # ...and they are the float32 gradients up to bf16 rounding (measured:
  # 0.7% relative error over the whole tree).
  _, grads32, _ = _loss_and_grads(vit.Model(5, **kw, attn_impl="einsum"),
                                  params, img)
  flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])
  err = np.linalg.norm(flat(grads) - flat(grads32)) / np.linalg.norm(
      flat(grads32))
  assert 0 < err < 0.03, err
  # A key bias shifts every attention logit of a query equally: softmax
  # ignores it, so its exact gradient is 0 (float32: rounding noise only).
  for i in range(TINY["depth"]):
    attn = grads32["Transformer"][f"encoderblock_{i}"][
        "MultiHeadDotProductAttention_0"]
    assert np.abs(attn["key"]["bias"]).max() < 1e-6
    assert np.abs(attn["query"]["bias"]).max() > 1e-3


def test_dropout_and_droppath_only_in_train():
  img = _images()
  for scan in (False, True):
    kw = dict(**TINY, pool_type="gap", scan=scan)
    noisy = vit.Model(3, **kw, dropout=0.3, droppath_rate=0.5)
    clean = vit.Model(3, **kw)
    params = _randomize(_init(clean))
    e1, _ = noisy.apply({"params": params}, img)
    e2, _ = noisy.apply({"params": params}, img, train=False)
    c, _ = clean.apply({"params": params}, img)
    np.testing.assert_array_equal(e1, e2)
    np.testing.assert_allclose(e1, c, atol=1e-6)
    train = jax.jit(lambda p, r: noisy.apply(  # pylint: disable=g-long-lambda
        {"params": p}, img, train=True, rngs={"dropout": r})[0])
    t1 = train(params, jax.random.PRNGKey(1))
    t1b = train(params, jax.random.PRNGKey(1))
    t2 = train(params, jax.random.PRNGKey(2))
    np.testing.assert_array_equal(t1, t1b)
    assert np.abs(np.asarray(t1) - np.asarray(c)).max() > 1e-3
    assert np.abs(np.asarray(t1) - np.asarray(t2)).max() > 1e-3


def test_droppath_schedule_is_linear_from_zero():
  # Rates go 0 -> droppath_rate: block 0 is never dropped, and with rate
  # 0.99 the last block drops almost every example's branches.
  img = _images(n=16)
  kw = dict(**TINY, pool_type="gap")
  model = vit.Model(None, **kw, droppath_rate=0.99)
  params = _randomize(_init(model))
  _, ev = model.apply({"params": params}, img)
  _, tr = model.apply({"params": params}, img, train=True,
                      rngs={"dropout": jax.random.PRNGKey(0)})
  np.testing.assert_allclose(tr["block00"], ev["block00"], atol=1e-6)
  unchanged = np.all(np.isclose(tr["block01"], tr["block00"], atol=1e-6),
                     axis=(1, 2))
  assert unchanged.sum() >= 14  # Both branches dropped: identity block.


# ----------------------------------------------------------------------------
# Errors a user can act on.
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("kw,needle", [
    (dict(variant="X/16"), "So400m, Ti"),
    (dict(variant="So400/14"), "Did you mean 'So400m'"),
    (dict(variant="B/sixteen"), "sixteen"),
    (dict(pool_type="cls"), "gap, map, none, tok"),
    (dict(pool_type="mapp"), "Did you mean 'map'"),
    (dict(posemb="sincos"), "sincos2d"),
    (dict(attn_impl="flash"), "cudnn"),
    (dict(remat_policy="nothing"), "nothing_saveable"),
    (dict(widht=32), "Did you mean 'width'"),
])
def test_bad_options_name_valid_choices(kw, needle):
  with pytest.raises(ValueError, match="Valid choices|sixteen") as e:
    vit.Model(10, **kw)
  assert needle in str(e.value)


def test_import_without_tensorflow():
  code = textwrap.dedent("""
      import sys
      sys.modules["tensorflow"] = None  # Any `import tensorflow` now fails.
      import big_vision.models.vit, big_vision.models.common
      import big_vision.checkpoint
      loaded = [m for m in sys.modules if m.startswith("tensorflow")
                and sys.modules[m] is not None]
      assert not loaded, loaded
      try:
        big_vision.checkpoint.load_params("gs://bucket/x.npz")
      except ImportError as e:
        assert "tensorflow" in str(e)
      print("OK")
  """)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  res = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, env=env, timeout=120, check=False)
  assert res.returncode == 0, res.stderr
  assert "OK" in res.stdout


# ----------------------------------------------------------------------------
# models.common helpers.
# ----------------------------------------------------------------------------
def test_resample_posemb_identity_and_constant():
  rng = np.random.RandomState(0)
  pe = rng.randn(1, 16, 8).astype(np.float32)
  np.testing.assert_array_equal(common.resample_posemb(pe, (4, 4)), pe)
  const = np.full((1, 16, 8), 0.7, np.float32)
  for grid in ((7, 7), (3, 3), (2, 6)):
    got = common.resample_posemb(const, grid)
    assert got.shape == (1, grid[0] * grid[1], 8)
    np.testing.assert_allclose(got, 0.7, atol=1e-6)
  # Upsampling 2x keeps the mean of a smooth grid and the prefix slot as is.
  with_cls = np.concatenate([np.full((1, 1, 8), 5.0), pe], 1)
  got = common.resample_posemb(with_cls, 64, num_prefix_tokens=1)
  assert got.shape == (1, 65, 8)
  np.testing.assert_array_equal(got[:, 0], with_cls[:, 0])
  np.testing.assert_allclose(got[:, 1:].mean(1), pe.mean(1), atol=1e-5)
  with pytest.raises(ValueError, match="square"):
    common.resample_posemb(rng.randn(1, 15, 8), (4, 4))


def test_resample_posemb_bilinear_midpoints():
  # Upsampling a 2x2 grid to 4x4 with half-pixel centres: interior samples
  # sit at 1/4 and 3/4 between the source centres.
  pe = np.array([[0., 1.], [2., 3.]], np.float32).reshape(1, 4, 1)
  got = common.resample_posemb(pe, (4, 4)).reshape(4, 4)
  # (0.25, 0.25): .75*.75*0 + .75*.25*1 + .25*.75*2 + .25*.25*3 = 0.75.
  np.testing.assert_allclose(got[1, 1], 0.75, atol=1e-6)
  np.testing.assert_allclose(got[0, 0], 0.0, atol=1e-6)  # Edge clamps.
  np.testing.assert_allclose(got[3, 3], 3.0, atol=1e-6)


def test_scan_conversion_roundtrip_and_abstract_leaves():
  model = vit.Model(3, **TINY, pool_type="tok")
  params = _randomize(_init(model))
  scanned = common.pyloop_to_scan(params)
  assert common.is_scanned(scanned) and not common.is_scanned(params)
  k = scanned["Transformer"]["encoderblock"]["MlpBlock_0"]["Dense_0"]["kernel"]
  np.testing.assert_array_equal(
      k[1], params["Transformer"]["encoderblock_1"]["MlpBlock_0"]["Dense_0"][
          "kernel"])
  back = common.scan_to_pyloop(scanned)
  jax.tree.map(np.testing.assert_array_equal, back, jax.device_get(params))
  abstract = _abstract(model)
  assert _shapes(common.pyloop_to_scan(abstract)) == _shapes(scanned)
  assert _shapes(common.scan_to_pyloop(common.pyloop_to_scan(abstract))) == (
      _shapes(params))


def test_merge_params_reports_by_name():
  init = {"a": {"kernel": np.zeros((2, 3))}, "b": np.zeros(4),
          "head": {"kernel": np.ones((3, 5))}}
  good = {"a": {"kernel": np.ones((2, 3))}, "b": np.arange(4.0),
          "head": {"kernel": np.ones((3, 9))}}
  merged = common.merge_params(good, init, dont_load=("head/.*",))
  np.testing.assert_array_equal(merged["a"]["kernel"], np.ones((2, 3)))
  np.testing.assert_array_equal(merged["head"]["kernel"], np.ones((3, 5)))
  bad = {"a": {"kernel": np.ones((2, 4))}, "extra": np.zeros(1),
         "head": {"kernel": np.ones((3, 5))}}
  with pytest.raises(ValueError) as e:
    common.merge_params(bad, init)
  msg = str(e.value)
  assert "a/kernel: (2, 4) vs (2, 3)" in msg
  assert "b: (4,)" in msg  # Missing from the checkpoint.
  assert "extra: (1,)" in msg  # Unexpected in the checkpoint.
  assert "dont_load" in msg
  with pytest.raises(ValueError, match="regex"):
    common.merge_params(good, init, dont_load=("head/(",))


# ----------------------------------------------------------------------------
# vit.load
# ----------------------------------------------------------------------------
def _tiny(num_classes=5, **kw):
  return vit.Model(num_classes, **{**TINY, "pool_type": "tok",
                                   "rep_size": True, **kw})


def test_load_roundtrip_through_npz(tmp_path):
  model = _tiny()
  params = _randomize(_init(model))
  path = str(tmp_path / "vit.npz")
  checkpoint.save_params(params, path)
  fresh = _init(model, seed=5)
  loaded = vit.load(fresh, path, {})
  jax.tree.map(np.testing.assert_array_equal, loaded, jax.device_get(params))
  img = _images()
  np.testing.assert_array_equal(model.apply({"params": loaded}, img)[0],
                                model.apply({"params": params}, img)[0])


def test_load_new_head_with_dont_load(caplog):
  src = _randomize(_init(_tiny(5)))
  target_model = _tiny(11)
  init = _init(target_model, seed=3)
  with pytest.raises(ValueError, match=r"head/kernel: \(32, 5\) vs \(32, 11\)"):
    vit.load(init, src, {})
  caplog.set_level(logging.INFO)
  loaded = vit.load(init, src, {}, dont_load=("head/.*",))
  np.testing.assert_array_equal(loaded["head"]["kernel"],
                                init["head"]["kernel"])
  np.testing.assert_array_equal(loaded["embedding"]["kernel"],
                                src["embedding"]["kernel"])
  assert "head/kernel" in caplog.text and "head/bias" in caplog.text


def test_load_vit_jax_layout_matches_reference():
  model = _tiny()
  params = jax.device_get(_randomize(_init(model)))
  vj = vit.to_vit_jax(params)
  # Make the class token's posemb slot non-trivial, keeping the function:
  # vit_jax computes token0 = cls + slot, which must equal our cls.
  slot = np.random.RandomState(0).randn(1, 1, 32).astype(np.float32)
  pe = vj["Transformer"]["posembed_input"]["pos_embedding"]
  pe[:, :1] = slot
  vj["cls"] = params["cls"] - slot
  img = _images()
  ref = _np_vit(vj, img, patch=8, vit_jax_layout=True)
  loaded = vit.load(_init(model, seed=4), vj, {})
  logits, _ = model.apply({"params": loaded}, img)
  np.testing.assert_allclose(logits, ref, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(loaded["cls"], params["cls"], atol=1e-6)
  # Exact round trip through the vit_jax layout when the slot is zero.
  again = vit.load(_init(model), vit.to_vit_jax(params), {})
  jax.tree.map(np.testing.assert_array_equal, again, params)


def test_load_across_scan_layouts():
  loop_model, scan_model = _tiny(), _tiny(scan=True)
  loop_params = jax.device_get(_randomize(_init(loop_model)))
  scan_init = _init(scan_model)
  into_scan = vit.load(scan_init, loop_params, {})
  assert common.is_scanned(into_scan)
  img = _images()
  np.testing.assert_allclose(scan_model.apply({"params": into_scan}, img)[0],
                             loop_model.apply({"params": loop_params}, img)[0],
                             atol=1e-5)
  back = vit.load(_init(loop_model), into_scan, {})
  jax.tree.map(np.testing.assert_array_equal, back, loop_params)
  # Without init params: convert per model_cfg.
  assert common.is_scanned(vit.load(None, loop_params, {"scan": True}))


def test_load_resamples_posemb_to_new_resolution():
  model = _tiny()
  params = jax.device_get(_randomize(_init(model)))
  init48 = _init(model, res=48)  # 6x6 grid.
  loaded = vit.load(init48, params, {})
  assert loaded["pos_embedding"].shape == (1, 36, 32)
  np.testing.assert_allclose(
      loaded["pos_embedding"],
      common.resample_posemb(params["pos_embedding"], (6, 6)), atol=0)
  logits, _ = model.apply({"params": loaded}, _images(res=48))
  assert logits.shape == (2, 5)
  # dont_load on the posemb keeps the fresh one, no resampling.
  kept = vit.load(init48, params, {}, dont_load=("pos_embedding",))
  np.testing.assert_array_equal(kept["pos_embedding"], init48["pos_embedding"])


def test_load_wrong_model_names_everything():
  src = jax.device_get(_randomize(_init(_tiny())))
  wider = vit.Model(5, **{**TINY, "width": 48}, pool_type="tok", rep_size=True)
  with pytest.raises(ValueError) as e:
    vit.load(_init(wider), src, {})
  msg = str(e.value)
  assert "embedding/kernel: (8, 8, 3, 32) vs (8, 8, 3, 48)" in msg
  assert "pos_embedding" in msg
  gap = _tiny(pool_type="gap")
  with pytest.raises(ValueError, match=r"not in the model[^\n]*\n  cls"):
    vit.load(_init(gap), src, {})
