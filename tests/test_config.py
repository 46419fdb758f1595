"""Recipes load into frozen dataclasses, and every mistake names the file, the dotted key and the fix."""

import dataclasses

import pytest

from tinykd import config
from tinykd.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_every_shipped_recipe_loads(repo):
    recipes = sorted((repo / "pipelines").glob("*.yaml"))
    assert {p.name for p in recipes} >= {"smoke.yaml", "fashion_mnist.yaml"}
    for recipe in recipes:
        cfg = config.load(recipe)
        assert cfg.name and cfg.target.board


@pytest.mark.parametrize("recipe", ["fashion_mnist.yaml", "kws_dscnn.yaml"])
def test_default_recipes_prune_what_the_board_feels(repo, recipe):
    # Magnitude pruning's zeros save no flash, RAM or time on TFLite Micro: the defaults remove whole filters
    # toward a latency budget on their own board and retrain with rewinding; smoke mode keeps the rewind short.
    cfg = config.load(repo / "pipelines" / recipe)
    assert cfg.prune.method == "structured"
    assert cfg.prune.budget.latency_ms is not None and cfg.prune.budget.board in (None, cfg.target.board)
    assert cfg.prune.rewind_epochs > 1
    assert f"budget: {{latency_ms: {cfg.prune.budget.latency_ms:g}}}" in (repo / "pipelines" / recipe).read_text()
    assert config.load(repo / "pipelines" / recipe, smoke=True).prune.rewind_epochs == 1


def test_magnitude_pruning_stays_available(repo):
    cfg = config.load(repo / "pipelines" / "fashion_mnist.yaml",
                      {"prune": "{method: magnitude, target_sparsity: 0.3, epochs: 2}"})
    assert cfg.prune.method == "magnitude" and cfg.prune.target_sparsity == 0.3 and cfg.prune.budget is None


def test_recipe_values_are_typed_and_frozen(smoke_cfg):
    assert smoke_cfg.name == "smoke"
    assert smoke_cfg.distill.temperature == 4.0 and isinstance(smoke_cfg.distill.temperature, float)
    assert smoke_cfg.distill.student.filters == (8, 16)
    with pytest.raises(dataclasses.FrozenInstanceError):
        smoke_cfg.distill.alpha = 0.5


def test_typo_names_file_key_and_suggestion(tmp_path):
    path = write(tmp_path, "name: x\ndistill:\n  temperatur: 6\n")
    with pytest.raises(ConfigError) as error:
        config.load(path)
    assert str(error.value) == f"{path}: distill.temperatur: unknown key (did you mean 'temperature'?)"


def test_nested_typo_in_student(tmp_path):
    path = write(tmp_path, "name: x\ndistill:\n  student: {filtres: [8]}\n")
    with pytest.raises(ConfigError, match=r"distill\.student\.filtres: unknown key \(did you mean 'filters'\?\)"):
        config.load(path)


@pytest.mark.parametrize("text, key, words", [
    ("distill: {temperature: hot}", "distill.temperature", "expected float"),
    ("distill: {alpha: 1.5}", "distill.alpha", "must be in [0, 1]"),
    ("data: {format: speech_commands, path: kws, unknown_fraction: 1.5}", "data.unknown_fraction", "must be in [0, 1]"),
    ("data: {format: speech_commands, path: kws, train_unknown_fraction: 4.5}", "data.train_unknown_fraction",
     "must be in [0, 4]"),
    ("data: {format: speech_commands, path: kws, extra_train_speakers: -1}", "data.extra_train_speakers",
     "must be 0 or more"),
    ("data: {extra_train_speakers: 10}", "data.extra_train_speakers", "applies only to format speech_commands"),
    ("data: {format: speech_commands, path: kws, held_out_speakers: balanced}", "data.held_out_speakers",
     "must be one of random, matched"),
    ("data: {held_out_speakers: matched}", "data.held_out_speakers", "applies only to format speech_commands"),
    ("data: {format: speech_commands, path: kws, flite_clip_factor: 0}", "data.flite_clip_factor",
     "must be 1 or more"),
    ("data: {flite_clip_factor: 8}", "data.flite_clip_factor", "applies only to format speech_commands"),
    ("data: {format: speech_commands, path: kws, train_word_clips: [off6]}", "data.train_word_clips",
     "'off6' is not \"word=N\" with N at least 1"),
    ("data: {format: speech_commands, path: kws, train_word_clips: ['off=0']}", "data.train_word_clips",
     "'off=0' is not \"word=N\""),
    ("data: {train_word_clips: ['off=6']}", "data.train_word_clips", "applies only to format speech_commands"),
    ("data: {format: speech_commands, path: kws, train_word_clips: ['off=6', 'up=6', 'off=4']}",
     "data.train_word_clips", "names a word twice (off); give each word one count"),
    ("data: {format: speech_commands, path: kws, train_stream_minutes: -5}", "data.train_stream_minutes",
     "must be 0 (none) or more"),
    ("data: {train_stream_minutes: 60}", "data.train_stream_minutes", "applies only to format speech_commands"),
    ("prune: {target_sparsity: 1.0}", "prune.target_sparsity", "must be in (0, 1)"),
    ("teacher: {epochs: 0}", "teacher.epochs", "at least 1"),
    ("teacher: {model: {arch: resnet9000}}", "teacher.model.arch", "must be one of"),
    ("target: {board: esp32}", "target.board", "unknown board"),
    ("data: {val_fraction: 0.9}", "data.val_fraction", "between 0 and 0.5"),
    ("distill: {epochs: true}", "distill.epochs", "expected int"),
    ("prune: {rewind_epochs: 4}", "prune.rewind_epochs", "applies to method: structured only"),
    ("verify: {firmware: sometimes}", "verify.firmware", "must be auto, always or never"),
])
def test_bad_values_name_the_dotted_key(tmp_path, text, key, words):
    path = write(tmp_path, f"name: x\n{text}\n")
    with pytest.raises(ConfigError) as error:
        config.load(path)
    assert str(error.value).startswith(f"{path}: {key}: ")
    assert words in str(error.value)


def test_overrides_are_parsed_and_checked(smoke_cfg):
    cfg = config.load(config_path(), config.parse_overrides(["distill.temperature=6", "prune=none",
                                                            "distill.student.filters=[8, 16]"]))
    assert cfg.distill.temperature == 6.0
    assert cfg.prune is None
    assert cfg.distill.student.filters == (8, 16)
    with pytest.raises(ConfigError, match=r"distill\.temperatre: unknown key \(did you mean 'temperature'\?\)"):
        config.load(config_path(), {"distill.temperatre": "6"})
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        config.parse_overrides(["distill.temperature"])


def test_none_skips_stages_and_smoke_shrinks(tmp_path):
    path = write(tmp_path, "name: x\nprune: none\nquantize: none\n")
    cfg = config.load(path)
    assert cfg.prune is None and cfg.quantize is None
    smoke = config.load(path, smoke=True)
    assert smoke.name == "x-smoke"
    assert smoke.prune is None  # smoke does not bring back a stage the recipe switched off
    assert smoke.teacher.epochs == 1 and smoke.distill.epochs == 1
    assert smoke.data.max_train_samples == config.SMOKE_OVERRIDES["data.max_train_samples"]


def test_unreadable_and_non_mapping_recipes(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the recipe"):
        config.load(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        config.load(write(tmp_path, "- a\n- b\n"))


def config_path():
    from conftest import SMOKE_RECIPE

    return SMOKE_RECIPE


def test_unquoted_yes_no_keywords_get_a_quoting_hint(tmp_path):
    path = write(tmp_path, "name: k\ndata: {format: speech_commands, path: x, keywords: [yes, no]}\n")
    with pytest.raises(ConfigError, match=r"data.keywords\[0\]: expected a word, got true: .*quote the word"):
        config.load(path)


def test_frontend_only_with_audio_and_matching_rate(tmp_path):
    with pytest.raises(ConfigError, match="frontend: turns audio into features; data.format fashion_mnist"):
        config.load(write(tmp_path, "name: k\nfrontend: {}\n"))
    path = write(tmp_path, "name: k\ndata: {format: speech_commands, path: x}\nfrontend: {sample_rate_hz: 8000, upper_band_limit_hz: 3800}\n")
    with pytest.raises(ConfigError, match=r"frontend.sample_rate_hz: must equal data.sample_rate_hz \(16000\)"):
        config.load(path)
    cfg = config.load(write(tmp_path, "name: k\ndata: {format: speech_commands, path: x}\nfrontend: {}\n"))
    assert cfg.frontend.feature_shape == (49, 40)


def test_negative_data_seed_is_refused_at_load(tmp_path):
    with pytest.raises(ConfigError, match="data.seed: must be 0 or more"):
        config.load(write(tmp_path, "name: k\ndata: {seed: -1}\n"))


def tinykd_cli(*args, cwd):
    """The real `tinykd` command in a child process, with this checkout first on the path."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "tinykd", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("override, line", [
    ("distill.temperature=hot", "error: --set distill.temperature=hot: distill.temperature: expected float, "
                                "got 'hot'"),
    ("prune=nope", "error: --set prune=nope: prune: expected a mapping of keys, or none to leave prune out; "
                   "got 'nope' (did you mean 'none'?)"),
    ("distill.temperatre=6", "error: --set distill.temperatre=6: distill.temperatre: unknown key "
                             "(did you mean 'temperature'?)"),
])
def test_a_bad_override_is_blamed_on_the_set_option_not_the_recipe(tmp_path, override, line):
    result = tinykd_cli("build", str(config_path()), "--set", override, "--runs", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [line] and result.stdout == ""


def test_a_missing_data_path_names_the_recipe_and_key_and_no_package(tmp_path):
    recipe = write(tmp_path, "name: mine\ndata: {path: my_images}\n")
    result = tinykd_cli("build", str(recipe), "--runs", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: {recipe}: data.path: {tmp_path / 'my_images'} does not exist; point it at the folder holding the "
        "four Fashion-MNIST IDX files, or remove data.path to use the installed dataset"]
    assert "apt-get" not in result.stderr
    moved = tinykd_cli("build", str(recipe), "--set", "data.path=elsewhere", "--runs", str(tmp_path / "runs"),
                       cwd=tmp_path)
    assert moved.returncode == 2
    assert moved.stderr.startswith(f"error: --set data.path=elsewhere: data.path: {tmp_path / 'elsewhere'} does "
                                   "not exist")


def test_missing_paths_of_other_formats_are_refused_at_load(tmp_path):
    with pytest.raises(ConfigError) as error:
        config.load(write(tmp_path, "name: a\ndata: {format: arrays, path: sensor.npz}\n"))
    assert str(error.value).startswith(f"{tmp_path / 'recipe.yaml'}: data.path: {tmp_path / 'sensor.npz'} does "
                                       "not exist; point it at your data")
    with pytest.raises(ConfigError, match=r"recipe.yaml: teacher.path: .*big.keras does not exist; give a .keras"):
        config.load(write(tmp_path, "name: a\nteacher: {path: big.keras}\n"))
