"""Synthetic training data generated on the accelerator (jax only, no tensorflow).

  config.input.data = dict(name="synthetic", image_shape=(224, 224, 3),
                           num_classes=1000)
  config.input.batch_size = 256                      # global, as for real data

Why: throughput benchmarks must measure the model, not the input pipeline, and
GPU benchmark machines have JAX but no tensorflow. `train.make_train_data`
routes `data.name == "synthetic"` here without touching `input_pipeline`, so
`python -m big_vision.train` and `tools/bench.py` run with tensorflow absent.

Each batch is a pure function of (seed, step): it is drawn with `jax.random`
from `fold_in(PRNGKey(seed), step)` by one jitted function whose outputs are
already sharded like real batches (`data_sharding`), so nothing crosses the
host-device boundary and a resumed run sees the same batches as an
uninterrupted one. With JAX's partitionable threefry (the default) every device
draws only its own shard.

Keys of `config.input.data` (besides `name`):
  image_shape: (height, width, channels) of "image"; default (224, 224, 3).
  image_dtype: "float32" (default) or "bfloat16"; values uniform in [-1, 1).
  num_classes: "labels" are one-hot float32 [batch, num_classes] (the
    classification losses' format), from uniform random classes.
  text_len, vocab_size: image-text instead: the text key holds int32 token
    ids [batch, text_len] uniform in [0, vocab_size), and there are no
    one-hot labels. `num_classes` and `text_len` are mutually exclusive.
  text_key: the batch key of the tokens; default "labels" (big_vision's
    image-text convention: the text tower reads batch["labels"]).
  num_examples: the nominal training-set size that `total_epochs` and the
    logged `epoch` are computed against; default 1,281,167 (ImageNet-1k train).
Every other key of `config.input` (pp, shuffle_buffer_size, ...) is ignored:
there is nothing to preprocess.
"""
import functools
import itertools
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np

IMAGENET_TRAIN_EXAMPLES = 1_281_167

_DEFAULTS = dict(name="synthetic", image_shape=(224, 224, 3),
                 image_dtype="float32", num_classes=None, text_len=None,
                 vocab_size=None, text_key="labels",
                 num_examples=IMAGENET_TRAIN_EXAMPLES)
_IMAGE_DTYPES = ("float32", "bfloat16")


def _error(msg):
  return ValueError(f"config.input.data (synthetic): {msg}")


def parse_spec(data_config) -> dict[str, Any]:
  """Validates `config.input.data` and fills in the defaults."""
  cfg = dict(data_config or {})
  unknown = sorted(set(cfg) - set(_DEFAULTS))
  if unknown:
    raise _error(f"unknown key(s) {unknown}; valid keys: "
                 f"{', '.join(sorted(_DEFAULTS))}.")
  spec = {**_DEFAULTS, **cfg}
  spec["image_shape"] = tuple(int(d) for d in spec["image_shape"])
  if len(spec["image_shape"]) != 3 or min(spec["image_shape"]) < 1:
    raise _error(f"image_shape={spec['image_shape']} must be a positive "
                 "(height, width, channels).")
  if str(spec["image_dtype"]) not in _IMAGE_DTYPES:
    raise _error(f"image_dtype={spec['image_dtype']!r}; valid: "
                 f"{', '.join(_IMAGE_DTYPES)}.")
  text = spec["text_len"] is not None or spec["vocab_size"] is not None
  if text:
    if spec["num_classes"] is not None:
      raise _error("set either num_classes (classification) or "
                   "text_len + vocab_size (image-text), not both.")
    if not (spec["text_len"] and spec["vocab_size"]):
      raise _error("image-text data needs both text_len and vocab_size > 0, "
                   f"got text_len={spec['text_len']}, "
                   f"vocab_size={spec['vocab_size']}.")
    if spec["text_key"] == "image":
      raise _error("text_key must not be 'image'.")
  elif not spec["num_classes"] or int(spec["num_classes"]) < 1:
    raise _error("needs num_classes (classification) or text_len + "
                 "vocab_size (image-text).")
  if int(spec["num_examples"]) < 1:
    raise _error(f"num_examples={spec['num_examples']} must be positive.")
  return spec


def batch_specs(spec: dict[str, Any], batch_size: int
                ) -> dict[str, tuple[tuple[int, ...], Any]]:
  """{key: (shape, numpy dtype)} of a batch of `batch_size` examples."""
  out = {"image": ((batch_size,) + spec["image_shape"],
                   np.dtype(jnp.dtype(spec["image_dtype"])))}
  if spec["text_len"] is not None:
    out[spec["text_key"]] = ((batch_size, int(spec["text_len"])),
                             np.dtype(np.int32))
  else:
    out["labels"] = ((batch_size, int(spec["num_classes"])),
                     np.dtype(np.float32))
  return out


def make_batch_fn(spec: dict[str, Any], batch_size: int, data_sharding,
                  seed: int = 0):
  """`step -> batch` (global arrays with `data_sharding`), jitted."""
  batch_at = _jitted_batch_fn(tuple(sorted(spec.items())), batch_size,
                              data_sharding)
  return lambda step: batch_at(np.uint32(seed), np.int32(step))


@functools.lru_cache(maxsize=16)
def _jitted_batch_fn(spec_items, batch_size, data_sharding):
  """One compilation per (spec, batch size, sharding); seed and step are
  traced, so resuming or re-seeding never recompiles."""
  spec = dict(spec_items)
  image_dtype = jnp.dtype(spec["image_dtype"])

  def batch_at(seed, step):
    rng = jax.random.fold_in(jax.random.PRNGKey(seed), step)
    rng_image, rng_label = jax.random.split(rng)
    image = jax.random.uniform(
        rng_image, (batch_size,) + spec["image_shape"], jnp.float32,
        minval=-1.0, maxval=1.0).astype(image_dtype)
    if spec["text_len"] is not None:
      tokens = jax.random.randint(
          rng_label, (batch_size, int(spec["text_len"])), 0,
          int(spec["vocab_size"]), jnp.int32)
      return {"image": image, spec["text_key"]: tokens}
    classes = jax.random.randint(rng_label, (batch_size,), 0,
                                 int(spec["num_classes"]))
    labels = jax.nn.one_hot(classes, int(spec["num_classes"]),
                            dtype=jnp.float32)
    return {"image": image, "labels": labels}

  return jax.jit(batch_at, out_shardings=data_sharding)


def make_train_data(input_config, data_sharding, *, seed: int = 0,
                    start_step: int = 0
                    ) -> tuple[Iterator[dict[str, jax.Array]], int, dict]:
  """(batches, nominal number of examples, per-process batch specs).

  The i-th batch yielded (i = 0, 1, ...) is the batch of training step
  `start_step + i + 1`, exactly the batch an uninterrupted run used there.
  `input_config` is `config.input` (`batch_size` is global).
  """
  spec = parse_spec(input_config.get("data"))
  batch_size = int(input_config.get("batch_size") or 0)
  processes = jax.process_count()
  if batch_size < 1 or batch_size % processes:
    raise ValueError(
        f"config.input.batch_size={batch_size} must be a positive multiple "
        f"of the {processes} processes.")
  batch_at = make_batch_fn(spec, batch_size, data_sharding, seed)

  def batches():
    for step in itertools.count(int(start_step) + 1):
      yield batch_at(step)

  specs = batch_specs(spec, batch_size // processes)
  return batches(), int(spec["num_examples"]), specs
