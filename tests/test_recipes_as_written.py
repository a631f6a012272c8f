"""Every shipped recipe, run as written, for 2 steps on generated real data.

`:runlocal` swaps a recipe's data, pp and evaluators for digits ones; this
module does not. Each case loads a config module with the arg users launch
it with, keeps its own pp strings, dataset names and splits, evaluators,
schedule, mesh and sharding, and shrinks only sizes:

* SHRINK (every case): total_steps=2 (total_epochs / total_examples
  dropped), input.batch_size=8 and every evaluator's batch_size=8 (one
  example per virtual device; at most 64 for the recipes on embedded data,
  whose test splits have hundreds of examples), and every evaluator runs
  once, at the last step (skip_first=True; by default they also run at
  step 0).
* the case's own `overrides` (dotted key -> value), each with the reason:
  the model's size where a 2-core CPU needs it, and generated stand-ins of
  files that cannot exist offline (released checkpoints, the c4_en
  sentencepiece model on gs://).

Data: the real TFDS builders of every dataset the configs name, prepared in
a session-wide TFDS_DATA_DIR with a few generated examples of their real
features (tests/recipe_data.py, which also documents the stand-ins for
datasets outside TFDS: imagenet21k, jft, webli).

Then `big_vision.train.train(config, workdir)` runs: the config check, the
real input pipeline, 2 training steps and every evaluator (each is due at
the last step). The test asserts a finite training loss at step 2, that
every evaluator wrote its metrics at step 2, that they are finite, and the
ranges that can be checked (accuracies in [0, 1]).
"""
import dataclasses
import glob
import importlib
import importlib.util
import math
import os
from typing import Any

import jax
import numpy as np
import pytest

from big_vision import checkpoint
from big_vision import metric_writer
from big_vision import train
from big_vision import utils
import recipe_data  # tests/ is on sys.path (rootdir conftest).

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, "big_vision", "configs")
DELETE = object()  # An override value that removes the key.
STEPS = 2
BATCH = 8
EMBEDDED_EVAL_BATCH = 64  # 8 per virtual device (Case.embedded_data).


@dataclasses.dataclass(frozen=True)
class Case:
  config: str                 # path under big_vision/configs
  arg: str | None = None      # the `:arg` users launch (may name {files})
  overrides: Any = ()         # ((dotted key, value, why), ...)
  metrics: tuple = ()         # metric names that must appear (besides SHRINK's)
  embedded_data: bool = False  # evaluates on embedded data (digits, shapes)
  xfail: str | None = None    # reason, for a bug in a file owned elsewhere

  @property
  def id(self):
    return f"{self.config}:{self.arg}" if self.arg else self.config


# Model shrinks, each used by several cases.
_VIT_MU16 = ("model.variant", "mu/16",
             "ViT-B/S/g at 224px: minutes per step on 2 CPU cores; the "
             "1-block width-32 ViT keeps patch 16, pooling, posemb, head")
_MIXER_TINY = ("model", dict(patch_size=16, hidden_dim=32, tokens_mlp_dim=16,
                             channels_mlp_dim=32, num_blocks=1,
                             stoch_depth=0.1),
               "Mixer-B/16: same patch size and stochastic depth, 1 block")
_BIT_TINY = ("model", dict(depth=(1, 1), width=1),
             "BiT-R50x1: two 1-unit blocks, same GroupNorm+WS ResNet-v2 code")
_TOWERS_TINY = (
    ("model.image.variant", "mu/16", "ViT-B/16 image tower -> 1 block"),
    ("model.text.variant", "mu", "B text tower -> 1 block, width 32"),
    ("model.out_dim", 32, "projection 768 -> 32 (follows the towers)"),
)
_I21K_VAL = ("evals.val.data.split", "full[:16]",
             "full[:51200] is an absolute size (51,200 images) held out of "
             "the i21k train split; the generated stand-in has 24")
_FEWSHOT_IN1K = ("evals.fewshot.datasets.imagenet",
                 ("imagenet2012", "train[:150]", "validation"),
                 "train[:65000] is an absolute size (65k ImageNet train "
                 "images); 150 generated ones give every class 25 shots")
_I21K_TRAIN = ("input.data.split", "full[16:]",
               "the rest of the stand-in (as full[51200:] is of i21k)")
# VTAB-1k (proj/vtab/vtab1k.py TASKS): train800 ("train[:800]") and val200
# (the first 200 of a validation/test split, or an absolute offset past
# train800 into the train split: "train[2754:2954]") are absolute sizes and
# offsets, which TFDS refuses on the generated splits (8-75 examples,
# tests/recipe_data.py SPLITS). Stand-ins keep their shape: train800 -> the
# first 8 of the same split, "<split>[:200]" -> "<split>[:8]", an offset
# into train -> its last 8 (disjoint from the first 8: those splits have
# >= 16 examples).
def _vtab_split_standin(split):
  name, rest = split.split("[", 1)
  if rest.startswith(":"):
    return f"{name}[:8]"
  return f"{name}[-8:]"


_VTAB = importlib.import_module("big_vision.configs.proj.vtab.vtab1k")
_VTAB_TASKS = tuple(t[0] for t in _VTAB.TASKS)  # All 19.


def _vtab_overrides():
  out = [("input.data.split", "train[:8]",
          "train800 of caltech101 (the one lr-0 training step's data): "
          "train[:800] is an absolute size; the generated split has 75")]
  for task, tfds_name, _, _, train800, val200, _ in _VTAB.TASKS:
    out.append((f"evals.vtab.tasks.{task}.train_data.split",
                _vtab_split_standin(train800),
                f"train800 = {tfds_name} {train800}: an absolute size "
                "beyond the generated split"))
    out.append((f"evals.vtab.tasks.{task}.test_data.split",
                _vtab_split_standin(val200),
                f"val200 = {tfds_name} {val200}: an absolute "
                "size/offset beyond the generated split"))
  return tuple(out)

CASES = [
    Case("vit_digits.py", embedded_data=True,
         metrics=("test/prec@1", "fewshot/digits_10shot")),
    Case("vit_i1k.py", overrides=(_VIT_MU16,),
         metrics=("minival/prec@1", "val/prec@1")),
    Case("vit_i1k.py", "variant=S/16,randaug=2,10", overrides=(_VIT_MU16,),
         metrics=("val/prec@1",)),
    Case("vit_s16_i1k.py", overrides=(_VIT_MU16,),
         metrics=("minival/prec@1", "val/prec@1", "v2/prec@1",
                  "real/prec@1")),
    Case("vit_i21k.py",
         overrides=(_VIT_MU16, _I21K_VAL, _I21K_TRAIN, _FEWSHOT_IN1K),
         metrics=("val/prec@1", "fewshot/imagenet_10shot",
                  "fewshot/caltech_25shot", "fewshot/cars_1shot",
                  "fewshot/cifar100_5shot", "fewshot/dtd_10shot",
                  "fewshot/pets_25shot", "fewshot/uc_merced_25shot")),
    Case("vit_hybrid_i1k.py",
         overrides=(_VIT_MU16,
                    ("model.resnet", dict(num_layers=(1,), width=0.5),
                     "R50 stem at 224px -> one stage, half width")),
         metrics=("val/prec@1",)),
    Case("mlp_mixer_i1k.py", overrides=(_MIXER_TINY,),
         metrics=("minival/prec@1", "val/prec@1")),
    Case("bit_i1k.py", overrides=(_BIT_TINY,), metrics=("val/prec@1",)),
    Case("bit_i1k.py", "schedule=stair", overrides=(_BIT_TINY,),
         metrics=("val/prec@1",)),
    Case("proj/botnet/botnet_i1k.py",
         overrides=(("model", dict(depth=(1, 1, 1, 1), width=1,
                                   c5_stride=1),
                     "BoT-S1-50 at 224px -> one unit per stage: the BoT "
                     "unit attends over the published model's 14x14 map "
                     "(two stages would make it 56x56: 3,136 tokens, GBs "
                     "of logits), same attention code"),),
         metrics=("val/prec@1",)),
    Case("proj/gsam/vit_i1k_gsam.py", overrides=(_VIT_MU16,),
         metrics=("minival/prec@1", "val/prec@1")),
    Case("proj/gsam/vit_i1k_gsam.py", "sam", overrides=(_VIT_MU16,),
         metrics=("val/prec@1",)),
    Case("bit_i21k.py", overrides=(_BIT_TINY, _I21K_VAL, _I21K_TRAIN),
         metrics=("val/prec@1",)),
    # The default: a released AugReg B/16 from gs:// at 384px.
    Case("transfer.py", overrides=(
        _VIT_MU16, ("model_init", "{vit_mu16_npz}",
                    "gs:// AugReg checkpoint: random params of a mu/16 "
                    "saved in the published layout (i21k head, 224px "
                    "posemb, resampled to 384px by vit.load)")),
         metrics=("val/prec@1", "test/prec@1")),
    # The README's offline example: a local .npz with its architecture.
    Case("transfer.py", "model={vit_ti16_npz},arch=Ti/16,dataset=cifar10,"
         "crop=32", metrics=("val/prec@1", "test/prec@1")),
    *[Case("transfer.py", f"model={{vit_mu16_npz}},arch=B/16,dataset={d},"
           "crop=64", overrides=(_VIT_MU16,),
           metrics=("val/prec@1", "test/prec@1"))
      # Datasets whose splits or features differ from cifar10's (percent
      # slices of free-size images, a validation split, svhn's name, fixed
      # 256px images with three slices of one split). cifar100, dtd and
      # imagenet2012 follow the same patterns and are read by the few-shot
      # and zero-shot cases; each case here costs ~10 s of CPU.
      for d in ("oxford_iiit_pet", "oxford_flowers102", "svhn", "resisc45")],
    Case("bench/vit_s16.py", "batch_size=8,steps=2",
         overrides=(_VIT_MU16, ("input.data.image_shape", (64, 64, 3),
                                "224px synthetic images -> 64px")),),
    Case("bench/vit_b16.py", "batch_size=8,steps=2,res=64",
         overrides=(_VIT_MU16,)),
    Case("bench/vit_l16.py", "batch_size=8,steps=2,res=64",
         overrides=(_VIT_MU16,)),
    Case("bench/siglip_b16.py", "batch_size=8,steps=2,res=64",
         overrides=_TOWERS_TINY),
    Case("proj/image_text/siglip_demo.py", embedded_data=True,
         metrics=("zeroshot/color/top1", "zeroshot/shape/top1",
                  "retrieval/i2t/r@1")),
    Case("proj/image_text/siglip_b16.py", "vocab={spm}", overrides=_TOWERS_TINY,
         metrics=("zeroshot/imagenet/top1", "zeroshot/cifar100/top1",
                  "zeroshot/pets/top1", "retrieval_coco/i2t/r@1")),
    # SigLIP 2 demo: embedded shapes_captions_flex (NaFlex at 16 and 64
    # patches, the captioning decoder); nothing to shrink.
    Case("proj/siglip2/siglip2_demo.py", embedded_data=True,
         metrics=("zeroshot_16/color/top1", "zeroshot_64/color/top1",
                  "retrieval_64/i2t/r@1", "captioning/token_acc",
                  "captioning/unigram_acc")),
    # SigLIP 2 B/16: WebLI stand-in, ImageNet zero-shot and COCO retrieval
    # at 256 patches; the Gemma tokenizer on gs:// -> the generated spm.
    Case("proj/siglip2/siglip2_b16.py", "vocab={spm}",
         overrides=_TOWERS_TINY + (
             ("model.decoder.variant", "mu", "B decoder -> width 32"),
             ("model.decoder.depth", 1, "4 decoder blocks -> 1"),
             *((f"model.{m}.vocab_size", 256,
                f"{m} vocabulary 256,000 (Gemma) -> 256: the stand-in spm "
                "has 200 pieces; 256k-way decoder logits of 8 x 64 tokens "
                "are 0.5 GB per tensor") for m in ("text", "decoder")),),
         metrics=("zeroshot_256/imagenet/top1",
                  "retrieval_coco_256/i2t/r@1")),
    Case("proj/image_text/lit_b16b.py", "img={vit_mu16_npz},vocab={spm}",
         overrides=(_TOWERS_TINY[0], _TOWERS_TINY[1],
                    ("model.out_dim", (None, 32),
                     "(None, 768) -> (None, 32): the text head matches the "
                     "locked mu/16 image representation (width 32)")),
         metrics=("zeroshot/imagenet/top1", "zeroshot/pets/top1")),
    # fsdp=2: the default fsdp=16 needs >= 16 devices (the test has 8); the
    # arg is how users size the fsdp axis to their slice.
    Case("proj/scaling_laws/train_vit_g.py", "fsdp=2",
         overrides=(_VIT_MU16, _I21K_VAL, _I21K_TRAIN, _FEWSHOT_IN1K),
         metrics=("val/prec@1", "fewshot/imagenet_10shot",
                  "fewshot/pets_10shot")),
    Case("proj/scaling_laws/train_vit_g.py", "dataset=jft,fsdp=2",
         overrides=(_VIT_MU16, _FEWSHOT_IN1K), metrics=("val/prec@1",)),
    # The teacher: random (untrained) params of the config's own
    # TEACHER_MODEL, saved as an .npz (what step 1 of its docstring trains).
    Case("proj/distill/digits.py", "teacher={distill_teacher_npz}",
         embedded_data=True,
         metrics=("test/prec@1",)),
    Case("proj/flexivit/digits.py", embedded_data=True,
         metrics=tuple(f"test_p{p}/prec@1" for p in (4, 6, 8))),
    # tools/eval_only.py's config; train.train runs it too (one lr-0 step,
    # then the suite). Every one of the 19 fine-tunes runs once.
    Case("proj/vtab/vtab1k.py", overrides=(
        _VIT_MU16,
        ("evals.vtab.shared.steps", STEPS,
         "2500 fine-tune steps per task -> 2 (19 tasks on 2 CPU cores)"),
        ("evals.vtab.shared.optimizer.schedule.warmup_steps", 0,
         "the config's min(200, steps // 10) for steps=2"),
        ("evals.vtab.log_steps", STEPS,
         "log_steps=1 runs the suite at the config's one step; at SHRINK's "
         "2 steps it would run twice (steps 1 and 2)"),
        ("evals.vtab.shared.batch_size", BATCH,
         "fine-tune batch 512 -> 8 (the suite's shared key; SHRINK sets "
         "only top-level evaluator batch sizes)"),
        *_vtab_overrides()),
         metrics=("vtab/mean/prec@1", "vtab/natural_mean/prec@1",
                  "vtab/specialized_mean/prec@1",
                  "vtab/structured_mean/prec@1",
                  *(f"vtab/{t}/prec@1" for t in _VTAB_TASKS))),
]


def config_files():
  files = glob.glob(os.path.join(CONFIG_DIR, "**", "*.py"), recursive=True)
  return sorted(os.path.relpath(f, CONFIG_DIR) for f in files
                if not os.path.basename(f).startswith(("_", "common")))


def load_config(rel, arg):
  spec = importlib.util.spec_from_file_location(
      "cfg_" + rel.replace("/", "_")[:-3], os.path.join(CONFIG_DIR, rel))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def _fill(value, files):
  if isinstance(value, str):
    return value.format(**files)
  if isinstance(value, dict):
    return {k: _fill(v, files) for k, v in value.items()}
  return value


def set_key(config, dotted, value):
  *parents, last = dotted.split(".")
  node = config
  for p in parents:
    node = node[p]
  with node.ignore_type() if hasattr(node, "ignore_type") else _null():
    if value is DELETE:
      del node[last]
    else:
      node[last] = value


class _null:
  def __enter__(self):
    return self

  def __exit__(self, *a):
    return False


def shrink(config, eval_batch=BATCH):
  """SHRINK (module docstring): sizes only."""
  for key in ("total_epochs", "total_examples"):
    if key in config:
      del config[key]
  config.total_steps = STEPS
  config.input.batch_size = BATCH
  for ev in (config.get("evals") or {}).values():
    if "batch_size" in ev:
      ev.batch_size = min(ev.batch_size, eval_batch)
    ev.skip_first = True  # Once, at the last step (not also at step 0).


# ---------------------------------------------------------------------------
# Session fixtures: the data dir and the stand-in files.
# ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def recipe_data_dir(tmp_path_factory):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()
  from big_vision import datasets  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  recipe_data.prepare_all(data_dir)
  # The embedded datasets (digits, shapes captions) are the library's own,
  # generated once per machine in their default directory (the rest of the
  # suite reads them there): linked, not generated again (~14 s of CPU).
  for name in datasets.embedded_names():
    builder = datasets.prepare_embedded(name)  # data_dir: <dir>/<name>/<ver>
    os.symlink(os.path.dirname(builder.data_dir),
               os.path.join(data_dir, builder.name))
  old = os.environ.get("TFDS_DATA_DIR")
  os.environ["TFDS_DATA_DIR"] = data_dir
  yield data_dir
  if old is None:
    del os.environ["TFDS_DATA_DIR"]
  else:
    os.environ["TFDS_DATA_DIR"] = old


def _save_random_params(path, model, res):
  """Random params with `model`'s exact tree (names, shapes, dtypes), as the
  .npz of a released checkpoint.

  A stand-in needs the layout, not flax's initialisers: `jax.eval_shape`
  traces the model without compiling its init (several seconds of XLA per
  model on 2 CPU cores). Values: LayerNorm scales 1, biases 0, every other
  leaf N(0, 0.02^2), seeded.
  """
  shapes = jax.eval_shape(
      model.init, jax.random.PRNGKey(0),
      jax.ShapeDtypeStruct((1, res, res, 3), np.float32))["params"]
  rng = np.random.default_rng(0)

  def fill(name, leaf):
    if name.endswith("/scale"):
      return np.ones(leaf.shape, leaf.dtype)
    if name.endswith("/bias"):
      return np.zeros(leaf.shape, leaf.dtype)
    return (0.02 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

  checkpoint.save_params(utils.tree_map_with_names(fill, shapes), path)
  return path


def _save_vit(path, variant, num_classes):
  from big_vision.models import vit  # pylint: disable=g-import-not-at-top
  model = vit.Model(num_classes=num_classes, variant=variant,
                    pool_type="tok")
  return _save_random_params(path, model, 224)


def _save_distill_teacher(path):
  """The teacher proj/distill/digits.py names (TEACHER_MODEL), as an .npz."""
  from big_vision.models import vit  # pylint: disable=g-import-not-at-top
  mod = importlib.import_module("big_vision.configs.proj.distill.digits")
  model = vit.Model(num_classes=10, **mod.TEACHER_MODEL)
  return _save_random_params(path, model, mod.RES)


def _train_spm(prefix):
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  from big_vision.evaluators import class_names  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  lines = [recipe_data._text(rng) for _ in range(300)]  # pylint: disable=protected-access
  lines += list(class_names.class_names("cifar100"))
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_prefix=prefix, vocab_size=200,
      model_type="unigram", character_coverage=1.0, hard_vocab_limit=False,
      minloglevel=2, num_threads=1)
  return prefix + ".model"


@pytest.fixture(scope="session")
def recipe_files(tmp_path_factory, recipe_data_dir):
  del recipe_data_dir
  d = tmp_path_factory.mktemp("standins")
  return dict(
      # AugReg-style i21k checkpoints (head for 21,843 classes, 224px).
      vit_mu16_npz=_save_vit(str(d / "vit_mu16.npz"), "mu/16", 21843),
      vit_ti16_npz=_save_vit(str(d / "vit_ti16.npz"), "Ti/16", 21843),
      # c4_en stand-in: a small unigram sentencepiece model.
      spm=_train_spm(str(d / "spm")),
      # proj/distill/digits.py's teacher (TEACHER_MODEL, 10 classes).
      distill_teacher_npz=_save_distill_teacher(str(d / "teacher.npz")),
  )


# ---------------------------------------------------------------------------
# The tests.
# ---------------------------------------------------------------------------
def test_every_config_module_has_a_case():
  covered = {c.config for c in CASES}
  missing = [f for f in config_files() if f not in covered]
  assert not missing, (
      f"config modules without a case in {__file__}: {missing}. Add one "
      "(its default arg), with the overrides it needs and why.")


def _params(case):
  marks = []
  if case.xfail:
    marks.append(pytest.mark.xfail(strict=True, reason=case.xfail))
  return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_params(c) for c in CASES])
def test_recipe_as_written(case, recipe_files, tmp_path):
  arg = case.arg.format(**recipe_files) if case.arg else None
  config = load_config(case.config, arg)
  shrink(config, EMBEDDED_EVAL_BATCH if case.embedded_data else BATCH)
  for key, value, why in case.overrides:
    assert why
    set_key(config, key, _fill(value, recipe_files))

  final = train.train(config, str(tmp_path))

  assert math.isfinite(final["training_loss"])
  lines = metric_writer.read(str(tmp_path))
  last = {}
  for line in lines:
    if line["step"] == STEPS:
      last.update(line)
  assert math.isfinite(last["training_loss"]), last
  for name in case.metrics:
    assert name in last, (name, sorted(last))
  for name in (config.get("evals") or {}):
    ours = {k: v for k, v in last.items() if k.startswith(f"{name}/")}
    assert ours, f"evaluator {name!r} wrote nothing at step {STEPS}"
    for k, v in ours.items():
      assert math.isfinite(v), (k, v)
      if any(s in k for s in ("prec@", "shot", "top1", "top5", "r@")):
        assert 0.0 <= v <= 1.0, (k, v)
