"""Meshes, sharding tactics, FSDP training equivalence and sharded checkpoints.

Runs on the 8 virtual CPU devices of tests/conftest.py. Tactic tests that
need pod-sized meshes use `jax.sharding.AbstractMesh` (tactics only read the
axis sizes), so no devices are needed for them.
"""
import importlib.util
import os

import jax
from jax.sharding import AbstractMesh, PartitionSpec as P
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from big_vision import checkpoint
from big_vision import objectives
from big_vision import optax as bv_optax
from big_vision import sharding
from big_vision import program
from big_vision import utils
from big_vision.models import vit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
G_CONFIG = os.path.join(REPO, "big_vision", "configs", "proj",
                        "scaling_laws", "train_vit_g.py")
CTX = sharding.TacticContext()


def load_config(path, arg=None):
  spec = importlib.util.spec_from_file_location("cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def spec_of(tactic, mesh, shape, name="x", ctx=CTX):
  return sharding.parse_tactic(tactic)(mesh, name, tuple(shape), ctx)


# ----------------------------------------------------------------------------
# Meshes.
# ----------------------------------------------------------------------------
def test_make_mesh_fills_minus_one_and_orders_devices():
  mesh = sharding.make_mesh([("data", -1), ("fsdp", 2)])
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
  # Last axis fastest: fsdp pairs are neighbouring devices.
  ids = np.vectorize(lambda d: d.id)(mesh.devices)
  np.testing.assert_array_equal(ids, np.arange(8).reshape(4, 2))
  assert sharding.data_axes(mesh) == ("data", "fsdp")
  assert sharding.num_data_shards(mesh) == 8
  model_mesh = sharding.make_mesh([("data", 4), ("model", 2)])
  assert sharding.num_data_shards(model_mesh) == 4


@pytest.mark.parametrize("mesh_config,needle", [
    ([("data", 3)], "needs 3 devices"),
    ([("data", -1), ("fsdp", 3)], "not divisible"),
    ([("data", -1), ("fsdp", -1)], "at most one"),
    ([("data", 4), ("data", 2)], "repeated"),
])
def test_make_mesh_errors(mesh_config, needle):
  with pytest.raises(ValueError, match=needle):
    sharding.make_mesh(mesh_config)


# ----------------------------------------------------------------------------
# Tactics.
# ----------------------------------------------------------------------------
POD = AbstractMesh((16, 16), ("data", "fsdp"))
FLAT = AbstractMesh((256,), ("fsdp",))
ATTN_G = (1664, 16, 104)  # ViT-G query kernel: width x heads x head_dim.


def test_fsdp_shards_largest_divisible_dim():
  assert spec_of("fsdp", POD, ATTN_G) == P("fsdp", None, None)
  assert spec_of("fsdp", POD, (8192, 1664)) == P("fsdp", None)
  # Scanned [depth, in, out]: the big dim, never the layer axis.
  assert spec_of("fsdp", POD, (48, 1664, 8192)) == P(None, None, "fsdp")
  # 8192 is divisible by 256, 1664 is not.
  assert spec_of("fsdp", FLAT, (1664, 8192)) == P(None, "fsdp")


def test_fsdp_leaves_small_and_indivisible_tensors_replicated():
  assert spec_of("fsdp", POD, (1664,)) == P(None)  # 6.5 KB < 4 MB.
  assert spec_of("fsdp(min_size_to_shard_mb=0)", POD, (1664,)) == P("fsdp")
  # The reference failure of a flat 256-way fsdp: nothing divides by 256.
  assert spec_of("fsdp", FLAT, ATTN_G) == P(None, None, None)


def test_fsdp_over_two_axes_spreads_them_when_no_dim_divides_the_product():
  both = "fsdp(axis=('data', 'fsdp'))"
  assert spec_of(both, POD, (8192, 1664)) == P(("data", "fsdp"), None)
  # 1664 = 16 * 104: "data" on width, "fsdp" on the 16 heads.
  spec = spec_of(both, POD, ATTN_G)
  assert spec == P("data", "fsdp", None)
  shard = jax.sharding.NamedSharding(
      sharding.make_mesh([("data", 4), ("fsdp", 2)]), P("data", "fsdp", None))
  assert shard.shard_shape((16, 8, 4)) == (4, 4, 4)


def test_shard_dim_and_replicate():
  assert spec_of("shard_dim('fsdp', -1)", POD, (4, 32)) == P(None, "fsdp")
  assert spec_of("shard_dim(('data', 'fsdp'), 0)", POD, (512, 3)) == P(
      ("data", "fsdp"), None)
  assert spec_of("replicate", POD, (512, 3)) == P()
  with pytest.raises(ValueError, match="not divisible by mesh axis 'fsdp'"):
    spec_of("shard_dim('fsdp', 1)", POD, (4, 30))


@pytest.mark.parametrize("tactic,needle", [
    ("fsdpp", "Did you mean 'fsdp'"),
    ("fsdp(axis='model')", "not in the mesh"),
    ("fsdp(x=1)", "unexpected keyword"),
    ("fsdp(axis=open)", "must be literals"),
    ("logical(fallback='x')", "valid are"),
])
def test_bad_tactics_name_the_problem(tactic, needle):
  with pytest.raises(ValueError, match=needle):
    spec_of(tactic, POD, (64, 64))


def test_unmatched_leaf_is_an_error():
  mesh = sharding.make_mesh()
  tree = {"a": jax.ShapeDtypeStruct((8,), jnp.float32)}
  with pytest.raises(ValueError, match="not matched by any"):
    sharding.infer_shardings(mesh, tree, [("b", "replicate")])


def _mu_vit(**kw):
  model = vit.Model(10, width=32, depth=2, mlp_dim=64, num_heads=2,
                    patch_size=(4, 4), pool_type="map", scan=True, **kw)
  boxed = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3))))["params"]
  return model, boxed


def test_logical_tactic_maps_annotations_through_rules_for_params_and_opt():
  _, boxed = _mu_vit(logical_axes=True)
  axes = sharding.logical_axes_of(boxed)
  params = sharding.unbox(boxed)
  assert set(axes) == set(utils.flatten_dict(params))
  mlp = "Transformer/encoderblock/MlpBlock_0/Dense_0/kernel"
  assert axes[mlp] == (("layers", "embed", "mlp"), (2, 32, 64))

  tx = bv_optax.scale_by_adafactor(min_dim_size_to_factor=8)
  state = {"params": params, "opt": jax.eval_shape(tx.init, params)}
  mesh = sharding.make_mesh([("data", 2), ("fsdp", 4)])
  rules = [("mlp", "fsdp"), ("embed", "fsdp"), ("classes", "data")]
  shd = sharding.infer_shardings(mesh, state, [(".*", "logical")],
                                 rules=rules, logical_axes=axes)
  flat = {n: s.spec for n, s in utils.tree_flatten_with_names(shd)[0]}
  # "mlp" takes fsdp; "embed" would too, but an axis is used once per tensor.
  assert flat[f"params/{mlp}"] == P(None, None, "fsdp")
  assert flat["params/Transformer/encoderblock/MlpBlock_0/Dense_1/kernel"] == (
      P(None, "fsdp", None))
  assert flat["params/head/kernel"] == P("fsdp", "data")
  # Momentum (optax.ema): the parameter's shape, so its sharding.
  mu = [n for n in flat if n.endswith(f"ema/{mlp}")]
  assert len(mu) == 1 and flat[mu[0]] == flat[f"params/{mlp}"]
  # Factored second moments drop a dim, and its name with it.
  v_row = [n for n in flat if n.endswith(f"v_row/{mlp}")][0]
  v_col = [n for n in flat if n.endswith(f"v_col/{mlp}")][0]
  assert flat[v_row] == P(None, "fsdp")  # [2, 32]: (layers, embed)
  assert flat[v_col] == P(None, "fsdp")  # [2, 64]: (layers, mlp)


def test_logical_tactic_without_annotations_says_how_to_get_them():
  _, boxed = _mu_vit()
  params = sharding.unbox(boxed)
  assert not sharding.logical_axes_of(boxed)
  with pytest.raises(ValueError, match="logical_axes=True"):
    sharding.infer_shardings(sharding.make_mesh(), params, [(".*", "logical")])


def test_param_regexes_shard_the_optimizer_state_with_the_param():
  _, boxed = _mu_vit()
  params = sharding.unbox(boxed)
  tx = optax.adam(1e-3)
  state = {"params": params, "opt": jax.eval_shape(tx.init, params)}
  mesh = sharding.make_mesh([("data", 2), ("fsdp", 4)])
  shd = sharding.infer_shardings(mesh, state, [
      (".*head/kernel", "replicate"),
      (".*", "fsdp(min_size_to_shard_mb=0)")])
  flat = {n: s.spec for n, s in utils.tree_flatten_with_names(shd)[0]}
  head = [n for n in flat if n.endswith("/head/kernel")]
  assert len(head) == 3  # params, mu, nu
  assert all(flat[n] == P() for n in head)
  kernel = "encoderblock/MlpBlock_0/Dense_0/kernel"
  specs = {flat[n] for n in flat if n.endswith(kernel)}
  assert specs == {P(None, None, "fsdp")}


def test_activation_constraints_only_inside_the_context():
  model, boxed = _mu_vit()
  params = sharding.unbox(boxed)
  mesh = sharding.make_mesh([("data", 4), ("fsdp", 2)])
  x = jnp.zeros((8, 16, 16, 3))

  def lower():
    # A new function each time: jax caches traces by function, and flax's
    # rules (thread-local Python state) are not part of the cache key.
    def fwd(p, x):
      return model.apply({"params": p}, x)[0]
    return jax.jit(fwd).lower(params, x).as_text()

  def count(text):
    return text.count("sharding_constraint")

  plain = lower()
  with sharding.activation_context(mesh):
    constrained = lower()
  # Tensor-parallel MLP: batch over "data" only, hidden units over "fsdp".
  rules = [("act_batch", "data"), ("act_mlp", "fsdp")]
  with sharding.activation_context(mesh, rules):
    tp = lower()
  assert count(plain) == 0
  # Residual stream, q/k/v and attention output of each block (scanned once)
  # and of the MAP head: the batch over both data axes by default.
  assert count(constrained) >= 8
  assert '[{"data", "fsdp"}, {}, {}]> : tensor<8x16x32xf32>' in constrained
  assert '[{"data"}, {}, {"fsdp"}]> : tensor<8x16x64xf32>' in tp
  with pytest.raises(ValueError, match="not in the mesh"):
    with sharding.activation_context(mesh, [("act_mlp", "model")]):
      pass


# ----------------------------------------------------------------------------
# Training: FSDP == replication, and the state really is sharded.
# ----------------------------------------------------------------------------
def tiny_g_config(mesh, strategy):
  """The runlocal ViT-g recipe (MAP head, scan, remat, Adafactor), in f32."""
  config = load_config(G_CONFIG, "runlocal")
  config.model.dtype_mm = "float32"
  config.mesh = mesh
  config.sharding_strategy = strategy
  config.total_steps = 10
  config.schedule = dict(warmup_steps=2, decay_type="rsqrt", timescale=10)
  config.lr = 0.01
  # Key biases have an exactly-zero gradient (softmax ignores a constant
  # added to all logits of a query): they only see rounding noise, which
  # Adafactor's g / sqrt(v) turns into full-size random steps that then leak
  # into the query gradients. Hold them still so the runs are comparable.
  config.lr_mults = ((".*key/bias", 0.0),)
  # bfloat16 momentum rounds a 1e-7 difference to a whole bf16 ulp (0.4%)
  # now and then; float32 keeps the two runs within float32 noise.
  config.optax.dtype_momentum = "float32"
  return config


def build(config, batch_size=16, res=16):
  """State (created sharded) and jitted step, from train.py's functions."""
  mesh = sharding.make_mesh(config.get("mesh"))
  _, model = program.create_model(config)
  objective = objectives.make(config, model, mesh)
  specs = {"image": ((batch_size, res, res, 3), np.float32)}
  rng = jax.random.PRNGKey(config.seed)
  params_shape = jax.eval_shape(lambda r: program.init_fn_for(
      config, model, optax.identity(), specs)(r)["params"], rng)
  tx, _ = bv_optax.make(config, params_shape, sched_kw=dict(
      total_steps=config.total_steps, batch_size=batch_size,
      data_size=10 * batch_size))
  init = program.init_fn_for(config, model, tx, specs)
  state_shape = jax.eval_shape(init, rng)
  shardings = program.state_shardings(config, mesh, state_shape)
  state = jax.jit(init, out_shardings=shardings)(rng)
  update = program.make_update_fn(config, objective, tx, mesh, shardings)
  return mesh, state, update, state_shape, shardings


def batches(n, batch_size=16, res=16, seed=0):
  rng = np.random.default_rng(seed)
  for _ in range(n):
    labels = rng.integers(0, 10, batch_size)
    yield {"image": rng.uniform(-1, 1, (batch_size, res, res, 3)).astype(
               np.float32),
           "labels": np.eye(10, dtype=np.float32)[labels]}


def run(config, steps=10):
  mesh, state, update, *_ = build(config)
  losses = []
  data_shd = sharding.data_sharding(mesh)
  with sharding.activation_context(mesh, config.get("sharding_rules")):
    for b in batches(steps):
      state, info = update(state, jax.device_put(b, data_shd))
      losses.append(float(info["training_loss"]))
  return state, losses


def test_fsdp_training_matches_replication_and_really_shards():
  fsdp, fsdp_losses = run(tiny_g_config(
      (("data", 2), ("fsdp", 4)), ((".*", "fsdp(min_size_to_shard_mb=0)"),)))
  repl, repl_losses = run(tiny_g_config(
      (("data", -1),), ((".*", "replicate"),)))

  np.testing.assert_allclose(fsdp_losses, repl_losses, rtol=1e-5)
  assert repl_losses[-1] < repl_losses[0]  # It trains.
  a, b = (utils.flatten_dict(jax.device_get(s["params"])) for s in (fsdp, repl))
  for k in a:
    np.testing.assert_allclose(a[k], b[k], atol=1e-5, rtol=1e-5, err_msg=k)

  kernel = fsdp["params"]["Transformer"]["encoderblock"]["MlpBlock_0"][
      "Dense_0"]["kernel"]  # [depth 2, 32, 64]
  assert kernel.sharding.spec == P(None, None, "fsdp")
  assert {s.data.shape for s in kernel.addressable_shards} == {(2, 32, 16)}
  named = utils.tree_flatten_with_names(fsdp["opt"])[0]
  mu = [x for n, x in named if n.endswith("ema/Transformer/encoderblock/"
                                          "MlpBlock_0/Dense_0/kernel")]
  assert len(mu) == 1 and mu[0].sharding.spec == P(None, None, "fsdp")
  sharded = [n for n, x in utils.tree_flatten_with_names(fsdp["params"])[0]
             if not x.sharding.is_fully_replicated]
  assert len(sharded) >= 20, sharded
  repl_kernel = repl["params"]["head"]["kernel"]
  assert repl_kernel.sharding.is_fully_replicated


def small_config(mesh, strategy):
  """tiny_g_config with a cheaper-to-compile model (no scan/remat/MAP)."""
  config = tiny_g_config(mesh, strategy)
  config.model.update(scan=False, remat_policy="none", pool_type="gap")
  return config


def test_checkpoint_restores_sharded_state_into_another_mesh(tmp_path):
  config = small_config((("data", 2), ("fsdp", 4)),
                        ((".*", "fsdp(min_size_to_shard_mb=0)"),))
  _, state, update, _, _ = build(config)
  ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(3, state)
  ckpt.wait()
  flat = lambda tree: dict(utils.tree_flatten_with_names(
      jax.device_get(tree))[0])
  want = flat(state)

  # Restore into a 1 x 8 fsdp mesh, and into a plain replicated one.
  kernel_shards = []
  for mesh_cfg, strategy in [
      ((("data", 1), ("fsdp", 8)), ((".*", "fsdp(min_size_to_shard_mb=0)"),)),
      ((("data", -1),), ((".*", "replicate"),))]:
    other = small_config(mesh_cfg, strategy)
    _, _, _, state_shape, shardings = build(other)
    restored = checkpoint.Checkpointer(str(tmp_path)).restore(
        3, state_shape, shardings)
    for (n, x), (_, t) in zip(utils.tree_flatten_with_names(restored)[0],
                              utils.tree_flatten_with_names(shardings)[0]):
      assert x.sharding == t, n
    got = flat(restored)
    assert got.keys() == want.keys() and len(want) > 50
    for k in want:
      np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]),
                                    err_msg=k)
    kernel = restored["params"]["Transformer"]["encoderblock_0"][
        "MlpBlock_0"]["Dense_0"]["kernel"]
    kernel_shards.append({s.data.shape for s in kernel.addressable_shards})
  assert kernel_shards == [{(32, 8)}, {(32, 64)}]
