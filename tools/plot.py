r"""Plots the training and eval curves of one or more runs as a PNG.

  python tools/plot.py --workdir workdirs/digits
  python tools/plot.py --workdir workdirs/a --workdir workdirs/b --out ab.png

Reads each workdir's metrics.jsonl (see big_vision/metric_writer.py) and
draws one panel per quantity, against the step: `training_loss`, `lr`, then
one panel per evaluator (the part of a metric name before "/", e.g. `val`
for val/prec@1 and val/loss) with a line per metric. Per-seed few-shot
entries (`..._seed<i>`) are left out: their mean is plotted. Several workdirs
share the panels, one colour each, labelled by the workdir's name. Needs no
display (matplotlib's Agg backend) and no tensorflow.
"""
import argparse
import collections
import math
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from big_vision import metric_writer  # pylint: disable=g-import-not-at-top

TRAIN_PANELS = ("training_loss", "lr")
_PER_SEED = re.compile(r".*_seed\d+$")


def curves(lines: list[dict]) -> dict[str, dict[str, list[tuple]]]:
  """{panel: {metric: [(step, value), ...]}} of one run's metric lines."""
  panels = collections.defaultdict(lambda: collections.defaultdict(list))
  for line in lines:
    step = line.get("step")
    for key, value in line.items():
      if key == "step" or not isinstance(value, (int, float)):
        continue
      if isinstance(value, bool) or not math.isfinite(value):
        continue
      if key in TRAIN_PANELS:
        panels[key][key].append((step, value))
      elif "/" in key and not _PER_SEED.match(key):
        panels[key.split("/", 1)[0]][key].append((step, value))
  return {p: dict(m) for p, m in panels.items()}


def plot(workdirs: list[str], out: str) -> list[str]:
  """Writes the PNG; returns the panel titles, in order."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  runs = {}
  for wd in workdirs:
    try:
      lines = metric_writer.read(wd)
    except FileNotFoundError:
      lines = []
    if not lines:
      raise ValueError(f"No metrics in {wd} (no metrics.jsonl or empty).")
    runs[os.path.basename(os.path.normpath(wd)) or wd] = curves(lines)
  names = set().union(*(r.keys() for r in runs.values()))
  titles = [p for p in TRAIN_PANELS if p in names]
  titles += sorted(names - set(TRAIN_PANELS))
  cols = min(3, len(titles))
  rows = math.ceil(len(titles) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.5 * rows),
                           squeeze=False)
  colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  styles = ("-", "--", ":", "-.")
  for ax, title in zip(axes.flat, titles):
    for r, (run, panels) in enumerate(runs.items()):
      for m, (metric, points) in enumerate(sorted(panels.get(title,
                                                             {}).items())):
        steps, values = zip(*sorted(points))
        label = metric if len(runs) == 1 else f"{run}: {metric}"
        ax.plot(steps, values, styles[m % len(styles)], marker=".",
                color=colours[r % len(colours)], label=label)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
  for ax in list(axes.flat)[len(titles):]:
    ax.set_visible(False)
  fig.tight_layout()
  fig.savefig(out, format="png", dpi=80)
  plt.close(fig)
  return titles


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", action="append", required=True,
                      help="A run's workdir; repeat to compare runs.")
  parser.add_argument("--out", default="curves.png", help="Output PNG path.")
  args = parser.parse_args(argv)
  titles = plot(args.workdir, args.out)
  print(f"Wrote {args.out}: {', '.join(titles)}.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
