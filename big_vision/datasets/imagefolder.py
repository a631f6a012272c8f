"""`imagefolder`: a directory of images, one subfolder per class.

Two layouts, chosen by what is on disk:

  path/<split>/<class>/*.png   split folders (e.g. train/, test/)
  path/<class>/*.png           a single split, called "train"

Class index = position of the class folder name in the sorted union of class
names over all split folders, so a split that lacks a class does not shift
the labels of the others. Examples are in (class, file name) order;
`split` may be sliced like TFDS ("train[:90%]", "test[10:20]").

Example: dict(name="imagefolder", split="train[:90%]", path="/data/flowers")
Yields {"image": encoded bytes, "label": int64, "id": int64 index in the
whole split folder, "file_name": path relative to the split folder}.
"""
import os

import numpy as np

from big_vision.datasets import core

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp")


def _subdirs(path):
  return sorted(e.name for e in os.scandir(path) if e.is_dir()
                and not e.name.startswith("."))


def _images(path):
  return sorted(e.name for e in os.scandir(path) if e.is_file()
                and e.name.lower().endswith(IMAGE_EXTENSIONS))


def _layout(path):
  """({split name: folder}, class names) for the folder at `path`."""
  subdirs = _subdirs(path)
  # A class folder holds images; a split folder holds class folders.
  if subdirs and all(_subdirs(os.path.join(path, d)) for d in subdirs):
    splits = {d: os.path.join(path, d) for d in subdirs}
  else:
    splits = {"train": path}
  classes = sorted({c for folder in splits.values() for c in _subdirs(folder)})
  return splits, classes


class ImageFolderSource(core.ColumnsSource):
  """Image files under class folders; see the module docstring."""

  def __init__(self, path: str, split: str):
    if not os.path.isdir(path):
      raise ValueError(f"imagefolder path {path!r} is not a directory.")
    splits, self.class_names = _layout(path)
    base, a, b = core.parse_split(split)
    if base not in splits:
      raise ValueError(
          f"Unknown split {split!r} of imagefolder {path!r}. Valid split "
          f"names: {', '.join(sorted(splits))} (slices like "
          f"'{sorted(splits)[0]}[:90%]' are allowed).")
    folder = splits[base]
    files, labels = [], []
    for label, cls in enumerate(self.class_names):
      cls_dir = os.path.join(folder, cls)
      if os.path.isdir(cls_dir):
        for f in _images(cls_dir):
          files.append(os.path.join(cls, f))
          labels.append(label)
    if not files:
      raise ValueError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) under "
                       f"class folders of {folder!r}.")
    start, end = core.slice_range(len(files), a, b)
    super().__init__(
        {
            "image": np.array([os.path.join(folder, f)
                               for f in files[start:end]], dtype=object),
            "label": np.array(labels[start:end], np.int64),
            "id": np.arange(start, end, dtype=np.int64),
            "file_name": np.array(files[start:end], dtype=object),
        },
        file_columns=("image",), name="imagefolder", split=split)


@core.register_source("imagefolder")
def _make(split, data_dir=None, *, path=None):
  del data_dir  # The folder is given by `path`.
  if path is None:
    raise ValueError("imagefolder needs path=<folder with class subfolders>.")
  return ImageFolderSource(path, split)
