"""CLAP text-audio score: our embedding path against ClapModel's own forward, and its input."""

import numpy as np
import pytest
import torch
from tiny_eval_components import save_tiny_clap

from mmdisco.metrics.clap import ClapScorer, read_prompts


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    return ClapScorer(save_tiny_clap(tmp_path_factory.mktemp("clap")))


def test_scores_match_the_models_own_logits(scorer):
    rng = np.random.default_rng(0)
    audios = [rng.standard_normal(16_000).astype(np.float32) * 0.3 for _ in range(3)]
    texts = ["a dog", "rain on a roof", "a"]
    ours = scorer.scores(audios, 16_000, texts)
    # independent path: the processor on 48 kHz audio and ClapModel.forward's logits_per_audio,
    # which are cosine similarities times exp(logit_scale_a)
    audio48 = [scorer.prepare_audio(a, 16_000) for a in audios]
    inputs = scorer.processor(text=texts, audio=audio48, sampling_rate=48_000,
                              return_tensors="pt", padding=True)  # fmt: skip
    with torch.no_grad():
        out = scorer.model(**inputs)
        expected = torch.diagonal(out.logits_per_audio) / scorer.model.logit_scale_a.exp()
    np.testing.assert_allclose(ours, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(ours) <= 1 + 1e-6) and np.ptp(ours) > 0


def test_audio_input_by_hand(scorer):
    # 16 kHz -> 48 kHz triples the length; stereo is averaged; longer clips keep the first 2 s
    stereo = np.stack([np.ones(8_000), -np.ones(8_000)]).astype(np.float32)
    assert scorer.prepare_audio(stereo, 16_000).shape == (24_000,)
    np.testing.assert_allclose(scorer.prepare_audio(stereo, 48_000), 0.0)
    long = np.arange(5 * 48_000, dtype=np.float32)
    np.testing.assert_array_equal(scorer.prepare_audio(long, 48_000), long[: 2 * 48_000])


def test_prompts_csv(tmp_path):
    (tmp_path / "prompts.csv").write_text('file,prompt\n00000.mp4,a dog\n00001.mp4,"rain, wind"\n')
    assert read_prompts(tmp_path) == {"00000.mp4": "a dog", "00001.mp4": "rain, wind"}
    with pytest.raises(FileNotFoundError, match="prompts.csv"):
        read_prompts(tmp_path / "missing")
