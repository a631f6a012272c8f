"""Tests for image pp ops on real photos, against numpy / PIL references."""
import io

from big_vision.pp import builder
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf


def find_window(image, crop):
  """(y, x) such that image[y:y+h, x:x+w] == crop, or None."""
  h, w = crop.shape[:2]
  ys, xs = np.nonzero((image[: image.shape[0] - h + 1, : image.shape[1] - w + 1]
                       == crop[0, 0]).all(-1))
  for y, x in zip(ys, xs):
    if np.array_equal(image[y:y + h, x:x + w], crop):
      return y, x
  return None


def np_bilinear(img, h, w):
  """Bilinear resize with half-pixel centres (TF2's convention), float64."""
  x = img.astype(np.float64)
  def coords(n, size):
    c = np.clip((np.arange(n) + 0.5) * size / n - 0.5, 0, size - 1)
    i0 = np.floor(c).astype(int)
    return i0, np.minimum(i0 + 1, size - 1), c - i0
  y0, y1, wy = coords(h, x.shape[0])
  x0, x1, wx = coords(w, x.shape[1])
  wx = wx[None, :, None]
  top = x[y0][:, x0] * (1 - wx) + x[y0][:, x1] * wx
  bot = x[y1][:, x0] * (1 - wx) + x[y1][:, x1] * wx
  return top * (1 - wy)[:, None, None] + bot * wy[:, None, None]


def pil_decode(encoded, mode="RGB"):
  return np.asarray(Image.open(io.BytesIO(encoded)).convert(mode))


# ---------------------------------------------------------------- decode ---
@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee"])
def test_decode_png_is_lossless(run_pp, photos, pngs, name):
  out = run_pp("decode", image=pngs[name])["image"]
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(out, photos[name])


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee"])
def test_decode_jpeg_matches_pil(run_pp, jpegs, photos, name):
  ref = pil_decode(jpegs[name])
  precise = run_pp("decode(precise=True)", image=jpegs[name])["image"]
  np.testing.assert_array_equal(precise, ref)  # Same IDCT: bit exact.
  fast = run_pp("decode", image=jpegs[name])["image"].astype(int)
  assert fast.shape == photos[name].shape
  diff = np.abs(fast - ref)  # The default, fast IDCT: close, not exact.
  assert diff.max() <= 8 and diff.mean() < 1.5, (diff.max(), diff.mean())


def test_decode_channels(run_pp, jpegs, pngs):
  gray = run_pp("decode(channels=1)", image=jpegs["chelsea"])["image"]
  assert gray.shape == (300, 451, 1) and gray.dtype == np.uint8
  luma = pil_decode(jpegs["chelsea"], "L").astype(int)
  assert np.abs(gray[..., 0].astype(int) - luma).mean() < 1.5
  rgba = run_pp("decode(channels=4)", image=pngs["coffee"])["image"]
  assert rgba.shape == (400, 600, 4) and (rgba[..., 3] == 255).all()
  with pytest.raises(ValueError, match="channels"):
    builder.get_preprocess_fn("decode(channels=2)")


# ---------------------------------------------------------------- resize ---
@pytest.mark.parametrize("size, hw", [(224, (224, 224)), ((123, 77), (123, 77)),
                                      ((500, 700), (500, 700))])
def test_resize_bilinear_matches_numpy(run_pp, photos, size, hw):
  img = photos["chelsea"]
  out = run_pp(f"resize({size})", image=img)["image"]
  assert out.shape == (*hw, 3) and out.dtype == np.uint8
  ref = np_bilinear(img, *hw)
  # Integer images are rounded; float32 vs float64 may flip exact halves.
  assert np.abs(out - np.round(ref)).max() <= 1
  assert (out == np.round(ref)).mean() > 0.999
  outf = run_pp(f"resize({size})", image=img.astype(np.float32))["image"]
  assert outf.dtype == np.float32
  np.testing.assert_allclose(outf, ref, atol=2e-3)


def test_resize_nearest_and_antialias(run_pp, photos):
  img = photos["coffee"]
  out = run_pp("resize((100, 130), method='nearest')", image=img)["image"]
  yi = np.floor((np.arange(100) + 0.5) * 400 / 100).astype(int)
  xi = np.floor((np.arange(130) + 0.5) * 600 / 130).astype(int)
  np.testing.assert_array_equal(out, img[yi][:, xi])
  # Antialiased bilinear downscaling is PIL's triangle filter.
  out = run_pp("resize((100, 130), antialias=True)",
               image=img.astype(np.float32))["image"]
  ref = np.stack([np.asarray(Image.fromarray(img[..., c].astype(np.float32))
                             .resize((130, 100), Image.BILINEAR))
                  for c in range(3)], -1)
  np.testing.assert_allclose(out, ref, atol=5e-3)


def test_resize_small_area_is_block_mean(run_pp, photos):
  img = photos["astronaut"]  # 512x512, exactly 2x.
  out = run_pp("resize_small(256)", image=img)["image"]
  ref = img.reshape(256, 2, 256, 2, 3).astype(np.float64).mean((1, 3))
  np.testing.assert_array_equal(out, np.round(ref))


@pytest.mark.parametrize("pp, name, shape", [
    ("resize_small(256)", "coffee", (256, 384, 3)),   # 400x600
    ("resize_small(100)", "chelsea", (100, 150, 3)),  # 300x451: 150.33
    ("resize_small(600)", "chelsea", (600, 902, 3)),  # upscaling
    ("resize_long(300)", "coffee", (200, 300, 3)),
    ("resize_long(200)", "chelsea", (133, 200, 3)),   # 133.04
])
def test_resize_keeps_aspect(run_pp, photos, pp, name, shape):
  img = photos[name]
  out = run_pp(pp, image=img)["image"]
  assert out.shape == shape and out.dtype == np.uint8
  # Content check: same as a plain resize to the computed shape.
  ref = run_pp(f"resize({shape[:2]}, method='area')", image=img)["image"]
  np.testing.assert_array_equal(out, ref)


# ----------------------------------------------------------------- crops ---
@pytest.mark.parametrize("size, hw", [(224, (224, 224)), ((100, 301), (100, 301))])
def test_central_crop(run_pp, photos, size, hw):
  img = photos["chelsea"]  # 300x451
  out = run_pp(f"central_crop({size})", image=img)["image"]
  y, x = (300 - hw[0]) // 2, (451 - hw[1]) // 2
  np.testing.assert_array_equal(out, img[y:y + hw[0], x:x + hw[1]])


def test_central_crop_too_small(run_pp, photos):
  with pytest.raises(tf.errors.InvalidArgumentError, match="smaller"):
    run_pp("central_crop(301)", image=photos["chelsea"])


def test_random_crop(run_pp, photos):
  img = photos["coffee"]
  offsets = set()
  for s in range(6):
    out = run_pp("random_crop((64, 96))", seed=(7, s), image=img)["image"]
    assert out.shape == (64, 96, 3)
    offsets.add(find_window(img, out))
  assert None not in offsets and len(offsets) == 6
  again = run_pp("random_crop((64, 96))", seed=(7, 0), image=img)["image"]
  assert find_window(img, again) == find_window(
      img, run_pp("random_crop((64, 96))", seed=(7, 0), image=img)["image"])


def test_inception_crop_is_valid_window(run_pp, photos):
  img = photos["astronaut"]
  boxes = set()
  for s in range(8):
    out = run_pp("inception_crop", seed=(3, s), image=img)["image"]
    h, w, _ = out.shape
    assert find_window(img, out) is not None
    assert 0.05 * 512 * 512 * 0.98 <= h * w <= 512 * 512
    assert 3 / 4 * 0.97 <= w / h <= 4 / 3 * 1.03
    boxes.add((h, w, find_window(img, out)))
  assert len(boxes) == 8


def test_inception_crop_resized_and_deterministic(run_pp, photos):
  img = photos["coffee"]
  a = run_pp("inception_crop(224)", seed=(1, 1), image=img)["image"]
  b = run_pp("inception_crop(224)", seed=(1, 1), image=img)["image"]
  c = run_pp("inception_crop(224)", seed=(1, 2), image=img)["image"]
  assert a.shape == (224, 224, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  # Equals cropping then resizing.
  crop = run_pp("inception_crop", seed=(1, 1), image=img)["image"]
  ref = run_pp("resize(224)", image=crop)["image"]
  np.testing.assert_array_equal(a, ref)


def test_inception_crop_area_range(run_pp, photos):
  img = photos["coffee"]
  for s in range(4):
    out = run_pp("inception_crop(area_min=50, area_max=60)", seed=(0, s),
                 image=img)["image"]
    area = out.shape[0] * out.shape[1] / (400 * 600)
    assert 0.49 <= area <= 0.61, area


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee"])
def test_decode_jpeg_and_inception_crop_matches_unfused(run_pp, jpegs, name):
  for s in range(3):
    fused = run_pp("decode_jpeg_and_inception_crop", seed=(5, s),
                   image=jpegs[name])["image"]
    unfused = run_pp("decode|inception_crop", seed=(5, s),
                     image=jpegs[name])["image"]
    # Same box, same pixels, except that chroma upsampling at the window's
    # left/right edge lacks the neighbour column outside it.
    assert fused.shape == unfused.shape and fused.dtype == np.uint8
    np.testing.assert_array_equal(fused[:, 1:-1], unfused[:, 1:-1])
    assert np.abs(fused.astype(int) - unfused).max() <= 32


def test_decode_jpeg_and_inception_crop_sizes_and_png(run_pp, jpegs, pngs):
  out = run_pp("decode_jpeg_and_inception_crop(224)", image=jpegs["coffee"])
  assert out["image"].shape == (224, 224, 3)
  fused = run_pp("decode_jpeg_and_inception_crop(64)", seed=(2, 2),
                 image=pngs["chelsea"])["image"]
  unfused = run_pp("decode|inception_crop(64)", seed=(2, 2),
                   image=pngs["chelsea"])["image"]
  np.testing.assert_array_equal(fused, unfused)  # Non-JPEG: same path.


# ----------------------------------------------------------- flip, norms ---
def test_flip_lr(run_pp, photos):
  img = photos["chelsea"]
  flipped = 0
  for s in range(20):
    out = run_pp("flip_lr", seed=(0, s), image=img)["image"]
    if np.array_equal(out, img[:, ::-1]):
      flipped += 1
      np.testing.assert_array_equal(out[:, ::-1], img)  # Flip twice = id.
    else:
      np.testing.assert_array_equal(out, img)
  assert 4 <= flipped <= 16
  a = run_pp("flip_lr|flip_lr", seed=(9, 9), image=img)
  b = run_pp("flip_lr|flip_lr", seed=(9, 9), image=img)
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["_seed"], b["_seed"])


def test_random_ops_chain_seeds(run_pp, photos):
  """Two random ops in a row get different seeds (split, not reused)."""
  img = photos["chelsea"][:8, :8]
  outs = [run_pp("flip_lr|copy('image', 'first')|flip_lr", seed=(0, s),
                 image=img) for s in range(32)]
  same = [np.array_equal(o["first"], o["image"]) for o in outs]
  assert 4 <= sum(same) <= 28  # Independent coins, not always equal.


def test_vgg_value_range(run_pp, photos):
  img = photos["coffee"]
  out = run_pp("vgg_value_range", image=img)["image"]
  mean = np.array([0.485, 0.456, 0.406]) * 255
  std = np.array([0.229, 0.224, 0.225]) * 255
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, (img - mean) / std, atol=1e-5)


def test_image_ops_use_key(run_pp, photos):
  img = photos["chelsea"]
  out = run_pp("resize(16, key='raw', key_result='small')|flip_lr(key='raw')",
               raw=img)
  assert out["small"].shape == (16, 16, 3) and out["raw"].shape == img.shape
  with pytest.raises(KeyError, match="key="):
    run_pp("resize(16)", raw=img)


@pytest.mark.parametrize("pp", ["decode|inception_crop(32)",
                                "decode|inception_crop",
                                "decode_jpeg_and_inception_crop(32)"])
def test_inception_crop_keeps_static_channels_in_tf_data(pngs, pp):
  # Regression: inception_crop lost the channel dim (tf.slice with a tensor
  # box), so transfer.py's train pp had 'image' of shape (32, 32, None) and
  # the config check stopped the recipe before training.
  fn = builder.get_preprocess_fn(pp)
  ds = tf.data.Dataset.from_tensors(
      {"image": pngs["chelsea"], "_seed": tf.constant([0, 1], tf.int64)})
  spec = ds.map(fn).element_spec["image"]
  assert spec.shape[-1] == 3, spec.shape
  if "32" in pp:
    assert spec.shape.as_list() == [32, 32, 3]
