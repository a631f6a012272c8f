"""$TFDS_DATA_DIR set after tensorflow_datasets is imported is honoured.

Regression: TfdsSource.from_name called tfds.builder(name, data_dir=None).
TFDS reads $TFDS_DATA_DIR once, when it is imported, so a data dir set later
(a notebook, `big_vision.train.train()` from Python, a test fixture) was
ignored: the run stopped with "TFDS dataset 'cifar10' is known but not
prepared in <the env dir> (looked in ~/tensorflow_datasets/...)".
"""
import numpy as np
import tensorflow_datasets as tfds

from big_vision import datasets
# tests/ is on sys.path (rootdir conftest). Imported, never exec'd a second
# time: its stand-in builders register with TFDS once per process.
import recipe_data


def test_data_dir_from_env_set_after_import(tmp_path, monkeypatch):
  assert tfds.core.constants.DATA_DIR != str(tmp_path)  # Read at import.
  recipe_data.prepare("cifar10", str(tmp_path), {"train": 6, "test": 3})
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  source = datasets.get("cifar10", "test")
  assert source.total_examples == 3
  assert str(tmp_path) in source.builder.data_dir
  labels = [int(ex["label"]) for ex in
            source.get_tfdata(ordered=True).as_numpy_iterator()]
  np.testing.assert_array_equal(sorted(labels), [0, 1, 2])
