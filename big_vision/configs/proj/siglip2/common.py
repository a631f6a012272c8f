"""Config blocks of the SigLIP 2 configs (plain data).

NaFlex image pp (`naflex(seq_len, patch)`: native aspect ratio, padded to
`seq_len` patches) and the evaluators of a NaFlex two-tower model with a
captioning decoder, one zero-shot / retrieval block per sequence length.
"""
import ml_collections


def pp_naflex(seq_len: int, patch: int) -> str:
  return f"decode|value_range(-1, 1)|naflex({seq_len}, {patch})"


def tokenize(max_len: int, model: str, inkey: str) -> str:
  return (f"tokenize({max_len}, model={model!r}, eos='sticky', pad_value=1, "
          f"inkey={inkey!r}, outkey='labels')")


def naflex_evals(*, data, seq_lens, patch, tok_model, max_len, log_steps,
                 batch_size, zeroshot=None, caption_seq_len=None):
  """zeroshot_<L> / retrieval_<L> per sequence length L, and a captioning
  eval (held-out token accuracy, perplexity, unigram baseline) at
  `caption_seq_len` (default: the first of seq_lens).

  zeroshot: {task: dict(label_key=..., prompts=...)} (class names from the
  dataset's ClassLabels); None: no zero-shot block.
  """
  evals = {}
  common = dict(log_steps=log_steps, batch_size=batch_size,
                data=dict(data), skip_first=True)
  for seq in seq_lens:
    img = pp_naflex(seq, patch)
    if zeroshot:
      evals[f"zeroshot_{seq}"] = dict(
          type="zeroshot", pp_img=img,
          pp_txt=tokenize(max_len, tok_model, "texts"), datasets=zeroshot,
          **common)
    evals[f"retrieval_{seq}"] = dict(
        type="retrieval",
        pp_fn=f"{img}|{tokenize(max_len, tok_model, 'texts')}"
              "|keep('image', 'labels')", **common)
  seq = caption_seq_len or seq_lens[0]
  evals["captioning"] = dict(
      type="captioning",
      pp_fn=(f"{pp_naflex(seq, patch)}|choice(inkey='texts', outkey='text')|"
             f"{tokenize(max_len, tok_model, 'text')}|keep('image', 'labels')"),
      **common)
  return ml_collections.ConfigDict(evals)
