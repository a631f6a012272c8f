"""Helpers shared by config modules (plain data: no jax, no tensorflow).

`parse_arg("variant=S/16,runlocal", variant="B/16", runlocal=False)` turns the
`:arg` suffix of `--config big_vision/configs/X.py:arg` into a ConfigDict:
a bare name sets a bool default to True; `key=value` is converted to the type
of the default; a string value may contain commas ("randaug=2,10,mixup=0.2").
Unknown keys are an error naming the valid ones.

big_vision's forms work too: a spec value may be a `(default, convert_fn)`
pair; a lone value without "=" that is no arg name is the value of the FIRST
spec entry (`vit.py:B/16`); `lazy=True` keeps unknown args, typed by
`autotype`. `arg(**kw)` / `pack_arg(**kw)` build such strings (for sweeps),
and `format_str("resize({res})", config)` builds a string that follows later
edits of config fields.
"""
import difflib
import string

import ml_collections


def get_type_with_default(v):
  """(default, convert_fn) of one spec entry; bools parse strictly."""
  if isinstance(v, bool):
    def strict_bool(x):
      if str(x).lower() not in ("true", "false", "1", "0", ""):
        raise ValueError(f"{x!r} is not a boolean (true/false).")
      return str(x).lower() in ("true", "1")
    return v, strict_bool
  if isinstance(v, (tuple, list)):
    if len(v) != 2 or not callable(v[1]):
      raise ValueError(f"A spec pair must be (default, convert_fn), got {v!r}.")
    return v[0], v[1]
  return v, type(v)


def autotype(x: str):
  """'true' -> True, '3' -> 3, '0.5' -> 0.5, anything else stays a str."""
  if x.lower() in ("true", "false"):
    return x.lower() == "true"
  for convert in (int, float):
    try:
      return convert(x)
    except ValueError:
      pass
  return x


def pack_arg(**kw) -> str:
  """{a: 1, b: 'x'} -> 'a=1,b=x' (the inverse of parse_arg)."""
  for k, v in kw.items():
    if "," in f"{v}":
      raise ValueError(f"pack_arg: value of {k!r} contains ',': {v!r}.")
  return ",".join(f"{k}={v}" for k, v in kw.items())


def arg(**kw) -> dict:
  """big_vision's sweep helper: {"config_arg": "a=1,b=x", "a": 1, "b": "x"}."""
  return {"config_arg": pack_arg(**kw), **kw}


def format_str(format_string: str, config):
  """A string built from config fields that follows later edits of them.

    config.res = 224
    config.pp = format_str("resize({res})|central_crop({res})", config)
    config.res = 384   # config.pp is now "resize(384)|central_crop(384)"

  Fields may be dotted ("{input.res}"). Returns an ml_collections
  FieldReference (reading config.pp gives the current string). Only plain
  "{name}" fields, no format specs.
  """
  out = ml_collections.FieldReference("")
  for literal, field, spec, conversion in string.Formatter().parse(
      format_string):
    if spec or conversion:
      raise ValueError(f"format_str: only plain {{name}} fields, got "
                       f"{{{field}...}} in {format_string!r}.")
    if literal:
      out = out + literal
    if field:
      node = config
      *parents, leaf = field.split(".")
      for part in parents:
        node = getattr(node, part)
      out = out + node.get_ref(leaf).to_str()
  return out


def parse_arg(arg, lazy=False, **spec):
  """Parses 'a=1,b,c=x' against defaults in `spec` (types follow defaults)."""
  converters = {k: get_type_with_default(v)[1] for k, v in spec.items()}
  spec = {k: get_type_with_default(v)[0] for k, v in spec.items()}
  config = ml_collections.ConfigDict(spec)
  if not arg:
    return config
  arg = str(arg)
  if ("," not in arg and "=" not in arg and arg not in spec and spec
      and not difflib.get_close_matches(arg, list(spec), n=1)):
    # big_vision: a lone value is the value of the first spec entry.
    arg = f"{next(iter(spec))}={arg}"
  items = []
  for item in str(arg).split(","):
    item = item.strip()
    # A string value may hold commas ("randaug=2,15"): an item that is
    # neither key=value nor a name continues the previous string value.
    if (item and "=" not in item and not item.isidentifier() and items
        and "=" in items[-1]
        and isinstance(spec.get(items[-1].partition("=")[0]), str)):
      items[-1] += "," + item
    else:
      items.append(item)
  for item in items:
    if not item:
      continue
    key, eq, value = item.partition("=")
    if key not in spec:
      if lazy:
        config[key] = autotype(value) if eq else True
        continue
      close = difflib.get_close_matches(key, list(spec), n=1)
      hint = f" Did you mean {close[0]!r}?" if close else ""
      raise ValueError(f"Unknown config arg {key!r} in {arg!r}.{hint} "
                       f"Valid args: {', '.join(sorted(spec))}.")
    default = spec[key]
    if not eq:
      if not isinstance(default, bool):
        raise ValueError(f"Config arg {key!r} needs a value ({key}=...).")
      config[key] = True
    elif converters[key] not in (bool, int, float, str, type(None)) and not (
        isinstance(default, bool)):
      config[key] = converters[key](value)  # A (default, convert_fn) pair.
    elif isinstance(default, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"Config arg {key}={value!r} must be true or false.")
      config[key] = value.lower() in ("true", "1")
    elif isinstance(default, int):
      config[key] = int(value)
    elif isinstance(default, float):
      config[key] = float(value)
    else:
      config[key] = value
  return config


# Digits are upsampled to `res * 5/4`; training takes a random `res` window
# (translations of up to an eighth of the image), eval the central one.
DIGITS_PP_TRAIN = ("decode|resize({big})|random_crop({res})|value_range(-1, 1)"
                   "|onehot(10, key='label', key_result='labels')"
                   "|keep('image', 'labels')")
DIGITS_PP_EVAL = ("decode|resize({big})|central_crop({res})|value_range(-1, 1)"
                  "|onehot(10, key='label', key_result='labels')"
                  "|keep('image', 'labels')")


def digits_pp(res=32, train=True):
  return (DIGITS_PP_TRAIN if train else DIGITS_PP_EVAL).format(
      res=res, big=res * 5 // 4)


def digits_input(res=32, batch_size=128):
  """The embedded digits data (1,500 train / 297 test), as a config block."""
  return ml_collections.ConfigDict(dict(
      data=dict(name="digits", split="train"),
      batch_size=batch_size,
      shuffle_buffer_size=1500,
      pp=digits_pp(res, train=True),
  ))


def digits_eval(res=32, log_steps=100, batch_size=128):
  """Classification eval on the held-out digits writers."""
  return dict(type="classification", data=dict(name="digits", split="test"),
              pp_fn=digits_pp(res, train=False), batch_size=batch_size,
              log_steps=log_steps)


def runlocal_shrink(config, *, res=32, steps=2, batch_size=16):
  """Shrinks a real recipe to a few steps on the embedded digits data.

  Keeps the recipe's model family, optimizer and schedule types, so that a
  2-step run exercises the same code as the full run (no config can rot).
  """
  config.input = digits_input(res=res, batch_size=batch_size)
  config.num_classes = 10
  config.total_steps = steps
  for key in ("total_epochs", "total_examples"):
    if key in config:
      del config[key]
  config.log_training_steps = 1
  config.ckpt_steps = steps
  config.evals = ml_collections.ConfigDict()
  config.evals.test = digits_eval(res=res, log_steps=steps,
                                  batch_size=batch_size)
  return config
