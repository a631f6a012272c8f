"""Name -> data source: source kinds, then embedded datasets, then TFDS.

Sits above `core` (the registries) and `tfds_source` (the TFDS reader, which
registers itself in core), so that neither imports the other's importer.
"""
from big_vision.datasets import core
from big_vision.datasets import tfds_source


def prepare_embedded(name: str, data_dir: str | None = None):
  """Prepares embedded dataset `name` (once) and returns its TFDS builder."""
  builder_cls = core.embedded_builder(name)
  if builder_cls is None:
    raise ValueError(f"Unknown embedded dataset {name!r}; embedded: "
                     f"{', '.join(core.embedded_names())}.")
  return tfds_source.prepare_builder(
      builder_cls, data_dir or core.default_embedded_data_dir())


def get(name: str, split: str, data_dir: str | None = None,
        **kw) -> core.DataSource:
  """The data source for `split` of dataset `name`.

  Dispatch: a registered source kind (`imagefolder`, `jsonl`, ... with
  their own keyword args), an embedded dataset (`digits`, ...), else a TFDS
  dataset ('name' or 'name:version') in `data_dir` (or $TFDS_DATA_DIR).
  """
  factory = core.source_factory(name)
  if factory is not None:
    return factory(split=split, data_dir=data_dir, **kw)
  if core.embedded_builder(name) is not None:
    if kw:
      raise ValueError(f"Embedded dataset {name!r} takes no keyword "
                       f"arguments, got {sorted(kw)}.")
    return tfds_source.TfdsSource(prepare_embedded(name, data_dir), split)
  return tfds_source.TfdsSource.from_name(
      name, split, data_dir=data_dir, other_names=core.embedded_names() +
      core.source_names(), **kw)
