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

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(
    big_vision.__file__)))
DATA_SIDE = ("big_vision.pp", "big_vision.datasets", "big_vision.input_pipeline")
# TF-free modules that live inside the data-side packages.
TF_FREE_EXCEPTIONS = ("big_vision.pp.registry", "big_vision.datasets.synthetic")


def _run_fresh(code: str):
  """Runs `code` in a fresh interpreter that imports this checkout's
  big_vision; fails the test with its output if it exits non-zero."""
  env = dict(os.environ, PYTHONPATH=REPO_ROOT)
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                        text=True, env=env, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]


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
  _run_fresh(code)


def test_data_side_really_uses_tensorflow():
  # Guards the test above against vacuous success: the data side is found.
  names = [m.name for m in pkgutil.walk_packages(big_vision.__path__,
                                                 "big_vision.")]
  assert "big_vision.input_pipeline" in names
  assert "big_vision.pp.ops_image" in names


# ----------------------------------------------------------------------------
# No import circles, counting imports inside functions too.
# ----------------------------------------------------------------------------
def import_graph(root: str = os.path.dirname(big_vision.__file__)
                 ) -> dict[str, set[str]]:
  """{module: big_vision modules it imports anywhere in its source}."""
  import ast  # pylint: disable=g-import-not-at-top
  base = os.path.dirname(root)
  modules = {}
  for dirpath, _, files in os.walk(root):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(dirpath, f)
        name = os.path.relpath(path, base)[:-3].replace(os.sep, ".")
        modules[name.removesuffix(".__init__")] = path

  def resolve(name):  # 'big_vision.x.func' -> 'big_vision.x'
    while name not in modules and "." in name:
      name = name.rsplit(".", 1)[0]
    return name

  graph = {}
  for name, path in modules.items():
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    deps = set()
    for node in ast.walk(ast.parse(open(path).read())):
      if isinstance(node, ast.Import):
        deps.update(a.name for a in node.names)
      elif isinstance(node, ast.ImportFrom):
        if node.level:
          parts = package.split(".")[:len(package.split(".")) - node.level + 1]
          mod = ".".join(parts + ([node.module] if node.module else []))
        else:
          mod = node.module or ""
        deps.update(f"{mod}.{a.name}" for a in node.names)
    graph[name] = {resolve(d) for d in deps
                   if d.startswith("big_vision")} - {name}
  return graph


def find_cycle(graph) -> list[str] | None:
  """One import circle as [a, b, ..., a], or None."""
  state = {}

  def visit(node, stack):
    state[node] = "open"
    stack.append(node)
    for dep in sorted(graph.get(node, ())):
      if state.get(dep) == "open":
        return stack[stack.index(dep):] + [dep]
      if dep not in state:
        found = visit(dep, stack)
        if found:
          return found
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node, [])
      if found:
        return found
  return None


def test_find_cycle_finds_a_planted_circle():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c",
                                                              "a"]
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle_in_big_vision():
  graph = import_graph()
  # The graph sees the edges that used to form circles.
  assert "big_vision.program" in graph["big_vision.config_check"]
  assert "big_vision.datasets.core" in graph["big_vision.datasets.tfds_source"]
  assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


# ----------------------------------------------------------------------------
# TensorFlow is imported without its eager Keras import (datasets/tf_import.py).
# ----------------------------------------------------------------------------
def _tensorflow_imports(path: str) -> list[tuple[int, str]]:
  """(line, module) of each import of tensorflow* or of tf_import in a file."""
  import ast  # pylint: disable=g-import-not-at-top
  found = []
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and not node.level:
      names = [f"{node.module}.{a.name}" for a in node.names]
    else:
      continue
    found += [(node.lineno, n) for n in names
              if n.split(".")[0].startswith("tensorflow")
              or n.startswith("big_vision.datasets.tf_import")]
  return sorted(found)


# Floors below the data side, which may not import it: their optional
# tensorflow imports (TensorBoard files, gs:// paths) run after the data side
# has imported tensorflow in a trainer.
BELOW_DATA_SIDE = ("big_vision/checkpoint.py", "big_vision/metric_writer.py")


def test_tensorflow_is_imported_through_tf_import():
  """Every module of big_vision and tools/ that imports tensorflow or
  tensorflow_datasets imports big_vision.datasets.tf_import first (in its
  file), so whichever of them a process loads first skips Keras."""
  late = []
  checked = 0
  for top in ("big_vision", "tools"):
    for dirpath, _, files in os.walk(os.path.join(REPO_ROOT, top)):
      for f in sorted(files):
        path = os.path.join(dirpath, f)
        if (not f.endswith(".py") or f == "tf_import.py" or
            os.path.relpath(path, REPO_ROOT) in BELOW_DATA_SIDE):
          continue
        imports = _tensorflow_imports(path)
        seen_tf_import = False
        for line, name in imports:
          if name.startswith("big_vision.datasets.tf_import"):
            seen_tf_import = True
          elif not seen_tf_import:
            late.append(f"{os.path.relpath(path, REPO_ROOT)}:{line} {name}")
        checked += bool(imports)
  assert checked >= 10  # The walk found the data side.
  assert not late, ("import big_vision.datasets.tf_import before these "
                    "(or use its `tf`):\n" + "\n".join(late))


def test_data_side_imports_tensorflow_without_keras(tmp_path):
  # In a fresh process, as a trainer's config check imports it first, then
  # its metric writer (TensorBoard events); the plant is gone afterwards, so
  # code that wants Keras can still import it.
  code = (
      "import sys\n"
      "from big_vision.pp import builder\n"
      "from big_vision import input_pipeline\n"
      "from big_vision import metric_writer\n"
      "import tensorflow as tf\n"
      "assert tf.data.Dataset.range(3).reduce(tf.constant(0, tf.int64), lambda a, b: a + b) == 3\n"
      f"w = metric_writer.MetricWriter({str(tmp_path)!r})\n"
      "w.write(1, {'a': 1.0}); w.close()\n"
      "heavy = sorted(m for m in ('keras', 'sklearn') if m in sys.modules)\n"
      "assert not heavy, heavy\n"
      "assert 'keras.src.optimizers' not in sys.modules\n")
  _run_fresh(code)
