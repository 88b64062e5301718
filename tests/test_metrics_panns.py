"""PANNs Cnn14 16 kHz (AudioLDM's FD): the checkpoint's keys, the front end built as the
reference builds it, golden embeddings on seeded weights, and the input by hand."""

import json

import numpy as np
import pytest
import torch
from seeded_weights import FIXTURES, load_manifest, seeded_audio, seeded_state_dict

from mmdisco.metrics import panns as P
from mmdisco.metrics.weights import load_into

FRONT = (
    "spectrogram_extractor.stft.conv_real.weight",
    "spectrogram_extractor.stft.conv_imag.weight",
    "logmel_extractor.melW",
)


def test_keys_and_front_end_match_the_reference():
    net = P.Cnn14()
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == load_manifest(
        "panns_cnn14_16k_keys.json"
    )
    golden = json.loads((FIXTURES / "panns_cnn14_16k_golden.json").read_text())
    for k in FRONT:
        w = net.state_dict()[k].double()
        assert float(w.sum()) == pytest.approx(golden["front_sums"][k], abs=1e-3), k
        assert float(w.abs().sum()) == pytest.approx(golden["front_abs_sums"][k], rel=1e-6), k


def test_embeddings_match_the_reference():
    golden = json.loads((FIXTURES / "panns_cnn14_16k_golden.json").read_text())
    net = P.Cnn14().eval()
    manifest = {
        k: s for k, s in load_manifest("panns_cnn14_16k_keys.json").items() if k not in FRONT
    }
    front = {k: net.state_dict()[k] for k in FRONT}
    load_into(net, {**seeded_state_dict(manifest, seed=0), **front}, "seeded cnn14")
    audio = torch.stack([torch.from_numpy(seeded_audio(32_000, seed=s)) for s in (21, 22)])
    with torch.no_grad():
        emb = net(audio)
    np.testing.assert_allclose(emb.numpy(), golden["embedding"], rtol=1e-4, atol=1e-4)


def test_stft_front_end_against_torch_stft():
    x = torch.from_numpy(seeded_audio(4000, seed=5))[None]
    with torch.no_grad():
        power = P.Spectrogram()(x)[0, 0]  # (frames, 257)
    ref = torch.stft(x[0].double(), 512, 160, window=torch.hann_window(512, dtype=torch.float64),
                     center=True, pad_mode="reflect", return_complex=True).abs() ** 2  # fmt: skip
    np.testing.assert_allclose(power.double().numpy(), ref.T.numpy(), rtol=1e-3, atol=1e-3)


def test_input_by_hand():
    stereo = np.stack([np.full(8000, 0.5), np.full(8000, -1.0)]).astype(np.float32)
    x = P.prepare(stereo, 16_000)  # first channel, mean removed, padded to 2 s
    assert x.shape == (32_000,) and np.abs(x).max() == 0.0
    ramp = np.arange(40_000, dtype=np.float32)
    np.testing.assert_allclose(P.prepare(ramp, 16_000), ramp - ramp.mean())  # long: no padding
    assert P.prepare(np.ones(48_000, np.float32), 48_000).shape == (32_000,)  # 1 s at 48 kHz
