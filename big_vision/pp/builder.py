"""Builds a preprocessing function from a pp string.

    fn = get_preprocess_fn('decode|resize(224)|value_range(-1, 1)')
    example = fn({"image": jpeg_bytes, "_seed": seed})

A pp string is a '|'-separated list of op specs (see `registry.parse_name`).
Every op is parsed, looked up and constructed here, up front: a typo in the
12th op of an eval pipeline fails when the config is loaded, naming the op
and its position, instead of an hour later when that evaluator first runs.
"""
import difflib
import importlib
import importlib.util
import inspect
from typing import Any, Callable

from absl import logging
from big_vision.pp import registry
# Imported for their side effect: registering the ops.
from big_vision.pp import ops_general  # pylint: disable=unused-import
from big_vision.pp import ops_image  # pylint: disable=unused-import
from big_vision.pp import ops_vtab  # pylint: disable=unused-import

PREFIX = "preprocess_ops"

# Op modules that may or may not exist in this checkout (owned elsewhere);
# imported when present so that their ops are registered too.
_OPTIONAL_OP_MODULES = ("big_vision.pp.ops_text",)
for _mod in _OPTIONAL_OP_MODULES:
  if importlib.util.find_spec(_mod) is not None:
    importlib.import_module(_mod)

PreprocessFn = Callable[[dict[str, Any]], dict[str, Any]]


def get_preprocess_fn(pp_str: str, log_data: bool = False) -> PreprocessFn:
  """Returns fn(data: dict) -> dict applying the ops of `pp_str` in order.

  Args:
    pp_str: e.g. 'decode|resize(224)|flip_lr|value_range(-1, 1)'. Empty (or
      None) means identity. '|' inside string literals does not split.
    log_data: log each op's output features (shapes and dtypes) when the
      function is traced, to debug a pipeline.

  Returns:
    The preprocessing function. It works on one example (unbatched tensors),
    in eager mode or inside `tf.data.Dataset.map`, and does not modify the
    dict it is given.

  Raises:
    ValueError: a syntax error, unknown or misspelt op, non-literal or wrong
      arguments; the message names the op, its 1-based position and the pp
      string. Raised here, before any data is read.
  """
  pp_str = pp_str or ""
  if not isinstance(pp_str, str):
    raise ValueError(f"pp string must be a str, got {type(pp_str).__name__}: "
                     f"{pp_str!r}.")
  ops = [(f"op #{i} {spec!r}", _build_op(spec, i, pp_str))
         for i, spec in enumerate(_op_specs(pp_str), start=1)]

  def _preprocess(data):
    if not isinstance(data, dict):
      raise ValueError(f"pp function expects a dict of features, got "
                       f"{type(data).__name__}.")
    data = dict(data)  # Ops write into the dict; keep the caller's intact.
    for where, op in ops:
      try:
        data = op(data)
      except Exception as e:  # pylint: disable=broad-except
        # Keep the type (tf.data and callers may rely on it), add context.
        if hasattr(e, "add_note"):
          e.add_note(f"... in pp {where} of {pp_str!r}")
        raise
      if not isinstance(data, dict):
        raise ValueError(f"pp {where} of {pp_str!r} returned "
                         f"{type(data).__name__}, not a dict.")
      if log_data:
        logging.info("pp %s -> %s", where, _describe(data))
    return data

  return _preprocess


def _op_specs(pp_str: str) -> list[str]:
  """The op specs of a pp string ("resize(224)", ...), in order."""
  specs = [s.strip() for s in registry.split_outside_strings(pp_str, "|")]
  return [s for s in specs if s]  # Allows "a|" + "b" style concatenation.


def op_names(pp_str: str) -> list[str]:
  """The names of the ops of `pp_str`, in order ("decode|resize(224)" ->
  ["decode", "resize"]). Parses without building the ops; a malformed spec
  is the ValueError `get_preprocess_fn` would raise for it."""
  return [_parse_op(spec, i, pp_str)[0]
          for i, spec in enumerate(_op_specs(pp_str or ""), start=1)]


def pp_module_names() -> list[str]:
  """Modules under big_vision.pp that may hold ops ("ops_image", "proj.x")."""
  import pkgutil  # pylint: disable=g-import-not-at-top
  from big_vision import pp  # pylint: disable=g-import-not-at-top
  return sorted(m.name[len("big_vision.pp."):] for m in pkgutil.walk_packages(
      pp.__path__, "big_vision.pp.") if not m.ispkg)


def import_pp_modules(names) -> None:
  """big_vision's `config.pp_modules`: imports big_vision.pp.<name> for each.

  Importing a module registers its ops. The default modules (ops_general,
  ops_image, ops_text, ...) are always imported here, so listing them is
  harmless; a name that is not a module under big_vision/pp is a ValueError
  listing the valid ones. Call before building pp functions.
  """
  if names is None:
    return
  if isinstance(names, str):
    names = [names]
  valid = pp_module_names()
  for name in names:
    if name not in valid:
      close = difflib.get_close_matches(str(name), valid, n=1)
      hint = f" Did you mean {close[0]!r}?" if close else ""
      raise ValueError(f"Unknown pp module {name!r} in pp_modules.{hint} "
                       f"Valid: {', '.join(valid)}.")
    importlib.import_module(f"big_vision.pp.{name}")


def available_ops() -> list[str]:
  """Names of all registered pp ops, as written in pp strings."""
  return [n[len(PREFIX) + 1:] for n in registry.Registry.names(PREFIX + ".")]


def _where(spec, position, pp_str):
  return f"op #{position} {spec!r} in pp string {pp_str!r}"


def _parse_op(spec, position, pp_str):
  """(name, args, kwargs) of one op spec; a ValueError that says where."""
  try:
    return registry.parse_name(spec)
  except ValueError as e:
    raise ValueError(
        f"Cannot parse {_where(spec, position, pp_str)}: {e}") from None


def _build_op(spec, position, pp_str):
  """Parses, looks up and constructs one op; any failure is a ValueError."""
  where = _where(spec, position, pp_str)
  name, args, kwargs = _parse_op(spec, position, pp_str)
  try:
    factory = registry.Registry.lookup(f"{PREFIX}.{name}")
  except ValueError:
    known = available_ops()
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    raise ValueError(f"Unknown {where}.{hint} Available ops: "
                     f"{', '.join(known)}.") from None
  try:
    return factory(*args, **kwargs)
  except (TypeError, ValueError) as e:
    raise ValueError(f"Bad arguments for {where}: {e} (signature: {name}"
                     f"{_signature(factory)})") from e


def _signature(factory):
  try:
    return str(inspect.signature(factory))
  except (TypeError, ValueError):
    return "(...)"


def _describe(data):
  parts = []
  for k, v in sorted(data.items()):
    shape, dtype = getattr(v, "shape", None), getattr(v, "dtype", None)
    parts.append(f"{k}: {getattr(dtype, 'name', dtype)}{list(shape)}"
                 if shape is not None else f"{k}: {type(v).__name__}")
  return "{" + ", ".join(parts) + "}"
