"""metric_writer: metrics are append-only history, locally and on gfile paths."""
import glob
import json
import os
import sys

import pytest
import tensorflow as tf

from big_vision import metric_writer


def _write(workdir, steps, scale, resume_step=None):
  w = metric_writer.MetricWriter(workdir, resume_step=resume_step)
  for s in steps:
    w.write(s, {"training_loss": s * scale})
  w.flush()
  w.close()


def _tb_scalars(workdir, join=os.path.join):
  """(step, value) of every training_loss event TensorBoard would read."""
  out = []
  for name in sorted(tf.io.gfile.listdir(workdir)):
    if "tfevents" not in name:  # TensorBoard's own rule for event files.
      continue
    for e in tf.compat.v1.train.summary_iterator(join(workdir, name)):
      for v in e.summary.value:
        if v.tag == "training_loss":
          out.append((e.step, float(tf.make_ndarray(v.tensor))))
  return out


def test_default_only_appends(tmp_path):
  wd = str(tmp_path)
  _write(wd, [1, 2, 3], 1.0)
  before = (tmp_path / "metrics.jsonl").read_bytes()
  w = metric_writer.MetricWriter(wd)  # A new caller with the default...
  w.write(4, {"training_loss": 4.0})
  w.close()  # ... drops nothing.
  after = (tmp_path / "metrics.jsonl").read_bytes()
  assert after.startswith(before)
  assert [l["step"] for l in metric_writer.read(wd)] == [1, 2, 3, 4]
  assert not glob.glob(str(tmp_path / "metrics.superseded.*"))


def test_restart_without_checkpoint_moves_every_line_aside(tmp_path):
  # Checkpoints gone (deleted, quarantined, never written): the trainer
  # restarts from scratch with resume_step=-1. The old record must survive.
  wd = str(tmp_path)
  _write(wd, [0, 1, 2], 1.0)
  old = (tmp_path / "metrics.jsonl").read_bytes()
  _write(wd, [0, 1], 10.0, resume_step=-1)
  side = glob.glob(str(tmp_path / "metrics.superseded.*.jsonl"))
  assert len(side) == 1
  assert open(side[0], "rb").read() == old
  assert metric_writer.read(wd) == [{"step": 0, "training_loss": 0.0},
                                    {"step": 1, "training_loss": 10.0}]


def test_resume_moves_redone_steps_aside_in_jsonl_and_tensorboard(tmp_path):
  wd = str(tmp_path)
  _write(wd, range(1, 7), 1.0, resume_step=-1)
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 7, "traini')  # Torn by a kill mid-write.
  _write(wd, range(4, 9), 10.0, resume_step=3)  # Resumed at step 3.
  expected = [(s, float(s)) for s in (1, 2, 3)] + [
      (s, 10.0 * s) for s in range(4, 9)]
  assert [(l["step"], l["training_loss"])
          for l in metric_writer.read(wd)] == expected
  side = glob.glob(str(tmp_path / "metrics.superseded.*.jsonl"))
  assert len(side) == 1
  assert open(side[0]).read() == "".join(
      json.dumps({"step": s, "training_loss": float(s)}) + "\n"
      for s in (4, 5, 6)) + '{"step": 7, "traini\n'
  # TensorBoard: each step once, the redone steps with their new values.
  assert _tb_scalars(wd) == expected
  # The superseded events are kept, under names TensorBoard does not read.
  moved = glob.glob(str(tmp_path / "events.out.superseded-*"))
  assert len(moved) == 1
  old = [(e.step, float(tf.make_ndarray(v.tensor)))
         for e in tf.compat.v1.train.summary_iterator(moved[0])
         for v in e.summary.value]
  assert old == [(s, float(s)) for s in range(1, 7)]
  # A second resume supersedes again, into a new side file or the same.
  _write(wd, [8], 100.0, resume_step=7)
  assert _tb_scalars(wd) == expected[:-1] + [(8, 800.0)]
  assert [l["training_loss"] for l in metric_writer.read(wd)][-1] == 800.0


def test_gfile_workdir_never_creates_a_local_scheme_folder(tmp_path,
                                                           monkeypatch):
  # ram:// is tensorflow's in-memory file system: a remote path like gs://
  # for everything gfile does, without a network.
  monkeypatch.chdir(tmp_path)
  wd = "ram://bucket/run"
  _write(wd, [1, 2, 3], 1.0, resume_step=-1)
  _write(wd, [3, 4], 10.0, resume_step=2)
  assert os.listdir(tmp_path) == []  # No local "ram:" (or "gs:") folder.
  assert tf.io.gfile.exists(f"{wd}/metrics.jsonl")
  assert [(l["step"], l["training_loss"]) for l in metric_writer.read(wd)] == [
      (1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
  side = tf.io.gfile.glob(f"{wd}/metrics.superseded.*.jsonl")
  assert len(side) == 1
  with tf.io.gfile.GFile(side[0]) as f:
    assert [json.loads(l)["step"] for l in f] == [3]
  assert _tb_scalars(wd, join=lambda a, b: f"{a}/{b}") == [
      (1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]


def test_remote_workdir_without_tensorflow_is_refused(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setitem(sys.modules, "tensorflow", None)
  with pytest.raises(ValueError, match=r"'gs://bucket/run' is a remote path.*"
                     "tensorflow is not importable"):
    metric_writer.MetricWriter("gs://bucket/run", resume_step=0)
  assert os.listdir(tmp_path) == []


def test_local_workdir_without_tensorflow_writes_jsonl(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow", None)
  _write(str(tmp_path), [1, 2], 1.0, resume_step=-1)
  _write(str(tmp_path), [2], 5.0, resume_step=1)
  assert metric_writer.read(str(tmp_path)) == [
      {"step": 1, "training_loss": 1.0}, {"step": 2, "training_loss": 10.0}]
  side = glob.glob(str(tmp_path / "metrics.superseded.*.jsonl"))
  assert len(side) == 1
  assert open(side[0]).read() == '{"step": 2, "training_loss": 2.0}\n'
  assert not glob.glob(str(tmp_path / "*tfevents*"))


def test_workdir_of_an_unknown_scheme_is_refused(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ValueError, match=r"Cannot write metrics to the workdir "
                     r"'nosuch://bucket/run' through tf.io.gfile: .*nosuch"):
    metric_writer.MetricWriter("nosuch://bucket/run", resume_step=-1)
  assert os.listdir(tmp_path) == []


def test_a_new_event_file_sorts_after_those_of_the_same_second(tmp_path):
  # TensorBoard reads event files in name order; within one second the names
  # compare by a counter as text ("...10.v2" < "...9.v2"), so the writer
  # waits for the next second when a file of the current one exists.
  wd = str(tmp_path)
  names = []
  for step in range(3):
    _write(wd, [step], 1.0)
    new = set(n for n in os.listdir(wd) if "tfevents" in n) - set(names)
    assert len(new) == 1
    names += new
  assert sorted(names) == names
  seconds = [metric_writer._event_file_second(n) for n in names]  # pylint: disable=protected-access
  assert seconds[0] < seconds[1] < seconds[2], names
  assert metric_writer._event_file_second("events.out.superseded-x.1") is None  # pylint: disable=protected-access
