"""Lock-step joint sampling over general (alpha_t, sigma_t) schedules (paper Algorithm 2).

Each modality gets its own solver over its own schedule; all modalities step on the same step
index. The sampler consumes a *noise function* (a :class:`~mmdisco.bases.JointNoiseModel`); it
does not know whether guidance is inside it (habit 2): the caller composes
:class:`~mmdisco.guidance.JointGuidance` (bases + discriminator) and passes it in.

Solvers (all written for x_t = alpha_t x_0 + sigma_t eps, so VP is not assumed):
- ``ddpm``: ancestral sampling from the Gaussian posterior q(x_s | x_t, x_0) (Ho et al. 2020);
- ``ddim``: Song et al. 2021, with ``eta`` (0 = deterministic);
- ``dpmpp``: DPM-Solver++ multistep, orders 1-3 (Lu et al. 2022, data prediction);
- ``dpm_singlestep``: singlestep DPM-Solver on logSNR-uniform continuous times with dynamic
  thresholding, as MMDisCo samples MM-Diffusion (:mod:`mmdisco.dpm_solver`; VP only).
On VP schedules they agree with diffusers' DDPMScheduler / DDIMScheduler /
DPMSolverMultistepScheduler (tested to 1e-5).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from hydra.utils import instantiate
from torch import Tensor
from tqdm.auto import tqdm

from mmdisco.schedule import NoiseSchedule
from mmdisco.solver import Solver, _randn_like, randn  # noqa: F401 (re-exported)

SOLVERS = ("ddpm", "ddim", "dpmpp", "dpm_singlestep")
SPACINGS = ("linspace", "leading", "trailing")


def make_timesteps(
    num_train_timesteps: int, num_steps: int, spacing: str = "linspace"
) -> list[int]:
    """Decreasing integer steps, spaced as diffusers' ``timestep_spacing`` names them."""
    T, n = num_train_timesteps, num_steps
    if not 1 <= n <= T:
        raise ValueError(f"num_steps must be in [1, {T}], got {n}")
    if spacing == "linspace":
        steps = np.linspace(0, T - 1, n + 1).round()[::-1][:-1]
    elif spacing == "leading":
        steps = (np.arange(0, n) * (T // n)).round()[::-1]
    elif spacing == "trailing":
        steps = np.round(np.arange(T, 0, -T / n)) - 1
    else:
        raise ValueError(f"spacing {spacing!r} is not one of {SPACINGS}")
    return [int(s) for s in steps]


def _posterior(a_t: float, s_t: float, a_s: float, s_s: float) -> tuple[float, float, float]:
    """q(x_s | x_t, x_0) = N(c_t x_t + c_0 x_0, var) for x_t = a x_0 + s eps (s < t)."""
    a_ts = a_t / a_s
    s_ts2 = s_t**2 - a_ts**2 * s_s**2
    return a_ts * s_s**2 / s_t**2, a_s * s_ts2 / s_t**2, s_ts2 * s_s**2 / s_t**2


class DDPMSolver(Solver):
    """Ancestral sampling: x_s ~ q(x_s | x_t, x0_hat) (diffusers' "fixed_small" variance)."""

    def step(self, eps, i, x, generator=None):
        x0 = self.predict_x0(eps, i, x)
        c_t, c_0, var = _posterior(*self.coefficients(i), *self.coefficients(i + 1))
        mean = c_t * x + c_0 * x0
        if i + 1 >= len(self.timesteps):
            return mean
        return mean + math.sqrt(max(var, 1e-20)) * _randn_like(x, generator)


class DDIMSolver(Solver):
    """DDIM: x_s = alpha_s x0 + sqrt(sigma_s^2 - std^2) eps + std z, std = eta * posterior std."""

    def __init__(self, schedule, timesteps, eta: float = 0.0):
        super().__init__(schedule, timesteps)
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.eta = eta

    def step(self, eps, i, x, generator=None):
        x0 = self.predict_x0(eps, i, x)
        a_s, s_s = self.coefficients(i + 1)
        std = self.eta * math.sqrt(_posterior(*self.coefficients(i), a_s, s_s)[2])
        out = a_s * x0 + math.sqrt(max(s_s**2 - std**2, 0.0)) * eps
        if std > 0:
            out = out + std * _randn_like(x, generator)
        return out


class DPMSolverPP(Solver):
    """DPM-Solver++ multistep (orders 1-3) in lambda = log(alpha / sigma).

    Lower orders are used while the history is short and at the end, as diffusers does with
    ``lower_order_final=True`` and ``final_sigmas_type="zero"``. History is keyed by step index,
    so repeating a step (the re-noise recurrence) overwrites rather than appends.
    """

    def __init__(self, schedule, timesteps, order: int = 2):
        super().__init__(schedule, timesteps)
        if order not in (1, 2, 3):
            raise ValueError(f"DPM-Solver++ order must be 1, 2 or 3, got {order}")
        self.order = order
        self.x0_history: dict[int, Tensor] = {}

    def lam(self, i: int) -> float:
        alpha, sigma = self.coefficients(i)
        return math.log(alpha) - math.log(sigma)

    def step_order(self, i: int) -> int:
        n = len(self.timesteps)
        order = min(self.order, i + 1)
        if i == n - 1:  # last step lands on sigma = 0: first order (x_0 itself)
            order = 1
        elif i == n - 2 and n < 15:
            order = min(order, 2)
        return order

    def step(self, eps, i, x, generator=None):
        self.x0_history[i] = self.predict_x0(eps, i, x)
        order = self.step_order(i)
        a_t, s_t = self.coefficients(i + 1)
        _, s_s = self.coefficients(i)
        if s_t == 0.0:
            return a_t * self.x0_history[i]
        h = self.lam(i + 1) - self.lam(i)
        m0 = self.x0_history[i]
        out = (s_t / s_s) * x - a_t * math.expm1(-h) * m0
        if order >= 2:
            m1 = self.x0_history[i - 1]
            r0 = (self.lam(i) - self.lam(i - 1)) / h
            d1_0 = (m0 - m1) / r0
            if order == 2:  # midpoint form, as diffusers' solver_type="midpoint"
                out = out - 0.5 * a_t * math.expm1(-h) * d1_0
            else:
                m2 = self.x0_history[i - 2]
                r1 = (self.lam(i - 1) - self.lam(i - 2)) / h
                d1_1 = (m1 - m2) / r1
                d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                out = out + a_t * (math.expm1(-h) / h + 1.0) * d1
                out = out - a_t * ((math.expm1(-h) + h) / h**2 - 0.5) * d2
        self.x0_history.pop(i - 3, None)
        return out


def make_solver(
    solver: str,
    schedule: NoiseSchedule,
    timesteps: list[int],
    order: int = 2,
    eta: float = 0.0,
    **options,
) -> Solver:
    """``options`` go to the solver (``dpm_singlestep``: thresholding, percentile); it places
    its own ``len(timesteps)`` evaluations."""
    if solver == "dpm_singlestep":
        from mmdisco.dpm_solver import DPMSolverSinglestep

        return DPMSolverSinglestep(schedule, len(timesteps), order=order, **options)
    if solver == "ddpm":
        return DDPMSolver(schedule, timesteps)
    if solver == "ddim":
        return DDIMSolver(schedule, timesteps, eta=eta)
    if solver == "dpmpp":
        return DPMSolverPP(schedule, timesteps, order=order)
    raise ValueError(f"solver {solver!r} is not one of {SOLVERS}")


NoiseFn = Callable[[dict[str, Tensor], Tensor], dict[str, Tensor]]


def sample_lockstep(
    noise_fn: NoiseFn,
    x_T: dict[str, Tensor],
    solvers: dict[str, Solver],
    generator: torch.Generator | None = None,
    joint_num_steps: int = 1,
    progress: bool = False,
) -> dict[str, Tensor]:
    """Run all modalities' solvers together; ``noise_fn(xs, t) -> {m: eps_m}`` is called once per
    step (``joint_num_steps`` times with the re-noise recurrence)."""
    if joint_num_steps < 1:
        raise ValueError(f"joint_num_steps must be >= 1, got {joint_num_steps}")
    timesteps = next(iter(solvers.values())).timesteps
    if any(s.timesteps != timesteps for s in solvers.values()):
        raise ValueError("all modalities must step on the same timesteps")
    xs = dict(x_T)
    batch = next(iter(xs.values())).shape[0]
    device = next(iter(xs.values())).device
    for i in tqdm(range(len(timesteps)), disable=not progress, desc="sampling", leave=False):
        t = torch.full((batch,), timesteps[i], dtype=torch.long, device=device)
        for k in range(joint_num_steps):
            eps = noise_fn(xs, t)
            nxt = {m: solvers[m].step(eps[m], i, xs[m], generator) for m in solvers}
            if k + 1 < joint_num_steps:
                xs = {m: solvers[m].renoise(nxt[m], i, generator) for m in solvers}
        xs = nxt
    return xs


class JointSampler:
    """Lock-step joint generation from any joint noise model (Algorithm 2).

    ``noise_model`` is anything with the joint protocol (``mmdisco.bases.protocol``):
    ``schedules``, ``sample_shapes`` and ``predict_noise`` -- the bare bases (independent
    sampling), a joint base, or the bases guided by a discriminator, which the caller composes
    (the sampler does not know guidance exists)::

        guided = JointGuidance(bases, discriminator, joint_scales={"audio": 1.0, "video": 8.0})
        sampler = JointSampler(guided, solver="dpmpp", order=2, num_steps=50)
        out = sampler.sample(4, conds=conds, generator=torch.Generator().manual_seed(0))
    """

    def __init__(
        self,
        noise_model,
        solver: str = "dpmpp",
        num_steps: int = 50,
        order: int = 2,
        eta: float = 0.0,
        spacing: str = "linspace",
        joint_num_steps: int = 1,
        solver_options: dict | None = None,
    ):
        self.noise_model = noise_model
        if solver not in SOLVERS:
            raise ValueError(f"solver {solver!r} is not one of {SOLVERS}")
        if joint_num_steps > 1 and solver in ("dpmpp", "dpm_singlestep"):
            raise ValueError(
                "joint_num_steps > 1 (re-noise recurrence) needs a one-step solver: the re-noised "
                "sample leaves the trajectory that DPM-Solver++'s history describes. "
                "Use solver=ddpm or solver=ddim."
            )
        self.solver, self.num_steps, self.order, self.eta = solver, num_steps, order, eta
        self.spacing, self.joint_num_steps = spacing, joint_num_steps
        self.solver_options = dict(solver_options or {})
        self.timesteps = make_timesteps(self._num_train_timesteps(), num_steps, spacing)

    @property
    def solver_settings(self) -> dict:
        """What, besides the noise model and the noise, decides a sample with one joint step
        (the key of pre-sampled fakes: ``joint_num_steps`` only repeats guided updates)."""
        settings = {
            "solver": self.solver,
            "num_steps": self.num_steps,
            "order": self.order,
            "eta": self.eta,
            "spacing": self.spacing,
        }
        if self.solver_options:
            settings["solver_options"] = dict(self.solver_options)
        return settings

    def _num_train_timesteps(self) -> int:
        counts = {s.num_train_timesteps for s in self.noise_model.schedules.values()}
        if len(counts) != 1:
            raise ValueError(f"modalities must share the number of training steps, got {counts}")
        return counts.pop()

    def initial_noise(self, shapes: dict[str, tuple[int, ...]], generator=None, device="cpu"):
        """x_T ~ N(0, I) per modality, drawn in a fixed modality order from ``generator``
        (as diffusers does: alpha_T ~ 0 and sigma_T ~ 1 on the schedules in use)."""
        return {m: randn(shape, generator, device) for m, shape in shapes.items()}

    def sample(
        self,
        batch_size: int | None = None,
        conds: dict | None = None,
        generator: torch.Generator | None = None,
        x_T: dict[str, Tensor] | None = None,
        device: str | torch.device = "cpu",
        progress: bool = False,
    ) -> dict[str, Tensor]:
        """Return ``{modality: x_0}``; pass ``x_T`` or ``batch_size`` (shapes from the bases)."""
        if x_T is None:
            if batch_size is None:
                raise ValueError("pass batch_size (or x_T)")
            shapes = self.noise_model.sample_shapes(batch_size)
            x_T = self.initial_noise(shapes, generator, device)
        solvers = {
            m: make_solver(
                self.solver, sched, self.timesteps, self.order, self.eta, **self.solver_options
            )
            for m, sched in self.noise_model.schedules.items()
        }

        def noise_fn(xs, t):
            return self.noise_model.predict_noise(xs, t, conds)

        return sample_lockstep(noise_fn, x_T, solvers, generator, self.joint_num_steps, progress)


def build_sampler(noise_model, sampler_cfg, **overrides) -> JointSampler:
    """THE way a sampler is built from the ``sampler`` config group (a Hydra partial of
    :class:`JointSampler`): ``overrides`` win over the config, then the noise model is bound."""
    return instantiate(sampler_cfg, **overrides)(noise_model)
