"""MM-Diffusion (Ruan et al., CVPR 2023) as a joint audio-video base, with its SR stage.

Model facts (researchmm/MM-Diffusion, as used by SonyResearch/MMDisCo):

- Base (``landscape.pt``, ``AIST++.pt``): :class:`~mmdisco.bases.mmdiffusion_unet.CoupledUNet`
  with MMDisCo's ``conf/model/mm_diffusion/base.yaml`` flags, which fill in MM-Diffusion's
  ``multimodal_script_util.model_defaults``: video 16x3x64x64, audio 1x25600 (1.6 s at 16 kHz,
  16 frames at 10 fps: ``conf/inference/mmdiff.yaml``), 128 channels x (1, 2, 3, 4)
  (``create_model``'s default for 64x64), 2 ResBlocks per level, 4 self-attention heads,
  cross-attention heads of width 64 (``num_head_channels: 64``), cross attention at
  downsampling 2/4/8 with windows 1/4/8 and random shift, video attention at 2/4/8, no audio
  attention (``"-1"``), scale-shift norm, ResBlock resampling (``resblock_updown: true``),
  eps prediction (``learn_sigma: false``), linear betas 1e-4 .. 0.02 over 1000 steps.
- SR (``landscape_SR.pt``, ``AIST++_SR.pt``):
  :class:`~mmdisco.bases.mmdiffusion_sr.SuperResUNet` with ``conf/model/mm_diffusion/sr.yaml``:
  64 -> 256, 192 channels x (1, 1, 2, 2, 4, 4) (``image_sr_create_model`` for 256), 2 ResBlocks
  per level, attention at downsampling 8/16/32 (``attention_resolutions: "8,16,32"``, taken as
  factors by ``image_sr_create_model``) with 4 heads, scale-shift norm, ResBlock resampling,
  learned sigma, the same linear schedule; sampled with DDIM over 25 respaced steps
  (``timestep_respacing: ddim25``), clipping x0 to [-1, 1], per frame with one noise shared by
  all frames of a clip (MMDisCo ``MMDiffusionImageSR.forward``).
- Sampling the base (MMDisCo ``MMDisCoMMDiffusion.sample``): DPM-Solver singlestep, order 3,
  20 NFE, logSNR spacing, x0 prediction with dynamic thresholding (``solver="dpm_singlestep"``
  of :class:`~mmdisco.sampling.JointSampler`).

The official checkpoints are plain state dicts with the same parameter names as ours:
``load_official_checkpoint`` reads them with ``torch.load(weights_only=True)`` and writes a
safetensors copy beside them once.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from mmdisco.bases.mmdiffusion_sr import SuperResUNet, SuperResUNetConfig
from mmdisco.bases.mmdiffusion_unet import CoupledUNet, CoupledUNetConfig
from mmdisco.schedule import NoiseSchedule

OFFICIAL_NAMES = ("base", "sr")
HINT = (
    "Download the official MM-Diffusion checkpoints (landscape.pt, AIST++.pt, landscape_SR.pt, "
    "AIST++_SR.pt; links in github.com/researchmm/MM-Diffusion README) and pass their paths."
)


def official_config(name: str) -> CoupledUNetConfig | SuperResUNetConfig:
    """The released models' hyper-parameters (module docstring says where each comes from)."""
    if name == "base":
        return CoupledUNetConfig()
    if name == "sr":
        return SuperResUNetConfig()
    raise ValueError(f"official MM-Diffusion model must be one of {OFFICIAL_NAMES}, got {name!r}")


def build_official(name: str) -> nn.Module:
    """A randomly initialised network of the official architecture ("base" or "sr")."""
    config = official_config(name)
    return CoupledUNet(config) if name == "base" else SuperResUNet(config)


def convert_mmdiffusion_checkpoint(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official parameter names -> ours: the identity (names are kept), minus a ``module.``
    prefix left by DistributedDataParallel, in float32."""
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        out[key] = value.float() if value.is_floating_point() else value
    return out


def load_official_checkpoint(path: str | Path, cache: bool = True) -> dict[str, Tensor]:
    """Read an official ``.pt`` (``torch.load(weights_only=True)``), convert it, and keep a
    ``.safetensors`` copy beside it that later calls read instead."""
    from safetensors.torch import load_file, save_file

    path = Path(path)
    converted = path.with_suffix(".safetensors")
    if path.suffix == ".safetensors":
        return load_file(path)
    if converted.exists():
        return load_file(converted)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist. {HINT}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = convert_mmdiffusion_checkpoint(state)
    if cache:
        save_file({k: v.contiguous() for k, v in state.items()}, converted)
    return state


def official_schedule() -> NoiseSchedule:
    """Linear betas 1e-4 .. 0.02 over 1000 steps (guided-diffusion ``get_named_beta_schedule``)."""
    return NoiseSchedule.ddpm("linear", 1000, 1e-4, 0.02)


def _config(kind, overrides: dict | None):
    """A config dataclass from the official defaults plus ``overrides`` (lists -> tuples)."""
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in (overrides or {}).items()}
    return kind(**overrides)


# -- the super-resolution stage ----------------------------------------------------------------
def respaced_steps(num_train_timesteps: int, num_steps: int) -> list[int]:
    """guided-diffusion's ``space_timesteps(T, "ddim<n>")``: the stride-s steps 0, s, 2s, ..
    for the integer stride giving exactly n of them (``ddim25`` -> 0, 40, .., 960)."""
    for stride in range(1, num_train_timesteps):
        if len(range(0, num_train_timesteps, stride)) == num_steps:
            return list(range(0, num_train_timesteps, stride))
    raise ValueError(f"cannot take exactly {num_steps} strided steps of {num_train_timesteps}")


@torch.no_grad()
def ddim_clipped(model_eps, x: Tensor, schedule: NoiseSchedule, steps: list[int]) -> Tensor:
    """Deterministic DDIM (eta = 0) over increasing ``steps`` with x0 clipped to [-1, 1] and
    eps recomputed from it (guided-diffusion ``ddim_sample_loop(clip_denoised=True)``)."""
    for k in reversed(range(len(steps))):
        t = torch.full((x.shape[0],), steps[k], dtype=torch.long, device=x.device)
        a_t, s_t = (float(c) for c in schedule.coefficients(steps[k]))
        x0 = ((x - s_t * model_eps(x, t)) / a_t).clamp(-1, 1)
        eps = (x - a_t * x0) / s_t
        a_s, s_s = (float(c) for c in schedule.coefficients(steps[k - 1] if k else -1))
        x = a_s * x0 + s_s * eps
    return x


# -- the joint base ----------------------------------------------------------------------------
class MMDiffusionBase(nn.Module):
    """MM-Diffusion as one joint noise model: both modalities' eps from one forward.

    Sample space (what the sampler, the discriminator and the caches see): audio (B, 1, 25600)
    raw waveform and video (B, 3, 16, 64, 64) channels first, both in [-1, 1]; the network
    itself takes frames first. ``bases["audio"]`` / ``bases["video"]`` give the per-modality
    codecs (waveform in and out at 16 kHz; uint8 frames in at 64x64 and out at 256x256 after
    :meth:`upsample`, or 64x64 with ``super_resolution=False``).

    Cross-attention shifts (RS-MMA): with ``shift_seed`` an int, the shifts of a forward are
    drawn from a generator seeded by (shift_seed, the batch's first step), so a sample is
    reproducible and does not depend on the batch it is drawn in; with None they come from
    torch's global generator on every forward (the reference's behaviour).
    """

    names = ("audio", "video")
    conditional_names = ()  # unconditional: no prompt for either modality
    text_conditional = False
    decodes_to_media = True

    def __init__(
        self,
        unet: CoupledUNet,
        sr: SuperResUNet | None = None,
        schedule: NoiseSchedule | None = None,
        sr_steps: int = 25,
        super_resolution: bool = True,
        shift_seed: int | None = 0,
        sample_rate: int = 16000,
        fps: float = 10.0,
    ):
        super().__init__()
        self.unet, self.sr = unet, sr
        self.schedule = schedule or official_schedule()
        self.sr_steps, self.super_resolution = sr_steps, super_resolution
        self.shift_seed = shift_seed
        self.views = {"audio": _AudioView(self, sample_rate), "video": _VideoView(self, fps)}

    @classmethod
    def from_official(
        cls,
        checkpoint: str | Path,
        sr_checkpoint: str | Path | None = None,
        unet_config: dict | None = None,
        sr_config: dict | None = None,
        **kw,
    ) -> MMDiffusionBase:
        """Load ``landscape.pt`` / ``AIST++.pt`` (and ``*_SR.pt``) strictly; ``*_config``
        override the official hyper-parameters (tiny test networks)."""
        unet = CoupledUNet(_config(CoupledUNetConfig, unet_config))
        unet.load_state_dict(load_official_checkpoint(checkpoint), strict=True)
        sr = None
        if sr_checkpoint is not None:
            sr = SuperResUNet(_config(SuperResUNetConfig, sr_config))
            sr.load_state_dict(load_official_checkpoint(sr_checkpoint), strict=True)
        return cls(unet, sr, **kw).eval().requires_grad_(False)

    @property
    def schedules(self) -> dict[str, NoiseSchedule]:
        return {"audio": self.schedule, "video": self.schedule}

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def __getitem__(self, name: str):
        return self.views[name]

    @property
    def time_axes(self) -> dict[str, int]:
        """Sample space: audio (B, 1, N) samples and video (B, C, F, H, W) frames on axis 2."""
        return {"audio": 2, "video": 2}

    # -- the declared joint-base protocol (mmdisco.bases.protocol.JointBase) ----------------
    @property
    def sample_rate(self) -> int:
        return self.views["audio"].sample_rate

    @property
    def fps(self) -> float:
        return self.views["video"].fps

    def media_format(self) -> dict:
        """The clips MM-Diffusion takes: 16 kHz audio of the network's length, its frames."""
        audio, video = self.views["audio"], self.views["video"]
        return {
            "sample_rate": audio.sample_rate,
            "num_samples": audio.num_samples,
            "fps": video.fps,
            "num_frames": video.num_frames,
            "height": video.height,
            "width": video.width,
        }

    def encode(self, media) -> dict[str, Tensor]:
        return {m: self.views[m].encode(media[m]) for m in self.names}

    def decode(self, latents) -> dict:
        return {m: self.views[m].decode(latents[m]) for m in self.names}

    def encode_prompt(self, prompts: list[str]) -> dict:
        return dict.fromkeys(self.names)  # unconditional

    def cache_key(self) -> dict:
        """A fingerprint of the networks' weights (what the caches depend on)."""
        from mmdisco.hashing import weights_fingerprint

        key = {"unet": weights_fingerprint(self.unet)}
        if self.sr is not None:
            key["sr"] = weights_fingerprint(self.sr)
        return key

    def sample_shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]:
        (f, c, h, w), audio = self.unet.config.video_size, self.unet.config.audio_size
        return {"audio": (batch_size, *audio), "video": (batch_size, c, f, h, w)}

    def _shift_generator(self, t: Tensor) -> torch.Generator | None:
        if self.shift_seed is None:
            return None
        g = torch.Generator(device=t.device)
        return g.manual_seed(self.shift_seed * 1_000_003 + int(t.reshape(-1)[0]))

    @torch.no_grad()
    def predict_noise(self, xs, t, conds=None) -> dict[str, Tensor]:
        """eps for both modalities from one forward (MM-Diffusion is unconditional: ``conds``
        must be None or hold only None)."""
        if conds and any(c is not None for c in conds.values()):
            raise ValueError("MM-Diffusion is unconditional: pass conds=None")
        audio, video = xs["audio"], xs["video"]
        t = torch.as_tensor(t, device=audio.device).long().expand(audio.shape[0])
        eps_v, eps_a = self.unet(
            video.transpose(1, 2), audio, t, generator=self._shift_generator(t)
        )
        c_v, c_a = video.shape[1], audio.shape[1]  # drop learned-sigma channels if any
        return {"audio": eps_a[:, :c_a], "video": eps_v[:, :, :c_v].transpose(1, 2)}

    @torch.no_grad()
    def upsample(self, video: Tensor, generator: torch.Generator | None = None, chunk: int = 16):
        """64 -> 256 per frame: (B, 3, F, 64, 64) -> (B, 3, F, 256, 256) in [-1, 1], DDIM over
        ``sr_steps`` respaced steps, one noise per clip shared by its frames."""
        if self.sr is None:
            raise ValueError(f"this MMDiffusionBase has no super-resolution model. {HINT}")
        b, c, f = video.shape[:3]
        size = self.sr.config.large_size
        noise = torch.randn(b, c, size, size, generator=generator, device=video.device)
        low = video.transpose(1, 2).flatten(0, 1)  # (B F, 3, 64, 64)
        x_T = noise[:, None].expand(b, f, c, size, size).flatten(0, 1)
        steps = respaced_steps(self.schedule.num_train_timesteps, self.sr_steps)
        out = []
        for i in range(0, b * f, chunk):
            lo = low[i : i + chunk]

            def eps(x, t, lo=lo):
                return self.sr(x, t, lo)[:, :c]

            out.append(ddim_clipped(eps, x_T[i : i + chunk], self.schedule, steps))
        return torch.cat(out).unflatten(0, (b, f)).transpose(1, 2)


class _AudioView:
    """The audio side of :class:`MMDiffusionBase`: raw 16 kHz waveform, no codec."""

    def __init__(self, base: MMDiffusionBase, sample_rate: int):
        self.base, self.sample_rate = base, sample_rate

    @property
    def num_samples(self) -> int:
        return self.base.unet.config.audio_size[1]

    @property
    def device(self) -> torch.device:
        return self.base.device

    def sample_shape(self, batch_size: int) -> tuple[int, ...]:
        return self.base.sample_shapes(batch_size)["audio"]

    def encode(self, media) -> Tensor:
        """Waveforms (B, N) in [-1, 1] -> (B, 1, N)."""
        from mmdisco.bases.mel import as_waveform

        return as_waveform(media, self.num_samples).clamp(-1, 1)[:, None].to(self.device)

    def decode(self, x: Tensor) -> Tensor:
        """(B, 1, N) -> float32 waveforms (B, N) in [-1, 1] on the CPU."""
        return x[:, 0].detach().float().clamp(-1, 1).cpu()

    def encode_prompt(self, prompts):
        raise NotImplementedError("MM-Diffusion is unconditional")


class _VideoView:
    """The video side of :class:`MMDiffusionBase`: pixels, frames at 64x64 in; 256x256 out."""

    def __init__(self, base: MMDiffusionBase, fps: float):
        self.base, self.fps = base, fps

    @property
    def num_frames(self) -> int:
        return self.base.unet.config.video_size[0]

    @property
    def height(self) -> int:
        return self.base.unet.config.video_size[2]

    @property
    def width(self) -> int:
        return self.base.unet.config.video_size[3]

    @property
    def device(self) -> torch.device:
        return self.base.device

    def sample_shape(self, batch_size: int) -> tuple[int, ...]:
        return self.base.sample_shapes(batch_size)["video"]

    def encode(self, frames) -> Tensor:
        """uint8 (B, F, H, W, 3) -> (B, 3, F, 64, 64) in [-1, 1]."""
        from mmdisco.bases.ldm import frames_to_tensor

        return frames_to_tensor(frames, self.height, self.width).to(self.device)

    def decode(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B, 3, F, 64, 64) -> uint8 (B, F, H, W, 3): 256x256 through the SR stage when the
        base has one and ``super_resolution`` is on, else 64x64."""
        from mmdisco.bases.ldm import tensor_to_frames

        if self.base.sr is not None and self.base.super_resolution:
            x = self.base.upsample(x.to(self.device), generator)
        return tensor_to_frames(x)

    def encode_prompt(self, prompts):
        raise NotImplementedError("MM-Diffusion is unconditional")
