"""A config written the way a big_vision user writes one trains here.

Their helpers (`bvcc.parse_arg` with (default, type) pairs, `format_str`,
`get_fewshot_lsr` with big_vision's arguments), their keys (`pp_modules`,
`input.cache_raw` / `input.cache`, `ckpt_timeout`, evaluators' `cache`, a
helper value stored on the config), their pp strings and a custom op
registered with big_vision's decorators; 2 steps on the embedded digits.
Also: what each of those keys does, and how unknown keys are treated.
"""
import threading

from absl import logging as absl_logging
import ml_collections as mlc
import numpy as np
import pytest
import tensorflow as tf

import big_vision.configs.common as bvcc
from big_vision import checkpoint
from big_vision import config_check
from big_vision import input_pipeline
from big_vision import metric_writer
from big_vision import train
from big_vision.configs import common_fewshot
from big_vision.evaluators import common as eval_common
from big_vision.pp import builder
from big_vision.pp import utils as pp_utils
from big_vision.pp.registry import Registry


# A user's custom op, registered the big_vision way.
@Registry.register("preprocess_ops.bv_user_invert", replace=True)
@pp_utils.InKeyOutKey()
def get_bv_user_invert(vmax=255):
  def _invert(image):
    return vmax - image
  return _invert


def get_config(arg=None):
  """A big_vision-style config module's get_config."""
  arg = bvcc.parse_arg(arg, res=(16, int), runlocal=False, batch_size=16)
  config = mlc.ConfigDict()
  config.seed = 0
  config.total_steps = 2
  config.num_classes = 10
  config.loss = "softmax_xent"
  config.pp_modules = ["ops_general", "ops_image", "ops_text"]
  config.res = arg.res
  config.input = dict(data=dict(name="digits", split="train"),
                      batch_size=arg.batch_size, shuffle_buffer_size=200,
                      cache_raw=True)
  pp_common = ("|value_range(-1, 1)|onehot(10, key='label', "
               "key_result='labels')|keep('image', 'labels')")
  config.input.pp = bvcc.format_str(
      "decode|resize({res})|bv_user_invert|flip_lr", config) + pp_common
  config.model_name = "vit"
  config.model = dict(width=16, depth=1, mlp_dim=32, num_heads=2,
                      patch_size=(8, 8), pool_type="gap")
  config.optax_name = "scale_by_adam"
  config.lr = 1e-3
  config.wd = 1e-4
  config.schedule = dict(warmup_steps=1, decay_type="cosine")
  config.log_training_steps = 1
  config.ckpt_steps = 2
  config.ckpt_timeout = 60
  # A helper value kept on the config (read by nothing but this config).
  config.fewshot = common_fewshot.get_fewshot_lsr(
      runlocal=True, target_resolution=16, num_seeds=1, shots=(1, 2),
      log_steps=2, display_first=[("digits", 2)])
  config.prefetch_to_device = 2  # big_vision's, not read here: a warning.
  config.evals = mlc.ConfigDict()
  config.evals.val = dict(
      type="classification", data=dict(name="digits", split="test"),
      pp_fn=bvcc.format_str("decode|resize({res})", config) + pp_common,
      loss_name="softmax_xent", log_steps=2, cache="final_data")
  config.evals.fewshot = config.fewshot
  return config


def test_big_vision_style_config_trains_two_steps(tmp_path, caplog):
  config = get_config("res=16,batch_size=16")
  config.res = 8  # format_str fields follow later edits...
  assert config.input.pp.startswith("decode|resize(8)|bv_user_invert")
  config.res = 16  # ...as in big_vision sweeps.
  assert config.evals.val.pp_fn.startswith("decode|resize(16)|value_range")
  absl_logging.get_absl_logger().propagate = True
  with caplog.at_level("WARNING"):
    final = train.train(config, str(tmp_path))
  assert np.isfinite(final["training_loss"])
  lines = metric_writer.read(str(tmp_path))
  assert lines[-1]["step"] == 2
  first = [l for l in lines if "training_loss" in l][0]
  assert abs(first["training_loss"] - np.log(10)) < 0.7
  acc = [l["val/prec@1"] for l in lines if "val/prec@1" in l]
  assert acc and all(a in {i / 297 for i in range(298)} for a in acc)
  shots = [k for l in lines for k in l if k.startswith("fewshot/")]
  assert any("digits_1shot" in k for k in shots), shots
  warned = [r.getMessage() for r in caplog.records
            if "keys nothing reads" in r.getMessage()]
  assert warned and all(k in warned[0] for k in (
      "config.res", "config.fewshot", "config.prefetch_to_device"))


def test_custom_op_runs_in_the_pp_string():
  out = builder.get_preprocess_fn("bv_user_invert(inkey='x', outkey='y')")(
      {"x": tf.constant([0, 200], tf.uint8)})
  np.testing.assert_array_equal(out["y"], [255, 55])


def test_parse_arg_big_vision_semantics():
  arg = bvcc.parse_arg("", res=(224, int), runlocal=False)
  assert arg.res == 224 and arg.runlocal is False
  arg = bvcc.parse_arg("runlocal", res=(224, int), runlocal=False)
  assert arg.runlocal is True
  arg = bvcc.parse_arg("384", res=(224, int), runlocal=False)  # First entry.
  assert arg.res == 384
  arg = bvcc.parse_arg("res=128,runlocal=false,lr=0.5,name=x,on=true",
                       lazy=True, res=224, runlocal=True)
  assert (arg.res, arg.runlocal, arg.lr, arg.name, arg.on) == (
      128, False, 0.5, "x", True)
  assert bvcc.arg(res=256, model="B/16") == {
      "config_arg": "res=256,model=B/16", "res": 256, "model": "B/16"}
  with pytest.raises(ValueError, match="Did you mean 'runlocal'"):
    bvcc.parse_arg("runlcoal", runlocal=False, variant="")
  assert bvcc.autotype("3") == 3 and bvcc.autotype("1e-3") == 1e-3


def test_get_fewshot_lsr_big_vision_arguments():
  cfg = common_fewshot.get_fewshot_lsr(
      target_resolution=384, resize_resolution=440, num_seeds=2,
      shots=(5, 10), l2_reg=2.0 ** 8, log_percent=0.5, prefix="")
  assert cfg.pp_train == cfg.pp_eval == (
      "decode|resize(440)|central_crop(384)|value_range(-1, 1)"
      "|keep('image', 'label')")
  assert cfg.seeds == (0, 1) and cfg.shots == (5, 10)
  assert cfg.l2_reg == 256.0 and cfg.log_percent == 0.5
  assert "log_steps" not in cfg and cfg.prefix == ""
  custom = common_fewshot.get_fewshot_lsr(pp="decode|resize(32)")
  assert custom.pp_train == "decode|resize(32)|keep('image', 'label')"
  # Existing callers unchanged.
  old = common_fewshot.get_fewshot_lsr(runlocal=True, res=16,
                                       log_steps=100_000)
  assert old.pp_train.startswith("decode|resize(20)|central_crop(16)")
  assert old.log_steps == 100_000 and old.datasets["digits"][0] == "digits"


def _config_with(**kw):
  config = get_config()
  config.evals = {}
  for k, v in kw.items():
    config[k] = v
  return config


def test_unknown_keys_typo_is_error_far_key_is_warning(caplog):
  with pytest.raises(config_check.ConfigError, match="Did you mean 'lr'"):
    config_check._check_keys(_config_with(lrr=0.1), config_check.TOP_LEVEL,
                             "config")
  config = _config_with(my_helper=dict(a=1), wandb_project="x")
  absl_logging.get_absl_logger().propagate = True
  with caplog.at_level("WARNING"):
    unread = config_check._check_keys(config, config_check.TOP_LEVEL,
                                      "config")
  assert set(unread) == {"res", "fewshot", "prefetch_to_device", "my_helper",
                         "wandb_project"}
  msg = [r.getMessage() for r in caplog.records][-1]
  for k in unread:
    assert f"config.{k}" in msg
  # Input keys: cache / cache_raw are known; a near typo is an error.
  config = _config_with()
  config.input.cache_rw = True
  with pytest.raises(config_check.ConfigError, match="cache_raw"):
    config_check._check_keys(config.input, config_check.INPUT_KEYS,
                             "config.input")


def test_pp_modules_unknown_name_lists_valid_ones():
  with pytest.raises(config_check.ConfigError) as e:
    config_check._check_keys(_config_with(pp_modules=["ops_imgae"]),
                             config_check.TOP_LEVEL, "config")
  msg = str(e.value)
  assert "'ops_imgae'" in msg and "Did you mean 'ops_image'" in msg
  assert "ops_general" in msg and "ops_text" in msg
  builder.import_pp_modules(["ops_general", "autoaugment"])  # Valid: fine.


def test_evaluator_cache_key():
  base = dict(type="classification", data=dict(name="digits", split="test"),
              pp_fn="decode", loss_name="softmax_xent")
  for cache, final in (("final_data", True), ("raw_data", False),
                       ("pipeline", False), ("none", False), (None, False)):
    _, kwargs = eval_common.check_config({**base, "cache": cache}, "e")
    assert kwargs["cache_final"] is final and "cache" not in kwargs
  with pytest.raises(ValueError, match="final_data"):
    eval_common.check_config({**base, "cache": "everything"}, "e")


def _ids_pp(ex):
  flip = tf.random.stateless_uniform([], ex["_seed"])
  return {"id": ex["id"], "r": flip}


def _stream(cache, start_step=0, n=12):
  cfg = dict(data=dict(name="digits", split="train"), batch_size=250,
             pp=_ids_pp, shuffle_buffer_size=1500, cache=cache)
  ds, _ = input_pipeline.training(cfg, seed=3, start_step=start_step,
                                  process_index=0, process_count=1)
  it = ds.as_numpy_iterator()
  return [next(it) for _ in range(n)]


def test_input_cache_freezes_preprocessing_and_resumes():
  # 1500 examples = 6 batches an epoch; 12 batches = 2 epochs.
  batches = _stream(cache=True)
  first = {i: r for b in batches[:6] for i, r in zip(b["id"], b["r"])}
  second = {i: r for b in batches[6:] for i, r in zip(b["id"], b["r"])}
  assert len(first) == len(second) == 1500
  assert first == second  # Preprocessed once: the same random value.
  order = lambda bs: [i for b in bs for i in b["id"]]
  assert order(batches[:6]) != order(batches[6:])  # Reshuffled each epoch.
  resumed = _stream(cache=True, start_step=4, n=8)
  for a, b in zip(batches[4:], resumed):
    np.testing.assert_array_equal(a["id"], b["id"])
    np.testing.assert_array_equal(a["r"], b["r"])
  # Without cache, each epoch draws fresh values.
  fresh = _stream(cache=False)
  f1 = {i: r for b in fresh[:6] for i, r in zip(b["id"], b["r"])}
  f2 = {i: r for b in fresh[6:] for i, r in zip(b["id"], b["r"])}
  assert f1 != f2


def test_ckpt_timeout(tmp_path, monkeypatch):
  release = threading.Event()
  monkeypatch.setattr(checkpoint, "_test_pause_in_save",
                      lambda workdir, step: release.wait())
  monkeypatch.setenv(checkpoint.PAUSE_IN_SAVE_ENV, "1")
  state = {"params": {"w": np.arange(4, dtype=np.float32)},
           "step": np.int32(0)}
  ckpt = checkpoint.Checkpointer(str(tmp_path), timeout_s=0.5)
  ckpt.save(1, state)  # Stays in flight until released.
  with pytest.raises(TimeoutError, match="ckpt_timeout=0.5"):
    ckpt.save(2, state)
  release.set()
  ckpt.save(2, state)  # Once the first one is done, the next one starts.
  ckpt.close()
  assert ckpt.all_steps() == [1, 2]
  np.testing.assert_array_equal(
      checkpoint.load_params(str(tmp_path))["w"], np.arange(4))


def test_image_text_helpers_take_big_vision_arguments():
  from big_vision.configs.proj.image_text import common as it_common  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  pp_txt = "lower(key='texts', key_result='labels')"
  disclf = it_common.get_disclf(
      224, pp_txt=pp_txt, dataset_names=("imagenet2012", "cifar100"),
      log_percent=0.5, cache_final=True)
  assert disclf.type == "zeroshot" and disclf.prefix == "z/0shot/"
  assert disclf.pp_img == "decode|resize(256)|central_crop(224)|value_range(-1, 1)"
  assert disclf.datasets.cifar100.data.to_dict() == dict(name="cifar100",
                                                         split="test")
  assert disclf.datasets.imagenet2012.class_names == "imagenet2012"
  _, kwargs = eval_common.check_config(disclf, "config.evals.z")
  assert kwargs["pp_txt"] == pp_txt
  coco = it_common.get_coco(pp_img="resize(32)|value_range(-1, 1)",
                            pp_txt=pp_txt, log_steps=100)
  assert coco.type == "retrieval" and coco.prefix == "z/retr/coco_"
  eval_common.check_config(coco, "config.evals.coco")
  buf = io.BytesIO()
  Image.fromarray(np.full((40, 30, 3), 255, np.uint8)).save(buf, "JPEG")
  captions = [f"A Cat {i}." for i in range(6)]
  tf.random.set_seed(0)
  out = builder.get_preprocess_fn(coco.pp_fn)(
      {"image": tf.constant(buf.getvalue()),
       "captions": {"id": tf.range(6), "text": tf.constant(captions)}})
  assert set(out) == {"image", "labels"}
  assert out["image"].shape == (32, 32, 3)
  np.testing.assert_allclose(out["image"].numpy(), 1.0, atol=0.02)
  texts = [t.decode() for t in out["labels"].numpy()]
  assert len(set(texts)) == 5 and set(texts) <= {c.lower() for c in captions}
  with pytest.raises(ValueError, match="pass pp_txt"):
    it_common.get_coco()
  with pytest.raises(ValueError, match="unknown datasets.*imagenet_v2"):
    it_common.get_disclf(224, pp_txt=pp_txt, dataset_names=("imagenet_a",))
