r"""Exports the params of a run's last complete checkpoint as an .npz file.

  python tools/export.py --workdir workdirs/digits --out model.npz

The .npz has one array per parameter, keys joined with '/', in the published
big_vision layout, so `--config.model_init=model.npz` (or any tool that reads
that layout) loads it. Needs no tensorflow.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from big_vision import checkpoint  # pylint: disable=g-import-not-at-top
from big_vision import utils  # pylint: disable=g-import-not-at-top


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True,
                      help="A training workdir (its last complete checkpoint).")
  parser.add_argument("--out", required=True, help="Output .npz path.")
  args = parser.parse_args()
  params = checkpoint.load_params(args.workdir)
  checkpoint.save_params(params, args.out)
  print(f"Wrote {utils.tree_count(params):,} parameters "
        f"({len(utils.flatten_dict(params))} arrays) to {args.out}.")


if __name__ == "__main__":
  main()
