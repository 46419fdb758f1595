"""Quantization-aware training with the real TFMOT, converted by the real TFLite converter."""

import numpy as np

from tinykd import model_file, models
from tinykd.config import DistillConfig, ModelConfig, QuantizeConfig
from tinykd.convert import convert
from tinykd.distill import Schedule, Teaching
from tinykd.keras_shim import keras
from tinykd.qat import calibrate_ranges, quantization_aware, quantize_scheme
from tinykd.quantize import quantize


def test_average_pooling_converts_at_its_input_scale_with_no_requantize(tiny_teacher, smoke_data):
    # TFMOT's own scheme learns a separate output range for average pooling, and the converter then appends a
    # QUANTIZE op the firmware has to link and run; post-training quantization never does.
    student_cfg = ModelConfig(filters=(8, 16), head="avgpool")
    keras.utils.set_random_seed(3)
    student = models.build(student_cfg, smoke_data.input_shape, smoke_data.num_classes, "student")
    qat = quantize(student, Teaching(teacher=tiny_teacher, config=DistillConfig(student=student_cfg)), smoke_data,
                   Schedule.of(QuantizeConfig(epochs=1, batch_size=64), seed=0),
                   scheme=quantize_scheme(clustered=False, preserve_sparsity=False))
    info = model_file.read(convert(qat, smoke_data.train.x[:32]), "avgpool")
    assert "QUANTIZE" not in info.op_names
    assert "DEQUANTIZE" not in info.op_names


def test_calibration_starts_activation_ranges_at_the_float_models():
    # TFMOT starts them at [-6, 6]; these logits reach past ±12 and would clip there until the moving average
    # caught up.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
    logits = keras.layers.Dense(3, name="logits")(hidden)
    student = keras.Model(inputs, logits)
    x = np.random.default_rng(0).normal(scale=10.0, size=(300, 4)).astype(np.float32)
    qat = quantization_aware(student)
    calibrate_ranges(qat, x, batch_size=128)

    float_logits = student.predict(x, verbose=0)
    ranges = {w.name.split(":")[0]: float(w.numpy()) for w in qat.get_layer("quant_logits").weights
              if w.name.split(":")[0].endswith(("post_activation_min", "post_activation_max"))}
    assert max(abs(float_logits.min()), float_logits.max()) > 12
    np.testing.assert_allclose([ranges["quant_logits/post_activation_min"],
                                ranges["quant_logits/post_activation_max"]],
                               [min(float_logits.min(), 0), max(float_logits.max(), 0)], rtol=1e-4)
    # Training goes on through the real quantizers, not the recording ones.
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops
    assert quant_ops.MovingAvgQuantize.__module__ == quant_ops.__name__
