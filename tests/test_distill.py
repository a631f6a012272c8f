"""Knowledge distillation (config.loss="distill", big_vision/objectives.py)."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from big_vision import checkpoint
from big_vision import objectives
from big_vision import program
from big_vision import sharding

RES, BATCH = 8, 16
TEACHER = dict(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=(4, 4),
               pool_type="gap")
STUDENT = dict(width=16, depth=1, mlp_dim=32, num_heads=2, patch_size=(4, 4),
               pool_type="gap")


def _np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_kl_matches_numpy():
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(2, 5, 7)) * 3
  for temperature in (1.0, 2.5):
    lpt = _np_log_softmax(t / temperature)
    lps = _np_log_softmax(s / temperature)
    want = temperature ** 2 * np.mean(np.sum(np.exp(lpt) * (lpt - lps), -1))
    got = objectives.distill_kl(jnp.asarray(s, jnp.float32),
                                jnp.asarray(t, jnp.float32), temperature)
    np.testing.assert_allclose(got, want, rtol=1e-5)
  assert abs(float(objectives.distill_kl(jnp.asarray(t), jnp.asarray(t)))) < 1e-6


@pytest.fixture(scope="module")
def teacher_npz(tmp_path_factory):
  """A random-init ViT teacher, saved as an npz."""
  from big_vision.models import vit  # pylint: disable=g-import-not-at-top
  model = vit.Model(num_classes=10, head_zeroinit=False, **TEACHER)
  params = model.init(jax.random.PRNGKey(1), jnp.zeros((1, RES, RES, 3)),
                      train=False)["params"]
  # Larger head so the teacher's outputs are far from uniform.
  params = jax.tree.map(np.asarray, params)
  params["head"]["kernel"] = params["head"]["kernel"] * 20
  path = str(tmp_path_factory.mktemp("teacher") / "teacher.npz")
  checkpoint.save_params(params, path)
  return path, params


def _config(teacher_path, **distill):
  return ml_collections.ConfigDict(dict(
      seed=0, num_classes=10, loss="distill", model_name="vit",
      model=dict(STUDENT),
      distill=dict(teacher=dict(model_name="vit", model=dict(TEACHER),
                                init=teacher_path), **distill),
      input=dict(data=dict(name="synthetic"), batch_size=BATCH),
      total_steps=30, optax_name="scale_by_adam", lr=1e-2, wd=0.0,
      schedule=dict(decay_type="constant"), log_training_steps=1))


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.normal(size=(BATCH, RES, RES, 3)).astype(np.float32),
          "labels": np.eye(10, dtype=np.float32)[rng.integers(0, 10, BATCH)]}


def test_no_gradient_flows_into_the_teacher_and_labels_mix(teacher_npz):
  path, t_params = teacher_npz
  config = _config(path, temperature=2.0, label_weight=0.3)
  _, model = program.create_model(config)
  teacher = objectives.Teacher(config.distill.teacher, 10)
  loss_fn = objectives.distill_loss_fn(config, model, teacher)
  batch = _batch()
  # Jitted: op by op, this test compiled ~300 ops one at a time.
  s_params = jax.jit(model.init, static_argnames="train")(
      jax.random.PRNGKey(0), batch["image"], train=False)["params"]
  loaded = teacher.params(batch["image"].shape)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(t_params)):
    np.testing.assert_array_equal(a, b)  # The npz, loaded by vit.load.
  g_s, g_t = jax.jit(jax.grad(loss_fn, argnums=(0, 1)))(
      s_params, loaded, batch, jax.random.PRNGKey(0))
  assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(g_t))
  assert sum(float(jnp.sum(x * x)) for x in jax.tree.leaves(g_s)) > 0
  # (1 - w) * T^2 KL + w * xent, by hand.
  s_logits, _ = jax.jit(model.apply, static_argnames="train")(
      {"params": s_params}, batch["image"], train=False)
  t_logits, _ = jax.jit(teacher.model.apply, static_argnames="train")(
      {"params": loaded}, batch["image"], train=False)
  s, t = np.asarray(s_logits, np.float64), np.asarray(t_logits, np.float64)
  lpt, lps = _np_log_softmax(t / 2), _np_log_softmax(s / 2)
  kl = 4 * np.mean(np.sum(np.exp(lpt) * (lpt - lps), -1))
  xent = -np.mean(np.sum(batch["labels"] * _np_log_softmax(s), -1))
  want = 0.7 * kl + 0.3 * xent
  got = jax.jit(loss_fn)(s_params, loaded, batch, jax.random.PRNGKey(0))
  np.testing.assert_allclose(got, want, rtol=1e-4)


def test_the_students_loss_decreases_in_the_train_step(teacher_npz):
  path, _ = teacher_npz
  config = _config(path)
  specs = {"image": ((BATCH, RES, RES, 3), np.float32),
           "labels": ((BATCH, 10), np.float32)}
  prog = program.build(config, data=(1000, specs))
  # Only the student is in the train state (the teacher is a constant).
  n_student = sum(np.prod(x.shape) for x in
                  jax.tree.leaves(prog.state_shape["params"]))
  assert n_student < 20_000
  assert set(prog.state_shape) == {"params", "opt", "step"}
  state = prog.init_state()
  batch = jax.device_put(_batch(1), sharding.data_sharding(prog.mesh))
  losses = []
  for _ in range(20):
    state, info = prog.update_fn(state, batch)
    losses.append(float(info["training_loss"]))
  assert losses[-1] < 0.6 * losses[0], losses
  assert all(b < a for a, b in zip(losses, losses[1:])), losses


def test_config_errors():
  config = _config("/nonexistent.npz")
  del config.distill["teacher"]["init"]
  with pytest.raises(ValueError, match="init"):
    program.build_objective(config, None)
  config = _config("/x.npz", temprature=2.0)
  with pytest.raises(ValueError, match="temprature"):
    program.build_objective(config, None)
  with pytest.raises(ValueError, match="does not exist"):
    program.build_objective(_config("/nonexistent/teacher.npz"), None)


def test_a_workdir_teacher_loads_inside_the_traced_step(teacher_npz,
                                                          tmp_path):
  """A workdir (orbax) teacher is read when the step is first traced; the
  read must run eagerly, not be staged into the trace."""
  _, t_params = teacher_npz
  ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(7, {"params": t_params, "step": np.int32(7)})
  ckpt.close()
  config = _config(str(tmp_path))
  _, model = program.create_model(config)
  objective = objectives.make(config, model)
  batch = _batch(2)
  params = model.init(jax.random.PRNGKey(0), batch["image"],
                      train=False)["params"]
  loss = jax.jit(objective.loss)(params, batch, jax.random.PRNGKey(0))
  t_logits, _ = model.apply({"params": params}, batch["image"], train=False)
  from big_vision.models import vit  # pylint: disable=g-import-not-at-top
  teacher = vit.Model(num_classes=10, **TEACHER)
  want = objectives.distill_kl(
      t_logits, teacher.apply({"params": t_params}, batch["image"])[0])
  np.testing.assert_allclose(loss, want, rtol=1e-5)
