"""Fine-tunes a copy of the current backbone on a small task: its accuracy.

A stronger (and costlier) probe of a representation than few-shot linear
regression: it measures what the usual next step, fine-tuning, would get.

  config.evals.ft = dict(
      type="finetune", log_steps=5000,
      train_data=dict(name="oxford_iiit_pet", split="train"),
      test_data=dict(name="oxford_iiit_pet", split="test"),
      pp_train="decode|inception_crop(224)|flip_lr|value_range(-1, 1)"
               "|onehot(37, key='label', key_result='labels')"
               "|keep('image', 'labels')",
      pp_eval="decode|resize(224)|value_range(-1, 1)"
              "|onehot(37, key='label', key_result='labels')"
              "|keep('image', 'labels')",
      num_classes=37, steps=500, batch_size=512, train_params="all",
      optimizer=dict(optax_name="big_vision.momentum_hp", lr=0.01))

How, and why this way:

* The evaluator only gets `predict_fn(params, image) -> (logits, out)`, not
  the model, so it cannot re-create the model's own head for another label
  set. It trains a NEW linear head (zero-initialised, as in transfer) on
  `out[representation_layer]` ("pre_logits": the pooled features every model
  here exposes), jointly with the backbone parameters chosen by
  `train_params`: "head" (a linear probe, with augmentation), "all", or a
  regex fully matching the '/'-joined names of the backbone parameters to
  train (e.g. "Transformer/encoderblock_11/.*|Transformer/encoder_norm/.*").
  Gradients are taken only with respect to those, so a frozen backbone costs
  no backward pass.
* `predict_fn` runs the model in inference mode (no dropout / stochastic
  depth), so the fine-tune does too; this keeps runs deterministic.
* The optimizer comes from `big_vision.optax.make` with the `optimizer` dict
  (the optimizer keys of a training config: optax_name, optax, lr, schedule,
  wd, grad_clip_norm, lr_mults, ...; defaults below), over the tree
  {"head": ..., "backbone": {name: param}}.
* The training state is never touched: trainable backbone parameters are
  COPIED to new device buffers before the (buffer-donating) fine-tune step
  updates them; frozen ones are read in place. Memory: the trainable copy and
  its optimizer state live next to the training state while this runs.
* Each run sees the same fine-tuning data in the same order (the stream is a
  function of `seed`), so numbers at different training steps are comparable.
* The head has a multiple of `head_lanes` (default 128) outputs; those past
  `num_classes` are masked out of the logits (and the one-hot labels padded
  with zeros), so they get zero probability and zero gradient, and their
  updates are zeroed, so they stay exactly 0. Tasks that differ only in
  their class count then share one compiled step and eval (VTAB-1k: 2
  compiles for its 19 tasks, not 19; a ViT-B fine-tune step takes about a
  minute to compile). TPUs pad a matrix to 128 lanes anyway. With
  element-wise optimizers (SGD, momentum, Adam) the numbers are those of an
  exact-width head; optimizers that mix entries of a matrix (Adafactor's
  factored moments, block-RMS clipping) see the wider matrix and give
  slightly different numbers: set head_lanes=1 for an exact-width head.

Metrics: `prec@1` and `loss` of the fine-tuned model on `test_data`, and
`train_loss` (the last fine-tuning step's).
"""
import collections
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from big_vision import losses
from big_vision import optax as bv_optax
from big_vision import sharding
from big_vision import utils
from big_vision.evaluators import common

HEAD_LANES = 128  # The default head_lanes.
# Compiled fine-tunes shared by every evaluator (all tasks of a suite) with
# the same backbone, data shapes and settings; the newest few are kept.
_COMPILED = collections.OrderedDict()
_COMPILED_KEEP = 4
_MASKED = -1e9  # The logit of a padded class: exp() is exactly 0 in float32.


def _real_classes(width: int, num_classes) -> jax.Array:
  """[width] bool: which head outputs are classes (the rest is padding)."""
  return jnp.arange(width) < num_classes


DEFAULT_OPTIMIZER = dict(
    optax_name="big_vision.momentum_hp", lr=0.01, wd=0.0,
    grad_clip_norm=1.0, schedule=dict(warmup_percent=0.1, decay_type="cosine"))


def trainable_names(params, train_params: str) -> list[str]:
  """The '/'-joined backbone parameter names that `train_params` trains.

  "head" -> none (only the new head trains), "all" -> every one, anything
  else is a regex that must fully match a name (and match at least one).
  """
  names = [n for n, _ in utils.tree_flatten_with_names(params)[0]]
  if train_params == "head":
    return []
  if train_params == "all":
    return names
  try:
    pattern = re.compile(train_params)
  except re.error as e:
    raise ValueError(f"finetune train_params={train_params!r} is neither "
                     f"'head', 'all' nor a valid regex: {e}") from e
  chosen = [n for n in names if pattern.fullmatch(n)]
  if not chosen:
    tops = sorted({n.split("/")[0] for n in names})
    raise ValueError(
        f"finetune train_params={train_params!r} fully matches no parameter "
        f"name. Use 'head', 'all' or a regex over '/'-joined names such as "
        f"{names[0]!r}; the top-level ones are: {', '.join(tops)}.")
  return chosen


class Evaluator:
  """Fine-tunes a copy of the params on `train_data`; scores `test_data`."""

  def __init__(self, predict_fn, *, mesh, train_data: Mapping[str, Any],
               test_data: Mapping[str, Any], pp_train: str, pp_eval: str,
               num_classes: int, steps: int = 100, batch_size: int = 512,
               eval_batch_size: int | None = None, train_params: str = "all",
               optimizer: Mapping[str, Any] | None = None,
               representation_layer: str = "pre_logits",
               loss_name: str = "softmax_xent", label_key: str = "labels",
               shuffle_buffer_size: int = 50_000, seed: int = 0,
               head_lanes: int = HEAD_LANES):
    if int(steps) < 1:
      raise ValueError(f"finetune steps must be >= 1, got {steps}.")
    self.predict_fn, self.mesh = predict_fn, mesh
    self.train_data, self.test_data = dict(train_data), dict(test_data)
    self.pp_train, self.pp_eval = pp_train, pp_eval
    self.num_classes, self.steps = int(num_classes), int(steps)
    self.batch_size = int(batch_size)
    self.eval_batch_size = int(eval_batch_size or batch_size)
    self.train_params = train_params
    self.layer, self.label_key = representation_layer, label_key
    self.shuffle_buffer_size, self.seed = shuffle_buffer_size, seed
    self.loss_fn = losses.get(loss_name)
    self.optimizer = {**DEFAULT_OPTIMIZER, **dict(optimizer or {})}
    if int(head_lanes) < 1:
      raise ValueError(f"finetune head_lanes must be >= 1, got {head_lanes}.")
    self.head_width = -(-self.num_classes // int(head_lanes)) * int(head_lanes)
    self._train_ds = None  # Built on first use: no data read at config time.
    self._pp_eval = None

  # --------------------------------------------------------------------------
  # Pieces.
  # --------------------------------------------------------------------------
  def _train_batches(self):
    from big_vision import input_pipeline  # pylint: disable=g-import-not-at-top
    if self._train_ds is None:
      self._train_ds, _ = input_pipeline.training(
          dict(data=self.train_data, batch_size=self.batch_size,
               pp=self._padding_labels(self.pp_train),
               shuffle_buffer_size=self.shuffle_buffer_size),
          seed=self.seed)
    batches = input_pipeline.start_global(
        input_pipeline.as_numpy(self._train_ds),
        sharding.data_sharding(self.mesh))
    return self._train_ds.element_spec, batches

  def _padding_labels(self, pp: str):
    """`pp`, then the one-hot labels padded with zeros to the head's width."""
    from big_vision.datasets.tf_import import tf  # pylint: disable=g-import-not-at-top
    from big_vision import input_pipeline  # pylint: disable=g-import-not-at-top
    pp_fn = input_pipeline.get_pp_fn(pp)
    pad = self.head_width - self.num_classes

    def padded(example):
      out = pp_fn(example)
      if self.label_key not in out:
        raise ValueError(
            f"finetune label_key={self.label_key!r} is not an output of its "
            f"pp {pp!r}; it has {sorted(out)}.")
      labels = out[self.label_key]
      if labels.shape.rank != 1 or labels.shape[0] != self.num_classes:
        raise ValueError(
            f"finetune expects one-hot {self.label_key!r} of num_classes="
            f"{self.num_classes} per example from its pp; got shape "
            f"{labels.shape.as_list()} from {pp!r}.")
      out[self.label_key] = tf.pad(labels, [[0, pad]])
      return out
    return padded

  def _logits(self, head, params, images, num_classes):
    _, out = self.predict_fn(params, images)
    feats = out[self.layer].astype(jnp.float32)
    feats = feats.reshape(feats.shape[0], -1)
    logits = feats @ head["kernel"] + head["bias"]
    return jnp.where(_real_classes(logits.shape[-1], num_classes), logits,
                     _MASKED)

  def _build(self, params, image_shape):
    """(initial head, tx, jitted step, jitted eval) for this params tree."""
    named, treedef = utils.tree_flatten_with_names(params)
    train_set = set(trainable_names(params, self.train_params))
    names = [n for n, _ in named]

    def merge(backbone, frozen):
      return jax.tree.unflatten(treedef, [
          backbone[n] if n in train_set else frozen[n] for n in names])

    outs = jax.eval_shape(
        lambda p, x: self.predict_fn(p, x)[1],
        params, jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32))
    if self.layer not in outs:
      raise ValueError(
          f"finetune representation_layer={self.layer!r} is not an output of "
          f"the model; it has {sorted(outs)}.")
    dim = int(np.prod(outs[self.layer].shape[1:]))
    head_shape = {"kernel": jax.ShapeDtypeStruct((dim, self.head_width),
                                                 jnp.float32),
                  "bias": jax.ShapeDtypeStruct((self.head_width,),
                                               jnp.float32)}
    shapes = {"head": head_shape,
              "backbone": {n: jax.ShapeDtypeStruct(l.shape, l.dtype)
                           for n, l in named if n in train_set}}
    tx, _ = bv_optax.make(self.optimizer, shapes,
                          sched_kw=dict(total_steps=self.steps,
                                        batch_size=self.batch_size))

    def loss(trainable, frozen, batch, num_classes):
      p = merge(trainable["backbone"], frozen)
      logits = self._logits(trainable["head"], p, batch["image"], num_classes)
      return self.loss_fn(logits, batch[self.label_key])

    def step(trainable, opt_state, frozen, batch, num_classes):
      value, grads = jax.value_and_grad(loss)(trainable, frozen, batch,
                                              num_classes)
      updates, opt_state = tx.update(grads, opt_state, trainable)
      # The padded classes get no update from any optimizer (their gradient
      # is 0; a factored one could still return 0 * inf there).
      real = _real_classes(self.head_width, num_classes)
      updates["head"] = jax.tree.map(lambda u: jnp.where(real, u, 0.0),
                                     updates["head"])
      trainable = jax.tree.map(jnp.add, trainable, updates)
      return trainable, opt_state, value

    def evaluate(trainable, frozen, batch, num_classes):
      p = merge(trainable["backbone"], frozen)
      logits = self._logits(trainable["head"], p, batch["image"], num_classes)
      labels = batch[self.label_key].astype(jnp.float32)
      mask = batch["_mask"].astype(jnp.float32)
      hit = jnp.take_along_axis(labels, jnp.argmax(logits, -1)[:, None],
                                axis=-1)[:, 0] > 0
      per_ex = self.loss_fn(logits, labels, reduction=False)
      return dict(top1=jnp.sum(hit * mask), loss=jnp.sum(per_ex * mask),
                  n=jnp.sum(mask))

    # Pinned shardings: the head and the optimizer's non-param entries
    # replicated, the backbone copy and its optimizer entries as the params.
    # The step then returns its state as it takes it; left to XLA, the
    # optimizer state came back differently and every task compiled its step
    # twice.
    replicated = sharding.replicated(self.mesh)
    train_shd = {"head": {"kernel": replicated, "bias": replicated},
                 "backbone": {n: l.sharding for n, l in named
                              if n in train_set}}
    # State entries shaped like their param (momenta) are sharded like it;
    # others (Adafactor's row/column statistics, counts) are replicated.
    opt_shd = optax.tree_map_params(
        tx, lambda v, shd, p: (v if isinstance(v, optax.MaskedNode) else
                               shd if v.shape == p.shape else replicated),
        jax.eval_shape(tx.init, shapes), train_shd, shapes,
        transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, optax.MaskedNode))
    return dict(train_set=train_set, head_shape=head_shape,
                init=jax.jit(tx.init, out_shardings=opt_shd),
                step=jax.jit(step, donate_argnums=(0, 1),
                             out_shardings=(train_shd, opt_shd, replicated)),
                evaluate=jax.jit(evaluate))

  # --------------------------------------------------------------------------
  # The evaluation.
  # --------------------------------------------------------------------------
  def run(self, train_state):
    replicated = sharding.replicated(self.mesh)
    params = jax.tree.map(  # Host (numpy) params: onto the devices.
        lambda l: l if isinstance(l, jax.Array) else jax.device_put(
            l, replicated), train_state["params"])
    spec, batches = self._train_batches()
    image_shape = tuple(spec["image"].shape[1:])
    if None in image_shape:
      raise ValueError(
          f"finetune pp_train yields images of unknown shape {image_shape}; "
          "add an op that fixes it (e.g. resize(224) or a crop).")
    # Everything the compiled functions depend on, except num_classes.
    key = (self.predict_fn, self.mesh, jax.tree.structure(params),
           tuple((l.shape, l.dtype, l.sharding)
                 for l in jax.tree.leaves(params)),
           image_shape, self.head_width, self.train_params,
           repr(sorted(self.optimizer.items())), self.steps, self.batch_size,
           self.layer, self.loss_fn, self.label_key)
    if key not in _COMPILED:
      _COMPILED[key] = self._build(params, image_shape)
      while len(_COMPILED) > _COMPILED_KEEP:
        _COMPILED.popitem(last=False)
    _COMPILED.move_to_end(key)
    b = _COMPILED[key]
    num_classes = jax.device_put(np.int32(self.num_classes), replicated)

    named, _ = utils.tree_flatten_with_names(params)
    frozen = {n: l for n, l in named if n not in b["train_set"]}
    trainable = {
        "head": jax.tree.map(
            lambda s: jax.device_put(np.zeros(s.shape, s.dtype), replicated),
            b["head_shape"]),
        # Fresh buffers: the step donates them, the train state keeps its own.
        "backbone": {n: jnp.copy(l) for n, l in named if n in b["train_set"]},
    }
    opt_state = b["init"](trainable)

    train_loss = None
    for _, batch in zip(range(self.steps), batches):
      trainable, opt_state, train_loss = b["step"](trainable, opt_state,
                                                   frozen, batch, num_classes)

    totals = None
    if self._pp_eval is None:  # One function object for every run: the
      # input pipeline reuses what it built for the same pp function.
      self._pp_eval = self._padding_labels(self.pp_eval)
    for batch in common.eval_batches(self.test_data, self._pp_eval,
                                     self.eval_batch_size, self.mesh):
      sums = b["evaluate"](trainable, frozen, batch, num_classes)
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.tree.map(lambda x: float(common.to_host(x)), totals)
    n = max(totals["n"], 1.0)
    yield "prec@1", totals["top1"] / n
    yield "loss", totals["loss"] / n
    yield "train_loss", float(common.to_host(train_loss))
