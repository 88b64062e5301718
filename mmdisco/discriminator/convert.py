"""Load the released MMDisCo discriminators (hub: AkioHayakawa/MMDisCo) into TwoStreamDiscriminator.

The official checkpoints are plain state dicts of the official ``MultimodalDiscriminator``
(github.com/SonyResearch/MMDisCo). ``convert_official_state_dict`` renames every key onto our
module names (no tensor is reshaped or reordered) and fails on any key it does not know;
``load_official`` then loads strictly. Each file pairs with one config in
``configs/discriminator`` (``RELEASED_CONFIGS``); those configs set ``sinusoid="diffusers"`` and
``logit_eps=1e-5`` so that the loaded model computes what the official one does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from os import PathLike

import torch
from torch import Tensor, nn

RELEASED_CONFIGS = {
    "mmdiffusion_landscape.pt": "released_mmdiffusion",
    "mmdiffusion_aist++.pt": "released_mmdiffusion",
    "audioldm_animediff_vggsound.pt": "released_audioldm_animatediff",
    "auffusion_videocrafter2_vggsound.pt": "released_auffusion_vc2",
}

# official ResBlock sub-module -> ours (after "feature_extractor.input_blocks.<i>.0.<m>_")
_RESBLOCK_PARTS = {
    r"in_layers\.0\.GroupNorm\.": "in_norm.",
    r"in_layers\.2\.video_conv_spatial\.": "in_conv.spatial.",
    r"in_layers\.2\.video_conv_temporal\.": "in_conv.temporal.",
    r"in_layers\.2\.(?:video|audio)_conv\.": "in_conv.",
    r"out_layers\.0\.projection\.1\.": "emb_proj.",
    r"out_layers\.3\.(?:video|audio)_conv\.": "out_conv.",
    r"skip_connection\.(?:video|audio)_conv\.": "skip.",
}


def _resblock(m: re.Match) -> str:
    index, modality, part, param = m.groups()
    for pattern, ours in _RESBLOCK_PARTS.items():
        if re.fullmatch(pattern, part):
            return f"{modality}_stream.blocks.{int(index) - 1}.{ours}{param}"
    raise KeyError(f"unknown official ResBlock part {part!r}")


def _transformer_layer(m: re.Match) -> str:
    layer, rest = int(m.group(1)), m.group(2)
    block = f"head.blocks.{layer // 2}."  # official layers alternate (attention, feed-forward)
    if rest.startswith("0."):
        return block + ("attn_norm." if layer % 2 == 0 else "ff_norm.") + rest[2:]
    if layer % 2 == 0 and re.match(r"1\.to_(q|k|v|out)\.", rest):
        return block + "attn." + rest[2:]
    ff = re.fullmatch(r"1\.net\.(?:0\.0|2)\.(\w+)", rest)
    if layer % 2 == 1 and ff:
        return block + ("ff.0." if ".0.0." in rest else "ff.2.") + ff.group(1)
    raise KeyError(f"unknown official transformer layer key {m.group(0)!r}")


_RULES: list[tuple[str, str | Callable[[re.Match], str]]] = [
    (r"time_embed\.projection\.linear_1\.(\w+)", r"time_mlp.0.\1"),
    (r"time_embed\.projection\.linear_2\.(\w+)", r"time_mlp.2.\1"),
    (r"(audio|video)_text_embed\.(\w+)", r"\1_text_proj.\2"),
    (r"feature_extractor\.input_blocks\.0\.0\.video_conv\.video_conv_spatial\.(\w+)",
     r"video_stream.stem.spatial.\1"),
    (r"feature_extractor\.input_blocks\.0\.0\.video_conv\.video_conv_temporal\.(\w+)",
     r"video_stream.stem.temporal.\1"),
    (r"feature_extractor\.input_blocks\.0\.0\.video_conv\.video_conv\.(\w+)",
     r"video_stream.stem.\1"),
    (r"feature_extractor\.input_blocks\.0\.0\.audio_conv\.audio_conv\.(\w+)",
     r"audio_stream.stem.\1"),
    (r"feature_extractor\.input_blocks\.(\d+)\.0\.(video|audio)_(\S+\.)(\w+)", _resblock),
    (r"fusion_model\.fm_(video|audio|time)_in\.(\w+)", r"head.\1_in.\2"),
    (r"fusion_model\.fm\.cls_emb", "head.cls_token"),
    (r"fusion_model\.fm\.pos_emb\.emb\.weight", "head.pos_emb"),
    (r"fusion_model\.fm\.attn_layers\.layers\.(\d+)\.(\S+)", _transformer_layer),
    (r"fusion_model\.fm\.norm\.(\w+)", r"head.norm.\1"),
    (r"fusion_model\.fm\.out_layer\.(\w+)", r"head.proj.\1"),
    (r"last_linear\.(\w+)", r"head.out.\1"),
]  # fmt: skip


def convert_key(key: str) -> str:
    """Our parameter name for one official parameter name (KeyError if it is not known)."""
    for pattern, repl in _RULES:
        m = re.fullmatch(pattern, key)
        if m:
            return repl(m) if callable(repl) else m.expand(repl)
    raise KeyError(f"no rule converts the official key {key!r}")


def convert_official_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename an official MultimodalDiscriminator state dict onto TwoStreamDiscriminator."""
    converted = {}
    for key, value in state_dict.items():
        ours = convert_key(key)
        if ours in converted:
            raise KeyError(f"two official keys map onto {ours!r}")
        converted[ours] = value
    return converted


def load_official(
    model: nn.Module, checkpoint: str | PathLike | Mapping[str, Tensor]
) -> nn.Module:
    """Load an official checkpoint (path or state dict) into ``model``, strictly."""
    if not isinstance(checkpoint, Mapping):
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(convert_official_state_dict(checkpoint), strict=True)
    return model
