"""General pp ops: selecting, renaming and reshaping features, labels, lookups.

Each op is a factory `get_<name>(*args, **kw)` registered as
"preprocess_ops.<name>", returning `fn(data: dict) -> dict` on one example.
Keys starting with "_" (`_seed`, `_mask`, `_id`, ...) are pipeline
bookkeeping: `keep` preserves them unless told otherwise.
"""
import collections
import threading
from typing import Any, Sequence

from big_vision.pp import utils
from big_vision.pp.registry import Registry
import numpy as np
from big_vision.datasets.tf_import import tf


def _is_private(key: str) -> bool:
  return key.startswith("_")


@Registry.register("preprocess_ops.keep")
def get_keep(*keys: str):
  """Keeps only `keys` (plus "_"-prefixed bookkeeping keys).

  A listed key that the example lacks is an error: a typo ("lables") would
  otherwise silently drop the labels and fail far away, in the model.
  """
  keys = set(keys)

  def _keep(data):
    missing = keys - set(data)
    if missing:
      raise KeyError(f"keep{tuple(sorted(missing))}: no such feature; "
                     f"features are {sorted(data)}.")
    return {k: v for k, v in data.items() if k in keys or _is_private(k)}

  return _keep


@Registry.register("preprocess_ops.drop")
def get_drop(*keys: str):
  """Removes `keys`; absent keys are ignored (dropping is idempotent)."""
  keys = set(keys)

  def _drop(data):
    return {k: v for k, v in data.items() if k not in keys}

  return _drop


@Registry.register("preprocess_ops.copy")
def get_copy(inkey: str, outkey: str):
  """Copies feature `inkey` to `outkey` (e.g. to keep the raw image)."""

  def _copy(data):
    data[outkey] = data[inkey]
    return data

  return _copy


@Registry.register("preprocess_ops.onehot")
def get_onehot(depth: int, key: str = "labels", key_result: str | None = None,
               multi: bool = True, on: float = 1.0, off: float = 0.0):
  """One-hot (or multi-hot) float32 encoding of integer labels.

  A scalar label gives a [depth] one-hot vector. With `multi=True`, a vector
  of labels (multi-label data such as ImageNet-21k or JFT) gives one
  multi-hot [depth] vector; with `multi=False` it gives [n, depth]. Labels
  outside [0, depth) contribute nothing. `on`/`off` allow label smoothing.
  """

  def _onehot(data):
    labels = tf.convert_to_tensor(data[key])
    if multi and labels.shape.rank == 1:
      hot = tf.reduce_sum(tf.one_hot(labels, depth, dtype=tf.float32), axis=0)
      hot = tf.minimum(hot, 1.0)  # Repeated labels count once.
      x = off + hot * (on - off)
    else:
      x = tf.one_hot(labels, depth, on_value=float(on), off_value=float(off),
                     dtype=tf.float32)
    data[key_result or key] = x
    return data

  return _onehot


@Registry.register("preprocess_ops.value_range")
@utils.InKeyOutKey()
def get_value_range(vmin: float = -1, vmax: float = 1, in_min: float = 0,
                    in_max: float = 255.0, clip_values: bool = False):
  """Linearly maps [in_min, in_max] to [vmin, vmax], as float32."""
  if in_max == in_min:
    raise ValueError(f"value_range: in_min == in_max == {in_min}.")

  def _value_range(x):
    x = tf.cast(x, tf.float32)
    x = (x - in_min) / (in_max - in_min) * (vmax - vmin) + vmin
    if clip_values:
      x = tf.clip_by_value(x, min(vmin, vmax), max(vmin, vmax))
    return x

  return _value_range


@Registry.register("preprocess_ops.lookup")
@utils.InKeyOutKey(indefault="label")
def get_lookup(mapping: dict[Any, int] | Sequence[Any] | str,
               default: int = -1):
  """Maps keys (usually strings) to int64 ids with a static hash table.

  Args:
    mapping: a dict {key: id}; a list (item i -> i); or the path of a text
      file (tf.io.gfile, so gs:// works) with one item per line, the item on
      line i getting id i.
    default: id for keys not in the mapping.
  """
  if isinstance(mapping, str):
    with tf.io.gfile.GFile(mapping, "r") as f:
      lines = f.read().splitlines()
    while lines and not lines[-1].strip():
      lines.pop()  # Tolerate trailing blank lines; inner ones are items.
    mapping = [line.strip() for line in lines]
  if isinstance(mapping, (list, tuple)):
    if len(set(mapping)) != len(mapping):
      dups = sorted({m for m in mapping if mapping.count(m) > 1})
      raise ValueError(f"lookup: duplicate items {dups[:10]}.")
    mapping = {item: i for i, item in enumerate(mapping)}
  if not isinstance(mapping, dict) or not mapping:
    raise ValueError("lookup: mapping must be a non-empty dict, list or file "
                     f"path, got {mapping!r}.")
  keys = list(mapping)
  table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(
          tf.constant(keys), tf.constant([mapping[k] for k in keys], tf.int64)),
      default_value=tf.constant(default, tf.int64))

  def _lookup(x):
    return table.lookup(x)

  return _lookup


@Registry.register("preprocess_ops.squeeze")
def get_squeeze(*keys: str, axis: int | Sequence[int] | None = None):
  """Removes size-1 dimensions (all, or `axis`) of each of `keys`."""
  if not keys:
    raise ValueError("squeeze: name the features to squeeze, e.g. "
                     "squeeze('labels').")

  def _squeeze(data):
    for k in keys:
      data[k] = tf.squeeze(data[k], axis=axis)
    return data

  return _squeeze


@Registry.register("preprocess_ops.setdefault")
def get_setdefault(key: str, value: Any):
  """Sets `data[key] = value` only if the example lacks `key`."""

  def _setdefault(data):
    if key not in data:
      data[key] = tf.constant(value)
    return data

  return _setdefault


@Registry.register("preprocess_ops.choice")
def get_choice(n: int | str | None = None, key: str | Sequence[str] | None = None,
               inkey: str | Sequence[str] | None = None,
               outkey: str | Sequence[str] | None = None,
               fewer_ok: bool = False):
  """Picks random elements along axis 0, e.g. one caption among several.

  Several keys (`inkey=("texts", "tokens")`) are indexed with the same random
  indices, so aligned features stay aligned.

  Args:
    n: None (or "single") picks one element and drops the leading axis; an
      int picks `n`
      distinct elements (in random order), keeping the axis.
    key: sets both `inkey` and `outkey`.
    inkey: feature(s) to pick from.
    outkey: where to write; defaults to `inkey` (in place).
    fewer_ok: with an int `n`, allow inputs with fewer than `n` elements
      (all are returned, shuffled) instead of failing.
  """
  if key is not None and (inkey is not None or outkey is not None):
    raise ValueError("choice: pass either key= or inkey=/outkey=, not both.")
  inkeys = key if key is not None else inkey
  if inkeys is None:
    raise ValueError("choice: name the feature(s) to pick from, e.g. "
                     "choice(key='texts').")
  inkeys = (inkeys,) if isinstance(inkeys, str) else tuple(inkeys)
  outkeys = key if key is not None else (outkey if outkey is not None
                                         else inkeys)
  outkeys = (outkeys,) if isinstance(outkeys, str) else tuple(outkeys)
  if len(outkeys) != len(inkeys):
    raise ValueError(f"choice: {len(inkeys)} inkeys but {len(outkeys)} "
                     "outkeys.")
  if n == "single":  # big_vision's spelling of "one, without the axis".
    n = None
  if n is not None and (not isinstance(n, int) or n < 1):
    raise ValueError(f"choice: n must be None, 'single' or a positive int, "
                     f"got {n!r}.")

  def _choice(data):
    seed = utils.take_seed(data, "choice")
    length = tf.shape(data[inkeys[0]], out_type=tf.int64)[0]
    checks = [tf.debugging.assert_equal(
        tf.shape(data[k], out_type=tf.int64)[0], length,
        message=f"choice: {inkeys} differ in length along axis 0.")
              for k in inkeys[1:]]
    if n is None:
      checks.append(tf.debugging.assert_positive(
          length, message=f"choice: {inkeys[0]!r} is empty."))
      with tf.control_dependencies(checks):
        idx = tf.random.stateless_uniform([], seed, minval=0, maxval=length,
                                          dtype=tf.int64)
    else:
      if not fewer_ok:
        checks.append(tf.debugging.assert_greater_equal(
            length, tf.constant(n, tf.int64),
            message=f"choice: fewer than n={n} elements in {inkeys[0]!r}."))
      with tf.control_dependencies(checks):
        # A random permutation's first n entries: n distinct indices.
        perm = tf.argsort(tf.random.stateless_uniform(
            tf.reshape(length, [1]), seed))
        idx = perm[:n]
    picked = [tf.gather(data[k], idx) for k in inkeys]
    for k, v in zip(outkeys, picked):
      data[k] = v
    return data

  return _choice


get_choice.is_random = True  # Draws a seed (`utils.take_seed`).


@Registry.register("preprocess_ops.flatten")
def get_flatten(sep: str = "/"):
  """Flattens nested feature dicts: {"a": {"b": x}} -> {"a/b": x}.

  TFDS datasets nest features (e.g. "objects/label"); flat keys are what the
  other ops and the input pipeline address.
  """

  def _flatten(data):
    out = {}

    def visit(prefix, value):
      if isinstance(value, dict):
        for k, v in value.items():
          visit(f"{prefix}{sep}{k}" if prefix else k, v)
      else:
        if prefix in out:
          raise ValueError(f"flatten: key {prefix!r} occurs twice.")
        out[prefix] = value

    visit("", data)
    return out

  return _flatten


@Registry.register("preprocess_ops.pad_to_shape")
@utils.InKeyOutKey(indefault="labels")
def get_pad_to_shape(shape: Sequence[int | None], pad_value: Any = 0,
                     where: str = "after"):
  """Pads a tensor with `pad_value` up to `shape` (None/-1: leave that dim).

  Used to give variable-length features (token ids, box lists) a static
  shape so that examples can be batched. A dimension already larger than the
  target is an error, not a silent crop.

  Args:
    shape: target shape, one entry per dimension.
    pad_value: value of the padding.
    where: "after" (default) or "before" the data, or "both" (extra on the
      right when the padding is odd).
  """
  utils.check_choice(where, ("after", "before", "both"), "pad_to_shape where")
  shape = [None if s is None or s < 0 else int(s) for s in shape]

  def _pad(x):
    x = tf.convert_to_tensor(x)
    if x.shape.rank is not None and x.shape.rank != len(shape):
      raise ValueError(f"pad_to_shape: target {shape} has {len(shape)} dims, "
                       f"the feature has shape {x.shape}.")
    cur = tf.shape(x)
    target = tf.stack([cur[i] if s is None else s for i, s in enumerate(shape)])
    total = target - cur
    check = tf.debugging.assert_non_negative(
        total, message=f"pad_to_shape: feature larger than {shape}.")
    with tf.control_dependencies([check]):
      if where == "after":
        before = tf.zeros_like(total)
      elif where == "before":
        before = total
      else:
        before = total // 2
      paddings = tf.stack([before, total - before], axis=1)
      y = tf.pad(x, paddings,
                 constant_values=tf.constant(pad_value, dtype=x.dtype))
    known = x.shape.as_list() if x.shape.rank is not None else [None] * len(
        shape)
    return tf.ensure_shape(
        y, [known[i] if s is None else s for i, s in enumerate(shape)])

  return _pad


@Registry.register("preprocess_ops.clip_value_range")
@utils.InKeyOutKey()
def get_clip_value_range():
  """Standardises a [0, 255] image with CLIP's per-channel mean and std.

  (x - 255 * mean) / (255 * std), mean = (0.48145466, 0.4578275,
  0.40821073), std = (0.26862954, 0.26130258, 0.27577711): the input
  normalisation of OpenAI's CLIP image towers.
  """
  mean = tf.constant([0.48145466, 0.4578275, 0.40821073], tf.float32) * 255
  std = tf.constant([0.26862954, 0.26130258, 0.27577711], tf.float32) * 255
  return lambda x: (tf.cast(x, tf.float32) - mean) / std


@Registry.register("preprocess_ops.reshape")
@utils.InKeyOutKey()
def get_reshape(new_shape: Sequence[int]):
  """Reshapes a feature to `new_shape` (one entry may be -1); keeps dtype."""
  new_shape = [int(d) for d in new_shape]
  return lambda x: tf.reshape(x, new_shape)


@Registry.register("preprocess_ops.squeeze_last_dim")
@utils.InKeyOutKey()
def get_squeeze_last_dim():
  """Removes the last axis, which must have size 1 ([h, w, 1] -> [h, w])."""
  return lambda x: tf.squeeze(x, axis=-1)


@Registry.register("preprocess_ops.concat")
def get_concat(inkeys: Sequence[str], outkey: str | None = None,
               axis: int = -1):
  """Concatenates the features `inkeys` along `axis` into `outkey`.

  `outkey` defaults to the first of `inkeys` (overwritten in place).
  """
  if isinstance(inkeys, str) or not inkeys:
    raise ValueError(f"concat: inkeys must be a non-empty list of feature "
                     f"names, got {inkeys!r}.")
  inkeys = list(inkeys)

  def _concat(data):
    data[outkey or inkeys[0]] = tf.concat([data[k] for k in inkeys], axis)
    return data

  return _concat


def _get_path(data, path, op):
  """data["a/b"], or data["a"]["b"] for nested features."""
  if path in data:
    return data[path]
  node = data
  for part in path.split("/"):
    if not isinstance(node, dict) or part not in node:
      raise KeyError(f"{op}: no feature {path!r}; features are "
                     f"{sorted(data)}.")
    node = node[part]
  return node


@Registry.register("preprocess_ops.tuplify")
def get_tuplify(inkeys: Sequence[str], outkey: str):
  """`data[outkey] = (data[k] for k in inkeys)` as a tuple.

  Keys may address nested features with "/" ("objects/bbox"). For models
  whose input is a tuple (e.g. `(image, text)`).
  """
  inkeys = list(utils.maybe_repeat(inkeys, 1))

  def _tuplify(data):
    data[outkey] = tuple(_get_path(data, k, "tuplify") for k in inkeys)
    return data

  return _tuplify


@Registry.register("preprocess_ops.rag_tensor")
@utils.InKeyOutKey()
def get_rag_tensor():
  """Wraps a feature into a ragged tensor with a leading axis of size 1.

  [n, ...] -> RaggedTensor [1, (n), ...]: lets batches hold features of
  different lengths (`tf.RaggedTensor.from_tensor` needs rank >= 2, hence
  the added axis).
  """
  return lambda x: tf.RaggedTensor.from_tensor(tf.convert_to_tensor(x)[None])


@Registry.register("preprocess_ops.choice_no_replacement")
def get_choice_no_replacement(key: str | Sequence[str] | None = None,
                              inkey: str | Sequence[str] | None = None,
                              outkey: str | Sequence[str] | None = None,
                              seed: int = 0):
  """Picks one element along axis 0, cycling through all before repeating.

  Like `choice(n="single")`, but the k-th time an example (identified by its
  `_id` feature, an int or a string) comes through this op, it gets item
  `perm_e[k % n]`, where `perm_e` is a permutation drawn afresh for each
  pass `e = k // n` over the n items: over n visits every caption of an
  image is seen once. Useful for a few epochs over a small dataset.

  Several keys (`inkey=["texts", "tokens"]`) get the same index. `outkey` may
  contain "{key}", replaced by the input key. The visit counts live in host
  memory of this process (not checkpointed: a resumed run restarts them).
  The permutations are a pure function of (`seed`, `_id`, pass).

  Args:
    key: sets both `inkey` and `outkey`.
    inkey: feature(s) to pick from.
    outkey: where to write (default: in place).
    seed: int seed of the permutations.
  """
  inkeys = list(utils.maybe_repeat(inkey or key, 1))
  if not inkeys or inkeys[0] is None:
    raise ValueError("choice_no_replacement: name the feature(s) to pick "
                     "from, e.g. choice_no_replacement(key='texts').")
  outkeys = list(utils.maybe_repeat(outkey or key or inkeys, len(inkeys)))
  if len(outkeys) != len(inkeys):
    raise ValueError(f"choice_no_replacement: {len(inkeys)} inkeys but "
                     f"{len(outkeys)} outkeys.")
  outkeys = [ok.format(key=ik) for ok, ik in zip(outkeys, inkeys)]
  counts = collections.defaultdict(int)
  lock = threading.Lock()

  def _visit(example_id):
    example_id = example_id.item() if hasattr(example_id, "item") else (
        example_id)
    with lock:
      count = counts[example_id]
      counts[example_id] += 1
    return np.int64(count)

  def _choice(data):
    if "_id" not in data:
      raise KeyError("choice_no_replacement needs an `_id` feature to "
                     f"recognise an example; features are {sorted(data)}.")
    example_id = tf.convert_to_tensor(data["_id"])
    if example_id.dtype == tf.string:
      id_int = tf.strings.to_hash_bucket_fast(example_id, 2**62)
    else:
      id_int = tf.cast(example_id, tf.int64)
    count = tf.numpy_function(_visit, [example_id], tf.int64, stateful=True)
    count = tf.reshape(count, [])
    length = tf.shape(data[inkeys[0]], out_type=tf.int64)[0]
    checks = [tf.debugging.assert_equal(
        tf.shape(data[k], out_type=tf.int64)[0], length,
        message=f"choice_no_replacement: {inkeys} differ in length.")
              for k in inkeys[1:]]
    checks.append(tf.debugging.assert_positive(
        length, message=f"choice_no_replacement: {inkeys[0]!r} is empty."))
    with tf.control_dependencies(checks):
      pass_seed = tf.random.experimental.stateless_fold_in(
          tf.random.experimental.stateless_fold_in(
              tf.constant([seed, 0], tf.int64), id_int), count // length)
      perm = tf.argsort(tf.random.stateless_uniform(
          tf.reshape(length, [1]), pass_seed))
      index = perm[count % length]
    for ik, ok in zip(inkeys, outkeys):
      data[ok] = tf.gather(data[ik], index)
    return data

  return _choice
