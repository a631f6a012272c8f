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


def get_fewshot_lsr(runlocal=False, imagenet=False, log_steps=5000,
                    res=None, representation_layer="pre_logits"):
  """Few-shot evaluator config; `runlocal` probes the embedded digits.

  `res`: input resolution (default 224, or 16 for the digits).
  """
  if runlocal:
    res = res or 16  # As configs/common.py's digits eval: centre of 5/4 res.
    pp = (f"decode|resize({res * 5 // 4})|central_crop({res})"
          "|value_range(-1, 1)|keep('image', 'label')")
    return ml_collections.ConfigDict(dict(
        type="fewshot_lsr", log_steps=log_steps,
        datasets={"digits": ("digits", "train", "test")},
        pp_train=pp, pp_eval=pp, shots=(1, 5, 10), l2_reg=2.0 ** 10,
        seeds=(0, 1, 2), representation_layer=representation_layer,
        batch_size=64))
  datasets = dict(DATASETS)
  if imagenet:
    datasets = {"imagenet": IMAGENET, **datasets}
  res = res or 224
  pp = PP.replace("resize(256)", f"resize({res * 8 // 7})").replace(
      "central_crop(224)", f"central_crop({res})")
  return ml_collections.ConfigDict(dict(
      type="fewshot_lsr", log_steps=log_steps, datasets=datasets,
      pp_train=pp, pp_eval=pp, shots=(1, 5, 10, 25), l2_reg=2.0 ** 10,
      seeds=(0, 1, 2), representation_layer=representation_layer,
      batch_size=512))
