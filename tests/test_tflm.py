"""tinykd.tflm, the one TFLite Micro adapter: batch runs in a child process, checked against the interpreter itself
in this process, and bad models ending in ModelError instead of taking the caller down."""

import time

import numpy as np
import pytest

from tinykd import tflm
from tinykd.errors import ModelError


@pytest.fixture(scope="module")
def kws(shared_models) -> bytes:
    return (shared_models / "kws_ref_model.tflite").read_bytes()


@pytest.fixture(scope="module")
def arena_bytes(kws) -> int:
    with tflm.Worker() as worker:
        found, allocations = worker.smallest_arena(kws, "kws")
        assert worker.check(kws, found, "kws")
    assert allocations["head"] > 0 and allocations["records"]
    return found


def test_batch_outputs_are_the_interpreters_own(kws, arena_bytes):
    from tflite_micro.python.tflite_micro import runtime

    micro = runtime.Interpreter.from_bytes(kws, arena_size=arena_bytes)
    shape = tuple(micro.get_input_details(0)["shape"])
    inputs = np.random.default_rng(0).integers(-128, 128, size=(6, *shape[1:]), dtype=np.int8)
    expected = []
    for sample in inputs:
        micro.set_input(sample[np.newaxis], 0)
        micro.invoke()
        expected.append(micro.get_output(0).reshape(-1).copy())

    outputs = tflm.outputs(kws, inputs, arena_bytes)
    assert len(outputs) == 1 and outputs[0].dtype == np.int8
    np.testing.assert_array_equal(outputs[0], np.array(expected))
    assert len(np.unique(outputs[0], axis=0)) > 1  # different inputs, different outputs: not a constant


def test_a_model_tflm_cannot_run_is_a_model_error_with_its_words(shared_models):
    hybrid = (shared_models / "kws_ref_model_float32.tflite").read_bytes()
    with pytest.raises(ModelError, match=r"TFLite Micro cannot run the model: .*"):
        tflm.outputs(hybrid, np.zeros((1, 49, 10, 1), np.float32), 1 << 20)


def test_garbage_bytes_fail_in_the_child_not_here():
    garbage = b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 8
    with pytest.raises(ModelError, match="TFLite Micro"):
        tflm.outputs(garbage, np.zeros((1, 4), np.int8), 1 << 16)


def test_the_time_limit_stops_the_child(kws, arena_bytes):
    started = time.monotonic()
    with pytest.raises(ModelError, match=r"did not finish within 0.01 s"):
        tflm.outputs(kws, np.zeros((2, 49, 10, 1), np.int8), arena_bytes, time_limit_s=0.01)
    assert time.monotonic() - started < 10
