r"""Wall time of each evaluator of a config, as training runs them.

  python tools/bench_evals.py --config big_vision/configs/vit_digits.py \
      [--repeats 3] [--config.evals.fewshot.batch_size=128 ...]

The model and the evaluators are built by the trainer's own code
(`program.build`, `evaluators.from_config`) on a freshly initialised state
(or `config.model_init`, as a fine-tune starts); each evaluator then runs
once (`first`: its input pipelines built, its functions compiled, as at a
run's first eval) and `--repeats` more times (`then`: the median, what each
later eval of a run costs). One line per evaluator:

  <name>: first <s> s, then <s> s (median of <n>), <metric> = <value>

The metric shown is the evaluator's first one, so that a change meant only
to make it faster can be seen to leave its numbers alone. As in training,
big_vision's XLA flags are applied and JAX's persistent compilation cache
is on (`--compilation_cache=DIR|off`; a warm cache makes `first` what a
relaunch pays), and a bad config or flag is one `error:` line and exit
status 2.
"""
import os
import statistics
import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags


def define_flags():
  """Defined only when run as a script, so that the module can be imported
  next to big_vision.train (which defines --config too)."""
  config_flags.DEFINE_config_file(
      "config", None, "Config module whose evaluators are timed.",
      lock_config=False, accept_new_attributes=True)
  flags.DEFINE_integer("repeats", 3, "Timed runs after the first one.")
  flags.DEFINE_string("compilation_cache", "auto",
                      "JAX persistent compilation cache: a directory, "
                      "'auto' (as training) or 'off'.")


def time_evaluators(config, repeats: int) -> list[dict]:
  """[{name, first_s, then_s, metric, value}] for every evaluator."""
  from big_vision import program  # pylint: disable=g-import-not-at-top
  from big_vision.evaluators import common as evaluators  # pylint: disable=g-import-not-at-top
  prog = program.build(config, optimizer=False)
  state = prog.init_state()
  evals = evaluators.from_config(config, prog.predict_fn, prog.mesh,
                                 total_steps=prog.total_steps,
                                 steps_per_epoch=prog.steps_per_epoch,
                                 batch_size=prog.batch_size)
  rows = []
  for ev in evals:
    times, first = [], None
    for _ in range(1 + repeats):
      start = time.perf_counter()
      results = dict(ev.run(state))  # Metrics arrive on the host: finished.
      times.append(time.perf_counter() - start)
      first = first or results
    metric = sorted(first)[0] if first else ""
    rows.append(dict(name=ev.name, first_s=times[0],
                     then_s=statistics.median(times[1:]) if repeats else None,
                     repeats=repeats, metric=metric,
                     value=first.get(metric)))
  return rows


def report(rows) -> list[str]:
  lines = []
  for r in rows:
    then = (f", then {r['then_s']:.3f} s (median of {r['repeats']})"
            if r["then_s"] is not None else "")
    value = f", {r['metric']} = {r['value']:.5f}" if r["metric"] else ""
    lines.append(f"{r['name']}: first {r['first_s']:.3f} s{then}{value}")
  return lines


def main(argv):
  del argv
  fl = flags.FLAGS
  if fl.config is None:
    raise app.UsageError("--config is required.")
  if fl.repeats < 0:
    raise app.UsageError(f"--repeats={fl.repeats} must be >= 0.")
  # pylint: disable=g-import-not-at-top
  from big_vision import compile_cache
  from big_vision import config_check
  from big_vision import xla_flags
  # pylint: enable=g-import-not-at-top
  xla_flags.apply()  # Before jax touches a backend, as train.main.
  compile_cache.enable(fl.compilation_cache)
  config = fl.config
  config_check.apply_override_precedence(config, sys.argv, log=print)
  if not config.get("evals"):
    raise app.UsageError("The config has no evaluators (config.evals).")
  try:
    config_check.validate(config)  # Clear errors first; then built anew
    rows = time_evaluators(config, fl.repeats)  # without optimizer state.
  except ValueError as e:  # ConfigError included: one line, no traceback.
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
    sys.exit(2)
  print("\n".join(report(rows)), flush=True)


if __name__ == "__main__":
  define_flags()
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
  from big_vision import config_check  # pylint: disable=g-import-not-at-top
  app.run(main, flags_parser=config_check.parse_flags_or_exit)
