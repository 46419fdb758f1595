"""`tinykd export`: the command end to end (a real subprocess, real models, the host compiler)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tinykd.boards import load_boards
from tinykd.errors import ExportError
from tinykd.export import LAYOUTS, arena_with_margin, c_identifier, read_labels
from tinykd.report import reports

# One per KWS class; a labels file cannot hold a line break inside a label, everything else is fair game.
LABELS = ('say "hi"', "back\\slash", "*/ end", "??=", "Größe ✓", "tab\there", "", "/* open", "%d %s",
          "trailing space ", "日本語", "_unknown_")

LABELS_PROGRAM = r"""
#include <cstdio>
#include "NAME_model_data.h"
#include "NAME_model_settings.h"

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  std::FILE* file = std::fopen(argv[1], "wb");
  if (file == nullptr) return 3;
  if (std::fwrite(NAME_model_data, 1, NAME_model_data_len, file) != NAME_model_data_len) return 4;
  std::fclose(file);
  for (int i = 0; i < UPPER_CLASS_COUNT; ++i) {
    std::fputs(UPPER_LABELS[i], stdout);
    std::fputc(0x1e, stdout);
  }
  std::printf("%u", UPPER_ARENA_BYTES);
  return 0;
}
"""


def tinykd(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinykd", *map(str, args)], capture_output=True, timeout=120)


def _read_back(out_dir: Path, name: str, tmp_path: Path) -> tuple[bytes, list[str], int]:
    """Compile the generated data and settings into a host program; return the model bytes, labels and arena."""
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.fail("g++ not found on PATH: the host compiler is required for these tests")
    source = LABELS_PROGRAM.replace("UPPER", name.upper()).replace("NAME", name)
    (tmp_path / "main.cc").write_text(source)
    program = tmp_path / "readback"
    built = subprocess.run([compiler, "-std=c++11", "-Wall", "-Wextra", "-Werror", "-I", out_dir,
                            tmp_path / "main.cc", out_dir / f"{name}_model_data.cc", "-o", program],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    done = subprocess.run([program, tmp_path / "model.tflite"], capture_output=True)
    assert done.returncode == 0
    *labels, arena = done.stdout.split(b"\x1e")
    return (tmp_path / "model.tflite").read_bytes(), [label.decode("utf-8") for label in labels], int(arena)


def test_export_with_labels_name_and_cmake_layout(shared_models, tmp_path):
    model = shared_models / "kws_ref_model.tflite"
    labels_file = tmp_path / "labels.txt"
    labels_file.write_bytes("\n".join(LABELS).encode("utf-8") + b"\n")

    done = tinykd("export", model, "-o", tmp_path / "fw", "--name", "keywords", "--labels", labels_file,
                  "--layout", "cmake")

    assert done.returncode == 0, done.stderr.decode()
    assert (tmp_path / "fw" / "CMakeLists.txt").is_file()
    tflite, labels, _ = _read_back(tmp_path / "fw", "keywords", tmp_path)
    assert tflite == model.read_bytes()
    assert labels == list(LABELS)


def test_defaults_name_labels_and_arena_from_the_report(shared_models, tmp_path):
    model = shared_models / "kws_ref_model.tflite"

    done = tinykd("export", model, "-o", tmp_path / "fw")

    assert done.returncode == 0, done.stderr.decode()
    tflite, labels, arena_bytes = _read_back(tmp_path / "fw", "kws_ref_model", tmp_path)
    assert tflite == model.read_bytes()
    assert labels == [f"class{index}" for index in range(12)]
    measured = max(result.arena_bytes for result in reports(tflite, list(load_boards().values())))
    assert arena_bytes == arena_with_margin(measured)
    assert sorted(path.name for path in (tmp_path / "fw").iterdir()) == sorted(
        f"kws_ref_model_{suffix}" for suffix in ("model_data.h", "model_data.cc", "model_settings.h",
                                                 "op_resolver.h", "example.h", "example.cc", "golden_vectors.h"))


def test_model_tflm_cannot_run_exits_2_naming_the_problem_and_writes_nothing(shared_models, tmp_path):
    done = tinykd("export", shared_models / "kws_ref_model_float32.tflite", "-o", tmp_path / "fw")

    stderr = done.stderr.decode()
    assert done.returncode == 2
    assert stderr.startswith("error: ") and "CONV_2D (operator 0) takes float32 input with int8 weights" in stderr
    assert "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content, message", [
    ("\n".join(LABELS[:11]).encode(), "11 labels given but the model output .* has 12 classes"),
    (b"yes\nno\n\xff\xfe\n", r"labels.txt: the labels file is not UTF-8 \(byte 7 is 0xff\)"),
], ids=["count", "not-utf8"])
def test_bad_labels_file_exits_2_and_writes_nothing(shared_models, tmp_path, content, message):
    labels_file = tmp_path / "labels.txt"
    labels_file.write_bytes(content)

    done = tinykd("export", shared_models / "kws_ref_model.tflite", "-o", tmp_path / "fw", "--labels", labels_file)

    assert done.returncode == 2
    assert re.search(message, done.stderr.decode()), done.stderr.decode()
    assert [path.name for path in tmp_path.iterdir()] == ["labels.txt"]


def test_bad_name_and_unknown_board_exit_2(shared_models, tmp_path):
    model = shared_models / "kws_ref_model.tflite"

    bad_name = tinykd("export", model, "-o", tmp_path / "fw", "--name", "9lives")
    bad_board = tinykd("export", model, "-o", tmp_path / "fw", "--board", "nope")

    assert bad_name.returncode == 2 and b"'9lives' is not a valid C identifier" in bad_name.stderr
    assert bad_board.returncode == 2 and b"--board: unknown board 'nope'" in bad_board.stderr
    assert list(tmp_path.iterdir()) == []


def test_help_offers_exactly_the_library_layouts():
    done = tinykd("export", "--help")

    assert done.returncode == 0
    assert f"[{'|'.join(LAYOUTS)}]".encode() in done.stdout


def test_export_never_imports_tensorflow(shared_models, tmp_path):
    code = ("import sys; from tinykd.cli import main; sys.argv = ['tinykd', 'export', sys.argv[1], '-o', sys.argv[2]]"
            "\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras', 'keras'))\n"
            "sys.stderr.write('IMPORTED ' + ','.join(bad))")
    done = subprocess.run([sys.executable, "-c", code, str(shared_models / "ad01_int8.tflite"), str(tmp_path / "fw")],
                          capture_output=True, text=True, timeout=120)

    assert done.stderr.strip().endswith("IMPORTED"), done.stderr
    assert (tmp_path / "fw" / "ad01_int8_model_data.cc").is_file()


def test_read_labels_keeps_every_character_but_line_ends_and_bom(tmp_path):
    path = tmp_path / "labels.txt"

    path.write_bytes(b"\xef\xbb\xbfyes\r\nno \r\n\r\n\xc3\xa9t\xc3\xa9\r\n")
    assert read_labels(path) == ("yes", "no ", "", "été")
    path.write_bytes(b"a\nb")
    assert read_labels(path) == ("a", "b")
    path.write_bytes(b"a\n\n")
    assert read_labels(path) == ("a", "")
    with pytest.raises(ExportError, match="missing.txt: cannot read the labels file"):
        read_labels(tmp_path / "missing.txt")


@pytest.mark.parametrize("stem, name", [
    ("kws_ref_model", "kws_ref_model"), ("vww-96 int8", "vww_96_int8"), ("96model", "model_96model"),
    ("größe", "gr_e"), ("__x__", "x"), ("", "model"), ("---", "model"), ("model.v2", "model_v2"),
])
def test_c_identifier_from_file_stem(stem, name):
    assert c_identifier(stem) == name
