"""Frechet distance and polynomial MMD against closed forms, scipy and scikit-learn."""

import numpy as np
import pytest
from scipy import linalg

from mmdisco.metrics import frechet_distance
from mmdisco.metrics.frechet import feature_stats, frechet_distance_features, polynomial_mmd


def _spd(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


@pytest.mark.parametrize("method", ["sqrtm", "svd"])
def test_diagonal_covariances_closed_form(method):
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    v1, v2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    got = frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2), method=method)
    assert got == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("method", ["sqrtm", "svd"])
def test_full_covariances_against_direct_scipy(method):
    rng = np.random.default_rng(1)
    d = 8
    mu1, mu2, s1, s2 = rng.standard_normal(d), rng.standard_normal(d), _spd(rng, d), _spd(rng, d)
    # the symmetric form: Tr((S1^1/2 S2 S1^1/2)^1/2), each root by scipy
    r1 = linalg.sqrtm(s1).real
    direct = (
        np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * np.trace(linalg.sqrtm(r1 @ s2 @ r1).real)
    )
    assert frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(direct, rel=1e-9)


@pytest.mark.parametrize("method", ["sqrtm", "svd"])
def test_identity_and_symmetry(method):
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((200, 5)), rng.standard_normal((150, 5)) * 1.5 + 0.3
    mu, sigma = feature_stats(x)
    assert frechet_distance(mu, sigma, mu, sigma, method=method) == pytest.approx(0, abs=1e-9)
    xy = frechet_distance_features(x, y, method=method)
    assert xy > 0.1 and frechet_distance_features(y, x, method=method) == pytest.approx(xy)


def test_singular_covariances_give_a_finite_distance():
    # fewer samples than dimensions: both covariances singular
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((4, 12)), rng.standard_normal((4, 12))
    got = frechet_distance_features(x, y)
    assert np.isfinite(got)
    assert got == pytest.approx(frechet_distance_features(x, y, method="svd"), rel=1e-2)


def test_epsilon_fallback_and_imaginary_check(monkeypatch):
    from mmdisco.metrics import frechet as F

    rng = np.random.default_rng(5)
    mu1, mu2, s1, s2 = rng.standard_normal(4), rng.standard_normal(4), _spd(rng, 4), _spd(rng, 4)
    real_sqrtm, calls = linalg.sqrtm, []

    def first_fails(m):  # scipy returning a non-finite root, as older versions do when singular
        calls.append(m)
        return np.full_like(m, np.inf) if len(calls) == 1 else real_sqrtm(m)

    monkeypatch.setattr(F.linalg, "sqrtm", first_fails)
    got = frechet_distance(mu1, s1, mu2, s2, eps=1e-3)
    offset = 1e-3 * np.eye(4)
    np.testing.assert_allclose(calls[1], (s1 + offset) @ (s2 + offset))  # eps on both diagonals
    tr = np.trace(real_sqrtm((s1 + offset) @ (s2 + offset)).real)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * tr
    assert got == pytest.approx(expected, rel=1e-12)
    monkeypatch.setattr(F.linalg, "sqrtm", lambda m: real_sqrtm(m) + 0.01j * np.eye(len(m)))
    with pytest.raises(ValueError, match="imaginary component"):
        frechet_distance(mu1, s1, mu2, s2)
    monkeypatch.setattr(F.linalg, "sqrtm", lambda m: real_sqrtm(m) + 1e-5j * np.eye(len(m)))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        frechet_distance(mu1, s1, mu2, s2, method="svd"), rel=1e-9
    )  # a tiny imaginary part is dropped


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="method"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2), method="eig")
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_polynomial_mmd_against_scikit_learn():
    from sklearn.metrics.pairwise import polynomial_kernel

    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((30, 7)), rng.standard_normal((20, 7)) + 0.5
    kxx, kyy, kxy = polynomial_kernel(x), polynomial_kernel(y), polynomial_kernel(x, y)
    expected = (
        (kxx.sum() - np.trace(kxx)) / (30 * 29)
        + (kyy.sum() - np.trace(kyy)) / (20 * 19)
        - 2 * kxy.mean()
    )
    assert polynomial_mmd(x, y) == pytest.approx(expected, rel=1e-12)
    assert polynomial_mmd(x, y) > 0.05
    # unbiased: two samples of one distribution give about zero, either sign
    a, b = rng.standard_normal((400, 7)), rng.standard_normal((400, 7))
    assert abs(polynomial_mmd(a, b)) < 0.02
