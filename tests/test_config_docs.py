"""Config docstrings tell the truth: the command that runs the config, and
every argument its `get_config(arg)` accepts (its args table)."""
import glob
import importlib.util
import os

import pytest

from big_vision.configs import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    os.path.relpath(f, REPO) for f in glob.glob(
        os.path.join(REPO, "big_vision", "configs", "**", "*.py"),
        recursive=True)
    if not os.path.basename(f).startswith(("_", "common")))


def _load(path):
  spec = importlib.util.spec_from_file_location("cfg", os.path.join(REPO, path))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.mark.parametrize("path", CONFIGS)
def test_docstring_names_the_command_and_every_arg(path, monkeypatch):
  mod = _load(path)
  doc = mod.__doc__ or ""
  assert "python " in doc and os.path.basename(path) in doc, (
      f"{path}: the docstring must give the command that runs it")
  seen = []
  real = common.parse_arg

  def spy(arg, lazy=False, **spec):
    seen.append(set(spec))
    return real(arg, lazy=lazy, **spec)
  monkeypatch.setattr(common, "parse_arg", spy)
  mod.get_config(None)
  args = set().union(*seen) if seen else set()
  missing = sorted(a for a in args if a not in doc)
  assert not missing, f"{path}: args missing from the docstring: {missing}"
