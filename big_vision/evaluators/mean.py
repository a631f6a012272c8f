"""Mean of per-example quantities computed by a user function over a split.

`fn(logits, batch, loss_name) -> dict name -> per-example array [B]` is
looked up by name in `PER_EXAMPLE_FNS` (`loss`: the classifier's loss on `labels`;
`accuracy`: top-1 hit). Masked (padding) examples never count.

  config.evals.val_loss = dict(type="mean", pred="loss", data=..., pp_fn=...)
"""
import functools

import jax
import numpy as np
import jax.numpy as jnp

from big_vision import losses
from big_vision import utils
from big_vision.evaluators import common


def _loss(logits, batch, loss_name):
  loss_fn = losses.get(loss_name)
  return {"loss": loss_fn(logits, batch["labels"], reduction=False)}


def _accuracy(logits, batch, loss_name):
  del loss_name
  hit = jnp.take_along_axis(batch["labels"], logits.argmax(-1)[:, None], -1)
  return {"accuracy": (hit[:, 0] > 0).astype(jnp.float32)}


PER_EXAMPLE_FNS = {"loss": _loss, "accuracy": _accuracy}


class Evaluator:
  """Averages each per-example output over every real example of a split."""

  def __init__(self, predict_fn, *, mesh, data, pp_fn, batch_size=256,
               pred="loss", loss_name="softmax_xent", cache_final=False):
    if pred not in PER_EXAMPLE_FNS:
      raise utils.unknown_name_error("mean evaluator pred", pred,
                                     PER_EXAMPLE_FNS)
    losses.get(loss_name)  # An unknown name fails now, not at the first run.
    self.pred, self.loss_name = pred, loss_name
    self.mesh, self.data, self.pp_fn = mesh, dict(data), pp_fn
    self.batch_size, self.cache_final = batch_size, cache_final
    # Shared with every evaluator of the run that needs the logits.
    self.logits = common.compiled_predict(predict_fn, "logits")

  def run(self, train_state):
    totals, n = None, 0.0
    for batch in common.eval_batches(self.data, self.pp_fn, self.batch_size,
                                     self.mesh, self.cache_final):
      logits = self.logits(train_state["params"], batch["image"])
      s, cnt = _sums(logits, batch, pred=self.pred, loss_name=self.loss_name)
      s = jax.tree.map(common.to_host, s)  # Summed on the host.
      totals = s if totals is None else jax.tree.map(np.add, totals, s)
      n += float(cnt)
    for k, v in (totals or {}).items():
      yield k, float(common.to_host(v)) / max(n, 1.0)


@functools.partial(jax.jit, static_argnames=("pred", "loss_name"))
def _sums(logits, batch, *, pred, loss_name):
  mask = batch["_mask"].astype(jnp.float32)
  outs = PER_EXAMPLE_FNS[pred](logits, batch, loss_name)
  return {k: jnp.sum(v.astype(jnp.float32) * mask) for k, v in outs.items()
          }, jnp.sum(mask)
