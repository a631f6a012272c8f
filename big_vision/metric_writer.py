"""Metrics to TensorBoard (clu) and to `metrics.jsonl`, from process 0 only.

`metrics.jsonl` holds one JSON object per line: `{"step": s, name: value, ...}`.
On resume, lines for steps after the restored checkpoint were written by the
interrupted run and will be produced again; `truncate_after(step)` drops them
(atomically, via a temp file) so that every step appears exactly once and
nothing before the checkpoint is ever lost.
"""
import json
import math
import os

from absl import logging
import jax


class MetricWriter:
  """Writes scalars to TensorBoard event files and to `metrics.jsonl`."""

  def __init__(self, workdir: str | None, *, resume_step: int | None = 0):
    """`resume_step=None` appends without dropping anything (eval-only runs)."""
    self.is_writer = jax.process_index() == 0 and workdir is not None
    self.path = os.path.join(workdir, "metrics.jsonl") if workdir else None
    self._tb = None
    if self.is_writer:
      os.makedirs(workdir, exist_ok=True)
      if resume_step is not None:
        truncate_after(self.path, resume_step)
      try:  # clu's TensorBoard writer needs tensorflow (GPU boxes may lack it).
        from clu import metric_writers  # pylint: disable=g-import-not-at-top
        self._tb = metric_writers.create_default_writer(
            workdir, asynchronous=False)
      except ImportError:
        logging.warning("tensorflow unavailable: metrics go to %s only.",
                        self.path)

  def write(self, step: int, metrics: dict[str, float]):
    if not self.is_writer or not metrics:
      return
    metrics = {k: float(v) for k, v in metrics.items()}
    if self._tb is not None:
      self._tb.write_scalars(step, metrics)
    line = {"step": int(step)}
    line.update({k: (v if math.isfinite(v) else str(v))
                 for k, v in metrics.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(line) + "\n")
      f.flush()

  def flush(self):
    if self._tb is not None:
      self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()


def truncate_after(path: str, step: int):
  """Keeps only the lines of `path` with step <= `step` (atomic rewrite)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  kept = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= step:
        kept.append(line if line.endswith("\n") else line + "\n")
    except (ValueError, KeyError):
      continue  # A line torn by a kill mid-write carries no usable metric.
  if len(kept) == len(lines):
    return
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(kept)
  os.replace(tmp, path)


def read(path_or_workdir: str) -> list[dict]:
  """All metric lines of a workdir (or a metrics.jsonl path)."""
  path = path_or_workdir
  if os.path.isdir(path):
    path = os.path.join(path, "metrics.jsonl")
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
