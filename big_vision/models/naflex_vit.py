"""NaFlex ViT (SigLIP 2, Tschannen et al. 2025): native aspect ratio, a
variable number of patches, one model for every sequence length.

  model = naflex_vit.Model(num_classes=768, variant="B/16", posemb_grid=16,
                           pool_type="map")
  logits, out = model.apply({"params": p}, image, train=False)

`image` is the output of the pp op `naflex(seq_len, patch_size)`:
float32 [batch, seq_len, p*p*c + 3], each row a patch's pixels in (row,
column, channel) order followed by its row, its column and a validity flag
(1 for a real patch, 0 for padding). The sequence length is free: the same
parameters run at 64, 256 or 1024 patches.

The ViT's blocks are `vit.py`'s (encoder, MAP head, attention; same
options: scan, remat, bfloat16 matmuls, attention implementation); what
differs:
* The patch embedding is a dense layer on the flattened patches whose
  kernel is stored as vit's conv kernel `embedding/kernel` [p, p, c, width],
  so the parameters are exactly a ViT's of the same variant (a ViT
  checkpoint loads with `load`, and vice versa).
* The learned position embedding `pos_embedding` is a [1, gh*gw, width] grid
  (`posemb_grid`), resized per image to that image's own patch grid
  (rows, cols) by bilinear interpolation (half-pixel centres, edges clamped,
  no antialiasing: `resize_posemb_at`), then read at each patch's position.
  An image's grid is read from its tokens (largest valid row / column + 1).
* Padding is masked in every attention layer and in the pooling (MAP head's
  probe, or the mean for "gap"), so padding changes no output of a real
  patch nor the pooled embedding.

`out` holds "encoded" (the tokens after the encoder [batch, seq_len, width],
padding rows meaningless), "mask" (bool [batch, seq_len]), "pre_logits" and
"logits" (as vit). pool_type: "map" (SigLIP 2), "gap", or "none" (tokens).
"""
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from big_vision import utils
from big_vision.models import vit

# Channels after the patch pixels: row, column, valid (pp op `naflex`).
EXTRA = 3


def split_input(image, channels: int = 3):
  """(patches [b, l, d], rows int32 [b, l], cols int32, mask bool [b, l])."""
  patches = image[..., :-EXTRA]
  rows = image[..., -3].astype(jnp.int32)
  cols = image[..., -2].astype(jnp.int32)
  mask = image[..., -1] > 0.5
  del channels
  return patches, rows, cols, mask


def grid_size(rows, cols, mask):
  """Each image's patch grid (grid_h [b], grid_w [b]) from its tokens'
  (row, col) positions and padding mask: the largest real row/col + 1."""
  grid_h = jnp.max(jnp.where(mask, rows, 0), axis=1) + 1
  grid_w = jnp.max(jnp.where(mask, cols, 0), axis=1) + 1
  return grid_h, grid_w


def _bilinear_coords(pos, out_size, in_size):
  """Source indices (lo, hi) and weight of hi for output positions `pos` of
  a half-pixel-centred bilinear resize from `in_size` to `out_size`."""
  out_size = jnp.maximum(out_size, 1).astype(jnp.float32)
  src = (pos.astype(jnp.float32) + 0.5) * (in_size / out_size) - 0.5
  src = jnp.clip(src, 0.0, in_size - 1.0)
  lo = jnp.floor(src).astype(jnp.int32)
  hi = jnp.minimum(lo + 1, in_size - 1)
  return lo, hi, src - lo


def resize_posemb_at(posemb_grid, rows, cols, grid_h, grid_w):
  """The [gh, gw, d] grid resized to each image's (grid_h, grid_w) patch grid
  (bilinear, half-pixel centres, clamped edges, no antialiasing), read at
  each token's (row, col): [b, l, d].

  rows, cols: int [b, l]; grid_h, grid_w: int [b] (the image's grid).
  """
  gh, gw, _ = posemb_grid.shape
  y0, y1, wy = _bilinear_coords(rows, grid_h[:, None], gh)
  x0, x1, wx = _bilinear_coords(cols, grid_w[:, None], gw)
  at = lambda y, x: posemb_grid[y, x]
  wy, wx = wy[..., None], wx[..., None]
  return ((1 - wy) * ((1 - wx) * at(y0, x0) + wx * at(y0, x1))
          + wy * ((1 - wx) * at(y1, x0) + wx * at(y1, x1)))


class _Model(nn.Module):
  """NaFlex ViT. Prefer the `Model(...)` factory (validates options)."""
  num_classes: int | None = None
  patch_size: Sequence[int] = (16, 16)
  width: int = 768
  depth: int = 12
  mlp_dim: int | None = None
  num_heads: int = 12
  posemb_grid: Sequence[int] = (16, 16)
  channels: int = 3
  dropout: float = 0.0
  droppath_rate: float = 0.0
  pool_type: str = "map"
  head_zeroinit: bool = True
  scan: bool = False
  remat_policy: str = "none"
  dtype_mm: Any = "float32"
  attn_impl: str = "auto"
  logical_axes: bool = False  # As vit's (see vit.py's module doc).

  @nn.compact
  def __call__(self, image, *, train=False, patch_mask=None, mask_token=None):
    """`patch_mask` (bool [batch, seq_len], True: masked) with `mask_token`
    ([width]): those patches' embeddings are replaced by the token before
    the position embedding is added (SigLIP 2's masked prediction, TIPS /
    iBOT style); the token is a parameter of whoever masks (two_towers'
    `distill_heads`), so the tower's parameters stay a ViT's."""
    out = {}
    ph, pw = self.patch_size
    c = self.channels
    if image.ndim != 3 or image.shape[-1] != ph * pw * c + EXTRA:
      raise ValueError(
          f"naflex_vit takes the output of the pp op naflex(seq_len, "
          f"{ph}) for {c}-channel images: [batch, seq_len, {ph * pw * c} + "
          f"{EXTRA}], got {image.shape}.")
    patches, rows, cols, mask = split_input(image)
    dtype = jnp.dtype(self.dtype_mm)
    emb = _PatchEmbed(self.width, (ph, pw, c), dtype_mm=self.dtype_mm,
                      name="embedding")
    x = out["stem"] = emb(patches.astype(dtype))
    if patch_mask is not None:
      if mask_token is None:
        raise ValueError("naflex_vit: patch_mask needs a mask_token.")
      x = jnp.where(patch_mask[..., None], mask_token.astype(x.dtype), x)
    gh, gw = self.posemb_grid
    pe = vit._posemb_learn(self, gh, gw, self.width)  # pylint: disable=protected-access
    grid_h, grid_w = grid_size(rows, cols, mask)
    pe = resize_posemb_at(pe.reshape(gh, gw, self.width), rows, cols,
                          grid_h, grid_w)
    x = x + pe
    x = jnp.where(mask[..., None], x, 0.0)
    x = out["with_posemb"] = x
    x = nn.Dropout(rate=self.dropout)(x, not train)
    x, blocks = vit.Encoder(
        depth=self.depth, mlp_dim=self.mlp_dim, num_heads=self.num_heads,
        dropout=self.dropout, droppath_rate=self.droppath_rate,
        scan=self.scan, remat_policy=self.remat_policy,
        deterministic=not train, dtype_mm=self.dtype_mm,
        attn_impl=self.attn_impl, logical_axes=self.logical_axes,
        name="Transformer")(x, mask)
    out.update(blocks)
    out["encoded"] = x
    out["mask"] = mask
    if self.pool_type == "map":
      x = vit.MAPHead(mlp_dim=self.mlp_dim, num_heads=self.num_heads,
                      dtype_mm=self.dtype_mm, attn_impl=self.attn_impl,
                      logical_axes=self.logical_axes)(x, mask)
    elif self.pool_type == "gap":
      m = mask[..., None].astype(x.dtype)
      x = jnp.sum(x * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
    out["head_input"] = out["pre_logits"] = x
    if self.num_classes:
      kw = {"kernel_init": nn.initializers.zeros} if self.head_zeroinit else {}
      x = out["logits"] = nn.Dense(self.num_classes, name="head", **kw)(x)
    return x, out


class _PatchEmbed(nn.Module):
  """Dense on flattened patches, kernel stored as a conv's [p, p, c, width]
  (`embedding/kernel`, `embedding/bias`: vit's names and shapes)."""
  width: int
  kernel_shape: Sequence[int]
  dtype_mm: Any = "float32"

  @nn.compact
  def __call__(self, patches):
    kernel = self.param("kernel", nn.linear.default_kernel_init,
                        tuple(self.kernel_shape) + (self.width,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.width,),
                      jnp.float32)
    dtype = jnp.dtype(self.dtype_mm)
    k = kernel.reshape(-1, self.width).astype(dtype)
    y = jnp.einsum("bld,dw->blw", patches.astype(dtype), k,
                   preferred_element_type=jnp.float32)
    return y + bias


POOLS = ("map", "gap", "none")
_OPTIONS = tuple(f.name for f in _Model.__dataclass_fields__.values()
                 if f.name not in ("parent", "name", "num_classes"))


def Model(num_classes: int | None = None, *, variant: str | None = None,
          **kw) -> _Model:  # pylint: disable=invalid-name
  """The NaFlex ViT. `variant` ("B/16") sets the size and patch size;
  `posemb_grid` (int or pair) the learned position-embedding grid (SigLIP 2
  NaFlex: 16x16 for /16 models, the grid of 256-token pre-training).
  Explicit options win over the variant's; every option is validated."""
  cfg = {**vit.decode_variant(variant), **kw}
  for key in cfg:
    if key not in _OPTIONS:
      raise utils.unknown_name_error("naflex_vit option", key, _OPTIONS)
  if cfg.get("pool_type", "map") not in POOLS:
    raise utils.unknown_name_error("naflex_vit pool_type", cfg["pool_type"],
                                   POOLS)
  for key, default, valid in (("attn_impl", "auto", vit.ATTENTION_IMPLS),
                              ("remat_policy", "none", vit.REMAT_POLICIES)):
    if cfg.get(key, default) not in valid:
      raise utils.unknown_name_error(f"naflex_vit {key}", cfg[key], valid)
  for key in ("patch_size", "posemb_grid"):
    if key in cfg:
      cfg[key] = utils_pair(cfg[key], key)
  return _Model(num_classes=num_classes, **cfg)


def utils_pair(v, name):
  if isinstance(v, int):
    return (v, v)
  v = tuple(int(x) for x in v)
  if len(v) != 2:
    raise ValueError(f"naflex_vit {name} must be an int or a pair, got {v}.")
  return v


def load(init_params: Mapping, init_file, model_cfg=None,
         dont_load: Sequence[str] = ()) -> dict:
  """Loads a (NaFlex) ViT checkpoint: the parameters are a ViT's, so this is
  `vit.load` (layout conversions; a posemb of another grid is resampled)."""
  cfg = dict(model_cfg or {})
  vit_cfg = {k: v for k, v in cfg.items()
             if k in ("variant", "width", "depth", "mlp_dim", "num_heads",
                      "patch_size", "scan", "pool_type")}
  return vit.load(init_params, init_file, vit_cfg, dont_load=dont_load)
