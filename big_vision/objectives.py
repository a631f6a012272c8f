"""Objectives: how a batch becomes a scalar loss. Registry by `config.loss`.

An `Objective` names the batch keys the model takes (in order, for
`model.init` and `model.apply`) and a loss function run inside the jitted
train step. Classification losses come from `big_vision.losses`; image-text
objectives (SigLIP, CLIP) register here too, so there is one trainer.
jax only: no tensorflow.
"""
import inspect
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from big_vision import batch_aug
from big_vision import losses
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
  mix = dict(config.get("mixup") or {})
  mixup_p = float(mix.get("p") or 0.0)
  cutmix_alpha = float(mix.get("cutmix_alpha") or 0.0)
  switch_prob = float(mix.get("switch_prob", 0.5))
  eps = float(config.get("label_smoothing") or 0.0)

  def prepare(batch, rng):
    labels = batch["labels"].astype(jnp.float32)
    if eps:
      labels = batch_aug.smooth_labels(labels, eps)
    images, labels = batch_aug.mix_or_cut(
        rng, batch["image"], labels, mixup_p=mixup_p,
        cutmix_alpha=cutmix_alpha, switch_prob=switch_prob)
    return {**batch, "image": images, "labels": labels}

  def loss(params, batch, rng):
    logits, _ = model.apply({"params": params}, batch["image"], train=True,
                            rngs={"dropout": rng})
    return loss_fn(logits, batch["labels"])
  active = mixup_p or cutmix_alpha or eps
  return Objective(("image",), loss, prepare if active else None)


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
  axes = None
  if mesh is not None and config.get("chunked_loss", True):
    from big_vision import sharding  # pylint: disable=g-import-not-at-top
    if sharding.num_data_shards(mesh) > 1:
      axes = sharding.data_axes(mesh)

  def loss(params, batch, rng):
    zimg, ztxt, out = _embed_pair(model, params, batch, rng)
    b = out.get("b", jnp.zeros((), jnp.float32))
    if axes is not None:
      return losses.sigmoid_contrastive_loss_sharded(
          zimg, ztxt, out["t"], b, mesh, axis_name=axes)
    return losses.sigmoid_contrastive_loss(zimg, ztxt, out["t"], b)
  return Objective(("image", "labels"), loss)


def softmax_contrastive_objective(config, model, loss_name) -> Objective:
  """CLIP / LiT: symmetric softmax cross-entropy over the global batch."""
  del config, loss_name

  def loss(params, batch, rng):
    zimg, ztxt, out = _embed_pair(model, params, batch, rng)
    return losses.softmax_contrastive_loss(zimg, ztxt, out["t"])
  return Objective(("image", "labels"), loss)


# Losses whose value over a batch is not the mean of per-example (or
# per-micro-batch) terms: every example is contrasted with the whole batch.
WHOLE_BATCH_LOSSES = ("sigmoid_contrastive", "softmax_contrastive")

OBJECTIVES = utils.Registry("loss", where="config.loss", entries={
    "softmax_xent": classification_objective,
    "sigmoid_xent": classification_objective,
    "sigmoid_contrastive": sigmoid_contrastive_objective,
    "softmax_contrastive": softmax_contrastive_objective,
})


def make(config, model, mesh=None) -> Objective:
  """The objective named by `config.loss` (default softmax_xent)."""
  name = config.get("loss", "softmax_xent")
  factory = OBJECTIVES.lookup(name)
  accum_steps = int(config.get("accum_steps", 1) or 1)
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
