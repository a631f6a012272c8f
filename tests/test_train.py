"""End-to-end tests of big_vision/train.py on the embedded digits data."""
import gc
import glob
import importlib.util
import os
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest

from big_vision import checkpoint
from big_vision import metric_writer
from big_vision import program
from big_vision import train
from big_vision import utils

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, "big_vision", "configs")


def load_config(path, arg=None):
  spec = importlib.util.spec_from_file_location("cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def all_config_files():
  files = glob.glob(os.path.join(CONFIG_DIR, "**", "*.py"), recursive=True)
  return sorted(os.path.relpath(f, REPO) for f in files
                if not os.path.basename(f).startswith(("_", "common")))


def tiny_digits(**overrides):
  config = load_config(os.path.join(CONFIG_DIR, "vit_digits.py"), "runlocal")
  config.model = dict(width=32, depth=1, mlp_dim=64, num_heads=2,
                      patch_size=(8, 8), pool_type="gap")
  config.schedule = dict(decay_type="constant")
  config.evals = {}
  for k, v in overrides.items():
    config[k] = v
  return config


def flat_params(workdir):
  return utils.flatten_dict(checkpoint.load_params(workdir))


def runlocal_arg(config_file, tmp_path) -> str:
  """`runlocal`, plus what a config cannot run without (a teacher file)."""
  if config_file.endswith(os.path.join("proj", "distill", "digits.py")):
    # pylint: disable-next=g-import-not-at-top
    from test_recipes_as_written import _save_distill_teacher
    return f"runlocal,teacher={_save_distill_teacher(str(tmp_path / 't.npz'))}"
  return "runlocal"


# Every config's `:runlocal` is built as train.train builds it: the config
# check (schema, data, pp, the abstract program), one real batch through its
# input pipeline, its evaluators, and the train step traced on that batch's
# shapes. XLA compiles and runs the same model code in
# test_recipes_as_written.py (every config as written); two representatives
# also train here end to end, so the runlocal loop itself stays covered.
RUNLOCAL_TRAINED = ("big_vision/configs/vit_i1k.py",
                    "big_vision/configs/proj/image_text/siglip_b16.py")


@pytest.mark.parametrize("config_file", all_config_files())
def test_every_config_runlocal_builds_reads_data_and_traces(config_file,
                                                            tmp_path):
  # pylint: disable=g-import-not-at-top
  from big_vision import config_check
  from big_vision.evaluators import common as evaluators
  # pylint: enable=g-import-not-at-top
  config = load_config(os.path.join(REPO, config_file),
                       runlocal_arg(config_file, tmp_path))
  assert config.total_steps <= 5, "runlocal must shrink the run"
  prog = config_check.validate(config, str(tmp_path / "wd"))
  batch = next(program.train_batches(config, prog.mesh, 0))
  abstract = prog.abstract_batch()
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      k: (v.shape, v.dtype) for k, v in abstract.items()}
  evals = evaluators.from_config(
      config, prog.predict_fn, prog.mesh, total_steps=prog.total_steps,
      steps_per_epoch=prog.steps_per_epoch, batch_size=prog.batch_size)
  assert evals, "no evaluator"
  state, info = jax.eval_shape(prog.update_fn, prog.abstract_state(), batch)
  assert info["training_loss"].shape == ()
  assert jax.tree.structure(state) == jax.tree.structure(prog.abstract_state())


@pytest.mark.parametrize("config_file", RUNLOCAL_TRAINED)
def test_representative_runlocal_configs_train_two_steps(config_file,
                                                         tmp_path):
  config = load_config(os.path.join(REPO, config_file),
                       runlocal_arg(config_file, tmp_path))
  final = train.train(config, str(tmp_path / "wd"))
  assert np.isfinite(final["training_loss"])
  lines = metric_writer.read(str(tmp_path / "wd"))
  assert lines[-1]["step"] == config.total_steps
  assert any(k.count("/") for l in lines for k in l), "no evaluator ran"


class TracesAndCompiles:
  """(kind, function, thread) of each trace and compile jax reports for the
  functions named `funs` (the train step is `update`, the init `init`)."""

  def __init__(self, funs=("update",)):
    self.funs = funs
    self.events = []

  def __call__(self, name, secs, **kw):
    del secs
    kind = name.rsplit("/", 1)[-1]
    fun = (kw.get("fun_name") or "").removeprefix("jit(").removesuffix(")")
    if fun in self.funs and kind in (
        "jaxpr_trace_duration", "backend_compile_duration"):
      self.events.append((kind, fun, threading.current_thread().name))

  def take(self):
    out, self.events = self.events, []
    return out


def test_resume_continues_from_checkpoint_and_matches_uninterrupted(
    tmp_path, monkeypatch, own_compile_cache):
  del own_compile_cache  # The fresh run compiles (and stores) its step.
  compiles = TracesAndCompiles()
  jax.monitoring.register_event_duration_secs_listener(compiles)
  try:
    # Uninterrupted: 6 steps.
    full = tiny_digits(total_steps=6, ckpt_steps=3)
    train.train(full, str(tmp_path / "full"))
    fresh = compiles.take()
    # Interrupted after the first checkpoint (step 3), then the same command.
    part = tiny_digits(total_steps=3, ckpt_steps=3)
    train.train(part, str(tmp_path / "resumed"))
    assert checkpoint.Checkpointer(
        str(tmp_path / "resumed")).latest_step() == 3
    compiles.take()
    train.train(tiny_digits(total_steps=6, ckpt_steps=3),
                str(tmp_path / "resumed"))
    resumed = compiles.take()
    # Relaunched once finished: nothing to train, so nothing compiled and
    # no training data read.
    def no_data(*args, **kwargs):
      raise AssertionError("a finished run read training data")
    with monkeypatch.context() as m:
      m.setattr(program, "train_batches", no_data)
      train.train(tiny_digits(total_steps=6, ckpt_steps=3),
                  str(tmp_path / "resumed"))
  finally:
    jax.monitoring.unregister_event_duration_listener(compiles)
  # The fresh run traced and compiled its step once, ahead, on the compile
  # thread (train._compile_meanwhile), for the abstract state, and the
  # first call with the initialised state ran that program. The resumed
  # run (the same config) loaded it from the executable cache: not even
  # traced, and it took the restored state.
  assert sorted(kind for kind, _, _ in fresh) == [
      "backend_compile_duration", "jaxpr_trace_duration"], fresh
  assert all(t.startswith("big_vision_compile") for _, _, t in fresh), fresh
  assert not resumed, resumed
  assert not compiles.events, compiles.events

  steps = [l["step"] for l in metric_writer.read(str(tmp_path / "resumed"))
           if "training_loss" in l]
  assert steps == list(range(1, 7)), steps  # each step exactly once
  a, b = flat_params(tmp_path / "full"), flat_params(tmp_path / "resumed")
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_export_then_model_init_starts_from_those_params(tmp_path):
  train.train(tiny_digits(total_steps=2), str(tmp_path / "pre"))
  npz = str(tmp_path / "model.npz")
  subprocess.run([sys.executable, os.path.join(REPO, "tools", "export.py"),
                  "--workdir", str(tmp_path / "pre"), "--out", npz],
                 check=True, capture_output=True)
  exported = utils.flatten_dict(checkpoint.load_params(npz))
  np.testing.assert_array_equal(
      exported["head/kernel"], flat_params(tmp_path / "pre")["head/kernel"])

  # lr 0: the run's params stay exactly the loaded ones.
  config = tiny_digits(total_steps=1, model_init=npz, lr=0.0, wd=0.0)
  train.train(config, str(tmp_path / "init"))
  after = flat_params(tmp_path / "init")
  for k, v in exported.items():
    np.testing.assert_array_equal(after[k], v, err_msg=k)

  # A checkpoint that does not fit: the state is initialised on a thread of
  # train(); its error reaches the caller, and no step is checkpointed.
  bad = dict(exported, **{"head/kernel": np.zeros((5, 10), np.float32)})
  checkpoint.save_params(utils.unflatten_dict(bad), npz)
  with pytest.raises(ValueError, match=r"head/kernel: \(5, 10\) vs \(32, 10\)"):
    train.train(tiny_digits(total_steps=1, model_init=npz),
                str(tmp_path / "bad"))
  assert not glob.glob(str(tmp_path / "bad" / "checkpoints" / "*[0-9]*"))


@pytest.mark.parametrize("overrides,message", [
    (dict(input=dict(batch_size=12)), "not divisible by the 8"),
    (dict(loss="softmax_xnet"), "Did you mean 'softmax_xent'"),
    (dict(optax_name="scale_by_adamm"), "scale_by_adamm"),
    (dict(evals=dict(t=dict(type="clasification", log_steps=1))),
     "Did you mean 'classification'"),
    (dict(schedule=[(".*/kernel", dict(decay_type="constant"))]),
     "match no pattern of config.schedule"),
    (dict(model_name="vitt"), "Did you mean 'vit'"),
])
def test_bad_config_fails_before_compiling(overrides, message, tmp_path,
                                           monkeypatch):
  config = tiny_digits(total_steps=2)
  for k, v in overrides.items():
    if isinstance(v, dict) and k == "input":
      config.input.update(v)
    else:
      with config.ignore_type():
        config[k] = v
  compiled = []
  real_jit = jax.jit
  monkeypatch.setattr(train.jax, "jit", lambda *a, **k: compiled.append(1) or
                      real_jit(*a, **k))
  with pytest.raises(ValueError, match=message):
    train.train(config, str(tmp_path))
  assert not compiled, "the error must come before anything is compiled"


def test_only_a_command_line_run_freezes_the_heap(monkeypatch):
  """train._freeze_heap: a CLI process (one run) freezes what is alive and
  raises the first-generation threshold; a process that may call train()
  again (this one) keeps collecting, so earlier runs' garbage is freed."""
  calls = []
  monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
  monkeypatch.setattr(gc, "set_threshold",
                      lambda *t: calls.append(t))
  train._freeze_heap()
  assert not calls
  monkeypatch.setattr(train, "_ONE_RUN_PROCESS", True)
  train._freeze_heap()
  assert calls == ["freeze", (10_000, 10, 10)]
