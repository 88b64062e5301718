"""Deterministic random weights from a key-and-shape manifest (for golden-number tests).

Each tensor comes from its own generator seeded by (seed, crc32(key)), so the same manifest
gives the same state dict in any implementation that uses the same parameter names: the
golden outputs in tests/fixtures were recorded once from the reference code with these
weights. He-scaled weights keep activations O(1) through deep ReLU stacks.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import torch

FIXTURES = Path(__file__).parent / "fixtures"


def load_manifest(name: str) -> dict[str, list[int]]:
    return json.loads((FIXTURES / name).read_text())["keys"]


def seeded_tensor(key: str, shape, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
    shape = tuple(shape)
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.long)
    if key.endswith("running_var"):
        return 0.75 + 0.5 * torch.rand(shape, generator=g)
    if key.endswith(("running_mean", "bias")):
        return 0.1 * torch.randn(shape, generator=g)
    if len(shape) == 1:  # batch-norm / layer-norm scale
        return 1.0 + 0.1 * torch.randn(shape, generator=g)
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)


def seeded_state_dict(manifest: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    return {k: seeded_tensor(k, s, seed) for k, s in manifest.items()}


def seeded_uint8(shape, seed: int) -> np.ndarray:
    """Uniform random uint8 array (a test video or image), reproducible."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, tuple(shape), generator=g, dtype=torch.uint8).numpy()


def seeded_audio(n: int, seed: int) -> np.ndarray:
    """(n,) float32 in [-1, 1]: a few tones plus noise, reproducible."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n, dtype=torch.float64) / 16_000
    freqs = 100 + 3000 * torch.rand(3, generator=g, dtype=torch.float64)
    x = sum(torch.sin(2 * math.pi * f * t) for f in freqs) / 4
    x = x + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    return x.clamp(-1, 1).numpy().astype(np.float32)
