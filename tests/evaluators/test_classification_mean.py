"""`classification` and `mean` evaluators against numpy, on a generated split.

The split is a jsonl file whose "image" is a row of logits we chose, and the
fake predict_fn returns `t * image` (t a parameter, so the params really are
passed through). 45 examples in global batches of 16 (or 40) over the 8
virtual devices leave a padded, masked last batch. Every number is recomputed
here in float64 numpy, from the same rows, without the code under test.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vision import sharding
from big_vision.evaluators import classification
from big_vision.evaluators import mean

N, C = 45, 7
T = 1.5  # The "model": logits = T * image.
PP_SINGLE = "onehot(7, key='label', key_result='labels')|keep('image', 'labels')"
PP_MULTI = "keep('image', 'labels')"


def _predict_fn(params, image):
  return image * params["t"], {}


STATE = {"params": {"t": jnp.float32(T)}}


def _rows(seed):
  """float32 logits rows, a single label per row, and multi-hot rows."""
  rng = np.random.default_rng(seed)
  image = (2 * rng.normal(size=(N, C))).astype(np.float32)
  # Single labels: the argmax for ~40% of rows, else a random class, so
  # that prec@1, prec@5 and 1 are all different.
  label = np.where(rng.uniform(size=N) < 0.4, image.argmax(1),
                   rng.integers(0, C, N))
  # Multi-hot (ReaL-like): 0..3 positives; about a quarter of rows empty.
  multi = np.zeros((N, C), np.int64)
  for i, k in enumerate(rng.choice(4, N, p=[0.25, 0.35, 0.25, 0.15])):
    multi[i, rng.choice(C, k, replace=False)] = 1
  assert 5 <= (multi.sum(1) == 0).sum() <= 20
  return image, label, multi


def _write(tmp_path, seed=0):
  image, label, multi = _rows(seed)
  path = tmp_path / "split.jsonl"
  with open(path, "w") as f:
    for i in range(N):
      # float(float32) round-trips exactly through JSON back to float32.
      f.write(json.dumps({"image": [float(v) for v in image[i]],
                          "label": int(label[i]),
                          "labels": [int(v) for v in multi[i]]}) + "\n")
  data = dict(name="jsonl", split="train", path=str(path), image_key=())
  onehot = np.eye(C)[label]
  return data, image.astype(np.float64) * T, onehot, multi.astype(np.float64)


# ----------------------------------------------------------------------------
# The independent reference.
# ----------------------------------------------------------------------------
def _np_softmax_xent(logits, labels):
  z = logits - logits.max(1, keepdims=True)
  log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
  return -(labels * log_p).sum(1)


def _np_sigmoid_xent(logits, labels):
  # -log(sigmoid(z)) = log(1 + e^-z); -log(1 - sigmoid(z)) = log(1 + e^z).
  return (labels * np.logaddexp(0, -logits)
          + (1 - labels) * np.logaddexp(0, logits)).sum(1)


NP_LOSS = {"softmax_xent": _np_softmax_xent, "sigmoid_xent": _np_sigmoid_xent}


def _np_classification(logits, labels, loss_name, skip_empty):
  order = np.argsort(-logits, axis=1)  # No ties in continuous random rows.
  top1 = labels[np.arange(len(labels)), order[:, 0]] > 0
  top5 = (np.take_along_axis(labels, order[:, :5], 1) > 0).any(1)
  keep = labels.sum(1) > 0 if skip_empty else np.ones(len(labels), bool)
  loss = NP_LOSS[loss_name](logits, labels)
  return {"prec@1": top1[keep].mean(), "prec@5": top5[keep].mean(),
          "loss": loss[keep].mean()}


def _run(module, data, pp, batch_size, **kw):
  mesh = sharding.make_mesh()
  assert sharding.num_data_shards(mesh) == 8  # tests/conftest.py
  ev = module.Evaluator(_predict_fn, mesh=mesh, data=data, pp_fn=pp,
                        batch_size=batch_size, **kw)
  return dict(ev.run(STATE))


# ----------------------------------------------------------------------------
# classification
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("batch_size", [16, 40])  # 3 or 35 padded rows.
def test_classification_single_label_matches_numpy(tmp_path, batch_size):
  data, logits, onehot, _ = _write(tmp_path)
  got = _run(classification, data, PP_SINGLE, batch_size)
  want = _np_classification(logits, onehot, "softmax_xent", skip_empty=False)
  assert set(got) == {"prec@1", "prec@5", "loss"}
  # Counts are exact: k / 45.
  assert got["prec@1"] == pytest.approx(want["prec@1"], abs=1e-9)
  assert got["prec@5"] == pytest.approx(want["prec@5"], abs=1e-9)
  assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
  # The data really separate the three numbers (a swapped top-k would show).
  assert 0.3 < want["prec@1"] < want["prec@5"] < 1.0, want


@pytest.mark.parametrize("loss_name", ["softmax_xent", "sigmoid_xent"])
@pytest.mark.parametrize("skip_empty", [False, True])
def test_classification_multilabel_real_path_matches_numpy(
    tmp_path, skip_empty, loss_name):
  data, logits, _, multi = _write(tmp_path, seed=1)
  got = _run(classification, data, PP_MULTI, 16, skip_empty=skip_empty,
             loss_name=loss_name)
  want = _np_classification(logits, multi, loss_name, skip_empty)
  assert got["prec@1"] == pytest.approx(want["prec@1"], abs=1e-9)
  assert got["prec@5"] == pytest.approx(want["prec@5"], abs=1e-9)
  assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)


def test_skip_empty_leaves_unlabelled_examples_out_of_every_number(tmp_path):
  """Regression: the loss used to average over the empty rows too (each a
  softmax loss of exactly 0), i.e. it was diluted by n_empty / n."""
  data, logits, _, multi = _write(tmp_path, seed=1)
  got = _run(classification, data, PP_MULTI, 16, skip_empty=True)
  nonempty = multi.sum(1) > 0
  want = _np_softmax_xent(logits[nonempty], multi[nonempty]).mean()
  assert got["loss"] == pytest.approx(want, rel=1e-5)
  diluted = _np_softmax_xent(logits, multi).mean()
  assert abs(got["loss"] - diluted) > 0.1 * want
  # And prec@1 counts hits among the labelled rows only.
  order = np.argsort(-logits, 1)
  hits = multi[np.arange(N), order[:, 0]] > 0
  assert got["prec@1"] == pytest.approx(hits.sum() / nonempty.sum())


def test_classification_top5_with_fewer_than_five_classes(tmp_path):
  # 3 classes: prec@5 is top-3, every labelled example is a hit.
  path = tmp_path / "three.jsonl"
  rng = np.random.default_rng(3)
  image = rng.normal(size=(10, 3)).astype(np.float32)
  label = rng.integers(0, 3, 10)
  with open(path, "w") as f:
    for i in range(10):
      f.write(json.dumps({"image": [float(v) for v in image[i]],
                          "label": int(label[i])}) + "\n")
  got = _run(classification, dict(name="jsonl", split="train", path=str(path),
                                  image_key=()),
             "onehot(3, key='label', key_result='labels')|keep('image', "
             "'labels')", 8)
  assert got["prec@5"] == 1.0
  assert got["prec@1"] == pytest.approx(np.mean(image.argmax(1) == label))


# ----------------------------------------------------------------------------
# mean
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("batch_size", [16, 40])
@pytest.mark.parametrize("loss_name", ["softmax_xent", "sigmoid_xent"])
def test_mean_loss_matches_numpy(tmp_path, loss_name, batch_size):
  # sigmoid_xent of a padding row (zero logits, zero labels) is 7 log 2, not
  # 0: a padded row that slipped through the mask would move the mean.
  data, logits, onehot, _ = _write(tmp_path, seed=2)
  got = _run(mean, data, PP_SINGLE, batch_size, pred="loss",
             loss_name=loss_name)
  assert set(got) == {"loss"}
  want = NP_LOSS[loss_name](logits, onehot).mean()
  assert got["loss"] == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("pp,multi_label", [(PP_SINGLE, False),
                                            (PP_MULTI, True)])
def test_mean_accuracy_matches_numpy(tmp_path, pp, multi_label):
  data, logits, onehot, multi = _write(tmp_path, seed=3)
  labels = multi if multi_label else onehot
  got = _run(mean, data, pp, 16, pred="accuracy")
  want = (labels[np.arange(N), logits.argmax(1)] > 0).mean()
  assert got == {"accuracy": pytest.approx(want, abs=1e-9)}
  assert 0.1 < want < 0.9  # Neither all hits nor all misses.


def test_mean_unknown_pred_names_the_valid_ones():
  with pytest.raises(ValueError, match=r"'los'.*Did you mean 'loss'"):
    mean.Evaluator(_predict_fn, mesh=sharding.make_mesh(), data={}, pp_fn="",
                   pred="los")
  with pytest.raises(ValueError, match=r"accuracy, loss"):
    mean.Evaluator(_predict_fn, mesh=sharding.make_mesh(), data={}, pp_fn="",
                   pred="top7")


# ----------------------------------------------------------------------------
# Evaluators of one run share one compiled predict function.
# ----------------------------------------------------------------------------
def test_evaluators_over_one_model_and_shape_share_one_compiled_predict(
    tmp_path):
  """Four evaluators (two classification on different splits, one `mean`
  loss, one `mean` accuracy) with the same input shape trace the model
  once; another output selection, or another input shape, traces again."""
  from big_vision.evaluators import common  # pylint: disable=g-import-not-at-top
  traces = []

  def predict_fn(params, image):
    traces.append(image.shape)  # Runs only when jax traces.
    return image * params["t"], {"pre_logits": image}

  data, logits, onehot, _ = _write(tmp_path)
  data_b = dict(data, split="train[:30]")
  mesh = sharding.make_mesh()
  evs = [classification.Evaluator(predict_fn, mesh=mesh, data=data,
                                  pp_fn=PP_SINGLE, batch_size=16),
         classification.Evaluator(predict_fn, mesh=mesh, data=data_b,
                                  pp_fn=PP_SINGLE, batch_size=16),
         mean.Evaluator(predict_fn, mesh=mesh, data=data, pp_fn=PP_SINGLE,
                        batch_size=16, pred="loss"),
         mean.Evaluator(predict_fn, mesh=mesh, data=data, pp_fn=PP_SINGLE,
                        batch_size=16, pred="accuracy")]
  assert len({id(ev.logits) for ev in evs}) == 1
  results = [dict(ev.run(STATE)) for ev in evs]
  assert traces == [(16, C)], traces
  # Still the right numbers, each from its own metrics.
  for got, n in ((results[0], N), (results[1], 30)):
    want = _np_classification(logits[:n], onehot[:n], "softmax_xent", False)
    for k in want:
      assert got[k] == pytest.approx(want[k], rel=1e-5), (n, k)
  assert results[2]["loss"] == pytest.approx(results[0]["loss"], rel=1e-6)
  assert results[3]["accuracy"] == pytest.approx(results[0]["prec@1"])

  # A new input shape traces once more; so does another output.
  classification.Evaluator(predict_fn, mesh=mesh, data=data, pp_fn=PP_SINGLE,
                           batch_size=24).run(STATE).__next__()
  assert traces == [(16, C), (24, C)]
  features = common.compiled_predict(predict_fn, "out:pre_logits")
  assert features is not evs[0].logits
  features(STATE["params"], jnp.zeros((16, C)))
  assert traces == [(16, C), (24, C), (16, C)]
