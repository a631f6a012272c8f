"""`make clean` removes build products and never run outputs."""
import os
import shutil
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_make_clean_keeps_workdirs(tmp_path):
  shutil.copy(os.path.join(REPO, "Makefile"), tmp_path / "Makefile")
  run = tmp_path / "workdirs" / "demo"
  os.makedirs(run / "checkpoints" / "10")
  (run / "metrics.jsonl").write_bytes(b'{"step": 10, "training_loss": 0.5}\n')
  (run / "checkpoints" / "10" / "x").write_bytes(b"\x01\x02")
  for d in (".venv/bin", "build/lib", "big_vision.egg-info"):
    os.makedirs(tmp_path / d)
  subprocess.run(["make", "clean"], cwd=tmp_path, check=True,
                 capture_output=True)
  assert (run / "metrics.jsonl").read_bytes() == (
      b'{"step": 10, "training_loss": 0.5}\n')
  assert (run / "checkpoints" / "10" / "x").read_bytes() == b"\x01\x02"
  for d in (".venv", "build", "big_vision.egg-info"):
    assert not (tmp_path / d).exists(), d
