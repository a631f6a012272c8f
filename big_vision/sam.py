"""Sharpness-aware gradients: SAM (Foret et al. 2021) and GSAM (Zhuang et al. 2022).

Both replace the gradient the optimizer sees; the optimizer itself (Adam,
momentum, clipping, weight decay) is unchanged. They cost a second forward
and backward pass per step, at the perturbed weights. The step
(`program.make_update_fn`) calls them on its own `value_and_grad_fn` (the
trainable parameters only, with accumulation over micro-batches inside), so
the perturbation is computed from the gradient of the whole global batch and
`accum_steps` still gives the large batch's update.

SAM:  e = rho * g / |g|                          (g = grad L(w))
      update direction g_p = grad L(w + e)
      `adaptive=True` is ASAM (Kwon et al. 2021): e = rho * T^2 g / |T g|
      with T = diag(|w|), so the ball is scaled per parameter.

GSAM: the surrogate gap h = L(w + e) - L(w) is ~ rho |g|; GSAM descends on
      the perturbed loss f_p = L(w + e) and, orthogonally to grad f_p, on h:
        g_perp = g - <g, u> u,  u = g_p / |g_p|    (g's part orthogonal to g_p)
        g_gsam = g_p - alpha * g_perp
      (`minimize_fp=False`: descend on L and the gap instead,
        g_gsam = g + alpha * (g_p - <g_p, v> v),  v = g / |g|).
      rho follows the learning rate (Algorithm 1 of the paper):
        rho_t = rho_min + (rho_max - rho_min) (lr_t - lr_min) / (lr_max - lr_min).
      rho_max == rho_min and alpha == 0 is SAM.

Config (keys as in big_vision's GSAM configs):
  config.sam = dict(rho=0.05, adaptive=False)
  config.gsam = dict(rho_max=0.6, rho_min=0.1, alpha=0.6, lr_max=config.lr,
                     lr_min=0.0, adaptive_perturbation=False, minimize_fp=True)

The loss reported is always the clean L(w); the perturbed one is in the
step's info as `sam/loss_perturbed` (and `gsam/rho`). jax only.
"""
from typing import Any, Callable

import jax
import jax.numpy as jnp

# (params) -> (loss, grads), the same tree structure as params.
ValueAndGrad = Callable[[Any], tuple[jax.Array, Any]]

SAM_KEYS = ("rho", "adaptive", "eps")
GSAM_KEYS = ("rho_max", "rho_min", "alpha", "lr_max", "lr_min",
             "adaptive_perturbation", "minimize_fp", "eps")


def vdot(a, b) -> jax.Array:
  """<a, b> over all leaves of two trees of the same structure (float32)."""
  return sum(jnp.vdot(x.astype(jnp.float32), y.astype(jnp.float32))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def norm(a) -> jax.Array:
  return jnp.sqrt(vdot(a, a))


def perturbation(params, grads, rho, adaptive: bool = False,
                 eps: float = 1e-12):
  """The ascent step e: rho g / |g| (SAM), or rho T^2 g / |T g| with
  T = |w| elementwise (ASAM). `eps` guards a zero gradient."""
  if adaptive:
    tg = jax.tree.map(lambda w, g: jnp.abs(w) * g, params, grads)
    scale = rho / (norm(tg) + eps)
    return jax.tree.map(lambda w, g: (scale * jnp.abs(w) * g).astype(w.dtype),
                        params, tg)
  scale = rho / (norm(grads) + eps)
  return jax.tree.map(lambda w, g: (scale * g).astype(w.dtype), params, grads)


def _add(a, b):
  return jax.tree.map(jnp.add, a, b)


def sam_grads(value_and_grad_fn: ValueAndGrad, params, rho,
              adaptive: bool = False, eps: float = 1e-12):
  """(clean loss, grad L(w + e), info): the SAM gradient at `params`."""
  loss, g = value_and_grad_fn(params)
  e = perturbation(params, g, rho, adaptive, eps)
  loss_p, g_p = value_and_grad_fn(_add(params, e))
  return loss, g_p, {"sam/loss_perturbed": loss_p}


def gsam_rho(lr, rho_max, rho_min, lr_max, lr_min):
  """rho_t, linear in the learning rate between (lr_min, rho_min) and
  (lr_max, rho_max); rho_max when the two learning rates are equal."""
  if lr_max == lr_min:
    return jnp.asarray(rho_max, jnp.float32)
  return rho_min + (rho_max - rho_min) * (lr - lr_min) / (lr_max - lr_min)


def gsam_grads(value_and_grad_fn: ValueAndGrad, params, rho, alpha,
               adaptive: bool = False, minimize_fp: bool = True,
               eps: float = 1e-12):
  """(clean loss, GSAM gradient, info) at `params` for a given rho."""
  loss, g = value_and_grad_fn(params)
  e = perturbation(params, g, rho, adaptive, eps)
  loss_p, g_p = value_and_grad_fn(_add(params, e))
  if minimize_fp:
    # grad h = g_p - g; its part orthogonal to g_p is -g_perp. Descending
    # on it leaves f_p unchanged to first order: g_p + alpha * (-g_perp).
    u_norm = norm(g_p) + eps
    coef = vdot(g, g_p) / (u_norm * u_norm)
    g_gsam = jax.tree.map(lambda gp, gc: gp - alpha * (gc - coef * gp),
                          g_p, g)
  else:
    v_norm = norm(g) + eps
    coef = vdot(g_p, g) / (v_norm * v_norm)
    g_gsam = jax.tree.map(lambda gc, gp: gc + alpha * (gp - coef * gc),
                          g, g_p)
  return loss, g_gsam, {"sam/loss_perturbed": loss_p}


def check_config(config) -> None:
  """Raises ValueError for unknown keys / both sam and gsam set."""
  sam, gsam = config.get("sam"), config.get("gsam")
  if sam and gsam:
    raise ValueError("config.sam and config.gsam are both set; choose one "
                     "(GSAM with rho_max == rho_min and alpha == 0 is SAM).")
  for name, value, keys, required in (("sam", sam, SAM_KEYS, ("rho",)),
                                      ("gsam", gsam, GSAM_KEYS,
                                       ("rho_max", "rho_min", "alpha"))):
    if not value:
      continue
    for k in dict(value):
      if k not in keys:
        raise ValueError(f"config.{name}: unknown key {k!r}; valid: "
                         f"{', '.join(keys)}.")
    for k in required:
      if k not in value:
        raise ValueError(f"config.{name} needs {k!r} (has "
                         f"{', '.join(dict(value)) or 'nothing'}).")


def from_config(config):
  """None, or fn(value_and_grad_fn, params, lr) -> (loss, grads, info) as
  chosen by `config.sam` / `config.gsam`. `lr` is the step's learning rate
  (a traced scalar, the `lr` of the step's info: with several schedule
  groups, the first group's); only GSAM's rho schedule reads it. `lr_max`
  defaults to config.lr, `lr_min` to 0 (the end of a cosine schedule; for
  big_vision's linear decay set it to linear_end * lr)."""
  check_config(config)
  if config.get("sam"):
    cfg = dict(config.sam)
    rho, adaptive = float(cfg["rho"]), bool(cfg.get("adaptive", False))
    eps = float(cfg.get("eps", 1e-12))

    def sam_fn(value_and_grad_fn, params, lr):
      del lr
      return sam_grads(value_and_grad_fn, params, rho, adaptive, eps)
    return sam_fn
  if config.get("gsam"):
    cfg = dict(config.gsam)
    rho_max, rho_min = float(cfg["rho_max"]), float(cfg["rho_min"])
    lr_max = float(cfg.get("lr_max", config.get("lr", 0.0)))
    lr_min = float(cfg.get("lr_min", 0.0))
    alpha = float(cfg["alpha"])
    adaptive = bool(cfg.get("adaptive_perturbation", False))
    minimize_fp = bool(cfg.get("minimize_fp", True))
    eps = float(cfg.get("eps", 1e-12))

    def gsam_fn(value_and_grad_fn, params, lr):
      if lr is None and lr_max != lr_min:
        raise ValueError("config.gsam: rho follows the learning rate, but "
                         "the step has no schedule to read it from.")
      rho = gsam_rho(lr, rho_max, rho_min, lr_max, lr_min)
      loss, g, info = gsam_grads(value_and_grad_fn, params, rho, alpha,
                                 adaptive, minimize_fp, eps)
      return loss, g, {**info, "gsam/rho": rho}
    return gsam_fn
  return None
