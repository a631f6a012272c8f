"""Objectives: how a batch becomes a scalar loss. Registry by `config.loss`.

An `Objective` names the batch keys the model takes (in order, for
`model.init` and `model.apply`) and a loss function run inside the jitted
train step. Classification losses come from `big_vision.losses`; image-text
objectives (SigLIP, CLIP) register here too, so there is one trainer.
jax only: no tensorflow.
"""
import dataclasses
import functools
import inspect
import os
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from big_vision import batch_aug
from big_vision import losses
from big_vision import self_distill
from big_vision import utils


class Objective(NamedTuple):
  """What a loss needs: the batch keys fed to the model, and the loss itself.

  `model_inputs` are passed positionally to `model.init` / `model.apply`, in
  this order; `loss(params, batch, rng) -> scalar` runs inside the jitted step.
  """
  model_inputs: tuple[str, ...]
  loss: Callable[[Any, dict, jax.Array], jax.Array]
  # Batch-level augmentation (mixup, ...): (global batch, rng) -> batch. The
  # step applies it once per global batch, before the accum_steps split, so
  # accumulation equals the large batch.
  prepare: Callable[[dict, jax.Array], dict] | None = None
  # True: `loss` returns (scalar, {name: scalar}); the step logs the dict
  # (e.g. each term of a "combined" objective) beside `training_loss`.
  has_aux: bool = False
  # A train-state entry the objective keeps beside the params (SigLIP 2's
  # EMA teacher); with it, the step calls `loss(params, batch, rng, ctx)`.
  extra: "ExtraState | None" = None


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=("state", "step"), meta_fields=("total_steps",))
@dataclasses.dataclass(frozen=True)
class StepContext:
  """What the step hands the loss of an objective with `extra` state (a
  pytree whose `total_steps` stays a static python int under jit)."""
  state: Any       # The state's entry `extra.name` (not differentiated).
  step: jax.Array  # The update's 0-based index (int32 scalar).
  total_steps: int


class ExtraState(NamedTuple):
  """A train-state entry owned by an objective: checkpointed with the state
  (a resume restores it), updated inside the jitted step after the
  optimizer, never differentiated.

  `init(params) -> tree` (at init, from the fresh params);
  `update(entry, new_params, step, stats, total_steps) -> entry`, where
  `stats` is what the loss returned under `aux[STATE_STATS]` (averaged over
  micro-batches); `shardings(params shardings, replicated) -> tree`.
  """
  name: str
  init: Callable[[Any], Any]
  update: Callable[..., Any]
  shardings: Callable[[Any, Any], Any]


# Key of a loss's aux dict holding statistics for `ExtraState.update` (not
# logged).
STATE_STATS = "extra_state_stats"


# One lambda per batch, folded to >= 0.5 (see batch_aug.mixup).
mixup = batch_aug.mixup


def classification_objective(config, model, loss_name) -> Objective:
  """Image -> logits, against (multi-)hot `labels`.

  Batch-level augmentation, drawn once per global batch by the step
  (`Objective.prepare`): `config.mixup = dict(p=..., cutmix_alpha=...,
  switch_prob=0.5)` mixes (mixup, Beta(p, p)) or pastes a box (CutMix,
  Beta(alpha, alpha)), one of the two per batch as in timm when both are
  on; `config.label_smoothing = eps` smooths the labels to
  (1 - eps) * y + eps / num_classes first.
  """
  loss_fn = losses.get(loss_name)
  sizes = flexi_patch_sizes(config)
  mix = dict(config.get("mixup") or {})
  mixup_p = float(mix.get("p") or 0.0)
  cutmix_alpha = float(mix.get("cutmix_alpha") or 0.0)
  switch_prob = float(mix.get("switch_prob", 0.5))
  eps = float(config.get("label_smoothing") or 0.0)

  def prepare(batch, rng):
    labels = batch["labels"].astype(jnp.float32)
    if eps:
      labels = batch_aug.smooth_labels(labels, eps)
    if sizes:
      rng, rng_patch = jax.random.split(rng)
    images, labels = batch_aug.mix_or_cut(
        rng, batch["image"], labels, mixup_p=mixup_p,
        cutmix_alpha=cutmix_alpha, switch_prob=switch_prob)
    batch = {**batch, "image": images, "labels": labels}
    if sizes:  # One patch size per global batch, as a per-example column
      # so that the accum_steps split hands every micro-batch the same one.
      idx = jax.random.randint(rng_patch, (), 0, len(sizes))
      batch[FLEXI_KEY] = jnp.full(images.shape[:1], idx, jnp.int32)
    return batch

  def loss_at(patch_size, params, batch, rng):
    kw = {} if patch_size is None else {"patch_size": patch_size}
    logits, _ = model.apply({"params": params}, batch["image"], train=True,
                            rngs={"dropout": rng}, **kw)
    return loss_fn(logits, batch["labels"])

  def loss(params, batch, rng):
    if not sizes:
      return loss_at(None, params, batch, rng)
    # One compiled step holds a branch per patch size; only the drawn one
    # runs (a conditional), so a step costs what its patch size costs.
    branches = [functools.partial(loss_at, p) for p in sizes]
    return jax.lax.switch(batch[FLEXI_KEY][0], branches, params, batch, rng)
  active = mixup_p or cutmix_alpha or eps or sizes
  return Objective(("image",), loss, prepare if active else None)


# The batch key carrying the FlexiViT patch-size index drawn by `prepare`.
FLEXI_KEY = "flexi_patch_idx"


def flexi_patch_sizes(config) -> tuple[int, ...]:
  """`config.flexivit = dict(patch_sizes=(8, 10, ..., 48))`: the patch sizes
  a FlexiViT (vit with flexi_base_patch) is trained at, one drawn uniformly
  per step (Beyer et al. 2023). Empty when not set."""
  cfg = dict(config.get("flexivit") or {})
  for k in cfg:
    if k != "patch_sizes":
      raise utils.unknown_name_error("config.flexivit key", k,
                                     ("patch_sizes",))
  sizes = tuple(int(p) for p in cfg.get("patch_sizes") or ())
  if cfg and not sizes:
    raise ValueError("config.flexivit.patch_sizes must list patch sizes.")
  if sizes and not dict(config.get("model") or {}).get("flexi_base_patch"):
    raise ValueError("config.flexivit needs a FlexiViT model: set "
                     "config.model.flexi_base_patch (model_name='vit').")
  return sizes


def _embed_pair(model, params, batch, rng):
  """(zimg, ztxt, out) of a two-tower model; text tokens live in "labels"."""
  return model.apply({"params": params}, batch["image"], batch["labels"],
                     train=True, rngs={"dropout": rng})


def sigmoid_contrastive_objective(config, model, loss_name,
                                  mesh=None) -> Objective:
  """SigLIP: pairwise sigmoid loss over the global batch.

  When the batch is split over several devices (and `config.chunked_loss`,
  default True), the ring-chunked `losses.sigmoid_contrastive_loss_sharded`
  is used: the same number as the full-matrix loss, without ever building
  the global B x B matrix. A model without a bias parameter uses b = 0.
  """
  del loss_name
  term = _sigmoid_term(config, mesh)

  def loss(params, batch, rng):
    zimg, ztxt, out = _embed_pair(model, params, batch, rng)
    return term(zimg, ztxt, out, batch)
  return Objective(("image", "labels"), loss)


def _sigmoid_term(config, mesh=None):
  """(zimg, ztxt, out, batch) -> the SigLIP loss (see above)."""
  axes = None
  if mesh is not None and config.get("chunked_loss", True):
    from big_vision import sharding  # pylint: disable=g-import-not-at-top
    if sharding.num_data_shards(mesh) > 1:
      axes = sharding.data_axes(mesh)

  def term(zimg, ztxt, out, batch):
    del batch
    b = out.get("b", jnp.zeros((), jnp.float32))
    if axes is not None:
      return losses.sigmoid_contrastive_loss_sharded(
          zimg, ztxt, out["t"], b, mesh, axis_name=axes)
    return losses.sigmoid_contrastive_loss(zimg, ztxt, out["t"], b)
  return term


# ----------------------------------------------------------------------------
# Captioning (CapPa / LocCa) and objectives combined with weights (SigLIP 2).
# ----------------------------------------------------------------------------
def caption_weights(tokens, eos_id: int = 1):
  """1.0 for the positions a decoder is trained on: every token up to and
  including the first eos; 0.0 after it (padding: the shapes / SigLIP
  tokenisation pads with the eos id, `pad_value=1`)."""
  is_eos = (tokens == eos_id).astype(jnp.int32)
  eos_before = jnp.cumsum(is_eos, axis=1) - is_eos  # eos strictly earlier.
  return (eos_before == 0).astype(jnp.float32)


def captioning_loss(logits, tokens, eos_id: int = 1):
  """Next-token cross-entropy, averaged over the trained positions of the
  batch (`caption_weights`): logits [b, l, vocab] predict tokens [b, l]."""
  w = caption_weights(tokens, eos_id)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32),
                             axis=-1)[..., 0]
  return jnp.sum(nll * w) / jnp.maximum(jnp.sum(w), 1.0)


def _captioning_term(config, mesh=None):
  del mesh
  eos_id = int(config.get("caption_eos_id", 1))

  def term(zimg, ztxt, out, batch):
    del zimg, ztxt
    if "dec/logits" not in out:
      raise ValueError("The captioning objective needs a decoder: set "
                       "config.model.decoder = dict(...) (two_towers).")
    return captioning_loss(out["dec/logits"], batch["labels"], eos_id)
  return term


# Terms of `config.loss = "combined"`: (config, mesh) -> term(zimg, ztxt,
# out, batch) -> scalar, all computed from ONE forward pass of the model.
COMBINED_TERMS = utils.Registry("objective", where="config.objectives",
                                entries={
                                    "sigmoid_contrastive": _sigmoid_term,
                                    "captioning": _captioning_term,
                                })


def combined_objective(config, model, loss_name, mesh=None) -> Objective:
  """Several image-text objectives in one step, weighted (SigLIP 2):

    config.loss = "combined"
    config.objectives = dict(sigmoid_contrastive=1.0, captioning=1.0)

  One forward pass of the two-tower model (with its decoder when
  "captioning" is on: it predicts the training caption `labels`) feeds every
  term; the loss is sum_k w_k * term_k, and each term is logged as
  `loss/<name>` (unweighted) beside `training_loss`.

  SigLIP 2's late-training terms `local_to_global` and `masked_prediction`
  (big_vision/self_distill.py; settings in `config.self_distill`) join the
  same sum: they run their own passes of the image tower and of an EMA
  teacher kept in the train state (`Objective.extra`), and are exactly 0
  before their start step.
  """
  del loss_name
  weights = {k: float(v) for k, v in dict(config.get("objectives")
                                          or {}).items()}
  if not weights:
    names = COMBINED_TERMS.names() + list(self_distill.TERMS)
    raise ValueError("config.loss='combined' needs config.objectives = "
                     "dict(<objective>=<weight>, ...); objectives: "
                     f"{', '.join(names)}.")
  terms = {}
  for name in weights:
    if name not in self_distill.TERMS:
      terms[name] = COMBINED_TERMS.lookup(
          name, extra_names=self_distill.TERMS)(config, mesh)
  distill = self_distill.make(config, model, weights)
  decode = "captioning" in weights

  def loss(params, batch, rng, ctx: StepContext | None = None):
    kw = {"decoder_text": batch["labels"]} if decode else {}
    zimg, ztxt, out = model.apply({"params": params}, batch["image"],
                                  batch["labels"], train=True,
                                  rngs={"dropout": rng}, **kw)
    parts = {name: term(zimg, ztxt, out, batch)
             for name, term in terms.items()}
    stats = None
    if distill is not None:
      if ctx is None:
        raise ValueError("The self-distillation terms need the step's "
                         "context (teacher, step): call loss(..., ctx).")
      more, stats = distill.terms(params, batch, jax.random.fold_in(rng, 1),
                                  ctx.state, ctx.step, ctx.total_steps)
      parts.update(more)
    total = sum(weights[name] * parts[name] for name in weights)
    aux = {f"loss/{name}": parts[name] for name in weights}
    if stats is not None:
      aux[STATE_STATS] = stats
    return total, aux
  extra = None
  if distill is not None:
    extra = ExtraState("teacher", distill.init_teacher, distill.update_teacher,
                       distill.teacher_shardings)
  return Objective(("image", "labels"), loss, has_aux=True, extra=extra)


def softmax_contrastive_objective(config, model, loss_name) -> Objective:
  """CLIP / LiT: symmetric softmax cross-entropy over the global batch."""
  del config, loss_name

  def loss(params, batch, rng):
    zimg, ztxt, out = _embed_pair(model, params, batch, rng)
    return losses.softmax_contrastive_loss(zimg, ztxt, out["t"])
  return Objective(("image", "labels"), loss)


# ----------------------------------------------------------------------------
# Knowledge distillation ("function matching", Beyer et al. 2022).
# ----------------------------------------------------------------------------
DISTILL_KEYS = ("teacher", "temperature", "label_weight")
TEACHER_KEYS = ("model_name", "model", "init", "num_classes")


def distill_kl(student_logits, teacher_logits, temperature=1.0):
  """Mean over the batch of T^2 KL(softmax(t/T) || softmax(s/T)).

  The T^2 factor (Hinton et al. 2015) keeps the gradient's scale independent
  of T. No gradient flows into `teacher_logits`.
  """
  t = jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / temperature
  s = student_logits.astype(jnp.float32) / temperature
  log_pt, log_ps = jax.nn.log_softmax(t), jax.nn.log_softmax(s)
  kl = jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1)
  return temperature ** 2 * jnp.mean(kl)


class Teacher:
  """A frozen model: built from `config.distill.teacher` at once (a bad
  model name or option fails at build), its parameters read from `init`
  (npz, workdir, released name; the family's `load`) the first time the
  step is traced (so `program.build` stays abstract).

  The parameters are closed over by the jitted step as constants, not
  carried in the train state: checkpoints hold the student only (a
  function-matching teacher is often several times the student's size and
  would be saved with every checkpoint), and the optimizer, the EMA and the
  donation never see it. The price: XLA embeds constants in the executable,
  so the teacher's bytes are part of the compiled step (and of the
  persistent compilation cache entry) and are replicated on every device.
  That is right for teachers up to a few hundred MB; a teacher that needs
  to be sharded would have to be a frozen subtree of the state instead.
  """

  def __init__(self, cfg, num_classes, mesh=None):
    from big_vision import models  # pylint: disable=g-import-not-at-top
    cfg = dict(cfg)
    for k in cfg:
      if k not in TEACHER_KEYS:
        raise utils.unknown_name_error("config.distill.teacher key", k,
                                       TEACHER_KEYS)
    for k in ("model_name", "init"):
      if not cfg.get(k):
        raise ValueError(f"config.distill.teacher.{k} is required (the "
                         "teacher's model family and its checkpoint: an "
                         ".npz or a workdir).")
    self.module = models.MODELS.lookup(cfg["model_name"])
    self.model_cfg = dict(cfg.get("model") or {})
    self.model = self.module.Model(
        num_classes=cfg.get("num_classes", num_classes), **self.model_cfg)
    self.init = cfg["init"]
    if isinstance(self.init, str):  # A missing local file fails at build.
      from big_vision.models import common as models_common  # pylint: disable=g-import-not-at-top
      path, _ = models_common.checkpoint_location(
          self.init, self.model_cfg, cfg["model_name"])
      if "://" not in path and not os.path.exists(path):
        raise ValueError(f"config.distill.teacher.init: {self.init!r} does "
                         "not exist (an .npz, a workdir or a released name).")
    self.mesh = mesh
    self._params = None

  def params(self, image_shape):
    """The loaded teacher parameters (device arrays, replicated)."""
    if self._params is None:
      dummy = jax.ShapeDtypeStruct((1,) + tuple(image_shape[1:]), jnp.float32)
      shapes = jax.eval_shape(
          lambda x: self.model.init(jax.random.PRNGKey(0), x,
                                    train=False)["params"], dummy)
      # Called while the step is traced: reading a workdir (orbax) and
      # placing the arrays must run eagerly, not be staged into the step.
      with jax.ensure_compile_time_eval():
        loaded = self.module.load(shapes, self.init, self.model_cfg)
        if self.mesh is not None:
          from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
          loaded = jax.device_put(loaded,
                                  NamedSharding(self.mesh, PartitionSpec()))
        else:
          loaded = jax.device_put(loaded)
      self._params = loaded
    return self._params

  def logits(self, params, images):
    logits, _ = self.model.apply({"params": params}, images, train=False)
    return jax.lax.stop_gradient(logits)


def distill_loss_fn(config, model, teacher: Teacher):
  """loss(student_params, teacher_params, batch, rng): the distillation loss
  with the teacher's params explicit (the objective closes over them)."""
  cfg = dict(config.get("distill") or {})
  temperature = float(cfg.get("temperature", 1.0))
  label_weight = float(cfg.get("label_weight", 0.0))
  if temperature <= 0:
    raise ValueError(f"config.distill.temperature must be > 0, got "
                     f"{temperature}.")
  if not 0.0 <= label_weight <= 1.0:
    raise ValueError(f"config.distill.label_weight must be in [0, 1], got "
                     f"{label_weight}.")
  xent = losses.get("softmax_xent")

  def loss(params, teacher_params, batch, rng):
    logits, _ = model.apply({"params": params}, batch["image"], train=True,
                            rngs={"dropout": rng})
    # The teacher sees exactly the student's (augmented) images: function
    # matching's "consistent" views.
    t_logits = teacher.logits(teacher_params, batch["image"])
    out = distill_kl(logits, t_logits, temperature)
    if label_weight:
      out = ((1 - label_weight) * out
             + label_weight * xent(logits, batch["labels"]))
    return out
  return loss


def distill_objective(config, model, loss_name, mesh=None) -> Objective:
  """Student logits against a frozen teacher's (`config.loss="distill"`).

    config.distill = dict(
        teacher=dict(model_name="vit", model=dict(...), init="t.npz|workdir"),
        temperature=1.0,    # Softens both distributions; loss scaled by T^2.
        label_weight=0.0)   # (1 - w) * KL + w * softmax_xent(labels).

  The teacher's forward runs in the same jitted step, in inference mode,
  under stop_gradient (see `Teacher` for where its params live). Mixup /
  CutMix / label smoothing (`config.mixup`, ...) apply to the batch both
  models see, as for classification.
  """
  del loss_name
  cfg = dict(config.get("distill") or {})
  for k in cfg:
    if k not in DISTILL_KEYS:
      raise utils.unknown_name_error("config.distill key", k, DISTILL_KEYS)
  if "teacher" not in cfg:
    raise ValueError("config.loss='distill' needs config.distill.teacher = "
                     "dict(model_name=..., model=..., init=...).")
  teacher = Teacher(cfg["teacher"], config.get("num_classes"), mesh)
  loss_fn = distill_loss_fn(config, model, teacher)
  base = classification_objective(config, model, "softmax_xent")

  def loss(params, batch, rng):
    return loss_fn(params, teacher.params(batch["image"].shape), batch, rng)
  return Objective(("image",), loss, base.prepare)


# Losses whose value over a batch is not the mean of per-example (or
# per-micro-batch) terms: every example is contrasted with the whole batch.
WHOLE_BATCH_LOSSES = ("sigmoid_contrastive", "softmax_contrastive")

OBJECTIVES = utils.Registry("loss", where="config.loss", entries={
    "softmax_xent": classification_objective,
    "sigmoid_xent": classification_objective,
    "sigmoid_contrastive": sigmoid_contrastive_objective,
    "softmax_contrastive": softmax_contrastive_objective,
    "distill": distill_objective,
    "combined": combined_objective,
})


def make(config, model, mesh=None) -> Objective:
  """The objective named by `config.loss` (default softmax_xent)."""
  name = config.get("loss", "softmax_xent")
  factory = OBJECTIVES.lookup(name)
  if config.get("self_distill") and name != "combined":
    raise utils.ConfigError("config.self_distill", (
        f"its terms are terms of config.loss='combined' (got {name!r}): set "
        "config.loss='combined' and config.objectives = dict(..., "
        "local_to_global=w, masked_prediction=w)."))
  accum_steps = int(config.get("accum_steps", 1) or 1)
  if name == "combined" and accum_steps > 1 and any(
      k in WHOLE_BATCH_LOSSES for k in dict(config.get("objectives") or {})):
    raise ValueError(
        f"config.accum_steps={accum_steps} cannot be used with a contrastive "
        "term in config.objectives: it contrasts every example with the "
        "whole batch (see sigmoid_contrastive). Set config.accum_steps=1.")
  if accum_steps > 1 and name in WHOLE_BATCH_LOSSES:
    raise ValueError(
        f"config.accum_steps={accum_steps} cannot be used with "
        f"config.loss={name!r}: this loss contrasts every example with the "
        "whole batch, and accumulating over micro-batches would compute it "
        f"over batch_size/{accum_steps} examples instead (fewer negatives, a "
        "different loss). Set config.accum_steps=1 (use more devices or a "
        "smaller batch to fit memory).")
  if "mesh" in inspect.signature(factory).parameters:
    return factory(config, model, name, mesh=mesh)
  return factory(config, model, name)
