"""VGGish (Hershey et al. 2017) for the FAD of AudioLDM's evaluation (``audioldm_eval``).

Written here with the parameter names of the PyTorch port ``harritaylor/torchvggish`` whose
``vggish-10086976.pth`` AudioLDM's FAD loads (key manifest: ``tests/fixtures/vggish_keys.json``).

Protocol ``fad/vggish`` (``audioldm_eval/metrics/fad.py``): mono (channel mean), resampled to
16 kHz, log-mel examples as the original VGGish input pipeline (``vggish_input.py``,
``mel_features.py``): frames of 400 samples (25 ms) every 160 (10 ms), periodic Hann, |rfft|
with 512 points, 64 HTK-mel bands over 125-7500 Hz (the DC bin zeroed), log(mel + 0.01),
examples of 96 frames (0.96 s) without overlap, no padding (an incomplete tail is dropped).
Each example gives a 128-d embedding with NO PCA / quantisation and WITHOUT the final ReLU
(``use_pca=False, use_activation=False``); every example of every clip is one sample of the
Gaussian; FD with scipy's sqrtm.

Differences of input only: the reference reads 16-bit wav files (int16 / 32768) and resamples
with resampy (``kaiser_best``); here audio comes as float from the mp4 and resampling uses
``mmdisco.media.resample_audio`` (no-op for our 16 kHz outputs).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

SAMPLE_RATE = 16_000
WINDOW, HOP, N_FFT = 400, 160, 512  # 25 ms, 10 ms, next power of two
NUM_BANDS, MEL_MIN_HZ, MEL_MAX_HZ, LOG_OFFSET = 64, 125.0, 7500.0, 0.01
EXAMPLE_FRAMES = 96  # 0.96 s per example, hop 0.96 s
MIN_SAMPLES = WINDOW + (EXAMPLE_FRAMES - 1) * HOP  # 15600: one example


def _frame(x: np.ndarray, window: int, hop: int) -> np.ndarray:
    """(N, ...) -> (num_frames, window, ...) complete frames only."""
    n = 1 + (len(x) - window) // hop
    return np.stack([x[i * hop : i * hop + window] for i in range(n)])


def hertz_to_mel(hz):
    """HTK mel scale: 1127 ln(1 + f / 700)."""
    return 1127.0 * np.log(1.0 + np.asarray(hz, np.float64) / 700.0)


def mel_matrix(num_bins: int = N_FFT // 2 + 1, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(num_bins, 64) triangular HTK-mel weights over 125-7500 Hz; the DC row is zero."""
    bins_mel = hertz_to_mel(np.linspace(0.0, sample_rate / 2, num_bins))
    edges = np.linspace(hertz_to_mel(MEL_MIN_HZ), hertz_to_mel(MEL_MAX_HZ), NUM_BANDS + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    up = (bins_mel[:, None] - lower) / (center - lower)
    down = (upper - bins_mel[:, None]) / (upper - center)
    weights = np.maximum(0.0, np.minimum(up, down))
    weights[0] = 0.0
    return weights


def log_mel_examples(audio: np.ndarray) -> np.ndarray:
    """(N,) float audio at 16 kHz -> (num_examples, 96, 64) float64 log-mel examples."""
    x = np.asarray(audio, np.float64)
    if x.ndim != 1 or len(x) < MIN_SAMPLES:
        raise ValueError(
            f"VGGish needs mono audio of at least {MIN_SAMPLES} samples (0.975 s) at 16 kHz, "
            f"got shape {x.shape}"
        )
    window = 0.5 - 0.5 * np.cos(2 * np.pi / WINDOW * np.arange(WINDOW))  # periodic Hann
    spectrum = np.abs(np.fft.rfft(_frame(x, WINDOW, HOP) * window, N_FFT))
    log_mel = np.log(spectrum @ mel_matrix() + LOG_OFFSET)  # (frames, 64)
    return _frame(log_mel, EXAMPLE_FRAMES, EXAMPLE_FRAMES)


def _features() -> nn.Sequential:
    layers, cin = [], 1
    for v in [64, "M", 128, "M", 256, 256, "M", 512, 512, "M"]:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
            cin = v
    return nn.Sequential(*layers)


class VGGish(nn.Module):
    """(B, 1, 96, 64) log-mel examples -> (B, 128) embeddings (pre-ReLU unless activation)."""

    def __init__(self, activation: bool = False):
        super().__init__()
        self.activation = activation
        self.features = _features()
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 4 * 6, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
            nn.Linear(4096, 128),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 512, 6, 4)
        x = x.permute(0, 2, 3, 1).flatten(1)  # TF order (B, H, W, C), as the converted weights
        x = self.embeddings(x)
        return torch.relu(x) if self.activation else x
