"""tinykd.export writes TFLM sources; checked by real compilers (Cortex-M and host) and by reading them back."""

import importlib.metadata
import re
import shutil
import subprocess
from pathlib import Path
from string import Template

import numpy as np
import pytest

from tinykd import export as export_module
from tinykd import model_file
from tinykd.errors import ExportError
from tinykd.export import LAYOUTS, FirmwareSpec, arena_with_margin, default_labels, export

NASTY_LABELS = ('say "hi"', "back\\slash", "new\nline", "*/ end", "??=", "Größe ✓")
KWS_LABELS = NASTY_LABELS + ("yes", "no", "up", "down", "", "_unknown_")
ARENA_BYTES = 21_999
# Written out here, not taken from tinykd.export, so a wrong mapping there cannot pass by agreeing with itself.
KWS_RESOLVER_METHODS = {
    "AVERAGE_POOL_2D": "AddAveragePool2D", "CONV_2D": "AddConv2D", "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D",
    "FULLY_CONNECTED": "AddFullyConnected", "RESHAPE": "AddReshape", "SOFTMAX": "AddSoftmax",
}
RESOLVER_METHODS = KWS_RESOLVER_METHODS | {"ADD": "AddAdd"}
INT8_MODELS = ("kws_ref_model.tflite", "vww_96_int8.tflite", "pretrainedResnet_quant.tflite", "ad01_int8.tflite",
               "str_ww_ref_model.tflite")
TEMPLATES = Path(export_module.__file__).parent / "templates"
# Spellings of TFLM's C++ API; a template containing any of them calls TFLM.
TFLM_API = ("tflite::", "tensorflow/lite/", "MicroInterpreter", "MicroMutableOpResolver", "GetModel",
            "AllocateTensors", "Invoke(", "MicroPrintf", "TFLITE_SCHEMA_VERSION", "TfLiteStatus", "TfLiteTensor",
            "resolver.Add")
LABEL_SEPARATOR = b"\x1e"
PLAIN_FILES = ("kws_model_data.h", "kws_model_data.cc", "kws_model_settings.h", "kws_op_resolver.h",
               "kws_example.h", "kws_example.cc")
CORES = ("cortex-m0plus", "cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55")

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
#pragma once
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


# Stands in for the TFLM headers the example includes. Invoke() copies the first 12 input bytes to the output,
# so the program can check quantization, dequantization and argmax against Python; MicroPrintf gets printf's
# format checking, which TFLM's lacks.
STUB_TFLM = {
    "tensorflow/lite/schema/schema_generated.h": """
#pragma once
#include <cstdint>
namespace tflite {
struct Model { uint32_t version() const { return 3; } };
inline const Model* GetModel(const void*) { static Model model; return &model; }
}  // namespace tflite
""",
    "tensorflow/lite/micro/micro_interpreter.h": """
#pragma once
#include <cstddef>
#include <cstdint>
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"
#define TFLITE_SCHEMA_VERSION (3)
struct TfLiteTensor { union { int8_t* int8; } data; };
inline int8_t* stub_input = nullptr;
namespace tflite {
class MicroInterpreter {
 public:
  template <unsigned int tOpCount>
  MicroInterpreter(const Model*, const MicroMutableOpResolver<tOpCount>& resolver, uint8_t* arena, size_t size)
      : size_(resolver.count == tOpCount ? size : 0) {
    input_.data.int8 = stub_input = reinterpret_cast<int8_t*>(arena);
    output_.data.int8 = input_.data.int8 + 1024;
  }
  TfLiteStatus AllocateTensors() { return size_ > 2048 ? kTfLiteOk : kTfLiteError; }
  TfLiteStatus Invoke() {
    for (int i = 0; i < 12; ++i) output_.data.int8[i] = input_.data.int8[i];
    return kTfLiteOk;
  }
  TfLiteTensor* input(size_t) { return &input_; }
  TfLiteTensor* output(size_t) { return &output_; }
  size_t arena_used_bytes() const { return 2048; }
 private:
  size_t size_;
  TfLiteTensor input_, output_;
};
}  // namespace tflite
""",
    "tensorflow/lite/micro/micro_log.h": """
#pragma once
#include <cstdarg>
#include <cstdio>
__attribute__((format(printf, 1, 2))) inline void MicroPrintf(const char* format, ...) {
  va_list args;
  va_start(args, format);
  std::vfprintf(stderr, format, args);
  va_end(args);
  std::fputc('\\n', stderr);
}
""",
    "tensorflow/lite/micro/system_setup.h": "#pragma once\nnamespace tflite { inline void InitializeTarget() {} }\n",
}

EXAMPLE_PROGRAM = r"""
#include <cstdio>
#include "kws_example.h"
#include "tensorflow/lite/micro/micro_interpreter.h"

int main() {
  static float raw[KWS_INPUT_ELEMENTS];
  for (int i = 0; i < KWS_INPUT_ELEMENTS; ++i) {
    if (std::scanf("%f", &raw[i]) != 1) return 2;
  }
  float scores[KWS_CLASS_COUNT];
  const int best = kws_example_classify(raw, scores);
  for (int i = 0; i < KWS_INPUT_ELEMENTS; ++i) std::printf("%d ", stub_input[i]);
  std::printf("\n");
  for (int i = 0; i < KWS_CLASS_COUNT; ++i) std::printf("%.9g ", scores[i]);
  std::printf("\n%d\n", best);
  return kws_example_classify(raw, nullptr) == best ? 0 : 1;
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


def test_writes_the_six_files(exported):
    out_dir = exported[0].parent

    assert [path.name for path in exported] == list(PLAIN_FILES)
    assert sorted(path.name for path in out_dir.iterdir()) == sorted(path.name for path in exported)
    assert not [path for path in out_dir.parent.iterdir() if path.name.startswith(".")]


def test_c_array_text_parses_back_to_the_tflite_bytes(exported, kws_tflite):
    text = (exported[0].parent / "kws_model_data.cc").read_text()

    body = re.search(r"alignas\(16\) const unsigned char kws_model_data\[\] = \{(.*?)\};", text, re.S).group(1)
    assert bytes(int(token, 16) for token in re.findall(r"0x[0-9a-f]{2}", body)) == kws_tflite
    assert f"const unsigned int kws_model_data_len = {len(kws_tflite)};" in text


@pytest.mark.parametrize("core", CORES)
def test_cortex_m_build_puts_model_in_read_only_data(exported, kws_tflite, tmp_path, core, stub_tflm):
    compiler, nm = _tool("arm-none-eabi-g++"), _tool("arm-none-eabi-nm")
    out_dir = exported[0].parent
    user = tmp_path / "user.cc"
    user.write_text('#include "kws_model_settings.h"\n#include "kws_model_data.h"\n#include "kws_example.h"\n'
                    "int first_label_byte() { return KWS_LABELS[KWS_CLASS_COUNT - 1][0] + kws_model_data[4]; }\n"
                    "int (*classify)(const float*, float*) = kws_example_classify;\n")
    flags = [f"-mcpu={core}", "-mthumb", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-I", out_dir, "-c"]

    _run([compiler, *flags, out_dir / "kws_model_data.cc", "-o", tmp_path / "model_data.o"])
    _run([compiler, *flags, user, "-o", tmp_path / "user.o"])
    # The example needs TFLM's headers; against stand-ins it shows that tinykd's own code compiles for the core.
    _run([compiler, *flags, "-I", stub_tflm, out_dir / "kws_example.cc", "-o", tmp_path / "example.o"])
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


@pytest.mark.parametrize("file_name", INT8_MODELS)
def test_every_int8_reference_model_exports_a_resolver_with_exactly_its_ops(shared_models, tmp_path, file_name):
    tflite = (shared_models / file_name).read_bytes()
    operators = model_file.read(tflite).operators
    spec = FirmwareSpec(name="m", labels=default_labels(tflite), arena_bytes=100_000)

    export(tflite, spec, tmp_path / "firmware")

    text = (tmp_path / "firmware" / "m_op_resolver.h").read_text()
    methods = re.findall(r"resolver\.(Add\w+)\(\)", text)
    assert int(re.search(r"constexpr unsigned int M_OP_COUNT = (\d+);", text).group(1)) == len(methods)
    assert "typedef tflite::MicroMutableOpResolver<M_OP_COUNT> m_op_resolver;" in text
    assert sorted(methods) == sorted({RESOLVER_METHODS[operator.name] for operator in operators})
    assert len(set(methods)) == len(methods)


@pytest.mark.parametrize("existing", [False, True])
def test_model_tflm_cannot_run_fails_naming_the_problem_and_leaves_nothing(shared_models, tmp_path, existing):
    tflite = (shared_models / "kws_ref_model_float32.tflite").read_bytes()
    out_dir = tmp_path / "firmware"
    if existing:
        (out_dir / "src").mkdir(parents=True)
        (out_dir / "main.cc").write_text("// user code\n")
        (out_dir / "kws_model_data.cc").write_text("previous export")
    before = _tree(tmp_path)
    spec = FirmwareSpec(name="kws", labels=KWS_LABELS, arena_bytes=ARENA_BYTES)

    with pytest.raises(ExportError, match=r"TFLite Micro cannot run the model: .*Hybrid models are not supported.*"
                                          r"Node CONV_2D \(number 0\) failed to prepare"):
        export(tflite, spec, out_dir, layout="arduino")
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_hold_the_same_sources(exported, kws_tflite, tmp_path, layout):
    spec = FirmwareSpec(name="kws", labels=KWS_LABELS, arena_bytes=ARENA_BYTES, raw_scale=0.5, raw_offset=-3.25,
                        raw_description='MFCC */ "49x10" ??/ \\')

    paths = export(kws_tflite, spec, tmp_path / "out", layout=layout)

    relative = [path.relative_to(tmp_path / "out").as_posix() for path in paths]
    source_dir = {"plain": "", "cmake": "", "arduino": "src/"}[layout]
    extra = {"plain": [], "cmake": ["CMakeLists.txt"],
             "arduino": ["library.properties", "examples/kws_inference/kws_inference.ino"]}[layout]
    assert relative == [source_dir + name for name in PLAIN_FILES] + extra
    assert _tree(tmp_path / "out") == {name: (tmp_path / "out" / name).read_bytes() for name in relative}
    for name in PLAIN_FILES:
        assert (tmp_path / "out" / source_dir / name).read_bytes() == (exported[0].parent / name).read_bytes()


def test_arduino_library_properties_and_sketch(kws_tflite, tmp_path):
    spec = FirmwareSpec(name="kws", labels=KWS_LABELS, arena_bytes=ARENA_BYTES)

    export(kws_tflite, spec, tmp_path / "kws_model", layout="arduino")

    lines = (tmp_path / "kws_model" / "library.properties").read_text().splitlines()
    properties = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    assert set(properties) >= {"name", "version", "author", "maintainer", "sentence", "paragraph", "category",
                               "url", "architectures"}
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9 _.-]{0,62}", properties["name"])
    assert properties["category"] in ("Display", "Communication", "Signal Input/Output", "Sensors",
                                      "Device Control", "Timing", "Data Storage", "Data Processing", "Other")
    assert (tmp_path / "kws_model" / "src" / properties["includes"]).is_file()
    sketch = (tmp_path / "kws_model" / "examples" / "kws_inference" / "kws_inference.ino").read_text()
    assert sketch.index("#include <TensorFlowLite.h>") < sketch.index("#include <kws_example.h>")
    assert "void setup()" in sketch and "void loop()" in sketch and "kws_example_classify(" in sketch


def test_cmake_layout_configures_with_a_tflite_micro_target_and_names_it_when_missing(kws_tflite, tmp_path):
    cmake = _tool("cmake")
    spec = FirmwareSpec(name="kws", labels=KWS_LABELS, arena_bytes=ARENA_BYTES)
    export(kws_tflite, spec, tmp_path / "project" / "kws", layout="cmake")
    project = tmp_path / "project" / "CMakeLists.txt"
    head = "cmake_minimum_required(VERSION 3.13)\nproject(app CXX)\n"

    project.write_text(head + "add_library(tflite-micro INTERFACE)\nadd_subdirectory(kws)\n")
    done = subprocess.run([cmake, "-S", project.parent, "-B", tmp_path / "build"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    project.write_text(head + "add_subdirectory(kws)\n")
    done = subprocess.run([cmake, "-S", project.parent, "-B", tmp_path / "build2"], capture_output=True, text=True)
    assert done.returncode != 0
    assert "links a CMake target named tflite-micro, which is not defined" in " ".join(done.stderr.split())
    text = (tmp_path / "project" / "kws" / "CMakeLists.txt").read_text()
    assert "target_link_libraries(kws_model PUBLIC tflite-micro)" in text


def test_tflm_api_calls_live_only_in_the_example_and_resolver_templates():
    templates = {path.name: path.read_text() for path in TEMPLATES.iterdir()}
    code = {name: re.sub(r"//.*", "", text) for name, text in templates.items()}  # comments may name the API
    calls = {name: [api for api in TFLM_API if api in text] for name, text in code.items()}

    assert {name for name, found in calls.items() if found} == {"example.cc.in", "op_resolver.h.in"}
    example = code["example.cc.in"]
    for api in ("tflite::GetModel(", "tflite::MicroInterpreter static_interpreter(", ".AllocateTensors()",
                "->Invoke()", "->input(0)", "->output(0)", "!= TFLITE_SCHEMA_VERSION)"):
        assert example.count(api) == 1, api
    for text in (templates["example.cc.in"], templates["op_resolver.h.in"]):
        assert "TFLM API:" in text and "${tflm_version}" in text


def test_generated_files_name_the_tflm_version_the_checks_use(exported):
    installed = importlib.metadata.version("tflite_micro")

    assert installed in export_module.TFLM_VERSION, "templates were written for another TFLM; re-check the API"
    for name in ("kws_example.cc", "kws_op_resolver.h"):
        assert export_module.TFLM_VERSION in (exported[0].parent / name).read_text()


@pytest.fixture(scope="module")
def stub_tflm(tmp_path_factory) -> Path:
    """A folder of stand-ins for the TFLM headers the example and the KWS op resolver include."""
    stub_dir = tmp_path_factory.mktemp("stub_tflm")
    for header, text in STUB_TFLM.items():
        (stub_dir / header).parent.mkdir(parents=True, exist_ok=True)
        (stub_dir / header).write_text(text)
    methods = "\n".join(Template(STUB_METHOD).substitute(method=method) for method in KWS_RESOLVER_METHODS.values())
    (stub_dir / "tensorflow/lite/micro/micro_mutable_op_resolver.h").write_text(
        Template(STUB_RESOLVER_HEADER).substitute(methods=methods))
    return stub_dir


def test_example_quantizes_invokes_dequantizes_and_argmaxes(exported, kws_tflite, tmp_path, stub_tflm):
    compiler = _tool("g++")
    out_dir = exported[0].parent
    stub_dir = stub_tflm
    (tmp_path / "main.cc").write_text(EXAMPLE_PROGRAM)
    program = tmp_path / "example"
    _run([compiler, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-I", stub_dir, "-I", out_dir, tmp_path / "main.cc",
          out_dir / "kws_example.cc", out_dir / "kws_model_data.cc", "-o", program])
    raw = np.random.default_rng(0).uniform(-300, 300, 490).astype(np.float32)

    done = _run([program], input=" ".join(map(repr, raw.tolist())).encode())

    *registered, quantized, scores, best, _ = done.stdout.decode().split("\n")  # the stub resolver logs ops
    assert sorted(registered) == sorted(KWS_RESOLVER_METHODS.values())
    model = model_file.read(kws_tflite)
    ratio = ((raw * np.float32(0.5) + np.float32(-3.25)) / np.float32(model.inputs[0].scale)).astype(np.float64)
    rounded = np.floor(np.abs(ratio) + 0.5) * np.sign(ratio)  # lroundf: halves away from zero
    expected = np.clip(rounded + model.inputs[0].zero_point, -128, 127).astype(int)
    assert [int(q) for q in quantized.split()] == expected.tolist()
    assert expected.min() == -128 and expected.max() == 127  # the raw range exercises both clamps
    out_scale, out_zero = np.float32(model.outputs[0].scale), model.outputs[0].zero_point
    assert [float(score) for score in scores.split()] == [float(np.float32(q - out_zero) * out_scale)
                                                          for q in expected[:12]]
    assert int(best) == int(np.argmax(expected[:12]))
    assert done.stderr.decode() == f"kws: arena uses 2048 of {arena_with_margin(ARENA_BYTES)} bytes\n"


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every file and folder under root, relative, with file contents (None for folders)."""
    return {path.relative_to(root).as_posix(): (path.read_bytes() if path.is_file() else None)
            for path in sorted(root.rglob("*")) if path.is_file() or not any(path.iterdir())}


# --- golden vectors ----------------------------------------------------------------------------------------------

def _c_rows(text: str, array_name: str, columns: int) -> np.ndarray:
    body = text.split(f"const int8_t {array_name}[", 1)[1].split("= {", 1)[1].split("};", 1)[0]
    values = [int(value) for value in re.findall(r"-?\d+", body)]
    return np.array(values, dtype=np.int64).reshape(-1, columns)


def test_golden_vectors_hold_the_inputs_and_the_outputs_tflm_gives(kws_tflite, tmp_path):
    from tflite_micro.python.tflite_micro import runtime

    inputs = export_module.seeded_inputs(kws_tflite, count=3, seed=7)
    spec = FirmwareSpec(name="kws", labels=KWS_LABELS, arena_bytes=ARENA_BYTES)
    paths = export(kws_tflite, spec, tmp_path / "fw", golden_inputs=inputs)

    assert [path.name for path in paths] == list(PLAIN_FILES) + ["kws_golden_vectors.h"]
    header = paths[-1].read_text()
    assert "constexpr int KWS_GOLDEN_VECTOR_COUNT = 3;" in header
    np.testing.assert_array_equal(_c_rows(header, "kws_golden_inputs", 490), inputs.reshape(3, 490))
    # The expected outputs, computed here independently in the pip interpreter, one fresh interpreter per input.
    expected = []
    for sample in inputs:
        micro = runtime.Interpreter.from_bytes(kws_tflite, arena_size=1 << 20)
        micro.set_input(sample, 0)
        micro.invoke()
        expected.append(micro.get_output(0).reshape(-1))
    np.testing.assert_array_equal(_c_rows(header, "kws_golden_outputs", 12), np.array(expected))
    assert len({tuple(row) for row in expected}) > 1, "seeded inputs should not all give one output"


def test_golden_vectors_compile_for_cortex_m4_with_the_settings_header(kws_tflite, tmp_path):
    spec = FirmwareSpec(name="kws", labels=KWS_LABELS, arena_bytes=ARENA_BYTES)
    export(kws_tflite, spec, tmp_path / "fw", golden_inputs=export_module.seeded_inputs(kws_tflite))
    user = tmp_path / "check.cc"
    user.write_text('#include "kws_golden_vectors.h"\n'
                    "static_assert(KWS_GOLDEN_VECTOR_COUNT == 4, \"count\");\n"
                    "static_assert(KWS_GOLDEN_OUTPUT_ELEMENTS == KWS_CLASS_COUNT, \"outputs\");\n"
                    "int first() { return kws_golden_inputs[3][KWS_INPUT_ELEMENTS - 1] + kws_golden_outputs[0][0]; }\n")

    _run([_tool("arm-none-eabi-g++"), "-std=c++17", "-mthumb", "-mcpu=cortex-m4", "-Wall", "-Wextra", "-Werror",
          "-fsyntax-only", "-I", tmp_path / "fw", user])


def test_seeded_inputs_repeat_with_the_seed_and_quantized_inputs_follow_the_input_formula(kws_tflite):
    first, again = export_module.seeded_inputs(kws_tflite, seed=3), export_module.seeded_inputs(kws_tflite, seed=3)
    tensor = model_file.read(kws_tflite).inputs[0]
    x = np.array([[-1e9, 0.0, 1e9], [tensor.scale * 2.4, tensor.scale * 2.6, -tensor.scale * 2.6]])

    assert first.dtype == np.int8 and first.shape == (4, *tensor.shape)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, export_module.seeded_inputs(kws_tflite, seed=4))
    quantized = export_module.quantized_inputs(kws_tflite, x)
    zero = tensor.zero_point
    np.testing.assert_array_equal(quantized, np.array([[-128, zero, 127],
                                                       [zero + 2, zero + 3, zero - 3]], dtype=np.int8).clip(-128, 127))


def test_golden_inputs_of_the_wrong_size_are_rejected_and_write_nothing(kws_tflite, tmp_path):
    spec = FirmwareSpec(name="kws", labels=KWS_LABELS, arena_bytes=ARENA_BYTES)

    with pytest.raises(ExportError, match="golden inputs must be int8 model inputs of 490 values each"):
        export(kws_tflite, spec, tmp_path / "fw", golden_inputs=np.zeros((2, 491), dtype=np.int8))
    assert not (tmp_path / "fw").exists()
