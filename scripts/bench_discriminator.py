"""Cost of the two-stream discriminator at the paper's input shapes (paper A.9, Tables 11-12).

    python scripts/bench_discriminator.py                       # every paper config, CUDA if any
    python scripts/bench_discriminator.py --configs mmdiffusion_ind ood_auffusion_vc2 --batch 1
    python scripts/bench_discriminator.py --sweep               # Tables 8-9 parameter counts

Per config, each in a fresh process: "fwd" a forward; "guide" forward + input-gradient backward
(what one guided sampling step adds); "train" forward + double backward (one L_D + L_DSM-like
training step, the input gradient kept with create_graph=True); peak memory over the three
beyond the model and inputs (CUDA: max_memory_allocated; CPU: growth of the max RSS).
The base cost is a random-init diffusers UNet2DConditionModel at SD-1.5 size (860M) as a proxy
for the SD-1.5-based bases: the audio UNet on Auffusion's padded (4, 32, 128) latent, the video
UNet on 16 frames of (4, 32, 32) (AnimateDiff's spatial UNet, motion modules left out, so it is
a lower bound). MM-Diffusion (the IND base) is not in diffusers: no ratio for it.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import resource
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import bench_models  # same folder: the shared builders and the timer
import torch
from bench_models import timed
from hydra.utils import instantiate
from omegaconf import OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "discriminator"
PAPER_CONFIGS = [
    "mmdiffusion_ind",
    "ood_audioldm_animatediff",
    "ood_audioldm_animatediff_transformer",
    "ood_audioldm_animatediff_frieren",
    "ood_auffusion_vc2",
    "ood_auffusion_vc2_transformer",
    "ood_auffusion_vc2_frieren",
]
# (audio, video) shapes without batch, paper Table 6 (Auffusion: 2 s = 25 latent frames)
SHAPES = {
    "mmdiffusion": ((1, 25600), (3, 16, 64, 64)),
    "ood_audioldm": ((8, 50, 16), (4, 16, 32, 32)),
    "ood_auffusion": ((4, 25, 32), (4, 16, 32, 32)),
}
# paper Table 11 (H100, batch 8): discriminator forward / base forward, for reference
PAPER_FWD_RATIO = {"mmdiffusion": 0.054 / 0.273, "ood_audioldm": 0.081 / 0.254,
                   "ood_auffusion": 0.081 / 0.349}  # fmt: skip
# Tables 8-9: (channels, ResBlocks per level) -> reported parameter count
PAPER_SWEEP = {(32, 1): "401K", (32, 2): "798K", (32, 4): "1.6M", (64, 2): "3.2M",
               (128, 1): "19.0M (sic)", (128, 2): "12.7M", (128, 4): "25.3M",
               (256, 2): "50.7M"}  # fmt: skip


def load_config(name: str, **overrides):
    cfg = OmegaConf.load(CONFIG_DIR / f"{name}.yaml")
    return OmegaConf.merge(cfg, overrides)


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def sweep() -> None:
    print("Tables 8-9 sweep: mmdiffusion_ind with channels=C time_dim=C blocks_per_level=N")
    print(f"{'C':>4} {'N':>2} {'params':>12}  paper")
    for c in (32, 64, 128, 256):
        for n in (1, 2, 4):
            cfg = load_config("mmdiffusion_ind", channels=c, time_dim=c, blocks_per_level=n)
            with torch.device("meta"):
                count = num_params(instantiate(cfg))
            print(f"{c:>4} {n:>2} {count:>12,}  {PAPER_SWEEP.get((c, n), '-')}")


def peak_memory_mib(device: torch.device, base: int) -> float:
    """Peak memory since `base` (CUDA: allocator peak; CPU: this process's max RSS)."""
    if device.type == "cuda":
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base) / 2**20


def current_memory(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def discriminator_inputs(model, family: str, batch: int, device: torch.device):
    audio_shape, video_shape = SHAPES[family]
    audio = torch.randn(batch, *audio_shape, device=device)
    video = torch.randn(batch, *video_shape, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    cond = {}
    for m, proj in (("audio", model.audio_text_proj), ("video", model.video_text_proj)):
        if proj is not None:
            cond[m] = torch.randn(batch, proj.in_features, device=device)
    return audio, video, t, cond or None


def discriminator_steps(model, audio, video, t, cond):
    """The three measured calls: forward, sampling step, training step (L_D + L_DSM-like)."""

    def forward():
        with torch.no_grad():
            model(audio, video, t, cond)

    def sampling_step():
        a, v = audio.detach().requires_grad_(True), video.detach().requires_grad_(True)
        torch.autograd.grad(model(a, v, t, cond).sum(), (a, v))

    def training_step():
        a, v = audio.detach().requires_grad_(True), video.detach().requires_grad_(True)
        logit = model(a, v, t, cond)
        ga, gv = torch.autograd.grad(logit.sum(), (a, v), create_graph=True)
        loss = torch.nn.functional.softplus(-logit).mean() + ga.square().mean() + gv.square().mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    return forward, sampling_step, training_step


def sd15_unet(device: torch.device):
    return bench_models.sd15_unet(1).to(device).eval()  # SD-1.5 sizes


def setup(opts: dict) -> torch.device:
    """Per measuring process: threads and device."""
    torch.set_num_threads(opts["threads"])
    return torch.device(opts["device"])


def autocast(opts: dict, device: torch.device):
    if opts["dtype"] == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def measure_base(opts: dict) -> dict:
    """SD-1.5 UNet forward on the audio latent plus 16 video frames (timed on `frames`)."""
    device = setup(opts)
    torch.manual_seed(0)
    unet = sd15_unet(device)
    text = torch.randn(1, 77, 768, device=device)
    batch, frames = opts["batch"], opts["unet_frames"]

    def run(x):
        with torch.no_grad():
            unet(x, 500, encoder_hidden_states=text.expand(len(x), -1, -1))

    audio = torch.randn(batch, 4, 32, 128, device=device)
    video = torch.randn(batch * frames, 4, 32, 32, device=device)
    with autocast(opts, device):
        seconds_audio = timed(lambda: run(audio), device, opts["repeats"], opts["warmup"])
        seconds_video = timed(lambda: run(video), device, opts["repeats"], opts["warmup"])
    return {"params": num_params(unet), "seconds": seconds_audio + seconds_video * 16 / frames}


def measure_discriminator(config: str, opts: dict) -> dict:
    device = setup(opts)
    family = next(f for f in SHAPES if config.startswith(f))
    torch.manual_seed(0)
    model = instantiate(load_config(config)).to(device).train()
    inputs = discriminator_inputs(model, family, opts["batch"], device)
    forward, sampling_step, training_step = discriminator_steps(model, *inputs)
    base = current_memory(device)
    repeats, warmup = opts["repeats"], opts["warmup"]
    with autocast(opts, device):
        result = {
            "family": family,
            "params": num_params(model),
            "fwd": timed(forward, device, repeats, warmup),
            "guide": timed(sampling_step, device, repeats, warmup),
            "train": timed(training_step, device, repeats, warmup),
        }
    result["peak_mib"] = peak_memory_mib(device, base)
    return result


def in_fresh_process(fn, *args):
    """Run fn(*args) in a new process, so that each peak memory is its own."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


def bench(opts: dict) -> None:
    device = torch.device(opts["device"])
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"device: {name}, {opts['threads']} CPU thread(s); batch {opts['batch']}; "
          f"{opts['dtype']}; repeats {opts['repeats']}, warmup {opts['warmup']}; "
          f"torch {torch.__version__}")  # fmt: skip
    base = None
    if not opts["no_unet"]:
        base = in_fresh_process(measure_base, opts)
        print(f"base proxy, SD-1.5 UNet ({base['params'] / 1e6:.0f}M), forward of audio "
              f"(4, 32, 128) + 16 frames of (4, 32, 32): {base['seconds']:.3f} s (video timed "
              f"on {opts['unet_frames']} frames, scaled to 16)")  # fmt: skip
    print(f"{'config':38} {'params':>8} {'fwd s':>8} {'guide s':>8} {'train s':>8} "
          f"{'peak MiB':>9} {'fwd/base':>9} {'guide/base':>10} {'train/base':>10} "
          f"{'paper fwd/base':>14}")  # fmt: skip
    for config in opts["configs"]:
        r = in_fresh_process(measure_discriminator, config, opts)
        ratios = ["-"] * 3
        if base is not None and r["family"] == "ood_auffusion":
            ratios = [f"{r[k] / base['seconds']:.3f}" for k in ("fwd", "guide", "train")]
        print(f"{config:38} {r['params'] / 1e6:7.1f}M {r['fwd']:8.3f} {r['guide']:8.3f} "
              f"{r['train']:8.3f} {r['peak_mib']:9.0f} {ratios[0]:>9} {ratios[1]:>10} "
              f"{ratios[2]:>10} {PAPER_FWD_RATIO[r['family']]:14.3f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=PAPER_CONFIGS)
    parser.add_argument("--batch", type=int, default=None, help="default: 8 CUDA, 1 CPU")
    parser.add_argument("--repeats", type=int, default=None, help="default: 10 CUDA, 1 CPU")
    parser.add_argument("--warmup", type=int, default=None, help="default: 3 CUDA, 0 CPU")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    parser.add_argument("--cpu", action="store_true", help="stay on CPU even with CUDA")
    parser.add_argument("--no-unet", action="store_true", help="skip the base UNet proxy")
    parser.add_argument("--unet-frames", type=int, default=16, help="video frames to time")
    parser.add_argument("--sweep", action="store_true", help="print Tables 8-9 counts only")
    args = parser.parse_args()
    if args.sweep:
        sweep()
        return
    cuda = torch.cuda.is_available() and not args.cpu
    opts = vars(args) | {"device": "cuda" if cuda else "cpu"}
    opts["batch"] = args.batch or (8 if cuda else 1)
    opts["repeats"] = args.repeats or (10 if cuda else 1)
    opts["warmup"] = args.warmup if args.warmup is not None else (3 if cuda else 0)
    bench(opts)


if __name__ == "__main__":
    main()
