"""Few-shot ridge-regression math against an independent numpy solve."""
import numpy as np
import pytest

from big_vision.evaluators import fewshot_lsr as fs


def _independent_predictions(train_x, train_y, test_x, num_classes, l2_reg,
                             return_weights=False):
  """Textbook ridge on whitened, bias-augmented features, primal form only."""
  train_x = np.asarray(train_x, np.float64)
  mean = train_x.mean(0)
  std = train_x.std(0)
  std[std == 0] = 1.0
  aug = lambda x: np.hstack([(x - mean) / std,
                             np.full((len(x), 1), fs.BIAS_FEATURE)])
  x = aug(train_x)
  y = -np.ones((len(train_y), num_classes))
  y[np.arange(len(train_y)), train_y] = 1.0
  w = np.linalg.solve(x.T @ x + l2_reg * np.eye(x.shape[1]), x.T @ y)
  if return_weights:
    return w
  scores = aug(np.asarray(test_x, np.float64)) @ w
  return scores, np.argmax(scores, 1)


def _independent_weights(train_x, train_y, num_classes, l2_reg):
  return _independent_predictions(train_x, train_y, None, num_classes, l2_reg,
                                  return_weights=True)


def _data(seed, n, d, c, n_test=40, noise=1.0):
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(c, d))
  y = np.arange(n) % c
  yt = rng.integers(0, c, n_test)
  x = centers[y] + noise * rng.normal(size=(n, d))
  xt = centers[yt] + noise * rng.normal(size=(n_test, d))
  return x.astype(np.float32), y, xt.astype(np.float32), yt


@pytest.mark.parametrize("n,d", [(60, 7), (12, 30)], ids=["primal", "dual"])
def test_matches_independent_ridge_solve(n, d):
  x, y, xt, yt = _data(0, n, d, c=4, noise=2.0)
  l2 = 3.0
  want_scores, want = _independent_predictions(x, y, xt, 4, l2)
  clf = fs.fit_linear_classifier(x, y, 4, l2)
  # The solve is float64: weights agree to ~1e-12 with the textbook solve...
  np.testing.assert_allclose(clf.weights, _independent_weights(x, y, 4, l2),
                             rtol=1e-9, atol=1e-11)
  # ...and float32 scoring agrees to float32 precision, same argmax.
  np.testing.assert_allclose(clf.scores(xt), want_scores, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_array_equal(clf.predict(xt), want)
  assert fs.fewshot_accuracy(x, y, xt, yt, 4, l2) == np.mean(want == yt)


def test_ridge_weights_both_forms_equal_normal_equations():
  # The dual form (N < D) must give the primal normal-equation solution.
  x, y, _, _ = _data(1, 20, 9, c=3)
  aug, mean, scale = fs.whitened_design(x)
  np.testing.assert_allclose(aug, fs.whiten_and_augment(x, mean, scale),
                             atol=1e-12)
  np.testing.assert_allclose(aug[:, :-1].mean(0), 0, atol=1e-12)
  np.testing.assert_allclose(aug[:, :-1].std(0), 1, atol=1e-12)
  for n in (20, 8):  # N = 20 >= D = 10 (primal), N = 8 < D (dual).
    xs, ys = aug[:n], y[:n]
    t = -np.ones((n, 3))
    t[np.arange(n), ys] = 1
    want = np.linalg.solve(xs.T @ xs + 5 * np.eye(10), xs.T @ t)
    np.testing.assert_allclose(fs.ridge_weights(xs, ys, 3, 5.0), want,
                               atol=1e-9, err_msg=f"N={n}")


def test_whitening_uses_train_statistics_only():
  # Shifting and scaling every feature of train AND test alike changes
  # nothing: the fit whitens with the train mean/std.
  x, y, xt, _ = _data(2, 40, 5, c=4)
  shift, scale = np.arange(5) * 10.0, np.array([1e-3, 1, 7, 1e3, 2])
  clf = fs.fit_linear_classifier(x, y, 4, 2.0)
  clf2 = fs.fit_linear_classifier(x * scale + shift, y, 4, 2.0)
  np.testing.assert_allclose(clf2.weights, clf.weights, rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(clf2.scores(xt * scale + shift), clf.scores(xt),
                             rtol=1e-4, atol=1e-4)


def test_constant_feature_is_harmless():
  x, y, xt, yt = _data(3, 40, 5, c=4)
  x = np.hstack([x, np.full((40, 1), 3.0)])
  xt = np.hstack([xt, np.full((len(xt), 1), -1e6)])  # Wildly off on test.
  clf = fs.fit_linear_classifier(x, y, 4, 2.0)
  assert np.all(np.isfinite(clf.weights)) and np.allclose(clf.weights[5], 0.0)
  clf5 = fs.fit_linear_classifier(x[:, :5], y, 4, 2.0)
  np.testing.assert_array_equal(clf.predict(xt), clf5.predict(xt[:, :5]))


def test_well_separated_clusters_are_perfect():
  x, y, xt, yt = _data(4, 50, 16, c=5, n_test=200, noise=0.01)
  assert fs.fewshot_accuracy(x, y, xt, yt, 5, 2.0 ** 10) == 1.0


def test_shuffled_labels_are_at_chance():
  # Labels independent of features: accuracy ~ 1/C. With 2000 test examples
  # and C = 4 the std of the accuracy is ~0.01; allow 5 std.
  rng = np.random.default_rng(5)
  x, y, xt, _ = _data(5, 400, 16, c=4, n_test=2000, noise=0.5)
  acc = fs.fewshot_accuracy(x, rng.permutation(y), xt,
                            rng.integers(0, 4, 2000), 4, 1.0)
  assert abs(acc - 0.25) < 0.05


# ---------------------------------------------------------------------------
# Shot sampling.
# ---------------------------------------------------------------------------
def test_sample_shots_exactly_k_per_class():
  rng = np.random.default_rng(6)
  labels = rng.integers(0, 7, 300)
  for k in (1, 3, 10):
    idx = fs.sample_shots(labels, k, 7, seed=0)
    assert len(idx) == len(set(idx.tolist())) == 7 * k
    np.testing.assert_array_equal(np.bincount(labels[idx], minlength=7),
                                  np.full(7, k))
    # Grouped by class, class 0 first.
    np.testing.assert_array_equal(labels[idx], np.repeat(np.arange(7), k))


def test_sample_shots_deterministic_per_seed_and_nested():
  labels = np.random.default_rng(7).integers(0, 5, 200)
  a = fs.sample_shots(labels, 4, 5, seed=3)
  np.testing.assert_array_equal(a, fs.sample_shots(labels, 4, 5, seed=3))
  assert not np.array_equal(a, fs.sample_shots(labels, 4, 5, seed=4))
  # Fewer shots, same seed: a subset (first ones of each class).
  one = fs.sample_shots(labels, 1, 5, seed=3)
  np.testing.assert_array_equal(one, a.reshape(5, 4)[:, 0])


def test_sample_shots_is_uniform_within_class():
  # Class 0 has 4 examples; over many seeds each is drawn ~1/4 of the time.
  labels = np.array([0, 1, 0, 1, 0, 0, 1])
  draws = [fs.sample_shots(labels, 1, 2, seed=s)[0] for s in range(4000)]
  freq = np.bincount(draws, minlength=7)[[0, 2, 4, 5]] / 4000
  np.testing.assert_allclose(freq, 0.25, atol=0.03)


def test_sample_shots_too_few_examples():
  labels = np.array([0, 0, 0, 1, 2, 2, 2])
  with pytest.raises(ValueError, match=r"class 1 has 1\b") as e:
    fs.sample_shots(labels, 2, 3, seed=0)
  assert "class 0" not in str(e.value)
  with pytest.raises(ValueError, match=r"class 3 has 0"):
    fs.sample_shots(labels, 1, 4, seed=0)


def test_sample_shots_rejects_bad_labels():
  with pytest.raises(ValueError, match=r"\[0, 3\)"):
    fs.sample_shots(np.array([0, 1, 3]), 1, 3, seed=0)
  with pytest.raises(ValueError, match="integer"):
    fs.sample_shots(np.array([0.0, 1.0]), 1, 2, seed=0)


# ---------------------------------------------------------------------------
# The suite.
# ---------------------------------------------------------------------------
def test_suite_keys_and_means():
  x, y, xt, yt = _data(8, 120, 10, c=4, noise=1.5)
  res = fs.fewshot_suite(x, y, xt, yt, 4, shots=(1, 5), seeds=(0, 1),
                         l2_reg=4.0)
  assert set(res) == {"1shot", "1shot_seed0", "1shot_seed1",
                      "5shot", "5shot_seed0", "5shot_seed1"}
  for k in (1, 5):
    idx = fs.sample_shots(y, k, 4, seed=1)
    assert res[f"{k}shot_seed1"] == fs.fewshot_accuracy(
        x[idx], y[idx], xt, yt, 4, 4.0)
    assert res[f"{k}shot"] == pytest.approx(
        (res[f"{k}shot_seed0"] + res[f"{k}shot_seed1"]) / 2)
