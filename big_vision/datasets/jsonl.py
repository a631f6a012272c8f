"""`jsonl`: one JSON object per line, with an image path and any other fields.

  {"image": "imgs/0001.jpg", "label": 3, "caption": "a cat"}

Image paths are relative to the jsonl file's folder (absolute paths work
too); the source yields the file's encoded bytes under the same key. Other
fields become tensors: ints -> int64, floats -> float32, bools -> bool,
strings -> tf.string, (rectangular) lists -> tensors of those. An `id` field
(int64 line number, counting non-empty lines from 0) is added unless the
records have their own.

Splits: `path` is either one file (its single split is called "train") or a
pattern with "{split}", e.g. path="/data/captions/{split}.jsonl", where the
split name picks the file. Splits can be sliced like TFDS ("train[:1000]").
"""
import glob
import json
import os

import numpy as np

from big_vision.datasets import core


def _kind(v):
  """'str', 'bool', 'int' or 'float' of a JSON scalar (None if not one)."""
  for kind, types in (("bool", bool), ("str", str), ("int", int),
                      ("float", float)):
    if isinstance(v, types):
      return kind
  return None


def _leaves(v):
  if isinstance(v, list):
    for x in v:
      yield from _leaves(x)
  else:
    yield v


def _column(key, values, path):
  """Numpy column for one field, with a clear error for mixed/ragged values."""
  kinds = {_kind(x) for v in values for x in _leaves(v)}
  if kinds == {"int", "float"}:
    kinds = {"float"}  # JSON writes 1.0 as 1: ints in a float field are fine.
  arr = None
  if len(kinds) == 1 and None not in kinds:
    try:
      arr = np.array(values)
    except ValueError:  # Ragged lists.
      pass
  if arr is None or arr.dtype == object:
    raise ValueError(
        f"Field {key!r} in {path!r} cannot be a tensor: values must all be "
        "of one type (str, int, float, bool) or rectangular lists of one "
        f"type; first values: {values[:3]!r}.")
  kind = kinds.pop()
  if kind == "str":
    return np.vectorize(lambda s: s.encode("utf-8"), otypes=[object])(arr)
  return arr.astype({"bool": bool, "int": np.int64, "float": np.float32}[kind])


def _read_records(path):
  records = []
  with open(path) as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{lineno}: not valid JSON: {e}") from None
      if not isinstance(rec, dict):
        raise ValueError(f"{path}:{lineno}: expected a JSON object, got "
                         f"{type(rec).__name__}.")
      records.append((lineno, rec))
  return records


class JsonlSource(core.ColumnsSource):
  """Records of a jsonl file; see the module docstring."""

  def __init__(self, path: str, split: str, image_key="image"):
    base, a, b = core.parse_split(split)
    if "{split}" in path:
      available = sorted(
          os.path.basename(p)  # Recover the split names from the glob.
          for p in glob.glob(path.replace("{split}", "*")))
      prefix, suffix = (os.path.basename(s) for s in path.split("{split}", 1))
      names = [p[len(prefix):len(p) - len(suffix)] for p in available]
      file = path.format(split=base)
      if not os.path.isfile(file):
        raise ValueError(f"Unknown split {split!r} for jsonl {path!r}: no "
                         f"file {file!r}. Valid split names: "
                         f"{', '.join(names) or '(no matching files)'}.")
    else:
      file = path
      if not os.path.isfile(file):
        raise ValueError(f"jsonl file {file!r} does not exist.")
      if base != "train":
        raise ValueError(
            f"Unknown split {split!r} for jsonl {path!r}: a single file has "
            "one split, 'train' (slice it, e.g. 'train[:90%]', or use a path "
            "with '{split}' such as 'data/{split}.jsonl').")
    image_keys = (image_key,) if isinstance(image_key, str) else tuple(
        image_key or ())
    records = _read_records(file)
    if not records:
      raise ValueError(f"jsonl file {file!r} has no records.")
    keys = list(records[0][1])
    for lineno, rec in records:
      if set(rec) != set(keys):
        raise ValueError(f"{file}:{lineno}: fields {sorted(rec)} differ from "
                         f"the first record's {sorted(keys)}.")
    for k in image_keys:
      if k not in keys:
        raise ValueError(f"Image field {k!r} not in the records of {file!r};"
                         f" fields: {', '.join(keys)} (set image_key=...).")
    start, end = core.slice_range(len(records), a, b)
    records = [rec for _, rec in records[start:end]]
    root = os.path.dirname(os.path.abspath(file))
    columns = {}
    for k in keys:
      values = [rec[k] for rec in records]
      if k in image_keys:
        values = [os.path.join(root, v) for v in values]
      columns[k] = _column(k, values, file) if values else np.zeros(
          [0], np.int64)
    if "id" not in columns:
      columns["id"] = np.arange(start, end, dtype=np.int64)
    super().__init__(columns, file_columns=image_keys, name="jsonl",
                     split=split)


@core.register_source("jsonl")
def _make(split, data_dir=None, *, path=None, image_key="image"):
  del data_dir  # The file is given by `path`.
  if path is None:
    raise ValueError("jsonl needs path=<file.jsonl or pattern with {split}>.")
  return JsonlSource(path, split, image_key=image_key)
