"""The one place that imports Keras: Keras 2 (tf-keras), because TFMOT 0.8.1 does not work with Keras 3.

Everything else in tinykd does `from tinykd.keras_shim import keras, tf, tfmot`. It is also the one place that
quiets TensorFlow's own chatter, so a build shows tinykd's lines and real warnings only (`tinykd build --verbose`
sets TINYKD_VERBOSE=1 and shows everything).
"""

import contextlib
import os
import re
import sys
import threading
import warnings

# Must be set before TensorFlow is imported anywhere, or `tf.keras` resolves to Keras 3.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
VERBOSE = os.environ.get("TINYKD_VERBOSE") == "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if VERBOSE else "2")

# C++ lines that TF_CPP_MIN_LOG_LEVEL cannot silence: absl logs everything before its InitializeLog() call (the
# oneDNN and "no CUDA drivers" notes, twice, one per shared library; cuInit's error on a machine without a GPU);
# the converter's calibrator prints its settings ("fully_quantize: 0" reads like "not fully quantized", but only
# means the int8 input and output types are set by a later pass); with op determinism, every fit logs an error
# about an attribute the Python side of tf.data knows and its C++ side does not (harmless version skew).
_NOISE = re.compile(rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
                    rb"|[IWE]\d{4} [\d:.]+ +\d+ (port|cudart_stub|cuda_platform|cuda_executor|cpu_feature_guard)"
                    rb"\.cc:\d+\] "
                    rb"|E\d{4} [\d:.]+ +\d+ node_def_util\.cc:\d+\] NodeDef mentions attribute "
                    rb"use_unbounded_threadpool which is not in the op definition: Op<name=MapDataset;"
                    rb"|fully_quantize: \d+, inference_type: \d+, input_inference_type: ")


@contextlib.contextmanager
def native_logs():
    """Run the block with file descriptor 2 (where C++ logs) going through a filter that passes on, as they
    come, every line that is not known noise; Python's own warnings and errors are kept. Wrap only blocks that
    start no child process (a child would inherit the filter's pipe)."""
    if VERBOSE:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    reader, writer = os.pipe()
    os.dup2(writer, 2)
    os.close(writer)

    def pass_on() -> None:
        with os.fdopen(reader, "rb") as lines:
            for line in lines:
                if not _NOISE.match(line):
                    os.write(saved, line)

    pump = threading.Thread(target=pass_on, name="tinykd-native-logs", daemon=True)
    pump.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last writer: the pump reads to the end and stops
        pump.join(timeout=10)
        os.close(saved)


with native_logs():
    import tensorflow as tf
    import tf_keras as keras
    import tensorflow_model_optimization as tfmot

    tf.config.list_physical_devices("GPU")  # cuInit runs (and fails without a GPU) here, inside the filter

# Same recipe, seed, machine and versions => the same bytes. Op determinism makes TensorFlow pick kernels that add
# in a fixed order; it refuses random ops without a seed, so a process-wide default seed is set here, and each
# build stage seeds itself again (a resumed build skips stages, so it cannot inherit earlier stages' random
# state). Seeding alone made two smoke builds identical on 2 cores; determinism guards the kernels that reduce
# across threads on bigger machines. Cost on the smoke build, 2 shared cores, with/without: 26.0 s / 24.2-31.9 s
# on a quiet machine, 72-76 s / 67-78 s on a loaded one: none measurable.
tf.config.experimental.enable_op_determinism()
keras.utils.set_random_seed(0)

# Known, understood upstream chatter that would bury tinykd's own progress lines. Python warnings that are
# understood are silenced where their API is called (tinykd.convert, tinykd.artifacts, lite_interpreter below),
# as pytest resets module-level filters for each test.
tf.get_logger().setLevel("ERROR")


def lite_interpreter(tflite: bytes, reference_kernels: bool = False):
    """TFLite's interpreter for `tflite` (with its reference kernels if asked), without its deprecation warning:
    LiteRT's replacement is not installed, and tf.lite.Interpreter is still the only TFLite API with reference
    kernels. The filter is set here, where it is called, because pytest resets module-level filters per test."""
    resolver = tf.lite.experimental.OpResolverType.BUILTIN_REF if reference_kernels else \
        tf.lite.experimental.OpResolverType.AUTO
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter is deprecated")
        return tf.lite.Interpreter(model_content=tflite, experimental_op_resolver_type=resolver)


__all__ = ["keras", "lite_interpreter", "native_logs", "tf", "tfmot"]
