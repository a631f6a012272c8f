"""Text decoder with cross-attention to image tokens (CapPa / LocCa style).

  dec = text_decoder.Model(vocab_size=32_000, width=768, depth=6,
                           num_heads=12)
  logits, out = dec.apply({"params": p}, tokens_in, image_tokens,
                          image_mask=None, train=False)

`tokens_in` int [batch, len] is the decoder input (the caption shifted right
by one, a BOS first: `shift_right`); `logits` [batch, len, vocab] predict
the caption token at each position. Each pre-LN block is causal
self-attention (a position sees itself and earlier ones only), then
cross-attention to `image_tokens` [batch, n, d_img] (projected to the
decoder width; `image_mask` bool [batch, n] hides NaFlex padding), then an
MLP. The attention and MLP layers are `vit.py`'s.

In a two-tower model (`two_towers.Model(..., decoder=dict(...))`) the
decoder reads the image tower's encoder tokens (`img/encoded`, before
pooling) and is trained by next-token prediction beside the contrastive
loss (`objectives.py`, `config.loss = "combined"`), as in SigLIP 2's
LocCa-style decoder (its grounded-captioning and referring-expression
targets are not reproduced: only captioning).
"""
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from big_vision import utils
from big_vision.models import common
from big_vision.models import vit

BOS_ID = 0  # The pad id of the T5 / c4_en convention: never a caption token.


def shift_right(tokens, bos_id: int = BOS_ID):
  """Decoder input for teacher forcing: [bos, t_0, ..., t_{l-2}]."""
  bos = jnp.full(tokens.shape[:1] + (1,), bos_id, tokens.dtype)
  return jnp.concatenate([bos, tokens[:, :-1]], axis=1)


class DecoderBlock(nn.Module):
  """Causal self-attention, cross-attention, MLP; pre-LN, residual."""
  mlp_dim: int | None = None
  num_heads: int = 8
  dropout: float = 0.0
  deterministic: bool = True
  dtype_mm: Any = "float32"
  attn_impl: str = "auto"

  @nn.compact
  def __call__(self, x, image_tokens, causal_mask, image_mask):
    mha = lambda name: vit.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype_mm=self.dtype_mm,
        attn_impl=self.attn_impl, name=name)
    drop = lambda y: nn.Dropout(rate=self.dropout)(y, self.deterministic)
    y = vit._layer_norm(False)(x)  # pylint: disable=protected-access
    x = x + drop(mha("SelfAttention")(y, y, causal_mask))
    y = vit._layer_norm(False)(x)  # pylint: disable=protected-access
    x = x + drop(mha("CrossAttention")(y, image_tokens, image_mask))
    y = vit._layer_norm(False)(x)  # pylint: disable=protected-access
    x = x + drop(vit.MlpBlock(mlp_dim=self.mlp_dim, dropout=self.dropout,
                              dtype_mm=self.dtype_mm)(y, self.deterministic))
    return x


class _Model(nn.Module):
  """Text decoder. Prefer the `Model(...)` factory (validates options)."""
  num_classes: int | None = None  # Unused (the vocabulary is the output).
  vocab_size: int = 32_000
  width: int = 512
  depth: int = 6
  mlp_dim: int | None = None
  num_heads: int = 8
  dropout: float = 0.0
  dtype_mm: Any = "float32"
  attn_impl: str = "auto"

  @nn.compact
  def __call__(self, tokens_in, image_tokens, image_mask=None, *,
               train=False):
    out = {}
    embed = nn.Embed(self.vocab_size, self.width, name="Embed_0")
    x = embed(tokens_in)
    n, length, width = x.shape
    posemb = self.param("pos_embedding",
                        nn.initializers.normal(stddev=1 / np.sqrt(width)),
                        (1, length, width), jnp.float32)
    x = nn.Dropout(rate=self.dropout)(x + posemb, not train)
    img = nn.Dense(self.width, name="image_proj")(image_tokens)
    causal = jnp.tril(jnp.ones((length, length), bool))
    causal = jnp.broadcast_to(causal, (n, length, length))
    for i in range(self.depth):
      x = out[f"block{i:02d}"] = DecoderBlock(
          mlp_dim=self.mlp_dim, num_heads=self.num_heads,
          dropout=self.dropout, deterministic=not train,
          dtype_mm=self.dtype_mm, attn_impl=self.attn_impl,
          name=f"decoderblock_{i}")(x, img, causal, image_mask)
    x = out["pre_logits"] = vit._layer_norm(False, name="decoder_norm")(x)  # pylint: disable=protected-access
    logits = out["logits"] = nn.Dense(self.vocab_size, name="head")(x)
    return logits, out


_OPTIONS = tuple(f.name for f in _Model.__dataclass_fields__.values()
                 if f.name not in ("parent", "name", "num_classes"))


def Model(num_classes: int | None = None, *, variant: str | None = None,
          **kw) -> _Model:  # pylint: disable=invalid-name
  """The decoder. `variant` ("S", "B": ViT sizes) sets width / depth / mlp /
  heads; explicit options win. Every option is validated."""
  cfg = {**vit.decode_variant(variant), **kw}
  for key in cfg:
    if key not in _OPTIONS:
      raise utils.unknown_name_error("text_decoder option", key, _OPTIONS)
  if cfg.get("attn_impl", "auto") not in vit.ATTENTION_IMPLS:
    raise utils.unknown_name_error("text_decoder attn_impl",
                                   cfg["attn_impl"], vit.ATTENTION_IMPLS)
  return _Model(num_classes=num_classes, **cfg)


def load(init_params: Mapping, init_file, model_cfg=None,
         dont_load: Sequence[str] = ()) -> dict:
  """Loads a decoder checkpoint (.npz / workdir / tree) into `init_params`."""
  restored = common.read_checkpoint(init_file, model_cfg, "text_decoder")
  return common.merge_params(restored, init_params, dont_load)
