"""NaFlex: the pp op `naflex` and the model `naflex_vit` (SigLIP 2).

The pp keeps the aspect ratio and never exceeds the sequence length;
padding changes nothing; the per-image position-embedding resize equals a
numpy bilinear reference; one model runs at several sequence lengths; the
attention mask is honoured by every attention implementation and by scan.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from big_vision.models import naflex_vit
from big_vision.models import vit
from big_vision.pp import builder
from big_vision.pp import ops_image

P = 4
TINY = dict(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=P,
            posemb_grid=4)


def _naflex(image, seq_len, patch=P):
  fn = builder.get_preprocess_fn(f"value_range(-1, 1)|naflex({seq_len}, {patch})")
  return fn({"image": tf.constant(image)})["image"].numpy()


def _image(h, w, seed=0):
  return np.random.RandomState(seed).randint(0, 256, (h, w, 3)).astype(np.uint8)


@pytest.mark.parametrize("hw", [(32, 32), (12, 30), (40, 16), (7, 100),
                                (100, 7), (3, 3), (64, 20)])
@pytest.mark.parametrize("seq_len", [1, 7, 16, 64])
def test_grid_keeps_aspect_and_fits(hw, seq_len):
  h, w = hw
  rows, cols = (int(v) for v in ops_image.naflex_grid(h, w, P, seq_len))
  assert 1 <= rows and 1 <= cols and rows * cols <= seq_len
  # Aspect ratio: neither side can grow by one patch without either
  # exceeding seq_len or moving further from the image's aspect ratio
  # than rounding down allows (each side within one patch of exact).
  exact = np.sqrt(seq_len / (h * w))
  if rows > 1 and cols > 1:
    assert rows <= h * exact < rows + 1
    assert cols <= w * exact < cols + 1
  assert (rows + 1) * cols > seq_len or rows + 1 > h * exact
  assert rows * (cols + 1) > seq_len or cols + 1 > w * exact


def test_pp_layout():
  img = _image(12, 30)
  out = _naflex(img, 16)
  rows, cols = (int(v) for v in ops_image.naflex_grid(12, 30, P, 16))
  assert (rows, cols) == (2, 6)
  assert out.shape == (16, P * P * 3 + 3)
  n = rows * cols
  np.testing.assert_array_equal(out[:n, -1], 1)
  np.testing.assert_array_equal(out[n:], 0)
  np.testing.assert_array_equal(out[:n, -3], np.arange(n) // cols)
  np.testing.assert_array_equal(out[:n, -2], np.arange(n) % cols)
  # Patch k holds the pixels of the resized image's block (row, col).
  resized = tf.image.resize(tf.constant(img, tf.float32) / 127.5 - 1,
                            (rows * P, cols * P), antialias=True).numpy()
  k = 7
  r, c = k // cols, k % cols
  np.testing.assert_allclose(
      out[k, :-3].reshape(P, P, 3),
      resized[r * P:(r + 1) * P, c * P:(c + 1) * P], atol=1e-5)


def _np_bilinear(grid, out_h, out_w):
  """Reference bilinear resize: half-pixel centres, edges clamped."""
  gh, gw, _ = grid.shape

  def coords(n_out, n_in):
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(int)
    return lo, np.minimum(lo + 1, n_in - 1), src - lo
  y0, y1, wy = coords(out_h, gh)
  x0, x1, wx = coords(out_w, gw)
  out = np.zeros((out_h, out_w, grid.shape[-1]))
  for i in range(out_h):
    for j in range(out_w):
      out[i, j] = ((1 - wy[i]) * (1 - wx[j]) * grid[y0[i], x0[j]]
                   + (1 - wy[i]) * wx[j] * grid[y0[i], x1[j]]
                   + wy[i] * (1 - wx[j]) * grid[y1[i], x0[j]]
                   + wy[i] * wx[j] * grid[y1[i], x1[j]])
  return out


@pytest.mark.parametrize("out_hw", [(2, 7), (4, 4), (9, 3), (1, 1), (6, 8)])
def test_posemb_resize_matches_numpy(out_hw):
  grid = np.random.RandomState(0).normal(size=(4, 5, 3)).astype(np.float32)
  h, w = out_hw
  rows, cols = np.divmod(np.arange(h * w), w)
  got = naflex_vit.resize_posemb_at(
      jnp.asarray(grid), jnp.asarray(rows)[None], jnp.asarray(cols)[None],
      jnp.asarray([h]), jnp.asarray([w]))[0]
  want = _np_bilinear(grid, h, w).reshape(h * w, -1)
  np.testing.assert_allclose(got, want, atol=1e-5)
  if h >= 4 and w >= 5:  # Upsampling: also jax.image.resize's bilinear.
    ref = jax.image.resize(grid, (h, w, 3), "bilinear").reshape(h * w, -1)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def _model(**kw):
  return naflex_vit.Model(num_classes=5, head_zeroinit=False,
                          **{**TINY, **kw})


def _batch(seq_len, shapes=((12, 30), (20, 8), (16, 16))):
  return np.stack([_naflex(_image(h, w, i), seq_len)
                   for i, (h, w) in enumerate(shapes)])


def _randomize(params, seed=1):
  rng = np.random.RandomState(seed)
  return jax.tree.map(
      lambda x: jnp.asarray(rng.normal(size=x.shape) * 0.3, x.dtype), params)


@pytest.mark.parametrize("pool_type", ["map", "gap"])
def test_padding_changes_nothing(pool_type):
  model = _model(pool_type=pool_type)
  apply = jax.jit(model.apply)  # Op by op, each test compiled ~300 ops.
  x16 = _batch(16)
  params = _randomize(
      jax.jit(model.init)(jax.random.PRNGKey(0), x16[:1])["params"])
  logits, out = apply({"params": params}, x16)
  # The same patches, padded to 40 with zeros, or with garbage in padding.
  x40 = np.concatenate([x16, np.zeros((3, 24, x16.shape[-1]))], 1)
  garbage = np.random.RandomState(3).normal(size=x40.shape)
  garbage[..., -1] = 0
  x40g = np.where(x40[..., -1:] > 0, x40, garbage)
  for x in (x40, x40g):
    logits2, out2 = apply({"params": params}, x)
    np.testing.assert_allclose(logits2, logits, atol=1e-5)
    m = out["mask"]
    np.testing.assert_allclose(np.asarray(out2["encoded"])[:, :16][m],
                               np.asarray(out["encoded"])[m], atol=1e-5)
  assert np.std(np.asarray(logits)) > 1e-3


def test_several_sequence_lengths_and_vit_params():
  model = _model()
  apply = jax.jit(model.apply)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), _batch(16)[:1])["params"]
  # The parameters are a ViT's of the same size (names and shapes).
  vparams = vit.Model(num_classes=5, width=32, depth=2, mlp_dim=64,
                      num_heads=2, patch_size=P, pool_type="map").init(
                          jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
  shape = lambda t: jax.tree.map(lambda x: x.shape, t)
  assert shape(params) == shape(vparams["params"])
  for seq_len in (9, 16, 64):
    logits, out = apply({"params": params}, _batch(seq_len))
    assert logits.shape == (3, 5) and out["encoded"].shape[1] == seq_len
    assert np.all(np.isfinite(logits))


def test_square_image_matches_conv_vit():
  """A square image at a full grid equal to posemb_grid: NaFlex == ViT."""
  model = _model(pool_type="gap")
  img = _image(16, 16, 5)
  x = _naflex(img, 16)[None]
  params = _randomize(model.init(jax.random.PRNGKey(0), x)["params"])
  logits, _ = model.apply({"params": params}, x)
  vmodel = vit.Model(num_classes=5, width=32, depth=2, mlp_dim=64,
                     num_heads=2, patch_size=P, pool_type="gap")
  pix = tf.image.resize(tf.constant(img, tf.float32) / 127.5 - 1, (16, 16),
                        antialias=True).numpy()[None]
  vlogits, _ = vmodel.apply({"params": params}, pix)
  np.testing.assert_allclose(logits, vlogits, atol=1e-4)


@pytest.mark.parametrize("kw", [dict(attn_impl="einsum"),
                                dict(attn_impl="xla"),
                                dict(scan=True, attn_impl="einsum")])
def test_mask_in_every_attention_path(kw):
  x = _batch(16)
  ref_model = _model(attn_impl="einsum")
  params = _randomize(ref_model.init(jax.random.PRNGKey(0), x[:1])["params"])
  want, _ = ref_model.apply({"params": params}, x)
  model = _model(**kw)
  if kw.get("scan"):
    from big_vision.models import common  # pylint: disable=g-import-not-at-top
    p = common.match_scan_layout(params, None, {"scan": True},
                                 "Transformer/encoderblock")
    p = jax.tree.map(jnp.asarray, p)
  else:
    p = params
  x40 = np.concatenate([x, np.zeros((3, 24, x.shape[-1]))], 1)
  got, _ = model.apply({"params": p}, x40)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_bad_input_names_the_layout():
  model = _model()
  with pytest.raises(ValueError, match="naflex"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
