"""I3D (VideoGPT / MM-Diffusion FVD): the checkpoint's keys, golden logits of the reference
code on seeded weights, and the protocol's preprocessing by hand."""

import json

import numpy as np
import pytest
import torch
from seeded_weights import FIXTURES, load_manifest, seeded_state_dict, seeded_uint8

from mmdisco.metrics.i3d import InceptionI3d, preprocess_videogpt
from mmdisco.metrics.weights import load_into


def test_parameter_names_and_shapes_match_the_checkpoint_manifest():
    ours = {k: list(v.shape) for k, v in InceptionI3d().state_dict().items()}
    assert ours == load_manifest("i3d400_keys.json")


def test_logits_match_the_reference_on_seeded_weights():
    golden = json.loads((FIXTURES / "i3d400_golden.json").read_text())
    net = InceptionI3d().eval()
    state = seeded_state_dict(load_manifest("i3d400_keys.json"), seed=0)
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    load_into(net, state, "seeded i3d400")  # an old checkpoint has no num_batches_tracked
    x = preprocess_videogpt(seeded_uint8((2, 17, 40, 52, 3), seed=1))
    assert x.shape == (2, 3, 16, 224, 224)
    assert float(x.double().sum()) == pytest.approx(golden["input_sum"], rel=1e-6)
    assert float(x.double().abs().sum()) == pytest.approx(golden["input_abs_sum"], rel=1e-6)
    with torch.no_grad():
        logits = net(x)
    np.testing.assert_allclose(logits.numpy(), golden["logits"], rtol=1e-4, atol=1e-4)


def test_preprocessing_by_hand():
    # one 2 x 3 frame, resolution 4: short side 2 -> 4 (scale 2), long side ceil(3 * 2) = 6,
    # bilinear (align_corners=False) then centre crop columns 1..4
    a, b, c = 0.0, 255.0, 51.0
    frame = np.array([[a, b, c], [a, b, c]], np.uint8)[None, None, :, :, None].repeat(3, -1)
    x = preprocess_videogpt(frame, num_frames=1, resolution=4)
    assert x.shape == (1, 3, 1, 4, 4)
    row = np.array(
        [0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b, 0.75 * b + 0.25 * c, 0.25 * b + 0.75 * c]
    )
    np.testing.assert_allclose(
        x[0, 0, 0].numpy(), np.tile((row / 255 - 0.5) * 2, (4, 1)), atol=1e-6
    )
    # frames after num_frames are dropped; too few frames is an error, not padding
    video = np.zeros((1, 5, 8, 8, 3), np.uint8)
    video[:, 4] = 255
    assert preprocess_videogpt(video, num_frames=4, resolution=8).max() == -1.0
    with pytest.raises(ValueError, match="needs 6 frames"):
        preprocess_videogpt(video, num_frames=6, resolution=8)
