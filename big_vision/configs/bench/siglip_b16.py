r"""Throughput benchmark: SigLIP B/16 (ViT-B/16 + text B), bf16, synthetic.

  python tools/bench.py --config big_vision/configs/bench/siglip_b16.py
  python -m big_vision.train --config big_vision/configs/bench/siglip_b16.py \
      --workdir /tmp/bench_siglip_b16

The SigLIP B/16 training step: a ViT-B/16 image tower (224px, MAP-head
pooling) and a B-sized text transformer (64 tokens, vocabulary 32k, last-token
pooling), both projecting to 768 dims, the pairwise sigmoid loss with
learnable temperature (init log 10) and bias (init -10), Adam (b2 = 0.95)
with decoupled weight decay, clipping, cosine schedule, bfloat16 matmuls; on
random on-device images and token ids (`big_vision/datasets/synthetic.py`,
no tensorflow). Global batch 256 (SigLIP trains at 32k; per-device work is
what the benchmark measures).
Expected: random pairs, so training_loss falls only through the bias
towards the all-negative optimum; the figures are tools/bench.py's
images/second (image-text pairs per second) and MFU. There is no timm peer
for two-tower models. H100 numbers owed where not yet measured.

Args: batch_size (256), steps (500), res (224), text_len (64), dtype_mm
("bfloat16"|"float32"), scan, remat, attn_impl, freeze ("img": LiT's locked
image tower, which the step does not differentiate; "txt"); runlocal (4 steps of tiny
towers on the embedded shapes captions with the image-text evals, for
tests/test_train.py); runlocal_synthetic (3 steps of tiny towers on
synthetic data, no evaluator: runs without tensorflow).
"""
import ml_collections

from big_vision.configs import common
from big_vision.configs.proj.image_text import common as image_text_common


def get_config(arg=None):
  arg = common.parse_arg(
      arg, runlocal=False, runlocal_synthetic=False, batch_size=256,
      steps=500, res=224, text_len=64, dtype_mm="bfloat16", scan=False,
      remat="none", attn_impl="auto", freeze="")
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_steps = arg.steps
  config.loss = "sigmoid_contrastive"
  config.input = ml_collections.ConfigDict(dict(
      data=dict(name="synthetic", image_shape=(arg.res, arg.res, 3),
                text_len=arg.text_len, vocab_size=32_000),
      batch_size=arg.batch_size))

  tiny = arg.runlocal or arg.runlocal_synthetic
  size = dict(width=32, depth=1, mlp_dim=64, num_heads=2)
  speed = dict(dtype_mm=arg.dtype_mm, scan=arg.scan, remat_policy=arg.remat,
               attn_impl=arg.attn_impl)
  config.model_name = "two_towers"
  config.model = dict(
      image_model="vit",
      image=dict(pool_type="map", posemb="learn", **speed,
                 **(dict(size, patch_size=(8, 8)) if tiny else
                    dict(variant="B/16"))),
      text_model="text_transformer",
      text=dict(vocab_size=128 if tiny else 32_000, pool_type="last",
                **speed, **(size if tiny else dict(variant="B"))),
      out_dim=32 if tiny else 768, temperature_init=10.0, bias_init=-10.0)

  config.optax_name = "scale_by_adam"
  config.optax = dict(b1=0.9, b2=0.95)
  config.lr = 1e-3
  config.wd = 1e-4
  schedule = dict(warmup_steps=min(100, max(1, arg.steps // 10)),
                  decay_type="cosine")
  if arg.runlocal or arg.runlocal_synthetic:
    schedule = dict(warmup_steps=1, decay_type="cosine")
  config.grad_clip_norm = 1.0
  if arg.freeze:  # "img": LiT's locked image tower; "txt": the converse.
    if arg.freeze not in ("img", "txt"):
      raise ValueError(f"freeze={arg.freeze!r}; valid: img, txt.")
    schedule = [(f"{arg.freeze}/.*", None), (".*", schedule)]
  config.schedule = schedule

  config.log_training_steps = 50
  config.evals = ml_collections.ConfigDict()

  if tiny:
    config.log_training_steps = 1
  if arg.runlocal:
    # The embedded shapes captions (32px images, 12 tokens of a 128-piece
    # vocabulary) and the image-text evals of the SigLIP demo.
    config.total_steps = 4
    config.input = image_text_common.shapes_input(16)
    config.evals = image_text_common.shapes_evals(log_steps=4, batch_size=64)
    config.evals.zeroshot.datasets = dict(
        shape=dict(label_key="shape", prompts=("a {}",)))
  elif arg.runlocal_synthetic:
    config.total_steps = 3
    config.input.batch_size = 16
    config.input.data.update(image_shape=(32, 32, 3), text_len=12,
                             vocab_size=128)
  return config
