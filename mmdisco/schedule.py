"""Noise schedules as per-step (alpha_t, sigma_t): x_t = alpha_t * x_0 + sigma_t * noise.

Variance-preserving DDPM schedules have alpha_t = sqrt(alpha_bar_t) and
sigma_t = sqrt(1 - alpha_bar_t).
VideoCrafter2 additionally scales the signal (``scale_b``), so alpha_t**2 + sigma_t**2 < 1 there:
nothing downstream may assume VP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def expand_as(v: Tensor, x: Tensor) -> Tensor:
    """Broadcast a per-sample vector (B,) over a (B, ...) tensor of any rank (habit 5)."""
    v = torch.as_tensor(v, device=x.device, dtype=x.dtype)
    if v.ndim == 0:
        return v
    return v.reshape(v.shape[0], *([1] * (x.ndim - 1)))


def make_betas(kind: str, num_train_timesteps: int, beta_start: float, beta_end: float) -> Tensor:
    """Beta schedules as diffusers names them ("linear", "scaled_linear")."""
    n = num_train_timesteps
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2
    raise ValueError(f"unknown beta schedule {kind!r}: use 'linear' or 'scaled_linear'")


@dataclass
class NoiseSchedule:
    """Discrete forward process over integer steps t = 0 .. T-1 (float64 on CPU).

    ``alpha`` and ``sigma`` are the signal and noise coefficients of x_t. The clean end of the
    trajectory (after step 0) is alpha = 1, sigma = 0.
    """

    alpha: Tensor  # (T,)
    sigma: Tensor  # (T,)

    def __post_init__(self):
        self.alpha = torch.as_tensor(self.alpha, dtype=torch.float64).cpu()
        self.sigma = torch.as_tensor(self.sigma, dtype=torch.float64).cpu()
        if self.alpha.shape != self.sigma.shape or self.alpha.ndim != 1:
            raise ValueError("alpha and sigma must be 1-D tensors of equal length")
        if (self.sigma <= 0).any() or (self.alpha <= 0).any():
            raise ValueError("alpha and sigma must be positive at every training step")
        snr = self.alpha / self.sigma
        if (snr[1:] > snr[:-1]).any():
            raise ValueError("alpha/sigma must decrease with t (noise must grow)")

    # -- constructors ------------------------------------------------------------------
    @classmethod
    def from_betas(cls, betas: Tensor, signal_scale: Tensor | None = None) -> NoiseSchedule:
        alpha_bar = torch.cumprod(1.0 - torch.as_tensor(betas, dtype=torch.float64), dim=0)
        alpha = alpha_bar.sqrt()
        if signal_scale is not None:
            alpha = alpha * torch.as_tensor(signal_scale, dtype=torch.float64)
        return cls(alpha=alpha, sigma=(1.0 - alpha_bar).sqrt())

    @classmethod
    def ddpm(
        cls,
        beta_schedule: str = "linear",
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        scale_b: float | None = None,
        scale_steps: int = 400,
    ) -> NoiseSchedule:
        """A DDPM schedule; ``scale_b`` adds VideoCrafter2's signal scaling (linear 1 -> scale_b
        over the first ``scale_steps`` steps, then constant)."""
        betas = make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end)
        scale = None
        if scale_b is not None:
            ramp = torch.linspace(1.0, scale_b, scale_steps, dtype=torch.float64)
            rest = torch.full(
                (num_train_timesteps - scale_steps,), ramp[-1].item(), dtype=torch.float64
            )
            scale = torch.cat([ramp, rest])
        return cls.from_betas(betas, scale)

    # -- derived quantities ------------------------------------------------------------
    @property
    def num_train_timesteps(self) -> int:
        return self.alpha.shape[0]

    @property
    def alpha_bar(self) -> Tensor:
        """1 - sigma_t**2: the VP alpha_bar (equals alpha**2 only for VP schedules)."""
        return 1.0 - self.sigma**2

    @property
    def is_vp(self) -> bool:
        return bool(torch.allclose(self.alpha**2 + self.sigma**2, torch.ones_like(self.alpha)))

    def coefficients(self, t: Tensor | int) -> tuple[Tensor, Tensor]:
        """(alpha_t, sigma_t) for integer steps; t = -1 means the clean end (1, 0)."""
        t = torch.as_tensor(t, dtype=torch.long).cpu()
        alpha = torch.where(t < 0, torch.ones((), dtype=torch.float64), self.alpha[t.clamp(min=0)])
        sigma = torch.where(t < 0, torch.zeros((), dtype=torch.float64), self.sigma[t.clamp(min=0)])
        return alpha, sigma

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """Forward process q(x_t | x_0) at per-sample steps t (B,)."""
        alpha, sigma = self.coefficients(t)
        return expand_as(alpha, x0) * x0 + expand_as(sigma, x0) * noise
