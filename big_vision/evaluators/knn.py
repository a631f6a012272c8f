"""k-nearest-neighbour classification ("knn") on frozen features.

The non-parametric probe of a representation (Wu et al. 2018; DINO, Caron et
al. 2021): embed a train split and a test split with the frozen model, and
classify each test example by a vote of its k most cosine-similar train
examples. Nothing is fitted, so it is cheap to run at many k.

As in `fewshot_lsr`, the math (this top section) is numpy on host arrays,
testable without a model; the `Evaluator` below extracts the features.

Definitions (exact, the tests check them against a brute-force loop):

* similarity: cosine, i.e. the dot product of L2-normalised features (a
  zero feature vector stays zero: similarity 0 to everything);
* neighbours: the train examples in decreasing similarity; equal
  similarities are ordered by train index (lower first);
* vote of class c among the k nearest: the sum of their weights, weight 1
  (`weighting="uniform"`, a majority vote) or exp(similarity / temperature)
  (`weighting="exp"`, the distance-weighted vote of Wu et al. / DINO; a
  closer neighbour counts more);
* tie rule: among the classes with the largest vote, the one that holds the
  nearest of the k neighbours wins (so k=2 with two different labels is
  1-NN, and a tie never goes to an arbitrary class id).
"""
from typing import Sequence

import numpy as np

WEIGHTINGS = ("uniform", "exp")


def l2_normalize(x) -> np.ndarray:
  """Rows scaled to unit L2 norm (float32); all-zero rows stay zero."""
  x = np.asarray(x, np.float32)
  norm = np.linalg.norm(x, axis=1, keepdims=True)
  return x / np.where(norm > 0, norm, 1.0)


MAX_SIMILARITY_BYTES = 256 << 20  # Host memory of one similarity chunk.


def nearest_neighbours(train_x, test_x, k: int, chunk: int = 1024):
  """Indices [M, k] and similarities [M, k] of each test row's k nearest.

  Rows are L2-normalised here. Sorted by decreasing similarity, equal
  similarities by train index. Computed `chunk` test rows at a time (fewer
  when N is large, so that one [rows, N] float32 similarity block stays
  under MAX_SIMILARITY_BYTES, e.g. 52 rows for ImageNet's 1.28M).
  """
  train_n, test_n = l2_normalize(train_x), l2_normalize(test_x)
  n = train_n.shape[0]
  if not 1 <= k <= n:
    raise ValueError(f"knn: k={k} must be in [1, {n}] (the train size).")
  chunk = max(1, min(chunk, MAX_SIMILARITY_BYTES // (4 * n)))
  idx_out, sim_out = [], []
  for start in range(0, test_n.shape[0], chunk):
    sims = test_n[start:start + chunk] @ train_n.T  # [B, N]
    if k < n:
      # The k largest (as a set), then ordered: -sim first, index second.
      top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    else:
      top = np.broadcast_to(np.arange(n), sims.shape)
    top_sims = np.take_along_axis(sims, top, axis=1)
    order = np.lexsort((top, -top_sims), axis=1)
    idx_out.append(np.take_along_axis(top, order, axis=1))
    sim_out.append(np.take_along_axis(top_sims, order, axis=1))
  return np.concatenate(idx_out), np.concatenate(sim_out)


def vote(neighbour_labels, neighbour_sims, num_classes: int,
         weighting: str = "uniform", temperature: float = 0.07) -> np.ndarray:
  """Class predictions [M] from ordered neighbours ([M, k] labels and sims).

  Votes and the tie rule are defined in the module docstring.
  """
  if weighting not in WEIGHTINGS:
    raise ValueError(f"knn weighting={weighting!r}; valid: {WEIGHTINGS}.")
  labels = np.asarray(neighbour_labels)
  m, k = labels.shape
  if weighting == "uniform":
    weights = np.ones((m, k), np.float64)
  else:
    weights = np.exp(np.asarray(neighbour_sims, np.float64) / temperature)
  votes = np.zeros((m, num_classes))
  np.add.at(votes, (np.arange(m)[:, None], labels), weights)
  # Rank of each class's nearest neighbour among the k (k if absent).
  first = np.full((m, num_classes), k)
  rows = np.broadcast_to(np.arange(m)[:, None], (m, k))
  ranks = np.broadcast_to(np.arange(k)[None, :], (m, k))
  np.minimum.at(first, (rows, labels), ranks)
  best = votes == votes.max(axis=1, keepdims=True)
  return np.argmin(np.where(best, first, k + 1), axis=1)


def knn_accuracies(train_x, train_y, test_x, test_y, num_classes: int,
                   ks: Sequence[int] = (1, 5, 20), weighting: str = "uniform",
                   temperature: float = 0.07) -> dict[int, float]:
  """{k: top-1 accuracy of the k-NN vote} for every k (one neighbour search).

  Every k larger than the train set is an error (not silently clipped).
  """
  ks = tuple(int(k) for k in ks)
  if not ks:
    raise ValueError("knn needs at least one k.")
  train_y, test_y = np.asarray(train_y), np.asarray(test_y)
  idx, sims = nearest_neighbours(train_x, test_x, max(ks))
  neighbour_labels = train_y[idx]
  return {k: float(np.mean(vote(neighbour_labels[:, :k], sims[:, :k],
                                num_classes, weighting, temperature)
                           == test_y))
          for k in ks}


# ============================================================================
# The evaluator (feature extraction with the model).
# ============================================================================
#
#   config.evals.knn = dict(
#       type="knn", log_steps=1000,
#       datasets={"digits": ("digits", "train", "test")},
#       pp_train="decode|resize(16)|value_range(-1, 1)|keep('image', 'label')",
#       pp_eval=None,  # = pp_train
#       ks=(1, 5, 20), weighting="uniform", temperature=0.07,
#       representation_layer="pre_logits")
#
# Metrics: "<dataset>_<k>nn" (top-1 accuracy). Labels are integer class ids
# under `label_key` (one-hot rows are argmax-ed).


class Evaluator:
  """kNN accuracy of the model's representation on several datasets."""

  def __init__(self, predict_fn, *, mesh, datasets, pp_train, pp_eval=None,
               ks=(1, 5, 20), weighting="uniform", temperature=0.07,
               representation_layer="pre_logits", batch_size=256,
               label_key="label", data_dir=None):
    # pylint: disable-next=g-import-not-at-top
    from big_vision.evaluators import common
    if not datasets:
      raise ValueError("knn needs at least one entry in `datasets`.")
    for name, spec in datasets.items():
      if len(spec) != 3:
        raise ValueError(
            f"knn dataset {name!r}: expected (tfds_name, train_split, "
            f"test_split), got {spec!r}.")
    if weighting not in WEIGHTINGS:
      raise ValueError(f"knn weighting={weighting!r}; valid: {WEIGHTINGS}.")
    if not ks or any(int(k) < 1 for k in ks):
      raise ValueError(f"knn ks={ks!r}: need one or more k >= 1.")
    self.mesh, self.datasets = mesh, dict(datasets)
    self.pp_train, self.pp_eval = pp_train, pp_eval or pp_train
    self.ks, self.weighting = tuple(int(k) for k in ks), weighting
    self.temperature = float(temperature)
    self.batch_size, self.label_key = batch_size, label_key
    self.data_dir, self.layer = data_dir, representation_layer

    # Shared with every evaluator of the run that reads the same layer.
    layer = common.compiled_predict(predict_fn, f"out:{representation_layer}")
    self.features = lambda params, batch: layer(params, batch["image"])

  def _compute(self, params, tfds_name, split, pp):
    from big_vision.evaluators import common  # pylint: disable=g-import-not-at-top
    data = dict(name=tfds_name, split=split)
    if self.data_dir:
      data["data_dir"] = self.data_dir
    return common.features_and_labels(self.features, params, data, pp,
                                      self.batch_size, self.mesh,
                                      self.label_key)

  def run(self, train_state):
    params = train_state["params"]
    for name, (tfds_name, train_split, test_split) in self.datasets.items():
      train_x, train_y = self._compute(params, tfds_name, train_split,
                                       self.pp_train)
      test_x, test_y = self._compute(params, tfds_name, test_split,
                                     self.pp_eval)
      num_classes = int(max(train_y.max(), test_y.max())) + 1
      accs = knn_accuracies(train_x, train_y, test_x, test_y, num_classes,
                            ks=self.ks, weighting=self.weighting,
                            temperature=self.temperature)
      for k, acc in accs.items():
        yield f"{name}_{k}nn", acc
