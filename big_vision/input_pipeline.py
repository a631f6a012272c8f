"""Input pipelines: source -> this process's part -> pp -> batches -> devices.

Training (`training`): an infinite, shuffled stream of per-process batches
that is an exact function of (seed, data, process index/count):

  source(ordered, this process's part) -> [cache] -> per-epoch shuffle(seed, e)
  -> positions -> skip(start_step * local_batch) -> + _seed -> pp -> batch

* Shuffling is done one epoch at a time, each epoch with its own fixed seed,
  so the stream never depends on thread timing, and resuming at step s skips
  whole epochs without reading them and then only the raw (still encoded)
  examples of the current epoch, never decoding them.
* Every example gets `_seed` (int64 [2]) = [seed * 2**16 + process_index,
  position in this process's stream] before pp. Random pp ops derive their
  randomness from it (stateless), so resumed runs see the same augmentations
  as uninterrupted ones. The pipeline drops `_seed` after pp.

Inference (`make_for_inference`): every example exactly once, in order, the
last batch zero-padded, with a boolean `_mask` marking real examples; every
process yields the same number of batches (fully masked ones at the end if
its part is shorter) so multi-host jitted evals stay in lockstep.

Device side: `to_global` turns per-process numpy batches into global
jax.Arrays, `start_global` does that with a small look-ahead (device
prefetch) so host->device copies overlap with compute.
"""
import collections
import concurrent.futures
import itertools
import math
import re
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import jax
import numpy as np
from big_vision.datasets.tf_import import tf

from big_vision import datasets
from big_vision import utils
from big_vision.datasets import core as ds_core

PpFn = Callable[[dict], dict]
# make_for_inference(cache_final=True) pipelines, see there.
_CACHED_INFERENCE: dict[tuple, tuple["InferenceBatches", int]] = {}
SEED_KEY = "_seed"
MASK_KEY = "_mask"
# Every map of this module traces its function plainly, AutoGraph only if
# needed (a few seconds per launch; ds_core.map_traced_plainly says why).
_map = ds_core.map_traced_plainly


def _as_dict(x) -> dict:
  return x.to_dict() if hasattr(x, "to_dict") else dict(x)


def _get(config, key, default=None):
  return config.get(key, default) if hasattr(config, "get") else getattr(
      config, key, default)


def get_pp_fn(pp: str | PpFn) -> PpFn:
  """A pp string is built by big_vision.pp.builder; a callable is used as is."""
  if isinstance(pp, str):
    from big_vision.pp import builder  # pylint: disable=g-import-not-at-top
    return builder.get_preprocess_fn(pp)
  if callable(pp):
    return pp
  raise ValueError(f"pp must be a pp string like 'decode|resize(224)' or a "
                   f"function dict -> dict, got {pp!r}.")


def _local_batch_size(batch_size: int, process_count: int) -> int:
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(f"Global batch_size={batch_size} must be a positive "
                     f"multiple of process_count={process_count}.")
  return batch_size // process_count


def _apply_pp(pp_fn: PpFn):
  """pp, then drop the per-example seed (pp may have consumed it already)."""

  def fn(ex):
    out = pp_fn(ex)
    if not isinstance(out, Mapping):
      raise ValueError(f"pp must return a dict, returned {type(out)}.")
    out = dict(out)
    out.pop(SEED_KEY, None)
    return out

  return fn


def _deterministic_options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  return options


def _epoch_seed_base(seed: int, process_index: int) -> int:
  """Shuffle seed of epoch e is base + e; distinct per (seed, process)."""
  return ((int(seed) * 65_537 + int(process_index)) * 2**20) % 2**62


def _seeded_shuffle(ds: tf.data.Dataset, buffer_size: int,
                    seed) -> tf.data.Dataset:
  """`ds.shuffle` whose order depends on `seed` alone, never on TF's global seed.

  TF mixes the global seed (`tf.random.set_seed`, which users call in
  colabs and which hand-called pp ops honour) into every op seed. The
  training stream must not change with it, and with a global seed of 0 a
  tensor op seed (ours: base + epoch) even fails inside TF's seed logic. So
  the graph-level seed is cleared while the shuffle op is created; it is
  then (TF's default graph seed, `seed`) whatever the caller has set.
  """
  graph = tf.compat.v1.get_default_graph()
  saved = graph.seed
  graph.seed = None
  try:
    return ds.shuffle(buffer_size, seed=seed, reshuffle_each_iteration=False)
  finally:
    graph.seed = saved


def training(input_config, *, seed: int = 0, start_step: int = 0,
             process_index: int | None = None,
             process_count: int | None = None
             ) -> tuple[tf.data.Dataset, int]:
  """The infinite training stream of this process's batches.

  Args:
    input_config: mapping (or ConfigDict) with `data` (kwargs of
      datasets.get: name, split, data_dir, ...), `batch_size` (GLOBAL),
      `pp` (pp string or callable), optional `shuffle_buffer_size` (50_000;
      0 disables), `cache_raw` (False: cache this process's raw examples in
      memory), `cache` (False: cache this process's preprocessed examples
      in memory, as big_vision's `cache`: each example is preprocessed once,
      with its first-epoch `_seed`, so random augmentations are frozen; later
      epochs reshuffle the cached examples), `prefetch` (2 batches).
    seed: the run's seed; fixes the shuffle and `_seed` of every example.
    start_step: number of batches already consumed (resume).
    process_index, process_count: default to jax's.

  Returns:
    (dataset of dicts of [batch_size // process_count, ...] tensors,
     total number of examples in the split over all processes).
  """
  process_index, process_count = ds_core.process_info(process_index,
                                                      process_count)
  local_bs = _local_batch_size(int(input_config["batch_size"]), process_count)
  # Build pp first: a bad pp string fails before any data is touched.
  pp_fn = _apply_pp(get_pp_fn(input_config["pp"]))
  source = datasets.get(**_as_dict(input_config["data"]))
  n_local = source.num_examples_per_process(process_count)[process_index]
  if n_local == 0:
    raise ValueError(f"Process {process_index} of {process_count} has no "
                     f"training examples in {_as_dict(input_config['data'])}.")

  raw = source.get_tfdata(ordered=True, process_split=True,
                          process_index=process_index,
                          process_count=process_count)
  if _get(input_config, "cache_raw", False):
    raw = raw.cache()
  buffer_size = int(_get(input_config, "shuffle_buffer_size", 50_000) or 0)
  seed_base = _epoch_seed_base(seed, process_index)

  def epoch(e):
    ds = raw
    if buffer_size > 1:
      ds = _seeded_shuffle(ds, min(buffer_size, n_local), seed_base + e)
    positions = tf.data.Dataset.range(e * n_local, (e + 1) * n_local)
    return tf.data.Dataset.zip(positions, ds)

  seed_hi = tf.constant(int(seed) * 2**16 + process_index, tf.int64)

  def add_seed(position, ex):
    return {**ex, SEED_KEY: tf.stack([seed_hi, position])}

  def raw_stream(start):
    """Raw examples (+ `_seed`) from stream position `start` on."""
    first_epoch, offset = divmod(start, n_local)
    ds = tf.data.Dataset.counter(first_epoch).flat_map(epoch)
    ds = ds.skip(offset)  # Raw examples only: nothing decoded yet.
    return _map(ds, add_seed)

  start = int(start_step) * local_bs
  ds = raw_stream(start)
  skip_corrupt = bool(_get(input_config, "skip_corrupt", False))
  max_consecutive = int(_get(input_config, "max_consecutive_corrupt", None)
                        or MAX_CONSECUTIVE_CORRUPT)
  cache_final = bool(_get(input_config, "cache", False))
  if cache_final and skip_corrupt:
    raise ValueError("config.input.cache and config.input.skip_corrupt "
                     "cannot be combined; use cache_raw instead of cache.")
  if cache_final:
    final = _map(tf.data.Dataset.zip(tf.data.Dataset.range(n_local), raw),
                 add_seed)
    final = _map(final, pp_fn, num_parallel_calls=tf.data.AUTOTUNE,
                 deterministic=True).cache()

    def final_epoch(e):
      if buffer_size > 1:
        return _seeded_shuffle(final, min(buffer_size, n_local),
                               seed_base + e)
      return final

    first_epoch, offset = divmod(start, n_local)
    ds = tf.data.Dataset.counter(first_epoch).flat_map(final_epoch)
    ds = ds.skip(offset).batch(local_bs, drop_remainder=True)
  elif skip_corrupt:
    ds = _pp_batches_skipping_corrupt(ds, pp_fn, local_bs, start)
  else:
    ds = _map(ds, pp_fn, num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True)
    ds = ds.batch(local_bs, drop_remainder=True)
  prefetch = _get(input_config, "prefetch", 2)
  if prefetch:  # -1 is tf.data.AUTOTUNE.
    ds = ds.prefetch(int(prefetch))
  ds = ds.with_options(_deterministic_options())
  # What `as_numpy` needs to name a corrupt example (see _Stream).
  ds._bv_stream = _Stream(  # pylint: disable=protected-access
      raw_stream=raw_stream, pp_fn=pp_fn, local_bs=local_bs,
      start_step=int(start_step), n_local=n_local,
      data=_as_dict(input_config["data"]), skip_corrupt=skip_corrupt,
      max_consecutive=max_consecutive)
  return ds, source.total_examples


# ----------------------------------------------------------------------------
# Corrupt examples (undecodable images, ...) in the training stream.
# ----------------------------------------------------------------------------
# By default the first example whose pp fails stops training with a
# CorruptExampleError that names it (source id / file name, stream position,
# step). With `config.input.skip_corrupt=True` such examples are skipped and
# counted instead. Skipping keeps exact resume: each batch is still made from
# the same `local_bs` stream positions, the failed rows are replaced by
# repeats of the batch's good rows, so batch b always covers positions
# [start + b * local_bs, start + (b + 1) * local_bs) whatever failed before.
# (Only a batch whose every example fails is dropped, with a warning.)
# More than `config.input.max_consecutive_corrupt` failures in a row (a pp
# bug, a wrong decoder, unreadable storage: not corrupt examples) stop
# training with a CorruptExampleError that quotes the first failure.
MAX_CONSECUTIVE_CORRUPT = 100
CORRUPT_KEY = "_corrupt_positions"  # [local_bs] int64: -1, or a failed position.
_POSITION_KEY = "_position"
_WINDOW_KEY = "_window_start"  # [local_bs] int64: the batch's first position.
_ID_KEYS = ("id", "tfds_id", "file_name", "filename", "image/filename", "path",
            "key", "image_id")
_MAX_NAMED = 10  # Corrupt examples named in warnings; the rest are counted.


class CorruptExampleError(ValueError):
  """A training example that pp cannot process (e.g. an undecodable image)."""


def _pp_batches_skipping_corrupt(ds, pp_fn, local_bs: int, start: int):
  """Batches of `local_bs` consecutive positions; failed examples replaced."""

  def keep_position(ex):
    out = pp_fn(ex)
    out[_POSITION_KEY] = ex[SEED_KEY][1]
    return out

  def fill(batch):
    batch = dict(batch)
    pos = batch.pop(_POSITION_KEY)  # [k] positions that survived pp, k >= 1.
    idx = tf.range(local_bs) % tf.shape(pos)[0]
    out = {k: tf.gather(v, idx) for k, v in batch.items()}
    first = start + (pos[0] - start) // local_bs * local_bs
    window = first + tf.range(local_bs, dtype=tf.int64)
    ok = tf.reduce_any(window[:, None] == pos[None, :], axis=1)
    out[CORRUPT_KEY] = tf.where(ok, tf.constant(-1, tf.int64), window)
    out[_WINDOW_KEY] = tf.fill([local_bs], first)
    return out

  def window_to_batch(window):
    examples = tf.data.Dataset.zip(window)
    survivors = _map(examples, keep_position,
                     num_parallel_calls=tf.data.AUTOTUNE,
                     deterministic=True).ignore_errors()
    specs = survivors.element_spec

    def all_failed(seed):
      # Same structure as `fill`'s output, every row marked as failed: the
      # host then sees (and counts) the failures instead of waiting forever
      # for a batch that a pp failing on every example would never make.
      first = seed[1]
      out = {k: _empty_rows(spec, local_bs) for k, spec in specs.items()
             if k != _POSITION_KEY}
      out[CORRUPT_KEY] = first + tf.range(local_bs, dtype=tf.int64)
      out[_WINDOW_KEY] = tf.fill([local_bs], first)
      return out
    marker = _map(window[SEED_KEY].take(1), all_failed)
    # Exactly one element per window: the batch, or the all-failed marker.
    return _map(survivors.batch(local_bs), fill).concatenate(marker).take(1)

  return ds.window(local_bs, drop_remainder=True).interleave(
      window_to_batch, cycle_length=4, block_length=1,
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _empty_rows(spec, rows: int):
  """`rows` placeholder rows for a (possibly nested) pp output spec."""
  def one(s):
    shape = [rows] + [d if d is not None else 0 for d in s.shape.as_list()]
    if s.dtype == tf.string:
      return tf.fill(shape, "")
    return tf.zeros(shape, s.dtype)
  return tf.nest.map_structure(one, spec)


def _example_ids(ex) -> str:
  parts = []
  for k in _ID_KEYS:
    if k in ex:
      v = np.asarray(ex[k])
      if v.ndim == 0:
        v = v.item()
        parts.append(f"{k}={v.decode(errors='replace') if isinstance(v, bytes) else v!r}")
  return ", ".join(parts)


class _Stream:
  """Enough of a training pipeline to re-read (raw) any of its positions."""

  def __init__(self, *, raw_stream, pp_fn, local_bs, start_step, n_local,
               data, skip_corrupt, max_consecutive=MAX_CONSECUTIVE_CORRUPT):
    self.raw_stream = raw_stream
    self.pp_fn = pp_fn
    self.local_bs = local_bs
    self.start_step = start_step
    self.n_local = n_local
    self.data = data
    self.skip_corrupt = skip_corrupt
    self.max_consecutive = max_consecutive

  def describe(self, position: int, ex=None, error=None) -> str:
    step = position // self.local_bs + 1
    row = position % self.local_bs
    epoch, index = divmod(position, self.n_local)
    ids = _example_ids(ex) if ex is not None else ""
    s = (f"training example {ids + ' ' if ids else ''}of {self.data} "
         f"(this process's stream position {position}: epoch {epoch}, "
         f"#{index} of the shuffled epoch; row {row} of the batch of step "
         f"{step})")
    if error is not None:
      msg = " ".join(str(getattr(error, "message", error)).split())
      msg = re.sub(r"\{\{[^}]*\}\}\s*", "", msg)  # TF's internal node names.
      s += f": {type(error).__name__}: {msg[:500]}"
    return s

  def find_failures(self, first: int, count: int, limit: int = 1):
    """[(position, raw example, error)] of examples whose pp fails."""
    out = []
    raw = self.raw_stream(first).take(count)
    for i, ex in enumerate(raw):
      try:
        self.pp_fn(ex)
      except Exception as e:  # pylint: disable=broad-except
        out.append((first + i, {k: v.numpy() for k, v in ex.items()}, e))
        if len(out) >= limit:
          break
    return out

  def corrupt_error(self, batch_index: int, error) -> Exception:
    """The error to raise when batch `batch_index` (0-based) failed."""
    first = (self.start_step + batch_index) * self.local_bs
    # The failure surfaces at its batch; look one batch further to be safe.
    try:
      found = self.find_failures(first, 2 * self.local_bs)
    except Exception:  # pylint: disable=broad-except
      found = []
    if not found:
      return error  # Not a per-example pp failure: re-raise as is.
    position, ex, e = found[0]
    return CorruptExampleError(
        f"Cannot preprocess {self.describe(position, ex, e)}. Fix or remove "
        "the example, or set config.input.skip_corrupt=True to skip and "
        "count such examples.")


class _NumpyBatches:
  """Iterator of numpy batches that names corrupt examples (see above)."""

  def __init__(self, ds, stream: "_Stream | None"):
    self._it = ds.as_numpy_iterator()
    self._stream = stream
    self._index = 0
    self.num_skipped = 0
    self.consecutive_skipped = 0  # Failed examples since the last good one.
    self._run_start = None  # Stream position of the first of them.

  def __iter__(self):
    return self

  def __next__(self):
    while True:
      try:
        batch = next(self._it)
      except tf.errors.OpError as e:
        if self._stream is None:
          raise
        raise self._stream.corrupt_error(self._index, e) from e
      self._index += 1
      corrupt = batch.pop(CORRUPT_KEY, None)
      first = batch.pop(_WINDOW_KEY, None)
      if corrupt is None:
        return batch
      self._count(corrupt)
      if not (corrupt >= 0).all():
        return batch
      from absl import logging  # pylint: disable=g-import-not-at-top
      first = int(first[0])
      logging.warning(
          "Every example at stream positions %d..%d failed pp: that whole "
          "batch was dropped, so from here on a resumed run will not see "
          "the same batches as an uninterrupted one.", first,
          first + self._stream.local_bs - 1)

  def _describe_failure(self, position: int) -> str:
    try:
      found = self._stream.find_failures(position, 1)
    except Exception:  # pylint: disable=broad-except
      found = []
    return self._stream.describe(position,
                                 *(found[0][1:] if found else (None, None)))

  def _count(self, positions):
    bad = []
    for p in positions:  # In stream order: the run of failures so far.
      if p < 0:
        self.consecutive_skipped = 0
        continue
      bad.append(int(p))
      self.num_skipped += 1
      self.consecutive_skipped += 1
      if self.consecutive_skipped == 1:
        self._run_start = int(p)
      if self.consecutive_skipped > self._stream.max_consecutive:
        raise CorruptExampleError(
            f"{self.consecutive_skipped} consecutive training examples "
            "failed pp (config.input.skip_corrupt=True skips at most "
            f"config.input.max_consecutive_corrupt="
            f"{self._stream.max_consecutive} in a row): this looks like a "
            "bug in config.input.pp or an unreadable source, not corrupt "
            "examples. The first of them: "
            f"{self._describe_failure(self._run_start)}")
    if not bad:
      return
    first_number = self.num_skipped - len(bad) + 1
    named = [self._describe_failure(p) for i, p in enumerate(bad)
             if first_number + i <= _MAX_NAMED]
    from absl import logging  # pylint: disable=g-import-not-at-top
    logging.warning(
        "Skipped %d corrupt training example(s) (config.input.skip_corrupt"
        "=True; %d so far)%s", len(bad), self.num_skipped,
        (": " + "; ".join(named)) if named else ".")


def as_numpy(ds: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
  """Iterator over a dataset's elements as (dicts of) numpy arrays.

  For a `training` dataset, a failing example raises CorruptExampleError
  naming it, and (with skip_corrupt) skipped ones are counted in the
  iterator's `num_skipped` and logged.
  """
  return _NumpyBatches(ds, getattr(ds, "_bv_stream", None))


class InferenceBatches:
  """Re-iterable numpy batches of an inference pipeline; len() = num_batches."""

  def __init__(self, dataset: tf.data.Dataset, num_batches: int):
    self.dataset = dataset
    self.num_batches = num_batches

  def __len__(self):
    return self.num_batches

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self.dataset.prefetch(2).as_numpy_iterator()


def make_for_inference(data_config, pp: str | PpFn, batch_size: int, *,
                       process_index: int | None = None,
                       process_count: int | None = None,
                       cache_final: bool = False,
                       select: Sequence[Sequence[int]] | None = None
                       ) -> tuple[InferenceBatches, int]:
  """Ordered, padded, masked per-process batches covering a split once.

  Args:
    data_config: kwargs of datasets.get (name, split, data_dir, ...).
    pp: pp string or callable; all examples must have the same output shapes
      (they are batched); padding rows are zeros of those shapes.
    batch_size: GLOBAL batch size, a multiple of process_count.
    process_index, process_count: default to jax's.
    cache_final: keep the preprocessed batches in memory, for evaluators
      that run many times over a small split. The pipeline is memoized on
      (data_config, pp, batch_size, process), so calling this again with
      the same arguments (a string pp, or the same pp function object)
      returns the cached batches instead of recomputing them.
    select: only these examples: for every process (the same list on every
      process), the increasing indices of the examples to read within that
      process's part of the split. Skipped examples are read but neither
      decoded nor preprocessed, and a kept one gets the `_seed` it has
      without `select` (so random pp ops give it the same output). The
      batches then cover the selected examples once, in the same order
      and padded the same way as the full split's.

  Returns:
    (iterable over dicts of numpy [batch_size // process_count, ...] with a
     bool `_mask`, number of batches: the same on every process).
  """
  process_index, process_count = ds_core.process_info(process_index,
                                                      process_count)
  if cache_final:
    if select is not None:
      raise ValueError("make_for_inference: cache_final and select cannot be "
                       "combined (the cache is of the whole split).")
    key = (repr(sorted(_as_dict(data_config).items())), pp, int(batch_size),
           process_index, process_count)
    if key not in _CACHED_INFERENCE:
      batches, num_batches = make_for_inference(
          data_config, pp, batch_size, process_index=process_index,
          process_count=process_count, cache_final=False)
      # Filled by the first complete iteration, replayed by later ones.
      cached = InferenceBatches(batches.dataset.cache(), num_batches)
      _CACHED_INFERENCE[key] = (cached, num_batches)
    return _CACHED_INFERENCE[key]
  local_bs = _local_batch_size(int(batch_size), process_count)
  pp_fn = _apply_pp(get_pp_fn(pp))
  source = datasets.get(**_as_dict(data_config))
  part_sizes = source.num_examples_per_process(process_count)
  wanted = None
  if select is not None:
    wanted = _selected(select, part_sizes, process_index)
    part_sizes = [len(s) for s in select]
  num_batches = math.ceil(max(part_sizes) / local_bs)

  def preprocess(ds, mask, wanted=None):
    # A deterministic `_seed` here too, so eval pp strings that contain
    # random ops behave the same on every run instead of failing.
    ds = ds.enumerate()
    if wanted is not None:
      ds = ds.filter(lambda i, ex: tf.gather(wanted, i))
    ds = _map(ds, lambda i, ex: {
        **ex, SEED_KEY: tf.stack([tf.constant(process_index, tf.int64), i])})
    return _map(ds, lambda ex: {**pp_fn(ex), MASK_KEY: tf.constant(mask)},
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  ds = preprocess(source.get_tfdata(ordered=True, process_split=True,
                                    process_index=process_index,
                                    process_count=process_count), True,
                  wanted)
  specs = tf.nest.flatten(ds.element_spec)
  if all(spec.shape.is_fully_defined() for spec in specs):
    padding = tf.data.Dataset.from_tensors(tf.nest.map_structure(
        lambda spec: tf.zeros(spec.shape, spec.dtype), ds.element_spec))
    # (The `_mask` of padding rows is a zero too: False.)
  else:
    # pp output shapes are only known at run time (e.g. decode without a
    # resize): pad with zeros shaped like the split's first example (the
    # same on every process, even one whose part is empty).
    first = source.get_tfdata(ordered=True, process_split=False).take(1)
    padding = _map(preprocess(first, False),
                   lambda ex: tf.nest.map_structure(tf.zeros_like, ex)).cache()
  ds = ds.concatenate(padding.repeat()).take(num_batches * local_bs)
  ds = ds.batch(local_bs, drop_remainder=True)
  ds = ds.with_options(_deterministic_options())
  return InferenceBatches(ds, num_batches), num_batches


def _selected(select, part_sizes, process_index) -> tf.Tensor:
  """`make_for_inference`'s `select`, checked: this process's [part size]
  bool mask of the examples to keep."""
  if len(select) != len(part_sizes):
    raise ValueError(f"select has {len(select)} entries; expected one per "
                     f"process ({len(part_sizes)}).")
  for p, (indices, size) in enumerate(zip(select, part_sizes)):
    indices = np.asarray(indices)
    if indices.size and (np.any(np.diff(indices) <= 0) or indices[0] < 0
                         or indices[-1] >= size):
      raise ValueError(
          f"select[{p}] must be increasing indices in [0, {size}) (the size "
          f"of process {p}'s part); got {indices[:10].tolist()}...")
  wanted = np.zeros(part_sizes[process_index], bool)
  wanted[np.asarray(select[process_index], np.int64)] = True
  return tf.constant(wanted)


def to_global(batch: Mapping[str, Any], sharding: jax.sharding.Sharding
              ) -> dict[str, jax.Array]:
  """Per-process numpy batch -> global jax.Arrays laid out by `sharding`.

  Each process passes its own rows; the global batch is their concatenation
  in process order (jax.make_array_from_process_local_data).
  """

  def put(path, x):
    x = np.asarray(x)
    if x.dtype.kind in "OSUV":
      raise ValueError(
          f"Batch entry {jax.tree_util.keystr(path)} has dtype {x.dtype} and "
          "cannot live on a device; drop it in pp, e.g. with keep(...).")
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree_util.tree_map_with_path(put, dict(batch))


def start_global(iterator: Iterable[Mapping[str, Any]],
                 sharding: jax.sharding.Sharding, n_prefetch: int = 2
                 ) -> Iterator[dict[str, jax.Array]]:
  """Global device batches, keeping `n_prefetch` copies in flight.

  Eager: the first `n_prefetch` batches are fetched at the call, on a
  thread, whether or not the result is ever iterated. A training pipeline
  thus fills its shuffle buffer and preprocesses them while the caller
  initialises the model, restores a checkpoint and runs the step-0
  evaluators, instead of after them (tf.data starts its work only when
  asked for an element); those batches and the buffer are held from the
  call on. An error there (a corrupt example, a bad pp op) is raised by the
  first `next`, as it would be without the thread. After that, transfers
  are asynchronous: while the step on batch t runs, batches
  t+1..t+n_prefetch are already being copied to the devices.
  """
  it = iter(iterator)
  queue = collections.deque()

  def enqueue(n):
    for batch in itertools.islice(it, n):
      queue.append(to_global(batch, sharding))

  started = utils.on_thread(lambda: enqueue(max(1, n_prefetch)),
                            "big_vision_first_batches")
  return _global_batches(queue, enqueue, started)


def _global_batches(queue, enqueue, started: concurrent.futures.Future):
  started.result()
  while queue:
    yield queue.popleft()
    enqueue(1)
