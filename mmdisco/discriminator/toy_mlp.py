"""The toy discriminator of the paper's Table 5: MLP (64, 32, 8) on the 2-D pair (a, v)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmdisco.nn import AdaptiveMLP


class ToyDiscriminator(nn.Module):
    """logit D(a_t, v_t, t): concatenated inputs through adaptive (LayerNorm, SiLU) blocks.

    Inputs: audio (B, 1), video (B, 1), t (B,) long. Output: (B,) logits.
    """

    def __init__(
        self,
        hidden: tuple[int, ...] = (64, 32, 8),
        time_dim: int = 64,
        audio_dim: int = 1,
        video_dim: int = 1,
    ):
        super().__init__()
        self.net = AdaptiveMLP(audio_dim + video_dim, list(hidden), 1, time_dim)

    def forward(self, audio: Tensor, video: Tensor, t: Tensor, cond=None) -> Tensor:
        x = torch.cat([audio.flatten(1), video.flatten(1)], dim=1)  # (B, 2)
        return self.net(x, t).squeeze(-1)  # (B,)
