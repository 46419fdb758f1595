"""Reproducible builds: the same recipe, seed, machine and versions give the same .tflite and C files, whether the
build ran straight through, was killed and resumed, or is re-run by `tinykd build --check`; each build's
manifest.json says what it read and wrote."""

import hashlib
import json
import os
import signal
import time
from pathlib import Path

from conftest import SMOKE_RECIPE, tinykd_process
from tinykd import manifest


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def deliverables(run):
    """The files a build must reproduce byte for byte: every .tflite and the exported C/C++ files."""
    files = sorted(run.rglob("*.tflite")) + sorted(p for p in (run / "export").iterdir() if p.name != "stage.json")
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in files}


def test_the_manifest_holds_recipe_data_artifacts_and_versions(smoke_cli_build):
    run = smoke_cli_build.run
    saved = json.loads((run / "manifest.json").read_text())
    assert saved["recipe"]["name"] == "smoke" and saved["recipe"]["distill"]["temperature"] == 4.0
    assert sorted(os.path.basename(p) for p in saved["data_files"]) == [
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz"]
    for path, digest in saved["data_files"].items():
        assert sha256(Path(path)) == digest
    assert set(saved["artifacts"]) == set(deliverables(run))
    for name, digest in {**saved["artifacts"], **saved["other_files"]}.items():
        assert sha256(run / name) == digest, name
    assert {"report.json", "convert/stage.json", "quantize/quantize.h5"} <= set(saved["other_files"])
    assert set(saved["versions"]) >= {"python", "tensorflow", "tensorflow-model-optimization", "tflite-micro",
                                      "tinykd"}
    assert saved["versions"]["tensorflow"].startswith("2.")


def test_differences_name_each_changed_missing_or_new_file():
    expected = {"recipe": {"seed": 0}, "data_files": {"/d/train.gz": "a" * 64},
                "artifacts": {"convert/model.tflite": "1" * 64, "export/m.cc": "2" * 64},
                "versions": {"tensorflow": "2.21.0"}}
    assert manifest.differences(expected, json.loads(json.dumps(expected))) == []
    rebuilt = {"recipe": {"seed": 1}, "data_files": {"/d/train.gz": "a" * 64},
               "artifacts": {"convert/model.tflite": "3" * 64, "export/new.h": "4" * 64},
               "versions": {"tensorflow": "2.22.0"}}
    assert manifest.differences(expected, rebuilt) == [
        "the recipe differs in seed (check with the recipe and --set of the build)",
        "artifact convert/model.tflite: sha256 111111111111 in the manifest, 333333333333 rebuilt",
        "artifact export/m.cc: in the manifest, not written by the rebuild",
        "artifact export/new.h: written by the rebuild, not in the manifest",
        "versions changed since the manifest (tensorflow 2.21.0 -> 2.22.0), which can explain it"]


def test_check_rebuilds_from_scratch_and_finds_the_same_bytes(smoke_cli_build, tmp_path):
    runs = tmp_path / "runs"
    (runs / "smoke").mkdir(parents=True)
    (runs / "smoke" / "manifest.json").write_bytes((smoke_cli_build.run / "manifest.json").read_bytes())
    process = tinykd_process("build", str(SMOKE_RECIPE), "--runs", str(runs), "--check", "--quiet")
    stdout, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stdout + stderr
    assert "check passed: every .tflite and exported file is byte-identical" in stdout
    assert "[teacher] training" in stdout  # from scratch: no teacher cache, no reused stage
    assert sorted(p.name for p in (runs / "smoke").iterdir()) == ["manifest.json"]  # the rebuild was elsewhere

    tampered = json.loads((runs / "smoke" / "manifest.json").read_text())
    tampered["artifacts"]["export/smoke_model_data.cc"] = "0" * 64
    found = manifest.differences(tampered, json.loads((smoke_cli_build.run / "manifest.json").read_text()))
    rebuilt = sha256(smoke_cli_build.run / "export" / "smoke_model_data.cc")
    assert found == [f"artifact export/smoke_model_data.cc: sha256 {'0' * 12} in the manifest, {rebuilt[:12]} rebuilt"]


def test_check_without_a_manifest_says_to_build_first(tmp_path):
    process = tinykd_process("build", str(SMOKE_RECIPE), "--runs", str(tmp_path), "--check")
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 2
    assert stderr.splitlines()[-1] == (f"error: {tmp_path / 'smoke' / 'manifest.json'}: no manifest to check "
                                       "against; build once without --check first")


def test_a_build_killed_at_several_points_resumes_to_the_same_bytes(smoke_cli_build, tmp_path):
    # Each kill lands in a different place: during distillation's training, during QAT, after conversion.
    for trigger, delay in (("[distill] running", 1.0), ("[quantize] running", 1.0), ("[convert] done", 0.0)):
        process = tinykd_process("build", str(SMOKE_RECIPE), "--runs", str(tmp_path), "--quiet",
                                 start_new_session=True)
        seen = []
        for line in process.stdout:
            seen.append(line)
            if trigger in line:
                time.sleep(delay)
                os.killpg(process.pid, signal.SIGKILL)
                break
        process.communicate(timeout=60)
        assert process.returncode == -signal.SIGKILL, "".join(seen)
    assert (tmp_path / "smoke" / "convert" / "stage.json").is_file()
    assert not (tmp_path / "smoke" / "export" / "stage.json").exists()
    process = tinykd_process("build", str(SMOKE_RECIPE), "--runs", str(tmp_path), "--quiet")
    stdout, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stdout + stderr
    assert "[convert] unchanged" in stdout and "[export] done" in stdout
    assert deliverables(tmp_path / "smoke") == deliverables(smoke_cli_build.run)
    saved = json.loads((tmp_path / "smoke" / "manifest.json").read_text())
    assert saved["artifacts"] == json.loads((smoke_cli_build.run / "manifest.json").read_text())["artifacts"]
