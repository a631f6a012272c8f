r"""Exports the params of a run (or an .npz) as an .npz file, in a chosen layout.

  python tools/export.py --workdir workdirs/digits --out model.npz
  python tools/export.py --workdir workdirs/vit --out vit.npz --layout vit_jax
  python tools/export.py --workdir model.npz --out ckpt.npz --prefix params

The .npz has one array per parameter, keys joined with '/'. Layouts:

  big_vision  (default) the published big_vision names, so
              `--config.model_init=model.npz` here or in big_vision loads it.
  vit_jax     the original vision_transformer (vit_jax) names of a ViT
              (per-block `encoderblock_<i>`, position embedding under
              `Transformer/posembed_input` with the class token's slot);
              two-tower models convert their ViT image tower. MLP-Mixer,
              BiT and text towers have the same names in both layouts.

`--prefix params` (or `opt/target`) nests everything under that prefix, as
big_vision's train-state files do; every model's `load` accepts all three.
Needs no tensorflow.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from big_vision import checkpoint  # pylint: disable=g-import-not-at-top
from big_vision import utils  # pylint: disable=g-import-not-at-top
from big_vision.models import common  # pylint: disable=g-import-not-at-top

LAYOUTS = ("big_vision", "vit_jax")
PREFIXES = ("", "params", "opt/target")


def _is_vit(tree) -> bool:
  return isinstance(tree, dict) and "Transformer" in tree and (
      "embedding" in tree)


def to_layout(params: dict, layout: str) -> dict:
  """Params in the big_vision layout -> `layout`."""
  if layout not in LAYOUTS:
    raise ValueError(f"Unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}.")
  if layout == "big_vision":
    return params
  from big_vision.models import vit  # pylint: disable=g-import-not-at-top
  if _is_vit(params):
    return vit.to_vit_jax(params)
  if _is_vit(params.get("img")):
    return {**params, "img": vit.to_vit_jax(params["img"])}
  return params  # Same names in both layouts.


def with_prefix(params: dict, prefix: str) -> dict:
  if prefix not in PREFIXES:
    raise ValueError(f"Unknown prefix {prefix!r}; valid: "
                     f"{', '.join(map(repr, PREFIXES))}.")
  for part in reversed([p for p in prefix.split("/") if p]):
    params = {part: params}
  return params


def main(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True,
                      help="A training workdir (its last complete checkpoint) "
                      "or an .npz file.")
  parser.add_argument("--out", required=True, help="Output .npz path.")
  parser.add_argument("--layout", default="big_vision", choices=LAYOUTS,
                      help="Parameter names to write (default: big_vision).")
  parser.add_argument("--prefix", default="", choices=PREFIXES,
                      help="Nest the params under this prefix.")
  args = parser.parse_args(argv)
  params = common.unwrap_checkpoint(checkpoint.load_params(args.workdir))
  params = with_prefix(to_layout(params, args.layout), args.prefix)
  checkpoint.save_params(params, args.out)
  print(f"Wrote {utils.tree_count(params):,} parameters "
        f"({len(utils.flatten_dict(params))} arrays, {args.layout} layout"
        f"{', under ' + args.prefix + '/' if args.prefix else ''}) to "
        f"{args.out}.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
