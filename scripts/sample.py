"""Joint generation from a trained run (paper Algorithm 2).

    python scripts/sample.py run_dir=runs/toy_ind num_samples=4000
    python scripts/sample.py run_dir=runs/toy_ind guided=false      # "no joint" baseline
    python scripts/sample.py run_dir=runs/toy_ind sampler.solver=ddim sampler.num_steps=50
    python scripts/sample.py run_dir=runs/vc2 num_samples=8 prompts="[a dog barking, rain]"

Text-conditional bases get one prompt per sample: ``prompts`` cycled, or (null) drawn with
the seed from the run's data set captions; ``prompts.csv`` in the output folder records them.

Bases that decode to media (an audio base with ``sample_rate``, a video base with ``fps``):
one mp4 with sound per pair in ``run_dir/guided/`` (``unguided/`` with guided=false), named by
the pair's index, so the same name in both folders means the same seed and initial noise.
Data-space bases (the toy): ``samples.npz`` (one array per modality) and a scatter PNG.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from mmdisco.config import check_no_moved_keys, exit_on_moved_keys
from mmdisco.io import atomic_savez, atomic_write_bytes
from mmdisco.plots import toy_scatter
from mmdisco.runs import (
    build_guidance,
    load_run,
    sample_in_batches,
    sampling_prompts,
    setup_torch,
    with_overrides,
)
from mmdisco.sampling import build_sampler
from mmdisco.validate import validate_sample


@hydra.main(config_path="../configs", config_name="sample", version_base="1.3")
def main(cfg: DictConfig) -> None:
    check_no_moved_keys(cfg)
    validate_sample(cfg)  # every value and path, before any heavy work (mmdisco.validate)
    device = setup_torch(cfg.device, cfg.threads)
    run = load_run(cfg.run_dir, device, with_discriminator=cfg.guided)
    if cfg.get("super_resolution") is not None:  # bases with an SR stage (MM-Diffusion)
        run.bases.super_resolution = bool(cfg.super_resolution)
    noise_model = run.bases
    if cfg.guided:  # the caller composes the guidance; the sampler only solves
        guidance_cfg = with_overrides(run.cfg.guidance, cfg.guidance)
        noise_model = build_guidance(run.bases, run.discriminator, guidance_cfg, cfg.run_dir)
        print(f"joint scales: {noise_model.joint_scales}")
    sampler = build_sampler(noise_model, with_overrides(run.cfg.sampler, cfg.sampler))
    prompts = sampling_prompts(run.bases, run.data, cfg.prompts, cfg.num_samples, cfg.seed)
    samples = sample_in_batches(
        sampler, run.bases, cfg.num_samples, cfg.batch_size, cfg.seed, device, cfg.progress, prompts
    )
    if run.bases.decodes_to_media:
        out = Path(cfg.run_dir) / (cfg.out or ("guided" if cfg.guided else "unguided"))
        write_mp4s(run.bases, samples, out, cfg.progress)
        if prompts is not None:  # which prompt made which file
            text = io.StringIO()
            writer = csv.writer(text)
            writer.writerow(["file", "prompt"])
            writer.writerows((f"{i:05d}.mp4", p) for i, p in enumerate(prompts))
            atomic_write_bytes(out / "prompts.csv", text.getvalue().encode())
    else:
        out = Path(cfg.run_dir) / (
            cfg.out or ("samples.npz" if cfg.guided else "samples_nojoint.npz")
        )
        write_npz(run, samples, out, "guided" if cfg.guided else "no joint")


def write_mp4s(bases, samples, out: Path, progress: bool) -> None:
    from tqdm.auto import tqdm

    from mmdisco.media import write_video_with_audio

    out.mkdir(parents=True, exist_ok=True)
    n = len(samples["audio"])
    for i in tqdm(range(n), disable=not progress, desc="decoding"):
        media = bases.decode({m: x[i : i + 1].to(bases.device) for m, x in samples.items()})
        write_video_with_audio(
            out / f"{i:05d}.mp4",
            media["video"][0].cpu().numpy(),
            bases.fps,
            media["audio"][0].cpu().numpy(),
            bases.sample_rate,
        )
    print(f"wrote {n} mp4 files with sound to {out}")


def write_npz(run, samples, out: Path, title: str) -> None:
    arrays = {m: x.numpy() for m, x in samples.items()}
    atomic_savez(out, arrays)  # a kill or a full disk leaves no torn samples.npz
    print(f"wrote {out} " + " ".join(f"{m}{tuple(a.shape)}" for m, a in arrays.items()))
    if all(a.ndim == 2 and a.shape[1] == 1 for a in arrays.values()):
        pts = np.concatenate([arrays["audio"], arrays["video"]], axis=1)
        target = getattr(run.data, "target", None)
        toy_scatter(out.with_suffix(".png"), pts, target, f"{run.cfg.data.name}: {title}")


if __name__ == "__main__":
    exit_on_moved_keys(sys.argv[1:])
    main()
