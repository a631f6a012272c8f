"""Text transformer: the text tower of LiT / SigLIP two-tower models.

`Model(num_classes, variant="B", vocab_size=32_000, ...)` returns a
flax.linen module; `model.apply({"params": p}, tokens, train=False)` maps
int token ids [batch, length] to `(x, out)`: `x` is the projection head's
output [batch, num_classes] (or the pooled representation when
num_classes is None) and `out` holds named intermediates (`embedded`,
`encoded`, `pre_logits`, per-block outputs, ...).

Architecture: token embedding + learned position embedding (one per token
position, its length fixed by the first input the model sees), then the
pre-LN encoder of `vit.py` (same blocks, same options: scan, remat,
bfloat16 matmuls, attention implementation), then pooling and an optional
dense head. No causal mask: every token attends to every other, so "last"
pooling reads a token that has seen the whole text. With SigLIP's
tokenisation (`eos="sticky"`, padding with the eos id) the last token is
always an eos, a position whose content does not depend on the text length.

Parameter names are those of the published LiT / SigLIP text towers
(`Embed_0/embedding`, `pos_embedding`, `Encoder_0/encoderblock_{i}/...`,
`Encoder_0/encoder_norm`, `MAPHead_0`, `head`), so released `.npz` files
load with `load()`; sizes (`variant`) are ViT's ("S", "B", "L", "So400m",
...), which is how those papers name their text towers too.
"""
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from big_vision import utils
from big_vision.models import common
from big_vision.models import vit

_BLOCK_PREFIX = "Encoder_0/encoderblock"


# ----------------------------------------------------------------------------
# Pooling: (model, encoded [n, l, d]) -> [n, d].
# ----------------------------------------------------------------------------
def _pool_last(model, x):
  del model
  return x[:, -1]


def _pool_first(model, x):
  del model
  return x[:, 0]


def _pool_gap(model, x):
  del model
  return jnp.mean(x, axis=1)


def _pool_map(model, x):
  return vit.MAPHead(mlp_dim=model.mlp_dim, num_heads=model.num_heads,
                     dtype_mm=model.dtype_mm, attn_impl=model.attn_impl)(x)


POOLS = {"last": _pool_last, "first": _pool_first, "gap": _pool_gap,
         "map": _pool_map}


class _Model(nn.Module):
  """Text transformer. Prefer the `Model(...)` factory (validates options)."""
  num_classes: int | None = None
  width: int = 512
  depth: int = 12
  mlp_dim: int | None = None  # Defaults to 4 * width.
  num_heads: int = 8
  vocab_size: int = 32_000
  pool_type: str = "last"
  dropout: float = 0.0
  head_zeroinit: bool = False
  scan: bool = False
  remat_policy: str = "none"
  dtype_mm: Any = "float32"
  attn_impl: str = "auto"

  @nn.compact
  def __call__(self, text, *, train=False):
    out = {}
    x = out["embedded"] = nn.Embed(
        num_embeddings=self.vocab_size, features=self.width,
        name="Embed_0")(text)
    _, length, width = x.shape
    posemb = self.param("pos_embedding",
                        nn.initializers.normal(stddev=1 / np.sqrt(width)),
                        (1, length, width), jnp.float32)
    x = x + posemb
    x = nn.Dropout(rate=self.dropout)(x, not train)
    x, blocks = vit.Encoder(
        depth=self.depth, mlp_dim=self.mlp_dim, num_heads=self.num_heads,
        dropout=self.dropout, scan=self.scan, remat_policy=self.remat_policy,
        deterministic=not train, dtype_mm=self.dtype_mm,
        attn_impl=self.attn_impl, name="Encoder_0")(x)
    out.update(blocks)
    out["encoded"] = x
    x = out["pre_logits"] = POOLS[self.pool_type](self, x)
    if self.num_classes:
      kw = {"kernel_init": nn.initializers.zeros} if self.head_zeroinit else {}
      x = out["logits"] = nn.Dense(self.num_classes, name="head", **kw)(x)
    return x, out


_OPTIONS = tuple(f.name for f in _Model.__dataclass_fields__.values()
                 if f.name not in ("parent", "name", "num_classes"))


def decode_variant(variant: str | None) -> dict[str, Any]:
  """"B" -> dict(width=768, depth=12, mlp_dim=3072, num_heads=12)."""
  if variant is None:
    return {}
  if "/" in str(variant):
    raise ValueError(f"Text transformer variant {variant!r} has a patch size; "
                     "text towers take a bare size such as 'B' or 'So400m'.")
  return vit.decode_variant(variant)


def Model(num_classes: int | None = None, *, variant: str | None = None,
          **kw) -> _Model:  # pylint: disable=invalid-name
  """The text transformer. `variant` ("B", "L", "So400m") sets the size.

  Options (see _Model): width, depth, mlp_dim, num_heads, vocab_size,
  pool_type ("last"|"first"|"gap"|"map"), dropout, head_zeroinit (default
  False: a zero head would give all-zero embeddings, which L2 normalisation
  cannot handle), scan, remat_policy, dtype_mm, attn_impl. Explicit options
  win over the variant's. Every option is validated here.
  """
  cfg = {**decode_variant(variant), **kw}
  for key in cfg:
    if key not in _OPTIONS:
      raise utils.unknown_name_error("text transformer option", key, _OPTIONS)
  checks = (("pool_type", "last", POOLS),
            ("attn_impl", "auto", vit.ATTENTION_IMPLS),
            ("remat_policy", "none", vit.REMAT_POLICIES))
  for key, default, valid in checks:
    if cfg.get(key, default) not in valid:
      raise utils.unknown_name_error(f"text transformer {key}",
                                     cfg.get(key, default), valid)
  if int(cfg.get("vocab_size", 32_000)) < 1:
    raise ValueError(f"vocab_size must be positive, got {cfg['vocab_size']}.")
  return _Model(num_classes=num_classes, **cfg)


def load(init_params: Mapping | None, init_file, model_cfg=None,
         dont_load: Sequence[str] = ()) -> dict:
  """Loads a text-tower checkpoint into the layout of `init_params`.

  Args:
    init_params: freshly initialised params of the target tower, or None to
      only convert the checkpoint (scanned iff model_cfg["scan"]).
    init_file: `.npz` path / workdir, or an already loaded tree (keys under
      a single top-level `params` are unwrapped). two_towers.load narrows
      whole two-tower checkpoints to their `txt` part before calling this.
    model_cfg: the tower's config; only used when init_params is None.
    dont_load: regexes of names that keep their fresh init.

  Returns:
    Nested dict of numpy arrays; scan / per-block layouts are converted to
    the model's. Anything missing, unexpected or misshaped is a ValueError
    naming it (e.g. a checkpoint trained with another max text length).
  """
  restored = common.read_checkpoint(init_file, model_cfg, "text_transformer")

  restored = common.match_scan_layout(restored, init_params, model_cfg,
                                      _BLOCK_PREFIX)
  if init_params is None:
    return utils.unflatten_dict(utils.flatten_dict(restored))
  return common.merge_params(restored, init_params, dont_load)
