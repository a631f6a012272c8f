"""Tests for the .npz parameter import/export of big_vision.checkpoint."""
import os
import sys

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from big_vision import checkpoint


def _tree(seed=0):
  rng = np.random.RandomState(seed)
  return {
      "embedding": {"kernel": rng.randn(2, 2, 3, 4).astype(np.float32),
                    "bias": rng.randn(4).astype(np.float32)},
      "Transformer": {"encoderblock_0": {"LayerNorm_0": {
          "scale": rng.randn(4).astype(np.float64)}}},
      "step": np.asarray(7, np.int32),
      "counts": rng.randint(0, 255, size=(3,)).astype(np.uint8),
      "half": rng.randn(5).astype(np.float16),
  }


def _assert_same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    if isinstance(a[k], dict):
      _assert_same(a[k], b[k])
    else:
      assert np.asarray(a[k]).dtype == b[k].dtype, k
      np.testing.assert_array_equal(b[k], a[k])


def test_roundtrip_exact(tmp_path):
  tree = _tree()
  path = str(tmp_path / "params.npz")
  checkpoint.save_params(tree, path)
  loaded = checkpoint.load_params(path)
  _assert_same(tree, loaded)
  assert all(isinstance(x, np.ndarray) for x in
             [loaded["step"], loaded["embedding"]["kernel"]])


def test_keys_are_slash_joined_and_plain_numpy_reads_them(tmp_path):
  path = str(tmp_path / "params.npz")
  checkpoint.save_params(_tree(), path)
  with np.load(path) as npz:
    assert sorted(npz.files) == sorted([
        "embedding/kernel", "embedding/bias",
        "Transformer/encoderblock_0/LayerNorm_0/scale", "step", "counts",
        "half"])


def test_jax_and_bfloat16_leaves(tmp_path):
  rng = np.random.RandomState(1)
  x32 = rng.randn(6, 3).astype(np.float32)
  bf = x32.astype(ml_dtypes.bfloat16)
  tree = {"a": jnp.asarray(x32), "b": {"c": jnp.asarray(bf)}, "d": bf}
  path = str(tmp_path / "p.npz")
  checkpoint.save_params(tree, path)
  loaded = checkpoint.load_params(path)
  np.testing.assert_array_equal(loaded["a"], x32)
  # bfloat16 is stored upcast to float32: same values, portable dtype.
  for got in (loaded["b"]["c"], loaded["d"]):
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, bf.astype(np.float32))
    np.testing.assert_array_equal(got.astype(ml_dtypes.bfloat16), bf)


def test_path_used_as_given_and_overwrite_leaves_no_temp(tmp_path):
  path = str(tmp_path / "sub" / "ckpt")  # No .npz suffix, missing dir.
  checkpoint.save_params({"x": np.zeros(3)}, path)
  checkpoint.save_params({"x": np.ones(3)}, path)
  assert os.listdir(tmp_path / "sub") == ["ckpt"]
  np.testing.assert_array_equal(checkpoint.load_params(path)["x"], np.ones(3))


def test_failed_write_keeps_old_file(tmp_path, monkeypatch):
  path = str(tmp_path / "p.npz")
  checkpoint.save_params({"x": np.arange(3.0)}, path)
  before = open(path, "rb").read()

  def broken_savez(f, **arrays):
    del arrays
    f.write(b"partial garbage")
    raise OSError("disk full")
  monkeypatch.setattr(checkpoint.np, "savez", broken_savez)
  with pytest.raises(OSError, match="disk full"):
    checkpoint.save_params({"x": np.zeros(1000)}, path)
  assert open(path, "rb").read() == before
  assert os.listdir(tmp_path) == ["p.npz"]


def test_unstorable_leaf_named(tmp_path):
  with pytest.raises(ValueError, match="'a/b'"):
    checkpoint.save_params({"a": {"b": np.array([object()])}},
                           str(tmp_path / "p.npz"))


def test_missing_file_and_remote_without_tensorflow(tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError, match="nope.npz"):
    checkpoint.load_params(str(tmp_path / "nope.npz"))
  monkeypatch.setitem(sys.modules, "tensorflow", None)  # Unimportable.
  with pytest.raises(ImportError, match="tensorflow"):
    checkpoint.load_params("gs://bucket/params.npz")
  with pytest.raises(ImportError, match="gs://"):
    checkpoint.save_params({"x": np.zeros(1)}, "gs://bucket/params.npz")
