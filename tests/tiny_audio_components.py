"""Tiny random AudioLDM / Auffusion checkpoints, written in each model's own folder layout.

The same classes as the real models with tiny sizes; tokenizers are built offline from a
tiny vocab.json + merges.txt (byte-level BPE for RoBERTa / CLAP, CLIP's BPE with ``</w>``).
Both models keep their real mel sizes (64 and 256 mels, hop 160), so 2.0 s clips give the real
latent shapes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, PNDMScheduler, UNet2DConditionModel
from transformers import (
    ClapTextConfig,
    ClapTextModelWithProjection,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    RobertaTokenizer,
    SpeechT5HifiGan,
    SpeechT5HifiGanConfig,
)

from mmdisco.bases.auffusion import ConditionAdapter
from mmdisco.bases.hifigan import HifiGanGenerator

ASCII = [chr(i) for i in range(33, 127)]


def _write_bpe(folder: Path, vocab: dict[str, int], merges: list[str]) -> tuple[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges))
    return str(folder / "vocab.json"), str(folder / "merges.txt")


def roberta_tokenizer(folder: Path, max_length: int = 16) -> RobertaTokenizer:
    """Byte-level BPE over printable ASCII (space is "Ġ"), with one merge, saved to folder."""
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for token in [*ASCII, "Ġ", "Ġa", "<mask>"]:
        vocab.setdefault(token, len(vocab))
    files = _write_bpe(folder, vocab, ["Ġ a"])
    tokenizer = RobertaTokenizer(vocab=files[0], merges=files[1], model_max_length=max_length)
    tokenizer.save_pretrained(folder)
    return tokenizer


def clip_tokenizer(folder: Path, max_length: int = 12) -> CLIPTokenizer:
    """CLIP BPE over printable ASCII with end-of-word tokens, saved to folder."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in ASCII:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    vocab["og</w>"] = len(vocab)
    files = _write_bpe(folder, vocab, ["o g</w>"])
    tokenizer = CLIPTokenizer(vocab=files[0], merges=files[1], model_max_length=max_length)
    tokenizer.save_pretrained(folder)
    return tokenizer


def _seeded(seed: int):
    torch.manual_seed(seed)


# -- AudioLDM -------------------------------------------------------------------------------
CLAP_DIM = 8


def save_tiny_audioldm(root: Path) -> Path:
    """unet/, vae/, text_encoder/, tokenizer/, vocoder/, scheduler/ as in cvssp/audioldm-m-full."""
    root = Path(root)
    _seeded(0)
    UNet2DConditionModel(
        sample_size=16,
        in_channels=8,
        out_channels=8,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=(16, 32),  # AudioLDM: no text tokens, attention over itself
        attention_head_dim=8,
        class_embed_type="simple_projection",
        projection_class_embeddings_input_dim=CLAP_DIM,
        class_embeddings_concat=True,
    ).save_pretrained(root / "unet")
    AutoencoderKL(
        in_channels=1,
        out_channels=1,
        latent_channels=8,
        block_out_channels=(8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        norm_num_groups=8,
        scaling_factor=0.9,
    ).save_pretrained(root / "vae")
    tokenizer = roberta_tokenizer(root / "tokenizer")
    ClapTextModelWithProjection(
        ClapTextConfig(
            vocab_size=len(tokenizer.get_vocab()),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            projection_dim=CLAP_DIM,
            max_position_embeddings=tokenizer.model_max_length + 4,
        )
    ).save_pretrained(root / "text_encoder")
    SpeechT5HifiGan(
        SpeechT5HifiGanConfig(
            model_in_dim=64,
            sampling_rate=16000,
            upsample_initial_channel=32,
            upsample_rates=[5, 4, 2, 2, 2],
            upsample_kernel_sizes=[16, 16, 8, 4, 4],
            resblock_kernel_sizes=[3],
            resblock_dilation_sizes=[[1, 3, 5]],
            normalize_before=False,
        )
    ).save_pretrained(root / "vocoder")
    DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195, clip_sample=False
    ).save_pretrained(root / "scheduler")
    return root


# -- Auffusion ------------------------------------------------------------------------------
TEXT_DIM, CROSS_DIM = 16, 24
VOCODER = {
    "resblock": "1",
    "num_gpus": 0,
    "batch_size": 16,
    "upsample_rates": [5, 4, 2, 2, 2],
    "upsample_kernel_sizes": [11, 8, 4, 4, 4],
    "upsample_initial_channel": 32,
    "resblock_kernel_sizes": [3],
    "resblock_dilation_sizes": [[1, 3, 5]],
    "num_mels": 256,
    "n_fft": 2048,
    "hop_size": 160,
    "win_size": 1024,
    "sampling_rate": 16000,
    "fmin": 0,
    "fmax": 8000,
}


def save_tiny_auffusion(root: Path) -> Path:
    """unet/, vae/, scheduler/, vocoder/{config.json, vocoder.pt}, condition_config.json,
    text_encoder_0/ (CLIP + its tokenizer), condition_adapter_0/{config.json,
    condition_adapter.pt}, as in auffusion/auffusion-full."""
    root = Path(root)
    _seeded(0)
    UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=CROSS_DIM,
        attention_head_dim=8,
    ).save_pretrained(root / "unet")
    AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=8,
        scaling_factor=0.18215,
    ).save_pretrained(root / "vae")
    PNDMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True
    ).save_pretrained(root / "scheduler")
    HifiGanGenerator(VOCODER).save_pretrained(root / "vocoder")
    tokenizer = clip_tokenizer(root / "text_encoder_0")
    CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer.get_vocab()),
            hidden_size=TEXT_DIM,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    ).save_pretrained(root / "text_encoder_0")
    adapter_config = {
        "text_encoder_name": "text_encoder_0",
        "condition_adapter_name": "condition_adapter_0",
        "condition_type": "clip-vit-large-patch14_text",
        "pretrained_model_name_or_path": "openai/clip-vit-large-patch14",
        "condition_max_length": tokenizer.model_max_length,
        "condition_dim": TEXT_DIM,
        "cross_attention_dim": CROSS_DIM,
    }
    adapter = ConditionAdapter(adapter_config)
    with torch.no_grad():  # a non-trivial LayerNorm, so its parameters matter in the tests
        adapter.norm.weight.uniform_(0.5, 1.5)
        adapter.norm.bias.uniform_(-0.5, 0.5)
    adapter.save_pretrained(root / "condition_adapter_0")
    (root / "condition_config.json").write_text(json.dumps([adapter_config], indent=4))
    return root
