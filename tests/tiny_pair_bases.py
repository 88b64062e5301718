"""Pairs of bases for the cache / fake-pair tests: the shipped synthetic bases
(unconditional) and tiny random AudioLDM + AnimateDiff (text-conditional), both taking
1.0 s clips: 8 frames of 32x32 at 8 fps and 16000 samples at 16 kHz."""

from __future__ import annotations

from pathlib import Path

from tiny_audio_components import save_tiny_audioldm
from tiny_components import (
    sd_scheduler,
    tiny_clip_text_model,
    tiny_clip_tokenizer,
    tiny_motion_adapter,
    tiny_unet2d,
    tiny_vae,
)

from mmdisco.bases import IndependentBases
from mmdisco.bases.animatediff import AnimateDiffBase
from mmdisco.bases.audioldm import AudioLDMBase
from mmdisco.bases.synthetic import SyntheticAudioBase, SyntheticVideoBase

REPO = Path(__file__).resolve().parents[1]


def synthetic_bases() -> IndependentBases:
    return IndependentBases(
        audio=SyntheticAudioBase.from_pretrained(REPO / "assets/synthetic/audio"),
        video=SyntheticVideoBase.from_pretrained(REPO / "assets/synthetic/video"),
    )


def text_bases(tmp: Path) -> IndependentBases:
    audio = AudioLDMBase.from_pretrained(save_tiny_audioldm(tmp / "audioldm"), duration=1.0)
    tokenizer = tiny_clip_tokenizer(tmp / "clip")
    video = AnimateDiffBase(
        tiny_unet2d(),
        tiny_motion_adapter(),
        tiny_vae(),
        tiny_clip_text_model(tokenizer),
        tokenizer,
        sd_scheduler(),
        num_frames=8,
        height=32,
        width=32,
    )
    return IndependentBases(audio=audio, video=video.eval().requires_grad_(False))
