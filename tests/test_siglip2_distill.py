"""SigLIP 2's late-training self-distillation (big_vision/self_distill.py):
each piece against numpy, the teacher never differentiated, its EMA in
closed form, the switch at the start step, and a resume that restores the
teacher bit for bit. Tiny NaFlex two-tower models, 8 CPU devices.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from big_vision import checkpoint
from big_vision import objectives
from big_vision import program
from big_vision import self_distill
from big_vision import sharding
from big_vision import utils
from big_vision.models import two_towers

P, L, C = 4, 16, 3         # patch, NaFlex sequence length, channels.
D = P * P * C + 3
GRIDS = ((4, 4), (2, 8), (3, 5), (1, 3), (2, 2), (4, 3), (5, 3), (1, 16))
HEADS = dict(dim=16, patch_dim=8, hidden=32, bottleneck=8)
SMALL = dict(width=32, depth=1, mlp_dim=64, num_heads=2)
BATCH, STEPS, START = 8, 6, 0.5   # -> terms on from update 3 (0-based).
WEIGHTS = dict(sigmoid_contrastive=1.0, local_to_global=0.7,
               masked_prediction=0.3)
SELF_DISTILL = dict(start_fraction=START, ema_decay=0.6, local_views=2,
                    local_grid=2, center_momentum=0.5)


def naflex_images(rng, b):
  """NaFlex sequences of random pixels on the grids of GRIDS."""
  out = np.zeros((b, L, D), np.float32)
  for i in range(b):
    gh, gw = GRIDS[i % len(GRIDS)]
    n = gh * gw
    out[i, :n, :-3] = rng.uniform(-1, 1, (n, D - 3))
    idx = np.arange(n)
    out[i, :n, -3], out[i, :n, -2], out[i, :n, -1] = idx // gw, idx % gw, 1
  return out


def _batch(seed, b=BATCH):
  rng = np.random.default_rng(seed)
  return {"image": naflex_images(rng, b),
          "labels": rng.integers(2, 32, (b, 6)).astype(np.int32)}


def _model():
  return two_towers.Model(
      image_model="naflex_vit",
      image=dict(SMALL, patch_size=P, posemb_grid=4),
      text=dict(SMALL, vocab_size=32), out_dim=16, bias_init=-10.0,
      distill_heads=HEADS)


def _config(**overrides):
  config = ml_collections.ConfigDict(dict(
      seed=0, total_steps=STEPS, loss="combined", objectives=WEIGHTS,
      self_distill=SELF_DISTILL, chunked_loss=False,
      input=dict(data=dict(name="unused"), batch_size=BATCH),
      model_name="two_towers",
      model=dict(image_model="naflex_vit",
                 image=dict(SMALL, patch_size=P, posemb_grid=4),
                 text=dict(SMALL, vocab_size=32), out_dim=16,
                 bias_init=-10.0, distill_heads=HEADS),
      optax_name="scale_by_adam", lr=0.01, wd=0.0,
      schedule=dict(decay_type="constant"),
      mesh=[("fsdp", 2)],
      sharding_strategy=[(".*", "fsdp(axis='fsdp', min_size_to_shard_mb=0)")]))
  for k, v in overrides.items():
    config[k] = v
  return config


def _np_xent(s, t, center, ts, tt, w):
  """numpy DINO cross-entropy: weighted mean of H(p_t, p_s)."""
  s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
  t = (t - center) / tt
  p_t = np.exp(t - t.max(-1, keepdims=True))
  p_t /= p_t.sum(-1, keepdims=True)
  z = s / ts
  log_p_s = z - z.max(-1, keepdims=True)
  log_p_s -= np.log(np.exp(log_p_s).sum(-1, keepdims=True))
  xent = -(p_t * log_p_s).sum(-1)
  w = np.broadcast_to(np.asarray(w, np.float64), xent.shape)
  return (w * xent).sum() / max(w.sum(), 1.0)


# ----------------------------------------------------------------------------
# The pieces, against numpy.
# ----------------------------------------------------------------------------
def test_distill_xent_matches_numpy():
  rng = np.random.default_rng(0)
  s = rng.normal(size=(3, 4, 7)).astype(np.float32)
  t = rng.normal(size=(3, 1, 7)).astype(np.float32)  # Broadcast over views.
  c = rng.normal(size=(7,)).astype(np.float32)
  w = (rng.uniform(size=(3, 4)) > 0.4).astype(np.float32)
  got = self_distill.distill_xent(s, t, c, student_temp=0.1,
                                  teacher_temp=0.04, weights=w)
  np.testing.assert_allclose(got, _np_xent(s, t, c, 0.1, 0.04, w), rtol=1e-5)
  # The centre matters (a teacher logit shift that is not uniform).
  other = self_distill.distill_xent(s, t, 0 * c, student_temp=0.1,
                                    teacher_temp=0.04, weights=w)
  assert abs(float(other) - float(got)) > 1e-3


def _np_crop(img_hw, box, n):
  """numpy bilinear resize (half-pixel centres, clamped) of a box."""
  y0, x0, h, w = box
  hh, ww, _ = img_hw.shape
  out = np.zeros((n, n, img_hw.shape[-1]))
  for u in range(n):
    for v in range(n):
      sy = np.clip(y0 + (u + 0.5) * h / n - 0.5, 0, hh - 1)
      sx = np.clip(x0 + (v + 0.5) * w / n - 0.5, 0, ww - 1)
      ya, xa = int(np.floor(sy)), int(np.floor(sx))
      yb, xb = min(ya + 1, hh - 1), min(xa + 1, ww - 1)
      fy, fx = sy - ya, sx - xa
      out[u, v] = ((1 - fy) * ((1 - fx) * img_hw[ya, xa] + fx * img_hw[ya, xb])
                   + fy * ((1 - fx) * img_hw[yb, xa] + fx * img_hw[yb, xb]))
  return out


def _unpatchify(seq, gh, gw):
  x = seq[:gh * gw, :-3].reshape(gh, gw, P, P, C).transpose(0, 2, 1, 3, 4)
  return x.reshape(gh * P, gw * P, C)


def test_local_views_are_bilinear_crops_of_each_image():
  rng = np.random.default_rng(1)
  image = naflex_images(rng, 4)
  grid_h = np.array([g[0] for g in GRIDS[:4]]) * P
  grid_w = np.array([g[1] for g in GRIDS[:4]]) * P
  boxes = jax.jit(self_distill.view_boxes, static_argnums=(3, 4))(
      jax.random.PRNGKey(0), jnp.asarray(grid_h), jnp.asarray(grid_w), 3,
      (0.05, 0.4))
  boxes = np.asarray(boxes)
  area = boxes[..., 2] * boxes[..., 3] / (grid_h * grid_w)[:, None]
  assert np.all(boxes[..., :2] >= 0) and np.all(area <= 0.4 + 1e-5)
  assert np.all(boxes[..., 0] + boxes[..., 2] <= grid_h[:, None] + 1e-4)
  assert np.all(boxes[..., 1] + boxes[..., 3] <= grid_w[:, None] + 1e-4)
  n = 2
  crop = jax.jit(self_distill.crop_views, static_argnums=(2, 3, 4))
  views = np.asarray(crop(jnp.asarray(image), jnp.asarray(boxes), n, P, C))
  assert views.shape == (4 * 3, n * n, D)
  np.testing.assert_array_equal(views[0, :, -3:], [[0, 0, 1], [0, 1, 1],
                                                   [1, 0, 1], [1, 1, 1]])
  for i in range(4):
    img = _unpatchify(image[i], *GRIDS[i])
    for v in range(3):
      want = _np_crop(img, boxes[i, v], n * P)
      got = _unpatchify(views[i * 3 + v], n, n)
      np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"{i}, {v}")
  # The whole image at its own grid comes back unchanged.
  whole = np.array([[[0, 0, 4 * P, 4 * P]]], np.float32)
  same = crop(jnp.asarray(image[:1]), jnp.asarray(whole), 4, P, C)
  np.testing.assert_array_equal(np.asarray(same)[0], image[0])


def test_patch_mask_masks_exactly_the_ratio_of_real_patches():
  image = naflex_images(np.random.default_rng(2), 8)
  valid = jnp.asarray(image[..., -1] > 0.5)
  for ratio in (0.5, 0.25):
    mask = np.asarray(self_distill.patch_mask(jax.random.PRNGKey(3), valid,
                                              ratio))
    n_valid = np.asarray(valid).sum(1)
    np.testing.assert_array_equal(mask.sum(1),
                                  np.floor(ratio * n_valid + 0.5))
    assert not np.any(mask & ~np.asarray(valid))  # Padding never masked.
  # The draw depends on the rng (a fixed pattern would also count right).
  a, b = (np.asarray(self_distill.patch_mask(jax.random.PRNGKey(k), valid,
                                             0.5)) for k in (4, 5))
  assert np.any(a != b)


# ----------------------------------------------------------------------------
# The terms of the objective.
# ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup():
  model = _model()
  batch = jax.tree.map(jnp.asarray, _batch(0, 4))
  params = jax.jit(model.init)(jax.random.PRNGKey(0), batch["image"][:1],
                               batch["labels"][:1])["params"]
  obj = objectives.make(_config(), model)
  # A teacher that differs from the student, and non-zero centres.
  teacher = obj.extra.init(jax.tree.map(lambda x: x * 1.1, params))
  teacher["center"] = {k: 0.1 * jnp.arange(v.shape[0], dtype=jnp.float32)
                       for k, v in teacher["center"].items()}
  return model, obj, params, teacher, batch


@pytest.fixture(scope="module")
def terms(setup):
  """One jitted call: the loss, its terms, its gradients wrt the student
  and the teacher, and the model outputs a numpy reference needs."""
  model, obj, params, teacher, batch = setup
  rng = jax.random.PRNGKey(5)

  def loss(p, t):
    return obj.loss(p, batch, rng, objectives.StepContext(
        t, jnp.int32(STEPS - 1), STEPS))

  def reference():
    # The documented draws: loss rng -> fold_in 1 -> (boxes, mask, ...).
    r_box, r_mask, _, _ = jax.random.split(jax.random.fold_in(rng, 1), 4)
    apply = lambda p, x, **kw: model.apply({"params": p}, x,
                                           method="distill_logits", **kw)
    t_glob, t_patch, valid = apply(teacher["params"], batch["image"])
    _, gh, gw = self_distill.image_grid(batch["image"])
    boxes = self_distill.view_boxes(r_box, gh * P, gw * P, 2,
                                    self_distill.Settings.local_scale)
    views = self_distill.crop_views(batch["image"], boxes, 2, P, C)
    s_glob, _, _ = apply(params, views)
    mask = self_distill.patch_mask(r_mask, valid, 0.5)
    _, s_patch, _ = apply(params, batch["image"], patch_mask=mask)
    return dict(t_glob=t_glob, t_patch=t_patch, valid=valid, s_glob=s_glob,
                s_patch=s_patch, mask=mask)

  @jax.jit
  def everything():
    (total, aux), grads = jax.value_and_grad(loss, argnums=(0, 1),
                                             has_aux=True)(params, teacher)
    return total, aux, grads, reference()
  total, aux, grads, ref = jax.device_get(everything())
  return dict(total=total, aux=aux, grads=grads, ref=ref,
              center=jax.device_get(teacher["center"]))


def test_terms_match_numpy_on_the_models_outputs(terms):
  aux, ref, center = terms["aux"], terms["ref"], terms["center"]
  want = _np_xent(ref["s_glob"].reshape(4, 2, -1), ref["t_glob"][:, None],
                  center["global"], 0.1, 0.04, 1.0)
  np.testing.assert_allclose(aux["loss/local_to_global"], want, rtol=1e-4)
  want = _np_xent(ref["s_patch"], ref["t_patch"], center["patch"], 0.1, 0.04,
                  ref["mask"].astype(np.float32))
  np.testing.assert_allclose(aux["loss/masked_prediction"], want, rtol=1e-4)
  np.testing.assert_allclose(
      terms["total"], sum(w * aux[f"loss/{k}"] for k, w in WEIGHTS.items()),
      rtol=1e-6)
  # The centre statistics: the batch means of the teacher's logits.
  stats = aux[objectives.STATE_STATS]
  np.testing.assert_allclose(stats["global"], ref["t_glob"].mean(0),
                             rtol=1e-5, atol=1e-6)
  w = ref["valid"].astype(np.float32)[..., None]
  np.testing.assert_allclose(stats["patch"], (ref["t_patch"] * w).sum(
      (0, 1)) / w.sum(), rtol=1e-5, atol=1e-6)


def test_no_gradient_reaches_the_teacher(terms):
  g_student, g_teacher = terms["grads"]
  assert all(np.abs(x).max() == 0 for x in jax.tree.leaves(g_teacher))
  # ...while the student's tower and both heads do learn from the terms.
  for part in ("global_head", "patch_head", "mask_token"):
    assert max(np.abs(x).max() for x in jax.tree.leaves(
        g_student["distill_heads"][part])) > 0, part


# ----------------------------------------------------------------------------
# In the trainer's step: the switch, the EMA, the resume.
# ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """STEPS updates of the program train.py builds; per update its info, and
  the student / teacher after it. Checkpoint (and restore) after update 4."""
  config = _config()
  specs = {k: (v.shape, v.dtype) for k, v in _batch(0).items()}
  # fsdp over 2 of the 8 devices: the teacher's sharding is exercised, and
  # the step compiles faster than over 8.
  mesh = sharding.make_mesh(config.mesh, devices=jax.devices()[:2])
  prog = program.build(config, mesh=mesh, data=(1000, specs))
  state = prog.init_state()
  step = prog.update_fn
  shd = sharding.data_sharding(prog.mesh)
  part = lambda s: {k: s["params"][k] for k in self_distill.TEACHER_PARTS}
  students, teachers, infos = [part(jax.device_get(state))], [], []
  teachers.append(jax.device_get(state["teacher"]))
  ckpt = checkpoint.Checkpointer(str(tmp_path_factory.mktemp("sd")))
  restored = None
  for i in range(STEPS):
    state, info = step(state, jax.device_put(_batch(i), shd))
    infos.append(jax.device_get(info))
    students.append(part(jax.device_get(state)))
    teachers.append(jax.device_get(state["teacher"]))
    if i + 1 == 4:
      ckpt.save(4, state)
      ckpt.wait()
      restored = ckpt.restore(4, prog.state_shape, prog.shardings)
      saved = jax.device_get(state)
  ckpt.close()
  restored_host = jax.device_get(restored)
  # From the restored state (the step donates it), the same next update.
  again, _ = step(restored, jax.device_put(_batch(4), shd))
  return dict(prog=prog, students=students, teachers=teachers, infos=infos,
              restored=restored_host, saved=saved,
              again=jax.device_get(again["teacher"]))


def test_terms_are_exactly_zero_before_the_start_and_weighted_after(run):
  start = self_distill.Settings(start_fraction=START).start_step(STEPS)
  assert start == 3
  for t, info in enumerate(run["infos"]):
    terms = {k: float(info[f"loss/{k}"]) for k in WEIGHTS}
    total = float(info["training_loss"])
    if t < start:
      assert terms["local_to_global"] == 0.0
      assert terms["masked_prediction"] == 0.0
      assert total == np.float32(terms["sigmoid_contrastive"])
    else:
      assert terms["local_to_global"] > 0 and terms["masked_prediction"] > 0
      np.testing.assert_allclose(
          total, sum(w * terms[k] for k, w in WEIGHTS.items()), rtol=1e-6)
  assert "extra_state_stats" not in run["infos"][-1]


def test_teacher_is_the_student_then_its_ema_in_closed_form(run):
  start, d = 3, SELF_DISTILL["ema_decay"]
  students = [utils.flatten_dict(s) for s in run["students"]]
  teachers = [utils.flatten_dict(t["params"]) for t in run["teachers"]]
  assert set(teachers[0]) == set(students[0])
  for k in range(start + 1):  # Up to the start: a copy of the student.
    for name, value in teachers[k].items():
      np.testing.assert_array_equal(value, students[k][name], err_msg=name)
  for k in range(start + 1, STEPS + 1):  # Then the EMA, in closed form.
    j = k - start
    for name, value in teachers[k].items():
      want = d ** j * students[start][name].astype(np.float64) + sum(
          (1 - d) * d ** (j - i) * students[start + i][name]
          for i in range(1, j + 1))
      np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-6,
                                 err_msg=name)
    moved = max(np.abs(teachers[k][n] - students[k][n]).max()
                for n in teachers[k])
    assert moved > 1e-5  # It lags the student.
  # The centres: zero until the start, then the running mean moves them.
  assert not np.any(run["teachers"][start]["center"]["global"])
  assert np.any(run["teachers"][STEPS]["center"]["global"])


def test_resume_restores_the_teacher_bit_identically(run):
  prog = run["prog"]
  saved = utils.flatten_dict(run["saved"]["teacher"])
  restored = utils.flatten_dict(run["restored"]["teacher"])
  assert saved.keys() == restored.keys()
  for name in saved:
    np.testing.assert_array_equal(restored[name], saved[name], err_msg=name)
  # The next update from the restored state equals the uninterrupted one.
  again = utils.flatten_dict(run["again"])
  for name, value in utils.flatten_dict(run["teachers"][5]).items():
    np.testing.assert_array_equal(again[name], value, err_msg=name)
  # Sharded like the params it mirrors (fsdp here, not replicated).
  shd = prog.shardings
  for part in self_distill.TEACHER_PARTS:
    assert jax.tree.leaves(shd["teacher"]["params"][part]) == jax.tree.leaves(
        shd["params"][part])
  assert any(not s.is_fully_replicated for s in
             jax.tree.leaves(shd["teacher"]["params"]))


# ----------------------------------------------------------------------------
# Config mistakes: one ConfigError naming the key, before any compute.
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, match", [
    (dict(self_distill=dict(SELF_DISTILL, mask_ratoi=0.5)),
     r"config.self_distill.*mask_ratoi.*mask_ratio"),
    (dict(self_distill=dict(mask_ratio=1.5)),
     r"config.self_distill.mask_ratio.*\(0, 1\)"),
    (dict(self_distill=dict(local_scale=(0.5, 0.1))),
     r"config.self_distill.local_scale"),
    (dict(objectives=dict(sigmoid_contrastive=1.0)),
     r"config.self_distill.*local_to_global"),
    (dict(loss="sigmoid_contrastive"), r"config.self_distill.*combined"),
    (dict(objectives=dict(local_to_globl=1.0)),
     r"local_to_globl.*local_to_global"),
])
def test_bad_settings_are_config_errors(overrides, match):
  config = _config(**overrides)
  with pytest.raises(utils.ConfigError, match=match):
    program.build_objective(config, sharding.make_mesh(None))


def test_terms_without_heads_name_the_model_key():
  config = _config()
  del config.model["distill_heads"]
  with pytest.raises(utils.ConfigError, match="config.model.distill_heads"):
    program.build_objective(config, sharding.make_mesh(None))
  config = _config()
  config.model.image_model = "vit"
  config.model.image = dict(SMALL, patch_size=P)
  with pytest.raises(utils.ConfigError, match="naflex_vit"):
    program.build_objective(config, sharding.make_mesh(None))


# ----------------------------------------------------------------------------
# Weight decay on the idle heads (they get no gradient before the switch).
# ----------------------------------------------------------------------------
def test_head_kernel_names_are_the_models():
  params = jax.eval_shape(
      _model().init, jax.random.PRNGKey(0), jnp.zeros((1, L, D)),
      jnp.zeros((1, 6), jnp.int32))["params"]
  kernels = {n for n in utils.flatten_dict(params)
             if n.startswith("distill_heads/") and n.endswith("/kernel")}
  assert kernels == set(self_distill.HEAD_KERNELS)


def test_decayed_heads_are_refused_and_the_shipped_configs_exclude_them():
  default_decay = _config(wd=1e-4)
  with pytest.raises(utils.ConfigError,
                     match=r"config.wd_mults.*distill_heads/global_head"):
    program.build_objective(default_decay, sharding.make_mesh(None))
  excluded = _config(wd=1e-4, wd_mults=(("distill_heads/.*", 0.0),
                                        (".*/kernel$", 1.0)))
  program.build_objective(excluded, sharding.make_mesh(None))
  # The shipped recipes: decay on, heads excluded (this check passes).
  # pylint: disable=g-import-not-at-top
  from big_vision.configs.proj.siglip2 import siglip2_b16
  from big_vision.configs.proj.siglip2 import siglip2_demo
  # pylint: enable=g-import-not-at-top
  for mod in (siglip2_b16, siglip2_demo):
    config = mod.get_config()
    assert config.wd > 0
    self_distill._check_heads_not_decayed(config)  # pylint: disable=protected-access
    rules = config.wd_mults
    assert utils.match_rules(rules, "img/Transformer/encoderblock_0/"
                             "MlpBlock_0/Dense_0/kernel") == 1.0
