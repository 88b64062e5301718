"""Toy metrics (paper Table 1). The paper does not say how its NLL was computed; ours is:

- ``nll``: mean over generated samples of -log p_target(x), p_target the exact target mixture
  (equal weights, isotropic std = data.std). Natural log, nats per 2-D sample.
  Dominated by the few samples far from every peak (a sample 1.0 away from a std-0.1 peak
  costs ~50 nats), so we also give ``nll_median``.
- ``nll_kernel0.4``: the same with each peak widened to std 0.4 (ground-truth samples score about
  1.7 there, near the paper's 1.67 for "GT samples", which suggests a kernel of this width).
- ``precision``: fraction of samples within 3 std (Euclidean, in 2-D) of some target peak.
- ``peaks_covered``: number of target peaks whose 3-std ball holds >= 1% of the samples.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

from mmdisco.data.toy import GaussianMixture


def toy_metrics(x: Tensor, target: GaussianMixture, kernel_std: float = 0.4) -> dict[str, float]:
    x = torch.as_tensor(x, dtype=torch.float64)
    if x.ndim != 2 or x.shape[1] != target.dim:
        raise ValueError(f"samples must be (N, {target.dim}), got {tuple(x.shape)}")
    nll = -target.log_prob(x)
    wide = GaussianMixture(target.means, kernel_std)
    dist = torch.cdist(x, target.means)  # (N, K)
    near = dist <= 3 * target.std
    share = near.float().mean(0)  # (K,)
    return {
        "nll": nll.mean().item(),
        "nll_median": nll.median().item(),
        f"nll_kernel{kernel_std}": (-wide.log_prob(x)).mean().item(),
        "precision": near.any(1).float().mean().item(),
        "peaks_covered": int((share >= 0.01).sum().item()),
        "num_peaks": int(target.means.shape[0]),
        "num_samples": int(x.shape[0]),
    }


def evaluate_npz(path: str | os.PathLike, target: GaussianMixture) -> dict[str, float]:
    """:func:`toy_metrics` of the pairs in a ``samples.npz`` written by scripts/sample.py."""
    with np.load(path) as f:
        a, v = f["audio"], f["video"]
        x = np.concatenate([a.reshape(len(a), -1), v.reshape(len(v), -1)], 1)
    return toy_metrics(torch.from_numpy(x), target)
