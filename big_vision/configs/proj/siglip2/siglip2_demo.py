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
(`config.loss = "combined"`). For the last 20% of the steps (from step 480)
SigLIP 2's late-training terms join (big_vision/self_distill.py): an EMA
teacher of the image tower (decay 0.98, the student's copy at the switch),
local-to-global consistency (4 local views of 3x3 patches per image vs the
teacher's global view, weight 1) and masked patch prediction (50% of the
patches masked, weight 0.25), each logged as `loss/<name>` (0 before the
switch). The SigLIP 2 recipe in miniature. Batch 128, 600 steps.

Evaluated on the test split, whose (colour, size) combinations never occur
in training, at two sequence lengths the model was not trained at (16 and
64 patches: one model, several lengths): `zeroshot_16/color/top1` and
`zeroshot_64/color/top1` (expected >= 0.9), shape accuracy and retrieval
at each length, and the decoder's held-out teacher-forced next-token
accuracy `captioning/token_acc` against `captioning/unigram_acc` (always
predicting the most frequent caption token). Measured with the command
above (seed 0, 600 steps, ~10 min on 2 shared CPU cores): zeroshot_16
colour 0.953 / shape 0.521, zeroshot_64 colour 1.000 / shape 0.566
(shape chance: 1/3), retrieval_64 i2t r@1 0.380; decoder at 36 patches:
token_acc 0.783 vs unigram_acc 0.201, perplexity 1.94; at step 600
loss/local_to_global 3.28 and loss/masked_prediction 2.67 (5.60 and 4.22
at step 500). (Without the late-training terms: colour 0.939 / 0.999.)

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
  # The late-training terms are exactly 0 before self_distill.start_fraction
  # of the steps (big_vision/self_distill.py).
  config.objectives = dict(sigmoid_contrastive=1.0, captioning=1.0,
                           local_to_global=1.0, masked_prediction=0.25)
  config.self_distill = dict(
      start_fraction=0.8, ema_decay=0.98, local_views=4, local_grid=3,
      local_scale=(0.05, 0.4), mask_ratio=0.5, teacher_temp=0.04,
      student_temp=0.1, center_momentum=0.9)

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
      distill_heads=dict(dim=1024, patch_dim=256, hidden=256, bottleneck=64),
      out_dim=128, temperature_init=10.0, bias_init=-10.0)

  config.optax_name = "scale_by_adam"
  config.optax = dict(b2=0.95)
  config.lr = 1e-3
  config.wd = 1e-4
  # The distill heads idle (no gradient) until self_distill.start_fraction:
  # decay would shrink them to zero by then (self_distill refuses it).
  config.wd_mults = (("distill_heads/.*", 0.0), (".*/kernel$", 1.0))
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
