"""`imagefolder` and `jsonl` sources on small PNGs written to tmp_path."""
import json

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from big_vision import datasets


def _png(path, value):
  """A 4x3 RGB PNG whose pixels encode `value`, so we can recognise it."""
  path.parent.mkdir(parents=True, exist_ok=True)
  arr = np.full((4, 3, 3), value, np.uint8)
  arr[0, 0] = [value, 255 - value, 7]
  Image.fromarray(arr).save(path)
  return arr


def _read(source, **kw):
  kw.setdefault("process_split", False)
  return list(source.get_tfdata(ordered=True, **kw).as_numpy_iterator())


@pytest.fixture
def folder(tmp_path):
  """train/{bird,cat,dog}, test/{cat,dog}: 'bird' only exists in train."""
  root = tmp_path / "pets"
  pixels = {}
  layout = {"train": {"cat": 3, "dog": 2, "bird": 1}, "test": {"cat": 1,
                                                               "dog": 2}}
  v = 0
  for split, classes in layout.items():
    for cls, n in classes.items():
      for i in range(n):
        v += 10
        pixels[(split, cls, i)] = _png(root / split / cls / f"{i:02d}.png", v)
  (root / "train" / "cat" / "notes.txt").write_text("not an image")
  return root, pixels


def test_imagefolder_labels_and_images(folder):
  root, pixels = folder
  src = datasets.get("imagefolder", "train", path=str(root))
  assert src.class_names == ["bird", "cat", "dog"]
  assert src.total_examples == 6
  exs = _read(src)
  assert [ex["label"] for ex in exs] == [0, 1, 1, 1, 2, 2]
  assert [ex["id"] for ex in exs] == list(range(6))
  assert exs[1]["file_name"] == b"cat/00.png"
  np.testing.assert_array_equal(
      tf.io.decode_png(exs[3]["image"]).numpy(), pixels[("train", "cat", 2)])
  # Labels index the union of class names: test has no bird, cat is still 1.
  test = _read(datasets.get("imagefolder", "test", path=str(root)))
  assert [ex["label"] for ex in test] == [1, 2, 2]
  np.testing.assert_array_equal(
      tf.io.decode_png(test[2]["image"]).numpy(), pixels[("test", "dog", 1)])


def test_imagefolder_slices_and_process_split(folder):
  root, _ = folder
  src = datasets.get("imagefolder", "train[2:5]", path=str(root))
  assert [ex["id"] for ex in _read(src)] == [2, 3, 4]
  assert datasets.get("imagefolder", "train[:50%]",
                      path=str(root)).total_examples == 3
  full = datasets.get("imagefolder", "train", path=str(root))
  assert full.num_examples_per_process(4) == [2, 2, 1, 1]
  parts = [[ex["id"] for ex in _read(full, process_split=True,
                                     process_index=i, process_count=4)]
           for i in range(4)]
  assert parts == [[0, 1], [2, 3], [4], [5]]


def test_imagefolder_single_split_layout(tmp_path):
  _png(tmp_path / "b" / "x.png", 1)
  _png(tmp_path / "a" / "y.png", 2)
  _png(tmp_path / "a" / "z.png", 3)
  src = datasets.get("imagefolder", "train", path=str(tmp_path))
  assert [ex["label"] for ex in _read(src)] == [0, 0, 1]


def test_imagefolder_unknown_split(folder):
  root, _ = folder
  with pytest.raises(ValueError, match=r"'validation'.*test, train"):
    datasets.get("imagefolder", "validation", path=str(root))
  with pytest.raises(ValueError, match="needs path"):
    datasets.get("imagefolder", "train")


def _write_jsonl(path, records):
  path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")


def test_jsonl_fields_and_images(tmp_path):
  pixels = [_png(tmp_path / "imgs" / f"{i}.png", 20 * i + 5) for i in range(5)]
  records = [dict(image=f"imgs/{i}.png", label=i % 3, caption=f"pic {i}",
                  score=i / 2, box=[i, i + 1, i + 2, i + 3], ok=i > 2)
             for i in range(5)]
  _write_jsonl(tmp_path / "data.jsonl", records)
  src = datasets.get("jsonl", "train", path=str(tmp_path / "data.jsonl"))
  assert src.total_examples == 5
  exs = _read(src)
  for i, ex in enumerate(exs):
    np.testing.assert_array_equal(tf.io.decode_png(ex["image"]).numpy(),
                                  pixels[i])
    assert ex["label"] == i % 3 and ex["label"].dtype == np.int64
    assert ex["caption"] == f"pic {i}".encode()
    assert ex["score"] == np.float32(i / 2)
    np.testing.assert_array_equal(ex["box"], [i, i + 1, i + 2, i + 3])
    assert ex["ok"] == (i > 2) and ex["id"] == i
  sliced = datasets.get("jsonl", "train[-2:]",
                        path=str(tmp_path / "data.jsonl"))
  assert [ex["id"] for ex in _read(sliced)] == [3, 4]
  parts = [[ex["id"] for ex in _read(src, process_split=True, process_index=i,
                                     process_count=2)] for i in range(2)]
  assert parts == [[0, 1, 2], [3, 4]]


def test_jsonl_split_pattern_and_errors(tmp_path):
  _png(tmp_path / "a.png", 1)
  for split, n in (("train", 3), ("val", 2)):
    _write_jsonl(tmp_path / f"{split}.jsonl",
                 [dict(img="a.png", label=k) for k in range(n)])
  pattern = str(tmp_path / "{split}.jsonl")
  src = datasets.get("jsonl", "val", path=pattern, image_key="img")
  assert [ex["label"] for ex in _read(src)] == [0, 1]
  with pytest.raises(ValueError, match=r"'test'.*train, val"):
    datasets.get("jsonl", "test", path=pattern, image_key="img")
  with pytest.raises(ValueError, match=r"'image'.*img, label"):
    datasets.get("jsonl", "train", path=pattern)
  with pytest.raises(ValueError, match="single file has one split"):
    datasets.get("jsonl", "val", path=str(tmp_path / "val.jsonl"),
                 image_key="img")
  _write_jsonl(tmp_path / "bad.jsonl", [dict(image="a.png", x=1),
                                        dict(image="a.png", x="s")])
  with pytest.raises(ValueError, match="Field 'x'"):
    datasets.get("jsonl", "train", path=str(tmp_path / "bad.jsonl"))
