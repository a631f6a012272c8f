"""tools/prepare_datasets.py, offline path: the embedded `digits` dataset.

Two copies of the tool run at once into the same dir, as two pytest workers
or two hosts on a shared disk would: the lock must make both succeed and
leave one complete dataset. Threads stand in for processes (flock locks
belong to open file descriptions, so threads exclude each other the same
way) to keep the test free of slow TensorFlow imports in subprocesses.
"""
import concurrent.futures
import importlib.util
import pathlib

import pytest

from big_vision import datasets

TOOL = pathlib.Path(__file__).resolve().parents[2] / "tools" / \
    "prepare_datasets.py"


@pytest.fixture(scope="module")
def tool():
  spec = importlib.util.spec_from_file_location("prepare_datasets", TOOL)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_prepare_digits_concurrently(tool, tmp_path, capsys):
  data_dir = tmp_path / "tfds"
  argv = ["--data_dir", str(data_dir), "digits"]
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    codes = list(pool.map(tool.main, [argv, argv]))
  assert codes == [0, 0]
  out = capsys.readouterr().out
  assert out.count(f"OK     digits: {data_dir}/digits/1.0.0") == 2
  assert out.count("Downloading and preparing dataset") == 1  # Built once.
  versions = [v.name for v in (data_dir / "digits").iterdir()]
  assert versions == ["1.0.0"]  # No leftover temporary dirs.
  src = datasets.get("digits", "test", data_dir=str(data_dir))
  assert src.total_examples == 297
  assert src.builder.data_dir.startswith(str(data_dir))
  assert tool.main(argv) == 0  # Idempotent.


def test_cli_errors(tool, tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    tool.main(["--data_dir", str(tmp_path)])
  assert e.value.code == 2 and "--standard" in capsys.readouterr().err
  # A failing name is reported, the others still run, exit code is 1.
  assert tool.main(["--data_dir", str(tmp_path), "no_such_dataset_xyz",
                    "digits"]) == 1
  captured = capsys.readouterr()
  assert "FAILED no_such_dataset_xyz" in captured.err
  assert "OK     digits" in captured.out
  assert len(tool.STANDARD) == 12 and "imagenet2012" in tool.STANDARD
