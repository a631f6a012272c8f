"""tools/plot.py: curves of generated metrics.jsonl files as a PNG."""
import importlib.util
import json
import os

import numpy as np
from PIL import Image
import pytest

TOOL = os.path.join(os.path.dirname(__file__), "..", "tools", "plot.py")


@pytest.fixture(scope="module")
def tool():
  spec = importlib.util.spec_from_file_location("plot", TOOL)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def write_run(workdir, scale):
  os.makedirs(workdir)
  lines = []
  for step in range(1, 11):
    lines.append({"step": step, "training_loss": scale * 2.3 / step,
                  "lr": 1e-3 * min(1.0, step / 3), "l2_params": 10.0})
    if step % 5 == 0:
      lines.append({"step": step, "val/prec@1": 0.1 * step / scale,
                    "val/loss": 2.0 / step})
      lines.append({"step": step, "fewshot/digits_5shot": 0.05 * step,
                    "fewshot/digits_5shot_seed0": 0.04 * step,
                    "fewshot/digits_5shot_seed1": 0.06 * step})
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.write("".join(json.dumps(l) + "\n" for l in lines))


def test_curves_groups_metrics_into_panels(tool, tmp_path):
  write_run(tmp_path / "a", 1.0)
  from big_vision import metric_writer  # pylint: disable=g-import-not-at-top
  c = tool.curves(metric_writer.read(str(tmp_path / "a")))
  assert set(c) == {"training_loss", "lr", "val", "fewshot"}
  assert set(c["val"]) == {"val/prec@1", "val/loss"}
  assert set(c["fewshot"]) == {"fewshot/digits_5shot"}  # No per-seed lines.
  assert c["val"]["val/prec@1"] == [(5, 0.5), (10, 1.0)]
  assert len(c["training_loss"]["training_loss"]) == 10
  assert c["lr"]["lr"][0] == (1, pytest.approx(1e-3 / 3))


def test_plot_writes_png_with_expected_panels(tool, tmp_path, capsys):
  write_run(tmp_path / "a", 1.0)
  write_run(tmp_path / "b", 2.0)
  out = tmp_path / "curves.png"
  assert tool.main(["--workdir", str(tmp_path / "a"), "--workdir",
                    str(tmp_path / "b"), "--out", str(out)]) == 0
  assert "training_loss, lr, fewshot, val" in capsys.readouterr().out
  with open(out, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  img = np.asarray(Image.open(out).convert("RGB"))
  # 4 panels, at most 3 a row: 2 rows x 3 columns of 5 x 3.5 inches at 80
  # dpi, the last slot hidden.
  assert img.shape == (int(3.5 * 2 * 80), 5 * 3 * 80, 3)
  assert len(np.unique(img.reshape(-1, 3), axis=0)) > 20  # Not blank.
  # One run, one panel layout: just the training panels.
  one = tmp_path / "one"
  os.makedirs(one)
  (one / "metrics.jsonl").write_text('{"step": 1, "training_loss": 1.0}\n')
  assert tool.plot([str(one)], str(tmp_path / "one.png")) == [
      "training_loss"]
  with pytest.raises(ValueError, match="No metrics"):
    os.makedirs(tmp_path / "empty")
    tool.plot([str(tmp_path / "empty")], str(tmp_path / "e.png"))
