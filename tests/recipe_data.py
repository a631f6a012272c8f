"""Generated, prepared TFDS data for running the shipped recipes as written.

`prepare_all(data_dir)` writes, for every dataset the shipped configs name,
a *prepared* TFDS dataset directory (`data_dir/<name>/<version>/...`:
tfrecord shards + dataset_info.json) holding a few generated examples of the
dataset's real features. It is written by the dataset's own TFDS builder
class: a subclass (not registered, same `name`, same `_info()`, same version
and builder config) replaces only `_split_generators`, so the writer, the
feature encoding and the split metadata are TFDS's own. Reading then goes
through the project's real path (`tfds.builder(name, data_dir)` ->
`big_vision.datasets.tfds_source.TfdsSource`), nothing is mocked.

A dataset read through a builder config (`sun397/tfds`,
`eurosat/rgb`, `diabetic_retinopathy_detection/btgraham-300`, as the VTAB-1k
config names them) is keyed "name/config" in SPLITS and written by that
config of the real builder. Every VTAB-1k dataset's real builder
instantiates offline (none needs a stand-in); their `train[:800]`-style
absolute slices are overridden by the test case, not generated at size.

Datasets that are not in the TFDS catalogue get a stand-in builder of the
same name, registered with TFDS when this module is imported:

  imagenet21k  image + `label` (21,843 classes), one split "full"; the layout
               big_vision's i21k configs read (`full[51200:]` / `full[:51200]`).
  jft          image + `label` (29,593 classes), splits train / validation
               (train_vit_g.py:dataset=jft). JFT is not public.
  webli        image + `texts` (a list of captions), split train: the
               image-text data siglip_b16.py / lit_b16b.py name by default
               (WebLI is not public; users pass their own `data=`).

Generated examples: images are smooth random colour gradients (they compress
well, so even the fixed 256x256 of resisc45 are small); images of free size
are 40x32 (non-square, smaller than every recipe's crop: the pp resizes
up). Class labels cycle over the first `LABELS_USED` classes only, so that a
few-shot probe with 25 shots per class needs 25 * LABELS_USED examples,
not 25 * num_classes (the few-shot evaluator takes the number of classes
from the labels it sees). Texts are short lowercase captions. Everything is
seeded: the same data on every run.
"""
import os

import numpy as np
import tensorflow_datasets as tfds

# Labels used by the generated examples: 0 .. LABELS_USED - 1.
LABELS_USED = 3
FREE_IMAGE_HW = (40, 32)
WORDS = ("a", "photo", "of", "the", "small", "red", "dog", "cat", "car",
         "flower", "on", "grass", "blue", "sky", "house", "tree", "two",
         "people", "with", "large")

# name -> {split: number of examples}. Splits are the datasets' real split
# names; sizes are large enough that every slice the configs take is
# non-empty (e.g. "train[99%:]" needs >= 100 examples, uc_merced's
# "train[1000:]" more than 1000) and that every few-shot class has 25 shots.
SPLITS = {
    "imagenet2012": {"train": 200, "validation": 8},
    "imagenet_v2": {"test": 8},
    "imagenet2012_real": {"validation": 8},
    "imagenet21k": {"full": 24},
    "jft": {"train": 16, "validation": 8},
    "cifar10": {"train": 50, "test": 8},
    "cifar100": {"train": 75, "test": 8},
    "oxford_iiit_pet": {"train": 75, "test": 8},
    "oxford_flowers102": {"train": 8, "validation": 8, "test": 8},
    "caltech101": {"train": 75, "test": 8},
    "cars196": {"train": 75, "test": 8},
    "dtd": {"train": 75, "validation": 8, "test": 8},
    "uc_merced": {"train": 1008},
    "svhn_cropped": {"train": 50, "test": 8},
    "resisc45": {"train": 20},
    "coco_captions": {"val": 8},
    "webli": {"train": 16},
    # VTAB-1k (proj/vtab/vtab1k.py) datasets not listed above; a key
    # "name/config" is that builder config. The config's absolute slices
    # past these sizes are overridden by the test case (with the reasons).
    "sun397/tfds": {"train": 8, "validation": 8, "test": 8},
    "patch_camelyon": {"train": 8, "validation": 8, "test": 8},
    "eurosat/rgb": {"train": 16},
    "diabetic_retinopathy_detection/btgraham-300": {
        "train": 8, "validation": 8, "test": 8},
    "clevr": {"train": 16, "validation": 8},
    "dmlab": {"train": 8, "validation": 8, "test": 8},
    "kitti": {"train": 8, "validation": 8, "test": 8},
    "dsprites": {"train": 16},
    "smallnorb": {"train": 8, "test": 8},
}


def _image(rng, shape):
  h, w, c = shape
  h = h or FREE_IMAGE_HW[0]
  w = w or FREE_IMAGE_HW[1]
  c = c or 3
  corners = rng.uniform(0, 255, size=(2, 2, c))
  y = np.linspace(0, 1, h)[:, None, None]
  x = np.linspace(0, 1, w)[None, :, None]
  img = ((1 - y) * ((1 - x) * corners[0, 0] + x * corners[0, 1])
         + y * ((1 - x) * corners[1, 0] + x * corners[1, 1]))
  return img.astype(np.uint8)


def _text(rng, n_words=None):
  n = n_words or int(rng.integers(2, 7))
  return " ".join(rng.choice(WORDS, size=n))


def generate(feature, rng, index: int, path: str = ""):
  """One example of `feature` (a tfds feature), as the builder would yield."""
  f = tfds.features
  if isinstance(feature, f.FeaturesDict):
    return {k: generate(v, rng, index, f"{path}/{k}")
            for k, v in feature.items()}
  if isinstance(feature, f.Image):
    return _image(rng, feature.shape)
  if isinstance(feature, f.ClassLabel):
    return index % min(LABELS_USED, feature.num_classes)
  if isinstance(feature, f.Text):
    return _text(rng)
  if isinstance(feature, f.BBoxFeature):
    return f.BBox(ymin=0.1, xmin=0.2, ymax=0.8, xmax=0.9)
  if isinstance(feature, f.Sequence):
    if path.endswith("real_label"):
      # ImageNet-ReaL: some images have no label (the recipe skips them).
      n = index % 3
    else:
      n = 5  # coco_captions has >= 5 captions per image.
    return [generate(feature.feature, rng, index + i, path)
            for i in range(n)]
  if isinstance(feature, f.Tensor):
    dtype = np.dtype(feature.np_dtype)
    shape = tuple(d or 1 for d in feature.shape)
    if dtype == np.bool_:
      return np.zeros(shape, bool)
    if dtype.kind in "SUO":
      return _text(rng)
    return np.full(shape, index % 7, dtype)
  raise NotImplementedError(f"No generator for feature {path}: {feature!r}")


# ---------------------------------------------------------------------------
# Stand-ins for datasets outside the TFDS catalogue (registered on import).
# ---------------------------------------------------------------------------
class _StandIn(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  VERSION = tfds.core.Version("1.0.0")
  FEATURES = None

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict(self.FEATURES()),
        description=f"Generated stand-in for {self.name} (tests only).")

  def _split_generators(self, dl_manager):
    raise NotImplementedError(
        f"{self.name} is a test stand-in: only tests/recipe_data.py writes it.")

  def _generate_examples(self):
    raise NotImplementedError


class Imagenet21k(_StandIn):
  """ImageNet-21k (fall11) as big_vision's i21k configs read it."""
  FEATURES = staticmethod(lambda: dict(
      image=tfds.features.Image(), label=tfds.features.ClassLabel(
          num_classes=21843)))


class Jft(_StandIn):
  """JFT (not public): image + one of 29,593 labels."""
  FEATURES = staticmethod(lambda: dict(
      image=tfds.features.Image(), label=tfds.features.ClassLabel(
          num_classes=29593)))


class Webli(_StandIn):
  """WebLI (not public): image + a list of captions under `texts`."""
  FEATURES = staticmethod(lambda: dict(
      image=tfds.features.Image(),
      texts=tfds.features.Sequence(tfds.features.Text())))


STAND_INS = {c.name: c for c in (Imagenet21k, Jft, Webli)}


def _register_stand_ins():
  from tensorflow_datasets.core import registered  # pylint: disable=g-import-not-at-top
  for name, cls in STAND_INS.items():
    existing = registered._DATASET_REGISTRY.get(name)  # pylint: disable=protected-access
    if existing is None:
      registered._DATASET_REGISTRY[name] = cls  # pylint: disable=protected-access


_register_stand_ins()


def builder_cls(name: str):
  if name in STAND_INS:
    return STAND_INS[name]
  return tfds.builder_cls(name)


def _writer_cls(name: str, splits: dict, seed: int):
  """A subclass of the real builder that yields generated examples."""
  base = builder_cls(name.split("/")[0])

  def _split_generators(self, dl_manager):  # pylint: disable=unused-argument
    return {split: self._generate_examples(split=split, n=n)
            for split, n in splits.items()}

  def _generate_examples(self, split, n):
    rng = np.random.default_rng([seed, sum(map(ord, split))])
    features = self.info.features
    for i in range(n):
      yield f"{split}_{i}", generate(features, rng, i)

  return type(f"Generated_{base.name}", (base,), dict(
      name=base.name, _split_generators=_split_generators,
      _generate_examples=_generate_examples), skip_registration=True)


def prepare(name: str, data_dir: str, splits: dict | None = None,
            seed: int = 0):
  """Writes (once) the prepared generated dataset `name` under data_dir."""
  from tensorflow_datasets.core.utils import gcs_utils  # pylint: disable=g-import-not-at-top
  gcs_utils._is_gcs_disabled = True  # pylint: disable=protected-access  # Offline.
  cls = _writer_cls(name, splits or SPLITS[name], seed)
  config = name.partition("/")[2] or None  # "name/config"
  builder = cls(data_dir=data_dir, config=config)
  if not builder.is_prepared():
    builder.download_and_prepare(
        download_dir=os.path.join(data_dir, "downloads"),
        download_config=tfds.download.DownloadConfig(
            manual_dir=os.path.join(data_dir, "manual")))
  return builder


def prepare_all(data_dir: str, names=None):
  for name in names or SPLITS:
    prepare(name, data_dir)
  return data_dir
