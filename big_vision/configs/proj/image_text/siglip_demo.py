r"""SigLIP demo: a tiny two-tower model on the embedded shapes captions.

  python -m big_vision.train \
      --config big_vision/configs/proj/image_text/siglip_demo.py \
      --workdir workdirs/siglip_demo

Offline: the data (`shapes_captions`, 32x32 rendered shapes with 5 captions
each) and its sentencepiece tokenizer are generated on first use. A ViT
(8x8 patches, width 128, 3 blocks, 0.4M parameters) and a text transformer
(width 128, 2 blocks) are trained from scratch with the SigLIP sigmoid loss
(t = log 10, b = -10), batch 128, 200 steps.

Expected, on the test split, whose (colour, size) combinations never occur
in training: zero-shot colour accuracy `zeroshot/color/top1` >= 0.9
(measured 0.964); the shape (`zeroshot/shape/top1`) is above chance (1/3)
but not solved at this size (0.455: a tiny ViT learns shapes far more
slowly than colours; 400 steps gave about 0.99 colour and still ~0.45
shape); image->text recall@1 `retrieval/i2t/r@1` 0.28. About one minute on
2 idle CPU cores (tests/test_image_text_train.py runs exactly this command).

Args: runlocal (4 steps), steps (default 200), batch (128).
"""
import ml_collections

from big_vision.configs import common
from big_vision.configs.proj.image_text import common as it_common


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, steps=200, batch=128)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_steps = arg.steps
  config.input = it_common.shapes_input(arg.batch)
  config.loss = "sigmoid_contrastive"

  config.model_name = "two_towers"
  config.model = dict(
      image_model="vit",
      image=dict(width=128, depth=3, mlp_dim=256, num_heads=4,
                 patch_size=(8, 8), pool_type="gap", posemb="learn"),
      text_model="text_transformer",
      text=dict(width=128, depth=2, mlp_dim=256, num_heads=4, vocab_size=128,
                pool_type="last"),
      out_dim=128, temperature_init=10.0, bias_init=-10.0)

  config.optax_name = "scale_by_adam"
  config.optax = dict(b2=0.95)
  config.lr = 1e-3
  config.wd = 1e-4
  config.schedule = dict(warmup_steps=40, decay_type="cosine")
  config.grad_clip_norm = 1.0

  config.log_training_steps = 50
  config.ckpt_steps = 1000
  config.evals = it_common.shapes_evals(log_steps=arg.steps)

  if arg.runlocal:
    it_common.runlocal_shrink(
        config, eval_kinds=("zeroshot", "retrieval", "contrastive"))
    config.schedule = dict(warmup_steps=1, decay_type="cosine")
  return config
