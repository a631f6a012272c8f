r"""Quickstart: a small ViT on the embedded handwritten digits (no download).

  python -m big_vision.train --config big_vision/configs/vit_digits.py \
      --workdir workdirs/digits

Data: scikit-learn's 1,797 8x8 digits, train = first 1,500, test = the last
297 (other writers), upsampled to 20x20, randomly cropped to 16x16 (centre
crop for eval) and cut into 4x4 patches (16 tokens); mixup 0.2.
Expected: test prec@1 0.96 after 60 epochs (704 steps), about two minutes on
2 CPU cores (`make demo` runs exactly this). The `fewshot` evaluator reports
1/5/10-shot linear-probe accuracy of the pre-logits (digits_10shot ...).

Args (`vit_digits.py:arg1,arg2=...`): runlocal (2 steps, for tests),
variant (a ViT variant such as "Ti/4" instead of the tiny custom width),
res (crop size, 16), epochs (60), dtype_mm ("float32" or "bfloat16" matmuls).
"""
import ml_collections

from big_vision.configs import common
from big_vision.configs import common_fewshot


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, variant="", res=16,
                         epochs=60.0, dtype_mm="float32")
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_epochs = arg.epochs
  config.num_classes = 10
  config.loss = "softmax_xent"
  config.input = common.digits_input(res=arg.res, batch_size=128)

  config.model_name = "vit"
  if arg.variant:
    config.model = dict(variant=arg.variant)
  else:
    config.model = dict(width=128, depth=4, mlp_dim=256, num_heads=4,
                        patch_size=(4, 4))
  config.model.update(pool_type="gap", posemb="learn", dtype_mm=arg.dtype_mm)

  config.optax_name = "scale_by_adam"
  config.lr = 2e-3
  config.wd = 1e-4
  config.schedule = dict(warmup_steps=50, decay_type="cosine")
  config.grad_clip_norm = 1.0
  config.mixup = dict(p=0.2)

  config.log_training_steps = 25
  config.ckpt_steps = 200
  config.evals = ml_collections.ConfigDict()
  config.evals.test = common.digits_eval(res=arg.res, log_steps=200)
  # 1/5/10-shot linear probes of the pre-logits, at the start and the end.
  config.evals.fewshot = common_fewshot.get_fewshot_lsr(
      runlocal=True, res=arg.res, log_steps=100_000)

  if arg.runlocal:
    common.runlocal_shrink(config, res=arg.res, steps=2, batch_size=16)
    config.evals.fewshot = common_fewshot.get_fewshot_lsr(
        runlocal=True, res=arg.res, log_steps=100_000)
    config.schedule = dict(warmup_steps=1, decay_type="cosine")
  return config
