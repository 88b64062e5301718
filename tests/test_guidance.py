"""The guidance identity on an analytic case (method.md, "Joint score").

Joint target: a 2-D Gaussian mixture over (a, v); each modality has its OWN schedule. The noised
marginals and joint are known in closed form, so the exact base noise, the exact joint noise
and the optimal discriminator logit = log p_t(a, v) - log p_t(a) - log p_t(v) are all
computable. The guided noise must equal the exact joint noise.
"""

import math

import pytest
import torch
from torch import nn

from mmdisco import IndependentBases, JointGuidance, JointSampler, residual
from mmdisco.bases.protocol import Condition, DiffusionBase
from mmdisco.schedule import NoiseSchedule

MEANS = torch.tensor([[-1.0, 1.5], [0.5, -1.0], [1.5, 0.8]], dtype=torch.float64)
STD = 0.3
SCHED = {
    "audio": NoiseSchedule.ddpm("linear", 1000, 1e-4, 0.02),
    "video": NoiseSchedule.ddpm("scaled_linear", 1000, 0.00085, 0.012, scale_b=0.7),  # non-VP
}
DIM = {"audio": 0, "video": 1}


def log_gauss_mix(x, means, var):
    """log of (1/K) sum_k N(x; means_k, var I), x (B, D), means (B or 1, K, D), var (B, 1, D)."""
    d2 = ((x[:, None, :] - means) ** 2 / var).sum(-1)
    log_norm = -0.5 * torch.log(2 * math.pi * var).sum(-1)
    return torch.logsumexp(-0.5 * d2 + log_norm, dim=1) - math.log(means.shape[1])


def noised_params(t, dims):
    alphas, variances = [], []
    for m in dims:
        a, s = SCHED[m].coefficients(t)
        alphas.append(a)
        variances.append(a**2 * STD**2 + s**2)
    alpha = torch.stack(alphas, -1)[:, None, :]  # (B, 1, D)
    var = torch.stack(variances, -1)[:, None, :]
    idx = [DIM[m] for m in dims]
    return alpha * MEANS[None][:, :, idx], var


def log_p(t, **xs):
    dims = list(xs)
    x = torch.cat([xs[m].reshape(-1, 1) for m in dims], dim=1)
    means, var = noised_params(t, dims)
    return log_gauss_mix(x, means, var)


class ExactMarginalBase(DiffusionBase):
    """eps_m = -sigma_m(t) * d/dm log p_t(m): the exact noise of the marginal of modality m."""

    def __init__(self, m):
        super().__init__()
        self.m, self.schedule = m, SCHED[m]

    def model_output(self, x_t, t, emb):
        with torch.enable_grad():
            x = x_t.detach().double().requires_grad_(True)
            (g,) = torch.autograd.grad(log_p(t, **{self.m: x}).sum(), x)
        return -self.schedule.coefficients(t)[1][:, None].to(g) * g

    def sample_shape(self, b):
        return (b, 1)


class OracleDiscriminator(nn.Module):
    def forward(self, audio, video, t, cond=None):
        return log_p(t, audio=audio, video=video) - log_p(t, audio=audio) - log_p(t, video=video)


def exact_joint_eps(xs, t):
    x = {m: v.detach().clone().requires_grad_(True) for m, v in xs.items()}
    grads = torch.autograd.grad(log_p(t, **x).sum(), [x["audio"], x["video"]])
    return {m: -SCHED[m].coefficients(t)[1][:, None] * g for m, g in zip(("audio", "video"), grads)}


@pytest.mark.parametrize("t_value", [5, 200, 600, 990])
def test_oracle_discriminator_gives_exact_joint_noise(t_value):
    gen = torch.Generator().manual_seed(t_value)
    xs = {m: 2 * torch.randn(64, 1, generator=gen, dtype=torch.float64) for m in ("audio", "video")}
    t = torch.full((64,), t_value)
    bases = IndependentBases(audio=ExactMarginalBase("audio"), video=ExactMarginalBase("video"))
    guided = JointGuidance(bases, OracleDiscriminator(), joint_scales=1.0)
    eps = guided.predict_noise(xs, t)
    exact = exact_joint_eps(xs, t)
    for m in ("audio", "video"):
        torch.testing.assert_close(eps[m], exact[m], rtol=1e-5, atol=1e-5)
        if t_value <= 600:  # at high noise the coupling (and the correction) vanishes
            assert (eps[m] - bases.predict_noise(xs, t)[m]).abs().max() > 1e-2


def test_residual_is_minus_sigma_times_logit_gradient():
    class Linear(nn.Module):
        def forward(self, audio, video, t, cond=None):
            return 2.0 * audio.sum(1) - 3.0 * video.flatten(1).sum(1)

    t = torch.tensor([10, 500])
    xs = {"audio": torch.randn(2, 4), "video": torch.randn(2, 3, 2, 2)}
    res, logit = residual(Linear(), xs, t, SCHED)
    sa, sv = SCHED["audio"].sigma[t].float(), SCHED["video"].sigma[t].float()
    torch.testing.assert_close(res["audio"], -sa[:, None] * 2.0 * torch.ones(2, 4))
    torch.testing.assert_close(
        res["video"], -sv[:, None, None, None] * -3.0 * torch.ones(2, 3, 2, 2)
    )
    assert logit.shape == (2,)


def test_zero_scale_and_no_discriminator_equal_independent_sampling_bit_for_bit():
    bases = IndependentBases(audio=ExactMarginalBase("audio"), video=ExactMarginalBase("video"))
    outs = []
    for model in [bases, JointGuidance(bases, OracleDiscriminator(), joint_scales=0.0)]:
        sampler = JointSampler(model, solver="ddpm", num_steps=20)
        outs.append(sampler.sample(8, generator=torch.Generator().manual_seed(0)))
    for m in ("audio", "video"):
        assert torch.equal(outs[0][m], outs[1][m])


def test_same_seed_same_samples_and_batch_of_two_equals_two_single_runs():
    bases = IndependentBases(audio=ExactMarginalBase("audio"), video=ExactMarginalBase("video"))
    sampler = JointSampler(JointGuidance(bases, OracleDiscriminator()), solver="ddpm", num_steps=20)
    a = sampler.sample(2, generator=torch.Generator().manual_seed(3))
    b = sampler.sample(2, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(a[m], b[m]) for m in a)
    gens = [torch.Generator().manual_seed(s) for s in (11, 12)]
    both = sampler.sample(2, generator=gens)
    singles = [sampler.sample(1, generator=[torch.Generator().manual_seed(s)]) for s in (11, 12)]
    for m in both:
        torch.testing.assert_close(
            both[m], torch.cat([s[m] for s in singles]), rtol=1e-6, atol=1e-7
        )


def test_guided_sampling_moves_samples_onto_joint_peaks():
    """End to end with exact components: guided DDPM samples land on the 3 joint peaks,
    while independent sampling spreads over all 9 combinations of marginal peaks."""
    bases = IndependentBases(audio=ExactMarginalBase("audio"), video=ExactMarginalBase("video"))
    precision = {}
    guided = JointGuidance(bases, OracleDiscriminator())
    for name, model in [("independent", bases), ("guided", guided)]:
        sampler = JointSampler(model, solver="ddpm", num_steps=200, spacing="leading")
        out = sampler.sample(400, generator=torch.Generator().manual_seed(0))
        x = torch.cat([out["audio"], out["video"]], 1).double()
        precision[name] = (torch.cdist(x, MEANS).min(1).values < 3 * STD).double().mean().item()
    assert precision["guided"] > 0.95
    assert precision["independent"] < 0.75  # several marginal combinations lie near a peak


class CondLinear(nn.Module):
    """logit = <w_m(cond), m>: a text-conditional D whose residual is known."""

    def forward(self, audio, video, t, cond=None):
        wa = cond["audio"].sum(1) if cond is not None else torch.zeros(audio.shape[0])
        wv = cond["video"].sum(1) if cond is not None else torch.zeros(video.shape[0])
        return wa * audio.sum(1) + wv * video.sum(1)


def test_discriminator_cfg_combines_residuals_like_the_base():
    bases = IndependentBases(audio=ExactMarginalBase("audio"), video=ExactMarginalBase("video"))
    t = torch.full((3,), 400)
    xs = {m: torch.randn(3, 1, dtype=torch.float64) for m in ("audio", "video")}
    conds = {
        m: Condition(
            cond=None,
            uncond=None,
            guidance_scale=w,
            pooled=torch.full((1, 2), c),
            pooled_uncond=torch.full((1, 2), u),
        )
        for m, w, c, u in [("audio", 3.0, 1.0, 0.25), ("video", 5.0, -1.0, 0.5)]
    }
    guided = JointGuidance(bases, CondLinear(), joint_scales={"audio": 1.0, "video": 2.0})
    res = guided.residuals(xs, t, conds)
    for (
        m,
        w,
        c,
        u,
    ) in [("audio", 3.0, 2.0, 0.5), ("video", 5.0, -2.0, 1.0)]:
        sigma = SCHED[m].sigma[400]
        expected = -sigma * (u + w * (c - u))  # r_u + w (r_c - r_u) with r = -sigma * weight
        torch.testing.assert_close(res[m], torch.full((3, 1), expected.item(), dtype=torch.float64))
