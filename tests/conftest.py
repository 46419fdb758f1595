"""Shared fixtures for the tinykd test suite."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_models() -> Path:
    """The real MLPerf Tiny reference .tflite models (see its README.md); read-only."""
    return Path(__file__).resolve().parents[2] / "shared/models/mlperf_tiny"


REPO = Path(__file__).resolve().parents[1]
SMOKE_RECIPE = REPO / "pipelines" / "smoke.yaml"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


def bench_module(name: str):
    """bench/NAME.py loaded as a module (bench/ is scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def smoke_cfg():
    """The smoke recipe, loaded through the real config loader."""
    from tinykd import config

    return config.load(SMOKE_RECIPE)


@pytest.fixture(scope="session")
def smoke_data(smoke_cfg):
    """Real Fashion-MNIST (Debian's IDX files), cut to the smoke recipe's sample counts."""
    from tinykd.data import load

    return load(smoke_cfg.data, smoke_cfg.data.seed)


@pytest.fixture(scope="session")
def tiny_teacher(smoke_cfg, smoke_data):
    """A small trained teacher (two epochs on the smoke data), seeded."""
    from tinykd import models
    from tinykd.distill import Schedule, train_on_labels

    teacher = models.build(smoke_cfg.teacher.model, smoke_data.input_shape, smoke_data.num_classes, "teacher")
    return train_on_labels(teacher, smoke_data, Schedule(epochs=2, batch_size=64, learning_rate=2e-3, seed=0))


@pytest.fixture(scope="session")
def tiny_keywords(tmp_path_factory) -> Path:
    """A tiny synthetic Speech Commands set (espeak-ng and flite; 10 speakers, one each for validation and test)."""
    from tinykd.data.keywords import synthesize

    root = tmp_path_factory.mktemp("keywords") / "speech_commands"
    synthesize(root, seed=0, speakers=10, clips_per_speaker_word=2, jobs=2)
    return root


def tinykd_process(*args, **kwargs) -> "subprocess.Popen":
    """The real `tinykd` command of this checkout in a child process (umask 022, unbuffered output)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    env.pop("TINYKD_VERBOSE", None)
    return subprocess.Popen([sys.executable, "-m", "tinykd", *args], cwd=REPO, env=env, umask=0o022,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


class CliBuild:
    """One finished `tinykd build` of the smoke recipe from an empty runs folder, then a no-op rebuild."""

    def __init__(self, runs: Path):
        self.runs = runs
        self.run = runs / "smoke"
        self.outputs = []  # (stdout, stderr) of the build and of the rebuild
        for _ in range(2):
            process = tinykd_process("build", str(SMOKE_RECIPE), "--runs", str(runs))
            stdout, stderr = process.communicate(timeout=900)
            assert process.returncode == 0, stdout + stderr
            self.outputs.append((stdout, stderr))


@pytest.fixture(scope="session")
def smoke_cli_build(tmp_path_factory) -> CliBuild:
    """The smoke recipe built once by the real CLI, shared by the tests of what a build writes and prints."""
    return CliBuild(tmp_path_factory.mktemp("cli-build") / "runs")
