"""Tests for the registry and its safe spec parser (pure Python)."""
import subprocess
import sys

from big_vision.pp import registry
from big_vision.pp.registry import Registry
import pytest


@pytest.fixture
def temp_entries():
  names = []
  yield names
  for n in names:
    Registry.unregister(n)


@pytest.mark.parametrize("spec, expected", [
    ("flip_lr", ("flip_lr", (), {})),
    ("  flip_lr  ", ("flip_lr", (), {})),
    ("flip_lr()", ("flip_lr", (), {})),
    ('resize(224, method="bilinear")', ("resize", (224,), {"method": "bilinear"})),
    ('onehot(1000, key="label", on=0.9, off=0.0001)',
     ("onehot", (1000,), {"key": "label", "on": 0.9, "off": 0.0001})),
    ('keep("image", "labels")', ("keep", ("image", "labels"), {})),
    ("pad((1, 2))", ("pad", ((1, 2),), {})),
    ("value_range(-1, 1)", ("value_range", (-1, 1), {})),
    ("f(None, True, [1, 2], {'a|b': -3.5}, {1, 2})",
     ("f", (None, True, [1, 2], {"a|b": -3.5}, {1, 2}), {})),
    ("proj.sub.op(x=1e-3)", ("proj.sub.op", (), {"x": 1e-3})),
    ("f(2j)", ("f", (2j,), {})),
])
def test_parse_name(spec, expected):
  assert registry.parse_name(spec) == expected


@pytest.mark.parametrize("spec, fragment", [
    ("resize(224", "Syntax error"),
    ("resize(224,,)", "Syntax error"),
    ("", "Empty spec"),
    ("resize(size)", "'size'"),  # A bare name is not a string literal.
    ("f(__import__('os').system('true'))", "not a Python literal"),
    ("f(x=open('/etc/passwd'))", "not a Python literal"),
    ("f(1 + 2)", "'1 + 2'"),
    ("f(*[1, 2])", "*args"),
    ("f(**{'a': 1})", "**kwargs"),
    ("f(1)(2)", "Expected a name"),
    ("'just a string'", "Expected a name"),
    ("f[1]", "Expected a name"),
    ("lambda: 1", "Expected a name"),
])
def test_parse_name_rejects(spec, fragment):
  with pytest.raises(ValueError) as e:
    registry.parse_name(spec)
  assert fragment in str(e.value)


def test_parse_never_evaluates(tmp_path):
  marker = tmp_path / "pwned"
  with pytest.raises(ValueError):
    registry.parse_name(f"f(open({str(marker)!r}, 'w'))")
  assert not marker.exists()


@pytest.mark.parametrize("text, pieces", [
    ("a|b|c", ["a", "b", "c"]),
    ('a("x|y")|b', ['a("x|y")', "b"]),
    ("a('x|y', \"|\")|b('|')", ["a('x|y', \"|\")", "b('|')"]),
    (r'a("q\"|z")|b', [r'a("q\"|z")', "b"]),
    ("a({'k|': [1]})|b", ["a({'k|': [1]})", "b"]),
    ("a|", ["a", ""]),
    ("", [""]),
    ("a('unterminated|b", ["a('unterminated|b"]),
])
def test_split_outside_strings(text, pieces):
  assert registry.split_outside_strings(text) == pieces


def test_register_and_lookup(temp_entries):
  temp_entries.append("test_ns.my_op")

  @Registry.register("test_ns.my_op")
  def get_my_op(x):
    return x + 1

  assert Registry.lookup("test_ns.my_op") is get_my_op
  assert Registry.lookup("test_ns.my_op")(1) == 2
  assert "test_ns.my_op" in Registry.names("test_ns.")


def test_lookup_unknown_suggests_close_names(temp_entries):
  temp_entries += ["test_ns.flip_lr", "test_ns.resize"]
  Registry.register("test_ns.flip_lr")(lambda: None)
  Registry.register("test_ns.resize")(lambda: None)
  with pytest.raises(ValueError) as e:
    Registry.lookup("test_ns.fliplr")
  msg = str(e.value)
  assert "'test_ns.fliplr'" in msg and "Did you mean 'flip_lr'" in msg
  assert "resize" in msg  # Lists what exists.


def test_duplicate_registration_rejected(temp_entries):
  temp_entries.append("test_ns.dup")
  Registry.register("test_ns.dup")(lambda: 1)
  with pytest.raises(ValueError, match="already registered"):
    Registry.register("test_ns.dup")(lambda: 2)
  Registry.register("test_ns.dup", replace=True)(len)
  assert Registry.lookup("test_ns.dup") is len


def test_reregistering_same_function_is_allowed(temp_entries):
  temp_entries.append("test_ns.same")

  def get_same():
    return 1

  Registry.register("test_ns.same")(get_same)
  Registry.register("test_ns.same")(get_same)  # e.g. importlib.reload
  assert Registry.lookup("test_ns.same") is get_same


@pytest.mark.parametrize("bad", ["", "a b", "a..b", "1abc", 3])
def test_bad_registry_names(bad):
  with pytest.raises(ValueError, match="dotted identifiers"):
    Registry.register(bad)


def test_registry_does_not_import_tensorflow():
  code = ("import sys, big_vision.pp.registry; "
          "sys.exit('tensorflow' in sys.modules)")
  assert subprocess.run([sys.executable, "-c", code]).returncode == 0
