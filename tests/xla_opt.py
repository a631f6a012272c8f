"""XLA settings of the test processes: fast compiles, except where a test
trains long enough for run time to matter.

Most tests compile tiny models and run them for a step or two, so XLA's
compile time is most of the suite's time. The test processes therefore
compile with `FAST_COMPILE_FLAGS` (set in $XLA_FLAGS by conftest.py,
inherited by the trainers that tests launch):

* LLVM's -O0 (`--xla_backend_optimization_level=0`): halves the compile
  time of a train step.
* XLA's CPU element-wise emitters instead of its newer fusion emitters
  (`--xla_cpu_use_fusion_emitters=false`): on top of -O0, the ViT-mu/16
  train step at 224px compiles in 1.2-1.4 s instead of 2.2-2.4 s, and
  tests/test_recipes_as_written.py (34 recipes) took 454 CPU-s instead of
  601 (232 s instead of 326 s of pytest with -n 3).

The programs are the same HLO (XLA's CPU fast-math is off in every
setting); only the machine code differs, which can order a reduction's
additions differently: results agree to float rounding, not bit for bit
(tests/test_xla_opt.py). Every comparison in the suite is between programs
compiled with the same settings, or within a tolerance.

The few tests that train for hundreds of steps (the digits accuracy tests)
spend their time running, not compiling, and -O0 code runs 2-3x slower.
They compile with XLA's defaults (level 3, fusion emitters) instead, and so
does everything they compare their numbers with:

  @pytest.mark.xla_optimized             # jits created by the test
  with xla_opt.optimized(): ...          # e.g. in a module-scoped fixture
  env = xla_opt.optimized_env()          # for a trainer run as a subprocess
"""
import contextlib
import functools
import importlib.metadata
import os
import subprocess
import sys

LEVEL_FLAG = "--xla_backend_optimization_level=0"
EMITTER_FLAG = "--xla_cpu_use_fusion_emitters=false"
# The jaxlib series the emitter flag was measured on. It is an XLA debug
# option, which a later jaxlib may drop, and XLA refuses to start on a flag
# it does not know: another jaxlib gets it only if a throwaway process
# (~0.6 s) starts with it.
MEASURED_JAXLIB = "0.10."
_PROBE = "import jax; jax.numpy.zeros(1).block_until_ready()"


def xla_accepts(flag: str) -> bool:
  """Whether a jax process on this jaxlib starts with `flag` in $XLA_FLAGS."""
  env = dict(os.environ, XLA_FLAGS=flag, JAX_PLATFORMS="cpu")
  try:
    return subprocess.run([sys.executable, "-c", _PROBE], env=env,
                          capture_output=True, check=False,
                          timeout=300).returncode == 0
  except subprocess.TimeoutExpired:
    return False


def _emitter_flag_known() -> bool:
  if importlib.metadata.version("jaxlib").startswith(MEASURED_JAXLIB):
    return True
  return xla_accepts(EMITTER_FLAG)


_EMITTERS = _emitter_flag_known()
FAST_COMPILE_FLAGS = (LEVEL_FLAG,) + ((EMITTER_FLAG,) if _EMITTERS else ())
# XLA aborts the process when the 8 virtual devices of a CPU collective
# arrive more than 40 s apart (its default). On 2 cores shared by the test
# workers and their trainers a device thread can wait that long: a whole
# worker died with "Fatal Python error: Aborted" inside a train step. The
# test processes wait 20 minutes instead (a real hang still ends).
PATIENT_COLLECTIVES_FLAGS = (
    "--xla_cpu_collective_call_terminate_timeout_seconds=1200",
)
# XLA's own defaults for what FAST_COMPILE_FLAGS change (jaxlib's
# DebugOptions: LLVM's aggressive -O3 on CPU, the fusion emitters).
DEFAULT_OPTIONS = {"xla_backend_optimization_level": 3,
                   **({"xla_cpu_use_fusion_emitters": True} if _EMITTERS
                      else {})}


class _TopLevelOptimized:
  """A jitted function that compiles with XLA's defaults (DEFAULT_OPTIONS)
  when it is called (or lowered) as a top-level program, and like a plain
  `jax.jit` when it is called inside another trace (told by its arguments:
  one is a tracer; a nested call with only constant arguments would still
  get the options, and jax would say so with a ValueError).

  jax refuses `compiler_options` on a nested jit. Libraries create jits
  inside `optimized()` too (optax, flax and big_vision modules imported
  lazily, their module-level decorators included), and those end up nested
  in the train step: passing options to every jit made a test that first
  imported the trainer inside the context fail (ValueError from optax's
  `tree_bias_correction`) when it ran alone, and pass after other tests.
  """

  def __init__(self, plain, optimized_fn):
    self._plain = plain
    self._optimized = optimized_fn

  def __call__(self, *args, **kwargs):
    import jax  # pylint: disable=g-import-not-at-top
    nested = any(isinstance(x, jax.core.Tracer)
                 for x in jax.tree.leaves((args, kwargs)))
    return (self._plain if nested else self._optimized)(*args, **kwargs)

  def __get__(self, obj, objtype=None):  # Decorated methods.
    return self if obj is None else functools.partial(self, obj)

  def __getattr__(self, name):  # .lower, .trace, .eval_shape, ...
    return getattr(self._optimized, name)


@contextlib.contextmanager
def optimized():
  """`jax.jit` calls made inside compile with XLA's defaults
  (DEFAULT_OPTIONS).

  Per-program compiler options override $XLA_FLAGS; jits created before
  (module-level decorators) keep the fast-compile settings, and so do jits
  called inside another jit's trace (jax takes options on top-level
  programs only). Patches `jax.jit` for the process: one test at a time
  (xdist workers are processes).
  """
  import jax  # pylint: disable=g-import-not-at-top
  real_jit = jax.jit

  def jit(fun=None, /, *, compiler_options=None, **kw):
    if fun is None:  # @jax.jit(static_argnames=...) as a decorator factory.
      return functools.partial(jit, compiler_options=compiler_options, **kw)
    options = {**DEFAULT_OPTIONS, **(compiler_options or {})}
    return _TopLevelOptimized(
        real_jit(fun, compiler_options=compiler_options, **kw),
        real_jit(fun, compiler_options=options, **kw))

  jax.jit = jit
  try:
    yield
  finally:
    jax.jit = real_jit


def optimized_env(env=None) -> dict:
  """A copy of `env` (default os.environ) whose $XLA_FLAGS compile with
  XLA's defaults (none of FAST_COMPILE_FLAGS)."""
  env = dict(os.environ if env is None else env)
  fast = {f.split("=")[0] for f in FAST_COMPILE_FLAGS}
  env["XLA_FLAGS"] = " ".join(
      f for f in env.get("XLA_FLAGS", "").split()
      if f.split("=")[0] not in fast)
  return env
