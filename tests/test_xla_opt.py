"""The suite's fast-compile level (tests/xla_opt.py) changes numbers only at
float rounding: the same HLO, machine code that may order a reduction's
additions differently (measured: 1 ulp on 6 of 48 float32 column sums)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import xla_opt  # tests/ is on sys.path (rootdir conftest).


def _program(x, w):
  h = jnp.tanh(x @ w) * jnp.exp(-0.5 * x[:, :1] ** 2) + jnp.log1p(x * x)
  return h.sum(axis=0), jnp.max(h, axis=1), jax.nn.softmax(h, axis=-1)


def test_test_processes_compile_fast_and_trainers_inherit_it():
  flags = os.environ["XLA_FLAGS"].split()
  assert xla_opt.FAST_COMPILE_FLAG in flags
  env = xla_opt.optimized_env()
  assert env["XLA_FLAGS"].split() == [
      f for f in flags if f != xla_opt.FAST_COMPILE_FLAG]
  assert "--xla_force_host_platform_device_count=8" in env["XLA_FLAGS"]


@pytest.mark.parametrize("dtype,rtol", [(jnp.float32, 1e-6),
                                        (jnp.bfloat16, 2 ** -7)])
def test_fast_and_optimised_code_agree_to_rounding(dtype, rtol, monkeypatch):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(64, 48)), dtype)
  w = jnp.asarray(rng.normal(size=(48, 48)) / 7, dtype)
  fast = jax.jit(_program)(x, w)
  real_jit = jax.jit
  options = []

  def spy(*args, **kw):
    options.append(kw.get("compiler_options"))
    return real_jit(*args, **kw)

  monkeypatch.setattr(jax, "jit", spy)
  with xla_opt.optimized():
    optimised = jax.jit(_program)(x, w)
  assert jax.jit is spy
  assert options == [{"xla_backend_optimization_level": 3}]
  for a, b in zip(fast, optimised):
    np.testing.assert_allclose(np.asarray(a, np.float32),
                               np.asarray(b, np.float32), rtol=rtol, atol=rtol)
