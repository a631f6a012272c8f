"""SigLIP 2 pieces around the model: the aspect-ratio variant of the shapes
data, the captioning evaluator (against numpy), and the zero-shot /
retrieval / captioning evaluators on a NaFlex tower at several sequence
lengths. The demo's accuracy is a measurement (README.md), not a test.
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from big_vision import sharding
from big_vision.datasets import shapes_captions
from big_vision.evaluators import captioning
from big_vision.evaluators import retrieval
from big_vision.evaluators import zeroshot
from big_vision.models import two_towers

TOK = ("tokenize(12, model='shapes_captions', eos='sticky', pad_value=1, "
       "inkey='{}', outkey='labels')")


def test_flex_shapes_vary_in_aspect_ratio_and_hold_out_combinations():
  a = list(itertools.islice(shapes_captions.generate_flex("test"), 50))
  b = list(itertools.islice(shapes_captions.generate_flex("test"), 50))
  for (_, x), (_, y) in zip(a, b):  # Deterministic.
    np.testing.assert_array_equal(x["image"], y["image"])
  train = [ex for _, ex in itertools.islice(
      shapes_captions.generate_flex("train"), 300)]
  shapes = {ex["image"].shape[:2] for ex in train}
  assert shapes == set(shapes_captions.FLEX_SIZES)
  held_out = {(c, shapes_captions.held_out_size(c))
              for c in shapes_captions.COLORS}
  assert all((ex["color"], ex["size"]) in held_out for _, ex in a)
  assert not any((ex["color"], ex["size"]) in held_out for ex in train)
  # The shape is drawn in its colour (not clipped away by the canvas).
  for ex in train[:40]:
    img = ex["image"].astype(int)
    rgb = np.asarray(shapes_captions.COLORS[ex["color"]])
    assert np.sum(np.abs(img - rgb).max(-1) <= 25) >= 15


def test_captioning_batch_sums_match_numpy():
  rng = np.random.RandomState(0)
  logits = rng.normal(size=(3, 5, 7)).astype(np.float32)
  tokens = np.array([[3, 4, 1, 1, 1], [5, 5, 5, 5, 5], [6, 1, 1, 1, 1]])
  valid = np.array([True, True, False])
  sums = jax.device_get(captioning.batch_sums(
      jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(valid)))
  nll = hits = n = 0.0
  counts = np.zeros(7)
  for i in range(2):  # Row 2 is padding.
    for t in range(5):
      if t > 0 and 1 in tokens[i, :t]:
        break
      z = logits[i, t].astype(np.float64)
      logp = z - np.log(np.sum(np.exp(z)))
      nll -= logp[tokens[i, t]]
      hits += np.argmax(z) == tokens[i, t]
      counts[tokens[i, t]] += 1
      n += 1
  np.testing.assert_allclose(sums["nll"], nll, rtol=1e-5)
  assert sums["hits"] == hits and sums["n"] == n == 3 + 5
  np.testing.assert_array_equal(sums["counts"], counts)


def _naflex_model():
  small = dict(width=32, depth=1, mlp_dim=64, num_heads=2)
  return two_towers.Model(
      image_model="naflex_vit",
      image=dict(small, patch_size=8, posemb_grid=4, pool_type="map"),
      text=dict(small, vocab_size=128), decoder=dict(small, vocab_size=128),
      out_dim=32, bias_init=-10.0)


def test_evaluators_run_a_naflex_tower_at_several_sequence_lengths():
  model = _naflex_model()
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 195)),
                      jnp.ones((1, 12), jnp.int32))["params"]
  predict = lambda p, *a, **kw: model.apply({"params": p}, *a, **kw)
  mesh = sharding.make_mesh(None)
  data = dict(name="shapes_captions_flex", split="test[:32]")
  state = {"params": params}
  embeds = {}
  for seq in (16, 36):
    pp_img = f"decode|value_range(-1, 1)|naflex({seq}, 8)"
    zs = dict(zeroshot.Evaluator(
        predict, mesh=mesh, pp_txt=TOK.format("texts"), batch_size=16,
        datasets={"color": dict(data=data, pp_img=pp_img, label_key="color",
                                class_names=None, prompts=("a {} shape",))}
    ).run(state))
    assert 0.0 <= zs["color/top1"] <= 1.0
    rt = dict(retrieval.Evaluator(
        predict, mesh=mesh, data=data, batch_size=16,
        pp_fn=f"{pp_img}|{TOK.format('texts')}|keep('image', 'labels')"
    ).run(state))
    assert 0.0 <= rt["i2t/r@1"] <= 1.0
    cap = dict(captioning.Evaluator(
        predict, mesh=mesh, data=data, batch_size=16,
        pp_fn=(f"{pp_img}|choice(inkey='texts', outkey='text')|"
               f"{TOK.format('text')}|keep('image', 'labels')")).run(state))
    assert 0.0 <= cap["token_acc"] <= 1.0 and 0.0 < cap["unigram_acc"] < 1.0
    np.testing.assert_allclose(cap["perplexity"], np.exp(cap["nll"]),
                               rtol=1e-6)
    # An untrained decoder is near-uniform over the 128 pieces.
    assert 20 < cap["perplexity"] < 1000
    embeds[seq] = rt
  assert set(embeds) == {16, 36}
