"""Few-shot evaluator inside training and tools/eval_only.py on checkpoints."""
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from big_vision import metric_writer
from big_vision import program
from big_vision import train
from big_vision.configs import common_fewshot
from big_vision.evaluators import common as evaluators
from big_vision.evaluators import fewshot_lsr
from big_vision.models import vit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
import eval_only  # pylint: disable=g-import-not-at-top,wrong-import-position
from test_train import load_config  # pylint: disable=wrong-import-position
import xla_opt  # pylint: disable=wrong-import-position

# The trained fixture runs 150 steps optimised (xla_opt.py); the tests
# compare eval-only numbers with its exactly, so they compile alike.
pytestmark = pytest.mark.xla_optimized


def digits_config(steps):
  config = load_config(os.path.join(REPO, "big_vision/configs/vit_digits.py"),
                       "runlocal")
  config.total_steps = steps
  config.input.batch_size = 64
  config.ckpt_steps = steps
  config.schedule = dict(warmup_steps=10, decay_type="cosine")
  config.evals = dict(fewshot=common_fewshot.get_fewshot_lsr(
      runlocal=True, res=16, log_steps=10_000))
  config.evals.fewshot.shots = (10,)
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("fewshot"))
  with xla_opt.optimized():  # 150 steps: run time, not compile time.
    final = train.train(digits_config(150), workdir)
  return workdir, final


def test_fewshot_trained_model_beats_untrained(trained):
  workdir, final = trained
  lines = [l for l in metric_writer.read(workdir) if "fewshot/digits_10shot" in l]
  assert [l["step"] for l in lines] == [0, 150]  # at the start and the end
  untrained, done = (l["fewshot/digits_10shot"] for l in lines)
  assert done > untrained + 0.1, (untrained, done)
  assert done >= 0.75
  # Per-seed values are reported and average to the mean.
  seeds = [lines[1][f"fewshot/digits_10shot_seed{s}"] for s in (0, 1, 2)]
  assert np.isclose(np.mean(seeds), done)
  assert final["fewshot/digits_10shot"] == done


def test_eval_only_on_workdir_and_on_exported_npz(trained, tmp_path):
  workdir, final = trained
  # Same numbers from the workdir's checkpoint...
  out_dir = str(tmp_path / "eval_ckpt")
  config = digits_config(150)
  from big_vision import checkpoint  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(workdir, out_dir)
  res = eval_only.evaluate(config, out_dir)
  assert res["fewshot/digits_10shot"] == pytest.approx(
      final["fewshot/digits_10shot"], abs=1e-6)
  # ... and from an exported .npz through --config.model_init (CLI).
  npz = str(tmp_path / "m.npz")
  checkpoint.save_params(checkpoint.load_params(workdir), npz)
  cli = subprocess.run(
      [sys.executable, os.path.join(REPO, "tools", "eval_only.py"),
       "--config", os.path.join(REPO, "big_vision/configs/vit_digits.py:runlocal"),
       f"--config.model_init={npz}", "--workdir", str(tmp_path / "eval_npz")],
      capture_output=True, text=True, timeout=600)
  assert cli.returncode == 0, cli.stderr[-3000:]
  lines = metric_writer.read(str(tmp_path / "eval_npz"))
  assert len(lines) == 1 and lines[0]["step"] == 0
  assert "test/prec@1" in lines[0] and "fewshot/digits_10shot" in lines[0]

  # tools/bench_evals.py times the same evaluators on the same params: each
  # line prints its first metric, which must be eval_only's.
  bench = subprocess.run(
      [sys.executable, os.path.join(REPO, "tools", "bench_evals.py"),
       "--config", os.path.join(REPO, "big_vision/configs/vit_digits.py:runlocal"),
       f"--config.model_init={npz}", "--repeats=1"],
      capture_output=True, text=True, timeout=600)
  assert bench.returncode == 0, bench.stderr[-3000:]
  printed = {}
  for line in bench.stdout.splitlines():
    m = re.fullmatch(r"(\w+): first ([\d.]+) s, then ([\d.]+) s \(median of 1\), "
                     r"(\S+) = ([-\d.]+)", line)
    if m:
      assert float(m[2]) > 0 and float(m[3]) > 0, line
      printed[m[4]] = float(m[5])
  assert sorted(printed) == ["fewshot/digits_10shot", "test/loss"], bench.stdout
  for name, value in printed.items():
    assert value == pytest.approx(lines[0][name], abs=1e-5), name


def _predict_fn():
  model = vit.Model(10, width=16, depth=1, num_heads=2, mlp_dim=32,
                    patch_size=8)
  return program.make_predict_fn(model), model


def test_unknown_representation_layer_is_named():
  predict_fn, model = _predict_fn()
  from big_vision import sharding  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh()
  ev = fewshot_lsr.Evaluator(
      predict_fn, mesh=mesh, datasets={"digits": ("digits", "train", "test")},
      pp_train="decode|resize(16)|value_range(-1,1)|keep('image','label')",
      representation_layer="pre_logitz", shots=(1,), batch_size=64)
  params = model.init(jax.random.PRNGKey(0), np.zeros((1, 16, 16, 3)))["params"]
  with pytest.raises(ValueError, match="pre_logitz.*pre_logits"):
    dict(ev.run({"params": params}))


def test_too_few_shots_and_unknown_dataset_are_named():
  predict_fn, model = _predict_fn()
  from big_vision import sharding  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh()
  params = model.init(jax.random.PRNGKey(0), np.zeros((1, 16, 16, 3)))["params"]
  pp = "decode|resize(16)|value_range(-1,1)|keep('image','label')"
  ev = fewshot_lsr.Evaluator(
      predict_fn, mesh=mesh, datasets={"d": ("digits", "train[:40]", "test")},
      pp_train=pp, shots=(10,), batch_size=64)
  with pytest.raises(ValueError, match="class"):
    dict(ev.run({"params": params}))
  ev = fewshot_lsr.Evaluator(
      predict_fn, mesh=mesh, datasets={"d": ("digitz", "train", "test")},
      pp_train=pp, shots=(1,), batch_size=64)
  with pytest.raises(ValueError, match="digitz"):
    dict(ev.run({"params": params}))
