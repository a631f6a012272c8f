"""fewshot_lsr computes train features for the drawn shots only.

The shots are drawn from the labels (common.split_labels, no model), then
features are computed for the drawn examples (make_for_inference's
`select`); the metrics must be those of computing every train example's
features, as the evaluator did before.
"""
import jax
import numpy as np
import pytest

from big_vision import program
from big_vision import sharding
from big_vision.evaluators import common
from big_vision.evaluators import fewshot_lsr
from big_vision.models import vit

PP = "decode|resize(16)|value_range(-1,1)|keep('image','label')"


def test_pass_order_interleaves_processes_batch_by_batch():
  # Parts of 5 and 3 examples, local batch 2: batch 0 = p0[0:2], p1[0:2];
  # batch 1 = p0[2:4], p1[2]; batch 2 = p0[4].
  process, index = common.pass_order([5, 3], 2)
  assert list(zip(process.tolist(), index.tolist())) == [
      (0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (0, 3), (1, 2), (0, 4)]
  process, index = common.pass_order([4], 3)
  assert process.tolist() == [0] * 4 and index.tolist() == [0, 1, 2, 3]


def test_select_and_positions_round_trip_over_processes():
  part_sizes, local_bs = (7, 6), 3
  process, index = common.pass_order(part_sizes, local_bs)
  labels = np.arange(len(process)) % 4
  split = common.SplitLabels(labels, part_sizes, local_bs)
  np.testing.assert_array_equal(split.process, process)
  np.testing.assert_array_equal(split.local_index, index)
  rng = np.random.default_rng(0)
  for _ in range(20):
    positions = np.sort(rng.choice(len(process), rng.integers(1, 13),
                                   replace=False))
    select = split.select(positions)
    assert len(select) == 2
    for p, chosen in enumerate(select):  # increasing, inside the part
      assert np.all(np.diff(chosen) > 0) and np.all(chosen < part_sizes[p])
    rows = split.positions(select)  # the order a selected pass returns
    np.testing.assert_array_equal(np.sort(rows), positions)
    # The same thing from first principles: a selected pass reads, batch by
    # batch, each process's next `local_bs` chosen examples.
    expected = []
    for b in range(-(-max(map(len, select)) // local_bs)):
      for p, chosen in enumerate(select):
        for i in chosen[b * local_bs:(b + 1) * local_bs]:
          expected.append(np.flatnonzero((process == p) & (index == i))[0])
    np.testing.assert_array_equal(rows, expected)


def test_suite_of_draws_equals_fewshot_suite():
  rng = np.random.default_rng(1)
  train_y = np.repeat(np.arange(4), 12)
  train_x = rng.normal(size=(48, 6)) + train_y[:, None]
  test_y = np.repeat(np.arange(4), 5)
  test_x = rng.normal(size=(20, 6)) + test_y[:, None]
  full = fewshot_lsr.fewshot_suite(train_x, train_y, test_x, test_y, 4,
                                   shots=(1, 3), seeds=(0, 1))
  draws = fewshot_lsr.draw_all_shots(train_y, 4, (1, 3), (0, 1))
  needed = np.unique(np.concatenate(list(draws.values())))
  assert len(needed) < len(train_y)
  sub = train_x[needed]
  got = fewshot_lsr.suite_of_draws(
      draws, lambda idx: sub[np.searchsorted(needed, idx)], train_y, test_x,
      test_y, 4)
  assert list(got) == list(full)  # Same keys in the same order...
  assert got == full              # ...and the same numbers.


@pytest.fixture(scope="module")
def model_and_params():
  model = vit.Model(10, width=16, depth=1, num_heads=2, mlp_dim=32,
                    patch_size=8)
  params = model.init(jax.random.PRNGKey(0),
                      np.zeros((1, 16, 16, 3)))["params"]
  return program.make_predict_fn(model), params


def test_split_labels_are_the_feature_pass_labels():
  data = dict(name="digits", split="train[:300]")
  split = common.split_labels(data, PP, 64, "label")
  mesh = sharding.make_mesh()
  _, y = common.features_and_labels(
      lambda params, batch: batch["image"].reshape(len(batch["image"]), -1),
      None, data, PP, 64, mesh, "label")
  np.testing.assert_array_equal(split.labels, y)
  assert split.part_sizes == (300,) and split.local_batch_size == 64
  with pytest.raises(KeyError, match="'labl'.*'image', 'label'"):
    common.split_labels(data, PP, 64, "labl")


def test_evaluator_matches_the_suite_on_every_train_feature(model_and_params,
                                                             monkeypatch):
  predict_fn, params = model_and_params
  mesh = sharding.make_mesh()
  kw = dict(mesh=mesh, datasets={"d": ("digits", "train[:600]", "test")},
            pp_train=PP, shots=(1, 5, 10), seeds=(0, 1, 2), batch_size=64)
  ev = fewshot_lsr.Evaluator(predict_fn, **kw)

  computed = []  # Real examples whose features each pass computed.
  real = common.features_and_labels

  def counting(*args, **kwargs):
    x, y = real(*args, **kwargs)
    computed.append(len(x))
    return x, y
  monkeypatch.setattr(common, "features_and_labels", counting)
  got = dict(ev.run({"params": params}))
  # The test split (297), then at most 10 shots x 10 classes x 3 seeds.
  assert computed[0] == 297 and computed[1] <= 300, computed
  again = dict(ev.run({"params": params}))  # Labels are read once.
  assert again == got
  monkeypatch.undo()

  # Second implementation: every train example's features, then the suite.
  layer = common.compiled_predict(predict_fn, "out:pre_logits")
  features = lambda p, batch: layer(p, batch["image"])
  data = lambda split: dict(name="digits", split=split)
  train_x, train_y = common.features_and_labels(
      features, params, data("train[:600]"), PP, 64, mesh, "label")
  test_x, test_y = common.features_and_labels(
      features, params, data("test"), PP, 64, mesh, "label")
  want = fewshot_lsr.fewshot_suite(train_x, train_y, test_x, test_y, 10,
                                   shots=(1, 5, 10), seeds=(0, 1, 2))
  assert got == {f"d_{k}": v for k, v in want.items()}
  assert 0.1 < got["d_10shot"] < 1.0  # Not a degenerate probe.


def test_split_labels_over_two_processes(monkeypatch):
  """Each process reads its part; the gathered labels are in pass order.
  (Two processes simulated: this one is process 0 of 2, and the gather
  returns process 1's part as that process would compute it.)"""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from big_vision import input_pipeline  # pylint: disable=g-import-not-at-top
  data = dict(name="digits", split="test[:11]")
  pp = lambda ex: {"label": ex["label"]}

  def part_labels(process_index):
    batches, _ = input_pipeline.make_for_inference(
        data, pp, 4, process_index=process_index, process_count=2)
    return [np.stack([b["label"], b["_mask"].astype(np.int64)])
            for b in batches]

  def gather(local):
    other = np.stack(part_labels(1), axis=1)
    np.testing.assert_array_equal(local, np.stack(part_labels(0), axis=1))
    return np.stack([local, other])

  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(jax, "process_index", lambda: 0)
  monkeypatch.setattr(multihost_utils, "process_allgather", gather)
  split = common.split_labels(data, pp, 4, "label")
  assert split.part_sizes == (6, 5) and split.local_batch_size == 2
  # Parts test[:11] -> [0..5] and [6..10]; batches of 2 per process.
  from big_vision.datasets import digits  # pylint: disable=g-import-not-at-top
  _, labels = digits.load_sklearn_digits()
  part = [labels[1500:1506], labels[1506:1511]]
  want = [part[p][i] for p, i in zip(*common.pass_order((6, 5), 2))]
  np.testing.assert_array_equal(split.labels, want)
  np.testing.assert_array_equal(
      split.process[:6], [0, 0, 1, 1, 0, 0])  # batch 0: p0, p1; batch 1: p0
