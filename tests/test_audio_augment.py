"""data.augment for keyword clips: time shift and background noise on the waveform, before the real front-end,
fresh every epoch, never on validation, test or calibration inputs."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from conftest import SMOKE_RECIPE
from test_data_streaming import make_clips
from test_speech_commands import sc_cfg
from tinykd import config
from tinykd.audio import FrontendConfig
from tinykd.audio.augment import feature_masker, resampled, waveform_augmenter
from tinykd.data import load, streaming
from tinykd.distill import Schedule, _dataset
from tinykd.errors import ConfigError
from tinykd.keras_shim import tf

SAMPLES = 1600


def run(apply, clip, seed):
    return apply(tf.constant(clip, tf.float32), tf.constant(seed, tf.int64)).numpy()


def test_a_shift_moves_the_clip_by_at_most_time_shift_and_zero_pads_the_gap():
    apply = waveform_augmenter(config.AugmentConfig(time_shift_ms=10), 16000, SAMPLES, ())  # 160 samples
    clip = np.zeros(SAMPLES, np.float32)
    clip[800] = 1000.0
    moves = set()
    for seed in range(60):
        out = run(apply, clip, [seed, 7])
        (where,) = np.flatnonzero(out)
        assert out[where] == 1000.0 and abs(where - 800) <= 160
        moves.add(where - 800)
    assert len(moves) > 20 and min(moves) < 0 < max(moves)
    edge = np.full(SAMPLES, 5.0, np.float32)
    shifted = [run(apply, edge, [seed, 0]) for seed in range(10)]
    assert any(out[0] == 0.0 or out[-1] == 0.0 for out in shifted)  # padded with silence, not wrapped


def test_background_is_a_cut_of_a_recording_at_a_gain_up_to_the_volume_in_the_asked_share_of_clips():
    ramp = 40.0 * np.arange(5 * SAMPLES, dtype=np.float32)  # a recording whose cuts rise 40 per sample
    augment = config.AugmentConfig(background_frequency=0.5, background_volume=0.1)
    apply = waveform_augmenter(augment, 16000, SAMPLES, (ramp,))
    mixed = 0
    for seed in range(200):
        out = run(apply, np.zeros(SAMPLES, np.float32), [seed, 3])
        if not out.any():
            continue
        mixed += 1
        assert np.all(np.diff(out) >= 0)  # one contiguous cut of the ramp, not wrapped or pieced together
        gain = (out[-1] - out[0]) / (40.0 * (SAMPLES - 1))
        assert 0.0 <= gain <= 0.1 + 1e-3
        assert out[0] / max(gain, 1e-9) <= 40.0 * (4 * SAMPLES) + 1 / max(gain, 1e-9)  # the cut fits the recording
    assert 70 <= mixed <= 130  # half of 200, binomial spread well inside


def test_the_same_seed_gives_the_same_clip_and_values_stay_int16():
    rng = np.random.default_rng(0)
    loud = rng.integers(-32768, 32767, SAMPLES).astype(np.float32)
    augment = config.AugmentConfig(time_shift_ms=20, background_frequency=1.0, background_volume=1.0)
    apply = waveform_augmenter(augment, 16000, SAMPLES, (rng.normal(0, 20000, 5 * SAMPLES),))
    first, again, other = run(apply, loud, [1, 2]), run(apply, loud, [1, 2]), run(apply, loud, [2, 2])
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.min() >= -32768 and first.max() <= 32767 and np.array_equal(first, np.round(first))


def test_noise_without_recordings_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match="data.augment.background_frequency: .*_background_noise_"):
        waveform_augmenter(config.AugmentConfig(background_frequency=0.8, background_volume=0.1), 16000, SAMPLES, ())


@pytest.mark.parametrize("stream", ["never", "always"])
def test_training_features_change_every_epoch_and_nothing_else_is_augmented(tmp_path, stream):
    augment = config.AugmentConfig(time_shift_ms=100, background_frequency=0.8, background_volume=0.5)
    cfg = sc_cfg(make_clips(tmp_path / "sc"), keywords=("yes", "no"), unknown_fraction=0.5, silence_fraction=0.5,
                 stream=stream)
    plain = load(cfg, seed=3, frontend=FrontendConfig())
    data = load(replace(cfg, augment=augment), seed=3, frontend=FrontendConfig())
    assert streaming.is_streamed(data.train.x) and data.fingerprint != plain.fingerprint
    # What the pipeline reads outside training (calibration rows, predict) is the clip's own features.
    np.testing.assert_array_equal(np.asarray(data.train.x), np.asarray(plain.train.x))
    np.testing.assert_array_equal(data.val.x, plain.val.x)
    np.testing.assert_array_equal(data.test.x, plain.test.x)

    schedule = Schedule(epochs=2, batch_size=64, learning_rate=1e-3, seed=5, augment=augment)
    training = _dataset(data.train, None, schedule, training=True)
    first, second = epoch_rows(training), epoch_rows(training)  # the order is shuffled: compare sorted rows
    assert not np.array_equal(first, rows(plain.train.x)) and not np.array_equal(first, second)
    # A new pipeline with the same seed repeats the first epoch.
    np.testing.assert_array_equal(epoch_rows(_dataset(data.train, None, schedule, training=True)), first)


def test_copies_are_computed_once_and_each_epoch_takes_one_of_them_per_clip(tmp_path):
    augment = config.AugmentConfig(time_shift_ms=100, background_frequency=0.8, background_volume=0.5, copies=3)
    cfg = sc_cfg(make_clips(tmp_path / "sc"), keywords=("yes", "no"), unknown_fraction=0.5, silence_fraction=0.5,
                 augment=augment)
    data = load(cfg, seed=3, frontend=FrontendConfig())
    fresh = load(replace(cfg, augment=replace(augment, copies=0)), seed=3, frontend=FrontendConfig())
    assert data.fingerprint != fresh.fingerprint  # other training inputs: cached stages are not reused
    np.testing.assert_array_equal(np.asarray(data.train.x), np.asarray(fresh.train.x))  # calibration, predict

    schedule = Schedule(epochs=2, batch_size=64, learning_rate=1e-3, seed=5, augment=augment)
    seen = {}  # clip index -> the copies its epochs took; the clips are numbered through a second target
    training = data.train.x.examples((data.train.y, np.arange(len(data.train))), schedule.seed)
    epochs = [[(x, int(index)) for x, (_, index) in training.as_numpy_iterator()] for _ in range(4)]
    bank = data.train.x._bank(schedule.seed)
    assert bank.shape == (3, len(data.train), 49, 40, 1) and bank.dtype == np.int8
    scale, offset = data.train.x.scale, data.train.x.offset
    plain = np.asarray(fresh.train.x)
    for epoch in epochs:
        assert sorted(index for _, index in epoch) == list(range(len(data.train)))
        for x, index in epoch:  # every training input is one of its clip's copies, never the plain clip
            matches = [copy for copy in range(3) if np.array_equal(x, bank[copy, index] * scale + offset)]
            assert matches, f"clip {index} is none of its copies"
            seen.setdefault(index, set()).update(matches)
    assert not all(np.array_equal(bank[0, i], bank[1, i]) for i in range(len(data.train)))
    changed = [i for i in range(len(data.train)) if not np.array_equal(bank[0, i] * scale + offset, plain[i])]
    assert len(changed) > len(data.train) // 2
    assert sum(len(copies) > 1 for copies in seen.values()) > len(data.train) // 2  # epochs pick other copies
    # A copy is what augmenting afresh with its seed pair gives: the same augmenter and front-end, only once.
    draw = np.random.default_rng(schedule.seed).integers(0, np.iinfo(np.int64).max, 3)[1]
    again = fresh.train.x.augmented(data.train.x.augment)._sample(tf.constant(4, tf.int64),
                                                                  tf.constant([draw, 4], tf.int64), scaled=False)
    np.testing.assert_array_equal(again.numpy(), bank[1, 4])
    assert data.train.x._bank(schedule.seed) is bank  # kept, not recomputed


def rows(x) -> np.ndarray:
    """The inputs as sorted flat rows: the same multiset of inputs gives the same array in any order."""
    flat = np.asarray(x).reshape(len(x), -1)
    return flat[np.lexsort(flat.T[::-1])]


def epoch_rows(dataset) -> np.ndarray:
    return rows(np.concatenate([x for x, _ in dataset.as_numpy_iterator()]))


@pytest.mark.parametrize("changes, message", [
    ({}, "data.augment: time_shift_ms, .* change audio clips"),  # the smoke recipe is Fashion-MNIST
    ({"data.format": "speech_commands", "data.path": "x", "data.labeled_samples": "64"},
     "data.augment: audio augmentation cannot be combined with data.unlabeled or data.labeled_samples"),
    ({"data.augment": "{background_frequency: 0.8}"}, "data.augment.background_volume: and background_frequency go"),
    ({"data.augment": "{flip_horizontal: true, copies: 4}"}, "data.augment.copies: keeps changed audio clips"),
    ({"data.augment": "{time_shift_ms: 100, copies: 65}"}, "data.augment.copies: must be from 0"),
])
def test_audio_augmentation_is_refused_where_it_cannot_apply(changes, message):
    with pytest.raises(ConfigError, match=message):
        config.load(SMOKE_RECIPE, {"data.augment": "{time_shift_ms: 100}"} | changes)


def test_feature_masks_hide_at_most_their_widths_and_change_with_the_seed():
    frames, channels = 49, 40
    apply = feature_masker(config.AugmentConfig(time_mask_frames=5, freq_mask_channels=4), frames, channels)
    features = np.random.default_rng(0).integers(-127, 128, (frames, channels, 1)).astype(np.float32)
    hidden_rows, hidden_columns, outcomes = set(), set(), set()
    for seed in range(200):
        masked = apply(tf.constant(features), tf.constant([seed, 3], tf.int64)).numpy()
        hidden = masked[..., 0] != features[..., 0]
        assert np.all(masked[hidden] == -128.0)  # the floor, nothing else changes
        rows, columns = np.flatnonzero(hidden.all(axis=1)), np.flatnonzero(hidden.all(axis=0))
        assert len(rows) <= 5 and len(columns) <= 4
        assert np.all(np.diff(rows) == 1) and np.all(np.diff(columns) == 1)  # one band each
        assert np.array_equal(hidden, np.isin(np.arange(frames), rows)[:, None] | np.isin(np.arange(channels),
                                                                                            columns)[None, :])
        hidden_rows.update(rows.tolist())
        hidden_columns.update(columns.tolist())
        outcomes.add((tuple(rows), tuple(columns)))
    assert {0, frames - 1} <= hidden_rows and {0, channels - 1} <= hidden_columns  # bands reach both edges
    assert len(outcomes) > 150  # the seed moves them
    again = apply(tf.constant(features), tf.constant([7, 3], tf.int64)).numpy()
    np.testing.assert_array_equal(again, apply(tf.constant(features), tf.constant([7, 3], tf.int64)).numpy())


def test_a_mask_as_wide_as_the_features_is_refused_with_its_key():
    with pytest.raises(ConfigError, match="data.augment.freq_mask_channels: 40 could hide all 40 channels"):
        feature_masker(config.AugmentConfig(freq_mask_channels=40), 49, 40)


def test_banked_copies_are_masked_afresh_every_epoch_and_never_outside_training(tmp_path):
    augment = config.AugmentConfig(time_shift_ms=100, copies=2, time_mask_frames=8, freq_mask_channels=6)
    cfg = sc_cfg(make_clips(tmp_path / "sc"), keywords=("yes", "no"), unknown_fraction=0.5, silence_fraction=0.5,
                 augment=augment)
    data = load(cfg, seed=3, frontend=FrontendConfig())
    unmasked = load(replace(cfg, augment=replace(augment, time_mask_frames=0, freq_mask_channels=0)), seed=3,
                    frontend=FrontendConfig())
    assert data.fingerprint != unmasked.fingerprint
    np.testing.assert_array_equal(np.asarray(data.val.x), np.asarray(unmasked.val.x))
    np.testing.assert_array_equal(np.asarray(data.train.x), np.asarray(unmasked.train.x))  # calibration, predict

    training = data.train.x.examples((data.train.y, np.arange(len(data.train))), 5)
    bank = data.train.x._bank(5)
    floor = -128 * data.train.x.scale + data.train.x.offset
    masks = {}  # clip index -> the hidden patterns its epochs saw
    for _ in range(4):
        for x, (_, index) in training.as_numpy_iterator():
            copies = [bank[copy, index, ..., 0] * data.train.x.scale + data.train.x.offset for copy in range(2)]
            nearest = min(copies, key=lambda copy: np.count_nonzero(x[..., 0] != copy))
            changed = x[..., 0] != nearest
            assert np.all(x[..., 0][changed] == floor)  # one of its copies with some of it set to the floor
            masks.setdefault(int(index), set()).add(changed.tobytes())
    assert sum(len(seen) > 1 for seen in masks.values()) > len(masks) // 2  # epochs mask them differently


def test_speed_perturbation_moves_a_tone_by_the_rate_about_the_clips_middle():
    rate_hz, samples = 16000, 16000
    tone = 8000.0 * np.sin(2 * np.pi * 500.0 * np.arange(samples) / rate_hz)

    def peak_hz(clip):
        return np.argmax(np.abs(np.fft.rfft(clip * np.hanning(samples)))) * rate_hz / samples

    for rate in (0.9, 1.1):
        played = resampled(tf.constant(tone, tf.float32), tf.constant(rate, tf.float32)).numpy()
        assert abs(peak_hz(played) - 500.0 * rate) <= 2.0
        if rate > 1.0:  # faster: the ends come from beyond the clip (0.05 s either side), zeros
            assert np.all(played[:700] == 0.0) and np.all(played[-700:] == 0.0) and np.any(played[800:900])
    np.testing.assert_allclose(resampled(tf.constant(tone, tf.float32), tf.constant(1.0)).numpy(), tone, atol=1e-3)

    apply = waveform_augmenter(config.AugmentConfig(speed_perturbation=0.1), rate_hz, samples, ())
    heard = {round(peak_hz(run(apply, tone, [seed, 1])), 1) for seed in range(20)}
    assert len(heard) > 10 and min(heard) >= 450.0 - 2.0 and max(heard) <= 550.0 + 2.0
    # Without it, a recipe's shift and noise draws are what they were before the option existed.
    old = waveform_augmenter(config.AugmentConfig(time_shift_ms=10), rate_hz, samples, ())
    both = waveform_augmenter(config.AugmentConfig(time_shift_ms=10, speed_perturbation=0.1), rate_hz, samples, ())
    click = np.zeros(samples, np.float32)
    click[8000] = 1000.0
    moved = [int(np.argmax(run(fn, click, [4, 2]))) for fn in (old, both)]
    assert abs(moved[0] - moved[1]) <= 1  # the same shift; the speed change moves the middle by under a sample
