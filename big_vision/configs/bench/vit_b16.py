r"""Throughput benchmark: ViT-B/16, 224px, bfloat16 matmuls, synthetic data.

  python tools/bench.py --config big_vision/configs/bench/vit_b16.py \
      --peer timm                       # images/s, MFU, and timm's images/s
  python -m big_vision.train --config big_vision/configs/bench/vit_b16.py \
      --workdir /tmp/bench_b16          # the same step inside the trainer

What runs is the ViT-B/16 ImageNet recipe's training step (AdamW-style
`scale_by_adam` + decoupled weight decay, global-norm clipping, cosine
schedule, softmax cross-entropy, 1000 classes, global-average pooling, learned
position embedding) with bfloat16 matmuls (params, LayerNorm, softmax and the
residual stream stay float32) on random on-device batches
(`big_vision/datasets/synthetic.py`): no input pipeline, no tensorflow.
Expected: labels are random, so training_loss stays near ln(1000) = 6.91;
the numbers that matter are tools/bench.py's images/second and MFU (H100
figures: see the benchmark log; owed where not yet measured).

Args (`vit_b16.py:arg1,arg2=...`): batch_size (global, 256), steps (500),
res (224), dtype_mm ("bfloat16"|"float32"), pool ("gap"|"tok"|"map"),
scan, remat ("none" or a jax.checkpoint_policies name), attn_impl
("auto"|"xla"|"cudnn"|"einsum"), image_dtype ("float32"|"bfloat16");
runlocal (2 steps of a tiny ViT on the embedded digits, with an eval, for
tests/test_train.py); runlocal_synthetic (3 steps of a tiny ViT on synthetic
32px data, no evaluator: runs without tensorflow).
"""
import ml_collections

from big_vision.configs import common


def vit_bench_config(arg, variant: str) -> ml_collections.ConfigDict:
  """The shared ViT benchmark recipe; `variant` is e.g. "S/16"."""
  arg = common.parse_arg(
      arg, runlocal=False, runlocal_synthetic=False, batch_size=256,
      steps=500, res=224, dtype_mm="bfloat16", pool="gap", scan=False,
      remat="none", attn_impl="auto", image_dtype="float32")
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_steps = arg.steps
  config.num_classes = 1000
  config.loss = "softmax_xent"
  config.input = ml_collections.ConfigDict(dict(
      data=dict(name="synthetic", image_shape=(arg.res, arg.res, 3),
                num_classes=config.num_classes, image_dtype=arg.image_dtype),
      batch_size=arg.batch_size))

  config.model_name = "vit"
  config.model = dict(variant=variant, pool_type=arg.pool, posemb="learn",
                      dtype_mm=arg.dtype_mm, scan=arg.scan,
                      remat_policy=arg.remat, attn_impl=arg.attn_impl)

  # AdamW: Adam direction, lr * schedule, decoupled weight decay on kernels
  # (wd here is per step; torch's AdamW weight_decay = wd / lr = 0.1).
  config.optax_name = "scale_by_adam"
  config.optax = dict(b1=0.9, b2=0.999)
  config.lr = 1e-3
  config.wd = 1e-4
  config.schedule = dict(warmup_steps=min(100, max(1, arg.steps // 10)),
                         decay_type="cosine")
  config.grad_clip_norm = 1.0

  config.log_training_steps = 50
  config.evals = ml_collections.ConfigDict()

  tiny = dict(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=(8, 8))
  if arg.runlocal:
    common.runlocal_shrink(config, res=32, steps=2, batch_size=16)
    config.model.update(tiny)
    config.schedule = dict(warmup_steps=1, decay_type="cosine")
  elif arg.runlocal_synthetic:
    config.total_steps = 3
    config.num_classes = 10
    config.input.batch_size = 16
    config.input.data.update(image_shape=(32, 32, 3), num_classes=10)
    config.model.update(tiny)
    config.schedule = dict(warmup_steps=1, decay_type="cosine")
    config.log_training_steps = 1
  return config


def get_config(arg=None):
  return vit_bench_config(arg, "B/16")
