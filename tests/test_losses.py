"""Losses against plain numpy, and the ring SigLIP loss against the full one."""
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from big_vision import losses


def _np_log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


def _np_log_softmax(x, axis):
  x = x - x.max(axis=axis, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def _rng_inputs(seed, b=6, c=5):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(b, c)) * 3
  labels = rng.dirichlet(np.ones(c), size=b)  # soft labels, rows sum to 1.
  return logits, labels


# ---------------------------------------------------------------------------
# Classification losses.
# ---------------------------------------------------------------------------
def test_softmax_xent_matches_numpy():
  logits, labels = _rng_inputs(0)
  want = -(labels * _np_log_softmax(logits, -1)).sum(-1)
  got = losses.softmax_xent(logits, labels, reduction=False)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(losses.softmax_xent(logits, labels), want.mean(),
                             rtol=1e-5)


def test_softmax_xent_one_hot_closed_form():
  # Uniform logits over C classes: loss of any one-hot target is log C.
  labels = np.eye(4)[[0, 3, 1]]
  got = losses.softmax_xent(np.zeros((3, 4)), labels, reduction=False)
  np.testing.assert_allclose(got, np.full(3, np.log(4)), rtol=1e-6)


def test_sigmoid_xent_matches_numpy():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(7, 4)) * 4
  labels = (rng.random((7, 4)) < 0.4).astype(np.float32)
  want = -(labels * _np_log_sigmoid(logits)
           + (1 - labels) * _np_log_sigmoid(-logits)).sum(-1)
  got = losses.sigmoid_xent(logits, labels, reduction=False)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(losses.sigmoid_xent(logits, labels), want.mean(),
                             rtol=1e-5)


def test_losses_compute_in_float32_from_bf16():
  logits, labels = _rng_inputs(2)
  lb = jnp.asarray(logits, jnp.bfloat16)
  for name in ("softmax_xent", "sigmoid_xent"):
    got = losses.get(name)(lb, labels, reduction=False)
    assert got.dtype == jnp.float32
    # Same as float32 on the bf16-rounded logits: no bf16 arithmetic inside.
    want = losses.get(name)(np.asarray(lb, np.float32), labels,
                            reduction=False)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_sigmoid_xent_stays_finite_for_large_logits():
  got = losses.sigmoid_xent(np.array([[200.0, -200.0]]),
                            np.array([[0.0, 1.0]]))
  np.testing.assert_allclose(got, 400.0, rtol=1e-6)


def test_get_unknown_name_suggests_and_lists():
  assert losses.get("softmax_xent") is losses.softmax_xent
  with pytest.raises(ValueError, match="softmax_xent") as e:
    losses.get("softmax_xnet")
  assert "Did you mean 'softmax_xent'" in str(e.value)
  assert "sigmoid_xent" in str(e.value)


# ---------------------------------------------------------------------------
# Contrastive losses.
# ---------------------------------------------------------------------------
def _embeddings(seed, b=8, d=4):
  rng = np.random.default_rng(seed)
  zimg = rng.normal(size=(b, d))
  ztxt = zimg + 0.5 * rng.normal(size=(b, d))
  zimg /= np.linalg.norm(zimg, axis=1, keepdims=True)
  ztxt /= np.linalg.norm(ztxt, axis=1, keepdims=True)
  return zimg.astype(np.float32), ztxt.astype(np.float32)


def _np_siglip_per_image(zimg, ztxt, t, b):
  n = zimg.shape[0]
  out = np.zeros(n)
  for i in range(n):  # Deliberately loop-by-loop, a second implementation.
    for j in range(n):
      label = 1.0 if i == j else -1.0
      out[i] -= _np_log_sigmoid(label * (t * zimg[i] @ ztxt[j] + b))
  return out


def test_sigmoid_contrastive_matches_numpy():
  zimg, ztxt = _embeddings(3)
  t, b = 10.0, -10.0
  want = _np_siglip_per_image(zimg, ztxt, t, b)
  got = losses.sigmoid_contrastive_loss(zimg, ztxt, t, b, reduction=False)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # 1/|B| normalisation: the mean over images of the per-image sums.
  np.testing.assert_allclose(
      losses.sigmoid_contrastive_loss(zimg, ztxt, t, b), want.sum() / 8,
      rtol=1e-5)


def test_softmax_contrastive_matches_numpy():
  zimg, ztxt = _embeddings(4)
  t = 7.0
  logits = t * zimg.astype(np.float64) @ ztxt.T
  i2t = -np.diagonal(_np_log_softmax(logits, axis=1))
  t2i = -np.diagonal(_np_log_softmax(logits, axis=0))
  want = 0.5 * (i2t + t2i)
  got = losses.softmax_contrastive_loss(zimg, ztxt, t, reduction=False)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(losses.softmax_contrastive_loss(zimg, ztxt, t),
                             0.5 * (i2t.mean() + t2i.mean()), rtol=1e-5)


def test_softmax_contrastive_closed_form_orthonormal():
  # zimg = ztxt = I (B = D): logits t*I, each row/col has one t and B-1 zeros.
  b, t = 5, 3.0
  want = np.log(np.exp(t) + b - 1) - t
  got = losses.softmax_contrastive_loss(np.eye(b), np.eye(b), t)
  np.testing.assert_allclose(got, want, rtol=1e-6)


# ---------------------------------------------------------------------------
# Ring (chunked) SigLIP across 8 virtual devices.
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mesh():
  devices = jax.devices()
  assert len(devices) == 8, "tests/conftest.py should give 8 CPU devices"
  return Mesh(np.asarray(devices), ("data",))


def _siglip_args(seed, b=32, d=16):
  zimg, ztxt = _embeddings(seed, b, d)
  return zimg, ztxt, np.float32(9.0), np.float32(-7.0)


def test_chunked_sigmoid_equals_full_matrix(mesh):
  zimg, ztxt, t, b = _siglip_args(5)
  full = losses.sigmoid_contrastive_loss(zimg, ztxt, t, b)
  sharded = jax.jit(
      lambda *a: losses.sigmoid_contrastive_loss_sharded(*a, mesh=mesh))
  batch = NamedSharding(mesh, P("data"))
  got = sharded(jax.device_put(zimg, batch), jax.device_put(ztxt, batch), t, b)
  np.testing.assert_allclose(got, full, rtol=1e-5)
  # And against the loop-by-loop numpy version.
  want = _np_siglip_per_image(zimg, ztxt, float(t), float(b)).mean()
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_chunked_sigmoid_gradients_equal_full_matrix(mesh):
  zimg, ztxt, t, b = _siglip_args(6)
  argnums = (0, 1, 2, 3)
  want = jax.grad(losses.sigmoid_contrastive_loss, argnums)(zimg, ztxt, t, b)
  got = jax.jit(jax.grad(
      lambda *a: losses.sigmoid_contrastive_loss_sharded(*a, mesh=mesh),
      argnums))(zimg, ztxt, t, b)
  for name, g, w in zip(("zimg", "ztxt", "t", "b"), got, want):
    assert g.shape == w.shape, name
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=name)


def test_chunked_sigmoid_over_two_mesh_axes():
  # Batch split over ("data", "fsdp") of a 4 x 2 mesh: the ring runs over the
  # 8 combined shards.
  mesh2 = Mesh(np.asarray(jax.devices()).reshape(4, 2), ("data", "fsdp"))
  zimg, ztxt, t, b = _siglip_args(7)
  want = losses.sigmoid_contrastive_loss(zimg, ztxt, t, b)
  got = jax.jit(lambda *a: losses.sigmoid_contrastive_loss_sharded(
      *a, mesh=mesh2, axis_name=("data", "fsdp")))(zimg, ztxt, t, b)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_chunked_sigmoid_replicated_over_other_axis():
  # Batch split over "data" (4 shards) only; "model" holds replicas.
  mesh2 = Mesh(np.asarray(jax.devices()).reshape(4, 2), ("data", "model"))
  zimg, ztxt, t, b = _siglip_args(8)
  want = losses.sigmoid_contrastive_loss(zimg, ztxt, t, b)
  got = jax.jit(lambda *a: losses.sigmoid_contrastive_loss_sharded(
      *a, mesh=mesh2, axis_name="data"))(zimg, ztxt, t, b)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def _count_ppermutes(jaxpr, times=1):
  """ppermutes executed by a jaxpr, scan bodies counted `length` times."""
  count = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "ppermute":
      count += times
    inner_times = times * eqn.params.get("length", 1)
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (list, tuple)) else [v]):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          count += _count_ppermutes(sub, inner_times)
  return count


def test_chunked_sigmoid_never_builds_global_matrix(mesh):
  # Global batch 64 over 8 devices: blocks are 8 x 8, and neither the 64 x 64
  # matrix nor an 8 x 64 row-slab should appear in the per-device program.
  zimg, ztxt, t, b = _siglip_args(9, b=64, d=16)
  loss = lambda *a: losses.sigmoid_contrastive_loss_sharded(*a, mesh=mesh)
  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  hlo = fn.lower(zimg, ztxt, t, b).as_text()
  assert "tensor<8x8xf32>" in hlo
  assert "tensor<64x64xf32>" not in hlo and "tensor<8x64xf32>" not in hlo
  # Exactly n - 1 = 7 hops in the forward pass.
  assert _count_ppermutes(jax.make_jaxpr(loss)(zimg, ztxt, t, b).jaxpr) == 7


@pytest.mark.parametrize("n", [1, 2, 3])
def test_chunked_sigmoid_small_rings(n):
  # n = 1 (no hop), 2 (no scan iteration) and 3 (one) are the edge cases.
  mesh_n = Mesh(np.asarray(jax.devices()[:n]), ("data",))
  zimg, ztxt, t, b = _siglip_args(10, b=6 * n, d=4)
  want = losses.sigmoid_contrastive_loss(zimg, ztxt, t, b)
  got = losses.sigmoid_contrastive_loss_sharded(zimg, ztxt, t, b, mesh=mesh_n)
  np.testing.assert_allclose(got, want, rtol=1e-5)
