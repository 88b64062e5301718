"""The mel extractor against an independent numpy reference, for every preset."""

import math

import numpy as np
import pytest
import torch
from librosa.filters import mel as librosa_mel
from scipy.signal import get_window

from mmdisco.bases.mel import (
    MEL_PRESETS,
    MelConfig,
    MelExtractor,
    image_to_spectrogram,
    spectrogram_to_image,
)


def reference_log_mel(wave: np.ndarray, c: MelConfig) -> np.ndarray:
    """(N,) float64 -> (N // hop, n_mels), written from the models' descriptions in numpy."""
    if c.wave_norm == "audioldm":
        wave = wave - wave.mean()
        wave = wave / (np.abs(wave).max() + 1e-8) * c.peak
    elif c.wave_norm == "peak" and np.abs(wave).max() > 0:
        wave = wave / np.abs(wave).max() * c.peak
    pad = c.n_fft // 2 if c.padding == "center" else (c.n_fft - c.hop_length) // 2
    padded = np.pad(wave, pad, mode="reflect")
    window = np.zeros(c.n_fft)
    left = (c.n_fft - c.win_length) // 2
    window[left : left + c.win_length] = get_window("hann", c.win_length, fftbins=True)
    starts = np.arange(0, len(padded) - c.n_fft + 1, c.hop_length)[: len(wave) // c.hop_length]
    frames = np.stack([padded[s : s + c.n_fft] * window for s in starts])  # (T, n_fft)
    spec = np.fft.rfft(frames, axis=-1)
    mag = np.sqrt(spec.real**2 + spec.imag**2 + c.magnitude_eps)  # (T, n_fft / 2 + 1)
    basis = librosa_mel(
        sr=c.sample_rate, n_fft=c.n_fft, n_mels=c.n_mels, fmin=c.fmin, fmax=c.fmax
    ).astype(np.float64)
    return np.log(np.maximum(mag @ basis.T, c.log_floor))


@pytest.mark.parametrize("preset", sorted(MEL_PRESETS))
def test_matches_numpy_reference(preset):
    rng = np.random.default_rng(0)
    n = 4000  # 0.25 s: 25 frames at hop 160
    t = np.arange(n) / 16_000
    waves = np.stack(
        [
            0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(n) + 0.1,
            0.8 * rng.standard_normal(n).clip(-1.2, 1.2) / 1.2,
        ]
    )
    extractor = MelExtractor(preset)
    ours = extractor(torch.from_numpy(waves).float()).double().numpy()
    c = MEL_PRESETS[preset]
    assert ours.shape == (2, n // 160, c.n_mels)
    for i in range(2):
        ref = reference_log_mel(waves[i], c)
        np.testing.assert_allclose(ours[i], ref, atol=1e-4, rtol=0)


def test_two_seconds_give_200_frames_and_silence_hits_the_floor():
    for preset in MEL_PRESETS:
        out = MelExtractor(preset)(torch.zeros(1, 32_000))
        assert out.shape[1] == 200, preset
        assert torch.allclose(out, torch.full_like(out, math.log(1e-5))), preset


def test_auffusion_image_layout_and_round_trip():
    log_mel = torch.linspace(-14.0, 7.0, 2 * 5 * 8).reshape(2, 5, 8)  # (B, T, M)
    image = spectrogram_to_image(log_mel)
    assert image.shape == (2, 3, 8, 5)
    assert image.min() >= -1 and image.max() <= 1
    assert torch.equal(image[:, 0], image[:, 2])
    # highest mel band in row 0; values outside [log 1e-5, log 200] are clamped
    lo, hi = math.log(1e-5), math.log(200.0)
    expected_top = 2 * (log_mel[:, :, -1].clamp(lo, hi) - lo) / (hi - lo) - 1
    torch.testing.assert_close(image[:, 1, 0, :], expected_top)
    back = image_to_spectrogram(image)  # (B, M, T)
    torch.testing.assert_close(back, log_mel.clamp(lo, hi).transpose(1, 2), atol=1e-5, rtol=0)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="padding"):
        MelConfig(padding="same")
    with pytest.raises(ValueError, match="unknown mel preset"):
        MelExtractor("audioldm2")
