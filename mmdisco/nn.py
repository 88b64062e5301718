"""Small building blocks shared by the toy networks and the discriminators."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) steps t (B,) -> (B, dim) (DDPM/ADM style)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepMLP(nn.Module):
    """Sinusoidal features of t followed by Linear-SiLU-Linear: (B,) -> (B, dim)."""

    def __init__(self, dim: int, freq_dim: int | None = None):
        super().__init__()
        self.freq_dim = freq_dim or dim
        self.net = nn.Sequential(nn.Linear(self.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.net(timestep_embedding(t, self.freq_dim))


class AdaptiveMLPBlock(nn.Module):
    """Linear -> LayerNorm modulated by the timestep embedding (scale, shift) -> SiLU.

    The "adaptive" timestep input of the paper's Table 5 MLPs.
    """

    def __init__(self, in_dim: int, out_dim: int, emb_dim: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim, elementwise_affine=False)
        self.modulation = nn.Linear(emb_dim, 2 * out_dim)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        scale, shift = self.modulation(emb).chunk(2, dim=-1)
        return nn.functional.silu(self.norm(self.linear(x)) * (1 + scale) + shift)


class AdaptiveMLP(nn.Module):
    """in_dim -> hidden widths (adaptive blocks) -> out_dim, conditioned on t."""

    def __init__(self, in_dim: int, hidden: list[int], out_dim: int, emb_dim: int):
        super().__init__()
        self.time_embed = TimestepMLP(emb_dim)
        widths = [in_dim, *hidden]
        self.blocks = nn.ModuleList(
            AdaptiveMLPBlock(a, b, emb_dim) for a, b in zip(widths[:-1], widths[1:])
        )
        self.out = nn.Linear(widths[-1], out_dim)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        emb = self.time_embed(t)
        for block in self.blocks:
            x = block(x, emb)
        return self.out(x)
