r"""The one trainer: a config module in, checkpoints and metrics out.

  python -m big_vision.train --config big_vision/configs/vit_digits.py \
      --workdir workdirs/digits [--config.total_steps=100 ...]

Re-running the same command with the same workdir resumes from the last
complete checkpoint. The program (model, objective, optimizer, train state, shardings,
jitted step) is assembled by `big_vision.program.build`, the same function
the config check and the tools (eval_only, plan, bench) call, so they build
exactly what training runs; this module is the loop. Nothing here imports tensorflow at module level: only the data side
does, and only when real data is read.
"""
import gc
import time

_LAUNCH_TIME = time.time()  # Before the heavy imports below.
# A command-line run launches without Python's cyclic garbage collector and
# turns it on once its first step is done (see _collect_again).
_GC_OFF_UNTIL_FIRST_STEP = __name__ == "__main__"
if _GC_OFF_UNTIL_FIRST_STEP:
  gc.disable()

# pylint: disable=g-import-not-at-top,wrong-import-position
import concurrent.futures
import logging as py_logging
import os
import signal
import sys
from typing import Any

from absl import app
from absl import flags
from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np

from big_vision import checkpoint
from big_vision import compile_cache
from big_vision import config_check
from big_vision import executable_cache
from big_vision import metric_writer
from big_vision import program
from big_vision import utils
from big_vision import xla_flags
from big_vision.evaluators import common as evaluators



def define_flags():
  """Command-line flags, defined only when run as the trainer.

  (Tools import this module for its functions and define their own flags.)
  `--config.key=value` may add keys the config module does not set (e.g.
  `model_init`); misspelt keys are caught by the config check before any
  work starts.
  """
  config_flags.DEFINE_config_file(
      "config", None, "Training configuration module.",
      lock_config=False, accept_new_attributes=True)
  flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go.")
  flags.DEFINE_string(
      "compilation_cache", "auto",
      "JAX's persistent compilation cache: 'auto' (~/.cache/big_vision/"
      "jax_cache or $BIG_VISION_COMPILATION_CACHE), a directory, or 'off'. "
      "A resume or a second launch of the same config skips compiling, "
      "and loads its train step and init without tracing them "
      "(<dir>/big_vision_executables).")
  flags.DEFINE_bool("distributed", None,
                    "Call jax.distributed.initialize() (multi-process runs). "
                    "Default: when JAX_COORDINATOR_ADDRESS is set.")


# ----------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------
class _Preemption:
  """Turns SIGTERM into 'checkpoint at a step all processes agree on, exit 0'.

  One process acts at the first step after the signal. With several, each
  process only sets its flag; at sync steps (the log and checkpoint steps,
  the same on every process) all exchange their flags with an allgather, and
  if any is set, every process stops at that same step. (Acting on a local
  flag alone, processes would enter the collective save at different steps
  and hang.) So a multi-process run needs a grace period of up to
  `log_training_steps` steps.
  """

  def __init__(self):
    self.requested = False  # This process received SIGTERM.
    self.stop = False  # All processes agreed to stop at the current step.
    try:
      signal.signal(signal.SIGTERM, self._handler)
    except ValueError:  # Not the main thread (e.g. inside a test runner).
      pass

  def _handler(self, signum, frame):
    del signum, frame
    self.requested = True

  def agreed(self, sync_step: bool) -> bool:
    """Whether to stop at this step; call at every step on every process."""
    if not self.stop:
      if jax.process_count() == 1:
        self.stop = self.requested
      elif sync_step:
        flags = multihost_utils.process_allgather(np.int32(self.requested))
        self.stop = bool(np.any(flags))
    return self.stop


class TrainingDiverged(FloatingPointError):
  """Params or loss became NaN/inf; str() is one line for the user."""


@jax.jit
def _all_finite(tree) -> jax.Array:
  """One on-device reduction: are all float leaves of `tree` finite?"""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


# Set by main(): the process is one command-line run (see _freeze_heap).
_ONE_RUN_PROCESS = False


def _freeze_heap():
  """utils.freeze_gc_heap, only in a command-line run, whose process holds
  one run: a process that calls train() again (tests, a notebook) keeps the
  default collector, so earlier runs' garbage is still collected."""
  if _ONE_RUN_PROCESS:
    utils.freeze_gc_heap()


def _collect_again():
  """Turns the cyclic garbage collector back on, in a command-line run
  (which launched without it), once its first step is done.

  Why: a launch allocates millions of short-lived objects (imports, tracing,
  tf.data graphs) but leaves few cycles behind: about 5,000 unreachable
  objects at the first step of a `vit_digits` launch, whose peak memory is
  the same (1.06 GB) either way. Meanwhile every collection holds the GIL
  that the launch's threads (compile, init, first batches) share: without
  them a warm launch reached its first step 0.4 s sooner (median of 10
  paired launches: 5.4 s against 5.95 s). Refcounting still frees all other
  garbage at once; the few cycles the imports leave are frozen with the
  heap (_freeze_heap). A process that calls train() itself (tests,
  notebooks) keeps its collector as it is.
  """
  global _GC_OFF_UNTIL_FIRST_STEP
  if _GC_OFF_UNTIL_FIRST_STEP:
    _GC_OFF_UNTIL_FIRST_STEP = False
    gc.enable()


PAUSE_ENV = "BIG_VISION_TEST_PAUSE_AT_STEP"


def pause_file(workdir: str, step: int, process_index: int | None = None,
               process_count: int | None = None) -> str:
  """<workdir>/.paused_at_<step>[.<process index> if several processes]."""
  process_index = (jax.process_index() if process_index is None
                   else process_index)
  process_count = (jax.process_count() if process_count is None
                   else process_count)
  suffix = f".{process_index}" if process_count > 1 else ""
  return os.path.join(workdir, f".paused_at_{step}{suffix}")


def _test_pause(workdir: str, step: int):
  """Test hook: with BIG_VISION_TEST_PAUSE_AT_STEP=<step>, once `step` is done
  (its metrics and checkpoint written), writes pause_file() and waits until
  the file is removed (or the process killed), so that tests act at a known
  point instead of racing the trainer."""
  path = pause_file(workdir, step)
  with open(path + ".tmp", "w") as f:
    f.write(str(os.getpid()))
  os.replace(path + ".tmp", path)
  logging.warning("Paused after step %d (%s): waiting for %s to be removed.",
                  step, PAUSE_ENV, path)
  while os.path.exists(path):
    time.sleep(0.01)


def _compile_meanwhile(prog) -> concurrent.futures.Future:
  """The compiled train step, on a thread, while the state is initialised
  (or restored) and the step-0 evaluations run.

  A warm launch loads it whole from the executable cache (no trace, no
  lowering: see executable_cache); otherwise it is traced, lowered and
  compiled (XLA compiles without holding the GIL, so with an empty
  compilation cache the compile runs beside the init and the evaluators'
  compiles) and stored for the next launch.
  """
  def compile_step():
    return executable_cache.load_or_compile(
        "train_step", prog.executable_key,
        lambda: prog.update_fn.lower(prog.abstract_state(),
                                     prog.abstract_batch()))
  return utils.on_thread(compile_step, "big_vision_compile")


def _join_compile(future: concurrent.futures.Future | None):
  """The compiled step of `_compile_meanwhile`, or None (not started, or it
  failed: that is only logged, and the first call of the jitted step
  compiles it and raises the real error)."""
  if future is None:
    return None
  try:
    return future.result()
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("Compiling the train step ahead failed (%s: %s); it is "
                    "compiled at the first step instead.", type(e).__name__, e)
    return None


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) `config` in `workdir`. Returns the final metrics."""
  # Every config mistake fails here, in seconds, before anything compiles;
  # the check builds the program abstractly, and that is what runs.
  prog = config_check.validate(config, workdir)
  _freeze_heap()  # Again: the check imported the data side.
  if jax.process_count() > 1:  # All hosts past the checks before orbax starts.
    multihost_utils.sync_global_devices("big_vision config checked")
  preempt = _Preemption()
  mesh = prog.mesh
  batch_size = prog.batch_size
  total_steps = prog.total_steps
  steps_per_epoch = prog.steps_per_epoch
  ckpt = checkpoint.Checkpointer(
      workdir, keep_every=config.get("keep_ckpt_steps"),
      timeout_s=config.get("ckpt_timeout"))
  first_step = ckpt.latest_step() or 0
  update_fn = prog.update_fn
  compiling = None  # A finished run, relaunched, has no step to compile.
  if first_step < total_steps:
    compiling = _compile_meanwhile(prog)
  # A fresh state is initialised on a thread too: its compile (or its read
  # from the compilation cache) overlaps building the input pipeline and
  # the evaluators. Nothing from here to `initializing.result()` may run a
  # multi-process collective (the init program may be running one). The
  # train batches start now: their first ones are prepared on a thread
  # meanwhile (a finished run, relaunched, reads no data).
  initializing = None if first_step else utils.on_thread(prog.init_state,
                                                         "big_vision_init")
  try:
    batches = (program.train_batches(config, mesh, first_step)
               if first_step < total_steps else iter(()))
    logging.info("Model %s: %s parameters.", config.model_name,
                 f"{utils.tree_count(prog.state_shape['params']):,}")
    # Lines after the restored step are redone; with no checkpoint, all are
    # (the step-0 evals included), so every step appears exactly once.
    writer = metric_writer.MetricWriter(
        workdir, resume_step=first_step if first_step else -1)
    evals = evaluators.from_config(config, prog.predict_fn, mesh,
                                   total_steps=total_steps,
                                   steps_per_epoch=steps_per_epoch,
                                   batch_size=batch_size)
  except BaseException:
    if initializing is not None:  # Not left running behind the error.
      concurrent.futures.wait([initializing])
    raise

  if first_step:
    logging.info("Resuming from the checkpoint of step %d in %s.", first_step,
                 workdir)
    state = ckpt.restore(first_step, prog.state_shape, prog.shardings)
  else:
    state = initializing.result()

  pause_at = os.environ.get(PAUSE_ENV)
  pause_at = int(pause_at) if pause_at else None

  chrono = utils.Chrono(first_step, total_steps, batch_size, jax.device_count())
  log_every = int(config.get("log_training_steps", 50))
  ckpt_every = int(config.get("ckpt_steps", 0) or 0)
  last_log_step = first_step
  last_finite_step = first_step  # The newest step known to be finite.
  final = {}

  def diverged(what: str, step: int) -> TrainingDiverged:
    """The error to stop with; closes the writer and the checkpointer first
    (their in-flight writes hold finite states: they are kept)."""
    writer.flush()
    writer.close()
    ckpt.wait()
    good = ckpt.latest_step()
    ckpt.close()
    if good is None:
      where = f"there is no checkpoint in {workdir} to resume from"
    else:
      where = (f"the last good checkpoint is step {good}, "
               f"{os.path.join(ckpt.directory, str(good))}")
    hint = "lower config.lr" + (
        "" if config.get("grad_clip_norm") else
        " or set config.grad_clip_norm (e.g. 1.0)")
    return TrainingDiverged(
        f"{what} became NaN/inf between steps {last_finite_step} and {step}; "
        f"step {step} was not checkpointed and {where}. To go on from there, "
        f"{hint} and re-run the same command.")

  def maybe_pause(step):
    if pause_at == step:
      ckpt.wait()
      writer.flush()
      _test_pause(workdir, step)

  def run_evals(step):
    chrono.pause()
    for ev in evals:
      if ev.due(step, first_step, total_steps):
        results = dict(ev.run(state))
        for k, v in results.items():
          logging.info("[%d] %s = %.5f", step, k, v)
        writer.write(step, results)
        final.update(results)
    chrono.resume()

  if first_step == 0:
    run_evals(0)
  chrono.tick(first_step)
  maybe_pause(first_step)
  step = first_step
  step_fn = _join_compile(compiling) or update_fn
  for step in range(first_step + 1, total_steps + 1):
    batch = next(batches)
    try:
      state, info = step_fn(state, batch)
    except (TypeError, ValueError) as e:
      if step_fn is update_fn or step > first_step + 1:
        raise
      # The arguments are checked before anything runs (or is donated): a
      # state or batch that does not match the compiled signature goes to
      # the jitted step, which compiles for what it is given.
      logging.warning("The compiled train step does not take this state "
                      "or batch (%s); using the jitted step.", e)
      step_fn = update_fn
      state, info = step_fn(state, batch)
    if step == first_step + 1:  # Once: what a compilation cache saves.
      jax.block_until_ready(info)
      logging.info("Launch to first step done: %.2f s.",
                   time.time() - _LAUNCH_TIME)
      _collect_again()

    log_step = step % log_every == 0 or step == total_steps
    ckpt_step = bool(ckpt_every and step % ckpt_every == 0) or (
        step == total_steps)
    stop = preempt.agreed(sync_step=log_step or ckpt_step)

    if log_step or stop:
      info = jax.device_get(info)  # The only host sync of the loop.
      bad = [k for k, v in info.items() if not np.isfinite(v)]
      if bad:
        raise diverged(", ".join(bad), step)
      last_finite_step = step
      # The lr figures are those the step applied (per schedule group).
      measures = {**info, **chrono.tick(step),
                  "epoch": step / steps_per_epoch}
      writer.write(step, measures)
      logging.info("[%d] loss=%.5f | %s", step, info["training_loss"],
                   chrono.note(step))
      final["training_loss"] = float(info["training_loss"])
      last_log_step = step

    # Evals of a step run BEFORE its checkpoint: once the checkpoint exists,
    # a resumed run starts after this step and would never redo them. On
    # preemption they are skipped: the grace period is for the checkpoint.
    if not stop:
      run_evals(step)
    if stop or ckpt_step:
      chrono.pause()
      # Never checkpoint a non-finite state: one on-device reduction over
      # the train state and one scalar to the host (plus the step's few
      # scalars of info), at save steps only.
      if not bool(_all_finite(state)):
        raise diverged("the train state (params or optimizer state)", step)
      bad = [k for k, v in jax.device_get(info).items()
             if not np.isfinite(v)]
      if bad:
        raise diverged(", ".join(bad), step)
      last_finite_step = step
      ckpt.save(step, state)  # Returns once the arrays are on the host, so
      chrono.resume()         # the next step may donate `state`'s buffers.
    if stop:
      ckpt.close()
      writer.flush()
      writer.close()
      who = "" if preempt.requested else " received by another process"
      msg = (f"Preempted (SIGTERM{who}): checkpoint of step {step} written "
             f"to {workdir}. Resume with the same command.")
      logging.warning(msg)
      print(msg, flush=True)
      return final
    maybe_pause(step)

  ckpt.close()
  writer.flush()
  writer.close()
  return final


class _QuietLibraries:
  """Drops INFO records of chatty libraries (orbax logs every file it writes)."""

  PREFIXES = ("orbax", "etils", "tensorflow_datasets")

  def filter(self, record):
    if record.levelno >= py_logging.WARNING:
      return True
    return not any(f"/{p}/" in record.pathname for p in self.PREFIXES)


def main(argv):
  del argv
  global _ONE_RUN_PROCESS
  _ONE_RUN_PROCESS = True
  _freeze_heap()
  xla_flags.apply()  # Before jax touches a backend.
  cache = compile_cache.enable(flags.FLAGS.compilation_cache)
  logging.info("Compilation cache: %s", cache or "off")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  config = flags.FLAGS.config
  # A typed --config.total_steps=N wins over the module's total_epochs.
  config_check.apply_override_precedence(config, sys.argv,
                                         log=logging.warning)
  workdir = flags.FLAGS.workdir
  if not workdir:
    raise app.UsageError("--workdir is required.")
  distributed = flags.FLAGS.distributed
  if distributed is None:
    distributed = bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))
  if distributed:
    # Outside a cluster JAX detects, JAX_NUM_PROCESSES and JAX_PROCESS_ID
    # (with JAX_COORDINATOR_ADDRESS) say who is who: e.g. local processes.
    kw = {k: int(os.environ[e]) for k, e in (
        ("num_processes", "JAX_NUM_PROCESSES"),
        ("process_id", "JAX_PROCESS_ID")) if os.environ.get(e)}
    jax.distributed.initialize(**kw)
  try:
    final = train(config, workdir)
  except config_check.ConfigError as e:
    # One line a user can act on, not a traceback (see config_check).
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  except TrainingDiverged as e:
    # Also one line: the step, and the checkpoint to go on from.
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  for k, v in sorted(final.items()):
    print(f"{k}: {v:.5f}")


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=config_check.parse_flags_or_exit)
