"""Every checkpoint layout loads into every model family.

Layouts: big_vision and vit_jax names (written by tools/export.py), each
bare, under `params/` (big_vision train-state files, beside `opt/...`) and
under `opt/target/` (older Flax-optimizer files). Each file is loaded with
the family's `load` into a fresh init (of another seed) and must give back
exactly the exported values. Also: big_vision's short names of released
checkpoints resolve to their public URLs, and an unreadable one is an error
naming its URL.
"""
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vision import utils
from big_vision.models import bit
from big_vision.models import common
from big_vision.models import mlp_mixer
from big_vision.models import text_transformer
from big_vision.models import two_towers
from big_vision.models import vit

TOOL = os.path.join(os.path.dirname(__file__), "..", "..", "tools",
                    "export.py")
IMAGE = dict(width=16, depth=2, mlp_dim=32, num_heads=2, patch_size=(8, 8))
TEXT = dict(width=16, depth=1, mlp_dim=32, num_heads=2, vocab_size=30)


def _images():
  return jnp.zeros((1, 16, 16, 3))


FAMILIES = {
    "vit": (vit, dict(num_classes=5, pool_type="tok", **IMAGE),
            lambda m, k: m.init(k, _images())),
    "vit_scan": (vit, dict(num_classes=5, pool_type="gap", scan=True,
                           **IMAGE), lambda m, k: m.init(k, _images())),
    "mlp_mixer": (mlp_mixer, dict(num_classes=5, patch_size=(8, 8),
                                  hidden_dim=8, tokens_mlp_dim=4,
                                  channels_mlp_dim=8, num_blocks=2),
                  lambda m, k: m.init(k, _images())),
    "bit": (bit, dict(num_classes=5, depth=(1, 1), width=1),
            lambda m, k: m.init(k, jnp.zeros((1, 32, 32, 3)))),
    "text_transformer": (text_transformer, dict(num_classes=6, **TEXT),
                         lambda m, k: m.init(k, jnp.zeros((1, 4), jnp.int32))),
    "two_towers": (two_towers, dict(image=dict(pool_type="tok", **IMAGE),
                                    text=TEXT, out_dim=6,
                                    temperature_init=10.0, bias_init=-10.0),
                   lambda m, k: m.init(k, _images(),
                                       jnp.zeros((1, 4), jnp.int32))),
}


@pytest.fixture(scope="module")
def export_tool():
  spec = importlib.util.spec_from_file_location("export", TOOL)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _params(family, seed):
  module, cfg, init = FAMILIES[family]
  model = module.Model(**cfg)
  params = init(model, jax.random.PRNGKey(seed))["params"]
  return jax.tree.map(np.asarray, jax.device_get(params)), cfg


@pytest.mark.parametrize("prefix", ["", "params", "opt/target"])
@pytest.mark.parametrize("layout", ["big_vision", "vit_jax"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_layout_loads_into_family(family, layout, prefix, export_tool,
                                  tmp_path):
  module = FAMILIES[family][0]
  trained, cfg = _params(family, seed=1)
  fresh, _ = _params(family, seed=2)
  src = tmp_path / "src.npz"
  from big_vision import checkpoint  # pylint: disable=g-import-not-at-top
  checkpoint.save_params(trained, str(src))
  out = tmp_path / "out.npz"
  assert export_tool.main(["--workdir", str(src), "--out", str(out),
                           "--layout", layout, "--prefix", prefix]) == 0
  written = checkpoint.load_params(str(out))
  if prefix == "params":  # As big_vision's train states: optimizer beside.
    written["opt"] = {"mu": {"x": np.zeros(3, np.float32)}}
    checkpoint.save_params(written, str(out))
  keys = set(utils.flatten_dict(written))
  if prefix:
    assert all(k.startswith(prefix + "/") or k.startswith("opt/")
               for k in keys)
  is_vit_jax = any("posembed_input" in k for k in keys)
  assert is_vit_jax == (layout == "vit_jax" and family in (
      "vit", "vit_scan", "two_towers"))
  loaded = module.load(fresh, str(out), cfg)
  want, got = utils.flatten_dict(trained), utils.flatten_dict(loaded)
  assert want.keys() == got.keys()
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)
  # Differs from the fresh init, so the values really came from the file.
  assert any(not np.array_equal(v, utils.flatten_dict(fresh)[k])
             for k, v in want.items())


def test_two_towers_tower_from_sub_model_path(tmp_path):
  trained, cfg = _params("two_towers", seed=1)
  fresh, _ = _params("two_towers", seed=2)
  from big_vision import checkpoint  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "siglip.npz")
  checkpoint.save_params({"params": trained}, path)
  # big_vision's "file.npz:img": the image tower of a two-tower file.
  img = vit.load(fresh["img"], path + ":img", cfg["image"])
  for name, value in utils.flatten_dict(trained["img"]).items():
    np.testing.assert_array_equal(utils.flatten_dict(img)[name], value)
  with pytest.raises(ValueError, match="no sub-model 'image'"):
    vit.load(fresh["img"], path + ":image", cfg["image"])


def test_released_short_names_resolve_to_public_urls():
  assert common.resolve_init("howto-i21k-B/32") == (
      "gs://vit_models/augreg/B_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-"
      "do_0.0-sd_0.0.npz")
  assert common.resolve_init("howto-i21k-L/16").startswith(
      "gs://vit_models/augreg/L_16-i21k-300ep-")
  assert common.resolve_init("i1k-s16-300ep") == (
      "gs://big_vision/vit_s16_i1k_300ep.npz")
  assert common.resolve_init("SigLIP B/16 224").endswith(".npz:img")
  assert len([k for k in common.RELEASED if k.startswith("howto-i21k-")]) == 7
  # BiT's paper names depend on the model's depth and width.
  assert common.resolve_init("M", dict(depth=50, width=1), "bit") == (
      "gs://bit_models/BiT-M-R50x1.npz")
  assert common.resolve_init("S", dict(variant="R101x3"), "bit") == (
      "gs://bit_models/BiT-S-R101x3.npz")
  assert common.resolve_init("M-imagenet2012", dict(depth=152, width=2),
                             "bit") == (
      "gs://bit_models/BiT-M-R152x2-ILSVRC2012.npz")
  assert common.resolve_init("M", {}, "vit") == "M"  # Only BiT's names.
  assert common.resolve_init("/tmp/x.npz") == "/tmp/x.npz"


def test_unreachable_released_name_names_its_url(tmp_path, monkeypatch):
  fresh, cfg = _params("vit", seed=0)
  url = str(tmp_path / "bucket" / "S_16-i21k.npz")  # Not reachable here.
  monkeypatch.setitem(common.RELEASED, "howto-i21k-S/16", url)
  with pytest.raises(ValueError) as e:
    vit.load(fresh, "howto-i21k-S/16", cfg)
  assert "'howto-i21k-S/16'" in str(e.value) and url in str(e.value)
  assert "local path" in str(e.value)
  # A plain missing local path keeps its own error.
  with pytest.raises(FileNotFoundError):
    vit.load(fresh, str(tmp_path / "missing.npz"), cfg)
