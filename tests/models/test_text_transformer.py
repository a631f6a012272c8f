"""Text transformer: published layout, closed-form sizes, pooling, loading."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vision import utils
from big_vision.models import text_transformer


def shapes_of(model, length=16, batch=1):
  tokens = jax.ShapeDtypeStruct((batch, length), jnp.int32)
  params = jax.eval_shape(lambda r: model.init(r, jnp.zeros(tokens.shape,
                                                            tokens.dtype)),
                          jax.random.PRNGKey(0))["params"]
  return {k: tuple(v.shape) for k, v in utils.flatten_dict(params).items()}


def tiny(**kw):
  cfg = dict(width=32, depth=2, mlp_dim=64, num_heads=4, vocab_size=50)
  cfg.update(kw)
  return text_transformer.Model(**cfg)


def init(model, tokens, seed=0):
  return model.init(jax.random.PRNGKey(seed), tokens)["params"]


def test_b_text_tower_has_published_names_and_closed_form_size():
  shapes = shapes_of(text_transformer.Model(768, variant="B"), length=64)
  assert shapes["Embed_0/embedding"] == (32_000, 768)
  assert shapes["pos_embedding"] == (1, 64, 768)
  assert shapes["Encoder_0/encoderblock_11/MlpBlock_0/Dense_0/kernel"] == (
      768, 3072)
  assert shapes[
      "Encoder_0/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel"
  ] == (768, 12, 64)
  assert shapes["Encoder_0/encoder_norm/scale"] == (768,)
  assert shapes["head/kernel"] == (768, 768)
  # Second implementation of the count: embeddings + 12 blocks + norm + head.
  d, m, v, length = 768, 3072, 32_000, 64
  block = (4 * d * d + 4 * d) + (2 * d * m + m + d) + 2 * 2 * d
  expected = v * d + length * d + 12 * block + 2 * d + d * d + d
  assert sum(int(np.prod(s)) for s in shapes.values()) == expected


def test_so400m_variant_sizes():
  shapes = shapes_of(text_transformer.Model(1152, variant="So400m"))
  assert shapes["Encoder_0/encoderblock_26/MlpBlock_0/Dense_0/kernel"] == (
      1152, 4304)
  assert "Encoder_0/encoderblock_27/LayerNorm_0/scale" not in shapes


@pytest.mark.parametrize("pool,expected", [
    ("last", lambda enc: enc[:, -1]),
    ("first", lambda enc: enc[:, 0]),
    ("gap", lambda enc: enc.mean(1)),
])
def test_pooling_reads_the_encoded_tokens(pool, expected):
  model = tiny(pool_type=pool)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (3, 7), 0, 50)
  x, out = model.apply({"params": init(model, tokens)}, tokens)
  np.testing.assert_allclose(x, expected(out["encoded"]), rtol=1e-6)
  assert x.shape == (3, 32)


def test_map_pool_and_head():
  model = tiny(pool_type="map", num_classes=16)
  tokens = jnp.ones((2, 5), jnp.int32)
  params = init(model, tokens)
  assert "MAPHead_0" in params
  x, out = model.apply({"params": params}, tokens)
  assert x.shape == (2, 16)
  np.testing.assert_allclose(
      x, out["pre_logits"] @ params["head"]["kernel"] + params["head"]["bias"],
      rtol=1e-5, atol=1e-6)


def test_without_posemb_gap_is_invariant_to_token_order():
  # Attention and gap are permutation-equivariant/invariant: only the
  # position embedding tells positions apart.
  model = tiny(pool_type="gap")
  tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 9), 0, 50)
  params = init(model, tokens)
  params["pos_embedding"] = jnp.zeros_like(params["pos_embedding"])
  perm = np.random.RandomState(0).permutation(9)
  a, _ = model.apply({"params": params}, tokens)
  b, _ = model.apply({"params": params}, tokens[:, perm])
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  params["pos_embedding"] = jax.random.normal(jax.random.PRNGKey(3),
                                              params["pos_embedding"].shape)
  a, _ = model.apply({"params": params}, tokens)
  b, _ = model.apply({"params": params}, tokens[:, perm])
  assert np.abs(a - b).max() > 1e-3


def test_load_converts_per_block_checkpoint_to_scan_and_outputs_match():
  tokens = jax.random.randint(jax.random.PRNGKey(4), (2, 6), 0, 50)
  loop = tiny(num_classes=8)
  params = init(loop, tokens)
  scanned = tiny(num_classes=8, scan=True)
  fresh = init(scanned, tokens, seed=1)
  loaded = text_transformer.load(fresh, {"params": params})
  assert loaded["Encoder_0"]["encoderblock"]["MlpBlock_0"]["Dense_0"][
      "kernel"].shape == (2, 32, 64)
  a, _ = loop.apply({"params": params}, tokens)
  b, _ = scanned.apply({"params": loaded}, tokens)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_load_mismatch_names_the_parameter():
  tokens = jnp.ones((1, 6), jnp.int32)
  params = init(tiny(), tokens)
  longer = init(tiny(), jnp.ones((1, 8), jnp.int32))
  with pytest.raises(ValueError, match="pos_embedding"):
    text_transformer.load(longer, params)


@pytest.mark.parametrize("kw,message", [
    (dict(pool_type="lst"), "Did you mean 'last'"),
    (dict(widht=3), "widht"),
    (dict(variant="B/16"), "patch size"),
    (dict(variant="Q"), "Unknown ViT variant 'Q'"),
])
def test_bad_options_are_named(kw, message):
  with pytest.raises(ValueError, match=message):
    text_transformer.Model(**kw)
