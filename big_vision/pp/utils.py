"""Helpers shared by pp ops: key plumbing, the seed contract, small checks.

The seed contract (other modules rely on it)
--------------------------------------------
Every example dict carries `data["_seed"]`, an int64 tensor of shape [2] that
the input pipeline derives from (run seed, position in the stream). A random
op never touches stateful `tf.random` (whose state depends on thread
scheduling and on how often the graph was traced); instead it calls
`take_seed(data, op_name)`, which splits `_seed` into a fresh state, written
back to the dict for the next random op, and a seed for this op, used with
`tf.random.stateless_*` / `tf.image.stateless_*`. So an example's
augmentation is a pure function of (run seed, position, pp string): the same
run gives the same images, resumption replays them, and different seeds
differ.
"""
import functools
import inspect
from typing import Any, Callable

import tensorflow as tf

SEED_KEY = "_seed"


def take_seed(data: dict[str, Any], op_name: str) -> tf.Tensor:
  """Returns a fresh stateless seed for one random op and advances `_seed`.

  Args:
    data: the example dict; `data["_seed"]` is replaced by the next state.
    op_name: name of the calling op, for the error message.

  Returns:
    A shape [2] seed tensor (dtype of `_seed`) for `tf.random.stateless_*`.

  Raises:
    ValueError: the example has no `_seed`.
  """
  if SEED_KEY not in data:
    raise ValueError(
        f"pp op {op_name!r} is random and needs a per-example seed in "
        f"data[{SEED_KEY!r}], which this example lacks (keys: "
        f"{sorted(data)}). The input pipeline adds it; when calling a pp "
        f"function by hand, add it yourself, e.g. "
        f"data[{SEED_KEY!r}] = tf.constant([s0, s1], tf.int64).")
  new_state, op_seed = tf.unstack(
      tf.random.experimental.stateless_split(data[SEED_KEY], 2))
  data[SEED_KEY] = new_state
  return op_seed


def split_seed(seed: tf.Tensor, num: int) -> list[tf.Tensor]:
  """Splits one stateless seed into `num` independent ones."""
  return tf.unstack(tf.random.experimental.stateless_split(seed, num))


def op_name_of(factory: Callable[..., Any]) -> str:
  """"get_resize" -> "resize": the name users write in pp strings."""
  name = getattr(factory, "__name__", str(factory))
  return name[4:] if name.startswith("get_") else name


def InKeyOutKey(indefault: str = "image", outdefault: str | None = None,  # pylint: disable=invalid-name
                with_seed: bool = False):
  """Decorator turning a tensor->tensor op factory into a dict->dict one.

  Most ops transform one feature. Writing them as `fn(tensor)` keeps them
  short and testable; this decorator adds the dict plumbing and two keyword
  arguments to the factory:

    key: the feature to read (default `indefault`, usually "image").
    key_result: where to write the result (default: `outdefault`, else `key`,
      i.e. in place).

  With `with_seed=True`, the op is random: the inner function is called as
  `fn(tensor, seed)` with a seed taken per the seed contract (`take_seed`).

  Args:
    indefault: default input key.
    outdefault: default output key; None means "same as the input key".
    with_seed: whether the inner function takes a stateless seed.

  Returns:
    The decorator.
  """

  def decorator(get_fn):
    name = op_name_of(get_fn)

    @functools.wraps(get_fn)
    def get_keyed_fn(*args, key=indefault, key_result=outdefault, **kw):
      fn = get_fn(*args, **kw)
      out_key = key_result or key

      def _keyed(data):
        if key not in data:
          raise KeyError(f"pp op {name!r} reads data[{key!r}], which does not "
                         f"exist; keys are {sorted(data)}. Pass key=... to "
                         "read another feature.")
        if with_seed:
          data[out_key] = fn(data[key], take_seed(data, name))
        else:
          data[out_key] = fn(data[key])
        return data

      return _keyed

    # Advertise the extra keywords, so `inspect.signature` (and the error
    # messages built from it) show the factory's real arguments.
    sig = inspect.signature(get_fn)
    params = [p for p in sig.parameters.values()
              if p.kind != p.VAR_KEYWORD]
    params += [inspect.Parameter("key", inspect.Parameter.KEYWORD_ONLY,
                                 default=indefault),
               inspect.Parameter("key_result", inspect.Parameter.KEYWORD_ONLY,
                                 default=outdefault)]
    params += [p for p in sig.parameters.values() if p.kind == p.VAR_KEYWORD]
    get_keyed_fn.__signature__ = sig.replace(parameters=params)
    return get_keyed_fn

  return decorator


def pair(size: Any, what: str) -> tuple[int, int]:
  """An int or an (h, w) pair -> (h, w); anything else is a ValueError."""
  if isinstance(size, int) and not isinstance(size, bool):
    size = (size, size)
  if (not isinstance(size, (tuple, list)) or len(size) != 2
      or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0
                 for s in size)):
    raise ValueError(f"{what} must be a positive int or an (height, width) "
                     f"pair of positive ints, got {size!r}.")
  return tuple(size)


def check_choice(value: Any, choices, what: str) -> None:
  """Raises ValueError naming `value` and the valid `choices`."""
  if value not in choices:
    raise ValueError(f"Unknown {what} {value!r}; valid choices: "
                     f"{', '.join(map(repr, choices))}.")


def cast_like(x: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
  """Casts a float result back to `dtype`, rounding and clipping integers.

  Resizing a uint8 image computes in float; rounding (not truncating, which
  would darken every image by half a level on average) and clipping to the
  dtype's range gives the nearest representable image.
  """
  dtype = tf.as_dtype(dtype)
  if dtype.is_integer:
    x = tf.clip_by_value(tf.round(x), dtype.min, dtype.max)
  return tf.cast(x, dtype)
