"""Inception-I3D (Carreira & Zisserman 2017) for the VideoGPT / MM-Diffusion FVD and KVD.

Written here with the parameter names of the PyTorch port (piergiaj/pytorch-i3d) that
VideoGPT and MM-Diffusion load ``i3d_pretrained_400.pt`` into, so that file loads as it is
(the key manifest is ``tests/fixtures/i3d400_keys.json``). Every convolution and max-pool
pads like TensorFlow's 'SAME' (zeros; for odd padding the extra one goes after), batch norm
has eps 1e-5, and the output is the 400 Kinetics logits averaged over the remaining time
steps (``InceptionI3d.forward`` of MM-Diffusion's ``evaluations/fvd/pytorch_i3d.py``).

Protocol ``fvd/videogpt-i3d400`` (``evaluations/fvd/fvd.py``): the first 16 frames, values
/ 255, the shorter side resized to 224 (bilinear, align_corners=False, no antialias; the longer
side to ceil(side * 224 / short)), a centre crop of 224 x 224 (offset (side - 224) // 2),
then scaled to [-1, 1]; features = logits; FD with the TF-GAN SVD form; KVD = polynomial MMD.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NUM_FRAMES = 16
RESOLUTION = 224


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding (front, back) of one axis."""
    pad = max(kernel - (stride if size % stride == 0 else size % stride), 0)
    return pad // 2, pad - pad // 2


def _pad_same(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    """Zero-pad (B, C, T, H, W) so that a kernel / stride window gives ceil(size / stride)."""
    pads = [_same_padding(s, k, st) for s, k, st in zip(x.shape[2:], kernel, stride)]
    return F.pad(x, [p for pair in reversed(pads) for p in pair])


class Unit3D(nn.Module):
    """Conv3d with 'SAME' padding, optional batch norm, optional ReLU."""

    def __init__(self, cin, cout, kernel=(1, 1, 1), stride=(1, 1, 1), bn=True, bias=False,
                 relu=True):  # fmt: skip
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=1e-5, momentum=0.001) if bn else None

    def forward(self, x):
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        x = self.bn(x) if self.bn is not None else x
        return F.relu(x) if self.relu else x


class MaxPoolSame(nn.Module):
    """Max pool after zero 'SAME' padding (the port pads with zeros, not -inf)."""

    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x):
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four branches: 1x1; 1x1 -> 3x3; 1x1 -> 3x3; max pool 3x3 -> 1x1, concatenated."""

    def __init__(self, cin: int, c: list[int]):
        super().__init__()
        self.b0 = Unit3D(cin, c[0])
        self.b1a, self.b1b = Unit3D(cin, c[1]), Unit3D(c[1], c[2], kernel=(3, 3, 3))
        self.b2a, self.b2b = Unit3D(cin, c[3]), Unit3D(c[3], c[4], kernel=(3, 3, 3))
        self.b3a, self.b3b = MaxPoolSame((3, 3, 3), (1, 1, 1)), Unit3D(cin, c[5])

    def forward(self, x):
        branches = [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))]
        return torch.cat(branches, dim=1)


# (name, module) in order; names are the checkpoint's top-level keys
_MIXED = {
    "Mixed_3b": (192, [64, 96, 128, 16, 32, 32]),
    "Mixed_3c": (256, [128, 128, 192, 32, 96, 64]),
    "Mixed_4b": (480, [192, 96, 208, 16, 48, 64]),
    "Mixed_4c": (512, [160, 112, 224, 24, 64, 64]),
    "Mixed_4d": (512, [128, 128, 256, 24, 64, 64]),
    "Mixed_4e": (512, [112, 144, 288, 32, 64, 64]),
    "Mixed_4f": (528, [256, 160, 320, 32, 128, 128]),
    "Mixed_5b": (832, [256, 160, 320, 32, 128, 128]),
    "Mixed_5c": (832, [384, 192, 384, 48, 128, 128]),
}


class InceptionI3d(nn.Module):
    """(B, 3, T, 224, 224) in [-1, 1] -> (B, num_classes) logits averaged over time."""

    def __init__(self, num_classes: int = 400):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b, self.Mixed_3c = (
            InceptionModule(*_MIXED[k]) for k in ("Mixed_3b", "Mixed_3c")
        )
        self.MaxPool3d_4a_3x3 = MaxPoolSame((3, 3, 3), (2, 2, 2))
        for k in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            setattr(self, k, InceptionModule(*_MIXED[k]))
        self.MaxPool3d_5a_2x2 = MaxPoolSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b, self.Mixed_5c = (
            InceptionModule(*_MIXED[k]) for k in ("Mixed_5b", "Mixed_5c")
        )
        self.avg_pool = nn.AvgPool3d((2, 7, 7), stride=(1, 1, 1))
        self.logits = Unit3D(1024, num_classes, bn=False, bias=True, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in list(self.children())[:-2]:  # every block before avg_pool and logits
            x = block(x)
        x = self.logits(self.avg_pool(x))  # (B, classes, T', 1, 1); dropout is off in eval
        return x.squeeze(4).squeeze(3).mean(dim=2)


def preprocess_videogpt(frames, num_frames: int = NUM_FRAMES, resolution: int = RESOLUTION):
    """(B, F, H, W, 3) uint8 -> (B, 3, num_frames, res, res) float in [-1, 1] (VideoGPT FVD)."""
    video = torch.as_tensor(np.asarray(frames))
    if video.ndim != 5 or video.shape[-1] != 3:
        raise ValueError(f"frames must be (B, F, H, W, 3) uint8, got {tuple(video.shape)}")
    if video.shape[1] < num_frames:
        raise ValueError(
            f"FVD (videogpt-i3d400) needs {num_frames} frames per clip, got {video.shape[1]}"
        )
    b, _, h, w, _ = video.shape
    x = video[:, :num_frames].permute(0, 1, 4, 2, 3).float() / 255.0  # (B, T, 3, H, W)
    scale = resolution / min(h, w)
    size = (resolution, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), resolution)
    x = F.interpolate(x.flatten(0, 1), size=size, mode="bilinear", align_corners=False)
    top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    x = x[:, :, top : top + resolution, left : left + resolution]
    x = x.unflatten(0, (b, num_frames)).permute(0, 2, 1, 3, 4)  # (B, 3, T, res, res)
    return (x - 0.5) * 2.0
