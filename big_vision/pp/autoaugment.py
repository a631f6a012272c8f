"""RandAugment and AutoAugment on uint8 RGB images, in TensorFlow.

References: Cubuk et al., "AutoAugment: Learning Augmentation Policies from
Data" (2018) and "RandAugment: Practical automated data augmentation with a
reduced search space" (2019).

The policies were searched with PIL's image operations, so the photometric
ops here reproduce PIL's arithmetic (ImageOps / ImageEnhance: truncating
blends, its grayscale weights, its equalize LUT); the tests compare against
PIL directly. Magnitudes use the 0..10 "level" scale of the papers and map to
op arguments with the conventions of the reference TPU implementation
(e.g. randaug(2, 10) rotates by up to 30 degrees), so published recipes keep
their meaning.

Randomness follows the seed contract of `big_vision.pp.utils`: every function
that needs randomness takes a stateless `seed` tensor and splits it.
"""
import dataclasses
from typing import Callable

from big_vision.pp import utils
from big_vision.datasets.tf_import import tf

MAX_LEVEL = 10.0
FILL = 128  # Gray, for pixels uncovered by geometric ops and by cutout.


# ----------------------------------------------------------------------------
# Image operations. All take and return uint8 [h, w, 3] images.
# ----------------------------------------------------------------------------
def _to_uint8(x: tf.Tensor) -> tf.Tensor:
  """Clips to 0..255 and truncates, like PIL's 8-bit results."""
  return tf.cast(tf.clip_by_value(x, 0.0, 255.0), tf.uint8)


def blend(image1: tf.Tensor, image2: tf.Tensor, factor) -> tf.Tensor:
  """image1 + factor * (image2 - image1): 0 gives image1, 1 gives image2.

  Factors above 1 extrapolate away from image1 (e.g. "more colour than the
  original"); the result is clipped. This is PIL's `Image.blend`, and every
  ImageEnhance op is a blend with a "degenerate" image.
  """
  a = tf.cast(image1, tf.float32)
  b = tf.cast(image2, tf.float32)
  return _to_uint8(a + tf.cast(factor, tf.float32) * (b - a))


def grayscale(image: tf.Tensor) -> tf.Tensor:
  """[h, w, 1] luma with PIL's fixed-point ITU-R 601 weights (exact)."""
  rgb = tf.cast(image, tf.int32)
  luma = tf.bitwise.right_shift(
      rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 32768,
      16)
  return tf.cast(luma, tf.uint8)[..., None]


def invert(image: tf.Tensor) -> tf.Tensor:
  return 255 - image


def solarize(image: tf.Tensor, threshold: int) -> tf.Tensor:
  """Inverts pixels at or above `threshold` (256: none, 0: all)."""
  # Compare in int32: a threshold of 256 does not fit in uint8.
  return tf.where(tf.cast(image, tf.int32) < threshold, image, 255 - image)


def solarize_add(image: tf.Tensor, addition: int,
                 threshold: int = 128) -> tf.Tensor:
  """Adds `addition` (clipped) to pixels below `threshold`."""
  added = _to_uint8(tf.cast(image, tf.float32) + addition)
  return tf.where(tf.cast(image, tf.int32) < threshold, added, image)


def posterize(image: tf.Tensor, bits: int) -> tf.Tensor:
  """Keeps the `bits` most significant bits of each value."""
  shift = 8 - bits
  return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def _apply_luts(image: tf.Tensor, luts: tf.Tensor) -> tf.Tensor:
  """out[..., c] = luts[c, image[..., c]] for a [3, 256] table."""
  flat = tf.reshape(tf.cast(image, tf.int32), [-1, 3])
  out = tf.gather(tf.cast(luts, tf.uint8), tf.transpose(flat), batch_dims=1)
  return tf.reshape(tf.transpose(out), tf.shape(image))


def autocontrast(image: tf.Tensor) -> tf.Tensor:
  """Stretches each channel so that its min maps to 0 and its max to 255.

  A constant channel is left unchanged. (Per-channel tables, built without
  Python loops or tf.cond, keep the graph small: randaug traces every op.)
  """
  lo = tf.cast(tf.reduce_min(image, axis=[0, 1]), tf.float64)[:, None]
  hi = tf.cast(tf.reduce_max(image, axis=[0, 1]), tf.float64)[:, None]
  scale = 255.0 / tf.maximum(hi - lo, 1.0)
  levels = tf.range(256, dtype=tf.float64)[None, :]
  # PIL builds the table in double precision and truncates.
  lut = tf.clip_by_value(tf.floor(levels * scale - lo * scale), 0.0, 255.0)
  return _apply_luts(image, tf.where(hi > lo, lut, levels))


def equalize(image: tf.Tensor) -> tf.Tensor:
  """Histogram equalisation per channel (PIL's `ImageOps.equalize`).

  PIL's table: with `step` = (number of pixels outside the topmost occupied
  bin) // 255, value v maps to (step // 2 + #pixels below v) // step. A
  channel with step 0 (e.g. a single value) is left unchanged.
  """
  values = tf.reshape(tf.cast(image, tf.int32), [-1, 3])
  # One bincount for all channels: channel c's values live at c*256 + v.
  hist = tf.reshape(tf.math.bincount(values + tf.range(3) * 256,
                                     minlength=768, maxlength=768), [3, 256])
  top_bin = tf.reduce_max(values, axis=0)
  top_count = tf.gather(hist, top_bin, batch_dims=1)
  step = ((tf.shape(values)[0] - top_count) // 255)[:, None]
  below = tf.cumsum(hist, axis=1, exclusive=True)
  lut = tf.clip_by_value((step // 2 + below) // tf.maximum(step, 1), 0, 255)
  identity = tf.range(256)[None, :]
  return _apply_luts(image, tf.where(step > 0, lut, identity))


def color(image: tf.Tensor, factor) -> tf.Tensor:
  """Saturation: 0 gives grayscale, 1 the image, >1 more saturated."""
  gray = tf.image.grayscale_to_rgb(grayscale(image))
  return blend(gray, image, factor)


def contrast(image: tf.Tensor, factor) -> tf.Tensor:
  """Contrast: 0 gives flat gray at the mean luma, 1 the image."""
  mean = tf.reduce_mean(tf.cast(grayscale(image), tf.float64))
  mean = tf.cast(tf.floor(mean + 0.5), tf.uint8)  # PIL rounds the mean.
  return blend(tf.fill(tf.shape(image), mean), image, factor)


def brightness(image: tf.Tensor, factor) -> tf.Tensor:
  """Brightness: 0 gives black, 1 the image."""
  return blend(tf.zeros_like(image), image, factor)


def smooth(image: tf.Tensor) -> tf.Tensor:
  """PIL's SMOOTH filter: 3x3 kernel [[1,1,1],[1,5,1],[1,1,1]] / 13.

  Border pixels, where the kernel does not fit, keep their values.
  """
  x = tf.cast(image, tf.float32)[None]
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32)
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  # Integer weights keep the sums exact; divide once and round, as PIL.
  sums = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "VALID")[0]
  inner = tf.cast(tf.floor(sums / 13.0 + 0.5), tf.uint8)
  inner = tf.pad(inner, [[1, 1], [1, 1], [0, 0]])
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  interior = tf.pad(tf.ones([h - 2, w - 2, 1], tf.bool),
                    [[1, 1], [1, 1], [0, 0]])
  return tf.where(interior, inner, image)


def sharpness(image: tf.Tensor, factor) -> tf.Tensor:
  """Sharpness: 0 gives the smoothed image, 1 the image, >1 sharper."""
  return blend(smooth(image), image, factor)


def affine(image: tf.Tensor, matrix) -> tf.Tensor:
  """Warps with the 2x3 `matrix` mapping output (x, y, 1) to input (x, y).

  Nearest-neighbour sampling, as the policies were searched with; pixels
  mapped from outside the image get the gray FILL value.
  """
  matrix = tf.cast(tf.reshape(tf.stack(matrix), [6]), tf.float32)
  transform = tf.concat([matrix, tf.zeros([2], tf.float32)], 0)[None]
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=transform,
      output_shape=tf.shape(image)[:2], fill_value=float(FILL),
      interpolation="NEAREST", fill_mode="CONSTANT")
  return tf.ensure_shape(out[0], image.shape)


def rotate(image: tf.Tensor, degrees) -> tf.Tensor:
  """Rotates by `degrees` around the image centre."""
  theta = tf.cast(degrees, tf.float32) * (3.141592653589793 / 180.0)
  cos, sin = tf.cos(theta), tf.sin(theta)
  hw = tf.cast(tf.shape(image)[:2], tf.float32)
  cy, cx = (hw[0] - 1) / 2, (hw[1] - 1) / 2
  # input = centre + R(theta) @ (output - centre)
  return affine(image, [cos, -sin, cx - cos * cx + sin * cy,
                        sin, cos, cy - sin * cx - cos * cy])


def shear_x(image: tf.Tensor, shear) -> tf.Tensor:
  """out[y, x] = in[y, x + shear * y]."""
  return affine(image, [1.0, shear, 0.0, 0.0, 1.0, 0.0])


def shear_y(image: tf.Tensor, shear) -> tf.Tensor:
  """out[y, x] = in[y + shear * x, x]."""
  return affine(image, [1.0, 0.0, 0.0, shear, 1.0, 0.0])


def translate_x(image: tf.Tensor, pixels) -> tf.Tensor:
  """Shifts the content right by `pixels` (left if negative)."""
  return affine(image, [1.0, 0.0, -pixels, 0.0, 1.0, 0.0])


def translate_y(image: tf.Tensor, pixels) -> tf.Tensor:
  """Shifts the content down by `pixels` (up if negative)."""
  return affine(image, [1.0, 0.0, 0.0, 0.0, 1.0, -pixels])


def cutout(image: tf.Tensor, half_size: int, seed: tf.Tensor) -> tf.Tensor:
  """Fills a (2*half_size)^2 square at a uniformly random centre with FILL.

  The square is clipped at the image border, so near edges less is hidden.
  """
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  centre = tf.random.stateless_uniform([2], seed, minval=0, maxval=tf.int32.max,
                                       dtype=tf.int32) % tf.stack([h, w])
  rows, cols = tf.range(h)[:, None], tf.range(w)[None, :]
  inside = ((rows >= centre[0] - half_size) & (rows < centre[0] + half_size)
            & (cols >= centre[1] - half_size) & (cols < centre[1] + half_size))
  return tf.where(inside[..., None], tf.constant(FILL, tf.uint8), image)


# ----------------------------------------------------------------------------
# Levels (0..10) to op arguments, and the op table.
# ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Hparams:
  """Scale of the ops whose argument is in pixels."""
  cutout_const: int  # Cutout half size at level 10.
  translate_const: int  # Translation at level 10.


RANDAUG_HPARAMS = Hparams(cutout_const=40, translate_const=100)
AUTOAUG_HPARAMS = Hparams(cutout_const=100, translate_const=250)


def _signed(value, seed):
  """`value` with a random sign: geometric ops go either way."""
  negate = tf.random.stateless_uniform([], seed) < 0.5
  value = tf.constant(value, tf.float32)
  return tf.where(negate, -value, value)


def _enhance(level):
  return level / MAX_LEVEL * 1.8 + 0.1  # 0.1 .. 1.9


# name -> fn(image, level, seed, hparams). Levels are Python floats.
Op = Callable[[tf.Tensor, float, tf.Tensor, Hparams], tf.Tensor]
OPS: dict[str, Op] = {
    "AutoContrast": lambda im, lvl, s, hp: autocontrast(im),
    "Equalize": lambda im, lvl, s, hp: equalize(im),
    "Invert": lambda im, lvl, s, hp: invert(im),
    "Rotate": lambda im, lvl, s, hp: rotate(im, _signed(lvl / MAX_LEVEL * 30,
                                                        s)),
    "Posterize": lambda im, lvl, s, hp: posterize(
        im, min(int(lvl / MAX_LEVEL * 4), 8)),
    "Solarize": lambda im, lvl, s, hp: solarize(im, int(lvl / MAX_LEVEL * 256)),
    "SolarizeAdd": lambda im, lvl, s, hp: solarize_add(
        im, int(lvl / MAX_LEVEL * 110)),
    "Color": lambda im, lvl, s, hp: color(im, _enhance(lvl)),
    "Contrast": lambda im, lvl, s, hp: contrast(im, _enhance(lvl)),
    "Brightness": lambda im, lvl, s, hp: brightness(im, _enhance(lvl)),
    "Sharpness": lambda im, lvl, s, hp: sharpness(im, _enhance(lvl)),
    "ShearX": lambda im, lvl, s, hp: shear_x(im, _signed(lvl / MAX_LEVEL * 0.3,
                                                         s)),
    "ShearY": lambda im, lvl, s, hp: shear_y(im, _signed(lvl / MAX_LEVEL * 0.3,
                                                         s)),
    "TranslateX": lambda im, lvl, s, hp: translate_x(
        im, _signed(lvl / MAX_LEVEL * hp.translate_const, s)),
    "TranslateY": lambda im, lvl, s, hp: translate_y(
        im, _signed(lvl / MAX_LEVEL * hp.translate_const, s)),
    "Cutout": lambda im, lvl, s, hp: cutout(
        im, int(lvl / MAX_LEVEL * hp.cutout_const), s),
}

# The ops RandAugment chooses from (all of the above).
RANDAUG_OPS = tuple(OPS)

# AutoAugment policies: a list of sub-policies, each a list of
# (op, probability, level). "v0" is the ImageNet policy of the reference
# TPU implementation (EfficientNet), a variant of the paper's.
POLICIES = {
    "v0": [
        [("Equalize", 0.8, 1), ("ShearY", 0.8, 4)],
        [("Color", 0.4, 9), ("Equalize", 0.6, 3)],
        [("Color", 0.4, 1), ("Rotate", 0.6, 8)],
        [("Solarize", 0.8, 3), ("Equalize", 0.4, 7)],
        [("Solarize", 0.4, 2), ("Solarize", 0.6, 2)],
        [("Color", 0.2, 0), ("Equalize", 0.8, 8)],
        [("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)],
        [("ShearX", 0.2, 9), ("Rotate", 0.6, 8)],
        [("Color", 0.6, 1), ("Equalize", 1.0, 2)],
        [("Invert", 0.4, 9), ("Rotate", 0.6, 0)],
        [("Equalize", 1.0, 9), ("ShearY", 0.6, 3)],
        [("Color", 0.4, 7), ("Equalize", 0.6, 0)],
        [("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)],
        [("Solarize", 0.6, 8), ("Color", 0.6, 9)],
        [("Solarize", 0.2, 4), ("Rotate", 0.8, 9)],
        [("Rotate", 1.0, 7), ("TranslateY", 0.8, 9)],
        [("ShearX", 0.0, 0), ("Solarize", 0.8, 4)],
        [("ShearY", 0.8, 0), ("Color", 0.6, 4)],
        [("Color", 1.0, 0), ("Rotate", 0.6, 2)],
        [("Equalize", 0.8, 4), ("Equalize", 0.0, 8)],
        [("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)],
        [("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)],
        [("Posterize", 0.8, 2), ("Solarize", 0.6, 10)],
        [("Solarize", 0.6, 8), ("Equalize", 0.6, 1)],
        [("Color", 0.8, 6), ("Rotate", 0.4, 5)],
    ],
}


def _check_image(image, what):
  if image.dtype != tf.uint8:
    raise ValueError(f"{what} works on uint8 images, got {image.dtype.name}; "
                     "apply it before value_range / vgg_value_range.")
  if image.shape.rank != 3 or image.shape[-1] not in (3, None):
    raise ValueError(f"{what} expects a [height, width, 3] RGB image, got "
                     f"shape {image.shape}.")


def _random_index(seed, n):
  return tf.random.stateless_uniform([], seed, minval=0, maxval=n,
                                     dtype=tf.int32)


def randaugment(image: tf.Tensor, num_layers: int, magnitude: float,
                seed: tf.Tensor, hparams: Hparams = RANDAUG_HPARAMS):
  """Applies `num_layers` uniformly chosen ops, all at `magnitude`."""
  _check_image(image, "randaug")
  ops = [OPS[name] for name in RANDAUG_OPS]
  for layer_seed in (utils.split_seed(seed, num_layers) if num_layers else []):
    pick_seed, op_seed = utils.split_seed(layer_seed, 2)
    # Default arguments bind this layer's values (closures are late-binding).
    branches = [lambda op=op, im=image, s=op_seed: op(im, magnitude, s, hparams)
                for op in ops]
    image = tf.switch_case(_random_index(pick_seed, len(ops)), branches)
    image = tf.ensure_shape(image, [None, None, 3])
  return image


def _apply_subpolicy(image, subpolicy, seed, hparams):
  """Applies each (op, probability, level) of `subpolicy` in turn."""
  step_seeds = utils.split_seed(seed, len(subpolicy))
  for (name, prob, level), step_seed in zip(subpolicy, step_seeds):
    if prob <= 0:
      continue
    coin_seed, op_seed = utils.split_seed(step_seed, 2)
    apply = lambda im=image, n=name, l=level, s=op_seed: OPS[n](
        im, float(l), s, hparams)
    if prob >= 1:
      image = apply()
    else:
      coin = tf.random.stateless_uniform([], coin_seed) < prob
      image = tf.cond(coin, apply, lambda im=image: im)
  return image


def autoaugment(image: tf.Tensor, policy: str, seed: tf.Tensor,
                hparams: Hparams = AUTOAUG_HPARAMS):
  """Applies one uniformly chosen sub-policy of `POLICIES[policy]`."""
  _check_image(image, "autoaugment")
  subpolicies = POLICIES[policy]
  pick_seed, apply_seed = utils.split_seed(seed, 2)
  branches = [lambda sp=sp, im=image: _apply_subpolicy(im, sp, apply_seed,
                                                        hparams)
              for sp in subpolicies]
  image = tf.switch_case(_random_index(pick_seed, len(subpolicies)), branches)
  return tf.ensure_shape(image, [None, None, 3])
