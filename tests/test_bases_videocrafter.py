"""VideoCrafter2Base from tiny random components, and the original-checkpoint converter."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_components import (
    random_frames,
    tiny_clip_text_model,
    tiny_clip_tokenizer,
    tiny_vae,
    tiny_videocrafter_unet,
)

from mmdisco.bases.videocrafter import (
    VideoCrafter2Base,
    VideoCrafter2UNet,
    convert_videocrafter2_checkpoint,
    videocrafter2_scheduler,
)

FIXTURE = Path(__file__).parent / "fixtures" / "videocrafter2_keys.json"
SIZE = dict(num_frames=4, height=32, width=32)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A tiny VideoCrafter2 directory written by save_pretrained."""
    tmp = tmp_path_factory.mktemp("vc2")
    tokenizer = tiny_clip_tokenizer(tmp / "vocab")
    base = VideoCrafter2Base(
        tiny_videocrafter_unet(),
        tiny_vae(),
        tiny_clip_text_model(tokenizer, layers=3),
        tokenizer,
        videocrafter2_scheduler(),
        **SIZE,
    )
    base.save_pretrained(tmp / "model")
    return tmp / "model"


@pytest.fixture(scope="module")
def base(saved) -> VideoCrafter2Base:
    return VideoCrafter2Base.from_pretrained(saved, text_layer=2, **SIZE)


def test_from_pretrained_round_trip(saved, base):
    assert base.unet.config.attention_head_dim == 16 and base.unet.fps_embedding is not None
    reference = VideoCrafter2UNet.from_pretrained(saved / "unet")
    for k, v in reference.state_dict().items():
        torch.testing.assert_close(base.unet.state_dict()[k], v, rtol=0, atol=0)
    assert base.text_layer == 2 and base.fps == 8 and base.guidance_scale == 8.0
    assert not any(p.requires_grad for p in base.parameters())


def test_encode_decode_shapes(base):
    frames = random_frames(2, 4, 40, 48)  # not square: resized to cover 32x32, centre-cropped
    z = base.encode(frames)
    assert tuple(z.shape) == base.sample_shape(2) == (2, 4, 4, 16, 16)
    video = base.decode(z)
    assert video.dtype == torch.uint8 and tuple(video.shape) == (2, 4, 32, 32, 3)


def test_cfg_equals_two_separate_calls(base):
    cond = base.encode_prompt(["a cat", "dog"])
    assert cond.cond.shape == (2, 16, 32) and cond.uncond.shape == (1, 16, 32)
    assert cond.pooled.shape == (2, 32) and cond.guidance_scale == 8.0
    g = torch.Generator().manual_seed(0)
    x = torch.randn(base.sample_shape(2), generator=g)
    t = torch.tensor([10, 700])
    eps = base.predict_noise(x, t, cond)
    eps_c = base.model_output(x, t, cond.cond)
    eps_u = base.model_output(x, t, cond.uncond.expand(2, -1, -1))
    gap = 8.0 * (eps_c - eps_u)
    assert gap.abs().max() > 0.05  # the text reaches the output, far above float32 noise
    torch.testing.assert_close(eps, eps_u + gap, rtol=0, atol=2e-4)


def test_fps_condition_changes_output_and_leaves_no_hook(base):
    x = torch.randn(base.sample_shape(1), generator=torch.Generator().manual_seed(1))
    emb = base.encode_prompt(["a cat"]).cond
    out = {}
    for fps in (8, 24):
        out[fps] = base.unet(x, torch.tensor([500]), emb, fps=fps).sample
    assert (out[8] - out[24]).abs().max() > 1e-4
    assert not base.unet.time_embedding._forward_hooks


def test_schedule_matches_original_formula(base):
    """lvdm/models/ddpm3d.py: LDM "linear" betas (linear in sqrt), q_sample scaled by
    scale_arr = [linspace(1, 0.7, 400), full(1000, 0.7)] (fix_scale_bug=False)."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas)
    scale_arr = np.concatenate([np.linspace(1.0, 0.7, 400), np.full(1000, 0.7)])
    alpha = np.sqrt(alphas_cumprod) * scale_arr[:1000]
    sigma = np.sqrt(1.0 - alphas_cumprod)
    np.testing.assert_allclose(base.schedule.alpha.numpy(), alpha, rtol=1e-12)
    np.testing.assert_allclose(base.schedule.sigma.numpy(), sigma, rtol=1e-12)
    assert base.prediction_type == "epsilon" and not base.schedule.is_vp
    assert base.schedule.alpha[399] / np.sqrt(alphas_cumprod[399]) == pytest.approx(0.7)


def test_missing_and_incomplete_dirs_list_expected_files(saved, tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        VideoCrafter2Base.from_pretrained(tmp_path / "nowhere")
    msg = str(err.value)
    for f in ("unet/config.json", "vae/config.json", "text_encoder/config.json"):
        assert f in msg
    assert "scheduler/scheduler_config.json" in msg and "VideoCrafter/VideoCrafter2" in msg
    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="lacks unet/diffusion_pytorch_model"):
        VideoCrafter2Base.from_pretrained(broken)


# -- the converter ---------------------------------------------------------------------------
def _unet_for(cfg: dict, **kwargs) -> VideoCrafter2UNet:
    """The diffusers model for an original UNetModel config (all attention levels but the
    last, as VideoCrafter2's attention_resolutions [4, 2, 1] with 4 levels)."""
    n = len(cfg["channel_mult"])
    return VideoCrafter2UNet(
        down_block_types=("CrossAttnDownBlock3D",) * (n - 1) + ("DownBlock3D",),
        up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * (n - 1),
        block_out_channels=tuple(cfg["model_channels"] * m for m in cfg["channel_mult"]),
        layers_per_block=cfg["num_res_blocks"],
        cross_attention_dim=cfg["context_dim"],
        attention_head_dim=cfg["num_head_channels"],
        **kwargs,
    )


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads(FIXTURE.read_text())


def test_converter_matches_original_tiny_unet_numerically(record):
    """Keys, shapes and the output of the ORIGINAL tiny UNetModel (recorded by
    scripts/record_videocrafter2_keys.py) under the same seeded weights and inputs."""
    ref = record["tiny_reference"]
    g = torch.Generator().manual_seed(ref["seed"])
    shapes = record["tiny"]
    original = {
        f"model.diffusion_model.{k}": torch.randn(shapes[k], generator=g) * ref["weight_std"]
        for k in sorted(shapes)
    }
    original["first_stage_model.encoder.conv_in.weight"] = torch.zeros(1)  # ignored
    converted = convert_videocrafter2_checkpoint(original)
    unet = _unet_for(record["tiny_config"]).eval()
    unet.load_state_dict(converted, strict=True)
    assert len(converted) == len(shapes)
    g = torch.Generator().manual_seed(ref["seed"] + 1)
    x = torch.randn(ref["shape"], generator=g)
    context = torch.randn(1, ref["context_len"], record["tiny_config"]["context_dim"], generator=g)
    with torch.no_grad():
        y = unet(x, torch.tensor([ref["timestep"]]), context, fps=ref["fps"]).sample
    expected = torch.tensor(ref["output"]).reshape(y.shape)
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-4)


def test_converter_full_size_shapes(record):
    """Every full-size original tensor lands on a parameter of the same shape, none left."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        unet = _unet_for(record["full_config"])
    target = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    fake = {k: torch.empty(s, device="meta") for k, s in record["full"].items()}
    converted = convert_videocrafter2_checkpoint(fake)
    assert {k: tuple(v.shape) for k, v in converted.items()} == target
    assert len(target) == 1484
