"""AudioCLIP's audio branch (Guzhov et al. 2022; ESResNeXt-fbsp) for MM-Diffusion's FAD.

Written here with the parameter names of ``ESResNeXtFBSP`` (``evaluations/AudioCLIP/model`` of
researchmm/MM-Diffusion, from AndreyGuzhov/AudioCLIP), so the ``audio.*`` entries of
``AudioCLIP-Full-Training.pt`` load as they are (key manifest
``tests/fixtures/audioclip_audio_keys.json``). Front end: the input is scaled from the int16
range to [-1, 1] (``scale(x, -32768, 32767, -1, 1)``), framed (1654-sample Blackman-Harris
window, hop 561, the signal zero-padded on both sides to whole frames, frames padded to 2048),
then a learned "frequency B-spline" DFT (``LinearFBSP``: per output bin a sinc window raised to
a learned complex power times a DFT kernel of learned frequency, scaled by sqrt(fb), / sqrt(2048))
gives 1025 bins; the first 1023 are split into 3 bands of 341 (the ResNeXt's 3 input
channels); power, 10 log10 (zeros -> 1e-18). Back end: ResNeXt-50 32x4d with the ESResNeXt
attention blocks (depthwise + pointwise conv, BN, sigmoid, on the block input max-pooled to the
block output size, multiplied in) after each stage and after the global average pool; fc to 1024.

Protocol ``fad/audioclip-mmdiffusion`` (``mm_diffusion/evaluator.py``): the first channel at
44.1 kHz, the first 1.6 s (70560 samples, zero-padded), fed as float in [-1, 1] (the int16
scaling above then compresses it: MM-Diffusion's behaviour, kept); the raw (unnormalised) audio
embedding; FD with the TF-GAN SVD form, times 1e4.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SAMPLE_RATE = 44_100
NUM_SAMPLES = 70_560  # 1.6 s
N_FFT, WIN, HOP, BANDS = 2048, 1654, 561, 3
FAD_SCALE = 1e4


class LinearFBSP(nn.Module):
    """Learned DFT: frames (..., T, in) -> (..., T, out, 2) (real, imaginary)."""

    def __init__(self, out_features: int, normalized: bool = True):
        super().__init__()
        self.normalized, self.eps = normalized, 1e-8
        self.m = nn.Parameter(torch.zeros(out_features))
        self.fb = nn.Parameter(torch.ones(out_features))
        self.fc = nn.Parameter(torch.arange(out_features, dtype=torch.float32))
        self.bias = nn.Parameter(torch.empty(0))  # the reference's bias=False leaves it empty

    @staticmethod
    def _power(x, p):
        """Complex x ** p with x, p as (..., 2) real / imaginary pairs."""
        mag2 = x[..., 0] ** 2 + x[..., 1] ** 2
        phase = torch.atan2(x[..., 1], x[..., 0])
        mag = mag2 ** (0.5 * p[..., 0]) * torch.exp(-p[..., 1] * phase)
        angle = p[..., 0] * phase + 0.5 * p[..., 1] * mag2.log()
        return mag.unsqueeze(-1) * torch.stack((angle.cos(), angle.sin()), dim=-1)

    def weights(self, n: int, dtype, device) -> torch.Tensor:
        """(out, n, 2) complex weights."""
        t = math.pi * torch.linspace(-1.0, 1.0, n, dtype=dtype, device=device).reshape(1, -1, 1)
        t = t + self.eps
        m, fb, fc = (p.reshape(-1, 1, 1) for p in (self.m, self.fb, self.fc))
        kernel = torch.cat((torch.cos(fc * t), -torch.sin(fc * t)), dim=-1)
        arg = fb * t / (m + self.eps)
        win = torch.where(arg == 0, torch.ones_like(arg), torch.sin(arg) / arg)
        win = self._power(
            torch.cat((win, torch.zeros_like(win)), -1), torch.cat((m, torch.zeros_like(m)), -1)
        )
        w = fb.sqrt() * torch.cat((
            win[..., :1] * kernel[..., :1] - win[..., 1:] * kernel[..., 1:],
            win[..., :1] * kernel[..., 1:] + win[..., 1:] * kernel[..., :1],
        ), dim=-1)  # fmt: skip
        return w / n**0.5 if self.normalized else w

    def forward(self, x):
        w = self.weights(x.shape[-1], x.dtype, x.device)
        return torch.stack((F.linear(x, w[..., 0]), F.linear(x, w[..., 1])), dim=-1)


class Attention2d(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: tuple, padding: tuple):
        super().__init__()
        self.conv_depth = nn.Conv2d(cin, cin, kernel, padding=padding, groups=cin)
        self.conv_point = nn.Conv2d(cin, cout, 1)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x, size):
        x = F.adaptive_max_pool2d(x, size)
        return torch.sigmoid(self.bn(self.conv_point(self.conv_depth(x))))


class Bottleneck(nn.Module):
    """ResNeXt bottleneck (groups 32, width 4 per group), torchvision's names."""

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        width, cout = planes * 2, planes * 4  # int(planes * 4 / 64) * 32, expansion 4
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=32, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))  # fmt: skip

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


def _layer(cin: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [Bottleneck(cin, planes, stride)]
    layers += [Bottleneck(planes * 4, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class AudioCLIPAudio(nn.Module):
    """(B, C, L) audio (in [-32768, 32767] units) -> (B, 1024) raw audio embeddings."""

    def __init__(self, embed_dim: int = 1024):
        super().__init__()
        from scipy.signal import get_window

        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1, self.layer2 = _layer(64, 64, 3, 1), _layer(256, 128, 4, 2)
        self.layer3, self.layer4 = _layer(512, 256, 6, 2), _layer(1024, 512, 3, 2)
        self.att1 = Attention2d(64, 256, (3, 1), (1, 0))
        self.att2 = Attention2d(256, 512, (1, 5), (0, 2))
        self.att3 = Attention2d(512, 1024, (3, 1), (1, 0))
        self.att4 = Attention2d(1024, 2048, (1, 5), (0, 2))
        self.att5 = Attention2d(2048, 2048, (3, 5), (1, 2))
        self.fc = nn.Linear(2048, embed_dim)
        self.fbsp = LinearFBSP(N_FFT // 2 + 1)
        window = get_window("blackmanharris", WIN, fftbins=True)
        self.register_buffer("window", torch.from_numpy(window).float())

    def log_power(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, L) -> (B, C, 3, 341, frames) dB of the learned spectrogram."""
        b, length = x.shape[0], x.shape[-1]
        x = (x.float() + 32768.0) * 2.0 / 65535.0 - 1.0  # scale(x, -32768, 32767, -1, 1)
        n = 1 if length <= WIN else 1 + math.ceil((length - WIN) / HOP)
        pad = (n - 1) * HOP + WIN - length
        sig = x.reshape(-1, length)
        if pad > 0:
            sig = F.pad(sig, (pad // 2, pad - pad // 2))
        idx = torch.arange(WIN)[None] + HOP * torch.arange(n)[:, None]
        frames = sig[:, idx] * self.window  # (B * C, n, WIN)
        frames = F.pad(frames, ((N_FFT - WIN) // 2, N_FFT - WIN - (N_FFT - WIN) // 2))
        spec = self.fbsp(frames).transpose(-2, -3)  # (B * C, 1025, n, 2)
        per_band = spec.shape[-3] // BANDS
        spec = spec[:, : BANDS * per_band].reshape(b, -1, per_band, n, 2)
        power = spec[..., 0] ** 2 + spec[..., 1] ** 2
        power = torch.where(power > 0, power, torch.full_like(power, 1e-18))
        return 10.0 * torch.log10(power.reshape(b, -1, BANDS, per_band, n))

    def _features(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        for layer, att in ((self.layer1, self.att1), (self.layer2, self.att2),
                           (self.layer3, self.att3), (self.layer4, self.att4)):  # fmt: skip
            y = layer(x)
            x = y * att(x, y.shape[-2:])
        pooled = F.adaptive_avg_pool2d(x, 1)
        return (pooled * self.att5(x, pooled.shape[-2:])).flatten(1)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        db = self.log_power(audio)
        pooled = sum(self._features(db[:, c]) for c in range(db.shape[1]))
        return self.fc(pooled)


def prepare(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """(N,) or (C, N) -> (1, 70560): first channel, 44.1 kHz, first 1.6 s, zero-padded."""
    from mmdisco.media import resample_audio

    x = np.asarray(audio, np.float32)
    x = x[0] if x.ndim == 2 else x
    if sample_rate != SAMPLE_RATE:
        x = resample_audio(x, sample_rate, SAMPLE_RATE)
    out = np.zeros((1, NUM_SAMPLES), np.float32)
    out[0, : min(len(x), NUM_SAMPLES)] = x[:NUM_SAMPLES]
    return out
