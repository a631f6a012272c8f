r"""Writes a FlexiViT checkpoint as a plain ViT at one patch size (.npz).

  python tools/flexi_resize.py --checkpoint workdirs/flexivit_digits \
      --patch_size 6 --image_size 24 --out vit_p6.npz

The patch-embedding kernel is PI-resized (FlexiViT, Beyer et al. 2023) from
its underlying size to `--patch_size`, and the position embedding resampled
(bilinearly) to the grid image_size / patch_size. The result is an ordinary
ViT checkpoint: a config with `model.patch_size=(6, 6)` and no
flexi_base_patch loads it with `--config.model_init=vit_p6.npz`, and
computes what the FlexiViT computes when called with patch_size=6.

(`big_vision.models.vit.load` does the same on the fly: a plain ViT config
can also take the FlexiViT checkpoint itself as `model_init`.) Needs no
tensorflow.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from big_vision import checkpoint  # pylint: disable=g-import-not-at-top
from big_vision.models import common  # pylint: disable=g-import-not-at-top
from big_vision.models import vit  # pylint: disable=g-import-not-at-top


def resize(params: dict, patch_size: int, image_size: int) -> dict:
  """The ViT params of a FlexiViT checkpoint at `patch_size`."""
  if image_size % patch_size:
    raise ValueError(f"--image_size {image_size} is not a multiple of "
                     f"--patch_size {patch_size}.")
  out = dict(params)
  emb = dict(out["embedding"])
  emb["kernel"] = np.asarray(vit.pi_resize(
      np.asarray(emb["kernel"], np.float32), (patch_size, patch_size)))
  out["embedding"] = emb
  if "pos_embedding" in out:
    grid = image_size // patch_size
    out["pos_embedding"] = common.resample_posemb(out["pos_embedding"],
                                                  (grid, grid))
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--checkpoint", required=True,
                      help="FlexiViT .npz or workdir.")
  parser.add_argument("--patch_size", type=int, required=True)
  parser.add_argument("--image_size", type=int, required=True)
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  params = vit.load(None, args.checkpoint, {})
  checkpoint.save_params(resize(params, args.patch_size, args.image_size),
                         args.out)
  print(f"Wrote {args.out}: patch {args.patch_size}, grid "
        f"{args.image_size // args.patch_size}.")


if __name__ == "__main__":
  main()
