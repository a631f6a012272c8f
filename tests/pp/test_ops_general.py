"""Tests for the general pp ops, with exact expected values."""
from big_vision.pp import builder
import numpy as np
import pytest
import tensorflow as tf


def test_keep_preserves_private_keys(run_pp):
  out = run_pp("keep('image', 'labels')", image=[1], labels=2, text="x",
               _mask=True, _id=7)
  assert set(out) == {"image", "labels", "_mask", "_id", "_seed"}


def test_keep_private_key_named_explicitly_and_missing_key(run_pp):
  out = run_pp("keep('a', '_id')", a=1, _id=7, seed=None)
  assert set(out) == {"a", "_id"}
  with pytest.raises(KeyError, match="lables"):
    run_pp("keep('image', 'lables')", image=[1], labels=2)


def test_drop(run_pp):
  out = run_pp("drop('text', 'absent')", image=1, text="x", _mask=True)
  assert set(out) == {"image", "_mask", "_seed"}
  out = run_pp("drop('_mask')", image=1, _mask=True)
  assert set(out) == {"image", "_seed"}


def test_copy(run_pp):
  out = run_pp("copy('image', 'raw')", image=[[1, 2]])
  np.testing.assert_array_equal(out["raw"], [[1, 2]])
  np.testing.assert_array_equal(out["image"], [[1, 2]])


@pytest.mark.parametrize("pp, labels, expected", [
    ("onehot(4)", 2, [0, 0, 1, 0]),
    ("onehot(4, on=0.9, off=0.025)", 1, [0.025, 0.9, 0.025, 0.025]),
    ("onehot(4)", [0, 3, 3], [1, 0, 0, 1]),  # multi-hot, repeats once.
    ("onehot(4)", np.zeros([0], np.int64), [0, 0, 0, 0]),
    ("onehot(3, multi=False)", [0, 2], [[1, 0, 0], [0, 0, 1]]),
    ("onehot(3, on=2, off=-1)", [1, 5], [-1, 2, -1]),  # 5: out of range.
])
def test_onehot(run_pp, pp, labels, expected):
  out = run_pp(pp, labels=labels)
  assert out["labels"].dtype == np.float32
  np.testing.assert_allclose(out["labels"], expected, rtol=1e-6)


def test_onehot_keys(run_pp):
  out = run_pp("onehot(3, key='label', key_result='labels')", label=1)
  np.testing.assert_array_equal(out["labels"], [0, 1, 0])
  assert out["label"] == 1


@pytest.mark.parametrize("pp, fn", [
    ("value_range(-1, 1)", lambda x: x / 127.5 - 1),
    ("value_range(0, 1)", lambda x: x / 255),
    ("value_range(-2, 3, in_min=10, in_max=110)",
     lambda x: (x - 10) / 100 * 5 - 2),
    ("value_range(-2, 3, in_min=10, in_max=110, clip_values=True)",
     lambda x: np.clip((x - 10) / 100 * 5 - 2, -2, 3)),
])
def test_value_range(run_pp, photos, pp, fn):
  img = photos["chelsea"]
  out = run_pp(pp, image=img)["image"]
  assert out.dtype == np.float32 and out.shape == img.shape
  np.testing.assert_allclose(out, fn(img.astype(np.float64)), atol=2e-6)


def test_value_range_key_result(run_pp):
  out = run_pp("value_range(0, 1, key='x', key_result='y')", x=[0, 255])
  np.testing.assert_allclose(out["y"], [0, 1])
  np.testing.assert_array_equal(out["x"], [0, 255])


def test_lookup_dict_list_and_file(run_pp, tmp_path):
  words = ["cat", "dog", "bird"]
  out = run_pp("lookup({'cat': 5, 'dog': 7})", label=words)
  np.testing.assert_array_equal(out["label"], [5, 7, -1])
  assert out["label"].dtype == np.int64
  out = run_pp("lookup(['dog', 'cat'], default=9, key='x', key_result='y')",
               x=words)
  np.testing.assert_array_equal(out["y"], [1, 0, 9])
  path = tmp_path / "classes.txt"
  path.write_text("bird\ncat\ndog\n\n")
  out = run_pp(f"lookup({str(path)!r})", label="dog")
  assert out["label"] == 2


def test_lookup_rejects_duplicates():
  with pytest.raises(ValueError, match="duplicate"):
    builder.get_preprocess_fn("lookup(['a', 'b', 'a'])")


def test_squeeze(run_pp):
  out = run_pp("squeeze('a', 'b')", a=[[1]], b=np.zeros([1, 3, 1]))
  assert out["a"].shape == () and out["b"].shape == (3,)
  out = run_pp("squeeze('b', axis=0)", b=np.zeros([1, 3, 1]))
  assert out["b"].shape == (3, 1)


def test_setdefault(run_pp):
  out = run_pp("setdefault('labels', -1)|setdefault('x', 'new')", x="old")
  assert out["labels"] == -1 and out["x"] == b"old"


def test_choice_single(run_pp):
  texts = np.array([b"a", b"b", b"c", b"d"])
  picks = [run_pp("choice(key='texts')", seed=(0, s), texts=texts)["texts"]
           for s in range(40)]
  assert all(np.shape(p) == () and p in texts for p in picks)
  assert set(picks) == set(texts)  # All get picked eventually.
  again = run_pp("choice(key='texts')", seed=(0, 3), texts=texts)["texts"]
  assert again == picks[3]


def test_choice_n_aligned_keys(run_pp):
  texts = np.array([b"a", b"b", b"c", b"d", b"e"])
  ids = np.arange(5) * 10
  for s in range(10):
    out = run_pp("choice(3, inkey=('texts', 'ids'), outkey=('t', 'i'))",
                 seed=(1, s), texts=texts, ids=ids)
    assert out["t"].shape == (3,) and len(set(out["t"])) == 3
    # Aligned: the same indices picked from both.
    np.testing.assert_array_equal(
        out["i"], [ids[list(texts).index(t)] for t in out["t"]])
    np.testing.assert_array_equal(out["texts"], texts)  # Input untouched.


def test_choice_fewer(run_pp):
  out = run_pp("choice(3, key='x', fewer_ok=True)", x=[1, 2])
  assert sorted(out["x"]) == [1, 2]
  with pytest.raises(tf.errors.InvalidArgumentError, match="fewer than"):
    run_pp("choice(3, key='x')", x=[1, 2])


def test_choice_advances_seed(run_pp):
  out = run_pp("choice(key='x')", seed=(4, 2), x=[1, 2])
  expected = tf.random.experimental.stateless_split(
      tf.constant([4, 2], tf.int64), 2)[0]
  np.testing.assert_array_equal(out["_seed"], expected)


def test_flatten(run_pp):
  fn = builder.get_preprocess_fn("flatten")
  out = fn({"a": {"b": 1, "c": {"d": 2}}, "e": 3})
  assert out == {"a/b": 1, "a/c/d": 2, "e": 3}


@pytest.mark.parametrize("pp, x, expected", [
    ("pad_to_shape((4,), key='t')", [1, 2], [1, 2, 0, 0]),
    ("pad_to_shape((4,), pad_value=-1, key='t', where='before')", [1, 2],
     [-1, -1, 1, 2]),
    ("pad_to_shape((5,), key='t', where='both')", [1, 2], [0, 1, 2, 0, 0]),
    ("pad_to_shape((None, 3), pad_value=7, key='t')", [[1], [2]],
     [[1, 7, 7], [2, 7, 7]]),
    ("pad_to_shape((2,), key='t')", [1, 2], [1, 2]),
])
def test_pad_to_shape(run_pp, pp, x, expected):
  out = run_pp(pp, t=x)
  np.testing.assert_array_equal(out["t"], expected)


def test_pad_to_shape_static_shape_and_errors(run_pp):
  fn = builder.get_preprocess_fn("pad_to_shape((6,), key='t')")
  spec = tf.TensorSpec([None], tf.int32)
  traced = tf.function(lambda t: fn({"t": t})["t"]).get_concrete_function(spec)
  assert traced.output_shapes.as_list() == [6]
  with pytest.raises(tf.errors.InvalidArgumentError, match="larger"):
    run_pp("pad_to_shape((1,), key='t')", t=[1, 2])
  with pytest.raises(ValueError, match="where"):
    builder.get_preprocess_fn("pad_to_shape((1,), where='middle')")
