"""One modality's trajectory over a general (alpha_t, sigma_t) schedule: the base class of the
solvers in :mod:`mmdisco.sampling` and :mod:`mmdisco.dpm_solver`, and the noise they draw."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mmdisco.schedule import NoiseSchedule


class Solver:
    """One modality's trajectory along ``timesteps``; the target after the last step is x_0."""

    def __init__(self, schedule: NoiseSchedule, timesteps: list[int]):
        self.schedule = schedule
        self.timesteps = list(timesteps)

    def coefficients(self, i: int) -> tuple[float, float]:
        """(alpha, sigma) at position i of the trajectory; i == len(timesteps) is x_0 (1, 0)."""
        if i >= len(self.timesteps):
            return 1.0, 0.0
        t = self.timesteps[i]
        return float(self.schedule.alpha[t]), float(self.schedule.sigma[t])

    def predict_x0(self, eps: Tensor, i: int, x: Tensor) -> Tensor:
        alpha, sigma = self.coefficients(i)
        return (x - sigma * eps) / alpha

    def step(self, eps: Tensor, i: int, x: Tensor, generator=None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def renoise(self, x_next: Tensor, i: int, generator=None) -> Tensor:
        """Draw x at position i from q(x_i | x_{i+1}) (the recurrence of universal guidance)."""
        a_t, s_t = self.coefficients(i)
        a_s, s_s = self.coefficients(i + 1)
        a_ts = a_t / a_s
        std = math.sqrt(max(s_t**2 - a_ts**2 * s_s**2, 0.0))
        return a_ts * x_next + std * _randn_like(x_next, generator)


def randn(shape, generator=None, device="cpu", dtype=torch.float32) -> Tensor:
    """N(0, I) noise; ``generator`` may be one generator or a list, one per sample (then a
    sample's noise does not depend on the batch it is drawn in)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
        return torch.stack(
            [torch.randn(shape[1:], generator=g, device=device, dtype=dtype) for g in generator]
        )
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def _randn_like(x: Tensor, generator) -> Tensor:
    return randn(x.shape, generator, x.device, x.dtype)
