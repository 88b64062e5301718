"""Tiny random components of the classes the real latent video bases use (no network).

Each builder makes a few-thousand-parameter model from config, seeded, so tests go through
the same code (and ``save_pretrained`` / ``from_pretrained``) as the real weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, MotionAdapter, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

TEXT_DIM = 32
MAX_TOKENS = 16


def _byte_chars() -> list[str]:
    """The 256 printable characters byte-level BPE uses for bytes (GPT-2's table)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def tiny_clip_tokenizer(directory: Path, max_length: int = MAX_TOKENS) -> CLIPTokenizer:
    """A CLIP BPE tokenizer over single characters plus a few merges, written to directory."""
    directory.mkdir(parents=True, exist_ok=True)
    tokens = ["<|startoftext|>", "<|endoftext|>"]
    chars = _byte_chars()
    tokens += chars + [c + "</w>" for c in chars]
    merges = [("a", "b"), ("o", "g</w>"), ("c", "a"), ("ca", "t</w>")]
    tokens += ["ab", "og</w>", "ca", "cat</w>"]
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (directory / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    )
    return CLIPTokenizer(
        str(directory / "vocab.json"),
        str(directory / "merges.txt"),
        model_max_length=max_length,
        pad_token="<|endoftext|>",
    )


def tiny_clip_text_model(tokenizer: CLIPTokenizer, layers: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_DIM,
        intermediate_size=48,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=TEXT_DIM,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config).eval()


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    """Two levels: 2x downsampling, 4 latent channels, SD's scaling factor."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
        scaling_factor=0.18215,
    ).eval()


def sd_scheduler(**overrides) -> DDPMScheduler:
    """SD-style scheduler config (the betas SD-1.5 / SD-2.1 / VideoCrafter2 use)."""
    kwargs = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return DDPMScheduler(**{**kwargs, **overrides})


def tiny_unet2d(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=32,
    ).eval()


def tiny_motion_adapter(seed: int = 0, max_frames: int = 8) -> MotionAdapter:
    torch.manual_seed(seed)
    return MotionAdapter(
        block_out_channels=(32, 64),
        motion_layers_per_block=1,
        motion_num_attention_heads=2,
        motion_norm_num_groups=32,
        motion_max_seq_length=max_frames,
        use_motion_mid_block=True,
    ).eval()


def tiny_videocrafter_unet(seed: int = 0):
    from mmdisco.bases.videocrafter import VideoCrafter2UNet

    torch.manual_seed(seed)
    unet = VideoCrafter2UNet(
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=16,
    ).eval()
    with torch.no_grad():  # zero-initialised output layers would hide the fps / text paths
        for p in unet.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    return unet


def random_frames(batch: int, frames: int, height: int, width: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, frames, height, width, 3), generator=g, dtype=torch.uint8)
