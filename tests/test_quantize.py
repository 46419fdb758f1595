"""Quantization-aware training with the real TFMOT, converted by the real TFLite converter."""

from tinykd import model_file, models
from tinykd.config import DistillConfig, ModelConfig, QuantizeConfig
from tinykd.convert import convert
from tinykd.distill import Schedule, Teaching
from tinykd.keras_shim import keras
from tinykd.qat import quantize_scheme
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
