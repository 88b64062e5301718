"""Frechet distance and the polynomial-kernel MMD (KID / KVD) between two feature sets.

- ``frechet_distance`` (Heusel et al. 2017; FID, FVD, FAD):
  ``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))`` in float64.
  ``method="sqrtm"``: scipy's ``sqrtm`` of ``S1 S2``; when the product is singular (a non-finite
  root) ``eps`` is added to both diagonals and the root recomputed; a residual imaginary part
  larger than ``1e-3`` is an error, a smaller one is dropped (pytorch-fid / AudioLDM's
  ``audioldm_eval``, StyleGAN-V's FVD).
  ``method="svd"``: the TF-GAN form MM-Diffusion's FVD uses (``evaluations/fvd/fvd.py``):
  ``Tr((S1^(1/2) S2 S1^(1/2))^(1/2))`` with symmetric roots by SVD, singular values below
  ``1e-10`` kept as they are (not rooted).
- ``polynomial_mmd`` (KID, Binkowski et al. 2018; MM-Diffusion's KVD,
  ``mm_diffusion/evaluator.py``): the unbiased MMD^2 with scikit-learn's default polynomial
  kernel ``k(x, y) = (x.y / d + 1)^3``, over all samples at once (no subsets), not scaled.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

IMAG_TOLERANCE = 1e-3  # pytorch-fid's limit on the imaginary part of the diagonal of the root
SVD_EPS = 1e-10  # TF-GAN: singular values below this are not square-rooted


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> mean (D,) and unbiased covariance (D, D), float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"features must be (N >= 2, D), got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _sqrtm_trace(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    """Tr((S1 S2)^(1/2)) with scipy's sqrtm and the epsilon-on-the-diagonal fallback."""
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(sigma1)) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.max(np.abs(np.diagonal(covmean).imag))
        if imag > IMAG_TOLERANCE:
            raise ValueError(
                f"sqrtm(S1 S2) has an imaginary component {imag:.3g}: the covariances are "
                "ill-conditioned (too few samples for the feature size?); try method='svd'"
            )
        covmean = covmean.real
    return float(np.trace(covmean))


def _symmetric_sqrt(mat: np.ndarray) -> np.ndarray:
    """TF-GAN's symmetric square root by SVD (small singular values left unrooted)."""
    u, s, vt = np.linalg.svd(mat)
    s = np.where(s < SVD_EPS, s, np.sqrt(s))
    return (u * s) @ vt


def _svd_trace(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((S1^(1/2) S2 S1^(1/2))^(1/2)), TF-GAN's ``trace_sqrt_product``."""
    root = _symmetric_sqrt(sigma1)
    return float(np.trace(_symmetric_sqrt(root @ sigma2 @ root)))


def frechet_distance(mu1, sigma1, mu2, sigma2, method: str = "sqrtm", eps: float = 1e-6) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), float64."""
    mu1, mu2 = (
        np.atleast_1d(np.asarray(mu1, np.float64)),
        np.atleast_1d(np.asarray(mu2, np.float64)),
    )
    s1, s2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise ValueError(
            f"shapes do not match: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape}"
        )
    if method == "sqrtm":
        trace_root = _sqrtm_trace(s1, s2, eps)
    elif method == "svd":
        trace_root = _svd_trace(s1, s2)
    else:
        raise ValueError(f"method must be 'sqrtm' or 'svd', got {method!r}")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_root)


def frechet_distance_features(x, y, method: str = "sqrtm") -> float:
    """Frechet distance between the Gaussians fitted to (N, D) and (M, D) feature sets."""
    return frechet_distance(*feature_stats(x), *feature_stats(y), method=method)


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, coef0: float = 1.0):
    """k(x, y) = (x.y / D + coef0)^degree, scikit-learn's default gamma = 1 / D."""
    return (x @ y.T / x.shape[1] + coef0) ** degree


def polynomial_mmd(x, y) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel (KID; MM-Diffusion's KVD), float64."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m, n = len(x), len(y)
    if m < 2 or n < 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need (N >= 2, D) and (M >= 2, D) features, got {x.shape}, {y.shape}")
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(xx + yy - 2.0 * k_xy.mean())
