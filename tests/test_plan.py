"""tools/plan.py: memory plan of the real train step, without allocating it.

The full-size claim (ViT-G/14 at 32 images per device fits 16 GiB on 256
devices) takes minutes to compile on CPU, so it is a tool run recorded in
tools/plan.py's docstring. Here a scaled-down ViT-G (same recipe, options and
2-D mesh; width/depth/classes/resolution shrunk) is planned on 8 devices
through the command line, and the figures are checked against closed forms.
"""
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAN = os.path.join(REPO, "tools", "plan.py")
G_CONFIG = os.path.join("big_vision", "configs", "proj", "scaling_laws",
                        "train_vit_g.py")
GiB = 2**30
G14_PARAMS = 1_930_404_761  # ViT-G/14, MAP head, 29,593 classes.


def load_plan_module():
  spec = importlib.util.spec_from_file_location("plan_tool", PLAN)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.mark.parametrize("pp,want", [
    ("decode_jpeg_and_inception_crop(224)|flip_lr|value_range(-1, 1)", 224),
    ("decode|resize(20)|random_crop(16)|value_range(-1, 1)", 16),
    ("decode|resize_small(256)|central_crop(384)", 384),
    ("decode|value_range(-1, 1)", 224),
    (None, 224),
])
def test_image_size_from_pp(pp, want):
  assert load_plan_module().image_size_from_pp(pp) == want


def _figures(**kw):
  f = dict(devices=256, mesh={"data": 16, "fsdp": 16}, batch_size=8192,
           per_device_batch=32, image_size=224, params=G14_PARAMS,
           opt_bytes_per_param=2.0, params_bytes=GiB // 2,
           opt_bytes=GiB // 4, grads_bytes=GiB // 2,
           replicated_params_bytes=0, compile_s=1.0, argument_bytes=GiB,
           output_bytes=GiB, alias_bytes=GiB, temp_bytes=30 * GiB)
  f.update(kw)
  f["total_bytes"] = f["argument_bytes"] + f["temp_bytes"]
  return f


def test_report_says_when_the_budget_is_exceeded_and_which_knob_helps():
  import ml_collections  # pylint: disable=g-import-not-at-top
  plan = load_plan_module()
  config = ml_collections.ConfigDict(dict(model=dict(
      scan=True, remat_policy="none", dtype_mm="bfloat16")))
  lines = []
  plan.report(config, _figures(), 16, log=lines.append)
  text = "\n".join(lines)
  assert "EXCEEDS the budget of 16 GiB per device by 15.00 GiB" in text
  assert "remat_policy=nothing_saveable" in text  # Activations dominate...
  assert "accum_steps=2" in text
  assert "fsdp" not in text.split("Knobs")[1]  # ...not the sharded state.
  assert lines[-1] == "per-device total: 31.000 GiB"

  # The state dominates (or big tensors stay replicated): more fsdp.
  config.model.remat_policy = "nothing_saveable"
  lines = []
  plan.report(config, _figures(argument_bytes=20 * GiB, temp_bytes=GiB,
                               replicated_params_bytes=GiB), 16,
              log=lines.append)
  text = "\n".join(lines)
  assert "('fsdp', 32)" in text and "remat" not in text
  lines = []
  plan.report(config, _figures(temp_bytes=5 * GiB), 16, log=lines.append)
  assert "fits the budget of 16 GiB per device (10.00 GiB to spare)" in (
      "\n".join(lines))


def test_cli_plans_scaled_down_vit_g_with_exact_state_accounting(tmp_path):
  out = str(tmp_path / "plan.json")
  # ViT-G/14 shrunk 8x in width/mlp/classes and 8x in depth, 4 images per
  # device at 56px, every tensor 4-way fsdp-sharded on a (2, 4) mesh.
  cmd = [sys.executable, PLAN,
         "--config", f"{G_CONFIG}:variant=G/14,num_classes=3696,fsdp=4",
         "--devices", "8", "--per_device_batch", "4", "--image_size", "56",
         "--config.model.width=208", "--config.model.depth=6",
         "--config.model.mlp_dim=1024",
         "--config.sharding_strategy=(('.*', "
         "'fsdp(min_size_to_shard_mb=0)'),)",
         "--device_memory_gib", "1", "--json_out", out]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                        env=env, timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  f = json.load(open(out))

  assert f["devices"] == 8 and f["mesh"] == {"data": 2, "fsdp": 4}
  assert f["batch_size"] == 32 and f["image_size"] == 56
  # Parameter count by hand: stem, posemb, blocks, encoder norm, MAP, head.
  w, m, d, c, p = 208, 1024, 6, 3696, 14
  block = 4 * (w * w + w) + 2 * w * m + m + w + 4 * w
  map_head = w + 4 * (w * w + w) + 2 * w * m + m + w + 2 * w
  want = (p * p * 3 * w + w + 16 * w + d * block + 2 * w + map_head
          + w * c + c)
  assert f["params"] == want
  # Every dim divisible by 4: one float32 quarter of each tensor per device.
  assert f["replicated_params_bytes"] == 0
  assert f["params_bytes"] == f["grads_bytes"] == 4 * want // 4
  # XLA's argument bytes are exactly the sharded state plus the batch shard.
  images, labels = 4 * 56 * 56 * 3 * 4, 4 * c * 4
  assert f["batch_bytes"] == images + labels
  assert f["argument_bytes"] == (f["params_bytes"] + f["opt_bytes"]
                                 + f["batch_bytes"] + 4)  # + int32 step.
  assert f["alias_bytes"] >= f["params_bytes"] + f["opt_bytes"]  # Donated.
  assert f["opt_bytes"] < f["opt_total_bytes"] / 4 + 2**14
  assert f["total_bytes"] == f["argument_bytes"] + f["temp_bytes"]
  # Proportional budget: 16 GiB scaled by the parameter count (the full
  # ViT-G/14 plan uses 6.1 of its 16 GiB; see tools/plan.py).
  assert f["total_bytes"] < 16 * GiB * want / G14_PARAMS
  assert re.fullmatch(r"per-device total: \d+\.\d{3} GiB", lines[-1])
  assert float(lines[-1].split()[2]) == pytest.approx(
      f["total_bytes"] / GiB, abs=1e-3)
  assert any(l.startswith("fits the budget of 1 GiB") for l in lines)
  assert "parameters: " + f"{want:,}" in proc.stdout
