"""Solvers against diffusers' schedulers (VP) and against exact answers (non-VP)."""

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from mmdisco.sampling import DDIMSolver, DDPMSolver, DPMSolverPP, make_timesteps, sample_lockstep
from mmdisco.schedule import NoiseSchedule

T = 1000
KW = dict(num_train_timesteps=T, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def analytic_eps(x, t):
    """A smooth, step-dependent fake noise predictor (habit 9: analytic model)."""
    tt = t.float() / T
    return 0.7 * torch.tanh(x) * (1 + tt) + 0.1 * torch.cos(3 * tt) * x


def run_ours(solver, x):
    for i, t in enumerate(solver.timesteps):
        x = solver.step(analytic_eps(x, torch.tensor(t)), i, x, None)
    return x


def run_diffusers(sched, x, generator=None):
    for t in sched.timesteps:
        x = sched.step(analytic_eps(x, t), t, x, generator=generator).prev_sample
    return x


@pytest.mark.parametrize("steps", [10, 50])
def test_ddim_matches_diffusers(steps):
    ref = DDIMScheduler(**KW, clip_sample=False, set_alpha_to_one=True, timestep_spacing="leading")
    ref.set_timesteps(steps)
    ts = make_timesteps(T, steps, "leading")
    assert ts == ref.timesteps.tolist()
    x = torch.randn(4, 3, 8, generator=torch.Generator().manual_seed(0))
    ours = run_ours(DDIMSolver(NoiseSchedule.ddpm(**_ours_kw()), ts), x)
    torch.testing.assert_close(ours, run_diffusers(ref, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("steps", [8, 20])
def test_dpmpp_matches_diffusers(order, steps):
    ref = DPMSolverMultistepScheduler(**KW, solver_order=order, algorithm_type="dpmsolver++")
    ref.set_timesteps(steps)
    ts = make_timesteps(T, steps, "linspace")
    assert ts == ref.timesteps.tolist()
    x = torch.randn(4, 3, 8, generator=torch.Generator().manual_seed(1))
    ours = run_ours(DPMSolverPP(NoiseSchedule.ddpm(**_ours_kw()), ts, order=order), x)
    torch.testing.assert_close(ours, run_diffusers(ref, x), rtol=1e-5, atol=1e-5)


def test_ddpm_matches_diffusers_with_same_generator():
    ref = DDPMScheduler(**KW, clip_sample=False, variance_type="fixed_small")
    ref.set_timesteps(25)
    ts = make_timesteps(T, 25, "leading")
    assert ts == ref.timesteps.tolist()
    x = torch.randn(4, 3, 8, generator=torch.Generator().manual_seed(2))
    solver = DDPMSolver(NoiseSchedule.ddpm(**_ours_kw()), ts)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    ours = x
    for i, t in enumerate(ts):
        ours = solver.step(analytic_eps(ours, torch.tensor(t)), i, ours, g1)
    torch.testing.assert_close(ours, run_diffusers(ref, x, g2), rtol=1e-5, atol=1e-5)


def _ours_kw():
    return dict(
        beta_schedule="scaled_linear", num_train_timesteps=T, beta_start=0.00085, beta_end=0.012
    )


# -- non-VP: x0 ~ N(mu, s^2) per coordinate, where the exact eps and flow map are known -----
MU, S = 0.8, 0.3


def gaussian_eps(schedule):
    def eps(x, t):
        a, sg = (c.to(x.dtype) for c in schedule.coefficients(t))
        return sg * (x - a * MU) / (a**2 * S**2 + sg**2)

    return eps


def nonvp():
    return NoiseSchedule.ddpm("scaled_linear", T, 0.00085, 0.012, scale_b=0.7, scale_steps=400)


@pytest.mark.parametrize("solver,rate", [("ddim", 3.0), ("dpmpp", 10.0)])
def test_ode_solvers_converge_to_exact_flow_on_nonvp_schedule(solver, rate):
    """A wrong non-VP coefficient gives an O(1) error that does not shrink with more steps;
    DDIM must converge at first order (4x less error for 4x steps), DPM-Solver++(2M) faster."""
    sched = nonvp()
    assert not sched.is_vp
    cls = DDIMSolver if solver == "ddim" else DPMSolverPP
    x_T = torch.randn(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = gaussian_eps(sched)
    errors = []
    for n in (50, 200):  # steps in t in [999, 100]: lambda-steps shrink uniformly with n
        ts = [int(v) for v in torch.linspace(999, 100, n).round()]
        out = sample_lockstep(
            lambda xs, t: {"x": eps(xs["x"], t)}, {"x": x_T}, {"x": cls(sched, ts)}
        )
        errors.append((out["x"] - exact_ode_then_denoise(sched, ts, x_T)).abs().max().item())
    assert errors[1] < errors[0] / rate, errors
    assert errors[1] < TOL[solver], errors


TOL = {"ddim": 1e-2, "dpmpp": 1e-3}


def exact_ode_then_denoise(sched, ts, x_T):
    """Exact probability-flow map x_T -> x_{t_min} for Gaussian data (the affine transport
    between N(a mu, a^2 S^2 + s^2) laws), then the final step's E[x_0 | x_{t_min}]."""
    a0, s0 = float(sched.alpha[ts[0]]), float(sched.sigma[ts[0]])
    a1, s1 = float(sched.alpha[ts[-1]]), float(sched.sigma[ts[-1]])
    v0, v1 = a0**2 * S**2 + s0**2, a1**2 * S**2 + s1**2
    x1 = a1 * MU + math.sqrt(v1 / v0) * (x_T - a0 * MU)
    return MU + a1 * S**2 * (x1 - a1 * MU) / v1


def test_ddpm_ancestral_reaches_the_data_law_on_nonvp_schedule():
    sched = nonvp()  # all 1000 steps: with skipped steps "fixed_small" DDPM under-disperses
    ts = make_timesteps(T, 1000, "leading")
    gen = torch.Generator().manual_seed(0)
    eps = gaussian_eps(sched)
    a, sg = float(sched.alpha[ts[0]]), float(sched.sigma[ts[0]])
    x_T = torch.randn(20000, generator=gen) * math.sqrt(a**2 * S**2 + sg**2) + a * MU
    out = sample_lockstep(
        lambda xs, t: {"x": eps(xs["x"], t)}, {"x": x_T}, {"x": DDPMSolver(sched, ts)}, gen
    )
    assert abs(out["x"].mean().item() - MU) < 0.01
    assert abs(out["x"].std().item() - S) < 0.01


def test_renoise_recurrence_keeps_the_law():
    """With exact eps, repeating each step after re-noising must not change the distribution."""
    sched = nonvp()
    ts = make_timesteps(T, 1000, "leading")
    gen = torch.Generator().manual_seed(0)
    eps = gaussian_eps(sched)
    a, sg = float(sched.alpha[ts[0]]), float(sched.sigma[ts[0]])
    x_T = (
        torch.randn(20000, generator=gen, dtype=torch.float64) * math.sqrt(a**2 * S**2 + sg**2)
        + a * MU
    )
    out = sample_lockstep(
        lambda xs, t: {"x": eps(xs["x"], t)},
        {"x": x_T},
        {"x": DDPMSolver(sched, ts)},
        gen,
        joint_num_steps=3,
    )
    assert abs(out["x"].mean().item() - MU) < 0.01
    # each pass of "fixed_small" DDPM under-disperses a little (0.295 for one pass): allow 3x
    assert abs(out["x"].std().item() - S) < 0.015


def test_timesteps_and_bad_arguments():
    assert make_timesteps(1000, 4, "trailing") == [999, 749, 499, 249]
    with pytest.raises(ValueError, match="spacing"):
        make_timesteps(1000, 4, "random")
    with pytest.raises(ValueError, match="num_steps"):
        make_timesteps(10, 11)
    with pytest.raises(ValueError, match="order"):
        DPMSolverPP(NoiseSchedule.ddpm(), [999], order=4)
