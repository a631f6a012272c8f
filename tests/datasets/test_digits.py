"""The embedded `digits` dataset and the TFDS source behind it."""
import numpy as np
import pytest
import tensorflow as tf

from big_vision import datasets
from big_vision.datasets import digits


@pytest.fixture(scope="module")
def sk():
  return digits.load_sklearn_digits()


def _read_all(source, **kw):
  """All examples of `source` as numpy: (ids, labels, decoded images)."""
  ids, labels, images = [], [], []
  for ex in source.get_tfdata(ordered=True, **kw).as_numpy_iterator():
    ids.append(ex["id"])
    labels.append(ex["label"])
    images.append(tf.io.decode_png(ex["image"]).numpy())
  return np.array(ids), np.array(labels), np.array(images)


def test_counts():
  train = datasets.get("digits", "train")
  test = datasets.get("digits", "test")
  assert (train.total_examples, test.total_examples) == (1500, 297)
  assert train.num_examples_per_process(1) == [1500]
  assert test.num_examples_per_process(2) == [149, 148]
  assert sum(test.num_examples_per_process(7)) == 297


def test_matches_sklearn(sk):
  sk_images, sk_labels = sk
  assert sk_images.shape == (1797, 8, 8, 1) and sk_images.dtype == np.uint8
  # Scaling 0..16 -> 0..255 with rounding: 16 -> 255, 8 -> 128 (127.5 up).
  assert sk_images.max() == 255 and set(np.unique(sk_images)) <= {
      round(v * 255 / 16) for v in range(17)}
  for split, expected_ids in (("train", np.arange(1500)),
                              ("test", np.arange(1500, 1797))):
    ids, labels, images = _read_all(datasets.get("digits", split),
                                    process_split=False)
    np.testing.assert_array_equal(ids, expected_ids)  # scikit-learn order.
    np.testing.assert_array_equal(labels, sk_labels[expected_ids])
    assert images.dtype == np.uint8 and images.shape[1:] == (8, 8, 1)
    np.testing.assert_array_equal(images, sk_images[expected_ids])


def test_images_stay_encoded():
  ex = next(iter(datasets.get("digits", "test").get_tfdata(
      ordered=True, process_split=False)))
  assert ex["image"].dtype == tf.string
  assert ex["image"].numpy()[:4] == b"\x89PNG"


@pytest.mark.parametrize("split,expected", [
    ("train[10:20]", np.arange(10, 20)),
    ("train[:1%]", np.arange(15)),
    ("test[-5:]", np.arange(1792, 1797)),
    ("train[1495:]+test[:3]", np.r_[1495:1500, 1500:1503]),
])
def test_split_slicing(split, expected):
  source = datasets.get("digits", split)
  assert source.total_examples == len(expected)
  ids, _, _ = _read_all(source, process_split=False)
  np.testing.assert_array_equal(ids, expected)
  assert len(datasets.get("digits", "train[:99%]").get_tfdata(
      ordered=True, process_split=False)) == 1485


@pytest.mark.parametrize("count", [2, 3])
def test_process_split_disjoint_and_covering(count):
  source = datasets.get("digits", "test")
  parts = [_read_all(source, process_index=i, process_count=count)[0]
           for i in range(count)]
  assert [len(p) for p in parts] == source.num_examples_per_process(count)
  np.testing.assert_array_equal(np.sort(np.concatenate(parts)),
                                np.arange(1500, 1797))


def test_prepare_is_idempotent(tmp_path):
  b1 = datasets.prepare_embedded("digits", str(tmp_path))
  files = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
  b2 = datasets.prepare_embedded("digits", str(tmp_path))
  assert b1.data_dir == b2.data_dir
  assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == files
  src = datasets.get("digits", "test[:4]", data_dir=str(tmp_path))
  assert src.builder.data_dir.startswith(str(tmp_path))
  np.testing.assert_array_equal(_read_all(src, process_split=False)[0],
                                np.arange(1500, 1504))


def test_unknown_dataset_names_choices():
  with pytest.raises(ValueError) as e:
    datasets.get("digitz", "train")
  msg = str(e.value)
  assert "'digitz'" in msg and "digits" in msg  # embedded names listed
  assert "imagefolder" in msg and "jsonl" in msg  # source kinds listed
  assert "not found" in msg or "no TFDS dataset" in msg
  assert "Did you mean 'digits'" in msg


def test_known_tfds_dataset_not_prepared(tmp_path):
  with pytest.raises(ValueError, match=r"not prepared.*prepare_datasets"):
    datasets.get("mnist", "train", data_dir=str(tmp_path))


def test_unknown_split_names_valid_ones():
  with pytest.raises(ValueError, match=r"'validation'.*test, train"):
    datasets.get("digits", "validation")


def test_embedded_takes_no_kwargs():
  with pytest.raises(ValueError, match="no keyword"):
    datasets.get("digits", "train", path="/x")
