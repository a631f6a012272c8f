r"""SigLIP demo: a tiny two-tower model on the embedded shapes captions.

  python -m big_vision.train \
      --config big_vision/configs/proj/image_text/siglip_demo.py \
      --workdir workdirs/siglip_demo

Offline: the data (`shapes_captions`, 32x32 rendered shapes with 5 captions
each) and its sentencepiece tokenizer are generated on first use. A ViT
(8x8 patches, width 128, 3 blocks) and a text transformer (width 128, 2
blocks) are trained from scratch with the SigLIP sigmoid loss (t = log 10,
b = -10), batch 128.

Expected: zero-shot accuracy on the held-out (shape, colour) combinations
of the test split >= 0.9 for both `zeroshot/shape/top1` and
`zeroshot/color/top1`, image->text recall@1 reported as
`retrieval/i2t/r@1`, in a few minutes on 2 CPU cores
(tests/test_image_text_train.py runs exactly this config).

Args: runlocal (4 steps), steps (default 600), batch (128).
"""
import ml_collections

from big_vision.configs import common

MAX_LEN = 12
TOKENIZE = (f"tokenize({MAX_LEN}, model='shapes_captions', eos='sticky', "
            "pad_value=1, inkey='{inkey}', outkey='labels')")
PP_IMG = "decode|resize(32)|value_range(-1, 1)"
PP_TRAIN = (f"{PP_IMG}|choice(inkey='texts', outkey='text')|"
            + TOKENIZE.format(inkey="text") + "|keep('image', 'labels')")
PP_RETRIEVAL = (f"{PP_IMG}|" + TOKENIZE.format(inkey="texts")
                + "|keep('image', 'labels')")
# Zero-shot prompts, in the caption language of the data (several
# phrasings per class, averaged).
SHAPE_PROMPTS = ("a {}", "a {} on black", "a {} on white", "a {} on gray")
COLOR_PROMPTS = ("a {} shape on a black background",
                 "a {} shape on a white background",
                 "a {} shape on a gray background")


def shapes_evals(log_steps, batch_size=200, split="test"):
  """Zero-shot (shape, colour), retrieval and in-batch contrastive evals."""
  data = dict(name="shapes_captions", split=split)
  return ml_collections.ConfigDict(dict(
      zeroshot=dict(
          type="zeroshot", log_steps=log_steps, skip_first=True,
          batch_size=batch_size, data=data, pp_img=PP_IMG,
          pp_txt=TOKENIZE.format(inkey="texts"),
          datasets=dict(shape=dict(label_key="shape", prompts=SHAPE_PROMPTS),
                        color=dict(label_key="color",
                                   prompts=COLOR_PROMPTS))),
      retrieval=dict(type="retrieval", log_steps=log_steps, skip_first=True,
                     batch_size=batch_size, data=data, pp_fn=PP_RETRIEVAL),
      contrastive=dict(type="contrastive", log_steps=log_steps,
                       skip_first=True, batch_size=batch_size, data=data,
                       pp_fn=PP_TRAIN,
                       loss_name="sigmoid_contrastive"),
  ))


def shapes_input(batch_size):
  return ml_collections.ConfigDict(dict(
      data=dict(name="shapes_captions", split="train"),
      batch_size=batch_size, shuffle_buffer_size=4000, pp=PP_TRAIN))


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, steps=600, batch=128)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_steps = arg.steps
  config.input = shapes_input(arg.batch)
  config.loss = "sigmoid_contrastive"

  config.model_name = "two_towers"
  config.model = dict(
      image_model="vit",
      image=dict(width=128, depth=3, mlp_dim=256, num_heads=4,
                 patch_size=(8, 8), pool_type="gap", posemb="learn"),
      text_model="text_transformer",
      text=dict(width=128, depth=2, mlp_dim=256, num_heads=4, vocab_size=128,
                pool_type="last"),
      out_dim=128, temperature_init=10.0, bias_init=-10.0)

  config.optax_name = "scale_by_adam"
  config.optax = dict(b2=0.95)
  config.lr = 1e-3
  config.wd = 1e-4
  config.schedule = dict(warmup_steps=60, decay_type="cosine")
  config.grad_clip_norm = 1.0

  config.log_training_steps = 50
  config.ckpt_steps = 1000
  config.evals = shapes_evals(log_steps=arg.steps)

  if arg.runlocal:
    config.total_steps = 4
    config.input.batch_size = 16
    config.log_training_steps = 1
    config.schedule = dict(warmup_steps=1, decay_type="cosine")
    config.evals = shapes_evals(log_steps=4, batch_size=64)
    config.evals.zeroshot.datasets = dict(shape=dict(label_key="shape",
                                                     prompts=("a {}",)))
  return config
