"""The L_DSM-optimal joint scale (mmdisco.calibration) on the analytic case of test_guidance:
an oracle D (the exact log density ratio) needs scale 1; the same D with its logit times 0.1
needs scale 10."""

import json

import pytest
import torch
from test_guidance import MEANS, STD, ExactMarginalBase, OracleDiscriminator
from torch import nn

from mmdisco import IndependentBases, JointGuidance
from mmdisco.calibration import (
    diagnostics,
    dsm_optimal_scales,
    load_joint_scales,
    residual_statistics,
    save_joint_scales,
)
from mmdisco.runs import resolve_joint_scales


class Scaled(nn.Module):
    def __init__(self, inner, factor):
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, audio, video, t, cond=None):
        return self.factor * self.inner(audio, video, t, cond)


def joint_pairs(n, seed):
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, MEANS.shape[0], (n,), generator=g)
    x = MEANS[k] + STD * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return {"audio": x[:, :1], "video": x[:, 1:]}


@pytest.fixture(scope="module")
def stats():
    bases = IndependentBases(audio=ExactMarginalBase("audio"), video=ExactMarginalBase("video"))
    pairs = joint_pairs(3000, 0)
    out = {}
    for factor in (1.0, 0.1):
        gen = torch.Generator().manual_seed(1)
        d = Scaled(OracleDiscriminator(), factor)
        out[factor] = residual_statistics(d, bases, pairs, buckets=4, draws=2, generator=gen,
                                          batch_size=1000)  # fmt: skip
    return out


def test_oracle_discriminator_needs_scale_one(stats):
    scales = dsm_optimal_scales(stats[1.0])
    for m in ("audio", "video"):
        assert scales[m] == pytest.approx(1.0, abs=0.08)


def test_logit_times_a_tenth_needs_scale_ten(stats):
    oracle, scaled = dsm_optimal_scales(stats[1.0]), dsm_optimal_scales(stats[0.1])
    for m in ("audio", "video"):
        assert scaled[m] == pytest.approx(10 * oracle[m], rel=1e-6)  # same draws: exactly 10x
        assert scaled[m] == pytest.approx(10.0, abs=0.8)


def test_per_bucket_scales_and_diagnostics(stats):
    per = dsm_optimal_scales(stats[1.0], per_bucket=True)
    assert all(len(per[m]) == 4 for m in per)
    d = diagnostics(stats[1.0])
    for m in ("audio", "video"):
        assert 0 < d[m]["res_ratio"] < 1 and 0 < d[m]["cosine"] <= 1
        # most of the correction is in the low-noise half, where the pairs are distinguishable
        assert d[m]["res_ratio_by_t"][0] > d[m]["res_ratio_by_t"][3]


def test_joint_scales_file_roundtrip_and_auto(tmp_path, stats):
    scales = dsm_optimal_scales(stats[1.0])
    save_joint_scales(tmp_path / "joint_scales.json", scales, stats[1.0])
    doc = json.loads((tmp_path / "joint_scales.json").read_text())
    assert set(doc) >= {"audio", "video", "diagnostics"}
    assert load_joint_scales(tmp_path / "joint_scales.json") == scales
    assert resolve_joint_scales("auto", tmp_path) == scales
    assert resolve_joint_scales({"audio": 2.0, "video": 3.0}, tmp_path) == {"audio": 2, "video": 3}
    with pytest.raises(FileNotFoundError, match="calibrate.py"):
        resolve_joint_scales("auto", tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="auto"):
        resolve_joint_scales("automatic", tmp_path)
    with pytest.raises(ValueError, match="resolve_joint_scales"):
        JointGuidance(None, OracleDiscriminator(), joint_scales="auto")


def test_scales_per_bucket_of_t_switch_guidance_by_noise_level():
    bases = IndependentBases(audio=ExactMarginalBase("audio"), video=ExactMarginalBase("video"))
    off_low = JointGuidance(
        bases, OracleDiscriminator(), {"audio": [0.0, 1.0], "video": [0.0, 1.0]}
    )
    full = JointGuidance(bases, OracleDiscriminator(), 1.0)
    xs = {m: torch.randn(2, 1, dtype=torch.float64) for m in ("audio", "video")}
    t = torch.tensor([100, 700])
    eps_base, guided, exact = (
        bases.predict_noise(xs, t),
        off_low.predict_noise(xs, t),
        full.predict_noise(xs, t),
    )
    for m in xs:
        torch.testing.assert_close(guided[m][0], eps_base[m][0])  # t < 500: scale 0
        torch.testing.assert_close(guided[m][1], exact[m][1])  # t >= 500: scale 1
