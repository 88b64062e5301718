"""PANNs Cnn14 at 16 kHz (Kong et al. 2020) for AudioLDM's FD (``audioldm_eval``).

Written here with the parameter names of ``Cnn14`` (audioldm_eval's copy of the PANNs code,
torchlibrosa front end) so ``Cnn14_16k_mAP=0.438.pth`` (its "model" entry) loads as it is; key
manifest ``tests/fixtures/panns_cnn14_16k_keys.json``. The front end keeps torchlibrosa's
layout: the STFT is two Conv1d with windowed DFT kernels (Hann, 512, hop 160, centred with
reflect padding), power = re^2 + im^2, a 64-band librosa mel matrix over 50-8000 Hz, then
10 log10(max(x, 1e-10)) (ref 1, no top_db), BatchNorm over the mel bands, six conv blocks
(conv-BN-ReLU x 2, average pool 2 x 2; the last 1 x 1), mean over frequency, max + mean over
time, fc1 + ReLU: the "2048" embedding. Dropout and SpecAugment are off (eval).

Protocol ``fd/panns-cnn14-16k`` (AudioLDM's "FD", ``EvaluationHelper`` with its
``WaveDataset``): the first channel, its mean removed, resampled to 16 kHz, zero-padded to at
least 2 s; one 2048-d embedding per clip; FD with scipy's sqrtm. Not the paper's FAD (that is
VGGish, ``fad/vggish``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SAMPLE_RATE, N_FFT, HOP, MELS, FMIN, FMAX = 16_000, 512, 160, 64, 50.0, 8000.0
MIN_SAMPLES = 32_000  # audioldm_eval pads shorter audio to 2 s


class STFT(nn.Module):
    """torchlibrosa's Conv1d STFT: (B, N) -> real, imag (B, 1, frames, n_fft // 2 + 1)."""

    def __init__(self, n_fft: int = N_FFT, hop: int = HOP):
        super().__init__()
        import librosa

        self.n_fft, self.hop = n_fft, hop
        bins = n_fft // 2 + 1
        window = librosa.filters.get_window("hann", n_fft, fftbins=True)
        n = np.arange(n_fft)
        dft = np.exp(-2j * np.pi * np.outer(n, np.arange(bins)) / n_fft) * window[:, None]
        self.conv_real = nn.Conv1d(1, bins, n_fft, stride=hop, bias=False)
        self.conv_imag = nn.Conv1d(1, bins, n_fft, stride=hop, bias=False)
        with torch.no_grad():
            self.conv_real.weight.copy_(torch.tensor(dft.real.T[:, None], dtype=torch.float32))
            self.conv_imag.weight.copy_(torch.tensor(dft.imag.T[:, None], dtype=torch.float32))

    def forward(self, x):
        x = F.pad(x[:, None], (self.n_fft // 2, self.n_fft // 2), mode="reflect")
        real, imag = self.conv_real(x), self.conv_imag(x)  # (B, bins, frames)
        return real[:, None].transpose(2, 3), imag[:, None].transpose(2, 3)


class Spectrogram(nn.Module):
    def __init__(self):
        super().__init__()
        self.stft = STFT()

    def forward(self, x):
        real, imag = self.stft(x)
        return real**2 + imag**2


class LogmelFilterBank(nn.Module):
    def __init__(self):
        super().__init__()
        import librosa

        mel = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=MELS, fmin=FMIN, fmax=FMAX)
        self.melW = nn.Parameter(torch.tensor(mel.T, dtype=torch.float32), requires_grad=False)

    def forward(self, x):
        return 10.0 * torch.log10(torch.clamp(x @ self.melW, min=1e-10))  # ref 1.0: - 0


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(cout), nn.BatchNorm2d(cout)

    def forward(self, x, pool: int):
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return F.avg_pool2d(x, pool)


class Cnn14(nn.Module):
    """(B, N) 16 kHz audio -> (B, 2048) embeddings ("2048" of audioldm_eval)."""

    def __init__(self, classes: int = 527):
        super().__init__()
        self.spectrogram_extractor = Spectrogram()
        self.logmel_extractor = LogmelFilterBank()
        self.bn0 = nn.BatchNorm2d(MELS)
        widths = [1, 64, 128, 256, 512, 1024, 2048]
        for i in range(6):
            setattr(self, f"conv_block{i + 1}", ConvBlock(widths[i], widths[i + 1]))
        self.fc1 = nn.Linear(2048, 2048)
        self.fc_audioset = nn.Linear(2048, classes)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = self.logmel_extractor(self.spectrogram_extractor(wave))  # (B, 1, frames, 64)
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)
        for i in range(6):
            x = getattr(self, f"conv_block{i + 1}")(x, 2 if i < 5 else 1)
        x = x.mean(dim=3)  # (B, 2048, frames')
        x = x.max(dim=2).values + x.mean(dim=2)
        return F.relu(self.fc1(x))


def prepare(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """(N,) or (C, N) -> first channel, mean removed, 16 kHz, zero-padded to >= 2 s."""
    from mmdisco.media import resample_audio

    x = np.asarray(audio, np.float32)
    x = x[0] if x.ndim == 2 else x
    x = x - x.mean()
    if sample_rate != SAMPLE_RATE:
        x = resample_audio(x, sample_rate, SAMPLE_RATE)
    return np.pad(x, (0, max(0, MIN_SAMPLES - len(x))))
