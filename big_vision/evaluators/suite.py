"""A benchmark suite: one evaluator type over many tasks, and their mean.

Benchmarks such as VTAB-1k are defined by a list of tasks evaluated the same
way and summarised by the mean over tasks (and over groups of tasks). This
evaluator holds one sub-evaluator per task, runs them in order and reports
every task's metrics plus those means:

  config.evals.vtab = dict(
      type="suite", log_steps=10_000,
      evaluator="finetune",            # the type of every task's evaluator
      shared=dict(steps=2500, ...),    # keyword args common to all tasks
      tasks={"caltech101": dict(train_data=..., num_classes=102, ...), ...},
      mean_of="prec@1",                # the per-task metric that is averaged
      groups={"natural": ("caltech101", ...), ...})

Metrics: "<task>/<metric>" for every metric of every task, "mean/<mean_of>"
(the unweighted mean over all tasks, VTAB's headline number) and
"<group>_mean/<mean_of>" per group. A task's keyword args are `shared`
updated by its own, validated like any evaluator config (unknown keys are
named) when the suite is built, before any data is read.
"""
from typing import Any, Mapping, Sequence

import numpy as np

from big_vision.evaluators import common


class Evaluator:
  """Runs `evaluator` on every task; yields their metrics and means."""

  def __init__(self, predict_fn, *, mesh, evaluator: str,
               tasks: Mapping[str, Mapping[str, Any]],
               shared: Mapping[str, Any] | None = None,
               mean_of: str = "prec@1",
               groups: Mapping[str, Sequence[str]] | None = None):
    if not tasks:
      raise ValueError("suite needs at least one task.")
    if evaluator == "suite":
      raise ValueError("suite: a suite of suites is not supported.")
    self.mean_of = mean_of
    self.groups = {g: tuple(names) for g, names in (groups or {}).items()}
    for g, names in self.groups.items():
      unknown = [n for n in names if n not in tasks]
      if unknown or not names:
        raise ValueError(f"suite group {g!r} names tasks that are not in "
                         f"`tasks`: {unknown or '(empty group)'}. Tasks: "
                         f"{', '.join(tasks)}.")
    self.evaluators = {}
    for name, task_kw in tasks.items():
      cfg = {"type": evaluator, **dict(shared or {}), **dict(task_kw)}
      module, kwargs = common.check_config(cfg, f"suite task {name!r}")
      for key, value in kwargs.items():  # Bad pp strings fail here, early.
        if key.startswith("pp") and isinstance(value, str):
          from big_vision.pp import builder  # pylint: disable=g-import-not-at-top
          builder.get_preprocess_fn(value)
      self.evaluators[name] = module.Evaluator(predict_fn, mesh=mesh, **kwargs)

  def run(self, train_state):
    values = {}
    for name, evaluator in self.evaluators.items():
      for metric, value in evaluator.run(train_state):
        if metric == self.mean_of:
          values[name] = value
        yield f"{name}/{metric}", value
      if name not in values:
        raise ValueError(f"suite task {name!r} reported no {self.mean_of!r} "
                         "metric (mean_of).")
    yield f"mean/{self.mean_of}", float(np.mean(list(values.values())))
    for g, names in self.groups.items():
      yield f"{g}_mean/{self.mean_of}", float(np.mean([values[n]
                                                       for n in names]))
