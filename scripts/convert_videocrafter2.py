"""Convert VideoCrafter2's original ``model.ckpt`` into the directory VideoCrafter2Base reads.

    python scripts/convert_videocrafter2.py --ckpt model.ckpt --out assets/videocrafter2

- unet/: ``model.diffusion_model.*`` through ``convert_videocrafter2_checkpoint`` into
  ``VideoCrafter2UNet`` (loaded with strict=True, so every tensor is placed).
- vae/: ``first_stage_model.*`` through diffusers' LDM-VAE converter, with the AutoencoderKL
  config of ``--sd`` (the SD VAE architecture, scaling factor 0.18215).
- text_encoder/, tokenizer/: copied from ``--sd``. VideoCrafter2 uses OpenCLIP ViT-H-14
  ``laion2b_s32b_b79k`` frozen (configs/inference_t2v_512_v2.0.yaml), the same weights SD-2.1
  ships as its 23-layer ``text_encoder``.
- scheduler/: VideoCrafter2's DDPM schedule (the signal scale is added by the wrapper).

The checkpoint is on the hub as VideoCrafter/VideoCrafter2 (file model.ckpt, about 11 GB).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from transformers import CLIPTextModel, CLIPTokenizer

from mmdisco.bases import ldm
from mmdisco.bases.videocrafter import (
    HINT,
    VideoCrafter2UNet,
    convert_videocrafter2_checkpoint,
    videocrafter2_scheduler,
)

SD = "stabilityai/stable-diffusion-2-1-base"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="VideoCrafter2 model.ckpt")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--sd", default=SD, help="SD-2.1 hub id or dir (VAE config, text)")
    args = parser.parse_args()
    out = Path(args.out)

    state = torch.load(args.ckpt, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)

    unet = VideoCrafter2UNet()
    unet.load_state_dict(convert_videocrafter2_checkpoint(state), strict=True)
    unet.save_pretrained(out / "unet")
    del unet

    parts = ldm.load_components(
        {
            "vae_config": (AutoencoderKL, args.sd, "vae", "model"),
            "text_encoder": (CLIPTextModel, args.sd, "text_encoder", "model"),
            "tokenizer": (CLIPTokenizer, args.sd, "tokenizer", "tokenizer"),
        },
        HINT,
    )
    vae = AutoencoderKL.from_config(parts["vae_config"].config)
    vae.load_state_dict(convert_ldm_vae_checkpoint(state, vae.config), strict=True)
    vae.save_pretrained(out / "vae")
    parts["text_encoder"].save_pretrained(out / "text_encoder")
    parts["tokenizer"].save_pretrained(out / "tokenizer")
    videocrafter2_scheduler().save_pretrained(out / "scheduler")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
