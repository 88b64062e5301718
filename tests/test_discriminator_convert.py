"""The released MMDisCo checkpoints load into our configs (names/shapes recorded from the
official code in tests/fixtures), and tiny official models compute what ours compute."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mmdisco.discriminator.convert import (
    RELEASED_CONFIGS,
    convert_key,
    convert_official_state_dict,
    load_official,
)
from mmdisco.discriminator.two_stream import TwoStreamDiscriminator

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
KEYS = json.loads((FIXTURES / "official_discriminator_keys.json").read_text())
REFERENCE = json.loads((FIXTURES / "official_discriminator_reference.json").read_text())
RELEASED = sorted(k for k in KEYS if k != "_about")
TINY = sorted(k for k in REFERENCE if k != "_about")


def build(config: str, device: str = "meta") -> TwoStreamDiscriminator:
    with torch.device(device):
        return instantiate(OmegaConf.load(ROOT / "configs" / "discriminator" / f"{config}.yaml"))


def test_every_released_checkpoint_has_a_config():
    assert sorted(RELEASED_CONFIGS) == RELEASED


@pytest.mark.parametrize("checkpoint", RELEASED)
def test_official_keys_map_onto_our_modules_with_equal_shapes(checkpoint):
    official = KEYS[checkpoint]["shapes"]
    model = build(RELEASED_CONFIGS[checkpoint])
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    converted = {convert_key(k): tuple(s) for k, s in official.items()}
    assert len(converted) == len(official)  # no two official keys collide
    assert converted == ours
    assert sum(p.numel() for p in model.parameters()) == KEYS[checkpoint]["num_params"]


@pytest.mark.parametrize("checkpoint", RELEASED)
def test_released_state_dict_loads_strict(checkpoint):
    state = {k: torch.empty(s, device="meta") for k, s in KEYS[checkpoint]["shapes"].items()}
    model = build(RELEASED_CONFIGS[checkpoint])
    model.load_state_dict(convert_official_state_dict(state), strict=True, assign=True)


def test_unknown_or_missing_keys_fail():
    with pytest.raises(KeyError, match="no rule"):
        convert_key("feature_extractor.output_blocks.0.weight")
    with pytest.raises(KeyError):
        convert_key("fusion_model.fm.attn_layers.layers.1.1.to_q.weight")  # q in a FF layer
    shapes = dict(KEYS["mmdiffusion_landscape.pt"]["shapes"])
    shapes.pop("last_linear.bias")
    state = {k: torch.zeros(s) for k, s in shapes.items()}
    with pytest.raises(RuntimeError, match="Missing key"):
        load_official(build("released_mmdiffusion", "cpu"), state)


# --- tiny official models: same numbers (fixture recipe in its "_about") ---


def official_weight(key: str, shape: list[int]) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    w = torch.randn(shape, generator=g)
    if len(shape) >= 2:
        return w / torch.tensor(shape[1:]).prod().sqrt()
    return 1 + 0.1 * w if key.endswith("weight") else 0.1 * w


def reference_inputs(spec: dict) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    names = ("audio", "video", "audio_text", "video_text")
    x = {k: torch.randn(spec[k], generator=g) for k in names if k in spec}
    x["t"] = torch.tensor(spec["t"])
    return x


def projections(grad: torch.Tensor, seed: int) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    return [float((grad * torch.randn(grad.shape, generator=g)).sum()) for _ in range(4)]


@pytest.mark.parametrize("name", TINY)
def test_converted_tiny_official_model_matches_official_outputs(name, tmp_path):
    ref = REFERENCE[name]
    state = {k: official_weight(k, s) for k, s in ref["shapes"].items()}
    torch.save(state, tmp_path / "official.pt")
    model = load_official(TwoStreamDiscriminator(**ref["ours"]), tmp_path / "official.pt")
    x = reference_inputs(ref["inputs"])
    audio = x["audio"].clone().requires_grad_(True)
    video = x["video"].clone().requires_grad_(True)
    cond = {"audio": x["audio_text"], "video": x["video_text"]} if "audio_text" in x else None
    logit = model(audio, video, x["t"], cond)
    g_audio, g_video = torch.autograd.grad(logit.sum(), (audio, video))
    close = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logit, torch.tensor(ref["logit"]), **close)
    for grad, expected, seed in ((g_audio, ref["grad_audio"], 1), (g_video, ref["grad_video"], 2)):
        torch.testing.assert_close(grad.norm(), torch.tensor(expected["norm"]), **close)
        torch.testing.assert_close(
            torch.tensor(projections(grad, seed)), torch.tensor(expected["proj"]), **close
        )
    model.logit_eps = 1e-5
    with torch.no_grad():
        saturated = model(audio, video, x["t"], cond)
    torch.testing.assert_close(saturated, torch.tensor(ref["logit_exp"]), **close)
