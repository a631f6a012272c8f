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


class ConfigError(ValueError):
  """A mistake in the config; str() is one line naming where and what."""

  def __init__(self, where: str, message: str):
    message = " ".join(str(message).split())  # One line, always.
    if where and where not in message:
      message = f"{where}: {message}"
    super().__init__(message)
    self.where = where


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
}

# Keys of config.input (data/pp/batching; see input_pipeline.training).
INPUT_KEYS: dict[str, Check] = {
    "data": _mapping,
    "batch_size": _int(1),
    "pp": _optional(lambda v, where: None),  # A string or a callable.
    "shuffle_buffer_size": _optional(_int(0)),
    "cache_raw": _bool,
    "prefetch": _optional(_int(-1)),
    "skip_corrupt": _bool,
}

MIXUP_KEYS: dict[str, Check] = {"p": _number(0)}


def _check_keys(config, schema: Mapping[str, Check], where: str):
  """Unknown keys are errors (with the closest known one); None is unset."""
  for key in config.keys():
    if key not in schema:
      raise ConfigError(where, str(utils.unknown_name_error(
          "config key", key, schema, where=f"{where}.{key}")))
    if config[key] is not None:
      schema[key](config[key], f"{where}.{key}")


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


def validate(config, workdir: str | None = None) -> None:
  """Checks `config` (and `workdir`) without compiling or reading data.

  Raises ConfigError (a ValueError with a one-line message) on the first
  problem. Order: cheap structural checks first, then those that build
  things (pp, datasets, model shapes, optimizer, shardings), then files.
  """
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

  mesh = _check_mesh_and_batch(config)
  model, objective = _check_model(config, mesh)
  _check_evals(config, mesh)
  # pp strings, then datasets (metadata), then the training pipeline.
  _check_pp_strings(config)
  _check_datasets(config)
  ntrain, batch_specs = _check_train_data(config)
  state_shape = _check_shapes_optimizer_sharding(
      config, mesh, model, objective, ntrain, batch_specs)
  _check_model_init(config)
  if workdir is not None:
    _check_workdir(workdir, state_shape)


def _check_mesh_and_batch(config):
  import jax  # pylint: disable=g-import-not-at-top
  from big_vision import sharding  # pylint: disable=g-import-not-at-top
  mesh = _wrap("config.mesh", sharding.make_mesh, config.get("mesh"))
  shards = sharding.num_data_shards(mesh)
  batch_size = config.input.batch_size
  if batch_size % jax.process_count():
    raise ConfigError("config.input.batch_size", (
        f"{batch_size} is not divisible by the {jax.process_count()} "
        "processes."))
  if batch_size % shards:
    raise ConfigError("config.input.batch_size", (
        f"config.input.batch_size={batch_size} is not divisible by the "
        f"{shards} data-parallel devices of the mesh {dict(mesh.shape)}."))
  accum = int(_get(config, "accum_steps", 1))
  if batch_size % (accum * shards):
    raise ConfigError("config.accum_steps", (
        f"config.input.batch_size={batch_size} must be divisible by "
        f"accum_steps * devices = {accum} * {shards}."))
  return mesh


def _check_model(config, mesh):
  from big_vision import objectives  # pylint: disable=g-import-not-at-top
  from big_vision import train  # pylint: disable=g-import-not-at-top
  _wrap("config.model_name", train.model_module, config.model_name)
  where = f"config.model (of model {config.model_name!r})"
  _, model = _wrap(where, train.create_model, config)
  objective = _wrap("config.loss", objectives.make, config, model, mesh)
  return model, objective


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
    for key in ("log_epochs", "log_percent"):
      if ev.get(key) is not None:
        _number(0)(ev[key], f"{where}.{key}")
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


def _check_train_data(config):
  """(number of training examples, {key: (per-process shape, dtype)})."""
  batch_size = config.input.batch_size
  if _is_synthetic(config):
    from big_vision.datasets import synthetic  # pylint: disable=g-import-not-at-top
    spec = _wrap("config.input.data", synthetic.parse_spec, config.input.data)
    specs = _wrap("config.input.data", synthetic.batch_specs, spec,
                  batch_size)
    return spec["num_examples"], {k: (tuple(s), d) for k, (s, d) in
                                  specs.items()}
  from big_vision import input_pipeline  # pylint: disable=g-import-not-at-top
  # Builds the tf.data graph (pp traced on the element spec); reads nothing.
  ds, ntrain = _wrap("config.input", input_pipeline.training, config.input,
                     seed=_get(config, "seed", 0), start_step=0)
  specs = {k: (tuple(v.shape), v.dtype.as_numpy_dtype)
           for k, v in ds.element_spec.items()}
  return ntrain, specs


def _check_shapes_optimizer_sharding(config, mesh, model, objective, ntrain,
                                     batch_specs):
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from big_vision import train  # pylint: disable=g-import-not-at-top
  batch_size = config.input.batch_size
  total_steps = _wrap("config.total_steps", utils.steps, "total", config,
                      data_size=ntrain, batch_size=batch_size)
  if total_steps < 1:
    raise ConfigError("config.total_steps", (
        f"the run would have {total_steps} steps ({ntrain} examples, batch "
        f"size {batch_size})."))
  input_specs = _wrap("config.input.pp", train.model_input_specs,
                      batch_specs, objective, batch_size)
  rng = jax.ShapeDtypeStruct((2,), jax.numpy.uint32)  # A PRNGKey's shape.
  where = f"config.model (of model {config.model_name!r})"
  try:
    params_shape = jax.eval_shape(
        lambda r: train.init_fn_for(config, model, optax.identity(),
                                    input_specs)(r)["params"], rng)
  except Exception as e:  # pylint: disable=broad-except
    shapes = {k: s for k, (s, _) in input_specs.items()}
    raise ConfigError(where, (
        f"initializing the model on inputs {shapes} failed: "
        f"{type(e).__name__}: {e}")) from None
  tx = _wrap("config (optimizer)", _make_optimizer_abstractly, config,
             params_shape, sched_kw=dict(total_steps=total_steps,
                                         batch_size=batch_size,
                                         data_size=ntrain))
  init = train.init_fn_for(config, model, tx, input_specs)
  state_shape = jax.eval_shape(init, rng)
  _wrap("config.sharding_strategy", train.state_shardings, config, mesh,
        state_shape)
  return state_shape


def _make_optimizer_abstractly(config, params_shape, sched_kw):
  """bv_optax.make, with its eager checks (schedules at step 0) traced, not
  run: running them would compile (tiny) XLA programs."""
  import jax  # pylint: disable=g-import-not-at-top
  from big_vision import optax as bv_optax  # pylint: disable=g-import-not-at-top
  out = []

  def make():
    out.append(bv_optax.make(config, params_shape, sched_kw=sched_kw)[0])
    return 0
  jax.eval_shape(make)
  return out[0]


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
  if isinstance(init, str):
    _check_readable_params(init, "config.model_init")
    return
  for key, path in init.items():
    if path:
      _check_readable_params(path, f"config.model_init.{key}")


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
