"""Config -> the program that trains it: the ONE place it is assembled.

  prog = program.build(config)              # abstract: nothing allocated
  state = prog.init_state()                 # sharded, `model_init` loaded
  step = prog.update_fn()                   # jitted (state, batch) -> (state, info)

`build` turns a config into the model, the objective, the optimizer, the
abstract train state, its shardings (logical axes included) and the jitted
step. `train.py`, the config check and the tools (`plan`, `bench`,
`eval_only`) all call it, so what a tool measures or checks is exactly what
training runs; before this module each of them assembled its own copy and
they drifted.

Every stage is abstract (`jax.eval_shape`): `build` compiles nothing and
allocates nothing, which is what lets the config check run it in seconds.
A stage that fails raises `utils.ConfigError` naming the config key it
belongs to (`config.model`, `config.loss`, `config.sharding_strategy`, ...).

Imports go downward only: models, objectives, optax, sharding, checkpoint,
utils. tensorflow is imported only when a config's real data is traced
(`data_specs`), never on the synthetic path.
"""
import contextlib
import dataclasses
import functools
import types
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import optax

from big_vision import executable_cache
from big_vision import models
from big_vision import objectives
from big_vision import optax as bv_optax
from big_vision import sam
from big_vision import sharding
from big_vision import utils

ConfigError = utils.ConfigError



# ----------------------------------------------------------------------------
# Errors attributed to the config key they come from.
# ----------------------------------------------------------------------------
@contextlib.contextmanager
def stage(where: str, errors=(ValueError, TypeError)):
  """Turns `errors` raised inside into a one-line ConfigError at `where`."""
  try:
    yield
  except ConfigError:
    raise
  except errors as e:
    raise ConfigError(where, f"{e}") from None


# ----------------------------------------------------------------------------
# Model.
# ----------------------------------------------------------------------------
MODELS = models.MODELS


def available_models() -> list[str]:
  """Names valid as `config.model_name`: modules of big_vision.models that
  define a `Model` (building blocks such as resnet_stem are not offered)."""
  return MODELS.names()


def model_module(name: str) -> types.ModuleType:
  return MODELS.lookup(name)


def create_model(config):
  """(model module, flax module) for `config.model_name` / `config.model`.

  `config.compute_dtype` (e.g. "bfloat16") is the matmul dtype of every tower
  (`dtype_mm`) unless the model config sets one itself; params stay float32.
  """
  module = model_module(config.model_name)
  kwargs = dict(config.get("model") or {})
  if "num_classes" in config:
    kwargs["num_classes"] = config.num_classes
  if config.get("compute_dtype"):
    towers = [k for k in ("image", "text") if isinstance(kwargs.get(k), dict)]
    for cfg in [kwargs[t] for t in towers] if towers else [kwargs]:
      cfg.setdefault("dtype_mm", config.compute_dtype)
  return module, module.Model(**kwargs)


def init_fn_for(config, model, tx, input_specs: dict[str, tuple],
                boxed: bool = False, objective=None):
  """A function rng -> train state {"params", "opt", "step"[, "ema_params"]
  [, objective.extra.name]}.

  `input_specs`: {batch key: (shape, dtype)} of the model inputs, in the order
  the model takes them; the model is initialised on a batch of one.
  `boxed=True` keeps flax's logical-partitioning boxes on the params (only
  for `jax.eval_shape`, to read the logical axis names). An `objective`
  with `extra` state (SigLIP 2's EMA teacher) adds its entry.
  """
  extra = getattr(objective, "extra", None)
  def init(rng):
    dummy = [jnp.zeros((1,) + tuple(shape[1:]), dtype)
             for shape, dtype in input_specs.values()]
    params = model.init({"params": rng, "dropout": rng}, *dummy,
                        train=False)["params"]
    if not boxed:
      params = sharding.unbox(params)
    params = flax.core.unfreeze(params)
    return state_from_params(config, tx, params, extra)
  return init


def state_from_params(config, tx, params, extra=None) -> dict:
  """The train state around `params` (what `init_fn_for`'s function returns
  after the model's init); with ShapeDtypeStructs under `jax.eval_shape`,
  the state's shapes without tracing the model again."""
  state = {"params": params, "opt": tx.init(params),
           "step": jnp.zeros((), jnp.int32)}
  if config.get("ema_decay"):
    state["ema_params"] = params
  if extra is not None:
    state[extra.name] = extra.init(params)
  return state


def model_input_specs(batch_specs, objective: objectives.Objective,
                      batch_size: int):
  """{key: (global shape, dtype)} of the model inputs, from batch specs."""
  specs = {}
  for key in objective.model_inputs:
    if key not in batch_specs:
      raise ValueError(
          f"The model input {key!r} is not produced by config.input.pp; it "
          f"yields {sorted(batch_specs)}.")
    shape, dtype = batch_specs[key]
    if None in shape[1:]:
      raise ValueError(
          f"config.input.pp yields {key!r} of unknown shape {shape[1:]}; add an "
          "op that fixes it (e.g. resize(224) or a crop).")
    specs[key] = ((batch_size,) + tuple(shape[1:]), dtype)
  return specs


def make_predict_fn(model):
  """predict_fn(params, *inputs, **kw) -> model outputs, in inference mode."""
  def predict_fn(params, *args, **kwargs):
    return model.apply({"params": params}, *args, train=False, **kwargs)
  return predict_fn


# ----------------------------------------------------------------------------
# Data shapes (the only stage that may touch tensorflow).
# ----------------------------------------------------------------------------
def is_synthetic(config) -> bool:
  return (config.input.get("data") or {}).get("name") == "synthetic"


def data_specs(config) -> tuple[int, dict[str, tuple]]:
  """(training examples, {key: (per-process batch shape, numpy dtype)}).

  Builds the training tf.data graph (the pp traced on the element spec) and
  reads no example; the synthetic source never imports tensorflow.
  """
  batch_size = config.input.batch_size
  if is_synthetic(config):
    from big_vision.datasets import synthetic  # pylint: disable=g-import-not-at-top
    spec = synthetic.parse_spec(config.input.data)
    specs = synthetic.batch_specs(spec, batch_size)
    return spec["num_examples"], {k: (tuple(s), d) for k, (s, d) in
                                  specs.items()}
  from big_vision import input_pipeline  # pylint: disable=g-import-not-at-top
  ds, ntrain = input_pipeline.training(
      config.input, seed=config.get("seed", 0), start_step=0)
  return ntrain, {k: (tuple(v.shape), v.dtype.as_numpy_dtype)
                  for k, v in ds.element_spec.items()}


def train_batches(config, mesh, start_step: int):
  """Training batches from `start_step` on, as global jax.Arrays sharded over
  the mesh's data axes. `data.name="synthetic"` generates them on device and
  never imports tensorflow; everything else goes through tf.data."""
  data_sharding = sharding.data_sharding(mesh)
  if is_synthetic(config):
    from big_vision.datasets import synthetic  # pylint: disable=g-import-not-at-top
    batches, _, _ = synthetic.make_train_data(
        config.input, data_sharding, seed=config.get("seed", 0),
        start_step=start_step)
    return batches
  from big_vision import input_pipeline  # pylint: disable=g-import-not-at-top
  train_ds, _ = input_pipeline.training(
      config.input, seed=config.get("seed", 0), start_step=start_step)
  return input_pipeline.start_global(input_pipeline.as_numpy(train_ds),
                                     data_sharding)


# ----------------------------------------------------------------------------
# The program.
# ----------------------------------------------------------------------------
@dataclasses.dataclass
class Program:
  """Everything `config` trains, abstractly; see `build`."""
  config: Any
  mesh: jax.sharding.Mesh
  module: types.ModuleType
  model: Any
  objective: objectives.Objective
  batch_size: int
  num_train_examples: int
  total_steps: int
  batch_specs: dict          # {key: (per-process batch shape, dtype)}
  input_specs: dict          # {model input key: (global shape, dtype)}
  tx: optax.GradientTransformation
  schedules: list            # [(group name, step -> multiplier of lr)]
  trainable: Any             # params tree of bools (False: frozen)
  state_shape: dict
  shardings: dict

  @property
  def steps_per_epoch(self) -> float:
    return self.num_train_examples / self.batch_size

  @property
  def rng(self):
    return jax.random.PRNGKey(self.config.get("seed", 0))

  def init_fn(self):
    return init_fn_for(self.config, self.model, self.tx, self.input_specs,
                       objective=self.objective)

  def init_state(self) -> dict:
    """A fresh, sharded train state; `config.model_init` loaded if set."""
    init = jax.jit(self.init_fn(), out_shardings=self.shardings)
    state = executable_cache.load_or_compile(
        "init", self.executable_key, lambda: init.lower(self.rng))(self.rng)
    if self.config.get("model_init"):
      state["params"] = self.load_model_init(state["params"])
      state["opt"] = jax.jit(self.tx.init,
                             out_shardings=self.shardings["opt"])(
                                 state["params"])
      if "ema_params" in state:  # Own buffers: the step donates both trees.
        state["ema_params"] = jax.tree.map(jnp.copy, state["params"])
      extra = self.objective.extra
      if extra is not None:  # E.g. the EMA teacher starts as the loaded model.
        state[extra.name] = jax.jit(
            extra.init, out_shardings=self.shardings[extra.name])(
                state["params"])
    return state

  def load_model_init(self, params):
    """`config.model_init` (npz, workdir, {tower: path}) into `params`."""
    config = self.config
    dont_load = (config.get("model_load") or {}).get("dont_load", ())
    loaded = self.module.load(jax.device_get(params), config.model_init,
                              config.get("model"), dont_load=dont_load)
    return jax.device_put(loaded, self.shardings["params"])

  @functools.cached_property
  def predict_fn(self) -> Callable:
    return make_predict_fn(self.model)

  @functools.cached_property
  def update_fn(self):
    """The jitted, buffer-donating train step: (state, batch) -> (state, info)."""
    return make_update_fn(self.config, self.objective, self.tx, self.mesh,
                          self.shardings, self.schedules, self.trainable,
                          total_steps=self.total_steps)

  def abstract_state(self):
    """The state as ShapeDtypeStructs carrying their shardings (for lower()).

    Weak types are kept, so that a program lowered for this signature is
    the one a call with the real state finds in jit's caches."""
    return jax.tree.map(
        lambda s, h: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=h,
                                          weak_type=s.weak_type),
        self.state_shape, self.shardings)

  def signature(self) -> tuple:
    """What the programs built from this one depend on, besides the code
    and the machine: the key of their executable_cache entries. The config,
    and what `build` derived from the data (training set size, batch
    shapes) and the mesh, as plain, address-free text."""
    return (self.config.to_json_best_effort(sort_keys=True),
            self.num_train_examples, self.total_steps, self.batch_size,
            repr(self.batch_specs), repr(self.input_specs),
            repr(self.trainable), repr(self.mesh), repr(self.abstract_state()),
            repr(self.abstract_batch()))

  @functools.cached_property
  def executable_key(self) -> str:
    """The executable_cache key of this program's step and init (computed
    once, by whichever of their threads asks first)."""
    return executable_cache.key(self.signature())

  def abstract_batch(self):
    data_shd = sharding.data_sharding(self.mesh)
    return {k: jax.ShapeDtypeStruct((self.batch_size,) + tuple(s[1:]), d,
                                    sharding=data_shd)
            for k, (s, d) in self.batch_specs.items()}


def check_batch_size(config, mesh):
  batch_size = config.input.batch_size
  shards = sharding.num_data_shards(mesh)
  if batch_size % jax.process_count():
    raise ConfigError("config.input.batch_size", (
        f"{batch_size} is not divisible by the {jax.process_count()} "
        "processes."))
  if batch_size % shards:
    raise ConfigError("config.input.batch_size", (
        f"config.input.batch_size={batch_size} is not divisible by the "
        f"{shards} data-parallel devices of the mesh {dict(mesh.shape)}."))
  accum = int(config.get("accum_steps") or 1)
  if batch_size % (accum * shards):
    raise ConfigError("config.accum_steps", (
        f"config.input.batch_size={batch_size} must be divisible by "
        f"accum_steps * devices = {accum} * {shards}."))


def build_objective(config, mesh):
  """The objective of `config` (and the model it needs), errors attributed."""
  with stage("config.model_name"):
    model_module(config.model_name)
  with stage(f"config.model (of model {config.model_name!r})"):
    _, model = create_model(config)
  with stage("config.loss"):
    return objectives.make(config, model, mesh)


def build(config, *, mesh=None, data: tuple[int, dict] | None = None,
          optimizer: bool = True) -> Program:
  """The program of `config`, abstractly (nothing compiled or allocated).

  Args:
    config: the experiment config.
    mesh: default `sharding.make_mesh(config.mesh)`.
    data: (training examples, batch specs) if the caller has them (tools that
      plan without the dataset); default `data_specs(config)`.
    optimizer: False builds an empty optimizer state (evaluation only).
  """
  if mesh is None:
    with stage("config.mesh"):
      mesh = sharding.make_mesh(config.get("mesh"))
  check_batch_size(config, mesh)
  batch_size = config.input.batch_size
  with stage("config.model_name"):
    model_module(config.model_name)
  where_model = f"config.model (of model {config.model_name!r})"
  with stage(where_model):
    module, model = create_model(config)
  with stage("config.loss"):
    objective = objectives.make(config, model, mesh)
  with stage("config.sam / config.gsam"):
    sam.check_config(config)
  if data is None:
    with stage("config.input"):
      data = data_specs(config)
  ntrain, batch_specs = data
  with stage("config.total_steps"):
    total_steps = utils.steps("total", config, data_size=ntrain,
                              batch_size=batch_size)
  if total_steps < 1:
    raise ConfigError("config.total_steps", (
        f"the run would have {total_steps} steps ({ntrain} examples, batch "
        f"size {batch_size})."))
  with stage("config.input.pp"):
    input_specs = model_input_specs(batch_specs, objective, batch_size)

  rng = jax.ShapeDtypeStruct((2,), jnp.uint32)  # A PRNGKey's shape.
  try:
    boxed = jax.eval_shape(
        lambda r: init_fn_for(config, model, optax.identity(), input_specs,
                              boxed=True)(r)["params"], rng)
  except Exception as e:  # pylint: disable=broad-except
    shapes = {k: s for k, (s, _) in input_specs.items()}
    raise ConfigError(where_model, (
        f"initializing the model on inputs {shapes} failed: "
        f"{type(e).__name__}: {e}")) from None
  params_shape = sharding.unbox(boxed)

  if optimizer:
    with stage("config (optimizer)"):
      tx, schedules, trainable = _make_optimizer_abstractly(
          config, params_shape, sched_kw=dict(
              total_steps=total_steps, batch_size=batch_size,
              data_size=ntrain))
  else:
    tx = optax.GradientTransformation(lambda p: (), None)
    schedules, trainable = [], jax.tree.map(lambda _: True, params_shape)
  # From the params' shapes: the model was traced once, above (~0.1-0.3 s
  # of Python per trace on 2 CPU cores; `init_state` traces it once more).
  state_shape = jax.eval_shape(
      lambda p: state_from_params(config, tx, p, objective.extra),
      params_shape)
  with stage("config.sharding_strategy"):
    shardings = state_shardings(config, mesh, state_shape,
                                sharding.logical_axes_of(boxed) or None,
                                extra=objective.extra)
  return Program(
      config=config, mesh=mesh, module=module, model=model,
      objective=objective, batch_size=batch_size, num_train_examples=ntrain,
      total_steps=total_steps, batch_specs=batch_specs,
      input_specs=input_specs, tx=tx, schedules=schedules,
      trainable=trainable, state_shape=state_shape, shardings=shardings)


def _make_optimizer_abstractly(config, params_shape, sched_kw):
  """bv_optax.make, with its eager checks (schedules at step 0) traced, not
  run: running them would compile (tiny) XLA programs."""
  out = []

  def make():
    out.append(bv_optax.make(config, params_shape, sched_kw=sched_kw,
                             with_groups=True))
    return 0
  jax.eval_shape(make)
  tx, sched_fns, names, trainable = out[0]
  return tx, list(zip(names, sched_fns)), trainable


def state_shardings(config, mesh, state_shape, logical_axes=None,
                    extra: objectives.ExtraState | None = None):
  """Shardings of the train state from config.sharding_strategy (+ rules).

  An objective's `extra` entry (SigLIP 2's EMA teacher) takes its shardings
  from the params it mirrors (`extra.shardings`), not from the strategy."""
  strategy = config.get("sharding_strategy") or [(".*", "replicate")]
  skip = ("step",) + ((extra.name,) if extra is not None else ())
  shardings = sharding.infer_shardings(
      mesh, {k: v for k, v in state_shape.items() if k not in skip}, strategy,
      rules=config.get("sharding_rules"), logical_axes=logical_axes)
  shardings["step"] = sharding.replicated(mesh)
  if extra is not None:
    replicated = sharding.replicated(mesh)
    prefix = extra.shardings(shardings["params"], replicated)
    shardings[extra.name] = jax.tree.map(  # A sharding per leaf.
        lambda shd, sub: jax.tree.map(lambda _: shd, sub), prefix,
        state_shape[extra.name])
  return shardings


# ----------------------------------------------------------------------------
# The train step.
# ----------------------------------------------------------------------------
def learning_rates(config, schedules, t) -> dict[str, jax.Array]:
  """The learning rate each schedule group applies at update `t` (0-based):
  `lr` alone for one group, else `lr/<group regex>` per group (and `lr` is
  the first group's, for dashboards that expect it)."""
  base = float(config.get("lr") or 0.0)
  out = {}
  for i, (name, fn) in enumerate(schedules):
    value = base * fn(t)
    if i == 0:
      out["lr"] = value
    if len(schedules) > 1:
      out[f"lr/{name}"] = value
  return out


def make_update_fn(config, objective: objectives.Objective, tx, mesh,
                   shardings, schedules=(), trainable=None,
                   total_steps: int | None = None):
  """The jitted, buffer-donating train step: (state, batch) -> (state, info).

  Only trainable parameters are differentiated: frozen ones (schedule None)
  enter the loss as constants, so a frozen tower's backward pass is never
  built (LiT's locked image tower costs its forward pass only). The norms in
  `info` are over the trainable parameters.

  Batch-level augmentation (`objective.prepare`, e.g. mixup) is drawn once
  on the global batch, before the `accum_steps` micro-batch split, so
  accumulation gives the same update as the large batch.

  `config.sam` / `config.gsam` (big_vision/sam.py) replace the gradient by
  the sharpness-aware one: a second forward/backward pass of the same
  (accumulated) batch at perturbed trainable params, the perturbation from
  the whole batch's gradient, so accumulation still equals the large batch.

  An objective with `extra` state (SigLIP 2's EMA teacher) gets
  `objectives.StepContext(state[extra.name], step, total_steps)` as the
  loss's 4th argument, a constant of the differentiation; after the
  optimizer update the entry is updated by `extra.update`.
  """
  extra = objective.extra
  if extra is not None and total_steps is None:
    raise ValueError("make_update_fn: an objective with extra train state "
                     "(e.g. the self-distillation teacher) needs total_steps.")
  accum_steps = int(config.get("accum_steps") or 1)
  ema_decay = config.get("ema_decay")
  base_rng = jax.random.PRNGKey(config.get("seed", 0))
  batch_spec = P(sharding.data_axes(mesh))
  sharpness = sam.from_config(config)  # None unless config.sam / config.gsam.

  def split_trainable(params):
    leaves, treedef = jax.tree.flatten(params)
    mask = (jax.tree.leaves(trainable) if trainable is not None
            else [True] * len(leaves))
    train = [l for l, m in zip(leaves, mask) if m]
    frozen = [l for l, m in zip(leaves, mask) if not m]

    def merge(train_leaves):
      it_t, it_f = iter(train_leaves), iter(frozen)
      return jax.tree.unflatten(
          treedef, [next(it_t) if m else next(it_f) for m in mask])

    def full_grads(train_grads):
      it = iter(train_grads)
      return jax.tree.unflatten(
          treedef, [next(it) if m else jnp.zeros_like(l)
                    for l, m in zip(leaves, mask)])
    return train, merge, full_grads

  def grads_of(params, batch, rng, lr=None, ctx=None):
    train, merge, full_grads = split_trainable(params)
    # An objective with auxiliary outputs (`has_aux`: e.g. the terms of a
    # "combined" loss) returns (loss, {name: scalar}); the dict of the first
    # pass (under SAM: at the unperturbed params) is logged in `info`.
    logged = {}

    def loss_fn(t, b, r):
      out = objective.loss(merge(t), b, r, *(() if ctx is None else (ctx,)))
      return out if objective.has_aux else (out, {})

    def vg(t, b, r):
      (loss, terms), g = jax.value_and_grad(loss_fn, has_aux=True)(t, b, r)
      return loss, g, terms

    def log(terms):
      for k, v in terms.items():
        logged.setdefault(k, v)

    if accum_steps == 1:
      def value_and_grad(t):
        loss, g, terms = vg(t, batch, rng)
        log(terms)
        return loss, g
    else:
      # Micro-batch j takes examples j, j+k, j+2k, ...: every device keeps an
      # equal share of each micro-batch, so no data moves between devices.
      def split(x):
        x = x.reshape((x.shape[0] // accum_steps, accum_steps) + x.shape[1:])
        x = jnp.swapaxes(x, 0, 1)
        return jax.lax.with_sharding_constraint(
            x, NamedSharding(mesh, P(None, *batch_spec)))
      micro = jax.tree.map(split, batch)

      def value_and_grad(t):
        def body(carry, xs):
          mb, i = xs
          out = vg(t, mb, jax.random.fold_in(rng, i))
          return jax.tree.map(jnp.add, carry, out), None
        terms = jax.eval_shape(
            lambda: vg(t, jax.tree.map(lambda x: x[0], micro), rng)[2])
        zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, t),
                 jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), terms))
        out, _ = jax.lax.scan(body, zeros, (micro, jnp.arange(accum_steps)))
        loss, g, terms = jax.tree.map(lambda x: x / accum_steps, out)
        log(terms)
        return loss, g
    if sharpness is None:
      loss, g = value_and_grad(train)
      return loss, g, full_grads, dict(logged)
    # SAM / GSAM (big_vision/sam.py): a second pass at perturbed trainable
    # params, the perturbation from the whole (accumulated) batch gradient.
    loss, g, aux = sharpness(value_and_grad, train, lr)
    return loss, g, full_grads, {**logged, **aux}

  def update(state, batch):
    # Inside the traced function: jax's trace cache ignores flax's rules.
    with sharding.activation_context(mesh, config.get("sharding_rules")):
      return _update(state, batch)

  def _update(state, batch):
    step = state["step"]
    rng = jax.random.fold_in(base_rng, step)  # rng is a function of the step.
    rng_batch, rng_loss = jax.random.split(rng)
    if objective.prepare is not None:
      batch = objective.prepare(batch, rng_batch)
    params = state["params"]
    lrs = learning_rates(config, schedules, step)
    ctx = None
    if extra is not None:
      ctx = objectives.StepContext(state[extra.name], step, total_steps)
    loss, train_grads, full_grads, aux = grads_of(params, batch, rng_loss,
                                                  lrs.get("lr"), ctx)
    stats = aux.pop(objectives.STATE_STATS, None)
    grads = full_grads(train_grads)
    updates, opt = tx.update(grads, state["opt"], params)
    new_params = optax.apply_updates(params, updates)
    new_state = {"params": new_params, "opt": opt, "step": step + 1}
    if ema_decay:
      new_state["ema_params"] = jax.tree.map(
          lambda e, p: ema_decay * e + (1 - ema_decay) * p,
          state["ema_params"], new_params)
    if extra is not None:
      new_state[extra.name] = extra.update(state[extra.name], new_params,
                                           step, stats, total_steps)
    train_now, _, _ = split_trainable(new_params)
    train_upd, _, _ = split_trainable(updates)
    info = {"training_loss": loss,
            "l2_grads": optax.global_norm(train_grads),
            "l2_params": optax.global_norm(train_now),
            "l2_updates": optax.global_norm(train_upd),
            **lrs, **aux}
    return new_state, info

  batch_sharding = NamedSharding(mesh, batch_spec)
  return jax.jit(update, donate_argnums=(0,),
                 in_shardings=(shardings, batch_sharding),
                 out_shardings=(shardings, sharding.replicated(mesh)))


def random_batch_fn(batch_specs: dict, batch_size: int, mesh, seed: int = 0):
  """`step -> batch` of random device arrays with the shapes and dtypes of
  `batch_specs` (what the config's own pp yields), for benchmarks: floats
  uniform in [-1, 1) (a float "labels" key: one-hot rows), integers 0/1
  (valid token ids and labels for any vocabulary)."""
  data_shd = sharding.data_sharding(mesh)
  specs = {k: ((batch_size,) + tuple(s[1:]), np.dtype(d))
           for k, (s, d) in batch_specs.items()}

  def batch_at(step):
    rng = jax.random.fold_in(jax.random.PRNGKey(seed), step)
    out = {}
    for i, (k, (shape, dtype)) in enumerate(sorted(specs.items())):
      r = jax.random.fold_in(rng, i)
      if k == "labels" and np.issubdtype(dtype, np.floating) and len(shape) == 2:
        cls = jax.random.randint(r, shape[:1], 0, shape[1])
        out[k] = jax.nn.one_hot(cls, shape[1], dtype=dtype)
      elif np.issubdtype(dtype, np.floating):
        out[k] = jax.random.uniform(r, shape, jnp.float32, -1.0, 1.0).astype(
            dtype)
      elif np.issubdtype(dtype, np.integer) or dtype == np.bool_:
        out[k] = jax.random.randint(r, shape, 0, 2).astype(dtype)
      else:
        raise ValueError(f"Cannot make random data for batch key {k!r} of "
                         f"dtype {dtype} (strings never reach the model).")
    return out
  return jax.jit(batch_at, out_shardings=data_shd)
