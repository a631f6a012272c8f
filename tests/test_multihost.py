"""Multi-process training: two local processes x 4 CPU devices == one x 8.

Two subprocesses join one `jax.distributed` job over localhost (CPU
collectives via gloo) and run `train.train` on the digits: each reads its own
half of the data (input_pipeline splits by jax.process_index/count), the
params and optimizer state are FSDP-sharded across both, only process 0
writes metrics, and both write their shards of one orbax checkpoint.

The reference is this (pytest) process with its 8 devices, fed the same
global batches (process 0's rows, then process 1's, as
`jax.make_array_from_process_local_data` assembles them) through train.py's
own step. Restoring the 2-process checkpoint here is also the "restore on a
different process count" check.

This file doubles as the worker: `python tests/test_multihost.py WORKER ...`.
"""
import json
import os
import socket
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 20
NUM_PROCESSES = 2


def config_for_test():
  """Tiny ViT on digits, 2-D mesh with every tensor FSDP-sharded."""
  from big_vision.configs import common  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_steps = STEPS
  config.num_classes = 10
  config.loss = "softmax_xent"
  config.input = common.digits_input(res=16, batch_size=16)
  config.model_name = "vit"
  # Small and plain: compile time is most of this test's cost.
  config.model = dict(width=32, depth=1, mlp_dim=64, num_heads=2,
                      patch_size=(8, 8), pool_type="gap")
  config.optax_name = "scale_by_adam"
  config.lr = 3e-3
  config.wd = 1e-4
  config.schedule = dict(warmup_steps=3, decay_type="cosine")
  config.grad_clip_norm = 1.0
  config.mesh = (("data", -1), ("fsdp", 2))
  config.sharding_strategy = ((".*", "fsdp(min_size_to_shard_mb=0)"),)
  config.log_training_steps = 5
  config.ckpt_steps = STEPS
  config.evals = ml_collections.ConfigDict()  # Keeps the test cheap.
  return config


def worker(process_id: int, port: int, workdir: str):
  import xla_opt  # pylint: disable=g-import-not-at-top  # tests/: the script's dir.
  os.environ["XLA_FLAGS"] = " ".join(
      ("--xla_force_host_platform_device_count=4",
       *xla_opt.PATIENT_COLLECTIVES_FLAGS))
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.path.insert(0, REPO)
  import jax  # pylint: disable=g-import-not-at-top
  try:  # Cross-process CPU collectives (the default on jax >= 0.5).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except (AttributeError, KeyError, ValueError):
    pass
  jax.distributed.initialize(coordinator_address=f"localhost:{port}",
                             num_processes=NUM_PROCESSES,
                             process_id=process_id)
  assert jax.process_count() == NUM_PROCESSES
  assert jax.local_device_count() == 4 and jax.device_count() == 8
  from big_vision import train  # pylint: disable=g-import-not-at-top
  final = train.train(config_for_test(), workdir)
  print("FINAL " + json.dumps({k: float(v) for k, v in final.items()}),
        flush=True)


# ----------------------------------------------------------------------------
# The test (pytest process, 8 devices).
# ----------------------------------------------------------------------------
def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run_two_processes(workdir):
  port = _free_port()
  env = {**os.environ, "PYTHONPATH": REPO}
  env.pop("XLA_FLAGS", None)
  procs = [subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), "WORKER", str(i), str(port),
       workdir], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env=env) for i in range(NUM_PROCESSES)]
  outs = []
  try:
    for p in procs:
      out, _ = p.communicate(timeout=900)
      outs.append(out)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-5000:]
  return outs


def _reference_params(config):
  """One process, 8 devices, the same global batches, train.py's step."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from big_vision import input_pipeline  # pylint: disable=g-import-not-at-top
  from big_vision import objectives  # pylint: disable=g-import-not-at-top
  from big_vision import optax as bv_optax  # pylint: disable=g-import-not-at-top
  from big_vision import sharding  # pylint: disable=g-import-not-at-top
  from big_vision import program  # pylint: disable=g-import-not-at-top

  mesh = sharding.make_mesh(config.mesh)
  streams = []
  for i in range(NUM_PROCESSES):
    ds, ntrain = input_pipeline.training(config.input, seed=config.seed,
                                         process_index=i,
                                         process_count=NUM_PROCESSES)
    streams.append(input_pipeline.as_numpy(ds))
  _, model = program.create_model(config)
  objective = objectives.make(config, model, mesh)
  bs = config.input.batch_size
  specs = {"image": ((bs, 16, 16, 3), np.float32)}
  rng = jax.random.PRNGKey(config.seed)
  params_shape = jax.eval_shape(lambda r: program.init_fn_for(
      config, model, optax.identity(), specs)(r)["params"], rng)
  tx, _ = bv_optax.make(config, params_shape, sched_kw=dict(
      total_steps=STEPS, batch_size=bs, data_size=ntrain))
  init = program.init_fn_for(config, model, tx, specs)
  state_shape = jax.eval_shape(init, rng)
  shardings = program.state_shardings(config, mesh, state_shape)
  state = jax.jit(init, out_shardings=shardings)(rng)
  update = program.make_update_fn(config, objective, tx, mesh, shardings)
  losses = {}
  for step in range(1, STEPS + 1):
    parts = [next(s) for s in streams]
    batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    state, info = update(state, jax.device_put(
        batch, sharding.data_sharding(mesh)))
    losses[step] = float(info["training_loss"])
  return state, state_shape, shardings, losses


def test_two_processes_train_like_one_with_eight_devices(tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from big_vision import checkpoint  # pylint: disable=g-import-not-at-top
  from big_vision import metric_writer  # pylint: disable=g-import-not-at-top
  from big_vision import utils  # pylint: disable=g-import-not-at-top

  # A fresh workdir: nothing in it, not even itself. (All processes pass
  # the config check, which probes workdir/checkpoints, before any of them
  # creates it: train.py syncs them in between.)
  workdir = str(tmp_path / "multi")
  outs = _run_two_processes(workdir)
  finals = [json.loads(l[len("FINAL "):]) for o in outs
            for l in o.splitlines() if l.startswith("FINAL ")]
  assert len(finals) == NUM_PROCESSES

  config = config_for_test()
  state, state_shape, shardings, losses = _reference_params(config)

  # Metrics: written once (process 0), every logged step exactly once.
  lines = metric_writer.read(workdir)
  logged = {l["step"]: l["training_loss"] for l in lines
            if "training_loss" in l}
  assert sorted(logged) == [5, 10, 15, 20]
  for step, loss in logged.items():
    np.testing.assert_allclose(loss, losses[step], rtol=1e-5, err_msg=step)

  # Params: the 2-process checkpoint, restored by this 1-process job.
  multi = utils.flatten_dict(checkpoint.load_params(workdir))
  ref = utils.flatten_dict(jax.device_get(state["params"]))
  assert multi.keys() == ref.keys()
  for k in ref:
    # key/bias has an exactly-zero gradient (softmax ignores a constant per
    # query), so it only follows rounding noise, at most ~lr per Adam step.
    atol = config.lr * STEPS if k.endswith("key/bias") else 1e-6
    np.testing.assert_allclose(multi[k], ref[k], rtol=1e-5, atol=atol,
                               err_msg=k)

  # The whole train state, restored sharded onto this process's 8 devices.
  restored = checkpoint.Checkpointer(workdir).restore(
      STEPS, state_shape, shardings)
  assert int(restored["step"]) == STEPS
  name = "Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel"
  kernel = utils.flatten_dict(restored["params"])[name]
  assert kernel.sharding == utils.flatten_dict(shardings["params"])[name]
  assert not kernel.sharding.is_fully_replicated
  np.testing.assert_array_equal(np.asarray(kernel), multi[name])


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "WORKER":
  worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
