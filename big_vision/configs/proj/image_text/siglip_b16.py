r"""SigLIP B/16 (Zhai et al. 2023, "Sigmoid Loss for Language Image
Pre-Training").

  python -m big_vision.train --workdir workdirs/siglip_b16 \
      --config big_vision/configs/proj/image_text/siglip_b16.py:data=D,vocab=V

Recipe, as we read the paper: ViT-B/16 at 224px with a MAP head and a B
text transformer (64 tokens, the 32k c4_en sentencepiece vocabulary, eos
kept at the end and used for padding so "last" pooling reads an eos), both
projected to 768 dims; sigmoid pairwise loss with t = log 10 and b = -10;
batch 32k; Adam (beta2 = 0.95, which the paper found to stabilise large
batch training), lr 1e-3, decoupled weight decay 1e-4, linear warmup then
cosine decay; 9B seen image-text pairs. Both towers are FSDP-sharded, use
bfloat16 matmuls and rematerialise their (scanned) blocks.

Data: a prepared image-text TFDS dataset with an `image` and a string (or
list of strings) feature `text_key`; WebLI, the paper's data, is not
public, so `data` names yours (e.g. a LAION / DataComp subset converted
with tools/prepare_datasets.py). `vocab`: path of the c4_en sentencepiece
model (default: the public T5 copy on GCS).
Expected (not reproduced here: it needs a pod): the paper reports about
76% zero-shot ImageNet top-1 for SigLIP B/16 at 224px on WebLI; public
web data of the same size typically gives a few points less.

Args: runlocal (4 steps on the embedded shapes data), data, text_key,
choose (the text feature is a list of captions: pick one per step), vocab,
batch, examples (billions seen), res.
"""
import ml_collections

from big_vision.configs import common
from big_vision.configs.proj.image_text import common as it_common

C4_EN = "gs://t5-data/vocabs/cc_en.32000/sentencepiece.model"


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, data="webli", text_key="texts",
                         choose=True, vocab=C4_EN, batch=32_768, examples=9.0,
                         res=224)
  tokenize = (f"tokenize(64, model={arg.vocab!r}, eos='sticky', pad_value=1, "
              f"inkey={arg.text_key!r}, outkey='labels')")
  pp_img = f"decode|resize({arg.res})|value_range(-1, 1)"
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_examples = int(arg.examples * 1e9)
  # Several captions per image: train on a random one each time.
  pick = f"choice(key={arg.text_key!r})|" if arg.choose else ""
  config.input = ml_collections.ConfigDict(dict(
      data=dict(name=arg.data, split="train"),
      batch_size=arg.batch, shuffle_buffer_size=250_000,
      pp=(f"{pp_img}|{pick}lower(key={arg.text_key!r})|{tokenize}"
          "|keep('image', 'labels')")))
  config.loss = "sigmoid_contrastive"

  config.model_name = "two_towers"
  config.model = dict(
      image_model="vit",
      image=dict(variant="B/16", pool_type="map", scan=True,
                 remat_policy="nothing_saveable", dtype_mm="bfloat16"),
      text_model="text_transformer",
      text=dict(variant="B", vocab_size=32_000, pool_type="last", scan=True,
                remat_policy="nothing_saveable", dtype_mm="bfloat16"),
      out_dim=768, temperature_init=10.0, bias_init=-10.0)

  config.optax_name = "scale_by_adam"
  config.optax = dict(b2=0.95, mu_dtype="bfloat16")
  config.lr = 1e-3
  config.wd = 1e-4
  config.schedule = dict(warmup_steps=5_000, decay_type="cosine")
  config.grad_clip_norm = 1.0

  config.mesh = [("fsdp", -1)]
  config.sharding_strategy = [(".*", "fsdp(axis='fsdp')")]

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
  config.evals.retrieval_coco = dict(
      type="retrieval", log_steps=10_000, batch_size=1024,
      data=dict(name="coco_captions", split="val"),
      pp_fn=(f"{pp_img}|flatten|choice(n=5, inkey='captions/text', "
             f"outkey='texts')|lower(key='texts')|{eval_tokenize}"
             "|keep('image', 'labels')"))

  if arg.runlocal:
    it_common.runlocal_shrink(config)
    config.schedule = dict(warmup_steps=1, decay_type="cosine")
    config.optax = dict(b2=0.95)
  return config
