"""Shared fixtures for pp tests: real photos from scikit-image, encoded."""
import io

import numpy as np
from PIL import Image
import pytest
from skimage import data as skdata
import tensorflow as tf


def encode(image: np.ndarray, fmt: str, **kw) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, fmt, **kw)
  return buf.getvalue()


@pytest.fixture(scope="session")
def photos():
  """name -> uint8 [h, w, 3] photo; sizes 512x512, 300x451, 400x600."""
  return {"astronaut": skdata.astronaut(), "chelsea": skdata.chelsea(),
          "coffee": skdata.coffee()}


@pytest.fixture(scope="session")
def jpegs(photos):
  return {k: encode(v, "JPEG", quality=90) for k, v in photos.items()}


@pytest.fixture(scope="session")
def pngs(photos):
  return {k: encode(v, "PNG") for k, v in photos.items()}


@pytest.fixture
def run_pp():
  """run_pp(pp_str, seed=(0, 0), **features) -> dict of numpy values."""
  from big_vision.pp import builder  # pylint: disable=g-import-not-at-top

  def run(pp_str, seed=(0, 0), **features):
    data = {k: tf.constant(v) for k, v in features.items()}
    if seed is not None:
      data["_seed"] = tf.constant(seed, tf.int64)
    out = builder.get_preprocess_fn(pp_str)(data)
    return {k: (v.numpy() if hasattr(v, "numpy") else v)
            for k, v in out.items()}

  return run
