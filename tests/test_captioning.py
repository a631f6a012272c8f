"""The captioning decoder (models.text_decoder, two_towers' `decoder`) and
the weighted "combined" objective (SigLIP 2: sigmoid loss + captioning).

A future token never changes an earlier prediction (causal mask); the
captioning and sigmoid losses against numpy references; the combined
gradient is the weighted sum of the terms' gradients; the train step logs
each term (also with accum_steps and on a NaFlex image tower).
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from big_vision import objectives
from big_vision import program
from big_vision.models import text_decoder
from big_vision.models import two_towers

VOCAB, LEN, B = 16, 6, 4
DEC = dict(vocab_size=VOCAB, width=32, depth=2, mlp_dim=64, num_heads=2)


def _tokens(seed=0, n=B):
  """Caption-like tokens: words 2..VOCAB-1, then eos (1) to the end."""
  rng = np.random.RandomState(seed)
  toks = rng.randint(2, VOCAB, (n, LEN))
  for i, n_words in enumerate(rng.randint(1, LEN, n)):
    toks[i, n_words:] = 1
  return jnp.asarray(toks, jnp.int32)


def _randomize(params, seed=1):
  rng = np.random.RandomState(seed)
  return jax.tree.map(
      lambda x: jnp.asarray(rng.normal(size=x.shape) * 0.3, x.dtype), params)


def test_causal_mask_future_tokens_never_change_earlier_predictions():
  dec = text_decoder.Model(**DEC, attn_impl="einsum")
  img = jax.random.normal(jax.random.PRNGKey(0), (B, 5, 8))
  toks = _tokens()
  params = _randomize(jax.jit(dec.init)(jax.random.PRNGKey(0), toks,
                                        img)["params"])
  apply = jax.jit(dec.apply)  # One compile, not one per op.
  logits, _ = apply({"params": params}, toks, img)
  for t in range(LEN):
    changed = toks.at[:, t:].set((toks[:, t:] + 3) % VOCAB)
    logits2, _ = apply({"params": params}, changed, img)
    np.testing.assert_allclose(logits2[:, :t], logits[:, :t], atol=1e-5)
    assert np.abs(np.asarray(logits2[:, t] - logits[:, t])).max() > 1e-4
  # And the image matters (cross-attention is wired).
  logits3, _ = apply({"params": params}, toks, img * 2.0)
  assert np.abs(np.asarray(logits3 - logits)).max() > 1e-4


def test_image_mask_hides_padding_tokens():
  dec = text_decoder.Model(**DEC)
  img = jax.random.normal(jax.random.PRNGKey(0), (B, 5, 8))
  mask = jnp.asarray(np.arange(5)[None] < np.array([[2], [3], [5], [1]]))
  toks = _tokens()
  params = _randomize(jax.jit(dec.init)(jax.random.PRNGKey(0), toks,
                                        img)["params"])
  apply = jax.jit(dec.apply)
  a, _ = apply({"params": params}, toks, img, mask)
  b, _ = apply({"params": params}, toks,
               jnp.where(mask[..., None], img, 7.0), mask)
  np.testing.assert_allclose(a, b, atol=1e-5)


def _np_captioning_loss(logits, tokens, eos=1):
  logits = np.asarray(logits, np.float64)
  tokens = np.asarray(tokens)
  total, count = 0.0, 0
  for i in range(tokens.shape[0]):
    for t in range(tokens.shape[1]):
      if t > 0 and eos in tokens[i, :t]:
        break  # Only up to and including the first eos.
      z = logits[i, t]
      logp = z - z.max() - np.log(np.sum(np.exp(z - z.max())))
      total -= logp[tokens[i, t]]
      count += 1
  return total / count


def test_captioning_loss_matches_numpy():
  logits = jax.random.normal(jax.random.PRNGKey(3), (B, LEN, VOCAB)) * 2
  toks = _tokens(5)
  got = objectives.captioning_loss(logits, toks)
  np.testing.assert_allclose(got, _np_captioning_loss(logits, toks),
                             rtol=1e-5)
  w = objectives.caption_weights(jnp.asarray([[5, 6, 1, 1], [1, 1, 1, 1],
                                              [4, 4, 4, 4]]))
  np.testing.assert_array_equal(w, [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])


def _np_sigmoid_loss(zimg, ztxt, t, b):
  z = np.asarray(zimg, np.float64) @ np.asarray(ztxt, np.float64).T * t + b
  labels = 2 * np.eye(len(z)) - 1
  return -np.sum(np.log(1 / (1 + np.exp(-labels * z)))) / len(z)


def _model(image=None, **kw):
  return two_towers.Model(
      image=image or dict(width=32, depth=1, mlp_dim=64, num_heads=2,
                          patch_size=8, pool_type="map"),
      text=dict(width=32, depth=1, mlp_dim=64, num_heads=2,
                vocab_size=VOCAB),
      out_dim=16, bias_init=-10.0, decoder=DEC, **kw)


def _config(**weights):
  return ml_collections.ConfigDict(dict(loss="combined",
                                        objectives=weights))


def test_combined_terms_match_numpy_and_gradient_is_weighted_sum():
  model = _model()
  batch = {"image": jax.random.normal(jax.random.PRNGKey(1), (B, 16, 16, 3)),
           "labels": _tokens(2)}
  params = jax.jit(model.init)(jax.random.PRNGKey(0), batch["image"][:1],
                               batch["labels"][:1])["params"]
  assert set(params) == {"img", "txt", "dec", "t", "b"}
  params = _randomize(params)
  rng = jax.random.PRNGKey(0)
  both = objectives.make(_config(sigmoid_contrastive=0.7, captioning=1.3),
                         model)
  sig = objectives.make(_config(sigmoid_contrastive=1.0), model)
  cap = objectives.make(_config(captioning=1.0), model)
  assert both.has_aux and both.model_inputs == ("image", "labels")
  (loss, aux) = jax.jit(both.loss)(params, batch, rng)
  # Each term against numpy, from one forward pass.
  zimg, ztxt, out = jax.jit(model.apply)(
      {"params": params}, batch["image"], batch["labels"],
      decoder_text=batch["labels"])
  np.testing.assert_allclose(
      aux["loss/sigmoid_contrastive"],
      _np_sigmoid_loss(zimg, ztxt, float(out["t"]), float(out["b"])),
      rtol=1e-4)
  np.testing.assert_allclose(
      aux["loss/captioning"],
      _np_captioning_loss(out["dec/logits"], batch["labels"]), rtol=1e-4)
  np.testing.assert_allclose(
      loss, 0.7 * aux["loss/sigmoid_contrastive"] + 1.3 * aux["loss/captioning"],
      rtol=1e-6)
  grad = lambda obj: jax.jit(jax.grad(lambda p: obj.loss(p, batch, rng)[0]))(
      params)
  g_both, g_sig, g_cap = grad(both), grad(sig), grad(cap)
  jax.tree.map(lambda a, s, c: np.testing.assert_allclose(
      a, 0.7 * s + 1.3 * c, rtol=1e-4, atol=1e-6), g_both, g_sig, g_cap)
  # The decoder gets gradient only from captioning, the text tower only
  # from the contrastive term.
  assert max(np.abs(x).max() for x in jax.tree.leaves(g_sig["dec"])) == 0
  assert max(np.abs(x).max() for x in jax.tree.leaves(g_cap["txt"])) == 0
  assert max(np.abs(x).max() for x in jax.tree.leaves(g_cap["dec"])) > 0


def test_unknown_objective_and_missing_decoder_are_named():
  with pytest.raises(ValueError, match="captionin"):
    objectives.make(_config(captionin=1.0), _model())
  with pytest.raises(ValueError, match="config.objectives"):
    objectives.make(_config(), _model())
  no_dec = two_towers.Model(
      image=dict(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=8),
      text=dict(width=32, depth=1, mlp_dim=64, num_heads=2,
                vocab_size=VOCAB), out_dim=16)
  obj = objectives.make(_config(captioning=1.0), no_dec)
  batch = {"image": jnp.zeros((2, 16, 16, 3)), "labels": _tokens(n=2)}
  params = no_dec.init(jax.random.PRNGKey(0), batch["image"],
                       batch["labels"])["params"]
  with pytest.raises(ValueError, match="decoder"):
    obj.loss(params, batch, jax.random.PRNGKey(0))


def _train_config(accum_steps=1, naflex=False, **weights):
  image = dict(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=8,
               pool_type="map")
  if naflex:
    image = dict(image, posemb_grid=2)
  return ml_collections.ConfigDict(dict(
      seed=0, total_steps=2, loss="combined", objectives=weights,
      accum_steps=accum_steps, input=dict(batch_size=16),
      model_name="two_towers",
      model=dict(image_model="naflex_vit" if naflex else "vit", image=image,
                 text=dict(width=32, depth=1, mlp_dim=64, num_heads=2,
                           vocab_size=VOCAB),
                 out_dim=16, bias_init=-10.0, decoder=DEC),
      optax_name="scale_by_adam", lr=1e-3, wd=0.0,
      schedule=dict(decay_type="cosine", warmup_steps=0),
      log_training_steps=1))


@pytest.mark.parametrize("accum_steps,naflex,weights", [
    (1, False, dict(sigmoid_contrastive=1.0, captioning=0.5)),
    (2, False, dict(captioning=1.0)),
    (1, True, dict(sigmoid_contrastive=1.0, captioning=1.0)),
])
def test_train_step_logs_each_term(accum_steps, naflex, weights):
  config = _train_config(accum_steps, naflex, **weights)
  rng = np.random.RandomState(0)
  if naflex:  # 4 patches of 8x8x3 + (row, col, valid): a 2x2 grid.
    image = rng.normal(size=(16, 4, 8 * 8 * 3 + 3)).astype(np.float32)
    image[..., -3:] = np.stack([np.arange(4) // 2, np.arange(4) % 2,
                                np.ones(4)], -1)
  else:
    image = rng.normal(size=(16, 16, 16, 3)).astype(np.float32)
  labels = np.asarray(_tokens(4, n=16))
  specs = {"image": (image.shape, np.float32), "labels": (labels.shape,
                                                          np.int32)}
  prog = program.build(config, data=(64, specs))
  state = prog.init_state()
  params = jax.device_get(state["params"])
  from big_vision import sharding  # pylint: disable=g-import-not-at-top
  sh = sharding.data_sharding(prog.mesh)
  batch = {"image": jax.device_put(image, sh),
           "labels": jax.device_put(labels, sh)}
  _, info = prog.update_fn(state, batch)
  info = jax.device_get(info)
  for name in weights:
    assert f"loss/{name}" in info
  np.testing.assert_allclose(
      info["training_loss"],
      sum(w * info[f"loss/{n}"] for n, w in weights.items()), rtol=1e-5)
  # The logged captioning term is that of the step's params on the batch
  # (micro-batches average to the whole batch's mean per micro-batch).
  if accum_steps == 1 and "captioning" in weights:
    model = prog.model
    _, _, out = jax.jit(model.apply)({"params": params}, jnp.asarray(image),
                                     jnp.asarray(labels), decoder_text=labels)
    np.testing.assert_allclose(
        info["loss/captioning"],
        objectives.captioning_loss(out["dec/logits"], labels), rtol=1e-4)
