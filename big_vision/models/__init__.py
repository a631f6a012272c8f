"""Models: one module per family, `Model` (flax.linen) and `load`.

`config.model_name` names a module here; `MODELS` is its registry (a new
module is a new model). Building blocks that are not models themselves are
listed in `HELPER_MODULES` and never offered as a model_name.
"""
from big_vision import utils

HELPER_MODULES = ("common", "resnet_stem")
MODELS = utils.ModuleRegistry("model", __name__, exclude=HELPER_MODULES,
                              where="config.model_name")
