"""The HiFi-GAN generator (Kong et al. 2020, "V1/V2/V3" generator) that Auffusion's vocoder uses.

Facts from github.com/happylittlecat2333/Auffusion, ``auffusion_pipeline.py`` (``Generator``,
``ResBlock1``, ``ResBlock2``; the same code is in ``converter.py``):

- ``Generator.from_pretrained(<model>/vocoder)`` reads ``config.json`` (keys ``num_mels`` =
  256, ``upsample_rates``, ``upsample_kernel_sizes``, ``upsample_initial_channel``,
  ``resblock`` "1" or "2", ``resblock_kernel_sizes``, ``resblock_dilation_sizes``,
  ``sampling_rate`` = 16000, plus training keys that the generator ignores) and
  ``vocoder.pt``, a ``torch.save``-d dict whose ``"generator"`` entry is the state dict. Every
  conv is wrapped in ``torch.nn.utils.weight_norm`` (``weight_g``, ``weight_v``; dim 0), loaded
  strictly, then ``remove_weight_norm`` fuses them.
- ``conv_pre``: Conv1d(num_mels, C, 7, padding 3). For each upsampling i (rate u, kernel k):
  LeakyReLU(0.1), ConvTranspose1d(C / 2^i, C / 2^(i+1), k, u) with padding (k - u) / 2 when
  k - u is even, else padding (k - u) // 2 + 1 and output_padding 1 (so exactly u times
  longer), then the mean of ``len(resblock_kernel_sizes)`` residual blocks
  (``resblocks[i * num_kernels + j]``). Then LeakyReLU with PyTorch's default slope 0.01 (not
  0.1), ``conv_post`` Conv1d(C / 2^n, 1, 7, padding 3) and tanh.
- ``ResBlock1`` (``convs1``: three dilated convs, ``convs2``: three undilated, in pairs
  ``x + c2(lrelu(c1(lrelu(x))))``); ``ResBlock2`` (``convs``: two dilated, ``x + c(lrelu(x))``);
  "same" padding ``(k * d - d) / 2``; LeakyReLU slope 0.1.

This module stores plain (fused) conv weights under the same names, and
:func:`fuse_weight_norm` turns a checkpoint in any of the three layouts into them: old-style
``weight_g`` / ``weight_v``, ``parametrizations.weight.original0`` / ``original1`` (PyTorch's
newer ``parametrizations.weight_norm``), or plain ``weight``. Loading is then strict.

The generator is fully convolutional: (B, num_mels, T) log-mel -> (B, T * prod(upsample_rates))
waveform in [-1, 1]. Auffusion generates 10.24 s (1024 frames) and crops the waveform to the
requested length (``Generator.inference(mels, lengths)``); the official MMDisCo decodes 2 s
clips (200 frames) directly. Both are the same computation here: no window is needed.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdisco.io import atomic_write_bytes, atomic_write_json
from mmdisco.pretrained import resolve_pretrained

LRELU_SLOPE = 0.1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "vocoder.pt"
CONFIG_KEYS = (
    "num_mels",
    "upsample_rates",
    "upsample_kernel_sizes",
    "upsample_initial_channel",
    "resblock",
    "resblock_kernel_sizes",
    "resblock_dilation_sizes",
    "sampling_rate",
)


def _same_padding(kernel_size: int, dilation: int) -> int:
    return (kernel_size * dilation - dilation) // 2


class ResBlock1(nn.Module):
    """Three (dilated conv, conv) pairs with residuals; LeakyReLU(0.1) before each conv."""

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]):
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, 1, _same_padding(kernel_size, d), d)
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, 1, _same_padding(kernel_size, 1))
            for _ in dilations
        )

    def forward(self, x: Tensor) -> Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x


class ResBlock2(nn.Module):
    """Dilated convs with residuals; LeakyReLU(0.1) before each conv."""

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, 1, _same_padding(kernel_size, d), d)
            for d in dilations
        )

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = x + conv(F.leaky_relu(x, LRELU_SLOPE))
        return x


class HifiGanGenerator(nn.Module):
    """Log-mel (B, num_mels, T) -> waveform (B, T * hop) in [-1, 1]; hop = prod(upsample_rates).

    ``config`` is the vocoder's ``config.json`` as a dict (unknown keys are kept, not used).
    """

    def __init__(self, config: Mapping):
        super().__init__()
        missing = [k for k in CONFIG_KEYS if k not in config]
        if missing:
            raise ValueError(f"HiFi-GAN config lacks {', '.join(missing)}")
        self.config = dict(config)
        c = self.config
        if str(c["resblock"]) not in ("1", "2"):
            raise ValueError(f"resblock must be '1' or '2', got {c['resblock']!r}")
        block = ResBlock1 if str(c["resblock"]) == "1" else ResBlock2
        width = c["upsample_initial_channel"]
        self.num_kernels = len(c["resblock_kernel_sizes"])
        self.conv_pre = nn.Conv1d(c["num_mels"], width, 7, 1, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (u, k) in enumerate(zip(c["upsample_rates"], c["upsample_kernel_sizes"])):
            c_in, c_out = width // 2**i, width // 2 ** (i + 1)
            odd = (k - u) % 2
            self.ups.append(
                nn.ConvTranspose1d(
                    c_in, c_out, k, u, padding=(k - u) // 2 + odd, output_padding=odd
                )
            )
            for ks, ds in zip(c["resblock_kernel_sizes"], c["resblock_dilation_sizes"]):
                self.resblocks.append(block(c_out, ks, ds))
        self.conv_post = nn.Conv1d(width // 2 ** len(self.ups), 1, 7, 1, padding=3)

    @property
    def hop_length(self) -> int:
        return math.prod(self.config["upsample_rates"])

    @property
    def sample_rate(self) -> int:
        return int(self.config["sampling_rate"])

    def forward(self, mel: Tensor) -> Tensor:
        """(B, num_mels, T) log-mel -> (B, T * hop_length) waveform."""
        x = self.conv_pre(mel)  # (B, C, T)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))  # (B, C / 2^(i+1), T * prod(rates[:i+1]))
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            x = sum(block(x) for block in blocks) / self.num_kernels
        x = self.conv_post(F.leaky_relu(x))  # default slope 0.01, as in the official code
        return torch.tanh(x).squeeze(1)

    # -- checkpoints ----------------------------------------------------------------------
    def load_official_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        """Load (strictly) a state dict in the official names, weight-normed or not."""
        self.load_state_dict(fuse_weight_norm(state_dict), strict=True)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> HifiGanGenerator:
        """``<path>/config.json`` + ``<path>/vocoder.pt`` (Auffusion's ``vocoder`` folder)."""
        path = resolve_pretrained(
            path,
            (CONFIG_NAME, WEIGHTS_NAME),
            "Auffusion's vocoder folder (hub: auffusion/auffusion-full, subfolder vocoder).",
        )
        config = json.loads((path / CONFIG_NAME).read_text())
        model = cls(config)
        checkpoint = torch.load(path / WEIGHTS_NAME, map_location="cpu", weights_only=True)
        state = checkpoint.get("generator", checkpoint)  # {"generator": ...} or a bare state dict
        model.load_official_state_dict(state)
        return model.eval().requires_grad_(False)

    def save_pretrained(self, path: str | Path) -> None:
        """config.json + vocoder.pt ({"generator": weight-normed state dict}), the official
        layout, so Auffusion's own ``Generator.from_pretrained`` reads it too."""
        path = Path(path)
        atomic_write_json(path / CONFIG_NAME, self.config)
        buffer = io.BytesIO()
        torch.save({"generator": split_weight_norm(self.state_dict())}, buffer)
        atomic_write_bytes(path / WEIGHTS_NAME, buffer.getvalue())


def _norm_except_dim0(v: Tensor) -> Tensor:
    """||v|| over every dim but 0, kept for broadcasting (torch weight_norm with dim=0)."""
    return v.flatten(1).norm(dim=1).reshape(-1, *([1] * (v.ndim - 1)))


_WEIGHT_NORM_NAMES = (  # (magnitude g, direction v) suffixes of one normalised weight
    (".weight_g", ".weight_v"),  # torch.nn.utils.weight_norm
    (".parametrizations.weight.original0", ".parametrizations.weight.original1"),
)


def fuse_weight_norm(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``<m>.weight = g * v / ||v||`` for every weight-norm pair (either naming); other keys
    pass through. A direction without its magnitude (or the reverse) is an error."""
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for key, g in state_dict.items():
        for g_suffix, v_suffix in _WEIGHT_NORM_NAMES:
            if not key.endswith(g_suffix):
                continue
            module = key[: -len(g_suffix)]
            if module + v_suffix not in state_dict:
                raise KeyError(f"weight-norm magnitude {key} has no direction {v_suffix}")
            v = state_dict[module + v_suffix].float()
            out[module + ".weight"] = g.float() * v / _norm_except_dim0(v)
            used |= {key, module + v_suffix}
    for key, value in state_dict.items():
        if key in used:
            continue
        if key.endswith(tuple(v for _, v in _WEIGHT_NORM_NAMES)):
            raise KeyError(f"weight-norm direction {key} has no magnitude")
        out[key] = value
    return out


def split_weight_norm(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`fuse_weight_norm` in the old-style names: every conv ``weight`` becomes
    ``weight_g`` = ||weight|| (over all dims but 0) and ``weight_v`` = weight."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith(".weight") and value.ndim == 3:  # Conv1d / ConvTranspose1d weights
            module = key[: -len(".weight")]
            out[module + ".weight_g"] = _norm_except_dim0(value).clone()
            out[module + ".weight_v"] = value.clone()
        else:
            out[key] = value.clone()
    return out
