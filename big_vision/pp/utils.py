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

Outside the input pipeline (a pp function called by hand, as in a colab:
`get_preprocess_fn("decode|flip_lr")({"image": jpeg})`), an example has no
`_seed`. Then each random op draws its seed from TF's global random
generator instead, as big_vision does: the results are random, and
reproducible after `tf.random.set_seed(s)` (eager mode: the same seed and the
same sequence of calls give the same images). The `_seed` of such an example
is neither needed nor added. Inside the pipeline nothing changes.
"""
import collections.abc
import functools
import inspect
from typing import Any, Callable

from big_vision.datasets.tf_import import tf

SEED_KEY = "_seed"


def take_seed(data: dict[str, Any], op_name: str) -> tf.Tensor:
  """Returns a fresh stateless seed for one random op and advances `_seed`.

  Args:
    data: the example dict; `data["_seed"]` is replaced by the next state.
    op_name: name of the calling op, for the error message.

  Returns:
    A shape [2] seed tensor (dtype of `_seed`) for `tf.random.stateless_*`.
    Without `_seed` (a pp function called by hand), a fresh int64 seed drawn
    from TF's global generator (seedable with `tf.random.set_seed`).
  """
  del op_name  # Kept for callers; the seed does not depend on the op name.
  if SEED_KEY not in data:
    return global_seed()
  new_state, op_seed = tf.unstack(
      tf.random.experimental.stateless_split(data[SEED_KEY], 2))
  data[SEED_KEY] = new_state
  return op_seed


def global_seed() -> tf.Tensor:
  """A shape [2] int64 stateless seed drawn from TF's global generator."""
  return tf.cast(tf.random.uniform([2], minval=-2**31, maxval=2**31 - 1,
                                   dtype=tf.int32), tf.int64)


def maybe_repeat(arg: Any, n_reps: int) -> Any:
  """`arg` if it is a sequence (not a str), else `(arg,) * n_reps`.

  For op arguments that are one value or one per item, e.g.
  `maybe_repeat(key, 1)` for ops that take one key or a list of keys.
  """
  if isinstance(arg, str) or not isinstance(arg, collections.abc.Sequence):
    return (arg,) * n_reps
  return arg


def split_seed(seed: tf.Tensor, num: int) -> list[tf.Tensor]:
  """Splits one stateless seed into `num` independent ones."""
  return tf.unstack(tf.random.experimental.stateless_split(seed, num))


def op_name_of(factory: Callable[..., Any]) -> str:
  """"get_resize" -> "resize": the name users write in pp strings."""
  name = getattr(factory, "__name__", str(factory))
  return name[4:] if name.startswith("get_") else name


def InKeyOutKey(indefault: str = "image", outdefault: str | None = None,  # pylint: disable=invalid-name
                with_seed: bool = False, with_data: bool = False):
  """Decorator turning a tensor->tensor op factory into a dict->dict one.

  Most ops transform one feature. Writing them as `fn(tensor)` keeps them
  short and testable; this decorator adds the dict plumbing and keyword
  arguments to the factory, in both spellings in use:

    key: read and write this feature (in place).
    inkey / outkey (big_vision's names): the feature to read / to write.
    key_result: where to write the result (same as `outkey`).

  The feature read is `key`, else `inkey`, else `indefault` (usually
  "image"). The feature written is `key_result`, else `outkey`, else `key`,
  else `outdefault`, where `outdefault=None` means `indefault`. So an op
  decorated with `@InKeyOutKey()` reads and writes "image"; called with
  `inkey="a", outkey="b"` it maps "a" to "b", with `key="a"` it works on "a"
  in place, with only `inkey="a"` it writes "image" (as in big_vision).

  Args:
    indefault: default input key.
    outdefault: default output key; None means "same as `indefault`".
    with_seed: the op is random: the inner function is called as
      `fn(tensor, seed)` with a stateless seed taken per the seed contract
      (`take_seed`).
    with_data: the inner function also gets the whole example, as
      `fn(tensor, data=data)` (big_vision's `with_data`).

  Returns:
    The decorator.
  """

  def decorator(get_fn):
    name = op_name_of(get_fn)

    @functools.wraps(get_fn)
    def get_keyed_fn(*args, key=None, key_result=None, inkey=None,
                     outkey=None, **kw):
      fn = get_fn(*args, **kw)
      in_key = key or inkey or indefault
      out_key = (key_result or outkey or key or outdefault or indefault)

      def _keyed(data):
        if in_key not in data:
          raise KeyError(f"pp op {name!r} reads data[{in_key!r}], which does "
                         f"not exist; keys are {sorted(data)}. Pass key=... "
                         "(or inkey=...) to read another feature.")
        call_args = [data[in_key]]
        if with_seed:
          call_args.append(take_seed(data, name))
        if with_data:
          data[out_key] = fn(*call_args, data=data)
        else:
          data[out_key] = fn(*call_args)
        return data

      return _keyed

    # Advertise the extra keywords, so `inspect.signature` (and the error
    # messages built from it) show the factory's real arguments.
    sig = inspect.signature(get_fn)
    params = [p for p in sig.parameters.values()
              if p.kind != p.VAR_KEYWORD]
    params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY,
                                 default=None)
               for k in ("key", "key_result", "inkey", "outkey")]
    params += [p for p in sig.parameters.values() if p.kind == p.VAR_KEYWORD]
    get_keyed_fn.__signature__ = sig.replace(parameters=params)
    get_keyed_fn.is_random = with_seed  # Which ops draw seeds (for tests).
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
