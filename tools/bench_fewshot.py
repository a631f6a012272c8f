r"""Wall time of the few-shot linear-regression evaluation on host CPU.

  python tools/bench_fewshot.py [--train 50000] [--test 10000] [--dim 1664] \
      [--classes 1000] [--shots 1,5,10,25] [--seeds 0,1,2] [--threads N]

Synthetic precomputed features stand in for a backbone's pre-logits (1664 is
ViT-g/14's width): `--train` float32 rows spread evenly over `--classes`
classes (50 per class by default, enough for 25 shots), `--test` rows
likewise (10 per class; a 10k test set is what an ImageNet-val-sized eval
subsamples to in a quick run). Each class is a random Gaussian centre plus
isotropic noise with low signal-to-noise, so accuracies sit well between
chance and 1 and the solver works on realistic, non-degenerate data.

Prints:
  1. the headline: seconds for `fewshot_suite` (every shot count x seed), and
     its accuracies;
  2. a per-solve breakdown for the first seed: sampling, gather and
     whitening (`whiten`), the
     ridge solve (Gram/kernel matrix + Cholesky; which form was used), and
     scoring the test set.

Feature extraction (the model's forward pass) is not included: it is the
same for any solver and runs on the accelerator. Timings vary with the host's
BLAS threads and on other load (the load average is printed; CPU seconds
are printed too, as they are less sensitive to it); `--threads` sets the
OMP/OpenBLAS threads before numpy is imported.
"""
import argparse
import os
import time


def _ints(s):
  return tuple(int(v) for v in s.split(",") if v)


def _parse():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--train", type=int, default=50_000)
  p.add_argument("--test", type=int, default=10_000)
  p.add_argument("--dim", type=int, default=1664)
  p.add_argument("--classes", type=int, default=1000)
  p.add_argument("--shots", type=_ints, default=(1, 5, 10, 25))
  p.add_argument("--seeds", type=_ints, default=(0, 1, 2))
  p.add_argument("--l2_reg", type=float, default=2.0 ** 10)
  p.add_argument("--threads", type=int, default=None,
                 help="BLAS threads (default: the library's own choice)")
  return p.parse_args()


def _features(rng, n, centres, noise, np):
  y = rng.permutation(np.arange(n) % len(centres))
  x = centres[y] + noise * rng.standard_normal((n, centres.shape[1]),
                                               dtype=np.float32)
  return x, y


def main():
  args = _parse()
  if args.threads:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
      os.environ[var] = str(args.threads)
  import numpy as np  # pylint: disable=g-import-not-at-top
  from big_vision.evaluators import fewshot_lsr as fs  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  centres = rng.standard_normal((args.classes, args.dim), dtype=np.float32)
  # Noise 6 per dim vs unit centres: few-shot accuracy well below 1.
  train_x, train_y = _features(rng, args.train, centres, 6.0, np)
  test_x, test_y = _features(rng, args.test, centres, 6.0, np)
  print(f"features: train {train_x.shape} test {test_x.shape} float32, "
        f"{args.classes} classes, shots {args.shots}, seeds {args.seeds}, "
        f"l2_reg {args.l2_reg:g}, numpy {np.__version__}")

  load = os.getloadavg()[0]  # Other processes on the host skew wall time.
  t0, c0 = time.perf_counter(), time.process_time()
  res = fs.fewshot_suite(train_x, train_y, test_x, test_y, args.classes,
                         shots=args.shots, seeds=args.seeds,
                         l2_reg=args.l2_reg)
  total, cpu = time.perf_counter() - t0, time.process_time() - c0
  n_solves = len(args.shots) * len(args.seeds)
  print(f"\nfewshot_suite: {total:.1f} s wall ({cpu:.1f} s CPU over all "
        f"threads) for {n_solves} solves ({len(args.shots)} shot counts x "
        f"{len(args.seeds)} seeds); load average before: {load:.1f}")
  print("  " + "  ".join(f"{k}shot={res[f'{k}shot']:.4f}" for k in args.shots))

  seed = args.seeds[0]
  print(f"\nper-solve breakdown, seed {seed} (seconds):")
  print(f"{'shots':>5} {'N':>7} {'form':>6} {'whiten':>7} {'solve':>7} "
        f"{'score':>7} {'total':>7} {'acc':>7}")
  test32 = np.asarray(test_x, np.float32)
  d_aug = args.dim + 1
  for k in args.shots:
    t0 = time.perf_counter()
    idx = fs.sample_shots(train_y, k, args.classes, seed)
    aug, mean, scale = fs.whitened_design(train_x[idx])
    t1 = time.perf_counter()
    weights = fs.ridge_weights(aug, train_y[idx], args.classes, args.l2_reg)
    t2 = time.perf_counter()
    clf = fs.RidgeClassifier(mean, scale, weights)
    acc = float(np.mean(clf.predict(test32) == test_y))
    t3 = time.perf_counter()
    form = "primal" if len(idx) >= d_aug else "dual"
    print(f"{k:>5} {len(idx):>7} {form:>6} {t1 - t0:>7.2f} {t2 - t1:>7.2f} "
          f"{t3 - t2:>7.2f} {t3 - t0:>7.2f} {acc:>7.4f}")
    assert acc == res[f"{k}shot_seed{seed}"], "breakdown diverged from suite"


if __name__ == "__main__":
  main()
