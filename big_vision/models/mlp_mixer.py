"""MLP-Mixer (Tolstikhin et al., https://arxiv.org/abs/2105.01601).

An all-MLP vision backbone: patches are embedded by a strided conv (`stem`),
then each block mixes information across tokens (an MLP applied to every
channel's column of token values) and across channels (an MLP applied to
every token), each behind a pre-LayerNorm and a residual connection. The head
classifies the mean of the final tokens.

Parameter names are those of the released Mixer `.npz` checkpoints:

  stem/{kernel,bias}
  MixerBlock_{i}/LayerNorm_0/{scale,bias}
  MixerBlock_{i}/token_mixing/Dense_{0,1}/{kernel,bias}
  MixerBlock_{i}/LayerNorm_1/{scale,bias}
  MixerBlock_{i}/channel_mixing/Dense_{0,1}/{kernel,bias}
  pre_head_layer_norm/{scale,bias}
  head/{kernel,bias}
"""
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from big_vision import utils
from big_vision.models import common

# name -> (hidden_dim, tokens_mlp_dim, channels_mlp_dim, num_blocks), from
# Table 1 of the paper.
_WIDTHS = {
    "S": (512, 256, 2048, 8),
    "B": (768, 384, 3072, 12),
    "L": (1024, 512, 4096, 24),
    "H": (1280, 640, 5120, 32),
}
# The variants released/studied in the paper.
VARIANTS = ("S/32", "S/16", "B/32", "B/16", "L/32", "L/16", "H/14")


def decode_variant(variant: str | None) -> dict[str, Any]:
  """'B/16' -> dict(patch_size=(16, 16), hidden_dim=768, ...); None -> {}."""
  if variant is None:
    return {}
  if variant not in VARIANTS:
    raise utils.unknown_name_error("Mixer variant", variant, VARIANTS)
  width, patch = variant.split("/")
  hidden, tokens, channels, blocks = _WIDTHS[width]
  return dict(patch_size=(int(patch), int(patch)), hidden_dim=hidden,
              tokens_mlp_dim=tokens, channels_mlp_dim=channels,
              num_blocks=blocks)


class MlpBlock(nn.Module):
  """Dense -> GELU -> Dense back to the input width (Dense_0, Dense_1)."""
  mlp_dim: int

  @nn.compact
  def __call__(self, x):
    y = nn.gelu(nn.Dense(self.mlp_dim)(x))
    return nn.Dense(x.shape[-1])(y)


def _drop_path(x, rate: float, rng):
  """Zeroes whole examples of a residual branch; rescales the survivors.

  Stochastic depth (Huang et al., 2016): dropping the branch per example keeps
  the residual stream intact while regularising deep stacks; dividing by the
  keep probability keeps the expected update the same as at inference.
  """
  keep = 1.0 - rate
  mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(mask, x / keep, 0.0).astype(x.dtype)


class MixerBlock(nn.Module):
  """Token mixing then channel mixing, each pre-LN with a residual."""
  tokens_mlp_dim: int
  channels_mlp_dim: int
  stoch_depth: float = 0.0

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    # (N, tokens, C): mix along tokens by transposing tokens to the last axis.
    y = nn.LayerNorm()(x)
    y = jnp.swapaxes(y, 1, 2)
    y = MlpBlock(self.tokens_mlp_dim, name="token_mixing")(y)
    y = jnp.swapaxes(y, 1, 2)
    x = x + self._maybe_drop(y, train)
    y = nn.LayerNorm()(x)
    y = MlpBlock(self.channels_mlp_dim, name="channel_mixing")(y)
    return x + self._maybe_drop(y, train)

  def _maybe_drop(self, y, train):
    if not train or not self.stoch_depth:
      return y
    return _drop_path(y, self.stoch_depth, self.make_rng("dropout"))


class _Model(nn.Module):
  """Mixer over patches; see the module docstring for names."""
  num_classes: int | None = None
  patch_size: Sequence[int] = (16, 16)
  hidden_dim: int = 768
  tokens_mlp_dim: int = 384
  channels_mlp_dim: int = 3072
  num_blocks: int = 12
  stoch_depth: float = 0.0
  head_zeroinit: bool = True

  @nn.compact
  def __call__(self, image, *, train: bool = False):
    out = {}
    patch = tuple(self.patch_size)
    x = nn.Conv(self.hidden_dim, patch, strides=patch, padding="VALID",
                name="stem")(image)
    out["stem"] = x
    n, h, w, c = x.shape
    x = jnp.reshape(x, (n, h * w, c))
    out["input_tokens"] = x
    for i in range(self.num_blocks):
      x = MixerBlock(self.tokens_mlp_dim, self.channels_mlp_dim,
                     self.stoch_depth, name=f"MixerBlock_{i}")(x, train=train)
      out[f"block{i}"] = x
    x = nn.LayerNorm(name="pre_head_layer_norm")(x)
    out["encoded"] = x
    out["pre_logits"] = x = jnp.mean(x, axis=1)
    if self.num_classes:
      init = (nn.initializers.zeros if self.head_zeroinit
              else nn.initializers.lecun_normal())
      out["logits"] = x = nn.Dense(self.num_classes, kernel_init=init,
                                   name="head")(x)
    return x, out


def Model(num_classes: int | None = None, *, variant: str | None = None,
          **kw) -> nn.Module:  # pylint: disable=invalid-name
  """MLP-Mixer: `Model(1000, variant="B/16")`, explicit keywords override.

  Keywords: patch_size, hidden_dim, tokens_mlp_dim, channels_mlp_dim,
  num_blocks, stoch_depth (per-block drop-path rate; needs a "dropout" rng
  when train=True), head_zeroinit. num_classes None or 0 means no head.
  """
  kw = {**decode_variant(variant), **kw}
  fields = {"patch_size", "hidden_dim", "tokens_mlp_dim", "channels_mlp_dim",
            "num_blocks", "stoch_depth", "head_zeroinit"}
  for k in kw:
    if k not in fields:
      raise utils.unknown_name_error("Mixer Model argument", k, fields)
  if "patch_size" in kw and isinstance(kw["patch_size"], int):
    kw["patch_size"] = (kw["patch_size"], kw["patch_size"])
  return _Model(num_classes=num_classes, **kw)


def load(init_params: Any, init_file: str | Mapping[str, Any],
         model_cfg: Mapping[str, Any] | None = None,
         dont_load: Sequence[str] = ()) -> Any:
  """Loads a released Mixer `.npz` (path or dict) into `init_params`.

  The token-mixing MLP's shapes depend on the number of tokens, so a
  checkpoint only loads at the resolution / patch size it was trained at;
  anything else is reported by name (no silent resizing). `init_file`: see
  `common.read_checkpoint` (paths, workdirs, `params/` or `opt/target/`
  prefixed files; vit_jax and big_vision name Mixer parameters alike).
  """
  restored = common.read_checkpoint(init_file, model_cfg, "mlp_mixer")
  return common.merge_params(restored, init_params, dont_load)
