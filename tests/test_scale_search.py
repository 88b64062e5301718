"""The D-independent joint-scale search (``calibration.criterion=alignment``)."""

import math

import numpy as np
import pytest
import torch
from tiny_pair_bases import synthetic_bases

from mmdisco.data.synthetic import render_audio, render_video
from mmdisco.scale_search import alignment_score, search_joint_scale


@pytest.fixture(scope="module")
def bases():
    return synthetic_bases()


def encoded(bases, params, audio_params=None):
    video = np.stack([render_video(k, o, c) for k, o, c in params])
    audio = np.stack([render_audio(*(a or p[:2])) for p, a in
                      zip(params, audio_params or [None] * len(params))])  # fmt: skip
    return {"audio": bases["audio"].encode(audio), "video": bases["video"].encode(video)}


def test_synthetic_agreement_is_the_fraction_agreeing_on_class_and_onset(bases):
    params = [(0, 2, (12, 12)), (1, 4, (20, 9)), (2, 1, (8, 22)), (3, 6, (15, 15))]
    assert alignment_score(bases, encoded(bases, params), "synthetic_agreement") == 1.0
    # pair 0: another class, pair 1: another onset, pairs 2-3 kept
    half = encoded(bases, params, [(1, 2), (1, 5), None, None])
    assert alignment_score(bases, half, "synthetic_agreement") == 0.5
    with pytest.raises(ValueError, match="calibration.scorer must be one of"):
        alignment_score(bases, half, "clap")


def test_synthetic_score_weighs_agreement_by_the_balance_of_classes_and_onsets(bases):
    params = [(0, 2, (12, 12)), (1, 4, (20, 9)), (2, 1, (8, 22)), (3, 6, (15, 15))]
    onsets = math.log(4) / math.log(6)  # 4 distinct onsets of the world's 6, in each modality
    assert alignment_score(bases, encoded(bases, params), "synthetic") == pytest.approx(onsets)
    half = encoded(bases, params, [(1, 2), (1, 5), None, None])
    # video classes 0 1 2 3 (balance 1), audio classes 1 1 2 3: H = 1.5 ln 2 over ln 4 = 0.75
    expected = 0.5 * (1 + 0.75) / 2 * onsets
    assert alignment_score(bases, half, "synthetic") == pytest.approx(expected)
    # every pair agrees, but all are red: a collapsed joint scores 0
    red = [(0, o, (12 + o, 14)) for o in (1, 2, 3, 4, 5, 6)]
    assert alignment_score(bases, encoded(bases, red), "synthetic_agreement") == 1.0
    assert alignment_score(bases, encoded(bases, red), "synthetic") == 0.0


def test_search_samples_every_scale_from_the_same_noise_and_keeps_the_best(bases):
    from omegaconf import OmegaConf

    class Zero(torch.nn.Module):  # no guidance signal: every scale gives the unguided pairs
        def forward(self, audio, video, t, cond=None):
            return 0.0 * (audio.flatten(1).sum(1) + video.flatten(1).sum(1))

    sampler = OmegaConf.create({"_target_": "mmdisco.sampling.JointSampler", "_partial_": True,
                                "solver": "ddim", "num_steps": 3, "eta": 0.0})
    best, scores = search_joint_scale(bases, Zero(), sampler, [10, 1, 3], 3, 0, "synthetic")
    assert list(scores) == ["1", "3", "10"] and len(set(scores.values())) == 1
    assert best == 1.0  # a tie goes to the smallest scale
    with pytest.raises(ValueError, match="non-empty list of scales > 0"):
        search_joint_scale(bases, Zero(), sampler, [0, 1], 3, 0, "synthetic")


def test_per_bucket_search_lowers_one_bucket_at_a_time_from_high_noise(monkeypatch):
    """The search's logic on a known objective: the "samples" are the scales sampled with."""
    import mmdisco.scale_search as ss

    def fake_sample(sampler, *args, **kwargs):
        s = sampler.model.joint_scales["audio"]
        return {"scales": [s] * 4 if isinstance(s, float) else s}

    def objective(bases, samples, scorer):  # best: 10, but 1 in bucket 2 (t in [500, 750))
        want = [10.0, 10.0, 1.0, 10.0]
        return -sum(abs(math.log(a) - math.log(b)) for a, b in zip(samples["scales"], want))

    monkeypatch.setattr(ss, "sample_in_batches", fake_sample)
    monkeypatch.setattr(ss, "alignment_score", objective)
    monkeypatch.setattr(ss, "build_sampler", lambda model, cfg: type("S", (), {"model": model}))
    grid = [1, 3, 10, 30, 100]
    best, scores = ss.search_joint_scale(None, None, None, grid, 4, 0, "synthetic")
    assert best == 10.0 and list(scores) == ["1", "3", "10", "30", "100"]
    profile, scores = ss.search_joint_scale(None, None, None, grid, 4, 0, "synthetic", buckets=4)
    assert profile == [10.0, 10.0, 1.0, 10.0]
    # bucket 3 first (the next smaller scale, then 1: both worse), then bucket 2 (both better);
    # never a larger scale than the grid's best, and the low-noise half is left at it
    assert list(scores)[5:] == [
        "[10.0, 10.0, 10.0, 3.0]", "[10.0, 10.0, 10.0, 1.0]", "[10.0, 10.0, 3.0, 10.0]",
        "[10.0, 10.0, 1.0, 10.0]",
    ]  # fmt: skip


def test_per_bucket_search_through_the_real_sampler_takes_a_tie_to_the_smaller_scale(bases):
    from omegaconf import OmegaConf

    class Zero(torch.nn.Module):
        def forward(self, audio, video, t, cond=None):
            return 0.0 * (audio.flatten(1).sum(1) + video.flatten(1).sum(1))

    sampler = OmegaConf.create({"_target_": "mmdisco.sampling.JointSampler", "_partial_": True,
                                "solver": "ddim", "num_steps": 2, "eta": 0.0})
    profile, scores = search_joint_scale(bases, Zero(), sampler, [3, 10], 2, 0, "synthetic",
                                         buckets=2)  # fmt: skip
    assert profile == [3.0, 1.0] and len(set(scores.values())) == 1
    assert list(scores) == ["3", "10", "[3.0, 1.0]"]  # only the high-noise half is lowered
