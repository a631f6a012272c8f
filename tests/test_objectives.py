"""objectives.make: which (loss, accum_steps) pairs are refused, and how."""
import ml_collections
import pytest

from big_vision import config_check
from big_vision import objectives
from big_vision.configs.proj.image_text import siglip_demo


@pytest.mark.parametrize("loss", ["sigmoid_contrastive", "softmax_contrastive"])
def test_accum_steps_with_a_whole_batch_loss_is_refused(loss):
  # Accumulating such a loss would contrast each example with batch/k others:
  # a different loss, silently. objectives.make refuses it before any model.
  config = ml_collections.ConfigDict(dict(loss=loss, accum_steps=4))
  with pytest.raises(ValueError) as e:
    objectives.make(config, model=None)
  msg = str(e.value)
  assert "config.accum_steps=4" in msg and f"config.loss={loss!r}" in msg, msg
  # accum_steps=1 builds the objective.
  config.accum_steps = 1
  assert objectives.make(config, model=None).model_inputs == ("image",
                                                              "labels")


def test_accum_steps_with_a_per_example_loss_is_allowed():
  config = ml_collections.ConfigDict(dict(loss="softmax_xent", accum_steps=4))
  assert objectives.make(config, model=None).model_inputs == ("image",)


def test_config_check_turns_it_into_one_line():
  config = siglip_demo.get_config("runlocal")
  config.accum_steps = 2  # batch 16 = 2 micro-batches x 8 devices: divisible.
  with pytest.raises(config_check.ConfigError) as e:
    config_check.validate(config)
  msg = str(e.value)
  assert "\n" not in msg
  assert msg.startswith("config.loss") or "config.accum_steps=2" in msg, msg
  assert "config.accum_steps=2" in msg, msg
  assert "config.loss='sigmoid_contrastive'" in msg, msg
