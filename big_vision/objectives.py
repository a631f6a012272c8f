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

from big_vision import losses
from big_vision import utils


class Objective(NamedTuple):
  """What a loss needs: the batch keys fed to the model, and the loss itself.

  `model_inputs` are passed positionally to `model.init` / `model.apply`, in
  this order; `loss(params, batch, rng) -> scalar` runs inside the jitted step.
  """
  model_inputs: tuple[str, ...]
  loss: Callable[[Any, dict, jax.Array], jax.Array]


def mixup(rng, images, labels, p: float):
  """Mixes each example with its neighbour in the batch (one lambda per batch).

  lambda ~ Beta(p, p), folded to >= 0.5 so the original image dominates.
  """
  lam = jax.random.beta(rng, p, p)
  lam = jnp.maximum(lam, 1.0 - lam)
  mix = lambda x: lam * x + (1.0 - lam) * jnp.roll(x, 1, axis=0)
  return mix(images), mix(labels)


def classification_objective(config, model, loss_name) -> Objective:
  """Image -> logits, against (multi-)hot `labels`; optional mixup."""
  loss_fn = losses.get(loss_name)
  mixup_p = (config.get("mixup") or {}).get("p", 0.0)

  def loss(params, batch, rng):
    images, labels = batch["image"], batch["labels"]
    rng_mix, rng_model = jax.random.split(rng)
    if mixup_p:
      images, labels = mixup(rng_mix, images, labels.astype(jnp.float32),
                             mixup_p)
    logits, _ = model.apply({"params": params}, images, train=True,
                            rngs={"dropout": rng_model})
    return loss_fn(logits, labels)
  return Objective(("image",), loss)


OBJECTIVES: dict[str, Callable[..., Objective]] = {
    "softmax_xent": classification_objective,
    "sigmoid_xent": classification_objective,
}


def make(config, model, mesh=None) -> Objective:
  """The objective named by `config.loss` (default softmax_xent)."""
  name = config.get("loss", "softmax_xent")
  if name not in OBJECTIVES:
    raise utils.unknown_name_error("loss", name, OBJECTIVES,
                                   where="config.loss")
  factory = OBJECTIVES[name]
  if "mesh" in inspect.signature(factory).parameters:
    return factory(config, model, name, mesh=mesh)
  return factory(config, model, name)
