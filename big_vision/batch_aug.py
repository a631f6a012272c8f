"""Batch-level label-mixing augmentations: mixup, CutMix, label smoothing.

Pure jax functions of (rng, images, labels): no config, no model, so the
train step can draw them once per global batch (before any gradient
accumulation split) and tests can check them in closed form.

Conventions (those of big_vision's existing `mixup`):

* `images` [B, H, W, C], `labels` [B, K] float (one-hot, multi-hot or
  already mixed); both come back with the same shapes and dtypes.
* One lambda (and, for CutMix, one box) per call, i.e. per batch; every
  example is mixed with its neighbour in the batch, `roll(x, 1, axis=0)`
  (example i with example i-1), which needs no permutation draw.
* `mixup(rng, images, labels, alpha)`: lambda ~ Beta(alpha, alpha), folded to
  max(lambda, 1 - lambda) >= 0.5 so that the original image dominates
  (Zhang et al. 2018, https://arxiv.org/abs/1710.09412); big_vision's config
  calls alpha `mixup.p`.
* `cutmix(rng, images, labels, alpha)` (Yun et al. 2019,
  https://arxiv.org/abs/1905.04899): lambda ~ Beta(alpha, alpha); a box of
  int(H sqrt(1-lambda)) x int(W sqrt(1-lambda)) pixels centred at a uniform
  random pixel, clipped to the image, is pasted from the neighbour. The label
  weights are then the *exact* pixel fractions: the neighbour's label gets
  (pasted pixels) / (H W), whatever clipping and rounding did to the box
  (the paper's code and timm's `correct_lam` do the same).
* `mix_or_cut`: timm's switch (Wightman, pytorch-image-models `Mixup`): with
  both enabled, each batch is CutMix with probability `switch_prob`, else
  mixup.
* `smooth_labels(labels, eps)`: (1 - eps) labels + eps / K (Szegedy et al.
  2016, Sec. 7): a one-hot row becomes 1 - eps + eps/K on its class and
  eps/K elsewhere; a row's sum is kept. It is linear, so it commutes with
  mixing: smoothing before or after mixup/CutMix gives the same targets.
"""
import jax
import jax.numpy as jnp


def _check_alpha(name, alpha):
  if not alpha > 0:
    raise ValueError(f"{name} must be > 0 (a Beta(alpha, alpha) "
                     f"concentration), got {alpha!r}.")


def _neighbour(x):
  return jnp.roll(x, 1, axis=0)


def mixup(rng, images, labels, alpha: float):
  """Convex mix of each example with its neighbour; one lambda >= 0.5."""
  _check_alpha("mixup alpha (config.mixup.p)", alpha)
  lam = jax.random.beta(rng, alpha, alpha)
  lam = jnp.maximum(lam, 1.0 - lam)
  mix = lambda x: (lam * x + (1.0 - lam) * _neighbour(x)).astype(x.dtype)
  return mix(images), mix(labels)


def cutmix_box(rng, height: int, width: int, alpha: float):
  """The CutMix box (y0, y1, x0, x1), half-open, clipped to the image.

  lambda ~ Beta(alpha, alpha); cut sides int(side * sqrt(1 - lambda)); the
  centre (cy, cx) is a uniform pixel; y0 = clip(cy - cut_h // 2, 0, H),
  y1 = clip(cy + cut_h - cut_h // 2, 0, H) (so unclipped boxes are exactly
  cut_h tall), and the same along x. Returns int32 scalars.
  """
  _check_alpha("cutmix_alpha", alpha)
  rng_lam, rng_y, rng_x = jax.random.split(rng, 3)
  lam = jax.random.beta(rng_lam, alpha, alpha)
  ratio = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * ratio).astype(jnp.int32)
  cut_w = jnp.floor(width * ratio).astype(jnp.int32)
  cy = jax.random.randint(rng_y, (), 0, height)
  cx = jax.random.randint(rng_x, (), 0, width)
  y0 = jnp.clip(cy - cut_h // 2, 0, height)
  y1 = jnp.clip(cy + cut_h - cut_h // 2, 0, height)
  x0 = jnp.clip(cx - cut_w // 2, 0, width)
  x1 = jnp.clip(cx + cut_w - cut_w // 2, 0, width)
  return y0, y1, x0, x1


def box_mask(box, height: int, width: int):
  """[H, W] bool, True inside the half-open box (y0, y1, x0, x1)."""
  y0, y1, x0, x1 = box
  ys = jnp.arange(height)[:, None]
  xs = jnp.arange(width)[None, :]
  return (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)


def cutmix(rng, images, labels, alpha: float):
  """Pastes one random box of each example's neighbour into it.

  The labels are mixed by the exact pasted fraction a = (box pixels)/(H W):
  (1 - a) * own + a * neighbour's. A box clipped to nothing leaves the
  batch unchanged.
  """
  _, h, w, _ = images.shape
  mask = box_mask(cutmix_box(rng, h, w, alpha), h, w)
  pasted = jnp.mean(mask.astype(jnp.float32))
  images = jnp.where(mask[None, :, :, None], _neighbour(images), images)
  labels = ((1.0 - pasted) * labels + pasted * _neighbour(labels)).astype(
      labels.dtype)
  return images, labels


def mix_or_cut(rng, images, labels, *, mixup_p: float = 0.0,
               cutmix_alpha: float = 0.0, switch_prob: float = 0.5):
  """mixup, CutMix, or per batch one of the two (timm's switch).

  * only `mixup_p > 0`: `mixup(rng, ..., mixup_p)`, with the very same
    random draw as before CutMix existed (same rng, no split);
  * only `cutmix_alpha > 0`: `cutmix(rng, ..., cutmix_alpha)`;
  * both: CutMix with probability `switch_prob` (one uniform draw per
    batch), else mixup; each from its own split of `rng`;
  * neither: the batch unchanged.
  The choices between branches are made at trace time from the (static)
  config numbers; the coin is a traced draw (`lax.cond`).
  """
  if mixup_p < 0 or cutmix_alpha < 0:
    raise ValueError(f"mixup_p={mixup_p} and cutmix_alpha={cutmix_alpha} "
                     "must be >= 0 (0 disables).")
  if not 0.0 <= switch_prob <= 1.0:
    raise ValueError(f"switch_prob={switch_prob} must be in [0, 1].")
  if not mixup_p and not cutmix_alpha:
    return images, labels
  if not cutmix_alpha:
    return mixup(rng, images, labels, mixup_p)
  if not mixup_p:
    return cutmix(rng, images, labels, cutmix_alpha)
  rng_switch, rng_aug = jax.random.split(rng)
  use_cutmix = jax.random.uniform(rng_switch) < switch_prob
  return jax.lax.cond(
      use_cutmix,
      lambda: cutmix(rng_aug, images, labels, cutmix_alpha),
      lambda: mixup(rng_aug, images, labels, mixup_p))


def smooth_labels(labels, eps: float):
  """(1 - eps) * labels + eps / K over the last axis (K classes)."""
  if not 0.0 <= eps < 1.0:
    raise ValueError(f"label smoothing eps={eps} must be in [0, 1).")
  k = labels.shape[-1]
  return ((1.0 - eps) * labels + eps / k).astype(labels.dtype)
