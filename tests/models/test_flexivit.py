"""FlexiViT: PI-resize, posemb resize, patch size per step, loading, config."""
import importlib
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from big_vision import checkpoint
from big_vision import objectives
from big_vision.models import common
from big_vision.models import vit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _np_linear_matrix(old: int, new: int) -> np.ndarray:
  """1-D linear interpolation [new, old], half-pixel centres, edges clamped
  (bilinear image resize, per axis, when upsampling)."""
  m = np.zeros((new, old))
  for i in range(new):
    src = (i + 0.5) * old / new - 0.5
    src = min(max(src, 0.0), old - 1.0)
    lo = int(np.floor(src))
    hi = min(lo + 1, old - 1)
    frac = src - lo
    m[i, lo] += 1 - frac
    m[i, hi] += frac
  return m


def _np_pi_resize(w, new):
  """The paper's formula: w_new = pinv(B^T) w, B the (bilinear) resize of
  flattened [h, w] patches; numpy, float64."""
  (h, wd), rest = w.shape[:2], w.shape[2:]
  b = np.kron(_np_linear_matrix(h, new[0]), _np_linear_matrix(wd, new[1]))
  out = np.linalg.pinv(b.T) @ w.reshape(h * wd, -1)
  return out.reshape(tuple(new) + rest), b


@pytest.mark.parametrize("old,new", [((4, 4), (8, 8)), ((4, 4), (6, 6)),
                                     ((3, 5), (7, 8)), ((8, 8), (8, 8))])
def test_pi_resize_matches_numpy_and_preserves_tokens_when_upsampling(old,
                                                                      new):
  rng = np.random.default_rng(0)
  w = rng.normal(size=old + (3, 5)).astype(np.float32)
  want, b = _np_pi_resize(w.astype(np.float64), new)
  # Our resize is the bilinear one of the formula.
  np.testing.assert_allclose(vit.resize_matrix(old, new), b, atol=1e-6)
  got = np.asarray(vit.pi_resize(jnp.asarray(w), new))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  # Defining property: <x, w> == <resize(x), PI-resize(w)> for every patch x.
  x = rng.normal(size=(10,) + old + (3,)).astype(np.float32)
  xr = jax.vmap(lambda p: vit.resize_image(p, new))(jnp.asarray(x))
  tokens = np.einsum("nhwc,hwcd->nd", x, w)
  tokens_resized = np.einsum("nhwc,hwcd->nd", np.asarray(xr), got)
  np.testing.assert_allclose(tokens_resized, tokens, rtol=1e-4, atol=1e-4)


def test_pi_resize_down_is_the_least_squares_solution():
  rng = np.random.default_rng(1)
  w = rng.normal(size=(8, 8, 3, 4))
  got = np.asarray(vit.pi_resize(jnp.asarray(w, jnp.float32), (5, 5)),
                   np.float64).reshape(25, -1)
  b = vit.resize_matrix((8, 8), (5, 5))  # [25, 64]
  # Normal equations of min |B^T v - w|: B (B^T v - w) = 0.
  resid = b @ (b.T @ got - w.reshape(64, -1))
  assert np.abs(resid).max() < 1e-4


def test_posemb_resize_in_graph_matches_checkpoint_resampling():
  rng = np.random.default_rng(2)
  pe = rng.normal(size=(1, 36, 8)).astype(np.float32)
  for new in ((4, 4), (3, 3), (8, 8), (6, 6)):
    got = vit.resize_posemb_grid(jnp.asarray(pe), (6, 6), new)
    want = common.resample_posemb(pe, new)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  const = np.ones((1, 9, 4), np.float32)
  np.testing.assert_allclose(vit.resize_posemb_grid(const, (3, 3), (5, 5)),
                             1.0, rtol=1e-6)


FLEXI = dict(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=(8, 8),
             pool_type="gap", flexi_base_patch=(8, 8),
             flexi_posemb_grid=(6, 6))


def _flexi_params():
  model = vit.Model(num_classes=10, **FLEXI)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 24, 24, 3)))
  return model, jax.device_get(params["params"])


@pytest.mark.parametrize("p", [4, 6, 8, 12])
def test_one_checkpoint_serves_every_patch_size(tmp_path, p):
  """A plain ViT at patch p, loaded from the FlexiViT checkpoint (by `load`
  and by tools/flexi_resize.py), computes what the FlexiViT computes at p."""
  model, params = _flexi_params()
  path = str(tmp_path / "flexi.npz")
  checkpoint.save_params(params, path)
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 24, 24, 3))
  flexi_logits, _ = model.apply({"params": params}, x, patch_size=p)
  plain_cfg = {k: v for k, v in FLEXI.items() if not k.startswith("flexi")}
  plain_cfg["patch_size"] = (p, p)
  plain = vit.Model(num_classes=10, **plain_cfg)
  init = jax.eval_shape(lambda: plain.init(jax.random.PRNGKey(0),
                                           x[:1])["params"])
  loaded = vit.load(init, path, plain_cfg)
  assert loaded["embedding"]["kernel"].shape == (p, p, 3, 32)
  logits, _ = plain.apply({"params": loaded}, x)
  np.testing.assert_allclose(logits, flexi_logits, rtol=1e-4, atol=1e-5)
  # The tool writes the same fixed-size checkpoint.
  out = str(tmp_path / f"p{p}.npz")
  argv = ["--checkpoint", path, "--patch_size", str(p), "--image_size", "24",
          "--out", out]
  if p == 6:  # The command line, once.
    subprocess.run([sys.executable, os.path.join(ROOT, "tools",
                                                 "flexi_resize.py"), *argv],
                   check=True, capture_output=True, timeout=300)
  else:
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
      importlib.import_module("flexi_resize").main(argv)
    finally:
      sys.path.pop(0)
  tool = checkpoint.load_params(out)
  np.testing.assert_allclose(tool["embedding"]["kernel"],
                             loaded["embedding"]["kernel"], atol=1e-6)
  np.testing.assert_allclose(tool["pos_embedding"], loaded["pos_embedding"],
                             atol=1e-6)
  # The FlexiViT checkpoint itself loads into any FlexiViT, unchanged.
  again = vit.load(jax.eval_shape(lambda: params), path, FLEXI)
  np.testing.assert_array_equal(again["embedding"]["kernel"],
                                params["embedding"]["kernel"])


def test_the_step_draws_one_patch_size_per_batch_from_the_set():
  config = ml_collections.ConfigDict(dict(
      num_classes=10, model=dict(FLEXI),
      flexivit=dict(patch_sizes=(4, 6, 8))))
  model, params = _flexi_params()
  objective = objectives.make(config, model)
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(4, 24, 24, 3)).astype(np.float32),
           "labels": np.eye(10, dtype=np.float32)[[1, 2, 3, 4]]}
  prepare, loss = jax.jit(objective.prepare), jax.jit(objective.loss)
  drawn = []
  for step in range(30):
    b = prepare(batch, jax.random.PRNGKey(step))
    idx = np.asarray(b[objectives.FLEXI_KEY])
    assert (idx == idx[0]).all()  # One size for the whole batch.
    drawn.append(int(idx[0]))
    if step < 3:  # The loss is the model's at that patch size.
      p = (4, 6, 8)[drawn[-1]]
      logits, _ = model.apply({"params": params}, batch["image"],
                              patch_size=p)
      want = -np.mean(np.sum(np.asarray(jax.nn.log_softmax(logits))
                             * batch["labels"], -1))
      np.testing.assert_allclose(loss(params, b, jax.random.PRNGKey(0)),
                                 want, rtol=1e-5)
  assert set(drawn) == {0, 1, 2}
  with pytest.raises(ValueError, match="flexi_base_patch"):
    objectives.make(ml_collections.ConfigDict(dict(
        model=dict(patch_size=4), flexivit=dict(patch_sizes=(4, 8)))), model)


def test_evaluator_pred_kw_reaches_the_model_and_shares_the_function():
  from big_vision.evaluators import common as ev_common  # pylint: disable=g-import-not-at-top
  model, params = _flexi_params()
  predict = lambda p, x, **kw: model.apply({"params": p}, x, **kw)
  p4 = ev_common.with_pred_kw(predict, dict(patch_size=4))
  assert ev_common.with_pred_kw(predict, dict(patch_size=4)) is p4
  assert ev_common.with_pred_kw(predict, None) is predict
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 24, 24, 3))
  np.testing.assert_allclose(
      ev_common.compiled_predict(p4)(params, x),
      model.apply({"params": params}, x, patch_size=4)[0], rtol=1e-5,
      atol=1e-6)
