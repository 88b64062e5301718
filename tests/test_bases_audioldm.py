"""AudioLDMBase on a tiny random checkpoint in cvssp/audioldm-m-full's diffusers layout."""

import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from tiny_audio_components import save_tiny_audioldm

from mmdisco.bases.audioldm import AudioLDMBase
from mmdisco.bases.mel import MelExtractor
from mmdisco.bases.protocol import Condition

PROMPTS = ["a dog barks", "rain on a roof"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_audioldm(tmp_path_factory.mktemp("audioldm"))


@pytest.fixture(scope="module")
def base(tiny_dir):
    return AudioLDMBase.from_pretrained(tiny_dir)


def tones(batch: int, seconds: float = 2.0, sr: int = 16_000) -> torch.Tensor:
    t = torch.arange(round(seconds * sr)) / sr
    return torch.stack([0.4 * torch.sin(2 * math.pi * (300 + 200 * i) * t) for i in range(batch)])


def test_loads_frozen_with_its_schedule_and_latent_shape(base, tiny_dir):
    assert base.sample_shape(3) == (3, 8, 50, 16)  # 2.0 s: mel (200, 64) / 4
    assert base.sample_rate == 16_000 and base.guidance_scale == 2.5
    assert base.prediction_type == "epsilon"
    scheduler = DDIMScheduler.from_pretrained(tiny_dir, subfolder="scheduler")
    np.testing.assert_allclose(base.schedule.alpha_bar.numpy(), scheduler.alphas_cumprod, 1e-5)
    assert not any(p.requires_grad for p in base.parameters()) and not base.training


def test_encode_is_audioldm_mel_through_the_vae_and_decode_gives_the_duration(base, monkeypatch):
    monkeypatch.setattr(base, "posterior", "mean")  # compared with the VAE's posterior mean
    wave = tones(2)
    latents = base.encode(wave.numpy())
    assert latents.shape == base.sample_shape(2)
    mel = MelExtractor("audioldm")(wave).unsqueeze(1)  # (B, 1, 200, 64)
    expected = base.vae.encode(mel).latent_dist.mean * base.vae.config.scaling_factor
    torch.testing.assert_close(latents, expected, atol=1e-5, rtol=1e-4)
    audio = base.decode(latents)
    assert audio.shape == (2, 32_000) and audio.dtype == torch.float32
    assert audio.abs().max() <= 1 and torch.isfinite(audio).all()
    with pytest.raises(ValueError, match=r"\(B, 32000\)"):
        base.encode(torch.zeros(2, 16_000))  # a 1 s clip for a 2 s base


def test_a_duration_off_the_vae_grid_is_padded_then_cut(base):
    short = AudioLDMBase(
        base.unet,
        base.vae,
        base.text_encoder,
        base.tokenizer,
        base.vocoder,
        base.scheduler_config,
        duration=0.5,
    )
    assert short.num_frames == 52 and short.sample_shape(1) == (1, 8, 13, 16)
    latents = short.encode(tones(1, 0.5))
    assert latents.shape == (1, 8, 13, 16)
    assert short.decode(latents).shape == (1, 8_000)


def test_prompts_are_normalised_clap_embeddings_with_the_empty_prompt_as_uncond(base):
    cond = base.encode_prompt(PROMPTS)
    assert cond.cond.shape == (2, 8) and cond.uncond.shape == (1, 8)
    assert cond.guidance_scale == 2.5 and cond.pooled is cond.cond
    torch.testing.assert_close(cond.cond.norm(dim=-1), torch.ones(2))
    tok = base.tokenizer([""], padding="max_length", max_length=16, return_tensors="pt")
    empty = base.text_encoder(tok.input_ids, attention_mask=tok.attention_mask).text_embeds
    torch.testing.assert_close(cond.uncond, F.normalize(empty, dim=-1))
    assert not torch.allclose(cond.cond[0], cond.cond[1])


def test_cfg_is_uncond_plus_scale_times_difference_of_separate_calls(base, gen):
    cond = base.encode_prompt(PROMPTS)
    x_t = torch.randn(base.sample_shape(2), generator=gen)
    t = torch.tensor([10, 700])
    guided = base.predict_noise(x_t, t, cond)
    eps_c = base.predict_noise(x_t, t, Condition(cond.cond))
    eps_u = base.predict_noise(x_t, t, Condition(cond.uncond))
    torch.testing.assert_close(guided, eps_u + 2.5 * (eps_c - eps_u), atol=1e-5, rtol=1e-4)
    assert (eps_c - eps_u).abs().max() > 1e-4  # the CLAP embedding reaches the UNet
    # no condition = the empty prompt's embedding
    torch.testing.assert_close(base.predict_noise(x_t, t, None), eps_u, atol=1e-6, rtol=1e-5)


def test_missing_or_incomplete_directory_lists_expected_files(tiny_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*unet/config.json.*vocoder"):
        AudioLDMBase.from_pretrained(tmp_path / "nowhere")
    partial = tmp_path / "partial"
    shutil.copytree(tiny_dir, partial)
    shutil.rmtree(partial / "vocoder")
    (partial / "tokenizer" / "tokenizer.json").unlink()
    (partial / "tokenizer" / "vocab.json").unlink()
    with pytest.raises(FileNotFoundError, match="lacks vocoder/config.json.*tokenizer/tokenizer"):
        AudioLDMBase.from_pretrained(partial)
