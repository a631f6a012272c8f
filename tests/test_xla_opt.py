"""The suite's fast-compile settings (tests/xla_opt.py) change numbers only
at float rounding: the same HLO, machine code that may order a reduction's
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


def test_an_unknown_flag_is_told_apart_from_the_emitter_flag():
  """What decides, on a jaxlib other than the measured one, whether the
  test processes get the emitter flag (XLA refuses to start on a flag it
  does not know)."""
  assert xla_opt.xla_accepts(xla_opt.EMITTER_FLAG)
  assert not xla_opt.xla_accepts("--xla_cpu_no_such_option_for_this_test=1")


def test_test_processes_compile_fast_and_trainers_inherit_it():
  flags = os.environ["XLA_FLAGS"].split()
  assert set(xla_opt.FAST_COMPILE_FLAGS) <= set(flags)
  env = xla_opt.optimized_env()
  assert env["XLA_FLAGS"].split() == [
      f for f in flags if f not in xla_opt.FAST_COMPILE_FLAGS]
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
  # One plain jit (for calls nested in another trace), one optimised.
  assert options == [None, xla_opt.DEFAULT_OPTIONS]
  assert xla_opt.DEFAULT_OPTIONS["xla_backend_optimization_level"] == 3
  for a, b in zip(fast, optimised):
    np.testing.assert_allclose(np.asarray(a, np.float32),
                               np.asarray(b, np.float32), rtol=rtol, atol=rtol)


def test_jits_made_inside_nest_in_each_other():
  """jax takes compiler options on top-level programs only: a library's jit
  created inside the context (a lazily imported module's decorator) and
  called inside the train step's trace must run as a plain nested jit."""
  x = jnp.arange(4, dtype=jnp.float32)
  with xla_opt.optimized():
    inner = jax.jit(lambda v: v * 2.0)
    outer = jax.jit(lambda v: inner(v) + 1.0)

    @jax.jit(static_argnames="k")
    def scaled(v, k):
      return inner(v) * k

    np.testing.assert_array_equal(outer(x), 2 * np.arange(4) + 1)
    np.testing.assert_array_equal(inner(x), 2 * np.arange(4))
    np.testing.assert_array_equal(scaled(x, k=3), 6 * np.arange(4))
    # The AOT path (train.py compiles its step ahead) is the optimised jit.
    np.testing.assert_array_equal(outer.lower(x).compile()(x),
                                  2 * np.arange(4) + 1)
