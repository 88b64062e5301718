"""ImageBind (IB scores): the checkpoint's keys, and golden embeddings of the reference code on
a tiny configuration with seeded weights."""

import json

import numpy as np
import torch
from seeded_weights import FIXTURES, load_manifest, seeded_state_dict

from mmdisco.metrics.imagebind import ImageBind, ImageBindConfig, select_state
from mmdisco.metrics.weights import load_into

TINY = ImageBindConfig(
    out_dim=16, vision_dim=32, vision_blocks=2, vision_heads=2, audio_dim=24, audio_blocks=2,
    audio_heads=2, text_dim=16, text_blocks=2, text_heads=2,
)  # fmt: skip
CONSTANTS = ("modality_preprocessors.text.mask", "modality_postprocessors.audio.1.log_logit_scale")


def test_parameter_names_and_shapes_match_the_checkpoint_manifest():
    with torch.device("meta"):
        ours = {k: list(v.shape) for k, v in ImageBind().state_dict().items()}
    assert ours == load_manifest("imagebind_huge_keys.json")
    assert select_state({"modality_trunks.depth.x": 0, "modality_heads.audio.0.weight": 1}) == {
        "modality_heads.audio.0.weight": 1
    }


def test_embeddings_match_the_reference_on_seeded_weights():
    golden = json.loads((FIXTURES / "imagebind_tiny_golden.json").read_text())
    net = ImageBind(TINY).eval()
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == golden["keys"]
    manifest = {k: s for k, s in golden["keys"].items() if k not in CONSTANTS}
    state = seeded_state_dict(manifest, seed=0)
    state["modality_postprocessors.text.1.log_logit_scale"] = torch.tensor(2.0)
    state.update({k: net.state_dict()[k] for k in CONSTANTS})
    load_into(net, state, "seeded tiny imagebind")
    g = torch.Generator().manual_seed(7)
    vision = torch.randn(2, 2, 3, 2, 224, 224, generator=g)
    audio = torch.randn(2, 3, 1, 128, 204, generator=g)
    text = torch.zeros(2, 77, dtype=torch.long)
    text[:, :5] = torch.tensor(golden["text"])
    with torch.no_grad():
        out = {
            m: net.embed(m, x) for m, x in [("vision", vision), ("audio", audio), ("text", text)]
        }
    for m, expected in golden["outputs"].items():
        np.testing.assert_allclose(out[m].numpy(), expected, rtol=1e-4, atol=1e-5, err_msg=m)
