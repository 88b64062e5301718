"""Auffusion (Xue et al. 2024) as a :class:`~mmdisco.bases.protocol.DiffusionBase`.

Auffusion is Stable Diffusion 1.5 fine-tuned on mel spectrograms drawn as 3-channel images.
Folder layout of ``auffusion/auffusion-full`` as Auffusion's ``AuffusionPipeline.from_pretrained``
reads it (github.com/happylittlecat2333/Auffusion, ``auffusion_pipeline.py``)::

    unet/ vae/ scheduler/          diffusers UNet2DConditionModel, AutoencoderKL, scheduler
    vocoder/config.json, vocoder.pt                HiFi-GAN, 256 mels (mmdisco.bases.hifigan)
    condition_config.json                          a list of {text_encoder_name,
                                                   condition_adapter_name, condition_max_length,
                                                   condition_dim, cross_attention_dim, ...}
    text_encoder_0/                                CLIPTextModel + its CLIPTokenizer
    condition_adapter_0/config.json, condition_adapter.pt      ConditionAdapter

Facts from ``auffusion_pipeline.py``:

- ``ConditionAdapter``: ``LayerNorm(Linear(condition_dim -> cross_attention_dim)(x))``, state
  dict names ``proj.*``, ``norm.*``, saved with ``torch.save`` as ``condition_adapter.pt``.
- ``_encode_prompt`` / ``get_prompt_embeds``: each prompt is tokenised alone, without padding;
  ``last_hidden_state`` of the text encoder is zero-padded (or cut) to
  ``tokenizer_model_max_length`` = 77 tokens, then passed through the adapter; the outputs of
  several encoders are concatenated along the tokens. With no negative prompt the
  unconditional embedding is ``torch.zeros_like(prompt_embeds)`` (not the empty prompt's).
- ``__call__``: ``unet(latents, t, encoder_hidden_states=prompt_embeds)``; 256 x 1024 images
  (10.24 s) by default, height and width divisible by the VAE's 8; decode with
  ``vae.decode(latents / scaling_factor)``, ``VaeImageProcessor.postprocess``,
  ``denormalize_spectrogram``, the vocoder, and the waveform cut to ``duration * 16000``.

Facts from the official MMDisCo code (github.com/SonyResearch/MMDisCo,
``mmdisco/models/diffusion/audio.py``, class ``Auffusion``), which this wrapper follows for
clips shorter than 10.24 s (paper: 2.0 s, 200 mel frames, 25 latent frames):

- ``get_latents_from_wave``: Auffusion's mel (:data:`~mmdisco.bases.mel.MEL_PRESETS`
  ``"auffusion"``), its [0, 1] image padded along time to 1024 frames with 0 (the floor, i.e.
  silence) by ``pad_spec``, mapped to [-1, 1], VAE-encoded, the latent cut back to
  frames / 8.
- ``predict_noise``: the noisy latent is padded along time to 128 latent frames (10.24 s)
  with the latent of 10.24 s of silence noised to the same step (``get_noisy_latents`` of
  ``create_zero_emb``), the UNet runs on the full 128 frames, and its output is cut back.
- ``decode_latents``: the VAE and the vocoder run on the short latent directly.
- Classifier-free guidance 8.0 (``conf/model/auffusion_videocrafter2_vggsound.yaml``).
- The discriminator sees the latent transposed to time before frequency
  (``audio_spatial_transpose``), and the mean over tokens of the text embedding.

Choices made here:

- Latents are exposed as (B, 4, T / 8, 32), time before frequency like AudioLDM's, so the
  sampler, the data and the discriminator need no Auffusion special case; the UNet and the
  VAE see the (B, 4, 32, T / 8) original (frequency rows, highest frequency first), transposed
  inside :meth:`model_output`, :meth:`encode` and :meth:`decode`. For 2.0 s: (B, 4, 25, 32).
- The padding noise is fixed (drawn once from ``pad_seed``) rather than fresh at every call as
  in the official code, so that ``model_output`` is a deterministic function of
  (x_t, t, condition); the silence latent is a VAE posterior sample, as in the official code.
- ``encode`` draws a VAE posterior sample as the official code does (``posterior="sample"``,
  seeded by the input's content, so it is deterministic; ``"mean"``: the posterior mean); the
  waveform is not round-tripped through int16.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import Tensor, nn
from transformers import AutoTokenizer

from mmdisco.bases import ldm
from mmdisco.bases.hifigan import HifiGanGenerator
from mmdisco.bases.ldm import (
    component_files,
    schedule_from_scheduler_config,
    vae_decode,
    vae_encode,
)
from mmdisco.bases.mel import (
    MelConfig,
    MelExtractor,
    as_waveform,
    image_to_spectrogram,
    spectrogram_to_image,
)
from mmdisco.bases.protocol import Condition, DiffusionBase
from mmdisco.io import atomic_write_bytes, atomic_write_json
from mmdisco.pretrained import HUB_ID as HUB_ID_PATTERN
from mmdisco.pretrained import resolve_pretrained
from mmdisco.schedule import expand_as

HUB_ID = "auffusion/auffusion-full"
HINT = (
    "Auffusion's layout: condition_config.json, unet/, vae/, scheduler/, vocoder/{config.json, "
    "vocoder.pt}, and the text_encoder_<i>/ and condition_adapter_<i>/{config.json, "
    "condition_adapter.pt} folders that condition_config.json names. Get it with "
    f"`huggingface-cli download {HUB_ID}` (or pass a local copy of it as `pretrained`)."
)
TEXT_ENCODERS = ("CLIPTextModel", "T5EncoderModel")  # what Auffusion's loader accepts, less CLAP


class ConditionAdapter(nn.Module):
    """Auffusion's text-condition adapter: (B, L, condition_dim) -> (B, L, cross_attention_dim),
    ``norm(proj(x))``. ``config`` is its ``config.json`` (extra keys kept)."""

    def __init__(self, config: Mapping):
        super().__init__()
        self.config = dict(config)
        self.proj = nn.Linear(config["condition_dim"], config["cross_attention_dim"])
        self.norm = nn.LayerNorm(config["cross_attention_dim"])

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ConditionAdapter:
        path = Path(path)
        adapter = cls(json.loads((path / "config.json").read_text()))
        state = torch.load(path / "condition_adapter.pt", map_location="cpu", weights_only=True)
        adapter.load_state_dict(state, strict=True)
        return adapter

    def save_pretrained(self, path: str | Path) -> None:
        """config.json + condition_adapter.pt, the layout Auffusion's own loader reads."""
        path = Path(path)
        atomic_write_json(path / "config.json", self.config)
        buffer = io.BytesIO()
        torch.save(self.state_dict(), buffer)
        atomic_write_bytes(path / "condition_adapter.pt", buffer.getvalue())


def _download_extras(repo_id: str) -> None:
    """The .pt files and condition_config.json, which ldm's hub download (json / txt /
    safetensors) leaves out; honours HF_HUB_OFFLINE through huggingface_hub."""
    from huggingface_hub import snapshot_download

    snapshot_download(
        repo_id, allow_patterns=["condition_config.json", "vocoder/*", "condition_adapter*/*"]
    )


def required_files(conditions: list[dict]) -> list[str | tuple[str, ...]]:
    """Files :meth:`AuffusionBase.from_pretrained` needs, given ``condition_config.json``."""
    files: list[str | tuple[str, ...]] = [
        "condition_config.json",
        *component_files("unet"),
        *component_files("vae"),
        *component_files("scheduler", "scheduler"),
        "vocoder/config.json",
        "vocoder/vocoder.pt",
    ]
    for item in conditions:
        encoder, adapter = item["text_encoder_name"], item["condition_adapter_name"]
        files += [
            *component_files(encoder),
            f"{encoder}/tokenizer_config.json",
            (f"{encoder}/tokenizer.json", f"{encoder}/vocab.json"),
            f"{adapter}/config.json",
            f"{adapter}/condition_adapter.pt",
        ]
    return files


class AuffusionBase(ldm.MelLatentShape, DiffusionBase):
    """Auffusion: waveforms (B, N) at 16 kHz <-> latents (B, 4, T / 8, 32), CLIP text condition.

    ``duration`` fixes N = duration * 16000 and T = 100 * duration mel frames (rounded up to a
    multiple of 8). ``pad_frames`` (default 1024, the 10.24 s Auffusion is trained on; None: no
    padding) is the mel length the VAE encoder and the UNet see, as in the official MMDisCo.
    """

    text_conditional = True
    decodes_to_media = True

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        text_encoders: list[nn.Module],
        tokenizers: list,
        adapters: list[ConditionAdapter],
        vocoder: HifiGanGenerator,
        scheduler_config: dict,
        conditions: list[dict],
        duration: float = 2.0,
        guidance_scale: float = 8.0,
        pad_frames: int | None = 1024,
        pad_seed: int = 0,
        mel: str | MelConfig | dict = "auffusion",
        posterior: str = "sample",
    ):
        super().__init__()
        self.posterior = posterior  # VAE posterior of real latents: "sample" (official) or "mean"
        if not len(text_encoders) == len(tokenizers) == len(adapters) == len(conditions):
            raise ValueError("one tokenizer, adapter and condition entry per text encoder")
        self.unet, self.vae, self.vocoder = unet, vae, vocoder
        self.text_encoders = nn.ModuleList(text_encoders)
        self.adapters = nn.ModuleList(adapters)
        self.tokenizers = list(tokenizers)
        self.conditions = [dict(c) for c in conditions]
        self.scheduler_config = dict(scheduler_config)
        self.schedule, self.prediction_type = schedule_from_scheduler_config(scheduler_config)
        self.mel = MelExtractor(mel)
        self.duration = float(duration)
        self.guidance_scale = float(guidance_scale)
        self.sample_rate = vocoder.sample_rate
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        self.pad_frames = pad_frames
        self.pad_seed = pad_seed
        self._check_consistent()
        self._silence: Tensor | None = None  # (1, 4, 32, pad_frames / 8), UNet layout
        self._pad_noise: Tensor | None = None

    def _check_consistent(self) -> None:
        c, voc = self.mel.config, self.vocoder
        if (c.n_mels, c.sample_rate, c.hop_length) != (
            voc.config["num_mels"],
            voc.sample_rate,
            voc.hop_length,
        ):
            raise ValueError(
                f"mel (n_mels {c.n_mels}, {c.sample_rate} Hz, hop {c.hop_length}) does not "
                f"match the vocoder ({voc.config['num_mels']} mels, {voc.sample_rate} Hz, "
                f"hop {voc.hop_length})"
            )
        if c.n_mels % self.vae_scale or (self.pad_frames or 0) % self.vae_scale:
            raise ValueError(f"n_mels and pad_frames must be divisible by {self.vae_scale}")

    @classmethod
    def from_pretrained(
        cls,
        pretrained: str | Path = HUB_ID,
        duration: float = 2.0,
        guidance_scale: float = 8.0,
        pad_frames: int | None = 1024,
        pad_seed: int = 0,
        mel: str | MelConfig | dict = "auffusion",
        posterior: str = "sample",
    ) -> AuffusionBase:
        """A hub id or a local directory in Auffusion's layout; frozen, eval mode, float32."""
        if not Path(pretrained).exists() and HUB_ID_PATTERN.match(str(pretrained)):
            try:
                _download_extras(str(pretrained))
            except Exception:  # resolve_pretrained below reports what is missing
                pass
        root = resolve_pretrained(pretrained, ["condition_config.json"], HINT)
        conditions = json.loads((root / "condition_config.json").read_text())
        root = resolve_pretrained(pretrained, required_files(conditions), HINT)
        encoders, tokenizers, adapters = [], [], []
        for item in conditions:
            path = root / item["text_encoder_name"]
            arch = json.loads((path / "config.json").read_text()).get("architectures", ["?"])[0]
            if arch not in TEXT_ENCODERS:
                raise ValueError(f"text encoder {arch} is not one of {TEXT_ENCODERS}")
            encoders.append(getattr(transformers, arch).from_pretrained(path))
            tokenizers.append(AutoTokenizer.from_pretrained(path))
            adapters.append(ConditionAdapter.from_pretrained(root / item["condition_adapter_name"]))
        scheduler_config = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
        base = cls(
            unet=UNet2DConditionModel.from_pretrained(root / "unet"),
            vae=AutoencoderKL.from_pretrained(root / "vae"),
            text_encoders=encoders,
            tokenizers=tokenizers,
            adapters=adapters,
            vocoder=HifiGanGenerator.from_pretrained(root / "vocoder"),
            scheduler_config=scheduler_config,
            conditions=conditions,
            duration=duration,
            guidance_scale=guidance_scale,
            pad_frames=pad_frames,
            pad_seed=pad_seed,
            mel=mel,
            posterior=posterior,
        )
        return base.float().eval().requires_grad_(False)

    # -- the network -------------------------------------------------------------------------
    def model_output(self, x_t: Tensor, t: Tensor, emb: Tensor | None) -> Tensor:
        """UNet output for latents (B, 4, T', 32); ``emb`` (B, L, D) adapted text tokens (None:
        zeros, Auffusion's unconditional input). Short clips are padded to ``pad_frames`` with
        noised silence, as the official MMDisCo does."""
        x = x_t.transpose(-1, -2)  # (B, 4, 32, T'): the UNet's layout
        frames = x.shape[-1]
        x = torch.cat([x, self._noised_silence(t, frames, x)], dim=-1)  # (B, 4, 32, >= T')
        if emb is None:
            dim = self.unet.config.cross_attention_dim
            length = sum(c["condition_max_length"] for c in self.conditions)
            emb = x.new_zeros(x.shape[0], length, dim)
        dtype = self.unet.dtype
        out = self.unet(x.to(dtype), t, encoder_hidden_states=emb.to(dtype)).sample
        return out[..., :frames].transpose(-1, -2).to(x_t.dtype)  # (B, 4, T', 32)

    def _noised_silence(self, t: Tensor, frames: int, like: Tensor) -> Tensor:
        """(B, 4, 32, pad - T') = alpha_t * silence + sigma_t * fixed noise (empty if no pad)."""
        total = (self.pad_frames or 0) // self.vae_scale
        if frames >= total:
            return like[..., :0]
        if self._silence is None or self._silence.device != like.device:
            wave = torch.zeros(1, self.pad_frames * self.mel.config.hop_length)
            self._silence = self._encode_unet_layout(wave).to(like.device)
            gen = torch.Generator().manual_seed(self.pad_seed)
            self._pad_noise = torch.randn(self._silence.shape, generator=gen).to(like.device)
        alpha, sigma = (expand_as(c, like) for c in self.schedule.coefficients(t))
        pad = alpha * self._silence[..., frames:] + sigma * self._pad_noise[..., frames:]
        return pad.to(like.dtype)

    # -- text ------------------------------------------------------------------------------
    @torch.no_grad()
    def text_embeddings(self, prompts: list[str]) -> Tensor:
        """(B, L, D) adapted text tokens, L = sum of ``condition_max_length`` (77)."""
        out = []
        for prompt in prompts:
            parts = []
            for encoder, tokenizer, adapter, item in zip(
                self.text_encoders, self.tokenizers, self.adapters, self.conditions
            ):
                length = item["condition_max_length"]
                ids = tokenizer(
                    prompt, truncation=True, max_length=length, return_tensors="pt"
                ).input_ids.to(encoder.device)
                hidden = encoder(ids).last_hidden_state[:, :length]  # (1, n, D_text)
                hidden = F.pad(hidden, (0, 0, 0, length - hidden.shape[1]))  # zeros to 77
                parts.append(adapter(hidden))  # (1, 77, D)
            out.append(torch.cat(parts, dim=1))
        return torch.cat(out)

    def encode_prompt(self, prompts: list[str]) -> Condition:
        """cond (B, L, D), uncond zeros (1, L, D), guidance 8.0 by default; pooled = the mean
        over tokens (what the official MMDisCo discriminator takes), zeros for uncond."""
        cond = self.text_embeddings(prompts)
        uncond = torch.zeros_like(cond[:1])
        return Condition(
            cond=cond,
            uncond=uncond,
            guidance_scale=self.guidance_scale,
            pooled=cond.mean(dim=1),
            pooled_uncond=uncond.mean(dim=1),
        )

    # -- codecs ----------------------------------------------------------------------------
    def _encode_unet_layout(self, wave: Tensor) -> Tensor:
        """(B, N) -> (B, 4, 32, T / 8): mel image padded to ``pad_frames`` for the VAE, cut."""
        wave = wave.to(self.mel.mel_basis.device)
        hop = self.mel.config.hop_length
        frames = math.ceil(wave.shape[1] / hop / self.vae_scale) * self.vae_scale
        wave = F.pad(wave, (0, frames * hop - wave.shape[1]))
        image = spectrogram_to_image(self.mel(wave))  # (B, 3, 256, T) in [-1, 1]
        pad = max(0, (self.pad_frames or 0) - frames)
        image = F.pad(image, (0, pad), value=-1.0)  # pad_spec's 0 in [0, 1]: silence
        z = vae_encode(self.vae, image, posterior=self.posterior)
        return z[..., : frames // self.vae_scale]

    @torch.no_grad()
    def encode(self, media) -> Tensor:
        """Waveforms (B, N) at 16 kHz, N = duration * 16000 -> latents (B, 4, T / 8, 32)."""
        wave = as_waveform(media, self.num_samples)
        return self._encode_unet_layout(wave).transpose(-1, -2)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Latents (B, 4, T / 8, 32) -> float32 waveforms (B, N) in [-1, 1] on the CPU."""
        image = vae_decode(self.vae, latents.transpose(-1, -2))  # (B, 3, 256, T)
        mel = image_to_spectrogram(image)  # (B, 256, T)
        wave = self.vocoder(mel.to(next(self.vocoder.parameters()).dtype))  # (B, T * 160)
        return wave[:, : self.num_samples].float().cpu()
