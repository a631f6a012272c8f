"""Device meshes, parameter sharding strategies and activation sharding.

jax and flax only (no tensorflow). A config names a mesh and, per parameter
regex, a sharding *tactic*:

  config.mesh = [("data", -1)]                     # pure data parallelism
  config.mesh = [("data", 16), ("fsdp", 16)]       # -1 = the remaining devices
  config.sharding_strategy = [
      (".*/head/.*", "replicate"),
      (".*", "fsdp(axis='fsdp', min_size_to_shard_mb=4)"),
  ]
  config.sharding_rules = [("mlp", "fsdp"), ("embed", "fsdp")]  # `logical`

Tactics are registered by name (`TACTICS`), parsed with a safe literal
parser, and map a leaf's (name, shape) to a `PartitionSpec`:

* `replicate`: every device holds the whole tensor.
* `fsdp(axis="fsdp", min_size_to_shard_mb=4)`: split the largest dimension
  that the axis (or tuple of axes) divides; tensors smaller than the
  threshold stay replicated (sharding them costs more in collectives than it
  saves). If no single dimension divides a tuple of axes, the axes are
  spread over several dimensions (e.g. 256 = 16 x 16 over width x heads).
* `shard_dim(axis, dim)`: split dimension `dim` over `axis`; an error if it
  does not divide.
* `logical`: the flax logical-axis annotations of the parameter
  (`nn.with_logical_partitioning`, see `logical_axes_of`) mapped to mesh axes
  through `config.sharding_rules`.

The strategy is applied to the WHOLE train state ({"params", "opt", ...}):
names are '/'-joined paths like `params/head/kernel`, and optimizer-state
leaves end with their parameter's name (e.g.
`opt/0/inner_state/1/1/ema/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel`),
so a rule written as `.*/<param regex>` (rules must match the whole name)
shards a parameter and its optimizer state alike. State leaves of a different shape than their parameter (the
factored second moments of Adafactor, scalar counts) get whatever the tactic
gives for their own shape.

Batches are split over the mesh's data-parallel axes (`data_axes`: "data",
"fsdp", "replica"). Inside the model, activations carry logical names
(`nn.with_logical_constraint`; ViT uses "act_batch", "act_len", "act_emb",
"act_mlp", "act_heads", "act_kv"); they become sharding constraints only
inside `activation_context(mesh, rules)`, and are no-ops elsewhere
(evaluation, single-device use). By default only "act_batch" is sharded
(over the data axes); `config.sharding_rules` can map the others, e.g.
("act_mlp", "model") for tensor parallelism.
"""
import ast
import contextlib
import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from big_vision import utils

# Mesh axes over which the batch is split. Every other axis (e.g. "model")
# holds replicas of the same examples.
DATA_AXIS_NAMES = ("data", "fsdp", "replica")


def make_mesh(mesh_config: Sequence[tuple[str, int]] | None = None,
              devices: Sequence[Any] | None = None) -> Mesh:
  """Builds a Mesh from [(axis_name, size), ...]; one size may be -1.

  Devices are laid out in `jax.devices()` order, which groups each process's
  devices together: the LAST axis varies fastest, so put the axis with the
  most communication (fsdp: an all-gather per layer) last, where it stays
  within a host or a fast interconnect ring.
  """
  devices = list(jax.devices() if devices is None else devices)
  mesh_config = list(mesh_config or [("data", -1)])
  names = [str(n) for n, _ in mesh_config]
  sizes = [int(s) for _, s in mesh_config]
  if len(set(names)) != len(names):
    raise ValueError(f"config.mesh has repeated axis names: {names}.")
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh {mesh_config}: at most one size may be -1.")
  known = math.prod(s for s in sizes if s != -1)
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"config.mesh {mesh_config}: sizes must be positive or -1.")
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(
          f"config.mesh {mesh_config}: {len(devices)} devices are not "
          f"divisible by the fixed axes' product {known}.")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(
        f"config.mesh {mesh_config} needs {math.prod(sizes)} devices, but "
        f"{len(devices)} are available.")
  dev_array = np.asarray(devices).reshape(sizes)
  return Mesh(dev_array, tuple(names))


def data_axes(mesh: Mesh) -> tuple[str, ...]:
  axes = tuple(a for a in mesh.axis_names if a in DATA_AXIS_NAMES)
  return axes or (mesh.axis_names[0],)


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a batch: leading (example) dim split over the data axes."""
  return NamedSharding(mesh, P(data_axes(mesh)))


def num_data_shards(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in data_axes(mesh))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


# ----------------------------------------------------------------------------
# Activations: logical names -> sharding constraints, inside a context.
# ----------------------------------------------------------------------------
def default_rules(mesh: Mesh) -> list[tuple[str, Any]]:
  """The batch over every data-parallel axis; other logical names unsharded.

  `config.sharding_rules` come first and so take precedence (flax applies
  rules in order, each mesh axis at most once per tensor: a rule sending
  "act_mlp" to "fsdp" must come with ("act_batch", "data"), else the batch
  loses its fsdp split and is replicated over that axis).
  """
  return [("act_batch", data_axes(mesh))]


def _as_rules(rules) -> list[tuple[str, Any]]:
  out = []
  for rule in rules or ():
    if len(rule) != 2:
      raise ValueError(f"config.sharding_rules entries are (logical name, "
                       f"mesh axis or axes or None); got {rule!r}.")
    name, axes = rule
    out.append((str(name), tuple(axes) if isinstance(axes, list) else axes))
  return out


def full_rules(mesh: Mesh, rules=None) -> tuple[tuple[str, Any], ...]:
  """config.sharding_rules, then the defaults; every mesh axis checked."""
  rules = _as_rules(rules) + default_rules(mesh)
  for name, axes in rules:
    for a in (axes if isinstance(axes, tuple) else (axes,)):
      if a is not None and a not in mesh.shape:
        raise ValueError(
            f"config.sharding_rules maps {name!r} to mesh axis {a!r}, which "
            f"is not in the mesh; mesh axes: {list(mesh.axis_names)}.")
  return tuple(rules)


@contextlib.contextmanager
def activation_context(mesh: Mesh, rules=None):
  """Turns the models' logical activation annotations into constraints.

  Enter it while TRACING the train step (inside the jitted function, or
  around `.lower()`). Without it the annotations do nothing, so the same
  model runs unchanged in evaluators and on one device. Why constrain at
  all: with weights split over "fsdp", XLA's sharding propagation may split
  a matmul's output by the weight's sharded dimension and re-shard the batch
  afterwards; pinning the residual stream to (batch over all data axes)
  makes it all-gather the (small) weights instead, which is what FSDP means.
  Measured (tools/plan.py, ViT-G/14, 256 devices, remat): 15.2 GiB of
  temporaries per device without the constraints, 5.4 GiB with them.

  The rules are Python state, not part of jax's trace-cache key: a function
  keeps the constraints of its first trace. Enter the context inside the
  jitted function so that they belong to it.
  """
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), \
      nn.logical_axis_rules(full_rules(mesh, rules)):
    yield


# ----------------------------------------------------------------------------
# Logical parameter annotations (flax nn.with_logical_partitioning).
# ----------------------------------------------------------------------------
def _is_boxed(x) -> bool:
  return isinstance(x, nn.meta.Partitioned)


def logical_axes_of(boxed_params) -> dict[str, tuple[tuple, tuple]]:
  """{param name: (logical axis names, shape)} of a tree from `model.init`
  whose leaves are flax `nn.LogicallyPartitioned` boxes (e.g. a ViT with
  logical_axes=True; `jax.eval_shape` of init is enough). Unannotated leaves
  are absent from the result."""
  out = {}
  flat, _ = jax.tree_util.tree_flatten_with_path(boxed_params,
                                                 is_leaf=_is_boxed)
  for path, leaf in flat:
    if _is_boxed(leaf):
      name = jax.tree_util.keystr(path, simple=True, separator="/")
      out[name] = (tuple(leaf.names), tuple(leaf.value.shape))
  return out


def unbox(tree):
  """Plain arrays (or ShapeDtypeStructs) from flax partitioning boxes."""
  return nn.meta.unbox(tree)


# ----------------------------------------------------------------------------
# Tactics: (mesh, name, shape, ctx) -> PartitionSpec.
# ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TacticContext:
  """What a tactic may need beyond the leaf: logical annotations and rules."""
  rules: tuple[tuple[str, Any], ...] = ()
  logical_axes: Mapping[str, tuple] | None = None


Tactic = Callable[[Mesh, str, tuple, TacticContext], P]
TACTICS = utils.Registry("sharding tactic",
                         where="config.sharding_strategy")


def register_tactic(name):
  return TACTICS.register(name)


def _axes_tuple(axis) -> tuple[str, ...]:
  return tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)


def _axis_size(mesh: Mesh, axis) -> int:
  for a in _axes_tuple(axis):
    if a not in mesh.shape:
      raise ValueError(f"Sharding axis {a!r} is not in the mesh; mesh axes: "
                       f"{list(mesh.axis_names)}.")
  return math.prod(mesh.shape[a] for a in _axes_tuple(axis))


def _spec_entry(axes: tuple[str, ...]):
  return axes[0] if len(axes) == 1 else axes


@register_tactic("replicate")
def _replicate():
  return lambda mesh, name, shape, ctx: P()


@register_tactic("fsdp")
def _fsdp(axis="fsdp", min_size_to_shard_mb=4):
  """Shards the largest dimension divisible by the axis size.

  Small tensors (< min_size_to_shard_mb, counted as float32) stay replicated.
  With a tuple of axes that no single dimension divides, each axis goes to
  the largest dimension it still divides (largest axes first), so e.g. a
  [1664, 16, 104] attention kernel on 16 x 16 devices is split 16-way on
  width and 16-way on heads instead of staying replicated.
  """
  def tactic(mesh, name, shape, ctx):
    del name, ctx
    size = _axis_size(mesh, axis)
    spec = [None] * len(shape)
    if np.prod(shape) * 4 < min_size_to_shard_mb * 2**20 or size == 1:
      return P(*spec)
    by_size = sorted(range(len(shape)), key=lambda d: (-shape[d], -d))
    for d in by_size:
      if shape[d] % size == 0:
        spec[d] = _spec_entry(_axes_tuple(axis))
        return P(*spec)
    # Spread the axes over several dims (only possible with several axes).
    remaining = list(shape)
    assigned: dict[int, list[str]] = {}
    for a in sorted(_axes_tuple(axis), key=lambda a: -mesh.shape[a]):
      n = mesh.shape[a]
      for d in by_size:
        if remaining[d] % n == 0:
          remaining[d] //= n
          assigned.setdefault(d, []).append(a)
          break
    for d, axes in assigned.items():
      # Keep mesh order inside one dim so shards tile in device order.
      spec[d] = _spec_entry(tuple(a for a in _axes_tuple(axis) if a in axes))
    return P(*spec)
  return tactic


@register_tactic("shard_dim")
def _shard_dim(axis, dim):
  """Shards dimension `dim` (negative counts from the end) over `axis`."""
  def tactic(mesh, name, shape, ctx):
    del ctx
    size = _axis_size(mesh, axis)
    d = dim % len(shape) if shape else 0
    if not shape or shape[d] % size:
      raise ValueError(f"shard_dim: {name} has shape {shape}; dim {dim} is not "
                       f"divisible by mesh axis {axis!r} of size {size}.")
    spec = [None] * len(shape)
    spec[d] = _spec_entry(_axes_tuple(axis))
    return P(*spec)
  return tactic


def _param_of(name: str, logical_axes: Mapping[str, tuple]) -> str | None:
  """The annotated parameter whose name `name` ends with (longest match)."""
  best = None
  for pname in logical_axes:
    if name == pname or name.endswith("/" + pname):
      if best is None or len(pname) > len(best):
        best = pname
  return best


def _names_for_shape(names: tuple, param_shape: tuple, shape: tuple):
  """Logical names for a state leaf derived from a parameter's shape.

  Same shape: the parameter's names. One dim fewer (a factored second
  moment): the names with the dropped dim removed. Else: unsharded.
  """
  if tuple(shape) == tuple(param_shape):
    return names
  if len(shape) == len(param_shape) - 1:
    for d in range(len(param_shape)):
      if tuple(np.delete(param_shape, d)) == tuple(shape):
        return names[:d] + names[d + 1:]
  return (None,) * len(shape)


@register_tactic("logical")
def _logical(fallback="replicate"):
  """Maps a parameter's flax logical axis names through config.sharding_rules.

  flax's semantics: rules are tried in order, and each `(logical, mesh axes)`
  rule claims the tensor dims of that logical name not claimed yet, unless
  one of its mesh axes is already used by this tensor (or does not divide the
  dim), in which case a later rule for the same name may still apply. Dims
  no rule claims stay unsharded. So rule order is priority:
  `[("mlp", "fsdp"), ("embed", "fsdp")]` shards an MLP kernel over its mlp
  dim and everything else over embed. `fallback` ("replicate" or "error")
  handles state leaves without an annotated parameter.
  """
  if fallback not in ("replicate", "error"):
    raise ValueError(f"logical(fallback={fallback!r}): valid are 'replicate' "
                     "and 'error'.")

  def tactic(mesh, name, shape, ctx):
    pname = _param_of(name, ctx.logical_axes or {})
    if pname is None:
      if fallback == "error" or ctx.logical_axes is None:
        raise ValueError(
            f"Sharding tactic 'logical' found no logical axis annotation for "
            f"{name!r}. Annotate the model's params (e.g. "
            "config.model.logical_axes=True for ViT) and pass "
            "logical_axes=sharding.logical_axes_of(boxed params) to "
            "infer_shardings, or use another tactic for it.")
      return P()
    names, pshape = ctx.logical_axes[pname]
    names = _names_for_shape(tuple(names), tuple(pshape), tuple(shape))
    unclaimed = object()
    spec, used = [unclaimed] * len(shape), set()
    for logical, axes in ctx.rules:
      axes = tuple(a for a in _axes_tuple(axes) if a is not None)
      for d, dim_name in enumerate(names):
        if dim_name != logical or spec[d] is not unclaimed:
          continue
        if not axes:
          spec[d] = None
        elif not used & set(axes) and shape[d] % _axis_size(mesh, axes) == 0:
          spec[d] = _spec_entry(axes)
          used |= set(axes)
    return P(*(None if s is unclaimed else s for s in spec))
  return tactic


def parse_tactic(spec: str) -> Tactic:
  """'fsdp(axis="fsdp", min_size_to_shard_mb=1)' -> tactic function."""
  try:
    node = ast.parse(spec.strip(), mode="eval").body
  except SyntaxError as e:
    raise ValueError(f"Sharding tactic {spec!r} is not valid syntax: {e}") from e
  if isinstance(node, ast.Name):
    name, args, kwargs = node.id, [], {}
  elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
    name = node.func.id
    try:
      args = [ast.literal_eval(a) for a in node.args]
      kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    except ValueError as e:
      raise ValueError(f"Sharding tactic {spec!r}: arguments must be "
                       "literals.") from e
  else:
    raise ValueError(f"Sharding tactic {spec!r} must look like name(args).")
  factory = TACTICS.lookup(name)
  try:
    return factory(*args, **kwargs)
  except TypeError as e:
    raise ValueError(f"Sharding tactic {spec!r}: {e}") from e


def infer_shardings(mesh: Mesh, tree, strategy=((".*", "replicate"),), *,
                    rules=None, logical_axes=None):
  """NamedShardings for every leaf of `tree` (arrays or ShapeDtypeStructs).

  The first `(regex, tactic)` rule matching a leaf's '/'-joined name decides.
  Leaves matched by no rule are an error (list the names), never a silent
  replication. `rules` (config.sharding_rules) and `logical_axes` ({param
  name: (names, shape)} from `logical_axes_of`) are used by
  the `logical` tactic.
  """
  parsed = [(pattern, parse_tactic(t)) for pattern, t in strategy]
  ctx = TacticContext(rules=full_rules(mesh, rules),
                      logical_axes=logical_axes)

  def one(name, leaf):
    tactic = utils.match_rules(parsed, name)
    spec = tactic(mesh, name, tuple(leaf.shape), ctx)
    return NamedSharding(mesh, spec)
  return utils.tree_map_with_names(one, tree)
