r"""Compiled memory of the SigLIP loss: ring-chunked vs full B x B matrix.

  python tools/bench_siglip_loss.py [--batch 4096] [--dim 512] [--devices 8]

Compiles, without running, three versions of the same loss (forward only and
forward + gradients w.r.t. zimg, ztxt, t, b) on `--devices` virtual CPU
devices and prints XLA's `memory_analysis()` of each, per device:

  full/1dev   `sigmoid_contrastive_loss` on one device: the [B, B] matrix.
  full/gspmd  the same function under jit with the batch sharded over all
              devices: XLA's partitioner picks the layout ([B/n, B] slabs).
  ring        `sigmoid_contrastive_loss_sharded`: [B/n, B/n] blocks while the
              text chunks travel round the ring with ppermute.

Temp bytes are the scratch XLA plans beyond inputs and outputs; that is
where the similarity matrix (and its backward residuals) live. Compiling
only, so it runs in seconds on a laptop; the numbers are CPU-backend plans,
a proxy for what TPU/GPU backends allocate.
"""
import argparse
import os


def _parse():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=4096, help="global batch B")
  p.add_argument("--dim", type=int, default=512, help="embedding width D")
  p.add_argument("--devices", type=int, default=8,
                 help="virtual CPU devices (sets XLA_FLAGS before jax import)")
  return p.parse_args()


def main():
  args = _parse()
  # Must happen before jax is imported anywhere.
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "")
      + f" --xla_force_host_platform_device_count={args.devices}").strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from big_vision import losses  # pylint: disable=g-import-not-at-top

  devices = jax.devices()
  n = len(devices)
  if args.batch % n:
    raise ValueError(f"--batch {args.batch} is not divisible by {n} devices.")
  mesh = Mesh(np.asarray(devices), ("data",))
  b, d = args.batch, args.dim
  emb = jax.ShapeDtypeStruct((b, d), jnp.float32)
  scalar = jax.ShapeDtypeStruct((), jnp.float32)
  batch_sh = NamedSharding(mesh, P("data"))
  rep_sh = NamedSharding(mesh, P())
  emb_sharded = jax.ShapeDtypeStruct((b, d), jnp.float32, sharding=batch_sh)
  scalar_rep = jax.ShapeDtypeStruct((), jnp.float32, sharding=rep_sh)

  full = losses.sigmoid_contrastive_loss
  ring = lambda *a: losses.sigmoid_contrastive_loss_sharded(*a, mesh=mesh)
  cases = [
      ("full/1dev", full, (emb, emb, scalar, scalar)),
      ("full/gspmd", full, (emb_sharded, emb_sharded, scalar_rep, scalar_rep)),
      ("ring", ring, (emb_sharded, emb_sharded, scalar_rep, scalar_rep)),
  ]
  mib = lambda x: x / 2**20
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, "
        f"{n} devices, global batch {b}, dim {d}, float32")
  print(f"[B,B] matrix = {mib(4 * b * b):.1f} MiB; "
        f"[B/n,B] slab = {mib(4 * b * b / n):.1f} MiB; "
        f"[B/n,B/n] block = {mib(4 * (b // n) ** 2):.2f} MiB")
  print(f"{'version':<12} {'pass':<9} {'temp MiB':>9} {'args MiB':>9} "
        f"{'out MiB':>8}")
  for name, fn, shapes in cases:
    for mode, f in (("fwd", fn),
                    ("fwd+grad", jax.value_and_grad(fn, argnums=(0, 1, 2, 3)))):
      compiled = jax.jit(f).lower(*shapes).compile()
      mem = compiled.memory_analysis()
      print(f"{name:<12} {mode:<9} {mib(mem.temp_size_in_bytes):>9.2f} "
            f"{mib(mem.argument_size_in_bytes):>9.2f} "
            f"{mib(mem.output_size_in_bytes):>8.2f}")


if __name__ == "__main__":
  main()
