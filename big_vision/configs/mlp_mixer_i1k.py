r"""MLP-Mixer trained from scratch on ImageNet-1k (the paper's i1k recipe).

  python -m big_vision.train \
      --config big_vision/configs/mlp_mixer_i1k.py:variant=B/16 \
      --workdir workdirs/mixer_b16_i1k

Recipe (Tolstikhin et al. 2021, https://arxiv.org/abs/2105.01601, Sec. 3 and
Supplementary B): Adam (b1 0.9, b2 0.999), batch 4096, 300 epochs, lr 1e-3
with a 10k-step linear warmup then linear decay to 0, weight decay, gradient
clipping at global norm 1, RandAugment(2, 15), mixup 0.5, stochastic depth
0.1, 224px. The paper's weight decay 0.1 multiplies the learning rate in its
optimizer; `config.wd` here is per-step decoupled decay (not scaled by lr),
so the same decay is 0.1 * 1e-3 = 1e-4. `stoch_depth` is mlp_mixer.py's
per-block drop-path rate (the same in every block; the paper ramps it
linearly from 0 to 0.1). Softmax cross-entropy: i1k labels are single-label
(with sigmoid and a zero-initialised head, Adam-trained Mixers sat at the
class prior for hundreds of steps on the digits check below).

Expected ImageNet val top-1: Mixer-B/16 76.44% ("When trained from scratch on
ImageNet, Mixer-B/16 achieves a reasonable top-1 accuracy of 76.44%", Sec.
3.2, Table 3); Mixer-L/16 overfits i1k even more and scores lower (Sec. 3.2).
Parameter counts at 224px with a 1000-way head: B/16 59.9M, L/16 208.2M
(tests/models/test_mlp_mixer.py).

Args (`mlp_mixer_i1k.py:arg1,arg2=...`):
  variant     Mixer size: S/32, S/16, B/32, B/16 (default), L/32, L/16, H/14.
  epochs, randaug ("2,15"), mixup (0.5), stoch_depth (0.1): the recipe knobs.
  digits      a small Mixer (patch 4 on 16x16 digits: 16 tokens, 2 blocks of
              width 128) with the same optimizer, schedule shape, mixup and
              stochastic depth:
                python -m big_vision.train \
                    --config big_vision/configs/mlp_mixer_i1k.py:digits \
                    --workdir workdirs/mixer_digits
              500 steps at batch 64; test prec@1 0.956 (seed 0; 0.953 and
              0.936 for seeds 1 and 2), ~40 s of CPU on 2 cores.
              tests/test_backbone_configs.py asserts >= 0.9.
  runlocal    the digits model for 2 steps (smoke test).
"""
import ml_collections

from big_vision.configs import common

DIGITS_STEPS = 500
DIGITS_RES = 16


def _imagenet_pp(randaug):
  onehot = ("|value_range(-1, 1)|onehot(1000, key='label', "
            "key_result='labels')|keep('image', 'labels')")
  train = "decode_jpeg_and_inception_crop(224)|flip_lr"
  if randaug:
    train += f"|randaug({randaug})"
  return train + onehot, "decode|resize_small(256)|central_crop(224)" + onehot


def get_config(arg=None):
  arg = common.parse_arg(arg, variant="B/16", epochs=300.0, randaug="2,15",
                         mixup=0.5, stoch_depth=0.1, digits=False,
                         runlocal=False)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_epochs = arg.epochs
  config.num_classes = 1000
  config.loss = "softmax_xent"
  train_pp, eval_pp = _imagenet_pp(arg.randaug)
  config.input = dict(
      data=dict(name="imagenet2012", split="train[:99%]"),
      batch_size=4096, shuffle_buffer_size=250_000, pp=train_pp)

  config.model_name = "mlp_mixer"
  config.model = dict(variant=arg.variant, stoch_depth=arg.stoch_depth)

  config.optax_name = "scale_by_adam"
  config.optax = dict(b1=0.9, b2=0.999)
  config.lr = 0.001
  config.wd = 0.0001
  config.schedule = dict(warmup_steps=10_000, decay_type="linear")
  config.grad_clip_norm = 1.0
  config.mixup = dict(p=arg.mixup)

  config.log_training_steps = 50
  config.ckpt_steps = 1000
  config.evals = ml_collections.ConfigDict()
  for name, split in (("minival", "train[99%:]"), ("val", "validation")):
    config.evals[name] = dict(
        type="classification", data=dict(name="imagenet2012", split=split),
        pp_fn=eval_pp, batch_size=1024, log_steps=2500)

  if arg.digits or arg.runlocal:
    # 4x4 patches of a 16x16 digit: 16 tokens, 2 blocks of width 128.
    steps, batch = (2, 16) if arg.runlocal else (DIGITS_STEPS, 64)
    common.runlocal_shrink(config, res=DIGITS_RES, steps=steps,
                           batch_size=batch)
    config.model = dict(patch_size=4, hidden_dim=128, tokens_mlp_dim=64,
                        channels_mlp_dim=256, num_blocks=2,
                        stoch_depth=arg.stoch_depth)
    config.lr = 0.003
    config.schedule = dict(warmup_steps=1 if arg.runlocal else 30,
                           decay_type="linear")
    config.mixup = dict(p=0.2)
    config.log_training_steps = min(steps, 50)
  return config
