"""Record the ORIGINAL VideoCrafter2 UNet's parameter names and shapes, and a reference output.

Needs a checkout of https://github.com/AILab-CVC/VideoCrafter (the UNet code lives there, not
in this package) and einops. Builds ``lvdm.modules.networks.openaimodel3d.UNetModel``

- at full size, with the arguments of ``configs/inference_t2v_512_v2.0.yaml`` (on the meta
  device: shapes only), and
- at a tiny size with the same options, filled with seeded random weights, and runs it once on
  a seeded input,

then writes ``tests/fixtures/videocrafter2_keys.json``: both key -> shape lists, the tiny
config and the tiny model's output, which ``tests/test_bases_videocrafter.py`` compares with
the converted diffusers model (``convert_videocrafter2_checkpoint``).

    python scripts/record_videocrafter2_keys.py --videocrafter /path/to/VideoCrafter
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "videocrafter2_keys.json"
FULL = dict(  # configs/inference_t2v_512_v2.0.yaml, model.params.unet_config.params
    in_channels=4,
    out_channels=4,
    model_channels=320,
    attention_resolutions=[4, 2, 1],
    num_res_blocks=2,
    channel_mult=[1, 2, 4, 4],
    num_head_channels=64,
    transformer_depth=1,
    context_dim=1024,
    use_linear=True,
    use_checkpoint=False,  # True in the yaml: gradient checkpointing, no parameters
    temporal_conv=True,
    temporal_attention=True,
    temporal_selfatt_only=True,
    use_relative_position=False,
    use_causal_attention=False,
    temporal_length=16,
    addition_attention=True,
    fps_cond=True,
)
TINY = {**FULL, "model_channels": 32, "channel_mult": [1, 2, 2, 2], "num_head_channels": 16}
TINY.update(context_dim=24, temporal_length=4)
SEED, WEIGHT_STD = 0, 0.2
INPUT = dict(shape=[1, 4, 4, 8, 8], timestep=500, fps=8, context_len=5)


def seeded_state_dict(shapes: dict[str, list[int]], seed: int, std: float) -> dict:
    """Weights drawn in sorted key order from one seeded generator (the test does the same)."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shapes[k], generator=g) * std for k in sorted(shapes)}


def seeded_inputs(context_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED + 1)
    x = torch.randn(INPUT["shape"], generator=g)
    context = torch.randn(1, INPUT["context_len"], context_dim, generator=g)
    return x, context


def shapes_of(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videocrafter", required=True, help="checkout of AILab-CVC/VideoCrafter")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    sys.path.insert(0, str(Path(args.videocrafter).resolve()))
    from lvdm.modules.networks.openaimodel3d import UNetModel

    commit = subprocess.run(
        ["git", "-C", args.videocrafter, "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    with torch.device("meta"):
        full = shapes_of(UNetModel(**FULL))
    tiny_model = UNetModel(**TINY).eval()
    tiny = shapes_of(tiny_model)
    tiny_model.load_state_dict(seeded_state_dict(tiny, SEED, WEIGHT_STD))
    x, context = seeded_inputs(TINY["context_dim"])
    with torch.no_grad():
        t = torch.tensor([INPUT["timestep"]])
        y = tiny_model(x, t, context=context, fps=INPUT["fps"])
    record = {
        "source": f"AILab-CVC/VideoCrafter@{commit or 'unknown'} "
        "lvdm/modules/networks/openaimodel3d.py UNetModel",
        "full_config": FULL,
        "full": full,
        "tiny_config": TINY,
        "tiny": tiny,
        "tiny_reference": {
            "seed": SEED,
            "weight_std": WEIGHT_STD,
            **INPUT,
            "output": y.flatten().tolist(),
        },
    }
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(f"{len(full)} full-size and {len(tiny)} tiny keys -> {args.out}")


if __name__ == "__main__":
    main()
