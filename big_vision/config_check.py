"""Validates a training config before anything is compiled or read.

  config_check.validate(config, workdir)   # raises ConfigError, or returns

A typo that surfaces after an hour of compiling on a pod costs real money, so
`train.train` calls this first. Everything here is cheap: it builds the pp
functions, looks up datasets (metadata only), constructs the model and
evaluates its shapes abstractly (`jax.eval_shape`), builds the optimizer on
those shapes (which checks schedule coverage), builds the mesh and the
parameter shardings, stats `model_init` and probes the workdir. Nothing is
compiled and no example is decoded, so a bad config fails in seconds.

Each problem raises `ConfigError` (a ValueError) whose message is ONE line:
where in the config, what is wrong, and the valid choices (close matches
first), e.g.

  config.input.pp: Unknown op #3 'value_rang(-1, 1)' ... Did you mean
  'value_range'? Available ops: ...

`python -m big_vision.train` prints it as `error: <message>` and exits with
status 2 (see train.main).

Known keys. `TOP_LEVEL` lists every top-level key some part of big_vision
reads, with a check of its type; `INPUT_KEYS` those of `config.input`. An
unknown key is almost always a typo (`--config.lrr=...` would otherwise be
silently ignored), so it is an error that names the closest known key. A
module that starts reading a new key adds it here (tests/test_config_check.py
validates every config under big_vision/configs, so a missing entry shows up
at once).
"""
import math
import numbers
import os
import tempfile
import zipfile
from typing import Any, Callable, Mapping

from big_vision import utils


# One class for every config mistake (program.build raises it too).
ConfigError = utils.ConfigError


def flag_error_line(e: BaseException) -> str:
  """One line from a flag-parsing error (config file, :arg, --config.x=v).

  ml_collections wraps an exception raised while loading the config module
  in a message that embeds its whole traceback; the last line of that
  traceback ("ValueError: Unknown config arg ...") is what the user needs.
  """
  text = str(e)
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  if not lines:
    return type(e).__name__
  if "Failed loading config file" in text:  # Missing or unreadable file.
    return f"--config: cannot load the config file: {lines[-1]}"
  if "Traceback (most recent call last)" in text:
    first = lines[0].rstrip(":")
    return f"{first}: {lines[-1]}"
  return " ".join(lines)


def parse_flags_or_exit(argv):
  """absl's flag parsing for the trainer and tools (`app.run(main,
  flags_parser=...)`), but a bad --config (file, :arg or override) is one
  `error:` line and exit status 2, like the errors of the config check."""
  import sys  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    argv = flags.FLAGS(argv)
    if flags.FLAGS.config is None:
      raise flags.Error("--config is required.")
    flags.FLAGS.config.keys()  # A config file that failed to load raises.
  except (flags.Error, OSError, ValueError) as e:
    print(f"error: {flag_error_line(e)}", file=sys.stderr, flush=True)
    sys.exit(2)
  return argv


# ----------------------------------------------------------------------------
# Type checks: fn(value, where) raises ConfigError.
# ----------------------------------------------------------------------------
Check = Callable[[Any, str], None]


def _describe(value) -> str:
  return f"{value!r} ({type(value).__name__})"


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _int(lo: int | None = None) -> Check:
  def check(v, where):
    if not _is_int(v):
      raise ConfigError(where, f"must be an integer, got {_describe(v)}.")
    if lo is not None and v < lo:
      raise ConfigError(where, f"must be >= {lo}, got {v}.")
  return check


def _number(lo: float | None = None, hi: float | None = None,
            lo_open: bool = False, hi_open: bool = False) -> Check:
  def check(v, where):
    if not _is_number(v) or not math.isfinite(v):
      raise ConfigError(where, f"must be a finite number, got {_describe(v)}.")
    if lo is not None and (v < lo or (lo_open and v == lo)):
      raise ConfigError(where, f"must be {'>' if lo_open else '>='} {lo}, "
                        f"got {v}.")
    if hi is not None and (v > hi or (hi_open and v == hi)):
      raise ConfigError(where, f"must be {'<' if hi_open else '<='} {hi}, "
                        f"got {v}.")
  return check


def _str(v, where):
  if not isinstance(v, str) or not v:
    raise ConfigError(where, f"must be a non-empty string, got {_describe(v)}.")


def _bool(v, where):
  if not isinstance(v, bool):
    raise ConfigError(where, f"must be True or False, got {_describe(v)}.")


def _mapping(v, where):
  if not isinstance(v, Mapping) and not hasattr(v, "items"):
    raise ConfigError(where, f"must be a dict, got {_describe(v)}.")


def _pairs(what: str) -> Check:
  def check(v, where):
    if isinstance(v, (str, bytes)) or not isinstance(v, (list, tuple)):
      raise ConfigError(where, f"must be a list of {what} pairs, got "
                        f"{_describe(v)}.")
    for i, pair in enumerate(v):
      if not isinstance(pair, (list, tuple)) or len(pair) != 2:
        raise ConfigError(where, f"entry {i} must be a {what} pair, got "
                          f"{pair!r}.")
  return check


def _mesh(v, where):
  _pairs("(axis name, size)")(v, where)
  for name, size in v:
    if not isinstance(name, str) or not _is_int(size):
      raise ConfigError(where, f"entries are (axis name: str, size: int; -1 "
                        f"for the remaining devices), got ({name!r}, "
                        f"{size!r}).")


def _schedule(v, where):
  if isinstance(v, (list, tuple)):
    _pairs("(regex, schedule dict or None)")(v, where)
  else:
    _mapping(v, where)


def _model_init(v, where):
  if isinstance(v, str):
    return
  _mapping(v, where)
  for k, path in v.items():
    if path is not None and not isinstance(path, str):
      raise ConfigError(f"{where}.{k}", f"must be a path, got {_describe(path)}.")


def _optional(check: Check) -> Check:
  def fn(v, where):
    if v is not None:
      check(v, where)
  return fn


# Every top-level key read by train.py, objectives.py, optax.py, sharding.py,
# checkpoint handling and the tools, with the check of its value.
TOP_LEVEL: dict[str, Check] = {
    "seed": _int(),
    "total_steps": _optional(_int(1)),
    "total_epochs": _optional(_number(0, lo_open=True)),
    "total_examples": _optional(_int(1)),
    "num_classes": _optional(_int(1)),
    "loss": _str,
    "input": _mapping,
    "model_name": _str,
    "model": _optional(_mapping),
    "model_init": _optional(_model_init),
    "model_load": _optional(_mapping),
    "optax_name": _str,
    "optax": _optional(_mapping),
    "lr": _number(0),
    "wd": _optional(_number(0)),
    "wd_mults": _optional(_pairs("(regex, multiplier)")),
    "lr_mults": _optional(_pairs("(regex, multiplier)")),
    "schedule": _optional(_schedule),
    "grad_clip_norm": _optional(_number(0, lo_open=True)),
    "mixup": _optional(_mapping),
    "label_smoothing": _optional(_number(0, 1, hi_open=True)),
    "mesh": _optional(_mesh),
    "sharding_strategy": _optional(_pairs("(regex, tactic)")),
    "sharding_rules": _optional(_pairs("(logical axis, mesh axes)")),
    "log_training_steps": _int(1),
    "ckpt_steps": _optional(_int(0)),
    "keep_ckpt_steps": _optional(_int(1)),
    "evals": _optional(_mapping),
    "accum_steps": _int(1),
    "ema_decay": _optional(_number(0, 1, hi_open=True)),
    "chunked_loss": _bool,
    # big_vision keys: op modules to import (an unknown one is an error, see
    # _pp_modules) and the seconds a due checkpoint waits for the previous
    # asynchronous save (checkpoint.Checkpointer(timeout_s=...)).
    "pp_modules": _optional(lambda v, where: _pp_modules(v, where)),
    "ckpt_timeout": _optional(_number(0, lo_open=True)),
    # Sharpness-aware gradients (big_vision/sam.py); keys checked there.
    "sam": _optional(_mapping),
    "gsam": _optional(_mapping),
    # config.loss="distill": teacher/temperature/label_weight, checked by
    # objectives.distill_objective.
    "distill": _optional(_mapping),
    # FlexiViT: the patch sizes drawn per step (objectives.flexi_patch_sizes).
    "flexivit": _optional(_mapping),
    # config.loss="combined": {objective name: weight}, checked by
    # objectives.combined_objective; the eos id of the captioning targets.
    "objectives": _optional(_mapping),
    # Its late-training terms (local_to_global, masked_prediction): checked
    # by self_distill.settings.
    "self_distill": _optional(_mapping),
    "caption_eos_id": _optional(_int(0)),
}

# Keys of config.input (data/pp/batching; see input_pipeline.training).
INPUT_KEYS: dict[str, Check] = {
    "data": _mapping,
    "batch_size": _int(1),
    "pp": _optional(lambda v, where: None),  # A string or a callable.
    "shuffle_buffer_size": _optional(_int(0)),
    "cache_raw": _bool,
    "cache": _bool,  # Cache the preprocessed examples (big_vision's cache).
    "prefetch": _optional(_int(-1)),
    "skip_corrupt": _bool,
    # Consecutive failed examples before skip_corrupt stops the run.
    "max_consecutive_corrupt": _optional(_int(1)),
}

MIXUP_KEYS: dict[str, Check] = {"p": _number(0), "cutmix_alpha": _number(0),
                                "switch_prob": _number(0, 1)}


def _pp_modules(v, where):
  """Imports big_vision.pp.<name> for each name (registering their ops)."""
  from big_vision.pp import builder  # pylint: disable=g-import-not-at-top
  if isinstance(v, str) or not isinstance(v, (list, tuple)):
    raise ConfigError(where, f"must be a list of pp module names such as "
                      f"['ops_general', 'ops_image'], got {_describe(v)}.")
  _wrap(where, builder.import_pp_modules, v)


# An unknown key this similar to a known one is a typo (`lrr` for `lr`): an
# error. Anything else (a helper value such as `config.fewshot = ...`, a key
# of another codebase) is only unread: a warning lists them all.
TYPO_CUTOFF = 0.75


def _check_keys(config, schema: Mapping[str, Check], where: str):
  """Typos of known keys are errors; other unknown keys a logged warning.

  Only the top-level and `config.input` schemas tolerate unread keys (as
  big_vision does); in the small nested ones (mixup, ...) any unknown key is
  an error. Returns the unknown (unread) keys. None values are unset.
  """
  import difflib  # pylint: disable=g-import-not-at-top
  lenient = schema is TOP_LEVEL or schema is INPUT_KEYS
  unread = []
  for key in config.keys():
    if key not in schema:
      if not lenient or difflib.get_close_matches(
          str(key), list(schema), n=1, cutoff=TYPO_CUTOFF):
        raise ConfigError(where, str(utils.unknown_name_error(
            "config key", key, schema, where=f"{where}.{key}")))
      unread.append(key)
      continue
    if config[key] is not None:
      schema[key](config[key], f"{where}.{key}")
  if unread:
    from absl import logging  # pylint: disable=g-import-not-at-top
    logging.warning(
        "%s: keys nothing reads (ignored; not close to any known key): %s. "
        "Known keys: %s.", where, ", ".join(f"{where}.{k}" for k in unread),
        ", ".join(sorted(schema)))
  return unread


# ----------------------------------------------------------------------------
# Validation.
# ----------------------------------------------------------------------------
def _wrap(where: str, fn, *args, errors=(ValueError, TypeError), **kwargs):
  """fn(*args, **kwargs), turning `errors` into a ConfigError at `where`."""
  try:
    return fn(*args, **kwargs)
  except ConfigError:
    raise
  except errors as e:
    raise ConfigError(where, str(e)) from None


def _get(config, key, default=None):
  value = config.get(key, default) if hasattr(config, "get") else default
  return default if value is None else value


def validate(config, workdir: str | None = None):
  """Checks `config` (and `workdir`) without compiling or reading data.

  Returns the abstract `program.Program` it built (train.py runs exactly
  that). Raises ConfigError (a ValueError with a one-line message) on the
  first problem. Order: cheap structural checks first, then those that
  build things (pp, datasets, then the program: model shapes, objective,
  optimizer, shardings), then files.
  """
  from big_vision import program  # pylint: disable=g-import-not-at-top
  _check_keys(config, TOP_LEVEL, "config")
  for key in ("input", "model_name", "optax_name", "lr"):
    if config.get(key) is None:
      raise ConfigError(f"config.{key}", "is required.")
  _check_keys(config.input, INPUT_KEYS, "config.input")
  for key in ("data", "batch_size"):
    if config.input.get(key) is None:
      raise ConfigError(f"config.input.{key}", "is required.")
  if config.get("mixup"):
    _check_keys(config.mixup, MIXUP_KEYS, "config.mixup")

  with program.stage("config.mesh"):
    from big_vision import sharding  # pylint: disable=g-import-not-at-top
    mesh = sharding.make_mesh(config.get("mesh"))
  program.check_batch_size(config, mesh)
  with program.stage("config.model_name"):
    program.model_module(config.model_name)
  _check_evals(config, mesh)
  _check_pp_strings(config)
  _check_datasets(config)
  prog = program.build(config, mesh=mesh)
  _check_model_init(config)
  if workdir is not None:
    _check_workdir(workdir, prog.state_shape)
  return prog


def _pp_keys(cfg: Mapping[str, Any]):
  return [k for k, v in cfg.items()
          if k.startswith("pp") and isinstance(v, str)]


def _check_pp(pp, where):
  from big_vision.pp import builder  # pylint: disable=g-import-not-at-top
  if callable(pp):
    return
  _wrap(where, builder.get_preprocess_fn, pp)


def _check_dataset(data, where):
  _mapping(data, where)
  if not data.get("name"):
    raise ConfigError(f"{where}.name", "is required (a dataset name).")
  if "split" not in data:
    raise ConfigError(f"{where}.split", "is required (e.g. 'train').")
  from big_vision import datasets  # pylint: disable=g-import-not-at-top
  return _wrap(where, datasets.get, **dict(data))


def _evals(config):
  return [(f"config.evals.{name}", ev)
          for name, ev in (config.get("evals") or {}).items()]


def _is_mapping(x) -> bool:
  return isinstance(x, Mapping) or hasattr(x, "items")


def _check_pp_strings(config):
  if not _is_synthetic(config):
    if config.input.get("pp") is None:
      raise ConfigError("config.input.pp", "is required (a pp string such "
                        "as 'decode|resize(224)|value_range(-1, 1)').")
    _check_pp(config.input.pp, "config.input.pp")
  for where, ev in _evals(config):
    for key in _pp_keys(ev):
      _check_pp(ev[key], f"{where}.{key}")


def _check_datasets(config):
  if not _is_synthetic(config):
    _check_dataset(config.input.data, "config.input.data")
  for where, ev in _evals(config):
    if _is_mapping(ev.get("data")):
      _check_dataset(ev["data"], f"{where}.data")


def _check_evals(config, mesh):
  """Evaluator types, their keys and schedules, batch sizes (no data)."""
  from big_vision import sharding  # pylint: disable=g-import-not-at-top
  from big_vision.evaluators import common  # pylint: disable=g-import-not-at-top
  for name, ev in (config.get("evals") or {}).items():
    where = f"config.evals.{name}"
    _mapping(ev, where)
    _wrap(where, common.check_config, ev, where)
    for key in ("log_steps", "log_examples"):
      if ev.get(key) is not None:
        _int(0)(ev[key], f"{where}.{key}")
    if ev.get("log_epochs") is not None:
      _number(0)(ev["log_epochs"], f"{where}.log_epochs")
    if ev.get("log_percent") is not None:  # A fraction of the run.
      _number(0, 1)(ev["log_percent"], f"{where}.log_percent")
    bs = ev.get("batch_size")
    if bs is not None:
      _int(1)(bs, f"{where}.batch_size")
      shards = sharding.num_data_shards(mesh)
      if bs % shards:
        raise ConfigError(f"{where}.batch_size", (
            f"{bs} is not divisible by the {shards} data-parallel devices "
            f"of the mesh {dict(mesh.shape)}."))


def _is_synthetic(config) -> bool:
  return (config.input.get("data") or {}).get("name") == "synthetic"


def _check_readable_params(path: str, where: str):
  """A model_init path must exist and look complete; nothing is loaded."""
  if "://" in path:
    return  # Remote: checked when it is read.
  if not os.path.exists(path):
    parent = os.path.dirname(os.path.abspath(path))
    near = ""
    if os.path.isdir(parent):
      import difflib  # pylint: disable=g-import-not-at-top
      close = difflib.get_close_matches(os.path.basename(path),
                                        os.listdir(parent), n=1)
      near = f" Did you mean {os.path.join(parent, close[0])!r}?" if close else ""
    raise ConfigError(where, f"no file or directory {path!r}.{near}")
  if os.path.isdir(path):
    from big_vision import checkpoint  # pylint: disable=g-import-not-at-top
    if not os.path.isdir(os.path.join(path, checkpoint.CKPT_SUBDIR)):
      raise ConfigError(where, (
          f"{path!r} is a directory but not a training workdir (no "
          f"{checkpoint.CKPT_SUBDIR}/ inside); give an .npz file or a "
          "workdir."))
    ckpt = checkpoint.Checkpointer(path, read_only=True)
    if ckpt.latest_step() is None:
      raise ConfigError(where, f"the workdir {path!r} has no complete "
                        "checkpoint.")
    return
  if not os.access(path, os.R_OK):
    raise ConfigError(where, f"{path!r} is not readable (permissions).")
  if path.endswith(".npz") or zipfile.is_zipfile(path):
    try:  # The index sits at the end of the file: catches truncation.
      with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as e:
      raise ConfigError(where, f"{path!r} is not a readable .npz (truncated "
                        f"or corrupt: {e}).") from None
    if not names:
      raise ConfigError(where, f"{path!r} holds no arrays.")


def _check_model_init(config):
  init = config.get("model_init")
  if not init:
    return
  from big_vision.models import common  # pylint: disable=g-import-not-at-top
  family = config.get("model_name")

  def check(path, where):  # Short names resolved, ":img" sub-models split.
    path, _ = common.checkpoint_location(path, config.get("model"), family)
    _check_readable_params(path, where)
  if isinstance(init, str):
    check(init, "config.model_init")
    return
  for key, path in init.items():
    if path:
      check(path, f"config.model_init.{key}")


def _check_workdir(workdir: str, state_shape):
  if not workdir:
    raise ConfigError("--workdir", "is required.")
  if "://" in workdir:
    return
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError("--workdir", f"{workdir!r} exists and is not a "
                      "directory.")
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_probe"):
      pass
  except OSError as e:
    raise ConfigError("--workdir", f"{workdir!r} is not writable: "
                      f"{e.strerror or e}.") from None
  _check_resumable(workdir, state_shape)


def _check_resumable(workdir: str, state_shape):
  """A checkpoint already in `workdir` must fit the configured model."""
  from big_vision import checkpoint  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(os.path.join(workdir, checkpoint.CKPT_SUBDIR)):
    return
  ckpt = checkpoint.Checkpointer(workdir, read_only=True)
  step = ckpt.latest_step()
  if step is None:
    return
  try:
    meta = ckpt.manager.item_metadata(step)["params"]
    saved = {n: tuple(m.shape) for n, m in
             utils.tree_flatten_with_names(meta)[0]}
  except Exception:  # pylint: disable=broad-except
    return  # Unreadable metadata: the restore will say more.
  wanted = {n: tuple(s.shape) for n, s in
            utils.tree_flatten_with_names(state_shape["params"])[0]}
  hint = ("Use a new --workdir, or the config that wrote this checkpoint.")
  missing = sorted(set(wanted) - set(saved))
  extra = sorted(set(saved) - set(wanted))
  if missing or extra:
    raise ConfigError("--workdir", (
        f"{workdir!r} holds a checkpoint (step {step}) of a different model: "
        f"parameters missing from it: {missing[:3]}, not in the model: "
        f"{extra[:3]}. {hint}"))
  for name in sorted(wanted):
    if wanted[name] != saved[name]:
      raise ConfigError("--workdir", (
          f"{workdir!r} holds a checkpoint (step {step}) of a different "
          f"model: parameter {name} has shape {saved[name]} there but "
          f"{wanted[name]} in the config. {hint}"))


# ----------------------------------------------------------------------------
# Command-line overrides win over the config module's exclusive keys.
# ----------------------------------------------------------------------------
DURATION_SUFFIXES = ("steps", "epochs", "examples", "percent")


def override_paths(argv) -> list[str]:
  """Dotted config paths set on the command line (`--config.a.b=v`)."""
  out = []
  for i, arg in enumerate(argv):
    if arg.startswith("--config."):
      out.append(arg[len("--config."):].split("=", 1)[0])
    del i
  return out


def apply_override_precedence(config, argv, log=None) -> list[str]:
  """A typed `--config.total_steps=5` replaces the config's `total_epochs`.

  Durations may be given in steps, epochs, examples or percent, and only one
  of each `prefix_*` family may be set (`total_*`, `log_*`, `warmup_*`,
  `cooldown_*`, anywhere in the config, evaluators and schedules included).
  A user who types an override means it: the siblings that the config module
  set are cleared (and each replacement is logged) instead of failing the
  run with "set only one of ...". Returns the log lines.
  """
  lines = []
  for path in override_paths(argv):
    *parents, leaf = path.split(".")
    prefix, _, suffix = leaf.rpartition("_")
    if suffix not in DURATION_SUFFIXES or not prefix:
      continue
    node = config
    try:
      for p in parents:
        node = node[p]
    except (KeyError, AttributeError, TypeError):
      continue
    for other in DURATION_SUFFIXES:
      key = f"{prefix}_{other}"
      if other == suffix or not hasattr(node, "get"):
        continue
      if node.get(key) is not None:
        where = ".".join(["config"] + parents + [key])
        line = (f"--config.{path} replaces {where}={node.get(key)!r} set by "
                "the config module.")
        node[key] = None
        lines.append(line)
        if log is not None:
          log(line)
  return lines
