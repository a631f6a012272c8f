r"""Prints the final evaluator metrics of a run from its metrics.jsonl.

  python tools/print_result.py --workdir workdirs/demo [--metric test/prec@1]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from big_vision import metric_writer  # pylint: disable=g-import-not-at-top


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--metric", default="test/prec@1",
                      help="The headline metric printed last.")
  args = parser.parse_args()
  lines = metric_writer.read(args.workdir)
  if not lines:
    sys.exit(f"No metrics in {args.workdir}.")
  latest = {}
  for line in lines:
    for k, v in line.items():
      if k != "step" and "/" in k:
        latest[k] = (line["step"], v)
  for k, (step, v) in sorted(latest.items()):
    print(f"{k} (step {step}): {v:.4f}" if isinstance(v, float) else
          f"{k} (step {step}): {v}")
  if args.metric in latest:
    step, v = latest[args.metric]
    print(f"Final {args.metric} at step {step}: {v:.4f}")
  else:
    sys.exit(f"Metric {args.metric!r} not found; have: {sorted(latest)}.")


if __name__ == "__main__":
  main()
