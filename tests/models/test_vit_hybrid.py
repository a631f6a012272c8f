"""The hybrid R50+ViT: a ResNet stem under the ViT, with released names."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vision import utils
from big_vision.models import resnet_stem
from big_vision.models import vit


def _shapes(model, res=224):
  return jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, res, res, 3)))
  )["params"]


def test_r50_vit_b16_parameter_count_and_names():
  params = _shapes(vit.Model(1000, variant="B/16", pool_type="tok",
                             resnet=dict(num_layers=50, width=1)), res=384)
  names = utils.flatten_dict(params)
  # Released R50+ViT-B/16 names: the stem sits next to `embedding`.
  for name in ("conv_root/kernel", "gn_root/scale",
               "block1/unit1/conv1/kernel", "block3/unit9/gn3/bias",
               "embedding/kernel", "Transformer/encoder_norm/scale"):
    assert name in names, name
  assert names["embedding/kernel"].shape == (1, 1, 1024, 768)
  assert names["pos_embedding"].shape == (1, 24 * 24, 768)
  # Published: 98.95M for the released (fine-tuned, no pre-logits)
  # R50+ViT-B/16 at 384px, whose vit_jax layout has one more posemb slot.
  count = utils.tree_count(params)
  assert count + 768 == 98_950_952, count


def test_hybrid_forward_shapes_and_stem_output():
  model = vit.Model(10, width=32, depth=1, num_heads=2, mlp_dim=64,
                    patch_size=16, resnet=dict(num_layers=(1, 1, 1), width=1))
  x = jnp.ones((2, 32, 32, 3))
  params = model.init(jax.random.PRNGKey(0), x)["params"]
  logits, out = model.apply({"params": params}, x)
  assert logits.shape == (2, 10)
  stride = resnet_stem.output_stride((1, 1, 1))
  assert out["resnet"].shape[1:3] == (32 // stride, 32 // stride)
  assert out["stem"].shape == (2, 2, 2, 32)
  np.testing.assert_array_equal(params["embedding"]["kernel"].shape,
                                (1, 1, resnet_stem.output_channels((1, 1, 1),
                                                                   1), 32))


@pytest.mark.parametrize("resnet,error", [
    (dict(num_layers=50, widht=1), "Did you mean 'width'"),
])
def test_hybrid_bad_options(resnet, error):
  with pytest.raises(ValueError, match=error):
    vit.Model(10, variant="B/16", resnet=resnet)


def test_hybrid_patch_not_multiple_of_stride():
  with pytest.raises(ValueError, match="multiple of the ResNet stem's stride"):
    vit.Model(10, variant="B/8", resnet=dict(num_layers=50))
