"""Prune, QAT, convert and verify with the real TFMOT, TFLite converter and TFLite Micro interpreter."""

import numpy as np
import pytest

from tinykd import artifacts, model_file, models
from tinykd.config import DistillConfig, ModelConfig, PruneConfig, QuantizeConfig
from tinykd.distill import Schedule, Teaching
from tinykd.convert import check_full_int8, convert, convert_float, short_tensor_names
from tinykd.errors import ConversionError, VerificationError
from tinykd.keras_shim import keras
from tinykd.prune import prune, sparsity
from tinykd.qat import quantize_scheme
from tinykd.quantize import load_model, quantize
from tinykd.verify import measure_arena, verify

STUDENT = ModelConfig(filters=(8, 16), head="pool_flatten")
DISTILL = DistillConfig(student=STUDENT)


@pytest.fixture(scope="module")
def student(smoke_data):
    keras.utils.set_random_seed(2)
    return models.build(STUDENT, smoke_data.input_shape, smoke_data.num_classes, "student")


@pytest.fixture(scope="module")
def pruned(student, tiny_teacher, smoke_data):
    cfg = PruneConfig(target_sparsity=0.6, epochs=2, batch_size=64, frequency_steps=2)
    return prune(student, Teaching(teacher=tiny_teacher, config=DISTILL), smoke_data, cfg, Schedule.of(cfg, seed=0))


@pytest.fixture(scope="module")
def qat(pruned, tiny_teacher, smoke_data):
    return quantize(pruned, Teaching(teacher=tiny_teacher, config=DISTILL), smoke_data,
                    Schedule.of(QuantizeConfig(epochs=1, batch_size=64), seed=0),
                    scheme=quantize_scheme(clustered=False, preserve_sparsity=True))


@pytest.fixture(scope="module")
def tflite(qat, smoke_data):
    return convert(qat, smoke_data.train.x[:32])


def test_prune_reaches_target_and_leaves_input_alone(student, pruned):
    assert sparsity(student) == 0.0
    assert sparsity(pruned) == pytest.approx(0.6, abs=0.02)
    assert not any(type(layer).__name__ == "PruneLowMagnitude" for layer in pruned.layers)  # stripped


def test_qat_keeps_the_zeros(pruned, qat):
    kernels = [w.numpy() for layer in qat.layers for w in layer.weights if w.name.endswith("kernel:0")]
    assert kernels, "the QAT model should hold its float kernels"
    zeros = sum(int(np.count_nonzero(k == 0)) for k in kernels) / sum(k.size for k in kernels)
    assert zeros == pytest.approx(sparsity(pruned), abs=0.02)


def test_qat_model_survives_save_and_load(qat, tmp_path, smoke_data):
    path = artifacts.save_model(qat, tmp_path / "qat.h5")  # as the build saves it
    loaded = load_model(path)
    np.testing.assert_allclose(loaded.predict(smoke_data.test.x[:8], verbose=0),
                               qat.predict(smoke_data.test.x[:8], verbose=0), atol=1e-5)


def test_convert_gives_full_int8(tflite, smoke_data):
    info = model_file.read(tflite)
    assert info.inputs[0].dtype == "int8" and info.outputs[0].dtype == "int8"
    assert info.inputs[0].shape == (1, 28, 28, 1) and info.outputs[0].shape == (1, 10)
    assert set(info.op_names) == {"CONV_2D", "MAX_POOL_2D", "RESHAPE"}  # the classifier is a convolution


def test_converted_tensors_are_named_by_their_layer(tflite):
    from tflite_micro.tensorflow.lite.micro.compression import model_editor

    names = [tensor.name for tensor in model_editor.read(tflite).subgraphs[0].tensors]
    assert len(set(names)) == len(names)
    assert {"input", "output", "block1_conv1/weights", "block1_conv1/bias", "classifier/weights"} <= set(names)
    assert not any(";" in name or "quant_" in name or name.startswith("student/") for name in names)


def test_short_names_change_nothing_but_names(shared_models):
    """On a real MLPerf Tiny model: same operators and buffers, same TFLM outputs, fewer bytes."""
    from tflite_micro.python.tflite_micro import runtime
    from tflite_micro.tensorflow.lite.micro.compression import model_editor

    original = (shared_models / "kws_ref_model.tflite").read_bytes()
    renamed = short_tensor_names(original, "model")
    before, after = model_editor.read(original), model_editor.read(renamed)
    assert [b.data for b in after.buffers] == [b.data for b in before.buffers]
    assert [op.opcode_name for op in after.subgraphs[0].operators] == \
        [op.opcode_name for op in before.subgraphs[0].operators]
    assert len(renamed) < len(original)
    info = model_file.read(original).inputs[0]
    inputs = np.random.default_rng(0).integers(-128, 128, size=(16, *info.shape[1:]), dtype=np.int8)
    outputs = []
    for model in (original, renamed):
        interpreter = runtime.Interpreter.from_bytes(model, arena_size=measure_arena(model))
        rows = []
        for sample in inputs:
            interpreter.set_input(sample[np.newaxis], 0)
            interpreter.invoke()
            rows.append(interpreter.get_output(0).copy())
        outputs.append(np.array(rows))
    np.testing.assert_array_equal(outputs[1], outputs[0])


def test_float_op_is_named(student):
    with pytest.raises(ConversionError, match=r"op CONV_2D \(node 0\) still computes in float"):
        check_full_int8(convert_float(student), "student")


def test_tflm_and_reference_kernels_agree(tflite, qat, smoke_data):
    result = verify(tflite, smoke_data.test)
    assert result.samples == len(smoke_data.test)
    assert result.top1_agreement == 1.0
    assert result.identical_fraction == 1.0 and result.max_lsb_diff == 0  # no FULLY_CONNECTED or MEAN
    assert result.tflm_accuracy == pytest.approx(result.tflite_accuracy, abs=1 / len(smoke_data.test))
    float_accuracy = float(np.mean(qat.predict(smoke_data.test.x, verbose=0).argmax(-1) == smoke_data.test.y))
    assert result.tflm_accuracy == pytest.approx(float_accuracy, abs=0.05)


def test_arena_is_the_smallest_that_allocates(tflite):
    from tflite_micro.python.tflite_micro import runtime

    arena = measure_arena(tflite)
    assert arena % 16 == 0
    runtime.Interpreter.from_bytes(tflite, arena_size=arena)
    with pytest.raises(RuntimeError):
        runtime.Interpreter.from_bytes(tflite, arena_size=arena - 16)


def test_verify_refuses_a_model_tflm_cannot_run(shared_models, smoke_data):
    hybrid = (shared_models / "kws_ref_model_float32.tflite").read_bytes()
    with pytest.raises(VerificationError, match="TFLite Micro"):
        verify(hybrid, smoke_data.test.head(1))
