"""The `knn` evaluator: its math against a brute-force loop, and end to end."""
import collections

import jax.numpy as jnp
import numpy as np
import pytest

from big_vision import sharding
from big_vision.evaluators import common as evaluators
from big_vision.evaluators import knn


def brute_force_knn(train_x, train_y, test_x, k, num_classes,
                    weighting="uniform", temperature=0.07):
  """One test example at a time, straight from the documented definitions."""
  preds = []
  for q in np.asarray(test_x, np.float64):
    sims = []
    for i, t in enumerate(np.asarray(train_x, np.float64)):
      nq, nt = np.linalg.norm(q), np.linalg.norm(t)
      s = 0.0 if nq == 0 or nt == 0 else float(q @ t / (nq * nt))
      sims.append((-s, i))
    nearest = sorted(sims)[:k]  # By decreasing similarity, then index.
    votes = collections.defaultdict(float)
    first_rank = {}
    for rank, (neg_s, i) in enumerate(nearest):
      c = int(train_y[i])
      votes[c] += 1.0 if weighting == "uniform" else np.exp(-neg_s /
                                                             temperature)
      first_rank.setdefault(c, rank)
    top = max(votes.values())
    tied = [c for c in votes if votes[c] == top]
    preds.append(min(tied, key=lambda c: first_rank[c]))
  del num_classes
  return np.array(preds)


@pytest.mark.parametrize("weighting", ["uniform", "exp"])
def test_matches_brute_force_on_random_features(weighting):
  rng = np.random.default_rng(0)
  n, m, d, c = 120, 40, 6, 4
  train_x = rng.normal(size=(n, d)).astype(np.float32)
  test_x = rng.normal(size=(m, d)).astype(np.float32)
  train_y = rng.integers(0, c, n)
  test_y = rng.integers(0, c, m)
  ks = (1, 2, 4, 7, 20)
  idx, sims = knn.nearest_neighbours(train_x, test_x, max(ks), chunk=16)
  for k in ks:
    want = brute_force_knn(train_x, train_y, test_x, k, c, weighting,
                           temperature=0.5)
    got = knn.vote(train_y[idx[:, :k]], sims[:, :k], c, weighting,
                   temperature=0.5)
    np.testing.assert_array_equal(got, want, err_msg=f"k={k}")
  accs = knn.knn_accuracies(train_x, train_y, test_x, test_y, c, ks=ks,
                            weighting=weighting, temperature=0.5)
  for k in ks:
    want = brute_force_knn(train_x, train_y, test_x, k, c, weighting, 0.5)
    assert accs[k] == pytest.approx(np.mean(want == test_y), abs=1e-12)


def test_neighbours_sorted_by_cosine_and_scale_invariant(monkeypatch):
  rng = np.random.default_rng(1)
  train_x = rng.normal(size=(50, 5))
  test_x = rng.normal(size=(9, 5))
  idx, sims = knn.nearest_neighbours(train_x, test_x, 50)
  # The memory cap (2 rows of 50 float32 per block) changes nothing but
  # the BLAS blocking (last-ulp differences of the similarities).
  monkeypatch.setattr(knn, "MAX_SIMILARITY_BYTES", 2 * 50 * 4)
  idx_c, sims_c = knn.nearest_neighbours(train_x, test_x, 50)
  np.testing.assert_array_equal(idx_c, idx)
  np.testing.assert_allclose(sims_c, sims, rtol=0, atol=1e-6)
  assert np.all(np.diff(sims, axis=1) <= 1e-7)
  want = (test_x / np.linalg.norm(test_x, axis=1, keepdims=True)) @ (
      train_x / np.linalg.norm(train_x, axis=1, keepdims=True)).T
  np.testing.assert_allclose(sims, np.take_along_axis(want, idx, 1),
                             atol=1e-6)
  # Cosine: rescaling rows changes nothing.
  idx2, _ = knn.nearest_neighbours(train_x * rng.uniform(0.1, 10, (50, 1)),
                                   test_x * 3.0, 5)
  np.testing.assert_array_equal(idx2, idx[:, :5])


def test_tie_rule_nearest_neighbour_class_wins():
  # Neighbours in order: class 3, class 1, class 1, class 3: a 2-2 tie at
  # k=4 goes to class 3 (it holds the nearest); k=3 is a plain majority.
  labels = np.array([[3, 1, 1, 3]])
  sims = np.array([[0.9, 0.8, 0.7, 0.6]])
  assert knn.vote(labels, sims, 5)[0] == 3
  assert knn.vote(labels[:, :3], sims[:, :3], 5)[0] == 1
  # k=2 with two labels is 1-NN.
  assert knn.vote(labels[:, :2], sims[:, :2], 5)[0] == 3
  # Distance weighting: exp(0.9/T) vs exp(0.8/T) + exp(0.7/T), T = 1: 1 wins.
  assert knn.vote(labels[:, :3], sims[:, :3], 5, "exp", 1.0)[0] == 1
  # ... but a sharp temperature lets the single nearest one win.
  assert knn.vote(labels[:, :3], sims[:, :3], 5, "exp", 0.01)[0] == 3


def test_equal_similarities_ordered_by_train_index():
  train_x = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
  idx, sims = knn.nearest_neighbours(train_x, np.array([[1.0, 0.0]]), 3)
  np.testing.assert_array_equal(idx, [[0, 1, 3]])
  np.testing.assert_allclose(sims, [[1.0, 1.0, 1.0]])


def test_separated_clusters_are_perfect_and_bad_k_fails():
  rng = np.random.default_rng(2)
  centres = np.eye(8)[:5] * 10.0
  train_y = np.repeat(np.arange(5), 20)
  test_y = np.repeat(np.arange(5), 7)
  train_x = centres[train_y] + rng.normal(size=(100, 8))
  test_x = centres[test_y] + rng.normal(size=(35, 8))
  accs = knn.knn_accuracies(train_x, train_y, test_x, test_y, 5,
                            ks=(1, 5, 19))
  assert accs == {1: 1.0, 5: 1.0, 19: 1.0}
  with pytest.raises(ValueError, match="k=101"):
    knn.knn_accuracies(train_x, train_y, test_x, test_y, 5, ks=(101,))
  with pytest.raises(ValueError, match="weighting"):
    knn.vote(train_y[None, :3], np.ones((1, 3)), 5, "linear")


def test_evaluator_on_digits_pixels():
  """Features = raw pixels: the evaluator's numbers are the math's."""
  mesh = sharding.make_mesh()
  pp = ("decode|resize(8)|value_range(-1, 1)|keep('image', 'label')")

  def predict_fn(params, image):
    del params
    return None, {"pre_logits": jnp.reshape(image, (image.shape[0], -1))}

  cfg = dict(type="knn", log_steps=1, datasets={
      "digits": ("digits", "train", "test")}, pp_train=pp, ks=(1, 3, 10),
             batch_size=64)
  module, kwargs = evaluators.check_config(cfg, "config.evals.knn")
  assert module is knn
  ev = knn.Evaluator(predict_fn, mesh=mesh, **kwargs)
  results = dict(ev.run({"params": {}}))
  assert sorted(results) == ["digits_10nn", "digits_1nn", "digits_3nn"]
  train_x, train_y = ev._compute({}, "digits", "train", pp)
  test_x, test_y = ev._compute({}, "digits", "test", pp)
  assert train_x.shape == (1500, 192) and test_x.shape == (297, 192)
  # The features are fetched a few batches behind the dispatch
  # (common.features_and_labels): still every real example once, in order,
  # with its label: the host pipeline's batches (24, the last padded).
  from big_vision import input_pipeline  # pylint: disable=g-import-not-at-top
  batches, n = input_pipeline.make_for_inference(
      dict(name="digits", split="train"), pp, 64)
  host = list(batches)
  assert n == len(host) == 24
  real = [b["_mask"].astype(bool) for b in host]
  np.testing.assert_array_equal(train_x, np.concatenate(
      [b["image"].reshape(len(b["image"]), -1)[m] for b, m in zip(host, real)]))
  np.testing.assert_array_equal(train_y, np.concatenate(
      [b["label"][m] for b, m in zip(host, real)]))
  # The reference, vectorised over train rows (a full float64 sort).
  unit = lambda x: x / np.linalg.norm(x.astype(np.float64), axis=1,
                                      keepdims=True)
  order = np.argsort(-(unit(test_x) @ unit(train_x).T), axis=1, kind="stable")
  for k in (1, 3, 10):
    want = []
    for row in train_y[order[:, :k]]:
      counts = collections.Counter(row.tolist())
      top = max(counts.values())
      want.append(next(c for c in row if counts[c] == top))  # Nearest tied.
    want = np.array(want)
    assert results[f"digits_{k}nn"] == pytest.approx(np.mean(want == test_y))
  # Pixel-space kNN on digits is a strong classifier (chance is 0.1).
  assert results["digits_1nn"] > 0.9, results
