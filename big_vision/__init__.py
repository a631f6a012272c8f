"""big_vision: large-scale vision pretraining in JAX/Flax.

See README.md for the quickstart and ../DESIGN.md-style layering notes in the
module docstrings: tensorflow is only imported by the data side
(`big_vision.pp`, `big_vision.datasets`, `big_vision.input_pipeline`).
"""

__version__ = "0.1.0"
