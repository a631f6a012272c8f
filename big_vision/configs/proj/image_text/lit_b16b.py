r"""LiT B/16-B (Zhai et al. 2022, "LiT: Zero-Shot Transfer with Locked-image
text Tuning").

  python -m big_vision.train --workdir workdirs/lit_b16b \
      --config big_vision/configs/proj/image_text/lit_b16b.py:data=D,img=P

Recipe, as we read the paper: the image tower is a pre-trained ViT-B/16
(an AugReg ImageNet-21k checkpoint, `.npz`, class token), LOADED and LOCKED:
`model_init={"img": path}` (its classification head is not loaded:
`model_load.dont_load=["img/head/.*"]`) and `schedule` None for `img/.*`,
so it gets no updates and no optimizer state. The image representation
(768 dims, no projection: out_dim=(None, 768)) is the target space; a B
text transformer (16 tokens, c4_en 32k vocabulary) is trained from scratch
with a projection head into it, with the softmax contrastive loss and
t = log 10. Batch 16k, Adam (beta2 = 0.95), lr 1e-3, weight decay 1e-4,
linear warmup then cosine decay, 4B seen pairs. The locked tower needs no
gradients, so its activations need not be kept: LiT is much cheaper per
step than training both towers.

Data: as siglip_b16.py (`data`, `text_key`, `vocab`).
Expected (not reproduced here: it needs a pod): roughly 70% zero-shot
ImageNet top-1 with an AugReg B/16 and a web-scale dataset, in the range
the paper reports for B/16-B; the data matters most. On the demo data, see tests/test_image_text_train.py: the
image tower stays bit-identical while the text tower trains.

Args: runlocal (4 steps on the shapes data, tiny towers and no image
checkpoint: it exercises the locked schedule and the training step, the
test exercises loading), img (the ViT .npz), data, text_key, choose, vocab,
batch, examples (billions seen).
"""
import ml_collections

from big_vision.configs import common
from big_vision.configs.proj.image_text import common as it_common

C4_EN = "gs://t5-data/vocabs/cc_en.32000/sentencepiece.model"
AUGREG_B16 = ("gs://vit_models/augreg/B_16-i21k-300ep-lr_0.001-aug_medium1-"
              "wd_0.1-do_0.0-sd_0.0.npz")


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, img=AUGREG_B16, data="webli",
                         text_key="texts", choose=True, vocab=C4_EN,
                         batch=16_384, examples=4.0)
  tokenize = (f"tokenize(16, model={arg.vocab!r}, eos='sticky', pad_value=1, "
              f"inkey={arg.text_key!r}, outkey='labels')")
  pp_img = "decode|resize(224)|value_range(-1, 1)"
  pick = f"choice(key={arg.text_key!r})|" if arg.choose else ""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_examples = int(arg.examples * 1e9)
  config.input = ml_collections.ConfigDict(dict(
      data=dict(name=arg.data, split="train"),
      batch_size=arg.batch, shuffle_buffer_size=250_000,
      pp=(f"{pp_img}|{pick}lower(key={arg.text_key!r})|{tokenize}"
          "|keep('image', 'labels')")))
  config.loss = "softmax_contrastive"

  config.model_name = "two_towers"
  config.model = dict(
      image_model="vit",
      image=dict(variant="B/16", pool_type="tok"),
      text_model="text_transformer",
      text=dict(variant="B", vocab_size=32_000, pool_type="last"),
      out_dim=(None, 768), temperature_init=10.0, bias_init=None)
  config.model_init = {"img": arg.img}
  config.model_load = dict(dont_load=["img/head/.*"])

  config.optax_name = "scale_by_adam"
  config.optax = dict(b2=0.95)
  config.lr = 1e-3
  config.wd = 1e-4
  config.schedule = [("img/.*", None),
                     (".*", dict(warmup_steps=10_000, decay_type="cosine"))]
  config.grad_clip_norm = 1.0

  config.log_training_steps = 50
  config.ckpt_steps = 1_000
  config.keep_ckpt_steps = 50_000
  eval_tokenize = tokenize.replace(f"inkey={arg.text_key!r}", "inkey='texts'")
  config.evals = ml_collections.ConfigDict()
  config.evals.zeroshot = dict(
      type="zeroshot", log_steps=10_000, batch_size=1024, pp_img=pp_img,
      pp_txt=eval_tokenize, prompts="photos",
      datasets=dict(
          imagenet=dict(data=dict(name="imagenet2012", split="validation"),
                        class_names="imagenet2012"),
          cifar100=dict(data=dict(name="cifar100", split="test"),
                        class_names="cifar100"),
          pets=dict(data=dict(name="oxford_iiit_pet", split="test"),
                    class_names="oxford_iiit_pet", prompts="pets")))

  if arg.runlocal:
    it_common.runlocal_shrink(config)
    config.model.image.pool_type = "tok"
    del config.model_init
    config.schedule = [("img/.*", None),
                       (".*", dict(warmup_steps=1, decay_type="cosine"))]
  return config
