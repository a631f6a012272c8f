"""Tests for big_vision.optax: schedules, masks, decay, Adafactor."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from big_vision import optax as bv_optax
from big_vision import utils

SCHED_KW = dict(total_steps=100, batch_size=10, data_size=1000)


def _sched(step, **sched):
  return float(bv_optax.make_schedule(sched, **SCHED_KW)(step))


# ----------------------------------------------------------------------------
# Schedules against closed forms.
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("step", [0, 5, 10, 37, 55, 99, 100])
def test_cosine_with_warmup(step):
  w, t = 10, 100
  want = (step / w if step < w
          else 0.5 * (1 + np.cos(np.pi * (step - w) / (t - w))))
  assert _sched(step, decay_type="cosine", warmup_steps=w) == pytest.approx(
      want, abs=1e-6)


@pytest.mark.parametrize("step", [0, 20, 60, 100])
def test_linear_end_and_warmup_epochs(step):
  # 0.2 epochs of 1000 examples at batch size 10 -> 20 warmup steps.
  w = 20
  p = np.clip((step - w) / (100 - w), 0, 1)
  want = (step / w) if step < w else 0.1 + 0.9 * (1 - p)
  got = _sched(step, decay_type="linear", warmup_epochs=0.2, linear_end=0.1)
  assert got == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("step", [0, 30, 75, 100])
def test_polynomial(step):
  p = step / 100
  want = 0.05 + 0.95 * (1 - p) ** 2
  assert _sched(step, decay_type="poly", power=2, end=0.05) == pytest.approx(
      want, abs=1e-6)


@pytest.mark.parametrize("step", [0, 5, 10, 40, 80, 90, 95, 100])
def test_rsqrt_warmup_cooldown(step):
  """The "Scaling ViT" schedule: linear warmup, rsqrt, linear cooldown."""
  w, c, ts, t = 10, 20, 30, 100
  want = min(1, step / w) / np.sqrt(1 + max(0, step - w) / ts)
  want *= np.clip((t - step) / c, 0, 1)
  got = _sched(step, decay_type="rsqrt", warmup_steps=w, cooldown_percent=0.2,
               timescale=ts)
  assert got == pytest.approx(want, rel=1e-5, abs=1e-7)


def test_rsqrt_halves_after_three_timescales():
  assert _sched(10 + 3 * 7, decay_type="rsqrt", warmup_steps=10,
                timescale=7) == pytest.approx(0.5)


def test_constant_warmup_start_and_stair():
  # Default decay is constant; warmup from 0.1.
  assert _sched(0, warmup_examples=100, warmup_start=0.1) == pytest.approx(0.1)
  assert _sched(5, warmup_steps=10, warmup_start=0.1) == pytest.approx(0.55)
  assert _sched(50, decay_type="const", warmup_steps=10) == 1.0
  stair = dict(decay_type="stair", steps=[30, 60], mults=[0.1, 0.01])
  got = [_sched(s, **stair) for s in (0, 29, 30, 59, 60, 99)]
  np.testing.assert_allclose(got, [1, 1, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)


def test_min_lr_floors_decay_not_warmup():
  fn = bv_optax.make_schedule(dict(decay_type="cosine", warmup_steps=10,
                                   min_lr=0.02), base_lr=0.1, **SCHED_KW)
  assert float(fn(0)) == 0.0
  assert float(fn(100)) == pytest.approx(0.2)
  assert float(fn(10)) == pytest.approx(1.0)


def test_schedule_jittable_and_float32():
  fn = bv_optax.make_schedule(dict(decay_type="cosine", warmup_steps=10),
                              **SCHED_KW)
  out = jax.jit(fn)(jnp.int32(55))
  assert out.dtype == jnp.float32
  assert float(out) == pytest.approx(0.5, abs=1e-6)


def test_schedule_errors():
  with pytest.raises(ValueError, match=r"'cosinus'.*'cosine'.*rsqrt"):
    bv_optax.make_schedule(dict(decay_type="cosinus"), **SCHED_KW)
  with pytest.raises(ValueError, match=r"'warmup_step'.*'warmup_steps'"):
    bv_optax.make_schedule(dict(warmup_step=3), **SCHED_KW)
  with pytest.raises(ValueError, match="timescale"):  # Not a cosine key.
    bv_optax.make_schedule(dict(decay_type="cosine", timescale=3), **SCHED_KW)
  with pytest.raises(ValueError, match="as many mults"):
    bv_optax.make_schedule(dict(decay_type="stair", steps=[1], mults=[]),
                           **SCHED_KW)


# ----------------------------------------------------------------------------
# make(): masks, multipliers, freezing, clipping, errors.
# ----------------------------------------------------------------------------
def _params():
  return {
      "img": {"Dense_0": {"kernel": jnp.full((3, 2), 1.0),
                          "bias": jnp.full((2,), 2.0)}},
      "txt": {"kernel": jnp.full((2, 2), 3.0), "bias": jnp.full((2,), 4.0)},
      "head": {"kernel": jnp.full((2, 4), 5.0)},
  }


def _grads(params):
  rng = np.random.default_rng(0)
  return jax.tree.map(
      lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)


def _config(**kw):
  return ml_collections.ConfigDict({"optax_name": "identity", "lr": 0.1, **kw})


def test_sgd_with_lr_and_wd_mults_matches_hand_computation():
  params = _params()
  sched = dict(decay_type="linear", end=0.0)
  config = _config(
      wd=0.01, schedule=sched,
      lr_mults=[("head/.*", 10.0), ("txt/.*", 0.5)],
      wd_mults=[(".*/kernel$", 1.0), ("txt/bias", 3.0)])
  tx, fns = bv_optax.make(config, params, sched_kw=SCHED_KW)
  assert len(fns) == 1
  state = tx.init(params)
  lr_mult = {"img/Dense_0/kernel": 1, "img/Dense_0/bias": 1, "txt/kernel": 0.5,
             "txt/bias": 0.5, "head/kernel": 10}
  wd_mult = {"img/Dense_0/kernel": 1, "img/Dense_0/bias": 0, "txt/kernel": 1,
             "txt/bias": 3, "head/kernel": 1}
  for step in range(3):
    grads = _grads(params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    s = 1 - step / 100
    flat_u = utils.flatten_dict(updates)
    flat_g, flat_p = utils.flatten_dict(grads), utils.flatten_dict(params)
    for name, u in flat_u.items():
      want = (-0.1 * s * lr_mult[name] * flat_g[name]
              - 0.01 * s * wd_mult[name] * flat_p[name])
      np.testing.assert_allclose(u, want, rtol=1e-5, err_msg=name)
    params = optax.apply_updates(params, updates)


def test_frozen_params_do_not_move_and_have_no_state():
  params = _params()
  config = _config(
      optax_name="scale_by_adam", wd=0.1, grad_clip_norm=1.0,
      schedule=[("img/.*", None), (".*", dict(decay_type="cosine"))])
  tx, fns = bv_optax.make(config, params, sched_kw=SCHED_KW)
  assert len(fns) == 1
  state = tx.init(params)
  # No state leaf belongs to a frozen parameter: the state is exactly as big
  # as that of the same optimizer on the trainable subtree alone.
  paths = [jax.tree_util.keystr(p)
           for p, _ in jax.tree_util.tree_leaves_with_path(state)]
  assert paths and not any("'img'" in p for p in paths)
  trainable = {k: v for k, v in params.items() if k != "img"}
  config2 = _config(optax_name="scale_by_adam", wd=0.1, grad_clip_norm=1.0,
                    schedule=dict(decay_type="cosine"))
  tx2, _ = bv_optax.make(config2, trainable, sched_kw=SCHED_KW)
  assert utils.tree_bytes(state) == utils.tree_bytes(tx2.init(trainable))
  frozen_before = jax.tree.map(np.asarray, params["img"])
  update = jax.jit(tx.update)
  for _ in range(4):
    updates, state = update(_grads(params), state, params)
    for leaf in jax.tree.leaves(updates["img"]):
      assert not np.any(np.asarray(leaf))
    params = optax.apply_updates(params, updates)
  jax.tree.map(np.testing.assert_array_equal, params["img"], frozen_before)
  assert not np.allclose(params["txt"]["kernel"], 3.0)


def test_grad_clip_norm_counts_trainable_only():
  params = _params()
  config = _config(lr=1.0, grad_clip_norm=0.5,
                   schedule=[("head/.*", None), (".*", {})])
  tx, _ = bv_optax.make(config, params, sched_kw=SCHED_KW)
  grads = jax.tree.map(lambda p: jnp.ones_like(p), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  trainable = {k: updates[k] for k in ("img", "txt")}
  assert float(optax.global_norm(trainable)) == pytest.approx(0.5, rel=1e-5)
  assert float(optax.global_norm(updates["head"])) == 0.0


def test_uncovered_params_are_named():
  config = _config(schedule=[("img/.*", {}), ("head/.*", None)])
  with pytest.raises(ValueError, match=r"txt/kernel.*txt/bias|txt/bias.*txt/k"):
    bv_optax.make(config, _params(), sched_kw=SCHED_KW)


def test_unknown_and_lr_carrying_optax_names():
  with pytest.raises(ValueError, match=r"'scale_by_adamm'.*'scale_by_adam'"):
    bv_optax.make(_config(optax_name="scale_by_adamm"), _params(),
                  sched_kw=SCHED_KW)
  with pytest.raises(ValueError, match=r"big_vision.momentum_hp"):
    bv_optax.make(_config(optax_name="big_vision.momentum"), _params(),
                  sched_kw=SCHED_KW)
  with pytest.raises(ValueError, match=r"own learning rate.*'scale_by_adam'"):
    bv_optax.make(_config(optax_name="adam"), _params(), sched_kw=SCHED_KW)
  with pytest.raises(ValueError, match=r"config.lr"):
    bv_optax.make(_config(optax_name="scale_by_adam", optax=dict(lr=1.0)),
                  _params(), sched_kw=SCHED_KW)
  with pytest.raises(ValueError, match=r"decay_type"):
    bv_optax.make(_config(schedule=dict(decay_type="cos")), _params(),
                  sched_kw=SCHED_KW)


def test_string_dtypes_and_shape_dtype_structs():
  params = jax.eval_shape(_params)  # make() and init never need values.
  config = _config(optax_name="scale_by_adam",
                   optax=dict(mu_dtype="bfloat16"))
  tx, _ = bv_optax.make(config, params, sched_kw=SCHED_KW)
  state = jax.eval_shape(tx.init, params)
  mu = state[0].inner_state[0].mu
  assert {x.dtype for x in jax.tree.leaves(mu)} == {jnp.dtype(jnp.bfloat16)}


def test_momentum_hp_state_is_bf16_and_nesterov_math():
  params = {"w": jnp.zeros((4,))}
  tx = bv_optax.momentum_hp(momentum=0.5, nesterov=True)
  state = tx.init(params)
  assert jax.tree.leaves(state)[0].dtype == jnp.bfloat16
  g = {"w": jnp.array([1.0, 2.0, -1.0, 0.5])}
  u1, state = tx.update(g, state)
  u2, state = tx.update(g, state)
  # mu1 = g, mu2 = 1.5 g; nesterov update = 0.5 mu + g.
  np.testing.assert_allclose(u1["w"], 1.5 * g["w"], rtol=1e-2)
  np.testing.assert_allclose(u2["w"], 1.75 * g["w"], rtol=1e-2)


# ----------------------------------------------------------------------------
# Adafactor.
# ----------------------------------------------------------------------------
def test_adafactor_factored_estimate_hand_example():
  g = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)
  tx = bv_optax.scale_by_adafactor(min_dim_size_to_factor=2, momentum=None,
                                   eps=0.0)
  state = tx.init({"w": jnp.zeros_like(g)})
  u, state = tx.update({"w": jnp.asarray(g)}, state)
  # First step: beta2 = 0, so v_row / v_col are the plain means of g^2.
  g2 = g ** 2
  v_row, v_col = g2.mean(axis=1), g2.mean(axis=0)  # rows=2 (dim 0), cols=3.
  v_hat = np.outer(v_row, v_col) / v_row.mean()
  np.testing.assert_allclose(u["w"], g / np.sqrt(v_hat), rtol=1e-6)
  fs = state[0]
  np.testing.assert_allclose(fs.v_row["w"], v_row, rtol=1e-6)
  np.testing.assert_allclose(fs.v_col["w"], v_col, rtol=1e-6)
  assert fs.v["w"].shape == (1,)


def test_adafactor_factors_two_largest_dims_of_3d():
  # (16, 40, 64): rows = dim 1 (40), cols = dim 2 (64), dim 0 is a batch dim.
  rng = np.random.default_rng(1)
  g = rng.normal(size=(16, 40, 64)).astype(np.float32)
  small = rng.normal(size=(16, 8)).astype(np.float32)  # 8 < 32: not factored.
  tx = bv_optax.scale_by_adafactor(momentum=None, eps=0.0)
  grads = {"a": jnp.asarray(g), "b": jnp.asarray(small)}
  state = tx.init(grads)
  u, state = tx.update(grads, state)
  v_row, v_col = (g ** 2).mean(axis=2), (g ** 2).mean(axis=1)  # (16,40),(16,64)
  v_hat = ((v_row / v_row.mean(axis=1, keepdims=True))[:, :, None]
           * v_col[:, None, :])
  np.testing.assert_allclose(u["a"], g / np.sqrt(v_hat), rtol=1e-5)
  np.testing.assert_allclose(u["b"], np.sign(small), rtol=1e-5)
  assert state[0].v_row["a"].shape == (16, 40)
  assert state[0].v["b"].shape == (16, 8)


@pytest.mark.parametrize("count,want", [
    (0, 0.0), (1, 1 - 2 ** -0.8), (9, 1 - 10 ** -0.8), (10 ** 6, 0.999)])
def test_adafactor_beta2_closed_form(count, want):
  assert float(bv_optax.adafactor_beta2(count)) == pytest.approx(want, rel=1e-6)
  # Offset restarts the decay.
  assert float(bv_optax.adafactor_beta2(count + 5, decay_offset=5)) == (
      pytest.approx(want, rel=1e-6))


def test_adafactor_second_moment_recurrence():
  """Several steps of the full (unfactored) EMA vs a numpy recurrence."""
  rng = np.random.default_rng(2)
  gs = rng.normal(size=(6, 5)).astype(np.float32)
  tx = bv_optax.scale_by_adafactor(momentum=None, beta2_cap=0.5, eps=0.0)
  state = tx.init({"b": jnp.zeros((5,))})
  v = np.zeros(5)
  for t, g in enumerate(gs):
    u, state = tx.update({"b": jnp.asarray(g)}, state)
    beta2 = min(0.5, 1 - (t + 1) ** -0.8)
    v = beta2 * v + (1 - beta2) * g ** 2
    np.testing.assert_allclose(u["b"], g / np.sqrt(v), rtol=1e-5)


def test_adafactor_matches_optax_factored_rms_without_cap():
  rng = np.random.default_rng(3)
  shapes = {"k": (48, 40), "q": (40, 4, 36), "b": (40,)}
  ours = bv_optax.scale_by_adafactor(momentum=None, beta2_cap=1.0)
  ref = optax.scale_by_factored_rms(min_dim_size_to_factor=32)
  params = {k: jnp.zeros(s) for k, s in shapes.items()}
  s1, s2 = ours.init(params), ref.init(params)
  for _ in range(4):
    g = {k: jnp.asarray(rng.normal(size=s), jnp.float32)
         for k, s in shapes.items()}
    u1, s1 = ours.update(g, s1, params)
    u2, s2 = ref.update(g, s2, params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4),
                 u1, u2)


def test_adafactor_momentum_bf16_and_none():
  params = {"k": jnp.zeros((64, 48)), "b": jnp.zeros((48,))}
  with_m = bv_optax.scale_by_adafactor()
  state = with_m.init(params)
  ema = state[-1].ema
  assert {x.dtype for x in jax.tree.leaves(ema)} == {jnp.dtype(jnp.bfloat16)}
  g = {"k": jnp.ones((64, 48)), "b": jnp.ones((48,))}
  u, _ = with_m.update(g, state)
  # Not debiased: first update is (1 - 0.9) * (g / sqrt(g^2)) = 0.1.
  np.testing.assert_allclose(u["k"], 0.1, rtol=1e-5)
  no_m = bv_optax.scale_by_adafactor(momentum=None)
  state = no_m.init(params)
  assert not any(isinstance(s, optax.EmaState) for s in state)
  assert utils.tree_bytes(state) < 4 * (64 + 48 + 48 + 3) + 8


def _vit_g14_shapes(width=1664, depth=48, mlp=8192, heads=16, head_dim=104,
                    patch=14, tokens=256, classes=29_593):
  f32 = jnp.float32
  sd = lambda *s: jax.ShapeDtypeStruct(s, f32)  # noqa: E731
  ln = lambda: {"scale": sd(width), "bias": sd(width)}  # noqa: E731
  attn = {n: {"kernel": sd(width, heads, head_dim), "bias": sd(heads, head_dim)}
          for n in ("query", "key", "value")}
  attn["out"] = {"kernel": sd(heads, head_dim, width), "bias": sd(width)}
  block = {"LayerNorm_0": ln(), "LayerNorm_1": ln(),
           "MultiHeadDotProductAttention_0": attn,
           "MlpBlock_0": {
               "Dense_0": {"kernel": sd(width, mlp), "bias": sd(mlp)},
               "Dense_1": {"kernel": sd(mlp, width), "bias": sd(width)}}}
  tr = {f"encoderblock_{i}": block for i in range(depth)}
  tr["encoder_norm"] = ln()
  return {"embedding": {"kernel": sd(patch, patch, 3, width),
                        "bias": sd(width)},
          "pos_embedding": sd(1, tokens, width), "Transformer": tr,
          "head": {"kernel": sd(width, classes), "bias": sd(classes)}}


def test_vit_g14_adafactor_state_bytes_per_param():
  params = _vit_g14_shapes()
  n = utils.tree_count(params)
  assert 1.8e9 < n < 1.9e9  # ViT-G/14 is ~1.84B parameters.
  config = _config(optax_name="big_vision.scale_by_adafactor",
                   optax=dict(dtype_momentum="bfloat16"), wd=3e-4,
                   schedule=dict(decay_type="rsqrt", warmup_steps=10,
                                 cooldown_steps=10, timescale=10))
  tx, _ = bv_optax.make(config, params, sched_kw=SCHED_KW)
  bpp = bv_optax.opt_state_bytes_per_param(tx, params)
  print(f"ViT-G/14 ({n:,} params) Adafactor state: {bpp:.4f} bytes/param")
  assert 2.0 <= bpp <= 2.1
  adam, _ = bv_optax.make(_config(optax_name="scale_by_adam"), params,
                          sched_kw=SCHED_KW)
  assert bv_optax.opt_state_bytes_per_param(adam, params) == pytest.approx(
      8.0, rel=1e-6)
  sgd, _ = bv_optax.make(_config(optax_name="big_vision.momentum_hp"), params,
                         sched_kw=SCHED_KW)
  state = jax.eval_shape(sgd.init, params)
  big = [x for x in jax.tree.leaves(state) if x.ndim]
  assert {x.dtype for x in big} == {jnp.dtype(jnp.bfloat16)}


@pytest.mark.parametrize("name,kw,lr", [
    ("scale_by_adam", {}, 0.1),
    ("big_vision.momentum_hp", {}, 0.05),
    ("big_vision.momentum_hp", dict(nesterov=True, dtype="float32"), 0.05),
    ("big_vision.scale_by_adafactor", {}, 0.1),
    ("big_vision.scale_by_adafactor", dict(momentum=None,
                                           clipping_threshold=1.0), 0.1),
])
def test_quadratic_is_minimised(name, kw, lr):
  rng = np.random.default_rng(4)
  target = {"w": {"kernel": jnp.asarray(rng.normal(size=(40, 36)),
                                        jnp.float32)},
            "b": jnp.asarray(rng.normal(size=(36,)), jnp.float32)}
  params = jax.tree.map(jnp.zeros_like, target)
  loss = lambda p: sum(  # noqa: E731
      jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(p),
                                            jax.tree.leaves(target)))
  config = _config(optax_name=name, optax=kw, lr=lr,
                   schedule=dict(decay_type="cosine", warmup_steps=5))
  tx, _ = bv_optax.make(config, params, sched_kw=dict(total_steps=200))

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  loss0 = float(loss(params))
  for _ in range(200):
    params, state = step(params, state)
  assert float(loss(params)) < 1e-2 * loss0


def test_imports_without_tensorflow():
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  code = ("import sys; import big_vision.optax; "
          "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
  subprocess.run([sys.executable, "-c", code], check=True)
