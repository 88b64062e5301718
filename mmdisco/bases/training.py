"""Plain diffusion training of a single-modality base (used for the toy and synthetic bases)."""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mmdisco.bases.protocol import DiffusionBase
from mmdisco.schedule import expand_as


def regression_target(base: DiffusionBase, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """What the network should output, for its prediction type."""
    kind = base.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return x0
    alpha, sigma = (expand_as(c.to(x0.device, x0.dtype), x0) for c in base.schedule.coefficients(t))
    if kind == "v_prediction":
        return alpha * noise - sigma * x0
    if kind == "flow":
        return noise - x0
    raise ValueError(f"unknown prediction_type {kind!r}")


def train_denoiser(
    base: DiffusionBase,
    data: Tensor,
    steps: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> list[float]:
    """Minimise E ||f(x_t, t) - target||^2 over uniform t; returns the loss curve."""
    params = [p for p in base.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    T = base.schedule.num_train_timesteps
    losses = []
    base.train()
    for _ in tqdm(range(steps), disable=not progress, desc="base training"):
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=generator)
        x0 = data[idx]
        t = torch.randint(0, T, (batch_size,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        x_t = base.schedule.add_noise(x0, noise, t)
        loss = (
            (base.model_output(x_t, t, None) - regression_target(base, x0, noise, t)) ** 2
        ).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    base.eval()
    return losses
