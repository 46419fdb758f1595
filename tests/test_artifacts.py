"""What a build writes is readable by others: every file gets the mode a plain open() gives (0644 under umask
022), temporary files included, though mkstemp makes them 0600."""

import stat

from tinykd import artifacts


def test_atomic_writes_get_the_umask_mode(tmp_path):
    written = [artifacts.write_bytes(tmp_path / "a" / "model.tflite", b"TFL3"),
               artifacts.write_json(tmp_path / "stage.json", {"key": "k"}),
               artifacts.copy_file(tmp_path / "stage.json", tmp_path / "copy.json")]
    assert artifacts.FILE_MODE == 0o644  # pytest runs under umask 022 here, as the build child below
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == artifacts.FILE_MODE, path


def test_every_file_a_real_build_writes_is_readable_by_others(smoke_cli_build):
    files = [p for p in smoke_cli_build.runs.rglob("*") if p.is_file()]
    names = {p.relative_to(smoke_cli_build.runs).as_posix() for p in files}
    assert {"smoke/report.md", "smoke/report.json", "smoke/convert/model.tflite", "smoke/convert/stage.json",
            "smoke/manifest.json", "smoke/accuracy_vs_size.png", "smoke/export/smoke_model_data.cc"} <= names
    assert any(name.startswith(".teacher_cache/") and name.endswith(".keras") for name in names)
    modes = {p.relative_to(smoke_cli_build.runs).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert {name: mode for name, mode in modes.items() if mode != "0o644"} == {}
