"""TensorFlow for the data side, without the Keras import it does not need.

  from big_vision.datasets.tf_import import tf

Why: `import tensorflow` (2.16 and later) ends with an eager
`import keras.src.optimizers`, so that Keras optimizers register themselves
with SavedModel. That imports Keras 3, which imports scikit-learn and
scipy: 1-3 s of every launch on a 2-core machine (more than half of the
`import tensorflow`), for code the data side never runs (it uses tf.data,
tf.image and tf.io). TensorFlow wraps that import in `except ImportError:
pass`, so this module makes just that one import fail while TensorFlow
initialises, and undoes it afterwards: `tf.keras`, `import keras` and
SavedModel still work for code that wants them, loaded when first used.

Every data-side module that imports tensorflow (or tensorflow_datasets,
which imports it) imports this module first, so whichever of them a process
loads first gets the light import; tests/test_layering.py checks both the
order and the effect. Importing tensorflow anywhere earlier is harmless,
only slower.
"""
import sys

# The module TensorFlow's __init__ imports eagerly (tensorflow/__init__.py,
# "Do an eager load for Keras' code").
EAGER_KERAS_MODULE = "keras.src.optimizers"


def _import_tensorflow():
  # A None entry in sys.modules makes `import name` raise ImportError at
  # once, without importing its parent packages (Python's import system).
  # Harmless when tensorflow is already imported: its __init__ does not rerun.
  planted = EAGER_KERAS_MODULE not in sys.modules
  if planted:
    sys.modules[EAGER_KERAS_MODULE] = None
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top
  finally:
    if planted and sys.modules.get(EAGER_KERAS_MODULE, "") is None:
      del sys.modules[EAGER_KERAS_MODULE]
  return tensorflow


tf = _import_tensorflow()
