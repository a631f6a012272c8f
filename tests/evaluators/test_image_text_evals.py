"""Zero-shot, retrieval and contrastive evaluators vs second implementations.

The evaluators run on the embedded shapes_captions test split with stand-in
"models" (predict functions built from the data) whose right answers are
known, so every number is checked, not just produced.
"""
import collections
import gc
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vision import input_pipeline
from big_vision import losses
from big_vision import sharding
from big_vision.datasets import shapes_captions
from big_vision.evaluators import class_names
from big_vision.evaluators import contrastive
from big_vision.evaluators import retrieval
from big_vision.evaluators import zeroshot
from big_vision.pp import builder
from big_vision.pp import ops_text

DATA = dict(name="shapes_captions", split="test")
SMALL = dict(name="shapes_captions", split="test[:200]")
TOKENIZE = "tokenize(12, model='shapes_captions', inkey='texts')"


@pytest.fixture(scope="module")
def mesh():
  return sharding.make_mesh()


@pytest.fixture(scope="module")
def test_labels():
  return [ex for _, ex in shapes_captions.generate("test")]


def class_word_table(names, dim):
  """[vocab, dim]: the token of class word i maps to e_i, others to 0."""
  sp = ops_text.get_tokenizer("shapes_captions")
  table = np.zeros((sp.get_piece_size(), dim), np.float32)
  for i, name in enumerate(names):
    (token,) = sp.EncodeAsIds(name)
    table[token, i] = 1.0
  return jnp.asarray(table)


def fake_zeroshot_model(names, confuse=None):
  """Images are their label (pp copies it); texts embed their class word.

  `confuse={a: b}` makes images of class a look like class b.
  """
  table = class_word_table(names, len(names))
  mapping = np.arange(len(names))
  for a, b in (confuse or {}).items():
    mapping[a] = b
  mapping = jnp.asarray(mapping)

  def predict_fn(params, image, text):
    del params
    zimg = ztxt = None
    if image is not None:
      zimg = jax.nn.one_hot(mapping[image.astype(jnp.int32)], len(names))
    if text is not None:
      z = table[text].sum(1)
      ztxt = z / jnp.linalg.norm(z, axis=-1, keepdims=True)
    return zimg, ztxt, {}
  return predict_fn


def test_zeroshot_top1_is_exact_for_a_known_model(mesh, test_labels):
  shapes, colors = shapes_captions.SHAPES, tuple(shapes_captions.COLORS)
  counts = collections.Counter(ex["shape"] for ex in test_labels)
  n = len(test_labels)

  def evaluate(names, key, confuse=None, **kw):
    ev = zeroshot.Evaluator(
        fake_zeroshot_model(names, confuse), mesh=mesh, data=DATA,
        pp_img=f"copy({key!r}, 'image')", pp_txt=TOKENIZE, batch_size=64,
        datasets={key: dict(label_key=key, **kw)},
        prompts=("a {}", "a picture of a {}"))
    return dict(ev.run({"params": {}}))

  assert evaluate(shapes, "shape") == {"shape/top1": 1.0}
  # Triangles (2) mistaken for circles (0): exactly their share is lost.
  got = evaluate(shapes, "shape", confuse={2: 0})
  np.testing.assert_allclose(got["shape/top1"], 1 - counts["triangle"] / n)
  # Six classes: top-5 reported too; names from the dataset (None) or given.
  assert evaluate(colors, "color") == {"color/top1": 1.0, "color/top5": 1.0}
  assert evaluate(colors, "color", class_names=list(colors))[
      "color/top1"] == 1.0


def test_zeroshot_class_names_must_match_the_dataset(mesh):
  predict_fn = fake_zeroshot_model(shapes_captions.SHAPES)
  kw = dict(mesh=mesh, data=DATA, pp_img="copy('shape', 'image')",
            pp_txt=TOKENIZE, label_key="shape")
  with pytest.raises(ValueError, match=r"2 class names .* has 3 classes"):
    zeroshot.Evaluator(predict_fn, class_names=["circle", "square"], **kw)
  with pytest.raises(ValueError, match=r"10 class names \('cifar10'\)"):
    zeroshot.Evaluator(predict_fn, class_names="cifar10", **kw)
  with pytest.raises(ValueError, match="Did you mean 'cifar10'"):
    zeroshot.Evaluator(predict_fn, class_names="cifar1O", **kw)
  with pytest.raises(ValueError, match="no feature 'shap'"):
    zeroshot.Evaluator(predict_fn, **{**kw, "label_key": "shap"})
  with pytest.raises(ValueError, match="exactly one"):
    zeroshot.Evaluator(predict_fn, prompts=("a shape",), **kw)


def test_class_name_lists_have_the_datasets_sizes():
  sizes = {k: len(v) for k, v in class_names.CLASS_NAMES.items()}
  assert sizes == {"imagenet2012": 1000, "cifar10": 10, "cifar100": 100,
                   "oxford_iiit_pet": 37}
  for names in class_names.CLASS_NAMES.values():
    assert len(set(names)) == len(names)
  assert class_names.IMAGENET2012[:2] == ("tench", "goldfish")
  assert class_names.CIFAR100[-1] == "worm"


def brute_force_recall(zimg, ztxt, k):
  """Second implementation: full matrices and argsort (no ties in use)."""
  n, per, _ = ztxt.shape
  sims = zimg @ ztxt.reshape(n * per, -1).T
  order = np.argsort(-sims, axis=1)[:, :k] // per
  i2t = np.mean([(order[i] == i).any() for i in range(n)])
  order = np.argsort(-sims.T, axis=1)[:, :k]
  t2i = np.mean([(order[j] == j // per).any() for j in range(n * per)])
  return i2t, t2i


def test_recall_at_k_matches_brute_force():
  rng = np.random.RandomState(0)
  zimg = rng.normal(size=(50, 8))
  ztxt = zimg[:, None] + rng.normal(size=(50, 3, 8)) * 1.5
  got = retrieval.recall_at_k(zimg, ztxt, (1, 5), chunk=7)
  for k in (1, 5):
    i2t, t2i = brute_force_recall(zimg, ztxt, k)
    assert got[f"i2t/r@{k}"] == pytest.approx(i2t)
    assert got[f"t2i/r@{k}"] == pytest.approx(t2i)
  assert 0.1 < got["i2t/r@1"] < 0.9  # A non-trivial case.


def text_pixel_model():
  """zimg from the image's pixels, ztxt from the tokens: no relation needed,
  the test recomputes both from the data outside the evaluator."""
  table = jax.random.normal(jax.random.PRNGKey(0), (128, 16))
  norm = lambda z: z / jnp.linalg.norm(z, axis=-1, keepdims=True)

  def predict_fn(params, image, text):
    del params
    zimg = None if image is None else norm(
        image.reshape(image.shape[0], -1)[:, :48].reshape(-1, 16, 3).sum(-1)
        + 0.1)
    ztxt = None if text is None else norm(table[text].sum(1))
    return zimg, ztxt, {"t": jnp.float32(5.0), "b": jnp.float32(-2.0)}
  return predict_fn


def test_retrieval_evaluator_equals_recall_on_all_examples(mesh):
  pp = f"decode|value_range(0, 1)|{TOKENIZE}|keep('image', 'labels')"
  predict_fn = text_pixel_model()
  ev = retrieval.Evaluator(predict_fn, mesh=mesh, data=SMALL, pp_fn=pp,
                           batch_size=48, ks=(1, 5))  # 200 = 4 * 48 + 8.
  got = dict(ev.run({"params": {}}))
  batches, _ = input_pipeline.make_for_inference(SMALL, pp, 200,
                                                 process_count=1,
                                                 process_index=0)
  (batch,) = list(batches)
  assert batch["_mask"].all() and len(batch["_mask"]) == 200
  b, per, length = batch["labels"].shape
  embed = jax.jit(predict_fn, static_argnums=(0,))
  zimg = np.asarray(embed(None, batch["image"], None)[0])
  ztxt = np.asarray(embed(None, None, batch["labels"].reshape(
      b * per, length))[1]).reshape(b, per, -1)
  want = retrieval.recall_at_k(zimg, ztxt, (1, 5))
  for k, v in want.items():
    assert got[k] == pytest.approx(v, abs=1e-6), k


@pytest.mark.parametrize("loss_name", ["sigmoid_contrastive",
                                       "softmax_contrastive"])
def test_contrastive_batch_metrics_equal_the_training_losses(loss_name):
  rng = np.random.RandomState(1)
  z = lambda: (lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True))(
      rng.normal(size=(12, 8)).astype(np.float32))
  zimg, ztxt = z(), z()
  t, b = np.float32(7.0), np.float32(-3.0)
  loss_fn = jax.jit(
      losses.sigmoid_contrastive_loss if loss_name == "sigmoid_contrastive"
      else lambda zi, zt, t, b: losses.softmax_contrastive_loss(zi, zt, t))
  full = loss_fn(zimg, ztxt, t, b)
  metrics = jax.jit(contrastive.batch_metrics, static_argnums=(5,))
  m = metrics(zimg, ztxt, t, b, np.ones(12, bool), loss_name)
  np.testing.assert_allclose(m["loss"] / m["n"], full, rtol=1e-5)
  logits = zimg @ ztxt.T
  assert m["i2t"] == np.sum(logits.argmax(1) == np.arange(12))
  assert m["t2i"] == np.sum(logits.argmax(0) == np.arange(12))
  # Padding rows (the last 4) take part in no pair.
  valid = np.arange(12) < 8
  garbage = lambda x: np.where(valid[:, None], x, 100.0)
  m = metrics(garbage(zimg), garbage(ztxt), t, b, valid, loss_name)
  sub = loss_fn(zimg[:8], ztxt[:8], t, b)
  np.testing.assert_allclose(m["loss"] / m["n"], sub, rtol=1e-5)
  assert m["n"] == 8


def test_contrastive_evaluator_runs_on_a_split(mesh):
  pp = (f"decode|value_range(0, 1)|choice(inkey='texts', outkey='texts')"
        f"|{TOKENIZE}|keep('image', 'labels')")
  ev = contrastive.Evaluator(text_pixel_model(), mesh=mesh, data=SMALL,
                             pp_fn=pp, batch_size=200)
  got = dict(ev.run({"params": {}}))
  batches, _ = input_pipeline.make_for_inference(SMALL, pp, 200,
                                                 process_count=1,
                                                 process_index=0)
  (batch,) = list(batches)
  zimg, ztxt, _ = jax.jit(text_pixel_model())(None, batch["image"],
                                               batch["labels"])
  want = jax.jit(losses.sigmoid_contrastive_loss)(zimg, ztxt, 5.0, -2.0)
  np.testing.assert_allclose(got["loss"], want, rtol=1e-4)
  with pytest.raises(ValueError, match="Did you mean 'softmax_contrastive'"):
    contrastive.Evaluator(text_pixel_model(), mesh=mesh, data=SMALL,
                          pp_fn=pp, loss_name="softmax_contrastiv")


def test_zeroshot_evaluators_of_one_round_embed_the_class_names_once(
    mesh, monkeypatch):
  """Two evaluators (SigLIP 2's at several image sequence lengths) on the
  same params embed the same prompts once; new params embed them again."""
  names = shapes_captions.SHAPES
  base = fake_zeroshot_model(names)
  embedded = []
  real_embed_texts = zeroshot.embed_texts
  monkeypatch.setattr(zeroshot, "embed_texts", lambda *a: embedded.append(
      len(a[2])) or real_embed_texts(*a))

  def predict_fn(params, image, text):
    zimg, ztxt, out = base(params, image, text)
    return zimg, ztxt * params["scale"] if ztxt is not None else None, out

  def evaluator():
    return zeroshot.Evaluator(
        predict_fn, mesh=mesh, data=SMALL, pp_img="copy('shape', 'image')",
        pp_txt=TOKENIZE, batch_size=64,
        datasets={"shape": dict(label_key="shape")},
        prompts=("a {}", "a picture of a {}"))

  ev1, ev2 = evaluator(), evaluator()
  params = {"scale": jnp.ones(())}
  first = dict(ev1.run({"params": params}))
  emb = ev1.class_embeddings(params, ev1.tasks[0])
  assert dict(ev2.run({"params": params})) == first == {"shape/top1": 1.0}
  assert ev2.class_embeddings(params, ev2.tasks[0]) is emb
  assert embedded == [len(names) * 2]  # 3 shapes x 2 prompts, once.
  # New params (same values, new arrays): embedded anew, same numbers.
  again = ev2.class_embeddings({"scale": jnp.ones(())}, ev2.tasks[0])
  assert again is not emb and len(embedded) == 2
  np.testing.assert_array_equal(again, emb)
  # The cache keeps no params alive...
  held = weakref.ref(params["scale"])
  del params
  gc.collect()
  assert held() is None
  # ...and does not cache host (numpy) params, which could change in place.
  host = {"scale": np.ones((), np.float32)}
  assert ev1.class_embeddings(host, ev1.tasks[0]) is not (
      ev1.class_embeddings(host, ev1.tasks[0]))
  # Other prompts are other texts: their own entry.
  other = zeroshot.Evaluator(
      predict_fn, mesh=mesh, data=SMALL, pp_img="copy('shape', 'image')",
      pp_txt=TOKENIZE, batch_size=64, datasets={"shape": dict(
          label_key="shape")}, prompts=("a {}",))
  assert other.tasks[0].tokens_key != ev1.tasks[0].tokens_key


def test_zeroshot_evaluators_tokenize_the_same_prompts_once(mesh, monkeypatch):
  """Evaluators with the same class names, prompts and pp_txt (SigLIP 2's
  one per sequence length) share one tokenization, equal to encoding each
  prompt with the tokenizer directly; other prompts are tokenized anew."""
  names = shapes_captions.SHAPES
  prompts = ("a {} shape", "one {}")
  built = []
  real_get = builder.get_preprocess_fn
  monkeypatch.setattr(builder, "get_preprocess_fn",
                      lambda pp, *a, **k: built.append(pp) or real_get(
                          pp, *a, **k))
  zeroshot._tokenize_once.cache_clear()  # pylint: disable=protected-access

  def evaluator(p=prompts):
    return zeroshot.Evaluator(
        fake_zeroshot_model(names), mesh=mesh, data=SMALL,
        pp_img="copy('shape', 'image')", pp_txt=TOKENIZE, batch_size=64,
        datasets={"shape": dict(label_key="shape")}, prompts=p)

  ev1, ev2 = evaluator(), evaluator()
  tokens = ev1.tasks[0].tokens
  assert ev2.tasks[0].tokens is tokens and built.count(TOKENIZE) == 1
  assert not tokens.flags.writeable  # Shared: nobody may change it.
  sp = ops_text.get_tokenizer("shapes_captions")
  texts = [p.format(n) for n in names for p in prompts]
  for row, text in zip(tokens, texts):
    ids = sp.EncodeAsIds(text)
    np.testing.assert_array_equal(row[:len(ids)], ids)
    assert not row[len(ids):].any()  # Zero padding to the length (12).
  assert tokens.shape == (len(texts), 12)
  evaluator(prompts[:1])
  assert built.count(TOKENIZE) == 2


def test_zeroshot_tokenizes_per_string_pp_in_vector_calls_as_text_by_text(
    monkeypatch):
  """A pp_txt made only of per-string ops (strip_punctuation, lower,
  tokenize) runs on vectors of texts (here 4 per call, so several calls);
  another pp_txt (a strfmt that rewrites the same texts) runs through
  tf.data, text by text. Both arrays equal the pp run eagerly on each text
  alone, including an empty text and one longer than the 12 tokens."""
  from big_vision.datasets import core  # pylint: disable=g-import-not-at-top
  from big_vision.datasets.tf_import import tf  # pylint: disable=g-import-not-at-top
  texts = tuple(f"A {n.upper()}, shape!" for n in shapes_captions.SHAPES) + (
      "", "circle " * 20, "Red square.", "(blue) triangle")
  per_string = "strip_punctuation|lower|" + TOKENIZE
  other = "strfmt('{texts}', outkey='texts')|" + per_string
  assert builder.op_names(other) == ["strfmt", "strip_punctuation", "lower",
                                     "tokenize"]
  mapped = []
  real_map = core.map_traced_plainly
  monkeypatch.setattr(core, "map_traced_plainly",
                      lambda ds, fn: mapped.append(1) or real_map(ds, fn))
  monkeypatch.setattr(zeroshot, "_TEXTS_PER_CALL", 4)
  zeroshot._tokenize_once.cache_clear()  # pylint: disable=protected-access
  fast = zeroshot.tokenize_texts(texts, per_string)
  assert not mapped  # Vector calls: no tf.data.
  slow = zeroshot.tokenize_texts(texts, other)
  assert mapped == [1]
  pp = builder.get_preprocess_fn(per_string)
  expected = np.stack([pp({"texts": tf.constant(t)})["labels"].numpy()
                       for t in texts])
  assert expected.shape == (len(texts), 12) and expected.dtype == np.int32
  assert expected[-3].all() and not expected[-4].any()  # Long; empty.
  for got in (fast, slow):
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected)
