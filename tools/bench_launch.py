r"""Launch to first step, with an empty and with a warm compilation cache.

  python tools/bench_launch.py --config big_vision/configs/vit_digits.py \
      [--pairs 5] [--resume] [--config.x=y ...]

What it measures is what a user waits for: each launch is the trainer's own
command line (`python -m big_vision.train`) in a fresh process, and the
figure is the trainer's log line "Launch to first step done: X s" (from
process start, imports included, to the first train step's results on the
host). A launch is stopped (killed) once it has logged that line, so a
config is timed as written, whatever its length. A pair is two launches of
the same command that share a compilation cache directory, new and empty
for each pair: the first ("cold") compiles everything and fills it, the
second ("warm") reads it, as a relaunch or a resume does. Every launch gets
a workdir of its own, so both start from the same state:

* default: a fresh run (init, step-0 evaluations, first step);
* --resume: a resumed run. One preparatory launch (compilation cache off,
  `--config.total_steps=<--resume_at>`, run to its end) writes a
  checkpoint; each timed launch starts from a copy of that workdir, so it
  restores instead of initialising and runs no step-0 evaluations. The
  timed launches must run past --resume_at (the config's own length, or a
  `--config.total_steps`).

Every other argument (`--config.x=y`, `--xla_opt=...`) is passed to every
launch. Output: one line per pair, then the medians and the two ratios
(of the medians, and the median of the per-pair ratios), and the machine's
load average before and after. Pairs are measured one after the other; on
a loaded machine both figures move (each launch is one busy process: a
load average well above 1 before the launches means something else runs).
"""
import argparse
import dataclasses
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

LAUNCH_LINE = re.compile(r"Launch to first step done: ([0-9.]+) s")


@dataclasses.dataclass
class Pair:
  cold_s: float
  warm_s: float

  @property
  def ratio(self) -> float:
    return self.warm_s / self.cold_s


def launch_seconds(log: str) -> float | None:
  """The trainer's launch-to-first-step figure in `log`, or None."""
  match = LAUNCH_LINE.search(log)
  return float(match.group(1)) if match else None


def summary(pairs: list[Pair]) -> list[str]:
  """The medians, ranges and ratios of `pairs`, as lines of text."""
  cold = [p.cold_s for p in pairs]
  warm = [p.warm_s for p in pairs]
  ratios = [p.ratio for p in pairs]

  def spread(xs, fmt):
    return f"median {fmt.format(statistics.median(xs))}, range " + (
        f"{fmt.format(min(xs))}-{fmt.format(max(xs))}")
  return [
      f"cold: {spread(cold, '{:.2f}')} s",
      f"warm: {spread(warm, '{:.2f}')} s",
      "warm/cold, ratio of the medians: "
      f"{statistics.median(warm) / statistics.median(cold):.3f}",
      f"warm/cold, per pair: {spread(ratios, '{:.3f}')}",
  ]


class LaunchFailed(RuntimeError):
  pass


def _launch(python: str, workdir: str, cache: str, args: list[str],
            cwd: str, until_line: bool = True) -> float:
  """Runs one launch; returns its launch-to-first-step seconds.

  With `until_line`, the launch is killed as soon as it has logged the
  figure: the rest of the run (a config's whole schedule) is not what is
  measured, and its workdir is thrown away.
  """
  cmd = [python, "-m", "big_vision.train", "--workdir", workdir,
         f"--compilation_cache={cache}", *args]
  proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  log, seconds = [], None
  for line in proc.stdout:
    log.append(line)
    seconds = seconds if seconds is not None else launch_seconds(line)
    if seconds is not None and until_line:
      proc.kill()
      break
  proc.stdout.close()
  status = proc.wait()
  if seconds is None or (status and not until_line):
    tail = "".join(log[-20:]).rstrip()
    raise LaunchFailed(
        f"{' '.join(cmd)}\nexited with status {status} "
        f"{'without' if seconds is None else 'after'} its launch line; the "
        f"end of its log:\n{tail}")
  return seconds


def measure(args: list[str], pairs: int, resume_at: int | None,
            python: str = sys.executable, cwd: str = ".",
            echo=print) -> list[Pair]:
  """`pairs` cold/warm launch pairs of the trainer with `args`."""
  out = []
  with tempfile.TemporaryDirectory(prefix="bench_launch_") as tmp:
    start = None
    if resume_at is not None:
      start = os.path.join(tmp, "resume_from")
      _launch(python, start, "off",  # Runs to its end: its checkpoint.
              [*args, f"--config.total_steps={resume_at}"], cwd,
              until_line=False)
    for i in range(pairs):
      cache = os.path.join(tmp, f"cache{i}")
      os.makedirs(cache)
      seconds = []
      for kind in ("cold", "warm"):
        workdir = os.path.join(tmp, f"{kind}{i}")
        if start is not None:
          shutil.copytree(start, workdir)
        seconds.append(_launch(python, workdir, cache, args, cwd))
        shutil.rmtree(workdir, ignore_errors=True)
      shutil.rmtree(cache)
      out.append(Pair(*seconds))
      echo(f"pair {i + 1}: cold {out[-1].cold_s:.2f} s, warm "
           f"{out[-1].warm_s:.2f} s, warm/cold {out[-1].ratio:.3f}")
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      epilog="Other arguments go to every launch (e.g. --config.x=y).")
  parser.add_argument("--config", required=True,
                      help="config module[:args], as for big_vision.train")
  parser.add_argument("--pairs", type=int, default=5)
  parser.add_argument("--resume", action="store_true",
                      help="time resumed launches (see the docstring)")
  parser.add_argument("--resume_at", type=int, default=2,
                      help="with --resume: the step the launches resume at")
  parser.add_argument("--python", default=sys.executable,
                      help="the interpreter that runs the trainer")
  known, rest = parser.parse_known_args(argv)
  if known.pairs < 1:
    parser.error(f"--pairs={known.pairs} must be >= 1.")
  if known.resume and known.resume_at < 1:
    parser.error(f"--resume_at={known.resume_at} must be >= 1.")
  bad = [a for a in rest if a.startswith(("--workdir", "--compilation_cache"))]
  if bad:
    parser.error(f"{bad[0]}: every launch gets its own workdir and cache "
                 "from this tool.")
  root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
  path, colon, config_args = known.config.partition(":")
  if not os.path.exists(path):
    parser.error(f"--config={known.config}: no file {path!r}.")
  config = os.path.abspath(path) + colon + config_args  # Launched from root.
  load_before = os.getloadavg()[0]
  try:
    pairs = measure([f"--config={config}", *rest], known.pairs,
                    known.resume_at if known.resume else None,
                    python=known.python, cwd=root)
  except LaunchFailed as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print("\n".join(summary(pairs)))
  print(f"machine: {os.cpu_count()} CPUs, 1-minute load average "
        f"{load_before:.2f} before the launches, {os.getloadavg()[0]:.2f} "
        "after")
  return 0


if __name__ == "__main__":
  sys.exit(main())
