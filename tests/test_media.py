"""mp4-with-sound and wav I/O: round trips, spans, resampling, atomic writes, clear errors."""

import numpy as np
import pytest

from mmdisco.media import (
    MediaError,
    read_video_with_audio,
    read_wav,
    resample_audio,
    write_video_with_audio,
    write_wav,
)

SR, FPS = 16_000, 8


def _frames(num: int = 8, size: int = 32) -> np.ndarray:
    """Gradients plus a saturated block that moves: every frame differs, all colours in use."""
    yy, xx = np.mgrid[:size, :size]
    frames = np.zeros((num, size, size, 3), np.uint8)
    for i in range(num):
        frames[i, ..., 0] = (8 * xx + 10 * i) % 256
        frames[i, ..., 1] = (8 * yy) % 256
        frames[i, 4 : 4 + 8, 2 * i : 2 * i + 8] = (50, 90, 240)
    return frames


def _tone(freq: float = 523.0, seconds: float = 1.0, delay: float = 0.25) -> np.ndarray:
    """Silence, then a decaying tone (no transient at the very start, which AAC smears)."""
    t = np.arange(int(seconds * SR)) / SR - delay
    return np.where(t >= 0, 0.5 * np.sin(2 * np.pi * freq * t) * np.exp(-t / 0.3), 0.0)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def test_round_trip_shapes_colours_and_audio(tmp_path):
    frames, audio = _frames(), _tone()
    path = write_video_with_audio(tmp_path / "a.mp4", frames, FPS, audio, SR)
    got, fps, got_audio, sr = read_video_with_audio(path)
    assert got.shape == frames.shape and got.dtype == np.uint8
    assert fps == FPS and sr == SR
    assert got_audio.shape == (1, SR) and got_audio.dtype == np.float32  # 1.0 s exactly
    assert np.abs(got.astype(int) - frames).max() <= 2  # lossless 4:4:4, RGB<->YUV rounding
    assert _corr(got_audio[0], audio) > 0.999  # sample-aligned: the AAC delay is undone


def test_float_frames_and_stereo(tmp_path):
    frames = _frames()
    stereo = np.stack([_tone(330.0), _tone(784.0)])
    path = write_video_with_audio(tmp_path / "f.mp4", frames / 255.0, FPS, stereo, SR)
    got, _, got_audio, _ = read_video_with_audio(path)
    assert np.abs(got.astype(int) - frames).max() <= 2
    assert got_audio.shape == (2, SR)
    assert _corr(got_audio[0], stereo[0]) > 0.999 and _corr(got_audio[1], stereo[1]) > 0.999
    _, _, mono, _ = read_video_with_audio(path, mono=True)
    assert mono.shape == (SR,)
    np.testing.assert_allclose(mono, got_audio.mean(axis=0), atol=1e-6)


def test_span_fps_size_and_sample_rate(tmp_path):
    frames, audio = _frames(), _tone()
    path = write_video_with_audio(tmp_path / "s.mp4", frames, FPS, audio, SR)
    full, _, full_audio, _ = read_video_with_audio(path)

    part, _, part_audio, _ = read_video_with_audio(path, start=0.25, duration=0.5)
    np.testing.assert_array_equal(part, full[2:6])
    np.testing.assert_array_equal(part_audio, full_audio[:, 4000:12000])

    fast, fps, _, _ = read_video_with_audio(path, fps=16)
    assert fps == 16 and len(fast) == 16
    np.testing.assert_array_equal(fast, np.repeat(full, 2, axis=0))  # latest frame at or before

    small, _, _, _ = read_video_with_audio(path, size=16)
    assert small.shape == (8, 16, 16, 3)
    crop, _, _, _ = read_video_with_audio(path, size=(16, 8))  # short side 16, centre crop
    assert crop.shape == (8, 16, 8, 3)
    np.testing.assert_array_equal(crop, small[:, :, 4:12])

    _, _, up, sr = read_video_with_audio(path, sample_rate=22050, mono=True)
    assert sr == 22050 and up.shape == (22050,)
    spectrum = np.abs(np.fft.rfft(up))
    assert abs(np.argmax(spectrum) * 22050 / len(up) - 523.0) < 2.0  # 1 Hz bins


def test_resample_audio_keeps_pitch_and_length():
    x = np.sin(2 * np.pi * 440.0 * np.arange(SR) / SR)
    y = resample_audio(x, SR, 24_000)
    assert y.shape == (24_000,) and y.dtype == np.float32
    assert np.argmax(np.abs(np.fft.rfft(y))) == 440
    np.testing.assert_array_equal(resample_audio(x, SR, SR), x.astype(np.float32))


def test_writes_are_atomic(tmp_path):
    write_video_with_audio(tmp_path / "ok.mp4", _frames(), FPS, _tone(), SR)
    with pytest.raises(ValueError):
        write_video_with_audio(tmp_path / "bad.mp4", np.zeros((8, 32, 32)), FPS, _tone(), SR)
    with pytest.raises(ValueError):
        write_video_with_audio(tmp_path / "bad.mp4", _frames(), FPS, np.zeros((3, SR)), SR)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.mp4"]  # no temporary left


@pytest.mark.parametrize("kind", ["missing", "garbage", "truncated", "no_audio", "empty_span"])
def test_unreadable_inputs_raise_media_error_naming_the_file(tmp_path, kind):
    path = tmp_path / f"{kind}.mp4"
    good = write_video_with_audio(tmp_path / "good.mp4", _frames(), FPS, _tone(), SR)
    kwargs = {}
    if kind == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(4000))
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[:1500])
    elif kind == "no_audio":  # a silent file: video stream only
        write_video_with_audio(path, _frames(), FPS)
    elif kind == "empty_span":
        path, kwargs = good, {"start": 2.0}
    with pytest.raises(MediaError) as err:
        read_video_with_audio(path, **kwargs)
    assert err.value.path == path and str(path) in str(err.value)


def test_wav_round_trip_and_errors(tmp_path):
    stereo = np.stack([_tone(330.0), _tone(784.0)]).astype(np.float32)
    path = write_wav(tmp_path / "a.wav", stereo, SR)
    audio, sr = read_wav(path)
    assert sr == SR
    np.testing.assert_array_equal(audio, stereo)  # 32-bit float wav is exact
    mono, sr = read_wav(path, sample_rate=8000, mono=True)
    assert sr == 8000 and mono.shape == (8000,)
    (tmp_path / "bad.wav").write_bytes(b"RIFF" + bytes(100))
    for bad in (tmp_path / "bad.wav", tmp_path / "missing.wav"):
        with pytest.raises(MediaError, match=bad.name):
            read_wav(bad)
