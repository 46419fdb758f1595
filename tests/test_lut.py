"""LUT compression with TFLM's real compressor and interpreter, on small int8 models clustered by the real TFMOT."""

import os

import numpy as np
import pytest

from tinykd import lut, model_file
from tinykd.convert import convert
from tinykd.errors import ConversionError
from tinykd.keras_shim import keras, tfmot
from tinykd.verify import measure_arena, quantize_input

CLUSTERS = 16


def _convnet(seed: int):
    """Convolutions of 32 and 64 channels: big enough that 4-bit indices matter (about 56 KB of kernels)."""
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1"),
        layers.Conv2D(64, 3, strides=2, padding="same", activation="relu", name="conv2"),
        layers.Conv2D(64, 3, strides=2, padding="same", activation="relu", name="conv3"),
        layers.GlobalAveragePooling2D(name="gap"),
        layers.Dense(10, name="logits"),
    ], name="convnet")


def _dsnet(seed: int):
    """A 3x3 depthwise kernel (too small to pay off) and a 7x7 one binned to 4 values per channel."""
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
        layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw_small"),
        layers.Conv2D(64, 1, activation="relu", name="pointwise"),
        layers.DepthwiseConv2D(7, strides=2, padding="same", activation="relu", name="dw_big"),
        layers.GlobalAveragePooling2D(name="gap"),
        layers.Dense(10, name="logits"),
    ], name="dsnet")
    kernel, bias = model.get_layer("dw_big").get_weights()
    rng = np.random.default_rng(seed)
    levels = rng.normal(0.0, 0.2, size=(4, kernel.shape[2]))  # 4 values per channel, as per-channel clusters
    picks = rng.integers(0, 4, size=kernel.shape[:3])
    kernel = levels[picks, np.arange(kernel.shape[2])][..., np.newaxis]  # kernel[h, w, c] = levels[pick, c]
    model.get_layer("dw_big").set_weights([kernel.astype(np.float32), bias])
    return model


def _clustered(model):
    wrapped = tfmot.clustering.keras.cluster_weights(
        model, number_of_clusters=CLUSTERS,
        cluster_centroids_init=tfmot.clustering.keras.CentroidInitialization.KMEANS_PLUS_PLUS)
    return tfmot.clustering.keras.strip_clustering(wrapped)


def _inputs(tflite: bytes, x: np.ndarray) -> np.ndarray:
    tensor = model_file.read(tflite).inputs[0]
    return quantize_input(x, {"scales": [tensor.scale], "zero_points": [tensor.zero_point]})


def _tflm_outputs(tflite: bytes, inputs: np.ndarray) -> np.ndarray:
    from tflite_micro.python.tflite_micro import runtime

    interpreter = runtime.Interpreter.from_bytes(tflite, arena_size=measure_arena(tflite))
    outputs = []
    for sample in inputs:
        interpreter.set_input(sample[np.newaxis], 0)
        interpreter.invoke()
        outputs.append(interpreter.get_output(0)[0].copy())
    return np.array(outputs)


def _allocates(tflite: bytes, arena_bytes: int, alt_bytes: int) -> bool:
    """Whether TFLM allocates and invokes the model, tried in a forked child: a failed allocation can leave
    TFLM state behind that crashes a later interpreter in the same process."""
    pid = os.fork()
    if pid == 0:
        from tflite_micro.python.tflite_micro import runtime

        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # TFLM logs every failed allocation
        try:
            runtime.Interpreter.from_bytes(tflite, arena_size=arena_bytes,
                                           alt_decompression_memory_size=alt_bytes).invoke()
            os._exit(0)
        except RuntimeError:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def _by_name(result: lut.Compressed, layer: str) -> lut.TensorChoice:
    matches = [choice for choice in result.tensors if layer in choice.name]
    assert len(matches) == 1, [choice.name for choice in result.tensors]
    return matches[0]


@pytest.fixture(scope="module")
def clustered_tflite(smoke_data) -> bytes:
    return convert(_clustered(_convnet(0)), smoke_data.train.x[:32])


@pytest.fixture(scope="module")
def check_inputs(clustered_tflite, smoke_data) -> np.ndarray:
    return _inputs(clustered_tflite, smoke_data.test.x[:64])


@pytest.fixture(scope="module")
def compressed(clustered_tflite, check_inputs) -> lut.Compressed:
    return lut.compress(clustered_tflite, bits=4, check_inputs=check_inputs)


@pytest.fixture(scope="module")
def ds_tflite(smoke_data) -> bytes:
    return convert(_dsnet(1), smoke_data.train.x[:32])


def test_four_bit_makes_a_clustered_model_at_least_30_percent_smaller(clustered_tflite, compressed):
    assert len(compressed.tflite) <= 0.7 * len(clustered_tflite)
    assert compressed.identical_outputs and compressed.checked_samples == 64
    assert {choice.name for choice in compressed.compressed_tensors} == \
        {_by_name(compressed, "conv2").name, _by_name(compressed, "conv3").name}
    assert all(choice.bits == 4 and choice.axis == 0 and choice.channels == 64
               for choice in compressed.compressed_tensors)
    ops = [operator.name for operator in model_file.read(compressed.tflite).operators]
    assert ops.count("TFLM_DECODE") == 2 and ops.count("CONV_2D") == 3


def test_encoded_tensors_carry_no_second_copy_of_the_quantization(compressed):
    """The index tensors lose the scales and zero points the decoded tensors hold (12 B a channel otherwise)."""
    from tflite_micro.tensorflow.lite.micro.compression import model_editor

    subgraph = model_editor.read(compressed.tflite).subgraphs[0]
    decodes = [operator for operator in subgraph.operators if operator.opcode_name == "TFLM_DECODE"]
    assert len(decodes) == 2
    for operator in decodes:
        encoded, decoded = operator.inputs[0], operator.outputs[0]
        assert encoded.quantization is None and encoded.name == decoded.name.removesuffix("_decoded")
        assert len(decoded.quantization.scales) == 64


def test_outputs_are_identical_in_tflm_on_many_inputs(clustered_tflite, compressed, smoke_data):
    inputs = _inputs(clustered_tflite, smoke_data.test.x)
    expected = _tflm_outputs(clustered_tflite, inputs)
    assert len(np.unique(expected, axis=0)) > len(inputs) // 2  # the outputs really depend on the input
    np.testing.assert_array_equal(_tflm_outputs(compressed.tflite, inputs), expected)


def test_small_kernels_stay_dense_with_a_reason(compressed):
    first, classifier = _by_name(compressed, "conv1"), _by_name(compressed, "logits")
    for choice in (first, classifier):
        assert choice.bits is None and choice.bytes_after == choice.bytes_before
        assert "not smaller" in choice.reason
    assert first.bytes_before == 32 * 3 * 3 * 1 and classifier.bytes_before == 10 * 64
    assert classifier.op == "FULLY_CONNECTED" and classifier.axis == 0  # dense weights are per-channel too


def test_decompression_memory_is_measured(clustered_tflite, compressed):
    decoded = sum(choice.bytes_before for choice in compressed.compressed_tensors)
    assert 0 < compressed.decompression_memory_bytes <= decoded + 4096
    assert measure_arena(compressed.tflite) == measure_arena(clustered_tflite) + compressed.decompression_memory_bytes


def test_alternate_memory_takes_the_decoded_weights_instead(clustered_tflite, compressed):
    """With SetDecompressionMemory the arena stays near the uncompressed one; the region holds one decoded tensor."""
    arena = measure_arena(clustered_tflite) + 1024  # DECODE state is a few hundred bytes
    alt = compressed.alt_decompression_memory_bytes
    assert alt == 64 * 3 * 3 * 64  # conv3's decoded kernel, the largest
    assert _allocates(compressed.tflite, arena, alt)
    assert not _allocates(compressed.tflite, arena, alt - 16)
    assert not _allocates(compressed.tflite, arena, 0)


def test_bits_are_the_fewest_that_hold_each_channel(clustered_tflite, check_inputs):
    result = lut.compress(clustered_tflite, check_inputs=check_inputs)
    assert [choice.bits for choice in result.compressed_tensors] == [4, 4]
    assert all(choice.unique_values == 16 for choice in result.compressed_tensors)


def test_depthwise_tables_follow_the_last_axis(ds_tflite, smoke_data):
    inputs = _inputs(ds_tflite, smoke_data.test.x[:64])
    result = lut.compress(ds_tflite, check_inputs=inputs)
    small, big = _by_name(result, "dw_small"), _by_name(result, "dw_big")
    assert small.op == big.op == "DEPTHWISE_CONV_2D" and small.axis == big.axis == 3
    assert small.bits is None and "not smaller" in small.reason and small.unique_values <= 9
    assert big.bits == 2 and big.unique_values == 4 and big.bytes_after < big.bytes_before / 2
    np.testing.assert_array_equal(_tflm_outputs(result.tflite, inputs), _tflm_outputs(ds_tflite, inputs))


def test_an_unclustered_model_is_left_as_it_is(smoke_data):
    tflite = convert(_convnet(0), smoke_data.train.x[:32])
    result = lut.compress(tflite, check_inputs=_inputs(tflite, smoke_data.test.x[:8]))
    assert result.tflite == tflite and not result.compressed_tensors and result.decompression_memory_bytes == 0
    for layer in ("conv2", "conv3"):
        choice = _by_name(result, layer)
        assert choice.unique_values > 16 and "not clustered" in choice.reason


def test_too_few_bits_leave_tensors_dense(clustered_tflite, check_inputs):
    result = lut.compress(clustered_tflite, bits=2, check_inputs=check_inputs)
    assert result.tflite == clustered_tflite
    assert "need 4-bit indices, 2 requested" in _by_name(result, "conv3").reason


def test_different_outputs_raise_and_name_the_tensor(clustered_tflite, check_inputs, monkeypatch):
    """A compressor that writes wrong value tables (here: each table reversed) must not get through."""
    from tflite_micro.tensorflow.lite.micro.compression import lut as tflm_lut

    pack = tflm_lut.pack_lookup_tables
    monkeypatch.setattr(tflm_lut, "pack_lookup_tables",
                        lambda tables, length: pack([table[::-1] for table in tables], length))
    with pytest.raises(ConversionError, match=r"tensor '[^']*conv2[^']*' \(CONV_2D, 4-bit\): TFLite Micro's "
                                              r"outputs differ after LUT compression on \d+ of 64 inputs"):
        lut.compress(clustered_tflite, check_inputs=check_inputs)


def test_check_inputs_must_be_int8_model_inputs(clustered_tflite, smoke_data):
    with pytest.raises(ValueError, match=r"int8 array of shape \(samples, 28, 28, 1\)"):
        lut.compress(clustered_tflite, check_inputs=smoke_data.test.x[:4])


def test_build_with_clustering_and_lut_compression_exports_a_decoding_firmware(tmp_path):
    """The smoke recipe with `cluster:` and `compress:`: clustered, cluster-preserving QAT, LUT-compressed with
    identical TFLM outputs, exported with AddDecode and the decompression memory, and the settings compile."""
    import shutil
    import subprocess

    from conftest import SMOKE_RECIPE
    from tinykd import config
    from tinykd.export import OP_RESOLVER_METHODS
    from tinykd.pipeline import BuildOptions, build

    cfg = config.load(SMOKE_RECIPE, {"name": "lut", "prune": "none", "distill.student.filters": "[16, 32]",
                                     "cluster": "{clusters: 16, epochs: 1, batch_size: 64}", "compress": "{}"})
    report = build(cfg, tmp_path, BuildOptions()).report
    compression = report["compression"]
    assert compression["identical_outputs"] and compression["checked_samples"] == report["int8"]["test_samples"]
    assert compression["compressed_tensors"] >= 1 and compression["tflite_bytes"] < compression["tflite_bytes_before"]
    assert compression["decompression_memory_bytes"] > 0
    assert report["stages"][-1]["stage"] == "compressed"
    assert report["stages"][-1]["test_accuracy"] == report["int8"]["tflm_accuracy"]
    # Per stage on the board: the clustered float model (as PTQ int8), the shipped int8 model, the compressed one.
    rows = {stage["stage"]: stage["int8"] for stage in report["stages"]}
    assert rows["cluster"]["kind"] == "post-training quantized" and rows["compressed"]["kind"] == "LUT-compressed"
    assert rows["compressed"]["tflite_bytes"] == compression["tflite_bytes"]
    runtime_code = {name: rows[name]["flash_bytes"] - rows[name]["tflite_bytes"] for name in ("int8", "compressed")}
    assert runtime_code["compressed"] > runtime_code["int8"]  # flash counts the DECODE kernel's code too
    assert rows["compressed"]["arena_bytes"] > rows["int8"]["arena_bytes"]  # decoded weights live in the arena
    assert rows["compressed"]["tflm_accuracy"] == rows["int8"]["tflm_accuracy"]
    export = tmp_path / "lut" / "export"
    compressed = (tmp_path / "lut" / "compress" / "model.tflite").read_bytes()
    ops = model_file.read(compressed).op_names
    assert "TFLM_DECODE" in ops
    resolver = (export / "lut_op_resolver.h").read_text()
    assert "resolver.AddDecode()" in resolver and f"LUT_OP_COUNT = {len(ops)};" in resolver
    assert sorted(OP_RESOLVER_METHODS[op] for op in ops) == sorted(
        line.strip().split("(")[0].split(".")[-1] for line in resolver.splitlines() if "resolver.Add" in line)
    settings = (export / "lut_model_settings.h").read_text()
    assert f"LUT_DECOMPRESSION_MEMORY_BYTES = {compression['decompression_memory_bytes']};" in settings
    assert "USE_TFLM_COMPRESSION=1" in settings
    data = (export / "lut_model_data.cc").read_text()
    assert f"{len(compressed)}" in data  # the firmware gets the compressed model
    compiler = shutil.which("arm-none-eabi-g++")
    assert compiler, "arm-none-eabi-g++ is required (make test installs gcc-arm-none-eabi)"
    probe = tmp_path / "probe.cc"
    probe.write_text('#include "lut_model_settings.h"\n'
                     "unsigned int probe() { return LUT_ARENA_BYTES + LUT_DECOMPRESSION_MEMORY_BYTES; }\n")
    subprocess.run([compiler, "-mcpu=cortex-m4", "-mthumb", "-std=c++17", "-Wall", "-Werror", "-c", f"-I{export}",
                    str(probe), "-o", str(tmp_path / "probe.o")], check=True)
