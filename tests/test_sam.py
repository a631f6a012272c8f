"""SAM / GSAM (big_vision/sam.py): closed forms on a quadratic, and the step."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from big_vision import objectives
from big_vision import optax as bv_optax
from big_vision import program
from big_vision import sam
from big_vision import sharding


def _quadratic(seed=0, n=6):
  """f(x) = 0.5 x^T A x with A symmetric positive definite, x split into two
  leaves (the norms are global over the tree)."""
  rng = np.random.default_rng(seed)
  m = rng.normal(size=(n, n))
  a = (m @ m.T + n * np.eye(n)).astype(np.float64)
  x = rng.normal(size=n)

  def value_and_grad(tree):
    v = jnp.concatenate([tree["a"], tree["b"]])
    return jax.value_and_grad(lambda v: 0.5 * v @ jnp.asarray(a, v.dtype) @ v)(
        v)
  def vg(tree):
    loss, g = value_and_grad(tree)
    return loss, {"a": g[:2], "b": g[2:]}
  tree = {"a": jnp.asarray(x[:2], jnp.float32),
          "b": jnp.asarray(x[2:], jnp.float32)}
  return a, x, tree, vg


def _flat(tree):
  return np.concatenate([np.asarray(tree["a"]), np.asarray(tree["b"])])


def test_sam_gradient_is_the_closed_form_on_a_quadratic():
  a, x, tree, vg = _quadratic()
  rho = 0.3
  loss, g, info = sam.sam_grads(vg, tree, rho)
  ax = a @ x
  want = a @ (x + rho * ax / np.linalg.norm(ax))
  np.testing.assert_allclose(_flat(g), want, rtol=1e-5)
  np.testing.assert_allclose(loss, 0.5 * x @ a @ x, rtol=1e-6)
  xp = x + rho * ax / np.linalg.norm(ax)
  np.testing.assert_allclose(info["sam/loss_perturbed"], 0.5 * xp @ a @ xp,
                             rtol=1e-5)


def test_asam_gradient_is_the_closed_form_on_a_quadratic():
  a, x, tree, vg = _quadratic(seed=1)
  rho = 0.2
  _, g, _ = sam.sam_grads(vg, tree, rho, adaptive=True)
  ax, t = a @ x, np.abs(x)
  e = rho * t * t * ax / np.linalg.norm(t * ax)
  np.testing.assert_allclose(_flat(g), a @ (x + e), rtol=1e-5)


@pytest.mark.parametrize("minimize_fp", [True, False])
def test_gsam_surrogate_gap_decomposition_on_a_quadratic(minimize_fp):
  a, x, tree, vg = _quadratic(seed=2)
  rho, alpha = 0.4, 0.7
  loss, g, _ = sam.gsam_grads(vg, tree, rho, alpha, minimize_fp=minimize_fp)
  gc = a @ x
  gp = a @ (x + rho * gc / np.linalg.norm(gc))
  if minimize_fp:
    # g_gsam = g_p - alpha * g_perp, g_perp the part of g orthogonal to g_p.
    perp = gc - (gc @ gp) / (gp @ gp) * gp
    want = gp - alpha * perp
    # The correction does not change the descent rate of f_p (to 1st order).
    np.testing.assert_allclose(_flat(g) @ gp, gp @ gp, rtol=1e-5)
  else:
    perp = gp - (gp @ gc) / (gc @ gc) * gc
    want = gc + alpha * perp
    np.testing.assert_allclose(_flat(g) @ gc, gc @ gc, rtol=1e-5)
  assert abs(perp @ (gp if minimize_fp else gc)) < 1e-8 * (gp @ gp)
  np.testing.assert_allclose(_flat(g), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(loss, 0.5 * x @ a @ x, rtol=1e-6)


def test_gsam_with_constant_rho_and_zero_alpha_is_sam():
  _, _, tree, vg = _quadratic(seed=3)
  _, g_sam, _ = sam.sam_grads(vg, tree, 0.25)
  _, g_gsam, _ = sam.gsam_grads(vg, tree, 0.25, 0.0)
  np.testing.assert_allclose(_flat(g_gsam), _flat(g_sam), rtol=1e-6)


def test_gsam_rho_follows_the_learning_rate():
  kw = dict(rho_max=0.6, rho_min=0.1, lr_max=1e-3, lr_min=1e-5)
  assert np.isclose(sam.gsam_rho(1e-3, **kw), 0.6)
  assert np.isclose(sam.gsam_rho(1e-5, **kw), 0.1)
  mid = (1e-3 + 1e-5) / 2
  assert np.isclose(sam.gsam_rho(mid, **kw), 0.35)
  assert np.isclose(sam.gsam_rho(0.5, 0.6, 0.1, 1e-3, 1e-3), 0.6)


def test_config_errors_name_the_key():
  cfg = ml_collections.ConfigDict(dict(sam=dict(rho=0.1, rhoo=2)))
  with pytest.raises(ValueError, match="rhoo"):
    sam.check_config(cfg)
  cfg = ml_collections.ConfigDict(dict(sam=dict(rho=0.1),
                                       gsam=dict(rho_max=1, rho_min=1,
                                                 alpha=0)))
  with pytest.raises(ValueError, match="both"):
    sam.check_config(cfg)
  with pytest.raises(ValueError, match="alpha"):
    sam.check_config(ml_collections.ConfigDict(
        dict(gsam=dict(rho_max=1, rho_min=1))))


# ----------------------------------------------------------------------------
# In the train step.
# ----------------------------------------------------------------------------
BATCH, RES = 16, 8


def _config(**overrides):
  config = ml_collections.ConfigDict(dict(
      seed=0, num_classes=10, loss="softmax_xent", model_name="vit",
      model=dict(width=16, depth=1, mlp_dim=32, num_heads=2,
                 patch_size=(4, 4), pool_type="gap", head_zeroinit=False),
      optax_name="identity", lr=0.1, wd=0.0,
      schedule=dict(decay_type="linear", linear_end=0.0),
      accum_steps=1))
  config.update(overrides)
  return config


def _step(config, total_steps=4):
  mesh = sharding.make_mesh()
  _, model = program.create_model(config)
  objective = objectives.make(config, model, mesh)
  specs = {"image": ((BATCH, RES, RES, 3), np.float32)}
  rng = jax.random.PRNGKey(0)
  params_shape = jax.eval_shape(
      lambda r: program.init_fn_for(config, model, bv_optax.optax.identity(),
                                    specs)(r)["params"], rng)
  tx, scheds, names, trainable = bv_optax.make(
      config, params_shape, sched_kw=dict(total_steps=total_steps),
      with_groups=True)
  init = program.init_fn_for(config, model, tx, specs)
  shardings = program.state_shardings(config, mesh, jax.eval_shape(init, rng))
  state = jax.jit(init, out_shardings=shardings)(rng)
  update = program.make_update_fn(config, objective, tx, mesh, shardings,
                                  list(zip(names, scheds)), trainable)
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(BATCH, RES, RES, 3)).astype(np.float32),
           "labels": np.eye(10, dtype=np.float32)[rng.integers(0, 10, BATCH)]}
  batch = jax.device_put(batch, sharding.data_sharding(mesh))
  return model, state, update, batch


def _loss(model, params, batch):
  logits, _ = model.apply({"params": params}, batch["image"], train=False)
  return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * batch["labels"], -1))


def test_sam_step_applies_the_perturbed_gradient():
  rho = 0.05
  model, state, update, batch = _step(_config(sam=dict(rho=rho)))
  params = jax.device_get(state["params"])

  @jax.jit  # One program, not hundreds of op-by-op compiles.
  def reference(params, batch):
    """SAM by its formula: the gradient at params + rho * g / |g|."""
    g = jax.grad(_loss, argnums=1)(model, params, batch)
    gn = jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree.leaves(g)))
    perturbed = jax.tree.map(lambda p, d: p + rho * d / gn, params, g)
    return (jax.grad(_loss, argnums=1)(model, perturbed, batch),
            _loss(model, params, batch))

  g_p, loss = reference(params, batch)
  new_state, info = update(state, batch)
  lr = float(info["lr"])  # Linear decay from 0.1 at step 0.
  assert np.isclose(lr, 0.1)
  want = jax.tree.map(lambda p, d: p - lr * d, params, g_p)
  for w, n in zip(jax.tree.leaves(want), jax.tree.leaves(new_state["params"])):
    np.testing.assert_allclose(n, w, rtol=1e-4, atol=1e-6)
  assert np.isclose(info["training_loss"], loss, rtol=1e-5)
  assert info["sam/loss_perturbed"] > info["training_loss"]


def test_gsam_step_reads_rho_from_the_schedule_and_accumulates_exactly():
  gsam = dict(rho_max=0.2, rho_min=0.02, alpha=0.5, lr_max=0.1, lr_min=0.0)
  runs = {}
  for k in (1, 4):
    _, state, update, batch = _step(_config(gsam=gsam, accum_steps=k))
    infos = []
    for _ in range(2):
      state, info = update(state, batch)
      infos.append(jax.device_get(info))
    runs[k] = jax.device_get(state["params"]), infos
  # Step 0: lr 0.1 -> rho_max; step 1 of 4 (linear to 0): lr 0.075.
  assert np.isclose(runs[1][1][0]["gsam/rho"], 0.2)
  assert np.isclose(runs[1][1][1]["gsam/rho"], 0.02 + 0.18 * 0.75)
  for a, b in zip(jax.tree.leaves(runs[1][0]), jax.tree.leaves(runs[4][0])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_gsam_digits_runlocal_trains_through_train_py(tmp_path):
  """The config's :runlocal on the embedded digits, through train.train: the
  step logs the clean and perturbed losses and rho (the :digits accuracy
  run, 352 steps, is a measurement in the config's docstring)."""
  import importlib  # pylint: disable=g-import-not-at-top
  from big_vision import metric_writer  # pylint: disable=g-import-not-at-top
  from big_vision import train  # pylint: disable=g-import-not-at-top
  mod = importlib.import_module("big_vision.configs.proj.gsam.vit_i1k_gsam")
  config = mod.get_config("runlocal")
  assert config.gsam.rho_max == 0.05 and config.total_steps == 2
  train.train(config, str(tmp_path))
  rows = [r for r in metric_writer.read(str(tmp_path))
          if "training_loss" in r]
  assert [r["step"] for r in rows] == [2]  # log_training_steps=2.
  for r in rows:
    assert 0.01 <= r["gsam/rho"] <= 0.05
    assert np.isfinite(r["training_loss"])
    assert r["sam/loss_perturbed"] >= r["training_loss"] - 1e-3
