"""tinykd.model_file reads .tflite flatbuffers without TensorFlow; checked against the TFLM interpreter."""

import dataclasses

import numpy as np
import pytest
from tflite_micro.python.tflite_micro import runtime

from tinykd import model_file
from tinykd.errors import ModelError

KWS_OPERATORS = (
    ["CONV_2D"] + ["DEPTHWISE_CONV_2D", "CONV_2D"] * 4 + ["AVERAGE_POOL_2D", "RESHAPE", "FULLY_CONNECTED", "SOFTMAX"]
)


def _assert_matches_tflm(tensor: model_file.TensorInfo, details: dict) -> None:
    assert tensor.shape == tuple(int(dim) for dim in details["shape"])
    assert tensor.dtype == np.dtype(details["dtype"]).name
    quantization = details["quantization_parameters"]
    assert tensor.scale == float(quantization["scales"][0])
    assert tensor.zero_point == int(quantization["zero_points"][0])


@pytest.mark.parametrize("file_name", ["kws_ref_model.tflite", "vww_96_int8.tflite", "pretrainedResnet_quant.tflite"])
def test_inputs_and_outputs_match_tflm_interpreter(shared_models, file_name):
    tflite = (shared_models / file_name).read_bytes()
    interpreter = runtime.Interpreter.from_bytes(tflite, arena_size=400_000)

    info = model_file.read(tflite, source=file_name)

    assert len(info.inputs) == 1 and len(info.outputs) == 1
    _assert_matches_tflm(info.inputs[0], interpreter.get_input_details(0))
    _assert_matches_tflm(info.outputs[0], interpreter.get_output_details(0))


def test_kws_shapes_ops_and_order(shared_models):
    info = model_file.read((shared_models / "kws_ref_model.tflite").read_bytes())

    assert info.inputs[0].shape == (1, 49, 10, 1)
    assert info.inputs[0].dtype == "int8"
    assert info.outputs[0].shape == (1, 12)
    assert [operator.name for operator in info.operators] == KWS_OPERATORS
    assert all(operator.version >= 1 for operator in info.operators)
    assert info.op_names == (
        "AVERAGE_POOL_2D", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "RESHAPE", "SOFTMAX",
    )


def test_float_model_reports_float32_and_no_quantization(shared_models):
    info = model_file.read((shared_models / "pretrainedResnet.tflite").read_bytes())

    assert info.inputs[0].dtype == "float32"
    assert info.inputs[0].scale is None and info.inputs[0].zero_point is None
    assert "ADD" in info.op_names


def test_model_info_is_frozen(shared_models):
    info = model_file.read((shared_models / "kws_ref_model.tflite").read_bytes())

    with pytest.raises(dataclasses.FrozenInstanceError):
        info.inputs = ()  # type: ignore[misc]


@pytest.mark.parametrize("length", [0, 3, 8, 100, 26_968, 53_900])
def test_truncated_bytes_raise_model_error_naming_source(shared_models, length):
    tflite = (shared_models / "kws_ref_model.tflite").read_bytes()

    with pytest.raises(ModelError, match="models/kws.tflite"):
        model_file.read(tflite[:length], source="models/kws.tflite")


def test_wrong_identifier_raises_model_error():
    with pytest.raises(ModelError, match="file identifier"):
        model_file.read(b"\x00" * 64, source="zeros.bin")


def test_garbage_after_valid_identifier_raises_model_error():
    garbage = b"\xff\xff\xff\x7fTFL3" + bytes(range(256)) * 4

    with pytest.raises(ModelError, match="garbage.tflite: corrupt or truncated"):
        model_file.read(garbage, source="garbage.tflite")
