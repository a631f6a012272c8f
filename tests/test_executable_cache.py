"""The executable cache: a stored program runs without being traced, gives
the same numbers, and its key changes with everything it was built from."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vision import executable_cache
from big_vision import metric_writer
from big_vision import train
from test_train import TracesAndCompiles
from test_train import flat_params
from test_train import tiny_digits


@pytest.fixture
def cache_dir(own_compile_cache):
  """The executable cache beside the test's own compilation cache."""
  return os.path.join(own_compile_cache, executable_cache.SUBDIR)


def _key(*parts):
  return executable_cache.key(parts)


def _traced_fn():
  traces = []

  def f(x, y):
    traces.append(1)  # Runs once per trace, never when the program runs.
    return {"sum": jnp.tanh(x @ y).sum(), "y": y * 2}
  return jax.jit(f, donate_argnums=(1,)), traces


def test_second_load_runs_without_tracing_and_matches(cache_dir):
  x = jnp.arange(12.0).reshape(3, 4) / 10
  fn, traces = _traced_fn()
  first = executable_cache.load_or_compile(
      "f", _key("parts"), lambda: fn.lower(x, jnp.ones((4, 2))))
  assert len(traces) == 1 and len(os.listdir(cache_dir)) == 1
  fn2, traces2 = _traced_fn()
  second = executable_cache.load_or_compile(
      "f", _key("parts"), lambda: fn2.lower(x, jnp.ones((4, 2))))
  assert not traces2  # Loaded whole: not traced, not lowered.
  y1, y2 = jnp.full((4, 2), 0.5), jnp.full((4, 2), 0.5)
  a, b = first(x, y1), second(x, y2)
  assert float(a["sum"]) == float(b["sum"]) == float(
      jnp.tanh(x @ jnp.full((4, 2), 0.5)).sum())
  np.testing.assert_array_equal(a["y"], b["y"])
  assert y2.is_deleted()  # The loaded program still donates its argument.


def test_a_program_read_from_jaxs_cache_is_not_stored(cache_dir):
  # Serialized again, an executable jax read from its own cache can lack
  # kernels (XLA:CPU: it fails when run), so only real compiles are stored.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  x = jnp.full((4, 4), 0.25)
  fn, _ = _traced_fn()
  executable_cache.load_or_compile("f", _key("a"), lambda: fn.lower(x, x))
  assert len(os.listdir(cache_dir)) == 1  # Compiled: stored.
  fn2, traces2 = _traced_fn()  # The same program, under another key.
  out = executable_cache.load_or_compile("f", _key("b"),
                                         lambda: fn2.lower(x, x))
  assert len(traces2) == 1 and len(os.listdir(cache_dir)) == 1
  assert float(out(x, jnp.full((4, 4), 0.25))["sum"]) == pytest.approx(
      16 * np.tanh(0.25))


def test_key_changes_with_parts_code_and_machine(cache_dir, tmp_path,
                                                 monkeypatch):
  del cache_dir
  base = executable_cache.key(("config", 1))
  assert base == executable_cache.key(("config", 1))
  assert base != executable_cache.key(("config", 2))
  assert executable_cache.entry_path("step", base) != (
      executable_cache.entry_path("init", base))

  # big_vision's own source, by content.
  src = tmp_path / "src"
  src.mkdir()
  (src / "m.py").write_text("A = 1\n")
  monkeypatch.setattr(executable_cache, "_PACKAGE_DIR", str(src))
  before = _key()
  (src / "m.py").write_text("A = 2\n")
  assert _key() != before

  # An installed package, by size and modification time.
  site = tmp_path / "site"
  (site / "fakepkg").mkdir(parents=True)
  (site / "fakepkg" / "__init__.py").write_text("B = 1\n")
  monkeypatch.syspath_prepend(str(site))
  monkeypatch.setattr(executable_cache, "PACKAGES", ("fakepkg",))
  before = _key()
  os.utime(site / "fakepkg" / "__init__.py", ns=(1, 10**18))
  assert _key() != before

  # The environment XLA reads, and jax's configuration.
  before = _key()
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=true")
  after_env = _key()
  assert after_env != before
  monkeypatch.setenv("UNRELATED_VARIABLE", "x")
  assert _key() == after_env
  with jax.default_matmul_precision("highest"):
    assert _key() != after_env


def test_unreadable_entry_is_compiled_again_and_rewritten(cache_dir):
  x = jnp.ones((2, 2))
  fn, traces = _traced_fn()
  path = executable_cache.entry_path("f", _key())
  os.makedirs(cache_dir)
  with open(path, "wb") as f:
    f.write(b"not an executable")
  out = executable_cache.load_or_compile("f", _key(), lambda: fn.lower(x, x))
  assert len(traces) == 1
  assert float(out(x, jnp.ones((2, 2)))["sum"]) == pytest.approx(
      4 * np.tanh(2.0))
  fn2, traces2 = _traced_fn()
  executable_cache.load_or_compile("f", _key(), lambda: fn2.lower(x, x))
  assert not traces2  # The rewritten entry loads.
  assert not [f for f in os.listdir(cache_dir) if ".tmp" in f]


def test_off_with_the_compilation_cache(cache_dir):
  jax.config.update("jax_compilation_cache_dir", None)
  assert executable_cache.entry_path("f", _key()) is None
  fn, traces = _traced_fn()
  x = jnp.ones((2, 2))
  executable_cache.load_or_compile("f", _key(), lambda: fn.lower(x, x))
  executable_cache.load_or_compile("f", _key(), lambda: fn.lower(x, x))
  assert len(traces) == 1 and not os.path.exists(cache_dir)  # jit's own cache


def _train_counting(config, workdir):
  traces = TracesAndCompiles(funs=("update", "init"))
  jax.monitoring.register_event_duration_secs_listener(traces)
  try:
    final = train.train(config, workdir)
  finally:
    jax.monitoring.unregister_event_duration_listener(traces)
  return final, sorted(traces.events)


def test_a_second_launch_traces_neither_step_nor_init(cache_dir, tmp_path):
  first, traced = _train_counting(tiny_digits(total_steps=3),
                                  str(tmp_path / "a"))
  assert [(k, f) for k, f, _ in traced] == [
      ("backend_compile_duration", "init"),
      ("backend_compile_duration", "update"),
      ("jaxpr_trace_duration", "init"),
      ("jaxpr_trace_duration", "update")], traced
  assert sorted(f.split("-")[0] for f in os.listdir(cache_dir)) == [
      "init", "train_step"]
  second, traced = _train_counting(tiny_digits(total_steps=3),
                                   str(tmp_path / "b"))
  assert not traced, traced
  assert first == second
  a, b = flat_params(tmp_path / "a"), flat_params(tmp_path / "b")
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  # Another config is another program.
  _, traced = _train_counting(tiny_digits(total_steps=3, lr=1e-4),
                              str(tmp_path / "c"))
  assert [(k, f) for k, f, _ in traced if f == "update"] == [
      ("backend_compile_duration", "update"),
      ("jaxpr_trace_duration", "update")], traced


def test_without_a_cache_the_step_is_compiled_once_ahead(tmp_path):
  before = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", None)
  try:
    _, traced = _train_counting(tiny_digits(total_steps=2, lr=3e-4),
                                str(tmp_path / "w"))
  finally:
    jax.config.update("jax_compilation_cache_dir", before)
  step = [(k, t) for k, f, t in traced if f == "update"]
  # Compiled once, ahead, on its thread; the loop ran that executable.
  assert [k for k, _ in step] == ["backend_compile_duration",
                                  "jaxpr_trace_duration"], step
  assert all(t.startswith("big_vision_compile") for _, t in step), step


def test_a_compiled_step_that_rejects_the_state_falls_back(tmp_path,
                                                           monkeypatch):
  def rejects(state, batch):
    del state, batch
    raise TypeError("Argument types differ from the types for which this "
                    "computation was compiled.")
  monkeypatch.setattr(train, "_join_compile", lambda future: rejects)
  final = train.train(tiny_digits(total_steps=2), str(tmp_path / "w"))
  lines = metric_writer.read(str(tmp_path / "w"))
  assert [l["step"] for l in lines if "training_loss" in l] == [1, 2]
  assert np.isfinite(final["training_loss"])
