r"""Downloads and prepares datasets into a TFDS data dir, ahead of training.

Training machines often have no internet; prepare the data once on a machine
that has it, into a shared dir (local disk, NFS or gs://), then point runs at
it with --config.input.data.data_dir=DIR or TFDS_DATA_DIR=DIR.

  python tools/prepare_datasets.py --data_dir ~/tensorflow_datasets cifar10 dtd
  python tools/prepare_datasets.py --data_dir /data/tfds --standard
  python tools/prepare_datasets.py --data_dir /data/tfds digits   # offline

Embedded datasets (`digits`, ...) are generated locally, no download. Some
TFDS datasets need files you download by hand first (licence terms); put
them into DIR/downloads/manual (or --manual_dir) before running:

  imagenet2012, imagenet2012_real: ILSVRC2012_img_train.tar and
    ILSVRC2012_img_val.tar from https://image-net.org (account needed);
    imagenet2012_real also reads the ImageNet validation tar.
  imagenet_v2: downloaded automatically.
"""
import argparse
import os
import sys

# The standard evaluation/pretraining suite of big_vision configs.
STANDARD = (
    "imagenet2012", "imagenet2012_real", "imagenet_v2", "cifar10", "cifar100",
    "oxford_iiit_pet", "oxford_flowers102", "caltech101", "cars196", "dtd",
    "uc_merced", "coco_captions",
)
MANUAL = {
    "imagenet2012": "ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar",
    "imagenet2012_real": "ILSVRC2012_img_val.tar",
}


def prepare(name: str, data_dir: str, manual_dir: str | None = None) -> str:
  """Prepares one dataset; returns where it now lives."""
  # Imported here so that --help is instant.
  from big_vision import datasets  # pylint: disable=g-import-not-at-top
  from big_vision.datasets import tf_import  # pylint: disable=g-import-not-at-top,unused-import
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  if name in datasets.embedded_names():
    return datasets.prepare_embedded(name, data_dir).data_dir
  builder = tfds.builder(name, data_dir=data_dir)
  if builder.is_prepared():
    return builder.data_dir
  config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  try:
    builder.download_and_prepare(download_config=config)
  except AssertionError as e:
    if name in MANUAL:
      raise RuntimeError(
          f"{name} needs manually downloaded files ({MANUAL[name]}) in "
          f"{manual_dir or os.path.join(data_dir, 'downloads', 'manual')}: "
          f"{e}") from e
    raise
  return builder.data_dir


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("names", nargs="*", help="TFDS or embedded dataset names"
                      " ('name' or 'name:version').")
  parser.add_argument("--data_dir", required=True, help="TFDS data dir.")
  parser.add_argument("--standard", action="store_true",
                      help=f"Also prepare: {', '.join(STANDARD)}.")
  parser.add_argument("--manual_dir", default=None,
                      help="Where manually downloaded files are "
                      "(default DATA_DIR/downloads/manual).")
  args = parser.parse_args(argv)
  names = list(args.names) + (list(STANDARD) if args.standard else [])
  if not names:
    parser.error("name at least one dataset, or pass --standard.")
  failed = []
  for name in dict.fromkeys(names):  # Unique, in order.
    try:
      where = prepare(name, args.data_dir, args.manual_dir)
      print(f"OK     {name}: {where}", flush=True)
    except Exception as e:  # pylint: disable=broad-except
      # Keep going: one missing manual download must not stop the others.
      failed.append(name)
      print(f"FAILED {name}: {type(e).__name__}: {e}", file=sys.stderr,
            flush=True)
  if failed:
    print(f"{len(failed)} failed: {', '.join(failed)}", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
