r"""Chaos test of resumability: kill a training run at random moments.

  python tools/chaos.py --kills 5              # seeded; ~2-4 minutes on CPU
  python tools/chaos.py --kills 10 --seed 3 --steps 60 --keep_workdirs

Runs `python -m big_vision.train` on a tiny digits config twice:
  1. uninterrupted, to completion (the reference);
  2. under chaos: launched, SIGKILLed at a random moment, relaunched with the
     same command, ... `--kills` times, then left to finish;
then the same with a two-process job (jax.distributed on localhost, one CPU
device each), where each kill hits ONE of the two processes (the job is then
relaunched whole, as a cluster scheduler does), `--process_kills` times.
and checks that the chaotic run ends with bit-identical params and a
`metrics.jsonl` in which every training step appears exactly once.

Kill moments are drawn (from `--seed`) among three kinds:
  startup  a random time after launch, before the first new step (imports,
           config check, restore, compilation);
  step     a random time after a random training step has been logged;
  ckpt     the moment a checkpoint's `*.orbax-checkpoint-tmp` directory
           appears, i.e. while orbax is writing it.
Exit status 0 iff the final params and metrics match.

What the safety costs:

  python tools/chaos.py --measure [--measure_steps 200 --repeats 3]

prints the time from launch to the first `error:` line for three bad
configs, and vit_digits.py's step rate with deterministic vs
non-deterministic tf.data and with checkpoints every 0 / 50 / 10 steps
(each variant in its own process, wall time between step 10 and the end,
so the blocking part of checkpoint saves counts).

The helpers (`write_tiny_config`, `launch`, `wait_for_step`, ...) are also
used by tests/test_never_lose.py.
"""
import argparse
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A ViT small enough that a 30-step run is dominated by process start-up.
# No evaluators: they do not touch params, and they cost time.
TINY_CONFIG = '''"""Tiny digits run for tools/chaos.py (written by it)."""
import ml_collections
from big_vision.configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, steps=30, ckpt=5, batch=16)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_steps = arg.steps
  config.num_classes = 10
  config.loss = "softmax_xent"
  config.input = common.digits_input(res=16, batch_size=arg.batch)
  config.model_name = "vit"
  config.model = dict(width=32, depth=1, mlp_dim=64, num_heads=2,
                      patch_size=(4, 4), pool_type="gap")
  config.optax_name = "scale_by_adam"
  config.lr = 2e-3
  config.wd = 1e-4
  config.schedule = dict(warmup_steps=3, decay_type="cosine")
  config.grad_clip_norm = 1.0
  config.mixup = dict(p=0.2)  # Exercises the per-step rng.
  config.log_training_steps = 1
  config.ckpt_steps = arg.ckpt
  config.evals = ml_collections.ConfigDict()
  return config
'''


def write_tiny_config(directory: str) -> str:
  path = os.path.join(directory, "chaos_tiny_config.py")
  with open(path, "w") as f:
    f.write(TINY_CONFIG)
  return path


def child_env(devices: int | None = None, extra: dict | None = None) -> dict:
  """The environment of the trainer processes; `devices`: CPU device count;
  `extra`: more variables (e.g. the test hooks, see `pause_env`)."""
  env = dict(os.environ)
  env.update(extra or {})
  if devices:
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(
        flags + [f"--xla_force_host_platform_device_count={devices}"])
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  env.setdefault("CUDA_VISIBLE_DEVICES", "")
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def train_cmd(config: str, workdir: str, overrides=()) -> list[str]:
  return [sys.executable, "-m", "big_vision.train", "--config", config,
          "--workdir", workdir, *overrides]


def launch(config: str, workdir: str, overrides=(), log=None, devices=None,
           env=None):
  """Starts a training process; stdout+stderr go to `log` (a file path)."""
  out = open(log, "ab") if log else subprocess.DEVNULL  # pylint: disable=consider-using-with
  return subprocess.Popen(train_cmd(config, workdir, overrides), cwd=REPO,
                          env=child_env(devices, env), stdout=out,
                          stderr=subprocess.STDOUT)


# Test hooks of the trainer (big_vision/train.py, big_vision/checkpoint.py):
# the process pauses at a known point, announced by a file in the workdir,
# until that file is removed (or the process killed).
PAUSE_AT_STEP = "BIG_VISION_TEST_PAUSE_AT_STEP"  # After step N is done.
PAUSE_IN_SAVE = "BIG_VISION_TEST_PAUSE_IN_SAVE"  # Mid-write of checkpoint N.


def pause_file(workdir: str, step: int, process: int | None = None) -> str:
  """The file a trainer paused after `step` writes (`process`: of several)."""
  suffix = f".{process}" if process is not None else ""
  return os.path.join(workdir, f".paused_at_{step}{suffix}")


def save_pause_file(workdir: str, step: int) -> str:
  return os.path.join(workdir, f".paused_in_save_{step}")


def wait_for_file(procs, path: str, timeout: float = 600) -> bool:
  """True once `path` exists; False if a process in `procs` exits first."""
  procs = procs if isinstance(procs, (list, tuple)) else [procs]
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if os.path.exists(path):
      return True
    if any(p.poll() is not None for p in procs):
      return os.path.exists(path)
    time.sleep(0.005)
  return False


def resume(path: str):
  """Lets a paused trainer go on."""
  os.remove(path)


def logged_steps(workdir: str) -> list[int]:
  """Steps of the training-metric lines of metrics.jsonl (torn lines skipped)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  steps = []
  with open(path) as f:
    for line in f:
      try:
        d = json.loads(line)
      except ValueError:
        continue
      if "training_loss" in d:
        steps.append(d["step"])
  return steps


def last_step(workdir: str) -> int:
  steps = logged_steps(workdir)
  return steps[-1] if steps else 0


def _poll(proc, condition, timeout: float, interval: float):
  """True once condition() holds; False if proc exits or time runs out."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if condition():
      return True
    if proc.poll() is not None:
      return condition()
    time.sleep(interval)
  return False


def wait_for_step(proc, workdir: str, step: int, timeout: float = 600) -> bool:
  return _poll(proc, lambda: last_step(workdir) >= step, timeout, 0.01)


def tmp_dirs(workdir: str) -> list[str]:
  return glob.glob(os.path.join(workdir, "checkpoints", "*.orbax-checkpoint-tmp*"))


def wait_for_ckpt_write(proc, workdir: str, since_ns: int,
                        timeout: float = 600) -> str | None:
  """A checkpoint tmp dir created after `since_ns`, as soon as it appears."""
  found = []

  def fresh():
    for d in tmp_dirs(workdir):
      try:
        if os.stat(d).st_ctime_ns >= since_ns:
          found.append(d)
          return True
      except FileNotFoundError:
        continue
    return False
  return found[0] if _poll(proc, fresh, timeout, 0.0005) else None


def kill(proc, sig=signal.SIGKILL):
  if proc.poll() is None:
    proc.send_signal(sig)
  return proc.wait()


def run_to_completion(config, workdir, overrides=(), log=None,
                      timeout: float = 900) -> int:
  proc = launch(config, workdir, overrides, log)
  try:
    return proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    kill(proc)
    raise


def free_port() -> int:
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def launch_processes(config: str, workdir: str, n: int = 2, overrides=(),
                     log=None, devices: int = 1, env=None) -> list:
  """`n` trainer processes forming one jax.distributed job on localhost."""
  port = free_port()
  return [launch(config, workdir, overrides, log, devices, {
      "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
      "JAX_NUM_PROCESSES": str(n), "JAX_PROCESS_ID": str(i), **(env or {})})
          for i in range(n)]


def wait_all(procs, timeout: float = 900) -> list[int]:
  deadline = time.monotonic() + timeout
  codes = []
  for p in procs:
    try:
      codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
    except subprocess.TimeoutExpired:
      codes.append(kill(p))
  return codes


def final_params(workdir: str) -> dict:
  from big_vision import checkpoint  # pylint: disable=g-import-not-at-top
  from big_vision import utils  # pylint: disable=g-import-not-at-top
  return utils.flatten_dict(checkpoint.load_params(workdir))


def compare(ref_workdir: str, workdir: str, total_steps: int) -> list[str]:
  """Differences between two finished runs (empty: identical)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  problems = []
  a, b = final_params(ref_workdir), final_params(workdir)
  if a.keys() != b.keys():
    problems.append(f"param names differ: {sorted(a.keys() ^ b.keys())[:5]}")
  for k in sorted(a.keys() & b.keys()):
    if a[k].shape != b[k].shape or not np.array_equal(a[k], b[k]):
      diff = (np.abs(a[k].astype(np.float64) - b[k]).max()
              if a[k].shape == b[k].shape else "shape")
      problems.append(f"param {k} differs (max abs diff {diff})")
  steps = logged_steps(workdir)
  if steps != list(range(1, total_steps + 1)):
    problems.append(f"metrics.jsonl training steps are not 1..{total_steps} "
                    f"exactly once: {steps}")
  return problems


def chaos_run(config, workdir, *, kills, rng, total_steps, startup_s, log,
              overrides=(), say=print):
  """Kills `kills` launches at random moments, then finishes the run."""
  events = []
  for i in range(kills):
    progress = last_step(workdir)
    # Every launch writes at least one more checkpoint (the final one).
    kinds = ["startup", "ckpt"] + (["step"] if progress + 1 < total_steps
                                   else [])
    kind = rng.choice(kinds)
    since = time.time_ns()
    proc = launch(config, workdir, overrides, log)
    what = ""
    if kind == "startup":
      delay = rng.uniform(0.0, startup_s)
      _poll(proc, lambda: False, delay, 0.01)
      what = f"{delay:.2f}s after launch"
    elif kind == "step":
      target = rng.randint(progress + 1, total_steps - 1)
      wait_for_step(proc, workdir, target)
      delay = rng.uniform(0.0, 0.3)
      _poll(proc, lambda: False, delay, 0.005)
      what = f"{delay:.2f}s after step {target} was logged"
    else:
      d = wait_for_ckpt_write(proc, workdir, since)
      what = (f"while writing {os.path.basename(d)}" if d else
              "(no checkpoint write seen)")
    before = last_step(workdir)
    code = kill(proc)
    # Tmp dirs this launch created and left: the kill hit a write.
    left = [os.path.basename(d) for d in tmp_dirs(workdir)
            if os.stat(d).st_ctime_ns >= since]
    event = dict(kill=i + 1, kind=kind, when=what, exit_code=code,
                 last_logged_step=before, tmp_left=left)
    if code == 0:
      event["note"] = "finished before the kill"
    events.append(event)
    say(f"kill {i + 1}/{kills}: {kind:7s} {what}; last logged step {before}"
        f"{'; left unfinished: ' + ', '.join(left) if left else ''}"
        f"{'; (had already finished)' if code == 0 else ''}")
  code = run_to_completion(config, workdir, overrides, log)
  say(f"final launch: exit code {code}")
  return events, code


def chaos_run_processes(config, workdir, *, kills, rng, total_steps,
                        startup_s, log, n=2, say=print):
  """Like chaos_run, for an `n`-process job: each time ONE process is
  SIGKILLed at a random moment. The others cannot go on without it (they
  would wait in a collective until jax's heartbeat timeout), so, as a
  cluster scheduler does, the job is then stopped and relaunched whole."""
  events = []
  for i in range(kills):
    progress = last_step(workdir)
    kinds = ["startup", "ckpt"] + (["step"] if progress + 1 < total_steps
                                   else [])
    kind = rng.choice(kinds)
    victim = rng.randrange(n)
    since = time.time_ns()
    procs = launch_processes(config, workdir, n, log=log)
    if kind == "startup":
      delay = rng.uniform(0.0, startup_s)
      _poll(procs[victim], lambda: False, delay, 0.01)
      what = f"{delay:.2f}s after launch"
    elif kind == "step":
      target = rng.randint(progress + 1, total_steps - 1)
      wait_for_step(procs[victim], workdir, target)
      what = f"after step {target} was logged"
    else:
      d = wait_for_ckpt_write(procs[victim], workdir, since)
      what = (f"while writing {os.path.basename(d)}" if d else
              "(no checkpoint write seen)")
    before = last_step(workdir)
    code = kill(procs[victim])
    rest = [kill(p) for j, p in enumerate(procs) if j != victim]
    left = [os.path.basename(d) for d in tmp_dirs(workdir)
            if os.stat(d).st_ctime_ns >= since]
    events.append(dict(kill=i + 1, kind=kind, when=what, process=victim,
                       exit_code=code, last_logged_step=before,
                       tmp_left=left))
    say(f"two-process kill {i + 1}/{kills}: process {victim}, {kind:7s} "
        f"{what}; last logged step {before}"
        f"{'; left unfinished: ' + ', '.join(left) if left else ''}"
        f"{'; (had already finished)' if code == 0 else ''}"
        f"; the other(s) stopped with {rest}")
  codes = wait_all(launch_processes(config, workdir, n, log=log))
  say(f"final two-process launch: exit codes {codes}")
  return events, max(abs(c) for c in codes)


# ----------------------------------------------------------------------------
# --measure: what the safety costs.
# ----------------------------------------------------------------------------
# Variants of vit_digits.py (evals off), each in its own process:
#   (tf.data deterministic?, ckpt_steps)
VARIANTS = {
    "det_ckpt0": (True, 0),
    "det_ckpt50": (True, 50),
    "det_ckpt10": (True, 10),
    "nondet_ckpt0": (False, 0),
}


def _measure_one(variant: str, steps: int, workdir: str):
  """In-process run of one variant; prints a JSON line of its step rate."""
  deterministic, ckpt_steps = VARIANTS[variant]
  from big_vision import train  # pylint: disable=g-import-not-at-top
  from big_vision import utils  # pylint: disable=g-import-not-at-top
  if not deterministic:
    # The knob a user would flip for speed: let tf.data emit elements in
    # completion order. (Patched here; the library has no such switch.)
    from big_vision.datasets.tf_import import tf  # pylint: disable=g-import-not-at-top
    from big_vision import input_pipeline  # pylint: disable=g-import-not-at-top
    real_map = tf.data.Dataset.map

    def nondet_map(self, *a, **k):
      if k.get("deterministic") is not None:
        k["deterministic"] = False
      return real_map(self, *a, **k)
    tf.data.Dataset.map = nondet_map

    def options():
      o = tf.data.Options()
      o.deterministic = False
      return o
    input_pipeline._deterministic_options = options  # pylint: disable=protected-access
  ticks = []
  real_tick = utils.Chrono.tick

  def tick(self, step):
    ticks.append((step, time.monotonic()))
    return real_tick(self, step)
  utils.Chrono.tick = tick

  spec = __import__("importlib.util").util.spec_from_file_location(
      "cfg", os.path.join(REPO, "big_vision", "configs", "vit_digits.py"))
  mod = __import__("importlib.util").util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = mod.get_config()
  config.total_steps = steps
  del config["total_epochs"]
  config.evals = {}
  config.log_training_steps = 10
  config.ckpt_steps = ckpt_steps
  train.train(config, workdir)
  # From the first log after compilation (step 10) to the last one: wall
  # time, so blocking checkpoint work counts (Chrono's own steps_per_sec
  # pauses during saves).
  (s0, t0), (s1, t1) = ticks[1], ticks[-1]
  intervals = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(ticks[1:],
                                                             ticks[2:])]
  intervals.sort()
  print(json.dumps(dict(variant=variant, steps_per_sec=(s1 - s0) / (t1 - t0),
                        median_steps_per_sec=1 / intervals[len(intervals) // 2]
                        )), flush=True)


def _time_to_error(args: list[str], workdir: str) -> tuple[float, str]:
  """Seconds from launch to the first `error:` line on stderr."""
  t0 = time.monotonic()
  proc = subprocess.Popen(
      [sys.executable, "-m", "big_vision.train", *args, "--workdir", workdir],
      cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE, text=True)
  for line in proc.stderr:
    if line.startswith("error:"):
      dt = time.monotonic() - t0
      kill(proc)
      return dt, line.strip()
  proc.wait()
  return float("nan"), f"(no error line; exit code {proc.returncode})"


def measure(steps: int, repeats: int, root: str):
  """Prints the cost of determinism and checkpointing, and time to error."""
  digits = "big_vision/configs/vit_digits.py"
  bad = {
      "key typo (--config.lrr=0.1)":
          ["--config", digits, "--config.lrr=0.1"],
      "pp typo (--config.input.pp=...value_rang...)":
          ["--config", digits,
           "--config.input.pp=decode|resize(20)|value_rang(-1, 1)"],
      "dataset typo (--config.input.data.name=digitz)":
          ["--config", digits, "--config.input.data.name=digitz"],
  }
  print("time from launch to the first error line (median of "
        f"{repeats}):")
  for name, args in bad.items():
    times, line = [], ""
    for r in range(repeats):
      dt, line = _time_to_error(args, os.path.join(root, f"err{r}"))
      times.append(dt)
    times.sort()
    print(f"  {name}: {times[len(times) // 2]:.2f}s  [{line[:90]}...]")

  print(f"vit_digits.py step rate over {steps} steps (evals off; median of "
        f"{repeats} runs, variants interleaved):")
  rates = {v: [] for v in VARIANTS}
  for r in range(repeats):
    for v in VARIANTS:
      wd = os.path.join(root, f"{v}_{r}")
      shutil.rmtree(wd, ignore_errors=True)
      out = subprocess.run(
          [sys.executable, os.path.abspath(__file__), "--_measure_one", v,
           "--steps", str(steps), "--workdir", wd], cwd=REPO,
          env=child_env(), capture_output=True, text=True, check=False)
      lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
      if not lines:
        print(f"  {v}: failed: {out.stderr[-2000:]}")
        continue
      rates[v].append(json.loads(lines[-1]))
  base = None
  for v, rs in rates.items():
    if not rs:
      continue
    overall = sorted(r["steps_per_sec"] for r in rs)[len(rs) // 2]
    med = sorted(r["median_steps_per_sec"] for r in rs)[len(rs) // 2]
    base = base or overall
    det, ckpt = VARIANTS[v]
    print(f"  {'deterministic' if det else 'NON-deterministic':17s} tf.data, "
          f"ckpt_steps={ckpt:3d}: {overall:6.2f} steps/s overall "
          f"({100 * (overall / base - 1):+5.1f}% vs first row), "
          f"{med:6.2f} median over 10-step windows")


def _two_process_phase(args, rng, arg, root, log) -> list[str]:
  """Two-process reference and chaotic runs; their differences."""
  ref, chaos = (os.path.join(root, "reference2"), os.path.join(root, "chaos2"))
  for d in (ref, chaos):
    shutil.rmtree(d, ignore_errors=True)
  t0 = time.monotonic()
  procs = launch_processes(arg, ref, log=log)
  wait_for_step(procs[0], ref, 1)
  startup_s = time.monotonic() - t0
  codes = wait_all(procs)
  if any(codes):
    return [f"the two-process reference run exited with {codes}; see {log}"]
  print(f"two-process reference run: {time.monotonic() - t0:.1f}s")
  events, code = chaos_run_processes(
      arg, chaos, kills=args.process_kills, rng=rng, total_steps=args.steps,
      startup_s=startup_s, log=log)
  landed = sum(e["exit_code"] != 0 for e in events)
  print(f"{landed}/{args.process_kills} kills of one process interrupted the "
        "two-process run.")
  problems = [f"the final two-process launch exited with {code}"] if code else []
  return problems + [f"two processes: {p}" for p in compare(ref, chaos,
                                                           args.steps)]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--kills", type=int, default=5)
  parser.add_argument("--measure", action="store_true",
                      help="Instead: measure the cost of determinism and "
                      "checkpointing, and the time to a config error.")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--measure_steps", type=int, default=200)
  parser.add_argument("--_measure_one", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--process_kills", type=int, default=2,
                      help="Then the same with a two-process (jax."
                      "distributed, localhost) run, killing one process each "
                      "time; 0 skips it.")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--ckpt_steps", type=int, default=5)
  parser.add_argument("--workdir", default=None,
                      help="Where to put both runs (default: a temp dir).")
  parser.add_argument("--keep_workdirs", action="store_true")
  args = parser.parse_args(argv)
  if args._measure_one:  # pylint: disable=protected-access
    _measure_one(args._measure_one, args.steps, args.workdir)  # pylint: disable=protected-access
    return 0

  rng = random.Random(args.seed)
  root = args.workdir or tempfile.mkdtemp(prefix="bv_chaos_")
  os.makedirs(root, exist_ok=True)
  if args.measure:
    measure(args.measure_steps, args.repeats, root)
    if not args.keep_workdirs and not args.workdir:
      shutil.rmtree(root, ignore_errors=True)
    return 0
  config = write_tiny_config(root)
  arg = f"{config}:steps={args.steps},ckpt={args.ckpt_steps}"
  ref, chaos = os.path.join(root, "reference"), os.path.join(root, "chaos")
  for d in (ref, chaos):
    shutil.rmtree(d, ignore_errors=True)
  log = os.path.join(root, "train.log")
  print(f"chaos: {args.kills} kills, seed {args.seed}, {args.steps} steps, "
        f"checkpoint every {args.ckpt_steps}; logs in {log}")

  t0 = time.monotonic()
  proc = launch(arg, ref, log=log)
  wait_for_step(proc, ref, 1)
  startup_s = time.monotonic() - t0
  code = proc.wait()
  ref_s = time.monotonic() - t0
  if code != 0:
    print(f"FAIL: the reference run exited with {code}; see {log}")
    return 1
  print(f"reference run: {ref_s:.1f}s ({startup_s:.1f}s to the first step)")

  t0 = time.monotonic()
  events, code = chaos_run(arg, chaos, kills=args.kills, rng=rng,
                           total_steps=args.steps, startup_s=startup_s,
                           log=log)
  print(f"chaotic run: {time.monotonic() - t0:.1f}s over {args.kills + 1} "
        "launches")
  problems = [f"the final launch exited with {code}"] if code else []
  problems += compare(ref, chaos, args.steps)
  landed = sum(e["exit_code"] != 0 for e in events)
  in_write = sum(bool(e["tmp_left"]) for e in events)
  print(f"{landed}/{args.kills} kills interrupted the run "
        f"({in_write} mid-checkpoint-write).")
  if args.process_kills:
    problems += _two_process_phase(args, rng, arg, root, log)
  if problems:
    print("FAIL:\n  " + "\n  ".join(problems))
  else:
    print(f"PASS: final params bit-identical to the uninterrupted run"
          f"{'s' if args.process_kills else ''}; metrics.jsonl has steps "
          f"1..{args.steps} exactly once.")
  if not args.keep_workdirs and not args.workdir:
    shutil.rmtree(root, ignore_errors=True)
  return 1 if problems else 0


if __name__ == "__main__":
  sys.exit(main())
