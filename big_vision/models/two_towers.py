"""Two-tower image-text model (CLIP, LiT, SigLIP).

  model = two_towers.Model(
      image_model="vit", image=dict(variant="B/16", pool_type="map"),
      text_model="text_transformer", text=dict(variant="B", vocab_size=32_000),
      out_dim=768, temperature_init=10.0, bias_init=-10.0)
  zimg, ztxt, out = model.apply({"params": p}, images, tokens, train=False)

Each tower is a model module of this package chosen by name, built with its
own config dict and `num_classes=out_dim` (its `head` is the projection into
the shared space; `out_dim=None`, or None on one side of an
`(img_dim, txt_dim)` pair, means no head: LiT feeds the locked ViT's
representation through unchanged). `zimg` and `ztxt` are L2-normalised
float32 embeddings; either input may be None to embed one side only (the
other output is then None). `out` has the towers' intermediates prefixed
"img/" and "txt/", the embeddings' norms before normalisation, "t" = exp of
the learnable log-temperature and, when `bias_init` is set (SigLIP), "b".

Parameter names follow the published LiT / SigLIP checkpoints: `img/...`
(the image model's own names), `txt/...`, `t` and `b` (both of shape [1]),
so their `.npz` files load with `load()`. The temperature is stored as its
log: `temperature_init=10` gives t = log 10 (LiT, SigLIP), and the bias of
SigLIP starts at -10 so that the ~B^2 negative pairs start with a small
loss instead of swamping the B positives.
"""
import math
import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp

from big_vision import models
from big_vision import utils
from big_vision.models import common

TOWERS = ("img", "txt")
# Per-tower model modules' defaults that differ inside a two-tower model: a
# zero-initialised projection head would make every embedding zero, where
# L2 normalisation is undefined.
TOWER_DEFAULTS: dict[str, dict[str, Any]] = {
    "vit": {"head_zeroinit": False}, "naflex_vit": {"head_zeroinit": False}}
_ALIASES = {"image": "img", "text": "txt", "temperature": "t", "bias": "b"}


# A tower is any model but a two-tower one.
# (Not `TOWERS`: that name is the tuple of tower keys above.)
TOWER_MODULES = utils.ModuleRegistry(
    "tower model", "big_vision.models",
    exclude=models.HELPER_MODULES + ("two_towers",))


def tower_module(name: str, where: str):
  """The model module `big_vision.models.<name>`; ValueError lists them."""
  return TOWER_MODULES.lookup(name, where=where)


def _normalize(z):
  z = jnp.asarray(z, jnp.float32)
  norm = jnp.linalg.norm(z, axis=-1, keepdims=True)
  return z / (norm + 1e-8), norm[..., 0]


class _DinoHead(nn.Module):
  """Projection into the self-distillation space (DINO-style, which SILC and
  so SigLIP 2 follow): Dense -> GELU -> Dense (bottleneck) -> L2-normalise
  -> Dense without bias to `dim` logits. (DINO's weight-normalised last
  layer and its third hidden layer are left out: this project's choice.)"""
  dim: int
  hidden: int = 2048
  bottleneck: int = 256

  @nn.compact
  def __call__(self, x):
    x = nn.gelu(nn.Dense(self.hidden, name="hidden")(x.astype(jnp.float32)))
    x = nn.Dense(self.bottleneck, name="bottleneck")(x)
    x = x / (jnp.linalg.norm(x, axis=-1, keepdims=True) + 1e-6)
    return nn.Dense(self.dim, use_bias=False, name="logits")(x)


class DistillHeads(nn.Module):
  """SigLIP 2's self-distillation parameters (`distill_heads/...`): the head
  of the local-to-global term (on the pooled image representation), the
  head of the masked-prediction term (per patch token) and the mask token.
  They are training-only: the towers never read them, and a teacher that is
  an EMA of the image tower carries its own copy (big_vision/self_distill.py).
  """
  width: int            # The image tower's token width (the mask token's).
  dim: int = 65_536     # Logits of the global (local-to-global) head.
  patch_dim: int = 8_192  # Logits of the per-patch (masked) head.
  hidden: int = 2048
  bottleneck: int = 256

  @nn.compact
  def __call__(self, pooled=None, tokens=None):
    """(mask_token [width], global logits or None, patch logits or None)."""
    token = self.param("mask_token", nn.initializers.normal(0.02),
                       (self.width,), jnp.float32)
    glob = patch = None
    if pooled is not None:
      glob = _DinoHead(self.dim, self.hidden, self.bottleneck,
                       name="global_head")(pooled)
    if tokens is not None:
      patch = _DinoHead(self.patch_dim, self.hidden, self.bottleneck,
                        name="patch_head")(tokens)
    return token, glob, patch


DISTILL_HEAD_KEYS = ("dim", "patch_dim", "hidden", "bottleneck")


class _TwoTowers(nn.Module):
  """Prefer the `Model(...)` factory, which builds and validates the towers.

  The towers are dataclass fields named `img` and `txt`: flax names a
  submodule passed as a field after the field, which gives exactly the
  published parameter prefixes whatever the tower's own factory does.
  """
  img: nn.Module
  txt: nn.Module
  temperature_init: float = 10.0
  bias_init: float | None = None
  dec: nn.Module | None = None  # text_decoder over the image tokens.
  distill_heads: nn.Module | None = None  # DistillHeads (SigLIP 2).

  @nn.compact
  def __call__(self, image, text=None, *, train=False, decoder_text=None):
    """`decoder_text` (int tokens [batch, len], needs a `decoder`): the
    caption the decoder predicts, teacher-forced (its input is the caption
    shifted right); its logits are `out["dec/logits"]` [batch, len, vocab]."""
    out = {}
    zimg = ztxt = None
    if image is not None:
      x, tower_out = self.img(image, train=train)
      out.update({f"img/{k}": v for k, v in tower_out.items()})
      zimg, out["img/norm"] = _normalize(x)
      if self.dec is not None and (decoder_text is not None
                                   or self.is_initializing()):
        from big_vision.models import text_decoder  # pylint: disable=g-import-not-at-top
        captions = decoder_text if decoder_text is not None else text
        if captions is None:
          raise ValueError("The decoder needs text: pass decoder_text.")
        out["dec/logits"], _ = self.dec(
            text_decoder.shift_right(captions), tower_out["encoded"],
            tower_out.get("mask"), train=train)
      if self.distill_heads is not None and self.is_initializing():
        self.distill_heads(tower_out["pre_logits"], tower_out["encoded"])
    if text is not None:
      x, tower_out = self.txt(text, train=train)
      out.update({f"txt/{k}": v for k, v in tower_out.items()})
      ztxt, out["txt/norm"] = _normalize(x)
    if zimg is not None and ztxt is not None and (
        zimg.shape[-1] != ztxt.shape[-1]):
      raise ValueError(
          f"The image tower embeds into {zimg.shape[-1]} dims, the text tower "
          f"into {ztxt.shape[-1]}: set out_dim so that both sides agree (e.g. "
          "out_dim=(None, width of the image tower) for LiT).")

    log_t = self.param("t", nn.initializers.constant(
        math.log(self.temperature_init)), (1,), jnp.float32)
    out["t/parameter"] = log_t[0]
    out["t"] = jnp.exp(log_t[0])
    if self.bias_init is not None:
      b = self.param("b", nn.initializers.constant(self.bias_init), (1,),
                     jnp.float32)
      out["b"] = b[0]
    return zimg, ztxt, out


  def distill_logits(self, image, *, train=False, patch_mask=None,
                     pooled=True, patches=True):
    """The self-distillation heads on the image tower (`distill_heads`):
    (global logits [b, dim] or None, patch logits [b, l, patch_dim] or None,
    the tower's validity mask [b, l]). `patch_mask` (bool [b, l]): those
    patches enter as the mask token. Reads only `img` and `distill_heads`
    params, so an EMA teacher of those two runs it too."""
    if self.distill_heads is None:
      raise ValueError("The model has no self-distillation heads: set "
                       "config.model.distill_heads = dict(...) (two_towers).")
    kw = {}
    if patch_mask is not None:
      kw = dict(patch_mask=patch_mask, mask_token=self.distill_heads()[0])
    _, out = self.img(image, train=train, **kw)
    _, glob, patch = self.distill_heads(
        out["pre_logits"] if pooled else None,
        out["encoded"] if patches else None)
    return glob, patch, out["mask"]


def _out_dims(out_dim) -> tuple[int | None, int | None]:
  if out_dim is None or isinstance(out_dim, int):
    return out_dim, out_dim
  dims = tuple(out_dim)
  if len(dims) != 2:
    raise ValueError(f"out_dim must be an int, None or an (image, text) pair, "
                     f"got {out_dim!r}.")
  return dims[0], dims[1]


def Model(  # pylint: disable=invalid-name
    num_classes: int | None = None, *, image_model: str = "vit",
    text_model: str = "text_transformer", image=None, text=None,
    out_dim=128, temperature_init: float = 10.0,
    bias_init: float | None = None, decoder=None,
    distill_heads=None) -> _TwoTowers:
  """Builds the two towers from their modules' names and config dicts.

  Args:
    num_classes: must be None (a two-tower model has no class head); it is
      only in the signature because the trainer passes config.num_classes.
    image_model: model module of the image tower ("vit", "bit", ...).
    text_model: model module of the text tower ("text_transformer").
    image: kwargs of the image tower's `Model` (e.g. variant, pool_type).
    text: kwargs of the text tower's `Model` (e.g. variant, vocab_size).
    out_dim: width of the shared embedding space: an int, or an
      (image, text) pair where None means "no head on that side".
    temperature_init: initial exp(t); SigLIP and LiT use 10.
    bias_init: initial b (SigLIP: -10); None means no bias parameter.
    decoder: kwargs of a `text_decoder` (parameters under `dec/`) that
      reads the image tower's encoder tokens (SigLIP 2's LocCa-style
      captioning decoder); None: no decoder.
    distill_heads: kwargs of `DistillHeads` (dim, patch_dim, hidden,
      bottleneck; parameters under `distill_heads/`): the heads and mask
      token of SigLIP 2's self-distillation terms (big_vision/
      self_distill.py). Needs a `naflex_vit` image tower (masking works on
      its patch sequence). None: no heads.
  """
  if num_classes is not None:
    raise ValueError(f"two_towers takes no num_classes (got {num_classes}); "
                     "remove config.num_classes, the embedding width is "
                     "config.model.out_dim.")
  if not temperature_init > 0:
    raise ValueError(f"temperature_init must be > 0 (t stores its log), got "
                     f"{temperature_init}.")
  img_dim, txt_dim = _out_dims(out_dim)
  towers = {}
  for tower, name, cfg, dim, key in (("img", image_model, image, img_dim,
                                      "image"),
                                     ("txt", text_model, text, txt_dim,
                                      "text")):
    module = tower_module(name, where=f"config.model.{key}_model")
    kw = {**TOWER_DEFAULTS.get(name, {}), **dict(cfg or {})}
    if "num_classes" in kw:
      raise ValueError(f"config.model.{key}.num_classes: set the projection "
                       "width with config.model.out_dim instead.")
    towers[tower] = module.Model(num_classes=dim, **kw)
  dec = None
  if decoder is not None:
    from big_vision.models import text_decoder  # pylint: disable=g-import-not-at-top
    dec = text_decoder.Model(**dict(decoder))
  heads = None
  if distill_heads is not None:
    heads = _distill_heads(dict(distill_heads), image_model, towers["img"])
  return _TwoTowers(img=towers["img"], txt=towers["txt"],
                    temperature_init=float(temperature_init),
                    bias_init=None if bias_init is None else float(bias_init),
                    dec=dec, distill_heads=heads)


def _distill_heads(cfg, image_model, img) -> DistillHeads:
  """DistillHeads from config.model.distill_heads, validated."""
  for key in cfg:
    if key not in DISTILL_HEAD_KEYS:
      raise utils.unknown_name_error("distill_heads key", key,
                                     DISTILL_HEAD_KEYS,
                                     where="config.model.distill_heads")
  if image_model != "naflex_vit":
    raise ValueError("config.model.distill_heads needs image_model="
                     f"'naflex_vit' (masking and local views work on its "
                     f"patch sequence), got {image_model!r}.")
  for key, value in cfg.items():
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"config.model.distill_heads.{key} must be an int "
                       f">= 1, got {value!r}.")
  return DistillHeads(width=img.width, **cfg)


# ----------------------------------------------------------------------------
# Checkpoints.
# ----------------------------------------------------------------------------
def _unwrap(tree: Mapping) -> dict:
  """Strips `params/` or `opt/target/` (big_vision train-state files)."""
  return common.unwrap_checkpoint(tree)


def _read(source) -> dict:
  return common.read_checkpoint(source, family="two_towers")


def _is_two_tower(tree: Mapping) -> bool:
  return bool(set(tree) & set(TOWERS)) and set(tree) <= {
      *TOWERS, "t", "b", "dec", "distill_heads"}


def _tower_patterns(dont_load: Sequence[str], tower: str) -> list[str]:
  """Two-tower dont_load regexes -> the tower's own names.

  "img/head/.*" becomes "head/.*" for the image tower; patterns that name
  the other tower are dropped; patterns without a tower prefix apply to
  both towers' own names (and to t / b).
  """
  out = []
  for p in dont_load:
    prefix = p.split("/", 1)[0]
    if prefix == tower:
      out.append(p[len(tower) + 1:])
    elif prefix not in TOWERS:
      out.append(p)
  return out


def load(init_params: Mapping, init_files, model_cfg=None,
         dont_load: Sequence[str] = ()) -> dict:
  """Loads (parts of) a two-tower model into freshly initialised params.

  Args:
    init_params: the model's fresh params: {"img", "txt", "t"[, "b"]}.
    init_files: either one path (`.npz` or a workdir) of a whole two-tower
      checkpoint (a published LiT / SigLIP file, or a run of this model),
      which must then provide every part the model has; or a dict
      {"img": ..., "txt": ..., "t": ..., "b": ...} of the parts to load
      (aliases "image", "text", "temperature", "bias"), each a path / workdir
      / loaded tree, the rest keeping its fresh init. A tower's source may
      be a single-tower checkpoint (e.g. an AugReg ViT `.npz` for LiT's
      image tower) or a whole two-tower one, which is narrowed to that tower.
      Each tower is loaded by its own model module's `load`, so ViT
      checkpoints get their layout conversions and posemb resampling.
    model_cfg: config.model (to find each tower's module and config).
    dont_load: regexes on two-tower names ("img/head/.*"); see
      `_tower_patterns` for how they reach the towers.

  Returns:
    A nested dict like `init_params`.
  """
  model_cfg = dict(model_cfg or {})
  if hasattr(init_files, "to_dict"):  # A ConfigDict (config.model_init).
    init_files = init_files.to_dict()
  if isinstance(dont_load, str):
    dont_load = (dont_load,)
  dont_load = tuple(dont_load)
  if isinstance(init_files, (str, os.PathLike)):
    whole = _read(init_files)
    if not _is_two_tower(whole):
      raise ValueError(
          f"{init_files!r} is not a two-tower checkpoint (top-level keys: "
          f"{sorted(whole)}, expected img, txt, t[, b]). To load one tower "
          "from it, pass config.model_init={'img': path} (or 'txt').")
    sources = {k: whole[k] for k in (*TOWERS, "t", "b") if k in whole}
    if "dec" in whole and "dec" in init_params:  # A run with a decoder.
      restored_dec = common.merge_params(
          _unwrap(whole["dec"]), init_params["dec"],
          _tower_patterns(dont_load, "dec"))
    else:
      restored_dec = None
    required = True
  elif isinstance(init_files, Mapping):
    sources = {}
    for key, value in init_files.items():
      part = _ALIASES.get(key, key)
      if part not in (*TOWERS, "t", "b"):
        raise utils.unknown_name_error(
            "two-tower part", key, (*TOWERS, "t", "b", *_ALIASES),
            where="config.model_init")
      sources[part] = value
    required = False
    restored_dec = None
  else:
    raise ValueError(f"config.model_init must be a path or a dict of tower "
                     f"paths, got {init_files!r}.")

  restored = dict(init_params)
  if "distill_heads" in init_params and isinstance(
      init_files, (str, os.PathLike)) and "distill_heads" in whole:
    # A run with self-distillation heads (training-only parameters).
    restored["distill_heads"] = common.merge_params(
        _unwrap(whole["distill_heads"]), init_params["distill_heads"],
        _tower_patterns(dont_load, "distill_heads"))
  if restored_dec is not None:
    restored["dec"] = restored_dec
  for tower, key in (("img", "image"), ("txt", "text")):
    if tower not in sources:
      if required and tower in init_params:
        raise ValueError(f"The checkpoint has no {tower!r} tower; load the "
                         "other parts with a dict model_init instead.")
      continue
    tree = _read(sources[tower])
    if _is_two_tower(tree):
      if tower not in tree:
        raise ValueError(f"config.model_init[{tower!r}] is a two-tower "
                         f"checkpoint without a {tower!r} tower.")
      tree = _unwrap(tree[tower])
    module = tower_module(
        model_cfg.get(f"{key}_model", "vit" if tower == "img"
                      else "text_transformer"),
        where=f"config.model.{key}_model")
    restored[tower] = module.load(init_params[tower], tree,
                                  model_cfg.get(key),
                                  dont_load=_tower_patterns(dont_load, tower))

  scalars = {}
  for name in ("t", "b"):
    if name in sources:
      value = sources[name]
      if isinstance(value, (str, os.PathLike)):
        tree = _read(value)
        if name not in tree:
          raise ValueError(f"config.model_init[{name!r}]: {value!r} has no "
                           f"{name!r}.")
        value = tree[name]
      scalars[name] = value
  init_scalars = {k: init_params[k] for k in ("t", "b") if k in init_params}
  if required or scalars:
    if not required:  # Only the named parts; the others keep their init.
      init_part = {k: v for k, v in init_scalars.items() if k in scalars}
    else:
      init_part = init_scalars
    restored.update(common.merge_params(
        scalars, init_part, _tower_patterns(dont_load, "")))
  return restored
