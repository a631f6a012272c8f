"""Top-1 / top-5 precision and loss of a classifier on an inference split.

Labels are the (multi-)hot `labels` produced by the pp string. prec@k counts an
example as correct when any of its k highest-scoring classes is labelled
positive, which is plain accuracy for one-hot labels and the ImageNet "ReaL"
metric for multi-hot ones; with `skip_empty=True` (ReaL) examples without any
positive label are left out (of prec@k and of the loss), as in that
benchmark.

  config.evals.val = dict(type="classification", data=dict(name=..., split=...),
                          pp_fn="...|onehot(1000, key='label', key_result='labels')",
                          batch_size=256, log_steps=1000)
"""
import functools

import jax
import numpy as np
import jax.numpy as jnp

from big_vision import losses
from big_vision.evaluators import common


class Evaluator:
  """Classification metrics: prec@1, prec@5 and the mean loss."""

  def __init__(self, predict_fn, *, mesh, data, pp_fn, batch_size=256,
               loss_name="softmax_xent", label_key="labels", skip_empty=False,
               cache_final=False):
    self.mesh = mesh
    self.data, self.pp_fn, self.batch_size = dict(data), pp_fn, batch_size
    self.label_key, self.skip_empty = label_key, skip_empty
    self.cache_final = cache_final
    losses.get(loss_name)  # An unknown name fails now, not at the first run.
    self.loss_name = loss_name
    # Shared with every evaluator of the run that needs the logits.
    self.logits = common.compiled_predict(predict_fn, "logits")

  def run(self, train_state):
    totals = None
    for batch in common.eval_batches(self.data, self.pp_fn, self.batch_size,
                                     self.mesh, self.cache_final):
      logits = self.logits(train_state["params"], batch["image"])
      sums = batch_sums(logits, batch[self.label_key], batch["_mask"],
                        loss_name=self.loss_name, skip_empty=self.skip_empty)
      sums = jax.tree.map(common.to_host, sums)  # Summed on the host.
      totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
    totals = jax.tree.map(lambda x: float(common.to_host(x)), totals)
    yield "prec@1", totals["top1"] / max(totals["n"], 1)
    yield "prec@5", totals["top5"] / max(totals["n"], 1)
    yield "loss", totals["loss"] / max(totals["n"], 1)


@functools.partial(jax.jit, static_argnames=("loss_name", "skip_empty"))
def batch_sums(logits, labels, mask, *, loss_name, skip_empty):
  """Sums over a batch's real examples: top-1 / top-5 hits, loss, count."""
  labels = labels.astype(jnp.float32)
  mask = mask.astype(jnp.float32)
  if skip_empty:
    mask = mask * (labels.sum(-1) > 0)
  topk = jax.lax.top_k(logits.astype(jnp.float32),
                       min(5, logits.shape[-1]))[1]
  hits = jnp.take_along_axis(labels, topk, axis=-1) > 0
  loss = losses.get(loss_name)(logits, labels, reduction=False)
  # The loss averages over the same examples as prec@k: with skip_empty,
  # an unlabelled example (whose softmax loss is 0 whatever the logits)
  # would otherwise only dilute it.
  return dict(top1=jnp.sum(hits[:, 0] * mask),
              top5=jnp.sum(hits.any(-1) * mask),
              loss=jnp.sum(loss * mask), n=jnp.sum(mask))
