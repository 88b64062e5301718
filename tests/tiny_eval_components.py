"""A tiny random LAION-CLAP folder (ClapModel + ClapProcessor), built offline."""

from __future__ import annotations

from pathlib import Path

import torch
from tiny_audio_components import roberta_tokenizer
from transformers import (
    ClapAudioConfig,
    ClapConfig,
    ClapFeatureExtractor,
    ClapModel,
    ClapProcessor,
    ClapTextConfig,
)


def save_tiny_clap(folder: Path, max_length_s: int = 2) -> Path:
    """The real extractor settings (48 kHz, 64 mels, hop 480, rand_trunc / repeatpad) with a
    2 s window, a 2-stage HTSAT and a 1-layer RoBERTa; saved like laion/clap-htsat-unfused."""
    folder = Path(folder)
    torch.manual_seed(0)
    audio = ClapAudioConfig(
        window_size=8, num_mel_bins=64, spec_size=256, patch_size=4, patch_stride=(4, 4),
        hidden_size=16, patch_embeds_hidden_size=8, depths=[1, 1], num_attention_heads=[2, 2],
        projection_dim=8, enable_fusion=False,
    )  # fmt: skip
    tokenizer = roberta_tokenizer(folder / "_tokenizer", max_length=16)
    text = ClapTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=40, projection_dim=8,
    )  # fmt: skip
    config = ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=8)
    ClapModel(config).save_pretrained(folder)
    extractor = ClapFeatureExtractor(
        feature_size=64, sampling_rate=48_000, hop_length=480, max_length_s=max_length_s,
        fft_window_size=1024, truncation="rand_trunc", padding="repeatpad",
    )  # fmt: skip
    ClapProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)
    return folder
