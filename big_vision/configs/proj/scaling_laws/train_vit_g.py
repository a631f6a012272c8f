r"""ViT-g/14 and ViT-G/14 pretraining, the "Scaling Vision Transformers" recipe.

  python -m big_vision.train \
      --config big_vision/configs/proj/scaling_laws/train_vit_g.py:variant=G/14 \
      --workdir workdirs/vit_G14

Recipe (Zhai et al. 2022, "Scaling Vision Transformers"): batch 16,384;
the factored, bfloat16-momentum Adafactor (`big_vision.scale_by_adafactor`,
~2 bytes of optimizer state per parameter); lr 8e-4 with 10k linear warmup,
reciprocal-sqrt decay (timescale 10k) and a 50k linear cooldown; decoupled
weight decay 0.03 * lr on the body and 100x that on the head ("head wd 3.0"
in the paper's units; big_vision.optax's `wd` is the per-step decay, NOT
multiplied by lr); global grad-norm clip 1.0; sigmoid cross-entropy; MAP
head without class token and without pre-logits layer; head bias init -10
(sigmoid outputs start near 0, as almost every label is negative).

Memory: with the defaults here, a (data, fsdp=16) mesh with every large
weight and its optimizer state sharded 16-way, the batch split over both
axes (also inside the model, see sharding.activation_context), scan +
remat("nothing_saveable") and bfloat16 matmuls, ViT-G/14 (29,593 classes)
at 32 images per device needs 6.1 GiB per device on 256 or 2048 devices
(XLA's arguments + temporaries), well inside a TPUv3 core's 16 GiB; without
remat it would need 126 GiB. Check any variant before launching:

  python tools/plan.py --config \
      big_vision/configs/proj/scaling_laws/train_vit_g.py:variant=G/14,dataset=jft \
      --devices 256 --per_device_batch 32 --device_memory_gib 16

Data: JFT-3B is not public; ImageNet-21k (21,843 classes, prepared in
$TFDS_DATA_DIR) trains the same way and is the default. `dataset=jft` uses
the paper's 29,593-class head; `num_classes=` overrides either.
Expected: ViT-G/14 on JFT reaches ~84.9% ImageNet 10-shot (few-shot probes
below) and 90.45% top-1 after fine-tuning; on ImageNet-21k expect lower.

Args (`train_vit_g.py:variant=G/14,runlocal`): variant (default g/14),
dataset (imagenet21k|jft), num_classes, steps, res, fsdp (size of the fsdp
mesh axis), remat (a jax.checkpoint_policies name or none), runlocal (a tiny
ViT with the same options for 5 steps on the embedded digits).
"""
import ml_collections

from big_vision.configs import common
from big_vision.configs import common_fewshot

# name -> (tfds name, train split, validation split, classes).
DATASETS = {
    "imagenet21k": ("imagenet21k", "full[51200:]", "full[:51200]", 21843),
    "jft": ("jft", "train", "validation", 29593),
}


def _pp(train, res, num_classes):
  labels = (f"|value_range(-1, 1)|onehot({num_classes}, key='label', "
            "key_result='labels')|keep('image', 'labels')")
  if train:
    return f"decode_jpeg_and_inception_crop({res})|flip_lr" + labels
  return f"decode|resize_small({res * 8 // 7})|central_crop({res})" + labels


def get_config(arg=None):
  arg = common.parse_arg(arg, variant="g/14", dataset="imagenet21k",
                         num_classes=0, steps=300_000, res=224, fsdp=16,
                         remat="nothing_saveable", runlocal=False)
  if arg.dataset not in DATASETS:
    raise ValueError(f"Unknown dataset={arg.dataset!r} in the config arg; "
                     f"valid: {', '.join(DATASETS)}.")
  tfds_name, train_split, val_split, classes = DATASETS[arg.dataset]
  num_classes = arg.num_classes or classes

  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_steps = arg.steps
  config.num_classes = num_classes
  config.loss = "sigmoid_xent"
  config.input = dict(
      data=dict(name=tfds_name, split=train_split),
      batch_size=16_384, shuffle_buffer_size=250_000,
      pp=_pp(True, arg.res, num_classes))

  config.model_name = "vit"
  config.model = dict(
      variant=arg.variant, pool_type="map", posemb="learn", rep_size=False,
      head_zeroinit=True, init_head_bias=-10.0,
      scan=True, remat_policy=arg.remat, dtype_mm="bfloat16")

  config.optax_name = "big_vision.scale_by_adafactor"
  config.optax = dict(beta2_cap=0.999, momentum=0.9)
  config.lr = 8e-4
  config.wd = 0.03 * config.lr
  config.wd_mults = [("head/kernel", 100.0), (".*/kernel", 1.0)]
  config.grad_clip_norm = 1.0
  config.schedule = dict(warmup_steps=10_000, decay_type="rsqrt",
                         timescale=10_000, cooldown_steps=50_000)

  # Weights (and their optimizer state, whose names end with theirs) are
  # sharded over "fsdp"; the batch over both axes. 1664 (G) and 1408 (g),
  # 8192 and 6144 divide by 16 and 32, so every large tensor shards evenly.
  # Tuples, not lists, so that --config.mesh="(('data', -1), ('fsdp', 32))"
  # can override them on the command line.
  config.mesh = (("data", -1), ("fsdp", arg.fsdp))
  # Activations: the batch stays split over both axes inside the model too
  # (sharding.default_rules; config.sharding_rules would override it).
  config.sharding_strategy = ((".*", "fsdp(axis='fsdp')"),)

  config.log_training_steps = 50
  config.ckpt_steps = 1000
  config.keep_ckpt_steps = 50_000
  config.evals = ml_collections.ConfigDict()
  config.evals.val = dict(
      type="classification", data=dict(name=tfds_name, split=val_split),
      pp_fn=_pp(False, arg.res, num_classes), batch_size=1024,
      log_steps=5000, loss_name="sigmoid_xent")
  config.evals.fewshot = common_fewshot.get_fewshot_lsr(
      log_steps=10_000, res=arg.res, imagenet=True)  # ImageNet 10-shot.

  if arg.runlocal:
    common.runlocal_shrink(config, res=16, steps=5, batch_size=16)
    config.model = dict(
        width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=(4, 4),
        pool_type="map", posemb="learn", rep_size=False, head_zeroinit=True,
        init_head_bias=-10.0, scan=True, remat_policy="nothing_saveable",
        dtype_mm="bfloat16")
    config.evals.test.loss_name = "sigmoid_xent"
    config.evals.fewshot = common_fewshot.get_fewshot_lsr(
        runlocal=True, log_steps=5)
    config.schedule = dict(warmup_steps=1, decay_type="rsqrt", timescale=10,
                           cooldown_steps=2)
    # Exercise the 2-D mesh: 2-way fsdp of every tensor, however small.
    config.mesh = (("data", -1), ("fsdp", 2))
    config.sharding_strategy = (
        (".*", "fsdp(axis='fsdp', min_size_to_shard_mb=0)"),)
  return config
