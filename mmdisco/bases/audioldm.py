"""AudioLDM (Liu et al. 2023) as a :class:`~mmdisco.bases.protocol.DiffusionBase`.

Components of the diffusers-format checkpoint (hub: ``cvssp/audioldm-m-full``, the model the
paper and the official MMDisCo code use), loaded one by one, without the deprecated pipeline:

    unet/          UNet2DConditionModel, CLAP text embedding as ``class_labels``
    vae/           AutoencoderKL on the 1-channel (T, 64) log-mel "image"
    text_encoder/  ClapTextModelWithProjection           tokenizer/  RobertaTokenizer
    vocoder/       SpeechT5HifiGan (64 mels -> 16 kHz)   scheduler/  scheduler_config.json

Facts from diffusers' ``AudioLDMPipeline`` (``pipelines/deprecated/audioldm/
pipeline_audioldm.py``, diffusers 0.42):

- ``_encode_prompt``: prompts tokenised with ``padding="max_length"``, ``max_length =
  tokenizer.model_max_length``, truncation, and the attention mask passed to CLAP; the
  condition is ``text_embeds`` (the projected pooled output, (B, 512)) L2-normalised
  (``F.normalize(..., dim=-1)``); the unconditional embedding is the same for the empty
  prompt "".
- ``__call__``: ``unet(latents, t, encoder_hidden_states=None, class_labels=prompt_embeds)``;
  the mel has ``duration / (prod(vocoder.upsample_rates) / sampling_rate)`` = 100 frames per
  second, rounded up to a multiple of ``vae_scale_factor`` = 2^(len(vae.block_out_channels)
  - 1) = 4; the latent is (latent_channels = 8, frames / 4, model_in_dim / 4 = 16); the
  waveform is cut to ``duration * sampling_rate`` samples.
- ``decode_latents`` / ``mel_spectrogram_to_waveform``: ``vae.decode(latents /
  scaling_factor)``, squeeze the channel, ``vocoder(mel)`` with mel (B, T, 64).

For 2.0 s at 16 kHz: mel (B, 1, 200, 64), latent (B, 8, 50, 16): time before frequency, the
layout the discriminator's 2-D audio stream expects. The encoder's log-mel is
:data:`~mmdisco.bases.mel.MEL_PRESETS` ``"audioldm"`` (AudioLDM's own ``wav_to_fbank``) by
default; ``mel="audioldm_mmdisco"`` reproduces the official MMDisCo code's framing instead.
Classifier-free guidance 2.5 (paper, A.3; official ``conf/model/audioldm_animediff_vggsound``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import Tensor
from transformers import AutoTokenizer, ClapTextModelWithProjection, SpeechT5HifiGan

from mmdisco.bases import ldm
from mmdisco.bases.ldm import (
    component_files,
    schedule_from_scheduler_config,
    vae_decode,
    vae_encode,
)
from mmdisco.bases.mel import MelConfig, MelExtractor, as_waveform
from mmdisco.bases.protocol import Condition, DiffusionBase
from mmdisco.pretrained import resolve_pretrained

HUB_ID = "cvssp/audioldm-m-full"
HINT = (
    f"Get AudioLDM in diffusers layout: `huggingface-cli download {HUB_ID}` (or pass a local "
    "copy of it as `pretrained`)."
)


def required_files() -> list[str | tuple[str, ...]]:
    """What :meth:`AudioLDMBase.from_pretrained` needs, relative to the model root."""
    return [
        *component_files("unet"),
        *component_files("vae"),
        *component_files("text_encoder"),
        *component_files("vocoder"),
        "tokenizer/tokenizer_config.json",
        ("tokenizer/tokenizer.json", "tokenizer/vocab.json"),
        *component_files("scheduler", "scheduler"),
    ]


class AudioLDMBase(ldm.MelLatentShape, DiffusionBase):
    """AudioLDM: waveforms (B, N) at 16 kHz <-> latents (B, 8, T / 4, 16), CLAP text condition.

    ``duration`` (seconds) fixes N = duration * 16000 and T = 100 * duration (rounded up to a
    multiple of 4; the waveform is zero-padded to it before encoding and cut after decoding).
    """

    text_conditional = True
    decodes_to_media = True

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        text_encoder: ClapTextModelWithProjection,
        tokenizer,
        vocoder: SpeechT5HifiGan,
        scheduler_config: dict,
        duration: float = 2.0,
        guidance_scale: float = 2.5,
        mel: str | MelConfig | dict = "audioldm",
        posterior: str = "sample",
    ):
        super().__init__()
        self.posterior = posterior  # VAE posterior of real latents: "sample" (official) or "mean"
        self.unet, self.vae, self.text_encoder, self.vocoder = unet, vae, text_encoder, vocoder
        self.tokenizer = tokenizer
        self.scheduler_config = dict(scheduler_config)
        self.schedule, self.prediction_type = schedule_from_scheduler_config(scheduler_config)
        self.mel = MelExtractor(mel)
        self.duration = float(duration)
        self.guidance_scale = float(guidance_scale)
        self.sample_rate = int(vocoder.config.sampling_rate)
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        self._check_consistent()
        self._empty_prompt: Tensor | None = None

    def _check_consistent(self) -> None:
        c, voc = self.mel.config, self.vocoder.config
        hop = math.prod(voc.upsample_rates)
        if (c.n_mels, c.sample_rate, c.hop_length) != (voc.model_in_dim, self.sample_rate, hop):
            raise ValueError(
                f"mel (n_mels {c.n_mels}, {c.sample_rate} Hz, hop {c.hop_length}) does not "
                f"match the vocoder ({voc.model_in_dim} mels, {self.sample_rate} Hz, hop {hop})"
            )
        if c.n_mels % self.vae_scale:
            raise ValueError(f"{c.n_mels} mels are not divisible by the VAE's {self.vae_scale}")

    @classmethod
    def from_pretrained(
        cls,
        pretrained: str | Path = HUB_ID,
        duration: float = 2.0,
        guidance_scale: float = 2.5,
        mel: str | MelConfig | dict = "audioldm",
        posterior: str = "sample",
    ) -> AudioLDMBase:
        """A hub id or a local directory in diffusers layout; frozen, eval mode, float32."""
        root = resolve_pretrained(pretrained, required_files(), HINT)
        scheduler_config = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
        base = cls(
            unet=UNet2DConditionModel.from_pretrained(root / "unet"),
            vae=AutoencoderKL.from_pretrained(root / "vae"),
            text_encoder=ClapTextModelWithProjection.from_pretrained(root / "text_encoder"),
            tokenizer=AutoTokenizer.from_pretrained(root / "tokenizer"),
            vocoder=SpeechT5HifiGan.from_pretrained(root / "vocoder"),
            scheduler_config=scheduler_config,
            duration=duration,
            guidance_scale=guidance_scale,
            mel=mel,
            posterior=posterior,
        )
        return base.float().eval().requires_grad_(False)

    # -- the network -------------------------------------------------------------------------
    def model_output(self, x_t: Tensor, t: Tensor, emb: Tensor | None) -> Tensor:
        """UNet output for latents (B, 8, T', 16); ``emb`` (B, 512) normalised CLAP embeds
        (None: the empty prompt's, the model's unconditional input)."""
        if emb is None:
            emb = self.empty_prompt_embedding().expand(x_t.shape[0], -1)
        dtype = self.unet.dtype
        out = self.unet(
            x_t.to(dtype), t, encoder_hidden_states=None, class_labels=emb.to(dtype)
        ).sample
        return out.to(x_t.dtype)

    # -- text ------------------------------------------------------------------------------
    @torch.no_grad()
    def clap_embeddings(self, prompts: list[str]) -> Tensor:
        """(B, projection_dim) L2-normalised CLAP text embeddings, as AudioLDMPipeline."""
        tokens = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).to(self.text_encoder.device)
        out = self.text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask)
        return F.normalize(out.text_embeds, dim=-1)

    def empty_prompt_embedding(self) -> Tensor:
        """(1, D) embedding of "" (cached): the unconditional input of CFG."""
        if self._empty_prompt is None or self._empty_prompt.device != self.text_encoder.device:
            self._empty_prompt = self.clap_embeddings([""])
        return self._empty_prompt

    def encode_prompt(self, prompts: list[str]) -> Condition:
        """cond (B, D), uncond (1, D) for "", guidance 2.5 by default; the CLAP embeddings are
        already pooled, so they are also the discriminator's ``pooled`` vectors."""
        cond = self.clap_embeddings(prompts)
        uncond = self.empty_prompt_embedding()
        return Condition(
            cond=cond,
            uncond=uncond,
            guidance_scale=self.guidance_scale,
            pooled=cond,
            pooled_uncond=uncond,
        )

    # -- codecs ----------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, media) -> Tensor:
        """Waveforms (B, N) at 16 kHz, N = duration * 16000 -> latents (B, 8, T / 4, 16):
        AudioLDM's log-mel (B, 1, T, 64), then a VAE posterior sample (``posterior``) * scaling."""
        wave = as_waveform(media, self.num_samples).to(self.mel.mel_basis.device)
        hop = self.mel.config.hop_length
        wave = F.pad(wave, (0, self.num_frames * hop - wave.shape[1]))  # AudioLDM's pad_wav
        log_mel = self.mel(wave).unsqueeze(1)  # (B, 1, T, 64)
        return vae_encode(self.vae, log_mel, posterior=self.posterior)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Latents (B, 8, T / 4, 16) -> float32 waveforms (B, N) in [-1, 1] on the CPU."""
        mel = vae_decode(self.vae, latents).squeeze(1)  # (B, T, 64)
        wave = self.vocoder(mel.to(self.vocoder.dtype))  # (B, T * 160)
        return wave[:, : self.num_samples].float().cpu()
