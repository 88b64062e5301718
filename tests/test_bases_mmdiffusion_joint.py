"""MMDiffusionBase: the joint base through JointSampler (with and without D), its SR stage."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler
from omegaconf import OmegaConf

from mmdisco.bases.mmdiffusion import (
    MMDiffusionBase,
    ddim_clipped,
    official_schedule,
    respaced_steps,
)
from mmdisco.bases.mmdiffusion_sr import SuperResUNet, SuperResUNetConfig
from mmdisco.bases.mmdiffusion_unet import CoupledUNet, CoupledUNetConfig
from mmdisco.discriminator.two_stream import TwoStreamDiscriminator
from mmdisco.guidance import JointGuidance
from mmdisco.sampling import JointSampler

CONFIG_DIR = Path(__file__).parents[1] / "configs" / "discriminator"
TINY_UNET = CoupledUNetConfig(
    video_size=(8, 3, 16, 16), audio_size=(1, 512), model_channels=32, num_res_blocks=1,
    channel_mult=(1, 1, 1, 1), num_heads=2, num_head_channels=16,
)  # fmt: skip
TINY_SR = SuperResUNetConfig(
    large_size=32, small_size=16, model_channels=32, num_res_blocks=1, channel_mult=(1, 1),
    attention_resolutions=(2,), num_heads=2,
)  # fmt: skip


def perturbed(model: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    """Move every parameter off its init (the zero-initialised output convs included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def base() -> MMDiffusionBase:
    torch.manual_seed(0)
    unet = perturbed(CoupledUNet(TINY_UNET), 1)
    sr = perturbed(SuperResUNet(TINY_SR), 2)
    return MMDiffusionBase(unet, sr)


@pytest.fixture(scope="module")
def discriminator() -> TwoStreamDiscriminator:
    kw = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "mmdiffusion_ind.yaml"))
    del kw["_target_"], kw["_convert_"]
    kw.update(channels=8, channel_mult=(1, 2), blocks_per_level=1, time_dim=16, norm_groups=4)
    torch.manual_seed(3)
    return perturbed(TwoStreamDiscriminator(**kw), 4, scale=0.1)


def sampler(base, disc=None, scales=1.0, steps=6):
    model = base if disc is None else JointGuidance(base, disc, scales)
    return JointSampler(model, solver="dpm_singlestep", num_steps=steps, order=3)


def test_predict_noise_is_one_forward_of_the_network(base):
    g = torch.Generator().manual_seed(0)
    xs = {m: torch.randn(*s, generator=g) for m, s in base.sample_shapes(2).items()}
    assert xs["video"].shape == (2, 3, 8, 16, 16) and xs["audio"].shape == (2, 1, 512)
    t = torch.tensor([321, 321])
    eps = base.predict_noise(xs, t)
    shifts = base._shift_generator(t)
    v, a = base.unet(xs["video"].transpose(1, 2), xs["audio"], t, generator=shifts)
    torch.testing.assert_close(eps["video"], v.transpose(1, 2), rtol=0, atol=0)
    torch.testing.assert_close(eps["audio"], a, rtol=0, atol=0)
    with pytest.raises(ValueError, match="unconditional"):
        base.predict_noise(xs, t, {"audio": object(), "video": None})


def test_base_alone_and_guided(base, discriminator):
    x_T = sampler(base).initial_noise(base.sample_shapes(2), torch.Generator().manual_seed(5))
    alone = sampler(base).sample(x_T=x_T)
    zero = sampler(base, discriminator, scales=0.0).sample(x_T=x_T)
    guided = sampler(base, discriminator, scales={"audio": 1.0, "video": 1.0}).sample(x_T=x_T)
    for m in ("audio", "video"):
        torch.testing.assert_close(zero[m], alone[m], rtol=0, atol=0)  # D = None, bit for bit
        assert not torch.allclose(guided[m], alone[m], atol=1e-4)
        assert torch.isfinite(guided[m]).all()


def test_batch_equals_single_runs(base, discriminator):
    gens = [torch.Generator().manual_seed(s) for s in (11, 12)]
    s = sampler(base, discriminator, scales=1.0)
    batch = s.sample(2, generator=gens)
    for i, seed in enumerate((11, 12)):
        single = s.sample(1, generator=[torch.Generator().manual_seed(seed)])
        for m in ("audio", "video"):
            torch.testing.assert_close(single[m][0], batch[m][i], rtol=1e-4, atol=1e-5)


def test_respaced_steps_and_ddim_match_diffusers():
    assert respaced_steps(1000, 25) == list(range(0, 1000, 40))
    schedule = official_schedule()
    ddim = DDIMScheduler(
        num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
        clip_sample=True, clip_sample_range=1.0, set_alpha_to_one=True,
        timestep_spacing="leading", steps_offset=0,
    )  # fmt: skip
    ddim.set_timesteps(25)
    assert ddim.timesteps.tolist() == respaced_steps(1000, 25)[::-1]

    def eps_fn(x, t):  # an analytic noise model that pushes x0 out of [-1, 1]
        return torch.sin(3 * x) + 0.002 * t.view(-1, 1, 1, 1).float() * x

    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x_T.clone()
    for t in ddim.timesteps:
        x = ddim.step(eps_fn(x, t.expand(2)), t, x, use_clipped_model_output=True).prev_sample
    ours = ddim_clipped(eps_fn, x_T, schedule, respaced_steps(1000, 25))
    torch.testing.assert_close(ours, x, rtol=1e-6, atol=1e-6)


def test_upsample_shares_noise_across_frames(base):
    low = torch.rand(1, 3, 1, 16, 16).expand(1, 3, 8, 16, 16) * 2 - 1  # 8 equal frames
    low = torch.cat([low, torch.rand(1, 3, 8, 16, 16) * 2 - 1])  # and a random clip
    out = base.upsample(low, torch.Generator().manual_seed(0), chunk=5)
    assert out.shape == (2, 3, 8, 32, 32) and out.abs().max() <= 1.0
    for k in range(1, 8):  # equal frames, shared noise -> equal outputs
        torch.testing.assert_close(out[0, :, k], out[0, :, 0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out[1, :, 1], out[1, :, 0])
    frames = base["video"].decode(low[:1], torch.Generator().manual_seed(0))
    assert frames.shape == (1, 8, 32, 32, 3) and frames.dtype == torch.uint8
    base.super_resolution = False
    try:
        assert base["video"].decode(low[:1]).shape == (1, 8, 16, 16, 3)
    finally:
        base.super_resolution = True


def test_codecs(base):
    wave = torch.rand(2, 512) * 2 - 1
    enc = base["audio"].encode(wave)
    assert enc.shape == (2, 1, 512)
    torch.testing.assert_close(base["audio"].decode(enc), wave)
    frames = torch.randint(0, 256, (1, 8, 20, 24, 3), dtype=torch.uint8)
    assert base["video"].encode(frames).shape == (1, 3, 8, 16, 16)
    assert (base["audio"].sample_rate, base["video"].fps) == (16000, 10.0)
    with pytest.raises(NotImplementedError):
        base["audio"].encode_prompt([""])
