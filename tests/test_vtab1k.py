"""VTAB-1k suite config: 19 tasks, their splits and labels; the suite's mean."""
import importlib.util
import io
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from big_vision import config_check
from big_vision import metric_writer
from big_vision import train
from big_vision.pp import builder
from big_vision.pp import ops_vtab

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATH = os.path.join(REPO, "big_vision/configs/proj/vtab/vtab1k.py")


def _module():
  spec = importlib.util.spec_from_file_location("vtab1k", PATH)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _size(split, total=None):
  """Examples in one 'name[a:b]' slice (total needed for open ends)."""
  m = re.fullmatch(r"\w+\[(\d*):(\d*)\]", split)
  assert m, split
  lo = int(m.group(1) or 0)
  hi = int(m.group(2)) if m.group(2) else total
  return hi - lo


def test_nineteen_tasks_with_800_train_and_200_val():
  mod = _module()
  suite = mod.get_config(None).evals.vtab
  assert suite.type == "suite" and suite.evaluator == "finetune"
  assert len(suite.tasks) == 19
  assert {g: len(v) for g, v in suite.groups.items()} == {
      "natural": 7, "specialized": 4, "structured": 8}
  assert sorted(sum(map(list, suite.groups.values()), [])) == sorted(
      suite.tasks)
  for name, task in suite.tasks.items():
    assert _size(task.train_data.split) == 800, name
    assert _size(task.test_data.split) == 200, name  # val200 by default.
    assert task.train_data.name == task.test_data.name
  # The benchmark's number: train800val200 (1000 examples) -> test split.
  final = mod.get_config("final").evals.vtab
  for name, task in final.tasks.items():
    parts = task.train_data.split.split("+")
    assert [_size(p) for p in parts] == [800, 200], name
    assert parts[1] == suite.tasks[name].test_data.split
    assert "[:800]" not in task.test_data.split
  assert final.tasks.eurosat.test_data.split == "train[21600:]"
  assert final.tasks.clevr_count.test_data.split == "validation"
  classes = {n: t.num_classes for n, t in suite.tasks.items()}
  assert classes == {
      "caltech101": 102, "cifar100": 100, "dtd": 47, "flowers102": 102,
      "pets": 37, "sun397": 397, "svhn": 10, "camelyon": 2, "eurosat": 10,
      "resisc45": 45, "retinopathy": 5, "clevr_count": 8,
      "clevr_distance": 6, "dmlab": 6, "kitti_distance": 4,
      "dsprites_loc": 16, "dsprites_ori": 16, "smallnorb_azi": 18,
      "smallnorb_ele": 9}
  # Validation slices carved from `train` start where the benchmark's
  # train part ends (90% / 80% / 60% of TFDS train).
  carved = {"caltech101": (3060, 90), "cifar100": (50000, 90),
            "pets": (3680, 80), "svhn": (73257, 90), "eurosat": (27000, 60),
            "resisc45": (31500, 60), "clevr_count": (70000, 90),
            "dsprites_loc": (737280, 80)}
  for name, (n, pct) in carved.items():
    start = int(re.search(r"\[(\d+):", suite.tasks[name].test_data.split)[1])
    assert start == round(n * pct / 100), name


def test_config_validates(monkeypatch):
  """config_check.validate, datasets aside (not prepared offline): their
  names must still be TFDS builders (and configs) this tfds knows."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  seen = []
  monkeypatch.setattr(config_check, "_check_dataset",
                      lambda data, where: seen.append(data["name"]))
  config = _module().get_config(None)
  # program.build reads the input's element spec: the same pp on digits.
  config.input.data = dict(name="digits", split="train")
  config_check.validate(config)
  assert seen == ["digits"]  # The suite's datasets are checked below.
  for task in config.evals.vtab.tasks.values():
    name, _, cfg = task.train_data.name.partition("/")
    cls = tfds.builder_cls(name)
    if cfg:
      assert cfg in [c.name for c in cls.BUILDER_CONFIGS], task
  # The suite builds its 19 evaluators (keys and pp strings checked).
  from big_vision.evaluators import suite  # pylint: disable=g-import-not-at-top
  ev = suite.Evaluator(lambda p, x: (x, {}), mesh=None,
                       **{k: v for k, v in config.evals.vtab.items()
                          if k not in ("type", "log_steps")})
  assert len(ev.evaluators) == 19
  with pytest.raises(ValueError, match="steps"):
    bad = dict(config.evals.vtab.shared, stepz=3)
    suite.Evaluator(lambda p, x: (x, {}), mesh=None, evaluator="finetune",
                    tasks=dict(config.evals.vtab.tasks), shared=bad)


# ----------------------------------------------------------------------------
# Labels of the structured tasks.
# ----------------------------------------------------------------------------
def _label(task, data):
  return int(ops_vtab.get_vtab_label(task)(dict(data))["label"])


def test_clevr_labels():
  objs = lambda n, depths: {"size": tf.zeros([n], tf.int64),  # pylint: disable=g-long-lambda
                            "pixel_coords": tf.constant(
                                [[0.0, 0.0, d] for d in depths])}
  assert _label("clevr_count", {"objects": objs(3, [9] * 3)}) == 0
  assert _label("clevr_count", {"objects": objs(10, [9] * 10)}) == 7
  # Thresholds 0, 8, 8.5, 9, 9.5, 10, 100 on the closest depth.
  for depth, want in [(7.9, 0), (8.2, 1), (8.7, 2), (9.2, 3), (9.7, 4),
                      (12.0, 5)]:
    got = _label("clevr_distance", {"objects": objs(3, [20.0, depth, 30.0])})
    assert got == want, depth


def test_kitti_closest_vehicle_distance():
  def data(types, depths):
    return {"objects": {"type": tf.constant(types, tf.int64),
                        "location": tf.constant([[0.0, 0.0, d]
                                                 for d in depths])}}
  assert _label("kitti_distance", data([0, 1], [30.0, 5.0])) == 0
  assert _label("kitti_distance", data([2, 4], [12.0, 1.0])) == 1  # 4: no.
  assert _label("kitti_distance", data([0], [25.0])) == 2
  assert _label("kitti_distance", data([3, 5], [1.0, 2.0])) == 3  # None.


def test_dsprites_and_smallnorb_labels():
  for x in range(32):
    assert _label("dsprites_loc", {"label_x_position": x}) == x // 2
  for o in range(40):
    assert _label("dsprites_ori", {"label_orientation": o}) == int(o / 2.5)
  assert max(int(o / 2.5) for o in range(40)) == 15
  assert _label("smallnorb_azi", {"label_azimuth": 17}) == 17
  assert _label("smallnorb_ele", {"label_elevation": 8}) == 8
  assert _label("dmlab", {"label": 4}) == 4
  with pytest.raises(ValueError, match="clevr_count"):
    ops_vtab.get_vtab_label("clevr")


def test_task_pp_on_an_example():
  from PIL import Image  # pylint: disable=g-import-not-at-top
  mod = _module()
  gray = np.zeros((64, 64), np.uint8)
  gray[:32] = 1  # dSprites-like 0/1 pixels.
  buf = io.BytesIO()
  Image.fromarray(gray).save(buf, format="PNG")
  out = builder.get_preprocess_fn(mod.task_pp("dsprites_loc", 16, res=32))(
      {"image": tf.constant(buf.getvalue()), "label_x_position": 31})
  assert out["image"].shape == (32, 32, 3)
  np.testing.assert_allclose(out["image"][0, 0], [1.0, 1.0, 1.0])
  np.testing.assert_allclose(out["image"][-1, -1], [-1.0, -1.0, -1.0])
  assert np.argmax(out["labels"]) == 15 and out["labels"].shape == (16,)
  assert sorted(out) == ["image", "labels"]


def test_runlocal_suite_reports_tasks_and_mean(tmp_path):
  config = _module().get_config("runlocal")
  assert config.total_steps <= 5
  train.train(config, str(tmp_path))
  last = {}
  for line in metric_writer.read(str(tmp_path)):
    last.update(line)
  a, b = last["vtab/digits_a/prec@1"], last["vtab/digits_b/prec@1"]
  assert 0 <= a <= 1 and 0 <= b <= 1
  assert last["vtab/mean/prec@1"] == pytest.approx((a + b) / 2)
  assert last["vtab/both_mean/prec@1"] == pytest.approx((a + b) / 2)


def test_suite_rejects_bad_groups_and_pp_early():
  from big_vision.evaluators import suite  # pylint: disable=g-import-not-at-top
  task = dict(train_data=dict(name="digits", split="train"),
              test_data=dict(name="digits", split="test"),
              pp_train="decode", pp_eval="decode", num_classes=10)
  with pytest.raises(ValueError, match="'b'"):
    suite.Evaluator(None, mesh=None, evaluator="finetune", tasks={"a": task},
                    groups={"g": ("a", "b")})
  with pytest.raises(ValueError, match="suite of suites"):
    suite.Evaluator(None, mesh=None, evaluator="suite", tasks={"a": task})
  with pytest.raises(ValueError, match="decod"):
    suite.Evaluator(None, mesh=None, evaluator="finetune",
                    tasks={"a": dict(task, pp_eval="decod")})
