r"""BiT ResNet-v2 (GroupNorm + weight standardisation) on ImageNet-1k.

  python -m big_vision.train --config big_vision/configs/bit_i1k.py \
      --workdir workdirs/bit_r50x1_i1k

The BiT-S upstream setting (Kolesnikov et al. 2020,
https://arxiv.org/abs/1912.11370, Sec. 3.3) with the standard ResNet-50
learning rate: SGD with momentum 0.9, lr 0.1 * batch / 256 (BiT itself uses
0.03 * batch / 256 at batch 4096; 0.1 is the Goyal et al. rule for the i1k
ResNet-50 recipe), weight decay 1e-4, 90 epochs, 5k warmup steps, inception
crop + flip at 224px, softmax cross-entropy, batch 1024.

Weight decay: BiT adds 1e-4 * w to the gradient before momentum. Here
`config.wd` is decoupled and per step (not scaled by lr), and the momentum
sees only the gradient. In steady state coupled decay removes
lr * 1e-4 / (1 - 0.9) of w per step, so the matching decoupled value is
lr * 1e-3 = 1e-4 * batch / 256.

Schedules (arg `schedule`): "cosine" (default: warmup then cosine to 0) or
"stair" (BiT's: x0.1 after 30, 60 and 80 epochs).

Expected: R50x1 reaches ~76-77% ImageNet val top-1 after 90 epochs, the
range of BiT-S R50x1 (BiT, Fig. 5) and of the BatchNorm ResNet-50 trained
with this lr rule and a stair schedule (76.3%, Goyal et al. 2017,
https://arxiv.org/abs/1706.02677). 25.56M parameters with the 1000-way head
(tests/models/test_bit.py).

Args (`bit_i1k.py:arg1,arg2=...`):
  variant    R50x1 (default), R101x3, R152x4, ...
  batch, epochs, schedule ("cosine"|"stair").
  digits     a two-block BiT (units per block (1, 1), width 1) on the
             16x16 digits, with the same optimizer, lr and wd rules and
             schedule:
               python -m big_vision.train \
                   --config big_vision/configs/bit_i1k.py:digits \
                   --workdir workdirs/bit_digits
             150 steps at batch 64 (lr 0.025); test prec@1 0.970 (seed 0;
             0.929 for seed 1), ~35 s of CPU on 2 cores.
             tests/test_backbone_configs.py asserts >= 0.9.
  runlocal   the digits model for 2 steps (smoke test).
"""
import ml_collections

from big_vision.configs import common

I1K_TRAIN_IMAGES = 1_281_167  # ILSVRC-2012 train; for the stair boundaries.
DIGITS_STEPS = 150
DIGITS_RES = 16


def get_config(arg=None):
  arg = common.parse_arg(arg, variant="R50x1", batch=1024, epochs=90.0,
                         schedule="cosine", digits=False, runlocal=False)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_epochs = arg.epochs
  config.num_classes = 1000
  config.loss = "softmax_xent"
  onehot = ("|value_range(-1, 1)|onehot(1000, key='label', "
            "key_result='labels')|keep('image', 'labels')")
  config.input = dict(
      data=dict(name="imagenet2012", split="train"),
      batch_size=arg.batch, shuffle_buffer_size=250_000,
      pp="decode_jpeg_and_inception_crop(224)|flip_lr" + onehot)

  config.model_name = "bit"
  config.model = dict(variant=arg.variant)

  config.optax_name = "big_vision.momentum_hp"
  config.optax = dict(momentum=0.9)
  # Linear scaling with the batch (Goyal et al. 2017): sweep together.
  config.lr = 0.1 * arg.batch / 256
  config.wd = 1e-4 * arg.batch / 256  # = lr * 1e-4 / (1 - momentum).
  config.schedule = _schedule(arg.schedule, warmup_steps=5000,
                              steps_per_epoch=I1K_TRAIN_IMAGES / arg.batch)

  config.log_training_steps = 50
  config.ckpt_steps = 1000
  config.evals = ml_collections.ConfigDict()
  config.evals.val = dict(
      type="classification", data=dict(name="imagenet2012",
                                       split="validation"),
      pp_fn="decode|resize_small(256)|central_crop(224)" + onehot,
      batch_size=1024, log_steps=2500)

  if arg.digits or arg.runlocal:
    steps, batch = (2, 16) if arg.runlocal else (DIGITS_STEPS, 64)
    common.runlocal_shrink(config, res=DIGITS_RES, steps=steps,
                           batch_size=batch)
    config.model = dict(depth=(1, 1), width=1)
    config.lr = 0.1 * batch / 256
    config.wd = 1e-4 * batch / 256
    # The schedule's shape over `steps` as if they were the 90 epochs.
    config.schedule = _schedule(arg.schedule,
                                warmup_steps=1 if arg.runlocal else 20,
                                steps_per_epoch=steps / 90)
    config.log_training_steps = min(steps, 50)
  return config


def _schedule(kind, *, warmup_steps, steps_per_epoch):
  if kind == "cosine":
    return dict(warmup_steps=warmup_steps, decay_type="cosine")
  if kind == "stair":
    return dict(warmup_steps=warmup_steps, decay_type="stair",
                steps=[round(e * steps_per_epoch) for e in (30, 60, 80)],
                mults=[0.1, 0.01, 0.001])
  raise ValueError(f"bit_i1k schedule={kind!r}: valid are 'cosine', 'stair'.")
