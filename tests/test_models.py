"""The zoo: shapes adapt to the data, MACs follow the MLPerf Tiny convention, every variant quantizes to int8."""

import numpy as np
import pytest

from tinykd import model_file, models
from tinykd.config import ModelConfig
from tinykd.convert import convert
from tinykd.keras_shim import tfmot


def test_macs_by_hand_for_a_2d_cnn():
    model = models.build(ModelConfig(filters=(8, 16), head="pool_flatten"), (28, 28, 1), 10, "m")
    conv1 = 28 * 28 * 8 * 3 * 3 * 1
    conv2 = 14 * 14 * 16 * 3 * 3 * 8
    dense = (7 * 7 * 16) * 10
    assert models.count_macs(model) == conv1 + conv2 + dense


def test_macs_by_hand_for_depthwise_separable():
    model = models.build(ModelConfig(arch="ds_cnn", filters=(8, 16), head="gap"), (16, 16, 3), 4, "m")
    first = 16 * 16 * 8 * 9 * 3
    depthwise = 8 * 8 * 8 * 9
    pointwise = 8 * 8 * 16 * 8
    assert models.count_macs(model) == first + depthwise + pointwise + 16 * 4


@pytest.mark.parametrize("arch", models.ARCHITECTURES)
@pytest.mark.parametrize("shape", [(12,), (40, 3), (20, 20, 1), (16, 16, 3)])
def test_every_architecture_quantizes_to_full_int8_for_every_rank(arch, shape):
    model = models.build(ModelConfig(arch=arch, filters=(4, 8), head="pool_flatten"), shape, 5, "m")
    assert model.output_shape == (None, 5)
    qat = tfmot.quantization.keras.quantize_model(model)
    samples = np.random.default_rng(0).normal(size=(8, *shape)).astype(np.float32)
    info = model_file.read(convert(qat, samples))
    assert info.inputs[0].dtype == info.outputs[0].dtype == "int8"
    assert info.inputs[0].shape == (1, *shape) and info.outputs[0].shape == (1, 5)


def test_named_layers_exist_for_hints():
    model = models.build(ModelConfig(filters=(8, 16), convs_per_block=2), (28, 28, 1), 10, "m")
    names = {layer.name for layer in model.layers}
    assert {"block1_conv2_relu", "block2_conv1_relu", "features", "logits"} <= names


def test_hello_edge_ds_cnn_shape_width_and_macs_by_hand():
    # Hello Edge DS-CNN: one strided 10x4 convolution, then depthwise-separable blocks without pooling.
    cfg = ModelConfig(arch="ds_cnn", filters=(64, 64, 64), width_multiplier=0.5, first_kernel=(10, 4),
                      first_strides=(2, 2), pool_between_blocks=False, head="avgpool")
    model = models.build(cfg, (49, 40, 1), 12, "kws")
    assert models.widths(cfg) == (32, 32, 32)
    first = 25 * 20 * 32 * 10 * 4 * 1
    separable = 25 * 20 * 32 * 9 + 25 * 20 * 32 * 32
    assert models.count_macs(model) == first + 2 * separable + 32 * 12
    assert model.get_layer("block1_conv1").output_shape == (None, 25, 20, 32)


def test_avgpool_head_converts_to_average_pool_not_mean():
    from tflite_micro.python.tflite_micro import runtime

    from tinykd.keras_shim import lite_interpreter

    model = models.build(ModelConfig(arch="ds_cnn", filters=(8, 8), pool_between_blocks=False, head="avgpool"),
                         (12, 10, 1), 4, "m")
    qat = tfmot.quantization.keras.quantize_model(model)
    samples = np.random.default_rng(0).normal(size=(64, 12, 10, 1)).astype(np.float32)
    tflite = convert(qat, samples)
    ops = model_file.read(tflite).op_names
    assert "AVERAGE_POOL_2D" in ops and "MEAN" not in ops
    micro = runtime.Interpreter.from_bytes(tflite, arena_size=64 * 1024)
    reference = lite_interpreter(tflite, reference_kernels=True)
    reference.allocate_tensors()
    scale, zero_point = micro.get_input_details(0)["quantization_parameters"]["scales"][0], \
        micro.get_input_details(0)["quantization_parameters"]["zero_points"][0]
    for sample in samples[:16]:
        q = np.clip(np.round(sample / scale) + zero_point, -128, 127).astype(np.int8)[np.newaxis]
        micro.set_input(q, 0)
        micro.invoke()
        reference.set_tensor(reference.get_input_details()[0]["index"], q)
        reference.invoke()
        np.testing.assert_array_equal(micro.get_output(0), reference.get_tensor(reference.get_output_details()[0]["index"]))
