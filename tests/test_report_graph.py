"""tinykd.report.graph: MACs against MLPerf Tiny's published counts, operators against the TFLM reader."""

import pytest

from tinykd import model_file
from tinykd.errors import ModelError
from tinykd.report import graph

PUBLISHED_MACS = {"kws_ref_model.tflite": 2_656_768, "vww_96_int8.tflite": 7_489_664,
                  "pretrainedResnet_quant.tflite": 12_501_632, "ad01_int8.tflite": 264_192,
                  "str_ww_ref_model.tflite": 826_368, "pretrainedResnet.tflite": 12_501_632}


@pytest.mark.parametrize("file_name, macs", PUBLISHED_MACS.items())
def test_macs_equal_the_published_counts(shared_models, file_name, macs):
    assert graph.read((shared_models / file_name).read_bytes()).macs == macs


@pytest.mark.parametrize("file_name", ["kws_ref_model.tflite", "vww_96_int8.tflite", "ad01_int8.tflite"])
def test_layers_are_the_operators_in_order_with_versions(shared_models, file_name):
    tflite = (shared_models / file_name).read_bytes()
    layers = graph.read(tflite).layers
    operators = model_file.read(tflite).operators
    assert [(layer.op, layer.version) for layer in layers] == [(op.name, op.version) for op in operators]
    assert [layer.index for layer in layers] == list(range(len(layers)))


def test_kws_first_conv_shape_and_macs(shared_models):
    first = graph.read((shared_models / "kws_ref_model.tflite").read_bytes()).layers[0]
    assert (first.op, first.output_shape, first.window_elements) == ("CONV_2D", (1, 25, 5, 64), 40)
    assert first.macs == 25 * 5 * 64 * 10 * 4 * 1


@pytest.mark.parametrize("file_name, precision", [("kws_ref_model.tflite", "int8"),
                                                  ("pretrainedResnet.tflite", "float32"),
                                                  ("kws_ref_model_float32.tflite", "hybrid")])
def test_precision(shared_models, file_name, precision):
    model = graph.read((shared_models / file_name).read_bytes())
    assert model.precision == precision
    assert bool(graph.hybrid_layers(model)) == (precision == "hybrid")


def test_operator_pointing_past_the_tensor_table_is_refused(shared_models):
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema_fb
    import flatbuffers

    tflite = (shared_models / "ad01_int8.tflite").read_bytes()
    model = schema_fb.ModelT.InitFromObj(schema_fb.Model.GetRootAsModel(bytearray(tflite), 0))
    model.subgraphs[0].operators[0].inputs[0] = 999
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    with pytest.raises(ModelError, match="operator 0: inputs: tensor index 999"):
        graph.read(bytes(builder.Output()))
