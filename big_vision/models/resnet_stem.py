"""The ResNet stem of the hybrid ViTs ("R50+ViT-B/16", Dosovitskiy et al. 2021).

A hybrid ViT feeds the transformer with the feature map of a truncated
ResNet instead of raw pixel patches; the ViT's `embedding` is then a 1x1
(patch_size / stride) conv on that map. This ResNet is v1-style
(post-activation bottlenecks), with weight-standardised convs and GroupNorm
as in BiT, and the layout of the released vit_jax hybrid checkpoints:

  conv_root/kernel                      7x7 stride 2, 64*width channels
  gn_root/{scale,bias}                  then ReLU and a 3x3/2 max-pool
  block{i}/unit{j}/conv1, gn1           1x1   (i, j count from 1)
  block{i}/unit{j}/conv2, gn2           3x3, strides in the first unit
  block{i}/unit{j}/conv3, gn3           1x1 to 4x; gn3 starts at scale 0
  block{i}/unit{j}/conv_proj, gn_proj   shortcut when the shape changes

Numerics follow vit_jax: kernels standardised as (w - mean) / (std + 1e-5),
flax GroupNorm (32 groups, eps 1e-6), 'SAME' padding everywhere.

In the released hybrids these names sit at the top level of the ViT tree
(next to `embedding`, `Transformer`, ...). A submodule would nest them, so
`vit.py` should call `build(x, num_layers, width)` inside its own
`@nn.compact` `__call__`: that creates the layers in the caller's scope.
`ResNetStem` wraps the same function as a standalone module (tests, probes).
"""
from typing import Sequence

import flax.linen as nn

from big_vision import utils
from big_vision.models.bit import StdConv

# num_layers -> units per stage, as the released hybrids use them. Not the
# ImageNet ResNets: "R50" is (3, 4, 9) so that 3 stages give stride 16 for
# R50+ViT-B/16 ((3, 4, 6, 3) is only used via an explicit tuple, e.g.
# R50+ViT-L/32); "R26" is (2, 2, 2, 2), stride 32, of R26+ViT-{S,B}/32.
NUM_LAYERS = {
    26: (2, 2, 2, 2),
    50: (3, 4, 9),
}


def stages_for(num_layers: int | Sequence[int]) -> tuple[int, ...]:
  """Units per stage: a registered depth (26, 50) or an explicit sequence."""
  if isinstance(num_layers, (list, tuple)):
    if not all(isinstance(n, int) and n > 0 for n in num_layers):
      raise ValueError(f"num_layers={num_layers!r}: units per stage must be "
                       "positive ints.")
    return tuple(num_layers)
  if num_layers not in NUM_LAYERS:
    raise utils.unknown_name_error("hybrid ResNet num_layers", num_layers,
                                   map(str, NUM_LAYERS))
  return NUM_LAYERS[num_layers]


def output_stride(num_layers: int | Sequence[int]) -> int:
  """Input pixels per output pixel: 2 (root conv) x 2 (pool) x 2 per stage
  after the first. (3, 4, 9) -> 16, (2, 2, 2, 2) -> 32, () -> 4."""
  return 4 * 2**max(len(stages_for(num_layers)) - 1, 0)


def output_channels(num_layers: int | Sequence[int], width: float = 1) -> int:
  """Channels of the feature map: 64w after the root, 256w*2^(stages-1)."""
  stages = stages_for(num_layers)
  w = int(64 * width)
  return w if not stages else 4 * w * 2**(len(stages) - 1)


def _std_conv(features, kernel_size, strides=1, *, name):
  return StdConv(features, kernel_size, strides, padding="SAME", eps=1e-5,
                 eps_in_sqrt=False, name=name)


class ResidualUnit(nn.Module):
  """Post-activation bottleneck: relu(shortcut + gn3(conv3(...)))."""
  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x):
    out = 4 * self.features
    shortcut = x
    if x.shape[-1] != out or self.strides != 1:
      shortcut = _std_conv(out, 1, self.strides, name="conv_proj")(x)
      shortcut = nn.GroupNorm(name="gn_proj")(shortcut)
    y = _std_conv(self.features, 1, name="conv1")(x)
    y = nn.relu(nn.GroupNorm(name="gn1")(y))
    y = _std_conv(self.features, 3, self.strides, name="conv2")(y)
    y = nn.relu(nn.GroupNorm(name="gn2")(y))
    y = _std_conv(out, 1, name="conv3")(y)
    # Zero scale: each unit starts as the identity on its shortcut.
    y = nn.GroupNorm(scale_init=nn.initializers.zeros, name="gn3")(y)
    return nn.relu(shortcut + y)


class ResNetStage(nn.Module):
  """`units` bottlenecks named unit1, unit2, ...; the first one strides."""
  units: int
  features: int
  first_strides: int

  @nn.compact
  def __call__(self, x):
    for j in range(self.units):
      x = ResidualUnit(self.features, self.first_strides if j == 0 else 1,
                       name=f"unit{j + 1}")(x)
    return x


def build(x, num_layers: int | Sequence[int] = 50, width: float = 1):
  """Runs the stem on NHWC `x`, creating its layers in the CALLER's scope.

  Must be called from inside a module's `@nn.compact` method. Returns the
  feature map, (N, H/s, W/s, output_channels) with s = output_stride.
  """
  w = int(64 * width)
  x = _std_conv(w, 7, 2, name="conv_root")(x)
  x = nn.relu(nn.GroupNorm(name="gn_root")(x))
  x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
  for i, units in enumerate(stages_for(num_layers)):
    x = ResNetStage(units, w * 2**i, 1 if i == 0 else 2,
                    name=f"block{i + 1}")(x)
  return x


class ResNetStem(nn.Module):
  """The hybrid stem as a module: `ResNetStem(50, 1).apply(v, x) -> fmap`.

  Its own parameters are named as in the released hybrids (conv_root,
  gn_root, block1/unit1/conv1, ...); nested under whatever name the parent
  gives it, so a ViT that must load released hybrids uses `build` instead.
  """
  num_layers: int | Sequence[int] = 50
  width: float = 1

  @nn.compact
  def __call__(self, x):
    return build(x, self.num_layers, self.width)
