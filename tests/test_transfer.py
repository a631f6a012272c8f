"""configs/transfer.py: pretrained checkpoint -> fine-tune, end to end."""
import logging

import jax
import numpy as np
import pytest

from big_vision import checkpoint
from big_vision import metric_writer
from big_vision import program
from big_vision import train
from big_vision import utils
from big_vision.configs import common
from big_vision.configs import transfer
from big_vision.models import common as model_common
from big_vision.models import vit
import xla_opt  # tests/ is on sys.path (rootdir conftest).

# Trains for hundreds of steps: optimised code (xla_opt.py), fixture too.
pytestmark = pytest.mark.xla_optimized

# The "pretrained" backbone: a small class-token ViT, as the i21k releases.
TINY_VIT = dict(width=48, depth=2, mlp_dim=96, num_heads=3, patch_size=(8, 8),
                pool_type="tok")


def _pretrain_config(steps):
  """Digits at 32px, with the `finetune` evaluator at the start and end."""
  config = transfer.get_config("dataset=digits,crop=32,runlocal")
  config.model = dict(TINY_VIT)
  assert "model_init" not in config  # runlocal of a named model: scratch.
  config.optax_name = "scale_by_adam"
  config.lr = 2e-3
  config.total_steps = steps
  config.ckpt_steps = steps
  config.input.batch_size = 64
  config.log_training_steps = steps
  # A linear probe (with augmentation) of the pre-logits, 20 SGD steps.
  config.evals = dict(ft=dict(
      type="finetune", log_steps=10_000,
      train_data=dict(name="digits", split="train"),
      test_data=dict(name="digits", split="test"),
      pp_train=common.digits_pp(32, train=True),
      pp_eval=common.digits_pp(32, train=False),
      num_classes=10, steps=20, batch_size=64, train_params="head",
      optimizer=dict(lr=0.1)))
  return config


def _transfer_config(model, steps, crop=48):
  """transfer.py on digits at a new resolution, runlocal-sized but longer."""
  config = transfer.get_config(f"model={model},dataset=digits,crop={crop},"
                               f"runlocal,steps={steps},batch_size=64")
  config.model = dict(TINY_VIT)
  config.log_training_steps = steps
  return config


def _test_acc(workdir):
  return [l["test/prec@1"] for l in metric_writer.read(str(workdir))
          if "test/prec@1" in l][-1]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("pretrain")
  with xla_opt.optimized():
    train.train(_pretrain_config(150), str(workdir))
  return str(workdir)


def test_finetune_evaluator_accuracy_grows_with_pretraining(pretrained):
  acc = {l["step"]: l["ft/prec@1"] for l in metric_writer.read(pretrained)
         if "ft/prec@1" in l}
  print("finetune evaluator prec@1 by step:", acc)
  assert sorted(acc) == [0, 150]
  assert acc[150] > acc[0] + 0.1


def test_transfer_loads_backbone_resamples_posemb_and_beats_scratch(
    pretrained, tmp_path, monkeypatch, caplog):
  pre = utils.flatten_dict(checkpoint.load_params(pretrained))
  loaded = {}
  real_load = vit.load

  def spy_load(*args, **kwargs):
    out = real_load(*args, **kwargs)
    loaded.update(utils.flatten_dict(out))
    return out
  monkeypatch.setattr(vit, "load", spy_load)

  config = _transfer_config(pretrained, steps=60)
  assert config.model_init == pretrained
  with caplog.at_level(logging.INFO):
    train.train(config, str(tmp_path / "transfer"))

  # Everything but the head came from the checkpoint, unchanged...
  assert set(loaded) == set(pre)
  fresh = sorted(n for n in pre if not (
      loaded[n].shape == pre[n].shape and np.array_equal(loaded[n], pre[n])))
  assert fresh == ["head/bias", "head/kernel", "pos_embedding"], fresh
  # ...the head is the zero init of the new run...
  assert not np.any(loaded["head/kernel"]) and not np.any(loaded["head/bias"])
  assert any("fresh init kept): head/bias, head/kernel" in r.getMessage()
             for r in caplog.records), "the load must log what it did not load"
  # ...and the 4x4 position grid (32px / 8) was resampled to 6x6 (48px / 8).
  assert pre["pos_embedding"].shape == (1, 16, 48)
  assert loaded["pos_embedding"].shape == (1, 36, 48)
  np.testing.assert_allclose(
      loaded["pos_embedding"],
      model_common.resample_posemb(pre["pos_embedding"], (6, 6)), rtol=1e-6)

  scratch = _transfer_config(pretrained, steps=60)
  del scratch["model_init"]
  train.train(scratch, str(tmp_path / "scratch"))
  acc_transfer = _test_acc(tmp_path / "transfer")
  acc_scratch = _test_acc(tmp_path / "scratch")
  print(f"digits 48px, 60 steps: transfer {acc_transfer:.4f} "
        f"scratch {acc_scratch:.4f}")
  assert acc_transfer >= acc_scratch
  assert acc_transfer > 0.8


def test_backbone_mismatch_names_every_differing_parameter(pretrained,
                                                           tmp_path):
  config = _transfer_config(pretrained, steps=1)
  config.model.mlp_dim = 64  # The checkpoint's MLPs are 96 wide.
  config.evals = {}
  with pytest.raises(ValueError) as e:
    train.train(config, str(tmp_path))
  msg = str(e.value)
  for i in range(2):
    block = f"Transformer/encoderblock_{i}/MlpBlock_0"
    assert f"{block}/Dense_0/kernel: (48, 96) vs (48, 64)" in msg
    assert f"{block}/Dense_0/bias: (96,) vs (64,)" in msg
    assert f"{block}/Dense_1/kernel: (96, 48) vs (64, 48)" in msg
  assert "head" not in msg.split("To keep")[0]  # The head is dont_load.


def test_i21k_vit_jax_checkpoint_loads_into_the_transfer_model(tmp_path):
  """A released-layout i21k Ti/16 (224px, pre_logits, 21843 classes) loads
  into transfer.py's Ti/16 at 384px, exactly as the named models would."""
  up = vit.Model(21843, variant="Ti/16", pool_type="tok", rep_size=True)
  shapes = jax.eval_shape(up.init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, 224, 224, 3), np.float32))
  rng = np.random.default_rng(0)
  ckpt = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32),
                      shapes["params"])
  checkpoint.save_params(vit.to_vit_jax(ckpt), str(tmp_path / "ti16.npz"))

  config = transfer.get_config(
      f"model={tmp_path / 'ti16.npz'},arch=Ti/16,dataset=cifar10,crop=384")
  assert config.model.to_dict() == MODEL_TI16
  module, model = program.create_model(config)
  init = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                        jax.ShapeDtypeStruct((1, 384, 384, 3), np.float32))
  init = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), init["params"])
  got = utils.flatten_dict(module.load(
      init, config.model_init, config.model,
      dont_load=config.model_load.dont_load))
  want = utils.flatten_dict(ckpt)
  assert got["head/kernel"].shape == (192, 10) and not got["head/kernel"].any()
  assert "pre_logits/kernel" not in got
  assert got["pos_embedding"].shape == (1, 24 * 24, 192)
  for name, value in got.items():
    if name.startswith(("head/", "pos_embedding")):
      continue
    np.testing.assert_array_equal(value, want[name], err_msg=name)


MODEL_TI16 = dict(variant="Ti/16", pool_type="tok")


@pytest.mark.parametrize("model", ["B/16", "R50+B/16", "mixer_B/16",
                                   "BiT-M-R50x1"])
def test_every_family_builds_full_size_and_runlocal(model):
  for arg in (f"model={model}", f"model={model},runlocal"):
    config = transfer.get_config(arg)
    _, m = program.create_model(config)
    res = int(config.input.pp.split("inception_crop(")[1].split(")")[0]) if (
        "inception_crop" in config.input.pp) else 32
    shapes = jax.eval_shape(m.init, jax.random.PRNGKey(0),
                            jax.ShapeDtypeStruct((1, res, res, 3), np.float32))
    flat = utils.flatten_dict(shapes["params"])
    head = [n for n in flat if n.endswith("head/kernel") or
            n.endswith("head/conv2d/kernel")]
    assert len(head) == 1 and flat[head[0]].shape[-1] == config.num_classes
    if "runlocal" not in arg:
      assert config.lr == 0.03 and config.wd == 0.0
      assert config.optax_name == "big_vision.momentum_hp"
      assert config.grad_clip_norm == 1.0 and config.input.batch_size == 512
      assert config.model_init.endswith(".npz")
      n = utils.tree_count(shapes["params"])
      print(model, f"{n:,}")


@pytest.mark.parametrize("arg,message", [
    ("model=B/17", "Unknown model 'B/17'.*Did you mean 'B/16'.*R50\\+B/16"),
    ("dataset=cifar11", "Unknown dataset 'cifar11'.*oxford_iiit_pet"),
    ("model=/x.npz,arch=Q/16", "Unknown arch 'Q/16'"),
    ("model=mixer_B/16,crop=384", "only load at 224px"),
])
def test_bad_names_list_the_valid_ones(arg, message):
  with pytest.raises(ValueError, match=message):
    transfer.get_config(arg)
