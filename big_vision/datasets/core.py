"""The DataSource interface and the registry that `datasets.get` dispatches on.

A data source is the part of the input pipeline that knows *where* examples
live and how to split them between processes; it knows nothing about
preprocessing, shuffling or batching (that is `big_vision.input_pipeline`).
Sources hand out examples with images still ENCODED (PNG/JPEG bytes): decoding
is the first pp op, so the expensive part runs in the parallel pp map and a
cache of raw examples stays small.
"""
import abc
import os
import re
from typing import Callable

from big_vision.datasets.tf_import import tf

from big_vision import utils


class DataSource(abc.ABC):
  """A split of a dataset: counts, and a tf.data.Dataset of example dicts."""

  @property
  @abc.abstractmethod
  def total_examples(self) -> int:
    """Number of examples in the whole split (all processes together)."""

  @abc.abstractmethod
  def num_examples_per_process(self, process_count: int | None = None
                               ) -> list[int]:
    """Examples each process gets with `process_split=True`, by process index.

    The parts are disjoint and together cover the split; they differ by at
    most one example (the first `total % process_count` processes get one
    more), like `tfds.even_splits(..., drop_remainder=False)`.
    """

  @abc.abstractmethod
  def get_tfdata(self, ordered: bool, *, process_split: bool = True,
                 process_index: int | None = None,
                 process_count: int | None = None) -> tf.data.Dataset:
    """A finite dataset of dicts of tf tensors, images left encoded.

    Args:
      ordered: if True, the same deterministic order on every call (the
        order of the split); if False the source may read files in any
        order, which can be faster for large sharded datasets.
      process_split: if True only this process's part of the split.
      process_index: defaults to `jax.process_index()`.
      process_count: defaults to `jax.process_count()`.
    """


def map_traced_plainly(ds: tf.data.Dataset, fn: Callable,
                       **kwargs) -> tf.data.Dataset:
  """`ds.map(fn, **kwargs)`, tracing `fn` as plain TensorFlow first.

  Why: tf.data runs AutoGraph on every mapped function, which parses and
  rewrites the source of the function and of every op it calls, the first
  time each is seen in a process: 0.7 s for a 5-op digits pp (0.03 s traced
  plainly), paid at every launch for the training pipeline and for each
  evaluator's. AutoGraph only changes what cannot be traced plainly: Python
  control flow on tensors (`if t:`, `for x in t:`, `while t:`, `assert t`)
  raises in a plain trace. So when the plain trace succeeds the graph is the
  one AutoGraph would build (one difference: `print(t)` prints once, at
  trace time, instead of per example), and when it raises, `fn` is mapped
  again with AutoGraph, as before: pp ops written for AutoGraph keep working
  and a broken pp reports AutoGraph's error, as before.
  """
  try:
    return ds.map(tf.autograph.experimental.do_not_convert(fn), **kwargs)
  except Exception:  # pylint: disable=broad-except
    return ds.map(fn, **kwargs)


def process_info(process_index=None, process_count=None) -> tuple[int, int]:
  """Fills in defaults from jax and validates the pair."""
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    if process_index is None:
      process_index = jax.process_index()
    if process_count is None:
      process_count = jax.process_count()
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in "
                     f"[0, process_count={process_count}).")
  return int(process_index), int(process_count)


def even_ranges(n: int, count: int) -> list[tuple[int, int]]:
  """[start, end) of `count` contiguous parts of range(n), sizes differ <= 1.

  Same convention as tfds.even_splits(drop_remainder=False): the first
  `n % count` parts are one longer.
  """
  base, rem = divmod(n, count)
  out, start = [], 0
  for i in range(count):
    end = start + base + (1 if i < rem else 0)
    out.append((start, end))
    start = end
  return out


_SPLIT_RE = re.compile(
    r"^\s*([\w\-]+)\s*(?:\[\s*([^\]:]*)\s*:\s*([^\]]*)\s*\])?\s*$")


def parse_split(split: str) -> tuple[str, str | None, str | None]:
  """'train[10:20%]' -> ('train', '10', '20%'); 'test' -> ('test', None, None).

  Used by the non-TFDS sources; TFDS parses its own (richer) split strings.
  """
  m = _SPLIT_RE.match(split)
  if not m:
    raise ValueError(f"Cannot parse split {split!r}; expected 'name' or "
                     "'name[start:end]' with integers or percents like "
                     "'train[:90%]'.")
  return m.group(1), m.group(2), m.group(3)


def slice_range(n: int, start: str | None, end: str | None) -> tuple[int, int]:
  """Resolves a split slice ('10', '-5', '90%', '') on a split of n examples."""

  def resolve(s, default):
    if s is None or not s.strip():
      return default
    s = s.strip()
    if s.endswith("%"):
      v = int(s[:-1])
      if not -100 <= v <= 100:
        raise ValueError(f"Percent slice {s!r} out of [-100%, 100%].")
      v = round(v * n / 100)
    else:
      v = int(s)
    if v < 0:
      v += n
    return min(max(v, 0), n)

  a, b = resolve(start, 0), resolve(end, n)
  return a, max(a, b)


# ----------------------------------------------------------------------------
# Registry: name -> factory(split, data_dir, **kw) -> DataSource.
# ----------------------------------------------------------------------------
_SOURCES = utils.Registry("data source kind", where="config.input.data.name")
_EMBEDDED = utils.Registry("embedded dataset", where="config.input.data.name")


def register_source(name: str):
  """Decorator: `get(name, split, data_dir, **kw)` calls the factory."""
  if name in _EMBEDDED:
    raise ValueError(f"Dataset source {name!r} registered twice.")
  return _SOURCES.register(name)


def register_embedded(name: str, builder_cls: type) -> type:
  """Registers a small dataset that ships with the code as a TFDS builder.

  One line per dataset: `register_embedded("digits", DigitsBuilder)`. On
  first use the builder is prepared (generated locally, nothing downloaded)
  into the embedded data dir, under a file lock so concurrent processes do
  not race; afterwards it is read like any other TFDS dataset, so split
  slicing and per-process splitting come for free.
  """
  if name in _SOURCES:
    raise ValueError(f"Dataset source {name!r} registered twice.")
  return _EMBEDDED.register(name)(builder_cls)


def embedded_builder(name: str) -> type | None:
  """The TFDS builder class of embedded dataset `name`, or None."""
  return _EMBEDDED.get(name)


def source_factory(name: str) -> Callable[..., DataSource] | None:
  """The factory of source kind `name` (imagefolder, jsonl, ...), or None."""
  return _SOURCES.get(name)


def embedded_names() -> list[str]:
  return sorted(_EMBEDDED)


def source_names() -> list[str]:
  return sorted(_SOURCES)


def default_embedded_data_dir() -> str:
  """$TFDS_DATA_DIR if set, else ~/.cache/big_vision/tfds."""
  return os.environ.get("TFDS_DATA_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "big_vision", "tfds")


class ColumnsSource(DataSource):
  """A split held as in-memory columns (numpy arrays, one row per example).

  The base of the local sources (image folders, jsonl files): their index of
  files and labels is small even when the images are not. Columns named in
  `file_columns` hold file paths; their contents are read (still encoded) by
  tf.io.read_file when the dataset is iterated.
  """

  def __init__(self, columns: dict, file_columns=(), name: str = "",
               split: str = ""):
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) > 1:
      raise ValueError(f"Columns of {name!r} differ in length: {lengths}")
    self.columns = columns
    self.file_columns = tuple(file_columns)
    self.name, self.split = name, split
    self._n = next(iter(lengths.values())) if lengths else 0

  @property
  def total_examples(self):
    return self._n

  def num_examples_per_process(self, process_count=None):
    _, process_count = process_info(0, process_count)
    return [b - a for a, b in even_ranges(self._n, process_count)]

  def get_tfdata(self, ordered, *, process_split=True, process_index=None,
                 process_count=None):
    del ordered  # Always in index order: there are no files to interleave.
    start, end = 0, self._n
    if process_split:
      process_index, process_count = process_info(process_index, process_count)
      start, end = even_ranges(self._n, process_count)[process_index]
    ds = tf.data.Dataset.from_tensor_slices(
        {k: v[start:end] for k, v in self.columns.items()})
    if self.file_columns:

      def read_files(ex):
        ex = dict(ex)
        for k in self.file_columns:
          ex[k] = tf.io.read_file(ex[k])
        return ex

      ds = map_traced_plainly(ds, read_files,
                              num_parallel_calls=tf.data.AUTOTUNE,
                              deterministic=True)
    return ds
