"""Singlestep DPM-Solver (mmdisco.dpm_solver) against closed forms, the reference and diffusers.

``fixtures/dpm_singlestep_reference.json`` was recorded once by running MMDisCo's own solver
(SonyResearch/MMDisCo ``mmdisco/models/diffusion/mmdiffusion/multimodal_dpm_solver_plus.py``,
``DPM_Solver(model, alphas_cumprod=..., predict_x0=True, thresholding=...).sample(x,
steps, order, skip_type="logSNR", method="singlestep")``) outside this repository, on the
analytic joint noise model :class:`AnalyticJoint` below (the same formulas) and x_T drawn
video then audio from ``Generator().manual_seed(3)``; stored: the continuous times, mean, std
and every 7th value of each output.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from diffusers import DPMSolverSinglestepScheduler

from mmdisco.dpm_solver import (
    ContinuousVP,
    DPMSolverSinglestep,
    dynamic_threshold,
    logsnr_times,
    sample_dpm_singlestep,
    singlestep_orders,
)
from mmdisco.sampling import JointSampler
from mmdisco.schedule import NoiseSchedule

REFERENCE = json.loads(
    (Path(__file__).parent / "fixtures" / "dpm_singlestep_reference.json").read_text()
)
SCHEDULE = NoiseSchedule.ddpm("linear", 1000, 1e-4, 0.02)


class AnalyticJoint:
    """A coupled analytic noise model on integer steps (formulas as in the recording)."""

    def __init__(self):
        self.schedules = {"video": SCHEDULE, "audio": SCHEDULE}

    def predict_noise(self, xs, t, conds=None):
        abar = (SCHEDULE.alpha[t.long()] ** 2).float()
        video, audio = xs["video"], xs["audio"]
        bv = (1.0 - abar).sqrt().view(-1, 1, 1, 1, 1)
        mv = video.mean(dim=(1, 2, 3, 4)).view(-1, 1, 1)
        ma = audio.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1)
        return {
            "video": 0.8 * torch.sin(2 * video) + bv * video + 0.3 * ma,
            "audio": 0.7 * torch.tanh(3 * audio) + 0.2 * abar.sqrt().view(-1, 1, 1) + 0.3 * mv,
        }


@pytest.mark.parametrize("case", REFERENCE["cases"], ids=lambda c: f"{c['order']}-{c['steps']}")
def test_matches_mmdisco_reference_through_joint_sampler(case):
    g = torch.Generator().manual_seed(REFERENCE["x_T_seed"])
    x_T = {
        "video": torch.randn(*REFERENCE["video_shape"], generator=g),
        "audio": torch.randn(*REFERENCE["audio_shape"], generator=g),
    }
    sampler = JointSampler(
        AnalyticJoint(),
        solver="dpm_singlestep",
        num_steps=case["steps"],
        order=case["order"],
        solver_options={"thresholding": case["thresholding"]},
    )
    solver = DPMSolverSinglestep(SCHEDULE, case["steps"], case["order"])
    torch.testing.assert_close(
        torch.tensor(solver.times, dtype=torch.float64),
        torch.tensor(case["times"]).double(),
        atol=2e-5,
        rtol=0,
    )
    out = sampler.sample(x_T=x_T)
    for m in ("video", "audio"):
        flat = out[m].double().flatten()
        ref = case[m]
        scale = max(1.0, abs(ref["std"]))
        torch.testing.assert_close(
            flat[::7], torch.tensor(ref["values"]).double(), atol=2e-5 * scale, rtol=1e-4
        )
        assert abs(flat.std().item() - ref["std"]) < 2e-5 * scale


def test_orders_and_times():
    assert singlestep_orders(20, 3) == [3] * 6 + [2]
    assert singlestep_orders(12, 3) == [3, 3, 3, 2, 1]
    assert singlestep_orders(10, 3) == [3, 3, 3, 1]
    assert singlestep_orders(7, 2) == [2, 2, 2, 1]
    vp = ContinuousVP(SCHEDULE)
    times = logsnr_times(vp, 20)
    lams = [vp.lam(t) for t in times]
    assert times[0] == pytest.approx(1.0) and times[-1] == pytest.approx(1e-3)
    assert max(abs(b - a - (lams[1] - lams[0])) for a, b in zip(lams, lams[1:])) < 1e-9
    # on the grid points the continuous schedule is the discrete one
    assert vp.alpha(0.5) == pytest.approx(float(SCHEDULE.alpha[499]), rel=1e-12)
    assert vp.inverse_lam(vp.lam(0.4321)) == pytest.approx(0.4321, rel=1e-9)
    assert [vp.model_step(t) for t in (1.0, 0.5, 1e-3)] == [999, 499, 0]


def test_dynamic_threshold_per_sample():
    x0 = torch.stack([torch.linspace(-0.5, 0.5, 1000), torch.linspace(-3.0, 3.0, 1000)])
    out = dynamic_threshold(x0)
    torch.testing.assert_close(out[0], x0[0])  # inside [-1, 1]: untouched
    s = torch.quantile(x0[1].abs(), 0.995)
    torch.testing.assert_close(out[1], x0[1].clamp(-s, s) / s)
    assert out[1].abs().max() == pytest.approx(1.0)


# -- the probability-flow ODE of a Gaussian data law, in closed form -----------------------------
def gaussian_case(mu=0.3, s=0.5):
    vp = ContinuousVP(SCHEDULE)

    def x0_fn(x, t):  # E[x0 | x_t] for x0 ~ N(mu, s^2)
        a, sig = vp.alpha(t), vp.sigma(t)
        return mu + a * s**2 / (a**2 * s**2 + sig**2) * (x - a * mu)

    def exact(x_T, t):  # the standardised value is constant along the ODE
        a_T, s_T, a, sig = vp.alpha(1.0), vp.sigma(1.0), vp.alpha(t), vp.sigma(t)
        z = (x_T - a_T * mu) / math.sqrt(a_T**2 * s**2 + s_T**2)
        return a * mu + math.sqrt(a**2 * s**2 + sig**2) * z

    return x0_fn, exact


@pytest.mark.parametrize("order", [1, 2, 3])
def test_gaussian_ode_solution_and_convergence(order):
    x0_fn, exact = gaussian_case()
    x_T = torch.linspace(-3, 3, 101, dtype=torch.float64)
    errors = []
    for steps in (6, 12, 24):
        x, t_end = sample_dpm_singlestep(x0_fn, x_T, SCHEDULE, steps, order)
        errors.append((x - exact(x_T, t_end)).abs().max().item())
    rate = math.log2(errors[1] / errors[2])
    assert rate > order - 0.5, (errors, rate)
    x, t_end = sample_dpm_singlestep(x0_fn, x_T, SCHEDULE, 20, order)
    assert (x - exact(x_T, t_end)).abs().max() < {1: 0.25, 2: 0.1, 3: 5e-3}[order]


# -- diffusers, where the settings coincide (orders 1 and 2, "midpoint", no thresholding) -----
@pytest.mark.parametrize("order", [1, 2])
def test_matches_diffusers_singlestep_on_its_grid(order):
    """diffusers' DPMSolverSinglestepScheduler (dpmsolver++, midpoint, final sigma = sigma_min)
    equals our update functions run on diffusers' (alpha, sigma) grid."""
    steps = 10
    sched = DPMSolverSinglestepScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        solver_order=order,
        algorithm_type="dpmsolver++",
        solver_type="midpoint",
        thresholding=False,
        lower_order_final=False,
        final_sigmas_type="sigma_min",
    )
    sched.set_timesteps(steps)
    x0_fn, _ = gaussian_case()
    alpha_bar = SCHEDULE.alpha**2

    def eps_of(x, step):
        a, s = alpha_bar[step].sqrt().item(), (1 - alpha_bar[step]).sqrt().item()
        return (x - a * x0_fn_discrete(x, a, s)) / s

    def x0_fn_discrete(x, a, s, mu=0.3, sd=0.5):
        return mu + a * sd**2 / (a**2 * sd**2 + s**2) * (x - a * mu)

    x_T = torch.linspace(-3, 3, 11, dtype=torch.float64)
    x = x_T.clone()
    for step in sched.timesteps:
        x = sched.step(eps_of(x, int(step)), step, x).prev_sample
    # ours: a DPMSolverSinglestep whose times are diffusers' grid
    ours = DPMSolverSinglestep(SCHEDULE, steps, order, thresholding=False)
    sig = sched.sigmas.double()  # sigma_k / alpha_k on diffusers' grid (VP)
    alphas = (1 / (1 + sig**2)).sqrt()
    lam = -torch.log(sig)
    ours.vp = _GridVP(alphas, lam)
    ours.times = list(range(len(sig)))
    y = x_T.clone()
    for i in range(steps):
        a, s = alphas[i].item(), (1 - alphas[i] ** 2).sqrt().item()
        y = ours.advance(i, x0_fn_discrete(y, a, s), y)
    torch.testing.assert_close(y, x.double(), atol=1e-5, rtol=1e-5)


class _GridVP:
    """alpha, sigma, lambda looked up on a grid indexed by position (for the diffusers test)."""

    def __init__(self, alphas, lam):
        self.alphas, self.lams = alphas, lam

    def alpha(self, i):
        return self.alphas[i].item()

    def sigma(self, i):
        return (1 - self.alphas[i] ** 2).sqrt().item()

    def lam(self, i):
        return self.lams[i].item()


def test_rejects_scaled_schedules_and_renoise():
    scaled = NoiseSchedule.ddpm("scaled_linear", 1000, 0.00085, 0.012, scale_b=0.7)
    with pytest.raises(ValueError, match="VP schedule"):
        DPMSolverSinglestep(scaled, 20)
    with pytest.raises(ValueError, match="one-step solver"):
        JointSampler(AnalyticJoint(), solver="dpm_singlestep", joint_num_steps=2)
