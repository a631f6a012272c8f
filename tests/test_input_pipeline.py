"""Training/inference pipelines over `digits`, and the device-side helpers."""
import importlib.util
import math
import sys
import threading
import time

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest
import tensorflow as tf

from big_vision import input_pipeline as ip
from big_vision.datasets import digits


def ids_pp(ex):
  """Cheap pp: no decoding, keeps what the tests look at."""
  return {"id": ex["id"], "label": ex["label"], "seed": ex["_seed"]}


def image_pp(ex):
  """Decodes, and applies a stateless random flip driven by `_seed`."""
  img = tf.cast(tf.io.decode_png(ex["image"]), tf.float32)
  flip = tf.random.stateless_uniform([], ex["_seed"]) < 0.5
  img = tf.where(flip, img[:, ::-1], img)
  return {"image": img, "id": ex["id"], "_seed": ex["_seed"]}


def _config(pp=ids_pp, batch_size=50, split="train", **kw):
  return dict(data=dict(name="digits", split=split), batch_size=batch_size,
              pp=pp, shuffle_buffer_size=kw.pop("shuffle_buffer_size", 300),
              **kw)


def _take(ds, n):
  it = ds.as_numpy_iterator()
  return [next(it) for _ in range(n)]


# ----------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------
def test_training_shapes_seed_and_epochs():
  ds, total = ip.training(_config(batch_size=100), seed=5, process_index=0,
                          process_count=1)
  assert total == 1500
  batches = _take(ds, 30)  # Two epochs of 1500.
  assert batches[0]["id"].shape == (100,)
  ids = np.concatenate([b["id"] for b in batches])
  # Each epoch is a permutation of the split, and epochs differ.
  np.testing.assert_array_equal(np.sort(ids[:1500]), np.arange(1500))
  np.testing.assert_array_equal(np.sort(ids[1500:]), np.arange(1500))
  assert (ids[:1500] != ids[1500:]).mean() > 0.9
  assert (ids[:1500] != np.arange(1500)).mean() > 0.9  # Shuffled.
  # The per-example seed contract: [seed * 2**16 + process, position].
  seeds = np.concatenate([b["seed"] for b in batches])
  np.testing.assert_array_equal(seeds[:, 0], 5 * 2**16)
  np.testing.assert_array_equal(seeds[:, 1], np.arange(3000))


def test_training_same_seed_same_batches_other_seed_differs():
  cfg = _config(pp=image_pp, batch_size=32, cache_raw=True)
  a = _take(ip.training(cfg, seed=1, process_index=0, process_count=1)[0], 3)
  b = _take(ip.training(cfg, seed=1, process_index=0, process_count=1)[0], 3)
  c = _take(ip.training(cfg, seed=2, process_index=0, process_count=1)[0], 3)
  for x, y in zip(a, b):
    assert "_seed" not in x  # Dropped after pp.
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert not np.array_equal(a[0]["id"], c[0]["id"])


@pytest.mark.parametrize("cache", [False, True])
def test_training_ignores_tf_global_seed(cache):
  # A colab user calls tf.random.set_seed (hand-called pp ops honour it). The
  # stream must not change, and a global seed of 0 once crashed the shuffle.
  cfg = _config(batch_size=50, cache=cache)
  streams = []
  for global_seed in (None, 0, 5):
    tf.random.set_seed(global_seed)
    try:
      ds, _ = ip.training(cfg, seed=3, process_index=0, process_count=1)
      streams.append(np.concatenate([b["id"] for b in _take(ds, 40)]))
    finally:
      tf.random.set_seed(None)
  assert (streams[0][:1500] != np.arange(1500)).mean() > 0.9  # Shuffled.
  np.testing.assert_array_equal(streams[0], streams[1])
  np.testing.assert_array_equal(streams[0], streams[2])


@pytest.mark.parametrize("start_step", [3, 47])  # 47*32 crosses an epoch.
def test_training_resume_equals_uninterrupted(start_step):
  cfg = _config(pp=image_pp, batch_size=32)
  full = _take(ip.training(cfg, seed=7, process_index=0, process_count=1)[0],
               start_step + 3)
  resumed = _take(ip.training(cfg, seed=7, start_step=start_step,
                              process_index=0, process_count=1)[0], 3)
  for x, y in zip(full[start_step:], resumed):
    np.testing.assert_array_equal(x["id"], y["id"])
    np.testing.assert_array_equal(x["image"], y["image"])  # Same flips too.


def test_training_process_shards_disjoint_and_covering():
  # Global batch 100 -> 50 per process; 15 local batches = one local epoch.
  ids = []
  for pi in range(2):
    ds, total = ip.training(_config(batch_size=100), seed=0, process_index=pi,
                            process_count=2)
    assert total == 1500
    batches = _take(ds, 15)
    assert batches[0]["id"].shape == (50,)
    np.testing.assert_array_equal(batches[0]["seed"][:, 0], pi)
    ids.append(np.concatenate([b["id"] for b in batches]))
  assert len(set(ids[0])) == len(set(ids[1])) == 750
  assert not set(ids[0]) & set(ids[1])
  np.testing.assert_array_equal(np.sort(np.concatenate(ids)), np.arange(1500))


def test_training_errors_before_reading_data():
  with pytest.raises(ValueError, match="multiple of process_count=3"):
    ip.training(_config(batch_size=100), process_index=0, process_count=3)

  def bad_pp(ex):
    return {"x": ex["no_such_key"]}

  with pytest.raises(KeyError, match="no_such_key"):
    ip.training(_config(pp=bad_pp), process_index=0, process_count=1)
  with pytest.raises(ValueError, match="pp must be"):
    ip.training(_config(pp=3), process_index=0, process_count=1)


# ----------------------------------------------------------------------------
# inference
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("batch_size", [1, 7, 32, 297, 500])
def test_inference_every_example_once(batch_size):
  batches, n = ip.make_for_inference(
      dict(name="digits", split="test"), ids_pp, batch_size,
      process_index=0, process_count=1)
  assert n == len(batches) == math.ceil(297 / batch_size)
  batches = list(batches)
  assert len(batches) == n
  ids = np.concatenate([b["id"] for b in batches])
  mask = np.concatenate([b["_mask"] for b in batches])
  assert mask.dtype == bool and ids.shape == (n * batch_size,)
  np.testing.assert_array_equal(mask, np.arange(n * batch_size) < 297)
  np.testing.assert_array_equal(ids[mask], np.arange(1500, 1797))  # Ordered.
  assert (ids[~mask] == 0).all()  # Padding is zeros.


def test_inference_processes_stay_in_lockstep():
  # 5 examples over 2 processes with local batch 2: parts of 3 and 2 examples
  # both give 2 batches; process 1's second batch is fully padded.
  out = []
  for pi in range(2):
    batches, n = ip.make_for_inference(
        dict(name="digits", split="test[:5]"), ids_pp, 4, process_index=pi,
        process_count=2)
    assert n == 2
    out.append(list(batches))
  assert [len(b) for b in out] == [2, 2]
  masks = [[b["_mask"].tolist() for b in bs] for bs in out]
  assert masks == [[[True, True], [True, False]], [[True, True],
                                                   [False, False]]]
  ids = [b["id"][b["_mask"]] for bs in out for b in bs]
  np.testing.assert_array_equal(np.sort(np.concatenate(ids)),
                                np.arange(1500, 1505))


def test_inference_select_reads_only_those_examples_with_their_seeds():
  data = dict(name="digits", split="test[:10]")
  full = list(ip.make_for_inference(data, ids_pp, 4, process_index=0,
                                    process_count=1)[0])
  full_ids = np.concatenate([b["id"] for b in full])[:10]
  full_seeds = np.concatenate([b["seed"] for b in full])[:10]
  batches, n = ip.make_for_inference(data, ids_pp, 4, process_index=0,
                                     process_count=1, select=[[1, 4, 5, 9]])
  batches = list(batches)
  assert n == len(batches) == 1
  np.testing.assert_array_equal(batches[0]["_mask"], [True] * 4)
  np.testing.assert_array_equal(batches[0]["id"], full_ids[[1, 4, 5, 9]])
  # Each example keeps the `_seed` of its place in the split.
  np.testing.assert_array_equal(batches[0]["seed"], full_seeds[[1, 4, 5, 9]])


def test_inference_select_over_processes_stays_in_lockstep():
  # Parts of test[:5] over 2 processes: [0, 1, 2] and [3, 4]. Process 0
  # keeps 3 examples, process 1 one: both give 2 batches of 2.
  select = [[0, 1, 2], [1]]
  out = []
  for pi in range(2):
    batches, n = ip.make_for_inference(
        dict(name="digits", split="test[:5]"), ids_pp, 4, process_index=pi,
        process_count=2, select=select)
    assert n == 2
    out.append(list(batches))
  masks = [[b["_mask"].tolist() for b in bs] for bs in out]
  assert masks == [[[True, True], [True, False]],
                   [[True, False], [False, False]]]
  ids = [b["id"][b["_mask"]].tolist() for bs in out for b in bs]
  assert ids == [[1500, 1501], [1502], [1504], []]


@pytest.mark.parametrize("select, match", [
    ([[2, 1]], "increasing"), ([[0, 10]], r"\[0, 10\)"), ([[-1]], "increasing"),
    ([[0], [1]], "one per process")])
def test_inference_select_errors_name_the_bad_value(select, match):
  with pytest.raises(ValueError, match=match):
    ip.make_for_inference(dict(name="digits", split="test[:10]"), ids_pp, 4,
                          process_index=0, process_count=1, select=select)


def test_inference_images_and_cache_final():
  sk_images, _ = digits.load_sklearn_digits()

  def pp(ex):
    # decode_png has no static shape: padding must take it from the data.
    return {"image": tf.io.decode_png(ex["image"]), "label": ex["label"]}

  kw = dict(process_index=0, process_count=1, cache_final=True)
  batches, n = ip.make_for_inference(
      dict(name="digits", split="test[:10]"), pp, 4, **kw)
  again, _ = ip.make_for_inference(
      dict(name="digits", split="test[:10]"), pp, 4, **kw)
  assert again is batches  # Memoized: later evals replay the cache.
  first, second = list(batches), list(batches)
  images = np.concatenate([b["image"] for b in first])
  np.testing.assert_array_equal(images[:10], sk_images[1500:1510])
  assert n == 3 and images.shape == (12, 8, 8, 1) and (images[10:] == 0).all()
  np.testing.assert_array_equal(
      np.concatenate([b["_mask"] for b in first]), np.arange(12) < 10)
  for x, y in zip(first, second):
    np.testing.assert_array_equal(x["image"], y["image"])


# ----------------------------------------------------------------------------
# device side
# ----------------------------------------------------------------------------
def _sharding():
  assert jax.device_count() == 8, "tests/conftest.py sets 8 CPU devices"
  mesh = jax.make_mesh((8,), ("data",))
  return NamedSharding(mesh, P("data"))


def test_to_global_shards_over_devices():
  sharding = _sharding()
  batch = {"image": np.arange(16 * 3 * 2, dtype=np.float32).reshape(16, 3, 2),
           "_mask": np.arange(16) < 11}
  out = ip.to_global(batch, sharding)
  for k, x in out.items():
    assert isinstance(x, jax.Array) and x.shape == batch[k].shape
    assert x.sharding.is_equivalent_to(sharding, x.ndim)
    assert len(x.addressable_shards) == 8
    for shard in x.addressable_shards:
      assert shard.data.shape[0] == 2
      np.testing.assert_array_equal(np.asarray(shard.data),
                                    batch[k][shard.index])
    np.testing.assert_array_equal(np.asarray(x), batch[k])
  with pytest.raises(ValueError, match="'name'"):
    ip.to_global({"name": np.array([b"a"] * 8, dtype=object)}, sharding)


def test_start_global_yields_all_batches_in_order():
  sharding = _sharding()
  ds, _ = ip.training(_config(batch_size=16), seed=0, process_index=0,
                      process_count=1)
  host = _take(ds, 5)
  dev = list(ip.start_global(iter(host), sharding, n_prefetch=2))
  assert len(dev) == 5
  for h, d in zip(host, dev):
    np.testing.assert_array_equal(np.asarray(d["id"]), h["id"])
    assert len(d["id"].sharding.device_set) == 8
  # Works on a tf.data pipeline directly, lazily (infinite stream).
  it = ip.start_global(ip.as_numpy(ds), sharding)
  np.testing.assert_array_equal(np.asarray(next(it)["id"]), host[0]["id"])


def test_start_global_prepares_the_first_batches_before_they_are_asked_for():
  """The first n_prefetch batches are pulled on a thread at once (a training
  pipeline fills its shuffle buffer while the model initialises); the
  rest only as the consumer goes; an error there surfaces at the first next."""
  sharding = _sharding()
  pulled = []
  two_pulled = threading.Event()

  def source():
    for i in range(5):
      pulled.append(i)
      if len(pulled) == 2:
        two_pulled.set()
      yield {"id": np.full((16,), i, np.int32)}

  it = ip.start_global(source(), sharding, n_prefetch=2)
  assert two_pulled.wait(timeout=60)  # No next() yet.
  time.sleep(0.05)  # A third pull would happen now if it were eager.
  assert pulled == [0, 1]
  assert [int(np.asarray(b["id"])[0]) for b in it] == [0, 1, 2, 3, 4]

  def failing():
    yield {"id": np.zeros((16,), np.int32)}
    raise ValueError("corrupt example 17")

  it = ip.start_global(failing(), sharding, n_prefetch=2)  # Does not raise.
  with pytest.raises(ValueError, match="corrupt example 17"):
    next(it)


@pytest.mark.skipif(importlib.util.find_spec("big_vision.pp.builder") is None,
                    reason="pp builder not available")
def test_real_pp_string():
  pp = ("decode|resize(16)|value_range(-1,1)|"
        "onehot(10, key='label', key_result='labels')|keep('image','labels')")
  sk_images, sk_labels = digits.load_sklearn_digits()
  batches, n = ip.make_for_inference(dict(name="digits", split="test[:6]"),
                                     pp, 4, process_index=0, process_count=1)
  b = next(iter(batches))
  assert n == 2 and sorted(b) == ["_mask", "image", "labels"]
  assert b["image"].shape == (4, 16, 16, 3) and b["image"].dtype == np.float32
  assert -1 <= b["image"].min() and b["image"].max() <= 1
  np.testing.assert_array_equal(b["labels"].argmax(-1), sk_labels[1500:1504])
  np.testing.assert_array_equal(b["labels"].sum(-1), 1)
  # A constant (all-zero) 8x8 image stays -1 after any resize.
  blank = sk_images[1500:1504, 0, 0, 0] == 0  # Corner pixels are background.
  np.testing.assert_allclose(b["image"][blank, 0, 0], -1, atol=1e-5)
  ds, _ = ip.training(_config(pp=pp, batch_size=8), seed=0, process_index=0,
                      process_count=1)
  tb = next(ds.as_numpy_iterator())
  assert tb["image"].shape == (8, 16, 16, 3) and tb["labels"].shape == (8, 10)


# ----------------------------------------------------------------------------
# pp is traced plainly; AutoGraph only for a pp that needs it.
# ----------------------------------------------------------------------------
def test_pp_is_traced_without_autograph_unless_it_needs_it():
  # AutoGraph runs a rewritten copy of a function's source, compiled from a
  # generated file; a plain trace runs the function's own code.
  traced_in = []

  def plain_pp(ex):
    traced_in.append(sys._getframe().f_code.co_filename)  # pylint: disable=protected-access
    return {"id": ex["id"], "label": ex["label"] * 2}

  def branching_pp(ex):  # Python `if` on a tensor: needs AutoGraph.
    traced_in.append(sys._getframe().f_code.co_filename)  # pylint: disable=protected-access
    if ex["label"] > 4:
      label = ex["label"] + 100
    else:
      label = -ex["label"]
    return {"id": ex["id"], "label": label}

  _, sk_labels = digits.load_sklearn_digits()
  for pp, expected in ((plain_pp, lambda y: y * 2),
                       (branching_pp, lambda y: np.where(y > 4, y + 100, -y))):
    del traced_in[:]
    ds, _ = ip.training(_config(pp=pp, batch_size=20, shuffle_buffer_size=0),
                        seed=0, process_index=0, process_count=1)
    b = _take(ds, 1)[0]
    np.testing.assert_array_equal(b["label"], expected(sk_labels[b["id"]]))
    if pp is plain_pp:  # One plain trace, nothing rewritten.
      assert traced_in == [__file__], traced_in
    else:  # The plain trace raised; the AutoGraph copy made the graph.
      assert traced_in[0] == __file__ and traced_in[-1] != __file__, traced_in
    # Inference pipelines go the same way.
    del traced_in[:]
    batches, _ = ip.make_for_inference(dict(name="digits", split="test[:4]"),
                                       pp, 4, process_index=0,
                                       process_count=1)
    b = next(iter(batches))
    np.testing.assert_array_equal(b["label"], expected(sk_labels[1500:1504]))
    assert (traced_in[-1] == __file__) == (pp is plain_pp), traced_in
