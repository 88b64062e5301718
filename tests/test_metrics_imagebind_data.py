"""ImageBind's input pipeline against golden numbers of the reference data.py (with torchaudio's
Kaldi fbank and pytorchvideo's samplers) and hand-computed cases."""

import gzip
import json
from fractions import Fraction

import numpy as np
import pytest
import torch
from seeded_weights import FIXTURES, seeded_audio, seeded_uint8

from mmdisco.metrics import imagebind_data as D

GOLDEN = json.loads((FIXTURES / "imagebind_data_golden.json").read_text())


def test_kaldi_fbank_matches_torchaudio():
    g = GOLDEN["fbank"]
    got = D.kaldi_fbank(torch.from_numpy(seeded_audio(g["n"], seed=12)))
    assert list(got.shape) == g["shape"]
    np.testing.assert_allclose(got.numpy(), g["values"], atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["short", "long"])  # 1 s: three equal clips; 3.3 s: overlapping
def test_audio_clips_match_the_reference(name):
    g = GOLDEN[f"audio_{name}"]
    x = D.audio_clips(seeded_audio(g["n"], seed=11) + 0.05, 16_000)
    assert list(x.shape) == g["shape"] == [3, 1, 128, 204]
    np.testing.assert_allclose([float(c.double().sum()) for c in x], g["clip_sums"], rtol=1e-4)
    assert float(x.double().abs().sum()) == pytest.approx(g["abs_sum"], rel=1e-5)
    np.testing.assert_allclose(x[0, 0, :3, :3].flatten().numpy(), g["first"], atol=1e-4)


@pytest.mark.parametrize(
    "name, shape", [("landscape", (20, 40, 60, 3)), ("portrait", (20, 50, 30, 3))]
)
def test_video_clips_match_the_reference(name, shape):
    g = GOLDEN[f"video_{name}"]
    x = D.video_clips(seeded_uint8(shape, seed=13), 8.0)
    assert list(x.shape) == g["shape"] == [15, 3, 2, 224, 224]
    np.testing.assert_allclose([float(c.double().sum()) for c in x], g["clip_sums"], rtol=1e-5)
    np.testing.assert_allclose(x[0, :, 0, 0, 0].numpy(), g["first"], atol=1e-5)


def test_tokenizer_matches_the_reference(tmp_path):
    g = GOLDEN["text"]
    path = tmp_path / "bpe.gz"
    with gzip.open(path, "wt") as f:
        f.write("#version: tiny\n" + "\n".join(g["merges"]) + "\n")
    ids = D.BPETokenizer(path)(g["texts"])
    assert ids.shape == (4, 77)
    assert ids[:, :20].tolist() == g["ids"] and ids[:, -1].tolist() == g["last"]


def test_pipeline_pieces_by_hand():
    # clips: starts at i * max(duration - 2, 0) / n
    assert D.clip_times(3.5, 3) == [(0, 2), (Fraction(1, 2), Fraction(5, 2)), (1, 3)]
    assert D.clip_times(1.0, 5) == [(0, 2)] * 5  # a short video repeats the same span
    # frames [ceil(fps * start), min(ceil(fps * end), F))
    assert D.clip_frame_indices(20, 8.0, Fraction(1, 10), Fraction(21, 10)) == list(range(1, 17))
    assert D.clip_frame_indices(8, 8.0, 0, 2) == list(range(8))
    # short side 224, long side floored; crops at start / ceil-centre / end of the long side
    x = torch.zeros(3, 2, 40, 61)
    assert D.short_side_scale(x).shape == (3, 2, 224, 341)  # floor(61 / 40 * 224) = 341
    y = torch.arange(10.0).repeat(4, 1)[None, None]  # (1, 1, 4, 10), value = column
    crops = D.three_crops(y, size=4)
    assert [int(c[0, 0, 0, 0]) for c in crops] == [0, 3, 6]  # ceil((10 - 4) / 2) = 3
    # silence: log(eps) everywhere, normalised
    silent = D.audio_clips(np.zeros(16_000, np.float32), 16_000)
    floor = (np.log(np.finfo(np.float32).eps) + 4.268) / 9.138
    np.testing.assert_allclose(silent[:, :, :, :98].numpy(), floor, rtol=1e-6)
    np.testing.assert_allclose(silent[:, :, :, 98:].numpy(), 4.268 / 9.138, rtol=1e-6)  # padding
