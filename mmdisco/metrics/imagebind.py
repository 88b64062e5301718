"""ImageBind (Girdhar et al. 2023) vision, audio and text encoders for the IB scores.

Written here with the parameter names of facebookresearch/ImageBind's ``ImageBindModel`` so
that ``imagebind_huge.pth`` loads as it is (only the vision / audio / text entries are used;
key manifest ``tests/fixtures/imagebind_huge_keys.json``, recorded from the reference code).
Pieces, as in the reference: a patch stem (vision: a frame pair -> Conv3d (2, 14, 14); audio:
a 128 x 204 log-mel -> Conv2d 16 / stride 10 + LayerNorm), a class token and learned position
embeddings (text: token + position embeddings, causal mask), pre-LayerNorm transformer blocks
with ``nn.MultiheadAttention`` (audio adds bias_k / bias_v), heads (LayerNorm, class token or
the end-of-text token, Linear) and postprocessors (L2 normalisation; text x a learned logit
scale, audio x 20). Inputs with a clip axis are embedded per clip and the clip embeddings
averaged (not renormalised), as ``ImageBindModel.forward`` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ImageBindConfig:
    out_dim: int = 1024
    vision_dim: int = 1280
    vision_blocks: int = 32
    vision_heads: int = 16
    audio_dim: int = 768
    audio_blocks: int = 12
    audio_heads: int = 12
    text_dim: int = 1024
    text_blocks: int = 24
    text_heads: int = 16
    vocab_size: int = 49408
    context_length: int = 77
    image_size: int = 224
    video_frames: int = 2
    patch: tuple = (2, 14, 14)
    mel_bins: int = 128
    audio_frames: int = 204
    audio_kernel: int = 16
    audio_stride: int = 10


class _SeqFirst(nn.Module):
    """(B, L, D) <-> (L, B, D): the reference runs attention sequence-first."""

    def forward(self, x):
        return x.transpose(0, 1)


class _PadIm2Video(nn.Module):
    """A single frame (or image) is repeated to 2 frames; videos pass through."""

    def forward(self, x):
        x = x.unsqueeze(2) if x.ndim == 4 else x
        return x.repeat(1, 1, 2, 1, 1) if x.shape[2] == 1 else x


class PatchStem(nn.Module):
    """``PatchEmbedGeneric``: proj (one module or a Sequential), optional norm_layer."""

    def __init__(self, proj: nn.Module, norm_layer: nn.Module | None = None):
        super().__init__()
        self.proj, self.norm_layer = proj, norm_layer

    def forward(self, x):
        x = self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)
        return self.norm_layer(x) if self.norm_layer is not None else x


class PosEmbed(nn.Module):
    def __init__(self, num_tokens: int, dim: int):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, dim))


class PatchPreprocessor(nn.Module):
    """``RGBDTPreprocessor`` / ``AudioPreprocessor``: stem, class token, position embedding."""

    def __init__(self, stem: PatchStem, num_patches: int, dim: int):
        super().__init__()
        self.rgbt_stem = stem
        self.pos_embedding_helper = PosEmbed(1 + num_patches, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x):
        tokens = self.rgbt_stem(x)
        pos = self.pos_embedding_helper.pos_embed
        if tokens.shape[1] + 1 != pos.shape[1]:
            raise ValueError(
                f"{tokens.shape[1]} patches, the position embedding has {pos.shape[1] - 1}: "
                "inputs must have the protocol's size (224 x 224 frames, 128 x 204 mels)"
            )
        cls = self.cls_token.expand(len(tokens), -1, -1)
        return torch.cat([cls, tokens], dim=1) + pos


class TextPreprocessor(nn.Module):
    def __init__(self, vocab_size: int, context_length: int, dim: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, context_length, dim))
        mask = torch.full((context_length, context_length), float("-inf")).triu_(1)
        self.register_buffer("mask", mask)  # causal; saved in the checkpoint

    def forward(self, text):
        return self.token_embedding(text) + self.pos_embed


class Mlp(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """``BlockWithMasking``: x + attn(norm_1(x)); x + mlp(norm_2(x)); (L, B, D) layout."""

    def __init__(self, dim: int, heads: int, bias_kv: bool):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, bias=True, add_bias_kv=bias_kv)
        self.norm_1, self.norm_2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim)

    def forward(self, x, attn_mask=None):
        h = self.norm_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.norm_2(x))


class Trunk(nn.Module):
    """``SimpleTransformer``: optional LayerNorm, blocks, back to batch-first."""

    def __init__(self, dim: int, blocks: int, heads: int, pre_ln: bool, bias_kv: bool):
        super().__init__()
        first = nn.LayerNorm(dim, eps=1e-6) if pre_ln else nn.Identity()
        self.pre_transformer_layer = nn.Sequential(first, _SeqFirst())
        self.blocks = nn.Sequential(*[Block(dim, heads, bias_kv) for _ in range(blocks)])
        self.post_transformer_layer = _SeqFirst()

    def forward(self, tokens, attn_mask=None):
        x = self.pre_transformer_layer(tokens)
        for block in self.blocks:
            x = block(x, attn_mask)
        return self.post_transformer_layer(x)


class _Select0(nn.Module):
    def forward(self, x):
        return x[:, 0]


class TextHead(nn.Module):
    """``SelectEOSAndProject``: the end-of-text token (the largest id), then proj."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, out_dim, bias=False))

    def forward(self, x, seq_len):
        return self.proj(x[torch.arange(len(x)), seq_len])


class _Normalize(nn.Module):
    def forward(self, x):
        return F.normalize(x, dim=-1)


class LogitScale(nn.Module):
    """``LearnableLogitScaling``: x * min(exp(log_logit_scale), 100)."""

    def __init__(self, init: float, learnable: bool):
        super().__init__()
        value = torch.tensor(init).log()
        if learnable:
            self.log_logit_scale = nn.Parameter(value)
        else:
            self.register_buffer("log_logit_scale", value)

    def forward(self, x):
        return torch.clip(self.log_logit_scale.exp(), max=100) * x


def _cls_head(dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(dim, eps=1e-6), _Select0(), nn.Linear(dim, out_dim, bias=False)
    )


class ImageBind(nn.Module):
    """Vision, audio and text branches of ImageBind; ``embed(modality, x)``."""

    def __init__(self, config: ImageBindConfig | None = None):
        super().__init__()
        c = self.config = config or ImageBindConfig()
        t, p, q = (
            c.video_frames // c.patch[0],
            c.image_size // c.patch[1],
            c.image_size // c.patch[2],
        )
        vision_stem = PatchStem(
            nn.Sequential(_PadIm2Video(), nn.Conv3d(3, c.vision_dim, c.patch, c.patch, bias=False))
        )
        a_h = (c.mel_bins - c.audio_kernel) // c.audio_stride + 1
        a_w = (c.audio_frames - c.audio_kernel) // c.audio_stride + 1
        audio_stem = PatchStem(
            nn.Conv2d(1, c.audio_dim, c.audio_kernel, c.audio_stride, bias=False),
            nn.LayerNorm(c.audio_dim),
        )
        self.modality_preprocessors = nn.ModuleDict({
            "vision": PatchPreprocessor(vision_stem, t * p * q, c.vision_dim),
            "text": TextPreprocessor(c.vocab_size, c.context_length, c.text_dim),
            "audio": PatchPreprocessor(audio_stem, a_h * a_w, c.audio_dim),
        })  # fmt: skip
        self.modality_trunks = nn.ModuleDict({
            "vision": Trunk(c.vision_dim, c.vision_blocks, c.vision_heads, True, False),
            "text": Trunk(c.text_dim, c.text_blocks, c.text_heads, False, False),
            "audio": Trunk(c.audio_dim, c.audio_blocks, c.audio_heads, False, True),
        })  # fmt: skip
        self.modality_heads = nn.ModuleDict({
            "vision": _cls_head(c.vision_dim, c.out_dim),
            "text": TextHead(c.text_dim, c.out_dim),
            "audio": _cls_head(c.audio_dim, c.out_dim),
        })  # fmt: skip
        self.modality_postprocessors = nn.ModuleDict({
            "vision": _Normalize(),
            "text": nn.Sequential(_Normalize(), LogitScale(1 / 0.07, learnable=True)),
            "audio": nn.Sequential(_Normalize(), LogitScale(20.0, learnable=False)),
        })  # fmt: skip

    def _embed(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        tokens = self.modality_preprocessors[modality](x)
        if modality == "text":
            h = self.modality_trunks["text"](tokens, self.modality_preprocessors["text"].mask)
            h = self.modality_heads["text"](h, x.argmax(dim=-1))
        else:
            h = self.modality_heads[modality](self.modality_trunks[modality](tokens))
        return self.modality_postprocessors[modality](h)

    def embed(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """vision (B, S, 3, 2, 224, 224), audio (B, S, 1, 128, 204): the mean over the S clips
        of each clip's embedding; text (B, 77) token ids. -> (B, out_dim)."""
        clip_ndim = {"vision": 6, "audio": 5}.get(modality)
        if clip_ndim is None:
            return self._embed(modality, x)
        if x.ndim != clip_ndim:
            raise ValueError(f"{modality} input must have {clip_ndim} dims (B, clips, ...)")
        b, s = x.shape[:2]
        return self._embed(modality, x.flatten(0, 1)).unflatten(0, (b, s)).mean(dim=1)


MODALITY_PREFIXES = tuple(
    f"{part}.{m}." for part in ("modality_preprocessors", "modality_trunks", "modality_heads",
                                "modality_postprocessors") for m in ("vision", "text", "audio")
)  # fmt: skip


def select_state(state: dict) -> dict:
    """The vision / text / audio entries of a full ImageBind checkpoint."""
    return {k: v for k, v in state.items() if k.startswith(MODALITY_PREFIXES)}
