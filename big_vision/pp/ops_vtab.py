"""Labels of the 19 VTAB-1k tasks from their TFDS features.

VTAB (Zhai et al. 2019, https://arxiv.org/abs/1910.04867) defines several
tasks on TFDS datasets whose label is not the dataset's `label` feature
(CLEVR object counts, KITTI distances, binned dSprites positions...).
`vtab_label(task)` writes the task's integer label to `data["label"]`, with
the definitions of the benchmark's reference code (google-research/
task_adaptation):

  clevr_count     number of objects - 3 (3..10 objects -> 0..7)
  clevr_distance  min depth (pixel_coords[:, 2]) of the objects, bucketed
                  by the thresholds 8, 8.5, 9, 9.5, 10 -> 0..5
  kitti_distance  min depth (location[:, 2]) of the vehicles (type < 3:
                  car, van, truck), bucketed by 8 and 20 m; no vehicle -> 3
  dsprites_loc    label_x_position (32 values) // 2 -> 16 classes
  dsprites_ori    floor(label_orientation (40 values) / 2.5) -> 16 classes
  smallnorb_azi   label_azimuth (18 classes)
  smallnorb_ele   label_elevation (9 classes)
  every other task: the dataset's own `label`, unchanged.
"""
from big_vision.datasets.tf_import import tf

from big_vision.pp.registry import Registry


def _bucket(value, thresholds):
  """Index of the last threshold strictly below `value` (thresholds sorted,
  the first one below every value): the task_adaptation bucketing."""
  thr = tf.constant(thresholds, tf.float32)
  return tf.reduce_sum(tf.cast(thr < tf.cast(value, tf.float32),
                               tf.int64)) - 1


def _clevr_count(data):
  return tf.cast(tf.size(data["objects"]["size"]), tf.int64) - 3


def _clevr_distance(data):
  depth = tf.reduce_min(data["objects"]["pixel_coords"][:, 2])
  return _bucket(depth, [0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0])


def _kitti_distance(data):
  objects = data["objects"]
  is_vehicle = objects["type"] < 3  # Car, Van, Truck.
  depth = tf.boolean_mask(tf.cast(objects["location"][:, 2], tf.float32),
                          is_vehicle)
  depth = tf.reduce_min(tf.concat([depth, [1000.0]], axis=0))
  return _bucket(depth, [-100.0, 8.0, 20.0, 999.0])


def _binned(key, num_values, num_classes):
  factor = num_values / num_classes
  def fn(data):
    return tf.cast(tf.math.floordiv(tf.cast(data[key], tf.float32), factor),
                   tf.int64)
  return fn


def _feature(key):
  return lambda data: tf.cast(data[key], tf.int64)


LABEL_FNS = {
    "clevr_count": _clevr_count,
    "clevr_distance": _clevr_distance,
    "kitti_distance": _kitti_distance,
    "dsprites_loc": _binned("label_x_position", 32, 16),
    "dsprites_ori": _binned("label_orientation", 40, 16),
    "smallnorb_azi": _feature("label_azimuth"),
    "smallnorb_ele": _feature("label_elevation"),
}
PLAIN_LABEL_TASKS = (
    "caltech101", "cifar100", "dtd", "flowers102", "pets", "sun397", "svhn",
    "camelyon", "eurosat", "resisc45", "retinopathy", "dmlab")


@Registry.register("preprocess_ops.vtab_label")
def get_vtab_label(task: str):
  """Sets data["label"] (int64) to the VTAB task's label."""
  if task in PLAIN_LABEL_TASKS:
    return lambda data: data
  if task not in LABEL_FNS:
    valid = sorted(set(LABEL_FNS) | set(PLAIN_LABEL_TASKS))
    raise ValueError(f"vtab_label: unknown task {task!r}. Valid tasks: "
                     f"{', '.join(valid)}.")
  fn = LABEL_FNS[task]

  def _vtab_label(data):
    data["label"] = fn(data)
    return data
  return _vtab_label
