"""A build prints tinykd's own lines and real warnings only: TensorFlow's start-up and converter chatter is kept
off the terminal at its source (tinykd.keras_shim), and `--verbose` brings it back."""

import re
import shutil
import warnings

from conftest import SMOKE_RECIPE, tinykd_process

NOISE = ("absl::InitializeLog", "oneDNN", "cuda", "cuInit", "fully_quantize", "inference_type",
         "tf.lite.Interpreter is deprecated", "WARNING", "I0000", "E0000", "W0000")
TINYKD_LINE = re.compile(r" *\d+\.\ds (\[[a-z]+\] |building |done: )"  # tinykd's own, timed lines
                         r"|Epoch \d+/\d+$|\d+/\d+ - \d+m?s - loss: ")  # Keras' epoch progress (--quiet drops it)


def test_a_build_and_a_rebuild_print_no_tensorflow_noise(smoke_cli_build):
    for stdout, stderr in smoke_cli_build.outputs:
        assert stderr == ""
        for word in NOISE:
            assert word not in stdout, word
        strangers = [line for line in stdout.splitlines() if not TINYKD_LINE.match(line)]
        assert strangers == []
    build, rebuild = (stdout for stdout, _ in smoke_cli_build.outputs)
    assert "[teacher] training" in build and "[convert] done" in build
    assert "[convert] unchanged" in rebuild and "[distill] running" not in rebuild


def test_verbose_shows_what_is_hidden(smoke_cli_build, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(smoke_cli_build.runs, runs)  # a no-op rebuild of a copy: it still imports TensorFlow
    process = tinykd_process("build", str(SMOKE_RECIPE), "--runs", str(runs), "--verbose")
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stdout + stderr
    assert "absl::InitializeLog" in stderr and "[convert] unchanged" in stdout


def test_the_interpreter_gives_no_deprecation_warning(smoke_cli_build):
    from tinykd.keras_shim import lite_interpreter

    tflite = (smoke_cli_build.run / "convert" / "model.tflite").read_bytes()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lite_interpreter(tflite, reference_kernels=True).allocate_tensors()
    assert [str(w.message) for w in caught] == []
