"""TFDS datasets as DataSources (also the reader behind embedded datasets).

Split strings are TFDS's own ("train", "train[:99%]", "train[10:20]",
"train+validation"), so the same config runs on any TFDS dataset. Each
process reads `tfds.even_splits(split, process_count)[process_index]`: disjoint
parts that cover the split, with no coordination between processes.
"""
import contextlib
import difflib
import os

from big_vision.datasets import tf_import  # pylint: disable=unused-import
import tensorflow_datasets as tfds

from big_vision.datasets import core


def _skip_image_decoding(features):
  """Nested decoders dict: SkipDecoding for every Image feature.

  Images stay encoded bytes so that decoding is the pp `decode` op, which
  runs inside the parallel pp map (and after an optional raw cache).
  """
  decoders = {}
  for key, feature in features.items():
    if isinstance(feature, tfds.features.Image):
      decoders[key] = tfds.decode.SkipDecoding()
    elif isinstance(feature, tfds.features.FeaturesDict):
      sub = _skip_image_decoding(feature)
      if sub:
        decoders[key] = sub
  return decoders


class TfdsSource(core.DataSource):
  """One split of a prepared TFDS dataset."""

  def __init__(self, builder, split: str):
    self.builder = builder
    self.split = split
    self.name = builder.name
    try:
      self._info = builder.info.splits[split]
    except (KeyError, ValueError, AssertionError) as e:
      valid = sorted(builder.info.splits.keys())
      ex = "train" if "train" in valid or not valid else valid[0]
      raise ValueError(
          f"Unknown split {split!r} of dataset {builder.name!r}. Valid split "
          f"names: {', '.join(valid)} (slices like '{ex}[:90%]' or "
          f"'{ex}[10:20]' are allowed). TFDS said: {e}") from None

  @classmethod
  def from_name(cls, name: str, split: str, data_dir: str | None = None,
                other_names=(), **kw) -> "TfdsSource":
    """Looks up 'name[:version]' in data_dir, with errors a user can act on."""
    if kw:
      raise ValueError(f"TFDS dataset {name!r} takes no keyword arguments "
                       f"besides split and data_dir, got {sorted(kw)}.")
    where = (data_dir or os.environ.get("TFDS_DATA_DIR")
             or tfds.core.constants.DATA_DIR)
    try:
      # `where`, not None: TFDS reads $TFDS_DATA_DIR once, at import, so a
      # data dir set later (notebooks, tests, train.train()) would be ignored.
      builder = tfds.builder(
          name, data_dir=data_dir or os.environ.get("TFDS_DATA_DIR"))
    except tfds.core.registered.DatasetNotFoundError:
      raise _not_found(name, where, other_names) from None
    except Exception as e:  # pylint: disable=broad-except
      # Malformed names and versions surface as various TFDS errors.
      raise ValueError(f"Could not load TFDS dataset {name!r} from {where}: "
                       f"{e}") from None
    if not builder.is_prepared():
      raise ValueError(
          f"TFDS dataset {name!r} is known but not prepared in {where} "
          f"(looked in {builder.data_dir}). Prepare it on a machine with "
          f"internet: python tools/prepare_datasets.py --data_dir {where} "
          f"{name}")
    return cls(builder, split)

  @property
  def total_examples(self) -> int:
    return self._info.num_examples

  def _process_splits(self, process_count):
    return tfds.even_splits(self.split, process_count, drop_remainder=False)

  def num_examples_per_process(self, process_count=None):
    _, process_count = core.process_info(0, process_count)
    return [self.builder.info.splits[s].num_examples
            for s in self._process_splits(process_count)]

  def get_tfdata(self, ordered, *, process_split=True, process_index=None,
                 process_count=None):
    split = self.split
    if process_split:
      process_index, process_count = core.process_info(process_index,
                                                       process_count)
      split = self._process_splits(process_count)[process_index]
    read_config = tfds.ReadConfig(
        # Caching is the pipeline's decision (cache_raw), not TFDS's.
        # TFDS's default interleave of files is deterministic when
        # shuffle_files=False (its ordering guard checks it), so `ordered`
        # keeps parallel file reads.
        try_autocache=False, skip_prefetch=True)
    return self.builder.as_dataset(
        split=split, shuffle_files=not ordered, read_config=read_config,
        decoders=_skip_image_decoding(self.builder.info.features))


def _not_found(name, where, other_names) -> ValueError:
  base = name.split(":")[0]
  known = set(tfds.list_builders(with_community_datasets=False))
  close = difflib.get_close_matches(base, sorted(known | set(other_names)),
                                    n=3)
  hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
  return ValueError(
      f"Unknown dataset {name!r}: not an embedded dataset "
      f"({', '.join(core.embedded_names())}), not a source kind "
      f"({', '.join(core.source_names())}), and no TFDS dataset of that name "
      f"was found in {where}.{hint}")


@contextlib.contextmanager
def _file_lock(path):
  """Exclusive advisory lock (fcntl.flock), held for the with-block.

  flock locks belong to the open file description, so two processes (pytest
  workers) or two threads with their own open() exclude each other.
  """
  import fcntl  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "a") as f:
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def prepare_builder(builder_cls, data_dir: str):
  """Instantiates and (once) prepares a local-only TFDS builder in data_dir.

  Idempotent and safe under concurrency: the check-and-build runs under a
  lock file next to the data, and TFDS itself only publishes a finished
  dataset (it writes to a temporary dir and renames).
  """
  builder = builder_cls(data_dir=data_dir)
  if builder.is_prepared():
    return builder
  if "://" in data_dir:  # Remote file systems have no flock; build directly.
    builder.download_and_prepare()
    return builder
  lock = os.path.join(data_dir, f".{builder.name}.lock")
  with _file_lock(lock):
    builder = builder_cls(data_dir=data_dir)  # Re-reads what a peer wrote.
    if not builder.is_prepared():
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(
              download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
  return builder_cls(data_dir=data_dir)

