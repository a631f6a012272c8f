"""big_vision's pp ops and op-writing helpers, with exact expected values.

The ops that big_vision configs and projects use (reshape, squeeze_last_dim,
concat, strfmt, tuplify, rag_tensor, choice_no_replacement, coco_captions,
clip_i1k_label_names, i21k_label_names, clip_value_range), the helpers of
`pp.utils` (InKeyOutKey with inkey/outkey, maybe_repeat) and registry
lookups of "name(args)" specs.
"""
from big_vision.pp import builder
from big_vision.pp import ops_text
from big_vision.pp import utils
from big_vision.pp.registry import Registry
from big_vision.pp.registry import temporary_ops
import numpy as np
import pytest
import tensorflow as tf


def test_reshape_keeps_dtype(run_pp):
  out = run_pp("reshape((2, 3))", image=np.arange(6, dtype=np.uint8))
  np.testing.assert_array_equal(out["image"], [[0, 1, 2], [3, 4, 5]])
  assert out["image"].dtype == np.uint8
  out = run_pp("reshape([-1], inkey='m', outkey='flat')", m=[[1, 2], [3, 4]])
  np.testing.assert_array_equal(out["flat"], [1, 2, 3, 4])
  np.testing.assert_array_equal(out["m"], [[1, 2], [3, 4]])


def test_squeeze_last_dim(run_pp):
  out = run_pp("squeeze_last_dim", image=[[[1], [2]], [[3], [4]]])
  np.testing.assert_array_equal(out["image"], [[1, 2], [3, 4]])
  with pytest.raises((ValueError, tf.errors.InvalidArgumentError)):
    run_pp("squeeze_last_dim", image=[[1, 2]])


def test_concat(run_pp):
  out = run_pp("concat(['a', 'b'], outkey='c', axis=0)", a=[1, 2], b=[3])
  np.testing.assert_array_equal(out["c"], [1, 2, 3])
  out = run_pp("concat(['a', 'b'])", a=[[1], [2]], b=[[3], [4]])
  np.testing.assert_array_equal(out["a"], [[1, 3], [2, 4]])  # axis=-1.


def test_strfmt(run_pp):
  out = run_pp("strfmt('a photo of {name}, label {label}: {v}')",
               name="cat", label=3, v=[1, 2])
  assert out["text"] == b"a photo of cat, label 3: [1 2]"
  out = run_pp("strfmt('{a}{b}', outkey='t')", a="x|y", b="z")
  assert out["t"] == b"x|yz"
  with pytest.raises(ValueError, match="only plain"):
    builder.get_preprocess_fn("strfmt('{x:.2f}')")
  with pytest.raises(KeyError, match="'nope'"):
    run_pp("strfmt('{nope}')", a="x")


def test_tuplify_with_nested_keys():
  fn = builder.get_preprocess_fn("tuplify(['image', 'objects/label'], 't')")
  out = fn({"image": tf.constant([1, 2]),
            "objects": {"label": tf.constant(7)}})
  assert isinstance(out["t"], tuple) and len(out["t"]) == 2
  np.testing.assert_array_equal(out["t"][0], [1, 2])
  assert int(out["t"][1]) == 7


def test_rag_tensor(run_pp):
  out = builder.get_preprocess_fn("rag_tensor(key='boxes')")(
      {"boxes": tf.constant([[1, 2], [3, 4], [5, 6]])})
  assert isinstance(out["boxes"], tf.RaggedTensor)
  assert out["boxes"].to_list() == [[[1, 2], [3, 4], [5, 6]]]
  del run_pp


def test_choice_no_replacement_cycles_through_all_items():
  texts = tf.constant(["a", "b", "c"])
  toks = tf.constant([[1], [2], [3]])

  def visits(pp, n, example_id=7):
    fn = builder.get_preprocess_fn(pp)
    out = [fn({"texts": texts, "toks": toks, "_id": tf.constant(example_id)})
           for _ in range(n)]
    return ([o["t"].numpy().decode() for o in out],
            [int(o["k"].numpy()[0]) for o in out])

  pp = "choice_no_replacement(inkey=['texts', 'toks'], outkey=['t', 'k'])"
  picks, toks_picked = visits(pp, 9)
  for p in range(3):  # Every pass of 3 visits sees each caption once.
    assert sorted(picks[3 * p:3 * p + 3]) == ["a", "b", "c"]
  # Aligned keys stay aligned: caption "a" <-> token 1, ...
  assert [ord(t) - ord("a") + 1 for t in picks] == toks_picked
  # A pure function of (seed, id, pass): a fresh op replays it.
  assert visits(pp, 9)[0] == picks
  other = [visits(f"{pp[:-1]}, seed={s})", 9)[0] for s in range(1, 6)]
  assert any(o != picks for o in other)
  # String ids work; "{key}" placeholders in outkey.
  fn = builder.get_preprocess_fn(
      "choice_no_replacement(key='texts')|"
      "choice_no_replacement(inkey='toks', outkey='{key}_one')")
  out = fn({"texts": texts, "toks": toks, "_id": tf.constant("img1")})
  assert out["texts"].numpy() in (b"a", b"b", b"c")
  assert out["toks_one"].shape == (1,)
  with pytest.raises(KeyError, match="_id"):
    builder.get_preprocess_fn("choice_no_replacement(key='texts')")(
        {"texts": texts})


def test_choice_single_is_big_vision_spelling(run_pp):
  a = run_pp("choice(n='single', key='texts')", texts=["x", "y", "z"],
             seed=(1, 2))
  b = run_pp("choice(key='texts')", texts=["x", "y", "z"], seed=(1, 2))
  assert a["texts"] == b["texts"] and a["texts"] in (b"x", b"y", b"z")


def test_coco_captions():
  fn = builder.get_preprocess_fn("coco_captions")
  out = fn({"captions": {"id": tf.constant([1, 2]),
                         "text": tf.constant(["A dog.", "Two cats."])}})
  assert out["captions"].numpy().tolist() == [b"A dog.", b"Two cats."]
  out = builder.get_preprocess_fn("flatten|coco_captions(outkey='texts')")(
      {"captions": {"text": tf.constant(["x"])}})
  assert out["texts"].numpy().tolist() == [b"x"]


def test_clip_i1k_label_names(run_pp, tmp_path):
  out = run_pp("clip_i1k_label_names", label=[0, 1, 999])
  assert out["labels"].tolist() == [b"tench", b"goldfish", b"toilet tissue"]
  names = tmp_path / "names.txt"
  names.write_text("".join(f"class {i}\n" for i in range(1000)))
  out = run_pp(f"clip_i1k_label_names(names={str(names)!r})", label=42)
  assert out["labels"] == b"class 42"


def test_i21k_label_names(run_pp, tmp_path, monkeypatch):
  names = tmp_path / "lemmas.txt"
  names.write_text("organism, being\nbenthos\nheterotroph\n")
  out = run_pp(f"i21k_label_names(names={str(names)!r})", label=[1, 0, 2])
  assert out["labels"].tolist() == [b"benthos", b"organism", b"heterotroph"]
  out = run_pp("i21k_label_names(names=['u', 'v'], outkey='n')", label=1)
  assert out["n"] == b"v"
  assert ops_text.I21K_NAMES_URL.startswith("gs://")
  missing = str(tmp_path / "offline" / "lemmas.txt")
  monkeypatch.setattr(ops_text, "I21K_NAMES_URL", missing)
  with pytest.raises(ValueError, match="cannot read the class names from "
                     + missing):
    builder.get_preprocess_fn("i21k_label_names")


def test_clip_value_range(run_pp):
  mean = np.array([0.48145466, 0.4578275, 0.40821073]) * 255
  std = np.array([0.26862954, 0.26130258, 0.27577711]) * 255
  img = np.array([[[0, 128, 255], [255, 255, 255]]], np.uint8)
  out = run_pp("clip_value_range", image=img)
  np.testing.assert_allclose(out["image"], (img - mean) / std, rtol=1e-5)
  assert out["image"].dtype == np.float32


def test_maybe_repeat():
  assert utils.maybe_repeat("texts", 2) == ("texts", "texts")
  assert utils.maybe_repeat(3, 3) == (3, 3, 3)
  assert utils.maybe_repeat(["a", "b"], 1) == ["a", "b"]
  assert utils.maybe_repeat((1, 2), 5) == (1, 2)


def test_big_vision_style_op_with_inkey_outkey_and_with_data():
  # Written as a big_vision user writes an op.
  @Registry.register("preprocess_ops.test_bv_scale", replace=True)
  @utils.InKeyOutKey()
  def get_scale(factor=2):
    def _scale(x):
      return x * factor
    return _scale

  @Registry.register("preprocess_ops.test_bv_add_other", replace=True)
  @utils.InKeyOutKey(indefault="a", outdefault="sum", with_data=True)
  def get_add_other(other="b"):
    def _add(x, data):
      return x + data[other]
    return _add

  try:
    fn = builder.get_preprocess_fn(
        "test_bv_scale(3)|test_bv_scale(inkey='x', outkey='y')"
        "|test_bv_scale(10, key='z')|test_bv_add_other")
    out = fn({"image": tf.constant(1), "x": tf.constant(5),
              "z": tf.constant(2), "a": tf.constant(4), "b": tf.constant(6)})
    assert int(out["image"]) == 3 and int(out["x"]) == 5
    assert int(out["y"]) == 10 and int(out["z"]) == 20
    assert int(out["sum"]) == 10
    # Only inkey given: written to the default output key, as in big_vision.
    out = builder.get_preprocess_fn("test_bv_scale(inkey='x')")(
        {"x": tf.constant(4), "image": tf.constant(0)})
    assert int(out["image"]) == 8 and int(out["x"]) == 4
    with pytest.raises(KeyError, match="'nope'"):
      builder.get_preprocess_fn("test_bv_scale(inkey='nope')")(
          {"image": tf.constant(1)})
  finally:
    Registry.unregister("preprocess_ops.test_bv_scale")
    Registry.unregister("preprocess_ops.test_bv_add_other")


def test_registry_lookup_of_call_specs():
  factory = Registry.lookup("preprocess_ops.value_range(0, 1)")
  out = factory()({"image": tf.constant([0.0, 51.0, 255.0])})
  np.testing.assert_allclose(out["image"], [0.0, 0.2, 1.0], rtol=1e-6)
  factory = Registry.lookup("preprocess_ops.value_range(0, 1)",
                            kwargs_extra={"key": "x"})
  out = factory()({"x": tf.constant([255.0])})
  np.testing.assert_allclose(out["x"], [1.0])
  plain = Registry.lookup("preprocess_ops.value_range")
  assert plain is Registry.global_registry()["preprocess_ops.value_range"]
  with pytest.raises(ValueError, match="value_rnage.*value_range"):
    Registry.lookup("preprocess_ops.value_rnage(0, 1)")


def test_temporary_ops():
  with temporary_ops(test_double=lambda: lambda d: {k: 2 * v
                                                     for k, v in d.items()}):
    out = builder.get_preprocess_fn("test_double|test_double")(
        {"a": tf.constant(3)})
    assert int(out["a"]) == 12
  assert "test_double" not in builder.available_ops()
  with pytest.raises(ValueError, match="already registered"):
    with temporary_ops(resize=lambda: None):
      pass
