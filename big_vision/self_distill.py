r"""SigLIP 2's late-training self-distillation (Tschannen et al. 2025).

  config.loss = "combined"
  config.objectives = dict(sigmoid_contrastive=1.0, captioning=1.0,
                           local_to_global=1.0, masked_prediction=0.25)
  config.model.distill_heads = dict(dim=65536, patch_dim=8192)   # two_towers
  config.self_distill = dict(start_fraction=0.8, ema_decay=0.999, ...)

From update `start_step = round(start_fraction * total_steps)` on (0-based;
the paper: from 80% of training), two more terms join the "combined" loss,
each logged unweighted as `loss/<name>`; before it they are exactly 0 (a
`lax.cond` on the step skips their forward passes; under differentiation
the step still reserves, and zero-fills, the buffers the terms keep for
their backward pass, so the memory peak is paid from step 0). The idle
heads must not be weight-decayed (checked: see _check_heads_not_decayed).
The paper's Sec. 2.3:

* Teacher: an exponential moving average of the student's image tower and
  self-distillation heads (`img/`, `distill_heads/`), kept in the train
  state as `teacher` (checkpointed, sharded like those params). Up to the
  start step it is a copy of the student (the paper initialises the teacher
  with the student at the switch); from then on
  teacher <- ema_decay * teacher + (1 - ema_decay) * student, after every
  optimizer update. It runs in inference mode under stop_gradient and is
  never differentiated (it is not part of the differentiated params).
* local_to_global (SILC-style, as the paper): the teacher sees the global
  view, the student `local_views` local views of each image; the student's
  pooled representation of each local view, through the global head, is
  trained to predict the teacher's for the global view:
  mean over images and views of H(softmax((t - c) / teacher_temp),
  softmax(s / student_temp)), with the centre c a running mean of the
  teacher's logits (momentum `center_momentum`) and H the cross-entropy.
* masked_prediction (TIPS-style, as the paper): `mask_ratio` of each image's
  real patches (exactly round(ratio * patches)) enter the student as the
  mask token; at those positions the student's tokens, through the patch
  head, predict the teacher's tokens of the unmasked image (same H, mean
  over the masked patches of the batch).

Views, and why they are made in the step: local views are random resized
crops of the global (NaFlex) image, drawn per example from the loss rng
(seeded: a function of the config's seed and the step) and resampled
bilinearly to a fixed `local_grid` x `local_grid` patch grid straight from
the patch sequence. Every view then has the same static shape
[batch * local_views, local_grid^2, patch pixels + 3], whatever each image's
own grid, so the step compiles once; doing it in pp would put 1 + views
images per example through tf.data and the input shapes of every config
would depend on this switch. The global view is the training image itself
(the one the SigLIP and captioning terms see).

Paper vs this project (as we read the paper): in the paper are the switch at
80% of training, an EMA teacher initialised from the student, 1 global and
8 local views, a separate head into a high-dimensional space with SILC's
loss (centred / sharpened teacher softmax), 50% masked patches with the
same loss per patch (TIPS), and the weights 1 (local_to_global) and 0.25
(masked_prediction), times a size factor (0.25 for B models). Taken from
SILC: local crops of 5-40% of the image area and a fixed EMA decay.
This project's choices (the paper defers to SILC / TIPS for them): the
decay's value, the head's design (DINO-style, `two_towers.DistillHeads`)
and sizes, temperatures (DINO's 0.04 / 0.1), centre momentum (0.9), crop
aspect ratios 3/4..4/3, random (not block) masking, no colour / flip
augmentation of the views, and the global view being the unaugmented
image. jax only.
"""
import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from big_vision import utils
from big_vision.models import naflex_vit

TERMS = ("local_to_global", "masked_prediction")
# The params subtrees the teacher mirrors (a two_towers model's).
TEACHER_PARTS = ("img", "distill_heads")
# Center keys in the teacher state, per term.
CENTERS = {"local_to_global": "global", "masked_prediction": "patch"}


@dataclasses.dataclass(frozen=True)
class Settings:
  """config.self_distill, validated (see the module docstring)."""
  start_fraction: float = 0.8
  ema_decay: float = 0.999
  local_views: int = 8
  local_grid: int = 6
  local_scale: tuple[float, float] = (0.05, 0.4)
  mask_ratio: float = 0.5
  teacher_temp: float = 0.04
  student_temp: float = 0.1
  center_momentum: float = 0.9

  def start_step(self, total_steps: int) -> int:
    """The first update (0-based) with the terms on."""
    return int(round(self.start_fraction * total_steps))


KEYS = tuple(f.name for f in dataclasses.fields(Settings))


def _fail(key, message):
  raise utils.ConfigError(f"config.self_distill.{key}", message)


def settings(config, names) -> Settings | None:
  """Settings from config.self_distill, or None when config.objectives
  (`names`) has no self-distillation term. Raises ConfigError naming the
  key for a bad value, an unknown key, or a config.self_distill nobody
  would read."""
  raw = dict(config.get("self_distill") or {})
  on = [n for n in names if n in TERMS]
  if not on:
    if raw:
      raise utils.ConfigError("config.self_distill", (
          "is set, but config.objectives has none of its terms "
          f"({', '.join(TERMS)}); add them with a weight, or remove it."))
    return None
  for key in raw:
    if key not in KEYS:
      raise utils.ConfigError("config.self_distill", str(
          utils.unknown_name_error("config.self_distill key", key, KEYS)))
  if "local_scale" in raw:
    v = raw["local_scale"]
    raw["local_scale"] = tuple(v) if isinstance(v, (list, tuple)) else (v,)
  s = Settings(**raw)
  for key, lo, hi, lo_open, hi_open in (
      ("start_fraction", 0, 1, False, True), ("ema_decay", 0, 1, False, True),
      ("mask_ratio", 0, 1, True, True),
      ("center_momentum", 0, 1, False, True)):
    v = getattr(s, key)
    if not isinstance(v, (int, float)) or not (
        (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)):
      _fail(key, f"must be a number in {'(' if lo_open else '['}{lo}, {hi}"
            f"{')' if hi_open else ']'}, got {v!r}.")
  for key in ("teacher_temp", "student_temp"):
    v = getattr(s, key)
    if not isinstance(v, (int, float)) or not v > 0:
      _fail(key, f"must be a number > 0, got {v!r}.")
  for key in ("local_views", "local_grid"):
    v = getattr(s, key)
    if not isinstance(v, int) or v < 1:
      _fail(key, f"must be an int >= 1, got {v!r}.")
  _check_heads_not_decayed(config)
  scale = s.local_scale
  if len(scale) != 2 or not all(isinstance(v, (int, float)) for v in scale) \
      or not 0 < scale[0] <= scale[1] <= 1:
    _fail("local_scale", "must be (min, max) fractions of the image area "
          f"with 0 < min <= max <= 1, got {s.local_scale!r}.")
  return s


# A representative kernel of each head (models/two_towers.DistillHeads).
HEAD_KERNELS = tuple(f"distill_heads/{head}/{layer}/kernel"
                     for head in ("global_head", "patch_head")
                     for layer in ("hidden", "bottleneck", "logits"))


def _check_heads_not_decayed(config):
  """Refuses weight decay on `distill_heads/`.

  The heads get no gradient before the switch (80% of the run in the
  paper), but decoupled weight decay shrinks them every step regardless:
  over a long run they decay to ~0, every logit becomes 0, both softmaxes
  are uniform and the terms can never learn. Exclude them first in
  config.wd_mults, e.g. `(("distill_heads/.*", 0.0), (".*/kernel$", 1.0))`.
  """
  if not float(config.get("wd") or 0.0):
    return
  rules = config.get("wd_mults", [(".*/kernel$", 1.0)]) or []
  for name in HEAD_KERNELS:
    if float(utils.match_rules(rules, name, default=0.0)):
      raise utils.ConfigError("config.wd_mults", (
          f"config.wd_mults decays {name!r} (config.wd={config.wd}). The "
          "self-distillation "
          "heads get no gradient until config.self_distill.start_fraction, "
          "so weight decay would shrink them to zero by then; put "
          "('distill_heads/.*', 0.0) first in config.wd_mults."))


# ----------------------------------------------------------------------------
# Views and masks (pure jax; tests compare them with numpy).
# ----------------------------------------------------------------------------
def image_grid(image):
  """(valid bool [b, l], grid rows [b], grid cols [b]) of NaFlex images."""
  _, rows, cols, valid = naflex_vit.split_input(image)
  return (valid,) + naflex_vit.grid_size(rows, cols, valid)


def view_boxes(rng, height, width, views: int, scale, ratio=(3 / 4, 4 / 3)):
  """Random resized crop boxes (y0, x0, h, w) in pixels, [b, views, 4]:
  area a fraction ~ U(scale) of each image's height x width ([b] floats),
  aspect ratio w/h log-uniform in `ratio` (clipped to the image), position
  uniform."""
  b = height.shape[0]
  r_area, r_ratio, r_y, r_x = jax.random.split(rng, 4)
  shape = (b, views)
  height = height.astype(jnp.float32)[:, None]
  width = width.astype(jnp.float32)[:, None]
  area = jax.random.uniform(r_area, shape, minval=scale[0], maxval=scale[1])
  area = area * height * width
  log_r = jax.random.uniform(r_ratio, shape, minval=math.log(ratio[0]),
                             maxval=math.log(ratio[1]))
  h = jnp.minimum(jnp.sqrt(area / jnp.exp(log_r)), height)
  w = jnp.minimum(jnp.sqrt(area * jnp.exp(log_r)), width)
  y0 = jax.random.uniform(r_y, shape) * (height - h)
  x0 = jax.random.uniform(r_x, shape) * (width - w)
  return jnp.stack([y0, x0, h, w], axis=-1)


def crop_views(image, boxes, grid: int, patch: int, channels: int = 3):
  """The boxes of NaFlex `image` [b, l, p*p*c + 3] as NaFlex views
  [b * views, grid^2, p*p*c + 3] of a full grid x grid patch grid each.

  Bilinear resampling (half-pixel centres, edges clamped, no antialiasing)
  of the box to grid*p x grid*p pixels, read straight from the patch
  sequence: pixel (y, x) of an image with `cols` patch columns lives in
  patch (y // p) * cols + x // p, at (y % p, x % p).
  """
  b, l, _ = image.shape
  views = boxes.shape[1]
  p, c, n = patch, channels, grid
  _, grid_h, grid_w = image_grid(image)
  pixels = image[..., :p * p * c].reshape(b, l * p * p, c)
  height = (grid_h * p).astype(jnp.float32)[:, None, None]
  width = (grid_w * p).astype(jnp.float32)[:, None, None]
  out = (jnp.arange(n * p, dtype=jnp.float32) + 0.5) / (n * p)  # [n p]

  def coords(start, size, limit):  # -> (lo, hi int, weight of hi) [b, v, np]
    src = start[..., None] + out * size[..., None] - 0.5
    src = jnp.clip(src, 0.0, limit - 1.0)
    lo = jnp.floor(src)
    return (lo.astype(jnp.int32), jnp.minimum(lo + 1, limit - 1).astype(
        jnp.int32), src - lo)
  y0, y1, wy = coords(boxes[..., 0], boxes[..., 2], height)
  x0, x1, wx = coords(boxes[..., 1], boxes[..., 3], width)
  cols = grid_w[:, None, None, None]

  def at(y, x):  # [b, v, np] x [b, v, np] -> [b, v, np, np, c]
    yy, xx = y[..., :, None], x[..., None, :]
    idx = ((yy // p) * cols + xx // p) * (p * p) + (yy % p) * p + xx % p
    flat = jnp.take_along_axis(pixels, idx.reshape(b, -1, 1), axis=1)
    return flat.reshape(b, views, n * p, n * p, c)
  wy, wx = wy[..., :, None, None], wx[..., None, :, None]
  img = ((1 - wy) * ((1 - wx) * at(y0, x0) + wx * at(y0, x1))
         + wy * ((1 - wx) * at(y1, x0) + wx * at(y1, x1)))
  img = img.reshape(b * views, n, p, n, p, c).transpose(0, 1, 3, 2, 4, 5)
  img = img.reshape(b * views, n * n, p * p * c)
  idx = jnp.arange(n * n)
  pos = jnp.stack([idx // n, idx % n, jnp.ones_like(idx)], -1).astype(
      img.dtype)
  pos = jnp.broadcast_to(pos, (b * views, n * n, 3))
  return jnp.concatenate([img, pos], axis=-1)


def patch_mask(rng, valid, ratio: float):
  """bool [b, l]: exactly round(ratio * real patches) of each image's real
  (`valid`) patches, uniformly at random; padding is never masked."""
  noise = jnp.where(valid, jax.random.uniform(rng, valid.shape), 2.0)
  rank = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)
  count = jnp.floor(ratio * jnp.sum(valid, axis=1) + 0.5).astype(jnp.int32)
  return rank < count[:, None]


# ----------------------------------------------------------------------------
# The loss.
# ----------------------------------------------------------------------------
def distill_xent(student_logits, teacher_logits, center, *, student_temp,
                 teacher_temp, weights):
  """Weighted mean of H(softmax((t - center) / teacher_temp),
  softmax(s / student_temp)) over the leading axes (DINO's loss; the
  teacher's side centred and sharpened). `teacher_logits` broadcasts
  against `student_logits`; no gradient flows into it."""
  t = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32) - center)
  p_t = jax.nn.softmax(t / teacher_temp, axis=-1)
  log_p_s = jax.nn.log_softmax(student_logits.astype(jnp.float32)
                               / student_temp, axis=-1)
  xent = -jnp.sum(p_t * log_p_s, axis=-1)
  weights = jnp.broadcast_to(weights.astype(jnp.float32), xent.shape)
  return jnp.sum(weights * xent) / jnp.maximum(jnp.sum(weights), 1.0)


class SelfDistill:
  """The two terms and the teacher state of one config (see the module doc).

  `terms(params, batch, rng, teacher, step, total_steps)` -> ({term: loss},
  {center key: teacher logit mean}); `init_teacher(params)`,
  `update_teacher(teacher, new_params, step, stats, total_steps)` and
  `teacher_shardings(param_shardings, replicated)` are the train-state
  entry's life cycle (program.make_update_fn calls them).
  """

  def __init__(self, s: Settings, model, names):
    heads = getattr(model, "distill_heads", None)
    if heads is None:
      raise utils.ConfigError("config.model.distill_heads", (
          f"config.objectives has {', '.join(n for n in names if n in TERMS)}"
          ": they need the self-distillation heads, set "
          "config.model.distill_heads = dict(dim=..., patch_dim=...) "
          "(two_towers with image_model='naflex_vit')."))
    self.s, self.model = s, model
    self.names = tuple(n for n in TERMS if n in names)
    self.dims = {"global": heads.dim, "patch": heads.patch_dim}
    self.patch = tuple(model.img.patch_size)[0]
    self.channels = model.img.channels

  # -- the teacher's train-state entry --------------------------------------
  def init_teacher(self, params) -> dict:
    """A copy of the student's image tower and heads; zero centres."""
    return {"params": {k: jax.tree.map(jnp.copy, params[k])
                       for k in TEACHER_PARTS},
            "center": {CENTERS[n]: jnp.zeros((self.dims[CENTERS[n]],),
                                             jnp.float32)
                       for n in self.names}}

  def update_teacher(self, teacher, new_params, step, stats, total_steps):
    """After update `step`: the EMA (a copy before the start step, so that
    the teacher starts as the student) and the running centres."""
    active = step >= self.s.start_step(total_steps)
    decay = jnp.where(active, self.s.ema_decay, 0.0).astype(jnp.float32)
    params = jax.tree.map(
        lambda e, p: (decay * e + (1 - decay) * p).astype(e.dtype),
        teacher["params"], {k: new_params[k] for k in TEACHER_PARTS})
    m = self.s.center_momentum
    center = {k: jnp.where(active, m * c + (1 - m) * stats[k], c)
              for k, c in teacher["center"].items()}
    return {"params": params, "center": center}

  @staticmethod
  def teacher_shardings(param_shardings, replicated):
    """The teacher's params are sharded as the params they mirror."""
    return {"params": {k: param_shardings[k] for k in TEACHER_PARTS},
            "center": replicated}

  # -- the terms --------------------------------------------------------------
  def terms(self, params, batch, rng, teacher, step, total_steps):
    """({term: unweighted loss}, {centre: batch mean of teacher logits});
    all zeros (and nothing computed) before the start step."""
    def off(*_):
      return ({n: jnp.zeros((), jnp.float32) for n in self.names},
              jax.tree.map(jnp.zeros_like, teacher["center"]))
    active = step >= self.s.start_step(total_steps)
    return jax.lax.cond(active, self._on, off, params, batch["image"], rng,
                        teacher)

  def _on(self, params, image, rng, teacher):
    s, b = self.s, image.shape[0]
    r_box, r_mask, r_local, r_masked = jax.random.split(rng, 4)
    want_l2g = "local_to_global" in self.names
    want_mask = "masked_prediction" in self.names
    t_glob, t_patch, valid = self.model.apply(
        {"params": teacher["params"]}, image, train=False,
        pooled=want_l2g, patches=want_mask, method="distill_logits")
    t_glob, t_patch = jax.lax.stop_gradient((t_glob, t_patch))
    center = teacher["center"]
    xent = dict(student_temp=s.student_temp, teacher_temp=s.teacher_temp)
    parts, stats = {}, {}
    if want_l2g:
      _, grid_h, grid_w = image_grid(image)
      boxes = view_boxes(r_box, grid_h * self.patch, grid_w * self.patch,
                         s.local_views, s.local_scale)
      views = crop_views(image, boxes, s.local_grid, self.patch,
                         self.channels)
      s_glob, _, _ = self.model.apply(
          {"params": params}, views, train=True, pooled=True, patches=False,
          rngs={"dropout": r_local}, method="distill_logits")
      s_glob = s_glob.reshape(b, s.local_views, -1)
      parts["local_to_global"] = distill_xent(
          s_glob, t_glob[:, None], center["global"],
          weights=jnp.ones(s_glob.shape[:2]), **xent)
      stats["global"] = jnp.mean(t_glob, axis=0)
    if want_mask:
      mask = patch_mask(r_mask, valid, s.mask_ratio)
      _, s_patch, _ = self.model.apply(
          {"params": params}, image, train=True, patch_mask=mask,
          pooled=False, patches=True, rngs={"dropout": r_masked},
          method="distill_logits")
      parts["masked_prediction"] = distill_xent(
          s_patch, t_patch, center["patch"], weights=mask, **xent)
      w = valid[..., None].astype(jnp.float32)
      stats["patch"] = jnp.sum(t_patch * w, axis=(0, 1)) / jnp.maximum(
          jnp.sum(w), 1.0)
    return parts, stats


def make(config, model, names) -> Any:
  """SelfDistill for config (None when no self-distillation term is on)."""
  s = settings(config, names)
  return None if s is None else SelfDistill(s, model, names)
