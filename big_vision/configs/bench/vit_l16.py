r"""Throughput benchmark: ViT-L/16, 224px, bfloat16 matmuls, synthetic data.

  python tools/bench.py --config big_vision/configs/bench/vit_l16.py \
      --peer timm                       # images/s, MFU, and timm's images/s
  python -m big_vision.train --config big_vision/configs/bench/vit_l16.py \
      --workdir /tmp/bench_l16

The recipe, args and what to expect are those of `vit_b16.py` (AdamW-style
scale_by_adam + decoupled wd, clipping, cosine, gap pooling, bf16 matmuls,
random on-device batches of 256): only the size differs. training_loss stays
near ln(1000) = 6.91 (random labels); the figures are tools/bench.py's
images/second and MFU (H100 numbers owed where not yet measured).
Args: see vit_b16.py (runlocal, runlocal_synthetic, batch_size, steps, res,
dtype_mm, pool, scan, remat, attn_impl, image_dtype).
"""
from big_vision.configs.bench import vit_b16


def get_config(arg=None):
  return vit_b16.vit_bench_config(arg, "L/16")
