r"""VTAB-1k: fine-tune a backbone on 19 tasks of 1,000 examples; the mean.

  # Hyper-parameter runs: train on train800, report on val200.
  python tools/eval_only.py \
      --config big_vision/configs/proj/vtab/vtab1k.py:variant=B/16 \
      --config.model_init=ViT-B_16.npz --workdir workdirs/vtab_b16
  # The benchmark number: train on train800val200, report on test.
  python tools/eval_only.py \
      --config big_vision/configs/proj/vtab/vtab1k.py:variant=B/16,final \
      --config.model_init=ViT-B_16.npz --workdir workdirs/vtab_b16_final

The Visual Task Adaptation Benchmark (Zhai et al. 2019,
https://arxiv.org/abs/1910.04867): 7 natural, 4 specialized and 8
structured tasks, each with 800 train / 200 validation examples taken from
its TFDS dataset exactly as the benchmark's reference code
(google-research/task_adaptation) takes them: "train800" is the first 800
examples of the task's train split and "val200" the first 200 of its
validation split, where a dataset without one carves it out of TFDS `train`
(e.g. Caltech101: train = first 90%, so val200 = train[2754:2954]). The test
split is the task's test split (also carved out for EuroSAT, RESISC45,
dSprites, smallNORB; CLEVR tests on TFDS `validation`). Labels of the
structured tasks (CLEVR counts and distances, KITTI distance, binned dSprites
position/orientation, smallNORB azimuth/elevation) come from the pp op
`vtab_label(task)` (big_vision/pp/ops_vtab.py), with the benchmark's
definitions.

Each task runs the `finetune` evaluator (a copy of the backbone and a new
zero-init head, all parameters trained; the training state is untouched),
inside one `suite` evaluator that also reports the mean over the 19 tasks
and over each group. Protocol (BiT / ViT VTAB-1k runs): no augmentation,
images resized to 224x224, values in [-1, 1]; 2500 steps at batch 512 of
SGD with momentum 0.9, lr 0.01 (arg `lr`; the papers pick it per task from
{0.001, 0.003, 0.01, 0.03} on val200), cosine decay, 200 warmup steps,
gradient clipping at norm 1. The fine-tune step and eval are compiled twice
for the 19 tasks, not 19 times: `finetune` pads each head to a multiple of
128 classes (masked out), so tasks of up to 128 classes share one program and
sun397 (397) has the other.

Metrics: evals "vtab/<task>/prec@1" (and loss, train_loss),
"vtab/mean/prec@1", "vtab/{natural,specialized,structured}_mean/prec@1".
This config has no result of its own: the number depends on the backbone
given by --config.model_init (a ViT here; `variant` picks its size). Its
training keys describe one step at lr 0 (so train.py accepts it too; the
suite then runs at step 1 on unchanged weights): run it with
tools/eval_only.py, which trains nothing.

Args (`vtab1k.py:arg1,arg2=...`): variant (ViT, default B/16), final
(train800val200 -> test), lr, steps, res, runlocal (the suite on two
digits "tasks" with 2 fine-tune steps each, for the smoke tests).
"""
import ml_collections

from big_vision.configs import common

# (name, tfds name, group, classes, train800, val200, test split).
TASKS = (
    ("caltech101", "caltech101", "natural", 102,
     "train[:800]", "train[2754:2954]", "test"),
    ("cifar100", "cifar100", "natural", 100,
     "train[:800]", "train[45000:45200]", "test"),
    ("dtd", "dtd", "natural", 47,
     "train[:800]", "validation[:200]", "test"),
    ("flowers102", "oxford_flowers102", "natural", 102,
     "train[:800]", "validation[:200]", "test"),
    ("pets", "oxford_iiit_pet", "natural", 37,
     "train[:800]", "train[2944:3144]", "test"),
    ("sun397", "sun397/tfds", "natural", 397,
     "train[:800]", "validation[:200]", "test"),
    ("svhn", "svhn_cropped", "natural", 10,
     "train[:800]", "train[65931:66131]", "test"),
    ("camelyon", "patch_camelyon", "specialized", 2,
     "train[:800]", "validation[:200]", "test"),
    ("eurosat", "eurosat/rgb", "specialized", 10,
     "train[:800]", "train[16200:16400]", "train[21600:]"),
    ("resisc45", "resisc45", "specialized", 45,
     "train[:800]", "train[18900:19100]", "train[25200:]"),
    ("retinopathy", "diabetic_retinopathy_detection/btgraham-300",
     "specialized", 5, "train[:800]", "validation[:200]", "test"),
    ("clevr_count", "clevr", "structured", 8,
     "train[:800]", "train[63000:63200]", "validation"),
    ("clevr_distance", "clevr", "structured", 6,
     "train[:800]", "train[63000:63200]", "validation"),
    ("dmlab", "dmlab", "structured", 6,
     "train[:800]", "validation[:200]", "test"),
    ("kitti_distance", "kitti", "structured", 4,
     "train[:800]", "validation[:200]", "test"),
    ("dsprites_loc", "dsprites", "structured", 16,
     "train[:800]", "train[589824:590024]", "train[663552:]"),
    ("dsprites_ori", "dsprites", "structured", 16,
     "train[:800]", "train[589824:590024]", "train[663552:]"),
    ("smallnorb_azi", "smallnorb", "structured", 18,
     "train[:800]", "test[:200]", "test[12150:]"),
    ("smallnorb_ele", "smallnorb", "structured", 9,
     "train[:800]", "test[:200]", "test[12150:]"),
)
GROUPS = ("natural", "specialized", "structured")


def task_pp(name, num_classes, res=224):
  """The task's pp: its label, the image at res x res in [-1, 1], one-hot."""
  if name.startswith("dsprites"):
    # dSprites pixels are 0/1: scale before resizing (a uint8 resize would
    # round the interpolated values away).
    image = f"decode|value_range(-1, 1, 0, 1)|resize({res})"
  else:
    image = f"decode|resize({res})|value_range(-1, 1)"
  return (f"vtab_label('{name}')|{image}"
          f"|onehot({num_classes}, key='label', key_result='labels')"
          "|keep('image', 'labels')")


def get_vtab_evals(*, final=False, res=224, steps=2500, batch_size=512,
                   lr=0.01, log_steps=100_000):
  """The `suite` evaluator block of the 19 fine-tunes."""
  tasks = {}
  for name, tfds_name, _, classes, train800, val200, test in TASKS:
    train = f"{train800}+{val200}" if final else train800
    pp = task_pp(name, classes, res)
    tasks[name] = dict(
        train_data=dict(name=tfds_name, split=train),
        test_data=dict(name=tfds_name, split=test if final else val200),
        pp_train=pp, pp_eval=pp, num_classes=classes)
  shared = dict(
      steps=steps, batch_size=batch_size, train_params="all",
      shuffle_buffer_size=1000,
      optimizer=dict(optax_name="big_vision.momentum_hp",
                     optax=dict(momentum=0.9), lr=lr, wd=0.0,
                     grad_clip_norm=1.0,
                     schedule=dict(warmup_steps=min(200, steps // 10),
                                   decay_type="cosine")))
  groups = {g: tuple(t[0] for t in TASKS if t[2] == g) for g in GROUPS}
  return ml_collections.ConfigDict(dict(
      type="suite", log_steps=log_steps, evaluator="finetune",
      shared=shared, tasks=tasks, mean_of="prec@1", groups=groups))


def get_config(arg=None):
  arg = common.parse_arg(arg, variant="B/16", final=False, lr=0.01,
                         steps=2500, res=224, runlocal=False)
  config = ml_collections.ConfigDict()
  config.seed = 0
  # One step at lr 0 (see the docstring): tools/eval_only.py trains nothing.
  config.total_steps = 1
  config.num_classes = 102
  config.loss = "softmax_xent"
  config.input = dict(
      data=dict(name="caltech101", split="train[:800]"), batch_size=512,
      shuffle_buffer_size=1000, pp=task_pp("caltech101", 102, arg.res))
  config.model_name = "vit"
  config.model = dict(variant=arg.variant, pool_type="tok")
  config.optax_name = "big_vision.momentum_hp"
  config.lr = 0.0
  config.wd = 0.0
  config.schedule = dict(decay_type="constant")
  config.log_training_steps = 1
  config.ckpt_steps = 0
  config.evals = ml_collections.ConfigDict()
  config.evals.vtab = get_vtab_evals(final=arg.final, res=arg.res,
                                     steps=arg.steps, lr=arg.lr, log_steps=1)

  if arg.runlocal:
    common.runlocal_shrink(config, res=16, steps=2, batch_size=16)
    config.model = dict(width=32, depth=1, mlp_dim=64, num_heads=2,
                        patch_size=(4, 4), pool_type="gap")
    config.lr = 0.0
    pp_train = common.digits_pp(16, train=True)
    pp_eval = common.digits_pp(16, train=False)
    digits = lambda split: dict(name="digits", split=split)  # pylint: disable=unnecessary-lambda-assignment
    config.evals.vtab = ml_collections.ConfigDict(dict(
        type="suite", log_steps=2, evaluator="finetune",
        shared=dict(steps=2, batch_size=16, train_params="head",
                    pp_train=pp_train, pp_eval=pp_eval, num_classes=10,
                    optimizer=dict(lr=0.1)),
        tasks={"digits_a": dict(train_data=digits("train[:800]"),
                                test_data=digits("train[800:1000]")),
               "digits_b": dict(train_data=digits("train[:800]"),
                                test_data=digits("test"))},
        mean_of="prec@1", groups={"both": ("digits_a", "digits_b")}))
  return config
