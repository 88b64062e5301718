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
