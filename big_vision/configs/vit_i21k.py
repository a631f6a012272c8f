r"""Any ViT size pretrained on ImageNet-21k (the ViT / AugReg i21k recipe).

  python -m big_vision.train --config big_vision/configs/vit_i21k.py:variant=B/16 \
      --workdir workdirs/vit_b16_i21k

90 epochs (300 for AugReg "long"), batch 4096, Adam (bfloat16 first moment),
lr 1e-3, wd 1e-4, 10k warmup then cosine, clip 1.0, sigmoid cross-entropy on
multi-hot labels, randaug(2,10), mixup 0.2, few-shot probes during
pretraining (ImageNet-1k 1/5/10/25-shot on 65k train images, plus the
common_fewshot.py datasets). Expected (the AugReg paper's figures, not
measured here): ViT-B/16 ~84% ImageNet val after fine-tuning at 384px
(transfer.py); the few-shot numbers are a running quality signal. Needs
imagenet21k and imagenet2012 prepared in $TFDS_DATA_DIR.
Args: variant, runlocal.
"""
import ml_collections

from big_vision.configs import common
from big_vision.configs import common_fewshot


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, variant="B/16", epochs=90.0)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_epochs = arg.epochs
  config.num_classes = 21843
  config.loss = "sigmoid_xent"
  pp_common = ("|value_range(-1, 1)|onehot(21843, key='label', "
               "key_result='labels')|keep('image', 'labels')")
  config.input = dict(
      data=dict(name="imagenet21k", split="full[51200:]"),
      batch_size=4096, shuffle_buffer_size=250_000,
      pp="decode_jpeg_and_inception_crop(224)|flip_lr|randaug(2,10)" + pp_common)

  config.model_name = "vit"
  config.model = dict(variant=arg.variant, pool_type="tok", rep_size=True,
                      posemb="learn")

  config.optax_name = "scale_by_adam"
  config.optax = dict(mu_dtype="bfloat16")
  config.lr = 0.001
  config.wd = 0.0001
  config.schedule = dict(warmup_steps=10_000, decay_type="cosine")
  config.grad_clip_norm = 1.0
  config.mixup = dict(p=0.2)

  config.log_training_steps = 50
  config.ckpt_steps = 1000
  config.evals = ml_collections.ConfigDict()
  config.evals.val = dict(
      type="classification", data=dict(name="imagenet21k", split="full[:51200]"),
      pp_fn="decode|resize_small(256)|central_crop(224)" + pp_common,
      batch_size=1024, log_steps=5000, loss_name="sigmoid_xent")
  config.evals.fewshot = common_fewshot.get_fewshot_lsr(log_steps=5000,
                                                        imagenet=True)

  if arg.runlocal:
    common.runlocal_shrink(config)
    config.model.variant = "mu/4"
    config.evals.test.loss_name = "sigmoid_xent"
    config.evals.fewshot = common_fewshot.get_fewshot_lsr(runlocal=True,
                                                          res=32)
    config.schedule = dict(warmup_steps=1, decay_type="cosine")
  return config
