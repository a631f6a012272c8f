"""A global name -> factory registry, and a safe parser for call specs.

Configs describe preprocessing (and other pluggable pieces) as short strings
such as `resize(224, method="bilinear")`. This module turns such a spec into
`(name, args, kwargs)` and maps the name to the factory registered under it.

Why a parser instead of `eval`: configs are shared, copied and pasted from
papers and colabs, and a pp string is data, not code. We parse with `ast` and
accept only Python literals (numbers, strings, tuples, lists, dicts, sets,
booleans, None) as arguments, so a spec can never run code or reach a name in
some module's globals.

Pure Python on purpose (no tensorflow, no jax): registries of models,
evaluators or anything else can reuse it, and it imports in milliseconds.
"""
import ast
import contextlib
import difflib
import functools
from typing import Any, Callable


class Registry:
  """Global registry of factories, keyed by dotted names.

  Names are namespaced by a prefix, e.g. "preprocess_ops.resize"; the prefix
  only serves to keep unrelated registries apart and to scope suggestions.
  """

  _GLOBAL: dict[str, Callable[..., Any]] = {}

  @classmethod
  def register(cls, name: str, replace: bool = False):
    """Decorator registering `fn` under `name` and returning it unchanged.

    Registering a *different* function under a taken name is an error unless
    `replace=True`: a silent override would make the meaning of a config
    depend on import order. Re-registering the same function (same module and
    qualified name, e.g. after `importlib.reload`) is allowed.

    Args:
      name: full dotted name, e.g. "preprocess_ops.resize".
      replace: allow overriding an existing, different registration.

    Returns:
      The decorator.
    """
    _check_name(name)

    def decorator(fn):
      old = cls._GLOBAL.get(name)
      if old is not None and not replace and not _same_function(old, fn):
        raise ValueError(
            f"{name!r} is already registered to "
            f"{old.__module__}.{old.__qualname__}; pass replace=True to "
            "override it on purpose.")
      cls._GLOBAL[name] = fn
      return fn

    return decorator

  @classmethod
  def lookup(cls, name: str,
             kwargs_extra: dict[str, Any] | None = None) -> Callable[..., Any]:
    """Returns the factory registered under a full dotted name or call spec.

    `lookup("preprocess_ops.resize")` is the registered factory itself;
    `lookup("preprocess_ops.resize(224, method='nearest')")` (big_vision's
    form) is that factory with the spec's arguments bound
    (`functools.partial`), plus `kwargs_extra` if given; calling it with no
    arguments builds the op. Arguments are parsed as in `parse_name`
    (literals only).

    Raises:
      ValueError: unknown name (the message suggests close names and lists
        the names registered under the same prefix), or a bad spec.
    """
    key, args, kwargs = name, (), {}
    if name not in cls._GLOBAL and "(" in name:
      key, args, kwargs = parse_name(name)
    try:
      fn = cls._GLOBAL[key]
    except KeyError:
      raise ValueError(_unknown_message(key, cls.names())) from None
    if not args and not kwargs and not kwargs_extra and key == name:
      return fn
    return functools.partial(fn, *args, **{**kwargs, **(kwargs_extra or {})})

  @classmethod
  def global_registry(cls) -> dict[str, Callable[..., Any]]:
    """The underlying name -> factory dict (big_vision's accessor)."""
    return cls._GLOBAL

  @classmethod
  def names(cls, prefix: str = "") -> list[str]:
    """Sorted registered names starting with `prefix`."""
    return sorted(n for n in cls._GLOBAL if n.startswith(prefix))

  @classmethod
  def unregister(cls, name: str) -> None:
    """Removes `name` (for tests that register temporary entries)."""
    cls._GLOBAL.pop(name, None)


@contextlib.contextmanager
def temporary_ops(**ops: Callable[..., Any]):
  """Registers pp ops "preprocess_ops.<name>" for the `with` block only.

    with temporary_ops(double=lambda: lambda d: {k: 2 * v for k, v in
                                                   d.items()}):
      fn = get_preprocess_fn("double")

  A name that is already registered is an error (no silent shadowing).
  """
  names = {f"preprocess_ops.{k}": v for k, v in ops.items()}
  taken = sorted(n for n in names if n in Registry.global_registry())
  if taken:
    raise ValueError(f"temporary_ops: {taken} already registered.")
  Registry.global_registry().update(names)
  try:
    yield
  finally:
    for n in names:
      Registry.unregister(n)


def parse_name(spec: str) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
  """Parses "name", "name(1, (2, 3), k='v')" into (name, args, kwargs).

  The name may be dotted ("a.b"). Every argument must be a Python literal;
  each argument node is evaluated with `ast.literal_eval`, never `eval`.

  Args:
    spec: the call spec.

  Returns:
    (name, positional args tuple, keyword args dict).

  Raises:
    ValueError: the spec is not valid Python, is not a bare name or a call of
      a (dotted) name, uses `*args`/`**kw`, or has a non-literal argument.
  """
  if not isinstance(spec, str):
    raise ValueError(f"Expected a string spec, got {type(spec).__name__}: "
                     f"{spec!r}.")
  text = spec.strip()
  if not text:
    raise ValueError("Empty spec: expected a name such as 'flip_lr' or a "
                     "call such as 'resize(224)'.")
  try:
    node = ast.parse(text, mode="eval").body
  except SyntaxError as e:
    raise ValueError(f"Syntax error in {text!r}: {e.msg} (column "
                     f"{e.offset}).") from None

  if not isinstance(node, ast.Call):
    return _dotted_name(node, text), (), {}

  name = _dotted_name(node.func, text)
  args = []
  for arg in node.args:
    if isinstance(arg, ast.Starred):
      raise ValueError(f"*args are not supported in {text!r}.")
    args.append(_literal(arg, text))
  kwargs = {}
  for kw in node.keywords:
    if kw.arg is None:
      raise ValueError(f"**kwargs are not supported in {text!r}.")
    kwargs[kw.arg] = _literal(kw.value, text)
  return name, tuple(args), kwargs


def split_outside_strings(text: str, sep: str = "|") -> list[str]:
  """Splits `text` on `sep` characters that are outside string literals.

  Why not `str.split`: a pp string may carry arbitrary strings as arguments
  (`lookup({"a|b": 0})`, a text template, a regexp) and those must survive.
  Separators inside brackets are also kept, since a literal never contains a
  bare `|` there and splitting would only produce a confusing error.
  A malformed string (unterminated quote) is returned as one trailing piece,
  for `parse_name` to report as a syntax error.
  """
  pieces, start, depth, quote, i = [], 0, 0, None, 0
  while i < len(text):
    c = text[i]
    if quote:
      if c == "\\":
        i += 1  # Skip the escaped character.
      elif c == quote:
        quote = None
    elif c in "'\"":
      quote = c
    elif c in "([{":
      depth += 1
    elif c in ")]}":
      depth = max(depth - 1, 0)
    elif c == sep and depth == 0:
      pieces.append(text[start:i])
      start = i + 1
    i += 1
  pieces.append(text[start:])
  return pieces


def _check_name(name):
  if not isinstance(name, str) or not all(
      part.isidentifier() for part in name.split(".")):
    raise ValueError(f"Registry names are dotted identifiers, got {name!r}.")


def _same_function(a, b):
  """Same definition, possibly re-executed (module reload, re-import)."""
  a, b = (getattr(f, "__wrapped__", f) for f in (a, b))
  if a is b:
    return True
  key = lambda f: (getattr(f, "__module__", None),
                   getattr(f, "__qualname__", None),
                   getattr(getattr(f, "__code__", None), "co_filename", None),
                   getattr(getattr(f, "__code__", None), "co_firstlineno",
                           None))
  return None not in key(a) and key(a) == key(b)


def _dotted_name(node, text):
  if isinstance(node, ast.Name):
    return node.id
  if isinstance(node, ast.Attribute):
    return _dotted_name(node.value, text) + "." + node.attr
  raise ValueError(
      f"Expected a name or a call like 'name(arg, key=value)', got {text!r}.")


def _literal(node, text):
  try:
    return ast.literal_eval(node)
  except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
    src = ast.get_source_segment(text, node) or ast.dump(node)
    raise ValueError(
        f"Argument {src!r} in {text!r} is not a Python literal; only numbers, "
        "strings, tuples, lists, dicts, sets, True/False and None are allowed "
        "(quote strings: key=\"image\", not key=image).") from None


def _prefix(name):
  return name.rpartition(".")[0]


def _unknown_message(name, registered):
  prefix = _prefix(name)
  scope = [n for n in registered if _prefix(n) == prefix] or registered
  strip = len(prefix) + 1 if prefix else 0
  short = [n[strip:] if n.startswith(prefix + ".") else n for n in scope]
  close = difflib.get_close_matches(name[strip:], short, n=3, cutoff=0.6)
  hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
  where = f" under {prefix!r}" if prefix else ""
  return (f"Unknown name {name!r}.{hint} Registered{where}: "
          f"{', '.join(short) if short else '(nothing)'}.")
