"""Text pp ops: sentencepiece tokenisation and caption cleanup.

  "choice(inkey='texts', outkey='text')"           (ops_general: one caption)
  "|strip_punctuation(key='text')|lower(key='text')"
  "|tokenize(64, model='/path/c4_en.model', eos='sticky', pad_value=1,"
  "          inkey='text', outkey='labels')"

Token ids go to "labels" by default: in big_vision the model's second input
(the text of an image-text pair) lives there, like class labels for
classifiers.

Tokenisation runs the python `sentencepiece` processor through
`tf.numpy_function` (sentencepiece's own TF op is not available in this
environment): one processor per model file, loaded once per process and
shared by every op that names it. The model is named by path (local or
gs://, e.g. the 32k c4_en model of LiT / SigLIP) or by a name registered in
`NAMED_MODELS` ("shapes_captions": the tokenizer trained on the fly for the
embedded demo data). A missing file is a ValueError naming it, raised when
the pp string is built.

Texts longer than `max_len` tokens are truncated (the documented behaviour,
as in LiT / SigLIP); with eos="sticky" the last kept token becomes eos, so
the model still sees where the text ends. Truncation is never silent: each
op logs a warning the first time it truncates, `truncation_counts()` reports
how many texts each model truncated in this process, and
`truncated_key="..."` writes a bool flag per text into the example.
"""
import collections
import functools
import importlib
import string
import threading

from absl import logging
import numpy as np
from big_vision.datasets.tf_import import tf

from big_vision.pp import utils
from big_vision.pp.registry import Registry

# Name -> "module:function" returning the path of a sentencepiece model.
NAMED_MODELS = {
    "shapes_captions":
        "big_vision.datasets.shapes_captions:sentencepiece_model",
}
EOS_MODES = ("none", "yes", "sticky")

# Ops that transform every string of their input tensor on its own: run on a
# vector of n texts, a pp string made only of them gives what n runs on the
# single texts give (the zero-shot evaluators tokenize their prompts so, in
# one call instead of one tf.data element per prompt).
PER_STRING_OPS = frozenset({"tokenize", "lower", "strip_punctuation"})

_truncated = collections.Counter()
_lock = threading.Lock()


def resolve_model(model: str) -> str:
  """A model name or path -> an existing file path; ValueError otherwise."""
  if not isinstance(model, str) or not model:
    raise ValueError(f"tokenize: model must be a file path or one of "
                     f"{sorted(NAMED_MODELS)}, got {model!r}.")
  if model in NAMED_MODELS:
    module, fn = NAMED_MODELS[model].split(":")
    return getattr(importlib.import_module(module), fn)()
  if not tf.io.gfile.exists(model):
    raise ValueError(
        f"tokenize: sentencepiece model file {model!r} does not exist. Pass "
        f"the path of a .model file (local or gs://) or one of the named "
        f"models: {', '.join(sorted(NAMED_MODELS))}.")
  return model


@functools.lru_cache(maxsize=None)
def get_tokenizer(model: str):
  """The sentencepiece processor of `model` (name or path), cached."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  path = resolve_model(model)
  with tf.io.gfile.GFile(path, "rb") as f:
    proto = f.read()
  sp = spm.SentencePieceProcessor()
  try:
    sp.LoadFromSerializedProto(proto)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"tokenize: {path!r} is not a sentencepiece model: "
                     f"{e}") from None
  return sp


def truncation_counts() -> dict[str, int]:
  """{model: number of texts truncated by tokenize ops in this process}."""
  with _lock:
    return dict(_truncated)


def encode(sp, texts, max_len: int, eos: str = "none", pad_value: int = 0):
  """Numpy reference of the op: (ids int32 [n, max_len], truncated bool [n]).

  eos="yes" appends eos (lost when the text is truncated); "sticky" appends
  it and, on truncation, overwrites the last kept token with it.
  """
  ids = np.full((len(texts), max_len), pad_value, np.int32)
  truncated = np.zeros((len(texts),), bool)
  for i, text in enumerate(texts):
    if isinstance(text, bytes):
      text = text.decode("utf-8")
    tokens = sp.EncodeAsIds(text)
    if eos != "none":
      tokens = tokens + [sp.eos_id()]
    if len(tokens) > max_len:
      truncated[i] = True
      tokens = tokens[:max_len]
      if eos == "sticky" and max_len:
        tokens[-1] = sp.eos_id()
    ids[i, :len(tokens)] = tokens
  return ids, truncated


@Registry.register("preprocess_ops.tokenize")
def get_tokenize(max_len: int, model: str, eos: str = "none",
                 inkey: str = "texts", outkey: str = "labels",
                 pad_value: int = 0, truncated_key: str | None = None):
  """Sentencepiece token ids of a string (or of every string of a tensor).

  Args:
    max_len: output length; shorter texts are padded with `pad_value`,
      longer ones truncated (see the module docstring).
    model: path of a sentencepiece .model file, or a name in NAMED_MODELS.
    eos: "none", "yes" (append eos) or "sticky" (append eos and keep it
      even when truncating). SigLIP uses "sticky" with pad_value=1 (the
      eos id), so the last token, which "last" pooling reads, is always eos.
    inkey: the string feature: a scalar gives [max_len], shape S gives
      S + [max_len] (e.g. several captions per image).
    outkey: where the int32 ids go.
    pad_value: id used for padding.
    truncated_key: if set, a bool tensor of shape S telling which texts were
      truncated is written there.
  """
  utils.check_choice(eos, EOS_MODES, "tokenize eos")
  if not isinstance(max_len, int) or max_len < 1:
    raise ValueError(f"tokenize: max_len must be a positive int, got "
                     f"{max_len!r}.")
  sp = get_tokenizer(model)
  if eos != "none" and sp.eos_id() < 0:
    raise ValueError(f"tokenize: eos={eos!r} but the model {model!r} has no "
                     "eos token.")
  warned = []

  def _encode(flat):
    ids, truncated = encode(sp, flat, max_len, eos, pad_value)
    if truncated.any():
      with _lock:
        _truncated[model] += int(truncated.sum())
      if not warned:
        warned.append(True)
        logging.warning(
            "tokenize(%d, model=%r): texts longer than %d tokens are "
            "truncated; e.g. %r.", max_len, model, max_len,
            flat[int(np.argmax(truncated))][:200])
    return ids, truncated

  def _tokenize(data):
    texts = tf.convert_to_tensor(data[inkey])
    if texts.dtype != tf.string:
      raise ValueError(f"tokenize: feature {inkey!r} must be a string tensor, "
                       f"got {texts.dtype.name}.")
    shape = tf.shape(texts)
    ids, truncated = tf.numpy_function(
        _encode, [tf.reshape(texts, [-1])], [tf.int32, tf.bool],
        stateful=False)
    static = texts.shape.as_list() if texts.shape.rank is not None else None
    ids = tf.reshape(ids, tf.concat([shape, [max_len]], 0))
    truncated = tf.reshape(truncated, shape)
    if static is not None:
      ids.set_shape(static + [max_len])
      truncated.set_shape(static)
    data[outkey] = ids
    if truncated_key:
      data[truncated_key] = truncated
    return data

  return _tokenize


@Registry.register("preprocess_ops.lower")
@utils.InKeyOutKey(indefault="texts")
def get_lower():
  """Lower-cases (UTF-8 aware) a string tensor."""
  return lambda s: tf.strings.lower(s, encoding="utf-8")


@Registry.register("preprocess_ops.strip_punctuation")
@utils.InKeyOutKey(indefault="texts")
def get_strip_punctuation():
  """Replaces ASCII punctuation by spaces, collapses and trims whitespace.

  "A cat, sitting (on a mat)!" -> "A cat sitting on a mat". Web alt-texts
  differ in punctuation far more than in meaning; removing it spends the
  text tower's tokens on words.
  """
  def _strip(s):
    s = tf.strings.regex_replace(s, r"[[:punct:]]", " ")
    s = tf.strings.regex_replace(s, r"\s+", " ")
    return tf.strings.strip(s)
  return _strip


@Registry.register("preprocess_ops.strfmt")
def get_strfmt(template: str, outkey: str = "text"):
  """Writes `template.format(**features)` as a string into `outkey`.

  "strfmt('a photo of {label_name}.')" -> data["text"]. Non-string features
  (numbers, vectors) are printed with `tf.strings.format` ("3", "[1 2]").
  Only plain "{name}" fields: format specs and conversions ("{x:.2f}",
  "{x!r}") are a ValueError.
  """
  parts = list(string.Formatter().parse(template))
  for _, field, spec, conversion in parts:
    if field is not None and (spec or conversion):
      raise ValueError(f"strfmt: only plain {{name}} fields are supported, "
                       f"got {{{field}{'!' + conversion if conversion else ''}"
                       f"{':' + spec if spec else ''}}} in {template!r}.")
    if field == "":
      raise ValueError(f"strfmt: positional field {{}} in {template!r}; name "
                       "the feature, e.g. {label}.")

  def _strfmt(data):
    pieces = []
    for literal, field, _, _ in parts:
      pieces.append(tf.constant(literal))
      if field is not None:
        if field not in data:
          raise KeyError(f"strfmt: template {template!r} names feature "
                         f"{field!r}; features are {sorted(data)}.")
        value = tf.convert_to_tensor(data[field])
        if value.dtype != tf.string:
          value = tf.strings.format("{}", value, summarize=-1)
        pieces.append(value)
    data[outkey] = tf.strings.join(pieces)
    return data

  return _strfmt


@Registry.register("preprocess_ops.coco_captions")
def get_coco_captions(outkey: str = "captions"):
  """COCO's nested captions -> a flat string vector in `outkey`.

  TFDS coco_captions stores `captions: {"id": [n], "text": [n]}`; this
  writes the [n] texts (the `flatten`ed key "captions/text" works too).
  """

  def _coco_captions(data):
    captions = data.get("captions")
    if isinstance(captions, dict) and "text" in captions:
      data[outkey] = captions["text"]
    elif "captions/text" in data:
      data[outkey] = data["captions/text"]
    else:
      raise KeyError("coco_captions reads data['captions']['text'] (TFDS "
                     f"coco_captions); features are {sorted(data)}.")
    return data

  return _coco_captions


# Where i21k_label_names reads its names by default: one line per class, in
# label order, comma-separated WordNet lemmas (the first one is used). The
# public list published with BiT.
I21K_NAMES_URL = "gs://bit_models/imagenet21k_wordnet_lemmas.txt"


def _read_names(names, op, default_url=None):
  """A tuple of names, or the path of a file with one name per line."""
  if isinstance(names, (list, tuple)):
    return tuple(str(n) for n in names)
  path = names or default_url
  try:
    with tf.io.gfile.GFile(path, "r") as f:
      lines = f.read().splitlines()
  except (tf.errors.OpError, OSError) as e:
    raise ValueError(
        f"{op}: cannot read the class names from {path} ({type(e).__name__})"
        f". Offline, download it elsewhere and pass names='/local/copy.txt' "
        f"(or a list of names).") from None
  while lines and not lines[-1].strip():
    lines.pop()
  return tuple(line.split(",")[0].strip() for line in lines)


def _names_op(names):
  table = tf.constant(names)
  return lambda label: tf.gather(table, tf.cast(label, tf.int64))


@Registry.register("preprocess_ops.clip_i1k_label_names")
@utils.InKeyOutKey(indefault="label", outdefault="labels")
def get_clip_i1k_label_names(names=None):
  """ImageNet-1k label ids -> class-name strings ("label" -> "labels").

  For LiT / CLIP-style zero-shot evaluation and training on i1k names. The
  names are this project's ImageNet-1k list (`evaluators.class_names`: the
  first WordNet lemma of each synset, duplicates disambiguated; 0 ->
  "tench", 1 -> "goldfish"); big_vision uses CLIP's hand-edited list, which
  differs in a few hundred names: pass `names=` (a list, or the path of a
  file with one name per line) to use that one.
  """
  if names is None:
    from big_vision.evaluators import class_names  # pylint: disable=g-import-not-at-top
    names = class_names.class_names("imagenet2012")
  else:
    names = _read_names(names, "clip_i1k_label_names")
  if len(names) != 1000:
    raise ValueError(f"clip_i1k_label_names: expected 1000 names, got "
                     f"{len(names)}.")
  return _names_op(names)


@Registry.register("preprocess_ops.i21k_label_names")
@utils.InKeyOutKey(indefault="label", outdefault="labels")
def get_i21k_label_names(names=None):
  """ImageNet-21k label ids -> class-name strings ("label" -> "labels").

  The names (21,843 classes, label order) are read from `names` (a list, or
  the path of a file with one class per line, first comma-separated lemma
  used), by default from I21K_NAMES_URL (0 -> "organism", 1 -> "benthos").
  Offline, that read fails with an error naming the URL.
  """
  return _names_op(_read_names(names, "i21k_label_names", I21K_NAMES_URL))
