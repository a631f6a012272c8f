"""The real-data path: TFDS's own builders, offline.

1. cifar10 is prepared by TFDS's own `Cifar10` builder (its own
   `_split_generators`, `_generate_examples`, writer and checksumless
   extraction path) from generated files in the original
   `cifar-10-batches-bin` binary format; only the network fetch is replaced
   (DownloadManager.download_and_extract returns the folder we wrote). The
   examples read back through `big_vision.datasets` are the generated ones,
   and `big_vision.train.train` trains 2 steps on them.
2. `tools/prepare_datasets.py` gets past TFDS's builder set-up (imports,
   DatasetInfo, download config) for every dataset of its `--standard` list:
   with the network fetch replaced by an error, that error is the only way
   each of them fails (or, for the datasets with manual downloads, the
   tool's own message naming the files to fetch by hand).
"""
import importlib.util
import os
import pathlib

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from big_vision import datasets
from big_vision import metric_writer
from big_vision import train

TOOL = pathlib.Path(__file__).resolve().parents[2] / "tools" / \
    "prepare_datasets.py"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
         "horse", "ship", "truck")


@pytest.fixture(scope="module")
def tool():
  spec = importlib.util.spec_from_file_location("prepare_datasets", TOOL)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def write_cifar10_bin(root, per_file=6, seed=0):
  """Writes cifar-10-batches-bin/: 1 label byte + 3072 CHW bytes a record."""
  rng = np.random.default_rng(seed)
  folder = root / "cifar-10-batches-bin"
  folder.mkdir(parents=True)
  (folder / "batches.meta.txt").write_text("\n".join(NAMES) + "\n\n")
  written = {}
  files = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
  for fi, name in enumerate(files):
    records = []
    for i in range(per_file):
      label = (fi * per_file + i) % 10
      img = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
      chw = np.transpose(img, (2, 0, 1)).reshape(-1)
      records.append(bytes([label]) + chw.tobytes())
      written.setdefault(name, []).append((label, img))
    (folder / name).write_bytes(b"".join(records))
  return written


def test_cifar10_prepared_by_tfds_builder_then_trained(tmp_path, monkeypatch):
  written = write_cifar10_bin(tmp_path / "download")
  fetched = []

  def fake_download_and_extract(self, url_or_urls):
    del self
    fetched.append(url_or_urls)
    return str(tmp_path / "download")

  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract",
                      fake_download_and_extract)
  data_dir = str(tmp_path / "tfds")
  builder = tfds.builder("cifar10", data_dir=data_dir)
  assert type(builder).__module__.startswith("tensorflow_datasets.")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  assert fetched == [CIFAR10_URL]
  assert builder.info.splits["train"].num_examples == 30
  assert builder.info.splits["test"].num_examples == 6
  assert builder.info.features["label"].names == list(NAMES)

  # Read back through the project's own source: same pixels, same labels,
  # in the order TFDS wrote them (ids train_00000 ...).
  source = datasets.get("cifar10", "test", data_dir=data_dir)
  assert source.total_examples == 6
  got = sorted(
      ((ex["id"].decode(), int(ex["label"]), ex["image"])
       for ex in tfds.as_numpy(source.builder.as_dataset(split="test"))),
      key=lambda t: t[0])
  for (ex_id, label, image), (want_label, want_image) in zip(
      got, written["test_batch.bin"]):
    assert ex_id.startswith("test_")
    assert label == want_label
    np.testing.assert_array_equal(image, want_image)

  # Train 2 steps on it with a small ViT, as a user would point a config at
  # the prepared dir.
  pp = "decode|resize(16)|value_range(-1,1)|onehot(10, key='label', key_result='labels')|keep('image','labels')"
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_steps = 2
  config.num_classes = 10
  config.loss = "softmax_xent"
  config.input = dict(
      data=dict(name="cifar10", split="train", data_dir=data_dir),
      batch_size=8, pp=pp, shuffle_buffer_size=16)
  config.model_name = "vit"
  config.model = dict(width=16, depth=1, mlp_dim=32, num_heads=2,
                      patch_size=(8, 8), pool_type="gap")
  config.optax_name = "scale_by_adam"
  config.lr = 1e-3
  config.wd = 0.0
  config.schedule = dict(decay_type="constant")
  config.log_training_steps = 1
  config.ckpt_steps = 2
  config.evals = dict(test=dict(
      type="classification", data=dict(name="cifar10", split="test",
                                         data_dir=data_dir),
      pp_fn=pp, loss_name="softmax_xent", log_steps=2))
  final = train.train(config, str(tmp_path / "workdir"))
  assert np.isfinite(final["training_loss"])
  # Ten classes, near-uniform init: the first loss is close to log(10).
  lines = metric_writer.read(str(tmp_path / "workdir"))
  first = [l for l in lines if "training_loss" in l][0]
  assert abs(first["training_loss"] - np.log(10)) < 0.7
  assert lines[-1]["step"] == 2
  accs = [l["test/prec@1"] for l in lines if "test/prec@1" in l]
  assert accs and all(a in {i / 6 for i in range(7)} for a in accs)


class Offline(Exception):
  """Stands in for the network fetch."""


def test_prepare_datasets_standard_gets_past_builder_setup(
    tool, tmp_path, monkeypatch, capsys):
  def no_network(self, url_or_urls, *a, **kw):
    del self, a, kw
    raise Offline(f"fetch {url_or_urls}")

  for method in ("download", "download_and_extract", "download_checksums"):
    monkeypatch.setattr(tfds.download.DownloadManager, method, no_network)
  data_dir = str(tmp_path / "tfds")
  failed_at_fetch = []
  for name in tool.STANDARD:
    try:
      tool.prepare(name, data_dir)
    except Offline as e:
      assert "https://" in str(e) or "http://" in str(e), (name, e)
      failed_at_fetch.append(name)
    except RuntimeError as e:  # The tool's message for manual downloads.
      assert name in tool.MANUAL, (name, e)
      assert "needs manually downloaded files" in str(e)
      assert tool.MANUAL[name].split(",")[0] in str(e)
    else:
      pytest.fail(f"{name} prepared without a network?")
  assert failed_at_fetch == [n for n in tool.STANDARD if n not in tool.MANUAL]
  # Nothing is left looking prepared.
  for name in tool.STANDARD:
    assert not tfds.builder(name, data_dir=data_dir).is_prepared(), name
  capsys.readouterr()
