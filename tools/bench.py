r"""Training throughput of a config's REAL train step, optionally against timm.

  python tools/bench.py --config big_vision/configs/bench/vit_b16.py \
      [--steps 20] [--warmup 3] [--peer timm] [--peak_tflops 989] \
      [--config.input.batch_size=128 ...]

The step is built by the trainer's own builder (`big_vision.program.build`):
what is timed is what training runs, on random batches made on the device.
Any config works: the bench configs use the `synthetic` data source (nothing
imports tensorflow); for a config on real data the batches have the shapes
and dtypes its own pp yields (tensorflow traces the pp; no example is read).
A bad config or flag is one `error:` line and exit status 2, as in training.

Printed: compile time; step time (median of --steps single steps after
--warmup, each waited for); peak device memory (`memory_stats()` where the
backend has it, else XLA's `memory_analysis()` of the compiled step); model
FLOPs per step (an analytic count for ViT and two-tower models, which
excludes rematerialisation, else XLA's `cost_analysis()`; which one is
printed), achieved TFLOP/s and MFU against --peak_tflops or the dense bf16
peak of a known device kind. The LAST line is exactly `images/second: <X>`.

`--peer timm` trains the same ViT (width, depth, heads, MLP, patch,
resolution, batch, pooling, classes) with timm on PyTorch: bfloat16 autocast
when the config's dtype_mm is bfloat16, torch.compile (--no_compile to skip),
fused scaled-dot-product attention, AdamW with the same lr / weight decay /
clipping, one-hot cross-entropy, and prints its images/second and the ratio.
The peer runs in a child process of this run, BEFORE jax touches the
accelerator: each framework then has the whole device memory, and their
CUDA libraries never share a process. torch and timm are optional
(`pip install torch timm`); they are not big_vision dependencies.
"""
import json
import os
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags


def define_flags():
  """Defined only when run as a script, so that tests can import this file
  next to big_vision.train (which defines --config too)."""
  config_flags.DEFINE_config_file(
      "config", None,
      "Config module to benchmark (any training config).",
      lock_config=False, accept_new_attributes=True)
  flags.DEFINE_integer("steps", 10, "Timed steps (the median is reported).")
  flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
  flags.DEFINE_enum("peer", None, ["timm"],
                    "Also time the same model in timm.")
  flags.DEFINE_float("peak_tflops", None,
                     "Peak dense TFLOP/s of ONE device for MFU; default: "
                     "looked up from the device kind (bf16).")
  flags.DEFINE_bool("no_compile", False, "Peer: skip torch.compile.")
  flags.DEFINE_string("peer_compile_mode", None,
                      "Peer: torch.compile mode, e.g. max-autotune (XLA "
                      "autotunes its GEMMs by default); default: torch's.")
  flags.DEFINE_string("json_out", None, "Also write all figures to this file.")
  flags.DEFINE_string("peer_child", None,
                      "Internal: run the peer on this spec.")


# Dense (non-sparse) bfloat16 TFLOP/s of one device, by a substring of
# jax's `device_kind`; the first match wins, so specific names come first.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),   # SXM.
    ("H200", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("TPU v6 lite", 918.0),
    ("TPU v5 lite", 197.0),
    ("TPU v5p", 459.0),
    ("TPU v5", 459.0),
    ("TPU v4", 275.0),
)


def peak_tflops_for(device_kind: str) -> float | None:
  for name, tflops in PEAK_BF16_TFLOPS:
    if name.lower() in device_kind.lower():
      return tflops
  return None


# ----------------------------------------------------------------------------
# Analytic model FLOPs (a multiply-add counts 2). Forward pass of ONE example;
# the train step is forward + backward, backward = 2 x forward for every
# matmul except the patch embedding, whose input (the image) needs no grad.
# ----------------------------------------------------------------------------
def encoder_flops(tokens: int, width: int, depth: int, mlp_dim: int) -> float:
  """Matmul FLOPs of `depth` pre-LN transformer blocks on `tokens` tokens."""
  t, d, m = tokens, width, mlp_dim
  qkv_out = 2 * t * d * 4 * d         # q, k, v and the output projection.
  attention = 2 * 2 * t * t * d       # q.k logits and probs.v, all heads.
  mlp = 2 * 2 * t * d * m
  return depth * (qkv_out + attention + mlp)


def _vit_tower_flops(model, image_shape) -> tuple[float, float] | None:
  """(embedding, rest) forward FLOPs of a `vit` module, or None if hybrid."""
  if getattr(model, "resnet", None) is not None:
    return None
  h, w, c = image_shape
  ph, pw = model.patch_size
  patches = (h // ph) * (w // pw)
  d = model.width
  m = model.mlp_dim or 4 * d
  embed = 2 * patches * ph * pw * c * d
  tokens = patches + (1 if model.pool_type == "tok" else 0)
  rest = encoder_flops(tokens, d, model.depth, m)
  if model.pool_type == "map":  # One probe query over all tokens + MLP.
    rest += 2 * d * d * 2 + 2 * tokens * d * d * 2 + 2 * 2 * tokens * d
    rest += 2 * 2 * d * m
  rep = d
  if model.rep_size:
    rep = d if model.rep_size is True else int(model.rep_size)
    rest += 2 * d * rep
  if model.num_classes:
    rest += 2 * rep * model.num_classes
  return float(embed), float(rest)


def vit_train_flops(model, image_shape) -> float | None:
  """Train-step FLOPs per image of a (non-hybrid) ViT."""
  parts = _vit_tower_flops(model, image_shape)
  if parts is None:
    return None
  embed, rest = parts
  return 2 * embed + 3 * rest


def _text_tower_flops(model, text_len) -> float:
  d = model.width
  rest = encoder_flops(text_len, d, model.depth, model.mlp_dim or 4 * d)
  if model.num_classes:
    rest += 2 * d * model.num_classes
  return float(rest)


def two_towers_train_flops(model, image_shape, text_len, batch_size,
                           frozen=()) -> float | None:
  """Train-step FLOPs per example of a ViT + text transformer model,
  including the B x B similarity matrix of the contrastive loss. A tower in
  `frozen` ("img", "txt"; schedule None) costs its forward pass only: the
  step does not differentiate it (LiT)."""
  img = getattr(model, "img", None)
  txt = getattr(model, "txt", None)
  if not (hasattr(img, "patch_size") and hasattr(txt, "vocab_size")):
    return None
  parts = _vit_tower_flops(img, image_shape)
  if parts is None:
    return None
  embed, rest = parts
  text = _text_tower_flops(txt, text_len)
  dim = img.num_classes or img.width
  logits = 2 * batch_size * dim  # Per example: one row of the B x B matrix.
  img_cost = (embed + rest) if "img" in frozen else (2 * embed + 3 * rest)
  txt_cost = text if "txt" in frozen else 3 * text
  return img_cost + txt_cost + 3 * logits


def analytic_train_flops(config, model, batch_specs, batch_size, frozen=()):
  """(FLOPs of one train step, description) or (None, reason)."""
  image_shape = batch_specs["image"][0][1:] if "image" in batch_specs else None
  name = config.model_name
  per_example = None
  if name == "vit" and image_shape:
    per_example = vit_train_flops(model, image_shape)
  elif name == "two_towers" and image_shape and "labels" in batch_specs:
    text_len = batch_specs["labels"][0][1]
    per_example = two_towers_train_flops(model, image_shape, text_len,
                                         batch_size, frozen=frozen)
  if per_example is None:
    return None, f"no analytic count for model_name={name!r}"
  what = "analytic matmul count: forward + 2x backward"
  if frozen:
    what += f" (frozen {', '.join(sorted(frozen))}: forward only)"
  return per_example * batch_size, what


def xla_flops(compiled) -> float | None:
  """FLOPs of the compiled step per XLA's cost analysis (whole program)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


# ----------------------------------------------------------------------------
# JAX: the real train step.
# ----------------------------------------------------------------------------
def peak_memory(compiled, devices) -> tuple[float | None, str]:
  """Peak bytes on one device, and where the figure comes from."""
  peaks = []
  for d in devices:
    try:
      stats = d.memory_stats()
    except Exception:  # pylint: disable=broad-except
      stats = None
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(stats["peak_bytes_in_use"])
  if peaks:
    return float(max(peaks)), "device memory_stats peak_bytes_in_use"
  try:
    mem = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    mem = None
  if mem is None:
    return None, "unavailable"
  total = (mem.argument_size_in_bytes + mem.output_size_in_bytes
           + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
  return float(total), "XLA memory_analysis: args+outputs+temp-donated"


def measure_jax(config, steps: int, warmup: int) -> dict:
  """Builds the config's train step exactly as train.train does, times it."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from big_vision import program  # pylint: disable=g-import-not-at-top
  from big_vision import utils  # pylint: disable=g-import-not-at-top

  # The trainer's own builder. For real-data configs this traces the
  # config's pp (tensorflow) to learn the batch shapes; no example is read.
  prog = program.build(config)
  mesh, batch_size, model = prog.mesh, prog.batch_size, prog.model
  batch_specs = prog.batch_specs
  if program.is_synthetic(config):
    batches = program.train_batches(config, mesh, 0)
  else:
    # Device-made random batches with the shapes and dtypes the config's
    # pp yields (strings, e.g. captions kept beside tokens, are dropped).
    numeric = {k: v for k, v in batch_specs.items()
               if np.dtype(v[1]).kind in "biuf" or v[1] == jax.numpy.bfloat16}
    batch_at = program.random_batch_fn(numeric, batch_size, mesh,
                                       seed=config.get("seed", 0))
    batches = (batch_at(i) for i in range(2))
  state = prog.init_state()
  update_fn = prog.update_fn
  # Two device-resident batches, alternated: the step never waits for data.
  data = [next(batches), next(batches)]
  jax.block_until_ready(data)

  t0 = time.perf_counter()
  compiled = update_fn.lower(state, data[0]).compile()
  compile_s = time.perf_counter() - t0

  for i in range(warmup):
    state, info = compiled(state, data[i % 2])
  jax.block_until_ready(state)
  times = []
  for i in range(steps):
    t0 = time.perf_counter()
    state, info = compiled(state, data[i % 2])
    jax.block_until_ready((state, info))
    times.append(time.perf_counter() - t0)
  loss = float(jax.device_get(info["training_loss"]))

  devices = list(mesh.devices.flat)
  mem_bytes, mem_source = peak_memory(compiled, devices)
  frozen = {t for t, tree in dict(prog.trainable).items()
            if t in ("img", "txt") and not any(jax.tree.leaves(tree))}
  flops, flops_source = analytic_train_flops(config, model, batch_specs,
                                             batch_size, frozen=frozen)
  xla = xla_flops(compiled)
  if flops is None and xla is not None:
    # XLA reports the per-device SPMD program.
    flops, flops_source = xla * len(devices), (
        f"XLA cost_analysis ({flops_source}; loops counted once)")
  step_s = statistics.median(times)
  return dict(
      config=config.model_name, batch_size=batch_size,
      devices=len(devices), device_kind=devices[0].device_kind,
      platform=devices[0].platform, jax_version=jax.__version__,
      params=utils.tree_count(state["params"]),
      compile_s=compile_s, step_s=step_s, step_s_all=times,
      images_per_s=batch_size / step_s, loss=loss,
      peak_memory_bytes=mem_bytes, peak_memory_source=mem_source,
      flops_per_step=flops, flops_source=flops_source,
      xla_flops_per_step=None if xla is None else xla * len(devices),
      dtype_mm=_model_dtypes(config))


def _model_dtypes(config) -> str:
  """The matmul dtype(s) of the model, e.g. "bfloat16" (towers included)."""
  model = dict(config.get("model") or {})
  parts = [dict(model[k]) for k in ("image", "text")
           if hasattr(model.get(k), "keys")] or [model]
  return ",".join(sorted({str(p.get("dtype_mm", "float32")) for p in parts}))


# ----------------------------------------------------------------------------
# The timm peer (runs in a child process; imports torch, never jax).
# ----------------------------------------------------------------------------
_TIMM_POOLS = {"gap": "avg", "tok": "token", "map": "map"}


def peer_spec(config, steps: int, warmup: int, compile_: bool,
              compile_mode: str | None = None) -> dict:
  """The plain-data description of the config's ViT step for the peer."""
  if config.model_name != "vit":
    raise ValueError(f"--peer timm supports model_name='vit' only, the config "
                     f"has {config.model_name!r}.")
  from big_vision.models import vit  # pylint: disable=g-import-not-at-top
  kw = dict(config.get("model") or {})
  m = {**dict(width=768, depth=12, mlp_dim=None, num_heads=12,
              patch_size=(16, 16), pool_type="gap", dtype_mm="float32",
              droppath_rate=0.0),
       **vit.decode_variant(kw.pop("variant", None)), **kw}
  pool = m["pool_type"]
  if pool not in _TIMM_POOLS:
    raise ValueError(f"--peer timm: pool_type {pool!r} has no timm "
                     f"equivalent; supported: {sorted(_TIMM_POOLS)}.")
  if m.get("resnet") is not None:
    raise ValueError("--peer timm: hybrid (resnet) ViTs are not supported.")
  patch = m["patch_size"]
  patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
  if patch[0] != patch[1]:
    raise ValueError(f"--peer timm needs a square patch, got {patch}.")
  data = dict(config.input.data)
  lr = float(config.lr)
  return dict(
      image_shape=list(data["image_shape"]),
      num_classes=int(data["num_classes"]),
      batch_size=int(config.input.batch_size),
      width=int(m["width"]), depth=int(m["depth"]),
      mlp_dim=int(m["mlp_dim"] or 4 * m["width"]),
      num_heads=int(m["num_heads"]), patch=int(patch[0]), pool=pool,
      droppath_rate=float(m.get("droppath_rate") or 0.0),
      bf16=str(m["dtype_mm"]) == "bfloat16",
      lr=lr, weight_decay=float(config.get("wd") or 0.0) / max(lr, 1e-12),
      betas=[float((config.get("optax") or {}).get("b1", 0.9)),
             float((config.get("optax") or {}).get("b2", 0.999))],
      grad_clip_norm=float(config.get("grad_clip_norm") or 0.0),
      steps=steps, warmup=warmup, compile=compile_,
      compile_mode=compile_mode)


def run_timm_peer(spec: dict) -> dict:
  """Times a timm ViT training step described by `peer_spec`."""
  import torch  # pylint: disable=g-import-not-at-top
  import timm  # pylint: disable=g-import-not-at-top
  from timm.models import vision_transformer as tvit  # pylint: disable=g-import-not-at-top

  cuda = torch.cuda.is_available()
  device = torch.device("cuda" if cuda else "cpu")
  if cuda:
    # Match jax's default float32 matmul precision on GPU (TF32).
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
  h, w, c = spec["image_shape"]
  pool = _TIMM_POOLS[spec["pool"]]
  model = tvit.VisionTransformer(
      img_size=(h, w), patch_size=spec["patch"], in_chans=c,
      num_classes=spec["num_classes"], global_pool=pool,
      embed_dim=spec["width"], depth=spec["depth"],
      num_heads=spec["num_heads"], mlp_ratio=spec["mlp_dim"] / spec["width"],
      qkv_bias=True, class_token=spec["pool"] == "tok", no_embed_class=True,
      fc_norm=False, drop_path_rate=spec["droppath_rate"]).to(device)
  model.train()
  params = sum(p.numel() for p in model.parameters())
  decay = [p for p in model.parameters() if p.ndim >= 2]
  no_decay = [p for p in model.parameters() if p.ndim < 2]
  opt_kw = dict(lr=spec["lr"], betas=tuple(spec["betas"]), eps=1e-8)
  if cuda:
    opt_kw["fused"] = True
  opt = torch.optim.AdamW(
      [dict(params=decay, weight_decay=spec["weight_decay"]),
       dict(params=no_decay, weight_decay=0.0)], **opt_kw)
  fwd = model
  if spec["compile"]:
    fwd = torch.compile(model, mode=spec.get("compile_mode"))

  b = spec["batch_size"]
  gen = torch.Generator(device=device).manual_seed(0)
  images = [torch.rand((b, c, h, w), generator=gen, device=device) * 2 - 1
            for _ in range(2)]
  labels = [torch.nn.functional.one_hot(
      torch.randint(0, spec["num_classes"], (b,), generator=gen,
                    device=device), spec["num_classes"]).float()
            for _ in range(2)]

  def step(i):
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                        enabled=spec["bf16"]):
      logits = fwd(images[i % 2])
    loss = torch.nn.functional.cross_entropy(logits.float(), labels[i % 2])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if spec["grad_clip_norm"]:
      torch.nn.utils.clip_grad_norm_(model.parameters(),
                                     spec["grad_clip_norm"])
    opt.step()
    return loss

  sync = torch.cuda.synchronize if cuda else (lambda: None)
  if cuda:
    torch.cuda.reset_peak_memory_stats()
  t0 = time.perf_counter()
  step(0)
  sync()
  first_step_s = time.perf_counter() - t0
  for i in range(spec["warmup"]):
    step(i + 1)
  sync()
  times = []
  for i in range(spec["steps"]):
    t0 = time.perf_counter()
    loss = step(i)
    sync()
    times.append(time.perf_counter() - t0)
  step_s = statistics.median(times)
  return dict(
      torch_version=torch.__version__, timm_version=timm.__version__,
      device=(torch.cuda.get_device_name() if cuda else "cpu"),
      params=params, first_step_s=first_step_s, step_s=step_s,
      images_per_s=b / step_s, loss=float(loss),
      peak_memory_bytes=(float(torch.cuda.max_memory_allocated())
                         if cuda else None),
      compiled=spec["compile"], compile_mode=spec.get("compile_mode"),
      bf16=spec["bf16"])


def run_peer_child(spec: dict) -> dict:
  """Runs the peer in a fresh interpreter (see the module docstring)."""
  proc = subprocess.run(
      [sys.executable, os.path.abspath(__file__),
       "--peer_child=" + json.dumps(spec)],
      capture_output=True, text=True, check=False)
  for line in proc.stdout.splitlines():
    if line.startswith("PEER "):
      return json.loads(line[len("PEER "):])
  raise RuntimeError(f"The timm peer failed (exit {proc.returncode}):\n"
                     f"{proc.stderr[-3000:]}")


# ----------------------------------------------------------------------------
# Report.
# ----------------------------------------------------------------------------
def report(r: dict, peak_tflops: float | None, peer: dict | None) -> list[str]:
  gib = lambda b: "n/a" if b is None else f"{b / 2**30:.3f} GiB"
  lines = [
      f"device: {r['devices']} x {r['device_kind']} ({r['platform']}), "
      f"jax {r['jax_version']}",
      f"model: {r['config']}, {r['params']:,} params, dtype_mm "
      f"{r['dtype_mm']}, global batch {r['batch_size']}",
      f"compile_s: {r['compile_s']:.2f}",
      f"step_s: {r['step_s']:.4f} (median of {len(r['step_s_all'])} steps)",
      f"training_loss: {r['loss']:.4f}",
      f"peak_memory: {gib(r['peak_memory_bytes'])} per device "
      f"({r['peak_memory_source']})",
  ]
  flops = r["flops_per_step"]
  if flops is None:
    lines.append("model_flops: unavailable (no analytic count, no XLA cost "
                 "analysis); TFLOP/s and MFU omitted")
  else:
    lines.append(f"model_tflops_per_step: {flops / 1e12:.6g} "
                 f"({r['flops_source']})")
    if r.get("xla_flops_per_step") is not None:
      lines.append(f"xla_tflops_per_step: {r['xla_flops_per_step'] / 1e12:.6g}"
                   " (XLA cost_analysis, incl. elementwise and optimizer; "
                   "loops counted once)")
    achieved = flops / r["step_s"] / 1e12
    lines.append(f"achieved_tflops: {achieved:.6g} (all devices)")
    source = "--peak_tflops"
    if peak_tflops is None:
      peak_tflops = peak_tflops_for(r["device_kind"])
      source = f"dense bf16 peak of {r['device_kind']}"
    if peak_tflops is None:
      lines.append(f"mfu: omitted (unknown peak for device kind "
                   f"{r['device_kind']!r}; pass --peak_tflops)")
    else:
      mfu = achieved / (peak_tflops * r["devices"])
      r["mfu"] = mfu
      lines.append(f"mfu: {mfu:.4g} (of {peak_tflops:g} TFLOP/s x "
                   f"{r['devices']} devices, {source})")
  if peer is not None:
    lines += [
        f"peer timm: torch {peer['torch_version']}, timm "
        f"{peer['timm_version']} on {peer['device']}, {peer['params']:,} "
        f"params, bf16 autocast {peer['bf16']}, torch.compile "
        f"{peer['compiled']} (mode {peer.get('compile_mode') or 'default'})",
        f"peer_first_step_s: {peer['first_step_s']:.2f} (incl. compile)",
        f"peer_step_s: {peer['step_s']:.4f}",
        f"peer_peak_memory: {gib(peer['peak_memory_bytes'])}",
        f"peer images/second: {peer['images_per_s']:.2f}",
        f"ratio big_vision/timm: {r['images_per_s'] / peer['images_per_s']:.3f}",
    ]
  lines.append(f"images/second: {r['images_per_s']:.2f}")
  return lines


def main(argv):
  del argv
  fl = flags.FLAGS
  if fl.peer_child:
    print("PEER " + json.dumps(run_timm_peer(json.loads(fl.peer_child))),
          flush=True)
    return
  if fl.config is None:
    raise app.UsageError("--config is required.")
  if fl.steps < 1 or fl.warmup < 0:
    raise app.UsageError(f"--steps={fl.steps} must be >= 1 and "
                         f"--warmup={fl.warmup} >= 0.")
  from big_vision import xla_flags  # pylint: disable=g-import-not-at-top
  added = xla_flags.apply()
  if added:
    print(f"XLA flags added: {' '.join(added)}", flush=True)
  config = fl.config
  from big_vision import config_check  # pylint: disable=g-import-not-at-top
  config_check.apply_override_precedence(config, sys.argv, log=print)
  peer = None
  if fl.peer:  # First, while the accelerator is still free (see docstring).
    peer = run_peer_child(peer_spec(config, fl.steps, fl.warmup,
                                    not fl.no_compile, fl.peer_compile_mode))
  try:
    result = measure_jax(config, fl.steps, fl.warmup)
  except ValueError as e:  # ConfigError included: one line, no traceback.
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
    sys.exit(2)
  lines = report(result, fl.peak_tflops, peer)
  if fl.json_out:
    with open(fl.json_out, "w") as f:
      json.dump(dict(jax=result, peer=peer), f, indent=1)
  print("\n".join(lines), flush=True)


if __name__ == "__main__":
  define_flags()
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
  from big_vision import config_check  # pylint: disable=g-import-not-at-top
  app.run(main, flags_parser=config_check.parse_flags_or_exit)
