"""The one place that imports Keras: Keras 2 (tf-keras), because TFMOT 0.8.1 does not work with Keras 3.

Everything else in tinykd does `from tinykd.keras_shim import keras, tf, tfmot`.
"""

import os
import warnings

# Must be set before TensorFlow is imported anywhere, or `tf.keras` resolves to Keras 3.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402

# Known, understood upstream chatter that would bury tinykd's own progress lines.
tf.get_logger().setLevel("ERROR")
for _message in ("You are saving your model as an HDF5 file",  # chosen on purpose for QAT models, see pipeline
                 r"\s*Warning: tf.lite.Interpreter is deprecated",  # still the only TFLite API with reference kernels
                 "Statistics for quantized inputs were expected"):  # the int8 input's range comes from QAT
    warnings.filterwarnings("ignore", message=_message)

__all__ = ["keras", "tf", "tfmot"]
