"""Joint generation from a trained run (paper Algorithm 2).

    python scripts/sample.py run_dir=runs/toy_ind num_samples=4000
    python scripts/sample.py run_dir=runs/toy_ind guided=false      # "no joint" baseline
    python scripts/sample.py run_dir=runs/toy_ind sampler.solver=ddim sampler.num_steps=50

Writes ``samples.npz`` (one array per modality) and, for 2-D toy pairs, a scatter PNG.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from mmdisco.plots import toy_scatter
from mmdisco.runs import load_run, sample_in_batches, sampler_kwargs, setup_torch
from mmdisco.sampling import JointSampler


@hydra.main(config_path="../configs", config_name="sample", version_base="1.3")
def main(cfg: DictConfig) -> None:
    device = setup_torch(cfg.device, cfg.threads)
    run = load_run(cfg.run_dir, device, with_discriminator=cfg.guided)
    kwargs = {**sampler_kwargs(run.cfg.sampler), **sampler_kwargs(cfg.sampler)}
    sampler = JointSampler(run.bases, run.discriminator, **kwargs)
    samples = sample_in_batches(
        sampler, cfg.num_samples, cfg.batch_size, cfg.seed, device, cfg.progress
    )

    out = Path(cfg.run_dir) / (cfg.out or ("samples.npz" if cfg.guided else "samples_nojoint.npz"))
    arrays = {m: x.numpy() for m, x in samples.items()}
    np.savez(out, **arrays)
    print(f"wrote {out} " + " ".join(f"{m}{tuple(a.shape)}" for m, a in arrays.items()))
    if all(a.ndim == 2 and a.shape[1] == 1 for a in arrays.values()):
        target = getattr(run.data, "target", None)
        pts = np.concatenate([arrays["audio"], arrays["video"]], axis=1)
        title = f"{run.cfg.data.name}: {'guided' if cfg.guided else 'no joint'}"
        toy_scatter(out.with_suffix(".png"), pts, target, title)


if __name__ == "__main__":
    main()
