"""`shapes_captions`: an embedded image-text dataset of rendered shapes.

Generated deterministically on first use (nothing downloaded), like
`digits`, so image-text training, zero-shot classification and retrieval run
offline and in tests. Each 32x32 PNG shows one shape (circle, square,
triangle) of one colour (red, green, blue, yellow, purple, orange) and size
(small, medium, large), shifted by up to MAX_SHIFT pixels from the centre,
on a plain background (black, white, gray), with some colour jitter and
anti-aliased edges. Each image has NUM_CAPTIONS different captions drawn
from `TEMPLATES`, some naming every attribute ("a small red triangle on a
gray background"), some only a few ("a red shape on a gray background",
"a triangle"), so that short zero-shot prompts are in the language the text
tower learns.

Splits: `train` (10,000 images) uses 12 of the 18 (colour, size)
combinations, with every shape and background; `test` (1,000 images) only
the 6 others (see `held_out_size`), so zero-shot accuracy on `test`
measures generalisation to unseen attribute combinations, not memorisation
(and the shape cannot be guessed from the other attributes: in training
every shape occurs with every colour, size and background).

What a small model learns from it, quickly: colour (and background, size)
within a few hundred steps, including for the held-out combinations; the
shape far more slowly (a tiny ViT with 8x8 patches needs thousands of
steps even with labels), so the demo's shape accuracy is well above chance
but not solved.

Features: `image`, `texts` (NUM_CAPTIONS strings), labels `shape`, `color`,
`size`, `background` (ClassLabels whose names are the caption words, so a
zero-shot evaluator can take its class names from the dataset), `id`.

`sentencepiece_model()` trains (once, under a file lock, into the embedded
data dir) a small BPE sentencepiece model on the caption language; the pp op
`tokenize(..., model="shapes_captions")` resolves to it.
"""
import contextlib
import hashlib
import io
import itertools
import os

import numpy as np
from big_vision.datasets import tf_import  # pylint: disable=unused-import
import tensorflow_datasets as tfds

from big_vision.datasets import core

SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (215, 35, 35), "green": (40, 170, 55), "blue": (40, 75, 225),
    "yellow": (235, 215, 40), "purple": (135, 55, 185),
    "orange": (245, 135, 25),
}
SIZES = {"small": (5.0, 6.5), "medium": (7.5, 9.5),
         "large": (10.5, 13.0)}  # Radius ranges, pixels.
BACKGROUNDS = {"black": (15, 15, 15), "white": (240, 240, 240),
               "gray": (125, 125, 125)}
TEMPLATES = (
    "a {size} {color} {shape} on a {background} background",
    "a {color} {shape} on {background}",
    "a picture of a {size} {color} {shape}",
    "a {shape}",
    "a {color} shape on a {background} background",
    "a {size} {shape} in {color}",
    "{color} {shape}, {size}, {background} background",
    "a {background} image with a {color} {shape}",
)
NUM_CAPTIONS = 5
MAX_SHIFT = 8.0
RES = 32
SPLIT_SIZES = {"train": 10000, "test": 1000}
_SUPERSAMPLE = 4


def held_out_size(color: str) -> str:
  """The size a colour never has in training: colour j in size j mod 3.

  Every colour, size, shape and background still occurs in training, and
  every shape with every colour, size and background, so the shape cannot
  be guessed from the other attributes; the test split holds only the six
  held-out (colour, size) pairs.
  """
  return list(SIZES)[list(COLORS).index(color) % len(SIZES)]


VOCAB_SIZE = 128  # An upper bound: the caption language has fewer pieces.


def combinations(split: str) -> list[tuple[str, str, str]]:
  """(shape, colour, size) triplets of a split."""
  test = split == "test"
  return [(s, c, z) for s, c, z in itertools.product(SHAPES, COLORS, SIZES)
          if (held_out_size(c) == z) == test]


def _polygon(shape, cx, cy, r):
  if shape == "square":
    h = r * 0.85
    return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h),
            (cx - h, cy + h)]
  if shape == "triangle":  # Equilateral, pointing up, centred on (cx, cy).
    return [(cx + r * np.cos(a), cy - r * np.sin(a))
            for a in np.pi / 2 + np.arange(3) * 2 * np.pi / 3]
  raise ValueError(shape)


def render(shape: str, color, background, radius: float, cx: float,
           cy: float, hw: tuple[int, int] = (RES, RES)) -> np.ndarray:
  """uint8 [h, w, 3] (default RES x RES); drawn at 4x and box-filtered
  (anti-aliasing)."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  s = _SUPERSAMPLE
  h, w = hw
  img = Image.new("RGB", (w * s, h * s), tuple(int(v) for v in background))
  draw = ImageDraw.Draw(img)
  fill = tuple(int(v) for v in color)
  if shape == "circle":
    draw.ellipse([(cx - radius) * s, (cy - radius) * s, (cx + radius) * s,
                  (cy + radius) * s], fill=fill)
  else:
    draw.polygon([(x * s, y * s) for x, y in _polygon(shape, cx, cy, radius)],
                 fill=fill)
  return np.asarray(img.resize((w, h), Image.BOX), np.uint8)


def generate(split: str):
  """Yields (id, example dict) of a split; a pure function of the split."""
  rng = np.random.RandomState({"train": 0, "test": 1}[split])
  triplets = combinations(split)
  for i in range(SPLIT_SIZES[split]):
    shape, color, size = triplets[rng.randint(len(triplets))]
    background = list(BACKGROUNDS)[rng.randint(len(BACKGROUNDS))]
    radius = rng.uniform(*SIZES[size])
    # Centred, shifted by up to MAX_SHIFT pixels (never off the image).
    room = max(0.0, min(MAX_SHIFT, RES / 2 - radius - 1))
    cx, cy = RES / 2 + rng.uniform(-room, room, size=2)
    jitter = lambda rgb, a: np.clip(np.asarray(rgb) + rng.randint(-a, a + 1, 3),
                                    0, 255)
    image = render(shape, jitter(COLORS[color], 20),
                   jitter(BACKGROUNDS[background], 10), radius, cx, cy)
    words = dict(shape=shape, color=color, size=size, background=background)
    templates = rng.permutation(len(TEMPLATES))[:NUM_CAPTIONS]
    texts = [TEMPLATES[t].format(**words) for t in templates]
    yield i, {"image": image, "texts": texts, **words, "id": i}


# `shapes_captions_flex`: the same shapes, colours, captions and splits, on
# canvases of varying aspect ratio (height, width), for NaFlex (SigLIP 2).
FLEX_SIZES = ((32, 32), (28, 36), (28, 44), (28, 56), (36, 28), (44, 28),
              (56, 28))


def generate_flex(split: str):
  """Yields (id, example) of `shapes_captions_flex`: as `generate` (same
  attribute and caption distribution, same held-out combinations), each
  image on a canvas drawn from FLEX_SIZES, the shape shifted within it.
  A pure function of the split (its own seeds: `generate` is unchanged)."""
  rng = np.random.RandomState({"train": 10, "test": 11}[split])
  triplets = combinations(split)
  for i in range(SPLIT_SIZES[split]):
    h, w = FLEX_SIZES[rng.randint(len(FLEX_SIZES))]
    shape, color, size = triplets[rng.randint(len(triplets))]
    background = list(BACKGROUNDS)[rng.randint(len(BACKGROUNDS))]
    radius = rng.uniform(*SIZES[size])
    room_x = max(0.0, w / 2 - radius - 1)
    room_y = max(0.0, min(MAX_SHIFT, h / 2 - radius - 1))
    cx = w / 2 + rng.uniform(-room_x, room_x)
    cy = h / 2 + rng.uniform(-room_y, room_y)
    jitter = lambda rgb, a: np.clip(np.asarray(rgb) + rng.randint(-a, a + 1, 3),
                                    0, 255)
    image = render(shape, jitter(COLORS[color], 20),
                   jitter(BACKGROUNDS[background], 10), radius, cx, cy,
                   hw=(h, w))
    words = dict(shape=shape, color=color, size=size, background=background)
    templates = rng.permutation(len(TEMPLATES))[:NUM_CAPTIONS]
    texts = [TEMPLATES[t].format(**words) for t in templates]
    yield i, {"image": image, "texts": texts, **words, "id": i}


def caption_language() -> list[str]:
  """Every caption any image can have (the tokenizer's training text)."""
  return [t.format(shape=s, color=c, size=z, background=b)
          for t in TEMPLATES for s in SHAPES for c in COLORS for z in SIZES
          for b in BACKGROUNDS]


class ShapesCaptionsBuilder(tfds.core.GeneratorBasedBuilder):
  """Local-only builder: renders the images, nothing to download."""

  name = "shapes_captions"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "32x32 shapes, 5 captions each, held-out "
                            "(colour, size) pairs in test."}

  # As digits: no checksums file to look for (there is nothing to download).
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return None

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(RES, RES, 3),
                                         encoding_format="png"),
            "texts": tfds.features.Sequence(tfds.features.Text(),
                                            length=NUM_CAPTIONS),
            "shape": tfds.features.ClassLabel(names=SHAPES),
            "color": tfds.features.ClassLabel(names=list(COLORS)),
            "size": tfds.features.ClassLabel(names=list(SIZES)),
            "background": tfds.features.ClassLabel(names=list(BACKGROUNDS)),
            "id": np.int64,
        }),
        supervised_keys=None,
        disable_shuffling=True,  # 'train[:10]' are the first ten generated.
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split) for split in SPLIT_SIZES}

  def _generate_examples(self, split):
    yield from generate(split)


core.register_embedded("shapes_captions", ShapesCaptionsBuilder)


class ShapesCaptionsFlexBuilder(ShapesCaptionsBuilder):
  """`shapes_captions` on canvases of varying aspect ratio (FLEX_SIZES)."""

  name = "shapes_captions_flex"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "shapes_captions on 28..56 px canvases of "
                            "aspect ratios 1:2 .. 2:1."}

  def _info(self):
    info = super()._info()
    features = dict(info.features)
    features["image"] = tfds.features.Image(shape=(None, None, 3),
                                            encoding_format="png")
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=tfds.features.FeaturesDict(features),
        supervised_keys=None, disable_shuffling=True)

  def _generate_examples(self, split):
    yield from generate_flex(split)


core.register_embedded("shapes_captions_flex", ShapesCaptionsFlexBuilder)


# ----------------------------------------------------------------------------
# The tokenizer of the caption language.
# ----------------------------------------------------------------------------
@contextlib.contextmanager
def _file_lock(path):
  import fcntl  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "a") as f:
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def train_sentencepiece(vocab_size: int = VOCAB_SIZE) -> bytes:
  """A BPE sentencepiece model proto of `caption_language()`.

  Ids follow the c4_en / T5 convention: pad 0, eos 1, unk 2, no bos. BPE
  (not unigram) because on such a small corpus it merges every caption word
  into one piece. Deterministic (one thread).
  """
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(caption_language()), model_writer=buf,
      vocab_size=vocab_size, hard_vocab_limit=False, model_type="bpe",
      character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      num_threads=1, minloglevel=2)
  return buf.getvalue()


def sentencepiece_model(data_dir: str | None = None) -> str:
  """Path of the caption tokenizer, trained and written on first use."""
  data_dir = data_dir or core.default_embedded_data_dir()
  # Named after what it is trained on: a changed caption language gets a
  # new file instead of a stale tokenizer.
  digest = hashlib.sha1("\n".join(caption_language()).encode()).hexdigest()
  path = os.path.join(data_dir, "shapes_captions_vocab",
                      f"bpe{VOCAB_SIZE}_{digest[:12]}.model")
  if os.path.exists(path):
    return path
  with _file_lock(path + ".lock"):
    if not os.path.exists(path):  # A concurrent process may have won.
      tmp = f"{path}.tmp{os.getpid()}"
      with open(tmp, "wb") as f:
        f.write(train_sentencepiece())
      os.replace(tmp, path)
  return path
