"""Metrics to TensorBoard and to `metrics.jsonl`, from process 0 only.

`metrics.jsonl` holds one JSON object per line: `{"step": s, name: value, ...}`.
It is an append-only history: nothing in a workdir's metrics is ever deleted.

On resume from the checkpoint of step s (`resume_step=s`), the lines for steps
after s were written by the interrupted run and will be produced again; on a
restart with no checkpoint to resume from (`resume_step=-1`: deleted,
quarantined as damaged, or never written) every line will. Such superseded
lines are MOVED to `metrics.superseded.<UTC time>.jsonl` in the workdir, so
that `metrics.jsonl` holds every step exactly once and the record of the
earlier run is kept beside it. TensorBoard event files get the same treatment:
their events after step s are moved aside (into files named
`events.out.superseded-<UTC time>.*`, which TensorBoard does not read) and the
events up to s are rewritten into one events file, so TensorBoard shows each
step once. The default, `resume_step=None`, only appends.

Paths: local, or any remote path tensorflow's `tf.io.gfile` handles (`gs://`,
...), like the checkpoints. A remote workdir without tensorflow is refused
with an error; nothing is ever written to a local folder named after the
scheme (`gs:`).
"""
import json
import math
import os
import socket
import time

from absl import logging
import jax

SUPERSEDED_PREFIX = "metrics.superseded."


def _is_remote(path: str) -> bool:
  return "://" in str(path)


def _gfile(path: str):
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError as e:  # Also raised when sys.modules["tensorflow"] = None.
    raise ValueError(
        f"The workdir {path!r} is a remote path: writing its metrics needs "
        "tensorflow's tf.io.gfile, and tensorflow is not importable here. "
        "Install tensorflow or use a local workdir.") from e
  return tf.io.gfile


class _Files:
  """The few file operations needed, on local paths or through tf.io.gfile."""

  def __init__(self, root: str):
    self.remote = _is_remote(root)
    self.gfile = _gfile(root) if self.remote else None

  def join(self, *parts):
    if self.remote:
      return "/".join([parts[0].rstrip("/")] + list(parts[1:]))
    return os.path.join(*parts)

  def makedirs(self, path):
    if not self.remote:
      os.makedirs(path, exist_ok=True)
      return
    try:
      self.gfile.makedirs(path)
    except Exception as e:  # pylint: disable=broad-except
      # e.g. "File system scheme 's3' not implemented": say so before any
      # training starts, rather than write the metrics somewhere else.
      raise ValueError(f"Cannot write metrics to the workdir {path!r} "
                       f"through tf.io.gfile: {e}") from e

  def exists(self, path):
    return self.gfile.exists(path) if self.remote else os.path.exists(path)

  def isdir(self, path):
    return self.gfile.isdir(path) if self.remote else os.path.isdir(path)

  def open(self, path, mode):
    if self.remote:
      return self.gfile.GFile(path, mode)
    return open(path, mode)  # pylint: disable=unspecified-encoding

  def listdir(self, path):
    return self.gfile.listdir(path) if self.remote else os.listdir(path)

  def rename(self, src, dst):
    if self.remote:
      self.gfile.rename(src, dst, overwrite=True)
    else:
      os.replace(src, dst)

  def write_atomic(self, path, data: bytes):
    tmp = path + ".tmp"
    with self.open(tmp, "wb") as f:
      f.write(data)
      if not self.remote:
        f.flush()
        os.fsync(f.fileno())
    self.rename(tmp, path)

  def append(self, path, data: bytes):
    with self.open(path, "ab") as f:
      f.write(data)


class _TensorBoardScalars:
  """Scalars as TensorBoard event files in `logdir`, through tf.summary.

  What clu's SummaryWriter writes for scalars (one `tf.summary.scalar` per
  metric, in a file writer of the workdir), without importing clu: its
  metric_writers import TensorBoard's hparams plugin, which loads Keras 3
  through `tf.keras` (with scikit-learn and matplotlib): 1.2 s of every
  launch, for nothing the trainer writes.
  """

  def __init__(self, logdir: str):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    self._tf = tf
    self._writer = tf.summary.create_file_writer(logdir)

  def write_scalars(self, step: int, scalars: dict[str, float]):
    with self._writer.as_default():
      for name, value in scalars.items():
        self._tf.summary.scalar(name, value, step=step)

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


def utc_stamp() -> str:
  return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


class MetricWriter:
  """Writes scalars to TensorBoard event files and to `metrics.jsonl`."""

  def __init__(self, workdir: str | None, *, resume_step: int | None = None):
    """`resume_step`: None appends (the default, e.g. eval-only runs); an int
    s moves the lines and events of steps > s aside (see the module doc)."""
    self.is_writer = jax.process_index() == 0 and workdir is not None
    self._tb = None
    self._files = None
    self.path = None
    if workdir is None:
      return
    workdir = os.fspath(workdir)
    # Fails at once (before any training) for a remote path we cannot write.
    self._files = _Files(workdir)
    self.path = self._files.join(workdir, "metrics.jsonl")
    if not self.is_writer:
      return
    self._files.makedirs(workdir)
    if resume_step is not None:
      stamp = utc_stamp()
      supersede_after(workdir, resume_step, stamp=stamp)
      supersede_events_after(workdir, resume_step, stamp=stamp)
    try:  # TensorBoard's writer needs tensorflow (GPU boxes may lack it).
      _wait_to_sort_after_event_files(self._files, workdir)
      self._tb = _TensorBoardScalars(workdir)
    except ImportError:
      logging.warning("tensorflow unavailable: metrics go to %s only.",
                      self.path)

  def write(self, step: int, metrics: dict[str, float]):
    if not self.is_writer or not metrics:
      return
    metrics = {k: float(v) for k, v in metrics.items()}
    logging.info("[%d] %s", step, ", ".join(
        f"{k}={v:.6g}" for k, v in sorted(metrics.items())))
    if self._tb is not None:
      self._tb.write_scalars(step, metrics)
    line = {"step": int(step)}
    line.update({k: (v if math.isfinite(v) else str(v))
                 for k, v in metrics.items()})
    self._files.append(self.path, (json.dumps(line) + "\n").encode())

  def flush(self):
    if self._tb is not None:
      self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def _event_file_second(name: str) -> int | None:
  """The creation second in a TensorBoard event file's name
  (events.out.tfevents.<seconds>.<host>.<pid>.<counter>.v2), if it has one."""
  parts = name.split(".")
  if len(parts) > 3 and parts[:3] == ["events", "out", "tfevents"]:
    try:
      return int(parts[3])
    except ValueError:
      return None
  return None


def _wait_to_sort_after_event_files(files: "_Files", workdir: str):
  """Waits (< 1 s) until a new event file's name sorts after every existing
  one's.

  TensorBoard reads a directory's event files in name order, and a step
  lower than one already read makes it drop the later ones (a restart). A
  new file's name starts with the second it is created in, so it sorts
  after the files of earlier seconds; within the same second the names
  compare by process id and a counter as text ("...10.v2" before
  "...9.v2"). So a writer created in the second of an existing file (the
  events kept by a resume, rewritten just now; a second run in the same
  process) first waits for the next second. A run resumed by a new process
  never waits: its workdir's files are older.
  """
  now = time.time()
  if any(_event_file_second(n) == int(now) for n in files.listdir(workdir)):
    time.sleep(int(now) + 1 - now)  # (A file from a clock ahead: no wait.)


def _line_step(line: str) -> int | None:
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return None  # A line torn by a kill mid-write carries no usable metric.


def supersede_after(workdir: str, step: int, *, stamp: str | None = None
                    ) -> str | None:
  """Moves the lines of `metrics.jsonl` with step > `step` to a side file.

  The side file `metrics.superseded.<stamp>.jsonl` is written (appended to)
  first, then `metrics.jsonl` is atomically replaced by the kept lines: a
  kill in between leaves a line in both files, never in neither. Torn lines
  go to the side file too. Returns the side file's path, or None if nothing
  was superseded.
  """
  files = _Files(workdir)
  path = files.join(workdir, "metrics.jsonl")
  if not files.exists(path):
    return None
  with files.open(path, "rb") as f:
    lines = f.read().decode().splitlines(keepends=True)
  kept, moved = [], []
  for line in lines:
    if not line.strip():
      continue
    line = line if line.endswith("\n") else line + "\n"
    s = _line_step(line)
    (kept if s is not None and s <= step else moved).append(line)
  if not moved:
    return None
  side = files.join(workdir, f"{SUPERSEDED_PREFIX}{stamp or utc_stamp()}.jsonl")
  files.append(side, "".join(moved).encode())
  files.write_atomic(path, "".join(kept).encode())
  logging.warning("Moved %d metric line(s) of steps after %d (superseded by "
                  "this run) from %s to %s.", len(moved), step, path, side)
  return side


def supersede_events_after(workdir: str, step: int, *,
                           stamp: str | None = None) -> list[str]:
  """TensorBoard's view of `supersede_after`: each step once after a resume.

  If any event file in `workdir` holds events of steps > `step`, the events
  up to `step` of all of them are rewritten (in order) into one events file
  named like the oldest one, and the original files are moved aside to
  `events.out.superseded-<stamp>.*` names (no "tfevents" in them: TensorBoard
  skips them). Needs tensorflow (without it no events are written either).
  Returns the paths the originals were moved to.
  """
  files = _Files(workdir)
  names = sorted(n for n in files.listdir(workdir) if "tfevents" in n)
  if not names:
    return []
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.warning("tensorflow unavailable: TensorBoard event files in %s "
                    "were left as they are.", workdir)
    return []
  from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
  kept, superseded = [], False
  for name in names:
    path = files.join(workdir, name)
    try:
      for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        event = event_pb2.Event.FromString(record)
        if event.step <= step:
          if event.HasField("file_version") and kept:
            continue  # One header per file.
          kept.append(record)
        else:
          superseded = True
    except tf.errors.DataLossError:
      superseded = True  # Torn by a kill: the tail is gone either way.
  if not superseded:
    return []
  stamp = stamp or utc_stamp()
  tmp = files.join(workdir, f"kept-{stamp}-{socket.gethostname()}.tmp")
  if kept:
    with tf.io.TFRecordWriter(tmp) as w:
      for record in kept:
        w.write(record)
  moved = []
  for name in names:
    dst = files.join(workdir, name.replace("tfevents", f"superseded-{stamp}"))
    files.rename(files.join(workdir, name), dst)
    moved.append(dst)
  if kept:
    files.rename(tmp, files.join(workdir, names[0]))
  logging.warning("Moved TensorBoard events of steps after %d aside to %s; "
                  "those up to it are in %s.", step, ", ".join(moved),
                  names[0] if kept else "(none)")
  return moved


def read(path_or_workdir: str) -> list[dict]:
  """All metric lines of a workdir (or a metrics.jsonl path)."""
  files = _Files(path_or_workdir)
  path = path_or_workdir
  if files.isdir(path):
    path = files.join(path, "metrics.jsonl")
  with files.open(path, "rb") as f:
    return [json.loads(line) for line in f.read().decode().splitlines()
            if line.strip()]
