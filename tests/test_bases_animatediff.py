"""AnimateDiffBase from tiny random components of the real classes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler
from tiny_components import (
    random_frames,
    sd_scheduler,
    tiny_clip_text_model,
    tiny_clip_tokenizer,
    tiny_motion_adapter,
    tiny_unet2d,
    tiny_vae,
)

from mmdisco.bases.animatediff import AnimateDiffBase
from mmdisco.schedule import make_betas

SIZE = dict(num_frames=4, height=32, width=32)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, dict]:
    """A tiny AnimateDiff directory written by save_pretrained (SD-style scheduler config)."""
    tmp = tmp_path_factory.mktemp("animatediff")
    tokenizer = tiny_clip_tokenizer(tmp / "vocab")
    base = AnimateDiffBase(
        tiny_unet2d(),
        tiny_motion_adapter(),
        tiny_vae(),
        tiny_clip_text_model(tokenizer),
        tokenizer,
        sd_scheduler(),
        **SIZE,
    )
    with torch.no_grad():  # the adapter's output projections start at zero: make motion count
        for name, p in base.unet.named_parameters():
            if "motion_modules" in name and not p.any():
                p.normal_(0, 0.05)
    base.save_pretrained(tmp / "model")
    return tmp / "model", {k: v.clone() for k, v in base.unet.state_dict().items()}


@pytest.fixture(scope="module")
def base(saved) -> AnimateDiffBase:
    return AnimateDiffBase.from_pretrained(saved[0], **SIZE)


def test_from_pretrained_round_trip(saved, base):
    path, reference = saved
    for sub in ("unet", "motion_adapter", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (path / sub).is_dir()
    state = base.unet.state_dict()
    assert state.keys() == reference.keys()
    assert any(".motion_modules." in k for k in state)
    for k, v in reference.items():
        torch.testing.assert_close(state[k], v, rtol=0, atol=0)
    assert base.fps == 8 and base.guidance_scale == 7.5
    assert not any(p.requires_grad for p in base.parameters())


def test_separate_motion_adapter_and_vae_sources(saved, tmp_path):
    """Hub-style layout: the adapter and the VAE each at the root of their own directory."""
    path, reference = saved
    base = AnimateDiffBase.from_pretrained(
        path, motion_adapter=path / "motion_adapter", vae=path / "vae", **SIZE
    )
    k = next(k for k in reference if ".motion_modules." in k)
    torch.testing.assert_close(base.unet.state_dict()[k], reference[k], rtol=0, atol=0)


def test_schedule_scaled_linear_by_default_or_linear_on_request(saved, base):
    """Default: the scheduler config's scaled_linear 0.00085 .. 0.012 (MMDisCo's Table 6 and its
    released config); beta_schedule="linear" gives AnimateDiff's own inference setting."""
    sd = DDPMScheduler.from_pretrained(saved[0], subfolder="scheduler")
    assert sd.config.beta_schedule == "scaled_linear"
    torch.testing.assert_close(
        base.schedule.sigma**2, 1 - sd.alphas_cumprod.double(), rtol=1e-5, atol=1e-6
    )
    assert base.prediction_type == "epsilon" and base.schedule.is_vp
    linear = AnimateDiffBase.from_pretrained(saved[0], beta_schedule="linear", **SIZE)
    alpha_bar = torch.cumprod(1 - make_betas("linear", 1000, 0.00085, 0.012), 0)
    torch.testing.assert_close(linear.schedule.alpha, alpha_bar.sqrt(), rtol=1e-12, atol=0)


def test_encode_decode_shapes(base):
    frames = random_frames(2, 4, 48, 36)  # portrait: resized to 43x32, then centre-cropped
    z = base.encode(frames)
    assert tuple(z.shape) == base.sample_shape(2) == (2, 4, 4, 16, 16)
    video = base.decode(z)
    assert video.dtype == torch.uint8 and tuple(video.shape) == (2, 4, 32, 32, 3)


def test_text_is_repeated_per_frame_and_cfg_matches_two_calls(base):
    cond = base.encode_prompt(["a cat", "dog"])
    assert cond.cond.shape == (2, 16, 32) and cond.pooled.shape == (2, 32)
    torch.testing.assert_close(cond.pooled, cond.cond.mean(1))
    x = torch.randn(base.sample_shape(2), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([20, 900])
    eps = base.predict_noise(x, t, cond)
    eps_c = base.model_output(x, t, cond.cond)
    eps_u = base.model_output(x, t, cond.uncond.expand(2, -1, -1))
    gap = 7.5 * (eps_c - eps_u)
    assert gap.abs().max() > 0.05
    torch.testing.assert_close(eps, eps_u + gap, rtol=0, atol=2e-4)
    # sample 0 alone gives the same as in the batch: no mixing of prompts across frames
    alone = base.model_output(x[:1], t[:1], cond.cond[:1])
    torch.testing.assert_close(alone, eps_c[:1], rtol=0, atol=1e-4)


def test_motion_modules_mix_frames(base):
    """Changing one frame changes the prediction for the others (temporal attention)."""
    x = torch.randn(base.sample_shape(1), generator=torch.Generator().manual_seed(2))
    emb = base.encode_prompt(["a cat"]).cond
    t = torch.tensor([500])
    y = base.model_output(x, t, emb)
    x2 = x.clone()
    x2[:, :, 0] += 1.0
    y2 = base.model_output(x2, t, emb)
    assert (y2[:, :, 1:] - y[:, :, 1:]).abs().max() > 1e-4


def test_missing_dir_lists_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        AnimateDiffBase.from_pretrained(tmp_path / "nowhere")
    msg = str(err.value)
    for f in ("unet/config.json", "motion_adapter/config.json", "vae/config.json"):
        assert f in msg
    assert "tokenizer/tokenizer.json or tokenizer/vocab.json" in msg
    assert "guoyww/animatediff-motion-adapter-v1-5-2" in msg
