"""Log-mel spectrograms exactly as AudioLDM and Auffusion compute them, plus Auffusion's image map.

One extractor, :class:`MelExtractor`, parameterised by a :class:`MelConfig`; the presets in
:data:`MEL_PRESETS` express each model's own preprocessing:

- ``"audioldm"``: AudioLDM's ``wav_to_fbank`` (github.com/haoheliu/AudioLDM,
  ``audioldm/audio/tools.py``) with ``TacotronSTFT`` (``audioldm/audio/stft.py``) and the
  preprocessing block of ``default_audioldm_config`` (``audioldm/utils.py``): 16 kHz,
  filter_length 1024, hop 160, win 1024, 64 mels, fmin 0, fmax 8000. The waveform is made
  zero-mean and peak-normalised to 0.5 (``normalize_wav``: ``(w - mean) / (max|w| + 1e-8) *
  0.5``); ``STFT.transform`` reflect-pads n_fft/2 on both sides (centred frames), takes the
  plain magnitude ``sqrt(re^2 + im^2)`` of a periodic-Hann-windowed DFT, multiplies by
  ``librosa.filters.mel`` (Slaney scale and norm) and applies ``log(clamp(x, 1e-5))``
  (``dynamic_range_compression``, ``audioldm/audio/audio_processing.py``). ``wav_to_fbank``
  zero-pads the waveform to ``target_length * 160`` samples and ``_pad_spec`` crops the
  ``N / 160 + 1`` frames to ``target_length``: so ``N / hop`` frames, the last one dropped.
- ``"audioldm_mmdisco"``: what the official MMDisCo code feeds AudioLDM's VAE
  (github.com/SonyResearch/MMDisCo, ``mmdisco/models/diffusion/mel_extractor.py``,
  ``AudioLDMLogMelExtractor``, from AudioLDM-training-finetuning): the same filters and log,
  but no waveform normalisation and HiFi-GAN-style framing: reflect-pad (n_fft - hop) / 2 on
  both sides, ``center=False``. Also ``N / hop`` frames, shifted by half a hop.
- ``"auffusion"``: Auffusion's ``get_mel_spectrogram_from_audio`` / ``mel_spectrogram``
  (github.com/happylittlecat2333/Auffusion, ``converter.py``): the waveform is peak-normalised
  to 0.95 (``librosa.util.normalize(audio) * 0.95``; silence stays silence), 16 kHz, n_fft
  2048, hop 160, win 1024 (zero-padded to 2048 by ``torch.stft``), 256 mels, fmin 0, fmax 8000,
  reflect-pad (n_fft - hop) / 2 = 944 per side with ``center=False``, magnitude
  ``sqrt(re^2 + im^2 + 1e-9)``, ``log(clamp(x, 1e-5))``. Auffusion first round-trips the
  waveform through int16 (``* 32768``, ``astype(int16)``, ``/ 32768``); that is not done here
  (it only adds quantisation noise, and wraps around for samples at exactly +1.0).

Every preset gives ``N // hop`` frames for N samples: 200 frames for 2.0 s at 16 kHz.
Outputs are (B, T, n_mels), time before frequency, low frequencies first (AudioLDM's fbank
layout, which its VAE sees as a 1-channel (T, 64) image).

Auffusion's VAE instead sees a 3-channel image (``normalize_spectrogram`` /
``denormalize_spectrogram`` in Auffusion's ``auffusion_pipeline.py``, then diffusers'
``VaeImageProcessor`` normalise / postprocess): :func:`spectrogram_to_image` and
:func:`image_to_spectrogram`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

PADDINGS = ("center", "hifigan")
WAVE_NORMS = ("none", "audioldm", "peak")


@dataclass(frozen=True)
class MelConfig:
    """Parameters of a log-mel spectrogram (see the module docstring for the presets).

    padding: "center" reflect-pads n_fft // 2 on both sides (librosa / Tacotron framing: frame
        k is centred on sample k * hop); "hifigan" reflect-pads (n_fft - hop) // 2 on both sides
        without centring (frame k is centred on sample k * hop + hop / 2).
    magnitude_eps: added to re^2 + im^2 before the square root (Auffusion: 1e-9).
    log_floor: the spectrogram is log(clamp(mel, log_floor)).
    wave_norm: "none"; "audioldm" (remove the mean, scale the peak to ``peak``, AudioLDM's
        ``normalize_wav``); "peak" (scale the peak to ``peak``, Auffusion). Silence stays silent.
    """

    sample_rate: int = 16_000
    n_fft: int = 1024
    hop_length: int = 160
    win_length: int = 1024
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float | None = 8000.0
    padding: str = "center"
    magnitude_eps: float = 0.0
    log_floor: float = 1e-5
    wave_norm: str = "audioldm"
    peak: float = 0.5

    def __post_init__(self):
        if self.padding not in PADDINGS:
            raise ValueError(f"padding {self.padding!r} is not one of {PADDINGS}")
        if self.wave_norm not in WAVE_NORMS:
            raise ValueError(f"wave_norm {self.wave_norm!r} is not one of {WAVE_NORMS}")
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length {self.win_length} exceeds n_fft {self.n_fft}")

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop_length


MEL_PRESETS: dict[str, MelConfig] = {
    "audioldm": MelConfig(),
    "audioldm_mmdisco": MelConfig(padding="hifigan", wave_norm="none"),
    "auffusion": MelConfig(
        n_fft=2048,
        n_mels=256,
        padding="hifigan",
        magnitude_eps=1e-9,
        wave_norm="peak",
        peak=0.95,
    ),
}


def mel_config(spec: str | MelConfig | dict) -> MelConfig:
    """A preset name, a MelConfig, or a dict of MelConfig fields."""
    if isinstance(spec, MelConfig):
        return spec
    if isinstance(spec, str):
        if spec not in MEL_PRESETS:
            raise ValueError(f"unknown mel preset {spec!r}: use one of {sorted(MEL_PRESETS)}")
        return MEL_PRESETS[spec]
    return MelConfig(**spec)


def mel_filters(config: MelConfig) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) float32 Slaney mel filter bank from ``librosa.filters.mel``."""
    try:
        from librosa.filters import mel
    except ImportError as err:  # librosa is in the "eval" extra
        raise ImportError("the mel extractor needs librosa: pip install 'mmdisco[eval]'") from err
    return mel(
        sr=config.sample_rate,
        n_fft=config.n_fft,
        n_mels=config.n_mels,
        fmin=config.fmin,
        fmax=config.fmax,
    )


def normalize_wave(wave: Tensor, config: MelConfig) -> Tensor:
    """Per-waveform loudness normalisation of (B, N) as the model's own loader does it."""
    if config.wave_norm == "none":
        return wave
    if config.wave_norm == "audioldm":  # normalize_wav: (w - mean) / (max|w| + 1e-8) * peak
        wave = wave - wave.mean(dim=-1, keepdim=True)
        return wave / (wave.abs().amax(dim=-1, keepdim=True) + 1e-8) * config.peak
    # librosa.util.normalize(w) * peak: columns with max|w| below float tiny are left as they are
    top = wave.abs().amax(dim=-1, keepdim=True)
    top = torch.where(top < torch.finfo(wave.dtype).tiny, torch.ones_like(top), top)
    return wave / top * config.peak


def as_waveform(audio, num_samples: int) -> Tensor:
    """(B, N) or (N,) float array / tensor -> (B, N) float32 tensor, N checked."""
    wave = torch.as_tensor(np.asarray(audio) if not isinstance(audio, Tensor) else audio)
    wave = wave.float().reshape(1, -1) if wave.ndim == 1 else wave.float()
    if wave.ndim != 2 or wave.shape[1] != num_samples:
        raise ValueError(
            f"audio must be (B, {num_samples}) samples (the base's duration at its sample "
            f"rate), got {tuple(wave.shape)}"
        )
    return wave


class MelExtractor(nn.Module):
    """Waveform (B, N) at ``sample_rate`` -> log-mel (B, N // hop, n_mels), time first.

    The mel filter bank and the Hann window are buffers, so the extractor follows ``.to()``.
    """

    def __init__(self, config: str | MelConfig | dict = "audioldm"):
        super().__init__()
        self.config = mel_config(config)
        c = self.config
        self.register_buffer("mel_basis", torch.from_numpy(mel_filters(c)), persistent=False)
        # periodic Hann, as scipy.signal.get_window("hann", fftbins=True) and torch.hann_window
        self.register_buffer("window", torch.hann_window(c.win_length), persistent=False)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self.config).items())

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.config.hop_length

    def magnitude(self, wave: Tensor) -> Tensor:
        """(B, N) float -> (B, n_fft // 2 + 1, N // hop) STFT magnitude (after normalisation)."""
        c = self.config
        if wave.ndim != 2:
            raise ValueError(f"waveform must be (B, N), got {tuple(wave.shape)}")
        num = self.num_frames(wave.shape[-1])
        pad = c.n_fft // 2 if c.padding == "center" else (c.n_fft - c.hop_length) // 2
        if num < 1 or pad >= wave.shape[-1]:
            raise ValueError(f"waveform of {wave.shape[-1]} samples is too short for this STFT")
        x = F.pad(normalize_wave(wave.float(), c).unsqueeze(1), (pad, pad), mode="reflect")
        spec = torch.stft(
            x.squeeze(1),
            c.n_fft,
            hop_length=c.hop_length,
            win_length=c.win_length,
            window=self.window,
            center=False,
            normalized=False,
            onesided=True,
            return_complex=True,
        )  # (B, n_fft // 2 + 1, frames >= num)
        power = spec.real.square() + spec.imag.square()
        return (power + c.magnitude_eps).sqrt()[..., :num]

    def forward(self, wave: Tensor) -> Tensor:
        """(B, N) -> (B, N // hop, n_mels): log(clamp(mel_basis @ |STFT|, log_floor))."""
        mel = torch.matmul(self.mel_basis, self.magnitude(wave))  # (B, n_mels, T)
        return mel.clamp(min=self.config.log_floor).log().transpose(1, 2)


# -- Auffusion's spectrogram image ---------------------------------------------------------
AUFFUSION_LOG_RANGE = (math.log(1e-5), math.log(200.0))  # normalize_spectrogram's min / max


def spectrogram_to_image(log_mel: Tensor, log_range=AUFFUSION_LOG_RANGE) -> Tensor:
    """(B, T, M) log-mel -> (B, 3, M, T) image in [-1, 1], the highest frequency in row 0.

    Auffusion's ``normalize_spectrogram``: clamp to [log 1e-5, log 200], rescale to [0, 1],
    repeat over 3 channels, flip the frequency axis; then VaeImageProcessor's 2x - 1.
    """
    lo, hi = log_range
    x = (log_mel.clamp(lo, hi) - lo) / (hi - lo)  # (B, T, M) in [0, 1]
    x = x.transpose(1, 2).flip(1)  # (B, M, T), row 0 = highest mel band
    return (2 * x - 1).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def image_to_spectrogram(image: Tensor, log_range=AUFFUSION_LOG_RANGE) -> Tensor:
    """(B, 3, M, T) VAE output -> (B, M, T) log-mel, low frequencies first (vocoder input).

    VaeImageProcessor.postprocess (``(x / 2 + 0.5).clamp(0, 1)``), then Auffusion's
    ``denormalize_spectrogram``: flip back, keep channel 0, rescale to [log 1e-5, log 200].
    """
    lo, hi = log_range
    x = (image[:, 0] / 2 + 0.5).clamp(0, 1).flip(1)  # (B, M, T)
    return x * (hi - lo) + lo
