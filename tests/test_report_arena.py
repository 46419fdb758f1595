"""tinykd.report.arena: the smallest arena in the real pip TFLM interpreter, and its 32-bit correction."""

import shutil
import subprocess

import pytest
from tflite_micro.python.tflite_micro import runtime

from tinykd.errors import ModelError
from tinykd.report import arena, graph

# One byte of str_ww_ref_model.tflite changed (found by the seeded corruption search in
# test_report_corruption.py): it passes the flatbuffer checks, and the pip TFLM interpreter aborts on it.
CRASHING_PATCH = ("str_ww_ref_model.tflite", 49877, 1)


@pytest.fixture(scope="module")
def worker():
    with arena.Worker() as running:
        yield running


@pytest.mark.parametrize("file_name", ["kws_ref_model.tflite", "ad01_int8.tflite", "vww_96_int8.tflite"])
def test_arena_is_the_smallest_that_allocates(shared_models, worker, file_name):
    tflite = (shared_models / file_name).read_bytes()
    measured = worker.measure(tflite)
    assert measured.host_bytes % 16 == 0
    runtime.Interpreter.from_bytes(tflite, arena_size=measured.host_bytes)
    with pytest.raises(RuntimeError):
        runtime.Interpreter.from_bytes(tflite, arena_size=measured.host_bytes - 16)


def test_persistent_and_nonpersistent_parts_add_up(shared_models, worker):
    measured = worker.measure((shared_models / "kws_ref_model.tflite").read_bytes())
    assert measured.host_nonpersistent_bytes == 16_000  # KWS's planned activations, as TFLM's allocator reports
    assert measured.host_nonpersistent_bytes + measured.host_persistent_bytes == measured.host_bytes
    assert measured.records["TfLiteEvalTensor data"]["count"] == 35  # one per tensor
    assert measured.records["NodeAndRegistration struct"]["count"] == 13  # one per operator


def test_32bit_correction_credits_only_struct_shrinkage(shared_models, worker):
    measured = worker.measure((shared_models / "kws_ref_model.tflite").read_bytes())
    # 35 eval tensors 24 -> 12 B and 13 nodes 64 -> 32 B, less one 16-byte alignment step per array.
    assert measured.correction_bytes == (840 - 35 * 12 - 16) + (832 - 13 * 32 - 16)
    assert 0 < measured.bytes_32bit < measured.host_bytes
    assert measured.persistent_32bit_bytes == measured.host_persistent_bytes - measured.correction_bytes


@pytest.mark.parametrize("compiler, flags, column, compare", [
    ("arm-none-eabi-gcc", ["-mcpu=cortex-m4", "-mthumb", "-fno-short-enums"], 1, "=="),
    # arm-none-eabi's default short enums make the structs smaller still: the correction stays conservative.
    ("arm-none-eabi-gcc", ["-mcpu=cortex-m0plus", "-mthumb", "-fshort-enums"], 1, "<="),
    ("gcc", [], 0, "=="),
])
def test_struct_sizes_match_a_real_compiler(tmp_path, compiler, flags, column, compare):
    """The TF_LITE_STATIC_MEMORY layouts of tensorflow/lite/core/c/common.h and micro_allocator.h, compiled."""
    if shutil.which(compiler) is None:
        pytest.fail(f"{compiler} is not installed (Debian: gcc-arm-none-eabi); `make test` installs it")
    source = tmp_path / "sizes.c"
    source.write_text(f"""
#include <stddef.h>
#include <stdbool.h>
typedef enum {{ kTfLiteNoType = 0 }} TfLiteType;
typedef enum {{ kTfLiteMemNone = 0 }} TfLiteAllocationType;
typedef enum {{ kTfLiteNoQuantization = 0 }} TfLiteQuantizationType;
typedef struct {{ int size; int data[]; }} TfLiteIntArray;
typedef struct {{ int size; float data[]; }} TfLiteFloatArray;
typedef union {{ int* i32; void* data; }} TfLitePtrUnion;
typedef struct {{ TfLiteQuantizationType type; void* params; }} TfLiteQuantization;
typedef struct {{ float scale; int zero_point; }} TfLiteQuantizationParams;
typedef struct {{ TfLitePtrUnion data; TfLiteIntArray* dims; TfLiteType type; }} TfLiteEvalTensor;
typedef struct {{ TfLiteQuantization quantization; TfLiteQuantizationParams params; TfLitePtrUnion data;
  TfLiteIntArray* dims; size_t bytes; TfLiteType type; TfLiteAllocationType allocation_type;
  bool is_variable; }} TfLiteTensor;
typedef struct {{ TfLiteIntArray* inputs; TfLiteIntArray* outputs; TfLiteIntArray* intermediates;
  void* user_data; void* builtin_data; const void* custom_initial_data; int custom_initial_data_size; }} TfLiteNode;
typedef struct {{ TfLiteNode node; const void* registration; }} NodeAndRegistration;
typedef struct {{ TfLiteFloatArray* scale; TfLiteIntArray* zero_point; int quantized_dimension; }}
  TfLiteAffineQuantization;
_Static_assert(sizeof(TfLiteEvalTensor) {compare} {arena.STRUCT_BYTES["TfLiteEvalTensor data"][column]}, "eval");
_Static_assert(sizeof(NodeAndRegistration) {compare}
               {arena.STRUCT_BYTES["NodeAndRegistration struct"][column]}, "node");
_Static_assert(sizeof(TfLiteTensor) {compare} {arena.STRUCT_BYTES["Persistent TfLiteTensor data"][column]}, "tensor");
_Static_assert((sizeof(TfLiteAffineQuantization) + 8) / 2 {compare}
               {arena.STRUCT_BYTES["Persistent TfLiteTensor quantization data"][column]}, "quantization");
""")
    result = subprocess.run([compiler, *flags, "-std=c11", "-c", str(source), "-o", str(tmp_path / "sizes.o")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_cmsis_nn_scratch_is_the_largest_kernel_buffer(shared_models):
    model = graph.read((shared_models / "kws_ref_model.tflite").read_bytes())
    # The 10x4 first conv over 1 channel needs 4*1*40 = 160 B; each 3x3 depthwise over 64 channels 2*64*9.
    assert arena.kernel_scratch_bytes(model, "dsp") == 1152
    assert arena.kernel_scratch_bytes(model, "helium") == 4 * 124 * 9
    assert arena.kernel_persistent_bytes(model, "dsp") == 0
    assert arena.kernel_persistent_bytes(model, "helium") == 4 * 4 * 64 + 48  # four 1x1 convs and the dense


def test_refused_model_names_what_tflm_said(shared_models, worker):
    with pytest.raises(ModelError, match="Hybrid models are not supported"):
        worker.measure((shared_models / "kws_ref_model_float32.tflite").read_bytes())


def test_worker_survives_a_crash_and_a_time_limit(shared_models, worker):
    name, offset, value = CRASHING_PATCH
    patched = bytearray((shared_models / name).read_bytes())
    patched[offset] = value
    graph.read(bytes(patched))  # passes every Python-side check, so only the child process protects us
    with pytest.raises(ModelError, match="crashed"):
        worker.check(bytes(patched))
    kws = (shared_models / "kws_ref_model.tflite").read_bytes()
    assert worker.check(kws)
    impatient = arena.Worker(time_limit_s=0.001)
    with pytest.raises(ModelError, match="did not finish"):
        impatient.measure(kws)
    impatient.close()
    assert worker.measure(kws).host_bytes > 0
