"""One registry idiom: every pluggable kind is looked up the same way and
an unknown name gives the same error (the name, a close match, the choices)."""
import re

import pytest

from big_vision import losses
from big_vision import objectives
from big_vision import optax as bv_optax
from big_vision import program
from big_vision import sharding
from big_vision import utils
from big_vision.evaluators import common as evaluators
from big_vision.pp import ops_general  # noqa: F401  (registers ops)
from big_vision.pp import registry as pp_registry

# (kind's lookup, a misspelt name, the close match it must suggest)
CASES = {
    "model": (program.MODELS.lookup, "vitt", "vit"),
    "evaluator": (evaluators.EVALUATORS.lookup, "clasification",
                  "classification"),
    "objective": (objectives.OBJECTIVES.lookup, "softmax_xnet",
                  "softmax_xent"),
    "loss": (losses.LOSSES.lookup, "sigmoid_xnet", "sigmoid_xent"),
    "optimizer": (bv_optax.OPTIMIZERS.lookup, "big_vision.momentum_hq",
                  "big_vision.momentum_hp"),
    "schedule": (bv_optax.DECAYS.lookup, "cosin", "cosine"),
    "sharding tactic": (sharding.TACTICS.lookup, "fsdq", "fsdp"),
}


def _data_sources():
  from big_vision.datasets import core  # pylint: disable=g-import-not-at-top
  import big_vision.datasets  # pylint: disable=g-import-not-at-top
  big_vision.datasets.get  # pylint: disable=pointless-statement  (registers)
  return core._SOURCES  # pylint: disable=protected-access


@pytest.mark.parametrize("kind", sorted(CASES))
def test_every_kind_reports_unknown_names_alike(kind):
  lookup, bad, close = CASES[kind]
  with pytest.raises(ValueError) as e:
    lookup(bad)
  msg = str(e.value)
  assert re.match(rf"Unknown .* {bad!r}", msg), msg
  assert f"Did you mean {close!r}?" in msg
  assert "Valid choices: " in msg and close in msg.split("Valid choices: ")[1]
  assert lookup(close) is not None


def test_data_source_kinds_use_the_same_registry():
  sources = _data_sources()
  assert isinstance(sources, utils.Registry)
  with pytest.raises(ValueError, match="Did you mean 'jsonl'"):
    sources.lookup("jsonll")


def test_pp_ops_report_unknown_names_alike():
  with pytest.raises(ValueError, match="Did you mean 'value_range'"):
    pp_registry.Registry.lookup("preprocess_ops.value_rang")


def test_building_blocks_are_not_offered_as_models():
  names = program.MODELS.names()
  assert "vit" in names and "two_towers" in names
  assert "resnet_stem" not in names and "common" not in names
  with pytest.raises(ValueError, match="Unknown model 'resnet_stem'"):
    program.model_module("resnet_stem")


def test_registering_a_name_twice_is_an_error():
  reg = utils.Registry("thing")
  reg.register("a")(len)
  with pytest.raises(ValueError, match="thing 'a' is already registered"):
    reg.register("a")(len)
