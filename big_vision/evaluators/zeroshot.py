"""Zero-shot classification with an image-text model (CLIP / LiT / SigLIP).

Every class name is written into each prompt template ("a photo of a {}."),
the texts are embedded, and the normalised embeddings of a class's prompts
are averaged (and renormalised) into one class embedding. An image is
classified as the class whose embedding is most similar to its own. No
training on the dataset: this measures what the text tower has learnt to
say about the images.

  config.evals.zeroshot = dict(
      type="zeroshot", log_steps=1000, batch_size=256,
      pp_img="decode|resize(224)|value_range(-1, 1)",
      pp_txt="tokenize(64, model='/path/c4_en.model', eos='sticky', "
             "pad_value=1)",
      prompts="photos",
      datasets={
          "imagenet": dict(data=dict(name="imagenet2012", split="validation"),
                           class_names="imagenet2012"),
          "pets": dict(data=dict(name="oxford_iiit_pet", split="test"),
                       class_names="oxford_iiit_pet", prompts="pets"),
      })

Yields "<dataset>/top1" (and "<dataset>/top5" with more than 5 classes).
Each entry of `datasets` may override the evaluator-wide `pp_img`,
`prompts`, `class_names` and `label_key`. Without `datasets`, `data` names
the one dataset (metrics "<data.name>/top1").

class_names: a list, a name in `class_names.CLASS_NAMES`, or None to take
the names of the dataset's TFDS ClassLabel feature `label_key`. When the
dataset declares its number of classes and the names do not match it, the
evaluator refuses to build (a silent mismatch would shift every label).
prompts: a list of templates with one "{}", or a name in
`class_names.PROMPTS`. pp_txt reads the string feature "texts" and must
write token ids to "labels" (the tokenize op's defaults).

`predict_fn(params, image, text)` -> (zimg, ztxt, out) with either input
None; embeddings are L2-normalised by the model.
"""
import functools
import hashlib
from typing import Any, Mapping, Sequence
import weakref

import jax
import jax.numpy as jnp
import numpy as np

from big_vision import utils
from big_vision.evaluators import class_names as class_names_lib
from big_vision.evaluators import common

_OVERRIDABLE = ("data", "pp_img", "prompts", "class_names", "label_key")


def tokenize_texts(texts: Sequence[str], pp_txt: str) -> np.ndarray:
  """Runs `pp_txt` on {"texts": text} for each text -> int32 [n, L] "labels".

  Shared by the process: zero-shot evaluators that differ only in their
  image side (e.g. SigLIP 2's one per sequence length) tokenize the same
  class-name prompts (12,000 texts for ImageNet with "photos") with the
  same pp_txt, so the result is computed once and returned read-only.
  """
  return _tokenize_once(tuple(texts), pp_txt)


# Texts per call of a per-string pp_txt (bounds its string tensors).
_TEXTS_PER_CALL = 4096


@functools.lru_cache(maxsize=16)
def _tokenize_once(texts: tuple[str, ...], pp_txt: str) -> np.ndarray:
  """`tokenize_texts`, computed. A pp_txt made only of ops_text's
  PER_STRING_OPS (the usual "tokenize(...)", with lower/strip_punctuation)
  runs on vectors of texts: one tokenizer call per 4,096 texts instead of a
  tf.data element and a tf.numpy_function call per text (ImageNet's 12,000
  "photos" prompts on 2 CPU cores: 0.06 s instead of 2.65 s, or 2.3 s
  instead of 4.6 s as a process's first use of TF). Any other pp_txt runs
  text by text; both give the same array."""
  from big_vision.datasets.tf_import import tf  # pylint: disable=g-import-not-at-top
  from big_vision.pp import builder  # pylint: disable=g-import-not-at-top
  from big_vision.pp import ops_text  # pylint: disable=g-import-not-at-top
  from big_vision.datasets import core  # pylint: disable=g-import-not-at-top
  pp = builder.get_preprocess_fn(pp_txt)
  if set(builder.op_names(pp_txt)) <= ops_text.PER_STRING_OPS:
    parts = [np.asarray(pp({"texts": tf.constant(
        list(texts[i:i + _TEXTS_PER_CALL]), tf.string)})["labels"])
             for i in range(0, len(texts), _TEXTS_PER_CALL)]
  else:
    ds = tf.data.Dataset.from_tensor_slices({"texts": list(texts)})
    ds = core.map_traced_plainly(
        ds, lambda ex: {"labels": pp(ex)["labels"]}).batch(1024)
    parts = [b["labels"] for b in ds.as_numpy_iterator()]
  out = np.concatenate(parts) if parts else np.zeros((0, 1), np.int32)
  if out.ndim != 2:
    raise ValueError(f"pp_txt {pp_txt!r} must turn one text into a [length] "
                     f"token vector, got shape {out.shape[1:]}.")
  out.setflags(write=False)
  return out


def embed_texts(embed_fn, params, tokens: np.ndarray, batch_size: int,
                mesh) -> np.ndarray:
  """Text embeddings of `tokens` [n, L], computed in sharded batches."""
  from big_vision import sharding  # pylint: disable=g-import-not-at-top
  shards = sharding.num_data_shards(mesh)
  batch_size = max(shards, batch_size - batch_size % shards)
  n = len(tokens)
  padded = -(-n // batch_size) * batch_size
  tokens = np.concatenate(
      [tokens, np.zeros((padded - n,) + tokens.shape[1:], tokens.dtype)])
  data_sharding = sharding.data_sharding(mesh)
  out = []
  for i in range(0, padded, batch_size):
    chunk = jax.device_put(tokens[i:i + batch_size], data_sharding)
    out.append(common.to_host(embed_fn(params, chunk)))
  return np.concatenate(out)[:n]


def dataset_label_info(data: Mapping, label_key: str):
  """(number of classes or None, names or None) of a dataset's label feature.

  Known for TFDS (and embedded) datasets whose `label_key` is a ClassLabel;
  other sources cannot tell, and then the labels are checked while running.
  """
  from big_vision import datasets  # pylint: disable=g-import-not-at-top
  source = datasets.get(**dict(data))
  builder = getattr(source, "builder", None)
  if builder is None:
    return None, None
  features = builder.info.features
  if label_key not in features:
    raise ValueError(
        f"zeroshot: dataset {dict(data).get('name')!r} has no feature "
        f"{label_key!r} (label_key); it has {sorted(features.keys())}.")
  feature = features[label_key]
  num_classes = getattr(feature, "num_classes", None)
  names = getattr(feature, "names", None) if num_classes else None
  return num_classes, (list(names) if names else None)


class _Task:
  """One dataset of the evaluator: its class names, prompts and tokens."""

  def __init__(self, name, cfg, pp_txt, where):
    self.name = name
    self.data = dict(cfg["data"])
    self.pp_img = cfg["pp_img"]
    self.label_key = cfg["label_key"]
    num_classes, dataset_names = dataset_label_info(self.data, self.label_key)
    names = cfg["class_names"]
    if names is None:
      if dataset_names is None:
        raise ValueError(
            f"{where}: class_names=None, but the label feature "
            f"{self.label_key!r} of {self.data} has no names; give a list or "
            f"one of {sorted(class_names_lib.CLASS_NAMES)}.")
      names, source = dataset_names, f"the names of feature {self.label_key!r}"
    elif isinstance(names, str):
      names, source = class_names_lib.class_names(names), repr(names)
    else:
      names, source = list(names), "the given list"
    if num_classes is not None and len(names) != num_classes:
      raise ValueError(
          f"{where}: {len(names)} class names ({source}) but the label "
          f"{self.label_key!r} of dataset {self.data.get('name')!r} has "
          f"{num_classes} classes. Give class names for exactly its "
          "classes, in label order.")
    self.class_names = tuple(names)
    prompts = cfg["prompts"]
    if isinstance(prompts, str):
      prompts = class_names_lib.prompts(prompts)
    prompts = tuple(prompts)
    bad = [p for p in prompts if p.count("{}") != 1]
    if not prompts or bad:
      raise ValueError(f"{where}: every prompt needs exactly one '{{}}' for "
                       f"the class name; got {bad or 'no prompts'}.")
    self.prompts = prompts
    texts = [p.format(c) for c in self.class_names for p in prompts]
    self.tokens = tokenize_texts(texts, pp_txt)
    # What the class embeddings depend on besides the model.
    self.tokens_key = (len(self.class_names), len(prompts), self.tokens.shape,
                       hashlib.sha256(self.tokens.tobytes()).hexdigest())


class _EmbeddingsOfLatestParams:
  """Results computed from one params tree, dropped when the params change.

  The params are recognised by the identity (`is`) of their leaves, held
  by weak references: evaluators of one eval round get the same arrays, the
  next round gets the next step's, and the cache keeps no params alive
  (after the run, or in tools/eval_only.py). jax arrays are immutable; a
  tree with other leaves (numpy arrays could change in place) is not cached.
  """

  def __init__(self):
    self._refs, self._values = (), {}

  def _same(self, leaves) -> bool:
    return len(leaves) == len(self._refs) and all(
        r() is a for r, a in zip(self._refs, leaves))

  def get(self, params, key, compute):
    leaves = jax.tree.leaves(params)
    if not all(isinstance(a, jax.Array) for a in leaves):
      return compute()
    if not self._same(leaves):
      self._refs, self._values = tuple(weakref.ref(a) for a in leaves), {}
    if key not in self._values:
      self._values[key] = compute()
    return self._values[key]


_SHARED_CLASS_EMBEDDINGS = _EmbeddingsOfLatestParams()


class Evaluator:
  """Zero-shot top-1 (and top-5) accuracy on one or more datasets."""

  def __init__(self, predict_fn, *, mesh, pp_txt: str, datasets=None,
               data=None, pp_img: str | None = None, prompts: Any = "photo",
               class_names: Any = None, label_key: str = "label",
               batch_size: int = 256, cache_final: bool = True):
    self.mesh, self.batch_size, self.cache_final = mesh, batch_size, cache_final
    defaults = dict(data=data, pp_img=pp_img, prompts=prompts,
                    class_names=class_names, label_key=label_key)
    if datasets is None:
      if data is None:
        raise ValueError("zeroshot: give `datasets` (name -> overrides) or "
                         "`data` (one dataset).")
      datasets = {dict(data)["name"]: {}}
    self.tasks = []
    for name, overrides in dict(datasets).items():
      overrides = dict(overrides or {})
      for k in overrides:
        if k not in _OVERRIDABLE:
          raise utils.unknown_name_error("zeroshot dataset key", k,
                                         _OVERRIDABLE,
                                         where=f"datasets[{name!r}]")
      cfg = {**defaults, **overrides}
      for k in ("data", "pp_img"):
        if cfg[k] is None:
          raise ValueError(f"zeroshot: datasets[{name!r}] has no {k!r}.")
      self.tasks.append(_Task(name, cfg, pp_txt,
                              where=f"zeroshot datasets[{name!r}]"))

    # Shared with every evaluator of the run that embeds images / texts.
    self.embed_text = common.compiled_predict(predict_fn, "ztxt")
    self.embed_image = common.compiled_predict(predict_fn, "zimg")

  def class_embeddings(self, params, task: _Task) -> np.ndarray:
    """[num_classes, D]: the renormalised mean of each class's prompts.

    Shared by the zero-shot evaluators of a run (_SHARED_CLASS_EMBEDDINGS):
    SigLIP 2's ImageNet evaluators at 256, 576 and 1024 patches embed the
    same 1000 classes x prompts with the same text tower.
    """
    key = (self.embed_text, task.tokens_key, self.batch_size, self.mesh)
    return _SHARED_CLASS_EMBEDDINGS.get(params, key, lambda: self._embed(
        params, task))

  def _embed(self, params, task: _Task) -> np.ndarray:
    z = embed_texts(self.embed_text, params, task.tokens, self.batch_size,
                    self.mesh)
    z = z.reshape(len(task.class_names), len(task.prompts), -1).mean(1)
    return z / (np.linalg.norm(z, axis=-1, keepdims=True) + 1e-8)

  def run(self, train_state):
    params = train_state["params"]
    for task in self.tasks:
      class_emb = jnp.asarray(self.class_embeddings(params, task))
      pp = f"{task.pp_img}|copy({task.label_key!r}, 'label')" if (
          task.label_key != "label") else task.pp_img
      pp += "|keep('image', 'label')"
      totals = None
      for batch in common.eval_batches(task.data, pp, self.batch_size,
                                       self.mesh, self.cache_final):
        zimg = self.embed_image(params, batch["image"])
        sums = _batch_sums(zimg, batch["label"], batch["_mask"], class_emb)
        sums = jax.tree.map(common.to_host, sums)  # Summed on the host.
        totals = sums if totals is None else jax.tree.map(np.add, totals,
                                                          sums)
      totals = {k: float(common.to_host(v)) for k, v in totals.items()}
      if totals["out_of_range"]:
        raise ValueError(
            f"zeroshot {task.name!r}: {int(totals['out_of_range'])} labels "
            f"{task.label_key!r} are outside [0, {len(task.class_names)}), "
            "the range of the class names.")
      n = max(totals["n"], 1)
      yield f"{task.name}/top1", totals["top1"] / n
      if len(task.class_names) > 5:
        yield f"{task.name}/top5", totals["top5"] / n


@jax.jit
def _batch_sums(zimg, labels, mask, class_emb):
  """Top-1 / top-5 hits of a batch's image embeddings against the classes."""
  logits = zimg @ class_emb.T
  labels = labels.astype(jnp.int32)
  num_classes = class_emb.shape[0]
  topk = jax.lax.top_k(logits, min(5, num_classes))[1]
  hits = topk == labels[:, None]
  mask = mask.astype(jnp.float32)
  out_of_range = (labels < 0) | (labels >= num_classes)
  return dict(top1=jnp.sum(hits[:, 0] * mask),
              top5=jnp.sum(hits.any(-1) * mask), n=jnp.sum(mask),
              out_of_range=jnp.sum(out_of_range * mask))
