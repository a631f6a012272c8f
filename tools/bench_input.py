r"""Images per second per CPU core of the standard ImageNet pp strings.

How many cores must a host feed its accelerators with? This measures the
preprocessing alone (no disk, no shuffling) on real photos re-encoded as
ImageNet-like JPEGs, with tf.data confined to one thread, so the figure is
per core:

  python tools/bench_input.py --num_images 64 --seconds 10

Two numbers are reported per pipeline: wall-clock images/s on the single
tf.data thread, and images per CPU-second of this process (which also counts
the Python consumer, and is robust to other processes sharing the machine).
"""
import argparse
import io
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # pylint: disable=g-import-not-at-top
from PIL import Image
from skimage import data as skdata
from big_vision.datasets.tf_import import tf

from big_vision.datasets import core as ds_core
from big_vision.pp import builder

PIPELINES = {
    "train": ("decode_jpeg_and_inception_crop(224)|flip_lr|randaug(2, 10)|"
              "value_range(-1, 1)"),
    "eval": "decode|resize_small(256)|central_crop(224)|value_range(-1, 1)",
}
# Typical ImageNet train image sizes (height, width); the median is ~400x500.
SIZES = ((375, 500), (500, 375), (333, 500), (500, 500), (400, 500),
         (500, 333), (375, 500), (281, 500))
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def make_jpegs(num_images: int, seed: int = 0) -> list[bytes]:
  """Distinct JPEGs: random crops of real photos resized to ImageNet sizes."""
  rng = np.random.default_rng(seed)
  photos = [getattr(skdata, name)() for name in PHOTOS]
  jpegs = []
  for i in range(num_images):
    photo = photos[i % len(photos)]
    h, w = SIZES[i % len(SIZES)]
    # A random window of 60-100% of the photo with the target aspect ratio.
    ph, pw = photo.shape[:2]
    scale = rng.uniform(0.6, 1.0) * min(ph / h, pw / w)
    ch, cw = int(h * scale), int(w * scale)
    y, x = rng.integers(0, ph - ch + 1), rng.integers(0, pw - cw + 1)
    img = Image.fromarray(photo[y:y + ch, x:x + cw]).resize((w, h),
                                                           Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    jpegs.append(buf.getvalue())
  return jpegs


def make_dataset(jpegs, pp_str, batch_size, seed=0):
  pp_fn = builder.get_preprocess_fn(pp_str)

  def preprocess(index, jpeg):
    example = {"image": jpeg, "_seed": tf.stack([tf.constant(seed, tf.int64),
                                                 index])}
    return pp_fn(example)["image"]

  ds = tf.data.Dataset.from_tensor_slices(jpegs).repeat().enumerate()
  ds = ds_core.map_traced_plainly(ds, preprocess).batch(batch_size).prefetch(2)
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1  # One core does the work.
  options.threading.max_intra_op_parallelism = 1
  options.autotune.enabled = False
  return ds.with_options(options)


def measure(ds, batch_size, seconds, warmup_batches=3):
  """Returns (images/s wall clock, images per CPU-second, images, seconds)."""
  it = iter(ds)
  for _ in range(warmup_batches):  # Tracing, function instantiation, caches.
    next(it)
  images, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
  while time.perf_counter() - wall0 < seconds:
    batch = next(it)
    images += batch.shape[0]
  wall = time.perf_counter() - wall0
  cpu = time.process_time() - cpu0
  return images / wall, images / cpu, images, wall


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num_images", type=int, default=64,
                      help="distinct JPEGs in the (repeated) input pool")
  parser.add_argument("--seconds", type=float, default=10.0,
                      help="timed duration per pipeline, after warm-up")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--pipelines", default="train,eval",
                      help=f"comma-separated subset of {sorted(PIPELINES)}")
  args = parser.parse_args()

  jpegs = make_jpegs(args.num_images)
  mean_kb = np.mean([len(j) for j in jpegs]) / 1024
  print(f"{len(jpegs)} JPEGs (q90), mean {mean_kb:.0f} KiB; tf.data "
        f"private_threadpool_size=1, max_intra_op_parallelism=1; "
        f"tf {tf.__version__}, {os.cpu_count()} CPUs visible.")
  for name in args.pipelines.split(","):
    pp_str = PIPELINES[name]
    ds = make_dataset(jpegs, pp_str, args.batch_size)
    per_wall, per_cpu, n, wall = measure(ds, args.batch_size, args.seconds)
    print(f"{name:5s} {per_wall:7.1f} img/s on 1 tf.data thread | "
          f"{per_cpu:7.1f} img per CPU-second | {n} images in {wall:.1f} s | "
          f"{pp_str}")


if __name__ == "__main__":
  main()
