"""mixup / CutMix / label smoothing (big_vision/batch_aug.py) in closed form."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vision import batch_aug
from big_vision import objectives


def _batch(b=6, h=12, w=10, k=5, seed=0):
  rng = np.random.default_rng(seed)
  images = jnp.asarray(rng.normal(size=(b, h, w, 3)), jnp.float32)
  labels = jax.nn.one_hot(jnp.arange(b) % k, k)
  return images, labels


def _drawn_lambda(rng, alpha):
  return float(jax.random.beta(jax.random.split(rng, 3)[0], alpha, alpha))


@pytest.mark.parametrize("seed", range(12))
def test_cutmix_box_area_and_label_weights_are_exact(seed):
  images, labels = _batch()
  _, h, w, _ = images.shape
  rng = jax.random.PRNGKey(seed)
  alpha = 1.0
  box = [int(v) for v in batch_aug.cutmix_box(rng, h, w, alpha)]
  y0, y1, x0, x1 = box
  mask = np.zeros((h, w), bool)
  mask[y0:y1, x0:x1] = True
  np.testing.assert_array_equal(batch_aug.box_mask(box, h, w), mask)
  area = mask.mean()
  # Unclipped, the box is floor(H sqrt(1-lam)) x floor(W sqrt(1-lam)):
  # its area is 1 - lambda up to the flooring of each side.
  lam = _drawn_lambda(rng, alpha)
  r = np.sqrt(1 - lam)
  cut_h, cut_w = int(np.floor(h * r)), int(np.floor(w * r))
  if 0 < y0 and y1 < h and 0 < x0 and x1 < w:
    assert (y1 - y0, x1 - x0) == (cut_h, cut_w)
  assert area <= (1 - lam) + 1e-6
  assert y1 - y0 <= cut_h and x1 - x0 <= cut_w

  out_x, out_y = jax.jit(batch_aug.cutmix, static_argnums=3)(
      rng, images, labels, alpha)
  neighbour = np.roll(np.asarray(images), 1, axis=0)
  want = np.where(mask[None, :, :, None], neighbour, np.asarray(images))
  np.testing.assert_array_equal(out_x, want)
  # Label weights are exactly the pasted fraction (not the drawn lambda).
  want_y = (1 - area) * np.asarray(labels) + area * np.roll(labels, 1, 0)
  np.testing.assert_allclose(out_y, want_y, atol=1e-7)
  np.testing.assert_allclose(np.asarray(out_y).sum(1), 1.0, atol=1e-6)


def test_cutmix_lambda_distribution_matches_beta():
  # Over many draws the mean pasted area is E[1 - lam] minus the flooring
  # loss; on a big image flooring is small, and Beta(1, 1) gives 1/2 minus
  # the clipping at borders: check the unclipped sizes instead.
  h = w = 1000
  sides = []
  for s in range(200):
    y0, y1, x0, x1 = batch_aug.cutmix_box(jax.random.PRNGKey(s), h, w, 1.0)
    lam = _drawn_lambda(jax.random.PRNGKey(s), 1.0)
    cut = int(np.floor(h * np.sqrt(1 - lam)))
    assert int(y1 - y0) <= cut and int(x1 - x0) <= cut
    sides.append(cut / h)
  # E[sqrt(1 - lam)] for lam ~ U(0, 1) is 2/3.
  assert np.mean(sides) == pytest.approx(2 / 3, abs=0.05)


def test_mixup_is_the_objectives_mixup_bit_for_bit():
  images, labels = _batch()
  rng = jax.random.PRNGKey(3)
  a = batch_aug.mixup(rng, images, labels, 0.2)
  b = objectives.mixup(rng, images, labels, 0.2)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  # And mix_or_cut with CutMix off is exactly it (same draw, no split).
  c = batch_aug.mix_or_cut(rng, images, labels, mixup_p=0.2)
  for x, y in zip(a, c):
    np.testing.assert_array_equal(x, y)


def test_mixup_closed_form():
  images, labels = _batch()
  rng = jax.random.PRNGKey(4)
  out_x, out_y = batch_aug.mixup(rng, images, labels, 0.4)
  lam = float(jax.random.beta(rng, 0.4, 0.4))
  lam = max(lam, 1 - lam)
  np.testing.assert_allclose(
      out_x, lam * images + (1 - lam) * np.roll(images, 1, 0), atol=1e-6)
  np.testing.assert_allclose(
      out_y, lam * labels + (1 - lam) * np.roll(labels, 1, 0), atol=1e-6)
  assert lam >= 0.5


def test_mix_or_cut_switches_per_batch_with_switch_prob():
  images, labels = _batch()
  keys = jax.random.split(jax.random.PRNGKey(0), 200)
  def run(p, keys):
    return jax.jit(jax.vmap(lambda r: batch_aug.mix_or_cut(
        r, images, labels, mixup_p=1.0, cutmix_alpha=1.0,
        switch_prob=p)))(keys)
  def is_cut(out_x):
    # CutMix leaves every pixel equal to its own or its neighbour's.
    x = np.asarray(images)[None]
    same = np.isclose(out_x, x) | np.isclose(out_x, np.roll(x, 1, 1))
    return same.all(axis=(1, 2, 3, 4))
  out_x, out_y = run(0.3, keys)
  cut = is_cut(np.asarray(out_x))
  # Binomial(200, 0.3): std 0.032.
  assert abs(cut.mean() - 0.3) < 0.1, cut.mean()
  # The branch taken is the one the documented coin selects, and its output
  # is that branch's function of the other half of the key.
  cutmix = jax.jit(lambda r: batch_aug.cutmix(r, images, labels, 1.0))
  mixup = jax.jit(lambda r: batch_aug.mixup(r, images, labels, 1.0))
  for i in range(10):
    rng_switch, rng_aug = jax.random.split(keys[i])
    coin = float(jax.random.uniform(rng_switch)) < 0.3
    assert coin == cut[i]
    want = cutmix(rng_aug) if coin else mixup(rng_aug)
    np.testing.assert_allclose(out_x[i], want[0], atol=1e-6)
    np.testing.assert_allclose(out_y[i], want[1], atol=1e-6)


def test_mix_or_cut_off_and_bad_arguments():
  images, labels = _batch()
  x, y = batch_aug.mix_or_cut(jax.random.PRNGKey(0), images, labels)
  assert x is images and y is labels
  with pytest.raises(ValueError, match="switch_prob"):
    batch_aug.mix_or_cut(jax.random.PRNGKey(0), images, labels, mixup_p=0.2,
                         cutmix_alpha=1.0, switch_prob=1.5)
  with pytest.raises(ValueError, match=">= 0"):
    batch_aug.mix_or_cut(jax.random.PRNGKey(0), images, labels,
                         cutmix_alpha=-1.0)
  with pytest.raises(ValueError, match="eps"):
    batch_aug.smooth_labels(labels, 1.0)


def test_smooth_labels_closed_form_and_commutes_with_mixing():
  _, labels = _batch(k=5)
  eps, k = 0.1, 5
  s = np.asarray(batch_aug.smooth_labels(labels, eps))
  on = np.asarray(labels) == 1
  np.testing.assert_allclose(s[on], 1 - eps + eps / k, rtol=1e-6)
  np.testing.assert_allclose(s[~on], eps / k, rtol=1e-6)
  np.testing.assert_allclose(s.sum(1), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(batch_aug.smooth_labels(labels, 0.0), labels)
  images, _ = _batch(k=5)
  rng = jax.random.PRNGKey(7)
  for aug in (lambda y: batch_aug.cutmix(rng, images, y, 1.0)[1],
              lambda y: batch_aug.mixup(rng, images, y, 0.5)[1]):
    np.testing.assert_allclose(aug(batch_aug.smooth_labels(labels, eps)),
                               batch_aug.smooth_labels(aug(labels), eps),
                               atol=1e-6)


# ----------------------------------------------------------------------------
# Through the classification objective, as configs switch them on.
# ----------------------------------------------------------------------------
def test_objective_prepare_smooths_then_cuts_like_batch_aug():
  import ml_collections  # pylint: disable=g-import-not-at-top
  from big_vision import objectives  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(dict(
      loss="softmax_xent", label_smoothing=0.1,
      mixup=dict(p=0.0, cutmix_alpha=1.0)))
  obj = objectives.make(config, model=None)
  rng = jax.random.PRNGKey(3)
  images = jax.random.normal(jax.random.PRNGKey(0), (8, 6, 6, 3))
  labels = jax.nn.one_hot(jnp.arange(8) % 5, 5)
  out = obj.prepare({"image": images, "labels": labels}, rng)
  want_x, want_y = batch_aug.cutmix(
      rng, images, batch_aug.smooth_labels(labels, 0.1), 1.0)
  np.testing.assert_array_equal(out["image"], want_x)
  np.testing.assert_allclose(out["labels"], want_y, rtol=1e-6)
  np.testing.assert_allclose(out["labels"].sum(-1), 1.0, rtol=1e-6)
  assert float(out["labels"].min()) >= 0.1 / 5 - 1e-7  # Smoothing floor.


def test_no_batch_augmentation_means_no_prepare_step():
  import ml_collections  # pylint: disable=g-import-not-at-top
  from big_vision import objectives  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(dict(loss="softmax_xent"))
  assert objectives.make(config, model=None).prepare is None
