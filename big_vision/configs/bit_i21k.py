r"""BiT-M: ResNet-v2 (GroupNorm + weight standardisation) on ImageNet-21k.

  python -m big_vision.train --config big_vision/configs/bit_i21k.py \
      --workdir workdirs/bit_m_r50x1

The BiT-M upstream recipe (Kolesnikov et al. 2020,
https://arxiv.org/abs/1912.11370, Sec. 3.3): SGD with momentum 0.9, lr
0.03 * batch / 256 (0.48 at batch 4096), weight decay 1e-4, 90 epochs,
5k linear warmup steps, lr x0.1 after 30, 60 and 80 epochs, inception crop +
flip at 224px. Sigmoid cross-entropy on the 21,843 classes (summed over
classes, big_vision's i21k loss). `config.wd` is decoupled and per step:
BiT's coupled 1e-4 on the gradient, through momentum 0.9, removes
lr * 1e-4 / (1 - 0.9) of the weights per step, i.e. wd = lr * 1e-3.

The stair boundaries are in steps, computed from I21K_TRAIN_IMAGES (the
fall11 release minus the 51,200 held-out images); adjust it for another
release. During pretraining the held-out i21k prec@1 is the running signal;
BiT's headline numbers come after fine-tuning (transfer.py): on ILSVRC-2012,
BiT-M R152x4 85.39% (Table 2) and R50x1 about 80% (Fig. 5).

Args (`bit_i21k.py:arg1,arg2=...`): variant (R50x1 default, ..., R152x4),
batch, epochs, runlocal (a two-block BiT for 2 steps on the digits).
"""
import ml_collections

from big_vision.configs import common

I21K_TRAIN_IMAGES = 14_197_122 - 51_200
NUM_CLASSES = 21843


def get_config(arg=None):
  arg = common.parse_arg(arg, variant="R50x1", batch=4096, epochs=90.0,
                         runlocal=False)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_epochs = arg.epochs
  config.num_classes = NUM_CLASSES
  config.loss = "sigmoid_xent"
  onehot = (f"|value_range(-1, 1)|onehot({NUM_CLASSES}, key='label', "
            "key_result='labels')|keep('image', 'labels')")
  config.input = dict(
      data=dict(name="imagenet21k", split="full[51200:]"),
      batch_size=arg.batch, shuffle_buffer_size=250_000,
      pp="decode_jpeg_and_inception_crop(224)|flip_lr" + onehot)

  config.model_name = "bit"
  config.model = dict(variant=arg.variant)

  config.optax_name = "big_vision.momentum_hp"
  config.optax = dict(momentum=0.9)
  config.lr = 0.03 * arg.batch / 256
  config.wd = config.lr * 1e-3  # = lr * 1e-4 / (1 - momentum).
  steps_per_epoch = I21K_TRAIN_IMAGES / arg.batch
  config.schedule = dict(
      warmup_steps=5000, decay_type="stair",
      steps=[round(e * steps_per_epoch) for e in (30, 60, 80)],
      mults=[0.1, 0.01, 0.001])

  config.log_training_steps = 50
  config.ckpt_steps = 1000
  config.evals = ml_collections.ConfigDict()
  config.evals.val = dict(
      type="classification",
      data=dict(name="imagenet21k", split="full[:51200]"),
      pp_fn="decode|resize_small(256)|central_crop(224)" + onehot,
      batch_size=1024, log_steps=5000, loss_name="sigmoid_xent")

  if arg.runlocal:
    common.runlocal_shrink(config, res=16, steps=2, batch_size=16)
    config.evals.test.loss_name = "sigmoid_xent"
    config.model = dict(depth=(1, 1), width=1)
    config.lr = 0.03 * 16 / 256
    config.wd = config.lr * 1e-3
    config.schedule = dict(warmup_steps=1, decay_type="stair", steps=[1],
                           mults=[0.1])
  return config
