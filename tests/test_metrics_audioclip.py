"""AudioCLIP's audio branch (MM-Diffusion's FAD): the checkpoint's keys, golden embeddings of
the reference ESResNeXtFBSP on seeded weights, and the input by hand."""

import json

import numpy as np
import torch
from seeded_weights import FIXTURES, load_manifest, seeded_audio, seeded_state_dict

from mmdisco.metrics import audioclip as A
from mmdisco.metrics.weights import load_into

KEEP = ("window", "fbsp.bias", "fbsp.fc")  # as built: the window, the empty bias, the bin grid


def test_parameter_names_and_shapes_match_the_checkpoint_manifest():
    ours = {k: list(v.shape) for k, v in A.AudioCLIPAudio().state_dict().items()}
    assert ours == load_manifest("audioclip_audio_keys.json")


def test_embeddings_match_the_reference():
    golden = json.loads((FIXTURES / "audioclip_audio_golden.json").read_text())
    net = A.AudioCLIPAudio().eval()
    manifest = {
        k: s for k, s in load_manifest("audioclip_audio_keys.json").items() if k not in KEEP
    }
    state = {**seeded_state_dict(manifest, seed=0), **{k: net.state_dict()[k] for k in KEEP}}
    load_into(net, state, "seeded audioclip")
    audio = np.stack([seeded_audio(70_560, seed=s) for s in (31, 32)])[:, None] * 0.5
    with torch.no_grad():
        emb = net(torch.from_numpy(audio).double())
    np.testing.assert_allclose(emb.numpy(), golden["embedding"], rtol=2e-4, atol=0.05)


def test_learned_dft_at_its_initial_values_is_a_scaled_dft():
    # m = 0 makes the window 1: the weights are exp(-i fc t) / sqrt(n) on the grid t in [-pi, pi]
    fbsp = A.LinearFBSP(5)
    with torch.no_grad():
        w = fbsp.weights(8, torch.float64, "cpu")
    t = np.pi * np.linspace(-1, 1, 8) + 1e-8
    expected = np.exp(-1j * np.outer(np.arange(5), t)) / np.sqrt(8)
    np.testing.assert_allclose(w[..., 0].numpy() + 1j * w[..., 1].numpy(), expected, atol=1e-6)


def test_input_by_hand():
    stereo = np.stack([np.full(16_000, 0.5), np.full(16_000, -1.0)]).astype(np.float32)
    x = A.prepare(stereo, 44_100)  # first channel; 16000 samples then zeros
    assert x.shape == (1, 70_560) and (x[0, :16_000] == 0.5).all() and (x[0, 16_000:] == 0).all()
    long = A.prepare(np.ones(32_000, np.float32), 16_000)  # 2 s at 16 kHz -> cut to 1.6 s at 44.1
    np.testing.assert_allclose(long[0, 2_000:], 1.0, atol=1e-3)  # no zero padding: all signal
    # frames: 1 + ceil((70560 - 1654) / 561) = 124, 341 rows per band
    db = A.AudioCLIPAudio().log_power(torch.from_numpy(x[None]))
    assert db.shape == (1, 1, 3, 341, 124)
