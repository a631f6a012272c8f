"""The persistent compilation cache: a second launch reads the executables
the first one wrote (counted with jax's own monitoring events)."""
import os
import subprocess
import sys

import pytest

from big_vision import compile_cache

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_LAUNCH = r"""
import sys
import jax, jax.numpy as jnp
from big_vision import compile_cache
hits = []
jax.monitoring.register_event_listener(
    lambda name, **kw: hits.append(name)
    if name == "/jax/compilation_cache/cache_hits" else None)
compile_cache.MIN_COMPILE_SECONDS = 0.0
print("DIR", compile_cache.enable(sys.argv[1]))
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
print("VALUE", float(f(jnp.arange(64.0).reshape(8, 8) / 64)))
print("HITS", len(hits))
"""


def _launch(setting):
  proc = subprocess.run([sys.executable, "-c", _LAUNCH, setting],
                        capture_output=True, text=True, cwd=REPO,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = dict(l.split(" ", 1) for l in proc.stdout.splitlines()
             if l.startswith(("DIR", "VALUE", "HITS")))
  return out["DIR"], float(out["VALUE"]), int(out["HITS"])


def test_second_launch_reads_the_first_launchs_executable(tmp_path):
  cache = str(tmp_path / "cache")
  d1, v1, hits1 = _launch(cache)
  assert d1 == cache and os.listdir(cache), "the first launch wrote nothing"
  d2, v2, hits2 = _launch(cache)
  assert hits1 == 0 and hits2 >= 1, (hits1, hits2)  # (the jitted fn + ops)
  assert v1 == v2


def test_off_compiles_without_a_cache(tmp_path):
  d, _, hits = _launch("off")
  assert d == "None" and hits == 0


@pytest.mark.parametrize("setting,env,want", [
    ("off", {}, None),
    ("OFF", {}, None),
    ("/x/y", {}, "/x/y"),
    ("auto", {"BIG_VISION_COMPILATION_CACHE": "/a"}, "/a"),
    ("auto", {"BIG_VISION_COMPILATION_CACHE": "off"}, None),
    ("auto", {"JAX_COMPILATION_CACHE_DIR": "/j"}, "/j"),
    ("auto", {}, compile_cache.DEFAULT_DIR),
])
def test_resolve(setting, env, want, monkeypatch):
  for k in ("BIG_VISION_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR"):
    monkeypatch.delenv(k, raising=False)
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  assert compile_cache.resolve(setting) == want
