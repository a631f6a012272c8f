"""The standard few-shot linear-probe suite, as an evaluator config block.

  config.evals.fewshot = common_fewshot.get_fewshot_lsr()          # real data
  config.evals.fewshot = common_fewshot.get_fewshot_lsr(runlocal=True)  # digits

Datasets (tfds name, train split, test split): caltech101, cars196, cifar100,
dtd, oxford_iiit_pet, uc_merced, and optionally ImageNet with the first 65k
train examples as the "train" pool (`imagenet=True`). Shots 1, 5, 10, 25;
3 seeds; l2_reg 2**10; resize 256 -> central crop 224. ViT-G/14 reaches 84.86%
ImageNet 10-shot with this protocol ("Scaling Vision Transformers").
"""
import ml_collections

DATASETS = {
    "caltech": ("caltech101", "train", "test"),
    "cars": ("cars196:2.1.0", "train", "test"),
    "cifar100": ("cifar100", "train", "test"),
    "dtd": ("dtd", "train", "test"),
    "pets": ("oxford_iiit_pet", "train", "test"),
    "uc_merced": ("uc_merced", "train[:1000]", "train[1000:]"),
}
IMAGENET = ("imagenet2012", "train[:65000]", "validation")
PP = ("decode|resize(256)|central_crop(224)|value_range(-1, 1)"
      "|keep('image', 'label')")


def get_fewshot_lsr(target_resolution=None, resize_resolution=None,
                    runlocal=False, pp=None, *, imagenet=False,
                    log_steps=None, res=None,
                    representation_layer="pre_logits", **kw):
  """Few-shot evaluator config; `runlocal` probes the embedded digits.

  Takes big_vision's arguments with their meaning: `target_resolution`
  (central crop, default 224; also `res`), `resize_resolution` (resize
  before the crop, default 8/7 of it: 256 for 224), `pp` (replaces the
  decode/resize/crop/value_range part; `|keep("image", "label")` is
  appended), and evaluator keys in `**kw`: shots, l2_reg, num_seeds (seeds
  0 .. n-1) or seeds, prefix, log_percent / log_epochs / log_examples,
  batch_size, datasets, display_first (accepted, not used: every result is
  written). `runlocal=True` here means the embedded digits (no download).
  """
  kw.pop("display_first", None)
  if "num_seeds" in kw:
    kw["seeds"] = tuple(range(int(kw.pop("num_seeds"))))
  if log_steps is None and not any(
      f"log_{x}" in kw for x in ("percent", "epochs", "examples")):
    log_steps = 5000
  if log_steps is not None:
    kw["log_steps"] = log_steps
  res = target_resolution or res
  if runlocal:
    res = res or 16  # As configs/common.py's digits eval: centre of 5/4 res.
    resize = resize_resolution or res * 5 // 4
    base = pp or (f"decode|resize({resize})|central_crop({res})"
                  "|value_range(-1, 1)")
    pp = f"{base}|keep('image', 'label')"
    return ml_collections.ConfigDict(dict(
        dict(type="fewshot_lsr",
             datasets={"digits": ("digits", "train", "test")},
             pp_train=pp, pp_eval=pp, shots=(1, 5, 10), l2_reg=2.0 ** 10,
             seeds=(0, 1, 2), representation_layer=representation_layer,
             batch_size=64), **kw))
  datasets = dict(DATASETS)
  if imagenet:
    datasets = {"imagenet": IMAGENET, **datasets}
  res = res or 224
  resize = resize_resolution or res * 8 // 7
  base = pp or (f"decode|resize({resize})|central_crop({res})"
                "|value_range(-1, 1)")
  pp = f"{base}|keep('image', 'label')"
  return ml_collections.ConfigDict(dict(
      dict(type="fewshot_lsr", datasets=datasets,
           pp_train=pp, pp_eval=pp, shots=(1, 5, 10, 25), l2_reg=2.0 ** 10,
           seeds=(0, 1, 2), representation_layer=representation_layer,
           batch_size=512), **kw))
