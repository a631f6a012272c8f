"""`objectives.mixup` against its formula, and lambda's distribution.

mixup (Zhang et al. 2018) as big_vision does it: one lambda per batch,
lambda ~ Beta(p, p) folded to max(lambda, 1 - lambda) >= 0.5, and every
example mixed with its roll-1 neighbour (example i with example i - 1),
images and labels with the same lambda.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate
from scipy import stats

from big_vision import objectives


def _batch(seed, n=6, classes=5):
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(n, 4, 4, 3)).astype(np.float32)
  y = rng.permutation(n) % classes
  return images, np.eye(classes, dtype=np.float32)[y], y


@pytest.mark.parametrize("p,seed", [(0.2, 0), (1.0, 1), (5.0, 2)])
def test_mixup_formula_against_numpy(p, seed):
  images, labels, y = _batch(seed)
  rng = jax.random.PRNGKey(seed)
  got_img, got_lab = objectives.mixup(rng, jnp.asarray(images),
                                      jnp.asarray(labels), p)
  # The same draw, folded by hand.
  lam = float(jax.random.beta(rng, p, p))
  lam = max(lam, 1.0 - lam)
  assert 0.5 <= lam <= 1.0
  prev = np.arange(len(y)) - 1  # Example i is mixed with example i - 1.
  want_img = lam * images + (1 - lam) * images[prev]
  want_lab = lam * labels + (1 - lam) * labels[prev]
  np.testing.assert_allclose(got_img, want_img, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(got_lab, want_lab, rtol=1e-6, atol=1e-6)
  # Read back from the outputs alone: the labels' weight on the own class is
  # lambda, and it is the images' weight too (same lambda for both).
  own = np.asarray(got_lab)[np.arange(len(y)), y]
  mixed = y != y[prev]
  np.testing.assert_allclose(own[mixed], lam, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(got_lab).sum(1), 1.0, rtol=1e-6)
  d = images - images[prev]
  lam_img = ((np.asarray(got_img) - images[prev]) * d).sum() / (d * d).sum()
  assert lam_img == pytest.approx(lam, rel=1e-5)


def test_mixup_lambda_is_one_per_batch_and_changes_with_rng():
  images, labels, _ = _batch(3, n=8)
  lams = set()
  for seed in range(5):
    out, _ = objectives.mixup(jax.random.PRNGKey(seed), images, labels, 0.5)
    d = images - np.roll(images, 1, 0)
    # One lambda: out - roll = lam * d for every element of every example.
    lam = (np.asarray(out) - np.roll(images, 1, 0)) / d
    np.testing.assert_allclose(lam, lam.flat[0], rtol=1e-3)
    lams.add(round(float(lam.flat[0]), 5))
  assert len(lams) == 5


def _folded_beta_mean(p):
  """E[max(L, 1 - L)], L ~ Beta(p, p): 1/2 + E|L - 1/2|, and the mean absolute
  deviation of Beta(a, b) is 2 a^a b^b / (B(a, b) (a + b)^(a + b + 1)), which
  for a = b = p is 1 / (p 4^p B(p, p))."""
  log_b = 2 * math.lgamma(p) - math.lgamma(2 * p)
  return 0.5 + math.exp(-math.log(p) - p * math.log(4) - log_b)


@pytest.mark.parametrize("p", [0.1, 0.2, 1.0, 2.0])
def test_folded_beta_mean_closed_form(p):
  # The closed form above, against numerical integration of the density.
  num, _ = integrate.quad(lambda t: max(t, 1 - t) * stats.beta.pdf(t, p, p),
                          0, 1, points=[0.5], limit=200)
  assert _folded_beta_mean(p) == pytest.approx(num, rel=1e-6)
  if p == 1.0:
    assert _folded_beta_mean(p) == pytest.approx(0.75)  # U(1/2, 1).


@pytest.mark.parametrize("p", [0.2, 2.0])
def test_mixup_lambda_distribution_over_seeds(p):
  n = 4000
  images = jnp.array([[1.0], [0.0]])  # out[0] = lam * 1 + (1 - lam) * 0.
  labels = jnp.eye(2)
  keys = jax.random.split(jax.random.PRNGKey(0), n)
  lam = np.asarray(jax.jit(jax.vmap(
      lambda k: objectives.mixup(k, images, labels, p)[0][0, 0]))(keys),
                   np.float64)
  assert lam.min() >= 0.5 and lam.max() <= 1.0
  # Mean within 4 standard errors of the folded Beta's closed-form mean.
  assert abs(lam.mean() - _folded_beta_mean(p)) < 4 * lam.std() / math.sqrt(n)
  # And the whole distribution: P(lam <= t) = 2 F(t) - 1 on [1/2, 1], on a
  # grid (KS-style bound, 0.1% level). Not a KS test over all of [1/2, 1]:
  # draws within float32 eps of 1 round to 1.0 (3.8% of them at p = 0.2).
  grid = np.linspace(0.52, 0.999, 25)
  ecdf = (lam[:, None] <= grid).mean(0)
  cdf = 2 * stats.beta.cdf(grid, p, p) - 1
  assert np.abs(ecdf - cdf).max() < 1.95 / math.sqrt(n), np.abs(ecdf - cdf)
  # An unfolded Beta(p, p), or a fold to <= 0.5, is far off.
  assert abs(lam.mean() - 0.5) > 0.1
