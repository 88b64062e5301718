"""Tiny single-modality bases for the synthetic world of issue 5, trained from scratch.

Each base is one small diffusers ``UNet2DModel`` (wrapped by :class:`PackedUNet`) that predicts
x_0 under a linear DDPM schedule (1000 steps, betas 1e-4 .. 0.02). Training weights the x_0
error by min(SNR_t, 5) (:meth:`SyntheticBase.denoising_loss`). Latents and codecs:

- audio: a log-magnitude STFT, (B, 1, T=64, F=64), time before frequency as the
  discriminator's 2-D audio stream expects. STFT of the 16 kHz waveform with a 512-sample
  Hann window and hop 250 (frames 0..63 of 65), bins 0..63 (0 - 1969 Hz; the world's tones
  are 330 - 1175 Hz). ``log(|S| + floor)`` is mapped linearly so that silence is -1 and the
  world's loudest bin is about +1. Decoding inverts the map, zero-fills the dropped bins and
  frame, and recovers a phase with Griffin-Lim (fast variant, momentum 0.99, zero-phase start,
  so decoding is deterministic). The UNet sees it 4x4 pixel-unshuffled: (16, 16, 16).
- video: frames averaged over 2x2 pixel blocks, uint8 (B, 8, 32, 32, 3) <-> float
  (B, 3, F=8, 16, 16) in [-1, 1]; decoded by bicubic upsampling. The UNet sees the 8 frames
  x 3 colours as 24 channels of a 16x16 image. (Every real clip stays valid through this
  round trip; the full-resolution alternative, 2x2 pixel-unshuffle to (96, 16, 16), reached
  42% validity where this reached 66% for the same training time.)

Saved like a diffusers pipeline (``save_pretrained`` / ``from_pretrained``)::

    <dir>/denoiser/{config.json, diffusion_pytorch_model.safetensors}   PackedUNet
    <dir>/scheduler/scheduler_config.json                                DDPMScheduler
    <dir>/codec/codec_config.json                                        the codec
"""

from __future__ import annotations

import copy
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, DDPMScheduler, ModelMixin, UNet2DModel
from diffusers.configuration_utils import register_to_config
from torch import Tensor

from mmdisco.bases.protocol import DiffusionBase
from mmdisco.data.synthetic import FPS
from mmdisco.pretrained import resolve_pretrained
from mmdisco.schedule import NoiseSchedule, expand_as

REQUIRED_FILES = (
    "denoiser/config.json",
    "denoiser/diffusion_pytorch_model.safetensors",
    "scheduler/scheduler_config.json",
    "codec/codec_config.json",
)
TRAIN_HINT = "Make it with `python scripts/train_base.py` (about 15 CPU-minutes for both bases)."


# -- the network ---------------------------------------------------------------------------
class PackedUNet(ModelMixin, ConfigMixin):
    """An x_0 denoiser: a UNet2DModel on a latent (B, *axes) seen as a 2-D image.

    ``image_axes`` (two indices into ``latent_shape``) are the image's rows and columns, each
    pixel-unshuffled by ``unshuffle``; every other latent axis is folded into channels. E.g.
    video (3, F, H, W) with image_axes (2, 3) is an (H, W) image with 3 * F channels (the
    synthetic video base); with (1, 2) it would be an (F, H) image with 3 * W channels.

    The input is centred and scaled as in EDM (Karras et al. 2022, Table 1) around
    ``data_mean`` / ``sigma_data``; the output is a pure x_0 prediction, without EDM's
    c_skip * x_t term (on a 6-clip prototype it learned about twice as fast without):
    x_0 = mean + sigma_data * UNet((x_t - alpha mean) / sqrt(alpha^2 sigma_data^2 + sigma^2), t).
    """

    @register_to_config
    def __init__(
        self,
        latent_shape: tuple[int, ...] = (1, 64, 64),
        image_axes: tuple[int, int] = (1, 2),
        unshuffle: int = 1,
        block_out_channels: tuple[int, ...] = (32, 64, 64),
        layers_per_block: int = 1,
        norm_num_groups: int = 16,
        mid_attention: bool = True,
        data_mean: float = 0.0,
        sigma_data: float = 0.5,
    ):
        super().__init__()
        rows, cols = (latent_shape[a] for a in image_axes)
        if rows % unshuffle or cols % unshuffle or image_axes[0] >= image_axes[1]:
            raise ValueError(
                f"image axes {image_axes} of latent {latent_shape} must be increasing and "
                f"divisible by unshuffle={unshuffle}"
            )
        channels = math.prod(latent_shape) // (rows * cols) * unshuffle**2
        levels = len(block_out_channels)
        self.unet = UNet2DModel(
            sample_size=(rows // unshuffle, cols // unshuffle),
            in_channels=channels,
            out_channels=channels,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            down_block_types=("DownBlock2D",) * levels,
            up_block_types=("UpBlock2D",) * levels,
            norm_num_groups=norm_num_groups,
            add_attention=mid_attention,
            attention_head_dim=block_out_channels[-1],
        )

    def _image_dims(self) -> tuple[int, int]:
        return tuple(1 + a for a in self.config.image_axes)  # with the batch axis in front

    def pack(self, x: Tensor) -> Tensor:
        """(B, *latent_shape) -> (B, channels, rows / r, cols / r)."""
        x = x.movedim(self._image_dims(), (-2, -1)).flatten(1, -3)  # (B, C', rows, cols)
        return F.pixel_unshuffle(x, self.config.unshuffle)

    def unpack(self, h: Tensor) -> Tensor:
        """Inverse of :meth:`pack`."""
        x = F.pixel_shuffle(h, self.config.unshuffle)  # (B, C', rows, cols)
        shape = list(self.config.latent_shape)
        rows_cols = [shape.pop(a) for a in reversed(self.config.image_axes)][::-1]
        x = x.reshape(x.shape[0], *shape, *rows_cols)  # (B, *other axes, rows, cols)
        return x.movedim((-2, -1), self._image_dims())  # (B, *latent_shape)

    def forward(self, x_t: Tensor, t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """x_0 estimate from x_t = alpha x_0 + sigma eps (alpha, sigma broadcast like x_t)."""
        mean, sd = self.config.data_mean, self.config.sigma_data
        c_in = 1 / (alpha**2 * sd**2 + sigma**2).sqrt()
        h = self.pack(c_in * (x_t - alpha * mean))  # (B, channels, rows, cols)
        return mean + sd * self.unpack(self.unet(h, t).sample)  # (B, *latent_shape)


# -- codecs ----------------------------------------------------------------------------------
class LogSpectrogramCodec(ConfigMixin):
    """Waveform (B, N) <-> normalised log-magnitude STFT (B, 1, T, F); Griffin-Lim to decode."""

    config_name = "codec_config.json"

    @register_to_config
    def __init__(
        self,
        sample_rate: int = 16_000,
        num_samples: int = 16_000,
        n_fft: int = 512,
        hop_length: int = 250,
        num_frames: int = 64,
        num_bins: int = 64,
        floor: float = 0.01,
        log_max: float = math.log(64.0),
        griffin_lim_iters: int = 32,
        momentum: float = 0.99,
    ):
        super().__init__()
        if num_bins > n_fft // 2 + 1 or num_frames > 1 + num_samples // hop_length:
            raise ValueError("num_bins / num_frames exceed the STFT's bins / frames")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (1, self.config.num_frames, self.config.num_bins)

    def _stft(self, wave: Tensor) -> Tensor:
        c = self.config
        window = torch.hann_window(c.n_fft, device=wave.device, dtype=wave.dtype)
        return torch.stft(
            wave, c.n_fft, c.hop_length, window=window, center=True, return_complex=True
        )  # (B, n_fft/2 + 1, frames)

    def _istft(self, spec: Tensor) -> Tensor:
        c = self.config
        window = torch.hann_window(c.n_fft, device=spec.device, dtype=spec.real.dtype)
        return torch.istft(
            spec, c.n_fft, c.hop_length, window=window, center=True, length=c.num_samples
        )  # (B, N)

    def encode(self, wave) -> Tensor:
        """(B, N) float waveform -> (B, 1, T, F) in about [-1, 1] (silence is -1)."""
        c = self.config
        wave = torch.as_tensor(np.asarray(wave) if not isinstance(wave, Tensor) else wave)
        if wave.ndim != 2 or wave.shape[1] != c.num_samples:
            raise ValueError(f"audio must be (B, {c.num_samples}), got {tuple(wave.shape)}")
        mag = self._stft(wave.float()).abs()[:, : c.num_bins, : c.num_frames]  # (B, F, T)
        log_min = math.log(c.floor)
        x = 2 * (torch.log(mag + c.floor) - log_min) / (c.log_max - log_min) - 1
        return x.transpose(1, 2).unsqueeze(1)  # (B, 1, T, F)

    def magnitude(self, latent: Tensor) -> Tensor:
        """(B, 1, T, F) latent -> (B, n_fft/2 + 1, frames) magnitude, dropped parts zero."""
        c = self.config
        log_min = math.log(c.floor)
        x = latent.float().clamp(-1, 1).squeeze(1).transpose(1, 2)  # (B, F, T)
        mag = (torch.exp((x + 1) / 2 * (c.log_max - log_min) + log_min) - c.floor).clamp(min=0)
        frames = 1 + c.num_samples // c.hop_length
        return F.pad(mag, (0, frames - c.num_frames, 0, c.n_fft // 2 + 1 - c.num_bins))

    def decode(self, latent: Tensor) -> Tensor:
        """(B, 1, T, F) -> (B, N) float32 waveform via fast Griffin-Lim (Perraudin et al. 2013)."""
        mag = self.magnitude(latent)
        c = self.config
        angles = torch.ones_like(mag, dtype=torch.complex64)  # zero phase: deterministic
        previous = torch.zeros_like(angles)
        for _ in range(c.griffin_lim_iters):
            rebuilt = self._stft(self._istft(mag * angles))
            angles = rebuilt - previous * (c.momentum / (1 + c.momentum))
            angles = angles / (angles.abs() + 1e-16)
            previous = rebuilt
        return self._istft(mag * angles).clamp(-1, 1)


class FrameCodec(ConfigMixin):
    """uint8 frames (B, F, H, W, 3) <-> float (B, 3, F, H/d, W/d) in [-1, 1], d = ``downsample``.

    Encoding averages d x d pixel blocks; decoding upsamples bicubically (d = 1: lossless up to
    the uint8 rounding).
    """

    config_name = "codec_config.json"

    @register_to_config
    def __init__(self, num_frames: int = 8, height: int = 32, width: int = 32, downsample: int = 2):
        super().__init__()
        if height % downsample or width % downsample:
            raise ValueError(f"{height}x{width} frames are not divisible by {downsample}")

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        c = self.config
        return (3, c.num_frames, c.height // c.downsample, c.width // c.downsample)

    def encode(self, frames) -> Tensor:
        c = self.config
        frames = torch.as_tensor(np.asarray(frames) if not isinstance(frames, Tensor) else frames)
        if frames.shape[1:] != (c.num_frames, c.height, c.width, 3) or frames.dtype != torch.uint8:
            raise ValueError(
                f"video must be uint8 (B, {c.num_frames}, {c.height}, {c.width}, 3), "
                f"got {frames.dtype} {tuple(frames.shape)}"
            )
        x = frames.permute(0, 1, 4, 2, 3).float() / 127.5 - 1  # (B, F, 3, H, W)
        x = F.avg_pool2d(x.flatten(0, 1), c.downsample)  # (B*F, 3, H/d, W/d)
        return x.unflatten(0, frames.shape[:2]).transpose(1, 2)  # (B, 3, F, H/d, W/d)

    def decode(self, latent: Tensor) -> Tensor:
        """(B, 3, F, H/d, W/d) -> uint8 (B, F, H, W, 3)."""
        c = self.config
        x = latent.float().transpose(1, 2)  # (B, F, 3, H/d, W/d)
        if c.downsample > 1:
            x = F.interpolate(
                x.flatten(0, 1), scale_factor=c.downsample, mode="bicubic", align_corners=False
            ).unflatten(0, x.shape[:2])  # (B, F, 3, H, W)
        x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return x.permute(0, 1, 3, 4, 2).contiguous()  # (B, F, H, W, 3)


# -- the bases -------------------------------------------------------------------------------
def ddpm_scheduler(
    beta_schedule: str = "linear",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    num_train_timesteps: int = 1000,
) -> DDPMScheduler:
    """The DDPM schedule both synthetic bases are trained with (x_0-prediction)."""
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
        beta_start=beta_start,
        beta_end=beta_end,
        clip_sample=False,
        prediction_type="sample",
    )


class SyntheticBase(DiffusionBase):
    """A data-space-like base with a codec: ``denoiser`` (PackedUNet), DDPM schedule, codec."""

    decodes_to_media = True

    codec_class: type[LogSpectrogramCodec] | type[FrameCodec]

    def __init__(self, denoiser: PackedUNet, scheduler: DDPMScheduler, codec):
        super().__init__()
        if tuple(denoiser.config.latent_shape) != tuple(codec.latent_shape):
            raise ValueError(
                f"denoiser latent {tuple(denoiser.config.latent_shape)} does not match "
                f"the codec's {tuple(codec.latent_shape)}"
            )
        self.denoiser = denoiser
        self.codec = codec
        self.scheduler_config = dict(scheduler.config)
        self.schedule = NoiseSchedule.from_betas(scheduler.betas)
        self.prediction_type = scheduler.config.prediction_type

    @classmethod
    def create(cls, codec: dict | None = None, scheduler: dict | None = None, **unet):
        """An untrained base: codec kwargs, DDPM kwargs (``ddpm_scheduler``), PackedUNet kwargs."""
        codec_obj = cls.codec_class(**(codec or {}))
        denoiser = PackedUNet(latent_shape=codec_obj.latent_shape, **unet)
        return cls(denoiser, ddpm_scheduler(**(scheduler or {})), codec_obj)

    @classmethod
    def from_pretrained(cls, pretrained: str | Path):
        path = resolve_pretrained(pretrained, REQUIRED_FILES, TRAIN_HINT)
        denoiser = PackedUNet.from_pretrained(path / "denoiser").float()
        scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
        codec = cls.codec_class.from_config(cls.codec_class.load_config(path / "codec"))
        return cls(denoiser, scheduler, codec).eval().requires_grad_(False)

    def save_pretrained(self, path: str | Path, dtype: torch.dtype = torch.float32) -> None:
        """Written to a temporary directory first, then moved into place; ``dtype`` is the
        storage type of the weights (they load back as float32)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
        try:
            denoiser = self.denoiser
            if next(denoiser.parameters()).dtype != dtype:
                denoiser = copy.deepcopy(denoiser).to(dtype)
            denoiser.save_pretrained(tmp / "denoiser")
            DDPMScheduler.from_config(self.scheduler_config).save_pretrained(tmp / "scheduler")
            self.codec.save_config(tmp / "codec")
            if path.exists():
                shutil.rmtree(path)
            tmp.rename(path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def model_output(self, x_t, t, emb):
        alpha, sigma = (expand_as(c, x_t) for c in self.schedule.coefficients(t))
        return self.denoiser(x_t, t, alpha, sigma)

    def sample_shape(self, batch_size: int) -> tuple[int, ...]:
        return (batch_size, *self.denoiser.config.latent_shape)

    def denoising_loss(self, x0: Tensor, noise: Tensor, t: Tensor, snr_gamma: float = 5.0):
        """min(SNR_t, gamma) ||x_0_hat(x_t, t) - x_0||^2 at x_t = alpha_t x_0 + sigma_t noise
        (Min-SNR weighting, Hang et al. 2023: the noisiest steps' irreducible x_0 error would
        otherwise dominate the gradient; at this size it makes training several times faster)."""
        alpha, sigma = (expand_as(c, x0) for c in self.schedule.coefficients(t))
        x0_hat = self.denoiser(alpha * x0 + sigma * noise, t, alpha, sigma)
        weight = (alpha**2 / sigma**2).clamp(max=snr_gamma)
        return (weight * (x0_hat - x0) ** 2).mean()

    def encode(self, media) -> Tensor:
        param = next(self.denoiser.parameters())
        return self.codec.encode(media).to(param.device, param.dtype)

    def decode(self, latents: Tensor) -> Tensor:
        return self.codec.decode(latents.detach().cpu())


class SyntheticAudioBase(SyntheticBase):
    """Audio: float32 waveforms (B, 16000) at 16 kHz <-> log-STFT latents (B, 1, 64, 64)."""

    codec_class = LogSpectrogramCodec

    @property
    def sample_rate(self) -> int:  # the rate of the waveforms ``decode`` returns
        return int(self.codec.config.sample_rate)


class SyntheticVideoBase(SyntheticBase):
    """Video: uint8 frames (B, 8, 32, 32, 3) <-> latents (B, 3, 8, 16, 16) in [-1, 1]."""

    codec_class = FrameCodec
    fps = float(FPS)  # the synthetic world's frame rate (mmdisco.data.synthetic)
