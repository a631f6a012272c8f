"""Image <-> text retrieval recall@k (COCO / Flickr30k style).

Every image of a split comes with k captions. All images and all captions
of the split are embedded; then

* image -> text: an image scores at K when one of ITS captions is among the
  K texts most similar to it (out of all N * k captions);
* text -> image: a caption scores at K when its image is among the K images
  most similar to it (out of all N images).

  config.evals.retrieval = dict(
      type="retrieval", log_steps=1000, batch_size=256,
      data=dict(name="coco_captions", split="val"),
      pp_fn="decode|resize(224)|value_range(-1, 1)"
            "|tokenize(64, model='...', inkey='texts', outkey='labels')",
      ks=(1, 5, 10))

pp_fn must give "image" and the captions' token ids "labels" of shape
[k, length] with the same k for every image (select them with
`choice(n=5, key='texts')` when the count varies). Yields "i2t/r@K" and
"t2i/r@K". Ties: a negative only outranks the positive when it is more
similar by more than `tie_tolerance` (1e-6, above float32 rounding of a
cosine). Identical captions of different images (frequent in small
synthetic data, rare in COCO) have equal similarities up to rounding; they
then count as correct, consistently, instead of as misses decided by which
batch or device computed them.

`predict_fn(params, image, text)` -> (zimg, ztxt, out), either input None.
"""
from typing import Sequence

import numpy as np

from big_vision.evaluators import common


def recall_at_k(zimg: np.ndarray, ztxt: np.ndarray, ks: Sequence[int],
                chunk: int = 1024,
                tie_tolerance: float = 1e-6) -> dict[str, float]:
  """Recalls from embeddings zimg [N, D] and ztxt [N, k, D] (text i, j
  describes image i). Computed in chunks: never the whole N x Nk matrix."""
  n, per, d = ztxt.shape
  flat = ztxt.reshape(n * per, d)
  owner = np.repeat(np.arange(n), per)
  i2t_rank = np.empty((n,), np.int64)
  for s in range(0, n, chunk):
    sims = zimg[s:s + chunk] @ flat.T  # [c, N*k]
    rows = np.arange(sims.shape[0])
    pos = sims.reshape(-1, n, per)[rows, s + rows].max(-1)  # best caption
    i2t_rank[s:s + chunk] = (sims > pos[:, None] + tie_tolerance).sum(-1)
  t2i_rank = np.empty((n * per,), np.int64)
  for s in range(0, n * per, chunk):
    sims = flat[s:s + chunk] @ zimg.T  # [c, N]
    pos = sims[np.arange(sims.shape[0]), owner[s:s + chunk]]
    t2i_rank[s:s + chunk] = (sims > pos[:, None] + tie_tolerance).sum(-1)
  out = {}
  for k in ks:
    out[f"i2t/r@{k}"] = float(np.mean(i2t_rank < k))
    out[f"t2i/r@{k}"] = float(np.mean(t2i_rank < k))
  return out


class Evaluator:
  """Recall@k of image->text and text->image retrieval on one split."""

  def __init__(self, predict_fn, *, mesh, data, pp_fn, batch_size=256,
               ks: Sequence[int] = (1, 5, 10), cache_final=True):
    self.mesh, self.data, self.pp_fn = mesh, dict(data), pp_fn
    self.batch_size, self.cache_final = batch_size, cache_final
    self.ks = tuple(int(k) for k in ks)
    if not self.ks or min(self.ks) < 1:
      raise ValueError(f"retrieval: ks must be positive ints, got {ks!r}.")

    # Shared with every evaluator of the run that embeds images / texts.
    self.embed_image = common.compiled_predict(predict_fn, "zimg")
    self.embed_text = common.compiled_predict(predict_fn, "ztxt")

  def embed(self, params, batch):
    tokens = batch["labels"]
    if tokens.ndim != 3:
      raise ValueError(
          f"retrieval: pp_fn must give 'labels' of shape [k, length] per "
          f"image (k captions), got {tokens.shape[1:]}.")
    b, per, length = tokens.shape
    zimg = self.embed_image(params, batch["image"])
    ztxt = self.embed_text(params, tokens.reshape(b * per, length))
    return zimg, ztxt.reshape(b, per, -1)

  def run(self, train_state):
    zimgs, ztxts = [], []
    for batch in common.eval_batches(self.data, self.pp_fn, self.batch_size,
                                     self.mesh, self.cache_final):
      zimg, ztxt = self.embed(train_state["params"], batch)
      mask = common.to_host(batch["_mask"]).astype(bool)
      zimgs.append(common.to_host(zimg)[mask])
      ztxts.append(common.to_host(ztxt)[mask])
    zimg = np.concatenate(zimgs).astype(np.float32)
    ztxt = np.concatenate(ztxts).astype(np.float32)
    yield from recall_at_k(zimg, ztxt, self.ks).items()
