"""The two out-of-domain pairs end to end, through their Hydra configs, with tiny components.

``base=audioldm_animatediff`` and ``base=auffusion_videocrafter2`` are composed exactly as
``scripts/train.py`` composes them (only the ``pretrained`` paths and the sizes overridden),
each wrapper is loaded from a tiny directory written by ``save_pretrained``, the pair's own
discriminator config (shrunk) guides two DPM-Solver++ steps, and the pair is written as an
mp4 with sound and read back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tiny_audio_components import save_tiny_audioldm, save_tiny_auffusion
from tiny_components import (
    sd_scheduler,
    tiny_clip_text_model,
    tiny_clip_tokenizer,
    tiny_motion_adapter,
    tiny_unet2d,
    tiny_vae,
    tiny_videocrafter_unet,
)

from mmdisco.bases.animatediff import AnimateDiffBase
from mmdisco.bases.videocrafter import VideoCrafter2Base, videocrafter2_scheduler
from mmdisco.media import read_video_with_audio, write_video_with_audio
from mmdisco.runs import build_guidance
from mmdisco.sampling import build_sampler

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")
SIZE = dict(num_frames=16, height=32, width=32)  # 16 frames at 8 fps = the 2.0 s of audio
SMALL_D = dict(channels=8, channel_mult=[1, 2], blocks_per_level=1, norm_groups=4, time_dim=16)


def save_tiny_animatediff(root: Path) -> Path:
    tokenizer = tiny_clip_tokenizer(root / "vocab")
    base = AnimateDiffBase(
        tiny_unet2d(), tiny_motion_adapter(max_frames=16), tiny_vae(),
        tiny_clip_text_model(tokenizer), tokenizer, sd_scheduler(), **SIZE,
    )  # fmt: skip
    base.save_pretrained(root / "model")
    return root / "model"


def save_tiny_videocrafter2(root: Path) -> Path:
    tokenizer = tiny_clip_tokenizer(root / "vocab")
    base = VideoCrafter2Base(
        tiny_videocrafter_unet(), tiny_vae(), tiny_clip_text_model(tokenizer, layers=3),
        tokenizer, videocrafter2_scheduler(), **SIZE,
    )  # fmt: skip
    base.save_pretrained(root / "model")
    return root / "model"


PAIRS = {
    "audioldm_animatediff": (save_tiny_audioldm, save_tiny_animatediff, []),
    "auffusion_videocrafter2": (save_tiny_auffusion, save_tiny_videocrafter2,
                                ["base.video.text_layer=2"]),
}  # fmt: skip


def compose_pair(pair: str, audio_dir: Path, video_dir: Path, extra: list[str]):
    overrides = [
        f"base={pair}",
        f"base.audio.pretrained={audio_dir}",
        f"base.video.pretrained={video_dir}",
        *(f"base.video.{k}={v}" for k, v in SIZE.items()),
        *extra,
    ]
    if pair == "audioldm_animatediff":  # the tiny directory holds the adapter and the VAE
        overrides += ["base.video.motion_adapter=null", "base.video.vae=null"]
    with initialize_config_dir(CONFIGS, version_base="1.3"):
        return compose("train", overrides)


@pytest.mark.parametrize("pair", list(PAIRS))
def test_pair_config_samples_two_guided_steps_and_writes_an_mp4(pair, tmp_path):
    save_audio, save_video, extra = PAIRS[pair]
    audio_dir = save_audio(tmp_path / "audio")
    video_dir = save_video(tmp_path / "video")
    cfg = compose_pair(pair, audio_dir, video_dir, extra)
    assert cfg.sampler.solver == "dpmpp"
    assert cfg.discriminator._target_.endswith("TwoStreamDiscriminator")
    bases = instantiate(cfg.base)
    conds = {m: bases[m].encode_prompt(["a dog barks"]) for m in ("audio", "video")}
    # the pair's discriminator config, shrunk; its channels must fit the wrappers' latents
    text_dims = {f"{m}_text_dim": conds[m].pooled.shape[-1] for m in ("audio", "video")}
    torch.manual_seed(0)
    disc = instantiate(cfg.discriminator, **SMALL_D, **text_dims).eval()
    with torch.no_grad():  # zero-initialised output layers would make the guidance vanish
        for p in disc.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert cfg.guidance.joint_scales == "auto"  # resolved from a trained run; a number here
    assert cfg.discriminator.fusion.kind == "transformer"  # a head that can couple (issue 10)
    guided_model = build_guidance(bases, disc, OmegaConf.merge(cfg.guidance, {"joint_scales": 1.0}))
    sampler = build_sampler(guided_model, cfg.sampler, num_steps=2)
    unguided_sampler = build_sampler(bases, cfg.sampler, num_steps=2)
    shapes = bases.sample_shapes(1)
    guided = sampler.sample(1, conds=conds, generator=torch.Generator().manual_seed(0))
    unguided = unguided_sampler.sample(1, conds=conds, generator=torch.Generator().manual_seed(0))
    for m in ("audio", "video"):
        assert guided[m].shape == shapes[m]
        assert torch.isfinite(guided[m]).all()
        assert not torch.allclose(guided[m], unguided[m]), f"{m}: the guidance did nothing"

    wave = bases["audio"].decode(guided["audio"])[0]
    frames = bases["video"].decode(guided["video"])[0]
    assert wave.shape == (int(2.0 * bases["audio"].sample_rate),)
    assert frames.shape == (SIZE["num_frames"], SIZE["height"], SIZE["width"], 3)
    path = write_video_with_audio(
        tmp_path / "pair.mp4", frames.numpy(), bases["video"].fps, wave.numpy(),
        bases["audio"].sample_rate,
    )  # fmt: skip
    got_frames, fps, got_audio, sr = read_video_with_audio(path, mono=True)
    assert got_frames.shape == frames.shape and fps == bases["video"].fps
    assert sr == bases["audio"].sample_rate
    assert abs(len(got_audio) - len(wave)) <= sr // 100
    assert np.isfinite(got_audio).all()
