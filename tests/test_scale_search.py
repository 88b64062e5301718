"""The D-independent joint-scale search (``calibration.criterion=alignment``)."""

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


def test_synthetic_score_is_the_fraction_agreeing_on_class_and_onset(bases):
    params = [(0, 2, (12, 12)), (1, 4, (20, 9)), (2, 1, (8, 22)), (3, 6, (15, 15))]
    assert alignment_score(bases, encoded(bases, params), "synthetic") == 1.0
    # pair 0: another class, pair 1: another onset, pairs 2-3 kept
    half = encoded(bases, params, [(1, 2), (1, 5), None, None])
    assert alignment_score(bases, half, "synthetic") == 0.5
    with pytest.raises(ValueError, match="calibration.scorer must be one of"):
        alignment_score(bases, half, "clap")


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
