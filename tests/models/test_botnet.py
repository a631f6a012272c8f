"""BoTNet: published parameter counts, relative attention vs numpy, shapes."""
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vision import metric_writer
from big_vision import program
from big_vision import train
from big_vision import utils
from big_vision.models import botnet

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _abstract_params(model, size=224):
  return jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3))))["params"]


# ----------------------------------------------------------------------------
# Parameter counts.
# ----------------------------------------------------------------------------
# torchvision's ResNet-50 (BatchNorm, 1000 classes): 25,557,032, printed as
# 25.5M in the BoTNet paper. GroupNorm has BatchNorm's trainable parameters.
RESNET50 = 25_557_032


def _relpos(*grids, d=128):
  return sum((2 * h - 1 + 2 * w - 1) * d for h, w in grids)


@pytest.mark.parametrize("variant,grids", [
    # c5 stride 2: unit 1 attends at 14x14 then pools, units 2-3 at 7x7.
    ("BoT50", [(14, 14), (7, 7), (7, 7)]),
    # BoT-S1-50: all of c5 at 14x14.
    ("BoT-S1-50", [(14, 14)] * 3),
])
def test_bot50_parameter_count_is_published(variant, grids):
  n = utils.tree_count(_abstract_params(botnet.Model(1000, variant=variant)))
  # Each c5 unit trades a 3x3 512->512 conv for q, k, v 512x512 projections.
  expected = RESNET50 - 3 * (9 - 3) * 512 * 512 + _relpos(*grids)
  assert n == expected
  assert n == {"BoT50": 20_852_008, "BoT-S1-50": 20_859_176}[variant]
  # The paper's Table: BoT50 20.8M vs R50 25.5M (both truncated to 0.1M).
  assert np.floor(n / 1e5) / 10 == 20.8
  assert np.floor(RESNET50 / 1e5) / 10 == 25.5


def test_only_the_last_stage_attends():
  flat = utils.flatten_dict(_abstract_params(botnet.Model(1000,
                                                          variant="BoT50")))
  mhsa = {k.split("/")[0] for k in flat if "/mhsa/" in k}
  assert mhsa == {"stage4_unit01", "stage4_unit02", "stage4_unit03"}
  assert not any(k.startswith("stage4") and "conv2" in k for k in flat)
  assert flat["stage4_unit01/mhsa/query/kernel"].shape == (512, 4, 128)
  assert flat["stage4_unit01/mhsa/rel_height"].shape == (27, 128)
  assert flat["stage4_unit02/mhsa/rel_width"].shape == (13, 128)
  assert flat["stage3_unit06/conv2/kernel"].shape == (3, 3, 256, 256)


# ----------------------------------------------------------------------------
# Relative-position attention against a loop over positions in numpy.
# ----------------------------------------------------------------------------
def _np_relpos_attention(q, k, v, rel_h, rel_w):
  n, h, w, heads, d = q.shape
  out = np.zeros((n, h, w, heads, d))
  for b in range(n):
    for head in range(heads):
      for x in range(h):
        for y in range(w):
          qv = q[b, x, y, head] / np.sqrt(d)
          logits = np.zeros((h, w))
          for x2 in range(h):
            for y2 in range(w):
              r = rel_h[x2 - x + h - 1] + rel_w[y2 - y + w - 1]
              logits[x2, y2] = qv @ k[b, x2, y2, head] + qv @ r
          p = np.exp(logits - logits.max())
          p /= p.sum()
          out[b, x, y, head] = np.einsum("ab,abd->d", p, v[b, :, :, head])
  return out.reshape(n, h, w, heads * d)


def test_relpos_attention_matches_numpy_reference():
  rng = np.random.default_rng(0)
  n, h, w, heads, d = 2, 3, 4, 2, 5  # Non-square: catches swapped axes.
  q, k, v = (rng.normal(size=(n, h, w, heads, d)) for _ in range(3))
  rel_h = rng.normal(size=(2 * h - 1, d))
  rel_w = rng.normal(size=(2 * w - 1, d))
  got = botnet.relpos_attention(*(jnp.asarray(a, jnp.float32) for a in
                                  (q, k, v, rel_h, rel_w)))
  np.testing.assert_allclose(np.asarray(got),
                             _np_relpos_attention(q, k, v, rel_h, rel_w),
                             rtol=1e-5, atol=1e-5)


def test_relative_logits_depend_only_on_the_offset():
  rng = np.random.default_rng(1)
  h, w, d = 4, 3, 2
  q = jnp.ones((1, h, w, 1, d))  # Same query everywhere.
  rel_h = jnp.asarray(rng.normal(size=(2 * h - 1, d)), jnp.float32)
  rel_w = jnp.asarray(rng.normal(size=(2 * w - 1, d)), jnp.float32)
  lg = np.asarray(botnet.relative_logits(q, rel_h, rel_w))[0, 0]
  # Key one row below and one column right of the query: offset (+1, +1).
  want = float(jnp.sum(rel_h[h]) + jnp.sum(rel_w[w]))
  for x in range(h - 1):
    for y in range(w - 1):
      assert lg[x, y, x + 1, y + 1] == pytest.approx(want, rel=1e-6)
  with pytest.raises(ValueError, match="resolution it was initialised"):
    botnet.relative_logits(q, rel_h[:-2], rel_w)


# ----------------------------------------------------------------------------
# Shapes and the model contract.
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("c5_stride,grid", [(2, 2), (1, 4)])
def test_small_model_output_shapes(c5_stride, grid):
  model = botnet.Model(7, depth=(1, 1, 1), width=1, c5_stride=c5_stride,
                       head_zeroinit=False)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)),
                  jnp.float32)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), x)["params"]
  logits, out = jax.jit(lambda p, x: model.apply({"params": p}, x,
                                                 train=False))(params, x)
  assert logits.shape == (2, 7)
  assert out["stem"].shape == (2, 8, 8, 64)
  assert out["stage2"].shape == (2, 4, 4, 512)
  assert out["pre_logits_2d"].shape == (2, grid, grid, 1024)
  assert out["pre_logits"].shape == (2, 1024)
  assert np.all(np.isfinite(np.asarray(logits)))
  assert float(jnp.std(logits)) > 0
  np.testing.assert_array_equal(logits, out["logits"])


def test_bad_arguments_name_the_valid_ones():
  with pytest.raises(ValueError, match="BoT-S1-50"):
    botnet.Model(10, variant="BoT51")
  with pytest.raises(ValueError, match="num_heads"):
    botnet.Model(10, heads=4)
  with pytest.raises(ValueError, match="c5_stride"):
    botnet.Model(10, c5_stride=3)


def _config_module():
  path = os.path.join(REPO, "big_vision/configs/proj/botnet/botnet_i1k.py")
  spec = importlib.util.spec_from_file_location("botnet_i1k", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.mark.parametrize("arg,count", [(None, 20_859_176),
                                       ("variant=BoT50", 20_852_008)])
def test_config_builds_the_published_model(arg, count):
  config = _config_module().get_config(arg)
  _, model = program.create_model(config)
  assert utils.tree_count(_abstract_params(model)) == count


@pytest.mark.xla_optimized  # Hundreds of steps: run time, not compile time.
def test_digits_config_reaches_90_percent(tmp_path):
  mod = _config_module()
  config = mod.get_config("digits")
  assert config.model_name == "botnet"
  assert config.total_steps == mod.DIGITS_STEPS
  train.train(config, str(tmp_path))
  acc = [(l["step"], l["test/prec@1"]) for l in metric_writer.read(
      str(tmp_path)) if "test/prec@1" in l]
  assert acc[0] == (0, pytest.approx(0.0909, abs=0.05))  # Chance at init.
  assert acc[-1][0] == mod.DIGITS_STEPS
  assert acc[-1][1] >= 0.9, acc
