"""tools/bench_launch.py: cold/warm launch pairs of the trainer's command line.

The real trainer takes 5-12 s per launch here, so the orchestration is
checked against a stand-in interpreter (FAKE below) that answers like the
trainer from what it is given: a launch "compiles" (10 s, or 8 s for a
resume) when its cache directory is empty and "reads the cache" (4 s, or
2 s) when a launch before it left an entry there. The numbers the tool
reports then follow from the cache and workdir handling alone. The real
trainer's log line is checked in tests/test_program.py.
"""
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "bench_launch.py")
CONFIG = os.path.join(REPO, "big_vision", "configs", "vit_digits.py")

FAKE = r'''#!{python}
import json, os, sys
args = sys.argv[1:]
assert args[:2] == ["-m", "big_vision.train"], args
workdir = args[args.index("--workdir") + 1]
cache = [a for a in args if a.startswith("--compilation_cache=")][0]
cache = cache.split("=", 1)[1]
with open(os.environ["FAKE_CALLS"], "a") as f:
  f.write(json.dumps(args) + "\n")
if cache == "off":  # The preparatory run of --resume: leaves a checkpoint.
  os.makedirs(os.path.join(workdir, "checkpoints"))
  print("Launch to first step done: 99.00 s.")
  sys.exit(0)
resumed = os.path.isdir(os.path.join(workdir, "checkpoints"))
warm = bool(os.listdir(cache))
open(os.path.join(cache, "entry"), "w").close()
seconds = {{(False, False): 10, (False, True): 4, (True, False): 8,
           (True, True): 2}}[resumed, warm]
print("I1205 train.py:326] Launch to first step done: %.2f s." % seconds,
      file=sys.stderr, flush=True)
if os.environ.get("FAKE_TRAIN_ON"):  # The rest of a long run.
  import time
  time.sleep(float(os.environ["FAKE_TRAIN_ON"]))
  open(os.path.join(os.path.dirname(os.environ["FAKE_CALLS"]), "finished"),
       "w").close()
'''


def _tool():
  spec = importlib.util.spec_from_file_location("bench_launch_tool", TOOL)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.fixture
def fake_python(tmp_path, monkeypatch):
  path = tmp_path / "fake_python"
  path.write_text(FAKE.format(python=sys.executable))
  path.chmod(0o755)
  calls = tmp_path / "calls.jsonl"
  monkeypatch.setenv("FAKE_CALLS", str(calls))
  return str(path), calls


def _run(fake, *args):
  return subprocess.run([sys.executable, TOOL, "--python", fake, *args],
                        capture_output=True, text=True, check=False)


def test_summary_of_known_pairs():
  tool = _tool()
  pairs = [tool.Pair(10.0, 5.0), tool.Pair(12.0, 4.0), tool.Pair(8.0, 6.0)]
  assert [round(p.ratio, 6) for p in pairs] == [0.5, round(1 / 3, 6), 0.75]
  assert tool.summary(pairs) == [
      "cold: median 10.00, range 8.00-12.00 s",
      "warm: median 5.00, range 4.00-6.00 s",
      "warm/cold, ratio of the medians: 0.500",
      "warm/cold, per pair: median 0.500, range 0.333-0.750",
  ]


def test_launch_seconds_reads_the_trainers_line():
  tool = _tool()
  assert tool.launch_seconds(
      "x\nI1205 train.py:326] Launch to first step done: 5.43 s.\n") == 5.43
  assert tool.launch_seconds("Launch to first step done: 6.4 s.") == 6.4
  assert tool.launch_seconds("no such line") is None


def test_each_pair_fills_a_new_cache_and_the_warm_launch_reads_it(
    fake_python):
  fake, calls = fake_python
  done = _run(fake, "--config", CONFIG, "--pairs", "3",
              "--config.total_steps=2")
  assert done.returncode == 0, done.stderr
  lines = done.stdout.splitlines()
  assert lines[:3] == [f"pair {i}: cold 10.00 s, warm 4.00 s, warm/cold "
                       "0.400" for i in (1, 2, 3)]
  assert lines[3:7] == [
      "cold: median 10.00, range 10.00-10.00 s",
      "warm: median 4.00, range 4.00-4.00 s",
      "warm/cold, ratio of the medians: 0.400",
      "warm/cold, per pair: median 0.400, range 0.400-0.400"]
  assert re.fullmatch(r"machine: \d+ CPUs, 1-minute load average [0-9.]+ "
                      r"before the launches, [0-9.]+ after", lines[7])
  launches = [json.loads(line) for line in calls.read_text().splitlines()]
  assert len(launches) == 6
  workdirs = {a[a.index("--workdir") + 1] for a in launches}
  assert len(workdirs) == 6  # A fresh workdir for every launch.
  for a in launches:  # The user's arguments reach every launch.
    assert f"--config={CONFIG}" in a and "--config.total_steps=2" in a


def test_resume_times_launches_that_restore_a_prepared_checkpoint(
    fake_python):
  fake, calls = fake_python
  done = _run(fake, "--config", CONFIG, "--pairs", "2", "--resume",
              "--resume_at", "3", "--config.total_steps=6")
  assert done.returncode == 0, done.stderr
  assert done.stdout.splitlines()[:2] == [
      f"pair {i}: cold 8.00 s, warm 2.00 s, warm/cold 0.250" for i in (1, 2)]
  launches = [json.loads(line) for line in calls.read_text().splitlines()]
  prep = launches[0]
  assert "--compilation_cache=off" in prep
  assert prep[-1] == "--config.total_steps=3"  # The last one wins.
  assert len(launches) == 5


def test_a_launch_is_stopped_once_it_has_logged_its_figure(
    fake_python, monkeypatch):
  fake, calls = fake_python
  monkeypatch.setenv("FAKE_TRAIN_ON", "5")
  done = _run(fake, "--config", CONFIG, "--pairs", "1")
  assert done.returncode == 0, done.stderr
  assert done.stdout.splitlines()[0] == (
      "pair 1: cold 10.00 s, warm 4.00 s, warm/cold 0.400")
  # Killed after its line: neither launch got to the end of its run.
  assert not (calls.parent / "finished").exists()


def test_errors_name_the_bad_value(fake_python, tmp_path):
  fake, _ = fake_python
  done = _run(fake, "--config", "no/such/config.py")
  assert done.returncode == 2
  assert "--config=no/such/config.py: no file 'no/such/config.py'" in (
      done.stderr)
  done = _run(fake, "--config", CONFIG, "--pairs", "0")
  assert done.returncode == 2 and "--pairs=0 must be >= 1" in done.stderr
  done = _run(fake, "--config", CONFIG, "--workdir", str(tmp_path))
  assert done.returncode == 2 and "its own workdir" in done.stderr
  failing = tmp_path / "failing_python"
  failing.write_text(f"#!{sys.executable}\nimport sys\n"
                     "print('boom: the config is broken')\nsys.exit(3)\n")
  failing.chmod(0o755)
  done = _run(str(failing), "--config", CONFIG, "--pairs", "1")
  assert done.returncode == 1
  assert "exited with status 3 without its launch line" in done.stderr
  assert "boom: the config is broken" in done.stderr
