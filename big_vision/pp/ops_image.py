"""Image pp ops: decoding, resizing, cropping, flipping, normalisation, aug.

Every op reads `data["image"]` unless given `key=`, writes to `key_result=`
(default: in place), and handles one [height, width, channels] image. Integer
images stay integer through resizes and crops (values rounded and clipped),
so the expensive float conversion happens once, at `value_range`.

Random ops follow the seed contract of `big_vision.pp.utils`: they take their
randomness from `data["_seed"]`, never from stateful `tf.random`.
"""
from big_vision.pp import autoaugment
from big_vision.pp import utils
from big_vision.pp.registry import Registry
from big_vision.datasets.tf_import import tf

RESIZE_METHODS = ("bilinear", "nearest", "bicubic", "area", "lanczos3",
                  "lanczos5", "gaussian", "mitchellcubic")

# Inception-style crops keep aspect ratios within [3/4, 4/3] (Szegedy et al.).
INCEPTION_ASPECT_RATIOS = (3 / 4, 4 / 3)

# ImageNet channel statistics, on the 0..255 scale.
VGG_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
VGG_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def _check_method(method):
  utils.check_choice(method, RESIZE_METHODS, "resize method")


def _resize(image, hw, method, antialias):
  """Resizes to `hw` (tensor or pair), keeping the input dtype."""
  out = tf.image.resize(image, hw, method=method, antialias=antialias)
  return utils.cast_like(out, image.dtype)


def _decode_any(encoded, channels, precise=False):
  """Decodes JPEG/PNG/GIF/BMP bytes to a [h, w, channels] uint8 image."""
  if precise:
    # The "accurate" integer IDCT matches libjpeg's reference decoder (and
    # PIL) bit for bit; the default one is faster but off by a few levels.
    img = tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=channels,
                                  dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(encoded, channels=channels,
                                   expand_animations=False))
  else:
    img = tf.io.decode_image(encoded, channels=channels,
                             expand_animations=False)
  return tf.ensure_shape(img, [None, None, channels])


@Registry.register("preprocess_ops.decode")
@utils.InKeyOutKey()
def get_decode(channels: int = 3, precise: bool = False):
  """Decodes an encoded image (JPEG, PNG, GIF's first frame, BMP) to uint8.

  Args:
    channels: 1 (grayscale), 3 (RGB) or 4 (RGBA); images are converted.
    precise: use the exact (slower) JPEG IDCT instead of the fast one.
  """
  utils.check_choice(channels, (1, 3, 4), "decode channels")
  return lambda x: _decode_any(x, channels, precise)


@Registry.register("preprocess_ops.resize")
@utils.InKeyOutKey()
def get_resize(size, method: str = "bilinear", antialias: bool = False):
  """Resizes to `size` (int: square, or (height, width)), ignoring aspect."""
  hw = utils.pair(size, "resize size")
  _check_method(method)

  def _resize_op(image):
    return tf.ensure_shape(_resize(image, hw, method, antialias),
                           [*hw, image.shape[-1]])

  return _resize_op


def _scaled_hw(image, target, side):
  """(h, w) scaled so that the `side` ("min"/"max") side equals `target`."""
  hw = tf.cast(tf.shape(image)[:2], tf.float64)
  ref = tf.reduce_min(hw) if side == "min" else tf.reduce_max(hw)
  # Rounding (not flooring) keeps the aspect ratio as close as possible, and
  # makes the reference side exactly `target` despite float error.
  return tf.cast(tf.round(hw * (target / ref)), tf.int32)


@Registry.register("preprocess_ops.resize_small")
@utils.InKeyOutKey()
def get_resize_small(smaller_size: int, method: str = "area",
                     antialias: bool = False):
  """Resizes keeping the aspect ratio, the shorter side to `smaller_size`.

  "area" by default: when shrinking it averages all covered pixels, i.e. it
  is alias-free, unlike plain bilinear.
  """
  utils.pair(smaller_size, "resize_small smaller_size")
  _check_method(method)
  return lambda image: _resize(image, _scaled_hw(image, smaller_size, "min"),
                               method, antialias)


@Registry.register("preprocess_ops.resize_long")
@utils.InKeyOutKey()
def get_resize_long(longer_size: int, method: str = "area",
                    antialias: bool = False):
  """Resizes keeping the aspect ratio, the longer side to `longer_size`."""
  utils.pair(longer_size, "resize_long longer_size")
  _check_method(method)
  return lambda image: _resize(image, _scaled_hw(image, longer_size, "max"),
                               method, antialias)


@Registry.register("preprocess_ops.central_crop")
@utils.InKeyOutKey()
def get_central_crop(crop_size):
  """Crops the central (h, w) window (int: square); offsets rounded down."""
  h, w = utils.pair(crop_size, "central_crop crop_size")

  def _crop(image):
    shape = tf.shape(image)
    check = tf.debugging.assert_greater_equal(
        shape[:2], [h, w],
        message=f"central_crop({(h, w)}): image is smaller than the crop.")
    with tf.control_dependencies([check]):
      y, x = (shape[0] - h) // 2, (shape[1] - w) // 2
      crop = image[y:y + h, x:x + w]
    return tf.ensure_shape(crop, [h, w, image.shape[-1]])

  return _crop


@Registry.register("preprocess_ops.random_crop")
@utils.InKeyOutKey(with_seed=True)
def get_random_crop(crop_size):
  """Crops a uniformly random (h, w) window (int: square)."""
  h, w = utils.pair(crop_size, "random_crop crop_size")

  def _crop(image, seed):
    size = tf.stack([h, w, tf.shape(image)[-1]])
    crop = tf.image.stateless_random_crop(image, size, seed)
    return tf.ensure_shape(crop, [h, w, image.shape[-1]])

  return _crop


def _check_area(area_min, area_max):
  if not 0 < area_min <= area_max <= 100:
    raise ValueError("inception crop needs 0 < area_min <= area_max <= 100 "
                     f"(percent of the image), got {area_min}, {area_max}.")


def _inception_box(shape, seed, area_min, area_max):
  """Samples (begin, size) of an Inception crop for an image of `shape`.

  The box covers area_min..area_max percent of the image, with an aspect
  ratio in [3/4, 4/3]; if no such box is found in 100 tries, the whole image.
  """
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape,
      bounding_boxes=tf.zeros([0, 0, 4], tf.float32),
      seed=seed,
      min_object_covered=0.0,
      aspect_ratio_range=INCEPTION_ASPECT_RATIOS,
      area_range=(area_min / 100, area_max / 100),
      max_attempts=100,
      use_image_if_no_bounding_boxes=True)
  return begin, size


def _maybe_resize(crop, size, method, antialias):
  if size is None:
    return crop
  hw = utils.pair(size, "size")
  return tf.ensure_shape(_resize(crop, hw, method, antialias),
                         [*hw, crop.shape[-1]])


@Registry.register("preprocess_ops.inception_crop")
@utils.InKeyOutKey(with_seed=True)
def get_inception_crop(size=None, area_min: float = 5, area_max: float = 100,
                       method: str = "bilinear", antialias: bool = False):
  """Inception-style random crop ("RandomResizedCrop"), then resize.

  Args:
    size: output size (int or (h, w)); None returns the crop unresized.
    area_min: smallest crop area, in percent of the image.
    area_max: largest crop area, in percent of the image.
    method: resize method.
    antialias: antialias when downscaling.
  """
  _check_area(area_min, area_max)
  _check_method(method)
  if size is not None:
    utils.pair(size, "inception_crop size")

  def _crop(image, seed):
    begin, box = _inception_box(tf.shape(image), seed, area_min, area_max)
    # `box` is a tensor: keep the static channel count tf.slice drops.
    crop = tf.ensure_shape(tf.slice(image, begin, box),
                           [None, None, image.shape[-1]])
    return _maybe_resize(crop, size, method, antialias)

  return _crop


@Registry.register("preprocess_ops.decode_jpeg_and_inception_crop")
@utils.InKeyOutKey(with_seed=True)
def get_decode_jpeg_and_inception_crop(size=None, area_min: float = 5,
                                       area_max: float = 100,
                                       method: str = "bilinear",
                                       antialias: bool = False):
  """`decode|inception_crop(...)` fused: decodes only the cropped window.

  The crop is sampled from the JPEG header's shape (no decoding needed) and
  only that window is decoded, which roughly halves the cost of the
  standard ImageNet train pp. The same seed yields the same box as
  `decode|inception_crop`. Non-JPEG inputs (a few PNGs in web-scraped data)
  take the unfused path, with identical box sampling.

  Args: as `inception_crop`.
  """
  _check_area(area_min, area_max)
  _check_method(method)
  if size is not None:
    utils.pair(size, "decode_jpeg_and_inception_crop size")

  def _crop(encoded, seed):
    def fused():
      shape = tf.image.extract_jpeg_shape(encoded)
      begin, box = _inception_box(shape, seed, area_min, area_max)
      window = tf.stack([begin[0], begin[1], box[0], box[1]])
      return tf.io.decode_and_crop_jpeg(encoded, window, channels=3)

    def unfused():
      image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
      begin, box = _inception_box(tf.shape(image), seed, area_min, area_max)
      return tf.slice(image, begin, box)

    crop = tf.cond(tf.io.is_jpeg(encoded), fused, unfused)
    crop = tf.ensure_shape(crop, [None, None, 3])
    return _maybe_resize(crop, size, method, antialias)

  return _crop


@Registry.register("preprocess_ops.flip_lr")
@utils.InKeyOutKey(with_seed=True)
def get_flip_lr():
  """Mirrors the image left-right with probability 1/2."""
  return tf.image.stateless_random_flip_left_right


@Registry.register("preprocess_ops.vgg_value_range")
@utils.InKeyOutKey()
def get_vgg_value_range(mean=VGG_MEAN, std=VGG_STD):
  """(image - mean) / std per channel, with ImageNet's 0..255 statistics."""
  mean = tf.constant(mean, tf.float32)
  std = tf.constant(std, tf.float32)
  return lambda image: (tf.cast(image, tf.float32) - mean) / std


@Registry.register("preprocess_ops.randaug")
@utils.InKeyOutKey(with_seed=True)
def get_randaug(num_layers: int = 2, magnitude: float = 10):
  """RandAugment (Cubuk et al., 2019) on a uint8 RGB image.

  Args:
    num_layers: number of ops applied in sequence, each chosen uniformly.
    magnitude: strength of every op, on the 0..10 scale (may exceed 10).
  """
  if not isinstance(num_layers, int) or num_layers < 0:
    raise ValueError(f"randaug: num_layers must be an int >= 0, got "
                     f"{num_layers!r}.")
  if not isinstance(magnitude, (int, float)) or magnitude < 0:
    raise ValueError(f"randaug: magnitude must be >= 0, got {magnitude!r}.")
  return lambda image, seed: autoaugment.randaugment(
      image, num_layers, float(magnitude), seed)


@Registry.register("preprocess_ops.autoaugment")
@utils.InKeyOutKey(with_seed=True)
def get_autoaugment(policy: str = "v0"):
  """AutoAugment (Cubuk et al., 2018) with a fixed ImageNet policy."""
  utils.check_choice(policy, tuple(autoaugment.POLICIES), "autoaugment policy")
  return lambda image, seed: autoaugment.autoaugment(image, policy, seed)


# ----------------------------------------------------------------------------
# NaFlex (SigLIP 2): native aspect ratio, a variable number of patches.
# ----------------------------------------------------------------------------
def naflex_grid(height, width, patch_size: int, seq_len: int):
  """(rows, cols) of patches for an image of `height` x `width` pixels: the
  largest grid of the image's aspect ratio with rows * cols <= seq_len.

  The image is scaled by s = sqrt(seq_len * p^2 / (h * w)) (its patch count
  is then exactly seq_len) and each side rounded down to whole patches, so
  the product never exceeds seq_len; a side that would round to 0 (extreme
  aspect ratios) is 1 and the other side is capped at seq_len. Works on
  python numbers and on scalar tf tensors.
  """
  h = tf.cast(height, tf.float32)
  w = tf.cast(width, tf.float32)
  scale = tf.sqrt(float(seq_len) * patch_size ** 2 / (h * w))
  rows = tf.maximum(tf.cast(tf.floor(h * scale / patch_size), tf.int32), 1)
  cols = tf.maximum(tf.cast(tf.floor(w * scale / patch_size), tf.int32), 1)
  cols = tf.maximum(tf.minimum(cols, seq_len // rows), 1)
  rows = tf.maximum(tf.minimum(rows, seq_len // cols), 1)
  return rows, cols


# Channels after the patch pixels in a NaFlex "image": row, column, valid.
NAFLEX_EXTRA = 3


@Registry.register("preprocess_ops.naflex")
@utils.InKeyOutKey()
def get_naflex(seq_len: int, patch_size: int = 16, method: str = "bilinear",
               antialias: bool = True):
  """An image as a fixed-length NaFlex patch sequence (SigLIP 2).

  Resizes the [h, w, c] image, keeping its aspect ratio, to the largest
  whole-patch grid (rows, cols) with rows * cols <= seq_len (`naflex_grid`),
  cuts it into row-major patches and pads the sequence to `seq_len`. The
  output is ONE float32 tensor [seq_len, p*p*c + 3] so that batches stack
  and every consumer of `image` (the step, evaluators, shardings) handles it
  unchanged: channels [:p*p*c] are the patch pixels in (row, col, channel)
  order (the layout of a ViT's conv `embedding` kernel, flattened), then the
  patch's row, its column, and 1 for a real patch / 0 for padding (padding
  rows are all zero). `models.naflex_vit` reads this layout. Apply after
  `value_range` (pixels are not rescaled here).
  """
  _check_method(method)
  if seq_len < 1 or patch_size < 1:
    raise ValueError(f"naflex: seq_len and patch_size must be >= 1, got "
                     f"{seq_len}, {patch_size}.")
  p = int(patch_size)

  def _naflex(image):
    channels = image.shape[-1]
    shape = tf.shape(image)
    rows, cols = naflex_grid(shape[0], shape[1], p, seq_len)
    image = tf.image.resize(tf.cast(image, tf.float32), (rows * p, cols * p),
                            method=method, antialias=antialias)
    x = tf.reshape(image, (rows, p, cols, p, channels))
    x = tf.transpose(x, (0, 2, 1, 3, 4))
    n = rows * cols
    x = tf.reshape(x, (n, p * p * channels))
    idx = tf.range(n)
    pos = tf.cast(tf.stack([idx // cols, idx % cols, tf.ones_like(idx)], -1),
                  tf.float32)
    x = tf.concat([x, pos], axis=-1)
    x = tf.pad(x, [[0, seq_len - n], [0, 0]])
    return tf.ensure_shape(x, [seq_len, p * p * channels + NAFLEX_EXTRA])

  return _naflex
