"""AuffusionBase on a tiny random checkpoint in auffusion/auffusion-full's folder layout."""

import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import PNDMScheduler
from tiny_audio_components import save_tiny_auffusion

from mmdisco.bases.auffusion import AuffusionBase, ConditionAdapter
from mmdisco.bases.mel import MelExtractor, spectrogram_to_image
from mmdisco.bases.protocol import Condition

PROMPTS = ["a dog barks", "rain on a roof"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_auffusion(tmp_path_factory.mktemp("auffusion"))


@pytest.fixture(scope="module")
def base(tiny_dir):
    return AuffusionBase.from_pretrained(tiny_dir)


def tones(batch: int, seconds: float = 2.0, sr: int = 16_000) -> torch.Tensor:
    t = torch.arange(round(seconds * sr)) / sr
    return torch.stack([0.4 * torch.sin(2 * math.pi * (300 + 200 * i) * t) for i in range(batch)])


def test_loads_frozen_with_its_schedule_and_time_first_latents(base, tiny_dir):
    assert base.sample_shape(2) == (2, 4, 25, 32)  # 2.0 s: image (256, 200) / 8, transposed
    assert base.sample_rate == 16_000 and base.guidance_scale == 8.0
    scheduler = PNDMScheduler.from_pretrained(tiny_dir, subfolder="scheduler")
    np.testing.assert_allclose(base.schedule.alpha_bar.numpy(), scheduler.alphas_cumprod, 1e-5)
    assert not any(p.requires_grad for p in base.parameters()) and not base.training


def test_encode_pads_the_image_to_10s_of_silence_and_decode_gives_the_duration(base, monkeypatch):
    monkeypatch.setattr(base, "posterior", "mean")  # compared with the VAE's posterior mean
    wave = tones(2)
    latents = base.encode(wave)
    assert latents.shape == base.sample_shape(2)
    image = spectrogram_to_image(MelExtractor("auffusion")(wave))  # (2, 3, 256, 200)
    image = F.pad(image, (0, 1024 - 200), value=-1.0)
    full = base.vae.encode(image).latent_dist.mean * base.vae.config.scaling_factor
    torch.testing.assert_close(latents, full[..., :25].transpose(-1, -2), atol=1e-5, rtol=1e-4)
    audio = base.decode(latents)
    assert audio.shape == (2, 32_000) and audio.dtype == torch.float32
    assert audio.abs().max() <= 1 and torch.isfinite(audio).all()


def test_prompt_tokens_are_zero_padded_before_the_adapter_and_uncond_is_zeros(base):
    cond = base.encode_prompt(PROMPTS)
    assert cond.cond.shape == (2, 12, 24) and cond.uncond.shape == (1, 12, 24)
    assert torch.equal(cond.uncond, torch.zeros(1, 12, 24)) and cond.guidance_scale == 8.0
    torch.testing.assert_close(cond.pooled, cond.cond.mean(dim=1))
    assert torch.equal(cond.pooled_uncond, torch.zeros(1, 24))
    ids = base.tokenizers[0]("a dog barks", return_tensors="pt").input_ids  # no padding
    hidden = base.text_encoders[0](ids).last_hidden_state
    n = hidden.shape[1]
    adapter = base.adapters[0]
    torch.testing.assert_close(cond.cond[0, :n], adapter(hidden)[0])
    pad = adapter.norm(adapter.proj.bias)  # adapter(0): padded tokens
    torch.testing.assert_close(cond.cond[0, n:], pad.expand(12 - n, -1))


def test_cfg_is_uncond_plus_scale_times_difference_of_separate_calls(base, gen):
    cond = base.encode_prompt(PROMPTS)
    x_t = torch.randn(base.sample_shape(2), generator=gen)
    t = torch.tensor([50, 900])
    guided = base.predict_noise(x_t, t, cond)
    eps_c = base.predict_noise(x_t, t, Condition(cond.cond))
    eps_u = base.predict_noise(x_t, t, Condition(cond.uncond))
    torch.testing.assert_close(guided, eps_u + 8.0 * (eps_c - eps_u), atol=1e-4, rtol=1e-4)
    assert (eps_c - eps_u).abs().max() > 1e-4
    torch.testing.assert_close(base.predict_noise(x_t, t, None), eps_u, atol=1e-6, rtol=1e-5)


def test_unet_sees_10s_padded_with_noised_silence(base, gen, monkeypatch):
    monkeypatch.setattr(base, "posterior", "mean")  # compared with the VAE's posterior mean
    monkeypatch.setattr(base, "_silence", None)
    seen = []
    hook = base.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    x_t = torch.randn(base.sample_shape(1), generator=gen)
    try:
        for step in (100, 600):
            out = base.model_output(x_t, torch.tensor([step]), None)
            assert out.shape == x_t.shape
    finally:
        hook.remove()
    assert [s.shape for s in seen] == [(1, 4, 32, 128)] * 2
    torch.testing.assert_close(seen[0][..., :25], x_t.transpose(-1, -2))
    silence = base.vae.encode(torch.full((1, 3, 256, 1024), -1.0)).latent_dist.mean
    silence = (silence * base.vae.config.scaling_factor)[..., 25:]
    noises = []
    for step, x in zip((100, 600), seen):
        alpha, sigma = (float(c) for c in base.schedule.coefficients(step))
        noises.append((x[..., 25:] - alpha * silence) / sigma)
    torch.testing.assert_close(noises[0], noises[1], atol=1e-4, rtol=1e-4)  # one fixed noise
    assert 0.8 < noises[0].std() < 1.2


def test_adapter_loads_its_official_names_strictly(tiny_dir):
    state = torch.load(tiny_dir / "condition_adapter_0" / "condition_adapter.pt")
    assert set(state) == {"proj.weight", "proj.bias", "norm.weight", "norm.bias"}
    adapter = ConditionAdapter.from_pretrained(tiny_dir / "condition_adapter_0")
    assert adapter.proj.in_features == 16 and adapter.proj.out_features == 24
    state["extra"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="extra"):
        adapter.load_state_dict(state, strict=True)


def test_missing_or_incomplete_directory_lists_expected_files(tiny_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*condition_config.json"):
        AuffusionBase.from_pretrained(tmp_path / "nowhere")
    partial = tmp_path / "partial"
    shutil.copytree(tiny_dir, partial)
    (partial / "vocoder" / "vocoder.pt").unlink()
    (partial / "condition_adapter_0" / "condition_adapter.pt").unlink()
    with pytest.raises(
        FileNotFoundError, match="lacks vocoder/vocoder.pt, condition_adapter_0/condition_adapter"
    ):
        AuffusionBase.from_pretrained(partial)
