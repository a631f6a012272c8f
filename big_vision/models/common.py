"""Model helpers shared by every model family (ViT, Mixer, text transformer...).

Three jobs, all on parameter trees, all independent of any one architecture:

* `resample_posemb`: stretch a learned position-embedding grid to a new
  resolution (fine-tuning at a higher resolution than pre-training).
* `scan_to_pyloop` / `pyloop_to_scan`: convert between the per-block layout
  (`Transformer/encoderblock_3/...`) and the `nn.scan` layout
  (`Transformer/encoderblock/...` with a leading depth axis), so that any
  checkpoint loads into a model whatever its `scan` setting.
* `merge_params`: put checkpoint values into a freshly initialised tree,
  keeping the fresh init where asked (`dont_load`), and reporting *by name*
  everything that does not line up, instead of failing deep inside jit.

All functions accept numpy arrays, jax arrays or `jax.ShapeDtypeStruct`s as
leaves (the latter so that layouts and parameter counts can be computed from
`jax.eval_shape` without allocating anything). Only jax/numpy/absl imports.
"""
import re
from typing import Any, Iterable, Mapping, Sequence

from absl import logging
import jax
import numpy as np

from big_vision import utils


# ----------------------------------------------------------------------------
# Leaves that may be abstract (ShapeDtypeStruct) or concrete.
# ----------------------------------------------------------------------------
def _is_abstract(x) -> bool:
  return isinstance(x, jax.ShapeDtypeStruct)


def _shape(x) -> tuple[int, ...]:
  return tuple(np.shape(x)) if not hasattr(x, "shape") else tuple(x.shape)


def _stack(leaves: Sequence[Any]):
  if any(_is_abstract(x) for x in leaves):
    return jax.ShapeDtypeStruct((len(leaves),) + _shape(leaves[0]),
                                leaves[0].dtype)
  return np.stack([np.asarray(x) for x in leaves])


def _unstack(x, n: int):
  if _is_abstract(x):
    return [jax.ShapeDtypeStruct(x.shape[1:], x.dtype) for _ in range(n)]
  x = np.asarray(x)
  return [x[i] for i in range(n)]


# ----------------------------------------------------------------------------
# Position embeddings.
# ----------------------------------------------------------------------------
def _grid_of(num_tokens: int, what: str) -> tuple[int, int]:
  side = int(round(np.sqrt(num_tokens)))
  if side * side != num_tokens:
    raise ValueError(
        f"Cannot infer the 2D grid of {what} with {num_tokens} tokens: not a "
        "square. Pass the grid explicitly (old_grid=/new_grid=(h, w)).")
  return side, side


def resample_posemb(posemb, new_grid, *, old_grid=None,
                    num_prefix_tokens: int = 0):
  """Bilinearly resamples a [1, N, D] position embedding to a new 2D grid.

  Why: a model pre-trained at 224px (14x14 patches of 16px) and fine-tuned at
  384px (24x24) needs 576 position embeddings; interpolating the learned grid
  keeps its spatial meaning (Dosovitskiy et al. 2021, Sec 3.2).

  Args:
    posemb: array [1, num_prefix_tokens + h*w, D] (or without the leading 1).
    new_grid: (h', w') target grid, or an int token count (square grid), or
      an array/ShapeDtypeStruct whose token axis gives the square grid.
    old_grid: (h, w) of `posemb`; inferred as a square when None.
    num_prefix_tokens: leading entries that are not on the grid (e.g. the
      class token's slot of vit_jax checkpoints); they are kept unchanged.

  Returns:
    numpy float array with `num_prefix_tokens + h'*w'` tokens. Exactly the
    input when the grid does not change; a constant grid stays constant.
  """
  posemb = np.asarray(posemb)
  squeeze = posemb.ndim == 2
  if squeeze:
    posemb = posemb[None]
  prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
  if old_grid is None:
    old_grid = _grid_of(grid.shape[1], "the checkpoint's position embedding")
  if isinstance(new_grid, (int, np.integer)):
    new_grid = _grid_of(int(new_grid), "the model's position embedding")
  elif hasattr(new_grid, "shape"):
    new_grid = _grid_of(new_grid.shape[-2] - num_prefix_tokens,
                        "the model's position embedding")
  old_grid, new_grid = tuple(old_grid), tuple(new_grid)
  if old_grid[0] * old_grid[1] != grid.shape[1]:
    raise ValueError(f"old_grid={old_grid} does not match {grid.shape[1]} "
                     "position embeddings.")
  if old_grid != new_grid:
    logging.info("Resampling position embedding grid %s -> %s.",
                 old_grid, new_grid)
    d = grid.shape[-1]
    img = grid.reshape(old_grid + (d,)).astype(np.float32)
    # Bilinear with half-pixel centres; antialias when shrinking. The weights
    # are normalised, so a constant grid stays constant.
    img = jax.image.resize(img, new_grid + (d,), method="bilinear")
    grid = np.asarray(img, np.float32).astype(posemb.dtype)
    grid = grid.reshape(1, new_grid[0] * new_grid[1], d)
  out = np.concatenate([prefix, grid], axis=1)
  return out[0] if squeeze else out


# ----------------------------------------------------------------------------
# Scanned <-> per-block layouts.
# ----------------------------------------------------------------------------
def _block_names(flat: Mapping[str, Any], prefix: str):
  """{index: {rest: leaf}} for names `{prefix}_{index}/{rest}`."""
  pat = re.compile(re.escape(prefix) + r"_(\d+)/(.+)")
  blocks: dict[int, dict[str, Any]] = {}
  for name, leaf in flat.items():
    if m := pat.fullmatch(name):
      blocks.setdefault(int(m.group(1)), {})[m.group(2)] = leaf
  return blocks


def pyloop_to_scan(params: Mapping, prefix: str = "Transformer/encoderblock"):
  """`{prefix}_{i}/x` (i=0..depth-1) -> `{prefix}/x` stacked on a new axis 0.

  The layout `nn.scan(..., variable_axes={"params": 0})` produces. Other
  parameters pass through. Returns a nested dict.
  """
  flat = utils.flatten_dict(params)
  blocks = _block_names(flat, prefix)
  if not blocks:
    return utils.unflatten_dict(flat)
  depth = len(blocks)
  if sorted(blocks) != list(range(depth)):
    raise ValueError(f"Blocks under {prefix!r} are not numbered 0..{depth-1}: "
                     f"{sorted(blocks)}.")
  names = set(blocks[0])
  for i, b in blocks.items():
    if set(b) != names:
      raise ValueError(
          f"{prefix}_{i} has different parameters than {prefix}_0: "
          f"{sorted(set(b) ^ names)}.")
  out = {k: v for k, v in flat.items()
         if not re.fullmatch(re.escape(prefix) + r"_\d+/.+", k)}
  for rest in sorted(names):
    out[f"{prefix}/{rest}"] = _stack([blocks[i][rest] for i in range(depth)])
  return utils.unflatten_dict(out)


def scan_to_pyloop(params: Mapping, prefix: str = "Transformer/encoderblock"):
  """`{prefix}/x` with leading depth axis -> `{prefix}_{i}/x`. Inverse of
  `pyloop_to_scan`; other parameters pass through. Returns a nested dict."""
  flat = utils.flatten_dict(params)
  scanned = {k[len(prefix) + 1:]: v for k, v in flat.items()
             if k.startswith(prefix + "/")}
  if not scanned:
    return utils.unflatten_dict(flat)
  depths = {_shape(v)[0] for v in scanned.values()}
  if len(depths) != 1:
    raise ValueError(f"Scanned parameters under {prefix!r} disagree on the "
                     f"depth (leading axis): {sorted(depths)}.")
  depth = depths.pop()
  out = {k: v for k, v in flat.items() if not k.startswith(prefix + "/")}
  for rest, leaf in scanned.items():
    for i, x in enumerate(_unstack(leaf, depth)):
      out[f"{prefix}_{i}/{rest}"] = x
  return utils.unflatten_dict(out)


def is_scanned(params: Mapping,
               prefix: str = "Transformer/encoderblock") -> bool | None:
  """True for the scan layout, False for per-block, None if neither is found."""
  flat = utils.flatten_dict(params)
  if any(k.startswith(prefix + "/") for k in flat):
    return True
  if any(re.match(re.escape(prefix) + r"_\d+/", k) for k in flat):
    return False
  return None


# ----------------------------------------------------------------------------
# Checkpoint values into an initialised tree.
# ----------------------------------------------------------------------------
def _compile(patterns: Iterable[str]) -> list[re.Pattern]:
  if isinstance(patterns, str):
    patterns = (patterns,)
  out = []
  for p in patterns:
    try:
      out.append(re.compile(p))
    except re.error as e:
      raise ValueError(f"Invalid dont_load regex {p!r}: {e}") from e
  return out


def _listing(title: str, items: Iterable[str]) -> str:
  items = list(items)
  return f"{title} ({len(items)}):\n" + "\n".join(f"  {s}" for s in items)


def match_scan_layout(restored: Mapping, init_params: Mapping | None,
                      model_cfg: Mapping | None, prefix: str) -> Mapping:
  """Converts a checkpoint to the block layout (scanned or not) of the model.

  The model's layout is read from `init_params` when given, else from
  `model_cfg["scan"]`; either checkpoint layout loads into either model.
  """
  if init_params is not None:
    want_scan = is_scanned(init_params, prefix)
  else:
    want_scan = bool((model_cfg or {}).get("scan", False))
  have_scan = is_scanned(restored, prefix)
  if want_scan and have_scan is False:
    return pyloop_to_scan(restored, prefix)
  if want_scan is False and have_scan:
    return scan_to_pyloop(restored, prefix)
  return restored


def merge_params(loaded: Mapping, init: Mapping, dont_load: Sequence[str] = ()):
  """Returns `init`'s tree with leaves taken from `loaded`.

  A parameter keeps its fresh init when its '/'-joined name fully matches one
  of the `dont_load` regexes (e.g. "head/.*" to fine-tune on a new label set).
  Every other parameter must be in `loaded` with the same shape, and `loaded`
  must hold nothing the model lacks (unless matched by `dont_load`): silently
  dropping or inventing weights hides real bugs (a renamed module, the wrong
  variant), so any mismatch raises one ValueError that lists all offending
  names with both shapes.

  Loaded leaves are cast to the init leaf's dtype when they differ; values
  come back as numpy arrays (init leaves that are kept are returned as is).
  """
  patterns = _compile(dont_load)

  def skip(name):
    return any(p.fullmatch(name) for p in patterns)

  flat_loaded = utils.flatten_dict(loaded)
  flat_init = utils.flatten_dict(init)

  missing = [n for n in flat_init if n not in flat_loaded and not skip(n)]
  unexpected = [n for n in flat_loaded if n not in flat_init and not skip(n)]
  wrong_shape = [n for n in flat_init
                 if n in flat_loaded and not skip(n)
                 and _shape(flat_loaded[n]) != _shape(flat_init[n])]
  if missing or unexpected or wrong_shape:
    parts = ["Checkpoint does not match the model."]
    if wrong_shape:
      parts.append(_listing("Shape differs (checkpoint vs model)", [
          f"{n}: {_shape(flat_loaded[n])} vs {_shape(flat_init[n])}"
          for n in wrong_shape]))
    if missing:
      parts.append(_listing("In the model but not in the checkpoint", [
          f"{n}: {_shape(flat_init[n])}" for n in missing]))
    if unexpected:
      parts.append(_listing("In the checkpoint but not in the model", [
          f"{n}: {_shape(flat_loaded[n])}" for n in unexpected]))
    parts.append("To keep the model's fresh init for some of these (e.g. a "
                 "new head), pass dont_load regexes such as ('head/.*',).")
    raise ValueError("\n".join(parts))

  merged, kept = {}, []
  for name, init_leaf in flat_init.items():
    if skip(name) or name not in flat_loaded:
      merged[name] = init_leaf
      kept.append(name)
      continue
    value = np.asarray(flat_loaded[name])
    if value.dtype != init_leaf.dtype:
      value = value.astype(init_leaf.dtype)
    merged[name] = value
  ignored = [n for n in flat_loaded if n not in flat_init]
  if kept:
    logging.info("Not loaded from the checkpoint (fresh init kept): %s",
                 ", ".join(kept))
  if ignored:
    logging.info("In the checkpoint but unused (dont_load): %s",
                 ", ".join(ignored))
  return utils.unflatten_dict(merged)


# ----------------------------------------------------------------------------
# Reading checkpoints: released short names, prefixes, sub-models.
# ----------------------------------------------------------------------------
# big_vision's short names of released checkpoints -> their public URLs.
# ViT: AugReg "How to train your ViT" (arXiv:2106.10270) i21k upstreams and
# the plain ViT-S/16 i1k baselines (arXiv:2205.01580), as big_vision's
# vit.py and transfer configs name them; SigLIP image towers (`:img` selects
# the image tower of the two-tower file). BiT: see `bit_release_url`.
_AUGREG = "gs://vit_models/augreg/"
_HOWTO = {
    "Ti/16": "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0",
    "S/32": "S_32-i21k-300ep-lr_0.001-aug_none-wd_0.1-do_0.0-sd_0.0",
    "S/16": "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0",
    "B/32": "B_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0",
    "B/16": "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0",
    "B/8": "B_8-i21k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0",
    "L/16": "L_16-i21k-300ep-lr_0.001-aug_strong1-wd_0.1-do_0.0-sd_0.0",
}
_SIGLIP = {
    "B/16 224": "webli_en_b16_224_63724782",
    "B/16 256": "webli_en_b16_256_60500360",
    "B/16 384": "webli_en_b16_384_68578854",
    "B/16 512": "webli_en_b16_512_68580893",
    "L/16 256": "webli_en_l16_256_60552751",
    "L/16 384": "webli_en_l16_384_63634585",
    "So400m/14 224": "webli_en_so400m_224_57633886",
    "So400m/14 384": "webli_en_so400m_384_58765454",
    "B/16-i18n 256": "webli_i18n_b16_256_66117334",
}
RELEASED = {
    **{f"howto-i21k-{v}": f"{_AUGREG}{f}.npz" for v, f in _HOWTO.items()},
    **{f"i1k-s16-{e}": f"gs://big_vision/vit_s16_i1k_{e}.npz"
       for e in ("90ep", "150ep", "300ep")},
    **{f"SigLIP {v}": f"gs://big_vision/siglip/{f}.npz:img"
       for v, f in _SIGLIP.items()},
    "FunMatch-224px-i1k82.8": "gs://bit_models/distill/R50x1_224.npz",
    "FunMatch-160px-i1k80.5": "gs://bit_models/distill/R50x1_160.npz",
}
_BIT_UPSTREAMS = ("S", "M", "L")


def bit_release_url(name: str, model_cfg: Mapping | None = None) -> str | None:
  """BiT's paper names -> URL, None if `name` is not one.

  "S" / "M" / "L": the BiT-S/M/L upstream of the model's depth and width
  (config.model depth=50, width=1 -> gs://bit_models/BiT-M-R50x1.npz);
  "M-ILSVRC2012" (or "M-imagenet2012"): that upstream fine-tuned on i1k;
  "M-run0-caltech101" and the like: the VTAB fine-tunings.
  """
  if not isinstance(name, str) or not name or name[0] not in _BIT_UPSTREAMS:
    return None
  if len(name) > 1 and name[1] != "-":
    return None
  up, down = name[0], name[1:]
  down = {"-imagenet2012": "-ILSVRC2012"}.get(down, down)
  cfg = dict(model_cfg or {})
  depth, width = cfg.get("depth", 50), cfg.get("width", 1)
  if "variant" in cfg and cfg["variant"]:
    m = re.fullmatch(r"R(\d+)x(\d+)", str(cfg["variant"]))
    if m:
      depth, width = int(m.group(1)), int(m.group(2))
  return f"gs://bit_models/BiT-{up}-R{depth}x{width}{down}.npz"


def resolve_init(init_file: str, model_cfg: Mapping | None = None,
                 family: str | None = None) -> str:
  """A short name of a released checkpoint -> its URL; paths unchanged.

  `family="bit"` also resolves BiT's "S"/"M"/"L"[-finetune] names (they
  depend on config.model's depth and width).
  """
  if init_file in RELEASED:
    return RELEASED[init_file]
  if family == "bit":
    url = bit_release_url(init_file, model_cfg)
    if url is not None:
      return url
  return init_file


def unwrap_checkpoint(tree: Mapping) -> dict:
  """The params of a checkpoint tree, whatever its top-level wrapping.

  big_vision's train-state .npz files keep the params under `params/`
  (beside `opt/...`), older Flax-optimizer ones under `opt/target/`; bare
  params (published models, our exports) are returned as they are.
  """
  tree = dict(tree)
  if isinstance(tree.get("params"), Mapping):
    return dict(tree["params"])
  opt = tree.get("opt")
  if isinstance(opt, Mapping) and isinstance(opt.get("target"), Mapping):
    return dict(opt["target"])
  return tree


def checkpoint_location(init_file: str, model_cfg: Mapping | None = None,
                        family: str | None = None) -> tuple[str, str | None]:
  """(file or URL, sub-model key or None) that `init_file` names: a short
  name resolved (`resolve_init`), "file.npz:img" split. Reads nothing (the
  config check uses it to probe the file before any work)."""
  import os  # pylint: disable=g-import-not-at-top
  path = resolve_init(init_file, model_cfg, family)
  m = re.fullmatch(r"(.*\.npz):([\w/]+)", path)
  if m and not os.path.exists(path):
    return m.group(1), m.group(2)
  return path, None


def read_checkpoint(init_file, model_cfg: Mapping | None = None,
                    family: str | None = None) -> dict:
  """Checkpoint params for a model's `load`, from a path, name or tree.

  Accepts an already loaded tree; a path (.npz local or gs://, or a training
  workdir); a released short name (`RELEASED`, BiT's "M", ...). A path may
  end in ":<sub/tree>" to select a sub-model (e.g. "file.npz:img", the
  image tower of a two-tower checkpoint), as in big_vision. `params/` and
  `opt/target/` prefixes are stripped (`unwrap_checkpoint`). An unreadable
  released or remote checkpoint is a ValueError naming its URL.
  """
  if isinstance(init_file, Mapping):
    return unwrap_checkpoint(init_file)
  import os  # pylint: disable=g-import-not-at-top
  from big_vision import checkpoint  # pylint: disable=g-import-not-at-top
  name = os.fspath(init_file)
  path, subkey = checkpoint_location(name, model_cfg, family)
  try:
    tree = checkpoint.load_params(path)
  except Exception as e:  # pylint: disable=broad-except
    if path == name and "://" not in path:
      raise
    what = f"released checkpoint {name!r} = {path}" if path != name else path
    raise ValueError(
        f"Cannot read the {what} ({type(e).__name__}: {e}). Offline, copy "
        f"it to local disk elsewhere (gsutil cp {path} .) and set "
        "config.model_init to the local path.") from e
  tree = unwrap_checkpoint(tree)
  if subkey:
    for part in subkey.split("/"):
      if not isinstance(tree, Mapping) or part not in tree:
        raise ValueError(f"{name!r}: the checkpoint has no sub-model "
                         f"{subkey!r} (top-level keys: {sorted(tree)}).")
      tree = tree[part]
    tree = unwrap_checkpoint(tree)
  return dict(tree)
