"""The Speech Commands reader on small folders in its layout: labels, splits, shares, fingerprints and bad audio.

Every clip of the fake data set is a constant: 100 * speaker + word number + 1, so a row of `x` tells which file
it came from and the tests can check where each file went.
"""

import math
import os
import re
import wave
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from tinykd import config
from tinykd.config import DataConfig
from tinykd.data import keywords, load, speech_commands
from tinykd.errors import ConfigError, DataError

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
OTHERS = ("bed", "cat", "tree", "wow")
WORDS = KEYWORDS + OTHERS
SPEAKERS = 10  # speaker 0 is validation, speaker 1 test, the rest train
RATE = 16000


def write_wav(path: Path, samples, rate: int = RATE, channels: int = 1) -> Path:
    """16-bit PCM through the stdlib alone, so the fixture does not trust the code under test."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = np.asarray(samples, dtype="<i2")
    with wave.open(str(path), "wb") as file:
        file.setnchannels(channels)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes(pcm.tobytes())
    return path


def code(speaker: int, word: str) -> int:
    return 100 * speaker + WORDS.index(word) + 1


def speaker_of(value: float) -> int:
    return int(value) // 100


def clip_name(speaker: int, word: str, number: int = 0) -> str:
    return f"{word}/spk{speaker:02d}_nohash_{number}.wav"


def make_layout(root: Path, lists: bool = True, noise: bool = True) -> Path:
    for speaker in range(SPEAKERS):
        for word in WORDS:
            write_wav(root / clip_name(speaker, word), np.full(RATE, code(speaker, word)))
    if lists:
        (root / "validation_list.txt").write_text("".join(clip_name(0, w) + "\n" for w in WORDS))
        (root / "testing_list.txt").write_text("".join(clip_name(1, w) + "\n" for w in WORDS))
    if noise:
        rng = np.random.default_rng(0)
        write_wav(root / "_background_noise_" / "hiss.wav", rng.integers(-3000, 3000, 3 * RATE))
    return root


def sc_cfg(root: Path, **changes) -> DataConfig:
    return DataConfig(**({"format": "speech_commands", "path": str(root)} | changes))


@pytest.fixture
def layout(tmp_path) -> Path:
    return make_layout(tmp_path / "sc")


def test_labels_are_silence_unknown_then_keywords_and_x_is_raw_pcm(layout):
    data = load(sc_cfg(layout), seed=0)
    assert data.labels == ("_silence_", "_unknown_") + KEYWORDS  # TensorFlow's speech_commands order
    assert data.input_shape == (16000,) and data.train.x.dtype == np.float32
    assert np.array_equal(data.train.x, np.rint(data.train.x)) and np.abs(data.train.x).max() <= 32768
    assert (data.preprocessing.raw_scale, data.preprocessing.raw_offset) == (1.0, 0.0)
    assert data.preprocessing.description == "16 kHz mono int16 PCM"
    assert dict(data.repairs) == {"resampled": 0, "mixed_down": 0, "padded": 0, "trimmed": 0}
    custom = load(sc_cfg(layout, keywords=("go", "bed")), seed=0)  # an "other" word can be a keyword too
    assert custom.labels == ("_silence_", "_unknown_", "go", "bed")
    spoken = custom.train.x[custom.train.y == 3, 0]
    assert {int(v) % 100 - 1 for v in spoken} == {WORDS.index("bed")}


def test_splits_follow_the_list_files(layout):
    data = load(sc_cfg(layout), seed=0)
    for split, speakers in ((data.val, {0}), (data.test, {1}), (data.train, set(range(2, SPEAKERS)))):
        spoken = split.x[split.y >= 1, 0]
        assert {speaker_of(v) for v in spoken} == speakers
        keyword_values = sorted(split.x[split.y >= 2, 0].astype(int))
        assert keyword_values == sorted(code(s, w) for s in speakers for w in KEYWORDS)
        for row, label in zip(split.x[split.y >= 2, 0], split.y[split.y >= 2]):
            assert WORDS[int(row) % 100 - 1] == KEYWORDS[label - 2]


@pytest.mark.parametrize("fraction", [0.1, 0.25, 1.0])
def test_unknown_and_silence_shares_per_split(layout, fraction):
    data = load(sc_cfg(layout, unknown_fraction=fraction, silence_fraction=fraction), seed=0)
    for split, speakers in ((data.train, 8), (data.val, 1), (data.test, 1)):
        keyword_count = 10 * speakers
        share = math.ceil(keyword_count * fraction)
        counts = np.bincount(split.y, minlength=12)
        assert counts[1] == min(share, len(OTHERS) * speakers) and counts[0] == share
        assert all(WORDS[int(v) % 100 - 1] in OTHERS for v in split.x[split.y == 1, 0])
    none = load(sc_cfg(layout, unknown_fraction=0.0, silence_fraction=0.0), seed=0)
    assert set(np.unique(none.train.y)) == set(range(2, 12))


def test_unknown_picks_and_order_are_seeded(layout):
    first, again, other = (load(sc_cfg(layout, unknown_fraction=0.3), seed=s) for s in (0, 0, 1))
    assert np.array_equal(first.train.x, again.train.x) and np.array_equal(first.train.y, again.train.y)
    picks = [set(d.train.x[d.train.y == 1, 0].astype(int)) for d in (first, other)]
    assert picks[0] != picks[1]
    assert not np.array_equal(first.train.y, other.train.y)


def test_silence_is_scaled_background_noise_or_zero_without_it(tmp_path):
    data = load(sc_cfg(make_layout(tmp_path / "sc")), seed=0)
    silence = data.train.x[data.train.y == 0]
    levels = np.abs(silence).max(axis=1)
    assert len(silence) == 8 and levels.max() <= 3000 and levels.min() > 0  # the hiss peaks below 3000
    assert len(np.unique(levels)) > 1  # a random gain per clip
    bare = load(sc_cfg(make_layout(tmp_path / "bare", noise=False)), seed=0)
    assert np.all(bare.train.x[bare.train.y == 0] == 0) and "0 background files" in bare.source


def test_without_lists_a_speaker_hash_decides_the_split(tmp_path):
    root = make_layout(tmp_path / "sc", lists=False)
    data = load(sc_cfg(root, val_fraction=0.3, test_fraction=0.3), seed=0)
    owners = [{speaker_of(v) for v in split.x[split.y >= 2, 0]} for split in (data.train, data.val, data.test)]
    assert all(owners) and not (owners[0] & owners[1] or owners[0] & owners[2] or owners[1] & owners[2])
    assert set().union(*owners) == set(range(SPEAKERS)) and "hashed speaker names" in data.source
    name = "spk03_nohash_0.wav"
    assert speech_commands._which_set(name, sc_cfg(root)) == speech_commands._which_set(
        name.replace("_0.wav", "_7.wav"), sc_cfg(root))


def test_fingerprint_follows_files_lists_and_settings(layout):
    base = load(sc_cfg(layout), seed=0).fingerprint
    assert load(sc_cfg(layout), seed=0).fingerprint == base
    seen = {base}

    def changed(data) -> str:
        assert data.fingerprint not in seen
        seen.add(data.fingerprint)
        return data.fingerprint

    changed(load(sc_cfg(layout), seed=1))
    changed(load(sc_cfg(layout, unknown_fraction=0.2), seed=0))
    write_wav(layout / clip_name(5, "yes"), np.full(RATE + 10, 7))  # content (size) changes
    changed(load(sc_cfg(layout), seed=0))
    write_wav(layout / clip_name(5, "yes", 1), np.full(RATE, 7))  # a file is added
    changed(load(sc_cfg(layout), seed=0))
    with open(layout / "testing_list.txt", "a") as file:  # the split changes
        file.write(clip_name(5, "yes", 1) + "\n")
    changed(load(sc_cfg(layout), seed=0))
    stamp = (layout / clip_name(6, "no")).stat().st_mtime_ns
    os.utime(layout / clip_name(6, "no"), ns=(stamp + 10**9, stamp + 10**9))  # same size, newer file
    changed(load(sc_cfg(layout), seed=0))


def test_unreadable_wav_is_named_or_skipped(layout):
    broken = layout / clip_name(4, "left")
    broken.write_bytes(b"RIFF....WAVEthis is not audio")
    truncated = layout / clip_name(5, "up")
    truncated.write_bytes(truncated.read_bytes()[:5000])  # the header promises 16000 frames
    with pytest.raises(DataError) as error:
        load(sc_cfg(layout), seed=0)
    message = str(error.value)
    assert message.startswith(f"{broken}: unreadable WAV") or message.startswith(f"{truncated}: unreadable WAV")
    assert "data.skip_unreadable: true" in message
    data = load(sc_cfg(layout, skip_unreadable=True), seed=0)
    assert sorted(data.skipped) == sorted([str(broken), str(truncated)])
    assert np.bincount(data.train.y, minlength=12)[2:].sum() == 80 - 2


def test_empty_files_are_skipped_and_listed(layout):
    zero_frames = write_wav(layout / clip_name(3, "stop"), [])
    zero_bytes = layout / clip_name(3, "go")
    zero_bytes.write_bytes(b"")
    data = load(sc_cfg(layout), seed=0)  # no skip_unreadable needed: nothing there to repair
    assert sorted(data.skipped) == sorted([str(zero_frames), str(zero_bytes)])
    assert np.bincount(data.train.y, minlength=12)[2:].sum() == 80 - 2


def test_other_sample_rate_is_resampled_and_counted(layout):
    tone = (10000 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)).round()
    write_wav(layout / clip_name(0, "yes"), tone, rate=8000)  # the validation speaker's "yes", at 8 kHz
    data = load(sc_cfg(layout), seed=0)
    assert dict(data.repairs)["resampled"] == 1 and dict(data.repairs)["padded"] == 0
    row = data.val.x[data.val.y == 2][0]
    expected = 10000 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    assert np.abs(row - expected)[200:-200].max() <= 2.0  # int16 rounding plus the filter's ripple


def test_stereo_is_mixed_down_and_counted(layout):
    value = code(0, "no")
    write_wav(layout / clip_name(0, "no"), np.stack([np.full(RATE, value - 40), np.full(RATE, value + 40)], 1),
              channels=2)
    data = load(sc_cfg(layout), seed=0)
    assert dict(data.repairs)["mixed_down"] == 1
    assert np.all(data.val.x[data.val.y == 3] == value)  # the mean of the two channels


def test_short_clips_are_padded_and_long_ones_keep_their_loudest_second(layout):
    short_value, long_value = code(0, "up"), code(0, "down")
    write_wav(layout / clip_name(0, "up"), np.full(RATE // 2, short_value))
    quiet_then_loud = np.concatenate([np.full(RATE // 2, 1), np.full(RATE, long_value), np.full(RATE // 4, 1)])
    write_wav(layout / clip_name(0, "down"), quiet_then_loud)
    data = load(sc_cfg(layout), seed=0)
    assert dict(data.repairs)["padded"] == 1 and dict(data.repairs)["trimmed"] == 1
    padded = data.val.x[data.val.y == 4][0]
    assert np.all(padded[: RATE // 2] == short_value) and np.all(padded[RATE // 2:] == 0)
    assert np.all(data.val.x[data.val.y == 5][0] == long_value)


def test_missing_folder_says_how_to_make_it(tmp_path):
    missing = tmp_path / "kws"
    with pytest.raises(DataError) as error:
        load(sc_cfg(missing), seed=0)
    assert f"`tinykd data keywords {missing}`" in str(error.value) and "data.synthesize: true" in str(error.value)
    assert not missing.exists()
    missing.mkdir()  # an empty folder, e.g. made ahead for the data: the same advice
    with pytest.raises(DataError, match=re.escape(f"`tinykd data keywords {missing}`")):
        load(sc_cfg(missing), seed=0)


def test_synthesize_true_makes_the_folder_then_loads_it(tmp_path, monkeypatch):
    tiny = partial(keywords.synthesize, speakers=3, clips_per_speaker_word=1, jobs=2)
    monkeypatch.setattr(keywords, "synthesize", tiny)  # the real synthesizer, at a test's size
    path = tmp_path / "made"
    data = load(sc_cfg(path, synthesize=True), seed=0)
    assert (path / "validation_list.txt").is_file() and (path / "_background_noise_").is_dir()
    assert data.labels[2:] == KEYWORDS and (len(data.train), len(data.val), len(data.test)) == (12, 12, 12)
    assert set(np.unique(data.val.y)) == set(range(12))


def test_missing_keyword_folder_and_missing_listed_clip_are_named(layout):
    with pytest.raises(DataError, match=r"no folder for keyword\(s\) marvin; it has bed, cat"):
        load(sc_cfg(layout, keywords=("yes", "marvin")), seed=0)
    with open(layout / "validation_list.txt", "a") as file:
        file.write("yes/ghost_nohash_0.wav\n")
    with pytest.raises(DataError) as error:
        load(sc_cfg(layout), seed=0)
    assert str(error.value).startswith(f"{layout / 'validation_list.txt'}: lists yes/ghost_nohash_0.wav")


def test_recipe_keys_are_checked_at_load(tmp_path):
    recipe = tmp_path / "kws.yaml"

    def data_section(text: str):
        recipe.write_text(f"data: {{format: speech_commands, path: sc, {text}}}\n")
        return config.load(recipe).data

    loaded = data_section("keywords: ['yes', 'no', 'marvin'], unknown_fraction: 0.2, synthesize: true")
    assert loaded.keywords == ("yes", "no", "marvin") and loaded.unknown_fraction == 0.2 and loaded.synthesize
    assert loaded.path == str((tmp_path / "sc").resolve()) and (loaded.sample_rate_hz, loaded.clip_ms) == (16000, 1000)
    for text, key in (("keywords: ['_silence_']", "keywords"), ("keywords: []", "keywords"),
                      ("silence_fraction: 1.5", "silence_fraction"), ("clip_ms: 50", "clip_ms"),
                      ("sample_rate_hz: 11025, clip_ms: 999", "clip_ms"), ("keywords: [yes, no]", "keywords[0]")):
        with pytest.raises(ConfigError, match=re.escape(f"{recipe}: data.{key}: ")):
            data_section(text)
    data_section("synthesize: true")
    with pytest.raises(ConfigError, match="data.synthesize: applies only to format speech_commands"):
        config.load(recipe, {"data.format": "fashion_mnist", "data.path": "null"})


def test_the_training_split_can_take_more_negatives_while_val_and_test_keep_their_clips(layout):
    cfg = sc_cfg(layout, unknown_fraction=0.2, silence_fraction=0.2)
    same = load(cfg, seed=0)
    more = load(replace(cfg, train_unknown_fraction=1.0, train_silence_fraction=0.5), seed=0)
    # (silence clips, unknown clips) in each training split
    before, after = (np.bincount(split.y, minlength=2)[:2] for split in (same.train, more.train))
    keywords = int((same.train.y >= 2).sum())
    assert after[1] > before[1] and after[0] == math.ceil(0.5 * keywords)
    for split in ("val", "test"):
        np.testing.assert_array_equal(getattr(more, split).x, getattr(same, split).x)
        np.testing.assert_array_equal(getattr(more, split).y, getattr(same, split).y)
    assert more.fingerprint != same.fingerprint


def test_a_share_larger_than_the_unknown_pool_takes_it_all_and_says_so(layout):
    # 8 training speakers: 80 keyword clips and 32 unknown clips
    enough = load(sc_cfg(layout, train_unknown_fraction=0.4), seed=0)
    short = load(sc_cfg(layout, train_unknown_fraction=1.0), seed=0)
    assert int((short.train.y == speech_commands.UNKNOWN_INDEX).sum()) == 32
    assert "unknown clips, fewer" not in enough.source
    assert "the train split takes all 32 unknown clips, fewer than the 80 data.train_unknown_fraction asks " \
           "for" in short.source
