"""Shared plumbing for latent diffusion models stored in diffusers format.

A wrapper for one diffusers text-to-audio / text-to-video model (AnimateDiff, VideoCrafter2,
AudioLDM, Auffusion) needs four things that are the same everywhere:

- :func:`schedule_from_scheduler_config`: a diffusers ``scheduler_config.json`` as a
  :class:`~mmdisco.schedule.NoiseSchedule` and its prediction type;
- :func:`resolve_pretrained` / :func:`load_components`: hub ids or local directories, checked
  for the files a wrapper needs, with one error listing them and where to get them;
- :func:`vae_encode` / :func:`vae_decode`: an image ``AutoencoderKL`` with its scaling factor,
  applied frame by frame (video) in chunks to bound memory;
- :func:`clip_text_embeddings` / :func:`text_condition`: CLIP text embeddings (last layer, or
  a hidden layer then the final layer norm as SD-2 uses OpenCLIP-H), the empty-prompt
  unconditional embedding, and the mean-pooled (B, D) vectors the discriminator takes.

Plus :func:`frames_to_tensor` / :func:`tensor_to_frames` for uint8 video frames.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mmdisco.bases.protocol import Condition
from mmdisco.pretrained import resolve_pretrained
from mmdisco.schedule import NoiseSchedule

# Weight file names, any one of which makes a component loadable (diffusers, transformers).
WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "model.safetensors",
    "pytorch_model.bin",
    "diffusion_pytorch_model.safetensors.index.json",
    "model.safetensors.index.json",
)


# -- schedules -------------------------------------------------------------------------------
def schedule_from_scheduler_config(
    config: Mapping[str, Any], **overrides: Any
) -> tuple[NoiseSchedule, str]:
    """(NoiseSchedule, prediction_type) from a diffusers scheduler config (any scheduler class).

    Reads ``num_train_timesteps``, ``beta_schedule`` ("linear" / "scaled_linear"),
    ``beta_start``, ``beta_end``, ``trained_betas`` and ``prediction_type``; ``overrides``
    replace any of them and may add ``scale_b`` / ``scale_steps`` (VideoCrafter2's signal
    scaling, see :meth:`NoiseSchedule.ddpm`).
    """
    cfg = {
        "num_train_timesteps": 1000,
        "beta_schedule": "linear",
        "beta_start": 1e-4,
        "beta_end": 0.02,
        "trained_betas": None,
        "prediction_type": "epsilon",
        "scale_b": None,
        "scale_steps": 400,
    }
    cfg.update({k: v for k, v in dict(config).items() if k in cfg})
    cfg.update(overrides)
    if cfg["trained_betas"] is not None:
        if cfg["scale_b"] is not None:
            raise ValueError("scale_b is only supported with a named beta_schedule")
        betas = torch.as_tensor(cfg["trained_betas"], dtype=torch.float64)
        return NoiseSchedule.from_betas(betas), cfg["prediction_type"]
    schedule = NoiseSchedule.ddpm(
        beta_schedule=cfg["beta_schedule"],
        num_train_timesteps=cfg["num_train_timesteps"],
        beta_start=cfg["beta_start"],
        beta_end=cfg["beta_end"],
        scale_b=cfg["scale_b"],
        scale_steps=cfg["scale_steps"],
    )
    return schedule, cfg["prediction_type"]


# -- finding and loading pretrained components -----------------------------------------------
def component_files(subfolder: str | None, kind: str = "model") -> list[str | tuple[str, ...]]:
    """The files a diffusers / transformers component needs, relative to the model root.

    ``kind``: "model" (config.json + weights), "scheduler" (scheduler_config.json) or
    "tokenizer" (a fast tokenizer.json, or vocab.json as the SD repos ship). A tuple means
    "any one of these".
    """
    prefix = f"{subfolder}/" if subfolder else ""
    if kind == "model":
        return [f"{prefix}config.json", tuple(prefix + w for w in WEIGHT_FILES)]
    if kind == "scheduler":
        return [f"{prefix}scheduler_config.json"]
    if kind == "tokenizer":
        return [(f"{prefix}tokenizer.json", f"{prefix}vocab.json")]
    raise ValueError(f"unknown component kind {kind!r}")


def load_components(
    spec: Mapping[str, tuple[Any, str | Path, str | None, str]], hint: str
) -> dict[str, Any]:
    """Load several components: ``{name: (cls, source, subfolder, kind)}``.

    Every source (hub id or directory) is resolved once, for all the files its components
    need, so a missing or incomplete directory gives one error listing all of them. Models
    come from ``cls.from_pretrained``, schedulers from ``cls.from_config``.
    """
    needs: dict[str, list] = {}
    for _cls, source, subfolder, kind in spec.values():
        needs.setdefault(str(source), []).extend(component_files(subfolder, kind))
    roots = {source: resolve_pretrained(source, req, hint) for source, req in needs.items()}
    out = {}
    for name, (cls, source, subfolder, kind) in spec.items():
        target = roots[str(source)] / subfolder if subfolder else roots[str(source)]
        if kind == "scheduler":
            out[name] = cls.from_config(cls.load_config(target))
        else:
            out[name] = cls.from_pretrained(target)
    return out


def as_float32(part: Any) -> Any:
    """Modules stored in half precision come back as float32 (the bases run in float32 unless
    the caller casts them); anything else passes through."""
    if isinstance(part, torch.nn.Module) and any(
        p.dtype != torch.float32 for p in part.parameters()
    ):
        return part.float()
    return part


# -- video frames ----------------------------------------------------------------------------
def frames_to_tensor(frames: Any, height: int, width: int) -> Tensor:
    """uint8 frames (B, F, H, W, 3) -> float (B, 3, F, height, width) in [-1, 1].

    Resized (bilinear, antialiased) so the frame covers height x width, then centre-cropped.
    """
    frames = torch.as_tensor(np.asarray(frames) if not isinstance(frames, Tensor) else frames)
    if frames.ndim != 5 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"video must be uint8 (B, F, H, W, 3), got {frames.dtype} {frames.shape}")
    b, f, h, w, _ = frames.shape
    x = frames.permute(0, 1, 4, 2, 3).flatten(0, 1).float() / 127.5 - 1  # (B*F, 3, H, W)
    scale = max(height / h, width / w)
    if (h, w) != (height, width):
        size = (max(height, round(h * scale)), max(width, round(w * scale)))
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    top, left = (x.shape[-2] - height) // 2, (x.shape[-1] - width) // 2
    x = x[..., top : top + height, left : left + width].clamp(-1, 1)
    return x.unflatten(0, (b, f)).transpose(1, 2).contiguous()  # (B, 3, F, height, width)


def tensor_to_frames(x: Tensor) -> Tensor:
    """float (B, 3, F, H, W) in [-1, 1] -> uint8 (B, F, H, W, 3) on the CPU."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 4, 1).contiguous().cpu()


# -- the image VAE -------------------------------------------------------------------------
def _frames_first(x: Tensor) -> tuple[Tensor, tuple[int, ...] | None]:
    """(B, C, F, H, W) -> (B*F, C, H, W) and (B, F); 4-D inputs pass through."""
    if x.ndim == 4:
        return x, None
    return x.transpose(1, 2).flatten(0, 1), (x.shape[0], x.shape[2])


def _frames_back(y: Tensor, bf: tuple[int, ...] | None) -> Tensor:
    return y if bf is None else y.unflatten(0, bf).transpose(1, 2).contiguous()


POSTERIORS = ("sample", "mean")


def content_generator(x: Tensor) -> torch.Generator:
    """A CPU generator seeded by the bytes of ``x``: the same input always draws the same noise,
    whatever batch, rank or resumed run it is encoded in."""
    digest = hashlib.sha256(x.detach().float().cpu().numpy().tobytes()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


@torch.no_grad()
def vae_encode(vae, x: Tensor, chunk: int = 8, posterior: str = "sample") -> Tensor:
    """Images (B, 3, H, W) or videos (B, 3, F, H, W) in [-1, 1] -> latents * scaling_factor,
    (B, C, h, w) or (B, C, F, h, w) (SD-style latents: Rombach et al. 2022, scaling factor from
    the VAE's config, 0.18215 for SD-1/2).

    ``posterior="sample"`` draws from the VAE posterior, as the official MMDisCo code encodes
    real data (``latent_dist.sample()``), with noise seeded by each image's content
    (:func:`content_generator`), so an encoding is a deterministic function of its input;
    ``"mean"`` takes the posterior mean, which is smoother than any latent a base samples: a
    discriminator could tell real pairs by that alone at low noise."""
    if posterior not in POSTERIORS:
        raise ValueError(f"posterior must be one of {POSTERIORS}, got {posterior!r}")
    flat, bf = _frames_first(x.to(vae.device, vae.dtype))
    out = []
    for part in flat.split(chunk):
        dist = vae.encode(part).latent_dist
        if posterior == "mean":
            out.append(dist.mean)
        else:
            out.append(dist.sample([content_generator(p) for p in part]))
    return _frames_back(torch.cat(out) * vae.config.scaling_factor, bf)


@torch.no_grad()
def vae_decode(vae, z: Tensor, chunk: int = 8) -> Tensor:
    """Inverse of :func:`vae_encode`: latents (B, C, [F,] h, w) -> images in about [-1, 1]."""
    flat, bf = _frames_first(z.to(vae.device, vae.dtype) / vae.config.scaling_factor)
    out = [vae.decode(part).sample for part in flat.split(chunk)]
    return _frames_back(torch.cat(out), bf)


# -- CLIP text -------------------------------------------------------------------------------
@torch.no_grad()
def clip_text_embeddings(
    tokenizer, text_encoder, prompts: list[str], layer: int | None = None
) -> Tensor:
    """(B, L, D) token embeddings of prompts padded to the tokenizer's max length (77).

    ``layer`` None: the last hidden state (after the final layer norm), as SD-1.x uses CLIP-L.
    ``layer`` k: the output of the k-th transformer block, then the final layer norm: SD-2 /
    VideoCrafter2 take OpenCLIP-H's penultimate block (k = 23 of 24) this way.
    """
    ids = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(text_encoder.device)
    if layer is None:
        return text_encoder(ids).last_hidden_state
    n = text_encoder.config.num_hidden_layers
    if not 1 <= layer <= n:
        raise ValueError(f"layer {layer} is not a block of this {n}-layer text encoder")
    out = text_encoder(ids, output_hidden_states=True)
    if layer == n:
        return out.last_hidden_state
    inner = getattr(text_encoder, "text_model", text_encoder)  # transformers < 5 nests it
    return inner.final_layer_norm(out.hidden_states[layer])


def text_condition(
    tokenizer,
    text_encoder,
    prompts: list[str],
    guidance_scale: float,
    layer: int | None = None,
    negative_prompt: str = "",
) -> Condition:
    """Condition with cond (B, L, D), uncond (1, L, D) from ``negative_prompt`` (the empty
    prompt of classifier-free guidance), and their token means (B, D) / (1, D) as pooled."""
    cond = clip_text_embeddings(tokenizer, text_encoder, prompts, layer)
    uncond = clip_text_embeddings(tokenizer, text_encoder, [negative_prompt], layer)
    return Condition(
        cond=cond,
        uncond=uncond,
        guidance_scale=guidance_scale,
        pooled=cond.mean(dim=1),
        pooled_uncond=uncond.mean(dim=1),
    )


# -- latent shapes shared by the wrappers -----------------------------------------------------
class MelLatentShape:
    """Shapes of a mel-spectrogram latent model (AudioLDM, Auffusion). The wrapper provides
    ``duration``, ``sample_rate``, ``mel`` (a MelExtractor), ``vae`` and ``vae_scale``."""

    @property
    def num_samples(self) -> int:
        return round(self.duration * self.sample_rate)

    @property
    def num_frames(self) -> int:
        """Mel frames the VAE sees: samples / hop, rounded up to a multiple of the VAE scale."""
        frames = math.ceil(self.num_samples / self.mel.config.hop_length)
        return math.ceil(frames / self.vae_scale) * self.vae_scale

    def sample_shape(self, batch_size: int) -> tuple[int, ...]:
        """(B, latent channels, frames / scale, mels / scale): time before frequency."""
        s = self.vae_scale
        channels = self.vae.config.latent_channels
        return (batch_size, channels, self.num_frames // s, self.mel.config.n_mels // s)


class FrameLatentShape:
    """Shape of a video latent model's samples (AnimateDiff, VideoCrafter2). The wrapper
    provides ``unet``, ``num_frames``, ``height``, ``width`` and ``vae_factor``."""

    def sample_shape(self, batch_size: int) -> tuple[int, ...]:
        """(B, C, F, height / f, width / f)."""
        f = self.vae_factor
        channels = self.unet.config.in_channels
        return (batch_size, channels, self.num_frames, self.height // f, self.width // f)
