"""`digits`: scikit-learn's 8x8 handwritten digits as an embedded TFDS dataset.

1,797 grayscale 8x8 images with labels 0..9, shipped inside scikit-learn, so
a full train/eval run (and the test suite) works with no download. It is
exposed exactly like a TFDS dataset (split slicing, per-process splits, PNG
images decoded by the pp `decode` op) so nothing downstream special-cases it.

Splits, in scikit-learn's order: `train` = first 1,500, `test` = last 297.
Pixel values 0..16 are scaled to uint8 with round(v * 255 / 16).
"""
import numpy as np
from big_vision.datasets import tf_import  # pylint: disable=unused-import
import tensorflow_datasets as tfds

from big_vision.datasets import core

NUM_TRAIN = 1500


def load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [1797, 8, 8, 1] in 0..255, labels int64 [1797])."""
  from sklearn import datasets as skd  # pylint: disable=g-import-not-at-top
  d = skd.load_digits()
  images = np.round(d.images * 255.0 / 16.0).astype(np.uint8)[..., None]
  return images, d.target.astype(np.int64)


class DigitsBuilder(tfds.core.GeneratorBasedBuilder):
  """Local-only builder: `_split_generators` reads scikit-learn, no download."""

  name = "digits"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "scikit-learn load_digits, PNG images."}

  # TFDS looks for a checksums file next to the builder's code, and on
  # Python >= 3.9 without the `importlib_resources` backport that lookup
  # crashes. There is nothing to download, hence nothing to checksum.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return None

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 1),
                                         encoding_format="png"),
            "label": tfds.features.ClassLabel(num_classes=10),
            "id": np.int64,
        }),
        supervised_keys=("image", "label"),
        homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
        # Keep records in scikit-learn order: 'train[:10]' are its first ten.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    images, labels = load_sklearn_digits()
    n = len(labels)
    return {
        "train": self._generate_examples(images, labels, range(NUM_TRAIN)),
        "test": self._generate_examples(images, labels, range(NUM_TRAIN, n)),
    }

  def _generate_examples(self, images, labels, indices):
    for i in indices:
      yield i, {"image": images[i], "label": int(labels[i]), "id": i}


core.register_embedded("digits", DigitsBuilder)
