"""tinykd.export writes TFLM sources; checked by real compilers (Cortex-M and host) and by reading them back."""

import re
import shutil
import subprocess
from pathlib import Path
from string import Template

import pytest

from tinykd import export as export_module
from tinykd import model_file
from tinykd.errors import ExportError
from tinykd.export import FirmwareSpec, arena_with_margin, export

NASTY_LABELS = ('say "hi"', "back\\slash", "new\nline", "*/ end", "??=", "Größe ✓")
KWS_LABELS = NASTY_LABELS + ("yes", "no", "up", "down", "", "_unknown_")
ARENA_BYTES = 21_999
# Written out here, not taken from tinykd.export, so a wrong mapping there cannot pass by agreeing with itself.
KWS_RESOLVER_METHODS = {
    "AVERAGE_POOL_2D": "AddAveragePool2D", "CONV_2D": "AddConv2D", "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D",
    "FULLY_CONNECTED": "AddFullyConnected", "RESHAPE": "AddReshape", "SOFTMAX": "AddSoftmax",
}
LABEL_SEPARATOR = b"\x1e"

HOST_PROGRAM = r"""
#include <cstdio>
#include "kws_model_data.h"
#include "kws_model_settings.h"

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  std::FILE* file = std::fopen(argv[1], "wb");
  if (file == nullptr) return 3;
  if (std::fwrite(kws_model_data, 1, kws_model_data_len, file) != kws_model_data_len) return 4;
  std::fclose(file);
  for (int i = 0; i < KWS_CLASS_COUNT; ++i) {
    std::fputs(KWS_LABELS[i], stdout);
    std::fputc(0x1e, stdout);
  }
  std::printf("%d %d %d %d %d %.9g %d %.9g %d %u %.9g %.9g %d\n", KWS_INPUT_DIMS[0], KWS_INPUT_DIMS[1],
              KWS_INPUT_DIMS[2], KWS_INPUT_DIMS[3], KWS_INPUT_ELEMENTS, KWS_INPUT_SCALE, KWS_INPUT_ZERO_POINT,
              KWS_OUTPUT_SCALE, KWS_OUTPUT_ZERO_POINT, KWS_ARENA_BYTES, KWS_RAW_SCALE, KWS_RAW_OFFSET,
              static_cast<int>(sizeof(kws_input_t)));
  std::puts(KWS_RAW_DESCRIPTION);
  return 0;
}
"""

# Stands in for TFLM's header: records which Add* methods the generated resolver calls, and in what order.
STUB_RESOLVER_HEADER = """
#include <cstdio>
typedef enum { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;
namespace tflite {
template <unsigned int tOpCount>
class MicroMutableOpResolver {
 public:
  unsigned int count = 0;
${methods}
};
}  // namespace tflite
"""
STUB_METHOD = '  TfLiteStatus ${method}() { std::printf("${method}\\n"); return ++count <= tOpCount ? kTfLiteOk : kTfLiteError; }'

RESOLVER_PROGRAM = r"""
#include <cstdio>
#include "kws_op_resolver.h"

int main() {
  kws_op_resolver resolver;
  if (kws_register_ops(resolver) != kTfLiteOk) return 1;
  std::printf("count %u %u\n", resolver.count, KWS_OP_COUNT);
  return 0;
}
"""


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH: it is a required tool for these tests (install the GNU Arm "
                    "Embedded toolchain and a host g++)")
    return path


def _run(command: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(part) for part in command], capture_output=True, **kwargs)
    assert result.returncode == 0, f"{command[0]} failed:\n{result.stderr.decode(errors='replace')}"
    return result


@pytest.fixture(scope="module")
def kws_tflite(shared_models) -> bytes:
    return (shared_models / "kws_ref_model.tflite").read_bytes()


@pytest.fixture(scope="module")
def exported(kws_tflite, tmp_path_factory) -> tuple[Path, ...]:
    spec = FirmwareSpec(name="kws", labels=KWS_LABELS, arena_bytes=ARENA_BYTES, raw_scale=0.5, raw_offset=-3.25,
                        raw_description='MFCC */ "49x10" ??/ \\')
    return export(kws_tflite, spec, tmp_path_factory.mktemp("export") / "firmware")


def test_writes_the_four_files(exported):
    out_dir = exported[0].parent

    assert [path.name for path in exported] == [
        "kws_model_data.h", "kws_model_data.cc", "kws_model_settings.h", "kws_op_resolver.h",
    ]
    assert sorted(path.name for path in out_dir.iterdir()) == sorted(path.name for path in exported)
    assert not [path for path in out_dir.parent.iterdir() if path.name.startswith(".")]


def test_c_array_text_parses_back_to_the_tflite_bytes(exported, kws_tflite):
    text = (exported[0].parent / "kws_model_data.cc").read_text()

    body = re.search(r"alignas\(16\) const unsigned char kws_model_data\[\] = \{(.*?)\};", text, re.S).group(1)
    assert bytes(int(token, 16) for token in re.findall(r"0x[0-9a-f]{2}", body)) == kws_tflite
    assert f"const unsigned int kws_model_data_len = {len(kws_tflite)};" in text


def test_cortex_m_build_puts_model_in_read_only_data(exported, kws_tflite, tmp_path):
    compiler, nm = _tool("arm-none-eabi-g++"), _tool("arm-none-eabi-nm")
    out_dir = exported[0].parent
    user = tmp_path / "user.cc"
    user.write_text('#include "kws_model_settings.h"\n#include "kws_model_data.h"\n'
                    "int first_label_byte() { return KWS_LABELS[KWS_CLASS_COUNT - 1][0] + kws_model_data[4]; }\n")
    flags = ["-mcpu=cortex-m4", "-mthumb", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-I", out_dir, "-c"]

    _run([compiler, *flags, out_dir / "kws_model_data.cc", "-o", tmp_path / "model_data.o"])
    _run([compiler, *flags, user, "-o", tmp_path / "user.o"])
    symbols = _run([nm, "-S", "-C", tmp_path / "model_data.o"], text=True).stdout

    size, kind = re.search(r"^[0-9a-f]+ ([0-9a-f]+) (\w) kws_model_data$", symbols, re.M).groups()
    assert kind in "rR"
    assert int(size, 16) == len(kws_tflite)


def test_host_program_reads_back_bytes_labels_and_settings(exported, kws_tflite, tmp_path):
    compiler = _tool("g++")
    out_dir = exported[0].parent
    (tmp_path / "main.cc").write_text(HOST_PROGRAM)
    program = tmp_path / "readback"
    _run([compiler, "-std=c++11", "-Wall", "-Wextra", "-Werror", "-I", out_dir, tmp_path / "main.cc",
          out_dir / "kws_model_data.cc", "-o", program])

    output = _run([program, tmp_path / "model.tflite"]).stdout

    assert (tmp_path / "model.tflite").read_bytes() == kws_tflite
    *labels, settings = output.split(LABEL_SEPARATOR)
    assert [label.decode("utf-8") for label in labels] == list(KWS_LABELS)
    numbers, description, _ = settings.decode("utf-8").split("\n")
    model_input = model_file.read(kws_tflite).inputs[0]
    model_output = model_file.read(kws_tflite).outputs[0]
    dims_0, dims_1, dims_2, dims_3, elements, input_scale, input_zero, output_scale, output_zero, arena, \
        raw_scale, raw_offset, input_size = numbers.split()
    assert tuple(int(dim) for dim in (dims_0, dims_1, dims_2, dims_3)) == model_input.shape == (1, 49, 10, 1)
    assert int(elements) == 490
    assert float(input_scale) == pytest.approx(model_input.scale, rel=1e-7)
    assert int(input_zero) == model_input.zero_point
    assert float(output_scale) == model_output.scale and int(output_zero) == model_output.zero_point
    assert int(arena) == arena_with_margin(ARENA_BYTES)
    assert (float(raw_scale), float(raw_offset), int(input_size)) == (0.5, -3.25, 1)
    assert description == 'MFCC */ "49x10" ??/ \\'


def test_arena_margin_is_25_percent_rounded_up_to_16_bytes():
    assert arena_with_margin(16_000) == 20_000
    assert arena_with_margin(ARENA_BYTES) == 27_504  # 27_498.75 -> 27_499 -> next multiple of 16
    assert all(arena_with_margin(arena) % 16 == 0 and arena_with_margin(arena) >= arena * 1.25
               for arena in range(1, 2_000))


def test_op_resolver_registers_each_model_op_once(exported, kws_tflite, tmp_path):
    compiler = _tool("g++")
    text = (exported[0].parent / "kws_op_resolver.h").read_text()
    expected = sorted(KWS_RESOLVER_METHODS[name] for name in model_file.read(kws_tflite).op_names)

    assert re.search(r"constexpr unsigned int KWS_OP_COUNT = (\d+);", text).group(1) == str(len(expected))
    assert sorted(re.findall(r"resolver\.(Add\w+)\(\)", text)) == expected
    assert '#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"' in text

    stub = tmp_path / "tensorflow/lite/micro/micro_mutable_op_resolver.h"
    stub.parent.mkdir(parents=True)
    methods = "\n".join(Template(STUB_METHOD).substitute(method=method) for method in KWS_RESOLVER_METHODS.values())
    stub.write_text(Template(STUB_RESOLVER_HEADER).substitute(methods=methods))
    (tmp_path / "main.cc").write_text(RESOLVER_PROGRAM)
    _run([compiler, "-std=c++11", "-Wall", "-Werror", "-I", tmp_path, "-I", exported[0].parent,
          tmp_path / "main.cc", "-o", tmp_path / "resolver"])
    *called, count_line = _run([tmp_path / "resolver"], text=True).stdout.splitlines()

    assert sorted(called) == expected
    assert count_line == f"count {len(expected)} {len(expected)}"


def test_export_overwrites_own_files_and_keeps_others(kws_tflite, tmp_path):
    out_dir = tmp_path / "firmware"
    out_dir.mkdir()
    (out_dir / "main.cc").write_text("// user code\n")
    (out_dir / "kws_model_data.cc").write_text("stale")
    spec = FirmwareSpec(name="kws", labels=KWS_LABELS, arena_bytes=ARENA_BYTES)

    export(kws_tflite, spec, out_dir)

    assert (out_dir / "main.cc").read_text() == "// user code\n"
    assert (out_dir / "kws_model_data.cc").read_text().startswith("// Generated by tinykd")


@pytest.mark.parametrize("name", ["9bad-name", "bad-name", "", "_leading", "größe", "two words"])
def test_name_that_is_not_a_c_identifier_is_rejected(kws_tflite, tmp_path, name):
    spec = FirmwareSpec(name=name, labels=KWS_LABELS, arena_bytes=ARENA_BYTES)

    with pytest.raises(ExportError, match="not a valid C identifier"):
        export(kws_tflite, spec, tmp_path / "firmware")
    assert list(tmp_path.iterdir()) == []


def test_label_count_mismatch_is_rejected_and_writes_nothing(kws_tflite, tmp_path):
    spec = FirmwareSpec(name="kws", labels=KWS_LABELS[:11], arena_bytes=ARENA_BYTES)

    with pytest.raises(ExportError, match="11 labels given but .* has 12 classes"):
        export(kws_tflite, spec, tmp_path / "firmware")
    assert list(tmp_path.iterdir()) == []


def test_float_model_is_rejected_naming_the_dtype(shared_models, tmp_path):
    tflite = (shared_models / "pretrainedResnet.tflite").read_bytes()
    spec = FirmwareSpec(name="resnet", labels=tuple(str(index) for index in range(10)), arena_bytes=ARENA_BYTES)

    with pytest.raises(ExportError, match="float32, expected quantized int8"):
        export(tflite, spec, tmp_path / "firmware")
    assert list(tmp_path.iterdir()) == []


def test_op_without_tflm_registration_is_rejected(kws_tflite, tmp_path, monkeypatch):
    monkeypatch.delitem(export_module.OP_RESOLVER_METHODS, "SOFTMAX")
    spec = FirmwareSpec(name="kws", labels=KWS_LABELS, arena_bytes=ARENA_BYTES)

    with pytest.raises(ExportError, match="MicroMutableOpResolver has no registration for op.*SOFTMAX"):
        export(kws_tflite, spec, tmp_path / "firmware")
    assert list(tmp_path.iterdir()) == []


def test_corrupt_model_is_rejected(kws_tflite, tmp_path):
    spec = FirmwareSpec(name="kws", labels=KWS_LABELS, arena_bytes=ARENA_BYTES)

    with pytest.raises(ExportError, match="kws model: corrupt or truncated"):
        export(kws_tflite[:1000], spec, tmp_path / "firmware")


def test_unwritable_out_dir_leaves_no_staging_files(kws_tflite, tmp_path):
    blocker = tmp_path / "firmware"
    blocker.write_text("a file where the output directory should be")
    spec = FirmwareSpec(name="kws", labels=KWS_LABELS, arena_bytes=ARENA_BYTES)

    with pytest.raises(ExportError, match="cannot write firmware files"):
        export(kws_tflite, spec, blocker)
    assert [path.name for path in tmp_path.iterdir()] == ["firmware"]


def test_all_quantized_reference_models_export(shared_models, tmp_path):
    for file_name in ("vww_96_int8.tflite", "pretrainedResnet_quant.tflite"):
        tflite = (shared_models / file_name).read_bytes()
        classes = model_file.read(tflite).outputs[0].shape[-1]
        spec = FirmwareSpec(name=file_name.split("_")[0].lower(), labels=tuple(map(str, range(classes))),
                            arena_bytes=100_000)

        paths = export(tflite, spec, tmp_path / file_name)

        assert len(paths) == 4
