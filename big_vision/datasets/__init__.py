"""Data sources: where examples come from, and each process's part of them.

  source = big_vision.datasets.get("digits", "train[:90%]")
  source = big_vision.datasets.get("imagenet2012", "validation", data_dir=d)
  source = big_vision.datasets.get("imagefolder", "train", path="/data/pets")
  source = big_vision.datasets.get("jsonl", "test", path="/d/{split}.jsonl")
  ds = source.get_tfdata(ordered=True)  # this process's part, images encoded

Names resolve in this order: source kinds (`imagefolder`, `jsonl`), embedded
datasets (`digits`; each one line: `core.register_embedded(name, Builder)`),
then TFDS ("name" or "name:version") in `data_dir` or $TFDS_DATA_DIR.
This package (with pp/ and input_pipeline.py) is where tensorflow lives.

The package imports lazily: `import big_vision.datasets.synthetic` (on-device
random batches for benchmarks) must work on machines without tensorflow, and
importing a submodule runs this file first. So `core` and the modules that
register sources are imported on the first access to one of the names below
(`datasets.get`, ...), never at import time. A new registering module adds its
name to `_REGISTERING_MODULES`.
"""
import importlib

# Re-exported from `core` on first use.
_CORE_NAMES = ("ColumnsSource", "DataSource", "default_embedded_data_dir",
               "embedded_names", "get", "prepare_embedded",
               "register_embedded", "register_source", "source_names")
# Imported (once, on first use of a core name) for their registrations.
_REGISTERING_MODULES = ("digits", "imagefolder", "jsonl", "shapes_captions",
                        "tfds_source")

__all__ = list(_CORE_NAMES)


# Names that live in `lookup` (above core and tfds_source), not in core.
_LOOKUP_NAMES = ("get", "prepare_embedded")


def _load():
  core = importlib.import_module(f"{__name__}.core")
  lookup = importlib.import_module(f"{__name__}.lookup")
  for name in _REGISTERING_MODULES:
    importlib.import_module(f"{__name__}.{name}")
  for name in _CORE_NAMES:
    globals()[name] = getattr(lookup if name in _LOOKUP_NAMES else core, name)


def __getattr__(name):
  if name in _CORE_NAMES:
    _load()
    return globals()[name]
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_CORE_NAMES))
