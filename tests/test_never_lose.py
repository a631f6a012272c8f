"""Never lose a run: exact resume, preemption, crash-safe checkpoints, bad data.

The end-to-end test drives real `python -m big_vision.train` processes (the
helpers live in tools/chaos.py): SIGTERM, then SIGKILL during start-up, in
the middle of training and in the middle of a checkpoint write, then a
damaged newest checkpoint; the run must still end bit-identical to an
uninterrupted one, with every step in metrics.jsonl exactly once (and the
redone steps' first lines kept in a side file). Every signal lands at a known
point: the trainer's test hooks pause it there (see tools/chaos.py), no test
sleeps or races the trainer. Also: a diverging run stops before
checkpointing NaN; two processes agree on the preemption step.
"""
import glob
import importlib.util
import json
import logging
import os
import re
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
from PIL import Image
import pytest

from big_vision import checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_chaos():
  spec = importlib.util.spec_from_file_location(
      "chaos", os.path.join(REPO, "tools", "chaos.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


chaos = _load_chaos()


# ----------------------------------------------------------------------------
# Checkpointer unit tests (in-process, small arrays).
# ----------------------------------------------------------------------------
def _state(i, n=1000):
  return {"params": {"w": jnp.arange(n, dtype=jnp.float32) + i},
          "opt": (jnp.full((3,), float(i)),), "step": jnp.int32(i)}


def _largest_array_file(step_dir):
  files = glob.glob(os.path.join(step_dir, "params", "**", "d", "*"),
                    recursive=True)
  return max(files, key=os.path.getsize)


def test_save_copies_arrays_to_host_before_returning(tmp_path):
  # train.py donates `state` to the next step right after ckpt.save(): the
  # checkpoint must hold the values at save time, not the updated buffers.
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  rep = NamedSharding(mesh, P())
  update = jax.jit(lambda s: jax.tree.map(lambda x: x * 1.5 + 1, s),
                   donate_argnums=(0,), in_shardings=rep, out_shardings=rep)
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  state = jax.device_put({"w": jnp.arange(1_000_000, dtype=jnp.float32)}, rep)
  expected = {}
  for step in (1, 2):
    state = update(state)
    expected[step] = np.array(state["w"])
    ckpt.save(step, {"params": state, "step": jnp.int32(step)})
    state = update(update(state))  # Overwrites the donated buffers at once.
  ckpt.wait()
  for step in (1, 2):
    got = checkpoint.Checkpointer(
        str(tmp_path), read_only=True).restore_params_to_host(step)
    np.testing.assert_array_equal(got["w"], expected[step])


@pytest.mark.parametrize("damage", ["truncate", "delete", "half_deleted"])
def test_damaged_newest_checkpoint_is_reported_and_skipped(tmp_path, damage,
                                                           caplog):
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  for step in (5, 10):
    ckpt.save(step, _state(step))
  ckpt.wait()
  victim = _largest_array_file(os.path.join(ckpt.directory, "10"))
  if damage == "truncate":
    with open(victim, "r+b") as f:
      f.truncate(os.path.getsize(victim) // 2)
  elif damage == "delete":
    os.remove(victim)
  else:  # What a kill in the middle of a recursive delete leaves.
    os.remove(victim)
    os.remove(os.path.join(ckpt.directory, "10", checkpoint.MANIFEST))
    victim = os.path.join(ckpt.directory, "10", checkpoint.MANIFEST)
  rel = os.path.relpath(victim, os.path.join(ckpt.directory, "10"))

  with caplog.at_level(logging.WARNING):
    # A reader (load_params, eval tools) skips it but leaves it in place.
    assert checkpoint.Checkpointer(str(tmp_path),
                                   read_only=True).latest_step() == 5
    assert os.path.isdir(os.path.join(ckpt.directory, "10"))
    np.testing.assert_array_equal(
        checkpoint.load_params(str(tmp_path))["w"], np.arange(1000) + 5.0)
    # The trainer's Checkpointer moves it aside, so step 10 can be redone.
    writer = checkpoint.Checkpointer(str(tmp_path))
    assert writer.latest_step() == 5
  text = caplog.text
  assert "step 10" in text and rel in text, text
  assert ("truncated" if damage == "truncate" else "missing") in text
  assert "using the previous complete one, step 5" in text
  assert not os.path.exists(os.path.join(ckpt.directory, "10"))
  assert glob.glob(os.path.join(ckpt.directory, "10.corrupt-*"))
  writer.save(10, _state(11))
  writer.wait()
  assert writer.latest_step() == 10
  np.testing.assert_array_equal(checkpoint.load_params(str(tmp_path))["w"],
                                np.arange(1000) + 11.0)


def _assert_step_10_trusted_then_guarded(tmp_path, caplog):
  """Step 10 (saved without its manifest) is used, not quarantined; the
  trainer's Checkpointer writes the manifest, which then catches damage."""
  directory = os.path.join(str(tmp_path), "checkpoints")
  assert not os.path.exists(os.path.join(directory, "10", checkpoint.MANIFEST))
  with caplog.at_level(logging.WARNING):
    assert checkpoint.Checkpointer(str(tmp_path),
                                   read_only=True).latest_step() == 10
    np.testing.assert_array_equal(checkpoint.load_params(str(tmp_path))["w"],
                                  np.arange(1000) + 10.0)
    writer = checkpoint.Checkpointer(str(tmp_path))
    assert writer.latest_step() == 10
  assert "incomplete or corrupt" not in caplog.text, caplog.text
  assert not glob.glob(os.path.join(directory, "*.corrupt-*"))
  assert os.path.exists(os.path.join(directory, "10", checkpoint.MANIFEST))
  assert not glob.glob(os.path.join(directory, checkpoint.PENDING + "*"))
  victim = _largest_array_file(os.path.join(directory, "10"))
  os.remove(victim)
  assert checkpoint.Checkpointer(str(tmp_path),
                                 read_only=True).latest_step() == 5


def test_manifest_write_failure_does_not_condemn_a_complete_checkpoint(
    tmp_path, monkeypatch, caplog):
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  ckpt.save(5, _state(5))
  ckpt.wait()
  real = checkpoint._list_files  # pylint: disable=protected-access

  def failing(directory):
    if os.path.basename(directory).startswith("10"):
      raise OSError(28, "No space left on device")
    return real(directory)
  monkeypatch.setattr(checkpoint, "_list_files", failing)
  with caplog.at_level(logging.WARNING):
    ckpt.save(10, _state(10))
    ckpt.wait()
  assert "Could not write the file list of checkpoint 10" in caplog.text
  monkeypatch.setattr(checkpoint, "_list_files", real)
  _assert_step_10_trusted_then_guarded(tmp_path, caplog)


_DIE_AFTER_FINALIZE = """
import os, sys
import jax.numpy as jnp
from big_vision import checkpoint
ckpt = checkpoint.Checkpointer(sys.argv[1], async_save=False)
state = lambda i: {"params": {"w": jnp.arange(1000, dtype=jnp.float32) + i},
                   "opt": (jnp.full((3,), float(i)),), "step": jnp.int32(i)}
ckpt.save(5, state(5))
# Orbax has finalized step 10 when save() returns; die before the manifest.
checkpoint.Checkpointer._write_manifest_after_the_fact = (
    lambda self, step: os._exit(9))
ckpt.save(10, state(10))
"""


def test_death_between_finalization_and_manifest_keeps_the_checkpoint(
    tmp_path, caplog):
  proc = subprocess.run(
      [sys.executable, "-c", _DIE_AFTER_FINALIZE, str(tmp_path)], cwd=REPO,
      env=chaos.child_env(1), capture_output=True, text=True, check=False)
  assert proc.returncode == 9, proc.stderr[-3000:]
  directory = os.path.join(str(tmp_path), "checkpoints")
  assert os.path.exists(os.path.join(directory, "5", checkpoint.MANIFEST))
  assert os.path.isdir(os.path.join(directory, "10"))
  _assert_step_10_trusted_then_guarded(tmp_path, caplog)


def test_keeps_newest_two_plus_keep_every_and_cleans_tmp_dirs(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep_every=4)
  for step in (2, 4, 6, 8, 10):
    ckpt.save(step, _state(step, n=8))
  ckpt.wait()
  assert ckpt.all_steps() == [4, 8, 10]
  # A write killed mid-way leaves a tmp dir: ignored by readers, removed by
  # the next trainer.
  leftover = os.path.join(ckpt.directory, "12.orbax-checkpoint-tmp")
  os.makedirs(os.path.join(leftover, "params"))
  assert checkpoint.Checkpointer(str(tmp_path),
                                 read_only=True).latest_step() == 10
  checkpoint.Checkpointer(str(tmp_path)).wait()
  assert not os.path.exists(leftover)


# ----------------------------------------------------------------------------
# Corrupt images in the training data.
# ----------------------------------------------------------------------------
@pytest.fixture(name="image_folder")
def _image_folder(tmp_path):
  rng = np.random.RandomState(0)
  for c in ("cat", "dog"):
    os.makedirs(tmp_path / "imgs" / c)
    for i in range(12):
      Image.fromarray(rng.randint(0, 255, (8, 8, 3), np.uint8)).save(
          tmp_path / "imgs" / c / f"{i:02d}.png")
  # Valid PNG signature, garbage after it: fails in `decode`, not before.
  (tmp_path / "imgs" / "dog" / "05.png").write_bytes(
      b"\x89PNG\r\n\x1a\nnot really a png")
  return str(tmp_path / "imgs")


def _input_config(path, **kw):
  return dict(data=dict(name="imagefolder", split="train", path=path),
              batch_size=8, pp="decode|resize(4)|keep('image', 'label')",
              shuffle_buffer_size=0, **kw)


def test_corrupt_image_error_names_the_example(image_folder):
  from big_vision import input_pipeline  # pylint: disable=g-import-not-at-top
  ds, _ = input_pipeline.training(_input_config(image_folder), seed=0,
                                  process_index=0, process_count=1)
  batches = input_pipeline.as_numpy(ds)
  next(batches), next(batches)  # Positions 0..15: all fine.
  with pytest.raises(input_pipeline.CorruptExampleError) as e:
    next(batches)
  msg = str(e.value)
  # Sorted files: cat/00..11 are ids 0..11, dog/05.png is id 17 = row 1 of
  # the third batch.
  assert "file_name='dog/05.png'" in msg and "id=17" in msg, msg
  assert "row 1 of the batch of step 3" in msg, msg
  assert "Invalid PNG" in msg and "skip_corrupt=True" in msg, msg


def test_skip_corrupt_counts_and_keeps_exact_resume(image_folder, caplog):
  from big_vision import input_pipeline  # pylint: disable=g-import-not-at-top
  cfg = _input_config(image_folder, skip_corrupt=True)

  def stream(start_step, n):
    ds, _ = input_pipeline.training(cfg, seed=0, start_step=start_step,
                                    process_index=0, process_count=1)
    it = input_pipeline.as_numpy(ds)
    return [next(it) for _ in range(n)], it

  with caplog.at_level(logging.WARNING):
    full, it = stream(0, 6)  # 2 epochs of 24 examples: the bad one twice.
  assert it.num_skipped == 2
  assert "file_name='dog/05.png'" in caplog.text
  for b in full:
    assert sorted(b) == ["image", "label"] and b["image"].shape == (8, 4, 4, 3)
  # Batch 3 (positions 16..23) lost row 1 (id 17) and got a repeat of a
  # good row instead; all other rows are the images in order.
  labels = full[2]["label"]
  np.testing.assert_array_equal(labels, [1] * 8)
  # A resumed stream sees exactly the batches of the uninterrupted one.
  resumed, _ = stream(2, 4)
  for a, b in zip(full[2:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_skip_corrupt_stops_when_every_example_fails(tmp_path, caplog):
  # A pp that fails on every example (here: no file decodes) used to make
  # the skipping pipeline wait forever for a batch. Now it stops once more
  # than max_consecutive_corrupt examples in a row failed, quoting the first.
  from big_vision import input_pipeline  # pylint: disable=g-import-not-at-top
  for c in ("cat", "dog"):
    os.makedirs(tmp_path / c)
    for i in range(12):
      (tmp_path / c / f"{i:02d}.png").write_bytes(b"\x89PNG\r\n\x1a\nbad")
  for limit, expected in ((20, 21), (None, 101)):
    kw = {"max_consecutive_corrupt": limit} if limit else {}
    ds, _ = input_pipeline.training(
        _input_config(str(tmp_path), skip_corrupt=True, **kw), seed=0,
        process_index=0, process_count=1)
    batches = input_pipeline.as_numpy(ds)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      with pytest.raises(input_pipeline.CorruptExampleError) as e:
        next(batches)
    msg = str(e.value)
    assert f"{expected} consecutive training examples failed pp" in msg, msg
    assert f"max_consecutive_corrupt={limit or 100} in a row" in msg, msg
    # The first of them: position 0 (unshuffled: cat/00.png), with its error.
    assert "file_name='cat/00.png'" in msg and "position 0:" in msg, msg
    assert "Invalid PNG" in msg, msg
    assert batches.num_skipped == expected
    # Every skipped batch was logged, the first failure with its message.
    assert "Skipped 8 corrupt training example(s)" in caplog.text
    assert "file_name='cat/00.png'" in caplog.text
    assert "Invalid PNG" in caplog.text


def test_skip_corrupt_counts_consecutive_failures_only(image_folder):
  # One bad example per epoch never reaches a limit of 1 in a row.
  from big_vision import input_pipeline  # pylint: disable=g-import-not-at-top
  ds, _ = input_pipeline.training(
      _input_config(image_folder, skip_corrupt=True,
                    max_consecutive_corrupt=1), seed=0, process_index=0,
      process_count=1)
  it = input_pipeline.as_numpy(ds)
  for _ in range(9):  # 3 epochs.
    assert next(it)["image"].shape == (8, 4, 4, 3)
  assert it.num_skipped == 3 and it.consecutive_skipped == 0


# ----------------------------------------------------------------------------
# End to end: real trainer processes, signals, a damaged checkpoint.
# ----------------------------------------------------------------------------
# The kills land at known points: the trainer's test hooks pause it after a
# given step (BIG_VISION_TEST_PAUSE_AT_STEP) or in the middle of a given
# checkpoint write (BIG_VISION_TEST_PAUSE_IN_SAVE) until the test removes the
# file announcing the pause, so nothing here races the trainer or a timer.
TOTAL, CKPT = 40, 5
# One CPU device per trainer process: half the start-up time of eight. (Exact
# resume on 8 devices is tested in-process by tests/test_train.py.)
DEVICES = 1


def _ckpt_steps(workdir):
  """Steps of the complete checkpoints (read when no trainer is running or
  while it is paused)."""
  ckpt = checkpoint.Checkpointer(workdir, read_only=True)
  return [s for s in ckpt.all_steps() if ckpt.check(s) is None]


def _superseded_steps(workdir):
  steps = []
  for path in sorted(glob.glob(os.path.join(workdir,
                                            "metrics.superseded.*.jsonl"))):
    with open(path) as f:
      steps += [json.loads(l)["step"] for l in f if "training_loss" in l]
  return steps


def _paused(arg, run, log, pause_at=None, in_save=None, env=None):
  env = dict(env or {})
  if pause_at is not None:
    env[chaos.PAUSE_AT_STEP] = str(pause_at)
  if in_save is not None:
    env[chaos.PAUSE_IN_SAVE] = str(in_save)
  proc = chaos.launch(arg, run, log=log, devices=DEVICES, env=env)
  path = (chaos.pause_file(run, pause_at) if pause_at is not None else
          chaos.save_pause_file(run, in_save))
  assert chaos.wait_for_file(proc, path), open(log).read()[-3000:]
  return proc, path


def test_kill_and_resume_ends_bit_identical(tmp_path):
  cfg = chaos.write_tiny_config(str(tmp_path))
  arg = f"{cfg}:steps={TOTAL},ckpt={CKPT}"
  ref, run = str(tmp_path / "reference"), str(tmp_path / "run")
  log = str(tmp_path / "train.log")
  # The interrupted run's launches share a compilation cache, as users'
  # resumes do by default (the suite turns it off, conftest.py): each
  # resume after the first reads its executables back, and must still end
  # bit-identical to the reference, which compiles its own (no cache).
  cached = {"BIG_VISION_COMPILATION_CACHE": str(tmp_path / "jax_cache")}
  # The reference runs alongside the interrupted run (2 cores).
  reference = chaos.launch(arg, ref, log=str(tmp_path / "ref.log"),
                           devices=DEVICES)
  try:
    # 1. SIGTERM while paused after step 7: the trainer checkpoints step 8
    # (the first step after the signal), says so and exits 0.
    proc = subprocess.Popen(
        chaos.train_cmd(arg, run), cwd=REPO,
        env=chaos.child_env(DEVICES, {chaos.PAUSE_AT_STEP: "7", **cached}),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pause = chaos.pause_file(run, 7)
    assert chaos.wait_for_file(proc, pause)
    assert chaos.logged_steps(run) == list(range(1, 8))
    assert _ckpt_steps(run) == [5]
    proc.send_signal(signal.SIGTERM)
    chaos.resume(pause)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert re.search(r"Preempted \(SIGTERM\): checkpoint of step 8 written "
                     r"to \S+\. Resume with the same command\.", out), out[-3000:]
    assert chaos.logged_steps(run) == list(range(1, 9))
    assert _ckpt_steps(run) == [5, 8]

    # 2. SIGKILL during start-up: paused before its first step (checkpoint
    # restored, nothing compiled or trained yet).
    proc, pause = _paused(arg, run, log, pause_at=8, env=cached)
    assert chaos.kill(proc) == -signal.SIGKILL
    os.remove(pause)
    assert chaos.logged_steps(run) == list(range(1, 9))
    assert _ckpt_steps(run) == [5, 8]

    # 3. SIGKILL mid-training, two steps after the checkpoint of step 10.
    proc, pause = _paused(arg, run, log, pause_at=12, env=cached)
    assert _ckpt_steps(run) == [8, 10]
    assert chaos.kill(proc) == -signal.SIGKILL
    os.remove(pause)
    assert chaos.logged_steps(run) == list(range(1, 13))

    # 4. SIGKILL in the middle of the write of checkpoint 15 (arrays on
    # disk, directory not final): a tmp dir is left behind, the complete
    # checkpoints are untouched. Steps 11, 12 are redone: their old lines
    # move to a side file.
    proc, pause = _paused(arg, run, log, in_save=15, env=cached)
    assert chaos.tmp_dirs(run)
    assert chaos.kill(proc) == -signal.SIGKILL
    os.remove(pause)
    assert chaos.tmp_dirs(run), "the kill did not land mid-write"
    assert _ckpt_steps(run) == [8, 10]
    assert _superseded_steps(run) == [11, 12]

    # 5. The newest complete checkpoint (10) gets damaged (truncated array
    # file): the trainer warns, falls back to 8, and finishes.
    victim = _largest_array_file(os.path.join(run, "checkpoints", "10"))
    with open(victim, "r+b") as f:
      f.truncate(os.path.getsize(victim) // 2)
    proc = subprocess.run(chaos.train_cmd(arg, run), cwd=REPO,
                          env=chaos.child_env(DEVICES, {
                              **cached, "JAX_LOG_COMPILES": "1"}),
                          capture_output=True,
                          text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Its train step came from the cache that the killed launches filled.
    assert "Persistent compilation cache hit for 'jit_update'" in (
        proc.stderr), proc.stderr[-3000:]
    assert re.search(r"Checkpoint of step 10 in \S+ is incomplete or corrupt: "
                     r"file \S+ has \d+ bytes instead of \d+ \(truncated\); "
                     r"using the previous complete one, step 8",
                     proc.stderr), proc.stderr
  finally:
    reference.wait(timeout=900)
  assert reference.returncode == 0

  assert chaos.compare(ref, run, TOTAL) == []
  assert not chaos.tmp_dirs(run)  # Leftovers cleaned up by the trainer.
  assert _ckpt_steps(run)[-2:] == [TOTAL - CKPT, TOTAL]
  # Nothing logged was deleted: the redone steps' first lines are kept
  # (11, 12 from kill 3; then 9..15 and what the killed run of step 4 logged
  # while its save of 15 was paused: at most up to 20, whose save waits).
  superseded = _superseded_steps(run)
  assert superseded[:2] == [11, 12]
  assert set(range(9, 16)) <= set(superseded[2:]) <= set(range(9, 21))
  assert len(superseded[2:]) == len(set(superseded[2:]))


def test_diverging_run_stops_before_checkpointing_nan(tmp_path):
  # lr=1e12: the params blow up within a few steps. Every step saves, only
  # every 10th logs: the check at the save steps must catch it.
  cfg = chaos.write_tiny_config(str(tmp_path))
  run = str(tmp_path / "run")
  proc = subprocess.run(
      chaos.train_cmd(f"{cfg}:steps=30,ckpt=1", run,
                      ["--config.lr=1e12", "--config.log_training_steps=10"]),
      cwd=REPO, env=chaos.child_env(DEVICES), capture_output=True, text=True,
      timeout=900, check=False)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 1, out[-3000:]
  errors = [l for l in out.splitlines() if l.startswith("error:")]
  assert len(errors) == 1, out[-3000:]
  m = re.fullmatch(
      r"error: (.*) became NaN/inf between steps (\d+) and (\d+); step \3 "
      r"was not checkpointed and the last good checkpoint is step (\d+), "
      r"(\S+)\. To go on from there, lower config\.lr and re-run the same "
      r"command\.", errors[0])
  assert m, errors[0]
  bad_step, good = int(m.group(3)), int(m.group(4))
  assert good == bad_step - 1 == int(m.group(2))
  assert m.group(5) == os.path.join(run, "checkpoints", str(good))
  # grad_clip_norm is on in this config: not suggested. No second traceback.
  assert "grad_clip_norm" not in out and "Traceback" not in out, out[-3000:]
  assert "cannot schedule new futures" not in out
  # What is on disk: complete, finite checkpoints up to `good`, nothing else.
  steps = _ckpt_steps(run)
  assert steps[-1] == good and not chaos.tmp_dirs(run)
  assert not glob.glob(os.path.join(run, "checkpoints", checkpoint.PENDING + "*"))
  for step in steps:
    params = checkpoint.Checkpointer(
        run, read_only=True).restore_params_to_host(step)
    for leaf in jax.tree.leaves(params):
      assert np.isfinite(leaf).all(), step


def test_two_processes_agree_on_the_preemption_step(tmp_path):
  # A fresh workdir (nothing pre-created), two processes of one job; only
  # process 1 gets SIGTERM, while both are paused after step 7. They agree
  # at the next log step (10): both checkpoint step 10 and exit 0.
  cfg = chaos.write_tiny_config(str(tmp_path))
  arg = f"{cfg}:steps=15,ckpt=100"
  run = str(tmp_path / "run")
  over = ["--config.log_training_steps=5"]
  log = str(tmp_path / "two.log")
  procs = chaos.launch_processes(arg, run, 2, over, log=log, env={
      chaos.PAUSE_AT_STEP: "7"})
  try:
    pauses = [chaos.pause_file(run, 7, i) for i in range(2)]
    for pause in pauses:
      assert chaos.wait_for_file(procs, pause)
    procs[1].send_signal(signal.SIGTERM)
    for pause in pauses:
      chaos.resume(pause)
    codes = chaos.wait_all(procs, 600)
  finally:
    for p in procs:
      chaos.kill(p)
  out = open(log).read()
  assert codes == [0, 0], out[-5000:]
  assert "Preempted (SIGTERM): checkpoint of step 10 written" in out
  assert ("Preempted (SIGTERM received by another process): checkpoint of "
          "step 10 written") in out
  assert _ckpt_steps(run) == [10]
  assert chaos.logged_steps(run) == [5, 10]
  # The job resumes from there to the end, as two processes again.
  assert chaos.wait_all(chaos.launch_processes(arg, run, 2, over)) == [0, 0]
  assert _ckpt_steps(run) == [10, 15]
  assert chaos.logged_steps(run) == [5, 10, 15]


def test_one_process_saves_replicated_arrays_whole_without_compiling(
    tmp_path, compiled):
  """With one process, arrays are written whole by one replica: no slicing
  programs are compiled (orbax's replica-parallel default compiled one per
  array shape), and the state reads back exactly, in its shardings."""
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  rep, shd = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  rng = np.random.default_rng(0)
  # Shapes no other test uses (a slicing program compiled earlier in the
  # same process would hide one compiled here), with a dimension the 8
  # replicas divide (else orbax does not slice).
  state = {"params": {"w": jax.device_put(rng.normal(size=(24, 40)), rep),
                      "b": jax.device_put(rng.normal(size=(40,)), rep),
                      "s": jax.device_put(rng.normal(size=(8, 13)), shd)},
           "step": jax.device_put(np.int32(3), rep)}
  jax.block_until_ready(state)
  del compiled[:]
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  ckpt.save(1, state)
  ckpt.close()
  assert not compiled, compiled
  ckpt = checkpoint.Checkpointer(str(tmp_path), read_only=True)
  shape = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  back = ckpt.restore(1, shape, jax.tree.map(lambda x: x.sharding, state))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(back),
               jax.device_get(state))
  assert jax.tree.map(lambda x: x.sharding, back) == jax.tree.map(
      lambda x: x.sharding, state)
