r"""Benchmarks a ViT training step: compile time, step time, peak memory.

One "step" is forward + backward + an SGD update (params donated), the shape
of a real training step without the optimizer's extra state. Each
configuration (variant x scan x remat) runs in its own subprocess so that the
process-wide peak RSS (getrusage maxrss) belongs to that configuration alone.

  python tools/bench_vit.py                       # Ti/16, S/16; scan x remat
  python tools/bench_vit.py --variants B/16 --batch 64 --steps 10 \
      --scan 1 --remat nothing_saveable,none --dtype_mm bfloat16

Columns: compile_s (lower + XLA compile), step_s (median over --steps after
one warm-up step), img/s, XLA's memory_analysis of the compiled step
(temp = activations + scratch, args = params + batch) and the process's peak
RSS. On CPU, remat mostly trades step time for a smaller `temp`.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def _measure(variant, batch, res, steps, scan, remat, dtype_mm, attn_impl):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from big_vision.models import vit  # pylint: disable=g-import-not-at-top

  model = vit.Model(1000, variant=variant, scan=scan, remat_policy=remat,
                    dtype_mm=dtype_mm, attn_impl=attn_impl, pool_type="tok")
  images = jax.random.normal(jax.random.PRNGKey(0), (batch, res, res, 3))
  labels = jax.random.randint(jax.random.PRNGKey(1), (batch,), 0, 1000)
  params = jax.jit(model.init)(jax.random.PRNGKey(2),
                               images[:1])["params"]

  def step(params, images, labels):
    def loss_fn(p):
      logits, _ = model.apply({"params": p}, images, train=True)
      logp = jax.nn.log_softmax(logits)
      return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], 1))
    loss, grads = jax.value_and_grad(loss_fn)(params)
    params = jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads)
    return params, loss

  t0 = time.perf_counter()
  lowered = jax.jit(step, donate_argnums=0).lower(params, images, labels)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()

  params, loss = compiled(params, images, labels)  # Warm-up.
  loss.block_until_ready()
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    params, loss = compiled(params, images, labels)
    loss.block_until_ready()
    times.append(time.perf_counter() - t0)
  step_s = statistics.median(times)
  mib = lambda b: None if b is None else round(b / 2**20, 1)
  return dict(
      variant=variant, scan=scan, remat=remat, compile_s=round(compile_s, 2),
      step_s=round(step_s, 3), img_s=round(batch / step_s, 1),
      temp_mib=mib(getattr(mem, "temp_size_in_bytes", None)),
      args_mib=mib(getattr(mem, "argument_size_in_bytes", None)),
      peak_rss_mib=round(
          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
      loss=float(loss), device=str(jax.devices()[0].platform))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--variants", default="Ti/16,S/16")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--res", type=int, default=224)
  parser.add_argument("--steps", type=int, default=3,
                      help="timed steps after one warm-up step")
  parser.add_argument("--scan", default="0,1", help="comma list of 0/1")
  parser.add_argument("--remat", default="none,nothing_saveable",
                      help="comma list of remat policies")
  parser.add_argument("--dtype_mm", default="float32")
  parser.add_argument("--attn_impl", default="auto")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args.child:  # One configuration, in this process; JSON on stdout.
    cfg = json.loads(args.child)
    print("RESULT " + json.dumps(_measure(**cfg)), flush=True)
    return

  import jax  # pylint: disable=g-import-not-at-top
  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, "
        f"{os.cpu_count()} host cores, batch {args.batch}, {args.res}px, "
        f"dtype_mm={args.dtype_mm}, attn_impl={args.attn_impl}", flush=True)
  header = ("variant", "scan", "remat", "compile_s", "step_s", "img_s",
            "temp_mib", "args_mib", "peak_rss_mib")
  print(" ".join(f"{h:>16}" for h in header), flush=True)
  for variant in args.variants.split(","):
    for scan in (bool(int(s)) for s in args.scan.split(",")):
      for remat in args.remat.split(","):
        cfg = dict(variant=variant, batch=args.batch, res=args.res,
                   steps=args.steps, scan=scan, remat=remat,
                   dtype_mm=args.dtype_mm, attn_impl=args.attn_impl)
        proc = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(cfg)],
            capture_output=True, text=True, check=False)
        lines = [l for l in proc.stdout.splitlines()
                 if l.startswith("RESULT ")]
        if proc.returncode or not lines:
          print(f"{variant} scan={scan} remat={remat} FAILED:\n"
                f"{proc.stderr[-2000:]}", flush=True)
          continue
        r = json.loads(lines[-1][len("RESULT "):])
        print(" ".join(f"{str(r[h]):>16}" for h in header), flush=True)


if __name__ == "__main__":
  main()
