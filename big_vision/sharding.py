"""Device meshes and parameter sharding strategies (jax only, no tensorflow).

A config names a mesh and, per parameter regex, a sharding *tactic*:

  config.mesh = [("data", -1)]                     # pure data parallelism
  config.mesh = [("data", 16), ("fsdp", 16)]       # -1 = the remaining devices
  config.sharding_strategy = [(".*", "fsdp(axis='fsdp')")]

Tactics are registered by name (`TACTICS`), parsed with the same safe literal
parser as pp ops, and map a parameter's shape to a `PartitionSpec`. Batches
are sharded over the mesh's data-parallel axes (`data_axes`).
"""
import ast
import math
from typing import Any, Callable, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from big_vision import utils

# Mesh axes over which the batch is split. Every other axis (e.g. "model")
# holds replicas of the same examples.
DATA_AXIS_NAMES = ("data", "fsdp", "replica")


def make_mesh(mesh_config: Sequence[tuple[str, int]] | None = None,
              devices: Sequence[Any] | None = None) -> Mesh:
  """Builds a Mesh from [(axis_name, size), ...]; one size may be -1."""
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
# Tactics: (mesh, name, shape) -> PartitionSpec.
# ----------------------------------------------------------------------------
TACTICS: dict[str, Callable[..., Callable[[Mesh, str, tuple], P]]] = {}


def register_tactic(name):
  def deco(fn):
    TACTICS[name] = fn
    return fn
  return deco


def _axis_size(mesh: Mesh, axis) -> int:
  axes = axis if isinstance(axis, (tuple, list)) else (axis,)
  for a in axes:
    if a not in mesh.shape:
      raise ValueError(f"Sharding axis {a!r} is not in the mesh; mesh axes: "
                       f"{list(mesh.axis_names)}.")
  return math.prod(mesh.shape[a] for a in axes)


@register_tactic("replicate")
def _replicate():
  return lambda mesh, name, shape: P()


@register_tactic("fsdp")
def _fsdp(axis="fsdp", min_size_to_shard_mb=4):
  """Shards the largest dimension divisible by the axis size.

  Small tensors (< min_size_to_shard_mb, counted as float32) stay replicated:
  sharding them costs more in communication than it saves in memory.
  """
  def tactic(mesh, name, shape):
    size = _axis_size(mesh, axis)
    spec = [None] * len(shape)
    if np.prod(shape) * 4 < min_size_to_shard_mb * 2**20 or size == 1:
      return P(*spec)
    for d in sorted(range(len(shape)), key=lambda d: -shape[d]):
      if shape[d] % size == 0:
        spec[d] = tuple(axis) if isinstance(axis, (list, tuple)) else axis
        break
    return P(*spec)
  return tactic


@register_tactic("shard_dim")
def _shard_dim(axis, dim):
  """Shards dimension `dim` (negative counts from the end) over `axis`."""
  def tactic(mesh, name, shape):
    size = _axis_size(mesh, axis)
    d = dim % len(shape) if shape else 0
    if not shape or shape[d] % size:
      raise ValueError(f"shard_dim: {name} has shape {shape}; dim {dim} is not "
                       f"divisible by mesh axis {axis!r} of size {size}.")
    spec = [None] * len(shape)
    spec[d] = tuple(axis) if isinstance(axis, (list, tuple)) else axis
    return P(*spec)
  return tactic


def parse_tactic(spec: str) -> Callable[[Mesh, str, tuple], P]:
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
  if name not in TACTICS:
    raise utils.unknown_name_error("sharding tactic", name, TACTICS,
                                   where="config.sharding_strategy")
  try:
    return TACTICS[name](*args, **kwargs)
  except TypeError as e:
    raise ValueError(f"Sharding tactic {spec!r}: {e}") from e


def infer_shardings(mesh: Mesh, tree, strategy=((".*", "replicate"),)):
  """NamedShardings for every leaf of `tree` (arrays or ShapeDtypeStructs).

  The first `(regex, tactic)` rule matching a leaf's '/'-joined name decides.
  Leaves matched by no rule are an error (list the names), never a silent
  replication.
  """
  rules = [(pattern, parse_tactic(t)) for pattern, t in strategy]

  def one(name, leaf):
    tactic = utils.match_rules(rules, name)
    return NamedSharding(mesh, tactic(mesh, name, tuple(leaf.shape)))
  return utils.tree_map_with_names(one, tree)
