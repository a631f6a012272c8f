"""The `finetune` evaluator: fine-tunes a copy, leaves the train state alone.

That its accuracy grows with pretraining is checked on the digits pretraining
run of tests/test_transfer.py (one training run serves both).
"""
import jax
import numpy as np
import pytest

from big_vision import sharding
from big_vision import program
from big_vision import utils
from big_vision.configs import common
from big_vision.evaluators import common as evaluators
from big_vision.evaluators import finetune
from big_vision.models import vit


def ft_config(res=16, **kw):
  """A digits linear probe (with augmentation) as a `finetune` eval config."""
  cfg = dict(type="finetune", train_data=dict(name="digits", split="train"),
             test_data=dict(name="digits", split="test"),
             pp_train=common.digits_pp(res, train=True),
             pp_eval=common.digits_pp(res, train=False),
             num_classes=10, steps=20, batch_size=64, train_params="head",
             optimizer=dict(lr=0.1))
  cfg.update(kw)
  return cfg


def _tiny_state():
  model = vit.Model(10, width=32, depth=1, mlp_dim=64, num_heads=2,
                    patch_size=(4, 4), pool_type="gap")
  mesh = sharding.make_mesh()
  params = model.init(jax.random.PRNGKey(0), np.zeros((1, 16, 16, 3)))
  params = jax.device_put(params["params"], sharding.replicated(mesh))
  # A trained-looking state: nonzero head, an optimizer-ish entry, a step.
  params["head"]["kernel"] = params["head"]["kernel"] + 0.5
  state = {"params": params, "opt": {"mu": jax.tree.map(lambda x: x * 2,
                                                        params)},
           "step": np.int32(7)}
  return model, mesh, state


def test_train_state_is_bit_identical_after_the_evaluator():
  model, mesh, state = _tiny_state()
  before = jax.device_get(state)
  ev = finetune.Evaluator(program.make_predict_fn(model), mesh=mesh,
                          **{k: v for k, v in ft_config(
                              steps=3, train_params="all").items()
                             if k != "type"})
  results = dict(ev.run(state))
  assert 0.0 <= results["prec@1"] <= 1.0 and np.isfinite(results["loss"])
  leaves = jax.tree.leaves(state["params"])
  assert not any(x.is_deleted() for x in leaves), "donated the train state"
  after = jax.device_get(state)
  jax.tree.map(np.testing.assert_array_equal, after, before)
  # And a second run (compiled step reused) gives the same numbers.
  assert dict(ev.run(state)) == results


def test_trainable_names_selects_by_regex():
  _, _, state = _tiny_state()
  names = [n for n, _ in utils.tree_flatten_with_names(state["params"])[0]]
  assert finetune.trainable_names(state["params"], "head") == []
  assert finetune.trainable_names(state["params"], "all") == names
  got = finetune.trainable_names(state["params"], "Transformer/encoder_norm/.*")
  assert got == ["Transformer/encoder_norm/bias",
                 "Transformer/encoder_norm/scale"]
  with pytest.raises(ValueError, match="matches no parameter.*embedding, head"):
    finetune.trainable_names(state["params"], "Transformr/.*")


def test_unknown_keys_and_layers_are_reported():
  with pytest.raises(ValueError, match="Did you mean 'num_classes'"):
    evaluators.check_config(ft_config(num_clases=3), "config.evals.ft")
  model, mesh, state = _tiny_state()
  ev = finetune.Evaluator(program.make_predict_fn(model), mesh=mesh,
                          **{k: v for k, v in ft_config(
                              representation_layer="pre_logitz").items()
                             if k != "type"})
  with pytest.raises(ValueError, match="'pre_logitz' is not an output.*"
                     "pre_logits"):
    list(ev.run(state))


def test_each_task_compiles_its_step_once(compiled):
  """The fine-tune step keeps its state's shardings, so the second step
  reuses the first one's executable (it compiled twice per task: the
  optimizer state came back sharded differently from how it went in)."""
  model, mesh, state = _tiny_state()
  for train_params in ("all", "head"):
    ev = finetune.Evaluator(program.make_predict_fn(model), mesh=mesh,
                            **{k: v for k, v in ft_config(
                                steps=3, train_params=train_params).items()
                               if k != "type"})
    del compiled[:]
    first = dict(ev.run(state))
    assert compiled.count("jit(step)") == 1, (train_params, compiled)
    assert compiled.count("jit(evaluate)") == 1, (train_params, compiled)
    del compiled[:]
    assert dict(ev.run(state)) == first
    assert "jit(step)" not in compiled and "jit(evaluate)" not in compiled


def _evaluator(model, mesh, num_classes=10, predict_fn=None, **kw):
  cfg = {k: v for k, v in ft_config(**kw).items() if k != "type"}
  for key in ("pp_train", "pp_eval"):
    cfg[key] = cfg[key].replace("onehot(10,", f"onehot({num_classes},")
  return finetune.Evaluator(predict_fn or program.make_predict_fn(model),
                            mesh=mesh,
                            num_classes=num_classes,
                            **{k: v for k, v in cfg.items()
                               if k != "num_classes"})


@pytest.mark.parametrize("train_params", ["all", "head"])
def test_padded_head_gives_the_unpadded_numbers(train_params):
  """The head's 118 padded outputs (10 classes -> 128) change nothing: the
  same metrics as a head of exactly 10 outputs."""
  model, mesh, state = _tiny_state()
  padded = dict(_evaluator(model, mesh, steps=5,
                           train_params=train_params).run(state))
  exact_ev = _evaluator(model, mesh, steps=5, train_params=train_params,
                        head_lanes=1)
  assert exact_ev.head_width == 10
  exact = dict(exact_ev.run(state))
  assert padded.keys() == exact.keys()
  for k in exact:
    np.testing.assert_allclose(padded[k], exact[k], rtol=1e-5, atol=1e-6,
                               err_msg=k)


def test_tasks_of_different_class_counts_share_one_compiled_step(compiled):
  """A suite's tasks (here 10 and 7 classes) compile the step and the eval
  once between them; each reports its own numbers."""
  model, mesh, state = _tiny_state()
  predict_fn = program.make_predict_fn(model)  # A suite shares it.
  ten = dict(_evaluator(model, mesh, 10, predict_fn, steps=3).run(state))
  seven = dict(_evaluator(model, mesh, 7, predict_fn, steps=3).run(state))
  assert compiled.count("jit(step)") == 1, compiled
  assert compiled.count("jit(evaluate)") == 1, compiled
  assert ten != seven
  for r in (ten, seven):
    assert 0.0 <= r["prec@1"] <= 1.0 and np.isfinite(r["loss"])


def test_labels_of_another_width_are_named():
  model, mesh, state = _tiny_state()
  ev = _evaluator(model, mesh, steps=1)
  ev.num_classes = 12  # The pp still makes 10-wide one-hots.
  ev.head_width = 128
  with pytest.raises(ValueError, match=r"num_classes=12.*\[10\]"):
    dict(ev.run(state))


def test_sharded_backbone_factored_optimizer_and_frozen_group(compiled):
  """Optimizer state not shaped like the params (Adafactor's factored
  statistics of an fsdp-style sharded kernel) and a frozen group (a None
  schedule: masked state): the step compiles once and stays finite."""
  model, mesh, state = _tiny_state()
  name = "Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel"
  params = state["params"]
  block = params["Transformer"]["encoderblock_0"]["MlpBlock_0"]["Dense_0"]
  assert block["kernel"].shape == (32, 64), name
  block["kernel"] = jax.device_put(
      block["kernel"],
      jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None,
                                                                  "data")))
  optimizer = dict(
      optax_name="big_vision.scale_by_adafactor", lr=0.01,
      schedule=[("backbone/Transformer/encoderblock_0/MultiHead.*", None),
                (".*", dict(decay_type="cosine"))])
  results = dict(_evaluator(model, mesh, steps=3, train_params="all",
                            optimizer=optimizer).run(state))
  assert compiled.count("jit(step)") == 1, compiled
  assert all(np.isfinite(v) for v in results.values()), results
