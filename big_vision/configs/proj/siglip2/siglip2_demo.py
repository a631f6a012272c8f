r"""SigLIP 2 demo: a tiny NaFlex two-tower model with a captioning decoder,
trained from scratch on the embedded shapes captions at native aspect ratio.

  python -m big_vision.train \
      --config big_vision/configs/proj/siglip2/siglip2_demo.py \
      --workdir workdirs/siglip2_demo

Data: `shapes_captions_flex` (the shapes and captions of `shapes_captions`
on canvases from 28x56 to 56x28 pixels, generated on first use, offline).
Images enter as NaFlex patch sequences (8x8 patches, aspect ratio kept,
padded to 36 patches in training); the image tower (`naflex_vit`, width 128,
3 blocks, MAP head, a 6x6 learned posemb grid resized per image) and the
text transformer (width 128, 2 blocks) are trained with the sigmoid loss
(t = log 10, b = -10) plus a captioning decoder (2 blocks, cross-attention
to the image tokens) by next-token prediction, weights 1 and 1
(`config.loss = "combined"`): the SigLIP 2 recipe's first stage, in
miniature. Batch 128, 600 steps.

Evaluated on the test split, whose (colour, size) combinations never occur
in training, at two sequence lengths the model was not trained at (16 and
64 patches: one model, several lengths): `zeroshot_16/color/top1` and
`zeroshot_64/color/top1` (expected >= 0.9), shape accuracy and retrieval
at each length, and the decoder's held-out teacher-forced next-token
accuracy `captioning/token_acc` against `captioning/unigram_acc` (always
predicting the most frequent caption token). Measured with the command
above (seed 0, 600 steps, ~11 min on 2 shared CPU cores): zeroshot_16
colour 0.939 / shape 0.533, zeroshot_64 colour 0.999 / shape 0.573
(shape chance: 1/3), retrieval_64 i2t r@1 0.378; decoder at 36 patches:
token_acc 0.783 vs unigram_acc 0.201, perplexity 1.93.

Args: runlocal (4 steps), steps (600), batch (128), seq (36: training
sequence length).
"""
import ml_collections

from big_vision.configs import common
from big_vision.configs.proj.image_text import common as it_common
from big_vision.configs.proj.siglip2 import common as s2_common

PATCH = 8
MAX_LEN = it_common.SHAPES_MAX_LEN
EVAL_SEQ_LENS = (16, 64)


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, steps=600, batch=128, seq=36)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_steps = arg.steps
  config.input = ml_collections.ConfigDict(dict(
      data=dict(name="shapes_captions_flex", split="train"),
      batch_size=arg.batch, shuffle_buffer_size=4000,
      pp=(f"{s2_common.pp_naflex(arg.seq, PATCH)}|"
          "choice(inkey='texts', outkey='text')|"
          f"{s2_common.tokenize(MAX_LEN, 'shapes_captions', 'text')}|"
          "keep('image', 'labels')")))
  config.loss = "combined"
  config.objectives = dict(sigmoid_contrastive=1.0, captioning=1.0)

  config.model_name = "two_towers"
  config.model = dict(
      image_model="naflex_vit",
      image=dict(width=128, depth=3, mlp_dim=256, num_heads=4,
                 patch_size=PATCH, posemb_grid=6, pool_type="map"),
      text_model="text_transformer",
      text=dict(width=128, depth=2, mlp_dim=256, num_heads=4, vocab_size=128,
                pool_type="last"),
      decoder=dict(width=128, depth=2, mlp_dim=256, num_heads=4,
                   vocab_size=128),
      out_dim=128, temperature_init=10.0, bias_init=-10.0)

  config.optax_name = "scale_by_adam"
  config.optax = dict(b2=0.95)
  config.lr = 1e-3
  config.wd = 1e-4
  config.schedule = dict(warmup_steps=60, decay_type="cosine")
  config.grad_clip_norm = 1.0

  config.log_training_steps = 50
  config.ckpt_steps = 1000
  zeroshot = {a: dict(label_key=a, prompts=p) for a, p in (
      ("color", it_common.COLOR_PROMPTS), ("shape", it_common.SHAPE_PROMPTS))}
  config.evals = s2_common.naflex_evals(
      data=dict(name="shapes_captions_flex", split="test"),
      seq_lens=EVAL_SEQ_LENS, patch=PATCH, tok_model="shapes_captions",
      max_len=MAX_LEN, log_steps=arg.steps, batch_size=200,
      zeroshot=zeroshot, caption_seq_len=arg.seq)

  if arg.runlocal:
    config.total_steps = 4
    config.input.batch_size = 16
    config.log_training_steps = 1
    config.ckpt_steps = 4
    config.schedule = dict(warmup_steps=1, decay_type="cosine")
    for ev in config.evals.values():
      ev.log_steps = 4
      ev.batch_size = 64
      ev.data.split = "test[:64]"
  return config
