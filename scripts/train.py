"""Train the MMDisCo discriminator on top of two frozen base models (paper Algorithm 1).

    python scripts/train.py base=toy data=toy_ind run_dir=runs/toy_ind
    python scripts/train.py base=toy data=toy_ood loss.bce=false run_dir=runs/ood_dsm

Stages: base models -> real pairs -> fake pairs (sampled once, cached) -> D training with
JointLoss. Re-running with the same run_dir resumes from its last checkpoint.
"""

from __future__ import annotations

import csv
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from mmdisco.checkpoint import checkpoint_exists, load_checkpoint, save_checkpoint
from mmdisco.io import save_module
from mmdisco.plots import training_curves
from mmdisco.runs import CONFIG_FILE, WEIGHTS_FILE, fake_pairs, setup_torch

LOG_KEYS = ("loss", "l_d", "l_dsm", "acc_real", "acc_fake")


def random_batch(pairs: dict, size: int, generator: torch.Generator, device) -> dict:
    n = next(iter(pairs.values())).shape[0]
    idx = torch.randint(0, n, (size,), generator=generator)
    return {m: x[idx].to(device) for m, x in pairs.items()}


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / CONFIG_FILE, resolve=True)
    device = setup_torch(cfg.device, cfg.threads)

    # 1. base models (frozen), 2. real pairs, 3. fake pairs from the independent bases
    bases = instantiate(cfg.base).to(device)
    real = instantiate(cfg.data).real_pairs(bases)
    fake = fake_pairs(
        bases,
        cfg.fake,
        cfg.sampler,
        run_dir / "fake_pairs.safetensors",
        cfg.seed + 10_000,
        device,
        cfg.progress,
    )

    # 4. the discriminator and its loss (seeded here: its init must not depend on whether
    # the stages above ran or were read from a cache)
    torch.manual_seed(cfg.seed)
    disc = instantiate(cfg.discriminator).to(device).train()
    loss_fn = instantiate(cfg.loss)
    opt = torch.optim.Adam(disc.parameters(), lr=cfg.train.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    ckpt = run_dir / "checkpoint"
    start = load_checkpoint(ckpt, disc, opt, gen) if checkpoint_exists(ckpt) else 0
    log_path = run_dir / "train_log.csv"
    if start == 0 and log_path.exists():
        log_path.unlink()

    bar = tqdm(
        range(start, cfg.train.steps),
        initial=start,
        total=cfg.train.steps,
        disable=not cfg.progress,
        desc="D training",
    )
    for step in bar:
        terms = loss_fn(
            disc,
            bases,
            random_batch(real, cfg.train.batch_size, gen, device),
            random_batch(fake, cfg.train.batch_size, gen, device),
            generator=gen,
        )
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()
        if (step + 1) % cfg.train.log_every == 0:
            row = {"step": step + 1, **{k: float(terms[k].detach()) for k in LOG_KEYS}}
            bar.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k != "step"})
            append_csv(log_path, row)
        if (step + 1) % cfg.train.ckpt_every == 0:
            save_checkpoint(ckpt, step + 1, disc, opt, gen, OmegaConf.to_container(cfg))

    save_module(run_dir / WEIGHTS_FILE, disc)
    if log_path.exists():
        training_curves(log_path, run_dir / "train_curves.png")
    print(f"discriminator saved to {run_dir / WEIGHTS_FILE}")


def append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


if __name__ == "__main__":
    main()
