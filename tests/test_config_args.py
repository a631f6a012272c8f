"""configs/common.parse_arg: the `:arg` suffix of --config."""
import pytest

from big_vision.configs import common
from big_vision.configs import mlp_mixer_i1k
from big_vision.configs import vit_i1k


def test_string_value_with_commas():
  # Regression: "randaug=2,10" split into "randaug=2" and "10", and "10"
  # was an unknown arg, so the randaug arg of vit_i1k / mlp_mixer_i1k /
  # vit_hybrid_i1k (default "2,15") could not be set from the command line.
  arg = common.parse_arg("variant=S/16,randaug=2,10,mixup=0.2,runlocal",
                         variant="B/16", randaug="2,15", mixup=0.5,
                         runlocal=False)
  assert arg.variant == "S/16" and arg.randaug == "2,10"
  assert arg.mixup == 0.2 and arg.runlocal is True


def test_unknown_bare_name_is_still_an_error():
  with pytest.raises(ValueError, match="Unknown config arg 'runlocl'"):
    common.parse_arg("randaug=2,10,runlocl", randaug="2,15", runlocal=False)
  with pytest.raises(ValueError, match="Unknown config arg '10'"):
    common.parse_arg("epochs=3,10", epochs=90.0)  # Numbers take no commas.


@pytest.mark.parametrize("module", [vit_i1k, mlp_mixer_i1k])
def test_recipes_take_randaug_arg(module):
  config = module.get_config("randaug=2,10")
  assert "randaug(2,10)" in config.input.pp, config.input.pp
