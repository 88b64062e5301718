"""MM-Diffusion's 64 -> 256 image super-resolution U-Net, written for mmdisco.

It is the ADM super-resolution model (Dhariwal & Nichol 2021, guided-diffusion
``SuperResModel``) as MM-Diffusion ships it (researchmm/MM-Diffusion ``mm_diffusion/image_unet.py``
``ImageSuperResModel``): the noisy 256x256 frame is concatenated with the bilinearly upsampled
64x64 frame (6 input channels) and the network predicts eps and the variance interpolation
(6 output channels, ``learn_sigma``). Parameter names are the official ones. Unlike the coupled
U-Net, its norms are plain ``GroupNorm(32, C)`` subclasses (``<name>.weight``, no ``.GroupNorm``),
its time embedding is 4x the width, and its ResBlocks resample between norm and conv.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdisco.bases.mmdiffusion_unet import attend
from mmdisco.nn import timestep_embedding


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32, C) computed in float32."""

    def __init__(self, channels: int):
        super().__init__(32, channels)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).type(x.dtype)


class ResBlock(nn.Module):
    """ADM ResBlock with scale-shift norm; ``resample`` ("down" / "up") between norm and conv."""

    def __init__(self, channels, emb_channels, out_channels=None, resample=None, dropout=0.0):
        super().__init__()
        out = out_channels or channels
        self.resample = resample
        self.in_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out))
        self.out_layers = nn.Sequential(
            GroupNorm32(out), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(out, out, 3, padding=1)
        )
        nn.init.zeros_(self.out_layers[3].weight)
        nn.init.zeros_(self.out_layers[3].bias)
        self.skip_connection = nn.Identity() if out == channels else nn.Conv2d(channels, out, 1)

    def _resample(self, x: Tensor) -> Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers[2](self._resample(self.in_layers[:2](x)))
        x = self._resample(x)
        scale, shift = self.emb_layers(emb).type(h.dtype)[..., None, None].chunk(2, dim=1)
        h = self.out_layers[1:](self.out_layers[0](h) * (1 + scale) + shift)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over pixels; heads split ADM's legacy way (per head: q, k, v)."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        x = x.reshape(b, c, h * w)
        qkv = self.qkv(self.norm(x)).reshape(b, self.num_heads, 3, c // self.num_heads, h * w)
        q, k, v = (qkv[:, :, j].reshape(b, c, h * w) for j in range(3))
        return (x + self.proj_out(attend(q, k, v, self.num_heads))).reshape(b, c, h, w)


class Stage(nn.ModuleList):
    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        for block in self:
            x = block(x, emb) if isinstance(block, ResBlock) else block(x)
        return x


@dataclass
class SuperResUNetConfig:
    """Defaults: the released ``*_SR.pt`` models (see ``mmdiffusion.build_official``)."""

    large_size: int = 256
    small_size: int = 64
    in_channels: int = 3
    model_channels: int = 192
    num_res_blocks: int = 2
    channel_mult: tuple[float, ...] = (1, 1, 2, 2, 4, 4)
    attention_resolutions: tuple[int, ...] = (8, 16, 32)  # downsampling factors
    num_heads: int = 4
    learn_sigma: bool = True
    dropout: float = 0.0


class SuperResUNet(nn.Module):
    """forward: x_t (N, 3, 256, 256), integer steps (N,), low_res (N, 3, 64, 64) ->
    (N, 6, 256, 256): eps and the learned-variance interpolation v (channels 3:6)."""

    def __init__(self, config: SuperResUNetConfig | None = None):
        super().__init__()
        cfg = self.config = config or SuperResUNetConfig()
        mc, emb_dim = cfg.model_channels, 4 * cfg.model_channels
        self.time_embed = nn.Sequential(
            nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        ch = input_ch = int(cfg.channel_mult[0] * mc)
        conv_in = nn.Conv2d(2 * cfg.in_channels, ch, 3, padding=1)
        self.input_blocks = nn.ModuleList([Stage([conv_in])])
        skips, ds = [ch], 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                blocks = [ResBlock(ch, emb_dim, int(mult * mc), dropout=cfg.dropout)]
                ch = int(mult * mc)
                blocks += self._attention(ch, ds)
                self.input_blocks.append(Stage(blocks))
                skips.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(Stage([ResBlock(ch, emb_dim, ch, "down", cfg.dropout)]))
                skips.append(ch)
                ds *= 2
        self.middle_block = Stage(
            [
                ResBlock(ch, emb_dim, dropout=cfg.dropout),
                AttentionBlock(ch, cfg.num_heads),
                ResBlock(ch, emb_dim, dropout=cfg.dropout),
            ]
        )
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                blocks = [ResBlock(ch + skips.pop(), emb_dim, int(mc * mult), dropout=cfg.dropout)]
                ch = int(mc * mult)
                blocks += self._attention(ch, ds)
                if level and i == cfg.num_res_blocks:
                    blocks.append(ResBlock(ch, emb_dim, ch, "up", cfg.dropout))
                    ds //= 2
                self.output_blocks.append(Stage(blocks))
        out_channels = cfg.in_channels * (2 if cfg.learn_sigma else 1)
        self.out = nn.Sequential(
            GroupNorm32(ch), nn.SiLU(), nn.Conv2d(input_ch, out_channels, 3, padding=1)
        )
        nn.init.zeros_(self.out[2].weight)
        nn.init.zeros_(self.out[2].bias)

    def _attention(self, ch: int, ds: int) -> list[nn.Module]:
        if ds not in self.config.attention_resolutions:
            return []
        return [AttentionBlock(ch, self.config.num_heads)]

    def forward(self, x: Tensor, timesteps: Tensor, low_res: Tensor) -> Tensor:
        up = F.interpolate(low_res, x.shape[-2:], mode="bilinear")  # (N, 3, H, W)
        h = torch.cat([x, up], dim=1)
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels))
        skips = []
        for stage in self.input_blocks:
            h = stage(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for stage in self.output_blocks:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
