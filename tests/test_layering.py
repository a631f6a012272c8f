"""Layering: tensorflow lives only on the data side (DESIGN.md).

Every module outside big_vision/pp, big_vision/datasets and
big_vision/input_pipeline.py must import on a machine without tensorflow
(the GPU benchmark machines have JAX but no TF). The check runs in a fresh
interpreter where `import tensorflow` fails.
"""
import os
import pkgutil
import subprocess
import sys

import big_vision

DATA_SIDE = ("big_vision.pp", "big_vision.datasets", "big_vision.input_pipeline")
# TF-free modules that live inside the data-side packages.
TF_FREE_EXCEPTIONS = ("big_vision.pp.registry", "big_vision.datasets.synthetic")


def tf_free_modules():
  names = []
  for m in pkgutil.walk_packages(big_vision.__path__, "big_vision."):
    if m.name.startswith(DATA_SIDE) and m.name not in TF_FREE_EXCEPTIONS:
      continue
    names.append(m.name)
  return sorted(names)


def test_every_non_data_module_imports_without_tensorflow():
  modules = tf_free_modules()
  assert "big_vision.train" in modules and "big_vision.models.vit" in modules
  code = (
      "import sys, importlib\n"
      "sys.modules['tensorflow'] = None\n"  # `import tensorflow` now fails.
      f"failed = []\n"
      f"for name in {modules!r}:\n"
      "  try:\n"
      "    importlib.import_module(name)\n"
      "  except ImportError as e:\n"
      "    failed.append(f'{name}: {e}')\n"
      "assert 'tensorflow' not in {k for k, v in sys.modules.items() if v}, 'tf leaked'\n"
      "print('\\n'.join(failed))\n"
      "sys.exit(1 if failed else 0)\n")
  env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(
      os.path.abspath(big_vision.__file__))))
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                        text=True, env=env, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]


def test_data_side_really_uses_tensorflow():
  # Guards the test above against vacuous success: the data side is found.
  names = [m.name for m in pkgutil.walk_packages(big_vision.__path__,
                                                 "big_vision.")]
  assert "big_vision.input_pipeline" in names
  assert "big_vision.pp.ops_image" in names
