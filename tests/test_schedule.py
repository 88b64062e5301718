import pytest
import torch
from diffusers import DDPMScheduler

from mmdisco.schedule import NoiseSchedule, expand_as


@pytest.mark.parametrize(
    "kind,start,end", [("linear", 1e-4, 0.02), ("scaled_linear", 0.00085, 0.012)]
)
def test_vp_schedule_matches_diffusers(kind, start, end):
    ref = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule=kind, beta_start=start, beta_end=end
    )
    s = NoiseSchedule.ddpm(kind, 1000, start, end)
    torch.testing.assert_close(s.alpha.float() ** 2, ref.alphas_cumprod, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s.alpha_bar.float(), ref.alphas_cumprod, rtol=1e-5, atol=1e-6)
    assert s.is_vp


def test_videocrafter_signal_scale_is_not_vp():
    s = NoiseSchedule.ddpm("scaled_linear", 1000, 0.00085, 0.012, scale_b=0.7, scale_steps=400)
    vp = NoiseSchedule.ddpm("scaled_linear", 1000, 0.00085, 0.012)
    assert not s.is_vp
    assert torch.allclose(s.sigma, vp.sigma)
    assert torch.isclose(s.alpha[0] / vp.alpha[0], torch.tensor(1.0, dtype=torch.float64))
    assert torch.isclose(s.alpha[399] / vp.alpha[399], torch.tensor(0.7, dtype=torch.float64))
    assert torch.isclose(s.alpha[999] / vp.alpha[999], torch.tensor(0.7, dtype=torch.float64))
    # halfway through the ramp: 1 + (0.7 - 1) * 200 / 399
    expected = 1 + (0.7 - 1) * 200 / 399
    assert abs((s.alpha[200] / vp.alpha[200]).item() - expected) < 1e-12


def test_add_noise_per_sample_and_clean_end():
    s = NoiseSchedule.ddpm()
    x0, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([0, 10, 999])
    xt = s.add_noise(x0, noise, t)
    for i in range(3):
        a, sg = s.alpha[t[i]].float(), s.sigma[t[i]].float()
        torch.testing.assert_close(xt[i], a * x0[i] + sg * noise[i])
    alpha, sigma = s.coefficients(torch.tensor([-1]))
    assert alpha.item() == 1.0 and sigma.item() == 0.0


def test_expand_as_any_rank():
    v = torch.arange(3.0)
    for shape in [(3, 5), (3, 2, 5), (3, 2, 4, 5), (3, 2, 4, 5, 6)]:
        assert (expand_as(v, torch.zeros(shape)) * torch.ones(shape)).shape == shape


def test_invalid_schedules_raise():
    with pytest.raises(ValueError, match="equal length"):
        NoiseSchedule(torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match="decrease"):
        NoiseSchedule(torch.tensor([0.5, 0.9]), torch.tensor([0.8, 0.4]))
    with pytest.raises(ValueError, match="beta schedule"):
        NoiseSchedule.ddpm("cosine-ish")
