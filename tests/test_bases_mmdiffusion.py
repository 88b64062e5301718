"""MM-Diffusion's networks against the official code.

Fixtures were recorded once by running researchmm/MM-Diffusion's own modules
(``mm_diffusion/multimodal_unet.py``, ``image_unet.py``, ``multimodal_script_util.create_model``,
``script_util.image_sr_create_model``, commit 7250222) in a scratch directory
outside this repository (see tests/fixtures/README_mmdiffusion.md):

- ``mmdiffusion_{base,sr}_keys.json``: name -> shape of the full-size networks built with
  MMDisCo's flags (``conf/model/mm_diffusion/{base,sr}.yaml``), on the meta device;
- ``mmdiffusion_tiny_goldens.json``: outputs of tiny configurations whose weights are
  :func:`seeded_state` (defined identically in the recording script), with Python's
  ``random.randint`` replaced by a seeded draw whose shifts are stored.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmdisco.bases.mmdiffusion import (
    build_official,
    convert_mmdiffusion_checkpoint,
    load_official_checkpoint,
)
from mmdisco.bases.mmdiffusion_sr import SuperResUNet, SuperResUNetConfig
from mmdisco.bases.mmdiffusion_unet import CoupledUNet, CoupledUNetConfig

FIXTURES = Path(__file__).parent / "fixtures"
GOLDENS = json.loads((FIXTURES / "mmdiffusion_tiny_goldens.json").read_text())


def seeded_state(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Every tensor ~ 0.2 N(0, 1) (norm weights 1 + that), keys sorted, one generator."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key in sorted(model.state_dict()):
        shape = model.state_dict()[key].shape
        value = 0.2 * torch.randn(shape, generator=g, dtype=torch.float64)
        if "norm" in key.lower() and key.endswith("weight"):
            value = value + 1.0
        state[key] = value.float()
    return state


def coupled_config(ref: dict) -> CoupledUNetConfig:
    """The reference's ``MultimodalUNet`` keyword arguments as our config."""
    return CoupledUNetConfig(
        video_size=tuple(ref["video_size"]),
        audio_size=tuple(ref["audio_size"]),
        model_channels=ref["model_channels"],
        num_res_blocks=ref["num_res_blocks"],
        channel_mult=tuple(ref["channel_mult"]),
        num_heads=ref["num_heads"],
        num_head_channels=ref["num_head_channels"],
        cross_attention_resolutions=tuple(ref["cross_attention_resolutions"]),
        cross_attention_windows=tuple(ref["cross_attention_windows"]),
        cross_attention_shift=ref["cross_attention_shift"],
        video_attention_resolutions=tuple(ref["video_attention_resolutions"]),
        audio_attention_resolutions=tuple(ref["audio_attention_resolutions"]),
        learn_sigma=ref["video_out_channels"] == 2 * ref["video_size"][1],
    )


def assert_matches(out: torch.Tensor, ref: dict, tol: float = 1e-5):
    flat = out.detach().double().flatten()
    assert list(out.shape) == ref["shape"]
    scale = max(ref["abs_mean"], 1e-3)
    step = max(1, flat.numel() // 64)
    torch.testing.assert_close(
        flat[:32], torch.tensor(ref["head"]).double(), atol=tol * scale, rtol=tol
    )
    strided = flat[::step][:64]
    torch.testing.assert_close(
        strided, torch.tensor(ref["strided"]).double(), atol=tol * scale, rtol=tol
    )
    assert abs(flat.mean().item() - ref["mean"]) <= tol * scale
    assert abs(flat.std().item() - ref["std"]) <= tol * scale


# -- full-size names and shapes --------------------------------------------------------------
@pytest.mark.parametrize("name", ["base", "sr"])
def test_official_names_and_shapes(name):
    expected = json.loads((FIXTURES / f"mmdiffusion_{name}_keys.json").read_text())
    with torch.device("meta"):
        model = build_official(name)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert (
        sorted(set(expected) - set(ours))[:5] == [] and sorted(set(ours) - set(expected))[:5] == []
    )
    assert ours == expected


@pytest.mark.parametrize("name", ["base", "sr"])
def test_official_state_dict_loads_strictly(name):
    """A state dict with the official names (here: a DDP-prefixed, half-precision one) loads."""
    with torch.device("meta"):
        model = build_official(name)
    expected = json.loads((FIXTURES / f"mmdiffusion_{name}_keys.json").read_text())
    fake = {
        f"module.{k}": torch.empty(s, device="meta", dtype=torch.float16)
        for k, s in expected.items()
    }
    converted = convert_mmdiffusion_checkpoint(fake)
    assert all(v.dtype == torch.float32 for v in converted.values())
    model.load_state_dict(converted, strict=True, assign=True)


def test_middle_block_depends_on_window_list():
    """Only windows exactly (1, 4, 8) put a full-window cross attention in the middle block."""
    small = dict(
        video_size=(8, 3, 16, 16),
        audio_size=(1, 512),
        model_channels=32,
        num_res_blocks=1,
        channel_mult=(1, 1, 1, 1),
        num_heads=2,
        num_head_channels=16,
    )
    with torch.device("meta"):
        keys_148 = CoupledUNet(CoupledUNetConfig(**small)).state_dict()
        keys_124 = CoupledUNet(
            CoupledUNetConfig(**small, cross_attention_windows=(1, 2, 4))
        ).state_dict()
    assert "middle_blocks.1.v_qkv.weight" in keys_148
    assert "middle_blocks.2.video_in_layers.0.GroupNorm.weight" in keys_148
    assert "middle_blocks.1.video_in_layers.0.GroupNorm.weight" in keys_124
    assert not any(k.startswith("middle_blocks.2") for k in keys_124)


# -- tiny goldens from the reference --------------------------------------------------------
@pytest.mark.parametrize("variant", sorted(GOLDENS["base"]))
def test_coupled_unet_matches_reference(variant):
    ref = GOLDENS["base"][variant]
    model = CoupledUNet(coupled_config(ref["config"])).eval()
    model.load_state_dict(seeded_state(model, ref["weights_seed"]), strict=True)
    assert model.num_shift_draws() == len(ref["shifts"])
    g = torch.Generator().manual_seed(ref["input_seed"])
    video = torch.randn(2, *ref["config"]["video_size"], generator=g)
    audio = torch.randn(2, *ref["config"]["audio_size"], generator=g)
    with torch.no_grad():
        v, a = model(video, audio, torch.tensor(ref["timesteps"]), shifts=ref["shifts"])
    assert_matches(v, ref["video"])
    assert_matches(a, ref["audio"])


def test_cross_attention_shift_changes_output_and_generator_reproduces():
    ref = GOLDENS["base"]["a"]
    model = CoupledUNet(coupled_config(ref["config"])).eval()
    model.load_state_dict(seeded_state(model, ref["weights_seed"]))
    g = torch.Generator().manual_seed(0)
    video, audio = torch.randn(1, 8, 3, 16, 16, generator=g), torch.randn(1, 1, 512, generator=g)
    t = torch.tensor([300])
    with torch.no_grad():
        zero = model(video, audio, t, shifts=[0] * model.num_shift_draws())[0]
        other = model(video, audio, t, shifts=ref["shifts"])[0]
        run1 = model(video, audio, t, generator=torch.Generator().manual_seed(5))[0]
        run2 = model(video, audio, t, generator=torch.Generator().manual_seed(5))[0]
    assert not torch.allclose(zero, other)
    torch.testing.assert_close(run1, run2, rtol=0, atol=0)
    with pytest.raises(ValueError, match="ran out"):
        model(video, audio, t, shifts=[0])


def test_super_resolution_unet_matches_reference():
    ref = GOLDENS["sr"]["a"]
    c = ref["config"]
    cfg = SuperResUNetConfig(
        large_size=c["image_size"],
        small_size=c["image_size"] // 4,
        in_channels=c["in_channels"],
        model_channels=c["model_channels"],
        num_res_blocks=c["num_res_blocks"],
        channel_mult=tuple(c["channel_mult"]),
        attention_resolutions=tuple(c["attention_resolutions"]),
        num_heads=c["num_heads"],
        learn_sigma=c["out_channels"] == 2 * c["in_channels"],
    )
    model = SuperResUNet(cfg).eval()
    model.load_state_dict(seeded_state(model, ref["weights_seed"]), strict=True)
    g = torch.Generator().manual_seed(ref["input_seed"])
    x = torch.randn(2, 3, 32, 32, generator=g)
    low = torch.randn(2, 3, 8, 8, generator=g)
    with torch.no_grad():
        out = model(x, torch.tensor(ref["timesteps"]), low)
    assert_matches(out, ref["out"])


def test_load_official_checkpoint_converts_once_to_safetensors(tmp_path):
    model = SuperResUNet(
        SuperResUNetConfig(
            large_size=16,
            small_size=4,
            model_channels=32,
            num_res_blocks=1,
            channel_mult=(1, 1),
            attention_resolutions=(2,),
        )
    )
    state = {f"module.{k}": v.half() for k, v in seeded_state(model, 0).items()}
    torch.save(state, tmp_path / "tiny_SR.pt")
    loaded = load_official_checkpoint(tmp_path / "tiny_SR.pt")
    assert (tmp_path / "tiny_SR.safetensors").exists()
    model.load_state_dict(loaded, strict=True)
    (tmp_path / "tiny_SR.pt").unlink()  # the second call reads the safetensors copy
    again = load_official_checkpoint(tmp_path / "tiny_SR.pt")
    assert all(torch.equal(loaded[k], again[k]) for k in loaded)
    with pytest.raises(FileNotFoundError, match="MM-Diffusion"):
        load_official_checkpoint(tmp_path / "missing.pt")
