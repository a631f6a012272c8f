"""In-batch contrastive metrics of an image-text model on a split.

Each eval batch of (image, caption) pairs is scored like a training batch:
"loss" is the training objective (`sigmoid_contrastive` or
`softmax_contrastive`, with the model's t and b) and "i2t_acc" / "t2i_acc"
the fraction of images (texts) whose most similar text (image) in the batch
is their own pair. Cheap, and comparable with the training loss, but both
depend on the batch size (more candidates, harder task; the sigmoid loss
even sums over them), so compare runs at equal eval batch size. Padding
rows of the last batch take no part in any pair; each batch's numbers are
weighted by its number of real pairs.

  config.evals.val = dict(
      type="contrastive", log_steps=1000, batch_size=256,
      data=dict(name="shapes_captions", split="test"),
      pp_fn="decode|value_range(-1, 1)|choice(key='texts')"
            "|tokenize(16, model='shapes_captions')|keep('image', 'labels')",
      loss_name="sigmoid_contrastive")

`predict_fn(params, image, text)` -> (zimg, ztxt, out).
"""
import jax
import numpy as np
import jax.numpy as jnp

from big_vision import utils
from big_vision.evaluators import common


def _masked_sigmoid_loss(logits, valid):
  """Per-image sum over valid texts of -log sigmoid(label * logit)."""
  labels = 2.0 * jnp.eye(logits.shape[0]) - 1.0
  terms = -jax.nn.log_sigmoid(labels * logits)
  return jnp.sum(terms * valid[None, :], axis=1)


def _masked_softmax_loss(logits, valid):
  """Per-pair 0.5 * (xent image -> texts + xent text -> images)."""
  neg = jnp.finfo(jnp.float32).min
  diag = jnp.diagonal(logits)
  i2t = jax.nn.logsumexp(jnp.where(valid[None, :], logits, neg), axis=1)
  t2i = jax.nn.logsumexp(jnp.where(valid[:, None], logits, neg), axis=0)
  return 0.5 * ((i2t - diag) + (t2i - diag))


LOSSES = {"sigmoid_contrastive": _masked_sigmoid_loss,
          "softmax_contrastive": _masked_softmax_loss}


def batch_metrics(zimg, ztxt, t, b, valid, loss_name):
  """Sums over the valid pairs of one batch: loss, i2t / t2i hits, count."""
  zimg, ztxt = zimg.astype(jnp.float32), ztxt.astype(jnp.float32)
  logits = t * zimg @ ztxt.T + (b if loss_name == "sigmoid_contrastive"
                                else 0.0)
  validf = valid.astype(jnp.float32)
  per_pair = LOSSES[loss_name](logits, validf)
  neg = jnp.finfo(jnp.float32).min
  idx = jnp.arange(logits.shape[0])
  i2t = jnp.argmax(jnp.where(valid[None, :], logits, neg), axis=1) == idx
  t2i = jnp.argmax(jnp.where(valid[:, None], logits, neg), axis=0) == idx
  return dict(loss=jnp.sum(per_pair * validf), i2t=jnp.sum(i2t * validf),
              t2i=jnp.sum(t2i * validf), n=jnp.sum(validf))


class Evaluator:
  """Contrastive loss and in-batch retrieval accuracy on a split."""

  def __init__(self, predict_fn, *, mesh, data, pp_fn, batch_size=256,
               loss_name="sigmoid_contrastive", cache_final=True):
    if loss_name not in LOSSES:
      raise utils.unknown_name_error("contrastive loss_name", loss_name,
                                     LOSSES)
    self.mesh, self.data, self.pp_fn = mesh, dict(data), pp_fn
    self.batch_size, self.cache_final = batch_size, cache_final

    @jax.jit
    def eval_batch(params, batch):
      zimg, ztxt, out = predict_fn(params, batch["image"], batch["labels"])
      b = out.get("b", jnp.zeros((), jnp.float32))
      return batch_metrics(zimg, ztxt, out["t"], b, batch["_mask"], loss_name)
    self.eval_batch = eval_batch

  def run(self, train_state):
    totals = None
    for batch in common.eval_batches(self.data, self.pp_fn, self.batch_size,
                                     self.mesh, self.cache_final):
      sums = self.eval_batch(train_state["params"], batch)
      sums = jax.tree.map(common.to_host, sums)  # Summed on the host.
      totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
    totals = {k: float(common.to_host(v)) for k, v in totals.items()}
    n = max(totals["n"], 1.0)
    yield "loss", totals["loss"] / n
    yield "i2t_acc", totals["i2t"] / n
    yield "t2i_acc", totals["t2i"] / n
