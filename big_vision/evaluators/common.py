"""Evaluator registry and scheduling, shared by train.py and tools/eval_only.py.

Config:
  config.evals.val = dict(type="classification", log_steps=1000,
                          data=dict(name="digits", split="test"),
                          pp_fn="decode|...", batch_size=256)

`type` names a module `big_vision.evaluators.<type>` that defines
`Evaluator(predict_fn, *, mesh, **kw)` with `run(train_state)` yielding
`(metric_name, value)`. Scheduling keys (`log_steps` | `log_percent` |
`log_epochs`, `skip_first`, `prefix`, `use_ema`) are consumed here; every
other key is passed to the Evaluator, so a typo there is a TypeError naming the
evaluator, raised when evaluators are built (before training starts).
"""
import collections
import dataclasses
import functools
import inspect
from typing import Any, Callable, Iterator

import jax
import numpy as np

from big_vision import utils

# Modules of this package that are not evaluator types.
HELPER_MODULES = ("common", "class_names")
SCHEDULING_KEYS = ("type", "log_steps", "log_percent", "log_epochs",
                   "log_examples", "skip_first", "prefix", "use_ema",
                   "pred_kw")


EVALUATORS = utils.ModuleRegistry("evaluator type", "big_vision.evaluators",
                                  exclude=HELPER_MODULES)


def available_types() -> list[str]:
  return EVALUATORS.names()


def get_evaluator_module(type_name: str, where: str = "config.evals"):
  return EVALUATORS.lookup(type_name, where=where)


@dataclasses.dataclass
class ScheduledEvaluator:
  name: str
  evaluator: Any
  every: int
  skip_first: bool
  prefix: str
  use_ema: bool

  def due(self, step: int, first_step: int, total_steps: int) -> bool:
    """At its period, at the end, and at the first step unless skip_first."""
    if step == total_steps:
      return True
    if step == first_step:
      return not self.skip_first and first_step == 0
    return self.every > 0 and step % self.every == 0

  def run(self, train_state) -> Iterator[tuple[str, float]]:
    if self.use_ema:
      if "ema_params" not in train_state:
        raise ValueError(f"Evaluator {self.name!r} has use_ema=True but the "
                         "run has no config.ema_decay.")
      train_state = {**train_state, "params": train_state["ema_params"]}
    for key, value in self.evaluator.run(train_state):
      yield f"{self.prefix}{key}", value


# big_vision's evaluator key `cache`: what to keep between runs of an
# evaluator. "final_data": the preprocessed batches (here `cache_final=True`);
# "none", "pipeline", "raw_data": recompute them each run (cache_final=False;
# raw examples are re-read, which the OS file cache makes cheap).
CACHE_CHOICES = ("none", "pipeline", "raw_data", "final_data")


def _cache_kwargs(cache, sig, where) -> dict:
  value = "none" if cache is None else str(cache).lower()
  if value not in CACHE_CHOICES:
    raise ValueError(f"{where}.cache: unknown value {cache!r}; valid: "
                     f"{', '.join(CACHE_CHOICES)}.")
  if "cache_final" not in sig.parameters:
    return {}  # This evaluator keeps what it needs itself.
  return {"cache_final": value == "final_data"}


def check_config(eval_config, where: str) -> tuple[Any, dict]:
  """Validates one evaluator's config without building it (no data read)."""
  cfg = dict(eval_config)
  if "type" not in cfg:
    raise ValueError(f"{where} needs a 'type'. Valid types: "
                     f"{', '.join(available_types())}.")
  module = get_evaluator_module(cfg["type"], where=f"{where}.type")
  kwargs = {k: v for k, v in cfg.items() if k not in SCHEDULING_KEYS}
  sig = inspect.signature(module.Evaluator)
  if "cache" in kwargs:
    kwargs.update(_cache_kwargs(kwargs.pop("cache"), sig, where))
  if not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
    valid = [n for n in sig.parameters if n not in ("predict_fn", "mesh")]
    for k in kwargs:
      if k not in sig.parameters:
        raise utils.unknown_name_error(f"key for evaluator type {cfg['type']!r}",
                                       k, valid, where=where)
  return module, kwargs


def from_config(config, predict_fn: Callable, mesh, *, total_steps: int,
                steps_per_epoch: float | None = None,
                batch_size: int | None = None) -> list[ScheduledEvaluator]:
  """Builds every evaluator of `config.evals`."""
  out = []
  for name, eval_config in (config.get("evals") or {}).items():
    where = f"config.evals.{name}"
    module, kwargs = check_config(eval_config, where)
    cfg = dict(eval_config)
    every = utils.steps("log", cfg, data_size=(
        None if steps_per_epoch is None else steps_per_epoch * (batch_size or 1)),
                        batch_size=batch_size, total_steps=total_steps,
                        default=0)
    evaluator = module.Evaluator(
        with_pred_kw(predict_fn, cfg.get("pred_kw")), mesh=mesh, **kwargs)
    out.append(ScheduledEvaluator(
        name=name, evaluator=evaluator, every=every,
        skip_first=bool(cfg.get("skip_first", False)),
        prefix=cfg.get("prefix", f"{name}/"),
        use_ema=bool(cfg.get("use_ema", False))))
  return out


# ----------------------------------------------------------------------------
# One compiled predict function per (model, output selection, input shape).
# ----------------------------------------------------------------------------
def _select(predict_fn, selection: str) -> Callable:
  """`selection` -> fn(params, x) computing only that output of the model.

  "logits": a classifier's logits; "out:<name>": its named output `name`
  (e.g. "out:pre_logits"); "zimg" / "ztxt": a two-tower model's image /
  text embedding of `x`.
  """
  if selection == "logits":
    return lambda params, x: predict_fn(params, x)[0]
  if selection == "zimg":
    return lambda params, x: predict_fn(params, x, None)[0]
  if selection == "ztxt":
    return lambda params, x: predict_fn(params, None, x)[1]
  if selection.startswith("out:"):
    name = selection[len("out:"):]

    def named_output(params, x):
      _, out = predict_fn(params, x)
      if name not in out:
        raise ValueError(
            f"Unknown representation_layer {name!r}. The model's named "
            f"outputs are: {', '.join(sorted(out))}.")
      return out[name]
    return named_output
  raise ValueError(f"Unknown predict selection {selection!r}; valid: logits, "
                   "zimg, ztxt, out:<name>.")


_COMPILED: dict[tuple[Any, str], Callable] = {}
_WITH_KW: dict[tuple[Any, tuple], Callable] = {}


def with_pred_kw(predict_fn, pred_kw) -> Callable:
  """`predict_fn` with fixed model keyword arguments (big_vision's evaluator
  key `pred_kw`, e.g. dict(patch_size=8) for a FlexiViT). The same kwargs
  give the same function object, so `compiled_predict` still shares it."""
  if not pred_kw:
    return predict_fn
  kw = tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                    for k, v in dict(pred_kw).items()))
  key = (predict_fn, kw)
  if key not in _WITH_KW:
    _WITH_KW[key] = lambda params, *args: predict_fn(params, *args, **dict(kw))
  return _WITH_KW[key]


def compiled_predict(predict_fn, selection: str = "logits") -> Callable:
  """The jitted `fn(params, x)` of `selection`, shared by every evaluator.

  Evaluators of one run get the same `predict_fn` (the program's), so all
  those that need the same output get this same jitted function, and jax's
  cache compiles it once per input shape: four ImageNet evaluators with one
  pp resolution compile the model's forward pass once, not four times. Each
  evaluator's metrics run in their own small jitted function on the output.
  """
  key = (predict_fn, selection)
  if key not in _COMPILED:
    _COMPILED[key] = jax.jit(_select(predict_fn, selection))
  return _COMPILED[key]


# ----------------------------------------------------------------------------
# Shared by evaluators that loop over an inference split.
# ----------------------------------------------------------------------------
def eval_batches(data, pp_fn, batch_size: int, mesh,
                 cache_final: bool = False, select=None) -> Iterator[dict]:
  """Global, device-resident batches; each example once, padded ones masked.
  `select`: only those examples (input_pipeline.make_for_inference)."""
  from big_vision import input_pipeline  # pylint: disable=g-import-not-at-top
  from big_vision import sharding  # pylint: disable=g-import-not-at-top
  shards = sharding.num_data_shards(mesh)
  if batch_size % shards:
    raise ValueError(f"Evaluator batch_size {batch_size} is not divisible by "
                     f"the {shards} data shards of the mesh.")
  batches, _ = input_pipeline.make_for_inference(
      dict(data), pp_fn, batch_size, cache_final=cache_final, select=select)
  data_sharding = sharding.data_sharding(mesh)
  for batch in batches:
    yield input_pipeline.to_global(batch, data_sharding)


def to_host(x) -> np.ndarray:
  """Gathers a (possibly multi-host sharded) array onto every host."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(x)


# Batches dispatched ahead of the one whose features are fetched to the host
# (features_and_labels).
_IN_FLIGHT = 2


def _class_indices(y: np.ndarray) -> np.ndarray:
  """Labels as class indices ([N, C] one-hot -> argmax)."""
  return y.argmax(-1) if y.ndim == 2 else y


def pass_order(part_sizes, local_batch_size: int
               ) -> tuple[np.ndarray, np.ndarray]:
  """Where the n-th real example of an inference pass is read: (process,
  index within that process's part), both [N].

  A global batch is the processes' local batches in process order, and each
  local batch the next `local_batch_size` examples of the part, padding
  after a part's end masked out (input_pipeline.make_for_inference): so
  this is the order of the rows that `features_and_labels` returns.
  """
  part_sizes = np.asarray(part_sizes, np.int64)
  num_batches = -(-int(part_sizes.max(initial=0)) // local_batch_size)
  b, p, r = np.meshgrid(np.arange(num_batches), np.arange(len(part_sizes)),
                        np.arange(local_batch_size), indexing="ij")
  j = b * local_batch_size + r
  keep = j < part_sizes[p]
  return p[keep], j[keep]


@dataclasses.dataclass(frozen=True)
class SplitLabels:
  """The labels of a split's real examples in inference-pass order
  (`pass_order`), and where each example is read (which follows from the
  part sizes): example n is example `local_index[n]` of process
  `process[n]`'s part of the split.

  `split_labels` reads them without the model; `select` and `positions`
  then let a pass compute features for only some examples (fewshot_lsr
  needs k per class, not the whole train split)."""
  labels: np.ndarray  # [N] int64
  part_sizes: tuple[int, ...]
  local_batch_size: int

  @functools.cached_property
  def _where_read(self) -> tuple[np.ndarray, np.ndarray]:
    return pass_order(self.part_sizes, self.local_batch_size)

  @property
  def process(self) -> np.ndarray:  # [N]
    return self._where_read[0]

  @property
  def local_index(self) -> np.ndarray:  # [N]
    return self._where_read[1]

  def select(self, positions) -> list[np.ndarray]:
    """make_for_inference's `select` that reads exactly these examples."""
    positions = np.asarray(positions, np.int64)
    return [np.sort(self.local_index[positions][self.process[positions] == p])
            for p in range(len(self.part_sizes))]

  def positions(self, select) -> np.ndarray:
    """The positions (into `labels`) of the rows that a pass with
    `select` returns, in the order it returns them."""
    p, j = pass_order([len(s) for s in select], self.local_batch_size)
    out = np.empty(len(p), np.int64)
    for q, size in enumerate(self.part_sizes):
      mine = self.process == q
      where = np.empty(size, np.int64)  # index in q's part -> position
      where[self.local_index[mine]] = np.flatnonzero(mine)
      rows = p == q
      out[rows] = where[np.asarray(select[q], np.int64)[j[rows]]]
    return out


def split_labels(data, pp, batch_size: int, label_key: str) -> SplitLabels:
  """The labels of every real example of a split after `pp`, read without
  the model and without device transfers (every process gets all of them).

  The pp is applied as written (a label may be made or changed by pp ops),
  but only `label_key` is kept: TensorFlow prunes the ops that do not feed
  it from the pass's graph, so images are not decoded for it.
  """
  from big_vision import input_pipeline  # pylint: disable=g-import-not-at-top
  pp_fn = input_pipeline.get_pp_fn(pp)

  def label_only(ex):
    out = pp_fn(ex)
    if label_key not in out:
      raise KeyError(f"The pp output has no {label_key!r} (the evaluator's "
                     f"label_key); it has {sorted(out)}.")
    return {label_key: out[label_key]}

  batches, _ = input_pipeline.make_for_inference(dict(data), label_only,
                                                 batch_size)
  local_bs = batch_size // jax.process_count()
  rows = [np.stack([_class_indices(b[label_key]).astype(np.int64),
                    b["_mask"].astype(np.int64)]) for b in batches]
  local = (np.stack(rows, axis=1) if rows else  # [2, batches, local batch]
           np.zeros((2, 0, local_bs), np.int64))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    every = np.asarray(multihost_utils.process_allgather(local))
  else:
    every = local[None]
  part_sizes = tuple(int(m.sum()) for m in every[:, 1])
  p, i = pass_order(part_sizes, local_bs)
  return SplitLabels(every[p, 0, i // local_bs, i % local_bs], part_sizes,
                     local_bs)


def features_and_labels(features_fn, params, data, pp, batch_size: int, mesh,
                        label_key: str, select=None
                        ) -> tuple[np.ndarray, np.ndarray]:
  """(float32 [N, D] features, int64 [N] labels) of every real example of a
  split (or of the `select`ed ones, see SplitLabels), on the host: what the
  frozen-feature evaluators (fewshot_lsr, knn) fit and score. One-hot labels
  are turned into class indices. Rows are in `pass_order`.

  A batch's features are fetched to the host only once the next
  `_IN_FLIGHT` batches are dispatched: the devices compute while the host
  prepares and transfers the next ones, instead of waiting for each.
  """
  xs, ys = [], []
  pending = collections.deque()

  def fetch():
    feats, mask, labels = pending.popleft()
    mask = to_host(mask).astype(bool)
    x = to_host(feats)[mask]
    xs.append(x.reshape(len(x), -1).astype(np.float32))
    ys.append(_class_indices(to_host(labels))[mask])

  for batch in eval_batches(data, pp, batch_size, mesh, select=select):
    pending.append((features_fn(params, batch), batch["_mask"],
                    batch[label_key]))
    if len(pending) > _IN_FLIGHT:
      fetch()
  while pending:
    fetch()
  return np.concatenate(xs), np.concatenate(ys).astype(np.int64)
