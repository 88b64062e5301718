"""VideoCrafter2 (Chen et al. 2024) as a frozen text-to-video base, in diffusers format.

Model facts, from AILab-CVC/VideoCrafter (commit 11bcd76):

- UNet (``lvdm/modules/networks/openaimodel3d.py`` ``UNetModel``, configured by
  ``configs/inference_t2v_512_v2.0.yaml``): 320 channels x (1, 2, 4, 4), 2 ResBlocks per level,
  spatial + temporal transformers at the first three levels, head width 64, a 1-D temporal
  conv block after every ResBlock, an extra temporal transformer (8 heads x 64) after the
  input conv (``addition_attention``), and an fps embedding (``fps_cond``): the sinusoidal
  embedding of fps through Linear-SiLU-Linear, added to the time embedding (``forward``,
  lines 538-542). This is diffusers' ``UNet3DConditionModel`` layout (ModelScope's) with
  ``attention_head_dim=64`` plus the fps embedding: :class:`VideoCrafter2UNet`.
- Text: OpenCLIP ViT-H-14, the penultimate block's output then ``ln_final``
  (``lvdm/modules/encoders/condition.py`` ``FrozenOpenCLIPEmbedder``, layer "penultimate");
  in transformers format this is SD-2.1's ``text_encoder`` (hidden 1024). The unconditional
  embedding is that of the empty prompt (``uncond_type: empty_seq``).
- VAE: the SD image VAE applied per frame, scale factor 0.18215 (config ``scale_factor``).
- Schedule: 1000 steps, betas from LDM's ``make_beta_schedule("linear", 0.00085, 0.012)``
  (``lvdm/models/utils_diffusion.py``: linear in sqrt(beta), i.e. diffusers "scaled_linear"),
  eps-prediction, and a signal scale (``lvdm/models/ddpm3d.py`` ``LatentDiffusion.__init__``
  lines 361-376 and ``q_sample`` lines 411-419, ``use_scale: true``, ``scale_b: 0.7``):
  x_t = sqrt(alpha_bar_t) * s_t * x_0 + sqrt(1 - alpha_bar_t) * eps with
  s = linspace(1, 0.7, 400) for t < 400 and 0.7 after (``mid_step=400``; the
  ``fix_scale_bug=False`` branch only lengthens the unused tail of the array).
- MMDisCo's settings (SonyResearch/MMDisCo ``conf/model/auffusion_videocrafter2_vggsound.yaml``
  and ``conf/inference/default.yaml``): fps condition 8, 16 frames of 256 x 256
  (latent (4, 16, 32, 32)), classifier-free guidance 8.0, joint scale 8.0.

Layout of a converted model directory (``save_pretrained`` / ``from_pretrained``)::

    <dir>/unet/{config.json, diffusion_pytorch_model.safetensors}   VideoCrafter2UNet
    <dir>/vae/...                 AutoencoderKL (SD-2.1's)
    <dir>/text_encoder/...        CLIPTextModel (SD-2.1's OpenCLIP-H)
    <dir>/tokenizer/...           CLIPTokenizer
    <dir>/scheduler/scheduler_config.json

Make it from the original checkpoint with ``python scripts/convert_videocrafter2.py``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet3DConditionModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import TimestepEmbedding
from torch import Tensor
from transformers import CLIPTextModel, CLIPTokenizer

from mmdisco.bases import ldm
from mmdisco.bases.protocol import Condition, DiffusionBase

HINT = (
    "Convert the original checkpoint (hub: VideoCrafter/VideoCrafter2, file model.ckpt) with "
    "`python scripts/convert_videocrafter2.py --ckpt model.ckpt --out <dir>`; it takes the VAE, "
    "text encoder and tokenizer from stabilityai/stable-diffusion-2-1-base."
)
SCALE_B = 0.7  # configs/inference_t2v_512_v2.0.yaml
SCALE_STEPS = 400  # LatentDiffusion(mid_step=400)


# -- the network ---------------------------------------------------------------------------
class VideoCrafter2UNet(UNet3DConditionModel):
    """diffusers' ``UNet3DConditionModel`` plus VideoCrafter2's fps embedding.

    ``attention_head_dim`` is the width of every attention head (diffusers' 3-D blocks build
    C / 64 heads of width 64 from ``attention_head_dim=64``, as VideoCrafter2's
    ``num_head_channels: 64``; ``transformer_in`` has 8 heads of width 64 as its
    ``init_attn``). With ``fps_cond``, ``fps_embedding`` (Linear-SiLU-Linear, like the
    original's) maps the sinusoidal embedding of fps and is added to the time embedding.

    forward: sample (B, 4, F, h, w), timestep (B,) or scalar, encoder_hidden_states
    (B, L, D) (repeated per frame inside), fps (B,) or scalar -> (B, 4, F, h, w).
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock3D",
            "CrossAttnDownBlock3D",
            "CrossAttnDownBlock3D",
            "DownBlock3D",
        ),
        up_block_types: tuple[str, ...] = (
            "UpBlock3D",
            "CrossAttnUpBlock3D",
            "CrossAttnUpBlock3D",
            "CrossAttnUpBlock3D",
        ),
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        cross_attention_dim: int = 1024,
        attention_head_dim: int = 64,
        fps_cond: bool = True,
    ):
        super().__init__(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=out_channels,
            down_block_types=tuple(down_block_types),
            up_block_types=tuple(up_block_types),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=attention_head_dim,
        )
        width = block_out_channels[0]
        self.fps_embedding = TimestepEmbedding(width, 4 * width) if fps_cond else None

    def forward(
        self,
        sample: Tensor,
        timestep: Tensor | int,
        encoder_hidden_states: Tensor,
        fps: Tensor | float = 8,
        **kwargs: Any,
    ):
        if self.fps_embedding is None:
            return super().forward(sample, timestep, encoder_hidden_states, **kwargs)
        fps = torch.as_tensor(fps, device=sample.device).reshape(-1).expand(sample.shape[0])
        fps_emb = self.fps_embedding(self.time_proj(fps).to(self.dtype))  # (B, 4 C)
        # add it to the time embedding's output (openaimodel3d.py UNetModel.forward)
        hook = self.time_embedding.register_forward_hook(lambda _m, _i, out: out + fps_emb)
        try:
            return super().forward(sample, timestep, encoder_hidden_states, **kwargs)
        finally:
            hook.remove()


# -- checkpoint conversion -----------------------------------------------------------------
RESBLOCK = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}


def _resblock_rest(rest: str) -> tuple[str, str]:
    """'in_layers.0.weight' -> ('resnets', 'norm1.weight'); temporal conv -> 'temp_convs'."""
    if rest.startswith("temopral_conv."):  # sic: the original's attribute name
        return "temp_convs", rest[len("temopral_conv.") :]
    for old, new in RESBLOCK.items():
        if rest.startswith(old + "."):
            return "resnets", new + rest[len(old) :]
    raise KeyError(rest)


def _block_layer(layer: int, rest: str, j: int) -> str:
    """One layer of an original TimestepEmbedSequential at position ``layer`` -> the diffusers
    block member for resnet index ``j``: 0 ResBlock, 1 spatial, 2 temporal transformer."""
    if layer == 0:
        group, rest = _resblock_rest(rest)
        return f"{group}.{j}.{rest}"
    return f"{('attentions', 'temp_attentions')[layer - 1]}.{j}.{rest}"


def _linear_from_conv1d(key: str, value: Tensor) -> Tensor:
    """init_attn uses 1x1 Conv1d projections (use_linear unset), diffusers a Linear."""
    if re.search(r"proj_(in|out)\.weight$", key) and value.ndim == 3:
        return value[..., 0]
    return value


def _convert_key(key: str, layers_per_block: int, num_levels: int) -> str:
    m = re.fullmatch(r"(time_embed|fps_embedding)\.([02])\.(.+)", key)
    if m:
        name = "time_embedding" if m[1] == "time_embed" else "fps_embedding"
        return f"{name}.{'linear_1' if m[2] == '0' else 'linear_2'}.{m[3]}"
    if key.startswith("input_blocks.0.0."):
        return "conv_in." + key[len("input_blocks.0.0.") :]
    if key.startswith("init_attn.0."):
        return "transformer_in." + key[len("init_attn.0.") :]
    m = re.fullmatch(r"out\.([02])\.(.+)", key)
    if m:
        return f"{'conv_norm_out' if m[1] == '0' else 'conv_out'}.{m[2]}"
    per_down, per_up = layers_per_block + 1, layers_per_block + 1
    m = re.fullmatch(r"input_blocks\.(\d+)\.(\d+)\.(.+)", key)
    if m:
        level, j = divmod(int(m[1]) - 1, per_down)
        if j == layers_per_block:  # Downsample(use_conv): its conv is called "op"
            return f"down_blocks.{level}.downsamplers.0.conv.{m[3].removeprefix('op.')}"
        return f"down_blocks.{level}.{_block_layer(int(m[2]), m[3], j)}"
    m = re.fullmatch(r"middle_block\.(\d+)\.(.+)", key)
    if m:  # ResBlock, spatial, temporal, ResBlock
        layer = int(m[1])
        if layer in (0, 3):
            group, rest = _resblock_rest(m[2])
            return f"mid_block.{group}.{layer // 3}.{rest}"
        return f"mid_block.{_block_layer(layer, m[2], 0)}"
    m = re.fullmatch(r"output_blocks\.(\d+)\.(\d+)\.(.+)", key)
    if m:
        level, j = divmod(int(m[1]), per_up)
        if re.fullmatch(r"conv\.(weight|bias)", m[3]) and level < num_levels - 1:
            return f"up_blocks.{level}.upsamplers.0.{m[3]}"  # Upsample(use_conv)
        return f"up_blocks.{level}.{_block_layer(int(m[2]), m[3], j)}"
    raise KeyError(f"unexpected VideoCrafter2 UNet key {key!r}")


def convert_videocrafter2_checkpoint(
    state_dict: dict[str, Tensor], layers_per_block: int = 2, num_levels: int = 4
) -> dict[str, Tensor]:
    """Original VideoCrafter2 ``model.ckpt`` state dict -> :class:`VideoCrafter2UNet`'s.

    Takes the ``model.diffusion_model.*`` entries (or an already bare UNet state dict; the
    VAE and text encoder entries are ignored). Names follow openaimodel3d.py: input_blocks
    0 is the input conv, then per level ``layers_per_block`` x [ResBlock, spatial, temporal
    transformer] and a Downsample; output_blocks likewise with ``layers_per_block + 1``
    entries per level, the last ending in an Upsample. Spatial / temporal transformer and
    temporal-conv parameter names already match diffusers'.
    """
    prefix = "model.diffusion_model."
    if any(k.startswith(prefix) for k in state_dict):
        state_dict = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    out = {}
    for key, value in state_dict.items():
        new = _convert_key(key, layers_per_block, num_levels)
        if new in out:
            raise ValueError(f"two original keys map to {new!r}")
        out[new] = _linear_from_conv1d(key, value) if key.startswith("init_attn.") else value
    return out


# -- the base ----------------------------------------------------------------------------------
def videocrafter2_scheduler(**overrides: Any) -> DDPMScheduler:
    """VideoCrafter2's training schedule as a diffusers config (scale_b is added separately)."""
    kwargs = {
        "num_train_timesteps": 1000,
        "beta_schedule": "scaled_linear",  # LDM "linear": linear in sqrt(beta)
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "prediction_type": "epsilon",
        "clip_sample": False,
    }
    return DDPMScheduler(**{**kwargs, **overrides})


class VideoCrafter2Base(ldm.FrameLatentShape, DiffusionBase):
    """VideoCrafter2 text-to-video: uint8 frames (B, F, H, W, 3) <-> latents (B, 4, F, h, w).

    ``model_output`` is the UNet's eps prediction at the fps condition ``fps`` (8 in MMDisCo);
    ``encode_prompt`` gives OpenCLIP-H embeddings (B, 77, 1024) with guidance ``guidance_scale``.
    """

    text_conditional = True
    decodes_to_media = True

    def __init__(
        self,
        unet: VideoCrafter2UNet,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        scheduler: DDPMScheduler,
        num_frames: int = 16,
        height: int = 256,
        width: int = 256,
        fps: float = 8,
        guidance_scale: float = 8.0,
        text_layer: int = 23,
        vae_chunk: int = 8,
        posterior: str = "sample",
    ):
        super().__init__()
        self.posterior = posterior  # VAE posterior of real latents: "sample" (official) or "mean"
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.scheduler_config = dict(scheduler.config)
        self.schedule, self.prediction_type = ldm.schedule_from_scheduler_config(
            scheduler.config, scale_b=SCALE_B, scale_steps=SCALE_STEPS
        )
        self.num_frames, self.height, self.width = num_frames, height, width
        self.fps, self.guidance_scale, self.vae_chunk = fps, guidance_scale, vae_chunk
        self.text_layer = min(text_layer, text_encoder.config.num_hidden_layers)
        self.vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    @classmethod
    def from_pretrained(
        cls,
        pretrained: str | Path,
        vae: str | Path | None = None,
        text_encoder: str | Path | None = None,
        **kwargs: Any,
    ) -> VideoCrafter2Base:
        """Components from ``pretrained`` (a converted directory, see the module docstring);
        ``vae`` / ``text_encoder`` (hub ids or dirs holding vae/, text_encoder/ and
        tokenizer/) override where those come from. ``text_layer`` 23 is OpenCLIP-H's
        penultimate block, which is SD-2.1's 23-layer ``text_encoder``'s last one."""
        text_src = text_encoder or pretrained
        parts = ldm.load_components(
            {
                "unet": (VideoCrafter2UNet, pretrained, "unet", "model"),
                "vae": (AutoencoderKL, vae or pretrained, "vae", "model"),
                "text_encoder": (CLIPTextModel, text_src, "text_encoder", "model"),
                "tokenizer": (CLIPTokenizer, text_src, "tokenizer", "tokenizer"),
                "scheduler": (DDPMScheduler, pretrained, "scheduler", "scheduler"),
            },
            HINT,
        )
        parts = {k: ldm.as_float32(v) for k, v in parts.items()}
        return cls(**parts, **kwargs).eval().requires_grad_(False)

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        for name in ("unet", "vae", "text_encoder", "tokenizer"):
            getattr(self, name).save_pretrained(path / name)
        DDPMScheduler.from_config(self.scheduler_config).save_pretrained(path / "scheduler")

    # -- the protocol ------------------------------------------------------------------------
    def model_output(self, x_t: Tensor, t: Tensor, emb: Tensor) -> Tensor:
        """eps (B, 4, F, h, w) from x_t (B, 4, F, h, w), t (B,), emb (B, 77, 1024)."""
        if emb is None:
            raise ValueError("VideoCrafter2 is text-conditional: pass encode_prompt([''])")
        dtype = self.unet.dtype
        out = self.unet(
            x_t.to(dtype), t, emb.to(x_t.device, dtype), fps=self.fps, return_dict=False
        )[0]
        return out.to(x_t.dtype)

    def encode_prompt(self, prompts: list[str]) -> Condition:
        return ldm.text_condition(
            self.tokenizer, self.text_encoder, prompts, self.guidance_scale, self.text_layer
        )

    def encode(self, media: Any) -> Tensor:
        """uint8 frames (B, F, H, W, 3) -> latents (B, 4, F, height/8, width/8)."""
        x = ldm.frames_to_tensor(media, self.height, self.width)
        return ldm.vae_encode(self.vae, x, self.vae_chunk, self.posterior)

    def decode(self, latents: Tensor) -> Tensor:
        """latents (B, 4, F, h, w) -> uint8 frames (B, F, 8h, 8w, 3)."""
        return ldm.tensor_to_frames(ldm.vae_decode(self.vae, latents, self.vae_chunk))
