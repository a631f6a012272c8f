"""Training losses (jax only, no tensorflow).

Two families live here:

* Classification losses, looked up by name from `config.loss` through `get`:
  `softmax_xent` and `sigmoid_xent`. Labels are float one-hot / multi-hot
  arrays; label smoothing is done by the `onehot` pp op, not here, so that a
  loss is a pure function of (logits, labels).

* Image-text contrastive losses on embeddings, called directly by the
  image-text trainer: `softmax_contrastive_loss` (CLIP/LiT) and
  `sigmoid_contrastive_loss` (SigLIP). For SigLIP there is also a
  multi-device version, `chunked_sigmoid_contrastive_loss`, that never builds
  the global B x B similarity matrix (see its docstring), and the wrapper
  `sigmoid_contrastive_loss_sharded` that applies it to global arrays.

Every loss is computed in float32 whatever the dtype of its inputs: a bf16
log-softmax over thousands of classes, or a bf16 sum over a 32k-wide row of
pairwise terms, loses most of its precision, and the cast is cheap next to the
matmuls that produced the inputs.
"""
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from big_vision import utils

AxisName = str | Sequence[str]


# ----------------------------------------------------------------------------
# Classification losses, registered by name for `config.loss`.
# ----------------------------------------------------------------------------
LOSSES = utils.Registry("loss", where="config.loss")


def register(name: str):
  """Adds a `fn(logits, labels, reduction=True)` loss to `LOSSES`."""
  return LOSSES.register(name)


def get(name: str) -> Callable[..., jax.Array]:
  """The classification loss called `name`; ValueError lists valid names."""
  return LOSSES.lookup(name)


def _reduce(per_example: jax.Array, reduction: bool) -> jax.Array:
  return jnp.mean(per_example) if reduction else per_example


@register("softmax_xent")
def softmax_xent(logits, labels, reduction: bool = True) -> jax.Array:
  """Cross-entropy of softmax(logits) against (soft) label distributions.

  Args:
    logits: [..., C] any float dtype.
    labels: [..., C] float one-hot (or smoothed / mixed) targets; rows are
      expected to sum to 1 but this is not enforced (mixup may not).
    reduction: mean over all leading dims if True, else per-example losses.

  Returns:
    A float32 scalar, or float32 [...] per-example losses.
  """
  logits = jnp.asarray(logits, jnp.float32)
  labels = jnp.asarray(labels, jnp.float32)
  nll = -jnp.sum(labels * jax.nn.log_softmax(logits, axis=-1), axis=-1)
  return _reduce(nll, reduction)


@register("sigmoid_xent")
def sigmoid_xent(logits, labels, reduction: bool = True) -> jax.Array:
  """Independent binary cross-entropies, summed over classes.

  Summed (not averaged) over the C classes, as in the big_vision ViT
  recipes: the loss scale then does not depend on C being 1k or 21k.
  `log_sigmoid(-x)` is used for log(1 - sigmoid(x)) because it stays finite
  for large |x|.

  Args:
    logits: [..., C] any float dtype.
    labels: [..., C] float multi-hot targets in [0, 1].
    reduction: mean over all leading dims if True, else per-example losses.

  Returns:
    A float32 scalar, or float32 [...] per-example losses.
  """
  logits = jnp.asarray(logits, jnp.float32)
  labels = jnp.asarray(labels, jnp.float32)
  log_p = jax.nn.log_sigmoid(logits)
  log_not_p = jax.nn.log_sigmoid(-logits)
  nll = -jnp.sum(labels * log_p + (1.0 - labels) * log_not_p, axis=-1)
  return _reduce(nll, reduction)


# ----------------------------------------------------------------------------
# Image-text contrastive losses (single device / GSPMD: full B x B matrix).
# ----------------------------------------------------------------------------
def _f32(*xs):
  return tuple(jnp.asarray(x, jnp.float32) for x in xs)


def softmax_contrastive_loss(zimg, ztxt, t, reduction: bool = True):
  """CLIP loss: mean of image->text and text->image cross-entropies.

  Args:
    zimg: [B, D] image embeddings (normalised by the caller).
    ztxt: [B, D] text embeddings; row i is the positive of image row i.
    t: scalar temperature, already exponentiated (logits = t * zimg @ ztxt.T).
    reduction: if False, returns per-pair losses [B]:
      0.5 * (xent(image i -> texts) + xent(text i -> images)).

  Returns:
    float32 scalar (the mean of the [B] per-pair losses) or [B].
  """
  zimg, ztxt, t = _f32(zimg, ztxt, t)
  logits = t * zimg @ ztxt.T
  diag = jnp.diagonal(logits)
  i2t = jax.nn.logsumexp(logits, axis=1) - diag
  t2i = jax.nn.logsumexp(logits, axis=0) - diag
  return _reduce(0.5 * (i2t + t2i), reduction)


def _sigmoid_block_loss(zimg, ztxt, t, b, positives_on_diagonal: bool):
  """Sum over texts of -log sigmoid(label * logit), per image row, float32.

  One block of the SigLIP pairwise matrix: every pair is a negative (label
  -1), except the diagonal when `positives_on_diagonal` (label +1).
  """
  logits = t * zimg @ ztxt.T + b
  if positives_on_diagonal:
    labels = 2.0 * jnp.eye(logits.shape[0], logits.shape[1]) - 1.0
  else:
    labels = -1.0
  return -jnp.sum(jax.nn.log_sigmoid(labels * logits), axis=1)


def sigmoid_contrastive_loss(zimg, ztxt, t, b, reduction: bool = True):
  """SigLIP pairwise sigmoid loss over the full B x B matrix.

  loss = -1/B sum_i sum_j log sigmoid(label_ij * (t * <zimg_i, ztxt_j> + b)),
  label_ij = +1 if i == j else -1. The 1/B (not 1/B^2) normalisation follows
  the SigLIP paper: it is a sum of B binary problems per image, averaged over
  images.

  Args:
    zimg: [B, D] image embeddings.
    ztxt: [B, D] text embeddings; row i is the positive of image row i.
    t: scalar temperature, already exponentiated.
    b: scalar bias.
    reduction: if False, returns the per-image sums over texts [B].

  Returns:
    float32 scalar or [B].
  """
  zimg, ztxt, t, b = _f32(zimg, ztxt, t, b)
  per_image = _sigmoid_block_loss(zimg, ztxt, t, b, positives_on_diagonal=True)
  return _reduce(per_image, reduction)


# ----------------------------------------------------------------------------
# SigLIP across devices without the global B x B matrix.
# ----------------------------------------------------------------------------
def _axis_size(axis_name: AxisName) -> int:
  if hasattr(jax.lax, "axis_size"):
    return jax.lax.axis_size(axis_name)
  return jax.lax.psum(1, axis_name)  # Older jax: a static int as well.


def chunked_sigmoid_contrastive_loss(zimg, ztxt, t, b, *,
                                     axis_name: AxisName):
  """SigLIP loss, computed block by block while texts travel round a ring.

  Runs inside `shard_map` over the data axis `axis_name` (a name or a tuple
  of names, as in `P(("data", "fsdp"))`). Each of the n devices holds its
  [B/n, D] chunks of images and texts. It scores its images against its own
  texts (the only block with positives, on its diagonal), then n - 1 times
  passes its current text chunk to the next device with `ppermute` and scores
  its images against the chunk it received (all negatives). After n - 1 hops
  every image has met every text once; a `psum` and division by the global
  batch give exactly `sigmoid_contrastive_loss` on the gathered arrays.

  Memory, per device (tools/bench_siglip_loss.py measures it):
  * one [B/n, B/n] block at a time instead of the [B, B] matrix, or the
    [B/n, B] row-slab that jit of the full loss on sharded inputs gives;
  * the hops are a `lax.scan`, so every hop reuses the same block buffers
    (an unrolled Python loop lets XLA keep several blocks alive at once);
  * each block is wrapped in `jax.checkpoint`: the backward pass stores only
    the received [B/n, D] text chunks (O(B * D) in all) and recomputes the
    block, instead of keeping every block's sigmoid (O(B^2 / n)). This costs
    one extra [B/n, B/n, D] matmul per hop, small next to the towers.

  Overlap: inside a hop the next chunk is sent while the current one is
  scored (the two are independent), so backends that overlap collectives
  with compute can hide the transfer. The gradient of `ppermute` is the
  reverse `ppermute`, so `jax.grad` through `shard_map` works as usual.

  Args:
    zimg: [B/n, D] this device's image embeddings.
    ztxt: [B/n, D] this device's text embeddings (positives of `zimg` rows).
    t: scalar temperature, already exponentiated (replicated).
    b: scalar bias (replicated).
    axis_name: mesh axis (or axes) the batch is split over.

  Returns:
    The float32 scalar loss, identical on every device.
  """
  zimg, ztxt, t, b = _f32(zimg, ztxt, t, b)
  n = _axis_size(axis_name)
  global_batch = zimg.shape[0] * n
  block = jax.checkpoint(_sigmoid_block_loss, static_argnums=(4,))
  negatives = lambda z: jnp.sum(block(zimg, z, t, b, False))
  send = lambda z: jax.lax.ppermute(
      z, axis_name, perm=[(i, (i + 1) % n) for i in range(n)])

  local = jnp.sum(block(zimg, ztxt, t, b, True))
  if n > 1:
    # Hop k = 1 .. n - 1 scores the chunk of device (i - k) mod n; n - 1
    # ppermutes in all: one here, n - 2 in the scan.
    def hop(carry, _):
      chunk, acc = carry
      return (send(chunk), acc + negatives(chunk)), None
    (last, local), _ = jax.lax.scan(hop, (send(ztxt), local), None,
                                    length=n - 2)
    local = local + negatives(last)
  return jax.lax.psum(local, axis_name) / global_batch


def _shard_map(f, mesh, in_specs, out_specs):
  """`jax.shard_map` where available (jax >= 0.7), else the experimental one."""
  if hasattr(jax, "shard_map"):
    return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs)
  from jax.experimental.shard_map import shard_map  # pylint: disable=g-import-not-at-top
  return shard_map(f, mesh, in_specs=in_specs, out_specs=out_specs)


def sigmoid_contrastive_loss_sharded(zimg, ztxt, t, b, mesh: Mesh,
                                     axis_name: AxisName = "data"):
  """`chunked_sigmoid_contrastive_loss` applied to global [B, D] arrays.

  The batch dimension of `zimg` and `ztxt` is split over `axis_name` of
  `mesh` (B must divide evenly); `t` and `b` are replicated. Other mesh axes,
  if any, hold replicas of the computation. Differentiable, and usable
  inside `jax.jit`.
  """
  if isinstance(axis_name, (list, tuple)):
    axis_name = tuple(axis_name)
  fn = functools.partial(chunked_sigmoid_contrastive_loss, axis_name=axis_name)
  batch = P(axis_name)
  return _shard_map(fn, mesh, in_specs=(batch, batch, P(), P()),
                    out_specs=P())(zimg, ztxt, t, b)
