r"""FlexiViT on the embedded digits: one model, every patch size.

  python -m big_vision.train \
      --config big_vision/configs/proj/flexivit/digits.py \
      --workdir workdirs/flexivit_digits

Beyer et al. 2023, "FlexiViT: One Model for All Patch Sizes",
https://arxiv.org/abs/2212.08013. Each training step uses a patch size drawn
uniformly from `config.flexivit.patch_sizes`; the patch-embedding kernel is
stored once at an underlying size (`flexi_base_patch`) and PI-resized
(pseudo-inverse resize) to the drawn size, the learned position embedding at
an underlying grid (`flexi_posemb_grid`) resized bilinearly to the drawn
grid (big_vision/models/vit.py). The paper's claim, as the paper's (not
reproduced here): one FlexiViT-B trained this way matches or beats ViT-B
models trained separately at each fixed patch size, over patch sizes 8 to
48, on ImageNet-1k and in transfer.

How the step draws the size: inside the one jitted step. The objective's
`prepare` draws an index per global batch from the step's rng (so a run is a
function of config and seed, and accum_steps micro-batches share it); the
loss is a `lax.switch` over one branch per size, so a single executable is
compiled (one branch per size, compile time grows with the number of sizes)
and each step runs only its drawn branch. The train loop is unchanged.

Digits version: images at 24x24 (upsampled from 8x8), patch sizes 4, 6, 8
(grids 6x6, 4x4, 3x3), underlying kernel 8x8 and posemb grid 6x6; the
vit_digits.py ViT (width 128, depth 4) and recipe (Adam 2e-3, cosine, mixup
0.2), 60 epochs (704 steps). One classification evaluator per patch size,
`test_p4`, `test_p6`, `test_p8` (each passes `pred_kw=dict(patch_size=p)`).
Measured, test prec@1 at step 704 of one run (seed 0; 12 min wall on 2 CPU
cores shared with other jobs, load ~10): test_p4 0.963, test_p6 0.956,
test_p8 0.936 (vit_digits.py's fixed-patch ViT at 16px/4x4: 0.96).

A checkpoint serves every patch size: any FlexiViT model config loads it as
is (its parameters have the underlying shapes), and a plain ViT at patch
size p loads it too (`vit.load` PI-resizes the kernel and resamples the
posemb), e.g. `--config.model_init=<workdir> --config.model.patch_size=6`
on a config without flexi_base_patch; `tools/flexi_resize.py` writes such a
fixed-size npz.

Args (`digits.py:arg1,arg2=...`): runlocal (2 steps, batch 16),
epochs (60).
"""
import ml_collections

from big_vision.configs import common

RES = 24
PATCH_SIZES = (4, 6, 8)
# test_p<size>/prec@1 at the end, seed 0.
RESULTS = dict(test_p4=0.963, test_p6=0.956, test_p8=0.936)


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, epochs=60.0)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_epochs = arg.epochs
  config.num_classes = 10
  config.loss = "softmax_xent"
  config.input = common.digits_input(res=RES, batch_size=128)

  config.model_name = "vit"
  config.model = dict(width=128, depth=4, mlp_dim=256, num_heads=4,
                      patch_size=(8, 8), pool_type="gap", posemb="learn",
                      flexi_base_patch=(8, 8), flexi_posemb_grid=(6, 6))
  config.flexivit = dict(patch_sizes=PATCH_SIZES)

  config.optax_name = "scale_by_adam"
  config.lr = 2e-3
  config.wd = 1e-4
  config.schedule = dict(warmup_steps=50, decay_type="cosine")
  config.grad_clip_norm = 1.0
  config.mixup = dict(p=0.2)

  config.log_training_steps = 25
  config.ckpt_steps = 200
  batch_size, log_steps = 128, 200
  if arg.runlocal:
    common.runlocal_shrink(config, res=RES, steps=2, batch_size=16)
    config.schedule = dict(warmup_steps=1, decay_type="cosine")
    batch_size, log_steps = 16, 2
  config.evals = ml_collections.ConfigDict()
  for p in PATCH_SIZES:
    config.evals[f"test_p{p}"] = dict(
        **common.digits_eval(res=RES, log_steps=log_steps,
                             batch_size=batch_size),
        pred_kw=dict(patch_size=p))
  return config
