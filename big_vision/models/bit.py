"""BiT: ResNet v2 with GroupNorm and weight-standardised convolutions.

Big Transfer (Kolesnikov et al., https://arxiv.org/abs/1912.11370) trains
pre-activation bottleneck ResNets whose convolutions standardise their kernel
(Weight Standardization, https://arxiv.org/abs/1903.10520) and whose
normalisation is GroupNorm. Both are independent of the batch, which is what
makes these nets transfer well at any batch size (no BatchNorm statistics).

The parameter tree mirrors the released BiT `.npz` files exactly, so a
`np.load`-ed `BiT-M-R50x1.npz` applies unchanged:

  resnet/root_block/standardized_conv2d/kernel            (7, 7, 3, 64w)
  resnet/block1/unit01/a/group_norm/{gamma,beta}          (Cin,)
  resnet/block1/unit01/a/standardized_conv2d/kernel       (1, 1, Cin, 64w)
  resnet/block1/unit01/a/proj/standardized_conv2d/kernel  (1, 1, Cin, 256w)
  resnet/block1/unit01/{b,c}/...                           3x3 and 1x1 convs
  resnet/group_norm/{gamma,beta}                          (2048w,)
  resnet/head/conv2d/{kernel,bias}                        (1, 1, 2048w, N)

Numerics follow the released TF code: kernels standardised as
(w - mean) / sqrt(var + 1e-10) over [H, W, Cin]; GroupNorm with 32 groups and
eps 1e-5; the root conv and 3x3 convs pad symmetrically (not XLA's 'SAME',
which pads asymmetrically under stride 2); the root max-pool pads with zeros.
"""
import re
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from big_vision import utils
from big_vision.models import common

# Units per block for each published depth.
DEPTHS = {
    26: (2, 2, 2, 2),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


# ----------------------------------------------------------------------------
# Building blocks shared with the hybrid ViT stem (resnet_stem.py).
# ----------------------------------------------------------------------------
def standardize_kernel(w, *, eps: float, eps_in_sqrt: bool = True):
  """Zero mean, unit variance per output channel over [H, W, Cin].

  BiT adds eps to the variance (eps_in_sqrt=True, eps=1e-10); the vit_jax
  hybrid adds it to the standard deviation (eps_in_sqrt=False, eps=1e-5).
  Pretrained weights only reproduce their logits with their own formula.
  """
  axes = tuple(range(w.ndim - 1))
  w = w - jnp.mean(w, axis=axes, keepdims=True)
  var = jnp.mean(jnp.square(w), axis=axes, keepdims=True)
  if eps_in_sqrt:
    return w * jax.lax.rsqrt(var + eps)
  return w / (jnp.sqrt(var) + eps)


class StdConv(nn.Module):
  """Bias-free 2D convolution whose kernel is standardised before use.

  The stored parameter `kernel` is the raw (unstandardised) tensor, as in the
  released checkpoints; standardisation happens on every call so that the
  optimiser sees a reparametrisation, not a projection.
  """
  features: int
  kernel_size: int = 1
  strides: int = 1
  padding: Any = "SAME"  # "SAME", "VALID" or explicit ((lo, hi), (lo, hi)).
  eps: float = 1e-10
  eps_in_sqrt: bool = True
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param("kernel", self.kernel_init,
                        (k, k, x.shape[-1], self.features))
    kernel = standardize_kernel(kernel, eps=self.eps,
                                eps_in_sqrt=self.eps_in_sqrt)
    return jax.lax.conv_general_dilated(
        x, kernel.astype(x.dtype), (self.strides, self.strides), self.padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def group_norm(x, gamma, beta, *, num_groups: int = 32, eps: float = 1e-5):
  """GroupNorm over [H, W, C/G] of NHWC `x`; the formula, no parameters."""
  n, h, w, c = x.shape
  if c % num_groups:
    raise ValueError(f"GroupNorm: {c} channels not divisible by {num_groups} "
                     "groups.")
  g = x.reshape(n, h, w, num_groups, c // num_groups).astype(jnp.float32)
  mean = jnp.mean(g, axis=(1, 2, 4), keepdims=True)
  var = jnp.mean(jnp.square(g - mean), axis=(1, 2, 4), keepdims=True)
  g = (g - mean) * jax.lax.rsqrt(var + eps)
  return (g.reshape(n, h, w, c) * gamma + beta).astype(x.dtype)


class GroupNorm(nn.Module):
  """GroupNorm with BiT's parameter names (gamma, beta) and eps 1e-5."""
  num_groups: int = 32
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    gamma = self.param("gamma", nn.initializers.ones, (c,))
    beta = self.param("beta", nn.initializers.zeros, (c,))
    return group_norm(x, gamma, beta, num_groups=self.num_groups, eps=self.eps)


def _sym_pad(kernel_size: int):
  """Padding of TF's BiT: (k-1)//2 before, the rest after, on both axes."""
  lo = (kernel_size - 1) // 2
  hi = kernel_size - 1 - lo
  return ((lo, hi), (lo, hi))


# ----------------------------------------------------------------------------
# ResNet v2 with BiT names.
# ----------------------------------------------------------------------------
class _ConvScope(nn.Module):
  """A scope holding a single `standardized_conv2d`, as BiT's TF layers nest."""
  features: int
  kernel_size: int = 1
  strides: int = 1

  @nn.compact
  def __call__(self, x):
    return StdConv(self.features, self.kernel_size, self.strides,
                   padding=_sym_pad(self.kernel_size),
                   name="standardized_conv2d")(x)


class _PreactConv(nn.Module):
  """One of a unit's 'a', 'b', 'c': GroupNorm -> ReLU -> StdConv.

  Unit 'a' may also own the projection shortcut (`a/proj/...`): BiT projects
  the *pre-activated* input, so it is computed here and returned alongside.
  """
  features: int
  kernel_size: int = 1
  strides: int = 1
  proj_features: int | None = None
  proj_strides: int = 1

  @nn.compact
  def __call__(self, x):
    x = nn.relu(GroupNorm(name="group_norm")(x))
    shortcut = None
    if self.proj_features:
      shortcut = _ConvScope(self.proj_features, 1, self.proj_strides,
                            name="proj")(x)
    y = StdConv(self.features, self.kernel_size, self.strides,
                padding=_sym_pad(self.kernel_size),
                name="standardized_conv2d")(x)
    return y, shortcut


class BottleneckV2(nn.Module):
  """Pre-activation bottleneck: 1x1 (mid), 3x3 (mid, stride), 1x1 (4 mid)."""
  mid: int
  strides: int = 1

  @nn.compact
  def __call__(self, x):
    out = 4 * self.mid
    needs_proj = self.strides != 1 or x.shape[-1] != out
    y, shortcut = _PreactConv(
        self.mid, 1, proj_features=out if needs_proj else None,
        proj_strides=self.strides, name="a")(x)
    y, _ = _PreactConv(self.mid, 3, self.strides, name="b")(y)
    y, _ = _PreactConv(out, 1, name="c")(y)
    return y + (x if shortcut is None else shortcut)


class _Block(nn.Module):
  """`units` bottlenecks named unit01, unit02, ...; the first one strides."""
  units: int
  mid: int
  first_strides: int

  @nn.compact
  def __call__(self, x):
    for j in range(self.units):
      x = BottleneckV2(self.mid, self.first_strides if j == 0 else 1,
                       name=f"unit{j + 1:02d}")(x)
    return x


class _Head(nn.Module):
  """BiT's head is a 1x1 conv on the pooled features (`head/conv2d`)."""
  num_classes: int
  zeroinit: bool = True

  @nn.compact
  def __call__(self, x):
    init = (nn.initializers.zeros if self.zeroinit
            else nn.initializers.lecun_normal())
    y = nn.Conv(self.num_classes, (1, 1), kernel_init=init,
                name="conv2d")(x[:, None, None, :])
    return y[:, 0, 0, :]


class ResNetV2(nn.Module):
  """The network under the `resnet/` scope of the released checkpoints."""
  num_classes: int | None
  blocks: Sequence[int]
  width: int = 1
  head_zeroinit: bool = True

  @nn.compact
  def __call__(self, x):
    out = {}
    w0 = 64 * self.width
    x = _ConvScope(w0, 7, 2, name="root_block")(x)
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # zeros, as TF BiT.
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
    out["stem"] = x
    for i, units in enumerate(self.blocks):
      x = _Block(units, w0 * 2**i, 1 if i == 0 else 2, name=f"block{i + 1}")(x)
      out[f"block{i + 1}"] = x
    x = nn.relu(GroupNorm(name="group_norm")(x))
    out["pre_logits_2d"] = x
    out["pre_logits"] = x = jnp.mean(x, axis=(1, 2))
    if self.num_classes:
      out["logits"] = x = _Head(self.num_classes, self.head_zeroinit,
                                name="head")(x)
    return x, out


class _Model(nn.Module):
  """Wraps ResNetV2 under the `resnet` scope and fixes the call signature."""
  num_classes: int | None = None
  depth: int | Sequence[int] = 50
  width: int = 1
  head_zeroinit: bool = True

  @nn.compact
  def __call__(self, image, *, train: bool = False):
    del train  # No dropout, no batch statistics: train and eval agree.
    return ResNetV2(self.num_classes, blocks_for(self.depth), self.width,
                    self.head_zeroinit, name="resnet")(image)


def blocks_for(depth: int | Sequence[int]) -> tuple[int, ...]:
  """Units per block for a BiT depth (26, 50, 101, 152).

  An explicit sequence of units per block, e.g. (1, 1), is taken as is: the
  released nets only use the registered depths, but a two-block net trains
  in seconds on CPU, which is what configs' small test settings need.
  """
  if isinstance(depth, (list, tuple)):
    if not depth or not all(isinstance(n, int) and n > 0 for n in depth):
      raise ValueError(f"BiT depth={depth!r}: units per block must be a "
                       "non-empty sequence of positive ints.")
    return tuple(depth)
  if depth not in DEPTHS:
    raise utils.unknown_name_error("BiT depth", depth, map(str, DEPTHS))
  return DEPTHS[depth]


def decode_variant(variant: str | None) -> dict[str, int]:
  """'R50x1' -> dict(depth=50, width=1); None -> {}."""
  if variant is None:
    return {}
  m = re.fullmatch(r"R(\d+)x(\d+)", str(variant))
  valid = [f"R{d}x{w}" for d in DEPTHS for w in (1, 2, 3, 4)]
  if not m or int(m.group(1)) not in DEPTHS or int(m.group(2)) < 1:
    raise utils.unknown_name_error("BiT variant", variant, valid)
  return dict(depth=int(m.group(1)), width=int(m.group(2)))


def Model(num_classes: int | None = None, *, variant: str | None = None,
          **kw) -> nn.Module:  # pylint: disable=invalid-name
  """BiT ResNet v2: `Model(1000, depth=50, width=1)` or `variant="R50x1"`.

  Explicit keywords override what the variant sets. Valid keywords: depth
  (26, 50, 101, 152, or units per block such as (1, 1)), width,
  head_zeroinit (and num_classes: None or 0 means no head).
  """
  kw = {**decode_variant(variant), **kw}
  fields = {"depth", "width", "head_zeroinit"}
  for k in kw:
    if k not in fields:
      raise utils.unknown_name_error("BiT Model argument", k, fields)
  if isinstance(kw.get("depth"), list):  # Configs may hold lists.
    kw["depth"] = tuple(kw["depth"])
  blocks_for(kw.get("depth", 50))  # Fail early on a bad depth.
  return _Model(num_classes=num_classes, **kw)


def load(init_params: Any, init_file: str | Mapping[str, Any],
         model_cfg: Mapping[str, Any] | None = None,
         dont_load: Sequence[str] = ()) -> Any:
  """Loads a released BiT `.npz` (path or dict) into `init_params`.

  Names are those of the released files, e.g. fine-tuning from BiT-M on a new
  label space uses `dont_load=("resnet/head/.*",)`. Convolutions are
  resolution independent, so nothing needs resizing. `init_file` may also
  be BiT's paper name ("M", "S", "L", "M-ILSVRC2012": the upstream of the
  config's depth and width, `common.bit_release_url`) or a `params/` /
  `opt/target/` prefixed file (`common.read_checkpoint`).
  """
  restored = common.read_checkpoint(init_file, model_cfg, "bit")
  return common.merge_params(restored, init_params, dont_load)
