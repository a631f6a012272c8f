"""Held-out next-token accuracy and perplexity of a captioning decoder.

The two-tower model's decoder (`two_towers.Model(decoder=...)`) predicts
each caption token from the image and the earlier tokens (teacher forcing,
as in training). Over the trained positions of every caption (tokens up to
and including the first eos: `objectives.caption_weights`):

  "token_acc":  fraction of positions whose argmax prediction is the token;
  "perplexity": exp(mean negative log-likelihood per position);
  "nll":        that mean negative log-likelihood;
  "unigram_acc": the baseline without image or context: the accuracy of
                always predicting the split's most frequent token (at those
                positions), which a useful decoder must beat by far.

  config.evals.cap = dict(
      type="captioning", log_steps=1000, batch_size=256,
      data=dict(name="shapes_captions", split="test"),
      pp_fn="decode|value_range(-1, 1)|choice(inkey='texts', outkey='text')"
            "|tokenize(12, model='shapes_captions', eos='sticky', "
            "pad_value=1, inkey='text', outkey='labels')"
            "|keep('image', 'labels')")

`predict_fn(params, image, text, decoder_text=...)` -> (zimg, ztxt, out),
`out["dec/logits"]`. Padding rows of the last batch count nowhere.
"""
import jax
import jax.numpy as jnp
import numpy as np

from big_vision import objectives
from big_vision.evaluators import common


def batch_sums(logits, tokens, valid, eos_id: int = 1):
  """Sums over one batch: nll, correct predictions, positions."""
  w = objectives.caption_weights(tokens, eos_id) * valid[:, None]
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32),
                             axis=-1)[..., 0]
  hit = (jnp.argmax(logits, axis=-1) == tokens).astype(jnp.float32)
  counts = jnp.zeros((logits.shape[-1],), jnp.float32).at[
      tokens.reshape(-1)].add(w.reshape(-1))
  return dict(nll=jnp.sum(nll * w), hits=jnp.sum(hit * w), n=jnp.sum(w),
              counts=counts)


class Evaluator:
  """Teacher-forced token accuracy / perplexity of the decoder on a split."""

  def __init__(self, predict_fn, *, mesh, data, pp_fn, batch_size=256,
               eos_id: int = 1, cache_final=True):
    self.mesh, self.data, self.pp_fn = mesh, dict(data), pp_fn
    self.batch_size, self.cache_final = batch_size, cache_final

    @jax.jit
    def eval_batch(params, batch):
      tokens = batch["labels"]
      _, _, out = predict_fn(params, batch["image"], None,
                             decoder_text=tokens)
      if "dec/logits" not in out:
        raise ValueError("The captioning evaluator needs a model with a "
                         "decoder (two_towers' config.model.decoder).")
      return batch_sums(out["dec/logits"], tokens, batch["_mask"], eos_id)
    self.eval_batch = eval_batch

  def run(self, train_state):
    totals = None
    for batch in common.eval_batches(self.data, self.pp_fn, self.batch_size,
                                     self.mesh, self.cache_final):
      sums = self.eval_batch(train_state["params"], batch)
      sums = jax.tree.map(common.to_host, sums)  # Summed on the host.
      totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
    counts = common.to_host(totals.pop("counts"))
    totals = {k: float(common.to_host(v)) for k, v in totals.items()}
    n = max(totals["n"], 1.0)
    nll = totals["nll"] / n
    yield "token_acc", totals["hits"] / n
    yield "nll", nll
    yield "perplexity", float(np.exp(nll))
    yield "unigram_acc", float(counts.max()) / n
