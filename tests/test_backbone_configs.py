"""The backbone recipes (Mixer, BiT, hybrid ViT) learn, via their configs.

Each i1k config has a `digits` arg: the same model family, optimizer,
learning-rate rule and schedule shape, shrunk to a model that trains on the
embedded digits in seconds. Training it with the trainer must reach test
prec@1 >= 0.9 on the held-out writers (chance is 0.1). Seeded, so the
numbers are the same on every run on one machine; the docstrings of the
configs state what was measured.

The full-size models of these configs are the published ones; their
parameter counts are checked in tests/models (not repeated here), except that
this file checks the configs build exactly those models.
"""
import importlib.util
import os

import jax
import jax.numpy as jnp
import pytest

from big_vision import metric_writer
from big_vision import program
from big_vision import train
from big_vision import utils

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, "big_vision", "configs")


def load_config(name, arg=None):
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(CONFIG_DIR, f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod, mod.get_config(arg)


@pytest.mark.xla_optimized  # Hundreds of steps: run time, not compile time.
@pytest.mark.parametrize("name", ["mlp_mixer_i1k", "bit_i1k",
                                  "vit_hybrid_i1k"])
def test_digits_setting_reaches_90_percent(name, tmp_path):
  mod, config = load_config(name, "digits")
  assert config.total_steps == mod.DIGITS_STEPS
  train.train(config, str(tmp_path))
  lines = metric_writer.read(str(tmp_path))
  acc = [(l["step"], l["test/prec@1"]) for l in lines if "test/prec@1" in l]
  assert acc[0] == (0, pytest.approx(0.0909, abs=0.05))  # Chance at init.
  step, final = acc[-1]
  assert step == mod.DIGITS_STEPS
  assert final >= 0.9, (name, acc)


def _count(config, res=224):
  _, model = program.create_model(config)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, res, res, 3)))["params"])
  return utils.tree_count(shapes)


@pytest.mark.parametrize("name,arg,count", [
    # Published: Mixer-B/16 59.9M, Mixer-L/16 208.2M (exact closed forms in
    # tests/models/test_mlp_mixer.py).
    ("mlp_mixer_i1k", None, 59_880_472),
    ("mlp_mixer_i1k", "variant=L/16", 208_196_168),
    # BiT-R50x1 with a 1000-way head: 25.56M.
    ("bit_i1k", None, 25_549_352),
    # BiT-M-R50x1: the same body with a 21,843-way 1x1-conv head.
    ("bit_i21k", None, 25_549_352 + (21843 - 1000) * (2048 + 1)),
    # R50+ViT-B/16 at 224px with a pre-logits layer: 98.95M published for
    # the released 384px checkpoint (no pre-logits, 577 posemb slots).
    ("vit_hybrid_i1k", None, 98_950_952 - 768 - 380 * 768 + 768 * 769),
])
def test_configs_build_the_published_models(name, arg, count):
  _, config = load_config(name, arg)
  assert _count(config) == count


@pytest.mark.parametrize("name", ["mlp_mixer_i1k", "bit_i1k", "bit_i21k",
                                  "vit_hybrid_i1k"])
def test_recipe_invariants(name):
  """The recipe numbers the docstrings promise."""
  _, config = load_config(name)
  assert config.input.batch_size % 8 == 0
  if name.startswith("bit"):
    assert config.optax_name == "big_vision.momentum_hp"
    base = 0.1 if name == "bit_i1k" else 0.03
    assert config.lr == pytest.approx(base * config.input.batch_size / 256)
    # Decoupled equivalent of BiT's coupled 1e-4 through momentum 0.9.
    assert config.wd == pytest.approx(config.lr * 1e-4 / (1 - 0.9))
  else:
    assert config.optax_name == "scale_by_adam"
    assert config.lr == 1e-3 and config.grad_clip_norm == 1.0
    assert config.schedule.warmup_steps == 10_000
  if name == "bit_i21k":
    assert config.num_classes == 21843 and config.loss == "sigmoid_xent"
    assert config.total_epochs == 90 and config.input.batch_size == 4096
    steps = config.schedule.steps
    # Boundaries at 30/60/80 of the 90 epochs.
    assert [s / steps[-1] for s in steps] == pytest.approx(
        [30 / 80, 60 / 80, 1.0], abs=1e-4)


def test_bit_digits_model_is_a_two_block_resnet_v2():
  """`depth` as units per block: the released names, two blocks only."""
  from big_vision.models import bit  # pylint: disable=g-import-not-at-top
  _, config = load_config("bit_i1k", "digits")
  _, model = program.create_model(config)
  params = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"])
  names = utils.flatten_dict(params)
  assert "resnet/block2/unit01/a/proj/standardized_conv2d/kernel" in names
  assert not any(n.startswith("resnet/block3") for n in names)
  assert names["resnet/head/conv2d/kernel"].shape == (1, 1, 512, 10)
  with pytest.raises(ValueError, match="units per block"):
    bit.Model(10, depth=(1, 0))
