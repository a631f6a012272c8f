"""Config blocks shared by the image-text configs (plain data).

The embedded `shapes_captions` data (32x32 shapes, 5 captions each, with a
tokenizer trained on the fly) backs the demo and every config's `runlocal`:
`shapes_input`, `shapes_evals` and `runlocal_shrink` below.
"""
import ml_collections

SHAPES_MAX_LEN = 12
SHAPES_TOKENIZE = (f"tokenize({SHAPES_MAX_LEN}, model='shapes_captions', "
                   "eos='sticky', pad_value=1, inkey='{inkey}', "
                   "outkey='labels')")
SHAPES_PP_IMG = "decode|resize(32)|value_range(-1, 1)"
SHAPES_PP_TRAIN = (
    f"{SHAPES_PP_IMG}|choice(inkey='texts', outkey='text')|"
    + SHAPES_TOKENIZE.format(inkey="text") + "|keep('image', 'labels')")
SHAPES_PP_RETRIEVAL = (f"{SHAPES_PP_IMG}|"
                       + SHAPES_TOKENIZE.format(inkey="texts")
                       + "|keep('image', 'labels')")
# Zero-shot prompts in the caption language of the data; the embeddings of
# a class's phrasings are averaged (prompt ensembling, as CLIP does with
# "a photo of a {}." and friends).
SHAPE_PROMPTS = ("a {}", "a {} on black", "a {} on white", "a {} on gray")
COLOR_PROMPTS = tuple(f"a picture of a {size} {{}} {shape}"
                      for size in ("small", "medium", "large")
                      for shape in ("circle", "square", "triangle"))


def shapes_input(batch_size: int, split: str = "train"):
  return ml_collections.ConfigDict(dict(
      data=dict(name="shapes_captions", split=split),
      batch_size=batch_size, shuffle_buffer_size=4000, pp=SHAPES_PP_TRAIN))


def shapes_evals(log_steps: int, batch_size: int = 200, split: str = "test",
                 loss_name: str = "sigmoid_contrastive",
                 attributes=("shape", "color"),
                 kinds=("zeroshot", "retrieval", "contrastive")):
  """Zero-shot (shape / colour), retrieval and in-batch contrastive evals."""
  data = dict(name="shapes_captions", split=split)
  prompts = {"shape": SHAPE_PROMPTS, "color": COLOR_PROMPTS}
  common = dict(log_steps=log_steps, skip_first=True, batch_size=batch_size,
                data=data)
  evals = dict(
      zeroshot=dict(
          type="zeroshot", pp_img=SHAPES_PP_IMG,
          pp_txt=SHAPES_TOKENIZE.format(inkey="texts"),
          datasets={a: dict(label_key=a, prompts=prompts[a])
                    for a in attributes}, **common),
      retrieval=dict(type="retrieval", pp_fn=SHAPES_PP_RETRIEVAL, **common),
      contrastive=dict(type="contrastive", pp_fn=SHAPES_PP_TRAIN,
                       loss_name=loss_name, **common),
  )
  return ml_collections.ConfigDict({k: evals[k] for k in kinds})


def runlocal_shrink(config, steps: int = 4, batch_size: int = 16,
                    eval_kinds=("zeroshot",)):
  """A few steps on shapes_captions, keeping the recipe's model families,
  loss, optimizer and schedule types (so the recipe's code paths run)."""
  config.input = shapes_input(batch_size)
  config.total_steps = steps
  for key in ("total_epochs", "total_examples"):
    if key in config:
      del config[key]
  config.log_training_steps = 1
  config.ckpt_steps = steps
  config.evals = shapes_evals(log_steps=steps, batch_size=64,
                              split="test[:64]", loss_name=config.loss,
                              attributes=("shape",), kinds=eval_kinds)
  image, text = dict(config.model.image), dict(config.model.text)
  image.update(variant="mu/8")
  text.update(variant="mu", vocab_size=128)
  for cfg in (image, text):
    for key in ("width", "depth", "mlp_dim", "num_heads", "patch_size"):
      cfg.pop(key, None)
    cfg["scan"] = False
    cfg["remat_policy"] = "none"
  config.model.image, config.model.text = image, text
  if isinstance(config.model.out_dim, (tuple, list)):
    config.model.out_dim = tuple(None if d is None else 32
                                 for d in config.model.out_dim)
    if config.model.out_dim[0] is None:  # LiT: text head matches ViT-mu.
      config.model.out_dim = (None, 32)
  else:
    config.model.out_dim = 32
  return config


# ----------------------------------------------------------------------------
# big_vision's image-text eval helpers, with its arguments, for this
# project's evaluators (`zeroshot`, `retrieval`).
# ----------------------------------------------------------------------------
def _square875(sz):
  """big_vision's eval crop: resize to sz / 0.875, central crop sz."""
  return f"resize({int(sz / 0.875)})|central_crop({sz})|value_range(-1, 1)"


def _need_pp_txt(pp_txt, helper):
  if not pp_txt:
    raise ValueError(
        f"{helper}: pass pp_txt, the tokenize op of your text tower, e.g. "
        "pp_txt=\"tokenize(16, model='/path/c4_en.model', inkey='texts', "
        "eos='sticky', pad_value=1)\" (this project names the sentencepiece "
        "model in the op).")
  return pp_txt


# big_vision dataset name -> (TFDS data, class names, prompt set) of the
# zeroshot evaluator ("clip" class names = this project's i1k names).
DISCLF_DATASETS = {
    "imagenet2012": (dict(name="imagenet2012", split="validation"),
                     "imagenet2012", "photos"),
    "imagenet2012_minival": (dict(name="imagenet2012", split="train[99%:]"),
                             "imagenet2012", "photos"),
    "imagenet_v2": (dict(name="imagenet_v2", split="test"), "imagenet2012",
                    "photos"),
    "cifar10": (dict(name="cifar10", split="test"), "cifar10", "photos"),
    "cifar100": (dict(name="cifar100", split="test"), "cifar100", "photos"),
    "oxford_iiit_pet": (dict(name="oxford_iiit_pet", split="test"),
                        "oxford_iiit_pet", "pets"),
}


def get_disclf(sz, *, pp_txt=None, dataset_names=("imagenet2012",), **kw):
  """big_vision's zero-shot classification block ("discriminative
  classifier") for `dataset_names`, at image size `sz` (resize sz/0.875,
  central crop): a `zeroshot` evaluator here. `**kw` are evaluator keys
  (log_steps, log_percent, batch_size, prefix; default prefix "z/0shot/").
  """
  unknown = [n for n in dataset_names if n not in DISCLF_DATASETS]
  if unknown:
    raise ValueError(f"get_disclf: unknown datasets {unknown}; valid: "
                     f"{', '.join(DISCLF_DATASETS)}.")
  kw.pop("cache_final", None)  # big_vision's; the evaluator caches anyway.
  datasets = {}
  for name in dataset_names:
    data, class_names, prompts = DISCLF_DATASETS[name]
    datasets[name] = dict(data=dict(data), class_names=class_names,
                          prompts=prompts)
  return ml_collections.ConfigDict(dict(
      dict(type="zeroshot", prefix="z/0shot/",
           pp_img=f"decode|{_square875(sz)}",
           pp_txt=_need_pp_txt(pp_txt, "get_disclf"), datasets=datasets),
      **kw))


def get_coco(*, pp_img="resize(224)|value_range(-1, 1)", pp_txt=None,
             prefix="z/retr/coco_", **kw):
  """big_vision's COCO-captions retrieval block: a `retrieval` evaluator on
  coco_captions "val", `pp_img` on the image (decoded first), `pp_txt`
  tokenizing "texts" (five captions an image) into "labels"."""
  pp_txt = _need_pp_txt(pp_txt, "get_coco")
  return ml_collections.ConfigDict(dict(
      dict(type="retrieval", prefix=prefix,
           data=dict(name="coco_captions", split="val"),
           pp_fn=(f"decode|{pp_img}|coco_captions(outkey='texts')"
                  f"|choice(n=5, key='texts')|{pp_txt}"
                  "|keep('image', 'labels')")),
      **kw))
