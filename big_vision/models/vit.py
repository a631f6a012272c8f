"""Vision Transformer (Dosovitskiy et al. 2021), in the big_vision layout.

`Model(num_classes, variant="B/16", ...)` returns a flax.linen module;
`model.apply({"params": p}, images, train=False) -> (logits, out)`.

Parameter names and shapes are those of the published big_vision checkpoints
(`embedding`, `cls`, `pos_embedding`, `Transformer/encoderblock_{i}/...`,
`Transformer/encoder_norm`, `MAPHead_0`, `pre_logits`, `head`), so released
`.npz` files load unchanged. `load()` also reads the original vit_jax layout
and converts scanned <-> per-block layouts; `to_vit_jax()` exports to it.

Notes on choices that matter for compatibility:
* The class token is prepended AFTER the position embedding is added, so
  `pos_embedding` has one slot per patch and resamples as a clean grid.
  vit_jax added a posemb slot to the class token; converting folds that slot
  into `cls` (exact: token 0 = cls + posemb[0] in both cases).
* GELU is flax's default `nn.gelu` (tanh approximation); LayerNorm eps 1e-6.
* `dtype_mm="bfloat16"` runs the encoder's matmuls/convs in bfloat16 (params
  stay float32; flax's `dtype` argument casts at use). LayerNorm statistics,
  softmax, the residual stream and the pre_logits/head layers stay float32:
  the residual adds many small updates and the logits feed the loss.
* Sharding (big_vision/sharding.py): activations carry flax logical names
  ("act_batch", "act_len", "act_emb", "act_mlp", "act_heads", "act_kv")
  through `nn.with_logical_constraint`; they only constrain anything inside
  `sharding.activation_context` (the train step), so evaluation and
  single-device use are unaffected. `logical_axes=True` additionally boxes
  every parameter with its logical names ("embed", "mlp", "heads", "kv",
  "classes", and "layers" for the scanned depth axis) for the `logical`
  sharding tactic; `model.init` then returns `nn.LogicallyPartitioned`
  leaves (unbox with `flax.core.meta.unbox`); `apply` takes plain arrays
  either way. Names and shapes of the parameters do not change.
"""
import functools
import re
from typing import Any, Callable, Mapping, Sequence

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from big_vision import utils
from big_vision.models import common
from big_vision.models import resnet_stem


# ----------------------------------------------------------------------------
# Published sizes: name -> (width, depth, mlp_dim, num_heads).
# ----------------------------------------------------------------------------
VARIANTS = {
    "mu": (32, 1, 128, 2),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
    "G": (1664, 48, 8192, 16),
    "e": (1792, 56, 15360, 16),
}


def decode_variant(variant: str | None) -> dict[str, Any]:
  """"B/16" -> dict(width=768, depth=12, mlp_dim=3072, num_heads=12,
  patch_size=(16, 16)). The patch part is optional ("B")."""
  if variant is None:
    return {}
  name, _, patch = str(variant).partition("/")
  if name not in VARIANTS:
    raise utils.unknown_name_error("ViT variant", name, VARIANTS,
                                   where=f"variant={variant!r}")
  width, depth, mlp_dim, num_heads = VARIANTS[name]
  cfg = dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads)
  if patch:
    try:
      p = int(patch)
    except ValueError:
      raise ValueError(f"Bad patch size {patch!r} in variant {variant!r}; "
                       "expected e.g. 'B/16'.") from None
    cfg["patch_size"] = (p, p)
  return cfg


# ----------------------------------------------------------------------------
# Logical axes (see the module doc and big_vision/sharding.py).
# ----------------------------------------------------------------------------
class _Partitioned(nn.LogicallyPartitioned):
  """flax's logical box, tolerant of DenseGeneral's flat kernel init.

  DenseGeneral initialises a [width, heads, head_dim] kernel as a 2-D array,
  unboxes it (which, under a mesh, constrains it with the 3 logical names and
  fails on the rank) and only then reshapes it. The constraint is applied
  once the value has the rank its names describe.
  """

  def unbox(self, apply_constraint=True):
    if getattr(self.value, "ndim", len(self.names)) != len(self.names):
      return self.value
    return super().unbox(apply_constraint)


def _boxed(init, names, on: bool):
  """`init`, annotated with logical axis `names` when `on`."""
  if not on:
    return init

  @functools.wraps(init)
  def boxed(*args, **kwargs):
    return _Partitioned(init(*args, **kwargs), names)
  return boxed


def _constrain(x, names):
  """Activation sharding constraint by logical names; a no-op outside
  sharding.activation_context (no rules or no mesh)."""
  return nn.with_logical_constraint(x, names)


_ACT = ("act_batch", "act_len", "act_emb")


# ----------------------------------------------------------------------------
# Attention implementations: (q, k, v) [batch, len, heads, head_dim] -> same.
# ----------------------------------------------------------------------------
def _attention_einsum(q, k, v, mask=None):
  """Plain einsums; logits and softmax in float32 whatever the input dtype.
  `mask` (optional, bool, broadcastable to [batch, heads, q, k]): False
  entries get no attention."""
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k,
                      preferred_element_type=jnp.float32) * scale
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def _attention_dpa(q, k, v, implementation=None, mask=None):
  """jax.nn.dot_product_attention: fused (flash) kernels where available."""
  return jax.nn.dot_product_attention(q, k, v, mask=mask,
                                      implementation=implementation)


ATTENTION_IMPLS: dict[str, Callable[..., Any]] = {
    "auto": _attention_dpa,  # jax picks (cuDNN on suitable GPUs, else XLA).
    "xla": functools.partial(_attention_dpa, implementation="xla"),
    "cudnn": functools.partial(_attention_dpa, implementation="cudnn"),
    "einsum": _attention_einsum,
}

# jax.checkpoint_policies usable by name ("none" = no rematerialisation).
REMAT_POLICIES = ("none",) + tuple(
    name for name in ("nothing_saveable", "everything_saveable",
                      "dots_saveable", "checkpoint_dots",
                      "dots_with_no_batch_dims_saveable",
                      "checkpoint_dots_with_no_batch_dims")
    if hasattr(jax.checkpoint_policies, name))


# ----------------------------------------------------------------------------
# Building blocks.
# ----------------------------------------------------------------------------
class MultiHeadDotProductAttention(nn.Module):
  """Multi-head attention with the flax/big_vision parameter layout:
  {query,key,value}/kernel [width, heads, head_dim], out/kernel
  [heads, head_dim, width]; xavier_uniform kernels, zero biases."""
  num_heads: int
  dtype_mm: Any = "float32"
  attn_impl: str = "auto"
  logical_axes: bool = False

  @nn.compact
  def __call__(self, inputs_q, inputs_kv, mask=None):
    """`mask`: None, bool [batch, kv length] (False keys, e.g. padding, get
    no attention: NaFlex) or bool [batch, q length, kv length] (causal)."""
    width = inputs_q.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads "
                       f"{self.num_heads}.")
    head_dim = width // self.num_heads
    on = self.logical_axes
    dense = functools.partial(
        nn.DenseGeneral, features=(self.num_heads, head_dim), axis=-1,
        kernel_init=_boxed(nn.initializers.xavier_uniform(),
                           ("embed", "heads", "kv"), on),
        bias_init=_boxed(nn.initializers.zeros, ("heads", "kv"), on),
        dtype=jnp.dtype(self.dtype_mm))
    qkv_names = ("act_batch", "act_len", "act_heads", "act_kv")
    q = _constrain(dense(name="query")(inputs_q), qkv_names)
    k = _constrain(dense(name="key")(inputs_kv), qkv_names)
    v = _constrain(dense(name="value")(inputs_kv), qkv_names)
    if mask is None:
      x = ATTENTION_IMPLS[self.attn_impl](q, k, v)
    else:
      # [batch, kv] (key padding) or [batch, q, kv] (e.g. causal).
      m = mask[:, None, None, :] if mask.ndim == 2 else mask[:, None]
      x = ATTENTION_IMPLS[self.attn_impl](q, k, v, mask=m)
    x = _constrain(x, qkv_names)
    return nn.DenseGeneral(
        features=width, axis=(-2, -1),
        kernel_init=_boxed(nn.initializers.xavier_uniform(),
                           ("heads", "kv", "embed"), on),
        bias_init=_boxed(nn.initializers.zeros, ("embed",), on),
        dtype=jnp.dtype(self.dtype_mm), name="out")(x)


class MlpBlock(nn.Module):
  """Dense -> GELU(tanh) -> Dropout -> Dense, big_vision's inits."""
  mlp_dim: int | None = None  # Defaults to 4 * width.
  dropout: float = 0.0
  dtype_mm: Any = "float32"
  logical_axes: bool = False

  @nn.compact
  def __call__(self, x, deterministic=True):
    on = self.logical_axes
    xavier = nn.initializers.xavier_uniform()
    tiny = nn.initializers.normal(stddev=1e-6)
    dtype = jnp.dtype(self.dtype_mm)
    width = x.shape[-1]
    x = nn.Dense(self.mlp_dim or 4 * width, dtype=dtype,
                 kernel_init=_boxed(xavier, ("embed", "mlp"), on),
                 bias_init=_boxed(tiny, ("mlp",), on))(x)
    x = nn.gelu(x)
    x = _constrain(x, ("act_batch",) + ("act_len",) * (x.ndim - 2)
                   + ("act_mlp",))
    x = nn.Dropout(rate=self.dropout)(x, deterministic)
    return nn.Dense(width, dtype=dtype,
                    kernel_init=_boxed(xavier, ("mlp", "embed"), on),
                    bias_init=_boxed(tiny, ("embed",), on))(x)


def _layer_norm(logical_axes: bool, name: str | None = None):
  return nn.LayerNorm(
      epsilon=1e-6, name=name,
      scale_init=_boxed(nn.initializers.ones, ("embed",), logical_axes),
      bias_init=_boxed(nn.initializers.zeros, ("embed",), logical_axes))


def _drop_path(module: nn.Module, x, rate):
  """Stochastic depth: zeroes a whole residual branch per example with
  probability `rate` (may be a traced scalar under nn.scan), rescaling the
  survivors so the expectation is unchanged."""
  keep = 1.0 - jnp.asarray(rate, jnp.float32)
  mask = jax.random.bernoulli(module.make_rng("dropout"), keep,
                              (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(mask, x / keep.astype(x.dtype), jnp.zeros_like(x))


class Encoder1DBlock(nn.Module):
  """Pre-LN transformer block. Returns (x, x) so it also serves as an
  nn.scan body (carry, per-layer output)."""
  mlp_dim: int | None = None
  num_heads: int = 12
  dropout: float = 0.0
  use_droppath: bool = False  # Static: droppath_rate > 0 and training.
  deterministic: bool = True
  dtype_mm: Any = "float32"
  attn_impl: str = "auto"
  logical_axes: bool = False

  @nn.compact
  def __call__(self, x, droppath_rate=0.0, mask=None):
    def residual(x, y):
      y = nn.Dropout(rate=self.dropout)(y, self.deterministic)
      if self.use_droppath:
        y = _drop_path(self, y, droppath_rate)
      return _constrain(x + y, _ACT)

    x = _constrain(x, _ACT)
    y = _layer_norm(self.logical_axes)(x)
    y = MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype_mm=self.dtype_mm,
        attn_impl=self.attn_impl, logical_axes=self.logical_axes)(y, y, mask)
    x = residual(x, y)
    y = _layer_norm(self.logical_axes)(x)
    y = MlpBlock(mlp_dim=self.mlp_dim, dropout=self.dropout,
                 dtype_mm=self.dtype_mm, logical_axes=self.logical_axes)(
                     y, self.deterministic)
    x = residual(x, y)
    return x, x


class Encoder(nn.Module):
  """Stack of `depth` blocks + final LayerNorm ("encoder_norm").

  scan=True runs one block body under nn.scan (params stacked on axis 0,
  compile time independent of depth); remat_policy wraps each block in
  nn.remat (gradient checkpointing) with that jax.checkpoint_policies policy.
  Stochastic depth grows linearly from 0 (first block) to droppath_rate
  (last block).

  Measured on CPU (tools/bench_vit.py): remat only lowers peak memory
  together with scan=True; unscanned, XLA's CPU scheduler runs the
  recomputation early and temp memory stays as without remat.
  """
  depth: int
  mlp_dim: int | None = None
  num_heads: int = 12
  dropout: float = 0.0
  droppath_rate: float = 0.0
  scan: bool = False
  remat_policy: str = "none"
  deterministic: bool = True
  dtype_mm: Any = "float32"
  attn_impl: str = "auto"
  logical_axes: bool = False

  @nn.compact
  def __call__(self, x, mask=None):
    """`mask`: None, or bool [batch, length]: False tokens (padding) are
    never attended to (their own outputs are meaningless)."""
    out = {}
    rates = np.linspace(0.0, self.droppath_rate, self.depth)
    block_kw = dict(
        mlp_dim=self.mlp_dim, num_heads=self.num_heads, dropout=self.dropout,
        use_droppath=bool(self.droppath_rate > 0 and not self.deterministic),
        deterministic=self.deterministic, dtype_mm=self.dtype_mm,
        attn_impl=self.attn_impl, logical_axes=self.logical_axes)
    block_cls = Encoder1DBlock
    if self.remat_policy != "none":
      block_cls = nn.remat(
          block_cls, policy=getattr(jax.checkpoint_policies, self.remat_policy),
          # Under scan the loop already prevents CSE across the remat boundary.
          prevent_cse=not self.scan)
    if self.scan:
      scanned = nn.scan(
          block_cls, variable_axes={"params": 0},
          split_rngs={"params": True, "dropout": True},
          in_axes=(0, nn.broadcast), length=self.depth,
          metadata_params={nn.PARTITION_NAME: "layers"})
      x, per_layer = scanned(name="encoderblock", **block_kw)(
          x, jnp.asarray(rates, jnp.float32), mask)
      for i in range(self.depth):
        out[f"block{i:02d}"] = per_layer[i]
    else:
      for i in range(self.depth):
        x, out[f"block{i:02d}"] = block_cls(
            name=f"encoderblock_{i}", **block_kw)(x, float(rates[i]), mask)
    out["pre_ln"] = x
    return _layer_norm(self.logical_axes, name="encoder_norm")(x), out


class MAPHead(nn.Module):
  """Multihead attention pooling: one learned query ("probe") attends over
  all tokens, then a residual MLP (Lee et al. 2019; used by ViT-G, SigLIP)."""
  mlp_dim: int | None = None
  num_heads: int = 12
  dtype_mm: Any = "float32"
  attn_impl: str = "auto"
  logical_axes: bool = False

  @nn.compact
  def __call__(self, x, mask=None):
    """`mask`: None, or bool [batch, length]: the probe ignores False tokens."""
    n, _, d = x.shape
    on = self.logical_axes
    probe = self.param(
        "probe", _boxed(nn.initializers.xavier_uniform(),
                        (None, None, "embed"), on), (1, 1, d), jnp.float32)
    probe = jnp.broadcast_to(probe, (n, 1, d))
    x = MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype_mm=self.dtype_mm,
        attn_impl=self.attn_impl, logical_axes=on)(probe, x, mask)
    y = _layer_norm(on)(x)
    x = x + MlpBlock(mlp_dim=self.mlp_dim, dtype_mm=self.dtype_mm,
                     logical_axes=on)(y)
    return x[:, 0]


# ----------------------------------------------------------------------------
# Registries: position embeddings and pooling.
# ----------------------------------------------------------------------------
def posemb_sincos_2d(h: int, w: int, width: int, temperature: float = 1e4,
                     dtype=jnp.float32):
  """Fixed 2D sin-cos embedding [1, h*w, width] (MoCo v3 / big_vision).

  Channels: [sin(x*f), cos(x*f), sin(y*f), cos(y*f)], each width/4 wide,
  frequencies f = temperature**(-i/(width/4 - 1)); tokens row-major.
  """
  if width % 4:
    raise ValueError(f"sincos2d posemb needs width divisible by 4, got {width}.")
  quarter = width // 4
  y, x = np.mgrid[:h, :w]
  freqs = 1.0 / temperature ** (np.arange(quarter) / max(quarter - 1, 1))
  ax = x.reshape(-1)[:, None] * freqs[None]
  ay = y.reshape(-1)[:, None] * freqs[None]
  pe = np.concatenate([np.sin(ax), np.cos(ax), np.sin(ay), np.cos(ay)], 1)
  return jnp.asarray(pe[None], dtype)


def _posemb_learn(module, h, w, width):
  return module.param(
      "pos_embedding",
      _boxed(nn.initializers.normal(stddev=1 / np.sqrt(width)),
             (None, None, "embed"), module.logical_axes),
      (1, h * w, width), jnp.float32)


def _posemb_sincos2d(module, h, w, width):
  del module
  return posemb_sincos_2d(h, w, width)


POSEMBS = {"learn": _posemb_learn, "sincos2d": _posemb_sincos2d}


# Each: (model, encoded [n, l, d]) -> (head input, grid tokens [n, h*w, d]).
def _pool_tok(model, x):
  del model
  return x[:, 0], x[:, 1:]


def _pool_gap(model, x):
  del model
  return jnp.mean(x, axis=1), x


def _pool_map(model, x):
  head = MAPHead(mlp_dim=model.mlp_dim, num_heads=model.num_heads,
                 dtype_mm=model.dtype_mm, attn_impl=model.attn_impl,
                 logical_axes=model.logical_axes)
  return head(x), x


def _pool_none(model, x):
  del model
  return x, x


POOLS = {"tok": _pool_tok, "gap": _pool_gap, "map": _pool_map,
         "none": _pool_none}


# ----------------------------------------------------------------------------
# FlexiViT (Beyer et al. 2023): one set of weights for every patch size.
# ----------------------------------------------------------------------------
def resize_image(x, shape):
  """The image resize PI-resize is defined against: bilinear, half-pixel
  centres, no antialiasing (TF's `tf.image.resize`, as in the paper), on the
  leading two (spatial) axes of `x`."""
  shape = tuple(shape) + tuple(x.shape[2:])
  return jax.image.resize(x, shape, method="bilinear", antialias=False)


@functools.lru_cache(maxsize=None)
def resize_matrix(old: tuple[int, int], new: tuple[int, int]) -> np.ndarray:
  """B [new_h*new_w, old_h*old_w]: `resize_image` as a matrix on flattened
  (row-major) images; column i is the resized i-th basis image."""
  n = old[0] * old[1]
  with jax.ensure_compile_time_eval():  # Concrete even inside a trace.
    basis = jnp.eye(n, dtype=jnp.float32).reshape(n, *old)
    cols = jax.vmap(lambda e: resize_image(e, new))(basis)
    return np.asarray(cols, np.float64).reshape(n, -1).T


@functools.lru_cache(maxsize=None)
def pi_resize_matrix(old: tuple[int, int], new: tuple[int, int]) -> np.ndarray:
  """P [new_h*new_w, old_h*old_w] = pinv(B^T): the kernel w_new = P w with
  <x, w> = <B x, w_new> for every patch x when upsampling (B has full column
  rank), and the least-squares best such w_new when downsampling."""
  return np.linalg.pinv(resize_matrix(old, new).T).astype(np.float32)


def pi_resize(kernel, new_hw):
  """PI-resize (FlexiViT, Sec. 3.4) of a patch-embedding kernel
  [h, w, *rest] (e.g. [h, w, in, out]) to [new_h, new_w, *rest]."""
  old, new = tuple(kernel.shape[:2]), tuple(int(v) for v in new_hw)
  if old == new:
    return kernel
  p = jnp.asarray(pi_resize_matrix(old, new), kernel.dtype)
  flat = kernel.reshape((old[0] * old[1], -1))
  return (p @ flat).reshape(new + tuple(kernel.shape[2:]))


def resize_posemb_grid(posemb, old_grid, new_grid):
  """Bilinear resize (jnp, differentiable) of a [1, gh*gw, D] posemb."""
  old_grid, new_grid = tuple(old_grid), tuple(new_grid)
  if old_grid == new_grid:
    return posemb
  d = posemb.shape[-1]
  grid = posemb.reshape(old_grid + (d,))
  # As common.resample_posemb (checkpoint loading): antialiased when
  # shrinking, so a plain ViT loaded from a FlexiViT computes the same.
  out = jax.image.resize(grid, new_grid + (d,), method="bilinear")
  return out.reshape((1, new_grid[0] * new_grid[1], d))


class _FlexiEmbedding(nn.Module):
  """The patch embedding with an underlying `base_patch` kernel (named
  `embedding/kernel`, `embedding/bias` like the plain conv), PI-resized to
  the patch size of the call."""
  width: int
  base_patch: Sequence[int]
  dtype_mm: Any = "float32"
  logical_axes: bool = False

  @nn.compact
  def __call__(self, x, patch):
    on = self.logical_axes
    kernel = self.param(
        "kernel", _boxed(nn.linear.default_kernel_init,
                         (None, None, None, "embed"), on),
        tuple(self.base_patch) + (x.shape[-1], self.width), jnp.float32)
    bias = self.param("bias", _boxed(nn.initializers.zeros, ("embed",), on),
                      (self.width,), jnp.float32)
    dtype = jnp.dtype(self.dtype_mm)
    kernel = pi_resize(kernel, patch).astype(dtype)
    y = jax.lax.conv_general_dilated(
        x.astype(dtype), kernel, window_strides=tuple(patch), padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias.astype(dtype)


# ----------------------------------------------------------------------------
# The model.
# ----------------------------------------------------------------------------
class _Model(nn.Module):
  """ViT. Prefer the `Model(...)` factory, which validates the options."""
  num_classes: int | None = None
  patch_size: Sequence[int] = (16, 16)
  width: int = 768
  depth: int = 12
  mlp_dim: int | None = None  # Defaults to 4 * width.
  num_heads: int = 12
  posemb: str = "learn"
  rep_size: int | bool = False
  dropout: float = 0.0
  droppath_rate: float = 0.0
  pool_type: str = "gap"
  head_zeroinit: bool = True
  init_head_bias: float | None = None
  scan: bool = False
  remat_policy: str = "none"
  dtype_mm: Any = "float32"
  attn_impl: str = "auto"
  logical_axes: bool = False
  # Hybrid: dict(num_layers=50, width=1) runs the ViT-paper ResNet stem first
  # and puts a (patch_size / stem stride) `embedding` conv on its feature map.
  resnet: Any = None
  # FlexiViT: the underlying patch-embedding kernel size and learned posemb
  # grid; the call's patch size (default `patch_size`) resizes both.
  flexi_base_patch: Sequence[int] | None = None
  flexi_posemb_grid: Sequence[int] | None = None

  @nn.compact
  def __call__(self, image, *, train=False, patch_size=None):
    out = {}
    patch = tuple(self.patch_size if patch_size is None else
                  ((patch_size,) * 2 if isinstance(patch_size, int)
                   else patch_size))
    if patch_size is not None and self.flexi_base_patch is None:
      raise ValueError("patch_size= at call time needs a FlexiViT "
                       "(flexi_base_patch set).")
    x = image
    if self.resnet is not None:
      # Created in this scope, so names match the released hybrids
      # (conv_root, gn_root, block1/unit1/..., next to embedding).
      x = out["resnet"] = resnet_stem.build(x, **self.resnet)
      stride = resnet_stem.output_stride(self.resnet.get("num_layers", 50))
      patch = (patch[0] // stride, patch[1] // stride)
    on = self.logical_axes
    if self.flexi_base_patch is not None:
      x = out["stem"] = _FlexiEmbedding(
          self.width, tuple(self.flexi_base_patch), dtype_mm=self.dtype_mm,
          logical_axes=on, name="embedding")(x, patch)
    else:
      x = out["stem"] = nn.Conv(
          self.width, patch, strides=patch, padding="VALID", name="embedding",
          kernel_init=_boxed(nn.linear.default_kernel_init,
                             (None, None, None, "embed"), on),
          bias_init=_boxed(nn.initializers.zeros, ("embed",), on),
          dtype=jnp.dtype(self.dtype_mm))(x)
    n, h, w, c = x.shape
    x = jnp.reshape(x, (n, h * w, c))
    if self.flexi_posemb_grid is not None and self.posemb == "learn":
      gh, gw = self.flexi_posemb_grid
      pe = resize_posemb_grid(_posemb_learn(self, gh, gw, c), (gh, gw),
                              (h, w))
    else:
      pe = POSEMBS[self.posemb](self, h, w, c)
    x = out["with_posemb"] = _constrain(x + pe, _ACT)
    if self.pool_type == "tok":
      cls = self.param("cls", _boxed(nn.initializers.zeros,
                                     (None, None, "embed"), on),
                       (1, 1, c), jnp.float32)
      x = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, c)).astype(x.dtype),
                           x], axis=1)
    x = nn.Dropout(rate=self.dropout)(x, not train)

    x, blocks = Encoder(
        depth=self.depth, mlp_dim=self.mlp_dim, num_heads=self.num_heads,
        dropout=self.dropout, droppath_rate=self.droppath_rate,
        scan=self.scan, remat_policy=self.remat_policy,
        deterministic=not train, dtype_mm=self.dtype_mm,
        attn_impl=self.attn_impl, logical_axes=on, name="Transformer")(x)
    out.update(blocks)
    out["encoded"] = x

    x, tokens = POOLS[self.pool_type](self, x)
    out["head_input"] = x
    x_2d = jnp.reshape(tokens, (n, h, w, -1))

    if self.rep_size:
      rep_size = self.width if self.rep_size is True else int(self.rep_size)
      pre_logits = nn.Dense(
          rep_size, name="pre_logits",
          kernel_init=_boxed(nn.linear.default_kernel_init,
                             ("embed", "pre_logits"), on),
          bias_init=_boxed(nn.initializers.zeros, ("pre_logits",), on))
      x, x_2d = nn.tanh(pre_logits(x)), nn.tanh(pre_logits(x_2d))
    out["pre_logits"], out["pre_logits_2d"] = x, x_2d

    if self.num_classes:
      kernel_init = (nn.initializers.zeros if self.head_zeroinit
                     else nn.linear.default_kernel_init)
      bias_init = (nn.initializers.zeros if self.init_head_bias is None
                   else nn.initializers.constant(self.init_head_bias))
      head_in = "pre_logits" if self.rep_size else "embed"
      head = nn.Dense(
          self.num_classes, name="head",
          kernel_init=_boxed(kernel_init, (head_in, "classes"), on),
          bias_init=_boxed(bias_init, ("classes",), on))
      x = out["logits"] = head(x)
      out["logits_2d"] = head(x_2d)
    return x, out


_OPTIONS = tuple(f.name for f in _Model.__dataclass_fields__.values()
                 if f.name not in ("parent", "name", "num_classes"))


def _check_choice(kind, value, valid):
  if value not in valid:
    raise utils.unknown_name_error(kind, value, valid)


def Model(num_classes: int | None = None, *, variant: str | None = None,
          **kw) -> _Model:  # pylint: disable=invalid-name
  """The ViT module. `variant` ("B/16") gives the size; explicit kw win.

  Options (see _Model): patch_size, width, depth, mlp_dim, num_heads,
  posemb ("learn"|"sincos2d"), rep_size (int or True=width), dropout,
  droppath_rate, pool_type ("tok"|"gap"|"map"|"none"), head_zeroinit,
  init_head_bias, scan, remat_policy ("none" or a jax.checkpoint_policies
  name), dtype_mm ("float32"|"bfloat16"), attn_impl
  ("auto"|"xla"|"cudnn"|"einsum"), logical_axes (box params with flax
  logical axis names for sharding's `logical` tactic), resnet (hybrid stem, e.g.
  dict(num_layers=50, width=1) for R50+ViT-B/16; patch_size stays in input
  pixels), flexi_base_patch / flexi_posemb_grid (FlexiViT: the underlying
  kernel and learned-posemb grid, resized to `patch_size` or to the call's
  `patch_size=` argument: PI-resize for the kernel, bilinear for the posemb).

  Every option is validated here, so a typo fails before any compute.
  """
  cfg = {**decode_variant(variant), **kw}
  for key in cfg:
    if key not in _OPTIONS:
      raise utils.unknown_name_error("ViT option", key, _OPTIONS)
  if "patch_size" in cfg:
    p = cfg["patch_size"]
    cfg["patch_size"] = (p, p) if isinstance(p, int) else tuple(p)
  if cfg.get("resnet") is not None:
    resnet = dict(cfg["resnet"])
    for key in resnet:
      if key not in ("num_layers", "width"):
        raise utils.unknown_name_error("ViT resnet option", key,
                                       ("num_layers", "width"))
    stride = resnet_stem.output_stride(resnet.get("num_layers", 50))
    patch = cfg.get("patch_size", (16, 16))
    if patch[0] % stride or patch[1] % stride:
      raise ValueError(
          f"ViT hybrid: patch_size {patch} (in input pixels) must be a "
          f"multiple of the ResNet stem's stride {stride}.")
    cfg["resnet"] = resnet
  _check_choice("ViT pool_type", cfg.get("pool_type", "gap"), POOLS)
  _check_choice("ViT posemb", cfg.get("posemb", "learn"), POSEMBS)
  _check_choice("ViT attn_impl", cfg.get("attn_impl", "auto"), ATTENTION_IMPLS)
  _check_choice("ViT remat_policy", cfg.get("remat_policy", "none"),
                REMAT_POLICIES)
  dtype = cfg.get("dtype_mm", "float32")
  try:
    jnp.dtype(dtype)
  except TypeError:
    raise utils.unknown_name_error(
        "ViT dtype_mm", dtype, ("float32", "bfloat16", "float16")) from None
  if "patch_size" in cfg:
    p = cfg["patch_size"]
    cfg["patch_size"] = (p, p) if isinstance(p, int) else tuple(p)
  for key in ("flexi_base_patch", "flexi_posemb_grid"):
    if cfg.get(key) is not None:
      v = cfg[key]
      cfg[key] = (v, v) if isinstance(v, int) else tuple(v)
  if cfg.get("flexi_posemb_grid") is not None and cfg.get(
      "flexi_base_patch") is None:
    raise ValueError("flexi_posemb_grid needs flexi_base_patch (FlexiViT).")
  if cfg.get("flexi_base_patch") is not None and cfg.get("resnet"):
    raise ValueError("FlexiViT (flexi_base_patch) has no ResNet stem.")
  if not 0.0 <= cfg.get("droppath_rate", 0.0) < 1.0:
    raise ValueError(f"droppath_rate must be in [0, 1), got "
                     f"{cfg['droppath_rate']}.")
  return _Model(num_classes=num_classes, **cfg)


# ----------------------------------------------------------------------------
# Checkpoint layouts.
# ----------------------------------------------------------------------------
# Original ViT paper code (google-research/vision_transformer) names inside
# each encoder block -> big_vision names.
_VIT_JAX_BLOCK_RENAMES = {
    "MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0",
    "LayerNorm_2": "LayerNorm_1",
    "MlpBlock_3": "MlpBlock_0",
}
_BLOCK_PREFIX = "Transformer/encoderblock"


def _rename_in_blocks(flat: Mapping[str, Any], renames: Mapping[str, str]):
  out = {}
  for name, leaf in flat.items():
    parts = name.split("/")
    if (len(parts) > 2 and parts[0] == "Transformer"
        and parts[1].startswith("encoderblock")):
      parts[2] = renames.get(parts[2], parts[2])
    out["/".join(parts)] = leaf
  return out


def _slot_split(pe):
  """[1, 1+N, D] -> ([1, 1, D], [1, N, D]); works on ShapeDtypeStructs."""
  if isinstance(pe, jax.ShapeDtypeStruct):
    (b, n, d), dt = pe.shape, pe.dtype
    return (jax.ShapeDtypeStruct((b, 1, d), dt),
            jax.ShapeDtypeStruct((b, n - 1, d), dt))
  pe = np.asarray(pe)
  return pe[:, :1], pe[:, 1:]


def from_vit_jax(params: Mapping) -> dict:
  """Converts older layouts to the big_vision one (no-op if already there).

  Handles: the vit_jax block names (MultiHeadDotProductAttention_1,
  LayerNorm_2, MlpBlock_3); posemb under Transformer/posembed_input or
  Transformer/; a class-token slot in the posemb (folded into `cls`); and an
  inlined MAP head (top-level `probe`).
  """
  flat = _rename_in_blocks(utils.flatten_dict(params), _VIT_JAX_BLOCK_RENAMES)
  pe, from_vit_jax_module = None, False
  for old in ("Transformer/posembed_input/pos_embedding",
              "Transformer/pos_embedding"):
    if old in flat:
      pe, from_vit_jax_module = flat.pop(old), True
  if pe is None:
    pe = flat.pop("pos_embedding", None)
  if pe is not None:
    n = pe.shape[1]
    old_bv_cls_slot = (int(round(np.sqrt(n - 1))) ** 2 == n - 1 and
                       int(round(np.sqrt(n))) ** 2 != n)
    if "cls" in flat and (from_vit_jax_module or old_bv_cls_slot):
      logging.info("ViT: folding the class token's posemb slot into cls.")
      pe_cls, pe = _slot_split(pe)
      if not isinstance(pe_cls, jax.ShapeDtypeStruct):
        flat["cls"] = np.asarray(flat["cls"]) + pe_cls.astype(
            np.asarray(flat["cls"]).dtype)
    flat["pos_embedding"] = pe
  if "probe" in flat:
    for name in list(flat):
      if name.split("/")[0] in ("probe", "MultiHeadDotProductAttention_0",
                                "LayerNorm_0", "MlpBlock_0"):
        flat["MAPHead_0/" + name] = flat.pop(name)
  return utils.unflatten_dict(flat)


def to_vit_jax(params: Mapping) -> dict:
  """big_vision layout -> original vit_jax layout (per-block, posemb under
  Transformer/posembed_input with a zero class-token slot when there is a
  class token). Exact inverse of `from_vit_jax` for such trees."""
  params = common.scan_to_pyloop(params, _BLOCK_PREFIX)
  inverse = {v: k for k, v in _VIT_JAX_BLOCK_RENAMES.items()}
  flat = _rename_in_blocks(utils.flatten_dict(params), inverse)
  if "pos_embedding" in flat:
    pe = flat.pop("pos_embedding")
    if "cls" in flat:
      if isinstance(pe, jax.ShapeDtypeStruct):
        b, n, d = pe.shape
        pe = jax.ShapeDtypeStruct((b, n + 1, d), pe.dtype)
      else:
        pe = np.asarray(pe)
        pe = np.concatenate([np.zeros_like(pe[:, :1]), pe], axis=1)
    flat["Transformer/posembed_input/pos_embedding"] = pe
  return utils.unflatten_dict(flat)


def load(init_params: Mapping | None, init_file, model_cfg=None,
         dont_load: Sequence[str] = ()) -> dict:
  """Loads a ViT checkpoint into the layout of `init_params`.

  Args:
    init_params: freshly initialised params of the target model (arrays or
      ShapeDtypeStructs), or None to just convert the checkpoint to the
      big_vision layout (scanned iff model_cfg["scan"]).
    init_file: path to an `.npz` (local or gs://, optionally ":img"-style
      sub-model), a workdir, a released short name ("howto-i21k-B/32",
      "i1k-s16-300ep", see `common.RELEASED`), or an already loaded tree;
      `params/` / `opt/target/` prefixes are stripped, and the vit_jax
      layout is converted (`from_vit_jax`).
    model_cfg: the model's config; only used when init_params is None.
    dont_load: regexes of parameter names that keep their fresh init (and may
      be absent from, or differently shaped in, the checkpoint).

  Returns:
    Nested dict of numpy arrays, structured like `init_params`. Position
    embeddings are resampled to the model's grid when it differs. Anything
    missing, unexpected or of the wrong shape raises a ValueError naming it.
  """
  restored = common.read_checkpoint(init_file, model_cfg, "vit")
  restored = from_vit_jax(restored)

  restored = common.match_scan_layout(restored, init_params, model_cfg,
                                      _BLOCK_PREFIX)
  if init_params is None:
    return restored

  if isinstance(dont_load, str):
    dont_load = (dont_load,)
  skip = lambda name: any(re.fullmatch(p, name) for p in dont_load)
  if ("pos_embedding" in restored and "pos_embedding" in init_params
      and not skip("pos_embedding")):
    old, new = restored["pos_embedding"], init_params["pos_embedding"]
    # A different width is a different model: merge_params reports it along
    # with everything else that differs.
    if (tuple(old.shape) != tuple(new.shape)
        and old.shape[-1] == new.shape[-1]):
      restored = dict(restored)
      restored["pos_embedding"] = common.resample_posemb(old, new)
  # A patch-embedding kernel of another patch size (a FlexiViT checkpoint,
  # or a ViT loaded at a new patch size): PI-resized (FlexiViT, Sec. 3.4).
  kernel = (restored.get("embedding") or {}).get("kernel")
  new = (init_params.get("embedding") or {}).get("kernel")
  if (kernel is not None and new is not None and not skip("embedding/kernel")
      and not isinstance(kernel, jax.ShapeDtypeStruct)
      and kernel.ndim == 4 and tuple(kernel.shape[2:]) == tuple(new.shape[2:])
      and tuple(kernel.shape[:2]) != tuple(new.shape[:2])):
    logging.info("ViT: PI-resizing the patch embedding %s -> %s.",
                 kernel.shape[:2], new.shape[:2])
    restored = dict(restored)
    restored["embedding"] = {**restored["embedding"], "kernel": np.asarray(
        pi_resize(np.asarray(kernel, np.float32), new.shape[:2]),
        np.asarray(kernel).dtype)}
  return common.merge_params(restored, init_params, dont_load)

