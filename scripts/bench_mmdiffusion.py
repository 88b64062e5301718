"""Sampling cost of MM-Diffusion alone vs guided by the in-domain discriminator (issue 12).

    python scripts/bench_mmdiffusion.py --device cuda --batch 8            # official sizes
    python scripts/bench_mmdiffusion.py --device cpu --batch 1 --nfe 3 --base-width 32 --d-width 32

Random-init networks of the official architectures (timing does not depend on the weights):
the coupled U-Net (``build_official("base")``, or ``--base-width`` channels instead of 128) and
the 12.7M two-stream D of ``configs/discriminator/mmdiffusion_ind.yaml`` (``--d-width`` instead
of 128 channels), full input sizes (16x3x64x64 video, 25600 audio samples), the paper's
sampler (singlestep DPM-Solver-3, ``--nfe`` evaluations, dynamic thresholding). Prints samples
per second of the base alone and guided (D's forward + input-gradient backward added to every
evaluation) and the guided overhead; ``--sr`` also times the 64 -> 256 stage per clip.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml

from mmdisco.bases.mmdiffusion import MMDiffusionBase, build_official
from mmdisco.bases.mmdiffusion_unet import CoupledUNet, CoupledUNetConfig
from mmdisco.guidance import JointGuidance
from mmdisco.sampling import JointSampler

D_CONFIG = Path(__file__).resolve().parent.parent / "configs/discriminator/mmdiffusion_ind.yaml"


def discriminator(width: int):
    from mmdisco.discriminator.two_stream import TwoStreamDiscriminator

    kw = {k: v for k, v in yaml.safe_load(D_CONFIG.read_text()).items() if not k.startswith("_")}
    kw.update(channels=width, time_dim=width)
    return TwoStreamDiscriminator(**kw).eval()


def timed(fn, device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--nfe", type=int, default=20)
    p.add_argument("--base-width", type=int, default=128)
    p.add_argument("--d-width", type=int, default=128)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--sr", action="store_true", help="also time the 64 -> 256 stage")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False  # as the official sampling (float32)
    torch.backends.cudnn.allow_tf32 = False
    unet = (
        build_official("base")
        if args.base_width == 128
        else CoupledUNet(CoupledUNetConfig(model_channels=args.base_width))
    )
    sr = build_official("sr") if args.sr else None
    base = MMDiffusionBase(unet, sr).to(device).eval().requires_grad_(False)
    disc = discriminator(args.d_width).to(device).requires_grad_(False)
    n_base = sum(p.numel() for p in unet.parameters()) / 1e6
    n_d = sum(p.numel() for p in disc.parameters()) / 1e6
    print(f"base {n_base:.1f}M (width {args.base_width}), D {n_d:.2f}M (width {args.d_width}), "
          f"batch {args.batch}, {args.nfe} NFE, {device}")  # fmt: skip
    results = {}
    for name, d in (("base alone", None), ("guided", disc)):
        model = base if d is None else JointGuidance(base, d, joint_scales=1.0)
        sampler = JointSampler(model, solver="dpm_singlestep", num_steps=args.nfe, order=3)
        warm = JointSampler(model, solver="dpm_singlestep", num_steps=2, order=2)

        def run(s=sampler):
            return s.sample(args.batch, generator=torch.Generator(device).manual_seed(0),
                            device=device)  # fmt: skip

        timed(lambda w=warm: w.sample(args.batch, device=device), device)
        secs = min(timed(run, device) for _ in range(args.repeats))
        results[name] = secs
        print(f"{name:>10}: {secs:8.2f} s per batch, {args.batch / secs:7.3f} samples/s")
    overhead = results["guided"] / results["base alone"] - 1
    print(
        f"guided overhead: {100 * overhead:.1f}% ({results['guided'] / results['base alone']:.3f}x)"
    )
    if args.sr:
        video = torch.rand(args.batch, 3, 16, 64, 64, device=device) * 2 - 1
        secs = timed(lambda: base.upsample(video, torch.Generator(device).manual_seed(0)), device)
        print(f"SR 64->256 (25 DDIM steps x 16 frames): {secs:.2f} s per batch, "
              f"{args.batch / secs:.3f} clips/s")  # fmt: skip


if __name__ == "__main__":
    main()
