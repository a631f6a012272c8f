"""Bad inputs fail before any compilation, each with one clear error line.

The table below is the contract: every row is a mistake a user makes (a
typo in a key, an op, a dataset, a wrong type, an impossible batch/mesh, a
broken checkpoint path, an unusable workdir ...) and the words the error
must contain. Rows run in-process through `config_check.validate`; a few
go through the real CLI to check the `error: ...` line and exit status 2.
"""
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from big_vision import checkpoint
from big_vision import config_check
from big_vision.configs import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config():
  """A valid, tiny digits config (same shape as tools/chaos.py's)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 4
  c.num_classes = 10
  c.loss = "softmax_xent"
  c.input = common.digits_input(res=16, batch_size=16)
  c.model_name = "vit"
  c.model = dict(width=32, depth=1, mlp_dim=64, num_heads=2,
                 patch_size=(4, 4), pool_type="gap")
  c.optax_name = "scale_by_adam"
  c.lr = 1e-3
  c.wd = 1e-4
  c.schedule = dict(warmup_steps=1, decay_type="cosine")
  c.mixup = dict(p=0.2)
  c.log_training_steps = 1
  c.ckpt_steps = 2
  c.evals = ml_collections.ConfigDict()
  c.evals.test = common.digits_eval(res=16, log_steps=2, batch_size=16)
  return c


def _set(**kv):
  """A mutation setting (dotted) keys, ignoring the ConfigDict's types."""
  def mutate(c, tmp):
    del tmp
    for dotted, v in kv.items():
      *parents, leaf = dotted.split("__")
      node = c
      for p in parents:
        node = node[p]
      with node.ignore_type() if hasattr(node, "ignore_type") else _null():
        node[leaf] = v
  return mutate


class _null:  # pylint: disable=invalid-name
  def __enter__(self):
    return self

  def __exit__(self, *a):
    return False


def _delete(key):
  def mutate(c, tmp):
    del tmp
    del c[key]
  return mutate


def _model_init_truncated_npz(c, tmp):
  path = os.path.join(tmp, "init.npz")
  checkpoint.save_params({"head": {"kernel": np.ones((32, 10), np.float32)}},
                         path)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  c.model_init = path


def _model_init_dir_without_checkpoint(c, tmp):
  os.makedirs(os.path.join(tmp, "old_run", "checkpoints"))
  c.model_init = os.path.join(tmp, "old_run")


def _model_init_plain_dir(c, tmp):
  os.makedirs(os.path.join(tmp, "some_dir"))
  c.model_init = os.path.join(tmp, "some_dir")


def _workdir_is_a_file(c, tmp):
  del c
  path = os.path.join(tmp, "wd")
  open(path, "w").close()
  return path


def _workdir_under_a_file(c, tmp):
  del c
  open(os.path.join(tmp, "f"), "w").close()
  return os.path.join(tmp, "f", "wd")


def _workdir_of_another_model(c, tmp):
  del c
  wd = os.path.join(tmp, "wd")
  ckpt = checkpoint.Checkpointer(wd)
  ckpt.save(2, {"params": {"head": {"kernel": jnp.zeros((64, 10)),
                                    "bias": jnp.zeros((10,))}},
                "step": jnp.int32(2)})
  ckpt.wait()
  return wd


# (id, mutation, words the one-line error must contain).
BAD_INPUTS = [
    ("key_typo", _set(lrr=0.1), ["Unknown config key 'lrr'",
                                 "Did you mean 'lr'"]),
    ("input_key_typo", _set(input__batchsize=16),
     ["config.input.batchsize", "Did you mean 'batch_size'"]),
    ("mixup_key_typo", _set(mixup=dict(prob=0.2)),
     ["config.mixup.prob", "Valid choices: cutmix_alpha, p, switch_prob"]),
    ("lr_type", _set(lr="fast"), ["config.lr", "must be a finite number",
                                  "'fast'"]),
    ("steps_zero", _set(total_steps=0), ["config.total_steps", ">= 1"]),
    ("steps_float", _set(total_steps=2.5), ["config.total_steps",
                                            "integer"]),
    ("no_duration", _delete("total_steps"), ["needs one of total_steps"]),
    ("two_durations", _set(total_epochs=1.0), ["Set only one of"]),
    ("num_classes_type", _set(num_classes="ten"), ["config.num_classes",
                                                   "integer"]),
    ("ema_decay_range", _set(ema_decay=1.5), ["config.ema_decay", "< 1"]),
    ("log_steps_zero", _set(log_training_steps=0),
     ["config.log_training_steps", ">= 1"]),
    ("pp_op_typo", _set(input__pp="decode|resize(16)|value_rang(-1, 1)"),
     ["config.input.pp", "value_rang", "Did you mean 'value_range'"]),
    ("pp_syntax", _set(input__pp="decode|resize(16"),
     ["config.input.pp", "Cannot parse op #2"]),
    ("pp_bad_kwarg", _set(input__pp="decode|resize(16, methd='area')"),
     ["config.input.pp", "Bad arguments", "methd"]),
    ("pp_missing_input", _set(input__pp="decode|resize(16)|onehot(10, "
                                        "key='label', key_result='labels')"
                                        "|keep('labels')"),
     ["config.input.pp", "'image' is not produced"]),
    ("eval_pp_typo", _set(evals__test__pp_fn="decode|resise(16)"),
     ["config.evals.test.pp_fn", "Did you mean 'resize'"]),
    ("dataset_typo", _set(input__data=dict(name="digit", split="train")),
     ["config.input.data", "Unknown dataset 'digit'", "'digits'"]),
    ("split_typo", _set(input__data=dict(name="digits", split="trian")),
     ["config.input.data", "Unknown split 'trian'", "train"]),
    ("eval_dataset_typo", _set(evals__test__data=dict(name="digitz",
                                                      split="test")),
     ["config.evals.test.data", "'digits'"]),
    ("model_typo", _set(model_name="vitt"), ["config.model_name",
                                             "Did you mean 'vit'"]),
    ("model_option_typo", _set(model__widht=32),
     ["config.model", "widht", "Did you mean 'width'"]),
    ("model_variant", _set(model=dict(variant="Q/16")),
     ["config.model", "Unknown ViT variant 'Q'"]),
    ("loss_typo", _set(loss="softmax_xnet"), ["config.loss",
                                              "Did you mean 'softmax_xent'"]),
    ("evaluator_type", _set(evals__test__type="clasification"),
     ["config.evals.test", "Did you mean 'classification'"]),
    ("evaluator_kwarg", _set(evals__test__batchsize=16),
     ["config.evals.test", "batchsize", "Did you mean 'batch_size'"]),
    ("evaluator_no_type", _set(evals__x=dict(log_steps=1)),
     ["config.evals.x needs a 'type'"]),
    ("eval_batch", _set(evals__test__batch_size=12),
     ["config.evals.test.batch_size", "not divisible by the 8"]),
    ("optimizer_typo", _set(optax_name="scale_by_adamm"),
     ["scale_by_adamm", "scale_by_adam"]),
    ("optimizer_kwarg", _set(optax=dict(b3=0.9)), ["config.optax", "b3"]),
    ("schedule_coverage", _set(schedule=[(".*/kernel", dict(
        decay_type="cosine"))]), ["match no pattern of config.schedule"]),
    ("schedule_decay_typo", _set(schedule=dict(decay_type="cosin")),
     ["config.schedule", "cosin", "Did you mean 'cosine'"]),
    ("batch_devices", _set(input__batch_size=12),
     ["config.input.batch_size=12 is not divisible by the 8"]),
    ("accum_steps", _set(accum_steps=3), ["config.accum_steps",
                                          "accum_steps * devices = 3 * 8"]),
    ("mesh_size", _set(mesh=[("data", 3)]), ["config.mesh", "needs 3 devices",
                                             "8 are available"]),
    ("mesh_type", _set(mesh="data"), ["config.mesh", "list of"]),
    ("sharding_tactic", _set(sharding_strategy=[(".*", "fsdpp")]),
     ["config.sharding_strategy", "fsdpp", "Did you mean 'fsdp'"]),
    ("model_init_missing", _set(model_init="/nonexistent/vit.npz"),
     ["config.model_init", "no file or directory '/nonexistent/vit.npz'"]),
    ("model_init_truncated", _model_init_truncated_npz,
     ["config.model_init", "not a readable .npz", "truncated"]),
    ("model_init_empty_workdir", _model_init_dir_without_checkpoint,
     ["config.model_init", "has no complete checkpoint"]),
    ("model_init_plain_dir", _model_init_plain_dir,
     ["config.model_init", "not a training workdir"]),
    ("workdir_is_file", _workdir_is_a_file,
     ["--workdir", "exists and is not a directory"]),
    ("workdir_unwritable", _workdir_under_a_file,
     ["--workdir", "is not writable"]),
    ("workdir_other_model", _workdir_of_another_model,
     ["--workdir", "checkpoint (step 2) of a different model",
      "Use a new --workdir"]),
]


@pytest.fixture(name="no_compile")
def _no_compile():
  """Records every XLA compilation (jax's backend-compile events)."""
  compiled = []

  def listener(event, duration, **kw):
    del duration, kw
    if event == "/jax/core/compile/backend_compile_duration":
      compiled.append(event)
  jax.monitoring.register_event_duration_secs_listener(listener)
  jax.jit(lambda x: x + 1)(1.0).block_until_ready()  # A new function: compiles.
  assert compiled, "the compile listener does not work on this jax"
  compiled.clear()
  yield compiled
  jax.monitoring.unregister_event_duration_listener(listener)


def test_the_tiny_config_is_valid(tmp_path, no_compile):
  config_check.validate(tiny_config(), str(tmp_path / "wd"))
  assert not no_compile


@pytest.mark.parametrize("mutate,words", [r[1:] for r in BAD_INPUTS],
                         ids=[r[0] for r in BAD_INPUTS])
def test_bad_input_fails_early_with_one_clear_line(mutate, words, tmp_path,
                                                   no_compile):
  config = tiny_config()
  workdir = mutate(config, str(tmp_path)) or str(tmp_path / "wd")
  no_compile.clear()  # Setting up a bad input may compile; checking may not.
  with pytest.raises(config_check.ConfigError) as e:
    config_check.validate(config, workdir)
  msg = str(e.value)
  assert "\n" not in msg
  for w in words:
    assert w in msg, f"{w!r} not in: {msg}"
  assert not no_compile, "the error must come before anything is compiled"


def test_table_has_at_least_25_distinct_bad_inputs():
  assert len({r[0] for r in BAD_INPUTS}) == len(BAD_INPUTS) >= 25


def test_flag_errors_become_one_line():
  tb = ("flag --config=x.py:runlcoal: Error whilst parsing config file:\n\n"
        "  Traceback (most recent call last):\n    File ...\n"
        "  ValueError: Unknown config arg 'runlcoal'. Did you mean "
        "'runlocal'?\n")
  assert config_check.flag_error_line(ValueError(tb)) == (
      "flag --config=x.py:runlcoal: Error whilst parsing config file: "
      "ValueError: Unknown config arg 'runlcoal'. Did you mean 'runlocal'?")


# The real CLI: one `error:` line on stderr, exit status 2, no traceback.
CLI_CASES = [
    (["--config.lrr=0.1"], ["error: Unknown config key 'lrr'",
                            "Did you mean 'lr'"]),
    (["--config.input.data.name=digitz"], ["error: config.input.data",
                                           "'digits'"]),
    (["--config.model.variant=Q/16"], ["error: config.model",
                                       "Unknown ViT variant 'Q'"]),
]


def test_cli_prints_one_error_line_and_exits_2(tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
  config = "big_vision/configs/vit_digits.py"
  procs = []
  for i, (args, words) in enumerate(
      CLI_CASES + [([":runlcoal"], ["error:", "Did you mean 'runlocal'"])]):
    cfg_args = ["--config", config + args[0]] if args[0].startswith(":") \
        else ["--config", config + ":runlocal", *args]
    cmd = [sys.executable, "-m", "big_vision.train", *cfg_args,
           "--workdir", str(tmp_path / f"wd{i}")]
    procs.append((subprocess.Popen(cmd, cwd=REPO, env=env, text=True,
                                   stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE),
                  words, time.monotonic()))
  for proc, words, _ in procs:
    out, err = proc.communicate(timeout=600)
    lines = [l for l in err.splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("error:")]
    assert proc.returncode == 2, (out, err[-3000:])
    assert len(errors) == 1 and lines[-1] == errors[0], err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    for w in words:
      assert w in errors[0], errors[0]


def test_model_init_short_names_and_sub_models_pass_the_probe(tmp_path):
  """Released short names resolve to their URL (probed when read), and
  "file.npz:img" probes file.npz; a missing file is still named."""
  npz = tmp_path / "two.npz"
  np.savez(npz, **{"img/head/kernel": np.zeros((2, 2))})
  for init in ("howto-i21k-B/32", f"{npz}:img"):
    config = tiny_config()
    config.model_init = init
    config_check._check_model_init(config)  # pylint: disable=protected-access
  config = tiny_config()
  config.model_init = str(tmp_path / "nope.npz") + ":img"
  with pytest.raises(config_check.ConfigError, match="nope.npz"):
    config_check._check_model_init(config)  # pylint: disable=protected-access
