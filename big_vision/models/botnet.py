"""BoTNet: a ResNet whose last stage attends instead of convolving.

Bottleneck Transformers for Visual Recognition (Srinivas et al. 2021,
https://arxiv.org/abs/2101.11605). Take a ResNet-50 and, in its last stage
(c5: three bottleneck units), replace every 3x3 convolution by global
multi-head self-attention (MHSA, 4 heads) over the 2-D feature map, with 2-D
relative position encodings: the logit of query position (x, y) for key
position (x', y') is

    q . k  +  q . (r_h[x' - x] + r_w[y' - y])          (q scaled by d^-0.5)

where r_h (2H-1 offsets) and r_w (2W-1 offsets) are learned, one vector of
the head dimension d per offset, shared by the heads (as in the paper's
released TF code), and one pair per unit. Where c5 strides (BoT50), the
first unit attends at the input resolution and then 2x2 average-pools with
stride 2 (the paper's Sec. 3 / Fig. 4 design); `c5_stride=1` is the paper's
BoT-S1-50 (c5 keeps c4's resolution).

Everything else is the paper's ResNet-50 (v1.5, post-activation: stride in
the 3x3 conv, projection shortcut with stride), except the normalisation:
this codebase's trainer keeps no batch statistics, so every BatchNorm of the
paper is a GroupNorm (32 groups) and every conv is weight-standardised,
BiT-style (`bit.StdConv`, `bit.GroupNorm`). GroupNorm has exactly BatchNorm's
trainable parameters (a scale and an offset per channel), so the parameter
counts are the paper's:

  BoT50 (c5 stride 2) at 224px, 1000 classes:     20,852,008
    = ResNet-50's 25,557,032 - 3 x (3x3 conv 512^2 x 9 - q,k,v 3 x 512^2)
      + relative embeddings (27 + 27) x 128 + 2 x (13 + 13) x 128
  BoT-S1-50 (c5 stride 1) at 224px:               20,859,176
The paper prints ResNet-50 as 25.5M and BoT50 as 20.8M: its counts are
truncated to 0.1M (25,557,032 -> 25.5M), and both of ours truncate to 20.8M.
The relative embeddings are sized by the feature map at init, so a model
runs at the resolution it was initialised for (as in the paper).

Parameter tree (no published big_vision checkpoint exists to match):

  stem_conv/kernel, stem_gn/{gamma,beta}
  stage{i}_unit{j:02d}/{conv1,conv2,conv3,proj}/kernel   (conv2: conv stages)
  stage{i}_unit{j:02d}/{gn1,gn2,gn3,proj_gn}/{gamma,beta}
  stage4_unit{j:02d}/mhsa/{query,key,value}/kernel       (C, heads, C/heads)
  stage4_unit{j:02d}/mhsa/{rel_height,rel_width}          (2H-1 | 2W-1, C/heads)
  head/{kernel,bias}
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from big_vision import utils
from big_vision.models import bit
from big_vision.models import common


# ----------------------------------------------------------------------------
# Relative-position self-attention (pure functions, then the module).
# ----------------------------------------------------------------------------
def relative_logits(q, rel_h, rel_w):
  """Position logits of 2-D relative attention.

  Args:
    q: [N, H, W, heads, d] queries (already scaled).
    rel_h: [2H-1, d]; row H-1+o embeds a key o rows below the query.
    rel_w: [2W-1, d]; row W-1+o embeds a key o columns right of the query.

  Returns:
    [N, heads, H, W, H, W]: out[n, h, x, y, x2, y2] =
      q[n, x, y, h] . (rel_h[x2 - x + H - 1] + rel_w[y2 - y + W - 1]).
  """
  _, h, w, _, _ = q.shape
  if rel_h.shape[0] != 2 * h - 1 or rel_w.shape[0] != 2 * w - 1:
    raise ValueError(
        f"Relative embeddings of {rel_h.shape[0]}x{rel_w.shape[0]} offsets "
        f"do not fit a {h}x{w} feature map (need {2 * h - 1}x{2 * w - 1}); "
        "BoTNet runs at the resolution it was initialised for.")
  # Offset of every (query, key) pair, shifted to a row index.
  idx_h = jnp.arange(h)[None, :] - jnp.arange(h)[:, None] + h - 1  # [x, x2]
  idx_w = jnp.arange(w)[None, :] - jnp.arange(w)[:, None] + w - 1  # [y, y2]
  logits_h = jnp.einsum("nxyhd,xkd->nhxyk", q, rel_h[idx_h])
  logits_w = jnp.einsum("nxyhd,ykd->nhxyk", q, rel_w[idx_w])
  return logits_h[..., :, None] + logits_w[..., None, :]


def relpos_attention(q, k, v, rel_h, rel_w):
  """Global 2-D self-attention with relative logits; [N, H, W, heads*d] out.

  q, k, v: [N, H, W, heads, d]. Softmax over all H*W key positions of
  (q . k + relative_logits) with q scaled by d^-0.5 in both terms.
  """
  n, h, w, heads, d = q.shape
  q = q * d**-0.5
  logits = jnp.einsum("nxyhd,nabhd->nhxyab", q, k)
  logits = logits + relative_logits(q, rel_h, rel_w)
  weights = jax.nn.softmax(logits.reshape(n, heads, h, w, h * w), axis=-1)
  out = jnp.einsum("nhxyp,nphd->nxyhd", weights,
                   v.reshape(n, h * w, heads, d))
  return out.reshape(n, h, w, heads * d)


class RelPosSelfAttention(nn.Module):
  """MHSA of the BoT block: bias-free q, k, v projections, 2-D rel. logits."""
  num_heads: int = 4

  @nn.compact
  def __call__(self, x):
    _, h, w, c = x.shape
    if c % self.num_heads:
      raise ValueError(f"BoTNet MHSA: {c} channels not divisible by "
                       f"{self.num_heads} heads.")
    d = c // self.num_heads
    proj = lambda name: nn.DenseGeneral(  # pylint: disable=g-long-lambda
        (self.num_heads, d), use_bias=False, name=name)(x)
    q, k, v = proj("query"), proj("key"), proj("value")
    init = nn.initializers.normal(stddev=d**-0.5)
    rel_h = self.param("rel_height", init, (2 * h - 1, d))
    rel_w = self.param("rel_width", init, (2 * w - 1, d))
    return relpos_attention(q, k, v, rel_h.astype(x.dtype),
                            rel_w.astype(x.dtype))


# ----------------------------------------------------------------------------
# The ResNet (v1.5, post-activation) around it.
# ----------------------------------------------------------------------------
def _conv(features, kernel_size, strides=1, name=None):
  pad = (kernel_size - 1) // 2  # Symmetric, as TF/PyTorch ResNets.
  return bit.StdConv(features, kernel_size, strides,
                     padding=((pad, pad), (pad, pad)), name=name)


class Bottleneck(nn.Module):
  """1x1 -> (3x3 conv | MHSA [+ 2x2 avg-pool]) -> 1x1 (x4), each GN'd."""
  mid: int
  strides: int = 1
  attention: bool = False
  num_heads: int = 4

  @nn.compact
  def __call__(self, x):
    out = 4 * self.mid
    shortcut = x
    if self.strides != 1 or x.shape[-1] != out:
      shortcut = _conv(out, 1, self.strides, name="proj")(x)
      shortcut = bit.GroupNorm(name="proj_gn")(shortcut)
    y = nn.relu(bit.GroupNorm(name="gn1")(_conv(self.mid, 1, name="conv1")(x)))
    if self.attention:
      y = RelPosSelfAttention(self.num_heads, name="mhsa")(y)
      if self.strides != 1:
        s = (self.strides, self.strides)
        y = nn.avg_pool(y, s, strides=s)
    else:
      y = _conv(self.mid, 3, self.strides, name="conv2")(y)
    y = nn.relu(bit.GroupNorm(name="gn2")(y))
    y = bit.GroupNorm(name="gn3")(_conv(out, 1, name="conv3")(y))
    return nn.relu(y + shortcut)


class _Model(nn.Module):
  """Stem, conv stages, the BoT stage (always the last), GAP, linear head."""
  num_classes: int | None = None
  depth: int | Sequence[int] = 50
  width: int = 1
  num_heads: int = 4
  c5_stride: int = 2
  head_zeroinit: bool = True

  @nn.compact
  def __call__(self, image, *, train: bool = False):
    del train  # No dropout, no batch statistics: train and eval agree.
    out = {}
    w0 = 64 * self.width
    x = _conv(w0, 7, 2, name="stem_conv")(image)
    x = nn.relu(bit.GroupNorm(name="stem_gn")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    out["stem"] = x
    blocks = bit.blocks_for(self.depth)
    for i, units in enumerate(blocks):
      last = i == len(blocks) - 1
      stride = (self.c5_stride if last else 2) if i else 1
      for j in range(units):
        x = Bottleneck(w0 * 2**i, stride if j == 0 else 1, attention=last,
                       num_heads=self.num_heads,
                       name=f"stage{i + 1}_unit{j + 1:02d}")(x)
      out[f"stage{i + 1}"] = x
    out["pre_logits_2d"] = x
    out["pre_logits"] = x = jnp.mean(x, axis=(1, 2))
    if self.num_classes:
      init = (nn.initializers.zeros if self.head_zeroinit
              else nn.initializers.lecun_normal())
      out["logits"] = x = nn.Dense(self.num_classes, kernel_init=init,
                                   name="head")(x)
    return x, out


VARIANTS = {"BoT50": dict(depth=50, c5_stride=2),
            "BoT-S1-50": dict(depth=50, c5_stride=1),
            "BoT101": dict(depth=101, c5_stride=2),
            "BoT-S1-101": dict(depth=101, c5_stride=1)}


def Model(num_classes: int | None = None, *, variant: str | None = None,
          **kw) -> Any:  # pylint: disable=invalid-name
  """BoTNet: `Model(1000, variant="BoT50")` or `Model(10, depth=(1, 1))`.

  Keywords (explicit ones override the variant's): depth (26, 50, 101, 152,
  or units per stage such as (1, 1); the last stage is the BoT stage), width
  (channel multiplier of 64), num_heads (4), c5_stride (2: BoT50, 1:
  BoT-S1), head_zeroinit.
  """
  if variant is not None and variant not in VARIANTS:
    raise utils.unknown_name_error("BoTNet variant", variant, VARIANTS)
  kw = {**VARIANTS.get(variant, {}), **kw}
  fields = {"depth", "width", "num_heads", "c5_stride", "head_zeroinit"}
  for k in kw:
    if k not in fields:
      raise utils.unknown_name_error("BoTNet Model argument", k, fields)
  if isinstance(kw.get("depth"), list):  # Configs may hold lists.
    kw["depth"] = tuple(kw["depth"])
  bit.blocks_for(kw.get("depth", 50))  # Fail early on a bad depth.
  if kw.get("c5_stride", 2) not in (1, 2):
    raise ValueError(f"BoTNet c5_stride={kw['c5_stride']!r}: 1 or 2.")
  return _Model(num_classes=num_classes, **kw)


def load(init_params: Any, init_file: Any, model_cfg: Any = None,
         dont_load: Sequence[str] = ()) -> Any:
  """Loads an exported BoTNet `.npz` (path or dict) into `init_params`."""
  del model_cfg
  if isinstance(init_file, str):
    from big_vision import checkpoint  # pylint: disable=g-import-not-at-top
    init_file = checkpoint.load_params(init_file)
  return common.merge_params(init_file, init_params, dont_load)

