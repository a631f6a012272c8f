r"""Memory of the transfer train step vs gradient accumulation (compile only).

`tools/plan.py` for `configs/transfer.py` at several `accum_steps`: the
step `train.py` runs (`program.build`: model, objective, optimizer,
shardings, the step with `accum_steps`), compiled from `jax.eval_shape`'d
state: nothing is allocated and nothing executes, so a ViT-B/16 step at
batch 512 can be analysed on a laptop CPU. Reports XLA's
`memory_analysis()` of the compiled step, per device:

  temp  = activations + scratch (what accumulation shrinks),
  args  = train state + batch,  out = the new state (aliases args: donated).

  python tools/bench_accum.py                            # B/16, 224px, 512
  python tools/bench_accum.py --model B/16 --crop 384 --accum 1,4,16 \
      --devices 1 --json out.json

`--devices N` fakes N CPU devices (data parallel: per-device numbers then
cover batch/N examples). CPU and GPU/TPU compilers plan memory differently;
the ratios between accum settings are the transferable part.
"""
import argparse
import json
import os
import sys


def _measure(model_name, crop, batch, accum):
  """One row: tools/plan.py's figures for transfer.py at these settings."""
  # Imported here, after main() has set XLA_FLAGS (the device count).
  # pylint: disable=g-import-not-at-top
  import jax
  import plan  # tools/plan.py, beside this file.
  from big_vision.configs import transfer
  # pylint: enable=g-import-not-at-top

  config = transfer.get_config(f"model={model_name},crop={crop},"
                               f"batch_size={batch},accum_steps={accum}")
  f = plan.plan(config, image_size=crop, log=lambda _: None)
  gib = lambda b: round(b / 2**30, 3)
  return dict(model=model_name, crop=crop, batch=batch, accum=accum,
              devices=f["devices"],
              micro_batch_per_device=f["per_device_batch"] // accum,
              params=f["params"],
              temp_gib=gib(f["temp_bytes"]),
              args_gib=gib(f["argument_bytes"]),
              out_gib=gib(f["output_bytes"]),
              alias_gib=gib(f["alias_bytes"]),
              compile_s=round(f["compile_s"], 1),
              platform=jax.devices()[0].platform)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="B/16",
                      help="a configs/transfer.py MODELS name")
  parser.add_argument("--crop", type=int, default=224)
  parser.add_argument("--batch", type=int, default=512)
  parser.add_argument("--accum", default="1,4,16")
  parser.add_argument("--devices", type=int, default=1,
                      help="number of (fake) CPU devices")
  parser.add_argument("--json", default=None, help="also write rows here")
  args = parser.parse_args()

  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count="
                             f"{args.devices}").strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))
  rows = [_measure(args.model, args.crop, args.batch, int(k))
          for k in args.accum.split(",")]
  cols = ["accum", "micro_batch_per_device", "temp_gib", "args_gib",
          "out_gib", "compile_s"]
  print(f"{args.model} @ {args.crop}px, batch {args.batch}, "
        f"{rows[0]['params']:,} params, {rows[0]['devices']} "
        f"{rows[0]['platform']} device(s); per-device XLA memory_analysis:")
  print("| " + " | ".join(cols) + " |")
  print("|" + "---|" * len(cols))
  for r in rows:
    print("| " + " | ".join(str(r[c]) for c in cols) + " |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
