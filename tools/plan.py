r"""Plans a run's per-device memory WITHOUT allocating the model.

  python tools/plan.py \
      --config big_vision/configs/proj/scaling_laws/train_vit_g.py:variant=G/14 \
      --devices 256 --per_device_batch 32 --device_memory_gib 16 \
      [--config.key=value ...]

Builds the real train step with the trainer's own builder
(`big_vision.program.build`: model, objective, optimizer, shardings, step),
lowers and compiles it for `--devices` virtual CPU devices (nothing is
allocated: every input is a jax.ShapeDtypeStruct carrying its sharding) and
prints:

  * parameter count and optimizer-state bytes per parameter;
  * per-device bytes of params, optimizer state and gradients, from the
    shardings `config.sharding_strategy` gives them on `config.mesh`;
  * XLA's memory analysis of the compiled step, per device: arguments
    (train state + batch), outputs (aliased to the donated arguments),
    temporaries (activations, gathered weights, scratch) and their sum.

The last line reads `per-device total: <X> GiB` (arguments + temporaries).
With `--device_memory_gib` it says whether that budget holds and, if not,
which knob would help most. CPU compilation approximates an accelerator's
buffer assignment (TPU/GPU fuse and schedule differently), so treat the
numbers as a plan, good to some tens of percent, not a guarantee.

Measured with this tool (jax 0.10.2 CPU; 32 images per device, 224px,
29,593 classes (`dataset=jft`), the config's defaults: MAP head, scan,
bfloat16 matmuls, Adafactor, mesh (data, fsdp=16), or fsdp=8 on 8 devices;
compile 1-2 minutes each on 2 shared cores). GiB per device, budget 16:

  model    devices  remat             arguments  temporaries  total
  G/14     8        nothing_saveable  1.394       5.979        7.374  fits
  G/14     8        none              1.394     126.410      127.805
  G/14     256      nothing_saveable  0.720       5.413        6.133  fits
  G/14     256      none              0.720     125.614      126.334
  G/14     2048     nothing_saveable  0.720       5.413        6.133  fits
  G/14     2048     none              0.720     125.614      126.334
  g/14     8        nothing_saveable  0.805       4.235        5.040  fits
  g/14     8        none              0.805      84.113       84.917
  g/14     256      nothing_saveable  0.429       3.969        4.397  fits
  g/14     256      none              0.429      83.730       84.159
  g/14     2048     nothing_saveable  0.429       3.969        4.397  fits
  g/14     2048     none              0.429      83.730       84.159

(2048 devices = 128 x 16 has the same per-device shapes as 256 = 16 x 16.)
Alternatives for ViT-G/14 on 256 devices, remat: 1-D fsdp over all 256
(`--config.mesh="(('fsdp', -1),)"`; width 1664 and the 16 x 104 attention
dims do not divide by 256, so those stay replicated): 3.401 + 7.629 = 11.030;
fsdp(axis=('data', 'fsdp')) (every tensor spread over all 256 devices):
0.103 + 5.070 = 5.173; remat_policy=dots_saveable: 0.720 + 39.686 = 40.406;
the default without the model's activation sharding constraints:
0.720 + 15.193 = 15.912.
"""
import os
import sys


def _early_devices(argv) -> int | None:
  """--devices must reach XLA before jax is imported: read it from argv."""
  for i, a in enumerate(argv):
    if a.startswith("--devices="):
      return int(a.split("=", 1)[1])
    if a == "--devices" and i + 1 < len(argv):
      return int(argv[i + 1])
  return None


if __name__ == "__main__":
  _n = _early_devices(sys.argv)
  if _n:
    os.environ["XLA_FLAGS"] = " ".join(
        [f for f in os.environ.get("XLA_FLAGS", "").split()
         if "xla_force_host_platform_device_count" not in f]
        + [f"--xla_force_host_platform_device_count={_n}"])
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

# pylint: disable=g-import-not-at-top,wrong-import-position
import json
import math
import re
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from big_vision import program
from big_vision import sharding
from big_vision import utils
# pylint: enable=g-import-not-at-top,wrong-import-position

GiB = 2**30

if __name__ == "__main__":
  # As train.py: overrides may add keys (e.g. --config.model.width=208).
  config_flags.DEFINE_config_file(
      "config", None, "Training configuration module.", lock_config=False,
      accept_new_attributes=True)
  flags.DEFINE_integer("devices", None, "Number of (virtual) devices to plan "
                       "for; default: jax.device_count().")
  flags.DEFINE_integer("per_device_batch", None,
                       "Images per device: sets config.input.batch_size to "
                       "this times the data-parallel devices.")
  flags.DEFINE_integer("image_size", None,
                       "Input resolution; default: parsed from "
                       "config.input.pp (e.g. inception_crop(224)), else 224.")
  flags.DEFINE_string("json_out", None, "Also write the figures (bytes) "
                      "as JSON here.")
  flags.DEFINE_string("hlo_out", None, "Also write the compiled step's "
                      "optimized HLO here (to see what the temporaries are).")
  flags.DEFINE_float("device_memory_gib", None,
                     "Per-device memory budget to check the plan against "
                     "(16 for a TPUv3 core, 80 for an H100).")


# ----------------------------------------------------------------------------
# Inputs of the step, as shapes.
# ----------------------------------------------------------------------------
_SIZE_OPS = r"(?:inception_crop|random_crop|central_crop|resize)\((\d+)"


def image_size_from_pp(pp: str | None, default: int = 224) -> int:
  """The last fixed size set by a crop/resize op of the train pp string."""
  sizes = re.findall(_SIZE_OPS, pp or "")
  return int(sizes[-1]) if sizes else default


def batch_specs(config, objective, batch_size: int, image_size: int):
  """{key: (shape, dtype)} of a global batch, without running the pipeline.

  Image classification only (the inputs tools/plan.py knows how to shape):
  an "image" model input and multi-hot "labels".
  """
  specs = {}
  for key in objective.model_inputs:
    if key != "image":
      raise ValueError(
          f"tools/plan.py cannot shape the model input {key!r} of "
          f"config.loss={config.get('loss')!r}; it knows 'image'.")
    specs["image"] = ((batch_size, image_size, image_size, 3), jnp.float32)
  specs["labels"] = ((batch_size, config.num_classes), jnp.float32)
  return specs


# ----------------------------------------------------------------------------
# The plan.
# ----------------------------------------------------------------------------
def per_device_bytes(tree, shardings, replicated_only=False) -> int:
  """Bytes of one device's shards of `tree` (ShapeDtypeStructs)."""
  def one(leaf, shd):
    if replicated_only and not shd.is_fully_replicated:
      return 0
    return math.prod(shd.shard_shape(tuple(leaf.shape))) * np.dtype(
        leaf.dtype).itemsize
  return sum(jax.tree.leaves(jax.tree.map(one, tree, shardings)))


def plan(config, *, image_size: int | None = None,
         per_device_batch: int | None = None, hlo_out: str | None = None,
         log=print) -> dict:
  """Builds and compiles the train step of `config` on jax.devices().

  Returns a dict of figures (bytes). `log` receives progress lines.
  """
  t0 = time.perf_counter()
  mesh = sharding.make_mesh(config.get("mesh"))
  shards = sharding.num_data_shards(mesh)
  if per_device_batch:
    config.input.batch_size = per_device_batch * shards
  batch_size = int(config.input.batch_size)
  if batch_size % shards:
    raise ValueError(f"config.input.batch_size={batch_size} is not divisible "
                     f"by the {shards} data-parallel devices of the mesh "
                     f"{dict(mesh.shape)}.")
  image_size = image_size or image_size_from_pp(config.input.get("pp"))

  # Shapes come from the resolution, not the dataset (plans are made before
  # the data exists); the rest is the trainer's own program builder.
  objective = program.build_objective(config, mesh)
  specs = batch_specs(config, objective, batch_size, image_size)
  ntrain = batch_size * int(config.get("total_steps") or 1)
  prog = program.build(config, mesh=mesh, data=(ntrain, specs))
  state_shape, shardings = prog.state_shape, prog.shardings
  update_fn = prog.update_fn

  state_in = prog.abstract_state()
  batch_in = prog.abstract_batch()

  n_params = utils.tree_count(state_shape["params"])
  opt_bytes = utils.tree_bytes(state_shape["opt"])
  batch_bytes = sum(math.prod(s) * np.dtype(d).itemsize
                    for s, d in specs.values())
  out = dict(
      devices=jax.device_count(), mesh=dict(mesh.shape),
      batch_size=batch_size, per_device_batch=batch_size // shards,
      image_size=image_size, params=n_params,
      opt_bytes_per_param=opt_bytes / max(n_params, 1),
      opt_total_bytes=opt_bytes,
      batch_bytes=batch_bytes // shards,
      params_bytes=per_device_bytes(state_shape["params"],
                                    shardings["params"]),
      opt_bytes=per_device_bytes(state_shape["opt"], shardings["opt"]),
      # Gradients: one float per parameter, sharded like the params.
      grads_bytes=per_device_bytes(state_shape["params"], shardings["params"]),
      replicated_params_bytes=per_device_bytes(
          state_shape["params"], shardings["params"], replicated_only=True))
  log(f"[plan] model + state shapes ready after "
      f"{time.perf_counter() - t0:.1f}s; lowering for {out['devices']} "
      f"devices, mesh {out['mesh']}...")

  t1 = time.perf_counter()
  with sharding.activation_context(mesh, config.get("sharding_rules")):
    lowered = update_fn.lower(state_in, batch_in)
  log(f"[plan] lowered in {time.perf_counter() - t1:.1f}s; compiling...")
  t2 = time.perf_counter()
  compiled = lowered.compile()
  out["compile_s"] = time.perf_counter() - t2
  if hlo_out:
    with open(hlo_out, "w") as f:
      f.write(compiled.as_text())
  mem = compiled.memory_analysis()
  for field in ("argument", "output", "alias", "temp", "generated_code"):
    out[f"{field}_bytes"] = int(getattr(mem, f"{field}_size_in_bytes", 0))
  out["total_bytes"] = out["argument_bytes"] + out["temp_bytes"]
  return out


def advice(config, figures) -> list[str]:
  """Knobs that would lower the per-device total, biggest lever first.

  Temporaries (activations) dominate: rematerialisation, bfloat16 matmuls,
  fewer images per device. Arguments (the sharded state) dominate, or large
  tensors stay replicated: a larger fsdp axis.
  """
  tips = []
  model_cfg = config.get("model") or {}
  temp, args = figures["temp_bytes"], figures["argument_bytes"]
  if temp >= args:
    policy = model_cfg.get("remat_policy", "none")
    if policy != "nothing_saveable":
      tips.append(f"rematerialise {'more ' if policy != 'none' else ''}"
                  "activations: --config.model.remat_policy=nothing_saveable"
                  f" (now {policy!r}; with --config.model.scan=True)")
    if not model_cfg.get("scan"):
      tips.append("scan the blocks (--config.model.scan=True): remat only "
                  "bounds memory under scan")
    if str(model_cfg.get("dtype_mm", "float32")) == "float32":
      tips.append("bfloat16 matmuls: --config.model.dtype_mm=bfloat16")
    tips.append(
        f"smaller per-device batch: {figures['per_device_batch']} images now; "
        "halve it with --config.accum_steps=2 (same global batch) or more "
        "devices")
  replicated = figures["replicated_params_bytes"]
  if args > temp or replicated > 0.1 * figures["params_bytes"]:
    fsdp = figures["mesh"].get("fsdp", 1)
    tips.append(
        f"shard weights further: the fsdp axis is {fsdp} now, e.g. "
        f"--config.mesh=\"(('data', -1), ('fsdp', {fsdp * 2}))\"; "
        f"{replicated / GiB:.2f} GiB of params per device are replicated "
        "(no dim divisible by the axis, or below min_size_to_shard_mb); "
        "fsdp(axis=('data', 'fsdp')) spreads tensors over both axes")
  return tips


def report(config, figures, budget_gib: float | None, log=print):
  f = figures
  g = lambda b: f"{b / GiB:.3f} GiB"
  log(f"devices: {f['devices']}  mesh: {f['mesh']}  batch: {f['batch_size']} "
      f"({f['per_device_batch']} per device)  image: {f['image_size']}px")
  log(f"parameters: {f['params']:,}")
  log(f"optimizer state: {f['opt_bytes_per_param']:.3f} bytes/param")
  log(f"per-device params:     {g(f['params_bytes'])}")
  log(f"per-device opt state:  {g(f['opt_bytes'])}")
  log(f"per-device gradients:  {g(f['grads_bytes'])}")
  log(f"compiled step (XLA memory analysis, per device; compile "
      f"{f['compile_s']:.0f}s):")
  log(f"  arguments:   {g(f['argument_bytes'])}")
  log(f"  outputs:     {g(f['output_bytes'])}  (aliased to donated "
      f"arguments: {g(f['alias_bytes'])})")
  log(f"  temporaries: {g(f['temp_bytes'])}")
  if budget_gib:
    total = f["total_bytes"] / GiB
    if total > budget_gib:
      log(f"EXCEEDS the budget of {budget_gib:g} GiB per device by "
          f"{total - budget_gib:.2f} GiB. Knobs that would help:")
      for tip in advice(config, f):
        log(f"  - {tip}")
    else:
      log(f"fits the budget of {budget_gib:g} GiB per device "
          f"({budget_gib - total:.2f} GiB to spare).")
  log(f"per-device total: {f['total_bytes'] / GiB:.3f} GiB")


def main(argv):
  del argv
  fl = flags.FLAGS
  if fl.devices and jax.device_count() != fl.devices:
    raise ValueError(
        f"--devices={fl.devices} but jax sees {jax.device_count()} devices: "
        "XLA_FLAGS must be set before jax is imported (run this file as a "
        "script).")
  config = fl.config
  figures = plan(config, image_size=fl.image_size,
                 per_device_batch=fl.per_device_batch, hlo_out=fl.hlo_out,
                 log=lambda s: print(s, flush=True))
  if fl.json_out:
    with open(fl.json_out, "w") as f:
      json.dump(figures, f, indent=1)
  report(config, figures, fl.device_memory_gib)


if __name__ == "__main__":
  app.run(main)
