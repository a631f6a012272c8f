"""Few-shot linear regression ("fewshot_lsr") on frozen features.

The standard big_vision probe of a backbone's representation: take k examples
per class from a train split, fit a closed-form L2-regularised least-squares
classifier on their pre-logits features, and report its accuracy on a test
split, for several k and several random draws of the k shots.

This module has two layers:

* the math (this top section): pure numpy/scipy on host arrays, no jax and no
  tensorflow, so it is testable in isolation and never competes with the
  training step for accelerator memory;
* the `Evaluator` (below it) that extracts features with the model and feeds
  them to the math.
"""
from typing import NamedTuple, Sequence

import numpy as np
import scipy.linalg
import scipy.sparse


# ============================================================================
# The math: shot sampling and closed-form ridge regression (numpy, host CPU).
# ============================================================================
#
# Precision: the solve is float64 (scoring is float32, see
# `RidgeClassifier.scores`). The bias column (below) puts a constant
# BIAS_FEATURE**2 = 1e6 into every entry of X X^T in the dual form, on top of
# feature products of size ~D; float32's ~7 digits would lose about three of
# the feature part's digits to it, and predictions would depend on BLAS
# summation order. In float64 the solve is reproducible and agrees with an
# independent solve to ~1e-12. The price on CPU is ~2x float32 in the
# matmuls; tools/bench_fewshot.py shows the whole suite stays cheap.

# A constant feature appended to every (whitened) example so the classifier
# has a bias. The ridge penalty also hits the bias weight w_b, but the bias
# *value* is BIAS_FEATURE * w_b, so its effective penalty is
# l2_reg / BIAS_FEATURE**2 (~1e-3 for the default l2_reg = 1024): a
# practically unregularised intercept. Because the features are centred on
# the train set, the bias column is orthogonal to them, so it only changes
# predictions when the classes are imbalanced.
BIAS_FEATURE = 1000.0


def sample_shots(labels, shots: int, num_classes: int, seed: int) -> np.ndarray:
  """Indices of exactly `shots` random examples of every class.

  Deterministic for a given (labels, seed). Every example gets a random key
  from `np.random.default_rng(seed)` and each class keeps its `shots`
  lowest-keyed examples, so for one seed the 1-shot draw is a subset of the
  5-shot draw, and so on: the curve over k is not blurred by unrelated draws.

  Args:
    labels: [N] integer class ids in [0, num_classes).
    shots: examples per class, >= 1.
    num_classes: number of classes C; every class must have >= `shots`
      examples.
    seed: seed of the draw.

  Returns:
    [C * shots] int64 indices into `labels`, grouped by class (class 0's
    first), in random order within a class.

  Raises:
    ValueError: bad `shots`, a label outside [0, num_classes), or a class
      with fewer than `shots` examples (all such classes are named).
  """
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be a 1-D integer array, got shape "
                     f"{labels.shape} and dtype {labels.dtype}.")
  if shots < 1:
    raise ValueError(f"shots must be >= 1, got {shots}.")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    bad = labels[(labels < 0) | (labels >= num_classes)]
    raise ValueError(f"labels must lie in [0, {num_classes}); found "
                     f"{sorted(set(bad.tolist()))[:10]}.")
  counts = np.bincount(labels, minlength=num_classes)
  short = np.flatnonzero(counts < shots)
  if short.size:
    listed = ", ".join(f"class {c} has {counts[c]}" for c in short[:10])
    more = f" (and {short.size - 10} more classes)" if short.size > 10 else ""
    raise ValueError(
        f"{shots}-shot sampling needs {shots} examples of each of "
        f"{num_classes} classes, but {listed}{more}.")

  keys = np.random.default_rng(seed).random(labels.size)
  order = np.lexsort((keys, labels))  # By class, then by random key.
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  take = (starts[:, None] + np.arange(shots)[None, :]).reshape(-1)
  return order[take].astype(np.int64)


def whitened_design(train_x) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The ridge design matrix of the train rows, and its whitening statistics.

  Whitening is per feature, with statistics of the train rows only:
    mean  = train_x.mean(axis=0)
    scale = population std (ddof=0) of train_x, except that a feature which
            is exactly constant on the train rows (e.g. a dead ReLU unit)
            keeps scale 1 instead of 0: it is then zero on every train row,
            gets no weight, and cannot blow up on test rows.
  The design matrix is [(train_x - mean) / scale, BIAS_FEATURE], float64.

  Written for large N: one [N, D + 1] float64 buffer is filled in place
  (the statistics are accumulated in float64 straight from the input dtype),
  instead of a chain of full-size temporaries.

  Args:
    train_x: [N, D] features, any float dtype.

  Returns:
    design [N, D + 1] float64, mean [D] float64, scale [D] float64.
  """
  train_x = np.asarray(train_x)
  n, d = train_x.shape
  design = np.empty((n, d + 1))
  feats = design[:, :d]
  mean = train_x.mean(axis=0, dtype=np.float64)
  np.subtract(train_x, mean, out=feats)
  std = np.sqrt(np.einsum("ij,ij->j", feats, feats) / n)
  scale = np.where(np.ptp(train_x, axis=0) == 0, 1.0, std)
  feats /= scale
  design[:, d] = BIAS_FEATURE
  return design, mean, scale


def whiten_and_augment(x, mean, scale) -> np.ndarray:
  """[N, D] -> [N, D + 1]: (x - mean) / scale, then a BIAS_FEATURE column.

  Applies given (train) statistics to other rows; for the train rows
  themselves `whitened_design` computes the statistics and this at once.
  """
  x = (np.asarray(x, np.float64) - mean) / scale
  return np.concatenate([x, np.full((x.shape[0], 1), BIAS_FEATURE)], axis=1)


def ridge_weights(x, y, num_classes: int, l2_reg: float) -> np.ndarray:
  """Closed-form L2-regularised least squares onto {-1, +1} one-hot targets.

  Minimises ||x w - Y||^2 + l2_reg ||w||^2 with Y[i, c] = +1 if y[i] == c
  else -1, through whichever of the two equal closed forms is cheaper:

    primal (N >= D):  w = (x^T x + l2_reg I_D)^-1 x^T Y     a D x D solve
    dual   (N <  D):  w = x^T (x x^T + l2_reg I_N)^-1 Y     an N x N solve

  Both systems are symmetric positive definite (l2_reg > 0), so they are
  solved by Cholesky (scipy, `assume_a="pos"`). In the primal form x^T Y is
  formed from per-class sums of x (a sparse one-hot product, O(N D))
  rather than a dense N x D x C matmul.

  Args:
    x: [N, D] float64 design matrix (already whitened and bias-augmented).
    y: [N] integer labels in [0, num_classes).
    num_classes: C.
    l2_reg: the ridge strength, > 0.

  Returns:
    [D, C] float64 weights.
  """
  if not l2_reg > 0:
    raise ValueError(f"l2_reg must be > 0, got {l2_reg}.")
  n, d = x.shape
  y = np.asarray(y)
  if n >= d:
    gram = x.T @ x  # numpy uses BLAS syrk for a.T @ a: half the flops.
    gram[np.diag_indices(d)] += l2_reg
    onehot_t = scipy.sparse.csr_matrix(  # [C, N], one 1 per column.
        (np.ones(n), (y, np.arange(n))), shape=(num_classes, n))
    class_sums = onehot_t @ x
    xty = 2.0 * class_sums.T - x.sum(axis=0)[:, None]  # x^T (2 onehot - 1).
    return scipy.linalg.solve(gram, xty, assume_a="pos", overwrite_a=True,
                              overwrite_b=True, check_finite=False)
  targets = np.full((n, num_classes), -1.0)
  targets[np.arange(n), y] = 1.0
  kernel = x @ x.T  # syrk as well.
  kernel[np.diag_indices(n)] += l2_reg
  alpha = scipy.linalg.solve(kernel, targets, assume_a="pos", overwrite_a=True,
                             overwrite_b=True, check_finite=False)
  return x.T @ alpha


class RidgeClassifier(NamedTuple):
  """A fitted few-shot classifier: train whitening plus ridge weights."""
  mean: np.ndarray     # [D] train feature means.
  scale: np.ndarray    # [D] train feature stds (1 for constant features).
  weights: np.ndarray  # [D + 1, C] on whitened features + the bias feature.

  def scores(self, x) -> np.ndarray:
    """[N, C] float32 class scores of raw features x.

    Whitens x with the *train* statistics, then applies the weights, in
    float32: the solve needs float64 (see above), but scoring a large test
    set is one [N, D] x [D, C] matmul per draw, 3x faster in float32, and
    on whitened (unit-scale) features float32 only flips an argmax between
    classes whose scores agree to ~1e-6.
    """
    f32 = np.float32
    x = np.subtract(x, self.mean.astype(f32), dtype=f32)  # A fresh array...
    x /= self.scale.astype(f32)  # ...so dividing in place is safe.
    return x @ self.weights[:-1].astype(f32) + f32(BIAS_FEATURE) * (
        self.weights[-1].astype(f32))

  def predict(self, x) -> np.ndarray:
    """[N] argmax classes (ties go to the lowest class id)."""
    return np.argmax(self.scores(x), axis=1)


def fit_linear_classifier(train_x, train_y, num_classes: int,
                          l2_reg: float) -> RidgeClassifier:
  """Whiten with train statistics, add the bias feature, ridge-solve.

  See `whitened_design` for the exact whitening and `ridge_weights` for the
  solve.

  Args:
    train_x: [N, D] features (any float dtype; solved in float64).
    train_y: [N] integer labels in [0, num_classes).
    num_classes: C.
    l2_reg: ridge strength, > 0.
  """
  design, mean, scale = whitened_design(train_x)
  weights = ridge_weights(design, train_y, num_classes, l2_reg)
  return RidgeClassifier(mean, scale, weights)


def fewshot_accuracy(train_x, train_y, test_x, test_y, num_classes: int,
                     l2_reg: float) -> float:
  """Top-1 accuracy on (test_x, test_y) of the ridge classifier fit on train.

  Whitening uses the mean and std of `train_x` only (see
  `whitened_design`); the classifier is `fit_linear_classifier`. Runs on the host CPU: the solve in
  float64, the test scores in float32.
  """
  clf = fit_linear_classifier(train_x, train_y, num_classes, l2_reg)
  return float(np.mean(clf.predict(test_x) == np.asarray(test_y)))


def draw_all_shots(train_y, num_classes: int, shots: Sequence[int],
                   seeds: Sequence[int]) -> dict[tuple[int, int], np.ndarray]:
  """{(k, seed): sample_shots(train_y, k, num_classes, seed)} for every k and
  seed: the train examples a suite uses, known from the labels alone."""
  train_y = np.asarray(train_y)
  return {(k, seed): sample_shots(train_y, k, num_classes, seed)
          for k in shots for seed in seeds}


def suite_of_draws(draws: dict[tuple[int, int], np.ndarray], features_at,
                   train_y, test_x, test_y, num_classes: int,
                   l2_reg: float = 2.0 ** 10) -> dict[str, float]:
  """`fewshot_suite` on given draws (`draw_all_shots`), where
  `features_at(indices)` returns the train features of those examples:
  the caller computes features for the drawn examples only."""
  test_x = np.asarray(test_x, np.float32)
  train_y, test_y = np.asarray(train_y), np.asarray(test_y)
  accs = {draw: fewshot_accuracy(features_at(idx), train_y[idx], test_x,
                                 test_y, num_classes, l2_reg)
          for draw, idx in draws.items()}
  results = {}
  for k in dict.fromkeys(k for k, _ in draws):  # Each k's seeds, then mean.
    mine = {seed: acc for (kk, seed), acc in accs.items() if kk == k}
    results.update({f"{k}shot_seed{seed}": a for seed, a in mine.items()})
    results[f"{k}shot"] = float(np.mean(list(mine.values())))
  return results


def fewshot_suite(train_x, train_y, test_x, test_y, num_classes: int,
                  shots: Sequence[int] = (1, 5, 10, 25),
                  seeds: Sequence[int] = (0, 1, 2),
                  l2_reg: float = 2.0 ** 10) -> dict[str, float]:
  """Few-shot accuracies for every (shots, seed), and their mean over seeds.

  The test features are converted to float32 once and shared by all draws
  (train rows are gathered per draw and solved in float64). For
  every k in `shots` and every seed, `sample_shots` draws k examples per
  class from (train_x, train_y), and the classifier fit on them is scored on
  the whole test set.

  Returns:
    {f"{k}shot": mean accuracy over seeds,
     f"{k}shot_seed{s}": accuracy of seed s, ...} for every k and s.
  """
  train_x = np.asarray(train_x)
  draws = draw_all_shots(train_y, num_classes, shots, seeds)
  return suite_of_draws(draws, lambda idx: train_x[idx], train_y, test_x,
                        test_y, num_classes, l2_reg)


# ============================================================================
# The evaluator (feature extraction with the model) follows below.
# ============================================================================
#
#   config.evals.fewshot = dict(
#       type="fewshot_lsr", log_steps=1000,
#       datasets={"cifar100": ("cifar100", "train", "test"), ...},
#       pp_train="decode|resize(256)|central_crop(224)|value_range(-1,1)",
#       pp_eval=..., shots=(1, 5, 10, 25), l2_reg=2.0**10, seeds=(0, 1, 2),
#       representation_layer="pre_logits")
#
# Metrics: "<dataset>_<k>shot" (mean over seeds) and
# "<dataset>_<k>shot_seed<s>". The shots are drawn from the train split's
# labels, which are read once per process without the model
# (common.split_labels); then features are computed for the drawn train
# examples only (at most max(shots) * classes * seeds of them, a fraction of
# most train splits) and for the whole test split, and reused by every
# (k, seed) solve, which runs on the host CPU. The draws, and so the
# metrics, are those of computing every train example's features.


class Evaluator:
  """Few-shot linear probes of the model's representation on several datasets."""

  def __init__(self, predict_fn, *, mesh, datasets, pp_train, pp_eval=None,
               shots=(1, 5, 10, 25), l2_reg=2.0 ** 10, seeds=(0, 1, 2),
               representation_layer="pre_logits", batch_size=256,
               label_key="label", data_dir=None):
    # pylint: disable-next=g-import-not-at-top
    from big_vision.evaluators import common
    if not datasets:
      raise ValueError("fewshot_lsr needs at least one entry in `datasets`.")
    for name, spec in datasets.items():
      if len(spec) != 3:
        raise ValueError(
            f"fewshot_lsr dataset {name!r}: expected (tfds_name, train_split, "
            f"test_split), got {spec!r}.")
    self.mesh, self.datasets = mesh, dict(datasets)
    self.pp_train, self.pp_eval = pp_train, pp_eval or pp_train
    self.shots, self.seeds, self.l2_reg = tuple(shots), tuple(seeds), l2_reg
    self.batch_size, self.label_key = batch_size, label_key
    self.data_dir = data_dir
    self.layer = representation_layer
    self._labels = {}  # (tfds_name, split) -> common.SplitLabels

    # Shared with every evaluator of the run that reads the same layer.
    layer = common.compiled_predict(predict_fn, f"out:{representation_layer}")
    self.features = lambda params, batch: layer(params, batch["image"])

  def _data(self, tfds_name, split) -> dict:
    data = dict(name=tfds_name, split=split)
    if self.data_dir:
      data["data_dir"] = self.data_dir
    return data

  def _train_labels(self, tfds_name, split):
    """The train split's labels (after pp_train), read at the first run."""
    from big_vision.evaluators import common  # pylint: disable=g-import-not-at-top
    key = (tfds_name, split)
    if key not in self._labels:
      self._labels[key] = common.split_labels(
          self._data(tfds_name, split), self.pp_train, self.batch_size,
          self.label_key)
    return self._labels[key]

  def _compute(self, params, tfds_name, split, pp, select=None):
    from big_vision.evaluators import common  # pylint: disable=g-import-not-at-top
    return common.features_and_labels(
        self.features, params, self._data(tfds_name, split), pp,
        self.batch_size, self.mesh, self.label_key, select=select)

  def _drawn_train_features(self, params, tfds_name, split, train, needed):
    """[len(needed), D] features of the train examples at positions
    `needed` (increasing) of `train` (a SplitLabels), computed for them only."""
    select = train.select(needed)
    x, y = self._compute(params, tfds_name, split, self.pp_train, select)
    rows = train.positions(select)  # A permutation of `needed`.
    if not np.array_equal(y, train.labels[rows]):
      raise ValueError(
          f"fewshot_lsr: the labels of {tfds_name!r} {split!r} after pp_train "
          "differ between two reads of the split; pp_train must give every "
          "example the same label each time.")
    return x[np.argsort(rows)]

  def run(self, train_state):
    params = train_state["params"]
    for name, (tfds_name, train_split, test_split) in self.datasets.items():
      train = self._train_labels(tfds_name, train_split)
      test_x, test_y = self._compute(params, tfds_name, test_split,
                                     self.pp_eval)
      num_classes = int(max(train.labels.max(initial=0),
                            test_y.max(initial=0))) + 1
      draws = draw_all_shots(train.labels, num_classes, self.shots,
                             self.seeds)
      needed = np.unique(np.concatenate(list(draws.values())))
      train_x = self._drawn_train_features(params, tfds_name, train_split,
                                           train, needed)
      results = suite_of_draws(
          draws, lambda idx: train_x[np.searchsorted(needed, idx)],
          train.labels, test_x, test_y, num_classes, l2_reg=self.l2_reg)
      for key, value in results.items():
        yield f"{name}_{key}", value
