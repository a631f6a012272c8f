"""Optimizer and learning-rate schedules, built from a config.

`make(config, params, sched_kw=...)` is the single entry point the trainer
uses. It turns the optimizer keys of a config into one
`optax.GradientTransformation` whose update, for every non-frozen parameter p
with gradient g, is

    u  = optimizer(clip(g))                          # e.g. scale_by_adam
    p <- p - lr * s(t) * lr_mult(p) * u - wd * s(t) * wd_mult(p) * p

where s(t) is the schedule multiplier of p's schedule group at update t (0 for
the first update). Frozen parameters (schedule `None`) get exactly zero
updates and NO optimizer state, so a frozen tower costs no optimizer memory.

Config keys (ConfigDict or dict):
  optax_name: the direction-producing transform, WITHOUT its own learning rate
    (the learning rate is `lr` times the schedule, applied here). Plain names
    are looked up in `optax` (use the `scale_by_*` forms: "scale_by_adam",
    "scale_by_lion", "identity" for plain SGD); names starting with
    "big_vision." come from this module's registry (`OPTIMIZERS`):
    "big_vision.momentum_hp" (heavy-ball momentum with a bfloat16 accumulator)
    and "big_vision.scale_by_adafactor" (the factored, bf16-momentum Adafactor
    of "Scaling Vision Transformers").
  optax: kwargs of that transform. String values of keys ending in "dtype"
    ("bfloat16") become numpy/jax dtypes: dict(mu_dtype="bfloat16").
  lr: the base learning rate (required).
  schedule: one schedule dict for all parameters, or a list of
    `(regex, schedule_dict_or_None)`; the first regex that fully matches a
    parameter's '/'-joined name decides its schedule, `None` freezes it. Every
    parameter must be matched. Missing `schedule` means a constant multiplier.
    See `make_schedule` for the schedule dict.
  wd: decoupled weight decay per step, scaled by the schedule but not by lr.
  wd_mults: `(regex, mult)` list; default `[(".*/kernel$", 1.0)]`, i.e. decay
    kernels only. Parameters that match no pattern are not decayed.
  lr_mults: `(regex, mult)` list; parameters that match no pattern keep 1.0
    (lr_mults name the exceptions, e.g. `[("head/.*", 10.0)]`; requiring a
    catch-all pattern would only add boilerplate).
  grad_clip_norm: clip the global gradient norm (over non-frozen parameters)
    to this value, before the optimizer.
"""
import inspect
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from big_vision import utils

_PREFIX = "big_vision."


# ----------------------------------------------------------------------------
# Learning-rate schedules: step -> multiplier of config.lr.
# ----------------------------------------------------------------------------
# Each decay maps (step, warmup, total, **its own keys) to a multiplier that is
# 1 at the end of warmup. Warmup, cooldown and the min_lr floor are applied on
# top of it by `make_schedule`, identically for every decay type.
DECAYS = utils.Registry("decay_type", where="config.schedule")
_DECAY_ALIASES = {"poly": "polynomial", "const": "constant"}
_register_decay = DECAYS.register


def _progress(step, warmup, total):
  """Fraction of the post-warmup phase done: 0 at `warmup`, 1 at `total`."""
  return jnp.clip((step - warmup) / max(1, total - warmup), 0.0, 1.0)


@_register_decay("constant")
def _constant(step, warmup, total):
  del warmup, total
  return jnp.ones_like(step)


@_register_decay("cosine")
def _cosine(step, warmup, total, *, end=0.0):
  """end + (1 - end) * (1 + cos(pi * progress)) / 2."""
  p = _progress(step, warmup, total)
  return end + (1.0 - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * p))


@_register_decay("polynomial")
def _polynomial(step, warmup, total, *, power=1.0, end=0.0):
  """end + (1 - end) * (1 - progress) ** power."""
  p = _progress(step, warmup, total)
  return end + (1.0 - end) * (1.0 - p) ** power


@_register_decay("linear")
def _linear(step, warmup, total, *, end=0.0):
  """end + (1 - end) * (1 - progress): polynomial with power 1."""
  return _polynomial(step, warmup, total, power=1.0, end=end)


@_register_decay("rsqrt")
def _rsqrt(step, warmup, total, *, timescale=10_000):
  """1 / sqrt(1 + max(0, step - warmup) / timescale).

  Equals 1 at the end of warmup and halves after 3 * timescale more steps.
  Combined with a linear cooldown this is the "Scaling ViT" schedule: it does
  not depend on total_steps, so one run can be cooled down at several points.
  """
  del total
  return jax.lax.rsqrt(1.0 + jnp.maximum(step - warmup, 0.0) / timescale)


@_register_decay("stair")
def _stair(step, warmup, total, *, steps=(), mults=()):
  """mults[i - 1] once `step >= steps[i - 1]`, 1 before `steps[0]`."""
  del warmup, total
  if len(steps) != len(mults):
    raise ValueError(f"stair schedule needs as many mults as steps, got "
                     f"steps={list(steps)} and mults={list(mults)}.")
  if list(steps) != sorted(steps):
    raise ValueError(f"stair schedule steps must increase, got {list(steps)}.")
  i = jnp.searchsorted(jnp.asarray(steps, jnp.float32), step, side="right")
  return jnp.asarray([1.0, *mults], jnp.float32)[i]


_DURATION_SUFFIXES = ("steps", "epochs", "examples", "percent")
_COMMON_SCHEDULE_KEYS = (
    {"decay_type", "warmup_start", "min_lr"}
    | {f"{p}_{s}" for p in ("warmup", "cooldown") for s in _DURATION_SUFFIXES})


def _decay_keys(fn) -> set[str]:
  return {n for n, p in inspect.signature(fn).parameters.items()
          if p.kind == inspect.Parameter.KEYWORD_ONLY}


def make_schedule(sched: Mapping[str, Any] | None, *, total_steps: int,
                  batch_size: int | None = None, data_size: int | None = None,
                  base_lr: float | None = None) -> Callable[[Any], jax.Array]:
  """Returns `fn(step) -> float32 multiplier of the base learning rate`.

  The multiplier at update `step` (0-based) is

      warmup(step) * max(decay(step), min_lr / base_lr) * cooldown(step)

  * warmup: linear from `warmup_start` (default 0) at step 0 to 1 at step W,
    W = `warmup_steps|_epochs|_examples|_percent` (default 0: no warmup).
  * decay: by `decay_type` (default "constant"), over the steps [W, total]:
    "cosine"   end + (1 - end) (1 + cos(pi p)) / 2
    "linear"   end + (1 - end) (1 - p)
    "polynomial"/"poly"  end + (1 - end) (1 - p)^power
    "rsqrt"    1 / sqrt(1 + max(0, step - W) / timescale)   (timescale=1e4)
    "constant"/"const"  1
    "stair"    1, then mults[i] from step steps[i] on
    with p = clip((step - W) / (total - W), 0, 1) and `end` (alias
    `linear_end`, default 0) the final multiplier.
  * min_lr: optional floor on the decay, in absolute learning-rate units (it
    needs `base_lr`); warmup and cooldown still go down to their own values.
  * cooldown: linear from 1 at `total - C` to 0 at `total`,
    C = `cooldown_steps|_epochs|_examples|_percent` (default 0).

  Unknown keys, and keys of another decay type, raise a ValueError: a typo
  like `warmup_step` must not silently train without warmup.
  """
  sched = dict(sched or {})
  decay_type = sched.pop("decay_type", "constant")
  decay_type = _DECAY_ALIASES.get(decay_type, decay_type)
  decay_fn = DECAYS.lookup(decay_type, extra_names=_DECAY_ALIASES)
  if "linear_end" in sched:
    if "end" in sched:
      raise ValueError("Set only one of schedule keys 'end' and 'linear_end'.")
    sched["end"] = sched.pop("linear_end")
  own_keys = _decay_keys(decay_fn)
  valid = (_COMMON_SCHEDULE_KEYS | own_keys) - {"decay_type"}
  for key in sched:
    if key not in valid:
      raise utils.unknown_name_error(
          f"key for decay_type={decay_type!r}", key, valid,
          where="config.schedule")

  durations = dict(total_steps=total_steps, batch_size=batch_size,
                   data_size=data_size)
  warmup = utils.steps("warmup", sched, default=0, **durations)
  cooldown = utils.steps("cooldown", sched, default=0, **durations)
  warmup_start = float(sched.get("warmup_start", 0.0))
  decay_kw = {k: v for k, v in sched.items() if k in own_keys}
  floor = 0.0
  if sched.get("min_lr") is not None:
    if not base_lr:
      raise ValueError("schedule min_lr needs a non-zero base learning rate "
                       "(config.lr) to turn it into a multiplier.")
    floor = float(sched["min_lr"]) / float(base_lr)
  # Validate decay kwargs now (e.g. stair steps/mults), not at the first step.
  decay_fn(jnp.float32(0), warmup, total_steps, **decay_kw)

  def schedule_fn(step):
    step = jnp.asarray(step, jnp.float32)
    mult = jnp.maximum(decay_fn(step, warmup, total_steps, **decay_kw), floor)
    if warmup:
      mult *= warmup_start + (1.0 - warmup_start) * jnp.minimum(
          1.0, step / warmup)
    if cooldown:
      mult *= jnp.clip((total_steps - step) / cooldown, 0.0, 1.0)
    return jnp.asarray(mult, jnp.float32)

  return schedule_fn


# ----------------------------------------------------------------------------
# big_vision's own transforms (registry of "big_vision.<name>").
# ----------------------------------------------------------------------------
OPTIMIZERS = utils.Registry("optax_name", where="config.optax_name")


def _register_optimizer(name):
  return OPTIMIZERS.register(_PREFIX + name)


@_register_optimizer("momentum_hp")
def momentum_hp(momentum: float = 0.9, dtype: Any = jnp.bfloat16,
                nesterov: bool = False) -> optax.GradientTransformation:
  """Heavy-ball momentum `mu <- momentum * mu + g`, update `mu` (or Nesterov's
  `momentum * mu + g`), with the accumulator stored in `dtype`.

  "hp" = half precision: a bfloat16 accumulator halves the optimizer memory of
  float32 SGD-momentum. The update itself is computed in the gradient's
  precision; only the stored state is rounded.
  """
  return optax.trace(decay=momentum, nesterov=nesterov,
                     accumulator_dtype=dtype)


class FactoredState(NamedTuple):
  """Second-moment statistics of `scale_by_factored_second_moment`.

  v_row, v_col and v mirror the parameter tree. A factored leaf keeps v_row and
  v_col and a (1,) placeholder in v; an unfactored leaf keeps v and (1,)
  placeholders in v_row/v_col (placeholders keep the three trees the same
  structure, which sharding and checkpointing rely on).
  """
  count: jax.Array
  v_row: Any
  v_col: Any
  v: Any


def _factored_dims(shape, min_dim_size_to_factor):
  """(row_dim, col_dim) = (second largest, largest) dims, or None.

  A tensor is factored when both of its two largest dims are at least
  `min_dim_size_to_factor`; other dims act as batch dims of the statistics.
  """
  if len(shape) < 2:
    return None
  order = np.argsort(shape, kind="stable")
  row, col = int(order[-2]), int(order[-1])
  if shape[row] < min_dim_size_to_factor:
    return None
  return row, col


def adafactor_beta2(count, decay_rate: float = 0.8, decay_offset: int = 0,
                    beta2_cap: float = 0.999):
  """beta2_t = min(beta2_cap, 1 - (t + 1) ** -decay_rate).

  t = max(0, count - decay_offset), count = number of updates done before this
  one. beta2_0 = 0, so the first estimate is exactly g^2 (no bias correction
  needed). A positive `decay_offset` restarts this warm-up of the average,
  e.g. when fine-tuning from a checkpoint whose count is already large.
  """
  t = jnp.maximum(jnp.asarray(count, jnp.float32) - decay_offset, 0.0)
  return jnp.minimum(beta2_cap, 1.0 - (t + 1.0) ** (-decay_rate))


def scale_by_factored_second_moment(
    min_dim_size_to_factor: int = 32, decay_rate: float = 0.8,
    decay_offset: int = 0, beta2_cap: float = 0.999, eps: float = 1e-30,
) -> optax.GradientTransformation:
  """u = g / sqrt(v_hat), v_hat a (factored) EMA of g^2 + eps.

  For a factored leaf with row dim r and col dim c (see `_factored_dims`):
    v_row <- beta2 v_row + (1 - beta2) mean_c(g^2 + eps)
    v_col <- beta2 v_col + (1 - beta2) mean_r(g^2 + eps)
    v_hat = v_row (x) v_col / mean_r(v_row)
  which is Adafactor's rank-1 estimate, memory O(rows + cols). Other leaves
  keep the full EMA v. beta2 follows `adafactor_beta2`.
  """

  def init_fn(params):
    def one(p):
      dims = _factored_dims(p.shape, min_dim_size_to_factor)
      dummy = jnp.zeros((1,), jnp.float32)
      if dims is None:
        return dummy, dummy, jnp.zeros(p.shape, jnp.float32)
      row, col = dims
      v_row = jnp.zeros(np.delete(p.shape, col), jnp.float32)
      v_col = jnp.zeros(np.delete(p.shape, row), jnp.float32)
      return v_row, v_col, dummy

    leaves, treedef = jax.tree.flatten(params)
    stats = [one(p) for p in leaves]
    trees = [jax.tree.unflatten(treedef, [s[i] for s in stats])
             for i in range(3)]
    return FactoredState(jnp.zeros([], jnp.int32), *trees)

  def update_fn(updates, state, params=None):
    del params
    beta2 = adafactor_beta2(state.count, decay_rate, decay_offset, beta2_cap)

    def one(g, v_row, v_col, v):
      g32 = g.astype(jnp.float32)
      g2 = g32 * g32 + eps
      dims = _factored_dims(g.shape, min_dim_size_to_factor)
      if dims is None:
        v = beta2 * v + (1.0 - beta2) * g2
        return (g32 * jax.lax.rsqrt(v)).astype(g.dtype), v_row, v_col, v
      row, col = dims
      v_row = beta2 * v_row + (1.0 - beta2) * jnp.mean(g2, axis=col)
      v_col = beta2 * v_col + (1.0 - beta2) * jnp.mean(g2, axis=row)
      # v_row lacks `col`, so its row axis moved left by one if col < row.
      row_in_v_row = row - 1 if col < row else row
      mean_v_row = jnp.mean(v_row, axis=row_in_v_row, keepdims=True)
      v_hat = (jnp.expand_dims(v_row / mean_v_row, col)
               * jnp.expand_dims(v_col, row))
      return (g32 * jax.lax.rsqrt(v_hat)).astype(g.dtype), v_row, v_col, v

    leaves, treedef = jax.tree.flatten(updates)
    rows, cols, vs = (treedef.flatten_up_to(t)
                      for t in (state.v_row, state.v_col, state.v))
    out = [one(*args) for args in zip(leaves, rows, cols, vs)]
    new = [jax.tree.unflatten(treedef, [o[i] for o in out]) for i in range(4)]
    return new[0], FactoredState(optax.safe_increment(state.count), *new[1:])

  return optax.GradientTransformation(init_fn, update_fn)


@_register_optimizer("scale_by_adafactor")
def scale_by_adafactor(min_dim_size_to_factor: int = 32,
                       decay_rate: float = 0.8, decay_offset: int = 0,
                       beta2_cap: float = 0.999,
                       clipping_threshold: float | None = None,
                       momentum: float | None = 0.9,
                       dtype_momentum: Any = jnp.bfloat16,
                       eps: float = 1e-30) -> optax.GradientTransformation:
  """The Adafactor variant of "Scaling Vision Transformers" (Zhai et al.).

  Differences from the original Adafactor, each to make it train ViTs well
  at low memory: beta2 capped at `beta2_cap`; no update clipping by default
  (`clipping_threshold` enables per-tensor RMS clipping); no scaling by the
  parameter norm; and a first-moment EMA `mu <- m mu + (1 - m) u` (not
  debiased) stored in `dtype_momentum` (bfloat16: 2 bytes per parameter,
  which dominates the state; the second moment is O(rows + cols)).
  `momentum=None` drops the first moment and its state.
  """
  txs = [scale_by_factored_second_moment(
      min_dim_size_to_factor=min_dim_size_to_factor, decay_rate=decay_rate,
      decay_offset=decay_offset, beta2_cap=beta2_cap, eps=eps)]
  if clipping_threshold is not None:
    txs.append(optax.clip_by_block_rms(clipping_threshold))
  if momentum is not None:
    txs.append(optax.ema(momentum, debias=False,
                         accumulator_dtype=dtype_momentum))
  return optax.chain(*txs)


# ----------------------------------------------------------------------------
# Resolving config.optax_name / config.optax.
# ----------------------------------------------------------------------------
def _optax_scale_by_names() -> list[str]:
  return [n for n in dir(optax) if n.startswith("scale_by_")]


def get_transform_factory(name: str) -> Callable[..., Any]:
  """`optax_name` -> factory of a GradientTransformation (see module doc)."""
  if name.startswith(_PREFIX):
    return OPTIMIZERS.lookup(name)
  obj = optax
  for part in name.split("."):
    obj = getattr(obj, part, None)
  if not callable(obj):
    OPTIMIZERS.lookup(name, extra_names=_optax_scale_by_names(),
                      where="config.optax_name (an optax transform or "
                      "big_vision.*)")
  params = inspect.signature(obj).parameters
  if "learning_rate" in params:
    alt = f"scale_by_{name.rsplit('.', 1)[-1]}"
    alt = (f"optax_name={alt!r}" if hasattr(optax, alt)
           else "a scale_by_* transform")
    raise ValueError(
        f"optax_name={name!r} applies its own learning rate; big_vision "
        f"applies config.lr and config.schedule itself. Use {alt} instead.")
  return obj


def _resolve_kwargs(kw: Mapping[str, Any]) -> dict[str, Any]:
  """String dtypes -> dtypes; a config-given 'lr' is a mistake."""
  out = {}
  for k, v in dict(kw).items():
    if k in ("lr", "learning_rate"):
      raise ValueError(f"config.optax.{k} is not allowed: set config.lr (and "
                       "config.schedule) instead.")
    if k.endswith("dtype") and isinstance(v, str):
      try:
        v = jnp.dtype(v)
      except TypeError as e:
        raise ValueError(f"config.optax.{k}={v!r} is not a dtype.") from e
    out[k] = v
  return out


# ----------------------------------------------------------------------------
# The final step: -lr * s(t) * lr_mult * u - wd * s(t) * wd_mult * p.
# ----------------------------------------------------------------------------
class ScheduleState(NamedTuple):
  count: jax.Array


def _scale_by_lr_schedule_and_decay(lr, wd, sched_fns, group, lr_mult, wd_mult):
  """Per-leaf: frozen (group -1) -> 0; else the decoupled update of make()."""

  def init_fn(params):
    del params
    return ScheduleState(jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    mults = [fn(state.count) for fn in sched_fns]
    leaves, treedef = jax.tree.flatten(updates)
    needs_params = any(g >= 0 and wd * m for g, m in zip(group, wd_mult))
    if needs_params and params is None:
      raise ValueError("Weight decay needs `params` in tx.update(...).")
    p_leaves = treedef.flatten_up_to(params) if needs_params else leaves

    def one(u, p, g, lm, wm):
      if g < 0:
        return jnp.zeros_like(u)
      new = lr * lm * mults[g] * u
      if wd * wm:
        new = new + wd * wm * mults[g] * p
      return (-new).astype(u.dtype)

    out = [one(*a) for a in zip(leaves, p_leaves, group, lr_mult, wd_mult)]
    return (jax.tree.unflatten(treedef, out),
            ScheduleState(optax.safe_increment(state.count)))

  return optax.GradientTransformation(init_fn, update_fn)


def _as_rules(value, what) -> list[tuple[str, Any]]:
  try:
    rules = [(str(p), v) for p, v in value]
  except (TypeError, ValueError) as e:
    raise ValueError(f"config.{what} must be a list of (regex, value) pairs, "
                     f"got {value!r}.") from e
  return rules


def make(config: Mapping[str, Any], params, *,
         sched_kw: Mapping[str, Any], with_groups: bool = False):
  """Optimizer from config (see module docstring).

  Args:
    config: the experiment config (ConfigDict or dict).
    params: the parameter tree; only names and shapes are used, so a tree of
      jax.ShapeDtypeStruct (from jax.eval_shape) is fine.
    sched_kw: dict(total_steps=..., batch_size=..., data_size=...) for
      durations given in epochs/examples/percent.

  Returns:
    (tx, sched_fns): the transform, and one `step -> multiplier of config.lr`
    function per non-frozen schedule, in config order (for logging the lr).
    With `with_groups=True`: (tx, sched_fns, group names, trainable) where
    the names are the schedule regexes of the non-frozen groups and
    `trainable` is a tree like `params` of bools (False: frozen), which the
    train step uses to differentiate only what is trained.
  """
  if config.get("lr") is None:
    raise ValueError("config.lr (the base learning rate) is required.")
  lr = float(config.get("lr"))
  wd = float(config.get("wd") or 0.0)

  schedule = config.get("schedule")
  if isinstance(schedule, (list, tuple)):
    sched_rules = _as_rules(schedule, "schedule")
  else:
    sched_rules = [(".*", schedule if schedule is not None else {})]
  sched_fns, rule_group, group_names = [], [], []
  for pattern, sched in sched_rules:
    if sched is None:
      rule_group.append(-1)
    else:
      rule_group.append(len(sched_fns))
      group_names.append(pattern)
      sched_fns.append(make_schedule(sched, base_lr=lr, **sched_kw))

  named, _ = utils.tree_flatten_with_names(params)
  names = [n for n, _ in named]
  missing = object()
  group = [utils.match_rules(list(zip([p for p, _ in sched_rules], rule_group)),
                             n, default=missing) for n in names]
  uncovered = [n for n, g in zip(names, group) if g is missing]
  if uncovered:
    raise ValueError(
        f"{len(uncovered)} parameter(s) match no pattern of config.schedule "
        f"{[p for p, _ in sched_rules]}: {uncovered[:20]}"
        f"{' ...' if len(uncovered) > 20 else ''}. Add a pattern (a schedule "
        "dict, or None to freeze them).")

  lr_rules = _as_rules(config.get("lr_mults") or [], "lr_mults")
  wd_rules = _as_rules(config.get("wd_mults", [(".*/kernel$", 1.0)]) or [],
                       "wd_mults")
  for what, rules in (("lr_mults", lr_rules), ("wd_mults", wd_rules)):
    for p, m in rules:
      if float(m) < 0:
        raise ValueError(f"config.{what} has a negative multiplier {m} for "
                         f"{p!r}.")
  lr_mult = [float(utils.match_rules(lr_rules, n, default=1.0)) for n in names]
  wd_mult = [float(utils.match_rules(wd_rules, n, default=0.0)) for n in names]

  optax_name = config.get("optax_name")
  if not optax_name:
    raise ValueError("config.optax_name is required, e.g. 'scale_by_adam' or "
                     f"one of {sorted(OPTIMIZERS)}.")
  factory = get_transform_factory(optax_name)
  kw = _resolve_kwargs(config.get("optax") or {})
  try:
    opt = factory(**kw)
  except TypeError as e:
    raise ValueError(
        f"config.optax={kw!r} does not fit {optax_name}: {e}") from e

  inner = [opt]
  if config.get("grad_clip_norm"):
    clip = float(config.get("grad_clip_norm"))
    inner.insert(0, optax.clip_by_global_norm(clip))
  trainable = jax.tree.unflatten(jax.tree.structure(params),
                                 [g >= 0 for g in group])
  # masked: frozen leaves are MaskedNodes inside, i.e. hold no state at all,
  # and do not count towards the clipped global norm.
  tx = optax.chain(
      optax.masked(optax.chain(*inner), trainable),
      _scale_by_lr_schedule_and_decay(lr, wd, sched_fns, group, lr_mult,
                                      wd_mult))
  if with_groups:
    return tx, sched_fns, group_names, trainable
  return tx, sched_fns


def opt_state_bytes_per_param(tx: optax.GradientTransformation,
                              params) -> float:
  """Bytes of optimizer state per parameter (shapes only, nothing allocated).

  float32 Adam gives 8; the bf16-momentum Adafactor a little over 2.
  """
  state = jax.eval_shape(tx.init, params)
  return utils.tree_bytes(state) / max(1, utils.tree_count(params))
