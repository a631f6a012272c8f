"""XLA optimisation levels of the test processes.

Most tests compile tiny models and run them for a step or two, so XLA's
compile time is most of the suite's time. The test processes therefore
compile at LLVM's -O0 (`FAST_COMPILE_FLAG`, set in $XLA_FLAGS by
conftest.py, inherited by the trainers that tests launch): that halves the
compile time of a train step. The programs are the same HLO (XLA's CPU
fast-math is off at every level); only the machine code differs, which can
order a reduction's additions differently: results agree to float rounding,
not bit for bit (tests/test_xla_opt.py). Every comparison in the suite is
between programs compiled at the same level, or within a tolerance.

The few tests that train for hundreds of steps (the digits accuracy tests)
spend their time running, not compiling, and -O0 code runs 2-3x slower.
They compile at XLA's default level (3) instead, and so does everything
they compare their numbers with:

  @pytest.mark.xla_optimized             # jits created by the test
  with xla_opt.optimized(): ...          # e.g. in a module-scoped fixture
  env = xla_opt.optimized_env()          # for a trainer run as a subprocess
"""
import contextlib
import os

FAST_COMPILE_FLAG = "--xla_backend_optimization_level=0"
# XLA aborts the process when the 8 virtual devices of a CPU collective
# arrive more than 40 s apart (its default). On 2 cores shared by the test
# workers and their trainers a device thread can wait that long: a whole
# worker died with "Fatal Python error: Aborted" inside a train step. The
# test processes wait 20 minutes instead (a real hang still ends).
PATIENT_COLLECTIVES_FLAGS = (
    "--xla_cpu_collective_call_terminate_timeout_seconds=1200",
)
# XLA's own default (jaxlib's DebugOptions; LLVM's aggressive -O3 on CPU).
_DEFAULT_LEVEL = {"xla_backend_optimization_level": 3}


@contextlib.contextmanager
def optimized():
  """`jax.jit` calls made inside compile at XLA's default optimisation.

  Per-program compiler options override $XLA_FLAGS; jits created before
  (module-level decorators) keep the fast-compile level. Patches `jax.jit`
  for the process: one test at a time (xdist workers are processes).
  """
  import jax  # pylint: disable=g-import-not-at-top
  real_jit = jax.jit

  def jit(*args, compiler_options=None, **kw):
    return real_jit(*args, compiler_options={**_DEFAULT_LEVEL,
                                             **(compiler_options or {})},
                    **kw)

  jax.jit = jit
  try:
    yield
  finally:
    jax.jit = real_jit


def optimized_env(env=None) -> dict:
  """A copy of `env` (default os.environ) whose $XLA_FLAGS compile at
  XLA's default optimisation level."""
  env = dict(os.environ if env is None else env)
  env["XLA_FLAGS"] = " ".join(
      f for f in env.get("XLA_FLAGS", "").split()
      if f.split("=")[0] != FAST_COMPILE_FLAG.split("=")[0])
  return env
