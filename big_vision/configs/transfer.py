r"""Fine-tune a pretrained backbone on a downstream classification dataset.

  python -m big_vision.train --workdir workdirs/b16_cifar10 --config \
      big_vision/configs/transfer.py:model=B/16,dataset=cifar10,crop=384

The recipe of the ViT paper's transfer runs: load every backbone parameter of
the checkpoint, replace the head by a zero-initialised one for the new label
set (and drop an i21k `pre_logits` layer), resample the position embeddings to
the fine-tuning resolution (`vit.load` does it), then SGD with momentum 0.9
(bfloat16 accumulator), batch 512, linear warmup (10% of the steps) then
cosine decay, global-norm clipping at 1.0, no weight decay, no mixup.
Train pp: `decode|inception_crop(crop)|flip_lr|value_range(-1,1)|onehot`;
eval pp: `decode|resize(crop)|value_range(-1,1)|onehot`.

Expected (the published vit_jax figures; not re-run here, no network):
ViT-B/16 (i21k) -> CIFAR-10 test prec@1 0.9886 after 1000 steps at batch 512
(0.9859 with `steps=500`), at 384px or 224px. Offline check: a tiny ViT
pretrained on digits and transferred 32px -> 48px reaches test prec@1 0.85 in
60 steps (from scratch: 0.41), see tests/test_transfer.py. Other datasets
start from the same recipe; tune `lr` in {0.003, 0.01, 0.03, 0.06} on `val`.
Needs the target dataset prepared in $TFDS_DATA_DIR and the checkpoint
readable (gs:// paths need tensorflow's gfile; or copy the file and pass its
local path as `model=`).

Args (`transfer.py:model=...,dataset=...,crop=...`):
  model:   a name from MODELS (e.g. "B/16", "R50+B/16", "mixer_B/16",
           "BiT-M-R50x1"), or the path of a checkpoint (`.npz` in the
           big_vision or vit_jax layout, or another run's workdir); a path
           takes its architecture from `arch`.
  arch:    the MODELS name whose architecture a path checkpoint has.
  dataset: a name from DATASETS (cifar10, cifar100, oxford_iiit_pet, ...).
  crop:    fine-tuning resolution; 0 = the model's default (384, Mixer 224).
  steps, lr, batch_size: override the dataset's defaults (0 = default).
  accum_steps: gradient accumulation (micro-batches per step) for small
           accelerators; the result equals the single large-batch step.
  runlocal: a <=5-step run on the embedded digits data with a tiny model of
           the same family, from scratch unless `model=` is a path (whose
           architecture is then the tiny one).

An unknown model or dataset name is an error listing the valid ones.
"""
import difflib
import re

import ml_collections

from big_vision.configs import common

# Heads of a pretraining task that never transfer: the classifier itself, and
# the i21k `pre_logits` layer, which the ViT paper drops for fine-tuning.
_VIT_DONT_LOAD = ("head/.*", "pre_logits/.*")
_AUGREG = "gs://vit_models/augreg/"
_VIT_I21K = "gs://vit_models/imagenet21k/"

# name -> dict(model_name, model config, init file, dont_load[, res]).
# `res` pins the resolution of models that cannot change it (Mixer's token
# mixing MLP is sized by the number of patches).
# pylint: disable=line-too-long
MODELS = {
    # ViT, "How to train your ViT?" (AugReg) i21k checkpoints, class token.
    **{v: dict(model_name="vit",
               model=dict(variant=v, pool_type="tok"),
               init=_AUGREG + f, dont_load=_VIT_DONT_LOAD)
       for v, f in {
           "Ti/16": "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0.npz",
           "S/32": "S_32-i21k-300ep-lr_0.001-aug_none-wd_0.1-do_0.0-sd_0.0.npz",
           "S/16": "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0.npz",
           "B/32": "B_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0.npz",
           "B/16": "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz",
           "B/8": "B_8-i21k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0.npz",
           "L/16": "L_16-i21k-300ep-lr_0.001-aug_strong1-wd_0.1-do_0.0-sd_0.0.npz",
       }.items()},
    # The original ViT paper's i21k releases (vit_jax layout, with pre_logits).
    **{f"ViT-{v}": dict(model_name="vit",
                        model=dict(variant=v, pool_type="tok"),
                        init=_VIT_I21K + f"ViT-{v.replace('/', '_')}.npz",
                        dont_load=_VIT_DONT_LOAD)
       for v in ("B/32", "B/16", "L/32", "L/16", "H/14")},
    # Hybrid: the ViT paper's ResNet-50 stem + ViT-B/16.
    "R50+B/16": dict(model_name="vit",
                     model=dict(variant="B/16", pool_type="tok",
                                resnet=dict(num_layers=50, width=1)),
                     init=_VIT_I21K + "R50+ViT-B_16.npz",
                     dont_load=_VIT_DONT_LOAD),
    # MLP-Mixer i21k releases: 224px only.
    **{f"mixer_{v}": dict(model_name="mlp_mixer", model=dict(variant=v),
                          init=("gs://mixer_models/imagenet21k/"
                                f"Mixer-{v.replace('/', '_')}.npz"),
                          dont_load=("head/.*",), res=224)
       for v in ("B/16", "L/16")},
    # BiT-M (i21k) ResNet v2; its head lives under resnet/.
    **{f"BiT-M-R{d}x{w}": dict(model_name="bit",
                               model=dict(depth=d, width=w),
                               init=f"gs://bit_models/BiT-M-R{d}x{w}.npz",
                               dont_load=("resnet/head/.*",))
       for d, w in ((50, 1), (50, 3), (101, 1), (101, 3), (152, 2),
                    (152, 4))},
}
# pylint: enable=line-too-long

# The same families shrunk for runlocal (CPU seconds, patch/stride 8 at 32px).
_TINY = {
    "vit": dict(variant="mu/8", pool_type="tok"),
    "mlp_mixer": dict(patch_size=(8, 8), hidden_dim=32, tokens_mlp_dim=16,
                      channels_mlp_dim=64, num_blocks=1),
    "bit": dict(depth=26, width=1),
}

# name -> dict(data name, train/val/test splits, classes, default steps, lr).
# `val` is a held-out part of the training data, for choosing lr and steps.
DATASETS = {
    "cifar10": dict(data="cifar10", train="train[:98%]", val="train[98%:]",
                    test="test", classes=10, steps=1000, lr=0.03),
    "cifar100": dict(data="cifar100", train="train[:98%]", val="train[98%:]",
                     test="test", classes=100, steps=2500, lr=0.03),
    "oxford_iiit_pet": dict(data="oxford_iiit_pet", train="train[:90%]",
                            val="train[90%:]", test="test", classes=37,
                            steps=500, lr=0.01),
    "oxford_flowers102": dict(data="oxford_flowers102", train="train",
                              val="validation", test="test", classes=102,
                              steps=500, lr=0.01),
    "dtd": dict(data="dtd", train="train", val="validation", test="test",
                classes=47, steps=500, lr=0.01),
    "svhn": dict(data="svhn_cropped", train="train[:98%]", val="train[98%:]",
                 test="test", classes=10, steps=2500, lr=0.03),
    "resisc45": dict(data="resisc45", train="train[:60%]",
                     val="train[60%:80%]", test="train[80%:]", classes=45,
                     steps=2500, lr=0.01),
    "imagenet2012": dict(data="imagenet2012", train="train[:99%]",
                         val="train[99%:]", test="validation", classes=1000,
                         steps=20_000, lr=0.03),
    # Embedded (no download): the runlocal / test target.
    "digits": dict(data="digits", train="train[:90%]", val="train[90%:]",
                   test="test", classes=10, steps=500, lr=0.03),
}


def _unknown(kind, name, valid):
  close = difflib.get_close_matches(name, list(valid), n=1)
  hint = f" Did you mean {close[0]!r}?" if close else ""
  return ValueError(f"Unknown {kind} {name!r} in transfer.py's args.{hint} "
                    f"Valid choices: {', '.join(sorted(valid))}.")


def _is_path(model: str) -> bool:
  """A checkpoint path rather than a MODELS name ("B/17" is a bad name)."""
  if model in MODELS:
    return False
  return (model.endswith(".npz") or "://" in model
          or model.startswith(("/", ".", "~"))
          or ("/" in model and not re.fullmatch(r"[\w+\-]+/\d+", model)))


def _pp(dataset, crop, train):
  """The standard transfer pp; digits (8x8 gray) use their own recipe."""
  if dataset == "digits":
    return common.digits_pp(crop, train=train)
  n = DATASETS[dataset]["classes"]
  label = (f"|value_range(-1, 1)|onehot({n}, key='label', "
           "key_result='labels')|keep('image', 'labels')")
  if train:
    return f"decode|inception_crop({crop})|flip_lr" + label
  return f"decode|resize({crop})" + label


def get_config(arg=None):
  arg = common.parse_arg(arg, model="B/16", arch="B/16", dataset="cifar10",
                         crop=0, steps=0, lr=0.0, batch_size=0,
                         accum_steps=1, runlocal=False)
  is_path = _is_path(arg.model)
  if not is_path and arg.model not in MODELS:
    raise _unknown("model", arg.model, MODELS)
  spec_name = arg.arch if is_path else arg.model
  if spec_name not in MODELS:
    raise _unknown("arch", spec_name, MODELS)
  spec = MODELS[spec_name]
  if arg.dataset not in DATASETS:
    raise _unknown("dataset", arg.dataset, DATASETS)
  dataset = "digits" if arg.runlocal else arg.dataset
  data = DATASETS[dataset]

  crop = arg.crop or spec.get("res", 32 if arg.runlocal else 384)
  if "res" in spec and not arg.runlocal and crop != spec["res"]:
    raise ValueError(
        f"{spec_name} checkpoints only load at {spec['res']}px (the token "
        f"mixing MLPs are sized by the patch count); got crop={crop}.")
  if arg.runlocal and "res" in spec and not arg.crop:
    crop = 32
  steps = arg.steps or data["steps"]
  batch_size = arg.batch_size or 512

  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_steps = steps
  config.num_classes = data["classes"]
  config.loss = "softmax_xent"
  config.input = dict(
      data=dict(name=data["data"], split=data["train"]),
      batch_size=batch_size, shuffle_buffer_size=50_000,
      pp=_pp(dataset, crop, train=True))

  config.model_name = spec["model_name"]
  config.model = dict(spec["model"])
  config.model_init = arg.model if is_path else spec["init"]
  config.model_load = dict(dont_load=list(spec["dont_load"]))

  config.optax_name = "big_vision.momentum_hp"
  config.lr = arg.lr or data["lr"]
  config.wd = 0.0
  # Fractions of the run (big_vision's *_percent), so that
  # --config.total_steps=N keeps the recipe's shape: 10% warmup.
  config.schedule = dict(warmup_percent=0.1, decay_type="cosine")
  config.grad_clip_norm = 1.0
  config.accum_steps = arg.accum_steps

  config.log_training_steps = 50
  config.ckpt_steps = 1000
  config.evals = ml_collections.ConfigDict()
  eval_common = dict(type="classification", batch_size=512,
                     pp_fn=_pp(dataset, crop, train=False))
  config.evals.val = dict(data=dict(name=data["data"], split=data["val"]),
                          log_percent=0.2, **eval_common)
  config.evals.test = dict(data=dict(name=data["data"], split=data["test"]),
                           log_percent=1.0, **eval_common)

  if arg.runlocal:
    # Same family, optimizer and schedule; tiny model, a few steps, digits.
    # From scratch unless a checkpoint path was given (no download here).
    config.model = dict(_TINY[spec["model_name"]])
    if "resnet" in spec["model"]:  # Hybrid: keep a (one-stage) ResNet stem.
      config.model.resnet = dict(num_layers=(1,), width=0.5)
    if not is_path:
      del config["model_init"]
      del config["model_load"]
    common.runlocal_shrink(config, res=crop, steps=arg.steps or 3,
                           batch_size=arg.batch_size or 16)
    config.input.pp = _pp("digits", crop, train=True)
    config.evals.test.pp_fn = _pp("digits", crop, train=False)
    config.schedule = dict(warmup_steps=1, decay_type="cosine")
  return config
