"""AnimateDiff (Guo et al. 2024) as a frozen text-to-video base, in diffusers format.

Model facts:

- Network: an SD-1.5 ``UNet2DConditionModel`` with AnimateDiff's motion modules inserted, i.e.
  diffusers' ``UNetMotionModel.from_unet2d(unet, MotionAdapter)``. MMDisCo uses the motion
  adapter ``guoyww/animatediff-motion-adapter-v1-5-2`` on ``SG161222/Realistic_Vision_V5.1_noVAE``
  (SonyResearch/MMDisCo ``mmdisco/models/diffusion/video.py`` ``AnimateDiff``); that model
  ships without a VAE, so the VAE comes from ``stabilityai/sd-vae-ft-mse``.
- Text: SD-1.5's CLIP ViT-L/14 text encoder, last hidden state (B, 77, 768), repeated per frame
  because ``UNetMotionModel`` folds frames into the batch (diffusers
  ``pipelines/animatediff/pipeline_animatediff.py``: ``prompt_embeds.repeat_interleave(
  num_frames, dim=0)`` before calling the UNet).
- Schedule: the SD scheduler's betas 0.00085 .. 0.012 over 1000 steps, eps-prediction. The
  default ``beta_schedule=None`` keeps the scheduler config's own ("scaled_linear" for SD-1.5
  models), as MMDisCo's Table 6 and its released config ``audioldm_animediff_vggsound.yaml``
  (``use_linear_schedule: false``); ``"linear"`` is what AnimateDiff's own inference configs use.
- MMDisCo's settings: 16 frames of 256 x 256 (latent (4, 16, 32, 32)), 8 fps
  (AnimateDiff's default export rate), classifier-free guidance 7.5.

Layout written by ``save_pretrained`` and read by ``from_pretrained``::

    <dir>/unet/            UNet2DConditionModel (the SD-1.5 model's)
    <dir>/motion_adapter/  MotionAdapter
    <dir>/vae/             AutoencoderKL
    <dir>/text_encoder/    CLIPTextModel
    <dir>/tokenizer/       CLIPTokenizer
    <dir>/scheduler/       scheduler_config.json
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    MotionAdapter,
    UNet2DConditionModel,
    UNetMotionModel,
)
from torch import Tensor
from transformers import CLIPTextModel, CLIPTokenizer

from mmdisco.bases import ldm
from mmdisco.bases.protocol import Condition, DiffusionBase

HINT = (
    "Use hub ids (pretrained: SG161222/Realistic_Vision_V5.1_noVAE, motion_adapter: "
    "guoyww/animatediff-motion-adapter-v1-5-2, vae: stabilityai/sd-vae-ft-mse) or a "
    "directory written by AnimateDiffBase.save_pretrained."
)


class AnimateDiffBase(ldm.FrameLatentShape, DiffusionBase):
    """AnimateDiff text-to-video: uint8 frames (B, F, H, W, 3) <-> latents (B, 4, F, h, w)."""

    text_conditional = True
    decodes_to_media = True

    def __init__(
        self,
        unet: UNet2DConditionModel,
        motion_adapter: MotionAdapter,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        scheduler: DDPMScheduler,
        num_frames: int = 16,
        height: int = 256,
        width: int = 256,
        fps: float = 8,
        guidance_scale: float = 7.5,
        beta_schedule: str | None = None,
        vae_chunk: int = 8,
        posterior: str = "sample",
    ):
        super().__init__()
        self.posterior = posterior  # VAE posterior of real latents: "sample" (official) or "mean"
        self.unet2d_config, self.adapter_config = dict(unet.config), dict(motion_adapter.config)
        self.unet = UNetMotionModel.from_unet2d(unet, motion_adapter)
        self.vae, self.text_encoder, self.tokenizer = vae, text_encoder, tokenizer
        self.scheduler_config = dict(scheduler.config)
        overrides = {} if beta_schedule is None else {"beta_schedule": beta_schedule}
        self.schedule, self.prediction_type = ldm.schedule_from_scheduler_config(
            scheduler.config, **overrides
        )
        self.num_frames, self.height, self.width = num_frames, height, width
        self.fps, self.guidance_scale, self.vae_chunk = fps, guidance_scale, vae_chunk
        self.vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    @classmethod
    def from_pretrained(
        cls,
        pretrained: str | Path,
        motion_adapter: str | Path | None = None,
        vae: str | Path | None = None,
        **kwargs: Any,
    ) -> AnimateDiffBase:
        """UNet, text encoder, tokenizer and scheduler from ``pretrained`` (hub id or dir in
        diffusers layout). ``motion_adapter`` / ``vae``: a hub id or dir holding just that
        component (config.json + weights at its root); when None they are read from
        ``pretrained``'s motion_adapter/ and vae/ subfolders."""
        adapter_src = (motion_adapter, None) if motion_adapter else (pretrained, "motion_adapter")
        vae_src = (vae, None) if vae else (pretrained, "vae")
        parts = ldm.load_components(
            {
                "unet": (UNet2DConditionModel, pretrained, "unet", "model"),
                "motion_adapter": (MotionAdapter, *adapter_src, "model"),
                "vae": (AutoencoderKL, *vae_src, "model"),
                "text_encoder": (CLIPTextModel, pretrained, "text_encoder", "model"),
                "tokenizer": (CLIPTokenizer, pretrained, "tokenizer", "tokenizer"),
                "scheduler": (DDPMScheduler, pretrained, "scheduler", "scheduler"),
            },
            HINT,
        )
        parts = {k: ldm.as_float32(v) for k, v in parts.items()}
        return cls(**parts, **kwargs).eval().requires_grad_(False)

    def save_pretrained(self, path: str | Path) -> None:
        """The layout of the module docstring: the UNet is split back into the SD UNet and the
        motion adapter (``from_unet2d`` keeps both parts' parameter names)."""
        path = Path(path)
        weights = self.unet.state_dict()
        for name, cls, config in (
            ("unet", UNet2DConditionModel, self.unet2d_config),
            ("motion_adapter", MotionAdapter, self.adapter_config),
        ):
            part = cls.from_config(config)
            part.load_state_dict({k: weights[k] for k in part.state_dict()}, strict=True)
            part.save_pretrained(path / name)
        for name in ("vae", "text_encoder", "tokenizer"):
            getattr(self, name).save_pretrained(path / name)
        DDPMScheduler.from_config(self.scheduler_config).save_pretrained(path / "scheduler")

    # -- the protocol ------------------------------------------------------------------------
    def model_output(self, x_t: Tensor, t: Tensor, emb: Tensor) -> Tensor:
        """eps (B, 4, F, h, w) from x_t (B, 4, F, h, w), t (B,), emb (B, 77, 768)."""
        if emb is None:
            raise ValueError("AnimateDiff is text-conditional: pass encode_prompt([''])")
        dtype = self.unet.dtype
        frames = x_t.shape[2]
        emb = emb.to(x_t.device, dtype).repeat_interleave(frames, dim=0)  # (B*F, 77, 768)
        out = self.unet(x_t.to(dtype), t, emb, return_dict=False)[0]
        return out.to(x_t.dtype)

    def encode_prompt(self, prompts: list[str]) -> Condition:
        return ldm.text_condition(self.tokenizer, self.text_encoder, prompts, self.guidance_scale)

    def encode(self, media: Any) -> Tensor:
        """uint8 frames (B, F, H, W, 3) -> latents (B, 4, F, height/8, width/8)."""
        x = ldm.frames_to_tensor(media, self.height, self.width)
        return ldm.vae_encode(self.vae, x, self.vae_chunk, self.posterior)

    def decode(self, latents: Tensor) -> Tensor:
        """latents (B, 4, F, h, w) -> uint8 frames (B, F, 8h, 8w, 3)."""
        return ldm.tensor_to_frames(ldm.vae_decode(self.vae, latents, self.vae_chunk))
