"""The keyword synthesizer with the real espeak-ng and flite, at a few speakers: layout, held-out speakers, bytes."""

import hashlib
import json
import re
import shutil
import subprocess
import sys
import wave
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tinykd.cli import cli
from tinykd.config import DataConfig
from tinykd.data import keywords, load, wav
from tinykd.data.keyword_stream import STREAMED_FOLDER, stream_windows
from tinykd.data.keywords import DEFAULT_NEAR_MISS_CLIPS, KEYWORDS, NEAR_MISSES, NOISES, OTHER_WORDS, RATE_HZ, synthesize
from tinykd.errors import DataError

TINY = {"speakers": 5, "clips_per_speaker_word": 2}
NAME = re.compile(r"^[0-9a-f]{8}_nohash_\d+\.wav$")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("kws") / "set"
    return root, synthesize(root, seed=3, jobs=2, **TINY)


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def speaker_ids(lines) -> set[str]:
    return {line.split("/")[1].split("_nohash_")[0] for line in lines}


def test_layout_is_speech_commands(made):
    root, summary = made
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(("_background_noise_",) + KEYWORDS
                                                                           + OTHER_WORDS)
    assert summary.keyword_clips == 5 * 10 * 2
    assert summary.other_clips == 5 * (len(OTHER_WORDS) + (DEFAULT_NEAR_MISS_CLIPS - 1) * len(NEAR_MISSES))
    clips = sorted(root.glob("*/*_nohash_*.wav"))
    assert len(clips) == summary.clips and all(NAME.match(p.name) for p in clips)
    for path in clips[::7]:
        with wave.open(str(path)) as file:
            assert (file.getframerate(), file.getnchannels(), file.getsampwidth(), file.getnframes()) == \
                (16000, 1, 2, 16000)
    noise = sorted(p.name for p in (root / "_background_noise_").iterdir())
    assert noise == sorted(f"{name}_noise.wav" for name in NOISES) and len(summary.noise_files) == len(NOISES)
    for list_name in ("validation_list.txt", "testing_list.txt"):
        lines = (root / list_name).read_text().splitlines()
        assert lines and lines == sorted(lines) and all((root / line).is_file() for line in lines)
    assert not list(root.parent.glob(".*partial*"))


def test_more_near_miss_clips_only_add_files(made, tmp_path):
    root, _ = made  # DEFAULT_NEAR_MISS_CLIPS of each near miss
    fewer = synthesize(tmp_path / "fewer", seed=3, jobs=2, near_miss_clips=1, **TINY)
    assert fewer.other_clips == 5 * len(OTHER_WORDS)
    before, after = digests(tmp_path / "fewer"), digests(root)
    added = {name for name in after if name not in before}
    assert len(added) == 5 * (DEFAULT_NEAR_MISS_CLIPS - 1) * len(NEAR_MISSES)
    assert all(name.split("/")[0] in NEAR_MISSES and not name.endswith("_nohash_0.wav") for name in added)
    # Every clip the smaller set has is byte-identical in the larger; only the lists (naming the new clips) differ.
    assert {name: after[name] for name in before if name.endswith(".wav")} == \
        {name: digest for name, digest in before.items() if name.endswith(".wav")}
    with pytest.raises(DataError, match="near_miss_clips: 0 is below 1"):
        synthesize(tmp_path / "none", near_miss_clips=0, **TINY)


def test_extra_training_speakers_only_add_training_files(made, tmp_path):
    root, _ = made
    more = synthesize(tmp_path / "more", seed=3, jobs=2, extra_train_speakers=2, **TINY)
    assert dict(more.speakers) == {"train": 5, "val": 1, "test": 1}
    before, after = digests(root), digests(tmp_path / "more")
    # The held-out speakers, and so the validation and test clips a model is judged on, are those of 5 speakers.
    for held_out in ("validation_list.txt", "testing_list.txt"):
        assert (tmp_path / "more" / held_out).read_text() == (root / held_out).read_text()
    assert {name: after[name] for name in before if name.endswith(".wav")} == \
        {name: digest for name, digest in before.items() if name.endswith(".wav")}
    added = speaker_ids(name for name in after if name not in before and name.endswith(".wav"))
    assert len(added) == 2 and not added & speaker_ids(name for name in before if name.endswith(".wav"))
    for extra in (-1, 225):  # 229 speakers in the pool
        with pytest.raises(DataError, match=f"extra_train_speakers: {extra} is out of range.* use 0 to 224"):
            synthesize(tmp_path / "too_many", extra_train_speakers=extra, **TINY)


def test_a_flite_clip_factor_only_adds_clips_of_the_flite_voices_in_training(made, tmp_path):
    root, _ = made  # seed 3's five speakers: flite kal16 in training, four espeak-ng voices
    flite = next(speaker for speaker in keywords.choose_speakers(5, 3) if speaker.engine == "flite")
    synthesize(tmp_path / "flite", seed=3, jobs=2, flite_clip_factor=3, **TINY)
    before, after = digests(root), digests(tmp_path / "flite")
    for held_out in ("validation_list.txt", "testing_list.txt"):  # what a model is judged on is unchanged
        assert (tmp_path / "flite" / held_out).read_text() == (root / held_out).read_text()
        assert flite.id not in (root / held_out).read_text()
    assert {name: after[name] for name in before if name.endswith(".wav")} == \
        {name: digest for name, digest in before.items() if name.endswith(".wav")}
    added = [name for name in after if name not in before and name.endswith(".wav")]
    assert speaker_ids(added) == {flite.id}
    assert len(added) == 2 * sum(1 for name in before if name.endswith(".wav") and flite.id in name)
    assert json.loads((tmp_path / "flite" / keywords.SETTINGS_FILE).read_text())["flite_clip_factor"] == 3
    asking = DataConfig(format="speech_commands", path=str(tmp_path / "flite"), synthesize=True)
    with pytest.raises(DataError, match=r"synthesized with data.flite_clip_factor: 3, but the recipe asks for 1.*"
                                        r"or set data.flite_clip_factor: 3"):
        load(asking, seed=3)
    assert load(replace(asking, flite_clip_factor=3), seed=3).num_classes == 12
    with pytest.raises(DataError, match="flite_clip_factor: 0 is less than 1"):
        synthesize(tmp_path / "none", flite_clip_factor=0, **TINY)


def test_train_word_clips_only_add_clips_of_those_words_spoken_by_training_voices(made, tmp_path):
    root, _ = made  # seed 3's five speakers, two clips of each keyword, one of each other word
    synthesize(tmp_path / "words", seed=3, jobs=2, train_word_clips={"off": 4, "cat": 2}, **TINY)
    before, after = digests(root), digests(tmp_path / "words")
    held_out = set()
    for name in ("validation_list.txt", "testing_list.txt"):  # what a model is judged on is unchanged
        assert (tmp_path / "words" / name).read_text() == (root / name).read_text()
        held_out |= speaker_ids((root / name).read_text().split())
    assert {name: after[name] for name in before if name.endswith(".wav")} == \
        {name: digest for name, digest in before.items() if name.endswith(".wav")}
    added = [name for name in after if name not in before and name.endswith(".wav")]
    assert Counter(name.split("/")[0] for name in added) == {"off": 2 * 3, "cat": 1 * 3}  # 3 training speakers
    assert len(speaker_ids(added)) == 3 and not speaker_ids(added) & held_out
    made_with = json.loads((tmp_path / "words" / keywords.SETTINGS_FILE).read_text())
    assert made_with["train_word_clips"] == {"cat": 2, "off": 4}
    assert "train_word_clips" not in json.loads((root / keywords.SETTINGS_FILE).read_text())
    asking = DataConfig(format="speech_commands", path=str(tmp_path / "words"), synthesize=True)
    with pytest.raises(DataError, match=r"synthesized with data.train_word_clips: \['cat=2', 'off=4'\], but the "
                                        r"recipe asks for \[\]"):
        load(asking, seed=3)
    assert load(replace(asking, train_word_clips=("off=4", "cat=2")), seed=3).num_classes == 12
    with pytest.raises(DataError, match="train_word_clips: 'offf' is not a word the synthesizer speaks"):
        synthesize(tmp_path / "none", train_word_clips={"offf": 4}, **TINY)
    with pytest.raises(DataError, match="train_word_clips: off=0 is below 1"):
        synthesize(tmp_path / "none", train_word_clips={"off": 0}, **TINY)
    result = CliRunner().invoke(cli, ["data", "keywords", str(tmp_path / "none"), "--train-word-clips", "off6"])
    assert result.exit_code == 2 and "'off6' is not \"word=N\" with N at least 1; write e.g. off=6" in result.output
    result = CliRunner().invoke(cli, ["data", "keywords", str(tmp_path / "none"), "--train-word-clips", "off=6",
                                      "--train-word-clips", "off=4"])
    assert result.exit_code == 2 and "names a word twice (off); give each word one count" in result.output


def test_training_stream_windows_only_add_training_clips_that_hold_their_word(made, tmp_path):
    root, _ = made
    summary = synthesize(tmp_path / "windows", seed=3, jobs=2, extend=stream_windows(0.5, 3, 2), **TINY)
    before, after = digests(root), digests(tmp_path / "windows")
    for held_out in ("validation_list.txt", "testing_list.txt"):  # what a model is judged on is unchanged
        assert (tmp_path / "windows" / held_out).read_text() == (root / held_out).read_text()
    assert {name: after[name] for name in before if name.endswith(".wav")} == \
        {name: digest for name, digest in before.items() if name.endswith(".wav")}
    added = sorted(name for name in after if name not in before and name.endswith(".wav"))
    folders = Counter(name.split("/")[0] for name in added)
    assert summary.extended["train_stream_windows"] == folders and set(folders) - set(KEYWORDS) == {STREAMED_FOLDER}
    assert sum(folders[word] for word in KEYWORDS) % 3 == 0  # each keyword cut whole at three places
    for name in added:  # a keyword window holds speech well over its quietest tenth of a second
        samples = wav.read(tmp_path / "windows" / name)[0][:, 0].astype(float)
        tenths = np.sqrt(np.mean(samples.reshape(10, -1) ** 2, axis=1))
        assert len(samples) == RATE_HZ and (name.startswith(STREAMED_FOLDER) or tenths.max() > 3 * tenths.min())
    assert json.loads((tmp_path / "windows" / keywords.SETTINGS_FILE).read_text())["train_stream_minutes"] == 0.5
    asking = DataConfig(format="speech_commands", path=str(tmp_path / "windows"), synthesize=True)
    with pytest.raises(DataError, match=r"synthesized with data.train_stream_minutes: 0.5, but the recipe asks for "
                                        r"0.*or set data.train_stream_minutes: 0.5"):
        load(asking, seed=3)
    data = load(replace(asking, train_stream_minutes=0.5), seed=3)
    plain = load(replace(asking, path=str(root), synthesize=False), seed=3)
    assert len(data.val.y) == len(plain.val.y) and len(data.test.y) == len(plain.test.y)
    assert len(data.train.y) > len(plain.train.y)
    with pytest.raises(DataError, match="train_stream_minutes: -1 is negative"):
        stream_windows(-1, 3)


def test_a_recipe_asking_for_other_training_speakers_than_the_set_has_is_told_so(made, tmp_path):
    root, _ = made
    asking = DataConfig(format="speech_commands", path=str(root), synthesize=True, extra_train_speakers=2)
    assert json.loads((root / keywords.SETTINGS_FILE).read_text())["extra_train_speakers"] == 0
    with pytest.raises(DataError, match=rf"data.path: {re.escape(str(root))} holds a keyword set synthesized with "
                                        r"data.extra_train_speakers: 0, but the recipe asks for 2.*delete the folder"):
        load(asking, seed=3)
    with pytest.raises(DataError, match=r"synthesized with data.held_out_speakers: random, but the recipe asks for "
                                        r"matched.*or set data.held_out_speakers: random"):
        load(replace(asking, extra_train_speakers=0, held_out_speakers="matched"), seed=3)
    older = tmp_path / "older"  # made before sets said what they were made with: no extra speakers
    shutil.copytree(root, older)
    (older / keywords.SETTINGS_FILE).unlink()
    with pytest.raises(DataError, match="synthesized with data.extra_train_speakers: 0,"):
        load(replace(asking, path=str(older)), seed=3)
    (older / keywords.noise_file("babble")).unlink()  # no noise of ours: the user's own data, trained on as it is
    assert load(replace(asking, path=str(older)), seed=3).num_classes == 12


def test_validation_and_test_speakers_are_never_heard_in_training(made):
    root, summary = made
    val = speaker_ids((root / "validation_list.txt").read_text().splitlines())
    test = speaker_ids((root / "testing_list.txt").read_text().splitlines())
    everyone = speaker_ids(str(p.relative_to(root)) for p in root.glob("*/*_nohash_*.wav"))
    train = everyone - val - test
    assert len(everyone) == 5 and len(val) == 1 and len(test) == 1 and len(train) == 3 and not val & test
    assert dict(summary.speakers) == {"train": 3, "val": 1, "test": 1}
    for speaker in val | test:  # every clip of a held-out speaker is listed, none trains
        listed = (root / "validation_list.txt").read_text() + (root / "testing_list.txt").read_text()
        assert all(f"{p.parent.name}/{p.name}" in listed for p in root.glob(f"*/{speaker}_nohash_*.wav"))


def test_same_seed_same_bytes_whatever_the_jobs(made, tmp_path):
    root, _ = made
    again = tmp_path / "again"
    synthesize(again, seed=3, jobs=1, **TINY)
    assert digests(again) == digests(root)
    other = tmp_path / "other"
    synthesize(other, seed=4, jobs=2, **TINY)
    assert digests(other).keys() != digests(root).keys()  # other speakers, so other names
    assert digests(other)["_background_noise_/white_noise.wav"] != digests(root)["_background_noise_/white_noise.wav"]


def test_clips_vary_in_voice_timing_level_and_noise(made):
    root, _ = made
    clips = [wave.open(str(p)).readframes(16000) for p in sorted((root / "yes").glob("*.wav"))]
    samples = np.stack([np.frombuffer(c, "<i2").astype(float) for c in clips])
    assert len({c for c in clips}) == len(clips)  # no two clips alike, even one speaker's two takes
    peaks = np.abs(samples).max(axis=1)
    assert 32767 * 10 ** (-27 / 20) < peaks.min() and len(np.unique(peaks)) == len(peaks)
    onsets = [np.flatnonzero(np.abs(s) > 0.3 * np.abs(s).max())[0] for s in samples]
    assert max(onsets) - min(onsets) > 1600  # time shifts spread words over more than 100 ms
    assert np.all(np.abs(samples[:, :80]).max(axis=1) > 0)  # noise under everything, never digital silence


def test_every_speaker_in_the_pool_has_its_own_id_and_name():
    everyone = keywords.choose_speakers(keywords.POOL, seed=0)
    assert len({speaker.id for speaker in everyone}) == len({speaker.name for speaker in everyone}) == len(everyone) \
        == len(set(everyone))
    assert {keywords.Speaker("espeak-ng", "en-029", "whisper").name, keywords.Speaker("flite", "kal16").name} == \
        {"espeak-ng en-029+whisper", "flite kal16"}  # what `espeak-ng -v` and `flite -voice` take after the engine
    assert [s.engine for s in everyone[:9]] == ["flite"] + ["espeak-ng"] * 7 + ["flite"]


def test_noises_have_their_character():
    noises = keywords.generate_noises(seed=0)
    assert set(noises) == set(NOISES)
    spectra = {name: np.abs(np.fft.rfft(samples)) ** 2 for name, samples in noises.items()}
    frequency = np.fft.rfftfreq(len(noises["white"]), 1 / RATE_HZ)

    def low_share(name: str) -> float:
        return spectra[name][frequency < 500].sum() / spectra[name].sum()

    assert low_share("white") < 0.1 < low_share("pink") < low_share("brown")
    assert abs(frequency[np.argmax(spectra["hum"])] - 50.0) < 0.5
    for samples in noises.values():
        assert np.std(samples) == pytest.approx(keywords.NOISE_RMS)


def test_synthetic_set_loads_as_twelve_classes(made):
    root, _ = made
    data = load(DataConfig(format="speech_commands", path=str(root)), seed=0)
    assert data.labels == ("_silence_", "_unknown_") + KEYWORDS
    assert (len(data.val), len(data.test)) == (20 + 2 + 2, 20 + 2 + 2) and len(data.train) == 60 + 6 + 6
    assert dict(data.repairs) == {"resampled": 0, "mixed_down": 0, "padded": 0, "trimmed": 0}


def test_bad_requests_fail_before_any_work(tmp_path, monkeypatch):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="already exists and is not an empty folder"):
        synthesize(tmp_path / "full", **TINY)
    with pytest.raises(DataError, match="use 3 to"):
        synthesize(tmp_path / "few", speakers=2)
    with pytest.raises(DataError, match="seed: -1 is negative"):
        synthesize(tmp_path / "few", seed=-1, **TINY)
    monkeypatch.setattr(keywords.shutil, "which", lambda name: None if name == "flite" else "/usr/bin/" + name)
    with pytest.raises(DataError, match=re.escape("flite not found") + ".*apt-get install espeak-ng flite"):
        synthesize(tmp_path / "x", **TINY)
    assert not (tmp_path / "few").exists() and not (tmp_path / "x").exists()


def test_cli_writes_the_set_and_reports_it(tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(cli, ["data", "keywords", str(out), "--speakers", "3", "--jobs", "2", "--seed", "1",
                                      "--near-miss-clips", "2"])
    assert result.exit_code == 0, result.output
    assert f"wrote {3 * (30 + len(OTHER_WORDS) + len(NEAR_MISSES))} clips" in result.output
    assert "1 train, 1 val, 1 test" in result.output
    assert (out / "testing_list.txt").is_file()
    defaults = {p.name: p.default for p in cli.commands["data"].commands["keywords"].params}
    assert defaults["speakers"] == keywords.DEFAULT_SPEAKERS
    assert defaults["near_miss_clips"] == keywords.DEFAULT_NEAR_MISS_CLIPS


def test_cli_turns_errors_into_exit_code_2(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.wav").write_bytes(b"")
    result = subprocess.run([sys.executable, "-m", "tinykd", "data", "keywords", str(tmp_path / "taken")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 2 and "already exists and is not an empty folder" in result.stderr


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matched_held_out_speakers_give_validation_and_test_the_same_kinds_of_voice(seed):
    chosen = keywords.choose_speakers(keywords.DEFAULT_SPEAKERS, seed)
    random_split = keywords.split_speakers(chosen, seed)
    matched = keywords.split_speakers(chosen, seed, "matched")
    assert keywords.split_speakers(chosen, seed, "matched") == matched  # seeded

    def kinds(split_of, split):
        return Counter(keywords.voice_kind(speaker) for speaker, where in split_of.items() if where == split)

    for split_of in (random_split, matched):
        assert sorted(Counter(split_of.values()).items()) == [("test", 13), ("train", 102), ("val", 13)]
    assert kinds(matched, "val") == kinds(matched, "test")
    assert set(kinds(matched, "val")) & set(kinds(matched, "train"))  # training keeps voices of the held-out kinds
    # Drawn at random they differ: seed 0 gave validation flite's awb, whisper and three steph, and test none.
    assert kinds(random_split, "val") != kinds(random_split, "test")
    with pytest.raises(DataError, match="held_out: 'balanced' is not one of random, matched"):
        keywords.split_speakers(chosen, seed, "balanced")
    with pytest.raises(DataError, match="held_out: matched needs a kind of voice with two speakers each among 5 "
                                        "speakers, and there are 0; use more speakers or held_out: random"):
        keywords.split_speakers([keywords.Speaker("espeak-ng", "en", variant)
                                 for variant in keywords.ESPEAK_VARIANTS[:5]], seed, "matched")


def test_a_set_made_with_matched_held_out_speakers_holds_twins_and_says_so(tmp_path):
    root = tmp_path / "matched"
    # 9 speakers: one validation and one test speaker, and two flite voices (every eighth) make at least one twin.
    summary = synthesize(root, seed=3, jobs=2, speakers=9, clips_per_speaker_word=1, near_miss_clips=1,
                         held_out="matched")
    assert dict(summary.speakers) == {"train": 7, "val": 1, "test": 1}
    kind_of = {speaker.id: keywords.voice_kind(speaker) for speaker in keywords.choose_speakers(9, 3)}
    (val,) = speaker_ids((root / "validation_list.txt").read_text().split())
    (test,) = speaker_ids((root / "testing_list.txt").read_text().split())
    assert val != test and kind_of[val] == kind_of[test]
    assert json.loads((root / keywords.SETTINGS_FILE).read_text())["held_out"] == "matched"
    asking = DataConfig(format="speech_commands", path=str(root), synthesize=True, held_out_speakers="matched")
    assert load(asking, seed=3).num_classes == 12
    with pytest.raises(DataError, match="synthesized with data.held_out_speakers: matched, but the recipe asks for "
                                        "random"):
        load(replace(asking, held_out_speakers="random"), seed=3)
