"""Random pp ops called by hand (no `_seed`), as in a colab.

Outside the input pipeline an example has no `_seed`; every random op then
draws from TF's global generator: it works, varies from call to call and is
reproducible with `tf.random.set_seed`. Inside the pipeline the per-example
stateless seeds are used exactly as before (the last test, and
tests/test_input_pipeline.py).
"""
from big_vision.pp import builder
from big_vision.pp.registry import Registry
import numpy as np
import tensorflow as tf

# Every random op, in one pp string.
EVERY_RANDOM_OP = (
    "decode_jpeg_and_inception_crop(96)|flip_lr|random_crop(80)"
    "|randaug(2, 10)|autoaugment|inception_crop(64, area_min=20)"
    "|choice(key='texts')|choice(n=2, inkey='labels', outkey='two')")
RANDOM_OPS = {"decode_jpeg_and_inception_crop", "flip_lr", "random_crop",
              "randaug", "autoaugment", "inception_crop", "choice"}


def registered_random_ops():
  names = []
  for full in Registry.names("preprocess_ops."):
    if getattr(Registry.lookup(full), "is_random", False):
      names.append(full.split(".", 1)[1])
  return set(names)


def example(jpeg):
  return {"image": tf.constant(jpeg),
          "texts": tf.constant(["a", "b", "c", "d"]),
          "labels": tf.constant([10, 11, 12, 13, 14])}


def run(fn, jpeg, n):
  outs = [fn(example(jpeg)) for _ in range(n)]
  return [{k: v.numpy() for k, v in o.items()} for o in outs]


def assert_same(a, b):
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_every_random_op_is_in_the_string():
  assert registered_random_ops() == RANDOM_OPS
  for op in RANDOM_OPS:
    assert op in EVERY_RANDOM_OP


def test_every_random_op_by_hand_is_random_and_reproducible(jpegs):
  fn = builder.get_preprocess_fn(EVERY_RANDOM_OP)
  jpeg = jpegs["chelsea"]
  tf.random.set_seed(42)
  first = run(fn, jpeg, 3)
  tf.random.set_seed(42)
  again = run(fn, jpeg, 3)
  assert_same(first, again)
  for out in first:
    assert out["image"].shape == (64, 64, 3) and out["image"].dtype == np.uint8
    assert out["texts"] in (b"a", b"b", b"c", b"d")
    assert out["two"].shape == (2,) and len(set(out["two"])) == 2
    assert set(out["two"]) <= {10, 11, 12, 13, 14}
    assert "_seed" not in out
  # Successive calls differ (fresh draws), and so does another global seed.
  assert not np.array_equal(first[0]["image"], first[1]["image"])
  tf.random.set_seed(7)
  other = run(fn, jpeg, 1)[0]
  assert not np.array_equal(other["image"], first[0]["image"])


def test_colab_example_decode_resize_flip(jpegs, photos):
  fn = builder.get_preprocess_fn("decode|resize(64)|flip_lr")
  tf.random.set_seed(0)
  outs = [fn({"image": jpegs["astronaut"]})["image"].numpy()
          for _ in range(10)]
  plain = builder.get_preprocess_fn("decode|resize(64)")(
      {"image": jpegs["astronaut"]})["image"].numpy()
  flipped = [not np.array_equal(o, plain) for o in outs]
  for o, f in zip(outs, flipped):
    np.testing.assert_array_equal(o, plain[:, ::-1] if f else plain)
  assert 0 < sum(flipped) < 10
  del photos


def test_with_seed_stays_stateless(jpegs):
  # With `_seed` (the input pipeline's case) the global generator is not
  # used: the output is a function of `_seed` alone.
  fn = builder.get_preprocess_fn(EVERY_RANDOM_OP)
  outs = []
  for global_seed in (1, 2):
    tf.random.set_seed(global_seed)
    data = example(jpegs["coffee"])
    data["_seed"] = tf.constant([3, 4], tf.int64)
    outs.append({k: v.numpy() for k, v in fn(data).items()})
  assert_same([outs[0]], [outs[1]])
  data = example(jpegs["coffee"])
  data["_seed"] = tf.constant([3, 5], tf.int64)
  out = fn(data)
  assert not np.array_equal(out["image"].numpy(), outs[0]["image"])
