"""VGGish (AudioLDM's FAD): the checkpoint's keys, golden embeddings of the reference code on
seeded weights, and the log-mel framing by hand."""

import json
import math

import numpy as np
import pytest
import torch
from seeded_weights import FIXTURES, load_manifest, seeded_audio, seeded_state_dict

from mmdisco.metrics import vggish as V
from mmdisco.metrics.weights import load_into


def test_parameter_names_and_shapes_match_the_checkpoint_manifest():
    ours = {k: list(v.shape) for k, v in V.VGGish().state_dict().items()}
    assert ours == load_manifest("vggish_keys.json")


def test_examples_and_embeddings_match_the_reference():
    golden = json.loads((FIXTURES / "vggish_golden.json").read_text())
    examples = V.log_mel_examples(seeded_audio(2 * 16000 + 1234, seed=2))
    assert list(examples.shape) == golden["examples_shape"][:1] + golden["examples_shape"][2:]
    assert examples.sum() == pytest.approx(golden["examples_sum"], rel=1e-9)
    np.testing.assert_allclose(examples[0, 0], golden["examples_first_row"], rtol=1e-6)
    net = V.VGGish().eval()
    load_into(net, seeded_state_dict(load_manifest("vggish_keys.json"), seed=0), "seeded vggish")
    with torch.no_grad():
        emb = net(torch.from_numpy(examples).float()[:, None])
    np.testing.assert_allclose(emb.numpy(), golden["embeddings"], rtol=1e-4, atol=1e-4)
    assert (emb < 0).any()  # the final ReLU is off (AudioLDM's use_activation=False)


@pytest.mark.parametrize("n, examples", [(15_600, 1), (15_600 + 159, 1), (33_234, 2), (47_120, 3)])
def test_framing_by_hand(n, examples):
    # frames = 1 + (n - 400) // 160; examples = 1 + (frames - 96) // 96, tails dropped
    assert 1 + (1 + (n - 400) // 160 - 96) // 96 == examples
    assert V.log_mel_examples(np.zeros(n, np.float32)).shape == (examples, 96, 64)


def test_too_short_audio_is_refused():
    with pytest.raises(ValueError, match="at least 15600 samples"):
        V.log_mel_examples(np.zeros(15_599, np.float32))


def test_mel_bands_by_hand():
    assert V.hertz_to_mel(700.0) == pytest.approx(1127.0 * math.log(2.0))
    w = V.mel_matrix()
    assert w.shape == (257, 64) and (w[0] == 0).all() and w.max() <= 1.0
    # silence is log(0.01) everywhere
    np.testing.assert_allclose(V.log_mel_examples(np.zeros(16_000)), math.log(0.01))
    # a 1 kHz tone is loudest in the band whose centre is nearest to 1 kHz on the mel scale
    tone = np.sin(2 * np.pi * 1000 * np.arange(16_000) / 16_000)
    edges = np.linspace(V.hertz_to_mel(125), V.hertz_to_mel(7500), 66)
    expected = int(np.argmin(np.abs(edges[1:-1] - V.hertz_to_mel(1000))))
    assert int(np.argmax(V.log_mel_examples(tone)[0].mean(0))) == expected
