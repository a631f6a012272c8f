r"""ViT-S/16 on ImageNet-1k: the "better plain ViT baselines" recipe.

  python -m big_vision.train --config big_vision/configs/vit_s16_i1k.py \
      --workdir workdirs/vit_s16_i1k

ViT-S/16 with global average pooling and sincos2d position embeddings, batch
1024, 90 epochs, Adam (bfloat16 first moment), lr 1e-3, decoupled wd 1e-4,
10k warmup steps then cosine, clip 1.0, RandAugment(2, 10), mixup 0.2.
Expected (Beyer et al. 2022): 76.5% top-1 on ImageNet val after 90 epochs
(~7h on a TPUv3-8), 80.0% after 300 epochs.

Needs imagenet2012 (and imagenet_v2, imagenet2012_real for those evals)
prepared in $TFDS_DATA_DIR. `:runlocal` runs 2 steps on the digits data.
"""
import ml_collections

from big_vision.configs import common

TRAIN_PP = ("decode_jpeg_and_inception_crop(224)|flip_lr|randaug(2,10)"
            "|value_range(-1, 1)|onehot(1000, key='label', key_result='labels')"
            "|keep('image', 'labels')")
EVAL_PP = ("decode|resize_small(256)|central_crop(224)|value_range(-1, 1)"
           "|onehot(1000, key='{lbl}', key_result='labels')"
           "|keep('image', 'labels')")


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, epochs=90.0)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_epochs = arg.epochs
  config.num_classes = 1000
  config.loss = "softmax_xent"
  config.input = dict(data=dict(name="imagenet2012", split="train[:99%]"),
                      batch_size=1024, shuffle_buffer_size=250_000,
                      pp=TRAIN_PP)

  config.model_name = "vit"
  config.model = dict(variant="S/16", rep_size=True, pool_type="gap",
                      posemb="sincos2d")

  config.optax_name = "scale_by_adam"
  config.optax = dict(mu_dtype="bfloat16")
  config.lr = 0.001
  config.wd = 0.0001
  config.schedule = dict(warmup_steps=10_000, decay_type="cosine")
  config.grad_clip_norm = 1.0
  config.mixup = dict(p=0.2)

  config.log_training_steps = 50
  config.ckpt_steps = 1000

  def val(split, data="imagenet2012", lbl="label", **kw):
    return dict(type="classification", data=dict(name=data, split=split),
                pp_fn=EVAL_PP.format(lbl=lbl), batch_size=1024,
                log_steps=2500, **kw)
  config.evals = ml_collections.ConfigDict()
  config.evals.minival = val("train[99%:]")
  config.evals.val = val("validation")
  config.evals.v2 = val("test", data="imagenet_v2")
  config.evals.real = val("validation", data="imagenet2012_real",
                          lbl="real_label", skip_empty=True)

  if arg.runlocal:
    common.runlocal_shrink(config)
    config.schedule = dict(warmup_steps=1, decay_type="cosine")
  return config
