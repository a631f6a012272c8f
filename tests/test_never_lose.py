"""Never lose a run: exact resume, preemption, crash-safe checkpoints, bad data.

The end-to-end test drives real `python -m big_vision.train` processes (the
helpers live in tools/chaos.py): SIGTERM, then SIGKILL during start-up, in
the middle of training and in the middle of a checkpoint write, then a
damaged newest checkpoint; the run must still end bit-identical to an
uninterrupted one, with every step in metrics.jsonl exactly once.
"""
import glob
import importlib.util
import logging
import os
import re
import signal
import subprocess
import sys
import time

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
# 60 steps: enough that a kill aimed at step ~15 never finds the run done.
TOTAL, CKPT = 60, 5
# One CPU device per trainer process: half the start-up time of eight. (Exact
# resume on 8 devices is tested in-process by tests/test_train.py.)
DEVICES = 1


def _ckpt_steps(workdir):
  """Steps of the complete checkpoints. (A kill during orbax's deletion of
  an old checkpoint may leave a half-deleted one: never used.)"""
  for _ in range(20):
    try:
      ckpt = checkpoint.Checkpointer(workdir, read_only=True)
      return [s for s in ckpt.all_steps() if ckpt.check(s) is None]
    except FileNotFoundError:
      # The live trainer deleted an old step while orbax listed it: look again.
      time.sleep(0.1)
  raise AssertionError(f"could not list the checkpoints of {workdir}")


def test_kill_and_resume_ends_bit_identical(tmp_path):
  cfg = chaos.write_tiny_config(str(tmp_path))
  arg = f"{cfg}:steps={TOTAL},ckpt={CKPT}"
  ref, run = str(tmp_path / "reference"), str(tmp_path / "run")
  log = str(tmp_path / "train.log")
  # The reference runs alongside the interrupted run (2 cores).
  reference = chaos.launch(arg, ref, log=str(tmp_path / "ref.log"),
                           devices=DEVICES)
  try:
    # 1. SIGTERM mid-run: checkpoint at the current step, exit 0, say so.
    proc = subprocess.Popen(
        chaos.train_cmd(arg, run), cwd=REPO, env=chaos.child_env(DEVICES),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert chaos.wait_for_step(proc, run, 7)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    m = re.search(r"Preempted \(SIGTERM\): checkpoint of step (\d+) written "
                  r"to \S+\. Resume with the same command\.", out)
    assert m, out[-3000:]
    preempted = int(m.group(1))
    assert 7 <= preempted < TOTAL
    assert chaos.logged_steps(run) == list(range(1, preempted + 1))
    assert _ckpt_steps(run)[-1] == preempted

    # 2. SIGKILL during start-up (imports / config check / compilation).
    proc = chaos.launch(arg, run, log=log, devices=DEVICES)
    time.sleep(1.5)
    assert chaos.kill(proc) == -signal.SIGKILL
    assert chaos.last_step(run) == preempted
    assert _ckpt_steps(run)[-1] == preempted

    # 3. SIGKILL mid-training, a few steps after the next checkpoint.
    next_ckpt = (preempted // CKPT + 1) * CKPT
    proc = chaos.launch(arg, run, log=log, devices=DEVICES)
    assert chaos.wait_for_step(proc, run, next_ckpt + 2)
    assert chaos._poll(  # pylint: disable=protected-access
        proc, lambda: _ckpt_steps(run)[-1] == next_ckpt, 600, 0.01)
    assert chaos.kill(proc) == -signal.SIGKILL
    assert chaos.last_step(run) >= next_ckpt + 2
    assert _ckpt_steps(run) == [preempted, next_ckpt]

    # 4. SIGKILL while orbax writes the next checkpoint: a tmp dir is left
    # behind, the complete checkpoints are untouched. (Should the kill come
    # a moment too late, the run just moved on: try the next checkpoint.)
    for _ in range(3):
      complete = _ckpt_steps(run)
      since = time.time_ns()
      proc = chaos.launch(arg, run, log=log, devices=DEVICES)
      tmp = chaos.wait_for_ckpt_write(proc, run, since)
      assert chaos.kill(proc) == -signal.SIGKILL
      assert tmp is not None
      if chaos.tmp_dirs(run):
        break
    assert chaos.tmp_dirs(run), "no kill landed in the middle of a write"
    assert _ckpt_steps(run) == complete

    # 5. The newest complete checkpoint gets damaged (truncated array file):
    # the trainer warns, falls back to the previous one, and finishes.
    newest = os.path.join(run, "checkpoints", str(complete[-1]))
    victim = _largest_array_file(newest)
    with open(victim, "r+b") as f:
      f.truncate(os.path.getsize(victim) // 2)
    proc = subprocess.run(chaos.train_cmd(arg, run), cwd=REPO,
                          env=chaos.child_env(DEVICES), capture_output=True,
                          text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(rf"Checkpoint of step {complete[-1]} in \S+ is "
                     r"incomplete or corrupt: file \S+ has \d+ bytes instead "
                     rf"of \d+ \(truncated\); using the previous complete "
                     rf"one, step {complete[-2]}", proc.stderr), proc.stderr
  finally:
    reference.wait(timeout=900)
  assert reference.returncode == 0

  assert chaos.compare(ref, run, TOTAL) == []
  assert not chaos.tmp_dirs(run)  # Leftovers cleaned up by the trainer.
  assert _ckpt_steps(run)[-2:] == [TOTAL - CKPT, TOTAL]
