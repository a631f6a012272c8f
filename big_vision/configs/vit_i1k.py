r"""Any ViT size trained from scratch on ImageNet-1k ("How to train your ViT").

  python -m big_vision.train --config big_vision/configs/vit_i1k.py:variant=B/16 \
      --workdir workdirs/vit_b16_i1k

300 epochs, batch 4096, Adam (bfloat16 first moment), lr 1e-3, wd 1e-4,
10k warmup then cosine, clip 1.0, class token, pre-logits layer, randaug(2,15)
and mixup 0.5 (the AugReg "medium2" setting). Expected ImageNet val top-1
(Steiner et al. 2021, i1k-only training): S/16 ~78.8%, B/16 ~79.5% (B/32 ~74%).
Args: variant (S/16, B/16, L/16, ...), randaug (e.g. `randaug=2,10`), mixup,
epochs, runlocal.
"""
import ml_collections

from big_vision.configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, variant="B/16", epochs=300.0,
                         randaug="2,15", mixup=0.5)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_epochs = arg.epochs
  config.num_classes = 1000
  config.loss = "sigmoid_xent"
  pp_common = ("|value_range(-1, 1)|onehot(1000, key='label', "
               "key_result='labels')|keep('image', 'labels')")
  config.input = dict(
      data=dict(name="imagenet2012", split="train[:99%]"),
      batch_size=4096, shuffle_buffer_size=250_000,
      pp=(f"decode_jpeg_and_inception_crop(224)|flip_lr|"
          f"randaug({arg.randaug})" + pp_common))

  config.model_name = "vit"
  config.model = dict(variant=arg.variant, pool_type="tok", rep_size=True,
                      posemb="learn", dropout=0.1)

  config.optax_name = "scale_by_adam"
  config.optax = dict(mu_dtype="bfloat16")
  config.lr = 0.001
  config.wd = 0.0001
  config.schedule = dict(warmup_steps=10_000, decay_type="cosine")
  config.grad_clip_norm = 1.0
  config.mixup = dict(p=arg.mixup)

  config.log_training_steps = 50
  config.ckpt_steps = 1000
  config.evals = ml_collections.ConfigDict()
  eval_pp = "decode|resize_small(256)|central_crop(224)" + pp_common
  for name, split in (("minival", "train[99%:]"), ("val", "validation")):
    config.evals[name] = dict(
        type="classification", data=dict(name="imagenet2012", split=split),
        pp_fn=eval_pp, batch_size=1024, log_steps=2500,
        loss_name="sigmoid_xent")

  if arg.runlocal:
    common.runlocal_shrink(config)
    config.model.variant = "mu/4"
    config.evals.test.loss_name = "sigmoid_xent"
    config.schedule = dict(warmup_steps=1, decay_type="cosine")
  return config
