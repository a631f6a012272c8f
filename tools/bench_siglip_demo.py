r"""Training throughput of the SigLIP demo config (steps/second).

  python tools/bench_siglip_demo.py [--steps 200] [--devices 1]

Runs big_vision/configs/proj/image_text/siglip_demo.py through the trainer
for `--steps` steps without evaluators and prints the steps/second the
trainer logged (each logged value covers the steps since the previous log;
the first, which includes compilation, is reported separately). The input
pipeline (PNG decoding, caption choice, sentencepiece tokenisation) runs as
in training, so this is end-to-end throughput, not the model alone.
"""
import argparse
import os
import tempfile


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--steps", type=int, default=200)
  p.add_argument("--devices", type=int, default=1,
                 help="virtual CPU devices (XLA_FLAGS, before jax import)")
  p.add_argument("--batch", type=int, default=128)
  args = p.parse_args()
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "")
      + f" --xla_force_host_platform_device_count={args.devices}").strip()
  import numpy as np  # pylint: disable=g-import-not-at-top
  from big_vision import metric_writer  # pylint: disable=g-import-not-at-top
  from big_vision import train  # pylint: disable=g-import-not-at-top
  from big_vision.configs.proj.image_text import siglip_demo  # pylint: disable=g-import-not-at-top

  config = siglip_demo.get_config(f"steps={args.steps},batch={args.batch}")
  config.evals = {}
  config.log_training_steps = 25
  with tempfile.TemporaryDirectory() as workdir:
    train.train(config, workdir)
    speeds = [l["steps_per_sec"] for l in metric_writer.read(workdir)
              if "steps_per_sec" in l]
  first, speeds = speeds[0], speeds[1:] or speeds
  window = min(config.log_training_steps, args.steps)
  print(f"first {window} steps (with compilation): {first:.2f} steps/s")
  if args.steps <= config.log_training_steps:  # One logged window only.
    print(f"(one logging window of {window} steps: the figures below include "
          f"compilation; use --steps > {config.log_training_steps})")
  print(f"siglip_demo batch {args.batch}, {args.devices} device(s), "
        f"{args.steps} steps: median {np.median(speeds):.2f} steps/s "
        f"({np.median(speeds) * args.batch:.0f} img/s), min {min(speeds):.2f}, "
        f"max {max(speeds):.2f}.")


if __name__ == "__main__":
  main()
