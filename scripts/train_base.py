"""Train the synthetic world's two base models from scratch, save them, measure their validity.

    OMP_NUM_THREADS=1 python scripts/train_base.py                 # both bases -> assets/synthetic
    python scripts/train_base.py --modality video --video-steps 500  # one base, other settings
    python scripts/train_base.py --eval-only                         # re-measure saved bases

1. the data set: ``SyntheticPairs(--data-dir, --num-clips, --seed)`` (generated when missing;
   corrupt clips are skipped); each base sees only its own modality of it;
2. per modality: encode with the base's codec, train the x_0 denoiser (min-SNR-weighted
   loss, AdamW, linear warm-up then cosine decay), save to ``--out/<modality>``;
3. sample ``--num-eval`` clips from each base alone (``JointSampler`` over
   ``IndependentBases``, no discriminator), write them as mp4 pairs under ``--eval-dir`` and
   score them with ``mmdisco.metrics.synthetic.evaluate_folder``: per-modality validity, the
   decoded class / onset histograms, and (chance-level) agreement of these unguided pairs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path
from statistics import mean

import torch
from tqdm.auto import tqdm

from mmdisco.bases import IndependentBases
from mmdisco.bases.synthetic import SyntheticAudioBase, SyntheticVideoBase
from mmdisco.data.paired import SyntheticPairs
from mmdisco.data.synthetic import FRAME_SIZE, NUM_FRAMES, NUM_SAMPLES, write_clip
from mmdisco.metrics.synthetic import evaluate_folder, format_table
from mmdisco.sampling import JointSampler

ROOT = Path(__file__).resolve().parents[1]
BASES = {"audio": SyntheticAudioBase, "video": SyntheticVideoBase}

# Per-modality settings: codec, PackedUNet (1.1M parameters each) and optimisation.
PRESETS = {
    "audio": dict(
        codec=dict(),  # log-STFT latent (1, T=64, F=64)
        net=dict(image_axes=(1, 2), unshuffle=4, block_out_channels=(32, 64, 64)),
        steps=800,
        batch_size=16,
        lr=2e-3,
    ),
    "video": dict(
        codec=dict(downsample=2),  # latent (3, F=8, 16, 16)
        net=dict(image_axes=(2, 3), unshuffle=1, block_out_channels=(32, 64, 64)),
        steps=2400,
        batch_size=16,
        lr=2e-3,
    ),
}


def build_base(modality: str, media, preset: dict, seed: int):
    """An untrained base whose preconditioning is centred on the encoded data's statistics."""
    torch.manual_seed(seed)
    cls = BASES[modality]
    latents = cls.codec_class(**preset["codec"]).encode(media)
    stats = dict(
        data_mean=round(latents.mean().item(), 4), sigma_data=round(latents.std().item(), 4)
    )
    return cls.create(codec=preset["codec"], **preset["net"], **stats), latents


def train(base, latents, steps: int, batch_size: int, lr: float, seed: int, progress: bool):
    """AdamW on the min-SNR-weighted x_0 loss, gradients clipped to norm 1; linear warm-up
    (50 steps), then cosine decay to 0."""
    gen = torch.Generator().manual_seed(seed)
    params = list(base.denoiser.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = min(50, steps // 10 + 1)

    def schedule(step: int) -> float:
        return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    T = base.schedule.num_train_timesteps
    base.train().requires_grad_(True)
    losses = []
    bar = tqdm(range(steps), desc=f"train {type(base).__name__}", disable=not progress)
    for step in bar:
        x0 = latents[torch.randint(0, len(latents), (batch_size,), generator=gen)]
        t = torch.randint(0, T, (batch_size,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        loss = base.denoising_loss(x0, noise, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{mean(losses[-50:]):.4f}")
    return base.eval().requires_grad_(False), losses


def load_saved(modality: str, out: Path):
    path = out / modality
    return BASES[modality].from_pretrained(path) if path.exists() else None


def evaluate(bases: dict, args) -> dict:
    """Sample each base alone, write the pairs as mp4s, decode them; a missing base is filled
    with silence / black frames (and shows up as invalid)."""
    present = {m: b for m, b in bases.items() if b is not None}
    sampler = JointSampler(
        IndependentBases(**present),
        solver=args.solver,
        num_steps=args.sample_steps,
        spacing=args.spacing,
    )
    start = time.time()
    latents = sampler.sample(
        args.num_eval, generator=torch.Generator().manual_seed(args.seed), progress=args.progress
    )
    audio = bases["audio"].decode(latents["audio"]) if "audio" in present else None
    frames = bases["video"].decode(latents["video"]) if "video" in present else None
    if audio is None:
        audio = torch.zeros(args.num_eval, NUM_SAMPLES)
    if frames is None:
        frames = torch.zeros(
            args.num_eval, NUM_FRAMES, FRAME_SIZE, FRAME_SIZE, 3, dtype=torch.uint8
        )
    sample_s = time.time() - start
    folder = Path(args.eval_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.mp4"):
        old.unlink()
    for i in range(args.num_eval):
        write_clip(folder / f"{i:04d}.mp4", frames[i].numpy(), audio[i].numpy())
    result = evaluate_folder(folder, progress=args.progress)
    result["sample_seconds"] = sample_s
    return result


def report(result: dict, modalities) -> dict:
    """Print validity, the decoded class / onset histograms and the reasons for invalid clips."""
    clips = result["clips"]
    print(format_table({"unguided": result}))
    summary = {}
    for m in modalities:
        valid = [c for c in clips if c[f"{m}_valid"]]
        classes = Counter(c[f"{m}_label"] for c in valid)
        onsets = Counter(c[f"{m}_onset"] for c in valid)
        reasons = Counter(c[f"{m}_reason"].split(":")[0] for c in clips if not c[f"{m}_valid"])
        print(f"{m}: valid {len(valid)}/{len(clips)} ({100 * len(valid) / len(clips):.1f}%)")
        print(f"  classes {dict(sorted(classes.items()))}  onsets {dict(sorted(onsets.items()))}")
        if reasons:
            print(f"  invalid: {dict(reasons.most_common(5))}")
        summary[m] = dict(
            valid=len(valid) / len(clips),
            classes=dict(sorted(classes.items())),
            onsets=dict(sorted(onsets.items())),
        )
    return summary


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modality", choices=["audio", "video", "both"], default="both")
    p.add_argument("--data-dir", default=str(ROOT / ".cache" / "mmdisco" / "synthetic_data"))
    p.add_argument("--num-clips", type=int, default=1000, help="clips of the data set to use")
    p.add_argument("--seed", type=int, default=0, help="data set, training and sampling seed")
    p.add_argument("--out", default=str(ROOT / "assets" / "synthetic"))
    p.add_argument("--eval-dir", default=str(ROOT / "outputs" / "base_eval"))
    p.add_argument("--num-eval", type=int, default=64, help="clips sampled per base")
    p.add_argument("--solver", default="ddim", choices=["ddim", "dpmpp", "ddpm"])
    p.add_argument("--sample-steps", type=int, default=25)
    p.add_argument("--spacing", default="leading", choices=["linspace", "leading", "trailing"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-only", action="store_true", help="measure the saved bases only")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    for m, preset in PRESETS.items():
        for key in ("steps", "batch_size", "lr"):
            flag = f"--{m}-{key.replace('_', '-')}"
            p.add_argument(flag, type=type(preset[key]), default=preset[key])
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    modalities = ["audio", "video"] if args.modality == "both" else [args.modality]
    timings = {}
    if not args.eval_only:
        start = time.time()
        data = SyntheticPairs(args.data_dir, args.num_clips, args.seed, progress=args.progress)
        frames, audio, _ = data.load_media()
        timings["data_s"] = time.time() - start
        for m in modalities:
            preset = {
                **PRESETS[m],
                **{k: getattr(args, f"{m}_{k}") for k in ("steps", "batch_size", "lr")},
            }
            start = time.time()
            base, latents = build_base(m, audio if m == "audio" else frames, preset, args.seed)
            base, losses = train(
                base,
                latents,
                preset["steps"],
                preset["batch_size"],
                preset["lr"],
                args.seed,
                args.progress,
            )
            base.save_pretrained(out / m)
            timings[f"{m}_train_s"] = time.time() - start
            params = sum(p.numel() for p in base.parameters())
            size = sum(f.stat().st_size for f in (out / m).rglob("*") if f.is_file())
            print(
                f"{m}: {params / 1e6:.2f}M parameters, {size / 1e6:.1f} MB in {out / m}, "
                f"{preset['steps']} steps in {timings[f'{m}_train_s']:.0f} s, "
                f"loss {mean(losses[:50]):.4f} -> {mean(losses[-50:]):.4f}"
            )
    bases = {m: load_saved(m, out) for m in BASES}
    missing = [m for m in modalities if bases[m] is None]
    if missing:
        sys.exit(f"no saved base for {missing} in {out}: train it first (drop --eval-only)")
    start = time.time()
    result = evaluate(bases, args)
    timings["eval_s"] = time.time() - start
    summary = report(result, [m for m in BASES if bases[m] is not None])
    print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    summary["timings"] = timings
    (Path(args.eval_dir) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
