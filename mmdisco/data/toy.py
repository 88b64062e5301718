"""The paper's toy data (Sec. 4.1): isotropic Gaussian mixtures with equal weights.

The 1-D base data set (5 peaks at -3, -1.5, 0, 1.5, 3, std 0.1) and the paired 2-D targets
(in-domain and out-of-domain peak layouts) are config values; any layout works by override.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mmdisco.schedule import NoiseSchedule


class GaussianMixture:
    """Equal-weight mixture of isotropic Gaussians N(mu_k, std^2 I) in D dimensions."""

    def __init__(self, means, std: float):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim == 1:
            means = means[:, None]
        if means.ndim != 2 or means.shape[0] == 0:
            raise ValueError(
                f"peaks must be a non-empty list of points, got shape {tuple(means.shape)}"
            )
        if not std > 0:
            raise ValueError(f"std must be positive, got {std}")
        self.means, self.std = means, float(std)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n samples, the components drawn uniformly (float32, (n, D))."""
        k = torch.randint(0, self.means.shape[0], (n,), generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.means[k] + self.std * noise).float()

    def noised(self, alpha: float, sigma: float) -> GaussianMixture:
        """The law of alpha * x + sigma * noise: means alpha mu, std sqrt(alpha^2 s^2 + sigma^2)."""
        return GaussianMixture(alpha * self.means, math.sqrt(alpha**2 * self.std**2 + sigma**2))

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log density (float64), x (N, D) -> (N,)."""
        x = torch.as_tensor(x, dtype=torch.float64).reshape(-1, self.dim)
        d2 = ((x[:, None, :] - self.means[None]) ** 2).sum(-1)  # (N, K)
        log_norm = -0.5 * self.dim * math.log(2 * math.pi * self.std**2)
        return (
            torch.logsumexp(-0.5 * d2 / self.std**2, dim=1) + log_norm - math.log(len(self.means))
        )

    def marginal(self, dim: int) -> GaussianMixture:
        return GaussianMixture(self.means[:, dim : dim + 1], self.std)

    def noised_log_prob_at(self, x: Tensor, schedule: NoiseSchedule, t: Tensor) -> Tensor:
        """log p_t(x_t) per sample, with per-sample steps t (VP or not)."""
        alpha, sigma = schedule.coefficients(t)
        x = torch.as_tensor(x, dtype=torch.float64).reshape(-1, self.dim)
        var = alpha[:, None] ** 2 * self.std**2 + sigma[:, None] ** 2  # (N, 1)
        d2 = ((x[:, None, :] - alpha[:, None, None] * self.means[None]) ** 2).sum(-1)  # (N, K)
        log_norm = -0.5 * self.dim * torch.log(2 * math.pi * var)
        return torch.logsumexp(-0.5 * d2 / var, dim=1) + log_norm[:, 0] - math.log(len(self.means))


class ToyPairs:
    """The paired target of the toy: peaks at (a, v) with std ``std`` (paper: 500 pairs).

    A pair source like the media data sets (``mmdisco.data.source.PairSource``): sample i is
    ``{"audio": (1,), "video": (1,), ...}`` in data space, which the toy bases' identity codec
    stores as is; the metrics score generated pairs against ``target``'s exact density.
    """

    def __init__(
        self, peaks, std: float = 0.1, num_samples: int = 500, seed: int = 0, name: str = "toy"
    ):
        peaks = _as_points(peaks)
        if peaks.shape[1] != 2:
            raise ValueError(
                "data.peaks must be a list of [audio, video] pairs; "
                f"got points of length {peaks.shape[1]}"
            )
        if num_samples < 1:
            raise ValueError(f"data.num_samples must be >= 1, got {num_samples}")
        self.target = GaussianMixture(peaks, std)
        self.num_samples, self.seed, self.name = num_samples, seed, name
        self._points: Tensor | None = None

    def points(self) -> Tensor:
        """The paired training set, (num_samples, 2) float32: column 0 audio, 1 video."""
        if self._points is None:
            gen = torch.Generator().manual_seed(self.seed)
            self._points = self.target.sample(self.num_samples, gen)
        return self._points

    # -- the pair source ---------------------------------------------------------------------
    captions: list[str] = []  # unconditional: no prompts

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        x = self.points()[index]
        return {"audio": x[:1], "video": x[1:], "caption": "", "path": "", "index": index}

    def for_media_format(self, fmt) -> ToyPairs:
        return self  # data-space samples: no clip format to agree on

    def cache_key(self) -> dict:
        means = self.target.means.tolist()
        return {"kind": "toy", "peaks": means, "std": self.target.std, "seed": self.seed,
                "num_samples": self.num_samples}  # fmt: skip

    def note_skipped(self, records) -> None:
        if records:
            raise RuntimeError(f"toy samples cannot be skipped, got {records}")

    def report(self) -> dict:
        return {"clips": self.num_samples, "skipped": 0}


def _as_points(peaks) -> Tensor:
    rows = [list(p) if hasattr(p, "__len__") else [p] for p in peaks]
    lengths = {len(r) for r in rows}
    if len(rows) == 0:
        raise ValueError("peaks must not be empty")
    if len(lengths) != 1:
        raise ValueError(f"every peak must have the same length, got lengths {sorted(lengths)}")
    return torch.tensor(rows, dtype=torch.float64)
