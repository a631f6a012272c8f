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
"""
from big_vision.datasets.core import ColumnsSource
from big_vision.datasets.core import DataSource
from big_vision.datasets.core import default_embedded_data_dir
from big_vision.datasets.core import embedded_names
from big_vision.datasets.core import get
from big_vision.datasets.core import prepare_embedded
from big_vision.datasets.core import register_embedded
from big_vision.datasets.core import register_source
from big_vision.datasets.core import source_names
# Imported for their registrations.
# pylint: disable=g-bad-import-order
from big_vision.datasets import digits as _digits
from big_vision.datasets import imagefolder as _imagefolder
from big_vision.datasets import jsonl as _jsonl
from big_vision.datasets import tfds_source as _tfds_source
