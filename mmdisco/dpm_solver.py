"""Singlestep DPM-Solver with data (x0) prediction (Lu et al. 2022a/b), as MMDisCo samples
MM-Diffusion (SonyResearch/MMDisCo ``MMDisCoMMDiffusion.sample``: ``DPM_Solver(...,
predict_x0=True, thresholding=True).sample(x, steps=20, order=3, skip_type="logSNR",
method="singlestep")``, solver type "dpm_solver", no final denoising step).

The discrete DDPM schedule is read as a continuous-time VP process (the "discrete" schedule of
DPM-Solver): log alpha(t) is piecewise linear through (n / N, log alpha_{n-1}), n = 1 .. N,
and sigma(t) = sqrt(1 - alpha(t)^2); time runs from T = 1 down to eps = 1 / N, and the network
sees the integer step floor((t - 1/N) * N). The ``steps`` + 1 times are uniform in
lambda = log(alpha / sigma); every model evaluation happens at one of them.

The step math is free functions over (alpha, sigma, lambda) of the times involved;
:class:`DPMSolverSinglestep` runs them as a :class:`~mmdisco.sampling.Solver` that takes one
model output per time point, so the lock-step sampler (and guidance) drive it unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mmdisco.schedule import NoiseSchedule, expand_as
from mmdisco.solver import Solver

DEFAULT_PERCENTILE = 0.995  # Imagen's dynamic thresholding (Saharia et al. 2022)


# -- the continuous-time VP view of a discrete schedule --------------------------------------
class ContinuousVP:
    """alpha(t), sigma(t), lambda(t) on t in [1/N, 1] from a discrete VP schedule."""

    def __init__(self, schedule: NoiseSchedule):
        if not schedule.is_vp:
            raise ValueError(
                "DPM-Solver's continuous-time view needs a VP schedule (alpha^2 + sigma^2 = 1); "
                "use solver='dpmpp' for scaled schedules such as VideoCrafter2's"
            )
        self.N = schedule.num_train_timesteps
        self.t_grid = torch.linspace(0.0, 1.0, self.N + 1, dtype=torch.float64)[1:]  # (N,)
        self.log_alpha_grid = schedule.alpha.log()  # (N,)

    def log_alpha(self, t: float) -> float:
        return _interp(t, self.t_grid, self.log_alpha_grid)

    def alpha(self, t: float) -> float:
        return math.exp(self.log_alpha(t))

    def sigma(self, t: float) -> float:
        return math.sqrt(-math.expm1(2.0 * self.log_alpha(t)))

    def lam(self, t: float) -> float:
        """lambda = log alpha - log sigma (half the log-SNR)."""
        return self.log_alpha(t) - math.log(self.sigma(t))

    def inverse_lam(self, lam: float) -> float:
        log_alpha = -0.5 * math.log1p(math.exp(-2.0 * lam))
        return _interp(log_alpha, self.log_alpha_grid.flip(0), self.t_grid.flip(0))

    def model_step(self, t: float) -> int:
        """The integer step the network sees: floor((t - 1/N) * N), computed in float32 as
        the reference does."""
        t32 = torch.tensor(t, dtype=torch.float32)
        return int(((t32 - 1.0 / self.N) * self.N).to(torch.int))


def _interp(x: float, xp: Tensor, fp: Tensor) -> float:
    """Piecewise-linear interpolation through increasing xp, extended linearly at both ends."""
    i = int(torch.searchsorted(xp, torch.tensor(x, dtype=xp.dtype)).clamp(1, len(xp) - 1))
    x0, x1, y0, y1 = (float(v) for v in (xp[i - 1], xp[i], fp[i - 1], fp[i]))
    return y0 + (x - x0) * (y1 - y0) / (x1 - x0)


def logsnr_times(vp: ContinuousVP, steps: int) -> list[float]:
    """``steps + 1`` decreasing times from T = 1 to 1/N, uniform in lambda (skip "logSNR")."""
    lam_T, lam_0 = vp.lam(1.0), vp.lam(1.0 / vp.N)
    return [vp.inverse_lam(lam_T + (lam_0 - lam_T) * k / steps) for k in range(steps + 1)]


def singlestep_orders(steps: int, order: int) -> list[int]:
    """Orders of the successive singlestep updates using exactly ``steps`` evaluations
    ("DPM-Solver-fast", Lu et al. 2022a Sec. 3.4): e.g. 20 NFE, order 3 -> [3] * 6 + [2]."""
    if order == 3:
        k = steps // 3 + 1
        return {0: [3] * (k - 2) + [2, 1], 1: [3] * (k - 1) + [1], 2: [3] * (k - 1) + [2]}[
            steps % 3
        ]
    if order == 2:
        return [2] * (steps // 2) + [1] * (steps % 2)
    if order == 1:
        return [1] * steps
    raise ValueError(f"singlestep DPM-Solver order must be 1, 2 or 3, got {order}")


def dynamic_threshold(x0: Tensor, percentile: float = DEFAULT_PERCENTILE) -> Tensor:
    """Imagen's dynamic thresholding, per sample: s = max(quantile(|x0|, p), 1); clip to
    [-s, s] and divide by s."""
    flat = x0.reshape(x0.shape[0], -1).abs().float()
    s = torch.quantile(flat, percentile, dim=1).clamp(min=1.0).to(x0.dtype)
    s = expand_as(s, x0)
    return torch.maximum(torch.minimum(x0, s), -s) / s


# -- the update formulas (DPM-Solver++ data prediction, Lu et al. 2022b) -----------------------
def first_order(x: Tensor, m_s: Tensor, vp: ContinuousVP, s: float, t: float) -> Tensor:
    """DPM-Solver-1 (= DDIM) from s to t: sigma_t / sigma_s x - alpha_t (e^{-h} - 1) m_s."""
    h = vp.lam(t) - vp.lam(s)
    return (vp.sigma(t) / vp.sigma(s)) * x - vp.alpha(t) * math.expm1(-h) * m_s


def second_order(
    x: Tensor, m_s: Tensor, m_1: Tensor, vp: ContinuousVP, s: float, s1: float, t: float
) -> Tensor:
    """DPM-Solver++(2S) final stage, "dpm_solver" (midpoint) form; m_1 at s1 between s, t."""
    h = vp.lam(t) - vp.lam(s)
    r1 = (vp.lam(s1) - vp.lam(s)) / h
    phi_1 = math.expm1(-h)
    out = first_order(x, m_s, vp, s, t)
    return out - (0.5 / r1) * vp.alpha(t) * phi_1 * (m_1 - m_s)


def third_order_intermediate(
    x: Tensor,
    m_s: Tensor,
    m_1: Tensor,
    vp: ContinuousVP,
    s: float,
    s1: float,
    s2: float,
    t: float,
) -> Tensor:
    """x at s2 inside a third-order step s -> t (r = (lambda_. - lambda_s) / h)."""
    h = vp.lam(t) - vp.lam(s)
    r1, r2 = (vp.lam(s1) - vp.lam(s)) / h, (vp.lam(s2) - vp.lam(s)) / h
    phi_22 = math.expm1(-r2 * h) / (r2 * h) + 1.0
    out = first_order(x, m_s, vp, s, s2)
    return out + (r2 / r1) * vp.alpha(s2) * phi_22 * (m_1 - m_s)


def third_order(
    x: Tensor, m_s: Tensor, m_2: Tensor, vp: ContinuousVP, s: float, s2: float, t: float
) -> Tensor:
    """DPM-Solver++(3S) final stage, "dpm_solver" form (uses only m_s and m_2 at s2)."""
    h = vp.lam(t) - vp.lam(s)
    r2 = (vp.lam(s2) - vp.lam(s)) / h
    phi_2 = math.expm1(-h) / h + 1.0
    return first_order(x, m_s, vp, s, t) + (1.0 / r2) * vp.alpha(t) * phi_2 * (m_2 - m_s)


# -- as a solver over the time points ------------------------------------------------------------
class DPMSolverSinglestep(Solver):
    """Singlestep DPM-Solver over ``num_steps`` model evaluations at logSNR-uniform times.

    ``timesteps`` are the integer steps the network sees at each evaluation; ``times`` the
    continuous times (``num_steps + 1``, the last being 1/N). A k-th order update spans k
    evaluations: at its first one the state and x0 are kept, the intermediate points
    (x at s1, s2) are what the sampler evaluates next, and the last one lands at the update's
    end time. The returned sample is x at t = 1/N (no extra denoising step), as the reference.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        num_steps: int = 20,
        order: int = 3,
        thresholding: bool = True,
        percentile: float = DEFAULT_PERCENTILE,
    ):
        self.vp = ContinuousVP(schedule)
        self.times = logsnr_times(self.vp, num_steps)
        super().__init__(schedule, [self.vp.model_step(t) for t in self.times[:-1]])
        self.orders = singlestep_orders(num_steps, order)
        self.thresholding, self.percentile = thresholding, percentile
        starts = [sum(self.orders[:j]) for j in range(len(self.orders))]
        self.stage = {s + k: (s, o, k) for s, o in zip(starts, self.orders) for k in range(o)}
        self.kept: dict[str, Tensor] = {}

    def coefficients(self, i: int) -> tuple[float, float]:
        t = self.times[i]
        return self.vp.alpha(t), self.vp.sigma(t)

    def predict_x0(self, eps: Tensor, i: int, x: Tensor) -> Tensor:
        x0 = super().predict_x0(eps, i, x)
        return dynamic_threshold(x0, self.percentile) if self.thresholding else x0

    def step(self, eps, i, x, generator=None):
        return self.advance(i, self.predict_x0(eps, i, x), x)

    def advance(self, i: int, x0: Tensor, x: Tensor) -> Tensor:
        """Take the x0 prediction at time point i (x the state evaluated there)."""
        start, order, k = self.stage[i]
        ts, vp = self.times, self.vp
        s, t = ts[start], ts[start + order]
        if k == 0:
            self.kept = {"x": x, "m_s": x0}
            return first_order(x, x0, vp, s, ts[start + 1] if order > 1 else t)
        x_s, m_s = self.kept["x"], self.kept["m_s"]
        if order == 2:
            return second_order(x_s, m_s, x0, vp, s, ts[start + 1], t)
        if k == 1:  # order 3, x0 at s1: go to s2
            return third_order_intermediate(x_s, m_s, x0, vp, s, ts[start + 1], ts[start + 2], t)
        return third_order(x_s, m_s, x0, vp, s, ts[start + 2], t)

    def renoise(self, x_next, i, generator=None):  # pragma: no cover - guarded by the sampler
        raise ValueError("the re-noise recurrence needs a one-step solver (ddpm or ddim)")


def sample_dpm_singlestep(x0_fn, x_T: Tensor, schedule: NoiseSchedule, num_steps=20, order=3):
    """Drive :class:`DPMSolverSinglestep` with an x0 predictor of *continuous* time,
    ``x0_fn(x, t) -> x0`` (no thresholding): used to test the ODE solution in closed form."""
    solver = DPMSolverSinglestep(schedule, num_steps, order, thresholding=False)
    x = x_T
    for i, t in enumerate(solver.times[:-1]):
        x = solver.advance(i, x0_fn(x, t), x)
    return x, solver.times[-1]
