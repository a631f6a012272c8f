"""Tests for pp-string -> function building and its error reporting."""
from big_vision.pp import builder
from big_vision.pp.registry import Registry
import numpy as np
import pytest
import tensorflow as tf

PP = 'decode|resize(32)|value_range(-1, 1)'


def test_empty_pp_is_identity():
  for pp in ("", None, " | "):
    fn = builder.get_preprocess_fn(pp)
    x = {"a": tf.constant([1, 2]), "_seed": tf.constant([0, 0], tf.int64)}
    out = fn(x)
    assert set(out) == {"a", "_seed"}
    np.testing.assert_array_equal(out["a"], [1, 2])


def test_ops_apply_in_order(pngs, photos):
  fn = builder.get_preprocess_fn(PP + "|keep('image')")
  out = fn({"image": tf.constant(pngs["astronaut"]), "label": 3})
  assert set(out) == {"image"}
  img = out["image"].numpy()
  assert img.shape == (32, 32, 3) and img.dtype == np.float32
  # resize keeps uint8 (rounded), value_range maps 0..255 to -1..1.
  ref = tf.image.resize(photos["astronaut"], (32, 32)).numpy()
  np.testing.assert_allclose(img, np.round(ref) / 127.5 - 1, atol=1e-6)


def test_input_dict_not_modified():
  fn = builder.get_preprocess_fn("copy('a', 'b')|drop('a')")
  x = {"a": tf.constant(1)}
  out = fn(x)
  assert list(x) == ["a"] and list(out) == ["b"]


def test_pipe_inside_string_does_not_split():
  fn = builder.get_preprocess_fn(
      "lookup({'a|b': 1, 'c': 2}, key='t')|setdefault('s', 'x|y')")
  out = fn({"t": tf.constant(["a|b", "c", "zz"])})
  np.testing.assert_array_equal(out["t"], [1, 2, -1])
  assert out["s"].numpy() == b"x|y"


def test_works_in_tf_data(jpegs):
  fn = builder.get_preprocess_fn(
      "decode|inception_crop(24)|flip_lr|value_range(0, 1)")
  ds = tf.data.Dataset.from_tensor_slices(
      {"image": [jpegs["chelsea"]] * 3, "_seed": [[0, 1], [0, 2], [0, 1]]})
  ds = ds.map(lambda d: fn({**d, "_seed": tf.cast(d["_seed"], tf.int64)}))
  outs = [d["image"] for d in ds.as_numpy_iterator()]
  assert [o.shape for o in outs] == [(24, 24, 3)] * 3
  np.testing.assert_array_equal(outs[0], outs[2])  # Same seed, same image.
  assert not np.array_equal(outs[0], outs[1])


@pytest.mark.parametrize("pp, fragments", [
    ("decode|fliplr", ["op #2 'fliplr'", "pp string 'decode|fliplr'",
                       "Did you mean 'flip_lr'"]),
    ("decode|nosuchthing_xyz", ["op #2 'nosuchthing_xyz'", "Available ops:",
                                "resize_small"]),
    ("decode|resize(224, methd='area')", ["op #2", "methd", "Bad arguments",
                                          "signature"]),
    ("resize()", ["op #1 'resize()'", "size"]),
    ("decode|resize(224, method='bogus')", ["op #2", "'bogus'", "bilinear"]),
    ("decode|resize(224", ["op #2", "Cannot parse", "Syntax error"]),
    ("decode|resize(size)", ["op #2", "not a Python literal"]),
    ("decode|resize(224)|central_crop(224)|value_range(-1, 1, key=image)",
     ["op #4", "not a Python literal", "key=\"image\""]),
    ("decode|f(__import__('os'))", ["op #2", "not a Python literal"]),
    ("decode|1 + 2", ["op #2", "Expected a name"]),
    ("randaug(2, -1)", ["op #1", "magnitude"]),
    ("autoaugment('v9')", ["op #1", "'v9'", "'v0'"]),
    ("inception_crop(area_min=50, area_max=10)", ["op #1", "area_min"]),
])
def test_errors_name_the_op_before_any_data(pp, fragments):
  with pytest.raises(ValueError) as e:
    builder.get_preprocess_fn(pp)  # No data is ever passed.
  for f in fragments:
    assert f in str(e.value), (f, str(e.value))


def test_all_ops_registered():
  expected = {
      "keep", "drop", "copy", "onehot", "value_range", "lookup", "squeeze",
      "setdefault", "choice", "flatten", "pad_to_shape", "decode", "resize",
      "resize_small", "resize_long", "central_crop", "random_crop",
      "inception_crop", "decode_jpeg_and_inception_crop", "flip_lr",
      "vgg_value_range", "randaug", "autoaugment",
      # big_vision's names (tests/pp/test_bigvision_compat_ops.py).
      "reshape", "squeeze_last_dim", "concat", "strfmt", "tuplify",
      "rag_tensor", "choice_no_replacement", "coco_captions",
      "clip_i1k_label_names", "i21k_label_names", "clip_value_range"}
  assert expected <= set(builder.available_ops())


def test_without_seed_random_ops_use_tf_global_generator():
  # Called by hand (no `_seed`): TF's global generator, as in big_vision.
  # tests/pp/test_hand_called_random.py covers every random op.
  fn = builder.get_preprocess_fn("flip_lr")
  image = tf.reshape(tf.range(2 * 3 * 1, dtype=tf.int32), [2, 3, 1])
  tf.random.set_seed(3)
  first = [fn({"image": image})["image"].numpy() for _ in range(8)]
  tf.random.set_seed(3)
  again = [fn({"image": image})["image"].numpy() for _ in range(8)]
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  flipped = [bool((a != image.numpy()).any()) for a in first]
  assert 0 < sum(flipped) < 8  # Both outcomes occur in 8 draws.
  assert "_seed" not in fn({"image": image})


def test_runtime_errors_get_op_context():
  fn = builder.get_preprocess_fn("decode|resize(8)")
  with pytest.raises(KeyError) as e:
    fn({"img": tf.constant(b"")})
  assert "op #1 'decode'" in "".join(getattr(e.value, "__notes__", []))


def test_op_must_return_dict():
  Registry.register("preprocess_ops.test_bad_return", replace=True)(
      lambda: (lambda data: [data]))
  try:
    with pytest.raises(ValueError, match="not a dict"):
      builder.get_preprocess_fn("test_bad_return")({})
  finally:
    Registry.unregister("preprocess_ops.test_bad_return")


def test_log_data(caplog):
  import logging  # pylint: disable=g-import-not-at-top
  fn = builder.get_preprocess_fn("resize(8)|value_range", log_data=True)
  with caplog.at_level(logging.INFO):
    fn({"image": tf.zeros([4, 4, 3], tf.uint8)})
  text = caplog.text
  assert "op #1 'resize(8)'" in text and "image: uint8[8, 8, 3]" in text
  assert "image: float32[8, 8, 3]" in text


def test_op_names_parse_without_building():
  """Names in order, '|' inside strings kept, empty pieces skipped; no op is
  built (an unknown op is only a name here), a malformed spec names itself."""
  assert builder.op_names("") == []
  assert builder.op_names(
      "decode|resize(224)||strfmt('a|b {x}')|no_such_op(1)") == [
          "decode", "resize", "strfmt", "no_such_op"]
  with pytest.raises(ValueError, match=r"op #2 'resize\(224' in pp string"):
    builder.op_names("decode|resize(224")
